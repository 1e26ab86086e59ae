"""Optional Prometheus endpoint (`metrics.listen = "127.0.0.1:9477"`), served by prometheus_client.

Threading: prometheus_client answers scrapes on its own thread, but the appliance's state
belongs to the readiness loop's thread. So the collector never calls snapshot() itself:
PublishedSnapshot calls snapshot(include_flows=False) on the loop, every `interval` seconds
from a loop timer, copies the result into fresh dicts and lists, and publishes the copy by
replacing one attribute (an atomic reference store). A scrape reads whatever copy is current:
at most `interval` seconds old, never a dict the loop is changing, and a scrape never waits
for the loop. `ztun_snapshot_age_seconds` says how old it is: it grows if the loop is stuck.

The HTTP endpoint is ztun's own (HttpEndpoint): one thread, one selector, non-blocking
sockets, so a slow or idle client costs a socket, not a thread. A client has HEADER_TIMEOUT
to send its request and WRITE_TIMEOUT to take the answer; at most MAX_CONNECTIONS are open,
and one more closes the oldest still sending its request, so held-open connections never
keep a scrape out. prometheus_client renders the answer (text or OpenMetrics, gzip).

Names (prometheus_client appends _total to counters):
  ztun_<counter>_total            each key of snapshot["counters"]
  ztun_<gauge>                    each key of snapshot["gauges"]
  ztun_drops_total{reason}        snapshot["drops"]
  ztun_flows{state}               snapshot["flows_by_state"]
  ztun_outbound_events_total{outbound,event}   snapshot["outbounds"]
  ztun_outbound_up{outbound}      snapshot["health"]: 1 ok, 0 failing (left out while unknown)
  ztun_outbound_checked_timestamp_seconds{outbound}   when its last probe ended
  ztun_uptime_seconds, ztun_build_info{version}, ztun_snapshot_age_seconds
plus prometheus_client's process_* metrics (CPU, memory, open fds) of the appliance.
"""

from __future__ import annotations

import gzip
import logging
import re
import selectors
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

from ..errors import ConfigError, ZtunError
from ..net import endpoint_text
from ..net import split_host_port

log = logging.getLogger("ztun.metrics")

INTERVAL = 1.0  # seconds between published snapshots
DEFAULT_PORT = 9477
HEADER_TIMEOUT = 5.0  # seconds a client has, from its connect, to send the whole request
WRITE_TIMEOUT = 10.0  # seconds it has to take the whole answer
MAX_CONNECTIONS = 32  # open at once; one more closes the oldest still sending its request
MAX_REQUEST = 8192  # bytes of request line and headers
LINGER = 2.0  # seconds an answered client has to close its end
BACKLOG = 128  # connections the kernel queues before the endpoint accepts them (a SYN is never dropped for a burst)


