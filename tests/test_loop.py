"""The readiness loop: readers, writers, timers, cancellation, signals through the self-pipe, failing callbacks."""

import os
import signal
import socket
import threading
import time

import pytest

from ztun.loop import Loop


@pytest.fixture
def loop():
    lp = Loop()
    yield lp
    lp.close()


def run_until(loop, cond, limit=200):
    for _ in range(limit):
        if cond():
            return
        loop.run_once(0.05)
    pytest.fail("condition not reached")


def test_reader_and_writer_on_one_fd(loop):
    a, b = socket.socketpair()
    a.setblocking(False)
    seen = []
    loop.add_reader(a.fileno(), lambda: seen.append(("r", a.recv(100))))
    loop.add_writer(a.fileno(), lambda: (seen.append(("w",)), loop.remove_writer(a.fileno())))
    run_until(loop, lambda: ("w",) in seen)
    b.send(b"hi")
    run_until(loop, lambda: ("r", b"hi") in seen)
    assert loop.remove_reader(a.fileno()) and not loop.remove_reader(a.fileno())
    a.close()
    b.close()


def test_timers_in_order_and_cancel(loop):
    order = []
    loop.call_later(0.03, order.append, 3)
    loop.call_later(0.01, order.append, 1)
    h = loop.call_later(0.02, order.append, 2)
    loop.call_soon(order.append, 0)
    h.cancel()
    run_until(loop, lambda: 3 in order)
    assert order == [0, 1, 3]


def test_removed_reader_does_not_run_in_the_same_iteration(loop):
    a1, b1 = socket.socketpair()
    a2, b2 = socket.socketpair()
    ran = []

    def first():
        ran.append(1)
        a1.recv(10)
        loop.remove_reader(a2.fileno())
        loop.remove_reader(a1.fileno())

    loop.add_reader(a1.fileno(), first)
    loop.add_reader(a2.fileno(), lambda: ran.append(2))
    b1.send(b"x")
    b2.send(b"x")
    for _ in range(5):
        loop.run_once(0.01)
    # Whichever ran first, the other was removed before it could run, or ran first itself.
    assert ran in ([1], [2, 1])
    for s in (a1, b1, a2, b2):
        s.close()


def test_failing_callback_is_logged_and_the_loop_goes_on(loop, caplog):
    done = []
    loop.call_soon(lambda: 1 / 0)
    loop.call_soon(done.append, True)
    loop.run_once(0)
    assert done == [True]
    assert "ZeroDivisionError" in caplog.text


def test_call_at_end_runs_after_the_iterations_callbacks(loop, caplog):
    order = []
    a, b = socket.socketpair()
    with a, b:
        a.setblocking(False)

        def readable():
            order.append("reader")
            a.recv(16)
            loop.call_at_end(lambda: order.append("end"))
            loop.call_soon(order.append, "soon")  # the next iteration's

        loop.add_reader(a.fileno(), readable)
        b.send(b"x")
        loop.run_once(1.0)
        assert order == ["reader", "end"]  # in the same iteration, before the next poll
        loop.run_once(0)
        assert order == ["reader", "end", "soon"]
        loop.remove_reader(a.fileno())
    # added outside an iteration, or by an end callback: the next iteration, which does not wait
    loop.call_at_end(lambda: (order.append("outside"), loop.call_at_end(lambda: 1 / 0)))
    loop.run_once(None)
    assert order[-1] == "outside"
    t = time.monotonic()
    loop.run_once(10.0)  # the pending end callback is work: no wait in the poll
    assert time.monotonic() - t < 5.0
    assert "ZeroDivisionError" in caplog.text  # logged, the loop goes on


def test_stop_and_run(loop):
    """run() returns at the stop, not at the next callback (a broken stop hangs: the suite's per-test timeout fails it)."""
    later = []
    loop.call_later(0.01, loop.stop)
    loop.call_later(30, later.append, "ran")
    loop.run()
    assert later == []


def test_signal_arrives_through_the_self_pipe(loop):
    got = []
    previous = signal.getsignal(signal.SIGUSR1)
    loop.add_signal_handler(signal.SIGUSR1, got.append, "usr1")
    os.kill(os.getpid(), signal.SIGUSR1)
    run_until(loop, lambda: got)
    assert got == ["usr1"]
    assert loop.remove_signal_handler(signal.SIGUSR1)
    assert signal.getsignal(signal.SIGUSR1) == previous


def test_wakeup_from_another_thread(loop):
    t = threading.Timer(0.05, loop.wakeup)
    t.start()
    start = time.monotonic()
    loop.run_once(5)
    waited = time.monotonic() - start
    t.join()
    assert waited < 4, f"run_once returned after {waited:.1f} s: at its timeout, not at the wakeup"


