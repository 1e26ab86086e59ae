"""The socket worker (ztun._fast.sockq) and its twin: results come back on the loop, calls keep their order."""

import errno
import os
import socket
import sys
import time

import pytest

from ztun.loop import Loop

PENDING = {errno.EINPROGRESS, errno.EWOULDBLOCK}  # a connect under way (Windows says WSAEWOULDBLOCK)


@pytest.fixture(params=["cython", "python"])
def sockq(request, fast_module):
    if request.param == "cython" and sys.platform == "win32":
        pytest.skip("the socket worker is POSIX-only: Windows makes the calls at once")
    mod = fast_module("sockq", request.param)
    if request.param == "cython":
        assert mod.THREADED
    return mod


@pytest.fixture
def loop():
    with Loop() as lp:
        yield lp


def queue(sockq, loop, **kw):
    """A queue of the implementation under test, as the loop's own (stopped when the loop closes)."""
    q = loop._sockq = sockq.SocketQueue(loop, epoll_fd=loop._poller.fileno(), **kw)
    return q


def run_until(loop, cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        loop.run_once(0.02)
    return cond()


def nonblocking(family=socket.AF_INET):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    return s


def test_connect_reports_on_the_loop(sockq, loop):
    q = queue(sockq, loop)
    with socket.create_server(("127.0.0.1", 0)) as srv, nonblocking() as s:
        got = []
        q.connect(s, srv.getsockname(), got.append)
        assert got == []  # never from inside connect()
        assert run_until(loop, lambda: got)
        assert got[0] in {0} | PENDING
        srv.settimeout(5)
        conn, peer = srv.accept()
        conn.close()
        assert peer == s.getsockname()
    q.stop()


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="Linux runs loopback's handshake inside connect(); other systems may not (Windows retries a refused SYN)")
def test_a_connect_finished_inside_the_call_says_so(sockq, loop):
    """Over loopback the handshake (or the refusal) is usually over when connect() returns:
    the result is then 0 or ECONNREFUSED at once, not EINPROGRESS and another wait."""
    q = queue(sockq, loop)
    with socket.create_server(("127.0.0.1", 0), backlog=64) as srv, socket.create_server(("127.0.0.1", 0)) as tmp:
        closed_port = tmp.getsockname()[1]
        tmp.close()
        got, socks = [], []
        for i in range(20):  # a few may still be under way (softirq work deferred on a busy machine)
            for port in (srv.getsockname()[1], closed_port):
                s = nonblocking()
                socks.append(s)
                q.connect(s, ("127.0.0.1", port), lambda e, port=port: got.append((port, e)))
        assert run_until(loop, lambda: len(got) == 40)
        for s in socks:
            s.close()
    open_results = {e for port, e in got if port != closed_port}
    refused_results = {e for port, e in got if port == closed_port}
    assert open_results <= {0} | PENDING and 0 in open_results
    assert refused_results <= {errno.ECONNREFUSED} | PENDING and errno.ECONNREFUSED in refused_results
    q.stop()


def test_refused_unreachable_and_bad_addresses(sockq, loop):
    q = queue(sockq, loop)
    with socket.create_server(("127.0.0.1", 0)) as tmp:
        closed_port = tmp.getsockname()[1]
    refused, unreachable = nonblocking(), nonblocking()
    got = {}
    q.connect(refused, ("127.0.0.1", closed_port), lambda e: got.setdefault("refused", e))
    q.connect(unreachable, ("255.255.255.255", 80), lambda e: got.setdefault("unreachable", e))  # TCP to broadcast: at once
    assert run_until(loop, lambda: len(got) == 2)
    assert got["unreachable"] == errno.ENETUNREACH
    if got["refused"] in PENDING:  # the reset came after the call: SO_ERROR says so
        errors = []
        loop.add_writer(refused.fileno(), lambda: errors.append(refused.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)))
        assert run_until(loop, lambda: errors)
        loop.remove_writer(refused.fileno())
        got["refused"] = errors[0]
    assert got["refused"] == errno.ECONNREFUSED
    calls = []
    with nonblocking() as s:
        for bad, error in ((("localhost", 80), ValueError), (("198.18.0.300", 80), ValueError), (("127.0.0.1", 70000), OverflowError)):
            with pytest.raises(error):
                q.connect(s, bad, calls.append)
        run_until(loop, lambda: False, 0.1)
        assert calls == []
        q.connect(s, ("fd00::1", 80), calls.append)  # the other family's address: connect() refuses it
        assert run_until(loop, lambda: calls) and calls == [errno.EAFNOSUPPORT]
    refused.close()
    unreachable.close()
    q.stop()


