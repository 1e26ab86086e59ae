"""Forwarder: the appliance's PacketHandler: each new flow to the outbound its rules choose.

TCP: the outbound connect happens first (the client's SYN waits), so a refused or timed-out
connect, or a proxy that refuses, reaches the client as a refused connect; the accepted
client socket is then relayed to the connected one. A flow whose outbound is "block" is
refused at once (TCP reset, ICMP unreachable, administratively prohibited, for UDP).

UDP: a session is one client endpoint; each datagram's destination picks its outbound (a
rule may send one destination through the proxy and another direct), and each outbound gets
one UDP flow per session, opened on first use. A destination that is a fake-IP address gets
a flow of its own, so its replies can be given back the fake address as their source.

DNS (with a DnsService): UDP and TCP port 53 to any address is answered by the service.
Fake-IP destinations carry their domain to the rules and to the outbound (SOCKS5 CONNECT by
name). ICMP echo is answered by the stack; asked per packet only when a rule may block it.
"""

import ipaddress
import itertools
import logging
import socket
import time

from ..net import abort, endpoint_text
from ..outbound.relay import PIPES, Relay
from ..stack.handler import Verdict

log = logging.getLogger("ztun.flows")

CLAIM_TIMEOUT = 30.0  # a connected outbound socket whose client never completes its handshake is closed
BLOCK = "block"
DNS_PORT = 53
UDP_FAKE_FLOWS = 32  # outbound flows a UDP session keeps for fake-IP addresses; the oldest gives way
RESOLVE_RETRY = 5.0  # seconds a failed lookup for a UDP fake-IP destination stands before it is asked again
_ids = itertools.count(1)


class FlowRecord:
    """What the status command shows of one flow, and what its closing log line says."""

    __slots__ = ("id", "proto", "source", "destination", "domain", "outbound", "state", "started", "relay", "session")

    def __init__(self, proto, source, destination, domain, outbound, state):
        self.id = next(_ids)
        self.proto, self.source, self.destination = proto, source, destination
        self.domain, self.outbound, self.state = domain, outbound, state
        self.started = time.monotonic()
        self.relay = self.session = None

    @property
    def bytes_up(self) -> int:
        if self.relay is not None:
            return self.relay.bytes_up
        return self.session.bytes_up if self.session is not None else 0

    @property
    def bytes_down(self) -> int:
        if self.relay is not None:
            return self.relay.bytes_down
        return self.session.bytes_down if self.session is not None else 0

    def as_dict(self, now: float) -> dict:
        return {"id": self.id, "proto": self.proto, "source": endpoint_text(self.source), "destination": endpoint_text(self.destination),
                "domain": self.domain, "outbound": self.outbound, "state": self.state,
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "age_s": round(now - self.started, 3)}

    def describe(self) -> str:
        domain = f" [{self.domain}]" if self.domain else ""
        return f"{self.proto} {endpoint_text(self.source)} -> {endpoint_text(self.destination)}{domain} via {self.outbound}"