def test_close_restores_signals_and_is_idempotent():
    lp = Loop()
    previous = signal.getsignal(signal.SIGUSR2)
    lp.add_signal_handler(signal.SIGUSR2, lambda: None)
    lp.close()
    lp.close()
    assert signal.getsignal(signal.SIGUSR2) == previous
    with pytest.raises(RuntimeError):
        lp.call_later(1, print)


def test_cancelled_timers_release_their_callbacks_and_the_heap():
    import gc
    import weakref

    from ztun.loop import Loop

    class Payload:
        def run(self):
            pass

    with Loop() as loop:
        payloads = [Payload() for _ in range(1000)]
        refs = [weakref.ref(p) for p in payloads]
        handles = [loop.call_later(3600, p.run) for p in payloads]
        del payloads
        for h in handles:
            h.cancel()
        gc.collect()
        assert not any(r() for r in refs)  # nothing kept alive for an hour
        assert len(loop._timers) < 100  # and the heap was compacted
        kept = loop.call_later(0, lambda: None)
        loop.run_once(0.01)
        assert not kept.cancelled


@pytest.mark.parametrize("backend", ["epoll", "selectors"])
def test_both_backends_read_write_and_remove(backend):
    """The Linux epoll core and the selectors one (kqueue on macOS) behave alike."""
    import selectors

    lp = Loop(selectors.DefaultSelector() if backend == "selectors" else None)
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        seen = []
        lp.add_reader(a, lambda: seen.append(a.recv(10)))  # a socket object works as well as its fd
        lp.add_writer(a.fileno(), lambda: seen.append("w"))
        b.send(b"x")
        run_until(lp, lambda: b"x" in seen and "w" in seen)
        assert lp.remove_writer(a.fileno()) and not lp.remove_writer(a.fileno())
        seen.clear()
        b.send(b"y")
        run_until(lp, lambda: b"y" in seen)
        assert "w" not in seen
        assert lp.remove_reader(a.fileno())
        b.send(b"z")
        lp.run_once(0.02)
        assert b"z" not in seen
    finally:
        lp.close()
        a.close()
        b.close()


def test_fd_closed_without_remove_then_reused(loop):
    """A closed fd's number, reused by a new socket, can be registered again (epoll forgot the old one)."""
    a, b = socket.socketpair()
    loop.add_reader(a.fileno(), lambda: None)
    loop.add_writer(a.fileno(), lambda: None)
    fd = a.fileno()
    a.close()
    loop.remove_writer(fd)  # the reader's entry stays behind, as a handler that forgot to remove it
    c, d = socket.socketpair()
    try:
        got = []
        reused = c if c.fileno() == fd else d if d.fileno() == fd else None
        if reused is None:
            pytest.skip("the fd number was not reused")
        loop.add_writer(fd, got.append, "w")
        run_until(loop, lambda: got)
    finally:
        for s in (b, c, d):
            s.close()


@pytest.mark.parametrize("backend", ["epoll", "selectors"])
def test_discard_before_close_and_without_close(backend):
    """discard() forgets an fd about to be closed; one that stays open after all does not make the loop spin."""
    import selectors

    lp = Loop(selectors.DefaultSelector() if backend == "selectors" else None)
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    try:
        ran = []
        lp.add_reader(a.fileno(), ran.append, "a")
        lp.add_writer(a.fileno(), ran.append, "aw")
        lp.discard(a.fileno())
        a.close()
        lp.discard(12345)  # never added: nothing happens
        lp.add_reader(c.fileno(), ran.append, "c")
        lp.discard(c.fileno())  # but c stays open, and readable
        d.send(b"x")
        for _ in range(5):
            lp.run_once(0.01)
        assert ran == []
        # the loop stopped hearing about c: a new reader on it works as usual
        lp.add_reader(c.fileno(), ran.append, "c2")
        run_until(lp, lambda: ran)
        assert ran[0] == "c2"
    finally:
        lp.close()
        for s in (b, c, d):
            s.close()


def test_add_again_right_after_discard_without_close(loop):
    a, b = socket.socketpair()
    try:
        ran = []
        loop.add_reader(a.fileno(), ran.append, "old")
        loop.discard(a.fileno())
        loop.add_reader(a.fileno(), ran.append, "new")  # the kernel still holds the first registration
        b.send(b"x")
        run_until(loop, lambda: ran)
        assert ran[0] == "new"
    finally:
        a.close()
        b.close()
