"""UdpTable: a UDP session's datagrams after its first, both ways, without the handler. Pure-Python twin.

The same table as udptable.pyx (read its docstring), with the same counters and the same
packets, one datagram at a time: each attached socket is watched by the loop itself, and
on_ready() runs when one is readable. It serves where nothing is compiled (macOS, Windows,
ZTUN_NO_EXTENSIONS=1) and as the oracle of the parity tests.
"""

import ipaddress
import operator
import os
import socket
import struct
import sys

from . import defs as d
from .checksum_py import checksum, pseudo_sum

DIRECT = 1
SOCKS5 = 2
_PREFIX_MAX = 264
_PER_SOCKET = 32
_HOP_LIMIT = 64
_MAPPED = b"\0" * 10 + b"\xff\xff"
# <linux/in.h>, <linux/in6.h>, <linux/errqueue.h>: a socket's ICMP errors in its error queue
_IP_RECVERR, _IPV6_RECVERR = 11, 25
_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6 = 2, 3
_EXTENDED_ERR = struct.Struct("=IBBBBII")  # ee_errno, ee_origin, ee_type, ee_code, ee_pad, ee_info, ee_data
_MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0)  # Linux only: elsewhere nothing is asked, nothing read
# <linux/udp.h>: UDP_GRO, a socket option and the control message of a coalesced receive (an int: the
# datagrams' size). Linux only, as the compiled table.
_SOL_UDP, _UDP_GRO = 17, 104
_GRO_LINUX = sys.platform.startswith("linux")
_GRO_CTRL = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
_SCRATCH = 65536  # bytes asked for a message of a UDP_GRO socket: any UDP payload fits


def rx_gro_default() -> bool:
    """Whether session sockets get UDP_GRO: with ZTUN_UDP_RX_GRO=1 (off by default: in the end-to-end
    benchmark it did not measurably pay, README performance section)."""
    return os.environ.get("ZTUN_UDP_RX_GRO", "0") in ("1", "on")


