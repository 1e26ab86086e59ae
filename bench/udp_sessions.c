/* UDP sessions load for bench/e2e_throughput.py (metric udpsessions): N connected UDP sockets,
 * each sending one 64-byte datagram every INTERVAL_MS to HOST:PORT (an echo server) for SECONDS,
 * the sends spread evenly over each interval; then a second to collect late echoes.
 * Prints: sent received. `udp_sessions -e PORT [ADDRESS4]` is the echo server (IPv4 on
 * ADDRESS4 or any, IPv6 on any; recvmmsg and sendmmsg; until killed). Built by the benchmark with the machine's cc; no dependencies. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
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

int main(int argc, char **argv) {
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "-e") == 0)
        return echo(atoi(argv[2]), argc == 4 ? argv[3] : NULL);
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
    unsigned long long sent = 0, received = 0;
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
            if (send(fds[next % n], buf, sizeof buf, 0) == sizeof buf)
                sent++;
            next++;
        }
        int k = epoll_wait(ep, evs, 256, 1);
        for (int i = 0; i < k; i++) {
            while (recv(fds[evs[i].data.u32], in, sizeof in, 0) > 0)
                received++;
        }
    }
    printf("%llu %llu\n", sent, received);
    return 0;
}
