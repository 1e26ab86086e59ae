"""Forwarder: the appliance's PacketHandler: each new flow to the outbound its rules choose.

TCP: the outbound connect happens first (the client's SYN waits), so a refused or timed-out
connect, or a proxy that refuses, reaches the client as a refused connect; the connected
outbound socket waits on the flow until the client's connection is accepted, then the two are
relayed. A flow whose outbound blocks is refused at once (TCP reset; ICMP unreachable,
administratively prohibited, for UDP).

UDP: a session's datagrams are routed per destination (udp_relay.py).

DNS (with a DnsService): UDP and TCP port 53 to any address is answered by the service.
Fake-IP destinations carry their domain (Flow.domain) to the rules and to the outbound (SOCKS5
CONNECT by name). ICMP echo is answered by the stack; asked per packet only when a rule may
block it.
"""

import logging
import socket
import time

from ..net import abort, endpoint_text
from ..outbound.block import BlockOutbound
from ..outbound.relay import COPY, HAVE_SPLICE, Relay
from ..stack.handler import Verdict
from . import limits
from .flows import PROTO_NAMES, FlowTable, describe
from .udp_relay import UdpRelay

log = logging.getLogger("ztun.flows")

CLAIM_TIMEOUT = 30.0  # a connected outbound socket whose client never completes its handshake is closed
BLOCK = "block"  # the built-in outbound that refuses every flow
DNS_PORT = 53
MAX_PENDING = 4096  # outbound TCP connects not yet relayed, in all (FlowsConfig.max_pending_connects)
MAX_PENDING_PER_CLIENT = 512  # the same per client address (FlowsConfig.max_pending_per_client)
CALIBRATE_INTERVAL = 1.0  # seconds between measurements of the descriptors open
LIMIT_WARN_INTERVAL = 10.0  # a limit that keeps refusing flows is logged at most this often
# Why a new flow was dropped before anything was opened for it (snapshot "drops", counters)
LIMIT_DROPS = ("tcp_pending_limit", "tcp_client_pending_limit", "tcp_descriptor_budget", "udp_descriptor_budget")


