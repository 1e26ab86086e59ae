"""The interface of the default route (not the TUN's), and a monitor that follows it from the loop.

tun.outbound_interface = "auto" binds ztun's own sockets to the interface carrying the default
route (IPv4's, else IPv6's). DefaultRouteMonitor watches the platform's route-change events on
a readable fd the loop watches (no polling): on Linux an rtnetlink socket subscribed to
RTNLGRP_IPV4_ROUTE and RTNLGRP_IPV6_ROUTE, on macOS a PF_ROUTE socket (every routing message
is broadcast to it), on Windows NotifyRouteChange2, whose callback (on a system thread) writes
a byte into a socket pair. After each burst of events it looks the default route up again;
when the interface changed, new sockets bind to the new one (Egress.follow) and on_change
runs (the gateway moves its rule for ztun's own sockets there).
"""

import errno
import ipaddress
import logging
import socket
import sys
from typing import NamedTuple

from ..errors import RouteError

log = logging.getLogger("ztun.default_route")

READS_PER_EVENT = 64  # event datagrams drained per readiness event; a burst needs one look-up


class Uplink(NamedTuple):
    """One family's default route: out of interface name (index), via gateway (None: on-link)."""

    family: int  # 4 or 6
    name: str
    index: int
    gateway: object = None

    def route(self):
        """As a route_plan.Route to 0.0.0.0/0 or ::/0."""
        from .route_plan import Route

        return Route.of("0.0.0.0/0" if self.family == 4 else "::/0", self.gateway, self.name)


def _first(uplinks):
    return (uplinks[0].name, uplinks[0].index) if uplinks else None


def linux_uplinks(skip: str | None = None, rtnl=None) -> list:
    """Each family's best default route in the main table (lowest metric) but skip's, IPv4 first (Linux)."""
    from .rtnl import RT_TABLE_MAIN, RTN_UNICAST, Rtnl

    own = rtnl is None
    nl = Rtnl() if own else rtnl
    try:
        names = {link["index"]: link.get("IFLA_IFNAME") for link in nl.links()}
        out = []
        for version, family in ((4, socket.AF_INET), (6, socket.AF_INET6)):
            best = None
            for msg in nl.routes(family):
                table = msg.get("RTA_TABLE", msg.get("table"))
                if table != RT_TABLE_MAIN or msg.get("dst_len") or msg.get("type") != RTN_UNICAST:
                    continue
                hop = msg.get("RTA_MULTIPATH") or {}
                oif = hop.get("oif") or msg.get("RTA_OIF")
                name = names.get(oif)
                if not name or name == skip:
                    continue
                metric = msg.get("RTA_PRIORITY", 0)
                if best is None or metric < best[0]:
                    best = (metric, Uplink(version, name, oif, hop.get("RTA_GATEWAY") or msg.get("RTA_GATEWAY")))
            if best is not None:
                out.append(best[1])
        return out
    finally:
        if own:
            nl.close()


def linux_default(skip: str | None = None, rtnl=None):
    """(name, index) of the main table's best default route's interface but skip, or None (Linux)."""
    return _first(linux_uplinks(skip, rtnl))


