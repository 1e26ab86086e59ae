"""The routes and Linux policy rules that send traffic into the TUN, computed from a RouteSpec (no system calls).

A router without policy routing (macOS, Windows) gets routes in the main table and no
rules (_main_table_plan): the given prefixes (the two halves of the address space with
auto-route) out of the TUN, exclusions via the uplink, and with fail_closed an unreachable
route under each prefix routed into the TUN.

With policy routing (Linux), with P = rule_priority, T = table, M = fwmark and NOP = P+9, per address family that has
something to route (sing-tun's rule set, with an fwmark exception instead of binding
ztun's own sockets to an interface):

Table T holds the routes given (dev TUN), a default route when auto-route is on, and a
`throw` route for every excluded prefix: a lookup that lands on it falls through to the
next rule, so excluded traffic ends in the main table. With fail_closed, T also holds an
`unreachable` twin of each route into the TUN at metric FAIL_CLOSED_METRIC: while the TUN
lives its own route (metric 0, 1024 for IPv6) wins; when the process dies the kernel
deletes the TUN and every route out of it, the twins (no device) and the rules stay, and
whatever was routed into the TUN now fails with EHOSTUNREACH (the host's sockets) or an
ICMP unreachable (a LAN host's packets) until `run` or `cleanup` removes them. Throw routes
are more specific than the twins they cut into, so exclusions keep bypassing.

    P+0  fwmark M goto NOP              ztun's own sockets skip every ztun rule: no loops
    P+0  oif IF goto NOP                (instead, with outbound_interface) the same for its
                                        sockets bound to IF, the uplink (moved with it)
    P+1  iif TUN goto NOP               what the stack writes back is never sent back in
    P+1  iif lo from ADDR goto NOP      (IPv4, one per address of an interface with strict
                                        rp_filter) the reverse-path check of a reply to
                                        ztun's own sockets looks its source up with iif lo,
                                        mark 0 and our address as source: it must resolve
                                        through the uplink, not ztun's table, or the reply
                                        is dropped
    P+2  lookup T                       the routes given (route mode)
    P+2  lookup T suppress_prefixlength 0   the same, without T's default (auto-route)
    P+2  to ROUTE lookup T              (auto-route with fail_closed) the same, one rule per
                                        given route: a lookup that found T's unreachable
                                        default fails before suppress_prefixlength is
                                        looked at, so after a crash the rule above would
                                        refuse everything, the LAN included
    P+2  ipproto udp|tcp dport 53 lookup T   (auto-route, hijack_dns) DNS to any server,
                                        one on a directly connected subnet too, goes into
                                        the TUN, where ztun answers it
  auto-route only:
    P+3  lookup main suppress_prefixlength 0   main's specific routes win: the LAN, the
                                        uplink's subnets, the TUN's own prefix, and any
                                        route via a gateway (bypassing(): logged, status)
    P+3  to PREFIX lookup main          (strict_route, instead) only main's directly
                                        connected prefixes (no gateway) and the TUN's own
                                        win; a route via a gateway in main goes into the TUN
    P+4  iif lo from PREFIX lookup T    local sockets bound to the TUN's address
    P+5  iif lo from 0.0.0.0 lookup T   (IPv4) local sockets with no source address yet
    P+6  iif lo goto NOP                (IPv4) local sockets bound to another address:
                                        replies of services reached over the uplink, and
                                        rp_filter's reverse lookups, use the main table
    P+6  iif lo from ::/1, 8000::/1 goto NOP   (IPv6) the same; these only match a known
                                        source, so unbound IPv6 sockets go on to P+7
    P+7  lookup T                       the rest: unbound local IPv6 sockets, and traffic
                                        forwarded from other hosts
    P+9  nop                            where the gotos land; then main and default

Loopback never reaches these rules (the local table's rule 0 comes first). With
strict-route, a family with no address on the TUN gets `P+0 fwmark M goto NOP`,
`P+1 unreachable` and the nop, so it fails instead of leaking around the TUN. strict_route
reads main's connected prefixes once, at start: a subnet that appears later goes into the TUN.
"""

import errno
import ipaddress
from dataclasses import dataclass

from ..errors import RouteError

