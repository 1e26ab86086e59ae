"""The configuration's shape: one frozen dataclass a table, holding every default once, and the keys
of each table in the order they are documented and printed."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ...tun.options import TunOptions

MAX_SECONDS = 86400.0
MAX_IDLE_SECONDS = 7 * 86400.0
MIN_FAKE_POOL = 256  # addresses; a smaller pool would recycle addresses of live connections
SUN_PATH_MAX = 107  # bytes of a unix socket path, without the terminating NUL
MAX_FILE_BYTES = 1 << 20  # a configuration is a few KiB: a larger file is not one
MAX_DEPTH = 16  # tables and arrays inside each other; a configuration needs 4 (route.rules[i].cidr)
REDACTED = "********"
BUILTIN_OUTBOUNDS = ("direct", "block")
OUTBOUND_TYPES = ("direct", "block", "socks5")
PROTOCOLS = ("tcp", "udp", "icmp")


@dataclass(frozen=True)
class FlowsConfig:
    udp_timeout: float = 60.0
    connect_timeout: float = 10.0
    tcp_idle_timeout: float = 7200.0
    udp_max_sessions: int = 16384


@dataclass(frozen=True)
class GatewayConfig:
    lan_interfaces: tuple = ()
    enable_forwarding: bool = False


@dataclass(frozen=True)
class LogConfig:
    level: str = "INFO"
    format: str = "text"  # "text" | "json"


@dataclass(frozen=True)
class OutboundConfig:
    name: str
    type: str  # "direct" | "block" | "socks5"
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class RuleConfig:
    """One routing rule: every non-empty field must match (AND), any value within a field (OR)."""

    outbound: str
    cidr: tuple = ()  # ip_network, destination
    port: tuple = ()  # (lo, hi) inclusive, destination
    protocol: frozenset = frozenset()  # subset of PROTOCOLS
    source: tuple = ()  # ip_network
    domain: tuple = ()
    domain_suffix: tuple = ()
    domain_keyword: tuple = ()


@dataclass(frozen=True)
class RouteConfig:
    rules: tuple = ()
    default: str = "direct"


@dataclass(frozen=True)
class DnsConfig:
    mode: str = "off"  # "off" | "fake-ip" | "forward"
    fake_ip4: object = ipaddress.ip_network("198.18.0.0/15")
    fake_ip6: object = ipaddress.ip_network("fc00::/18")
    capacity: int = 65536
    ttl: int = 1
    upstream: str | None = None  # "host:port", normalised (IPv6 in brackets)
    outbound: str | None = None


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None  # "host:port"


@dataclass(frozen=True)
class ControlConfig:
    socket: str = "/run/ztun/control.sock"  # /run/ztun is the systemd unit's RuntimeDirectory


@dataclass(frozen=True)
class AppConfig:
    tun: TunOptions = field(default_factory=TunOptions)
    flows: FlowsConfig = FlowsConfig()
    gateway: GatewayConfig = GatewayConfig()
    log: LogConfig = LogConfig()
    outbounds: tuple = (OutboundConfig("direct", "direct"), OutboundConfig("block", "block"))
    route: RouteConfig = RouteConfig()
    dns: DnsConfig = DnsConfig()
    metrics: MetricsConfig = MetricsConfig()
    control: ControlConfig = ControlConfig()
    source: str | None = None  # the file it was read from

    def outbound(self, name: str) -> OutboundConfig:
        """The outbound called name (every name a rule, the default or dns.outbound uses exists)."""
        for o in self.outbounds:
            if o.name == name:
                return o
        raise KeyError(name)


# The keys of each table, in the order they are documented and printed.
TUN_KEYS = ("name", "mtu", "inet4", "inet6", "routes", "exclude_routes", "auto_route", "strict_route",
            "table", "rule_priority", "fwmark", "offload", "napi")
KEYS = {
    "": ("tun", "flows", "gateway", "log", "outbounds", "route", "dns", "metrics", "control"),
    "tun": TUN_KEYS,
    "flows": ("udp_timeout", "connect_timeout", "tcp_idle_timeout", "udp_max_sessions"),
    "gateway": ("lan_interfaces", "enable_forwarding"),
    "log": ("level", "format"),
    "outbounds": ("name", "type", "url", "server", "port", "username", "password"),
    "route": ("default", "rules"),
    "route.rules": ("outbound", "cidr", "port", "protocol", "source", "domain", "domain_suffix", "domain_keyword"),
    "dns": ("mode", "fake_ip4", "fake_ip6", "capacity", "ttl", "upstream", "outbound"),
    "metrics": ("listen",),
    "control": ("socket",),
}
MATCHERS = KEYS["route.rules"][1:]
SOCKS5_KEYS = KEYS["outbounds"][3:]  # a socks5 outbound's keys instead of url
