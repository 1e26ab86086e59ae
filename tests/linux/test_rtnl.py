"""ztun's rtnetlink client against the kernel, with pyroute2's IPRoute as the oracle, in a namespace of the test's own.

Each test runs one Python snippet inside the namespace (`ip netns exec`): ztun.system.rtnl
makes a change, pyroute2 (an independent netlink implementation) reads what the kernel
then holds, and the snippet prints both views as JSON for the asserts here.
"""

import json
import socket
import sys
import textwrap

import pytest

from conftest import need

pytest.importorskip("pyroute2", reason="pyroute2 is the oracle (pip install -e .[test])")

PRELUDE = """
import errno, json, socket
from pyroute2 import IPRoute
from ztun.system import rtnl as R

nl, ipr, out = R.Rtnl(), IPRoute(), {}
V4, V6 = socket.AF_INET, socket.AF_INET6

def code(call, *args, **kw):
    try:
        call(*args, **kw)
    except R.RtnlError as e:
        return errno.errorcode[e.errno]
    return "ok"

ROUTE_KEYS = ("table", "type", "proto", "scope", "dst", "dst_len", "oif", "gateway", "priority", "prefsrc")

def oracle_routes(family, proto=122):
    return sorted((dict(table=r.get("RTA_TABLE"), type=r["type"], proto=r["proto"], scope=r["scope"], dst=r.get("RTA_DST"),
                        dst_len=r["dst_len"], oif=r.get("RTA_OIF"), gateway=r.get("RTA_GATEWAY"),
                        priority=r.get("RTA_PRIORITY"), prefsrc=r.get("RTA_PREFSRC"))
                   for r in ipr.route("dump", family=family) if proto is None or r["proto"] == proto), key=str)

def our_routes(family, proto=122):
    return sorted((dict(table=r.get("RTA_TABLE"), type=r["type"], proto=r["proto"], scope=r["scope"], dst=r.get("RTA_DST"),
                        dst_len=r["dst_len"], oif=r.get("RTA_OIF"), gateway=r.get("RTA_GATEWAY"),
                        priority=r.get("RTA_PRIORITY"), prefsrc=r.get("RTA_PREFSRC"))
                   for r in nl.routes(family) if proto is None or r["proto"] == proto), key=str)

RULE_NLAS = ("FRA_PRIORITY", "FRA_TABLE", "FRA_GOTO", "FRA_IIFNAME", "FRA_SRC", "FRA_FWMARK", "FRA_FWMASK",
             "FRA_SUPPRESS_PREFIXLEN", "FRA_PROTOCOL")

def rule_view(msg, get):
    return dict(action=msg["action"], src_len=msg["src_len"], **{k: get(msg, k) for k in RULE_NLAS})

def oracle_rules(family):
    return sorted((rule_view(r, lambda m, k: m.get(k)) for r in ipr.get_rules(family=family)), key=str)

def our_rules(family):
    return sorted((rule_view(r, lambda m, k: m.get(k)) for r in nl.rules(family)), key=str)
"""


def run(netns, body: str, setup: str = "") -> dict:
    r = netns.python(PRELUDE + setup + textwrap.dedent(body) + "\nprint(json.dumps(out))\n")
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def ns(netns):
    """The namespace with a veth pair d0/d1 (both ends inside), d0 up with 198.18.0.1/30 and fd00:18::1/126."""
    netns.ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")
    netns.ip("link", "set", "d0", "up")
    netns.ip("addr", "add", "198.18.0.1/30", "dev", "d0")
    netns.ip("addr", "add", "fd00:18::1/126", "dev", "d0", "nodad")
    return netns


