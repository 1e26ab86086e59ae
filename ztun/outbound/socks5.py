"""The SOCKS5 outbound (RFC 1928, username/password auth of RFC 1929): CONNECT and UDP ASSOCIATE on ztun's loop.

The negotiation is made by the loop's handshake engine (ztun._fast.handshake: the connect to
the proxy and every exchange on a native thread, the loop woken once at the end; its twin
runs the same steps on the loop). The protocol's words live here once: the negotiation is a
generator of steps ("send these bytes", "receive exactly n bytes"), replayed over the bytes
the engine received to name a failure. Reading exactly the lengths the protocol announces
means the bytes a server-first protocol sends right after the CONNECT reply stay in the
socket for the relay. One deadline covers the connect to the proxy and the whole
negotiation, so a proxy that never answers or drips one byte at a time costs that flow only.
"""

import errno
import ipaddress
import logging
import os
import socket
import struct
import urllib.parse
from collections import deque

from .._fast import udptable
from .._fast.defs import HS_CONNECT_FAILED, HS_EOF, HS_KIND_NAMES, HS_OK, HS_RECV_FAILED, HS_SEND_FAILED
from ..errors import ZtunError
from ..net import endpoint_text, host_port, is_host
from ..system.sockopt import Egress
from .direct import give_socket, tcp_socket, udp_socket

log = logging.getLogger("ztun.socks5")

VERSION = 5
METHOD_NONE, METHOD_USERPASS, METHOD_NO_ACCEPTABLE = 0x00, 0x02, 0xFF
CMD_CONNECT, CMD_UDP_ASSOCIATE = 0x01, 0x03
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04
DEFAULT_PORT = 1080

UDP_QUEUE_DATAGRAMS = 64  # datagrams held while the association is being set up
UDP_QUEUE_BYTES = 256 * 1024
UDP_READS_PER_EVENT = 64  # bounded per readiness event so other fds get their turn
CONTROL_READ = 4096

# REP codes of RFC 1928 section 6: the errno a client's connect would have seen, and the text.
REPLY_ERRORS = {
    0x01: (errno.ECONNREFUSED, "general SOCKS server failure"),
    0x02: (errno.ECONNREFUSED, "connection not allowed by ruleset"),
    0x03: (errno.ENETUNREACH, "network unreachable"),
    0x04: (errno.EHOSTUNREACH, "host unreachable"),
    0x05: (errno.ECONNREFUSED, "connection refused"),
    0x06: (errno.ETIMEDOUT, "TTL expired"),
    0x07: (errno.EOPNOTSUPP, "command not supported"),
    0x08: (errno.EAFNOSUPPORT, "address type not supported"),
}


# --- wire format ------------------------------------------------------------------


def encode_address(host: str, port: int, domain: str | None = None) -> bytes:
    """ATYP, address and port as in a request or UDP header: the domain form when domain is given."""
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    if domain is not None:
        name = domain.rstrip(".")
        try:
            raw = name.encode("ascii")
        except UnicodeEncodeError:
            try:
                raw = name.encode("idna")
            except UnicodeError as e:
                raise ValueError(f"domain {domain!r} cannot be encoded: {e}") from None
        if not 1 <= len(raw) <= 255:
            raise ValueError(f"domain {domain!r} must be 1..255 bytes")
        return bytes((ATYP_DOMAIN, len(raw))) + raw + struct.pack("!H", port)
    ip = ipaddress.ip_address(host)
    return bytes((ATYP_IPV4 if ip.version == 4 else ATYP_IPV6,)) + ip.packed + struct.pack("!H", port)


class BadDatagram(ValueError):
    """A datagram from the UDP relay that is dropped; counter names the drop reason."""

    def __init__(self, counter: str, message: str):
        super().__init__(message)
        self.counter = counter


def wrap_udp(payload: bytes, destination: tuple, domain: str | None = None) -> bytes:
    """The SOCKS5 UDP request header (RSV 0, FRAG 0, destination) followed by payload."""
    return b"\0\0\0" + encode_address(destination[0], destination[1], domain) + payload


