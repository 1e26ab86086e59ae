/* The client side of a SOCKS5 negotiation (RFC 1928, RFC 1929 auth), on a native thread with its own epoll.
 *
 * A flow through a SOCKS5 proxy used to cost the loop four wake-ups before its relay could
 * start: the connect's result, the method selection, the reply (and the authentication
 * reply), each a Python iteration driving a generator. Here one thread makes the connect
 * (over a veth its handshake runs inside the call) and every exchange after it, and the
 * loop hears once, when the negotiation ended: succeeded (the socket is ready for the
 * relay; bytes the proxy sent after the reply stay in it) or failed.
 *
 * What the proxy said is kept byte for byte (the transcript: every byte received, at most
 * ZT_HS_IN): the Python side replays the negotiation's generator over it to name a failure
 * (the step, the counter, the text), so the two implementations cannot word it differently.
 *
 * The steps, each one send or one exact-length receive (the generator's steps, in order):
 *   greeting -> method selection (2) -> [auth -> auth reply (2)] -> [request -> reply (4)
 *   -> address (6 | 18 | 1 then n + 2)]
 * A plan without a request (a health probe) ends after the greeting and authentication.
 *
 * Locking: the engine's mutex guards the slots' states and the queues; the thread takes it
 * to pick its work and to file what ended, never across a socket call (a slot it works on is
 * busy: cancel waits for that one); the caller takes it for start, cancel and collect. The
 * thread never calls into Python. A slot's
 * id is its index and generation: a cancelled or collected negotiation's late event is
 * recognised and ignored. The sockets stay the caller's: the engine never closes one.
 */
#ifndef ZT_HANDSHAKE_H
#define ZT_HANDSHAKE_H

#define _GNU_SOURCE 1
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

enum { ZT_HS_FREE = 0, ZT_HS_QUEUED, ZT_HS_CONNECTING, ZT_HS_TALKING, ZT_HS_DONE };
/* How a negotiation ended. */
enum { ZT_HS_OK = 0, ZT_HS_CONNECT_FAILED = 1, ZT_HS_SEND_FAILED = 2, ZT_HS_RECV_FAILED = 3, ZT_HS_EOF = 4,
       ZT_HS_PROTOCOL = 5 };
/* The steps. */
enum { ZT_S_GREET = 0, ZT_S_METHOD, ZT_S_AUTH, ZT_S_AUTH_REPLY, ZT_S_REQUEST, ZT_S_REPLY, ZT_S_NAME_LEN, ZT_S_ADDRESS,
       ZT_S_END };

#define ZT_HS_GREET_MAX 4
#define ZT_HS_AUTH_MAX 513    /* 1 + 1 + 255 + 1 + 255 */
#define ZT_HS_REQUEST_MAX 262 /* 3 + 1 + 1 + 255 + 2 */
#define ZT_HS_IN 272          /* 2 + 2 + 4 + 1 + 255 + 2, rounded up */
#define ZT_HS_EVENTS 64
#define ZT_HS_WAKE UINT64_MAX

typedef struct {
    uint32_t gen;
    uint8_t state, step, offered_auth, kind;
    uint8_t busy;    /* the thread works on it without the lock */
    uint8_t ended;   /* the work ended it: kind and err say how (zt_hs_end files it under the lock) */
    uint8_t watched; /* in the epoll */
    uint8_t quick;   /* its connect was done inside the call */
    uint8_t cancelled; /* queued or ended when cancelled: freed when its ring entry is taken */
    int fd;
    int err;
    socklen_t addrlen;
    struct sockaddr_storage addr;
    uint16_t glen, alen, rlen; /* greeting, auth and request lengths in out */
    uint16_t off;              /* bytes sent of the current send, or received of the current receive */
    uint16_t need;             /* the current receive's length */
    uint16_t in_len;           /* complete receives in in */
    uint8_t out[ZT_HS_GREET_MAX + ZT_HS_AUTH_MAX + ZT_HS_REQUEST_MAX];
    uint8_t in[ZT_HS_IN];
} zt_hs;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t idle; /* a slot stopped being busy (cancel waits for it) */
    int waiters;
    pthread_t thread;
    int running;
    uint32_t capacity;
    uint32_t ring_mask;   /* the rings' size less one: a power of two >= capacity (the free-running indices wrap cleanly) */
    zt_hs *slots;
    uint32_t *free_slots; /* a stack */
    uint32_t nfree;
    uint64_t *queued;     /* ids to connect: the caller pushes at q_head, the thread takes at q_tail */
    uint64_t *done;       /* ids of ended negotiations, for collect */
    uint32_t q_head, q_tail, d_head, d_tail;
    int epfd, wake_fd, notify_fd;
    int kicked;   /* a wake is in wake_fd that the thread has not read */
    int notified; /* a byte is in notify_fd that the caller has not read */
    int stop;
    uint64_t started, finished, connect_inline;
} zt_hs_engine;

