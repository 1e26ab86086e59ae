"""SystemStack: the NAT-based system stack over a TUN device. So far it answers ICMP echo; the rest is counted and dropped.

Per readable event: read a batch (GIL released), parse it, turn echo requests into replies
in place, write the replies back in one call; all of it compiled, no per-packet Python.
"""

import errno
import logging
from collections import Counter

import numpy as np

from .._fast import PacketBatch, echo_batch, parse_batch
from .._fast import defs as d

log = logging.getLogger("ztun.stack")

DEFAULT_SLOTS = 64
MAX_BATCHES = 16  # per readable event, so other fds of the loop get their turn


class SystemStack:
    """Answers every ICMP/ICMPv6 echo request read from the device (any destination) through it.

    Everything else read is counted by kind (TCP and other protocols, UDP, other ICMP,
    malformed by reason) and dropped: TCP and UDP come with the NAT in the next step.
    """

    def __init__(self, device, *, slots: int = DEFAULT_SLOTS, max_batches: int = MAX_BATCHES):
        self.device = device
        # With IFF_VNET_HDR each slot's virtio_net_hdr sits in its headroom; parse_batch checks it.
        self.batch = PacketBatch(slots, max_packet=max(device.mtu, 68), vnet_hdr=getattr(device, "vnet_hdr", False))
        self.max_batches = max_batches
        self.handler = None
        self.verdict_counts = np.zeros(d.N_VERDICTS, dtype=np.uint64)
        self.drop_counts = np.zeros(d.N_REASONS, dtype=np.uint64)
        self.packets_read = 0
        self.batches_read = 0
        self.replies_written = 0
        self.write_failures: Counter = Counter()  # errno -> slots that failed with it
        self._running = False

    def start(self, handler=None) -> None:
        self.handler = handler
        self.device.set_nonblocking(True)
        self._running = True

    def fileno(self) -> int:
        return self.device.fileno()

    def on_readable(self) -> int:
        """Process up to max_batches batches of what the device has queued; return packets read."""
        if not self._running:
            return 0
        dev, batch, total = self.device, self.batch, 0
        for _ in range(self.max_batches):
            n = dev.read_batch(batch)
            if n == 0:
                break
            total += n
            self.batches_read += 1
            parse_batch(batch)
            answered = echo_batch(batch, True, self.verdict_counts, self.drop_counts)
            if answered:
                written = dev.write_batch(batch, n, only_verdict=d.V_WRITE)
                self.replies_written += written
                if written < answered:
                    self._note_failures(dev.failed_slots())
            if n < batch.slots:
                break
        self.packets_read += total
        return total

    def _note_failures(self, failed) -> None:
        for _, err in failed:
            if not self.write_failures[err]:
                log.warning("writing to %s failed: %s (errno %d); counting further failures", self.device.name, errno.errorcode.get(err, err), err)
            self.write_failures[err] += 1

    def stats(self) -> dict:
        """Counters by name. dropped = packets read and not answered, plus replies that failed to write."""
        v = self.verdict_counts
        out = {
            "packets_read": self.packets_read,
            "batches_read": self.batches_read,
            "echo_answered": int(v[d.V_WRITE]),
            "replies_written": self.replies_written,
            "write_failed": sum(self.write_failures.values()),
            "dropped_icmp_other": int(v[d.V_ICMP]),
            "dropped_udp": int(v[d.V_UDP]),
            "dropped_tcp_and_other": int(v[d.V_OTHER]),
            "dropped_malformed": int(v[d.V_DROP]),
        }
        out["dropped"] = self.packets_read - out["echo_answered"] + out["write_failed"]
        out.update({f"malformed_{d.REASON_NAMES[i]}": int(c) for i, c in enumerate(self.drop_counts) if c})
        out.update({f"write_failed_{errno.errorcode.get(e, e)}": c for e, c in self.write_failures.items()})
        return out

    def stop(self) -> None:
        self._running = False
