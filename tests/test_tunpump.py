"""The TUN pump over a stand-in device (a datagram socket pair: one packet per read and write):
an established flow's packets go through the NAT and back on the pump's thread; the packets the
loop must see are handed over in a batch of their own, and the batch given back."""

import os
import select
import socket
import sys

import pytest
from scapy.layers.inet import IP, TCP, UDP

from ztun._fast import PacketBatch, tunpump
from ztun._fast import defs as d
from ztun._fast.nat import NatTable
from ztun._fast.nat_config import NatConfig
from ztun.errors import TunError

pytestmark = pytest.mark.skipif(tunpump is None, reason="the TUN pump is compiled on Linux only (and not with ZTUN_NO_EXTENSIONS=1)")

A, B = "198.18.0.1", "198.18.0.2"  # the stack's listener address and the NAT's next address
PORT = 4000  # the listener's port
CLIENT = dict(src="198.19.5.5", dst="198.19.0.7")


def handed(pump, timeout=5.0):
    """What the pump hands over within timeout ([] if nothing)."""
    ready, _, _ = select.select([pump.fileno()], [], [], timeout)
    return pump.take() if ready else []


def received(sock, timeout=5.0):
    ready, _, _ = select.select([sock], [], [], timeout)
    return sock.recv(70000) if ready else None


@pytest.fixture(params=[0, d.VNET_HDR_LEN], ids=["plain", "virtio header"])
def rig(request):
    hdr = request.param
    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    nat = NatTable(NatConfig.from_prefixes(A + "/28", None, port4=PORT, capacity=64))
    batch = PacketBatch(8, max_packet=2048, vnet_hdr=bool(hdr))
    handoff = [PacketBatch(8, max_packet=2048, vnet_hdr=bool(hdr)) for _ in range(2)]
    pump = tunpump.TunPump(a.fileno(), nat, batch, handoff, hdr)
    pump.start()
    yield pump, nat, peer, b"\0" * hdr
    pump.stop()
    a.close()
    peer.close()


def test_a_new_flow_is_handed_over_and_its_packets_then_pumped_both_ways(rig):
    pump, nat, peer, hdr = rig
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=40000, dport=80, flags="S", seq=100)))
    got = handed(pump)
    assert len(got) == 1 and got[0][1] == 1, got
    index = got[0][0]
    batch = pump.handoff[index]
    assert batch.verdicts[0] == d.V_NEW_FLOW
    fid = int(batch.flow_ids[0])
    pump.give(index)
    nat.allow(fid)
    _, _, nat_port = nat.endpoints(fid)

    # the client's next packet: rewritten B:n -> A:P and written back by the pump alone
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=40000, dport=80, flags="A", seq=101, ack=7) / b"hello"))
    out = received(peer)
    assert out is not None and out[: len(hdr)] == hdr
    p = IP(out[len(hdr):])
    assert (p.src, p[TCP].sport, p.dst, p[TCP].dport, bytes(p[TCP].payload)) == (B, nat_port, A, PORT, b"hello")
    # the kernel's answer A:P -> B:n: back to the client as D:d -> C:c
    peer.send(hdr + bytes(IP(src=A, dst=B) / TCP(sport=PORT, dport=nat_port, flags="A", seq=7, ack=106) / b"world"))
    out = received(peer)
    p = IP(out[len(hdr):])
    assert (p.src, p[TCP].sport, p.dst, p[TCP].dport, bytes(p[TCP].payload)) == ("198.19.0.7", 80, "198.19.5.5", 40000, b"world")
    assert handed(pump, 0.2) == []  # the loop was not woken for either
    c = pump.counters()
    assert (c["packets_read"], c["written"], c["handed_over"], c["copied"]) == (3, 2, 1, 1)
    assert nat.flow(fid).packets_in == 1 and nat.flow(fid).packets_out >= 1


