"""Packets the stack writes itself, compared with the same packets built by scapy."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from ztun._fast import PacketBatch


def ip(version, src, dst):
    return IP(src=src, dst=dst, flags="DF", id=0, ttl=64) if version == 4 else IPv6(src=src, dst=dst, hlim=64)


def addr(a):
    import ipaddress

    return ipaddress.ip_address(a).packed


def parsed(impl, packets):
    batch = PacketBatch(slots=len(packets), max_packet=9000)
    batch.fill([bytes(p) for p in packets])
    impl.packet.parse_batch(batch)
    return batch


@pytest.mark.parametrize("version, src, dst", [(4, "198.19.0.1", "198.18.0.9"), (6, "fd00:19::1", "fd00:18::9")])
@pytest.mark.parametrize("size", [0, 1, 100, 1472, 8000])
def test_udp_packet(impl, version, src, dst, size):
    payload = bytes(random.Random(size).getrandbits(8) for _ in range(size))
    out = PacketBatch(slots=2, max_packet=9000)
    n = impl.build.udp_packet(out, 1, addr(src), 53, addr(dst), 40000, payload)
    assert out.packet(1).tobytes() == bytes(ip(version, src, dst) / UDP(sport=53, dport=40000) / Raw(payload))
    assert n == out.lengths[1]
    assert impl.build.udp_packet(PacketBatch(slots=1, max_packet=100), 0, addr(src), 1, addr(dst), 2, payload) == (n if n <= 100 else 0)


@pytest.mark.parametrize("version, c, s", [(4, "198.18.0.9", "198.19.0.1"), (6, "fd00:18::9", "fd00:19::1")])
def test_tcp_reset(impl, version, c, s):
    syn = ip(version, c, s) / TCP(sport=40000, dport=80, flags="S", seq=1000)
    data = ip(version, c, s) / TCP(sport=40000, dport=80, flags="PA", seq=5, ack=777) / Raw(b"abc")
    fin = ip(version, c, s) / TCP(sport=40000, dport=80, flags="F", seq=9) / Raw(b"xy")
    rst = ip(version, c, s) / TCP(sport=40000, dport=80, flags="R")
    batch = parsed(impl, [syn, data, fin, rst])
    out = PacketBatch(slots=4)
    lens = [impl.build.tcp_reset(batch, i, out, i) for i in range(4)]
    assert lens[3] == 0  # a reset is never answered
    want = [
        ip(version, s, c) / TCP(sport=80, dport=40000, flags="RA", seq=0, ack=1001, window=0),
        ip(version, s, c) / TCP(sport=80, dport=40000, flags="R", seq=777, ack=0, window=0),
        ip(version, s, c) / TCP(sport=80, dport=40000, flags="RA", seq=0, ack=12, window=0),
    ]
    for k in range(3):
        assert out.packet(k).tobytes() == bytes(want[k])


def test_icmp_unreachable(impl):
    u4 = IP(src="198.18.0.9", dst="198.19.0.1", id=5) / UDP(sport=1, dport=2) / Raw(bytes(1000))
    u6 = IPv6(src="fd00:18::9", dst="fd00:19::1") / UDP(sport=1, dport=2) / Raw(bytes(2000))
    err = IP(src="198.18.0.9", dst="198.19.0.1") / ICMP(type=3, code=1) / Raw(bytes(28))
    echo6 = IPv6(src="fd00:18::9", dst="fd00:19::1") / ICMPv6EchoRequest()
    mcast = IP(src="198.18.0.9", dst="224.0.0.5") / UDP(sport=1, dport=2)
    batch = parsed(impl, [u4, u6, err, echo6, mcast])
    out = PacketBatch(slots=5)
    assert impl.build.icmp_unreachable(batch, 0, out, 0, 3) == 576
    raw4 = bytes(u4)
    assert out.packet(0).tobytes() == bytes(ip(4, "198.19.0.1", "198.18.0.9") / ICMP(type=3, code=3) / Raw(raw4[:548]))
    assert impl.build.icmp_unreachable(batch, 1, out, 1, 13) == 1280
    raw6 = bytes(u6)
    assert out.packet(1).tobytes() == bytes(ip(6, "fd00:19::1", "fd00:18::9") / ICMPv6DestUnreach(code=1) / Raw(raw6[:1232]))
    assert impl.build.icmp_unreachable(batch, 2, out, 2, 3) == 0  # no error about an error
    assert impl.build.icmp_unreachable(batch, 3, out, 3, 3) > 0  # echo is informational
    assert impl.build.icmp_unreachable(batch, 4, out, 4, 3) == 0  # nor about multicast


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 6), st.integers(0, 20))
def test_fuzz_identical(both, raw, which, code):
    compiled, twin = both
    outs = []
    for impl in (compiled, twin):
        batch = PacketBatch(slots=1, max_packet=2000)
        batch.fill([raw])
        impl.packet.parse_batch(batch)
        out = PacketBatch(slots=1, max_packet=2000)
        n = (impl.build.tcp_reset(batch, 0, out, 0) if which < 3 else impl.build.icmp_unreachable(batch, 0, out, 0, code))
        outs.append((n, out.packet(0).tobytes() if n else b""))
    assert outs[0] == outs[1]
