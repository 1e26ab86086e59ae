"""The user-space UDP NAT and the output queue, with a stand-in device that records what is written."""

import time

from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.packet import Raw

from ztun._fast import PacketBatch, parse_batch
from ztun.stack.handler import Verdict
from ztun.loop import Loop
from ztun.stack.outq import OutQueue
from ztun.stack.udp import UdpNat


class RecordingDevice:
    name = "zt-test"
    vnet_hdr = False

    def __init__(self):
        self.packets = []

    def write_batch(self, batch, n, *, only_verdict=None):
        self.packets += [batch.packet(i).tobytes() for i in range(n)]
        return n

    def failed_slots(self):
        return []


class Handler:
    icmp_echo = "reply"

    def __init__(self, verdict=Verdict.ALLOW):
        self.verdict = verdict
        self.flows, self.sessions, self.got, self.closed = [], [], [], []

    def prepare(self, flow):
        self.flows.append(flow)
        return self.verdict

    def handle_udp(self, session):
        self.sessions.append(session)
        session.on_datagram = lambda payload, dst: self.got.append((session.source, dst, payload))
        session.on_close = lambda s, reason: self.closed.append(reason)


def feed(nat, packets):
    batch = PacketBatch(slots=len(packets), max_packet=2000)
    batch.fill([bytes(p) for p in packets])
    parse_batch(batch)
    for i in range(len(packets)):
        nat.on_packet(batch, i, time.monotonic())


def rig(verdict=Verdict.ALLOW, **kw):
    loop = Loop()
    dev = RecordingDevice()
    out = OutQueue(loop, dev)
    handler = Handler(verdict)
    return loop, dev, out, handler, UdpNat(loop, out, handler, **kw)


def test_sessions_are_per_client_endpoint_and_replies_are_packets():
    loop, dev, out, handler, nat = rig()
    feed(nat, [
        IP(src="198.18.0.5", dst="198.19.0.1") / UDP(sport=5000, dport=53) / Raw(b"q1"),
        IP(src="198.18.0.5", dst="198.19.0.2") / UDP(sport=5000, dport=123) / Raw(b"q2"),
        IPv6(src="fd00::5", dst="fd00::1") / UDP(sport=5000, dport=53) / Raw(b"q3"),
    ])
    assert len(handler.sessions) == 2 and len(handler.flows) == 2  # endpoint-independent: one session for 198.18.0.5:5000
    assert handler.got == [(("198.18.0.5", 5000), ("198.19.0.1", 53), b"q1"), (("198.18.0.5", 5000), ("198.19.0.2", 123), b"q2"), (("fd00::5", 5000), ("fd00::1", 53), b"q3")]
    s4, s6 = handler.sessions
    assert s4.send(b"answer", ("198.19.0.2", 123))
    assert s6.send(b"answer6", ("fd00::1", 53))
    assert not s4.send(b"x", ("fd00::1", 53))  # wrong family
    loop.run_once(0)
    want4 = IP(src="198.19.0.2", dst="198.18.0.5", flags="DF", id=0, ttl=64) / UDP(sport=123, dport=5000) / Raw(b"answer")
    want6 = IPv6(src="fd00::1", dst="fd00::5", hlim=64) / UDP(sport=53, dport=5000) / Raw(b"answer6")
    assert dev.packets == [bytes(want4), bytes(want6)]
    assert nat.counters["reply_wrong_family"] == 1
    loop.close()


def test_idle_sessions_expire():
    loop, dev, out, handler, nat = rig(timeout=0.2)
    feed(nat, [IP(src="198.18.0.5", dst="198.19.0.1") / UDP(sport=1, dport=2) / Raw(b"x")])
    end = time.monotonic() + 5
    while nat.sessions and time.monotonic() < end:
        loop.run_once(0.05)
    assert not nat.sessions and handler.closed == ["idle"]
    feed(nat, [IP(src="198.18.0.5", dst="198.19.0.1") / UDP(sport=1, dport=2) / Raw(b"x")])
    assert len(handler.sessions) == 2  # a new session after expiry
    nat.close()
    assert handler.closed == ["idle", "closed"]
    loop.close()


def test_reject_answers_unreachable_and_drop_is_remembered():
    loop, dev, out, handler, nat = rig(Verdict.REJECT)
    pkt = IP(src="198.18.0.5", dst="198.19.0.1") / UDP(sport=1, dport=2) / Raw(b"x")
    feed(nat, [pkt])
    loop.run_once(0)
    (reply,) = dev.packets
    assert IP(reply)[ICMP].type == 3 and IP(reply)[ICMP].code == 13
    handler.verdict = Verdict.DROP
    feed(nat, [IP(src="198.18.0.6", dst="198.19.0.1") / UDP(sport=1, dport=2)] * 3)
    assert len(handler.flows) == 2 and nat.counters["dropped_blocked"] == 3
    loop.close()


