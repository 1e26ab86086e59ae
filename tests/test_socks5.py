"""The SOCKS5 outbound against a scripted in-process SOCKS5 server on loopback: good, broken and hostile proxies."""

import errno
import ipaddress
import os
import socket
import struct
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztun.outbound import socks5
from ztun.outbound.socks5 import Socks5Outbound, _Fail, negotiate, parse_url, unwrap_udp, wrap_udp, BadDatagram
from ztun import loop as _loop

from fake_proxy import FakeProxy, recv_exact


class Loop(_loop.Loop):
    """A loop whose socket worker and handshake engine (and their fds) exist before a test counts fds."""

    def __init__(self):
        super().__init__()
        self.sockq
        self.handshakes


def run_until(loop, cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        loop.run_once(0.02)
    return cond()


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_back_to(before: int, timeout=3.0) -> bool:
    """The fd count returns to before (the server threads of this process close their ends a moment later)."""
    end = time.monotonic() + timeout
    while fds() != before and time.monotonic() < end:
        time.sleep(0.02)
    return fds() == before


# --- the scripted server ----------------------------------------------------------------


def read_address(conn):
    atyp = recv_exact(conn, 1)[0]
    if atyp == 1:
        host = str(ipaddress.IPv4Address(recv_exact(conn, 4)))
    elif atyp == 4:
        host = str(ipaddress.IPv6Address(recv_exact(conn, 16)))
    else:
        host = recv_exact(conn, recv_exact(conn, 1)[0]).decode()
    return atyp, host, struct.unpack("!H", recv_exact(conn, 2))[0]


def greet(conn, credentials=None):
    """Server side of the greeting (and auth when credentials are required); False if the client failed auth."""
    ver, n = recv_exact(conn, 2)
    methods = recv_exact(conn, n)
    assert ver == 5
    if credentials is None:
        conn.sendall(b"\x05\x00")
        return True
    if 2 not in methods:
        conn.sendall(b"\x05\xff")
        return False
    conn.sendall(b"\x05\x02")
    ver, ulen = recv_exact(conn, 2)
    user = recv_exact(conn, ulen)
    plen = recv_exact(conn, 1)[0]
    password = recv_exact(conn, plen)
    ok = (user, password) == credentials
    conn.sendall(b"\x01\x00" if ok else b"\x01\x01")
    return ok


def request(conn):
    ver, cmd, _rsv = recv_exact(conn, 3)
    assert ver == 5
    return (cmd, *read_address(conn))


def connect_ok(banner=b""):
    """A good proxy: success reply (bound 127.0.0.1:4321) and then banner in the same segment, then echo."""

    def script(conn, proxy):
        greet(conn)
        proxy.requests.append(request(conn))
        conn.sendall(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x10\xe1" + banner)
        while data := conn.recv(4096):
            conn.sendall(data)

    return script


def open_tcp(loop, out, destination=("198.18.0.9", 80), domain=None, timeout=5.0):
    results = []
    pending = out.open_tcp(destination, lambda s, e: results.append((s, e)), domain=domain)
    assert results == []  # never called synchronously
    assert run_until(loop, lambda: results, timeout), "open_tcp never finished"
    assert len(results) == 1
    return results[0], pending


def failure(script, *, connect_timeout=5.0, **kw):
    """(OSError, outbound) of a flow through a proxy running script."""
    with Loop() as loop, FakeProxy(script) as proxy:
        out = Socks5Outbound(loop, *proxy.address, connect_timeout=connect_timeout, **kw)
        (sock, err), _ = open_tcp(loop, out, timeout=connect_timeout + 5)
        assert sock is None and isinstance(err, OSError)
        assert f"socks5 proxy 127.0.0.1:{proxy.address[1]}" in str(err)
        assert out.counters["tcp_failed"] == 1 and out.counters["tcp_ok"] == 0
        proxy.stop.set()
        return err, out


def blocking(sock):
    sock.setblocking(True)
    sock.settimeout(5)
    return sock


# --- CONNECT ---------------------------------------------------------------------------


@pytest.mark.parametrize("destination,domain,expected", [
    (("198.18.0.9", 80), None, (1, 1, "198.18.0.9", 80)),
    (("fd00::9", 443), None, (1, 4, "fd00::9", 443)),
    (("198.18.0.9", 8080), "example.test", (1, 3, "example.test", 8080)),
])
def test_connect_each_address_type_keeps_bytes_after_reply(destination, domain, expected):
    with Loop() as loop, FakeProxy(connect_ok(banner=b"SSH-2.0-server-first\r\n")) as proxy:
        out = Socks5Outbound(loop, *proxy.address)
        (sock, err), _ = open_tcp(loop, out, destination, domain)
        assert err is None
        with blocking(sock):
            assert recv_exact(sock, 22) == b"SSH-2.0-server-first\r\n"  # sent in the reply's segment, not lost
            sock.sendall(b"ping")
            assert recv_exact(sock, 4) == b"ping"
        assert proxy.requests == [expected]
        assert out.counters["tcp_ok"] == 1


def test_ipv6_proxy_and_domain_reply():
    def script(conn, proxy):
        greet(conn)
        proxy.requests.append(request(conn))
        conn.sendall(b"\x05\x00\x00\x03\x05proxy\x00\x50" + b"after")

    with Loop() as loop, FakeProxy(script, host="::1") as proxy:
        out = Socks5Outbound(loop, "::1", proxy.address[1])
        assert out.label == f"[::1]:{proxy.address[1]}"
        (sock, err), _ = open_tcp(loop, out)
        assert err is None
        with blocking(sock):
            assert recv_exact(sock, 5) == b"after"


def test_username_password():
    def script(conn, proxy):
        if greet(conn, credentials=(b"us\xc3\xa9r", b"p@ss:word")):
            request(conn)
            conn.sendall(b"\x05\x00\x00\x01\0\0\0\0\0\0")

    with Loop() as loop, FakeProxy(script) as proxy:
        out = Socks5Outbound.from_url(loop, f"socks5://us%C3%A9r:p%40ss%3Aword@127.0.0.1:{proxy.address[1]}")
        (sock, err), _ = open_tcp(loop, out)
        assert err is None
        sock.close()
    err, out = failure(script, username="user", password="wrong")
    assert err.errno == errno.ECONNREFUSED and "authentication failed" in err.strerror
    assert out.counters["socks_auth_failed"] == 1


def test_no_acceptable_method():
    script = lambda conn, proxy: greet(conn, credentials=(b"u", b"p"))  # noqa: E731 (we offer no-auth only)
    err, out = failure(script)
    assert err.errno == errno.ECONNREFUSED and "no acceptable authentication method" in err.strerror
    assert out.counters["socks_no_method"] == 1


def _replies(*chunks, hold=False):
    """A script that answers each client message with the next chunk (None: read the request), then closes or holds."""

    def script(conn, proxy):
        ver, n = recv_exact(conn, 2)
        recv_exact(conn, n)
        for chunk in chunks:
            if chunk is None:
                request(conn)
            else:
                conn.sendall(chunk)
        if hold:
            proxy.stop.wait(20)

    return script


@pytest.mark.parametrize("script,err_no,counter,words", [
    (_replies(b"\x04\x00"), errno.EPROTO, "socks_bad_version", "version 4"),
    (_replies(b"\x05\x00", None, b"\x04\x00\x00\x01" + bytes(6)), errno.EPROTO, "socks_bad_version", "version 4"),
    (_replies(b"\x05\x01"), errno.EPROTO, "socks_bad_method", "not offered"),
    (_replies(b"\x05\x00", None, b"\x05\x00\x00\x07"), errno.EPROTO, "socks_bad_reply", "unknown address type 7"),
    (_replies(b"\x05\x00", None, b"\x05\x00\x00\x03\x00"), errno.EPROTO, "socks_bad_reply", "empty domain"),
    (_replies(b"\x05\x00", None, b"\x05\x00\x00\x01\x7f"), errno.ECONNRESET, "socks_truncated", "1 of 6 bytes"),
    (_replies(b"\x05"), errno.ECONNRESET, "socks_truncated", "method selection (1 of 2"),
    (_replies(b"\x05\x00", None, b"\x05\x00\x00\x03\xff" + b"x" * 100), errno.ECONNRESET, "socks_truncated",
     "255-byte domain name (100 of 257"),
    (_replies(), errno.ECONNRESET, "socks_truncated", "method selection (0 of 2"),
])
def test_malformed_replies(script, err_no, counter, words):
    err, out = failure(script)
    assert err.errno == err_no and words in err.strerror, err
    assert out.counters[counter] == 1


@pytest.mark.parametrize("rep,err_no", [
    (1, errno.ECONNREFUSED), (2, errno.ECONNREFUSED), (3, errno.ENETUNREACH), (4, errno.EHOSTUNREACH),
    (5, errno.ECONNREFUSED), (6, errno.ETIMEDOUT), (7, errno.EOPNOTSUPP), (8, errno.EAFNOSUPPORT), (0x42, errno.EPROTO),
])
def test_failure_codes(rep, err_no):
    err, out = failure(_replies(b"\x05\x00", None, bytes((5, rep, 0, 1)) + bytes(6)))
    assert err.errno == err_no and f"reply code {rep:#x}" in err.strerror and "CONNECT to 198.18.0.9:80" in err.strerror
    assert out.counters["socks_reply_error"] == 1


def test_never_answers_and_slow_drip_hit_the_deadline_while_others_proceed():
    def drip(conn, proxy):
        ver, n = recv_exact(conn, 2)
        recv_exact(conn, n)
        conn.sendall(b"\x05\x00")
        request(conn)
        for byte in b"\x05\x00\x00\x01\x7f\x00\x00\x01\x10\xe1":
            if proxy.stop.wait(0.3):
                return
            conn.sendall(bytes((byte,)))

    silent = lambda conn, proxy: proxy.stop.wait(20)  # noqa: E731
    huge = _replies(b"\x05\x00", None, b"\x05\x00\x00\x03\xff" + b"x" * 10, hold=True)
    with Loop() as loop, FakeProxy(silent) as p1, FakeProxy(drip) as p2, FakeProxy(huge) as p3, \
            FakeProxy(connect_ok()) as good:
        outs = [Socks5Outbound(loop, *p.address, connect_timeout=1.0) for p in (p1, p2, p3)]
        results = [[] for _ in outs]
        start = time.monotonic()
        for out, res in zip(outs, results):
            out.open_tcp(("198.18.0.9", 80), lambda s, e, res=res: res.append((s, e, time.monotonic() - start)))
        (sock, err), _ = open_tcp(loop, Socks5Outbound(loop, *good.address))
        assert err is None and time.monotonic() - start < 0.9  # the loop was never blocked
        sock.close()
        assert run_until(loop, lambda: all(results), 5)
        for out, ((sock, err, took),) in zip(outs, results):
            assert sock is None and err.errno == errno.ETIMEDOUT and "no complete answer within 1s" in err.strerror
            assert 0.9 < took < 2.5
            assert out.counters["socks_timeout"] == 1
        assert "method selection: 0 of 2" in results[0][0][1].strerror
        assert "CONNECT to 198.18.0.9:80 reply" in results[1][0][1].strerror
        assert "10 of 257 bytes" in results[2][0][1].strerror


def test_cancel_closes_and_never_calls_back():
    with Loop() as loop, FakeProxy(lambda conn, proxy: proxy.stop.wait(20)) as proxy:
        before = fds()
        out = Socks5Outbound(loop, *proxy.address)
        results = []
        pending = out.open_tcp(("198.18.0.9", 80), lambda s, e: results.append((s, e)))
        assert run_until(loop, lambda: pending.sock is not None and proxy.threads)  # waiting for the method selection
        sock = pending.sock
        pending.cancel()
        pending.cancel()
        assert sock.fileno() == -1 and fds_back_to(before + 1)  # + the server's end, still open
        run_until(loop, lambda: False, 0.2)
        assert results == []


def test_no_fd_leak_over_many_failures():
    scripts = [_replies(b"\x04\x00"), _replies(b"\x05\x00", None, b"\x05\x05\x00\x01" + bytes(6)), _replies(b"\x05"),
               _replies(b"\x05\xff")]
    with Loop() as loop:
        proxies = [FakeProxy(s) for s in scripts]
        try:
            outs = [Socks5Outbound(loop, *p.address) for p in proxies]
            with socket.create_server(("127.0.0.1", 0)) as tmp:
                down = tmp.getsockname()[1]
            outs.append(Socks5Outbound(loop, "127.0.0.1", down))
            loop.run_once(0)
            before = fds()
            results = []
            for _ in range(40):
                for out in outs:
                    out.open_tcp(("198.18.0.9", 80), lambda s, e: results.append(e))
            assert run_until(loop, lambda: len(results) == 200, 20)
            assert all(isinstance(e, OSError) for e in results)
            assert fds_back_to(before)
        finally:
            for p in proxies:
                p.__exit__()


def test_proxy_down_fails_fast_then_recovers():
    with Loop() as loop:
        with socket.create_server(("127.0.0.1", 0)) as tmp:
            port = tmp.getsockname()[1]
        out = Socks5Outbound(loop, "127.0.0.1", port)
        start = time.monotonic()
        (sock, err), _ = open_tcp(loop, out)
        assert sock is None and err.errno == errno.ECONNREFUSED and time.monotonic() - start < 1
        assert f"socks5 proxy 127.0.0.1:{port}: connect:" in err.strerror
        assert out.counters["proxy_connect_failed"] == 1
        proxy = FakeProxy(connect_ok())
        proxy.listener.close()  # rebind the proxy on the port that was down
        proxy.acceptor.join(5)
        proxy.stop.clear()
        proxy.listener = socket.create_server(("127.0.0.1", port))
        proxy.listener.settimeout(0.05)
        proxy.acceptor = threading.Thread(target=proxy._accept, daemon=True)
        proxy.acceptor.start()
        with proxy:
            (sock, err), _ = open_tcp(loop, out)
            assert err is None
            sock.close()
        assert out.counters["tcp_ok"] == 1 and out.counters["tcp_failed"] == 1


def test_bad_destination_fails_on_the_loop():
    with Loop() as loop:
        out = Socks5Outbound(loop, "127.0.0.1", 9)
        (sock, err), _ = open_tcp(loop, out, domain="x" * 300)
        assert sock is None and err.errno == errno.EINVAL and "1..255 bytes" in err.strerror


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=20), max_size=8), st.booleans())
def test_negotiation_survives_any_reply(replies, auth):
    """Whatever the proxy sends, the negotiation ends in a result or a _Fail, nothing else."""
    steps = negotiate(b"u" if auth else None, b"p" if auth else None, 1, socks5.encode_address("1.2.3.4", 80), "CONNECT")
    value, feed = None, b"".join(replies)
    try:
        while True:
            step = steps.send(value)
            if isinstance(step, socks5._Recv):
                if len(feed) < step.n:
                    return  # the driver would fail this as truncated
                value, feed = feed[:step.n], feed[step.n:]
            else:
                value = None
    except StopIteration as stop:
        host, port = stop.value
        assert isinstance(host, str) and 0 <= port <= 0xFFFF
    except _Fail as f:
        assert f.err and f.counter.startswith("socks_") and f.reason


