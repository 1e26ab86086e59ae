"""The relay over real loopback TCP connections: both engines (the compiled one on its native
thread, the twin on the loop), splice and copy modes, driven by ztun's loop."""

import hashlib
import os
import select
import socket
import struct
import threading
import time

import pytest

from ztun._fast import relay_py
from ztun.loop import Loop
from ztun.outbound.relay import HAVE_SPLICE, Relay, engine_of
from ztun._fast.relay_py import _PipePool

try:
    from ztun._fast import relay as relay_native
except ImportError:  # not built here (not Linux, or no compiler): only the twin runs
    relay_native = None

NEAR = os.environ.get("ZTUN_RELAY_NEAR", "0") == "1"  # new relays start on the loop's thread
MODES = [pytest.param(True, id="splice", marks=pytest.mark.skipif(not HAVE_SPLICE, reason="no os.splice on this platform")), pytest.param(False, id="copy")]
ENGINES = [pytest.param(relay_native, id="native", marks=pytest.mark.skipif(relay_native is None, reason="the compiled relay engine is not built here")),
           pytest.param(relay_py, id="twin")]


@pytest.fixture(params=ENGINES)
def engine_module(request):
    return request.param


class Rig:
    """app client <-> (c) relay (r) <-> app server, all on 127.0.0.1; the relay runs on a Loop here."""

    def __init__(self, splice, module, idle=30.0, send_first=b""):
        self.loop = Loop()
        front = socket.create_server(("127.0.0.1", 0))
        back = socket.create_server(("127.0.0.1", 0))
        self.app_client = socket.create_connection(front.getsockname(), timeout=10)
        c, _ = front.accept()
        r = socket.create_connection(back.getsockname())
        self.app_server, _ = back.accept()
        self.app_server.settimeout(10)
        front.close()
        back.close()
        self.closed = []
        if send_first:
            self.app_client.sendall(send_first)
            assert select.select([c], [], [], 10)[0]  # in the relay's socket (at once over loopback)
        self.engine = engine_of(self.loop, module)
        self.relay = Relay(self.loop, c, r, on_close=lambda relay, reason: self.closed.append(reason), idle_timeout=idle, splice=splice,
                           engine=self.engine)

    def run_until(self, cond, timeout=20.0):
        end = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > end:
                raise AssertionError("timed out")
            self.loop.run_once(0.05)

    def close(self):
        self.relay.close()
        self.app_client.close()
        self.app_server.close()
        self.loop.close()


@pytest.fixture
def rig_factory(engine_module):
    rigs = []

    def make(splice, **kw):
        rigs.append(Rig(splice, engine_module, **kw))
        return rigs[-1]

    yield make
    for r in rigs:
        r.close()


def in_thread(fn):
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # reported by the test
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def recv_all(sock):
    chunks = []
    while True:
        b = sock.recv(1 << 20)
        if not b:
            return b"".join(chunks)
        chunks.append(b)


def exchange(rig, up, down, timeout=20.0):
    """The client sends up and half-closes, the server answers down once it has it all and closes;
    the relay runs until it ends. The client's and the server's results ({"value"} or {"error"})."""

    def client():
        rig.app_client.sendall(up)
        rig.app_client.shutdown(socket.SHUT_WR)  # half-close: the reply must still arrive whole
        return recv_all(rig.app_client)

    def server():
        got = recv_all(rig.app_server)
        rig.app_server.sendall(down)
        rig.app_server.close()
        return got

    tc, rc = in_thread(client)
    ts, rs = in_thread(server)
    rig.run_until(lambda: rig.closed, timeout=timeout)
    tc.join(10)
    ts.join(10)
    return rc, rs


