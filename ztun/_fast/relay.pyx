"""The relay engine (zt_relay.h), compiled; relay_py.py is the twin (relays on the loop).

Established TCP relays leave Python: compiled pumps move their bytes (splice through pipes,
or recv/send through a buffer) on a native thread with its own epoll (the far set). With
ZTUN_RELAY_NEAR=1 a relay starts in the near set instead, pumped on the loop's thread when its
sockets are ready (one compiled call for all of them, no Python per relay), until it moves
bulk and goes over to the far set. Ends are reported in batches through a pipe the loop
reads. Python is called once per relay at its start (add) and once at its end (on_close).
"""
import logging
import operator
import os

from libc.errno cimport errno
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc

from . import spin

log = logging.getLogger("ztun.relay")

cdef extern from "zt_relay.h" nogil:
    enum:
        ZT_END_DONE
        ZT_END_RESET
        ZT_END_IDLE
        ZT_END_CLOSED

    ctypedef struct zt_dir:
        uint64_t bytes

    ctypedef struct zt_relay:
        zt_dir d[2]

    ctypedef struct zt_end:
        uint64_t id
        int reason
        uint64_t up, down

    ctypedef struct pthread_mutex_t:
        pass

    ctypedef struct zt_engine:
        pthread_mutex_t lock
        uint32_t live
        zt_end *ends
        uint32_t nends, ends_cap
        int notified
        int near_fd
        uint32_t again_cap
        uint32_t batch_small, batch_after, batch_lowat
        uint64_t events, pumps, wakeups, promoted, rearmed, batched
        uint64_t spin_found, spin_empty, spin_ns

    zt_engine *zt_engine_new(uint32_t capacity, int notify_fd, double sweep_every, int near_on, int batch_on,
                             double spin)
    void zt_engine_stop(zt_engine *e)
    void zt_engine_free(zt_engine *e)
    uint64_t zt_engine_add(zt_engine *e, int client, int remote, double idle, int use_splice)
    zt_relay *zt_relay_find(zt_engine *e, uint64_t id)
    int zt_relay_end(zt_engine *e, zt_relay *r, int reason, int report)
    int zt_engine_poll(zt_engine *e)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from *:
    """
    static inline uint64_t zt_relaxed(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    """
    uint64_t zt_relaxed(uint64_t *p) nogil

THREADED = True
REASONS = {ZT_END_DONE: "done", ZT_END_RESET: "reset", ZT_END_IDLE: "idle", ZT_END_CLOSED: "closed"}


