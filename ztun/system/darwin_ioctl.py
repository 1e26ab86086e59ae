"""Darwin interface ioctls: request numbers, struct packing (ifreq, ifaliasreq, in6_aliasreq, in6_ifreq) and the calls.

Request numbers follow bsd/sys/ioccom.h (_IOC: direction | (size & 0x1fff) << 16 |
group << 8 | number) with the sizes of XNU's structs on 64-bit macOS; tests check them
against golang.org/x/sys/unix's zerrors_darwin_*.go values.
"""

import ipaddress
import socket
import struct

from ..errors import RouteError
from . import darwin_sockaddr as sa

IOCPARM_MASK = 0x1FFF
IOC_OUT = 0x40000000
IOC_IN = 0x80000000
IOC_INOUT = IOC_IN | IOC_OUT

IFNAMSIZ = 16
SIZEOF_IFREQ = 32  # name[16] + a 16-byte union (sockaddr, short flags, int mtu, ...)
SIZEOF_IFALIASREQ = 64  # name[16]; sockaddr addr, broadaddr/dstaddr, mask (16 each)
# name[16]; sockaddr_in6 addr, dstaddr, prefixmask (28 each); int flags; struct
# in6_addrlifetime { time_t expire, preferred; u_int32_t vltime, pltime } (24): netinet6/in6_var.h
SIZEOF_IN6_ALIASREQ = 128
# name[16] + a union whose largest member is struct icmp6_ifstat (34 u_quad_t): 288,
# the size in SIOCDIFADDR_IN6 = 0x81206919 as macOS software uses it (not in x/sys/unix).
SIZEOF_IN6_IFREQ = 288

IFF_UP = 0x1
IFF_RUNNING = 0x40
IN6_IFF_NODAD = 0x20  # netinet6/in6_var.h: no duplicate address detection
IN6_IFF_SECURED = 0x400  # as sing-tun sets it on utun addresses
ND6_INFINITE_LIFETIME = 0xFFFFFFFF  # netinet6/nd6.h


def ioc(direction: int, group: str, num: int, size: int) -> int:
    return direction | ((size & IOCPARM_MASK) << 16) | (ord(group) << 8) | num


SIOCSIFFLAGS = ioc(IOC_IN, "i", 16, SIZEOF_IFREQ)
SIOCGIFFLAGS = ioc(IOC_INOUT, "i", 17, SIZEOF_IFREQ)
SIOCDIFADDR = ioc(IOC_IN, "i", 25, SIZEOF_IFREQ)
SIOCAIFADDR = ioc(IOC_IN, "i", 26, SIZEOF_IFALIASREQ)
SIOCGIFMTU = ioc(IOC_INOUT, "i", 51, SIZEOF_IFREQ)
SIOCSIFMTU = ioc(IOC_IN, "i", 52, SIZEOF_IFREQ)
SIOCDIFADDR_IN6 = ioc(IOC_IN, "i", 25, SIZEOF_IN6_IFREQ)
SIOCAIFADDR_IN6 = ioc(IOC_IN, "i", 26, SIZEOF_IN6_ALIASREQ)

_IFREQ_INT = struct.Struct("<16si12x")
_IFREQ_FLAGS = struct.Struct("<16sH14x")  # ifr_flags is a short; read unsigned, as flags
_IN6_LIFETIME = struct.Struct("<qqII")


def _name(name: str) -> bytes:
    b = name.encode()
    if not 0 < len(b) < IFNAMSIZ:
        raise ValueError(f"interface name must be 1..{IFNAMSIZ - 1} bytes, got {name!r}")
    return b


def ifreq_int(name: str, value: int = 0) -> bytes:
    """struct ifreq carrying an int (ifr_mtu, ifr_metric)."""
    return _IFREQ_INT.pack(_name(name), value)


def ifreq_flags(name: str, flags: int = 0) -> bytes:
    """struct ifreq carrying ifr_flags (a short)."""
    return _IFREQ_FLAGS.pack(_name(name), flags & 0xFFFF)


def ifreq_addr(name: str, addr) -> bytes:
    """struct ifreq carrying ifr_addr, a sockaddr_in (SIOCDIFADDR)."""
    return _name(name).ljust(IFNAMSIZ, b"\0") + sa.sockaddr_in(addr)


