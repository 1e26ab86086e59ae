"""The appliance's configuration: a TOML file plus command-line overrides, validated into frozen dataclasses.

Every default lives once, in the dataclasses below (and in TunOptions for [tun]). A wrong
key, type or value raises ConfigError naming the key path (`route.rules[2].port`), its line
in the file where it can be found, and what is expected. The README's "Configuration"
section documents every key; `format_config()` prints the effective configuration as TOML.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import sys
import urllib.parse
from dataclasses import dataclass, field

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ...errors import ConfigError
from ...net import host_port
from ...tun.napi import MODES as NAPI_MODES
from ...tun.options import IFNAMSIZ, TunOptions

MAX_SECONDS = 86400.0
MAX_IDLE_SECONDS = 7 * 86400.0
MIN_FAKE_POOL = 256  # addresses; a smaller pool would recycle addresses of live connections
SUN_PATH_MAX = 107  # bytes of a unix socket path, without the terminating NUL
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


# -- errors and where they are in the file ----------------------------------------

def key_name(path: tuple) -> str:
    """("route", "rules", 2, "port") -> "route.rules[2].port"."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


_HEADER = re.compile(r"^\s*(\[\[?)([^\[\]]+)\]\]?\s*(?:#.*)?$")


class _Locator:
    """Best-effort line numbers for key paths: tomllib keeps no positions, so scan the text.

    Finds the path's table header ([tun], the third [[route.rules]], ...) and the `key =`
    line under it; falls back to a key that occurs only once in the file.
    """

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers = []  # (name, is_array, index among same-name arrays, line number)
        counts: dict = {}
        for n, line in enumerate(self.lines, 1):
            m = _HEADER.match(line)
            if m:
                name = ".".join(part.strip().strip("\"'") for part in m.group(2).split("."))
                array = m.group(1) == "[["
                index = counts.get(name, 0) if array else None
                if array:
                    counts[name] = index + 1
                self.headers.append((name, array, index, n))

    def _section(self, table: tuple):
        """(first line, end line) of the table's own lines: after its header up to the next one."""
        if not table:
            start = 0
        else:
            name = ".".join(p for p in table if isinstance(p, str))
            index = next((p for p in reversed(table) if isinstance(p, int)), None)
            for h_name, array, h_index, n in self.headers:
                if h_name == name and (array and h_index == index if index is not None else not array):
                    start = n
                    break
            else:
                return None
        end = next((n - 1 for *_, n in self.headers if n > start), len(self.lines))
        return start, end

    def line(self, path: tuple) -> int | None:
        table, key = (path[:-1], path[-1]) if path and isinstance(path[-1], str) else (path, None)
        section = self._section(table)
        if key is None:
            return section[0] if section and section[0] else None
        if section is None and table and isinstance(table[-1], str):
            return self.line(table)  # an inline or dotted table: point at it
        pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*[=.]""")
        if section is not None:
            for n in range(section[0] + 1, section[1] + 1):
                if pattern.match(self.lines[n - 1]):
                    return n
        whole = self._section(path)  # the key is itself a table with a header: [tunn]
        if whole is not None and whole[0]:
            return whole[0]
        hits = [n for n, line in enumerate(self.lines, 1) if pattern.match(line)]
        if len(hits) == 1:
            return hits[0]
        return section[0] if section and section[0] else None


class _Context:
    """Where values came from (file or flag), to word an error the way its reader will find it."""

    def __init__(self, source: str | None, text: str, flags: dict):
        self.source = source
        self.locator = _Locator(text)
        self.flags = flags  # key name -> the flag that set it

    def fail(self, path: tuple, reason: str):
        key = key_name(path)
        for origin, flag in self.flags.items():
            if key == origin or key.startswith((origin + ".", origin + "[")):
                err = ConfigError(f"argument {flag}: {reason}")
                err.key, err.line, err.flag = key, None, flag
                raise err
        line = self.locator.line(path) if self.source else None
        where = [p for p in (self.source, f"line {line}" if line else None, key) if p]
        err = ConfigError(": ".join(where + [reason]))
        err.key, err.line, err.flag = key, line, None
        raise err


def _kind(value) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, (int, float)):
        return f"{value!r} (a number)"
    if isinstance(value, str):
        return f"{value!r} (a string)" if value else "an empty string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return f"{value!r} ({type(value).__name__})"


# -- value readers: each checks type and range and fails naming the path --------------

def _table(ctx, path: tuple, value, kind: str) -> dict:
    if not isinstance(value, dict):
        ctx.fail(path, f"must be a table, got {_kind(value)}")
    valid = KEYS[kind]
    for k in value:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            where = f"in [{kind}]" if kind else "at the top level"
            ctx.fail(path + (k,), f"unknown key{hint}; valid keys {where}: {', '.join(valid)}")
    return value


def _str(ctx, path, value, what="a string") -> str:
    if not isinstance(value, str) or not value:
        ctx.fail(path, f"must be {what}, got {_kind(value)}")
    return value


def _bool(ctx, path, value) -> bool:
    if not isinstance(value, bool):
        ctx.fail(path, f"must be true or false, got {_kind(value)}")
    return value


def _int(ctx, path, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        ctx.fail(path, f"must be an integer {lo}..{hi}, got {_kind(value)}")
    if not lo <= value <= hi:
        ctx.fail(path, f"must be an integer {lo}..{hi}, got {value}")
    return value


def _seconds(ctx, path, value, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        ctx.fail(path, f"must be a number of seconds, more than 0 and at most {hi:g}, got {_kind(value)}")
    if not 0 < value <= hi:
        ctx.fail(path, f"must be a number of seconds, more than 0 and at most {hi:g}, got {value}")
    return float(value)


def _choice(ctx, path, value, choices: tuple, fold=str.lower) -> str:
    if not isinstance(value, str) or fold(value) not in choices:
        ctx.fail(path, f"must be one of {', '.join(repr(c) for c in choices)}, got {_kind(value)}")
    return fold(value)


def _strings(ctx, path, value, what: str) -> tuple:
    """A string or a non-empty list of strings (for rule matchers)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        ctx.fail(path, f"must be {what} or a non-empty list of them, got an empty list")
    for v in items:
        if not isinstance(v, str) or not v.strip():
            ctx.fail(path, f"must be {what} or a list of them, got {_kind(v)}")
    return tuple(items)


