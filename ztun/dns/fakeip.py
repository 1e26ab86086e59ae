"""FakeIpPool: the bounded LRU mapping between domain names and the fake addresses fake-IP DNS hands out.

A client asks for example.com, gets 198.18.0.7, connects there; the forwarder then asks the pool
which domain 198.18.0.7 stands for and lets the SOCKS5 proxy resolve the name (no DNS leak).

Each family (IPv4, IPv6) has its own range and its own LRU of at most `capacity` domains. New
addresses come from a cursor walking the range; when the LRU is full its least recently used
domain is evicted and its address joins a FIFO of free addresses. The cursor hands out at most
`min(size, 2 * capacity)` distinct addresses, after which addresses come from that FIFO: an
evicted address is reused as late as the range allows (clients and applications often cache
answers far longer than the TTL), memory stays bounded by the capacity even for a /18 of IPv6,
and every operation is O(1). When the range holds no more addresses than the capacity, the
victim's address is the one reused at once.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import OrderedDict, deque

from ..errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalize(domain: str) -> str:
    """The pool's key for a name: lower-case, without the trailing dot."""
    return domain.rstrip(".").lower()


class _Range:
    """One family's addresses: the allocator and the two directions of the mapping."""

    __slots__ = (
        "by_address",
        "by_domain",
        "capacity",
        "cursor",
        "excluded",
        "first",
        "free",
        "fresh_left",
        "last",
        "network",
    )

    def __init__(self, field: str, cidr: str, capacity: int, exclude: list, version: int):
        try:
            network = ipaddress.ip_network(cidr)
        except (ValueError, TypeError):
            raise ConfigError(f"{field}: {cidr!r} is not a CIDR prefix (like "
                              f"{'198.18.0.0/15' if version == 4 else 'fc00::/18'})") from None
        if network.version != version:
            raise ConfigError(f"{field}: {cidr} is not an IPv{version} prefix")
        self.network = network
        base = int(network.network_address)
        # The network and broadcast (last) addresses are never handed out, in IPv6 too.
        self.first, self.last = base + 1, base + network.num_addresses - 2
        self.excluded = frozenset(int(a) for a in exclude
                                  if a.version == version and self.first <= int(a) <= self.last)
        size = self.last - self.first + 1 - len(self.excluded)
        if size < 1:
            raise ConfigError(f"{field}: {cidr} leaves no address to hand out "
                              "(network, broadcast and excluded addresses are never used)")
        self.capacity = min(capacity, size)
        self.cursor = self.first
        self.fresh_left = min(size, 2 * self.capacity)  # distinct addresses the cursor may still hand out
        self.free: deque[int] = deque()  # evicted addresses, oldest first
        self.by_domain: OrderedDict[str, int] = OrderedDict()  # LRU order: least recently used first
        self.by_address: dict[int, str] = {}

    def address_for(self, domain: str) -> int:
        address = self.by_domain.get(domain)
        if address is not None:
            self.by_domain.move_to_end(domain)
            return address
        if len(self.by_domain) >= self.capacity:
            _, victim = self.by_domain.popitem(last=False)
            del self.by_address[victim]
            self.free.append(victim)
        if self.fresh_left:
            while self.cursor in self.excluded:  # at most len(excluded) steps
                self.cursor += 1
            address = self.cursor
            self.cursor += 1
            self.fresh_left -= 1
        else:
            address = self.free.popleft()
        self.by_domain[domain] = address
        self.by_address[address] = domain
        return address

    def lookup(self, address: int) -> str | None:
        domain = self.by_address.get(address)
        if domain is not None:
            self.by_domain.move_to_end(domain)
        return domain


class FakeIpPool:
    """Domain <-> fake address, per family, bounded LRU; see the module docstring.

    inet4 / inet6: the ranges (None turns a family off); capacity: the most domains mapped per
    family (a smaller range lowers it); exclude: addresses never handed out (e.g. the TUN's own).
    """

    def __init__(self, inet4: str | None = "198.18.0.0/15", inet6: str | None = "fc00::/18",
                 capacity: int = 65536, exclude=()):
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"dns.capacity: must be a positive integer, got {capacity!r}")
        excluded = []
        for a in exclude:
            try:
                excluded.append(ipaddress.ip_address(a))
            except ValueError:
                raise ConfigError(f"fake-IP pool exclude: {a!r} is not an IP address") from None
        self._v4 = _Range("dns.fake_ip4", inet4, capacity, excluded, 4) if inet4 is not None else None
        self._v6 = _Range("dns.fake_ip6", inet6, capacity, excluded, 6) if inet6 is not None else None

    @property
    def inet4(self) -> ipaddress.IPv4Network | None:
        return self._v4.network if self._v4 else None

    @property
    def inet6(self) -> ipaddress.IPv6Network | None:
        return self._v6.network if self._v6 else None

    def capacity(self, family: int) -> int:
        """How many domains this family can map at once (0: the family is off)."""
        r = self._range(family)
        return r.capacity if r else 0

    def has(self, family: int) -> bool:
        """Whether this family (socket.AF_INET / AF_INET6) has a range."""
        return self._range(family) is not None

    def _range(self, family: int) -> _Range | None:
        if family == socket.AF_INET:
            return self._v4
        if family == socket.AF_INET6:
            return self._v6
        raise ValueError(f"family must be socket.AF_INET or socket.AF_INET6, got {family!r}")

    def address_for(self, domain: str, family: int) -> IPAddress:
        """The fake address standing for domain (the same one while it stays mapped); refreshes its LRU place.

        ValueError when the family is off or the name is empty (the root cannot be faked).
        """
        r = self._range(family)
        if r is None:
            raise ValueError(f"no fake-IP range for {'IPv4' if family == socket.AF_INET else 'IPv6'}")
        key = normalize(domain)
        if not key:
            raise ValueError("the root name has no fake address")
        value = r.address_for(key)
        return ipaddress.IPv4Address(value) if family == socket.AF_INET else ipaddress.IPv6Address(value)

    def _find(self, address) -> tuple[_Range | None, int]:
        try:
            a = address if isinstance(address, (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
                else ipaddress.ip_address(address)
        except ValueError:
            return None, 0
        r = self._v4 if a.version == 4 else self._v6
        if r is None or a not in r.network:
            return None, 0
        return r, int(a)

    def lookup(self, address) -> str | None:
        """The domain a fake address stands for (refreshing its LRU place), None if unmapped or not fake."""
        r, value = self._find(address)
        return r.lookup(value) if r is not None else None

    def contains(self, address) -> bool:
        """Whether address (str or ipaddress) lies inside a fake range, mapped or not."""
        return self._find(address)[0] is not None

    def __len__(self) -> int:
        """Domains mapped, both families together."""
        return sum(len(r.by_domain) for r in (self._v4, self._v6) if r is not None)