MAIN_TABLE = 254
FAMILIES = (4, 6)
# The metric of the unreachable twins: above the TUN routes' (0 for IPv4, 1024 for IPv6, the
# kernel's default for a route given none), so they only answer once those are gone.
FAIL_CLOSED_METRIC = 0xFFFF
DNS_PORT = 53
IPPROTO_NAMES = {6: "tcp", 17: "udp"}


@dataclass(frozen=True, kw_only=True)
class RouteSpec:
    """What to route into the TUN interface iface, in plain values (strings are parsed).

    inet4/inet6: the TUN's own address with its prefix (None: that family stays off the
    TUN). routes: the prefixes sent into it; exclude_routes are cut out of them (or out of
    everything, with auto_route). strict_route: a family without an address on the TUN is
    made unreachable, and under auto_route only main's directly connected prefixes bypass
    the TUN. fail_closed: what is routed into the TUN stays unreachable after a crash (an
    unreachable twin of each route). hijack_dns: under auto_route, DNS (port 53) to any
    address goes into the TUN. main_routes: the main table's routes (Route, as
    Router.main_routes() reads them), for strict_route and bypassing(). table, rule_priority
    and fwmark: ztun's routing table, the first of its ten rule priorities, and the mark of
    its own sockets (Linux policy routing); outbound_interface: the interface its own sockets
    are bound to instead (the resolved name, not "auto"), which P+0 then matches. uplinks:
    the default routes (Route to 0.0.0.0/0 or ::/0 via a gateway out of an interface) that a
    router without policy routing sends excluded prefixes by.
    """

    iface: str
    inet4: ipaddress.IPv4Interface | None = None
    inet6: ipaddress.IPv6Interface | None = None
    routes: tuple = ()
    exclude_routes: tuple = ()
    auto_route: bool = False
    strict_route: bool = False
    fail_closed: bool = False
    hijack_dns: bool = False
    main_routes: tuple = ()
    table: int
    rule_priority: int
    fwmark: int
    outbound_interface: str | None = None
    uplinks: tuple = ()

    def __post_init__(self):
        for field in ("inet4", "inet6"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, ipaddress.ip_interface(value))
        for field in ("routes", "exclude_routes"):
            object.__setattr__(self, field, tuple(ipaddress.ip_network(n) for n in getattr(self, field)))

    def prefix(self, family: int):
        """The TUN's own address and prefix of family 4 or 6, or None."""
        return self.inet4 if family == 4 else self.inet6


@dataclass(frozen=True)
class Route:
    """One route: to cidr out of iface (and/or via gateway) in table; kind unicast, throw or unreachable.

    metric: its priority (None: the kernel's default, 0 for IPv4 and 1024 for IPv6).
    """

    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    iface: str | None = None
    table: int = MAIN_TABLE
    kind: str = "unicast"
    gateway: object = None
    metric: int | None = None

    @classmethod
    def of(cls, cidr, gateway=None, iface: str | None = None, *, table: int | None = None, kind: str = "unicast") -> "Route":
        """The Route that Router.add_route's arguments describe: strings parsed, table None is the main table."""
        return cls(ipaddress.ip_network(cidr), iface, MAIN_TABLE if table is None else table, kind,
                   None if gateway is None else ipaddress.ip_address(gateway))

    @property
    def family(self) -> int:
        return self.cidr.version

    @property
    def connected(self) -> bool:
        """Whether this is a directly connected prefix: unicast out of a device with no gateway (IPv4 scope link)."""
        return self.kind == "unicast" and self.gateway is None and self.iface is not None

    def __str__(self):
        head = "" if self.kind == "unicast" else f"{self.kind} "
        via = f" via {self.gateway}" if self.gateway is not None else ""
        dev = f" dev {self.iface}" if self.iface else ""
        table = "" if self.table == MAIN_TABLE else f" table {self.table}"  # as `ip route` shows main
        metric = "" if self.metric is None else f" metric {self.metric}"
        return f"{head}{self.cidr}{via}{dev}{table}{metric}"


