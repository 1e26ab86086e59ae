"""GSO split against reference segmentations built with scapy, IPv4 and IPv6, TCP and UDP."""

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ztun._fast import PacketBatch
from ztun._fast import defs as d


def super_batch(pkt, gso_type, gso_size, flags=d.VNET_F_NEEDS_CSUM):
    raw = bytes(pkt)
    batch = PacketBatch(slots=1, vnet_hdr=True)
    batch.set_packet(0, raw)
    l4 = len(raw) - len(bytes(pkt[TCP] if TCP in pkt else pkt[UDP]))
    off = 16 if TCP in pkt else 6
    batch.data[0, 6:16] = list(struct.pack("<BBHHHH", flags, gso_type, l4, gso_size, l4, off))
    batch.count = 1
    return batch


def reference(pkt, size):
    """Segments as Linux's software GSO makes them, built field by field with scapy."""
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    data = bytes(l4.payload)
    n = max(1, -(-len(data) // size))
    out = []
    for k in range(n):
        ip = pkt.copy()
        seg = ip[TCP] if TCP in ip else ip[UDP]
        seg.remove_payload()
        if TCP in ip:
            seg.seq = (pkt[TCP].seq + k * size) & 0xFFFFFFFF
            flags = int(pkt[TCP].flags)
            if k < n - 1:
                flags &= ~0x09
            if k:
                flags &= ~0x80
            seg.flags = flags
            seg.chksum = None
        else:
            seg.len = None
            seg.chksum = None
        if ip.version == 4:
            ip.id = (pkt.id + k) & 0xFFFF
            ip.len = None
            ip.chksum = None
        else:
            ip.plen = None
        out.append(bytes(ip / Raw(data[k * size : (k + 1) * size])))
    return out


def split(impl, batch, slots=64, vnet=True):
    out = PacketBatch(slots=slots, max_packet=9000, vnet_hdr=vnet)
    impl.packet.parse_batch(batch)
    n = impl.gso.gso_split(batch, 0, out)
    return n, [out.packet(k).tobytes() for k in range(max(n, 0))], out


def tcp_super(version, size, rng, flags="PA"):
    ip = IP(src="198.18.1.1", dst="198.19.2.2", id=65530) if version == 4 else IPv6(src="fd00::1", dst="fd00::2")
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (7, 9))]
    tcp = TCP(sport=443, dport=5555, seq=0xFFFFF000, ack=77, flags=flags, options=opts)
    return ip / tcp / Raw(bytes(rng.getrandbits(8) for _ in range(size)))


def udp_super(version, size, rng):
    ip = IP(src="198.18.1.1", dst="198.19.2.2", id=10) if version == 4 else IPv6(src="fd00::1", dst="fd00::2")
    return ip / UDP(sport=53, dport=9999) / Raw(bytes(rng.getrandbits(8) for _ in range(size)))


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("payload, size", [(1448 * 10, 1448), (1448 * 10 + 1, 1448), (5000, 1000), (999, 1000), (0, 536), (60000, 1348)])
def test_tcp_split_matches_reference(impl, version, payload, size):
    pkt = tcp_super(version, payload, random.Random(payload), flags="FPAC")
    n, segs, _ = split(impl, super_batch(pkt, d.GSO_TCPV4 if version == 4 else d.GSO_TCPV6, size))
    want = reference(pkt, size)
    assert n == len(want)
    assert segs == want
    assert all(impl.packet.verify_checksums(s) == d.CS_OK for s in segs)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("payload, size", [(1200 * 8, 1200), (1200 * 8 + 7, 1200), (100, 1400)])
def test_udp_split_matches_reference(impl, version, payload, size):
    pkt = udp_super(version, payload, random.Random(payload))
    n, segs, out = split(impl, super_batch(pkt, d.GSO_UDP_L4, size))
    want = reference(pkt, size)
    assert (n, segs) == (len(want), want)
    assert not out.data[:n, 6:16].any()  # segments carry an empty virtio header


def test_refusals(impl):
    pkt = tcp_super(4, 5000, random.Random(1))
    n, _, _ = split(impl, super_batch(pkt, d.GSO_TCPV4, 1000), slots=4)
    assert n == impl.gso.NO_ROOM  # needs 5 slots
    plain = super_batch(pkt, d.GSO_NONE, 0)
    assert split(impl, plain)[0] == -d.BAD_VNET_HDR
    bad = super_batch(pkt, d.GSO_TCPV4, 0)  # parse marks gso_size 0 malformed
    assert split(impl, bad)[0] == -d.BAD_VNET_HDR
    with pytest.raises(IndexError):
        impl.gso.gso_split(plain, 3, PacketBatch(slots=2))


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([4, 6]), st.booleans(), st.integers(0, 9000), st.integers(1, 3000))
def test_fuzz_identical(both, seed, version, tcp, payload, size):
    compiled, twin = both
    rng = random.Random(seed)
    pkt = tcp_super(version, payload, rng) if tcp else udp_super(version, payload, rng)
    gso = (d.GSO_TCPV4 if version == 4 else d.GSO_TCPV6) if tcp else d.GSO_UDP_L4
    a = split(compiled, super_batch(pkt, gso, size), slots=16)
    b = split(twin, super_batch(pkt, gso, size), slots=16)
    assert a[:2] == b[:2]
