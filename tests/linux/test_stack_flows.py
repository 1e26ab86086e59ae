"""TCP and UDP through the TUN: a client namespace running ztun, a server namespace behind a veth (see conftest.Lan)."""

import hashlib
import json
import os
import sys
import time

import pytest
from conftest import need
from servers import body

pytestmark = pytest.mark.linux_root

MB = 1 << 20

CONCURRENT = r"""
import concurrent.futures, hashlib, random, sys, urllib.request
host, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
want = hashlib.sha256(random.Random(size).randbytes(size)).hexdigest()
def get(i):
    with urllib.request.urlopen(f"http://{host}:8080/bytes/{size}", timeout=60) as r:
        return hashlib.sha256(r.read()).hexdigest() == want
with concurrent.futures.ThreadPoolExecutor(n) as ex:
    print(sum(ex.map(get, range(n))))
"""

HALFCLOSE = r"""
import os, socket, sys
s = socket.create_connection((sys.argv[1], 8081), timeout=30)
data = os.urandom(1 << 20)
s.sendall(data)
s.shutdown(socket.SHUT_WR)  # our side is done; the reply must still arrive whole
got = bytearray()
while chunk := s.recv(1 << 16):
    got += chunk
print(bytes(got) == data)
"""

CONNECT = r"""
import socket, sys, time
t = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30).close()
    print("connected", 0)
except OSError as e:
    print(type(e).__name__, round(time.monotonic() - t, 2))
"""

UDP_ECHO = r"""
import os, random, socket, sys, time
host, count, maxsize = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 << 20)
s.settimeout(2)
rng = random.Random(7)
sizes = [rng.choice([4, 64, 512, 1400, maxsize, rng.randrange(4, maxsize + 1)]) for _ in range(count)]
pending, ok, bad, lost, i = {}, 0, 0, 0, 0
deadline = time.monotonic() + 120
while (i < count or pending) and time.monotonic() < deadline:
    while i < count and len(pending) < 32:
        payload = i.to_bytes(4, "big") + os.urandom(sizes[i] - 4)
        pending[i] = payload
        s.sendto(payload, (host, 9007))
        i += 1
    try:
        data = s.recv(65535)
    except socket.timeout:
        lost += len(pending)
        pending.clear()
        continue
    seq = int.from_bytes(data[:4], "big")
    if pending.pop(seq, None) == data:
        ok += 1
    else:
        bad += 1
print(ok, lost, bad)
"""

FETCH = r"""
import sys, urllib.request
for _ in range(int(sys.argv[2])):
    with urllib.request.urlopen(f"http://{sys.argv[1]}:8080/bytes/100", timeout=30) as r:
        assert len(r.read()) == 100
"""


PORTABLE = ("--outbound-interface", "zt-c0")  # ztun's sockets bound to the uplink, no fwmark


def portable(lan, monkeypatch):
    """Make lan's appliances run the path of macOS and Windows: the copy relay and ztun's own sockets
    bound to the uplink (--outbound-interface) instead of marked."""
    monkeypatch.setenv("ZTUN_RELAY", "copy")
    lan.APPLIANCE = (*type(lan).APPLIANCE, *PORTABLE)


def assert_bound(app):
    """The appliance bound its sockets to the uplink, and its rule for them matches the interface, not a mark."""
    assert "own sockets bound to zt-c0" in app.log and "oif zt-c0" in app.log, app.log


@pytest.fixture(params=["engine", "copy", "loop", "portable"])
def relay_mode(request, monkeypatch, lan):
    """The relay each appliance of the test runs: the compiled engine with splice (the default), the
    engine's copy mode (ZTUN_RELAY=copy, the path of platforms without splice), the twin on the
    loop (ZTUN_RELAY=loop), or the copy mode with ztun's sockets bound to the uplink instead of
    marked (portable: the whole path macOS and Windows run)."""
    if request.param == "engine":
        monkeypatch.delenv("ZTUN_RELAY", raising=False)
    elif request.param == "portable":
        portable(lan, monkeypatch)
    else:
        monkeypatch.setenv("ZTUN_RELAY", request.param)
    return request.param


