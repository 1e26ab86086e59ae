# POSIX socket calls and the utun framing constants used by utunio.pyx (Linux and macOS builds).
cdef extern from "zt_utun.h" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    bint ZT_UTUN_WOULD_BLOCK(int err)
    enum:
        MSG_DONTWAIT
        EAFNOSUPPORT
        ZT_UTUN_HDR
        ZT_UTUN_AF_INET
        ZT_UTUN_AF_INET6
