"""The Windows Router: MTU, unicast addresses and routes through iphlpapi, keyed by the interface LUID.

Every change is recorded and close() undoes it, newest first. Routes and addresses on a
Wintun adapter ztun created also go when the adapter is removed.
"""

import errno
import ipaddress
import logging
import sys

from ..errors import RouteError
from . import iphlpapi as ip
from . import iphlpapi_types as t

log = logging.getLogger("ztun.system.router")


def route_row(api, luid: int, cidr, gateway=None, metric: int = 0) -> t.MIB_IPFORWARD_ROW2:
    """A MIB_IPFORWARD_ROW2 for cidr out of luid, via gateway or on-link (next hop unspecified)."""
    net = ipaddress.ip_network(cidr)
    row = api.forward_row()  # InitializeIpForwardEntry: infinite lifetimes, protocol and origin defaults
    row.InterfaceLuid = luid
    row.DestinationPrefix.set(net)
    hop = ipaddress.ip_address(gateway) if gateway is not None else (ipaddress.IPv4Address(0) if net.version == 4 else ipaddress.IPv6Address(0))
    if hop.version != net.version:
        raise RouteError(f"route {net}: gateway {hop} is of another family", errno.EINVAL)
    row.NextHop.set(hop)
    row.Metric = metric
    row.Protocol = t.MIB_IPPROTO_NETMGMT
    return row


def address_row(api, luid: int, cidr) -> t.MIB_UNICASTIPADDRESS_ROW:
    """A MIB_UNICASTIPADDRESS_ROW for a manual address with its on-link prefix length."""
    iface = ipaddress.ip_interface(cidr)
    row = api.address_row()  # InitializeUnicastIpAddressEntry: infinite lifetimes
    row.Address.set(iface.ip)
    row.InterfaceLuid = luid
    row.OnLinkPrefixLength = iface.network.prefixlen
    row.PrefixOrigin = t.IpPrefixOriginManual
    row.SuffixOrigin = t.IpSuffixOriginManual
    row.DadState = t.IpDadStatePreferred
    return row


class WindowsRouter:
    """Addresses, MTU and routes on Windows. api (an Iphlpapi) is injectable for tests off Windows."""

    def __init__(self, api=None):
        if api is None:
            if sys.platform != "win32":
                raise RouteError(f"the iphlpapi router needs Windows; this is {sys.platform} (use ztun.system.router.open_router)")
            api = ip.Iphlpapi()
        self._api = api
        self._undo: list = []
        self._closed = False

    def _luid(self, iface: str) -> int:
        return self._api.alias_to_luid(iface)

    def get_interface_index(self, name: str) -> int:
        return self._api.luid_to_index(self._luid(name))

    def set_link(self, iface: str, *, up: bool | None = None, mtu: int | None = None, metric: int | None = None) -> None:
        """Set the IPv4 and IPv6 MTU (NlMtu) and, if given, a fixed interface metric; close() restores them.

        A Wintun adapter is up while its session runs, so up=True asks nothing; it cannot be
        taken down here.
        """
        if up is False:
            raise RouteError(f"{iface}: taking an interface down is not supported on Windows", errno.EOPNOTSUPP)
        if mtu is None and metric is None:
            return
        luid = self._luid(iface)
        for family in (t.AF_INET, t.AF_INET6):
            code, row = self._api.interface_row(luid, family)
            if code == ip.ERROR_NOT_FOUND:
                continue  # the family is not enabled on this interface
            if code:
                raise ip.route_error(f"GetIpInterfaceEntry {iface}", code)
            old = (row.NlMtu, row.UseAutomaticMetric, row.Metric)
            if mtu is not None:
                row.NlMtu = mtu
            if metric is not None:
                row.UseAutomaticMetric = 0
                row.Metric = metric
            if (row.NlMtu, row.UseAutomaticMetric, row.Metric) == old:
                continue
            self._set_interface(row, iface)
            self._undo.append(("interface", (luid, family, old, iface)))

    def _set_interface(self, row, iface):
        if row.Family == t.AF_INET:
            row.SitePrefixLength = 0  # SetIpInterfaceEntry rejects anything else for IPv4
        code = self._api.set_interface(row)
        if code:
            raise ip.route_error(f"SetIpInterfaceEntry {iface}", code)

    def add_address(self, iface: str, cidr) -> bool:
        """Add an address with its prefix length to iface; False if it was already there."""
        row = address_row(self._api, self._luid(iface), cidr)
        code = self._api.create_address(row)
        if code == ip.ERROR_OBJECT_ALREADY_EXISTS:
            return False
        if code:
            raise ip.route_error(f"CreateUnicastIpAddressEntry {cidr} on {iface}", code)
        self._undo.append(("address", row))
        log.info("added address %s to %s", cidr, iface)
        return True

    def _route(self, cidr, gateway, iface, table, kind, metric):
        if table is not None:
            raise RouteError(f"route {cidr}: routing tables are a Linux feature (table={table})", errno.EINVAL)
        if kind != "unicast":
            raise RouteError(f"route {cidr}: {kind!r} routes are Linux-only; Windows takes unicast routes", errno.EOPNOTSUPP)
        if iface is None:
            raise RouteError(f"route {cidr}: Windows routes need the interface (iface)", errno.EINVAL)
        return route_row(self._api, self._luid(iface), cidr, gateway, metric)

    def add_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast", metric: int = 0) -> bool:
        """Add a route to cidr out of iface (via gateway, or on-link); False if it already existed."""
        row = self._route(cidr, gateway, iface, table, kind, metric)
        code = self._api.create_route(row)
        if code == ip.ERROR_OBJECT_ALREADY_EXISTS:
            return False
        if code:
            raise ip.route_error(f"CreateIpForwardEntry2 {cidr} dev {iface}", code)
        self._undo.append(("route", (ipaddress.ip_network(cidr), gateway, iface, row)))
        log.info("added route %s dev %s%s", cidr, iface, f" via {gateway}" if gateway else "")
        return True

    def delete_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Delete a route; False if there was none. A route ztun recorded is forgotten."""
        row = self._route(cidr, gateway, iface, table, kind, 0)
        net = ipaddress.ip_network(cidr)
        self._undo = [u for u in self._undo if not (u[0] == "route" and u[1][:3] == (net, gateway, iface))]
        code = self._api.delete_route(row)
        if code in (ip.ERROR_NOT_FOUND, ip.ERROR_FILE_NOT_FOUND):
            return False
        if code:
            raise ip.route_error(f"DeleteIpForwardEntry2 {cidr} dev {iface}", code)
        return True

    def close(self) -> None:
        """Undo every recorded change, newest first; report failures in the log. Idempotent."""
        if self._closed:
            return
        self._closed = True
        while self._undo:
            kind, args = self._undo.pop()
            try:
                if kind == "route":
                    code = self._api.delete_route(args[3])
                elif kind == "address":
                    code = self._api.delete_address(args)
                else:
                    luid, family, (mtu, auto, metric), iface = args
                    code, row = self._api.interface_row(luid, family)
                    if not code:
                        row.NlMtu, row.UseAutomaticMetric, row.Metric = mtu, auto, metric
                        self._set_interface(row, iface)
                if code and code not in (ip.ERROR_NOT_FOUND, ip.ERROR_FILE_NOT_FOUND):
                    log.warning("undoing %s: Win32 error %d", kind, code)
            except RouteError as e:
                log.warning("undoing %s: %s", kind, e)
