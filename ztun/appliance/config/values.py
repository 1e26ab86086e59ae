"""Value readers: each checks one value's type and range and fails naming its key path."""

from __future__ import annotations

import difflib
import ipaddress
import re

from ...net import host_port
from ...net import is_ip, split_host_port
from .schema import KEYS


def _kind(value) -> str:
    """value as an error describes what it got: `5 (a number)`, `a table`."""
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



def _address(ctx, path, value, default_port=None, ip_only=False) -> str:
    expected = "an address:port" if ip_only else "a host:port"
    if default_port is not None:
        expected += f" (port default {default_port})"
    if not isinstance(value, str):
        ctx.fail(path, f"must be {expected}, got {_kind(value)}")
    try:
        host, port = split_host_port(value.strip(), default_port)
        if ip_only and not is_ip(host):
            raise ValueError(f"{host!r} is not an IP address")
    except ValueError as e:
        ctx.fail(path, f"must be {expected}: {e}")
    return host_port(host, port)
