"""The NAT flow table behind the system stack, compiled; nat_py.py is the twin.

Client packets C:c -> D:d are rewritten to B:n -> A:P (the kernel listener) and the
kernel's replies A:P -> B:n back to D:d -> C:c, with RFC 1624 checksum updates.
Memory is allocated once: a flow array, an open-addressing index (linear probing,
backward-shift delete, keyed hash), a reverse array by NAT port, and per-address FIFO
rings of freed ports so a port is never handed out while in use and is reused last (never-used
ports first, counted rather than listed, so 16 next addresses of 64k ports cost no memory until
used; a freed one not before it has rested beyond the kernel's TIME_WAIT; see NatConfig.port_rest).
"""
cimport cython
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcpy, memcmp, memset

import os
import socket

import numpy as np

from ..errors import NatPortsExhausted, NatTableFull, PacketError
from . import defs as d
from .nat_config import counters, flow_info, key_addr

from core cimport *


cdef inline void _acquire(pthread_mutex_t *lock) noexcept:
    """Take the table's lock from Python: at once when it is free, else with the GIL let go while waiting."""
    if pthread_mutex_trylock(lock) != 0:
        with nogil:
            pthread_mutex_lock(lock)


cdef int _no_flow(Py_ssize_t fid) except -1:
    raise KeyError(f"no flow {fid}")


cdef inline uint64_t _mix(uint64_t h, uint64_t w) noexcept nogil:
    h ^= w
    h *= 0x9E3779B97F4A7C15ULL
    return h ^ (h >> 29)


cdef inline uint64_t _load64(const uint8_t *p) noexcept nogil:
    cdef uint64_t v
    memcpy(&v, p, 8)
    return v


cdef inline void _rewrite(uint8_t *p, const Meta *m, int alen, const uint8_t *nsrc, uint16_t nsport,
                          const uint8_t *ndst, uint16_t ndport) noexcept nogil:
    """Set addresses and TCP ports; RFC 1624 updates of the IPv4 header and TCP checksums.

    With VNET_F_NEEDS_CSUM the TCP checksum field holds the (uncomplemented) pseudo-header
    sum, which covers the addresses but not the ports: it gets the address delta only.
    """
    cdef int aoff = 12 if alen == 4 else 8
    cdef uint32_t delta = zt_delta(p + aoff, nsrc, alen) + zt_delta(p + aoff + alen, ndst, alen)
    cdef uint8_t *l4 = p + m.l4_off
    if alen == 4:
        zt_put16(p + 10, zt_apply(zt_be16(p + 10), delta))
    memcpy(p + aoff, nsrc, alen)
    memcpy(p + aoff + alen, ndst, alen)
    if m.vnet_flags & VNET_F_NEEDS_CSUM:
        zt_put16(l4 + 16, <uint16_t>zt_fold(<uint64_t>zt_be16(l4 + 16) + delta))
    else:
        delta += <uint16_t>~zt_be16(l4) + <uint32_t>nsport + <uint16_t>~zt_be16(l4 + 2) + <uint32_t>ndport
        zt_put16(l4 + 16, zt_apply(zt_be16(l4 + 16), delta))
    zt_put16(l4, nsport)
    zt_put16(l4 + 2, ndport)


cdef inline uint32_t _rest_until(double last_seen, double rest) noexcept nogil:
    """The whole second from which a port freed after last_seen may be reused (never earlier than last_seen + rest)."""
    cdef double t = last_seen + rest
    if t <= 0:
        return 0
    if t >= 4294967295.0:
        return 4294967295u
    return <uint32_t>t + (1 if <double>(<uint32_t>t) < t else 0)


cdef inline void _fin_state(Flow *f) noexcept nogil:
    if f.state != ST_RESET and f.fins:
        f.state = ST_CLOSING if f.fins == (FIN_CLIENT | FIN_SERVER) else ST_FIN_WAIT


