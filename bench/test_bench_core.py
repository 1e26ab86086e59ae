"""Micro-benchmarks of the packet core, compiled vs twin: `pytest bench --benchmark-only`.

Groups: checksum-1500, parse-batch (256 mixed packets), nat-rewrite-batch (parse + process_batch
of 256 TCP data packets, half each way, on 10,000 established flows).
"""

import random

import numpy as np
import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from ztun._fast import PacketBatch
from ztun._fast.nat_config import NatConfig

A4, P4 = "198.18.0.1", 7000
N_FLOWS, N_PACKETS = 10_000, 256


@pytest.mark.benchmark(group="checksum-1500")
def test_checksum_1500(benchmark, impl):
    benchmark.extra_info["bytes"] = 1500
    buf = bytes(random.Random(1).getrandbits(8) for _ in range(1500))
    benchmark(impl.checksum.checksum, buf)


def mixed_packets(rng):
    out = []
    for i in range(N_PACKETS):
        ip = IP(src="198.18.1.1", dst="198.19.0.1") if i % 3 else IPv6(src="fd00::1", dst="fd00::2")
        l4 = (TCP(sport=i + 1, dport=80, flags="PA"), UDP(sport=i + 1, dport=53), ICMP() if i % 3 else UDP())[i % 3]
        out.append(bytes(ip / l4 / Raw(bytes(rng.choice((0, 64, 512, 1400))))))
    return out


@pytest.mark.benchmark(group="parse-batch")
def test_parse_batch(benchmark, impl):
    batch = PacketBatch(slots=N_PACKETS, max_packet=1600)
    batch.fill(mixed_packets(random.Random(2)))
    benchmark.extra_info["packets"] = N_PACKETS
    benchmark(impl.packet.parse_batch, batch)


@pytest.mark.benchmark(group="nat-rewrite-batch")
def test_nat_rewrite_batch(benchmark, impl):
    cfg = NatConfig.from_prefixes(A4 + "/24", port4=P4)
    table = impl.nat.NatTable(cfg)
    setup = PacketBatch(slots=N_PACKETS, max_packet=1600)
    # establish N_FLOWS flows through the table itself: SYN out, SYN-ACK back
    for start in range(0, N_FLOWS, N_PACKETS):
        ids = range(start, min(start + N_PACKETS, N_FLOWS))
        setup.fill([bytes(IP(src=f"198.18.{10 + i // 60000}.{1 + (i // 250) % 250}", dst="198.19.0.1") / TCP(sport=1024 + i % 250 * 200 + i // 62500, dport=443, flags="S")) for i in ids])
        impl.packet.parse_batch(setup)
        table.process_batch(setup, 0.0)
        nat = []
        for k in range(setup.count):
            table.allow(int(setup.flow_ids[k]))
            f = table.flow(int(setup.flow_ids[k]))
            nat.append((f.nat_addr, f.nat_port))
        setup.fill([bytes(IP(src=A4, dst=str(a)) / TCP(sport=P4, dport=p, flags="SA")) for a, p in nat])
        impl.packet.parse_batch(setup)
        table.process_batch(setup, 0.0)
    assert len(table) == N_FLOWS
    rng = random.Random(3)
    packets = []
    for k in range(N_PACKETS):
        f = table.flow(rng.randrange(N_FLOWS))
        if k % 2:
            pkt = IP(src=str(f.src), dst=str(f.dst)) / TCP(sport=f.sport, dport=f.dport, flags="PA")
        else:
            pkt = IP(src=A4, dst=str(f.nat_addr)) / TCP(sport=P4, dport=f.nat_port, flags="A")
        packets.append(bytes(pkt / Raw(bytes(1400 if k % 2 else 0))))
    batch = PacketBatch(slots=N_PACKETS, max_packet=1600)
    batch.fill(packets)
    pristine = batch.data.copy()

    def restore():
        np.copyto(batch.data, pristine)

    def work():
        impl.packet.parse_batch(batch)
        table.process_batch(batch, 1.0)

    benchmark.extra_info["packets"] = N_PACKETS
    benchmark.pedantic(work, setup=restore, rounds=300 if impl.kind == "cython" else 20, iterations=1, warmup_rounds=2)
    assert (batch.verdicts[:N_PACKETS] == 1).all()
