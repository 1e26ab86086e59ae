/* Byte-order helpers and the RFC 1071 / RFC 1624 checksum core, shared by the Cython modules. */
#ifndef ZT_BYTES_H
#define ZT_BYTES_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint16_t zt_be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint32_t zt_be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint16_t zt_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static inline void zt_put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static inline uint32_t zt_fold(uint64_t s) {
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    return (uint32_t)s;
}

/* Ones'-complement sum of n bytes plus initial, folded to 16 bits, as a big-endian value.
 * Words are summed in native order four lanes at a time; RFC 1071 section 2(B) makes the
 * byte-swapped sum the swap of the sum, so one swap at the end gives network order. */
static inline uint16_t zt_sum(const uint8_t *p, size_t n, uint32_t initial) {
    uint64_t a = 0, b = 0, c = 0, d = 0;
    uint32_t w0, w1, w2, w3, s;
    uint16_t h;
    while (n >= 16) {
        memcpy(&w0, p, 4);
        memcpy(&w1, p + 4, 4);
        memcpy(&w2, p + 8, 4);
        memcpy(&w3, p + 12, 4);
        a += w0; b += w1; c += w2; d += w3;
        p += 16;
        n -= 16;
    }
    a += b + c + d;
    while (n >= 4) {
        memcpy(&w0, p, 4);
        a += w0;
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        memcpy(&h, p, 2);
        a += h;
        p += 2;
        n -= 2;
    }
    if (n) {
        uint8_t t[2] = {p[0], 0};
        memcpy(&h, t, 2);
        a += h;
    }
    s = zt_fold(a);
#if !(defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__)
    s = ((s & 0xffu) << 8) | (s >> 8);
#endif
    return (uint16_t)zt_fold((uint64_t)s + initial);
}

/* Sum of (~old + new) over the 16-bit words of two n-byte fields: the RFC 1624 delta. */
static inline uint32_t zt_delta(const uint8_t *old, const uint8_t *new_, size_t n) {
    uint64_t s = 0;
    size_t i;
    for (i = 0; i + 1 < n; i += 2)
        s += (uint16_t)~zt_be16(old + i) + (uint32_t)zt_be16(new_ + i);
    return zt_fold(s);
}

/* RFC 1624 eqn. 3 with a precomputed delta: HC' = ~(~HC + sum(~m + m')). */
static inline uint16_t zt_apply(uint16_t csum, uint32_t delta) {
    return (uint16_t)~zt_fold((uint64_t)(uint16_t)~csum + delta);
}

#endif
