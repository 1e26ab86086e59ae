"""Threaded NAPI's switch (ztun.tun.napi) against a stand-in sysfs and /proc: modes, load, hysteresis, unusable switches."""

import logging
import time

import pytest

from ztun.tun import napi
from ztun.loop import Loop

DEVICES = [(1, "lo"), (7, "zt0")]  # what netlink says this namespace has


@pytest.fixture
def sysfs(tmp_path):
    root = tmp_path / "net"
    for index, name in DEVICES:
        (root / name).mkdir(parents=True)
        (root / name / "ifindex").write_text(f"{index}\n")
    (root / "zt0" / "threaded").write_text("0\n")
    return root


@pytest.fixture
def proc(tmp_path):
    root = tmp_path / "proc"
    for pid, comm in (("1", "init"), ("42", "napi/zt0-8193"), ("43", "napi/zt01-8194"), ("self", "x")):
        (root / pid).mkdir(parents=True)
        (root / pid / "comm").write_text(comm + "\n")
    return root


def kthread_cpu(proc, pid, ticks):
    """A /proc/PID/stat whose utime + stime are ticks clock ticks."""
    fields = ["S"] + ["0"] * 10 + [str(ticks), "0"] + ["0"] * 30
    (proc / pid / "stat").write_text(f"{pid} (napi/x) " + " ".join(fields) + "\n")


def threads(sysfs, mode="auto", **kw):
    return napi.NapiThreads("zt0", 7, mode, sysfs=str(sysfs), interfaces=lambda: DEVICES, **kw)


def switch(sysfs):
    return (sysfs / "zt0" / "threaded").read_text().strip()


def test_on_switches_at_start_and_off_never(sysfs):
    with Loop() as loop:
        on = threads(sysfs, "on")
        on.start(loop)
        assert switch(sysfs) == "1" and on.threaded and on.switches == 1
        (sysfs / "zt0" / "threaded").write_text("0\n")
        off = threads(sysfs, "off")
        off.start(loop)
        off.update(1.0)
        assert switch(sysfs) == "0" and not off.threaded and not off.set(True)


def test_auto_follows_the_load_with_hysteresis(sysfs):
    auto = threads(sysfs)
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


class Clocks:
    """Stand-in time: the test advances the wall clock and says how much of it the loop spent on the CPU."""

    def __init__(self, monkeypatch):
        self.wall = self.cpu = 1000.0
        monkeypatch.setattr(napi.time, "monotonic", lambda: self.wall)

    def spend(self, seconds, share):
        self.wall += seconds
        self.cpu += seconds * share


def test_the_napi_threads_work_counts_as_load_while_threaded(sysfs, proc, monkeypatch):
    """Switched on, the loop's own share falls (its receive work moved away): the NAPI thread's
    CPU keeps the load where it was, so the switch does not flap off and on."""
    clocks = Clocks(monkeypatch)
    kthread_cpu(proc, "42", 0)
    kthread_cpu(proc, "43", 0)  # another device's thread (zt01): not counted
    auto = threads(sysfs, proc=str(proc), clock=lambda: clocks.cpu)
    with Loop() as loop:
        auto.start(loop)
        clocks.spend(napi.INTERVAL, 0.95)
        auto._tick()
        assert auto.threaded and auto.switches == 1
        ticks = 0
        for _ in range(3 * napi.OFF_AFTER):
            clocks.spend(napi.INTERVAL, 0.5)  # the loop alone would look calm ...
            ticks += int(napi.INTERVAL * 0.4 * napi._CLK_TCK)  # ... but its NAPI thread took over 40% of a core
            kthread_cpu(proc, "42", ticks)
            kthread_cpu(proc, "43", ticks * 10)
            auto._tick()
        assert auto.threaded and auto.switches == 1 and auto._kthreads == ["42"]
        for _ in range(napi.OFF_AFTER + 1):  # the load really ends
            clocks.spend(napi.INTERVAL, 0.1)
            auto._tick()
        assert not auto.threaded and auto.switches == 2 and switch(sysfs) == "0"
        auto.close()
        assert auto._timer is None
        auto.close()  # idempotent


def test_auto_looks_at_the_loops_cpu_time_on_its_loop(sysfs, monkeypatch):
    monkeypatch.setattr(napi, "INTERVAL", 0.02)
    # the loop's CPU time grows with the wall time, as a saturated loop's does
    auto = threads(sysfs, clock=time.monotonic)
    with Loop() as loop:
        auto.start(loop)
        deadline = loop.time() + 5
        while not auto.threaded and loop.time() < deadline:
            loop.run_once(0.05)
        assert auto.threaded and switch(sysfs) == "1"
        auto.close()
        looks = []
        auto.update = looks.append
        for _ in range(5):
            loop.run_once(0.05)
        assert looks == [] and auto._timer is None  # no look after close


