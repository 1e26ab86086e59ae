"""NatTable.release: a flow whose SYN never reached the kernel gives its port back at once (issue #17).

A flood's SYNs dropped by a limit, or refused after a failed connect, were never written to the
kernel: their NAT ports have no TIME_WAIT to wait out. Resting them anyway would let a flood of
64,512 SYNs a minute use up a next address's ports, and everyone's new connections with them.
"""

import pytest

from test_nat import config, run, syn
from ztun._fast import defs as d
from ztun.errors import NatPortsExhausted


def test_a_released_port_is_handed_out_next_without_rest(impl):
    table = impl.nat.NatTable(config(port_min=5000, port_max=5000, next_count=1))
    table.release(table.insert(6, "198.18.9.9", 1, "198.19.0.1", 80, now=5.0))
    assert table.flow(table.insert(6, "198.18.9.9", 2, "198.19.0.1", 80, now=5.0)).nat_port == 5000
    rested = impl.nat.NatTable(config(port_min=5000, port_max=5000, next_count=1))
    rested.delete(rested.insert(6, "198.18.9.9", 1, "198.19.0.1", 80, now=5.0))
    with pytest.raises(NatPortsExhausted):  # a deleted flow's port rests (it reached the kernel)
        rested.insert(6, "198.18.9.9", 2, "198.19.0.1", 80, now=5.0)


def test_released_ports_go_before_resting_ones(impl):
    table = impl.nat.NatTable(config(port_min=5000, port_max=5003, next_count=1))
    fids = [table.insert(6, "198.18.9.9", 100 + i, "198.19.0.1", 80) for i in range(4)]
    table.delete(fids[1])  # 5001 rests
    table.release(fids[2])  # 5002 is free at once, and first
    order = [table.flow(table.insert(6, "198.18.9.9", 200 + i, "198.19.0.1", 80, now=100.0)).nat_port for i in range(2)]
    assert order == [5002, 5001]


def test_an_allowed_flow_is_not_released(impl):
    table = impl.nat.NatTable(config())
    fid = table.insert(6, "198.18.9.9", 1, "198.19.0.1", 80)
    table.allow(fid)
    with pytest.raises(ValueError):
        table.release(fid)
    assert len(table) == 1 and table.lookup(6, "198.18.9.9", 1, "198.19.0.1", 80) == fid


def test_a_flood_of_dropped_syns_uses_no_ports(impl):
    table = impl.nat.NatTable(config(port_min=5000, port_max=5003, next_count=1, inet6=None))
    for i in range(500):  # each SYN a new flow, dropped by the handler: released
        _, _, v, _, (fid,) = run(impl, table, [syn("198.18.9.9", 1024 + i, "198.19.0.1", 80)])
        assert v == [d.V_NEW_FLOW]
        table.release(fid)
    _, _, v, _, _ = run(impl, table, [syn("198.18.9.10", 40000, "198.19.0.1", 80)])
    assert v == [d.V_NEW_FLOW] and table.free_ports() == 3
