"""Checksums against an independent reference (scapy) and RFC 1624 updates against recomputation."""

import random
import struct

from hypothesis import given
from hypothesis import strategies as st
from scapy.utils import checksum as scapy_checksum


def naive_sum(data: bytes) -> int:
    """RFC 1071 the slow way: add big-endian words, fold carries at the end."""
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_every_length_0_to_9001(impl):
    rng = random.Random(1071)
    buf = bytes(rng.getrandbits(8) for _ in range(9001))
    for n in range(9002):
        data = buf[:n]
        assert impl.checksum.checksum(data) == scapy_checksum(data), n


def test_all_ones_and_all_zeros(impl):
    for n in (0, 1, 2, 3, 15, 16, 17, 1500, 9001):
        assert impl.checksum.checksum(b"\xff" * n) == scapy_checksum(b"\xff" * n)
        assert impl.checksum.checksum(b"\0" * n) == 0xFFFF
        assert impl.checksum.ones_sum(b"\0" * n) == 0


def test_unaligned_views(impl):
    rng = random.Random(3)
    big = bytearray(rng.getrandbits(8) for _ in range(4096))
    view = memoryview(big)
    for start in range(8):
        for n in (0, 1, 7, 64, 1499):
            chunk = view[start : start + n]
            assert impl.checksum.checksum(chunk) == scapy_checksum(bytes(chunk))


@given(st.binary(max_size=600), st.integers(0, 0xFFFF))
def test_ones_sum_with_initial(impl, data, initial):
    padded = data + b"\0" * (len(data) % 2)
    expect = naive_sum(padded + struct.pack("!H", initial))
    assert impl.checksum.ones_sum(data, initial) == expect
    assert impl.checksum.checksum(data, initial) == ~expect & 0xFFFF


@given(st.binary(min_size=4, max_size=4) | st.binary(min_size=16, max_size=16), st.data())
def test_pseudo_header(impl, src, data):
    dst = data.draw(st.binary(min_size=len(src), max_size=len(src)))
    proto = data.draw(st.sampled_from([6, 17, 58]))
    length = data.draw(st.integers(0, 0xFFFF))
    if len(src) == 4:
        raw = src + dst + struct.pack("!BBH", 0, proto, length)
    else:
        raw = src + dst + struct.pack("!I3xB", length, proto)
    assert impl.checksum.pseudo_sum(src, dst, proto, length) == naive_sum(raw)


@given(st.binary(min_size=2, max_size=200).filter(lambda b: any(b)), st.data())
def test_update16_matches_recompute(impl, data, draw):
    data = data + b"\0" * (len(data) % 2)
    words = list(struct.unpack(f"!{len(data) // 2}H", data))
    cs = scapy_checksum(data)
    i = draw.draw(st.integers(0, len(words) - 1))
    new = draw.draw(st.integers(0, 0xFFFF))
    old, words[i] = words[i], new
    changed = struct.pack(f"!{len(words)}H", *words)
    if any(changed):
        assert impl.checksum.update16(cs, old, new) == scapy_checksum(changed)


@given(st.sampled_from([4, 16]), st.data())
def test_update_addr_matches_recompute(impl, alen, data):
    head = data.draw(st.binary(min_size=2, max_size=64).filter(any))
    old = data.draw(st.binary(min_size=alen, max_size=alen))
    new = data.draw(st.binary(min_size=alen, max_size=alen))
    head += b"\0" * (len(head) % 2)
    cs = scapy_checksum(head + old)
    assert impl.checksum.update_addr(cs, old, new) == scapy_checksum(head + new)


def test_address_length_mismatch_is_an_error(impl):
    import pytest

    with pytest.raises(ValueError):
        impl.checksum.update_addr(0, b"\0" * 4, b"\0" * 16)
    with pytest.raises(ValueError):
        impl.checksum.pseudo_sum(b"\0" * 5, b"\0" * 5, 6, 0)