@dataclass(frozen=True)
class Rule:
    """One policy rule. action: lookup (table), goto (target priority), nop or unreachable.

    Selectors: iif, oif (a socket bound to that interface), src, dst (`to`), fwmark/fwmask, ipproto with
    dport (one port).
    """

    family: int
    priority: int
    action: str
    table: int | None = None
    goto: int | None = None
    iif: str | None = None
    src: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    fwmark: int | None = None
    fwmask: int | None = None
    suppress_prefixlength: int | None = None
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ipproto: int | None = None
    dport: int | None = None
    oif: str | None = None

    def __str__(self):
        parts = [f"{self.priority}:", f"from {self.src}" if self.src is not None else "from all"]
        if self.dst is not None:
            parts.append(f"to {self.dst}")
        if self.ipproto is not None:
            parts.append(f"ipproto {IPPROTO_NAMES.get(self.ipproto, self.ipproto)}")
        if self.dport is not None:
            parts.append(f"dport {self.dport}")
        if self.fwmark is not None:
            parts.append(f"fwmark {self.fwmark:#x}" + (f"/{self.fwmask:#x}" if self.fwmask not in (None, 0xFFFFFFFF) else ""))
        if self.iif:
            parts.append(f"iif {self.iif}")
        if self.oif:
            parts.append(f"oif {self.oif}")
        if self.action == "lookup":
            parts.append(f"lookup {'main' if self.table == MAIN_TABLE else self.table}")
        elif self.action == "goto":
            parts.append(f"goto {self.goto}")
        else:
            parts.append(self.action)
        if self.suppress_prefixlength is not None:
            parts.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        return f"{'ip' if self.family == 4 else 'ip -6'} rule " + " ".join(parts)


@dataclass(frozen=True)
class RoutePlan:
    routes: tuple
    rules: tuple


def _net(text: str):
    return ipaddress.ip_network(text)


def plan(spec: RouteSpec, rp_sources=(), *, policy_routing: bool = True) -> RoutePlan:
    """The routes and rules that route spec into the TUN, for a router with or without policy routing.

    rp_sources: IPv4 addresses of interfaces with strict rp_filter (see the module docstring).
    Without policy routing: main-table routes only (_main_table_plan).
    """
    if not policy_routing:
        return _main_table_plan(spec)
    iface = spec.iface
    T, P = spec.table, spec.rule_priority
    nop = P + 9
    routes, rules = [], []
    for fam in FAMILIES:
        prefix = spec.prefix(fam)
        given = [r for r in spec.routes if r.version == fam]
        routed = prefix is not None and (given or spec.auto_route)
        if routed:
            into = list(given)
            if spec.auto_route:
                into.append(_net("0.0.0.0/0" if fam == 4 else "::/0"))
            routes += [Route(net, iface, T) for net in into]
            if spec.fail_closed:
                routes += [Route(net, None, T, "unreachable", metric=FAIL_CLOSED_METRIC) for net in into]
            routes += [Route(net, None, T, "throw") for net in spec.exclude_routes if net.version == fam]
            rules += [
                own_sockets(spec, fam),
                Rule(fam, P + 1, "goto", goto=nop, iif=iface),
            ]
            if not spec.auto_route:
                rules.append(Rule(fam, P + 2, "lookup", table=T))
            elif spec.fail_closed:
                rules += [Rule(fam, P + 2, "lookup", table=T, dst=net) for net in given if net.prefixlen]
            else:
                rules.append(Rule(fam, P + 2, "lookup", table=T, suppress_prefixlength=0))
            rules += [Rule(fam, P + 1, "goto", goto=nop, iif="lo", src=ipaddress.ip_network(a))
                      for a in rp_sources if ipaddress.ip_address(a).version == fam]
            if spec.auto_route:
                if spec.hijack_dns:
                    rules += [Rule(fam, P + 2, "lookup", table=T, ipproto=proto, dport=DNS_PORT) for proto in (17, 6)]
                if spec.strict_route:
                    rules += [Rule(fam, P + 3, "lookup", table=MAIN_TABLE, dst=net) for net in _connected(spec, fam)]
                else:
                    rules.append(Rule(fam, P + 3, "lookup", table=MAIN_TABLE, suppress_prefixlength=0))
                rules.append(Rule(fam, P + 4, "lookup", table=T, iif="lo", src=prefix.network))
                if fam == 4:
                    rules += [
                        Rule(fam, P + 5, "lookup", table=T, iif="lo", src=_net("0.0.0.0/32")),
                        Rule(fam, P + 6, "goto", goto=nop, iif="lo"),
                    ]
                else:
                    rules += [
                        Rule(fam, P + 6, "goto", goto=nop, iif="lo", src=_net("::/1")),
                        Rule(fam, P + 6, "goto", goto=nop, iif="lo", src=_net("8000::/1")),
                    ]
                rules.append(Rule(fam, P + 7, "lookup", table=T))
            rules.append(Rule(fam, nop, "nop"))
        elif prefix is None and spec.strict_route:
            rules += [
                own_sockets(spec, fam),
                Rule(fam, P + 1, "unreachable"),
                Rule(fam, nop, "nop"),
            ]
    # The nop targets go in first, so no goto is ever left pointing nowhere.
    rules.sort(key=lambda r: r.action != "nop")
    return RoutePlan(tuple(routes), tuple(rules))


