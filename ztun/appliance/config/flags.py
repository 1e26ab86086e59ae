"""Command-line flags over a file: each flag's value replaces its key in the parsed document, and
load() validates the result, naming the flag in its errors."""

from __future__ import annotations

from .parse import build, read
from .schema import BUILTIN_OUTBOUNDS, AppConfig


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
