"""ICMP and ICMPv6 echo answered in place over a parsed PacketBatch: the pure-Python twin.

Gives the same bytes, verdicts and counts as icmp.pyx for every input.
"""

from ..errors import PacketError
from . import defs as d
from .checksum_py import _update16
from .typed_args import array, check_count, check_meta

REPLY_TTL = 64


def _unicast(addr: bytes, version: int) -> bool:
    return addr[0] < 224 if version == 4 else addr[0] != 0xFF


def _be16(p, off: int) -> int:
    return (int(p[off]) << 8) | int(p[off + 1])


def _put16(p, off: int, v: int) -> None:
    p[off] = v >> 8
    p[off + 1] = v & 0xFF


def _answer(p, m) -> bool:
    """Turn the echo request in p (a writable uint8 view) into its reply; False if not one to answer."""
    if m["status"] != d.OK or m["frag"] != d.FRAG_NONE or m["icmp_code"] != 0:
        return False
    l4 = int(m["l4_off"])
    version = int(m["version"])
    if version == 4:
        if m["proto"] != d.PROTO_ICMP or m["icmp_type"] != 8:
            return False
        src, dst = bytes(p[12:16]), bytes(p[16:20])
        if not (_unicast(src, 4) and _unicast(dst, 4)):
            return False
        p[12:16], p[16:20] = list(dst), list(src)  # a swap leaves every checksum's sum unchanged
        old, new = _be16(p, 8), (REPLY_TTL << 8) | int(p[9])
        p[8] = REPLY_TTL
        _put16(p, 10, _update16(_be16(p, 10), old, new))
        old = _be16(p, l4)
        p[l4] = 0
        csum = _update16(_be16(p, l4 + 2), old, _be16(p, l4))
        # RFC 1624 gives 0x0000 where a full sum gives 0xFFFF only for an all-zero message.
        if csum == 0 and not any(p[l4 : l4 + 2]) and not any(p[l4 + 4 : int(m["ip_len"])]):
            csum = 0xFFFF
        _put16(p, l4 + 2, csum)
        return True
    if m["proto"] != d.PROTO_ICMPV6 or m["icmp_type"] != 128:
        return False
    src, dst = bytes(p[8:24]), bytes(p[24:40])
    if not (_unicast(src, 6) and _unicast(dst, 6)):
        return False
    p[8:24], p[24:40] = list(dst), list(src)
    p[7] = REPLY_TTL
    old = _be16(p, l4)
    p[l4] = 129
    _put16(p, l4 + 2, _update16(_be16(p, l4 + 2), old, _be16(p, l4)))
    return True


def _classify(m) -> int:
    if m["status"] != d.OK:
        return d.V_DROP
    if m["frag"] == d.FRAG_LATER:
        return d.V_OTHER
    version, proto = m["version"], m["proto"]
    if (version == 4 and proto == d.PROTO_ICMP) or (version == 6 and proto == d.PROTO_ICMPV6):
        return d.V_ICMP
    if proto == d.PROTO_UDP:
        return d.V_UDP
    return d.V_OTHER


def echo_batch(batch, classify: bool = True, verdict_counts=None, drop_counts=None) -> int:
    """Answer the echo requests among slots 0..batch.count-1 in place; return how many.

    See icmp.pyx for the contract: classify gives every slot a verdict first (V_DROP with
    the parse status as reason, V_ICMP, V_UDP or V_OTHER); each V_ICMP echo request to and
    from unicast addresses becomes its reply and V_WRITE; the count arrays are incremented.
    """
    check_meta(batch, d.META_DTYPE.itemsize)
    count = check_count(batch)
    if verdict_counts is not None and len(array(verdict_counts, "u", 8, "verdict_counts")) < d.N_VERDICTS:
        raise PacketError(f"verdict_counts needs {d.N_VERDICTS} entries")
    if drop_counts is not None and len(array(drop_counts, "u", 8, "drop_counts")) < d.N_REASONS:
        raise PacketError(f"drop_counts needs {d.N_REASONS} entries")
    answered = 0
    for i in range(count):
        m = batch.meta[i]
        if classify:
            batch.verdicts[i] = _classify(m)
            batch.reasons[i] = m["status"]
        if batch.verdicts[i] == d.V_ICMP and batch.lengths[i] > 0:
            if _answer(batch.data[i, d.HEADROOM :], m):
                batch.verdicts[i] = d.V_WRITE
                answered += 1
        v = int(batch.verdicts[i])
        if verdict_counts is not None and v < d.N_VERDICTS:
            verdict_counts[v] += 1
        if drop_counts is not None and v == d.V_DROP and batch.reasons[i] < d.N_REASONS:
            drop_counts[int(batch.reasons[i])] += 1
    return answered
