"""The relay engine's spin (ZTUN_RELAY_SPIN) over real loopback TCP connections: after a wake-up
that found events its thread looks for more before it sleeps, still relays what it finds, and
counts its spins; with the spin off (or no traffic) it never spins."""

import select
import time

import pytest

from ztun._fast import relay_py, spin
from test_relay import MODES, Rig

try:
    from ztun._fast import relay as relay_native
except ImportError:
    relay_native = None

pytestmark = pytest.mark.skipif(relay_native is None, reason="the compiled relay engine is not built here")
SPINS = ("spin_found", "spin_empty", "spin_us")


@pytest.fixture(autouse=True)
def far(monkeypatch):
    """Every relay in the engine thread's set (the one that spins), whatever the environment."""
    monkeypatch.setenv("ZTUN_RELAY_NEAR", "0")


def ping_pong(rig, rounds, until=None):
    """rounds request/answer exchanges through the relay (fewer once until(stats) holds); how many.
    The engine's thread relays them: the loop is not needed (nor run) meanwhile."""
    for i in range(rounds):
        rig.app_client.sendall(b"ping %d" % i)
        assert select.select([rig.app_server], [], [], 5)[0], "the request was not relayed"
        assert rig.app_server.recv(100) == b"ping %d" % i
        rig.app_server.sendall(b"pong %d" % i)
        assert select.select([rig.app_client], [], [], 5)[0], "the answer was not relayed"
        assert rig.app_client.recv(100) == b"pong %d" % i
        if until is not None and until(rig.engine.stats()):
            return i + 1
    return rounds


def settled(rig):
    """The counters once the spin under way (1 ms at most) is over (the last ones after 5 s)."""
    for _ in range(250):
        before = rig.engine.stats()
        select.select([], [], [], 0.02)
        after = rig.engine.stats()
        if after == before:
            break
    return after


@pytest.mark.parametrize("splice", MODES)
def test_a_spin_finds_the_answer_and_relays_it(splice, monkeypatch):
    """Ping-pong through the relay: the answer comes right after the engine moved the request,
    within the spin (up to 2,000 round trips, until one did), and is relayed as any other."""
    monkeypatch.setenv("ZTUN_RELAY_SPIN", str(spin.MAX_US))
    rig = Rig(splice, relay_native)
    try:
        n = ping_pong(rig, 2000, until=lambda s: s["spin_found"] > 0)
        s = settled(rig)
        assert s["spin_found"] >= 1 and s["spin_us"] > 0, s
        assert ping_pong(rig, 5) == 5  # and goes on relaying
        assert n >= 1
    finally:
        rig.close()


def test_spins_that_find_nothing_back_off(monkeypatch):
    """A 1 us spin finds (almost) none of the events, each request or answer sent once the engine
    has gone to sleep: it spins after wake-ups 1, 3, 7, 15, 31 (twice as many skipped after each
    miss), not after each of the 40. (The relay's own send can make an event at once, an
    acknowledgement freeing room: a spin that finds it starts the count again.)"""
    monkeypatch.setenv("ZTUN_RELAY_SPIN", "1")
    rig = Rig(True, relay_native)
    try:
        for i in range(20):  # 40 wake-ups
            for src, dst in ((rig.app_client, rig.app_server), (rig.app_server, rig.app_client)):
                src.sendall(b"x")
                assert select.select([dst], [], [], 5)[0] and dst.recv(10) == b"x"
                s = settled(rig)
        spins = s["spin_found"] + s["spin_empty"]
        assert 5 <= spins <= 20, s
    finally:
        rig.close()


@pytest.mark.parametrize("splice", MODES)
def test_with_spin_off_the_engine_never_spins(splice, monkeypatch):
    monkeypatch.setenv("ZTUN_RELAY_SPIN", "0")
    rig = Rig(splice, relay_native)
    try:
        assert ping_pong(rig, 50) == 50
        s = settled(rig)
        assert [s[k] for k in SPINS] == [0, 0, 0], s
        assert s["events"] > 0
    finally:
        rig.close()


def test_an_idle_engine_does_not_spin(monkeypatch):
    """No traffic, no spin; after the last answer the spin under way ends and no other starts."""
    monkeypatch.setenv("ZTUN_RELAY_SPIN", str(spin.MAX_US))
    rig = Rig(True, relay_native)
    try:
        ping_pong(rig, 20)
        s = settled(rig)
        cpu = time.process_time()  # every thread's: the engine's, and this one asleep in select
        select.select([], [], [], 0.3)
        after = rig.engine.stats()
        assert [after[k] for k in SPINS] == [s[k] for k in SPINS], (s, after)
        assert s["spin_found"] + s["spin_empty"] >= 1
        assert time.process_time() - cpu < 0.05  # a spin would take most of those 0.3 s
    finally:
        rig.close()


def test_the_spin_is_bounded_in_both_engines():
    for module in (relay_native, relay_py):
        for bad in (-1, spin.MAX_US + 1):
            with pytest.raises(ValueError):
                module.RelayEngine(None, lambda *a: None, spin_us=bad)
