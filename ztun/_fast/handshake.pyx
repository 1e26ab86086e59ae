"""SOCKS5 negotiations on a native thread (includes/zt_handshake.h), compiled; handshake_py.py is the twin.

The connect to the proxy and every exchange of the negotiation run on the engine's thread;
the loop is woken once per negotiation, when it ended (one byte on a pipe serves every
negotiation that ended meanwhile). Linux (the engine waits in epoll).
"""
import logging
import operator
import os

from .defs import Progress

from libc.errno cimport EAGAIN, errno
from libc.stdint cimport uint16_t, uint32_t, uint64_t

from sockaddr cimport fill_sockaddr, sockaddr_storage, socklen_t

log = logging.getLogger("ztun.handshake")

cdef extern from "zt_handshake.h" nogil:
    enum:
        ZT_HS_OK
        ZT_HS_CONNECT_FAILED
        ZT_HS_SEND_FAILED
        ZT_HS_RECV_FAILED
        ZT_HS_EOF
        ZT_HS_PROTOCOL
        ZT_HS_GREET_MAX
        ZT_HS_AUTH_MAX
        ZT_HS_REQUEST_MAX
        ZT_HS_IN

    ctypedef struct zt_hs_engine:
        uint32_t capacity
        uint64_t started, finished, connect_inline

    ctypedef struct zt_hs_progress:
        int found, kind, err, connected, sending
        uint16_t len, partial
        unsigned char in_ "in"[ZT_HS_IN]

    zt_hs_engine *zt_hs_new(uint32_t capacity, int notify_fd)
    void zt_hs_free(zt_hs_engine *e)
    uint64_t zt_hs_start(zt_hs_engine *e, int fd, const sockaddr_storage *addr, socklen_t addrlen,
                         const unsigned char *greet, uint16_t glen, const unsigned char *auth, uint16_t alen,
                         const unsigned char *request, uint16_t rlen, int offered_auth)
    void zt_hs_cancel(zt_hs_engine *e, uint64_t id, zt_hs_progress *p)
    uint64_t zt_hs_collect(zt_hs_engine *e, zt_hs_progress *p)

# The C side's numbering, for tests/test_defs.py to hold against defs.HS_*.
KINDS = (ZT_HS_OK, ZT_HS_CONNECT_FAILED, ZT_HS_SEND_FAILED, ZT_HS_RECV_FAILED, ZT_HS_EOF, ZT_HS_PROTOCOL)
TRANSCRIPT_MAX = ZT_HS_IN


cdef object _progress(zt_hs_progress *p):
    return Progress(p.kind, p.err, (<char *>p.in_)[:p.len], p.partial, bool(p.connected), bool(p.sending))


# The docstring's first lines are the constructor's signature for inspect.signature (as NatTable's).
cdef class Handshakes:
    """Handshakes(loop, capacity=4096)
--

The loop's SOCKS5 negotiations, each from the connect to the proxy to its reply, on one native thread.

    A socket handed to start() is the engine's to use until its callback ran or cancel()
    returned; it stays the caller's to close.
    """

    cdef zt_hs_engine *e
    cdef object loop
    cdef int notify_r, notify_w
    cdef bint piped
    cdef dict waiting  # id -> callback
    cdef uint64_t stopped_at[3]  # started, finished, connect_inline when stopped

    def __cinit__(self, loop, capacity=4096):
        self.e = NULL
        self.stopped_at = [0, 0, 0]
        capacity = operator.index(capacity)
        if not 0 < capacity <= 1 << 20:
            raise ValueError("capacity must be 1 to 2**20")
        self.loop = loop
        self.waiting = {}
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.notify_r, self.notify_w = r, w
        self.piped = True
        self.e = zt_hs_new(<uint32_t>capacity, w)
        if self.e == NULL:
            err = errno
            self._close_pipe()
            raise OSError(err, f"handshake engine: {os.strerror(err)}")
        loop.add_reader(r, self._results)

    cdef _close_pipe(self):
        if self.piped:
            self.piped = False
            os.close(self.notify_r)
            os.close(self.notify_w)

    @property
    def capacity(self):
        """Negotiations at once."""
        return 0 if self.e == NULL else self.e.capacity

    @property
    def under_way(self):
        """Negotiations started whose callback has not run and that were not cancelled."""
        return len(self.waiting)

    @property
    def started(self):
        return self.stopped_at[0] if self.e == NULL else self.e.started

    @property
    def finished(self):
        return self.stopped_at[1] if self.e == NULL else self.e.finished

    @property
    def connect_inline(self):
        """Connects that completed inside the call (over a veth or loopback)."""
        return self.stopped_at[2] if self.e == NULL else self.e.connect_inline

    def start(self, sock, address, bytes greeting not None, bytes auth not None, bytes request not None,
              bint offered_auth, callback):
        """Connect sock (non-blocking, not connected) to the proxy at address and negotiate: send
        greeting, take the method selection, [send auth, take its reply], [send request, take the
        reply and its address]. callback(Progress) once, on the loop, at the end. Returns the
        negotiation's id (for cancel). A bad address or plan raises ValueError, a full engine
        OSError(EAGAIN), a stopped one RuntimeError."""
        cdef sockaddr_storage addr
        cdef socklen_t addrlen = 0
        cdef uint64_t id
        cdef int fd
        if self.e == NULL:
            raise RuntimeError("the handshake engine is stopped")
        if (len(greeting) == 0 or len(greeting) > ZT_HS_GREET_MAX or len(auth) > ZT_HS_AUTH_MAX
                or len(request) > ZT_HS_REQUEST_MAX):
            raise ValueError(f"negotiation plan out of bounds: greeting {len(greeting)}, auth {len(auth)}, "
                             f"request {len(request)} bytes")
        fill_sockaddr(&addr, &addrlen, address)
        fd = sock.fileno()
        if fd < 0:
            raise ValueError("the socket is closed")
        id = zt_hs_start(self.e, fd, &addr, addrlen, greeting, len(greeting), auth, len(auth), request,
                         len(request), offered_auth)
        if id == 0:
            raise OSError(EAGAIN, "too many SOCKS5 negotiations at once (the engine is full)")
        self.waiting[id] = callback
        return id

    def cancel(self, handshake_id):
        """Stop negotiation handshake_id where it is (its callback never runs; its socket may be closed at once):
        the Progress it had made, or None if it is unknown or ended already."""
        cdef zt_hs_progress p
        if self.waiting.pop(handshake_id, None) is None or self.e == NULL:
            return None
        zt_hs_cancel(self.e, <uint64_t>handshake_id, &p)
        return _progress(&p) if p.found else None

    def _results(self):
        cdef zt_hs_progress p
        cdef uint64_t id
        try:
            os.read(self.notify_r, 64)
        except BlockingIOError:
            pass
        while self.e != NULL:
            id = zt_hs_collect(self.e, &p)
            if id == 0:
                break
            callback = self.waiting.pop(id, None)
            if callback is None:
                continue
            try:
                callback(_progress(&p))
            except Exception:
                log.exception("handshake callback %r failed", callback)

    def stop(self):
        """Stop the thread; negotiations under way end without a callback (their sockets stay open). Idempotent."""
        if self.e == NULL:
            return
        self.loop.remove_reader(self.notify_r)
        self.stopped_at = [self.e.started, self.e.finished, self.e.connect_inline]
        with nogil:
            zt_hs_free(self.e)
        self.e = NULL
        self.waiting.clear()
        self._close_pipe()

    def __dealloc__(self):
        if self.e != NULL:
            with nogil:
                zt_hs_free(self.e)
            self.e = NULL
        self._close_pipe()