# --- URLs ----------------------------------------------------------------------------


def test_from_url_forms():
    with Loop() as loop:
        out = Socks5Outbound.from_url(loop, "socks5://127.0.0.1:1080", name="p1", fwmark=0x2022)
        assert out.proxy_address == ("127.0.0.1", 1080) and out.name == "p1" and out.username is None
        out = Socks5Outbound.from_url(loop, "socks5://a%20b:c%2Fd@[::1]:1081")
        assert out.proxy_address == ("::1", 1081) and out.username == b"a b" and out.password == b"c/d"
        assert Socks5Outbound.from_url(loop, "SOCKS5://localhost:1080").proxy_address[1] == 1080


@pytest.mark.parametrize("url,expected", [
    ("socks5://127.0.0.1", ("127.0.0.1", 1080, None, None)),  # port 1080 when left out, as with curl
    ("socks5://127.0.0.1:", ("127.0.0.1", 1080, None, None)),  # an empty port too (RFC 3986)
    ("socks5://[fd00::5]", ("fd00::5", 1080, None, None)),
    (" socks5://Proxy.Example:1081/ ", ("proxy.example", 1081, None, None)),
    ("socks5://us%40er:p%3Ass@[fd00::5]:1081", ("fd00::5", 1081, "us@er", "p:ss")),
])
def test_url_forms(url, expected):
    assert parse_url(url) == expected


