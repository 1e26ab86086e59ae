"""The NAT flow table: rewrites checked against scapy, round trips, port allocation, expiry, capacity."""

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from packets import random_packet
from ztun._fast import PacketBatch
from ztun._fast import defs as d
from ztun._fast.nat_config import NatConfig
from ztun.errors import ConfigError, NatPortsExhausted, NatTableFull

A4, A6 = "198.18.0.1", "fd00:18::1"
P4, P6 = 7000, 7001


def config(**kw):
    kw.setdefault("port4", P4)
    kw.setdefault("port6", P6)
    return NatConfig.from_prefixes(kw.pop("inet4", A4 + "/24"), kw.pop("inet6", A6 + "/120"), **kw)


def run(impl, table, packets, now=1.0):
    batch = PacketBatch(slots=max(1, len(packets)), max_packet=2000)
    batch.fill(packets)
    impl.packet.parse_batch(batch)
    table.process_batch(batch, now)
    n = len(packets)
    return batch, [batch.packet(i).tobytes() for i in range(n)], list(batch.verdicts[:n]), list(batch.reasons[:n]), list(batch.flow_ids[:n])


def ip_of(raw):
    return IP(raw) if raw[0] >> 4 == 4 else IPv6(raw)


def swap(raw):
    """The same packet with source and destination (address and port) exchanged; checksums stay valid."""
    p = bytearray(raw)
    a, alen = (12, 4) if p[0] >> 4 == 4 else (8, 16)
    p[a : a + alen], p[a + alen : a + 2 * alen] = p[a + alen : a + 2 * alen], p[a : a + alen]
    l4 = len(raw) - len(bytes(ip_of(raw)[TCP]))
    p[l4 : l4 + 2], p[l4 + 2 : l4 + 4] = p[l4 + 2 : l4 + 4], p[l4 : l4 + 2]
    return bytes(p)


def syn(src, sport, dst, dport, payload=b""):
    ip = IP(src=src, dst=dst) if ":" not in src else IPv6(src=src, dst=dst)
    return bytes(ip / TCP(sport=sport, dport=dport, flags="S", seq=1000) / Raw(payload))


def tcp_packet(rng, version):
    while True:
        p = random_packet(rng)
        if p.version == version and TCP in p:
            p[TCP].flags = "S"
            return bytes(p)


@pytest.mark.parametrize("version", [4, 6])
def test_forward_rewrite_matches_recompute(impl, version):
    rng = random.Random(version)
    table = impl.nat.NatTable(config())
    packets = [tcp_packet(rng, version) for _ in range(60)]
    _, out, verdicts, _, fids = run(impl, table, packets)
    for before, after, v, fid in zip(packets, out, verdicts, fids):
        assert v == d.V_NEW_FLOW
        flow = table.flow(fid)
        got = ip_of(after)
        assert (got.src, got[TCP].sport) == (str(flow.nat_addr), flow.nat_port)
        assert (got.dst, got[TCP].dport) == ((A4, P4) if version == 4 else (A6, P6))
        assert impl.packet.verify_checksums(after) == d.CS_OK
        redo = ip_of(after)
        if version == 4:
            del redo.chksum
        del redo[TCP].chksum
        assert bytes(redo.__class__(bytes(redo))) == after  # same bytes as a from-scratch checksum
        orig = ip_of(before)
        assert (str(flow.src), flow.sport, str(flow.dst), flow.dport) == (orig.src, orig[TCP].sport, orig.dst, orig[TCP].dport)


@pytest.mark.parametrize("version", [4, 6])
def test_round_trip_restores_packet(impl, version):
    """Client packet -> stack, swapped into the kernel's reply, -> client, swapped back: byte for byte the original."""
    rng = random.Random(10 + version)
    table = impl.nat.NatTable(config())
    packets = [tcp_packet(rng, version) for _ in range(60)]
    _, out, _, _, fids = run(impl, table, packets)
    for fid in fids:
        table.allow(fid)
    _, back, verdicts, _, fids2 = run(impl, table, [swap(p) for p in out])
    assert verdicts == [d.V_WRITE] * len(packets)
    assert fids2 == fids
    assert [swap(p) for p in back] == packets


