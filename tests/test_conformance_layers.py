"""The stack, the handler and the outbounds conform to their protocols (conformance.assert_conforms), on every OS."""

import pytest
from conformance import assert_conforms, conformance_problems

from ztun.appliance.forwarder import Forwarder
from ztun.appliance.rules import Rules
from ztun.appliance.config import RouteConfig
from ztun.loop import Loop
from ztun.outbound.block import BlockedUdpFlow, BlockOutbound
from ztun.outbound.direct import Connecting, DirectOutbound, DirectUdpFlow
from ztun.outbound.protocol import Connect, Outbound, UdpFlow
from ztun.outbound.socks5 import Handshake, Socks5Outbound, Socks5UdpFlow
from ztun.stack.handler import PacketHandler, UdpSession
from ztun.stack.protocol import TunStack
from ztun.stack.system import SystemStack
from ztun.stack.udp import NatUdpSession


def test_the_system_stack_is_a_tun_stack():
    assert_conforms(SystemStack, TunStack)


def test_the_forwarder_is_a_packet_handler():
    with Loop() as loop:
        forwarder = Forwarder(loop, {"direct": DirectOutbound(loop)}, Rules(RouteConfig()))
        assert_conforms(Forwarder, PacketHandler, instance=forwarder)  # icmp_echo is set by configure()
        forwarder.close()


def test_the_udp_nat_session_is_a_udp_session():
    assert_conforms(NatUdpSession, UdpSession)


@pytest.mark.parametrize("cls", [DirectOutbound, Socks5Outbound, BlockOutbound], ids=lambda c: c.__name__)
def test_every_outbound_is_an_outbound(cls):
    with Loop() as loop:
        outbound = (Socks5Outbound(loop, "198.18.0.9", 1080) if cls is Socks5Outbound else cls(loop))
        assert_conforms(cls, Outbound, instance=outbound)
        outbound.close()


@pytest.mark.parametrize("cls", [DirectUdpFlow, Socks5UdpFlow, BlockedUdpFlow], ids=lambda c: c.__name__)
def test_every_udp_flow_is_a_udp_flow(cls):
    assert_conforms(cls, UdpFlow)


@pytest.mark.parametrize("cls", [Connecting, Handshake], ids=lambda c: c.__name__)
def test_every_connect_in_progress_can_be_cancelled(cls):
    assert_conforms(cls, Connect)


def test_an_outbound_missing_its_capabilities_is_found():
    class Half:
        name = "half"
        counters: dict = {}

        def open_tcp(self, destination, on_done, domain=None):
            return None

        def open_udp(self, family, on_datagram, on_close):
            return None

        def close(self):
            pass

    problems = conformance_problems(Half, Outbound)
    for attribute in ("blocks", "resolves_names", "proxy_address"):
        assert any(f"lacks attribute {attribute} " in p for p in problems), problems


def test_a_handler_with_the_old_signatures_is_found():
    """prepare(flow, decide) and handle_tcp(sock, source, destination): the shape before the Flow object."""

    class Old:
        icmp_echo = "reply"

        def prepare(self, flow, decide):
            return None

        def handle_tcp(self, sock, source, destination):
            pass

        def handle_udp(self, session):
            pass

        def handle_icmp(self, flow):
            return None

    assert len(conformance_problems(Old, PacketHandler)) == 2

