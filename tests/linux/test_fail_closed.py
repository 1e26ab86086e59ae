"""Fail closed: after SIGKILL what ztun routed into the TUN is refused (unreachable) for the gateway's own traffic and
its LAN host's, and nothing of it leaves by the uplink; the next run replaces it, cleanup and SIGTERM remove it.
strict_route sends main's routes via a gateway through ztun; without it the log names them as bypassing.
No DNS leaves around ztun under auto-route with fake-ip or forward DNS.

Topology: conftest.GatewayLan (host -> gateway with ztun -> server); the uplink is the gateway's zt-c0, watched by
capture.py (an AF_PACKET counter: no tcpdump needed).
"""

import contextlib
import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import HERE, Lan, namespaces, need, netns_etc
from test_socks5_servers import DANTED_CONF, PROXY, wait_port

pytestmark = pytest.mark.linux_root

ROUTED = ("198.19.0.0/16", "fd00:19::/64")
MODES = {
    # Lan.APPLIANCE routes ROUTED into the TUN.
    "routes": (),
    # auto-route, strict: main's 198.19.0.0/16 via the server is a route via a gateway, so it goes into the TUN too.
    "auto-strict": ("--auto-route", "--strict-route"),
}

# Connect to each (host, port) with a 5 s timeout; print, per target, the errno name (or "connected"/"timeout").
CONNECT = r"""
import errno, socket, sys, time
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    t = time.monotonic()
    try:
        s.connect((host.strip("[]"), int(port)))
        out = "connected"
    except socket.timeout:
        out = "timeout"
    except OSError as e:
        out = errno.errorcode.get(e.errno, str(e.errno))
    s.close()
    print(out, round(time.monotonic() - t, 3))
"""

TARGETS = (f"{Lan.SERVER4}:8080", f"[{Lan.SERVER6}]:8080")
UNREACHABLE = {"EHOSTUNREACH", "ENETUNREACH"}


def connect(ns, *targets) -> list:
    """[(outcome, seconds)] of a connect to each target from ns."""
    out = ns.python(CONNECT, *targets, timeout=60).stdout.split()
    return [(out[i], float(out[i + 1])) for i in range(0, len(out), 2)]


@contextlib.contextmanager
def capture(ns, dev, *nets, seconds=120):
    """Count packets on dev while the block runs (see capture.py); yields a dict filled in when the block ends."""
    result = {}
    p = ns.spawn(sys.executable, str(HERE / "capture.py"), dev, str(seconds), *nets, ready="capturing")
    try:
        yield result
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
    log = (ns.tmp / f"{ns.name}-proc-{ns.procs.index(p)}.log").read_text()
    result.update(json.loads(log.strip().splitlines()[-1]))


def ztun_state(ns) -> list:
    """Every rule and route of ns carrying ztun's protocol number."""
    rules = [line for fam in ("-4", "-6") for line in ns.ip(fam, "rule").splitlines() if "proto 122" in line]
    routes = [line for fam in ("-4", "-6") for line in ns.ip(fam, "route", "show", "table", "all", "proto", "122").splitlines()]
    return rules + routes


def mac(ns, dev) -> str:
    return json.loads(ns.ip("-j", "link", "show", "dev", dev))[0]["address"]


def pin_neighbours(lan) -> None:
    """Permanent IPv6 neighbours on the gateway's links: a neighbour entry that went FAILED while the gateway answered
    the host with ICMPv6 unreachables (seen here: re-resolved only ~4 s after ztun was back) cannot slow the restart."""
    for a, a_dev, a_ip, b, b_dev, b_ip in ((lan.client, "zt-g1", "fd00:20::1", lan.host, "zt-h0", "fd00:20::2"),
                                           (lan.client, "zt-c0", "fd00:10::1", lan.server, "zt-s0", "fd00:10::2")):
        a.ip("-6", "neigh", "replace", b_ip, "lladdr", mac(b, b_dev), "dev", a_dev, "nud", "permanent")
        b.ip("-6", "neigh", "replace", a_ip, "lladdr", mac(a, a_dev), "dev", b_dev, "nud", "permanent")


def download_in_flight(ns, tmp_path):
    """A slow curl download from ns through ztun, started and seen moving; the caller kills ztun under it."""
    out = tmp_path / f"inflight-{ns.name}"
    p = ns.spawn("curl", "-sS", "--limit-rate", "2M", "--max-time", "15", "-o", str(out),
                 f"http://{Lan.SERVER4}:8080/bytes/{64 << 20}")
    deadline = time.monotonic() + 20
    while not (out.exists() and out.stat().st_size > 0):
        assert time.monotonic() < deadline and p.poll() is None, "the download did not start"
        time.sleep(0.05)
    return p


