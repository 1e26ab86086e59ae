"""TunStack: the protocol of what turns the packets of a TUN device into flows for the application."""

from typing import Protocol, runtime_checkable


@runtime_checkable
class TunStack(Protocol):
    """Reads the TUN device on its loop and answers or forwards what it reads; new flows go to the handler."""

    failure: Exception | None  # the device error that stopped it, if any

    def start(self, handler=None, loop=None, on_failure=None) -> None:
        """Start reading the device on loop; handler (a PacketHandler) gets the flows.

        With no handler or loop it only answers ICMP echo when on_readable() is called.
        on_failure(error) runs once if the device fails (the stack has stopped reading it).
        """

    def fileno(self) -> int:
        """The fd the stack waits on: the TUN device's."""

    def on_readable(self) -> int:
        """Process what the device has queued (a bounded number of batches); return packets read."""

    def stats(self) -> dict:
        """Counters by name: packets read, answered, dropped by reason, write failures; gauges tcp_flows, udp_sessions."""

    def stop(self) -> None:
        """Stop processing; the device stays open (its owner closes it). Idempotent."""
