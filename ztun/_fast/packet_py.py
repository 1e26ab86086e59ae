"""Batch parse of raw IPv4/IPv6 packets and checksum verification: the pure-Python twin.

A malformed packet yields a status code, never an exception; its row is all zeros but for
the status. The compiled packet.pyx gives the same rows for every input.
"""

import struct

from . import defs as d
from .checksum_py import ones_sum, pseudo_sum
from .typed_args import check_count, check_meta, data

_IPV6_EXT = (0, 43, 60, 44)  # hop-by-hop, routing, destination options, fragment
_ZERO = bytes(16)


class _Bad(Exception):
    def __init__(self, status):
        self.status = status


def _parse(p: bytes) -> dict:
    """Parse one packet; raise _Bad(status) when malformed."""
    n = len(p)
    if n == 0:
        raise _Bad(d.EMPTY)
    r = {}
    version = p[0] >> 4
    if version == 4:
        if n < 20:
            raise _Bad(d.TRUNCATED)
        ihl = (p[0] & 0x0F) * 4
        if ihl < 20:
            raise _Bad(d.BAD_IHL)
        total = struct.unpack_from("!H", p, 2)[0]
        if total < ihl:
            raise _Bad(d.BAD_LENGTH)
        if total > n:
            raise _Bad(d.TRUNCATED)
        proto = p[9]
        r.update(hop_limit=p[8], src=p[12:16] + _ZERO[:12], dst=p[16:20] + _ZERO[:12])
        frag_id, fo = struct.unpack_from("!HH", p, 4)
        offset = (fo & 0x1FFF) * 8
        frag = d.FRAG_LATER if offset else (d.FRAG_FIRST if fo & 0x2000 else d.FRAG_NONE)
        if frag:
            r.update(frag_id=frag_id, frag_offset=offset)
        l4 = ihl
    elif version == 6:
        if n < 40:
            raise _Bad(d.TRUNCATED)
        plen = struct.unpack_from("!H", p, 4)[0]
        if plen == 0:
            raise _Bad(d.BAD_LENGTH)
        total = 40 + plen
        if total > n:
            raise _Bad(d.TRUNCATED)
        r.update(hop_limit=p[7], src=p[8:24], dst=p[24:40])
        proto, l4, frag, count = p[6], 40, d.FRAG_NONE, 0
        while proto in _IPV6_EXT and frag != d.FRAG_LATER:
            if count == d.MAX_EXT_HEADERS:
                raise _Bad(d.BAD_EXT_HEADER)
            if l4 + 8 > total:
                raise _Bad(d.TRUNCATED)
            if proto == 44:
                fo, frag_id = struct.unpack_from("!HI", p, l4 + 2)
                offset = fo & 0xFFF8
                frag = d.FRAG_LATER if offset else (d.FRAG_FIRST if fo & 1 else d.FRAG_NONE)
                r.update(frag_id=frag_id, frag_offset=offset)
                hlen = 8
            else:
                hlen = (p[l4 + 1] + 1) * 8
                if l4 + hlen > total:
                    raise _Bad(d.TRUNCATED)
            proto = p[l4]
            l4 += hlen
            count += 1
    else:
        raise _Bad(d.BAD_VERSION)

    r.update(version=version, proto=proto, frag=frag, ip_len=total, l4_off=l4)
    avail = total - l4
    payload_off, payload_len = l4, avail
    if frag != d.FRAG_LATER:
        if proto == d.PROTO_TCP:
            if avail < 20:
                raise _Bad(d.TRUNCATED)
            sport, dport, seq, ack, off, flags = struct.unpack_from("!HHIIBB", p, l4)
            doff = (off >> 4) * 4
            if doff < 20:
                raise _Bad(d.BAD_TCP_HEADER)
            if doff > avail:
                raise _Bad(d.TRUNCATED)
            r.update(src_port=sport, dst_port=dport, seq=seq, ack=ack, tcp_flags=flags)
            payload_off, payload_len = l4 + doff, avail - doff
        elif proto == d.PROTO_UDP:
            if avail < 8:
                raise _Bad(d.TRUNCATED)
            sport, dport, ulen = struct.unpack_from("!HHH", p, l4)
            if frag == d.FRAG_NONE:
                if ulen < 8 or ulen > avail:
                    raise _Bad(d.BAD_UDP_LENGTH)
                payload_len = ulen - 8
            else:
                payload_len = avail - 8
            r.update(src_port=sport, dst_port=dport)
            payload_off = l4 + 8
        elif proto == (d.PROTO_ICMP if version == 4 else d.PROTO_ICMPV6):
            if avail < 8:
                raise _Bad(d.TRUNCATED)
            r.update(icmp_type=p[l4], icmp_code=p[l4 + 1])
            payload_off, payload_len = l4 + 8, avail - 8
    r.update(payload_off=payload_off, payload_len=payload_len)
    return r