def _network(ctx, path, text, version: int | None = None):
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            ctx.fail(path, f"{text!r} is not {'an IPv4 or IPv6' if version is None else f'an IPv{version}'} CIDR "
                           f"(like {'198.19.0.0/16' if version != 6 else 'fd00:19::/64'})")
        ctx.fail(path, f"{text} has host bits set (did you mean {loose}?)")
    if version is not None and net.version != version:
        ctx.fail(path, f"{text} is not an IPv{version} CIDR")
    return net


def _port_range(ctx, path, value) -> tuple:
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?", value):
        lo, _, hi = value.partition("-")
        lo, hi = int(lo), int(hi or lo)
    else:
        ctx.fail(path, f"must be a port (1..65535), a range \"lo-hi\", or a list of them, got {_kind(value)}")
    if not (1 <= lo <= 65535 and 1 <= hi <= 65535):
        ctx.fail(path, f"ports are 1..65535, got {value!r}")
    if lo > hi:
        ctx.fail(path, f"range {value!r} is empty: its first port is above its last")
    return lo, hi


_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)+")


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """"host:port", "[v6]:port", or (with default_port) "host", "v6" -> (host, port); ValueError says why."""
    m = re.fullmatch(r"\[([^\[\]]+)\](?::(\d+))?", text)
    if m:
        host, port = m.group(1), m.group(2)
        ipaddress.IPv6Address(host)
    elif text.count(":") > 1:
        host, port = text, None
        ipaddress.IPv6Address(host)
    else:
        host, sep, port = text.partition(":")
        if sep and not port:
            raise ValueError("the port is missing after ':'")
        port = port if sep else None
    if not host or not (_is_ip(host) or _HOSTNAME.fullmatch(host)):
        raise ValueError(f"{host!r} is not an address or host name")
    if port is None:
        if default_port is None:
            raise ValueError("the port is missing")
        return host, default_port
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not 1..65535")
    return host, int(port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _address(ctx, path, value, default_port=None, ip_only=False) -> str:
    expected = "an address:port" if ip_only else "a host:port"
    if default_port is not None:
        expected += f" (port default {default_port})"
    if not isinstance(value, str):
        ctx.fail(path, f"must be {expected}, got {_kind(value)}")
    try:
        host, port = split_host_port(value.strip(), default_port)
        if ip_only and not _is_ip(host):
            raise ValueError(f"{host!r} is not an IP address")
    except ValueError as e:
        ctx.fail(path, f"must be {expected}: {e}")
    return host_port(host, port)


# -- the tables ----------------------------------------------------------------------

def _tun(ctx, raw: dict) -> TunOptions:
    t = _table(ctx, ("tun",), raw, "tun")
    kw = {}
    for k, v in t.items():
        path = ("tun", k)
        if k in ("inet4", "inet6"):
            if not isinstance(v, str):
                ctx.fail(path, f"must be a CIDR string or \"none\", got {_kind(v)}")
            kw[k] = None if v.strip().lower() in ("none", "off", "") else v
        elif k in ("routes", "exclude_routes"):
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                ctx.fail(path, f"must be a list of CIDR strings, got {_kind(v)}")
            kw[k] = tuple(v)
        elif k == "offload":
            if isinstance(v, bool):
                v = "on" if v else "off"
            mode = _choice(ctx, path, v, ("auto", "on", "off"))
            # auto: on where there is a kernel offload to use (the Linux TUN)
            kw[k] = mode == "on" or (mode == "auto" and sys.platform.startswith("linux"))
        elif k == "napi":
            if isinstance(v, bool):
                v = "on" if v else "off"
            kw[k] = _choice(ctx, path, v, NAPI_MODES)
        else:
            kw[k] = v
    kw.setdefault("offload", sys.platform.startswith("linux"))  # "auto" is the default
    # With offload, off: next to the socket worker (ztun._fast.sockq) the NAPI thread measured
    # slower for connections and round trips and no faster for bulk TCP's super-packets. Without
    # offload, auto: bulk TCP as 1500-byte packets was 1.8x (up) to 3x (down) faster with the thread (README, Performance).
    kw.setdefault("napi", "off" if kw["offload"] or not sys.platform.startswith("linux") else "auto")
    try:
        return TunOptions(**kw)
    except ConfigError as e:
        name = getattr(e, "field", None)
        reason = str(e)[len(name) + 2:] if name and str(e).startswith(f"{name}: ") else str(e)
        ctx.fail(("tun", name) if name else ("tun",), reason)


def _flows(ctx, raw: dict) -> FlowsConfig:
    t = _table(ctx, ("flows",), raw, "flows")
    kw = {}
    for k, v in t.items():
        if k == "udp_max_sessions":
            kw[k] = _int(ctx, ("flows", k), v, 1, 1 << 20)
        else:
            kw[k] = _seconds(ctx, ("flows", k), v, MAX_IDLE_SECONDS if k == "tcp_idle_timeout" else MAX_SECONDS)
    return FlowsConfig(**kw)


def _gateway(ctx, raw: dict) -> GatewayConfig:
    t = _table(ctx, ("gateway",), raw, "gateway")
    kw = {}
    if "lan_interfaces" in t:
        path, v = ("gateway", "lan_interfaces"), t["lan_interfaces"]
        if not isinstance(v, list):
            ctx.fail(path, f"must be a list of interface names, got {_kind(v)}")
        for name in v:
            if not isinstance(name, str) or not 0 < len(name.encode()) < IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
                ctx.fail(path, f"must be a list of interface names (1..{IFNAMSIZ - 1} bytes, no '/' or spaces), got {_kind(name)}")
        kw["lan_interfaces"] = tuple(dict.fromkeys(v))
    if "enable_forwarding" in t:
        kw["enable_forwarding"] = _bool(ctx, ("gateway", "enable_forwarding"), t["enable_forwarding"])
    return GatewayConfig(**kw)


def _log(ctx, raw: dict) -> LogConfig:
    t = _table(ctx, ("log",), raw, "log")
    kw = {}
    if "level" in t:
        kw["level"] = _choice(ctx, ("log", "level"), t["level"], ("DEBUG", "INFO", "WARNING", "ERROR"), fold=str.upper)
    if "format" in t:
        kw["format"] = _choice(ctx, ("log", "format"), t["format"], ("text", "json"))
    return LogConfig(**kw)


def _socks_url(ctx, path, url) -> dict:
    """socks5://[user:password@]host[:port] -> host, port (default 1080), username, password (percent-decoded)."""
    if not isinstance(url, str):
        ctx.fail(path, f"must be a URL like \"socks5://user:password@host:port\", got {_kind(url)}")
    try:
        u = urllib.parse.urlsplit(url.strip())
        port = u.port
    except ValueError as e:
        ctx.fail(path, f"{url!r} is not a valid URL: {e}")
    if u.scheme.lower() != "socks5":
        ctx.fail(path, f"{url!r}: the scheme must be socks5:// (like \"socks5://user:password@host:1080\")")
    if not u.hostname:
        ctx.fail(path, f"{url!r} has no proxy host (like \"socks5://host:1080\")")
    if u.path not in ("", "/") or u.query or u.fragment:
        ctx.fail(path, f"{url!r}: a SOCKS5 URL has no path, query or fragment")
    # urlsplit lowercases and unbrackets the host; take it as written (minus brackets) for the error text.
    return {"server": u.hostname, "port": 1080 if port is None else port,
            "username": None if u.username is None else urllib.parse.unquote(u.username),
            "password": None if u.password is None else urllib.parse.unquote(u.password)}


def _outbound(ctx, path, raw) -> OutboundConfig:
    t = _table(ctx, path, raw, "outbounds")
    if "name" not in t:
        ctx.fail(path, "an outbound needs a name")
    name = _str(ctx, path + ("name",), t["name"], "a name")
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        ctx.fail(path + ("name",), f"{name!r}: a name is 1..64 letters, digits, '_', '.' or '-'")
    kind = t.get("type", "socks5" if "url" in t or "server" in t else None)
    if kind is None:
        ctx.fail(path, f"outbound {name!r} needs a type: one of {', '.join(OUTBOUND_TYPES)}")
    kind = _choice(ctx, path + ("type",), kind, OUTBOUND_TYPES)
    if name in BUILTIN_OUTBOUNDS and kind != name:
        ctx.fail(path + ("name",), f"{name!r} is built in (type {name}); give this {kind} outbound another name")
    extra = [k for k in ("url", "server", "port", "username", "password") if k in t]
    if kind != "socks5":
        if extra:
            ctx.fail(path + (extra[0],), f"a {kind} outbound takes only name and type")
        return OutboundConfig(name, kind)
    if "url" in t:
        if len(extra) > 1:
            ctx.fail(path + (extra[1],), "give either url or server/port/username/password, not both")
        v = _socks_url(ctx, path + ("url",), t["url"])
        where = {k: path + ("url",) for k in v}
    elif "server" in t:
        v = {"server": t["server"], "port": t.get("port", 1080),
             "username": t.get("username"), "password": t.get("password")}
        where = {k: path + (k,) for k in v}
    else:
        ctx.fail(path, f"socks5 outbound {name!r} needs url = \"socks5://[user:password@]host:port\" or server and port")
    host = _str(ctx, where["server"], v["server"], "a host name or IP address")
    if not (_is_ip(host) or _HOSTNAME.fullmatch(host)):
        ctx.fail(where["server"], f"{host!r} is not a host name or IP address")
    port = _int(ctx, where["port"], v["port"], 1, 65535)
    user, password = v["username"], v["password"]
    for k, value in (("username", user), ("password", password)):
        if value is not None and (not isinstance(value, str) or not 1 <= len(value.encode()) <= 255):
            ctx.fail(where[k], f"must be a string of 1..255 bytes (RFC 1929), got "
                               f"{_kind(value) if k == 'username' or not isinstance(value, str) else f'{len(value.encode())} bytes'}")
    if (user is None) != (password is None):
        ctx.fail(where["password" if password is None else "username"],
                 "username and password go together (RFC 1929): give both or neither")
    return OutboundConfig(name, "socks5", host=host, port=port, username=user, password=password)


def _outbounds(ctx, raw) -> tuple:
    if not isinstance(raw, list):
        ctx.fail(("outbounds",), f"must be an array of tables ([[outbounds]]), got {_kind(raw)}")
    out = {name: OutboundConfig(name, name) for name in BUILTIN_OUTBOUNDS}
    defined = set()
    for i, item in enumerate(raw):
        o = _outbound(ctx, ("outbounds", i), item)
        if o.name in defined:
            ctx.fail(("outbounds", i, "name"), f"outbound {o.name!r} is defined twice; names must be unique")
        defined.add(o.name)
        out[o.name] = o
    return tuple(out.values())


def _rule(ctx, path, raw, names) -> RuleConfig:
    t = _table(ctx, path, raw, "route.rules")
    if "outbound" not in t:
        ctx.fail(path, "a rule needs outbound = NAME (the outbound its matches go to)")
    outbound = _str(ctx, path + ("outbound",), t["outbound"], "an outbound name")
    if outbound not in names:
        ctx.fail(path + ("outbound",), f"outbound {outbound!r} is not defined; defined: {', '.join(names)}")
    if not any(k in t for k in MATCHERS):
        ctx.fail(path, f"a rule needs at least one matcher: {', '.join(MATCHERS)}")
    kw = {"outbound": outbound}
    for k in MATCHERS:
        if k not in t:
            continue
        p = path + (k,)
        if k in ("cidr", "source"):
            kw[k] = tuple(dict.fromkeys(_network(ctx, p, s.strip()) for s in _strings(ctx, p, t[k], "a CIDR")))
        elif k == "port":
            items = t[k] if isinstance(t[k], list) else [t[k]]
            if not items:
                ctx.fail(p, "must be a port, a range \"lo-hi\", or a non-empty list of them, got an empty list")
            kw[k] = tuple(dict.fromkeys(_port_range(ctx, p, v) for v in items))
        elif k == "protocol":
            values = _strings(ctx, p, t[k], "\"tcp\", \"udp\" or \"icmp\"")
            for v in values:
                _choice(ctx, p, v, PROTOCOLS)
            kw[k] = frozenset(v.lower() for v in values)
        else:
            values = [v.strip().lower().rstrip(".") for v in _strings(ctx, p, t[k], "a domain")]
            if k == "domain_suffix":
                values = [v.lstrip(".") for v in values]
            for v in values:
                if not v or any(c.isspace() for c in v):
                    ctx.fail(p, f"{v!r} is not a domain")
            kw[k] = tuple(dict.fromkeys(values))
    if "port" in kw and kw.get("protocol") == frozenset({"icmp"}):
        ctx.fail(path + ("port",), "ICMP has no ports: this rule could never match; drop port or add tcp/udp")
    return RuleConfig(**kw)


def _route(ctx, raw, names) -> RouteConfig:
    t = _table(ctx, ("route",), raw, "route")
    kw = {}
    if "default" in t:
        default = _str(ctx, ("route", "default"), t["default"], "an outbound name")
        if default not in names:
            ctx.fail(("route", "default"), f"outbound {default!r} is not defined; defined: {', '.join(names)}")
        kw["default"] = default
    if "rules" in t:
        rules = t["rules"]
        if not isinstance(rules, list):
            ctx.fail(("route", "rules"), f"must be an array of tables ([[route.rules]]), got {_kind(rules)}")
        kw["rules"] = tuple(_rule(ctx, ("route", "rules", i), r, names) for i, r in enumerate(rules))
    return RouteConfig(**kw)


def _fake_pool(ctx, path, key: str, value, version: int, tun: TunOptions | None):
    """A fake-IP pool (None for "none"); with tun (fake-ip mode) also big enough and routable into the TUN."""
    if not isinstance(value, str):
        ctx.fail(path, f"must be an IPv{version} CIDR or \"none\", got {_kind(value)}")
    if value.strip().lower() in ("none", "off"):
        return None
    net = _network(ctx, path, value.strip(), version)
    if tun is None:
        return net
    if net.num_addresses < MIN_FAKE_POOL:
        ctx.fail(path, f"{key} = {net} has {net.num_addresses} addresses; a fake-IP pool needs at least "
                       f"{MIN_FAKE_POOL} (/{net.max_prefixlen - 8} or wider)")
    own = getattr(tun, f"inet{version}")
    if own is not None and net.overlaps(own.network):
        ctx.fail(path, f"{key} = {net} overlaps the TUN's own prefix tun.inet{version} = {own}; "
                       f"move one of them")
    for excluded in tun.exclude_routes:
        if excluded.version == version and net.overlaps(excluded):
            ctx.fail(path, f"{key} = {net} overlaps {excluded} in tun.exclude_routes: "
                           f"fake addresses must be routed into the TUN")
    return net


def _dns(ctx, raw, names, tun: TunOptions) -> DnsConfig:
    t = _table(ctx, ("dns",), raw, "dns")
    d = DnsConfig()
    mode = _choice(ctx, ("dns", "mode"), t["mode"], ("off", "fake-ip", "forward")) if "mode" in t else d.mode
    fake = mode == "fake-ip"
    kw = {"mode": mode}
    for k, version in (("fake_ip4", 4), ("fake_ip6", 6)):
        if k in t:
            kw[k] = _fake_pool(ctx, ("dns", k), k, t[k], version, tun if fake else None)
        elif fake:  # the default pool must fit this TUN too; the error points at mode
            kw[k] = _fake_pool(ctx, ("dns", "mode"), f"{k} (default)", str(getattr(d, k)), version, tun)
    pools = {k: kw.get(k, getattr(d, k)) for k in ("fake_ip4", "fake_ip6")}
    if fake and not any(pools.values()):
        ctx.fail(("dns", "fake_ip4"), "fake-ip mode needs a pool: fake_ip4 and fake_ip6 are both \"none\"")
    if "capacity" in t:
        kw["capacity"] = _int(ctx, ("dns", "capacity"), t["capacity"], 1, 1 << 24)
    capacity = kw.get("capacity", d.capacity)
    for k, pool in pools.items():
        # An explicit capacity must fit; the default one is just capped by a small pool.
        if fake and pool is not None and pool.num_addresses < capacity and "capacity" in t:
            ctx.fail(("dns", "capacity" if "capacity" in t else k),
                     f"capacity {capacity} is more than the {pool.num_addresses} addresses of {k} = {pool}; "
                     f"lower capacity or widen the pool")
    if "ttl" in t:
        kw["ttl"] = _int(ctx, ("dns", "ttl"), t["ttl"], 0, 86400)
    if "upstream" in t:
        kw["upstream"] = _address(ctx, ("dns", "upstream"), t["upstream"], default_port=53, ip_only=True)
    if mode == "forward" and kw.get("upstream") is None:
        ctx.fail(("dns", "mode"), "mode \"forward\" needs upstream = \"address:port\" (the DNS server queries go to)")
    if "outbound" in t:
        name = _str(ctx, ("dns", "outbound"), t["outbound"], "an outbound name")
        if name not in names:
            ctx.fail(("dns", "outbound"), f"outbound {name!r} is not defined; defined: {', '.join(names)}")
        kw["outbound"] = name
    return DnsConfig(**kw)


def _metrics(ctx, raw) -> MetricsConfig:
    t = _table(ctx, ("metrics",), raw, "metrics")
    if "listen" not in t:
        return MetricsConfig()
    return MetricsConfig(listen=_address(ctx, ("metrics", "listen"), t["listen"]))


def _control(ctx, raw) -> ControlConfig:
    t = _table(ctx, ("control",), raw, "control")
    if "socket" not in t:
        return ControlConfig()
    path = _str(ctx, ("control", "socket"), t["socket"], "a unix socket path")
    if "\0" in path or len(path.encode()) > SUN_PATH_MAX:
        ctx.fail(("control", "socket"), f"a unix socket path has at most {SUN_PATH_MAX} bytes and no NUL, "
                                        f"got {len(path.encode())} bytes")
    return ControlConfig(socket=path)


def build(data: dict, *, source: str | None = None, text: str = "", flags: dict | None = None) -> AppConfig:
    """Validate an already parsed TOML document (plus overrides that came from flags) into an AppConfig.

    flags maps a key name ("tun.mtu") to the command-line flag that set it, so its errors name the flag.
    """
    ctx = _Context(source, text, flags or {})
    top = _table(ctx, (), data, "")
    tun = _tun(ctx, top.get("tun", {}))
    outbounds = _outbounds(ctx, top.get("outbounds", []))
    names = [o.name for o in outbounds]
    return AppConfig(
        tun=tun,
        flows=_flows(ctx, top.get("flows", {})),
        gateway=_gateway(ctx, top.get("gateway", {})),
        log=_log(ctx, top.get("log", {})),
        outbounds=outbounds,
        route=_route(ctx, top.get("route", {}), names),
        dns=_dns(ctx, top.get("dns", {}), names, tun),
        metrics=_metrics(ctx, top.get("metrics", {})),
        control=_control(ctx, top.get("control", {})),
        source=source,
    )


def read(path: str) -> tuple[dict, str]:
    """The file's TOML document and text; a file or syntax error is a ConfigError naming the file and line."""
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        err = ConfigError(f"{path}: line {m.group(1)}: invalid TOML: {msg[:m.start()]} (column {m.group(2)})"
                          if m else f"{path}: invalid TOML: {msg}")
        err.line = int(m.group(1)) if m else None
        raise err from None


def set_key(data: dict, key: str, value) -> None:
    """Put value at a dotted key ("tun.mtu") of a parsed document, making tables on the way (for flag overrides)."""
    *tables, last = key.split(".")
    for t in tables:
        data = data.setdefault(t, {})
        if not isinstance(data, dict):
            return  # a wrongly typed table in the file: its own error is reported
    data[last] = value


def set_outbound(data: dict, value: str, flag: str, flags: dict) -> None:
    """--outbound: "direct" or "block" become the default route; a socks5:// URL defines outbound "proxy" and makes it the default."""
    if value in BUILTIN_OUTBOUNDS:
        set_key(data, "route.default", value)
    else:
        outbounds = data.setdefault("outbounds", [])
        if not isinstance(outbounds, list):
            return
        index = next((i for i, o in enumerate(outbounds) if isinstance(o, dict) and o.get("name") == "proxy"), len(outbounds))
        outbounds[index:index + 1] = [{"name": "proxy", "type": "socks5", "url": value}]
        flags[f"outbounds[{index}]"] = flag
        set_key(data, "route.default", "proxy")
    flags["route.default"] = flag


def load(path: str | None = None, overrides: dict | None = None) -> AppConfig:
    """The configuration of path (None: built-in defaults), each override {key: (value, flag)} replacing the file's value."""
    data, text = read(path) if path is not None else ({}, "")
    flags: dict = {}
    for key, (value, flag) in (overrides or {}).items():
        if key == "outbound":
            set_outbound(data, value, flag, flags)
        else:
            set_key(data, key, value)
            flags[key] = flag
    return build(data, source=path, text=text, flags=flags)


# -- printing ------------------------------------------------------------------------

def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    text = str(value)
    out = []
    for c in text:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def format_config(config: AppConfig) -> str:
    """The effective configuration as TOML (it loads back to the same config); passwords are redacted."""
    lines = []

    def section(header, items):
        lines.append(header)
        for k, v in items:
            lines.append(f"# {k}: not set" if v is None else f"{k} = {v}")
        lines.append("")

    t = config.tun
    section("[tun]", [
        ("name", _toml(t.name)), ("mtu", _toml(t.mtu)),
        ("inet4", _toml(str(t.inet4) if t.inet4 is not None else "none")),
        ("inet6", _toml(str(t.inet6) if t.inet6 is not None else "none")),
        ("routes", _toml([str(r) for r in t.routes])), ("exclude_routes", _toml([str(r) for r in t.exclude_routes])),
        ("auto_route", _toml(t.auto_route)), ("strict_route", _toml(t.strict_route)),
        ("table", _toml(t.table)), ("rule_priority", _toml(t.rule_priority)), ("fwmark", hex(t.fwmark)),
        ("offload", _toml("on" if t.offload else "off")), ("napi", _toml(t.napi)),
    ])
    f = config.flows
    section("[flows]", [(k, _toml(getattr(f, k))) for k in KEYS["flows"]])
    g = config.gateway
    section("[gateway]", [("lan_interfaces", _toml(list(g.lan_interfaces))), ("enable_forwarding", _toml(g.enable_forwarding))])
    section("[log]", [("level", _toml(config.log.level)), ("format", _toml(config.log.format))])
    for o in config.outbounds:
        items = [("name", _toml(o.name)), ("type", _toml(o.type))]
        if o.type == "socks5":
            items += [("server", _toml(o.host)), ("port", _toml(o.port))]
            if o.username is not None:
                items += [("username", _toml(o.username)), ("password", _toml(REDACTED))]
        section("[[outbounds]]", items)
    section("[route]", [("default", _toml(config.route.default))])
    for r in config.route.rules:
        items = [("outbound", _toml(r.outbound))]
        if r.cidr:
            items.append(("cidr", _toml([str(n) for n in r.cidr])))
        if r.port:
            items.append(("port", "[" + ", ".join(str(lo) if lo == hi else f'"{lo}-{hi}"' for lo, hi in r.port) + "]"))
        if r.protocol:
            items.append(("protocol", _toml([p for p in PROTOCOLS if p in r.protocol])))
        if r.source:
            items.append(("source", _toml([str(n) for n in r.source])))
        for k in ("domain", "domain_suffix", "domain_keyword"):
            if getattr(r, k):
                items.append((k, _toml(list(getattr(r, k)))))
        section("[[route.rules]]", items)
    d = config.dns
    section("[dns]", [
        ("mode", _toml(d.mode)),
        ("fake_ip4", _toml(str(d.fake_ip4) if d.fake_ip4 is not None else "none")),
        ("fake_ip6", _toml(str(d.fake_ip6) if d.fake_ip6 is not None else "none")),
        ("capacity", _toml(d.capacity)), ("ttl", _toml(d.ttl)),
        ("upstream", None if d.upstream is None else _toml(d.upstream)),
        ("outbound", None if d.outbound is None else _toml(d.outbound)),
    ])
    section("[metrics]", [("listen", None if config.metrics.listen is None else _toml(config.metrics.listen))])
    section("[control]", [("socket", _toml(config.control.socket))])
    return "\n".join(lines).rstrip() + "\n"