def url_host(addr):
    return f"[{addr}]" if ":" in addr else addr


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def http_each_way(lan, tmp_path, size, host):
    """Download size bytes and upload size random bytes with curl through ztun; both verified by hash."""
    out = tmp_path / "down"
    lan.client.run("curl", "-sS", "--max-time", "120", "-o", str(out), f"http://{url_host(host)}:8080/bytes/{size}", timeout=150)
    assert sha(out.read_bytes()) == sha(body(size))
    up = tmp_path / "up"
    up.write_bytes(os.urandom(size))
    r = lan.client.run("curl", "-sS", "--max-time", "120", "--data-binary", f"@{up}", f"http://{url_host(host)}:8080/upload", timeout=150)
    assert r.stdout.strip() == sha(up.read_bytes())


def test_http_50mb_each_way_and_200_concurrent(lan, tmp_path, relay_mode):
    need("curl", "curl")
    lan.server.server("http", 8080)
    before = lan.client.snapshot()
    app = lan.appliance()
    http_each_way(lan, tmp_path, 50 * MB, lan.SERVER4)
    r = lan.client.python(CONCURRENT, lan.SERVER4, "200", str(64 * 1024), timeout=180)
    assert r.stdout.strip() == "200", r.stdout + r.stderr + app.log
    assert app.stop() == 0, app.log
    if relay_mode == "portable":
        assert_bound(app)
    stats = app.stats()
    assert stats["tcp_allowed"] >= 202 and stats.get("write_failed", 0) == 0, stats
    assert lan.client.snapshot() == before  # device, addresses, routes, rules: all gone


@pytest.mark.parametrize("server", ["198.19.0.1", "fd00:19::1"], ids=["ipv4", "ipv6"])
def test_half_close_refused_and_ipv6(lan, server, relay_mode):
    lan.server.server("halfclose", 8081)
    lan.server.server("http", 8080)
    app = lan.appliance()
    r = lan.client.python(HALFCLOSE, server, timeout=60)
    assert r.stdout.strip() == "True", r.stdout + r.stderr + app.log
    r = lan.client.python(CONNECT, server, "9", timeout=60)  # nobody listens: refused, at once
    kind, secs = r.stdout.split()
    assert kind == "ConnectionRefusedError" and float(secs) < 5, r.stdout + app.log
    size = 8 * MB
    r = lan.client.python(f"import hashlib, urllib.request; print(hashlib.sha256(urllib.request.urlopen('http://{url_host(server)}:8080/bytes/{size}', timeout=60).read()).hexdigest())", timeout=90)
    assert r.stdout.strip() == sha(body(size))
    assert app.stop() == 0, app.log


def test_unreachable_destination_is_reset_within_the_connect_timeout(lan):
    app = lan.appliance("--connect-timeout", "2")
    # the server namespace drops what is not its own: the outbound connect times out
    r = lan.client.python(CONNECT, "198.19.99.99", "80", timeout=60)
    kind, secs = r.stdout.split()
    assert kind == "ConnectionRefusedError" and 1.5 < float(secs) < 10, r.stdout + app.log
    assert app.stop() == 0, app.log


@pytest.fixture(params=["compiled", "python", "portable"])
def udp_mode(request, monkeypatch, lan):
    """The UDP session table each appliance of the test runs: the compiled one (the default), its
    twin (ZTUN_UDP=python: every datagram through Python, the path of platforms without it), or
    the compiled one with ztun's sockets bound to the uplink (portable, see relay_mode)."""
    if request.param == "python":
        monkeypatch.setenv("ZTUN_UDP", request.param)
    else:
        monkeypatch.delenv("ZTUN_UDP", raising=False)
        if request.param == "portable":
            portable(lan, monkeypatch)
    return request.param


@pytest.mark.parametrize("server, maxsize", [("198.19.0.1", 9000 - 28), ("fd00:19::1", 9000 - 48)], ids=["ipv4", "ipv6"])
def test_udp_echo_10000_datagrams_and_session_expiry(lan, server, maxsize, udp_mode):
    lan.server.server("udp-echo", 9007)
    app = lan.appliance("--udp-timeout", "1")
    r = lan.client.python(UDP_ECHO, server, "10000", str(maxsize), timeout=180)
    time.sleep(3)  # > 1 s idle: the session expires
    assert app.stop() == 0, app.log
    if udp_mode == "portable":
        assert_bound(app)
    stats = app.stats()
    ok, lost, bad = map(int, r.stdout.split())
    nst = [ns.run("sh", "-c", "nstat -az | grep -E 'Udp|Reasm|Frag|Icmp(Out|In)(Dest|Time)' | grep -v ' 0 '").stdout for ns in (lan.client, lan.server)]
    assert (ok, lost, bad) == (10000, 0, 0), (r.stdout, r.stderr, stats, nst)
    assert stats["udp_datagrams"] == 10000 and stats["udp_ended_idle"] >= 1, stats
    # after each session's first TUN batch (to the handler) the session's table moved them both ways
    assert stats["udp_fast_sent"] >= 10000 - 64 * stats["udp_sessions_opened"], {k: v for k, v in stats.items() if k.startswith("udp")}
    assert stats["udp_fast_received"] == 10000, stats


