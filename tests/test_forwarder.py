"""Forwarder: which outbound each flow gets, what a block or a failed connect tells the client, UDP per destination."""

import dataclasses
import logging
import ipaddress
import socket
import time
from types import SimpleNamespace

from ztun.appliance.forwarder import Forwarder
from ztun.appliance.rules import Rules
from ztun.stack.handler import Flow, Verdict
from ztun.loop import Loop

C = ("198.18.0.2", 40000)


class FakeOutbound:
    blocks = False
    resolves_names = False
    proxy_address = None

    def __init__(self, name, fail=None):
        self.name, self.fail = name, fail
        self.tcp: list = []
        self.udp: list = []
        self.counters = {"tcp_ok": 0}

    def open_tcp(self, destination, on_done, domain=None):
        self.tcp.append((destination, domain))
        self.loop.call_soon(on_done, *((None, self.fail) if self.fail else (socket.socket(), None)))
        return SimpleNamespace(cancel=lambda: None)

    def open_udp(self, family, on_datagram, on_close):
        flow = SimpleNamespace(sent=[], closed=False, on_datagram=on_datagram, on_close=on_close)
        flow.send = lambda payload, destination, domain=None: flow.sent.append((payload, destination, domain)) or True
        flow.close = lambda: setattr(flow, "closed", True)
        flow.hand_over = lambda attach: False  # no table here: every datagram comes through send
        self.udp.append(flow)
        return flow

    def close(self):
        pass


class FakeSession:
    def __init__(self, source, destination):
        self.source, self.destination = source, destination
        self.flow = Flow(17, source, destination)
        self.bytes_up = self.bytes_down = 0
        self.replies: list = []
        self.on_datagram = self.on_close = None

    def send(self, payload, from_address):
        self.replies.append((payload, from_address))
        return True

    def close(self):
        if self.on_close is not None:
            self.on_close(self, "closed")


class FakeDns:
    def __init__(self):
        net = ipaddress.ip_network("198.18.128.0/20")
        self.pool = SimpleNamespace(contains=lambda a: ipaddress.ip_address(a) in net)
        self.names = {"198.18.128.5": "web.example", "198.18.128.6": "ads.blocked.example",
                      "198.18.128.7": "direct.example"}
        self.queries: list = []
        self.resolving: list = []

    def is_fake(self, address):
        return self.pool.contains(address)

    def resolve(self, domain, family, on_done):
        self.resolving.append(domain)
        on_done("198.19.1.77")

    def close(self):
        self.closed = True

    def domain_for(self, address):
        return self.names.get(str(address))

    def query(self, payload, client, server, reply):
        self.queries.append((payload, client, server))
        reply(b"answer")


def rule(outbound, **kw):
    fields = dict(cidr=(), port=(), protocol=frozenset(), source=(), domain=(), domain_suffix=(), domain_keyword=())
    fields.update(kw)
    return SimpleNamespace(outbound=outbound, **fields)


def setup(loop, *, dns=None, fail=None):
    proxy, direct = FakeOutbound("proxy", fail), FakeOutbound("direct")
    proxy.loop = direct.loop = loop
    proxy.resolves_names = True  # as a SOCKS5 proxy: it is given the name
    rules = Rules(SimpleNamespace(default="proxy", rules=(
        rule("direct", cidr=("198.19.1.0/24",)), rule("block", cidr=("198.19.2.0/24",)),
        rule("block", domain_suffix=("blocked.example",)),
        rule("direct", domain=("direct.example",)))))
    return Forwarder(loop, {"proxy": proxy, "direct": direct}, rules, dns=dns), proxy, direct


def run(loop, n=5):
    for _ in range(n):
        loop.run_once(0.01)


def test_tcp_goes_to_the_outbound_its_rule_picks_and_waits_for_the_connect():
    with Loop() as loop:
        fwd, proxy, direct = setup(loop)
        decisions = []
        assert fwd.prepare(Flow(6, C, ("198.19.0.1", 80), on_decide=lambda f, v: decisions.append(v))) == Verdict.DEFER
        assert fwd.prepare(Flow(6, C, ("198.19.1.1", 80), on_decide=lambda f, v: decisions.append(v))) == Verdict.DEFER
        assert fwd.prepare(Flow(6, C, ("198.19.2.1", 80), on_decide=lambda f, v: decisions.append(v))) == Verdict.REJECT
        assert [f["state"] for f in fwd.snapshot_flows()] == ["connecting", "connecting"]
        run(loop)
        assert decisions == [Verdict.ALLOW, Verdict.ALLOW]
        assert proxy.tcp == [(("198.19.0.1", 80), None)] and direct.tcp == [(("198.19.1.1", 80), None)]
        assert {f["outbound"] for f in fwd.snapshot_flows()} == {"proxy", "direct"}
        assert fwd.counters["tcp_blocked"] == 1
        fwd.close()
        assert fwd.snapshot_flows() == []


