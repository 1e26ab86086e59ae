"""The appliance as deployed: a config file, SOCKS5 proxies, rules, fake-IP DNS, status, reload and shutdown.

Topology: Lan's client (ztun) and server namespaces, but the client has no route to the
servers (198.19.0.0/16, fd00:19::/64) except through a proxy at 198.18.10.2 in the server
namespace: a flow that does not go through the proxy cannot reach them. For the "direct"
rules, 198.19.1.0/24 alone is routed over the veth.
"""

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Lan, namespaces, need, netns_hosts
from servers import body
from test_socks5_servers import DANTED_CONF, PROXY, wait_port

MB = 1 << 20
BASE = """\
[tun]
name = "zt-tun0"
inet4 = "198.18.0.1/30"
inet6 = "fd00:18::1/126"
routes = ["198.19.0.0/16", "fd00:19::/64"]
{tun_extra}
[flows]
connect_timeout = 3

[control]
socket = "{control}"
"""

UDP_ECHO = r"""
import os, socket, sys
host, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
ok = lost = 0
for i in range(n):
    if lost > 20:
        break
    data = os.urandom(1 + (i * 37) % 1400)
    s.sendto(data, (host, 9007))
    try:
        while True:
            got = s.recv(65535)
            if got == data:
                ok += 1
                break
    except socket.timeout:
        lost += 1
print(ok, lost)
"""

CONNECT = r"""
import socket, sys, time
t = time.monotonic()
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30).close()
    print("connected", round(time.monotonic() - t, 2))
except OSError as e:
    print(type(e).__name__, round(time.monotonic() - t, 2))
"""


