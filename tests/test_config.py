"""The appliance's TOML configuration: defaults, every key, flag overrides, and each documented error (exit 2)."""

import dataclasses
import ipaddress
import pathlib
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztun.appliance import cli, config
from ztun.appliance.config import AppConfig, OutboundConfig, RuleConfig
from ztun.errors import ConfigError
from ztun.net import split_host_port

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.toml"))
LINUX = sys.platform.startswith("linux")

FULL = """\
[tun]
name = "zt7"
mtu = 1500
inet4 = "198.18.0.1/30"
inet6 = "none"
routes = ["198.19.0.0/16", "198.20.0.0/16"]
exclude_routes = ["198.19.5.0/24"]
auto_route = true
strict_route = true
table = 0x100
rule_priority = 700
fwmark = 0x55
offload = "off"
napi = "on"

[flows]
udp_timeout = 30
connect_timeout = 2.5
tcp_idle_timeout = 600
udp_max_sessions = 1000

[gateway]
lan_interfaces = ["lan0", "lan1"]
enable_forwarding = true

[log]
level = "debug"
format = "json"

[[outbounds]]
name = "proxy"
url = "socks5://us%40er:p%3Ass@[fd00::5]:1081"

[[outbounds]]
name = "proxy2"
type = "socks5"
server = "socks.example"
port = 1082
username = "bob"
password = "hunter2"

[[outbounds]]
name = "nowhere"
type = "block"

[route]
default = "proxy"

[[route.rules]]
outbound = "direct"
cidr = ["198.19.5.0/24", "fd00:19::/64"]
port = [80, "8000-8080"]
protocol = ["TCP", "udp"]
source = "198.18.0.0/24"

[[route.rules]]
outbound = "nowhere"
domain = "Ads.Example.COM."
domain_suffix = [".tracker.example", "example.org"]
domain_keyword = "doubleclick"

[dns]
mode = "fake-ip"
fake_ip4 = "198.20.0.0/16"
fake_ip6 = "none"
capacity = 1000
ttl = 5
upstream = "[fd00::53]"
outbound = "proxy2"

[metrics]
listen = "127.0.0.1:9477"

[control]
socket = "/tmp/ztun-test.sock"
"""


