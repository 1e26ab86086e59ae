"""parse_batch and verify_checksums against scapy's dissection, on valid, malformed and fuzzed input."""

import ipaddress
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.packet import Raw

from packets import fragments, random_packet
from ztun._fast import PacketBatch
from ztun._fast import defs as d


def parse_all(impl, packets, lengths=None):
    batch = PacketBatch(slots=max(1, len(packets)), max_packet=9100)
    batch.fill(packets)
    if lengths is not None:
        batch.lengths[: len(lengths)] = lengths
    impl.packet.parse_batch(batch)
    return batch.meta[: len(packets)]


def expected(pkt):
    """The Meta row scapy's dissection implies."""
    raw = bytes(pkt)
    ip = IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)
    row = dict(status=d.OK, version=ip.version)
    row["src"] = ipaddress.ip_address(ip.src).packed.ljust(16, b"\0")
    row["dst"] = ipaddress.ip_address(ip.dst).packed.ljust(16, b"\0")
    l4 = ip.payload
    if ip.version == 4:
        row.update(hop_limit=ip.ttl, ip_len=ip.len, l4_off=ip.ihl * 4)
    else:
        while l4.__class__.__name__.startswith("IPv6ExtHdr"):
            l4 = l4.payload
        row.update(hop_limit=ip.hlim, ip_len=40 + ip.plen, l4_off=len(raw) - len(bytes(l4)))
    if isinstance(l4, TCP):
        row.update(proto=6, src_port=l4.sport, dst_port=l4.dport, seq=l4.seq, ack=l4.ack, tcp_flags=int(l4.flags))
        row.update(payload_off=row["l4_off"] + l4.dataofs * 4, payload_len=len(bytes(l4.payload)))
    elif isinstance(l4, UDP):
        row.update(proto=17, src_port=l4.sport, dst_port=l4.dport, payload_off=row["l4_off"] + 8, payload_len=len(bytes(l4.payload)))
    else:
        row.update(proto=1 if ip.version == 4 else 58, icmp_type=bytes(l4)[0], icmp_code=bytes(l4)[1])
        row.update(payload_off=row["l4_off"] + 8, payload_len=len(bytes(l4)) - 8)
    return row


def test_random_packets_match_scapy(impl):
    rng = random.Random(2024)
    packets = [random_packet(rng) for _ in range(400)]
    meta = parse_all(impl, [bytes(p) for p in packets])
    for pkt, got in zip(packets, meta):
        want = expected(pkt)
        for name, value in want.items():
            if name in ("src", "dst"):
                assert got[name].tobytes() == value, name
            else:
                assert got[name] == value, (name, pkt.summary())


@pytest.mark.parametrize("offset, more, frag", [(0, 1, d.FRAG_FIRST), (1, 0, d.FRAG_LATER), (0, 0, d.FRAG_NONE)])
def test_ipv6_fragments(impl, offset, more, frag):
    pkt = IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(offset=offset, m=more, id=0xDEADBEEF) / UDP(sport=1, dport=2) / Raw(b"x" * 16)
    (row,) = parse_all(impl, [bytes(pkt)])
    assert row["status"] == d.OK and row["frag"] == frag and row["proto"] == 17
    assert row["frag_id"] == 0xDEADBEEF and row["frag_offset"] == offset * 8
    assert row["l4_off"] == 48
    if frag == d.FRAG_LATER:
        assert row["src_port"] == 0 and row["payload_off"] == 48


def test_ipv4_fragments(impl):
    rng = random.Random(5)
    frags = fragments(rng)
    meta = parse_all(impl, [bytes(f) for f in frags])
    assert [int(r["frag"]) for r in meta] == [d.FRAG_FIRST] + [d.FRAG_LATER] * (len(frags) - 2) + [d.FRAG_LATER]
    assert meta[0]["src_port"] == 5 and meta[0]["dst_port"] == 53
    assert all(r["status"] == d.OK and r["frag_id"] == frags[0].id for r in meta)
    assert [int(r["frag_offset"]) for r in meta] == [f.frag * 8 for f in frags]
    assert meta[1]["src_port"] == 0


TCP4 = bytes(IP(src="198.18.0.1", dst="198.19.0.1") / TCP(sport=1, dport=2) / Raw(b"data"))
UDP6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2) / Raw(b"data"))


def mutate(raw, offset, value):
    b = bytearray(raw)
    b[offset] = value
    return bytes(b)


MALFORMED = [
    (b"", d.EMPTY),
    (b"\x45", d.TRUNCATED),
    (b"\x60" + bytes(30), d.TRUNCATED),
    (b"\x00" * 40, d.BAD_VERSION),
    (b"\xf5" + TCP4[1:], d.BAD_VERSION),
    (mutate(TCP4, 0, 0x44), d.BAD_IHL),
    (mutate(TCP4, 0, 0x4F), d.BAD_LENGTH),  # IHL 60 > total length 44
    (mutate(mutate(TCP4, 2, 0), 3, 10), d.BAD_LENGTH),
    (mutate(TCP4, 2, 0xFF), d.TRUNCATED),  # total length beyond the slot
    (TCP4[:30], d.TRUNCATED),
    (mutate(TCP4, 32, 0x40), d.BAD_TCP_HEADER),  # data offset 4 words
    (mutate(TCP4, 32, 0xF0), d.TRUNCATED),  # data offset 60 bytes > segment
    (mutate(UDP6, 45, 4), d.BAD_UDP_LENGTH),  # UDP length 4
    (mutate(mutate(UDP6, 4, 0), 5, 0), d.BAD_LENGTH),  # IPv6 payload length 0 (jumbogram)
    (mutate(UDP6, 5, 200), d.TRUNCATED),
    (bytes(IPv6(src="fd00::1", dst="fd00::2", nh=0) / Raw(b"\x00\x00" + bytes(6)))[:44], d.TRUNCATED),
]


