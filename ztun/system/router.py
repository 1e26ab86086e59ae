"""Router: the protocol of what configures interfaces, routes and (on Linux) policy rules, and open_router()."""

import sys
from typing import Protocol, runtime_checkable

from ..errors import ZtunError


@runtime_checkable
class Router(Protocol):
    """Links, addresses and routes, IPv4 and IPv6. Every change is recorded; close() undoes exactly those.

    Adding what already exists is not an error and is not recorded, so it is not removed.
    """

    def get_interface_index(self, name: str) -> int:
        """The interface index of name; RouteError if there is none."""

    def set_link(self, iface: str, *, up: bool | None = None, mtu: int | None = None) -> None:
        """Bring iface up (or down) and set its MTU; close() restores what was there."""

    def add_address(self, iface: str, cidr) -> bool:
        """Add an address with its prefix length to iface; False if it was already there."""

    def add_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Add a route to cidr via gateway and/or out of iface; False if it already existed.

        kind "throw" makes a lookup in table fall through to the next rule, "unreachable" fails it.
        """

    def delete_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Delete a route; False if there was none. A route ztun recorded is forgotten."""

    def close(self) -> None:
        """Undo every recorded change, newest first. Idempotent."""


@runtime_checkable
class PolicyRouter(Router, Protocol):
    """A Router with policy routing rules (Linux)."""

    def add_rule(self, rule) -> bool:
        """Add a route_plan.Rule; False if an identical rule existed."""

    def delete_rule(self, rule) -> bool:
        """Delete a route_plan.Rule; False if there was none."""

    def remove_leftovers(self, table: int, priorities: range) -> int:
        """Delete every rule in priorities and every route in table (a crashed run's); return how many."""


def open_router() -> Router:
    """This platform's Router."""
    if sys.platform.startswith("linux"):
        from .router_linux import LinuxRouter

        return LinuxRouter()
    if sys.platform == "darwin":
        from .router_darwin import DarwinRouter

        return DarwinRouter()
    if sys.platform == "win32":
        from .router_windows import WindowsRouter

        return WindowsRouter()
    raise ZtunError(f"ztun has no router for platform {sys.platform!r} (Linux, macOS and Windows only)")
