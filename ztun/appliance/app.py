"""Builds the appliance's PacketHandler from its configuration (the one place outbounds, rules and DNS meet)."""

from ..outbound.direct import DirectOutbound
from .config import AppConfig
from .forwarder import Forwarder


def build_handler(loop, config: AppConfig) -> Forwarder:
    """The handler the stack asks about each flow; close() releases everything it opened.

    Today: every flow goes direct, from sockets carrying the TUN's fwmark.
    """
    outbound = DirectOutbound(loop, fwmark=config.tun.fwmark, connect_timeout=config.flows.connect_timeout)
    return Forwarder(loop, outbound, tcp_idle_timeout=config.flows.tcp_idle_timeout)