def test_tcp_states_and_decisions(impl):
    table = impl.nat.NatTable(config())
    c = syn("198.18.7.7", 40000, "198.19.0.5", 80)
    _, (fwd,), v, _, (fid,) = run(impl, table, [c])
    assert v == [d.V_NEW_FLOW] and table.flow(fid).state == "syn_sent"
    # packets of a flow still waiting for the handler are held back
    _, _, v, r, _ = run(impl, table, [c])
    assert (v, r) == ([d.V_DROP], [d.PENDING])
    table.allow(fid)
    reply = bytes(IP(src=A4, dst=ip_of(fwd).src) / TCP(sport=P4, dport=ip_of(fwd)[TCP].sport, flags="SA"))
    _, (back,), v, _, _ = run(impl, table, [reply])
    assert v == [d.V_WRITE] and table.flow(fid).state == "established"
    assert (ip_of(back).src, ip_of(back)[TCP].sport, ip_of(back).dst) == ("198.19.0.5", 80, "198.18.7.7")
    fin_c = bytes(IP(src="198.18.7.7", dst="198.19.0.5") / TCP(sport=40000, dport=80, flags="FA"))
    run(impl, table, [fin_c])
    assert table.flow(fid).state == "fin_wait"
    fin_s = bytes(IP(src=A4, dst=ip_of(fwd).src) / TCP(sport=P4, dport=ip_of(fwd)[TCP].sport, flags="FA"))
    run(impl, table, [fin_s])
    assert table.flow(fid).state == "closing"
    # the client reuses its port: the closing flow gives way to a new one on another NAT port
    _, (fwd2,), v, _, (fid2,) = run(impl, table, [c])
    assert v == [d.V_NEW_FLOW] and table.flow(fid2).nat_port != ip_of(fwd)[TCP].sport
    assert len(table) == 1
    rst = bytes(IP(src="198.18.7.7", dst="198.19.0.5") / TCP(sport=40000, dport=80, flags="R"))
    table.allow(fid2)
    run(impl, table, [rst])
    assert table.flow(fid2).state == "reset"
    # a blocked flow drops its packets
    b = syn("198.18.7.8", 1, "198.19.0.5", 80)
    _, _, _, _, (fid3,) = run(impl, table, [b])
    table.block(fid3)
    _, _, v, r, _ = run(impl, table, [b])
    assert (v, r) == ([d.V_DROP], [d.BLOCKED])
    counts = table.counters()
    assert counts["drop_blocked"] == 1 and counts["drop_pending"] == 1 and counts["verdict_new_flow"] == 3


def test_non_tcp_and_unknown(impl):
    table = impl.nat.NatTable(config())
    ack = bytes(IP(src="198.18.7.7", dst="198.19.0.5") / TCP(sport=1, dport=80, flags="A"))
    stray = bytes(IP(src=A4, dst="198.18.0.2") / TCP(sport=P4, dport=4000, flags="A"))
    udp = bytes(IPv6(src="fd00::1", dst="fd00::2") / __import__("scapy.layers.inet", fromlist=["UDP"]).UDP())
    icmp = bytes(IP(src="198.18.7.7", dst="198.19.0.5") / __import__("scapy.layers.inet", fromlist=["ICMP"]).ICMP())
    gre = bytes(IP(src="198.18.7.7", dst="198.19.0.5", proto=47) / Raw(b"1234"))
    _, _, v, r, _ = run(impl, table, [ack, stray, udp, icmp, gre, b"\x45"])
    assert v == [d.V_DROP, d.V_DROP, d.V_UDP, d.V_ICMP, d.V_OTHER, d.V_DROP]
    assert r == [d.NO_FLOW, d.NO_FLOW, 0, 0, 0, d.TRUNCATED]
    assert table.counters()["drop_no_flow"] == 2 and table.counters()["drop_truncated"] == 1


def test_ports_never_shared_and_fifo(impl):
    table = impl.nat.NatTable(config(port_min=5000, port_max=5003))
    fids = [table.insert(6, "198.18.9.9", 100 + i, "198.19.0.1", 80) for i in range(4)]
    ports = [table.flow(f).nat_port for f in fids]
    assert sorted(ports) == [5000, 5001, 5002, 5003]
    table.delete(fids[1])
    table.delete(fids[0])
    new = table.insert(6, "198.18.9.9", 200, "198.19.0.1", 80, now=100.0)  # after the ports' rest
    assert table.flow(new).nat_port == 5001  # freed first, reused first; never a live one
    assert {table.flow(f).nat_port for f in fids[2:] + [new]} == {5001, 5002, 5003}


