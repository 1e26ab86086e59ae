"""The SOCKS5 negotiation engine (ztun._fast.handshake on a native thread, handshake_py on the loop):
the same Progress from both for the same proxy, whatever the proxy sends."""

import errno
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ztun._fast as fast
from ztun._fast import handshake_py
from ztun._fast.defs import HS_CONNECT_FAILED, HS_EOF, HS_OK, HS_PROTOCOL, Progress
from ztun.loop import Loop
from ztun.outbound import socks5

from fake_proxy import FakeProxy

ENGINES = [pytest.param(handshake_py, id="python")]
if fast.IMPLEMENTATIONS.get("handshake") == "cython":
    ENGINES.append(pytest.param(fast._handshake, id="cython"))

GREETING = socks5._greeting(None)
REQUEST = socks5._request(socks5.CMD_CONNECT, socks5.encode_address("198.18.0.9", 80))
OK_REPLY = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x10\xe1"


def Proxy(chunks=(), hold=False):
    """A loopback proxy: each connection reads what the client sent so far, answers with the chunks
    (one sendall each, reading between them), then ends its side and drains until the client
    closes (no reset: a close with unread bytes would send one). What it read: proxy.requests."""

    def read(conn):
        data = b""
        while True:
            try:
                chunk = conn.recv(4096)
            except (TimeoutError, socket.timeout):
                return data
            if not chunk:
                return data
            data += chunk

    def script(conn, proxy):
        conn.settimeout(0.05)
        got = b""
        try:
            for chunk in chunks:
                got += read(conn)
                conn.sendall(chunk)
            if hold:
                proxy.stop.wait(10)
            conn.shutdown(socket.SHUT_WR)
            end = time.monotonic() + 5
            while time.monotonic() < end and not proxy.stop.is_set():
                try:
                    data = conn.recv(4096)
                except (TimeoutError, socket.timeout):
                    continue
                if not data:
                    break
                got += data
        finally:
            proxy.requests.append(got)

    return FakeProxy(script)


def negotiate(engine, address, greeting=GREETING, auth=b"", request=REQUEST, offered_auth=False, timeout=5.0):
    """(Progress, socket, number of loop iterations) of one negotiation with engine."""
    with Loop() as loop:
        hs = engine.Handshakes(loop)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        got = []
        hs.start(sock, address, greeting, auth, request, offered_auth, got.append)
        assert got == []  # never at once
        end = time.monotonic() + timeout
        while not got and time.monotonic() < end:
            loop.run_once(0.05)
        hs.stop()
        assert len(got) == 1, "the negotiation never ended"
        return got[0], sock


def _both(chunks, **kw):
    out = []
    for param in ENGINES:
        proxy = Proxy(chunks)
        try:
            progress, sock = negotiate(param.values[0], proxy.address, **kw)
            sock.close()
        finally:
            proxy.__exit__()
        out.append(progress)
    return out


@pytest.mark.parametrize("engine", ENGINES)
def test_good_proxy_leaves_the_bytes_after_the_reply_in_the_socket(engine):
    proxy = Proxy([b"\x05\x00", OK_REPLY + b"first bytes"])
    try:
        progress, sock = negotiate(engine, proxy.address)
        assert progress == Progress(HS_OK, 0, b"\x05\x00" + OK_REPLY, 0, True, False)
        sock.setblocking(True)
        sock.settimeout(5)
        assert sock.recv(100) == b"first bytes"
        sock.close()
    finally:
        proxy.__exit__()
    assert proxy.requests == [GREETING + REQUEST]


@pytest.mark.parametrize("engine", ENGINES)
def test_auth_then_request(engine):
    auth = socks5._auth(b"user", b"pass")
    proxy = Proxy([b"\x05\x02", b"\x01\x00", b"\x05\x00\x00\x03\x04name\x00\x50"])
    try:
        progress, sock = negotiate(engine, proxy.address, greeting=socks5._greeting(b"user"), auth=auth,
                                   offered_auth=True)
        sock.close()
    finally:
        proxy.__exit__()
    assert progress.kind == HS_OK and progress.transcript == b"\x05\x02\x01\x00\x05\x00\x00\x03\x04name\x00\x50"
    assert proxy.requests == [socks5._greeting(b"user") + auth + REQUEST]


