"""GRO on write (gso.gro_udp): same-flow UDP datagrams coalesced into one USO super-packet.

The reference is the round trip: the coalesced packet, split again the way Linux's software
GSO does (gso_split, itself checked against scapy in test_gso.py), must give back the
original datagrams byte for byte; its partial checksum, completed, must be the full one.
"""

import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from ztun._fast import PacketBatch
from ztun._fast import defs as d

CLIENT4, SERVER4, CLIENT6, SERVER6 = "198.18.0.5", "198.19.0.1", "fd00:18::5", "fd00:19::1"


def datagrams(version, sizes, *, id0=100, sport=53, dport=40000, rng=None):
    """UDP datagrams of one flow as build.udp_packet makes them (DF, TTL/hop limit 64), IDs counting up."""
    rng = rng or random.Random(len(sizes))
    out = []
    for k, n in enumerate(sizes):
        ip = IP(src=SERVER4, dst=CLIENT4, id=(id0 + k) & 0xFFFF, flags="DF", ttl=64) if version == 4 else IPv6(src=SERVER6, dst=CLIENT6, hlim=64)
        out.append(bytes(ip / UDP(sport=sport, dport=dport) / Raw(rng.randbytes(n))))
    return out


def load(packets, slots=None, vnet=True):
    batch = PacketBatch(slots=slots or max(len(packets), 1), vnet_hdr=vnet)
    batch.fill(packets)
    return batch


def coalesce(impl, packets, **kw):
    batch = load(packets)
    segs = np.zeros(batch.slots, dtype=np.int32)
    kept = impl.gso.gro_udp(batch, len(packets), segs, **kw)
    return batch, segs, kept


def resplit(impl, batch, i):
    """Slot i of a coalesced batch, cut again into datagrams (or itself when it carries one)."""
    one = PacketBatch(slots=1, vnet_hdr=True)
    one.set_packet(0, batch.packet(i).tobytes())
    one.data[0, 6:16] = batch.data[i, 6:16]
    one.count = 1
    impl.packet.parse_batch(one)
    assert one.meta["status"][0] == d.OK
    if not one.meta["gso_type"][0]:
        return [one.packet(0).tobytes()]
    out = PacketBatch(slots=128, max_packet=9000)
    n = impl.gso.gso_split(one, 0, out)
    assert n > 1
    return [out.packet(k).tobytes() for k in range(n)]


def written(impl, batch, n):
    """The packets the device would write (verdict V_WRITE), each split again."""
    return [s for i in range(n) if batch.verdicts[i] == d.V_WRITE for s in resplit(impl, batch, i)]


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("sizes", [[1200] * 8, [1200] * 7 + [333], [1] * 5, [1472, 1472, 1], [999, 999]])
def test_round_trip_gives_back_the_datagrams(impl, version, sizes):
    pkts = datagrams(version, sizes)
    batch, segs, kept = coalesce(impl, pkts)
    assert kept == 1 and list(segs[: len(pkts)]) == [len(pkts)] + [0] * (len(pkts) - 1)
    assert list(batch.verdicts[: len(pkts)]) == [d.V_WRITE] + [d.V_DROP] * (len(pkts) - 1)
    flags, gso_type, hdr_len, gso_size, start, offset = struct.unpack("<BBHHHH", batch.data[0, 6:16].tobytes())
    l4 = 20 if version == 4 else 40
    assert (flags, gso_type, hdr_len, gso_size, start, offset) == (d.VNET_F_NEEDS_CSUM, d.GSO_UDP_L4, l4 + 8, sizes[0], l4, 6)
    assert written(impl, batch, len(pkts)) == pkts
    # the partial checksum is the pseudo-header sum: summing from csum_start completes it
    raw = bytearray(batch.packet(0).tobytes())
    raw[l4 + 6 : l4 + 8] = struct.pack("!H", scapy_checksum(bytes(raw[l4:])))
    assert impl.packet.verify_checksums(bytes(raw)) == d.CS_OK