@pytest.mark.parametrize("raw, status", MALFORMED)
def test_malformed(impl, raw, status):
    (row,) = parse_all(impl, [raw])
    assert row["status"] == status
    if status:
        fields = [n for n in d.META_DTYPE.names if n != "status"]
        assert not any(np.any(row[n]) for n in fields)


def test_udp_length_checks(impl):
    ok = bytes(IP(src="198.18.0.1", dst="198.19.0.1") / UDP(sport=1, dport=2) / Raw(b"abcd"))
    short = mutate(mutate(ok, 24, 0), 25, 7)  # UDP length 7 < 8
    long = mutate(mutate(ok, 24, 0), 25, 200)  # beyond the IP payload
    padded = mutate(mutate(ok, 24, 0), 25, 10)  # shorter than the IP payload: 2 payload bytes
    meta = parse_all(impl, [ok, short, long, padded])
    assert [int(r["status"]) for r in meta] == [d.OK, d.BAD_UDP_LENGTH, d.BAD_UDP_LENGTH, d.OK]
    assert meta[0]["payload_len"] == 4 and meta[3]["payload_len"] == 2


def test_too_many_extension_headers(impl):
    chain = b"".join(bytes([60 if i < 8 else 17, 0]) + bytes(6) for i in range(9))
    udp = bytes(UDP(sport=1, dport=2, len=8, chksum=0))
    head = bytes(IPv6(src="fd00::1", dst="fd00::2", nh=60, plen=len(chain) + 8))
    (row,) = parse_all(impl, [head + chain + udp])
    assert row["status"] == d.BAD_EXT_HEADER
    ok = head[:6] + bytes([60]) + head[7:]
    chain7 = b"".join(bytes([60 if i < 6 else 17, 0]) + bytes(6) for i in range(7))
    ok = bytes(IPv6(src="fd00::1", dst="fd00::2", nh=60, plen=len(chain7) + 8)) + chain7 + udp
    (row,) = parse_all(impl, [ok])
    assert row["status"] == d.OK and row["proto"] == 17 and row["l4_off"] == 40 + 56


def test_slot_length_is_clamped(impl):
    batch = PacketBatch(slots=3, max_packet=100)
    batch.fill([TCP4, TCP4, TCP4])
    batch.lengths[:3] = [-5, 10**6, 10]
    impl.packet.parse_batch(batch)
    assert [int(s) for s in batch.meta["status"][:3]] == [d.EMPTY, d.OK, d.TRUNCATED]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=16))
def test_fuzz_bytes_identical(both, packets):
    compiled, twin = both
    a = parse_all(compiled, packets)
    b = parse_all(twin, packets)
    assert a.tobytes() == b.tobytes()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=6), st.integers(0, 300))
def test_fuzz_mutated_valid_identical(both, seed, flips, cut):
    compiled, twin = both
    raw = bytearray(bytes(random_packet(random.Random(seed))))
    for off, val in flips:
        if off < len(raw):
            raw[off] = val
    raw = bytes(raw[: max(0, len(raw) - cut)] if cut < len(raw) else raw)
    a = parse_all(compiled, [raw])
    b = parse_all(twin, [raw])
    assert a.tobytes() == b.tobytes()
    assert compiled.packet.verify_checksums(raw) == twin.packet.verify_checksums(raw)


def test_verify_checksums(impl):
    rng = random.Random(77)
    for _ in range(200):
        raw = bytes(random_packet(rng))
        (row,) = parse_all(impl, [raw])
        want = d.CS_UNCHECKED if row["frag"] else d.CS_OK
        assert impl.packet.verify_checksums(raw) == want
        if row["frag"] == d.FRAG_NONE and row["payload_len"]:
            bad = mutate(raw, row["payload_off"], raw[row["payload_off"]] ^ 0x01)
            assert impl.packet.verify_checksums(bad) == d.CS_BAD_L4
    assert impl.packet.verify_checksums(mutate(TCP4, 10, TCP4[10] ^ 0xFF)) == d.CS_BAD_IP
    assert impl.packet.verify_checksums(b"") == d.CS_UNCHECKED


def test_udp_zero_checksum_rules(impl):
    v4 = bytes(IP(src="198.18.0.1", dst="198.19.0.1") / UDP(sport=1, dport=2, chksum=0) / Raw(b"abc"))
    v6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=1, dport=2, chksum=0) / Raw(b"abc"))
    assert impl.packet.verify_checksums(v4) == d.CS_OK
    assert impl.packet.verify_checksums(v6) == d.CS_UDP6_ZERO


def test_icmp_checksums(impl):
    v4 = bytes(IP(src="198.18.0.1", dst="198.19.0.1") / ICMP(type=8, id=7, seq=1) / Raw(b"ping"))
    assert impl.packet.verify_checksums(v4) == d.CS_OK
    assert impl.packet.verify_checksums(mutate(v4, 30, 0)) == d.CS_BAD_L4