def own_sockets(spec: RouteSpec, fam: int, interface: str | None = None) -> Rule:
    """P+0, the rule that lets ztun's own sockets skip every ztun rule: by their fwmark, or (with
    outbound_interface) by the interface they are bound to (interface, when it moved, else the spec's)."""
    nop = spec.rule_priority + 9
    oif = interface or spec.outbound_interface
    if oif:
        return Rule(fam, spec.rule_priority, "goto", goto=nop, oif=oif)
    return Rule(fam, spec.rule_priority, "goto", goto=nop, fwmark=spec.fwmark, fwmask=0xFFFFFFFF)


def _connected(spec: RouteSpec, fam: int) -> list:
    """The prefixes strict_route lets main route: its directly connected ones of family fam, and the TUN's own."""
    nets = [r.cidr for r in spec.main_routes if r.family == fam and r.connected and r.cidr.prefixlen and r.iface != spec.iface]
    nets.append(spec.prefix(fam).network)
    return list(dict.fromkeys(nets))


def bypassing(spec: RouteSpec) -> tuple:
    """The main table's routes whose traffic auto-route leaves out of the TUN (main routes it), as Routes.

    Without auto_route: none (the given routes win over main). With it, every route of a
    family on the TUN more specific than a default route; with strict_route only the
    directly connected ones. Exclusions (spec.exclude_routes) bypass too and are not listed
    here. ztun's own sockets (fwmark) and loopback always bypass.
    """
    if not spec.auto_route:
        return ()
    out = []
    for r in spec.main_routes:
        if spec.prefix(r.family) is None or not r.cidr.prefixlen or r.iface == spec.iface:
            continue
        if spec.strict_route and not r.connected:
            continue
        if r not in out:
            out.append(r)
    return tuple(out)


def through_tun(spec: RouteSpec, *, policy_routing: bool = True) -> tuple:
    """With strict_route, the main table's specific routes via a gateway that now go into the TUN (for the log)."""
    if not (spec.auto_route and spec.strict_route):
        return ()
    if not policy_routing:
        return tuple(r for fam in FAMILIES if spec.prefix(fam) is not None for r in _overridden(spec, fam))
    return tuple(r for r in spec.main_routes
                 if spec.prefix(r.family) is not None and r.cidr.prefixlen and not r.connected and r.iface != spec.iface)


