"""The macOS Router: interface flags, MTU and addresses with ioctls, routes with PF_ROUTE messages.

Every change is recorded and close() undoes it, newest first. macOS has no policy rules
(MainTableRouter). Routes and addresses on a utun ztun created vanish with the utun; the
routes that outlive a crash (exclusions via the uplink, the fail_closed reject routes) are
found through the RouteJournal (see remove_leftovers).
"""

import errno
import ipaddress
import logging
import socket
import sys

from ..errors import RouteError
from . import route_socket as rs
from .darwin_ioctl import IFF_UP, Ifconfig
from .darwin_sockaddr import LinkAddr
from .route_plan import Route
from .router_main import MainTableRouter

# An "unreachable" route is a reject route to loopback, as `route add -net P 127.0.0.1 -reject`
# makes: the lookup finds it, lo0's output sees RTF_REJECT and fails the send with
# ENETUNREACH (EHOSTUNREACH for a host route), and a forwarded packet gets an ICMP
# unreachable (XNU bsd/net/if_loop.c, lo_pre_output).
REJECT_GATEWAY = {4: ipaddress.ip_address("127.0.0.1"), 6: ipaddress.ip_address("::1")}

log = logging.getLogger("ztun.system.router")


class DarwinRouter(MainTableRouter):
    """Routes and interface settings on macOS (PF_ROUTE + interface ioctls).

    route_socket, ifconfig, dump (the routing table's bytes, sysctl NET_RT_DUMP) and
    index_to_name are injectable: tests drive the logic over stand-ins off macOS. journal: the
    RouteJournal of the routes that outlive a crash (open_router gives one per TUN name).
    """

    system = "macOS"

    def __init__(self, *, route_socket: rs.RouteSocket | None = None, ifconfig: Ifconfig | None = None, journal=None,
                 dump=None, index_to_name=None):
        self._dump = dump or rs.sysctl_dump  # the routing table's bytes (tests: a stand-in)
        self._index_to_name = index_to_name or socket.if_indextoname
        if route_socket is None or ifconfig is None:
            if sys.platform != "darwin":
                raise RouteError(f"the PF_ROUTE router needs macOS; this is {sys.platform} (use ztun.system.router.open_router)")
        self._start(journal)
        try:
            self._rt = route_socket or rs.RouteSocket()
            self._if = ifconfig or Ifconfig()
        except BaseException:
            if self._journal is not None:
                self._journal.close()
            raise

    def get_interface_index(self, name: str) -> int:
        try:
            return socket.if_nametoindex(name)
        except OSError:
            raise RouteError(f"no interface {name!r}", errno.ENXIO) from None

    def set_link(self, iface: str, *, up: bool | None = None, mtu: int | None = None) -> None:
        """Bring iface up (or down) and set its MTU; close() restores what was there."""
        if mtu is not None:
            old = self._if.get_mtu(iface)
            if old != mtu:
                self._if.set_mtu(iface, mtu)
                self._undo.push(f"restore MTU {old} on {iface}", lambda: self._if.set_mtu(iface, old))
        if up is not None:
            flags = self._if.get_flags(iface)
            new = flags | IFF_UP if up else flags & ~IFF_UP
            if new != flags:
                self._if.set_flags(iface, new)
                self._undo.push(f"restore the flags of {iface}", lambda: self._if.set_flags(iface, flags))

    def add_address(self, iface: str, cidr) -> bool:
        """Add an address with its prefix length to iface (SIOCAIFADDR / SIOCAIFADDR_IN6).

        The ioctl also succeeds for an address that is already there, which it cannot tell
        apart, so the address is always recorded and removed by close().
        """
        addr = ipaddress.ip_interface(cidr)
        self._if.add_address(iface, addr)
        self._undo.push(f"delete address {addr} from {iface}", lambda: self._if.delete_address(iface, addr))
        return True

    def _message(self, type_, route: Route):
        link = None
        if route.kind == "unreachable":
            return rs.route_message(type_, route.cidr, REJECT_GATEWAY[route.family], flags=rs.RTF_REJECT)
        if route.gateway is None:
            if route.iface is None:
                raise RouteError(f"route {route.cidr} needs a gateway or an interface", errno.EINVAL)
            link = LinkAddr(self.get_interface_index(route.iface), route.iface)
        try:
            return rs.route_message(type_, route.cidr, route.gateway, link)
        except ValueError as e:
            raise RouteError(f"route {route.cidr}: {e}", errno.EINVAL) from None

    def _request(self, type_, route: Route, absent: int) -> bool:
        """Send RTM_ADD or RTM_DELETE for route; False if the kernel answers absent (EEXIST, ESRCH)."""
        msg = self._message(type_, route)
        try:
            self._rt.request(msg, f"{'RTM_ADD' if type_ == rs.RTM_ADD else 'RTM_DELETE'} {route.cidr}")
        except RouteError as e:
            if e.errno == absent:
                return False
            raise
        return True

    def _outlives_us(self, route: Route) -> bool:
        """Routes via a gateway and reject routes; not those out of an interface (a utun: they go with it).

        A crashed run's utun number is soon another program's, often with the same routes
        (a VPN's 0/1 and 128/1): deleting those by what the journal says would break it.
        """
        return route.gateway is not None or route.kind == "unreachable"

    def _add_request(self, route: Route) -> bool:
        return self._request(rs.RTM_ADD, route, errno.EEXIST)

    def _delete_request(self, route: Route) -> bool:
        return self._request(rs.RTM_DELETE, route, errno.ESRCH)

    def main_routes(self) -> tuple:
        """The routing table's unscoped routes (IPv4 and IPv6) as route_plan.Route: prefix, gateway, interface, kind.

        Left out: ARP/NDP entries (RTF_LLINFO), routes cloned from another (RTF_WASCLONED),
        scoped ones (RTF_IFSCOPE: only sockets bound to their interface use them), routes not
        up, and what does not read as a route (counted in the debug log).
        """
        messages, bad = rs.split_dump(self._dump())
        out = []
        for msg in messages:
            if msg.type != rs.RTM_GET or not msg.flags & rs.RTF_UP:
                continue
            if msg.flags & (rs.RTF_LLINFO | rs.RTF_WASCLONED | rs.RTF_IFSCOPE):
                continue
            route = self._dumped_route(msg)
            if route is None:
                bad += 1
            elif route not in out:
                out.append(route)
        if bad:
            log.debug("routing table dump: %d entries not read", bad)
        return tuple(out)

    def _dumped_route(self, msg) -> Route | None:
        dst = msg.dst
        if not isinstance(dst, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return None
        if msg.flags & rs.RTF_HOST or rs.RTAX_NETMASK not in msg.addrs:
            length = dst.max_prefixlen
        else:
            length = rs.prefix_length(msg.netmask, dst.version)
            if length is None:
                return None
        gateway = msg.gateway if msg.flags & rs.RTF_GATEWAY else None
        if gateway is not None and (not isinstance(gateway, (ipaddress.IPv4Address, ipaddress.IPv6Address))
                                    or gateway.version != dst.version):
            return None
        try:
            iface = self._index_to_name(msg.index) if msg.index else None
        except OSError:
            iface = None  # gone meanwhile
        kind = "unreachable" if msg.flags & rs.RTF_REJECT else "blackhole" if msg.flags & rs.RTF_BLACKHOLE else "unicast"
        return Route(ipaddress.ip_network((dst, length), strict=False), iface, kind=kind, gateway=gateway)

    def get_route(self, dst) -> rs.RouteMessage:
        """The kernel's route for dst (RTM_GET): gateway, netmask, flags, and the interface in addrs[RTAX_IFP]."""
        return self._rt.request(rs.get_message(dst), f"RTM_GET {dst}")

    def close(self) -> None:
        """Undo every recorded change, newest first; report failures in the log. Idempotent."""
        if self._close_routes():
            self._rt.close()
            self._if.close()
