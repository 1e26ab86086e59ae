/* The relay engine: established TCP relays moved by a native thread with its own epoll.
 *
 * Each relay joins two connected non-blocking sockets (client and remote) and moves bytes
 * both ways: through a pipe with splice (the bytes never leave the kernel), or through a
 * buffer with recv/send. Both sockets are registered edge-triggered for input, output and
 * hang-up; any event of a relay pumps both of its directions until neither moves, so every
 * wait ends at an EAGAIN whose edge the kernel reports later:
 *   - the source had nothing (EAGAIN): its next input is an edge;
 *   - the destination is full (EAGAIN) with bytes held: its next room is an edge, and the
 *     pump then reads the source again (it stopped reading only for want of room).
 * A relay that keeps moving is set aside after ZT_RELAY_ROUNDS rounds and pumped again
 * after the other events of the batch, so one fast flow does not starve the rest.
 *
 * EOF one way shuts the peer's write side down once the held bytes are out (half-close);
 * both ways done closes both sockets; an error on either side (a reset, a broken pipe)
 * closes both with a reset (SO_LINGER 0) so both peers learn at once; a relay that moved
 * nothing for its idle timeout is closed with a reset too.
 *
 * Receive-side batching (batch_on; ZTUN_RELAY_BATCH=0 turns it off): a direction that keeps
 * reading small amounts in quick succession after it moved ZT_BATCH_AFTER (a sender that writes
 * small pieces as fast as it can, each leaving as its own segment while the reader keeps its
 * window open) gets SO_RCVLOWAT ZT_BATCH_LOWAT on its source: the source's socket no longer wakes
 * the engine per segment, and the pump reads it when that much is queued (or the window is nearly
 * closed, or the peer ended: the kernel reports those below the mark) or at the latest every
 * ZT_BATCH_WAIT (the engine's thread looks at batching relays on that schedule). A read under
 * ZT_BATCH_SMALL while batching (the flow slowed down) ends it: the mark goes back to 1.
 *
 * Two sets of relays, each with its epoll. With near_on (ZTUN_RELAY_NEAR=1) a new relay joins
 * the near set, which the loop's thread pumps (zt_engine_poll: when near_fd is readable and after each loop iteration's TUN
 * writes): a request and its answer then cost the loop's wake-up alone, not also the engine
 * thread's and the hand-offs between them. A relay that moves ZT_RELAY_NEAR_BYTES both ways,
 * or keeps moving for ZT_RELAY_ROUNDS rounds of one pump, goes over to the far set, which the
 * engine's thread serves on its own core (a bulk transfer does not hold the loop). With
 * near_on 0 (the default) every relay starts in the far set.
 *
 * The engine's mutex is held while the thread handles a batch of events, and by the
 * caller's thread for add, poll, close and collect; it is released while the thread waits in
 * epoll_wait. Ended relays are queued as (id, reason, bytes up, bytes down) and one byte
 * is written to notify_fd when ZT_RELAY_NOTIFY_BATCH of them wait uncollected, or the
 * oldest has waited ZT_RELAY_NOTIFY_DELAY: under a storm of short connections the loop is
 * woken for their ends about once per batch, not once per connection. A relay's id is its slot and the
 * slot's generation: an event or a call for a relay that ended is recognised and ignored.
 */
#ifndef ZT_RELAY_H
#define ZT_RELAY_H

#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <linux/sockios.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ZT_END_DONE = 1, ZT_END_RESET = 2, ZT_END_IDLE = 3, ZT_END_CLOSED = 4 };
#define ZT_RELAY_EVENTS 256
#define ZT_RELAY_ROUNDS 16
#define ZT_RELAY_PIPE_SIZE (1 << 20)
#define ZT_RELAY_COPY_SIZE (128 * 1024)
#define ZT_RELAY_KEEP_PIPES 256
#define ZT_RELAY_WAKE UINT64_MAX
#define ZT_RELAY_NOTIFY_BATCH 64
#define ZT_RELAY_NOTIFY_DELAY 0.01
#define ZT_RELAY_NEAR_BYTES (256 * 1024)
#define ZT_BATCH_AFTER (1 << 20)      /* a direction batches only after it moved this much */
#define ZT_BATCH_SMALL (16 * 1024)    /* reads under this are small */
#define ZT_BATCH_GAP 0.0002           /* small reads this close together are a stream */
#define ZT_BATCH_STREAK 16            /* this many of them in a row start batching */
#define ZT_BATCH_LOWAT (64 * 1024)    /* a batching source's receive low-water mark */
#define ZT_BATCH_WAIT 0.001           /* a batching source is read at least this often */
#define ZT_BATCH_MAX 256              /* relays batching at once */