def unwrap_udp(data: bytes) -> tuple[bytes, tuple[str, int]]:
    """(payload, (source host, port)) of a datagram from the relay; BadDatagram if it is to be dropped.

    The source host is an IP address string, or a domain name if the relay gave one (ATYP 3).
    """
    if len(data) < 4:
        raise BadDatagram("udp_bad_header", f"{len(data)} bytes, shorter than a SOCKS5 UDP header")
    if data[0] or data[1]:
        raise BadDatagram("udp_bad_header", "reserved bytes are not zero")
    if data[2]:
        raise BadDatagram("udp_frag_dropped", f"fragment {data[2]} (fragmentation is not supported)")
    atyp = data[3]
    if atyp == ATYP_IPV4:
        end = 4 + 4
        if len(data) < end + 2:
            raise BadDatagram("udp_bad_header", "truncated IPv4 address")
        host = str(ipaddress.IPv4Address(data[4:end]))
    elif atyp == ATYP_IPV6:
        end = 4 + 16
        if len(data) < end + 2:
            raise BadDatagram("udp_bad_header", "truncated IPv6 address")
        host = str(ipaddress.IPv6Address(data[4:end]))
    elif atyp == ATYP_DOMAIN:
        if len(data) < 5 or data[4] == 0:
            raise BadDatagram("udp_bad_header", "empty or missing domain name")
        end = 5 + data[4]
        if len(data) < end + 2:
            raise BadDatagram("udp_bad_header", "truncated domain name")
        try:
            host = data[5:end].decode("ascii")
        except UnicodeDecodeError:
            raise BadDatagram("udp_bad_header", "domain name is not ASCII") from None
    else:
        raise BadDatagram("udp_bad_header", f"unknown address type {atyp}")
    port = (data[end] << 8) | data[end + 1]
    return data[end + 2:], (host, port)


# --- the negotiation as a generator of steps ---------------------------------------


class _Send:
    __slots__ = ("data", "what")

    def __init__(self, data: bytes, what: str):
        self.data, self.what = data, what


class _Recv:
    __slots__ = ("n", "what")

    def __init__(self, n: int, what: str):
        self.n, self.what = n, what


class _Fail(Exception):
    """The proxy did something the flow cannot survive: errno, counter to increment, reason."""

    def __init__(self, err: int, counter: str, reason: str):
        super().__init__(reason)
        self.err, self.counter, self.reason = err, counter, reason


def _greeting(username: bytes | None) -> bytes:
    methods = bytes((METHOD_NONE, METHOD_USERPASS)) if username is not None else bytes((METHOD_NONE,))
    return bytes((VERSION, len(methods))) + methods


def _auth(username: bytes, password: bytes) -> bytes:
    return bytes((1, len(username))) + username + bytes((len(password),)) + password


def _request(command: int, address: bytes) -> bytes:
    return bytes((VERSION, command, 0)) + address


def greet(username: bytes | None, password: bytes | None):
    """Greeting and optional RFC 1929 auth: the part of every negotiation a health probe runs alone.

    Yields _Send and _Recv steps; raises _Fail.
    """
    yield _Send(_greeting(username), "greeting")
    ver, method = yield _Recv(2, "method selection")
    if ver != VERSION:
        raise _Fail(errno.EPROTO, "socks_bad_version", f"method selection has version {ver}, not 5 (not a SOCKS5 proxy?)")
    if method == METHOD_NO_ACCEPTABLE:
        offered = "no-auth or username/password" if username is not None else "no-auth only (configure a username and password?)"
        raise _Fail(errno.ECONNREFUSED, "socks_no_method", f"no acceptable authentication method; offered {offered}")
    if method == METHOD_USERPASS and username is not None:
        yield _Send(_auth(username, password), "authentication")
        ver, status = yield _Recv(2, "authentication reply")
        if ver != 1:
            raise _Fail(errno.EPROTO, "socks_bad_version", f"authentication reply has version {ver}, not 1")
        if status != 0:
            raise _Fail(errno.ECONNREFUSED, "socks_auth_failed",
                        f"authentication failed (status {status:#x}): wrong username or password")
    elif method != METHOD_NONE:
        raise _Fail(errno.EPROTO, "socks_bad_method", f"chose authentication method {method:#x}, which was not offered")


