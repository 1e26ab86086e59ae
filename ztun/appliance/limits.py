"""What a hostile client may cost the appliance: the descriptor limit raised and budgeted (issue #17).

At start the soft RLIMIT_NOFILE goes up to the hard limit. The forwarder then admits a new
flow only while the descriptors its flows hold, plus what the flow will need, stay within
the budget: the limit less a headroom for the rest of the process (TUN, listeners, epolls,
status and metrics clients, DNS sockets, the relay engine's pipe pool), measured once a
second so that the estimate between measurements starts from the truth.
"""

import logging
import os

try:
    import resource
except ImportError:  # Windows
    resource = None

log = logging.getLogger("ztun.appliance")

# Descriptors a flow holds, by kind. A pending TCP connect: its outbound socket, and the client's
# socket once the kernel's listener accepts it. A relayed connection: both sockets, and with splice
# a pipe (two descriptors) each way. A UDP session: its outbound socket.
PENDING_COST = 2
RELAY_COST_SPLICE = 6
RELAY_COST_COPY = 2
UDP_COST = 1
MIN_HEADROOM = 64
HEADROOM_FRACTION = 32  # of the limit: kept for what is not a flow (and the bursts of one second)
_FD_DIRS = ("/proc/self/fd", "/dev/fd")


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (logged); the soft limit now in force (0: none known)."""
    if resource is None:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("descriptor limit (RLIMIT_NOFILE) raised from %d to its hard limit %d", soft, hard)
            soft = hard
        except (OSError, ValueError) as e:
            log.warning("descriptor limit (RLIMIT_NOFILE) stays at %d: %s", soft, e)
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return soft


def open_descriptors() -> int | None:
    """How many descriptors the process has open now, or None where that cannot be listed."""
    for path in _FD_DIRS:
        try:
            return len(os.listdir(path)) - 1  # the listing's own descriptor
        except OSError:
            continue
    return None


class DescriptorBudget:
    """The descriptors the flows may hold: limit less a headroom; overhead is what the rest holds."""

    def __init__(self, limit: int):
        self.limit = limit
        self.headroom = max(MIN_HEADROOM, limit // HEADROOM_FRACTION) if limit else 0
        self.budget = max(limit - self.headroom, 0)
        self.overhead = MIN_HEADROOM  # until measured
        self.measured = None  # descriptors open at the last measurement

    def calibrate(self, held_by_flows: int) -> None:
        """Measure: the descriptors open that the flows' estimate does not explain are the overhead."""
        n = open_descriptors()
        if n is not None:
            self.measured = n
            self.overhead = max(n - held_by_flows, 0)

    def allows(self, held_by_flows: int, cost: int) -> bool:
        return not self.limit or self.overhead + held_by_flows + cost <= self.budget
