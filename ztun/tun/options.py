"""TunOptions: what the TUN device, its addresses, routes and rules should be, validated at construction."""

import ipaddress
from dataclasses import dataclass

from ..errors import ConfigError
from .._fast.nat_config import NatConfig
from .napi import MODES as NAPI_MODES

IFNAMSIZ = 16
MIN_MTU = 576
MIN_MTU6 = 1280
MAX_MTU = 65535
RESERVED_TABLES = (0, 253, 254, 255)  # unspec, default, main, local
RULE_SPAN = 10  # ztun's rules use priorities rule_priority .. rule_priority + RULE_SPAN - 1
MAX_RULE_PRIORITY = 32765 - RULE_SPAN  # the main table's rule sits at 32766


def _fail(field: str, reason: str):
    err = ConfigError(f"{field}: {reason}")
    err.field = field  # the CLI maps it back to the flag
    raise err


def _interface(field: str, value, version: int):
    if value is None:
        return None
    try:
        iface = ipaddress.ip_interface(value)
    except (ValueError, TypeError):
        _fail(field, f"{value!r} is not an IPv{version} address with a prefix length (like {'198.18.0.1/30' if version == 4 else 'fd00:18::1/126'})")
    if iface.version != version:
        _fail(field, f"{value} is not an IPv{version} prefix")
    a = iface.ip
    if a.is_multicast or a.is_loopback or a.is_unspecified:
        _fail(field, f"{a} cannot be the stack's own address (multicast, loopback or unspecified)")
    try:
        NatConfig.from_prefixes(**{f"inet{version}": str(iface)}, **{f"port{version}": 1})
    except ConfigError:
        _fail(field, f"{iface} leaves no room for the next address B after the stack's address A={a} (use a /30 or wider with A not the last host)")
    return iface


def _networks(field: str, values) -> tuple:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        _fail(field, f"must be a list of CIDRs, got {values!r}")
    out = []
    for v in values:
        try:
            net = ipaddress.ip_network(v)
        except (ValueError, TypeError):
            try:
                loose = ipaddress.ip_network(v, strict=False)
            except (ValueError, TypeError):
                _fail(field, f"{v!r} is not an IPv4 or IPv6 CIDR")
            _fail(field, f"{v} has host bits set (did you mean {loose}?)")
        if net not in out:
            out.append(net)
    return tuple(out)


