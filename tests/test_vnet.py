"""virtio_net_hdr (IFF_VNET_HDR) handling: header validation and partial-checksum NAT rewrites."""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from ztun._fast import PacketBatch
from ztun._fast import defs as d
from ztun._fast.nat_config import NatConfig

A4, A6, PORT = "198.18.0.1", "fd00:18::1", 7000


def vnet(flags=0, gso_type=0, hdr_len=0, gso_size=0, start=0, offset=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, start, offset)


def partial(pkt):
    """The packet as a TUN with offload delivers it: TCP checksum field = the pseudo-header sum."""
    raw = bytearray(bytes(pkt))
    l4 = len(raw) - len(bytes(pkt[TCP]))
    seg = len(raw) - l4
    src, dst = (raw[12:16], raw[16:20]) if pkt.version == 4 else (raw[8:24], raw[24:40])
    tail = struct.pack("!BBH", 0, 6, seg) if pkt.version == 4 else struct.pack("!I3xB", seg, 6)
    pseudo = ~scapy_checksum(bytes(src + dst + tail)) & 0xFFFF
    raw[l4 + 16 : l4 + 18] = struct.pack("!H", pseudo)
    return bytes(raw), l4


def load(packets_and_headers, slots=None):
    batch = PacketBatch(slots=slots or len(packets_and_headers), vnet_hdr=True)
    for i, (raw, hdr) in enumerate(packets_and_headers):
        batch.set_packet(i, raw)
        batch.data[i, batch.headroom - 10 : batch.headroom] = list(hdr)
    batch.count = len(packets_and_headers)
    return batch


def complete(raw, l4):
    """What the kernel or NIC does with a partial checksum: sum from csum_start, store the complement."""
    b = bytearray(raw)
    cs = scapy_checksum(bytes(b[l4:]))
    b[l4 + 16 : l4 + 18] = struct.pack("!H", cs)
    return bytes(b)


def super_packet(version, size, rng, sport=40000):
    ip = IP(src="198.18.5.5", dst="198.19.0.9") if version == 4 else IPv6(src="fd00:5::5", dst="fd00:19::9")
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (rng.getrandbits(32), 0))]
    return ip / TCP(sport=sport, dport=443, flags="S", seq=rng.getrandbits(32), options=opts) / Raw(bytes(rng.getrandbits(8) for _ in range(size)))


@pytest.mark.parametrize("version", [4, 6])
def test_partial_checksum_rewrite_completes_to_full(impl, version):
    rng = random.Random(version)
    cfg = NatConfig.from_prefixes(A4 + "/30", A6 + "/126", port4=PORT, port6=PORT)
    table = impl.nat.NatTable(cfg)
    items = []
    for k, size in enumerate((0, 1, 1447, 1448 * 40 + 3)):
        raw, l4 = partial(super_packet(version, size, rng, sport=40000 + k))
        gso = (d.GSO_TCPV4 if version == 4 else d.GSO_TCPV6) if size > 1448 else d.GSO_NONE
        doff = raw[l4 + 12] >> 4
        items.append((raw, vnet(d.VNET_F_NEEDS_CSUM, gso, l4 + doff * 4, 1448 if gso else 0, l4, 16)))
    batch = load(items)
    impl.packet.parse_batch(batch)
    assert list(batch.meta["status"][:4]) == [d.OK] * 4
    table.process_batch(batch, 1.0)
    assert list(batch.verdicts[:4]) == [d.V_NEW_FLOW] * 4
    for i, (raw, hdr) in enumerate(items):
        out = batch.packet(i).tobytes()
        assert out != raw
        l4 = int(batch.meta["l4_off"][i])
        full = complete(out, l4)
        assert impl.packet.verify_checksums(full) == d.CS_OK
        redo = (IP if version == 4 else IPv6)(full)
        del redo[TCP].chksum
        assert bytes((IP if version == 4 else IPv6)(bytes(redo))) == full
        # the header travels with the packet, unchanged
        assert bytes(batch.data[i, batch.headroom - 10 : batch.headroom]) == hdr


def tcp4():
    raw, l4 = partial(IP(src="198.18.5.5", dst="198.19.0.9") / TCP(sport=1, dport=2) / Raw(bytes(3000)))
    return raw, l4


