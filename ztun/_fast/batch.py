"""PacketBatch: reusable slots that devices read into, the stack rewrites in place and devices write from."""

import numpy as np

from ..errors import PacketError
from .defs import HEADROOM, MAX_PACKET, META_DTYPE


class PacketBatch:
    """A fixed set of packet slots, allocated once and reused for every batch.

    Slot ``i`` holds one IP packet at ``data[i, headroom : headroom + lengths[i]]``;
    the ``headroom`` bytes in front leave room for a virtio_net_hdr or a utun
    address-family header. ``count`` says how many slots the last read filled.
    The per-slot result arrays (``meta``, ``verdicts``, ``reasons``, ``flow_ids``)
    are filled by ``parse_batch`` and ``NatTable.process_batch``. With ``vnet_hdr``
    (a TUN opened with IFF_VNET_HDR) each packet's 10-byte virtio_net_hdr sits in the
    last 10 bytes of headroom, ``data[i, headroom - 10 : headroom]``.
    """

    __slots__ = ("data", "lengths", "meta", "verdicts", "reasons", "flow_ids", "count", "headroom", "max_packet", "vnet_hdr")

    def __init__(self, slots: int = 64, max_packet: int = MAX_PACKET, headroom: int = HEADROOM, vnet_hdr: bool = False):
        if not 1 <= slots <= 65536:
            raise PacketError(f"slots must be 1..65536, got {slots}")
        if not 68 <= max_packet <= MAX_PACKET + 40:
            raise PacketError(f"max_packet must be 68..{MAX_PACKET + 40}, got {max_packet}")
        if headroom != HEADROOM:
            raise PacketError(f"headroom is fixed at {HEADROOM} bytes, got {headroom}")
        self.headroom = headroom
        self.max_packet = max_packet
        self.data = np.zeros((slots, headroom + max_packet), dtype=np.uint8)
        self.lengths = np.zeros(slots, dtype=np.int32)
        self.meta = np.zeros(slots, dtype=META_DTYPE)
        self.verdicts = np.zeros(slots, dtype=np.uint8)
        self.reasons = np.zeros(slots, dtype=np.uint8)
        self.flow_ids = np.full(slots, -1, dtype=np.int32)
        self.count = 0
        self.vnet_hdr = bool(vnet_hdr)

    @property
    def slots(self) -> int:
        return self.data.shape[0]

    def packet(self, i: int) -> memoryview:
        """A view of slot i's packet (no copy)."""
        start = self.headroom
        return memoryview(self.data[i, start : start + int(self.lengths[i])])

    def set_packet(self, i: int, packet, front: int = 0) -> None:
        """Copy one packet into slot i (tests, the UDP/ICMP reply path, a released SYN).

        The first ``front`` bytes of ``packet`` precede the IP packet (its virtio_net_hdr)
        and go into the end of the headroom.
        """
        n = len(packet) - front
        if n > self.max_packet or not 0 <= front <= self.headroom:
            raise PacketError(f"packet of {n} bytes after {front} in front does not fit a {self.max_packet}-byte slot")
        start = self.headroom
        self.data[i, start - front : start + n] = np.frombuffer(packet, dtype=np.uint8)
        self.lengths[i] = n

    def fill(self, packets) -> None:
        """Copy packets into the first slots and set count."""
        packets = list(packets)
        if len(packets) > self.slots:
            raise PacketError(f"{len(packets)} packets do not fit {self.slots} slots")
        for i, p in enumerate(packets):
            self.set_packet(i, p)
        self.count = len(packets)