def test_a_packet_of_no_flow_is_handed_over_for_its_reset(rig):
    pump, nat, peer, hdr = rig
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=40001, dport=80, flags="A", seq=5, ack=9)))
    got = handed(pump)
    assert len(got) == 1
    batch = pump.handoff[got[0][0]]
    assert (batch.verdicts[0], batch.reasons[0]) == (d.V_DROP, d.NO_FLOW)
    assert received(peer, 0.2) is None


def read_by_pump(pump, total):
    """Wait (5 s at most) until the pump has read total packets."""
    for _ in range(500):
        if pump.counters()["packets_read"] >= total:
            return True
        select.select([], [], [], 0.01)
    return False


def test_rare_packets_gather_while_the_loop_holds_a_batch(rig):
    """While the loop works through one batch, the rare packets of the pump's wakes meanwhile go
    into the next, handed over when the loop gives the first back: not one batch per wake (the
    loop's batches would be gone after a few wakes of a packet each, and the next one dropped)."""
    pump, nat, peer, hdr = rig
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=47000, dport=80, flags="S", seq=1)))
    (first, _), = handed(pump)
    for k in range(1, 8):  # each read on a wake of its own
        peer.send(hdr + bytes(IP(**CLIENT) / UDP(sport=47000 + k, dport=53) / b"q"))
        assert read_by_pump(pump, 1 + k)
    assert pump.counters()["dropped"] == 0
    assert handed(pump, 0.2) == []  # gathered: the loop still holds the first batch
    pump.give(first)
    got = handed(pump)
    assert len(got) == 1 and got[0][1] == 7, got
    assert all(pump.handoff[got[0][0]].verdicts[:7] == d.V_UDP)


def test_what_gathered_is_handed_over_when_the_pump_pauses(rig):
    """pause() returns once the pump has handed over all it read: the loop, reading the device
    next, must see those packets first."""
    pump, nat, peer, hdr = rig
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=48000, dport=80, flags="S", seq=1)))
    (first, _), = handed(pump)
    peer.send(hdr + bytes(IP(**CLIENT) / UDP(sport=48001, dport=53) / b"q"))
    assert read_by_pump(pump, 2)
    pump.pause()
    (index, n), = pump.take()  # already there: no waiting
    assert index != first and n == 1


def test_while_the_loop_holds_every_handoff_batch_the_pump_drops_and_forgets(rig):
    """The pump waits for the loop only briefly: established flows keep moving, and a new flow's
    SYN it cannot hand over is dropped, counted, and its NAT entry forgotten, so the
    retransmission is a new flow again."""
    pump, nat, peer, hdr = rig
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=41000, dport=80, flags="S", seq=1)))
    (first, _), = handed(pump)
    fid = int(pump.handoff[first].flow_ids[0])
    nat.allow(fid)  # the first flow goes on (the loop holds its batch)
    for k in range(1, 9):  # the second batch: gathered until it is full
        peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=41000 + k, dport=80, flags="S", seq=1)))
        assert read_by_pump(pump, 1 + k)
    assert handed(pump, 0.2) == [] and len(nat) == 9
    syn = hdr + bytes(IP(**CLIENT) / TCP(sport=41100, dport=80, flags="S", seq=1))
    peer.send(syn)  # no room: the full batch goes to the loop, this SYN nowhere
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=41000, dport=80, flags="A", seq=2, ack=1)))
    out = received(peer)
    assert out is not None and IP(out[len(hdr):])[TCP].flags == "A"  # pumped while the SYN was dropped
    (second, n), = handed(pump)
    assert second != first and n == 8
    assert pump.counters()["dropped"] == 1 and len(nat) == 9  # 41100's entry is gone
    assert pump.counters()["waited"] == 1  # it waited for the loop once (10 ms), then dropped
    pump.give(first)
    pump.give(second)
    peer.send(syn)  # the client's retransmission
    (index, n), = handed(pump)
    assert n == 1 and pump.handoff[index].verdicts[0] == d.V_NEW_FLOW
    assert len(nat) == 10


