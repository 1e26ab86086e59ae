"""The prefixes routed into the TUN on macOS and Windows, which have no policy rules (no system calls).

Auto-route covers everything with routes more specific than the default route, so the
default stays in place for what is cut out: the excluded prefixes and the proxy's own
address (on these systems ztun's outgoing sockets carry no fwmark to steer them).
  macOS (sing-tun's choice): 1/8, 2/7, 4/6, 8/5, 16/4, 32/3, 64/2, 128/1 and the IPv6
  equivalents 100::/8 .. 8000::/1; 0.0.0.0/8 and ::/8 stay out, so lookups of the
  unspecified address (the system's "route get default") still find the real default.
  Windows: the halves 0.0.0.0/1 + 128.0.0.0/1 and ::/1 + 8000::/1.
On macOS the TUN's own prefix is routed too: utun is point-to-point and its addresses
bring no prefix route, and the stack's "next" address B must lead into the TUN.
"""

import ipaddress

DARWIN_V4 = tuple(ipaddress.ip_network(f"{1 << k}.0.0.0/{8 - k}") for k in range(8))
DARWIN_V6 = tuple(ipaddress.ip_network(f"{1 << k:x}00::/{8 - k}") for k in range(8))
HALVES_V4 = (ipaddress.ip_network("0.0.0.0/1"), ipaddress.ip_network("128.0.0.0/1"))
HALVES_V6 = (ipaddress.ip_network("::/1"), ipaddress.ip_network("8000::/1"))


def subtract(prefixes, excludes) -> list:
    """The fewest prefixes covering `prefixes` minus `excludes`, sorted (IPv4 first)."""
    out = []
    for version in (4, 6):
        nets = ipaddress.collapse_addresses(p for p in prefixes if p.version == version)
        cuts = [e for e in excludes if e.version == version]
        for cut in cuts:
            nxt = []
            for net in nets:
                if cut.subnet_of(net):
                    nxt.extend(net.address_exclude(cut))
                elif not net.subnet_of(cut):
                    nxt.append(net)
            nets = nxt
        out.extend(sorted(ipaddress.collapse_addresses(nets)))
    return out


def route_ranges(options, platform: str, exclude=()) -> list:
    """The prefixes to route into the TUN for options (a route_plan.RouteSpec) on platform ("darwin" or "win32").

    exclude adds prefixes or addresses (the proxy's) to options.exclude_routes.
    """
    extra = [ipaddress.ip_network(x) for x in exclude]
    include = []
    for version in (4, 6):
        prefix = getattr(options, f"inet{version}")
        if prefix is None:
            continue
        given = [r for r in options.routes if r.version == version]
        if given:
            include += given
        elif options.auto_route:
            if platform == "darwin":
                include += DARWIN_V4 if version == 4 else DARWIN_V6
            else:
                include += HALVES_V4 if version == 4 else HALVES_V6
        if platform == "darwin" and (given or options.auto_route) and prefix.network.prefixlen < prefix.max_prefixlen:
            include.append(prefix.network)
    return subtract(include, list(options.exclude_routes) + extra)