UDP_BLOCKED = r"""
import errno, socket
# A session's first datagram to a blocked destination, then one within a session opened elsewhere:
# both answered with an ICMP unreachable (administratively prohibited), seen by a connected socket.
for first in (None, ("198.19.1.1", 9)):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    if first:
        s.sendto(b"opens the session", first)
    s.connect(("198.19.2.1", 9))
    s.send(b"blocked")
    try:
        s.recv(100)
        print("answered")
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print(errno.errorcode[e.errno])
    s.close()
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class SocksLan(Lan):
    def __init__(self, client, server, tmp: Path):
        super().__init__(client, server)
        client.ip("route", "del", "198.19.0.0/16")
        client.ip("-6", "route", "del", "fd00:19::/64")
        client.ip("route", "add", "198.19.1.0/24", "via", "198.18.10.2")  # the "direct" servers
        server.ip("addr", "add", "198.19.1.1/32", "dev", "lo")
        server.ip("addr", "add", "198.19.2.1/32", "dev", "lo")
        self.tmp = tmp
        self.control = tmp / "ztun.sock"
        self.tun_extra = ""  # more [tun] keys (the portable mode's outbound_interface)

    def config(self, text: str, name="ztun.toml") -> Path:
        path = self.tmp / name
        path.write_text(BASE.format(control=self.control, tun_extra=self.tun_extra) + text)
        return path

    def start(self, text: str, *extra):
        return self.client.appliance("--config", str(self.config(text)), *extra).wait_ready()

    def microsocks(self, port=1080, user=None, password=None):
        need("microsocks", "microsocks")
        auth = ["-u", user, "-P", password] if user else []
        p = self.server.spawn("microsocks", "-i", PROXY, "-p", str(port), *auth)
        wait_port(self.server, PROXY, port)
        return p

    def danted(self, port=1081):
        need("danted", "dante-server")
        conf = self.tmp / "danted.conf"
        conf.write_text(DANTED_CONF.format(proxy=PROXY, port=port))
        p = self.server.spawn("danted", "-f", str(conf), "-p", str(self.tmp / "danted.pid"))
        wait_port(self.server, PROXY, port)
        return p

    def fetch(self, url: str, out: Path, check=True):
        return self.client.run("curl", "-sS", "--max-time", "60", "-o", str(out), url, check=check, timeout=90)


@pytest.fixture
def slan(tmp_path):
    need("curl", "curl")
    with namespaces(tmp_path, "cs") as made:
        lan = SocksLan(*made, tmp_path)
        lan.server.server("http", 8080)
        yield lan


@pytest.fixture(params=["fwmark", "portable"])
def egress_mode(request, slan, monkeypatch):
    """How the appliance's own sockets (to the proxy, direct, DNS upstream) stay out of the TUN: the
    fwmark (Linux's default), or portable: bound to the uplink (tun.outbound_interface) with the
    copy relay, the path macOS and Windows run."""
    if request.param == "portable":
        monkeypatch.setenv("ZTUN_RELAY", "copy")
        slan.tun_extra = 'outbound_interface = "zt-c0"\n'
    return request.param


@pytest.fixture(params=["engine", "twin"])
def handshake(request, monkeypatch):
    """Who negotiates with the proxy: the compiled engine on its thread (Linux's default), or the
    twin on the loop (ZTUN_HANDSHAKE=python, the path of macOS and Windows)."""
    if request.param == "twin":
        monkeypatch.setenv("ZTUN_HANDSHAKE", "python")
    else:
        monkeypatch.delenv("ZTUN_HANDSHAKE", raising=False)
    return request.param


def check_egress(app, mode):
    if mode == "portable":
        assert "own sockets bound to zt-c0" in app.log and "oif zt-c0" in app.log, app.log
    else:
        assert "fwmark 0x2022" in app.log and "own sockets bound" not in app.log, app.log


PROXIED = """
[[outbounds]]
name = "proxy"
type = "socks5"
url = "{url}"

[route]
default = "proxy"
"""


@pytest.mark.parametrize("auth", [False, True], ids=["noauth", "userpass"])
def test_tcp_through_microsocks_20mb(slan, auth, egress_mode):
    user, password = ("ztun", "s3cret pass") if auth else (None, None)
    slan.microsocks(user=user, password=password)
    url = f"socks5://ztun:s3cret%20pass@{PROXY}:1080" if auth else f"socks5://{PROXY}:1080"
    before = slan.client.snapshot()
    app = slan.start(PROXIED.format(url=url))
    out = slan.tmp / "down"
    slan.fetch(f"http://{Lan.SERVER4}:8080/bytes/{20 * MB}", out)
    assert sha(out.read_bytes()) == sha(body(20 * MB))
    assert app.stop() == 0, app.log
    check_egress(app, egress_mode)
    assert " via proxy up " in app.log, app.log  # the per-connection line names the outbound
    assert slan.client.snapshot() == before


def test_wrong_password_is_refused_with_a_clear_log_line(slan, handshake):
    slan.microsocks(user="ztun", password="right")
    app = slan.start(PROXIED.format(url=f"socks5://ztun:wrong@{PROXY}:1080"))
    r = slan.client.python(CONNECT, Lan.SERVER4, "8080")
    kind, secs = r.stdout.split()
    assert kind == "ConnectionRefusedError" and float(secs) < 3, r.stdout + app.log
    assert app.stop() == 0
    assert "authentication" in app.log.lower(), app.log


def test_proxy_down_fails_fast_then_recovers(slan):
    app = slan.start(PROXIED.format(url=f"socks5://{PROXY}:1080"))
    r = slan.client.python(CONNECT, Lan.SERVER4, "8080")
    kind, secs = r.stdout.split()
    assert kind == "ConnectionRefusedError" and float(secs) < 2, r.stdout + app.log
    slan.microsocks()
    r = slan.client.python(CONNECT, Lan.SERVER4, "8080")
    assert r.stdout.split()[0] == "connected", r.stdout + app.log
    assert app.stop() == 0, app.log


def test_udp_through_danted(slan, egress_mode):
    slan.danted()
    slan.server.server("udp-echo", 9007)
    app = slan.start(PROXIED.format(url=f"socks5://{PROXY}:1081"))
    r = slan.client.python(UDP_ECHO, Lan.SERVER4, "1000", timeout=120)
    assert r.stdout.split() == ["1000", "0"], r.stdout + r.stderr + app.log
    assert app.stop() == 0, app.log
    check_egress(app, egress_mode)


RULES = PROXIED + """
[[route.rules]]
cidr = ["198.19.1.0/24"]
outbound = "direct"

[[route.rules]]
cidr = ["198.19.2.0/24"]
outbound = "block"
"""


def test_rules_direct_proxied_blocked(slan, egress_mode):
    slan.microsocks()
    app = slan.start(RULES.format(url=f"socks5://{PROXY}:1080"))
    for host, via in (("198.19.1.1", "direct"), (Lan.SERVER4, "proxy")):
        out = slan.tmp / f"from-{host}"
        slan.fetch(f"http://{host}:8080/bytes/{MB}", out)
        assert sha(out.read_bytes()) == sha(body(MB))
    r = slan.client.python(CONNECT, "198.19.2.1", "8080")
    kind, secs = r.stdout.split()
    assert kind == "ConnectionRefusedError" and float(secs) < 1, r.stdout + app.log
    r = slan.client.python(UDP_BLOCKED)
    assert r.stdout.split() == ["EHOSTUNREACH", "EHOSTUNREACH"], r.stdout + app.log
    assert app.stop() == 0, app.log
    check_egress(app, egress_mode)
    assert "198.19.1.1:8080 via direct up" in app.log and "198.19.0.1:8080 via proxy up" in app.log, app.log
    assert "198.19.2.1:8080 via block: blocked" in app.log, app.log


FAKE_IP = PROXIED + """
[dns]
mode = "fake-ip"
fake_ip4 = "198.18.128.0/20"
fake_ip6 = "fd00:f::/64"

[[route.rules]]
domain_suffix = ["blocked.example"]
outbound = "block"
"""


def test_fake_ip_dns_connects_by_name_through_the_proxy(slan, egress_mode):
    need("dig", "dnsutils")
    # The SOCKS server resolves the names itself, from its namespace's own hosts file.
    with netns_hosts(slan.server, f"127.0.0.1 localhost\n{Lan.SERVER4} web.example\n"):
        slan.microsocks()
        app = slan.start(FAKE_IP.format(url=f"socks5://{PROXY}:1080"))
        # Any address on port 53 routed into the TUN is answered by ztun.
        dig = slan.client.run("dig", "+short", "+time=3", "+tries=1", "@198.19.0.53", "web.example", "A").stdout.split()
        assert len(dig) == 1 and dig[0].startswith("198.18.12"), dig
        fake = dig[0]
        dig6 = slan.client.run("dig", "+short", "+time=3", "+tries=1", "@198.19.0.53", "web.example", "AAAA").stdout.split()
        assert len(dig6) == 1 and dig6[0].startswith("fd00:f:"), dig6
        again = slan.client.run("dig", "+short", "+tcp", "+time=3", "+tries=1", "@198.19.0.53", "web.example", "A").stdout.split()
        assert again == [fake]  # the same name keeps its address, over TCP DNS too
        out = slan.tmp / "by-name"
        slan.fetch(f"http://{fake}:8080/bytes/{MB}", out)
        assert sha(out.read_bytes()) == sha(body(MB))
        blocked = slan.client.run("dig", "+short", "+time=3", "+tries=1", "@198.19.0.53", "ads.blocked.example", "A").stdout.split()
        r = slan.client.python(CONNECT, blocked[0], "80")
        assert r.stdout.split()[0] == "ConnectionRefusedError", r.stdout + app.log
        assert app.stop() == 0, app.log
        check_egress(app, egress_mode)
        assert f"{fake}:8080 [web.example] via proxy up" in app.log, app.log


HOSTILE = PROXIED + "".join(f"""
[[outbounds]]
name = "{mode}"
type = "socks5"
url = "socks5://{PROXY}:{port}"

[[route.rules]]
port = [{port}]
outbound = "{mode}"
""" for port, mode in ((1091, "bad-version"), (1092, "truncated"), (1093, "huge-address"), (1094, "never"), (1095, "drip")))


def test_hostile_proxies_cannot_hang_or_crash_the_appliance(slan, handshake):
    slan.microsocks()
    for port, mode in ((1091, "bad-version"), (1092, "truncated"), (1093, "huge-address"), (1094, "never"), (1095, "drip")):
        slan.server.server("hostile-socks", port, mode)
    app = slan.start(HOSTILE.replace("{url}", f"socks5://{PROXY}:1080"))
    # All at once, with a good download running beside them.
    code = r"""
import concurrent.futures, socket, sys, time, urllib.request, hashlib
def connect(port):
    t = time.monotonic()
    try:
        socket.create_connection((sys.argv[1], port), timeout=30).close()
        return port, "connected", time.monotonic() - t
    except OSError as e:
        return port, type(e).__name__, time.monotonic() - t
def fetch():
    return hashlib.sha256(urllib.request.urlopen(f"http://{sys.argv[1]}:8080/bytes/{sys.argv[2]}", timeout=30).read()).hexdigest()
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    results = list(ex.map(connect, range(1091, 1096)))
    good = ex.submit(fetch)
    for port, kind, secs in results:
        print(port, kind, round(secs, 1))
    print("fetch", good.result())
"""
    r = slan.client.python(code, Lan.SERVER4, str(4 * MB), timeout=120)
    lines = r.stdout.splitlines()
    assert lines[-1] == f"fetch {sha(body(4 * MB))}", r.stdout + r.stderr + app.log
    for line in lines[:-1]:
        port, kind, secs = line.split()
        assert kind == "ConnectionRefusedError" and float(secs) < 8, r.stdout + app.log
    assert app.proc.poll() is None
    assert app.stop() == 0, app.log
    assert ("handshake python" in app.log) == (handshake == "twin"), app.log
    for what in ("via bad-version: socks5 proxy 198.18.10.2:1091: method selection has version 4",
                 "via truncated: socks5 proxy 198.18.10.2:1092: closed the connection",
                 "via huge-address: socks5 proxy 198.18.10.2:1093: no complete answer within 3s",
                 "via never: socks5 proxy 198.18.10.2:1094: no complete answer",
                 "via drip: socks5 proxy 198.18.10.2:1095: no complete answer"):
        assert what in app.log, (what, app.log)


def test_status_reload_and_clean_shutdown(slan):
    slan.microsocks()
    blocked = RULES.replace('cidr = ["198.19.2.0/24"]', 'cidr = ["198.19.0.0/24"]')
    path = slan.config(blocked.format(url=f"socks5://{PROXY}:1080"))
    before = slan.client.snapshot()
    app = slan.client.appliance("--config", str(path)).wait_ready()
    r = slan.client.python(CONNECT, Lan.SERVER4, "8080")
    assert r.stdout.split()[0] == "ConnectionRefusedError", r.stdout + app.log
    # A slow download that must survive the reload.
    slow = subprocess.Popen(["ip", "netns", "exec", slan.client.name, "curl", "-sS", "--limit-rate", "4M", "-o",
                             str(slan.tmp / "slow"), f"http://198.19.1.1:8080/bytes/{32 * MB}"])
    try:
        time.sleep(1)
        status = json.loads(slan.client.run(sys.executable, "-m", "ztun.appliance", "status", "--socket", str(slan.control), "--json").stdout)
        assert any(f["destination"] == "198.19.1.1:8080" and f["outbound"] == "direct" for f in status["flows"]), status
        assert status["counters"]["bytes_down"] > 0 and status["flows_by_state"].get("relaying", 0) >= 1, status
        slan.config(RULES.format(url=f"socks5://{PROXY}:1080"))  # 198.19.0.0/24 no longer blocked
        app.send(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "reloaded" not in app.log and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "reloaded" in app.log, app.log
        r = slan.client.python(CONNECT, Lan.SERVER4, "8080")
        assert r.stdout.split()[0] == "connected", r.stdout + app.log
        assert slow.wait(60) == 0
    finally:
        if slow.poll() is None:
            slow.kill()
    assert sha((slan.tmp / "slow").read_bytes()) == sha(body(32 * MB))
    human = slan.client.run(sys.executable, "-m", "ztun.appliance", "status", "--socket", str(slan.control)).stdout
    assert "proxy" in human, human
    t = time.monotonic()
    assert app.stop() == 0, app.log
    assert time.monotonic() - t < 5
    assert slan.client.snapshot() == before
    assert not slan.control.exists()


DNS_DIRECT = PROXIED + """
[dns]
mode = "{mode}"
fake_ip4 = "198.18.128.0/20"
fake_ip6 = "fd00:f::/64"
upstream = "198.19.1.1:53"
outbound = "direct"

[[route.rules]]
domain = ["direct.example"]
outbound = "direct"
"""


def dig(lan, *args) -> list:
    return lan.client.run("dig", "+short", "+time=3", "+tries=1", "@198.19.0.53", *args).stdout.split()


def test_fake_ip_routed_direct_is_resolved_upstream_and_other_types_are_forwarded(slan, egress_mode):
    need("dig", "dnsutils")
    slan.server.server("dns", 53, "198.19.1.1")
    slan.microsocks()
    app = slan.start(DNS_DIRECT.format(url=f"socks5://{PROXY}:1080", mode="fake-ip"))
    fake = dig(slan, "direct.example", "A")
    assert len(fake) == 1 and fake[0].startswith("198.18.12"), fake
    assert dig(slan, "anything.example", "TXT") == ['"ztun-test"']  # not A/AAAA: asked upstream
    out = slan.tmp / "direct"
    slan.fetch(f"http://{fake[0]}:8080/bytes/{MB}", out)  # direct: ztun looks the name up upstream
    assert sha(out.read_bytes()) == sha(body(MB))
    assert app.stop() == 0, app.log
    check_egress(app, egress_mode)
    assert f"{fake[0]}:8080 [direct.example] via direct up" in app.log, app.log


def test_dns_forward_mode(slan, egress_mode):
    """Every query goes to the upstream through the direct outbound: its socket keeps out of the TUN (marked
    or bound), though the upstream's address is routed into it."""
    need("dig", "dnsutils")
    slan.server.server("dns", 53, "198.19.1.1")
    app = slan.start(DNS_DIRECT.format(url=f"socks5://{PROXY}:1080", mode="forward"))
    assert dig(slan, "web.example", "A") == [Lan.SERVER4]  # the upstream's real answer
    assert dig(slan, "+tcp", "direct.example", "A") == ["198.19.1.1"]
    assert app.stop() == 0, app.log
    check_egress(app, egress_mode)


def test_systemd_notify_metrics_and_json_logs(slan, monkeypatch):
    slan.microsocks()
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = slan.tmp / "notify.sock"
    notify.bind(str(path))
    notify.settimeout(20)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    text = PROXIED.format(url=f"socks5://{PROXY}:1080") + '\n[log]\nformat = "json"\n\n[metrics]\nlisten = "127.0.0.1:9477"\n'
    app = slan.client.appliance("--config", str(slan.config(text)))
    try:
        assert b"READY=1" in notify.recv(4096).split(b"\n"), app.log
        slan.fetch(f"http://{Lan.SERVER4}:8080/bytes/{MB}", slan.tmp / "m")
        scrape = slan.client.python("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9477/metrics', timeout=10).read().decode())").stdout
        assert "ztun_uptime_seconds" in scrape and 'ztun_outbound_events_total{event="tcp_ok",outbound="proxy"}' in scrape, scrape
        assert app.stop() == 0, app.log
        assert b"STOPPING=1" in notify.recv(4096).split(b"\n")
    finally:
        notify.close()
    records = [json.loads(line) for line in app.log.splitlines() if line.strip()]
    assert any(r["msg"].startswith("ready: ") for r in records), app.log
    flows = [r["flow"] for r in records if "flow" in r]
    assert any(f["outbound"] == "proxy" and f["bytes_down"] >= MB and f["reason"] for f in flows), flows


TWO_PROXIES = PROXIED + """
[[outbounds]]
name = "dead"
type = "socks5"
url = "socks5://{proxy}:1089"

[health]
interval = 1
"""


def status_of(slan, *extra) -> str:
    return slan.client.run(sys.executable, "-m", "ztun.appliance", "status", "--control-socket", str(slan.control),
                           *extra).stdout


def test_outbound_health_wrong_password_and_dead_proxy(slan):
    """#18: a broken proxy is not silent: a WARNING each at start-up (once, not every interval), status shows
    each outbound's state, the wrong password fixed is one INFO line, and --check-outbounds makes it fatal."""
    slan.microsocks(user="ztun", password="right")
    path = slan.config(TWO_PROXIES.format(url=f"socks5://ztun:wrong@{PROXY}:1080", proxy=PROXY))
    before = slan.client.snapshot()
    app = slan.client.appliance("--config", str(path)).wait_ready()
    deadline = time.monotonic() + 10
    while app.log.count("health check failed") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.5)  # two more intervals: still one line each
    log = app.log
    assert log.count(f"WARNING ztun.health: outbound proxy: health check failed: socks5 proxy {PROXY}:1080: authentication failed") == 1, log
    assert log.count(f"WARNING ztun.health: outbound dead: health check failed: socks5 proxy {PROXY}:1089: connect: Connection refused") == 1, log
    health = json.loads(status_of(slan, "--json"))["health"]
    assert health["proxy"]["state"] == "failing" and "authentication failed" in health["proxy"]["error"], health
    assert health["dead"]["state"] == "failing" and "Connection refused" in health["dead"]["error"], health
    assert time.time() - health["dead"]["checked"] < 5, health
    text = status_of(slan)
    assert "outbound health:" in text and "  proxy failing (checked " in text and "Connection refused" in text, text
    # The password fixed and reloaded: probed at once, one INFO line.
    slan.config(TWO_PROXIES.format(url=f"socks5://ztun:right@{PROXY}:1080", proxy=PROXY))
    app.send(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "outbound proxy: health check ok again" not in app.log and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "INFO ztun.health: outbound proxy: health check ok again" in app.log, app.log
    assert json.loads(status_of(slan, "--json"))["health"]["proxy"]["state"] == "ok"
    assert app.stop() == 0, app.log
    assert slan.client.snapshot() == before

    # --check-outbounds: a failed probe at start-up exits 1 with one error line, before ready, touching nothing.
    for url in (f"socks5://ztun:wrong@{PROXY}:1080", f"socks5://{PROXY}:1089"):
        app = slan.client.appliance("--config", str(slan.config(PROXIED.format(url=url))), "--check-outbounds")
        assert app.wait() == 1, app.log
        errors = [line for line in app.log.splitlines() if "error" in line.lower() or "WARNING" in line]
        assert len(errors) == 1 and errors[0].startswith("ztun-appliance: error: outbound proxy failed its health check: "), app.log
        assert " ready: " not in app.log and not slan.control.exists(), app.log
        assert slan.client.snapshot() == before
    # ... and with a good proxy it starts.
    app = slan.client.appliance("--config", str(slan.config(PROXIED.format(url=f"socks5://ztun:right@{PROXY}:1080"))),
                                "--check-outbounds").wait_ready()
    assert app.stop() == 0, app.log
