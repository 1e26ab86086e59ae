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


def test_an_exclusion_without_its_familys_uplink_is_refused():
    with pytest.raises(RouteError, match="exclude_routes 2001:db8::/64: no IPv6 default route"):
        main_plan(auto_route=True, exclude_routes=["2001:db8::/64"], uplinks=UPLINKS[:1])
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


MAIN = (Route.of("0.0.0.0/0", "192.168.1.1", "en0"), Route.of("192.168.1.0/24", None, "en0"),
        Route.of("10.0.0.0/8", "192.168.1.254", "en0"), Route.of("172.16.0.0/12", "192.168.1.254", "en0"),
        Route.of("172.16.5.0/24", "192.168.1.253", "en0"), Route.of("203.0.113.9/32", "192.168.1.1", "en0"),
        Route.of("198.51.100.0/24", "192.168.1.1", "en0", kind="unreachable"), Route.of("198.18.0.0/30", None, "utun7"),
        Route.of("0.0.0.0/1", "192.168.1.7", "en0"), Route.of("::/0", "fe80::1", "en1"),
        Route.of("2001:db8:5::/48", "fe80::1", "en1"), Route.of("fe80::/64", None, "en1"))


def test_strict_route_sends_mains_routes_via_a_gateway_into_the_tun_as_their_halves():
    p = main_plan(auto_route=True, strict_route=True, main_routes=MAIN, exclude_routes=["172.16.0.0/16"],
                  uplinks=UPLINKS)
    assert [str(r) for r in p.routes] == [
        "0.0.0.0/1 dev utun7", "128.0.0.0/1 dev utun7",
        "10.0.0.0/9 dev utun7", "10.128.0.0/9 dev utun7",  # 10/8 via .254: its halves win now
        "172.16.0.0/13 dev utun7", "172.24.0.0/13 dev utun7",  # 172.16/12 too (it holds the exclusion, which is /16)
        "0.0.0.0/2 dev utun7", "64.0.0.0/2 dev utun7",  # someone's 0/1 via a gateway: beaten by its halves
        "172.16.0.0/16 via 192.168.1.1 dev en0",  # excluded, and 172.16.5/24 inside it is left alone
        "::/1 dev utun7", "8000::/1 dev utun7", "2001:db8:5::/49 dev utun7", "2001:db8:5:8000::/49 dev utun7"]
    # connected prefixes (192.168.1/24, fe80::/64), default routes, unreachable ones and the TUN's own are not touched;
    # a host route via a gateway cannot be beaten by a longer prefix: it is named for the log
    from ztun.system.route_plan import main_kept

    spec = RouteSpec(**dict(BASE, auto_route=True, strict_route=True, main_routes=MAIN))
    assert [str(r) for r in main_kept(spec)] == ["203.0.113.9/32 via 192.168.1.1 dev en0"]
    assert main_kept(RouteSpec(**dict(BASE, auto_route=True, main_routes=MAIN))) == ()
    from ztun.system.route_plan import through_tun

    assert [str(r.cidr) for r in through_tun(spec, policy_routing=False)] == ["10.0.0.0/8", "172.16.0.0/12",
                                                                              "172.16.5.0/24", "0.0.0.0/1",
                                                                              "2001:db8:5::/48"]


def test_strict_route_makes_a_family_without_a_tun_address_unreachable():
    p = main_plan(auto_route=True, strict_route=True, inet6=None)
    assert [str(r) for r in p.routes] == ["0.0.0.0/1 dev utun7", "128.0.0.0/1 dev utun7",
                                          "unreachable ::/1 metric 65535", "unreachable 8000::/1 metric 65535"]
    assert [str(r) for r in main_plan(auto_route=True, inet6=None).routes] == ["0.0.0.0/1 dev utun7",
                                                                               "128.0.0.0/1 dev utun7"]


def test_strict_route_with_fail_closed():
    p = main_plan(auto_route=True, strict_route=True, fail_closed=True, inet6=None,
                  main_routes=(Route.of("10.0.0.0/8", "192.168.1.254", "en0"),))
    assert [str(r) for r in p.routes] == [
        "0.0.0.0/2 dev utun7", "64.0.0.0/2 dev utun7", "128.0.0.0/2 dev utun7", "192.0.0.0/2 dev utun7",
        "10.0.0.0/9 dev utun7", "10.128.0.0/9 dev utun7",
        "unreachable 0.0.0.0/1 metric 65535", "unreachable 128.0.0.0/1 metric 65535",
        "unreachable ::/1 metric 65535", "unreachable 8000::/1 metric 65535"]
