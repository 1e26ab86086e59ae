"""Outbound health: probes at start-up and every interval, a state change logged once, kept on the outbound."""

import logging
import socket
import time

import pytest

from ztun import loop as _loop
from ztun.appliance.health import HealthCheck
from ztun.outbound.block import BlockOutbound
from ztun.outbound.socks5 import Socks5Outbound

from test_socks5 import FakeProxy, greet, run_until


@pytest.fixture
def loop():
    with _loop.Loop() as lp:
        yield lp


def serve_greeting(credentials):
    def script(conn, proxy):
        greet(conn, credentials)
        conn.recv(1)

    return script


def health_lines(caplog):
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "ztun.health"]


def rounds(loop, check, n=1):
    for _ in range(n):
        done = []
        check.check(on_round=lambda: done.append(1))
        assert run_until(loop, lambda: done)


def test_good_wrong_password_and_recovery(loop, caplog):
    caplog.set_level(logging.INFO, "ztun.health")
    with FakeProxy(serve_greeting((b"u", b"p"))) as proxy:
        out = Socks5Outbound(loop, *proxy.address, username="u", password="p", name="proxy")
        outbounds = {"proxy": out, "block": BlockOutbound(loop)}
        check = HealthCheck(loop, lambda: outbounds, 0)
        assert out.health == {"state": "unknown", "error": None, "checked": None}
        rounds(loop, check)
        assert out.health["state"] == "ok" and out.health["error"] is None
        assert abs(out.health["checked"] - time.time()) < 5
        assert health_lines(caplog) == []

        out.password = b"wrong"
        rounds(loop, check, 3)
        assert out.health["state"] == "failing" and "authentication failed" in out.health["error"]
        assert check.failing() == {"proxy": out.health["error"]}
        assert health_lines(caplog) == [  # once, not once a round
            ("WARNING", f"outbound proxy: health check failed: {out.health['error']}")]

        out.password = b"p"
        rounds(loop, check, 2)
        assert out.health["state"] == "ok" and check.failing() == {}
        assert health_lines(caplog)[1:] == [
            ("INFO", f"outbound proxy: health check ok again (was: socks5 proxy 127.0.0.1:{proxy.address[1]}: "
                     f"authentication failed (status 0x1): wrong username or password)")]
        check.close()


def test_dead_proxy_fails_and_interval_probes_again(loop, caplog):
    listener = socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    listener.close()
    out = Socks5Outbound(loop, *address, name="proxy")
    check = HealthCheck(loop, lambda: {"proxy": out}, 0.1)
    check.check()
    assert run_until(loop, lambda: out.health["state"] == "failing")
    assert out.health["error"].endswith("connect: Connection refused")
    first = out.health["checked"]
    assert run_until(loop, lambda: out.health["checked"] != first), "no second probe after the interval"
    assert len(health_lines(caplog)) == 1
    check.close()
    assert check.timer is None and not check.probes


def test_close_cancels_a_probe_in_flight(loop):
    with FakeProxy(lambda conn, proxy: proxy.stop.wait(5)) as proxy:
        out = Socks5Outbound(loop, *proxy.address, name="proxy")
        check = HealthCheck(loop, lambda: {"proxy": out}, 60)
        check.check()
        assert check.probes
        check.close()
        assert not check.probes and check.timer is None
        loop.run_once(0.05)
        assert out.health["state"] == "unknown"
