"""UdpTable: a UDP session's datagrams after its first, both ways, with no Python per datagram. Compiled (Linux).

The UDP NAT (ztun/stack/udp.py) gives each client endpoint a session here. The first
datagram to each destination goes to the handler, which decides as always (rules, DNS,
the outbound); once a destination's way is known its route is added, and from then on:

- up: send_batch takes every UDP slot of a TUN batch whose (client, destination) has a
  route and sends its payload from the route's socket, in one sendmmsg per run of slots
  on one socket (direct: to the route's address; SOCKS5: the route's UDP request header
  first, on the socket connected to the relay). The slot is marked done (V_DROP) so the
  stack's Python path skips it; slots without a route are left to it. With the sender
  thread (sender_thread=True, includes/zt_udpsend.h) the loop only copies each datagram into
  its ring and the thread makes the sendmmsg calls, whose kernel work is most of a datagram's
  cost.
- down: the sockets attached here are in the table's own epoll (level-triggered), which
  the loop watches; receive takes what they hold with recvmmsg, straight into the output
  batch's slots at the payload's place, and writes the IP and UDP headers around it:
  from the datagram's sender (direct), the sender its SOCKS5 header names (the header is
  stripped), or the fake address the client used (a fake-IP destination's socket), to the
  client. IPv4 replies carry a per-packet ID with DF clear, so a router on the way to a
  LAN host with a smaller MTU fragments them instead of dropping them. With ZTUN_UDP_RX_GRO=1
  the sockets have UDP_GRO, so the kernel may hand over several same-size datagrams
  of one sender in one message: a DIRECT socket's goes to the TUN whole, as one USO
  super-packet, where the output takes them (uso: a TUN with USO and GRO on write), and is
  otherwise cut into its datagrams, as a SOCKS5 socket's always is (each datagram carries
  its own header and may name another sender): received into the table's scratch (8 x 64 KiB),
  copied out one datagram a slot; what the batch cannot take waits there (pending).

Idle expiry reads each session's last activity here (idle()), in C. udptable_py.py is the twin.
"""
import operator
import os

from libc.errno cimport errno, EAGAIN, EINTR, EINVAL, EIO, EMSGSIZE
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memmove, memset, memcmp

from core cimport *

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int sendmmsg(int fd, mmsghdr *msgs, unsigned int n, int flags)
    int recvmmsg(int fd, mmsghdr *msgs, unsigned int n, int flags, void *timeout)
    enum:
        MSG_DONTWAIT
        MSG_TRUNC

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        uint32_t u32
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *ev)
    int epoll_wait(int epfd, epoll_event *events, int n, int timeout)
    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "zt_udpsend.h" nogil:
    ctypedef struct zt_urec:
        uint32_t len
        int32_t sock
        uint32_t gen
        int32_t fd
        uint16_t namelen
        uint8_t name[28]
    ctypedef struct zt_usend:
        uint32_t *gens
        uint64_t sent, eagain, errors, stale, wakeups
    zt_usend *zt_usend_new(uint32_t nsocks)
    zt_urec *zt_usend_reserve(zt_usend *q, uint64_t *at, uint64_t free_to, uint32_t len)
    void zt_usend_begin(zt_usend *q, uint64_t *at, uint64_t *free_to)
    int zt_usend_commit(zt_usend *q, uint64_t at)
    void zt_usend_drain(zt_usend *q)
    void zt_usend_forget(zt_usend *q, uint32_t sock)
    void zt_usend_free(zt_usend *q)

cdef extern from *:
    """
    #include <netinet/in.h>
    /* A sockaddr for (address of alen bytes, port) in buf (28 bytes); its length. */
    static unsigned int zt_sockaddr(unsigned char *buf, const unsigned char *addr, int alen, unsigned short port) {
        memset(buf, 0, 28);
        if (alen == 4) {
            struct sockaddr_in *s = (struct sockaddr_in *)buf;
            s->sin_family = AF_INET;
            s->sin_port = htons(port);
            memcpy(&s->sin_addr, addr, 4);
            return sizeof *s;
        }
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)buf;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons(port);
        memcpy(&s6->sin6_addr, addr, 16);
        return sizeof *s6;
    }
    /* The sender in a received sockaddr: its address into addr (4 or 16 bytes, an IPv4-mapped
       IPv6 address as 4 when want == 4), its port; the address length, or 0 if it is neither
       family or not of the length wanted. */
    static const unsigned char zt_mapped[12] = {0,0,0,0,0,0,0,0,0,0,0xff,0xff};
    static int zt_sender(const unsigned char *buf, unsigned int len, int want, unsigned char *addr, unsigned short *port) {
        const struct sockaddr *sa = (const struct sockaddr *)buf;
        if (len >= sizeof(struct sockaddr_in) && sa->sa_family == AF_INET && want == 4) {
            const struct sockaddr_in *s = (const struct sockaddr_in *)buf;
            memcpy(addr, &s->sin_addr, 4);
            *port = ntohs(s->sin_port);
            return 4;
        }
        if (len >= sizeof(struct sockaddr_in6) && sa->sa_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)buf;
            const unsigned char *a = (const unsigned char *)&s6->sin6_addr;
            *port = ntohs(s6->sin6_port);
            if (want == 16) {
                memcpy(addr, a, 16);
                return 16;
            }
            if (memcmp(a, zt_mapped, 12) == 0) {
                memcpy(addr, a + 12, 4);
                return 4;
            }
        }
        return 0;
    }
    #include <linux/errqueue.h>
    /* Take one entry of fd's error queue (IP_RECVERR / IPV6_RECVERR). 1: an ICMP error, its type and
       code, and the destination of the datagram that caused it (into addr, port, in the family of
       want); 2: an entry that is none of that (taken, ignored); 0: the queue is empty; -1: an error. */
    static int zt_icmp_error(int fd, int want, unsigned char *addr, unsigned short *port, unsigned char *type,
                             unsigned char *code) {
        unsigned char name[28], control[256], byte;
        struct iovec iov = {&byte, 1};
        struct msghdr m;
        struct cmsghdr *c;
        memset(&m, 0, sizeof m);
        m.msg_name = name;
        m.msg_namelen = sizeof name;
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        m.msg_control = control;
        m.msg_controllen = sizeof control;
        if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
            return errno == EAGAIN ? 0 : -1;
        for (c = CMSG_FIRSTHDR(&m); c != NULL; c = CMSG_NXTHDR(&m, c)) {
            if ((c->cmsg_level == SOL_IP && c->cmsg_type == IP_RECVERR)
                    || (c->cmsg_level == SOL_IPV6 && c->cmsg_type == IPV6_RECVERR)) {
                struct sock_extended_err *e = (struct sock_extended_err *)CMSG_DATA(c);
                if (e->ee_origin != SO_EE_ORIGIN_ICMP && e->ee_origin != SO_EE_ORIGIN_ICMP6)
                    return 2;
                *type = e->ee_type;
                *code = e->ee_code;
                return zt_sender(name, m.msg_namelen, want, addr, port) ? 1 : 2;
            }
        }
        return 2;
    }
    #include <netinet/udp.h>
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #define ZT_GSO_CTRL CMSG_SPACE(sizeof(uint16_t))
    /* Make m one UDP GSO send: its payload (the iovs) goes out as datagrams of size bytes, the
       last one shorter or not; ctrl holds ZT_GSO_CTRL bytes. */
    static void zt_gso_mark(struct msghdr *m, unsigned char *ctrl, uint16_t size) {
        struct cmsghdr *c = (struct cmsghdr *)ctrl;
        memset(ctrl, 0, ZT_GSO_CTRL);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        memcpy(CMSG_DATA(c), &size, sizeof size);
        m->msg_control = ctrl;
        m->msg_controllen = ZT_GSO_CTRL;
    }
    /* Send the datagrams of GSO message m one by one (per iovs each), as the kernel refused it whole
       (a datagram over the path's MTU, or no GSO there). Counts into sent, again (a full buffer: the
       rest dropped) and errors (each costs its datagram). */
    static void zt_send_each(int fd, const struct msghdr *m, int per, uint64_t *sent, uint64_t *again,
                             uint64_t *errors) {
        struct msghdr one;
        size_t k;
        memset(&one, 0, sizeof one);
        one.msg_name = m->msg_name;
        one.msg_namelen = m->msg_namelen;
        one.msg_iovlen = per;
        for (k = 0; k < m->msg_iovlen; k += per) {
            one.msg_iov = m->msg_iov + k;
            for (;;) {
                if (sendmsg(fd, &one, MSG_DONTWAIT) >= 0)
                    (*sent)++;
                else if (errno == EINTR)
                    continue;
                else if (errno == EAGAIN) {
                    *again += (m->msg_iovlen - k) / per;
                    return;
                } else
                    (*errors)++;
                break;
            }
        }
    }
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    #define ZT_GRO_CTRL 32
    /* Let the kernel hand fd's datagrams over coalesced (UDP_GRO: several of one size in one
       message, their size in a control message); 0 or -1. */
    static int zt_gro_on(int fd) {
        int on = 1;
        return setsockopt(fd, SOL_UDP, UDP_GRO, &on, sizeof on);
    }
    /* The datagram size a UDP_GRO receive reports in m's control data: 0 when there is none
       (the message is one datagram). */
    static int zt_gro_size(struct msghdr *m) {
        struct cmsghdr *c;
        int size = 0;
        if (m->msg_control == NULL)
            return 0;
        for (c = CMSG_FIRSTHDR(m); c != NULL; c = CMSG_NXTHDR(m, c))
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO && c->cmsg_len >= CMSG_LEN(sizeof(int)))
                memcpy(&size, CMSG_DATA(c), sizeof size);
        return size;
    }
    /* Ask for the socket's ICMP errors in its error queue (family 4 or 6); 0 or -1. */
    static int zt_recverr(int fd, int version) {
        int on = 1;
        return version == 4 ? setsockopt(fd, SOL_IP, IP_RECVERR, &on, sizeof on)
                            : setsockopt(fd, SOL_IPV6, IPV6_RECVERR, &on, sizeof on);
    }
    """
    int zt_icmp_error(int fd, int want, uint8_t *addr, uint16_t *port, uint8_t *type, uint8_t *code) nogil
    int zt_recverr(int fd, int version) nogil
    int zt_gro_on(int fd) nogil
    int zt_gro_size(msghdr *m) nogil
    void zt_gso_mark(msghdr *m, uint8_t *ctrl, uint16_t size) nogil
    void zt_send_each(int fd, const msghdr *m, int per, uint64_t *sent, uint64_t *again, uint64_t *errors) nogil
    enum:
        ZT_GSO_CTRL
        ZT_GRO_CTRL
    unsigned int zt_sockaddr(uint8_t *buf, const uint8_t *addr, int alen, uint16_t port) nogil
    int zt_sender(const uint8_t *buf, unsigned int len, int want, uint8_t *addr, uint16_t *port) nogil
    const uint8_t zt_mapped[12]

