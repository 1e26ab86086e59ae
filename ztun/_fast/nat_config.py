"""Configuration and Python-facing records of the NAT flow table, shared by both implementations."""

import ipaddress
import socket
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import ConfigError
from . import defs as d

MAX_CAPACITY = 1 << 24
MAX_NEXT_ADDRESSES = 1024
MAX_AUTO_NEXT = 16  # next addresses taken from a prefix by default: 16 x 64,512 ports


def addr_bytes(value) -> bytes:
    """A 4- or 16-byte address from bytes, a string or an ipaddress object."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        if len(b) not in (4, 16):
            raise ConfigError(f"an address must be 4 or 16 bytes, got {len(b)}")
        return b
    if isinstance(value, str):
        # the common case (an accepted socket's peer, once per connection): inet_pton is ~20x
        # faster than ipaddress; anything it refuses (a scope id, garbage) goes the slow way
        try:
            return socket.inet_pton(socket.AF_INET6 if ":" in value else socket.AF_INET, value)
        except OSError:
            pass
    try:
        return ipaddress.ip_address(value).packed
    except ValueError as e:
        raise ConfigError(str(e)) from None


def key_addr(value) -> tuple[int, bytes]:
    """(IP version, address padded to 16 bytes) as the table keys it."""
    b = addr_bytes(value)
    return (4, b + bytes(12)) if len(b) == 4 else (6, b)


@dataclass(frozen=True)
class NatConfig:
    """What the NAT needs to know about the system stack.

    stack4/stack6 is the stack's own address A with the kernel listener's port
    (port4/port6); next4/next6 are the "next" addresses B that rewritten client
    packets come from. Each next address offers the ports port_min..port_max, so
    capacity beyond ~64k flows needs several next addresses.

    port_rest: a freed NAT port is handed out again only this many seconds after its
    flow's last packet. The kernel keeps the listener side of a closed connection
    (A:P <- B:n) in TIME_WAIT for 60 s; a new SYN from the same B:n within that time
    can be refused by PAWS, and the client then retries for up to a minute. With
    several next addresses the allocation moves on to one whose oldest free port has
    rested long enough.
    """

    capacity: int = 65536
    stack4: bytes | None = None
    port4: int = 0
    next4: tuple = ()
    stack6: bytes | None = None
    port6: int = 0
    next6: tuple = ()
    port_min: int = 1024
    port_max: int = 65535
    timeouts: tuple = d.DEFAULT_TIMEOUTS
    port_rest: float = d.PORT_REST

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        if not isinstance(self.capacity, int) or not 1 <= self.capacity <= MAX_CAPACITY:
            raise ConfigError(f"capacity must be an integer 1..{MAX_CAPACITY}, got {self.capacity!r}")
        if not (isinstance(self.port_min, int) and isinstance(self.port_max, int) and 1 <= self.port_min <= self.port_max <= 65535):
            raise ConfigError(f"NAT port range must satisfy 1 <= port_min <= port_max <= 65535, got {self.port_min}..{self.port_max}")
        for fam, size in (("4", 4), ("6", 16)):
            stack, port, nxt = getattr(self, "stack" + fam), getattr(self, "port" + fam), getattr(self, "next" + fam)
            if stack is None:
                if nxt:
                    raise ConfigError(f"next{fam} given without stack{fam}")
                put("next" + fam, ())
                continue
            stack = addr_bytes(stack)
            nxt = tuple(addr_bytes(a) for a in nxt)
            if len(stack) != size or any(len(a) != size for a in nxt):
                raise ConfigError(f"stack{fam} and next{fam} must be IPv{fam} addresses")
            if not nxt or len(nxt) > MAX_NEXT_ADDRESSES:
                raise ConfigError(f"next{fam} must hold 1..{MAX_NEXT_ADDRESSES} addresses, got {len(nxt)}")
            if stack in nxt or len(set(nxt)) != len(nxt):
                raise ConfigError(f"next{fam} must be distinct addresses other than stack{fam}")
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise ConfigError(f"port{fam} (the stack's listener port) must be 1..65535, got {port!r}")
            put("stack" + fam, stack)
            put("next" + fam, nxt)
        if self.stack4 is None and self.stack6 is None:
            raise ConfigError("the NAT needs stack4 or stack6")
        t = tuple(float(x) for x in self.timeouts)
        if len(t) != d.N_STATES or any(x <= 0 for x in t[1:]):
            raise ConfigError(f"timeouts must be {d.N_STATES} numbers (one per state), positive past the first")
        put("timeouts", t)
        if isinstance(self.port_rest, bool) or not isinstance(self.port_rest, (int, float)) or not 0 <= self.port_rest <= 3600:
            raise ConfigError(f"port_rest must be 0..3600 seconds, got {self.port_rest!r}")
        put("port_rest", float(self.port_rest))

    @classmethod
    def from_prefixes(cls, inet4=None, inet6=None, *, port4=0, port6=0, next_count=1, **kw):
        """A from the prefix's address, B = the next_count addresses after it in the prefix.

        next_count None: every address after A that the prefix holds, at most MAX_AUTO_NEXT.
        """

        def split(cidr, family):
            if cidr is None:
                return None, ()
            iface = ipaddress.ip_interface(cidr)
            if iface.version != family:
                raise ConfigError(f"inet{family} must be an IPv{family} prefix, got {cidr}")
            net, a = iface.network, iface.ip
            want = next_count or MAX_AUTO_NEXT
            hosts = [a + k for k in range(1, want + 1) if int(a) + k <= int(net.broadcast_address)]
            if family == 4 and net.prefixlen < 31:
                hosts = [h for h in hosts if h != net.broadcast_address]
            if len(hosts) < (next_count or 1):
                raise ConfigError(f"inet{family} {cidr} leaves no room for {next_count} next address(es) after {a}")
            return a.packed, tuple(h.packed for h in hosts)

        s4, n4 = split(inet4, 4)
        s6, n6 = split(inet6, 6)
        return cls(stack4=s4, port4=port4, next4=n4, stack6=s6, port6=port6, next6=n6, **kw)

    @property
    def next_addresses(self) -> tuple:
        """All next addresses, IPv4 first: a flow's nat_index points into this."""
        return self.next4 + self.next6


class FlowInfo(NamedTuple):
    """One flow of the table, as Python sees it (for the stack, status and tests)."""

    fid: int
    proto: int
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    dport: int
    nat_addr: ipaddress.IPv4Address | ipaddress.IPv6Address
    nat_port: int
    state: str
    decision: str
    created: float
    last_seen: float
    packets_out: int
    bytes_out: int
    packets_in: int
    bytes_in: int


def flow_info(config: NatConfig, fid, version, proto, src16, sport, dst16, dport, nat_index, nat_port, state, decision, created, last_seen, pout, bout, pin, bin_):
    alen = 4 if version == 4 else 16
    return FlowInfo(
        fid, proto,
        ipaddress.ip_address(bytes(src16[:alen])), sport,
        ipaddress.ip_address(bytes(dst16[:alen])), dport,
        ipaddress.ip_address(config.next_addresses[nat_index]), nat_port,
        d.STATE_NAMES[state], d.DECISION_NAMES[decision],
        created, last_seen, pout, bout, pin, bin_,
    )


def counters(verdict_counts, drop_counts) -> dict:
    """Counters by name: verdicts, and drops by reason."""
    out = {f"verdict_{n}": int(verdict_counts[i]) for i, n in enumerate(d.VERDICT_NAMES)}
    out.update({f"drop_{n}": int(drop_counts[i]) for i, n in enumerate(d.REASON_NAMES) if i})
    return out
