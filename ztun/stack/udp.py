"""UdpNat: the system stack's user-space UDP NAT, one session per client endpoint (endpoint-independent)."""

import ipaddress
import itertools
import logging
import time
from collections import Counter

from .._fast import defs as d
from .handler import Flow, Verdict

log = logging.getLogger("ztun.udp")


class NatUdpSession:
    """One client (address, port): datagrams to any destination, replies from any source (a handler.UdpSession)."""

    __slots__ = ("nat", "key", "flow", "source", "destination", "on_datagram", "on_close", "last_active", "closed",
                 "packets_up", "bytes_up", "packets_down", "bytes_down", "_client", "_version")

    def __init__(self, nat, key, flow, now):
        self.nat, self.key, self.flow = nat, key, flow
        self.source, self.destination = flow.source, flow.destination
        self._version, self._client = key[0], key[1]
        self.on_datagram = None
        self.on_close = None
        self.last_active = now
        self.closed = False
        self.packets_up = self.bytes_up = self.packets_down = self.bytes_down = 0

    def send(self, payload, from_address) -> bool:
        """Send payload to the client as if from from_address; False if dropped (closed, wrong family, too big)."""
        if self.closed:
            return False
        src = ipaddress.ip_address(from_address[0]).packed
        if len(src) != len(self._client):
            self.nat.counters["reply_wrong_family"] += 1
            return False
        self.last_active = time.monotonic()
        if not self.nat.out.udp(src, from_address[1], self._client, self.source[1], payload):
            self.nat.counters["reply_too_big"] += 1
            return False
        self.packets_down += 1
        self.bytes_down += len(payload)
        return True

    def close(self) -> None:
        self.nat._end(self, "closed")


class UdpNat:
    """Turns UDP packets read from the TUN into sessions for the handler, and its replies into packets."""

    def __init__(self, loop, out, handler, *, timeout: float = 60.0, max_sessions: int = 16384, ids=None):
        self.loop = loop
        self.ids = ids if ids is not None else itertools.count(1)  # Flow.id, shared with the stack's TCP flows
        self.out = out
        self.handler = handler
        self.timeout = timeout
        self.max_sessions = max_sessions
        self.sessions: dict = {}
        self.counters: Counter = Counter()
        self._blocked: dict = {}  # key -> expiry, for flows the handler dropped
        self._timer = loop.call_later(self._sweep_interval(), self._sweep)

    def _sweep_interval(self) -> float:
        return min(max(self.timeout / 4, 0.05), 5.0)

    def on_packet(self, batch, i: int, now: float) -> None:
        """Handle UDP slot i of a parsed batch."""
        m = batch.meta[i]
        self.counters["datagrams"] += 1
        if m["frag"] != d.FRAG_NONE:
            # IPv4/IPv6 fragments are not reassembled: a client behind a TUN with MTU >= 1280
            # only fragments datagrams larger than the MTU, which UDP applications avoid.
            self.counters["dropped_fragment"] += 1
            return
        version = int(m["version"])
        alen = 4 if version == 4 else 16
        client = m["src"].tobytes()[:alen]
        sport = int(m["src_port"])
        key = (version, client, sport)
        h = batch.headroom + int(m["payload_off"])
        payload = batch.data[i, h : h + int(m["payload_len"])].tobytes()
        dst = (str(ipaddress.ip_address(m["dst"].tobytes()[:alen])), int(m["dst_port"]))
        s = self.sessions.get(key)
        if s is None:
            if self._blocked.get(key, 0.0) > now:
                self.counters["dropped_blocked"] += 1
                return
            source = (str(ipaddress.ip_address(client)), sport)
            flow = Flow(d.PROTO_UDP, source, dst, id=next(self.ids))
            try:
                verdict = self.handler.prepare(flow)
            except Exception:
                log.exception("prepare failed for UDP %s -> %s", source, dst)
                verdict = Verdict.DROP
            if verdict == Verdict.REJECT:
                self.counters["rejected"] += 1
                self.out.unreachable(batch, i, 13)
                return
            if verdict != Verdict.ALLOW:
                self.counters["dropped_blocked"] += 1
                self._blocked[key] = now + self.timeout
                return
            if len(self.sessions) >= self.max_sessions:
                self.counters["dropped_session_limit"] += 1
                if self.counters["dropped_session_limit"] == 1:
                    log.warning("UDP session limit %d reached: new sessions are refused", self.max_sessions)
                return
            s = self.sessions[key] = NatUdpSession(self, key, flow, now)
            flow.carrier = s
            self.counters["sessions_opened"] += 1  # stats() says udp_sessions_opened; udp_sessions is the gauge
            try:
                self.handler.handle_udp(s)
            except Exception:
                log.exception("handle_udp failed for %s", source)
                self._end(s, "error")
                return
        s.last_active = now
        s.packets_up += 1
        s.bytes_up += len(payload)
        if s.on_datagram is not None:
            try:
                verdict = s.on_datagram(payload, dst)
            except Exception:
                log.exception("UDP session %s failed; ending it", s.source)
                self._end(s, "error")
                return
            if verdict == Verdict.REJECT:  # a destination the handler refuses within an open session
                self.counters["rejected"] += 1
                self.out.unreachable(batch, i, 13)

    def _end(self, s: NatUdpSession, reason: str) -> None:
        if s.closed:
            return
        s.closed = True
        if self.sessions.get(s.key) is s:
            del self.sessions[s.key]
        self.counters[f"ended_{reason}"] += 1
        if s.on_close is not None:
            try:
                s.on_close(s, reason)
            except Exception:
                log.exception("UDP session on_close failed")

    def _sweep(self) -> None:
        now = time.monotonic()
        for s in [s for s in self.sessions.values() if now - s.last_active > self.timeout]:
            self._end(s, "idle")
        for key in [k for k, t in self._blocked.items() if t <= now]:
            del self._blocked[key]
        self._timer = self.loop.call_later(self._sweep_interval(), self._sweep)

    def close(self) -> None:
        """End every session. Idempotent."""
        self._timer.cancel()
        for s in list(self.sessions.values()):
            self._end(s, "closed")
