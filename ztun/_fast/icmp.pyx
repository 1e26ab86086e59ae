"""ICMP and ICMPv6 echo answered in place over a parsed PacketBatch, compiled; icmp_py.py is the twin.

A request becomes its reply by swapping the addresses, resetting the TTL / hop limit and
turning type 8 into 0 (128 into 129), with RFC 1624 checksum updates: the payload is never
summed again.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

from ..errors import PacketError

from core cimport *

cdef enum:
    TTL = 64  # of every reply, as a fresh packet from its destination would have

REPLY_TTL = TTL


cdef inline void _swap(uint8_t *a, uint8_t *b, int n) noexcept nogil:
    cdef uint8_t t[16]
    memcpy(t, a, n)
    memcpy(a, b, n)
    memcpy(b, t, n)


cdef inline bint _unicast(const uint8_t *a, int version) noexcept nogil:
    # Class D/E and limited broadcast for IPv4, ff00::/8 for IPv6: never reply from or to them.
    return a[0] < 224 if version == 4 else a[0] != 0xFF


cdef inline uint16_t _update16(uint16_t csum, uint16_t old, uint16_t new) noexcept nogil:
    return zt_apply(csum, <uint32_t>(<uint16_t>~old) + new)


cdef inline bint _zero(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i]:
            return False
    return True


cdef int _answer(uint8_t *p, Meta *m) noexcept nogil:
    """Turn the echo request at p into its reply; return 1, or 0 if it is not one to answer."""
    cdef uint8_t *l4 = p + m.l4_off
    cdef uint16_t old, new, csum
    if m.status != OK or m.frag != FRAG_NONE or m.icmp_code != 0:
        return 0
    if m.version == 4:
        if m.proto != PROTO_ICMP or m.icmp_type != 8:
            return 0
        if not (_unicast(p + 12, 4) and _unicast(p + 16, 4)):
            return 0
        _swap(p + 12, p + 16, 4)  # a swap leaves every checksum's sum unchanged
        old = zt_be16(p + 8)
        new = (TTL << 8) | p[9]
        p[8] = TTL
        zt_put16(p + 10, _update16(zt_be16(p + 10), old, new))
        old = zt_be16(l4)
        l4[0] = 0
        csum = _update16(zt_be16(l4 + 2), old, zt_be16(l4))
        # RFC 1624 gives 0x0000 where a full sum gives 0xFFFF only if the whole message is
        # zero; with no pseudo-header that can happen here, and a receiver rejects it.
        if csum == 0 and _zero(l4, 2) and _zero(l4 + 4, m.ip_len - m.l4_off - 4):
            csum = 0xFFFF
        zt_put16(l4 + 2, csum)
        return 1
    if m.proto != PROTO_ICMPV6 or m.icmp_type != 128:
        return 0
    if not (_unicast(p + 8, 6) and _unicast(p + 24, 6)):
        return 0
    _swap(p + 8, p + 24, 16)
    p[7] = TTL
    old = zt_be16(l4)
    l4[0] = 129
    zt_put16(l4 + 2, _update16(zt_be16(l4 + 2), old, zt_be16(l4)))
    return 1


cdef inline uint8_t _classify(Meta *m) noexcept nogil:
    if m.status != OK:
        return V_DROP
    if m.frag == FRAG_LATER:
        return V_OTHER
    if (m.version == 4 and m.proto == PROTO_ICMP) or (m.version == 6 and m.proto == PROTO_ICMPV6):
        return V_ICMP
    if m.proto == PROTO_UDP:
        return V_UDP
    return V_OTHER


def echo_batch(batch, bint classify=True, verdict_counts=None, drop_counts=None):
    """Answer the echo requests among slots 0..batch.count-1 in place; return how many.

    parse_batch must have filled batch.meta. With classify, every slot gets a verdict first:
    V_DROP (batch.reasons = parse status) if malformed, V_ICMP, V_UDP, or V_OTHER (TCP,
    other protocols, later fragments); without it the verdicts already there are used (the
    NAT's). Then each V_ICMP slot holding an echo request to and from unicast addresses
    becomes its reply and V_WRITE. verdict_counts (uint64[N_VERDICTS]) and drop_counts
    (uint64[N_REASONS]) are incremented per slot by final verdict and drop reason.
    """
    cdef uint8_t[:, ::1] data = batch.data
    cdef int[::1] lengths = batch.lengths
    cdef uint8_t[::1] verdicts = batch.verdicts, reasons = batch.reasons
    cdef uint64_t[::1] vc, dc
    cdef Meta *meta = meta_of(batch)
    cdef Py_ssize_t count = batch.count, i, answered = 0
    cdef bint count_v = verdict_counts is not None, count_d = drop_counts is not None
    if count < 0 or count > data.shape[0]:
        raise PacketError(f"batch.count {count} outside 0..{data.shape[0]}")
    if count_v:
        vc = verdict_counts
        if vc.shape[0] < N_VERDICTS:
            raise PacketError(f"verdict_counts needs {N_VERDICTS} entries")
    if count_d:
        dc = drop_counts
        if dc.shape[0] < N_REASONS:
            raise PacketError(f"drop_counts needs {N_REASONS} entries")
    with nogil:
        for i in range(count):
            if classify:
                verdicts[i] = _classify(&meta[i])
                reasons[i] = meta[i].status
            # parse_batch saw at most the slot's room; meta offsets lie inside it.
            if verdicts[i] == V_ICMP and lengths[i] > 0 and _answer(&data[i, HEADROOM], &meta[i]):
                verdicts[i] = V_WRITE
                answered += 1
            if count_v and verdicts[i] < N_VERDICTS:
                vc[verdicts[i]] += 1
            if count_d and verdicts[i] == V_DROP and reasons[i] < N_REASONS:
                dc[reasons[i]] += 1
    return answered
