"""UdpNat: the system stack's user-space UDP NAT, one session per client endpoint (endpoint-independent).

Each session has a place in the compiled UdpTable (ztun._fast.udptable): its activity and
byte counts live there, and once the handler has routed a destination (session.route) the
table moves that destination's datagrams both ways without Python. What it has no route for
comes here, to the handler's on_datagram.
"""

import ipaddress
import itertools
import logging
import os
import socket
import time
from collections import Counter

from .._fast import defs as d
from .._fast import udptable
from .handler import Flow, Verdict

log = logging.getLogger("ztun.udp")

REPLY_ROUNDS = 4  # output batches filled per wake-up of the table: then the loop serves the rest
# ZTUN_UDP_SENDER=thread: the compiled table sends routed datagrams from a native thread of its own
# (their kernel work is most of the loop's time under many sessions). Off by default: on this project's
# 2-core machine, shared with the load's client and server, the thread's wake-ups cost more than the
# parallel sends gained (README performance section).
SENDER_THREAD = os.environ.get("ZTUN_UDP_SENDER", "inline") == "thread"


def _text(packed: bytes) -> str:
    """An address's text as ipaddress writes it (inet_ntop for IPv4, the same and much cheaper)."""
    return socket.inet_ntop(socket.AF_INET, packed) if len(packed) == 4 else str(ipaddress.ip_address(packed))


class NatUdpSession:
    """One client (address, port): datagrams to any destination, replies from any source (a handler.UdpSession)."""

    __slots__ = ("nat", "key", "flow", "source", "destination", "on_datagram", "on_close", "closed", "sid",
                 "_final", "_client", "_version")

    def __init__(self, nat, key, flow, sid):
        self.nat, self.key, self.flow, self.sid = nat, key, flow, sid
        self.source, self.destination = flow.source, flow.destination
        self._version, self._client = key[0], key[1]
        self.on_datagram = None
        self.on_close = None
        self.closed = False
        self._final = (0, 0, 0, 0)  # the table's counts, kept when the session ends

    def _counts(self):
        return self._final if self.closed else self.nat.table.counts(self.sid)

    @property
    def bytes_up(self) -> int:
        return self._counts()[1]

    @property
    def bytes_down(self) -> int:
        return self._counts()[3]

    def send(self, payload, from_address) -> bool:
        """Send payload to the client as if from from_address; False if dropped (closed, wrong family, too big)."""
        if self.closed:
            return False
        src = ipaddress.ip_address(from_address[0]).packed
        if len(src) != len(self._client):
            self.nat.counters["reply_wrong_family"] += 1
            return False
        if not self.nat.out.udp(src, from_address[1], self._client, self.source[1], payload):
            self.nat.counters["reply_too_big"] += 1
            return False
        self.nat.table.touch(self.sid, time.monotonic(), 0, 0, 1, len(payload))
        return True

    def attach(self, sock, kind, fake=None) -> int:
        if self.closed:
            return -1
        return self.nat.table.attach(self.sid, sock, kind, None if fake is None else ipaddress.ip_address(fake).packed)

    def detach(self, sock_id) -> None:
        if not self.closed:  # a closed session's sockets left the table with it
            self.nat.table.detach(sock_id)

    def route(self, destination, sock_id, to=None, prefix=None) -> bool:
        if self.closed:
            return False
        host = str(destination[0])
        try:
            address = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            return False
        if len(address) != len(self._client):
            return False
        return self.nat.table.route(self.sid, address, destination[1], sock_id, to, prefix)

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
        self.by_sid: dict = {}
        self.counters: Counter = Counter()
        self._blocked: dict = {}  # key -> expiry, for flows the handler dropped
        # Each session may route its destinations through a few sockets (one per outbound, one per
        # fake-IP destination): room for four each on average, and the routes of as many.
        self.table = udptable.UdpTable(loop, self._replies, sessions=max_sessions, routes=max(4 * max_sessions, 1024),
                                       sockets=max(4 * max_sessions, 256), sender_thread=SENDER_THREAD)
        # a coalesced reply (UDP_GRO on the sessions' sockets, ZTUN_UDP_RX_GRO=1) can go to the TUN whole, as a USO
        # super-packet, where the output queue writes them (GRO on write); else it is split
        self.table.uso = bool(out.gro)
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
        dst = (_text(m["dst"].tobytes()[:alen]), int(m["dst_port"]))
        s = self.sessions.get(key)
        if s is None:
            if self._blocked.get(key, 0.0) > now:
                self.counters["dropped_blocked"] += 1
                return
            source = (_text(client), sport)
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
            sid = self.table.open(version, client, sport, now)
            if sid < 0:
                self.counters["dropped_session_limit"] += 1
                if self.counters["dropped_session_limit"] == 1:
                    log.warning("UDP session limit %d reached: new sessions are refused", self.max_sessions)
                return
            s = self.sessions[key] = self.by_sid[sid] = NatUdpSession(self, key, flow, sid)
            flow.carrier = s
            self.counters["sessions_opened"] += 1  # stats() says udp_sessions_opened; udp_sessions is the gauge
            try:
                self.handler.handle_udp(s)
            except Exception:
                log.exception("handle_udp failed for %s", source)
                self._end(s, "error")
                return
        self.table.touch(s.sid, now, 1, len(payload))
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
        if self.sessions.get(s.key) is s:
            del self.sessions[s.key]
        self.counters[f"ended_{reason}"] += 1
        try:
            if s.on_close is not None:
                try:
                    s.on_close(s, reason)  # its flows detach their sockets from the table and close them
                except Exception:
                    log.exception("UDP session on_close failed")
        finally:
            s._final = self.table.counts(s.sid)
            s.closed = True
            self.table.close_session(s.sid)
            del self.by_sid[s.sid]

    def _replies(self) -> None:
        """The table's sockets have datagrams: built into the output queue's batch, written with it."""
        out, now = self.out, time.monotonic()
        for _ in range(REPLY_ROUNDS):
            start = out.room()
            end = self.table.receive(out.batch, start, now)
            if end == start:
                return
            out.filled(end)
        if self.table.pending:  # a coalesced message's datagrams wait; its socket may not be readable again
            self.loop.call_soon(self._replies)

    def all_counters(self) -> Counter:
        """udp.py's counters with the table's (datagrams it moved, and replies it dropped)."""
        out = Counter(self.counters)
        out.update(self.table.stats())
        return out

    def _sweep(self) -> None:
        now = time.monotonic()
        for sid in self.table.idle(now - self.timeout):
            self._end(self.by_sid[sid], "idle")
        for key in [k for k, t in self._blocked.items() if t <= now]:
            del self._blocked[key]
        self._timer = self.loop.call_later(self._sweep_interval(), self._sweep)

    def close(self) -> None:
        """End every session. Idempotent."""
        self._timer.cancel()
        for s in list(self.sessions.values()):
            self._end(s, "closed")
        self.table.close()