class Forwarder:
    """Relays TCP and UDP flows through the outbounds chosen by the rules."""

    def __init__(self, loop, outbounds: dict, rules, *, dns=None, tcp_idle_timeout: float = 7200.0,
                 max_pending: int = MAX_PENDING, max_pending_per_client: int = MAX_PENDING_PER_CLIENT,
                 descriptors: "limits.DescriptorBudget | None" = None):
        self.loop = loop
        self.tcp_idle_timeout = tcp_idle_timeout
        # Pending connects: flows from prepare() (the outbound connect starts) until relayed, failed
        # or unclaimed; each holds a descriptor or two. Flow -> its client address, and per address.
        self.max_pending, self.max_pending_per_client = max_pending, max_pending_per_client
        # every pending connect may be a SOCKS5 negotiation: the loop's engine (made on first use) has room
        loop.handshake_capacity = max(getattr(loop, "handshake_capacity", 0), max_pending)
        self._pending: dict = {}
        self._pending_by_client: dict = {}
        self.relaying = 0  # relays this forwarder started that have not ended
        self.descriptors = descriptors
        self._relay_cost = limits.RELAY_COST_SPLICE if HAVE_SPLICE and not COPY else limits.RELAY_COST_COPY
        self._calibrate_timer = None
        self._warned: dict = {}  # limit drop reason -> when it was last logged
        self.outbounds: dict = {}
        self.rules = None
        self.dns = dns
        self.configure(outbounds, rules)
        self.flows = FlowTable()
        # Flows whose outbound is connected, waiting for the client's connection, oldest first, with
        # their claim deadline: one timer for all of them (_claim_sweep), not one per connection
        self._claims: dict = {}
        self._claim_timer = None
        self.udp: dict = {}  # session -> UdpRelay
        self.counters = {"tcp_connected": 0, "tcp_failed": 0, "tcp_unclaimed": 0, "tcp_blocked": 0, "tcp_relay_failed": 0,
                         "udp_sessions": 0, "udp_blocked": 0, "udp_send_failed": 0, "udp_unresolved": 0, "udp_reply_by_name": 0, "dns_tcp": 0,
                         "udp_fake_flows_evicted": 0,
                         "udp_routes_compiled": 0,  # destinations of a UDP session handed to the compiled table
                         "fake_ip_unknown": 0, **dict.fromkeys(LIMIT_DROPS, 0)}
        if descriptors is not None:
            self._calibrate()

    def configure(self, outbounds: dict, rules) -> None:
        """Use these outbounds and rules for new flows (a reload); open flows keep theirs.

        "block" is built in: added when outbounds has none of that name.
        """
        outbounds = dict(outbounds)
        if BLOCK not in outbounds:
            outbounds[BLOCK] = BlockOutbound(self.loop)
        missing = rules.outbounds() - set(outbounds)
        if missing:
            raise ValueError(f"the rules name outbounds that do not exist: {', '.join(sorted(missing))}")
        self.outbounds, self.rules = outbounds, rules
        # The stack reads this per batch: per-packet ICMP questions only when a rule may block echo.
        blocking = [name for name, o in outbounds.items() if o.blocks]
        self.icmp_echo = "ask" if any(rules.may_choose("icmp", name) for name in blocking) else "reply"

    # -- choosing -----------------------------------------------------------------

    def choose(self, proto: str, source: tuple, destination: tuple, flow=None) -> tuple:
        """(outbound, domain, known) for a flow of proto ("tcp", "udp", "icmp") to destination: the
        outbound its rules pick, the name behind a fake-IP destination, and known False for a
        fake-IP address with no name (an expired mapping; the rules saw no domain). A flow given
        keeps the (type, payload) of the rule that chose (flow.rule)."""
        domain, known = None, True
        if self.dns is not None and self.dns.is_fake(destination[0]):
            domain = self.dns.domain_for(destination[0])
            known = domain is not None
        rules = self.rules
        index = rules.match_index(proto, source, destination, domain)
        if flow is not None:
            flow.rule = rules.described[index]
        return self.outbounds[rules.rules[index].outbound if index < len(rules.rules) else rules.default], domain, known

    def dns_intercepts(self, destination) -> bool:
        """Port 53 to any address is answered by the DNS service (when there is one)."""
        return self.dns is not None and destination[1] == DNS_PORT

    # -- TCP ----------------------------------------------------------------------

    def prepare(self, flow):
        if flow.proto != socket.IPPROTO_TCP:
            return self._prepare_udp(flow)
        if self.dns_intercepts(flow.destination):
            flow.outbound = "dns"
            return Verdict.ALLOW  # answered by the DNS service in handle_tcp
        refused = self._admit_tcp(flow.source[0])
        if refused is not None:  # nothing is opened; the client's SYN is dropped and it retries
            self._limited(refused, flow)
            return Verdict.DROP
        outbound, flow.domain, known = self.choose("tcp", flow.source, flow.destination, flow)
        if not known:
            self.counters["fake_ip_unknown"] += 1
            log.info("tcp %s -> %s: a fake-IP address with no domain (expired mapping?): refused",
                     endpoint_text(flow.source), endpoint_text(flow.destination))
            return Verdict.REJECT
        flow.outbound = outbound.name
        if outbound.blocks:
            self.counters["tcp_blocked"] += 1
            outbound.counters["tcp_refused"] += 1
            log.info("%s: blocked", describe(flow))
            return Verdict.REJECT
        flow.state = "connecting"
        self.flows.add(flow)
        self._pending_add(flow)
        if flow.domain is not None and not outbound.resolves_names:
            self._resolve_then_connect(flow, outbound)
        else:
            self._open_tcp(flow, outbound, flow.destination, flow.domain)
        return Verdict.DEFER

    def _connected(self, flow, remote, error):
        """The outcome of a flow's outbound connect: the flow is released to the client, or refused."""
        flow.pending = None
        if error is not None:
            self._pending_end(flow)
            self.flows.forget(flow)
            self.counters["tcp_failed"] += 1
            log.info("%s: %s", describe(flow), error.strerror or error)
            flow.decide(Verdict.REJECT)
            return
        self.counters["tcp_connected"] += 1
        flow.remote, flow.state = remote, "accepting"
        self._claims[flow] = time.monotonic() + CLAIM_TIMEOUT
        if self._claim_timer is None:
            self._claim_timer = self.loop.call_later(CLAIM_TIMEOUT, self._claim_sweep)
        flow.decide(Verdict.ALLOW)

    def _open_tcp(self, flow, outbound, destination, domain):
        """outbound.open_tcp, its failure to even start (no fds, ...) reported like a refused connect."""
        try:
            flow.pending = outbound.open_tcp(destination, lambda remote, error: self._connected(flow, remote, error),
                                             domain=domain)
        except (OSError, ValueError) as e:
            # Later, not now: prepare() may not have returned DEFER yet, and the stack takes a
            # decision only for a flow it holds.
            flow.pending = None
            self.loop.call_soon(self._connected, flow, None, e if isinstance(e, OSError) else OSError(str(e)))

    def _resolve_then_connect(self, flow, outbound):
        """A fake-IP destination for an outbound that needs an address: look its name up upstream first.

        The client's family first, then the other: every name gets a fake address of both
        families, and the relayed connection need not be of the client's family (a name with
        only A records still connects for a client that used its fake AAAA).
        """
        resolving = flow.pending = _Cancellable()
        v6 = ":" in flow.destination[0]
        families = (socket.AF_INET6, socket.AF_INET) if v6 else (socket.AF_INET, socket.AF_INET6)

        def ask(families):
            def resolved(address):
                if resolving.cancelled:
                    return
                if address is None and len(families) > 1:
                    ask(families[1:])
                elif address is None:
                    self.loop.call_soon(self._connected, flow, None, OSError(f"cannot resolve {flow.domain}"))
                else:
                    self._open_tcp(flow, outbound, (address, flow.destination[1]), None)

            self.dns.resolve(flow.domain, families[0], resolved)

        ask(families)

    def _claim_sweep(self):
        """Close the connected outbound sockets whose client never completed its handshake."""
        self._claim_timer = None
        now = time.monotonic()
        while self._claims:
            flow = next(iter(self._claims))
            deadline = self._claims[flow]
            if deadline > now:  # the rest are younger
                self._claim_timer = self.loop.call_later(deadline - now, self._claim_sweep)
                return
            del self._claims[flow]
            self.counters["tcp_unclaimed"] += 1
            self._discard(flow)

    def _discard(self, flow):
        self._pending_end(flow)
        remote, flow.remote = flow.remote, None
        if remote is not None:
            remote.close()
        self.flows.forget(flow)

    def handle_tcp(self, sock, flow):
        if self.dns_intercepts(flow.destination):
            self.counters["dns_tcp"] += 1
            self.dns.handle_tcp(sock, flow.source, flow.destination)
            return
        remote, flow.remote = flow.remote, None
        if remote is None:
            abort(sock)  # the outbound side is gone (claim timeout): tell the client at once
            return
        self._claims.pop(flow, None)
        self._pending_end(flow)
        flow.state = "relaying"  # sock comes with TCP_NODELAY (PacketHandler.handle_tcp)
        try:
            flow.carrier = Relay(self.loop, sock, remote, on_close=lambda relay, reason: self._relay_ended(flow, reason),
                                 idle_timeout=self.tcp_idle_timeout)
        except OSError as e:  # the engine is full or out of pipes: both sockets were closed with a reset
            self.counters["tcp_relay_failed"] += 1
            log.warning("%s: relay not started: %s", describe(flow), e.strerror or e)
            self.flows.ended(flow, "reset")
            return
        self.relaying += 1

    def _relay_ended(self, flow, reason):
        self.relaying -= 1
        self.flows.ended(flow, reason)

    # -- limits -------------------------------------------------------------------------

    def _admit_tcp(self, client):
        """None if a new TCP flow from client may start its connect, else the reason it may not."""
        if len(self._pending) >= self.max_pending:
            return "tcp_pending_limit"
        if self._pending_by_client.get(client, 0) >= self.max_pending_per_client:
            return "tcp_client_pending_limit"
        if self.descriptors is not None and not self.descriptors.allows(self.held_descriptors(), limits.PENDING_COST):
            return "tcp_descriptor_budget"
        return None

    def _limited(self, reason, flow):
        self.counters[reason] += 1
        now = time.monotonic()
        last = self._warned.get(reason)
        if last is None or now - last >= LIMIT_WARN_INTERVAL:
            self._warned[reason] = now
            log.warning("%s from %s dropped: %s (%d pending connects, %d from this client, descriptors %s); "
                        "%d dropped so far for this reason", PROTO_NAMES.get(flow.proto, flow.proto), flow.source[0],
                        reason.replace("_", " "), len(self._pending), self._pending_by_client.get(flow.source[0], 0),
                        self._descriptors_text(), self.counters[reason])

    def _descriptors_text(self):
        d = self.descriptors
        if d is None:
            return "not budgeted"
        return f"~{d.overhead + self.held_descriptors()} of budget {d.budget} (limit {d.limit})"

    def _pending_add(self, flow):
        client = flow.source[0]
        self._pending[flow] = client
        self._pending_by_client[client] = self._pending_by_client.get(client, 0) + 1

    def _pending_end(self, flow):
        client = self._pending.pop(flow, None)
        if client is None:
            return
        left = self._pending_by_client[client] - 1
        if left:
            self._pending_by_client[client] = left
        else:
            del self._pending_by_client[client]

    def held_descriptors(self) -> int:
        """The descriptors the flows hold by the budget's reckoning (limits.py)."""
        return (len(self._pending) * limits.PENDING_COST + self.relaying * self._relay_cost
                + len(self.udp) * limits.UDP_COST)

    def _calibrate(self):
        self._calibrate_timer = None
        self.descriptors.calibrate(self.held_descriptors())
        self._calibrate_timer = self.loop.call_later(CALIBRATE_INTERVAL, self._calibrate)

    def gauges(self) -> dict:
        """The pending connects and, where budgeted, the descriptors: open now (measured), the limit and the budget."""
        out = {"tcp_pending": len(self._pending), "tcp_pending_clients": len(self._pending_by_client)}
        d = self.descriptors
        if d is not None:
            now = limits.open_descriptors()
            if now is not None:
                out["descriptors_open"] = now
            out["descriptors_limit"] = d.limit
            out["descriptors_budget"] = d.budget
        return out

    def limit_drops(self) -> dict:
        """Flows dropped by a limit, by reason (counters)."""
        return {k: self.counters[k] for k in LIMIT_DROPS if self.counters[k]}

    # -- UDP and ICMP -------------------------------------------------------------------

    def _prepare_udp(self, flow):
        """The session's first datagram: refused at once if its destination is blocked."""
        if self.dns_intercepts(flow.destination):
            flow.outbound = "dns"
            return Verdict.ALLOW
        outbound, flow.domain, known = self.choose("udp", flow.source, flow.destination, flow)
        if not known:
            self.counters["fake_ip_unknown"] += 1
            return Verdict.REJECT
        flow.outbound = outbound.name
        if outbound.blocks:
            self.counters["udp_blocked"] += 1
            outbound.counters["udp_refused"] += 1
            return Verdict.REJECT
        if self.descriptors is not None and not self.descriptors.allows(self.held_descriptors(), limits.UDP_COST):
            self._limited("udp_descriptor_budget", flow)
            return Verdict.DROP
        return Verdict.ALLOW

    def handle_udp(self, session):
        self.counters["udp_sessions"] += 1
        self.udp[session] = relay = UdpRelay(self, session)
        session.on_datagram = relay.datagram
        session.on_close = relay.closed
        session.flow.state = "open"
        self.flows.add(session.flow)

    def udp_ended(self, session, reason: str) -> None:
        """A UDP session's relay has closed its outbound flows."""
        self.udp.pop(session, None)
        self.flows.ended(session.flow, reason)

    def handle_icmp(self, flow):
        """Asked per echo request only when a rule may block ICMP (icmp_echo == "ask")."""
        outbound, _, _ = self.choose("icmp", flow.source, flow.destination)
        return Verdict.DROP if outbound.blocks else Verdict.ALLOW

    # -- status and shutdown ------------------------------------------------------------

    def bytes_total(self) -> tuple:
        """(up, down): the bytes of ended flows plus those of the open ones so far."""
        return self.flows.bytes_total()

    def snapshot_flows(self) -> list:
        return self.flows.snapshot()

    def close_flows(self, ids=None) -> int:
        """Close the open flows whose id is in ids (None: all) at once, each client told with a reset
        (TCP) or its session ended (UDP); the number closed. For the API's DELETE /connections."""
        closed = 0
        sessions = None
        for flow in [f for f in list(self.flows.open) if ids is None or f.id in ids]:
            closed += 1
            if flow.proto != socket.IPPROTO_TCP:
                if sessions is None:
                    sessions = {s.flow: s for s in self.udp}
                session = sessions.get(flow)
                if session is not None:
                    session.close()
            elif flow.carrier is not None:
                flow.carrier.close("closed by the API", reset=True)  # its closing line and bytes go to the table
            elif flow in self._claims:  # connected, the client's handshake not done: its connection gets a reset
                del self._claims[flow]
                self._discard(flow)
            elif flow.pending is not None:  # connecting: the client's SYN gets a reset
                flow.pending.cancel()
                flow.pending = None
                self._pending_end(flow)
                self.flows.forget(flow)
                flow.decide(Verdict.REJECT)
            else:
                closed -= 1
        return closed

    def outbound_counters(self) -> dict:
        return {name: dict(o.counters) for name, o in self.outbounds.items()}

    def close(self) -> None:
        """Close every relay, pending outbound connect and UDP flow. Idempotent."""
        if self._calibrate_timer is not None:
            self._calibrate_timer.cancel()
            self._calibrate_timer = None
        for flow in list(self.flows.open):
            if flow.pending is not None:
                flow.pending.cancel()
                flow.pending = None
            if flow.proto == socket.IPPROTO_TCP and flow.carrier is not None:
                flow.carrier.close("closed", reset=True)  # its closing line and bytes go to the table
        for flow in list(self._claims):
            self._discard(flow)
        self._claims.clear()
        if self._claim_timer is not None:
            self._claim_timer.cancel()
            self._claim_timer = None
        for session in list(self.udp):
            session.close()
        self.flows.open.clear()  # what is left never carried a byte (connects cancelled above)
        self._pending.clear()
        self._pending_by_client.clear()
        if self.dns is not None:
            self.dns.close()
        for outbound in self.outbounds.values():
            outbound.close()


class _Cancellable:
    __slots__ = ("cancelled",)

    def __init__(self):
        self.cancelled = False

    def cancel(self):
        self.cancelled = True
