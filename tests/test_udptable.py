"""The UDP session table over real loopback UDP sockets: both implementations (the compiled one and
its twin), direct and SOCKS5 routes, replies built into packets, hostile replies counted."""

import ipaddress
import select
import socket
import struct
import time

import numpy as np
import pytest

from ztun._fast import PacketBatch, build_py, defs as d, gso_py, packet_py, udptable_py
from ztun._fast.checksum_py import checksum, pseudo_sum

try:
    from ztun._fast import udptable as udptable_native
except ImportError:  # not built here (not Linux, or no compiler): only the twin runs
    udptable_native = None

_NOT_BUILT = pytest.mark.skipif(udptable_native is None, reason="the compiled UDP table is not built here")
# The compiled table sending on the caller's thread, and from its sender thread (ZTUN_UDP_SENDER=thread).
IMPLS = [pytest.param((udptable_native, False), id="native", marks=_NOT_BUILT),
         pytest.param((udptable_native, True), id="native-thread", marks=_NOT_BUILT),
         pytest.param((udptable_py, False), id="twin")]

CLIENT4, CLIENT6 = "198.18.0.5", "fd00::5"
DEST4, DEST6 = "198.18.9.9", "fd00::9:9"


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


@pytest.fixture
def mod(impl):
    return impl[0]


class Rig:
    """A table with no loop (receive is called by hand) and the sockets a test opens, closed after."""

    def __init__(self, mod, threaded=False, **kw):
        self.mod = mod
        self.table = mod.UdpTable(None, lambda: None, sender_thread=threaded, **kw)
        self.socks = []

    def udp(self, host="127.0.0.1", family=socket.AF_INET):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((host, 0))
        s.setblocking(False)
        self.socks.append(s)
        return s

    def close(self):
        self.table.close()
        for s in self.socks:
            s.close()

    def two_routes(self):
        """A session of CLIENT4:5000 with DEST4:53 routed direct to a server here and DEST4:54 through
        SOCKS5 to a relay here (both with 4 MiB receive buffers): (server, relay, the SOCKS5 header)."""
        t, mod = self.table, self.mod
        server, relay = self.udp(), self.udp()
        for s in (server, relay):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        direct_sock, socks_sock = self.udp(), self.udp()
        socks_sock.connect(relay.getsockname())
        sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
        k = t.attach(sid, direct_sock, mod.DIRECT)
        j = t.attach(sid, socks_sock, mod.SOCKS5)
        head = socks_header(DEST4, 54)
        assert t.route(sid, ipaddress.ip_address(DEST4).packed, 53, k, to=(b"\x7f\x00\x00\x01", server.getsockname()[1]))
        assert t.route(sid, ipaddress.ip_address(DEST4).packed, 54, j, prefix=head)
        return server, relay, head

    def ready(self, *socks):
        """Wait until the socks are readable (loopback delivers at once, once the sender thread sent what it
        was given; the twin needs its ready flag)."""
        self.table.drain()
        assert select.select(socks, [], [], 5)[0]
        if self.mod is udptable_py:
            for x in self.table._socks.values():
                if x.sock in socks:
                    x.ready = True


@pytest.fixture
def rig(impl):
    r = Rig(*impl)
    yield r
    r.close()


def client_batch(*datagrams, slots=8):
    """A parsed TUN batch of UDP packets (src, sport, dst, dport, payload), verdict V_UDP each."""
    b = PacketBatch(slots)
    for i, (src, sport, dst, dport, payload) in enumerate(datagrams):
        assert build_py.udp_packet(b, i, ipaddress.ip_address(src).packed, sport, ipaddress.ip_address(dst).packed, dport, payload)
    b.count = len(datagrams)
    packet_py.parse_batch(b)
    b.verdicts[: len(datagrams)] = d.V_UDP
    return b


def packet_of(out, slot):
    return out.data[slot, out.headroom : out.headroom + int(out.lengths[slot])].tobytes()


