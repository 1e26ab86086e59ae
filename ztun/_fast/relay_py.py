"""The relay engine's twin: relays run on ztun's loop, in Python (relay.pyx runs them on a native thread).

Each relay moves bytes both ways between two connected non-blocking sockets. On Linux each
direction splices through a pipe (the bytes never enter Python); elsewhere it uses
recv_into/send on a reused buffer. Both honour backpressure (a side whose peer cannot take
more is not read), half-close (EOF one way shuts down the peer's write side and keeps the
other way open), resets (a reset on one side resets the other) and an idle timeout.
Nothing here blocks: every socket operation is non-blocking. The engine's interface is
relay.pyi's; this is also the relay of platforms the compiled engine does not build on.
"""

import errno
import fcntl
import logging
import operator
import os
import socket
import time

from ..net import abort
from .spin import MAX_US as MAX_SPIN_US

log = logging.getLogger("ztun.relay")

HAVE_SPLICE = hasattr(os, "splice")
PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ; the kernel rounds and caps it (pipe-max-size)
COPY_BUFFER = 256 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_splice = getattr(os, "splice", None)
IDLE_CHECKS = 4  # idle checks per idle_timeout: a relay closes after idle_timeout to 1.25x idle_timeout of silence
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}


class _PipePool:
    """Empty splice pipes kept for the next relay: a short connection then costs no pipe2/fcntl/close.

    One per loop (in the loop's `shared` dict), closed with the loop or by whoever closes its
    relays; a pipe given back after that is closed at once.
    """

    def __init__(self, keep: int = 256):
        self.keep = keep
        self.free: list = []
        self.closed = False

    @classmethod
    def of(cls, loop) -> "_PipePool":
        pool = loop.shared.get(cls)
        if pool is None:
            pool = loop.shared[cls] = cls()
        return pool

    def get(self):
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            size = fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            size = 65536
        return r, w, size

    def put(self, pipe, empty: bool):
        if empty and len(self.free) < self.keep and not self.closed:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self):
        """Close every kept pipe (the loop does, as it closes); pipes given back later are closed too."""
        self.closed = True
        while self.free:
            r, w, _ = self.free.pop()
            os.close(r)
            os.close(w)


class _IdleWatch:
    """The idle checks of every relay of one loop with one idle timeout: one timer for them all,
    every idle_timeout / IDLE_CHECKS, instead of one per relay made and cancelled per connection.
    Kept in the loop's own `shared` dict, so it goes with the loop."""

    def __init__(self, loop, timeout: float):
        self.loop, self.timeout = loop, timeout
        self.relays: dict = {}  # Relay -> None, an ordered set
        self.timer = None

    @classmethod
    def of(cls, loop, timeout: float) -> "_IdleWatch":
        watches = loop.shared.setdefault(cls, {})  # idle timeout -> _IdleWatch
        watch = watches.get(timeout)
        if watch is None:
            watch = watches[timeout] = cls(loop, timeout)
        return watch

    def add(self, relay) -> None:
        self.relays[relay] = None
        if self.timer is None:
            self.timer = self.loop.call_later(self.timeout / IDLE_CHECKS, self._check)

    def discard(self, relay) -> None:
        self.relays.pop(relay, None)

    def _check(self):
        self.timer = None
        now = time.monotonic()
        for relay in list(self.relays):
            try:
                relay._check_idle(now)
            except Exception:  # one relay's failed close must not stop the checks of the others
                log.exception("idle check of relay %s failed", relay._name())
                self.relays.pop(relay, None)
        if self.relays:  # none left: no timer until the next relay
            self.timer = self.loop.call_later(self.timeout / IDLE_CHECKS, self._check)