def test_a_device_that_fails_is_reported_once_and_the_thread_ends(tmp_path):
    nat = NatTable(NatConfig.from_prefixes(A + "/28", None, port4=PORT, capacity=8))
    fd = os.open(tmp_path, os.O_RDONLY | os.O_NONBLOCK)  # poll says readable, read() fails with EISDIR
    pump = tunpump.TunPump(fd, nat, PacketBatch(4, max_packet=256), [PacketBatch(4, max_packet=256) for _ in range(2)], 0)
    try:
        pump.start()
        ready, _, _ = select.select([pump.fileno()], [], [], 5)
        assert ready
        with pytest.raises(TunError) as e:
            pump.take()
        assert e.value.errno == __import__("errno").EISDIR
        assert pump.error == e.value.errno
    finally:
        pump.stop()
        pump.stop()  # idempotent
        os.close(fd)
    assert pump.take() == [] and pump.cpu_time() == 0.0


def test_bad_arguments_are_refused():
    nat = NatTable(NatConfig.from_prefixes(A + "/28", None, port4=PORT, capacity=8))
    from ztun.errors import PacketError

    with pytest.raises(ValueError):
        tunpump.TunPump(0, nat, PacketBatch(4), [PacketBatch(4)], 0)  # one: nothing to fill while the loop holds it
    with pytest.raises(PacketError):
        tunpump.TunPump(0, nat, PacketBatch(4), [PacketBatch(4), PacketBatch(4)], 3)
    with pytest.raises(PacketError):
        tunpump.TunPump(0, nat, PacketBatch(4), [PacketBatch(4), PacketBatch(4, vnet_hdr=True)], 0)
    with pytest.raises(PacketError):
        tunpump.TunPump(0, nat, PacketBatch(4), [PacketBatch(4), PacketBatch(4, max_packet=100)], 0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux")
def test_the_table_is_shared_safely_while_the_pump_runs(rig):
    """The loop's calls into the NAT (allow, endpoints, sweep, flow) while the pump rewrites a
    stream of one flow's packets: every packet comes back rewritten, none lost or torn."""
    pump, nat, peer, hdr = rig
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=42000, dport=80, flags="S", seq=100)))
    got = handed(pump)
    fid = int(pump.handoff[got[0][0]].flow_ids[0])
    pump.give(got[0][0])
    nat.allow(fid)
    _, _, nat_port = nat.endpoints(fid)
    packet = hdr + bytes(IP(**CLIENT) / TCP(sport=42000, dport=80, flags="A", seq=101, ack=1) / b"x")
    seen = 0
    for round_ in range(50):
        for _ in range(20):
            peer.send(packet)
        for _ in range(20):  # the loop's side, meanwhile
            nat.endpoints(fid)
            nat.flow(fid)
            nat.sweep(0.0, 64)
            nat.lookup(6, "198.19.5.5", 42000, "198.19.0.7", 80)
        for _ in range(20):
            out = received(peer)
            assert out is not None, f"round {round_}: a packet did not come back"
            p = IP(out[len(hdr):])
            assert (p.src, p[TCP].sport, p.dst, p[TCP].dport) == (B, nat_port, A, PORT)
            seen += 1
    assert seen == 1000 and pump.counters()["written"] == 1000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux")