@pytest.mark.parametrize("url,words", [
    ("http://127.0.0.1:1080", "scheme must be socks5"),
    ("127.0.0.1:1080", "scheme must be socks5"),
    ("socks5://127.0.0.1:abc", "port must be a number"),
    ("socks5://127.0.0.1:70000", "port must be a number"),
    ("socks5://127.0.0.1:0", "port must be 1..65535"),
    ("socks5://user@127.0.0.1:1080", "needs a password"),
    ("socks5://:pw@127.0.0.1:1080", "username must be 1..255"),
    ("socks5://u:@127.0.0.1:1080", "password must be 1..255"),
    (f"socks5://{'u' * 256}:p@127.0.0.1:1080", "username must be 1..255"),
    (f"socks5://u:{'%C3%A9' * 128}@127.0.0.1:1080", "password must be 1..255"),
    ("socks5://:1080", "no host"),
    ("socks5://[nothost]:1080", "IPv6 address"),
    ("socks5://127.0.0.1:1080/path", "nothing may follow"),
    ("socks5://127.0.0.1:1080?x=1", "nothing may follow"),
    ("socks5://127.0.0.1:1080#x", "nothing may follow"),
    ("socks5://[fd00::5:1080", "IPv6"),
])
def test_bad_urls(url, words):
    with pytest.raises(ValueError, match="bad proxy URL") as info:
        parse_url(url)
    assert words in str(info.value)


