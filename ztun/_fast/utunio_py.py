"""Batch read and write of utun packets (4-byte address-family header in front): the pure-Python twin.

Same contract as utunio.pyx, one os.readv/os.write per packet.
"""

import errno
import os
import select

from ..errors import PacketError, TunError
from .batch_write_py import write_slots
from .defs import HEADROOM
from .typed_args import array

HDR = 4
AF_INET = 2  # Darwin's AF_INET, whatever the host's
AF_INET6 = 30  # Darwin's AF_INET6 (Linux's is 10)
DROP_SHORT = 0
DROP_FAMILY = 1
N_DROPS = 2

_HEADERS = {4: bytes((0, 0, 0, AF_INET)), 6: bytes((0, 0, 0, AF_INET6))}


def read_batch(fd: int, batch, drops, blocking: bool = False) -> int:
    """Receive utun packets into batch slots 0.. until it is full or none is queued; return batch.count.

    Each slot gets the IP packet without its family header. Datagrams too short for the
    header or of another family are dropped and counted in drops[DROP_SHORT] and
    drops[DROP_FAMILY]. A blocking fd waits for the first packet only. An error before
    the first packet raises TunError; one after it ends the batch (the next call reports it).
    """
    if len(array(drops, "i", 8, "drops", writable=True)) < N_DROPS:
        raise PacketError(f"drops holds {len(drops)} counters, needs {N_DROPS}")
    room = batch.data.shape[1] - HEADROOM
    poller = None
    i = 0
    while i < batch.slots:
        if blocking and i > 0:  # only the first packet may wait
            if poller is None:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
            if not poller.poll(0):
                break
        slot = memoryview(batch.data[i, HEADROOM - HDR :])
        try:
            n = os.readv(fd, [slot])
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        except OSError as e:
            if i == 0:
                batch.count = 0
                raise TunError(f"recv from utun fd {fd}", e.errno) from None
            break
        if n == 0:
            break
        if n < HDR:
            drops[DROP_SHORT] += 1
            continue
        if bytes(slot[:3]) != b"\0\0\0" or slot[3] not in (AF_INET, AF_INET6):
            drops[DROP_FAMILY] += 1
            continue
        batch.lengths[i] = min(n - HDR, room)
        i += 1
    batch.count = i
    return i


def write_batch(fd: int, batch, n: int, errnos, only_verdict: int = -1) -> int:
    """Send slots 0..n-1, each behind the family header its IP version calls for; return how many were sent.

    errnos[i] gets 0 for a slot sent or skipped, EINVAL for a bad length, EAFNOSUPPORT
    for a packet that is neither IPv4 nor IPv6, and the errno of a failed send otherwise.
    """
    return write_slots(fd, batch, n, errnos, only_verdict, HDR, _frame)


def _frame(batch, i: int) -> int:
    """Store slot i's family header in front of it: 0, or EAFNOSUPPORT for neither IPv4 nor IPv6."""
    header = _HEADERS.get(int(batch.data[i, HEADROOM]) >> 4)
    if header is None:
        return errno.EAFNOSUPPORT
    batch.data[i, HEADROOM - HDR : HEADROOM] = list(header)
    return 0
