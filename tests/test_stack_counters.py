"""The stack's counters only go up and its gauges tell the present, whatever the traffic and the handler's verdicts.

Random traffic (TCP SYNs and segments of known and unknown flows, UDP to many ports, ICMP echo,
garbage) goes through a SystemStack over a socketpair standing in for the TUN, with a handler
that allows, refuses, drops or holds each flow and decides held ones later. Between any two
snapshots of stats(), no counter may go down, and the gauges equal the live state.
"""

import socket
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the stand-in TUN is the Linux device over a socketpair")

CLIENT, SERVER = "198.19.5.5", "198.19.0.7"
VERDICTS = ("allow", "reject", "drop", "defer")


class RandomHandler:
    """Answers each new flow with the next verdict of a drawn list; held flows are decided at each step."""

    icmp_echo = "reply"

    def __init__(self, verdicts):
        self.verdicts, self.n = verdicts, 0
        self.held, self.sessions = [], []

    def _next(self):
        from ztun.stack.handler import Verdict

        name = self.verdicts[self.n % len(self.verdicts)]
        self.n += 1
        return {"allow": Verdict.ALLOW, "reject": Verdict.REJECT, "drop": Verdict.DROP, "defer": Verdict.DEFER}[name]

    def prepare(self, flow):
        from ztun.stack.handler import Verdict

        verdict = self._next()
        if flow.proto != 6 and verdict == Verdict.DEFER:
            verdict = Verdict.ALLOW
        if verdict == Verdict.DEFER:
            self.held.append(flow)
        return verdict

    def decide_held(self):
        from ztun.stack.handler import Verdict

        held, self.held = self.held, []
        for i, flow in enumerate(held):
            flow.decide(Verdict.ALLOW if i % 2 else Verdict.REJECT)

    def handle_tcp(self, sock, flow):
        sock.close()

    def handle_udp(self, session):
        self.sessions.append(session)
        session.on_datagram = lambda payload, destination: None

    def handle_icmp(self, flow):
        raise AssertionError("not asked with icmp_echo = reply")


def packet(kind, port):
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.packet import Raw

    ip = IP(src=CLIENT, dst=SERVER)
    if kind == "syn":
        return bytes(ip / TCP(sport=port, dport=80, flags="S", seq=1))
    if kind in ("ack", "fin", "rst"):
        return bytes(ip / TCP(sport=port, dport=80, flags={"ack": "A", "fin": "FA", "rst": "R"}[kind], seq=2, ack=1))
    if kind == "udp":
        return bytes(ip / UDP(sport=port, dport=53 + port % 7) / Raw(b"q"))
    if kind == "echo":
        return bytes(ip / ICMP(type=8, id=port, seq=1))
    return bytes([0x45, 0]) + bytes(port % 30)  # garbage: a truncated IPv4 header


STEP = st.lists(st.tuples(st.sampled_from(("syn", "ack", "fin", "rst", "udp", "echo", "junk")),
                          st.integers(40000, 40011)), min_size=1, max_size=12)


def check(before: dict, after: dict, stack) -> None:
    from ztun.appliance.status import GAUGE_STATS

    down = {k: (before[k], after.get(k, 0)) for k in before if k not in GAUGE_STATS and after.get(k, 0) < before[k]}
    assert not down, f"counters went down: {down}"
    assert after["tcp_flows"] == len(stack.nat)
    assert after["udp_sessions"] == len(stack.udp.sessions) == sum(not s.closed for s in stack.handler.sessions)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(verdicts=st.lists(st.sampled_from(VERDICTS), min_size=1, max_size=6), steps=st.lists(STEP, min_size=1, max_size=8),
       end_sessions=st.booleans())
def test_counters_only_go_up_and_gauges_tell_the_present(verdicts, steps, end_sessions):
    from ztun.loop import Loop
    from ztun.stack.system import SystemStack
    from ztun.tun.device_linux import LinuxTunDevice
    from ztun.tun.options import TunOptions

    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.setblocking(False)
    dev = LinuxTunDevice(a.detach(), "zt-fake", 1500)
    loop, handler = Loop(), RandomHandler(verdicts)
    stack = SystemStack(dev, TunOptions(name="zt-fake", inet4="198.18.0.1/28", inet6=None), slots=8, pump=False)
    try:
        stack.start(handler, loop)
        before = stack.stats()
        for step in steps:
            for kind, port in step:
                peer.send(packet(kind, port))
            while stack.on_readable():
                pass
            after = stack.stats()
            check(before, after, stack)
            handler.decide_held()
            loop.run_once(0)
            if end_sessions and handler.sessions:
                handler.sessions[0].close()
            while True:  # what the stack wrote back: the test reads it so the socketpair never fills
                try:
                    peer.recv(65536)
                except BlockingIOError:
                    break
            before, after = after, stack.stats()
            check(before, after, stack)
            before = after
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()
