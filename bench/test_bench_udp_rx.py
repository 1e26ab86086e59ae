"""Micro-benchmark of the UDP table's receive with UDP_GRO: 40 UDP GSO sends of 20 datagrams of
1400 bytes over loopback (sent in the untimed setup), taken by UdpTable.receive into a 64-slot
batch with virtio headers until none is left. Modes: uso (each coalesced message one USO
super-packet), split (cut into one packet a datagram, as without USO or for SOCKS5), both with
ZTUN_UDP_RX_GRO=1; off (the default: the kernel cuts them, one message a datagram); and plain
(datagrams sent one by one, UDP_GRO on, nothing to coalesce). Compiled only. `python -m pytest bench --benchmark-only -k udp_rx`.
"""

import ipaddress
import socket
import struct

import pytest

from ztun._fast import PacketBatch
from ztun._fast import defs as d

try:
    from ztun._fast import udptable
except ImportError:
    udptable = None

SEG, PER_SEND, SENDS = 1400, 20, 40


@pytest.mark.skipif(udptable is None or udptable.__name__.endswith("_py"), reason="the compiled UDP table is not built")
@pytest.mark.parametrize("mode", ["uso", "split", "off", "plain"])
def test_udp_rx(benchmark, monkeypatch, mode):
    if mode == "off":
        monkeypatch.delenv("ZTUN_UDP_RX_GRO", raising=False)
    else:
        monkeypatch.setenv("ZTUN_UDP_RX_GRO", "1")
    benchmark.group = "udp-rx-800x1400"
    table = udptable.UdpTable(None, lambda: None)
    table.uso = mode == "uso"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sid = table.open(4, ipaddress.ip_address("198.18.0.5").packed, 5000, 1.0)
        table.attach(sid, sock, udptable.DIRECT)
        out = PacketBatch(64, max_packet=d.MAX_PACKET + 40, vnet_hdr=True)
        burst = b"x" * (SEG * PER_SEND)
        gso = [(socket.SOL_UDP, 103, struct.pack("=H", SEG))]  # UDP_SEGMENT
        to = sock.getsockname()
        rounds = []

        def send():
            rounds.append(1)
            for _ in range(SENDS):
                if mode == "plain":
                    for _ in range(PER_SEND):
                        peer.sendto(burst[:SEG], to)
                else:
                    peer.sendmsg([burst], gso, 0, to)
            return (), {}

        def take():
            got = 0
            while True:
                n = table.receive(out, 0, 1.0)
                if not n and not table.pending:
                    return got
                got += n

        benchmark.pedantic(take, setup=send, rounds=50)
        assert table.stats()["fast_received"] == len(rounds) * SENDS * PER_SEND  # every datagram, none lost
    finally:
        table.close()
        sock.close()
        peer.close()