def negotiate(username: bytes | None, password: bytes | None, command: int, address: bytes, what: str):
    """Greeting, optional RFC 1929 auth, one request; returns the reply's bound (host, port).

    Yields _Send and _Recv steps; each _Recv is answered with exactly n bytes. Raises _Fail.
    """
    yield from greet(username, password)
    yield _Send(_request(command, address), "request")
    ver, rep, _rsv, atyp = yield _Recv(4, f"{what} reply")
    if ver != VERSION:
        raise _Fail(errno.EPROTO, "socks_bad_version", f"{what} reply has version {ver}, not 5")
    if rep != 0:
        err, text = REPLY_ERRORS.get(rep, (errno.EPROTO, "unknown reply code"))
        raise _Fail(err, "socks_reply_error", f"{what} failed: {text} (reply code {rep:#x})")
    if atyp == ATYP_IPV4:
        raw = yield _Recv(6, f"{what} reply's IPv4 address")
        host = str(ipaddress.IPv4Address(raw[:4]))
    elif atyp == ATYP_IPV6:
        raw = yield _Recv(18, f"{what} reply's IPv6 address")
        host = str(ipaddress.IPv6Address(raw[:16]))
    elif atyp == ATYP_DOMAIN:
        (n,) = yield _Recv(1, f"{what} reply's address length")
        if n == 0:
            raise _Fail(errno.EPROTO, "socks_bad_reply", f"{what} reply has an empty domain name")
        raw = yield _Recv(n + 2, f"{what} reply's {n}-byte domain name")
        host = raw[:n].decode("ascii", "replace")
    else:
        raise _Fail(errno.EPROTO, "socks_bad_reply", f"{what} reply has unknown address type {atyp}")
    return host, (raw[-2] << 8) | raw[-1]


def replay(steps, progress):
    """Run a negotiation's generator over what the engine received (a Progress): (None, result) if it
    ended, or (step, got) for the step it stopped at, with got bytes of it received. Raises _Fail
    where the bytes break the protocol: the one place a failure is worded, whichever engine ran it."""
    complete, value = progress.transcript[:len(progress.transcript) - progress.partial], None
    try:
        while True:
            step = steps.send(value)
            if isinstance(step, _Recv):
                if len(complete) < step.n:  # the receive under way (complete is empty by now)
                    return step, progress.partial
                value, complete = complete[:step.n], complete[step.n:]
            else:
                if not complete and progress.sending:
                    return step, 0
                value = None
    except StopIteration as stop:
        return None, stop.value
    finally:
        steps.close()


class Plan:
    """One negotiation: the bytes it sends (greeting, auth, request: empty for a probe) and its generator."""

    __slots__ = ("username", "password", "command", "address", "what", "greeting", "auth", "request")

    def __init__(self, username: bytes | None, password: bytes | None, command: int = 0, address: bytes = b"",
                 what: str = ""):
        self.username, self.password, self.command, self.address, self.what = username, password, command, address, what
        self.greeting = _greeting(username)
        self.auth = _auth(username, password) if username is not None else b""
        self.request = _request(command, address) if command else b""

    def steps(self):
        if self.command:
            return negotiate(self.username, self.password, self.command, self.address, self.what)
        return greet(self.username, self.password)