def check_udp(pkt, src, sport, dst, dport, payload):
    """pkt is an IP/UDP packet from src:sport to dst:dport carrying payload, with right checksums."""
    if ipaddress.ip_address(src).version == 4:
        assert pkt[0] == 0x45 and checksum(pkt[:20]) == 0
        assert pkt[6] & 0x40 == 0  # DF clear
        hdr, alen = 20, 4
        assert pkt[12:16] == ipaddress.ip_address(src).packed and pkt[16:20] == ipaddress.ip_address(dst).packed
    else:
        assert pkt[0] >> 4 == 6
        hdr, alen = 40, 16
        assert pkt[8:24] == ipaddress.ip_address(src).packed and pkt[24:40] == ipaddress.ip_address(dst).packed
    u = pkt[hdr:]
    assert struct.unpack("!HHH", u[:6]) == (sport, dport, 8 + len(payload))
    assert u[8:] == payload
    assert checksum(u, pseudo_sum(ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed, d.PROTO_UDP, len(u))) == 0


def test_direct_both_ways(rig, mod):
    t = rig.table
    out_sock, server = rig.udp(), rig.udp()
    sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
    k = t.attach(sid, out_sock, mod.DIRECT)
    assert k >= 0
    assert t.route(sid, ipaddress.ip_address(DEST4).packed, 53, k, to=(b"\x7f\x00\x00\x01", server.getsockname()[1]))
    b = client_batch((CLIENT4, 5000, DEST4, 53, b"hello"), (CLIENT4, 5000, DEST4, 54, b"no route"),
                     (CLIENT4, 5001, DEST4, 53, b"other client"), (CLIENT4, 5000, DEST4, 53, b""))
    assert t.send_batch(b, 4, 2.0) == 2
    assert list(b.verdicts[:4]) == [d.V_DROP, d.V_UDP, d.V_UDP, d.V_DROP]  # routed ones done, the rest for Python
    rig.ready(server)
    got = [server.recvfrom(100) for _ in range(2)]
    assert [g[0] for g in got] == [b"hello", b""] and got[0][1] == out_sock.getsockname()
    assert t.counts(sid) == (2, 5, 0, 0) and t.last_active(sid) == 2.0
    server.sendto(b"answer", out_sock.getsockname())
    server.sendto(b"x" * 1400, out_sock.getsockname())
    rig.ready(out_sock)
    out = PacketBatch(4, max_packet=d.MAX_PACKET + 40)
    assert t.receive(out, 1, 3.0) == 3  # from slot 1 on
    port = server.getsockname()[1]
    check_udp(packet_of(out, 1), "127.0.0.1", port, CLIENT4, 5000, b"answer")
    check_udp(packet_of(out, 2), "127.0.0.1", port, CLIENT4, 5000, b"x" * 1400)
    assert list(out.verdicts[1:3]) == [d.V_WRITE, d.V_WRITE]
    assert t.counts(sid) == (2, 5, 2, 1406) and t.last_active(sid) == 3.0
    assert t.receive(out, 3, 3.0) == 3  # nothing more
    s = t.stats()
    assert s["fast_sent"] == 2 and s["fast_received"] == 2


def test_direct_ipv6_and_fake_source(rig, mod):
    t = rig.table
    out_sock, server = rig.udp("::1", socket.AF_INET6), rig.udp("::1", socket.AF_INET6)
    sid = t.open(6, ipaddress.ip_address(CLIENT6).packed, 6000, 1.0)
    fake = ipaddress.ip_address("fd00::198:1").packed
    k = t.attach(sid, out_sock, mod.DIRECT, fake=fake)
    assert t.route(sid, fake, 443, k, to=(ipaddress.ip_address("::1").packed, server.getsockname()[1]))
    b = client_batch((CLIENT6, 6000, "fd00::198:1", 443, b"q" * 3000))
    assert t.send_batch(b, 1, 2.0) == 1
    rig.ready(server)
    assert server.recvfrom(5000)[0] == b"q" * 3000
    server.sendto(b"r", out_sock.getsockname())
    rig.ready(out_sock)
    out = PacketBatch(2)
    assert t.receive(out, 0, 3.0) == 1
    check_udp(packet_of(out, 0), "fd00::198:1", server.getsockname()[1], CLIENT6, 6000, b"r")  # from the fake address


def socks_header(host, port):
    ip = ipaddress.ip_address(host)
    return b"\0\0\0" + (b"\x01" if ip.version == 4 else b"\x04") + ip.packed + struct.pack("!H", port)