def write(tmp_path, text, name="ztun.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def check(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(["check-config", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_napi_defaults_to_auto_without_offload(tmp_path):
    f = tmp_path / "z.toml"
    f.write_text("[tun]\noffload = false\n")
    assert config.load(f).tun.napi == ("auto" if LINUX else "off")  # 1500-byte packets: the thread pays
    f.write_text("[tun]\noffload = false\nnapi = \"off\"\n")
    assert config.load(f).tun.napi == "off"


def test_defaults_without_a_file():
    c = config.load()
    # offload "auto": on with the Linux TUN; napi off with offload (README, --napi)
    assert c == AppConfig(tun=cli.TunOptions(offload=LINUX, napi="off"))
    assert [o.name for o in c.outbounds] == ["direct", "block"] and c.route.default == "direct"
    assert (c.flows.udp_timeout, c.flows.connect_timeout, c.flows.tcp_idle_timeout, c.flows.udp_max_sessions) == (60.0, 10.0, 7200.0, 16384)
    assert (c.dns.mode, str(c.dns.fake_ip4), str(c.dns.fake_ip6), c.dns.capacity, c.dns.ttl) == ("off", "198.18.0.0/15", "fc00::/18", 65536, 1)
    assert c.log == config.LogConfig("INFO", "text") and c.metrics.listen is None and c.source is None
    assert c.control.socket == "/run/ztun/ztun0.sock"  # derived from the TUN name


def test_an_empty_file_is_the_defaults(tmp_path):
    path = write(tmp_path, "# nothing\n")
    assert config.load(path) == dataclasses.replace(config.load(), source=path)


def test_every_key_is_parsed(tmp_path):
    c = config.load(write(tmp_path, FULL))
    t = c.tun
    assert (t.name, t.mtu, str(t.inet4), t.inet6, t.auto_route, t.strict_route, t.table, t.rule_priority, t.fwmark, t.offload, t.napi) == \
        ("zt7", 1500, "198.18.0.1/30", None, True, True, 256, 700, 0x55, False, "on")
    assert [str(r) for r in t.routes] == ["198.19.0.0/16", "198.20.0.0/16"] and [str(r) for r in t.exclude_routes] == ["198.19.5.0/24"]
    assert c.flows == config.FlowsConfig(30.0, 2.5, 600.0, 1000)
    assert c.gateway == config.GatewayConfig(("lan0", "lan1"), True)
    assert c.log == config.LogConfig("DEBUG", "json")
    assert c.outbound("proxy") == OutboundConfig("proxy", "socks5", "fd00::5", 1081, "us@er", "p:ss")
    assert c.outbound("proxy2") == OutboundConfig("proxy2", "socks5", "socks.example", 1082, "bob", "hunter2")
    assert c.outbound("nowhere") == OutboundConfig("nowhere", "block")
    assert c.route.default == "proxy"
    assert c.route.rules[0] == RuleConfig(
        "direct", cidr=(ipaddress.ip_network("198.19.5.0/24"), ipaddress.ip_network("fd00:19::/64")),
        port=((80, 80), (8000, 8080)), protocol=frozenset({"tcp", "udp"}), source=(ipaddress.ip_network("198.18.0.0/24"),))
    assert c.route.rules[1] == RuleConfig("nowhere", domain=("ads.example.com",), domain_suffix=("tracker.example", "example.org"),
                                          domain_keyword=("doubleclick",))
    assert c.dns == config.DnsConfig("fake-ip", ipaddress.ip_network("198.20.0.0/16"), None, 1000, 5, "[fd00::53]:53", "proxy2")
    assert c.metrics.listen == "127.0.0.1:9477" and c.control.socket == "/tmp/ztun-test.sock"


def test_offload_auto_on_off(tmp_path):
    for value, expected in (('"auto"', LINUX), ('"on"', True), ('"off"', False), ("true", True), ("false", False)):
        assert config.load(write(tmp_path, f"[tun]\noffload = {value}\n")).tun.offload is expected


def test_napi_modes(tmp_path):
    for value, expected in (('"auto"', "auto"), ('"on"', "on"), ('"off"', "off"), ("true", "on"), ("false", "off")):
        assert config.load(write(tmp_path, f"[tun]\nnapi = {value}\n")).tun.napi == expected


def test_the_printed_configuration_loads_back_the_same(tmp_path):
    c = config.load(write(tmp_path, FULL))
    text = config.format_config(c)
    again = config.load(write(tmp_path, text, "again.toml"))
    redacted = tuple(o if o.password is None else OutboundConfig(**{**o.__dict__, "password": config.REDACTED}) for o in c.outbounds)
    assert again.__dict__ == {**c.__dict__, "outbounds": redacted, "source": str(tmp_path / "again.toml")}


def test_check_config_prints_the_effective_configuration_with_passwords_redacted(tmp_path, capsys):
    rc, out, err = check(capsys, write(tmp_path, FULL))
    assert rc == 0 and err == ""
    assert "hunter2" not in out and "p:ss" not in out and "p%3Ass" not in out and out.count('password = "********"') == 2
    assert 'username = "bob"' in out and "mtu = 1500" in out and 'default = "proxy"' in out and "fwmark = 0x55" in out


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path, capsys):
    rc, out, err = check(capsys, str(path))
    assert rc == 0 and err == "" and "[tun]" in out


def test_the_examples_are_there():
    assert {p.name for p in EXAMPLES} >= {"router-socks5.toml", "split-routing.toml", "fake-ip.toml"}


# -- flags over the file ------------------------------------------------------------

def test_flags_override_the_file(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, FULL)
    seen = []
    monkeypatch.setattr(cli, "_run", lambda c, reread=None: seen.append(c) or 0)
    assert cli.main(["run", "--config", path, "--mtu", "1400", "--route", "198.21.0.0/16", "--no-auto-route", "--no-strict-route",
                     "--exclude-route", "198.21.1.0/24", "--inet6", "fd00:18::1/126", "--udp-timeout", "5",
                     "--tcp-idle-timeout", "90", "--log-level", "WARNING", "--log-format", "text", "--dns-mode", "off",
                     "--metrics-listen", "[::1]:9999", "--control-socket", "/tmp/other.sock", "--offload", "on",
                     "--outbound", "socks5://198.19.0.9:1085", "--lan-interface", "lan9", "--no-enable-forwarding"]) == 0
    c = seen[0]
    assert (c.tun.mtu, [str(r) for r in c.tun.routes], [str(r) for r in c.tun.exclude_routes]) == (1400, ["198.21.0.0/16"], ["198.21.1.0/24"])
    assert (c.tun.auto_route, c.tun.strict_route, str(c.tun.inet6), c.tun.offload, c.tun.name) == (False, False, "fd00:18::1/126", True, "zt7")
    assert (c.flows.udp_timeout, c.flows.tcp_idle_timeout, c.flows.connect_timeout) == (5.0, 90.0, 2.5)
    assert c.log == config.LogConfig("WARNING", "text") and c.dns.mode == "off"
    assert c.metrics.listen == "[::1]:9999" and c.control.socket == "/tmp/other.sock"
    assert c.gateway == config.GatewayConfig(("lan9",), False)
    # --outbound URL replaces the file's "proxy" and makes it the default; rules naming "proxy" now use it
    assert c.outbound("proxy") == OutboundConfig("proxy", "socks5", "198.19.0.9", 1085) and c.route.default == "proxy"
    assert [o.name for o in c.outbounds] == ["direct", "block", "proxy", "proxy2", "nowhere"]