class Handshake:
    """A connection to the proxy and one negotiation on it, made by the loop's handshake engine
    (loop.handshakes: a native thread, or its twin on the loop); cancel() ends it silently.

    on_done(sock, (host, port)) after a successful reply (the reply's bound address, when
    want_bound; else None), or on_done(None, OSError) with a reason naming the proxy and what
    went wrong; called once, always from the loop. count(counter, reason) hears of a failure
    (default: the outbound's counters; a health probe counts nothing there).
    """

    __slots__ = ("outbound", "loop", "plan", "on_done", "count", "want_bound", "sock", "id", "timer", "done")

    def __init__(self, outbound: "Socks5Outbound", plan: Plan, on_done, count=None, want_bound: bool = False):
        self.outbound, self.loop, self.plan, self.on_done = outbound, outbound.loop, plan, on_done
        self.count = outbound.count if count is None else count
        self.want_bound = want_bound
        self.sock = self.id = None
        self.done = False
        self.timer = self.loop.call_later(outbound.connect_timeout, self._timeout)
        try:
            self.sock = tcp_socket(outbound.family, outbound.egress)
            self.id = self.loop.handshakes.start(self.sock, outbound.proxy_address, plan.greeting, plan.auth,
                                                 plan.request, plan.username is not None, self._ended)
        except (OSError, ValueError, ZtunError) as e:
            err = getattr(e, "errno", None) or errno.EIO
            self.loop.call_soon(self._fail, err, "proxy_connect_failed", f"connect: {e}")

    def _ended(self, progress):
        self.id = None
        if self.done:
            return
        if progress.kind == HS_OK:
            self._succeed(replay(self.plan.steps(), progress)[1] if self.want_bound else None)
            return
        if progress.kind == HS_CONNECT_FAILED:
            self._fail(progress.err, "proxy_connect_failed", f"connect: {os.strerror(progress.err)}")
            return
        try:
            step, got = replay(self.plan.steps(), progress)
        except _Fail as f:
            self._fail(f.err, f.counter, f.reason)
            return
        err, what = progress.err, "the negotiation" if step is None else f"the {step.what}"
        if progress.kind == HS_SEND_FAILED:
            self._fail(err, "socks_closed", f"sending {what}: {os.strerror(err)}")
        elif progress.kind == HS_RECV_FAILED:
            self._fail(err, "socks_closed", f"reading {what}: {os.strerror(err)}")
        elif progress.kind == HS_EOF and step is not None:
            self._fail(errno.ECONNRESET, "socks_truncated",
                       f"closed the connection during {what} ({got} of {step.n} bytes)")
        else:  # the engine and the generator disagree: never in a test, named plainly should it happen
            self._fail(errno.EPROTO, "socks_bad_reply", f"{HS_KIND_NAMES[progress.kind]} at {what}")

    def _timeout(self):
        progress = self.loop.handshakes.cancel(self.id) if self.id is not None else None
        self.id = None
        limit = f"{self.outbound.connect_timeout:g}s"
        if progress is None or not progress.connected:
            reason = f"connect: no answer within {limit}"
        else:
            try:
                step, got = replay(self.plan.steps(), progress)
            except _Fail:  # cannot be: a failure ends the negotiation at once
                step = None
            if step is None:
                reason = f"no complete answer within {limit}"
            elif isinstance(step, _Send):
                reason = f"no complete answer within {limit} (sending the {step.what})"
            else:
                reason = f"no complete answer within {limit} (waiting for the {step.what}: {got} of {step.n} bytes)"
        self._fail(errno.ETIMEDOUT, "socks_timeout", reason, progress)

    def _release(self):
        """Stop everything; returns the socket (still open) if there was one."""
        self.done = True
        self.timer.cancel()
        if self.id is not None:
            self.loop.handshakes.cancel(self.id)
            self.id = None
        sock, self.sock = self.sock, None
        return sock

    def _close(self, sock, progress=None):
        """Close sock: at once once connected (no other thread uses it then), else through the socket
        worker, where the twin's connect may still be queued."""
        if progress is not None and not progress.connected:
            self.loop.sockq.close(sock)
        else:
            sock.close()

    def _succeed(self, bound):
        sock = self._release()
        self.on_done(sock, bound)

    def _fail(self, err: int, counter: str, reason: str, progress=None):
        if self.done:
            return
        sock = self._release()
        if sock is not None:
            self._close(sock, progress)
        reason = f"socks5 proxy {self.outbound.label}: {reason}"
        self.count(counter, reason)
        self.on_done(None, OSError(err, reason))

    def cancel(self):
        """Close the connection to the proxy; on_done is never called."""
        if self.done:
            return
        progress = self.loop.handshakes.cancel(self.id) if self.id is not None else None
        self.id = None
        sock = self._release()
        if sock is not None:
            self._close(sock, progress)


# --- UDP ASSOCIATE -----------------------------------------------------------------


