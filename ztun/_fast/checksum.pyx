"""Internet checksums (RFC 1071) and incremental updates (RFC 1624), compiled.

Values are 16-bit integers as they read big-endian from a packet; checksum_py.py is the twin.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t

from ..errors import PacketError

from core cimport zt_sum, zt_delta, zt_apply, zt_fold, zt_pseudo


def ones_sum(const uint8_t[::1] buf, uint32_t initial=0):
    """Ones'-complement sum of buf's 16-bit big-endian words plus initial, folded to 16 bits."""
    if buf.shape[0] == 0:
        return zt_fold(initial)
    with nogil:
        r = zt_sum(&buf[0], buf.shape[0], initial)
    return r


def checksum(const uint8_t[::1] buf, uint32_t initial=0):
    """RFC 1071 checksum: the complement of ones_sum(buf, initial)."""
    cdef uint16_t r
    if buf.shape[0] == 0:
        return ~zt_fold(initial) & 0xFFFF
    if buf.shape[0] < 4096:
        r = zt_sum(&buf[0], buf.shape[0], initial)
    else:
        with nogil:
            r = zt_sum(&buf[0], buf.shape[0], initial)
    return (~r) & 0xFFFF


def pseudo_sum(const uint8_t[::1] src, const uint8_t[::1] dst, uint8_t proto, uint32_t length):
    """Ones'-complement sum of the TCP/UDP/ICMPv6 pseudo-header (IPv4 for 4-byte, IPv6 for 16-byte addresses)."""
    cdef size_t alen = src.shape[0]
    if alen != <size_t>dst.shape[0] or (alen != 4 and alen != 16):
        raise PacketError("addresses must both be 4 or both be 16 bytes")
    if alen == 4 and length > 0xFFFF:
        raise OverflowError(f"length {length} does not fit the IPv4 pseudo-header's 16 bits")
    return zt_pseudo(&src[0], &dst[0], alen, proto, length)


def update16(uint16_t csum, uint16_t old, uint16_t new):
    """RFC 1624 eqn. 3: the checksum after one 16-bit word changes from old to new."""
    return zt_apply(csum, <uint32_t>(<uint16_t>~old) + new)


def update_addr(uint16_t csum, const uint8_t[::1] old, const uint8_t[::1] new):
    """The checksum after an address (4 or 16 bytes) changes from old to new."""
    cdef size_t n = old.shape[0]
    if n != <size_t>new.shape[0] or (n != 4 and n != 16):
        raise PacketError("addresses must both be 4 or both be 16 bytes")
    return zt_apply(csum, zt_delta(&old[0], &new[0], n))