DIRECT = 1  # datagrams go to the route's address; replies come from their sender
SOCKS5 = 2  # the route's RFC 1928 UDP header goes first, on a socket connected to the relay; replies carry one

cdef enum:
    _DIRECT = 1
    _SOCKS5 = 2
    _BATCH = 64  # datagrams per sendmmsg / recvmmsg
    _GSO_MAX = 65000  # bytes of one UDP GSO send (its IP packet's length field bounds it)
    _PER_SOCKET = 32  # datagrams taken from one socket per receive, so one busy socket cannot fill every batch
    _EVENTS = 64
    _PREFIX = 264  # RSV(2) FRAG ATYP, a name of up to 255 bytes with its length, PORT
    _HOP = 64
    _SPLIT = 8  # coalesced messages taken per recvmmsg where they are split (into the table's scratch)
    _SCRATCH = 65536  # bytes of one of them: a UDP payload fits (IPv4 65507, IPv6 65527)

cdef enum:
    _SKIP = 0xFFFFFFFF  # pend_size of a message already counted as dropped


def rx_gro_default() -> bool:
    """Whether session sockets get UDP_GRO: with ZTUN_UDP_RX_GRO=1 (off by default: in the end-to-end
    benchmark it did not measurably pay, README performance section)."""
    return os.environ.get("ZTUN_UDP_RX_GRO", "0") in ("1", "on")


cdef inline uint32_t _gro_count(uint32_t length, uint32_t size) noexcept nogil:
    if size == 0 or size >= length:
        return 1
    return (length + size - 1) // size


def gro_count(length: int, size: int) -> int:
    """The datagrams in a received message of length bytes whose UDP_GRO control message said size
    (0: none came): one unless size is shorter than the message."""
    if length < 0 or size < 0:
        raise ValueError("length and size must be >= 0")
    return _gro_count(min(length, 0xFFFFFFFF), min(size, 0xFFFFFFFF))


cdef struct Session:
    uint8_t used
    uint8_t version
    uint16_t cport
    int32_t routes  # first route of this session (a list through Route.snext)
    int32_t socks  # first socket of this session (through Sock.snext)
    uint8_t client[16]
    double last
    uint64_t up_packets, up_bytes, down_packets, down_bytes

cdef struct Route:
    uint8_t used
    uint8_t kind
    uint8_t nogso  # the kernel refused a UDP GSO send of it (a datagram over the path's MTU)
    uint16_t dport
    uint16_t prefix_len
    int32_t hnext  # next in its hash bucket
    int32_t snext  # next of its session
    int32_t session
    int32_t sock
    uint32_t tolen
    uint8_t dst[16]
    uint8_t to[28]
    uint8_t prefix[_PREFIX]

cdef struct Sock:
    uint8_t used
    uint8_t kind
    uint8_t has_fake
    uint8_t gro  # UDP_GRO is on: a message may hold several datagrams of one size
    int fd
    int32_t session
    int32_t snext
    uint8_t fake[16]


cdef struct Pool:
    # Ids 0..capacity-1: fresh ones in order, then the returned ones (a stack). Nothing is written
    # before an id is first used, so a table's untouched capacity costs no memory.
    int32_t *returned
    uint32_t nreturned, fresh, capacity


cdef inline int32_t _take(Pool *p) noexcept nogil:
    if p.nreturned:
        p.nreturned -= 1
        return p.returned[p.nreturned]
    if p.fresh < p.capacity:
        p.fresh += 1
        return p.fresh - 1
    return -1


cdef inline void _give(Pool *p, int32_t k) noexcept nogil:
    p.returned[p.nreturned] = k
    p.nreturned += 1


cdef inline uint32_t _in_use(Pool *p) noexcept nogil:
    return p.fresh - p.nreturned


cdef inline uint64_t _mix(uint64_t h, uint64_t v) noexcept nogil:
    h ^= v
    h *= 0x100000001b3ULL
    return h ^ (h >> 29)


cdef inline uint64_t _hash(uint64_t seed, int version, const uint8_t *client, uint16_t cport, const uint8_t *dst,
                           uint16_t dport) noexcept nogil:
    cdef int alen = 4 if version == 4 else 16, k
    cdef uint64_t h = seed ^ (<uint64_t>version << 40) ^ (<uint64_t>cport << 16) ^ dport
    for k in range(alen):
        h = _mix(h, client[k] | (<uint64_t>dst[k] << 8))
    return _mix(h, 0x9E3779B97F4A7C15ULL)


