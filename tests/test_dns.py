"""Fake-IP pool and DNS service: answers, forwarding through an injected outbound UDP flow, TCP framing.

Loopback only: the "outbound" is a real UDP socket on 127.0.0.1 talking to a canned upstream
server built with dnspython, both on ztun's loop.
"""

import ipaddress
import os
import socket
import time

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztun.dns import DnsService, FakeIpPool
from ztun.dns import tcp as dns_tcp
from ztun.errors import ConfigError
from ztun.loop import Loop

A, AAAA = socket.AF_INET, socket.AF_INET6
CLIENT = ("198.18.0.2", 40000)
UNUSED = ("127.0.0.1", 9)  # discard port: nothing answers there


def ip(text):
    return ipaddress.ip_address(text)


def pump(loop, cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        loop.run_once(0.02)
    return cond()


def open_fds():
    return len(os.listdir("/proc/self/fd"))


# -- the fake-IP pool ------------------------------------------------------------------------


def test_same_domain_same_address_and_lookup():
    pool = FakeIpPool()
    a = pool.address_for("Example.COM.", A)
    assert a == pool.address_for("example.com", A) and a in ipaddress.ip_network("198.18.0.0/15")
    assert a == ip("198.18.0.1")  # the network address is skipped
    b = pool.address_for("other.example", A)
    assert b != a
    assert pool.lookup(a) == "example.com" and pool.lookup(str(b)) == "other.example"
    assert pool.lookup("198.18.9.9") is None and pool.contains("198.18.9.9")  # in range, unmapped
    assert not pool.contains("198.20.0.1") and pool.lookup("198.20.0.1") is None
    assert not pool.contains("not an address") and pool.lookup("") is None
    six = pool.address_for("example.com", AAAA)
    assert six == ip("fc00::1") and pool.lookup(six) == "example.com" and pool.contains("fc00:3fff::5")
    assert not pool.contains("fc00:4000::1") and len(pool) == 3


def test_lru_eviction_reuses_the_victims_address():
    pool = FakeIpPool("10.0.0.0/29", None, capacity=100)  # 6 usable addresses: capacity 6
    assert pool.capacity(A) == 6
    names = [f"d{i}.test" for i in range(6)]
    addrs = {n: pool.address_for(n, A) for n in names}
    assert sorted(int(a) & 7 for a in addrs.values()) == [1, 2, 3, 4, 5, 6]
    pool.address_for("d0.test", A)  # touching refreshes...
    assert pool.lookup(addrs["d1.test"]) == "d1.test"  # ...and so does a lookup
    new = pool.address_for("d6.test", A)
    assert new == addrs["d2.test"]  # d2 was the least recently used
    assert pool.lookup(new) == "d6.test" and len(pool) == 6
    again = pool.address_for("d2.test", A)  # d2 comes back: d3 is now the victim
    assert again == addrs["d3.test"] and pool.lookup(addrs["d3.test"]) == "d2.test"
    assert pool.address_for("d0.test", A) == addrs["d0.test"]  # never evicted: recently used


def test_wraparound_delays_reuse_when_the_range_exceeds_capacity():
    pool = FakeIpPool("10.0.0.0/28", None, capacity=4)  # 14 usable; the cursor uses 2 * 4 of them
    handed = [int(pool.address_for(f"n{i}.test", A)) & 15 for i in range(40)]
    assert handed[:8] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert handed[8:12] == [1, 2, 3, 4]  # wrapped: the oldest evicted addresses first
    assert set(handed) == set(range(1, 9)) and len(pool) == 4
    for i, a in enumerate(handed[-4:]):  # the last four names hold the last four addresses
        assert pool.lookup(f"10.0.0.{a}") == f"n{36 + i}.test"
    assert pool.lookup("10.0.0.9") is None and pool.contains("10.0.0.9")


def test_excluded_network_and_broadcast_never_handed_out():
    pool = FakeIpPool("10.0.0.0/29", "fd00::/126", capacity=10,
                      exclude=["10.0.0.1", "10.0.0.3", "10.9.9.9", "fd00::2"])
    assert pool.capacity(A) == 4 and pool.capacity(AAAA) == 1
    seen4 = {int(pool.address_for(f"x{i}", A)) & 7 for i in range(50)}
    assert seen4 == {2, 4, 5, 6}
    seen6 = {pool.address_for(f"x{i}", AAAA) for i in range(10)}
    assert seen6 == {ip("fd00::1")}


def test_ipv6_range_is_not_precomputed():
    pool = FakeIpPool(None, "fc00::/18", capacity=3)
    start = time.perf_counter()
    got = [pool.address_for(f"h{i}.example", AAAA) for i in range(3000)]
    assert time.perf_counter() - start < 2.0
    assert all(a in ipaddress.ip_network("fc00::/18") for a in got)
    assert {int(a) - int(ip("fc00::")) for a in got} == {1, 2, 3, 4, 5, 6}
    assert len(pool) == 3 and pool.lookup(got[-1]) == "h2999.example"
    assert not pool.has(A) and pool.capacity(A) == 0 and not pool.contains("198.18.0.1")
    with pytest.raises(ValueError):
        pool.address_for("v4.example", A)


def test_pool_configuration_errors():
    for kwargs, words in [
        ({"inet4": "10.0.0.0/31"}, "no address"),
        ({"inet4": "10.0.0.1/32"}, "no address"),
        ({"inet4": "10.0.0.0/30", "exclude": ["10.0.0.1", "10.0.0.2"]}, "no address"),
        ({"inet4": "fc00::/64"}, "not an IPv4"),
        ({"inet6": "10.0.0.0/8"}, "not an IPv6"),
        ({"inet4": "10.0.0.1/8"}, "not a CIDR"),
        ({"capacity": 0}, "capacity"),
        ({"exclude": ["nope"]}, "'nope'"),
    ]:
        with pytest.raises(ConfigError, match=words):
            FakeIpPool(**kwargs)
    pool = FakeIpPool()
    with pytest.raises(ValueError):
        pool.address_for("x", 99)
    with pytest.raises(ValueError):
        pool.address_for(".", A)


# -- upstream side: a canned DNS server and a fake outbound open_udp ------------------------------


class CannedServer:
    """A UDP DNS server on 127.0.0.1 answering every query with a TXT record (or silence)."""

    def __init__(self, loop, mode="answer", family=A):
        self.loop, self.mode = loop, mode
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1" if family == A else "::1", 0))
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        self.seen = []  # parsed queries as received
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self):
        data, peer = self.sock.recvfrom(65535)
        query = dns.message.from_wire(data, keyring=False)  # a TSIG-signed query parsed, not checked
        self.seen.append(query)
        if self.mode == "silent":
            return
        answer = dns.message.make_response(query, recursion_available=True)
        name = query.question[0].name
        if self.mode == "wrong-question":
            name = dns.name.from_text("somewhere.else.")
            answer.question[0] = dns.rrset.RRset(name, query.question[0].rdclass, query.question[0].rdtype)
        answer.answer.append(dns.rrset.from_text_list(name, 300, "IN", "TXT", ['"canned"']))
        self.sock.sendto(answer.to_wire(), peer)

    def close(self):
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class FakeFlow:
    """An outbound UDP flow per the Outbound protocol, over a real loopback socket."""

    def __init__(self, loop, family, on_datagram, on_close, accept=True):
        self.loop, self.on_datagram, self.on_close, self.accept = loop, on_datagram, on_close, accept
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind(("127.0.0.1" if family == A else "::1", 0))
        self.family = family
        self.closed = False
        self.sent = []
        loop.add_reader(self.sock.fileno(), self._readable)

    def _readable(self):
        data, source = self.sock.recvfrom(65535)
        self.on_datagram(data, source)

    def send(self, payload, destination, domain=None):
        if not self.accept:
            return False
        self.sent.append((payload, destination))
        self.sock.sendto(payload, destination)
        return True

    def die(self, reason="control connection closed"):
        self.close()
        self.on_close(reason)

    def close(self):
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()


