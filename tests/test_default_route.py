"""The default route's interface on each platform (fakes of rtnetlink, PF_ROUTE and iphlpapi), and the monitor
that follows it from the loop; Linux's real route-event socket where it exists."""

import errno
import ipaddress
import socket
import sys

import pytest

from ztun.errors import RouteError
from ztun.system import default_route as dr
from ztun.system import route_socket as rs
from ztun.system.route_plan import Rule
from ztun.system.sockopt import Egress


class FakeRtnl:
    def __init__(self, links, routes):
        self._links, self._routes = links, routes

    def links(self):
        return [{"index": i, "IFLA_IFNAME": n} for i, n in self._links.items()]

    def routes(self, family):
        return self._routes.get(family, [])


def r(dst_len=0, oif=2, table=254, metric=None, type_=1, multipath=None):
    msg = {"dst_len": dst_len, "table": table, "type": type_, "RTA_OIF": oif}
    if metric is not None:
        msg["RTA_PRIORITY"] = metric
    if multipath:
        msg["RTA_MULTIPATH"] = {"oif": multipath}
        del msg["RTA_OIF"]
    return msg


LINKS = {1: "lo", 2: "eth0", 3: "wlan0", 4: "ztun0"}


def test_linux_picks_main_tables_lowest_metric_default_and_never_the_tun():
    routes = {socket.AF_INET: [r(dst_len=24, oif=3), r(oif=4, metric=0), r(oif=2, metric=600), r(oif=3, metric=100),
                               r(oif=3, table=2022, metric=0), r(oif=2, type_=7, metric=1)]}
    assert dr.linux_default("ztun0", FakeRtnl(LINKS, routes)) == ("wlan0", 3)
    # without the skip the TUN's default (metric 0) would win: the skip is what keeps it out
    assert dr.linux_default(None, FakeRtnl(LINKS, routes)) == ("ztun0", 4)


def test_linux_uplinks_carry_the_gateway():
    routes = {socket.AF_INET: [dict(r(oif=2), RTA_GATEWAY="198.18.10.2")], socket.AF_INET6: [r(oif=3)]}
    assert dr.linux_uplinks("ztun0", FakeRtnl(LINKS, routes)) == [dr.Uplink(4, "eth0", 2, "198.18.10.2"),
                                                                  dr.Uplink(6, "wlan0", 3, None)]
    assert str(dr.Uplink(4, "eth0", 2, "198.18.10.2").route()) == "0.0.0.0/0 via 198.18.10.2 dev eth0"


def test_linux_falls_back_to_ipv6_and_reads_multipath_and_none():
    routes = {socket.AF_INET6: [r(multipath=2, metric=1024)]}
    assert dr.linux_default("ztun0", FakeRtnl(LINKS, routes)) == ("eth0", 2)
    assert dr.linux_default("ztun0", FakeRtnl(LINKS, {})) is None


class FakeRouteSocket:
    def __init__(self, answers):
        self.answers, self.asked = answers, []

    def request(self, msg, what=""):
        self.asked.append(msg)
        answer = self.answers[len(self.asked) - 1]
        if isinstance(answer, Exception):
            raise answer
        return rs.RouteMessage(rs.RTM_GET, index=answer, addrs={rs.RTAX_GATEWAY: ipaddress.ip_address("fe80::1")})


def test_darwin_asks_for_the_exact_default_and_falls_back_to_ipv6():
    sock = FakeRouteSocket([RouteError("no route", errno.ESRCH), 7])
    names = {7: "en0", 9: "utun3"}
    assert dr.darwin_default("utun3", sock, names.get) == ("en0", 7)
    assert dr.darwin_uplinks("utun3", FakeRouteSocket([RouteError("no route", errno.ESRCH), 7]), names.get) == [
        dr.Uplink(6, "en0", 7, ipaddress.ip_address("fe80::1"))]
    first = sock.asked[0]
    # a netmask makes it an exact look-up: auto-route's 0/1 and 128/1 into the utun never answer it
    assert first.type == rs.RTM_GET and str(first.dst) == "0.0.0.0" and rs.RTAX_NETMASK in first.addrs
    assert str(sock.asked[1].dst) == "::"
    assert dr.darwin_default("utun3", FakeRouteSocket([9, 9]), names.get) is None
    with pytest.raises(RouteError):
        dr.darwin_default("utun3", FakeRouteSocket([RouteError("denied", errno.EPERM)]), names.get)


