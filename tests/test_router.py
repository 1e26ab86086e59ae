"""The Router protocol, and LinuxRouter's undo log over a stand-in netlink socket: exactly what it added goes away."""

import errno
import socket
import sys

import pytest

from ztun.errors import RouteError, ZtunError
from ztun.system import router as router_mod
from ztun.system.route_plan import RouteSpec, plan
from ztun.system.router import open_router

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the Linux router (netlink)")


class FakeRtnl:
    """Stands in for ztun.system.rtnl.Rtnl: records requests; `existing` holds what the system had before (adding it again gives EEXIST)."""

    def __init__(self, existing=()):
        from ztun.system.rtnl import RtnlError

        self.NetlinkError = RtnlError
        self.existing = set(existing)
        self.calls = []
        self.closed = False

    def link_index(self, name):
        return 7 if name == "zt0" else None

    def get_link(self, index):
        return {"flags": 0, "IFLA_MTU": 1500}

    def set_link(self, index, **kw):
        self.calls.append(("link", "set", tuple(sorted(dict(kw, index=index).items()))))

    def _op(self, what, cmd, kw):
        key = (what, tuple(sorted((k, v) for k, v in kw.items())))
        if cmd == "add" and key in self.existing:
            raise self.NetlinkError(errno.EEXIST)
        self.calls.append((what, cmd, key[1]))

    def addr(self, cmd, **kw):
        return self._op("addr", cmd, kw)

    def route(self, cmd, **kw):
        return self._op("route", cmd, kw)

    def rule(self, cmd, **kw):
        return self._op("rule", cmd, kw)

    def close(self):
        self.closed = True


def test_unsupported_platform_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(router_mod.sys, "platform", "plan9")
    with pytest.raises(ZtunError, match="no router for platform 'plan9'"):
        open_router()


@linux
def test_close_undoes_exactly_what_was_added_newest_first():
    from ztun.system.router_linux import IFA_F_NODAD, LinuxRouter

    pre = ("addr", (("address", "198.18.0.1"), ("index", 7), ("prefixlen", 30)))  # there before ztun
    ipr = FakeRtnl(existing=[pre])
    r = LinuxRouter(ipr)
    r.set_link("zt0", mtu=9000)
    assert r.add_address("zt0", "198.18.0.1/30") is False
    assert r.add_address("zt0", "fd00:18::1/126") is True
    r.set_link("zt0", up=True)
    p = plan(RouteSpec(iface="zt0", inet4="198.18.0.1/30", inet6="fd00:18::1/126", routes=["198.19.0.0/16"],
                       table=2022, rule_priority=9000, fwmark=0x2022))
    for item in p.routes + p.rules:
        assert r.add(item) is True
    added = [c for c in ipr.calls if c[1] in ("add", "set")]
    ipr.calls.clear()
    r.close()
    r.close()  # idempotent
    assert ipr.closed
    undone = ipr.calls
    assert len(undone) == len(added)
    # Each undo mirrors one change, in reverse order; the pre-existing address is not touched.
    for (what_a, cmd_a, kw_a), (what_u, cmd_u, kw_u) in zip(reversed(added), undone):
        assert what_a == what_u
        if what_a == "link":
            assert cmd_u == "set"
        else:
            assert cmd_u == "del" and {k: v for k, v in kw_a if k != "flags"} == {k: v for k, v in kw_u}
    assert all(c[2] != pre[1] for c in undone)
    assert ("addr", "add", (("address", "fd00:18::1"), ("flags", IFA_F_NODAD), ("index", 7), ("prefixlen", 126))) in added
    assert undone[-1] == ("link", "set", (("index", 7), ("mtu", 1500)))


@linux
def test_deleted_route_is_not_undone():
    from ztun.system.router_linux import LinuxRouter

    ipr = FakeRtnl()
    r = LinuxRouter(ipr)
    assert r.add_route("198.19.0.0/16", iface="zt0", table=100)
    assert r.delete_route("198.19.0.0/16", iface="zt0", table=100)
    ipr.calls.clear()
    r.close()
    assert ipr.calls == []  # nothing left to undo
    with pytest.raises(RouteError):
        LinuxRouter(FakeRtnl()).add_route("198.19.0.0/16", iface="nope0")


@linux
def test_route_kinds_checked():
    from ztun.system.router_linux import LinuxRouter

    with pytest.raises(RouteError, match="route kind"):
        LinuxRouter(FakeRtnl()).add_route("198.19.0.0/16", kind="blackhole-ish")


@linux
def test_routes_and_rules_carry_ztuns_protocol_number():
    from ztun.system.router_linux import ZTUN_PROTO, LinuxRouter

    ipr = FakeRtnl()
    r = LinuxRouter(ipr)
    p = plan(RouteSpec(iface="zt0", inet4="198.18.0.1/30", routes=["198.19.0.0/16"], exclude_routes=["198.19.5.0/24"],
                       table=3033, rule_priority=8000, fwmark=0x2022))
    for item in p.routes + p.rules:
        r.add(item)
    r.close()
    for what, cmd, kw in ipr.calls:
        assert dict(kw)["proto" if what == "route" else "protocol"] == ZTUN_PROTO, (what, cmd, kw)
    assert len(ipr.calls) == 2 * (len(p.routes) + len(p.rules))


