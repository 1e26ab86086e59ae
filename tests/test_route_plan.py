"""The routes and policy rules computed for each mode, checked rule by rule (no system calls)."""

from ztun.system.route_plan import Route, RouteSpec, Rule, plan

BASE = dict(iface="zt0", inet4="198.18.0.1/30", inet6="fd00:18::1/126", table=100, rule_priority=500, fwmark=0x77)


def lines(p):
    return [str(r) for r in p.routes], [str(r) for r in p.rules]


def test_nothing_routed_means_no_rules():
    assert plan(RouteSpec(**BASE)) == plan(RouteSpec(**dict(BASE, inet6=None)))
    assert plan(RouteSpec(**BASE)).rules == () and plan(RouteSpec(**BASE)).routes == ()


def test_route_mode():
    routes, rules = lines(plan(RouteSpec(**BASE, routes=["198.19.0.0/16"], exclude_routes=["198.19.5.0/24"])))
    assert routes == ["198.19.0.0/16 dev zt0 table 100", "throw 198.19.5.0/24 table 100"]
    assert rules == [
        "ip rule 509: from all nop",
        "ip rule 500: from all fwmark 0x77 goto 509",
        "ip rule 501: from all iif zt0 goto 509",
        "ip rule 502: from all lookup 100",
    ]


def test_route_mode_both_families():
    p = plan(RouteSpec(**BASE, routes=["198.19.0.0/16", "fd00:19::/64"]))
    assert {r.family for r in p.rules} == {4, 6}
    assert [str(r) for r in p.routes] == ["198.19.0.0/16 dev zt0 table 100", "fd00:19::/64 dev zt0 table 100"]


def test_auto_route():
    routes, rules = lines(plan(RouteSpec(**BASE, auto_route=True, exclude_routes=["198.19.5.0/24"])))
    assert routes == ["0.0.0.0/0 dev zt0 table 100", "throw 198.19.5.0/24 table 100", "::/0 dev zt0 table 100"]
    assert rules == [
        "ip rule 509: from all nop",
        "ip -6 rule 509: from all nop",
        "ip rule 500: from all fwmark 0x77 goto 509",
        "ip rule 501: from all iif zt0 goto 509",
        "ip rule 502: from all lookup 100 suppress_prefixlength 0",
        "ip rule 503: from all lookup main suppress_prefixlength 0",
        "ip rule 504: from 198.18.0.0/30 iif lo lookup 100",
        "ip rule 505: from 0.0.0.0/32 iif lo lookup 100",
        "ip rule 506: from all iif lo goto 509",
        "ip rule 507: from all lookup 100",
        "ip -6 rule 500: from all fwmark 0x77 goto 509",
        "ip -6 rule 501: from all iif zt0 goto 509",
        "ip -6 rule 502: from all lookup 100 suppress_prefixlength 0",
        "ip -6 rule 503: from all lookup main suppress_prefixlength 0",
        "ip -6 rule 504: from fd00:18::/126 iif lo lookup 100",
        "ip -6 rule 506: from ::/1 iif lo goto 509",
        "ip -6 rule 506: from 8000::/1 iif lo goto 509",
        "ip -6 rule 507: from all lookup 100",
    ]


def test_strict_route_blocks_the_family_without_address():
    p = plan(RouteSpec(**dict(BASE, inet6=None), auto_route=True, strict_route=True))
    six = [str(r) for r in p.rules if r.family == 6]
    assert six == ["ip -6 rule 509: from all nop", "ip -6 rule 500: from all fwmark 0x77 goto 509", "ip -6 rule 501: from all unreachable"]
    assert not [r for r in p.routes if r.family == 6]


def test_without_strict_route_the_other_family_is_left_alone():
    p = plan(RouteSpec(**dict(BASE, inet6=None), auto_route=True))
    assert {r.family for r in p.rules} == {4}


def test_every_goto_lands_on_a_nop_added_before_it():
    p = plan(RouteSpec(**BASE, auto_route=True))
    for fam in (4, 6):
        rules = [r for r in p.rules if r.family == fam]
        nops = {r.priority for r in rules if r.action == "nop"}
        first_goto = min(i for i, r in enumerate(rules) if r.action == "goto")
        assert all(r.goto in nops for r in rules if r.action == "goto")
        assert all(r.action == "nop" for r in rules[:first_goto]) and nops
    assert all(r.priority in range(500, 510) for r in p.rules)


def test_specs_are_values():
    assert Route.__hash__ and Rule(4, 1, "nop") == Rule(4, 1, "nop")


def test_strict_rp_filter_sources_resolve_through_main():
    from ztun.system import route_plan

    opts = RouteSpec(iface="zt0", inet4="198.18.0.1/30", inet6="fd00:18::1/126", routes=("198.19.0.0/16",),
                     table=2022, rule_priority=9000, fwmark=0x2022)
    rules = [str(r) for r in route_plan.plan(opts, rp_sources=["198.18.10.1"]).rules]
    assert "ip rule 9001: from 198.18.10.1/32 iif lo goto 9009" in rules
    assert not any("iif lo" in r for r in rules if r.startswith("ip -6"))  # IPv6 has no rp_filter
    assert rules.index("ip rule 9001: from 198.18.10.1/32 iif lo goto 9009") > rules.index("ip rule 9009: from all nop")