def test_runs_stop_where_they_must(impl):
    a = datagrams(4, [500, 500, 500])
    b = datagrams(4, [500, 500], dport=40001)  # another flow
    c = datagrams(6, [500, 500])
    big = datagrams(4, [400, 500], dport=40003)  # larger than the first: starts a new run
    short = datagrams(4, [500, 200, 200], dport=40004)  # a short one ends its run
    tcp = bytes(IP(src=SERVER4, dst=CLIENT4) / TCP() / Raw(bytes(500)))
    pkts = a + b + [tcp] + c + big + short
    batch, segs, kept = coalesce(impl, pkts)
    assert list(segs[: len(pkts)]) == [3, 0, 0, 2, 0, 1, 2, 0, 1, 1, 2, 0, 1]
    assert kept == 8
    assert written(impl, batch, len(pkts)) == pkts


def test_limits(impl):
    pkts = datagrams(4, [100] * 10)
    _, segs, kept = coalesce(impl, pkts, max_segments=4)
    assert list(segs[:10]) == [4, 0, 0, 0, 4, 0, 0, 0, 2, 0] and kept == 3
    # 64 KiB: 45 datagrams of 1472 bytes are 66,240 bytes of payload
    pkts = datagrams(4, [1472] * 45)
    batch, segs, kept = coalesce(impl, pkts)
    assert list(segs[:2]) == [44, 0] and segs[44] == 1 and kept == 2
    assert int(batch.lengths[0]) == 28 + 44 * 1472 <= 65535
    assert written(impl, batch, 45) == pkts
    pkts = datagrams(6, [1452] * 46)
    batch, segs, kept = coalesce(impl, pkts)
    assert segs[0] == 45 and int(batch.lengths[0]) - 40 <= 65535
    assert written(impl, batch, 46) == pkts


def test_what_is_left_alone(impl):
    base = datagrams(4, [300, 300])
    opts = bytes(IP(src=SERVER4, dst=CLIENT4, flags="DF", options=b"\x01\x01\x01\x00") / UDP(sport=53, dport=40000) / Raw(bytes(300)))
    frag = bytes(IP(src=SERVER4, dst=CLIENT4, flags="MF") / UDP(sport=53, dport=40000) / Raw(bytes(300)))
    empty = datagrams(4, [0, 0])
    for pkts in ([opts, opts], [frag, frag], empty, [base[0]] * 2 + [b""]):
        batch, segs, kept = coalesce(impl, pkts)
        if pkts[-1] == b"":
            assert list(segs[:3]) == [2, 0, 1]
        else:
            assert list(segs[: len(pkts)]) == [1] * len(pkts) and kept == len(pkts), pkts
    # a slot that already carries a virtio header (a GSO packet of its own) is not merged
    batch = load(base)
    batch.data[1, 6:16] = list(struct.pack("<BBHHHH", d.VNET_F_NEEDS_CSUM, 0, 0, 0, 20, 6))
    segs = np.zeros(2, dtype=np.int32)
    assert impl.gso.gro_udp(batch, 2, segs) == 2
    with pytest.raises(ValueError):
        impl.gso.gro_udp(load(base, vnet=False), 2, segs)
    with pytest.raises(ValueError):
        impl.gso.gro_udp(load(base), 3, segs)


flows = st.sampled_from([(4, 53, 40000), (4, 53, 40001), (6, 53, 40000), (6, 443, 40002)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(flows, st.sampled_from([1, 7, 100, 1200, 1200, 1200, 1472]), st.integers(1, 6)), min_size=1, max_size=12),
       st.integers(0, 2**32))
def test_fuzz_identical_and_round_trip(both, runs, seed):
    rng = random.Random(seed)
    pkts, ids = [], {}
    for (version, sport, dport), size, count in runs:
        sizes = [size] * count
        if rng.random() < 0.5:
            sizes[-1] = rng.randrange(1, size + 1)
        key = (version, sport, dport)
        pkts += datagrams(version, sizes, id0=ids.get(key, 0), sport=sport, dport=dport, rng=rng)
        ids[key] = ids.get(key, 0) + count
    results = []
    for impl in both:
        batch, segs, kept = coalesce(impl, pkts)
        n = len(pkts)
        results.append((kept, segs[:n].tobytes(), batch.verdicts[:n].tobytes(), batch.lengths[:n].tobytes(),
                        batch.data[:n].tobytes()))
        assert written(impl, batch, n) == pkts  # IDs of each flow count up, as segmentation numbers them
    assert results[0] == results[1]