def _int(field: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        _fail(field, f"must be {lo}..{hi}, got {value}")
    return value


@dataclass(frozen=True)
class TunOptions:
    """The TUN interface and how traffic is routed into it.

    inet4/inet6 give the stack's own address A and prefix (B, the "next" address, follows
    A); None leaves a family off the TUN. routes go into ztun's routing table `table`,
    selected by policy rules at priorities rule_priority..rule_priority+9 that skip
    sockets marked with `fwmark`; exclude_routes are cut out of them. auto_route sends
    all traffic through the TUN (see ztun.system.route_plan); strict_route makes a family
    without an address on the TUN unreachable and lets only directly connected subnets
    bypass it. fail_closed keeps what is routed into the TUN unreachable after a crash
    (until the next run or cleanup). hijack_dns (not a key: the appliance sets it with DNS
    on) sends port 53 to any address into the TUN under auto_route. file_descriptor adopts an already open TUN
    (Android VpnService, systemd) instead of opening /dev/net/tun. offload sets
    IFF_VNET_HDR: each packet carries a virtio_net_hdr in its slot's headroom. napi
    (Linux, a device ztun creates) is "off", "on" or "auto": see ztun.tun.napi.
    outbound_interface binds ztun's own sockets to an interface instead of marking them:
    "auto" (the interface of the default route, followed as it moves) or a name; None is
    the fwmark on Linux, "auto" elsewhere (see ztun.system.sockopt).
    """

    name: str = "ztun0"
    mtu: int = 65535  # measured best: fewer, larger packets through the TUN (README, Performance)
    inet4: object = "172.19.0.1/28"
    inet6: object = "fdfe:dcba:9876::1/124"
    routes: tuple = ()
    exclude_routes: tuple = ()
    auto_route: bool = False
    strict_route: bool = False
    fail_closed: bool = True
    hijack_dns: bool = False
    table: int = 2022
    rule_priority: int = 9000
    fwmark: int = 0x2022
    file_descriptor: int | None = None
    multi_queue: bool = False
    offload: bool = False
    napi: str = "off"
    outbound_interface: str | None = None

    def __post_init__(self):
        def put(field, value):
            object.__setattr__(self, field, value)

        name = self.name
        if not isinstance(name, str) or not name:
            _fail("name", f"must be a non-empty string, got {name!r}")
        if len(name.encode()) >= IFNAMSIZ:
            _fail("name", f"{name!r} is {len(name.encode())} bytes; an interface name has at most {IFNAMSIZ - 1}")
        if name in (".", "..") or any(c in name for c in "/:%") or any(c.isspace() for c in name):
            _fail("name", f"{name!r} is not a valid interface name (no '/', ':', '%', whitespace, '.' or '..')")

        put("inet4", _interface("inet4", self.inet4, 4))
        put("inet6", _interface("inet6", self.inet6, 6))
        if self.inet4 is None and self.inet6 is None and self.file_descriptor is None:
            _fail("inet4", "the TUN needs an IPv4 or an IPv6 prefix (inet4 and inet6 are both unset)")

        mtu = _int("mtu", self.mtu, MIN_MTU, MAX_MTU)
        if self.inet6 is not None and mtu < MIN_MTU6:
            _fail("mtu", f"{mtu} is below {MIN_MTU6}, the IPv6 minimum; raise it or leave inet6 unset")

        for field in ("auto_route", "strict_route", "fail_closed", "hijack_dns", "multi_queue", "offload"):
            if not isinstance(getattr(self, field), bool):
                _fail(field, f"must be true or false, got {getattr(self, field)!r}")

        if self.napi not in NAPI_MODES:
            _fail("napi", f"must be one of {', '.join(NAPI_MODES)}, got {self.napi!r}")

        routes = _networks("routes", self.routes)
        excludes = _networks("exclude_routes", self.exclude_routes)
        for field, nets in (("routes", routes),):
            for net in nets:
                if getattr(self, f"inet{net.version}") is None:
                    _fail(field, f"{net} is IPv{net.version} but inet{net.version} is not set")
        if excludes and not (routes or self.auto_route):
            _fail("exclude_routes", "only cuts into routes; give routes or auto_route too")
        if self.strict_route and not self.auto_route:
            _fail("strict_route", "applies to auto_route; set auto_route too")
        put("routes", routes)
        put("exclude_routes", excludes)

        table = _int("table", self.table, 1, 0xFFFFFFFF)
        if table in RESERVED_TABLES:
            _fail("table", f"{table} is a table of the system (default 253, main 254, local 255)")
        _int("rule_priority", self.rule_priority, 1, MAX_RULE_PRIORITY)
        _int("fwmark", self.fwmark, 1, 0xFFFFFFFF)
        out = self.outbound_interface
        if out is not None:
            if not isinstance(out, str) or not out:
                _fail("outbound_interface", f"must be \"auto\" or an interface name, got {out!r}")
            if out != "auto":
                if len(out.encode()) >= IFNAMSIZ or out in (".", "..") or any(c in out for c in "/:%") \
                        or any(c.isspace() for c in out):
                    _fail("outbound_interface", f"{out!r} is not a valid interface name (or \"auto\")")
                if out == name:
                    _fail("outbound_interface", f"{out!r} is the TUN itself: name the uplink, or \"auto\"")
        if self.file_descriptor is not None:
            _int("file_descriptor", self.file_descriptor, 0, 1 << 30)

    @property
    def stack4(self):
        """A: the stack's own IPv4 address (None without inet4)."""
        return None if self.inet4 is None else self.inet4.ip

    @property
    def next4(self):
        """B: the IPv4 address rewritten client packets come from."""
        return None if self.inet4 is None else self.inet4.ip + 1

    @property
    def stack6(self):
        return None if self.inet6 is None else self.inet6.ip

    @property
    def next6(self):
        return None if self.inet6 is None else self.inet6.ip + 1

    @property
    def addresses(self) -> tuple:
        """The TUN's own addresses with their prefix, IPv4 first."""
        return tuple(a for a in (self.inet4, self.inet6) if a is not None)

    @property
    def rule_priorities(self) -> range:
        """Every rule priority ztun may use; leftovers in this range are ztun's."""
        return range(self.rule_priority, self.rule_priority + RULE_SPAN)
