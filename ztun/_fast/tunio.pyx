"""Batch read and write of raw IP packets on a TUN fd, and the Linux TUN ioctls, compiled.

The syscalls run with the GIL released; tunio_py.py is the twin. Slot i's packet sits at
data[i, HEADROOM:], and `hdr` bytes of the headroom in front of it (a virtio_net_hdr, a
utun family header) are read and written with it.
"""
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint8_t
from libc.string cimport memcpy, memset

from ..errors import PacketError, TunError

from batch_read cimport read_slots
from batch_write cimport write_args_error, write_slots
from core cimport HEADROOM
from system cimport *

LINUX_TUN = bool(ZT_HAVE_LINUX_TUN)

# The values of <linux/if_tun.h>, for the test that keeps the twin's numbers honest.
CONSTANTS = {
    "TUNSETIFF": TUNSETIFF,
    "TUNGETIFF": TUNGETIFF,
    "TUNSETPERSIST": TUNSETPERSIST,
    "TUNSETOFFLOAD": TUNSETOFFLOAD,
    "TUNSETVNETHDRSZ": TUNSETVNETHDRSZ,
    "TUNGETFEATURES": TUNGETFEATURES,
    "IFF_TUN": IFF_TUN,
    "IFF_NO_PI": IFF_NO_PI,
    "IFF_MULTI_QUEUE": IFF_MULTI_QUEUE,
    "IFF_VNET_HDR": IFF_VNET_HDR,
    "IFF_TUN_EXCL": IFF_TUN_EXCL,
    "IFF_PERSIST": IFF_PERSIST,
    "IFNAMSIZ": IFNAMSIZ,
} if ZT_HAVE_LINUX_TUN else {}


def read_batch(int fd, batch, bint blocking=False, int hdr=0):
    """Read packets into batch slots 0.. until it is full or fd has none queued; return batch.count.

    A non-blocking fd returns 0 when nothing is queued. An error before the first packet
    raises TunError; an error after it ends the batch (the next call reports it).
    """
    cdef uint8_t[:, ::1] data = batch.data
    cdef int[::1] lengths = batch.lengths
    cdef Py_ssize_t i = 0
    cdef int err = 0
    if hdr < 0 or hdr > HEADROOM:
        raise PacketError(f"hdr must be 0..{HEADROOM}, got {hdr}")
    while data.shape[0]:
        with nogil:
            i = read_slots(fd, &data[0, 0], data.shape[1], &lengths[0], i, data.shape[0], hdr, blocking, &err)
        if err != EINTR:
            break
        PyErr_CheckSignals()
    batch.count = i
    if i == 0 and err:
        raise TunError(f"read from fd {fd}", err)
    return i


def write_batch(int fd, batch, Py_ssize_t n, int[::1] errnos not None, int only_verdict=-1, int hdr=0):
    """Write slots 0..n-1 with one write() each; return how many were written.

    With only_verdict >= 0 only slots whose batch.verdicts equal it are written. errnos[i]
    gets 0 for a slot written or skipped and the errno of a failed write otherwise, so one
    bad packet never stops the rest.
    """
    cdef uint8_t[:, ::1] data = batch.data
    cdef const int[::1] lengths = batch.lengths
    cdef const uint8_t[::1] verdicts = batch.verdicts
    cdef Py_ssize_t written
    if hdr < 0 or hdr > HEADROOM:
        raise PacketError(f"hdr must be 0..{HEADROOM}, got {hdr}")
    bad = write_args_error(n, data.shape[0], errnos.shape[0])
    if bad is not None:
        raise PacketError(bad)
    with nogil:
        written = write_slots(fd, data, lengths, verdicts, n, errnos, only_verdict, hdr, False)
    return written


cdef bytes _ifname(name):
    b = name.encode() if isinstance(name, str) else bytes(name)
    if not 0 < len(b) < IFNAMSIZ:
        raise ValueError(f"interface name must be 1..{IFNAMSIZ - 1} bytes, got {len(b)}")
    return b


cdef _need_linux():
    if not ZT_HAVE_LINUX_TUN:
        raise TunError("Linux TUN ioctls are not available on this platform")


def set_iff(int fd, name, int flags):
    """TUNSETIFF: create or attach the TUN device `name` with `flags` on fd; return its name."""
    cdef ifreq ifr
    cdef int r
    _need_linux()
    b = _ifname(name)
    memset(&ifr, 0, sizeof(ifr))
    memcpy(ifr.ifr_name, <const char *>b, len(b))
    ifr.ifr_flags = <short>flags
    with nogil:
        r = ioctl(fd, TUNSETIFF, &ifr)
    if r < 0:
        raise TunError(f"TUNSETIFF {name}", errno)
    return ifr.ifr_name[:IFNAMSIZ].split(b"\0", 1)[0].decode()


def get_iff(int fd):
    """TUNGETIFF: (name, flags) of the TUN device attached to fd."""
    cdef ifreq ifr
    cdef int r
    _need_linux()
    memset(&ifr, 0, sizeof(ifr))
    with nogil:
        r = ioctl(fd, TUNGETIFF, &ifr)
    if r < 0:
        raise TunError(f"TUNGETIFF on fd {fd}", errno)
    return ifr.ifr_name[:IFNAMSIZ].split(b"\0", 1)[0].decode(), ifr.ifr_flags & 0xFFFF


def set_vnet_hdr_size(int fd, int size):
    """TUNSETVNETHDRSZ: the virtio_net_hdr length the device puts in front of each packet."""
    cdef int r
    _need_linux()
    with nogil:
        r = ioctl(fd, TUNSETVNETHDRSZ, &size)
    if r < 0:
        raise TunError(f"TUNSETVNETHDRSZ {size} on fd {fd}", errno)
