"""The web view's and Clash API's contract: shapes, streams (chunked and WebSocket), auth (401/403), CORS, the page.

A real loop runs on a thread of its own (as the appliance's does); the forwarder is a stand-in
with real Flow objects whose byte counts the test moves, and real Rules.
"""

import http.client
import json
import logging
import socket
import threading
import time

import pytest

import ztun

pytest.importorskip("wsproto")
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, RejectConnection, Request, TextMessage

from ztun.appliance import config
from ztun.appliance.api import ApiServer
from ztun.appliance.api.view import rfc3339
from ztun.appliance.flows import FlowTable
from ztun.appliance.rules import Rules, describe_rule
from ztun.errors import ConfigError
from ztun.loop import Loop
from ztun.stack.handler import Flow

SECRET = "s3cret-token"


class Carrier:
    def __init__(self):
        self.bytes_up = self.bytes_down = 0


class Outbound:
    def __init__(self, name, blocks=False, proxy=None, health=None):
        self.name, self.blocks, self.proxy_address, self.health = name, blocks, proxy, health


class Forwarder:
    def __init__(self):
        route = config.build({"outbounds": [{"name": "proxy", "type": "socks5", "server": "198.18.0.9", "port": 1080}],
                              "tun": {"routes": ["198.19.0.0/16"]},
                              "route": {"default": "direct", "rules": [
                                  {"outbound": "proxy", "domain_suffix": ["example.com"]},
                                  {"outbound": "block", "cidr": ["198.19.9.0/24"], "port": [25]}]}}).route
        self.rules = Rules(route)
        self.outbounds = {"direct": Outbound("direct"), "block": Outbound("block", blocks=True),
                          "proxy": Outbound("proxy", proxy=("198.18.0.9", 1080),
                                            health={"state": "ok", "error": None, "checked": 1700000000.0, "delay_ms": 3.4})}
        self.flows = FlowTable()
        self.closed = []  # what close_flows was asked, on the loop thread
        self.loop_thread = None

    def close_flows(self, ids=None):
        self.closed.append((ids, threading.current_thread() is self.loop_thread))
        return 0


class Snapshot:
    def __init__(self, forwarder):
        self.forwarder = forwarder

    def __call__(self, include_flows=True):
        up, down = self.forwarder.flows.bytes_total()
        return {"version": "9.9.9", "uptime_s": 1.0, "counters": {"bytes_up": up, "bytes_down": down},
                "gauges": {}, "drops": {"malformed": 3}, "flows_by_state": {"relaying": 1},
                "health": {n: dict(o.health) for n, o in self.forwarder.outbounds.items() if o.health},
                "device": {"name": "ztun0", "addresses": ["172.19.0.1/28", "fdfe:dcba:9876::1/124"]},
                "routing": {"auto_route": False}}


