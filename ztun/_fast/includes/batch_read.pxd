# The batch-read loop of a Linux TUN fd, written once for tunio.read_batch and the TUN pump's thread.
from libc.errno cimport errno
from libc.stdint cimport uint8_t

from core cimport HEADROOM
from system cimport POLLIN, ZT_WOULD_BLOCK, poll, pollfd, read


cdef inline Py_ssize_t read_slots(int fd, uint8_t *data, Py_ssize_t stride, int *lengths, Py_ssize_t i,
                                  Py_ssize_t slots, int hdr, bint blocking, int *err) noexcept nogil:
    """Read packets into slots i.. (slot k's at data + k * stride + HEADROOM, hdr bytes of header in
    front of it) until slots are full, none is queued or a read fails; return the next free slot.
    *err: the errno that ended it (EINTR included: the caller decides), 0 for full or none queued.
    A blocking fd waits for the first packet only."""
    cdef Py_ssize_t room = stride - HEADROOM
    cdef ssize_t n
    cdef pollfd pfd
    pfd.fd = fd
    pfd.events = POLLIN
    err[0] = 0
    while i < slots:
        if blocking and i > 0:
            pfd.revents = 0
            if poll(&pfd, 1, 0) <= 0:
                break
        n = read(fd, data + i * stride + HEADROOM - hdr, room + hdr)
        if n < 0:
            if not ZT_WOULD_BLOCK(errno):
                err[0] = errno
            break
        if n == 0:
            break
        n -= hdr
        if n < 0:
            n = 0
        elif n > room:
            n = room  # the kernel reports the full length of a packet it truncated
        lengths[i] = <int>n
        i += 1
    return i
