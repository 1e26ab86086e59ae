"""ICMP/ICMPv6 echo answered in place: compiled vs twin byte for byte, and against replies built by scapy."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_RS,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
)
from scapy.packet import Raw

from packets import random_packet
from ztun._fast import PacketBatch
from ztun._fast import defs as d

# The impl and both fixtures (compiled core, then twin) come from tests/conftest.py.


def run(impl, packets, classify=True, verdicts=None):
    """Answer packets (bytes) in a fresh batch; return (batch, answered, verdict counts, drop counts)."""
    batch = PacketBatch(slots=max(1, len(packets)), max_packet=9100)
    batch.fill(packets)
    impl.packet.parse_batch(batch)
    if verdicts is not None:
        batch.verdicts[: len(verdicts)] = verdicts
    vc = np.zeros(d.N_VERDICTS, dtype=np.uint64)
    dc = np.zeros(d.N_REASONS, dtype=np.uint64)
    answered = impl.icmp.echo_batch(batch, classify, vc, dc)
    return batch, answered, vc, dc


def out(batch, i) -> bytes:
    return bytes(batch.packet(i))


def v4_requests(rng, n):
    reqs, replies = [], []
    for _ in range(n):
        src, dst = f"198.18.{rng.randrange(256)}.{rng.randrange(1, 224)}", f"198.19.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        ident, seq, ttl, ipid = rng.randrange(65536), rng.randrange(65536), rng.randrange(1, 256), rng.randrange(65536)
        payload = Raw(bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 8, 56, 1472)))))
        opts = rng.choice(([], [IPOption_NOP()] * 4))
        flags, tos = rng.choice((0, 2)), rng.randrange(256)
        reqs.append(bytes(IP(src=src, dst=dst, ttl=ttl, id=ipid, flags=flags, tos=tos, options=opts) / ICMP(type=8, id=ident, seq=seq) / payload))
        replies.append(bytes(IP(src=dst, dst=src, ttl=64, id=ipid, flags=flags, tos=tos, options=opts) / ICMP(type=0, id=ident, seq=seq) / payload))
    return reqs, replies


def v6_requests(rng, n):
    reqs, replies = [], []
    for _ in range(n):
        src = "fd00:18::" + f"{rng.randrange(1, 65536):x}"
        dst = "fd00:" + ":".join(f"{rng.randrange(65536):x}" for _ in range(7))
        ident, seq, tc, fl = rng.randrange(65536), rng.randrange(65536), rng.randrange(256), rng.randrange(1 << 20)
        data = bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 8, 56, 1452))))
        ext = rng.choice(((), (IPv6ExtHdrHopByHop(),), (IPv6ExtHdrDestOpt(),)))

        def build(a, b, hlim, kind):
            p = IPv6(src=a, dst=b, hlim=hlim, tc=tc, fl=fl)
            for e in ext:
                p = p / e.copy()
            return bytes(p / kind(id=ident, seq=seq, data=data))

        reqs.append(build(src, dst, rng.randrange(256), ICMPv6EchoRequest))
        replies.append(build(dst, src, 64, ICMPv6EchoReply))
    return reqs, replies


@pytest.mark.parametrize("family", [4, 6])
def test_replies_match_scapy(impl, family):
    rng = random.Random(family * 1000 + 7)
    reqs, expected = (v4_requests if family == 4 else v6_requests)(rng, 300)
    batch, answered, vc, _ = run(impl, reqs)
    assert answered == len(reqs)
    assert vc[d.V_WRITE] == len(reqs)
    for i, want in enumerate(expected):
        assert out(batch, i) == want, f"slot {i}"
        assert batch.verdicts[i] == d.V_WRITE
        assert impl.packet.verify_checksums(np.frombuffer(out(batch, i), dtype=np.uint8)) == d.CS_OK


def test_all_zero_echo_gets_ffff_checksum(impl):
    # RFC 1624 arithmetic yields 0x0000 here, which receivers reject; a full sum gives 0xFFFF.
    for payload in (b"", bytes(32)):
        req = bytes(IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=8, id=0, seq=0) / Raw(payload))
        batch, answered, _, _ = run(impl, [req])
        assert answered == 1
        reply = out(batch, 0)
        assert reply == bytes(IP(src="198.19.0.7", dst="198.18.0.1", ttl=64) / ICMP(type=0, id=0, seq=0) / Raw(payload))
        assert reply[22:24] == b"\xff\xff"
        assert impl.packet.verify_checksums(np.frombuffer(reply, dtype=np.uint8)) == d.CS_OK


def not_answered_cases():
    big = IP(src="198.18.0.1", dst="198.19.0.7", id=9) / ICMP(type=8) / Raw(bytes(3000))
    first, later = fragment(big, fragsize=1000)[:2]
    v6frag = IPv6(src="fd00:18::1", dst="fd00:19::7") / IPv6ExtHdrFragment(m=1, id=5) / ICMPv6EchoRequest()
    return [
        ("echo reply", IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=0), d.V_ICMP),
        ("unreachable", IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=3, code=1), d.V_ICMP),
        ("code 1", IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=8, code=1), d.V_ICMP),
        ("to multicast", IP(src="198.18.0.1", dst="224.0.0.1") / ICMP(type=8), d.V_ICMP),
        ("to broadcast", IP(src="198.18.0.1", dst="255.255.255.255") / ICMP(type=8), d.V_ICMP),
        ("from multicast", IP(src="239.1.1.1", dst="198.19.0.7") / ICMP(type=8), d.V_ICMP),
        ("first fragment", first, d.V_ICMP),
        ("later fragment", later, d.V_OTHER),
        ("v6 echo reply", IPv6(src="fd00:18::1", dst="fd00:19::7") / ICMPv6EchoReply(), d.V_ICMP),
        ("v6 router solicitation", IPv6(src="fe80::1", dst="ff02::2") / ICMPv6ND_RS(), d.V_ICMP),
        ("v6 to multicast", IPv6(src="fd00:18::1", dst="ff02::1") / ICMPv6EchoRequest(), d.V_ICMP),
        ("v6 fragment", v6frag, d.V_ICMP),
        ("icmpv6 over ipv4", IP(src="198.18.0.1", dst="198.19.0.7", proto=58) / Raw(bytes(ICMPv6EchoRequest())), d.V_OTHER),
        ("udp", IP(src="198.18.0.1", dst="198.19.0.7") / UDP(sport=1, dport=53) / Raw(b"x"), d.V_UDP),
        ("tcp", IP(src="198.18.0.1", dst="198.19.0.7") / TCP(flags="S"), d.V_OTHER),
        ("v6 tcp", IPv6(src="fd00:18::1", dst="fd00:19::7") / TCP(flags="S"), d.V_OTHER),
    ]


@pytest.mark.parametrize("name,pkt,verdict", not_answered_cases(), ids=[c[0] for c in not_answered_cases()])
def test_not_answered_left_untouched(impl, name, pkt, verdict):
    raw = bytes(pkt)
    batch, answered, vc, _ = run(impl, [raw])
    assert answered == 0
    assert out(batch, 0) == raw
    assert batch.verdicts[0] == verdict
    assert vc[verdict] == 1


def test_malformed_dropped_with_reason(impl):
    good = bytes(IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=8))
    packets = [good[:10], b"", bytes([0x75]) + good[1:], good[:-4]]
    batch, answered, vc, dc = run(impl, packets)
    assert answered == 0
    assert list(batch.verdicts[:4]) == [d.V_DROP] * 4
    assert list(batch.reasons[:4]) == [d.TRUNCATED, d.EMPTY, d.BAD_VERSION, d.TRUNCATED]
    assert vc[d.V_DROP] == 4
    assert dc[d.TRUNCATED] == 2 and dc[d.EMPTY] == 1 and dc[d.BAD_VERSION] == 1
    assert [out(batch, i) for i in range(4)] == packets


def test_without_classify_only_icmp_verdicts_are_answered(impl):
    req = bytes(IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=8, id=1, seq=2))
    batch, answered, _, _ = run(impl, [req, req, req], classify=False, verdicts=[d.V_ICMP, d.V_OTHER, d.V_WRITE])
    assert answered == 1
    assert list(batch.verdicts[:3]) == [d.V_WRITE, d.V_OTHER, d.V_WRITE]
    assert out(batch, 0) != req and out(batch, 1) == req and out(batch, 2) == req


def test_mixed_batch_counts(impl):
    rng = random.Random(3)
    reqs, _ = v4_requests(rng, 5)
    v6, _ = v6_requests(rng, 4)
    other = [bytes(IP(src="198.18.0.1", dst="198.19.0.7") / UDP() / Raw(b"q")), bytes(IP() / TCP()), b"\x45"]
    batch, answered, vc, dc = run(impl, reqs + v6 + other)
    assert answered == 9
    assert (vc[d.V_WRITE], vc[d.V_UDP], vc[d.V_OTHER], vc[d.V_DROP]) == (9, 1, 1, 1)
    assert dc.sum() == 1


def test_count_arrays_checked(impl):
    batch = PacketBatch(slots=1)
    with pytest.raises(ValueError):
        impl.icmp.echo_batch(batch, True, np.zeros(2, dtype=np.uint64), None)
    batch.count = 5
    with pytest.raises(ValueError):
        impl.icmp.echo_batch(batch)


def compare(both, packets):
    results = []
    for impl in both:
        batch, answered, vc, dc = run(impl, packets)
        results.append((batch, answered, vc, dc))
    (b1, a1, vc1, dc1), (b2, a2, vc2, dc2) = results
    assert a1 == a2
    assert np.array_equal(vc1, vc2) and np.array_equal(dc1, dc2)
    n = len(packets)
    assert np.array_equal(b1.verdicts[:n], b2.verdicts[:n])
    assert np.array_equal(b1.reasons[:n], b2.reasons[:n])
    assert np.array_equal(b1.data[:n], b2.data[:n])


def test_compiled_equals_twin_on_random_traffic(both):
    rng = random.Random(11)
    reqs4, _ = v4_requests(rng, 100)
    reqs6, _ = v6_requests(rng, 100)
    packets = reqs4 + reqs6 + [bytes(random_packet(rng)) for _ in range(300)]
    rng.shuffle(packets)
    compare(both, packets)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=120), min_size=1, max_size=8), st.data())
def test_compiled_equals_twin_fuzz(both, blobs, data):
    # Mutated echo requests reach deep into the rewrite; raw blobs exercise the parse statuses.
    base = [bytes(IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=8, id=0, seq=0)),
            bytes(IPv6(src="fd00:18::1", dst="fd00:19::7") / ICMPv6EchoRequest(id=0, seq=0))]
    packets = list(blobs)
    for b in base:
        raw = bytearray(b)
        for _ in range(data.draw(st.integers(0, 3))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        packets.append(bytes(raw))
    compare(both, packets)