class Outbound:
    def __init__(self, loop, accept=True):
        self.loop, self.accept, self.flows = loop, accept, []

    def open_udp(self, family, on_datagram, on_close):
        flow = FakeFlow(self.loop, family, on_datagram, on_close, self.accept)
        self.flows.append(flow)
        return flow

    def close(self):
        for f in self.flows:
            f.close()


@pytest.fixture
def env():
    """loop, canned server, outbound; everything closed afterwards (fds checked)."""
    before = open_fds()
    loop = Loop()
    server = CannedServer(loop)
    out = Outbound(loop)
    services = []

    def service(mode="fake-ip", pool=..., **kw):
        kw.setdefault("open_udp", out.open_udp)
        s = DnsService(loop, mode, FakeIpPool() if pool is ... else pool, **kw)
        services.append(s)
        return s

    yield loop, server, out, service
    for s in services:
        s.close()
    out.close()
    server.close()
    loop.close()
    assert open_fds() == before


def ask(loop, service, query, server=UNUSED, wait=True):
    replies = []
    handled = service.query(query.to_wire(), CLIENT, server, replies.append)
    if wait:
        assert pump(loop, lambda: replies)
    return handled, [dns.message.from_wire(r) for r in replies]


# -- fake answers ------------------------------------------------------------------------------


