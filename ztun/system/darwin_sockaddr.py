"""Darwin's BSD socket addresses (with sa_len) as bytes: sockaddr_in, sockaddr_in6 and sockaddr_dl.

Layouts from XNU bsd/netinet/in.h, bsd/netinet6/in6.h and bsd/net/if_dl.h. Multi-byte
fields other than addresses and ports are host order, and every macOS ABI is little-endian.
"""

import ipaddress
import struct
from dataclasses import dataclass

AF_INET = 2
AF_LINK = 18
AF_INET6 = 30  # Darwin's value (Linux uses 10)

SIZEOF_SOCKADDR_IN = 16  # u_char len, family; u_short port; in_addr; char zero[8]
SIZEOF_SOCKADDR_IN6 = 28  # u_char len, family; u_short port; u_int32 flowinfo; in6_addr; u_int32 scope_id
SIZEOF_SOCKADDR_DL = 20  # u_char len, family; u_short index; u_char type, nlen, alen, slen; char data[12]

_IN = struct.Struct("<BBH4s8x")
_IN6 = struct.Struct("<BBHI16sI")
_DL = struct.Struct("<BBHBBBB12s")


@dataclass(frozen=True)
class LinkAddr:
    """A sockaddr_dl naming an interface by index (and name): the gateway of an interface route."""

    index: int
    name: str = ""


def sockaddr_in(addr) -> bytes:
    return _IN.pack(SIZEOF_SOCKADDR_IN, AF_INET, 0, ipaddress.IPv4Address(addr).packed)


def sockaddr_in6(addr, scope_id: int = 0) -> bytes:
    return _IN6.pack(SIZEOF_SOCKADDR_IN6, AF_INET6, 0, 0, ipaddress.IPv6Address(addr).packed, scope_id)


def sockaddr_ip(addr) -> bytes:
    """sockaddr_in or sockaddr_in6 for an address of either family."""
    addr = ipaddress.ip_address(addr)
    return sockaddr_in(addr) if addr.version == 4 else sockaddr_in6(addr)


def sockaddr_dl(link: LinkAddr) -> bytes:
    name = link.name.encode()
    if len(name) > 12:
        raise ValueError(f"interface name {link.name!r} does not fit sockaddr_dl's 12 data bytes")
    return _DL.pack(SIZEOF_SOCKADDR_DL, AF_LINK, link.index, 0, len(name), 0, 0, name)


def mask_sockaddr(prefixlen: int, version: int) -> bytes:
    """The netmask of a prefix as the sockaddr of its family (the form route(8) and x/net/route send)."""
    if version == 4:
        return sockaddr_in(ipaddress.IPv4Network(f"0.0.0.0/{prefixlen}").netmask)
    return sockaddr_in6(ipaddress.IPv6Network(f"::/{prefixlen}").netmask)


def decode(raw: bytes, family_hint: int | None = None):
    """One sockaddr from a routing message: an IP address, a LinkAddr, or the raw bytes of anything else.

    The kernel trims trailing zero bytes off netmasks and may leave their family 0, so a
    netmask is read as the family of the message's destination (family_hint).
    """
    if not raw:
        return None
    length, family = raw[0], raw[1] if len(raw) > 1 else 0
    body = raw[:length]
    if family == AF_LINK and length >= 8:
        index, nlen = struct.unpack_from("<H", body, 2)[0], body[5]
        return LinkAddr(index, body[8 : 8 + nlen].decode(errors="replace"))
    if family not in (AF_INET, AF_INET6):
        family = family_hint
    if family == AF_INET:
        return ipaddress.IPv4Address(bytes(body[4:8]).ljust(4, b"\0"))
    if family == AF_INET6:
        return ipaddress.IPv6Address(bytes(body[8:24]).ljust(16, b"\0"))
    return bytes(body)
