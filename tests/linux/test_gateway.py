"""ztun as the gateway of another host: forwarded traffic crosses the TUN (with offload on and off)."""

import pytest

from conftest import need
from servers import body
from test_stack_flows import MB, UDP_ECHO, sha, url_host

pytestmark = pytest.mark.linux_root


def test_forwarding_off_is_a_clear_error(gateway_lan):
    gw = gateway_lan.client
    gw.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    app = gw.appliance(*gateway_lan.APPLIANCE, "--lan-interface", "zt-g1")
    assert app.wait() == 1
    assert "net.ipv4.ip_forward is 0" in app.log and "--enable-forwarding" in app.log and "Traceback" not in app.log


@pytest.mark.parametrize("offload", ["on", "off"])
def test_lan_host_through_the_gateway(gateway_lan, tmp_path, offload):
    need("curl", "curl")
    lan, host = gateway_lan, gateway_lan.host
    lan.server.server("http", 8080)
    lan.server.server("udp-echo", 9007)
    before = lan.client.snapshot()
    app = lan.appliance("--enable-forwarding", "--offload", offload, "--mtu", "1500")
    assert lan.client.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    size = 20 * MB
    for server in (lan.SERVER4, lan.SERVER6):
        out = tmp_path / "down"
        host.run("curl", "-sS", "--max-time", "60", "-o", str(out), f"http://{url_host(server)}:8080/bytes/{size}", timeout=90)
        assert sha(out.read_bytes()) == sha(body(size)), server
    r = host.python(UDP_ECHO, lan.SERVER4, "1000", "1472", timeout=60)
    assert r.stdout.split() == ["1000", "0", "0"], r.stdout + r.stderr + app.log
    assert app.stop() == 0, app.log
    stats = app.stats()
    assert stats["tcp_allowed"] >= 2 and stats["udp_datagrams"] == 1000, stats
    # the flows ztun relayed came from the host itself: forwarded into the TUN, not made locally
    assert "tcp 198.18.20.2:" in app.log and "tcp [fd00:20::2]:" in app.log, app.log
    assert lan.client.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"  # restored
    assert lan.client.snapshot() == before
