"""The control socket and `ztun-appliance status`: round trip, formats, permissions, stale and live sockets, hostile clients."""

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import socket
import stat
import tempfile
import threading
import time

import pytest

from ztun.appliance import status
from ztun.appliance.status import (
    ControlError,
    ControlServer,
    format_status,
    main_status,
    query,
)
from ztun.loop import Loop

FLOW = {"proto": "tcp", "source": "198.18.0.2:40000", "destination": "198.19.0.1:80", "domain": "example.com",
        "outbound": "proxy", "state": "relaying", "bytes_up": 123, "bytes_down": 456, "age_s": 3.21}
UDP_FLOW = {"proto": "udp", "source": "198.18.0.2:5353", "destination": "198.19.0.9:53", "domain": None,
            "outbound": "direct", "state": "active", "bytes_up": 40, "bytes_down": 0, "age_s": 0.5}

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs unix sockets (not on Windows)")


@pytest.fixture
def tmp_path():
    """A short directory: a unix socket's path is limited to 104 bytes on macOS, 108 on Linux."""
    d = tempfile.mkdtemp(prefix="zt-", dir="/tmp" if os.path.isdir("/tmp") else None)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)



def snapshot(include_flows=True):
    snap = {"version": "9.9.9", "uptime_s": 3725.0, "device": {"name": "ztun0", "mtu": 65535},
            "counters": {"packets_in": 10, "bytes_in": 1000}, "drops": {"malformed": 2, "udp_frag_dropped": 1},
            "flows_by_state": {"relaying": 1, "active": 1},
            "outbounds": {"proxy": {"tcp_ok": 5, "tcp_failed": 1}, "direct": {}}}
    if include_flows:
        snap["flows"] = [FLOW, UDP_FLOW]
    return snap


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


class Running:
    """Runs the loop in a thread (the test thread plays the client) until stopped."""

    def __init__(self, loop):
        self.loop = loop
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.done.is_set():
            self.loop.run_once(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def server(loop, tmp_path):
    srv = ControlServer(loop, str(tmp_path / "run" / "control.sock"), snapshot, timeout=1.0)
    yield srv
    srv.close()


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_round_trip_status_counters_flows(loop, server):
    with Running(loop):
        assert query(server.path, "status") == json.loads(json.dumps(snapshot()))
        counters = query(server.path, "counters")
        assert "flows" not in counters and counters["drops"] == {"malformed": 2, "udp_frag_dropped": 1}
        assert query(server.path, "flows") == {"version": "9.9.9", "flows": [FLOW, UDP_FLOW]}
        with pytest.raises(ControlError, match="unknown request 'bogus'"):
            query(server.path, "bogus")
    assert server.counters["requests"] == 3 and server.counters["bad_requests"] == 1


def test_socket_is_root_only_and_parent_created(server):
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(os.path.dirname(server.path)).st_mode) & 0o777 == 0o755 & ~_umask()


def _umask():
    old = os.umask(0)
    os.umask(old)
    return old


def test_close_removes_the_socket_file(loop, tmp_path):
    path = str(tmp_path / "c.sock")
    srv = ControlServer(loop, path, snapshot)
    assert os.path.exists(path)
    srv.close()
    srv.close()
    assert not os.path.exists(path)


def test_close_after_the_loop_is_closed(tmp_path):
    lp = Loop()
    srv = ControlServer(lp, str(tmp_path / "c.sock"), snapshot)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(srv.path)
    lp.run_once(0.5)  # accepted: a client is open
    assert srv._clients
    lp.close()
    srv.close()
    c.close()
    assert not os.path.exists(srv.path) and not srv._clients


def test_stale_socket_is_replaced(loop, tmp_path):
    path = str(tmp_path / "c.sock")
    crashed = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    crashed.bind(path)  # bound, never listening, then gone: what a killed run leaves
    crashed.close()
    assert os.path.exists(path)
    with ControlServer(loop, path, snapshot), Running(loop):
        assert query(path)["version"] == "9.9.9"


