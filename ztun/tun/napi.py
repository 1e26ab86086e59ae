"""Threaded NAPI on a Linux TUN: the kernel's receive work for what ztun writes runs off the loop's core.

Every packet ztun writes into the TUN is received by the kernel inside that write: for a
terminated TCP connection that is the listener side's whole TCP processing, most of the
loop's CPU under a load of short connections. A queue opened with IFF_NAPI hands the
packet to NAPI instead, and with the device's `threaded` switch on (sysfs, Linux 5.12+)
NAPI polls in a kernel thread the scheduler can run on another core. That thread costs a
wake-up per burst: a few tens of microseconds of round-trip time while the loop is idle.
"auto" therefore turns it on only while the loop is saturated, and off again once it is not.
"""

import errno
import logging
import os
import time

log = logging.getLogger("ztun.tun.napi")

IFF_NAPI = 0x0010  # <linux/if_tun.h>, Linux 4.15+ (not in older build headers, hence here)
MODES = ("auto", "on", "off")
INTERVAL = 0.25  # seconds between two looks at the loop's load (auto)
ON_ABOVE = 0.85  # the loop's CPU share of a wall second that turns threading on ...
OFF_BELOW = 0.7  # ... and the share it must stay under ...
OFF_AFTER = 4  # ... for this many looks in a row (a second) to turn it off again: no flapping at the edge
SYSFS = "/sys/class/net"


class NapiThreads:
    """The `threaded` switch of one TUN device, set by mode: "on" always, "auto" by the loop's load.

    Only for a device ztun created (the switch would outlive ztun on a persistent one).
    A switch that cannot be set (no such sysfs file: an old kernel, a network namespace
    without its own /sys, a read-only /sys) is logged once and then left alone.
    """

    def __init__(self, name: str, if_index: int, mode: str, *, sysfs: str = SYSFS, clock=time.thread_time):
        if mode not in MODES:
            raise ValueError(f"napi mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.name, self.if_index, self.mode = name, if_index, mode
        self.path = os.path.join(sysfs, name, "threaded")
        self._index_path = os.path.join(sysfs, name, "ifindex")
        self.clock = clock
        self.threaded = False
        self.usable = mode != "off"
        self.switches = 0
        self._calm = 0  # looks in a row below OFF_BELOW while threaded
        self._loop = self._timer = None
        self._last = None  # (wall, loop CPU) at the previous look

    def start(self, loop) -> None:
        """Apply the mode: "on" switches threading on now, "auto" looks at the loop's load every INTERVAL."""
        if self.mode == "on":
            self.set(True)
        elif self.mode == "auto" and self.usable:
            self._loop = loop
            self._last = (time.monotonic(), self.clock())
            self._timer = loop.call_later(INTERVAL, self._tick)

    def _tick(self) -> None:
        now, cpu = time.monotonic(), self.clock()
        wall0, cpu0 = self._last
        self._last = (now, cpu)
        if now > wall0:
            self.update((cpu - cpu0) / (now - wall0))
        if self.usable and self._loop is not None:
            self._timer = self._loop.call_later(INTERVAL, self._tick)

    def update(self, busy: float) -> None:
        """The loop spent this share of the last interval on the CPU: switch with hysteresis."""
        if not self.threaded:
            if busy >= ON_ABOVE:
                self.set(True)
            return
        self._calm = self._calm + 1 if busy < OFF_BELOW else 0
        if self._calm >= OFF_AFTER:
            self._calm = 0
            self.set(False)

    def set(self, on: bool) -> bool:
        """Write the switch; False (and never again) if it cannot be written."""
        if not self.usable:
            return False
        try:
            # /sys is that of the namespace it was mounted in: make sure it shows our device
            with open(self._index_path) as f:
                if int(f.read()) != self.if_index:
                    raise OSError(errno.ENODEV, "this /sys shows another device of that name")
            fd = os.open(self.path, os.O_WRONLY)  # never creates it
            try:
                os.write(fd, b"1" if on else b"0")
            finally:
                os.close(fd)
        except (OSError, ValueError) as e:
            self.usable = False
            log.info("threaded NAPI on %s left %s: %s is not usable (%s)", self.name, "on" if self.threaded else "off",
                     self.path, getattr(e, "strerror", None) or e)
            return False
        if on != self.threaded:
            self.switches += 1
            log.debug("threaded NAPI on %s: %s", self.name, "on" if on else "off")
        self.threaded = on
        return True

    def close(self) -> None:
        """Stop looking at the load; the switch goes with the device. Idempotent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None
