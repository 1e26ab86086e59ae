"""Router: the one protocol of what configures interfaces, routes and (on Linux) policy rules, and open_router()."""

import sys
from typing import Protocol, runtime_checkable

from ..errors import ZtunError


@runtime_checkable
class Router(Protocol):
    """Links, addresses, routes and (where the platform has them) policy rules, IPv4 and IPv6.

    Every change is recorded; close() undoes exactly those, newest first. Adding what
    already exists is not an error and is not recorded, so it is not removed. Every
    platform implements every method: what a platform cannot do raises RouteError saying
    what and why.
    """

    policy_routing: bool
    """Whether the router has policy rules and routing tables other than main (Linux).

    Without it, add_rule and delete_rule raise RouteError, routes go into the main table
    only and are unicast only, and route_plan.plan() makes a plan without rules.
    """

    def get_interface_index(self, name: str) -> int:
        """The interface index of name; RouteError if there is none."""

    def tun_attached(self, name: str) -> bool:
        """Whether name is a TUN some process holds open (a running ztun's), without attaching to it."""

    def strict_rp_filter_sources(self, skip: str) -> tuple:
        """IPv4 addresses of the interfaces but skip and lo whose reverse-path filter is strict; () without rp_filter."""

    def set_link(self, iface: str, *, up: bool | None = None, mtu: int | None = None) -> None:
        """Bring iface up (or down) and set its MTU; close() restores what was there."""

    def add_address(self, iface: str, cidr) -> bool:
        """Add an address with its prefix length to iface; False if it was already there."""

    def add_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Add a route to cidr via gateway and/or out of iface; False if it already existed.

        table None is the main table. kind "throw" makes a lookup in table fall through to
        the next rule, "unreachable" fails it (both need policy_routing).
        """

    def delete_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Delete a route; False if there was none. A route ztun recorded is forgotten."""

    def add_rule(self, rule) -> bool:
        """Add a route_plan.Rule; False if an identical rule existed. RouteError without policy_routing."""

    def delete_rule(self, rule) -> bool:
        """Delete a route_plan.Rule; False if there was none. RouteError without policy_routing."""

    def add(self, item) -> bool:
        """Add a route_plan.Route or Rule (as add_route or add_rule would); False if it was already there."""

    def delete(self, item) -> bool:
        """Delete a route_plan.Route or Rule; False if there was none."""

    def main_routes(self) -> tuple:
        """The main table's routes (IPv4 and IPv6) as route_plan.Route: prefix, gateway, device, kind.

        What auto-route leaves out of the TUN is read from these, and strict_route's plan:
        on Linux the directly connected prefixes it lets bypass, on macOS and Windows (one
        table, scoped routes left out) the routes via a gateway it sends into the TUN.
        """

    def remove_leftovers(self, table: int, priorities: range) -> int:
        """Remove what a crashed run left behind; return how many.

        On Linux: every rule and route carrying ztun's protocol number whatever its table
        and priority (not those of a ztun still running), and untagged ones of older runs
        in priorities and table. On macOS and Windows: the routes an earlier run of the same
        TUN name wrote to its route journal and did not remove (open_router(tun_name)).
        Without the privilege to remove them: RouteError in one line.
        """

    def close(self) -> None:
        """Undo every recorded change, newest first. Idempotent."""


def open_router(tun_name: str | None = None) -> Router:
    """This platform's Router.

    tun_name (the configured name, which macOS may not give the device) names the route
    journal of macOS and Windows, where the routes of a crashed run are found; the router
    holds its lock until close(), and RouteError EBUSY says another ztun of that name runs.
    Linux finds its routes by their tag and needs none.
    """
    if sys.platform.startswith("linux"):
        from .router_linux import LinuxRouter

        return LinuxRouter()
    journal = None
    if tun_name is not None:
        from .route_journal import RouteJournal

        journal = RouteJournal(tun_name)
    if sys.platform == "darwin":
        from .router_darwin import DarwinRouter

        return DarwinRouter(journal=journal)
    if sys.platform == "win32":
        from .router_windows import WindowsRouter

        return WindowsRouter(journal=journal)
    raise ZtunError(f"ztun has no router for platform {sys.platform!r} (Linux, macOS and Windows only)")