@pytest.mark.parametrize("qtype, family, ttl", [("A", A, 1), ("AAAA", AAAA, 5)])
def test_fake_answer(env, qtype, family, ttl):
    loop, _, out, service = env
    dns_service = service(ttl=ttl)
    query = dns.message.make_query("WWW.Example.com", qtype, id=4321)
    handled, (answer,) = ask(loop, dns_service, query)
    assert handled and answer.id == 4321 and answer.rcode() == dns.rcode.NOERROR
    assert answer.flags & dns.flags.QR and answer.flags & dns.flags.RA and answer.flags & dns.flags.RD
    assert answer.question == query.question
    (rrset,) = answer.answer
    assert rrset.ttl == ttl and rrset.rdtype == dns.rdatatype.from_text(qtype) and len(rrset) == 1
    address = ip(rrset[0].address)
    assert address == dns_service.pool.address_for("www.example.com", family)
    assert dns_service.domain_for(address) == "www.example.com" and dns_service.is_fake(address)
    assert dns_service.counters["answered_fake"] == 1 and dns_service.counters["forwarded"] == 0
    assert out.flows == []  # nothing went upstream


def test_edns_query_gets_an_edns_answer(env):
    loop, _, _, service = env
    query = dns.message.make_query("edns.example", "A", use_edns=0, payload=1232)
    _, (answer,) = ask(loop, service(), query)
    assert answer.edns == 0 and answer.payload == 1232 and len(answer.answer) == 1


@pytest.mark.parametrize("qtype, pool", [("AAAA", FakeIpPool(inet6=None)), ("A", FakeIpPool(inet4=None))])
def test_family_without_a_range_gets_an_empty_answer(env, qtype, pool):
    loop, _, out, service = env
    dns_service = service(pool=pool)
    _, (answer,) = ask(loop, dns_service, dns.message.make_query("example.com", qtype))
    assert answer.rcode() == dns.rcode.NOERROR and answer.answer == [] and answer.flags & dns.flags.QR
    assert dns_service.counters["answered_empty"] == 1 and out.flows == []


# -- forwarding ---------------------------------------------------------------------------------


def test_other_types_are_forwarded_with_fresh_ids(env):
    loop, upstream, out, service = env
    dns_service = service()
    answers = []
    for qtype in ("TXT", "MX", "SRV", "TXT"):
        query = dns.message.make_query("svc.example", qtype, id=4242)
        handled, (answer,) = ask(loop, dns_service, query, server=upstream.address)
        assert handled and answer.id == 4242 and answer.answer[0][0].strings == (b"canned",)
        assert answer.question == query.question
        answers.append(answer)
    assert [q.question[0].rdtype for q in upstream.seen] == [dns.rdatatype.TXT, dns.rdatatype.MX,
                                                              dns.rdatatype.SRV, dns.rdatatype.TXT]
    assert any(q.id != 4242 for q in upstream.seen)  # IDs rewritten (all four equal: p = 2**-64)
    assert len(out.flows) == 1  # one flow reused for every query of the family
    c = dns_service.counters
    assert c["forwarded"] == c["upstream_replies"] == 4 and c["queries"] == 4 and dns_service.pending == 0


def test_configured_upstream_wins_and_forward_mode_forwards_a(env):
    loop, upstream, _, service = env
    dns_service = service(mode="forward", pool=None, upstream=upstream.address)
    _, (answer,) = ask(loop, dns_service, dns.message.make_query("plain.example", "A"), server=UNUSED)
    assert answer.answer[0].rdtype == dns.rdatatype.TXT  # the canned server's answer, not a fake one
    assert upstream.seen[0].question[0].rdtype == dns.rdatatype.A
    assert dns_service.domain_for("198.18.0.1") is None and not dns_service.is_fake("198.18.0.1")


