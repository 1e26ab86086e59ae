"""Connect, shutdown and close on a worker thread (zt_sockq.h), compiled; sockq_py.py is the twin.

Over a veth these calls do the peer's work inline (a connect runs both ends of the
handshake, a shutdown the peer's FIN), a third of the loop's time under a connection
storm. Queued, they run on another core in the order given (calls that find the queue
full wait in order behind it). A socket handed to close() or abort() is detached at once
and closed by the worker.
"""
import logging
import operator
import os
import socket
from collections import deque


from libc.errno cimport EINVAL, errno
from libc.stdint cimport uint64_t
from libc.string cimport memcpy

log = logging.getLogger("ztun.sockq")

from sockaddr cimport fill_sockaddr, ntohs, sockaddr_in, sockaddr_in6, sockaddr_storage, socklen_t

cdef extern from "zt_sockq.h" nogil:
    enum:
        ZT_OP_CONNECT
        ZT_OP_SHUTDOWN
        ZT_OP_CLOSE
        ZT_OP_ABORT
        ZT_SOCKQ_BATCH

    ctypedef struct zt_op:
        int kind
        int fd
        uint64_t token
        socklen_t addrlen
        sockaddr_storage addr

    ctypedef struct zt_result:
        uint64_t token
        int err

    ctypedef struct zt_sockq:
        pass

    zt_sockq *zt_sockq_new(unsigned capacity, int notify_fd, int epoll_fd)
    int zt_sockq_push(zt_sockq *q, const zt_op *op)
    void zt_sockq_kick(zt_sockq *q)
    unsigned zt_sockq_results(zt_sockq *q, zt_result *out, unsigned max)
    void zt_sockq_free(zt_sockq *q)
    int zt_sockq_run(const zt_op *op, int epoll_fd)
    int zt_accept_nb(int fd, sockaddr_storage *peer, socklen_t *len)
    bint zt_again(int err)
    bint zt_accept_skip(int err)

THREADED = True
_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)


def accept_batch(listener, int most):
    """Accept up to most connections from listener: ([(socket, peer address bytes, peer port)], errno).

    The sockets are non-blocking from accept4 (no extra call) and their peers raw 4- or
    16-byte addresses (no text to parse again). errno is 0, or what stopped the batch
    early other than "nothing left" (EMFILE, ENOBUFS, ...); a connection that failed before
    it was taken (ECONNABORTED, a pending network error) is skipped, within 2 * most calls.
    """
    cdef int lfd = listener.fileno()
    cdef int fd, err = 0, calls = 0
    cdef sockaddr_storage peer
    cdef socklen_t plen
    cdef sockaddr_in *a4 = <sockaddr_in *>&peer
    cdef sockaddr_in6 *a6 = <sockaddr_in6 *>&peer
    out = []
    family = listener.family
    kind = socket.SOCK_STREAM | _SOCK_NONBLOCK
    while len(out) < most and calls < 2 * most:
        calls += 1
        plen = sizeof(peer)
        with nogil:
            fd = zt_accept_nb(lfd, &peer, &plen)
            if fd < 0:
                err = errno
        if fd < 0:
            if zt_again(err):
                err = 0
                break
            if zt_accept_skip(err):
                err = 0
                continue
            break
        try:
            sock = socket.socket(family, kind, 0, fd)
        except BaseException:
            os.close(fd)
            raise
        if not _SOCK_NONBLOCK:
            sock.setblocking(False)  # the fd is; Python's idea of it follows
        if peer.ss_family == socket.AF_INET:
            out.append((sock, (<char *>&a4.sin_addr)[:4], ntohs(a4.sin_port)))
        else:
            out.append((sock, (<char *>&a6.sin6_addr)[:16], ntohs(a6.sin6_port)))
    return out, err


