"""The Linux TUN device: /dev/net/tun with TUNSETIFF, or an adopted fd; batch I/O through ztun._fast.tunio."""

import errno
import logging
import os

from .._fast import tunio
from .._fast.defs import VNET_HDR_LEN
from ..errors import TunError
from . import offload as tun_offload
from .fd_device import FdDevice, if_index
from .napi import IFF_NAPI
from .offload import USO  # noqa: F401  (tests/test_stack_uso.py imports it from here)
from .options import TunOptions

log = logging.getLogger("ztun.tun.device")

TUN_PATH = "/dev/net/tun"
_C = tunio.CONSTANTS


def _open_control() -> int:
    try:
        return os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TunError(f"no {TUN_PATH}: load the tun module (modprobe tun) or create the device node", errno.ENOENT) from None
    except PermissionError as e:
        raise TunError(f"cannot open {TUN_PATH} (needs root or CAP_NET_ADMIN)", e.errno) from None
    except OSError as e:
        raise TunError(f"cannot open {TUN_PATH}", e.errno) from None


def _attach(fd: int, name: str, flags: int, existed: bool) -> str:
    try:
        return tunio.set_iff(fd, name, flags)
    except TunError as e:
        os.close(fd)
        if e.errno == errno.EBUSY:
            raise TunError(f"TUN device {name} is in use by another process (is another ztun-appliance running?)", e.errno) from None
        if e.errno == errno.EINVAL and existed:
            raise TunError(f"{name} exists but is not a TUN device ztun can attach to (a TAP, or its multi-queue setting differs)", e.errno) from None
        if e.errno == errno.EPERM:
            raise TunError(f"cannot create TUN device {name} (needs root or CAP_NET_ADMIN)", e.errno) from None
        raise