def test_a_failed_outbound_connect_refuses_the_client():
    with Loop() as loop:
        fwd, proxy, _ = setup(loop, fail=ConnectionRefusedError(111, "socks5 proxy: refused"))
        decisions = []
        fwd.prepare(Flow(6, C, ("198.19.0.1", 80), on_decide=lambda f, v: decisions.append(v)))
        run(loop)
        assert decisions == [Verdict.REJECT] and fwd.counters["tcp_failed"] == 1
        assert fwd.snapshot_flows() == []


def test_fake_ip_destinations_carry_their_domain_and_unknown_ones_are_refused():
    with Loop() as loop:
        fwd, proxy, direct = setup(loop, dns=FakeDns())
        fwd.prepare(Flow(6, C, ("198.18.128.5", 443)))
        assert proxy.tcp == [(("198.18.128.5", 443), "web.example")]
        assert fwd.prepare(Flow(6, C, ("198.18.128.6", 443))) == Verdict.REJECT  # blocked by domain
        assert fwd.prepare(Flow(6, C, ("198.18.128.9", 443))) == Verdict.REJECT  # no mapping
        assert fwd.counters["fake_ip_unknown"] == 1
        fwd.prepare(Flow(6, C, ("198.18.128.7", 443)))  # direct needs the real address
        assert fwd.dns.resolving == ["direct.example"] and direct.tcp == [(("198.19.1.77", 443), None)]
        assert fwd.prepare(Flow(6, C, ("198.19.0.1", 53))) == Verdict.ALLOW  # DNS over TCP: answered here
        fwd.close()


def test_udp_routes_each_destination_and_answers_dns():
    with Loop() as loop:
        dns = FakeDns()
        fwd, proxy, direct = setup(loop, dns=dns)
        assert fwd.prepare(Flow(17, C, ("198.19.2.1", 9))) == Verdict.REJECT
        s = FakeSession(C, ("198.19.0.1", 9))
        assert fwd.prepare(s.flow) == Verdict.ALLOW  # the session's flow, as the stack passes it
        fwd.handle_udp(s)
        s.on_datagram(b"a", ("198.19.0.1", 9))
        s.on_datagram(b"b", ("198.19.0.2", 9))
        s.on_datagram(b"c", ("198.19.1.1", 9))
        assert s.on_datagram(b"d", ("198.19.2.1", 9)) == Verdict.REJECT  # blocked: ICMP unreachable, counted
        s.on_datagram(b"e", ("198.18.128.5", 443))  # fake: a flow of its own, by name
        s.on_datagram(b"q", ("198.19.0.53", 53))
        s.on_datagram(b"f", ("198.18.128.7", 443))  # fake, direct: sent to the resolved address
        assert len(proxy.udp) == 2 and len(direct.udp) == 2
        assert direct.udp[1].sent == [(b"f", ("198.19.1.77", 443), None)]
        assert proxy.udp[0].sent == [(b"a", ("198.19.0.1", 9), None), (b"b", ("198.19.0.2", 9), None)]
        assert proxy.udp[1].sent == [(b"e", ("198.18.128.5", 443), "web.example")]
        assert direct.udp[0].sent == [(b"c", ("198.19.1.1", 9), None)]
        assert fwd.counters["udp_blocked"] == 2
        assert dns.queries == [(b"q", C, ("198.19.0.53", 53))] and (b"answer", ("198.19.0.53", 53)) in s.replies
        proxy.udp[1].on_datagram(b"reply", ("198.19.0.1", 443))
        assert (b"reply", ("198.18.128.5", 443)) in s.replies  # the fake address the client used
        s.on_close(s, "idle")
        assert all(f.closed for f in proxy.udp + direct.udp) and fwd.snapshot_flows() == []