static inline uint64_t zt_hs_id(zt_hs_engine *e, uint32_t slot) {
    return ((uint64_t)(e->slots[slot].gen + 1) << 32) | slot; /* never 0 (no id) */
}

static zt_hs *zt_hs_find(zt_hs_engine *e, uint64_t id) {
    uint32_t slot = (uint32_t)id;
    if (slot >= e->capacity || e->slots[slot].gen + 1 != (uint32_t)(id >> 32) || e->slots[slot].state == ZT_HS_FREE)
        return NULL;
    return &e->slots[slot];
}

static void zt_hs_release(zt_hs_engine *e, zt_hs *h) {
    h->state = ZT_HS_FREE;
    h->gen++;
    e->free_slots[e->nfree++] = (uint32_t)(h - e->slots);
}

/* The work ended the negotiation (without the lock: the slot is busy). */
static void zt_hs_stop_at(zt_hs *h, int kind, int err) {
    h->ended = 1;
    h->kind = (uint8_t)kind;
    h->err = err;
}

/* File an ended negotiation for collect (under the lock). */
static void zt_hs_end(zt_hs_engine *e, zt_hs *h) {
    if (h->watched)
        (void)epoll_ctl(e->epfd, EPOLL_CTL_DEL, h->fd, NULL);
    h->watched = 0;
    h->state = ZT_HS_DONE;
    e->done[e->d_head++ & e->ring_mask] = zt_hs_id(e, (uint32_t)(h - e->slots));
    e->finished++;
}

/* Enter step: set what it sends or how much it receives. */
static void zt_hs_enter(zt_hs *h, int step, uint16_t need) {
    h->step = (uint8_t)step;
    h->off = 0;
    h->need = need;
}

/* The bytes of a send step. */
static const uint8_t *zt_hs_out(zt_hs *h, uint16_t *len) {
    switch (h->step) {
    case ZT_S_GREET: *len = h->glen; return h->out;
    case ZT_S_AUTH: *len = h->alen; return h->out + h->glen;
    default: *len = h->rlen; return h->out + h->glen + h->alen;
    }
}

/* A receive step's bytes arrived (at in + in_len - need): the next step, or a protocol failure (0 / -1). */
static int zt_hs_check(zt_hs *h) {
    const uint8_t *b = h->in + h->in_len - h->need;
    switch (h->step) {
    case ZT_S_METHOD:
        if (b[0] != 5 || b[1] == 0xFF)
            return -1;
        if (b[1] == 2 && h->offered_auth)
            zt_hs_enter(h, ZT_S_AUTH, 0);
        else if (b[1] != 0)
            return -1;
        else
            zt_hs_enter(h, h->rlen ? ZT_S_REQUEST : ZT_S_END, 0);
        return 0;
    case ZT_S_AUTH_REPLY:
        if (b[0] != 1 || b[1] != 0)
            return -1;
        zt_hs_enter(h, h->rlen ? ZT_S_REQUEST : ZT_S_END, 0);
        return 0;
    case ZT_S_REPLY:
        if (b[0] != 5 || b[1] != 0)
            return -1;
        if (b[3] == 1)
            zt_hs_enter(h, ZT_S_ADDRESS, 6);
        else if (b[3] == 4)
            zt_hs_enter(h, ZT_S_ADDRESS, 18);
        else if (b[3] == 3)
            zt_hs_enter(h, ZT_S_NAME_LEN, 1);
        else
            return -1;
        return 0;
    case ZT_S_NAME_LEN:
        if (b[0] == 0)
            return -1;
        zt_hs_enter(h, ZT_S_ADDRESS, (uint16_t)(b[0] + 2));
        return 0;
    default: /* ZT_S_ADDRESS */
        zt_hs_enter(h, ZT_S_END, 0);
        return 0;
    }
}

static const uint16_t zt_hs_recv_len[ZT_S_END] = {0, 2, 0, 2, 0, 4, 0, 0};

static int zt_hs_writable(int fd) {
    struct pollfd p = {fd, POLLOUT, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLOUT | POLLERR | POLLHUP));
}