def test_links(ns):
    got = run(ns, """
        idx = nl.link_index("d1")
        out["index"] = [idx, ipr.link_lookup(ifname="d1")[0]]
        nl.set_link(idx, mtu=1400, up=True)
        link = ipr.link("get", index=idx)[0]
        out["after_up"] = [link.get("IFLA_MTU"), link["flags"] & 1]
        ours = nl.get_link(idx)
        out["ours"] = [ours["IFLA_MTU"], ours["flags"] & 1, ours["IFLA_IFNAME"], ours["index"]]
        nl.set_link(idx, up=False)
        link = ipr.link("get", index=idx)[0]
        out["after_down"] = [link.get("IFLA_MTU"), link["flags"] & 1]
        out["missing"] = [nl.link_index("nope0"), nl.link_index("x" * 20), nl.link_index("")]
        out["errors"] = [code(nl.get_link, 99999), code(nl.set_link, 99999, mtu=1400), code(nl.set_link, idx, mtu=10 ** 6)]
    """)
    assert got["index"][0] == got["index"][1]
    assert got["after_up"] == [1400, 1]
    assert got["ours"] == [1400, 1, "d1", got["index"][0]]
    assert got["after_down"] == [1400, 0]
    assert got["missing"] == [None, None, None]
    assert got["errors"] == ["ENODEV", "ENODEV", "EINVAL"]


def test_addresses(ns):
    got = run(ns, """
        idx = nl.link_index("d1")
        nl.addr("add", index=idx, address="198.18.0.5", prefixlen=30)
        nl.addr("add", index=idx, address="fd00:18::5", prefixlen=126, flags=R.IFA_F_NODAD)
        out["oracle"] = sorted([a["prefixlen"], a.get("IFA_LOCAL"), a.get("IFA_ADDRESS"), a.get("IFA_LABEL"),
                                bool(a.get("IFA_FLAGS", a["flags"]) & R.IFA_F_NODAD)] for a in ipr.get_addr(index=idx)
                               if a.get("IFA_ADDRESS", "").startswith(("198.18.", "fd00:")))
        view = lambda a: [a["family"], a["index"], a["prefixlen"], a.get("IFA_ADDRESS"), a.get("IFA_LOCAL"), a.get("IFA_LABEL")]
        out["same_dump"] = [sorted(map(view, nl.addresses(f))) == sorted(map(view, ipr.get_addr(family=f))) for f in (V4, V6)]
        out["again"] = [code(nl.addr, "add", index=idx, address="198.18.0.5", prefixlen=30),
                        code(nl.addr, "add", index=idx, address="fd00:18::5", prefixlen=126)]
        nl.addr("del", index=idx, address="198.18.0.5", prefixlen=30)
        nl.addr("del", index=idx, address="fd00:18::5", prefixlen=126)
        out["left"] = [a.get("IFA_ADDRESS") for a in ipr.get_addr(index=idx) if a.get("IFA_ADDRESS", "").startswith(("198.18.", "fd00:"))]
        out["gone"] = [code(nl.addr, "del", index=idx, address="198.18.0.5", prefixlen=30),
                       code(nl.addr, "del", index=idx, address="fd00:18::5", prefixlen=126)]
    """)
    assert got["oracle"] == [[30, "198.18.0.5", "198.18.0.5", "d1", False], [126, None, "fd00:18::5", None, True]]
    assert got["same_dump"] == [True, True]
    assert got["again"] == ["EEXIST", "EEXIST"]
    assert got["left"] == []
    assert got["gone"] == ["EADDRNOTAVAIL", "EADDRNOTAVAIL"]


ROUTES = """
d0 = nl.link_index("d0")
ROUTES = [  # (rtnl.route keywords, what the oracle must then read)
    (dict(family=V4, dst="198.19.0.0", dst_len=16, table=100, type=R.RTN_UNICAST, oif=d0), {}),
    (dict(family=V4, dst="198.19.1.0", dst_len=24, type=R.RTN_UNICAST, gateway="198.18.0.2", priority=50), dict(table=254, oif=d0)),
    (dict(family=V4, dst="198.19.2.0", dst_len=24, table=70000, type=R.RTN_UNREACHABLE), {}),
    (dict(family=V4, dst="198.19.3.0", dst_len=24, table=300, type=R.RTN_THROW, priority=7), {}),
    (dict(family=V4, dst_len=0, table=100000, type=R.RTN_UNICAST, gateway="198.18.0.2", oif=d0, prefsrc="198.18.0.1"),
     dict(dst=None)),
    (dict(family=V6, dst="fd00:19::", dst_len=64, table=100, type=R.RTN_UNICAST, oif=d0), dict(priority=1024)),
    (dict(family=V6, dst="fd00:1a::", dst_len=64, table=70000, type=R.RTN_UNREACHABLE, priority=10), dict(oif=1)),
    (dict(family=V6, dst="fd00:1b::", dst_len=64, table=300, type=R.RTN_THROW), dict(oif=1, priority=1024)),
    (dict(family=V6, dst="fd00:1c::", dst_len=64, type=R.RTN_UNICAST, gateway="fd00:18::2", oif=d0, priority=5),
     dict(table=254)),
]
"""


