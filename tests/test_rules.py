"""Rules: first match wins; every matcher of a rule must match; any value of a matcher may."""

import ipaddress
import random
from types import SimpleNamespace

import pytest

from ztun.appliance.rules import PrefixSet, Rules


def rule(outbound, **kw):
    fields = dict(cidr=(), port=(), protocol=frozenset(), source=(), domain=(), domain_suffix=(), domain_keyword=())
    fields.update(kw)
    return SimpleNamespace(outbound=outbound, **fields)


def rules(*rs, default="direct"):
    return Rules(SimpleNamespace(rules=rs, default=default))


C = ("198.18.0.2", 40000)


def test_no_rules_means_the_default():
    assert rules(default="proxy").match("tcp", C, ("198.19.0.1", 80)) == "proxy"


def test_first_match_wins():
    r = rules(rule("block", port=((80, 80),)), rule("direct", cidr=("198.19.0.0/16",)), default="proxy")
    assert r.match("tcp", C, ("198.19.0.1", 80)) == "block"
    assert r.match("tcp", C, ("198.19.0.1", 443)) == "direct"
    assert r.match("tcp", C, ("203.0.113.1", 443)) == "proxy"


def test_every_matcher_must_match_and_any_value_may():
    r = rules(rule("direct", cidr=("198.19.0.0/24", "fd00:19::/64"), port=((53, 53), (8000, 8999)), protocol=frozenset({"udp"})),
              default="proxy")
    assert r.match("udp", C, ("198.19.0.9", 8080)) == "direct"
    assert r.match(17, C, ("fd00:19::1", 53)) == "direct"
    assert r.match("tcp", C, ("198.19.0.9", 8080)) == "proxy"  # protocol differs
    assert r.match("udp", C, ("198.19.1.9", 8080)) == "proxy"  # outside the CIDR
    assert r.match("udp", C, ("198.19.0.9", 9000)) == "proxy"  # outside the ports


def test_source_matcher():
    r = rules(rule("block", source=("198.18.5.0/24",)))
    assert r.match("tcp", ("198.18.5.7", 1), ("198.19.0.1", 80)) == "block"
    assert r.match("tcp", C, ("198.19.0.1", 80)) == "direct"


def test_domain_matchers_need_a_domain():
    r = rules(rule("proxy", domain=("Example.COM.",)), rule("direct", domain_suffix=(".corp.example",)),
              rule("block", domain_keyword=("ads",)), default="fallback")
    dst = ("198.18.128.5", 443)
    assert r.match("tcp", C, dst, "example.com") == "proxy"
    assert r.match("tcp", C, dst, "www.example.com") == "fallback"  # exact, not suffix
    assert r.match("tcp", C, dst, "corp.example") == "direct"
    assert r.match("tcp", C, dst, "git.corp.example") == "direct"
    assert r.match("tcp", C, dst, "notcorp.example") == "fallback"  # a suffix matches at a label boundary
    assert r.match("tcp", C, dst, "myads.example.net") == "block"
    assert r.match("tcp", C, dst, None) == "fallback"


def test_may_choose():
    r = rules(rule("block", protocol=frozenset({"udp"})), rule("proxy", cidr=("198.19.0.0/16",)))
    assert not r.may_choose("icmp", "block")
    assert r.may_choose("udp", "block")
    assert r.may_choose("icmp", "proxy")
    assert rules(default="block").may_choose("icmp", "block")
    assert r.outbounds() == {"block", "proxy", "direct"}


def test_prefix_set_agrees_with_ipaddress():
    rng = random.Random(7)
    nets = [ipaddress.ip_network(f"198.{rng.randrange(18, 20)}.{rng.randrange(256)}.0/{rng.randrange(20, 29)}", strict=False)
            for _ in range(300)]
    nets += [ipaddress.ip_network(f"fd00:{rng.randrange(65536):x}::/{rng.randrange(16, 64)}", strict=False) for _ in range(50)]
    ps = PrefixSet(nets)
    for _ in range(3000):
        a = ipaddress.ip_address(f"198.{rng.randrange(18, 20)}.{rng.randrange(256)}.{rng.randrange(256)}")
        assert (a in ps) == any(a in n for n in nets if n.version == 4)
    for n in nets:
        assert n.network_address in ps and n.broadcast_address in ps
    assert ipaddress.ip_address("fd01::1") not in ps
    assert not PrefixSet()


@pytest.mark.parametrize("proto", ["icmp", 1, 58])
def test_icmp_has_no_ports(proto):
    r = rules(rule("block", port=((1, 65535),)), rule("proxy", protocol=frozenset({"icmp"})))
    assert r.match(proto, ("198.18.0.2", 0), ("198.19.0.1", 0)) == "proxy"