/* Go as far as the socket lets: every wait ends at an EAGAIN, whose edge the epoll reports later. */
static void zt_hs_advance(zt_hs *h) {
    ssize_t r;
    if (h->state == ZT_HS_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            zt_hs_stop_at(h, ZT_HS_CONNECT_FAILED, err);
            return;
        }
        if (!zt_hs_writable(h->fd))
            return; /* still under way */
        h->state = ZT_HS_TALKING;
        zt_hs_enter(h, ZT_S_GREET, 0);
    }
    while (h->step != ZT_S_END) {
        if (h->step == ZT_S_GREET || h->step == ZT_S_AUTH || h->step == ZT_S_REQUEST) {
            uint16_t len;
            const uint8_t *data = zt_hs_out(h, &len);
            while (h->off < len) {
                r = send(h->fd, data + h->off, len - h->off, MSG_NOSIGNAL);
                if (r < 0) {
                    if (errno == EINTR)
                        continue;
                    if (errno == EAGAIN || errno == EWOULDBLOCK)
                        return;
                    zt_hs_stop_at(h, ZT_HS_SEND_FAILED, errno);
                    return;
                }
                h->off += (uint16_t)r;
            }
            zt_hs_enter(h, h->step + 1, zt_hs_recv_len[h->step + 1]);
            continue;
        }
        while (h->off < h->need) {
            r = recv(h->fd, h->in + h->in_len + h->off, h->need - h->off, 0);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return;
                zt_hs_stop_at(h, ZT_HS_RECV_FAILED, errno);
                return;
            }
            if (r == 0) {
                zt_hs_stop_at(h, ZT_HS_EOF, ECONNRESET);
                return;
            }
            h->off += (uint16_t)r;
        }
        h->in_len += h->need;
        h->off = 0;
        if (zt_hs_check(h) < 0) {
            zt_hs_stop_at(h, ZT_HS_PROTOCOL, EPROTO);
            return;
        }
    }
    zt_hs_stop_at(h, ZT_HS_OK, 0);
}

/* The connect, then as much of the negotiation as the socket lets (without the lock: the slot is busy). */
static void zt_hs_connect(zt_hs_engine *e, zt_hs *h) {
    struct epoll_event ev;
    int err = 0;
    if (connect(h->fd, (const struct sockaddr *)&h->addr, h->addrlen) < 0) {
        err = errno;
        if (err != EINPROGRESS && err != EINTR) {
            zt_hs_stop_at(h, ZT_HS_CONNECT_FAILED, err);
            return;
        }
    }
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = zt_hs_id(e, (uint32_t)(h - e->slots));
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, h->fd, &ev) < 0) {
        zt_hs_stop_at(h, ZT_HS_CONNECT_FAILED, errno);
        return;
    }
    h->watched = 1;
    h->state = ZT_HS_CONNECTING;
    zt_hs_advance(h);
    /* past connecting at once: over a veth or loopback the handshake ran inside the call */
    h->quick = h->state != ZT_HS_CONNECTING && h->kind != ZT_HS_CONNECT_FAILED;
}

/* The thread holds the lock only to pick its work and to file what ended: the connects and
 * the exchanges (whose sends run the proxy's receive inline over a veth) run without it, so
 * the loop's start, cancel and collect never wait for them (cancel waits for the one slot it
 * cancels, when the thread is working on it). */
