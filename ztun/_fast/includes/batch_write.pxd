# The batch-write loop of tunio.pyx and utunio.pyx, written once (their twins share batch_write_py.py).
from libc.errno cimport EINTR, EINVAL, errno
from libc.stdint cimport uint8_t

from core cimport HEADROOM
from utun cimport send, EAFNOSUPPORT, ZT_UTUN_AF_INET, ZT_UTUN_AF_INET6


cdef extern from "<unistd.h>" nogil:
    ssize_t write(int fd, const void *buf, size_t count)


cdef inline object write_args_error(Py_ssize_t n, Py_ssize_t slots, Py_ssize_t n_errnos):
    """Why write_slots cannot take n slots of a batch of slots with n_errnos errno entries, or None."""
    if n < 0 or n > slots:
        return f"n {n} outside 0..{slots}"
    if n_errnos < n:
        return f"errnos holds {n_errnos} entries, needs {n}"
    return None


cdef inline Py_ssize_t write_slots(int fd, uint8_t[:, ::1] data, const int[::1] lengths, const uint8_t[::1] verdicts,
                                   Py_ssize_t n, int[::1] errnos, int only_verdict, int hdr, bint utun) noexcept nogil:
    """Write slots 0..n-1 (with only_verdict >= 0, only those whose verdict it is), each behind the
    hdr bytes of headroom in front of it, with one write() each; return how many were written.

    With utun, hdr is the 4-byte family header, stored from the packet's IP version and sent
    (a utun fd is a socket). errnos[i] gets 0 for a slot written or skipped, EINVAL for a bad
    length, EAFNOSUPPORT (utun) for neither IPv4 nor IPv6, else the errno of the failed write:
    one bad packet never stops the rest. write_args_error must have passed n and errnos.
    """
    cdef Py_ssize_t room = data.shape[1] - HEADROOM, i, length, written = 0
    cdef ssize_t r
    cdef uint8_t *p
    cdef uint8_t version
    for i in range(n):
        errnos[i] = 0
        if only_verdict >= 0 and verdicts[i] != only_verdict:
            continue
        length = lengths[i]
        if length <= 0 or length > room:
            errnos[i] = EINVAL
            continue
        p = &data[i, HEADROOM - hdr]
        if utun:
            version = data[i, HEADROOM] >> 4
            if version != 4 and version != 6:
                errnos[i] = EAFNOSUPPORT
                continue
            p[0] = 0
            p[1] = 0
            p[2] = 0
            p[3] = ZT_UTUN_AF_INET if version == 4 else ZT_UTUN_AF_INET6
        while True:
            r = send(fd, p, length + hdr, 0) if utun else write(fd, p, length + hdr)
            if r >= 0 or errno != EINTR:
                break
        if r < 0:
            errnos[i] = errno
        else:
            written += 1
    return written
