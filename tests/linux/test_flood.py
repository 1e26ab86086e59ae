"""A hostile LAN host floods ztun with SYNs while another host keeps connecting (issue #17).

host (the flooder) and host2 (a well-behaved client) -> gateway (ztun, --lan-interface both)
-> server; see conftest.GatewayLan. The flood is 50,000 prebuilt SYNs from one address, each
from its own source port, to the server's HTTP port, sent through a raw socket.
"""

import json
import os
import sys
import threading
import time

import pytest
from conftest import GatewayLan, namespaces, need, veth

pytestmark = pytest.mark.linux_root

FLOOD = r"""
import socket, struct, sys, time
src, dst, dport, count, first = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
burst = int(sys.argv[6]) if len(sys.argv) > 6 else count
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
s4, d4 = socket.inet_aton(src), socket.inet_aton(dst)
packets = []
for i in range(count):
    sport = first + i % (65536 - first)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1000 + i, 0, 5 << 4, 0x02, 64240, 0, 0)
    tcp = tcp[:16] + struct.pack("!H", csum(s4 + d4 + struct.pack("!BBH", 0, 6, len(tcp)) + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, i & 0xFFFF, 0, 64, 6, 0, s4, d4)
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    packets.append(ip + tcp)
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
sent, t0 = 0, time.monotonic()
deadline = t0 + 30
for i, p in enumerate(packets):
    if time.monotonic() > deadline:
        break
    if i and i % burst == 0:  # paced: the flood lasts a few seconds, as the other host's connections run
        time.sleep(0.05)
    try:
        sock.sendto(p, (dst, 0))
        sent += 1
    except OSError:  # ENOBUFS: the queue is full for a moment
        time.sleep(0.001)
print(sent, round(time.monotonic() - t0, 2))
"""

LEGIT = r"""
import subprocess, sys, time
url, count = sys.argv[1], int(sys.argv[2])
ok, t0 = 0, time.monotonic()
for i in range(count):
    if time.monotonic() - t0 > 90:
        break
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "--max-time", "15", url], capture_output=True, text=True)
    ok += r.returncode == 0
    if r.returncode:
        print("failed", i, r.stderr.strip(), flush=True)
print("ok", ok, count, flush=True)
"""


class FloodLan(GatewayLan):
    """GatewayLan plus host2 (zt-k0 198.18.21.2/24) behind the gateway's zt-g2 (198.18.21.1/24)."""

    def __init__(self, gateway, server, host, host2):
        super().__init__(gateway, server, host)
        self.host2 = host2
        veth(gateway, "zt-g2", ("198.18.21.1/24", "fd00:21::1/64"), host2, "zt-k0", ("198.18.21.2/24", "fd00:21::2/64"))
        host2.ip("route", "add", "default", "via", "198.18.21.1")
        self.control = f"/tmp/{gateway.name}.sock"  # short: a unix socket path has 107 bytes

    def appliance(self, *extra):
        return super().appliance("--lan-interface", "zt-g2", "--enable-forwarding", "--mtu", "1500",
                                 "--control-socket", str(self.control), *extra)

    def status(self) -> dict:
        from ztun.appliance.status import query

        return query(self.control)


@pytest.fixture
def flood_lan(tmp_path):
    with namespaces(tmp_path, "gshk") as made:
        lan = FloodLan(*made)
        try:
            yield lan
        finally:
            if os.path.exists(lan.control):  # an appliance that was killed leaves it
                os.unlink(lan.control)


class Poller:
    """Polls the appliance's status in a thread: the peaks of pending connects and descriptors."""

    def __init__(self, lan):
        self.lan, self.peak, self.stop = lan, {}, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        deadline = time.monotonic() + 150
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                gauges = self.lan.status()["gauges"]
            except Exception:  # a reply that did not come in time under the flood: the next one will
                continue
            for k in ("tcp_pending", "descriptors_open"):
                self.peak[k] = max(self.peak.get(k, 0), gauges.get(k, 0))
            self.peak["descriptors_budget"] = gauges.get("descriptors_budget")
            self.peak["descriptors_limit"] = gauges.get("descriptors_limit")
            time.sleep(0.1)

    def finish(self):
        self.stop.set()
        self.thread.join(10)
        return self.peak


