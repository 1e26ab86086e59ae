"""A ctypes binding of the iphlpapi.dll calls ztun uses, keyed by interface LUID (Windows; importable anywhere).

Each call returns the Win32 error code the API returns (NO_ERROR = 0); conversions
raise RouteError. Loading needs Windows; tests use a fake with the same methods.
"""

import ctypes
import ipaddress
import sys
from ctypes import POINTER, byref, c_int, c_size_t, c_uint16, c_uint32, c_void_p

from ..errors import RouteError
from .iphlpapi_types import (
    MIB_IPFORWARD_ROW2,
    MIB_IPINTERFACE_ROW,
    MIB_UNICASTIPADDRESS_ROW,
    NET_IFINDEX,
    NET_LUID,
)
from .winerror import win_error


class MIB_IPFORWARD_TABLE2(ctypes.Structure):
    """GetIpForwardTable2's table: NumEntries, then that many rows (declared as one; read with rows())."""

    _fields_ = [("NumEntries", c_uint32), ("Table", MIB_IPFORWARD_ROW2 * 1)]

    def rows(self):
        array = (MIB_IPFORWARD_ROW2 * self.NumEntries).from_address(ctypes.addressof(self.Table))
        return list(array)


# PIPFORWARD_CHANGE_CALLBACK(CallerContext, Row, NotificationType): called on a system thread.
ROUTE_CHANGE_CALLBACK = getattr(ctypes, "WINFUNCTYPE", ctypes.CFUNCTYPE)(None, c_void_p, POINTER(MIB_IPFORWARD_ROW2), c_int)
IF_MAX_STRING_SIZE = 256


def default_rows(rows) -> list:
    """(interface index, route metric, next hop address or None) of each default route (prefix length 0) among rows."""
    return [(r.InterfaceIndex, r.Metric, r.NextHop.get()) for r in rows if r.DestinationPrefix.PrefixLength == 0]


def route_rows(rows) -> list:
    """(interface index, prefix, next hop or None for on-link) of each route among rows; a prefix with host bits is skipped."""
    out = []
    for r in rows:
        addr = r.DestinationPrefix.Prefix.get()
        if addr is None:
            continue
        try:
            net = ipaddress.ip_network(f"{addr}/{r.DestinationPrefix.PrefixLength}")
        except ValueError:
            continue
        hop = r.NextHop.get()
        out.append((r.InterfaceIndex, net, None if hop is None or hop.is_unspecified else hop))
    return out


def route_error(what: str, code: int) -> RouteError:
    """A RouteError for a Win32 error code: the nearest errno, and the code itself in .winerror."""
    return win_error(RouteError, what, code)