typedef struct {
    int src, dst;
    int pipe_r, pipe_w;  /* splice: the pipe; copy: -1 */
    char *buf;           /* copy: the buffer; splice: NULL */
    uint32_t cap;        /* what the pipe or buffer holds */
    uint32_t pending;    /* bytes read from src not yet written to dst */
    uint32_t start;      /* copy: where the pending bytes start in buf */
    uint8_t eof, shut;
    uint8_t batching;    /* SO_RCVLOWAT set on src: read when due or when that much waits */
    uint8_t streak;      /* small reads in quick succession */
    double last_read;    /* the engine's clock at the last read */
    double due;          /* batching: read by then */
    uint64_t bytes;      /* read from src (atomic: read by other threads without the lock) */
} zt_dir;

typedef struct {
    uint32_t gen;        /* bumped when the slot is freed */
    uint8_t used, queued;
    uint8_t far;         /* in the engine thread's set (else the near set, pumped by the loop) */
    uint8_t batch_listed; /* in the engine's list of batching relays */
    zt_dir d[2];         /* 0: client -> remote (up), 1: remote -> client (down) */
    double idle;         /* seconds; 0: never */
    double last;         /* last time it moved bytes (the engine's clock) */
    uint64_t moved;      /* bytes both ways at the last idle check */
} zt_relay;

typedef struct {
    uint64_t id;
    int reason;
    uint64_t up, down;
} zt_end;

typedef struct {
    int r, w;
    uint32_t cap;
} zt_pipe;

typedef struct {
    pthread_mutex_t lock;
    pthread_t thread;
    int thread_started;
    int epoll_fd, wake_fd, notify_fd;
    int near_fd, near_on;   /* the near set's epoll (the loop's thread waits on it); in use */
    int stop;
    uint32_t capacity, live;
    uint32_t top;           /* slots at and above it were never used */
    zt_relay *slots;
    uint32_t *free_slots;   /* a stack of the slot numbers below top given back */
    uint32_t nfree;
    zt_end *ends;           /* ended relays not yet collected */
    uint32_t nends, ends_cap;
    int notified;
    double first_end;       /* when the oldest end not yet notified was queued */
    uint32_t *again;        /* relays set aside to pump again after this batch */
    uint32_t nagain, again_cap;  /* again_cap: ZT_RELAY_EVENTS (lower only in tests) */
    zt_pipe pipes[ZT_RELAY_KEEP_PIPES];
    uint32_t npipes;
    double now, next_sweep, sweep_every;
    int batch_on;
    uint32_t batch_small, batch_after, batch_lowat;  /* ZT_BATCH_* (lower only in tests) */
    uint64_t batch[ZT_BATCH_MAX];  /* ids of relays with a batching direction */
    uint32_t nbatch;
    double spin;            /* seconds the thread polls for more events before it sleeps (0: never) */
    uint64_t events, pumps, wakeups, promoted, rearmed, batched;  /* statistics */
    uint64_t spin_found, spin_empty, spin_ns;  /* spins ended by an event / by their time; time in them */
} zt_engine;

static double zt_relay_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline uint64_t zt_relay_id(zt_engine *e, uint32_t slot) {
    return ((uint64_t)e->slots[slot].gen << 32) | slot;
}

/* The live relay with this id, or NULL. */
static zt_relay *zt_relay_find(zt_engine *e, uint64_t id) {
    uint32_t slot = (uint32_t)id;
    if (slot >= e->capacity)
        return NULL;
    zt_relay *r = &e->slots[slot];
    if (!r->used || r->gen != (uint32_t)(id >> 32))
        return NULL;
    return r;
}