def test_every_packet_is_counted_once_while_the_pump_and_the_loop_share_the_table():
    """The table's lock keeps the pump's batch and the loop's calls apart. Without it the counts
    lose updates (each a read-modify-write, by two threads): here both count packets of one
    pending flow (dropped as pending, so the pump writes nothing back and spends its time in the
    table), the pump what it reads, the loop a batch at a time meanwhile, and every packet must
    be counted once. Checked against a build with the lock taken out of process_rows: counts were
    lost in nearly every run (it needs the two threads on two cores at once at some point)."""
    from ztun._fast import parse_batch

    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    peer.setblocking(False)
    nat = NatTable(NatConfig.from_prefixes(A + "/28", None, port4=PORT, capacity=64))
    nat.insert(6, CLIENT["src"], 42000, CLIENT["dst"], 80)  # never allowed: its packets are dropped as pending
    packet = bytes(IP(**CLIENT) / TCP(sport=42000, dport=80, flags="A", seq=101, ack=1) / b"x")
    pump = tunpump.TunPump(a.fileno(), nat, PacketBatch(64, max_packet=256),
                           [PacketBatch(64, max_packet=256) for _ in range(2)], 0)
    mine = PacketBatch(64, max_packet=256)  # the loop's batch: the same packet in every slot
    mine.fill([packet] * 64)
    parse_batch(mine)
    sent = by_loop = 0

    def counted():
        """Every packet counted once so far (the pump paused: it is done with what it read)."""
        c = pump.counters()
        assert c["packets_read"] == sent and c["copied"] == 0
        assert int(nat.drop_counts[d.PENDING]) == sent + by_loop, "counts were lost"
        assert int(nat.verdict_counts[d.V_DROP]) == sent + by_loop, "counts were lost"

    try:
        pump.start()
        for _ in range(1000):
            pump.pause()  # the packets queue up meanwhile: the pump reads them in full batches
            counted()
            for _ in range(1024):  # as many as the socket's buffer holds (a few hundred)
                try:
                    peer.send(packet)
                except BlockingIOError:
                    break
                sent += 1
            pump.resume()
            for _ in range(2000):  # the loop's side, while the pump works through them
                if pump.counters()["packets_read"] >= sent:
                    break
                nat.process_batch(mine, 1.0)
                by_loop += mine.count
            assert read_by_pump(pump, sent), "the pump did not read what was sent"  # before it pauses
        pump.pause()
        counted()
        assert sent > 0 and by_loop > 0
    finally:
        pump.stop()
        a.close()
        peer.close()


def test_paused_it_reads_nothing_and_resumed_it_reads_again(rig):
    pump, nat, peer, hdr = rig
    pump.pause()
    assert pump.paused
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=43000, dport=80, flags="S", seq=1)))
    assert handed(pump, 0.3) == [] and pump.counters()["packets_read"] == 0
    pump.pause()  # idempotent
    pump.resume()
    assert not pump.paused
    got = handed(pump)
    assert len(got) == 1 and pump.counters()["packets_read"] == 1


def test_auto_hands_the_device_to_the_loop_while_rare_packets_come_fast(monkeypatch):
    """The stack's auto mode: above PUMP_OFF_ABOVE rare packets a second the loop reads the device
    (the pump paused), and after PUMP_ON_AFTER calm looks the pump reads it again."""
    from ztun.loop import Loop
    from ztun.stack import system
    from ztun.stack.system import SystemStack
    from ztun.tun.device_linux import LinuxTunDevice
    from ztun.tun.options import TunOptions

    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev = LinuxTunDevice(a.detach(), "zt-fake", 1500)
    loop = Loop()
    stack = SystemStack(dev, TunOptions(name="zt-fake", inet4="198.18.0.1/28", inet6=None), pump="auto")
    clock = [1000.0]
    monkeypatch.setattr(system.time, "monotonic", lambda: clock[0])

    class Handler:
        icmp_echo = "reply"

    try:
        stack.start(Handler(), loop)
        assert stack.pump is not None and not stack.pump.paused
        stack._pump_last = (clock[0], 0)
        clock[0] += 1.0
        stack._loop_rare += int(system.PUMP_OFF_ABOVE) + 1  # as if that many were seen in the last second
        stack._pump_look()
        assert stack.pump.paused and stack.stats()["tun_pump_reading"] == 0
        assert stack.counters["tun_pump_paused"] == 1
        assert stack.on_readable() == 0  # the loop may read the device now
        for k in range(system.PUMP_ON_AFTER):
            clock[0] += 1.0
            stack._loop_rare += int(system.PUMP_ON_BELOW) - 1
            stack._pump_look()
            assert stack.pump.paused == (k < system.PUMP_ON_AFTER - 1)
        assert stack.stats()["tun_pump_reading"] == 1
        with pytest.raises(RuntimeError):
            stack.on_readable()
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()