def test_socks5_both_ways(rig, mod):
    t = rig.table
    relay = rig.udp()
    out_sock = rig.udp()
    out_sock.connect(relay.getsockname())
    sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
    k = t.attach(sid, out_sock, mod.SOCKS5)
    head = socks_header(DEST4, 53)
    assert t.route(sid, ipaddress.ip_address(DEST4).packed, 53, k, prefix=head)
    b = client_batch(*[(CLIENT4, 5000, DEST4, 53, bytes([i]) * 10) for i in range(5)])
    assert t.send_batch(b, 5, 2.0) == 5
    rig.ready(relay)
    assert [relay.recv(100) for _ in range(5)] == [head + bytes([i]) * 10 for i in range(5)]
    me = out_sock.getsockname()
    replies = [socks_header(DEST4, 53) + b"four",  # IPv4 sender
               b"\0\0\0\x04" + b"\0" * 10 + b"\xff\xff" + ipaddress.ip_address("198.18.7.7").packed + struct.pack("!H", 99) + b"mapped",
               b"\0\0\x01\x01" + b"\0" * 6 + b"fragment",  # FRAG != 0: dropped
               b"\0\0\0\x03\x07example\0\x35" + b"by name",  # no address to answer from: dropped
               b"\0\0\0\x09" + b"junk",  # unknown ATYP
               b"\0\0",  # too short
               socks_header("fd00::1", 5) + b"v6 sender to a v4 client",
               socks_header(DEST4, 53) + b"last"]
    for r in replies:
        relay.sendto(r, me)
    rig.ready(out_sock)
    out = PacketBatch(8)
    assert t.receive(out, 0, 3.0) == 3
    check_udp(packet_of(out, 0), DEST4, 53, CLIENT4, 5000, b"four")
    check_udp(packet_of(out, 1), "198.18.7.7", 99, CLIENT4, 5000, b"mapped")
    check_udp(packet_of(out, 2), DEST4, 53, CLIENT4, 5000, b"last")  # after four dropped ones: moved into place
    s = t.stats()
    assert (s["reply_fragment"], s["reply_by_name"], s["reply_malformed"],
            s["reply_wrong_family"]) == (1, 1, 2, 1)
    assert s["fast_received"] == 3


def test_too_big_for_the_client_is_dropped(rig, mod):
    t = rig.table
    out_sock, server = rig.udp(), rig.udp()
    sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
    k = t.attach(sid, out_sock, mod.DIRECT)
    server.sendto(b"y" * 2000, out_sock.getsockname())
    server.sendto(b"z" * 10, out_sock.getsockname())
    rig.ready(out_sock)
    out = PacketBatch(4, max_packet=1500)
    assert t.receive(out, 0, 1.0) == 1
    check_udp(packet_of(out, 0), "127.0.0.1", server.getsockname()[1], CLIENT4, 5000, b"z" * 10)
    assert t.stats()["reply_too_big"] == 1
    big = PacketBatch(2, max_packet=d.MAX_PACKET + 40)
    server.sendto(b"w" * 65507, out_sock.getsockname())  # the largest IPv4 UDP payload arrives whole
    rig.ready(out_sock)
    assert t.receive(big, 0, 1.0) == 1
    check_udp(packet_of(big, 0), "127.0.0.1", server.getsockname()[1], CLIENT4, 5000, b"w" * 65507)
    del k


def test_many_datagrams_in_order_round_the_sender_ring(rig, mod):
    """More bytes than the sender thread's ring holds (4 MiB), in sizes that leave odd ends at its end:
    every datagram arrives whole and in order, also SOCKS5 ones with their header."""
    t = rig.table
    server, relay, head = rig.two_routes()
    sent = {53: [], 54: []}
    got = {53: [], 54: []}
    total, n = 0, 0
    while total < 5 << 20:
        batch = []
        for _ in range(8):
            size = 1000 + (n * 337) % 7000
            port = 53 if n % 3 else 54
            payload = struct.pack("!I", n) + bytes([n % 251]) * size
            batch.append((CLIENT4, 5000, DEST4, port, payload))
            sent[port].append(payload)
            total += size
            n += 1
        b = client_batch(*batch, slots=8)
        assert t.send_batch(b, 8, 2.0) == 8
        t.drain()
        for sock, port in ((server, 53), (relay, 54)):
            while True:
                try:
                    data = sock.recv(65535)
                except BlockingIOError:
                    break
                got[port].append(data if port == 53 else data[len(head):])
                assert port == 53 or data.startswith(head)
    assert got == sent
    assert t.stats()["fast_sent"] == n


