"""The NAT flow table behind the system stack: the pure-Python twin of nat.pyx.

Client packets C:c -> D:d are rewritten to B:n -> A:P (the kernel listener) and the
kernel's replies A:P -> B:n back to D:d -> C:c, with RFC 1624 checksum updates.
"""

import math
import socket
import struct
from collections import deque

import numpy as np

from ..errors import NatPortsExhausted, NatTableFull
from . import defs as d
from .checksum_py import _update16, _update_addr
from .nat_config import NatConfig, counters, flow_info, key_addr
from .typed_args import check_count, check_meta, index, real, uint


class _Flow:
    __slots__ = ("key", "isn", "nat_index", "nat_port", "state", "fins", "decision", "created", "last_seen", "pout", "bout", "pin", "bin")

    def __init__(self, key, nat_index, nat_port, now, isn=0):
        self.key = key  # (version, proto, src16, sport, dst16, dport)
        self.isn = isn  # the client's initial sequence number: a SYN with another is a new connection
        self.nat_index = nat_index
        self.nat_port = nat_port
        self.state = d.ST_SYN_SENT
        self.fins = 0
        self.decision = d.D_PENDING
        self.created = self.last_seen = now
        self.pout = self.bout = self.pin = self.bin = 0


class NatTable:
    """Fixed-capacity TCP NAT table: O(1) insert, lookup, reverse lookup and delete."""

    def __init__(self, config: NatConfig):
        self.config = config
        self.capacity = config.capacity
        self._next = config.next_addresses
        self._n4 = len(config.next4)
        self._stack4 = config.stack4
        self._stack6 = config.stack6
        self._flows = [None] * config.capacity
        self._free = list(range(config.capacity - 1, -1, -1))
        self._index = {}
        self._rev = {}
        # per next address, free ports oldest first, each with the time its flow last saw a packet
        # per next address: how many never-used ports were handed out, and the freed ports
        # (oldest first) with the whole second each may be reused from
        self._fresh = [0] * len(self._next)
        self._ports = [deque() for _ in self._next]
        self._n_ports = config.port_max - config.port_min + 1
        self._rest = config.port_rest
        self._cursor = 0
        self._timeouts = config.timeouts
        self.verdict_counts = np.zeros(d.N_VERDICTS, dtype=np.uint64)
        self.drop_counts = np.zeros(d.N_REASONS, dtype=np.uint64)

    def __len__(self):
        return len(self._index)

    # -- allocation ---------------------------------------------------------

    def _alloc(self, key, now, isn=0):
        """A new flow for key, or a negative drop reason."""
        if not self._free:
            return -d.TABLE_FULL
        lo, hi = (0, self._n4) if key[0] == 4 else (self._n4, len(self._next))
        for idx in range(lo, hi):
            if self._fresh[idx] < self._n_ports:  # never-used ports first: a freed one is reused last
                port = self.config.port_min + self._fresh[idx]
                self._fresh[idx] += 1
                break
            q = self._ports[idx]
            if q and now >= q[0][1]:  # the oldest freed port has rested (NatConfig.port_rest)
                port = q.popleft()[0]
                break
        else:
            return -d.NO_PORT
        fid = self._free.pop()
        self._flows[fid] = _Flow(key, idx, port, now, isn)
        self._index[key] = fid
        self._rev[(idx, port)] = fid
        return fid

    def delete(self, fid: int) -> None:
        """Remove flow fid and free its NAT port (to the back of the queue: reused last, after its rest)."""
        f = self._flow(fid)
        del self._index[f.key]
        del self._rev[(f.nat_index, f.nat_port)]
        self._ports[f.nat_index].append((f.nat_port, _rest_until(f.last_seen, self._rest)))
        self._flows[fid] = None
        self._free.append(fid)

    def release(self, fid: int) -> None:
        """Remove flow fid, none of whose packets reached the kernel (its SYN was held, then refused or
        dropped): its NAT port has no TIME_WAIT to wait out and is handed out next. ValueError if allowed."""
        f = self._flow(fid)
        if f.decision == d.D_ALLOW:
            raise ValueError(f"flow {fid} was allowed: its port must rest (delete it)")
        self.delete(fid)
        self._ports[f.nat_index].appendleft(self._ports[f.nat_index].pop()[:1] + (0,))

    def _flow(self, fid):
        fid = index(fid)
        f = self._flows[fid] if 0 <= fid < self.capacity else None
        if f is None:
            raise KeyError(f"no flow {fid}")
        return f

    # -- Python API ---------------------------------------------------------

    def insert(self, proto, src, sport, dst, dport, now=0.0) -> int:
        """Add a flow (decision pending) and return its id; NatTableFull / NatPortsExhausted when refused."""
        now = real(now)
        key = _key(proto, src, sport, dst, dport)
        if key in self._index:
            raise ValueError("flow exists")
        fid = self._alloc(key, now)
        if fid < 0:
            self.drop_counts[-fid] += 1
            raise (NatTableFull if -fid == d.TABLE_FULL else NatPortsExhausted)(d.REASON_NAMES[-fid])
        return fid

    def lookup(self, proto, src, sport, dst, dport) -> int:
        """The id of the flow with this 5-tuple, or -1."""
        return self._index.get(_key(proto, src, sport, dst, dport), -1)

    def lookup_nat(self, addr, port) -> int:
        """The id of the flow that owns next address addr, NAT port port (an accepted socket's peer), or -1."""
        port = index(port)
        _, a = key_addr(addr)
        for idx, b in enumerate(self._next):
            if (b + bytes(12))[:16] == a:
                return self._rev.get((idx, port), -1)
        return -1

    def flow(self, fid):
        f = self._flow(fid)
        v, proto, src, sport, dst, dport = f.key
        return flow_info(self.config, fid, v, proto, src, sport, dst, dport, f.nat_index, f.nat_port,
                         f.state, f.decision, f.created, f.last_seen, f.pout, f.bout, f.pin, f.bin)

    def endpoints(self, fid):
        """((source address, port), (destination address, port), NAT port) of flow fid, addresses as text."""
        f = self._flow(fid)
        v, _, src, sport, dst, dport = f.key
        fam, alen = (socket.AF_INET, 4) if v == 4 else (socket.AF_INET6, 16)
        return ((socket.inet_ntop(fam, src[:alen]), sport), (socket.inet_ntop(fam, dst[:alen]), dport), f.nat_port)

    def allow(self, fid):
        self._flow(fid).decision = d.D_ALLOW

    def block(self, fid):
        self._flow(fid).decision = d.D_BLOCK

    def touch(self, fid, now):
        self._flow(fid).last_seen = real(now)

    def free_ports(self) -> int:
        return sum(len(q) + self._n_ports - fresh for q, fresh in zip(self._ports, self._fresh))

    def counters(self) -> dict:
        return counters(self.verdict_counts, self.drop_counts)

    def sweep(self, now, limit=4096) -> int:
        """Look at up to limit slots from where the last sweep stopped; delete idle flows. Returns how many."""
        now, limit, expired = real(now), index(limit), 0
        for _ in range(min(limit, self.capacity)):
            f = self._flows[self._cursor]
            if f is not None and now - f.last_seen > self._timeouts[f.state]:
                self.delete(self._cursor)
                expired += 1
            self._cursor = (self._cursor + 1) % self.capacity
        return expired

    # -- the batch path -------------------------------------------------------

    def process_batch(self, batch, now) -> int:
        """Rewrite TCP slots in place and set batch.verdicts/reasons/flow_ids; return the slots Python must look at."""
        now = real(now)
        check_meta(batch, d.META_DTYPE.itemsize)
        rare, count = 0, check_count(batch)  # before any counter moves, as nat.pyx
        for i in range(count):
            verdict, reason, fid = self._one(batch, i, batch.meta[i], now)
            batch.verdicts[i] = verdict
            batch.reasons[i] = reason
            batch.flow_ids[i] = fid
            self.verdict_counts[verdict] += 1
            if verdict == d.V_DROP:
                self.drop_counts[reason] += 1
            elif verdict != d.V_WRITE:
                rare += 1
        return rare

    def _one(self, batch, i, m, now):
        if m["status"] != d.OK:
            return d.V_DROP, int(m["status"]), -1
        version, proto = int(m["version"]), int(m["proto"])
        if m["frag"] != d.FRAG_NONE:
            return d.V_OTHER, 0, -1
        if proto == d.PROTO_UDP:
            return d.V_UDP, 0, -1
        if proto == (d.PROTO_ICMP if version == 4 else d.PROTO_ICMPV6):
            return d.V_ICMP, 0, -1
        if proto != d.PROTO_TCP:
            return d.V_OTHER, 0, -1
        alen = 4 if version == 4 else 16
        src, dst = m["src"].tobytes(), m["dst"].tobytes()
        sport, dport, flags = int(m["src_port"]), int(m["dst_port"]), int(m["tcp_flags"])
        size = int(m["payload_len"])
        stack, port = (self._stack4, self.config.port4) if version == 4 else (self._stack6, self.config.port6)

        if stack is not None and src[:alen] == stack and sport == port:  # kernel reply A:P -> B:n
            lo, hi = (0, self._n4) if version == 4 else (self._n4, len(self._next))
            idx = next((k for k in range(lo, hi) if self._next[k] == dst[:alen]), -1)
            fid = self._rev.get((idx, dport), -1)
            if fid < 0:
                return d.V_DROP, d.NO_FLOW, -1
            f = self._flows[fid]
            _, _, csrc, csport, cdst, cdport = f.key
            _rewrite(batch, i, m, alen, cdst[:alen], cdport, csrc[:alen], csport)
            if flags & d.TCP_RST:
                f.state = d.ST_RESET
            else:
                if f.state == d.ST_SYN_SENT and flags & d.TCP_SYN and flags & d.TCP_ACK:
                    f.state = d.ST_ESTABLISHED
                if flags & d.TCP_FIN:
                    f.fins |= d.FIN_SERVER
                _fin_state(f)
            f.pin += 1
            f.bin += size
            f.last_seen = now
            return d.V_WRITE, 0, fid

        key = (version, proto, src, sport, dst, dport)
        fid = self._index.get(key, -1)
        syn_only = flags & (d.TCP_SYN | d.TCP_ACK | d.TCP_RST | d.TCP_FIN) == d.TCP_SYN
        if fid >= 0 and syn_only and (self._flows[fid].state in (d.ST_CLOSING, d.ST_RESET)
                                      or self._flows[fid].isn != int(m["seq"])):
            self.delete(fid)  # the client reuses its port: a new connection (a retransmission has the flow's ISN; nat.pyx)
            fid = -1
        verdict = d.V_WRITE
        if fid < 0:
            if not syn_only:
                return d.V_DROP, d.NO_FLOW, -1
            fid = self._alloc(key, now, int(m["seq"]))
            if fid < 0:
                return d.V_DROP, -fid, -1
            verdict = d.V_NEW_FLOW
        f = self._flows[fid]
        if f.decision == d.D_BLOCK:
            f.last_seen = now
            return d.V_DROP, d.BLOCKED, fid
        if f.decision == d.D_PENDING and verdict != d.V_NEW_FLOW:
            return d.V_DROP, d.PENDING, fid
        _rewrite(batch, i, m, alen, self._next[f.nat_index], f.nat_port, stack, port)
        if flags & d.TCP_RST:
            f.state = d.ST_RESET
        elif flags & d.TCP_FIN:
            f.fins |= d.FIN_CLIENT
            _fin_state(f)
        f.pout += 1
        f.bout += size
        f.last_seen = now
        return verdict, 0, fid


