"""SystemStack over a stand-in device: echo requests in, replies out through the same fd, the rest counted."""

import select
import socket
import sys

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.packet import Raw

from ztun.stack.system import SystemStack

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


class _Holding:
    """A handler that holds every TCP SYN until the test decides."""

    icmp_echo = "reply"

    def __init__(self):
        self.decide = None

    def prepare(self, flow):
        from ztun.stack.handler import Verdict

        self.decide = flow.decide
        return Verdict.DEFER

    def handle_tcp(self, sock, flow):
        sock.close()


@pytest.mark.parametrize("vnet", [False, True], ids=["plain", "virtio header"])
@pytest.mark.parametrize("pump", [False, True], ids=["loop", "pump"])
def test_a_released_syn_goes_before_its_flows_next_packets(vnet, pump):
    """The SYN released after the outbound connected is written before the NAT lets the flow's
    other packets through: one read after it (by the loop, or at once by the TUN pump's thread)
    must not overtake it to the kernel."""
    from scapy.layers.inet import TCP

    from ztun._fast import tunio, tunpump
    from ztun.tun.device_linux import LinuxTunDevice
    from ztun.stack.handler import Verdict
    from ztun.loop import Loop
    from ztun.tun.options import TunOptions

    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.setblocking(False)
    hdr = bytes(10) if vnet else b""
    dev = LinuxTunDevice(a.detach(), "zt-fake", 1500, flags=tunio.CONSTANTS["IFF_VNET_HDR"] if vnet else 0)
    loop, handler = Loop(), _Holding()
    if pump and tunpump is None:
        pytest.skip("no TUN pump in this build")
    stack = SystemStack(dev, TunOptions(name="zt-fake", inet4="198.18.0.1/28", inet6=None), pump=pump)

    def read():
        if not pump:
            stack.on_readable()
        else:  # the pump hands the SYN's batch over; nothing else wakes the loop
            for _ in range(50):
                loop.run_once(0.1)
                if handler.decide is not None:
                    return

    try:
        stack.start(handler, loop)
        assert (stack.pump is not None) == pump
        client = dict(src="198.19.5.5", dst="198.19.0.7")
        peer.send(hdr + bytes(IP(**client) / TCP(sport=40000, dport=80, flags="S", seq=100)))
        read()
        assert drain(peer) == [] and handler.decide is not None  # held
        handler.decide(Verdict.ALLOW)
        peer.send(hdr + bytes(IP(**client) / TCP(sport=40000, dport=80, flags="R", seq=101)))
        out = []
        if pump:  # the pump writes the reset at once; both are there when the second is
            while len(out) < 2 and select.select([peer], [], [], 5)[0]:
                out += drain(peer)
        else:
            stack.on_readable()
            out = drain(peer)
        assert [len(p) > len(hdr) for p in out] == [True, True], out
        flags = [IP(p[len(hdr):])[TCP].flags for p in out]
        assert [str(f) for f in flags] == ["S", "R"], flags
        syn = IP(out[0][len(hdr):])
        assert (syn.src, syn.dst, syn[TCP].seq) == ("198.18.0.2", "198.18.0.1", 100)  # B:n -> A:P
        loop.run_once(0)  # the queue's own flush finds nothing more
        assert drain(peer) == [] and stack.stats()["tcp_allowed"] == 1
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()


class _AllowThenRefuse:
    """Allows the first TCP flow, refuses every later one."""

    icmp_echo = "reply"

    def __init__(self):
        self.flows = []

    def prepare(self, flow):
        from ztun.stack.handler import Verdict

        self.flows.append(flow)
        return Verdict.ALLOW if len(self.flows) == 1 else Verdict.REJECT

    def handle_tcp(self, sock, flow):
        sock.close()


def test_a_flow_whose_nat_slot_went_to_another_is_forgotten():
    """The client resets an allowed flow before its connection was accepted and sends a new SYN
    from the same port: the NAT gives the new flow the freed slot at once. The stack must not keep
    the first flow for that slot (an accept for the slot would be handed the wrong flow)."""
    from scapy.layers.inet import TCP

    from ztun.loop import Loop
    from ztun.tun.device_linux import LinuxTunDevice
    from ztun.tun.options import TunOptions

    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.setblocking(False)
    dev = LinuxTunDevice(a.detach(), "zt-fake", 1500)
    loop, handler = Loop(), _AllowThenRefuse()
    stack = SystemStack(dev, TunOptions(name="zt-fake", inet4="198.18.0.1/28", inet6=None), pump=False)
    try:
        stack.start(handler, loop)
        client = dict(src="198.19.5.5", dst="198.19.0.7")
        peer.send(bytes(IP(**client) / TCP(sport=40000, dport=80, flags="S", seq=100)))
        stack.on_readable()
        assert len(stack._tcp) == 1  # allowed, waiting for the kernel's accept
        peer.send(bytes(IP(**client) / TCP(sport=40000, dport=80, flags="R", seq=101)))
        peer.send(bytes(IP(**client) / TCP(sport=40000, dport=80, flags="S", seq=500)))
        stack.on_readable()
        assert len(handler.flows) == 2, "the second SYN must be a new flow"
        s = stack.stats()
        assert s["tcp_allowed"] == 1 and s["tcp_rejected"] == 1, s
        assert stack._tcp == {}, "the first flow is still held for a slot that went to another"
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()


