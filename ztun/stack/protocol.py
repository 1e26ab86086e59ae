"""TunStack: the protocol of what turns the packets of a TUN device into flows for the application."""

from typing import Protocol, runtime_checkable


@runtime_checkable
class TunStack(Protocol):
    """Reads the TUN device when the loop says it is readable and answers or forwards what it reads."""

    def start(self, handler=None) -> None:
        """Get ready to process packets; handler is the application's side (flows, UDP, ICMP)."""

    def fileno(self) -> int:
        """The fd the loop waits on: the TUN device's."""

    def on_readable(self) -> int:
        """Process what the device has queued (a bounded number of batches); return packets read."""

    def stats(self) -> dict:
        """Counters by name: packets read, answered, dropped by reason, write failures."""

    def stop(self) -> None:
        """Stop processing; the device stays open (its owner closes it). Idempotent."""