# The docstring's first lines are the constructor's signature for inspect.signature (as NatTable's).
cdef class SocketQueue:
    """SocketQueue(loop, capacity=4096, epoll_fd=-1)
--

The loop's worker thread for connect, shutdown and close of non-blocking sockets.

    Every call on a socket handed here must go through here until its connect result came
    back: the worker may still be about to use the fd.
    """

    cdef zt_sockq *q
    cdef object loop
    cdef int notify_r, notify_w
    cdef dict waiting  # token -> callback of a queued connect
    cdef object overflow  # images of the calls that found the queue full, in order
    cdef uint64_t next_token
    cdef readonly unsigned long long queued, overflowed, ran_inline
    cdef unsigned long long kicked
    cdef bint kick_due  # a kick waits for the end of the loop iteration
    cdef bint piped  # notify_r/notify_w are open (0 is stdin before __cinit__ sets them)

    def __cinit__(self, loop, capacity=4096, int epoll_fd=-1):
        """epoll_fd: the loop's epoll (Linux), which a socket leaves before the worker closes it."""
        self.q = NULL
        capacity = operator.index(capacity)
        if not 0 < capacity <= 1 << 20:
            raise ValueError("capacity must be 1 to 2**20")
        self.loop = loop
        self.waiting = {}
        self.overflow = deque()
        self.next_token = 1
        r, w = os.pipe()  # not inherited by children
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.notify_r, self.notify_w = r, w
        self.piped = True
        self.q = zt_sockq_new(<unsigned>capacity, w, epoll_fd)
        if self.q == NULL:
            err = errno
            self._close_pipe()
            raise OSError(err, f"sockq worker: {os.strerror(err)}")
        loop.add_reader(r, self._results)

    cdef _close_pipe(self):
        if self.piped:
            self.piped = False
            os.close(self.notify_r)
            os.close(self.notify_w)

    cdef bint _push(self, zt_op *op, int *err):
        """Queue op (behind the overflow, if any); once stopped, run it here and set *err. True if queued."""
        if self.q == NULL:
            with nogil:
                err[0] = zt_sockq_run(op, -1)
            self.ran_inline += 1
            return False
        if not self.overflow and zt_sockq_push(self.q, op):
            self.queued += 1
        else:  # never at once: a call queued before it on the same fd must come first
            self.overflow.append((<char *>op)[:sizeof(zt_op)])
            self.overflowed += 1
        self._kick_at_end()
        return True

    cdef _kick_at_end(self):
        """Kick at the end of this loop iteration: one wake-up of the worker serves all its calls."""
        if self.kick_due:
            return
        try:
            self.loop.call_at_end(self.kick)
            self.kick_due = True
        except RuntimeError:  # a closed loop (a queue it does not own): wake the worker now
            self.kicked = self.queued
            zt_sockq_kick(self.q)

    cdef _drain(self):
        """Move what the overflow holds into the queue, as far as it has room."""
        cdef zt_op op
        cdef bytes image
        while self.overflow:
            image = self.overflow[0]
            memcpy(&op, <const char *>image, sizeof(zt_op))
            if not zt_sockq_push(self.q, &op):
                break
            self.overflow.popleft()
            self.queued += 1

    def connect(self, sock, address, callback):
        """Start sock's non-blocking connect to address (an IP literal and a port).

        callback(err) runs on the loop once the call was made: 0 (connected), EINPROGRESS
        or EWOULDBLOCK (wait for writability), or the errno it failed with (ECONNREFUSED
        too where the refusal came inside the call, as over loopback). A bad address
        raises here.
        """
        cdef zt_op op
        cdef int err = 0
        fill_sockaddr(&op.addr, &op.addrlen, address)  # of the socket's family, or connect() fails (reported like any error)
        op.kind = ZT_OP_CONNECT
        op.fd = sock.fileno()
        if op.fd < 0:
            raise ValueError("the socket is closed")
        op.token = self.next_token
        if self._push(&op, &err):
            self.waiting[self.next_token] = callback
            self.next_token += 1
        else:
            self.loop.call_soon(callback, err)

    def shutdown(self, sock):
        """shutdown(SHUT_WR): the peer gets a FIN after the bytes already sent. Errors are ignored."""
        self._call(ZT_OP_SHUTDOWN, sock.fileno())

    def close(self, sock):
        """Close sock (detached now, closed on the worker)."""
        self._call(ZT_OP_CLOSE, sock.detach())

    def abort(self, sock):
        """Close sock with a reset (SO_LINGER 0)."""
        self._call(ZT_OP_ABORT, sock.detach())

    cdef _call(self, int kind, int fd):
        """Queue a call whose result nobody waits for (a closed socket's fd, -1, is skipped)."""
        cdef zt_op op
        cdef int err
        if fd >= 0:
            op.kind = kind
            op.fd = fd
            self._push(&op, &err)

    def kick(self):
        """Start the worker on the calls queued since the last kick (at the end of the loop
        iteration that queued them: Loop.call_at_end)."""
        self.kick_due = False
        if self.q == NULL:
            return
        if self.overflow:
            self._drain()
            if self.overflow:  # no room yet: look again at the next iteration's end
                self._kick_at_end()
        if self.queued != self.kicked:
            self.kicked = self.queued
            zt_sockq_kick(self.q)

    def _results(self):
        cdef zt_result out[ZT_SOCKQ_BATCH]
        cdef unsigned n, k
        try:
            os.read(self.notify_r, 64)
        except BlockingIOError:
            pass
        while self.q != NULL:
            n = zt_sockq_results(self.q, out, ZT_SOCKQ_BATCH)
            for k in range(n):
                callback = self.waiting.pop(out[k].token, None)
                if callback is not None:
                    try:
                        callback(out[k].err)
                    except Exception:
                        log.exception("connect callback %r failed", callback)
            if n < ZT_SOCKQ_BATCH:
                break
        if self.overflow and self.q != NULL:
            self.kick()

    def stop(self):
        """Make the calls still queued (in order), stop the worker; later calls run at once. Idempotent.

        Connect results not yet delivered are dropped (their callbacks never run).
        """
        cdef zt_op op
        cdef bytes image
        if self.q == NULL:
            return
        self.loop.remove_reader(self.notify_r)
        with nogil:
            zt_sockq_free(self.q)
        self.q = NULL
        while self.overflow:
            image = self.overflow.popleft()
            memcpy(&op, <const char *>image, sizeof(zt_op))
            with nogil:
                zt_sockq_run(&op, -1)
            self.ran_inline += 1
        self.waiting.clear()
        self._close_pipe()

    def __dealloc__(self):
        if self.q != NULL:
            with nogil:
                zt_sockq_free(self.q)
            self.q = NULL
        self._close_pipe()