class FakeWindowsApi:
    def __init__(self, routes):
        self.routes = routes

    def alias_to_luid(self, name):
        if name != "ztun0":
            raise RouteError("no such interface", errno.ENODEV)
        return 0x77

    def luid_to_index(self, luid):
        return 40

    def default_routes(self, family):
        return self.routes.get(family, [])

    def index_to_alias(self, index):
        return {12: "Ethernet", 13: "Wi-Fi", 40: "ztun0"}[index]


def test_windows_picks_the_lowest_metric_default_but_the_tun():
    gw = ipaddress.ip_address("192.168.1.1")
    api = FakeWindowsApi({2: [(40, 0, None), (13, 50, gw), (12, 25, gw)], 23: [(13, 5, ipaddress.ip_address("::"))]})
    assert dr.windows_default("ztun0", api) == ("Ethernet", 12)
    assert dr.windows_uplinks("ztun0", api) == [dr.Uplink(4, "Ethernet", 12, gw), dr.Uplink(6, "Wi-Fi", 13, None)]
    assert dr.windows_default("ztun0", FakeWindowsApi({23: [(13, 5, None)]})) == ("Wi-Fi", 13)
    assert dr.windows_default("ztun0", FakeWindowsApi({})) is None


def test_windows_default_rows_are_read_from_the_forward_table():
    from ztun.system import iphlpapi as ip

    table = (ip.MIB_IPFORWARD_ROW2 * 3)()
    for row, (index, plen, metric) in zip(table, ((5, 0, 25), (6, 24, 0), (7, 0, 10))):
        row.InterfaceIndex, row.DestinationPrefix.PrefixLength, row.Metric = index, plen, metric
    table[0].NextHop.set("10.0.0.1")
    assert ip.default_rows(table) == [(5, 25, ipaddress.ip_address("10.0.0.1")), (7, 10, None)]


class FakeLoop:
    def __init__(self):
        self.readers = {}

    def add_reader(self, fd, callback, *args):
        self.readers[fd] = callback

    def remove_reader(self, fd):
        return self.readers.pop(fd, None) is not None


class FakeEvents:
    """A socket pair: the test writes, the monitor drains the reading end."""

    def __init__(self):
        self.r, self.w = socket.socketpair()
        self.r.setblocking(False)
        self.closed = False

    def fileno(self):
        return self.r.fileno()

    def drain(self):
        n = 0
        while True:
            try:
                self.r.recv(100)
            except BlockingIOError:
                return n
            n += 1

    def close(self):
        self.closed = True
        self.r.close()
        self.w.close()


def test_the_monitor_moves_the_binding_on_route_events_only_when_the_interface_changes():
    loop, events, egress = FakeLoop(), FakeEvents(), Egress(binding=True, platform="linux")
    answers = [("eth0", 2), ("eth0", 2), ("wlan0", 3), None, RouteError("dump failed", errno.EIO), ("eth0", 2)]
    changes, same = [], []

    def find(skip):
        assert skip == "ztun0"
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    mon = dr.DefaultRouteMonitor(loop, egress, skip="ztun0", find=find, events=events,
                                 on_change=lambda old, new: changes.append((old, new)), on_same=same.append)
    mon.start()
    assert egress.interface == "eth0" and changes == [(None, "eth0")]
    for expect_iface in ("eth0", "wlan0", "wlan0", "wlan0", "eth0"):
        events.w.send(b"x")
        loop.readers[events.fileno()]()  # the loop calls this when the fd is readable
        assert egress.interface == expect_iface
    # None (no default right now) keeps the last interface; a failed look-up keeps it too
    assert changes == [(None, "eth0"), ("eth0", "wlan0"), ("wlan0", "eth0")]
    assert same == ["eth0"]  # the event that left the default where it was (its gateway may have moved)
    assert mon.counters == {"route_events": 5, "default_lookups": 6, "default_moves": 3, "default_lookup_failed": 1}
    assert egress.moves == 2
    fd = events.fileno()
    mon.close()
    assert fd not in loop.readers and events.closed
    mon.close()  # idempotent


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="rtnetlink is Linux's")
def test_linux_route_events_socket_subscribes_and_drains_without_blocking():
    events = dr.RtnlRouteEvents()
    try:
        groups = events.sock.getsockname()[1]
        assert groups == (1 << 6) | (1 << 10)  # RTNLGRP_IPV4_ROUTE and RTNLGRP_IPV6_ROUTE
        assert events.drain() == 0  # nothing queued: returns at once
    finally:
        events.close()


