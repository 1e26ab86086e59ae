"""The Prometheus endpoint: names, labels and values of a scrape, the published copy, listen parsing, shutdown."""

import gzip
import socket
import urllib.request

import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families

from ztun.appliance.metrics import MetricsServer, PublishedSnapshot, parse_listen
from ztun.errors import ConfigError, ZtunError
from ztun.loop import Loop


class Appliance:
    """A snapshot() whose live dicts the 'loop' keeps changing, as the real one does."""

    def __init__(self):
        self.counters = {"packets_in": 10, "bytes_in": 1000, "weird-key.x": 1, "not_a_number": "x"}
        self.drops = {"malformed": 2, "udp_frag_dropped": 1}
        self.calls = []

    def snapshot(self, include_flows=True):
        self.calls.append(include_flows)
        return {"version": "9.9.9", "uptime_s": 12.5, "counters": self.counters, "gauges": {"tcp_flows": 3},
                "drops": self.drops, "flows_by_state": {"relaying": 2, "connecting": 1},
                "outbounds": {"proxy": {"tcp_ok": 5, "tcp_failed": 1}, "direct": {"tcp_ok": 7}},
                "health": {"proxy": {"state": "failing", "error": "connect: Connection refused", "checked": 1700000000.5},
                           "backup": {"state": "ok", "error": None, "checked": 1700000001.0},
                           "new": {"state": "unknown", "error": None, "checked": None}}}


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


def scrape(server) -> dict:
    host, port = server.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_scrape_names_labels_values(loop):
    app = Appliance()
    with MetricsServer(loop, "127.0.0.1:0", app.snapshot) as server:
        assert server.address[0] == "127.0.0.1" and server.address[1] > 0
        m = scrape(server)
    assert m[("ztun_packets_in_total", ())] == 10
    assert m[("ztun_bytes_in_total", ())] == 1000
    assert m[("ztun_weird_key_x_total", ())] == 1
    assert not any(name.startswith("ztun_not_a_number") for name, _ in m)
    assert m[("ztun_tcp_flows", ())] == 3
    assert m[("ztun_drops_total", (("reason", "malformed"),))] == 2
    assert m[("ztun_drops_total", (("reason", "udp_frag_dropped"),))] == 1
    assert m[("ztun_flows", (("state", "relaying"),))] == 2
    assert m[("ztun_outbound_events_total", (("event", "tcp_failed"), ("outbound", "proxy")))] == 1
    assert m[("ztun_outbound_events_total", (("event", "tcp_ok"), ("outbound", "direct")))] == 7
    assert m[("ztun_outbound_up", (("outbound", "proxy"),))] == 0
    assert m[("ztun_outbound_up", (("outbound", "backup"),))] == 1
    assert ("ztun_outbound_up", (("outbound", "new"),)) not in m  # not probed yet: no value rather than a guess
    assert m[("ztun_outbound_checked_timestamp_seconds", (("outbound", "proxy"),))] == 1700000000.5
    assert m[("ztun_uptime_seconds", ())] == 12.5
    assert m[("ztun_build_info", (("version", "9.9.9"),))] == 1
    assert 0 <= m[("ztun_snapshot_age_seconds", ())] < 60
    assert ("process_open_fds", ()) in m
    assert app.calls and not any(app.calls)  # metrics never ask for the flow list


def test_scrape_serves_the_published_copy_until_the_loop_refreshes(loop):
    app = Appliance()
    with MetricsServer(loop, "127.0.0.1:0", app.snapshot, interval=0.05) as server:
        app.counters["packets_in"] = 99
        app.drops["new_reason"] = 4  # the live dict changes; the served copy does not
        assert scrape(server)[("ztun_packets_in_total", ())] == 10
        deadline = loop.time() + 5
        while loop.time() < deadline and len(app.calls) < 2:
            loop.run_once(0.1)
        m = scrape(server)
        assert m[("ztun_packets_in_total", ())] == 99
        assert m[("ztun_drops_total", (("reason", "new_reason"),))] == 4


def test_published_copy_is_detached_and_survives_a_failing_snapshot(loop):
    app = Appliance()
    pub = PublishedSnapshot(loop, app.snapshot, interval=0.01)
    try:
        _, first = pub.get()
        app.counters["packets_in"] = 1
        assert first["counters"]["packets_in"] == 10 and first["counters"] is not app.counters

        def broken(include_flows=True):
            raise RuntimeError("boom")

        pub._snapshot = broken
        pub._refresh()
        assert pub.get()[1] == first  # the previous copy is still served
    finally:
        pub.close()


