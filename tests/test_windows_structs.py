"""The iphlpapi structures ztun builds with ctypes match the Windows SDK, and the Windows Router fills and undoes them.

Expected sizes and offsets (64-bit Windows) are the constants asserted by
wireguard-windows tunnel/winipcfg/types_test.go against the SDK's netioapi.h; this host's
ctypes must lay the structures out the same way for the check to mean anything, which
holds on 64-bit hosts (checked below).
"""

import ctypes
import errno
import ipaddress
import struct
import sys

import pytest

from ztun.errors import RouteError, ZtunError
from ztun.system import iphlpapi as ip
from ztun.system import iphlpapi_types as t
from ztun.system import winerror as we
from ztun.system.router import Router

pytestmark = pytest.mark.skipif(ctypes.sizeof(ctypes.c_void_p) != 8, reason="the expected layouts are those of 64-bit Windows")


def offsets(struct_type):
    return {name: getattr(struct_type, name).offset for name, *_ in struct_type._fields_}


def test_sockaddr_inet_and_prefix():
    assert ctypes.sizeof(t.SOCKADDR_IN) == 16
    assert ctypes.sizeof(t.SOCKADDR_IN6) == 28
    assert ctypes.sizeof(t.SOCKADDR_INET) == 28  # rawSockaddrInetSize
    assert t.SOCKADDR_IN6.sin6_addr.offset == 8 and t.SOCKADDR_IN6.sin6_scope_id.offset == 24
    assert ctypes.sizeof(t.IP_ADDRESS_PREFIX) == 32  # ipAddressPrefixSize
    assert t.IP_ADDRESS_PREFIX.PrefixLength.offset == 28


def test_mib_unicastipaddress_row():
    assert ctypes.sizeof(t.MIB_UNICASTIPADDRESS_ROW) == 80
    assert offsets(t.MIB_UNICASTIPADDRESS_ROW) == {
        "Address": 0, "InterfaceLuid": 32, "InterfaceIndex": 40, "PrefixOrigin": 44, "SuffixOrigin": 48,
        "ValidLifetime": 52, "PreferredLifetime": 56, "OnLinkPrefixLength": 60, "SkipAsSource": 61,
        "DadState": 64, "ScopeId": 68, "CreationTimeStamp": 72,
    }


def test_mib_ipforward_row2():
    assert ctypes.sizeof(t.MIB_IPFORWARD_ROW2) == 104
    assert offsets(t.MIB_IPFORWARD_ROW2) == {
        "InterfaceLuid": 0, "InterfaceIndex": 8, "DestinationPrefix": 12, "NextHop": 44, "SitePrefixLength": 72,
        "ValidLifetime": 76, "PreferredLifetime": 80, "Metric": 84, "Protocol": 88, "Loopback": 92,
        "AutoconfigureAddress": 93, "Publish": 94, "Immortal": 95, "Age": 96, "Origin": 100,
    }


def test_mib_ipinterface_row():
    assert ctypes.sizeof(t.MIB_IPINTERFACE_ROW) == 168
    o = offsets(t.MIB_IPINTERFACE_ROW)
    want = {
        "InterfaceLuid": 8, "InterfaceIndex": 16, "MaxReassemblySize": 20, "InterfaceIdentifier": 24,
        "MinRouterAdvertisementInterval": 32, "MaxRouterAdvertisementInterval": 36, "AdvertisingEnabled": 40,
        "ForwardingEnabled": 41, "WeakHostSend": 42, "WeakHostReceive": 43, "UseAutomaticMetric": 44,
        "UseNeighborUnreachabilityDetection": 45, "ManagedAddressConfigurationSupported": 46,
        "OtherStatefulConfigurationSupported": 47, "AdvertiseDefaultRoute": 48, "RouterDiscoveryBehavior": 52,
        "DadTransmits": 56, "BaseReachableTime": 60, "RetransmitTime": 64, "PathMtuDiscoveryTimeout": 68,
        "LinkLocalAddressBehavior": 72, "LinkLocalAddressTimeout": 76, "ZoneIndices": 80, "SitePrefixLength": 144,
        "Metric": 148, "NlMtu": 152, "Connected": 156, "SupportsWakeUpPatterns": 157,
        "SupportsNeighborDiscovery": 158, "SupportsRouterDiscovery": 159, "ReachableTime": 160,
        "TransmitOffload": 164, "ReceiveOffload": 165, "DisableDefaultRoutes": 166,
    }
    assert {k: o[k] for k in want} == want


