"""Reading a TOML file and validating its document, table by table, into an AppConfig."""

from __future__ import annotations

import ipaddress
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from ...errors import ConfigError
from ...net import split_host_port
from ...tun.napi import MODES as NAPI_MODES
from ...tun.options import IFNAMSIZ, MIN_MTU6, TunOptions
from .locate import _Context
from .routing import _outbounds, _route
from .schema import (MAX_DEPTH, MAX_FILE_BYTES, MAX_IDLE_SECONDS, MAX_SECONDS, MIN_FAKE_POOL, SUN_PATH_MAX, ApiConfig, AppConfig,
                     ControlConfig, DnsConfig, FlowsConfig, GatewayConfig, HealthConfig, LogConfig, MetricsConfig,
                     control_socket)
from .values import _address, _bool, _choice, _int, _kind, _network, _seconds, _str, _table


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
        tun = TunOptions(**kw)
    except ConfigError as e:
        name = getattr(e, "field", None)
        reason = str(e)[len(name) + 2:] if name and str(e).startswith(f"{name}: ") else str(e)
        path = ("tun", name) if name else ("tun",)
        ctx.fail(path, _tun_reason(ctx, path, kw, reason))
    for net in tun.routes:
        own = getattr(tun, f"inet{net.version}")
        if net.subnet_of(own.network):
            path = ("tun", "routes")
            ctx.fail(path, f"{net} is inside the TUN's own prefix ({ctx.setting(path, f'tun.inet{net.version}', own)}): "
                           f"those addresses are on the TUN already; route the addresses to be proxied")
    return tun


def _tun_reason(ctx, path, kw: dict, reason: str) -> str:
    """TunOptions' reason, its fix told as a flag or a key (ctx.setting) where it names another key."""
    name = path[-1]
    if name == "mtu" and "IPv6 minimum" in reason:
        return (f"{kw['mtu']} is below {MIN_MTU6}, the IPv6 minimum, and the TUN has IPv6; raise it, or leave IPv6 "
                f"off the TUN with {ctx.setting(path, 'tun.inet6', 'none')}")
    if name == "exclude_routes" and reason.startswith("only cuts into routes"):
        return (f"only cuts into routes; give {ctx.setting(path, 'tun.routes', ['CIDR'])} or "
                f"{ctx.setting(path, 'tun.auto_route', True)} too")
    if name == "strict_route" and reason.startswith("applies to auto_route"):
        return f"applies to {ctx.name(path, 'tun.auto_route')} only; give {ctx.setting(path, 'tun.auto_route', True)} too"
    if name == "routes" and reason.endswith("is not set"):
        net = reason.split()[0]
        version = 6 if ":" in net else 4
        return f"{net} is IPv{version} but the TUN has no IPv{version} address; give it one with {ctx.setting(path, f'tun.inet{version}', 'CIDR')}"
    if name == "inet4" and "both unset" in reason:
        return (f"the TUN needs an IPv4 or an IPv6 prefix, and {ctx.name(path, 'tun.inet4')} and "
                f"{ctx.name(path, 'tun.inet6')} are both none")
    return reason


def _flows(ctx, raw: dict) -> FlowsConfig:
    t = _table(ctx, ("flows",), raw, "flows")
    kw = {}
    for k, v in t.items():
        if k in ("udp_max_sessions", "max_pending_connects", "max_pending_per_client"):
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
        path = ("gateway", "enable_forwarding")
        kw["enable_forwarding"] = _bool(ctx, path, t["enable_forwarding"])
        if kw["enable_forwarding"] and not kw.get("lan_interfaces"):
            # It turns forwarding on for the hosts of the LAN interfaces: alone it would do nothing.
            ctx.fail(path, f"turns forwarding on for LAN hosts; name their interfaces with "
                           f"{ctx.setting(path, 'gateway.lan_interfaces', ['NAME'])} (or leave it out)")
    return GatewayConfig(**kw)


def _log(ctx, raw: dict) -> LogConfig:
    t = _table(ctx, ("log",), raw, "log")
    kw = {}
    if "level" in t:
        kw["level"] = _choice(ctx, ("log", "level"), t["level"], ("DEBUG", "INFO", "WARNING", "ERROR"), fold=str.upper)
    if "format" in t:
        kw["format"] = _choice(ctx, ("log", "format"), t["format"], ("text", "json"))
    return LogConfig(**kw)