static int zt_pipe_get(zt_engine *e, zt_pipe *p) {
    int fds[2];
    if (e->npipes) {
        *p = e->pipes[--e->npipes];
        return 0;
    }
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -1;
    int size = fcntl(fds[1], F_SETPIPE_SZ, ZT_RELAY_PIPE_SIZE);
    p->r = fds[0];
    p->w = fds[1];
    p->cap = size > 0 ? (uint32_t)size : 65536;
    return 0;
}

/* Keep an empty pipe for the next relay; close one that holds bytes or is one too many. */
static void zt_pipe_put(zt_engine *e, int r, int w, uint32_t cap, int empty) {
    if (empty && e->npipes < ZT_RELAY_KEEP_PIPES && !e->stop) {
        e->pipes[e->npipes].r = r;
        e->pipes[e->npipes].w = w;
        e->pipes[e->npipes].cap = cap;
        e->npipes++;
    } else {
        close(r);
        close(w);
    }
}

static void zt_abort_fd(int fd) {
    struct linger lg;
    lg.l_onoff = 1;
    lg.l_linger = 0;
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void zt_notify(zt_engine *e) {
    if (!e->notified && e->notify_fd >= 0) {
        char b = 1;
        if (write(e->notify_fd, &b, 1) == 1 || errno == EAGAIN)
            e->notified = 1;
    }
}

/* End relay r: close its sockets (with a reset unless it ended cleanly), give its pipes back,
 * free the slot. If report, queue (id, reason, bytes) for collect; else the caller reports. */
static int zt_relay_end(zt_engine *e, zt_relay *r, int reason, int report) {
    uint32_t slot = (uint32_t)(r - e->slots);
    uint64_t id = zt_relay_id(e, slot);
    int k;
    if (report) {
        if (e->nends == e->ends_cap) {
            uint32_t cap = e->ends_cap ? 2 * e->ends_cap : 64;
            zt_end *grown = realloc(e->ends, cap * sizeof *grown);
            if (grown == NULL)
                return -1;  /* the relay stays; the next event or sweep ends it */
            e->ends = grown;
            e->ends_cap = cap;
        }
        e->ends[e->nends].id = id;
        e->ends[e->nends].reason = reason;
        e->ends[e->nends].up = r->d[0].bytes;
        e->ends[e->nends].down = r->d[1].bytes;
        e->nends++;
        if (e->nends == 1 || e->notified)
            e->first_end = e->now;
        /* at once from another thread (an add that ended at its first pump): the engine's
         * thread may sleep for a second */
        if (e->nends >= ZT_RELAY_NOTIFY_BATCH || !e->thread_started || !pthread_equal(pthread_self(), e->thread))
            zt_notify(e);
    }
    for (k = 0; k < 2; k++) {
        zt_dir *d = &r->d[k];
        if (d->pipe_r >= 0)
            zt_pipe_put(e, d->pipe_r, d->pipe_w, d->cap, d->pending == 0);
        free(d->buf);
        d->buf = NULL;
        d->pipe_r = d->pipe_w = -1;
    }
    /* d[0].src is the client, d[1].src the remote */
    if (reason == ZT_END_DONE) {
        close(r->d[0].src);
        close(r->d[1].src);
    } else {
        zt_abort_fd(r->d[0].src);
        zt_abort_fd(r->d[1].src);
    }
    r->used = 0;
    r->gen++;
    e->free_slots[e->nfree++] = slot;
    e->live--;
    return 0;
}

static void zt_engine_wake(zt_engine *e);

static inline int zt_again(int err) { return err == EAGAIN || err == EWOULDBLOCK || err == EINTR; }

/* Register (op EPOLL_CTL_ADD) or re-arm (EPOLL_CTL_MOD) both sockets of r, edge-triggered, in the
 * epoll set fd; either polls them at once and reports what is ready. 0, or -1 with errno set. */
static int zt_relay_watch(zt_engine *e, zt_relay *r, int fd, int op) {
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = zt_relay_id(e, (uint32_t)(r - e->slots));
    if (epoll_ctl(fd, op, r->d[0].src, &ev) < 0 || epoll_ctl(fd, op, r->d[1].src, &ev) < 0)
        return -1;
    return 0;
}

/* Move r from the near set to the engine thread's; adding a ready socket reports it there at
 * once, so no edge is lost. -1 (errno set) if the far set would not take it. */
static int zt_relay_promote(zt_engine *e, zt_relay *r) {
    epoll_ctl(e->near_fd, EPOLL_CTL_DEL, r->d[0].src, NULL);
    epoll_ctl(e->near_fd, EPOLL_CTL_DEL, r->d[1].src, NULL);
    r->far = 1;
    e->promoted++;
    return zt_relay_watch(e, r, e->epoll_fd, EPOLL_CTL_ADD);
}

/* r stopped after its rounds still moving: no edge may come for it (its sockets were not
 * drained), so it must be pumped again. Set it aside for after this batch, or, with the list full,
 * re-arm its sockets: EPOLL_CTL_MOD polls them at once and reports what is ready, as ADD does.
 * 1 if set aside. */
static int zt_relay_again(zt_engine *e, zt_relay *r) {
    if (e->nagain < e->again_cap) {
        r->queued = 1;
        e->again[e->nagain++] = (uint32_t)(r - e->slots);
        return 1;
    }
    zt_relay_watch(e, r, r->far ? e->epoll_fd : e->near_fd, EPOLL_CTL_MOD);
    e->rearmed++;
    return 0;
}

/* Whether either socket of r has a pending error (read and cleared): a socket whose EOF was
 * seen is not read again, so a reset arriving after its FIN shows only as EPOLLERR. */
static int zt_relay_failed(zt_relay *r) {
    int k, err;
    socklen_t len;
    for (k = 0; k < 2; k++) {
        err = 0;
        len = sizeof err;
        if (getsockopt(r->d[k].src, SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err)
            return 1;
    }
    return 0;
}

static void zt_batch_stop(zt_dir *d) {
    int one = 1;
    setsockopt(d->src, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
    d->batching = 0;
    d->streak = 0;
}

/* Whether the pump may read d's source now: always, unless it is batching and neither due nor
 * readable (the event that pumps the relay may be the other socket's). The kernel's readability
 * honours the mark and also holds below it when the window is nearly closed, the receive
 * buffer nearly full, or the peer ended. */
static int zt_batch_may_read(zt_engine *e, zt_dir *d) {
    struct pollfd p;
    if (!d->batching || e->now >= d->due)
        return 1;
    p.fd = d->src;
    p.events = POLLIN | POLLRDHUP;
    p.revents = 0;
    return poll(&p, 1, 0) != 0;  /* an error too: the read reports it */
}

/* A read of n bytes from d's source: start batching after a streak of small reads in quick
 * succession, stop at a small read while batching. */
static void zt_batch_note(zt_engine *e, zt_relay *r, zt_dir *d, ssize_t n) {
    int lowat = (int)e->batch_lowat;
    if (d->batching) {
        if (n < (ssize_t)e->batch_small)
            zt_batch_stop(d);  /* the flow slowed down: read it as it comes again */
        else
            d->due = e->now + ZT_BATCH_WAIT;
        return;
    }
    if (e->batch_on && r->far && n < (ssize_t)e->batch_small && d->bytes >= e->batch_after &&
            e->now - d->last_read < ZT_BATCH_GAP) {
        if (++d->streak >= ZT_BATCH_STREAK && (r->batch_listed || e->nbatch < ZT_BATCH_MAX) &&
                setsockopt(d->src, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof lowat) == 0) {
            d->batching = 1;
            d->due = e->now + ZT_BATCH_WAIT;
            e->batched++;
            if (!r->batch_listed) {
                r->batch_listed = 1;
                e->batch[e->nbatch++] = zt_relay_id(e, (uint32_t)(r - e->slots));
            }
        }
    } else {
        d->streak = 0;
    }
    d->last_read = e->now;
}

/* One step of one direction: write what is held, then read more if there is room.
 * 1 if bytes moved (or EOF was seen), 0 if nothing could, -errno on a socket error. */
static int zt_dir_step(zt_engine *e, zt_relay *r, zt_dir *d) {
    int moved = 0, queued = 0;
    ssize_t n;
    if (d->pending) {
        if (d->pipe_r >= 0)
            n = splice(d->pipe_r, NULL, d->dst, NULL, d->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        else
            n = send(d->dst, d->buf + d->start, d->pending, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n > 0) {
            d->pending -= (uint32_t)n;
            d->start = d->pending ? d->start + (uint32_t)n : 0;
            moved = 1;
        } else if (n < 0 && !zt_again(errno)) {
            return -errno;
        }
    }
    if (!d->eof && d->pending < d->cap && zt_batch_may_read(e, d)) {
        if (d->pipe_w >= 0) {
            n = splice(d->src, NULL, d->pipe_w, NULL, d->cap - d->pending, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        } else {
            if (d->start + d->pending >= d->cap) {  /* the room is at the front */
                memmove(d->buf, d->buf + d->start, d->pending);
                d->start = 0;
            }
            n = recv(d->src, d->buf + d->start + d->pending, d->cap - d->start - d->pending, MSG_DONTWAIT);
        }
        if (n > 0) {
            d->pending += (uint32_t)n;
            __atomic_store_n(&d->bytes, d->bytes + (uint64_t)n, __ATOMIC_RELAXED);
            moved = 1;
            zt_batch_note(e, r, d, n);
        } else if (n == 0) {
            d->eof = 1;
            moved = 1;
        } else if (!zt_again(errno)) {
            return -errno;
        } else if (d->batching && ioctl(d->src, SIOCINQ, &queued) == 0 && queued == 0) {
            zt_batch_stop(d);  /* due with nothing queued: the flow went quiet (not a full pipe) */
        }
    }
    if (d->eof && !d->pending && !d->shut) {
        d->shut = 1;
        shutdown(d->dst, SHUT_WR);  /* the peer gets a FIN after the bytes already sent */
        moved = 1;
    }
    return moved;
}

/* Pump both directions of r until neither moves (1), or for ZT_RELAY_ROUNDS rounds (0: pump
 * it again later), or until it ends (-1: the slot is free). */
static int zt_relay_pump(zt_engine *e, zt_relay *r) {
    int round, k, rc, moved;
    e->pumps++;
    if (!r->far && r->d[0].bytes + r->d[1].bytes >= ZT_RELAY_NEAR_BYTES && zt_relay_promote(e, r) < 0) {
        zt_relay_end(e, r, ZT_END_RESET, 1);
        return -1;
    }
    for (round = 0; round < ZT_RELAY_ROUNDS; round++) {
        moved = 0;
        for (k = 0; k < 2; k++) {
            rc = zt_dir_step(e, r, &r->d[k]);
            if (rc < 0) {
                zt_relay_end(e, r, ZT_END_RESET, 1);
                return -1;
            }
            moved |= rc;
        }
        if (r->d[0].shut && r->d[1].shut) {
            zt_relay_end(e, r, ZT_END_DONE, 1);
            return -1;
        }
        if (!moved)
            return 1;
        r->last = e->now;
    }
    if (!r->far && zt_relay_promote(e, r) < 0) {  /* it keeps moving: the thread's from here */
        zt_relay_end(e, r, ZT_END_RESET, 1);
        return -1;
    }
    return 0;
}

static void zt_relay_sweep(zt_engine *e) {
    uint32_t slot;
    for (slot = 0; slot < e->top; slot++) {
        zt_relay *r = &e->slots[slot];
        if (!r->used || r->idle <= 0)
            continue;
        uint64_t moved = r->d[0].bytes + r->d[1].bytes;
        if (moved != r->moved) {  /* bytes moved since the last sweep */
            r->moved = moved;
            r->last = e->now;
        } else if (e->now - r->last >= r->idle) {
            zt_relay_end(e, r, ZT_END_IDLE, 1);
        }
    }
    e->next_sweep = e->now + e->sweep_every;
}

/* Pump the relays of n events; on the engine's thread, also those set aside by the last batch
 * (set aside relays are far ones: a near relay that keeps moving is promoted). With the lock held. */
static void zt_engine_handle(zt_engine *e, struct epoll_event *ev, int n, int thread) {
    uint32_t k, again[ZT_RELAY_EVENTS];
    uint64_t wake;
    int i;
    uint32_t nagain = 0, before = e->nagain;
    /* The relays set aside by the last batch: pump them first, with these events. */
    if (thread) {
        nagain = e->nagain;
        memcpy(again, e->again, nagain * sizeof *again);
        e->nagain = 0;
    }
    for (i = 0; i < n; i++) {
        uint64_t id = ev[i].data.u64;
        if (id == ZT_RELAY_WAKE) {
            if (read(e->wake_fd, &wake, sizeof wake) < 0) {
            }
            continue;
        }
        e->events++;
        zt_relay *r = zt_relay_find(e, id);
        if (r == NULL)
            continue;  /* ended */
        if ((ev[i].events & EPOLLERR) && zt_relay_failed(r)) {
            zt_relay_end(e, r, ZT_END_RESET, 1);  /* also when that side was done: the other learns at once */
            continue;
        }
        if (r->queued)
            continue;  /* set aside already: the pump below serves it */
        if (zt_relay_pump(e, r) == 0)
            zt_relay_again(e, r);
    }
    if (!thread && e->nagain > before)
        zt_engine_wake(e);  /* promoted while moving: the thread pumps it on */
    for (k = 0; k < nagain; k++) {
        zt_relay *r = &e->slots[again[k]];
        r->queued = 0;
        if (!r->used)
            continue;
        if (zt_relay_pump(e, r) == 0)
            zt_relay_again(e, r);
    }
}

/* From the loop's thread, with the lock held: pump the near relays whose events are ready now,
 * without waiting. The number of events taken. */
static int zt_engine_poll(zt_engine *e) {
    struct epoll_event ev[ZT_RELAY_EVENTS];
    if (!e->near_on)
        return 0;
    int n = epoll_wait(e->near_fd, ev, ZT_RELAY_EVENTS, 0);
    if (n <= 0)
        return 0;
    e->now = zt_relay_clock();
    zt_engine_handle(e, ev, n, 0);
    return n;
}

/* On the engine's thread: pump the relays whose batching direction is due (its source is read
 * whatever it holds); forget relays that ended or batch no more. */
static void zt_batch_due(zt_engine *e) {
    uint32_t k = 0;
    int j;
    while (k < e->nbatch) {
        zt_relay *r = zt_relay_find(e, e->batch[k]);
        if (r == NULL || !(r->d[0].batching || r->d[1].batching)) {
            if (r != NULL)
                r->batch_listed = 0;
            e->batch[k] = e->batch[--e->nbatch];
            continue;
        }
        k++;
        for (j = 0; j < 2; j++)  /* blocked on its destination: that side's room pumps it, not a schedule */
            if (r->d[j].batching && e->now >= r->d[j].due && r->d[j].pending >= r->d[j].cap)
                zt_batch_stop(&r->d[j]);
        if (r->queued || !((r->d[0].batching && e->now >= r->d[0].due) || (r->d[1].batching && e->now >= r->d[1].due)))
            continue;
        if (zt_relay_pump(e, r) == 0)
            zt_relay_again(e, r);
    }
}

/* With e->spin, after a wake-up that found events the thread polls its epoll without sleeping
 * (yielding the core between two looks) for up to e->spin seconds: the next event of a relay
 * that is talking (the answer to what it just moved) is taken without a wake-up. Each spin that
 * finds nothing doubles the wake-ups it skips before the next one (up to 63); one that finds an
 * event, or a sleep shorter than a spin, ends that. No events, no spin: an idle engine sleeps. */
#define ZT_SPIN_BACKOFF 6

static void *zt_relay_thread(void *arg) {
    zt_engine *e = arg;
    struct epoll_event ev[ZT_RELAY_EVENTS];
    int n, timeout, spinning, skip = 0, misses = 0;
    double spin_from = 0, spin_until = 0, slept_from = 0;
    pthread_mutex_lock(&e->lock);
    while (!e->stop) {
        double until = e->next_sweep;
        if (e->nends && !e->notified && e->first_end + ZT_RELAY_NOTIFY_DELAY < until)
            until = e->first_end + ZT_RELAY_NOTIFY_DELAY;
        if (e->nbatch && e->now + ZT_BATCH_WAIT < until)
            until = e->now + ZT_BATCH_WAIT;
        timeout = e->nagain ? 0 : (int)((until - e->now) * 1000) + 1;
        if (timeout < 0)
            timeout = 0;
        spinning = spin_until > 0 && timeout != 0;
        if (spinning && spin_until > until)
            spin_until = until;  /* not past what is due */
        pthread_mutex_unlock(&e->lock);
        if (spinning) {
            while ((n = epoll_wait(e->epoll_fd, ev, ZT_RELAY_EVENTS, 0)) == 0 && zt_relay_clock() < spin_until)
                sched_yield();  /* the thread that makes the next event may be waiting for this core */
        } else {
            if (skip && e->spin > 0)
                slept_from = zt_relay_clock();
            n = epoll_wait(e->epoll_fd, ev, ZT_RELAY_EVENTS, timeout);
        }
        pthread_mutex_lock(&e->lock);
        e->now = zt_relay_clock();
        if (!spinning)
            e->wakeups++;  /* a spin's end is none */
        if (spinning) {
            e->spin_ns += (uint64_t)((e->now - spin_from) * 1e9);
            spin_until = 0;
            if (n > 0) {
                e->spin_found++;
                misses = skip = 0;
            } else if (n == 0) {
                e->spin_empty++;
                if (misses < ZT_SPIN_BACKOFF)
                    misses++;
                skip = (1 << misses) - 1;
            }
        } else if (n > 0 && skip && e->now - slept_from < e->spin) {
            misses = skip = 0;  /* a spin would have found these: relays are talking again */
        }
        zt_engine_handle(e, ev, n < 0 ? 0 : n, 1);
        if (e->nbatch)
            zt_batch_due(e);
        if (e->now >= e->next_sweep)
            zt_relay_sweep(e);
        if (e->nends && !e->notified && e->now - e->first_end >= ZT_RELAY_NOTIFY_DELAY)
            zt_notify(e);
        if (n > 0 && e->spin > 0) {
            if (skip) {
                skip--;
            } else {
                spin_from = e->now;
                spin_until = e->now + e->spin;
            }
        }
    }
    pthread_mutex_unlock(&e->lock);
    return NULL;
}

static void zt_engine_free(zt_engine *e);

static zt_engine *zt_engine_new(uint32_t capacity, int notify_fd, double sweep_every, int near_on, int batch_on,
                                double spin) {
    zt_engine *e = calloc(1, sizeof *e);
    struct epoll_event ev;
    uint32_t k;
    if (e == NULL)
        return NULL;
    e->epoll_fd = e->wake_fd = e->near_fd = -1;
    e->notify_fd = notify_fd;
    e->near_on = near_on;
    e->batch_on = batch_on;
    e->spin = spin;
    e->batch_small = ZT_BATCH_SMALL;
    e->batch_after = ZT_BATCH_AFTER;
    e->batch_lowat = ZT_BATCH_LOWAT;
    e->capacity = capacity;
    e->sweep_every = sweep_every;
    pthread_mutex_init(&e->lock, NULL);
    /* calloc: pages of slots never used cost no memory */
    e->slots = calloc(capacity, sizeof *e->slots);
    e->free_slots = calloc(capacity, sizeof *e->free_slots);
    e->again = calloc(ZT_RELAY_EVENTS, sizeof *e->again);
    e->again_cap = ZT_RELAY_EVENTS;
    if (e->slots == NULL || e->free_slots == NULL || e->again == NULL)
        goto fail;
    e->nfree = 0;  /* slots are taken from top until they run out: untouched capacity costs no memory */
    e->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    e->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    e->near_fd = epoll_create1(EPOLL_CLOEXEC);
    if (e->epoll_fd < 0 || e->wake_fd < 0 || e->near_fd < 0)
        goto fail;
    ev.events = EPOLLIN;
    ev.data.u64 = ZT_RELAY_WAKE;
    if (epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, e->wake_fd, &ev) < 0)
        goto fail;
    e->now = zt_relay_clock();
    e->next_sweep = e->now + sweep_every;
    if (pthread_create(&e->thread, NULL, zt_relay_thread, e) != 0)
        goto fail;
    e->thread_started = 1;
    return e;
fail:
    k = errno;
    zt_engine_free(e);
    errno = k;
    return NULL;
}

static void zt_engine_wake(zt_engine *e) {
    uint64_t one = 1;
    if (write(e->wake_fd, &one, sizeof one) < 0) {
    }
}

/* Stop the thread (if running), end every live relay with a reset (reported), close it all. */
static void zt_engine_stop(zt_engine *e) {
    uint32_t slot;
    if (e->thread_started) {
        pthread_mutex_lock(&e->lock);
        e->stop = 1;
        pthread_mutex_unlock(&e->lock);
        zt_engine_wake(e);
        pthread_join(e->thread, NULL);
        e->thread_started = 0;
    }
    e->stop = 1;
    for (slot = 0; slot < e->top; slot++)
        if (e->slots[slot].used)
            zt_relay_end(e, &e->slots[slot], ZT_END_CLOSED, 1);
    while (e->npipes) {
        e->npipes--;
        close(e->pipes[e->npipes].r);
        close(e->pipes[e->npipes].w);
    }
}

static void zt_engine_free(zt_engine *e) {
    if (e == NULL)
        return;
    if (e->slots != NULL)
        zt_engine_stop(e);
    if (e->epoll_fd >= 0)
        close(e->epoll_fd);
    if (e->wake_fd >= 0)
        close(e->wake_fd);
    if (e->near_fd >= 0)
        close(e->near_fd);
    free(e->slots);
    free(e->free_slots);
    free(e->again);
    free(e->ends);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

/* Relay client and remote (connected, non-blocking; the engine owns them from here, also on
 * failure). Called with the lock held, on the loop's thread. The id (> 0), or 0 with errno set.
 * The first pump runs here: a client's first bytes usually came with its handshake. */
static uint64_t zt_engine_add(zt_engine *e, int client, int remote, double idle, int use_splice) {
    zt_pipe p;
    int k, err;
    if (e->stop || (e->nfree == 0 && e->top >= e->capacity)) {
        zt_abort_fd(client);
        zt_abort_fd(remote);
        errno = e->stop ? ESHUTDOWN : ENFILE;
        return 0;
    }
    uint32_t slot = e->nfree ? e->free_slots[--e->nfree] : e->top;
    zt_relay *r = &e->slots[slot];
    if (slot >= e->top)
        e->top = slot + 1;
    uint32_t gen = r->gen ? r->gen : 1;  /* id 0 is never a relay's */
    memset(r, 0, sizeof *r);
    r->gen = gen;
    r->used = 1;
    e->live++;
    r->idle = idle;
    r->last = e->now = zt_relay_clock();
    /* a relay idles out between idle and 1.25 idle: the sweep runs at least every idle / 4 */
    if (idle > 0 && idle / 4 < e->sweep_every) {
        e->sweep_every = idle / 4 > 0.01 ? idle / 4 : 0.01;
        if (e->next_sweep > e->now + e->sweep_every) {
            e->next_sweep = e->now + e->sweep_every;
            zt_engine_wake(e);  /* its thread may sleep until the old time */
        }
    }
    r->d[0].src = r->d[1].dst = client;
    r->d[1].src = r->d[0].dst = remote;
    for (k = 0; k < 2; k++) {
        zt_dir *d = &r->d[k];
        d->pipe_r = d->pipe_w = -1;
        if (use_splice) {
            if (zt_pipe_get(e, &p) < 0)
                goto fail;
            d->pipe_r = p.r;
            d->pipe_w = p.w;
            d->cap = p.cap;
        } else {
            d->buf = malloc(ZT_RELAY_COPY_SIZE);
            if (d->buf == NULL)
                goto fail;
            d->cap = ZT_RELAY_COPY_SIZE;
        }
    }
    r->far = !e->near_on;
    if (zt_relay_watch(e, r, r->far ? e->epoll_fd : e->near_fd, EPOLL_CTL_ADD) < 0)
        goto fail;
    uint64_t id = zt_relay_id(e, slot);
    /* may end it at once (reported like any end), or leave it moving: the thread goes on */
    if (zt_relay_pump(e, r) == 0 && zt_relay_again(e, r))
        zt_engine_wake(e);
    return id;
fail:
    err = errno;
    zt_relay_end(e, r, ZT_END_RESET, 0);
    errno = err;
    return 0;
}

#endif
