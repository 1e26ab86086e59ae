"""The direct outbound's non-blocking connect on ztun's loop (loopback only; timeouts are tested in namespaces)."""

import errno
import socket
import time

from ztun.outbound.direct import DirectOutbound
from ztun.tun.loop import Loop


def wait(loop, results, timeout=5.0):
    end = time.monotonic() + timeout
    while not results and time.monotonic() < end:
        loop.run_once(0.05)
    return results


def test_connect_succeeds():
    with Loop() as loop, socket.create_server(("127.0.0.1", 0)) as srv:
        results = []
        DirectOutbound(loop).open_tcp(srv.getsockname(), lambda s, e: results.append((s, e)))
        (sock, err), = wait(loop, results)
        assert err is None and sock.getpeername() == srv.getsockname()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        sock.close()


def test_refused_fails_fast():
    with Loop() as loop:
        with socket.create_server(("127.0.0.1", 0)) as tmp:
            port = tmp.getsockname()[1]  # closed again: nobody listens there
        results = []
        start = time.monotonic()
        DirectOutbound(loop).open_tcp(("127.0.0.1", port), lambda s, e: results.append((s, e)))
        (sock, err), = wait(loop, results)
        assert sock is None and err.errno == errno.ECONNREFUSED
        assert time.monotonic() - start < 5


def test_cancel_closes_quietly():
    with Loop() as loop, socket.create_server(("127.0.0.1", 0)) as srv:
        results = []
        pending = DirectOutbound(loop).open_tcp(srv.getsockname(), lambda s, e: results.append((s, e)))
        pending.cancel()
        assert pending.sock.fileno() == -1
        loop.run_once(0.1)
        assert results == []
