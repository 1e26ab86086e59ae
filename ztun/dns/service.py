"""DnsService: answers the DNS queries routed into the TUN (fake-IP) or forwards them through an outbound.

mode "fake-ip": a single A or AAAA question of class IN gets an address from the FakeIpPool, TTL
`ttl`; everything else is forwarded. mode "forward": everything is forwarded. Forwarded queries go
to `upstream` when configured, else to the server the client addressed, over one UDP flow per
family opened with `open_udp` (the chosen outbound's open_udp(family, on_datagram, on_close)).
Each forwarded query carries a fresh random transaction ID (the message bytes are otherwise passed
on untouched, so EDNS options and signatures survive); the reply must come from the server asked, with that ID
and the same question, and goes back to the client with the client's ID. No reply within
`timeout`, too many queries pending, a failed send or a dead flow: the client gets SERVFAIL.

Messages are parsed and built with dnspython. Callers: query() for each UDP datagram to port 53,
handle_tcp() for each TCP connection to port 53, domain_for() for a destination's domain.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from ..net import abort
from .fakeip import FakeIpPool
from .tcp import TcpDnsConnection

log = logging.getLogger("ztun.dns")

MODES = ("fake-ip", "forward")
HEADER = 12  # bytes of a DNS header
MAX_PENDING = 32768  # half the ID space: a free random ID is found in a few tries
ID_TRIES = 64
MAX_TCP_CONNECTIONS = 256
LOUD_TIMES = 3  # each drop reason is logged as a warning this many times, then at debug level
EDNS_PAYLOAD = 1232  # the UDP size we advertise in EDNS answers (DNS flag day 2020)

COUNTERS = (
    "queries",  # messages handed to query(), UDP and TCP
    "answered_fake",  # A/AAAA answered with a fake address
    "answered_empty",  # A/AAAA for a family without a fake range: empty NOERROR
    "forwarded",  # sent upstream
    "upstream_replies",  # upstream replies passed back to the client
    "servfail",  # SERVFAIL sent for any reason below
    "timeouts",  # no upstream reply in time
    "pending_full",  # max_pending queries already waiting
    "send_failed",  # the outbound refused the datagram, or no flow could be opened
    "upstream_closed",  # the outbound's flow died with queries pending
    "malformed",  # unparsable query, or a response sent as a query
    "formerr",  # FORMERR sent for a malformed query whose header was readable
    "unmatched",  # upstream datagram with an unknown ID, wrong source or wrong question
    "bad_reply",  # upstream datagram too short or unparsable
    "tcp_connections",  # TCP connections taken
    "tcp_rejected",  # TCP connections refused: MAX_TCP_CONNECTIONS open
    "tcp_bad_frame",  # a TCP length prefix announcing less than a DNS header
    "tcp_truncated",  # a TCP connection ended (EOF, idle) in the middle of a message
    "tcp_idle",  # TCP connections closed after idle_timeout without a query
    "tcp_reply_too_big",  # a reply that a 2-byte length cannot frame
)


class _Upstream:
    """One family's UDP flow towards the upstream servers, and whether it has died."""

    __slots__ = ("dead", "family", "flow", "retired")

    def __init__(self, family: int):
        self.family, self.flow, self.dead, self.retired = family, None, False, False


class _Pending:
    """A forwarded query waiting for its reply."""

    __slots__ = ("client_id", "destination", "query", "reply", "timer", "upstream")

    def __init__(self, query, client_id, reply, destination, upstream):
        self.query, self.client_id, self.reply = query, client_id, reply
        self.destination, self.upstream, self.timer = destination, upstream, None


