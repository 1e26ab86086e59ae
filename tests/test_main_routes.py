"""macOS and Windows read their routing table (for strict_route): a NET_RT_DUMP's bytes and GetIpForwardTable2's rows,
and strict_route's plan from what they read."""

import errno
import ipaddress
import socket

import pytest
from route_fakes import FakeIfconfig, FakeRouteKernel

from ztun.errors import RouteError
from ztun.system import iphlpapi as ip
from ztun.system import iphlpapi_types as t
from ztun.system import route_socket as rs
from ztun.system.darwin_sockaddr import LinkAddr
from ztun.system.route_plan import Route, RouteSpec, plan

A = ipaddress.ip_address
UP, GW, HOST, STATIC = rs.RTF_UP, rs.RTF_GATEWAY, rs.RTF_HOST, rs.RTF_STATIC
CLONING = 0x100


def entry(flags, dst, gateway=None, netmask=None, index=0):
    addrs = {rs.RTAX_DST: A(dst)}
    if gateway is not None:
        addrs[rs.RTAX_GATEWAY] = gateway if isinstance(gateway, LinkAddr) else A(gateway)
    if netmask is not None:
        addrs[rs.RTAX_NETMASK] = netmask if isinstance(netmask, bytes) else A(netmask)
    return rs.encode(rs.RouteMessage(rs.RTM_GET, flags, addrs, index=index))


DUMP = b"".join([
    entry(UP | GW | STATIC, "0.0.0.0", "192.168.1.1", b"", 4),  # default: a zero-length netmask
    entry(UP | CLONING, "192.168.1.0", LinkAddr(4, "en0"), b"\x07\x00\x00\x00\xff\xff\xff", 4),  # trimmed, family 0
    entry(UP | GW | STATIC, "10.0.0.0", "192.168.1.254", "255.0.0.0", 4),
    entry(UP | HOST | rs.RTF_LLINFO, "192.168.1.1", LinkAddr(4, "en0"), None, 4),  # an ARP entry
    entry(UP | GW | rs.RTF_IFSCOPE, "0.0.0.0", "10.9.9.1", b"", 5),  # the scoped default of en1
    entry(UP | GW | rs.RTF_WASCLONED | HOST, "10.1.2.3", "192.168.1.254", None, 4),  # cloned
    entry(GW | STATIC, "172.16.0.0", "192.168.1.254", "255.240.0.0", 4),  # not up
    entry(UP | GW | STATIC | rs.RTF_REJECT, "198.51.100.0", "127.0.0.1", "255.255.255.0", 1),
    entry(UP | GW | STATIC | HOST, "203.0.113.9", "192.168.1.1", None, 4),
    entry(UP | GW | STATIC, "198.19.0.0", "192.168.1.254", "255.0.255.0", 4),  # a mask with holes: not read
    entry(UP | GW | STATIC, "198.20.0.0", "fe80::1", "255.255.0.0", 4),  # a gateway of the other family: not read
    entry(UP | GW | STATIC, "::", "fe80::1", b"", 5),
    entry(UP | GW | STATIC, "2001:db8:5::", "fe80::1", "ffff:ffff:ffff::", 5),
    entry(UP | GW | STATIC, "2001:db8:6::", "fe80::1", "ffff:ffff:ffff::", 77),  # its interface went meanwhile
    b"\x5c\x00\x07" + bytes(0x5c - 3),  # another rt_msghdr version
    entry(UP | GW, "192.0.2.0", "192.168.1.1", "255.255.255.0", 4)[:40],  # cut short: the walk stops
])
NAMES = {1: "lo0", 4: "en0", 5: "en1"}


def index_to_name(index):
    if index not in NAMES:
        raise OSError(errno.ENXIO, "no such interface")
    return NAMES[index]


def darwin(dump=DUMP):
    from ztun.system.router_darwin import DarwinRouter

    return DarwinRouter(route_socket=FakeRouteKernel(), ifconfig=FakeIfconfig(), dump=lambda: dump,
                        index_to_name=index_to_name)


def test_split_dump_counts_what_it_cannot_read():
    messages, bad = rs.split_dump(DUMP)
    assert len(messages) == 14 and bad == 2
    assert rs.split_dump(b"") == ([], 0) and rs.split_dump(b"\x00\x00\x00\x00") == ([], 1)


def test_prefix_length_of_dumped_netmasks():
    assert rs.prefix_length(None, 4) == 0 and rs.prefix_length(A("255.255.255.0"), 4) == 24
    assert rs.prefix_length(A("ffff:ffff:ffff::"), 6) == 48 and rs.prefix_length(A("255.255.255.255"), 4) == 32
    assert rs.prefix_length(A("255.0.255.0"), 4) is None and rs.prefix_length(A("255.0.0.0"), 6) is None
    assert rs.prefix_length(b"\x01\x02", 4) is None