# The docstring's first lines are the constructor's signature for inspect.signature (as NatTable's).
cdef class UdpTable:
    """UdpTable(loop, on_ready, sessions=16384, routes=65536, sockets=65536, sender_thread=False)
--

    The compiled UDP session table: sessions, their routes (client endpoint and destination
    to a socket) and the sockets whose replies it reads. on_ready() runs on the loop when an
    attached socket has datagrams (then call receive). Capacities are fixed at creation;
    memory is taken as it is used. sender_thread: routed datagrams are sent by a native
    thread (started with the first), not by send_batch's caller.
    """

    cdef Session *sessions
    cdef Route *routes
    cdef Sock *socks
    cdef int32_t *buckets  # a route's id + 1 (0: empty), so the calloc'ed array needs no filling
    cdef Pool session_ids, route_ids, sock_ids
    cdef readonly uint32_t session_capacity, route_capacity, socket_capacity
    cdef uint32_t mask
    cdef uint64_t seed
    cdef int epfd
    cdef uint16_t ip_id
    cdef object loop
    cdef object on_ready
    cdef uint64_t c_datagrams, c_sent, c_send_dropped, c_send_error, c_received, c_recv_error, c_reply_wrong_family
    cdef uint64_t c_reply_by_name, c_reply_malformed, c_reply_fragment, c_reply_too_big, c_route_full
    cdef uint64_t c_unreachable, c_icmp_other
    cdef mmsghdr msgs[_BATCH]
    cdef iovec iovs[2 * _BATCH]
    # per message of a send: its datagrams, their size (the first's), bytes, whether a shorter
    # one ended it (UDP GSO: equal sizes, the last may be shorter), its route
    cdef uint16_t mcount[_BATCH]
    cdef uint16_t mseg[_BATCH]
    cdef uint32_t mtotal[_BATCH]
    cdef uint8_t mshort[_BATCH]
    cdef int32_t mroute[_BATCH]
    cdef uint8_t ctrl[_BATCH * ZT_GSO_CTRL]
    cdef bint gso
    cdef uint64_t c_gso_sends, c_gso_datagrams, c_gso_refused
    cdef uint8_t names[_BATCH * 28]
    cdef epoll_event events[_EVENTS]
    cdef zt_usend *sender  # NULL: sendmmsg on the caller's thread
    cdef uint64_t c_sender_failed
    # UDP_GRO on receive (ZTUN_UDP_RX_GRO=1): a message of several datagrams goes to the client
    # as one USO super-packet where the output takes them (uso, DIRECT), else split one by one
    cdef bint rx_gro
    cdef public bint uso
    cdef uint64_t c_gro_receives, c_gro_datagrams, c_gro_uso, c_gro_refused
    cdef uint8_t rctrl[_BATCH * ZT_GRO_CTRL]
    # split: coalesced messages received into scratch, then cut into slots; what did not fit waits
    # here (pend_*) for the next receive, from socket pend_sock (-1: nothing waits)
    cdef uint8_t *scratch
    cdef int32_t pend_sock
    cdef int pend_n, pend_j
    cdef uint32_t pend_off
    cdef uint32_t pend_len[_SPLIT]
    cdef uint32_t pend_size[_SPLIT]
    cdef uint16_t pend_sport[_SPLIT]
    cdef uint8_t pend_src[_SPLIT * 16]

    def __cinit__(self, loop, on_ready, sessions=16384, routes=65536, sockets=65536, sender_thread=False):
        cdef uint32_t m = 1, k
        self.epfd = -1
        self.pend_sock = -1
        sessions, routes, sockets = operator.index(sessions), operator.index(routes), operator.index(sockets)
        for name, value in (("sessions", sessions), ("routes", routes), ("sockets", sockets)):
            if not 0 < value <= 1 << 22:
                raise ValueError(f"{name} must be 1 to 2**22, got {value}")
        self.session_capacity, self.route_capacity, self.socket_capacity = sessions, routes, sockets
        while m < 2 * self.route_capacity:
            m <<= 1
        self.mask = m - 1
        self.sessions = <Session *>calloc(self.session_capacity, sizeof(Session))
        self.routes = <Route *>calloc(self.route_capacity, sizeof(Route))
        self.socks = <Sock *>calloc(self.socket_capacity, sizeof(Sock))
        self.buckets = <int32_t *>calloc(m, sizeof(int32_t))
        self.session_ids.returned = <int32_t *>calloc(self.session_capacity, sizeof(int32_t))
        self.route_ids.returned = <int32_t *>calloc(self.route_capacity, sizeof(int32_t))
        self.sock_ids.returned = <int32_t *>calloc(self.socket_capacity, sizeof(int32_t))
        self.session_ids.capacity, self.route_ids.capacity, self.sock_ids.capacity = sessions, routes, sockets
        if not (self.sessions and self.routes and self.socks and self.buckets and self.session_ids.returned
                and self.route_ids.returned and self.sock_ids.returned):
            raise MemoryError("UDP session table")
        self.seed = int.from_bytes(os.urandom(8), "little")
        self.ip_id = int.from_bytes(os.urandom(2), "little")
        # runs of equal-size datagrams to one destination go out as one UDP GSO send (ZTUN_UDP_GSO=0: not)
        self.gso = os.environ.get("ZTUN_UDP_GSO", "1") != "0"
        self.rx_gro = rx_gro_default()
        if sender_thread:
            self.sender = zt_usend_new(self.socket_capacity)
            if self.sender == NULL:
                raise MemoryError("UDP table: sender")
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, f"UDP table: {os.strerror(errno)}")
        self.loop = loop
        self.on_ready = on_ready
        if loop is not None:
            loop.add_reader(self.epfd, on_ready)

    def __dealloc__(self):
        zt_usend_free(self.sender)  # sends what is queued first
        if self.epfd >= 0:
            close(self.epfd)
        free(self.sessions)
        free(self.routes)
        free(self.socks)
        free(self.buckets)
        free(self.session_ids.returned)
        free(self.route_ids.returned)
        free(self.sock_ids.returned)
        free(self.scratch)

    def close(self):
        """Send what is queued, stop the sender thread and watching the sockets (they stay open: their
        flows own them); later sends are made on the caller's thread. Idempotent."""
        if self.sender != NULL:
            self._sender_counts()
            with nogil:
                zt_usend_free(self.sender)
            self.sender = NULL
        if self.epfd >= 0:
            if self.loop is not None:
                self.loop.remove_reader(self.epfd)
            close(self.epfd)
            self.epfd = -1

    def fileno(self) -> int:
        return self.epfd

    # -- sessions ---------------------------------------------------------------

    def open(self, int version, const uint8_t[::1] client, uint16_t port, double now) -> int:
        """A new session for the client endpoint; its id, or -1 when the table is full."""
        cdef int32_t sid
        cdef Session *s
        if (version != 4 or client.shape[0] != 4) and (version != 6 or client.shape[0] != 16):
            raise ValueError("client must be 4 bytes for version 4, 16 for version 6")
        sid = _take(&self.session_ids)
        if sid < 0:
            return -1
        s = &self.sessions[sid]
        memset(s, 0, sizeof(Session))
        s.used = 1
        s.version = version
        s.cport = port
        memcpy(s.client, &client[0], client.shape[0])
        s.routes = s.socks = -1
        s.last = now
        return sid

    cdef Session *_session(self, sid) except NULL:
        if not 0 <= sid < self.session_capacity or not self.sessions[sid].used:
            raise KeyError(f"no UDP session {sid}")
        return &self.sessions[sid]

    def close_session(self, int32_t sid):
        """Forget a session: its routes go and its sockets are no longer read (nor closed)."""
        cdef Session *s = self._session(sid)
        while s.socks >= 0:
            self._detach(s.socks)
        while s.routes >= 0:
            self._unroute(s.routes)
        s.used = 0
        _give(&self.session_ids, sid)

    def touch(self, int32_t sid, double now, int up_packets=0, int up_bytes=0, int down_packets=0, int down_bytes=0):
        """Activity of a session outside the table (its datagrams through Python)."""
        cdef Session *s = self._session(sid)
        s.last = now
        s.up_packets += up_packets
        s.up_bytes += up_bytes
        s.down_packets += down_packets
        s.down_bytes += down_bytes

    def counts(self, int32_t sid):
        """(packets up, bytes up, packets down, bytes down) of a session so far."""
        cdef Session *s = self._session(sid)
        return s.up_packets, s.up_bytes, s.down_packets, s.down_bytes

    def last_active(self, int32_t sid) -> float:
        return self._session(sid).last

    def idle(self, double before, int most=1 << 30) -> list:
        """Ids of the sessions whose last activity was before `before` (at most `most`)."""
        cdef uint32_t k
        out = []
        for k in range(self.session_ids.fresh):
            if self.sessions[k].used and self.sessions[k].last < before:
                out.append(k)
                if len(out) >= most:
                    break
        return out

    @property
    def sender_thread(self) -> bool:
        """Whether routed datagrams are sent by the table's own thread."""
        return self.sender != NULL

    @property
    def sessions_open(self) -> int:
        return _in_use(&self.session_ids)

    @property
    def routes_open(self) -> int:
        return _in_use(&self.route_ids)

    # -- sockets and routes -------------------------------------------------------

    def attach(self, int32_t sid, sock, int kind, fake=None) -> int:
        """Read sock's datagrams (replies of a session's outbound flow) here from now on; its id, or -1
        when the table has no room. kind DIRECT or SOCKS5; fake: the address (packed) replies
        come from instead of their sender (a fake-IP destination's flow)."""
        cdef Session *s = self._session(sid)
        cdef int32_t k
        cdef Sock *x
        cdef epoll_event ev
        cdef int fd = sock.fileno()
        if kind != _DIRECT and kind != _SOCKS5:
            raise ValueError(f"kind must be DIRECT or SOCKS5, got {kind}")
        if fake is not None and len(fake) != (4 if s.version == 4 else 16):
            raise ValueError("fake must be an address of the session's family")
        if fd < 0:
            raise ValueError("the socket is closed")
        if self.epfd < 0:
            return -1
        k = _take(&self.sock_ids)
        if k < 0:
            return -1
        x = &self.socks[k]
        memset(x, 0, sizeof(Sock))
        ev.events = EPOLLIN
        ev.data.u32 = <uint32_t>k
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            err = errno
            _give(&self.sock_ids, k)
            raise OSError(err, f"UDP table: watch socket: {os.strerror(err)}")
        if kind == _DIRECT:  # a destination's ICMP errors become unreachables to the client
            zt_recverr(fd, s.version)
        if self.rx_gro:
            if self.scratch == NULL:  # where messages are split (malloc: pages cost only once touched)
                self.scratch = <uint8_t *>malloc(_SPLIT * _SCRATCH)
            if self.scratch != NULL and zt_gro_on(fd) == 0:
                x.gro = 1
            else:
                self.c_gro_refused += 1  # e.g. a kernel before 5.0: its datagrams come one by one
        x.used = 1
        x.kind = kind
        x.fd = fd
        x.session = sid
        if fake is not None:
            fake = bytes(fake)
            x.has_fake = 1
            memcpy(x.fake, <const char *>fake, len(fake))
        x.snext = s.socks
        s.socks = k
        return k

    def detach(self, int32_t sock_id):
        """Stop reading a socket (before its owner closes it); the routes that send from it go too."""
        if not 0 <= sock_id < <int32_t>self.socket_capacity or not self.socks[sock_id].used:
            return
        self._detach(sock_id)

    cdef void _detach(self, int32_t k):
        cdef Sock *x = &self.socks[k]
        cdef Session *s = &self.sessions[x.session]
        cdef int32_t *link = &s.socks
        cdef int32_t r, nxt
        while link[0] >= 0 and link[0] != k:
            link = &self.socks[link[0]].snext
        if link[0] == k:
            link[0] = x.snext
        r = s.routes
        while r >= 0:  # the routes sending from it
            nxt = self.routes[r].snext
            if self.routes[r].sock == k:
                self._unroute(r)
            r = nxt
        if self.epfd >= 0:
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, x.fd, NULL)
        if self.sender != NULL:  # its datagrams still queued are not sent: the fd may be closed next
            with nogil:
                zt_usend_forget(self.sender, k)
        if self.pend_sock == k:  # what it received and did not deliver yet goes with it
            self.pend_sock = -1
        x.used = 0
        _give(&self.sock_ids, k)

    def route(self, int32_t sid, const uint8_t[::1] dst, uint16_t dport, int32_t sock_id, to=None, prefix=None) -> bool:
        """Send the session's datagrams to (dst, dport) from an attached socket from now on, without
        Python: to (address packed, port) for a DIRECT socket, or the SOCKS5 UDP header for a
        SOCKS5 one. False when the route table is full (the datagrams keep going through Python)."""
        cdef Session *s = self._session(sid)
        cdef int alen = 4 if s.version == 4 else 16
        cdef int32_t r
        cdef Route *e
        cdef uint64_t h
        if dst.shape[0] != alen:
            raise ValueError("dst must be an address of the session's family")
        if not 0 <= sock_id < <int32_t>self.socket_capacity or not self.socks[sock_id].used or self.socks[sock_id].session != sid:
            raise KeyError(f"socket {sock_id} is not attached to session {sid}")
        kind = self.socks[sock_id].kind
        if kind == _DIRECT:
            if to is None or len(to[0]) not in (4, 16):
                raise ValueError("a DIRECT route needs to = (packed address, port)")
        elif prefix is None or not 4 <= len(prefix) <= _PREFIX:
            raise ValueError(f"a SOCKS5 route needs its UDP header (4..{_PREFIX} bytes)")
        r = self._find(s.version, s.client, s.cport, &dst[0], dport)
        if r >= 0:
            self._unroute(r)
        r = _take(&self.route_ids)
        if r < 0:
            self.c_route_full += 1
            return False
        e = &self.routes[r]
        memset(e, 0, sizeof(Route) - _PREFIX)
        e.used = 1
        e.kind = kind
        e.session = sid
        e.sock = sock_id
        memcpy(e.dst, &dst[0], alen)
        e.dport = dport
        if kind == _DIRECT:
            address = bytes(to[0])
            e.tolen = zt_sockaddr(e.to, <const uint8_t *><const char *>address, len(address), <uint16_t>to[1])
        else:
            prefix = bytes(prefix)
            e.prefix_len = len(prefix)
            memcpy(e.prefix, <const char *>prefix, len(prefix))
        h = _hash(self.seed, s.version, s.client, s.cport, e.dst, dport) & self.mask
        e.hnext = self.buckets[h] - 1
        self.buckets[h] = r + 1
        e.snext = s.routes
        s.routes = r
        return True

    cdef int32_t _find(self, int version, const uint8_t *client, uint16_t cport, const uint8_t *dst,
                       uint16_t dport) noexcept nogil:
        cdef int alen = 4 if version == 4 else 16
        cdef int32_t r = self.buckets[_hash(self.seed, version, client, cport, dst, dport) & self.mask] - 1
        cdef Route *e
        cdef Session *s
        while r >= 0:
            e = &self.routes[r]
            s = &self.sessions[e.session]
            if (e.dport == dport and s.cport == cport and s.version == version and memcmp(e.dst, dst, alen) == 0
                    and memcmp(s.client, client, alen) == 0):
                return r
            r = e.hnext
        return -1

    cdef void _unroute(self, int32_t r):
        cdef Route *e = &self.routes[r]
        cdef Session *s = &self.sessions[e.session]
        cdef uint64_t h = _hash(self.seed, s.version, s.client, s.cport, e.dst, e.dport) & self.mask
        cdef int32_t *link
        if self.buckets[h] - 1 == r:
            self.buckets[h] = e.hnext + 1
        else:
            link = &self.routes[self.buckets[h] - 1].hnext
            while link[0] >= 0 and link[0] != r:
                link = &self.routes[link[0]].hnext
            if link[0] == r:
                link[0] = e.hnext
        link = &s.routes
        while link[0] >= 0 and link[0] != r:
            link = &self.routes[link[0]].snext
        if link[0] == r:
            link[0] = e.snext
        e.used = 0
        _give(&self.route_ids, r)

    # -- the datagrams --------------------------------------------------------------

    def send_batch(self, batch, Py_ssize_t n, double now) -> int:
        """Send each UDP slot of batch (0..n-1, parsed, verdict V_UDP) whose way is routed; those slots
        become V_DROP (done). The number sent, queued to send or dropped here."""
        cdef uint8_t[:, ::1] data = batch.data
        cdef uint8_t[::1] verdicts = batch.verdicts
        cdef Meta *meta = meta_of(batch)
        cdef Py_ssize_t i
        cdef int32_t r, run_sock = -1
        cdef Meta *m
        cdef Route *e
        cdef Session *s
        cdef int q = 0, done = 0, err = 0, nd = 0, v = 0, per
        cdef int32_t last_r = -1
        cdef uint32_t seg
        cdef mmsghdr *h
        cdef zt_urec *rec
        cdef uint64_t at = 0, free_to = 0, start = 0
        cdef uint8_t *to
        cdef uint32_t full = 0
        if n < 0 or n > data.shape[0]:
            raise ValueError(f"n {n} outside 0..{data.shape[0]}")
        with nogil:
            if self.sender != NULL:
                zt_usend_begin(self.sender, &at, &free_to)
                start = at
            for i in range(n):
                if verdicts[i] != V_UDP:
                    continue
                m = &meta[i]
                if m.status != OK or m.frag != FRAG_NONE or (m.gso_type & ~GSO_ECN) != GSO_NONE:
                    continue
                r = self._find(m.version, m.src, m.src_port, m.dst, m.dst_port)
                if r < 0:
                    continue
                e = &self.routes[r]
                s = &self.sessions[e.session]
                s.last = now
                s.up_packets += 1
                s.up_bytes += m.payload_len
                verdicts[i] = V_DROP
                done += 1
                if self.sender != NULL:
                    rec = zt_usend_reserve(self.sender, &at, free_to, e.prefix_len + m.payload_len)
                    if rec == NULL:
                        full += 1  # the sender is that far behind: dropped, as by a full socket buffer
                        continue
                    rec.sock = e.sock
                    rec.gen = self.sender.gens[e.sock]
                    rec.fd = self.socks[e.sock].fd
                    to = <uint8_t *>(rec + 1)
                    if e.kind == _DIRECT:
                        rec.namelen = e.tolen
                        memcpy(rec.name, e.to, e.tolen)
                    else:
                        rec.namelen = 0
                        memcpy(to, e.prefix, e.prefix_len)
                        to += e.prefix_len
                    memcpy(to, &data[i, HEADROOM + m.payload_off], m.payload_len)
                    continue
                if nd and (e.sock != run_sock or nd == _BATCH):
                    self._send(run_sock, q)
                    q = nd = v = 0
                    last_r = -1
                run_sock = e.sock
                per = 1 if e.kind == _DIRECT else 2
                seg = e.prefix_len + m.payload_len if e.kind != _DIRECT else m.payload_len
                if e.kind == _SOCKS5:
                    self.iovs[v].iov_base = e.prefix
                    self.iovs[v].iov_len = e.prefix_len
                self.iovs[v + per - 1].iov_base = &data[i, HEADROOM + m.payload_off]
                self.iovs[v + per - 1].iov_len = m.payload_len
                if (self.gso and r == last_r and seg > 0 and not e.nogso and not self.mshort[q - 1] and seg <= self.mseg[q - 1]
                        and self.mtotal[q - 1] + seg <= _GSO_MAX):
                    # one more datagram of the last message (its iovs end where these begin)
                    h = &self.msgs[q - 1]
                    h.msg_hdr.msg_iovlen += per
                    self.mcount[q - 1] += 1
                    self.mtotal[q - 1] += seg
                    self.mshort[q - 1] = seg < self.mseg[q - 1]
                    if self.mcount[q - 1] == 2:
                        zt_gso_mark(&h.msg_hdr, &self.ctrl[(q - 1) * ZT_GSO_CTRL], self.mseg[q - 1])
                else:
                    h = &self.msgs[q]
                    memset(h, 0, sizeof(mmsghdr))
                    if e.kind == _DIRECT:
                        h.msg_hdr.msg_name = e.to
                        h.msg_hdr.msg_namelen = e.tolen
                    h.msg_hdr.msg_iov = &self.iovs[v]
                    h.msg_hdr.msg_iovlen = per
                    self.mcount[q] = 1
                    self.mseg[q] = <uint16_t>seg
                    self.mtotal[q] = seg
                    self.mshort[q] = 0
                    self.mroute[q] = r
                    q += 1
                v += per
                nd += 1
                last_r = r
            if q:
                self._send(run_sock, q)
            if self.sender != NULL and at != start:
                err = zt_usend_commit(self.sender, at)
        self.c_send_dropped += full
        if err:
            self.c_sender_failed += done - full  # no thread to send them (resources): lost, counted
        self.c_datagrams += done
        return done

    cdef void _send(self, int32_t k, int q) noexcept nogil:
        """sendmmsg the q queued messages from socket k (a message: one datagram, or a UDP GSO run of
        them): a full buffer drops the rest; an error (e.g. ICMP unreachable of an earlier datagram on
        a connected socket) costs one message; a GSO message the kernel refuses (a datagram over the
        path's MTU: it would need fragments) goes again one datagram at a time."""
        cdef int at = 0, r, j
        cdef int fd = self.socks[k].fd
        while at < q:
            r = sendmmsg(fd, &self.msgs[at], q - at, MSG_DONTWAIT)
            if r > 0:
                for j in range(at, at + r):
                    self.c_sent += self.mcount[j]
                    if self.mcount[j] > 1:
                        self.c_gso_sends += 1
                        self.c_gso_datagrams += self.mcount[j]
                at += r
            elif r < 0 and errno == EINTR:
                continue
            elif r < 0 and errno == EAGAIN:
                for j in range(at, q):
                    self.c_send_dropped += self.mcount[j]
                return
            elif self.mcount[at] > 1 and (errno == EINVAL or errno == EIO or errno == EMSGSIZE):
                self.c_gso_refused += 1
                self.routes[self.mroute[at]].nogso = 1  # its datagrams go one by one from now on
                zt_send_each(fd, &self.msgs[at].msg_hdr, 1 if self.routes[self.mroute[at]].kind == _DIRECT else 2,
                             &self.c_sent, &self.c_send_dropped, &self.c_send_error)
                at += 1
            else:
                self.c_send_error += 1
                self.c_send_dropped += self.mcount[at] - 1
                at += 1

    def receive(self, out, Py_ssize_t start, double now) -> int:
        """Take the attached sockets' datagrams into out's slots from start on, each built into an
        IP/UDP packet to its client (verdict V_WRITE); the slot after the last one filled. A
        coalesced message (UDP_GRO) is one USO super-packet where uso is set and out has virtio
        headers (DIRECT sockets), else one packet per datagram; datagrams that did not fit wait
        (pending) for the next call."""
        cdef uint8_t[:, ::1] data = out.data
        cdef int[::1] lengths = out.lengths
        cdef uint8_t[::1] verdicts = out.verdicts
        cdef Py_ssize_t slots = data.shape[0], slot = start, room = data.shape[1] - HEADROOM
        cdef bint vnet = out.vnet_hdr
        cdef int nev = 0, k
        cdef uint32_t sk
        cdef bint split_all = not (self.uso and vnet)
        if start < 0 or start > slots:
            raise ValueError(f"start {start} outside 0..{slots}")
        if room > out.max_packet:
            room = out.max_packet
        if self.epfd < 0 or slot >= slots:
            return slot
        with nogil:
            if self.pend_sock >= 0:
                slot = self._split(self.pend_sock, data, lengths, verdicts, slot, slots, room, vnet, now)
            if slot < slots:
                nev = epoll_wait(self.epfd, self.events, _EVENTS, 0)
            for k in range(nev):
                if slot >= slots:
                    break
                sk = self.events[k].data.u32
                if (sk < self.socket_capacity and self.socks[sk].gro
                        and (split_all or self.socks[sk].kind == _SOCKS5)):
                    slot = self._split(sk, data, lengths, verdicts, slot, slots, room, vnet, now)
                else:
                    slot = self._drain(sk, data, lengths, verdicts, slot, slots, room, vnet, now)
        return slot

    @property
    def pending(self) -> bool:
        """Whether received datagrams wait for a receive call (the last one's slots ran out)."""
        return self.pend_sock >= 0

    cdef Py_ssize_t _drain(self, uint32_t k, uint8_t[:, ::1] data, int[::1] lengths, uint8_t[::1] verdicts,
                           Py_ssize_t slot, Py_ssize_t slots, Py_ssize_t room, bint vnet, double now) noexcept nogil:
        """Receive from socket k straight into the slots; a coalesced message (a DIRECT socket with
        UDP_GRO, the output taking USO) stays whole, as one USO super-packet."""
        cdef Sock *x = &self.socks[k]
        cdef Session *s
        cdef int hlen, alen, guess, want, got = 0, r, j, hdr, slen
        cdef Py_ssize_t most
        cdef uint8_t *p
        cdef uint8_t *u
        cdef uint8_t src[16]
        cdef uint16_t sport, ulen, cs
        cdef uint32_t plen, limit, n, size = 0
        if k >= self.socket_capacity or not x.used:
            return slot
        s = &self.sessions[x.session]
        alen = 4 if s.version == 4 else 16
        hlen = 20 if s.version == 4 else 40
        guess = 0 if x.kind == _DIRECT else (10 if s.version == 4 else 22)
        # the largest payload a packet to the client carries: IPv4 total length or the UDP length
        limit = (0xFFFF - hlen - 8) if s.version == 4 else (0xFFFF - 8)
        if limit > room - hlen - 8 - guess:
            limit = room - hlen - 8 - guess  # the header received in front takes room too
        while got < _PER_SOCKET and slot < slots:
            want = _PER_SOCKET - got
            if want > slots - slot:
                want = slots - slot
            if want > _BATCH:
                want = _BATCH
            for j in range(want):
                p = &data[slot + j, HEADROOM]
                self.iovs[j].iov_base = p + hlen + 8 - guess
                self.iovs[j].iov_len = limit + guess  # a datagram too big arrives cut, with MSG_TRUNC
                memset(&self.msgs[j], 0, sizeof(mmsghdr))
                self.msgs[j].msg_hdr.msg_iov = &self.iovs[j]
                self.msgs[j].msg_hdr.msg_iovlen = 1
                self.msgs[j].msg_hdr.msg_name = &self.names[j * 28]
                self.msgs[j].msg_hdr.msg_namelen = 28
                if x.gro:
                    self.msgs[j].msg_hdr.msg_control = &self.rctrl[j * ZT_GRO_CTRL]
                    self.msgs[j].msg_hdr.msg_controllen = ZT_GRO_CTRL
            r = recvmmsg(x.fd, self.msgs, want, MSG_DONTWAIT, NULL)
            if r <= 0:
                if r < 0 and errno != EAGAIN and errno != EINTR:
                    self.c_recv_error += 1  # e.g. ICMP unreachable for an earlier datagram: the flow lives on
                    if x.kind == _DIRECT:
                        slot = self._errors(x, s, data, lengths, verdicts, slot, slots, vnet)
                break
            got += r
            for j in range(r):
                p = &data[slot, HEADROOM]
                plen = self.msgs[j].msg_len
                if (self.msgs[j].msg_hdr.msg_flags & MSG_TRUNC) or plen > limit + guess:
                    self.c_reply_too_big += 1
                    continue
                n = 1
                if x.gro and x.kind == _DIRECT and vnet:  # receive() sends the others' to _split
                    size = <uint32_t>zt_gro_size(&self.msgs[j].msg_hdr)
                    n = _gro_count(plen, size)
                if p != <uint8_t *>self.iovs[j].iov_base - (hlen + 8 - guess):  # an earlier one was dropped
                    memmove(p + hlen + 8 - guess, self.iovs[j].iov_base, plen)
                u = p + hlen + 8 - guess
                if x.kind == _DIRECT:
                    if zt_sender(&self.names[j * 28], self.msgs[j].msg_hdr.msg_namelen, alen, src, &sport) != alen:
                        self.c_reply_wrong_family += n
                        continue
                    hdr = 0
                else:
                    hdr = self._socks_header(u, plen, alen, src, &sport)
                    if hdr < 0:
                        continue
                    plen -= hdr
                    if plen > limit:
                        self.c_reply_too_big += 1
                        continue
                    if hdr != guess:
                        memmove(p + hlen + 8, u + hdr, plen)
                if x.has_fake:
                    memcpy(src, x.fake, alen)
                if n > 1:  # DIRECT, vnet: the kernel cuts it into the datagrams on its way to the client
                    self._uso_headers(p, s, src, sport, plen, size, n)
                    self.c_gro_receives += 1
                    self.c_gro_datagrams += n
                    self.c_gro_uso += 1
                else:
                    self._headers(p, s, src, sport, plen)
                    if vnet:
                        memset(&data[slot, HEADROOM - VNET_HDR_LEN], 0, VNET_HDR_LEN)
                lengths[slot] = hlen + 8 + plen
                verdicts[slot] = V_WRITE
                s.down_packets += n
                s.down_bytes += plen
                s.last = now
                self.c_received += n
                slot += 1
            if r < want:
                break
        return slot

    cdef Py_ssize_t _split(self, uint32_t k, uint8_t[:, ::1] data, int[::1] lengths, uint8_t[::1] verdicts,
                           Py_ssize_t slot, Py_ssize_t slots, Py_ssize_t room, bint vnet, double now) noexcept nogil:
        """As _drain, for a UDP_GRO socket whose coalesced messages are cut into their datagrams (SOCKS5:
        each carries its own header; or an output without USO): received into the scratch, each datagram
        copied into a slot of its own; what the slots cannot take waits there for the next receive."""
        cdef Sock *x = &self.socks[k]
        cdef Session *s
        cdef int hlen, alen, got = 0, r, j, want, hdr
        cdef bint empty = False
        cdef uint8_t *p
        cdef uint8_t *u
        cdef uint8_t src[16]
        cdef uint16_t sport
        cdef uint32_t limit, size, seg, plen, total, n
        if k >= self.socket_capacity or not x.used or self.scratch == NULL:
            return slot
        s = &self.sessions[x.session]
        alen = 4 if s.version == 4 else 16
        hlen = 20 if s.version == 4 else 40
        limit = (0xFFFF - hlen - 8) if s.version == 4 else (0xFFFF - 8)
        if limit > room - hlen - 8:
            limit = room - hlen - 8
        while slot < slots:
            if self.pend_sock != <int32_t>k:
                if got >= _PER_SOCKET or empty:
                    break
                want = _PER_SOCKET - got
                if want > _SPLIT:
                    want = _SPLIT
                for j in range(want):
                    self.iovs[j].iov_base = self.scratch + j * _SCRATCH
                    self.iovs[j].iov_len = _SCRATCH
                    memset(&self.msgs[j], 0, sizeof(mmsghdr))
                    self.msgs[j].msg_hdr.msg_iov = &self.iovs[j]
                    self.msgs[j].msg_hdr.msg_iovlen = 1
                    self.msgs[j].msg_hdr.msg_name = &self.names[j * 28]
                    self.msgs[j].msg_hdr.msg_namelen = 28
                    self.msgs[j].msg_hdr.msg_control = &self.rctrl[j * ZT_GRO_CTRL]
                    self.msgs[j].msg_hdr.msg_controllen = ZT_GRO_CTRL
                r = recvmmsg(x.fd, self.msgs, want, MSG_DONTWAIT, NULL)
                if r <= 0:
                    if r < 0 and errno != EAGAIN and errno != EINTR:
                        self.c_recv_error += 1
                        if x.kind == _DIRECT:
                            slot = self._errors(x, s, data, lengths, verdicts, slot, slots, vnet)
                    break
                got += r
                empty = r < want
                for j in range(r):
                    total = self.msgs[j].msg_len
                    size = <uint32_t>zt_gro_size(&self.msgs[j].msg_hdr)
                    n = _gro_count(total, size)
                    self.pend_len[j] = total
                    self.pend_size[j] = size if n > 1 else total
                    if self.msgs[j].msg_hdr.msg_flags & MSG_TRUNC:
                        self.c_reply_too_big += 1
                        self.pend_size[j] = _SKIP
                        continue
                    if x.kind == _DIRECT and zt_sender(&self.names[j * 28], self.msgs[j].msg_hdr.msg_namelen, alen,
                                                       &self.pend_src[j * 16], &self.pend_sport[j]) != alen:
                        self.c_reply_wrong_family += n
                        self.pend_size[j] = _SKIP
                        continue
                    if n > 1:
                        self.c_gro_receives += 1
                        self.c_gro_datagrams += n
                self.pend_sock = k
                self.pend_n = r
                self.pend_j = 0
                self.pend_off = 0
            while self.pend_j < self.pend_n and slot < slots:
                j = self.pend_j
                total = self.pend_len[j]
                size = self.pend_size[j]
                if size == _SKIP:
                    self.pend_j += 1
                    continue
                seg = total - self.pend_off
                if seg > size:
                    seg = size
                u = self.scratch + j * _SCRATCH + self.pend_off
                self.pend_off += seg
                if self.pend_off >= total:
                    self.pend_j += 1
                    self.pend_off = 0
                if x.kind == _DIRECT:
                    memcpy(src, &self.pend_src[j * 16], alen)
                    sport = self.pend_sport[j]
                    hdr = 0
                else:
                    hdr = self._socks_header(u, seg, alen, src, &sport)
                    if hdr < 0:
                        continue
                plen = seg - hdr
                if plen > limit:
                    self.c_reply_too_big += 1
                    continue
                p = &data[slot, HEADROOM]
                memcpy(p + hlen + 8, u + hdr, plen)
                if x.has_fake:
                    memcpy(src, x.fake, alen)
                self._headers(p, s, src, sport, plen)
                if vnet:
                    memset(&data[slot, HEADROOM - VNET_HDR_LEN], 0, VNET_HDR_LEN)
                lengths[slot] = hlen + 8 + plen
                verdicts[slot] = V_WRITE
                s.down_packets += 1
                s.down_bytes += plen
                s.last = now
                self.c_received += 1
                slot += 1
            if self.pend_j >= self.pend_n:
                self.pend_sock = -1
        return slot

    cdef Py_ssize_t _errors(self, Sock *x, Session *s, uint8_t[:, ::1] data, int[::1] lengths, uint8_t[::1] verdicts,
                            Py_ssize_t slot, Py_ssize_t slots, bint vnet) noexcept nogil:
        """The socket's queued ICMP errors: a destination unreachable becomes one to the client, from the
        destination (or the fake address it used), quoting the client's datagram as it sent it."""
        cdef int alen = 4 if s.version == 4 else 16, k, got
        cdef uint8_t dst[16]
        cdef uint16_t dport
        cdef uint8_t itype, icode
        for k in range(8):
            if slot >= slots:
                break
            got = zt_icmp_error(x.fd, alen, dst, &dport, &itype, &icode)
            if got <= 0:
                break
            if got != 1 or itype != (3 if s.version == 4 else 1):
                self.c_icmp_other += 1  # not a destination unreachable (time exceeded, too big): the flow lives on
                continue
            if x.has_fake:
                memcpy(dst, x.fake, alen)
            lengths[slot] = self._unreachable(&data[slot, HEADROOM], s, dst, dport, itype, icode)
            if vnet:
                memset(&data[slot, HEADROOM - VNET_HDR_LEN], 0, VNET_HDR_LEN)
            verdicts[slot] = V_WRITE
            self.c_unreachable += 1
            slot += 1
        return slot

    cdef int _unreachable(self, uint8_t *p, Session *s, const uint8_t *dst, uint16_t dport, uint8_t itype,
                          uint8_t icode) noexcept nogil:
        """An ICMP / ICMPv6 destination unreachable (itype, icode) from dst to the client at p, quoting an
        IP header and UDP header of the client's datagram to dst:dport; its length."""
        cdef uint8_t *icmp
        cdef uint8_t *q
        cdef uint16_t cs
        if s.version == 4:
            memset(p, 0, 56)
            p[0] = 0x45
            zt_put16(p + 2, 56)
            self.ip_id += 1
            zt_put16(p + 4, self.ip_id)
            p[8] = _HOP
            p[9] = PROTO_ICMP
            memcpy(p + 12, dst, 4)
            memcpy(p + 16, s.client, 4)
            zt_put16(p + 10, <uint16_t>~zt_sum(p, 20, 0))
            icmp = p + 20
            icmp[0] = itype
            icmp[1] = icode
            q = icmp + 8  # the quoted datagram: IPv4 header, then its UDP header
            q[0] = 0x45
            zt_put16(q + 2, 28)
            q[8] = _HOP
            q[9] = PROTO_UDP
            memcpy(q + 12, s.client, 4)
            memcpy(q + 16, dst, 4)
            zt_put16(q + 10, <uint16_t>~zt_sum(q, 20, 0))
            zt_put16(q + 20, s.cport)
            zt_put16(q + 22, dport)
            zt_put16(q + 24, 8)
            zt_put16(icmp + 2, <uint16_t>~zt_sum(icmp, 36, 0))
            return 56
        memset(p, 0, 96)
        p[0] = 0x60
        zt_put16(p + 4, 56)
        p[6] = PROTO_ICMPV6
        p[7] = _HOP
        memcpy(p + 8, dst, 16)
        memcpy(p + 24, s.client, 16)
        icmp = p + 40
        icmp[0] = itype
        icmp[1] = icode
        q = icmp + 8  # the quoted datagram: IPv6 header, then its UDP header
        q[0] = 0x60
        zt_put16(q + 4, 8)
        q[6] = PROTO_UDP
        q[7] = _HOP
        memcpy(q + 8, s.client, 16)
        memcpy(q + 24, dst, 16)
        zt_put16(q + 40, s.cport)
        zt_put16(q + 42, dport)
        zt_put16(q + 44, 8)
        cs = <uint16_t>~zt_sum(icmp, 56, zt_pseudo(dst, s.client, 16, PROTO_ICMPV6, 56))
        zt_put16(icmp + 2, cs)
        return 96

    cdef int _socks_header(self, const uint8_t *u, uint32_t n, int alen, uint8_t *src, uint16_t *sport) noexcept nogil:
        """The length of the RFC 1928 UDP header at u (its sender into src, sport), or -1 (counted)."""
        if n < 4 or u[0] != 0 or u[1] != 0:
            self.c_reply_malformed += 1
            return -1
        if u[2] != 0:
            self.c_reply_fragment += 1  # fragmented SOCKS5 datagrams are not reassembled
            return -1
        if u[3] == 3:
            self.c_reply_by_name += 1  # a relay naming the sender: no address to answer from
            return -1
        if u[3] == 1 and n >= 10:
            if alen == 16:
                self.c_reply_wrong_family += 1
                return -1
            memcpy(src, u + 4, 4)
            sport[0] = zt_be16(u + 8)
            return 10
        if u[3] == 4 and n >= 22:
            if alen == 16:
                memcpy(src, u + 4, 16)
            elif memcmp(u + 4, zt_mapped, 12) == 0:
                memcpy(src, u + 16, 4)  # a dual-stack relay writing an IPv4 sender as ::ffff:a.b.c.d
            else:
                self.c_reply_wrong_family += 1
                return -1
            sport[0] = zt_be16(u + 20)
            return 22
        self.c_reply_malformed += 1
        return -1

    cdef void _ip_header(self, uint8_t *p, Session *s, const uint8_t *src, uint32_t ulen, uint32_t n) noexcept nogil:
        """The IP header in front of ulen bytes of UDP from src to the session's client; an IPv4 one
        takes the table's next ID and leaves n - 1 more for the datagrams cut from it (DF clear: a
        smaller MTU on the way fragments it)."""
        if s.version == 4:
            memset(p, 0, 20)
            p[0] = 0x45
            zt_put16(p + 2, <uint16_t>(20 + ulen))
            self.ip_id += 1
            zt_put16(p + 4, self.ip_id)
            self.ip_id += n - 1
            p[8] = _HOP
            p[9] = PROTO_UDP
            memcpy(p + 12, src, 4)
            memcpy(p + 16, s.client, 4)
            zt_put16(p + 10, <uint16_t>~zt_sum(p, 20, 0))
        else:
            memset(p, 0, 8)
            p[0] = 0x60
            zt_put16(p + 4, <uint16_t>ulen)
            p[6] = PROTO_UDP
            p[7] = _HOP
            memcpy(p + 8, src, 16)
            memcpy(p + 24, s.client, 16)

    cdef void _headers(self, uint8_t *p, Session *s, const uint8_t *src, uint16_t sport, uint32_t plen) noexcept nogil:
        """The IP and UDP headers of a datagram from src:sport to the session's client, around the
        plen payload bytes already in place."""
        cdef int alen = 4 if s.version == 4 else 16
        cdef int hlen = 20 if s.version == 4 else 40
        cdef uint32_t ulen = 8 + plen
        cdef uint8_t *u = p + hlen
        cdef uint16_t cs
        self._ip_header(p, s, src, ulen, 1)
        zt_put16(u, sport)
        zt_put16(u + 2, s.cport)
        zt_put16(u + 4, <uint16_t>ulen)
        zt_put16(u + 6, 0)
        cs = <uint16_t>~zt_sum(u, ulen, zt_pseudo(src, s.client, alen, PROTO_UDP, ulen))
        zt_put16(u + 6, cs if cs else 0xFFFF)

    cdef void _uso_headers(self, uint8_t *p, Session *s, const uint8_t *src, uint16_t sport, uint32_t plen, uint32_t size,
                           uint32_t n) noexcept nogil:
        """The headers of one USO super-packet around plen payload bytes in place: n datagrams of size
        bytes (the last may be shorter) from src:sport to the client, which the kernel cuts apart and
        checksums (virtio_net_hdr GSO_UDP_L4, NEEDS_CSUM with the pseudo-header sum); the IPv4 IDs it
        gives them run from this packet's, so the table's next ID follows the last."""
        cdef int alen = 4 if s.version == 4 else 16
        cdef int hlen = 20 if s.version == 4 else 40
        cdef uint32_t ulen = 8 + plen
        cdef uint8_t *u = p + hlen
        self._ip_header(p, s, src, ulen, n)
        zt_put16(u, sport)
        zt_put16(u + 2, s.cport)
        zt_put16(u + 4, <uint16_t>ulen)
        zt_put16(u + 6, <uint16_t>zt_pseudo(src, s.client, alen, PROTO_UDP, ulen))
        zt_uso_vnet_hdr(p - VNET_HDR_LEN, hlen, size)

    cdef _sender_counts(self):
        """Wait until the sender sent what is queued, then move its counts into the table's."""
        if self.sender == NULL:
            return
        with nogil:
            zt_usend_drain(self.sender)
        # drained: the thread waits and writes nothing until the next record
        self.c_sent += self.sender.sent
        self.c_send_dropped += self.sender.eagain + self.sender.stale  # stale: its socket left the table first
        self.c_send_error += self.sender.errors
        self.sender.sent = self.sender.eagain = self.sender.errors = self.sender.stale = 0

    def drain(self):
        """Wait until every datagram given to send_batch so far was sent (or dropped) by the sender thread."""
        if self.sender != NULL:
            with nogil:
                zt_usend_drain(self.sender)

    def stats(self) -> dict:
        """Counters: client datagrams the table took (datagrams), sent or dropped, and replies it took or dropped.
        Waits for the sender thread to send what is queued, so what was given is counted."""
        self._sender_counts()
        return {"datagrams": self.c_datagrams, "fast_sent": self.c_sent, "fast_send_dropped": self.c_send_dropped + self.c_sender_failed, "fast_send_error": self.c_send_error,
                "fast_received": self.c_received, "gso_sends": self.c_gso_sends, "gso_datagrams": self.c_gso_datagrams,
                "gso_refused": self.c_gso_refused, "fast_recv_error": self.c_recv_error,
                "reply_wrong_family": self.c_reply_wrong_family, "reply_by_name": self.c_reply_by_name,
                "reply_malformed": self.c_reply_malformed, "reply_fragment": self.c_reply_fragment,
                "reply_too_big": self.c_reply_too_big, "route_table_full": self.c_route_full,
                "unreachable_to_client": self.c_unreachable, "icmp_error_other": self.c_icmp_other,
                "gro_receives": self.c_gro_receives, "gro_datagrams": self.c_gro_datagrams, "gro_uso": self.c_gro_uso,
                "gro_refused": self.c_gro_refused}
