"""DNS routed into the TUN: fake-IP answers (FakeIpPool) and forwarding through an outbound (DnsService)."""

from .fakeip import FakeIpPool
from .service import DnsService

__all__ = ["DnsService", "FakeIpPool"]