def test_icmp_is_asked_only_when_a_rule_may_block_it():
    with Loop() as loop:
        fwd, _, _ = setup(loop)
        assert fwd.icmp_echo == "ask"
        assert fwd.handle_icmp(Flow(1, C, ("198.19.2.1", 0))) == Verdict.DROP
        assert fwd.handle_icmp(Flow(1, C, ("198.19.0.1", 0))) == Verdict.ALLOW
        fwd.configure(fwd.outbounds, Rules(SimpleNamespace(default="proxy", rules=())))
        assert fwd.icmp_echo == "reply"


def test_a_fake_ip_whose_lookup_fails_at_once_is_refused_after_prepare_returns():
    """The stack only takes decide() for a flow it holds: a verdict given inside prepare() is lost."""
    from ztun.dns.fakeip import FakeIpPool
    from ztun.dns.service import DnsService

    with Loop() as loop:
        fwd, proxy, direct = setup(loop)
        refusing = SimpleNamespace(send=lambda *a: False, close=lambda: None)  # e.g. sendto: network unreachable
        pool = FakeIpPool("198.18.128.0/20", None)
        fwd.dns = DnsService(loop, "fake-ip", pool, upstream=("198.19.1.53", 53), open_udp=lambda *a: refusing)
        fake = str(pool.address_for("direct.example", socket.AF_INET))
        returned, decisions = [], []
        assert fwd.prepare(Flow(6, C, (fake, 443), on_decide=lambda f, v: decisions.append((bool(returned), v)))) == Verdict.DEFER
        returned.append(True)
        run(loop)
        assert decisions == [(True, Verdict.REJECT)] and fwd.counters["tcp_failed"] == 1
        assert fwd.snapshot_flows() == []
        fwd.close()


def test_an_outbound_that_raises_on_open_leaves_no_flow_behind():
    with Loop() as loop:
        fwd, proxy, direct = setup(loop)

        def no_fds(destination, on_done, domain=None):
            raise OSError(24, "Too many open files")

        proxy.open_tcp = no_fds
        decisions = []
        assert fwd.prepare(Flow(6, C, ("198.19.0.1", 80), on_decide=lambda f, v: decisions.append(v))) == Verdict.DEFER
        run(loop)
        assert decisions == [Verdict.REJECT] and fwd.counters["tcp_failed"] == 1
        assert fwd.snapshot_flows() == []
        fwd.close()


def test_a_session_sweeping_fake_ip_ports_and_addresses_holds_a_bounded_number_of_flows():
    """Each outbound UDP flow is a socket (two for SOCKS5): a client must not open one per port, nor without limit."""
    from ztun.appliance import udp_relay

    with Loop() as loop:
        dns = FakeDns()
        fwd, proxy, direct = setup(loop, dns=dns)
        s = FakeSession(C, ("198.18.128.5", 1))
        fwd.handle_udp(s)
        for port in range(1, 500):
            s.on_datagram(b"p", ("198.18.128.5", port))  # by name through the proxy
            s.on_datagram(b"d", ("198.18.128.7", port))  # resolved, then direct
        assert len(proxy.udp) == 1 and len(direct.udp) == 1 and dns.resolving == ["direct.example"]
        assert direct.udp[0].sent[-1] == (b"d", ("198.19.1.77", 499), None)
        proxy.udp[0].on_datagram(b"r", ("web.example", 499))
        assert s.replies[-1] == (b"r", ("198.18.128.5", 499))
        for i in range(udp_relay.UDP_FAKE_FLOWS * 3):
            address = str(ipaddress.ip_address("198.18.129.0") + i)
            dns.names[address] = f"host{i}.example"
            s.on_datagram(b"x", (address, 443))
        open_flows = [f for f in proxy.udp + direct.udp if not f.closed]
        assert len(open_flows) <= udp_relay.UDP_FAKE_FLOWS + 2
        assert len(fwd.udp[s].resolved) <= udp_relay.UDP_FAKE_FLOWS
        s.on_close(s, "idle")
        assert all(f.closed for f in proxy.udp + direct.udp)
        fwd.close()


def _config(tmp_path, proxy):
    from ztun.appliance import config as config_mod

    path = tmp_path / "ztun.toml"
    path.write_text(f'[[outbounds]]\nname = "proxy"\nurl = "socks5://{proxy}"\n'
                    '[dns]\nmode = "fake-ip"\nupstream = "198.19.0.53:53"\n[route]\ndefault = "proxy"\n')
    return config_mod.load(str(path))