class DnsService:
    """Fake-IP answers and forwarding for the DNS traffic routed into the TUN; see the module docstring."""

    def __init__(self, loop, mode: str, pool: FakeIpPool | None, *, ttl: int = 1,
                 upstream: tuple | None = None, open_udp=None, timeout: float = 5.0,
                 max_pending: int = 1024, tcp_idle_timeout: float = 10.0):
        if mode not in MODES:
            raise ValueError(f"dns mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "fake-ip" and pool is None:
            raise ValueError("dns mode fake-ip needs a FakeIpPool")
        if not 0 <= ttl <= 0x7FFFFFFF:
            raise ValueError(f"dns ttl must be 0..2147483647, got {ttl!r}")
        if not 1 <= max_pending <= MAX_PENDING:
            raise ValueError(f"dns max_pending must be 1..{MAX_PENDING}, got {max_pending!r}")
        if upstream is not None:
            ipaddress.ip_address(upstream[0])  # a ValueError now rather than at the first query
        self.loop, self.mode, self.pool, self.ttl = loop, mode, pool, ttl
        self.upstream, self.open_udp, self.timeout = upstream, open_udp, timeout
        self.max_pending, self.tcp_idle_timeout = max_pending, tcp_idle_timeout
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._upstreams: dict[int, _Upstream] = {}
        self._retired: set[_Upstream] = set()  # flows of a previous outbound, closed once their queries end
        self._pending: dict[int, _Pending] = {}  # upstream transaction ID -> query
        self._tcp: set[TcpDnsConnection] = set()
        self._closed = False

    # -- what the forwarder asks -------------------------------------------------

    def domain_for(self, address) -> str | None:
        """The domain a fake address stands for; None if it is not a fake address or no longer mapped."""
        return self.pool.lookup(address) if self.pool is not None else None

    def is_fake(self, address) -> bool:
        """Whether address lies in a fake range (mapped or not): unmapped ones should be rejected."""
        return self.pool is not None and self.pool.contains(address)

    def resolve(self, domain: str, family: int, on_done) -> None:
        """Look domain up upstream (never in the fake pool): on_done(address text or None) runs once, later.

        For a fake-IP destination routed to an outbound that needs an address (direct). The
        query goes to dns.upstream (only: the server some client last asked could be one any
        LAN host chose, which would then pick the addresses of other hosts' flows), through
        the same outbound flow and with the same timeout as forwarded queries.
        """
        server = self.upstream
        qtype = dns.rdatatype.A if family == socket.AF_INET else dns.rdatatype.AAAA
        if server is None:
            self._note("send_failed", "dns: cannot look up %s for a direct flow: set dns.upstream", domain)
            self.loop.call_soon(on_done, None)
            return

        def reply(data):
            try:
                answer = dns.message.from_wire(data)
                found = [rd.address for rrset in answer.answer if rrset.rdtype == qtype for rd in rrset]
            except Exception:  # noqa: BLE001 -- a bad answer is no answer
                found = []
            on_done(found[0] if found else None)

        msg = dns.message.make_query(domain, qtype)
        if not self._forward(msg, msg.to_wire(), server, reply):
            self.loop.call_soon(on_done, None)

    def set_open_udp(self, open_udp) -> None:
        """A reload: new queries go through this outbound; the old flows close once their pending queries end."""
        self.open_udp = open_udp
        for upstream in list(self._upstreams.values()):
            del self._upstreams[upstream.family]
            upstream.retired = True
            self._retired.add(upstream)
            self._close_if_idle(upstream)

    def _close_if_idle(self, upstream: _Upstream) -> None:
        if upstream.retired and not upstream.dead and not any(p.upstream is upstream for p in self._pending.values()):
            upstream.dead = True
            self._retired.discard(upstream)
            upstream.flow.close()

    @property
    def pending(self) -> int:
        return len(self._pending)

    # -- queries -------------------------------------------------------------------

    def query(self, payload: bytes, client: tuple, server: tuple, reply) -> bool:
        """Answer one DNS message from client (sent to server); reply(bytes) gets the answer, now or later.

        Returns False when the message is dropped (reply is never called), True when reply has been
        or will be called exactly once (unless the service is closed first).
        """
        self.counters["queries"] += 1
        try:
            msg = dns.message.from_wire(payload, keyring=False)  # a TSIG signature is the server's to check
        except Exception as e:  # noqa: BLE001 -- dnspython raises many kinds; hostile bytes must never escape
            return self._malformed(payload, client, reply, e)
        if msg.flags & dns.flags.QR:
            self._note("malformed", "dns from %s: a response sent as a query, dropped", client)
            return False
        if self.mode == "fake-ip" and _fakeable(msg) and not msg.had_tsig:  # a fake answer cannot be signed
            reply(self._fake_answer(msg))
            return True
        return self._forward(msg, payload, server, reply)

    def _malformed(self, payload, client, reply, error) -> bool:
        self._note("malformed", "dns from %s: malformed query (%s)", client, error)
        if len(payload) < HEADER or payload[2] & 0x80:
            return False  # no header to answer, or a response: never answer those
        flags = int.from_bytes(payload[2:4], "big")
        answer = dns.message.Message(id=int.from_bytes(payload[:2], "big"))
        answer.flags = dns.flags.QR | (flags & dns.flags.RD)
        answer.set_opcode(dns.opcode.from_flags(flags))
        answer.set_rcode(dns.rcode.FORMERR)
        self.counters["formerr"] += 1
        reply(answer.to_wire())
        return True

    def _fake_answer(self, msg) -> bytes:
        question = msg.question[0]
        family = socket.AF_INET if question.rdtype == dns.rdatatype.A else socket.AF_INET6
        answer = dns.message.make_response(msg, recursion_available=True, our_payload=EDNS_PAYLOAD)
        if self.pool.has(family):
            address = self.pool.address_for(question.name.to_text(), family)
            answer.answer.append(dns.rrset.from_text_list(
                question.name, self.ttl, dns.rdataclass.IN, question.rdtype, [str(address)]))
            self.counters["answered_fake"] += 1
        else:
            self.counters["answered_empty"] += 1
        return answer.to_wire()

    def _servfail(self, msg, client_id: int, reply) -> None:
        answer = dns.message.make_response(msg, recursion_available=True, our_payload=EDNS_PAYLOAD)
        answer.id = client_id
        answer.set_rcode(dns.rcode.SERVFAIL)
        self.counters["servfail"] += 1
        reply(answer.to_wire())

    # -- forwarding ------------------------------------------------------------------

    def _forward(self, msg, payload: bytes, server: tuple, reply) -> bool:
        client_id = msg.id
        if self._closed:
            return False
        if len(self._pending) >= self.max_pending:
            self._note("pending_full", "dns: %d queries pending upstream, answering SERVFAIL", len(self._pending))
            self._servfail(msg, client_id, reply)
            return True
        destination = self.upstream or server
        if self.upstream is None and self.is_fake(server[0]):
            # Nothing answers at a fake address: the client's resolver setting needs dns.upstream.
            self._note("send_failed", "dns: %s is a fake address and no upstream is configured", server[0])
            self._servfail(msg, client_id, reply)
            return True
        family = socket.AF_INET6 if ipaddress.ip_address(destination[0]).version == 6 else socket.AF_INET
        upstream = self._upstream(family)
        if upstream is None:
            self._servfail(msg, client_id, reply)
            return True
        new_id = self._fresh_id()
        if new_id is None:  # cannot happen below MAX_PENDING except by astronomical bad luck
            self._servfail(msg, client_id, reply)
            return True
        msg.id = new_id  # lets msg.is_response() check the upstream's reply
        pending = _Pending(msg, client_id, reply, destination, upstream)
        try:
            sent = upstream.flow.send(new_id.to_bytes(2, "big") + payload[2:], destination)
        except OSError as e:
            log.debug("dns: send to %s failed: %s", destination, e)
            sent = False
        if not sent:
            self._note("send_failed", "dns: the outbound dropped a query to %s:%d", *destination)
            self._servfail(msg, client_id, reply)
            return True
        pending.timer = self.loop.call_later(self.timeout, self._timed_out, new_id)
        self._pending[new_id] = pending
        self.counters["forwarded"] += 1
        return True

    def _fresh_id(self) -> int | None:
        for _ in range(ID_TRIES):
            candidate = secrets.randbits(16)
            if candidate not in self._pending:
                return candidate
        return None

    def _upstream(self, family: int) -> _Upstream | None:
        upstream = self._upstreams.get(family)
        if upstream is not None and not upstream.dead:
            return upstream
        if self.open_udp is None:
            self._note("send_failed", "dns: no outbound to forward queries through")
            return None
        upstream = _Upstream(family)
        try:
            flow = self.open_udp(family, lambda data, source: self._on_reply(upstream, data, source),
                                 lambda reason: self._on_flow_closed(upstream, reason))
        except OSError as e:
            self._note("send_failed", "dns: cannot open an upstream UDP flow: %s", e)
            return None
        upstream.flow = flow
        if upstream.dead:  # it died while opening
            flow.close()
            self._note("send_failed", "dns: the upstream UDP flow closed while opening")
            return None
        self._upstreams[family] = upstream
        return upstream

    def _on_reply(self, upstream: _Upstream, data: bytes, source: tuple) -> None:
        if len(data) < HEADER:
            self._note("bad_reply", "dns: %d-byte datagram from upstream %s", len(data), source)
            return
        upstream_id = int.from_bytes(data[:2], "big")
        pending = self._pending.get(upstream_id)
        if pending is None or pending.upstream is not upstream or not _same_endpoint(source, pending.destination):
            self._note("unmatched", "dns: unexpected datagram from %s (late, or not ours)", source)
            return
        try:
            answer = dns.message.from_wire(data, question_only=True)
        except Exception as e:  # noqa: BLE001 -- as in query()
            self._note("bad_reply", "dns: unparsable reply from %s: %s", source, e)
            return
        if not pending.query.is_response(answer):
            self._note("unmatched", "dns: reply from %s does not answer the question asked", source)
            return
        del self._pending[upstream_id]
        pending.timer.cancel()
        self.counters["upstream_replies"] += 1
        self._close_if_idle(upstream)
        pending.reply(pending.client_id.to_bytes(2, "big") + data[2:])

    def _timed_out(self, upstream_id: int) -> None:
        pending = self._pending.pop(upstream_id, None)
        if pending is None:
            return
        self._note("timeouts", "dns: no reply from %s:%d within %.1fs, answering SERVFAIL",
                   *pending.destination, self.timeout)
        self._close_if_idle(pending.upstream)
        self._servfail(pending.query, pending.client_id, pending.reply)

    def _on_flow_closed(self, upstream: _Upstream, reason: str) -> None:
        upstream.dead = True
        self._retired.discard(upstream)
        if self._upstreams.get(upstream.family) is upstream:
            del self._upstreams[upstream.family]
        failed = [i for i, p in self._pending.items() if p.upstream is upstream]
        if failed:
            log.warning("dns: upstream flow closed (%s): %d queries answered SERVFAIL", reason, len(failed))
        for upstream_id in failed:
            pending = self._pending.pop(upstream_id)
            pending.timer.cancel()
            self.counters["upstream_closed"] += 1
            self._servfail(pending.query, pending.client_id, pending.reply)

    # -- TCP -----------------------------------------------------------------------------

    def handle_tcp(self, sock: socket.socket, client: tuple | None = None, server: tuple | None = None) -> None:
        """Serve DNS over an accepted non-blocking TCP connection; the service owns and closes sock.

        client/server: the flow's original endpoints (the system stack's accepted socket has the
        stack's own address as its local end, so pass the flow's destination to forward to it).
        """
        if self._closed or len(self._tcp) >= MAX_TCP_CONNECTIONS:
            self._note("tcp_rejected", "dns: %d TCP connections open, refusing another", len(self._tcp))
            abort(sock)
            return
        try:
            client = client or sock.getpeername()[:2]
            server = server or sock.getsockname()[:2]
        except OSError:  # already reset by the peer
            sock.close()
            return
        self.counters["tcp_connections"] += 1
        self._tcp.add(TcpDnsConnection(self, sock, client, server, idle_timeout=self.tcp_idle_timeout))

    def _tcp_closed(self, conn: TcpDnsConnection) -> None:
        self._tcp.discard(conn)

    @property
    def tcp_connections(self) -> int:
        return len(self._tcp)

    # -- bookkeeping ---------------------------------------------------------------------

    def _note(self, counter: str, fmt: str, *args) -> None:
        self.counters[counter] += 1
        level = logging.WARNING if self.counters[counter] <= LOUD_TIMES else logging.DEBUG
        log.log(level, fmt, *args)

    def close(self) -> None:
        """Drop pending queries (without replies), close the upstream flows and TCP connections. Idempotent."""
        self._closed = True
        for pending in self._pending.values():
            pending.timer.cancel()
        self._pending.clear()
        for upstream in [*self._upstreams.values(), *self._retired]:
            upstream.dead = True
            upstream.flow.close()
        self._upstreams.clear()
        self._retired.clear()
        for conn in list(self._tcp):
            conn.close("service closed")


def _fakeable(msg) -> bool:
    """A plain lookup of one A or AAAA name a proxy could resolve (no escaped bytes in its labels)."""
    if msg.opcode() != dns.opcode.QUERY or len(msg.question) != 1:
        return False
    q = msg.question[0]
    if q.rdclass != dns.rdataclass.IN or q.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return False
    if q.name == dns.name.root:
        return False
    return "\\" not in q.name.to_text()


def _same_endpoint(source: tuple, destination: tuple) -> bool:
    """Whether a reply's source is the server asked (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        a, b = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    except (ValueError, TypeError, IndexError):
        return False
    a = getattr(a, "ipv4_mapped", None) or a
    b = getattr(b, "ipv4_mapped", None) or b
    return a == b and source[1] == destination[1]
