"""From an AppConfig to running parts: the outbounds, the rules, the DNS service and the Forwarder.

Also what the configuration implies for the TUN's routes: a SOCKS5 proxy's own address (the
one its outbound resolved and connects to) is always excluded from them (its connections are marked or bound anyway; the exclusion keeps
unmarked traffic to it, e.g. from other programs, off the TUN too), and with fake-IP DNS the
fake pools are routed into the TUN so connections to fake addresses reach ztun.
"""

import collections
import dataclasses
import ipaddress
import logging
import sys
import time

from .. import __version__, _fast
from ..errors import ConfigError
from ..net import split_host_port
from ..outbound.block import BlockOutbound
from ..outbound.direct import DirectOutbound
from ..outbound.relay import engine_stats
from ..system.sockopt import Egress
from .forwarder import BLOCK, LIMIT_DROPS, Forwarder
from .limits import DescriptorBudget, raise_nofile_limit
from .rules import Rules
from .status import split_stats

log = logging.getLogger("ztun.appliance")


def tun_options(config, outbounds: dict):
    """config.tun with the routes the outbounds (each proxy's address, as it connects to it) and DNS imply."""
    tun = config.tun
    routes = list(tun.routes)
    if config.dns.mode == "fake-ip" and not tun.auto_route:
        for pool in (config.dns.fake_ip4, config.dns.fake_ip6):
            if pool and getattr(tun, f"inet{ipaddress.ip_network(pool).version}") is not None:
                net = ipaddress.ip_network(pool)
                if net not in routes:
                    routes.append(net)
    excludes = list(tun.exclude_routes)
    # Nothing routed into the TUN: no proxy address to keep out of it (the configuration says so of a
    # socks5 outbound it defines; an exclusion alone would fail TunOptions' check about exclude_routes).
    for ob in outbounds.values() if routes or tun.auto_route else ():
        if ob.proxy_address is None or ipaddress.ip_address(ob.proxy_address[0]).is_loopback:
            continue  # a proxy on loopback is never routed anywhere else (and a main-table router must not try)
        net = ipaddress.ip_network(ob.proxy_address[0])
        if net not in excludes:
            excludes.append(net)
    # With ztun answering DNS, queries to a resolver on a directly connected subnet (which auto-route
    # leaves to the main table) go into the TUN too: no DNS leaves the host around ztun.
    hijack_dns = tun.auto_route and config.dns.mode != "off"
    if excludes == list(tun.exclude_routes) and routes == list(tun.routes) and hijack_dns == tun.hijack_dns:
        return tun
    return dataclasses.replace(tun, exclude_routes=tuple(excludes), routes=tuple(routes), hijack_dns=hijack_dns)


def egress_for(tun, platform: str = sys.platform) -> Egress:
    """How ztun's own sockets stay out of the TUN: bound to an interface with tun.outbound_interface
    (and always off Linux, where there is no fwmark), else marked with tun.fwmark."""
    binding = tun.outbound_interface is not None or not platform.startswith("linux")
    return Egress(tun.fwmark, binding=binding, platform=platform)


def build_outbounds(loop, config, resolved: dict | None = None, egress: Egress | None = None) -> dict:
    """name -> Outbound (ztun.outbound.protocol): the built-in direct and block, and those config defines.

    resolved: (proxy host, port) -> its address as the running outbounds found it, so that a
    reload (on the loop, with the TUN's routes in place) looks up only the proxy names that changed.
    egress: the running outbounds' (a reload keeps it: the gateway's monitor moves it), else one for config.
    """
    egress = egress if egress is not None else egress_for(config.tun)
    resolved = resolved or {}
    timeout = config.flows.connect_timeout
    outbounds = {"direct": DirectOutbound(loop, egress=egress, connect_timeout=timeout, name="direct"),
                 BLOCK: BlockOutbound(loop, name=BLOCK)}
    for ob in config.outbounds:
        if ob.type == BLOCK:
            outbounds[ob.name] = BlockOutbound(loop, name=ob.name)
        elif ob.type == "direct":
            outbounds[ob.name] = DirectOutbound(loop, egress=egress, connect_timeout=timeout, name=ob.name)
        elif ob.type == "socks5":
            from ..outbound.socks5 import Socks5Outbound

            try:
                outbounds[ob.name] = Socks5Outbound(loop, ob.host, ob.port, username=ob.username, password=ob.password,
                                                    egress=egress, connect_timeout=timeout, name=ob.name,
                                                    address=resolved.get((ob.host, ob.port)))
            except ValueError as e:  # e.g. a proxy name that does not resolve
                raise ConfigError(f"outbounds.{ob.name}: {e}") from None
        else:
            raise ConfigError(f"outbounds.{ob.name}: unknown type {ob.type!r}")
    return outbounds


def build_dns(loop, config, outbounds: dict, rules: Rules):
    """The DNS service for dns.mode fake-ip / forward, or None when DNS is ordinary UDP."""
    dc = config.dns
    if dc.mode == "off":
        return None
    from ..dns.fakeip import FakeIpPool
    from ..dns.service import DnsService

    name = dns_outbound(config, outbounds, rules)
    pool = None
    if dc.mode == "fake-ip":
        pool = FakeIpPool(dc.fake_ip4 if config.tun.inet4 is not None else None,
                          dc.fake_ip6 if config.tun.inet6 is not None else None, capacity=dc.capacity)
    upstream = _endpoint(dc.upstream) if dc.upstream else None
    return DnsService(loop, dc.mode, pool, ttl=dc.ttl, upstream=upstream, open_udp=outbounds[name].open_udp,
                      timeout=config.flows.connect_timeout)


