"""The plan for a router without policy routing (macOS, Windows): main-table routes out of the TUN, no rules."""

import ipaddress

import pytest

from ztun.errors import RouteError
from ztun.system.route_plan import Route, RouteSpec, plan

BASE = dict(iface="utun7", inet4="198.18.0.1/30", inet6="fd00:18::1/126", table=2022, rule_priority=9000, fwmark=0x2022)


def main_plan(**kw):
    return plan(RouteSpec(**dict(BASE, **kw)), policy_routing=False)


def test_given_routes_and_the_tun_prefix_go_into_the_main_table():
    p = main_plan(routes=["198.19.0.0/16", "fd00:19::/64"])
    assert p.rules == ()
    assert [str(r) for r in p.routes] == ["198.19.0.0/16 dev utun7", "198.18.0.0/30 dev utun7",
                                          "fd00:19::/64 dev utun7", "fd00:18::/126 dev utun7"]
    assert {r.table for r in p.routes} == {254} and {r.kind for r in p.routes} == {"unicast"}


def test_a_prefix_inside_a_given_route_is_not_added_again():
    p = main_plan(routes=["198.16.0.0/12"], inet6=None)
    assert [r.cidr for r in p.routes] == [ipaddress.ip_network("198.16.0.0/12")]


def test_nothing_routed_nothing_planned():
    assert main_plan().routes == () and main_plan(inet6=None, routes=["fd00:19::/64"]).routes == ()


UPLINKS = (Route.of("0.0.0.0/0", "192.168.1.1", "en0"), Route.of("::/0", "fe80::1", "en1"))


def test_auto_route_takes_both_halves_and_exclusions_go_by_the_uplink():
    p = main_plan(auto_route=True, exclude_routes=["203.0.113.7/32", "2001:db8::/64"], uplinks=UPLINKS)
    assert p.rules == ()
    assert [str(r) for r in p.routes] == [
        "0.0.0.0/1 dev utun7", "128.0.0.0/1 dev utun7", "203.0.113.7/32 via 192.168.1.1 dev en0",
        "::/1 dev utun7", "8000::/1 dev utun7", "2001:db8::/64 via fe80::1 dev en1"]  # the halves hold the TUN's prefix


def test_an_exclusion_without_its_familys_uplink_and_strict_route_are_refused():
    with pytest.raises(RouteError, match="exclude_routes 2001:db8::/64: no IPv6 default route"):
        main_plan(auto_route=True, exclude_routes=["2001:db8::/64"], uplinks=UPLINKS[:1])
    with pytest.raises(RouteError, match="strict_route needs policy routing"):
        main_plan(auto_route=True, strict_route=True)
    # an exclusion of a family the TUN does not carry needs no route
    assert [str(r) for r in main_plan(inet6=None, auto_route=True, exclude_routes=["2001:db8::/64"]).routes] == [
        "0.0.0.0/1 dev utun7", "128.0.0.0/1 dev utun7"]


def test_the_spec_parses_plain_strings():
    spec = RouteSpec(**BASE, routes=("198.19.0.0/16",))
    assert spec.inet4 == ipaddress.ip_interface("198.18.0.1/30") and spec.routes == (ipaddress.ip_network("198.19.0.0/16"),)
    assert spec.prefix(6) == ipaddress.ip_interface("fd00:18::1/126")


def test_fail_closed_splits_each_prefix_into_the_tun_under_its_unreachable_route():
    p = main_plan(auto_route=True, fail_closed=True, routes=["198.19.0.0/16"], exclude_routes=["203.0.113.7/32"],
                  uplinks=UPLINKS, inet6=None)
    assert [str(r) for r in p.routes] == [
        "198.19.0.0/17 dev utun7", "198.19.128.0/17 dev utun7",
        "0.0.0.0/2 dev utun7", "64.0.0.0/2 dev utun7", "128.0.0.0/2 dev utun7", "192.0.0.0/2 dev utun7",
        "unreachable 198.19.0.0/16 metric 65535", "unreachable 0.0.0.0/1 metric 65535",
        "unreachable 128.0.0.0/1 metric 65535", "203.0.113.7/32 via 192.168.1.1 dev en0"]
    # each unreachable route is exactly the prefix its two TUN routes cover: those win while the TUN lives
    into = {r.cidr for r in p.routes if r.iface == "utun7"}
    for r in p.routes:
        if r.kind == "unreachable":
            assert r.iface is None and r.gateway is None and set(r.cidr.subnets(1)) <= into
    # the TUN's own prefix, outside what is routed, still goes in whole; IPv6 the same way
    p6 = main_plan(fail_closed=True, routes=["fd00:19::/64"], inet4=None)
    assert [str(r) for r in p6.routes] == ["fd00:19::/65 dev utun7", "fd00:19:0:0:8000::/65 dev utun7",
                                           "fd00:18::/126 dev utun7", "unreachable fd00:19::/64 metric 65535"]


def test_fail_closed_cannot_split_a_host_route():
    with pytest.raises(RouteError, match="fail_closed cannot keep 198.19.0.7/32 closed") as ei:
        main_plan(fail_closed=True, routes=["198.19.0.7/32", "198.20.0.0/16"])
    assert "fail_closed = false" in str(ei.value)
    assert [str(r) for r in main_plan(routes=["198.19.0.7/32"], inet6=None).routes] == [
        "198.19.0.7/32 dev utun7", "198.18.0.0/30 dev utun7"]  # fail-open takes it


def test_only_the_exclusions_follow_the_uplink():
    from ztun.appliance.gateway import via_uplink

    p = main_plan(auto_route=True, fail_closed=True, exclude_routes=["203.0.113.7/32", "2001:db8::/64"], uplinks=UPLINKS)
    assert [str(r) for r in via_uplink(p.routes, "utun7")] == ["203.0.113.7/32 via 192.168.1.1 dev en0",
                                                               "2001:db8::/64 via fe80::1 dev en1"]