class Iphlpapi:
    """iphlpapi.dll: interface lookup, unicast addresses, IP interface settings and routes."""

    def __init__(self, lib=None):
        if lib is None:
            if sys.platform != "win32":
                raise RouteError(f"the iphlpapi router needs Windows (iphlpapi.dll is a Windows library); this is {sys.platform}")
            lib = ctypes.WinDLL("iphlpapi.dll")
        self._lib = lib
        sig = {
            "ConvertInterfaceAliasToLuid": (ctypes.c_wchar_p, POINTER(NET_LUID)),
            "ConvertInterfaceLuidToIndex": (POINTER(NET_LUID), POINTER(NET_IFINDEX)),
            "InitializeIpForwardEntry": (POINTER(MIB_IPFORWARD_ROW2),),
            "CreateIpForwardEntry2": (POINTER(MIB_IPFORWARD_ROW2),),
            "DeleteIpForwardEntry2": (POINTER(MIB_IPFORWARD_ROW2),),
            "InitializeUnicastIpAddressEntry": (POINTER(MIB_UNICASTIPADDRESS_ROW),),
            "CreateUnicastIpAddressEntry": (POINTER(MIB_UNICASTIPADDRESS_ROW),),
            "DeleteUnicastIpAddressEntry": (POINTER(MIB_UNICASTIPADDRESS_ROW),),
            "InitializeIpInterfaceEntry": (POINTER(MIB_IPINTERFACE_ROW),),
            "GetIpInterfaceEntry": (POINTER(MIB_IPINTERFACE_ROW),),
            "SetIpInterfaceEntry": (POINTER(MIB_IPINTERFACE_ROW),),
            "GetIpForwardTable2": (c_uint16, POINTER(POINTER(MIB_IPFORWARD_TABLE2))),
            "FreeMibTable": (c_void_p,),
            "ConvertInterfaceIndexToLuid": (NET_IFINDEX, POINTER(NET_LUID)),
            "ConvertInterfaceLuidToAlias": (POINTER(NET_LUID), ctypes.c_wchar_p, c_size_t),
            "NotifyRouteChange2": (c_uint16, ROUTE_CHANGE_CALLBACK, c_void_p, ctypes.c_uint8, POINTER(c_void_p)),
            "CancelMibChangeNotify2": (c_void_p,),
        }
        for name, args in sig.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = None if name.startswith("Initialize") or name == "FreeMibTable" else c_uint32
        self._callbacks = {}  # notification handle -> its ctypes callback, alive until cancelled

    def alias_to_luid(self, name: str) -> int:
        luid = NET_LUID()
        code = self._lib.ConvertInterfaceAliasToLuid(name, byref(luid))
        if code:
            raise route_error(f"no interface {name!r} (ConvertInterfaceAliasToLuid)", code)
        return luid.value

    def luid_to_index(self, luid: int) -> int:
        index = NET_IFINDEX()
        code = self._lib.ConvertInterfaceLuidToIndex(byref(NET_LUID(luid)), byref(index))
        if code:
            raise route_error(f"ConvertInterfaceLuidToIndex {luid:#x}", code)
        return index.value

    def forward_row(self) -> MIB_IPFORWARD_ROW2:
        row = MIB_IPFORWARD_ROW2()
        self._lib.InitializeIpForwardEntry(byref(row))
        return row

    def create_route(self, row: MIB_IPFORWARD_ROW2) -> int:
        return self._lib.CreateIpForwardEntry2(byref(row))

    def delete_route(self, row: MIB_IPFORWARD_ROW2) -> int:
        return self._lib.DeleteIpForwardEntry2(byref(row))

    def address_row(self) -> MIB_UNICASTIPADDRESS_ROW:
        row = MIB_UNICASTIPADDRESS_ROW()
        self._lib.InitializeUnicastIpAddressEntry(byref(row))
        return row

    def create_address(self, row: MIB_UNICASTIPADDRESS_ROW) -> int:
        return self._lib.CreateUnicastIpAddressEntry(byref(row))

    def delete_address(self, row: MIB_UNICASTIPADDRESS_ROW) -> int:
        return self._lib.DeleteUnicastIpAddressEntry(byref(row))

    def interface_row(self, luid: int, family: int) -> tuple[int, MIB_IPINTERFACE_ROW]:
        """(code, row) of GetIpInterfaceEntry for luid and family (ERROR_NOT_FOUND if the family is off there)."""
        row = MIB_IPINTERFACE_ROW()
        self._lib.InitializeIpInterfaceEntry(byref(row))
        row.Family = family
        row.InterfaceLuid = luid
        return self._lib.GetIpInterfaceEntry(byref(row)), row

    def set_interface(self, row: MIB_IPINTERFACE_ROW) -> int:
        return self._lib.SetIpInterfaceEntry(byref(row))

    def default_routes(self, family: int) -> list:
        """(interface index, route metric, next hop) of every default route of family (AF_INET or AF_INET6)."""
        return self._forward_table(family, default_rows)

    def routes(self, family: int) -> list:
        """(interface index, prefix, next hop or None) of every route of family (AF_INET or AF_INET6)."""
        return self._forward_table(family, route_rows)

    def _forward_table(self, family: int, convert) -> list:
        """convert(rows) of the routing table of family, read with GetIpForwardTable2 and freed after."""
        table = POINTER(MIB_IPFORWARD_TABLE2)()
        code = self._lib.GetIpForwardTable2(family, byref(table))
        if code:
            raise route_error(f"GetIpForwardTable2 family {family}", code)
        try:
            return convert(table.contents.rows())
        finally:
            self._lib.FreeMibTable(table)

    def index_to_alias(self, index: int) -> str:
        luid = NET_LUID()
        code = self._lib.ConvertInterfaceIndexToLuid(index, byref(luid))
        if code:
            raise route_error(f"ConvertInterfaceIndexToLuid {index}", code)
        buf = ctypes.create_unicode_buffer(IF_MAX_STRING_SIZE + 1)
        code = self._lib.ConvertInterfaceLuidToAlias(byref(luid), buf, len(buf))
        if code:
            raise route_error(f"ConvertInterfaceLuidToAlias {index}", code)
        return buf.value

    def notify_route_change(self, changed) -> int:
        """Call changed() (on a system thread) whenever an IPv4 or IPv6 route changes; a handle for cancel_notify."""
        callback = ROUTE_CHANGE_CALLBACK(lambda context, row, kind: changed())
        handle = c_void_p()
        code = self._lib.NotifyRouteChange2(0, callback, None, 0, byref(handle))  # AF_UNSPEC: both families
        if code:
            raise route_error("NotifyRouteChange2", code)
        self._callbacks[handle.value] = callback
        return handle.value

    def cancel_notify(self, handle: int) -> None:
        """Stop the notification; returns once its callback no longer runs."""
        if self._callbacks.pop(handle, None) is not None:
            self._lib.CancelMibChangeNotify2(handle)