def test_a_freed_port_rests_beyond_time_wait_before_reuse(impl):
    """The kernel holds the listener side of a closed connection (A:P <- B:n) in TIME_WAIT for
    60 s: the same B:n must not come back sooner, or the new SYN may be refused (PAWS)."""
    assert d.PORT_REST > 60
    table = impl.nat.NatTable(config(port_min=5000, port_max=5001, next_count=2))
    a = table.insert(6, "198.18.9.9", 1, "198.19.0.1", 80, now=0.0)
    b = table.insert(6, "198.18.9.9", 2, "198.19.0.1", 80, now=0.0)
    assert {str(table.flow(f).nat_addr) for f in (a, b)} == {"198.18.0.2"}
    table.touch(a, 10.0)
    table.delete(a)  # its port rests until 10 + PORT_REST
    c = table.insert(6, "198.18.9.9", 3, "198.19.0.1", 80, now=20.0)
    assert (str(table.flow(c).nat_addr), table.flow(c).nat_port) == ("198.18.0.3", 5000)  # the next address instead
    table.insert(6, "198.18.9.9", 4, "198.19.0.1", 80, now=20.0)
    with pytest.raises(NatPortsExhausted):  # nothing has rested: refused (counted), not a stalled SYN
        table.insert(6, "198.18.9.9", 5, "198.19.0.1", 80, now=10.0 + d.PORT_REST - 1)
    e = table.insert(6, "198.18.9.9", 6, "198.19.0.1", 80, now=10.0 + d.PORT_REST)
    assert (str(table.flow(e).nat_addr), table.flow(e).nat_port) == ("198.18.0.2", table.flow(b).nat_port ^ 1)
    zero = impl.nat.NatTable(config(port_min=5000, port_max=5000, port_rest=0))
    zero.delete(zero.insert(6, "198.18.9.9", 1, "198.19.0.1", 80, now=5.0))
    zero.insert(6, "198.18.9.9", 2, "198.19.0.1", 80, now=5.0)  # port_rest 0: at once


def test_stack_prefixes_give_every_next_address():
    assert len(NatConfig.from_prefixes("198.18.0.1/28", "fd00:18::1/124", port4=1, port6=1, next_count=None).next4) == 13
    cfg = NatConfig.from_prefixes("198.18.0.1/30", "fd00:18::1/124", port4=1, port6=1, next_count=None)
    assert len(cfg.next4) == 1 and len(cfg.next6) == 14
    assert len(NatConfig.from_prefixes("198.18.0.1/16", None, port4=1, next_count=None).next4) == 16


def test_next_addresses_extend_capacity(impl):
    table = impl.nat.NatTable(config(port_min=6000, port_max=6001, next_count=2))
    flows = [table.insert(6, "198.18.9.9", 100 + i, "198.19.0.1", 80) for i in range(4)]
    addrs = [str(table.flow(f).nat_addr) for f in flows]
    assert addrs == ["198.18.0.2", "198.18.0.2", "198.18.0.3", "198.18.0.3"]
    with pytest.raises(NatPortsExhausted):
        table.insert(6, "198.18.9.9", 999, "198.19.0.1", 80)
    assert table.counters()["drop_no_port"] == 1
    # IPv6 has ports of its own
    v6 = table.insert(6, "fd00::9", 1, "fd00::1", 80)
    assert str(table.flow(v6).nat_addr) == "fd00:18::2"
    _, _, v, r, _ = run(impl, table, [syn("198.18.9.9", 7, "198.19.0.1", 80)])
    assert (v, r) == ([d.V_DROP], [d.NO_PORT])


def test_full_table_refuses_and_counts(impl):
    table = impl.nat.NatTable(config(capacity=3))
    for i in range(3):
        table.insert(6, "198.18.9.9", i + 1, "198.19.0.1", 80)
    with pytest.raises(NatTableFull):
        table.insert(6, "198.18.9.9", 99, "198.19.0.1", 80)
    _, _, v, r, _ = run(impl, table, [syn("198.18.9.9", 100, "198.19.0.1", 80)])
    assert (v, r) == ([d.V_DROP], [d.TABLE_FULL])
    assert table.counters()["drop_table_full"] == 2
    assert len(table) == 3  # nothing evicted early


