"""Internet checksums (RFC 1071) and incremental updates (RFC 1624): the pure-Python twin.

Values are 16-bit integers as they read big-endian from a packet.
"""

import struct

from ..errors import PacketError
from .typed_args import data, uint


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _ones_sum(b: bytes, initial: int) -> int:
    if len(b) % 2:
        b += b"\0"
    return _fold(sum(struct.unpack(f"!{len(b) // 2}H", b)) + initial)


def ones_sum(buf, initial: int = 0) -> int:
    """Ones'-complement sum of buf's 16-bit big-endian words plus initial, folded to 16 bits."""
    return _ones_sum(data(buf), uint(initial, 32))


def checksum(buf, initial: int = 0) -> int:
    """RFC 1071 checksum: the complement of ones_sum(buf, initial)."""
    return ~ones_sum(buf, initial) & 0xFFFF


def _addresses(a, b) -> tuple[bytes, bytes]:
    a, b = data(a, "src"), data(b, "dst")
    if len(a) != len(b) or len(a) not in (4, 16):
        raise PacketError("addresses must both be 4 or both be 16 bytes")
    return a, b


def pseudo_sum(src, dst, proto: int, length: int) -> int:
    """Ones'-complement sum of the TCP/UDP/ICMPv6 pseudo-header (IPv4 for 4-byte, IPv6 for 16-byte addresses)."""
    src, dst = _addresses(src, dst)
    proto, length = uint(proto, 8), uint(length, 32)
    if len(src) == 4:
        if length > 0xFFFF:
            raise OverflowError(f"length {length} does not fit the IPv4 pseudo-header's 16 bits")
        tail = struct.pack("!BBH", 0, proto, length)
    else:
        tail = struct.pack("!IxxxB", length, proto)
    return _ones_sum(src + dst + tail, 0)


def update16(csum: int, old: int, new: int) -> int:
    """RFC 1624 eqn. 3: the checksum after one 16-bit word changes from old to new."""
    return _update16(uint(csum, 16), uint(old, 16), uint(new, 16))


def update_addr(csum: int, old, new) -> int:
    """The checksum after an address (4 or 16 bytes) changes from old to new."""
    return _update_addr(uint(csum, 16), *_addresses(old, new))


# Unchecked, for the twins' own per-packet use (nat_py, icmp_py): values they read from a
# packet are in range already; the checks above are for what callers hand in.
def _update16(csum: int, old: int, new: int) -> int:
    return ~_fold((~csum & 0xFFFF) + (~old & 0xFFFF) + new) & 0xFFFF


def _update_addr(csum: int, old: bytes, new: bytes) -> int:
    for (o,), (n,) in zip(struct.iter_unpack("!H", old), struct.iter_unpack("!H", new)):
        csum = _update16(csum, o, n)
    return csum
