"""Packets the system stack writes itself: UDP replies, TCP resets, ICMP unreachables. Compiled.

IPv4 packets carry DF with ID 0 (RFC 6864 atomic datagrams) and TTL 64; IPv6 hop limit 64.
Each function writes one packet into out's slot and returns its length (0 if it does not fit).
build_py.py is the twin.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset

from ..errors import PacketError

from core cimport *

cdef enum:
    _HOP = 64
    _Q4 = 576 - 20 - 8  # RFC 1812 4.3.2.3: as much as fits in 576 bytes
    _Q6 = 1280 - 40 - 8  # RFC 4443 2.4 (c): as much as fits in the IPv6 minimum MTU

HOP_LIMIT = _HOP
ICMP4_QUOTE = _Q4
ICMP6_QUOTE = _Q6


cdef inline int _ip_header(uint8_t *p, int alen, int proto, const uint8_t *src, const uint8_t *dst, uint32_t payload_len) noexcept nogil:
    """Write an IPv4 or IPv6 header at p; return its length."""
    if alen == 4:
        memset(p, 0, 20)
        p[0] = 0x45
        zt_put16(p + 2, <uint16_t>(20 + payload_len))
        p[6] = 0x40
        p[8] = _HOP
        p[9] = <uint8_t>proto
        memcpy(p + 12, src, 4)
        memcpy(p + 16, dst, 4)
        zt_put16(p + 10, <uint16_t>~zt_sum(p, 20, 0))
        return 20
    memset(p, 0, 8)
    p[0] = 0x60
    zt_put16(p + 4, <uint16_t>payload_len)
    p[6] = <uint8_t>proto
    p[7] = _HOP
    memcpy(p + 8, src, 16)
    memcpy(p + 24, dst, 16)
    return 40


cdef uint8_t *_slot(out, Py_ssize_t slot, Py_ssize_t length) except? NULL:
    """Slot's packet start if length (-1: too long for any slot) fits, else NULL; zeroes the
    virtio header of a vnet batch. IndexError for a slot outside out, whatever the length."""
    cdef uint8_t[:, ::1] data = out.data
    if slot < 0 or slot >= data.shape[0]:
        raise IndexError(f"slot {slot} outside the batch")
    if length < 0 or length > data.shape[1] - HEADROOM or length > out.max_packet:
        return NULL
    if out.vnet_hdr:
        memset(&data[slot, HEADROOM - VNET_HDR_LEN], 0, VNET_HDR_LEN)
    out.lengths[slot] = length
    return &data[slot, HEADROOM]


cdef Meta *_meta(batch, Py_ssize_t i) except NULL:
    cdef Meta *m = meta_of(batch)
    if i < 0 or i >= batch.meta.shape[0]:
        raise IndexError(f"slot {i} outside the batch")
    return m + i


def udp_packet(out, Py_ssize_t slot, const uint8_t[::1] src, uint16_t sport, const uint8_t[::1] dst, uint16_t dport, const uint8_t[::1] payload):
    """An IPv4 or IPv6 (by address length) UDP datagram from src:sport to dst:dport."""
    cdef Py_ssize_t alen = src.shape[0], n = payload.shape[0], ulen = 8 + n
    cdef int hlen = 20 if alen == 4 else 40
    cdef uint8_t *p
    cdef uint8_t *u
    cdef uint16_t cs
    if alen != dst.shape[0] or (alen != 4 and alen != 16):
        raise PacketError("addresses must both be 4 or both be 16 bytes")
    p = _slot(out, slot, hlen + ulen if ulen <= 0xFFFF else -1)
    if p == NULL:
        return 0
    with nogil:
        _ip_header(p, alen, PROTO_UDP, &src[0], &dst[0], ulen)
        u = p + hlen
        zt_put16(u, sport)
        zt_put16(u + 2, dport)
        zt_put16(u + 4, <uint16_t>ulen)
        zt_put16(u + 6, 0)
        if n:
            memcpy(u + 8, &payload[0], n)
        cs = <uint16_t>~zt_sum(u, ulen, zt_pseudo(&src[0], &dst[0], alen, PROTO_UDP, ulen))
        zt_put16(u + 6, cs if cs else 0xFFFF)
    return hlen + ulen


def tcp_reset(batch, Py_ssize_t i, out, Py_ssize_t slot):
    """The RST a closed port sends back for slot i's TCP packet (RFC 9293 3.10.7.1)."""
    cdef Meta *m = _meta(batch, i)
    cdef int alen, hlen, flags = m.tcp_flags, out_flags
    cdef uint32_t seq, ack
    cdef uint8_t *p
    cdef uint8_t *t
    if m.status != OK or m.proto != PROTO_TCP or m.frag != FRAG_NONE or flags & TCP_RST:
        return 0
    alen = 4 if m.version == 4 else 16
    hlen = 20 if alen == 4 else 40
    if flags & TCP_ACK:
        seq, ack, out_flags = m.ack, 0, TCP_RST
    else:
        seq = 0
        ack = m.seq + m.payload_len + (1 if flags & TCP_SYN else 0) + (1 if flags & TCP_FIN else 0)
        out_flags = TCP_RST | TCP_ACK
    p = _slot(out, slot, hlen + 20)
    if p == NULL:
        return 0
    _ip_header(p, alen, PROTO_TCP, m.dst, m.src, 20)
    t = p + hlen
    memset(t, 0, 20)
    zt_put16(t, m.dst_port)
    zt_put16(t + 2, m.src_port)
    zt_put32(t + 4, seq)
    zt_put32(t + 8, ack)
    t[12] = 5 << 4
    t[13] = <uint8_t>out_flags
    zt_put16(t + 16, <uint16_t>~zt_sum(t, 20, zt_pseudo(m.dst, m.src, alen, PROTO_TCP, 20)))
    return hlen + 20


