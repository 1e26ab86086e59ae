"""The [[outbounds]] and [route] tables: the outbounds, and the rules choosing one for each flow."""

from __future__ import annotations

import re

from ...outbound.socks5 import DEFAULT_PORT as SOCKS5_PORT
from ...outbound.socks5 import parse_url
from ...net import is_host
from .schema import (BUILTIN_OUTBOUNDS, MATCHERS, OUTBOUND_TYPES, PROTOCOLS, SOCKS5_KEYS, OutboundConfig, RouteConfig,
                     RuleConfig)
from .values import _choice, _int, _kind, _network, _port_range, _str, _strings, _table


def _socks_url(ctx, path, url) -> tuple:
    """(host, port, username, password) of a socks5:// URL, read by the outbound's own parser."""
    if not isinstance(url, str):
        ctx.fail(path, f"must be a URL like \"socks5://user:password@host:port\", got {_kind(url)}")
    try:
        return parse_url(url)
    except ValueError as e:
        ctx.fail(path, str(e))


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
    extra = [k for k in ("url",) + SOCKS5_KEYS if k in t]
    if kind != "socks5":
        if extra:
            ctx.fail(path + (extra[0],), f"a {kind} outbound takes only name and type")
        return OutboundConfig(name, kind)
    if "url" in t:
        if len(extra) > 1:
            ctx.fail(path + (extra[1],), "give either url or server/port/username/password, not both")
        where = dict.fromkeys(SOCKS5_KEYS, path + ("url",))
        host, port, user, password = _socks_url(ctx, where["server"], t["url"])
    elif "server" in t:
        where = {k: path + (k,) for k in SOCKS5_KEYS}
        host, port, user, password = t["server"], t.get("port", SOCKS5_PORT), t.get("username"), t.get("password")
    else:
        ctx.fail(path, f"socks5 outbound {name!r} needs url = \"socks5://[user:password@]host[:port]\" or server and port")
    # A URL's values pass these checks too, all but the host name already checked by parse_url.
    host = _str(ctx, where["server"], host, "a host name or IP address")
    if not is_host(host):
        ctx.fail(where["server"], f"{host!r} is not a host name or IP address")
    port = _int(ctx, where["port"], port, 1, 65535)
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

