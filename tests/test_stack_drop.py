"""A TCP SYN the handler drops (a limit: issue #17) is forgotten, so that the client's retransmission asks again."""

import socket
import sys

import pytest
from scapy.layers.inet import IP, TCP

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stand-in device is LinuxTunDevice")


class _DropThenAllow:
    icmp_echo = "reply"

    def __init__(self, drops):
        self.drops, self.flows = drops, []

    def prepare(self, flow):
        from ztun.stack.handler import Verdict

        self.flows.append(flow)
        return Verdict.DROP if len(self.flows) <= self.drops else Verdict.ALLOW

    def handle_tcp(self, sock, flow):
        sock.close()


def test_a_dropped_syn_leaves_no_flow_and_its_retransmission_is_asked_again():
    from ztun.loop import Loop
    from ztun.stack.system import SystemStack
    from ztun.tun.device_linux import LinuxTunDevice
    from ztun.tun.options import TunOptions

    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.setblocking(False)
    dev = LinuxTunDevice(a.detach(), "zt-fake", 1500)
    loop, handler = Loop(), _DropThenAllow(drops=2)
    stack = SystemStack(dev, TunOptions(name="zt-fake", inet4="198.18.0.1/30", inet6=None), pump=False)
    syn = bytes(IP(src="198.19.5.5", dst="198.19.0.7") / TCP(sport=40000, dport=80, flags="S", seq=100))
    try:
        stack.start(handler, loop)
        for _ in range(2):  # the first SYN and its retransmission: both dropped, each asked about
            peer.send(syn)
            stack.on_readable()
            with pytest.raises(BlockingIOError):
                peer.recv(65536)  # nothing reaches the kernel
            assert len(stack.nat) == 0
        peer.send(syn)  # the next retransmission, once the limit has room: allowed, written to the kernel
        stack.on_readable()
        out = IP(peer.recv(65536))
        assert (out.dst, out[TCP].flags, out[TCP].seq) == ("198.18.0.1", "S", 100)
        assert len(handler.flows) == 3
        s = stack.stats()
        assert s["tcp_dropped"] == 2 and s["tcp_allowed"] == 1 and s["dropped"] >= 2, s
        assert stack.nat.free_ports() == 64512 - 1  # a dropped flow's port is not held
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()
