"""The Windows Router: MTU, unicast addresses and routes through iphlpapi, keyed by the interface LUID.

Every change is recorded and close() undoes it, newest first. Windows has no policy rules
(MainTableRouter). Routes and addresses on a Wintun adapter ztun created also go when the
adapter is removed, which a crash does too; the routes that outlive it (exclusions via the
uplink, the fail_closed routes) are found through the RouteJournal (see remove_leftovers).
"""

import errno
import functools
import ipaddress
import logging

from ..errors import RouteError
from . import iphlpapi as ip
from . import iphlpapi_types as t
from . import winerror as we
from .route_plan import Route
from .router_main import MainTableRouter

log = logging.getLogger("ztun.system.router")

# Windows routes have no reject or blackhole type (MIB_IPFORWARD_ROW2 has no type field, and
# route.exe refuses 127.0.0.1 as a gateway). An "unreachable" route goes on-link out of the
# software loopback interface, the documented workaround for a null route: loopback delivers
# only to the host's own addresses, so what it routes is dropped (connections time out, no
# immediate error as on Linux and macOS; not yet seen on a real host). Its LUID is fixed:
# IfType IF_TYPE_SOFTWARE_LOOPBACK (24) in bits 48..63, NetLuidIndex 0.
IF_TYPE_SOFTWARE_LOOPBACK = 24
LOOPBACK_LUID = IF_TYPE_SOFTWARE_LOOPBACK << 48
# Higher than the routes into the TUN (ztun gives those 0), so were both ever of one prefix, the
# TUN's would win; the largest metric route.exe takes. (The plan never needs it: the TUN's
# routes are the longer prefixes.)
UNREACHABLE_METRIC = 9999


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


class WindowsRouter(MainTableRouter):
    """Addresses, MTU, interface metric and routes on Windows. api (an Iphlpapi) is injectable for tests off Windows."""

    system = "Windows"
    admin = "Administrator"
    needs_iface = True

    def __init__(self, api=None, *, journal=None):
        self._api = api if api is not None else ip.Iphlpapi()
        self._start(journal)

    def _luid(self, iface: str) -> int:
        return self._api.alias_to_luid(iface)

    def get_interface_index(self, name: str) -> int:
        return self._api.luid_to_index(self._luid(name))

    def set_link(self, iface: str, *, up: bool | None = None, mtu: int | None = None) -> None:
        """Set the IPv4 and IPv6 MTU (NlMtu); close() restores it.

        A Wintun adapter is up while its session runs, so up=True asks nothing; it cannot be
        taken down here.
        """
        if up is False:
            raise RouteError(f"{iface}: taking an interface down is not supported on Windows", errno.EOPNOTSUPP)
        if mtu is not None:
            self._set_interface_fields(iface, mtu=mtu)

    def set_metric(self, iface: str, metric: int) -> None:
        """Give iface a fixed interface metric instead of the automatic one (IPv4 and IPv6); close() restores it."""
        self._set_interface_fields(iface, metric=metric)

    def _set_interface_fields(self, iface: str, *, mtu: int | None = None, metric: int | None = None) -> None:
        luid = self._luid(iface)
        for family in (t.AF_INET, t.AF_INET6):
            code, row = self._api.interface_row(luid, family)
            if code == we.ERROR_NOT_FOUND:
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
            self._undo.push(f"restore MTU {old[0]} and metric of {iface} (family {family})",
                            functools.partial(self._restore_interface, luid, family, old, iface))

    def _restore_interface(self, luid, family, old, iface):
        code, row = self._api.interface_row(luid, family)
        if code:
            raise ip.route_error(f"GetIpInterfaceEntry {iface}", code)
        row.NlMtu, row.UseAutomaticMetric, row.Metric = old
        self._set_interface(row, iface)

    def _set_interface(self, row, iface):
        if row.Family == t.AF_INET:
            row.SitePrefixLength = 0  # SetIpInterfaceEntry rejects anything else for IPv4
        _check(self._api.set_interface(row), f"SetIpInterfaceEntry {iface}")

    def add_address(self, iface: str, cidr) -> bool:
        """Add an address with its prefix length to iface; False if it was already there."""
        row = address_row(self._api, self._luid(iface), cidr)
        code = self._api.create_address(row)
        if code == we.ERROR_OBJECT_ALREADY_EXISTS:
            return False
        _check(code, f"CreateUnicastIpAddressEntry {cidr} on {iface}")
        self._undo.push(f"delete address {cidr} from {iface}",
                        lambda: _check(self._api.delete_address(row), f"DeleteUnicastIpAddressEntry {cidr} on {iface}"))
        log.info("added address %s to %s", cidr, iface)
        return True

    def _route_row(self, route: Route):
        if route.kind == "unreachable":
            return route_row(self._api, LOOPBACK_LUID, route.cidr, None, metric=UNREACHABLE_METRIC)
        return route_row(self._api, self._luid(route.iface), route.cidr, route.gateway)

    def _add_request(self, route: Route) -> bool:
        code = self._api.create_route(self._route_row(route))
        if code == we.ERROR_OBJECT_ALREADY_EXISTS:
            return False
        _check(code, f"CreateIpForwardEntry2 {route}")
        return True

    def _delete_request(self, route: Route) -> bool:
        try:
            row = self._route_row(route)
        except RouteError:
            if route.iface is not None:
                return False  # no such interface any more: its routes went with it
            raise
        code = self._api.delete_route(row)
        if code in (we.ERROR_NOT_FOUND, we.ERROR_FILE_NOT_FOUND):
            return False
        _check(code, f"DeleteIpForwardEntry2 {route}")
        return True

    def main_routes(self) -> tuple:
        """The routes of IPv4 and IPv6 (Windows has one table) as route_plan.Route: prefix, next hop (None: on-link), interface.

        Routes of an interface whose name cannot be read (gone meanwhile) are left out.
        """
        names, out = {}, []
        for family in (t.AF_INET, t.AF_INET6):
            for index, net, hop in self._api.routes(family):
                if index not in names:
                    try:
                        names[index] = self._api.index_to_alias(index)
                    except RouteError:
                        names[index] = None
                if names[index] is not None:
                    out.append(Route.of(net, hop, names[index]))
        return tuple(out)

    def close(self) -> None:
        """Undo every recorded change, newest first; report failures in the log. Idempotent."""
        self._close_routes()


def _check(code: int, what: str) -> None:
    """RouteError for a Win32 code that is not NO_ERROR."""
    if code:
        raise ip.route_error(what, code)
