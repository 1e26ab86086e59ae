"""ztun's SOCKS5 outbound against real SOCKS5 servers (microsocks, danted) in namespaces made by the test.

The Lan topology: the proxy listens on the server namespace's veth address 198.18.10.2 and
the echo servers on its loopback addresses 198.19.0.1 / fd00:19::1; tests/linux/socks5_driver.py
runs the outbound in the client namespace (with ztun's fwmark) and prints what happened.
"""

import json
import shutil
import sys
import textwrap
import time

import pytest
from conftest import HERE, netns_hosts

PROXY = "198.18.10.2"
TCP_ECHO, UDP_ECHO = 8080, 7001  # servers.py's http and udp-echo
DRIVER = str(HERE / "socks5_driver.py")

# What danted needs for CONNECT and UDP ASSOCIATE without authentication (Dante 1.4): the
# UDP relay's external side is pinned to the target's addresses, so replies come back from
# the address dante sent to (with `external: lo` it may pick 127.0.0.1 and drop the replies).
DANTED_CONF = """\
logoutput: stderr
internal: {proxy} port = {port}
external: 198.19.0.1
external: fd00:19::1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
}}
socks pass {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
    command: connect udpassociate
}}
socks pass {{
    from: 0.0.0.0/0 to: ::/0
    command: connect udpassociate
}}
socks pass {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
    command: udpreply
}}
socks pass {{
    from: ::/0 to: 0.0.0.0/0
    command: udpreply
}}
"""


def drive(lan, url, mode, targets, *extra, timeout=120) -> dict:
    r = lan.client.run(sys.executable, DRIVER, url, mode, json.dumps(targets), *map(str, extra), timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def wait_port(ns, host, port, timeout=20.0):
    """Wait until something accepts TCP connections on host:port inside ns."""
    code = textwrap.dedent(f"""
        import socket, sys, time
        end = time.monotonic() + {timeout}
        while time.monotonic() < end:
            try:
                socket.create_connection(({host!r}, {port}), timeout=1).close()
                sys.exit(0)
            except OSError:
                time.sleep(0.05)
        sys.exit(1)
    """)
    if ns.python(code, check=False, timeout=timeout + 10).returncode != 0:
        pytest.fail(f"nothing listens on {host}:{port} in {ns.name} after {timeout}s")


def echo_servers(lan):
    lan.server.server("http", TCP_ECHO)
    lan.server.server("udp-echo", UDP_ECHO)


@pytest.fixture
def lan(lan):
    """The Lan, its server namespace resolving echo.test to 198.19.0.1 (`ip netns exec` mounts /etc/netns/NAME/hosts)."""
    with netns_hosts(lan.server, "127.0.0.1 localhost\n198.19.0.1 echo.test\n"):
        yield lan


def microsocks(lan, port, *args):
    shutil.which("microsocks") or pytest.skip("needs `microsocks` (apt-get install microsocks)")
    lan.server.spawn("microsocks", "-i", PROXY, "-p", str(port), *args)
    wait_port(lan.client, PROXY, port)


def danted(lan, tmp_path, port):
    exe = shutil.which("danted") or shutil.which("sockd")
    if exe is None:
        pytest.skip("needs `danted` (apt-get install dante-server)")
    conf = tmp_path / "danted.conf"
    conf.write_text(DANTED_CONF.format(proxy=PROXY, port=port))
    lan.server.spawn(exe, "-f", str(conf), "-p", str(tmp_path / "danted.pid"))
    wait_port(lan.client, PROXY, port)


TARGETS = [["198.19.0.1", TCP_ECHO, None], ["fd00:19::1", TCP_ECHO, None], ["198.18.0.9", TCP_ECHO, "echo.test"]]


def test_microsocks_connect(lan):
    echo_servers(lan)
    microsocks(lan, 1080)
    out = drive(lan, f"socks5://{PROXY}:1080", "connect", TARGETS)
    assert out["results"] == [{"ok": True, "echo_ok": True}] * 3, out
    assert out["counters"]["tcp_ok"] == 3


def test_microsocks_auth(lan):
    echo_servers(lan)
    microsocks(lan, 1081, "-u", "zt user", "-P", "s3cret:@")
    out = drive(lan, f"socks5://zt%20user:s3cret%3A%40@{PROXY}:1081", "connect", TARGETS[:2])
    assert out["results"] == [{"ok": True, "echo_ok": True}] * 2, out
    out = drive(lan, f"socks5://zt%20user:wrong@{PROXY}:1081", "connect", TARGETS[:1])
    (r,) = out["results"]
    assert not r["ok"] and r["errno"] == 111, out  # ECONNREFUSED
    # microsocks answers status 2
    assert r["reason"] == f"socks5 proxy {PROXY}:1081: authentication failed (status 0x2): wrong username or password"
    assert out["counters"]["socks_auth_failed"] == 1
    out = drive(lan, f"socks5://{PROXY}:1081", "connect", TARGETS[:1])
    (r,) = out["results"]
    assert not r["ok"] and r["errno"] == 111 and "no acceptable authentication method" in r["reason"], out


def test_microsocks_down_then_up(lan):
    echo_servers(lan)
    start = time.monotonic()
    out = drive(lan, f"socks5://{PROXY}:1082", "connect", TARGETS[:1])
    (r,) = out["results"]
    assert not r["ok"] and r["errno"] == 111 and "connect: Connection refused" in r["reason"], out
    assert time.monotonic() - start < 15  # includes starting python in the namespace
    microsocks(lan, 1082)
    out = drive(lan, f"socks5://{PROXY}:1082", "connect", TARGETS[:1])
    assert out["results"] == [{"ok": True, "echo_ok": True}], out


def test_danted_connect_and_udp_associate(lan, tmp_path):
    echo_servers(lan)
    danted(lan, tmp_path, 1083)
    url = f"socks5://{PROXY}:1083"
    out = drive(lan, url, "connect", TARGETS)
    assert out["results"] == [{"ok": True, "echo_ok": True}] * 3, out
    udp_targets = [["198.19.0.1", UDP_ECHO, None], ["fd00:19::1", UDP_ECHO, None], ["198.18.0.9", UDP_ECHO, "echo.test"]]
    out = drive(lan, url, "udp", udp_targets, 200)
    assert out["closed"] == [] and out["sent"] == 600, out
    assert out["received"] == out["matched"] == 600, out
    assert set(out["sources"]) >= {"198.19.0.1", "fd00:19::1"}, out
    assert out["counters"]["udp_ok"] == 1 and out["counters"]["udp_sent"] == 600
    assert "udp_bad_header" not in out["counters"] and "udp_frag_dropped" not in out["counters"]
