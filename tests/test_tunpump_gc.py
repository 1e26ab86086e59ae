"""A running TUN pump that became garbage (say its stack was dropped without stop()): the garbage
collector must not free the NAT table's counters or the batches' memory while the pump's thread
still runs (the pump's __dealloc__ stops the thread; only then may they go)."""

import subprocess
import sys
import textwrap

import pytest

from ztun._fast import tunpump

pytestmark = pytest.mark.skipif(tunpump is None, reason="the TUN pump is compiled on Linux only (and not with ZTUN_NO_EXTENSIONS=1)")

SCRIPT = textwrap.dedent(
    r"""
    import gc, os, socket, weakref
    from ztun._fast import PacketBatch, tunpump
    from ztun._fast.nat import NatTable
    from ztun._fast.nat_config import NatConfig

    def pump_threads():
        names = []
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/comm") as f:
                    names.append(f.read().strip())
            except FileNotFoundError:
                pass
        return names.count("ztun-tun-pump")

    gc.disable()  # everything in one generation, cleared in the order it was made
    a, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    nat = NatTable(NatConfig.from_prefixes("198.18.0.1/28", None, port4=4000, capacity=64))
    batch = PacketBatch(8, max_packet=2048)
    handoff = [PacketBatch(8, max_packet=2048) for _ in range(2)]
    pump = tunpump.TunPump(a.fileno(), nat, batch, handoff, 0)
    pump.start()
    # the arrays the thread writes into: when each is freed, is the thread still running?
    freed = []
    watched = [nat.verdict_counts, nat.drop_counts, batch.data, batch.lengths, handoff[0].data, handoff[1].meta]
    refs = [weakref.ref(arr, lambda r, k=k: freed.append((k, pump_threads()))) for k, arr in enumerate(watched)]
    junk = [[] for _ in range(1000)]
    holder = [pump, junk]
    holder.append(holder)  # the pump, garbage in a cycle
    del pump, nat, batch, handoff, holder, junk, watched
    gc.collect()
    assert len(freed) == 6, freed
    print("ok" if all(alive == 0 for _, alive in freed) else f"freed while the thread ran: {freed}")
    """
)


def test_a_garbage_pump_keeps_its_table_and_batches_until_its_thread_stopped():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stdout, r.stderr[-2000:])
