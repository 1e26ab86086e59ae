"""Internet checksums (RFC 1071) and incremental updates (RFC 1624): the pure-Python twin.

Values are 16-bit integers as they read big-endian from a packet.
"""

import struct


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def ones_sum(buf, initial: int = 0) -> int:
    """Ones'-complement sum of buf's 16-bit big-endian words plus initial, folded to 16 bits."""
    b = bytes(buf)
    if len(b) % 2:
        b += b"\0"
    return _fold(sum(struct.unpack(f"!{len(b) // 2}H", b)) + initial)


def checksum(buf, initial: int = 0) -> int:
    """RFC 1071 checksum: the complement of ones_sum(buf, initial)."""
    return ~ones_sum(buf, initial) & 0xFFFF


def pseudo_sum(src, dst, proto: int, length: int) -> int:
    """Ones'-complement sum of the TCP/UDP/ICMPv6 pseudo-header (IPv4 for 4-byte, IPv6 for 16-byte addresses)."""
    src, dst = bytes(src), bytes(dst)
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise ValueError("addresses must both be 4 or both be 16 bytes")
    if len(src) == 4:
        tail = struct.pack("!BBH", 0, proto, length)
    else:
        tail = struct.pack("!IxxxB", length, proto)
    return ones_sum(src + dst + tail)


def update16(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: the checksum after one 16-bit word changes from old to new."""
    return ~_fold((~csum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def update_addr(csum: int, old, new) -> int:
    """The checksum after an address (4 or 16 bytes) changes from old to new."""
    old, new = bytes(old), bytes(new)
    if len(old) != len(new) or len(old) not in (4, 16):
        raise ValueError("addresses must both be 4 or both be 16 bytes")
    for (o,), (n,) in zip(struct.iter_unpack("!H", old), struct.iter_unpack("!H", new)):
        csum = update16(csum, o, n)
    return csum