def test_a_socks5_outbound_without_a_port_uses_1080(tmp_path):
    c = config.load(write(tmp_path, '[tun]\nauto_route = true\n\n[[outbounds]]\nname = "a"\nurl = "socks5://198.19.0.1"\n\n'
                                    '[[outbounds]]\nname = "b"\nserver = "198.19.0.2"\n'))
    assert (c.outbound("a").port, c.outbound("b").port) == (1080, 1080)
    c = config.load(None, {"outbound": ("socks5://[fd00::5]", "--outbound"), "tun.auto_route": (True, "--auto-route")})
    assert c.outbound("proxy").port == 1080


@pytest.mark.parametrize("value,default", [("direct", "direct"), ("block", "block"), ("socks5://u:p@198.19.0.1:1080", "proxy")])
def test_outbound_flag_without_a_file(value, default):
    c = config.load(None, {"outbound": (value, "--outbound"), "tun.routes": (["198.19.0.0/16"], "--route")})
    assert c.route.default == default and ("proxy" in [o.name for o in c.outbounds]) == (default == "proxy")


def test_run_without_config_or_flags_is_the_defaults(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_run", lambda c, reread=None: seen.append(c) or 0)
    assert cli.main(["run"]) == 0 and seen == [config.load()]


def test_cleanup_takes_the_tun_of_the_config(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_cleanup", lambda o: seen.append(o) or 0)
    assert cli.main(["cleanup", "--config", write(tmp_path, FULL), "--table", "300"]) == 0
    assert (seen[0].name, seen[0].table, seen[0].rule_priority) == ("zt7", 300, 700)


@pytest.mark.parametrize("argv,flag", [
    (["--udp-timeout", "0"], "--udp-timeout"),
    (["--tcp-idle-timeout", "x"], "--tcp-idle-timeout"),
    (["--outbound", "http://198.19.0.1:8080"], "--outbound"),
    (["--outbound", "socks5://u@198.19.0.1"], "--outbound"),
    (["--dns-mode", "magic"], "--dns-mode"),
    (["--log-format", "xml"], "--log-format"),
    (["--metrics-listen", "9477"], "--metrics-listen"),
    (["--control-socket", "/" + "x" * 200], "--control-socket"),
    (["--lan-interface", "a-much-too-long-name"], "--lan-interface"),
    (["--dns-mode", "forward"], "--dns-mode"),
])
def test_bad_flags_over_a_file_name_the_flag(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        cli.main(["check-config", write(tmp_path, "[tun]\nmtu = 1500\n"), *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: argument {flag}: " in err and "Traceback" not in err


# -- errors in the file -----------------------------------------------------------------

ERRORS = [
    # unknown keys, with a suggestion and the valid keys
    ("[tun]\nmtu = 1500\nauto_rout = true\n", 3, "tun.auto_rout",
     "unknown key (did you mean 'auto_route'?); valid keys in [tun]: name, mtu, inet4"),
    ("[tunn]\nmtu = 1500\n", 1, "tunn", "unknown key (did you mean 'tun'?); valid keys at the top level: tun, flows"),
    ("[[outbounds]]\nname = \"p\"\nurl = \"socks5://h:1\"\n\n[[outbounds]]\nname = \"q\"\nsevrer = \"h\"\n", 7,
     "outbounds[1].sevrer", "unknown key (did you mean 'server'?)"),
    # wrong types
    ("[tun]\nmtu = \"1500\"\n", 2, "tun.mtu", "must be an integer, got '1500'"),
    ("[tun]\nauto_route = \"yes\"\n", 2, "tun.auto_route", "must be true or false, got 'yes'"),
    ("[flows]\nudp_timeout = true\n", 2, "flows.udp_timeout", "must be a number of seconds"),
    ("tun = 5\n", 1, "tun", "must be a table, got 5 (a number)"),
    ("[tun]\nroutes = \"198.19.0.0/16\"\n", 2, "tun.routes", "must be a list of CIDR strings"),
    # impossible values
    ("[tun]\nmtu = 70000\n", 2, "tun.mtu", "must be 576..65535, got 70000"),
    ("[tun]\nroutes = [\"198.19.0.7/16\"]\n", 2, "tun.routes", "198.19.0.7/16 has host bits set (did you mean 198.19.0.0/16?)"),
    ("[flows]\nconnect_timeout = 0\n", 2, "flows.connect_timeout", "more than 0 and at most 86400, got 0"),
    ("[tun]\nnapi = \"fast\"\n", 2, "tun.napi", "must be one of 'auto', 'on', 'off', got 'fast'"),
    # rules
    ("[[route.rules]]\noutbound = \"direct\"\ncidr = \"300.1.2.0/24\"\n", 3, "route.rules[0].cidr", "'300.1.2.0/24' is not an IPv4 or IPv6 CIDR"),
    ("[[route.rules]]\noutbound = \"direct\"\ncidr = \"198.19.0.0/16\"\n\n[[route.rules]]\noutbound = \"direct\"\nport = \"90-80\"\n",
     7, "route.rules[1].port", "range '90-80' is empty"),
    ("[[route.rules]]\noutbound = \"direct\"\nport = 0\n", 3, "route.rules[0].port", "ports are 1..65535, got 0"),
    ("[[route.rules]]\noutbound = \"direct\"\nport = \"http\"\n", 3, "route.rules[0].port", "must be a port (1..65535), a range \"lo-hi\""),
    ("[[route.rules]]\noutbound = \"proxy\"\ncidr = \"198.19.0.0/16\"\n", 2, "route.rules[0].outbound",
     "outbound 'proxy' is not defined; defined: direct, block"),
    ("[route]\ndefault = \"proxy\"\n", 2, "route.default", "outbound 'proxy' is not defined"),
    ("[[route.rules]]\noutbound = \"direct\"\ncidr = \"198.19.0.0/16\"\n\n[[route.rules]]\noutbound = \"block\"\n", 5, "route.rules[1]",
     "a rule needs at least one matcher: cidr, port, protocol, source, domain, domain_suffix, domain_keyword"),
    ("[[route.rules]]\ncidr = \"198.19.0.0/16\"\n", 1, "route.rules[0]", "a rule needs outbound = NAME"),
    ("[[route.rules]]\noutbound = \"block\"\nprotocol = \"sctp\"\n", 3, "route.rules[0].protocol", "must be one of 'tcp', 'udp', 'icmp'"),
    ("[[route.rules]]\noutbound = \"block\"\nprotocol = \"icmp\"\nport = 53\n", 4, "route.rules[0].port", "ICMP has no ports"),
    ("[[route.rules]]\noutbound = \"block\"\ndomain = []\n", 3, "route.rules[0].domain", "got an empty list"),
    # outbounds
    ("[[outbounds]]\nname = \"p\"\nurl = \"socks5://198.19.0.1:1080\"\n\n[[outbounds]]\nname = \"p\"\ntype = \"block\"\n", 6,
     "outbounds[1].name", "outbound 'p' is defined twice; names must be unique"),
    ("[[outbounds]]\nname = \"direct\"\nurl = \"socks5://198.19.0.1:1080\"\n", 2, "outbounds[0].name",
     "'direct' is built in (type direct); give this socks5 outbound another name"),
    ("[[outbounds]]\nname = \"p\"\nurl = \"socks5://h:1\"\nserver = \"h\"\n", 4, "outbounds[0].server", "give either url or server"),
    ("[[outbounds]]\nname = \"p\"\ntype = \"socks5\"\n", 1, "outbounds[0]", "needs url ="),
    ("[[outbounds]]\nname = \"p\"\n", 1, "outbounds[0]", "needs a type"),
    ("[[outbounds]]\nname = \"p\"\nserver = \"198.19.0.1\"\nport = 0\n", 4, "outbounds[0].port", "must be an integer 1..65535, got 0"),
    # dns
    ("[dns]\nmode = \"forward\"\n", 2, "dns.mode", "mode \"forward\" needs the DNS server queries go to: dns.upstream = \"ADDRESS:PORT\""),
    ("[dns]\nmode = \"forward\"\nupstream = \"dns.example:53\"\n", 3, "dns.upstream", "'dns.example' is not an IP address"),
    ("[dns]\nmode = \"fake-ip\"\nfake_ip4 = \"198.18.0.0/28\"\n", 3, "dns.fake_ip4", "has 16 addresses; a fake-IP pool needs at least 256"),
    ("[dns]\nmode = \"fake-ip\"\nfake_ip4 = \"198.18.0.0/20\"\ncapacity = 65536\n", 4, "dns.capacity",
     "capacity 65536 is more than the 4096 addresses of fake_ip4 = 198.18.0.0/20; lower capacity or widen the pool"),
    ("[tun]\ninet4 = \"198.18.0.1/30\"\n\n[dns]\nmode = \"fake-ip\"\n", 5, "dns.mode",
     "the default IPv4 pool 198.18.0.0/15 overlaps the TUN's own prefix (tun.inet4 = \"198.18.0.1/30\"); "
     "give another pool with dns.fake_ip4 = \"CIDR\", or move the TUN's"),
    ("[dns]\nmode = \"fake-ip\"\nfake_ip4 = \"fd00::/64\"\n", 3, "dns.fake_ip4", "fd00::/64 is not an IPv4 CIDR"),
    ("[dns]\noutbound = \"proxy\"\n", 2, "dns.outbound", "outbound 'proxy' is not defined"),
    # metrics, control, log
    ("[metrics]\nlisten = \"127.0.0.1\"\n", 2, "metrics.listen", "must be a host:port: the port is missing"),
    ("[log]\nformat = \"xml\"\n", 2, "log.format", "must be one of 'text', 'json', got 'xml'"),
    # dotted and inline tables are found too
    ("tun.mtu = 10\n", 1, "tun.mtu", "must be 576..65535, got 10"),
    ("flows = { udp_timeout = -1 }\n", 1, "flows.udp_timeout", "more than 0"),
]
# A socks5 URL is read by the outbound's own parser (parse_url); its errors name the url key.
URL_ERRORS = [
    ("http://198.19.0.1:1080", "bad proxy URL: scheme must be socks5://, not http"),
    ("socks5://198.19.0.1:99999", "bad proxy URL: port must be a number 1..65535"),
    ("socks5://198.19.0.1:0", "bad proxy URL: port must be 1..65535"),
    ("socks5://user@198.19.0.1", "bad proxy URL: a username needs a password (user:password@)"),
    ("socks5://u:@198.19.0.1", "bad proxy URL: the password must be 1..255 bytes (RFC 1929)"),
    (f"socks5://{'u' * 256}:p@198.19.0.1", "bad proxy URL: the username must be 1..255 bytes (RFC 1929)"),
    ("socks5://:1080", "bad proxy URL: no host"),
    ("socks5://[nothost]:1080", "IPv6 address"),
    ("socks5://198.19.0.1:1080/x", "bad proxy URL: nothing may follow host:port"),
    ("socks5://a b:1080", "'a b' is not a host name or IP address"),
]
ERRORS += [(f'[[outbounds]]\nname = "p"\nurl = "{url}"\n', 3, "outbounds[0].url", reason) for url, reason in URL_ERRORS]


@pytest.mark.parametrize("text,line,key,reason", ERRORS, ids=[e[2] + ":" + e[3][:20] for e in ERRORS])
def test_errors_name_file_line_key_and_what_is_expected(tmp_path, capsys, text, line, key, reason):
    path = write(tmp_path, text)
    rc, out, err = check(capsys, path)
    assert rc == 2 and out == ""
    assert err.startswith(f"ztun-appliance: error: {path}: line {line}: {key}: "), err
    assert reason in err and err.count("\n") == 1


def test_run_with_a_bad_config_exits_2_with_the_same_message(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "_run", lambda c, reread=None: pytest.fail("ran with a bad config"))
    path = write(tmp_path, "[tun]\nmtu = 70000\n")
    assert cli.main(["run", "--config", path]) == 2
    assert capsys.readouterr().err == f"ztun-appliance: error: {path}: line 2: tun.mtu: must be 576..65535, got 70000\n"


def test_toml_syntax_errors_carry_their_line(tmp_path, capsys):
    path = write(tmp_path, "[tun]\nmtu = 1500\nname = \"unterminated\n")
    rc, _, err = check(capsys, path)
    assert rc == 2 and err.startswith(f"ztun-appliance: error: {path}: line 3: invalid TOML: ") and "(column " in err


def test_unreadable_files(tmp_path, capsys):
    rc, _, err = check(capsys, str(tmp_path / "missing.toml"))
    assert rc == 2 and "missing.toml: cannot read it: No such file or directory" in err
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n")
    rc, _, err = check(capsys, str(tmp_path / "latin1.toml"))
    assert rc == 2 and "not UTF-8" in err


def test_host_port():
    assert split_host_port("198.19.0.1:53") == ("198.19.0.1", 53)
    assert split_host_port("[fd00::1]:53") == ("fd00::1", 53)
    assert split_host_port("fd00::1", 53) == ("fd00::1", 53)
    assert split_host_port("[fd00::1]", 53) == ("fd00::1", 53)
    assert split_host_port("localhost:9477") == ("localhost", 9477)
    assert split_host_port("0.0.0.0:0", min_port=0) == ("0.0.0.0", 0)


@pytest.mark.parametrize("text,default,reason", [
    ("198.19.0.1:", 53, "the port is missing after ':'"),
    ("198.19.0.1", None, "the port is missing"),
    ("fd00::1", None, "an IPv6 address with a port goes in brackets: [fd00::1]:port"),
    ("198.19.0.1:0", 53, "port must be 1..65535, got '0'"),
    ("198.19.0.1:65536", 53, "port must be 1..65535, got '65536'"),
    ("198.19.0.1:\u0661", 53, "port must be 1..65535"),
    ("[nope]:1", 53, "'nope' in [ ] is not an IPv6 address"),
    ("[198.19.0.1]:1", 53, "'198.19.0.1' in [ ] is not an IPv6 address"),
    ("[fd00::1", 53, "in [ ] is not an IPv6 address"),
    ("[fd00::1]53", 53, "'53' after [fd00::1] is not :port"),
    ("fd00::zz", 53, "'fd00::zz' is neither host:port nor an IPv6 address"),
    ("a b:1", 53, "'a b' is not an address or host name"),
    (":53", 53, "'' is not an address or host name"),
])
def test_host_port_errors_say_what_is_wrong(text, default, reason):
    with pytest.raises(ValueError) as e:
        split_host_port(text, default)
    assert reason in str(e.value)


# -- hostile input: a ConfigError, never another exception ---------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                     st.text(max_size=12), st.sampled_from(["198.19.0.0/16", "fd00::/8", "socks5://u:p@h:1", "1-2",
                                                            "direct", "block", "fake-ip", "forward", "127.0.0.1:1"]))
_keys = st.sampled_from(sorted({k for keys in config.KEYS.values() for k in keys}) + ["bogus"])
_values = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(_keys, inner, max_size=5)), max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_keys, _values, max_size=6))
def test_any_document_is_a_config_or_a_config_error(doc):
    try:
        c = config.build(doc, source="fuzz.toml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.toml: ")
    else:
        assert isinstance(c, AppConfig) and config.format_config(c)


