"""SystemStack over a stand-in device: echo requests in, replies out through the same fd, the rest counted."""

import socket
import sys

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from ztun.tun.stack import TunStack
from ztun.tun.stack_system import SystemStack

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stand-in device is LinuxTunDevice")


@pytest.fixture
def stack_and_peer():
    from ztun.tun.device_linux import LinuxTunDevice

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    dev = LinuxTunDevice(a.detach(), "zt-fake", 1500)
    stack = SystemStack(dev, slots=8, max_batches=2)
    stack.start()
    yield stack, b
    stack.stop()
    dev.close()
    b.close()


def drain(sock):
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


def test_satisfies_the_protocol():
    assert issubclass(SystemStack, TunStack)


def test_echo_answered_rest_counted(stack_and_peer):
    stack, peer = stack_and_peer
    req4 = IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=8, id=7, seq=1) / Raw(b"ping")
    req6 = IPv6(src="fd00:18::1", dst="fd00:19::7") / ICMPv6EchoRequest(id=7, seq=2, data=b"ping")
    other = [IP(src="198.18.0.1", dst="198.19.0.7") / UDP(dport=53) / Raw(b"q"), IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=0)]
    for p in [req4, other[0], req6, other[1]]:
        peer.send(bytes(p))
    peer.send(b"\x45\x00")
    assert stack.on_readable() == 5
    replies = drain(peer)
    assert replies == [
        bytes(IP(src="198.19.0.7", dst="198.18.0.1", ttl=64) / ICMP(type=0, id=7, seq=1) / Raw(b"ping")),
        bytes(IPv6(src="fd00:19::7", dst="fd00:18::1", hlim=64) / ICMPv6EchoReply(id=7, seq=2, data=b"ping")),
    ]
    s = stack.stats()
    assert s["packets_read"] == 5 and s["echo_answered"] == 2 and s["replies_written"] == 2
    assert s["dropped_udp"] == 1 and s["dropped_icmp_other"] == 1 and s["dropped_malformed"] == 1
    assert s["malformed_truncated"] == 1
    assert s["dropped"] == 3 and s["write_failed"] == 0


def test_work_per_event_is_bounded(stack_and_peer):
    stack, peer = stack_and_peer
    req = bytes(IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=8))
    for _ in range(40):
        peer.send(req)
    assert stack.on_readable() == 16  # max_batches=2 batches of 8 slots
    assert stack.on_readable() == 16
    assert stack.on_readable() == 8
    assert stack.on_readable() == 0
    assert len(drain(peer)) == 40


def test_write_failures_counted(stack_and_peer):
    stack, peer = stack_and_peer
    for _ in range(3):
        peer.send(bytes(IP(src="198.18.0.1", dst="198.19.0.7") / ICMP(type=8)))
    peer.shutdown(socket.SHUT_RD)  # replies cannot be delivered any more
    assert stack.on_readable() == 3
    s = stack.stats()
    assert s["echo_answered"] == 3 and s["replies_written"] == 0 and s["write_failed"] == 3
    assert s["dropped"] == 3