def test_a_full_batch_leaves_the_rest_for_next_time(rig, mod):
    t = rig.table
    out_sock, server = rig.udp(), rig.udp()
    sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
    t.attach(sid, out_sock, mod.DIRECT)
    for i in range(10):
        server.sendto(bytes([i]), out_sock.getsockname())
    rig.ready(out_sock)
    out = PacketBatch(4)
    got = []
    for _ in range(5):
        n = t.receive(out, 0, 1.0)
        got += [packet_of(out, i)[-1] for i in range(n)]  # the twin stays ready until a read finds nothing
    assert got == list(range(10))


def test_sessions_routes_and_sockets_come_and_go(rig, mod):
    t = rig.table
    a, b = rig.udp(), rig.udp()
    sids = [t.open(4, bytes([198, 18, 0, i]), 1000 + i, float(i)) for i in range(3)]
    assert t.sessions_open == 3
    assert t.idle(1.5) == [sids[0], sids[1]] and t.idle(1.5, most=1) == [sids[0]]
    ka = t.attach(sids[0], a, mod.DIRECT)
    kb = t.attach(sids[0], b, mod.DIRECT)
    for port in (1, 2, 3):
        assert t.route(sids[0], bytes([198, 18, 9, 9]), port, ka, to=(b"\x7f\0\0\1", 9))
    assert t.route(sids[0], bytes([198, 18, 9, 9]), 4, kb, to=(b"\x7f\0\0\1", 9))
    assert t.route(sids[0], bytes([198, 18, 9, 9]), 4, ka, to=(b"\x7f\0\0\1", 9))  # replaced, not added
    assert t.routes_open == 4
    t.detach(ka)  # its routes go with it
    assert t.routes_open == 0
    t.detach(ka)  # twice: nothing
    assert t.route(sids[0], bytes([198, 18, 9, 9]), 5, kb, to=(b"\x7f\0\0\1", 9))
    t.close_session(sids[0])
    assert t.routes_open == 0 and t.sessions_open == 2
    with pytest.raises(KeyError):
        t.counts(sids[0])
    with pytest.raises(KeyError):
        t.route(sids[1], bytes([198, 18, 9, 9]), 5, kb, to=(b"\x7f\0\0\1", 9))  # kb left with its session
    t.touch(sids[1], 50.0, 1, 10, 2, 20)
    assert t.counts(sids[1]) == (1, 10, 2, 20) and t.idle(40.0) == [sids[2]]


def test_capacities_are_bounds(mod):
    r = Rig(mod, sessions=2, routes=1, sockets=1)
    try:
        t = r.table
        s0 = t.open(4, b"\xc6\x12\0\1", 1, 0.0)
        assert t.open(4, b"\xc6\x12\0\2", 1, 0.0) >= 0
        assert t.open(4, b"\xc6\x12\0\3", 1, 0.0) == -1
        k = t.attach(s0, r.udp(), mod.DIRECT)
        assert t.attach(s0, r.udp(), mod.DIRECT) == -1
        assert t.route(s0, b"\1\1\1\1", 1, k, to=(b"\x7f\0\0\1", 9))
        assert not t.route(s0, b"\1\1\1\1", 2, k, to=(b"\x7f\0\0\1", 9))
        assert t.stats()["route_table_full"] == 1
        t.close_session(s0)
        assert t.open(4, b"\xc6\x12\0\3", 1, 0.0) >= 0  # its place is free again
    finally:
        r.close()


@pytest.mark.parametrize("bad", [
    lambda t, m, s: t.open(4, b"\1\2\3", 1, 0.0),  # an address of the wrong length
    lambda t, m, s: t.open(5, b"\1\2\3\4", 1, 0.0),
    lambda t, m, s: t.attach(0, s, 7),  # no such kind
    lambda t, m, s: t.attach(0, s, m.DIRECT, fake=b"\1" * 16),  # fake of another family
    lambda t, m, s: t.route(0, b"\1\1\1\1", 1, 0, to=None),  # DIRECT without an address
    lambda t, m, s: t.route(0, b"\1" * 16, 1, 0, to=(b"\x7f\0\0\1", 9)),  # dst of another family
])
def test_wrong_arguments_are_refused(rig, mod, bad):
    t = rig.table
    sid = t.open(4, b"\xc6\x12\0\1", 1, 0.0)
    sock = rig.udp()
    assert t.attach(sid, sock, mod.DIRECT) == 0
    with pytest.raises((ValueError, KeyError)):
        bad(t, mod, sock)


