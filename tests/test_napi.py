"""Threaded NAPI's switch (ztun.tun.napi) against a stand-in sysfs: modes, hysteresis, unusable switches."""

import logging
import time

import pytest

from ztun.tun import napi
from ztun.tun.loop import Loop


@pytest.fixture
def sysfs(tmp_path):
    dev = tmp_path / "zt0"
    dev.mkdir()
    (dev / "ifindex").write_text("7\n")
    (dev / "threaded").write_text("0\n")
    return tmp_path


def switch(sysfs):
    return (sysfs / "zt0" / "threaded").read_text().strip()


def test_on_switches_at_start_and_off_never(sysfs):
    with Loop() as loop:
        on = napi.NapiThreads("zt0", 7, "on", sysfs=str(sysfs))
        on.start(loop)
        assert switch(sysfs) == "1" and on.threaded and on.switches == 1
        (sysfs / "zt0" / "threaded").write_text("0\n")
        off = napi.NapiThreads("zt0", 7, "off", sysfs=str(sysfs))
        off.start(loop)
        off.update(1.0)
        assert switch(sysfs) == "0" and not off.threaded and not off.set(True)


def test_auto_follows_the_load_with_hysteresis(sysfs):
    auto = napi.NapiThreads("zt0", 7, "auto", sysfs=str(sysfs))
    auto.update(napi.ON_ABOVE - 0.01)
    assert not auto.threaded and switch(sysfs) == "0"  # below the threshold: not even written
    auto.update(napi.ON_ABOVE)
    assert auto.threaded and switch(sysfs) == "1"
    # between the thresholds it stays on; below OFF_BELOW it must stay calm OFF_AFTER looks in a row
    auto.update(napi.OFF_BELOW + 0.01)
    for _ in range(napi.OFF_AFTER - 1):
        auto.update(0.1)
    auto.update(napi.ON_ABOVE)  # a busy look starts the count again
    for _ in range(napi.OFF_AFTER - 1):
        auto.update(0.1)
    assert auto.threaded and switch(sysfs) == "1"
    auto.update(0.1)
    assert not auto.threaded and switch(sysfs) == "0" and auto.switches == 2


def test_auto_looks_at_the_loops_cpu_time(sysfs, monkeypatch):
    monkeypatch.setattr(napi, "INTERVAL", 0.02)
    # a stand-in clock: the loop's CPU time grows with the wall time, as a saturated loop's does
    auto = napi.NapiThreads("zt0", 7, "auto", sysfs=str(sysfs), clock=time.monotonic)
    with Loop() as loop:
        auto.start(loop)
        deadline = loop.time() + 5
        while not auto.threaded and loop.time() < deadline:
            loop.run_once(0.05)
        assert auto.threaded and switch(sysfs) == "1"
        auto.close()
        assert auto._timer is None
        auto.close()  # idempotent


def test_a_switch_of_another_device_is_left_alone(sysfs, caplog):
    caplog.set_level(logging.INFO, "ztun.tun.napi")
    other = napi.NapiThreads("zt0", 8, "on", sysfs=str(sysfs))  # this /sys shows index 7: another namespace's
    other.start(None)
    assert not other.usable and not other.threaded and switch(sysfs) == "0"
    assert "not usable" in caplog.text
    assert not other.set(True)  # once unusable, never written


def test_a_missing_switch_is_logged_once(sysfs, caplog):
    caplog.set_level(logging.INFO, "ztun.tun.napi")
    (sysfs / "zt0" / "threaded").unlink()  # a kernel before 5.12
    auto = napi.NapiThreads("zt0", 7, "auto", sysfs=str(sysfs))
    auto.update(1.0)
    auto.update(1.0)
    assert not auto.usable and caplog.text.count("not usable") == 1


def test_modes_are_checked():
    with pytest.raises(ValueError, match="napi mode"):
        napi.NapiThreads("zt0", 7, "fast")
