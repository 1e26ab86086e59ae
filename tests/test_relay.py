"""The relay over real loopback TCP connections, splice and copy modes, driven by ztun's loop."""

import hashlib
import os
import select
import socket
import struct
import threading
import time

import pytest

from ztun.outbound.relay import HAVE_SPLICE, PipePool, Relay
from ztun.loop import Loop

MODES = [pytest.param(True, id="splice", marks=pytest.mark.skipif(not HAVE_SPLICE, reason="no os.splice on this platform")), pytest.param(False, id="copy")]


class Rig:
    """app client <-> (c) relay (r) <-> app server, all on 127.0.0.1; the relay runs on a Loop here."""

    def __init__(self, splice, idle=30.0):
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
        self.relay = Relay(self.loop, c, r, on_close=lambda relay, reason: self.closed.append(reason), idle_timeout=idle, splice=splice)

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
def rig_factory():
    rigs = []

    def make(splice, **kw):
        rigs.append(Rig(splice, **kw))
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


@pytest.mark.parametrize("splice", MODES)
def test_bulk_both_ways_and_half_close(rig_factory, splice):
    rig = rig_factory(splice)
    up = os.urandom(8 << 20)
    down = os.urandom(6 << 20)

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
    rig.run_until(lambda: rig.closed)
    tc.join(10)
    ts.join(10)
    assert "error" not in rc and "error" not in rs, (rc.get("error"), rs.get("error"))
    assert hashlib.sha256(rs["value"]).digest() == hashlib.sha256(up).digest()
    assert hashlib.sha256(rc["value"]).digest() == hashlib.sha256(down).digest()
    assert rig.closed == ["done"]
    assert (rig.relay.bytes_up, rig.relay.bytes_down) == (len(up), len(down))


@pytest.mark.parametrize("splice", MODES)
def test_read_client_forwards_what_already_waits_without_the_loop(rig_factory, splice):
    rig = rig_factory(splice)
    rig.app_client.sendall(b"GET / HTTP/1.0\r\n\r\n")
    assert select.select([rig.relay.client], [], [], 10)[0]  # in the relay's socket (at once over loopback)
    rig.relay.read_client()  # no loop iteration
    assert rig.app_server.recv(100) == b"GET / HTTP/1.0\r\n\r\n"
    rig.relay.read_client()  # nothing more waits: no harm
    assert rig.relay.up.reading and rig.relay.bytes_up == 18
    rig.relay.close()
    rig.relay.read_client()  # closed: nothing


@pytest.mark.parametrize("splice", MODES)
def test_backpressure_stops_reading(rig_factory, splice):
    rig = rig_factory(splice)
    data = os.urandom(24 << 20)
    sent = threading.Event()

    def client():
        rig.app_client.sendall(data)
        sent.set()
        rig.app_client.shutdown(socket.SHUT_WR)

    tc, rc = in_thread(client)
    # the server reads nothing yet: the relay must stop reading the client, not buffer without bound
    rig.run_until(lambda: not rig.relay.up.reading, timeout=20)
    assert rig.relay.up.pending <= rig.relay.up.capacity
    assert not sent.is_set()
    ts, rs = in_thread(lambda: recv_all(rig.app_server))
    rig.run_until(lambda: rig.relay.up.shut)
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
def test_idle_timeout_resets_both(rig_factory, splice):
    rig = rig_factory(splice, idle=0.3)
    rig.run_until(lambda: rig.closed, timeout=5)
    assert rig.closed == ["idle"]
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


def test_no_fd_leak(rig_factory):
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc/self/fd to count fds")
    before = len(os.listdir("/proc/self/fd"))
    for i in range(100):
        rig = Rig(splice=i % 2 == 0 and HAVE_SPLICE)
        rig.app_client.sendall(b"x")
        rig.app_client.shutdown(socket.SHUT_WR)
        rig.app_server.shutdown(socket.SHUT_WR)
        rig.run_until(lambda: rig.closed)
        if rig.relay.pipes is not None:
            assert len(rig.relay.pipes.free) == 2  # the two pipes went back to the loop's pool
        rig.close()  # closes the loop, and with it its pool of pipes
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_closed_loop_and_its_relays_are_freed():
    """The relays' shared idle check lives on the loop: nothing module-wide keeps a loop alive."""
    import gc
    import weakref

    loop = Loop()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    relay = Relay(loop, b, c, idle_timeout=30)
    gone = weakref.ref(loop), weakref.ref(relay)
    relay.close()
    loop.close()
    del loop, relay
    gc.collect()
    assert gone[0]() is None and gone[1]() is None
    for s in (a, d):
        s.close()


def test_one_failing_relay_does_not_stop_the_idle_checks_of_the_others(monkeypatch):
    with Loop() as loop:
        pairs = [socket.socketpair() for _ in range(4)]
        closed = []
        broken = Relay(loop, pairs[0][1], pairs[1][0], idle_timeout=0.3)
        fine = Relay(loop, pairs[2][1], pairs[3][0], idle_timeout=0.3, on_close=lambda r, why: closed.append(why))

        def fail(now):
            raise RuntimeError("broken")

        monkeypatch.setattr(broken, "_check_idle", fail)
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
    pool = PipePool()
    kept, late = pool.get(), pool.get()
    pool.put(kept, True)
    pool.close()
    assert pool.free == []
    pool.put(late, True)
    assert pool.free == []
    for fd in (*kept[:2], *late[:2]):
        with pytest.raises(OSError):
            os.fstat(fd)
