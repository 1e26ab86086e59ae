"""The TUN pump in the appliance: an established flow's round trips go TUN -> NAT -> TUN on the
pump's thread, and the Python loop is woken only for what it must see (the SYN's batch)."""

import pytest

from ztun._fast import spin, tunpump

pytestmark = pytest.mark.skipif(tunpump is None, reason="the TUN pump is compiled on Linux only (and not with ZTUN_NO_EXTENSIONS=1)")

ROUNDS = 200
PINGPONG = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], 8082), timeout=30)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
for i in range(int(sys.argv[2])):
    s.sendall(b"x")
    assert s.recv(1) == b"x", i
s.close()
print("ok")
"""


def pingpong(lan, rounds, server="198.19.0.1"):
    """The appliance's stats after rounds 1-byte round trips to the echo server, the appliance stopped."""
    lan.server.server("echo", 8082)
    app = lan.appliance()
    r = lan.client.python(PINGPONG, server, str(rounds), timeout=60)
    assert r.stdout.strip() == "ok", r.stdout + r.stderr + app.log
    assert app.stop() == 0
    return app.stats()


@pytest.mark.parametrize("server", ["198.19.0.1", "fd00:19::1"], ids=["ipv4", "ipv6"])
def test_round_trips_do_not_wake_the_loop(lan, server):
    stats = pingpong(lan, ROUNDS, server)
    # each round trip: the client's byte and the kernel's answer, at least, read from the TUN
    assert stats["packets_read"] >= 2 * ROUNDS, stats
    # the batch with the SYN, and maybe one with the kernel's IPv6 chatter or a late ACK of no flow
    assert stats["tun_pump_handed_over"] <= 10, stats
    assert stats["written_back"] >= 2 * ROUNDS, stats
    if spin.spin_us("ZTUN_PUMP_SPIN", spin.PUMP_US):  # after each wake that moved packets (unless backing off)
        assert stats["tun_pump_spin_found"] + stats["tun_pump_spin_empty"] >= 1, stats


def test_no_spin_when_switched_off(lan, monkeypatch):
    """ZTUN_PUMP_SPIN=0 and ZTUN_RELAY_SPIN=0: both threads sleep as soon as they find nothing."""
    monkeypatch.setenv("ZTUN_PUMP_SPIN", "0")
    monkeypatch.setenv("ZTUN_RELAY_SPIN", "0")
    stats = pingpong(lan, 20)
    assert stats["written_back"] >= 40, stats
    assert [stats[k] for k in ("tun_pump_spin_found", "tun_pump_spin_empty", "tun_pump_spin_us")] == [0, 0, 0], stats


def test_no_pump_when_switched_off(lan, monkeypatch):
    """ZTUN_TUN_PUMP=0: the loop reads the TUN (the path of macOS, Windows and the twins)."""
    monkeypatch.setenv("ZTUN_TUN_PUMP", "0")
    stats = pingpong(lan, 20)
    assert "tun_pump_handed_over" not in stats and stats["packets_read"] >= 40, stats
