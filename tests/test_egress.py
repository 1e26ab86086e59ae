"""Egress: ztun's own sockets marked (fwmark) or bound to an interface with each platform's option; the outbounds use it."""

import errno
import os
import socket
import struct
import sys

import pytest

from ztun.errors import RouteError
from ztun.loop import Loop
from ztun.outbound.direct import DirectOutbound
from ztun.outbound.socks5 import Socks5Outbound
from ztun.system import sockopt
from ztun.system.sockopt import Egress, interface_option


class FakeSocket:
    def __init__(self, fail=None):
        self.opts, self.fail = [], fail

    def setsockopt(self, level, option, value):
        if self.fail:
            raise OSError(self.fail, os.strerror(self.fail))
        self.opts.append((level, option, value))


@pytest.mark.parametrize("platform, family, want", [
    ("linux", socket.AF_INET, (socket.SOL_SOCKET, 25, b"en0\0")),
    ("linux", socket.AF_INET6, (socket.SOL_SOCKET, 25, b"en0\0")),
    ("darwin", socket.AF_INET, (socket.IPPROTO_IP, 25, struct.pack("=I", 0x0102))),
    ("darwin", socket.AF_INET6, (41, 125, struct.pack("=I", 0x0102))),
    # Windows: IPv4 takes the index in network byte order, IPv6 in host order
    ("win32", socket.AF_INET, (socket.IPPROTO_IP, 31, b"\0\0\x01\x02")),
    ("win32", socket.AF_INET6, (41, 31, struct.pack("=I", 0x0102))),
])
def test_each_platform_binds_with_its_option(platform, family, want):
    assert interface_option(family, "en0", 0x0102, platform) == want
    sock = FakeSocket()
    Egress(binding=True, interface="en0", index=0x0102, platform=platform).apply(sock, family)
    assert sock.opts == [want]


def test_an_unknown_platform_is_a_clear_error():
    with pytest.raises(RouteError, match="not implemented for platform 'sunos5'"):
        interface_option(socket.AF_INET, "e1000g0", 2, "sunos5")


def test_binding_without_an_interface_fails_the_socket_not_the_process():
    egress = Egress(binding=True)
    with pytest.raises(OSError) as e:
        egress.apply(FakeSocket(), socket.AF_INET)
    assert e.value.errno == errno.ENETUNREACH and "no default route" in str(e.value)


def test_a_refused_bind_names_the_interface():
    with pytest.raises(OSError, match="eth9 .index 7.") as e:
        Egress(interface="eth9", index=7, platform="linux").apply(FakeSocket(errno.ENODEV), socket.AF_INET)
    assert e.value.errno == errno.ENODEV


def test_fwmark_when_not_binding_and_nothing_with_neither(monkeypatch):
    marked = []
    monkeypatch.setattr(sockopt, "mark_socket", lambda sock, mark: marked.append(mark))
    Egress(0x2022).apply(FakeSocket(), socket.AF_INET)
    sock = FakeSocket()
    Egress(0).apply(sock, socket.AF_INET)
    assert marked == [0x2022] and sock.opts == []
    assert Egress.of(0x55).fwmark == 0x55 and not Egress.of(0x55).binding
    e = Egress(binding=True)
    assert Egress.of(e) is e


def test_follow_moves_the_binding_and_counts_real_moves():
    e = Egress(0x2022, binding=True, platform="linux")
    assert e.describe() == "bound to (no interface)"
    assert e.follow("eth0", 2) and e.moves == 0  # the first interface is not a move
    assert not e.follow("eth0", 2)
    assert e.follow("wlan0", 3) and e.moves == 1 and e.describe() == "bound to wlan0"
    sock = FakeSocket()
    e.apply(sock, socket.AF_INET)
    assert sock.opts == [(socket.SOL_SOCKET, 25, b"wlan0\0")]  # bound, not marked


def _root_linux():
    return sys.platform.startswith("linux") and os.geteuid() == 0


@pytest.mark.skipif(not _root_linux(), reason="SO_BINDTODEVICE needs Linux and CAP_NET_RAW")
def test_every_outbound_socket_is_bound_on_linux():
    egress = Egress(binding=True, interface="lo", index=socket.if_nametoindex("lo"))

    def bound(sock):
        return sock.getsockopt(socket.SOL_SOCKET, 25, 16).rstrip(b"\0")

    with Loop() as loop, socket.create_server(("127.0.0.1", 0)) as srv:
        direct = DirectOutbound(loop, egress=egress)
        assert direct.egress is egress
        results = []
        direct.open_tcp(srv.getsockname(), lambda s, e: results.append((s, e)))
        for _ in range(100):
            if results:
                break
            loop.run_once(0.05)
        (sock, err), = results
        assert err is None and bound(sock) == b"lo"
        sock.close()
        flow = direct.open_udp(socket.AF_INET, lambda *a: None, lambda *a: None)
        assert bound(flow.sock) == b"lo"
        flow.close()
        # the proxy's outbound shares the same Egress (the monitor moves one object)
        proxy = Socks5Outbound(loop, "127.0.0.1", 1080, egress=egress)
        assert proxy.egress is egress


class RecordingEgress(Egress):
    def __init__(self):
        super().__init__(binding=True, interface="up0", index=9)
        self.applied = []

    def apply(self, sock, family):
        self.applied.append(family)


def test_proxy_connections_and_udp_relay_sockets_go_through_egress():
    """A SOCKS5 flow's TCP connection to the proxy and its UDP socket are made with the outbound's egress."""
    egress = RecordingEgress()
    with Loop() as loop, socket.create_server(("127.0.0.1", 0)) as srv:
        proxy = Socks5Outbound(loop, "127.0.0.1", srv.getsockname()[1], egress=egress, connect_timeout=1.0)
        proxy.open_tcp(("198.18.0.9", 80), lambda s, e: None)
        assert egress.applied == [socket.AF_INET]
        conn, _ = srv.accept()
        conn.close()
        for _ in range(20):
            loop.run_once(0.01)


def test_binding_is_linuxs_choice_and_everywhere_elses_default():
    from ztun.appliance.app import egress_for
    from ztun.tun.options import TunOptions

    assert not egress_for(TunOptions(), "linux").binding and egress_for(TunOptions(), "linux").fwmark == 0x2022
    assert egress_for(TunOptions(outbound_interface="auto"), "linux").binding
    assert egress_for(TunOptions(), "darwin").binding and egress_for(TunOptions(), "win32").binding


def test_a_proxy_on_loopback_is_not_excluded_from_the_tun_routes():
    """A remote proxy's address is excluded from the TUN's routes; one on loopback is not (routing it via the
    uplink's gateway, as a main-table router would, is wrong)."""
    from types import SimpleNamespace

    from ztun.appliance.app import tun_options
    from ztun.tun.options import TunOptions

    config = SimpleNamespace(tun=TunOptions(routes=("198.19.0.0/16",)), dns=SimpleNamespace(mode="off"))
    outbounds = {"local": SimpleNamespace(proxy_address=("127.0.0.1", 1080)),
                 "remote": SimpleNamespace(proxy_address=("198.19.7.7", 1080)), "direct": SimpleNamespace(proxy_address=None)}
    assert [str(n) for n in tun_options(config, outbounds).exclude_routes] == ["198.19.7.7/32"]
