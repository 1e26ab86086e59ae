"""Small socket helpers every layer uses: an endpoint's `host:port` text and a close with a reset."""

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
