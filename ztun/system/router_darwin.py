"""The macOS Router: interface flags, MTU and addresses with ioctls, routes with PF_ROUTE messages.

Every change is recorded and close() undoes it, newest first. Routes and addresses on a
utun ztun created also vanish with the utun, so a crashed run leaves nothing behind.
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

log = logging.getLogger("ztun.system.router")


class DarwinRouter:
    """Routes and interface settings on macOS (PF_ROUTE + interface ioctls).

    route_socket and ifconfig are injectable: tests drive the logic over a socketpair
    and a recording ioctl off macOS.
    """

    def __init__(self, *, route_socket: rs.RouteSocket | None = None, ifconfig: Ifconfig | None = None):
        if route_socket is None or ifconfig is None:
            if sys.platform != "darwin":
                raise RouteError(f"the PF_ROUTE router needs macOS; this is {sys.platform} (use ztun.system.router.open_router)")
        self._rt = route_socket or rs.RouteSocket()
        self._if = ifconfig or Ifconfig()
        self._undo: list = []  # (kind, args), undone newest first
        self._closed = False

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
                self._undo.append(("mtu", (iface, old)))
        if up is not None:
            flags = self._if.get_flags(iface)
            new = flags | IFF_UP if up else flags & ~IFF_UP
            if new != flags:
                self._if.set_flags(iface, new)
                self._undo.append(("flags", (iface, flags)))

    def add_address(self, iface: str, cidr) -> bool:
        """Add an address with its prefix length to iface (SIOCAIFADDR / SIOCAIFADDR_IN6).

        The ioctl also succeeds for an address that is already there, which it cannot tell
        apart, so the address is always recorded and removed by close().
        """
        addr = ipaddress.ip_interface(cidr)
        self._if.add_address(iface, addr)
        self._undo.append(("address", (iface, addr)))
        return True

    def _message(self, type_, cidr, gateway, iface, table, kind):
        if table is not None:
            raise RouteError(f"route {cidr}: routing tables are a Linux feature (table={table})", errno.EINVAL)
        if kind != "unicast":
            raise RouteError(f"route {cidr}: {kind!r} routes are Linux-only; macOS takes unicast routes", errno.EOPNOTSUPP)
        link = None
        if gateway is None:
            if iface is None:
                raise RouteError(f"route {cidr} needs a gateway or an interface", errno.EINVAL)
            link = LinkAddr(self.get_interface_index(iface), iface)
        try:
            return rs.route_message(type_, cidr, gateway, link)
        except ValueError as e:
            raise RouteError(f"route {cidr}: {e}", errno.EINVAL) from None

    def add_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Add a route to cidr via gateway, or out of iface (a sockaddr_dl gateway); False if it already existed."""
        msg = self._message(rs.RTM_ADD, cidr, gateway, iface, table, kind)
        try:
            self._rt.request(msg, f"RTM_ADD {cidr}")
        except RouteError as e:
            if e.errno == errno.EEXIST:
                return False
            raise
        self._undo.append(("route", (ipaddress.ip_network(cidr), gateway, iface)))
        log.info("added route %s%s%s", cidr, f" via {gateway}" if gateway else "", f" dev {iface}" if iface else "")
        return True

    def delete_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Delete a route; False if there was none. A route ztun recorded is forgotten."""
        msg = self._message(rs.RTM_DELETE, cidr, gateway, iface, table, kind)
        key = ("route", (ipaddress.ip_network(cidr), gateway, iface))
        if key in self._undo:
            self._undo.remove(key)
        try:
            self._rt.request(msg, f"RTM_DELETE {cidr}")
        except RouteError as e:
            if e.errno == errno.ESRCH:
                return False
            raise
        return True

    def get_route(self, dst) -> rs.RouteMessage:
        """The kernel's route for dst (RTM_GET): gateway, netmask, flags, and the interface in addrs[RTAX_IFP]."""
        return self._rt.request(rs.get_message(dst), f"RTM_GET {dst}")

    def close(self) -> None:
        """Undo every recorded change, newest first; report failures in the log. Idempotent."""
        if self._closed:
            return
        self._closed = True
        while self._undo:
            kind, args = self._undo.pop()
            try:
                if kind == "route":
                    cidr, gateway, iface = args
                    self._rt.request(self._message(rs.RTM_DELETE, cidr, gateway, iface, None, "unicast"), f"RTM_DELETE {cidr}")
                elif kind == "address":
                    self._if.delete_address(*args)
                elif kind == "mtu":
                    self._if.set_mtu(*args)
                elif kind == "flags":
                    self._if.set_flags(*args)
            except RouteError as e:
                # ESRCH/ENXIO/EADDRNOTAVAIL: already gone with the utun it belonged to.
                if e.errno not in (errno.ESRCH, errno.ENXIO, errno.EADDRNOTAVAIL):
                    log.warning("undoing %s %s: %s", kind, args, e)
        self._rt.close()
        self._if.close()
