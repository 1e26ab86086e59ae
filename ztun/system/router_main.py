"""MainTableRouter: the Router methods shared by the routers without policy routing (macOS, Windows)."""

import errno

from ..errors import RouteError
from .route_plan import MAIN_TABLE, Route, Rule


class MainTableRouter:
    """Routes are unicast routes in the main table; policy rules are refused; there is no rp_filter.

    Subclasses name their system in `system`, implement add_route and delete_route with
    _main_route() checking the arguments, and the rest of the Router protocol.
    """

    policy_routing = False
    system = "this platform"  # how messages name it: "macOS", "Windows"

    def tun_attached(self, name: str) -> bool:
        """Whether an interface name exists, which here means some process holds it open.

        A utun lives only while a process holds its control socket, and an adapter Wintun
        creates only as long as the process that created it.
        """
        try:
            self.get_interface_index(name)
        except RouteError:
            return False
        return True

    def strict_rp_filter_sources(self, skip: str) -> tuple:
        """(): there is no reverse-path filter setting (Linux's rp_filter) whose strict mode ztun must work around."""
        return ()

    def main_routes(self) -> tuple:
        """(): without policy routing there is no auto-route, so nothing to tell about what bypasses it."""
        return ()

    def _no_rules(self, rule) -> RouteError:
        return RouteError(f"{rule}: policy rules are a Linux feature; {self.system} routes by destination in its main "
                          "table only", errno.EOPNOTSUPP)

    def add_rule(self, rule) -> bool:
        """Always RouteError: policy rules are Linux's."""
        raise self._no_rules(rule)

    def delete_rule(self, rule) -> bool:
        """Always RouteError: policy rules are Linux's."""
        raise self._no_rules(rule)

    def add(self, item) -> bool:
        """Add a route_plan.Route as add_route would; a Rule is a RouteError."""
        if isinstance(item, Rule):
            return self.add_rule(item)
        return self.add_route(item.cidr, item.gateway, item.iface, table=item.table, kind=item.kind)

    def delete(self, item) -> bool:
        """Delete a route_plan.Route as delete_route would; a Rule is a RouteError."""
        if isinstance(item, Rule):
            return self.delete_rule(item)
        return self.delete_route(item.cidr, item.gateway, item.iface, table=item.table, kind=item.kind)

    def _main_route(self, cidr, gateway, iface, table, kind) -> Route:
        """The Route add_route's arguments describe, if it is a unicast route in the main table; else RouteError."""
        if table not in (None, MAIN_TABLE):
            raise RouteError(f"route {cidr}: routing tables are a Linux feature (table={table}); {self.system} has the "
                             "main table only", errno.EINVAL)
        if kind != "unicast":
            raise RouteError(f"route {cidr}: {kind!r} routes are Linux-only; {self.system} takes unicast routes", errno.EOPNOTSUPP)
        try:
            return Route.of(cidr, gateway, iface)
        except ValueError as e:
            raise RouteError(f"route {cidr}: {e}", errno.EINVAL) from None