# The docstring's first lines are the constructor's signature in CPython's text-signature form
# ("--" below it), which inspect.signature reads: a cdef class's __cinit__ has none of its own.
# Not cleared by the garbage collector: a TunPump's thread writes the counters (vcount, dcount
# point into verdict_counts, drop_counts) until the pump, which holds the table, is gone.
@cython.no_gc_clear
cdef class NatTable:
    """NatTable(config)
--

Fixed-capacity TCP NAT table: O(1) insert, lookup, reverse lookup and delete."""

    def __cinit__(self, config):
        cdef Py_ssize_t i, k
        cdef uint64_t m = 16
        self.config = config
        self.capacity = config.capacity
        while m < <uint64_t>(2 * self.capacity):
            m <<= 1
        self.mask = m - 1
        nxt = config.next_addresses
        self.n4 = len(config.next4)
        self.n_next = len(nxt)
        self.n_ports = config.port_max - config.port_min + 1
        self.port_min = config.port_min
        self.flows = <Flow *>PyMem_Calloc(self.capacity, sizeof(Flow))
        self.slots = <int32_t *>PyMem_Calloc(m, sizeof(int32_t))
        self.free_ids = <int32_t *>PyMem_Calloc(self.capacity, sizeof(int32_t))
        self.rev = <int32_t *>PyMem_Calloc(self.n_next * self.n_ports, sizeof(int32_t))
        self.rings = <uint16_t *>PyMem_Calloc(self.n_next * self.n_ports, sizeof(uint16_t))
        self.rested = <uint32_t *>PyMem_Calloc(self.n_next * self.n_ports, sizeof(uint32_t))
        self.fresh = <uint32_t *>PyMem_Calloc(self.n_next, sizeof(uint32_t))
        self.ring_head = <uint32_t *>PyMem_Calloc(self.n_next, sizeof(uint32_t))
        self.ring_count = <uint32_t *>PyMem_Calloc(self.n_next, sizeof(uint32_t))
        self.next_addr = <uint8_t *>PyMem_Calloc(self.n_next, 16)
        if not (self.flows and self.slots and self.free_ids and self.rev and self.rings and self.rested
                and self.fresh and self.ring_head and self.ring_count and self.next_addr):
            raise MemoryError(f"NAT table of capacity {self.capacity}")
        self.n_free = self.fresh_ids = 0  # ids come fresh (0 first) until given back: untouched capacity costs no memory
        for k in range(self.n_next):
            a = nxt[k]
            memcpy(self.next_addr + 16 * k, <const char *>a, len(a))
        self.port_rest = config.port_rest
        self.has4 = config.stack4 is not None
        if self.has4:
            memcpy(self.stack4, <const char *>config.stack4, 4)
            self.port4 = config.port4
        self.has6 = config.stack6 is not None
        if self.has6:
            memcpy(self.stack6, <const char *>config.stack6, 16)
            self.port6 = config.port6
        for i in range(N_STATES):
            self.timeouts[i] = config.timeouts[i]
        self.seed = int.from_bytes(os.urandom(8), "little")
        self.verdict_counts = np.zeros(N_VERDICTS, dtype=np.uint64)
        self.drop_counts = np.zeros(N_REASONS, dtype=np.uint64)
        cdef uint64_t[::1] vc = self.verdict_counts, dc = self.drop_counts
        self.vcount = &vc[0]
        self.dcount = &dc[0]
        if pthread_mutex_init(&self.lock, NULL) != 0:
            raise MemoryError("NAT table lock")
        self.has_lock = True

    def __dealloc__(self):
        if self.has_lock:
            pthread_mutex_destroy(&self.lock)
        PyMem_Free(self.flows)
        PyMem_Free(self.slots)
        PyMem_Free(self.free_ids)
        PyMem_Free(self.rev)
        PyMem_Free(self.rings)
        PyMem_Free(self.rested)
        PyMem_Free(self.fresh)
        PyMem_Free(self.ring_head)
        PyMem_Free(self.ring_count)
        PyMem_Free(self.next_addr)

    def __len__(self):
        return self.n_used

    # -- index ------------------------------------------------------------------

    cdef uint64_t _hash(self, int version, int proto, const uint8_t *src, uint16_t sport,
                               const uint8_t *dst, uint16_t dport) noexcept nogil:
        cdef uint64_t h = self.seed
        h = _mix(h, _load64(src))
        h = _mix(h, _load64(src + 8))
        h = _mix(h, _load64(dst))
        h = _mix(h, _load64(dst + 8))
        h = _mix(h, (<uint64_t>sport << 32) | (<uint64_t>dport << 16) | (<uint64_t>proto << 8) | <uint64_t>version)
        return h

    cdef int32_t _find(self, uint64_t h, int version, int proto, const uint8_t *src, uint16_t sport,
                       const uint8_t *dst, uint16_t dport) noexcept nogil:
        cdef uint64_t i = h & self.mask
        cdef int32_t fid
        cdef Flow *f
        while True:
            fid = self.slots[i] - 1  # slots hold id + 1, so the calloc'ed table needs no filling
            if fid < 0:
                return -1
            f = &self.flows[fid]
            if (f.hash == h and f.sport == sport and f.dport == dport and f.proto == proto
                    and f.version == version and memcmp(f.src, src, 16) == 0 and memcmp(f.dst, dst, 16) == 0):
                return fid
            i = (i + 1) & self.mask

    cdef int32_t _alloc(self, uint64_t h, int version, int proto, const uint8_t *src, uint16_t sport,
                        const uint8_t *dst, uint16_t dport, double now, uint32_t isn) noexcept nogil:
        """A new flow (decision pending), or a negative drop reason."""
        cdef int lo, hi, idx
        cdef uint32_t port = 0
        cdef int32_t fid
        cdef uint64_t i
        cdef Flow *f
        if self.n_free == 0 and self.fresh_ids >= self.capacity:
            return -TABLE_FULL
        lo = 0 if version == 4 else self.n4
        hi = self.n4 if version == 4 else self.n_next
        # The first next address with a port never used, or whose oldest freed port has rested
        # (see NatConfig.port_rest); never-used ports go first, so a freed one is reused last.
        idx = lo
        while idx < hi:
            if self.fresh[idx] < self.n_ports:
                port = self.port_min + self.fresh[idx]
                self.fresh[idx] += 1
                break
            if self.ring_count[idx] and now >= self.rested[idx * self.n_ports + self.ring_head[idx]]:
                port = self.rings[idx * self.n_ports + self.ring_head[idx]]
                self.ring_head[idx] = (self.ring_head[idx] + 1) % self.n_ports
                self.ring_count[idx] -= 1
                break
            idx += 1
        if idx >= hi:
            return -NO_PORT
        if self.n_free:
            self.n_free -= 1
            fid = self.free_ids[self.n_free]
        else:
            fid = <int32_t>self.fresh_ids
            self.fresh_ids += 1
        self.n_used += 1
        f = &self.flows[fid]
        memset(f, 0, sizeof(Flow))
        memcpy(f.src, src, 16)
        memcpy(f.dst, dst, 16)
        f.sport = sport
        f.dport = dport
        f.version = version
        f.proto = proto
        f.hash = h
        f.isn = isn
        f.nat_index = idx
        f.nat_port = port
        f.state = ST_SYN_SENT
        f.decision = D_PENDING
        f.created = now
        f.last_seen = now
        f.in_use = 1
        i = h & self.mask
        while self.slots[i] > 0:
            i = (i + 1) & self.mask
        self.slots[i] = fid + 1
        self.rev[idx * self.n_ports + (port - self.port_min)] = fid + 1
        return fid

    cdef void _delete(self, int32_t fid, bint rest=True) noexcept nogil:
        """Remove flow fid; its port goes to the back of its ring to rest, or (rest False) to the front, rested."""
        cdef Flow *f = &self.flows[fid]
        cdef uint64_t i = f.hash & self.mask, j, k
        cdef int idx = f.nat_index
        while self.slots[i] != fid + 1:
            i = (i + 1) & self.mask
        j = i
        while True:  # backward-shift delete: no tombstones
            j = (j + 1) & self.mask
            if self.slots[j] == 0:
                break
            k = self.flows[self.slots[j] - 1].hash & self.mask
            if (k <= j and (i < k or i > j)) or (k > j and i > j and i < k):
                continue  # entry at j lies between its home k and i: it stays
            self.slots[i] = self.slots[j]
            i = j
        self.slots[i] = 0
        self.rev[idx * self.n_ports + (f.nat_port - self.port_min)] = 0
        if rest:
            k = idx * self.n_ports + (self.ring_head[idx] + self.ring_count[idx]) % self.n_ports
            self.rested[k] = _rest_until(f.last_seen, self.port_rest)
        else:
            self.ring_head[idx] = (self.ring_head[idx] + self.n_ports - 1) % self.n_ports
            k = idx * self.n_ports + self.ring_head[idx]
            self.rested[k] = 0
        self.rings[k] = f.nat_port
        self.ring_count[idx] += 1
        f.in_use = 0
        self.free_ids[self.n_free] = fid
        self.n_free += 1
        self.n_used -= 1

    cdef Flow *_get(self, Py_ssize_t fid) noexcept nogil:
        """Flow fid, or NULL if there is none (the caller raises KeyError, after it let go of the lock)."""
        if fid < 0 or fid >= self.capacity or not self.flows[fid].in_use:
            return NULL
        return &self.flows[fid]

    # -- Python API -------------------------------------------------------------
    # Each method holds the table's lock while it reads or changes the table: a TunPump's
    # thread runs the batch path at the same time. No Python object is made while the lock is
    # held (errors are raised after it is let go): an allocation may run a garbage collection,
    # and with it any Python code (callbacks, finalizers, another thread given the GIL), which
    # could call into the table, or wait for the pump, and never let the lock go. And a method
    # that has to wait for the lock lets the GIL go while it waits (_acquire).

    def insert(self, uint8_t proto, src, uint16_t sport, dst, uint16_t dport, double now=0.0):
        """Add a flow (decision pending) and return its id; NatTableFull / NatPortsExhausted when refused."""
        cdef int version
        cdef bytes s, t
        cdef int32_t fid
        version, s, t = _key(src, dst)
        h = self._hash(version, proto, s, sport, t, dport)
        _acquire(&self.lock)
        if self._find(h, version, proto, s, sport, t, dport) >= 0:
            fid = -1
        else:
            fid = self._alloc(h, version, proto, s, sport, t, dport, now, 0)
            if fid < -1:
                self.dcount[-fid] += 1
        pthread_mutex_unlock(&self.lock)
        if fid == -1:
            raise ValueError("flow exists")
        if fid < 0:
            raise (NatTableFull if -fid == TABLE_FULL else NatPortsExhausted)(d.REASON_NAMES[-fid])
        return fid

    def lookup(self, uint8_t proto, src, uint16_t sport, dst, uint16_t dport):
        """The id of the flow with this 5-tuple, or -1."""
        cdef int version
        cdef bytes s, t
        cdef int32_t fid
        version, s, t = _key(src, dst)
        h = self._hash(version, proto, s, sport, t, dport)
        _acquire(&self.lock)
        fid = self._find(h, version, proto, s, sport, t, dport)
        pthread_mutex_unlock(&self.lock)
        return fid

    def lookup_nat(self, addr, int port):
        """The id of the flow that owns next address addr, NAT port port (an accepted socket's peer), or -1."""
        cdef bytes a = key_addr(addr)[1]
        cdef int k
        cdef int32_t fid = -1
        if port < self.port_min or port >= self.port_min + <int>self.n_ports:
            return -1
        for k in range(self.n_next):
            if memcmp(self.next_addr + 16 * k, <const char *>a, 16) == 0:
                _acquire(&self.lock)
                fid = self.rev[k * self.n_ports + (port - self.port_min)] - 1
                pthread_mutex_unlock(&self.lock)
                break
        return fid

    def delete(self, Py_ssize_t fid):
        """Remove flow fid and free its NAT port (to the back of the queue: reused last)."""
        cdef bint found
        _acquire(&self.lock)
        found = self._get(fid) != NULL
        if found:
            self._delete(<int32_t>fid)
        pthread_mutex_unlock(&self.lock)
        if not found:
            _no_flow(fid)

    def release(self, Py_ssize_t fid):
        """Remove flow fid, none of whose packets reached the kernel (its SYN was held, then refused or
        dropped): its NAT port has no TIME_WAIT to wait out and is handed out next. ValueError if allowed."""
        cdef Flow *f
        cdef int outcome = 0  # 1: no such flow, 2: allowed
        _acquire(&self.lock)
        f = self._get(fid)
        if f == NULL:
            outcome = 1
        elif f.decision == D_ALLOW:
            outcome = 2
        else:
            self._delete(<int32_t>fid, False)
        pthread_mutex_unlock(&self.lock)
        if outcome == 1:
            _no_flow(fid)
        if outcome == 2:
            raise ValueError(f"flow {fid} was allowed: its port must rest (delete it)")

    def flow(self, Py_ssize_t fid):
        cdef Flow f
        self._copy(fid, &f)
        return flow_info(self.config, fid, f.version, f.proto, f.src[:16], f.sport, f.dst[:16], f.dport,
                         f.nat_index, f.nat_port, f.state, f.decision, f.created, f.last_seen,
                         f.pout, f.bout, f.pin, f.bin)

    def endpoints(self, Py_ssize_t fid):
        """((source address, port), (destination address, port), NAT port) of flow fid, addresses as text."""
        cdef Flow f
        self._copy(fid, &f)
        fam = socket.AF_INET if f.version == 4 else socket.AF_INET6
        alen = 4 if f.version == 4 else 16
        return ((socket.inet_ntop(fam, f.src[:alen]), f.sport), (socket.inet_ntop(fam, f.dst[:alen]), f.dport), f.nat_port)

    cdef int _copy(self, Py_ssize_t fid, Flow *out) except -1:
        """*out: a copy of flow fid, read under the lock."""
        cdef Flow *f
        _acquire(&self.lock)
        f = self._get(fid)
        if f != NULL:
            out[0] = f[0]
        pthread_mutex_unlock(&self.lock)
        if f == NULL:
            _no_flow(fid)
        return 0

    def allow(self, Py_ssize_t fid):
        self._set(fid, D_ALLOW, -1.0)

    def block(self, Py_ssize_t fid):
        self._set(fid, D_BLOCK, -1.0)

    def touch(self, Py_ssize_t fid, double now):
        self._set(fid, 255, now)

    cdef int _set(self, Py_ssize_t fid, uint8_t decision, double last_seen) except -1:
        """Flow fid's decision (255: unchanged) and last_seen (below 0: unchanged), under the lock."""
        cdef Flow *f
        _acquire(&self.lock)
        f = self._get(fid)
        if f != NULL:
            if decision != 255:
                f.decision = decision
            if last_seen >= 0.0:
                f.last_seen = last_seen
        pthread_mutex_unlock(&self.lock)
        if f == NULL:
            _no_flow(fid)
        return 0

    def free_ports(self):
        cdef uint64_t free = 0
        cdef int k
        _acquire(&self.lock)
        for k in range(self.n_next):
            free += self.ring_count[k] + self.n_ports - self.fresh[k]
        pthread_mutex_unlock(&self.lock)
        return free

    def counters(self):
        return counters(self.verdict_counts, self.drop_counts)

    def sweep(self, double now, Py_ssize_t limit=4096):
        """Look at up to limit slots from where the last sweep stopped; delete idle flows. Returns how many."""
        cdef Py_ssize_t n, expired = 0
        cdef Flow *f
        if limit > self.capacity:
            limit = self.capacity
        with nogil:
            pthread_mutex_lock(&self.lock)
            for n in range(limit):
                f = &self.flows[self.cursor]
                if f.in_use and now - f.last_seen > self.timeouts[f.state]:
                    self._delete(<int32_t>self.cursor)
                    expired += 1
                self.cursor = (self.cursor + 1) % self.capacity
            pthread_mutex_unlock(&self.lock)
        return expired

    # -- the batch path -----------------------------------------------------------

    def process_batch(self, batch, double now):
        """Rewrite TCP slots in place and set batch.verdicts/reasons/flow_ids; return the slots Python must look at."""
        cdef uint8_t[:, ::1] data = batch.data
        cdef uint8_t[::1] verdicts = batch.verdicts, reasons = batch.reasons
        cdef int32_t[::1] flow_ids = batch.flow_ids
        cdef Py_ssize_t count = batch.count, rare = 0, no_flow
        cdef Meta *meta = meta_of(batch)
        if count < 0 or count > data.shape[0]:
            raise PacketError(f"batch.count {count} outside 0..{data.shape[0]}")
        if count:
            with nogil:
                rare = self.process_rows(&data[0, 0], data.shape[1], meta, &verdicts[0], &reasons[0], &flow_ids[0],
                                         count, now, &no_flow)
        return rare

    cdef void forget_new(self, int32_t fid) noexcept nogil:
        """Remove flow fid if it is still new (decision pending), as release() does: its first packet
        was dropped before anyone saw it, and the client's retransmission must make it anew."""
        pthread_mutex_lock(&self.lock)
        if 0 <= fid < self.capacity and self.flows[fid].in_use and self.flows[fid].decision == D_PENDING:
            self._delete(fid, False)
        pthread_mutex_unlock(&self.lock)

    cdef Py_ssize_t process_rows(self, uint8_t *data, Py_ssize_t stride, Meta *meta, uint8_t *verdicts,
                                 uint8_t *reasons, int32_t *flow_ids, Py_ssize_t count, double now,
                                 Py_ssize_t *no_flow) noexcept nogil:
        """process_batch over raw rows (slot i's packet at data + i * stride + HEADROOM), under the lock;
        return the slots Python must look at, and in *no_flow the packets of no flow."""
        cdef Py_ssize_t i, rare = 0
        cdef int verdict, reason
        cdef int32_t fid
        no_flow[0] = 0
        pthread_mutex_lock(&self.lock)
        for i in range(count):
            verdict = self._one(data + i * stride + HEADROOM, &meta[i], now, &reason, &fid)
            verdicts[i] = verdict
            reasons[i] = reason
            flow_ids[i] = fid
            self.vcount[verdict] += 1
            if verdict == V_DROP:
                self.dcount[reason] += 1
                if reason == NO_FLOW:
                    no_flow[0] += 1
            elif verdict != V_WRITE:
                rare += 1
        pthread_mutex_unlock(&self.lock)
        return rare

    cdef int _one(self, uint8_t *p, Meta *m, double now, int *reason, int32_t *fid_out) noexcept nogil:
        cdef int version = m.version, proto = m.proto, alen, lo, hi, k, verdict
        cdef int flags = m.tcp_flags
        cdef uint16_t port
        cdef const uint8_t *stack
        cdef bint has, syn_only
        cdef int32_t fid
        cdef Flow *f
        cdef uint64_t h
        reason[0] = 0
        fid_out[0] = -1
        if m.status != OK:
            reason[0] = m.status
            return V_DROP
        if m.frag != FRAG_NONE:
            return V_OTHER
        if proto == PROTO_UDP:
            return V_UDP
        if proto == (PROTO_ICMP if version == 4 else PROTO_ICMPV6):
            return V_ICMP
        if proto != PROTO_TCP:
            return V_OTHER
        if version == 4:
            alen = 4
            stack = self.stack4
            port = self.port4
            has = self.has4
            lo = 0
            hi = self.n4
        else:
            alen = 16
            stack = self.stack6
            port = self.port6
            has = self.has6
            lo = self.n4
            hi = self.n_next

        if has and m.src_port == port and memcmp(m.src, stack, alen) == 0:  # kernel reply A:P -> B:n
            fid = -1
            for k in range(lo, hi):
                if memcmp(self.next_addr + 16 * k, m.dst, alen) == 0:
                    if m.dst_port >= self.port_min and m.dst_port - self.port_min < <int>self.n_ports:
                        fid = self.rev[k * self.n_ports + (m.dst_port - self.port_min)] - 1
                    break
            if fid < 0:
                reason[0] = NO_FLOW
                return V_DROP
            f = &self.flows[fid]
            _rewrite(p, m, alen, f.dst, f.dport, f.src, f.sport)
            if flags & TCP_RST:
                f.state = ST_RESET
            else:
                if f.state == ST_SYN_SENT and flags & TCP_SYN and flags & TCP_ACK:
                    f.state = ST_ESTABLISHED
                if flags & TCP_FIN:
                    f.fins |= FIN_SERVER
                _fin_state(f)
            f.pin += 1
            f.bin += m.payload_len
            f.last_seen = now
            fid_out[0] = fid
            return V_WRITE

        h = self._hash(version, proto, m.src, m.src_port, m.dst, m.dst_port)
        fid = self._find(h, version, proto, m.src, m.src_port, m.dst, m.dst_port)
        syn_only = (flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) == TCP_SYN
        if fid >= 0 and syn_only and (self.flows[fid].state == ST_CLOSING or self.flows[fid].state == ST_RESET
                                      or self.flows[fid].isn != m.seq):
            # The client reuses its port: a new connection. A SYN is a retransmission only with the
            # flow's first sequence number; with another, the connection the flow was made for is
            # gone for the client (though maybe not for the NAT: a lost reset, a half-open flood
            # flow), and rewritten onto the old flow's NAT port it would reach the kernel as a
            # second connection that no outbound connect was made for.
            self._delete(fid)
            fid = -1
        verdict = V_WRITE
        if fid < 0:
            if not syn_only:
                reason[0] = NO_FLOW
                return V_DROP
            fid = self._alloc(h, version, proto, m.src, m.src_port, m.dst, m.dst_port, now, m.seq)
            if fid < 0:
                reason[0] = -fid
                return V_DROP
            verdict = V_NEW_FLOW
        f = &self.flows[fid]
        fid_out[0] = fid
        if f.decision == D_BLOCK:
            f.last_seen = now
            reason[0] = BLOCKED
            return V_DROP
        if f.decision == D_PENDING and verdict != V_NEW_FLOW:
            reason[0] = PENDING
            return V_DROP
        _rewrite(p, m, alen, self.next_addr + 16 * f.nat_index, f.nat_port, stack, port)
        if flags & TCP_RST:
            f.state = ST_RESET
        elif flags & TCP_FIN:
            f.fins |= FIN_CLIENT
            _fin_state(f)
        f.pout += 1
        f.bout += m.payload_len
        f.last_seen = now
        return verdict


def _key(src, dst):
    v, s = key_addr(src)
    v2, t = key_addr(dst)
    if v != v2:
        raise ValueError("source and destination must be of one IP version")
    return v, s, t