def test_the_readme_documents_every_key_and_flag():
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("## Configuration"):readme.index("## What is here")]
    for table, keys in config.KEYS.items():
        for key in keys:
            full = f"{table}.{key}" if table else key
            assert f"`{key}`" in section or f"`{full}`" in section or f"`[{full}]`" in section or f"`[[{full}]]`" in section, full
    for _, flag in cli.RUN_FLAGS.values():
        assert f"`{flag} " in readme or f"`{flag}`" in readme, flag


# -- messages name the flag or the key the user wrote (#18) ----------------------------------

# A bad value from a flag: the error names that flag, and the fix as flags too.
FLAG_MESSAGES = [
    (["--mtu", "1000"], "--mtu", "leave IPv6 off the TUN with --inet6 none"),
    (["--dns-mode", "forward"], "--dns-mode", "needs the DNS server queries go to: --dns-upstream ADDRESS:PORT"),
    (["--dns-mode", "fake-ip", "--inet4", "198.18.0.1/28"], "--dns-mode",
     "the default IPv4 pool 198.18.0.0/15 overlaps the TUN's own prefix (--inet4 198.18.0.1/28); "
     "give another pool with --dns-fake-ip4 CIDR"),
    (["--dns-mode", "fake-ip", "--dns-fake-ip4", "none", "--dns-fake-ip6", "none"], "--dns-fake-ip4",
     "fake-ip mode needs a pool: --dns-fake-ip4 and --dns-fake-ip6 are both none"),
    (["--outbound", "socks5://192.0.2.1:1080"], "--outbound", "nothing is routed into the TUN; give --route CIDR or --auto-route"),
    (["--enable-forwarding"], "--enable-forwarding", "name their interfaces with --lan-interface NAME"),
    (["--route", "172.19.0.0/30"], "--route", "172.19.0.0/30 is inside the TUN's own prefix (--inet4 172.19.0.1/28)"),
    (["--inet4", "198.18.0.1/24", "--route", "198.18.0.0/24"], "--route", "is inside the TUN's own prefix"),
    (["--exclude-route", "198.19.5.0/24"], "--exclude-route", "give --route CIDR or --auto-route too"),
    (["--strict-route"], "--strict-route", "applies to --auto-route only; give --auto-route too"),
    (["--inet6", "none", "--route", "fd00:19::/64"], "--route", "the TUN has no IPv6 address; give it one with --inet6 CIDR"),
]