def test_a_syn_flood_from_one_host_leaves_another_hosts_connections_alone(flood_lan):
    """50,000 SYNs from host to the server's HTTP port, each from its own source port, while host2
    makes 200 sequential curl connections: at least 95% succeed, the descriptors stay under budget."""
    need("curl", "curl")
    lan = flood_lan
    lan.server.server("http", 8080)
    app = lan.appliance()
    url = f"http://{lan.SERVER4}:8080/bytes/1000"
    legit = lan.host2.spawn(sys.executable, "-c", LEGIT, url, "200")
    poller = Poller(lan)
    flood = lan.host.python(FLOOD, "198.18.20.2", lan.SERVER4, "8080", "50000", "1024", "1000", timeout=60)
    try:
        legit.wait(120)
    finally:
        peak = poller.finish()
    out = (lan.host2.tmp / f"{lan.host2.name}-proc-0.log").read_text()
    ok = [line for line in out.splitlines() if line.startswith("ok ")]
    assert ok, out
    good, total = map(int, ok[-1].split()[1:])
    snap = lan.status()
    print(f"\nflood: {flood.stdout.strip()} (SYNs sent, seconds); legitimate: {good}/{total} "
          f"({100 * good / total:.1f}%); pending connects at peak {peak.get('tcp_pending')}; "
          f"descriptors at peak {peak.get('descriptors_open')} (budget {peak.get('descriptors_budget')}, "
          f"limit {peak.get('descriptors_limit')}); drops {json.dumps(snap['drops'])}")
    assert app.stop() == 0, app.log
    assert good >= 0.95 * total, out + app.log[-5000:]
    assert peak.get("descriptors_open", 0) < peak["descriptors_budget"], (peak, app.log[-3000:])
    assert "Too many open files" not in app.log, app.log[-5000:]
    assert snap["drops"].get("tcp_client_pending_limit", 0) > 0, snap  # the flood did meet the bound


def test_a_new_connection_on_a_half_open_flood_flow_is_not_reset(flood_lan):
    """The post-flood resets (issue #17), pinned: a flood SYN whose SYN-ACK (and so the client's
    reset) was lost leaves its NAT flow "established" after the kernel gave the connection up;
    a real connection later from the same client port must get a flow of its own, not be
    rewritten onto the old NAT port (the kernel accepts it there, ztun has no outbound for
    it and resets it: curl's "Connection reset by peer")."""
    need("curl", "curl")
    lan, gw = flood_lan, flood_lan.client
    lan.server.server("http", 8080)
    app = lan.appliance()
    gw.run("sysctl", "-qw", "net.ipv4.tcp_synack_retries=1")  # the kernel gives a lost handshake up in ~3 s
    gw.ip("route", "add", "blackhole", "198.18.20.2/32")  # the SYN-ACKs to host are lost
    lan.host.python(FLOOD, "198.18.20.2", lan.SERVER4, "8080", "1", "40000")
    deadline = time.monotonic() + 60  # the connected outbound socket waits 30 s for its client, then goes
    while lan.status()["counters"].get("flows_tcp_unclaimed", 0) < 1:
        assert time.monotonic() < deadline, app.log
        time.sleep(0.5)
    gw.ip("route", "del", "blackhole", "198.18.20.2/32")
    url = f"http://{lan.SERVER4}:8080/bytes/1000"
    r = lan.host.run("curl", "-sS", "-o", "/dev/null", "--max-time", "20", "--local-port", "40000", url, check=False, timeout=40)
    assert r.returncode == 0, f"curl exit {r.returncode}: {r.stderr}\n{app.log[-3000:]}"
    assert app.stop() == 0, app.log
