"""The batch-write loop of the tunio and utunio twins, written once (compiled: includes/batch_write.pxd)."""

import errno
import os

from ..errors import PacketError
from .defs import HEADROOM
from .typed_args import array, index


def write_slots(fd: int, batch, n: int, errnos, only_verdict: int = -1, hdr: int = 0, frame=None) -> int:
    """Write slots 0..n-1 (with only_verdict >= 0, only those whose verdict it is), each behind the
    hdr bytes of headroom in front of it, with one os.write each; return how many were written.

    frame(batch, i), if given, stores slot i's header in that headroom and returns 0, or the
    errno that keeps the slot back (utun: EAFNOSUPPORT). errnos[i] gets 0 for a slot written or
    skipped, EINVAL for a bad length, frame's errno, else the errno of the failed write.
    """
    fd, n, only_verdict = index(fd), index(n), index(only_verdict)
    n_errnos = len(array(errnos, "i", 4, "errnos", writable=True))
    if not 0 <= n <= batch.slots:
        raise PacketError(f"n {n} outside 0..{batch.slots}")
    if n_errnos < n:
        raise PacketError(f"errnos holds {n_errnos} entries, needs {n}")
    room = batch.data.shape[1] - HEADROOM
    written = 0
    for i in range(n):
        errnos[i] = 0
        if only_verdict >= 0 and batch.verdicts[i] != only_verdict:
            continue
        length = int(batch.lengths[i])
        if not 0 < length <= room:
            errnos[i] = errno.EINVAL
            continue
        err = frame(batch, i) if frame is not None else 0
        if err:
            errnos[i] = err
            continue
        try:  # os.write retries after EINTR itself (PEP 475)
            os.write(fd, memoryview(batch.data[i, HEADROOM - hdr : HEADROOM + length]))
        except OSError as e:
            errnos[i] = e.errno
        else:
            written += 1
    return written
