/* A worker thread for the socket calls whose cost is mostly work done inline for a peer.
 *
 * A non-blocking connect over a veth runs the whole three-way handshake of both ends
 * inside the call; a shutdown or a close does the peer's FIN processing. Queued here, the
 * calls run on another core while the loop goes on. Calls run in the order they were
 * queued (a shutdown before the close of the same fd). Only a connect has a result: the
 * worker queues (token, errno) and writes one byte to notify_fd when results wait.
 */
#ifndef ZT_SOCKQ_H
#define ZT_SOCKQ_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/epoll.h>
#endif

enum { ZT_OP_CONNECT = 1, ZT_OP_SHUTDOWN = 2, ZT_OP_CLOSE = 3, ZT_OP_ABORT = 4 };
#define ZT_SOCKQ_BATCH 64

typedef struct {
    int kind;
    int fd;
    uint64_t token;
    socklen_t addrlen;
    struct sockaddr_storage addr;
} zt_op;

typedef struct {
    uint64_t token;
    int err;
} zt_result;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    unsigned capacity;
    zt_op *ops;          /* main pushes at op_head, the worker takes from op_tail */
    zt_result *results;  /* the worker pushes at res_head, main takes from res_tail */
    unsigned op_head, op_tail, res_head, res_tail;
    int waiting;         /* the worker sleeps on wake */
    int notified;        /* a byte is in notify_fd that main has not read */
    int stop;
    int notify_fd;
    int epoll_fd;        /* the loop's epoll, or -1 */
} zt_sockq;

/* A non-blocking connect's outcome if it is already known: over a veth or loopback the
 * handshake usually completes (or is refused) inside the call, and saying so now spares the
 * loop an iteration waiting for writability. EINPROGRESS if it is still under way. */
static int zt_connect_outcome(int fd) {
    struct pollfd p;
    int err = 0;
    socklen_t len = sizeof err;
    p.fd = fd;
    p.events = POLLOUT;
    p.revents = 0;
    if (poll(&p, 1, 0) != 1 || !(p.revents & (POLLOUT | POLLERR | POLLHUP)))
        return EINPROGRESS;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        return errno;
    return err;
}

/* One call, on whichever thread: 0 or the errno it failed with (a connect: EINPROGRESS while
 * its handshake is under way).
 *
 * Before a close on the worker, the fd leaves the loop's epoll: the kernel drops the
 * registration only when the file is released, which may come after the fd number is free
 * again, and the loop could then take an event of the old socket for a new one. */
static int zt_sockq_run(const zt_op *op, int epoll_fd) {
    struct linger lg;
    int r = 0;
    switch (op->kind) {
    case ZT_OP_CONNECT:
        r = connect(op->fd, (const struct sockaddr *)&op->addr, op->addrlen);
        if (r < 0 && errno == EINPROGRESS)
            return zt_connect_outcome(op->fd);
        break;
    case ZT_OP_SHUTDOWN:
        r = shutdown(op->fd, SHUT_WR);
        break;
    case ZT_OP_ABORT:
        lg.l_onoff = 1;
        lg.l_linger = 0;
        (void)setsockopt(op->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        /* fall through */
    case ZT_OP_CLOSE:
#if defined(__linux__)
        if (epoll_fd >= 0)
            (void)epoll_ctl(epoll_fd, EPOLL_CTL_DEL, op->fd, NULL);  /* ENOENT when it was not registered */
#else
        (void)epoll_fd;
#endif
        r = close(op->fd);
        break;
    default:
        return EINVAL;
    }
    return r < 0 ? errno : 0;
}

static void *zt_sockq_main(void *arg) {
    zt_sockq *q = (zt_sockq *)arg;
    zt_op batch[ZT_SOCKQ_BATCH];
    zt_result done[ZT_SOCKQ_BATCH];
    unsigned n, k, m, room;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        if (q->stop)
            q->res_tail = q->res_head;  /* nobody takes results now: they would only block the last calls */
        /* A connect is taken only while its result has room: results never overflow. */
        room = q->capacity - (q->res_head - q->res_tail);
        n = m = 0;
        while (n < ZT_SOCKQ_BATCH && q->op_tail != q->op_head) {
            zt_op *op = &q->ops[q->op_tail % q->capacity];
            if (op->kind == ZT_OP_CONNECT) {
                if (m == room)
                    break;
                m++;
            }
            batch[n++] = *op;
            q->op_tail++;
        }
        if (n == 0) {
            if (q->stop && q->op_tail == q->op_head)
                break;
            q->waiting = 1;
            pthread_cond_wait(&q->wake, &q->lock);
            q->waiting = 0;
            continue;
        }
        pthread_mutex_unlock(&q->lock);
        for (k = m = 0; k < n; k++) {
            int err = zt_sockq_run(&batch[k], q->epoll_fd);
            if (batch[k].kind == ZT_OP_CONNECT) {
                done[m].token = batch[k].token;
                done[m++].err = err;
            }
        }
        pthread_mutex_lock(&q->lock);
        for (k = 0; k < m; k++)
            q->results[q->res_head++ % q->capacity] = done[k];
        if (m && !q->notified) {
            char one = 1;
            q->notified = 1;
            (void)!write(q->notify_fd, &one, 1);
        }
    }
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

/* A queue of capacity calls (and as many connect results; rounded up to a power of two, so
 * the free-running indices wrap cleanly) with its worker running; NULL and errno on failure. */
static zt_sockq *zt_sockq_new(unsigned capacity, int notify_fd, int epoll_fd) {
    int err;
    unsigned size = 1;
    zt_sockq *q;
    if (capacity == 0 || capacity > (1u << 20)) {
        errno = EINVAL;
        return NULL;
    }
    while (size < capacity)
        size <<= 1;
    q = (zt_sockq *)calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    capacity = size;
    q->capacity = capacity;
    q->notify_fd = notify_fd;
    q->epoll_fd = epoll_fd;
    q->ops = (zt_op *)calloc(capacity, sizeof *q->ops);
    q->results = (zt_result *)calloc(capacity, sizeof *q->results);
    if (q->ops == NULL || q->results == NULL) {
        err = ENOMEM;
        goto fail;
    }
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->wake, NULL);
    err = pthread_create(&q->thread, NULL, zt_sockq_main, q);
    if (err == 0)
        return q;
    pthread_cond_destroy(&q->wake);
    pthread_mutex_destroy(&q->lock);
fail:
    free(q->ops);
    free(q->results);
    free(q);
    errno = err;
    return NULL;
}