def test_no_fd_leak_over_1000_connections(lan, relay_mode):
    lan.server.server("http", 8080)
    app = lan.appliance()

    def fds():
        """(non-pipe fds, pipe fds): idle splice pipes stay pooled, as many as relays ever overlapped."""
        kinds = []
        for f in os.listdir(f"/proc/{app.proc.pid}/fd"):
            try:
                kinds.append(os.readlink(f"/proc/{app.proc.pid}/fd/{f}"))
            except FileNotFoundError:
                pass
        pipes = sum(k.startswith("pipe:") for k in kinds)
        return len(kinds) - pipes, pipes

    lan.client.python(FETCH, lan.SERVER4, "20", timeout=60)
    before = fds()
    lan.client.python(FETCH, lan.SERVER4, "1000", timeout=300)
    deadline = time.monotonic() + 10
    while fds()[0] > before[0] and time.monotonic() < deadline:
        time.sleep(0.1)
    after = fds()
    assert after[0] == before[0], (before, after, os.listdir(f"/proc/{app.proc.pid}/fd"))
    # sequential fetches overlap a little at most: a pipe per connection would be 2000 fds
    assert after[1] <= before[1] + 16, (before, after)
    control = app.proc.args[app.proc.args.index("--control-socket") + 1]
    status = json.loads(lan.client.run(sys.executable, "-m", "ztun.appliance", "status", "--control-socket", control, "--json").stdout)
    assert status["gauges"]["relays_open"] == 0, status["gauges"]
    # the engine's thread took the relays' events; the twin's are the loop's (its counters stay 0)
    assert (status["counters"]["relay_events"] >= 1020) == (relay_mode != "loop"), status["counters"]
    assert app.stop() == 0, app.log


@pytest.mark.parametrize("bound", [False, True], ids=["fwmark", "bound"])
def test_strict_rp_filter_everywhere(lan, bound):
    """Replies to ztun's own sockets pass a strict reverse-path check, marked or bound to the uplink alike."""
    c = lan.client
    for key in ("all", "default", "lo", "zt-c0"):
        c.run("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1")
    lan.server.server("http", 8080)
    app = lan.appliance(*(PORTABLE if bound else ()))
    assert c.run("sysctl", "-n", "net.ipv4.conf.zt-tun0.rp_filter").stdout.strip() == "1"
    size = 4 * MB
    r = c.python(f"import hashlib, urllib.request; print(hashlib.sha256(urllib.request.urlopen('http://{lan.SERVER4}:8080/bytes/{size}', timeout=30).read()).hexdigest())", check=False, timeout=60)
    assert r.stdout.strip() == sha(body(size)), r.stdout + r.stderr + app.log
    assert app.stop() == 0, app.log


def test_offload_super_packets(lan, tmp_path):
    """--offload on at MTU 1500: TCP crosses the TUN as super-packets (rewritten with partial checksums)."""
    need("curl", "curl")
    lan.server.server("http", 8080)
    lan.server.server("udp-echo", 9007)
    app = lan.appliance("--offload", "on", "--mtu", "1500")
    assert "offload on zt-tun0: csum,tso4,tso6" in app.log, app.log
    http_each_way(lan, tmp_path, 20 * MB, lan.SERVER4)
    http_each_way(lan, tmp_path, 20 * MB, lan.SERVER6)
    stats = lan.client.link_stats("zt-tun0")
    assert stats["tx"]["bytes"] / stats["tx"]["packets"] > 4000, stats  # far above the 1500-byte MTU
    r = lan.client.python(UDP_ECHO, lan.SERVER4, "1000", "1472", timeout=60)
    assert r.stdout.split() == ["1000", "0", "0"], r.stdout + r.stderr
    assert app.stop() == 0, app.log