def test_the_kernels_own_link_local_icmpv6_is_counted_not_a_drop_worth_a_warning():
    """The kernel sends a router solicitation (and MLD reports) on the TUN as it comes up: chatter, not a client's drop."""
    from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6MLReport2, ICMPv6ND_RS, IPv6

    from ztun.appliance.status import split_stats
    from ztun.loop import Loop
    from ztun.tun.device_linux import LinuxTunDevice
    from ztun.tun.options import TunOptions

    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.setblocking(False)
    dev = LinuxTunDevice(a.detach(), "zt-fake", 1500)
    loop, handler = Loop(), _AllowThenRefuse()
    stack = SystemStack(dev, TunOptions(name="zt-fake", inet4=None, inet6="fd00:18::1/124"), pump=False)
    try:
        stack.start(handler, loop)
        peer.send(bytes(IPv6(src="fe80::1", dst="ff02::2", hlim=255) / ICMPv6ND_RS()))
        peer.send(bytes(IPv6(src="fe80::1", dst="ff02::16", hlim=1) / ICMPv6MLReport2()))
        peer.send(bytes(IPv6(src="fd00:19::5", dst="fd00:18::7") / ICMPv6DestUnreach()))  # a client's: a drop
        stack.on_readable()
        stats = stack.stats()
        assert stats["icmp6_link_local"] == 2 and stats["icmp_dropped"] == 1 and stats["dropped"] == 3, stats
        _, _, drops = split_stats(stats)
        assert drops.get("icmp_dropped") == 1 and "icmp6_link_local" not in drops
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()


def _hung_up(kind):
    """An fd that reports a hang-up with nothing to read, for ever, as a TUN whose interface went away does."""
    import os

    if kind == "pipe":
        r, w = os.pipe()
        os.close(w)  # poll(): POLLHUP; read(): 0
        return r
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    b.close()  # poll(): POLLIN | POLLHUP; read(): b""
    return a.detach()


@pytest.mark.parametrize("kind", ["pipe", "seqpacket"])
@pytest.mark.parametrize("flows", [False, True], ids=["echo only", "flows"])
def test_a_device_that_hangs_up_is_a_failure_not_a_busy_loop(kind, flows, monkeypatch, caplog):
    """The loop reads the device (no TUN pump) and it reports a hang-up with nothing to read: the
    loop would be woken for it at once on every iteration, at 100% CPU. The stack stops reading it
    and reports the failure (ENODEV, counted, logged once, on_failure once), as the pump does."""
    import errno
    import logging

    from ztun.loop import Loop
    from ztun.tun.device_linux import LinuxTunDevice
    from ztun.tun.options import TunOptions

    monkeypatch.setenv("ZTUN_TUN_PUMP", "off")
    dev = LinuxTunDevice(_hung_up(kind), "zt-fake", 1500)
    reads = []
    read_batch = dev.read_batch
    monkeypatch.setattr(dev, "read_batch", lambda batch: reads.append(1) or read_batch(batch))
    loop = Loop()
    options = TunOptions(name="zt-fake", inet4="198.18.0.1/28", inet6=None) if flows else None
    stack = SystemStack(dev, options)
    failures = []
    caplog.set_level(logging.ERROR, logger="ztun.stack")
    try:
        stack.start(_AllowThenRefuse() if flows else None, loop, on_failure=failures.append)
        assert stack.pump is None
        for _ in range(20):
            loop.run_once(0)
            if failures:
                break
        assert len(failures) == 1, f"{len(reads)} reads found nothing and the stack goes on reading"
        assert failures[0] is stack.failure and stack.failure.errno == errno.ENODEV
        before = len(reads)
        for _ in range(5):
            loop.run_once(0)
        assert len(reads) == before, "the stack reads the device after its failure"
        assert not loop.remove_reader(dev.fileno()), "the loop still waits on the device"
        assert stack.stats()["tun_failed"] == 1 and len(failures) == 1
        assert len([r for r in caplog.records if r.name == "ztun.stack"]) == 1
    finally:
        stack.stop()
        loop.close()
        dev.close()


def test_a_device_with_nothing_to_read_but_no_hang_up_is_no_failure(stack_and_peer):
    """A wake-up that finds nothing (another reader was first) is not a failure."""
    stack, peer = stack_and_peer
    assert stack.on_readable() == 0 and stack.failure is None