class Appliance:
    """A loop on its own thread, a forwarder with one TCP flow, and the API on an ephemeral port."""

    def __init__(self, **options):
        self.loop = Loop()
        self.fwd = Forwarder()
        flow = Flow(6, ("198.18.0.2", 40000), ("198.19.0.1", 443), "www.example.com", id=7)
        self.fwd.choose_rule = self.fwd.rules.match_index("tcp", flow.source, flow.destination, flow.domain)
        flow.rule = self.fwd.rules.described[self.fwd.choose_rule]
        flow.outbound, flow.state, flow.carrier = "proxy", "relaying", Carrier()
        self.fwd.flows.add(flow)
        self.flow = flow
        self.server = ApiServer(self.loop, "127.0.0.1:0", Snapshot(self.fwd), interval=0.1, **options)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.fwd.loop_thread = self.thread
        self.thread.start()
        self.host, self.port = self.server.address

    def close(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.server.close()
        self.loop.close()

    def request(self, method, path, headers=None, body=None):
        c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def get(self, path, headers=None):
        status, headers, data = self.request("GET", path, headers)
        assert status == 200, (status, data)
        return json.loads(data)

    def websocket(self, target, headers=()):
        """(socket, wsproto client) after the handshake, or (status, None) when it was refused."""
        sock = socket.create_connection((self.host, self.port), timeout=10)
        ws = WSConnection(ConnectionType.CLIENT)
        sock.sendall(ws.send(Request(host=f"{self.host}:{self.port}", target=target, extra_headers=list(headers))))
        while True:
            data = sock.recv(65536)
            assert data, "closed during the handshake"
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    return sock, ws
                if isinstance(event, RejectConnection):
                    sock.close()
                    return event.status_code, None


def ws_messages(sock, ws, count):
    out = []
    while len(out) < count:
        data = sock.recv(65536)
        assert data, "the stream closed"
        ws.receive_data(data)
        out += [json.loads(e.data) for e in ws.events() if isinstance(e, TextMessage)]
    sock.sendall(ws.send(CloseConnection(code=1000)))
    sock.close()
    return out


def chunked_lines(app, path, count, headers=None):
    c = http.client.HTTPConnection(app.host, app.port, timeout=10)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    assert r.status == 200 and r.getheader("Transfer-Encoding") == "chunked"
    lines = []
    while len(lines) < count:
        line = r.readline()  # http.client de-chunks
        assert line, "the stream ended"
        lines.append(json.loads(line))
    c.close()
    return lines


@pytest.fixture
def app():
    a = Appliance(secret=SECRET, allow_origins=("http://dash.example",))
    yield a
    a.close()


@pytest.fixture
def open_app():
    a = Appliance()
    yield a
    a.close()


AUTH = {"Authorization": f"Bearer {SECRET}"}


def test_version_and_hello(app):
    assert app.get("/version", AUTH) == {"version": f"ztun {ztun.__version__}", "premium": True, "meta": True}
    assert app.get("/", AUTH) == {"hello": "ztun"}


def test_connections_snapshot_shape(app):
    app.flow.carrier.bytes_up, app.flow.carrier.bytes_down = 100, 5000
    doc = app.get("/connections", AUTH)
    assert set(doc) == {"downloadTotal", "uploadTotal", "connections", "memory"}
    assert doc["uploadTotal"] == 100 and doc["downloadTotal"] == 5000
    (c,) = doc["connections"]
    assert c["id"] == "7" and c["upload"] == 100 and c["download"] == 5000
    m = c["metadata"]
    assert (m["network"], m["type"], m["sourceIP"], m["sourcePort"], m["destinationIP"], m["destinationPort"], m["host"]) == \
        ("tcp", "Tun", "198.18.0.2", "40000", "198.19.0.1", "443", "www.example.com")
    assert c["chains"] == ["proxy"] and (c["rule"], c["rulePayload"]) == ("DomainSuffix", "example.com")
    assert c["start"].endswith("Z") and abs(time.time() - _unix(c["start"])) < 60


def _unix(text):
    import datetime

    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_traffic_chunked_stream_gives_rates(app):
    def grow():
        for _ in range(40):
            app.flow.carrier.bytes_down += 100_000
            time.sleep(0.05)

    mover = threading.Thread(target=grow)
    mover.start()
    lines = chunked_lines(app, "/traffic", 6, AUTH)
    mover.join()
    assert all(set(x) == {"up", "down"} and isinstance(x["down"], int) for x in lines)
    assert any(x["down"] > 0 for x in lines), lines


def test_traffic_and_connections_over_websocket(app):
    sock, ws = app.websocket(f"/traffic?token={SECRET}")
    assert all(set(x) == {"up", "down"} for x in ws_messages(sock, ws, 2))
    sock, ws = app.websocket(f"/connections?token={SECRET}")
    msgs = ws_messages(sock, ws, 2)
    assert msgs[-1]["connections"][0]["id"] == "7" and "downloadTotal" in msgs[-1]


def test_delete_connections_reach_the_loop(app):
    assert app.request("DELETE", "/connections/7", AUTH)[0] == 204
    assert app.request("DELETE", "/connections", AUTH)[0] == 204
    assert app.request("DELETE", "/connections/not-a-number", AUTH)[0] == 404
    deadline = time.monotonic() + 5
    while (not app.fwd.closed or app.fwd.closed[-1][0] is not None) and time.monotonic() < deadline:
        time.sleep(0.02)
    # on the loop's thread, in order; the two are one call if the loop had not run the first yet
    assert app.fwd.closed in ([({7}, True), (None, True)], [(None, True)])


def test_401_without_or_with_a_wrong_secret(app):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": SECRET}):
        status, h, _ = app.request("GET", "/connections", headers)
        assert status == 401 and h["www-authenticate"].startswith("Bearer")
        assert app.request("DELETE", "/connections/7", headers)[0] == 401
    assert app.request("GET", "/traffic?token=wrong")[0] == 401
    assert app.websocket("/traffic")[0] == 401
    assert app.request("GET", f"/rules?token={SECRET}")[0] == 200
    assert app.fwd.closed == []


def test_403_for_a_change_without_a_secret(open_app):
    assert open_app.get("/connections")["connections"][0]["id"] == "7"  # reads are open on loopback
    assert open_app.request("DELETE", "/connections/7")[0] == 403
    assert open_app.request("DELETE", "/connections")[0] == 403
    assert open_app.request("PATCH", "/configs", body=b'{"log-level": "debug"}')[0] == 403
    time.sleep(0.3)
    assert open_app.fwd.closed == []


def test_without_a_secret_only_a_loopback_host_is_answered(open_app):
    for host in ("127.0.0.1:9090", "localhost", "[::1]:9090", "127.1.2.3"):
        assert open_app.request("GET", "/version", {"Host": host})[0] == 200, host
    for host in ("evil.example:9090", "198.18.0.1", "", "[fd00::1]:9090"):  # a rebound name; the LAN address
        assert open_app.request("GET", "/connections", {"Host": host})[0] == 403, host


def test_cors_preflight_and_headers(app):
    pre = {"Origin": "http://dash.example", "Access-Control-Request-Method": "DELETE",
           "Access-Control-Request-Headers": "authorization", "Access-Control-Request-Private-Network": "true"}
    status, h, _ = app.request("OPTIONS", "/connections/7", pre)
    assert status == 204
    assert h["access-control-allow-origin"] == "http://dash.example"
    assert "DELETE" in h["access-control-allow-methods"] and "Authorization" in h["access-control-allow-headers"]
    assert h["access-control-allow-private-network"] == "true"
    status, h, _ = app.request("OPTIONS", "/connections", {**pre, "Origin": "http://evil.example"})
    assert status == 403 and "access-control-allow-origin" not in h
    _, h, _ = app.request("GET", "/version", {**AUTH, "Origin": "http://dash.example"})
    assert h["access-control-allow-origin"] == "http://dash.example" and h["vary"] == "Origin"
    _, h, _ = app.request("GET", "/version", {**AUTH, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in h
    _, h, _ = app.request("GET", "/version", {"Origin": "http://dash.example"})  # a 401 is readable by the page
    assert h["access-control-allow-origin"] == "http://dash.example"
    # Browsers apply no CORS to WebSockets: a foreign page's socket is refused outright
    assert app.websocket(f"/traffic?token={SECRET}", [(b"Origin", b"http://evil.example")])[0] == 403
    sock, ws = app.websocket(f"/traffic?token={SECRET}", [(b"Origin", b"http://dash.example")])
    ws_messages(sock, ws, 1)


def test_proxies_rules_configs(app):
    proxies = app.get("/proxies", AUTH)["proxies"]
    assert proxies["proxy"]["type"] == "Socks5" and proxies["proxy"]["alive"] is True and proxies["proxy"]["health"] == "ok"
    assert proxies["proxy"]["history"][0]["time"] == rfc3339(1700000000.0)
    assert proxies["proxy"]["history"][0]["delay"] == 3  # the probe's time: dashboards read 0 as failed
    assert proxies["direct"]["type"] == "Direct" and proxies["block"]["type"] == "Reject"
    assert proxies["GLOBAL"]["type"] == "Selector" and proxies["GLOBAL"]["now"] == "direct"
    assert set(proxies["GLOBAL"]["all"]) == {"direct", "block", "proxy"}
    assert app.get("/proxies/proxy", AUTH)["name"] == "proxy"
    assert app.request("GET", "/proxies/nope", AUTH)[0] == 404
    rules = app.get("/rules", AUTH)["rules"]
    assert [(r["type"], r["payload"], r["proxy"]) for r in rules] == [
        ("DomainSuffix", "example.com", "proxy"), ("AND", "((IPCIDR,198.19.9.0/24) && (DstPort,25))", "block"),
        ("Match", "", "direct")]
    cfg = app.get("/configs", AUTH)
    assert cfg["mode"] == "rule" and cfg["log-level"] in ("debug", "info", "warning", "error", "silent")
    assert cfg["ipv6"] is True and cfg["port"] == 0


def test_patch_configs_sets_the_log_level(app):
    root = logging.getLogger()
    before = root.level
    try:
        assert app.request("PATCH", "/configs", AUTH, b'{"log-level": "error"}')[0] == 204
        deadline = time.monotonic() + 5
        while root.level != logging.ERROR and time.monotonic() < deadline:
            time.sleep(0.02)
        assert root.level == logging.ERROR
        deadline = time.monotonic() + 5
        while app.get("/configs", AUTH)["log-level"] != "error" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert app.get("/configs", AUTH)["log-level"] == "error"
        assert app.request("PATCH", "/configs", AUTH, b'{"log-level": "loud"}')[0] == 400
        assert app.request("PATCH", "/configs", AUTH, b'not json')[0] == 400
        assert app.request("PUT", "/configs", AUTH, b'{}')[0] == 405
    finally:
        root.setLevel(before)


def test_logs_stream(app):
    sock, ws = app.websocket(f"/logs?level=warning&token={SECRET}")
    logging.getLogger("ztun.test").info("not this one")
    logging.getLogger("ztun.test").warning("hello from the test")
    (msg,) = ws_messages(sock, ws, 1)
    assert msg == {"type": "warning", "payload": "[ztun.test] hello from the test"}
    logging.getLogger("ztun.test").error("over chunked HTTP")
    c = http.client.HTTPConnection(app.host, app.port, timeout=10)
    c.request("GET", "/logs", headers=AUTH)
    r = c.getresponse()
    threading.Timer(0.3, lambda: logging.getLogger("ztun.test").error("after the start")).start()
    assert json.loads(r.readline()) == {"type": "error", "payload": "[ztun.test] after the start"}
    c.close()


def test_the_page_is_served_without_the_secret(app):
    status, h, body = app.request("GET", "/ui/")
    assert status == 200 and h["content-type"].startswith("text/html") and b"<canvas" in body
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, h, body = app.request("GET", f"/ui/{name}")
        assert status == 200 and h["content-type"].startswith(kind) and body
    assert app.request("GET", "/ui")[0] == 301
    assert app.request("GET", "/ui/../clash.py")[0] == 404
    assert app.request("GET", "/ui/secret.txt")[0] == 404


def test_summary_for_the_page(app):
    app.flow.carrier.bytes_down = 777
    deadline = time.monotonic() + 5
    while app.get("/ztun/summary", AUTH)["outbounds"]["proxy"]["down"] != 777 and time.monotonic() < deadline:
        time.sleep(0.05)
    s = app.get("/ztun/summary", AUTH)
    assert s["outbounds"]["proxy"] == {"type": "Socks5", "health": "ok", "error": None, "up": 0, "down": 777}
    assert s["drops"] == {"malformed": 3}


def test_hostile_requests_get_an_error_not_a_hang(app):
    assert app.request("GET", "/version", {**AUTH, "X-Big": "a" * 9000})[0] == 431
    assert app.server.counters["bad_requests"] == 1  # every refusal is counted
    with socket.create_connection((app.host, app.port), timeout=10) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    with socket.create_connection((app.host, app.port), timeout=10) as s:
        s.sendall(b"PATCH /configs HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 413")
    assert app.server.counters["bad_requests"] == 3
    with socket.create_connection((app.host, app.port), timeout=10) as s:  # a WebSocket upgrade without its key
        s.sendall(f"GET /traffic?token={SECRET} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    idle = [socket.create_connection((app.host, app.port), timeout=10) for _ in range(5)]  # never send a request
    try:
        assert app.get("/version", AUTH)["version"]  # still answered
    finally:
        for s in idle:
            s.close()


# -- configuration ------------------------------------------------------------------------


def test_config_api_section():
    c = config.build({"api": {"listen": "127.0.0.1:9090"}})
    assert (c.api.listen, c.api.secret, c.api.allow_origins) == ("127.0.0.1:9090", None, ())
    with pytest.raises(ConfigError, match=r"api\.listen: 0\.0\.0\.0:9090 is reachable beyond this host.*--api-secret"):
        config.build({"api": {"listen": "0.0.0.0:9090"}})
    with pytest.raises(ConfigError, match="--api-secret"):
        config.build({"api": {"listen": "[fd00::1]:9090"}})
    c = config.build({"api": {"listen": "0.0.0.0:9090", "secret": SECRET, "allow_origins": ["http://a.example:8080/", "*"]}})
    assert c.api.allow_origins == ("http://a.example:8080", "*")
    text = config.format_config(c)
    assert SECRET not in text and 'secret = "********"' in text and "[api]" in text
    for bad in ({"secret": "has space"}, {"secret": ""}, {"allow_origins": ["a.example"]}, {"allow_origins": [1]},
                {"listen": "nope"}):
        with pytest.raises(ConfigError, match=r"api\."):
            config.build({"api": bad})


def test_api_flags_name_themselves():
    with pytest.raises(ConfigError, match="--api-listen"):
        config.load(None, {"api.listen": ("0.0.0.0:1", "--api-listen")})
    c = config.load(None, {"api.listen": ("0.0.0.0:1", "--api-listen"), "api.secret": ("x", "--api-secret"),
                           "api.allow_origins": (["http://d.example"], "--api-allow-origin")})
    assert c.api.allow_origins == ("http://d.example",)


def test_rule_descriptions():
    rc = config.RuleConfig(outbound="x", cidr=tuple(f"198.18.{i}.0/24" for i in range(6)), protocol=frozenset({"udp"}))
    assert describe_rule(rc) == ("AND", "((IPCIDR,198.18.0.0/24/198.18.1.0/24/198.18.2.0/24/198.18.3.0/24 +2 more) && (Network,udp))")
    assert describe_rule(config.RuleConfig(outbound="x", port=((80, 80), (8000, 8080)))) == ("DstPort", "80/8000-8080")


def test_the_flow_list_is_made_only_while_asked():
    """No per-flow dicts on the loop unless a client asked for /connections in the last FLOWS_WANTED seconds."""
    from ztun.appliance.api.view import ApiView

    fwd = Forwarder()
    f = Flow(17, ("198.18.0.2", 5353), ("198.19.0.1", 53), id=1)
    f.outbound, f.state, f.carrier = "direct", "open", Carrier()
    fwd.flows.add(f)
    view = ApiView(Snapshot(fwd), "x")
    assert view()["connections"] is None
    view.want_flows()
    (c,) = view()["connections"]
    assert c[0]["metadata"]["network"] == "udp" and c[0]["rule"] == "" and c[1:] == (0, 0)
    f.carrier.bytes_up = 9
    assert view()["connections"][0][0] is c[0] and view()["connections"][0][1] == 9  # fixed part kept, counts fresh


def test_a_stream_that_is_not_read_is_closed_not_buffered(app):
    """A /logs client that never reads is closed once MAX_BUFFERED bytes wait for it; a /traffic one
    that has not read meanwhile stays open."""
    def silent(path):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect((app.host, app.port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {SECRET}\r\n\r\n".encode())
        return s

    logs, traffic = silent("/logs?level=warning"), silent("/traffic")
    try:
        line = "x" * 4000
        log = logging.getLogger("ztun.test.flood")
        for _ in range(100):  # bounded: at most 100 x 100 lines of 4 kB
            for _ in range(100):
                log.warning(line)
            if app.server.counters["slow_streams_closed"]:
                break
            time.sleep(0.02)
        assert app.server.counters["slow_streams_closed"] == 1
        received = b""
        for _ in range(100):  # bounded: a message comes every 0.1 s
            data = traffic.recv(65536)
            assert data, "the /traffic stream was closed"
            received += data
            if received.count(b'"up"') >= 2:
                break
        assert received.startswith(b"HTTP/1.1 200") and received.count(b'"up"') >= 2
    finally:
        logs.close()
        traffic.close()


def test_a_bare_line_break_in_the_head_is_400_never_echoed():
    """A header value with a lone LF or CR (or a NUL) is refused: the Origin a "*" CORS setting
    echoes must not carry a header of the client's into the answer (response splitting)."""
    a = Appliance(secret=SECRET, allow_origins=("*",))
    try:
        for origin in (b"http://a\nSet-Cookie: x=1", b"http://a\rSet-Cookie: x=1", b"http://a\0"):
            with socket.create_connection((a.host, a.port), timeout=10) as s:
                s.sendall(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + SECRET.encode()
                          + b"\r\nOrigin: " + origin + b"\r\n\r\n")
                answer = b""
                while data := s.recv(65536):
                    answer += data
            assert answer.startswith(b"HTTP/1.1 400") and b"Set-Cookie" not in answer, answer
        assert a.server.counters["bad_requests"] == 3
        _, h, _ = a.request("GET", "/version", {**AUTH, "Origin": "http://any.example"})  # a clean one still works
        assert h["access-control-allow-origin"] == "http://any.example"
    finally:
        a.close()


def test_a_refused_websocket_upgrade_leaves_no_log_reader(app):
    """An upgrade to /logs that is not a valid handshake is 400 and stops the log buffer's reader
    it started (else every log line is copied for nobody from then on)."""
    with socket.create_connection((app.host, app.port), timeout=10) as s:
        s.sendall(f"GET /logs?token={SECRET} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    assert app.server.logs.readers == 0


def test_answered_clients_that_stay_do_not_keep_others_out(monkeypatch):
    """At max_connections, a new client pushes out one already answered that lingers (it got all of
    its answer and has not closed): clients that never close cannot fill the server."""
    from ztun.appliance.api import server

    monkeypatch.setattr(server, "LINGER", 60.0)  # they would stay a minute: the test never waits for it
    a = Appliance(secret=SECRET, max_connections=4)
    stayers = []
    try:
        for _ in range(4):
            s = socket.create_connection((a.host, a.port), timeout=10)
            stayers.append(s)
            s.sendall(b"GET /version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")  # no secret: 401, all sent at once
            assert s.recv(100).startswith(b"HTTP/1.1 401")
        assert a.get("/version", AUTH)["version"]
        assert a.server.counters["pushed_out"] >= 1 and a.server.counters["refused_busy"] == 0
    finally:
        for s in stayers:
            s.close()
        a.close()


def test_the_page_cannot_be_framed_nor_talk_elsewhere(app):
    """The page keeps the secret and has close buttons: no other site may frame it (clickjacking),
    and its script may connect to its own origin only (the page polls with fetch, no WebSocket)."""
    for name in ("", "app.js"):
        _, h, _ = app.request("GET", f"/ui/{name}")
        csp = dict(part.strip().split(" ", 1) for part in h["content-security-policy"].split(";"))
        assert csp["frame-ancestors"] == "'none'" and h["x-frame-options"] == "DENY"
        assert csp["connect-src"] == "'self'" and csp["default-src"] == "'self'"
        assert "unsafe" not in h["content-security-policy"]


def test_connection_metadata_has_the_fields_typed_dashboards_read(app):
    """mihomo's metadata (constant/metadata.go): dnsMode "fake-ip" (its DNSMode text), a numeric uid
    and a process string, which metacubexd's types declare; ztun cannot know them, so 0 and ""."""
    (c,) = app.get("/connections", AUTH)["connections"]
    m = c["metadata"]
    assert m["dnsMode"] == "fake-ip"  # the flow's destination is a fake-IP name (host is set)
    assert m["uid"] == 0 and m["process"] == "" and m["processPath"] == ""
    for key in ("inboundIP", "inboundPort", "inboundName", "inboundUser", "sniffHost", "specialProxy", "specialRules",
                "remoteDestination"):
        assert isinstance(m[key], str), key


def test_config_secret_is_ascii_and_any_origin_needs_it():
    """The secret travels in an HTTP header (latin-1 on the wire; a browser's fetch refuses anything
    beyond it) and in ?token= (UTF-8): only printable ASCII means the same both ways. allow_origins
    "*" lets every web page a browser on this host opens read the flows: it needs the secret."""
    with pytest.raises(ConfigError, match=r"api\.secret.*ASCII"):
        config.build({"api": {"secret": "pässwörd"}})
    with pytest.raises(ConfigError, match=r"api\.allow_origins: \"\*\".*--api-secret"):
        config.build({"api": {"listen": "127.0.0.1:9090", "allow_origins": ["*"]}})
    with pytest.raises(ConfigError, match="--api-secret"):
        config.load(None, {"api.listen": ("127.0.0.1:1", "--api-listen"), "api.allow_origins": (["*"], "--api-allow-origin")})
    c = config.build({"api": {"listen": "127.0.0.1:9090", "allow_origins": ["*"], "secret": SECRET}})
    assert c.api.allow_origins == ("*",)
    assert config.build({"api": {"listen": "127.0.0.1:9090", "allow_origins": ["http://d.example"]}}).api.secret is None


def test_a_failing_stream_costs_its_connection_not_the_server():
    """Whatever a handler's stream raises on its first poll (inside the server's read path) closes
    that connection and is counted; the server thread goes on answering."""
    from ztun.appliance.api.server import Answer, ApiHttpServer, Stream

    def broken():
        raise RuntimeError("a poll that fails")

    def handler(request, body):
        if request.target == "/broken":
            return Stream(broken, websocket=False)
        return Answer(200, {}, b"fine")

    server = ApiHttpServer("127.0.0.1", 0, handler)
    try:
        for _ in range(2):
            c = http.client.HTTPConnection(*server.address, timeout=10)
            c.request("GET", "/broken")
            with pytest.raises((http.client.HTTPException, ConnectionError)):
                c.getresponse().read()
            c.close()
        c = http.client.HTTPConnection(*server.address, timeout=10)
        c.request("GET", "/other")
        assert c.getresponse().read() == b"fine"
        c.close()
        assert server.counters["errors"] == 2
    finally:
        server.close()


def test_a_stream_client_that_takes_nothing_for_write_timeout_is_closed():
    """A snapshot stream holds one message at most for a client that stops reading, but that client
    is closed once nothing of it was taken for write_timeout: it does not keep its connection (one
    of max_connections) and its message for ever."""
    from ztun.appliance.api.server import ApiHttpServer, Stream

    big = ["x" * (16 << 20)]  # more than the kernel's buffers on both sides take

    def handler(request, body):
        return Stream(lambda: big, websocket=False, latest_only=True)

    server = ApiHttpServer("127.0.0.1", 0, handler, write_timeout=0.5)
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.settimeout(10)
        s.connect(server.address)
        s.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        for _ in range(200):  # bounded: 20 s at most, against a hang
            if server.counters["slow_streams_closed"]:
                break
            time.sleep(0.1)
        assert server.counters["slow_streams_closed"] == 1
    finally:
        s.close()
        server.close()


def test_a_failed_answer_does_not_log_the_secret(caplog):
    """A request that fails is logged by its path: a ?token= in its query stays out of the log (which
    /logs streams and the journal keep)."""
    from ztun.appliance.api.server import ApiHttpServer

    def handler(request, body):
        raise RuntimeError("the handler fails")

    server = ApiHttpServer("127.0.0.1", 0, handler)
    try:
        with caplog.at_level(logging.ERROR, logger="ztun.api"):
            c = http.client.HTTPConnection(*server.address, timeout=10)
            c.request("GET", f"/connections?token={SECRET}")
            assert c.getresponse().status == 500
            c.close()
        assert "/connections" in caplog.text and SECRET not in caplog.text
    finally:
        server.close()


def test_every_proxy_has_the_fields_of_a_clash_proxy(app):
    """Each entry of /proxies, GLOBAL included, has the keys metacubexd's Proxy type declares."""
    for name, p in app.get("/proxies", AUTH)["proxies"].items():
        for key, kind in (("name", str), ("type", str), ("udp", bool), ("xudp", bool), ("tfo", bool), ("alive", bool),
                          ("history", list), ("extra", dict)):
            assert isinstance(p.get(key), kind), (name, key)


def test_closes_asked_meanwhile_reach_the_loop_as_one_call(app):
    """Each close_flows call walks every open flow on the loop: DELETEs that arrive while the loop
    is busy are joined into one call (their ids together; a close-all takes them all), so a client
    sending many costs the loop one walk per iteration, not one per request."""
    parked, release = threading.Event(), threading.Event()

    def park():
        parked.set()
        release.wait(10)

    app.loop.call_soon_threadsafe(park)
    assert parked.wait(10)
    try:
        for i in range(30):
            assert app.request("DELETE", f"/connections/{i}", AUTH)[0] == 204
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while not app.fwd.closed and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # a second call, if any, would come right after the first
    assert app.fwd.closed == [(set(range(30)), True)]
    parked.clear(), release.clear()
    app.loop.call_soon_threadsafe(park)
    assert parked.wait(10)
    try:
        assert app.request("DELETE", "/connections/1", AUTH)[0] == 204
        assert app.request("DELETE", "/connections", AUTH)[0] == 204
    finally:
        release.set()
    deadline = time.monotonic() + 5
    while len(app.fwd.closed) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.fwd.closed[1:] == [(None, True)]


def test_the_servers_own_counters_are_in_the_summary(app):
    """What the API server refused or closed is counted where the operator can read it."""
    with socket.create_connection((app.host, app.port), timeout=10) as s:
        s.sendall(b"NONSENSE\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400")
    api = app.get("/ztun/summary", AUTH)["api"]
    assert api["bad_requests"] == 1 and api["requests"] >= 1
    assert set(api) == set(app.server.counters)


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(app):
    """A client may shut its sending side once the request is out (nc -N, some HTTP libraries): an
    answer that waits for the next view (the first /connections) still reaches it."""
    with socket.create_connection((app.host, app.port), timeout=10) as s:
        s.sendall(f"GET /connections HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {SECRET}\r\n\r\n".encode())
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while data := s.recv(65536):
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert json.loads(body)["connections"][0]["id"] == "7"


def test_a_probe_keeps_its_time_when_it_passes_and_none_when_it_fails():
    from ztun.appliance.health import record

    health = {"state": "unknown", "error": None, "checked": None}
    record("proxy", health, None, quiet=True, delay_ms=12.5)
    assert health["state"] == "ok" and health["delay_ms"] == 12.5
    record("proxy", health, "connect: refused", quiet=True, delay_ms=3.0)
    assert health["state"] == "failing" and health["delay_ms"] is None
