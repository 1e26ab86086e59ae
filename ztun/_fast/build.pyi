from collections.abc import Buffer

from .batch import PacketBatch

HOP_LIMIT: int
ICMP4_QUOTE: int
ICMP6_QUOTE: int

def udp_packet(out: PacketBatch, slot: int, src: Buffer, sport: int, dst: Buffer, dport: int, payload: Buffer) -> int: ...
def tcp_reset(batch: PacketBatch, i: int, out: PacketBatch, slot: int) -> int: ...
def icmp_unreachable(batch: PacketBatch, i: int, out: PacketBatch, slot: int, code: int) -> int: ...