def _pump_over(fd, hdr=0):
    nat = NatTable(NatConfig.from_prefixes(A + "/28", None, port4=PORT, capacity=8))
    return tunpump.TunPump(fd, nat, PacketBatch(4, max_packet=256), [PacketBatch(4, max_packet=256) for _ in range(2)], hdr)


def test_a_device_that_hangs_up_is_a_failure_not_a_busy_loop():
    """poll() says POLLHUP (or POLLERR, POLLNVAL) and read() finds nothing: polling again would
    return at once, for ever, at 100% CPU. The pump reports the device failed and ends."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.close(w)  # read() returns 0 from now on, and poll() POLLHUP
    pump = _pump_over(r)
    try:
        pump.start()
        ready, _, _ = select.select([pump.fileno()], [], [], 5)
        assert ready, "the pump did not report the hang-up"
        with pytest.raises(TunError) as e:
            pump.take()
        assert e.value.errno == __import__("errno").ENODEV
    finally:
        pump.stop()
        os.close(r)


def test_a_pump_whose_device_failed_still_answers_pause(tmp_path):
    """The loop may ask it to pause before it has taken the failure: it gets its answer at once,
    not a TimeoutError after blocking the loop."""
    fd = os.open(tmp_path, os.O_RDONLY | os.O_NONBLOCK)  # read() fails with EISDIR
    pump = _pump_over(fd)
    try:
        pump.start()
        ready, _, _ = select.select([pump.fileno()], [], [], 5)
        assert ready
        pump.pause()
        assert pump.paused
        with pytest.raises(TunError):
            pump.take()
    finally:
        pump.stop()
        os.close(fd)


def test_a_pause_that_timed_out_leaves_the_pump_reading(rig):
    """pause() gave up waiting: the caller goes on as if the pump reads, so it must read (the late
    pause is called off), and a later pause() waits for its own answer, not the late one."""
    pump, nat, peer, hdr = rig
    for _ in range(50):
        try:
            pump.pause(0.0)
        except TimeoutError:
            break
        pump.resume()
    else:
        pytest.skip("the pump always answered within 0 ms")
    assert not pump.paused
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=44000, dport=80, flags="S", seq=1)))
    got = handed(pump)
    assert len(got) == 1, "the pump stopped reading after a pause() that timed out"
    pump.give(got[0][0])
    pump.pause()
    pump.resume()
    pump.pause()  # the answer it waits for is its own: the pump does not read after it
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=44001, dport=80, flags="S", seq=1)))
    assert handed(pump, 0.3) == [] and pump.counters()["packets_read"] == 1
    pump.resume()
    assert len(handed(pump)) == 1


def test_only_a_batch_handed_over_can_be_given_back_and_only_once(rig):
    """A batch given back twice (or never handed over) would be filled by the pump while the loop
    still reads it: refused."""
    pump, nat, peer, hdr = rig
    with pytest.raises(ValueError):
        pump.give(0)
    peer.send(hdr + bytes(IP(**CLIENT) / TCP(sport=45000, dport=80, flags="S", seq=1)))
    got = handed(pump)
    assert len(got) == 1
    pump.give(got[0][0])
    with pytest.raises(ValueError):
        pump.give(got[0][0])


def test_a_second_init_is_refused():
    """__init__ again would leak the pipes (and swap them under a running thread)."""
    pump = _pump_over(0)
    try:
        with pytest.raises(RuntimeError):
            pump.__init__(0, NatTable(NatConfig.from_prefixes(A + "/28", None, port4=PORT, capacity=8)),
                          PacketBatch(4, max_packet=256), [PacketBatch(4, max_packet=256) for _ in range(2)], 0)
    finally:
        pump.stop()


class _Handler:
    icmp_echo = "reply"


def _stack_over(fd, **kw):
    from ztun.loop import Loop
    from ztun.stack.system import SystemStack
    from ztun.tun.device_linux import LinuxTunDevice
    from ztun.tun.options import TunOptions

    dev = LinuxTunDevice(fd, "zt-fake", 1500)
    return dev, Loop(), SystemStack(dev, TunOptions(name="zt-fake", inet4="198.18.0.1/28", inet6=None), pump="auto", **kw)


def test_auto_does_not_hand_a_failed_device_to_the_loop(tmp_path):
    """The device fails while auto decides to pause the pump: the loop takes the failure (stack
    stopped, on_failure once) and neither reads the device nor looks again."""
    from ztun.stack import system

    dev, loop, stack = _stack_over(os.open(tmp_path, os.O_RDONLY))  # read() fails with EISDIR
    failures = []
    try:
        stack.start(_Handler(), loop, on_failure=failures.append)
        ready, _, _ = select.select([stack.pump.fileno()], [], [], 5)
        assert ready  # the failure, not yet taken
        stack._loop_rare += 100 * int(system.PUMP_OFF_ABOVE)  # a storm: auto pauses the pump
        stack._pump_look()
        assert isinstance(stack.failure, TunError) and len(failures) == 1
        assert stack._pump_timer is None, "auto looks again at a stopped stack"
        assert not loop.remove_reader(dev.fileno()), "the loop reads the failed device"
    finally:
        stack.stop()
        loop.close()
        dev.close()


def test_every_batch_handed_over_is_given_back_whatever_happens_to_one(monkeypatch):
    """A batch the loop failed on is given back all the same, and the batches after it are
    processed: one lost batch (of 8) less each time would end in every rare packet dropped."""
    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev, loop, stack = _stack_over(a.detach())
    try:
        stack.start(_Handler(), loop)
        pump, seen, given = stack.pump, [], []

        class Pump:  # the real pump, but take() hands over two batches at once, and give() is noted
            def __getattr__(self, name):
                return getattr(pump, name)

            def take(self):
                return [(0, 1), (1, 1)]

            def give(self, index):
                given.append(index)

        def rare(batch, n, now, rare, no_flow):
            seen.append(batch)
            if len(seen) == 1:
                raise RuntimeError("a bug in the loop's handling of one batch")

        monkeypatch.setattr(stack, "_rare", rare)
        monkeypatch.setattr(stack, "pump", Pump())
        stack._pumped()
        monkeypatch.setattr(stack, "pump", pump)
        assert given == [0, 1]
        assert len(seen) == 2, "the batch after the one that failed was not processed"
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()


def test_auto_goes_on_looking_when_the_pump_does_not_pause(monkeypatch):
    """pause() timing out leaves the pump reading (it calls the request off): auto keeps the loop
    off the device and looks again, instead of raising out of its timer for good."""
    from ztun.stack import system

    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev, loop, stack = _stack_over(a.detach())
    try:
        stack.start(_Handler(), loop)
        pump = stack.pump

        class Pump:
            def __getattr__(self, name):
                return getattr(pump, name)

            def pause(self):
                raise TimeoutError("the TUN pump did not pause")

        monkeypatch.setattr(stack, "pump", Pump())
        stack._loop_rare += 100 * int(system.PUMP_OFF_ABOVE)
        stack._pump_look()
        monkeypatch.setattr(stack, "pump", pump)
        assert stack._pump_timer is not None and not pump.paused
        assert not loop.remove_reader(dev.fileno()), "the loop reads the device the pump reads"
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()


def test_a_blocking_fd_is_refused():
    """read() on a blocking fd would wait for the next packet once the queue is drained, and stop()
    would wait for it too (the stop fd is polled between reads only)."""
    r, w = os.pipe()
    pump = _pump_over(r)
    try:
        with pytest.raises(ValueError):
            pump.start()
    finally:
        pump.stop()
        os.close(r)
        os.close(w)


def test_the_reading_gauge_says_no_once_the_device_failed(tmp_path):
    dev, loop, stack = _stack_over(os.open(tmp_path, os.O_RDONLY))  # read() fails with EISDIR
    try:
        stack.start(_Handler(), loop)
        assert stack.stats()["tun_pump_reading"] == 1
        ready, _, _ = select.select([stack.pump.fileno()], [], [], 5)
        assert ready
        stack._pumped()
        assert stack.failure is not None and stack.stats()["tun_pump_reading"] == 0
    finally:
        stack.stop()
        loop.close()
        dev.close()


def test_a_pump_that_cannot_start_leaves_nothing_behind(monkeypatch):
    """start() failing on the pump: its pipes are closed and the loop does not wait on them."""
    from ztun.stack import system

    made = []

    class Failing(tunpump.TunPump):
        def start(self):
            made.append(self)
            raise OSError("cannot start the TUN pump's thread")

    monkeypatch.setattr(system.tunpump, "TunPump", Failing)
    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev, loop, stack = _stack_over(a.detach())
    before = set(loop._fds)  # the loop's own
    try:
        with pytest.raises(OSError):
            stack.start(_Handler(), loop)
        assert made and made[0].fileno() == -1, "the pump's pipes are open"
        assert set(loop._fds) == before, "the loop still waits on the stack's fds"
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()


def test_a_packet_the_loop_does_nothing_with_is_not_handed_over(rig):
    """Another protocol (or an IP fragment): the NAT counted it dropped (V_OTHER), and the loop has
    nothing to do with it; handed over it would only take the room of packets the loop must see."""
    pump, nat, peer, hdr = rig
    peer.send(hdr + bytes(IP(proto=132, **CLIENT) / (b"\0" * 32)))  # SCTP
    peer.send(hdr + bytes(IP(flags="MF", frag=0, **CLIENT) / UDP(sport=5000, dport=53) / (b"x" * 64)))
    assert read_by_pump(pump, 2)
    assert handed(pump, 0.2) == []
    assert nat.verdict_counts[d.V_OTHER] == 2 and pump.counters()["copied"] == 0


def test_reader_cpu_is_the_cpu_of_the_thread_that_reads(monkeypatch):
    """NapiThreads' clock: the pump's CPU while it reads, the loop's while auto has paused it (the
    loop reads then), and one clock across each change, so its differences never jump by the
    other thread's. Both clocks are stand-ins the test moves."""
    from ztun.stack import system

    loop_cpu, pump_cpu = [10.0], [100.0]

    class Clocked(tunpump.TunPump):
        def cpu_time(self):
            return pump_cpu[0]

    monkeypatch.setattr(system.tunpump, "TunPump", Clocked)
    monkeypatch.setattr(system.time, "thread_time", lambda: loop_cpu[0])
    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev, loop, stack = _stack_over(a.detach())

    def moved(pump=0.0, loop=0.0):
        """How far reader_cpu() moves while the pump's thread spends pump and the loop's loop CPU seconds."""
        before = stack.reader_cpu()
        pump_cpu[0] += pump
        loop_cpu[0] += loop
        return stack.reader_cpu() - before

    try:
        start = stack.reader_cpu()
        stack.start(_Handler(), loop)
        assert stack.reader_cpu() == pytest.approx(start), "the clock jumped when the pump started"
        assert moved(pump=2.0, loop=1.0) == pytest.approx(2.0)  # the pump reads
        stack._loop_rare += 100 * int(system.PUMP_OFF_ABOVE)  # a storm: auto pauses the pump
        before = stack.reader_cpu()
        stack._pump_look()
        assert stack.pump.paused
        assert stack.reader_cpu() == pytest.approx(before), "the clock jumped when the loop took over"
        assert moved(pump=5.0, loop=1.0) == pytest.approx(1.0), "paused, the pump's CPU is not the reader's"
        stack._pump_calm = system.PUMP_ON_AFTER - 1  # calm enough: the next look resumes the pump
        before = stack.reader_cpu()
        stack._pump_look()
        assert not stack.pump.paused
        assert stack.reader_cpu() == pytest.approx(before), "the clock jumped when the pump took over again"
        assert moved(pump=3.0, loop=1.0) == pytest.approx(3.0)
        before = stack.reader_cpu()
        stack.stop()
        assert stack.reader_cpu() == pytest.approx(before)
        assert moved(pump=1.0, loop=0.5) == pytest.approx(0.5)  # stopped: the loop's, as without a pump
    finally:
        stack.stop()
        loop.close()
        dev.close()
        peer.close()
