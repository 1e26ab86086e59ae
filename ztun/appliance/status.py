"""The control socket: the running appliance answers `ztun-appliance status` with its counters and flows.

One unix stream socket, root-only (0600). A client sends one request line and reads one JSON
document back, then the appliance closes the connection:

    status\\n    -> the whole snapshot (counters, drops, flows by state, outbounds and the flow list)
    counters\\n  -> the same without the flow list (cheap: for scripts that poll)
    flows\\n     -> {"version": ..., "flows": [...]}

The server lives on the readiness loop: non-blocking accept, read and write, a bounded
request, a short deadline for the request and a longer one for the reply, and a cap on
simultaneous clients. A full server drops its oldest client still silent to take a new one
(refusing it only while every client is being answered), so clients that connect and never
send (or never read) cannot hold fds, stall `status` or the loop.

snapshot(include_flows: bool = True) is the appliance's callable; it returns a fresh dict
shaped as SNAPSHOT_KEYS documents, and is called on the loop thread only. With
include_flows=False it should do no per-flow work: the metrics endpoint calls it every second
(see metrics.py). A `status` request costs loop time in proportion to the flows listed.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import socket
import stat
import sys
import time
from collections.abc import Callable

from ..errors import ConfigError, ZtunError
from ..tun.options import TunOptions
from .config import control_socket

log = logging.getLogger("ztun.control")

DEFAULT_SOCKET = control_socket(TunOptions.name)  # the default appliance's: /run/ztun/ztun0.sock
MAX_REQUEST = 64  # bytes, newline included: requests are single words
READ_TIMEOUT = 1.0  # seconds from connect to the request line: `status` sends it at once
TIMEOUT = 5.0  # seconds to take the reply, once asked
MAX_CLIENTS = 16  # simultaneous connections; a silent one makes room for a new one
ACCEPT_BATCH = 16  # connections accepted per readable event, so one burst cannot starve the loop
SEND_CHUNK = 256 * 1024

SNAPSHOT_KEYS = {
    "version": "ztun version string",
    "uptime_s": "seconds since the appliance started",
    "device": "dict: name, mtu, addresses, ... (shown as given)",
    "counters": "dict name -> monotonic count (packets_in, bytes_in, ...)",
    "gauges": "optional dict name -> current value (tcp_flows, udp_sessions, tcp_pending, descriptors_open, ...)",
    "drops": "dict reason -> count",
    "flows_by_state": "dict state -> number of flows now",
    "outbounds": "dict outbound name -> {event: count}",
    "health": "dict outbound name -> {state: unknown|ok|failing, error, checked (unix time or null)}, probed ones only",
    "flows": "list of dicts: proto, source, destination, domain, outbound, state, bytes_up, bytes_down, age_s",
    "routing": "dict: fail_closed, auto_route, strict_route (bools); bypassing (main-table routes that bypass the TUN), "
               "excluded (prefixes kept out of it)",
}

Snapshot = Callable[..., dict]


class ControlError(ZtunError):
    """The control socket cannot be served or reached; the message says which and why."""


class ControlServer:
    """Serves snapshot() on a unix socket at path, from loop, until close()."""

    def __init__(self, loop, path: str, snapshot: Snapshot, *, timeout: float = TIMEOUT,
                 read_timeout: float | None = None, max_clients: int = MAX_CLIENTS):
        self.loop = loop
        self.path = path
        self.snapshot = snapshot
        self.timeout = timeout  # to take the reply
        self.read_timeout = min(READ_TIMEOUT, timeout) if read_timeout is None else read_timeout  # to ask
        self.max_clients = max_clients
        self.counters = {"requests": 0, "bad_requests": 0, "timeouts": 0, "dropped_silent": 0, "refused_busy": 0,
                         "errors": 0}
        self._clients: dict = {}  # fd -> _Client
        self._sock = self._listen(path)
        self._inode = os.stat(path).st_ino  # close() removes the file only if it is still ours
        loop.add_reader(self._sock.fileno(), self._accept)

    # -- set-up -------------------------------------------------------------------

    @staticmethod
    def _listen(path: str) -> socket.socket:
        parent = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        except OSError as e:
            raise ControlError(f"control socket {path}: cannot create {parent}: {e.strerror}") from None
        _replace_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The file is created by bind() with 0777 & ~umask: make it 0600 from its first moment,
        # not after a window in which anyone may connect. (Set-up is single-threaded.)
        old = os.umask(0o177)
        try:
            sock.bind(path)
        except OSError as e:
            sock.close()
            raise ControlError(f"control socket {path}: {e.strerror}") from None
        finally:
            os.umask(old)
        try:
            os.chmod(path, 0o600)
            sock.listen(MAX_CLIENTS)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            _unlink(path)
            raise ControlError(f"control socket {path}: {e.strerror}") from None
        return sock

    # -- connections ----------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # EMFILE and the like: the listener stays, the client is not served
                self.counters["errors"] += 1
                log.warning("control socket: accept failed: %s", e.strerror)
                return
            if len(self._clients) >= self.max_clients and not self._make_room():
                self.counters["refused_busy"] += 1
                conn.close()
                continue
            conn.setblocking(False)
            client = _Client(conn, self.loop.call_later(self.read_timeout, self._expire, conn.fileno()))
            self._clients[conn.fileno()] = client
            self.loop.add_reader(conn.fileno(), self._readable, client)

    def _make_room(self) -> bool:
        """Drop the oldest client that has not asked yet (one holding its connection silent); False if all have."""
        for client in self._clients.values():  # in the order accepted
            if client.reading:
                self.counters["dropped_silent"] += 1
                self._drop(client)
                return True
        return False

    def _readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(MAX_REQUEST + 1 - len(client.buf))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.buf += data
        line, newline, _ = client.buf.partition(b"\n")
        if not newline and data and len(client.buf) <= MAX_REQUEST:
            return  # more to come
        self.loop.remove_reader(client.sock.fileno())
        client.reading = False
        client.timer.cancel()  # asked in time: now the reply's deadline
        client.timer = self.loop.call_later(self.timeout, self._expire, client.sock.fileno())
        if not newline and len(client.buf) > MAX_REQUEST:
            self.counters["bad_requests"] += 1
            self._reply(client, {"error": f"request longer than {MAX_REQUEST} bytes"})
        elif not line.strip():
            self._drop(client)  # connected and closed without asking: nothing to answer
        else:
            self._reply(client, self._answer(line.strip().decode("ascii", "replace")))

    def _answer(self, request: str) -> dict:
        if request not in ("status", "counters", "flows"):
            self.counters["bad_requests"] += 1
            return {"error": f"unknown request {request[:32]!r}: expected status, counters or flows"}
        self.counters["requests"] += 1
        try:
            snap = self.snapshot(include_flows=request != "counters")
        except Exception as e:  # the appliance's bug must not take the loop down; say so to the client
            self.counters["errors"] += 1
            log.exception("control socket: snapshot failed")
            return {"error": f"snapshot failed: {e}"}
        if request == "flows":
            return {"version": snap.get("version"), "flows": snap.get("flows", [])}
        return snap

    def _reply(self, client: _Client, document: dict) -> None:
        client.out = memoryview(json.dumps(document, default=str).encode() + b"\n")
        self.loop.add_writer(client.sock.fileno(), self._writable, client)

    def _writable(self, client: _Client) -> None:
        try:
            sent = client.sock.send(client.out[:SEND_CHUNK])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        client.out = client.out[sent:]
        if not client.out:
            self._drop(client)

    def _expire(self, fd: int) -> None:
        client = self._clients.get(fd)
        if client is not None:
            self.counters["timeouts"] += 1
            client.timer = None
            self._drop(client)

    def _drop(self, client: _Client) -> None:
        fd = client.sock.fileno()
        if self._clients.pop(fd, None) is None:
            return
        self._forget(fd)
        if client.timer is not None:
            client.timer.cancel()
        # Closing with unread input makes the peer's recv fail with ECONNRESET, losing the reply
        # (e.g. "request too long"): take what has arrived first, a bounded amount.
        for _ in range(4):
            try:
                if not client.sock.recv(1 << 16):
                    break
            except OSError:
                break
        client.sock.close()

    def _forget(self, fd: int) -> None:
        try:
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        except RuntimeError:  # the loop is already closed (teardown order): nothing to unregister
            pass

    # -- shutdown ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the clients and the listener and remove the socket file. Idempotent."""
        for client in list(self._clients.values()):
            self._drop(client)
        if self._sock is None:
            return
        self._forget(self._sock.fileno())
        self._sock.close()
        self._sock = None
        try:
            if os.stat(self.path).st_ino == self._inode:
                _unlink(self.path)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Client:
    __slots__ = ("buf", "out", "reading", "sock", "timer")

    def __init__(self, sock: socket.socket, timer):
        self.sock = sock
        self.timer = timer
        self.reading = True  # no whole request yet
        self.buf = b""
        self.out = memoryview(b"")


