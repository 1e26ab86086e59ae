"""The TUN pump's spin (ZTUN_PUMP_SPIN) over a stand-in device (a datagram socket pair): after a
wake that moved packets it looks for the next one before it sleeps, still pumps what it finds,
counts its spins, backs off while they find nothing, and never spins without packets."""

import select
import socket

import pytest
from scapy.layers.inet import IP, TCP

from ztun._fast import PacketBatch, spin, tunpump
from ztun._fast.nat import NatTable
from ztun._fast.nat_config import NatConfig

pytestmark = pytest.mark.skipif(tunpump is None, reason="the TUN pump is compiled on Linux only (and not with ZTUN_NO_EXTENSIONS=1)")

A, B = "198.18.0.1", "198.18.0.2"
PORT = 4000
CLIENT = dict(src="198.19.5.5", dst="198.19.0.7")
SPINS = ("spin_found", "spin_empty", "spin_us")


class Rig:
    def __init__(self, spin_us):
        self.dev, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.dev.setblocking(False)
        self.nat = NatTable(NatConfig.from_prefixes(A + "/28", None, port4=PORT, capacity=64))
        self.pump = tunpump.TunPump(self.dev.fileno(), self.nat, PacketBatch(8, max_packet=2048),
                                    [PacketBatch(8, max_packet=2048) for _ in range(2)], 0, spin_us)
        self.pump.start()

    def established(self, sport=40000):
        """A flow the pump writes back by itself (its SYN handed over and allowed); the SYN's wake
        moved a packet too."""
        self.peer.send(bytes(IP(**CLIENT) / TCP(sport=sport, dport=80, flags="S", seq=100)))
        assert select.select([self.pump.fileno()], [], [], 5)[0]
        (index, n), = self.pump.take()
        fid = int(self.pump.handoff[index].flow_ids[0])
        self.pump.give(index)
        self.nat.allow(fid)
        return bytes(IP(**CLIENT) / TCP(sport=sport, dport=80, flags="A", seq=101, ack=7) / b"x")

    def exchange(self, packet):
        """Send packet and wait for the pump to write it back (rewritten)."""
        self.peer.send(packet)
        assert select.select([self.peer], [], [], 5)[0], "the pump did not write the packet back"
        p = IP(self.peer.recv(4096))
        assert (p.src, p.dst, p[TCP].dport, bytes(p[TCP].payload)) == (B, A, PORT, b"x")

    def settled(self):
        """The counters once the spin under way (1 ms at most) is over (the last ones after 5 s)."""
        for _ in range(250):
            before = self.pump.counters()
            select.select([], [], [], 0.02)
            after = self.pump.counters()
            if after == before:
                break
        return after

    def close(self):
        self.pump.stop()
        self.dev.close()
        self.peer.close()


@pytest.fixture
def make():
    rigs = []

    def make(spin_us):
        rigs.append(Rig(spin_us))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


def test_a_spin_finds_the_next_packet_of_a_round_trip_and_pumps_it(make):
    """Ping-pong through the pump: the next packet comes right after the pump wrote the last one,
    within the spin (up to 2,000 round trips, until one did), and is written back as any other."""
    rig = make(spin.MAX_US)
    packet = rig.established()
    for i in range(2000):
        rig.exchange(packet)
        if rig.pump.counters()["spin_found"]:
            break
    c = rig.settled()
    assert c["spin_found"] >= 1, c
    assert c["written"] == i + 1 and c["packets_read"] == i + 2  # the SYN, then every packet written back
    assert c["spin_us"] > 0


def test_spins_that_find_nothing_back_off(make):
    """A spin finds none of the packets (each sent once the pump has gone to sleep): the pump
    spins after wakes 1, 3 and 7 (twice as many skipped after each miss), not after every wake."""
    rig = make(1)
    packet = rig.established()  # wake 1
    rig.settled()
    for _ in range(8):  # wakes 2..9
        rig.exchange(packet)
        c = rig.settled()
    assert (c["spin_found"], c["spin_empty"]) == (0, 3), c
    assert c["spin_us"] >= 3  # each ran its 1 us out
    assert c["written"] == 8


def test_with_spin_off_nothing_spins_and_everything_is_pumped(make):
    rig = make(0)
    packet = rig.established()
    for _ in range(50):
        rig.exchange(packet)
    c = rig.settled()
    assert [c[k] for k in SPINS] == [0, 0, 0], c
    assert c["written"] == 50 and c["packets_read"] == 51


def test_no_packets_no_spin(make):
    """An idle pump sleeps: no spin before the first packet, none after the last one's."""
    rig = make(spin.MAX_US)
    select.select([], [], [], 0.05)
    assert [rig.pump.counters()[k] for k in SPINS] == [0, 0, 0]
    packet = rig.established()
    rig.exchange(packet)
    c = rig.settled()
    cpu = rig.pump.cpu_time()
    select.select([], [], [], 0.3)
    assert rig.pump.counters() == c
    assert c["spin_found"] + c["spin_empty"] >= 1
    # asleep: a thread blocked in poll() takes no CPU (a spin would take most of those 0.3 s)
    assert rig.pump.cpu_time() - cpu < 0.05


def test_the_spin_is_bounded():
    nat = NatTable(NatConfig.from_prefixes(A + "/28", None, port4=PORT, capacity=8))
    for bad in (-1, spin.MAX_US + 1):
        with pytest.raises(ValueError):
            tunpump.TunPump(0, nat, PacketBatch(4), [PacketBatch(4), PacketBatch(4)], 0, bad)


@pytest.mark.parametrize("raw,expected", [("", 50), ("0", 0), ("off", 0), ("20", 20), (" 1000 ", 1000)])
def test_the_environment_sets_it(monkeypatch, raw, expected):
    monkeypatch.setenv("ZTUN_PUMP_SPIN", raw)
    assert spin.spin_us("ZTUN_PUMP_SPIN", 50) == expected


@pytest.mark.parametrize("raw", ["-1", "1001", "fast", "1.5"])
def test_a_bad_value_names_the_variable(monkeypatch, raw):
    monkeypatch.setenv("ZTUN_PUMP_SPIN", raw)
    with pytest.raises(ValueError, match="ZTUN_PUMP_SPIN"):
        spin.spin_us("ZTUN_PUMP_SPIN", 50)
