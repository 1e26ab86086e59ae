"""The plan for a router without policy routing (macOS, Windows): main-table routes out of the TUN, no rules."""

import ipaddress

import pytest

from ztun.errors import RouteError
from ztun.system.route_plan import RouteSpec, plan

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


@pytest.mark.parametrize("kw", [dict(auto_route=True), dict(routes=["198.19.0.0/16"], exclude_routes=["198.19.5.0/24"])])
def test_auto_route_and_exclusions_need_policy_routing(kw):
    field = "auto_route" if "auto_route" in kw else "exclude_routes"
    with pytest.raises(RouteError, match=f"{field} needs Linux policy routing for now"):
        main_plan(**kw)


def test_the_spec_parses_plain_strings():
    spec = RouteSpec(**BASE, routes=("198.19.0.0/16",))
    assert spec.inet4 == ipaddress.ip_interface("198.18.0.1/30") and spec.routes == (ipaddress.ip_network("198.19.0.0/16"),)
    assert spec.prefix(6) == ipaddress.ip_interface("fd00:18::1/126")