@pytest.mark.parametrize("engine", ENGINES)
def test_probe_plan_ends_after_the_greeting(engine):
    proxy = Proxy([b"\x05\x00"])
    try:
        progress, sock = negotiate(engine, proxy.address, request=b"")
        sock.close()
    finally:
        proxy.__exit__()
    assert progress == Progress(HS_OK, 0, b"\x05\x00", 0, True, False)


@pytest.mark.parametrize("engine", ENGINES)
def test_refused_connect(engine):
    with socket.create_server(("127.0.0.1", 0)) as tmp:
        address = tmp.getsockname()
    progress, sock = negotiate(engine, address)
    sock.close()
    assert progress.kind == HS_CONNECT_FAILED and progress.err == errno.ECONNREFUSED and not progress.connected


@pytest.mark.parametrize("chunks,kind,transcript,partial", [
    ([b"\x05"], HS_EOF, b"\x05", 1),
    ([b"\x04\x00"], HS_PROTOCOL, b"\x04\x00", 0),
    ([b"\x05\xff"], HS_PROTOCOL, b"\x05\xff", 0),
    ([b"\x05\x02"], HS_PROTOCOL, b"\x05\x02", 0),  # user/password chosen, not offered
    ([b"\x05\x00", b"\x05\x05\x00\x01" + bytes(6)], HS_PROTOCOL, b"\x05\x00\x05\x05\x00\x01", 0),
    ([b"\x05\x00", b"\x05\x00\x00\x03\x00"], HS_PROTOCOL, b"\x05\x00\x05\x00\x00\x03\x00", 0),
    ([b"\x05\x00", b"\x05\x00\x00\x04" + bytes(18) + b"after"], HS_OK, b"\x05\x00\x05\x00\x00\x04" + bytes(18), 0),
    ([b"\x05\x00", b"\x05\x00\x00\x01" + bytes(6) + b"after"], HS_OK, b"\x05\x00\x05\x00\x00\x01" + bytes(6), 0),
    ([b"\x05\x00", b"\x05\x00\x00\x03\x02ab\x00\x01after"], HS_OK, b"\x05\x00\x05\x00\x00\x03\x02ab\x00\x01", 0),
    ([b"\x05\x00", b"\x05\x00\x00\x03\xff" + b"x" * 10], HS_EOF, b"\x05\x00\x05\x00\x00\x03\xff" + b"x" * 10, 10),
])
def test_both_engines_stop_at_the_same_byte(chunks, kind, transcript, partial):
    for progress in _both(chunks):
        assert (progress.kind, progress.transcript, progress.partial) == (kind, transcript, partial)


def _chunk(good):
    """Mostly what a proxy would say at that point, sometimes one byte off, sometimes anything."""
    return st.one_of(st.just(good), st.binary(max_size=12),
                     st.tuples(st.integers(0, max(len(good) - 1, 0)), st.integers(0, 255)).map(
                         lambda ib: good[:ib[0]] + bytes((ib[1],)) + good[ib[0] + 1:]))


_REPLY = st.sampled_from([b"\x05\x00\x00\x01" + bytes(6), b"\x05\x00\x00\x04" + bytes(18),
                          b"\x05\x00\x00\x03\x03abc\x00\x50", b"\x05\x00\x00\x03\x00"])


AUTH_PLAN = dict(greeting=socks5._greeting(b"u"), auth=socks5._auth(b"u", b"p"), offered_auth=True)


