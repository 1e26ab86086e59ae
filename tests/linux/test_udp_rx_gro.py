"""UDP_GRO on the UDP table's sockets, in namespaces: a server's burst in one UDP GSO send reaches
ztun's outbound socket as one message and the client as the datagrams it was, byte for byte and in
order, the shorter last one too, with ZTUN_UDP_RX_GRO=1: as one USO super-packet into the TUN (with
offload), or cut by ztun (ZTUN_UDP_GRO=0: no USO writes); and by default, cut by the kernel."""

import pytest
from conftest import Lan

from ztun._fast import udptable  # the table the appliance runs too (same environment)

COMPILED = not udptable.__name__.endswith("_py")

# Asks the echo server for bursts ("BURST" n size last) and checks every datagram of each; prints one
# word a burst: ok, or what went wrong.
UDP_BURSTS = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.connect((host, port))
s.settimeout(5)
out = []
for n, size, last in [(2, 1000, 1000), (20, 1200, 77), (40, 1400, 1), (3, 1, 1), (7, 999, 998), (45, 1452, 700)]:
    s.send(b"BURST" + b"".join(v.to_bytes(2, "big") for v in (n, size, last)))
    want = [(i.to_bytes(2, "big") * (size // 2 + 1))[: last if i == n - 1 else size] for i in range(n)]
    got = []
    try:
        while len(got) < n:
            got.append(s.recv(65535))
    except socket.timeout:
        pass
    out.append("ok" if got == want else f"{n}x{size}:got-{[len(g) for g in got]}")
print(" ".join(out))
"""


@pytest.mark.parametrize("mode", ["uso", "split", "off"])
@pytest.mark.parametrize("server", [Lan.SERVER4, Lan.SERVER6], ids=["ipv4", "ipv6"])
def test_a_gso_burst_reaches_the_client_as_its_datagrams(lan, monkeypatch, server, mode):
    if mode == "off":
        monkeypatch.delenv("ZTUN_UDP_RX_GRO", raising=False)  # the default
    else:
        monkeypatch.setenv("ZTUN_UDP_RX_GRO", "1")
    if mode == "split":
        monkeypatch.setenv("ZTUN_UDP_GRO", "0")  # replies are not written as USO: ztun cuts each message
    lan.server.server("udp-echo", 9007)
    app = lan.appliance()
    r = lan.client.python(UDP_BURSTS, server, "9007", timeout=60)
    assert r.stdout.split() == ["ok"] * 6, r.stdout + r.stderr + app.log
    assert app.stop() == 0, app.log
    stats = app.stats()
    gro = {k: v for k, v in stats.items() if k.startswith("udp_gro")}
    # the first burst answers the session's first datagram, still on the handler's way; the later ones
    # (what the table reads) arrive coalesced
    if mode == "off":
        assert stats.get("udp_gro_receives", 0) == 0, gro
    else:
        assert stats["udp_gro_receives"] >= 4 and stats["udp_gro_datagrams"] >= 4 * 3, gro
        assert (stats.get("udp_gro_uso", 0) > 0) == (mode == "uso" and COMPILED), gro  # the twin always cuts