MAIN = (Route.of("198.18.3.0/24", None, "eth0"), Route.of("0.0.0.0/0", "198.18.3.2", "eth0"),
        Route.of("198.19.77.0/24", "198.18.3.9", "eth0"), Route.of("fd00:3::/64", None, "eth0"),
        Route.of("fd00:77::/64", "fd00:3::9", "eth0"), Route.of("198.18.0.0/30", None, "zt0"))


def test_fail_closed_route_mode_keeps_an_unreachable_twin_of_each_route():
    routes, rules = lines(plan(RouteSpec(**BASE, routes=["198.19.0.0/16"], exclude_routes=["198.19.5.0/24"], fail_closed=True)))
    assert routes == ["198.19.0.0/16 dev zt0 table 100", "unreachable 198.19.0.0/16 table 100 metric 65535",
                      "throw 198.19.5.0/24 table 100"]
    assert "ip rule 502: from all lookup 100" in rules  # the rules are route mode's, unchanged


def test_fail_closed_auto_route_looks_up_given_routes_by_prefix_not_with_suppress():
    # T's unreachable default would fail a `lookup T suppress_prefixlength 0` before the suppress is looked at,
    # after a crash refusing the LAN too: the given routes get a rule each instead.
    p = plan(RouteSpec(**dict(BASE, inet6=None), auto_route=True, routes=["198.19.0.0/16"], fail_closed=True))
    routes, rules = lines(p)
    assert "unreachable 0.0.0.0/0 table 100 metric 65535" in routes and "0.0.0.0/0 dev zt0 table 100" in routes
    assert "ip rule 502: from all to 198.19.0.0/16 lookup 100" in rules
    assert not any("lookup 100 suppress_prefixlength" in r for r in rules)
    assert "ip rule 503: from all lookup main suppress_prefixlength 0" in rules


def test_strict_route_lets_only_connected_prefixes_and_the_tun_prefix_reach_main():
    p = plan(RouteSpec(**BASE, auto_route=True, strict_route=True, fail_closed=True, main_routes=MAIN))
    rules = [r for r in lines(p)[1] if r.split(":")[0].endswith("503")]
    assert rules == ["ip rule 503: from all to 198.18.3.0/24 lookup main", "ip rule 503: from all to 198.18.0.0/30 lookup main",
                     "ip -6 rule 503: from all to fd00:3::/64 lookup main", "ip -6 rule 503: from all to fd00:18::/126 lookup main"]


def test_hijack_dns_sends_port_53_into_the_tun_before_main_under_auto_route_only():
    rules = lines(plan(RouteSpec(**dict(BASE, inet6=None), auto_route=True, hijack_dns=True)))[1]
    assert [r for r in rules if "dport" in r] == ["ip rule 502: from all ipproto udp dport 53 lookup 100", "ip rule 502: from all ipproto tcp dport 53 lookup 100"]
    assert not any("dport" in r for r in lines(plan(RouteSpec(**BASE, routes=["198.19.0.0/16"], hijack_dns=True)))[1])


def test_bypassing_names_main_routes_and_strict_keeps_only_connected_ones():
    from ztun.system.route_plan import bypassing, through_tun

    spec = RouteSpec(**BASE, auto_route=True, main_routes=MAIN)
    assert [str(r) for r in bypassing(spec)] == ["198.18.3.0/24 dev eth0", "198.19.77.0/24 via 198.18.3.9 dev eth0",
                                                 "fd00:3::/64 dev eth0", "fd00:77::/64 via fd00:3::9 dev eth0"]
    strict = RouteSpec(**BASE, auto_route=True, strict_route=True, main_routes=MAIN)
    assert [str(r) for r in bypassing(strict)] == ["198.18.3.0/24 dev eth0", "fd00:3::/64 dev eth0"]
    assert [str(r) for r in through_tun(strict)] == ["198.19.77.0/24 via 198.18.3.9 dev eth0", "fd00:77::/64 via fd00:3::9 dev eth0"]
    assert bypassing(RouteSpec(**BASE, routes=["198.19.0.0/16"], main_routes=MAIN)) == ()
    assert [r.family for r in bypassing(RouteSpec(**dict(BASE, inet6=None), auto_route=True, main_routes=MAIN))] == [4, 4]


def test_outbound_interface_replaces_the_fwmark_rule_with_oif():
    """With ztun's sockets bound to the uplink, P+0 matches that interface instead of the mark, in every family
    (strict_route's family without an address too)."""
    spec = RouteSpec(**dict(BASE, inet6=None), auto_route=True, strict_route=True, outbound_interface="eth0")
    rules = [str(r) for r in plan(spec).rules if r.priority == 500]
    assert rules == ["ip rule 500: from all oif eth0 goto 509", "ip -6 rule 500: from all oif eth0 goto 509"]
    assert not any(r.fwmark for r in plan(spec).rules)