def test_a_reload_sends_dns_through_the_reloaded_outbound(tmp_path):
    from ztun.appliance.app import build_handler, reload

    with Loop() as loop:
        old = _config(tmp_path, "198.19.0.10:1080")
        fwd = build_handler(loop, old)
        try:
            assert fwd.dns.open_udp.__self__ is fwd.outbounds["proxy"]
            fwd.outbounds["proxy"].counters["tcp_failed"] = 3
            new = _config(tmp_path, "198.19.0.11:1080")
            assert reload(fwd, loop, old, new) == []
            assert fwd.outbounds["proxy"].proxy_address == ("198.19.0.11", 1080)
            assert fwd.dns.open_udp.__self__ is fwd.outbounds["proxy"]
            assert fwd.outbounds["proxy"].counters["tcp_failed"] == 3  # counters go on (no reset for Prometheus)
            changed = dataclasses.replace(new, dns=dataclasses.replace(new.dns, outbound="direct"))
            assert reload(fwd, loop, new, changed) == []  # dns.outbound applies now: no "restart" warning
            assert fwd.dns.open_udp.__self__ is fwd.outbounds["direct"]
        finally:
            fwd.close()


def test_a_udp_flow_keeps_sending_as_its_own_outbound_needs_after_a_reload():
    """A direct flow must never be given a fake address because the reloaded outbound of that name takes names."""
    with Loop() as loop:
        dns = FakeDns()
        fwd, proxy, direct = setup(loop, dns=dns)
        s = FakeSession(C, ("198.18.128.7", 443))
        fwd.handle_udp(s)
        s.on_datagram(b"1", ("198.18.128.7", 443))
        socks_like = FakeOutbound("direct")
        socks_like.loop, socks_like.resolves_names = loop, True
        fwd.configure({"proxy": proxy, "direct": socks_like}, fwd.rules)
        s.on_datagram(b"2", ("198.18.128.7", 443))
        assert direct.udp[0].sent == [(b"1", ("198.19.1.77", 443), None), (b"2", ("198.19.1.77", 443), None)]
        s.on_close(s, "idle")
        fwd.close()


def test_a_fake_ipv6_destination_routed_direct_falls_back_to_the_names_ipv4_address():
    """The client got a fake AAAA (ztun answers them all); a name with only A records still connects, over IPv4."""

    class V4OnlyDns(FakeDns):
        def is_fake(self, address):
            return str(address).startswith("fd00:f::") or super().is_fake(address)

        def resolve(self, domain, family, on_done):
            self.resolving.append((domain, family))
            loop.call_soon(on_done, "198.19.1.77" if family == socket.AF_INET else None)

    with Loop() as loop:
        dns = V4OnlyDns()
        dns.names["fd00:f::5"] = "direct.example"
        fwd, proxy, direct = setup(loop, dns=dns)
        decisions = []
        assert fwd.prepare(Flow(6, ("fd00::2", 40000), ("fd00:f::5", 443), on_decide=lambda f, v: decisions.append(v))) == Verdict.DEFER
        run(loop)
        assert dns.resolving == [("direct.example", socket.AF_INET6), ("direct.example", socket.AF_INET)]
        assert direct.tcp == [(("198.19.1.77", 443), None)] and decisions == [Verdict.ALLOW]
        fwd.close()


