"""TunDevice: the protocol every platform's TUN device satisfies, open_tun() that picks one, and the privilege check."""

import errno
import os
import sys
from typing import Protocol, runtime_checkable

from ..errors import TunError, ZtunError
from .options import TunOptions


@runtime_checkable
class TunDevice(Protocol):
    """An open TUN interface moving raw IP packets (no packet-info header) to and from the kernel."""

    name: str
    """The interface name the system gave the device (macOS picks utunN itself)."""

    if_index: int
    """Its interface index (0 if the system has none for it yet)."""

    mtu: int
    """The largest packet it carries."""

    vnet_hdr: bool
    """Each packet carries a virtio_net_hdr (Linux IFF_VNET_HDR): batches read or written need vnet_hdr too."""

    offload: int
    """The TUN_F_* flags enabled with TUNSETOFFLOAD (ztun.tun.offload): the super-packets it moves; 0 for none."""

    napi: bool
    """Writes go through the kernel's NAPI (Linux IFF_NAPI), which ztun.tun.napi may thread."""

    raw_io: bool
    """Packets move by read() and write() of one packet each on fileno(), behind a virtio_net_hdr when
    vnet_hdr (Linux TUN): a native thread may read and write them (ztun._fast.tunpump)."""

    created: bool
    """This open created the interface: it goes, with its addresses and routes, when the device closes."""

    adopted: bool
    """The device is an open fd its owner handed over (file_descriptor): its MTU, addresses and link are the owner's."""

    def fileno(self) -> int:
        """The fd to wait on for readability."""

    def read(self, buf) -> int:
        """Read one packet into buf; return its length. BlockingIOError if none is queued (non-blocking)."""

    def write(self, buf) -> int:
        """Write one packet; return its length."""

    def read_batch(self, batch) -> int:
        """Read packets into batch's slots until it is full or none is queued; return batch.count."""

    def write_batch(self, batch, n: int, *, only_verdict: int | None = None) -> int:
        """Write slots 0..n-1 (only those with that verdict if given); return how many were written.

        A slot that fails does not stop the rest: failed_slots() says which and why.
        """

    def failed_slots(self) -> list:
        """(slot, errno) of each slot the last write_batch could not write."""

    def set_nonblocking(self, nonblocking: bool) -> None:
        """Make read and read_batch return at once when nothing is queued."""

    def close(self) -> None:
        """Close the device; a device ztun created disappears. Idempotent."""


CAP_NET_ADMIN = 12  # <linux/capability.h>


def has_net_admin(status_path: str = "/proc/self/status") -> bool:
    """Whether this Linux process may configure networking: root, or CAP_NET_ADMIN in its effective set."""
    if os.geteuid() == 0:
        return True
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def check_privilege(options: TunOptions) -> None:
    """TunError, in one line, when this process cannot create the TUN device options describe.

    Called before anything else is touched (a control socket, a device, a route), so a run
    without the privilege says just that. An adopted fd needs none to be used.
    """
    if options.file_descriptor is not None:
        return
    if sys.platform.startswith("linux") and not has_net_admin():
        raise TunError("cannot open /dev/net/tun (needs root or CAP_NET_ADMIN)", errno.EACCES)
    if sys.platform == "darwin" and os.geteuid() != 0:
        raise TunError("cannot create a utun device (needs root)", errno.EPERM)


def open_tun(options: TunOptions) -> TunDevice:
    """Open the TUN device described by options with this platform's implementation."""
    if sys.platform.startswith("linux"):
        from .device_linux import LinuxTunDevice

        return LinuxTunDevice.open(options)
    if sys.platform == "darwin":
        from .device_darwin import DarwinTunDevice

        return DarwinTunDevice.open(options)
    if sys.platform == "win32":
        from .device_windows import WintunDevice

        return WintunDevice.open(options)
    raise ZtunError(f"ztun has no TUN device for platform {sys.platform!r} (Linux, macOS and Windows only)")