def test_bad_url_errors_do_not_show_the_password():
    for url in ("socks5://u:s3cret@127.0.0.1:70000", "socks5://u:s3cret@h:1/x", "socks4://u:s3cret@h:1"):
        with pytest.raises(ValueError, match="bad proxy URL") as info:
            parse_url(url)
        assert "s3cret" not in str(info.value)


def test_constructor_checks():
    with Loop() as loop:
        with pytest.raises(ValueError, match="both a username and a password"):
            Socks5Outbound(loop, "127.0.0.1", 1080, username="u")
        with pytest.raises(ValueError, match="port must be 1..65535"):
            Socks5Outbound(loop, "127.0.0.1", 0)
        with pytest.raises(ValueError, match="cannot be resolved"):
            Socks5Outbound(loop, "no-such-host.invalid", 1080)


# --- UDP header ---------------------------------------------------------------------


def test_udp_wrap_unwrap():
    for dest, domain in ((("198.18.0.9", 53), None), (("fd00::9", 53), None), (("198.18.0.9", 53), "dns.test")):
        data = wrap_udp(b"payload", dest, domain)
        assert data[:3] == b"\0\0\0"
        assert unwrap_udp(data) == (b"payload", ("dns.test" if domain else dest[0], 53))
    assert unwrap_udp(b"\0\0\0\x01\x01\x02\x03\x04\x00\x35") == (b"", ("1.2.3.4", 53))


