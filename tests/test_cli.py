"""`ztun-appliance` without root: version, bad flags (exit 2 naming the flag), one-line runtime errors (exit 1)."""

import argparse
import subprocess
import sys

import pytest

from ztun import __version__
from ztun.appliance import cli, config


def test_version(capsys):
    assert cli.main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"ztun {__version__} (")


def test_python_dash_m_works():
    r = subprocess.run([sys.executable, "-m", "ztun.appliance", "version"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and __version__ in r.stdout


@pytest.mark.parametrize("argv,flag", [
    (["run", "--mtu", "100"], "--mtu"),
    (["run", "--mtu", "x"], "--mtu"),
    (["run", "--mtu", "1000"], "--mtu"),
    (["run", "--tun-name", "a-very-long-name0"], "--tun-name"),
    (["run", "--inet4", "bogus"], "--inet4"),
    (["run", "--inet6", "fd00::1/128"], "--inet6"),
    (["run", "--route", "198.19.0.7/16"], "--route"),
    (["run", "--exclude-route", "198.19.5.0/24"], "--exclude-route"),
    (["run", "--strict-route"], "--strict-route"),
    (["run", "--table", "254"], "--table"),
    (["run", "--table", "main"], "--table"),
    (["run", "--fwmark", "0"], "--fwmark"),
    (["run", "--rule-priority", "40000"], "--rule-priority"),
    (["run", "--log-level", "LOUD"], "--log-level"),
    (["run", "--bogus"], "--bogus"),
    (["cleanup", "--table", "255"], "--table"),
    (["run", "--udp-timeout", "0"], "--udp-timeout"),
    (["run", "--outbound", "socks4://198.19.0.1:1080"], "--outbound"),
    (["run", "--log-format", "yaml"], "--log-format"),
    (["check-config"], "FILE"),
])
def test_bad_flags_exit_2_naming_the_flag(capsys, argv, flag):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "Traceback" not in err


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([])
    assert e.value.code == 2


def test_flags_reach_the_options():
    parser = cli.build_parser()
    args = parser.parse_args(["run", "--tun-name", "zt9", "--mtu", "1400", "--inet4", "198.18.0.1/30", "--inet6", "none",
                              "--route", "198.19.0.0/16", "--route", "198.20.0.0/16", "--exclude-route", "198.19.5.0/24",
                              "--auto-route", "--strict-route", "--table", "0x100", "--fwmark", "0x55", "--rule-priority", "700"])
    o = cli.load_config(parser.commands["run"], args).tun
    assert (o.name, o.mtu, str(o.inet4), o.inet6) == ("zt9", 1400, "198.18.0.1/30", None)
    assert [str(r) for r in o.routes] == ["198.19.0.0/16", "198.20.0.0/16"]
    assert [str(r) for r in o.exclude_routes] == ["198.19.5.0/24"]
    assert o.auto_route and o.strict_route and (o.table, o.fwmark, o.rule_priority) == (256, 0x55, 700)


def test_unset_flags_keep_the_defaults():
    parser = cli.build_parser()
    args = parser.parse_args(["run"])
    # --offload auto: on with a Linux TUN; --napi off; TunOptions itself defaults to off
    linux = sys.platform.startswith("linux")
    assert cli.load_config(parser.commands["run"], args).tun == cli.TunOptions(offload=linux, napi="off")


def test_every_run_flag_has_a_config_key():
    keys = {k for keys in config.KEYS.values() for k in keys}
    run = cli.build_parser().commands["run"]
    dests = {a.dest for a in run._actions} - {"help", "config"}
    assert dests == set(cli.RUN_FLAGS)
    for dest, (key, flag) in cli.RUN_FLAGS.items():
        assert key == "outbound" or key.split(".")[-1] in keys
        assert flag in run._option_string_actions and run._option_string_actions[flag].dest == dest


def test_outbound_interface_flag_file_key_and_check_config(tmp_path, capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["run", "--outbound-interface", "auto"])
    assert cli.load_config(parser.commands["run"], args).tun.outbound_interface == "auto"
    path = tmp_path / "c.toml"
    path.write_text('[tun]\noutbound_interface = "wlan0"\n')
    assert cli.main(["check-config", str(path)]) == 0
    assert 'outbound_interface = "wlan0"' in capsys.readouterr().out
    path.write_text('[tun]\noutbound_interface = "eth 0"\n')
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "tun.outbound_interface" in err and "not a valid interface name" in err, err
    path.write_text("[tun]\nmtu = 1500\n")
    assert cli.main(["check-config", str(path)]) == 0
    assert "# outbound_interface: not set" in capsys.readouterr().out


def test_check_config_touches_nothing(tmp_path, monkeypatch, capsys):
    """check-config neither opens a device nor a netlink socket: it validates and prints."""
    from ztun.appliance import gateway
    from ztun.system import router

    monkeypatch.setattr(gateway, "open_tun", lambda *a, **k: pytest.fail("opened a device"))
    monkeypatch.setattr(router, "open_router", lambda *a, **k: pytest.fail("opened a router"))
    path = tmp_path / "c.toml"
    path.write_text("[tun]\nauto_route = true\n")
    assert cli.main(["check-config", str(path), "--mtu", "1500"]) == 0
    out = capsys.readouterr().out
    assert "auto_route = true" in out and "mtu = 1500" in out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux TUN device")
def test_missing_dev_net_tun_is_one_line(capsys, monkeypatch, tmp_path):
    from ztun.tun import device_linux

    monkeypatch.setattr(device_linux, "TUN_PATH", str(tmp_path / "tun"))
    # Its own control socket: the default one may be held by an appliance running on this host.
    assert cli.main(["run", "--tun-name", "zt-none0", "--log-level", "ERROR",
                     "--control-socket", str(tmp_path / "control.sock")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ztun-appliance: error: no ") and "modprobe tun" in err


def test_a_reload_whose_file_now_clashes_with_a_flag_keeps_the_running_configuration(tmp_path, monkeypatch, caplog):
    """SIGHUP rereads file and flags; a flag's error then must not end the appliance (parser.error exits)."""
    path = tmp_path / "c.toml"
    path.write_text('[dns]\nupstream = "198.19.0.53:53"\n')
    got = {}
    monkeypatch.setattr(cli, "_run", lambda config, reread=None: got.update(config=config, reread=reread) or 0)
    assert cli.main(["run", "--config", str(path), "--dns-mode", "forward"]) == 0
    path.write_text("")  # --dns-mode forward now lacks its upstream
    state = {"config": got["config"]}
    cli._reload(None, None, state, got["reread"])
    assert state["config"] is got["config"]
    assert "not reloaded" in caplog.text and "--dns-mode" in caplog.text


def test_a_reload_of_a_hostile_file_is_refused_in_one_line(tmp_path, monkeypatch, caplog):
    """SIGHUP with a file nested 500 deep: one ERROR line, no traceback, the running configuration stays."""
    path = tmp_path / "c.toml"
    path.write_text("[tun]\nmtu = 1500\n")
    got = {}
    monkeypatch.setattr(cli, "_run", lambda config, reread=None: got.update(config=config, reread=reread) or 0)
    assert cli.main(["run", "--config", str(path)]) == 0
    state = {"config": got["config"]}
    for text in ("a = " + "[" * 500 + "]" * 500 + "\n", "# " + "x" * (1 << 20) + "\n"):
        path.write_text(text)
        caplog.clear()
        cli._reload(None, None, state, got["reread"])
        assert state["config"] is got["config"]
        assert [(r.levelname, r.exc_info) for r in caplog.records] == [("ERROR", None)], caplog.text
        assert "not reloaded" in caplog.text and str(path) in caplog.text and caplog.text.count("\n") == 1


def test_a_missing_lan_interface_is_named_as_the_user_gave_it(tmp_path):
    """From the file: the key (gateway.lan_interfaces) and its line; from the flag: --lan-interface."""
    path = tmp_path / "c.toml"
    path.write_text('[tun]\nauto_route = true\n\n[gateway]\nlan_interfaces = ["zt-nosuch0"]\n')
    parser = cli.build_parser()
    c = cli.load_config(parser.commands["run"], parser.parse_args(["run", "--config", str(path)]))
    with pytest.raises(cli.ConfigError) as e:
        cli._check_lan_interfaces(c)
    assert str(e.value) == f"{path}: line 5: gateway.lan_interfaces: 'zt-nosuch0': no such interface"
    c = cli.load_config(parser.commands["run"], parser.parse_args(["run", "--config", str(path), "--lan-interface", "zt-nosuch1"]))
    with pytest.raises(cli.ConfigError) as e:
        cli._check_lan_interfaces(c)
    assert str(e.value) == "argument --lan-interface: 'zt-nosuch1': no such interface"
    c = cli.load_config(parser.commands["run"], parser.parse_args(["run", "--lan-interface", "lo"]))
    cli._check_lan_interfaces(c)  # there


def test_status_takes_the_names_run_takes():
    """--control-socket, --config and --tun-name mean the same in status as in run; --socket is the old name."""
    parser = cli.build_parser()
    for argv in (["--control-socket", "/tmp/a.sock"], ["--socket", "/tmp/a.sock"]):
        assert parser.parse_args(["status", *argv]).control_socket == "/tmp/a.sock"
    args = parser.parse_args(["status", "--config", "/tmp/c.toml", "--tun-name", "zt-e0"])
    assert (args.config, args.tun_name) == ("/tmp/c.toml", "zt-e0")
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert "--socket " not in commands.choices["status"].format_help()  # hidden


# -- --check-outbounds: a failed probe at start-up is fatal (#18) ------------------------------


def test_check_outbounds_first_round_is_fatal_with_one_reason(caplog):
    import socket as _socket

    from ztun.appliance.health import HealthCheck
    from ztun.errors import ZtunError
    from ztun.loop import Loop
    from ztun.outbound.socks5 import Socks5Outbound

    listener = _socket.create_server(("127.0.0.1", 0))
    address = listener.getsockname()
    listener.close()

    class Interrupts:
        def check(self):
            pass

    with Loop() as loop:
        outbounds = {"proxy": Socks5Outbound(loop, *address, name="proxy")}
        health = HealthCheck(loop, lambda: outbounds, 60)
        with pytest.raises(ZtunError) as e:
            cli._first_round(loop, health, Interrupts())
        health.close()
    assert str(e.value) == (f"outbound proxy failed its health check: socks5 proxy 127.0.0.1:{address[1]}: "
                            f"connect: Connection refused")
    assert not [r for r in caplog.records if r.name == "ztun.health"]  # the error line says it, once


def test_check_outbounds_first_round_passes_with_nothing_to_probe():
    from ztun.appliance.health import HealthCheck
    from ztun.loop import Loop
    from ztun.outbound.block import BlockOutbound

    class Interrupts:
        def check(self):
            pass

    with Loop() as loop:
        health = HealthCheck(loop, lambda: {"block": BlockOutbound(loop)}, 60)
        cli._first_round(loop, health, Interrupts())  # returns at once: the loop never runs
        health.close()


def test_fail_closed_is_on_by_default_and_the_flag_turns_it_off():
    parser = cli.build_parser()
    assert cli.load_config(parser.commands["run"], parser.parse_args(["run"])).tun.fail_closed is True
    args = parser.parse_args(["run", "--no-fail-closed"])
    assert cli.load_config(parser.commands["run"], args).tun.fail_closed is False
