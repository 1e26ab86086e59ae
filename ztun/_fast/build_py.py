"""Packets the system stack writes itself: UDP replies, TCP resets, ICMP unreachables. Pure-Python twin.

IPv4 packets carry DF with ID 0 (RFC 6864 atomic datagrams) and TTL 64; IPv6 hop limit 64.
Each function writes one packet into out's slot and returns its length (0 if it does not fit).
"""

import struct

from ..errors import PacketError
from . import defs as d
from .checksum_py import checksum, pseudo_sum
from .typed_args import check_meta, check_slot, data, index, uint

HOP_LIMIT = 64
ICMP4_QUOTE = 576 - 20 - 8  # RFC 1812 4.3.2.3: as much as fits in 576 bytes
ICMP6_QUOTE = 1280 - 40 - 8  # RFC 4443 2.4 (c): as much as fits in the IPv6 minimum MTU


def _ip_header(version, proto, src, dst, payload_len):
    if version == 4:
        h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + payload_len, 0, 0x4000, HOP_LIMIT, proto, 0, src, dst))
        struct.pack_into("!H", h, 10, checksum(h))
        return bytes(h)
    return struct.pack("!IHBB16s16s", 6 << 28, payload_len, proto, HOP_LIMIT, src, dst)


def _put(out, slot, packet):
    check_slot(slot, out.data.shape[0])
    if len(packet) > out.max_packet:
        return 0
    out.set_packet(slot, packet)
    if out.vnet_hdr:
        out.data[slot, out.headroom - d.VNET_HDR_LEN : out.headroom] = 0
    return len(packet)


def udp_packet(out, slot, src, sport, dst, dport, payload) -> int:
    """An IPv4 or IPv6 (by address length) UDP datagram from src:sport to dst:dport."""
    slot, src, sport, dst = index(slot), data(src, "src"), uint(sport, 16), data(dst, "dst")
    dport, payload = uint(dport, 16), data(payload, "payload")
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise PacketError("addresses must both be 4 or both be 16 bytes")
    version = 4 if len(src) == 4 else 6
    ulen = 8 + len(payload)
    if ulen > 0xFFFF:
        check_slot(slot, out.data.shape[0])
        return 0
    cs = checksum(struct.pack("!HHHH", sport, dport, ulen, 0) + payload, pseudo_sum(src, dst, d.PROTO_UDP, ulen))
    udp = struct.pack("!HHHH", sport, dport, ulen, cs or 0xFFFF) + payload
    return _put(out, slot, _ip_header(version, d.PROTO_UDP, src, dst, ulen) + udp)


def _meta(batch, i):
    """Slot i's parse record (TypeError for a meta array of another layout, IndexError outside it)."""
    check_meta(batch, d.META_DTYPE.itemsize)
    return batch.meta[check_slot(i, batch.meta.shape[0])]


def _addrs(m):
    alen = 4 if m["version"] == 4 else 16
    return int(m["version"]), m["src"].tobytes()[:alen], m["dst"].tobytes()[:alen]


def tcp_reset(batch, i, out, slot) -> int:
    """The RST a closed port sends back for slot i's TCP packet (RFC 9293 3.10.7.1)."""
    slot = index(slot)
    m = _meta(batch, i)
    if m["status"] != d.OK or m["proto"] != d.PROTO_TCP or m["frag"] != d.FRAG_NONE:
        return 0
    version, src, dst = _addrs(m)
    flags = int(m["tcp_flags"])
    if flags & d.TCP_RST:
        return 0  # never answer a reset
    if flags & d.TCP_ACK:
        seq, ack, out_flags = int(m["ack"]), 0, d.TCP_RST
    else:
        seglen = int(m["payload_len"]) + (1 if flags & d.TCP_SYN else 0) + (1 if flags & d.TCP_FIN else 0)
        seq, ack, out_flags = 0, (int(m["seq"]) + seglen) & 0xFFFFFFFF, d.TCP_RST | d.TCP_ACK
    tcp = bytearray(struct.pack("!HHIIBBHHH", int(m["dst_port"]), int(m["src_port"]), seq, ack, 5 << 4, out_flags, 0, 0, 0))
    struct.pack_into("!H", tcp, 16, checksum(tcp, pseudo_sum(dst, src, d.PROTO_TCP, 20)))
    return _put(out, slot, _ip_header(version, d.PROTO_TCP, dst, src, 20) + bytes(tcp))


def icmp_unreachable(batch, i, out, slot, code) -> int:
    """ICMP destination unreachable for slot i's packet: code is the ICMPv4 code (3 port, 13 prohibited);
    IPv6 uses the matching ICMPv6 code (4 port, 1 prohibited)."""
    slot, code = index(slot), uint(code, 8)
    m = _meta(batch, i)
    if m["status"] != d.OK:
        return 0
    version, src, dst = _addrs(m)
    if m["frag"] == d.FRAG_LATER or (dst[0] >= 224 if version == 4 else dst[0] == 0xFF):
        return 0  # RFC 1812 4.3.2.7: not for later fragments, multicast or broadcast
    if m["proto"] == (d.PROTO_ICMP if version == 4 else d.PROTO_ICMPV6) and (m["icmp_type"] < 128 if version == 6 else m["icmp_type"] not in (0, 8, 13, 14, 15, 16, 17, 18)):
        return 0  # never answer an ICMP error with one
    h = batch.headroom
    quote = batch.data[i, h : h + min(int(m["ip_len"]), ICMP4_QUOTE if version == 4 else ICMP6_QUOTE)].tobytes()
    if version == 4:
        body = bytearray(struct.pack("!BBHI", 3, code, 0, 0) + quote)
        struct.pack_into("!H", body, 2, checksum(body))
    else:
        code6 = {3: 4, 13: 1}.get(code, code)
        body = bytearray(struct.pack("!BBHI", 1, code6, 0, 0) + quote)
        struct.pack_into("!H", body, 2, checksum(body, pseudo_sum(dst, src, d.PROTO_ICMPV6, len(body))))
    return _put(out, slot, _ip_header(version, d.PROTO_ICMP if version == 4 else d.PROTO_ICMPV6, dst, src, len(body)) + bytes(body))
