"""GSO split: cut a TCP or UDP super-packet (IFF_VNET_HDR offload) into wire-size segments.

Pure-Python twin of gso.pyx. Segments follow Linux's software GSO: IPv4 IDs count up,
TCP sequence numbers advance, FIN/PSH stay on the last segment and CWR on the first,
and every segment gets full, fresh checksums.
"""

import struct

from . import defs as d
from .checksum_py import checksum, pseudo_sum

NO_ROOM = -1  # out has too few free slots; nothing was written


def gso_split(batch, i, out, first=0) -> int:
    """Write slot i's segments into out's slots first.. and return how many, or a negative drop reason."""
    if not 0 <= i < batch.count or first < 0:
        raise IndexError(f"slot {i} outside the batch's {batch.count}")
    m = batch.meta[i]
    if m["status"] != d.OK or not batch.vnet_hdr:
        return -d.BAD_VNET_HDR
    gso = int(m["gso_type"]) & ~d.GSO_ECN
    size = int(m["gso_size"])
    version, proto, l4, total = int(m["version"]), int(m["proto"]), int(m["l4_off"]), int(m["ip_len"])
    if gso == d.GSO_NONE or size == 0:
        return -d.BAD_VNET_HDR
    h = batch.headroom
    p = batch.data[i, h : h + total].tobytes()
    hdr = l4 + (((p[l4 + 12] >> 4) * 4) if proto == d.PROTO_TCP else 8)
    payload = p[hdr:]
    count = max(1, -(-len(payload) // size))
    if first + count > out.slots or hdr + min(size, len(payload)) > out.max_packet:
        return NO_ROOM
    alen = 4 if version == 4 else 16
    src, dst = (p[12:16], p[16:20]) if version == 4 else (p[8:24], p[24:40])
    for k in range(count):
        chunk = payload[k * size : (k + 1) * size]
        seg = bytearray(p[:hdr] + chunk)
        if version == 4:
            struct.pack_into("!HH", seg, 2, hdr + len(chunk), (struct.unpack_from("!H", p, 4)[0] + k) & 0xFFFF)
            struct.pack_into("!H", seg, 10, 0)
            struct.pack_into("!H", seg, 10, checksum(seg[: (p[0] & 0x0F) * 4]))
        else:
            struct.pack_into("!H", seg, 4, hdr - 40 + len(chunk))
        seglen = len(seg) - l4
        if proto == d.PROTO_TCP:
            seq = (struct.unpack_from("!I", p, l4 + 4)[0] + k * size) & 0xFFFFFFFF
            flags = p[l4 + 13]
            if k < count - 1:
                flags &= ~(d.TCP_FIN | d.TCP_PSH)
            if k > 0:
                flags &= ~0x80  # CWR
            struct.pack_into("!I", seg, l4 + 4, seq)
            seg[l4 + 13] = flags
            struct.pack_into("!H", seg, l4 + 16, 0)
            struct.pack_into("!H", seg, l4 + 16, checksum(seg[l4:], pseudo_sum(src[:alen], dst[:alen], proto, seglen)))
        else:
            struct.pack_into("!HH", seg, l4 + 4, seglen, 0)
            cs = checksum(seg[l4:], pseudo_sum(src[:alen], dst[:alen], proto, seglen))
            struct.pack_into("!H", seg, l4 + 6, cs or 0xFFFF)
        out.set_packet(first + k, bytes(seg))
        if out.vnet_hdr:
            out.data[first + k, out.headroom - d.VNET_HDR_LEN : out.headroom] = 0
    return count