@pytest.mark.parametrize("mode", MODES)
def test_sigkill_fails_closed_then_run_replaces_and_cleanup_removes(gateway_lan, tmp_path, mode):
    need("curl", "curl")
    lan, gw, host = gateway_lan, gateway_lan.client, gateway_lan.host
    lan.server.server("http", 8080)
    lan.server.ip("addr", "add", "198.19.5.1/32", "dev", "lo")  # excluded: main's route to 198.19.0.0/16 reaches it
    pin_neighbours(lan)
    before = gw.snapshot()
    extra = ("--enable-forwarding", "--exclude-route", "198.19.5.0/24", *MODES[mode])
    app = lan.appliance(*extra)
    assert "fail-closed: what is routed into zt-tun0 stays unreachable" in app.log and ", fail-closed" in app.log, app.log
    assert connect(gw, *TARGETS)[0][0] == "connected" and connect(host, *TARGETS)[0][0] == "connected"

    curl = download_in_flight(gw, tmp_path)
    app.send(signal.SIGKILL)
    assert app.wait() == -signal.SIGKILL
    with capture(gw, "zt-c0", f"{Lan.SERVER4}/32", f"{Lan.SERVER6}/128") as seen:
        # Each connect fails with an unreachable, not a timeout: the gateway's at once, the host's by the gateway's
        # ICMP unreachable (IPv6's at the SYN's first retransmission, ~1 s, seen here). One each from the host: an
        # ICMPv6 error that arrives while connect() still holds the socket is, likely, only a soft error (the 1 s).
        for ns, targets in ((gw, TARGETS * 2), (host, TARGETS)):
            outcomes = connect(ns, *targets)
            assert {o for o, _ in outcomes} <= UNREACHABLE, (ns.name, outcomes)
        assert connect(gw, "198.19.5.1:8080")[0][0] == "connected"  # the excluded prefix still bypasses
        if mode == "auto-strict":  # the LAN stays reachable: a directly connected subnet, not routed into ztun
            assert connect(gw, "198.18.10.2:8080")[0][0] == "connected"
        curl.wait(60)
    assert seen["to_prefixes"] == 0, seen
    assert curl.returncode != 0  # the download in flight failed; it did not finish around ztun

    again = lan.appliance(*extra)
    assert "leftover rules and routes of an earlier run" in again.log, again.log
    for ns in (gw, host):
        assert [o for o, _ in connect(ns, *TARGETS)] == ["connected", "connected"], ns.name
    r = host.run("curl", "-sS", "--max-time", "30", "-o", "/dev/null", "-w", "%{size_download}",
                 f"http://{Lan.SERVER4}:8080/bytes/{1 << 20}")
    assert r.stdout == str(1 << 20)
    again.send(signal.SIGKILL)
    again.wait()
    assert ztun_state(gw), "a killed run leaves its rules and unreachable routes"
    r = gw.run(sys.executable, "-m", "ztun.appliance", "cleanup", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ztun_state(gw) == []
    assert [o for o, _ in connect(gw, *TARGETS)] == ["connected", "connected"]  # main's route again, as before ztun

    third = lan.appliance(*extra)
    assert third.stop() == 0, third.log
    gw.run("sysctl", "-qw", "net.ipv4.ip_forward=0")  # --enable-forwarding after a crash left it on
    gw.run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=0")
    assert gw.snapshot() == before


def test_fail_closed_off_is_the_old_behaviour(gateway_lan):
    """tun.fail_closed = false: after SIGKILL the routed traffic takes main's routes out of the uplink (a leak)."""
    lan, gw, host = gateway_lan, gateway_lan.client, gateway_lan.host
    lan.server.server("http", 8080)
    pin_neighbours(lan)
    app = lan.appliance("--enable-forwarding", "--no-fail-closed")
    assert "fail-closed is off" in app.log and ", fail-open" in app.log, app.log
    assert not [line for line in ztun_state(gw) if "unreachable" in line]
    app.send(signal.SIGKILL)
    app.wait()
    with capture(gw, "zt-c0", *ROUTED) as seen:
        assert [o for o, _ in connect(gw, *TARGETS)] == ["connected", "connected"]
        # The host's SYNs leave by the uplink too (the server has no route back to the LAN, so they time out).
        assert [o for o, _ in connect(host, *TARGETS)] == ["timeout", "timeout"]
    assert seen["to_prefixes"] > 0 and any(line.startswith("198.18.20.2:") for line in seen["seen"]), seen
    r = gw.run(sys.executable, "-m", "ztun.appliance", "cleanup", check=False)
    assert r.returncode == 0 and ztun_state(gw) == [], r.stdout + r.stderr


BLOCK = """\
[tun]
name = "zt-tun0"
inet4 = "198.18.0.1/30"
inet6 = "fd00:18::1/126"
auto_route = true
strict_route = {strict}

[[route.rules]]
cidr = ["198.19.0.0/16"]
outbound = "block"

[control]
socket = "{control}"
"""


@pytest.mark.parametrize("strict", [False, True], ids=["bypass-named", "strict"])
def test_strict_route_sends_main_routes_via_a_gateway_through_ztun(lan, tmp_path, strict):
    """Main's 198.19.0.0/16 via 198.18.10.2: without strict_route it bypasses the TUN (named in the log and status),
    so the block rule has no effect; with it the route goes through ztun and the block rule refuses it."""
    control = tmp_path / "ztun.sock"
    conf = tmp_path / "ztun.toml"
    conf.write_text(BLOCK.format(strict=str(strict).lower(), control=control))
    lan.server.server("http", 8080)
    app = lan.client.appliance("--config", str(conf)).wait_ready()
    named = "198.19.0.0/16 via 198.18.10.2 dev zt-c0"
    status = lan.client.run(sys.executable, "-m", "ztun.appliance", "status", "--control-socket", str(control)).stdout
    dev = lan.client.ip("route", "get", Lan.SERVER4).split(" dev ", 1)[1].split()[0]
    outcome = connect(lan.client, f"{Lan.SERVER4}:8080")[0][0]
    if strict:
        assert "bypass zt-tun0: 198.18.10.0/24 dev zt-c0" in app.log, app.log
        assert f"go through zt-tun0 instead: {named}" in app.log, app.log
        assert dev == "zt-tun0" and outcome == "ECONNREFUSED"  # the block outbound's reset
        assert "routing: auto-route strict, fail-closed" in status and f"  {named}" not in status, status
    else:
        assert f"{named}" in app.log.split("bypass zt-tun0: ", 1)[1].splitlines()[0], app.log
        assert dev == "zt-c0" and outcome == "connected"
        assert "routing: auto-route, fail-closed" in status and f"  {named}" in status, status
    # the directly connected subnet bypasses either way
    assert lan.client.ip("route", "get", "198.18.10.2").split(" dev ", 1)[1].split()[0] == "zt-c0"
    assert connect(lan.client, "198.18.10.2:8080")[0][0] == "connected"
    assert app.stop() == 0, app.log
    assert ("via block: blocked" in app.log) == strict, app.log


DNS = """\
[tun]
name = "zt-tun0"
inet4 = "198.18.0.1/30"
inet6 = "fd00:18::1/126"
auto_route = true

[[outbounds]]
name = "proxy"
url = "socks5://{proxy}:1080"

[route]
default = "proxy"

[dns]
mode = "{mode}"
fake_ip4 = "198.18.128.0/20"
fake_ip6 = "fd00:f::/64"
upstream = "198.18.10.3:53"

[control]
socket = "{control}"
"""


def resolv_conf(ns, text):
    """ns's own /etc/resolv.conf while the block runs."""
    return netns_etc(ns, "resolv.conf", text)


@pytest.mark.parametrize("mode", ["fake-ip", "forward"])
def test_no_dns_leak_under_auto_route(tmp_path, mode):
    """The client's resolver is on the uplink's own subnet (which auto-route leaves to main): every query, UDP and
    TCP, by dig and by libc, is answered through ztun, and no port-53 packet crosses the uplink (forward mode's go
    through the SOCKS5 proxy's UDP relay, on its own ports)."""
    need("dig", "dnsutils")
    need("danted", "dante-server")
    with namespaces(tmp_path, "cs") as (client, server):
        lan = Lan(client, server)
        # The resolver on the uplink's subnet, but not at the proxy's address (each proxy's address is excluded).
        server.ip("addr", "add", "198.18.10.3/24", "dev", "zt-s0")
        server.server("dns", 53, "198.18.10.3")
        conf = tmp_path / "danted.conf"
        conf.write_text(DANTED_CONF.format(proxy=PROXY, port=1080))
        server.spawn("danted", "-f", str(conf), "-p", str(tmp_path / "danted.pid"))
        wait_port(server, PROXY, 1080)
        control = tmp_path / "ztun.sock"
        path = tmp_path / "ztun.toml"
        path.write_text(DNS.format(proxy=PROXY, mode=mode, control=control))
        with resolv_conf(client, "nameserver 198.18.10.3\n"):
            app = client.appliance("--config", str(path)).wait_ready()
            assert "DNS (port 53) to any address goes into zt-tun0" in app.log, app.log
            with capture(client, "zt-c0") as seen:
                answers = [client.run("dig", "+short", "+time=3", "+tries=1", *opt, "web.example", "A",
                                      check=False).stdout.split() for opt in ((), ("+tcp",))]
                libc = client.run("getent", "ahostsv4", "web.example", check=False).stdout.split()
            assert app.stop() == 0, app.log
        assert seen["port53"] == 0, seen
        expect = "198.18.12" if mode == "fake-ip" else lan.SERVER4
        assert all(len(a) == 1 and a[0].startswith(expect) for a in answers), (answers, app.log)
        assert libc and libc[0].startswith(expect), libc
        assert seen["packets"] > 0 or mode == "fake-ip", seen  # forward mode's queries did cross, proxied
