"""The twin of sockq.pyx: the same SocketQueue, each call made at once on the loop's thread."""

import errno
import operator
import select
import socket

from ..net import abort
from .connect_address import split_address
from .typed_args import sint

THREADED = False
# a connection that failed before it was taken (accept(2): pending network errors), or a firewall
_SKIP = {getattr(errno, name) for name in ("EINTR", "ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENETUNREACH",
                                            "EHOSTDOWN", "EHOSTUNREACH", "ENOPROTOOPT", "EOPNOTSUPP", "ENONET")
         if hasattr(errno, name)}


def accept_batch(listener, most: int):
    """Accept up to most connections: ([(non-blocking socket, peer address bytes, peer port)], errno or 0)."""
    out = []
    for _ in range(2 * most):
        if len(out) >= most:
            break
        try:
            sock, peer = listener.accept()
        except (BlockingIOError, InterruptedError):
            return out, 0
        except OSError as e:
            if e.errno in _SKIP:
                continue
            return out, e.errno
        sock.setblocking(False)
        out.append((sock, socket.inet_pton(sock.family, peer[0]), peer[1]))
    return out, 0


def _outcome(sock, err: int) -> int:
    """A connect's result if already known (over loopback it usually is), else err (still in progress)."""
    if hasattr(select, "poll"):  # select() cannot take an fd over FD_SETSIZE
        p = select.poll()
        p.register(sock, select.POLLOUT)
        done = bool(p.poll(0))
    else:
        _, w, x = select.select((), (sock,), (sock,), 0)  # Windows reports a failed connect in x
        done = bool(w or x)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if done else err


def _address(address):
    """(family, connect()'s address) from (host, port[, flowinfo, scope_id]), read and refused as
    sockq.pyx reads it: an IP literal, IPv6 if it has a colon."""
    host, port, flowinfo, scope_id = split_address(address)
    family = socket.AF_INET6 if b":" in host else socket.AF_INET
    text = host.decode("latin-1")
    try:
        socket.inet_pton(family, text)
    except OSError:
        raise ValueError(f"{address[0]!r} is not an {'IPv4' if family == socket.AF_INET else 'IPv6'} address") from None
    return family, ((text, port) if family == socket.AF_INET else (text, port, flowinfo, scope_id))


class SocketQueue:
    """connect, shutdown and close of non-blocking sockets, made at once (sockq.pyx queues them)."""

    def __init__(self, loop, capacity: int = 4096, epoll_fd: int = -1):
        capacity, epoll_fd = operator.index(capacity), sint(epoll_fd, 32)
        if not 0 < capacity <= 1 << 20:
            raise ValueError("capacity must be 1 to 2**20")
        self.loop = loop
        self.queued = self.overflowed = self.ran_inline = 0

    def connect(self, sock, address, callback) -> None:
        """Start sock's non-blocking connect; callback(err) runs on the loop: 0 (connected), EINPROGRESS/EWOULDBLOCK or the errno."""
        family, address = _address(address)
        if sock.fileno() < 0:
            raise ValueError("the socket is closed")
        if family != sock.family:  # what connect() says of it, as in the compiled queue
            err = errno.EAFNOSUPPORT
        else:
            err = sock.connect_ex(address)
            if err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                err = _outcome(sock, err)
        self.ran_inline += 1
        self.loop.call_soon(callback, err)

    def shutdown(self, sock) -> None:
        """shutdown(SHUT_WR); errors are ignored."""
        self.ran_inline += 1
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, sock) -> None:
        self.ran_inline += 1
        sock.close()

    def abort(self, sock) -> None:
        """Close sock with a reset (SO_LINGER 0)."""
        self.ran_inline += 1
        abort(sock)

    def kick(self) -> None:
        """Nothing is queued."""

    def stop(self) -> None:
        """Nothing waits: every call was made at once."""