def test_a_reload_does_not_look_up_an_unchanged_proxy_name_again(tmp_path, monkeypatch):
    """A SIGHUP handler runs on the loop: a blocking lookup there (through the TUN it serves) stalls every flow."""
    from ztun.appliance.app import build_handler, reload

    lookups = []

    def getaddrinfo(host, port, *a, **k):
        lookups.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("198.19.0.10", port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with Loop() as loop:
        old = _config(tmp_path, "proxy.test:1080")
        fwd = build_handler(loop, old)
        try:
            assert lookups == ["proxy.test"]
            for _ in range(2):
                assert reload(fwd, loop, old, _config(tmp_path, "proxy.test:1080")) == []
            assert lookups == ["proxy.test"] and fwd.outbounds["proxy"].proxy_address == ("198.19.0.10", 1080)
            reload(fwd, loop, old, _config(tmp_path, "other.test:1080"))
            assert lookups == ["proxy.test", "other.test"]
        finally:
            fwd.close()


def test_a_failed_lookup_for_a_udp_fake_ip_destination_is_tried_again(monkeypatch):
    """One lost DNS answer must not leave a session that keeps sending (VoIP, VPN keepalives) without a route."""
    from ztun.appliance import udp_relay

    monkeypatch.setattr(udp_relay, "RESOLVE_RETRY", 0.05)

    class FlakyDns(FakeDns):
        def resolve(self, domain, family, on_done):
            self.resolving.append(domain)
            loop.call_soon(on_done, None if len(self.resolving) == 1 else "198.19.1.77")

    with Loop() as loop:
        dns = FlakyDns()
        fwd, proxy, direct = setup(loop, dns=dns)
        s = FakeSession(C, ("198.18.128.7", 443))
        fwd.handle_udp(s)
        s.on_datagram(b"1", ("198.18.128.7", 443))
        run(loop, 2)
        s.on_datagram(b"2", ("198.18.128.7", 443))  # the failure is remembered for a moment: no query storm
        assert dns.resolving == ["direct.example"] and fwd.counters["udp_unresolved"] == 2
        end = time.monotonic() + 5
        while not direct.udp[0].sent and time.monotonic() < end:
            run(loop, 2)
            s.on_datagram(b"3", ("198.18.128.7", 443))
        assert direct.udp[0].sent[-1] == (b"3", ("198.19.1.77", 443), None) and len(dns.resolving) == 2
        s.on_close(s, "idle")
        fwd.close()


def test_udp_replies_from_an_ipv4_mapped_source_reach_an_ipv4_client():
    """A dual-stack SOCKS5 relay may name an IPv4 sender as ::ffff:a.b.c.d (ATYP 4)."""
    with Loop() as loop:
        fwd, proxy, direct = setup(loop)
        s = FakeSession(C, ("198.19.0.1", 9))
        fwd.handle_udp(s)
        s.on_datagram(b"q", ("198.19.0.1", 9))
        proxy.udp[0].on_datagram(b"r", ("::ffff:198.19.0.1", 9))
        assert s.replies == [(b"r", ("198.19.0.1", 9))]
        s.on_close(s, "idle")
        fwd.close()


def test_connected_outbounds_whose_client_never_comes_are_closed_in_order(monkeypatch):
    from ztun.appliance import forwarder

    monkeypatch.setattr(forwarder, "CLAIM_TIMEOUT", 0.4)
    with Loop() as loop:
        fwd, proxy, _ = setup(loop)
        decisions = []
        start = time.monotonic()
        fwd.prepare(Flow(6, C, ("198.19.0.1", 80), on_decide=lambda f, v: decisions.append(v)))
        run(loop)
        while time.monotonic() - start < 0.2:
            loop.run_once(0.01)
        fwd.prepare(Flow(6, C, ("198.19.0.2", 80), on_decide=lambda f, v: decisions.append(v)))
        run(loop)
        assert decisions == [Verdict.ALLOW, Verdict.ALLOW] and len(fwd.snapshot_flows()) == 2
        while time.monotonic() - start < 0.5:  # the first one's claim ran out, the second's not yet
            loop.run_once(0.01)
        assert [f["destination"] for f in fwd.snapshot_flows()] == ["198.19.0.2:80"] and fwd.counters["tcp_unclaimed"] == 1
        while time.monotonic() - start < 0.8:
            loop.run_once(0.01)
        assert fwd.snapshot_flows() == [] and fwd.counters["tcp_unclaimed"] == 2
        assert fwd._claim_timer is None  # nothing waits: no timer either
        fwd.close()


def test_an_outbound_named_dns_is_an_outbound_like_any_other():
    """Only port 53 with a DNS service goes to the service; a user's outbound may be called "dns"."""
    with Loop() as loop:
        dns_out = FakeOutbound("dns")
        dns_out.loop = loop
        rules = Rules(SimpleNamespace(default="dns", rules=()))
        fwd = Forwarder(loop, {"dns": dns_out}, rules)
        decisions = []
        flow = Flow(6, C, ("198.19.0.1", 80), on_decide=lambda f, v: decisions.append(v))
        assert fwd.prepare(flow) == Verdict.DEFER
        run(loop)
        assert decisions == [Verdict.ALLOW] and flow.outbound == "dns"
        client, peer = socket.socketpair()
        fwd.handle_tcp(client, flow)
        assert flow.state == "relaying" and flow.carrier is not None
        fwd.close()
        peer.close()


def test_closing_logs_and_totals_the_open_udp_sessions(caplog):
    with Loop() as loop:
        fwd, proxy, _ = setup(loop)
        s = FakeSession(C, ("198.19.0.1", 9))
        assert fwd.prepare(s.flow) == Verdict.ALLOW
        s.flow.carrier = s
        fwd.handle_udp(s)
        s.on_datagram(b"q", ("198.19.0.1", 9))
        s.bytes_up, s.bytes_down = 10, 20
        with caplog.at_level("INFO", "ztun.flows"):
            fwd.close()
        assert fwd.bytes_total() == (10, 20) and fwd.snapshot_flows() == []
        assert "udp 198.18.0.2:40000 -> 198.19.0.1:9 via proxy up 10 down 20 bytes" in caplog.text


def test_blocks_are_counted_on_the_block_outbound_and_stale_fake_ips_once():
    with Loop() as loop:
        fwd, _, _ = setup(loop, dns=FakeDns())
        assert fwd.prepare(Flow(6, C, ("198.19.2.1", 80))) == Verdict.REJECT
        assert fwd.prepare(Flow(17, C, ("198.19.2.1", 9))) == Verdict.REJECT
        assert fwd.outbound_counters()["block"] == {"tcp_refused": 1, "udp_refused": 1, "udp_dropped": 0}
        # ICMP to a fake address with no name: the rules decide without a domain, nothing is counted
        assert fwd.handle_icmp(Flow(1, C, ("198.18.128.9", 0))) == Verdict.ALLOW
        assert fwd.counters["fake_ip_unknown"] == 0
        fwd.close()


def test_a_relay_the_engine_cannot_take_ends_the_flow_counted(caplog):
    """The relay engine is full: the client is reset, the flow leaves the table with its line, counted."""
    from ztun import _fast
    from ztun.outbound import relay

    with Loop() as loop:
        fwd, proxy, _ = setup(loop)
        engine = loop.shared[_fast.relay.RelayEngine] = _fast.relay.RelayEngine(loop, relay._ended, capacity=1)
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        relay.Relay(loop, b, c, engine=engine)  # the one relay it has room for
        flow = Flow(6, C, ("198.19.0.1", 80), on_decide=lambda f, v: None)
        assert fwd.prepare(flow) == Verdict.DEFER
        run(loop)
        client, peer = socket.socketpair()
        with caplog.at_level(logging.INFO, logger="ztun"):
            fwd.handle_tcp(client, flow)
        assert fwd.counters["tcp_relay_failed"] == 1 and fwd.snapshot_flows() == []
        assert "relay not started" in caplog.text
        peer.settimeout(5)
        assert peer.recv(1) == b""  # its client side is gone
        fwd.close()
        for sock in (peer, a, d):
            sock.close()


def test_the_api_closes_flows_by_id_whatever_their_state():
    """close_flows (DELETE /connections[/id]): a connecting flow's client is refused, a connected one's
    outbound socket closed (its client gets a reset when it comes), a UDP session ended; other ids stay."""
    with Loop() as loop:
        fwd, proxy, _ = setup(loop)
        proxy.open_tcp = lambda destination, on_done, domain=None: SimpleNamespace(cancel=lambda: cancelled.append(1))
        cancelled, decisions = [], []
        connecting = Flow(6, C, ("198.19.0.1", 80), id=1, on_decide=lambda f, v: decisions.append(v))
        assert fwd.prepare(connecting) == Verdict.DEFER
        accepting = Flow(6, C, ("198.19.1.1", 80), id=2, on_decide=lambda f, v: None)
        fwd.prepare(accepting)
        run(loop)
        assert accepting.state == "accepting" and accepting.remote is not None
        remote = accepting.remote
        s = FakeSession(C, ("198.19.0.1", 9))
        s.flow.id = 3
        fwd.prepare(s.flow)
        s.flow.carrier = s
        fwd.handle_udp(s)
        assert connecting.rule == ("Match", "") and accepting.rule == ("IPCIDR", "198.19.1.0/24")
        assert fwd.close_flows({2, 99}) == 1
        assert remote.fileno() == -1 and [f["id"] for f in fwd.snapshot_flows()] == [1, 3]
        assert fwd.close_flows(None) == 2
        assert decisions == [Verdict.REJECT] and cancelled == [1]
        assert fwd.snapshot_flows() == [] and fwd.udp == {} and fwd.gauges()["tcp_pending"] == 0
        fwd.close()
