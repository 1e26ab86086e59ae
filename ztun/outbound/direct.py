"""The direct outbound: connect to a flow's original destination from ztun's own sockets (fwmark or bound), never blocking."""

import errno
import socket

from .._fast import udptable
from ..system.sockopt import Egress

UDP_BUFFER = 4 << 20  # a session's socket absorbs bursts while the loop is busy elsewhere
UDP_READS_PER_EVENT = 64  # bounded per readiness event so other fds get their turn
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)  # Linux: non-blocking from creation, no extra ioctl
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0)  # Linux: ICMP errors queued on a socket (IP_RECVERR)
_IP_RECVERR, _IPV6_RECVERR = 11, 25  # <linux/in.h>, <linux/in6.h>


class Connecting:
    """A connect in progress, made by the loop's socket worker (loop.sockq); cancel() closes it without calling back.

    Until the worker has made the call, the socket is the worker's too: it is closed through
    loop.sockq, never directly.
    """

    __slots__ = ("loop", "sock", "on_done", "timer", "done", "watching")

    def __init__(self, loop, sock, address, on_done, timeout):
        self.loop, self.sock, self.on_done, self.done, self.watching = loop, sock, on_done, False, False
        loop.sockq.connect(sock, address, self._started)  # a bad address raises here; the result comes later
        self.timer = loop.call_later(timeout, self._finish, errno.ETIMEDOUT)

    def _started(self, err):
        if self.done:
            return
        if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            self.loop.add_writer(self.sock.fileno(), self._writable)
            self.watching = True
        else:
            self._finish(err)

    def _writable(self):
        self._finish(self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR))

    def _finish(self, err):
        if self.done:
            return
        self._end()
        on_done, self.on_done = self.on_done, None  # on_done often holds this object: no cycle left for the GC
        if err:
            self.loop.sockq.close(self.sock)
            on_done(None, OSError(err, f"connect: {errno.errorcode.get(err, err)}"))
        else:
            on_done(self.sock, None)

    def _end(self):
        self.done = True
        self.timer.cancel()
        if self.watching:
            self.loop.remove_writer(self.sock.fileno())

    def cancel(self):
        if not self.done:
            self._end()
            self.on_done = None
            self.loop.sockq.close(self.sock)


def tcp_socket(family: int, egress=0) -> socket.socket:
    """A non-blocking TCP socket with TCP_NODELAY (the relay forwards what it has at once), marked or bound
    as egress says (an Egress, or an fwmark)."""
    sock = socket.socket(family, socket.SOCK_STREAM | _SOCK_NONBLOCK)
    try:
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        Egress.of(egress).apply(sock, family)
    except BaseException:
        sock.close()
        raise
    return sock


def connect(loop, address: tuple, on_done, *, egress=0, timeout: float = 10.0) -> Connecting:
    """Start a non-blocking TCP connect to address; on_done(sock, None) or on_done(None, OSError) runs once."""
    host, port = str(address[0]), address[1]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)  # an address literal only: a name would resolve, blocking the loop
    except OSError:
        raise ValueError(f"{host!r} is not an IP address") from None
    sock = tcp_socket(family, egress)
    try:
        return Connecting(loop, sock, (host, port), on_done, timeout)
    except (OSError, ValueError, OverflowError):
        sock.close()
        raise


def udp_socket(family: int, egress=0, recverr: bool = False) -> socket.socket:
    """A non-blocking UDP socket with large buffers, marked or bound as egress says, for one UDP session. recverr: the
    destinations' ICMP errors are queued on it (IP_RECVERR), for the session's table to answer the
    client with (from the first datagram on: the table takes the socket over after it)."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        _buffers(sock, UDP_BUFFER)
        Egress.of(egress).apply(sock, family)
        if recverr and _MSG_ERRQUEUE:
            level, name = (socket.SOL_IP, _IP_RECVERR) if family == socket.AF_INET else (socket.IPPROTO_IPV6, _IPV6_RECVERR)
            sock.setsockopt(level, name, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def give_socket(loop, sock: socket.socket, kind: int, reader, attach):
    """Hand a UDP flow's socket to a session's table (UdpFlow.hand_over): the loop stops watching it
    first (the table may watch it on this loop too), and again with reader when the table cannot
    take it. attach's detach callable, or None."""
    loop.remove_reader(sock.fileno())
    detach = attach(sock, kind)
    if detach is None:
        loop.add_reader(sock.fileno(), reader)
    return detach


