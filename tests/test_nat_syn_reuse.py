"""A SYN on a flow the NAT still holds: a retransmission only with the flow's first sequence number (issue #17).

A flood flow whose client reset was lost stays "established" in the NAT while the kernel has
long forgotten it; a later connection from the same client port must become a new flow (a new
NAT port, the handler asked again), not be rewritten onto the old flow's NAT port, where the
kernel would accept it as a connection no outbound connect was made for.
"""

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from test_nat import A4, A6, P4, P6, config, ip_of, run
from ztun._fast import defs as d

CLIENT = {4: ("198.18.7.7", "198.19.0.5"), 6: ("fd00:7::7", "fd00:19::5")}


def client_syn(version, seq):
    src, dst = CLIENT[version]
    ip = IP(src=src, dst=dst) if version == 4 else IPv6(src=src, dst=dst)
    return bytes(ip / TCP(sport=40000, dport=80, flags="S", seq=seq))


def kernel_reply(version, fwd, flags):
    stack, port = (A4, P4) if version == 4 else (A6, P6)
    ip = IP(src=stack, dst=ip_of(fwd).src) if version == 4 else IPv6(src=stack, dst=ip_of(fwd).src)
    return bytes(ip / TCP(sport=port, dport=ip_of(fwd)[TCP].sport, flags=flags, seq=5, ack=1001))


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("state", ["syn_sent", "established", "fin_wait"])
def test_a_syn_with_another_isn_is_a_new_connection(impl, version, state):
    table = impl.nat.NatTable(config())
    _, (fwd,), v, _, (fid,) = run(impl, table, [client_syn(version, 1000)])
    assert v == [d.V_NEW_FLOW]
    table.allow(fid)
    if state != "syn_sent":
        run(impl, table, [kernel_reply(version, fwd, "SA")])
    if state == "fin_wait":
        run(impl, table, [kernel_reply(version, fwd, "FA")])
    assert table.flow(fid).state == state
    # the same SYN again is the client's retransmission: the same flow, the same NAT port
    _, (again,), v, _, (same,) = run(impl, table, [client_syn(version, 1000)])
    assert (v, same) == ([d.V_WRITE], [fid]) and ip_of(again)[TCP].sport == ip_of(fwd)[TCP].sport
    # another ISN from the same port is a new connection: a new flow on another NAT port
    _, (new,), v, _, (fid2,) = run(impl, table, [client_syn(version, 777777)])
    assert v == [d.V_NEW_FLOW], (state, v)
    assert table.flow(fid2).decision == "pending" and len(table) == 1
    assert ip_of(new)[TCP].sport != ip_of(fwd)[TCP].sport
    # and its own retransmission is held back while the handler decides
    _, _, v, r, _ = run(impl, table, [client_syn(version, 777777)])
    assert (v, r) == ([d.V_DROP], [d.PENDING])


def test_a_pending_flow_gives_way_to_a_new_connection(impl):
    """A flood SYN still waiting for its connect must not swallow a real connection from the same port."""
    table = impl.nat.NatTable(config())
    _, _, _, _, (fid,) = run(impl, table, [client_syn(4, 1)])
    _, _, v, _, (fid2,) = run(impl, table, [client_syn(4, 2)])
    assert v == [d.V_NEW_FLOW] and table.flow(fid2).decision == "pending" and len(table) == 1