def test_routes_of_each_type(ns):
    ns.ip("route", "add", "198.19.9.0/24", "dev", "d0", "table", "300")  # untagged, scope link: ip's, not rtnl's
    got = run(ns, setup=ROUTES, body="""
        for kw, _ in ROUTES:
            nl.route("add", proto=122, **kw)
        out["expected"] = sorted((dict(dict(table=None, type=None, proto=122, scope=0, dst=None, dst_len=None, oif=None,
                                            gateway=None, priority=None, prefsrc=None), **kw, **seen)
                                  for kw, seen in ROUTES), key=str)
        for e in out["expected"]:
            e.pop("family")
        out["oracle"] = oracle_routes(V4) + oracle_routes(V6)
        out["same_dump"] = [our_routes(f, None) == oracle_routes(f, None) for f in (V4, V6)]
        out["again"] = [code(nl.route, "add", proto=122, **kw) for kw, _ in ROUTES]
        out["deleted"] = [code(nl.route, "del", **kw) for kw, _ in ROUTES]
        out["left"] = oracle_routes(V4) + oracle_routes(V6)
        out["gone"] = [code(nl.route, "del", **kw) for kw, _ in ROUTES]
        out["ip_route"] = code(nl.route, "del", family=V4, dst="198.19.9.0", dst_len=24, table=300, oif=d0)
        out["ip_route_left"] = oracle_routes(V4, None)
    """)
    assert len(got["expected"]) == 9
    for e in got["expected"]:  # the table's own default: 254 when none was given
        e["table"] = e["table"] or 254
    assert _texts(got["oracle"]) == _texts(got["expected"])
    assert got["same_dump"] == [True, True]
    assert got["again"] == ["EEXIST"] * 9
    assert got["deleted"] == ["ok"] * 9 and got["left"] == []
    assert got["gone"] == ["ESRCH"] * 9
    assert got["ip_route"] == "ok" and not [r for r in got["ip_route_left"] if r["dst"] == "198.19.9.0"]


def _texts(routes) -> list:
    """Routes as sorted JSON texts, to compare in any order (with a readable diff)."""
    return sorted(json.dumps(r, sort_keys=True) for r in routes)


