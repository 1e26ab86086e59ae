/* A stand-in for wintun.dll with the same C API (api/wintun.h of Wintun 0.14), for testing
 * ztun's ctypes binding off Windows. Adapters live in memory; a session has a receive ring
 * (what the system sends into the tunnel) and a send ring (what the application writes),
 * each holding at most `capacity` bytes of packets, every packet taking its size rounded
 * up to 4 plus a 4-byte header as in Wintun's rings. Failures set errno to the Win32 code
 * the real DLL would leave in GetLastError. WintunStub* functions are the test's side:
 * inject received packets, take sent ones, end a session from the "driver", and the
 * read-wait event (an auto-reset event like the one Wintun hands out). */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <wchar.h>

#define ERROR_FILE_NOT_FOUND 2
#define ERROR_NOT_ENOUGH_MEMORY 8
#define ERROR_HANDLE_EOF 38
#define ERROR_INVALID_PARAMETER 87
#define ERROR_BUFFER_OVERFLOW 111
#define ERROR_NO_MORE_ITEMS 259
#define WAIT_OBJECT_0 0
#define WAIT_TIMEOUT 0x102

#define WINTUN_MIN_RING_CAPACITY 0x20000
#define WINTUN_MAX_RING_CAPACITY 0x4000000
#define WINTUN_MAX_IP_PACKET_SIZE 0xFFFF
#define MAX_ADAPTERS 16

typedef struct { uint32_t Data1; uint16_t Data2, Data3; uint8_t Data4[8]; } GUID;

typedef struct packet {
    struct packet *next;
    uint32_t size;
    uint8_t data[];
} packet;

typedef struct {
    packet *head, *tail; /* committed packets, oldest first */
    uint32_t used;       /* bytes held, committed or handed out and not yet released/sent */
} ring;

typedef struct {
    pthread_mutex_t m;
    pthread_cond_t c;
    int signaled;
} event;

typedef struct adapter {
    wchar_t name[128];
    uint64_t luid;
    int in_use;
} adapter;

typedef struct session {
    adapter *adapter;
    uint32_t capacity;
    int ended;
    pthread_mutex_t m;
    ring rx, tx;
    event read_wait;
} session;

static adapter adapters[MAX_ADAPTERS];
static uint64_t next_luid = 0x0123000000000001ull;
static pthread_mutex_t table = PTHREAD_MUTEX_INITIALIZER;

static uint32_t cost(uint32_t size) { return 4 + ((size + 3) & ~3u); }

static void ev_set(event *e) {
    pthread_mutex_lock(&e->m);
    e->signaled = 1;
    pthread_cond_broadcast(&e->c);
    pthread_mutex_unlock(&e->m);
}

adapter *WintunCreateAdapter(const wchar_t *name, const wchar_t *tunnel_type, const GUID *guid) {
    (void)tunnel_type;
    (void)guid;
    if (!name || !*name || wcslen(name) >= 128) {
        errno = ERROR_INVALID_PARAMETER;
        return NULL;
    }
    pthread_mutex_lock(&table);
    for (int i = 0; i < MAX_ADAPTERS; i++) {
        if (!adapters[i].in_use) {
            adapters[i].in_use = 1;
            wcscpy(adapters[i].name, name);
            adapters[i].luid = next_luid++;
            pthread_mutex_unlock(&table);
            return &adapters[i];
        }
    }
    pthread_mutex_unlock(&table);
    errno = ERROR_NOT_ENOUGH_MEMORY;
    return NULL;
}

adapter *WintunOpenAdapter(const wchar_t *name) {
    pthread_mutex_lock(&table);
    for (int i = 0; i < MAX_ADAPTERS; i++) {
        if (adapters[i].in_use && name && wcscmp(adapters[i].name, name) == 0) {
            pthread_mutex_unlock(&table);
            return &adapters[i];
        }
    }
    pthread_mutex_unlock(&table);
    errno = ERROR_FILE_NOT_FOUND;
    return NULL;
}

void WintunCloseAdapter(adapter *a) {
    if (!a)
        return;
    pthread_mutex_lock(&table);
    a->in_use = 0;
    pthread_mutex_unlock(&table);
}

void WintunGetAdapterLUID(adapter *a, uint64_t *luid) { *luid = a->luid; }

uint32_t WintunGetRunningDriverVersion(void) { return (0u << 16) | 14u; }

session *WintunStartSession(adapter *a, uint32_t capacity) {
    if (!a || capacity < WINTUN_MIN_RING_CAPACITY || capacity > WINTUN_MAX_RING_CAPACITY || (capacity & (capacity - 1))) {
        errno = ERROR_INVALID_PARAMETER;
        return NULL;
    }
    session *s = calloc(1, sizeof *s);
    if (!s) {
        errno = ERROR_NOT_ENOUGH_MEMORY;
        return NULL;
    }
    s->adapter = a;
    s->capacity = capacity;
    pthread_mutex_init(&s->m, NULL);
    pthread_mutex_init(&s->read_wait.m, NULL);
    pthread_cond_init(&s->read_wait.c, NULL);
    return s;
}

static void drain(ring *r) {
    while (r->head) {
        packet *p = r->head;
        r->head = p->next;
        free(p);
    }
    r->tail = NULL;
}

