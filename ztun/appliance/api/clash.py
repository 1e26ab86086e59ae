"""The Clash API's endpoints over the published view, on the API's thread: answers, streams, auth, CORS.

Authorization (decided here, documented in the README):
  - with api.secret set, every request but the built-in page's files (/ui/) and CORS preflights
    needs it, as `Authorization: Bearer SECRET` or `?token=SECRET` (browsers cannot set headers
    on a WebSocket): missing or wrong is 401.
  - without a secret (loopback only), reads are open and every change (DELETE, PATCH) is 403:
    nothing could say who asks for it. A request whose Host is not a loopback name or address is
    403 too: a web page that rebinds its own name to 127.0.0.1 (DNS rebinding) reads nothing.
Changes reach the loop as calls queued with loop.call_soon_threadsafe; nothing here touches the
appliance's objects.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import threading
from collections import deque
from importlib import resources
from urllib.parse import parse_qs, unquote, urlsplit

from .server import Answer, Pending, Stream
from .view import CLASH_LEVELS, connections

MUTATING = ("DELETE", "PATCH", "PUT", "POST")
LOG_KEPT = 1000  # log lines kept for /logs streams (a client that falls further behind skips some)
UI_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
            "style.css": "text/css; charset=utf-8"}
LEVEL_ORDER = ("debug", "info", "warning", "error")
# The page's scripts and styles are its own files; it fetches from its own origin only; no other
# site may frame it (it holds the secret and has close buttons: clickjacking)
UI_CSP = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
          "form-action 'none'")


def _json(status: int, value, headers: dict | None = None) -> Answer:
    return Answer(status, {"Content-Type": "application/json", "Cache-Control": "no-store", **(headers or {})},
                  json.dumps(value, separators=(",", ":")).encode())


def _message(status: int, text: str, headers: dict | None = None) -> Answer:
    return _json(status, {"message": text}, headers)


class LogBuffer(logging.Handler):
    """The last LOG_KEPT log records as (seq, Clash type, text), for /logs; records only while a stream reads them."""

    def __init__(self):
        super().__init__()
        self.lines: deque = deque(maxlen=LOG_KEPT)
        self.seq = 0
        self.readers = 0  # streams open: none, and emit() does nothing
        self._guard = threading.Lock()

    def emit(self, record) -> None:
        if not self.readers:
            return
        try:
            text = f"[{record.name}] {record.getMessage()}"
        except Exception:
            return
        kind = "debug" if record.levelno < logging.INFO else "info" if record.levelno < logging.WARNING else \
            "warning" if record.levelno < logging.ERROR else "error"
        with self._guard:
            self.seq += 1
            self.lines.append((self.seq, kind, text))

    def since(self, seq: int) -> list:
        with self._guard:
            return [line for line in self.lines if line[0] > seq]


class ClashApi:
    """handler(request, body) for ApiHttpServer. latest() -> (taken, view dict); call(fn, *args) runs fn on the loop."""

    def __init__(self, latest, call, *, view, forwarder, secret: str | None, allow_origins=(), logs: LogBuffer):
        self.latest, self.call, self.view, self.forwarder = latest, call, view, forwarder
        self.secret = secret
        self.allow_origins = tuple(allow_origins)
        self.logs = logs
        self.server_counters: dict = {}  # the HTTP server's (requests, bad_requests, timeouts, ...), set by ApiServer
        self._encoded = (None, "")  # (view seq, /connections as JSON): one encoding a view, however many ask
        # Closes asked for and not yet made: ids (None: all); one call queued to the loop at a time
        self._closes: set | None = set()
        self._close_queued = False
        self._close_guard = threading.Lock()

    # -- the gate ---------------------------------------------------------------------------

    def __call__(self, request, body: bytes):
        url = urlsplit(request.target)
        path, query = url.path, parse_qs(url.query)
        cors = self._cors(request)
        if request.method == "OPTIONS":
            return self._preflight(request, cors)
        if self.secret is None and not _loopback_host(request.headers.get("host", "")):
            return _message(403, "without api.secret only a loopback Host (127.0.0.1, [::1], localhost) is answered")
        if path == "/ui" or path.startswith("/ui/"):
            return self._ui(request, path)
        denied = self._authorize(request, query)
        if denied is not None:
            denied.headers.update(cors)
            return denied
        websocket = request.headers.get("upgrade", "").lower() == "websocket"
        if websocket and not self._same_or_allowed(request):  # browsers do not apply CORS to WebSockets
            return _message(403, f"origin {request.headers.get('origin')} is not in api.allow_origins")
        result = self._route(request, path, query, body, websocket, cors)
        if isinstance(result, Answer):
            result.headers.update(cors)
        elif isinstance(result, Stream) and not websocket:
            result.headers.update(cors)
        return result

    def _authorize(self, request, query):
        mutating = request.method in MUTATING
        if self.secret is None:
            if mutating:
                return _message(403, "changes need api.secret: set it and send it as `Authorization: Bearer SECRET`")
            return None
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else (query.get("token") or [None])[0]
        if token is None or not hmac.compare_digest(token.encode(), self.secret.encode()):
            return _message(401, "Unauthorized", {"WWW-Authenticate": 'Bearer realm="ztun"'})
        return None

    def _origin_allowed(self, origin: str) -> bool:
        return "*" in self.allow_origins or origin.rstrip("/") in self.allow_origins

    def _same_or_allowed(self, request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return True  # not a browser page
        host = request.headers.get("host", "")
        return origin in (f"http://{host}", f"https://{host}") or self._origin_allowed(origin)

    def _cors(self, request) -> dict:
        origin = request.headers.get("origin")
        if origin is None or not self._origin_allowed(origin):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    def _preflight(self, request, cors: dict) -> Answer:
        if not cors:
            return Answer(403, {"Content-Type": "text/plain"}, b"origin not in api.allow_origins\n")
        headers = dict(cors)
        headers["Access-Control-Allow-Methods"] = "GET, PUT, PATCH, DELETE, OPTIONS"
        headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
        headers["Access-Control-Max-Age"] = "600"
        if request.headers.get("access-control-request-private-network", "").lower() == "true":
            headers["Access-Control-Allow-Private-Network"] = "true"
        return Answer(204, headers)

    def _ui(self, request, path: str) -> Answer:
        if request.method not in ("GET", "HEAD"):
            return Answer(405, {"Allow": "GET, HEAD"})
        if path == "/ui":
            return Answer(301, {"Location": "/ui/"})
        name = path[len("/ui/"):] or "index.html"
        if name not in UI_FILES:
            return Answer(404, {"Content-Type": "text/plain"}, b"not found\n")
        data = resources.files(__package__).joinpath("ui", name).read_bytes()
        return Answer(200, {"Content-Type": UI_FILES[name], "Cache-Control": "no-cache", "Content-Security-Policy": UI_CSP,
                            "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff"}, data)

    # -- endpoints ------------------------------------------------------------------------

    def _route(self, request, path: str, query: dict, body: bytes, websocket: bool, cors: dict):
        method = request.method
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        top = parts[0] if parts else ""
        if method == "GET" and not parts:
            return _json(200, {"hello": "ztun"})
        if top == "version" and len(parts) == 1:
            return self._get(method) or _json(200, {"version": f"ztun {self.latest()[1].get('version', '')}".strip(),
                                                    "premium": True, "meta": True})
        if top == "traffic" and len(parts) == 1:
            return self._get(method) or self._stream(websocket, self._traffic(), latest_only=True)
        if top == "connections":
            if len(parts) == 1 and method == "GET":
                self.view.want_flows()
                if websocket:
                    return self._stream(websocket, self._connections(query), latest_only=True)
                return Pending(self._connections_once)
            if len(parts) == 1 and method == "DELETE":
                self._close(None)
                return Answer(204)
            if len(parts) == 2 and method == "DELETE":
                try:
                    flow_id = int(parts[1])
                except ValueError:
                    return _message(404, f"no connection {parts[1]!r}")
                self._close({flow_id})
                return Answer(204)
            return self._not_allowed("GET, DELETE")
        if top == "proxies" and len(parts) <= 2:
            if method != "GET":
                return self._not_allowed("GET")
            proxies = self.latest()[1].get("proxies", {})
            if len(parts) == 1:
                return _json(200, {"proxies": proxies})
            if parts[1] not in proxies:
                return _message(404, f"no proxy {parts[1]!r}")
            return _json(200, proxies[parts[1]])
        if top == "rules" and len(parts) == 1:
            return self._get(method) or _json(200, {"rules": self.latest()[1].get("rules", [])})
        if top == "configs" and len(parts) == 1:
            if method == "GET":
                return _json(200, self._configs())
            if method == "PATCH":
                return self._patch_configs(body)
            return self._not_allowed("GET, PATCH")
        if top == "logs" and len(parts) == 1:
            return self._get(method) or self._stream(websocket, self._log_lines(query))
        if top == "ztun" and parts[1:] == ["summary"]:
            return self._get(method) or _json(200, self._summary())
        return _message(404, "not found")

    def _close(self, ids) -> None:
        """Queue closing ids (None: every flow). close_flows walks all open flows on the loop, so the
        closes asked before the loop gets to them go in the one call already queued."""
        with self._close_guard:
            if ids is None or self._closes is None:
                self._closes = None
            else:
                self._closes |= ids
            if self._close_queued:
                return
            self._close_queued = True
        self.call(self._close_now)

    def _close_now(self) -> None:
        """On the loop: the closes asked so far, in one call."""
        with self._close_guard:
            ids, self._closes, self._close_queued = self._closes, set(), False
        self.forwarder.close_flows(ids)

    def _get(self, method: str):
        return None if method == "GET" else self._not_allowed("GET")

    @staticmethod
    def _not_allowed(allow: str) -> Answer:
        return _message(405, "method not allowed", {"Allow": allow})

    @staticmethod
    def _stream(websocket: bool, poll, latest_only: bool = False) -> Stream:
        return Stream(poll, websocket=websocket, latest_only=latest_only)

    def _each_view(self, make):
        """A poll giving make(view) once per new view."""
        last = [0]

        def poll():
            view = self.latest()[1]
            seq = view.get("seq", 0)
            if seq == last[0]:
                return []
            last[0] = seq
            item = make(view)
            return [] if item is None else [json.dumps(item, separators=(",", ":"))]

        return poll

    def _traffic(self):
        return self._each_view(lambda view: view.get("traffic", {"up": 0, "down": 0}))

    def _connections(self, query):
        last = [0]

        def poll():
            self.view.want_flows()  # a stream keeps the flow list coming
            view = self.latest()[1]
            if view.get("seq", 0) == last[0] or view.get("connections") is None:
                return []
            last[0] = view["seq"]
            return [self._connections_json(view)]

        return poll

    def _connections_once(self):
        view = self.latest()[1]
        if view.get("connections") is None:
            return None  # the loop makes the list from its next view on
        return Answer(200, {"Content-Type": "application/json", "Cache-Control": "no-store"},
                      self._connections_json(view).encode())

    def _connections_json(self, view) -> str:
        seq, text = self._encoded
        if seq != view["seq"]:
            text = json.dumps(_connections_doc(view), separators=(",", ":"))
            self._encoded = (view["seq"], text)
        return text

    def _log_lines(self, query):
        wanted = (query.get("level") or ["info"])[0].lower()
        floor = LEVEL_ORDER.index(wanted) if wanted in LEVEL_ORDER else 1
        logs = self.logs
        logs.readers += 1  # not undone: a stream that ended stops costing once the server drops it (see below)
        state = {"seq": logs.seq}

        def poll():
            lines = logs.since(state["seq"])
            if lines:
                state["seq"] = lines[-1][0]
            return [json.dumps({"type": kind, "payload": text}, separators=(",", ":"))
                    for _, kind, text in lines if LEVEL_ORDER.index(kind) >= floor]

        poll.on_close = lambda: setattr(logs, "readers", max(0, logs.readers - 1))
        return poll

    def _configs(self) -> dict:
        view = self.latest()[1]
        status = view.get("status") or {}
        addresses = (status.get("device") or {}).get("addresses") or []
        return {"port": 0, "socks-port": 0, "redir-port": 0, "tproxy-port": 0, "mixed-port": 0,
                "allow-lan": False, "bind-address": "*", "mode": "rule", "mode-list": ["rule"],
                "log-level": view.get("log_level", "info"), "ipv6": any(":" in a for a in addresses),
                "tun": {"enable": True, "device": (status.get("device") or {}).get("name"), "stack": "system",
                        "auto-route": bool((status.get("routing") or {}).get("auto_route"))},
                "modes": ["rule"]}

    def _patch_configs(self, body: bytes) -> Answer:
        try:
            patch = json.loads(body or b"{}")
        except ValueError:
            return _message(400, "the body is not JSON")
        if not isinstance(patch, dict):
            return _message(400, "the body must be a JSON object")
        level = patch.get("log-level")
        if level is not None:
            if not isinstance(level, str) or level.lower() not in CLASH_LEVELS:
                return _message(400, f"log-level must be one of {', '.join(CLASH_LEVELS)}")
            self.call(logging.getLogger().setLevel, CLASH_LEVELS[level.lower()])
        mode = patch.get("mode")
        if mode is not None and str(mode).lower() != "rule":
            return _message(400, "ztun has the rule mode only")
        return Answer(204)

    def _summary(self) -> dict:
        """ztun's own, for the built-in page: drops by reason, each outbound's type, health and byte totals."""
        taken, view = self.latest()
        status = view.get("status") or {}
        proxies = view.get("proxies") or {}
        totals = view.get("outbound_bytes") or {}
        outbounds = {}
        for name, p in proxies.items():
            if name == "GLOBAL":
                continue
            up, down = totals.get(name, (0, 0))
            outbounds[name] = {"type": p["type"], "health": p.get("health"), "error": p.get("error"), "up": up, "down": down}
        return {"taken": view.get("taken"), "version": view.get("version"), "uptime_s": status.get("uptime_s"),
                "traffic": view.get("traffic"), "uploadTotal": view.get("upload_total", 0),
                "downloadTotal": view.get("download_total", 0), "drops": status.get("drops") or {},
                "flows_by_state": status.get("flows_by_state") or {}, "outbounds": outbounds,
                "api": dict(self.server_counters)}


def _loopback_host(host: str) -> bool:
    """Whether a Host header names this host's loopback: localhost, 127.x.y.z or [::1], with or without a port."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _connections_doc(view) -> dict:
    return {"downloadTotal": view.get("download_total", 0), "uploadTotal": view.get("upload_total", 0),
            "connections": connections(view["connections"]), "memory": 0}