/* Queue a call: 1, or 0 when the queue is full (the caller keeps it, in order, for later). The
 * worker starts on it at the next kick (or when it finishes what it is doing). */
static int zt_sockq_push(zt_sockq *q, const zt_op *op) {
    int queued = 0;
    pthread_mutex_lock(&q->lock);
    if (!q->stop && q->op_head - q->op_tail < q->capacity) {
        q->ops[q->op_head++ % q->capacity] = *op;
        queued = 1;
    }
    pthread_mutex_unlock(&q->lock);
    return queued;
}

/* Wake the worker if calls wait for it: once per loop iteration, so one wake-up serves them all. */
static void zt_sockq_kick(zt_sockq *q) {
    pthread_mutex_lock(&q->lock);
    if (q->waiting && q->op_head != q->op_tail)
        pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
}

/* Take up to max results; the byte in notify_fd is main's to read first. */
static unsigned zt_sockq_results(zt_sockq *q, zt_result *out, unsigned max) {
    unsigned n = 0;
    pthread_mutex_lock(&q->lock);
    q->notified = 0;
    while (n < max && q->res_tail != q->res_head)
        out[n++] = q->results[q->res_tail++ % q->capacity];
    if (n && q->waiting)
        pthread_cond_signal(&q->wake);  /* it may be waiting for room for a connect's result */
    pthread_mutex_unlock(&q->lock);
    return n;
}

/* Run what is queued, stop the worker and free the queue (results not taken are lost). */
static void zt_sockq_free(zt_sockq *q) {
    pthread_mutex_lock(&q->lock);
    q->stop = 1;
    pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
    pthread_join(q->thread, NULL);
    pthread_cond_destroy(&q->wake);
    pthread_mutex_destroy(&q->lock);
    free(q->ops);
    free(q->results);
    free(q);
}

/* EAGAIN and EWOULDBLOCK are one value on Linux, two on some systems. */
static int zt_again(int err) { return err == EAGAIN || err == EWOULDBLOCK; }

/* What accept() reports of a connection that failed before it was taken (accept(2): Linux
 * passes the new socket's pending network errors on; retry as for EAGAIN), or a firewall. */
static int zt_accept_skip(int err) {
    switch (err) {
    case EINTR: case ECONNABORTED: case EPROTO: case EPERM:
    case ENETDOWN: case ENETUNREACH: case EHOSTDOWN: case EHOSTUNREACH: case ENOPROTOOPT: case EOPNOTSUPP:
#ifdef ENONET
    case ENONET:
#endif
        return 1;
    default:
        return 0;
    }
}

/* accept() a non-blocking, close-on-exec socket: accept4 where there is one, else two fcntl. */
static int zt_accept_nb(int fd, struct sockaddr_storage *peer, socklen_t *len) {
#if defined(__linux__)
    return accept4(fd, (struct sockaddr *)peer, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
#else
    int s = accept(fd, (struct sockaddr *)peer, len);
    if (s >= 0 && (fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK) < 0 || fcntl(s, F_SETFD, FD_CLOEXEC) < 0)) {
        int err = errno;
        close(s);
        errno = err;
        return -1;
    }
    return s;
#endif
}

#endif
