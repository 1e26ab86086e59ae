"""`ztun-appliance run` with routes: ping through the TUN, raw IP on the interface, and nothing left after it stops."""

import json
import signal
import sys
import time

import pytest
from conftest import need, received

pytestmark = pytest.mark.linux_root

ARGS = ["--tun-name", "zt-test0", "--inet4", "198.18.0.1/30", "--inet6", "fd00:18::1/126",
        "--route", "198.19.0.0/16", "--route", "fd00:19::/64", "--mtu", "1500"]

# What an AF_PACKET socket (tcpdump's view) sees on the TUN while one ping runs.
CAPTURE = r"""
import json, socket, subprocess, sys
ifname, family, dst = sys.argv[1:4]
s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(3))  # ETH_P_ALL
s.bind((ifname, 0))
s.settimeout(0.3)
subprocess.run(["ping", "-" + family, "-c", "1", "-W", "5", dst], check=True, capture_output=True)
seen = []
while True:
    try:
        data, addr = s.recvfrom(65535)
    except socket.timeout:
        break
    seen.append({"proto": addr[1], "pkttype": addr[2], "hatype": addr[3], "head": data[:48].hex()})
print(json.dumps(seen))
"""

OUTGOING, HOST = 4, 0
ARPHRD_NONE = 0xFFFE


def test_ping_through_the_tun_then_sigterm_removes_everything(netns):
    need("ping", "iputils-ping")
    before = netns.snapshot()
    app = netns.appliance(*ARGS).wait_ready()

    assert "zt-test0" in netns.ip("link", "show", "dev", "zt-test0")
    assert "9002:\tfrom all lookup 2022" in netns.ip("rule")
    assert "198.19.0.0/16 dev zt-test0" in netns.ip("route", "show", "table", "2022")
    assert "fd00:19::/64 dev zt-test0" in netns.ip("-6", "route", "show", "table", "2022")

    for args in (["-c", "3", "-i", "0.2", "-W", "5", "198.19.0.7"], ["-6", "-c", "3", "-i", "0.2", "-W", "5", "fd00:19::7"]):
        r = netns.ping(*args)
        assert received(r) == (3, 3), r.stdout + app.log
        assert "ttl=64" in r.stdout

    assert app.stop() == 0, app.log
    stats = app.stats()
    assert stats["echo_answered"] >= 6 and stats["written_back"] == stats["echo_answered"]
    assert "everything ztun added is removed" in app.log
    assert netns.snapshot() == before


def test_interface_carries_raw_ip(netns):
    need("ping", "iputils-ping")
    app = netns.appliance(*ARGS).wait_ready()
    for family, dst, proto, version, request, reply in (("4", "198.19.0.7", 0x0800, 4, 8, 0),
                                                       ("6", "fd00:19::7", 0x86DD, 6, 128, 129)):
        seen = json.loads(netns.python(CAPTURE, "zt-test0", family, dst).stdout)
        assert seen and all(p["hatype"] == ARPHRD_NONE for p in seen)
        l4 = 20 if version == 4 else 40
        kinds = {(p["pkttype"], bytes.fromhex(p["head"])[l4]) for p in seen
                 if p["proto"] == proto and bytes.fromhex(p["head"])[0] >> 4 == version}
        assert (OUTGOING, request) in kinds, seen
        assert (HOST, reply) in kinds, seen
    assert app.stop() == 0


def test_sigint_also_removes_everything(netns):
    before = netns.snapshot()
    app = netns.appliance(*ARGS, "--exclude-route", "198.19.5.0/24").wait_ready()
    assert "throw 198.19.5.0/24" in netns.ip("route", "show", "table", "2022")
    assert app.stop(signal.SIGINT) == 0, app.log
    assert netns.snapshot() == before