def test_darwin_reads_the_unscoped_routes_of_its_table():
    routes = darwin().main_routes()
    assert [str(r) for r in routes] == [
        "0.0.0.0/0 via 192.168.1.1 dev en0", "192.168.1.0/24 dev en0", "10.0.0.0/8 via 192.168.1.254 dev en0",
        "unreachable 198.51.100.0/24 via 127.0.0.1 dev lo0", "203.0.113.9/32 via 192.168.1.1 dev en0",
        "::/0 via fe80::1 dev en1", "2001:db8:5::/48 via fe80::1 dev en1", "2001:db8:6::/48 via fe80::1"]
    assert routes[1].connected and not routes[2].connected


def test_darwin_strict_route_plan_from_the_dump():
    spec = RouteSpec(iface="utun7", inet4="198.18.0.1/30", inet6="fd00:18::1/126", auto_route=True, strict_route=True,
                     main_routes=darwin().main_routes(), table=2022, rule_priority=9000, fwmark=1)
    assert [str(r) for r in plan(spec, policy_routing=False).routes] == [
        "0.0.0.0/1 dev utun7", "128.0.0.0/1 dev utun7", "10.0.0.0/9 dev utun7", "10.128.0.0/9 dev utun7",
        "::/1 dev utun7", "8000::/1 dev utun7", "2001:db8:5::/49 dev utun7", "2001:db8:5:8000::/49 dev utun7",
        "2001:db8:6::/49 dev utun7", "2001:db8:6:8000::/49 dev utun7"]


def test_a_failed_dump_is_a_route_error():
    def refuse():
        raise RouteError("sysctl NET_RT_DUMP", errno.EPERM)

    from ztun.system.router_darwin import DarwinRouter

    router = DarwinRouter(route_socket=FakeRouteKernel(), ifconfig=FakeIfconfig(), dump=refuse)
    with pytest.raises(RouteError):
        router.main_routes()


# --- Windows -------------------------------------------------------------------------------


class TableApi:
    """GetIpForwardTable2's rows, read through iphlpapi.route_rows as the real binding does."""

    def __init__(self, rows):
        self.rows = rows

    def routes(self, family):
        table = (ip.MIB_IPFORWARD_ROW2 * len(self.rows))()
        n = 0
        for index, prefix, hop in self.rows:
            net = ipaddress.ip_network(prefix, strict=False)
            if (t.AF_INET if net.version == 4 else t.AF_INET6) != family:
                continue
            row = table[n]
            row.InterfaceIndex = index
            row.DestinationPrefix.Prefix.set(ipaddress.ip_address(prefix.split("/")[0]))
            row.DestinationPrefix.PrefixLength = net.prefixlen
            row.NextHop.set(hop or ("0.0.0.0" if net.version == 4 else "::"))
            n += 1
        return ip.route_rows(table[:n])

    def index_to_alias(self, index):
        if index == 99:
            raise ip.route_error("ConvertInterfaceIndexToLuid 99", 1168)
        return {1: "Loopback Pseudo-Interface 1", 12: "Ethernet", 40: "ztun0"}[index]


def test_windows_reads_its_table():
    from ztun.system.router_windows import WindowsRouter

    api = TableApi([(12, "0.0.0.0/0", "192.168.1.1"), (12, "192.168.1.0/24", None), (12, "192.168.1.7/32", None),
                    (12, "10.0.0.0/8", "192.168.1.254"), (1, "127.0.0.0/8", None), (99, "172.16.0.0/12", "192.168.1.9"),
                    (12, "10.9.9.9/8", "192.168.1.254"),  # host bits set: not a prefix
                    (12, "::/0", "fe80::1"), (40, "fd00:18::/126", None)])
    routes = WindowsRouter(api).main_routes()
    assert [str(r) for r in routes] == [
        "0.0.0.0/0 via 192.168.1.1 dev Ethernet", "192.168.1.0/24 dev Ethernet", "192.168.1.7/32 dev Ethernet",
        "10.0.0.0/8 via 192.168.1.254 dev Ethernet", "127.0.0.0/8 dev Loopback Pseudo-Interface 1",
        "::/0 via fe80::1 dev Ethernet", "fd00:18::/126 dev ztun0"]
    spec = RouteSpec(iface="ztun0", inet4="198.18.0.1/30", auto_route=True, strict_route=True, main_routes=routes,
                     table=2022, rule_priority=9000, fwmark=1)
    assert [str(r) for r in plan(spec, policy_routing=False).routes] == [
        "0.0.0.0/1 dev ztun0", "128.0.0.0/1 dev ztun0", "10.0.0.0/9 dev ztun0", "10.128.0.0/9 dev ztun0",
        "unreachable ::/1 metric 65535", "unreachable 8000::/1 metric 65535"]


