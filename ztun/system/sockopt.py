"""Socket options ztun sets on its own outbound sockets."""

import socket

from ..errors import RouteError

SO_MARK = getattr(socket, "SO_MARK", 36)  # Linux; 36 in <asm-generic/socket.h>


def mark_socket(sock: socket.socket, mark: int) -> None:
    """Give sock's packets the fwmark that ztun's policy rules skip, so they never loop into the TUN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    except OSError as e:
        raise RouteError(f"set SO_MARK {mark:#x} (needs CAP_NET_ADMIN)", e.errno) from None
