"""Optional Prometheus endpoint (`metrics.listen = "127.0.0.1:9477"`), served by prometheus_client.

Threading: prometheus_client answers scrapes on its own thread, but the appliance's state
belongs to the readiness loop's thread. So the collector never calls snapshot() itself:
PublishedSnapshot calls snapshot(include_flows=False) on the loop, every `interval` seconds
from a loop timer, copies the result into fresh dicts and lists, and publishes the copy by
replacing one attribute (an atomic reference store). A scrape reads whatever copy is current:
at most `interval` seconds old, never a dict the loop is changing, and a scrape never waits
for the loop. `ztun_snapshot_age_seconds` says how old it is: it grows if the loop is stuck.

Names (prometheus_client appends _total to counters):
  ztun_<counter>_total            each key of snapshot["counters"]
  ztun_<gauge>                    each key of snapshot["gauges"]
  ztun_drops_total{reason}        snapshot["drops"]
  ztun_flows{state}               snapshot["flows_by_state"]
  ztun_outbound_events_total{outbound,event}   snapshot["outbounds"]
  ztun_uptime_seconds, ztun_build_info{version}, ztun_snapshot_age_seconds
plus prometheus_client's process_* metrics (CPU, memory, open fds) of the appliance.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

from ..errors import ConfigError, ZtunError
from ..net import endpoint_text
from ..net import split_host_port

log = logging.getLogger("ztun.metrics")

INTERVAL = 1.0  # seconds between published snapshots
DEFAULT_PORT = 9477


def parse_listen(text: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port), port 0 picking a free one; ConfigError naming metrics.listen otherwise."""
    try:
        return split_host_port(str(text), min_port=0)
    except ValueError as e:
        raise ConfigError(f"metrics.listen: expected host:port (e.g. 127.0.0.1:{DEFAULT_PORT}), got {text!r}: {e}") from None


class PublishedSnapshot:
    """The latest copy of snapshot(include_flows=False), refreshed on the loop, readable from any thread."""

    def __init__(self, loop, snapshot: Callable[..., dict], interval: float = INTERVAL):
        self.loop = loop
        self._snapshot = snapshot
        self.interval = interval
        self.latest: tuple[float, dict] = (time.monotonic(), {})  # (taken at, copy): replaced whole, never mutated
        self._timer = None
        self._refresh()

    def _refresh(self) -> None:
        try:
            self.latest = (time.monotonic(), _copy(self._snapshot(include_flows=False)))
        except Exception:
            log.exception("metrics: snapshot failed; serving the previous one")
        self._timer = self.loop.call_later(self.interval, self._refresh)

    def get(self) -> tuple[float, dict]:
        return self.latest

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _copy(value):
    """A deep copy of the dicts and lists of a snapshot, done on the loop thread."""
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_copy(v) for v in value]
    return value


_BAD_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def _name(key) -> str:
    name = _BAD_NAME_CHARS.sub("_", str(key))
    return name.removesuffix("_total")


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class SnapshotCollector:
    """A prometheus_client custom collector over PublishedSnapshot.get(): one metric family per snapshot part."""

    def __init__(self, latest: Callable[[], tuple[float, dict]]):
        self._latest = latest

    def describe(self):
        return []  # names depend on the snapshot's keys; nothing to check at registration

    def collect(self):
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            InfoMetricFamily,
        )

        taken, snap = self._latest()
        yield GaugeMetricFamily("ztun_snapshot_age_seconds", "Age of the counters served (grows if the loop is stuck)",
                                value=max(0.0, time.monotonic() - taken))
        if "version" in snap:
            yield InfoMetricFamily("ztun_build", "ztun version", value={"version": str(snap["version"])})
        uptime = _number(snap.get("uptime_s"))
        if uptime is not None:
            yield GaugeMetricFamily("ztun_uptime_seconds", "Seconds since the appliance started", value=uptime)
        for kind, family in (("counters", CounterMetricFamily), ("gauges", GaugeMetricFamily)):
            for key, value in (snap.get(kind) or {}).items():
                number = _number(value)
                if number is not None:
                    yield family(f"ztun_{_name(key)}", f"ztun {key}", value=number)
        drops = snap.get("drops") or {}
        yield _labelled(CounterMetricFamily("ztun_drops", "Packets or flows dropped, by reason", labels=["reason"]),
                        [((k,), v) for k, v in drops.items()])
        states = snap.get("flows_by_state") or {}
        yield _labelled(GaugeMetricFamily("ztun_flows", "Flows now, by state", labels=["state"]),
                        [((k,), v) for k, v in states.items()])
        outbounds = snap.get("outbounds") or {}
        yield _labelled(CounterMetricFamily("ztun_outbound_events", "Outbound events (connects, failures, ...)",
                                            labels=["outbound", "event"]),
                        [((name, k), v) for name, events in outbounds.items() for k, v in (events or {}).items()])


def _labelled(family, items):
    for labels, value in items:
        number = _number(value)
        if number is not None:
            family.add_metric([str(x) for x in labels], number)
    return family


class MetricsServer:
    """The HTTP endpoint at listen ("host:port"; port 0 picks one) serving snapshot's metrics until close()."""

    def __init__(self, loop, listen: str, snapshot: Callable[..., dict], *, interval: float = INTERVAL):
        host, port = parse_listen(listen)
        try:
            import prometheus_client
            from prometheus_client import CollectorRegistry, ProcessCollector
        except ImportError:
            raise ZtunError("metrics.listen is set but prometheus_client is not installed: "
                            "pip install 'ztun[metrics]' (or prometheus_client), or unset metrics.listen") from None
        self.published = PublishedSnapshot(loop, snapshot, interval)
        # A registry of its own: no other module's metrics, and several servers can coexist (tests).
        registry = CollectorRegistry()
        registry.register(SnapshotCollector(self.published.get))
        ProcessCollector(registry=registry)
        try:
            started = prometheus_client.start_http_server(port, host, registry=registry)
        except OSError as e:
            self.published.close()
            raise ZtunError(f"metrics.listen {listen}: cannot listen: {e.strerror or e}") from None
        if not isinstance(started, tuple):  # prometheus_client < 0.20 returns nothing: no way to stop it
            self.published.close()
            raise ZtunError(f"prometheus_client {getattr(prometheus_client, '__version__', '?')} is too old: "
                            f"ztun needs 0.20 or later")
        self._server, self._thread = started
        self.address = self._server.server_address[:2]
        log.info("metrics on http://%s/metrics", endpoint_text(self.address))

    def close(self) -> None:
        """Stop answering scrapes and publishing snapshots. Idempotent; waits at most ~1 s."""
        self.published.close()
        if self._server is not None:
            self._server.shutdown()  # serve_forever notices within its 0.5 s poll interval
            self._server.server_close()
            self._thread.join(timeout=2.0)
            self._server = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