class LinuxTunDevice(FdDevice):
    """A TUN interface opened through /dev/net/tun (IFF_TUN | IFF_NO_PI), or adopted from an fd.

    `created` says whether this open made the device: ztun never makes a device
    persistent, so one it created disappears when its last fd closes, addresses and
    routes with it; a persistent device that existed before is attached and left in place.
    """

    raw_io = True

    def __init__(self, fd: int, name: str, mtu: int, *, flags: int = 0, created: bool = False, adopted: bool = False):
        super().__init__(fd, name, mtu, created=created, adopted=adopted)
        self.flags = flags
        self.vnet_hdr = bool(flags & _C.get("IFF_VNET_HDR", 0))
        self.offload = 0  # TUN_F_* flags enabled with TUNSETOFFLOAD (ztun.tun.offload)
        self.multi_queue = bool(flags & _C.get("IFF_MULTI_QUEUE", 0))
        self.napi = bool(flags & IFF_NAPI)  # writes go through NAPI (ztun.tun.napi)
        self._hdr = VNET_HDR_LEN if self.vnet_hdr else 0

    @classmethod
    def open(cls, options: TunOptions) -> "LinuxTunDevice":
        """Create the device options.name, attach to an existing persistent one, or adopt options.file_descriptor."""
        if options.file_descriptor is not None:
            return cls.adopt(options.file_descriptor, options.mtu)
        flags = _C["IFF_TUN"] | _C["IFF_NO_PI"]
        if options.multi_queue:
            flags |= _C["IFF_MULTI_QUEUE"]
        existed = if_index(options.name) != 0
        # IFF_VNET_HDR and TUNSETOFFLOAD stay on a device after its last fd closes: only a
        # device ztun creates (and so destroys) gets them.
        use_offload = options.offload and not existed
        if options.offload and existed:
            log.info("offload left off on %s: it exists already and the setting would outlive ztun", options.name)
        if use_offload:
            flags |= _C["IFF_VNET_HDR"]
        # NAPI for a device ztun creates, so its threaded switch (sysfs) goes with it
        want_napi = options.napi != "off" and not existed
        if want_napi:
            flags |= IFF_NAPI
        fd = _open_control()
        try:
            name = _attach(fd, options.name, flags, existed)
        except TunError as e:
            if not flags & IFF_NAPI or e.errno != errno.EINVAL:
                raise
            flags &= ~IFF_NAPI  # a kernel that refuses the flag; one before 4.15 ignores it
            fd = _open_control()
            name = _attach(fd, options.name, flags, existed)
        if flags & IFF_NAPI and not tunio.get_iff(fd)[1] & IFF_NAPI:
            flags &= ~IFF_NAPI
        if want_napi and not flags & IFF_NAPI:
            log.info("no IFF_NAPI on %s (a kernel before 4.15): the kernel receives ztun's writes inline", name)
        offload = 0
        if use_offload:
            try:
                tunio.set_vnet_hdr_size(fd, VNET_HDR_LEN)
            except TunError:
                os.close(fd)
                raise
            offload = tun_offload.negotiate(fd, name)
        dev = cls(fd, name, options.mtu, flags=flags, created=not existed)
        dev.offload = offload
        log.info("%s TUN device %s (index %d, flags 0x%04x)", "created" if dev.created else "attached to existing", name, dev.if_index, flags)
        return dev

    @classmethod
    def adopt(cls, fd: int, mtu: int) -> "LinuxTunDevice":
        """Take over an open TUN fd: its name and flags come from TUNGETIFF; closing the device closes fd."""
        try:
            os.fstat(fd)
        except OSError as e:
            raise TunError(f"file_descriptor {fd} is not open", e.errno) from None
        name, flags = tunio.get_iff(fd)
        if not flags & _C["IFF_TUN"] or not flags & _C["IFF_NO_PI"]:
            raise TunError(f"adopted fd {fd} ({name}) is not an IFF_TUN|IFF_NO_PI device (flags 0x{flags:04x})")
        if flags & _C["IFF_VNET_HDR"]:
            tunio.set_vnet_hdr_size(fd, VNET_HDR_LEN)
        log.info("adopted TUN device %s from fd %d (flags 0x%04x)", name, fd, flags)
        return cls(fd, name, mtu, flags=flags, adopted=True)

    def open_queue(self) -> "LinuxTunDevice":
        """Another queue of a multi-queue device: its own fd, for another thread or process."""
        if not self.multi_queue:
            raise TunError(f"{self.name} was not opened with multi_queue")
        fd = _open_control()
        _attach(fd, self.name, self.flags, True)
        if self.vnet_hdr:
            tunio.set_vnet_hdr_size(fd, VNET_HDR_LEN)
        return LinuxTunDevice(fd, self.name, self.mtu, flags=self.flags)

    def read(self, buf) -> int:
        """Read one packet into buf; return its length. BlockingIOError if none is queued (non-blocking)."""
        fd = self.fileno()
        try:
            if self._hdr:
                n = os.readv(fd, [bytearray(self._hdr), buf]) - self._hdr
                return max(n, 0)
            return os.readv(fd, [buf])
        except BlockingIOError:
            raise
        except OSError as e:
            raise TunError(f"read from {self.name}", e.errno) from None

    def write(self, buf) -> int:
        """Write one packet (with a zero virtio_net_hdr in front when offload is on); return its length."""
        fd = self.fileno()
        try:
            if self._hdr:
                return os.writev(fd, [bytes(self._hdr), buf]) - self._hdr
            return os.write(fd, buf)
        except OSError as e:
            raise TunError(f"write to {self.name}", e.errno) from None

    def read_batch(self, batch) -> int:
        """Read packets into batch's slots until it is full or none is queued; return batch.count."""
        return tunio.read_batch(self.fileno(), batch, not self._nonblocking, self._hdr)

    def write_batch(self, batch, n: int, *, only_verdict: int | None = None) -> int:
        """Write slots 0..n-1 (only those whose verdict is only_verdict if given); return how many were written."""
        errnos = self._errnos_for(batch, n)
        return tunio.write_batch(self.fileno(), batch, n, errnos, -1 if only_verdict is None else only_verdict, self._hdr)