@pytest.mark.parametrize("shown", [
    [(1, "lo"), (7, "zt0"), (9, "eth0")],  # a device this namespace does not have
    [(1, "lo"), (3, "zt0")],  # a zt0, but another one
], ids=["more devices", "another index"])
def test_a_sysfs_of_another_namespace_is_left_alone(tmp_path, caplog, shown):
    caplog.set_level(logging.INFO, "ztun.tun.napi")
    root = tmp_path / "net"
    for index, name in shown:
        (root / name).mkdir(parents=True)
        (root / name / "ifindex").write_text(f"{index}\n")
    (root / "zt0" / "threaded").write_text("0\n")
    other = threads(root, "on")
    other.start(None)
    assert not other.usable and not other.threaded and switch(root) == "0"
    assert "another network namespace" in caplog.text
    assert not other.set(True)  # once unusable, never written


def test_a_missing_switch_is_logged_once(sysfs, caplog):
    caplog.set_level(logging.INFO, "ztun.tun.napi")
    (sysfs / "zt0" / "threaded").unlink()  # a kernel before 5.12
    auto = threads(sysfs)
    auto.update(1.0)
    auto.update(1.0)
    assert not auto.usable and caplog.text.count("not usable") == 1
    assert not (sysfs / "zt0" / "threaded").exists()  # not created by the attempt


def test_modes_are_checked():
    with pytest.raises(ValueError, match="napi mode"):
        napi.NapiThreads("zt0", 7, "fast")


def test_a_busy_loop_reading_one_packet_at_a_time_stays_inline(sysfs):
    """A ping-pong keeps the loop busy but never queues packets: the thread would only add latency."""
    auto = threads(sysfs)
    auto.update(1.0, 1.0)
    auto.update(1.0, napi.ON_BATCH - 0.5)
    assert not auto.threaded and switch(sysfs) == "0"
    auto.update(1.0, napi.ON_BATCH)  # packets wait between reads: saturated
    assert auto.threaded and switch(sysfs) == "1"
    for _ in range(napi.OFF_AFTER - 1):
        auto.update(1.0, 1.0)  # still busy, but the queue is gone
    assert auto.threaded
    auto.update(1.0, 1.0)
    assert not auto.threaded and switch(sysfs) == "0"


def test_the_reads_come_from_the_stacks_counters(sysfs, monkeypatch):
    clocks = Clocks(monkeypatch)
    counts = [0, 0]
    auto = threads(sysfs, clock=lambda: clocks.cpu, reads=lambda: tuple(counts))
    with Loop() as loop:
        auto.start(loop)
        for packets in (1, 1, 30):  # a ping-pong twice, then 30 packets per read
            clocks.spend(napi.INTERVAL, 0.99)
            counts[0] += 100 * packets
            counts[1] += 100
            auto._tick()
            assert auto.threaded == (packets == 30)
        auto.close()


def test_small_packets_stay_inline_and_large_ones_go_to_the_thread(sysfs):
    """A storm of short connections writes ~100-byte packets: the wake-up per write costs more than
    the receive work the thread would take; bulk TCP's 64 KiB packets are worth it."""
    auto = threads(sysfs)
    auto.update(1.0, 20.0, 120.0)
    assert not auto.threaded and switch(sysfs) == "0"
    auto.update(1.0, 20.0, 56000.0)
    assert auto.threaded and switch(sysfs) == "1"
    for _ in range(napi.OFF_AFTER - 1):
        auto.update(1.0, 20.0, napi.OFF_SIZE - 1)  # busy and batched, but small packets now
    assert auto.threaded
    auto.update(1.0, 20.0, napi.OFF_SIZE - 1)
    assert not auto.threaded and switch(sysfs) == "0"


def test_the_packet_size_comes_from_the_devices_rx_counters(sysfs, monkeypatch):
    clocks = Clocks(monkeypatch)
    stats = sysfs / "zt0" / "statistics"
    stats.mkdir()
    written = [0, 0]

    def write(nbytes, packets):
        written[0] += nbytes
        written[1] += packets
        (stats / "rx_bytes").write_text(f"{written[0]}\n")
        (stats / "rx_packets").write_text(f"{written[1]}\n")

    write(0, 0)
    auto = threads(sysfs, clock=lambda: clocks.cpu)
    with Loop() as loop:
        auto.start(loop)
        for size in (100, 100, 60000):  # connections' small packets twice, then bulk
            clocks.spend(napi.INTERVAL, 0.99)
            write(1000 * size, 1000)
            auto._tick()
            assert auto.threaded == (size == 60000)
        auto.close()


def test_auto_on_a_sysfs_of_another_namespace_stops_looking(tmp_path, monkeypatch):
    """The counters are read only from this namespace's sysfs: a foreign one makes the switch
    unusable at the first look, not a full scan of /sys every tick."""
    root = tmp_path / "net"
    for index, name in ((1, "lo"), (9, "zt0")):  # another namespace's zt0
        (root / name).mkdir(parents=True)
        (root / name / "ifindex").write_text(f"{index}\n")
    (root / "zt0" / "threaded").write_text("0\n")
    asked = []
    auto = napi.NapiThreads("zt0", 7, "auto", sysfs=str(root), interfaces=lambda: asked.append(1) or DEVICES)
    with Loop() as loop:
        auto.start(loop)
        assert not auto.usable and auto._timer is None  # no tick scheduled
        looks = len(asked)
        auto._tick()
        assert len(asked) == looks and switch(root) == "0"