static void *zt_hs_main(void *arg) {
    zt_hs_engine *e = (zt_hs_engine *)arg;
    struct epoll_event ev[ZT_HS_EVENTS];
    zt_hs *work[2 * ZT_HS_EVENTS];
    int connecting[2 * ZT_HS_EVENTS];
    uint64_t ended;
    int n, k, m, more = 0;
    for (;;) {
        n = epoll_wait(e->epfd, ev, ZT_HS_EVENTS, more ? 0 : -1);
        pthread_mutex_lock(&e->lock);
        if (e->stop) {
            pthread_mutex_unlock(&e->lock);
            break;
        }
        m = 0;
        for (k = 0; k < n; k++) {
            zt_hs *h;
            if (ev[k].data.u64 == ZT_HS_WAKE) {
                uint64_t count;
                (void)!read(e->wake_fd, &count, sizeof count);
                e->kicked = 0;
                continue;
            }
            h = zt_hs_find(e, ev[k].data.u64);
            if (h != NULL && !h->busy && (h->state == ZT_HS_CONNECTING || h->state == ZT_HS_TALKING)) {
                h->busy = 1;
                connecting[m] = 0;
                work[m++] = h;
            }
        }
        while (e->q_tail != e->q_head && m < 2 * ZT_HS_EVENTS) {
            zt_hs *h = zt_hs_find(e, e->queued[e->q_tail++ & e->ring_mask]);
            if (h == NULL)
                continue;
            if (h->cancelled) {
                zt_hs_release(e, h);
                continue;
            }
            h->busy = 1;
            connecting[m] = 1;
            work[m++] = h;
        }
        more = e->q_tail != e->q_head;
        pthread_mutex_unlock(&e->lock);
        for (k = 0; k < m; k++) {
            if (connecting[k])
                zt_hs_connect(e, work[k]);
            else
                zt_hs_advance(work[k]);
        }
        pthread_mutex_lock(&e->lock);
        ended = e->finished;
        for (k = 0; k < m; k++) {
            zt_hs *h = work[k];
            h->busy = 0;
            e->connect_inline += h->quick;
            h->quick = 0;
            if (h->ended)
                zt_hs_end(e, h);
        }
        if (e->waiters)
            pthread_cond_broadcast(&e->idle);
        if (e->finished != ended && !e->notified) {
            char one = 1;
            e->notified = 1;
            (void)!write(e->notify_fd, &one, 1);
        }
        pthread_mutex_unlock(&e->lock);
    }
    return NULL;
}

static void zt_hs_free(zt_hs_engine *e) {
    if (e->running) {
        uint64_t one = 1;
        pthread_mutex_lock(&e->lock);
        e->stop = 1;
        pthread_mutex_unlock(&e->lock);
        (void)!write(e->wake_fd, &one, sizeof one);
        pthread_join(e->thread, NULL);
    }
    if (e->epfd >= 0)
        close(e->epfd);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    pthread_mutex_destroy(&e->lock);
    pthread_cond_destroy(&e->idle);
    free(e->slots);
    free(e->free_slots);
    free(e->queued);
    free(e->done);
    free(e);
}

/* An engine for capacity negotiations at once, its thread running; NULL and errno on failure. */
static zt_hs_engine *zt_hs_new(uint32_t capacity, int notify_fd) {
    struct epoll_event ev;
    uint32_t k, ring;
    int err;
    zt_hs_engine *e;
    if (capacity == 0 || capacity > (1u << 20)) {
        errno = EINVAL;
        return NULL;
    }
    e = (zt_hs_engine *)calloc(1, sizeof *e);
    if (e == NULL)
        return NULL;
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->idle, NULL);
    e->capacity = capacity;
    e->notify_fd = notify_fd;
    e->epfd = e->wake_fd = -1;
    for (ring = 1; ring < capacity; ring <<= 1)
        ;
    e->ring_mask = ring - 1;
    e->slots = (zt_hs *)calloc(capacity, sizeof *e->slots); /* pages touched only as slots are used */
    e->free_slots = (uint32_t *)malloc(capacity * sizeof *e->free_slots);
    e->queued = (uint64_t *)malloc(ring * sizeof *e->queued);
    e->done = (uint64_t *)malloc(ring * sizeof *e->done);
    if (e->slots == NULL || e->free_slots == NULL || e->queued == NULL || e->done == NULL) {
        err = ENOMEM;
        goto fail;
    }
    for (k = 0; k < capacity; k++) /* the slots stay untouched (zero pages) until used: slot 0 first */
        e->free_slots[k] = capacity - 1 - k;
    e->nfree = capacity;
    e->epfd = epoll_create1(EPOLL_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (e->epfd < 0 || e->wake_fd < 0) {
        err = errno;
        goto fail;
    }
    ev.events = EPOLLIN;
    ev.data.u64 = ZT_HS_WAKE;
    if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->wake_fd, &ev) < 0) {
        err = errno;
        goto fail;
    }
    err = pthread_create(&e->thread, NULL, zt_hs_main, e);
    if (err)
        goto fail;
    e->running = 1;
    return e;
fail:
    zt_hs_free(e);
    errno = err;
    return NULL;
}

/* Queue a negotiation on fd (a non-blocking TCP socket, not yet connected) with the proxy at
 * addr: its id, or 0 when every slot is taken. The thread connects at once (woken if asleep). */