def dns_outbound(config, outbounds: dict, rules: Rules) -> str:
    """The name of the outbound DNS queries go through: dns.outbound, else the default route."""
    name = config.dns.outbound or rules.default
    if name not in outbounds or outbounds[name].blocks:
        raise ConfigError(f"dns.outbound: {name!r} cannot carry DNS queries (use a direct or socks5 outbound)")
    return name


def _endpoint(text) -> tuple:
    return text if isinstance(text, tuple) else split_host_port(text)


def build_handler(loop, config) -> Forwarder:
    """The Forwarder for config: outbounds, rules and DNS, ready to attach to the gateway."""
    outbounds = build_outbounds(loop, config)
    rules = Rules(config.route)
    dns = build_dns(loop, config, outbounds, rules)
    fc = config.flows
    return Forwarder(loop, outbounds, rules, dns=dns, tcp_idle_timeout=fc.tcp_idle_timeout,
                     max_pending=fc.max_pending_connects, max_pending_per_client=fc.max_pending_per_client,
                     descriptors=descriptor_budget())


def descriptor_budget() -> DescriptorBudget | None:
    """The soft descriptor limit raised to the hard one, and the flows' budget within it (None: no limit known)."""
    limit = raise_nofile_limit()
    if not limit:
        return None
    budget = DescriptorBudget(limit)
    log.info("descriptors: limit %d, %d of them for flows (new flows are refused beyond)", limit, budget.budget)
    return budget


def reload(forwarder: Forwarder, loop, old, new) -> list:
    """Apply new's outbounds and rules to the running forwarder (open flows keep theirs).

    Returns the warnings for the changes a reload cannot apply (the TUN, its routes, DNS mode):
    those need a restart.
    """
    warnings = []
    if new.tun != old.tun:
        warnings.append("[tun] changed: restart to apply it")
    if dataclasses.replace(new.dns, outbound=None) != dataclasses.replace(old.dns, outbound=None):
        warnings.append("[dns] changed: restart to apply it (dns.outbound is applied now)")
    if new.flows != old.flows:
        warnings.append("[flows] changed: restart to apply it")
    known = {(o.host, o.proxy_address[1]): o.proxy_address[0]
             for o in forwarder.outbounds.values() if o.proxy_address is not None}
    running = forwarder.outbounds.get("direct")
    outbounds = build_outbounds(loop, new, known, getattr(running, "egress", None))
    for name, ob in outbounds.items():  # counters go on across a reload (Prometheus sees no reset)
        previous = forwarder.outbounds.get(name)
        if previous is not None and type(previous) is type(ob):
            for key, value in previous.counters.items():
                ob.counters[key] = ob.counters.get(key, 0) + value
            if getattr(ob, "health", None):  # probed again at once: a change from this state is logged, no repeat
                ob.health.update(previous.health)
    rules = Rules(new.route)
    dns_name = dns_outbound(new, outbounds, rules) if forwarder.dns is not None else None
    forwarder.configure(outbounds, rules)
    if dns_name is not None:  # queries from now on through the reloaded outbound, not the one replaced
        forwarder.dns.set_open_udp(outbounds[dns_name].open_udp)
    return warnings


class Snapshot:
    """What `ztun-appliance status` and the metrics endpoint show: called on the loop only."""

    def __init__(self, gateway, forwarder):
        self.gateway, self.forwarder = gateway, forwarder
        self.started = time.monotonic()

    def __call__(self, include_flows: bool = True) -> dict:
        gw, fwd = self.gateway, self.forwarder
        stack = gw.stack
        counters, gauges, drops = split_stats(stack.stats()) if stack is not None else ({}, {}, {})
        drops.update(fwd.limit_drops())  # flows refused by a limit, before anything was opened for them
        gauges.update(fwd.gauges())
        counters.update({f"flows_{k}": v for k, v in fwd.counters.items() if k not in LIMIT_DROPS})
        counters["bytes_up"], counters["bytes_down"] = fwd.bytes_total()
        if fwd.dns is not None:
            counters.update({f"dns_{k}": v for k, v in fwd.dns.counters.items()})
        relay_counters, relay_gauges = engine_stats(fwd.loop)
        counters.update(relay_counters)
        gauges.update(relay_gauges)
        if gw.napi is not None:
            counters["napi_switches"] = gw.napi.switches
            gauges["napi_threaded"] = int(gw.napi.threaded)
        states = collections.Counter(f.state for f in list(fwd.flows.open))
        device = gw.device
        snap = {
            "version": __version__,
            "implementation": _fast.IMPLEMENTATION,
            "uptime_s": round(time.monotonic() - self.started, 3),
            "device": {"name": device.name if device else None, "mtu": gw.options.mtu,
                       "addresses": [str(a) for a in gw.options.addresses]},
            "counters": counters,
            "gauges": {**gauges, "flows": len(fwd.flows)},
            "drops": drops,
            "flows_by_state": dict(states),
            "outbounds": fwd.outbound_counters(),
            # name -> {state: unknown|ok|failing, error, checked (unix time)} of each outbound that is probed
            "health": {name: dict(o.health) for name, o in fwd.outbounds.items() if getattr(o, "health", None)},
            "routing": gw.routing(),
        }
        if include_flows:
            snap["flows"] = fwd.snapshot_flows()
        return snap