@pytest.mark.parametrize("data,counter", [
    (b"", "udp_bad_header"),
    (b"\0\0\0", "udp_bad_header"),
    (b"\0\x01\0\x01\x01\x02\x03\x04\x00\x35", "udp_bad_header"),
    (b"\0\0\x01\x01\x01\x02\x03\x04\x00\x35x", "udp_frag_dropped"),
    (b"\0\0\x80\x01\x01\x02\x03\x04\x00\x35x", "udp_frag_dropped"),
    (b"\0\0\0\x01\x01\x02\x03\x04\x00", "udp_bad_header"),
    (b"\0\0\0\x04" + bytes(17), "udp_bad_header"),
    (b"\0\0\0\x03\x00\x00\x35", "udp_bad_header"),
    (b"\0\0\0\x03\x09abc\x00\x35", "udp_bad_header"),
    (b"\0\0\0\x03\x02\xff\xfe\x00\x35", "udp_bad_header"),
    (b"\0\0\0\x02" + bytes(10), "udp_bad_header"),
])
def test_udp_unwrap_drops(data, counter):
    with pytest.raises(BadDatagram) as info:
        unwrap_udp(data)
    assert info.value.counter == counter


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=40))
def test_udp_unwrap_never_crashes(data):
    try:
        payload, (host, port) = unwrap_udp(data)
    except BadDatagram as e:
        assert e.counter in ("udp_bad_header", "udp_frag_dropped")
    else:
        assert isinstance(host, str) and 0 <= port <= 0xFFFF and len(payload) < len(data)