class _Direction:
    """One way of a relay: read from src, write to dst.

    Each readiness event costs one read (splice into the pipe, or recv) and one write: a
    short read or a partial write means the socket is drained or full, and the level-
    triggered loop says when there is more, so no call is spent on learning EAGAIN.
    """

    __slots__ = ("relay", "src", "dst", "src_fd", "dst_fd", "pipe_r", "pipe_w", "capacity", "buf", "view", "pending", "start",
                 "eof", "shut", "reading", "writing", "bytes", "full")

    def __init__(self, relay, src, dst, splice: bool, pipes: _PipePool | None):
        self.relay, self.src, self.dst = relay, src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.pending = 0  # bytes read from src, not yet written to dst
        self.start = 0
        self.eof = self.shut = False
        self.reading = self.writing = False
        # A pipe holds at most 16 pages' worth of *chunks* (one per small segment), so it can be
        # full while pending < capacity: EAGAIN with data pending means stop reading until a flush.
        self.full = False
        self.bytes = 0
        self.pipe_r = self.pipe_w = -1
        self.buf = self.view = None
        if splice:
            self.pipe_r, self.pipe_w, self.capacity = pipes.get()
        else:
            self.capacity = COPY_BUFFER
            self.buf = bytearray(COPY_BUFFER)
            self.view = memoryview(self.buf)

    # Reading src -------------------------------------------------------------

    def on_readable(self):
        pending = self.pending
        try:
            if self.pipe_w >= 0:
                n = _splice(self.src_fd, self.pipe_w, self.capacity - pending, None, None, _SPLICE_FLAGS)
            else:
                if self.start + pending >= self.capacity:  # compact: free room is at the front
                    self.buf[:pending] = self.view[self.start : self.start + pending]
                    self.start = 0
                n = self.src.recv_into(self.view[self.start + pending :])
        except BlockingIOError:
            n = -1
            if pending and self.pipe_w >= 0:
                self.full = True
        except OSError as e:
            return self.relay._fail(self, e)
        if n > 0:
            self.pending = pending + n
            self.bytes += n
        elif n == 0:
            self.eof = True
        self.flush()

    # Writing dst ---------------------------------------------------------------

    def flush(self):
        pending = self.pending
        if pending:
            try:
                if self.pipe_r >= 0:
                    n = _splice(self.pipe_r, self.dst_fd, pending, None, None, _SPLICE_FLAGS)
                else:
                    n = self.dst.send(self.view[self.start : self.start + pending])
                    self.start += n
            except BlockingIOError:
                n = 0
            except OSError as e:
                return self.relay._fail(self, e)
            if n:
                self.full = False
                pending -= n
                self.pending = pending
                if not pending:
                    self.start = 0
        if pending:
            if not self.writing:
                self.relay.loop.add_writer(self.dst_fd, self.flush)
                self.writing = True
        elif self.writing:
            self.relay.loop.remove_writer(self.dst_fd)
            self.writing = False
        if self.eof and not pending and not self.shut:
            self.shut = True
            self.relay.loop.sockq.shutdown(self.dst)  # on the worker: the peer's FIN work is done there
            self.relay._direction_done()
            if self.relay.closed:
                return  # both ways done: close() dropped the registrations with the fds
        want = not (self.eof or self.full or pending >= self.capacity or self.relay.closed)
        if want != self.reading:
            self._set_reading(want)

    def _set_reading(self, want: bool):
        if want:
            self.relay.loop.add_reader(self.src_fd, self.on_readable)
        else:
            self.relay.loop.remove_reader(self.src_fd)
        self.reading = want

    def release(self):
        """Give the pipe back (the relay closes both sockets next, and the loop forgets their fds)."""
        self.reading = self.writing = False
        if self.pipe_r >= 0:
            self.relay.pipes.put((self.pipe_r, self.pipe_w, self.capacity), self.pending == 0)
        self.pipe_r = self.pipe_w = -1