def test_expiry_frees_ports_in_bounded_sweeps(impl):
    timeouts = (0.0, 10.0, 100.0, 50.0, 5.0, 2.0)
    table = impl.nat.NatTable(config(capacity=8, port_min=5000, port_max=5003, timeouts=timeouts, port_rest=0))
    fids = [table.insert(6, "198.18.9.9", 100 + i, "198.19.0.1", 80, now=0.0) for i in range(4)]
    with pytest.raises(NatPortsExhausted):
        table.insert(6, "198.18.9.9", 5, "198.19.0.1", 80, now=0.0)
    table.touch(fids[0], 8.0)
    assert table.sweep(9.0) == 0  # none idle past 10 s yet
    assert table.sweep(10.5, limit=2) == 1  # only slots 0 and 1 examined: fid 1 expired, fid 0 touched
    assert table.sweep(10.5, limit=8) == 2
    assert len(table) == 1 and table.free_ports() == 3 + 4  # IPv4 ports, and the untouched IPv6 ones
    assert table.lookup(6, "198.18.9.9", 101, "198.19.0.1", 80) == -1
    assert table.lookup(6, "198.18.9.9", 100, "198.19.0.1", 80) == fids[0]
    new = table.insert(6, "198.18.9.9", 5, "198.19.0.1", 80, now=11.0)
    assert table.lookup_nat(table.flow(new).nat_addr, table.flow(new).nat_port) == new
    assert table.sweep(18.1, limit=8) == 1 and len(table) == 1  # fid 0: 10 s after its touch


def test_lookup_nat_and_delete(impl):
    table = impl.nat.NatTable(config())
    fid = table.insert(6, "fd00::5", 1234, "fd00::6", 443)
    f = table.flow(fid)
    assert table.lookup_nat(str(f.nat_addr), f.nat_port) == fid
    assert table.lookup_nat(ipaddress.ip_address(f.nat_addr).packed, f.nat_port) == fid
    assert table.lookup_nat("198.18.0.2", f.nat_port) == -1
    assert table.lookup_nat("fd00:18::99", f.nat_port) == -1
    table.delete(fid)
    assert table.lookup_nat(str(f.nat_addr), f.nat_port) == -1
    assert table.lookup(6, "fd00::5", 1234, "fd00::6", 443) == -1
    with pytest.raises(KeyError):
        table.flow(fid)
    with pytest.raises(KeyError):
        table.delete(fid)


def test_million_flows(impl):
    n = 1_000_000
    table = impl.nat.NatTable(config(capacity=n, next_count=16))
    base4 = int(ipaddress.ip_address("198.18.64.0"))
    for i in range(n):
        src = (base4 + (i >> 10)).to_bytes(4, "big")
        table.insert(6, src, 1024 + (i & 1023), b"\xc6\x13\x00\x01", 443)
    assert len(table) == n and table.free_ports() == 2 * 16 * 64512 - n  # IPv4 and IPv6 next addresses
    seen = set()
    for i in range(0, n, 997):
        src = (base4 + (i >> 10)).to_bytes(4, "big")
        fid = table.lookup(6, src, 1024 + (i & 1023), b"\xc6\x13\x00\x01", 443)
        f = table.flow(fid)
        assert table.lookup_nat(f.nat_addr, f.nat_port) == fid
        seen.add((f.nat_addr, f.nat_port))
    assert len(seen) == len(range(0, n, 997))
    with pytest.raises(NatTableFull):
        table.insert(6, "198.18.0.9", 1, "198.19.0.1", 443)


def test_config_errors():
    with pytest.raises(ConfigError, match="capacity"):
        NatConfig(capacity=0, stack4="198.18.0.1", port4=1, next4=("198.18.0.2",))
    with pytest.raises(ConfigError, match="port range"):
        NatConfig(stack4="198.18.0.1", port4=1, next4=("198.18.0.2",), port_min=10, port_max=5)
    with pytest.raises(ConfigError, match="port4"):
        NatConfig(stack4="198.18.0.1", next4=("198.18.0.2",))
    with pytest.raises(ConfigError, match="stack4 or stack6"):
        NatConfig()
    with pytest.raises(ConfigError, match="no room"):
        NatConfig.from_prefixes("198.18.0.3/31", port4=1, next_count=1)
    with pytest.raises(ConfigError, match="no room"):
        NatConfig.from_prefixes("198.18.0.1/30", port4=1, next_count=2)  # .3 is the broadcast
    with pytest.raises(ConfigError, match="IPv4"):
        NatConfig(stack4="fd00::1", port4=1, next4=("fd00::2",))
    with pytest.raises(ConfigError, match="distinct"):
        NatConfig(stack4="198.18.0.1", port4=1, next4=("198.18.0.1",))


