"""The `ztun-appliance` command: run the gateway in the foreground, check a configuration, clean up after a crashed run, print the version."""

import argparse
import errno
import gc
import logging
import signal
import socket
import sys

from .. import __version__, _fast
from ..errors import ConfigError, RouteError, TunError, ZtunError
from ..loop import Loop
from ..tun.options import TunOptions
from . import config as config_mod
from .config import AppConfig

log = logging.getLogger("ztun.appliance")

PROG = "ztun-appliance"
STATS_INTERVAL = 10.0

RUN_FLAGS = config_mod.FLAGS  # argparse dest -> (config key, flag)


def _int(text: str) -> int:
    """An integer in decimal or with a 0x / 0o / 0b prefix."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None


def _seconds(text: str) -> float:
    """A number; its range is checked with the config's (one copy of each limit)."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None


def _common(p: argparse.ArgumentParser) -> None:
    # Unset flags stay out of args entirely: the config's dataclasses hold the one copy of every default.
    p.argument_default = argparse.SUPPRESS
    p.add_argument("--tun-name", dest="name", metavar="NAME", help="TUN interface name (default ztun0)")
    p.add_argument("--table", type=_int, metavar="N", help="ztun's routing table (default 2022)")
    p.add_argument("--rule-priority", type=_int, metavar="N", help="first of ztun's 10 rule priorities (default 9000)")
    p.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (default INFO)")