# --- UDP ASSOCIATE ------------------------------------------------------------------


def associate(relay_host="127.0.0.1", reply_host=None, delay=0.0, close_after=None):
    """A proxy that answers UDP ASSOCIATE with a relay echoing datagrams (b"frag"/b"junk" answered with bad ones)."""

    def script(conn, proxy):
        greet(conn)
        cmd, atyp, host, port = request(conn)
        proxy.requests.append((cmd, atyp, host, port))
        relay = socket.socket(socket.AF_INET6 if ":" in relay_host else socket.AF_INET, socket.SOCK_DGRAM)
        relay.bind((relay_host, 0))
        relay.settimeout(0.05)
        proxy.relay = relay.getsockname()[:2]
        with relay:
            if proxy.stop.wait(delay):
                return
            shown = ipaddress.ip_address(reply_host or relay_host)
            conn.sendall(bytes((5, 0, 0, 1 if shown.version == 4 else 4)) + shown.packed + struct.pack("!H", proxy.relay[1]))
            conn.settimeout(0.05)
            end = time.monotonic() + (close_after if close_after is not None else 30)
            while not proxy.stop.is_set() and time.monotonic() < end:
                try:
                    data, addr = relay.recvfrom(65535)
                except (TimeoutError, socket.timeout):
                    try:
                        if conn.recv(1) == b"":
                            return  # the client closed the control connection
                    except (TimeoutError, socket.timeout):
                        pass
                    continue
                payload, (dhost, dport) = unwrap_udp(data)
                proxy.datagrams.append((payload, dhost, dport))
                if payload == b"frag":
                    relay.sendto(b"\0\0\x01" + data[3:], addr)
                elif payload == b"junk":
                    relay.sendto(b"\x05\x00", addr)
                relay.sendto(data, addr)  # echo, "from" the destination

    return script


def udp_flow(loop, out, family=socket.AF_INET):
    got, closed = [], []
    flow = out.open_udp(family, lambda p, s: got.append((p, s)), closed.append)
    return flow, got, closed


