"""UdpRelay: one UDP session's datagrams, each to the outbound its destination's rule picks.

A rule may send one destination through the proxy and another direct, so each outbound gets
one UDP flow per session, opened on first use. A destination that is a fake-IP address gets
a flow of its own, so its replies can be given back the fake address as their source.
"""

import ipaddress
import logging
import socket

from ..stack.handler import Verdict
from .flows import describe

log = logging.getLogger("ztun.flows")

UDP_FAKE_FLOWS = 32  # outbound flows a UDP session keeps for fake-IP addresses; the oldest gives way
RESOLVE_RETRY = 5.0  # seconds a failed lookup for a UDP fake-IP destination stands before it is asked again
ROUTES_CACHED = 256  # destinations whose route a session remembers (a scanning session is not cached forever)


class UdpRelay:
    """Routes one session's datagrams (the Forwarder's choice per destination) and its replies back."""

    __slots__ = ("fwd", "session", "flows", "routes", "family", "resolved", "by_address", "handed")

    def __init__(self, fwd, session):
        self.fwd, self.session = fwd, session
        self.flows: dict = {}  # (outbound name, fake address or None) -> UdpFlow
        self.routes: dict = {}  # destination -> (outbound name, domain, flow key), or None when blocked
        self.resolved: dict = {}  # fake address -> its real address, None while unknown
        self.by_address: set = set()  # keys of fake-address flows whose outbound needs the real address (direct)
        self.handed: dict = {}  # flow key -> the id of its socket in the session's table
        self.family = socket.AF_INET6 if ":" in session.source[0] else socket.AF_INET

    def _route(self, destination):
        route = self.routes.get(destination, False)
        if route is not False:
            return route
        outbound, domain, known = self.fwd.choose("udp", self.session.source, destination)
        # A fake address's flow serves all its ports (replies keep their source port).
        if not known or outbound.blocks:
            route = None
        else:
            route = (outbound.name, domain, (outbound.name, destination[0] if domain else None))
        if len(self.routes) < ROUTES_CACHED:
            self.routes[destination] = route
        return route

    def datagram(self, payload, destination):
        fwd = self.fwd
        if fwd.dns_intercepts(destination):
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
            if fake is not None and not outbound.resolves_names:
                self.by_address.add(key)  # decided by the flow's outbound: a reload may rename another one
        target = destination
        if key in self.by_address:
            target = self._resolved(destination, domain)
            if target is None:
                fwd.counters["udp_unresolved"] += 1  # still resolving, or the name has no address
                return
            domain = None
        if not flow.send(payload, target, domain):
            fwd.counters["udp_send_failed"] += 1
            return
        self._shortcut(key, flow, destination, target, domain)

    def _shortcut(self, key, flow, destination, target, domain):
        """From now on the session's table sends what goes to destination (sent to target) and reads the
        flow's replies, without Python. Where it cannot (not ready, no room) datagrams keep coming here."""
        if key not in self.handed:
            def attach(sock, kind):
                k = self.session.attach(sock, kind, key[1])  # a fake-IP flow's replies come from key[1]
                if k < 0:
                    return None
                self.handed[key] = k
                return lambda: self.session.detach(k)

            if not flow.hand_over(attach) or key not in self.handed:
                return
        to, prefix = flow.route_for(target, domain)
        if self.session.route(destination, self.handed[key], to, prefix):
            self.fwd.counters["udp_routes_compiled"] += 1

    def _make_room(self):
        """At most UDP_FAKE_FLOWS fake-address flows (each holds sockets): close the oldest one."""
        fakes = [key for key in self.flows if key[1] is not None]
        for key in fakes[:len(fakes) - UDP_FAKE_FLOWS + 1]:
            self.flows.pop(key).close()
            self.handed.pop(key, None)
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
            self.handed.pop(key, None)
            self.by_address.discard(key)
            log.info("%s: outbound UDP flow %s closed: %s", describe(self.session.flow), key[0], reason)
        return closed

    def closed(self, session, reason):
        for flow in list(self.flows.values()):
            flow.close()
        self.flows.clear()
        self.handed.clear()
        self.by_address.clear()
        self.fwd.udp_ended(session, reason)


def _reply_address(text, v4: bool):
    """A reply's source address as the client's family writes it (a dual-stack relay may say ::ffff:a.b.c.d); None for a name."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if v4 and address.version == 6 and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return text