def _main_table_plan(spec: RouteSpec) -> RoutePlan:
    """Routes into the main table out of the TUN: the given prefixes, and the TUN's own prefix.

    The own prefix is for macOS: a utun is point-to-point, its address brings no prefix
    route, and the kernel's replies to the stack's "next" address B must go into the TUN
    (where the address did bring one, as on Windows, adding it again changes nothing).
    auto_route routes the two halves of the address space (0.0.0.0/1 and 128.0.0.0/1,
    ::/1 and 8000::/1) into the TUN: more specific than any default route, so they win
    without replacing it, and ztun's own sockets, bound to the uplink (IP_BOUND_IF,
    IP_UNICAST_IF), still take the uplink's. Each excluded prefix gets a route via its
    family's uplink (spec.uplinks; followed when the default route moves).

    fail_closed: each prefix P sent into the TUN goes in as its two halves instead, and P
    itself gets an unreachable route (macOS: a reject route to loopback; Windows: a route
    out of the loopback interface). The halves are more specific, so they win while the TUN
    lives; when it dies its routes go with it and P refuses what they carried. (The main
    tables of macOS and Windows cannot hold Linux's twin of the same prefix with a higher
    metric: macOS keys a route by prefix alone.) A full-length prefix has no halves: a
    RouteError says so.

    strict_route (with auto_route): every route of main (spec.main_routes) via a gateway,
    other than a default route, goes into the TUN as its two halves, which are more specific
    and win; directly connected prefixes, loopback and the exclusions still bypass. A host
    route via a gateway has no halves and keeps bypassing (main_kept() names them). A family
    without a TUN address gets unreachable routes for its two halves. hijack_dns needs policy
    rules and does nothing here.
    """
    routes = []
    for fam in FAMILIES:
        prefix = spec.prefix(fam)
        given = [r for r in spec.routes if r.version == fam]
        halves = [_net("0.0.0.0/1"), _net("128.0.0.0/1")] if fam == 4 else [_net("::/1"), _net("8000::/1")]
        if prefix is None:
            if spec.strict_route:
                routes += [Route(net, None, MAIN_TABLE, "unreachable", metric=FAIL_CLOSED_METRIC) for net in halves]
            continue
        if not (given or spec.auto_route):
            continue
        into = given + (halves if spec.auto_route else [])
        own = [prefix.network] if not any(prefix.network.subnet_of(net) for net in into) else []
        if spec.fail_closed:
            hosts = [str(net) for net in into if net.prefixlen == net.max_prefixlen]
            if hosts:
                raise RouteError(f"fail_closed cannot keep {', '.join(hosts)} closed on this platform: without policy "
                                 "routing ztun routes each prefix's two halves into the TUN under an unreachable route "
                                 "of the prefix, and a host route has no halves; route a shorter prefix or set "
                                 "fail_closed = false", errno.EINVAL)
            tun = [half for net in into for half in net.subnets(1)]
        else:
            tun = list(into)
        if spec.auto_route and spec.strict_route:
            tun += [half for r in _overridden(spec, fam) for half in r.cidr.subnets(1)]
        routes += [Route(net, spec.iface, MAIN_TABLE) for net in dict.fromkeys(tun + own)]
        if spec.fail_closed:
            routes += [Route(net, None, MAIN_TABLE, "unreachable", metric=FAIL_CLOSED_METRIC) for net in into]
        routes += excluded_routes(spec, fam)
    return RoutePlan(tuple(routes), ())


def _via_gateway(spec: RouteSpec, fam: int) -> list:
    """strict_route without policy routing: main's unicast routes of family fam via a gateway, but default
    routes, the TUN's, and those inside an excluded prefix (which bypasses)."""
    excluded = [net for net in spec.exclude_routes if net.version == fam]
    out = []
    for r in spec.main_routes:
        if (r.family != fam or r.kind != "unicast" or r.gateway is None or not r.cidr.prefixlen
                or r.iface == spec.iface or any(r.cidr.subnet_of(net) for net in excluded)):
            continue
        if r not in out:
            out.append(r)
    return out


def _overridden(spec: RouteSpec, fam: int) -> list:
    return [r for r in _via_gateway(spec, fam) if r.cidr.prefixlen < r.cidr.max_prefixlen]


def main_kept(spec: RouteSpec) -> tuple:
    """strict_route without policy routing: the host routes via a gateway in main, which have no halves to
    override them with and so keep bypassing the TUN (for the log)."""
    if not (spec.auto_route and spec.strict_route):
        return ()
    return tuple(r for fam in FAMILIES if spec.prefix(fam) is not None
                 for r in _via_gateway(spec, fam) if r.cidr.prefixlen == r.cidr.max_prefixlen)


def excluded_routes(spec: RouteSpec, fam: int, uplinks: tuple | None = None) -> list:
    """Without policy routing: a route for each excluded prefix of family fam via that family's uplink
    (uplinks, else spec.uplinks); RouteError if there is none to send it by."""
    nets = [net for net in spec.exclude_routes if net.version == fam]
    if not nets:
        return []
    up = next((u for u in (spec.uplinks if uplinks is None else uplinks) if u.family == fam), None)
    if up is None:
        raise RouteError(f"exclude_routes {', '.join(map(str, nets))}: no IPv{fam} default route to send "
                         f"{'it' if len(nets) == 1 else 'them'} by", errno.ENETUNREACH)
    return [Route(net, up.iface, MAIN_TABLE, gateway=up.gateway) for net in nets]