def darwin_uplinks(skip: str | None = None, route_socket=None, index_to_name=None) -> list:
    """The exact default routes (RTM_GET of 0.0.0.0/0, then ::/0) but skip's (macOS).

    The exact look-up (a netmask given) skips auto-route's 0/1 and 128/1 routes into the utun.
    """
    from . import darwin_sockaddr as sa
    from . import route_socket as rs

    index_to_name = index_to_name or socket.if_indextoname
    own = route_socket is None
    sock = rs.RouteSocket() if own else route_socket
    try:
        out = []
        for version, dst in ((4, "0.0.0.0"), (6, "::")):
            msg = rs.RouteMessage(rs.RTM_GET, rs.RTF_UP | rs.RTF_GATEWAY | rs.RTF_STATIC,
                                  {rs.RTAX_DST: ipaddress.ip_address(dst),
                                   rs.RTAX_NETMASK: sa.mask_sockaddr(0, version), rs.RTAX_IFP: sa.LinkAddr(0)})
            try:
                reply = sock.request(msg, f"RTM_GET default IPv{version}")
            except RouteError as e:
                if e.errno in (errno.ESRCH, errno.ENETUNREACH):  # no default route of this family
                    continue
                raise
            if not reply.index:
                continue
            name = index_to_name(reply.index)
            if name != skip:
                gateway = reply.gateway if isinstance(reply.gateway, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else None
                out.append(Uplink(version, name, reply.index, gateway))
        return out
    finally:
        if own:
            sock.close()


def darwin_default(skip: str | None = None, route_socket=None, index_to_name=None):
    """(name, index) of the interface of the exact default route, IPv4's else IPv6's, or None (macOS)."""
    return _first(darwin_uplinks(skip, route_socket, index_to_name))


def windows_uplinks(skip: str | None = None, api=None) -> list:
    """Each family's lowest-metric default route but skip's (Windows).

    By the route's own metric: Windows adds the interface metric to it when it chooses, which
    this does not read (two default routes of equal route metric: the first listed wins).
    """
    from .iphlpapi import Iphlpapi
    from .iphlpapi_types import AF_INET, AF_INET6

    api = api or Iphlpapi()
    skip_index = None
    if skip:
        try:
            skip_index = api.luid_to_index(api.alias_to_luid(skip))
        except RouteError:
            skip_index = None
    out = []
    for version, family in ((4, AF_INET), (6, AF_INET6)):
        rows = [r for r in api.default_routes(family) if r[0] != skip_index]
        if rows:
            index, _metric, gateway = min(rows, key=lambda r: r[1])
            unspecified = gateway is None or gateway.is_unspecified
            out.append(Uplink(version, api.index_to_alias(index), index, None if unspecified else gateway))
    return out


def windows_default(skip: str | None = None, api=None):
    """(alias, index) of the interface of the lowest-metric default route, IPv4's else IPv6's, or None."""
    return _first(windows_uplinks(skip, api))


def find_uplinks(skip: str | None = None, platform: str = sys.platform) -> list:
    """This platform's default routes but skip's (the TUN), as Uplinks, IPv4 first."""
    if platform.startswith("linux"):
        return linux_uplinks(skip)
    if platform == "darwin":
        return darwin_uplinks(skip)
    if platform == "win32":
        return windows_uplinks(skip)
    raise RouteError(f"no default-route look-up for platform {platform!r}")


def find_default(skip: str | None = None, platform: str = sys.platform):
    """This platform's default interface but skip (the TUN), as (name, index), or None."""
    return _first(find_uplinks(skip, platform))


class RtnlRouteEvents:
    """Linux: a NETLINK_ROUTE socket subscribed to the IPv4 and IPv6 route groups, non-blocking."""

    RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE = 7, 11

    def __init__(self):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                                  socket.NETLINK_ROUTE)
        try:
            self.sock.bind((0, (1 << (self.RTNLGRP_IPV4_ROUTE - 1)) | (1 << (self.RTNLGRP_IPV6_ROUTE - 1))))
        except BaseException:
            self.sock.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> int:
        """Read what is queued (bounded); the number of datagrams (an overrun counts: routes changed)."""
        n = 0
        for _ in range(READS_PER_EVENT):
            try:
                self.sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:  # ENOBUFS: events were lost; a look-up covers them
                    raise
            n += 1
        return n

    def close(self) -> None:
        self.sock.close()


class RouteSocketEvents(RtnlRouteEvents):
    """macOS: a PF_ROUTE socket; the kernel copies every routing message to it. Only route and
    interface changes count (not the ARP/ND entries it also reports as they come and go)."""

    # rt_msghdr's rtm_type: RTM_ADD, RTM_DELETE, RTM_CHANGE, RTM_NEWADDR, RTM_DELADDR, RTM_IFINFO
    CHANGES = frozenset((0x1, 0x2, 0x3, 0xC, 0xD, 0xE))
    LLINFO = 0x400  # RTF_LLINFO: a link-layer (ARP, ND) entry

    def __init__(self, sock=None):
        from .route_socket import PF_ROUTE

        self.sock = sock if sock is not None else socket.socket(PF_ROUTE, socket.SOCK_RAW, socket.AF_UNSPEC)
        self.sock.setblocking(False)

    def drain(self) -> int:
        """Read what is queued (bounded); the number of route and interface changes among it."""
        n = 0
        for _ in range(READS_PER_EVENT):
            try:
                msg = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                if e.errno != errno.ENOBUFS:
                    raise
                n += 1  # lost messages: look again
                continue
            if len(msg) < 4 or msg[3] not in self.CHANGES:
                continue
            # rt_msghdr: msglen u16, version u8, type u8, index u16, (pad), flags int at offset 8
            if msg[3] <= 0x3 and len(msg) >= 12 and int.from_bytes(msg[8:12], "little") & self.LLINFO:
                continue
            n += 1
        return n