def gro_count(length: int, size: int) -> int:
    """The datagrams in a received message of length bytes whose UDP_GRO control message said size
    (0: none came): one unless size is shorter than the message."""
    if length < 0 or size < 0:
        raise ValueError("length and size must be >= 0")
    if size == 0 or size >= length:
        return 1
    return -(-length // size)


class _Session:
    __slots__ = ("version", "client", "cport", "last", "counts", "routes", "socks")

    def __init__(self, version, client, cport, now):
        self.version, self.client, self.cport, self.last = version, client, cport, now
        self.counts = [0, 0, 0, 0]
        self.routes: dict = {}  # (dst, dport) -> (sock id, to, prefix)
        self.socks: set = set()


class _Sock:
    __slots__ = ("sock", "kind", "fake", "session", "ready", "gro")

    def __init__(self, sock, kind, fake, session):
        self.sock, self.kind, self.fake, self.session, self.ready = sock, kind, fake, session, False
        self.gro = False


class UdpTable:
    """UdpTable(loop, on_ready, sessions=16384, routes=65536, sockets=65536, sender_thread=False): see
    udptable.pyx. The twin always sends on the caller's thread (sender_thread is accepted for parity), and
    cuts every coalesced message (UDP_GRO) into its datagrams: uso is accepted, and the client gets the
    same datagrams with the same IPv4 IDs as from the compiled table's USO super-packets."""

    def __init__(self, loop, on_ready, sessions=16384, routes=65536, sockets=65536, sender_thread=False):
        sessions, routes, sockets = operator.index(sessions), operator.index(routes), operator.index(sockets)
        for name, value in (("sessions", sessions), ("routes", routes), ("sockets", sockets)):
            if not 0 < value <= 1 << 22:
                raise ValueError(f"{name} must be 1 to 2**22, got {value}")
        self.session_capacity, self.route_capacity, self.socket_capacity = sessions, routes, sockets
        self.loop, self.on_ready = loop, on_ready
        self._sessions: dict = {}
        self._free_sessions = list(range(sessions - 1, -1, -1))
        self._socks: dict = {}
        self._free_socks = list(range(sockets - 1, -1, -1))
        self._by_key: dict = {}  # (version, client, cport, dst, dport) -> session id
        self._routes = 0
        self._ip_id = int.from_bytes(os.urandom(2), "little")
        self._closed = False
        self.uso = False
        self._rx_gro = rx_gro_default() and _GRO_LINUX
        self._pend: list = []  # (_Sock, sender or None, datagram): received, waiting for slots (reversed)
        self._stats = dict.fromkeys(("datagrams", "fast_sent", "fast_send_dropped", "fast_send_error", "fast_received", "fast_recv_error",
                                     "gso_sends", "gso_datagrams", "gso_refused",  # none here: one sendto a datagram
                                     "reply_wrong_family", "reply_by_name", "reply_malformed",
                                     "reply_fragment", "reply_too_big", "route_table_full", "unreachable_to_client",
                                     "icmp_error_other", "gro_receives", "gro_datagrams", "gro_uso", "gro_refused"), 0)

    def close(self):
        if not self._closed:
            self._closed = True
            for x in self._socks.values():
                self._unwatch(x)

    def fileno(self) -> int:
        return -1

    # -- sessions -------------------------------------------------------------------

    def open(self, version, client, port, now) -> int:
        client = bytes(client)
        if (version, len(client)) not in ((4, 4), (6, 16)):
            raise ValueError("client must be 4 bytes for version 4, 16 for version 6")
        if not self._free_sessions:
            return -1
        sid = self._free_sessions.pop()
        self._sessions[sid] = _Session(version, client, port, now)
        return sid

    def _session(self, sid) -> _Session:
        s = self._sessions.get(sid)
        if s is None:
            raise KeyError(f"no UDP session {sid}")
        return s

    def close_session(self, sid):
        s = self._session(sid)
        for k in list(s.socks):
            self._detach(k)
        for dst, dport in list(s.routes):
            self._unroute(sid, s, dst, dport)
        del self._sessions[sid]
        self._free_sessions.append(sid)

    def touch(self, sid, now, up_packets=0, up_bytes=0, down_packets=0, down_bytes=0):
        s = self._session(sid)
        s.last = now
        for i, v in enumerate((up_packets, up_bytes, down_packets, down_bytes)):
            s.counts[i] += v

    def counts(self, sid):
        return tuple(self._session(sid).counts)

    def last_active(self, sid) -> float:
        return self._session(sid).last

    def idle(self, before, most=1 << 30) -> list:
        return [sid for sid, s in sorted(self._sessions.items()) if s.last < before][:most]

    @property
    def sessions_open(self) -> int:
        return len(self._sessions)

    @property
    def routes_open(self) -> int:
        return self._routes

    # -- sockets and routes -----------------------------------------------------------

    def attach(self, sid, sock, kind, fake=None) -> int:
        s = self._session(sid)
        if kind not in (DIRECT, SOCKS5):
            raise ValueError(f"kind must be DIRECT or SOCKS5, got {kind}")
        if fake is not None and len(fake) != (4 if s.version == 4 else 16):
            raise ValueError("fake must be an address of the session's family")
        if sock.fileno() < 0:
            raise ValueError("the socket is closed")
        if not self._free_socks or self._closed:
            return -1
        k = self._free_socks.pop()
        if kind == DIRECT and _MSG_ERRQUEUE:  # a destination's ICMP errors become unreachables to the client
            level, name = (socket.SOL_IP, _IP_RECVERR) if s.version == 4 else (socket.IPPROTO_IPV6, _IPV6_RECVERR)
            try:
                sock.setsockopt(level, name, 1)
            except OSError:
                pass
        x = self._socks[k] = _Sock(sock, kind, None if fake is None else bytes(fake), sid)
        if self._rx_gro:
            try:
                sock.setsockopt(_SOL_UDP, _UDP_GRO, 1)
                x.gro = True
            except OSError:
                self._stats["gro_refused"] += 1
        s.socks.add(k)
        if self.loop is not None:
            self.loop.add_reader(sock.fileno(), self._readable, x)
        return k

    def _readable(self, x):
        x.ready = True
        self.on_ready()

    def _unwatch(self, x):
        if self.loop is not None and x.sock.fileno() >= 0:
            self.loop.remove_reader(x.sock.fileno())

    def detach(self, sock_id):
        if sock_id in self._socks:
            self._detach(sock_id)

    def _detach(self, k):
        x = self._socks.pop(k)
        if self._pend and self._pend[0][0] is x:  # what it received and did not deliver yet goes with it
            self._pend = []
        s = self._sessions[x.session]
        s.socks.discard(k)
        for (dst, dport), route in list(s.routes.items()):
            if route[0] == k:
                self._unroute(x.session, s, dst, dport)
        if not self._closed:
            self._unwatch(x)
        self._free_socks.append(k)

    def route(self, sid, dst, dport, sock_id, to=None, prefix=None) -> bool:
        s = self._session(sid)
        dst = bytes(dst)
        if len(dst) != (4 if s.version == 4 else 16):
            raise ValueError("dst must be an address of the session's family")
        x = self._socks.get(sock_id)
        if x is None or x.session != sid:
            raise KeyError(f"socket {sock_id} is not attached to session {sid}")
        if x.kind == DIRECT:
            if to is None or len(to[0]) not in (4, 16):
                raise ValueError("a DIRECT route needs to = (packed address, port)")
            to = (str(ipaddress.ip_address(bytes(to[0]))), int(to[1]))
        elif prefix is None or not 4 <= len(prefix) <= _PREFIX_MAX:
            raise ValueError(f"a SOCKS5 route needs its UDP header (4..{_PREFIX_MAX} bytes)")
        if (dst, dport) in s.routes:
            self._unroute(sid, s, dst, dport)
        if self._routes >= self.route_capacity:
            self._stats["route_table_full"] += 1
            return False
        s.routes[(dst, dport)] = (sock_id, to, None if prefix is None else bytes(prefix))
        self._by_key[(s.version, s.client, s.cport, dst, dport)] = sid
        self._routes += 1
        return True

    def _unroute(self, sid, s, dst, dport):
        del s.routes[(dst, dport)]
        self._by_key.pop((s.version, s.client, s.cport, dst, dport), None)
        self._routes -= 1

    # -- the datagrams ----------------------------------------------------------------

    def send_batch(self, batch, n, now) -> int:
        if not 0 <= n <= batch.data.shape[0]:
            raise ValueError(f"n {n} outside 0..{batch.data.shape[0]}")
        done = 0
        for i in range(n):
            if batch.verdicts[i] != d.V_UDP:
                continue
            m = batch.meta[i]
            if m["status"] != d.OK or m["frag"] != d.FRAG_NONE or (int(m["gso_type"]) & ~d.GSO_ECN) != d.GSO_NONE:
                continue
            version = int(m["version"])
            alen = 4 if version == 4 else 16
            key = (version, m["src"].tobytes()[:alen], int(m["src_port"]), m["dst"].tobytes()[:alen], int(m["dst_port"]))
            sid = self._by_key.get(key)
            if sid is None:
                continue
            s = self._sessions[sid]
            sock_id, to, prefix = s.routes[(key[3], key[4])]
            h = batch.headroom + int(m["payload_off"])
            payload = batch.data[i, h : h + int(m["payload_len"])].tobytes()
            self._send(self._socks[sock_id].sock, payload, to, prefix)
            s.last = now
            s.counts[0] += 1
            s.counts[1] += len(payload)
            batch.verdicts[i] = d.V_DROP
            done += 1
        self._stats["datagrams"] += done
        return done

    def _send(self, sock, payload, to, prefix):
        try:
            if prefix is None:
                sock.sendto(payload, to)
            else:
                sock.send(prefix + payload)
        except (BlockingIOError, InterruptedError):
            self._stats["fast_send_dropped"] += 1
            return
        except OSError:
            self._stats["fast_send_error"] += 1
            return
        self._stats["fast_sent"] += 1

    def receive(self, out, start, now) -> int:
        slots = out.data.shape[0]
        if not 0 <= start <= slots:
            raise ValueError(f"start {start} outside 0..{slots}")
        slot = start
        room = min(out.data.shape[1] - out.headroom, out.max_packet)
        if self._pend:
            slot = self._drain(self._pend[0][0], out, slot, slots, room, now)
        for x in list(self._socks.values()):
            if slot >= slots:
                break
            if x.ready:
                slot = self._drain(x, out, slot, slots, room, now)
        return slot

    @property
    def pending(self) -> bool:
        return bool(self._pend)

    def _drain(self, x, out, slot, slots, room, now):
        s = self._sessions[x.session]
        v4 = s.version == 4
        hlen = 20 if v4 else 40
        guess = 0 if x.kind == DIRECT else (10 if v4 else 22)
        limit = min(0xFFFF - hlen - 8 if v4 else 0xFFFF - 8, room - hlen - 8 - guess)
        got = 0
        while slot < slots:
            if not self._pend:
                if got >= _PER_SOCKET:
                    break
                try:
                    if x.gro:
                        data, anc, flags, sender = x.sock.recvmsg(_SCRATCH, _GRO_CTRL)
                    else:
                        data, sender = x.sock.recvfrom(limit + guess + 1)
                        anc, flags = [], 0
                except (BlockingIOError, InterruptedError):
                    x.ready = False
                    break
                except OSError:
                    self._stats["fast_recv_error"] += 1
                    if x.kind == DIRECT:
                        slot = self._errors(x, s, out, slot, slots)
                    break
                got += 1
                self._pend = self._datagrams(x, v4, data, anc, flags, sender, limit + guess)
                continue
            _, src, payload = self._pend.pop()
            if src is None:  # SOCKS5: each datagram carries its header
                parsed = self._socks_header(payload, v4)
                if parsed is None:
                    continue
                src, payload = parsed
            if len(payload) > limit:
                self._stats["reply_too_big"] += 1
                continue
            if x.fake is not None:
                src = (x.fake, src[1])
            self._put(out, slot, s, src, payload)
            s.counts[2] += 1
            s.counts[3] += len(payload)
            s.last = now
            self._stats["fast_received"] += 1
            slot += 1
        return slot

    def _datagrams(self, x, v4, data, anc, flags, sender, most):
        """The datagrams of one received message, last first, each (x, sender or None for SOCKS5, bytes);
        what is dropped whole is counted."""
        size = 0
        for level, kind, value in anc:
            if (level, kind) == (_SOL_UDP, _UDP_GRO) and len(value) >= 4:
                size = struct.unpack("=i", value[:4])[0] & 0xFFFFFFFF
        n = gro_count(len(data), size)
        if flags & socket.MSG_TRUNC or (not x.gro and len(data) > most):
            self._stats["reply_too_big"] += 1
            return []
        src = None
        if x.kind == DIRECT:
            src = _sender(sender, v4)
            if src is None:
                self._stats["reply_wrong_family"] += n
                return []
        if n > 1:
            self._stats["gro_receives"] += 1
            self._stats["gro_datagrams"] += n
            view = memoryview(data)
            return [(x, src, bytes(view[at : at + size])) for at in range(len(data) - 1 - (len(data) - 1) % size, -1, -size)]
        return [(x, src, data)]

    def _errors(self, x, s, out, slot, slots):
        """As udptable.pyx: each queued destination unreachable becomes one to the client."""
        v4 = s.version == 4
        for _ in range(8):
            if slot >= slots or not _MSG_ERRQUEUE:
                break
            try:
                _, anc, _, name = x.sock.recvmsg(1, 256, _MSG_ERRQUEUE | socket.MSG_DONTWAIT)
            except OSError:
                break
            err = [data for level, kind, data in anc if (level, kind) in ((socket.SOL_IP, _IP_RECVERR),
                                                                          (socket.IPPROTO_IPV6, _IPV6_RECVERR))]
            if not err or len(err[0]) < _EXTENDED_ERR.size:
                self._stats["icmp_error_other"] += 1
                continue
            _, origin, itype, icode, _, _, _ = _EXTENDED_ERR.unpack_from(err[0])
            dst = _sender(name, v4) if name else None
            if origin not in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6) or itype != (3 if v4 else 1) or dst is None:
                self._stats["icmp_error_other"] += 1
                continue
            address = x.fake if x.fake is not None else dst[0]
            self._put_unreachable(out, slot, s, address, dst[1], itype, icode)
            self._stats["unreachable_to_client"] += 1
            slot += 1
        return slot

    def _put_unreachable(self, out, slot, s, dst, dport, itype, icode):
        udp = struct.pack("!HHHH", s.cport, dport, 8, 0)
        if s.version == 4:
            q = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, _HOP_LIMIT, d.PROTO_UDP, 0, s.client, dst))
            struct.pack_into("!H", q, 10, checksum(q))
            icmp = bytearray(struct.pack("!BBHI", itype, icode, 0, 0) + bytes(q) + udp)
            struct.pack_into("!H", icmp, 2, checksum(icmp))
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), self._ip_id, 0, _HOP_LIMIT, d.PROTO_ICMP, 0,
                                      dst, s.client))
            struct.pack_into("!H", h, 10, checksum(h))
        else:
            q = struct.pack("!IHBB16s16s", 6 << 28, 8, d.PROTO_UDP, _HOP_LIMIT, s.client, dst)
            icmp = bytearray(struct.pack("!BBHI", itype, icode, 0, 0) + q + udp)
            struct.pack_into("!H", icmp, 2, checksum(icmp, pseudo_sum(dst, s.client, d.PROTO_ICMPV6, len(icmp))))
            h = struct.pack("!IHBB16s16s", 6 << 28, len(icmp), d.PROTO_ICMPV6, _HOP_LIMIT, dst, s.client)
        out.set_packet(slot, bytes(h) + bytes(icmp))
        if out.vnet_hdr:
            out.data[slot, out.headroom - d.VNET_HDR_LEN : out.headroom] = 0
        out.verdicts[slot] = d.V_WRITE

    def _socks_header(self, u, v4):
        if len(u) < 4 or u[0] or u[1]:
            self._stats["reply_malformed"] += 1
            return None
        if u[2]:
            self._stats["reply_fragment"] += 1
            return None
        if u[3] == 3:
            self._stats["reply_by_name"] += 1
            return None
        if u[3] == 1 and len(u) >= 10:
            if not v4:
                self._stats["reply_wrong_family"] += 1
                return None
            return (u[4:8], struct.unpack("!H", u[8:10])[0]), u[10:]
        if u[3] == 4 and len(u) >= 22:
            address = u[4:20]
            if v4:
                if address[:12] != _MAPPED:
                    self._stats["reply_wrong_family"] += 1
                    return None
                address = address[12:]
            return (address, struct.unpack("!H", u[20:22])[0]), u[22:]
        self._stats["reply_malformed"] += 1
        return None

    def _put(self, out, slot, s, src, payload):
        address, sport = src
        ulen = 8 + len(payload)
        cs = checksum(struct.pack("!HHHH", sport, s.cport, ulen, 0) + payload, pseudo_sum(address, s.client, d.PROTO_UDP, ulen))
        udp = struct.pack("!HHHH", sport, s.cport, ulen, cs or 0xFFFF) + payload
        if s.version == 4:
            self._ip_id = (self._ip_id + 1) & 0xFFFF
            h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, self._ip_id, 0, _HOP_LIMIT, d.PROTO_UDP, 0,
                                      address, s.client))
            struct.pack_into("!H", h, 10, checksum(h))
        else:
            h = struct.pack("!IHBB16s16s", 6 << 28, ulen, d.PROTO_UDP, _HOP_LIMIT, address, s.client)
        packet = bytes(h) + udp
        out.set_packet(slot, packet)
        if out.vnet_hdr:
            out.data[slot, out.headroom - d.VNET_HDR_LEN : out.headroom] = 0
        out.verdicts[slot] = d.V_WRITE

    def drain(self):
        """The twin sends in send_batch: nothing waits."""

    @property
    def sender_thread(self) -> bool:
        return False

    def stats(self) -> dict:
        return dict(self._stats)


def _sender(sender, v4):
    """(packed address, port) of a recvfrom sender in the client's family, or None."""
    try:
        address = ipaddress.ip_address(sender[0].split("%", 1)[0])
    except ValueError:
        return None
    if v4:
        if address.version == 6:
            if address.ipv4_mapped is None:
                return None
            address = address.ipv4_mapped
        return address.packed, sender[1]
    if address.version == 4:
        return None
    return address.packed, sender[1]