class Socks5UdpFlow:
    """One UDP association: the TCP control connection, kept for the flow's lifetime, and a UDP socket to the relay."""

    def __init__(self, outbound: "Socks5Outbound", on_datagram, on_close):
        self.outbound = outbound
        self.loop = outbound.loop
        self.counters = outbound.counters
        self.on_datagram, self.on_close = on_datagram, on_close
        self.queue: deque = deque()
        self.queued_bytes = 0
        self.control = None
        self.udp = None
        self.relay = None
        self.closed = False
        self._detach = None  # set once the UDP socket is handed over to a session's table
        zero = "::" if outbound.family == socket.AF_INET6 else "0.0.0.0"
        plan = Plan(outbound.username, outbound.password, CMD_UDP_ASSOCIATE, encode_address(zero, 0), "UDP ASSOCIATE")
        self.handshake = Handshake(outbound, plan, self._associated, want_bound=True)

    @property
    def ready(self) -> bool:
        return self.udp is not None

    def _associated(self, sock, result):
        self.handshake = None
        if sock is None:
            self._count("udp_failed")  # the reason was counted and logged by the handshake
            self._die(result.strerror)
            return
        self.control = sock
        host, port = result
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            self._failed("socks_bad_reply", f"UDP relay address {host!r} is not an IP address")
            return
        if ip.is_unspecified:  # "the relay is where you reached me"
            ip = ipaddress.ip_address(self.outbound.proxy_address[0])
        if port == 0:
            self._failed("socks_bad_reply", "UDP relay port is 0")
            return
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and self.outbound.family == socket.AF_INET:
            ip = ip.ipv4_mapped
        self.relay = (str(ip), port)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        try:
            udp = udp_socket(family, self.outbound.egress)
        except (OSError, ZtunError) as e:
            self._failed("udp_socket_failed", f"UDP socket: {e}")
            return
        try:
            udp.connect(self.relay)  # the kernel then only delivers datagrams from the relay
        except OSError as e:
            udp.close()
            self._failed("udp_relay_unreachable", f"UDP relay {endpoint_text(self.relay)}: {e.strerror or e}")
            return
        self.udp = udp
        self._count("udp_ok")
        self.loop.add_reader(sock.fileno(), self._control_readable)
        self.loop.add_reader(udp.fileno(), self._udp_readable)
        while self.queue and not self.closed:
            self._send_now(self.queue.popleft())
        self.queued_bytes = 0

    def _failed(self, counter: str, reason: str):
        reason = f"socks5 proxy {self.outbound.label}: {reason}"
        self.outbound.count(counter, reason)
        self._count("udp_failed")
        self._die(reason)

    def send(self, payload: bytes, destination: tuple, domain: str | None = None) -> bool:
        """Wrap payload for destination and send it to the relay (queued until the association is ready)."""
        if self.closed:
            return False
        try:
            data = wrap_udp(payload, destination, domain)
        except ValueError:
            self._count("udp_bad_destination")
            return False
        if self.udp is not None:
            return self._send_now(data)
        if len(self.queue) >= UDP_QUEUE_DATAGRAMS or self.queued_bytes + len(data) > UDP_QUEUE_BYTES:
            self._count("udp_queue_full")
            return False
        self.queue.append(data)
        self.queued_bytes += len(data)
        return True

    def hand_over(self, attach) -> bool:
        """Once the association is ready, the session's table reads the relay's datagrams (see UdpFlow)."""
        if self._detach is None and not self.closed and self.udp is not None:
            self._detach = give_socket(self.loop, self.udp, udptable.SOCKS5, self._udp_readable, attach)
        return self._detach is not None

    def route_for(self, destination: tuple, domain: str | None = None) -> tuple:
        """To the relay, each datagram behind the UDP request header for destination (by domain if given)."""
        return None, wrap_udp(b"", destination, domain)

    def _send_now(self, data: bytes) -> bool:
        try:
            self.udp.send(data)
        except (BlockingIOError, InterruptedError):
            self._count("udp_send_dropped")
            return False
        except OSError:
            self._count("udp_send_error")  # e.g. an ICMP error from an earlier datagram: not fatal
            return False
        self._count("udp_sent")
        return True

    def _udp_readable(self):
        for _ in range(UDP_READS_PER_EVENT):
            if self.closed:
                return
            try:
                data = self.udp.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._count("udp_recv_error")  # ICMP unreachable from the relay: the flow lives on
                continue
            try:
                payload, source = unwrap_udp(data)
            except BadDatagram as e:
                self.outbound.count(e.counter, f"socks5 proxy {self.outbound.label}: datagram from the UDP relay dropped: {e}")
                continue
            self._count("udp_received")
            self.on_datagram(payload, source)

    def _control_readable(self):
        try:
            data = self.control.recv(CONTROL_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._count("udp_closed_by_proxy")
            self._die(f"socks5 proxy {self.outbound.label}: UDP control connection: {e.strerror or e}")
            return
        if not data:
            self._count("udp_closed_by_proxy")
            self._die(f"socks5 proxy {self.outbound.label}: UDP control connection closed by the proxy")
        # Anything else on the control connection means nothing in RFC 1928: ignored.

    def _count(self, name: str):
        self.outbound.count(name)

    def _die(self, reason: str):
        if self.closed:
            return
        self._release()
        self.on_close(reason)

    def _release(self):
        self.closed = True
        if self.handshake is not None:
            self.handshake.cancel()
            self.handshake = None
        for attr in ("control", "udp"):
            sock = getattr(self, attr)
            if sock is not None:
                if attr == "udp" and self._detach is not None:
                    self._detach()  # the table stops reading it before it closes
                    self._detach = None
                else:
                    self.loop.remove_reader(sock.fileno())
                sock.close()
                setattr(self, attr, None)
        self.queue.clear()
        self.queued_bytes = 0

    def close(self) -> None:
        """Release the control connection, the UDP socket and the queue. Idempotent; on_close is not called."""
        if not self.closed:
            self._release()


# --- the outbound ------------------------------------------------------------------


def _credential(value, what: str) -> bytes | None:
    if value is None:
        return None
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    if not 1 <= len(raw) <= 255:
        raise ValueError(f"socks5 {what} must be 1..255 bytes (RFC 1929), got {len(raw)}")
    return raw


def _resolve(host: str, port: int) -> str:
    """host as an IP address string; a name is resolved once, here (blocking: call at configuration time)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"socks5 proxy host {host!r} cannot be resolved: {e.strerror}") from None
    return str(ipaddress.ip_address(infos[0][4][0]))


class Socks5Outbound:
    """Flows go through a SOCKS5 proxy: TCP with CONNECT, UDP with UDP ASSOCIATE; sockets carry ztun's fwmark or are bound to the uplink (egress).

    Nothing sticks between flows: a proxy that is down fails each new flow fast (its
    connect is refused), and flows succeed again as soon as it is back.
    """

    blocks = False
    resolves_names = True  # given a domain, it CONNECTs by name: the proxy resolves it

    def __init__(self, loop, host: str, port: int, *, username: str | None = None, password: str | None = None,
                 fwmark: int = 0, egress: Egress | None = None, connect_timeout: float = 10.0, name: str = "proxy",
                 address: str | None = None):
        if not isinstance(port, int) or not 1 <= port <= 0xFFFF:
            raise ValueError(f"socks5 proxy port must be 1..65535, got {port!r}")
        if (username is None) != (password is None):
            raise ValueError("socks5 proxy needs both a username and a password, or neither")
        self.loop = loop
        self.name = name
        self.host = host
        self.username = _credential(username, "username")
        self.password = _credential(password, "password")
        ip = address or _resolve(host, port)  # address: host's IP as already looked up (a reload)
        self._address = (ip, port)
        self.family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        self.label = host_port(ip, port)
        self.egress = egress if egress is not None else Egress(fwmark)  # shared: the monitor moves its binding
        self.fwmark = self.egress.fwmark
        self.connect_timeout = connect_timeout
        self.counters: dict[str, int] = {"tcp_ok": 0, "tcp_failed": 0}
        # The last health probe's result (ztun.appliance.health keeps it): state "unknown" (not probed
        # yet), "ok" or "failing"; error, the failing probe's reason; checked, its time.time().
        self.health: dict = {"state": "unknown", "error": None, "checked": None}

    @classmethod
    def from_url(cls, loop, url: str, **kw) -> "Socks5Outbound":
        """An outbound for `socks5://[user:password@]host:port` (credentials percent-decoded, IPv6 host in [ ])."""
        host, port, username, password = parse_url(url)
        return cls(loop, host, port, username=username, password=password, **kw)

    def count(self, name: str, reason: str | None = None) -> None:
        """Increment counter name; the first time, log reason as a warning (later ones are only counted)."""
        n = self.counters.get(name, 0)
        self.counters[name] = n + 1
        if n == 0 and reason is not None:
            log.warning("%s (%s; further ones are counted, not logged here)", reason, name)

    @property
    def proxy_address(self) -> tuple[str, int]:
        """(IP, port) of the proxy: to be kept out of the TUN routes."""
        return self._address

    def open_tcp(self, destination: tuple, on_done, domain: str | None = None) -> Handshake | None:
        """CONNECT to destination (or to (domain, port) when domain is given); on_done(sock, error) once, on the loop."""
        try:
            address = encode_address(destination[0], destination[1], domain)
        except ValueError as e:
            self.counters["tcp_failed"] += 1
            self.loop.call_soon(on_done, None, OSError(errno.EINVAL, f"socks5 proxy {self.label}: bad destination: {e}"))
            return None
        target = f"{domain}:{destination[1]}" if domain is not None else endpoint_text(destination)

        def done(sock, result):
            if sock is None:
                self.counters["tcp_failed"] += 1
                on_done(None, result)
            else:
                self.counters["tcp_ok"] += 1
                on_done(sock, None)

        return Handshake(self, Plan(self.username, self.password, CMD_CONNECT, address, f"CONNECT to {target}"), done)

    def probe(self, on_done) -> Handshake:
        """Connect to the proxy, greet it and authenticate, then close: on_done(None) if it took us,
        on_done(reason) if not; once, on the loop, within connect_timeout. Counts nothing."""

        def done(sock, result):
            if sock is None:
                on_done(result.strerror)
            else:
                sock.close()
                on_done(None)

        return Handshake(self, Plan(self.username, self.password), done, count=_count_nothing)

    def open_udp(self, family: int, on_datagram, on_close) -> Socks5UdpFlow:
        """A UDP ASSOCIATE flow; datagrams sent before it is ready wait in a small queue."""
        return Socks5UdpFlow(self, on_datagram, on_close)

    def close(self) -> None:
        """Nothing is held between flows (each flow owns its sockets). Idempotent."""


def _count_nothing(counter: str, reason: str | None = None) -> None:
    pass


def parse_url(url: str) -> tuple[str, int, str | None, str | None]:
    """(host, port, username, password) of `socks5://[user:password@]host[:port]`; ValueError naming what is wrong.

    The port is DEFAULT_PORT when left out (as curl has it); an IPv6 host goes in [ ]; user and
    password are percent-decoded, both or neither, 1..255 bytes each (RFC 1929); nothing follows
    host:port. The errors leave the URL out: it may hold a password.
    """
    try:
        parts = urllib.parse.urlsplit(url.strip())
    except ValueError as e:
        raise ValueError(f"bad proxy URL: {e}") from None
    if parts.scheme.lower() != "socks5":
        raise ValueError(f"bad proxy URL: scheme must be socks5://, not {parts.scheme or 'missing'}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("bad proxy URL: nothing may follow host:port")
    host = parts.hostname
    if not host:
        raise ValueError("bad proxy URL: no host")
    if not is_host(host):
        raise ValueError(f"bad proxy URL: {host!r} is not a host name or IP address")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("bad proxy URL: port must be a number 1..65535") from None
    if port == 0:
        raise ValueError("bad proxy URL: port must be 1..65535")
    if "[" in parts.netloc.rpartition("@")[2]:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad proxy URL: {host!r} in [ ] is not an IPv6 address") from None
    username = password = None
    if parts.username is not None or parts.password is not None:
        if parts.password is None:
            raise ValueError("bad proxy URL: a username needs a password (user:password@)")
        username = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password)
        for value, what in ((username, "username"), (password, "password")):
            if not 1 <= len(value.encode("utf-8")) <= 255:
                raise ValueError(f"bad proxy URL: the {what} must be 1..255 bytes (RFC 1929)")
    return host, DEFAULT_PORT if port is None else port, username, password
