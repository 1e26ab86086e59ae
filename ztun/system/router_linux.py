"""The Linux Router: links, addresses, routes and policy rules over netlink (ztun's own rtnl client, no shelling out).

Each change that was made (not one that found its target already in place) is pushed on
an undo log; close() replays it backwards, so ztun removes exactly what it added. Every
route and rule ztun adds carries ZTUN_PROTO, so a crashed run's are found whatever table
and priorities it used.
"""

import errno
import functools
import ipaddress
import logging
import os
import socket

from ..errors import RouteError
from .route_plan import MAIN_TABLE, Route, Rule
from .rtnl import (FR_ACT_GOTO, FR_ACT_NOP, FR_ACT_TO_TBL, FR_ACT_UNREACHABLE, IFA_F_NODAD, IFF_UP, RTN_THROW,
                   RTN_UNICAST, RTN_UNREACHABLE, Rtnl)
from .undo import UndoLog

log = logging.getLogger("ztun.router")

# The routing protocol number of ztun's routes (rtm_protocol) and rules (FRA_PROTOCOL): one
# that iproute2's rt_protos and FRR's rt_protos.d leave free. `ip` shows it as "proto 122".
ZTUN_PROTO = 122
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_ROUTE_TYPES = {"unicast": RTN_UNICAST, "unreachable": RTN_UNREACHABLE, "throw": RTN_THROW}
_KIND_NAMES = {1: "unicast", 6: "blackhole", 7: "unreachable", 8: "prohibit", 9: "throw"}
_RULE_ACTIONS = {"lookup": FR_ACT_TO_TBL, "goto": FR_ACT_GOTO, "nop": FR_ACT_NOP, "unreachable": FR_ACT_UNREACHABLE}
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL)
_FAMILY_NAMES = {socket.AF_INET: "ip", socket.AF_INET6: "ip -6"}


def _code(e: OSError) -> int:
    return e.errno if isinstance(e.errno, int) else errno.EIO


