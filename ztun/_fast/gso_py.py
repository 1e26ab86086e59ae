"""GSO split: cut a TCP or UDP super-packet (IFF_VNET_HDR offload) into wire-size segments;
GRO on write: coalesce same-flow UDP datagrams into one USO super-packet (gro_udp).

Pure-Python twin of gso.pyx. Segments follow Linux's software GSO: IPv4 IDs count up,
TCP sequence numbers advance, FIN/PSH stay on the last segment and CWR on the first,
and every segment gets full, fresh checksums.
"""

import struct

from ..errors import PacketError
from . import defs as d
from .checksum_py import checksum, pseudo_sum
from .typed_args import array, check_meta, index

NO_ROOM = -1  # out has too few free slots; nothing was written


def gso_split(batch, i, out, first=0) -> int:
    """Write slot i's segments into out's slots first.. and return how many, or a negative drop reason."""
    i, first = index(i), index(first)
    check_meta(batch, d.META_DTYPE.itemsize)
    if not 0 <= i < min(batch.count, batch.slots) or first < 0:
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


def _plain_udp(p: bytes, h: bytes) -> int:
    """The UDP header offset of a packet GRO may coalesce, else 0 (see gso.pyx)."""
    n = len(p)
    if h[0] or h[1]:
        return 0
    if n >= 28 and p[0] == 0x45 and p[9] == d.PROTO_UDP and struct.unpack_from("!H", p, 6)[0] & 0x3FFF == 0 and struct.unpack_from("!H", p, 2)[0] == n:
        return 20 if struct.unpack_from("!H", p, 24)[0] == n - 20 else 0
    if n >= 48 and p[0] >> 4 == 6 and p[6] == d.PROTO_UDP and struct.unpack_from("!H", p, 4)[0] + 40 == n:
        return 40 if struct.unpack_from("!H", p, 44)[0] == n - 40 else 0
    return 0


def _same_flow(a: bytes, b: bytes, l4: int) -> bool:
    if l4 == 20:
        return a[1] == b[1] and a[6:10] == b[6:10] and a[12:24] == b[12:24]
    return a[:4] == b[:4] and a[6:44] == b[6:44]


def gro_udp(batch, n, segs, max_segments=64) -> int:
    """Coalesce runs of same-flow UDP datagrams in slots 0..n-1 into USO super-packets, in place (see gso.pyx)."""
    n, n_segs, max_segments = index(n), len(array(segs, "i", 4, "segs")), index(max_segments)
    if not batch.vnet_hdr:
        raise PacketError("gro_udp needs a batch with virtio headers")
    if not 0 <= n <= batch.slots or n_segs < n or max_segments < 1:
        raise PacketError(f"n {n} outside the batch or segs too short")
    h, room = batch.headroom, batch.max_packet
    hv = slice(h - d.VNET_HDR_LEN, h)

    def packet(k):
        ln = int(batch.lengths[k])
        if not 0 < ln <= room:
            return b"", 0
        p = batch.data[k, h : h + ln].tobytes()
        return p, _plain_udp(p, batch.data[k, hv].tobytes())

    k = kept = 0
    while k < n:
        batch.verdicts[k] = d.V_WRITE
        segs[k] = 1
        kept += 1
        j = k + 1
        p, l4 = packet(k)
        size = len(p) - l4 - 8 if l4 else 0
        if size:
            parts = [p[l4 + 8 :]]
            total = size
            while j < n and len(parts) < max_segments:
                q, ql4 = packet(j)
                if ql4 != l4 or not _same_flow(p, q, l4):
                    break
                pl = len(q) - l4 - 8
                if pl == 0 or pl > size or l4 + 8 + total + pl > room or (8 if l4 == 40 else 28) + total + pl > 65535:
                    break
                parts.append(q[l4 + 8 :])
                total += pl
                batch.verdicts[j] = d.V_DROP
                segs[j] = 0
                j += 1
                if pl < size:
                    break
            if len(parts) > 1:
                segs[k] = len(parts)
                ulen = 8 + total
                out = bytearray(p[: l4 + 8] + b"".join(parts))
                alen = 4 if l4 == 20 else 16
                src, dst = (out[12:16], out[16:20]) if alen == 4 else (out[8:24], out[24:40])
                if l4 == 20:
                    struct.pack_into("!H", out, 2, l4 + ulen)
                    struct.pack_into("!H", out, 10, 0)
                    struct.pack_into("!H", out, 10, checksum(out[:20]))
                else:
                    struct.pack_into("!H", out, 4, ulen)
                struct.pack_into("!HH", out, l4 + 4, ulen, pseudo_sum(src, dst, d.PROTO_UDP, ulen))
                batch.set_packet(k, bytes(out))
                batch.data[k, hv] = list(struct.pack("<BBHHHH", d.VNET_F_NEEDS_CSUM, d.GSO_UDP_L4, l4 + 8, size, l4, 6))
        k = j
    return kept
