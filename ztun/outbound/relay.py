"""Relay: moves bytes both ways between two connected sockets until the connection ends.

The moving is the relay engine's (`ztun._fast.relay`): compiled, on a native thread with its
own epoll, so the loop hears of a relay only at its start and its end; the twin runs the
same relays on the loop. A Relay is the handle the flow keeps as its carrier: byte counts
while it runs, the reason once it ended, close() to end it now.
"""

import logging
import os
import time

from .. import _fast

log = logging.getLogger("ztun.relay")

HAVE_SPLICE = hasattr(os, "splice")
# ZTUN_RELAY=copy moves bytes with recv/send through a buffer instead of splice (the path of
# platforms without splice, selectable here so the same tests run it).
COPY = os.environ.get("ZTUN_RELAY", "") == "copy"


def engine_of(loop, module=None):
    """The loop's relay engine (one per loop, closed with it), of module (default: the chosen one)."""
    module = module or _fast.relay
    engine = loop.shared.get(module.RelayEngine)
    if engine is None:
        engine = loop.shared[module.RelayEngine] = module.RelayEngine(loop, _ended)
    return engine


def engine_stats(loop) -> tuple[dict, dict]:
    """(counters, gauges) of the loop's relay engine: its thread's wake-ups, the socket events it
    took and the relays it pumped (all 0 for the twin, whose work is the loop's), and the relays
    open now. Empty before the first relay."""
    engine = loop.shared.get(_fast.relay.RelayEngine)
    if engine is None:
        return {}, {}
    return {f"relay_{k}": v for k, v in engine.stats().items()}, {"relays_open": engine.open}


def _ended(relay, reason, up, down):
    relay._ended(reason, up, down)


class Relay:
    """Relays between client and remote until both directions end, one side resets, or it idles out.

    The relay owns both sockets from here. on_close(relay, reason) runs once at the end, on
    the loop; reason is "done", "reset", "idle" or "closed". bytes_up counts client ->
    remote, bytes_down remote -> client.
    """

    __slots__ = ("engine", "id", "on_close", "idle_timeout", "closed", "reason", "started", "_final", "__weakref__")

    def __init__(self, loop, client, remote, *, on_close=None, idle_timeout: float = 300.0, splice: bool | None = None, engine=None):
        splice = (HAVE_SPLICE and not COPY) if splice is None else splice and HAVE_SPLICE
        self.engine = engine if engine is not None else engine_of(loop)
        self.on_close = on_close
        self.idle_timeout = idle_timeout
        self.closed = False
        self.reason = None
        self.started = time.monotonic()
        self._final = (0, 0)
        self.id = 0
        self.id = self.engine.add(self, client, remote, idle_timeout, splice)

    @property
    def bytes_up(self) -> int:
        return self._counts()[0]

    @property
    def bytes_down(self) -> int:
        return self._counts()[1]

    def _counts(self) -> tuple:
        if self.closed:
            return self._final
        counts = self.engine.counts(self.id)
        return self._final if counts is None else counts

    def close(self, reason: str = "closed", reset: bool = False) -> None:
        """End the relay now and close both sockets (with a reset, so both peers learn at once).
        on_close has run when this returns. Idempotent."""
        if self.closed:
            return
        counts = self.engine.end(self.id, reset)
        if counts is None:  # it had ended on its own: its end is reported now
            self.engine.collect()
            return
        self._ended(reason, *counts)

    def _ended(self, reason: str, up: int, down: int) -> None:
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self._final = (up, down)
        if self.on_close is not None:
            try:
                self.on_close(self, reason)
            except Exception:
                log.exception("relay on_close failed")
