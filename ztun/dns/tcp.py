"""DNS over TCP (RFC 1035 4.2.2, RFC 7766): 2-byte length-prefixed messages on one accepted connection.

Several queries per connection, answered as they complete (possibly out of order, as RFC 7766
allows), each through DnsService.query(). Every resource is bounded: at most MAX_INFLIGHT queries
in progress and MAX_BUFFERED reply bytes waiting for the client before reading pauses; a
connection without a complete query or a reply for idle_timeout is closed, which also ends slow
drips of a partial message. A length prefix too short for a DNS header closes the connection.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("ztun.dns")

HEADER = 12
MAX_INFLIGHT = 16
MAX_BUFFERED = 256 * 1024
RECV_SIZE = 65537  # one largest framed message
RECVS_PER_EVENT = 4  # bounded per readiness event so other fds get their turn


class TcpDnsConnection:
    """One client's TCP connection to port 53; owned by its DnsService, closed by close()."""

    def __init__(self, service, sock: socket.socket, client: tuple, server: tuple, *, idle_timeout: float):
        self.service, self.loop, self.sock = service, service.loop, sock
        self.client, self.server = client, server
        self.fd = sock.fileno()
        self.idle_timeout = idle_timeout
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.inflight = 0
        self.eof = False
        self.closed = False
        self._reading = False
        self._writing = False
        self._in_frames = False
        sock.setblocking(False)
        self._last_activity = self.loop.time()
        self._timer = self.loop.call_later(idle_timeout, self._check_idle)
        self._update_reading()

    # -- reading ----------------------------------------------------------------------

    def _update_reading(self) -> None:
        want = (not self.closed and not self.eof and self.inflight < MAX_INFLIGHT
                and len(self.wbuf) < MAX_BUFFERED)
        if want and not self._reading:
            self.loop.add_reader(self.fd, self._readable)
        elif not want and self._reading:
            self.loop.remove_reader(self.fd)
        self._reading = want

    def _readable(self) -> None:
        for _ in range(RECVS_PER_EVENT):
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.close(f"receive failed: {e.strerror or e}")
                return
            if not data:
                self.eof = True  # the client may half-close after its queries: still answer them
                break
            self.rbuf += data
            if len(data) < RECV_SIZE:
                break
        self._frames()
        if not self.closed:
            self._update_reading()
            self._finish_if_done()

    def _frames(self) -> None:
        """Hand every complete message in rbuf to the service, up to MAX_INFLIGHT at a time."""
        if self._in_frames:
            return  # a reply given synchronously by query(): the outer call goes on
        self._in_frames = True
        try:
            while not self.closed and self.inflight < MAX_INFLIGHT and len(self.rbuf) >= 2:
                size = int.from_bytes(self.rbuf[:2], "big")
                if size < HEADER:
                    self.service._note("tcp_bad_frame", "dns tcp from %s: %d-byte message length", self.client, size)
                    self.close("bad frame")
                    return
                if len(self.rbuf) < 2 + size:
                    return
                message = bytes(self.rbuf[2:2 + size])
                del self.rbuf[:2 + size]
                self._last_activity = self.loop.time()
                self.inflight += 1
                if not self.service.query(message, self.client, self.server, self._reply_once()):
                    self.close("malformed query")  # counted by the service
                    return
        finally:
            self._in_frames = False

    # -- writing ----------------------------------------------------------------------

    def _reply_once(self):
        done = False

        def reply(data: bytes) -> None:
            nonlocal done
            if done:
                return
            done = True
            self.inflight -= 1
            self._send(data)

        return reply

    def _send(self, data: bytes) -> None:
        if self.closed:
            return
        if len(data) > 0xFFFF:
            self.service._note("tcp_reply_too_big", "dns tcp to %s: %d-byte reply cannot be framed", self.client, len(data))
        else:
            self.wbuf += len(data).to_bytes(2, "big") + data
            self._last_activity = self.loop.time()
            self._flush()
        if self.closed:
            return
        if self.rbuf:
            self._frames()  # messages that waited for an inflight slot
        if not self.closed:
            self._update_reading()
            self._finish_if_done()

    def _flush(self) -> None:
        while self.wbuf:
            try:
                sent = self.sock.send(self.wbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self.close(f"send failed: {e.strerror or e}")
                return
            del self.wbuf[:sent]
        want = bool(self.wbuf)
        if want and not self._writing:
            self.loop.add_writer(self.fd, self._writable)
        elif not want and self._writing:
            self.loop.remove_writer(self.fd)
        self._writing = want

    def _writable(self) -> None:
        before = len(self.wbuf)
        self._flush()
        if self.closed:
            return
        if len(self.wbuf) < before:
            self._last_activity = self.loop.time()
        self._update_reading()
        self._finish_if_done()

    # -- ending -------------------------------------------------------------------------

    def _finish_if_done(self) -> None:
        """After the client's EOF: close once every query is answered and written."""
        if self.eof and not self.inflight and not self.wbuf and not self._complete_frame():
            if self.rbuf:
                self.service._note("tcp_truncated", "dns tcp from %s: connection ended inside a message", self.client)
            self.close("done")

    def _complete_frame(self) -> bool:
        return len(self.rbuf) >= 2 and len(self.rbuf) >= 2 + int.from_bytes(self.rbuf[:2], "big")

    def _check_idle(self) -> None:
        if self.closed:
            return
        left = self._last_activity + self.idle_timeout - self.loop.time()
        if left > 0 or self.inflight:  # in-flight queries end within the service's timeout
            self._timer = self.loop.call_later(left if left > 0 else 1.0, self._check_idle)
            return
        if self.rbuf:
            self.service._note("tcp_truncated", "dns tcp from %s: idle inside a message", self.client)
        self.service.counters["tcp_idle"] += 1  # normal (RFC 7766 idle close): no warning
        self.close(f"idle for {self.idle_timeout:.0f}s")

    def close(self, reason: str) -> None:
        """Release the socket, its loop registrations and its timer. Idempotent."""
        if self.closed:
            return
        self.closed = True
        log.debug("dns tcp from %s closed: %s", self.client, reason)
        self._timer.cancel()
        if self._reading:
            self.loop.remove_reader(self.fd)
        if self._writing:
            self.loop.remove_writer(self.fd)
        self._reading = self._writing = False
        self.sock.close()
        self.rbuf.clear()
        self.wbuf.clear()
        self.service._tcp_closed(self)