def _key(proto, src, sport, dst, dport):
    """The table's key of a 5-tuple; ports and protocol are checked as nat.pyx's typed arguments are."""
    proto, sport, dport = uint(proto, 8), uint(sport, 16), uint(dport, 16)
    v, s = key_addr(src)
    v2, t = key_addr(dst)
    if v != v2:
        raise ValueError("source and destination must be of one IP version")
    return (v, proto, s, sport, t, dport)


def _fin_state(f):
    if f.state != d.ST_RESET and f.fins:
        f.state = d.ST_CLOSING if f.fins == d.FIN_CLIENT | d.FIN_SERVER else d.ST_FIN_WAIT


def _rewrite(batch, i, m, alen, new_src, new_sport, new_dst, new_dport):
    """Set the packet's addresses and TCP ports, updating the IPv4 header and TCP checksums incrementally.

    With VNET_F_NEEDS_CSUM the TCP checksum field holds the (uncomplemented) pseudo-header
    sum, which covers the addresses but not the ports: it gets the address change only.
    """
    buf = batch.data[i]
    base = batch.headroom
    a_off = base + (12 if alen == 4 else 8)
    old_src = buf[a_off : a_off + alen].tobytes()
    old_dst = buf[a_off + alen : a_off + 2 * alen].tobytes()
    if alen == 4:
        (ipcs,) = struct.unpack_from("!H", buf, base + 10)
        ipcs = _update_addr(_update_addr(ipcs, old_src, new_src), old_dst, new_dst)
        struct.pack_into("!H", buf, base + 10, ipcs)
    buf[a_off : a_off + alen] = np.frombuffer(new_src, dtype=np.uint8)
    buf[a_off + alen : a_off + 2 * alen] = np.frombuffer(new_dst, dtype=np.uint8)
    l4 = base + int(m["l4_off"])
    sport, dport = struct.unpack_from("!HH", buf, l4)
    (cs,) = struct.unpack_from("!H", buf, l4 + 16)
    if m["vnet_flags"] & d.VNET_F_NEEDS_CSUM:
        cs = ~_update_addr(_update_addr(~cs & 0xFFFF, old_src, new_src), old_dst, new_dst) & 0xFFFF
    else:
        cs = _update_addr(_update_addr(cs, old_src, new_src), old_dst, new_dst)
        cs = _update16(_update16(cs, sport, new_sport), dport, new_dport)
    struct.pack_into("!HH", buf, l4, new_sport, new_dport)
    struct.pack_into("!H", buf, l4 + 16, cs)


def _rest_until(last_seen: float, rest: float) -> int:
    """The whole second from which a port freed after last_seen may be reused (as nat.pyx stores it)."""
    t = last_seen + rest
    return 0 if t <= 0 else min(math.ceil(t), 4294967295)