def _run_flags(p: argparse.ArgumentParser) -> None:
    _common(p)
    bool_flag = argparse.BooleanOptionalAction
    p.add_argument("--mtu", type=_int, metavar="N", help="TUN MTU, 576..65535, >= 1280 with IPv6 (default 65535)")
    p.add_argument("--inet4", metavar="CIDR", help="the stack's IPv4 address and prefix, or 'none' (default 172.19.0.1/28)")
    p.add_argument("--inet6", metavar="CIDR", help="the stack's IPv6 address and prefix, or 'none' (default fdfe:dcba:9876::1/124)")
    p.add_argument("--route", dest="routes", action="append", metavar="CIDR", help="route CIDR into the TUN (repeatable; replaces tun.routes)")
    p.add_argument("--exclude-route", dest="exclude_routes", action="append", metavar="CIDR", help="keep CIDR out of the TUN (repeatable; replaces tun.exclude_routes)")
    p.add_argument("--auto-route", action=bool_flag, help="send all traffic through the TUN but ztun's own, loopback and excluded")
    p.add_argument("--strict-route", action=bool_flag,
                   help="with --auto-route: only directly connected subnets (and exclusions) bypass the TUN; "
                        "a family with no TUN address becomes unreachable")
    p.add_argument("--fail-closed", action=bool_flag,
                   help="keep what is routed into the TUN unreachable if ztun dies, until the next run or cleanup "
                        "(default on)")
    p.add_argument("--fwmark", type=_int, metavar="N", help="fwmark of ztun's own sockets, skipped by its rules (default 0x2022)")
    p.add_argument("--outbound-interface", metavar="auto|NAME",
                   help="bind ztun's own sockets to this interface instead of marking them: auto follows the "
                        "default route's interface (the default on macOS and Windows; Linux uses the fwmark)")
    p.add_argument("--offload", choices=("auto", "on", "off"), metavar="auto|on|off",
                   help="IFF_VNET_HDR with checksum and TCP segmentation offload: TCP moves as 64 KiB "
                        "super-packets; auto (the default) is on with Linux TUN, off elsewhere")
    p.add_argument("--napi", choices=("auto", "on", "off"), metavar="auto|on|off",
                   help="Linux: the kernel receives what ztun writes into the TUN in a NAPI thread on another core; "
                        "auto switches it on while the loop is saturated with large packets, on always, off never; "
                        "the default is off with offload, auto without")
    p.add_argument("--lan-interface", dest="lan_interfaces", action="append", metavar="NAME",
                   help="serve hosts on this interface as their gateway (repeatable): checks that forwarding is on")
    p.add_argument("--enable-forwarding", action=bool_flag,
                   help="with --lan-interface: turn forwarding on if it is off, and restore it on exit")
    p.add_argument("--udp-timeout", type=_seconds, metavar="SECONDS", help="idle timeout of a UDP session (default 60)")
    p.add_argument("--connect-timeout", type=_seconds, metavar="SECONDS", help="outbound TCP connect timeout (default 10)")
    p.add_argument("--tcp-idle-timeout", type=_seconds, metavar="SECONDS", help="idle timeout of a relayed TCP connection (default 7200)")
    p.add_argument("--max-pending-connects", type=_int, metavar="N",
                   help="outbound TCP connects not yet relayed, in all (default 4096): beyond it new SYNs are dropped")
    p.add_argument("--max-pending-per-client", type=_int, metavar="N",
                   help="outbound TCP connects not yet relayed, per client address (default 512)")
    p.add_argument("--outbound", metavar="URL",
                   help="socks5://[user:password@]host[:port] (port 1080 if left out): defines outbound 'proxy' "
                        "and makes it the default route; "
                        "or 'direct' / 'block' as the default route")
    p.add_argument("--dns-mode", metavar="MODE", help="off, fake-ip or forward (default off)")
    p.add_argument("--dns-upstream", metavar="ADDRESS:PORT",
                   help="the DNS server queries go to (port 53 if left out): forward mode's every query, fake-ip's other types")
    p.add_argument("--dns-fake-ip4", metavar="CIDR", help="fake-ip mode's IPv4 pool, or 'none' (default 198.18.0.0/15)")
    p.add_argument("--dns-fake-ip6", metavar="CIDR", help="fake-ip mode's IPv6 pool, or 'none' (default fc00::/18)")
    p.add_argument("--health-interval", type=_seconds, metavar="SECONDS",
                   help="probe each socks5 outbound (connect, greeting, auth) this often; 0: at start-up only (default 60)")
    p.add_argument("--check-outbounds", action=bool_flag,
                   help="a socks5 outbound failing its probe at start-up is fatal: exit 1 before ready")
    p.add_argument("--log-format", metavar="FORMAT", help="text or json (default text)")
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="serve Prometheus metrics there (default off)")
    p.add_argument("--api-listen", metavar="HOST:PORT",
                   help="serve the web view (/ui/) and the Clash-compatible API there (default off; "
                        "beyond loopback it needs --api-secret)")
    p.add_argument("--api-secret", metavar="TOKEN",
                   help="the API's Bearer token (better in the file: a flag shows in ps); required for changes")
    p.add_argument("--api-allow-origin", dest="api_allow_origins", action="append", metavar="ORIGIN",
                   help="a browser origin allowed to call the API, e.g. http://yacd.example (repeatable; '*' for any)")
    p.add_argument("--control-socket", metavar="PATH",
                   help="unix socket of `ztun-appliance status` (default /run/ztun/TUN-NAME.sock)")


