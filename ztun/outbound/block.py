"""The block outbound: every flow is refused; nothing is opened."""

import errno


class BlockedUdpFlow:
    """A UDP flow of a blocked destination: every datagram is dropped and counted."""

    __slots__ = ("counters",)

    def __init__(self, counters: dict):
        self.counters = counters

    def send(self, payload: bytes, destination: tuple, domain: str | None = None) -> bool:
        self.counters["udp_dropped"] += 1
        return False

    def close(self) -> None:
        """Nothing to release."""

    def hand_over(self, attach) -> bool:
        """No socket: every datagram stays here, to be counted."""
        return False

    def route_for(self, destination: tuple, domain: str | None = None) -> tuple:
        raise ValueError("a blocked flow has no route")


class BlockOutbound:
    """Refuses every flow. The forwarder asks `blocks`, refuses at once (TCP reset, ICMP unreachable)
    and counts the flow here (tcp_refused, udp_refused); open_tcp and open_udp refuse too, for a
    caller that asks them anyway."""

    blocks = True
    resolves_names = True  # it never needs an address
    proxy_address = None

    def __init__(self, loop, *, name: str = "block"):
        self.loop = loop
        self.name = name
        self.counters: dict[str, int] = {"tcp_refused": 0, "udp_refused": 0, "udp_dropped": 0}

    def open_tcp(self, destination: tuple, on_done, domain: str | None = None):
        """Refuse: on_done(None, ConnectionRefusedError) runs on the loop's next turn."""
        self.counters["tcp_refused"] += 1
        self.loop.call_soon(on_done, None, ConnectionRefusedError(errno.ECONNREFUSED, f"outbound {self.name} blocks every flow"))
        return None

    def open_udp(self, family: int, on_datagram, on_close) -> BlockedUdpFlow:
        return BlockedUdpFlow(self.counters)

    def close(self) -> None:
        """Nothing is held. Idempotent."""
