"""The macOS TUN device: a utun control socket, or an adopted fd; batch I/O through ztun._fast.utunio.

Importable everywhere (its framing is tested over a socketpair on Linux); only open()
needs macOS.
"""

import errno
import logging
import os
import socket
import sys

import numpy as np

from ..errors import TunError
from ..system.darwin_ioctl import Ifconfig
from . import utun_control
from .fd_device import FdDevice
from .options import TunOptions

log = logging.getLogger("ztun.tun.device")

HDR = 4  # the address-family header in front of every utun packet
_FAMILY = {4: b"\0\0\0\x02", 6: b"\0\0\0\x1e"}  # Darwin AF_INET, AF_INET6, big-endian


def _default_io():
    from .. import _fast

    io = getattr(_fast, "utunio", None)
    if io is None:
        raise TunError("ztun._fast provides no utunio module on this platform")
    return io


def _need_darwin():
    if sys.platform != "darwin":
        raise TunError(f"a utun device needs macOS; this is {sys.platform} (use ztun.tun.device.open_tun)")


class DarwinTunDevice(FdDevice):
    """A utun interface. Reads strip and writes add the 4-byte address-family header.

    A utun that ztun created disappears, with its addresses and routes, when its socket
    closes. `io` is the batch I/O module (ztun._fast.utunio by default; tests pass the
    compiled module and the twin).
    """

    _kind = "utun device"

    def __init__(self, fd: int, name: str, mtu: int, *, created: bool = False, adopted: bool = False, io=None):
        super().__init__(fd, name, mtu, created=created, adopted=adopted)
        self._io = io if io is not None else _default_io()
        self._drops = np.zeros(self._io.N_DROPS, dtype=np.int64)

    @classmethod
    def open(cls, options: TunOptions) -> "DarwinTunDevice":
        """Create utunN for options.name "utunN" (any other name: the next free utun), or adopt options.file_descriptor."""
        _need_darwin()
        for field in ("multi_queue", "offload"):
            if getattr(options, field):
                raise TunError(f"{field} is a Linux TUN feature; macOS utun has no equivalent")
        if options.file_descriptor is not None:
            return cls.adopt(options.file_descriptor, options.mtu)
        fd, name = utun_control.open_utun(utun_control.unit_for_name(options.name))
        try:
            ifc = Ifconfig()
            try:
                ifc.set_mtu(name, options.mtu)
            finally:
                ifc.close()
        except Exception as e:
            os.close(fd)
            raise TunError(f"setting the MTU of {name} to {options.mtu}", getattr(e, "errno", None)) from None
        if name != options.name:
            log.info("macOS names utun devices itself: %s asked for, %s created", options.name, name)
        dev = cls(fd, name, options.mtu, created=True)
        log.info("created utun device %s (index %d, mtu %d)", name, dev.if_index, options.mtu)
        return dev

    @classmethod
    def adopt(cls, fd: int, mtu: int) -> "DarwinTunDevice":
        """Take over an open utun control socket (a Network Extension's, a launcher's); closing the device closes fd."""
        _need_darwin()
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            raise TunError(f"file_descriptor {fd} is not an open socket", e.errno) from None
        try:
            name = utun_control.interface_name(sock)
        except OSError as e:
            sock.detach()
            raise TunError(f"adopted fd {fd} is not a utun control socket (UTUN_OPT_IFNAME)", e.errno) from None
        sock.detach()
        log.info("adopted utun device %s from fd %d", name, fd)
        return cls(fd, name, mtu, adopted=True)

    def read(self, buf) -> int:
        """Read one packet (without its family header) into buf; return its length. BlockingIOError if none is queued."""
        fd = self.fileno()
        head = bytearray(HDR)
        try:
            n = os.readv(fd, [head, buf])
        except BlockingIOError:
            raise
        except OSError as e:
            raise TunError(f"read from {self.name}", e.errno) from None
        return max(n - HDR, 0)

    def write(self, buf) -> int:
        """Write one IPv4 or IPv6 packet behind the family header its version calls for; return its length."""
        fd = self.fileno()
        view = memoryview(buf)
        head = _FAMILY.get(view[0] >> 4 if len(view) else 0)
        if head is None:
            raise TunError(f"write to {self.name}: not an IPv4 or IPv6 packet", errno.EAFNOSUPPORT)
        try:
            return os.writev(fd, [head, view]) - HDR
        except OSError as e:
            raise TunError(f"write to {self.name}", e.errno) from None

    def read_batch(self, batch) -> int:
        """Read packets into batch's slots until it is full or none is queued; return batch.count."""
        return self._io.read_batch(self.fileno(), batch, self._drops, not self._nonblocking)

    def write_batch(self, batch, n: int, *, only_verdict: int | None = None) -> int:
        """Write slots 0..n-1 (only those whose verdict is only_verdict if given); return how many were written."""
        errnos = self._errnos_for(batch, n)
        return self._io.write_batch(self.fileno(), batch, n, errnos, -1 if only_verdict is None else only_verdict)

    @property
    def drops(self) -> dict:
        """Datagrams read_batch dropped: too short for the family header, or of another family."""
        return {"short": int(self._drops[self._io.DROP_SHORT]), "bad_family": int(self._drops[self._io.DROP_FAMILY])}