def _config_command(sub, name: str, **texts) -> argparse.ArgumentParser:
    """A command reading the configuration file of --config with every run flag over it."""
    p = sub.add_parser(name, **texts)
    p.add_argument("--config", metavar="FILE", help="TOML configuration file (see the README's Configuration)")
    _run_flags(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="ztun: a transparent TUN gateway.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _config_command(sub, "run", help="run the gateway in the foreground until SIGINT/SIGTERM",
                          description="Create and configure the TUN device, route traffic into it and answer it. "
                                      "SIGINT or SIGTERM removes everything it added and exits 0. "
                                      "Flags override the values of --config FILE.")
    check = _config_command(sub, "check-config", help="validate a configuration file and print the effective configuration",
                            description="Validate FILE (with any run flags applied over it) without touching the system, "
                                        "print the effective configuration (passwords redacted) and exit 0; "
                                        "an invalid configuration exits 2 naming the key, its line and what is expected.")
    # FILE may come as --config FILE, as for run, or as the positional argument it always took.
    check.add_argument("config_file", nargs="?", metavar="FILE", help="the same as --config FILE")

    cleanup = sub.add_parser("cleanup", help="remove what a crashed run left behind (rules, routes)",
                             description="Remove the rules in ztun's priority range and the routes in its table, "
                                         "as a run that was killed left them. Refuses while the TUN device is in use.")
    cleanup.add_argument("--config", metavar="FILE", help="the configuration the crashed run used (for tun.name, table, rule_priority)")
    _common(cleanup)

    st = sub.add_parser("status", help="print the running appliance's counters and flows",
                        description="Ask the running appliance over its control socket (root only) for its counters, "
                                    "drops by reason, flows by state, outbound errors and the current flows.")
    from .status import add_status_arguments

    add_status_arguments(st)

    sub.add_parser("version", help="print the version")
    parser.commands = {"run": run, "check-config": check, "cleanup": cleanup}  # for errors found after parsing
    return parser


def load_config(parser: argparse.ArgumentParser, args, *, flag_errors_exit: bool = True) -> AppConfig:
    """The file of --config (or check-config's FILE) with every flag given on top; a bad flag exits 2 via parser.error
    (or, with flag_errors_exit False, raises ConfigError like any other error: a reload must not exit)."""
    overrides = {key: (getattr(args, dest), flag) for dest, (key, flag) in RUN_FLAGS.items() if hasattr(args, dest)}
    try:
        return config_mod.load(getattr(args, "config", None), overrides)
    except ConfigError as e:
        if flag_errors_exit and getattr(e, "flag", None):
            parser.error(str(e))
        raise


class _Stop(BaseException):
    """SIGINT/SIGTERM before the loop runs: unwinds the setup, which undoes what it did."""


class _Interrupts:
    """Signal handlers for the time the loop does not run: they only record the request.

    Raising from the handler is unsafe: it can land between a netlink request the kernel carried
    out and its undo record (a route added, never removed) or in a GC callback (where it is
    swallowed).
    The setup checks `requested` between its steps instead; it takes a fraction of a second.
    """

    def __init__(self):
        self.tearing_down = False
        self.requested = False
        self.previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        if hasattr(signal, "SIGHUP"):  # a reload before the loop runs has nothing to reload yet
            self.previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, _ignored)

    def _handler(self, signum, frame):
        self.requested = True

    def check(self):
        if self.requested and not self.tearing_down:
            raise _Stop()

    def restore(self):
        for s, h in self.previous.items():
            signal.signal(s, h)


def _ignored(signum, frame):
    pass


