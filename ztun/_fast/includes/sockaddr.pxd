# Socket addresses as connect() takes them, for the modules that make connects in C (sockq, handshake).
from libc.stdint cimport uint16_t
from libc.string cimport memset

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr_storage:
        sa_family_t ss_family

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        pass

    struct in6_addr:
        pass

    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char *src, void *dst)
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    unsigned int htonl(unsigned int)

cdef extern from "<sys/socket.h>" nogil:
    enum: AF_INET, AF_INET6


cdef inline int fill_sockaddr(sockaddr_storage *addr, socklen_t *addrlen, address) except -1:
    """addr from (host, port[, flowinfo, scope_id]): an IP literal (IPv6 if it has a colon), as connect() takes it.

    Refused as connect() refuses them (connect_address.split_address), ValueError for a host that is no IP literal.
    """
    from ztun._fast.connect_address import split_address
    cdef sockaddr_in *a4 = <sockaddr_in *>addr
    cdef sockaddr_in6 *a6 = <sockaddr_in6 *>addr
    host, port, flowinfo, scope_id = split_address(address)
    memset(addr, 0, sizeof(sockaddr_storage))
    if b":" not in host:
        a4.sin_family = AF_INET
        a4.sin_port = htons(port)
        if inet_pton(AF_INET, host, &a4.sin_addr) != 1:
            raise ValueError(f"{address[0]!r} is not an IPv4 address")
        addrlen[0] = sizeof(sockaddr_in)
    else:
        a6.sin6_family = AF_INET6
        a6.sin6_port = htons(port)
        a6.sin6_flowinfo = htonl(flowinfo)
        a6.sin6_scope_id = scope_id
        if inet_pton(AF_INET6, host, &a6.sin6_addr) != 1:
            raise ValueError(f"{address[0]!r} is not an IPv6 address")
        addrlen[0] = sizeof(sockaddr_in6)
    return 0