@pytest.mark.parametrize("splice", MODES)
def test_bulk_both_ways_and_half_close(rig_factory, splice):
    rig = rig_factory(splice)
    up = os.urandom(8 << 20)
    down = os.urandom(6 << 20)
    rc, rs = exchange(rig, up, down)
    assert "error" not in rc and "error" not in rs, (rc.get("error"), rs.get("error"))
    assert hashlib.sha256(rs["value"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(rc["value"]).digest() == hashlib.sha256(down).digest()
    assert rig.closed == ["done"]
    assert (rig.relay.bytes_up, rig.relay.bytes_down) == (len(up), len(down))
    if rig.engine.__class__.__module__.endswith("relay"):  # the compiled engine: bulk is its thread's
        assert rig.engine.stats()["promoted"] == (1 if NEAR else 0)


@pytest.mark.skipif(relay_native is None, reason="the compiled relay engine is not built here")
@pytest.mark.parametrize("splice", MODES)
def test_request_and_answer_stay_on_the_loops_thread(splice, monkeypatch):
    """With the near set on, a relay that moves little is pumped by the loop's thread, so a round
    trip does not wake the engine's thread; it still goes both ways at once."""
    monkeypatch.setenv("ZTUN_RELAY_NEAR", "1")
    rig = Rig(splice, relay_native)
    try:
        before = rig.engine.stats()
        for i in range(200):
            rig.app_client.sendall(b"ping %d" % i)
            rig.run_until(lambda: select.select([rig.app_server], [], [], 0)[0])
            assert rig.app_server.recv(100) == b"ping %d" % i
            rig.app_server.sendall(b"pong %d" % i)
            rig.run_until(lambda: select.select([rig.app_client], [], [], 0)[0])
            assert rig.app_client.recv(100) == b"pong %d" % i
        after = rig.engine.stats()
        assert after["promoted"] == 0
        assert after["events"] - before["events"] >= 400  # taken on the loop's thread
        # the thread woke for its idle sweep at most (once a second), not per round trip
        assert after["wakeups"] - before["wakeups"] < 50, (before, after)
    finally:
        rig.close()


@pytest.mark.skipif(relay_native is None, reason="the compiled relay engine is not built here")
def test_a_relay_still_moving_when_the_pump_again_list_is_full_is_not_forgotten():
    """A pump that stops after its rounds with the relay still moving leaves no edge to come (its
    sockets were not drained): the relay must be pumped again. With the list of relays to pump
    again full (here: no room at all) the engine re-arms its sockets in the epoll instead (it
    stalled: the transfer never ended). Copy mode: its 128 KiB buffer keeps a bulk relay moving
    for all its rounds, where a 1 MiB pipe takes what loopback holds in fewer."""
    rig = Rig(False, relay_native)
    try:
        rig.engine._set_again_cap(0)
        up, down = os.urandom(24 << 20), os.urandom(16 << 20)
        rc, rs = exchange(rig, up, down, timeout=30)
        assert "error" not in rc and "error" not in rs, (rc.get("error"), rs.get("error"))
        assert rs["value"] == up and rc["value"] == down
        assert rig.closed == ["done"]
        assert rig.engine.stats()["rearmed"] > 0  # the path was taken
    finally:
        rig.close()


def _small_segments_then_a_tail(rig, total=4 << 20, piece=1024):
    """The server sends total bytes in piece-sized segments (TCP_NODELAY, about 20 us apart: a sender
    like a proxy copying through a 1 KiB buffer), then a 4-byte tail, and waits for the client's
    answer before it closes; the client answers once it has everything. Both sides' results."""
    data = os.urandom(total)
    rig.app_server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def server():
        for i in range(0, total, piece):
            rig.app_server.sendall(data[i:i + piece])
            until = time.perf_counter() + 20e-6
            while time.perf_counter() < until:
                pass
        rig.app_server.sendall(b"tail")  # below any low-water mark, and nothing follows it
        answer = rig.app_server.recv(2)
        rig.app_server.close()
        return answer

    def client():
        got = bytearray()
        while len(got) < total + 4:
            b = rig.app_client.recv(1 << 20)
            if not b:
                break
            got += b
        rig.app_client.sendall(b"ok")
        rig.app_client.shutdown(socket.SHUT_WR)
        return bytes(got) + recv_all(rig.app_client)

    ts, rs = in_thread(server)
    tc, rc = in_thread(client)
    rig.run_until(lambda: rig.closed, timeout=30)
    ts.join(10)
    tc.join(10)
    assert "error" not in rc and "error" not in rs, (rc.get("error"), rs.get("error"))
    assert rc["value"] == data + b"tail" and rs["value"] == b"ok"
    assert rig.closed == ["done"]


@pytest.mark.skipif(relay_native is None, reason="the compiled relay engine is not built here")
@pytest.mark.parametrize("splice", MODES)
def test_a_source_streaming_small_segments_is_read_in_batches_and_its_tail_still_arrives(splice):
    """A source that streams small segments gets a receive low-water mark (the engine is no longer
    woken per segment); what stays under the mark when the stream stops (the tail, which the
    other side answers before anything else comes) is read on the engine's schedule, not left."""
    rig = Rig(splice, relay_native)
    try:
        rig.engine._set_batch(16 * 1024, 256 * 1024, 64 * 1024)
        _small_segments_then_a_tail(rig)
        assert rig.engine.stats()["batched"] > 0  # the path was taken
    finally:
        rig.close()


@pytest.mark.skipif(relay_native is None, reason="the compiled relay engine is not built here")
def test_relay_batch_off_reads_as_segments_land(monkeypatch):
    monkeypatch.setenv("ZTUN_RELAY_BATCH", "0")
    rig = Rig(True, relay_native)
    try:
        rig.engine._set_batch(16 * 1024, 256 * 1024, 64 * 1024)
        _small_segments_then_a_tail(rig, total=2 << 20)
        assert rig.engine.stats()["batched"] == 0
    finally:
        rig.close()


@pytest.mark.parametrize("splice", MODES)
def test_what_already_waits_is_forwarded_at_the_start_without_the_loop(rig_factory, splice):
    rig = rig_factory(splice, send_first=b"GET / HTTP/1.0\r\n\r\n")  # no loop iteration since
    rig.app_server.settimeout(0.2)  # the native engine's thread could forward it later: it must be there now
    assert rig.app_server.recv(100) == b"GET / HTTP/1.0\r\n\r\n"
    assert rig.relay.bytes_up == 18
    rig.relay.close()
    assert rig.closed == ["closed"] and rig.relay.bytes_up == 18  # the counts outlive the relay


@pytest.mark.parametrize("splice", MODES)
def test_backpressure_stops_reading(rig_factory, splice):
    rig = rig_factory(splice)
    data = os.urandom(64 << 20)  # more than loopback's socket buffers hold at most, both ends together
    sent = threading.Event()

    def client():
        rig.app_client.sendall(data)
        sent.set()
        rig.app_client.shutdown(socket.SHUT_WR)

    tc, rc = in_thread(client)
    # the server reads nothing yet: the relay must stop reading the client, not buffer without bound
    last, still = -1, 0
    end = time.monotonic() + 20
    while still < 5 and time.monotonic() < end:  # until bytes_up stood still for 5 looks
        rig.run_until(lambda: True)
        rig.loop.run_once(0.05)
        still = still + 1 if rig.relay.bytes_up == last else 0
        last = rig.relay.bytes_up
    assert still == 5
    assert 0 < last < len(data)
    assert not sent.is_set()
    ts, rs = in_thread(lambda: recv_all(rig.app_server))
    rig.run_until(lambda: "error" in rs or "value" in rs)
    ts.join(10)
    tc.join(10)
    assert rs["value"] == data


@pytest.mark.parametrize("splice", MODES)
def test_reset_propagates(rig_factory, splice):
    rig = rig_factory(splice)
    rig.app_client.sendall(b"hello")
    rig.run_until(lambda: rig.relay.bytes_up == 5)
    assert rig.app_server.recv(5) == b"hello"
    rig.app_server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rig.app_server.close()  # RST
    rig.run_until(lambda: rig.closed)
    assert rig.closed == ["reset"]
    with pytest.raises(ConnectionResetError):
        rig.app_client.recv(10)


@pytest.mark.parametrize("splice", MODES)
def test_a_reset_after_the_peers_fin_propagates(request, engine_module, rig_factory, splice):
    """The server half-closes, then resets (closed with bytes unread): the relay has nothing left to
    read from it, but its error still resets the client's side at once, not at the idle timeout."""
    if engine_module is relay_py:
        request.node.add_marker(pytest.mark.xfail(strict=True, reason="the twin stops watching a socket once its EOF "
                                                  "was read, so it learns of a later reset only by the idle timeout"))
    rig = rig_factory(splice, idle=5.0)
    rig.app_server.shutdown(socket.SHUT_WR)
    rig.run_until(lambda: select.select([rig.app_client], [], [], 0)[0])
    assert rig.app_client.recv(10) == b""  # the FIN went through
    rig.app_client.sendall(b"unread")
    rig.run_until(lambda: rig.relay.bytes_up == 6)
    rig.app_server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    rig.app_server.close()  # RST
    rig.run_until(lambda: rig.closed, timeout=3)  # within the idle timeout
    assert rig.closed == ["reset"]
    with pytest.raises((ConnectionResetError, BrokenPipeError)):  # the client was reset
        rig.app_client.send(b"more")
        rig.app_client.recv(10)


@pytest.mark.parametrize("splice", MODES)
def test_idle_timeout_resets_both(rig_factory, splice):
    rig = rig_factory(splice, idle=0.3)
    start = time.monotonic()
    rig.run_until(lambda: rig.closed, timeout=5)
    assert rig.closed == ["idle"]
    assert 0.3 <= time.monotonic() - start < 0.9  # within 1.25x the timeout, and a margin for a busy machine
    with pytest.raises(ConnectionResetError):
        rig.app_client.recv(10)


@pytest.mark.parametrize("splice", MODES)
def test_traffic_keeps_a_relay_from_idling_out(rig_factory, splice):
    rig = rig_factory(splice, idle=0.4)
    end = time.monotonic() + 1.2  # three idle timeouts, with bytes moving all along
    sent = 0
    while time.monotonic() < end:
        rig.app_client.sendall(b"x")
        sent += 1
        rig.run_until(lambda n=sent: rig.relay.bytes_up == n, timeout=5)
        assert rig.app_server.recv(10) == b"x"
        for _ in range(2):
            rig.loop.run_once(0.05)
    assert rig.closed == []
    rig.run_until(lambda: rig.closed, timeout=5)  # and once silent, it goes within idle_timeout * 1.25 or so
    assert rig.closed == ["idle"]


def test_no_fd_leak(engine_module):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to count fds")
    before = len(os.listdir("/proc/self/fd"))
    for i in range(100):
        rig = Rig(i % 2 == 0 and HAVE_SPLICE, engine_module)
        rig.app_client.sendall(b"x")
        rig.app_client.shutdown(socket.SHUT_WR)
        rig.app_server.shutdown(socket.SHUT_WR)
        rig.run_until(lambda: rig.closed)
        assert rig.closed == ["done"]
        rig.close()  # closes the loop, and with it its engine and pipes
    assert len(os.listdir("/proc/self/fd")) == before


def test_many_relays_on_one_engine_and_the_pipes_are_reused(engine_module):
    """Short connections one after another on one loop: each ends "done" with its bytes, and the
    fds in use stay flat (pipes go back to the pool, not one more pair per relay)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to count fds")
    with Loop() as loop:
        engine = engine_of(loop, engine_module)
        ends = []
        for i in range(300):
            a, b = socket.socketpair()
            c, d = socket.socketpair()
            relay = Relay(loop, b, c, engine=engine, on_close=lambda r, why: ends.append((why, r.bytes_up, r.bytes_down)))
            a.sendall(b"q%d" % i)
            d.sendall(b"answer")
            a.shutdown(socket.SHUT_WR)
            d.shutdown(socket.SHUT_WR)
            end = time.monotonic() + 10
            while len(ends) <= i and time.monotonic() < end:
                loop.run_once(0.05)
            assert d.recv(100) == b"q%d" % i and a.recv(100) == b"answer"
            a.close()
            d.close()
            if i == 20:
                fds = len(os.listdir("/proc/self/fd"))
        assert len(ends) == 300 and all(why == "done" for why, _, _ in ends)
        assert ends[7] == ("done", 2, 6)
        end = time.monotonic() + 5  # the twin's closes run on the socket worker, a moment later
        while len(os.listdir("/proc/self/fd")) > fds and time.monotonic() < end:
            loop.run_once(0.05)
        assert len(os.listdir("/proc/self/fd")) <= fds
        assert engine.open == 0


def test_closing_the_loop_ends_its_relays(engine_module):
    """Loop.close stops the engine: open relays end with a reset, reported as "closed"."""
    loop = Loop()
    engine = engine_of(loop, engine_module)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    ends = []
    relay = Relay(loop, b, c, engine=engine, on_close=lambda r, why: ends.append(why))
    a.sendall(b"x")
    d.setblocking(False)
    got, end = b"", time.monotonic() + 10
    while not got and time.monotonic() < end:
        loop.run_once(0.02)  # the twin relays on the loop
        try:
            got = d.recv(1)
        except BlockingIOError:
            pass
    assert got == b"x"
    loop.close()
    assert ends == ["closed"] and relay.closed and relay.bytes_up == 1
    a.settimeout(5)
    assert a.recv(10) == b""  # its peer closed (a socketpair has no reset)
    a.close()
    d.close()


def test_a_closed_loop_and_its_relays_are_freed(engine_module):
    """The engine and the relays' idle checks live on the loop: nothing module-wide keeps a loop alive."""
    import gc
    import weakref

    loop = Loop()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    relay = Relay(loop, b, c, idle_timeout=30, engine=engine_of(loop, engine_module))
    gone = weakref.ref(loop), weakref.ref(relay)
    relay.close()
    loop.close()
    del loop, relay
    gc.collect()
    assert gone[0]() is None and gone[1]() is None
    for s in (a, d):
        s.close()


def test_one_failing_relay_does_not_stop_the_idle_checks_of_the_others(monkeypatch):
    """The twin's idle checks share one timer: one relay's failure must not stop it."""
    with Loop() as loop:
        engine = engine_of(loop, relay_py)
        pairs = [socket.socketpair() for _ in range(4)]
        closed = []
        broken = Relay(loop, pairs[0][1], pairs[1][0], idle_timeout=0.3, engine=engine)
        fine = Relay(loop, pairs[2][1], pairs[3][0], idle_timeout=0.3, on_close=lambda r, why: closed.append(why), engine=engine)

        def fail(now):
            raise RuntimeError("broken")

        monkeypatch.setattr(engine.relays[broken.id], "_check_idle", fail)
        end = time.monotonic() + 5
        while not closed and time.monotonic() < end:
            loop.run_once(0.05)
        assert closed == ["idle"]
        broken.close()
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.skipif(not HAVE_SPLICE, reason="splice pipes are Linux's")
def test_a_pipe_given_back_after_the_pool_closed_is_closed():
    """A relay that outlives its loop's close returns its pipe to a closed pool: no fd may stay open."""
    pool = _PipePool()
    kept, late = pool.get(), pool.get()
    pool.put(kept, True)
    pool.close()
    assert pool.free == []
    pool.put(late, True)
    assert pool.free == []
    for fd in (*kept[:2], *late[:2]):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_capacity_is_a_bound_and_ended_slots_come_back(engine_module):
    """A full engine refuses a relay (ENFILE, both sockets closed); an ended relay's place serves the next."""
    import errno
    loop = Loop()
    engine = engine_module.RelayEngine(loop, lambda *a: None, capacity=2)
    pairs = []
    try:
        def relay():
            a, b = socket.socketpair()
            c, d = socket.socketpair()
            pairs.extend((a, d))
            return engine.add(None, b, c, 30.0, False)

        first, _ = relay(), relay()
        with pytest.raises(OSError) as refused:
            relay()
        assert refused.value.errno == errno.ENFILE
        assert engine.end(first) == (0, 0)
        assert relay() not in (0, None)  # the ended relay's place
    finally:
        engine.stop()
        loop.close()
        for s in pairs:
            s.close()


def _tcp_pairs(n):
    """n connected loopback TCP pairs (one end each for the app, one for the relay)."""
    lst = socket.create_server(("127.0.0.1", 0), backlog=n)
    pairs = []
    try:
        for _ in range(n):
            a = socket.create_connection(lst.getsockname(), timeout=20)
            b, _ = lst.accept()
            b.settimeout(20)  # a stalled relay fails the test in bounded time
            pairs.append((a, b))
    finally:
        lst.close()
    return pairs


@pytest.mark.skipif(relay_native is None, reason="the compiled relay engine is not built here")
@pytest.mark.parametrize("splice, near, squeeze", [pytest.param(True, True, False, id="splice-near"),
                                                   pytest.param(False, True, True, id="copy-near-squeezed"),
                                                   pytest.param(True, False, True, id="splice-far-squeezed"),
                                                   pytest.param(False, False, True, id="copy-far-squeezed")])
def test_stress_mixed_relays_both_sets(monkeypatch, splice, near, squeeze):
    """Many relays at once on one engine: bulk both ways with a half-close each way round, ping-pong
    (near set), resets; the loop also stalls now and then (a long callback). Every relay ends with
    its own reason and bytes, nothing stalls, no fd is left. squeeze: no room to set relays aside
    (they are re-armed in their epoll)."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to count fds")
    monkeypatch.setenv("ZTUN_RELAY_NEAR", "1" if near else "0")
    fds_before = len(os.listdir("/proc/self/fd"))
    kinds = ["bulk_up_first", "bulk_down_first"] * 6 + ["ping"] * 20 + ["reset"] * 8
    rng = __import__("random").Random(7)
    with Loop() as loop:
        engine = loop.shared["stress"] = relay_native.RelayEngine(loop, lambda token, reason, up, down: ends.append((token, reason, up, down)))
        if squeeze:
            engine._set_again_cap(0)
        ends = []
        fronts = _tcp_pairs(len(kinds))
        backs = _tcp_pairs(len(kinds))
        results, threads = {}, []
        for i, kind in enumerate(kinds):
            (app_client, c), (r, app_server) = fronts[i], backs[i]
            engine.add(i, c, r, 30.0, splice)
            size_a, size_b = rng.randrange(1, 3 << 20), rng.randrange(1, 3 << 20)
            a_data, b_data = os.urandom(size_a), os.urandom(size_b)

            def client(kind=kind, s=app_client, a_data=a_data, b_data=b_data):
                with s:
                    if kind == "bulk_up_first":  # sends all, half-closes, then reads the answer
                        s.sendall(a_data)
                        s.shutdown(socket.SHUT_WR)
                        return recv_all(s) == b_data
                    if kind == "bulk_down_first":  # the server half-closes first; this one sends after
                        got = recv_all(s)
                        s.sendall(a_data)
                        s.shutdown(socket.SHUT_WR)
                        return got == b_data
                    if kind == "ping":
                        for k in range(30):
                            s.sendall(b"ping %d\n" % k)
                            if s.recv(100) != b"pong %d\n" % k:
                                return False
                        s.shutdown(socket.SHUT_WR)
                        return s.recv(10) == b""
                    s.sendall(a_data[:50000])  # reset: the server resets while bytes flow
                    try:
                        while s.recv(1 << 16):
                            pass
                    except ConnectionResetError:
                        pass
                    return True

            def server(kind=kind, s=app_server, a_data=a_data, b_data=b_data):
                with s:
                    if kind == "bulk_up_first":
                        got = recv_all(s)
                        s.sendall(b_data)
                        return got == a_data
                    if kind == "bulk_down_first":
                        s.sendall(b_data)
                        s.shutdown(socket.SHUT_WR)
                        return recv_all(s) == a_data
                    if kind == "ping":
                        for k in range(30):
                            if s.recv(100) != b"ping %d\n" % k:
                                return False
                            s.sendall(b"pong %d\n" % k)
                        return s.recv(10) == b""
                    s.recv(1000)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return True  # closed with a reset on leaving

            for fn, side in ((client, "c"), (server, "s")):
                t, res = in_thread(fn)
                threads.append(t)
                results[i, side] = res

        def long_callback():  # the loop's thread busy elsewhere: near relays wait, none is lost
            time.sleep(0.2)
            if len(ends) < len(kinds):
                loop.call_later(0.5, long_callback)

        loop.call_later(0.1, long_callback)
        end = time.monotonic() + 60
        while len(ends) < len(kinds) and time.monotonic() < end:
            loop.run_once(0.05)
        deadline = time.monotonic() + 25
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        stuck = sorted(set(range(len(kinds))) - {e[0] for e in ends})
        assert not stuck, [(i, kinds[i]) for i in stuck]
        assert not [k for k, res in results.items() if res.get("value") is not True], \
            {k: res for k, res in results.items() if res.get("value") is not True}
        for token, reason, up, down in ends:
            assert reason == ("reset" if kinds[token] == "reset" else "done"), (token, kinds[token], reason)
            if kinds[token] == "ping":
                assert (up, down) == (sum(len(b"ping %d\n" % k) for k in range(30)),) * 2
        assert engine.open == 0
        if near:
            assert engine.stats()["promoted"] > 0  # bulk went over to the thread
        engine.close()
    assert len(os.listdir("/proc/self/fd")) == fds_before