def test_live_socket_is_refused(loop, server):
    other = Loop()
    try:
        with pytest.raises(ControlError, match="another ztun-appliance is running"):
            ControlServer(other, server.path, snapshot)
    finally:
        other.close()
    with Running(loop):  # the first one is untouched
        assert query(server.path)["version"] == "9.9.9"


def test_a_file_that_is_not_a_socket_is_left_alone(loop, tmp_path):
    path = tmp_path / "c.sock"
    path.write_text("precious")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(loop, str(path), snapshot)
    assert path.read_text() == "precious"


def test_silent_client_is_timed_out_without_fd_leak(loop, server):
    before = open_fds()
    clients = []
    with Running(loop):
        for _ in range(5):
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.connect(server.path)
            clients.append(c)
        deadline = time.monotonic() + 10
        while server.counters["timeouts"] < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.counters["timeouts"] == 5
        for c in clients:
            c.settimeout(5)
            assert c.recv(10) == b""  # closed by the server
            c.close()
        assert query(server.path)["version"] == "9.9.9"  # still serving
    assert not server._clients
    assert open_fds() == before


def test_client_that_never_reads_a_big_reply_is_timed_out(loop, tmp_path):
    many = [dict(FLOW, source=f"198.18.0.2:{p}") for p in range(1024, 60000)]  # several MB of JSON

    def big(include_flows=True):
        return dict(snapshot(include_flows), flows=many)

    with ControlServer(loop, str(tmp_path / "c.sock"), big, timeout=1.0) as srv, Running(loop):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        c.connect(srv.path)
        c.sendall(b"status\n")
        deadline = time.monotonic() + 10
        while srv.counters["timeouts"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.counters["timeouts"] == 1 and not srv._clients
        c.close()
        assert len(query(srv.path)["flows"]) == len(many)  # a reading client gets all of it


def test_oversized_request_is_answered_with_an_error(loop, server):
    with Running(loop):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(5)
        c.connect(server.path)
        try:
            c.sendall(b"x" * 10000)
        except OSError:
            pass  # the server may close before taking it all
        data = b""
        while chunk := c.recv(4096):
            data += chunk
        c.close()
        assert "request longer than" in json.loads(data)["error"]
        assert query(server.path)["version"] == "9.9.9"
    assert server.counters["bad_requests"] == 1


def _held(path, n):
    """n connections to path that never send anything."""
    held = []
    for _ in range(n):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path)
        held.append(c)
    return held


