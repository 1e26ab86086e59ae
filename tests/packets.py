"""Seeded random packets built with scapy, the independent oracle of the packet-core tests."""

import random

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_RR, fragment
from scapy.layers.inet6 import (
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.packet import Raw


def v4_addr(rng):
    return f"198.{rng.choice((18, 19))}.{rng.randrange(256)}.{rng.randrange(1, 255)}"


def v6_addr(rng):
    return "fd00:" + ":".join(f"{rng.randrange(65536):x}" for _ in range(7))


def transport(rng, version):
    payload = Raw(bytes(rng.getrandbits(8) for _ in range(rng.choice((0, 1, 7, 100, 1200)))))
    kind = rng.choice(("tcp", "udp", "icmp"))
    if kind == "tcp":
        opts = rng.choice(([], [("MSS", 1460)], [("MSS", 1400), ("SAckOK", b""), ("Timestamp", (1, 2)), ("NOP", None), ("WScale", 7)]))
        return TCP(
            sport=rng.randrange(1, 65536), dport=rng.randrange(1, 65536), seq=rng.getrandbits(32),
            ack=rng.getrandbits(32), flags=rng.getrandbits(8), window=rng.randrange(65536), options=opts,
        ) / payload
    if kind == "udp":
        return UDP(sport=rng.randrange(65536), dport=rng.randrange(65536)) / payload
    if version == 4:
        return ICMP(type=rng.choice((0, 8, 3, 11)), code=rng.randrange(4), id=rng.randrange(65536)) / payload
    return rng.choice((ICMPv6EchoRequest, ICMPv6EchoReply))(id=rng.randrange(65536), seq=rng.randrange(65536)) / payload


def random_packet(rng: random.Random):
    """One valid IPv4 or IPv6 packet (scapy object) with options / extension headers now and then."""
    if rng.random() < 0.5:
        opts = rng.choice(([], [IPOption_NOP()] * 4, [IPOption_RR(routers=["198.18.0.9"])]))
        return IP(src=v4_addr(rng), dst=v4_addr(rng), ttl=rng.randrange(1, 256), id=rng.randrange(65536), options=opts) / transport(rng, 4)
    ip = IPv6(src=v6_addr(rng), dst=v6_addr(rng), hlim=rng.randrange(256))
    for ext in rng.sample([IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, IPv6ExtHdrFragment], rng.randrange(3)):
        ip = ip / (ext(id=rng.getrandbits(32)) if ext is IPv6ExtHdrFragment else ext())
    return ip / transport(rng, 6)


def fragments(rng: random.Random):
    """IPv4 fragments of one large UDP/TCP packet (first and later fragments)."""
    big = IP(src=v4_addr(rng), dst=v4_addr(rng), id=rng.randrange(65536)) / UDP(sport=5, dport=53) / Raw(bytes(3000))
    return fragment(big, fragsize=1000)