class WindowsRouteEvents(RtnlRouteEvents):
    """Windows: NotifyRouteChange2 (IPv4 and IPv6); its callback, on a system thread, writes one byte
    into a socket pair whose reading end the loop watches (the loop's select or WSAPoll takes sockets only)."""

    def __init__(self, api=None):
        from .iphlpapi import Iphlpapi

        self.api = api or Iphlpapi()
        self.sock, self._wake = socket.socketpair()
        self.sock.setblocking(False)
        self._wake.setblocking(False)
        try:
            self._handle = self.api.notify_route_change(self._changed)
        except BaseException:
            self.sock.close()
            self._wake.close()
            raise

    def _changed(self):
        try:
            self._wake.send(b"\0")
        except OSError:  # full (the loop has a wake-up pending already) or closing
            pass

    def close(self) -> None:
        self.api.cancel_notify(self._handle)  # returns once no callback runs any more
        self._wake.close()
        self.sock.close()


def open_events(platform: str = sys.platform):
    if platform.startswith("linux"):
        return RtnlRouteEvents()
    if platform == "darwin":
        return RouteSocketEvents()
    if platform == "win32":
        return WindowsRouteEvents()
    raise RouteError(f"no route-change events for platform {platform!r}")


class DefaultRouteMonitor:
    """Follows the default route's interface for egress (ztun.system.sockopt.Egress), driven by the loop.

    skip: the TUN's name (never the default interface, whatever auto-route does). find and
    events are injectable (tests): find(skip) -> (name, index) | None, events with fileno(),
    drain() and close(). on_change(old, new) runs on the loop after egress moved; on_same(name)
    after a route event that left the default on the same interface (its gateway may have
    changed: a new network on the same Wi-Fi interface).
    """

    def __init__(self, loop, egress, *, skip: str | None = None, find=None, events=None, on_change=None,
                 on_same=None):
        self.loop, self.egress, self.skip = loop, egress, skip
        self.find = find or find_default
        self.events = events
        self.on_change = on_change
        self.on_same = on_same
        self.counters = {"route_events": 0, "default_lookups": 0, "default_moves": 0, "default_lookup_failed": 0}
        self._watching = False

    def start(self) -> None:
        """Look the default up now and watch for changes from here on."""
        if self.events is None:
            self.events = open_events()
        self.loop.add_reader(self.events.fileno(), self._readable)
        self._watching = True
        self.check()

    def _readable(self) -> None:
        try:
            n = self.events.drain()
        except OSError as e:
            log.warning("route events: %s", e)
            n = 1
        self.counters["route_events"] += n
        if n:  # nothing that concerns routes (macOS reports ARP entries too): no look-up
            self.check()

    def check(self) -> bool:
        """Look the default route up; move egress if its interface changed. True if it moved."""
        self.counters["default_lookups"] += 1
        try:
            found = self.find(self.skip)
        except (OSError, RouteError) as e:
            self.counters["default_lookup_failed"] += 1
            log.warning("default route look-up failed: %s (sockets stay bound to %s)", e, self.egress.interface)
            return False
        old = self.egress.interface
        name, index = found if found is not None else (None, 0)
        if name is None and old is not None:
            log.warning("no default route any more: ztun's new outbound connections fail until one is back "
                        "(they stay bound to %s)", old)
            return False  # keep the last interface: a flap of the route must not unbind anything
        if not self.egress.follow(name, index):
            if self.on_same is not None and name is not None:
                self.on_same(name)
            return False
        self.counters["default_moves"] += 1
        log.info("default route now via %s (index %d): ztun's new sockets bind to it%s", name, index,
                 f" (was {old})" if old else "")
        if self.on_change is not None:
            self.on_change(old, name)
        return True

    def close(self) -> None:
        """Stop watching and close the event source. Idempotent."""
        if self._watching:
            self.loop.remove_reader(self.events.fileno())
            self._watching = False
        if self.events is not None:
            self.events.close()
            self.events = None