@pytest.mark.parametrize("argv,flag,reason", FLAG_MESSAGES, ids=[" ".join(m[0]) for m in FLAG_MESSAGES])
def test_errors_of_flags_name_flags(capsys, monkeypatch, argv, flag, reason):
    monkeypatch.setattr(cli, "_run", lambda c, reread=None: 0)  # a run that got this far took the error
    with pytest.raises(SystemExit) as e:
        cli.main(["run", *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"error: argument {flag}: " in err and reason in err, err
    for key in ("inet6 unset", "upstream =", "fake_ip4", "exclude_routes", "auto_route", "lan_interfaces", "tun."):
        assert key not in err, err  # no key the user never wrote


# The same mistakes in a file: the error names the file, line and key, and the fix as keys.
FILE_MESSAGES = [
    ("[tun]\nmtu = 1000\n", 2, "tun.mtu", 'leave IPv6 off the TUN with tun.inet6 = "none"'),
    ("[[outbounds]]\nname = \"p\"\nurl = \"socks5://192.0.2.1\"\n", 1, "outbounds[0]",
     "socks5 outbound 'p' would get no traffic: nothing is routed into the TUN; give tun.routes = [\"CIDR\"] or tun.auto_route = true"),
    ("[gateway]\nenable_forwarding = true\n", 2, "gateway.enable_forwarding",
     "name their interfaces with gateway.lan_interfaces = [\"NAME\"]"),
    ("[tun]\ninet4 = \"198.18.0.1/24\"\nroutes = [\"198.18.0.0/25\"]\n", 3, "tun.routes",
     "198.18.0.0/25 is inside the TUN's own prefix (tun.inet4 = \"198.18.0.1/24\")"),
    ("[tun]\nexclude_routes = [\"198.19.5.0/24\"]\n", 2, "tun.exclude_routes", "give tun.routes = [\"CIDR\"] or tun.auto_route = true too"),
    ("[tun]\nstrict_route = true\n", 2, "tun.strict_route", "give tun.auto_route = true too"),
    ("[dns]\nmode = \"fake-ip\"\nfake_ip4 = \"none\"\nfake_ip6 = \"none\"\n", 3, "dns.fake_ip4",
     "fake-ip mode needs a pool: dns.fake_ip4 and dns.fake_ip6 are both none"),
]


@pytest.mark.parametrize("text,line,key,reason", FILE_MESSAGES, ids=[m[2] for m in FILE_MESSAGES])
def test_errors_in_a_file_name_keys(tmp_path, capsys, text, line, key, reason):
    path = write(tmp_path, text)
    rc, out, err = check(capsys, path)
    assert rc == 2 and err.startswith(f"ztun-appliance: error: {path}: line {line}: {key}: ") and reason in err, err
    assert "--" not in err.split(f"{key}: ", 1)[1], err  # no flag the user never gave


def test_a_route_around_the_tuns_prefix_is_fine():
    """Only a route inside the TUN's prefix is refused: one around it (0.0.0.0/1, a supernet) changes nothing for
    the TUN's own addresses, whose connected route sends them into the TUN anyway."""
    c = config.load(None, {"tun.routes": (["0.0.0.0/1", "128.0.0.0/1", "172.16.0.0/12"], "--route")})
    assert len(c.tun.routes) == 3


def test_the_new_flags_set_their_keys(monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "_run", lambda c, reread=None: seen.append(c) or 0)
    assert cli.main(["run", "--dns-mode", "fake-ip", "--dns-upstream", "198.19.0.53", "--dns-fake-ip4", "198.20.0.0/16",
                     "--dns-fake-ip6", "none"]) == 0
    d = seen[0].dns
    assert (d.mode, d.upstream, str(d.fake_ip4), d.fake_ip6) == ("fake-ip", "198.19.0.53:53", "198.20.0.0/16", None)
    assert cli.main(["run", "--dns-mode", "forward", "--dns-upstream", "[fd00::53]:5353"]) == 0
    assert seen[1].dns.upstream == "[fd00::53]:5353"


def test_the_control_socket_is_the_tuns(tmp_path):
    """Two appliances on one host (one per network namespace) do not share a control socket by default."""
    assert config.load().control.socket == "/run/ztun/ztun0.sock" == config.control_socket("ztun0")
    assert config.load(None, {"tun.name": ("zt-two0", "--tun-name")}).control.socket == "/run/ztun/zt-two0.sock"
    c = config.load(write(tmp_path, '[tun]\nname = "zt-three0"\n\n[control]\nsocket = "/tmp/mine.sock"\n'))
    assert c.control.socket == "/tmp/mine.sock"  # control.socket still wins
    assert config.load(write(tmp_path, '[tun]\nname = "zt-four0"\n')).control.socket == "/run/ztun/zt-four0.sock"


def test_check_config_takes_config_as_run_does(tmp_path, capsys):
    path = write(tmp_path, "[tun]\nmtu = 1500\n")
    assert check(capsys, "--config", path)[0] == 0
    assert check(capsys, path)[0] == 0
    with pytest.raises(SystemExit) as e:
        check(capsys, path, "--config", write(tmp_path, "", "other.toml"))
    assert e.value.code == 2


# -- hostile files: bounded, a clean error and exit 2 (#18) -----------------------------------

HOSTILE = {
    "nested": "a = " + "[" * 500 + "]" * 500 + "\n",
    "nested-tables": "a = " + "{ b = " * 500 + "1" + " }" * 500 + "\n",
    "nested-shallow": "[tun]\nroutes = " + "[" * 20 + "]" * 20 + "\n",
    "huge": "# " + "x" * (1 << 20) + "\n",
    "long-integer": "[tun]\nmtu = " + "1" * 5000 + "\n",
}


@pytest.mark.parametrize("name", HOSTILE)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_hostile_file_is_a_clean_error(tmp_path, monkeypatch, command, name):
    path = write(tmp_path, HOSTILE[name])
    argv = [command, path] if command == "check-config" else [command, "--config", path]
    r = subprocess.run([sys.executable, "-m", "ztun.appliance", *argv], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    assert r.stderr.startswith(f"ztun-appliance: error: {path}: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr and "set_int_max_str_digits" not in r.stderr


def test_the_size_and_depth_limits_leave_room(tmp_path):
    """The limits are far above any configuration: every example, and one of 5,000 rules, load."""
    rules = "".join(f'[[route.rules]]\noutbound = "block"\ncidr = ["198.19.{i // 256}.{i % 256}/32", "fd00::{i:x}/128"]\n'
                    for i in range(5000))
    assert len(config.load(write(tmp_path, rules)).route.rules) == 5000


# -- outbound health (#18) ----------------------------------------------------------------------


def test_health_keys_and_flags(tmp_path, monkeypatch):
    assert config.load().health == config.HealthConfig(interval=60.0, check_outbounds=False)
    c = config.load(write(tmp_path, "[health]\ninterval = 0\ncheck_outbounds = true\n"))
    assert (c.health.interval, c.health.check_outbounds) == (0.0, True)
    assert config.load(write(tmp_path, c and config.format_config(c), "again.toml")).health == c.health
    seen = []
    monkeypatch.setattr(cli, "_run", lambda c, reread=None: seen.append(c) or 0)
    assert cli.main(["run", "--health-interval", "5", "--check-outbounds"]) == 0
    assert (seen[0].health.interval, seen[0].health.check_outbounds) == (5.0, True)


@pytest.mark.parametrize("text,words", [
    ("[health]\ninterval = -1\n", "health.interval: must be a number of seconds"),
    ("[health]\ninterval = true\n", "health.interval: must be a number of seconds"),
    ("[health]\ncheck_outbounds = 1\n", "health.check_outbounds: "),
    ("[health]\nevery = 1\n", "health.every"),
])
def test_bad_health_keys(tmp_path, capsys, text, words):
    rc, out, err = check(capsys, write(tmp_path, text))
    assert rc == 2 and words in err, err