RULES = """
RULES = [  # rtnl.rule keywords; the oracle must read each field back
    dict(action=R.FR_ACT_TO_TBL, priority=9000, table=3033, fwmark=0x2022, fwmask=0xFFFFFFFF, protocol=122),
    dict(action=R.FR_ACT_GOTO, priority=9001, goto=9009, iifname="d0", protocol=122),
    dict(action=R.FR_ACT_UNREACHABLE, priority=9002, src=SRC, src_len=SRC_LEN, protocol=122),
    dict(action=R.FR_ACT_TO_TBL, priority=9003, table=254, suppress_prefixlen=0, protocol=122),
    dict(action=R.FR_ACT_TO_TBL, priority=9004, table=70000, fwmark=0x10, fwmask=0xF0),
    dict(action=R.FR_ACT_NOP, priority=9009, protocol=122),
]
"""


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_rules_with_each_field(ns, family):
    src = ("198.18.0.0", 30) if family == socket.AF_INET else ("fd00:18::", 126)
    got = run(ns, setup=f"FAMILY, SRC, SRC_LEN = {int(family)}, {src[0]!r}, {src[1]}\n" + RULES, body="""
        for kw in RULES:
            nl.rule("add", family=FAMILY, **kw)
        ours = [r for r in oracle_rules(FAMILY) if 9000 <= (r["FRA_PRIORITY"] or 0) <= 9009]
        out["oracle"] = sorted(ours, key=lambda r: r["FRA_PRIORITY"])
        out["same_dump"] = our_rules(FAMILY) == oracle_rules(FAMILY)
        out["again"] = [code(nl.rule, "add", family=FAMILY, **kw) for kw in RULES]
        out["deleted"] = [code(nl.rule, "del", family=FAMILY, **kw) for kw in RULES]
        out["left"] = [r for r in oracle_rules(FAMILY) if 9000 <= (r["FRA_PRIORITY"] or 0) <= 9009]
        out["gone"] = [code(nl.rule, "del", family=FAMILY, **kw) for kw in RULES]
    """)
    by_prio = {r["FRA_PRIORITY"]: r for r in got["oracle"]}
    assert sorted(by_prio) == [9000, 9001, 9002, 9003, 9004, 9009]
    assert by_prio[9000]["action"] == 1 and by_prio[9000]["FRA_TABLE"] == 3033
    assert (by_prio[9000]["FRA_FWMARK"], by_prio[9000]["FRA_FWMASK"]) == (0x2022, 0xFFFFFFFF)
    assert by_prio[9001]["action"] == 2 and by_prio[9001]["FRA_GOTO"] == 9009 and by_prio[9001]["FRA_IIFNAME"] == "d0"
    assert by_prio[9002]["action"] == 7 and (by_prio[9002]["FRA_SRC"], by_prio[9002]["src_len"]) == src
    assert by_prio[9003]["FRA_TABLE"] == 254 and by_prio[9003]["FRA_SUPPRESS_PREFIXLEN"] == 0
    assert by_prio[9004]["FRA_TABLE"] == 70000 and (by_prio[9004]["FRA_FWMARK"], by_prio[9004]["FRA_FWMASK"]) == (0x10, 0xF0)
    assert by_prio[9009]["action"] == 3
    assert [r["FRA_PROTOCOL"] for r in got["oracle"]] == [122, 122, 122, 122, 0, 122]
    assert got["same_dump"] is True
    assert got["again"] == ["EEXIST"] * 6
    assert got["deleted"] == ["ok"] * 6 and got["left"] == []
    assert got["gone"] == ["ENOENT"] * 6


def test_changes_as_nobody_are_eperm(ns):
    need("setpriv", "util-linux")
    user = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    probe = ns.run(*user, sys.executable, "-c", "import ztun.system.rtnl", check=False)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this Python/checkout: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    code = textwrap.dedent("""
        import errno, json, socket
        from ztun.system import rtnl as R

        nl, out, V4 = R.Rtnl(), {}, socket.AF_INET

        def code(call, *args, **kw):
            try:
                call(*args, **kw)
            except R.RtnlError as e:
                return errno.errorcode[e.errno]
            return "ok"

        out["route"] = code(nl.route, "add", family=V4, dst="198.19.0.0", dst_len=16, type=R.RTN_THROW, table=300)
        out["rule"] = code(nl.rule, "add", family=V4, action=R.FR_ACT_NOP, priority=9009)
        out["addr"] = code(nl.addr, "add", index=nl.link_index("d1"), address="198.18.0.9", prefixlen=30)
        out["mtu"] = code(nl.set_link, nl.link_index("d1"), mtu=1400)
        out["dumps"] = [len(nl.rules(V4)) > 0, len(nl.routes(V4)) > 0]
        print(json.dumps(out))
    """)
    r = ns.run(*user, sys.executable, "-c", code)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"route": "EPERM", "rule": "EPERM", "addr": "EPERM", "mtu": "EPERM", "dumps": [True, True]}
    assert "198.19.0.0" not in ns.ip("route", "show", "table", "all")
