"""Batch parse of raw IPv4/IPv6 packets and checksum verification, compiled.

A malformed packet yields a status code, never an exception or an out-of-bounds read;
its row is all zeros but for the status. packet_py.py is the twin.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset

from ..errors import PacketError

from core cimport *


cdef int parse_one(const uint8_t *p, Py_ssize_t n, Meta *m) noexcept nogil:
    """Fill *m from the n bytes at p; return the status (also stored in m.status)."""
    cdef uint32_t ihl, total, l4, avail, hlen, doff, ulen, offset
    cdef uint16_t fo
    cdef int version, proto, count, frag = FRAG_NONE
    memset(m, 0, sizeof(Meta))
    if n <= 0:
        return _bad(m, EMPTY)
    version = p[0] >> 4
    if version == 4:
        if n < 20:
            return _bad(m, TRUNCATED)
        ihl = (p[0] & 0x0F) * 4
        if ihl < 20:
            return _bad(m, BAD_IHL)
        total = zt_be16(p + 2)
        if total < ihl:
            return _bad(m, BAD_LENGTH)
        if total > n:
            return _bad(m, TRUNCATED)
        proto = p[9]
        m.hop_limit = p[8]
        memcpy(m.src, p + 12, 4)
        memcpy(m.dst, p + 16, 4)
        fo = zt_be16(p + 6)
        offset = (fo & 0x1FFF) * 8
        if offset:
            frag = FRAG_LATER
        elif fo & 0x2000:
            frag = FRAG_FIRST
        if frag:
            m.frag_id = zt_be16(p + 4)
            m.frag_offset = <uint16_t>offset
        l4 = ihl
    elif version == 6:
        if n < 40:
            return _bad(m, TRUNCATED)
        if zt_be16(p + 4) == 0:
            return _bad(m, BAD_LENGTH)
        total = 40 + zt_be16(p + 4)
        if total > n:
            return _bad(m, TRUNCATED)
        m.hop_limit = p[7]
        memcpy(m.src, p + 8, 16)
        memcpy(m.dst, p + 24, 16)
        proto = p[6]
        l4 = 40
        count = 0
        while (proto == 0 or proto == 43 or proto == 60 or proto == 44) and frag != FRAG_LATER:
            if count == MAX_EXT_HEADERS:
                return _bad(m, BAD_EXT_HEADER)
            if l4 + 8 > total:
                return _bad(m, TRUNCATED)
            if proto == 44:
                fo = zt_be16(p + l4 + 2)
                offset = fo & 0xFFF8
                if offset:
                    frag = FRAG_LATER
                elif fo & 1:
                    frag = FRAG_FIRST
                m.frag_id = zt_be32(p + l4 + 4)
                m.frag_offset = <uint16_t>offset
                hlen = 8
            else:
                hlen = (p[l4 + 1] + 1) * 8
                if l4 + hlen > total:
                    return _bad(m, TRUNCATED)
            proto = p[l4]
            l4 += hlen
            count += 1
    else:
        return _bad(m, BAD_VERSION)

    m.version = version
    m.proto = proto
    m.frag = frag
    m.ip_len = total
    m.l4_off = l4
    avail = total - l4
    m.payload_off = l4
    m.payload_len = avail
    if frag == FRAG_LATER:
        return OK
    if proto == PROTO_TCP:
        if avail < 20:
            return _bad(m, TRUNCATED)
        doff = (p[l4 + 12] >> 4) * 4
        if doff < 20:
            return _bad(m, BAD_TCP_HEADER)
        if doff > avail:
            return _bad(m, TRUNCATED)
        m.src_port = zt_be16(p + l4)
        m.dst_port = zt_be16(p + l4 + 2)
        m.seq = zt_be32(p + l4 + 4)
        m.ack = zt_be32(p + l4 + 8)
        m.tcp_flags = p[l4 + 13]
        m.payload_off = l4 + doff
        m.payload_len = avail - doff
    elif proto == PROTO_UDP:
        if avail < 8:
            return _bad(m, TRUNCATED)
        ulen = zt_be16(p + l4 + 4)
        if frag == FRAG_NONE:
            if ulen < 8 or ulen > avail:
                return _bad(m, BAD_UDP_LENGTH)
            m.payload_len = ulen - 8
        else:
            m.payload_len = avail - 8
        m.src_port = zt_be16(p + l4)
        m.dst_port = zt_be16(p + l4 + 2)
        m.payload_off = l4 + 8
    elif (version == 4 and proto == PROTO_ICMP) or (version == 6 and proto == PROTO_ICMPV6):
        if avail < 8:
            return _bad(m, TRUNCATED)
        m.icmp_type = p[l4]
        m.icmp_code = p[l4 + 1]
        m.payload_off = l4 + 8
        m.payload_len = avail - 8
    return OK


cdef int check_vnet(const uint8_t *h, Meta *m) noexcept nogil:
    """Validate a virtio_net_hdr against the parsed packet in *m; record its flags and GSO fields."""
    cdef int flags = h[0], gso_type = h[1], gso = h[1] & ~GSO_ECN
    cdef uint32_t hdr_len = zt_le16(h + 2), gso_size = zt_le16(h + 4)
    cdef uint32_t start = zt_le16(h + 6), offset = zt_le16(h + 8)
    cdef bint ok
    if flags & VNET_F_NEEDS_CSUM:
        if start + offset + 2 > m.ip_len:
            return _bad(m, BAD_VNET_HDR)
        # the NAT updates the partial sum where the transport checksum lives
        if m.proto == PROTO_TCP and (start != m.l4_off or offset != 16):
            return _bad(m, BAD_VNET_HDR)
        if m.proto == PROTO_UDP and (start != m.l4_off or offset != 6):
            return _bad(m, BAD_VNET_HDR)
    if gso != GSO_NONE:
        if gso == GSO_TCPV4:
            ok = m.version == 4 and m.proto == PROTO_TCP
        elif gso == GSO_TCPV6:
            ok = m.version == 6 and m.proto == PROTO_TCP
        else:
            ok = (gso == GSO_UDP or gso == GSO_UDP_L4) and m.proto == PROTO_UDP
        if not ok or gso_size == 0 or hdr_len > m.ip_len or m.frag != FRAG_NONE:
            return _bad(m, BAD_VNET_HDR)
    m.vnet_flags = <uint8_t>flags
    m.gso_type = <uint8_t>gso_type
    m.gso_size = <uint16_t>gso_size
    return OK


cdef inline int _bad(Meta *m, int status) noexcept nogil:
    memset(m, 0, sizeof(Meta))
    m.status = <uint8_t>status
    return status


def parse_batch(batch):
    """Parse slots 0..batch.count-1 into batch.meta, one row per slot."""
    cdef uint8_t[:, ::1] data = batch.data
    cdef int[::1] lengths = batch.lengths
    cdef Meta *meta = meta_of(batch)
    cdef Py_ssize_t count = batch.count
    cdef bint vnet = batch.vnet_hdr
    if count < 0 or count > data.shape[0]:
        raise PacketError(f"batch.count {count} outside 0..{data.shape[0]}")
    if count:
        with nogil:
            parse_rows(&data[0, 0], data.shape[1], &lengths[0], meta, count, vnet)


cdef void parse_rows(uint8_t *data, Py_ssize_t stride, const int *lengths, Meta *meta, Py_ssize_t count,
                     bint vnet) noexcept nogil:
    """parse_batch over raw rows: slot i's packet at data + i * stride + HEADROOM, lengths[i] bytes
    (at most the row's room), a virtio_net_hdr in front of it when vnet."""
    cdef Py_ssize_t room = stride - HEADROOM, i, n
    cdef uint8_t *p
    for i in range(count):
        n = lengths[i]
        if n > room:
            n = room
        p = data + i * stride + HEADROOM
        if parse_one(p, n, &meta[i]) == OK and vnet:
            check_vnet(p - VNET_HDR_LEN, &meta[i])


def verify_checksums(const uint8_t[::1] packet):
    """Check the IPv4 header checksum and the TCP/UDP/ICMP/ICMPv6 checksum of one packet (a CS_* code)."""
    cdef Meta m
    cdef const uint8_t *p
    cdef uint32_t initial = 0, seglen, alen
    cdef uint8_t tail[8]
    if packet.shape[0] == 0:
        return CS_UNCHECKED
    p = &packet[0]
    if parse_one(p, packet.shape[0], &m) != OK:
        return CS_UNCHECKED
    if m.version == 4 and zt_sum(p, (p[0] & 0x0F) * 4, 0) != 0xFFFF:
        return CS_BAD_IP
    if m.frag != FRAG_NONE:
        return CS_UNCHECKED
    seglen = m.ip_len - m.l4_off
    if m.proto == PROTO_UDP:
        seglen = zt_be16(p + m.l4_off + 4)
        if zt_be16(p + m.l4_off + 6) == 0:
            return CS_OK if m.version == 4 else CS_UDP6_ZERO
    if m.proto == PROTO_TCP or m.proto == PROTO_UDP or (m.proto == PROTO_ICMPV6 and m.version == 6):
        alen = 4 if m.version == 4 else 16
        if m.version == 4:
            tail[0] = 0
            tail[1] = m.proto
            tail[2] = <uint8_t>(seglen >> 8)
            tail[3] = <uint8_t>seglen
        else:
            memset(tail, 0, 8)
            tail[0] = <uint8_t>(seglen >> 24)
            tail[1] = <uint8_t>(seglen >> 16)
            tail[2] = <uint8_t>(seglen >> 8)
            tail[3] = <uint8_t>seglen
            tail[7] = m.proto
        initial = zt_sum(tail, 4 if m.version == 4 else 8, zt_sum(m.src, alen, zt_sum(m.dst, alen, 0)))
    elif not (m.proto == PROTO_ICMP and m.version == 4):
        return CS_UNCHECKED
    return CS_OK if zt_sum(p + m.l4_off, seglen, initial) == 0xFFFF else CS_BAD_L4


def _c_layout():
    """Field offsets and size of the C Meta record, for the layout test."""
    cdef Meta m
    base = <size_t>&m
    return sizeof(Meta), {
        "status": <size_t>&m.status - base, "src_port": <size_t>&m.src_port - base,
        "frag_offset": <size_t>&m.frag_offset - base, "l4_off": <size_t>&m.l4_off - base,
        "ip_len": <size_t>&m.ip_len - base, "seq": <size_t>&m.seq - base,
        "frag_id": <size_t>&m.frag_id - base, "src": <size_t>&m.src[0] - base,
        "gso_size": <size_t>&m.gso_size - base, "vnet_flags": <size_t>&m.vnet_flags - base,
        "gso_type": <size_t>&m.gso_type - base,
        "dst": <size_t>&m.dst[0] - base,
    }
