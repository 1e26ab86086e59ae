"""The Router protocol, and LinuxRouter's undo log over a stand-in netlink socket: exactly what it added goes away."""

import errno
import sys

import pytest

from ztun.errors import RouteError, ZtunError
from ztun.system import router as router_mod
from ztun.system.route_plan import RouteSpec, plan
from ztun.system.router import open_router

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pyroute2 router")


class FakeIPRoute:
    """Records netlink requests; `existing` holds what the system had before (adding it again gives EEXIST)."""

    def __init__(self, existing=()):
        from pyroute2.netlink.exceptions import NetlinkError

        self.NetlinkError = NetlinkError
        self.existing = set(existing)
        self.calls = []
        self.closed = False

    def link_lookup(self, ifname):
        return [7] if ifname == "zt0" else []

    def link(self, cmd, **kw):
        if cmd == "get":
            return [{"flags": 0, "IFLA_MTU": 1500}]
        self.calls.append(("link", cmd, tuple(sorted(kw.items()))))
        return []

    def _op(self, what, cmd, kw):
        key = (what, tuple(sorted((k, v) for k, v in kw.items())))
        if cmd == "add" and key in self.existing:
            raise self.NetlinkError(errno.EEXIST, "File exists")
        self.calls.append((what, cmd, key[1]))
        return []

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
    ipr = FakeIPRoute(existing=[pre])
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

    ipr = FakeIPRoute()
    r = LinuxRouter(ipr)
    assert r.add_route("198.19.0.0/16", iface="zt0", table=100)
    assert r.delete_route("198.19.0.0/16", iface="zt0", table=100)
    ipr.calls.clear()
    r.close()
    assert ipr.calls == []  # nothing left to undo
    with pytest.raises(RouteError):
        LinuxRouter(FakeIPRoute()).add_route("198.19.0.0/16", iface="nope0")


@linux
def test_route_kinds_checked():
    from ztun.system.router_linux import LinuxRouter

    with pytest.raises(RouteError, match="route kind"):
        LinuxRouter(FakeIPRoute()).add_route("198.19.0.0/16", kind="blackhole-ish")