def _run(config: AppConfig, reread=None) -> int:
    """Run until SIGINT/SIGTERM; reread() gives the configuration again for SIGHUP (None: no reload)."""
    from . import sdnotify
    from .app import Snapshot, build_handler, tun_options
    from .gateway import Gateway
    from .health import HealthCheck
    from .logfmt import DropWarner
    from .status import ControlServer, split_stats

    from ..tun.device import check_privilege

    check_privilege(config.tun)  # before anything is touched: a run without privilege says so, in one line
    _check_lan_interfaces(config)
    interrupts = _Interrupts()
    loop = gateway = forwarder = control = metrics = api = drops = health = None
    state = {"config": config}
    try:
        loop = Loop()
        interrupts.check()
        forwarder = build_handler(loop, config)  # resolves proxy names now, before any route exists
        health = HealthCheck(loop, lambda: forwarder.outbounds, config.health.interval)
        if config.health.check_outbounds:  # probe before anything is touched; fatal if one fails
            _first_round(loop, health, interrupts)
        gateway = Gateway(tun_options(config, forwarder.outbounds), udp_timeout=config.flows.udp_timeout,
                          udp_max_sessions=config.flows.udp_max_sessions,
                          lan_interfaces=config.gateway.lan_interfaces, enable_forwarding=config.gateway.enable_forwarding,
                          egress=forwarder.outbounds["direct"].egress)
        snapshot = Snapshot(gateway, forwarder)
        # Before the device: a second appliance on the same socket fails before touching routes.
        if hasattr(socket, "AF_UNIX"):
            control = ControlServer(loop, config.control.socket, snapshot)
        else:
            log.warning("no unix sockets on this platform: `ztun-appliance status` is not available")
        gateway.open()
        interrupts.check()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, _stopping, loop, signum)
        if reread is not None and hasattr(signal, "SIGHUP"):
            loop.add_signal_handler(signal.SIGHUP, _reload, loop, forwarder, state, reread, health)
        gateway.attach(loop, forwarder)
        if not config.health.check_outbounds:
            loop.call_soon(health.check)
        if config.metrics.listen:
            from .metrics import MetricsServer

            metrics = MetricsServer(loop, config.metrics.listen, snapshot)
        if config.api.listen:
            from .api import ApiServer

            api = ApiServer(loop, config.api.listen, snapshot, secret=config.api.secret,
                            allow_origins=config.api.allow_origins)
        drops = DropWarner(loop, lambda: split_stats(gateway.stack.stats())[2] if gateway.stack is not None else {})
        if log.isEnabledFor(logging.DEBUG):
            _log_stats_every(loop, gateway, STATS_INTERVAL)
        interrupts.check()
        log.info("ready: %s; %s; %s", gateway.describe(), _describe_flows(config, forwarder), _fast.describe())
        sdnotify.ready(gateway.describe())
        # What setup made lives as long as the run: keep it out of every later GC pass.
        gc.collect()
        gc.freeze()
        loop.run()
    except _Stop:
        log.info("interrupted during setup")
    finally:
        # Nothing may interrupt the teardown: a second signal just waits for it.
        interrupts.tearing_down = True
        sdnotify.stopping()
        for part in (drops, api, metrics, control, health):
            if part is not None:
                part.close()
        if forwarder is not None:
            forwarder.close()
        if gateway is not None:
            if gateway.stack is not None:
                log.info("stats: %s", _fmt(gateway.stack.stats()))
            gateway.close()
        if loop is not None:
            loop.close()  # puts interrupts' handlers back, which now ignore signals
        interrupts.restore()
    if gateway is not None and gateway.failure is not None:
        raise gateway.failure
    log.info("stopped; everything ztun added is removed")
    return 0


def _first_round(loop, health, interrupts) -> None:
    """--check-outbounds: run the loop until every outbound answered its first probe; one failing is a ZtunError."""
    health.quiet = True
    health.check(on_round=loop.stop)
    if health.probes:
        loop.run()  # each probe ends within connect_timeout; SIGINT/SIGTERM are only recorded meanwhile
    health.quiet = False
    interrupts.check()
    failing = health.failing()
    if failing:
        name, error = next(iter(failing.items()))
        more = f" (and {len(failing) - 1} more)" if len(failing) > 1 else ""
        raise ZtunError(f"outbound {name} failed its health check: {error}{more}")


def _check_lan_interfaces(config: AppConfig) -> None:
    """Each LAN interface, and a named outbound interface, exists on this host: checked at run, not by
    check-config (a file may be checked elsewhere)."""
    for name in config.gateway.lan_interfaces:
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise config_mod.config_error(config, ("gateway", "lan_interfaces"), f"{name!r}: no such interface") from None
    name = config.tun.outbound_interface
    if name not in (None, "auto"):
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise config_mod.config_error(config, ("tun", "outbound_interface"),
                                          f"{name!r}: no such interface (name the uplink, or \"auto\")") from None


