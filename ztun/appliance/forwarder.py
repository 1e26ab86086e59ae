"""Forwarder: the default PacketHandler: every flow to its destination through the direct outbound.

TCP: the outbound connect happens first (the client's SYN waits), so a refused or timed-out
connect reaches the client as a refused connect; the accepted client socket is then relayed
to the connected one. UDP: one outbound socket per session. ICMP echo is answered by the stack.
"""

import logging
import socket
import time

from ..outbound.direct import DirectOutbound
from ..outbound.relay import PIPES, Relay, abort
from ..tun.handler import Verdict

log = logging.getLogger("ztun.flows")

CLAIM_TIMEOUT = 30.0  # a connected outbound socket whose client never completes its handshake is closed


class Forwarder:
    """Relays TCP and UDP flows to their original destinations."""

    icmp_echo = "reply"

    def __init__(self, loop, outbound: DirectOutbound, *, tcp_idle_timeout: float = 7200.0):
        self.loop = loop
        self.outbound = outbound
        self.tcp_idle_timeout = tcp_idle_timeout
        self._ready: dict = {}  # (source, destination) -> (remote socket, expiry timer)
        self.relays: set = set()
        self.connecting: set = set()  # outbound connects in progress
        self.udp: dict = {}  # session -> socket
        self.counters = {"tcp_connected": 0, "tcp_failed": 0, "tcp_unclaimed": 0, "udp_sessions": 0}

    # -- flows ------------------------------------------------------------------

    def prepare(self, flow, decide):
        if flow.proto != socket.IPPROTO_TCP:
            return Verdict.ALLOW
        key = (flow.source, flow.destination)

        def done(remote, error):
            self.connecting.discard(pending)
            if error is not None:
                self.counters["tcp_failed"] += 1
                log.info("tcp %s:%d -> %s:%d: %s", *flow.source, *flow.destination, error.strerror or error)
                decide(Verdict.REJECT)
                return
            self.counters["tcp_connected"] += 1
            old = self._ready.pop(key, None)
            if old is not None:
                _discard(old)
            self._ready[key] = (remote, self.loop.call_later(CLAIM_TIMEOUT, self._unclaimed, key))
            decide(Verdict.ALLOW)

        pending = self.outbound.open_tcp(flow.destination, done, domain=flow.domain)
        if pending is not None:
            self.connecting.add(pending)
        return Verdict.DEFER

    def _unclaimed(self, key):
        entry = self._ready.pop(key, None)
        if entry is not None:
            self.counters["tcp_unclaimed"] += 1
            entry[0].close()

    def handle_tcp(self, sock, source, destination):
        entry = self._ready.pop((source, destination), None)
        if entry is None:
            abort(sock)  # the outbound side is gone (claim timeout): tell the client at once
            return
        remote, timer = entry
        timer.cancel()  # sock comes with TCP_NODELAY (PacketHandler.handle_tcp)
        started = time.monotonic()

        def closed(relay, reason):
            self.relays.discard(relay)
            log.info("tcp %s:%d -> %s:%d direct up %d down %d bytes %.1fs %s", *source, *destination,
                     relay.bytes_up, relay.bytes_down, time.monotonic() - started, reason)

        self.relays.add(Relay(self.loop, sock, remote, on_close=closed, idle_timeout=self.tcp_idle_timeout))

    def handle_udp(self, session):
        family = socket.AF_INET6 if ":" in session.source[0] else socket.AF_INET
        sock = self.outbound.udp_socket(family)
        self.udp[session] = sock
        self.counters["udp_sessions"] += 1

        def readable():
            for _ in range(64):  # bounded per event so other fds get their turn
                try:
                    data, addr = sock.recvfrom(65535)
                except (BlockingIOError, InterruptedError):
                    return
                except OSError:
                    continue  # e.g. ICMP port unreachable from a previous send: not fatal for the session
                session.send(data, addr)

        def datagram(payload, destination):
            try:
                sock.sendto(payload, destination)
            except OSError:
                pass  # UDP: a failed send is a lost datagram

        def closed(_session, reason):
            self.loop.remove_reader(sock.fileno())
            sock.close()
            self.udp.pop(session, None)

        self.loop.add_reader(sock.fileno(), readable)
        session.on_datagram = datagram
        session.on_close = closed

    def handle_icmp(self, flow):
        return Verdict.ALLOW

    def close(self) -> None:
        """Close every relay, pending outbound socket and UDP socket. Idempotent."""
        for pending in list(self.connecting):
            pending.cancel()
        self.connecting.clear()
        for relay in list(self.relays):
            relay.close("closed", reset=True)
        for key in list(self._ready):
            _discard(self._ready.pop(key))
        for session in list(self.udp):
            session.close()
        PIPES.clear()


def _discard(entry):
    entry[1].cancel()
    entry[0].close()

