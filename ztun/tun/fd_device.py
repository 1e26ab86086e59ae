"""FdDevice: what the TUN devices that are one file descriptor (Linux TUN, macOS utun) share."""

import errno
import logging
import os
import socket

import numpy as np

from ..errors import TunError

log = logging.getLogger("ztun.tun.device")


def if_index(name: str) -> int:
    """The interface index of name, 0 if there is none (yet)."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


class FdDevice:
    """The fd's life cycle, the TunDevice attributes, and the per-slot errno bookkeeping of write_batch.

    Subclasses call __init__ and implement the packet I/O; the capabilities default to
    none (no vnet header, offload or NAPI) for a subclass to set where it has them.
    """

    _kind = "TUN device"  # how log lines name it
    vnet_hdr = False
    offload = 0
    napi = False
    raw_io = False

    def __init__(self, fd: int, name: str, mtu: int, *, created: bool = False, adopted: bool = False):
        self._fd = fd
        self._nonblocking = not os.get_blocking(fd)
        self._errnos = np.zeros(0, dtype=np.int32)
        self._last_n = 0
        self.name = name
        self.if_index = if_index(name)
        self.mtu = mtu
        self.created = created
        self.adopted = adopted

    def fileno(self) -> int:
        if self._fd < 0:
            raise TunError(f"TUN device {self.name} is closed", errno.EBADF)
        return self._fd

    def _errnos_for(self, batch, n: int):
        """The reused errno array a write_batch of n slots of batch fills (read by failed_slots)."""
        if self._errnos.shape[0] < batch.slots:
            self._errnos = np.zeros(batch.slots, dtype=np.int32)
        self._last_n = n
        return self._errnos

    def failed_slots(self) -> list:
        """(slot, errno) of each slot the last write_batch could not write."""
        errs = self._errnos[: self._last_n]
        return [(int(i), int(errs[i])) for i in np.flatnonzero(errs)]

    def set_nonblocking(self, nonblocking: bool) -> None:
        os.set_blocking(self.fileno(), not nonblocking)
        self._nonblocking = nonblocking

    def close(self) -> None:
        """Close the fd; a device this open created disappears with it. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
            log.info("closed %s %s", self._kind, self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<{type(self).__name__} {self.name} index={self.if_index} fd={self._fd} mtu={self.mtu}>"
