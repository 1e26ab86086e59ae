"""auto-route in a namespace with an uplink: ztun answers pings to anywhere, marked sockets and exclusions bypass it."""

import pytest
from conftest import need, received

pytestmark = pytest.mark.linux_root

TUN = "zt-auto0"
MARK = 0x2022
BASE = ["--tun-name", TUN, "--inet4", "198.18.0.1/30", "--auto-route", "--fwmark", hex(MARK)]

# Send n UDP datagrams to dst:9 from a socket with SO_MARK mark (0: none).
SEND = r"""
import socket, sys
from ztun.system.sockopt import mark_socket
dst, n, mark = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 0)
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
if mark:
    mark_socket(s, mark)
for _ in range(n):
    s.sendto(b"x", (dst, 9))
"""


def add_uplink(ns):
    """A veth "uplink" with default routes in the main table and permanent neighbours, so packets leave at once."""
    ns.ip("link", "add", "zt-up0", "type", "veth", "peer", "name", "zt-up1")
    for dev in ("zt-up0", "zt-up1"):
        # No link-local addresses: their DAD would change the namespace while the test compares it.
        ns.ip("link", "set", dev, "addrgenmode", "none")
        ns.ip("link", "set", dev, "up")
    ns.ip("addr", "add", "198.18.3.1/24", "dev", "zt-up0")
    ns.ip("-6", "addr", "add", "fd00:3::1/64", "dev", "zt-up0", "nodad")
    ns.ip("neigh", "add", "198.18.3.2", "lladdr", "02:00:00:00:00:02", "dev", "zt-up0", "nud", "permanent")
    ns.ip("-6", "neigh", "add", "fd00:3::2", "lladdr", "02:00:00:00:00:02", "dev", "zt-up0", "nud", "permanent")
    ns.ip("route", "add", "default", "via", "198.18.3.2", "dev", "zt-up0")
    ns.ip("-6", "route", "add", "default", "via", "fd00:3::2", "dev", "zt-up0")


def route_dev(ns, dst, *extra):
    out = ns.ip("-6" if ":" in dst else "-4", "route", "get", dst, *extra)
    return out.split(" dev ", 1)[1].split()[0]


def tx(ns, dev):
    return ns.link_stats(dev)["tx"]["packets"]


def sent_through(ns, dst, mark, n=20):
    """(packets the TUN got, packets the uplink sent) while n datagrams to dst are sent."""
    t0, u0 = tx(ns, TUN), tx(ns, "zt-up0")
    ns.python(SEND, dst, str(n), hex(mark))
    return tx(ns, TUN) - t0, tx(ns, "zt-up0") - u0


def test_auto_route_answers_everything_and_marked_sockets_bypass(netns):
    need("ping", "iputils-ping")
    add_uplink(netns)
    before = netns.snapshot()
    app = netns.appliance(*BASE, "--inet6", "fd00:18::1/126", "--exclude-route", "198.19.5.0/24").wait_ready()

    for dst in ("198.19.77.5", "198.18.200.9", "fd00:abcd::5"):
        r = netns.ping("-c", "2", "-i", "0.2", "-W", "5", dst)
        assert received(r) == (2, 2), f"{dst}: {r.stdout}{r.stderr}"

    for dst in ("198.19.77.5", "fd00:abcd::5"):
        assert route_dev(netns, dst) == TUN
        assert route_dev(netns, dst, "mark", hex(MARK)) == "zt-up0"
        to_tun, to_uplink = sent_through(netns, dst, MARK)
        assert to_uplink >= 20 and to_tun < 20, (dst, to_tun, to_uplink)
        to_tun, _ = sent_through(netns, dst, 0)  # the uplink now also carries ztun's forwarded copies
        assert to_tun >= 20, (dst, to_tun)

    assert route_dev(netns, "198.19.5.7") == "zt-up0"  # excluded
    assert route_dev(netns, "198.18.3.9") == "zt-up0"  # the uplink's own subnet stays on the uplink
    assert route_dev(netns, "198.19.77.5", "from", "198.18.3.1") == "zt-up0"  # bound to the uplink address

    assert app.stop() == 0, app.log
    assert app.stats()["udp_datagrams"] >= 40
    assert netns.snapshot() == before


def test_strict_route_makes_the_family_without_address_unreachable(netns):
    need("ping", "iputils-ping")
    add_uplink(netns)
    before = netns.snapshot()
    assert route_dev(netns, "fd00:abcd::5") == "zt-up0"  # without ztun IPv6 goes out of the uplink
    app = netns.appliance(*BASE, "--inet6", "none", "--strict-route").wait_ready()
    unreachable = netns.run("ip", "-6", "route", "get", "fd00:abcd::5", check=False)
    assert unreachable.returncode != 0 and "unreachable" in unreachable.stderr.lower()
    assert route_dev(netns, "fd00:abcd::5", "mark", hex(MARK)) == "zt-up0"  # ztun's own sockets still get out
    assert received(netns.ping("-c", "1", "-W", "5", "198.19.0.7")) == (1, 1)
    assert app.stop() == 0, app.log
    assert netns.snapshot() == before
