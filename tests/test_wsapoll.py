"""The WSAPoll poller (Windows' loop): its bookkeeping and bit mapping anywhere, over a poll(2) stand-in;
the real WSAPoll on Windows only."""

import random
import resource
import select
import socket
import sys

import pytest

from ztun import wsapoll as w
from ztun.loop import Loop


def emulated_wsapoll(array, count, timeout_ms):
    """WSAPoll's contract over poll(2): read each entry's events, fill its revents, return how many are ready."""
    p = select.poll()
    for i in range(count):
        ev = array[i].events
        p.register(array[i].fd, (select.POLLIN if ev & w.POLLRDNORM else 0) | (select.POLLOUT if ev & w.POLLWRNORM else 0))
    ready = dict(p.poll(timeout_ms))
    n = 0
    for i in range(count):
        got = ready.get(array[i].fd, 0)
        array[i].revents = ((w.POLLRDNORM if got & select.POLLIN else 0) | (w.POLLWRNORM if got & select.POLLOUT else 0)
                            | (w.POLLHUP if got & select.POLLHUP else 0) | (w.POLLERR if got & select.POLLERR else 0))
        n += bool(array[i].revents)
    return n


def test_bits_both_ways():
    assert w.interest(w.IN) == w.POLLRDNORM and w.interest(w.OUT) == w.POLLWRNORM
    assert w.interest(w.IN | w.OUT) == w.POLLRDNORM | w.POLLWRNORM
    assert w.readiness(w.POLLRDNORM) == w.IN and w.readiness(w.POLLHUP) == w.IN  # the end is read as b""
    assert w.readiness(w.POLLWRNORM | w.POLLERR) == w.OUT | w.ERR and w.readiness(w.POLLNVAL) == w.ERR


def test_slots_stay_consistent_through_growth_and_removals():
    poller = w.WSAPollPoller(poll_fn=lambda *a: 0, capacity=4)
    rng = random.Random(5)
    live = {}
    for step in range(3000):
        if live and rng.random() < 0.45:
            fd = rng.choice(list(live))
            poller.unregister(fd)
            del live[fd]
        else:
            fd = rng.randrange(10_000)
            if fd in live:
                poller.modify(fd, w.OUT)
                live[fd] = w.interest(w.OUT)
            else:
                poller.register(fd, w.IN)
                live[fd] = w.interest(w.IN)
        assert len(poller) == len(live)
    seen = {poller._array[i].fd: poller._array[i].events for i in range(len(poller))}
    assert seen == live and all(poller._array[i].fd == fd for fd, i in poller._slot.items())
    with pytest.raises(FileExistsError):
        poller.register(next(iter(live)), w.IN)
    with pytest.raises(FileNotFoundError):
        poller.modify(-5, w.IN)
    poller.unregister(-5)  # unknown: nothing


def test_timeout_is_rounded_up_to_milliseconds_and_errors_raise():
    calls = []
    poller = w.WSAPollPoller(poll_fn=lambda a, n, ms: calls.append(ms) or 0)
    poller.poll(0.0001), poller.poll(-1), poller.poll(None), poller.poll(2)
    assert calls == [1, -1, -1, 2000]
    bad = w.WSAPollPoller(poll_fn=lambda *a: w.SOCKET_ERROR, last_error=lambda: 10022)
    with pytest.raises(OSError, match="WSA error 10022"):
        bad.poll(0)


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(select, "poll"), reason="the stand-in is poll(2)")
def test_a_loop_on_the_wsapoll_poller_serves_700_sockets():
    """More than select()'s 512: every pair's reader runs once; writers and removals go through the same slots."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2000:
        pytest.skip(f"needs 2000 descriptors, the limit is {soft}")
    pairs = [socket.socketpair() for _ in range(350)]
    try:
        with Loop(poller=w.WSAPollPoller(poll_fn=emulated_wsapoll)) as loop:
            got, wrote = [], []
            for i, (a, b) in enumerate(pairs):
                a.setblocking(False)
                b.setblocking(False)

                def readable(i=i, a=a):
                    got.append((i, a.recv(10)))
                    loop.remove_reader(a.fileno())

                loop.add_reader(a.fileno(), readable)
                loop.add_writer(b.fileno(), lambda i=i, b=b: (wrote.append(i), b.send(b"%d" % i),
                                                                loop.remove_writer(b.fileno())))
            for _ in range(50):
                if len(got) == len(pairs):
                    break
                loop.run_once(0.2)
            assert sorted(wrote) == list(range(len(pairs)))
            assert sorted(got) == [(i, b"%d" % i) for i in range(len(pairs))]
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.skipif(sys.platform != "win32", reason="the real WSAPoll is Windows'")
def test_the_real_wsapoll_reports_a_readable_socket():
    poller = w.WSAPollPoller()
    a, b = socket.socketpair()
    try:
        poller.register(a.fileno(), w.IN)
        assert poller.poll(0) == []
        b.send(b"x")
        assert poller.poll(2) == [(a.fileno(), w.IN)]
        assert Loop()._poller.__class__ is w.WSAPollPoller  # the loop's default there
    finally:
        a.close()
        b.close()
