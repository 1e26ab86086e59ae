"""Count the packets on one device that go to given prefixes, or to or from port 53 (tcpdump stand-in: AF_PACKET).

    python capture.py DEV SECONDS [CIDR ...]

Prints "capturing" once the socket is bound, then runs until SIGTERM/SIGINT or SECONDS, and
prints one JSON line: {"to_prefixes": N, "port53": N, "packets": N, "seen": [up to 20 "src > dst" strings]}.
to_prefixes counts packets leaving DEV (PACKET_OUTGOING) whose destination is in a CIDR;
port53 counts TCP or UDP packets in either direction with source or destination port 53.
"""

import ipaddress
import json
import signal
import socket
import sys
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def parse(data: bytes):
    """(src, dst, proto, sport, dport) of an IPv4 or IPv6 packet (ports None unless TCP/UDP); None if unreadable."""
    if len(data) < 20:
        return None
    version = data[0] >> 4
    if version == 4:
        ihl = (data[0] & 15) * 4
        proto, src, dst, l4 = data[9], data[12:16], data[16:20], data[ihl:]
    elif version == 6 and len(data) >= 40:
        proto, src, dst, l4 = data[6], data[8:24], data[24:40], data[40:]
    else:
        return None
    sport = dport = None
    if proto in (6, 17) and len(l4) >= 4:
        sport, dport = int.from_bytes(l4[0:2], "big"), int.from_bytes(l4[2:4], "big")
    return ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, sport, dport


def main():
    dev, seconds, nets = sys.argv[1], float(sys.argv[2]), [ipaddress.ip_network(n) for n in sys.argv[3:]]
    stop = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *a: stop.append(1))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind((dev, 0))
    sock.settimeout(0.1)
    counts = {"to_prefixes": 0, "port53": 0, "packets": 0, "seen": []}
    print("capturing", flush=True)
    end = time.monotonic() + seconds
    while not stop and time.monotonic() < end:
        try:
            data, addr = sock.recvfrom(65535)
        except (TimeoutError, socket.timeout, InterruptedError):
            continue
        p = parse(data)
        if p is None:
            continue
        src, dst, proto, sport, dport = p
        counts["packets"] += 1
        hit = False
        if addr[2] == PACKET_OUTGOING and any(dst.version == n.version and dst in n for n in nets):
            counts["to_prefixes"] += 1
            hit = True
        if 53 in (sport, dport):
            counts["port53"] += 1
            hit = True
        if hit and len(counts["seen"]) < 20:
            counts["seen"].append(f"{src}:{sport} > {dst}:{dport} proto {proto}")
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