class _LoopRelay:
    """One relay on the loop: between client and remote until both directions end, one side
    resets, or it idles out. Its engine reports the end (on_close) unless end() ended it."""

    def __init__(self, engine, rid: int, client: socket.socket, remote: socket.socket, idle_timeout: float, splice: bool):
        loop = engine.loop
        self.engine, self.id, self.loop = engine, rid, loop
        self.client, self.remote = client, remote
        self.idle_timeout = idle_timeout
        self.closed = False
        self.last_active = time.monotonic()
        self._moved = 0  # bytes both ways at the last idle check
        for sock in (client, remote):
            if sock.getblocking():  # Python knows: a socket it made non-blocking needs no ioctl
                sock.setblocking(False)
        self.up = self.down = None
        self.pipes = _PipePool.of(loop) if splice else None
        try:
            self.up = _Direction(self, client, remote, splice, self.pipes)
            self.down = _Direction(self, remote, client, splice, self.pipes)
        except OSError:
            self.close("closed", reset=True, report=False)
            raise
        self._idle = None
        if idle_timeout > 0:
            self._idle = _IdleWatch.of(loop, idle_timeout)
            self._idle.add(self)
        self.up._set_reading(True)
        self.down._set_reading(True)

    def _check_idle(self, now: float):
        """Activity is bytes moved since the last check (no clock read per relayed chunk)."""
        moved = self.up.bytes + self.down.bytes
        if moved != self._moved:
            self._moved = moved
            self.last_active = now
        elif now - self.last_active >= self.idle_timeout:
            self.close("idle", reset=True)

    def _direction_done(self):
        if self.up.shut and self.down.shut:
            self.close("done")

    def _fail(self, direction, error: OSError):
        if error.errno not in _RESET_ERRNOS:
            log.warning("relay %s: %s", self._name(), error)
        self.close("reset", reset=True)

    def _name(self):
        try:
            return f"{self.client.getpeername()} <-> {self.remote.getpeername()}"
        except OSError:
            return "(closed)"

    def counts(self) -> tuple:
        return (self.up.bytes if self.up is not None else 0, self.down.bytes if self.down is not None else 0)

    def close(self, reason: str, reset: bool = False, report: bool = True) -> None:
        """End the relay and close both sockets (with a reset, so both peers learn at once). Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._idle is not None:
            self._idle.discard(self)
        for direction in (self.up, self.down):
            if direction is not None:
                direction.release()
        sockq = self.loop.sockq
        for sock in (self.client, self.remote):
            if sock.fileno() >= 0:
                self.loop.discard(sock.fileno())  # closed next: no epoll_ctl calls needed
            if reset:
                sockq.abort(sock)  # on the worker, after the shutdowns queued before
            else:
                sockq.close(sock)
        self.engine._ended(self, reason, report)


THREADED = False


class RelayEngine:
    """Relays between pairs of connected sockets, on the loop (the compiled engine's twin).

    on_close(token, reason, bytes_up, bytes_down) runs on the loop once per relay that
    ended by itself: reason "done" (both ways ended), "reset" (an error on either side: both
    sockets closed with a reset) or "idle" (nothing moved for its idle timeout: reset).
    A relay ended by end() is not reported there: end() returns its byte counts.
    capacity bounds the relays open at once; sweep_every and spin_us are accepted for the
    compiled engine's signature (idle checks here run idle_timeout / 4 apart; the loop never spins).
    """

    def __init__(self, loop, on_close, capacity=65536, sweep_every: float = 1.0, spin_us=None):
        capacity = operator.index(capacity)
        if spin_us is not None and not 0 <= operator.index(spin_us) <= MAX_SPIN_US:
            raise ValueError(f"spin_us must be 0..{MAX_SPIN_US}, got {spin_us}")
        if not 0 < capacity <= 1 << 24:
            raise ValueError("capacity must be 1 to 2**24")
        if not 0.001 <= sweep_every <= 3600:
            raise ValueError("sweep_every must be 0.001 to 3600 seconds")
        self.loop, self.on_close, self.capacity = loop, on_close, capacity
        self.relays: dict = {}  # id -> _LoopRelay
        self.tokens: dict = {}  # id -> token
        self.next_id = 1
        self.stopped = False
        self.ended = 0

    @property
    def open(self) -> int:
        return len(self.relays)

    def stats(self) -> dict:
        return {"wakeups": 0, "events": 0, "pumps": 0, "promoted": 0, "rearmed": 0, "batched": 0,
                "spin_found": 0, "spin_empty": 0, "spin_us": 0}

    def add(self, token, client, remote, idle_timeout: float = 300.0, splice: bool = True) -> int:
        if self.stopped or len(self.relays) >= self.capacity:
            for sock in (client, remote):
                if sock.fileno() >= 0:
                    self.loop.discard(sock.fileno())
                abort(sock)
            if self.stopped:
                raise RuntimeError("the relay engine is stopped")
            raise OSError(errno.ENFILE, f"relay: {os.strerror(errno.ENFILE)}")
        if client.fileno() < 0 or remote.fileno() < 0:
            client.close()
            remote.close()
            raise ValueError("the socket is closed")
        rid = self.next_id
        self.next_id += 1
        relay = _LoopRelay(self, rid, client, remote, idle_timeout if idle_timeout > 0 else 0.0, bool(splice) and HAVE_SPLICE)
        self.relays[rid] = relay
        self.tokens[rid] = token
        # A client's first bytes usually came with its handshake: waiting for the loop to report
        # them would cost the connection an iteration.
        if not relay.closed and relay.up.reading:
            relay.up.on_readable()
        return rid

    def counts(self, rid: int):
        relay = self.relays.get(rid)
        return None if relay is None else relay.counts()

    def end(self, rid: int, reset: bool = False):
        relay = self.relays.get(rid)
        if relay is None:
            return None
        counts = relay.counts()
        relay.close("closed", reset=reset, report=False)
        return counts

    def _ended(self, relay, reason: str, report: bool) -> None:
        if self.relays.pop(relay.id, None) is None:
            return
        token = self.tokens.pop(relay.id, None)
        if report and token is not None:
            up, down = relay.counts()
            try:
                self.on_close(token, reason, up, down)
            except Exception:
                log.exception("relay on_close failed")

    def poll(self) -> int:
        """The loop moves these relays itself: nothing waits elsewhere."""
        return 0

    def collect(self) -> None:
        """Ends are reported as they happen here: nothing waits."""

    def stop(self) -> None:
        for relay in list(self.relays.values()):
            relay.close("closed", reset=True)
        self.stopped = True

    def close(self) -> None:
        self.stop()