def _drop_errors(sock: socket.socket) -> None:
    """Empty the socket's error queue (its entries use the receive buffer's room)."""
    for _ in range(64):
        try:
            sock.recvmsg(1, 256, _MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except OSError:
            return


class DirectUdpFlow:
    """One UDP session's socket: datagrams to any destination, replies from any source."""

    def __init__(self, outbound: "DirectOutbound", family: int, on_datagram, on_close):
        self.loop = outbound.loop
        self.counters = outbound.counters
        self.on_datagram, self.on_close = on_datagram, on_close  # on_close: a direct flow never dies by itself
        self.sock = udp_socket(family, outbound.egress, recverr=True)
        self.closed = False
        self._detach = None  # set once the socket is handed over to a session's table
        self.loop.add_reader(self.sock.fileno(), self._readable)

    def send(self, payload: bytes, destination: tuple, domain: str | None = None) -> bool:
        """Send payload to destination (domain is ignored: direct goes to the address). False if dropped."""
        if self.closed:
            return False
        try:
            self.sock.sendto(payload, (destination[0], destination[1]))
        except OSError:  # full buffer, ICMP error of an earlier datagram, wrong family: a lost datagram
            self.counters["udp_send_failed"] += 1
            return False
        return True

    def _readable(self):
        for _ in range(UDP_READS_PER_EVENT):
            if self.closed:
                return
            try:
                data, addr = self.sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["udp_recv_error"] += 1  # e.g. port unreachable for an earlier send: not fatal
                if _MSG_ERRQUEUE:
                    _drop_errors(self.sock)
                continue
            self.on_datagram(data, (addr[0], addr[1]))

    def hand_over(self, attach) -> bool:
        """The session's table reads the socket's replies from now on (see UdpFlow)."""
        if self._detach is None and not self.closed:
            self._detach = give_socket(self.loop, self.sock, udptable.DIRECT, self._readable, attach)
        return self._detach is not None

    def route_for(self, destination: tuple, domain: str | None = None) -> tuple:
        """Straight to the destination's address (domain is ignored, as in send)."""
        host = destination[0]
        return (socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host), destination[1]), None

    def close(self) -> None:
        """Release the socket. Idempotent; on_close is not called."""
        if not self.closed:
            self.closed = True
            if self._detach is not None:
                self._detach()
            else:
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class DirectOutbound:
    """Flows go straight to their destination, from sockets carrying ztun's fwmark or bound to the uplink (egress)."""

    blocks = False
    resolves_names = False  # a fake-IP flow's name is looked up first
    proxy_address = None

    def __init__(self, loop, *, fwmark: int = 0, egress: Egress | None = None, connect_timeout: float = 10.0,
                 name: str = "direct"):
        self.loop = loop
        self.name = name
        self.egress = egress if egress is not None else Egress(fwmark)  # shared: the monitor moves its binding
        self.fwmark = self.egress.fwmark
        self.connect_timeout = connect_timeout
        self.counters: dict[str, int] = {"tcp_ok": 0, "tcp_failed": 0, "udp_flows": 0,
                                         "udp_send_failed": 0, "udp_recv_error": 0}

    def open_tcp(self, destination: tuple, on_done, domain: str | None = None):
        """Connect to destination (host, port); on_done(sock, error) runs once on the loop. domain is ignored."""

        def done(sock, error):
            self.counters["tcp_ok" if error is None else "tcp_failed"] += 1
            on_done(sock, error)

        return connect(self.loop, destination, done, egress=self.egress, timeout=self.connect_timeout)

    def open_udp(self, family: int, on_datagram, on_close) -> DirectUdpFlow:
        """A UDP flow on one socket of family (marked or bound); on_datagram(payload, (host, port)) for each reply."""
        flow = DirectUdpFlow(self, family, on_datagram, on_close)
        self.counters["udp_flows"] += 1
        return flow

    def close(self) -> None:
        """Nothing is held between flows (each flow owns its socket). Idempotent."""


def _buffers(sock: socket.socket, size: int) -> None:
    """Socket buffers of size bytes: beyond net.core.[rw]mem_max where CAP_NET_ADMIN allows it."""
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
