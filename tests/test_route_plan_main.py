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
    with pytest.raises(RouteError, match="strict_route needs Linux policy routing"):
        main_plan(auto_route=True, strict_route=True)
    # an exclusion of a family the TUN does not carry needs no route
    assert [str(r) for r in main_plan(inet6=None, auto_route=True, exclude_routes=["2001:db8::/64"]).routes] == [
        "0.0.0.0/1 dev utun7", "128.0.0.0/1 dev utun7"]


def test_the_spec_parses_plain_strings():
    spec = RouteSpec(**BASE, routes=("198.19.0.0/16",))
    assert spec.inet4 == ipaddress.ip_interface("198.18.0.1/30") and spec.routes == (ipaddress.ip_network("198.19.0.0/16"),)
    assert spec.prefix(6) == ipaddress.ip_interface("fd00:18::1/126")