void WintunEndSession(session *s) {
    if (!s)
        return;
    drain(&s->rx);
    drain(&s->tx);
    pthread_mutex_destroy(&s->m);
    pthread_mutex_destroy(&s->read_wait.m);
    pthread_cond_destroy(&s->read_wait.c);
    free(s);
}

void *WintunGetReadWaitEvent(session *s) { return &s->read_wait; }

uint8_t *WintunReceivePacket(session *s, uint32_t *size) {
    pthread_mutex_lock(&s->m);
    if (s->ended) {
        pthread_mutex_unlock(&s->m);
        errno = ERROR_HANDLE_EOF;
        return NULL;
    }
    packet *p = s->rx.head;
    if (!p) {
        pthread_mutex_unlock(&s->m);
        errno = ERROR_NO_MORE_ITEMS;
        return NULL;
    }
    s->rx.head = p->next;
    if (!s->rx.head)
        s->rx.tail = NULL;
    pthread_mutex_unlock(&s->m);
    *size = p->size;
    return p->data; /* its ring space stays taken until released */
}

void WintunReleaseReceivePacket(session *s, const uint8_t *data) {
    packet *p = (packet *)(void *)((uintptr_t)data - offsetof(packet, data));
    pthread_mutex_lock(&s->m);
    s->rx.used -= cost(p->size);
    pthread_mutex_unlock(&s->m);
    free(p);
}

uint8_t *WintunAllocateSendPacket(session *s, uint32_t size) {
    pthread_mutex_lock(&s->m);
    if (s->ended) {
        pthread_mutex_unlock(&s->m);
        errno = ERROR_HANDLE_EOF;
        return NULL;
    }
    if (size == 0 || size > WINTUN_MAX_IP_PACKET_SIZE) {
        pthread_mutex_unlock(&s->m);
        errno = ERROR_INVALID_PARAMETER;
        return NULL;
    }
    if (s->tx.used + cost(size) > s->capacity) {
        pthread_mutex_unlock(&s->m);
        errno = ERROR_BUFFER_OVERFLOW;
        return NULL;
    }
    packet *p = malloc(sizeof *p + size);
    if (!p) {
        pthread_mutex_unlock(&s->m);
        errno = ERROR_NOT_ENOUGH_MEMORY;
        return NULL;
    }
    p->next = NULL;
    p->size = size;
    s->tx.used += cost(size);
    pthread_mutex_unlock(&s->m);
    return p->data;
}

void WintunSendPacket(session *s, const uint8_t *data) {
    packet *p = (packet *)(void *)((uintptr_t)data - offsetof(packet, data));
    pthread_mutex_lock(&s->m);
    if (s->tx.tail)
        s->tx.tail->next = p;
    else
        s->tx.head = p;
    s->tx.tail = p;
    pthread_mutex_unlock(&s->m);
}

/* --- the test's side ----------------------------------------------------------------- */

/* Queue a packet as if the system routed it into the adapter: 0, or ERROR_BUFFER_OVERFLOW. */
uint32_t WintunStubInject(session *s, const uint8_t *data, uint32_t size) {
    pthread_mutex_lock(&s->m);
    if (s->rx.used + cost(size) > s->capacity) {
        pthread_mutex_unlock(&s->m);
        return ERROR_BUFFER_OVERFLOW;
    }
    packet *p = malloc(sizeof *p + size);
    p->next = NULL;
    p->size = size;
    memcpy(p->data, data, size);
    if (s->rx.tail)
        s->rx.tail->next = p;
    else
        s->rx.head = p;
    s->rx.tail = p;
    s->rx.used += cost(size);
    pthread_mutex_unlock(&s->m);
    ev_set(&s->read_wait);
    return 0;
}

/* The oldest packet the application sent: its size (copied into buf up to cap), or -1. */
int64_t WintunStubTake(session *s, uint8_t *buf, uint32_t cap) {
    pthread_mutex_lock(&s->m);
    packet *p = s->tx.head;
    if (!p) {
        pthread_mutex_unlock(&s->m);
        return -1;
    }
    s->tx.head = p->next;
    if (!s->tx.head)
        s->tx.tail = NULL;
    s->tx.used -= cost(p->size);
    pthread_mutex_unlock(&s->m);
    int64_t n = p->size;
    memcpy(buf, p->data, p->size < cap ? p->size : cap);
    free(p);
    return n;
}

/* Bytes held by the receive and send rings. */
uint32_t WintunStubUsed(session *s, int send_ring) {
    pthread_mutex_lock(&s->m);
    uint32_t n = send_ring ? s->tx.used : s->rx.used;
    pthread_mutex_unlock(&s->m);
    return n;
}

/* The adapter is going away: every further call on the session fails with ERROR_HANDLE_EOF. */
void WintunStubTerminate(session *s) {
    pthread_mutex_lock(&s->m);
    s->ended = 1;
    pthread_mutex_unlock(&s->m);
    ev_set(&s->read_wait);
}

/* WaitForSingleObject and SetEvent on the read-wait event. */
uint32_t WintunStubWaitEvent(event *e, uint32_t ms) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000;
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&e->m);
    while (!e->signaled) {
        if (pthread_cond_timedwait(&e->c, &e->m, &until) != 0)
            break;
    }
    int got = e->signaled;
    e->signaled = 0; /* auto-reset */
    pthread_mutex_unlock(&e->m);
    return got ? WAIT_OBJECT_0 : WAIT_TIMEOUT;
}

void WintunStubSetEvent(event *e) { ev_set(e); }
