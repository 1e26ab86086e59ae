"""outbound_interface = "auto": ztun's own sockets follow the default route from one uplink to another mid-run.

Topology: a client namespace (ztun) with two uplinks to one server namespace,
zt-c0 198.18.10.1/24 <-> zt-s0 198.18.10.2/24 and zt-c1 198.18.11.1/24 <-> zt-s1 198.18.11.2/24;
the server listens on its loopback 198.19.0.1. The client's only way to it is its default
route, via zt-c0 at first; 198.19.0.0/16 is routed into the TUN, so a socket of ztun's that
is not bound to the uplink loops into the TUN (and fails).
"""

import hashlib
import json
import sys
import time

import pytest
from conftest import namespaces, need, veth
from servers import body

pytestmark = pytest.mark.linux_root

MB = 1 << 20
SERVER4 = "198.19.0.1"
APPLIANCE = ("--tun-name", "zt-tun0", "--inet4", "198.18.0.1/30", "--inet6", "none", "--route", "198.19.0.0/16",
             "--outbound-interface", "auto")


@pytest.fixture
def uplinks(tmp_path):
    with namespaces(tmp_path, "cs") as (client, server):
        veth(client, "zt-c0", ("198.18.10.1/24", "fd00:10::1/64"), server, "zt-s0", ("198.18.10.2/24", "fd00:10::2/64"))
        veth(client, "zt-c1", ("198.18.11.1/24", "fd00:11::1/64"), server, "zt-s1", ("198.18.11.2/24", "fd00:11::2/64"))
        server.ip("addr", "add", SERVER4 + "/32", "dev", "lo")
        client.ip("route", "add", "default", "via", "198.18.10.2", "dev", "zt-c0")
        server.server("http", 8080)
        yield client, server


def sent(server, dev: str) -> int:
    return server.link_stats(dev)["tx"]["bytes"]


def fetch_through(client, server, tmp_path, size: int) -> dict:
    """Download size bytes through ztun (checked by hash); the bytes each server uplink sent meanwhile."""
    before = {dev: sent(server, dev) for dev in ("zt-s0", "zt-s1")}
    out = tmp_path / "down"
    client.run("curl", "-sS", "--max-time", "60", "-o", str(out), f"http://{SERVER4}:8080/bytes/{size}", timeout=90)
    assert hashlib.sha256(out.read_bytes()).digest() == hashlib.sha256(body(size)).digest()
    return {dev: sent(server, dev) - before[dev] for dev in before}


def wait_for(app, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in app.log:
        assert time.monotonic() < deadline, f"{text!r} not logged within {timeout}s:\n{app.log}"
        assert app.proc.poll() is None, app.log
        time.sleep(0.05)


def test_new_flows_follow_the_default_route_to_the_other_uplink(uplinks, tmp_path):
    need("curl", "curl")
    client, server = uplinks
    rules_before = (client.ip("rule"), client.ip("-6", "rule"))
    app = client.appliance(*APPLIANCE).wait_ready()
    assert "own sockets bound to zt-c0 (following the default route)" in app.log, app.log
    assert "oif zt-c0" in client.ip("rule"), client.ip("rule")

    size = 4 * MB
    moved = fetch_through(client, server, tmp_path, size)
    assert moved["zt-s0"] >= size and moved["zt-s1"] < size // 8, moved

    client.ip("route", "replace", "default", "via", "198.18.11.2", "dev", "zt-c1")
    wait_for(app, "default route now via zt-c1")
    rules = client.ip("rule")
    assert "oif zt-c1" in rules and "oif zt-c0" not in rules, rules  # the rule moved with the binding

    moved = fetch_through(client, server, tmp_path, size)
    assert moved["zt-s1"] >= size and moved["zt-s0"] < size // 8, moved

    # and back, once more: the monitor keeps following
    client.ip("route", "replace", "default", "via", "198.18.10.2", "dev", "zt-c0")
    wait_for(app, "default route now via zt-c0 (index")
    moved = fetch_through(client, server, tmp_path, size)
    assert moved["zt-s0"] >= size and moved["zt-s1"] < size // 8, moved

    control = app.proc.args[app.proc.args.index("--control-socket") + 1]
    status = json.loads(client.run(sys.executable, "-m", "ztun.appliance", "status", "--control-socket", control,
                                   "--json").stdout)
    routing = status["routing"]
    assert routing["own_sockets"] == "bound to zt-c0" and routing["outbound_interface_moves"] == 2, routing
    assert routing["default_route"]["default_moves"] == 2 and routing["default_route"]["route_events"] >= 2, routing

    assert app.stop() == 0, app.log
    assert (client.ip("rule"), client.ip("-6", "rule")) == rules_before
    assert "zt-tun0" not in client.ip("route", "show", "table", "all")


def test_a_named_interface_that_does_not_exist_is_one_clear_error(uplinks):
    client, _ = uplinks
    app = client.appliance("--tun-name", "zt-tun0", "--inet4", "198.18.0.1/30", "--route", "198.19.0.0/16",
                           "--outbound-interface", "zt-nope")
    assert app.wait() == 1, app.log
    assert "--outbound-interface: 'zt-nope': no such interface" in app.log, app.log
    assert "zt-tun0" not in client.ip("link")
