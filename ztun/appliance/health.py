"""Outbound health: each outbound that can be probed (a SOCKS5 proxy: connect, greeting, auth) is
probed at start-up and every interval; a change of state is logged once, and kept on the
outbound's `health` dict ({"state": "unknown" | "ok" | "failing", "error", "checked", "delay_ms"}) for
`status` and the metrics."""

import logging
import time

log = logging.getLogger("ztun.health")

UNKNOWN, OK, FAILING = "unknown", "ok", "failing"


class HealthCheck:
    """Probes the outbounds outbounds() gives (read each round: a reload's new ones are probed too), on loop."""

    def __init__(self, loop, outbounds, interval: float):
        self.loop = loop
        self.outbounds = outbounds
        self.interval = interval  # 0: only the round at start-up
        self.probes: dict = {}  # outbound -> its Handshake while a probe runs
        self.started: dict = {}  # outbound -> when its probe started (monotonic)
        self.timer = None
        self.closed = False
        self.on_round = None  # called once, when the current round's last probe is done
        self.quiet = False  # results are kept, not logged (a fatal start-up check says it in its error)

    def check(self, on_round=None) -> None:
        """Start a round now (the next one follows interval after it); on_round() once every probe is done."""
        if self.closed:
            return
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.on_round = on_round
        for name, ob in list(self.outbounds().items()):
            if hasattr(ob, "probe") and ob not in self.probes:
                self.probes[ob] = None  # probe() may finish before it returns
                self.started[ob] = time.monotonic()
                handle = ob.probe(lambda error, ob=ob, name=name: self._done(name, ob, error))
                if ob in self.probes:
                    self.probes[ob] = handle
        if self.interval > 0:
            self.timer = self.loop.call_later(self.interval, self.check)
        self._round_done()

    def _done(self, name: str, ob, error) -> None:
        self.probes.pop(ob, None)
        started = self.started.pop(ob, None)
        delay = (time.monotonic() - started) * 1000 if started is not None else None
        record(name, ob.health, error, quiet=self.quiet, delay_ms=delay)
        self._round_done()

    def _round_done(self) -> None:
        if not self.probes and self.on_round is not None:
            on_round, self.on_round = self.on_round, None
            on_round()

    def failing(self) -> dict:
        """name -> last error of each outbound whose last probe failed."""
        return {name: ob.health["error"] for name, ob in self.outbounds().items()
                if getattr(ob, "health", None) and ob.health["state"] == FAILING}

    def close(self) -> None:
        """Stop the timer and close the probes' connections. Idempotent."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for handle in self.probes.values():
            if handle is not None:
                handle.cancel()
        self.probes.clear()
        self.started.clear()


def record(name: str, health: dict, error: str | None, quiet: bool = False, delay_ms: float | None = None) -> None:
    """Put a probe's result into health (delay_ms: how long the probe took, kept when it passed); log a WARNING
    when it starts failing (or fails otherwise), INFO when it recovers."""
    state = OK if error is None else FAILING
    before, before_error = health["state"], health["error"]
    health.update(state=state, error=error, checked=time.time(), delay_ms=delay_ms if state == OK else None)
    if quiet:
        return
    if state == FAILING and (before != FAILING or error != before_error):
        log.warning("outbound %s: health check failed: %s", name, error)
    elif state == OK and before == FAILING:
        log.info("outbound %s: health check ok again (was: %s)", name, before_error)
    elif state == OK and before == UNKNOWN:
        log.debug("outbound %s: health check ok", name)
