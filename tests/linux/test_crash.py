"""Crash safety: after SIGKILL the next run starts cleanly, `cleanup` restores the namespace, a running instance is left alone."""

import signal
import sys
import time

import pytest
from conftest import need, received

pytestmark = pytest.mark.linux_root

ARGS = ["--tun-name", "zt-crash0", "--inet4", "198.18.0.1/30", "--inet6", "fd00:18::1/126", "--auto-route",
        "--exclude-route", "198.19.5.0/24"]


def ztun_rules(ns) -> list:
    """ztun's rules (priorities 9000..9009); `[detached]` marks an iif rule whose device is gone."""
    return [line.replace(" [detached]", "") for fam in ("-4", "-6") for line in ns.ip(fam, "rule").splitlines()
            if line.startswith("900")]


def test_sigkill_then_restart_then_cleanup(netns):
    need("ping", "iputils-ping")
    before = netns.snapshot()
    app = netns.appliance(*ARGS).wait_ready()
    rules = ztun_rules(netns)
    app.send(signal.SIGKILL)
    assert app.wait() == -signal.SIGKILL
    assert ztun_rules(netns) == rules, "a killed run leaves its rules behind"
    assert "zt-crash0" not in netns.ip("link")  # the kernel removes a non-persistent TUN with its fd

    again = netns.appliance(*ARGS).wait_ready()
    assert "leftover rules and routes of an earlier run" in again.log
    assert received(netns.ping("-c", "2", "-i", "0.2", "-W", "5", "198.19.77.5")) == (2, 2)
    assert ztun_rules(netns) == rules  # one set, not two
    again.send(signal.SIGKILL)
    again.wait()

    r = netns.run(sys.executable, "-m", "ztun.appliance", "cleanup", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "removed" in r.stdout
    assert netns.snapshot() == before


def test_cleanup_and_a_second_instance_leave_a_running_one_alone(netns):
    app = netns.appliance(*ARGS).wait_ready()
    running = netns.snapshot()
    r = netns.run(sys.executable, "-m", "ztun.appliance", "cleanup", "--tun-name", "zt-crash0", check=False)
    assert r.returncode == 1 and r.stderr.startswith("ztun-appliance: error: zt-crash0 is in use"), r.stderr
    second = netns.appliance(*ARGS)
    assert second.wait() == 1
    assert "is in use by another process" in second.log and "Traceback" not in second.log
    assert netns.snapshot() == running
    assert app.stop() == 0, app.log


def test_cleanup_leaves_an_idle_persistent_device_alone(netns):
    netns.ip("tuntap", "add", "dev", "zt-crash0", "mode", "tun", "vnet_hdr")
    before = netns.snapshot()
    r = netns.run(sys.executable, "-m", "ztun.appliance", "cleanup", "--tun-name", "zt-crash0", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert netns.snapshot() == before
    assert "vnet_hdr on" in netns.ip("-d", "link", "show", "dev", "zt-crash0")


def test_sigterm_at_any_moment_leaves_nothing(netns):
    # Early, during setup or once running: the namespace ends as it began, never with a traceback.
    before = netns.snapshot()
    for delay in (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.6):
        app = netns.appliance(*ARGS)
        time.sleep(delay)
        app.send(signal.SIGTERM)
        rc = app.wait()
        assert rc in (0, -signal.SIGTERM), app.log  # -SIGTERM: it came before Python set up its handlers
        assert "Traceback" not in app.log, app.log
        assert netns.snapshot() == before, (delay, app.log)