class DumpingRtnl(FakeRtnl):
    """FakeRtnl whose dumps return `rules` and `routes` (dicts as rtnl decodes them); `refuse` is del's errno."""

    def __init__(self, rules=(), routes=(), attached=(), refuse=None):
        super().__init__()
        self.rules_, self.routes_, self.attached, self.refuse = list(rules), list(routes), set(attached), refuse

    def link_index(self, name):
        return {"zt0": 7, "zt1": 8}.get(name)

    def get_link(self, index):
        name = {7: "zt0", 8: "zt1"}[index]
        return {"flags": 1, "IFLA_LINKINFO": {"IFLA_INFO_KIND": "tun"}, "IFLA_CARRIER": int(name in self.attached)}

    def rules(self, family):
        return [m for m in self.rules_ if m["family"] == family]

    def routes(self, family):
        return [m for m in self.routes_ if m["family"] == family]

    def _op(self, what, cmd, kw):
        if cmd == "del" and self.refuse:
            raise self.NetlinkError(self.refuse)
        return super()._op(what, cmd, kw)


def rule_msg(prio, proto, action=3, **nla):
    return {"family": socket.AF_INET, "FRA_PRIORITY": prio, "FRA_PROTOCOL": proto, "action": action, **nla}


def route_msg(dst, table, proto, oif=None):
    return {"family": socket.AF_INET, "RTA_DST": dst, "dst_len": 24, "RTA_TABLE": table, "table": 252, "type": 9,
            "proto": proto, "RTA_OIF": oif}


@linux
def test_leftovers_are_found_by_tag_and_a_running_ztuns_are_kept():
    from ztun.system.router_linux import ZTUN_PROTO, LinuxRouter

    tag = ZTUN_PROTO
    rules = [
        rule_msg(0, 2, action=1, FRA_TABLE=255),  # the kernel's own
        rule_msg(8001, tag, action=2, FRA_IIFNAME="zt0", FRA_GOTO=8009),  # a crashed run (zt0 not held open)
        rule_msg(8002, tag, action=1, FRA_TABLE=3033),
        rule_msg(8009, tag),
        rule_msg(7001, tag, action=2, FRA_IIFNAME="zt1", FRA_GOTO=7009),  # a running one (zt1 held open)
        rule_msg(7002, tag, action=1, FRA_TABLE=4044),
        rule_msg(7009, tag),
        rule_msg(9004, 0),  # an older run's, untagged, in the priorities asked for
        rule_msg(8500, 0, action=1, FRA_TABLE=3033),  # not ztun's
    ]
    routes = [route_msg("198.19.5.0", 3033, tag), route_msg("198.19.6.0", 4044, tag),
              route_msg("198.19.7.0", 4044, tag, oif=8), route_msg("198.19.8.0", 2022, 4),
              route_msg("198.19.9.0", 5055, 4)]
    ipr = DumpingRtnl(rules, routes, attached={"zt1"})
    assert LinuxRouter(ipr).remove_leftovers(2022, range(9000, 9010)) == 6
    gone = {(what, dict(kw).get("priority") or dict(kw)["dst"]) for what, cmd, kw in ipr.calls if cmd == "del"}
    assert gone == {("rule", 8001), ("rule", 8002), ("rule", 8009), ("rule", 9004),
                    ("route", "198.19.5.0"), ("route", "198.19.8.0")}


@linux
def test_leftovers_without_privilege_are_one_plain_line():
    from ztun.system.router_linux import ZTUN_PROTO, LinuxRouter

    ipr = DumpingRtnl([rule_msg(9001, 0, action=2, FRA_IIFNAME="zt0", FRA_GOTO=9009, FRA_SRC="198.18.0.0", src_len=30),
                          rule_msg(8005, ZTUN_PROTO)], refuse=errno.EPERM)
    with pytest.raises(RouteError) as e:
        LinuxRouter(ipr).remove_leftovers(2022, range(9000, 9010))
    assert "needs root or CAP_NET_ADMIN" in str(e.value) and e.value.errno == errno.EPERM
    assert "{" not in str(e.value) and "\n" not in str(e.value)


@linux
def test_fail_closed_twins_strict_and_dns_rules_reach_netlink_exactly():
    from ztun.system.route_plan import Route
    from ztun.system.router_linux import LinuxRouter

    ipr = FakeRtnl()
    r = LinuxRouter(ipr)
    main = (Route.of("198.18.3.0/24", None, "eth0"),)
    p = plan(RouteSpec(iface="zt0", inet4="198.18.0.1/30", inet6=None, auto_route=True, strict_route=True, fail_closed=True,
                       hijack_dns=True, routes=["198.19.0.0/16"], main_routes=main, table=3033, rule_priority=8000,
                       fwmark=0x2022))
    for item in p.routes + p.rules:
        r.add(item)
    sent = [dict(kw) for what, cmd, kw in ipr.calls if cmd == "add"]
    assert {"dst": "0.0.0.0", "dst_len": 0, "type": 7, "priority": 0xFFFF, "table": 3033}.items() <= sent[3].items(), sent[3]
    assert "oif" not in sent[3]
    assert any(kw.get("ip_proto") == 17 and kw.get("dport_range") == (53, 53) and kw["table"] == 3033 for kw in sent)
    assert any(kw.get("dst") == "198.18.3.0" and kw.get("dst_len") == 24 and kw.get("priority") == 8003 for kw in sent)
    assert any(kw.get("dst") == "198.19.0.0" and kw.get("dst_len") == 16 and kw.get("priority") == 8002 for kw in sent)
    r.close()
    deleted = [dict(kw) for what, cmd, kw in ipr.calls if cmd == "del"]
    assert sorted(map(sorted, map(dict.items, deleted))) == sorted(map(sorted, map(dict.items, sent)))  # exactly undone