def parse_listen(text: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" -> (host, port), port 0 picking a free one; ConfigError naming metrics.listen otherwise."""
    try:
        return split_host_port(str(text), min_port=0)
    except ValueError as e:
        raise ConfigError(f"metrics.listen: expected host:port (e.g. 127.0.0.1:{DEFAULT_PORT}), got {text!r}: {e}") from None


class PublishedSnapshot:
    """The latest copy of snapshot(include_flows=False), refreshed on the loop, readable from any thread."""

    def __init__(self, loop, snapshot: Callable[..., dict], interval: float = INTERVAL, copy: bool = True):
        self.loop = loop
        self._snapshot = snapshot
        self.interval = interval
        self._copy = _copy if copy else _same  # copy=False: snapshot() makes a fresh dict that nothing changes later
        self.latest: tuple[float, dict] = (time.monotonic(), {})  # (taken at, copy): replaced whole, never mutated
        self._timer = None
        self._refresh()

    def _refresh(self) -> None:
        try:
            self.latest = (time.monotonic(), self._copy(self._snapshot(include_flows=False)))
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


def _same(value):
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
        health = snap.get("health") or {}
        yield _labelled(GaugeMetricFamily("ztun_outbound_up", "1 if the outbound passed its last health probe, 0 if it failed",
                                          labels=["outbound"]),
                        [((name,), 1 if h["state"] == "ok" else 0) for name, h in health.items() if h.get("state") in ("ok", "failing")])
        yield _labelled(GaugeMetricFamily("ztun_outbound_checked_timestamp_seconds", "When the outbound's last health probe ended",
                                          labels=["outbound"]),
                        [((name,), h.get("checked")) for name, h in health.items() if h.get("checked") is not None])


def _labelled(family, items):
    for labels, value in items:
        number = _number(value)
        if number is not None:
            family.add_metric([str(x) for x in labels], number)
    return family


class MetricsServer:
    """The HTTP endpoint at listen ("host:port"; port 0 picks one) serving snapshot's metrics until close()."""

    def __init__(self, loop, listen: str, snapshot: Callable[..., dict], *, interval: float = INTERVAL,
                 header_timeout: float = HEADER_TIMEOUT, write_timeout: float = WRITE_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS):
        host, port = parse_listen(listen)
        try:
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
            self._endpoint = HttpEndpoint(host, port, lambda request: _render(registry, request),
                                          header_timeout=header_timeout, write_timeout=write_timeout,
                                          max_connections=max_connections)
        except OSError as e:
            self.published.close()
            raise ZtunError(f"metrics.listen {listen}: cannot listen: {e.strerror or e}") from None
        self.address = self._endpoint.address
        log.info("metrics on http://%s/metrics", endpoint_text(self.address))

    def close(self) -> None:
        """Stop answering scrapes and publishing snapshots. Idempotent."""
        self.published.close()
        self._endpoint.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _render(registry, request: "Request") -> tuple[int, dict, bytes]:
    """(status, headers, body) for one request, as prometheus_client's own server answers it."""
    from prometheus_client.exposition import choose_encoder

    if request.method not in ("GET", "HEAD"):
        return 405, {"Allow": "GET, HEAD"}, b"only GET and HEAD\n"
    url = urlsplit(request.target)
    if url.path == "/favicon.ico":
        return 404, {}, b""
    names = parse_qs(url.query).get("name[]")
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    body = encoder(_Only(registry, set(names)) if names else registry)
    headers = {"Content-Type": content_type}
    if "gzip" in request.headers.get("accept-encoding", ""):
        body = gzip.compress(body, compresslevel=1)
        headers["Content-Encoding"] = "gzip"
    return 200, headers, body


class _Only:
    """The samples of registry named in names (`?name[]=...`); restricted_registry() would need describe()."""

    def __init__(self, registry, names: set):
        self._registry, self._names = registry, names

    def collect(self):
        for family in self._registry.collect():
            family.samples = [s for s in family.samples if s.name in self._names]
            if family.samples:
                yield family


class Request:
    """One parsed HTTP request: method, target, headers (names lower-cased)."""

    __slots__ = ("method", "target", "headers")

    def __init__(self, head: bytes):
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            raise ValueError("bad request line")
        self.method, self.target = parts[0], parts[1]
        self.headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                self.headers[name.strip().lower()] = value.strip()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            431: "Request Header Fields Too Large", 500: "Internal Server Error"}


def _response(status: int, headers: dict, body: bytes, head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)


class _Conn:
    """One client: what it sent so far, what is left to send it (None: not yet; empty: all sent), its deadline."""

    __slots__ = ("sock", "inbuf", "out", "deadline")

    def __init__(self, sock, deadline: float):
        self.sock, self.inbuf, self.out, self.deadline = sock, b"", None, deadline