def _check_vnet(h: bytes, r: dict) -> None:
    """Validate a virtio_net_hdr against the parsed packet; record its flags and GSO fields."""
    flags, gso_type, hdr_len, gso_size, start, offset = struct.unpack("<BBHHHH", h)
    proto, l4, total = r["proto"], r["l4_off"], r["ip_len"]
    if flags & d.VNET_F_NEEDS_CSUM:
        if start + offset + 2 > total:
            raise _Bad(d.BAD_VNET_HDR)
        # the NAT updates the partial sum where the transport checksum lives
        want = {d.PROTO_TCP: 16, d.PROTO_UDP: 6}.get(proto)
        if want is not None and (start != l4 or offset != want):
            raise _Bad(d.BAD_VNET_HDR)
    gso = gso_type & ~d.GSO_ECN
    if gso != d.GSO_NONE:
        kinds = {d.GSO_TCPV4: (4, d.PROTO_TCP), d.GSO_TCPV6: (6, d.PROTO_TCP)}
        ok = (r["version"], proto) == kinds[gso] if gso in kinds else gso in (d.GSO_UDP, d.GSO_UDP_L4) and proto == d.PROTO_UDP
        if not ok or gso_size == 0 or hdr_len > total or r["frag"] != d.FRAG_NONE:
            raise _Bad(d.BAD_VNET_HDR)
    r.update(vnet_flags=flags, gso_type=gso_type, gso_size=gso_size)


def _row(fields: dict) -> tuple:
    return tuple(
        list(fields.get(name, _ZERO)) if name in ("src", "dst") else fields.get(name, 0)
        for name in d.META_DTYPE.names
    )


def parse_batch(batch) -> None:
    """Parse slots 0..batch.count-1 into batch.meta, one row per slot."""
    check_meta(batch, d.META_DTYPE.itemsize)
    count = check_count(batch)
    h = batch.headroom
    for i in range(count):
        n = int(batch.lengths[i])
        n = min(max(n, 0), batch.data.shape[1] - h)
        try:
            fields = _parse(batch.data[i, h : h + n].tobytes())
            if batch.vnet_hdr:
                _check_vnet(batch.data[i, h - d.VNET_HDR_LEN : h].tobytes(), fields)
        except _Bad as bad:
            fields = {"status": bad.status}
        batch.meta[i] = _row(fields)


def verify_checksums(packet) -> int:
    """Check the IPv4 header checksum and the TCP/UDP/ICMP/ICMPv6 checksum of one packet (a CS_* code)."""
    p = data(packet, "packet")
    try:
        r = _parse(p)
    except _Bad:
        return d.CS_UNCHECKED
    version, proto, l4, total = r["version"], r["proto"], r["l4_off"], r["ip_len"]
    if version == 4 and ones_sum(p[: (p[0] & 0x0F) * 4]) != 0xFFFF:
        return d.CS_BAD_IP
    if r["frag"] != d.FRAG_NONE:
        return d.CS_UNCHECKED
    seg = p[l4:total]
    if proto == d.PROTO_UDP:
        seg = seg[: struct.unpack_from("!H", seg, 4)[0]]
        if seg[6:8] == b"\0\0":
            return d.CS_OK if version == 4 else d.CS_UDP6_ZERO
    alen = 4 if version == 4 else 16
    src, dst = p[12:16] if version == 4 else p[8:24], p[16:20] if version == 4 else p[24:40]
    if proto in (d.PROTO_TCP, d.PROTO_UDP) or (proto == d.PROTO_ICMPV6 and version == 6):
        initial = pseudo_sum(src[:alen], dst[:alen], proto, len(seg))
    elif proto == d.PROTO_ICMP and version == 4:
        initial = 0
    else:
        return d.CS_UNCHECKED
    return d.CS_OK if ones_sum(seg, initial) == 0xFFFF else d.CS_BAD_L4