class Forwarder:
    """Relays TCP and UDP flows through the outbounds chosen by the rules."""

    def __init__(self, loop, outbounds: dict, rules, *, dns=None, tcp_idle_timeout: float = 7200.0):
        self.loop = loop
        self.tcp_idle_timeout = tcp_idle_timeout
        self.outbounds: dict = {}
        self.rules = None
        self.dns = dns
        self.configure(outbounds, rules)
        # (source, destination) -> (remote socket, claim deadline, FlowRecord), oldest first: one
        # timer for all of them (_claim_sweep), not one per connection
        self._ready: dict = {}
        self._claim_timer = None
        self.flows: dict = {}  # id -> FlowRecord, every open flow
        self.connecting: dict = {}  # FlowRecord -> pending outbound connect
        self.udp: dict = {}  # session -> _UdpRelay
        self.counters = {"tcp_connected": 0, "tcp_failed": 0, "tcp_unclaimed": 0, "tcp_blocked": 0,
                         "udp_sessions": 0, "udp_blocked": 0, "udp_send_failed": 0, "udp_unresolved": 0, "udp_reply_by_name": 0, "dns_tcp": 0,
                         "udp_fake_flows_evicted": 0,
                         "fake_ip_unknown": 0,
                         "bytes_up": 0, "bytes_down": 0}  # bytes of the flows that ended

    def configure(self, outbounds: dict, rules) -> None:
        """Use these outbounds and rules for new flows (a reload); open flows keep theirs."""
        missing = rules.outbounds() - set(outbounds) - {BLOCK}
        if missing:
            raise ValueError(f"the rules name outbounds that do not exist: {', '.join(sorted(missing))}")
        self.outbounds, self.rules = dict(outbounds), rules
        # The stack reads this per batch: per-packet ICMP questions only when a rule may block echo.
        self.icmp_echo = "ask" if rules.may_choose("icmp", BLOCK) else "reply"

    # -- choosing -----------------------------------------------------------------

    def _domain(self, destination) -> tuple:
        """(domain or None, known): known is False for a fake-IP address with no mapping (stale)."""
        if self.dns is None or not self.dns.is_fake(destination[0]):
            return None, True
        domain = self.dns.domain_for(destination[0])
        return domain, domain is not None

    def _dns_intercepts(self, destination) -> bool:
        return self.dns is not None and destination[1] == DNS_PORT

    # -- TCP ----------------------------------------------------------------------

    def prepare(self, flow, decide):
        if flow.proto != socket.IPPROTO_TCP:
            return self._prepare_udp(flow)
        src, dst = flow.source, flow.destination
        if self._dns_intercepts(dst):
            return Verdict.ALLOW  # answered by the DNS service in handle_tcp
        domain, known = self._domain(dst)
        if not known:
            self.counters["fake_ip_unknown"] += 1
            log.info("tcp %s -> %s: a fake-IP address with no domain (expired mapping?): refused", endpoint_text(src), endpoint_text(dst))
            return Verdict.REJECT
        name = self.rules.match("tcp", src, dst, domain)
        record = FlowRecord("tcp", src, dst, domain, name, "connecting")
        if name == BLOCK:
            self.counters["tcp_blocked"] += 1
            log.info("%s: blocked", record.describe())
            return Verdict.REJECT
        key = (src, dst)

        def done(remote, error):
            self.connecting.pop(record, None)
            if error is not None:
                self.flows.pop(record.id, None)
                self.counters["tcp_failed"] += 1
                log.info("%s: %s", record.describe(), error.strerror or error)
                decide(Verdict.REJECT)
                return
            self.counters["tcp_connected"] += 1
            old = self._ready.pop(key, None)
            if old is not None:
                self._discard(old)
            record.state = "accepting"
            self._ready[key] = (remote, time.monotonic() + CLAIM_TIMEOUT, record)
            if self._claim_timer is None:
                self._claim_timer = self.loop.call_later(CLAIM_TIMEOUT, self._claim_sweep)
            decide(Verdict.ALLOW)

        self.flows[record.id] = record
        outbound = self.outbounds[name]
        if domain is not None and not getattr(outbound, "resolves_names", False):
            self._resolve_then_connect(record, outbound, done)
            return Verdict.DEFER
        self._open_tcp(record, outbound, dst, domain, done)
        return Verdict.DEFER

    def _open_tcp(self, record, outbound, destination, domain, done):
        """outbound.open_tcp, its failure to even start (no fds, ...) reported through done like a refused connect."""
        try:
            pending = outbound.open_tcp(destination, done, domain=domain)
        except (OSError, ValueError) as e:
            self.connecting.pop(record, None)
            self.loop.call_soon(done, None, e if isinstance(e, OSError) else OSError(str(e)))
            return
        if pending is not None:
            self.connecting[record] = pending

    def _resolve_then_connect(self, record, outbound, done):
        """A fake-IP destination for an outbound that needs an address: look its name up upstream first.

        The client's family first, then the other: every name gets a fake address of both
        families, and the relayed connection need not be of the client's family (a name with
        only A records still connects for a client that used its fake AAAA).
        """
        resolving = _Cancellable()
        self.connecting[record] = resolving
        v6 = ":" in record.destination[0]
        families = (socket.AF_INET6, socket.AF_INET) if v6 else (socket.AF_INET, socket.AF_INET6)

        def ask(families):
            def resolved(address):
                if resolving.cancelled:
                    return
                if address is None and len(families) > 1:
                    ask(families[1:])
                elif address is None:
                    # Later, not now: on_done may come within resolve(), before prepare() returned DEFER,
                    # and the stack only takes a decision for a flow it already holds.
                    self.loop.call_soon(done, None, OSError(f"cannot resolve {record.domain}"))
                else:
                    self._open_tcp(record, outbound, (address, record.destination[1]), None, done)

            self.dns.resolve(record.domain, families[0], resolved)

        ask(families)

    def _claim_sweep(self):
        """Close the connected outbound sockets whose client never completed its handshake."""
        self._claim_timer = None
        now = time.monotonic()
        while self._ready:
            key = next(iter(self._ready))
            deadline = self._ready[key][1]
            if deadline > now:  # the rest are younger
                self._claim_timer = self.loop.call_later(deadline - now, self._claim_sweep)
                return
            self.counters["tcp_unclaimed"] += 1
            self._discard(self._ready.pop(key))

    def _discard(self, entry):
        remote, _, record = entry
        remote.close()
        self.flows.pop(record.id, None)

    def handle_tcp(self, sock, source, destination):
        if self._dns_intercepts(destination):
            self.counters["dns_tcp"] += 1
            self.dns.handle_tcp(sock, source, destination)
            return
        entry = self._ready.pop((source, destination), None)
        if entry is None:
            abort(sock)  # the outbound side is gone (claim timeout): tell the client at once
            return
        remote, _, record = entry  # sock comes with TCP_NODELAY (PacketHandler.handle_tcp)
        record.state = "relaying"

        def closed(relay, reason):
            self._ended(record)
            _log_closed(record, reason)

        record.relay = Relay(self.loop, sock, remote, on_close=closed, idle_timeout=self.tcp_idle_timeout)
        record.relay.read_client()

    # -- UDP ----------------------------------------------------------------------

    def _prepare_udp(self, flow):
        """The session's first datagram: refused at once if its destination is blocked."""
        dst = flow.destination
        if self._dns_intercepts(dst):
            return Verdict.ALLOW
        domain, known = self._domain(dst)
        if known and self.rules.match("udp", flow.source, dst, domain) != BLOCK:
            return Verdict.ALLOW
        self.counters["udp_blocked" if known else "fake_ip_unknown"] += 1
        return Verdict.REJECT

    def handle_udp(self, session):
        self.counters["udp_sessions"] += 1
        self.udp[session] = relay = _UdpRelay(self, session)
        session.on_datagram = relay.datagram
        session.on_close = relay.closed

    def handle_icmp(self, flow):
        """Asked per echo request only when a rule may block ICMP (icmp_echo == "ask")."""
        domain, _ = self._domain(flow.destination)
        return Verdict.DROP if self.rules.match("icmp", flow.source, flow.destination, domain) == BLOCK else Verdict.ALLOW

    # -- status and shutdown ------------------------------------------------------------

    def _ended(self, record) -> None:
        self.flows.pop(record.id, None)
        self.counters["bytes_up"] += record.bytes_up
        self.counters["bytes_down"] += record.bytes_down

    def bytes_total(self) -> tuple:
        """(up, down): the bytes of ended flows plus those of the open ones so far."""
        live = list(self.flows.values())
        return (self.counters["bytes_up"] + sum(r.bytes_up for r in live),
                self.counters["bytes_down"] + sum(r.bytes_down for r in live))

    def snapshot_flows(self) -> list:
        now = time.monotonic()
        return [r.as_dict(now) for r in list(self.flows.values())]

    def outbound_counters(self) -> dict:
        return {name: dict(getattr(o, "counters", {})) for name, o in self.outbounds.items()}

    def close(self) -> None:
        """Close every relay, pending outbound connect and UDP flow. Idempotent."""
        for pending in list(self.connecting.values()):
            pending.cancel()
        self.connecting.clear()
        for record in list(self.flows.values()):
            if record.relay is not None:
                record.relay.close("closed", reset=True)
        for key in list(self._ready):
            self._discard(self._ready.pop(key))
        if self._claim_timer is not None:
            self._claim_timer.cancel()
            self._claim_timer = None
        for session in list(self.udp):
            session.close()
        if self.dns is not None:
            self.dns.close()
        for outbound in self.outbounds.values():
            close = getattr(outbound, "close", None)
            if close is not None:
                close()
        PIPES.clear()