@pytest.mark.parametrize(
    "hdr, status",
    [
        (vnet(), d.OK),
        (vnet(d.VNET_F_NEEDS_CSUM, d.GSO_TCPV4, 40, 1448, 20, 16), d.OK),
        (vnet(d.VNET_F_NEEDS_CSUM, d.GSO_TCPV4 | d.GSO_ECN, 40, 1448, 20, 16), d.OK),
        (vnet(d.VNET_F_NEEDS_CSUM, 0, 0, 0, 3100, 16), d.BAD_VNET_HDR),  # csum_start beyond the packet
        (vnet(d.VNET_F_NEEDS_CSUM, 0, 0, 0, 20, 3020), d.BAD_VNET_HDR),  # csum_offset beyond it
        (vnet(d.VNET_F_NEEDS_CSUM, 0, 0, 0, 24, 12), d.BAD_VNET_HDR),  # not where the TCP checksum is
        (vnet(d.VNET_F_NEEDS_CSUM, d.GSO_TCPV4, 40, 0, 20, 16), d.BAD_VNET_HDR),  # gso_size 0
        (vnet(d.VNET_F_NEEDS_CSUM, d.GSO_TCPV6, 40, 1448, 20, 16), d.BAD_VNET_HDR),  # IPv6 GSO on IPv4
        (vnet(d.VNET_F_NEEDS_CSUM, d.GSO_UDP_L4, 40, 1448, 20, 16), d.BAD_VNET_HDR),  # UDP GSO on TCP
        (vnet(d.VNET_F_NEEDS_CSUM, d.GSO_TCPV4, 60000, 1448, 20, 16), d.BAD_VNET_HDR),  # hdr_len beyond
        (vnet(d.VNET_F_NEEDS_CSUM, 9, 40, 1448, 20, 16), d.BAD_VNET_HDR),  # unknown GSO type
    ],
)
def test_header_validation(impl, hdr, status):
    raw, _ = tcp4()
    batch = load([(raw, hdr)])
    impl.packet.parse_batch(batch)
    row = batch.meta[0]
    assert row["status"] == status
    if status == d.OK:
        assert (row["vnet_flags"], row["gso_type"], row["gso_size"]) == struct.unpack("<BBxxHxxxx", hdr)


def test_udp_partial_offsets(impl):
    raw = bytes(IP(src="198.18.5.5", dst="198.19.0.9") / UDP(sport=1, dport=2) / Raw(bytes(100)))
    good = load([(raw, vnet(d.VNET_F_NEEDS_CSUM, d.GSO_UDP_L4, 28, 50, 20, 6)), (raw, vnet(d.VNET_F_NEEDS_CSUM, 0, 0, 0, 20, 16))])
    impl.packet.parse_batch(good)
    assert list(good.meta["status"][:2]) == [d.OK, d.BAD_VNET_HDR]


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=10, max_size=10), st.integers(0, 2**32), st.sampled_from([4, 6]))
def test_fuzz_headers_identical(both, hdr, seed, version):
    compiled, twin = both
    raw, _ = partial(super_packet(version, random.Random(seed).randrange(0, 3000), random.Random(seed)))
    cfg = NatConfig.from_prefixes(A4 + "/30", A6 + "/126", port4=PORT, port6=PORT)
    outs = []
    for impl in (compiled, twin):
        batch = load([(raw, hdr)])
        impl.packet.parse_batch(batch)
        impl.nat.NatTable(cfg).process_batch(batch, 0.0)
        outs.append((batch.meta[:1].tobytes(), batch.packet(0).tobytes(), int(batch.verdicts[0]), int(batch.reasons[0])))
    assert outs[0] == outs[1]


def _udp_or_tcp(version, proto, size=3000):
    ip = IP(src="198.18.5.5", dst="198.19.0.9") if version == 4 else IPv6(src="fd00:5::5", dst="fd00:19::9")
    l4 = UDP(sport=1, dport=2) if proto == "udp" else TCP(sport=1, dport=2)
    raw = bytes(ip / l4 / Raw(bytes(size)))
    return raw, (20 if version == 4 else 40)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("proto", ["udp", "tcp"])
@pytest.mark.parametrize("what", ["hdr_len", "csum_start", "gso_size_0", "good"])
def test_malformed_headers_dropped_and_counted(impl, version, proto, what):
    """hdr_len or csum_start beyond the packet, or gso_size 0: a BAD_VNET_HDR drop the NAT counts."""
    raw, l4 = _udp_or_tcp(version, proto)
    off, hlen = (6, 8) if proto == "udp" else (16, 20)
    gso = d.GSO_UDP_L4 if proto == "udp" else (d.GSO_TCPV4 if version == 4 else d.GSO_TCPV6)
    fields = {"hdr_len": l4 + hlen, "gso_size": 1200, "start": l4}
    if what == "hdr_len":
        fields["hdr_len"] = len(raw) + 1
    elif what == "csum_start":
        fields["start"] = len(raw) - 1
    elif what == "gso_size_0":
        fields["gso_size"] = 0
    batch = load([(raw, vnet(d.VNET_F_NEEDS_CSUM, gso, fields["hdr_len"], fields["gso_size"], fields["start"], off))])
    impl.packet.parse_batch(batch)
    table = impl.nat.NatTable(NatConfig.from_prefixes(A4 + "/30", A6 + "/126", port4=PORT, port6=PORT))
    table.process_batch(batch, 0.0)
    if what == "good":
        assert batch.meta["status"][0] == d.OK and batch.verdicts[0] in (d.V_UDP, d.V_NEW_FLOW)
        return
    assert batch.meta["status"][0] == d.BAD_VNET_HDR
    assert (batch.verdicts[0], batch.reasons[0]) == (d.V_DROP, d.BAD_VNET_HDR)
    assert table.drop_counts[d.BAD_VNET_HDR] == 1
    assert impl.gso.gso_split(batch, 0, PacketBatch(slots=8)) == -d.BAD_VNET_HDR