def test_ipv6_upstream_gets_its_own_flow(env):
    loop, upstream4, out, service = env
    upstream6 = CannedServer(loop, family=AAAA)
    try:
        dns_service = service()
        for server in (upstream6.address, upstream4.address, upstream6.address):
            _, (answer,) = ask(loop, dns_service, dns.message.make_query("v6.example", "TXT"), server)
            assert answer.answer[0][0].strings == (b"canned",)
        assert len(upstream6.seen) == 2 and len(upstream4.seen) == 1
        assert sorted(f.family for f in out.flows) == [A, AAAA]
    finally:
        upstream6.close()


def test_fake_server_without_upstream_fails_at_once(env):
    loop, _, out, service = env
    dns_service = service()
    _, (answer,) = ask(loop, dns_service, dns.message.make_query("x.example", "TXT"), ("198.18.0.53", 53))
    assert answer.rcode() == dns.rcode.SERVFAIL and out.flows == []


def test_timeout_answers_servfail(env):
    loop, upstream, _, service = env
    upstream.mode = "silent"
    dns_service = service(timeout=0.2)
    start = time.monotonic()
    _, (answer,) = ask(loop, dns_service, dns.message.make_query("slow.example", "TXT", id=7), upstream.address)
    assert 0.15 < time.monotonic() - start < 3
    assert answer.id == 7 and answer.rcode() == dns.rcode.SERVFAIL and answer.flags & dns.flags.QR
    c = dns_service.counters
    assert c["timeouts"] == c["servfail"] == 1 and dns_service.pending == 0


def test_pending_limit(env):
    loop, upstream, _, service = env
    upstream.mode = "silent"
    dns_service = service(max_pending=2, timeout=30)
    replies = []
    for i in range(3):
        dns_service.query(dns.message.make_query(f"q{i}.example", "TXT", id=i).to_wire(),
                          CLIENT, upstream.address, replies.append)
    (answer,) = [dns.message.from_wire(r) for r in replies]  # the third, at once
    assert answer.id == 2 and answer.rcode() == dns.rcode.SERVFAIL
    assert dns_service.pending == 2 and dns_service.counters["pending_full"] == 1
    assert pump(loop, lambda: len(upstream.seen) == 2)
    dns_service.close()  # pending queries dropped, timers cancelled
    loop.run_once(0.05)
    assert dns_service.pending == 0 and len(replies) == 1


def test_replies_that_do_not_match_are_ignored(env):
    loop, upstream, out, service = env
    upstream.mode = "wrong-question"
    dns_service = service(timeout=0.3)
    _, (answer,) = ask(loop, dns_service, dns.message.make_query("asked.example", "TXT"), upstream.address)
    assert answer.rcode() == dns.rcode.SERVFAIL and dns_service.counters["unmatched"] == 1
    # A datagram from elsewhere carrying a pending ID, and a short one, are not taken either.
    upstream.mode = "silent"
    replies = []
    dns_service.query(dns.message.make_query("x.example", "TXT").to_wire(), CLIENT, upstream.address, replies.append)
    assert pump(loop, lambda: len(upstream.seen) == 2)
    forged = dns.message.make_response(upstream.seen[-1])
    flow = out.flows[0]
    with socket.socket(A, socket.SOCK_DGRAM) as spoofer:
        spoofer.sendto(forged.to_wire(), flow.sock.getsockname())
        spoofer.sendto(b"\x01\x02", flow.sock.getsockname())
        assert pump(loop, lambda: dns_service.counters["bad_reply"] == 1)
    assert replies == [] and dns_service.counters["unmatched"] == 2


def test_flow_death_fails_pending_and_reopens(env):
    loop, upstream, out, service = env
    upstream.mode = "silent"
    dns_service = service(timeout=30)
    replies = []
    dns_service.query(dns.message.make_query("a.example", "TXT", id=11).to_wire(), CLIENT,
                      upstream.address, replies.append)
    out.flows[0].die()
    (answer,) = [dns.message.from_wire(r) for r in replies]
    assert answer.id == 11 and answer.rcode() == dns.rcode.SERVFAIL
    assert dns_service.counters["upstream_closed"] == 1 and dns_service.pending == 0
    upstream.mode = "answer"
    _, (answer,) = ask(loop, dns_service, dns.message.make_query("b.example", "TXT"), upstream.address)
    assert answer.rcode() == dns.rcode.NOERROR and len(out.flows) == 2


