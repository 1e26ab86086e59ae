"""Socket options ztun sets on its own outbound sockets so they never loop into the TUN: the fwmark, or an interface.

Egress is what every outbound socket is made with. Linux keeps its sockets out of the TUN with
the fwmark its policy rules skip (the default); everywhere, and on Linux with
tun.outbound_interface, they are bound to the physical interface instead, with the option of
the platform (bind_to_interface). The default-route monitor moves the binding when the default
route moves; sockets made before keep theirs.
"""

import errno
import socket
import struct
import sys

from ..errors import RouteError

SO_MARK = getattr(socket, "SO_MARK", 36)  # Linux; 36 in <asm-generic/socket.h>
SO_BINDTODEVICE = 25  # Linux <asm-generic/socket.h>: by name
IP_BOUND_IF, IPV6_BOUND_IF = 25, 125  # macOS <netinet/in.h>, <netinet6/in6.h>: by index
IP_UNICAST_IF, IPV6_UNICAST_IF = 31, 31  # Windows <ws2ipdef.h>: by index (IPv4's in network byte order)
IPPROTO_IPV6 = getattr(socket, "IPPROTO_IPV6", 41)


def mark_socket(sock: socket.socket, mark: int) -> None:
    """Give sock's packets the fwmark that ztun's policy rules skip, so they never loop into the TUN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    except OSError as e:
        raise RouteError(f"set SO_MARK {mark:#x} (needs CAP_NET_ADMIN)", e.errno) from None


def interface_option(family: int, name: str, index: int, platform: str = sys.platform) -> tuple:
    """(level, option, value) that binds a socket of family to the interface name / index on platform."""
    if platform.startswith("linux"):
        return socket.SOL_SOCKET, SO_BINDTODEVICE, name.encode() + b"\0"
    v6 = family == socket.AF_INET6
    if platform == "darwin":
        return (IPPROTO_IPV6, IPV6_BOUND_IF, struct.pack("=I", index)) if v6 else \
            (socket.IPPROTO_IP, IP_BOUND_IF, struct.pack("=I", index))
    if platform == "win32":
        # IPv4 takes the index in network byte order, IPv6 in host order (the documented asymmetry).
        return (IPPROTO_IPV6, IPV6_UNICAST_IF, struct.pack("=I", index)) if v6 else \
            (socket.IPPROTO_IP, IP_UNICAST_IF, struct.pack("!I", index))
    raise RouteError(f"binding a socket to an interface is not implemented for platform {platform!r}")


def bind_to_interface(sock, family: int, name: str, index: int, platform: str = sys.platform) -> None:
    """Bind sock (family AF_INET or AF_INET6) to the interface; OSError naming it if the OS refuses."""
    level, option, value = interface_option(family, name, index, platform)
    try:
        sock.setsockopt(level, option, value)
    except OSError as e:
        raise OSError(e.errno, f"bind socket to interface {name} (index {index}): {e.strerror or e}") from None


class Egress:
    """How ztun's own sockets leave the host: with fwmark, or bound to interface (name and index).

    interface set means binding (the fwmark is then not set). follow() moves the binding, from
    the loop: the default-route monitor calls it. With binding asked for but no interface known
    (no default route right now), apply() fails with ENETUNREACH instead of making a socket
    that would loop into the TUN.
    """

    __slots__ = ("fwmark", "binding", "interface", "index", "platform", "moves")

    def __init__(self, fwmark: int = 0, *, binding: bool = False, interface: str | None = None, index: int = 0,
                 platform: str = sys.platform):
        self.fwmark, self.platform = fwmark, platform
        self.binding = binding or interface is not None
        self.interface, self.index = interface, index
        self.moves = 0  # how often follow() changed the interface (a counter)

    @classmethod
    def of(cls, value) -> "Egress":
        """An Egress as given, or one that marks with the fwmark value (0: neither mark nor bind)."""
        return value if isinstance(value, Egress) else cls(int(value or 0))

    def follow(self, interface: str | None, index: int = 0) -> bool:
        """Bind new sockets to interface from now on (None: none known); True if that changed anything."""
        if (interface, index) == (self.interface, self.index):
            return False
        if interface is not None and self.interface is not None:
            self.moves += 1
        self.interface, self.index = interface, index
        return True

    def apply(self, sock, family: int) -> None:
        """Mark or bind sock, a new socket of family, before it connects or sends."""
        if self.binding:
            if self.interface is None:
                raise OSError(errno.ENETUNREACH, "no default route: no interface to bind ztun's sockets to")
            bind_to_interface(sock, family, self.interface, self.index, self.platform)
        elif self.fwmark:
            mark_socket(sock, self.fwmark)

    def describe(self) -> str:
        if self.binding:
            return f"bound to {self.interface or '(no interface)'}"
        return f"fwmark {self.fwmark:#x}" if self.fwmark else "unmarked"

    def __repr__(self):
        return f"Egress({self.describe()})"