@pytest.mark.parametrize("chunks,kind,transcript,partial", [
    ([b"\x05\x02", b"\x01\x01"], HS_PROTOCOL, b"\x05\x02\x01\x01", 0),
    ([b"\x05\x02", b"\x02\x00"], HS_PROTOCOL, b"\x05\x02\x02\x00", 0),
    ([b"\x05\x02", b"\x01"], HS_EOF, b"\x05\x02\x01", 1),
    ([b"\x05\x00", OK_REPLY], HS_OK, b"\x05\x00" + OK_REPLY, 0),  # offered, not chosen: no auth
    ([b"\x05\x02", b"\x01\x00", OK_REPLY], HS_OK, b"\x05\x02\x01\x00" + OK_REPLY, 0),
])
def test_both_engines_authenticate_alike(chunks, kind, transcript, partial):
    for progress in _both(chunks, **AUTH_PLAN):
        assert (progress.kind, progress.transcript, progress.partial) == (kind, transcript, partial)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.tuples(_chunk(b"\x05\x00"), _REPLY.flatmap(_chunk)).map(list),
    st.tuples(_chunk(b"\x05\x02"), _chunk(b"\x01\x00"), _REPLY.flatmap(_chunk)).map(list),
    st.lists(st.binary(max_size=12), min_size=1, max_size=3)), st.booleans())
def test_any_reply_gives_both_engines_the_same_progress(chunks, auth):
    """Whatever the proxy sends, the compiled engine and the twin end in the same Progress, and the
    generator replayed over it ends there too (a result, a failure or a step under way)."""
    kw = AUTH_PLAN if auth else {}
    progresses = _both(chunks, **kw)
    assert all(p == progresses[0] for p in progresses), progresses
    plan = socks5.Plan(b"u" if auth else None, b"p" if auth else None, socks5.CMD_CONNECT,
                       socks5.encode_address("198.18.0.9", 80), "CONNECT")
    progress = progresses[0]
    try:
        step, _ = socks5.replay(plan.steps(), progress)
    except socks5._Fail:
        assert progress.kind == HS_PROTOCOL
        return
    assert progress.kind != HS_PROTOCOL
    assert (step is None) == (progress.kind == HS_OK)


@pytest.mark.parametrize("engine", ENGINES)
def test_cancel_reports_where_it_waited_and_never_calls_back(engine):
    proxy = Proxy([b"\x05\x00", b"\x05\x00\x00\x01\x7f"], hold=True)
    try:
        with Loop() as loop:
            hs = engine.Handshakes(loop)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            got = []
            hid = hs.start(sock, proxy.address, GREETING, b"", REQUEST, False, got.append)
            end = time.monotonic() + 0.5  # the proxy holds after its last chunk: 1 of the address's 6 bytes
            while time.monotonic() < end:
                loop.run_once(0.05)
            progress = hs.cancel(hid)
            assert hs.cancel(hid) is None
            sock.close()
            loop.run_once(0.1)
            hs.stop()
            assert got == []
    finally:
        proxy.__exit__()
    assert progress == Progress(0, 0, b"\x05\x00\x05\x00\x00\x01\x7f", 1, True, False)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_full_engine_refuses_then_serves_again(engine):
    proxy = Proxy([b"\x05\x00", OK_REPLY])
    try:
        with Loop() as loop:
            hs = engine.Handshakes(loop, capacity=2)
            socks, got = [], []
            for _ in range(2):
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK))
                hs.start(socks[-1], proxy.address, GREETING, b"", REQUEST, False, got.append)
            extra = socket.socket()
            with pytest.raises(OSError) as e:
                hs.start(extra, proxy.address, GREETING, b"", REQUEST, False, got.append)
            assert e.value.errno == errno.EAGAIN
            extra.close()
            end = time.monotonic() + 10
            while len(got) < 2 and time.monotonic() < end:
                loop.run_once(0.05)
            for _ in range(20):  # slots come back: 20 more, one at a time, in an engine of 2
                socks.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK))
                hs.start(socks[-1], proxy.address, GREETING, b"", REQUEST, False, got.append)
                n = len(got)
                while len(got) == n and time.monotonic() < end:
                    loop.run_once(0.05)
            hs.stop()
            for s in socks:
                s.close()
    finally:
        proxy.__exit__()
    assert [p.kind for p in got] == [HS_OK] * 22


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_arguments(engine):
    with Loop() as loop:
        hs = engine.Handshakes(loop)
        with socket.socket() as sock:
            for greeting, auth, request in ((b"", b"", b""), (b"12345", b"", b""), (b"\x05\x01\x00", b"x" * 514, b""),
                                            (b"\x05\x01\x00", b"", b"x" * 263)):
                with pytest.raises(ValueError):
                    hs.start(sock, ("127.0.0.1", 1), greeting, auth, request, False, print)
            with pytest.raises(ValueError):
                hs.start(sock, ("no-such-host", 1), GREETING, b"", b"", False, print)
            with pytest.raises(TypeError):
                hs.start(sock, ("127.0.0.1", 1), "text", b"", b"", False, print)
        closed = socket.socket()
        closed.close()
        with pytest.raises(ValueError):
            hs.start(closed, ("127.0.0.1", 1), GREETING, b"", b"", False, print)
        for capacity in (0, -1, 1 << 21):
            with pytest.raises(ValueError):
                engine.Handshakes(loop, capacity)
        hs.stop()
        hs.stop()
        with pytest.raises(RuntimeError):
            hs.start(socket.socket(), ("127.0.0.1", 1), GREETING, b"", b"", False, print)


