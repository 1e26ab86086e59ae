/* UDP sessions load for bench/e2e_throughput.py (metric udpsessions): N connected UDP sockets,
 * each sending one 64-byte datagram every INTERVAL_MS to HOST:PORT (an echo server) for SECONDS,
 * the sends spread evenly over each interval; then a second to collect late echoes.
 * Prints: sent received sent_late received_late, the last two for the datagrams sent after the
 * first WARM seconds (2: every session has sent several by then), apart from the sessions' start.
 * `udp_sessions -r HOST PORT SIZE RATE SECONDS [PROXY PROXYPORT]`: one socket sends SIZE-byte datagrams
 * at RATE a second for SECONDS to the echo server HOST:PORT (IPv4), directly or through a SOCKS5 proxy's
 * UDP ASSOCIATE (no authentication); prints: sent received (echoes of the right size, a second's grace). `udp_sessions -e PORT [ADDRESS4]` is the echo server (IPv4 on
 * ADDRESS4 or any, IPv6 on any; recvmmsg and sendmmsg; until killed). Built by the benchmark with the machine's cc; no dependencies. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int echo(int port, const char *addr4) {
    int ep = epoll_create1(0), fds[2];
    for (int k = 0; k < 2; k++) {
        struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons(port), .sin6_addr = in6addr_any};
        struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
        if (addr4)  /* replies leave from the address asked, as a connected client expects */
            inet_pton(AF_INET, addr4, &a4.sin_addr);
        int one = 1, size = 8 << 20;
        fds[k] = socket(k ? AF_INET6 : AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (k)
            setsockopt(fds[k], IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
        setsockopt(fds[k], SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
        setsockopt(fds[k], SOL_SOCKET, SO_SNDBUFFORCE, &size, sizeof size);
        if (bind(fds[k], k ? (struct sockaddr *)&a6 : (struct sockaddr *)&a4, k ? sizeof a6 : sizeof a4) < 0) {
            perror("bind");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = k};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[k], &ev);
    }
    enum { B = 64 };
    static char bufs[B][2048];
    static struct sockaddr_storage names[B];
    struct mmsghdr msgs[B];
    struct iovec iov[B];
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        struct epoll_event evs[2];
        int k = epoll_wait(ep, evs, 2, -1);
        for (int e = 0; e < k; e++) {
            int fd = fds[evs[e].data.u32];
            for (;;) {
                for (int i = 0; i < B; i++) {
                    iov[i].iov_base = bufs[i];
                    iov[i].iov_len = sizeof bufs[i];
                    memset(&msgs[i], 0, sizeof msgs[i]);
                    msgs[i].msg_hdr.msg_iov = &iov[i];
                    msgs[i].msg_hdr.msg_iovlen = 1;
                    msgs[i].msg_hdr.msg_name = &names[i];
                    msgs[i].msg_hdr.msg_namelen = sizeof names[i];
                }
                int r = recvmmsg(fd, msgs, B, 0, NULL);
                if (r <= 0)
                    break;
                for (int i = 0; i < r; i++)
                    iov[i].iov_len = msgs[i].msg_len;
                sendmmsg(fd, msgs, r, 0);
            }
        }
    }
}

static int read_full(int fd, unsigned char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0)
            return -1;
        got += r;
    }
    return 0;
}

/* UDP ASSOCIATE at proxy:pport for udp (bound, not connected); connects udp to the relay. The TCP
 * connection that keeps the association, or -1. */
static int associate(const char *proxy, int pport, int udp) {
    struct sockaddr_in pa = {.sin_family = AF_INET, .sin_port = htons(pport)}, me, relay;
    socklen_t len = sizeof me;
    unsigned char buf[32];
    inet_pton(AF_INET, proxy, &pa.sin_addr);
    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    if (tcp < 0 || connect(tcp, (struct sockaddr *)&pa, sizeof pa) < 0)
        return -1;
    /* the address the proxy sees the datagrams come from: this socket's, towards the proxy */
    struct sockaddr_in probe = pa;
    probe.sin_port = htons(9);
    if (connect(udp, (struct sockaddr *)&probe, sizeof probe) < 0 || getsockname(udp, (struct sockaddr *)&me, &len) < 0)
        return -1;
    if (write(tcp, "\x05\x01\x00", 3) != 3 || read_full(tcp, buf, 2) < 0 || buf[0] != 5 || buf[1] != 0)
        return -1;
    unsigned char req[10] = {5, 3, 0, 1};
    memcpy(req + 4, &me.sin_addr, 4);
    memcpy(req + 8, &me.sin_port, 2);
    if (write(tcp, req, 10) != 10 || read_full(tcp, buf, 10) < 0 || buf[1] != 0 || buf[3] != 1)
        return -1;
    memset(&relay, 0, sizeof relay);
    relay.sin_family = AF_INET;
    memcpy(&relay.sin_addr, buf + 4, 4);
    memcpy(&relay.sin_port, buf + 8, 2);
    if (relay.sin_addr.s_addr == 0)
        relay.sin_addr = pa.sin_addr;
    if (connect(udp, (struct sockaddr *)&relay, sizeof relay) < 0)
        return -1;
    return tcp;
}

