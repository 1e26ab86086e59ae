"""MainTableRouter: the Router methods shared by the routers without policy routing (macOS, Windows)."""

import errno
import logging

from ..errors import RouteError
from .route_plan import MAIN_TABLE, Route, Rule
from .undo import GONE, UndoLog

log = logging.getLogger("ztun.system.router")


class MainTableRouter:
    """Routes go into the main table; policy rules are refused; there is no rp_filter.

    A route is unicast (via a gateway and/or out of an interface) or "unreachable" (no
    gateway, no interface: the platform's refusing route, for fail_closed). Every route is
    written to the RouteJournal (if the router has one) before it is added and struck out
    when it is removed, so a crashed run's routes are found (remove_leftovers).

    Subclasses name their system in `system`, call _start() from __init__, implement
    _add_request and _delete_request for one Route, and the rest of the Router protocol.
    """

    policy_routing = False
    system = "this platform"  # how messages name it: "macOS", "Windows"
    admin = "root"  # who may change routes, for messages
    needs_iface = False  # whether a unicast route must name its interface (Windows), else a gateway will do

    def _start(self, journal) -> None:
        """The undo log, and journal (a RouteJournal or None), opened: its lock taken, an earlier run's leftovers read."""
        self._undo = UndoLog(log)
        self._journal = journal.open() if journal is not None else None

    def _outlives_us(self, route: Route) -> bool:
        """Whether route can outlive this process (so the journal names it): here, all of them."""
        return True

    def _add_request(self, route: Route) -> bool:
        """Ask the system to add route; False if it was there already."""
        raise NotImplementedError

    def _delete_request(self, route: Route) -> bool:
        """Ask the system to delete route; False if there was none (or its interface is gone)."""
        raise NotImplementedError

    def add_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Add a route to cidr via gateway and/or out of iface (kind "unreachable": neither); False if it already existed.

        The route is journaled first, so a crash right after the add still finds it.
        """
        route = self._main_route(cidr, gateway, iface, table, kind)
        fresh = self._journal.record(route) if self._journal is not None and self._outlives_us(route) else False
        try:
            added = self._add_request(route)
        except RouteError as e:
            if fresh and e.errno != errno.ETIMEDOUT:  # refused, so not added; without an answer it may have been
                self._journal.strike(route)
            raise
        if not added:
            if fresh:
                self._journal.strike(route)  # someone else's: not ours to remove
            return False
        self._undo.push(f"delete route {route}", lambda: self._remove(route), key=route)
        log.info("added route %s", route)
        return True

    def delete_route(self, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> bool:
        """Delete a route; False if there was none. A route ztun recorded is forgotten."""
        route = self._main_route(cidr, gateway, iface, table, kind)
        self._undo.forget(route)
        return self._remove(route)

    def _remove(self, route: Route) -> bool:
        """Delete route and strike it out of the journal once it is gone (removed now, or already)."""
        try:
            existed = self._delete_request(route)
        except RouteError as e:
            if e.errno in GONE and self._journal is not None:
                self._journal.strike(route)
            raise
        if self._journal is not None:
            self._journal.strike(route)
        return existed

    def remove_leftovers(self, table: int, priorities: range) -> int:
        """Delete the routes an earlier run of this TUN name left (its journal names them); return how many.

        Routes out of the TUN went with it (a utun, or a Wintun adapter ztun created, lives
        only as long as its process), so what a crash really leaves is the routes via the
        uplink (exclusions, proxies) and the fail_closed routes; a route already gone is
        struck out and not counted. table and priorities name nothing here (no policy
        routing). Without a journal: 0. Without the privilege: RouteError in one line.
        """
        if self._journal is None:
            return 0
        removed = 0
        for route in self._journal.leftovers():
            try:
                if self._remove(route):
                    removed += 1
                    log.info("removed leftover route %s", route)
            except RouteError as e:
                if e.errno in GONE:
                    continue
                if e.errno in (errno.EPERM, errno.EACCES):
                    raise RouteError(f"remove ztun's leftover routes (needs {self.admin})", e.errno) from None
                raise RouteError(f"remove leftover route {route}: {e}", e.errno) from None
        if removed:
            log.warning("removed %d leftover route(s) of an earlier run (named in %s)", removed, self._journal.path)
        return removed

    def _close_routes(self) -> bool:
        """Undo every recorded change, newest first, then close the journal; False if done already."""
        if not self._undo.close():
            return False
        if self._journal is not None:
            self._journal.close()
        return True

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
        """The Route add_route's arguments describe, if it is unicast or unreachable in the main table; else RouteError."""
        if table not in (None, MAIN_TABLE):
            raise RouteError(f"route {cidr}: routing tables are a Linux feature (table={table}); {self.system} has the "
                             "main table only", errno.EINVAL)
        if kind not in ("unicast", "unreachable"):
            raise RouteError(f"route {cidr}: {kind!r} routes are Linux-only; {self.system} takes unicast and "
                             "unreachable routes", errno.EOPNOTSUPP)
        if kind == "unreachable" and (gateway is not None or iface is not None):
            raise RouteError(f"route {cidr}: an unreachable route has no gateway or interface", errno.EINVAL)
        if kind == "unicast" and iface is None and (gateway is None or self.needs_iface):
            raise RouteError(f"route {cidr}: {self.system} routes need the interface" if self.needs_iface else
                             f"route {cidr} needs a gateway or an interface", errno.EINVAL)
        try:
            return Route.of(cidr, gateway, iface, kind=kind)
        except ValueError as e:
            raise RouteError(f"route {cidr}: {e}", errno.EINVAL) from None