def test_a_datagram_the_session_refuses_is_answered_unreachable():
    loop, dev, out, handler, nat = rig()
    feed(nat, [IP(src="198.18.0.5", dst="198.19.0.1") / UDP(sport=1, dport=2) / Raw(b"ok")])
    handler.sessions[0].on_datagram = lambda payload, dst: Verdict.REJECT if dst[0] == "198.19.2.1" else None
    feed(nat, [IP(src="198.18.0.5", dst="198.19.2.1") / UDP(sport=1, dport=2) / Raw(b"no"),
               IP(src="198.18.0.5", dst="198.19.0.1") / UDP(sport=1, dport=2) / Raw(b"ok")])
    loop.run_once(0)
    (reply,) = dev.packets
    assert IP(reply)[ICMP].type == 3 and IP(reply)[ICMP].code == 13 and IP(reply)[IP].src == "198.19.2.1"
    assert nat.counters["rejected"] == 1 and len(nat.sessions) == 1
    loop.close()


def test_session_limit_and_fragments_are_counted():
    loop, dev, out, handler, nat = rig(max_sessions=2)
    feed(nat, [IP(src="198.18.0.5", dst="198.19.0.1") / UDP(sport=p, dport=2) for p in (1, 2, 3)])
    frag = IPv6(src="fd00::5", dst="fd00::1") / IPv6ExtHdrFragment(m=1) / UDP(sport=1, dport=2) / Raw(b"x" * 8)
    feed(nat, [frag])
    assert len(nat.sessions) == 2
    assert nat.counters["dropped_session_limit"] == 1 and nat.counters["dropped_fragment"] == 1
    loop.close()


def test_outqueue_flushes_when_full():
    loop = Loop()
    dev = RecordingDevice()
    out = OutQueue(loop, dev, slots=4)
    for k in range(10):
        assert out.udp(b"\xc6\x13\x00\x01", 53, b"\xc6\x12\x00\x05", 5000, bytes([k]))
    assert len(dev.packets) == 8  # two full batches so far
    loop.run_once(0)
    assert len(dev.packets) == 10 and out.written == 10
    assert not out.udp(b"\xc6\x13\x00\x01", 53, b"\xc6\x12\x00\x05", 5000, bytes(70000))
    assert out.too_big == 1
    loop.close()


def test_outqueue_writes_in_the_iteration_that_queued_and_survives_a_closed_loop():
    loop, dev = Loop(), RecordingDevice()
    out = OutQueue(loop, dev)
    loop.call_soon(out.udp, b"\xc6\x13\x00\x01", 53, b"\xc6\x12\x00\x05", 5000, b"a")
    loop.run_once(0)
    assert len(dev.packets) == 1  # at the end of that iteration, not the next one
    loop.close()
    assert out.udp(b"\xc6\x13\x00\x01", 53, b"\xc6\x12\x00\x05", 5000, b"b")  # queued, no error
    out.flush()  # as the stack's stop() does
    assert len(dev.packets) == 2


class FailingDevice(RecordingDevice):
    """Takes nothing: every slot fails with EIO."""

    def write_batch(self, batch, n, *, only_verdict=None):
        self.n = n
        return 0

    def failed_slots(self):
        return [(i, 5) for i in range(self.n)]


def test_a_queued_packet_goes_out_as_given_and_failed_writes_warn_once(caplog):
    loop, dev = Loop(), RecordingDevice()
    out = OutQueue(loop, dev)
    raw = bytes(IP(src="198.18.0.2", dst="198.18.0.1") / UDP(sport=7, dport=9) / Raw(b"x"))
    assert out.packet(raw, len(raw)) and not out.packet(raw, len(raw) + 1)  # raw shorter than said: refused
    out.flush()
    assert dev.packets == [raw] and out.written == 1 and out.too_big == 1
    failing = OutQueue(loop, FailingDevice())
    for _ in range(3):
        failing.packet(raw, len(raw))
        failing.packet(raw, len(raw))
        failing.flush()
    assert failing.failed == 6 and failing.failures == {5: 6} and failing.written == 0
    assert caplog.text.count("writing originated packets") == 1 and "EIO" in caplog.text
    loop.close()
