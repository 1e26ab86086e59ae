"""The Windows SDK structures ztun passes to iphlpapi, as ctypes structures (importable on any platform).

From netioapi.h, nldef.h, ws2ipdef.h and ifdef.h. The sizes and offsets on 64-bit
Windows, which tests/test_windows_structs.py checks, are those asserted by
wireguard-windows' tunnel/winipcfg/types_test.go: SOCKADDR_INET 28, IP_ADDRESS_PREFIX 32,
MIB_UNICASTIPADDRESS_ROW 80, MIB_IPFORWARD_ROW2 104, MIB_IPINTERFACE_ROW 168.
"""

import ctypes
import ipaddress
from ctypes import c_int32, c_int64, c_uint8, c_uint16, c_uint32, c_uint64

AF_UNSPEC = 0
AF_INET = 2
AF_INET6 = 23  # Windows' value

# nldef.h enums (C enums are 4-byte ints)
IpPrefixOriginManual = 1
IpSuffixOriginManual = 1
IpDadStatePreferred = 4
MIB_IPPROTO_NETMGMT = 3  # NL_ROUTE_PROTOCOL of a static route
NlroManual = 0
RouterDiscoveryDisabled = 0

INFINITE_LIFETIME = 0xFFFFFFFF

BOOLEAN = c_uint8
NET_IFINDEX = c_uint32
NET_LUID = c_uint64  # a union of ULONG64 Value and bit fields: 8 bytes, 8-aligned


class IN_ADDR(ctypes.Structure):
    _fields_ = [("s_addr", c_uint8 * 4)]


class IN6_ADDR(ctypes.Structure):
    _fields_ = [("Byte", c_uint8 * 16)]


class SOCKADDR_IN(ctypes.Structure):
    _fields_ = [("sin_family", c_uint16), ("sin_port", c_uint16), ("sin_addr", IN_ADDR), ("sin_zero", c_uint8 * 8)]


class SOCKADDR_IN6(ctypes.Structure):
    _fields_ = [
        ("sin6_family", c_uint16),
        ("sin6_port", c_uint16),
        ("sin6_flowinfo", c_uint32),
        ("sin6_addr", IN6_ADDR),
        ("sin6_scope_id", c_uint32),
    ]


class SOCKADDR_INET(ctypes.Union):
    _fields_ = [("Ipv4", SOCKADDR_IN), ("Ipv6", SOCKADDR_IN6), ("si_family", c_uint16)]

    def set(self, addr) -> None:
        """Store an IPv4 or IPv6 address (port, flow info and scope 0)."""
        addr = ipaddress.ip_address(addr)
        ctypes.memset(ctypes.addressof(self), 0, ctypes.sizeof(self))
        if addr.version == 4:
            self.Ipv4.sin_family = AF_INET
            self.Ipv4.sin_addr.s_addr[:] = list(addr.packed)
        else:
            self.Ipv6.sin6_family = AF_INET6
            self.Ipv6.sin6_addr.Byte[:] = list(addr.packed)

    def get(self):
        if self.si_family == AF_INET:
            return ipaddress.IPv4Address(bytes(self.Ipv4.sin_addr.s_addr))
        if self.si_family == AF_INET6:
            return ipaddress.IPv6Address(bytes(self.Ipv6.sin6_addr.Byte))
        return None


class IP_ADDRESS_PREFIX(ctypes.Structure):
    _fields_ = [("Prefix", SOCKADDR_INET), ("PrefixLength", c_uint8)]

    def set(self, cidr) -> None:
        net = ipaddress.ip_network(cidr)
        self.Prefix.set(net.network_address)
        self.PrefixLength = net.prefixlen


class MIB_UNICASTIPADDRESS_ROW(ctypes.Structure):
    _fields_ = [
        ("Address", SOCKADDR_INET),
        ("InterfaceLuid", NET_LUID),
        ("InterfaceIndex", NET_IFINDEX),
        ("PrefixOrigin", c_int32),
        ("SuffixOrigin", c_int32),
        ("ValidLifetime", c_uint32),
        ("PreferredLifetime", c_uint32),
        ("OnLinkPrefixLength", c_uint8),
        ("SkipAsSource", BOOLEAN),
        ("DadState", c_int32),
        ("ScopeId", c_uint32),
        ("CreationTimeStamp", c_int64),
    ]


class MIB_IPFORWARD_ROW2(ctypes.Structure):
    _fields_ = [
        ("InterfaceLuid", NET_LUID),
        ("InterfaceIndex", NET_IFINDEX),
        ("DestinationPrefix", IP_ADDRESS_PREFIX),
        ("NextHop", SOCKADDR_INET),
        ("SitePrefixLength", c_uint8),
        ("ValidLifetime", c_uint32),
        ("PreferredLifetime", c_uint32),
        ("Metric", c_uint32),
        ("Protocol", c_int32),
        ("Loopback", BOOLEAN),
        ("AutoconfigureAddress", BOOLEAN),
        ("Publish", BOOLEAN),
        ("Immortal", BOOLEAN),
        ("Age", c_uint32),
        ("Origin", c_int32),
    ]


class MIB_IPINTERFACE_ROW(ctypes.Structure):
    _fields_ = [
        ("Family", c_uint16),
        ("InterfaceLuid", NET_LUID),
        ("InterfaceIndex", NET_IFINDEX),
        ("MaxReassemblySize", c_uint32),
        ("InterfaceIdentifier", c_uint64),
        ("MinRouterAdvertisementInterval", c_uint32),
        ("MaxRouterAdvertisementInterval", c_uint32),
        ("AdvertisingEnabled", BOOLEAN),
        ("ForwardingEnabled", BOOLEAN),
        ("WeakHostSend", BOOLEAN),
        ("WeakHostReceive", BOOLEAN),
        ("UseAutomaticMetric", BOOLEAN),
        ("UseNeighborUnreachabilityDetection", BOOLEAN),
        ("ManagedAddressConfigurationSupported", BOOLEAN),
        ("OtherStatefulConfigurationSupported", BOOLEAN),
        ("AdvertiseDefaultRoute", BOOLEAN),
        ("RouterDiscoveryBehavior", c_int32),
        ("DadTransmits", c_uint32),
        ("BaseReachableTime", c_uint32),
        ("RetransmitTime", c_uint32),
        ("PathMtuDiscoveryTimeout", c_uint32),
        ("LinkLocalAddressBehavior", c_int32),
        ("LinkLocalAddressTimeout", c_uint32),
        ("ZoneIndices", c_uint32 * 16),
        ("SitePrefixLength", c_uint32),
        ("Metric", c_uint32),
        ("NlMtu", c_uint32),
        ("Connected", BOOLEAN),
        ("SupportsWakeUpPatterns", BOOLEAN),
        ("SupportsNeighborDiscovery", BOOLEAN),
        ("SupportsRouterDiscovery", BOOLEAN),
        ("ReachableTime", c_uint32),
        ("TransmitOffload", c_uint8),  # NL_INTERFACE_OFFLOAD_ROD: one byte of BOOLEAN bit fields
        ("ReceiveOffload", c_uint8),
        ("DisableDefaultRoutes", BOOLEAN),
    ]