def _fake_pool(ctx, path, key: str, value, version: int, tun: TunOptions | None, default: bool = False):
    """A fake-IP pool (None for "none"); with tun (fake-ip mode) also big enough and routable into the TUN.

    default: value is the built-in pool and path is dns.mode (the key that asked for a pool)."""
    if not isinstance(value, str):
        ctx.fail(path, f"must be an IPv{version} CIDR or \"none\", got {_kind(value)}")
    if value.strip().lower() in ("none", "off"):
        return None
    net = _network(ctx, path, value.strip(), version)
    if tun is None:
        return net
    what = f"the default IPv{version} pool {net}" if default else f"{net}"
    fix = f"give another pool with {ctx.setting(path, f'dns.{key}', 'CIDR')}" if default else "move one of them"
    if net.num_addresses < MIN_FAKE_POOL:
        ctx.fail(path, f"{net} has {net.num_addresses} addresses; a fake-IP pool needs at least "
                       f"{MIN_FAKE_POOL} (/{net.max_prefixlen - 8} or wider)")
    own = getattr(tun, f"inet{version}")
    if own is not None and net.overlaps(own.network):
        ctx.fail(path, f"{what} overlaps the TUN's own prefix ({ctx.setting(path, f'tun.inet{version}', own)}); "
                       f"{fix}" + (f", or move the TUN's" if default else ""))
    for excluded in tun.exclude_routes:
        if excluded.version == version and net.overlaps(excluded):
            ctx.fail(path, f"{what} overlaps {excluded} in {ctx.name(path, 'tun.exclude_routes')}: "
                           f"fake addresses must be routed into the TUN" + (f"; {fix}" if default else ""))
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
            kw[k] = _fake_pool(ctx, ("dns", "mode"), k, str(getattr(d, k)), version, tun, default=True)
    pools = {k: kw.get(k, getattr(d, k)) for k in ("fake_ip4", "fake_ip6")}
    if fake and not any(pools.values()):
        path = ("dns", "fake_ip4")
        ctx.fail(path, f"fake-ip mode needs a pool: {ctx.name(path, 'dns.fake_ip4')} and "
                       f"{ctx.name(path, 'dns.fake_ip6')} are both none")
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
        path = ("dns", "mode")
        ctx.fail(path, f"mode \"forward\" needs the DNS server queries go to: "
                       f"{ctx.setting(path, 'dns.upstream', 'ADDRESS:PORT')}")
    if "outbound" in t:
        name = _str(ctx, ("dns", "outbound"), t["outbound"], "an outbound name")
        if name not in names:
            ctx.fail(("dns", "outbound"), f"outbound {name!r} is not defined; defined: {', '.join(names)}")
        kw["outbound"] = name
    return DnsConfig(**kw)


def _health(ctx, raw) -> HealthConfig:
    t = _table(ctx, ("health",), raw, "health")
    kw = {}
    if "interval" in t:
        path, v = ("health", "interval"), t["interval"]
        # 0 is allowed here (unlike other seconds): the probe at start-up only
        kw["interval"] = 0.0 if v == 0 and not isinstance(v, bool) else _seconds(ctx, path, v, MAX_SECONDS)
    if "check_outbounds" in t:
        kw["check_outbounds"] = _bool(ctx, ("health", "check_outbounds"), t["check_outbounds"])
    return HealthConfig(**kw)


def _metrics(ctx, raw) -> MetricsConfig:
    t = _table(ctx, ("metrics",), raw, "metrics")
    if "listen" not in t:
        return MetricsConfig()
    return MetricsConfig(listen=_address(ctx, ("metrics", "listen"), t["listen"]))


def _api(ctx, raw) -> ApiConfig:
    t = _table(ctx, ("api",), raw, "api")
    kw = {}
    if "secret" in t:
        path, v = ("api", "secret"), t["secret"]
        secret = _str(ctx, path, v, "a token string")
        if not 0 < len(secret) <= 256 or any(not "!" <= c <= "~" for c in secret):
            # ASCII: a header is latin-1 on the wire (and a browser's fetch refuses more), ?token= is UTF-8
            ctx.fail(path, "must be 1..256 printable ASCII characters without spaces (it is sent as "
                           "`Authorization: Bearer SECRET`)")
        kw["secret"] = secret
    if "allow_origins" in t:
        path, v = ("api", "allow_origins"), t["allow_origins"]
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            ctx.fail(path, f"must be a list of origins (\"https://host[:port]\" or \"*\"), got {_kind(v)}")
        for origin in v:
            if origin != "*" and not _ORIGIN.fullmatch(origin.rstrip("/")):
                ctx.fail(path, f"{origin!r} is not an origin: expected scheme://host[:port] without a path, or \"*\"")
        kw["allow_origins"] = tuple(dict.fromkeys(o.rstrip("/") for o in v))
    if "*" in kw.get("allow_origins", ()) and "secret" not in kw:
        path = ("api", "allow_origins")
        ctx.fail(path, f"\"*\" lets every web page a browser on this host opens read the flows: it needs "
                       f"{ctx.setting(path, 'api.secret', 'TOKEN')} (or list the dashboards' origins)")
    if "listen" in t:
        path = ("api", "listen")
        kw["listen"] = listen = _address(ctx, path, t["listen"])
        host = split_host_port(listen)[0]
        if not _loopback(host) and "secret" not in kw:
            ctx.fail(path, f"{listen} is reachable beyond this host: the API shows every flow and can close them, so it "
                           f"needs {ctx.setting(path, 'api.secret', 'TOKEN')} (or listen on 127.0.0.1 / [::1])")
    return ApiConfig(**kw)


