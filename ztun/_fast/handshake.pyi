import socket
from typing import Callable

from .defs import Progress

KINDS: tuple[int, ...]
TRANSCRIPT_MAX: int

class Handshakes:
    started: int
    finished: int
    connect_inline: int
    under_way: int
    capacity: int
    def __init__(self, loop, capacity: int = 4096) -> None: ...
    def start(self, sock: socket.socket, address: tuple, greeting: bytes, auth: bytes, request: bytes,
              offered_auth: bool, callback: Callable[[Progress], object]) -> int: ...
    def cancel(self, handshake_id: int) -> Progress | None: ...
    def stop(self) -> None: ...
