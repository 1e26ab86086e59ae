"""A ctypes binding of the iphlpapi.dll calls ztun uses, keyed by interface LUID (Windows; importable anywhere).

Each call returns the Win32 error code the API returns (NO_ERROR = 0); conversions
raise RouteError. Loading needs Windows; tests use a fake with the same methods.
"""

import ctypes
import sys
from ctypes import POINTER, byref, c_uint32

from ..errors import RouteError
from .iphlpapi_types import (
    MIB_IPFORWARD_ROW2,
    MIB_IPINTERFACE_ROW,
    MIB_UNICASTIPADDRESS_ROW,
    NET_IFINDEX,
    NET_LUID,
)
from .winerror import win_error


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
        }
        for name, args in sig.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = None if name.startswith("Initialize") else c_uint32

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