def test_refused_send_and_no_outbound_answer_servfail(env):
    loop, upstream, _, service = env
    refusing = Outbound(loop, accept=False)
    try:
        for s in (service(open_udp=refusing.open_udp), service(open_udp=None)):
            _, (answer,) = ask(loop, s, dns.message.make_query("a.example", "TXT"), upstream.address)
            assert answer.rcode() == dns.rcode.SERVFAIL and s.counters["send_failed"] == 1
    finally:
        refusing.close()


# -- malformed input ------------------------------------------------------------------------------


def test_malformed_queries(env):
    _, _, _, service = env
    dns_service = service()
    replies = []
    assert not dns_service.query(b"\x12\x34\x01", CLIENT, UNUSED, replies.append)  # no header
    assert dns_service.query(b"\xab\xcd\x01\x00\x00\x01" + b"\xff" * 10, CLIENT, UNUSED, replies.append)
    (formerr,) = [dns.message.from_wire(r) for r in replies]
    assert formerr.id == 0xABCD and formerr.rcode() == dns.rcode.FORMERR and formerr.flags & dns.flags.RD
    response = dns.message.make_response(dns.message.make_query("r.example", "A"))
    assert not dns_service.query(response.to_wire(), CLIENT, UNUSED, replies.append)  # never answer a response
    c = dns_service.counters
    assert c["malformed"] == 3 and c["formerr"] == 1 and len(replies) == 1 and c["queries"] == 3


class Sink:
    """An outbound UDP flow that accepts every datagram into sent."""

    def __init__(self, sent):
        self.sent = sent

    def send(self, data, destination, domain=None):
        self.sent.append(data)
        return True

    def close(self):
        pass


@settings(max_examples=400, deadline=None)
@given(payload=st.binary(max_size=600))
def test_random_bytes_never_raise(payload):
    sent = []

    with Loop() as loop:
        s = DnsService(loop, "fake-ip", FakeIpPool(capacity=8), open_udp=lambda *a: Sink(sent))
        replies = []
        handled = s.query(payload, CLIENT, ("192.0.2.1", 53), replies.append)
        c = s.counters
        assert c["queries"] == 1
        if not handled:
            assert c["malformed"] == 1 and replies == []
        else:
            assert len(replies) + len(sent) == 1
            for r in replies:
                dns.message.from_wire(r)  # whatever we answer parses
        s.close()


names = st.lists(st.binary(min_size=1, max_size=20), min_size=0, max_size=4).map(
    lambda labels: dns.name.Name([*labels, b""]))


@settings(max_examples=300, deadline=None)
@given(name=names, rdtype=st.sampled_from([1, 28, 16, 255, 65, 0, 12345]), rdclass=st.sampled_from([1, 3, 255, 254]),
       flags=st.integers(0, 0xFFFF), edns=st.sampled_from([-1, 0, 1]), cut=st.integers(0, 60),
       mode=st.sampled_from(["fake-ip", "forward"]))
def test_odd_but_wellformed_queries_never_raise(name, rdtype, rdclass, flags, edns, cut, mode):
    """Queries dnspython can build (odd names, types, classes, flags, opcodes, EDNS), whole or cut short."""
    query = dns.message.make_query(name, rdtype, rdclass, use_edns=edns)
    query.flags = flags & ~dns.flags.QR
    wire = query.to_wire()
    sent = []

    with Loop() as loop:
        s = DnsService(loop, mode, FakeIpPool(capacity=8), open_udp=lambda *a: Sink(sent), timeout=0)
        replies = []
        for payload in (wire, wire[:cut]):
            s.query(payload, CLIENT, ("192.0.2.1", 53), replies.append)
        loop.run_once(0.01)  # forwarded ones time out: SERVFAIL
        for r in replies:
            answer = dns.message.from_wire(r)
            assert answer.flags & dns.flags.QR
            assert answer.id == query.id
        assert len(replies) == s.counters["queries"] - s.counters["malformed"] + s.counters["formerr"]
        s.close()


# -- TCP ---------------------------------------------------------------------------------------------