@pytest.mark.skipif(fast.IMPLEMENTATIONS.get("handshake") != "cython", reason="no compiled handshake engine here")
def test_the_compiled_engine_never_puts_the_socket_on_the_loop():
    """The loop hears of a negotiation once, at its end: the proxy's socket is never one of its fds."""
    proxy = Proxy([b"\x05\x00", OK_REPLY])
    try:
        with Loop() as loop:
            hs = fast._handshake.Handshakes(loop)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            got, seen = [], set()
            hs.start(sock, proxy.address, GREETING, b"", REQUEST, False, got.append)
            end = time.monotonic() + 5
            while not got and time.monotonic() < end:
                seen |= set(loop._fds)
                loop.run_once(0.01)
            hs.stop()
            assert got and got[0].kind == HS_OK
            assert sock.fileno() not in seen
            assert hs.started == hs.finished == 1 and hs.connect_inline <= 1
            sock.close()
    finally:
        proxy.__exit__()


def test_the_loop_stops_its_engine():
    with Loop() as loop:
        hs = loop.handshakes
        assert loop.handshakes is hs
    with socket.socket() as sock, pytest.raises(RuntimeError):
        hs.start(sock, ("127.0.0.1", 1), GREETING, b"", b"", False, print)
    with Loop() as loop:
        pass
    with pytest.raises(RuntimeError):  # a closed loop starts none
        loop.handshakes


@pytest.mark.parametrize("engine", ENGINES)
def test_cancels_racing_the_engine_never_call_back(engine):
    """Negotiations cancelled at every stage (queued, connecting, mid-exchange, ended but not yet
    collected) never call back; the others all end; every socket is the caller's to close after."""
    proxy = Proxy([b"\x05\x00", OK_REPLY])
    try:
        with Loop() as loop:
            hs = engine.Handshakes(loop, capacity=64)
            got, cancelled, socks = [], set(), []
            for i in range(200):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                socks.append(sock)
                hid = hs.start(sock, proxy.address, GREETING, b"", REQUEST, False, lambda p, i=i: got.append((i, p)))
                if i % 3 == 0:
                    time.sleep(0.0002 * (i % 7))  # let the engine get somewhere first, sometimes
                    hs.cancel(hid)
                    cancelled.add(i)
                    sock.close()
                if i % 16 == 15:
                    loop.run_once(0)
                while hs.under_way >= 60:
                    loop.run_once(0.01)
            end = time.monotonic() + 20
            while len(got) < 200 - len(cancelled) and time.monotonic() < end:
                loop.run_once(0.05)
            hs.stop()
            for sock in socks:
                sock.close()
    finally:
        proxy.__exit__()
    assert not cancelled & {i for i, _ in got}
    assert len(got) == 200 - len(cancelled)
    assert all(p.kind == HS_OK for _, p in got)
