"""RouteJournal: the routes a router without route tags (macOS, Windows) added, on disk, so a crashed run's are found.

Linux tags its routes (protocol 122) and finds them in the kernel. The routing tables of
macOS and Windows have no field ztun can own for that (macOS' RTF_PROTO1..3 flags and
Windows' route Protocol are shared by every program, and neither table is read back here),
so each route is written to a journal before it is added and struck out once it is removed.
A clean exit strikes out everything and deletes the journal; after a crash, the next run
with the same TUN name, or `ztun-appliance cleanup`, deletes what the journal still names.

One journal per configured TUN name (macOS may give the device another name each run),
in the run directory: /var/run/ztun on macOS (emptied at boot, like the routes), and
%ProgramData%\\ztun on Windows. A running router holds an exclusive lock on NAME.lock, which
the system drops when the process dies: a journal whose lock is held belongs to a ztun
still running, and is refused (EBUSY).

The journal is JSON lines, appended and synced one record at a time:
{"op": "add"|"del", "cidr", "gateway", "iface", "kind"}. A line that does not parse (the
record a crash cut short, or damage) is skipped and counted in `damaged`.
"""

import errno
import json
import logging
import os
import re
import sys

from ..errors import RouteError
from .route_plan import Route

log = logging.getLogger("ztun.system.router")

KINDS = ("unicast", "unreachable")
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")


def state_dir() -> str:
    """Where journals live on this platform."""
    if sys.platform == "win32":
        return os.path.join(os.environ.get("ProgramData") or r"C:\ProgramData", "ztun")
    return "/var/run/ztun"


def file_stem(tun_name: str) -> str:
    """A file name for a TUN name: itself when it is plain, else its UTF-8 bytes in hex."""
    return tun_name if _SAFE_NAME.fullmatch(tun_name) else "x" + tun_name.encode().hex()


class RouteJournal:
    """The journal of one TUN name in directory; open() takes its lock, close() gives it back."""

    def __init__(self, tun_name: str, directory: str | None = None):
        self.tun_name = tun_name
        self.directory = directory or state_dir()
        stem = file_stem(tun_name)
        self.path = os.path.join(self.directory, stem + ".routes")
        self.lock_path = os.path.join(self.directory, stem + ".lock")
        self.damaged = 0  # lines skipped because they did not parse
        self._lock = None  # the open lock file while we hold it
        self._pending: list = []  # the routes recorded and not struck out, oldest first

    # --- ownership -----------------------------------------------------------------------

    def open(self) -> "RouteJournal":
        """Take the lock and read what an earlier run left (leftovers()); RouteError EBUSY if a running ztun holds it."""
        if self._lock is not None:
            return self
        try:
            os.makedirs(self.directory, exist_ok=True)
            lock = open(self.lock_path, "a+b")
        except OSError as e:
            raise RouteError(f"route journal in {self.directory} (needs the rights to add routes: root or "
                             "Administrator)", e.errno or errno.EIO) from None
        try:
            _lock(lock)
        except OSError:
            lock.close()
            raise RouteError(f"the routes of TUN name {self.tun_name!r} belong to a ztun-appliance still running "
                             f"({self.lock_path} is locked); stop it instead", errno.EBUSY) from None
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(f"{os.getpid()}\n".encode())
            lock.flush()
        except OSError:
            pass  # the pid is for people reading the file; the lock is what counts
        self._lock = lock
        self._pending = self._read()
        if self._pending:
            self._rewrite()  # compact: only what is still there
        return self

    def close(self) -> None:
        """Delete the journal if nothing is left in it, and give the lock back. Idempotent."""
        if self._lock is None:
            return
        if not self._pending:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not delete the empty route journal %s: %s", self.path, e)
        else:
            log.warning("%d route(s) of ztun are still in place and named in %s: the next run or "
                        "`ztun-appliance cleanup` removes them", len(self._pending), self.path)
        lock, self._lock = self._lock, None
        try:
            _unlock(lock)
        except OSError:
            pass
        lock.close()

    @property
    def held(self) -> bool:
        return self._lock is not None

    # --- records ---------------------------------------------------------------------------

    def leftovers(self) -> list:
        """The routes the journal names and that were not struck out, newest first."""
        return list(reversed(self._pending))

    def record(self, route: Route) -> bool:
        """Write route down before it is added (so a crash right after the add still finds it).

        False if the journal names it already (an earlier run's, not removed yet): nothing written.
        """
        self._check()
        if route in self._pending:
            return False
        self._append({"op": "add", **_fields(route)})
        self._pending.append(route)
        return True

    def strike(self, route: Route) -> None:
        """route is gone (removed, never added, or found gone): strike it out."""
        self._check()
        if route not in self._pending:
            return
        self._append({"op": "del", **_fields(route)})
        self._pending.remove(route)

    def _check(self):
        if self._lock is None:
            raise RouteError(f"route journal {self.path} is not open", errno.EBADF)

    def _append(self, record: dict) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        try:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise RouteError(f"write the route journal {self.path}", e.errno or errno.EIO) from None

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                for route in self._pending:
                    f.write(json.dumps({"op": "add", **_fields(route)}, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            raise RouteError(f"rewrite the route journal {self.path}", e.errno or errno.EIO) from None

    def _read(self) -> list:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise RouteError(f"read the route journal {self.path}", e.errno or errno.EIO) from None
        if len(raw) > _MAX_BYTES:
            raise RouteError(f"route journal {self.path} is over {_MAX_BYTES} bytes: not one ztun wrote; "
                             "look at it and delete it", errno.EFBIG)
        pending: list = []
        for line in raw.split(b"\n"):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                route = _route(record)
                op = record["op"]
            except (ValueError, KeyError, TypeError):
                self.damaged += 1
                continue
            if op == "add":
                if route not in pending:
                    pending.append(route)
            elif op == "del":
                if route in pending:
                    pending.remove(route)
            else:
                self.damaged += 1
        if self.damaged:
            log.warning("route journal %s: skipped %d line(s) that do not parse", self.path, self.damaged)
        return pending


_MAX_BYTES = 4 << 20  # a journal holds a line per route change: a few KiB


def _fields(route: Route) -> dict:
    return {"cidr": str(route.cidr), "gateway": None if route.gateway is None else str(route.gateway),
            "iface": route.iface, "kind": route.kind}


def _route(record) -> Route:
    """The Route a record names; ValueError if it is not one ztun writes."""
    if not isinstance(record, dict):
        raise ValueError("not an object")
    kind, iface = record.get("kind", "unicast"), record.get("iface")
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}")
    if iface is not None and (not isinstance(iface, str) or not 0 < len(iface) <= 256):
        raise ValueError("iface")
    gateway = record.get("gateway")
    if gateway is not None and not isinstance(gateway, str):
        raise ValueError("gateway")
    cidr = record["cidr"]
    if not isinstance(cidr, str):
        raise ValueError("cidr")
    return Route.of(cidr, gateway, iface, kind=kind)


if sys.platform == "win32":
    import msvcrt

    def _lock(f) -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)

    def _unlock(f) -> None:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(f) -> None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
