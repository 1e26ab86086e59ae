"""TunOptions: working defaults, and bad values rejected with the field and the reason."""

import ipaddress

import pytest

from ztun.errors import ConfigError
from ztun.tun.options import TunOptions


def test_defaults_work():
    o = TunOptions()
    assert o.name == "ztun0" and o.mtu == 65535
    assert str(o.inet4) == "172.19.0.1/28" and str(o.inet6) == "fdfe:dcba:9876::1/124"
    assert str(o.stack4) == "172.19.0.1" and str(o.next4) == "172.19.0.2"
    assert str(o.stack6) == "fdfe:dcba:9876::1" and str(o.next6) == "fdfe:dcba:9876::2"
    assert o.table == 2022 and o.rule_priority == 9000 and list(o.rule_priorities) == list(range(9000, 9010))
    assert not o.auto_route and not o.strict_route and o.routes == () and o.file_descriptor is None


def test_values_are_normalised():
    o = TunOptions(inet4="198.18.0.1/30", inet6=None, routes=["198.19.0.0/16", "198.19.0.0/16", "198.20.0.1"],
                   exclude_routes=("198.19.5.0/24",))
    assert o.routes == (ipaddress.ip_network("198.19.0.0/16"), ipaddress.ip_network("198.20.0.1/32"))
    assert o.exclude_routes == (ipaddress.ip_network("198.19.5.0/24"),)
    assert o.inet6 is None and o.addresses == (ipaddress.ip_interface("198.18.0.1/30"),)


@pytest.mark.parametrize("kw,field,words", [
    (dict(name=""), "name", "non-empty"),
    (dict(name="a" * 16), "name", "at most 15"),
    (dict(name="zt/0"), "name", "not a valid interface name"),
    (dict(name="zt 0"), "name", "not a valid interface name"),
    (dict(name="zt\t0"), "name", "not a valid interface name"),
    (dict(name=".."), "name", "not a valid interface name"),
    (dict(mtu=575), "mtu", "576..65535"),
    (dict(mtu=65536), "mtu", "576..65535"),
    (dict(mtu="1500"), "mtu", "integer"),
    (dict(mtu=1279), "mtu", "IPv6 minimum"),
    (dict(inet4="198.18.0.1"), "inet4", "no room"),
    (dict(inet4="198.18.0.3/30"), "inet4", "no room"),
    (dict(inet4="fd00::1/64"), "inet4", "not an IPv4 prefix"),
    (dict(inet4="bogus"), "inet4", "not an IPv4 address"),
    (dict(inet4="224.0.0.1/24"), "inet4", "multicast"),
    (dict(inet6="fd00::1/128"), "inet6", "no room"),
    (dict(inet6="198.18.0.1/30"), "inet6", "not an IPv6 prefix"),
    (dict(inet4=None, inet6=None), "inet4", "both unset"),
    (dict(routes="198.19.0.0/16"), "routes", "list of CIDRs"),
    (dict(routes=["198.19.0.7/16"]), "routes", "host bits set (did you mean 198.19.0.0/16?)"),
    (dict(routes=["nope"]), "routes", "not an IPv4 or IPv6 CIDR"),
    (dict(inet6=None, routes=["fd00:19::/64"]), "routes", "inet6 is not set"),
    (dict(exclude_routes=["198.19.5.0/24"]), "exclude_routes", "give routes or auto_route"),
    (dict(exclude_routes=["198.19.5.9/24"], auto_route=True), "exclude_routes", "host bits"),
    (dict(strict_route=True), "strict_route", "auto_route"),
    (dict(auto_route="yes"), "auto_route", "true or false"),
    (dict(table=254), "table", "main 254"),
    (dict(table=0), "table", "1..4294967295"),
    (dict(rule_priority=0), "rule_priority", "1.."),
    (dict(rule_priority=32760), "rule_priority", "..32755"),
    (dict(fwmark=0), "fwmark", "1..4294967295"),
    (dict(file_descriptor=-1), "file_descriptor", "0.."),
    (dict(outbound_interface=""), "outbound_interface", "\"auto\" or an interface name"),
    (dict(outbound_interface="eth0/1"), "outbound_interface", "not a valid interface name"),
    (dict(outbound_interface="x" * 16), "outbound_interface", "not a valid interface name"),
    (dict(outbound_interface="ztun0"), "outbound_interface", "the TUN itself"),
])
def test_bad_values_name_field_and_reason(kw, field, words):
    with pytest.raises(ConfigError) as e:
        TunOptions(**kw)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")
    assert words in str(e.value)


def test_frozen():
    with pytest.raises(Exception):
        TunOptions().mtu = 1500
