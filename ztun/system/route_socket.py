"""Darwin PF_ROUTE messages: rt_msghdr encoding and decoding, and a socket that sends one and awaits its reply.

The layout is XNU's bsd/net/route.h (struct rt_msghdr, 92 bytes: u_short rtm_msglen;
u_char rtm_version, rtm_type; u_short rtm_index; int rtm_flags, rtm_addrs; pid_t rtm_pid;
int rtm_seq, rtm_errno, rtm_use; u_int32_t rtm_inits; struct rt_metrics of 14 u_int32_t),
followed by one sockaddr per bit set in rtm_addrs, in RTAX order, each padded to a
multiple of 4 bytes (ROUNDUP32 in XNU's bsd/net/rtsock.c; a zero-length one takes 4).
"""

import errno as _errno
import ipaddress
import itertools
import os
import socket
import struct
import time
from dataclasses import dataclass, field

from ..errors import RouteError
from . import darwin_sockaddr as sa

PF_ROUTE = 17  # Darwin's PF_ROUTE; on Linux 17 is AF_PACKET, so never open this elsewhere
RTM_VERSION = 5

RTM_ADD = 0x1
RTM_DELETE = 0x2
RTM_CHANGE = 0x3
RTM_GET = 0x4

RTF_UP = 0x1
RTF_GATEWAY = 0x2
RTF_HOST = 0x4
RTF_REJECT = 0x8
RTF_DONE = 0x40
RTF_LLINFO = 0x400
RTF_STATIC = 0x800
RTF_BLACKHOLE = 0x1000
RTF_WASCLONED = 0x20000
RTF_IFSCOPE = 0x1000000

RTA_DST = 0x1
RTA_GATEWAY = 0x2
RTA_NETMASK = 0x4
RTA_GENMASK = 0x8
RTA_IFP = 0x10
RTA_IFA = 0x20
RTA_AUTHOR = 0x40
RTA_BRD = 0x80

RTAX_DST, RTAX_GATEWAY, RTAX_NETMASK, RTAX_GENMASK, RTAX_IFP, RTAX_IFA, RTAX_AUTHOR, RTAX_BRD = range(8)
RTAX_MAX = 8

HEADER = struct.Struct("<HBBH2xiiiiiiI14I")  # every macOS ABI is little-endian
SIZEOF_RT_MSGHDR = HEADER.size  # 92

TYPE_NAMES = {RTM_ADD: "RTM_ADD", RTM_DELETE: "RTM_DELETE", RTM_CHANGE: "RTM_CHANGE", RTM_GET: "RTM_GET"}


def roundup(n: int) -> int:
    """XNU's ROUNDUP32: a sockaddr's space in a routing message."""
    return 1 + ((n - 1) | 3) if n > 0 else 4


@dataclass
class RouteMessage:
    """One routing message. addrs maps an RTAX index to an address, a LinkAddr, or raw sockaddr bytes."""

    type: int
    flags: int = 0
    addrs: dict = field(default_factory=dict)
    seq: int = 0
    index: int = 0
    pid: int = 0
    errno: int = 0
    version: int = RTM_VERSION
    use: int = 0
    inits: int = 0
    metrics: tuple = (0,) * 14

    @property
    def dst(self):
        return self.addrs.get(RTAX_DST)

    @property
    def gateway(self):
        return self.addrs.get(RTAX_GATEWAY)

    @property
    def netmask(self):
        return self.addrs.get(RTAX_NETMASK)