def test_sockaddr_inet_values():
    s = t.SOCKADDR_INET()
    s.set("198.18.0.1")
    raw = bytes(s)
    assert raw[:8] == bytes([2, 0, 0, 0, 198, 18, 0, 1]) and raw[8:] == bytes(20)  # family AF_INET 2 (LE), port 0, address
    assert s.get() == ipaddress.ip_address("198.18.0.1")
    s.set("fd00:18::1")
    raw = bytes(s)
    assert raw[:8] == bytes([23, 0, 0, 0, 0, 0, 0, 0])  # Windows AF_INET6 is 23
    assert raw[8:24] == ipaddress.ip_address("fd00:18::1").packed and raw[24:] == bytes(4)
    assert s.get() == ipaddress.ip_address("fd00:18::1")


# --- the Router, with a stand-in for iphlpapi ------------------------------------------------


class FakeIphlpapi:
    """Rows kept in dicts; Initialize* as documented (infinite lifetimes, the rest zero)."""

    LUID = 0x0123000000000001

    def __init__(self):
        self.routes, self.addresses, self.calls = {}, {}, []
        self.iface = {t.AF_INET: (1500, 1, 25)}  # (NlMtu, UseAutomaticMetric, Metric); IPv6 off

    def alias_to_luid(self, name):
        if name != "ztun0":
            raise ip.route_error(f"no interface {name!r}", we.ERROR_INVALID_PARAMETER)
        return self.LUID

    def luid_to_index(self, luid):
        return 42

    def forward_row(self):
        row = t.MIB_IPFORWARD_ROW2()
        row.ValidLifetime = row.PreferredLifetime = t.INFINITE_LIFETIME
        return row

    def address_row(self):
        row = t.MIB_UNICASTIPADDRESS_ROW()
        row.ValidLifetime = row.PreferredLifetime = t.INFINITE_LIFETIME
        return row

    @staticmethod
    def _rkey(row):
        return (row.InterfaceLuid, bytes(row.DestinationPrefix), bytes(row.NextHop))

    def create_route(self, row):
        self.calls.append(("create_route", bytes(row)))
        key = self._rkey(row)
        if key in self.routes:
            return we.ERROR_OBJECT_ALREADY_EXISTS
        self.routes[key] = bytes(row)
        return 0

    def delete_route(self, row):
        self.calls.append(("delete_route", bytes(row)))
        return 0 if self.routes.pop(self._rkey(row), None) else we.ERROR_NOT_FOUND

    def create_address(self, row):
        key = bytes(row.Address)
        if key in self.addresses:
            return we.ERROR_OBJECT_ALREADY_EXISTS
        self.addresses[key] = bytes(row)
        return 0

    def delete_address(self, row):
        return 0 if self.addresses.pop(bytes(row.Address), None) else we.ERROR_NOT_FOUND

    def interface_row(self, luid, family):
        row = t.MIB_IPINTERFACE_ROW()
        row.Family, row.InterfaceLuid = family, luid
        if family not in self.iface:
            return we.ERROR_NOT_FOUND, row
        row.NlMtu, row.UseAutomaticMetric, row.Metric = self.iface[family]
        row.SitePrefixLength = 64  # whatever Get returns; Set must be given 0 for IPv4
        return 0, row

    def set_interface(self, row):
        self.calls.append(("set_interface", row.Family, row.SitePrefixLength))
        self.iface[row.Family] = (row.NlMtu, row.UseAutomaticMetric, row.Metric)
        return 0


