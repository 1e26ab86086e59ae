"""The direct outbound's non-blocking connect on ztun's loop (loopback only; timeouts are tested in namespaces)."""

import errno
import socket
import time

from ztun.outbound.direct import DirectOutbound
from ztun.loop import Loop


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


def test_open_udp_echo_and_icmp_errors_are_not_fatal():
    with Loop() as loop, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        echo.setblocking(False)
        out = DirectOutbound(loop, name="direct-2")
        assert out.name == "direct-2"
        got, closed = [], []
        flow = out.open_udp(socket.AF_INET, lambda p, s: got.append((p, s)), closed.append)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tmp:
            tmp.bind(("127.0.0.1", 0))
            nobody = tmp.getsockname()
        assert flow.send(b"lost", nobody, domain="ignored.test")  # answered by ICMP port unreachable
        loop.run_once(0.05)
        for i in range(200):  # more than one readiness event's worth
            assert flow.send(b"d%d" % i, echo.getsockname())
        end = time.monotonic() + 5
        while len(got) < 200 and time.monotonic() < end:
            try:
                data, addr = echo.recvfrom(100)
                echo.sendto(data, addr)
            except BlockingIOError:
                pass
            loop.run_once(0.01)
        assert sorted(got) == sorted((b"d%d" % i, echo.getsockname()) for i in range(200))
        assert closed == [] and out.counters["udp_flows"] == 1
        flow.close()
        flow.close()
        assert flow.sock.fileno() == -1 and not flow.send(b"late", echo.getsockname())


def test_counters():
    with Loop() as loop, socket.create_server(("127.0.0.1", 0)) as srv:
        out = DirectOutbound(loop)
        results = []
        out.open_tcp(srv.getsockname(), lambda s, e: results.append((s, e)))
        (sock, err), = wait(loop, results)
        sock.close()
        assert out.counters["tcp_ok"] == 1 and out.counters["tcp_failed"] == 0
        out.close()
        out.close()
