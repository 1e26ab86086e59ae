"""Batch I/O under load: 100,000 echo requests from a bounded flood are all answered, or counted drops explain each miss."""

import pytest
from conftest import need, received

pytestmark = pytest.mark.linux_root

COUNT = 100_000
PRELOAD = 32  # requests in flight: enough to fill batches, few enough for the kernel's queues


def snmp(ns) -> dict:
    """The namespace's /proc/net/snmp counters as {"Ip.InDiscards": n, ...}."""
    lines = ns.run("cat", "/proc/net/snmp").stdout.splitlines()
    out = {}
    for names, values in zip(lines[::2], lines[1::2]):
        proto = names.split(":")[0]
        out.update({f"{proto}.{k}": int(v) for k, v in zip(names.split()[1:], values.split()[1:])})
    return out


def test_100k_echo_requests_answered(netns):
    need("ping", "iputils-ping")
    app = netns.appliance("--tun-name", "zt-flood0", "--inet4", "198.18.0.1/30", "--inet6", "none",
                          "--route", "198.19.0.0/16", "--mtu", "1500").wait_ready()
    link0, snmp0 = netns.link_stats("zt-flood0"), snmp(netns)
    # Bounded in count (-c), in flight (-l) and in waiting for the last replies (-W); the run() timeout backs it up.
    r = netns.ping("-f", "-q", "-l", str(PRELOAD), "-c", str(COUNT), "-W", "2", "198.19.0.7", timeout=300)
    link1, snmp1 = netns.link_stats("zt-flood0"), snmp(netns)
    assert app.stop() == 0, app.log
    sent, got = received(r)
    stats = app.stats()

    drops = {
        "tun queue full (tx_dropped)": link1["tx"]["dropped"] - link0["tx"]["dropped"],
        "stack read, not answered": stats["dropped"] - stats["write_failed"],
        "reply write failed": stats["write_failed"],
        "kernel refused a reply (rx_dropped)": link1["rx"]["dropped"] - link0["rx"]["dropped"],
        "Ip.InDiscards": snmp1["Ip.InDiscards"] - snmp0["Ip.InDiscards"],
        "Icmp.InErrors": snmp1["Icmp.InErrors"] - snmp0["Icmp.InErrors"],
    }
    detail = f"sent={sent} received={got} stats={stats} drops={drops}"
    assert sent == COUNT, detail
    assert stats["echo_answered"] >= got, detail
    assert got == sent or sent - got <= sum(drops.values()), detail
