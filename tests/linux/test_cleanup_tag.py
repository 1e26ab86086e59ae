"""Cleanup by tag: ztun's rules and routes carry its protocol number, so `cleanup` with defaults finds a crashed run's
whatever its table and rule priorities; a ztun still running is left alone, and non-root gets one line."""

import signal
import sys

import pytest
from conftest import need

from ztun.system.router_linux import ZTUN_PROTO

pytestmark = pytest.mark.linux_root

# A crashed run with a table and priorities of its own; its excluded prefixes leave throw routes (no device).
CRASHED = ["--tun-name", "zt-tag0", "--inet4", "198.18.0.1/30", "--inet6", "fd00:18::1/126", "--auto-route",
           "--exclude-route", "198.19.5.0/24", "--exclude-route", "fd00:19:5::/64",
           "--table", "3033", "--rule-priority", "8000"]
# Another ztun, still running, with yet another table and priorities.
RUNNING = ["--tun-name", "zt-live0", "--inet4", "198.18.0.5/30", "--inet6", "fd00:18::5/126",
           "--route", "198.19.0.0/16", "--route", "fd00:19::/64", "--exclude-route", "198.19.6.0/24",
           "--table", "4044", "--rule-priority", "7000"]


def tagged(ns) -> list:
    """Every rule and route in ns carrying ztun's protocol number, one line each."""
    proto = f" proto {ZTUN_PROTO}"
    rules = [line.replace(" [detached]", "") for fam in ("-4", "-6") for line in ns.ip(fam, "rule").splitlines()
             if line.endswith(proto) or proto + " " in line]
    routes = [f"{fam} {line}" for fam in ("-4", "-6")
              for line in ns.ip(fam, "route", "show", "table", "all", "proto", str(ZTUN_PROTO)).splitlines()]
    return rules + routes


def cleanup(ns, *args, user=()):
    return ns.run(*user, sys.executable, "-m", "ztun.appliance", "cleanup", *args, check=False)


def test_cleanup_with_defaults_removes_a_crashed_runs_tagged_rules_and_routes(netns):
    before = netns.snapshot()
    live = netns.appliance(*RUNNING).wait_ready()
    mine = tagged(netns)
    assert any("lookup 4044" in line for line in mine) and any("table 4044" in line for line in mine), mine
    with_live = netns.snapshot()

    crashed = netns.appliance(*CRASHED).wait_ready()
    assert set(mine) <= set(tagged(netns)), "a second ztun's start must leave a running one's rules and routes alone"
    crashed.send(signal.SIGKILL)
    assert crashed.wait() == -signal.SIGKILL
    left = [line for line in tagged(netns) if line not in mine]
    assert any(line.startswith("8001:") for line in left) and any("throw 198.19.5.0/24" in line for line in left), left

    r = cleanup(netns)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"removed {len(left)} " in r.stdout, (r.stdout, left)
    assert tagged(netns) == mine
    assert netns.snapshot() == with_live
    assert cleanup(netns).stdout.count("removed 0 ") == 1  # nothing twice

    assert live.stop() == 0, live.log
    assert netns.snapshot() == before


def test_cleanup_still_removes_untagged_leftovers_of_older_runs(netns):
    netns.ip("link", "set", "lo", "up")
    before = netns.snapshot()
    netns.ip("rule", "add", "priority", "9003", "lookup", "2022")
    netns.ip("-6", "rule", "add", "priority", "9009", "nop")
    netns.ip("route", "add", "throw", "198.19.9.0/24", "table", "2022")
    netns.ip("rule", "add", "priority", "8500", "lookup", "3033")  # not ztun's: no tag, other priorities
    r = cleanup(netns)
    assert r.returncode == 0 and "removed 3 " in r.stdout, r.stdout + r.stderr
    netns.ip("rule", "del", "priority", "8500")
    assert netns.snapshot() == before


@pytest.mark.parametrize("who", ["nobody", "root-without-net-admin"])
def test_cleanup_without_privilege_is_one_line(netns, who):
    need("setpriv", "util-linux")
    if who == "nobody":
        user = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")
    else:  # runs wherever root does: uid 0 whose bounding set lacks CAP_NET_ADMIN, so its exec has none
        user = ("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin")
    probe = netns.run(*user, sys.executable, "-c", "import ztun.appliance.cli, ztun.system.router_linux", check=False)
    if probe.returncode != 0:
        pytest.skip(f"{who} cannot run this Python/checkout: {(probe.stderr.strip().splitlines() or ['?'])[-1]}")
    netns.ip("rule", "add", "priority", "8005", "nop", "protocol", str(ZTUN_PROTO))
    netns.ip("rule", "add", "priority", "9005", "nop")  # an older run's, untagged
    r = cleanup(netns, user=user)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stdout + r.stderr
    assert lines[0].startswith("ztun-appliance: error: ") and "needs root or CAP_NET_ADMIN" in lines[0], lines
    assert "{" not in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert f"proto {ZTUN_PROTO}" in netns.ip("rule")
