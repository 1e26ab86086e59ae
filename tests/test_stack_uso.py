"""SystemStack with UDP segmentation offload, over a stand-in vnet device: USO super-datagrams
are split for the UDP NAT, malformed ones dropped and counted, replies coalesced (GRO on write)."""

import socket
import struct
import sys

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw
from scapy.utils import checksum as scapy_checksum

from ztun._fast import NatTable, PacketBatch, gso, parse_batch
from ztun._fast import defs as d
from ztun._fast.nat_config import NatConfig
from ztun.stack.handler import Verdict
from ztun.loop import Loop
from ztun.stack.outq import OutQueue
from ztun.stack.system import SystemStack
from ztun.stack.udp import UdpNat

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stand-in device is LinuxTunDevice")


class EchoHandler:
    """Echoes every datagram back to its client, from the address it was sent to."""

    icmp_echo = "reply"

    def __init__(self):
        self.got = []

    def prepare(self, flow):
        return Verdict.ALLOW

    def handle_udp(self, session):
        def datagram(payload, dst):
            self.got.append(payload)
            session.send(payload, dst)

        session.on_datagram = datagram


@pytest.fixture
def rig():
    from ztun._fast.tunio import CONSTANTS
    from ztun.tun.device_linux import USO, LinuxTunDevice

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    dev = LinuxTunDevice(a.detach(), "zt-fake", 1500, flags=CONSTANTS["IFF_VNET_HDR"])
    dev.offload = USO
    loop, handler = Loop(), EchoHandler()
    stack = SystemStack(dev, slots=8)
    # what start() does for flows, without the TCP listeners this test has no use for
    stack.loop, stack.handler = loop, handler
    stack.nat = NatTable(NatConfig.from_prefixes("198.18.0.1/30", "fd00:18::1/126", port4=1, port6=1))
    stack.out = OutQueue(loop, dev, max_packet=d.MAX_PACKET + 40, gro=True)
    stack.udp = UdpNat(loop, stack.out, handler)
    dev.set_nonblocking(True)
    stack._running = True
    yield stack, b, handler, loop
    stack.stop()
    loop.close()
    dev.close()
    b.close()


def super_datagram(version, sizes):
    """A UDP_SEGMENT send as the TUN delivers it: one packet, GSO_UDP_L4, partial checksum."""
    ip = IP(src="198.18.0.1", dst="198.19.0.7", id=40, flags="DF") if version == 4 else IPv6(src="fd00:18::1", dst="fd00:19::7")
    payloads = [bytes([k]) * n for k, n in enumerate(sizes)]
    raw = bytearray(bytes(ip / UDP(sport=5000, dport=53) / Raw(b"".join(payloads))))
    l4 = 20 if version == 4 else 40
    src, dst = (raw[12:16], raw[16:20]) if version == 4 else (raw[8:24], raw[24:40])
    tail = struct.pack("!BBH", 0, 17, len(raw) - l4) if version == 4 else struct.pack("!I3xB", len(raw) - l4, 17)
    raw[l4 + 6 : l4 + 8] = struct.pack("!H", ~scapy_checksum(bytes(src + dst + tail)) & 0xFFFF)
    hdr = struct.pack("<BBHHHH", d.VNET_F_NEEDS_CSUM, d.GSO_UDP_L4, l4 + 8, sizes[0], l4, 6)
    return hdr + bytes(raw), payloads


def drain(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(70000))
        except BlockingIOError:
            return out


@pytest.mark.parametrize("version", [4, 6])
def test_super_datagram_split_and_replies_coalesced(rig, version):
    stack, peer, handler, loop = rig
    packet, payloads = super_datagram(version, [1000] * 6 + [321])
    peer.send(packet)
    assert stack.on_readable() == 1
    assert handler.got == payloads  # in order, one datagram each
    loop.run_once(0)  # the output queue flushes at the end of the iteration
    replies = drain(peer)
    assert len(replies) == 1  # seven echoes, one USO packet
    batch = PacketBatch(slots=1, vnet_hdr=True)
    batch.set_packet(0, replies[0][10:])
    batch.data[0, 6:16] = list(replies[0][:10])
    batch.count = 1
    parse_batch(batch)
    assert (batch.meta["gso_type"][0], batch.meta["gso_size"][0]) == (d.GSO_UDP_L4, 1000)
    out = PacketBatch(slots=16, max_packet=1500)
    n = gso.gso_split(batch, 0, out)
    segs = [(IP if version == 4 else IPv6)(out.packet(k).tobytes()) for k in range(n)]
    assert [bytes(s[UDP].payload) for s in segs] == payloads
    assert all((s[UDP].sport, s[UDP].dport) == (53, 5000) for s in segs)
    s = stack.stats()
    assert s["udp_gso_split"] == 1 and s["udp_datagrams"] == 7 and s["udp_gro_coalesced"] == 6
    assert s["originated_written"] == 7 and s["dropped"] == 0


def test_malformed_super_datagrams_dropped_and_counted(rig):
    stack, peer, handler, _ = rig
    good, _ = super_datagram(4, [100] * 3)
    too_many, _ = super_datagram(4, [1] * 200)  # 200 segments: more than Linux ever sends
    bad_hdr = bytearray(good)
    bad_hdr[2:4] = struct.pack("<H", 5000)  # hdr_len beyond the packet
    zero = bytearray(good)
    zero[4:6] = b"\0\0"  # gso_size 0
    for p in (too_many, bytes(bad_hdr), bytes(zero), good):
        peer.send(p)
    assert stack.on_readable() == 4
    s = stack.stats()
    assert s["drop_bad_vnet_hdr"] == 2 and s["udp_dropped_gso"] == 1 and s["dropped"] == 3, s
    assert s["udp_datagrams"] == 3 and len(handler.got) == 3 and s["udp_gso_split"] == 1
