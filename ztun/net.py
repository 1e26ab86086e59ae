"""Small socket helpers every layer uses: an endpoint's `host:port` text written and read, and a close with a reset."""

import ipaddress
import re
import socket
import struct

_LINGER_RESET = struct.pack("ii", 1, 0)


def host_port(host, port) -> str:
    """`host:port`, with an IPv6 address in brackets (`[fd00::1]:80`)."""
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def endpoint_text(endpoint) -> str:
    """host_port of an (address, port, ...) tuple."""
    return host_port(endpoint[0], endpoint[1])


def abort(sock) -> None:
    """Close sock with a reset (SO_LINGER 0), so its peer learns at once instead of waiting."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


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