class LinuxRouter:
    """The Router of Linux, with policy routing, in the network namespace the process runs in."""

    policy_routing = True

    def __init__(self, rtnl: Rtnl | None = None):
        try:
            self._nl = rtnl or Rtnl()
        except OSError as e:
            raise RouteError("cannot open a netlink socket", e.errno) from None
        self._undo = UndoLog(log)

    # --- interfaces ----------------------------------------------------------------

    def get_interface_index(self, name: str) -> int:
        found = self._call(f"look up interface {name}", self._nl.link_index, name)
        if found is None:
            raise RouteError(f"no interface named {name}", errno.ENODEV)
        return found

    def tun_attached(self, name: str) -> bool:
        """Whether name is a TUN device some process holds open (the kernel turns its carrier on while a queue is attached)."""
        found = self._call(f"look up interface {name}", self._nl.link_index, name)
        if found is None:
            return False
        link = self._call(f"read link {name}", self._nl.get_link, found)
        info = link.get("IFLA_LINKINFO")
        return info is not None and info.get("IFLA_INFO_KIND") == "tun" and bool(link.get("IFLA_CARRIER"))

    def strict_rp_filter_sources(self, skip: str) -> tuple:
        """IPv4 addresses of the interfaces (but skip and lo) whose effective rp_filter is strict (1).

        The effective value is max(conf/all, conf/IFACE); 2 (loose) is fine for ztun.
        """
        out = []
        for msg in self._call("list addresses", self._nl.addresses, socket.AF_INET):
            name = msg.get("IFA_LABEL") or ""
            dev = name.split(":")[0]
            if not dev or dev in (skip, "lo"):
                continue
            if max(_rp_filter("all"), _rp_filter(dev)) == 1:
                out.append(ipaddress.ip_address(msg.get("IFA_ADDRESS")))
        return tuple(out)

    def set_link(self, iface: str, *, up: bool | None = None, mtu: int | None = None) -> None:
        idx = self.get_interface_index(iface)
        link = self._call(f"read link {iface}", self._nl.get_link, idx)
        was_up = bool(link["flags"] & IFF_UP)
        old_mtu = link.get("IFLA_MTU")
        if mtu is not None and mtu != old_mtu:
            self._call(f"set MTU {mtu} on {iface}", self._nl.set_link, idx, mtu=mtu)
            self._record(f"restore MTU {old_mtu} on {iface}", self._nl.set_link, idx, mtu=old_mtu)
            log.info("set MTU %d on %s", mtu, iface)
        if up is not None and up != was_up:
            state = "up" if up else "down"
            self._call(f"set {iface} {state}", self._nl.set_link, idx, up=up)
            self._record(f"set {iface} {'down' if up else 'up'}", self._nl.set_link, idx, up=not up)
            log.info("set %s %s", iface, state)

    def add_address(self, iface: str, cidr) -> bool:
        addr = ipaddress.ip_interface(cidr)
        idx = self.get_interface_index(iface)
        kw = dict(index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
        if addr.version == 6:
            kw["flags"] = IFA_F_NODAD  # a TUN has no neighbours to collide with; usable at once
        if not self._add(f"add address {addr} to {iface}", self._nl.addr, **kw):
            log.info("address %s already on %s; left as it is", addr, iface)
            return False
        self._record(f"delete address {addr} from {iface}", self._nl.addr, "del", index=idx, address=str(addr.ip),
                     prefixlen=addr.network.prefixlen)
        log.info("added address %s to %s", addr, iface)
        return True

    # --- routes --------------------------------------------------------------------

    def _route_kw(self, route: Route) -> dict:
        kw = dict(family=_AF[route.family], dst=str(route.cidr.network_address), dst_len=route.cidr.prefixlen,
                  table=route.table, type=_ROUTE_TYPES[route.kind], proto=ZTUN_PROTO)
        if route.iface:
            kw["oif"] = self.get_interface_index(route.iface)
        if route.gateway is not None:
            kw["gateway"] = str(route.gateway)
        if route.metric is not None:
            kw["priority"] = route.metric
        return kw

    def _route(self, cidr, gateway, iface, table, kind) -> Route:
        if kind not in _ROUTE_TYPES:
            raise RouteError(f"route kind must be one of {sorted(_ROUTE_TYPES)}, got {kind!r}")
        return Route.of(cidr, gateway, iface, table=table, kind=kind)

    def add_route(self, cidr, gateway=None, iface=None, *, table=None, kind="unicast") -> bool:
        return self.add(self._route(cidr, gateway, iface, table, kind))

    def delete_route(self, cidr, gateway=None, iface=None, *, table=None, kind="unicast") -> bool:
        return self.delete(self._route(cidr, gateway, iface, table, kind))

    def main_routes(self) -> tuple:
        """The main table's routes, IPv4 and IPv6, as route_plan.Route (a multipath route by its first hop)."""
        names = {link["index"]: link.get("IFLA_IFNAME") for link in self._call("list links", self._nl.links)}
        out = []
        for family in _AF.values():
            for msg in self._call("list routes", self._nl.routes, family):
                if _table(msg) != MAIN_TABLE:
                    continue
                hop = msg.get("RTA_MULTIPATH") or {}  # a multipath route: its first hop
                oif, gateway = hop.get("oif") or msg.get("RTA_OIF"), hop.get("RTA_GATEWAY") or msg.get("RTA_GATEWAY")
                dst = msg.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                kind = _KIND_NAMES.get(msg["type"], str(msg["type"]))
                out.append(Route.of(f"{dst}/{msg['dst_len']}", gateway, names.get(oif), kind=kind))
        return tuple(out)

    # --- rules ---------------------------------------------------------------------

    def _rule_kw(self, rule: Rule) -> dict:
        kw = dict(family=_AF[rule.family], priority=rule.priority, action=_RULE_ACTIONS[rule.action], protocol=ZTUN_PROTO)
        if rule.action == "lookup":
            kw["table"] = rule.table
        if rule.goto is not None:
            kw["goto"] = rule.goto
        if rule.iif:
            kw["iifname"] = rule.iif
        if rule.oif:
            kw["oifname"] = rule.oif
        if rule.src is not None:
            kw["src"] = str(rule.src.network_address)
            kw["src_len"] = rule.src.prefixlen
        if rule.fwmark is not None:
            kw["fwmark"] = rule.fwmark
            kw["fwmask"] = 0xFFFFFFFF if rule.fwmask is None else rule.fwmask
        if rule.suppress_prefixlength is not None:
            kw["suppress_prefixlen"] = rule.suppress_prefixlength
        if rule.dst is not None:
            kw["dst"], kw["dst_len"] = str(rule.dst.network_address), rule.dst.prefixlen
        if rule.ipproto is not None:
            kw["ip_proto"] = rule.ipproto
        if rule.dport is not None:
            kw["dport_range"] = (rule.dport, rule.dport)
        return kw

    def add_rule(self, rule: Rule) -> bool:
        return self.add(rule)

    def delete_rule(self, rule: Rule) -> bool:
        return self.delete(rule)

    # --- routes and rules alike ------------------------------------------------------

    def add(self, item: Route | Rule) -> bool:
        """Add a route or rule and record its removal; False if it was already there."""
        call, kw = self._target(item)
        if not self._add(f"add {item}", call, **kw):
            log.info("%s already exists; left as it is", item)
            return False
        self._record(f"delete {item}", call, "del", _key=item, **kw)
        log.info("added %s", item)
        return True

    def delete(self, item: Route | Rule) -> bool:
        """Delete the route or rule item describes, whoever added it (tagged or not); False if there was none."""
        call, kw = self._target(item)
        kw.pop("proto", None)
        kw.pop("protocol", None)
        try:
            call("del", **kw)
        except OSError as e:
            if _code(e) in _GONE:
                return False
            raise RouteError(f"delete {item}", _code(e)) from None
        self._undo.forget(item)
        return True

    def _target(self, item):
        if isinstance(item, Rule):
            return self._nl.rule, self._rule_kw(item)
        return self._nl.route, self._route_kw(item)

    # --- crash leftovers ---------------------------------------------------------------

    def remove_leftovers(self, table: int, priorities: range) -> int:
        """Delete every rule and route tagged ZTUN_PROTO, and (untagged, from older runs) every
        rule with a priority in priorities and every route in table; return how many.

        Rules belong to no device, so a crashed run leaves all of its rules; its routes out
        of a TUN it created went with the TUN, but its throw routes (no device) and routes
        on a persistent TUN it attached to stay in their table. What another ztun still
        running here uses (a tagged `iif TUN` rule whose TUN some other process holds open)
        is left alone; a TUN this process holds is the caller's own, so its rules are
        leftovers (a restart after a crash, with the same name).
        """
        rules = {fam: self._call("list rules", self._nl.rules, fam) for fam in _AF.values()}
        routes = {fam: self._call("list routes", self._nl.routes, fam) for fam in _AF.values()}
        live_priorities, live_tables = self._running(rules, routes)
        removed = 0
        for family in _AF.values():
            for msg in rules[family]:
                prio = msg.get("FRA_PRIORITY")
                ours = msg.get("FRA_PROTOCOL") == ZTUN_PROTO or (prio is not None and prio in priorities)
                if ours and prio not in live_priorities and self._remove_rule(family, msg):
                    removed += 1
            for msg in routes[family]:
                in_table = _table(msg)
                ours = msg["proto"] == ZTUN_PROTO or in_table == table
                if ours and in_table not in live_tables and self._remove_route(family, msg):
                    removed += 1
        if removed:
            log.warning("removed %d leftover rules and routes of an earlier run (tagged proto %d, or in table %d or "
                        "priorities %d..%d)", removed, ZTUN_PROTO, table, priorities.start, priorities.stop - 1)
        return removed

    def _running(self, rules: dict, routes: dict) -> tuple[set, set]:
        """The rule priorities and tables of the ztun runs whose TUN is still held open in this namespace.

        A run's rules span P..P+9 and include `P+1 iif TUN goto P+9` (route_plan), which
        names its TUN; its tables are those its rules look up and those its routes out of
        that TUN are in.
        """
        attached = dict.fromkeys(_tuns_held_here(), False)  # TUN name -> held open by another process

        def live(name) -> bool:
            if name not in attached:
                attached[name] = self.tun_attached(name)
            return attached[name]

        priorities, names = set(), set()
        for msgs in rules.values():
            for msg in msgs:
                iif, prio, goto = msg.get("FRA_IIFNAME"), msg.get("FRA_PRIORITY"), msg.get("FRA_GOTO")
                if (msg.get("FRA_PROTOCOL") == ZTUN_PROTO and iif not in (None, "lo") and prio and goto
                        and live(iif)):
                    priorities.update(range(prio - 1, goto + 1))
                    names.add(iif)
        tables = set()
        for msgs in rules.values():
            for msg in msgs:
                if msg.get("FRA_PROTOCOL") == ZTUN_PROTO and msg.get("FRA_PRIORITY") in priorities:
                    if msg.get("FRA_TABLE") not in (None, 0, MAIN_TABLE):
                        tables.add(msg.get("FRA_TABLE"))
        indexes = {self.get_interface_index(name) for name in names}
        for msgs in routes.values():
            tables.update(_table(msg) for msg in msgs if msg["proto"] == ZTUN_PROTO and msg.get("RTA_OIF") in indexes)
        return priorities, tables

    def _remove_rule(self, family, msg) -> bool:
        prio = msg.get("FRA_PRIORITY")
        kw = {"family": family, "priority": prio, "action": msg["action"]}
        for nla, key in (("FRA_TABLE", "table"), ("FRA_GOTO", "goto"), ("FRA_IIFNAME", "iifname"),
                         ("FRA_FWMARK", "fwmark"), ("FRA_FWMASK", "fwmask"), ("FRA_SRC", "src"),
                         ("FRA_SUPPRESS_PREFIXLEN", "suppress_prefixlen"), ("FRA_PROTOCOL", "protocol"),
                         ("FRA_DST", "dst"), ("FRA_IP_PROTO", "ip_proto"), ("FRA_DPORT_RANGE", "dport_range")):
            if msg.get(nla) is not None:
                kw[key] = msg.get(nla)
        if "src" in kw:
            kw["src_len"] = msg["src_len"]
        if "dst" in kw:
            kw["dst_len"] = msg["dst_len"]
        return self._delete_leftover(f"{_FAMILY_NAMES[family]} rule {prio}", self._nl.rule, **kw)

    def _remove_route(self, family, msg) -> bool:
        in_table = _table(msg)
        kw = {"family": family, "table": in_table, "type": msg["type"], "dst_len": msg["dst_len"], "proto": msg["proto"]}
        for nla, key in (("RTA_DST", "dst"), ("RTA_OIF", "oif"), ("RTA_GATEWAY", "gateway"), ("RTA_PRIORITY", "priority")):
            if msg.get(nla) is not None:
                kw[key] = msg.get(nla)
        dst = kw.get("dst", "0.0.0.0" if family == socket.AF_INET else "::")
        return self._delete_leftover(f"{_FAMILY_NAMES[family]} route {dst}/{msg['dst_len']} table {in_table}",
                                     self._nl.route, **kw)

    def _delete_leftover(self, what: str, call, **kw) -> bool:
        """Delete one leftover; False if it went meanwhile. what names it in plain words for the log and errors."""
        try:
            call("del", **kw)
        except OSError as e:
            if _code(e) in _GONE:
                return False
            if _code(e) == errno.EPERM:
                raise RouteError("remove ztun's leftover rules and routes (needs root or CAP_NET_ADMIN)", errno.EPERM) from None
            raise RouteError(f"remove leftover {what}", _code(e)) from None
        log.info("removed leftover %s", what)
        return True

    # --- plumbing --------------------------------------------------------------------

    def _call(self, what, call, *args, **kw):
        try:
            return call(*args, **kw)
        except OSError as e:
            raise RouteError(what, _code(e)) from None

    def _add(self, what, call, **kw) -> bool:
        try:
            call("add", **kw)
            return True
        except OSError as e:
            if _code(e) == errno.EEXIST:
                return False
            if _code(e) == errno.EPERM:
                raise RouteError(f"{what} (needs root or CAP_NET_ADMIN)", _code(e)) from None
            raise RouteError(what, _code(e)) from None

    def _record(self, what, call, *args, _key=None, **kw):
        self._undo.push(what, functools.partial(self._call, what, call, *args, **kw), key=_key)

    def close(self) -> None:
        """Undo every recorded change, newest first; what is already gone is fine. Idempotent."""
        if self._undo.close():
            self._nl.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _tuns_held_here() -> set:
    """The names of the TUN devices this process holds open (each /dev/net/tun fd's fdinfo says `iff: NAME`)."""
    names = set()
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return names
    for fd in fds:
        try:
            if os.readlink(f"/proc/self/fd/{fd}") != "/dev/net/tun":
                continue
            with open(f"/proc/self/fdinfo/{fd}") as f:
                names.update(line.split(None, 1)[1].strip() for line in f if line.startswith("iff:"))
        except (OSError, IndexError):
            continue  # closed meanwhile, or not attached yet
    return names


def _table(msg) -> int:
    """The table of a route message: RTA_TABLE, which holds tables above 255 (the header then says 252)."""
    return msg.get("RTA_TABLE") or msg["table"]


def _rp_filter(key: str) -> int:
    try:
        with open(f"/proc/sys/net/ipv4/conf/{key}/rp_filter") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0