def _describe_flows(config: AppConfig, forwarder) -> str:
    rules = len(config.route.rules)
    parts = [f"default outbound {config.route.default}", f"{rules} rule{'s' * (rules != 1)}"]
    proxies = [f"{o.name}=socks5 {o.host}:{o.port}" for o in config.outbounds if o.type == "socks5"]
    if proxies:
        parts.append(", ".join(proxies))
    parts.append(f"dns {config.dns.mode}")
    parts.append(f"ICMP echo {'answered' if forwarder.icmp_echo == 'reply' else 'answered unless blocked'}")
    return "; ".join(parts)


def _stopping(loop, signum):
    from . import sdnotify

    log.info("%s: shutting down", signal.Signals(signum).name)
    sdnotify.stopping()
    loop.stop()


def _reload(loop, forwarder, state, reread, health=None):
    """SIGHUP: read the configuration again; new outbounds and rules apply to new flows, open flows keep theirs."""
    from .app import reload

    try:
        new = reread()
        warnings = reload(forwarder, loop, state["config"], new)
    except (ConfigError, ValueError, OSError) as e:
        log.error("SIGHUP: configuration not reloaded, the running one stays: %s", e)
        return
    for w in warnings:
        log.warning("SIGHUP: %s", w)
    state["config"] = new
    if health is not None:  # new outbounds are probed now, not an interval later
        health.interval = new.health.interval
        health.check()
    log.info("SIGHUP: reloaded %s: %s", new.source or "the flags", _describe_flows(new, forwarder))


def _log_stats_every(loop, gateway, interval):
    def tick():
        if gateway.stack is not None:
            log.debug("stats: %s", _fmt(gateway.stack.stats()))
            loop.call_later(interval, tick)

    loop.call_later(interval, tick)


def _fmt(stats: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in stats.items())


def _cleanup(options: TunOptions) -> int:
    from ..system.router import open_router
    from ..tun.device import has_net_admin

    if sys.platform.startswith("linux") and not has_net_admin():
        raise RouteError("cleanup: needs root or CAP_NET_ADMIN")  # this one line, exit 1
    # macOS and Windows: the router takes the route journal of this TUN name, which a running
    # appliance holds (RouteError EBUSY).
    router = open_router(options.name)
    try:
        # Checked without attaching: attaching would rewrite a persistent device's flags.
        if router.tun_attached(options.name):
            raise TunError(f"{options.name} is in use by a running ztun-appliance; stop it instead of cleaning up", errno.EBUSY)
        removed = router.remove_leftovers(options.table, options.rule_priorities)
        policy = router.policy_routing
    finally:
        router.close()
    if policy:
        print(f"{PROG}: removed {removed} leftover rules and routes (ztun's, found by their tag in any table; "
              f"untagged ones of older runs in table {options.table}, priorities {options.rule_priority}..{options.rule_priority + 9})")
    else:
        print(f"{PROG}: removed {removed} leftover routes (those the route journal of TUN name {options.name} names)")
    return 0


def _check_config(config: AppConfig) -> int:
    print(f"# effective configuration of {config.source} (passwords redacted)")
    print(config_mod.format_config(config), end="")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "status":
        from .status import run_status

        return run_status(args)
    if args.command == "version":
        print(f"ztun {__version__} ({_fast.describe()})")  # names each module when the core is mixed
        return 0
    if args.command == "check-config":
        file = getattr(args, "config_file", None)
        if file is not None and args.config is not None and file != args.config:
            parser.commands["check-config"].error("give FILE once: as --config FILE or as the argument")
        if file is None and args.config is None:
            parser.commands["check-config"].error("the configuration to check is missing: give FILE (or --config FILE)")
        args.config = args.config or file
    try:
        config = load_config(parser.commands[args.command], args)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        return _check_config(config)
    from .logfmt import setup_logging

    setup_logging(config.log.level, config.log.format)
    try:
        if args.command == "run":
            return _run(config, reread=lambda: load_config(parser.commands["run"], args, flag_errors_exit=False))
        return _cleanup(config.tun)
    except ZtunError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
