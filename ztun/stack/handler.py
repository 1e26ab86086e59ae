"""PacketHandler: the application's side of the system stack, asked about new flows and given them."""

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


class Verdict(enum.IntEnum):
    """What to do with a new flow."""

    ALLOW = 1  # accept it and hand it to handle_tcp / handle_udp
    DROP = 2  # silently drop its packets (until the flow idles out)
    REJECT = 3  # TCP reset, or ICMP unreachable (administratively prohibited) for UDP
    DEFER = 4  # TCP only: the handler calls decide(verdict) later; the client's SYN waits until then


@dataclass(frozen=True, slots=True)
class Flow:
    """A new flow as the client sent it: protocol (6 TCP, 17 UDP, 1/58 ICMP), (address, port) each side."""

    proto: int
    source: tuple
    destination: tuple
    domain: str | None = None  # known when the destination is a fake-IP address


@runtime_checkable
class UdpSession(Protocol):
    """One client endpoint's UDP traffic (endpoint-independent: any destination)."""

    source: tuple  # the client's (address, port)
    destination: tuple  # the first datagram's destination
    on_datagram: object  # set by the handler: callable(payload: bytes, destination: tuple); returning
    # Verdict.REJECT answers that datagram with an ICMP unreachable (anything else: nothing more)

    def send(self, payload: bytes, from_address: tuple) -> bool:
        """Send payload to the client as if from from_address (through the TUN); False if it was dropped."""

    def close(self) -> None:
        """End the session (its resources are released; later datagrams start a new one)."""


@runtime_checkable
class PacketHandler(Protocol):
    """Decides about new flows and takes the accepted ones.

    icmp_echo: "reply" answers every echo request through the TUN (in the compiled batch
    path), "drop" drops them, "ask" calls handle_icmp for each one (slow: per packet).
    """

    icmp_echo: str

    def prepare(self, flow: Flow, decide) -> Verdict:
        """Called once for the first packet of each new TCP or UDP flow; must not block.

        For TCP it may return DEFER and call decide(ALLOW / DROP / REJECT) once, later (e.g. when
        its outbound connect has succeeded or failed): until then the client's SYN is held, so a
        refused outbound connect reaches the client as a refused connect.
        """

    def handle_tcp(self, sock, source: tuple, destination: tuple) -> None:
        """An accepted TCP connection (a non-blocking kernel socket, TCP_NODELAY set) with the flow's original endpoints."""

    def handle_udp(self, session: UdpSession) -> None:
        """A new UDP session; set session.on_datagram to receive its datagrams."""

    def handle_icmp(self, flow: Flow) -> Verdict:
        """With icmp_echo == "ask": ALLOW answers this echo request, DROP drops it."""