def _encode_addr(value) -> bytes:
    if isinstance(value, sa.LinkAddr):
        return sa.sockaddr_dl(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return sa.sockaddr_ip(value)


def encode(msg: RouteMessage) -> bytes:
    """The bytes of msg as written to a PF_ROUTE socket."""
    bits, body = 0, b""
    for i in range(RTAX_MAX):
        if i in msg.addrs:
            raw = _encode_addr(msg.addrs[i])
            bits |= 1 << i
            body += raw.ljust(roundup(len(raw)), b"\0")
    length = SIZEOF_RT_MSGHDR + len(body)
    head = HEADER.pack(length, msg.version, msg.type, msg.index, msg.flags, bits, msg.pid, msg.seq, msg.errno, msg.use, msg.inits, *msg.metrics)
    return head + body


def decode(buf: bytes) -> RouteMessage:
    """A routing message read from a PF_ROUTE socket; ValueError if it is not a whole rt_msghdr message."""
    if len(buf) < SIZEOF_RT_MSGHDR:
        raise ValueError(f"routing message of {len(buf)} bytes is shorter than rt_msghdr ({SIZEOF_RT_MSGHDR})")
    f = HEADER.unpack_from(buf)
    length, version, type_, index, flags, bits, pid, seq, err, use, inits = f[:11]
    if version != RTM_VERSION:
        raise ValueError(f"routing message version {version}, expected {RTM_VERSION}")
    if not SIZEOF_RT_MSGHDR <= length <= len(buf):
        raise ValueError(f"rtm_msglen {length} does not fit the {len(buf)} bytes read")
    msg = RouteMessage(type_, flags, {}, seq, index, pid, err, version, use, inits, tuple(f[11:]))
    off, hint = SIZEOF_RT_MSGHDR, None
    for i in range(RTAX_MAX):
        if not bits & (1 << i):
            continue
        if off >= length:
            raise ValueError(f"rtm_addrs 0x{bits:x} names more sockaddrs than the message holds")
        n = buf[off]
        value = sa.decode(bytes(buf[off : off + n]), hint)
        if i == RTAX_DST and isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            hint = sa.AF_INET if value.version == 4 else sa.AF_INET6
        msg.addrs[i] = value
        off += roundup(n)
    return msg


def route_message(type_: int, cidr, gateway=None, link: sa.LinkAddr | None = None, *, flags: int = 0) -> RouteMessage:
    """An RTM_ADD/RTM_DELETE/RTM_CHANGE for cidr via gateway (an IP: RTF_GATEWAY) or out of link (an interface route).

    A full-length prefix is a host route (RTF_HOST, no netmask), as route(8) sends it.
    """
    net = ipaddress.ip_network(cidr)
    flags |= RTF_STATIC | (RTF_UP if type_ != RTM_DELETE else 0)
    addrs = {RTAX_DST: net.network_address}
    if gateway is not None:
        gateway = ipaddress.ip_address(gateway)
        if gateway.version != net.version:
            raise ValueError(f"gateway {gateway} is not of {net}'s family")
        addrs[RTAX_GATEWAY] = gateway
        flags |= RTF_GATEWAY
    elif link is not None:
        addrs[RTAX_GATEWAY] = link
    else:
        raise ValueError("a route needs a gateway or an interface")
    if net.prefixlen == net.max_prefixlen:
        flags |= RTF_HOST
    else:
        addrs[RTAX_NETMASK] = sa.mask_sockaddr(net.prefixlen, net.version)
    return RouteMessage(type_, flags, addrs, index=link.index if link is not None else 0)


def get_message(dst) -> RouteMessage:
    """An RTM_GET for the route dst takes, asking for the interface too (RTA_IFP), as `route get` does."""
    dst = ipaddress.ip_address(dst)
    return RouteMessage(RTM_GET, RTF_UP | RTF_GATEWAY | RTF_HOST | RTF_STATIC, {RTAX_DST: dst, RTAX_IFP: sa.LinkAddr(0)})


def split_dump(buf: bytes) -> tuple[list, int]:
    """The messages of a routing table dump (sysctl NET_RT_DUMP: rt_msghdr messages back to back), and how many
    could not be read (another version, or damage); a length that runs past the end stops the walk."""
    out, bad, off = [], 0, 0
    while off + 4 <= len(buf):
        length = struct.unpack_from("<H", buf, off)[0]
        if length < 4 or off + length > len(buf):
            bad += 1
            break
        try:
            out.append(decode(bytes(buf[off : off + length])))
        except ValueError:
            bad += 1
        off += length
    return out, bad


def prefix_length(mask, version: int) -> int | None:
    """The prefix length of a netmask as a dump carries it (an address, or None for an empty one); None if not contiguous."""
    bits = 32 if version == 4 else 128
    if mask is None:
        return 0
    if not isinstance(mask, (ipaddress.IPv4Address, ipaddress.IPv6Address)) or mask.version != version:
        return None
    value = int(mask)
    n = bin(value).count("1")
    return n if value == ((1 << n) - 1) << (bits - n) else None


CTL_NET = 4
NET_RT_DUMP = 1


def sysctl_dump() -> bytes:
    """The routing table (both families) as sysctl {CTL_NET, PF_ROUTE, 0, 0, NET_RT_DUMP, 0} returns it (macOS)."""
    import ctypes
    import ctypes.util

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    mib = (ctypes.c_int * 6)(CTL_NET, PF_ROUTE, 0, 0, NET_RT_DUMP, 0)
    for _ in range(8):  # the table may grow between the two calls
        size = ctypes.c_size_t()
        if libc.sysctl(mib, 6, None, ctypes.byref(size), None, 0) != 0:
            raise RouteError("sysctl NET_RT_DUMP (size)", ctypes.get_errno())
        buf = ctypes.create_string_buffer(size.value + size.value // 4 + 4096)
        size.value = len(buf)
        if libc.sysctl(mib, 6, buf, ctypes.byref(size), None, 0) == 0:
            return buf.raw[: size.value]
        if ctypes.get_errno() != _errno.ENOMEM:
            raise RouteError("sysctl NET_RT_DUMP", ctypes.get_errno())
    raise RouteError("sysctl NET_RT_DUMP: the table kept growing", _errno.ENOMEM)


class RouteSocket:
    """A PF_ROUTE socket: request() writes a message and reads the kernel's echo of it (matched by pid and seq)."""

    def __init__(self, sock: socket.socket | None = None, *, pid: int | None = None, timeout: float = 2.0):
        # sock is injectable so the request/reply logic can be tested over a socketpair.
        self._sock = sock if sock is not None else socket.socket(PF_ROUTE, socket.SOCK_RAW, socket.AF_UNSPEC)
        self._pid = os.getpid() if pid is None else pid
        self._seq = itertools.count(1)
        self._timeout = timeout

    def request(self, msg: RouteMessage, what: str = "") -> RouteMessage:
        """Send msg with the next sequence number; return the kernel's reply or raise RouteError with its errno."""
        msg.seq = next(self._seq)
        what = what or TYPE_NAMES.get(msg.type, f"routing message {msg.type}")
        try:
            self._sock.send(encode(msg))
        except OSError as e:
            # The kernel also echoes the failed message; its seq no longer matches a later request.
            raise RouteError(what, e.errno) from None
        deadline = time.monotonic() + self._timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RouteError(f"{what}: no reply from the routing socket", _errno.ETIMEDOUT)
            self._sock.settimeout(left)
            try:
                buf = self._sock.recv(4096)
            except TimeoutError:
                continue
            except OSError as e:
                raise RouteError(f"{what}: reading the reply", e.errno) from None
            try:
                reply = decode(buf)
            except ValueError:
                continue  # another version or a message of no interest
            if reply.pid == self._pid and reply.seq == msg.seq and reply.type == msg.type:
                break
        if reply.errno:
            raise RouteError(what, reply.errno)
        return reply

    def close(self) -> None:
        self._sock.close()