@pytest.fixture
def tcp_pair(env):
    """connect() -> (client socket, the accepted server socket handed to the service later)."""
    listener = socket.create_server(("127.0.0.1", 0))
    made = []

    def connect():
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        accepted.setblocking(False)
        client.setblocking(False)
        made.extend([client, accepted])
        return client, accepted

    yield env, connect
    for s in made:
        s.close()
    listener.close()


def frame(msg):
    wire = msg.to_wire()
    return len(wire).to_bytes(2, "big") + wire


class Reader:
    """Collects framed DNS replies from a non-blocking client socket."""

    def __init__(self, sock):
        self.sock, self.buf, self.eof = sock, bytearray(), False

    def poll(self):
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.buf += data

    def messages(self):
        out, buf = [], bytes(self.buf)
        while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
            n = int.from_bytes(buf[:2], "big")
            out.append(dns.message.from_wire(buf[2:2 + n]))
            buf = buf[2 + n:]
        return out


def test_tcp_two_queries_on_one_connection(tcp_pair):
    (loop, upstream, _, service), connect = tcp_pair
    dns_service = service()
    client, accepted = connect()
    dns_service.handle_tcp(accepted, CLIENT, upstream.address)
    q1 = dns.message.make_query("tcp.example", "A", id=1)
    q2 = dns.message.make_query("tcp.example", "TXT", id=2)
    client.sendall(frame(q1) + frame(q2)[:5])  # the second arrives in two pieces
    reader = Reader(client)
    assert pump(loop, lambda: reader.poll() or len(reader.messages()) == 1)
    client.sendall(frame(q2)[5:])
    assert pump(loop, lambda: reader.poll() or len(reader.messages()) == 2)
    a1, a2 = reader.messages()
    assert a1.id == 1 and a1.answer[0].rdtype == dns.rdatatype.A
    assert dns_service.domain_for(a1.answer[0][0].address) == "tcp.example"
    assert a2.id == 2 and a2.answer[0][0].strings == (b"canned",)
    client.shutdown(socket.SHUT_WR)
    assert pump(loop, lambda: reader.poll() or reader.eof)
    assert dns_service.tcp_connections == 0 and accepted.fileno() == -1
    assert dns_service.counters["tcp_connections"] == 1 and dns_service.counters["tcp_truncated"] == 0


def test_tcp_many_pipelined_queries_and_half_close(tcp_pair):
    (loop, upstream, _, service), connect = tcp_pair
    dns_service = service()
    client, accepted = connect()
    dns_service.handle_tcp(accepted, CLIENT, upstream.address)
    count = 3 * dns_tcp.MAX_INFLIGHT
    client.sendall(b"".join(frame(dns.message.make_query(f"n{i}.example", "TXT", id=i)) for i in range(count)))
    client.shutdown(socket.SHUT_WR)  # answers still come, then the service closes
    reader = Reader(client)
    assert pump(loop, lambda: reader.poll() or reader.eof, timeout=10)
    assert sorted(m.id for m in reader.messages()) == list(range(count))
    assert dns_service.tcp_connections == 0 and dns_service.counters["forwarded"] == count


def test_tcp_truncated_frame_and_bad_length(tcp_pair):
    (loop, _, _, service), connect = tcp_pair
    dns_service = service()
    client, accepted = connect()
    dns_service.handle_tcp(accepted)
    client.sendall(b"\x00\x64" + b"\x00" * 10)  # announces 100 bytes, sends 10
    client.shutdown(socket.SHUT_WR)
    reader = Reader(client)
    assert pump(loop, lambda: reader.poll() or reader.eof)
    assert reader.buf == b"" and dns_service.counters["tcp_truncated"] == 1 and accepted.fileno() == -1

    client, accepted = connect()
    dns_service.handle_tcp(accepted)
    client.sendall(b"\x00\x03abc")
    reader = Reader(client)
    assert pump(loop, lambda: reader.poll() or reader.eof)
    assert dns_service.counters["tcp_bad_frame"] == 1 and dns_service.tcp_connections == 0


