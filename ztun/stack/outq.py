"""OutQueue: packets the system stack originates or releases (UDP replies, resets, unreachables, held SYNs), written to the TUN in batches."""

import errno
import logging
from collections import Counter

import numpy as np

from .._fast import PacketBatch, build, gso
from .._fast import defs as d

log = logging.getLogger("ztun.stack")


class OutQueue:
    """Builds packets into a reused batch and writes it when full or at the end of the loop iteration (Loop.call_at_end).

    With gro (a TUN with UDP segmentation offload), consecutive same-flow UDP datagrams of one
    size go to the kernel as one USO super-packet (gso.gro_udp): one write instead of many,
    and the kernel segments them again on the way to the client.
    """

    def __init__(self, loop, device, *, slots: int = 64, max_packet: int = 65535, gro: bool = False):
        self.loop = loop
        self.device = device
        self.batch = PacketBatch(slots, max_packet=max_packet, vnet_hdr=device.vnet_hdr)
        self.gro = bool(gro) and self.batch.vnet_hdr
        self._segs = np.zeros(slots, dtype=np.int32)
        self.n = 0
        self.written = 0  # datagrams (or other packets) the device took
        self.failed = 0
        self.failures: Counter = Counter()  # errno -> slots whose write failed with it
        self.too_big = 0
        self.coalesced = 0  # datagrams that went out inside another's super-packet
        self._flush_due = False  # a flush waits for the end of the loop iteration

    def room(self) -> int:
        """The first free slot of the batch (flushed first when it is full)."""
        if self.n == self.batch.slots:
            self.flush()
        return self.n

    def _added(self, length: int) -> bool:
        if not length:
            self.too_big += 1
            return False
        self.filled(self.n + 1)
        return True

    def filled(self, end: int) -> None:
        """Slots from room() to end were built in place (verdict V_WRITE): queued to be written."""
        if end <= self.n:
            return
        self.n = end
        if not self._flush_due:
            # Before the loop's next poll: a released SYN's answer is then in the TUN for it.
            try:
                self.loop.call_at_end(self._flush_at_end)
            except RuntimeError:  # the loop is closed: the stack's stop() flushes what is left
                return
            self._flush_due = True

    def _flush_at_end(self) -> None:
        self._flush_due = False
        self.flush()

    def udp(self, src: bytes, sport: int, dst: bytes, dport: int, payload) -> bool:
        """Queue a UDP datagram src:sport -> dst:dport (addresses packed, 4 or 16 bytes)."""
        return self._added(build.udp_packet(self.batch, self.room(), src, sport, dst, dport, payload))

    def packet(self, raw: bytes, length: int) -> bool:
        """Queue a packet of length bytes as raw holds it (its virtio_net_hdr first where the batch has them)."""
        front = len(raw) - length
        if not 0 <= front <= self.batch.headroom or length > self.batch.max_packet:
            return self._added(0)
        i = self.room()
        self.batch.set_packet(i, raw, front)
        self.batch.verdicts[i] = d.V_WRITE
        return self._added(length)

    def reset(self, batch, i: int) -> bool:
        """Queue the TCP RST answering slot i of batch."""
        return self._added(build.tcp_reset(batch, i, self.batch, self.room()))

    def unreachable(self, batch, i: int, code: int = 3) -> bool:
        """Queue an ICMP destination unreachable (code 3 port, 13 prohibited) for slot i of batch."""
        return self._added(build.icmp_unreachable(batch, i, self.batch, self.room(), code))

    def flush(self) -> None:
        n, self.n = self.n, 0
        if not n:
            return
        self.batch.count = n
        if self.gro and n > 1:
            kept = gso.gro_udp(self.batch, n, self._segs)
            if kept < n:
                self.coalesced += n - kept
                written = self.device.write_batch(self.batch, n, only_verdict=d.V_WRITE)
                lost = 0
                if written < kept:
                    failed = self.device.failed_slots()
                    lost = sum(int(self._segs[i]) for i, _ in failed)
                    self._note_failed(failed, lost, n)
                self.written += n - lost
                return
        written = self.device.write_batch(self.batch, n)
        self.written += written
        if written < n:
            self._note_failed(self.device.failed_slots(), n - written, n)

    def _note_failed(self, failed, lost: int, n: int) -> None:
        self.failed += lost
        count_failures(self.failures, failed, f"originated packets to {self.device.name}")
        log.debug("could not write %d of %d originated packets: %s", lost, n, failed)


def count_failures(failures: Counter, failed, what: str) -> None:
    """Count (slot, errno) write failures by errno; warn the first time each errno makes writing what fail."""
    for _, err in failed:
        if not failures[err]:
            log.warning("writing %s failed: %s (errno %d); counting further failures", what, errno.errorcode.get(err, err), err)
        failures[err] += 1
