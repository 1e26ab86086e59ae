# POSIX calls and the Linux TUN ioctl interface used by the batch I/O module (tunio.pyx).
cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void *buf, size_t count)
    ssize_t write(int fd, const void *buf, size_t count)


cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t

    struct pollfd:
        int fd
        short events
        short revents

    int poll(pollfd *fds, nfds_t nfds, int timeout)
    enum: POLLIN, POLLERR, POLLHUP, POLLNVAL


cdef extern from "zt_tun.h" nogil:
    enum: IFNAMSIZ

    struct ifreq:
        char ifr_name[IFNAMSIZ]
        short ifr_flags

    int ioctl(int fd, unsigned long request, ...)
    bint ZT_WOULD_BLOCK(int err)

    # ioctl request codes are unsigned long: some have the top bit of 32 set.
    const unsigned long TUNSETIFF
    const unsigned long TUNGETIFF
    const unsigned long TUNSETPERSIST
    const unsigned long TUNSETOFFLOAD
    const unsigned long TUNSETVNETHDRSZ
    const unsigned long TUNGETFEATURES

    enum:
        ZT_HAVE_LINUX_TUN
        IFF_TUN
        IFF_NO_PI
        IFF_MULTI_QUEUE
        IFF_VNET_HDR
        IFF_TUN_EXCL
        IFF_PERSIST