def ifaliasreq(name: str, iface: ipaddress.IPv4Interface, dstaddr=None) -> bytes:
    """struct ifaliasreq for SIOCAIFADDR. A utun is point-to-point: like sing-tun, its own address is the peer."""
    dst = iface.ip if dstaddr is None else dstaddr
    return _name(name).ljust(IFNAMSIZ, b"\0") + sa.sockaddr_in(iface.ip) + sa.sockaddr_in(dst) + sa.sockaddr_in(iface.netmask)


def in6_aliasreq(name: str, iface: ipaddress.IPv6Interface, flags: int = IN6_IFF_NODAD | IN6_IFF_SECURED) -> bytes:
    """struct in6_aliasreq for SIOCAIFADDR_IN6: no DAD, infinite lifetimes; a /128 gets the next address as peer."""
    dst = sa.sockaddr_in6(iface.ip + 1) if iface.network.prefixlen == 128 else bytes(sa.SIZEOF_SOCKADDR_IN6)
    return (
        _name(name).ljust(IFNAMSIZ, b"\0")
        + sa.sockaddr_in6(iface.ip)
        + dst
        + sa.sockaddr_in6(iface.netmask)
        + struct.pack("<i", flags)
        + _IN6_LIFETIME.pack(0, 0, ND6_INFINITE_LIFETIME, ND6_INFINITE_LIFETIME)
    )


def in6_ifreq_addr(name: str, addr) -> bytes:
    """struct in6_ifreq carrying ifr_addr (SIOCDIFADDR_IN6)."""
    return (_name(name).ljust(IFNAMSIZ, b"\0") + sa.sockaddr_in6(addr)).ljust(SIZEOF_IN6_IFREQ, b"\0")


class Ifconfig:
    """The interface ioctls ifconfig(8) uses, on one AF_INET and one AF_INET6 datagram socket.

    ioctl and the sockets are injectable so the callers' logic can be tested off macOS.
    """

    def __init__(self, ioctl=None, sockets=None):
        if ioctl is None:
            import fcntl  # POSIX only: this module also imports on Windows

            ioctl = fcntl.ioctl
        self._ioctl = ioctl
        self._socks = sockets  # {4: fd, 6: fd}, opened on first use

    def _fd(self, version: int) -> int:
        if self._socks is None:
            self._socks = {}
        if version not in self._socks:
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            self._socks[version] = socket.socket(family, socket.SOCK_DGRAM)
        s = self._socks[version]
        return s if isinstance(s, int) else s.fileno()

    def _call(self, version: int, request: int, arg: bytes, what: str) -> bytes:
        try:
            return self._ioctl(self._fd(version), request, arg)
        except OSError as e:
            raise RouteError(what, e.errno) from None

    def get_mtu(self, name: str) -> int:
        return _IFREQ_INT.unpack(self._call(4, SIOCGIFMTU, ifreq_int(name), f"SIOCGIFMTU {name}"))[1]

    def set_mtu(self, name: str, mtu: int) -> None:
        self._call(4, SIOCSIFMTU, ifreq_int(name, mtu), f"SIOCSIFMTU {name} {mtu}")

    def get_flags(self, name: str) -> int:
        return _IFREQ_FLAGS.unpack(self._call(4, SIOCGIFFLAGS, ifreq_flags(name), f"SIOCGIFFLAGS {name}"))[1]

    def set_flags(self, name: str, flags: int) -> None:
        self._call(4, SIOCSIFFLAGS, ifreq_flags(name, flags), f"SIOCSIFFLAGS {name}")

    def add_address(self, name: str, iface) -> None:
        iface = ipaddress.ip_interface(iface)
        if iface.version == 4:
            self._call(4, SIOCAIFADDR, ifaliasreq(name, iface), f"SIOCAIFADDR {iface} on {name}")
        else:
            self._call(6, SIOCAIFADDR_IN6, in6_aliasreq(name, iface), f"SIOCAIFADDR_IN6 {iface} on {name}")

    def delete_address(self, name: str, iface) -> None:
        iface = ipaddress.ip_interface(iface)
        if iface.version == 4:
            self._call(4, SIOCDIFADDR, ifreq_addr(name, iface.ip), f"SIOCDIFADDR {iface.ip} on {name}")
        else:
            self._call(6, SIOCDIFADDR_IN6, in6_ifreq_addr(name, iface.ip), f"SIOCDIFADDR_IN6 {iface.ip} on {name}")

    def close(self) -> None:
        for s in (self._socks or {}).values():
            if not isinstance(s, int):
                s.close()
        self._socks = None