def icmp_unreachable(batch, Py_ssize_t i, out, Py_ssize_t slot, uint8_t code):
    """ICMP destination unreachable for slot i's packet: code is the ICMPv4 code (3 port, 13 prohibited);
    IPv6 uses the matching ICMPv6 code (4 port, 1 prohibited)."""
    cdef Meta *m = _meta(batch, i)
    cdef uint8_t[:, ::1] data = batch.data
    cdef int alen, hlen, t = m.icmp_type
    cdef uint32_t quote, blen
    cdef uint8_t *p
    cdef uint8_t *b
    if m.status != OK:
        return 0
    alen = 4 if m.version == 4 else 16
    if m.frag == FRAG_LATER or (m.dst[0] >= 224 if alen == 4 else m.dst[0] == 0xFF):
        return 0
    if alen == 4 and m.proto == PROTO_ICMP and not (t == 0 or t == 8 or 13 <= t <= 18):
        return 0
    if alen == 16 and m.proto == PROTO_ICMPV6 and t < 128:
        return 0
    hlen = 20 if alen == 4 else 40
    quote = m.ip_len
    if quote > <uint32_t>(_Q4 if alen == 4 else _Q6):
        quote = _Q4 if alen == 4 else _Q6
    blen = 8 + quote
    p = _slot(out, slot, hlen + blen)
    if p == NULL:
        return 0
    b = p + hlen
    memset(b, 0, 8)
    memcpy(b + 8, &data[i, HEADROOM], quote)
    if alen == 4:
        _ip_header(p, 4, PROTO_ICMP, m.dst, m.src, blen)
        b[0] = 3
        b[1] = code
        zt_put16(b + 2, <uint16_t>~zt_sum(b, blen, 0))
    else:
        _ip_header(p, 16, PROTO_ICMPV6, m.dst, m.src, blen)
        b[0] = 1
        b[1] = <uint8_t>(4 if code == 3 else (1 if code == 13 else code))
        zt_put16(b + 2, <uint16_t>~zt_sum(b, blen, zt_pseudo(m.dst, m.src, 16, PROTO_ICMPV6, blen)))
    return hlen + blen
