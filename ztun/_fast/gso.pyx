"""GSO split: cut a TCP or UDP super-packet (IFF_VNET_HDR offload) into wire-size segments, compiled;
GRO on write: coalesce same-flow UDP datagrams into one USO super-packet (gro_udp).

Segments follow Linux's software GSO: IPv4 IDs count up, TCP sequence numbers advance,
FIN/PSH stay on the last segment and CWR on the first, and every segment gets full,
fresh checksums. gso_py.py is the twin.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcmp, memcpy, memset

from ..errors import PacketError

from core cimport *

NO_ROOM = -1


def gso_split(batch, Py_ssize_t i, out, Py_ssize_t first=0):
    """Write slot i's segments into out's slots first.. and return how many, or a negative drop reason."""
    cdef uint8_t[:, ::1] data = batch.data, odata = out.data
    cdef int[::1] olengths = out.lengths
    cdef Meta *m = meta_of(batch)
    cdef const uint8_t *p
    cdef uint8_t *s
    cdef uint32_t size, l4, total, hdr, payload, count, k, chunk, seglen, seq0, ihl
    cdef uint16_t id0
    cdef int version, proto, gso, alen, flags
    cdef bint ovnet = out.vnet_hdr
    if i < 0 or i >= batch.count or i >= data.shape[0] or first < 0:
        raise IndexError(f"slot {i} outside the batch's {batch.count}")
    m += i
    if m.status != OK or not batch.vnet_hdr:
        return -BAD_VNET_HDR
    gso = m.gso_type & ~GSO_ECN
    size = m.gso_size
    if gso == GSO_NONE or size == 0:
        return -BAD_VNET_HDR
    version, proto, l4, total = m.version, m.proto, m.l4_off, m.ip_len
    p = &data[i, HEADROOM]
    hdr = l4 + (((p[l4 + 12] >> 4) * 4) if proto == PROTO_TCP else 8)
    payload = total - hdr
    count = (payload + size - 1) // size if payload else 1
    if first + count > odata.shape[0] or hdr + (size if size < payload else payload) > <uint32_t>(odata.shape[1] - HEADROOM):
        return NO_ROOM
    alen = 4 if version == 4 else 16
    ihl = (p[0] & 0x0F) * 4
    id0 = zt_be16(p + 4)
    seq0 = zt_be32(p + l4 + 4) if proto == PROTO_TCP else 0
    with nogil:
        for k in range(count):
            chunk = payload - k * size
            if chunk > size:
                chunk = size
            s = &odata[first + k, HEADROOM]
            memcpy(s, p, hdr)
            memcpy(s + hdr, p + hdr + k * size, chunk)
            olengths[first + k] = hdr + chunk
            if ovnet:
                memset(s - VNET_HDR_LEN, 0, VNET_HDR_LEN)
            if version == 4:
                zt_put16(s + 2, <uint16_t>(hdr + chunk))
                zt_put16(s + 4, <uint16_t>(id0 + k))
                zt_put16(s + 10, 0)
                zt_put16(s + 10, <uint16_t>~zt_sum(s, ihl, 0))
            else:
                zt_put16(s + 4, <uint16_t>(hdr - 40 + chunk))
            seglen = hdr + chunk - l4
            if proto == PROTO_TCP:
                zt_put32(s + l4 + 4, seq0 + k * size)
                flags = p[l4 + 13]
                if k < count - 1:
                    flags &= ~(TCP_FIN | 0x08)
                if k > 0:
                    flags &= ~0x80
                s[l4 + 13] = <uint8_t>flags
                zt_put16(s + l4 + 16, 0)
                zt_put16(s + l4 + 16, <uint16_t>~zt_sum(s + l4, seglen, zt_pseudo(s + (12 if alen == 4 else 8), s + (16 if alen == 4 else 24), alen, proto, seglen)))
            else:
                zt_put16(s + l4 + 4, <uint16_t>seglen)
                zt_put16(s + l4 + 6, 0)
                flags = <uint16_t>~zt_sum(s + l4, seglen, zt_pseudo(s + (12 if alen == 4 else 8), s + (16 if alen == 4 else 24), alen, proto, seglen))
                zt_put16(s + l4 + 6, <uint16_t>(flags if flags else 0xFFFF))
    return count


cdef enum:
    _MAX_IP = 65535


cdef inline uint32_t _plain_udp(const uint8_t *p, uint32_t n, const uint8_t *h) noexcept nogil:
    """The UDP header offset of a packet GRO may coalesce (a whole UDP datagram, no IP options or
    extension headers, no GSO of its own, checksum complete), else 0."""
    if h[0] != 0 or h[1] != 0:
        return 0
    if n >= 28 and p[0] == 0x45 and p[9] == PROTO_UDP and (zt_be16(p + 6) & 0x3FFF) == 0 and zt_be16(p + 2) == n:
        return 20 if zt_be16(p + 24) == n - 20 else 0
    if n >= 48 and (p[0] >> 4) == 6 and p[6] == PROTO_UDP and zt_be16(p + 4) + 40 == n:
        return 40 if zt_be16(p + 44) == n - 40 else 0
    return 0


cdef inline bint _same_flow(const uint8_t *a, const uint8_t *b, uint32_t l4) noexcept nogil:
    """Same addresses, ports and IP header fields but the lengths, IPv4 ID and checksums."""
    if l4 == 20:
        return (a[1] == b[1] and memcmp(a + 6, b + 6, 4) == 0 and memcmp(a + 12, b + 12, 8) == 0
                and memcmp(a + 20, b + 20, 4) == 0)
    return memcmp(a, b, 4) == 0 and memcmp(a + 6, b + 6, 34) == 0 and memcmp(a + 40, b + 40, 4) == 0


def gro_udp(batch, Py_ssize_t n, int[::1] segs not None, int max_segments=64):
    """Coalesce runs of same-flow UDP datagrams in slots 0..n-1 into USO super-packets, in place.

    A run is consecutive datagrams of one flow whose payloads all have the first one's size
    but the last, which may be shorter; it becomes one packet in the run's first slot with a
    virtio_net_hdr (GSO_UDP_L4, gso_size = that size, NEEDS_CSUM with the pseudo-header sum),
    which the kernel segments back into the same datagrams (IPv4 IDs numbered from the
    first's). Sets batch.verdicts to V_WRITE for the slots to write and V_DROP for those merged
    away, segs[k] to the datagrams slot k now carries, and returns how many slots to write.
    The batch must have vnet headers; runs stop at max_segments and at 64 KiB.
    """
    cdef uint8_t[:, ::1] data = batch.data
    cdef int[::1] lengths = batch.lengths
    cdef uint8_t[::1] verdicts = batch.verdicts
    cdef Py_ssize_t room = data.shape[1] - HEADROOM, k = 0, j, kept = 0
    cdef uint8_t *p
    cdef uint8_t *q
    cdef uint32_t l4, size, pl, total, count, ulen
    cdef int alen
    if not batch.vnet_hdr:
        raise PacketError("gro_udp needs a batch with virtio headers")
    if n < 0 or n > data.shape[0] or segs.shape[0] < n or max_segments < 1:
        raise PacketError(f"n {n} outside the batch or segs too short")
    if room > batch.max_packet:
        room = batch.max_packet
    with nogil:
        while k < n:
            verdicts[k] = V_WRITE
            segs[k] = 1
            kept += 1
            j = k + 1
            p = &data[k, HEADROOM]
            l4 = _plain_udp(p, lengths[k], p - VNET_HDR_LEN) if 0 < lengths[k] <= room else 0
            size = lengths[k] - l4 - 8 if l4 else 0
            if size:
                total, count = size, 1
                while j < n and count < <uint32_t>max_segments:
                    q = &data[j, HEADROOM]
                    if not 0 < lengths[j] <= room or _plain_udp(q, lengths[j], q - VNET_HDR_LEN) != l4 or not _same_flow(p, q, l4):
                        break
                    pl = lengths[j] - l4 - 8
                    if pl == 0 or pl > size or l4 + 8 + total + pl > <uint32_t>room or (8 if l4 == 40 else 28) + total + pl > _MAX_IP:
                        break
                    memcpy(p + l4 + 8 + total, q + l4 + 8, pl)
                    total += pl
                    count += 1
                    verdicts[j] = V_DROP
                    segs[j] = 0
                    j += 1
                    if pl < size:
                        break
                if count > 1:
                    segs[k] = count
                    ulen = 8 + total
                    lengths[k] = l4 + ulen
                    alen = 4 if l4 == 20 else 16
                    if l4 == 20:
                        zt_put16(p + 2, <uint16_t>(l4 + ulen))
                        zt_put16(p + 10, 0)
                        zt_put16(p + 10, <uint16_t>~zt_sum(p, 20, 0))
                    else:
                        zt_put16(p + 4, <uint16_t>ulen)
                    zt_put16(p + l4 + 4, <uint16_t>ulen)
                    zt_put16(p + l4 + 6, <uint16_t>zt_pseudo(p + (12 if alen == 4 else 8), p + (16 if alen == 4 else 24), alen, PROTO_UDP, ulen))
                    zt_uso_vnet_hdr(p - VNET_HDR_LEN, l4, size)
            k = j
    return kept
