"""ztun as the gateway of another host: forwarded traffic crosses the TUN (with offload on and off).

host namespace -> gateway namespace (ztun, forwarding on) -> server namespace; see conftest.GatewayLan.
"""

import os

import pytest
from conftest import need
from servers import body
from test_offload_udp import UDP_GSO
from test_socks5_servers import DANTED_CONF, PROXY, wait_port
from test_stack_flows import CONCURRENT, MB, UDP_ECHO, sha, url_host

pytestmark = pytest.mark.linux_root


def http_each_way(ns, tmp_path, size, server):
    """From ns: download size bytes and upload size random bytes with curl; both verified by hash."""
    out = tmp_path / "down"
    ns.run("curl", "-sS", "--max-time", "120", "-o", str(out), f"http://{url_host(server)}:8080/bytes/{size}", timeout=150)
    assert sha(out.read_bytes()) == sha(body(size)), server
    up = tmp_path / "up"
    up.write_bytes(os.urandom(size))
    r = ns.run("curl", "-sS", "--max-time", "120", "--data-binary", f"@{up}", f"http://{url_host(server)}:8080/upload", timeout=150)
    assert r.stdout.strip() == sha(up.read_bytes()), server
    out.unlink()
    up.unlink()


def udp_echo(ns, server, count, app):
    maxsize = 1500 - (28 if ":" not in server else 48)  # every link is at MTU 1500
    r = ns.python(UDP_ECHO, server, str(count), str(maxsize), timeout=180)
    assert r.stdout.split() == [str(count), "0", "0"], r.stdout + r.stderr + app.log


def test_forwarding_off_is_a_clear_error(gateway_lan):
    gw = gateway_lan.client
    gw.run("sysctl", "-qw", "net.ipv4.ip_forward=0")
    app = gw.appliance(*gateway_lan.APPLIANCE, "--lan-interface", "zt-g1")
    assert app.wait() == 1
    assert "net.ipv4.ip_forward is 0" in app.log and "--enable-forwarding" in app.log and "Traceback" not in app.log


@pytest.mark.parametrize("offload", ["on", "off"])
def test_lan_host_through_the_gateway(gateway_lan, tmp_path, offload):
    """HTTP 50 MB each way (IPv4) and 8 MB each way (IPv6), 200 concurrent fetches, UDP echo over
    both families and UDP_SEGMENT super-datagrams, all from the host through ztun."""
    need("curl", "curl")
    lan, host = gateway_lan, gateway_lan.host
    lan.server.server("http", 8080)
    lan.server.server("udp-echo", 9007)
    before = lan.client.snapshot()
    app = lan.appliance("--enable-forwarding", "--offload", offload, "--mtu", "1500")
    assert lan.client.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    assert ("offload on zt-tun0: csum,tso4,tso6" in app.log) == (offload == "on"), app.log
    http_each_way(host, tmp_path, 50 * MB, lan.SERVER4)
    http_each_way(host, tmp_path, 8 * MB, lan.SERVER6)
    r = host.python(CONCURRENT, lan.SERVER4, "200", str(64 * 1024), timeout=240)
    assert r.stdout.strip() == "200", r.stdout + r.stderr + app.log
    for server in (lan.SERVER4, lan.SERVER6):
        udp_echo(host, server, 1000, app)
        r = host.python(UDP_GSO, server, "50", "8", "1200", timeout=180)
        assert r.stdout.split() == ["400", "0", "0"], r.stdout + r.stderr + app.log
    tun = lan.client.link_stats("zt-tun0")
    assert app.stop() == 0, app.log
    stats = app.stats()
    assert stats["tcp_allowed"] >= 204 and stats["udp_datagrams"] == 2 * (1000 + 400), stats
    assert stats["write_failed"] == 0 and stats["originated_failed"] == 0 and stats.get("udp_dropped_gso", 0) == 0, stats
    if offload == "on":  # the LAN's GRO'd TCP stays whole through the TUN
        assert tun["tx"]["bytes"] / tun["tx"]["packets"] > 4000, tun
    else:
        assert tun["tx"]["bytes"] / tun["tx"]["packets"] <= 1500, tun
    # the flows ztun relayed came from the host itself: forwarded into the TUN, not made locally
    assert "tcp 198.18.20.2:" in app.log and "tcp [fd00:20::2]:" in app.log, app.log
    assert lan.client.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"  # restored
    assert lan.client.snapshot() == before


def test_strict_rp_filter_in_all_three_namespaces(gateway_lan, tmp_path):
    need("curl", "curl")
    lan, host = gateway_lan, gateway_lan.host
    for ns, ifaces in ((host, ("zt-h0",)), (lan.client, ("zt-c0", "zt-g1")), (lan.server, ("zt-s0",))):
        for key in ("all", "default", "lo", *ifaces):
            ns.run("sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=1")
    lan.server.server("http", 8080)
    lan.server.server("udp-echo", 9007)
    app = lan.appliance("--enable-forwarding", "--mtu", "1500")
    assert lan.client.run("sysctl", "-n", "net.ipv4.conf.zt-tun0.rp_filter").stdout.strip() == "1"
    http_each_way(host, tmp_path, 4 * MB, lan.SERVER4)
    http_each_way(host, tmp_path, 4 * MB, lan.SERVER6)
    udp_echo(host, lan.SERVER4, 300, app)
    udp_echo(host, lan.SERVER6, 300, app)
    assert app.stop() == 0, app.log
    stats = app.stats()
    assert stats["tcp_allowed"] >= 4 and stats["udp_datagrams"] == 600, stats


def test_lan_host_through_a_socks5_proxy(gateway_lan, tmp_path):
    """The same from the host with every flow proxied: danted in the server namespace (CONNECT, UDP ASSOCIATE)."""
    need("curl", "curl")
    need("danted", "dante-server")
    lan, host = gateway_lan, gateway_lan.host
    lan.server.server("http", 8080)
    lan.server.server("udp-echo", 9007)
    conf = tmp_path / "danted.conf"
    conf.write_text(DANTED_CONF.format(proxy=PROXY, port=1080))
    lan.server.spawn("danted", "-f", str(conf), "-p", str(tmp_path / "danted.pid"))
    wait_port(lan.server, PROXY, 1080)
    app = lan.appliance("--enable-forwarding", "--mtu", "1500", "--outbound", f"socks5://{PROXY}:1080")
    http_each_way(host, tmp_path, 50 * MB, lan.SERVER4)
    http_each_way(host, tmp_path, 8 * MB, lan.SERVER6)
    r = host.python(CONCURRENT, lan.SERVER4, "200", str(64 * 1024), timeout=240)
    assert r.stdout.strip() == "200", r.stdout + r.stderr + app.log
    udp_echo(host, lan.SERVER4, 1000, app)
    assert app.stop() == 0, app.log
    assert "tcp 198.18.20.2:" in app.log and " via proxy up " in app.log and " via direct " not in app.log, app.log