def test_tcp_idle_and_slow_drip_are_closed(tcp_pair):
    (loop, _, _, service), connect = tcp_pair
    dns_service = service(tcp_idle_timeout=0.3)
    quiet, accepted = connect()
    dns_service.handle_tcp(accepted)
    drip, accepted2 = connect()
    dns_service.handle_tcp(accepted2)
    wire = frame(dns.message.make_query("drip.example", "A"))
    start = time.monotonic()
    readers = [Reader(quiet), Reader(drip)]
    for i in range(len(wire) - 1):  # one byte every 50 ms never completes a message in time
        if readers[1].eof:
            break
        try:
            drip.send(wire[i:i + 1])
        except OSError:
            break
        pump(loop, lambda: False, timeout=0.05)
        for r in readers:
            r.poll()
    assert pump(loop, lambda: [r.poll() for r in readers] and all(r.eof for r in readers))
    assert time.monotonic() - start < 3
    c = dns_service.counters
    assert c["tcp_idle"] == 2 and c["tcp_truncated"] == 1 and dns_service.tcp_connections == 0


def test_tcp_connection_limit_and_close(tcp_pair, monkeypatch):
    (_, _, _, service), connect = tcp_pair
    monkeypatch.setattr("ztun.dns.service.MAX_TCP_CONNECTIONS", 1)
    dns_service = service()
    _, first = connect()
    dns_service.handle_tcp(first)
    _client, refused = connect()
    dns_service.handle_tcp(refused)
    assert refused.fileno() == -1 and dns_service.counters["tcp_rejected"] == 1
    dns_service.close()
    assert first.fileno() == -1 and dns_service.tcp_connections == 0


def test_a_reload_moves_new_queries_to_the_new_outbound_and_closes_the_old_flow(env):
    loop, upstream, out, service = env
    upstream.mode = "silent"
    dns_service = service(timeout=0.3)
    replies = []
    dns_service.query(dns.message.make_query("old.example", "TXT").to_wire(), CLIENT, upstream.address, replies.append)
    assert pump(loop, lambda: len(upstream.seen) == 1)
    new = Outbound(loop)
    try:
        dns_service.set_open_udp(new.open_udp)
        assert not out.flows[0].closed  # its query is still pending
        upstream.mode = "answer"
        _, (answer,) = ask(loop, dns_service, dns.message.make_query("new.example", "TXT"), upstream.address)
        assert answer.rcode() == dns.rcode.NOERROR and len(new.flows) == 1 and len(out.flows) == 1
        assert pump(loop, lambda: len(replies) == 1) and out.flows[0].closed  # timed out: the old flow is gone
        dns_service.set_open_udp(out.open_udp)
        assert new.flows[0].closed  # nothing pending: closed at once
    finally:
        new.close()


def test_tsig_signed_queries_are_forwarded_not_refused_or_faked(env):
    """The docstring's promise: signatures survive; a signed A query gets the server's (signed) answer, not a fake one."""
    import dns.tsigkeyring

    loop, upstream, _, service = env
    dns_service = service()
    keyring = dns.tsigkeyring.from_text({"key.example.": "MTIzNDU2Nzg5MDEyMzQ1Ng=="})
    for rdtype in ("TXT", "A"):
        query = dns.message.make_query(f"signed-{rdtype}.example", rdtype)
        query.use_tsig(keyring, keyname="key.example.")
        replies = []
        assert dns_service.query(query.to_wire(), CLIENT, upstream.address, replies.append)
        assert pump(loop, lambda: replies)
        (answer,) = [dns.message.from_wire(r, keyring=False) for r in replies]
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer[0].rdtype == dns.rdatatype.TXT  # the canned one
    assert dns_service.counters["forwarded"] == 2 and dns_service.counters["malformed"] == 0


def test_resolve_asks_only_the_configured_upstream(env):
    """A direct fake-IP flow's name is looked up at dns.upstream, never at a server some client
    chose (any LAN host could otherwise pick the addresses of other hosts' flows)."""
    loop, upstream, _, service = env
    s = service()
    ask(loop, s, dns.message.make_query("x.example", "TXT"), server=upstream.address)  # a client's own choice
    asked = len(upstream.seen)
    got = []
    s.resolve("x.example", socket.AF_INET, got.append)
    pump(loop, lambda: got)
    assert got == [None] and len(upstream.seen) == asked and s.counters["send_failed"] >= 1
    s = service(upstream=upstream.address)
    s.resolve("x.example", socket.AF_INET, got.append)
    pump(loop, lambda: len(got) == 2)
    assert got[1] is None and upstream.seen[-1].question[0].rdtype == dns.rdatatype.A  # asked (a TXT-only answer)
