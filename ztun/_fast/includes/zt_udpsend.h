/* The UDP table's sender: a native thread that makes the sendmmsg calls of routed datagrams.
 *
 * A datagram sent on a veth or a LAN costs its sender the whole way out, and on a veth also the
 * receiving namespace's work, which the kernel runs inline in the send; with one session socket
 * per client port every datagram of many sessions is a call of its own. On the loop's thread
 * that was most of its time, so the loop only copies each routed datagram into a ring here
 * (one record: the socket, its generation, the address or none, the bytes) and this thread
 * sends them, one sendmmsg per run of records of one socket.
 *
 * One producer (the loop's thread) and one consumer (this thread). `lock` guards head, tail
 * and the flags; the thread sends a chunk of records while holding `sending`, which the table
 * also takes to detach a socket (its generation goes up): a record of a socket detached since
 * it was queued is skipped, so an fd its owner closes after the detach is never written. */
#ifndef ZT_UDPSEND_H
#define ZT_UDPSEND_H

#define _GNU_SOURCE 1
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define ZT_USEND_RING (4u << 20)  /* bytes of queued records: tens of ms at 1 Gbit/s */
#define ZT_USEND_BATCH 64         /* datagrams per sendmmsg */
#define ZT_USEND_CHUNK 256        /* records sent before the tail moves (room for the producer) */

typedef struct {
    uint32_t size;     /* the whole record, a multiple of 8; a pad record (sock -1) fills the ring's end */
    int32_t sock;      /* the table's socket id */
    uint32_t gen;      /* its generation when queued */
    int32_t fd;
    uint32_t len;      /* data bytes after the header */
    uint16_t namelen;  /* 0: a connected socket */
    uint16_t spare;
    uint8_t name[28];
} zt_urec;

typedef struct {
    pthread_mutex_t lock, sending;
    pthread_cond_t wake, idle;
    pthread_t thread;
    int started, stop, waiting, idle_waiters;
    uint8_t *ring;
    uint64_t head, tail;   /* byte positions, only growing; a record starts at pos % ZT_USEND_RING */
    uint32_t *gens;        /* per socket id; written under `sending` */
    uint32_t nsocks;
    uint64_t sent, eagain, errors, stale, wakeups;  /* written by the thread under `sending` */
} zt_usend;

static void zt_usend_flush(zt_usend *q, int fd, struct mmsghdr *msgs, int n) {
    int at = 0, r;
    while (at < n) {
        r = sendmmsg(fd, &msgs[at], n - at, MSG_DONTWAIT);
        if (r > 0) {
            q->sent += r;
            at += r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            q->eagain += n - at;  /* a full socket buffer drops the rest, as a host's would */
            return;
        } else {
            q->errors += 1;  /* e.g. a connected socket's ICMP error of an earlier datagram: that one is lost */
            at += 1;
        }
    }
}

static void *zt_usend_main(void *arg) {
    zt_usend *q = arg;
    struct mmsghdr msgs[ZT_USEND_BATCH];
    struct iovec iovs[ZT_USEND_BATCH];
    uint64_t pos, head;
    int n, fd, k;
    zt_urec *r;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        while (q->head == q->tail && !q->stop) {
            if (q->idle_waiters)
                pthread_cond_broadcast(&q->idle);
            q->waiting = 1;
            pthread_cond_wait(&q->wake, &q->lock);
            q->waiting = 0;
        }
        if (q->head == q->tail)
            break;  /* stopped and drained */
        head = q->head;
        pos = q->tail;
        pthread_mutex_unlock(&q->lock);
        pthread_mutex_lock(&q->sending);
        q->wakeups++;
        n = 0;
        fd = -1;
        for (k = 0; k < ZT_USEND_CHUNK && pos < head; k++) {
            r = (zt_urec *)(q->ring + pos % ZT_USEND_RING);
            pos += r->size;
            if (r->sock < 0)
                continue;
            if (q->gens[r->sock] != r->gen) {
                q->stale++;  /* its socket left the table after it was queued */
                continue;
            }
            if (n && (r->fd != fd || n == ZT_USEND_BATCH)) {
                zt_usend_flush(q, fd, msgs, n);
                n = 0;
            }
            fd = r->fd;
            memset(&msgs[n], 0, sizeof msgs[n]);
            iovs[n].iov_base = (uint8_t *)(r + 1);
            iovs[n].iov_len = r->len;
            msgs[n].msg_hdr.msg_iov = &iovs[n];
            msgs[n].msg_hdr.msg_iovlen = 1;
            if (r->namelen) {
                msgs[n].msg_hdr.msg_name = r->name;
                msgs[n].msg_hdr.msg_namelen = r->namelen;
            }
            n++;
        }
        if (n)
            zt_usend_flush(q, fd, msgs, n);
        pthread_mutex_unlock(&q->sending);
        pthread_mutex_lock(&q->lock);
        q->tail = pos;
    }
    if (q->idle_waiters)
        pthread_cond_broadcast(&q->idle);
    pthread_mutex_unlock(&q->lock);
    return NULL;
}