# The docstring's first lines are the constructor's signature for inspect.signature (as NatTable's).
cdef class RelayEngine:
    """RelayEngine(loop, on_close, capacity=65536, sweep_every=1.0, spin_us=None)
--

Relays between pairs of connected sockets on a native thread, off the loop.

    on_close(token, reason, bytes_up, bytes_down) runs on the loop once per relay that
    ended by itself: reason "done" (both ways ended), "reset" (an error on either side: both
    sockets closed with a reset) or "idle" (nothing moved for its idle timeout: reset).
    A relay ended by end() is not reported there: end() returns its byte counts.
    capacity bounds the relays open at once; sweep_every is how often idle relays are
    looked for (seconds; at most a quarter of the shortest idle timeout added, so a relay
    idles out between its idle timeout and 1.25 times it). spin_us (0..1000; None:
    ZTUN_RELAY_SPIN, else SPIN_US): how long the engine's thread looks for more events before it
    sleeps, after a wake-up that found some (see zt_relay.h); 0 never.
    """

    cdef zt_engine *e
    cdef object loop
    cdef object on_close
    cdef dict tokens  # relay id -> token
    cdef int notify_r, notify_w
    cdef bint piped
    cdef bint near
    cdef bint batch

    def __cinit__(self, loop, on_close, capacity=65536, double sweep_every=1.0, spin_us=None):
        self.e = NULL
        capacity = operator.index(capacity)
        if not 0 < capacity <= 1 << 24:
            raise ValueError("capacity must be 1 to 2**24")
        if not 0.001 <= sweep_every <= 3600:
            raise ValueError("sweep_every must be 0.001 to 3600 seconds")
        self.loop = loop
        self.on_close = on_close
        self.tokens = {}
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self.notify_r, self.notify_w = r, w
        self.piped = True
        # ZTUN_RELAY_NEAR=1: new relays start in the near set, pumped on the loop's thread (less CPU,
        # measured no faster); by default every relay is the engine thread's
        self.near = os.environ.get("ZTUN_RELAY_NEAR", "0") == "1"
        # ZTUN_RELAY_BATCH=0: a source that streams small segments is read as each one lands, not in
        # batches at a low-water mark (see zt_relay.h)
        self.batch = os.environ.get("ZTUN_RELAY_BATCH", "1") != "0"
        spin_us = spin.spin_us("ZTUN_RELAY_SPIN", spin.RELAY_US) if spin_us is None else operator.index(spin_us)
        if not 0 <= spin_us <= spin.MAX_US:
            self._close_pipe()
            raise ValueError(f"spin_us must be 0..{spin.MAX_US}, got {spin_us}")
        self.e = zt_engine_new(<uint32_t>capacity, w, sweep_every, self.near, self.batch, spin_us * 1e-6)
        if self.e == NULL:
            err = errno
            self._close_pipe()
            raise OSError(err, f"relay engine: {os.strerror(err)}")
        loop.add_reader(r, self.collect)
        if self.near:
            loop.add_reader(self.e.near_fd, self.poll)
            loop.call_every_iteration(self.poll)

    cdef _close_pipe(self):
        if self.piped:
            self.piped = False
            os.close(self.notify_r)
            os.close(self.notify_w)

    @property
    def open(self) -> int:
        """Relays open now (a gauge)."""
        return self.e.live if self.e != NULL else 0

    def stats(self) -> dict:
        """Counters: the engine thread's wake-ups, the socket events taken and the relay pumps (on
        either thread), the relays that went over to the thread's set, the relays re-armed in
        their epoll because the list of those to pump again was full, the directions that began
        reading in batches (a source streaming small segments), the thread's spins that found an
        event and those that found none, and the time spent in them (spin_us)."""
        if self.e == NULL:
            return {"wakeups": 0, "events": 0, "pumps": 0, "promoted": 0, "rearmed": 0, "batched": 0,
                    "spin_found": 0, "spin_empty": 0, "spin_us": 0}
        return {"wakeups": self.e.wakeups, "events": self.e.events, "pumps": self.e.pumps,
                "promoted": self.e.promoted, "rearmed": self.e.rearmed, "batched": self.e.batched,
                "spin_found": self.e.spin_found, "spin_empty": self.e.spin_empty, "spin_us": self.e.spin_ns // 1000}

    def _set_again_cap(self, uint32_t cap):
        """Tests only: how many relays the list of those to pump again holds (at most its size)."""
        if self.e == NULL:
            return
        with nogil:
            pthread_mutex_lock(&self.e.lock)
            self.e.again_cap = cap if cap < self.e.again_cap else self.e.again_cap
            pthread_mutex_unlock(&self.e.lock)

    def _set_batch(self, uint32_t small, uint32_t after, uint32_t lowat):
        """Tests only: what counts as a small read, after how many bytes a direction may batch, and
        the low-water mark it then gets."""
        if self.e == NULL:
            return
        with nogil:
            pthread_mutex_lock(&self.e.lock)
            self.e.batch_small, self.e.batch_after, self.e.batch_lowat = small, after, lowat
            pthread_mutex_unlock(&self.e.lock)

    def add(self, token, client, remote, double idle_timeout=300.0, bint splice=True) -> int:
        """Relay client and remote (connected sockets) until they end; the engine owns both from
        here (they are detached, also when this raises). The relay's id."""
        cdef int cfd, rfd
        cdef uint64_t rid
        cdef int err = 0
        for sock in (client, remote):
            self.loop.remove_reader(sock)
            self.loop.remove_writer(sock)
            if sock.fileno() >= 0 and sock.getblocking():  # splice on a blocking socket would block
                sock.setblocking(False)
        cfd = client.detach()
        rfd = remote.detach()
        if self.e == NULL:
            for fd in (cfd, rfd):
                if fd >= 0:
                    os.close(fd)
            raise RuntimeError("the relay engine is stopped")
        if cfd < 0 or rfd < 0:
            for fd in (cfd, rfd):
                if fd >= 0:
                    os.close(fd)
            raise ValueError("the socket is closed")
        with nogil:
            pthread_mutex_lock(&self.e.lock)
            rid = zt_engine_add(self.e, cfd, rfd, idle_timeout if idle_timeout > 0 else 0.0, splice)
            if rid == 0:
                err = errno
            pthread_mutex_unlock(&self.e.lock)
        if rid == 0:
            raise OSError(err, f"relay: {os.strerror(err)}")
        self.tokens[rid] = token
        return rid

    def counts(self, uint64_t rid):
        """(bytes up, bytes down) of a live relay so far, or None once it ended."""
        if self.e == NULL:
            return None
        cdef zt_relay *r = zt_relay_find(self.e, rid)
        if r == NULL:
            return None
        up = zt_relaxed(&r.d[0].bytes)
        down = zt_relaxed(&r.d[1].bytes)
        if zt_relay_find(self.e, rid) != r:  # ended while read
            return None
        return up, down

    def end(self, uint64_t rid, bint reset=False):
        """End a live relay now (both sockets closed; with a reset if reset): its (bytes up, bytes
        down), or None if it had ended already (its end is reported by collect)."""
        cdef zt_relay *r
        cdef uint64_t up = 0, down = 0
        cdef bint found = False
        if self.e == NULL:
            return None
        with nogil:
            pthread_mutex_lock(&self.e.lock)
            r = zt_relay_find(self.e, rid)
            if r != NULL:
                found = True
                up = r.d[0].bytes
                down = r.d[1].bytes
                zt_relay_end(self.e, r, ZT_END_CLOSED if reset else ZT_END_DONE, 0)
            pthread_mutex_unlock(&self.e.lock)
        if not found:
            return None
        self.tokens.pop(rid, None)
        return up, down

    def poll(self) -> int:
        """Pump the near relays that are ready now, on the loop's thread, without waiting: the loop
        calls this when their epoll is readable and at the end of each iteration (the bytes its TUN
        writes just delivered move on at once). The number of socket events taken."""
        cdef int n = 0
        if self.e == NULL or self.e.live == 0:
            return 0
        with nogil:
            pthread_mutex_lock(&self.e.lock)
            n = zt_engine_poll(self.e)
            pthread_mutex_unlock(&self.e.lock)
        return n

    def collect(self):
        """Report the relays that ended since the last collect (on_close for each). The loop calls
        this when the engine writes to its pipe."""
        cdef zt_end *ends
        cdef uint32_t n, k
        try:
            os.read(self.notify_r, 256)
        except (BlockingIOError, OSError):
            pass
        if self.e == NULL:
            return
        with nogil:
            pthread_mutex_lock(&self.e.lock)
            ends = self.e.ends
            n = self.e.nends
            self.e.ends = NULL
            self.e.nends = self.e.ends_cap = 0
            self.e.notified = 0
            pthread_mutex_unlock(&self.e.lock)
        try:
            for k in range(n):
                token = self.tokens.pop(ends[k].id, None)
                if token is None:
                    continue
                try:
                    self.on_close(token, REASONS.get(ends[k].reason, "closed"), ends[k].up, ends[k].down)
                except Exception:
                    log.exception("relay on_close failed")
        finally:
            free(ends)

    def stop(self):
        """End every relay (reported with reason "closed", reset) and the thread. Idempotent."""
        if self.e == NULL:
            return
        with nogil:
            zt_engine_stop(self.e)
        self.collect()
        self.loop.remove_reader(self.notify_r)
        if self.near:
            self.loop.remove_reader(self.e.near_fd)
            self.loop.remove_every_iteration(self.poll)
        with nogil:
            zt_engine_free(self.e)
        self.e = NULL
        self._close_pipe()
        self.tokens.clear()

    def close(self):
        """stop(): Loop.close closes what its `shared` dict holds."""
        self.stop()

    def __dealloc__(self):
        if self.e != NULL:
            with nogil:
                zt_engine_free(self.e)
            self.e = NULL
        self._close_pipe()
