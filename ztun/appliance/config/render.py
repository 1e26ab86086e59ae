"""The effective configuration printed as TOML (`check-config`), passwords redacted."""

from __future__ import annotations

from .schema import KEYS, PROTOCOLS, REDACTED, AppConfig


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
        ("fail_closed", _toml(t.fail_closed)),
        ("table", _toml(t.table)), ("rule_priority", _toml(t.rule_priority)), ("fwmark", hex(t.fwmark)),
        ("outbound_interface", None if t.outbound_interface is None else _toml(t.outbound_interface)),
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
    section("[health]", [(k, _toml(getattr(config.health, k))) for k in KEYS["health"]])
    section("[metrics]", [("listen", None if config.metrics.listen is None else _toml(config.metrics.listen))])
    a = config.api
    section("[api]", [("listen", None if a.listen is None else _toml(a.listen)),
                      ("secret", None if a.secret is None else _toml(REDACTED)),
                      ("allow_origins", _toml(list(a.allow_origins)))])
    section("[control]", [("socket", _toml(config.control.socket))])
    return "\n".join(lines).rstrip() + "\n"