def test_ipv6_connect(sockq, loop):
    q = queue(sockq, loop)
    try:
        srv = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError:
        pytest.skip("no IPv6 loopback")
    with srv, nonblocking(socket.AF_INET6) as s:
        got = []
        q.connect(s, srv.getsockname(), got.append)
        assert run_until(loop, lambda: got) and got[0] in (0, errno.EINPROGRESS)
        srv.settimeout(5)
        srv.accept()[0].close()
    q.stop()


def _pair():
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


def test_shutdown_then_close_keep_their_order(sockq, loop):
    q = queue(sockq, loop)
    a, b = _pair()
    a.sendall(b"last words")
    q.shutdown(a)
    q.close(a)
    assert a.fileno() == -1  # detached at once: the worker owns the fd now
    q.kick()  # what the end of the loop iteration does
    b.settimeout(5)
    data = b""
    while True:
        chunk = b.recv(100)
        if not chunk:
            break
        data += chunk
    assert data == b"last words"  # then a FIN, not a reset
    b.close()
    q.stop()


def test_abort_resets_the_peer(sockq, loop):
    q = queue(sockq, loop)
    a, b = _pair()
    q.abort(a)
    q.kick()
    b.settimeout(5)
    with pytest.raises(ConnectionResetError):
        while b.recv(100):
            pass
    b.close()
    q.stop()


def test_a_full_queue_runs_calls_at_once_and_nothing_is_lost(sockq, loop):
    q = queue(sockq, loop, capacity=2)
    with socket.create_server(("127.0.0.1", 0), backlog=256) as srv:
        socks = [nonblocking() for _ in range(200)]
        got = []
        for i, s in enumerate(socks):
            q.connect(s, srv.getsockname(), lambda e, i=i: got.append((i, e)))
        assert run_until(loop, lambda: len(got) == len(socks))
        assert sorted(i for i, _ in got) == list(range(len(socks)))  # each exactly once
        assert all(e in {0} | PENDING for _, e in got)
        assert q.queued + q.ran_inline == len(socks)
        for s in socks:
            q.close(s)
    q.stop()


def test_calls_that_find_the_queue_full_wait_their_turn(sockq, loop):
    """A close must not overtake a shutdown queued before it: the fd would be free for a new
    socket, and the worker's late shutdown would hit that one."""
    q = queue(sockq, loop, capacity=1)
    a, b = _pair()
    fd = a.fileno()
    q.shutdown(a)
    q.close(a)  # finds the queue full (the worker was not kicked yet)
    new_a, new_b = _pair()
    if sockq.THREADED:
        assert q.overflowed >= 1 and new_a.fileno() != fd  # still open: not closed ahead of its turn
    assert run_until(loop, lambda: _eof(b))
    new_a.sendall(b"still open")  # whatever number it got, no stale call touched it
    new_b.settimeout(5)
    assert new_b.recv(100) == b"still open"
    for s in (b, new_a, new_b):
        s.close()
    q.stop()


def _eof(sock) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(100) == b""
    except BlockingIOError:
        return False


def test_a_connect_made_before_the_loop_runs_starts_at_once(loop):
    """A connect queued outside the loop's callbacks is made at the end of the next iteration,
    whose poll does not wait for it, not a whole poll later."""
    from ztun.outbound import direct

    with socket.create_server(("127.0.0.1", 0)) as srv:
        got = []
        direct.connect(loop, srv.getsockname(), lambda s, e: got.append((s, e)), timeout=5)
        start = time.monotonic()
        while not got and time.monotonic() - start < 6:
            loop.run_once()  # no timeout: the poll waits for an event or the connect's 5 s timer
        sock, err = got[0]
        assert err is None and time.monotonic() - start < 1
        sock.close()


