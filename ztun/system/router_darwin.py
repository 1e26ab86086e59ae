"""The macOS Router: interface flags, MTU and addresses with ioctls, routes with PF_ROUTE messages.

Every change is recorded and close() undoes it, newest first. macOS has no policy rules
(MainTableRouter). Routes and addresses on a utun ztun created also vanish with the utun,
so a crashed run leaves nothing behind (see remove_leftovers).
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
from .undo import UndoLog

log = logging.getLogger("ztun.system.router")


class DarwinRouter(MainTableRouter):
    """Routes and interface settings on macOS (PF_ROUTE + interface ioctls).

    route_socket and ifconfig are injectable: tests drive the logic over a socketpair
    and a recording ioctl off macOS.
    """

    system = "macOS"

    def __init__(self, *, route_socket: rs.RouteSocket | None = None, ifconfig: Ifconfig | None = None):
        if route_socket is None or ifconfig is None:
            if sys.platform != "darwin":
                raise RouteError(f"the PF_ROUTE router needs macOS; this is {sys.platform} (use ztun.system.router.open_router)")
        self._rt = route_socket or rs.RouteSocket()
        self._if = ifconfig or Ifconfig()
        self._undo = UndoLog(log)

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

    def add_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Add a route to cidr via gateway, or out of iface (a sockaddr_dl gateway); False if it already existed."""
        route = self._main_route(cidr, gateway, iface, table, kind)
        if not self._request(rs.RTM_ADD, route, errno.EEXIST):
            return False
        self._undo.push(f"delete route {route}", lambda: self._request(rs.RTM_DELETE, route, errno.ESRCH), key=route)
        log.info("added route %s", route)
        return True

    def delete_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Delete a route; False if there was none. A route ztun recorded is forgotten."""
        route = self._main_route(cidr, gateway, iface, table, kind)
        self._undo.forget(route)
        return self._request(rs.RTM_DELETE, route, errno.ESRCH)

    def get_route(self, dst) -> rs.RouteMessage:
        """The kernel's route for dst (RTM_GET): gateway, netmask, flags, and the interface in addrs[RTAX_IFP]."""
        return self._rt.request(rs.get_message(dst), f"RTM_GET {dst}")

    def remove_leftovers(self, table: int, priorities: range) -> int:
        """Nothing to remove: a crashed run leaves no route, address or rule on macOS; returns 0.

        A utun exists only while its control socket is open; when the process dies the
        kernel closes it and detaches the interface, which removes its addresses and every
        route out of it. ztun's routes on macOS all go out of its utun, and macOS has no
        policy rules or tables (table and priorities name nothing here).
        """
        return 0

    def close(self) -> None:
        """Undo every recorded change, newest first; report failures in the log. Idempotent."""
        if self._undo.close():
            self._rt.close()
            self._if.close()