def _replace_stale(path: str) -> None:
    """Remove a socket file nobody answers on (a crashed run's); refuse a live one or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"control socket {path}: exists and is not a socket; remove it or choose another path")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)  # a full backlog answers EAGAIN at once instead of waiting
    try:
        err = probe.connect_ex(path)
    finally:
        probe.close()
    if err in (0, errno.EAGAIN, errno.EINPROGRESS):
        raise ControlError(f"control socket {path}: another ztun-appliance is running and answers on it; "
                           f"stop it first, or give this one another control socket")
    if err not in (errno.ECONNREFUSED, errno.ENOENT):
        raise ControlError(f"control socket {path}: cannot check the existing socket: {os.strerror(err)}")
    log.info("control socket %s: removing the stale socket of an earlier run", path)
    _unlink(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# -- building a snapshot ------------------------------------------------------------------

GAUGE_STATS = frozenset({"tcp_flows", "udp_sessions", "tun_pump_reading"})  # SystemStack.stats() values that go up and down
TOTAL_STATS = frozenset({"dropped", "write_failed"})  # sums of the per-reason drops: kept as counters


def split_stats(stats: dict) -> tuple[dict, dict, dict]:
    """SystemStack.stats() -> (counters, gauges, drops by reason), for the snapshot's three parts.

    Drop reasons keep their stats() names minus the "drop_"/"dropped_" prefix, so a NAT drop
    "drop_bad_checksum" is "bad_checksum", "udp_dropped_fragment" is "udp_fragment", and
    "write_failed_ENOBUFS" and "icmp_dropped" stay recognisable.
    """
    counters, gauges, drops = {}, {}, {}
    for key, value in stats.items():
        if key in GAUGE_STATS:
            gauges[key] = value
        elif key in TOTAL_STATS:
            counters[key] = value
        elif key.startswith(("drop_", "dropped_")):
            drops[key.split("_", 1)[1]] = value
        elif key.startswith("udp_dropped_"):
            drops["udp_" + key[len("udp_dropped_"):]] = value
        elif key.startswith(("write_failed_", "malformed_")) or key == "icmp_dropped":
            drops[key] = value
        else:
            counters[key] = value
    return counters, gauges, drops


# -- the client ----------------------------------------------------------------------------

MAX_REPLY = 256 * 1024 * 1024  # a flow list of a few million flows; more is a broken server


def query(path: str = DEFAULT_SOCKET, request: str = "status", timeout: float = TIMEOUT) -> dict:
    """Ask the appliance at path; its JSON reply as a dict. ControlError when it cannot be asked."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"no ztun-appliance is running (nothing answers on {path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: the control socket is root-only; run as root") from None
        except OSError as e:
            raise ControlError(f"cannot reach the appliance on {path}: {e.strerror or e}") from None
        chunks, size = [], 0
        try:
            sock.sendall(request.encode("ascii") + b"\n")
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                chunks.append(data)
                size += len(data)
                if size > MAX_REPLY:
                    raise ControlError(f"the reply on {path} is larger than {MAX_REPLY} bytes")
        except TimeoutError:
            raise ControlError(f"the appliance on {path} did not answer within {timeout:g} s") from None
        except OSError as e:
            raise ControlError(f"the connection to {path} failed: {e.strerror or e}") from None
    finally:
        sock.close()
    try:
        reply = json.loads(b"".join(chunks))
    except ValueError:
        raise ControlError(f"the reply on {path} is not JSON (is it a ztun-appliance control socket?)") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the reply on {path} is not a JSON object")
    if "error" in reply:
        raise ControlError(f"the appliance answered: {reply['error']}")
    return reply


# -- for humans -------------------------------------------------------------------------------


def format_status(snap: dict) -> str:
    """Counters, drops, flows by state, outbound events, then one line per flow (like conntrack -L)."""
    lines = [f"ztun {snap.get('version', '?')}, up {_duration(snap.get('uptime_s'))}"]
    device = snap.get("device") or {}
    if device:
        lines.append("device: " + " ".join(f"{k}={_plain(v)}" for k, v in device.items()))
    lines += _routing(snap.get("routing"))
    gauges = snap.get("gauges") or {}
    if "descriptors_limit" in gauges:
        lines.append(f"descriptors: {gauges.get('descriptors_open', '?')} open, limit {gauges['descriptors_limit']}, "
                     f"budget for flows {gauges.get('descriptors_budget', '?')}; "
                     f"pending connects {gauges.get('tcp_pending', 0)}")
    lines += _section("counters", snap.get("counters"))
    lines += _section("gauges", snap.get("gauges"))
    lines += _section("drops", snap.get("drops"), empty="none")
    lines += _section("flows by state", snap.get("flows_by_state"), empty="none")
    outbounds = snap.get("outbounds") or {}
    if outbounds:
        lines.append("outbounds:")
        for name, events in sorted(outbounds.items()):
            shown = " ".join(f"{k}={v}" for k, v in sorted((events or {}).items()))
            lines.append(f"  {name}: {shown or '-'}")
    health = snap.get("health") or {}
    if health:
        lines.append("outbound health:")
        width = max(len(str(name)) for name in health)
        for name, h in sorted(health.items()):
            h = h or {}
            checked = h.get("checked")
            when = f"checked {_duration(max(0.0, time.time() - checked))} ago" if isinstance(checked, (int, float)) else "not checked yet"
            error = f": {h['error']}" if h.get("error") else ""
            lines.append(f"  {name!s:<{width}} {h.get('state', '?')} ({when}){error}")
    flows = snap.get("flows")
    if flows is not None:
        lines.append(f"flows: {len(flows)}")
        lines += ["  " + format_flow(f) for f in flows]
    return "\n".join(lines)


def _routing(routing) -> list:
    """fail-closed or not, and what bypasses the TUN (one line each), from the snapshot's routing."""
    if not isinstance(routing, dict):
        return []
    mode = "auto-route" + (" strict" if routing.get("strict_route") else "") if routing.get("auto_route") else "routes"
    lines = [f"routing: {mode}, {'fail-closed' if routing.get('fail_closed') else 'fail-open'}"]
    bypassing, excluded = routing.get("bypassing") or [], routing.get("excluded") or []
    if routing.get("auto_route"):
        lines.append(f"bypassing the TUN (main table): {len(bypassing) or 'none'}")
        lines += [f"  {r}" for r in bypassing]
    if excluded:
        lines.append("excluded: " + ", ".join(map(str, excluded)))
    return lines


def format_flow(f: dict) -> str:
    """`tcp  198.18.0.2:40000 -> 198.19.0.1:80 [example.com] via proxy relaying up=123 down=456 age=3.2s`"""
    domain = f" [{f['domain']}]" if f.get("domain") else ""
    age = f.get("age_s")
    age_text = f"{age:.1f}s" if isinstance(age, (int, float)) else "?"
    return (f"{f.get('proto', '?')!s:<4} {f.get('source', '?')} -> {f.get('destination', '?')}{domain} "
            f"via {f.get('outbound', '?')} {f.get('state', '?')} "
            f"up={f.get('bytes_up', 0)} down={f.get('bytes_down', 0)} age={age_text}")


def _section(title: str, values, empty: str | None = None) -> list:
    if not values:
        return [f"{title}: {empty}"] if empty else []
    width = max(len(str(k)) for k in values)
    return [f"{title}:"] + [f"  {k!s:<{width}} {v}" for k, v in sorted(values.items())]


def _plain(value) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def _duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "?"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def main_status(argv=None, prog: str = "ztun-appliance status") -> int:
    """`ztun-appliance status [--control-socket PATH | --config FILE | --tun-name NAME] [--json]`:
    exit 0 with the status, 1 when it cannot be had, 2 when --config cannot be read."""
    parser = argparse.ArgumentParser(prog=prog, description="Show the running appliance's counters and flows.")
    add_status_arguments(parser)
    args = parser.parse_args(argv)
    return run_status(args, prog)


def add_status_arguments(parser: argparse.ArgumentParser) -> None:
    """The status subcommand's flags, for a parser the CLI builds itself."""
    parser.add_argument("--control-socket", metavar="PATH",
                        help="the appliance's control socket (default: the one of --config, else /run/ztun/TUN-NAME.sock)")
    parser.add_argument("--socket", dest="control_socket", help=argparse.SUPPRESS)  # the old name, kept working
    parser.add_argument("--config", metavar="FILE", help="the appliance's configuration: its control.socket, or its TUN's")
    parser.add_argument("--tun-name", metavar="NAME",
                        help=f"the appliance whose TUN this is (default {TunOptions.name}): its control socket")
    parser.add_argument("--json", action="store_true", help="print the status as one JSON document")
    parser.add_argument("--timeout", type=float, default=TIMEOUT, metavar="SECONDS", help=argparse.SUPPRESS)


def socket_path(args) -> str:
    """The control socket status asks: --control-socket, else --config's (with --tun-name over it), else the TUN's.

    The appliance finds its own the same way (config.control.socket), so each finds the other's by the same names.
    """
    if args.control_socket:
        return args.control_socket
    if args.config:
        from .config import load

        overrides = {"tun.name": (args.tun_name, "--tun-name")} if args.tun_name else {}
        return load(args.config, overrides).control.socket
    return control_socket(args.tun_name or TunOptions.name)


def run_status(args, prog: str = "ztun-appliance status") -> int:
    try:
        path = socket_path(args)
    except ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    try:
        snap = query(path, "status", timeout=args.timeout)
    except ControlError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
    else:
        print(format_status(snap))
    return 0
