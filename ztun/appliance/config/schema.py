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
CONTROL_DIR = "/run/ztun"  # the systemd unit's RuntimeDirectory
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
    # Outbound TCP connects under way or connected and not yet relayed (each holds a descriptor):
    # beyond either bound a new SYN is dropped (its client retries) and no connect is made.
    max_pending_connects: int = 4096
    max_pending_per_client: int = 512  # per client source address


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
class HealthConfig:
    interval: float = 60.0  # seconds between probes of each SOCKS5 outbound; 0: at start-up only
    check_outbounds: bool = False  # a failed probe at start-up is fatal: exit 1 before ready


@dataclass(frozen=True)
class MetricsConfig:
    listen: str | None = None  # "host:port"


@dataclass(frozen=True)
class ApiConfig:
    listen: str | None = None  # "host:port": the web view and the Clash-compatible API; off when None
    secret: str | None = None  # the Bearer token; required beyond loopback and for any change
    allow_origins: tuple = ()  # origins (scheme://host[:port], or "*") allowed to call it from a browser page


def control_socket(tun_name: str) -> str:
    """The default control socket of the appliance whose TUN is tun_name: one per TUN, so that two
    appliances on one host (in two network namespaces, say) do not take each other's."""
    return f"{CONTROL_DIR}/{tun_name}.sock"


@dataclass(frozen=True)
class ControlConfig:
    socket: str = control_socket(TunOptions.name)  # build() derives it from tun.name when control.socket is unset


@dataclass(frozen=True)
class AppConfig:
    tun: TunOptions = field(default_factory=TunOptions)
    flows: FlowsConfig = FlowsConfig()
    gateway: GatewayConfig = GatewayConfig()
    log: LogConfig = LogConfig()
    outbounds: tuple = (OutboundConfig("direct", "direct"), OutboundConfig("block", "block"))
    route: RouteConfig = RouteConfig()
    dns: DnsConfig = DnsConfig()
    health: HealthConfig = HealthConfig()
    metrics: MetricsConfig = MetricsConfig()
    api: ApiConfig = ApiConfig()
    control: ControlConfig = ControlConfig()
    source: str | None = None  # the file it was read from
    flags: tuple = field(default=(), compare=False, repr=False)  # (key, flag) of each value a flag set, for errors found later

    def outbound(self, name: str) -> OutboundConfig:
        """The outbound called name (every name a rule, the default or dns.outbound uses exists)."""
        for o in self.outbounds:
            if o.name == name:
                return o
        raise KeyError(name)


# The keys of each table, in the order they are documented and printed.
TUN_KEYS = ("name", "mtu", "inet4", "inet6", "routes", "exclude_routes", "auto_route", "strict_route",
            "fail_closed", "table", "rule_priority", "fwmark", "outbound_interface", "offload", "napi")
KEYS = {
    "": ("tun", "flows", "gateway", "log", "outbounds", "route", "dns", "health", "metrics", "api", "control"),
    "tun": TUN_KEYS,
    "flows": ("udp_timeout", "connect_timeout", "tcp_idle_timeout", "udp_max_sessions", "max_pending_connects",
              "max_pending_per_client"),
    "gateway": ("lan_interfaces", "enable_forwarding"),
    "log": ("level", "format"),
    "outbounds": ("name", "type", "url", "server", "port", "username", "password"),
    "route": ("default", "rules"),
    "route.rules": ("outbound", "cidr", "port", "protocol", "source", "domain", "domain_suffix", "domain_keyword"),
    "dns": ("mode", "fake_ip4", "fake_ip6", "capacity", "ttl", "upstream", "outbound"),
    "health": ("interval", "check_outbounds"),
    "metrics": ("listen",),
    "api": ("listen", "secret", "allow_origins"),
    "control": ("socket",),
}
MATCHERS = KEYS["route.rules"][1:]
SOCKS5_KEYS = KEYS["outbounds"][3:]  # a socks5 outbound's keys instead of url

# The run flags: argparse dest -> (config key, flag). A flag given on the command line replaces the
# file's value; errors name the flag of a key where it has one.
FLAGS = {
    "name": ("tun.name", "--tun-name"),
    "mtu": ("tun.mtu", "--mtu"),
    "inet4": ("tun.inet4", "--inet4"),
    "inet6": ("tun.inet6", "--inet6"),
    "routes": ("tun.routes", "--route"),
    "exclude_routes": ("tun.exclude_routes", "--exclude-route"),
    "auto_route": ("tun.auto_route", "--auto-route"),
    "strict_route": ("tun.strict_route", "--strict-route"),
    "fail_closed": ("tun.fail_closed", "--fail-closed"),
    "table": ("tun.table", "--table"),
    "rule_priority": ("tun.rule_priority", "--rule-priority"),
    "fwmark": ("tun.fwmark", "--fwmark"),
    "outbound_interface": ("tun.outbound_interface", "--outbound-interface"),
    "offload": ("tun.offload", "--offload"),
    "napi": ("tun.napi", "--napi"),
    "lan_interfaces": ("gateway.lan_interfaces", "--lan-interface"),
    "enable_forwarding": ("gateway.enable_forwarding", "--enable-forwarding"),
    "udp_timeout": ("flows.udp_timeout", "--udp-timeout"),
    "connect_timeout": ("flows.connect_timeout", "--connect-timeout"),
    "tcp_idle_timeout": ("flows.tcp_idle_timeout", "--tcp-idle-timeout"),
    "max_pending_connects": ("flows.max_pending_connects", "--max-pending-connects"),
    "max_pending_per_client": ("flows.max_pending_per_client", "--max-pending-per-client"),
    "log_level": ("log.level", "--log-level"),
    "log_format": ("log.format", "--log-format"),
    "outbound": ("outbound", "--outbound"),
    "dns_mode": ("dns.mode", "--dns-mode"),
    "dns_upstream": ("dns.upstream", "--dns-upstream"),
    "dns_fake_ip4": ("dns.fake_ip4", "--dns-fake-ip4"),
    "dns_fake_ip6": ("dns.fake_ip6", "--dns-fake-ip6"),
    "health_interval": ("health.interval", "--health-interval"),
    "check_outbounds": ("health.check_outbounds", "--check-outbounds"),
    "metrics_listen": ("metrics.listen", "--metrics-listen"),
    "api_listen": ("api.listen", "--api-listen"),
    "api_secret": ("api.secret", "--api-secret"),
    "api_allow_origins": ("api.allow_origins", "--api-allow-origin"),
    "control_socket": ("control.socket", "--control-socket"),
}