static int rate_run(int argc, char **argv) {
    const char *host = argv[2];
    int port = atoi(argv[3]), size = atoi(argv[4]);
    double rate = atof(argv[5]), seconds = atof(argv[6]);
    int socks = argc == 9, hdr = socks ? 10 : 0, size_rcv = 8 << 20;
    if (size < 8 || size > 65000 || rate <= 0) {
        fprintf(stderr, "bad size or rate\n");
        return 2;
    }
    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    setsockopt(udp, SOL_SOCKET, SO_RCVBUFFORCE, &size_rcv, sizeof size_rcv);
    setsockopt(udp, SOL_SOCKET, SO_SNDBUFFORCE, &size_rcv, sizeof size_rcv);
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, host, &dst.sin_addr);
    if (socks) {
        if (associate(argv[7], atoi(argv[8]), udp) < 0) {
            perror("socks5 udp associate");
            return 1;
        }
    } else if (connect(udp, (struct sockaddr *)&dst, sizeof dst) < 0) {
        perror("connect");
        return 1;
    }
    unsigned char *out = calloc(1, hdr + size), in[65536];
    if (socks) {  /* RSV RSV FRAG ATYP=1 DST.ADDR DST.PORT */
        out[3] = 1;
        memcpy(out + 4, &dst.sin_addr, 4);
        memcpy(out + 8, &dst.sin_port, 2);
    }
    struct timeval tv = {0, 1000};
    setsockopt(udp, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    unsigned long long sent = 0, received = 0;
    double start = now(), end = start + seconds, drain = end + 1.0;
    for (;;) {
        double t = now();
        if (t >= drain)
            break;
        unsigned long long due = t < end ? (unsigned long long)((t - start) * rate) : sent;
        for (int burst = 0; sent < due && burst < 64; burst++) {
            memcpy(out + hdr, &sent, sizeof sent);
            if (send(udp, out, hdr + size, MSG_DONTWAIT) == hdr + size)
                sent++;
            else
                break;
        }
        ssize_t r;
        while ((r = recv(udp, in, sizeof in, MSG_DONTWAIT)) > 0)
            if (r == hdr + size)
                received++;
        if (sent >= due)
            recv(udp, in, 0, MSG_PEEK);  /* wait up to 1 ms for an echo */
    }
    printf("%llu %llu\n", sent, received);
    return 0;
}

int main(int argc, char **argv) {
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "-e") == 0)
        return echo(atoi(argv[2]), argc == 4 ? argv[3] : NULL);
    if ((argc == 7 || argc == 9) && strcmp(argv[1], "-r") == 0)
        return rate_run(argc, argv);
    if (argc != 6) {
        fprintf(stderr, "usage: %s HOST PORT SOCKETS INTERVAL_MS SECONDS\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]), n = atoi(argv[3]);
    double interval = atof(argv[4]) / 1000.0, seconds = atof(argv[5]);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    struct sockaddr_storage ss;
    socklen_t sslen;
    memset(&ss, 0, sizeof ss);
    int family = strchr(host, ':') ? AF_INET6 : AF_INET;
    if (family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET;
        s->sin_port = htons(port);
        inet_pton(AF_INET, host, &s->sin_addr);
        sslen = sizeof *s;
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons(port);
        inet_pton(AF_INET6, host, &s->sin6_addr);
        sslen = sizeof *s;
    }
    int ep = epoll_create1(0);
    int *fds = calloc(n, sizeof *fds);
    for (int i = 0; i < n; i++) {
        fds[i] = socket(family, SOCK_DGRAM | SOCK_NONBLOCK, 0);
        if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&ss, sslen) < 0) {
            perror("socket");
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
        epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
    }
    unsigned long long sent = 0, received = 0, sent_late = 0, received_late = 0;
    const double warm = 2.0;
    unsigned long long first_late = 0;  /* the index of the first send after the warm-up */
    char buf[64], in[2048];
    memset(buf, 'x', sizeof buf);
    struct epoll_event evs[256];
    double start = now(), end = start + seconds, drain = end + 1.0;
    unsigned long long next = 0;  /* index of the next send: socket next % n, due at start + next / n * interval */
    for (;;) {
        double t = now();
        if (t >= drain)
            break;
        while (t < end && start + (double)next / n * interval <= t) {
            memcpy(buf, &next, sizeof next);
            if (!first_late && (double)next / n * interval >= warm)
                first_late = next;
            if (send(fds[next % n], buf, sizeof buf, 0) == sizeof buf) {
                sent++;
                if (first_late)
                    sent_late++;
            }
            next++;
        }
        int k = epoll_wait(ep, evs, 256, 1);
        for (int i = 0; i < k; i++) {
            ssize_t got;
            while ((got = recv(fds[evs[i].data.u32], in, sizeof in, 0)) > 0) {
                unsigned long long index;
                received++;
                memcpy(&index, in, sizeof index);
                if (got >= (ssize_t)sizeof index && first_late && index >= first_late)
                    received_late++;
            }
        }
    }
    printf("%llu %llu %llu %llu\n", sent, received, sent_late, received_late);
    return 0;
}