class _Cancellable:
    __slots__ = ("cancelled",)

    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class _UdpRelay:
    """One UDP session's datagrams, each to the outbound its destination's rule picks."""

    __slots__ = ("fwd", "session", "flows", "routes", "record", "family", "resolved", "by_address")

    def __init__(self, fwd: Forwarder, session):
        self.fwd, self.session = fwd, session
        self.flows: dict = {}  # (outbound name, fake address or None) -> UdpFlow
        self.routes: dict = {}  # destination -> (outbound name, domain, flow key), or None when blocked
        self.resolved: dict = {}  # fake address -> its real address, None while unknown
        self.by_address: set = set()  # keys of fake-address flows whose outbound needs the real address (direct)
        self.family = socket.AF_INET6 if ":" in session.source[0] else socket.AF_INET
        domain, _ = fwd._domain(session.destination)
        name = "dns" if fwd._dns_intercepts(session.destination) else fwd.rules.match("udp", session.source, session.destination, domain)
        self.record = FlowRecord("udp", session.source, session.destination, domain, name, "open")
        self.record.session = session
        fwd.flows[self.record.id] = self.record

    def _route(self, destination):
        route = self.routes.get(destination, False)
        if route is not False:
            return route
        domain, known = self.fwd._domain(destination)
        name = self.fwd.rules.match("udp", self.session.source, destination, domain) if known else BLOCK
        # A fake address's flow serves all its ports (replies keep their source port).
        route = None if name == BLOCK else (name, domain, (name, destination[0] if domain else None))
        if len(self.routes) < 256:  # a session scanning many destinations is not cached forever
            self.routes[destination] = route
        return route

    def datagram(self, payload, destination):
        fwd = self.fwd
        if fwd._dns_intercepts(destination):
            fwd.dns.query(payload, self.session.source, destination, lambda data: self.session.send(data, destination))
            return
        route = self._route(destination)
        if route is None:
            fwd.counters["udp_blocked"] += 1
            return Verdict.REJECT  # "block": ICMP unreachable, as for a session's first datagram
        name, domain, key = route
        flow = self.flows.get(key)
        if flow is None:
            outbound = fwd.outbounds.get(name)
            if outbound is None:  # removed by a reload after the route was cached
                self.routes.pop(destination, None)
                fwd.counters["udp_send_failed"] += 1
                return
            fake = destination[0] if domain else None
            if fake is not None:
                self._make_room()
            flow = self.flows[key] = outbound.open_udp(self.family, self._receiver(fake), self._flow_closed(key))
            if fake is not None and not getattr(outbound, "resolves_names", False):
                self.by_address.add(key)  # decided by the flow's outbound: a reload may rename another one
        if key in self.by_address:
            destination = self._resolved(destination, domain)
            if destination is None:
                fwd.counters["udp_unresolved"] += 1  # still resolving, or the name has no address
                return
            domain = None
        if not flow.send(payload, destination, domain):
            fwd.counters["udp_send_failed"] += 1

    def _make_room(self):
        """At most UDP_FAKE_FLOWS fake-address flows (each holds sockets): close the oldest one."""
        fakes = [key for key in self.flows if key[1] is not None]
        for key in fakes[:len(fakes) - UDP_FAKE_FLOWS + 1]:
            self.flows.pop(key).close()
            self.by_address.discard(key)
            self.resolved.pop(key[1], None)
            self.fwd.counters["udp_fake_flows_evicted"] += 1

    def _resolved(self, fake, domain):
        """The real address for a fake destination sent through an outbound that needs one; None until known."""
        address = fake[0]
        if address not in self.resolved:
            self.resolved[address] = None

            def done(real):
                if address in self.resolved:  # not evicted meanwhile
                    self.resolved[address] = real or None
                if not real:  # a lost answer must not leave the session without a route while it keeps sending
                    self.fwd.loop.call_later(RESOLVE_RETRY, self._forget_failure, address)

            self.fwd.dns.resolve(domain, self.family, done)
        real = self.resolved[address]
        return (real, fake[1]) if real else None

    def _forget_failure(self, address):
        if self.resolved.get(address, "") is None:
            del self.resolved[address]

    def _receiver(self, fake):
        session, counters, v4 = self.session, self.fwd.counters, self.family == socket.AF_INET

        def received(payload, source):
            if fake is not None:
                # Replies of a fake-IP destination's flow come back from the fake address the client used.
                session.send(payload, (fake, source[1]))
                return
            address = _reply_address(source[0], v4)
            if address is not None:
                session.send(payload, (address, source[1]))
            else:
                counters["udp_reply_by_name"] += 1  # a SOCKS relay naming the sender: no address to answer from

        return received

    def _flow_closed(self, key):
        def closed(reason):
            self.flows.pop(key, None)
            self.by_address.discard(key)
            log.info("%s: outbound UDP flow %s closed: %s", self.record.describe(), key[0], reason)
        return closed

    def closed(self, session, reason):
        for flow in list(self.flows.values()):
            flow.close()
        self.flows.clear()
        self.by_address.clear()
        self.fwd.udp.pop(session, None)
        self.fwd._ended(self.record)
        _log_closed(self.record, reason)


def _log_closed(record: FlowRecord, reason: str) -> None:
    if log.isEnabledFor(logging.INFO):
        duration = time.monotonic() - record.started
        log.info("%s up %d down %d bytes %.1fs %s", record.describe(), record.bytes_up, record.bytes_down, duration, reason,
                 extra={"flow": {**record.as_dict(time.monotonic()), "duration_s": round(duration, 3), "reason": reason}})


def _reply_address(text, v4: bool):
    """A reply's source address as the client's family writes it (a dual-stack relay may say ::ffff:a.b.c.d); None for a name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if v4 and address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return text