def test_udp_associate_echo_queue_and_bad_datagrams():
    with Loop() as loop, FakeProxy(associate(delay=0.3)) as proxy:
        proxy.datagrams = []
        out = Socks5Outbound(loop, *proxy.address)
        before = fds()
        flow, got, closed = udp_flow(loop, out)
        assert not flow.ready
        for i in range(socks5.UDP_QUEUE_DATAGRAMS):  # queued until the association is ready
            assert flow.send(b"q%d" % i, ("198.18.0.9", 53))
        assert not flow.send(b"one too many", ("198.18.0.9", 53))
        assert out.counters["udp_queue_full"] == 1
        assert run_until(loop, lambda: len(got) == socks5.UDP_QUEUE_DATAGRAMS)
        assert sorted(got) == sorted((b"q%d" % i, ("198.18.0.9", 53)) for i in range(socks5.UDP_QUEUE_DATAGRAMS))
        assert proxy.requests == [(3, 1, "0.0.0.0", 0)]
        got.clear()
        assert flow.send(b"v6", ("fd00::9", 5353)) and flow.send(b"name", ("198.18.0.9", 53), domain="dns.test")
        assert flow.send(b"frag", ("198.18.0.9", 53)) and flow.send(b"junk", ("198.18.0.9", 53))
        assert run_until(loop, lambda: len(got) == 4)
        assert sorted(got) == sorted([(b"v6", ("fd00::9", 5353)), (b"name", ("dns.test", 53)),
                                      (b"frag", ("198.18.0.9", 53)), (b"junk", ("198.18.0.9", 53))])
        assert out.counters["udp_frag_dropped"] == 1 and out.counters["udp_bad_header"] == 1
        # only the relay's datagrams are taken
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(wrap_udp(b"spoof", ("198.18.0.9", 53)), flow.udp.getsockname())
        run_until(loop, lambda: False, 0.2)
        assert len(got) == 4 and closed == []
        flow.close()
        flow.close()
        assert fds_back_to(before) and not flow.send(b"late", ("198.18.0.9", 53))


def test_udp_unspecified_relay_means_the_proxy_address():
    with Loop() as loop, FakeProxy(associate(reply_host="0.0.0.0")) as proxy:
        proxy.datagrams = []
        out = Socks5Outbound(loop, *proxy.address)
        flow, got, closed = udp_flow(loop, out)
        assert run_until(loop, lambda: flow.ready)
        assert flow.relay == ("127.0.0.1", proxy.relay[1])
        flow.send(b"x", ("198.18.0.9", 7))
        assert run_until(loop, lambda: got)
        flow.close()


def test_udp_control_connection_close_ends_the_flow():
    with Loop() as loop, FakeProxy(associate(close_after=0.3)) as proxy:
        proxy.datagrams = []
        out = Socks5Outbound(loop, *proxy.address)
        before = fds()
        flow, got, closed = udp_flow(loop, out)
        assert run_until(loop, lambda: closed)
        assert closed == [f"socks5 proxy 127.0.0.1:{proxy.address[1]}: UDP control connection closed by the proxy"]
        assert flow.closed and fds_back_to(before) and not flow.send(b"x", ("198.18.0.9", 7))
        assert out.counters["udp_closed_by_proxy"] == 1


def test_udp_associate_failure_calls_on_close():
    with Loop() as loop, FakeProxy(_replies(b"\x05\x00", None, b"\x05\x07\x00\x01" + bytes(6))) as proxy:
        out = Socks5Outbound(loop, *proxy.address)
        before = fds()
        flow, got, closed = udp_flow(loop, out)
        flow.send(b"x", ("198.18.0.9", 7))
        assert run_until(loop, lambda: closed)
        assert "UDP ASSOCIATE failed: command not supported" in closed[0]
        assert out.counters["udp_failed"] == 1 and flow.closed and fds_back_to(before)


def test_udp_close_before_ready_releases_everything():
    with Loop() as loop, FakeProxy(lambda conn, proxy: proxy.stop.wait(20)) as proxy:
        out = Socks5Outbound(loop, *proxy.address)
        before = fds()
        flow, got, closed = udp_flow(loop, out)
        flow.send(b"x", ("198.18.0.9", 7))
        assert run_until(loop, lambda: flow.handshake.sock is not None and proxy.threads)
        sock = flow.handshake.sock
        flow.close()
        assert sock.fileno() == -1 and fds_back_to(before + 1)  # + the server's end, still open
        run_until(loop, lambda: False, 0.1)
        assert closed == [] and got == []


@pytest.mark.parametrize("reply,words", [
    (b"\x05\x00\x00\x01\x7f\0\0\x01\0\0", "UDP relay port is 0"),
    (b"\x05\x00\x00\x03\x05relay\x10\x00", "UDP relay address 'relay' is not an IP address"),
])
def test_udp_unusable_relay_address(reply, words):
    with Loop() as loop, FakeProxy(_replies(b"\x05\x00", None, reply, hold=True)) as proxy:
        out = Socks5Outbound(loop, *proxy.address)
        flow, got, closed = udp_flow(loop, out)
        assert run_until(loop, lambda: closed)
        assert closed == [f"socks5 proxy 127.0.0.1:{proxy.address[1]}: {words}"] and flow.closed
        assert out.counters["socks_bad_reply"] == 1 and out.counters["udp_failed"] == 1


