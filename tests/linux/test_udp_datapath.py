"""UDP through ztun in namespaces, as a UDP application sees it: 200 MB of sequence-numbered datagrams
through each outbound (direct, SOCKS5 via danted; IPv4 and IPv6) with nothing corrupted or
duplicated, the largest and the empty datagram, and a reply larger than a LAN host's MTU."""

import pytest
from conftest import Lan
from test_socks_appliance import PROXIED, PROXY, slan  # noqa: F401 (a fixture)

MB = 1 << 20

# Echo `total` bytes in datagrams of `size` through host:port, at most `window` in flight; each
# payload is its sequence number (8 bytes) repeated, so any changed byte is seen. Prints:
# sent received lost corrupted duplicated seconds.
UDP_BULK = r"""
import socket, sys, time
host, port, total, size, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
count = total // size
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 << 20)
s.connect((host, port))
s.settimeout(0.5)
def payload(seq):
    return (seq.to_bytes(8, "big") * (size // 8 + 1))[:size]
pending, seen = set(), set()
sent = received = lost = corrupted = duplicated = 0
start = time.monotonic()
deadline = start + 90
while (sent < count or pending) and time.monotonic() < deadline:
    while sent < count and len(pending) < window:
        s.send(payload(sent))
        pending.add(sent)
        sent += 1
    try:
        data = s.recv(65535)
    except socket.timeout:
        lost += len(pending)
        pending.clear()
        continue
    seq = int.from_bytes(data[:8], "big")
    if data != payload(seq):
        corrupted += 1
    elif seq in seen:
        duplicated += 1
    else:
        seen.add(seq)
        received += 1
        pending.discard(seq)
print(sent, received, lost, corrupted, duplicated, round(time.monotonic() - start, 2))
"""

# Sends each size given (bytes) once and waits for its echo; prints each echo's length and whether it matched.
UDP_SIZES = r"""
import os, socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
s.settimeout(5)
out = []
for size in map(int, sys.argv[3:]):
    data = os.urandom(size)
    s.sendto(data, (host, port))
    try:
        back, _ = s.recvfrom(65535)
        out.append(f"{len(back)}:{back == data}")
    except socket.timeout:
        out.append("timeout")
print(" ".join(out))
"""

# Asks the echo server for a reply of the given size ("GROW"): prints the length that came back.
UDP_GROW = r"""
import socket, sys
host, port, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
got = []
for _ in range(3):
    s.sendto(b"GROW" + size.to_bytes(4, "big"), (host, port))
    try:
        got.append(len(s.recv(65535)))
    except socket.timeout:
        got.append(0)
print(max(got))
"""


def bulk(ns, host, app, total=200 * MB, size=1400, window=64):
    r = ns.python(UDP_BULK, host, "9007", str(total), str(size), str(window), timeout=150)
    sent, received, lost, corrupted, duplicated = map(int, r.stdout.split()[:5])
    figures = f"sent {sent} received {received} lost {lost} corrupted {corrupted} duplicated {duplicated} in {r.stdout.split()[5]} s"
    assert sent == total // size, figures + r.stderr + app.log
    assert corrupted == 0 and duplicated == 0, figures
    assert received >= 0.99 * sent, figures  # loss is reported; more than 1% on an idle link is a fault
    return figures


@pytest.mark.parametrize("server", [Lan.SERVER4, Lan.SERVER6], ids=["ipv4", "ipv6"])
def test_200mb_direct(lan, server):
    lan.server.server("udp-echo", 9007)
    app = lan.appliance()
    figures = bulk(lan.client, server, app)
    assert app.stop() == 0, app.log
    stats = app.stats()
    assert stats["udp_fast_sent"] >= 0.99 * (200 * MB // 1400), (figures, stats)  # the table carried them, not Python


@pytest.mark.parametrize("server", [Lan.SERVER4, Lan.SERVER6], ids=["ipv4", "ipv6"])
def test_200mb_through_danted(slan, server):  # noqa: F811 (the fixture)
    slan.danted()
    slan.server.server("udp-echo", 9007)
    app = slan.start(PROXIED.format(url=f"socks5://{PROXY}:1081"))
    figures = bulk(slan.client, server, app)
    assert app.stop() == 0, app.log
    stats = app.stats()
    assert stats["udp_fast_sent"] >= 0.99 * (200 * MB // 1400), (figures, stats)


# IPv4's largest UDP payload; IPv6's largest that fits the TUN's MTU of 65,535 unfragmented (a larger
# one reaches the TUN as fragments, which ztun does not reassemble)
@pytest.mark.parametrize("server, largest", [(Lan.SERVER4, 65507), (Lan.SERVER6, 65535 - 48)], ids=["ipv4", "ipv6"])
def test_largest_and_empty_datagrams(lan, server, largest):
    lan.server.server("udp-echo", 9007)
    app = lan.appliance()
    sizes = [0, 1, 1472, 8000, largest, 0]
    r = lan.client.python(UDP_SIZES, server, "9007", *map(str, sizes), timeout=60)
    assert r.stdout.split() == [f"{n}:True" for n in sizes], r.stdout + r.stderr + app.log
    assert app.stop() == 0, app.log


def test_reply_larger_than_the_lan_mtu_reaches_a_gateway_client(gateway_lan):
    """ztun's IPv4 replies carry DF clear: the gateway fragments a 3,000-byte reply for a host behind an MTU of 1500."""
    g = gateway_lan
    g.server.server("udp-echo", 9007)
    app = g.appliance("--enable-forwarding")
    r = g.host.python(UDP_GROW, Lan.SERVER4, "9007", "3000", timeout=60)
    assert r.stdout.strip() == "3000", r.stdout + r.stderr + app.log
    assert app.stop() == 0, app.log


# A connected UDP socket sends to a port nothing listens on, twice (the first datagram goes to the
# handler, the second through the table): prints what each recv raised.
UDP_CLOSED = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.connect((host, port))
s.settimeout(3)
out = []
for _ in range(2):
    s.send(b"anyone?")
    try:
        s.recv(100)
        out.append("answered")
    except OSError as e:
        out.append(type(e).__name__)
print(" ".join(out))
"""


@pytest.mark.parametrize("server", [Lan.SERVER4, Lan.SERVER6], ids=["ipv4", "ipv6"])
def test_a_closed_port_is_refused(lan, server):
    """The destination's ICMP port unreachable reaches the client: its connected socket sees ECONNREFUSED."""
    app = lan.appliance()
    r = lan.client.python(UDP_CLOSED, server, "9999", timeout=30)
    assert r.stdout.split() == ["ConnectionRefusedError", "ConnectionRefusedError"], r.stdout + r.stderr + app.log
    assert app.stop() == 0, app.log
    assert app.stats()["udp_unreachable_to_client"] == 2
