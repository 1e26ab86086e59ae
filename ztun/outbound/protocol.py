"""Outbound: the protocol of where a flow goes (direct, a SOCKS5 proxy, or nowhere: block)."""

from typing import Protocol, runtime_checkable


@runtime_checkable
class Connect(Protocol):
    """An outbound TCP connection being made; its on_done has not run yet."""

    def cancel(self) -> None:
        """Give it up: its socket is closed and on_done never runs. Idempotent."""


@runtime_checkable
class UdpFlow(Protocol):
    """One UDP session's traffic through one outbound: datagrams out to any destination, replies back."""

    def send(self, payload: bytes, destination: tuple, domain: str | None = None) -> bool:
        """Send payload to destination (by domain where the outbound resolves names); False if it was dropped."""

    def close(self) -> None:
        """Release its sockets; on_close is not called. Idempotent."""

    def hand_over(self, attach) -> bool:
        """Let the session's compiled table read the flow's socket from now on: attach(sock, kind)
        (kind udptable.DIRECT or SOCKS5) returns a detach callable, which the flow calls before it
        closes the socket, or None when the table cannot take it. False when the flow cannot hand
        its socket over now (not ready yet, or closed); True once it has (again: True at once)."""

    def route_for(self, destination: tuple, domain: str | None = None) -> tuple:
        """(to, prefix) for the table to send datagrams to destination on the handed-over socket:
        to = (packed address, port) where the flow sends to the destination itself, prefix the
        bytes to put in front of each datagram where it sends to a relay (else None)."""


@runtime_checkable
class Outbound(Protocol):
    """Opens TCP connections and UDP flows toward destinations; every outbound of the appliance is one.

    name: what the rules call it. blocks: every flow is refused (the forwarder answers a
    TCP reset or an ICMP unreachable without opening anything). resolves_names: given a
    domain it connects by name (a SOCKS5 proxy resolves it); otherwise a fake-IP flow's name
    is looked up first. proxy_address: the (IP, port) its connections go to, kept out of the
    TUN's routes, or None. counters: name -> count, only ever going up.
    """

    name: str
    blocks: bool
    resolves_names: bool
    proxy_address: tuple | None
    counters: dict

    def open_tcp(self, destination: tuple, on_done, domain: str | None = None) -> Connect | None:
        """Connect to destination (or to (domain, port)); on_done(sock, None) or on_done(None, OSError) runs once, later, on the loop."""

    def open_udp(self, family: int, on_datagram, on_close) -> UdpFlow:
        """A UDP flow: on_datagram(payload, (host, port)) for each reply; on_close(reason) if it dies by itself."""

    def close(self) -> None:
        """Release what it holds between flows. Idempotent."""