def test_first_failure_of_a_kind_is_logged_once(caplog):
    with Loop() as loop, FakeProxy(_replies(b"\x04\x00")) as proxy:
        out = Socks5Outbound(loop, *proxy.address)
        for _ in range(3):
            (sock, err), _ = open_tcp(loop, out)
            assert sock is None
    warnings = [r for r in caplog.records if r.name == "ztun.socks5"]
    assert len(warnings) == 1 and "method selection has version 4" in warnings[0].getMessage()
    assert out.counters["socks_bad_version"] == 3


# --- the health probe ----------------------------------------------------------------------


def probe(loop, out, timeout=5.0):
    results = []
    out.probe(results.append)
    assert results == []  # never called synchronously
    assert run_until(loop, lambda: results, timeout), "probe never finished"
    return results


def greet_only(credentials=None):
    def script(conn, proxy):
        proxy.requests.append(greet(conn, credentials))
        conn.recv(1)  # the probe closes after the greeting: it sends no request

    return script


def test_probe_greets_authenticates_and_closes_without_a_request():
    before = fds()
    with Loop() as loop, FakeProxy(greet_only((b"u", b"p"))) as proxy:
        out = Socks5Outbound(loop, *proxy.address, username="u", password="p")
        assert probe(loop, out) == [None]
        assert run_until(loop, lambda: proxy.requests) and proxy.requests == [True]
        assert out.counters == {"tcp_ok": 0, "tcp_failed": 0}  # a probe is not a flow
    assert fds_back_to(before)


def test_probe_wrong_password_says_so_and_counts_nothing(caplog):
    with Loop() as loop, FakeProxy(greet_only((b"u", b"p"))) as proxy:
        out = Socks5Outbound(loop, *proxy.address, username="u", password="wrong")
        (error,) = probe(loop, out)
        assert error == (f"socks5 proxy 127.0.0.1:{proxy.address[1]}: authentication failed (status 0x1): "
                         f"wrong username or password")
        assert out.counters == {"tcp_ok": 0, "tcp_failed": 0}
    assert not [r for r in caplog.records if r.name == "ztun.socks5"]  # the health check logs it, once


def test_probe_dead_port_is_connection_refused():
    port = socket.create_server(("127.0.0.1", 0))
    address = port.getsockname()
    port.close()
    with Loop() as loop:
        out = Socks5Outbound(loop, *address)
        (error,) = probe(loop, out)
        assert error == f"socks5 proxy 127.0.0.1:{address[1]}: connect: {os.strerror(errno.ECONNREFUSED)}"


def test_probe_has_one_deadline():
    with Loop() as loop, FakeProxy(lambda conn, proxy: proxy.stop.wait(5)) as proxy:
        out = Socks5Outbound(loop, *proxy.address, connect_timeout=0.3)
        start = time.monotonic()
        (error,) = probe(loop, out)
        assert time.monotonic() - start < 2
        assert "no complete answer within 0.3s (waiting for the method selection" in error


def test_a_full_handshake_engine_fails_the_flow_like_a_refused_connect():
    from ztun import _fast
    with Loop() as loop, FakeProxy(lambda conn, proxy: proxy.stop.wait(20)) as proxy:
        loop.handshakes.stop()
        loop._handshakes = _fast._handshake.Handshakes(loop, 1)
        out = Socks5Outbound(loop, *proxy.address)
        first = out.open_tcp(("198.18.0.9", 80), lambda s, e: None)
        (sock, err), _ = open_tcp(loop, out)
        assert sock is None and "too many SOCKS5 negotiations" in err.strerror
        assert out.counters["proxy_connect_failed"] == 1 and out.counters["tcp_failed"] == 1
        first.cancel()