CLIENTS = [("198.18.5.1", 1000), ("198.18.5.1", 1001), ("198.18.5.2", 1000), ("fd00:5::1", 1000), ("fd00:5::2", 2000)]
SERVERS4 = [("198.19.0.1", 80), ("198.19.0.2", 443)]
SERVERS6 = [("fd00:19::1", 80)]
FLAGS = ["S", "SA", "A", "PA", "FA", "R", "RA", "F", ""]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 99), st.sampled_from(FLAGS), st.integers(0, 40)), min_size=1, max_size=12), min_size=1, max_size=6))
def test_fuzz_traffic_identical(both, batches):
    """Random client packets, kernel replies to live mappings and garbage: both tables agree on every byte."""
    compiled, twin = both
    cfg = config(capacity=6, port_min=3000, port_max=3004, timeouts=(0.0, 3.0, 9.0, 4.0, 2.0, 1.0))
    tables = (compiled.nat.NatTable(cfg), twin.nat.NatTable(cfg))
    now = 0.0
    for events in batches:
        packets = []
        for kind, pick, flags, size in events:
            if kind <= 1:  # client packet
                src, sport = CLIENTS[pick % len(CLIENTS)]
                dst, dport = (SERVERS6 if ":" in src else SERVERS4)[pick % (1 if ":" in src else 2)]
                ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
                packets.append(bytes(ip / TCP(sport=sport, dport=dport, flags=flags) / Raw(bytes(size))))
            elif kind == 2:  # kernel reply to some NAT port
                v6 = pick % 2
                ip = IPv6(src=A6, dst="fd00:18::2") if v6 else IP(src=A4, dst="198.18.0.2")
                packets.append(bytes(ip / TCP(sport=P6 if v6 else P4, dport=3000 + pick % 6, flags=flags) / Raw(bytes(size))))
            else:
                packets.append(bytes(random.Random(pick).getrandbits(8) for _ in range(size)))
        results = []
        for impl, table in zip((compiled, twin), tables):
            batch, out, v, r, f = run(impl, table, packets, now)
            for i in range(len(packets)):
                if v[i] == d.V_NEW_FLOW:
                    (table.allow if f[i] % 3 else table.block)(f[i])
            results.append((out, v, r, f, table.counters(), len(table), table.free_ports(), table.sweep(now, limit=3)))
        assert results[0] == results[1]
        now += 1.5


def test_random_insert_delete_against_model(impl):
    """20,000 random inserts, deletes and sweeps on a small-ports table, checked against a dict."""
    rng = random.Random(99)
    table = impl.nat.NatTable(config(capacity=3000, port_min=2000, port_max=4999, timeouts=(0.0, 5.0, 5.0, 5.0, 5.0, 5.0), port_rest=0))
    model = {}  # key -> fid
    now = 0.0
    for step in range(20_000):
        key = (f"198.18.{rng.randrange(4)}.{rng.randrange(1, 60)}", rng.randrange(1, 40))
        op = rng.random()
        if op < 0.55 and key not in model:
            try:
                model[key] = table.insert(6, key[0], key[1], "198.19.0.1", 80, now=now)
            except NatTableFull:
                assert len(model) == 3000
        elif op < 0.9 and key in model:
            table.delete(model.pop(key))
        elif op >= 0.999:
            now += 10.0
            table.sweep(now, limit=3000)
            model.clear()
        assert table.lookup(6, key[0], key[1], "198.19.0.1", 80) == model.get(key, -1)
    assert len(table) == len(model)
    ports = set()
    for key, fid in model.items():
        f = table.flow(fid)
        assert (str(f.src), f.sport) == key
        assert table.lookup_nat(f.nat_addr, f.nat_port) == fid
        ports.add(f.nat_port)
    assert len(ports) == len(model)
    assert table.free_ports() == 3000 - len(model) + 3000  # IPv4 ring plus the untouched IPv6 one


def test_endpoints_as_text(impl):
    table = impl.nat.NatTable(config())
    a = table.insert(6, "198.18.9.9", 4000, "198.19.0.1", 80)
    b = table.insert(6, "fd00:5::1", 4001, "fd00:19::1", 443)
    assert table.endpoints(a) == (("198.18.9.9", 4000), ("198.19.0.1", 80), table.flow(a).nat_port)
    assert table.endpoints(b) == (("fd00:5::1", 4001), ("fd00:19::1", 443), table.flow(b).nat_port)
    table.delete(a)
    with pytest.raises(KeyError):
        table.endpoints(a)


def test_syn_fin_is_not_a_new_connection(impl):
    table = impl.nat.NatTable(config())
    synfin = bytes(IP(src="198.18.7.7", dst="198.19.0.5") / TCP(sport=1, dport=80, flags="SF"))
    _, _, v, r, _ = run(impl, table, [synfin])
    assert (v, r) == ([d.V_DROP], [d.NO_FLOW]) and len(table) == 0
