"""GSO split: cut a TCP or UDP super-packet (IFF_VNET_HDR offload) into wire-size segments, compiled.

Segments follow Linux's software GSO: IPv4 IDs count up, TCP sequence numbers advance,
FIN/PSH stay on the last segment and CWR on the first, and every segment gets full,
fresh checksums. gso_py.py is the twin.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memset

from core cimport *

NO_ROOM = -1


def gso_split(batch, Py_ssize_t i, out, Py_ssize_t first=0):
    """Write slot i's segments into out's slots first.. and return how many, or a negative drop reason."""
    cdef uint8_t[:, ::1] data = batch.data, odata = out.data
    cdef int[::1] olengths = out.lengths
    cdef uint8_t[::1] raw = batch.meta.view("u1")
    cdef Meta *m
    cdef const uint8_t *p
    cdef uint8_t *s
    cdef uint32_t size, l4, total, hdr, payload, count, k, chunk, seglen, seq0, ihl
    cdef uint16_t id0
    cdef int version, proto, gso, alen, flags
    cdef bint ovnet = out.vnet_hdr
    if i < 0 or i >= batch.count or first < 0 or batch.meta.dtype.itemsize != sizeof(Meta):
        raise IndexError(f"slot {i} outside the batch's {batch.count}")
    m = &(<Meta *>&raw[0])[i]
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