def test_persistent_device_is_attached_and_left_as_it_was(netns):
    need("ping", "iputils-ping")
    netns.ip("tuntap", "add", "dev", "zt-pers0", "mode", "tun")
    netns.ip("link", "set", "dev", "zt-pers0", "mtu", "1400")
    netns.ip("addr", "add", "198.18.0.1/30", "dev", "zt-pers0")  # there before ztun: must stay
    before = netns.snapshot()
    app = netns.appliance("--tun-name", "zt-pers0", "--inet4", "198.18.0.1/30", "--inet6", "fd00:18::1/126",
                          "--route", "198.19.0.0/16", "--mtu", "1500").wait_ready()
    assert "attached to existing TUN device zt-pers0" in app.log
    assert "mtu 1500" in netns.ip("link", "show", "dev", "zt-pers0")
    assert received(netns.ping("-c", "2", "-i", "0.2", "-W", "5", "198.19.0.9")) == (2, 2)
    assert app.stop() == 0, app.log
    after = netns.snapshot()
    assert after == before
    link = netns.ip("link", "show", "dev", "zt-pers0")
    assert "mtu 1400" in link and ",UP" not in link


def test_without_privileges_one_line(netns):
    need("setpriv", "util-linux")
    # root without any capability: may open /dev/net/tun (owner) but not create a device
    r = netns.run("setpriv", "--bounding-set=-all", "--inh-caps=-all", *netns_python(), "-m", "ztun.appliance",
                  "run", *ARGS, "--log-level", "ERROR", "--control-socket", str(netns.tmp / "control.sock"), check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert r.stderr.startswith("ztun-appliance: error: ") and "CAP_NET_ADMIN" in r.stderr


def test_not_root_one_line(netns):
    need("setpriv", "util-linux")
    probe = netns.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *netns_python(), "-c", "import ztun._fast, ztun.appliance.cli",
                      check=False)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this Python/checkout: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    r = netns.run("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *netns_python(), "-m", "ztun.appliance",
                  "run", *ARGS, "--log-level", "ERROR", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "ztun-appliance: error: cannot open /dev/net/tun (needs root or CAP_NET_ADMIN): Permission denied (errno 13)"


def netns_python():
    return [sys.executable]


def _config(netns, text: str):
    path = netns.tmp / "ztun.toml"
    path.write_text('[tun]\nname = "zt-test0"\ninet4 = "198.18.0.1/30"\ninet6 = "fd00:18::1/126"\n'
                    'routes = ["198.19.0.0/16"]\n\n'
                    f'[control]\nsocket = "{netns.tmp / "control.sock"}"\n\n' + text)
    return path


def test_a_sighup_with_a_hostile_file_is_refused_in_one_line(netns):
    """A reload of a file nested 500 deep: one ERROR line, no traceback; the appliance runs on and stops clean."""
    before = netns.snapshot()
    path = _config(netns, "")
    app = netns.appliance("--config", str(path)).wait_ready()
    path.write_text("a = " + "[" * 500 + "]" * 500 + "\n")
    app.send(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "not reloaded" not in app.log and time.monotonic() < deadline:
        time.sleep(0.05)
    assert app.stop() == 0, app.log
    sighup = [line for line in app.log.splitlines() if "SIGHUP" in line]
    assert len(sighup) == 1 and "not reloaded" in sighup[0] and "nested deeper than" in sighup[0], app.log
    assert "Traceback" not in app.log and "RecursionError" not in app.log
    assert netns.snapshot() == before


def test_a_missing_lan_interface_of_the_file_names_its_key(netns):
    """examples/router-socks5.toml on a host without eth1: the key of the file, not a flag the user never gave."""
    before = netns.snapshot()
    path = _config(netns, '[gateway]\nlan_interfaces = ["zt-nosuch0"]\n')
    app = netns.appliance("--config", str(path), "--log-level", "ERROR")
    assert app.wait() == 1, app.log
    assert app.log.strip() == f"ztun-appliance: error: {path}: line 11: gateway.lan_interfaces: 'zt-nosuch0': no such interface"
    assert netns.snapshot() == before
