"""Batch read and write of raw IP packets on a TUN fd, and the Linux TUN ioctls: the pure-Python twin.

Same contract as tunio.pyx, one os.readv/os.write per packet.
"""

import os
import select
import struct
import sys

from ..errors import PacketError, TunError
from .batch_write_py import write_slots
from .defs import HEADROOM
from .typed_args import index, sint

LINUX_TUN = sys.platform.startswith("linux")

# <linux/if_tun.h>; tests/test_tunio.py checks these against the compiled module's headers.
CONSTANTS = {
    "TUNSETIFF": 0x400454CA,
    "TUNGETIFF": 0x800454D2,
    "TUNSETPERSIST": 0x400454CB,
    "TUNSETOFFLOAD": 0x400454D0,
    "TUNSETVNETHDRSZ": 0x400454D8,
    "TUNGETFEATURES": 0x800454CF,
    "IFF_TUN": 0x0001,
    "IFF_NO_PI": 0x1000,
    "IFF_MULTI_QUEUE": 0x0100,
    "IFF_VNET_HDR": 0x4000,
    "IFF_TUN_EXCL": 0x8000,
    "IFF_PERSIST": 0x0800,
    "IFNAMSIZ": 16,
} if LINUX_TUN else {}

_IFREQ = "16sH22x"  # struct ifreq: name, then the flags of the union, padded to 40 bytes


def _check_hdr(hdr):
    if not 0 <= index(hdr) <= HEADROOM:
        raise PacketError(f"hdr must be 0..{HEADROOM}, got {hdr}")


def read_batch(fd: int, batch, blocking: bool = False, hdr: int = 0) -> int:
    """Read packets into batch slots 0.. until it is full or fd has none queued; return batch.count.

    A non-blocking fd returns 0 when nothing is queued. An error before the first packet
    raises TunError; an error after it ends the batch (the next call reports it).
    """
    _check_hdr(hdr)
    room = batch.data.shape[1] - HEADROOM
    poller = None
    i = 0
    while i < batch.slots:
        if blocking and i > 0:
            if poller is None:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
            if not poller.poll(0):
                break
        try:
            n = os.readv(fd, [memoryview(batch.data[i, HEADROOM - hdr :])])
        except BlockingIOError:
            break
        except OSError as e:
            if i == 0:
                batch.count = 0
                raise TunError(f"read from fd {fd}", e.errno) from None
            break
        if n == 0:
            break
        batch.lengths[i] = min(max(n - hdr, 0), room)
        i += 1
    batch.count = i
    return i


def write_batch(fd: int, batch, n: int, errnos, only_verdict: int = -1, hdr: int = 0) -> int:
    """Write slots 0..n-1 with one write() each; return how many were written.

    With only_verdict >= 0 only slots whose batch.verdicts equal it are written. errnos[i]
    gets 0 for a slot written or skipped and the errno of a failed write otherwise.
    """
    _check_hdr(hdr)
    return write_slots(fd, batch, n, errnos, only_verdict, hdr)


def _ifname(name) -> bytes:
    b = name.encode() if isinstance(name, str) else bytes(name)
    if not 0 < len(b) < 16:
        raise ValueError(f"interface name must be 1..15 bytes, got {len(b)}")
    return b


def _need_linux():
    if not LINUX_TUN:
        raise TunError("Linux TUN ioctls are not available on this platform")
    import fcntl  # POSIX only: the twin must still import on Windows

    return fcntl


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


def set_iff(fd: int, name, flags: int) -> str:
    """TUNSETIFF: create or attach the TUN device `name` with `flags` on fd; return its name."""
    flags = sint(flags, 32)  # as the compiled int argument, before anything else
    fcntl = _need_linux()
    req = struct.pack(_IFREQ, _ifname(name), flags & 0xFFFF)
    try:
        res = fcntl.ioctl(fd, CONSTANTS["TUNSETIFF"], req)
    except OSError as e:
        raise TunError(f"TUNSETIFF {name}", e.errno) from None
    return _name(struct.unpack(_IFREQ, res)[0])


def get_iff(fd: int) -> tuple[str, int]:
    """TUNGETIFF: (name, flags) of the TUN device attached to fd."""
    fcntl = _need_linux()
    try:
        res = fcntl.ioctl(fd, CONSTANTS["TUNGETIFF"], bytes(struct.calcsize(_IFREQ)))
    except OSError as e:
        raise TunError(f"TUNGETIFF on fd {fd}", e.errno) from None
    name, flags = struct.unpack(_IFREQ, res)
    return _name(name), flags


def set_vnet_hdr_size(fd: int, size: int) -> None:
    """TUNSETVNETHDRSZ: the virtio_net_hdr length the device puts in front of each packet."""
    size = sint(size, 32)
    fcntl = _need_linux()
    try:
        fcntl.ioctl(fd, CONSTANTS["TUNSETVNETHDRSZ"], struct.pack("i", size))
    except OSError as e:
        raise TunError(f"TUNSETVNETHDRSZ {size} on fd {fd}", e.errno) from None
