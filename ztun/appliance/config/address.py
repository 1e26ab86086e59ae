"""`host:port` text read back into (host, port): the one parser of it, for the config's addresses and
metrics.listen (a candidate for ztun/net.py, next to host_port, which writes it)."""

from __future__ import annotations

import ipaddress
import re

_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?)+")


def is_ip(text: str) -> bool:
    """Whether text is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def is_host(text: str) -> bool:
    """Whether text is an IP address or a host name (labels of letters, digits, '-' and '_')."""
    return is_ip(text) or _HOSTNAME.fullmatch(text) is not None


def split_host_port(text: str, default_port: int | None = None, min_port: int = 1) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port); with default_port also "host", "v6" or "[v6]".

    ValueError says what is wrong. min_port 0 admits port 0 (a listener asking for any free port).
    """
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not is_ip(host) or ":" not in host:
            raise ValueError(f"{host!r} in [ ] is not an IPv6 address")
        if rest and not rest.startswith(":"):
            raise ValueError(f"{rest!r} after [{host}] is not :port")
        port = rest[1:] if rest else None
    elif text.count(":") > 1:
        host, port = text, None
        if not is_ip(host):
            raise ValueError(f"{text!r} is neither host:port nor an IPv6 address")
        if default_port is None:
            raise ValueError(f"the port is missing (an IPv6 address with a port goes in brackets: [{host}]:port)")
    else:
        host, colon, port = text.partition(":")
        if not is_host(host):
            raise ValueError(f"{host!r} is not an address or host name")
        port = port if colon else None
    if port is None:
        if default_port is None:
            raise ValueError("the port is missing")
        return host, default_port
    if not port:
        raise ValueError("the port is missing after ':'")
    if not (port.isascii() and port.isdigit()) or not min_port <= int(port) <= 65535:
        raise ValueError(f"port must be {min_port}..65535, got {port!r}")
    return host, int(port)