/* A sender for socket ids 0..nsocks-1 (its thread starts with the first record); NULL without memory. */
static zt_usend *zt_usend_new(uint32_t nsocks) {
    zt_usend *q = calloc(1, sizeof *q);
    if (q == NULL)
        return NULL;
    q->gens = calloc(nsocks, sizeof *q->gens);
    q->ring = malloc(ZT_USEND_RING);  /* pages are taken as the ring first goes round */
    if (q->gens == NULL || q->ring == NULL) {
        free(q->gens);
        free(q->ring);
        free(q);
        return NULL;
    }
    q->nsocks = nsocks;
    pthread_mutex_init(&q->lock, NULL);
    pthread_mutex_init(&q->sending, NULL);
    pthread_cond_init(&q->wake, NULL);
    pthread_cond_init(&q->idle, NULL);
    return q;
}

/* Room for a record of len data bytes at the producer's position *at (moved past a pad record
 * when the ring's end is too near); a pointer to fill, or NULL when the ring is full. free_to:
 * the tail as last read + ZT_USEND_RING. */
static zt_urec *zt_usend_reserve(zt_usend *q, uint64_t *at, uint64_t free_to, uint32_t len) {
    uint32_t size = (uint32_t)((sizeof(zt_urec) + len + 7) & ~(size_t)7);
    uint32_t off = *at % ZT_USEND_RING, left = ZT_USEND_RING - off;
    zt_urec *r;
    if (left < size) {  /* the record must be whole: pad to the end, start again at 0 */
        if (*at + left + size > free_to)
            return NULL;
        r = (zt_urec *)(q->ring + off);
        r->size = left;
        r->sock = -1;
        *at += left;
        off = 0;
    } else if (*at + size > free_to) {
        return NULL;
    }
    r = (zt_urec *)(q->ring + off);
    r->size = size;
    r->len = len;
    *at += size;
    return r;
}

/* The producer's start: its position and how far it may write. */
static void zt_usend_begin(zt_usend *q, uint64_t *at, uint64_t *free_to) {
    pthread_mutex_lock(&q->lock);
    *at = q->head;
    *free_to = q->tail + ZT_USEND_RING;
    pthread_mutex_unlock(&q->lock);
}

/* Publish what was written up to at and wake the thread (started now if it was not); 0, or an errno. */
static int zt_usend_commit(zt_usend *q, uint64_t at) {
    int err = 0;
    pthread_mutex_lock(&q->lock);
    if (at != q->head) {
        q->head = at;
        if (!q->started && !q->stop) {
            err = pthread_create(&q->thread, NULL, zt_usend_main, q);
            if (err)
                q->head = q->tail;  /* nothing can send them: forgotten (the caller counts them) */
            else
                q->started = 1;
        } else if (q->waiting) {
            pthread_cond_signal(&q->wake);
        }
    }
    pthread_mutex_unlock(&q->lock);
    return err;
}

/* Wait until every record queued so far was sent or skipped. */
static void zt_usend_drain(zt_usend *q) {
    pthread_mutex_lock(&q->lock);
    while (q->started && q->head != q->tail) {
        q->idle_waiters++;
        pthread_cond_wait(&q->idle, &q->lock);
        q->idle_waiters--;
    }
    pthread_mutex_unlock(&q->lock);
}

/* A socket id leaves (or joins) the table: its queued records are skipped from now on. */
static void zt_usend_forget(zt_usend *q, uint32_t sock) {
    pthread_mutex_lock(&q->sending);
    q->gens[sock]++;
    pthread_mutex_unlock(&q->sending);
}

/* Send what is queued, stop the thread. */
static void zt_usend_stop(zt_usend *q) {
    pthread_mutex_lock(&q->lock);
    q->stop = 1;
    if (q->waiting)
        pthread_cond_signal(&q->wake);
    pthread_mutex_unlock(&q->lock);
    if (q->started) {
        pthread_join(q->thread, NULL);
        q->started = 0;
    }
}

static void zt_usend_free(zt_usend *q) {
    if (q == NULL)
        return;
    zt_usend_stop(q);
    pthread_mutex_destroy(&q->lock);
    pthread_mutex_destroy(&q->sending);
    pthread_cond_destroy(&q->wake);
    pthread_cond_destroy(&q->idle);
    free(q->gens);
    free(q->ring);
    free(q);
}

#endif
