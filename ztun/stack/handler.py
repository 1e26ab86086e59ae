"""PacketHandler: the application's side of the system stack, and the Flow both sides share.

A Flow is one object from a flow's first packet to its last: the stack makes it, the handler
decides about it and writes what it chose onto it, and the same object comes back with the
accepted connection (handle_tcp) or the UDP session. Nothing is found again by address.
"""

import enum
import time
from typing import Protocol, runtime_checkable


class Verdict(enum.IntEnum):
    """What to do with a new flow."""

    ALLOW = 1  # accept it and hand it to handle_tcp / handle_udp
    DROP = 2  # silently drop its packets (UDP: until the flow idles out; TCP: this SYN, a retransmission asks again)
    REJECT = 3  # TCP reset, or ICMP unreachable (administratively prohibited) for UDP
    DEFER = 4  # TCP only: the handler calls flow.decide(verdict) later; the client's SYN waits until then


class Flow:
    """One flow: protocol (6 TCP, 17 UDP, 1/58 ICMP), the client's (address, port) and the destination it asked for.

    The stack sets the first fields; the handler fills in the rest as it goes:
    domain (the name behind a fake-IP destination), outbound (the name of the outbound its
    rules chose), rule (what chose it: the handler's (type, payload), shown by the API), state (the handler's word for where the flow is), remote (a connected
    outbound socket waiting for the client's connection), pending (an outbound connect in
    progress: cancel()able) and carrier (what moves its bytes, with bytes_up/bytes_down:
    the relay, or the UDP session).
    """

    __slots__ = ("id", "proto", "source", "destination", "domain", "started", "outbound", "rule", "state",
                 "remote", "pending", "carrier", "_on_decide", "held")

    def __init__(self, proto: int, source: tuple, destination: tuple, domain: str | None = None, *,
                 id: int = 0, on_decide=None):
        self.id = id  # the stack's number for it (unique per stack), for status and logs
        self.proto, self.source, self.destination, self.domain = proto, source, destination, domain
        self.started = time.monotonic()
        self.outbound = self.rule = self.state = None
        self.remote = self.pending = self.carrier = None
        self._on_decide = on_decide  # the stack's: on_decide(flow, verdict)
        self.held = None  # the stack's: the client's SYN while the handler decides

    def decide(self, verdict: Verdict) -> None:
        """The handler's later verdict on a flow it DEFERred (once; later calls and unheld flows are ignored)."""
        on_decide, self._on_decide = self._on_decide, None
        if on_decide is not None:
            on_decide(self, verdict)

    @property
    def bytes_up(self) -> int:
        return self.carrier.bytes_up if self.carrier is not None else 0

    @property
    def bytes_down(self) -> int:
        return self.carrier.bytes_down if self.carrier is not None else 0

    def __repr__(self):
        return f"Flow({self.id}, proto {self.proto}, {self.source} -> {self.destination})"


@runtime_checkable
class UdpSession(Protocol):
    """One client endpoint's UDP traffic (endpoint-independent: any destination), as the handler sees it."""

    flow: Flow  # the session's flow (its first datagram's destination)
    source: tuple  # the client's (address, port)
    destination: tuple  # the first datagram's destination
    bytes_up: int
    bytes_down: int
    on_datagram: object  # set by the handler: callable(payload: bytes, destination: tuple); returning
    # Verdict.REJECT answers that datagram with an ICMP unreachable (anything else: nothing more)
    on_close: object  # set by the handler: callable(session, reason: str), once, when the session ends

    def send(self, payload: bytes, from_address: tuple) -> bool:
        """Send payload to the client as if from from_address (through the TUN); False if it was dropped."""

    def close(self) -> None:
        """End the session (its resources are released; later datagrams start a new one)."""

    def attach(self, sock, kind: int, fake: str | None = None) -> int:
        """Read sock's datagrams (an outbound flow's replies) in compiled code from now on, each sent
        to the client as from its sender (kind udptable.DIRECT: the datagram's source; SOCKS5: the
        source its header names), or from the address fake; an id for route and detach, or -1 when
        the table has no room (the flow keeps reading it)."""

    def detach(self, sock_id: int) -> None:
        """Stop reading an attached socket (before it is closed); its routes go too. Idempotent."""

    def route(self, destination: tuple, sock_id: int, to: tuple | None = None, prefix: bytes | None = None) -> bool:
        """The session's datagrams to destination go out on the attached socket from now on without
        on_datagram: to (packed address, port) for a DIRECT socket, the prefix for a SOCKS5 one. False
        when the table has no room (they keep coming to on_datagram)."""


@runtime_checkable
class PacketHandler(Protocol):
    """Decides about new flows and takes the accepted ones.

    icmp_echo: "reply" answers every echo request through the TUN (in the compiled batch
    path), "drop" drops them, "ask" calls handle_icmp for each one (slow: per packet).
    """

    icmp_echo: str

    def prepare(self, flow: Flow) -> Verdict:
        """Called once for the first packet of each new TCP or UDP flow; must not block.

        For TCP it may return DEFER and call flow.decide(ALLOW / DROP / REJECT) once, later (e.g.
        when its outbound connect has succeeded or failed): until then the client's SYN is held,
        so a refused outbound connect reaches the client as a refused connect.
        """

    def handle_tcp(self, sock, flow: Flow) -> None:
        """The accepted connection of an allowed TCP flow: a non-blocking kernel socket with TCP_NODELAY set."""

    def handle_udp(self, session: UdpSession) -> None:
        """A new UDP session of an allowed flow (session.flow); set session.on_datagram to receive its datagrams."""

    def handle_icmp(self, flow: Flow) -> Verdict:
        """With icmp_echo == "ask": ALLOW answers this echo request, DROP drops it."""