class ListeningThread:
    """A listening TCP socket on (host, port) served by a thread of its own (its _serve) until close():
    the metrics endpoint's and the API's. handler is the subclass's to call; the thread is started
    last, so a subclass sets what _serve needs before calling this."""

    THREAD_NAME = "ztun-http"

    def __init__(self, host: str, port: int, handler, *, header_timeout: float, write_timeout: float,
                 max_connections: int):
        self._handler = handler
        self.header_timeout, self.write_timeout, self.max_connections = header_timeout, write_timeout, max_connections
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(sockaddr)
            self._listener.listen(BACKLOG)
            self._listener.setblocking(False)
            self._wake_r, self._wake_w = socket.socketpair()
        except OSError:
            self._listener.close()
            raise
        self.address = self._listener.getsockname()[:2]
        self._conns: dict = {}  # socket -> _Conn, oldest first
        self._closing = False
        self._thread = threading.Thread(target=self._serve, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop: the thread closes every socket and ends. Idempotent; waits at most ~2 s."""
        if self._closing:
            return
        self._closing = True
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(timeout=2.0)
        self._wake_w.close()

    def _serve(self) -> None:
        raise NotImplementedError

    def _teardown(self, sel) -> None:
        """The thread's end: every connection dropped (the subclass's _drop), the selector, the listener
        and the wake socket closed."""
        for conn in list(self._conns.values()):
            self._drop(sel, conn)
        sel.close()
        self._listener.close()
        self._wake_r.close()


class HttpEndpoint(ListeningThread):
    """A small HTTP/1.1 server on its own thread: one request per connection, answered by handler(Request).

    handler returns (status, headers, body) and runs on the endpoint's thread, never the
    appliance's loop. Slow clients are cut off at their deadline; at max_connections, a new
    client closes the oldest one still sending its request (or, if all are being answered,
    is closed itself).
    """

    THREAD_NAME = "ztun-metrics"

    def __init__(self, host: str, port: int, handler, *, header_timeout: float = HEADER_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        super().__init__(host, port, handler, header_timeout=header_timeout, write_timeout=write_timeout,
                         max_connections=max_connections)

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._closing:
                timeout = None
                if self._conns:
                    timeout = max(0.0, min(c.deadline for c in self._conns.values()) - time.monotonic())
                for key, _ in sel.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept(sel)
                    elif key.fileobj is not self._wake_r and key.fileobj in self._conns:
                        self._step(sel, self._conns[key.fileobj])
                now = time.monotonic()
                for conn in [c for c in self._conns.values() if c.deadline <= now]:
                    self._drop(sel, conn)
        except Exception:
            log.exception("metrics: the HTTP endpoint failed; no more scrapes are answered")
        finally:
            self._teardown(sel)

    def _accept(self, sel) -> None:
        for _ in range(BACKLOG):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of descriptors, or the client left: try again on the next event
                log.debug("metrics: accept: %s", e)
                return
            if len(self._conns) >= self.max_connections:
                oldest = next((c for c in self._conns.values() if not c.out), None)  # sending, or answered
                if oldest is None:
                    sock.close()
                    continue
                self._drop(sel, oldest)
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.header_timeout)
            self._conns[sock] = conn
            sel.register(sock, selectors.EVENT_READ)

    def _step(self, sel, conn: _Conn) -> None:
        """Read more of conn's request, or send more of its answer."""
        try:
            if conn.out is None:
                data = conn.sock.recv(4096)
                if not data:
                    self._drop(sel, conn)
                    return
                conn.inbuf += data
                end = conn.inbuf.find(b"\r\n\r\n")
                if end < 0:
                    if len(conn.inbuf) > MAX_REQUEST:
                        self._answer(sel, conn, _response(431, {}, b""))
                    return
                self._answer(sel, conn, self._respond(conn.inbuf[:end]))
            elif conn.out:
                self._send(sel, conn)
            elif not conn.sock.recv(4096):  # answered: discard what it sends until it closes
                self._drop(sel, conn)
        except OSError:
            self._drop(sel, conn)

    def _respond(self, head: bytes) -> bytes:
        try:
            request = Request(head)
        except ValueError:
            return _response(400, {}, b"")
        try:
            status, headers, body = self._handler(request)
        except Exception:
            log.exception("metrics: rendering a scrape failed")
            return _response(500, {}, b"")
        return _response(status, headers, body, head_only=request.method == "HEAD")

    def _answer(self, sel, conn: _Conn, data: bytes) -> None:
        conn.out = memoryview(data)
        conn.deadline = time.monotonic() + self.write_timeout
        sel.modify(conn.sock, selectors.EVENT_WRITE)
        self._send(sel, conn)

    def _send(self, sel, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            # Shut our side and wait for the client's close: closing with its bytes unread would
            # reset the connection and could discard the end of the answer still in flight.
            conn.sock.shutdown(socket.SHUT_WR)
            conn.deadline = min(conn.deadline, time.monotonic() + LINGER)
            sel.modify(conn.sock, selectors.EVENT_READ)

    def _drop(self, sel, conn: _Conn) -> None:
        self._conns.pop(conn.sock, None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
