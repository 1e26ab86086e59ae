"""Stand-ins for the macOS routing socket and Windows iphlpapi that keep a route table, and a run that crashes.

FakeRouteKernel answers route_socket.RouteSocket.request() as XNU does for RTM_ADD and
RTM_DELETE (EEXIST, ESRCH), each message passing through encode/decode so only what the
wire carries counts. FakeIphlpapi keeps MIB_IPFORWARD_ROW2 rows keyed as
CreateIpForwardEntry2/DeleteIpForwardEntry2 match them (interface LUID, prefix, next hop).

`python route_fakes.py darwin|windows DIR` is a run that adds the routes of an auto-route,
fail-closed plan through a router journaling in DIR, then dies by SIGKILL (os._exit where
there is none) without undoing anything: a crash.
"""

import errno
import os
import signal
import socket
import sys

from ztun.errors import RouteError
from ztun.system import route_socket as rs
from ztun.system import winerror as we

TUN_INDEX = 9  # the crashed run's utun9, which no longer exists afterwards


class FakeRouteKernel:
    """The routing table behind a PF_ROUTE socket: (dst, netmask) -> the message that added it (or any true value)."""

    def __init__(self, table=None, refuse=None):
        self.table = dict(table or {})
        self.messages = []  # every request as decoded from its bytes
        self.refuse = refuse  # errno to answer every request with (EPERM: no privilege)
        self.closed = False

    @staticmethod
    def key(msg):
        return (str(msg.dst), str(msg.netmask) if msg.netmask is not None else None)

    def request(self, msg, what=""):
        msg = rs.decode(rs.encode(msg))
        self.messages.append(msg)
        if self.refuse:
            raise RouteError(what, self.refuse)
        key = self.key(msg)
        if msg.type == rs.RTM_ADD:
            if key in self.table:
                raise RouteError(what, errno.EEXIST)
            self.table[key] = msg
        elif msg.type == rs.RTM_DELETE:
            if self.table.pop(key, None) is None:
                raise RouteError(what, errno.ESRCH)
        reply = rs.decode(rs.encode(msg))
        reply.flags |= rs.RTF_DONE
        return reply

    def close(self):
        self.closed = True


class FakeIfconfig:
    """Interface MTU, flags and addresses in a dict, as darwin_ioctl.Ifconfig would set them."""

    def __init__(self):
        self.mtu, self.flags, self.addresses = {}, {}, set()

    def get_mtu(self, iface):
        return self.mtu.get(iface, 1500)

    def set_mtu(self, iface, mtu):
        self.mtu[iface] = mtu

    def get_flags(self, iface):
        return self.flags.get(iface, 0x8050)

    def set_flags(self, iface, flags):
        self.flags[iface] = flags

    def add_address(self, iface, addr):
        self.addresses.add((iface, addr))

    def delete_address(self, iface, addr):
        self.addresses.discard((iface, addr))

    def close(self):
        pass


class FakeIphlpapi:
    """Forward rows keyed by (LUID, prefix, next hop); aliases maps an interface name to its LUID."""

    def __init__(self, aliases, routes=None, refuse=0):
        from ztun.system import iphlpapi_types as t

        self.t = t
        self.aliases = dict(aliases)
        self.routes = dict(routes or {})
        self.calls = []
        self.refuse = refuse

    def alias_to_luid(self, name):
        from ztun.system import iphlpapi as ip

        if name not in self.aliases:
            raise ip.route_error(f"no interface {name!r}", we.ERROR_INVALID_PARAMETER)
        return self.aliases[name]

    def luid_to_index(self, luid):
        return 42

    def forward_row(self):
        row = self.t.MIB_IPFORWARD_ROW2()
        row.ValidLifetime = row.PreferredLifetime = self.t.INFINITE_LIFETIME
        return row

    @staticmethod
    def key(row):
        return (row.InterfaceLuid, str(row.DestinationPrefix.Prefix.get()), row.DestinationPrefix.PrefixLength,
                str(row.NextHop.get()))

    def create_route(self, row):
        self.calls.append(("create", self.key(row), row.Metric))
        if self.refuse:
            return self.refuse
        if self.key(row) in self.routes:
            return we.ERROR_OBJECT_ALREADY_EXISTS
        self.routes[self.key(row)] = row.Metric
        return 0

    def delete_route(self, row):
        self.calls.append(("delete", self.key(row), row.Metric))
        if self.refuse:
            return self.refuse
        return 0 if self.routes.pop(self.key(row), None) is not None else we.ERROR_NOT_FOUND


def crash_plan(iface):
    """The routes of auto-route with fail_closed, a proxy's address and an excluded prefix, per family."""
    from ztun.system.route_plan import Route, RouteSpec, plan

    spec = RouteSpec(iface=iface, inet4="198.18.0.1/30", inet6="fd00:18::1/126", auto_route=True, fail_closed=True,
                     exclude_routes=("198.19.7.7/32", "fd00:19::/64"), table=2022, rule_priority=9000, fwmark=1,
                     uplinks=(Route.of("0.0.0.0/0", "198.18.9.1", "en0"), Route.of("::/0", "fd00:9::1", "en0")))
    return plan(spec, policy_routing=False)


def darwin_router(kernel, journal):
    from ztun.system.router_darwin import DarwinRouter

    return DarwinRouter(route_socket=kernel, ifconfig=FakeIfconfig(), journal=journal)


WINDOWS_ALIASES = {"ztun0": 0x0123000000000001, "en0": 0x0006000000000002}


def crash(platform: str, directory: str) -> None:
    from ztun.system.route_journal import RouteJournal

    journal = RouteJournal("ztun0", directory)
    if platform == "darwin":
        real = socket.if_nametoindex
        socket.if_nametoindex = lambda name: TUN_INDEX if name == "utun9" else real(name)
        router = darwin_router(FakeRouteKernel(), journal)
        routes = crash_plan("utun9").routes
    else:
        from ztun.system.router_windows import WindowsRouter

        router = WindowsRouter(FakeIphlpapi(WINDOWS_ALIASES), journal=journal)
        routes = crash_plan("ztun0").routes
    for route in routes:
        assert router.add(route)
    sys.stdout.write(f"added {len(routes)}\n")
    sys.stdout.flush()
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)


if __name__ == "__main__":
    crash(sys.argv[1], sys.argv[2])
