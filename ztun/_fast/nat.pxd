# The NatTable's C layout, for the modules that run its batch path from their own thread
# (tunpump.pyx): the table is the same object either way; `lock` keeps the two threads apart.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

from core cimport *


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)


cdef struct Flow:
    uint8_t src[16]
    uint8_t dst[16]
    double created
    double last_seen
    uint64_t pout, bout, pin, bin
    uint64_t hash
    uint32_t isn  # the client's initial sequence number: a SYN with another is a new connection
    uint16_t sport, dport, nat_port, nat_index
    uint8_t version, proto, state, fins, decision, in_use


cdef class NatTable:
    cdef Flow *flows
    cdef int32_t *slots
    cdef uint64_t mask
    cdef int32_t *free_ids  # ids given back, a stack; ids at and above fresh_ids were never used
    cdef Py_ssize_t n_free, n_used, fresh_ids
    cdef int32_t *rev
    cdef uint16_t *rings  # per next address, the freed ports, oldest first
    cdef uint32_t *rested  # per ring slot: the second (rounded up) its port may be reused from
    cdef uint32_t *fresh  # per next address, how many never-used ports were handed out
    cdef double port_rest
    cdef uint32_t *ring_head
    cdef uint32_t *ring_count
    cdef uint32_t n_ports
    cdef uint16_t port_min
    cdef uint8_t *next_addr
    cdef int n4, n_next
    cdef uint8_t stack4[4]
    cdef uint8_t stack6[16]
    cdef bint has4, has6
    cdef uint16_t port4, port6
    cdef uint64_t seed
    cdef double timeouts[N_STATES]
    cdef Py_ssize_t cursor
    cdef uint64_t *vcount
    cdef uint64_t *dcount
    cdef pthread_mutex_t lock  # held by every method that reads or changes the table
    cdef bint has_lock
    cdef readonly Py_ssize_t capacity
    cdef readonly object config
    cdef readonly object verdict_counts
    cdef readonly object drop_counts

    cdef uint64_t _hash(self, int version, int proto, const uint8_t *src, uint16_t sport,
                        const uint8_t *dst, uint16_t dport) noexcept nogil
    cdef int32_t _find(self, uint64_t h, int version, int proto, const uint8_t *src, uint16_t sport,
                       const uint8_t *dst, uint16_t dport) noexcept nogil
    cdef int32_t _alloc(self, uint64_t h, int version, int proto, const uint8_t *src, uint16_t sport,
                        const uint8_t *dst, uint16_t dport, double now, uint32_t isn) noexcept nogil
    cdef void _delete(self, int32_t fid, bint rest=*) noexcept nogil
    cdef Flow *_get(self, Py_ssize_t fid) noexcept nogil
    cdef int _copy(self, Py_ssize_t fid, Flow *out) except -1
    cdef int _set(self, Py_ssize_t fid, uint8_t decision, double last_seen) except -1
    cdef int _one(self, uint8_t *p, Meta *m, double now, int *reason, int32_t *fid_out) noexcept nogil
    cdef void forget_new(self, int32_t fid) noexcept nogil
    cdef Py_ssize_t process_rows(self, uint8_t *data, Py_ssize_t stride, Meta *meta, uint8_t *verdicts,
                                 uint8_t *reasons, int32_t *flow_ids, Py_ssize_t count, double now,
                                 Py_ssize_t *no_flow) noexcept nogil