def test_gateway_moves_the_rule_for_its_own_sockets_add_first():
    from ztun.appliance.gateway import Gateway
    from ztun.tun.options import TunOptions

    class Router:
        def __init__(self):
            self.calls = []

        def add(self, item):
            self.calls.append(("add", item))
            return True

        def delete(self, item):
            self.calls.append(("delete", item))
            return True

    gw = Gateway(TunOptions(name="zt0", routes=("198.19.0.0/16",), outbound_interface="auto"),
                 egress=Egress(binding=True))
    gw.router = Router()
    old = [Rule(4, 9000, "goto", goto=9009, oif="eth0"), Rule(6, 9000, "goto", goto=9009, oif="eth0")]
    gw._own_rules = list(old)
    gw._moved("eth0", "wlan0")
    new = [Rule(4, 9000, "goto", goto=9009, oif="wlan0"), Rule(6, 9000, "goto", goto=9009, oif="wlan0")]
    assert gw.router.calls == [("add", new[0]), ("delete", old[0]), ("add", new[1]), ("delete", old[1])]
    assert gw._own_rules == new
    assert gw.follows_default


def test_without_policy_routing_excluded_routes_follow_the_default_route(monkeypatch):
    """macOS and Windows: an excluded prefix (a proxy's address) goes via the uplink's gateway; when the default
    route moves, that route moves to the new uplink (the old one removed first: one route per prefix)."""
    from ztun.appliance import gateway as gw_mod
    from ztun.system.route_plan import Route, RouteSpec
    from ztun.tun.options import TunOptions

    class Router:
        def __init__(self):
            self.calls = []

        def add(self, item):
            self.calls.append(("add", str(item)))
            return True

        def delete(self, item):
            self.calls.append(("delete", str(item)))
            return True

    gw = gw_mod.Gateway(TunOptions(name="utun7", auto_route=True, exclude_routes=("203.0.113.7/32",)),
                        egress=Egress(binding=True, platform="darwin"))
    gw.router = Router()
    gw._spec = RouteSpec(iface="utun7", inet4="198.18.0.1/30", auto_route=True, exclude_routes=("203.0.113.7/32",),
                         table=1, rule_priority=1, fwmark=1)
    gw._excluded = [Route.of("203.0.113.7/32", "192.168.1.1", "en0")]
    monkeypatch.setattr(gw_mod, "find_uplinks", lambda skip: [dr.Uplink(4, "en1", 5, ipaddress.ip_address("10.1.0.1"))])
    gw._moved("en0", "en1")
    assert gw.router.calls == [("delete", "203.0.113.7/32 via 192.168.1.1 dev en0"),
                               ("add", "203.0.113.7/32 via 10.1.0.1 dev en1")]
    assert [str(r) for r in gw._excluded] == ["203.0.113.7/32 via 10.1.0.1 dev en1"]
    gw.router.calls.clear()
    gw._moved("en1", "en1")  # the same uplink again: nothing to do
    assert gw.router.calls == []
    # a new network on the same interface: the default's gateway moved, the excluded route follows it
    monkeypatch.setattr(gw_mod, "find_uplinks", lambda skip: [dr.Uplink(4, "en1", 5, ipaddress.ip_address("10.9.0.1"))])
    gw._same_uplink("en1")
    assert gw.router.calls == [("delete", "203.0.113.7/32 via 10.1.0.1 dev en1"),
                               ("add", "203.0.113.7/32 via 10.9.0.1 dev en1")]


def test_macos_route_events_count_route_changes_not_arp_entries():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    events = dr.RouteSocketEvents(a)
    try:
        def send(type_, flags=0):
            b.send(rs.encode(rs.RouteMessage(type_, flags, {rs.RTAX_DST: ipaddress.ip_address("0.0.0.0")})))

        send(rs.RTM_ADD)  # a route: counts
        send(rs.RTM_ADD, 0x400)  # RTF_LLINFO: an ARP entry, no
        send(rs.RTM_GET)  # someone's query, no
        send(0xE)  # RTM_IFINFO: an interface went up or down, counts
        assert events.drain() == 2
        assert events.drain() == 0
        mon = dr.DefaultRouteMonitor(FakeLoop(), Egress(binding=True), find=lambda skip: pytest.fail("looked up"),
                                     events=events)
        send(rs.RTM_ADD, 0x400)
        mon._readable()  # only ARP noise: no look-up
        assert mon.counters["default_lookups"] == 0
    finally:
        events.close()
        b.close()
