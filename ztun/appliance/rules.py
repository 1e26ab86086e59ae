"""Rules: an ordered list, first match wins, each choosing an outbound by what is known of a new flow.

A rule matches when every matcher it has matches (destination CIDR, destination port or range,
protocol, source CIDR, domain exact / suffix / keyword); a matcher with several values matches
when any of them does. Domain matchers need the flow's domain (known from fake-IP DNS): a flow
without one never matches a rule that has them. No rule matching: the default outbound.

Matching runs once per new flow, not per packet, but a rule may carry thousands of prefixes
(country lists): prefixes are merged into sorted integer ranges per family and searched by bisection.
"""

import bisect
import ipaddress
from dataclasses import dataclass

PROTOCOLS = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}


class PrefixSet:
    """A set of IPv4 and IPv6 prefixes with O(log n) membership."""

    __slots__ = ("_starts", "_ends")

    def __init__(self, networks=()):
        ranges = {4: [], 6: []}
        for net in networks:
            net = ipaddress.ip_network(net, strict=False)
            ranges[net.version].append((int(net.network_address), int(net.broadcast_address)))
        self._starts, self._ends = {}, {}
        for version, spans in ranges.items():
            merged: list = []
            for lo, hi in sorted(spans):
                if merged and lo <= merged[-1][1] + 1:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            self._starts[version] = [lo for lo, _ in merged]
            self._ends[version] = [hi for _, hi in merged]

    def __contains__(self, address) -> bool:
        address = ipaddress.ip_address(address) if isinstance(address, str) else address
        starts = self._starts[address.version]
        i = bisect.bisect_right(starts, int(address)) - 1
        return i >= 0 and int(address) <= self._ends[address.version][i]

    def __bool__(self) -> bool:
        return bool(self._starts[4] or self._starts[6])


@dataclass(frozen=True, slots=True)
class Rule:
    outbound: str
    cidr: PrefixSet | None = None
    source: PrefixSet | None = None
    ports: tuple = ()  # ((lo, hi), ...)
    protocols: frozenset = frozenset()
    domains: frozenset = frozenset()
    suffixes: tuple = ()  # each without a leading dot
    keywords: tuple = ()

    @classmethod
    def from_config(cls, rc) -> "Rule":
        return cls(
            outbound=rc.outbound,
            cidr=PrefixSet(rc.cidr) if rc.cidr else None,
            source=PrefixSet(rc.source) if rc.source else None,
            ports=tuple((int(lo), int(hi)) for lo, hi in rc.port),
            protocols=frozenset(rc.protocol),
            domains=frozenset(_domain(x) for x in rc.domain),
            suffixes=tuple(_domain(x).lstrip(".") for x in rc.domain_suffix),
            keywords=tuple(x.lower() for x in rc.domain_keyword),
        )

    def matches(self, proto: str, source, destination, domain: str | None) -> bool:
        if self.protocols and proto not in self.protocols:
            return False
        if self.ports and not any(lo <= destination[1] <= hi for lo, hi in self.ports):
            return False
        if self.cidr is not None and destination[0] not in self.cidr:
            return False
        if self.source is not None and source[0] not in self.source:
            return False
        if self.domains or self.suffixes or self.keywords:
            if domain is None:
                return False
            if not (domain in self.domains
                    or any(domain == s or domain.endswith("." + s) for s in self.suffixes)
                    or any(k in domain for k in self.keywords)):
                return False
        return True


class Rules:
    """The route configuration made matchable: match() -> the name of the outbound for a new flow."""

    def __init__(self, route_config):
        self.rules = tuple(Rule.from_config(rc) for rc in route_config.rules)
        self.default = route_config.default
        # (type, payload) of each rule in the Clash API's words, and of the default last: made once,
        # so a flow keeps the one that chose its outbound at no cost (Flow.rule)
        self.described = tuple(describe_rule(rc) for rc in route_config.rules) + (("Match", ""),)

    def match(self, proto, source: tuple, destination: tuple, domain: str | None = None) -> str:
        """The outbound for a flow: proto is "tcp"/"udp"/"icmp" or the IP protocol number.

        source and destination are (address, port) with the address as text or an ipaddress object.
        """
        index = self.match_index(proto, source, destination, domain)
        return self.rules[index].outbound if index < len(self.rules) else self.default

    def match_index(self, proto, source: tuple, destination: tuple, domain: str | None = None) -> int:
        """The index of the first rule that matches (len(rules): none did, the default applies)."""
        if not self.rules:
            return 0
        proto = PROTOCOLS.get(proto, proto)
        src = (_ip(source[0]), source[1])
        dst = (_ip(destination[0]), destination[1])
        domain = _domain(domain) if domain else None
        for i, rule in enumerate(self.rules):
            if rule.matches(proto, src, dst, domain):
                return i
        return len(self.rules)

    def may_choose(self, proto: str, outbound: str) -> bool:
        """Whether some flow of proto could be sent to outbound (e.g. may an ICMP echo be blocked?)."""
        return self.default == outbound or any(
            r.outbound == outbound and (not r.protocols or proto in r.protocols) for r in self.rules)

    def outbounds(self) -> set:
        """Every outbound name the rules can choose."""
        return {r.outbound for r in self.rules} | {self.default}


# A matcher's Clash rule type (mihomo's names), in the order the payload lists them
_CLASH_TYPES = (("domain", "Domain"), ("domain_suffix", "DomainSuffix"), ("domain_keyword", "DomainKeyword"),
                ("cidr", "IPCIDR"), ("source", "SrcIPCIDR"), ("port", "DstPort"), ("protocol", "Network"))
PAYLOAD_ITEMS = 4  # values of one matcher shown before "+N more" (a country list has thousands)


def describe_rule(rc) -> tuple:
    """(type, payload) of a RuleConfig as the Clash API shows a rule: one matcher is its own type;
    several are "AND" with the payload "((Type,values) && (Type,values))", as mihomo shows them."""
    parts = []
    for key, kind in _CLASH_TYPES:
        values = getattr(rc, key)
        if not values:
            continue
        if key == "port":
            values = [str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in values]
        elif key == "protocol":
            values = sorted(values)
        values = [str(v) for v in values]
        text = "/".join(values[:PAYLOAD_ITEMS]) + (f" +{len(values) - PAYLOAD_ITEMS} more" if len(values) > PAYLOAD_ITEMS else "")
        parts.append((kind, text))
    if len(parts) == 1:
        return parts[0]
    return "AND", "(" + " && ".join(f"({kind},{text})" for kind, text in parts) + ")"


def _ip(address):
    return ipaddress.ip_address(address) if isinstance(address, str) else address


def _domain(name: str) -> str:
    return name.lower().rstrip(".")
