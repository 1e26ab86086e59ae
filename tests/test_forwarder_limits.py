"""The forwarder's bounds on pending connects (globally and per client address) and its descriptor budget (issue #17)."""

import socket
from types import SimpleNamespace

from test_forwarder import run, setup
from ztun.appliance import limits
from ztun.appliance.forwarder import Forwarder
from ztun.loop import Loop
from ztun.stack.handler import Flow, Verdict

SERVER = ("198.19.0.1", 80)


def tcp(client, port=40000):
    return Flow(6, (client, port), SERVER, on_decide=lambda f, v: None)


def limited(loop, **kw):
    fwd, proxy, direct = setup(loop)
    fwd.close()
    return Forwarder(loop, fwd.outbounds, fwd.rules, **kw), proxy


def test_the_per_client_bound_drops_that_clients_syns_and_no_one_elses():
    with Loop() as loop:
        fwd, proxy = limited(loop, max_pending=100, max_pending_per_client=3)
        assert [fwd.prepare(tcp("198.18.20.2", p)) for p in range(5)] == [Verdict.DEFER] * 3 + [Verdict.DROP] * 2
        assert len(proxy.tcp) == 3  # no connect for a dropped SYN
        assert fwd.prepare(tcp("198.18.21.2")) == Verdict.DEFER  # another client is not held up
        assert fwd.limit_drops() == {"tcp_client_pending_limit": 2}
        assert fwd.gauges()["tcp_pending"] == 4 and fwd.gauges()["tcp_pending_clients"] == 2
        fwd.close()


def test_the_global_bound_and_pending_connects_that_end():
    with Loop() as loop:
        fwd, proxy = limited(loop, max_pending=2, max_pending_per_client=10)
        flows = [tcp("198.18.20.2", 1), tcp("198.18.21.2", 2)]
        assert [fwd.prepare(f) for f in flows] == [Verdict.DEFER] * 2
        assert fwd.prepare(tcp("198.18.22.2")) == Verdict.DROP
        assert fwd.limit_drops() == {"tcp_pending_limit": 1}
        run(loop)  # the connects succeed: the flows wait for their clients, still pending (they hold a socket)
        assert fwd.gauges()["tcp_pending"] == 2
        fwd._discard(flows[0])  # as the claim timeout does
        assert fwd.gauges()["tcp_pending"] == 1
        assert fwd.prepare(tcp("198.18.22.2")) == Verdict.DEFER
        fwd.close()
        assert fwd.gauges()["tcp_pending"] == 0


def test_a_failed_connect_ends_its_pending_count():
    with Loop() as loop:
        fwd, proxy, _ = setup(loop, fail=ConnectionRefusedError(111, "refused"))
        fwd.prepare(tcp("198.18.20.2"))
        assert fwd.gauges()["tcp_pending"] == 1
        run(loop)
        assert fwd.gauges()["tcp_pending"] == 0 and fwd.gauges()["tcp_pending_clients"] == 0
        fwd.close()


def test_the_descriptor_budget_refuses_new_flows_before_the_limit():
    with Loop() as loop:
        budget = limits.DescriptorBudget(200)
        fwd, proxy = limited(loop, descriptors=budget)
        budget.overhead = 100  # what the rest of the process holds, as a measurement found it
        room = (budget.budget - budget.overhead) // limits.PENDING_COST
        verdicts = [fwd.prepare(tcp("198.18.20.2", p)) for p in range(room + 2)]
        assert verdicts == [Verdict.DEFER] * room + [Verdict.DROP] * 2
        assert fwd.limit_drops() == {"tcp_descriptor_budget": 2}
        session = SimpleNamespace(flow=Flow(17, ("198.18.20.2", 5000), ("198.19.0.1", 53)))
        assert fwd.prepare(session.flow) == Verdict.DROP  # a UDP session costs a descriptor too
        assert fwd.limit_drops()["udp_descriptor_budget"] == 1
        g = fwd.gauges()
        assert g["descriptors_limit"] == 200 and g["descriptors_budget"] == budget.budget and g["descriptors_open"] > 0
        fwd.close()


def test_calibration_counts_what_is_open():
    budget = limits.DescriptorBudget(100000)
    socks = [socket.socket() for _ in range(50)]
    try:
        budget.calibrate(held_by_flows=0)
        before = budget.overhead
        assert before >= 50 and budget.measured == before
        budget.calibrate(held_by_flows=40)  # 40 of them are the flows': the rest is overhead
        assert budget.overhead == before - 40
    finally:
        for s in socks:
            s.close()


def test_the_soft_limit_is_raised_to_the_hard_one():
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if hard != resource.RLIM_INFINITY and hard > 64:
            resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        got = limits.raise_nofile_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == got
        assert got == (hard if hard != resource.RLIM_INFINITY else got)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_handshake_engine_has_room_for_every_pending_connect():
    """A pending connect may be a SOCKS5 negotiation: the loop's engine is made with that many slots."""
    with Loop() as loop:
        fwd, proxy = limited(loop, max_pending=6000)
        assert loop.handshakes.capacity == 6000
    with Loop() as loop:
        fwd, proxy = limited(loop, max_pending=100)
        assert loop.handshakes.capacity == 4096  # never below the default
