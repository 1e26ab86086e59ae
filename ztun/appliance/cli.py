"""The `ztun-appliance` command: run the gateway in the foreground, clean up after a crashed run, print the version."""

import argparse
import errno
import gc
import logging
import signal
import sys

from .. import __version__
from ..errors import ConfigError, TunError, ZtunError
from ..tun.loop import Loop
from ..tun.options import TunOptions

log = logging.getLogger("ztun.appliance")

PROG = "ztun-appliance"
STATS_INTERVAL = 10.0

# TunOptions field -> the flag that sets it, so a rejected value names the flag.
FLAGS = {
    "name": "--tun-name",
    "mtu": "--mtu",
    "inet4": "--inet4",
    "inet6": "--inet6",
    "routes": "--route",
    "exclude_routes": "--exclude-route",
    "auto_route": "--auto-route",
    "strict_route": "--strict-route",
    "table": "--table",
    "rule_priority": "--rule-priority",
    "fwmark": "--fwmark",
    "offload": "--offload",
}


def _int(text: str) -> int:
    """An integer in decimal or with a 0x / 0o / 0b prefix."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds: {text!r}") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 86400 seconds, got {text}")
    return value


def _prefix_or_none(text: str):
    return None if text.lower() in ("none", "off", "") else text


def _level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise argparse.ArgumentTypeError(f"must be DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return level


def _common(p: argparse.ArgumentParser) -> None:
    # Unset flags stay out of args entirely: TunOptions holds the one copy of every default.
    p.set_defaults(log_level="INFO")
    p.argument_default = argparse.SUPPRESS
    p.add_argument("--tun-name", dest="name", metavar="NAME", help="TUN interface name (default ztun0)")
    p.add_argument("--table", type=_int, metavar="N", help="ztun's routing table (default 2022)")
    p.add_argument("--rule-priority", type=_int, metavar="N", help="first of ztun's 10 rule priorities (default 9000)")
    p.add_argument("--log-level", type=_level, metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (default INFO)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="ztun: a transparent TUN gateway.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the gateway in the foreground until SIGINT/SIGTERM",
                         description="Create and configure the TUN device, route traffic into it and answer it. "
                                     "SIGINT or SIGTERM removes everything it added and exits 0.")
    _common(run)
    run.add_argument("--mtu", type=_int, metavar="N", help="TUN MTU, 576..65535, >= 1280 with IPv6 (default 65535)")
    run.add_argument("--inet4", type=_prefix_or_none, metavar="CIDR", help="the stack's IPv4 address and prefix, or 'none' (default 172.19.0.1/30)")
    run.add_argument("--inet6", type=_prefix_or_none, metavar="CIDR", help="the stack's IPv6 address and prefix, or 'none' (default fdfe:dcba:9876::1/126)")
    run.add_argument("--route", dest="routes", action="append", metavar="CIDR", help="route CIDR into the TUN (repeatable)")
    run.add_argument("--exclude-route", dest="exclude_routes", action="append", metavar="CIDR", help="keep CIDR out of the TUN (repeatable)")
    run.add_argument("--auto-route", action="store_true", help="send all traffic through the TUN but ztun's own, loopback and excluded")
    run.add_argument("--strict-route", action="store_true", help="with --auto-route: make a family with no TUN address unreachable")
    run.add_argument("--fwmark", type=_int, metavar="N", help="fwmark of ztun's own sockets, skipped by its rules (default 0x2022)")
    run.add_argument("--offload", choices=("auto", "on", "off"), metavar="auto|on|off",
                     help="IFF_VNET_HDR with checksum and TCP segmentation offload: TCP moves as 64 KiB "
                          "super-packets; auto (the default) is on with Linux TUN, off elsewhere")
    run.add_argument("--lan-interface", dest="lan_interfaces", action="append", metavar="NAME",
                     help="serve hosts on this interface as their gateway (repeatable): checks that forwarding is on")
    run.add_argument("--enable-forwarding", action="store_true",
                     help="with --lan-interface: turn forwarding on if it is off, and restore it on exit")
    run.add_argument("--udp-timeout", type=_seconds, metavar="SECONDS", help="idle timeout of a UDP session (default 60)")
    run.add_argument("--connect-timeout", type=_seconds, metavar="SECONDS", help="outbound TCP connect timeout (default 10)")

    cleanup = sub.add_parser("cleanup", help="remove what a crashed run left behind (rules, routes)",
                             description="Remove the rules in ztun's priority range and the routes in its table, "
                                         "as a run that was killed left them. Refuses while the TUN device is in use.")
    _common(cleanup)

    sub.add_parser("version", help="print the version")
    parser.commands = {"run": run, "cleanup": cleanup}  # for errors found after parsing
    return parser


def _options(parser, args, fields) -> TunOptions:
    kw = {f: getattr(args, f) for f in fields if hasattr(args, f)}
    if "offload" in fields:
        mode = kw.get("offload", "auto")  # auto: on where there is a kernel offload to use (Linux)
        kw["offload"] = mode == "on" or (mode == "auto" and sys.platform.startswith("linux"))
    for f in ("routes", "exclude_routes"):
        if f in kw:
            kw[f] = tuple(kw[f])
    try:
        return TunOptions(**kw)
    except ConfigError as e:
        field = getattr(e, "field", None)
        reason = str(e).split(": ", 1)[1] if field and str(e).startswith(f"{field}: ") else str(e)
        parser.error(f"argument {FLAGS.get(field, field)}: {reason}")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Their debug output is every netlink message; ztun's own DEBUG is what is asked for.
    for noisy in ("pyroute2", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.getLogger().level, logging.WARNING))


class _Stop(BaseException):
    """SIGINT/SIGTERM before the loop runs: unwinds the setup, which undoes what it did."""


class _Interrupts:
    """Signal handlers for the time the loop does not run: they only record the request.

    Raising from the handler is unsafe: it can land inside pyroute2's own asyncio loop (which
    then loses its netlink transport and hangs) or in a GC callback (where it is swallowed).
    The setup checks `requested` between its steps instead; it takes a fraction of a second.
    """

    def __init__(self):
        self.tearing_down = False
        self.requested = False
        self.previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def _handler(self, signum, frame):
        self.requested = True

    def check(self):
        if self.requested and not self.tearing_down:
            raise _Stop()

    def restore(self):
        for s, h in self.previous.items():
            signal.signal(s, h)


def _run(options: TunOptions, udp_timeout: float = 60.0, connect_timeout: float = 10.0, lan_interfaces=(), enable_forwarding=False) -> int:
    from ..outbound.direct import DirectOutbound
    from .forwarder import Forwarder
    from .gateway import Gateway

    interrupts = _Interrupts()
    loop = gateway = forwarder = None
    try:
        loop = Loop()
        interrupts.check()
        gateway = Gateway(options, udp_timeout=udp_timeout, lan_interfaces=lan_interfaces, enable_forwarding=enable_forwarding)
        gateway.open()
        interrupts.check()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, _stopping, loop, signum)
        forwarder = Forwarder(loop, DirectOutbound(loop, fwmark=options.fwmark, connect_timeout=connect_timeout))
        gateway.attach(loop, forwarder)
        if log.isEnabledFor(logging.DEBUG):
            _log_stats_every(loop, gateway, STATS_INTERVAL)
        interrupts.check()
        log.info("ready: %s; TCP and UDP go direct, ICMP echo is answered", gateway.describe())
        # What setup made lives as long as the run: keep it out of every later GC pass.
        gc.collect()
        gc.freeze()
        loop.run()
    except _Stop:
        log.info("interrupted during setup")
    finally:
        # Nothing may interrupt the teardown: a second signal just waits for it.
        interrupts.tearing_down = True
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


def _stopping(loop, signum):
    log.info("%s: shutting down", signal.Signals(signum).name)
    loop.stop()


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

    router = open_router()
    try:
        # Checked without attaching: attaching would rewrite a persistent device's flags.
        if getattr(router, "tun_attached", None) and router.tun_attached(options.name):
            raise TunError(f"{options.name} is in use by a running ztun-appliance; stop it instead of cleaning up", errno.EBUSY)
        removed = router.remove_leftovers(options.table, options.rule_priorities)
    finally:
        router.close()
    print(f"{PROG}: removed {removed} leftover rules and routes (table {options.table}, "
          f"priorities {options.rule_priority}..{options.rule_priority + 9})")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        from .. import _fast

        print(f"ztun {__version__} ({_fast.IMPLEMENTATION} packet core)")
        return 0
    _setup_logging(args.log_level)
    command = parser.commands[args.command]
    try:
        if args.command == "run":
            return _run(_options(command, args, ("name", "mtu", "inet4", "inet6", "routes", "exclude_routes",
                                                "auto_route", "strict_route", "table", "rule_priority", "fwmark", "offload")),
                        udp_timeout=getattr(args, "udp_timeout", 60.0),
                        connect_timeout=getattr(args, "connect_timeout", 10.0),
                        lan_interfaces=getattr(args, "lan_interfaces", ()),
                        enable_forwarding=getattr(args, "enable_forwarding", False))
        return _cleanup(_options(command, args, ("name", "table", "rule_priority")))
    except ZtunError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