def test_close_releases_the_port(loop):
    server = MetricsServer(loop, "127.0.0.1:0", Appliance().snapshot)
    port = server.address[1]
    server.close()
    server.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # free again (SO_REUSEADDR is not set here: really released)
    assert not loop._timers or all(t[2].cancelled for t in loop._timers)


def test_ipv6_listen(loop):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        server = MetricsServer(loop, "[::1]:0", Appliance().snapshot)
    except ZtunError as e:
        pytest.skip(f"no ::1 here: {e}")
    with server:
        assert server.address[0] == "::1"
        assert scrape_v6(server)[("ztun_packets_in_total", ())] == 10


def scrape_v6(server):
    with urllib.request.urlopen(f"http://[::1]:{server.address[1]}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_port_in_use_is_a_clear_error(loop):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(ZtunError, match=r"metrics.listen 127.0.0.1:\d+: cannot listen: Address already in use"):
            MetricsServer(loop, f"127.0.0.1:{s.getsockname()[1]}", Appliance().snapshot)


def test_missing_prometheus_client_is_a_clear_error(loop, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_prometheus(name, *args, **kw):
        if name.startswith("prometheus_client"):
            raise ImportError(name)
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_prometheus)
    with pytest.raises(ZtunError, match=r"prometheus_client is not installed: pip install 'ztun\[metrics\]'"):
        MetricsServer(loop, "127.0.0.1:0", Appliance().snapshot)


@pytest.mark.parametrize("text,expected", [
    ("127.0.0.1:9477", ("127.0.0.1", 9477)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
    ("[::1]:9477", ("::1", 9477)),
    ("localhost:80", ("localhost", 80)),
])
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text,message", [
    ("9477", "expected host:port"),
    (":9477", "expected host:port"),
    ("::1:9477", "in brackets"),
    ("[nope]:1", "not an IPv6 address"),
    ("127.0.0.1:65536", "port must be 0..65535"),
    ("127.0.0.1:http", "port must be 0..65535"),
])
def test_parse_listen_errors_name_the_key(text, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_listen(text)
    assert str(e.value).startswith("metrics.listen: ")



def hold(server, n: int) -> list:
    """n connections that each send half a request and then nothing."""
    held = []
    for _ in range(n):
        c = socket.create_connection(server.address[:2], timeout=10)
        c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        held.append(c)
    return held


def closed_by_server(conn, timeout: float) -> bool:
    conn.settimeout(timeout)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_held_connections_do_not_keep_a_scrape_out(loop):
    with MetricsServer(loop, "127.0.0.1:0", Appliance().snapshot) as server:
        held = hold(server, 300)
        try:
            for _ in range(3):
                assert scrape(server)[("ztun_packets_in_total", ())] == 10
            # At most MAX_CONNECTIONS are open: the server closed the oldest slow clients to make room.
            assert closed_by_server(held[0], 5.0) and closed_by_server(held[100], 5.0)
            assert not closed_by_server(held[-1], 0.2)
        finally:
            for c in held:
                c.close()


def test_a_slow_client_is_cut_off_at_its_deadline(loop):
    with MetricsServer(loop, "127.0.0.1:0", Appliance().snapshot, header_timeout=0.3) as server:
        held = hold(server, 3)
        try:
            assert all(closed_by_server(c, 5.0) for c in held)
            assert scrape(server)[("ztun_packets_in_total", ())] == 10
        finally:
            for c in held:
                c.close()


def test_bad_and_odd_requests_get_an_answer(loop):
    with MetricsServer(loop, "127.0.0.1:0", Appliance().snapshot) as server:
        def ask(raw: bytes) -> bytes:
            with socket.create_connection(server.address[:2], timeout=5) as c:
                c.sendall(raw)
                out = b""
                while chunk := c.recv(65536):
                    out += chunk
                return out

        assert ask(b"nonsense\r\n\r\n").startswith(b"HTTP/1.1 400 ")
        assert ask(b"POST /metrics HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 405 ")
        assert ask(b"GET /x HTTP/1.1\r\n" + b"X: y\r\n" * 2000).startswith(b"HTTP/1.1 431 ")
        head = ask(b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and head.endswith(b"\r\n\r\n")
        gz = ask(b"GET /metrics HTTP/1.1\r\nAccept-Encoding: gzip\r\n\r\n")
        assert b"Content-Encoding: gzip" in gz and b"ztun_packets_in_total 10.0" in gzip.decompress(gz.split(b"\r\n\r\n", 1)[1])
        filtered = ask(b"GET /metrics?name[]=ztun_packets_in_total HTTP/1.1\r\n\r\n").split(b"\r\n\r\n", 1)[1]
        assert b"ztun_packets_in_total 10.0" in filtered and b"ztun_bytes_in" not in filtered
