"""Batch read and write of utun packets (each framed by a 4-byte address-family header), compiled.

macOS utun sockets put a big-endian address family (2 for IPv4, 30 for IPv6) in front of
every packet. Reads land the header in the last 4 bytes of a slot's headroom, so the IP
packet sits at data[i, HEADROOM:] with no copy; writes store the header there and send
from it. POSIX sockets only (Linux and macOS builds); utunio_py.py is the twin.
"""
from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EINTR, errno
from libc.stdint cimport uint8_t

from ..errors import PacketError, TunError

from batch_write cimport write_args_error, write_slots
from core cimport HEADROOM
from utun cimport *

HDR = ZT_UTUN_HDR
AF_INET = ZT_UTUN_AF_INET
AF_INET6 = ZT_UTUN_AF_INET6

# Indexes into the `drops` counters read_batch adds to.
cdef enum:
    C_DROP_SHORT = 0  # a datagram shorter than the family header
    C_DROP_FAMILY = 1  # a family header that is neither IPv4 nor IPv6
    C_N_DROPS = 2

DROP_SHORT = C_DROP_SHORT
DROP_FAMILY = C_DROP_FAMILY
N_DROPS = C_N_DROPS


cdef Py_ssize_t _read_some(int fd, uint8_t[:, ::1] data, int[::1] lengths, Py_ssize_t i,
                           Py_ssize_t room, bint blocking, long long *drops, int *err) noexcept nogil:
    """Receive into slots i.. until full, would-block or an error (*err); return the next free slot."""
    cdef Py_ssize_t slots = data.shape[0]
    cdef ssize_t n
    cdef uint8_t *p
    cdef int flags
    err[0] = 0
    while i < slots:
        # A blocking fd waits only for the batch's first packet; the rest take what is queued.
        flags = 0 if (blocking and i == 0) else MSG_DONTWAIT
        p = &data[i, HEADROOM - ZT_UTUN_HDR]
        n = recv(fd, p, room + ZT_UTUN_HDR, flags)
        if n < 0:
            if not ZT_UTUN_WOULD_BLOCK(errno):
                err[0] = errno
            break
        if n == 0:
            break  # an empty datagram, or a socketpair peer that went away: nothing to keep
        if n < ZT_UTUN_HDR:
            drops[C_DROP_SHORT] += 1
            continue  # the slot is reused for the next datagram
        if p[0] != 0 or p[1] != 0 or p[2] != 0 or (p[3] != ZT_UTUN_AF_INET and p[3] != ZT_UTUN_AF_INET6):
            drops[C_DROP_FAMILY] += 1
            continue
        # A datagram longer than the slot arrives truncated to room; the parser drops it.
        lengths[i] = <int>(n - ZT_UTUN_HDR)
        i += 1
    return i


def read_batch(int fd, batch, long long[::1] drops not None, bint blocking=False):
    """Receive utun packets into batch slots 0.. until it is full or none is queued; return batch.count.

    Each slot gets the IP packet without its family header. Datagrams too short for the
    header or of another family are dropped and counted in drops[DROP_SHORT] and
    drops[DROP_FAMILY]. A blocking fd waits for the first packet only. An error before
    the first packet raises TunError; one after it ends the batch (the next call reports it).
    """
    cdef uint8_t[:, ::1] data = batch.data
    cdef int[::1] lengths = batch.lengths
    cdef Py_ssize_t room = data.shape[1] - HEADROOM, i = 0
    cdef int err = 0
    if drops.shape[0] < N_DROPS:
        raise PacketError(f"drops holds {drops.shape[0]} counters, needs {N_DROPS}")
    while True:
        with nogil:
            i = _read_some(fd, data, lengths, i, room, blocking, &drops[0], &err)
        if err != EINTR:
            break
        PyErr_CheckSignals()
    batch.count = i
    if i == 0 and err:
        raise TunError(f"recv from utun fd {fd}", err)
    return i


def write_batch(int fd, batch, Py_ssize_t n, int[::1] errnos not None, int only_verdict=-1):
    """Send slots 0..n-1, each behind the family header its IP version calls for; return how many were sent.

    With only_verdict >= 0 only slots whose batch.verdicts equal it are sent. errnos[i]
    gets 0 for a slot sent or skipped, EINVAL for a bad length, EAFNOSUPPORT for a packet
    that is neither IPv4 nor IPv6, and the errno of a failed send otherwise: one bad
    packet never stops the rest. The header overwrites 4 bytes of the slot's headroom.
    """
    cdef uint8_t[:, ::1] data = batch.data
    cdef const int[::1] lengths = batch.lengths
    cdef const uint8_t[::1] verdicts = batch.verdicts
    cdef Py_ssize_t written
    bad = write_args_error(n, data.shape[0], errnos.shape[0])
    if bad is not None:
        raise PacketError(bad)
    with nogil:
        written = write_slots(fd, data, lengths, verdicts, n, errnos, only_verdict, ZT_UTUN_HDR, True)
    return written