def test_the_loop_is_told(mod):
    """on_ready runs on the loop when an attached socket has a datagram."""
    from ztun.loop import Loop
    loop = Loop()
    calls = []
    t = mod.UdpTable(loop, lambda: calls.append(t.receive(PacketBatch(4), 0, 0.0)))
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        a.setblocking(False)
        sid = t.open(4, b"\xc6\x12\0\1", 7, 0.0)
        t.attach(sid, a, mod.DIRECT)
        b.sendto(b"hi", a.getsockname())
        end = time.monotonic() + 5
        while not calls and time.monotonic() < end:
            loop.run_once(0.1)
        assert calls == [1]
    finally:
        t.close()
        loop.close()
        a.close()
        b.close()


@pytest.mark.parametrize("host, family, client", [("127.0.0.1", socket.AF_INET, CLIENT4), ("::1", socket.AF_INET6, CLIENT6)],
                         ids=["ipv4", "ipv6"])
def test_a_closed_port_becomes_an_unreachable_to_the_client(rig, mod, host, family, client):
    """The destination's ICMP port unreachable (IP_RECVERR) goes to the client as one of its own, quoting its datagram."""
    if not hasattr(socket, "MSG_ERRQUEUE"):
        pytest.skip("no error queue on this platform")
    t = rig.table
    closed = socket.socket(family, socket.SOCK_DGRAM)
    closed.bind((host, 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    out_sock = rig.udp(host, family)
    dst = ipaddress.ip_address(host).packed
    sid = t.open(4 if family == socket.AF_INET else 6, ipaddress.ip_address(client).packed, 5000, 1.0)
    k = t.attach(sid, out_sock, mod.DIRECT)
    assert t.route(sid, dst, port, k, to=(dst, port))
    assert t.send_batch(client_batch((client, 5000, host, port, b"anyone?")), 1, 2.0) == 1
    rig.ready(out_sock)
    out = PacketBatch(4)
    assert t.receive(out, 0, 3.0) == 1
    pkt = packet_of(out, 0)
    if family == socket.AF_INET:
        assert (pkt[9], pkt[12:16], pkt[16:20], pkt[20], pkt[21]) == (1, dst, ipaddress.ip_address(client).packed, 3, 3)
        assert checksum(pkt[:20]) == 0 and checksum(pkt[20:]) == 0
        quote = pkt[28:]
        assert (quote[9], quote[12:16], quote[16:20]) == (17, ipaddress.ip_address(client).packed, dst)
        assert struct.unpack("!HH", quote[20:24]) == (5000, port)
    else:
        assert (pkt[6], pkt[8:24], pkt[24:40], pkt[40], pkt[41]) == (58, dst, ipaddress.ip_address(client).packed, 1, 4)
        assert checksum(pkt[40:], pseudo_sum(dst, ipaddress.ip_address(client).packed, 58, len(pkt) - 40)) == 0
        quote = pkt[48:]
        assert (quote[6], quote[8:24], quote[24:40]) == (17, ipaddress.ip_address(client).packed, dst)
        assert struct.unpack("!HH", quote[40:44]) == (5000, port)
    assert t.stats()["unreachable_to_client"] == 1


def _recv_all(sock, want, timeout=5.0):
    got, end = [], time.monotonic() + timeout
    while len(got) < want and time.monotonic() < end:
        if select.select([sock], [], [], 0.2)[0]:
            got.append(sock.recv(65535))
    return got


@_NOT_BUILT
def test_a_run_of_equal_datagrams_goes_out_as_one_gso_send_and_arrives_as_they_were():
    """40 datagrams of 1,200 bytes and a shorter last one to one destination: one UDP GSO send each
    way (direct, and SOCKS5 with each datagram's header), split by the kernel into the same datagrams."""
    rig = Rig(udptable_native)
    try:
        t = rig.table
        server, relay, head = rig.two_routes()
        for port, sock, strip in ((53, server, 0), (54, relay, len(head))):
            payloads = [struct.pack("!I", i) + bytes([i]) * 1196 for i in range(40)] + [b"last" * 75]
            b = client_batch(*[(CLIENT4, 5000, DEST4, port, p) for p in payloads], slots=len(payloads))
            assert t.send_batch(b, len(payloads), 2.0) == len(payloads)
            got = _recv_all(sock, len(payloads))
            assert [g[strip:] for g in got] == payloads
            assert strip == 0 or all(g[:strip] == head for g in got)
        s = t.stats()
        assert (s["gso_sends"], s["gso_datagrams"], s["gso_refused"]) == (2, 82, 0)
        assert s["fast_sent"] == 82
    finally:
        rig.close()


@_NOT_BUILT
def test_a_gso_send_the_kernel_refuses_goes_again_one_datagram_at_a_time():
    """A socket that may not send UDP GSO (here: without checksums, SO_NO_CHECK) refuses the run with
    EINVAL: its datagrams still go, one by one, and that route sends no more runs."""
    rig = Rig(udptable_native)
    try:
        t = rig.table
        server, out_sock = rig.udp(), rig.udp()
        out_sock.setsockopt(socket.SOL_SOCKET, 11, 1)  # SO_NO_CHECK
        sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
        k = t.attach(sid, out_sock, udptable_native.DIRECT)
        assert t.route(sid, ipaddress.ip_address(DEST4).packed, 53, k, to=(b"\x7f\x00\x00\x01", server.getsockname()[1]))
        for round_ in range(2):
            payloads = [bytes([round_, i]) * 300 for i in range(10)]
            b = client_batch(*[(CLIENT4, 5000, DEST4, 53, p) for p in payloads], slots=10)
            assert t.send_batch(b, 10, 2.0) == 10
            assert _recv_all(server, 10) == payloads
        s = t.stats()
        assert (s["gso_sends"], s["gso_refused"], s["fast_sent"], s["fast_send_error"]) == (0, 1, 20, 0)
    finally:
        rig.close()


def test_queued_datagrams_of_a_detached_socket_never_leave_from_its_reused_fd(rig, mod):
    """The sender thread may still hold datagrams of a socket when its flow detaches and closes it; the
    next socket opened gets the same fd number. None of them may go out from that new socket (they are
    skipped and counted dropped), and every datagram given is counted sent or dropped."""
    t = rig.table
    server = rig.udp()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    old = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    old.bind(("127.0.0.1", 0))
    old.setblocking(False)
    sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
    k = t.attach(sid, old, mod.DIRECT)
    assert t.route(sid, ipaddress.ip_address(DEST4).packed, 53, k, to=(b"\x7f\x00\x00\x01", server.getsockname()[1]))
    b = client_batch(*[(CLIENT4, 5000, DEST4, 53, b"%04d" % i + b"x" * 1200) for i in range(64)], slots=64)
    given = 0
    for _ in range(60):  # far faster than the thread sends them: most are still queued below
        b.verdicts[:64] = d.V_UDP
        given += t.send_batch(b, 64, 2.0)
    fd = old.fileno()
    t.detach(k)
    old.close()
    new = rig.udp()  # the lowest free fd: the one just closed
    if new.fileno() != fd:
        pytest.skip("another thread took the fd number meanwhile")
    t.drain()
    senders = set()
    while select.select([server], [], [], 0.2)[0]:
        try:
            senders.add(server.recvfrom(65535)[1])
        except BlockingIOError:
            break
    assert new.getsockname() not in senders
    stats = t.stats()
    assert given == 64 * 60 == stats["datagrams"]
    assert stats["fast_sent"] + stats["fast_send_dropped"] + stats["fast_send_error"] == given


# -- UDP_GRO on receive ----------------------------------------------------------------------------
# A sender's UDP GSO send (UDP_SEGMENT) over loopback reaches a socket with UDP_GRO as one message
# of several datagrams (its size in a UDP_GRO control message); without UDP_GRO the kernel cuts it.

_UDP_SEGMENT = 103


def gso_send(sock, datagrams, to=None):
    """One UDP GSO send of datagrams (all of the first's size, the last may be shorter)."""
    anc = [(socket.SOL_UDP, _UDP_SEGMENT, struct.pack("=H", len(datagrams[0])))]
    data = b"".join(datagrams)
    assert (sock.sendmsg([data], anc, 0, to) if to else sock.sendmsg([data], anc)) == len(data)


def numbered(n, size, last=None):
    """n datagrams of size bytes, each filled with its number; the last of `last` bytes."""
    out = [(struct.pack("!H", i) * (size // 2 + 1))[:size] for i in range(n)]
    if last is not None:
        out[-1] = (struct.pack("!H", n - 1) * (last // 2 + 1))[:last]
    return out


def resplit(batch, i):
    """Slot i of an output batch as the kernel would write it: a USO super-packet cut into its datagrams
    (by the twin's gso_split, itself checked against scapy in test_gso.py), or itself."""
    one = PacketBatch(slots=1, vnet_hdr=True, max_packet=d.MAX_PACKET + 40)
    one.set_packet(0, packet_of(batch, i))
    one.data[0, one.headroom - d.VNET_HDR_LEN : one.headroom] = batch.data[i, batch.headroom - d.VNET_HDR_LEN : batch.headroom]
    one.count = 1
    packet_py.parse_batch(one)
    assert one.meta["status"][0] == d.OK
    if not one.meta["gso_type"][0]:
        return [packet_of(one, 0)]
    out = PacketBatch(slots=256, max_packet=9000)
    n = gso_py.gso_split(one, 0, out)
    assert n > 1
    return [packet_of(out, k) for k in range(n)]


@pytest.fixture
def gro_rig(impl, monkeypatch):
    """A Rig whose table puts UDP_GRO on its sockets (ZTUN_UDP_RX_GRO=1)."""
    monkeypatch.setenv("ZTUN_UDP_RX_GRO", "1")
    r = Rig(*impl)
    yield r
    r.close()


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("kind", ["direct", "socks5"])
@pytest.mark.parametrize("uso", [False, True], ids=["split", "uso"])
def test_coalesced_replies_reach_the_client_as_the_datagrams_they_were(gro_rig, mod, family, kind, uso):
    """A burst the kernel hands over as one message (UDP_GRO): the client gets each datagram on its own,
    byte for byte and in order, the shorter last one too, with IPv4 IDs one apart; a datagram after it
    as well. With uso (an output that takes USO) a DIRECT socket's message goes out as one super-packet."""
    rig = gro_rig
    t = rig.table
    t.uso = uso
    v6 = family == "ipv6"
    host, fam = ("::1", socket.AF_INET6) if v6 else ("127.0.0.1", socket.AF_INET)
    client, dest = (CLIENT6, DEST6) if v6 else (CLIENT4, DEST4)
    out_sock, peer = rig.udp(host, fam), rig.udp(host, fam)
    sid = t.open(6 if v6 else 4, ipaddress.ip_address(client).packed, 5000, 1.0)
    k = t.attach(sid, out_sock, mod.DIRECT if kind == "direct" else mod.SOCKS5)
    assert k >= 0 and t.stats()["gro_refused"] == 0
    datagrams = numbered(12, 1000, last=333)
    head = socks_header(dest, 53) if kind == "socks5" else b""
    gso_send(peer, [head + g for g in datagrams], out_sock.getsockname())
    peer.sendto(head + b"after", out_sock.getsockname())
    rig.ready(out_sock)
    out = PacketBatch(16, max_packet=d.MAX_PACKET + 40, vnet_hdr=True)
    n = t.receive(out, 0, 2.0)
    packets = [p for i in range(n) for p in resplit(out, i)]
    src, sport = (dest, 53) if kind == "socks5" else (host, peer.getsockname()[1])
    assert len(packets) == 13
    for p, payload in zip(packets, datagrams + [b"after"]):
        check_udp(p, src, sport, client, 5000, payload)
    if not v6:
        ids = [struct.unpack("!H", p[4:6])[0] for p in packets]
        assert ids == [(ids[0] + j) & 0xFFFF for j in range(13)]
    whole = uso and kind == "direct" and mod is not udptable_py
    assert n == (2 if whole else 13)
    s = t.stats()
    assert (s["gro_receives"], s["gro_datagrams"], s["gro_uso"], s["fast_received"]) == (1, 12, 1 if whole else 0, 13)
    assert t.counts(sid)[2:] == (13, sum(map(len, datagrams)) + 5)


def test_a_burst_larger_than_the_batch_waits_for_the_next_receive(gro_rig, mod):
    """A coalesced message of more datagrams than the output has slots: the rest waits (pending) and
    comes first next time, before what the socket holds after it; a detached socket's rest is gone."""
    rig = gro_rig
    t = rig.table
    out_sock, peer = rig.udp(), rig.udp()
    sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
    k = t.attach(sid, out_sock, mod.DIRECT)
    datagrams = numbered(10, 100, last=7)
    gso_send(peer, datagrams, out_sock.getsockname())
    peer.sendto(b"after", out_sock.getsockname())
    rig.ready(out_sock)
    out = PacketBatch(4)
    got = []
    for _ in range(6):
        n = t.receive(out, 0, 1.0)
        got += [packet_of(out, i)[28:] for i in range(n)]
        if n == 4:
            assert t.pending or got[-1] == b"after"
    assert got == datagrams + [b"after"] and not t.pending
    gso_send(peer, datagrams, out_sock.getsockname())
    rig.ready(out_sock)
    assert t.receive(out, 0, 1.0) == 4 and t.pending
    t.detach(k)
    assert not t.pending and t.receive(out, 0, 1.0) == 0


@pytest.mark.parametrize("setting", [None, "0"], ids=["default", "0"])
def test_rx_gro_off_leaves_the_kernel_to_cut_bursts(monkeypatch, impl, setting):
    """By default (and with ZTUN_UDP_RX_GRO=0) no UDP_GRO on the sockets; the same datagrams arrive, one
    per message."""
    if setting is None:
        monkeypatch.delenv("ZTUN_UDP_RX_GRO", raising=False)
    else:
        monkeypatch.setenv("ZTUN_UDP_RX_GRO", setting)
    rig = Rig(*impl)
    try:
        t = rig.table
        out_sock, peer = rig.udp(), rig.udp()
        sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
        t.attach(sid, out_sock, rig.mod.DIRECT)
        datagrams = numbered(5, 500, last=1)
        gso_send(peer, datagrams, out_sock.getsockname())
        rig.ready(out_sock)
        out = PacketBatch(8)
        assert [packet_of(out, i)[28:] for i in range(t.receive(out, 0, 1.0))] == datagrams
        s = t.stats()
        assert (s["gro_receives"], s["gro_datagrams"], s["gro_refused"]) == (0, 0, 0)
        assert out_sock.getsockopt(socket.SOL_UDP, 104) == 0
    finally:
        rig.close()


@pytest.mark.parametrize("length, size, count", [(0, 0, 1), (0, 5, 1), (100, 0, 1), (100, 100, 1), (100, 200, 1), (100, 0xFFFFFFFF, 1),
                                                  (100, 99, 2), (100, 1, 100), (65507, 1000, 66), (3000, 1000, 3)])
def test_gro_count_takes_a_size_of_zero_or_past_the_message_as_one_datagram(mod, length, size, count):
    assert mod.gro_count(length, size) == count


class _Forged:
    """A socket whose messages come with a forged UDP_GRO control message (the twin reads them with
    recvmsg; the kernel never sends these): size 0, larger than the message, negative, cut short."""

    def __init__(self, sock, sizes):
        self.sock, self.sizes = sock, list(sizes)

    def fileno(self):
        return self.sock.fileno()

    def setsockopt(self, *a):
        return self.sock.setsockopt(*a)

    def recvmsg(self, n, ctrl, flags=0):
        data, _, fl, addr = self.sock.recvmsg(n, ctrl, flags)
        return data, [(socket.SOL_UDP, 104, self.sizes.pop(0))], fl, addr


def test_twin_a_forged_gro_size_of_zero_or_past_the_message_is_one_datagram(monkeypatch):
    monkeypatch.setenv("ZTUN_UDP_RX_GRO", "1")
    rig = Rig(udptable_py)
    try:
        t = rig.table
        out_sock, peer = rig.udp(), rig.udp()
        sid = t.open(4, ipaddress.ip_address(CLIENT4).packed, 5000, 1.0)
        forged = _Forged(out_sock, [struct.pack("=i", 0), struct.pack("=i", 5000), struct.pack("=i", -1), b"\x01",
                                    struct.pack("=i", 3)])
        t.attach(sid, forged, udptable_py.DIRECT)
        sent = [b"a" * 10, b"b" * 10, b"c" * 10, b"d" * 10, b"e" * 7]
        for g in sent:
            peer.sendto(g, out_sock.getsockname())
        rig.ready(out_sock)
        next(iter(t._socks.values())).ready = True
        out = PacketBatch(16)
        got = [packet_of(out, i)[28:] for i in range(t.receive(out, 0, 1.0))]
        assert got == sent[:4] + [b"eee", b"eee", b"e"]  # only the last, size 3 of 7 bytes, is cut
        assert t.stats()["gro_receives"] == 1 and t.stats()["gro_datagrams"] == 3
    finally:
        rig.close()
