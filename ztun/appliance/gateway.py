"""Gateway: the TUN device, its addresses, routes and rules, and the stack, set up in order and torn down in reverse."""

import dataclasses
import logging
import socket

from ..errors import RouteError
from ..system import route_plan
from ..system.default_route import DefaultRouteMonitor, find_default, find_uplinks
from ..system.router import open_router
from ..system.sockopt import Egress
from ..tun import offload
from ..tun.device import open_tun
from ..tun.napi import NapiThreads
from ..tun.options import TunOptions
from ..stack.system import SystemStack

log = logging.getLogger("ztun.gateway")

FORWARDING = {4: ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
              6: ("net.ipv6.conf.all.forwarding", "/proc/sys/net/ipv6/conf/all/forwarding")}


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def via_uplink(routes, tun_name: str) -> list:
    """Without policy routing: the plan's routes via the uplink (the exclusions), which follow it when it moves;
    not those into the TUN, nor fail_closed's unreachable ones."""
    return [r for r in routes if r.kind == "unicast" and r.iface != tun_name]


class Gateway:
    """Owns one TUN device, the Router that configured it, and the SystemStack reading it.

    open() runs: open the device (failing early if another process holds it), remove a
    crashed run's leftovers (rules in ztun's priority range, routes in its table), set MTU,
    addresses and link up, add the routes and rules of route_plan.plan(), start the stack.
    close() undoes exactly what open() did, in reverse, also after a failed open().
    An adopted fd's device is left as its owner configured it (no MTU, address or link change).

    egress: how ztun's own sockets stay out of the TUN (shared with the outbounds). When it binds
    them to an interface, open() finds that interface (options.outbound_interface, or the
    default route's for "auto") and the plan's first rule matches it instead of the fwmark;
    with "auto", attach() starts a DefaultRouteMonitor that moves the binding and that rule
    when the default route moves.
    """

    def __init__(self, options: TunOptions, *, udp_timeout: float = 60.0, udp_max_sessions: int = 16384,
                 lan_interfaces=(), enable_forwarding: bool = False, egress: Egress | None = None):
        self.options = options
        self.udp_timeout = udp_timeout
        self.udp_max_sessions = udp_max_sessions
        self.lan_interfaces = tuple(lan_interfaces)
        self.enable_forwarding = enable_forwarding
        self._sysctls: list = []  # (path, old value) to restore on close
        self.device = None
        self.router = None
        self.stack = None
        self.napi = None  # NapiThreads, for a device opened with IFF_NAPI
        self.bypassing: tuple = ()  # route_plan.Route: main-table routes auto-route leaves out of the TUN
        self.fail_closed = False  # whether unreachable twins keep the routed traffic in after a crash
        self.egress = egress if egress is not None else Egress(options.fwmark)
        self.monitor = None  # DefaultRouteMonitor, with outbound_interface "auto"
        self._own_rules: list = []  # the plan's rules for ztun's own sockets (P+0): moved with the interface
        self._spec = None  # the RouteSpec of the plan in force
        self._excluded: list = []  # without policy routing: the excluded prefixes' routes via the uplink, moved with it

    def open(self) -> "Gateway":
        opts = self.options
        try:
            self._check_lan()
            self.device = open_tun(opts)
            self.router = open_router(opts.name)
            name = self.device.name
            policy = self.router.policy_routing
            # Linux: what bypasses auto-route, and strict_route's connected prefixes; macOS and Windows: the
            # routes via a gateway that strict_route overrides.
            main = self.router.main_routes() if opts.auto_route and (policy or opts.strict_route) else ()
            self._bind_egress(name)
            # Without policy routing, excluded prefixes are routed via the default route's gateway.
            uplinks = tuple(u.route() for u in find_uplinks(skip=name)) if not policy and opts.exclude_routes else ()
            spec = route_plan.RouteSpec(iface=name, inet4=opts.inet4, inet6=opts.inet6, routes=opts.routes,
                                        exclude_routes=opts.exclude_routes, auto_route=opts.auto_route,
                                        strict_route=opts.strict_route, fail_closed=opts.fail_closed,
                                        hijack_dns=opts.hijack_dns, main_routes=main, table=opts.table,
                                        rule_priority=opts.rule_priority, fwmark=opts.fwmark,
                                        outbound_interface=self.egress.interface if self.egress.binding else None,
                                        uplinks=uplinks)
            rp_sources = ()
            if opts.routes or opts.auto_route:
                rp_sources = self.router.strict_rp_filter_sources(skip=name)
                if rp_sources:
                    log.info("strict rp_filter on the interfaces of %s: their replies are looked up in the main table",
                             ", ".join(map(str, rp_sources)))
            plan = route_plan.plan(spec, rp_sources, policy_routing=self.router.policy_routing)
            self.router.remove_leftovers(opts.table, opts.rule_priorities)
            if not self.device.adopted:
                self.router.set_link(name, mtu=opts.mtu)
                for addr in opts.addresses:
                    self.router.add_address(name, addr)
                self.router.set_link(name, up=True)
            for item in plan.routes + plan.rules:
                self.router.add(item)
            self._own_rules = [r for r in plan.rules if r.priority == opts.rule_priority and r.action == "goto"
                               and (r.oif or r.fwmark is not None)]
            self._spec = spec
            self._excluded = via_uplink(plan.routes, name) if not policy else []
            self.fail_closed = any(r.kind == "unreachable" for r in plan.routes)
            self.bypassing = route_plan.bypassing(spec)
            self._log_routing(spec)
            if self.device.napi and self.device.created:  # not one adopted or attached
                self.napi = NapiThreads(name, self.device.if_index, opts.napi, clock=lambda: self.stack.reader_cpu(),
                                        reads=lambda: (self.stack.packets_read, self.stack.batches_read))
            self.stack = SystemStack(self.device, opts, udp_timeout=self.udp_timeout,
                                     udp_max_sessions=self.udp_max_sessions)
        except BaseException:
            self.close()
            raise
        return self

    @property
    def follows_default(self) -> bool:
        """Whether ztun's sockets are bound to the default route's interface, followed as it moves."""
        return self.egress.binding and self.options.outbound_interface in (None, "auto")

    def _bind_egress(self, tun_name: str) -> None:
        """Find the interface ztun's own sockets bind to: the one named, or the default route's."""
        if not self.egress.binding:
            return
        wanted = self.options.outbound_interface
        if self.follows_default:
            found = find_default(skip=tun_name)
            if found is None:
                log.warning("outbound interface auto: no default route yet; ztun's outbound connections fail "
                            "until one appears")
            else:
                self.egress.follow(*found)
        else:
            try:
                self.egress.follow(wanted, self.router.get_interface_index(wanted))
            except RouteError as e:
                raise RouteError(f"tun.outbound_interface: no interface {wanted!r} ({e})", e.errno) from None
        if self.egress.interface is not None:
            log.info("ztun's own sockets are bound to %s (index %d)%s", self.egress.interface, self.egress.index,
                     ", following the default route" if self.follows_default else "")

    def _moved(self, old: str | None, new: str) -> None:
        """The default route moved to new: the rule that lets ztun's sockets skip its rules matches new now
        (added before the old one goes, so no socket of either is ever routed into the TUN)."""
        moved = []
        for rule in self._own_rules:
            again = dataclasses.replace(rule, oif=new, fwmark=None, fwmask=None)
            try:
                self.router.add(again)
                self.router.delete(rule)
            except RouteError as e:
                log.error("could not move the rule for ztun's own sockets to %s: %s", new, e)
                again = rule
            moved.append(again)
        self._own_rules = moved
        if self._excluded:
            self._move_exclusions()

    def _same_uplink(self, name: str) -> None:
        """A route changed but the default stayed on name: the excluded prefixes follow its gateway, if that moved."""
        if self._excluded:
            self._move_exclusions()

    def _move_exclusions(self) -> None:
        """Without policy routing: route the excluded prefixes via the new default route's gateway."""
        try:
            uplinks = tuple(u.route() for u in find_uplinks(skip=self._spec.iface))
            families = [fam for fam in route_plan.FAMILIES if any(r.family == fam for r in self._excluded)]
            fresh = [r for fam in families for r in route_plan.excluded_routes(self._spec, fam, uplinks)]
        except (OSError, RouteError) as e:
            log.error("excluded routes stay via the old uplink: %s", e)
            return
        for old, new in zip(self._excluded, fresh):
            if old == new:
                continue
            try:
                self.router.delete(old)  # one prefix cannot have both routes in the main table
                self.router.add(new)
                log.info("excluded %s now via %s", new.cidr, new.iface)
            except RouteError as e:
                log.error("could not move the excluded route %s: %s", old, e)
        self._excluded = fresh

    def _log_routing(self, spec) -> None:
        """Say what is routed how: fail-closed or not, and every main-table route auto-route leaves out of the TUN."""
        opts = self.options
        if not (opts.routes or opts.auto_route):
            return
        if self.fail_closed:
            log.info("fail-closed: what is routed into %s stays unreachable if ztun dies, until the next run or "
                     "`ztun-appliance cleanup`", spec.iface)
        elif opts.fail_closed:
            log.warning("fail-closed is not in force: if ztun dies, traffic routed into %s takes the other routes",
                        spec.iface)
        else:
            log.warning("fail-closed is off (tun.fail_closed = false): if ztun dies, traffic routed into %s takes "
                        "the other routes, unproxied, until the next run or cleanup", spec.iface)
        if not opts.auto_route:
            return
        which = "directly connected (strict_route)" if opts.strict_route else "more specific than the default"
        if self.bypassing:
            log.info("auto-route: %d main-table route%s %s bypass %s: %s", len(self.bypassing),
                     "s" * (len(self.bypassing) != 1), which, spec.iface, "; ".join(map(str, self.bypassing)))
        else:
            log.info("auto-route: no main-table route bypasses %s", spec.iface)
        if opts.exclude_routes:
            log.info("auto-route: excluded (bypass %s): %s", spec.iface, ", ".join(map(str, opts.exclude_routes)))
        if spec.hijack_dns:
            log.info("auto-route: DNS (port 53) to any address goes into %s, a resolver on the LAN's too", spec.iface)
        kept = () if self.router.policy_routing else route_plan.main_kept(spec)
        if kept:
            log.warning("strict_route: host routes via a gateway keep bypassing %s (without policy routing only a "
                        "longer prefix beats a route, and a host route has none): %s", spec.iface, "; ".join(map(str, kept)))
        through = route_plan.through_tun(spec, policy_routing=self.router.policy_routing)
        if through:
            log.info("strict_route: main-table routes via a gateway that go through %s instead: %s", spec.iface,
                     "; ".join(map(str, through)))

    def routing(self) -> dict:
        """For status: whether fail-closed is in force, and what bypasses the TUN (main routes, exclusions)."""
        opts = self.options
        return {"fail_closed": self.fail_closed, "auto_route": opts.auto_route, "strict_route": opts.strict_route,
                "bypassing": [str(r) for r in self.bypassing],
                "excluded": [str(n) for n in opts.exclude_routes],
                "own_sockets": self.egress.describe(), "outbound_interface_moves": self.egress.moves,
                # the monitor's counters: route events read, look-ups made, moves, failed look-ups
                "default_route": dict(self.monitor.counters) if self.monitor is not None else None}

    def _check_lan(self) -> None:
        """Serving LAN hosts needs forwarding on for every family ztun routes: check it, or turn it on."""
        if not self.lan_interfaces:
            return
        for name in self.lan_interfaces:
            try:
                socket.if_nametoindex(name)
            except OSError:
                raise RouteError(f"--lan-interface {name}: no such interface") from None
        for family, (key, path) in FORWARDING.items():
            if getattr(self.options, f"inet{family}") is None or _read(path) != "0":
                continue
            if not self.enable_forwarding:
                raise RouteError(f"{key} is 0: hosts on {', '.join(self.lan_interfaces)} cannot be routed into the TUN; "
                                 f"set it to 1 or run with --enable-forwarding")
            _write(path, "1")
            self._sysctls.append((path, "0"))
            log.info("set %s = 1 (restored on exit)", key)

    def attach(self, loop, handler=None) -> None:
        """Start the stack on loop with handler (None: answer ICMP echo only); it reads the device itself.

        If the device fails, the stack stops reading it and the loop is stopped (failure says why).
        """
        self.stack.start(handler, loop, on_failure=lambda error: loop.stop())
        if self.follows_default:
            self.monitor = DefaultRouteMonitor(loop, self.egress, skip=self.device.name, on_change=self._moved,
                                               on_same=self._same_uplink)
            self.monitor.start()
        if self.napi is not None:
            self.napi.start(loop)

    @property
    def failure(self):
        """The device error that stopped the stack, if any."""
        return self.stack.failure if self.stack is not None else None

    def describe(self) -> str:
        o, dev = self.options, self.device
        parts = [f"{dev.name} (index {dev.if_index}) mtu {o.mtu}"]
        parts += [str(a) for a in o.addresses]
        if dev.offload:
            parts.append(f"offload {offload.names(dev.offload)}")
        if o.routes:
            parts.append("routes " + ",".join(map(str, o.routes)))
        if o.exclude_routes:
            parts.append("excluding " + ",".join(map(str, o.exclude_routes)))
        if o.auto_route:
            parts.append("auto-route" + (" strict" if o.strict_route else ""))
        if o.routes or o.auto_route:
            parts.append("fail-closed" if self.fail_closed else "fail-open")
        if self.napi is not None:
            parts.append(f"threaded NAPI {o.napi}")
        if (o.routes or o.auto_route) and self.router.policy_routing:
            own = f"oif {self.egress.interface}" if self.egress.binding else f"fwmark {o.fwmark:#x}"
            parts.append(f"table {o.table} rules {o.rule_priority}..{o.rule_priority + 9} {own}")
        if self.egress.binding:
            parts.append(f"own sockets {self.egress.describe()}" + (" (following the default route)"
                                                                       if self.follows_default else ""))
        return ", ".join(parts)

    def close(self) -> None:
        """Stop the stack, undo every route, rule, address and link change, close the device. Idempotent."""
        if self.monitor is not None:
            self.monitor.close()
            self.monitor = None
        if self.napi is not None:
            self.napi.close()
        if self.stack is not None:
            self.stack.stop()
        if self.router is not None:
            self.router.close()
            self.router = None
        if self.device is not None:
            self.device.close()
            self.device = None
        while self._sysctls:
            path, old = self._sysctls.pop()
            try:
                _write(path, old)
                log.info("restored %s to %s", path, old)
            except OSError as e:
                log.warning("could not restore %s to %s: %s", path, old, e)

    def __enter__(self):
        return self.open()

    def __exit__(self, *exc):
        self.close()
