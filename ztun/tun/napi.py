"""Threaded NAPI on a Linux TUN: the kernel's receive work for what ztun writes runs off the loop's core.

Every packet ztun writes into the TUN is received by the kernel inside that write: for a
terminated TCP connection that is the listener side's whole TCP processing, most of the
loop's CPU under a load of short connections. A queue opened with IFF_NAPI hands the
packet to NAPI instead, and with the device's `threaded` switch on (sysfs, Linux 5.12+)
NAPI polls in a kernel thread the scheduler can run on another core. That thread costs a
wake-up per burst: a few tens of microseconds of round-trip time while the loop is idle.
"auto" therefore turns it on only while the loop is saturated (busy, and packets queue up in
the TUN between its reads) with large packets, and off again once it is not. The wake-up is
paid per write and the work moved grows with the bytes: under a storm of short connections
(packets of ~100 bytes, and the connects' own TCP work already on the socket worker,
ztun._fast.sockq) the thread measured slower than inline; for bulk TCP without offload
(1500-byte packets) through a gateway 1.8x faster up and 3x down.
"""

import errno
import logging
import os
import socket
import time

log = logging.getLogger("ztun.tun.napi")

IFF_NAPI = 0x0010  # <linux/if_tun.h>, Linux 4.15+ (not in older build headers, hence here)
MODES = ("auto", "on", "off")
INTERVAL = 0.25  # seconds between two looks at the load (auto)
ON_ABOVE = 0.85  # the loop's CPU share of the wall time that turns threading on ...
OFF_BELOW = 0.7  # ... and the share (the loop's plus the NAPI thread's) it must stay under ...
OFF_AFTER = 4  # ... for this many looks in a row (a second) to turn it off again
# Packets per TUN read, on average over a look: a busy loop that reads one at a time is bound
# by round trips (a ping-pong), where the thread's wake-up only adds latency.
ON_BATCH = 4.0  # at least this many to turn threading on ...
OFF_BATCH = 2.0  # ... and a look with fewer counts as calm
# Bytes per packet ztun writes into the TUN (the device's rx counters), on average over a look.
ON_SIZE = 512  # at least this many to turn threading on (full 1500-byte segments and their ACKs average ~800) ...
OFF_SIZE = 256  # ... and a look with fewer counts as calm (a connection storm averages ~100)
SYSFS = "/sys/class/net"
PROC = "/proc"
_COMM = 15  # a task's name is cut to TASK_COMM_LEN - 1 bytes
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class NapiThreads:
    """The `threaded` switch of one TUN device, set by mode: "on" always, "auto" by the load.

    Only for a device ztun created (the switch would outlive ztun on a persistent one).
    The load is the loop thread's CPU time and, while threaded, that of the device's NAPI
    threads: the receive work moved there still counts, so switching on does not by itself
    make the load look low enough to switch off again. A switch that cannot be set (no
    such sysfs file: an old kernel; a /sys that shows another network namespace's devices;
    a read-only /sys) is logged once and then left alone.
    """

    def __init__(self, name: str, if_index: int, mode: str, *, reads=None, sysfs: str = SYSFS, proc: str = PROC,
                 clock=time.thread_time, interfaces=socket.if_nameindex):
        if mode not in MODES:
            raise ValueError(f"napi mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.name, self.if_index, self.mode = name, if_index, mode
        self.sysfs, self.proc = sysfs, proc
        self.path = os.path.join(sysfs, name, "threaded")
        self.clock, self.interfaces = clock, interfaces
        self.reads = reads  # () -> (packets read, reads) from the TUN so far; None: not looked at
        self.threaded = False
        self.usable = mode != "off"
        self.checked = False  # the sysfs shows this namespace's devices
        self.switches = 0
        self._calm = 0  # looks in a row below OFF_BELOW while threaded
        self._loop = self._timer = None
        self._last = None  # (wall, loop CPU, NAPI threads' CPU, (packets, reads), (bytes, packets) written) at the last look
        self._kthreads: list = []  # pids of the device's NAPI threads, found once threaded

    def start(self, loop) -> None:
        """Apply the mode: "on" switches threading on now, "auto" looks at the load every INTERVAL."""
        if self.mode == "on":
            self.set(True)
        elif self.mode == "auto" and self.usable:
            self._loop = loop
            self._last = (time.monotonic(), self.clock(), None, self._reads(), self._written())
            if self.usable:  # not if the first look found the sysfs foreign
                self._timer = loop.call_later(INTERVAL, self._tick)

    def _tick(self) -> None:
        now, cpu = time.monotonic(), self.clock()
        kcpu = self._kthread_cpu() if self.threaded else None
        reads, written = self._reads(), self._written()
        wall0, cpu0, kcpu0, reads0, written0 = self._last
        self._last = (now, cpu, kcpu, reads, written)
        if now > wall0:
            # the NAPI threads' share counts from the second look after switching on
            moved = kcpu - kcpu0 if kcpu is not None and kcpu0 is not None and kcpu >= kcpu0 else 0.0
            batch = size = None
            if reads is not None:
                batch = (reads[0] - reads0[0]) / (reads[1] - reads0[1]) if reads[1] > reads0[1] else 0.0
            if written is not None and written0 is not None and written[1] > written0[1]:
                size = (written[0] - written0[0]) / (written[1] - written0[1])
            self.update((cpu - cpu0 + moved) / (now - wall0), batch, size)
        if self.usable and self._loop is not None:
            self._timer = self._loop.call_later(INTERVAL, self._tick)

    def _reads(self):
        return self.reads() if self.reads is not None else None

    def _written(self):
        """(bytes, packets) ztun has written into the device (its rx counters), or None if not known."""
        if not self.usable or not self._sysfs_ours():
            return None
        try:
            stats = os.path.join(self.sysfs, self.name, "statistics")
            with open(os.path.join(stats, "rx_bytes")) as b, open(os.path.join(stats, "rx_packets")) as n:
                return int(b.read()), int(n.read())
        except (OSError, ValueError):
            return None

    def update(self, busy: float, batch: float | None = None, size: float | None = None) -> None:
        """The load was this share of the last interval, with batch packets per TUN read and size
        bytes per packet written on average (None: not known): switch with hysteresis."""
        if not self.threaded:
            if busy >= ON_ABOVE and (batch is None or batch >= ON_BATCH) and (size is None or size >= ON_SIZE):
                self.set(True)
            return
        calm = (busy < OFF_BELOW or (batch is not None and batch < OFF_BATCH)
                or (size is not None and size < OFF_SIZE))
        self._calm = self._calm + 1 if calm else 0
        if self._calm >= OFF_AFTER:
            self._calm = 0
            self.set(False)

    def set(self, on: bool) -> bool:
        """Write the switch; False (and never again) if it cannot be written."""
        if not self.usable or not self._sysfs_ours():
            return False
        try:
            fd = os.open(self.path, os.O_WRONLY)  # never creates it
            try:
                os.write(fd, b"1" if on else b"0")
            finally:
                os.close(fd)
        except (OSError, ValueError) as e:
            self._unusable(e)
            return False
        if on != self.threaded:
            self.switches += 1
            self._kthreads = []
            if self._last is not None:
                self._last = (self._last[0], self._last[1], None, *self._last[3:])
            log.debug("threaded NAPI on %s: %s", self.name, "on" if on else "off")
        self.threaded = on
        return True

    def _sysfs_ours(self) -> bool:
        """The sysfs shows this namespace's devices (looked at once); if not, the switch is unusable."""
        if not self.checked:
            try:
                self._check_sysfs()
            except OSError as e:
                self._unusable(e)
                return False
            self.checked = True
        return True

    def _unusable(self, error) -> None:
        self.usable = False
        log.info("threaded NAPI on %s left %s: %s is not usable (%s)", self.name, "on" if self.threaded else "off",
                 self.path, getattr(error, "strerror", None) or error)

    def _check_sysfs(self) -> None:
        """The sysfs lists exactly the devices of ztun's network namespace (one mounted elsewhere may show
        another namespace's device of the same name, and indexes repeat across namespaces)."""
        for _ in range(3):  # a device coming or going between the two looks: look again
            ours = {name: index for index, name in self.interfaces()}
            shown = {}
            for name in os.listdir(self.sysfs):
                try:
                    with open(os.path.join(self.sysfs, name, "ifindex")) as f:
                        shown[name] = int(f.read())
                except FileNotFoundError:
                    continue
            if shown == ours and ours.get(self.name) == self.if_index:
                return
        raise OSError(errno.ENODEV, "this /sys shows another network namespace's devices")

    def _kthread_cpu(self) -> float:
        """CPU seconds of the device's NAPI threads (named napi/<device>-<id>), found on first use."""
        if not self._kthreads:
            prefix = f"napi/{self.name}-"[:_COMM]
            for pid in os.listdir(self.proc):
                if pid.isdigit():
                    try:
                        with open(os.path.join(self.proc, pid, "comm")) as f:
                            if f.read().rstrip("\n").startswith(prefix):
                                self._kthreads.append(pid)
                    except OSError:
                        continue
        total = 0.0
        for pid in self._kthreads:
            try:
                with open(os.path.join(self.proc, pid, "stat")) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / _CLK_TCK
            except (OSError, IndexError, ValueError):
                continue
        return total

    def close(self) -> None:
        """Stop looking at the load; the switch goes with the device. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