_ORIGIN = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _control(ctx, raw, tun: TunOptions) -> ControlConfig:
    t = _table(ctx, ("control",), raw, "control")
    if "socket" not in t:
        return ControlConfig(socket=control_socket(tun.name))
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
    config = AppConfig(
        tun=tun,
        flows=_flows(ctx, top.get("flows", {})),
        gateway=_gateway(ctx, top.get("gateway", {})),
        log=_log(ctx, top.get("log", {})),
        outbounds=outbounds,
        route=_route(ctx, top.get("route", {}), names),
        dns=_dns(ctx, top.get("dns", {}), names, tun),
        health=_health(ctx, top.get("health", {})),
        metrics=_metrics(ctx, top.get("metrics", {})),
        api=_api(ctx, top.get("api", {})),
        control=_control(ctx, top.get("control", {}), tun),
        source=source,
        flags=tuple(ctx.flags.items()),
    )
    _check_proxies_routed(ctx, config, top.get("outbounds"))
    return config


def _check_proxies_routed(ctx, config: AppConfig, raw) -> None:
    """A SOCKS5 outbound with nothing routed into the TUN would get no traffic (and its address,
    which ztun keeps out of the TUN's routes, would have nothing to be cut out of): say what to add."""
    tun, dns = config.tun, config.dns
    pools = (dns.fake_ip4, dns.fake_ip6) if dns.mode == "fake-ip" else ()
    if tun.routes or tun.auto_route or any(p is not None and getattr(tun, f"inet{p.version}") for p in pools):
        return
    for i, o in enumerate(raw or ()):
        if isinstance(o, dict) and any(ob.name == o.get("name") and ob.type == "socks5" for ob in config.outbounds):
            path = ("outbounds", i)
            ctx.fail(path, f"socks5 outbound {o['name']!r} would get no traffic: nothing is routed into the TUN; "
                           f"give {ctx.setting(path, 'tun.routes', ['CIDR'])} or {ctx.setting(path, 'tun.auto_route', True)}")


def read(path: str) -> tuple[dict, str]:
    """The file's TOML document and text; a file or syntax error is a ConfigError naming the file and line.

    Bounded: a file over MAX_FILE_BYTES, or tables and arrays nested deeper than MAX_DEPTH, is refused
    (a hostile or wrong file is an error like any other, never a RecursionError from the parser).
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_FILE_BYTES >> 20} MiB: not a ztun configuration (it takes a few KiB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        err = ConfigError(f"{path}: line {m.group(1)}: invalid TOML: {msg[:m.start()]} (column {m.group(2)})"
                          if m else f"{path}: invalid TOML: {msg}")
        err.line = int(m.group(1)) if m else None
        raise err from None
    except RecursionError:  # the parser recurses per level: this deep is far past MAX_DEPTH
        raise ConfigError(f"{path}: {_TOO_DEEP}") from None
    except ValueError as e:  # a value the parser takes but Python refuses, e.g. an integer of 5,000 digits
        raise ConfigError(f"{path}: invalid TOML: {str(e).split(';')[0]}") from None
    if _depth(doc) > MAX_DEPTH:
        raise ConfigError(f"{path}: {_TOO_DEEP}")
    return doc, text


_TOO_DEEP = f"tables or arrays nested deeper than {MAX_DEPTH} levels: not a ztun configuration"


def _depth(doc) -> int:
    """How deep tables and arrays nest in doc (the document itself is level 1); without recursion."""
    deepest, todo = 0, [(doc, 1)]
    while todo:
        value, level = todo.pop()
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:  # deeper is refused anyway: stop looking
            items = value.values() if isinstance(value, dict) else value
            todo.extend((v, level + 1) for v in items if isinstance(v, (dict, list)))
    return deepest
