"""Relay: moves bytes both ways between two connected non-blocking sockets on ztun's loop.

On Linux each direction splices through a pipe (the bytes never enter Python); elsewhere
it uses recv_into/send on a reused buffer. Both honour backpressure (a side whose peer
cannot take more is not read), half-close (EOF one way shuts down the peer's write side
and keeps the other way open), resets (a reset on one side resets the other) and an idle
timeout. Nothing here blocks: every socket operation is non-blocking.
"""

import errno
import fcntl
import logging
import os
import socket
import struct
import time

log = logging.getLogger("ztun.relay")

HAVE_SPLICE = hasattr(os, "splice")
PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ; the kernel rounds and caps it (pipe-max-size)
COPY_BUFFER = 256 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_RESET_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH, errno.ENETUNREACH}


def abort(sock: socket.socket) -> None:
    """Close sock with a reset (SO_LINGER 0), so its peer learns at once instead of waiting."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class _PipePool:
    """Empty splice pipes kept for the next relay: a short connection then costs no pipe2/fcntl/close."""

    def __init__(self, keep: int = 256):
        self.keep = keep
        self.free: list = []

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
        if empty and len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def clear(self):
        while self.free:
            r, w, _ = self.free.pop()
            os.close(r)
            os.close(w)


PIPES = _PipePool()


class _Direction:
    """One way of a relay: read from src, write to dst."""

    __slots__ = ("relay", "src", "dst", "pipe_r", "pipe_w", "capacity", "buf", "view", "pending", "start", "eof", "shut", "reading", "writing", "bytes", "full")

    def __init__(self, relay, src, dst, splice: bool):
        self.relay, self.src, self.dst = relay, src, dst
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
            self.pipe_r, self.pipe_w, self.capacity = PIPES.get()
        else:
            self.capacity = COPY_BUFFER
            self.buf = bytearray(COPY_BUFFER)
            self.view = memoryview(self.buf)

    # Reading src -------------------------------------------------------------

    def on_readable(self):
        try:
            while not self.eof and self.pending < self.capacity:
                if self.pipe_w >= 0:
                    n = os.splice(self.src.fileno(), self.pipe_w, self.capacity - self.pending, flags=_SPLICE_FLAGS)
                else:
                    if self.start + self.pending >= self.capacity:  # compact: free room is at the front
                        self.buf[: self.pending] = self.view[self.start : self.start + self.pending]
                        self.start = 0
                    n = self.src.recv_into(self.view[self.start + self.pending :])
                if n == 0:
                    self.eof = True
                    break
                self.pending += n
                self.bytes += n
                if self.pipe_w < 0:
                    break  # one recv per event: let the writer catch up
        except BlockingIOError:
            if self.pipe_w >= 0 and self.pending:
                self.full = True
        except OSError as e:
            return self.relay._fail(self, e)
        self.relay._touch()
        self.flush()

    # Writing dst ---------------------------------------------------------------

    def flush(self):
        try:
            while self.pending:
                if self.pipe_r >= 0:
                    n = os.splice(self.pipe_r, self.dst.fileno(), self.pending, flags=_SPLICE_FLAGS)
                else:
                    n = self.dst.send(self.view[self.start : self.start + self.pending])
                    self.start += n
                self.pending -= n
                self.full = False
            self.start = 0
        except BlockingIOError:
            pass
        except OSError as e:
            return self.relay._fail(self, e)
        if self.pending and not self.writing:
            self.relay.loop.add_writer(self.dst.fileno(), self.flush)
            self.writing = True
        elif not self.pending and self.writing:
            self.relay.loop.remove_writer(self.dst.fileno())
            self.writing = False
        self._update_reading()
        if self.eof and not self.pending and not self.shut:
            self.shut = True
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.relay._direction_done()

    def _update_reading(self):
        want = not self.eof and not self.full and self.pending < self.capacity and not self.relay.closed
        if want and not self.reading:
            self.relay.loop.add_reader(self.src.fileno(), self.on_readable)
        elif not want and self.reading:
            self.relay.loop.remove_reader(self.src.fileno())
        self.reading = want

    def stop(self):
        if self.reading:
            self.relay.loop.remove_reader(self.src.fileno())
            self.reading = False
        if self.writing:
            self.relay.loop.remove_writer(self.dst.fileno())
            self.writing = False
        if self.pipe_r >= 0:
            PIPES.put((self.pipe_r, self.pipe_w, self.capacity), self.pending == 0)
        self.pipe_r = self.pipe_w = -1


class Relay:
    """Relays between client and remote until both directions end, one side resets, or it idles out.

    on_close(relay, reason) runs once at the end; reason is "done", "reset", "idle" or "closed".
    bytes_up counts client -> remote, bytes_down remote -> client.
    """

    def __init__(self, loop, client: socket.socket, remote: socket.socket, *, on_close=None, idle_timeout: float = 300.0, splice: bool | None = None):
        splice = HAVE_SPLICE if splice is None else splice and HAVE_SPLICE
        self.loop = loop
        self.client, self.remote = client, remote
        self.on_close = on_close
        self.idle_timeout = idle_timeout
        self.closed = False
        self.reason = None
        self.started = self.last_active = time.monotonic()
        client.setblocking(False)
        remote.setblocking(False)
        self.up = self.down = None
        try:
            self.up = _Direction(self, client, remote, splice)
            self.down = _Direction(self, remote, client, splice)
        except OSError:
            self.close("closed")
            raise
        self._timer = loop.call_later(idle_timeout, self._check_idle)
        self.up._update_reading()
        self.down._update_reading()

    @property
    def bytes_up(self) -> int:
        return self.up.bytes if self.up is not None else 0

    @property
    def bytes_down(self) -> int:
        return self.down.bytes if self.down is not None else 0

    def _touch(self):
        self.last_active = time.monotonic()

    def _check_idle(self):
        if self.closed:
            return
        idle = time.monotonic() - self.last_active
        if idle >= self.idle_timeout:
            self.close("idle", reset=True)
        else:
            self._timer = self.loop.call_later(self.idle_timeout - idle, self._check_idle)

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

    def close(self, reason: str = "closed", reset: bool = False) -> None:
        """End the relay and close both sockets (with a reset, so both peers learn at once). Idempotent."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
        for direction in (self.up, self.down):
            if direction is not None:
                direction.stop()
        for sock in (self.client, self.remote):
            if reset:
                abort(sock)
            else:
                sock.close()
        if self.on_close is not None:
            try:
                self.on_close(self, reason)
            except Exception:
                log.exception("relay on_close failed")