static uint64_t zt_hs_start(zt_hs_engine *e, int fd, const struct sockaddr_storage *addr, socklen_t addrlen,
                            const uint8_t *greet, uint16_t glen, const uint8_t *auth, uint16_t alen,
                            const uint8_t *request, uint16_t rlen, int offered_auth) {
    zt_hs *h;
    uint64_t id;
    int kick;
    pthread_mutex_lock(&e->lock);
    /* A slot is free only once its entries in the rings were taken: they never overflow. */
    if (e->nfree == 0 || e->stop) {
        pthread_mutex_unlock(&e->lock);
        return 0;
    }
    h = &e->slots[e->free_slots[--e->nfree]];
    h->state = ZT_HS_QUEUED;
    h->fd = fd;
    h->addr = *addr;
    h->addrlen = addrlen;
    h->offered_auth = (uint8_t)(offered_auth != 0);
    h->kind = 0;
    h->err = 0;
    h->busy = h->ended = h->watched = h->quick = h->cancelled = 0;
    h->glen = glen;
    h->alen = alen;
    h->rlen = rlen;
    memcpy(h->out, greet, glen);
    memcpy(h->out + glen, auth, alen);
    memcpy(h->out + glen + alen, request, rlen);
    h->in_len = 0;
    zt_hs_enter(h, ZT_S_GREET, 0);
    id = zt_hs_id(e, (uint32_t)(h - e->slots));
    e->queued[e->q_head++ & e->ring_mask] = id;
    e->started++;
    kick = !e->kicked;
    e->kicked = 1;
    pthread_mutex_unlock(&e->lock);
    if (kick) {
        uint64_t one = 1;
        (void)!write(e->wake_fd, &one, sizeof one);
    }
    return id;
}

/* What a negotiation had got to: the transcript (complete receives, then the current one's bytes),
 * how many of those belong to the current receive, and whether it was connected and sending. */
typedef struct {
    int found, kind, err, connected, sending;
    uint16_t len, partial;
    uint8_t in[ZT_HS_IN];
} zt_hs_progress;

static void zt_hs_report(zt_hs *h, zt_hs_progress *p) {
    int receiving = h->step == ZT_S_METHOD || h->step == ZT_S_AUTH_REPLY || h->step == ZT_S_REPLY ||
                    h->step == ZT_S_NAME_LEN || h->step == ZT_S_ADDRESS;
    p->found = 1;
    p->kind = h->kind;
    p->err = h->err;
    p->connected = h->state == ZT_HS_TALKING || (h->state == ZT_HS_DONE && h->kind != ZT_HS_CONNECT_FAILED);
    p->sending = !receiving && h->step != ZT_S_END;
    p->partial = receiving ? h->off : 0;
    p->len = (uint16_t)(h->in_len + p->partial);
    memcpy(p->in, h->in, p->len);
}

/* Stop negotiation id where it is (its socket leaves the epoll: the caller may close it at once);
 * p says how far it got (found 0: no such negotiation, or its end was already collected). */
static void zt_hs_cancel(zt_hs_engine *e, uint64_t id, zt_hs_progress *p) {
    zt_hs *h;
    p->found = 0;
    pthread_mutex_lock(&e->lock);
    h = zt_hs_find(e, id);
    while (h != NULL && h->busy) { /* the thread is in its connect or an exchange: the slot's at most */
        e->waiters++;
        pthread_cond_wait(&e->idle, &e->lock);
        e->waiters--;
        h = zt_hs_find(e, id);
    }
    if (h != NULL && !h->cancelled) {
        zt_hs_report(h, p);
        if (h->state == ZT_HS_QUEUED || h->state == ZT_HS_DONE) {
            h->cancelled = 1; /* its entry in a ring frees it: the thread never touches its socket again */
        } else {
            if (h->watched)
                (void)epoll_ctl(e->epfd, EPOLL_CTL_DEL, h->fd, NULL);
            h->watched = 0;
            zt_hs_release(e, h);
        }
    }
    pthread_mutex_unlock(&e->lock);
}

/* The next ended negotiation (its slot freed): its id, or 0 when none is left. */
static uint64_t zt_hs_collect(zt_hs_engine *e, zt_hs_progress *p) {
    uint64_t id = 0;
    pthread_mutex_lock(&e->lock);
    e->notified = 0;
    while (e->d_tail != e->d_head) {
        uint64_t next = e->done[e->d_tail++ & e->ring_mask];
        zt_hs *h = zt_hs_find(e, next);
        if (h != NULL && h->state == ZT_HS_DONE) {
            int cancelled = h->cancelled;
            if (!cancelled)
                zt_hs_report(h, p);
            zt_hs_release(e, h);
            if (!cancelled) {
                id = next;
                break;
            }
        }
    }
    pthread_mutex_unlock(&e->lock);
    return id;
}

#endif