def test_route_row_bytes():
    from ztun.system.router_windows import route_row

    raw = bytes(route_row(FakeIphlpapi(), 0x0123000000000001, "128.0.0.0/1", None, metric=5))
    assert raw[0:8] == (0x0123000000000001).to_bytes(8, "little")  # InterfaceLuid
    assert raw[12:14] == b"\x02\x00" and raw[16:20] == bytes([128, 0, 0, 0])  # DestinationPrefix.Prefix
    assert raw[40] == 1  # DestinationPrefix.PrefixLength
    assert raw[44:46] == b"\x02\x00" and raw[48:52] == bytes(4)  # NextHop 0.0.0.0: on-link
    assert struct.unpack_from("<III", raw, 76) == (t.INFINITE_LIFETIME, t.INFINITE_LIFETIME, 5)  # lifetimes, Metric
    assert struct.unpack_from("<i", raw, 88)[0] == t.MIB_IPPROTO_NETMGMT
    raw6 = bytes(route_row(FakeIphlpapi(), 7, "8000::/1", "fd00:18::2"))
    assert raw6[12:14] == b"\x17\x00" and raw6[20:36] == ipaddress.ip_address("8000::").packed and raw6[40] == 1
    assert raw6[44:46] == b"\x17\x00" and raw6[52:68] == ipaddress.ip_address("fd00:18::2").packed
    with pytest.raises(RouteError):
        route_row(FakeIphlpapi(), 7, "8000::/1", "10.0.0.1")


def test_address_row_bytes():
    from ztun.system.router_windows import address_row

    raw = bytes(address_row(FakeIphlpapi(), 0x55, "198.18.0.1/30"))
    assert raw[0:2] == b"\x02\x00" and raw[4:8] == bytes([198, 18, 0, 1])
    assert raw[32:40] == (0x55).to_bytes(8, "little")
    assert struct.unpack_from("<ii", raw, 44) == (t.IpPrefixOriginManual, t.IpSuffixOriginManual)
    assert raw[60] == 30 and struct.unpack_from("<i", raw, 64)[0] == t.IpDadStatePreferred


def test_windows_router_records_and_undoes():
    from ztun.system.router_windows import WindowsRouter

    api = FakeIphlpapi()
    router = WindowsRouter(api)
    assert isinstance(router, Router)
    assert router.get_interface_index("ztun0") == 42
    with pytest.raises(RouteError) as ei:
        router.get_interface_index("nope")
    assert ei.value.errno == errno.EINVAL and ei.value.winerror == we.ERROR_INVALID_PARAMETER
    assert router.tun_attached("ztun0") and not router.tun_attached("nope")

    router.set_link("ztun0", up=True, mtu=9000)
    router.set_metric("ztun0", 0)
    assert api.iface[t.AF_INET] == (9000, 0, 0)
    assert ("set_interface", t.AF_INET, 0) in api.calls  # SitePrefixLength 0 for IPv4
    assert router.add_address("ztun0", "198.18.0.1/30") is True
    assert router.add_address("ztun0", "198.18.0.1/30") is False
    assert router.add_route("0.0.0.0/1", iface="ztun0") is True
    assert router.add_route("128.0.0.0/1", iface="ztun0") is True
    assert router.add_route("128.0.0.0/1", iface="ztun0") is False  # exists: not recorded twice
    assert router.delete_route("128.0.0.0/1", iface="ztun0") is True
    assert router.delete_route("128.0.0.0/1", iface="ztun0") is False
    for bad in (dict(table=5, iface="ztun0"), dict(kind="throw", iface="ztun0"), dict()):
        with pytest.raises(RouteError):
            router.add_route("10.0.0.0/8", **bad)
    with pytest.raises(RouteError):
        router.set_link("ztun0", up=False)

    router.close()
    router.close()
    assert api.routes == {} and api.addresses == {}
    assert api.iface[t.AF_INET] == (1500, 1, 25)  # MTU and automatic metric restored


def test_iphlpapi_and_router_elsewhere_are_clear_errors():
    from ztun.system.router_windows import WindowsRouter

    if sys.platform == "win32":
        pytest.skip("on Windows these load the real iphlpapi.dll")
    with pytest.raises(ZtunError, match="needs Windows"):
        WindowsRouter()
    with pytest.raises(ZtunError, match="Windows library"):
        ip.Iphlpapi()


@pytest.mark.skipif(sys.platform != "win32", reason="loads the real iphlpapi.dll (Windows only)")
def test_real_iphlpapi_reads_the_loopback_interface():
    api = ip.Iphlpapi()
    luid = api.alias_to_luid("Loopback Pseudo-Interface 1")
    assert luid and api.luid_to_index(luid) > 0
    code, row = api.interface_row(luid, t.AF_INET)
    assert code == 0 and row.InterfaceLuid == luid and row.NlMtu > 0