def _wait(predicate, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return predicate()


def test_held_connections_cannot_stall_status(loop, tmp_path):
    """A full server drops its oldest silent client for a new one: status answers at once, not after the held ones time out."""
    with ControlServer(loop, str(tmp_path / "c.sock"), snapshot, timeout=30, read_timeout=30, max_clients=2) as srv, \
            Running(loop):
        held = _held(srv.path, 4)
        # the loop's thread counts a drop before it adds the client that made it: wait for both
        assert _wait(lambda: srv.counters["dropped_silent"] == 2 and len(srv._clients) == 2)
        assert srv.counters["refused_busy"] == 0
        started = time.monotonic()
        assert query(srv.path, "counters", timeout=5)["version"] == "9.9.9"
        assert time.monotonic() - started < 2  # the held ones have 30 s left
        assert srv.counters["dropped_silent"] == 3
        for c in held[:3]:  # the oldest three made room; the newest still waits
            c.settimeout(5)
            assert c.recv(10) == b""
        for c in held:
            c.close()


def test_a_full_server_of_clients_being_answered_refuses_a_new_one(loop, tmp_path):
    many = [dict(FLOW, source=f"198.18.0.2:{p}") for p in range(1024, 30000)]  # MB of JSON: no client takes it at once

    def big(include_flows=True):
        return dict(snapshot(include_flows), flows=many)

    with ControlServer(loop, str(tmp_path / "c.sock"), big, timeout=30, max_clients=2) as srv, Running(loop):
        asking = _held(srv.path, 2)
        for c in asking:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            c.sendall(b"status\n")
        assert _wait(lambda: srv.counters["requests"] == 2)
        late = _held(srv.path, 1)
        assert _wait(lambda: srv.counters["refused_busy"] == 1)
        assert srv.counters["dropped_silent"] == 0
        for c in asking + late:
            c.close()


def test_a_silent_client_has_the_read_timeout_an_asking_one_the_reply_timeout(loop, tmp_path):
    with ControlServer(loop, str(tmp_path / "c.sock"), snapshot, timeout=30, read_timeout=0.3) as srv, Running(loop):
        silent = _held(srv.path, 1)[0]
        silent.settimeout(5)
        started = time.monotonic()
        assert silent.recv(10) == b""  # closed by the server
        assert time.monotonic() - started < 3 and srv.counters["timeouts"] == 1
        silent.close()
        slow = _held(srv.path, 1)[0]  # asks at once, then takes its reply well after the read timeout
        slow.sendall(b"counters\n")
        time.sleep(1.0)
        slow.settimeout(5)
        data = b""
        while chunk := slow.recv(4096):
            data += chunk
        slow.close()
        assert json.loads(data)["version"] == "9.9.9" and srv.counters["timeouts"] == 1


def test_request_without_newline_is_answered_at_eof(loop, server):
    with Running(loop):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(5)
        c.connect(server.path)
        c.sendall(b"counters")
        c.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := c.recv(4096):
            data += chunk
        c.close()
        assert json.loads(data)["counters"]["packets_in"] == 10


def test_snapshot_failure_is_an_error_reply_not_a_crash(loop, tmp_path):
    def broken(include_flows=True):
        raise KeyError("oops")

    with ControlServer(loop, str(tmp_path / "c.sock"), broken) as srv, Running(loop), \
            pytest.raises(ControlError, match="snapshot failed"):
        query(srv.path)


def test_format_status_is_readable():
    text = format_status(snapshot())
    assert "ztun 9.9.9, up 01:02:05" in text
    assert "device: name=ztun0 mtu=65535" in text
    assert "  packets_in 10" in text and "  malformed        2" in text
    assert "  relaying 1" in text
    assert "  proxy: tcp_failed=1 tcp_ok=5" in text and "  direct: -" in text
    assert "tcp  198.18.0.2:40000 -> 198.19.0.1:80 [example.com] via proxy relaying up=123 down=456 age=3.2s" in text
    assert "udp  198.18.0.2:5353 -> 198.19.0.9:53 via direct active up=40 down=0 age=0.5s" in text
    assert format_status({}).startswith("ztun ?, up ?")  # a sparse snapshot still formats


def test_main_status_human_and_json(loop, server, capsys):
    with Running(loop):
        assert main_status(["--socket", server.path]) == 0
        assert "via proxy relaying" in capsys.readouterr().out
        assert main_status(["--socket", server.path, "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(snapshot()))


def test_main_status_without_appliance(tmp_path, capsys):
    assert main_status(["--socket", str(tmp_path / "missing.sock")]) == 1
    assert "no ztun-appliance is running" in capsys.readouterr().err
    path = str(tmp_path / "dead.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    assert main_status(["--socket", path]) == 1
    assert "no ztun-appliance is running" in capsys.readouterr().err


def test_main_status_permission_denied(loop, server):
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to another user")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: an ordinary user asking the root-only socket
        code = 3
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            with os.fdopen(w, "w") as err, contextlib.redirect_stderr(err):
                code = main_status(["--socket", server.path])
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        message = f.read()
    _, code = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(code) == 1
    assert "permission denied" in message


def test_default_socket_matches_the_unit_runtime_directory():
    unit = os.path.join(os.path.dirname(__file__), "..", "contrib", "ztun-appliance.service")
    with open(unit) as f:
        text = f.read()
    assert "RuntimeDirectory=ztun\n" in text and status.DEFAULT_SOCKET.startswith("/run/ztun/")


def _socket_of(*argv) -> str:
    parser = argparse.ArgumentParser()
    status.add_status_arguments(parser)
    return status.socket_path(parser.parse_args(list(argv)))


def test_status_finds_the_socket_as_the_appliance_names_it(tmp_path):
    """One name for each thing: --control-socket (--socket still works), --config's socket, else the TUN name's."""
    assert status.DEFAULT_SOCKET == "/run/ztun/ztun0.sock" == _socket_of()
    assert _socket_of("--tun-name", "zt-b0") == "/run/ztun/zt-b0.sock"
    assert _socket_of("--control-socket", "/tmp/a.sock") == "/tmp/a.sock" == _socket_of("--socket", "/tmp/a.sock")
    named = tmp_path / "named.toml"
    named.write_text('[tun]\nname = "zt-c0"\n')
    assert _socket_of("--config", str(named)) == "/run/ztun/zt-c0.sock"
    assert _socket_of("--config", str(named), "--tun-name", "zt-d0") == "/run/ztun/zt-d0.sock"
    explicit = tmp_path / "explicit.toml"
    explicit.write_text('[tun]\nname = "zt-c0"\n\n[control]\nsocket = "/tmp/e.sock"\n')
    assert _socket_of("--config", str(explicit)) == "/tmp/e.sock"
    assert _socket_of("--config", str(explicit), "--control-socket", "/tmp/f.sock") == "/tmp/f.sock"


def test_main_status_with_the_appliances_config(loop, server, tmp_path, capsys):
    conf = tmp_path / "c.toml"
    conf.write_text(f'[control]\nsocket = "{server.path}"\n')
    with Running(loop):
        assert main_status(["--config", str(conf), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "9.9.9"
    conf.write_text("[tun]\nmtu = 1\n")
    assert main_status(["--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ztun-appliance status: error: ") and "tun.mtu" in err and err.count("\n") == 1


def test_split_stats_sorts_the_stack_counters():
    stats = {"packets_read": 9, "tcp_flows": 2, "udp_sessions": 1, "dropped": 7, "write_failed": 1,
             "drop_bad_checksum": 3, "udp_dropped_fragment": 1, "udp_datagrams": 5, "icmp_dropped": 1,
             "write_failed_ENOBUFS": 1, "dropped_udp": 0, "malformed_truncated": 1, "verdict_drop": 3}
    counters, gauges, drops = status.split_stats(stats)
    assert gauges == {"tcp_flows": 2, "udp_sessions": 1}
    assert drops == {"bad_checksum": 3, "udp_fragment": 1, "icmp_dropped": 1, "write_failed_ENOBUFS": 1,
                     "udp": 0, "malformed_truncated": 1}
    assert counters == {"packets_read": 9, "dropped": 7, "write_failed": 1, "udp_datagrams": 5, "verdict_drop": 3}


def test_outbound_health_is_shown():
    now = time.time()
    snap = {"version": "x", "health": {
        "proxy": {"state": "failing", "error": "socks5 proxy 192.0.2.1:1080: connect: Connection refused",
                  "checked": now - 65},
        "other": {"state": "unknown", "error": None, "checked": None},
        "good": {"state": "ok", "error": None, "checked": now}}}
    text = status.format_status(snap)
    assert ("outbound health:\n"
            "  good  ok (checked 00:00:00 ago)\n"
            "  other unknown (not checked yet)\n"
            "  proxy failing (checked 00:01:05 ago): socks5 proxy 192.0.2.1:1080: connect: Connection refused") in text
    assert "health" in status.SNAPSHOT_KEYS


def test_format_status_says_fail_closed_and_what_bypasses():
    snap = {"routing": {"fail_closed": True, "auto_route": True, "strict_route": False,
                        "bypassing": ["198.18.3.0/24 dev eth0", "198.19.77.0/24 via 198.18.3.9 dev eth0"],
                        "excluded": ["203.0.113.5/32"]}}
    lines = format_status(snap).splitlines()
    assert lines[1:6] == ["routing: auto-route, fail-closed", "bypassing the TUN (main table): 2",
                         "  198.18.3.0/24 dev eth0", "  198.19.77.0/24 via 198.18.3.9 dev eth0", "excluded: 203.0.113.5/32"]
    off = {"routing": {"fail_closed": False, "auto_route": False, "bypassing": [], "excluded": []}}
    assert format_status(off).splitlines()[1:3] == ["routing: routes, fail-open", "drops: none"]