def test_a_queue_outliving_its_loop_still_makes_its_calls(sockq):
    loop = Loop()
    q = sockq.SocketQueue(loop, epoll_fd=loop._poller.fileno())  # not the loop's own: close() leaves it running
    loop.close()
    a, b = _pair()
    q.close(a)  # no loop iteration to end: the worker starts at once
    b.settimeout(5)
    assert b.recv(10) == b""
    b.close()
    q.stop()


def test_stop_makes_the_queued_calls_and_later_ones_run_at_once(sockq, loop):
    q = queue(sockq, loop)
    pairs = [_pair() for _ in range(20)]
    for a, _ in pairs:
        q.close(a)
    q.stop()
    for _, b in pairs:  # closed by the time stop() returns
        b.settimeout(5)
        assert b.recv(10) == b""
        b.close()
    q.stop()
    a, b = _pair()
    q.close(a)
    b.settimeout(5)
    assert b.recv(10) == b""
    b.close()
    got = []
    with nonblocking() as s:
        q.connect(s, ("255.255.255.255", 80), got.append)
        assert run_until(loop, lambda: got) and got == [errno.ENETUNREACH]


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task (Linux)")
def test_the_loop_owns_one_worker_and_stops_it():
    threads = lambda: len(os.listdir("/proc/self/task"))  # noqa: E731 - the worker is a native thread
    before = threads()
    loop = Loop()
    assert loop._sockq is None  # started on first use only
    q = loop.sockq
    assert loop.sockq is q
    assert threads() == before + (1 if getattr(sys.modules[type(q).__module__], "THREADED", False) else 0)
    a, b = _pair()
    q.close(a)
    loop.close()  # the worker makes its last calls, then ends
    b.settimeout(5)
    assert b.recv(10) == b""
    b.close()
    assert threads() == before
    a, b = _pair()
    loop.sockq.close(a)  # stopped: a late close is made at once
    b.settimeout(5)
    assert b.recv(10) == b""
    b.close()
    unused = Loop()
    unused.close()
    a, b = _pair()
    unused.sockq.close(a)  # a closed loop starts no worker: the close is made at once
    assert threads() == before and unused._sockq is None
    b.settimeout(5)
    assert b.recv(10) == b""
    b.close()


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")])
def test_accept_batch_gives_non_blocking_sockets_and_raw_peers(sockq, family, host):
    try:
        srv = socket.create_server((host, 0), family=family)
    except OSError:
        pytest.skip(f"no {host}")
    with srv:
        srv.setblocking(False)
        clients = [socket.create_connection(srv.getsockname()[:2]) for _ in range(3)]
        time.sleep(0.05)
        first, err = sockq.accept_batch(srv, 2)
        rest, err2 = sockq.accept_batch(srv, 64)
        none, err3 = sockq.accept_batch(srv, 64)
        assert (len(first), len(rest), none, err, err2, err3) == (2, 1, [], 0, 0, 0)
        peers = {c.getsockname()[:2] for c in clients}
        for sock, addr, port in first + rest:
            assert len(addr) == (4 if family == socket.AF_INET else 16)
            assert (socket.inet_ntop(family, addr), port) in peers
            assert sock.family == family and sock.type == socket.SOCK_STREAM
            assert sock.gettimeout() == 0.0 and not os.get_blocking(sock.fileno())
            assert not os.get_inheritable(sock.fileno())
            sock.close()
        for c in clients:
            c.close()


def test_accept_batch_reports_what_stops_it(sockq):
    with socket.socket() as never_listened:  # accept(2) on it: EINVAL, not something to retry
        never_listened.setblocking(False)
        assert sockq.accept_batch(never_listened, 8) == ([], errno.EINVAL)