def test_route_rows_skip_rows_of_no_family():
    table = (ip.MIB_IPFORWARD_ROW2 * 1)()
    assert ip.route_rows(table) == []  # si_family 0


# --- the gateway on a router without policy routing ------------------------------------------


class FakeDevice:
    name, if_index, adopted, created, napi, offload = "utun7", 7, False, True, False, 0

    def close(self):
        pass


def test_gateway_plans_strict_and_fail_closed_routes_from_the_table_and_removes_them(tmp_path, monkeypatch):
    """The gateway reads the table for strict_route, removes a crashed run's routes first, adds the plan (unreachable
    routes of the halves, the overriding halves, the exclusion via the uplink), and undoes it all on close."""
    from ztun.appliance import gateway as gw_mod
    from ztun.system import default_route as dr
    from ztun.system.route_journal import RouteJournal
    from ztun.system.router_darwin import DarwinRouter
    from ztun.system.sockopt import Egress
    from ztun.tun.options import TunOptions

    table = [entry(UP | GW | STATIC, "0.0.0.0", "192.168.1.1", b"", 4),
             entry(UP | GW | STATIC, "10.0.0.0", "192.168.1.254", "255.0.0.0", 4)]
    kernel = FakeRouteKernel()
    crashed = DarwinRouter(route_socket=kernel, ifconfig=FakeIfconfig(), journal=RouteJournal("ztun0", str(tmp_path)))
    crashed.add_route("192.0.2.0/24", "192.168.1.1")  # an exclusion of an earlier run that crashed
    crashed._journal.close()
    routers = []

    def open_router(name):
        routers.append(DarwinRouter(route_socket=kernel, ifconfig=FakeIfconfig(), dump=lambda: b"".join(table),
                                    index_to_name=index_to_name, journal=RouteJournal(name, str(tmp_path))))
        return routers[-1]

    monkeypatch.setattr(gw_mod, "open_tun", lambda opts: FakeDevice())
    monkeypatch.setattr(gw_mod, "open_router", open_router)
    monkeypatch.setattr(gw_mod, "find_default", lambda skip: ("en0", 4))
    monkeypatch.setattr(gw_mod, "find_uplinks", lambda skip: [dr.Uplink(4, "en0", 4, A("192.168.1.1"))])
    monkeypatch.setattr(gw_mod, "SystemStack", lambda *a, **k: None)
    real = socket.if_nametoindex
    monkeypatch.setattr(socket, "if_nametoindex", lambda name: 7 if name == "utun7" else real(name))
    options = TunOptions(name="ztun0", inet4="198.18.0.1/30", inet6=None, auto_route=True, strict_route=True,
                         fail_closed=True, exclude_routes=("203.0.113.7/32",))
    gw = gw_mod.Gateway(options, egress=Egress(binding=True, platform="darwin"))
    gw.open()
    added = [(m.type, str(m.dst), str(m.netmask), m.flags & rs.RTF_REJECT) for m in kernel.messages
             if m.type in (rs.RTM_ADD, rs.RTM_DELETE)]
    assert added == [
        (rs.RTM_ADD, "192.0.2.0", "255.255.255.0", 0),  # the crashed run's
        (rs.RTM_DELETE, "192.0.2.0", "255.255.255.0", 0),  # removed first
        (rs.RTM_ADD, "0.0.0.0", "192.0.0.0", 0), (rs.RTM_ADD, "64.0.0.0", "192.0.0.0", 0),
        (rs.RTM_ADD, "128.0.0.0", "192.0.0.0", 0), (rs.RTM_ADD, "192.0.0.0", "192.0.0.0", 0),
        (rs.RTM_ADD, "10.0.0.0", "255.128.0.0", 0), (rs.RTM_ADD, "10.128.0.0", "255.128.0.0", 0),
        (rs.RTM_ADD, "0.0.0.0", "128.0.0.0", rs.RTF_REJECT), (rs.RTM_ADD, "128.0.0.0", "128.0.0.0", rs.RTF_REJECT),
        (rs.RTM_ADD, "203.0.113.7", "None", 0),
        (rs.RTM_ADD, "::", "8000::", rs.RTF_REJECT), (rs.RTM_ADD, "8000::", "8000::", rs.RTF_REJECT)]
    assert [str(r) for r in gw._excluded] == ["203.0.113.7/32 via 192.168.1.1 dev en0"]
    assert gw.fail_closed and gw.routing()["strict_route"]
    n = len(kernel.messages)
    gw.close()
    assert all(m.type == rs.RTM_DELETE for m in kernel.messages[n:]) and len(kernel.messages) - n == 11
    assert kernel.table == {} and not (tmp_path / "ztun0.routes").exists()
