"""UDP segmentation offload through the TUN: super-datagrams from a UDP_SEGMENT sender are split
for the UDP NAT, and the echoed replies go back coalesced (GRO on write)."""

import pytest

pytestmark = pytest.mark.linux_root

# Sends `bursts` super-datagrams of `segs` segments (the last one short) with UDP_SEGMENT and
# waits for every segment's echo; prints ok lost bad.
UDP_GSO = r"""
import socket, sys, time
host, bursts, segs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 << 20)
s.setsockopt(socket.SOL_UDP, 103, size)  # UDP_SEGMENT: the kernel cuts each send into size-byte datagrams
s.settimeout(3)
ok = lost = bad = 0
deadline = time.monotonic() + 120
for b in range(bursts):
    if time.monotonic() > deadline:
        lost += (bursts - b) * segs
        break
    want = {}
    for k in range(segs):
        n = size if k < segs - 1 else size // 3 + 5
        tag = (b * segs + k).to_bytes(4, "big")
        want[tag] = tag + bytes([(b + k) % 251]) * (n - 4)
    s.sendto(b"".join(want.values()), (host, 9007))  # unconnected: the echo comes from the server's veth address
    while want:
        try:
            data = s.recv(65535)
        except socket.timeout:
            lost += len(want)
            break
        if want.pop(data[:4], None) == data:
            ok += 1
        else:
            bad += 1
print(ok, lost, bad)
"""


@pytest.mark.parametrize("server", ["198.19.0.1", "fd00:19::1"], ids=["ipv4", "ipv6"])
def test_udp_segment_sender_through_the_tun(lan, server):
    lan.server.server("udp-echo", 9007)
    app = lan.appliance("--offload", "on", "--mtu", "1500")
    assert "uso4,uso6" in app.log, app.log  # this kernel (6.2+) takes USO; older ones fall back to TSO only
    bursts, segs = 300, 8
    r = lan.client.python(UDP_GSO, server, str(bursts), str(segs), "1200", timeout=180)
    assert r.stdout.split() == [str(bursts * segs), "0", "0"], r.stdout + r.stderr + app.log
    assert app.stop() == 0, app.log
    stats = app.stats()
    # each send crossed the TUN as one super-datagram, split into segs datagrams for the UDP NAT
    assert stats["udp_gso_split"] >= bursts * 0.9 and stats["udp_datagrams"] == bursts * segs, stats
    assert stats.get("udp_dropped_gso", 0) == 0 and stats["write_failed"] == 0 and stats["originated_failed"] == 0, stats
    # the echoes of one burst leave the server together: ztun writes most as one USO packet
    assert stats.get("udp_gro_coalesced", 0) > 0, stats
