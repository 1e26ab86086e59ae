"""A small rtnetlink client: the links, addresses, routes and policy rules ztun reads and changes.

One NETLINK_ROUTE socket, one request at a time, plain `struct` (no pyroute2: importing it
costs ~15 MiB and asyncio). Requests carry a sequence number and NLM_F_ACK; the kernel's
error is raised as RtnlError, an OSError with the errno. Messages decode into plain dicts:
the header's fields by pyroute2's names ("family", "table", "proto", ...) and the
attributes ztun reads by their kernel names ("RTA_DST", "FRA_PRIORITY", ...); other
attributes are skipped. A reply that does not parse is RtnlError(EBADMSG), never an
IndexError or struct.error.
"""

import errno
import ipaddress
import os
import socket
import struct

# <linux/netlink.h>
NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK, NLM_F_DUMP_INTR = 0x1, 0x2, 0x4, 0x10
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL, NLM_F_CREATE = 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # on an NLMSG_ERROR: request left out; extended-ack attributes follow
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK, NETLINK_EXT_ACK = 270, 11
# <linux/rtnetlink.h>
RTM_NEWLINK, RTM_GETLINK = 16, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWRULE, RTM_DELRULE, RTM_GETRULE = 32, 33, 34
RTN_UNICAST, RTN_UNREACHABLE, RTN_THROW = 1, 7, 9
RT_SCOPE_UNIVERSE, RT_SCOPE_NOWHERE = 0, 255
RT_TABLE_UNSPEC, RT_TABLE_MAIN = 0, 254
# <linux/fib_rules.h>
FR_ACT_TO_TBL, FR_ACT_GOTO, FR_ACT_NOP, FR_ACT_UNREACHABLE = 1, 2, 3, 7
# <linux/if.h>, <linux/if_addr.h>
IFF_UP = 0x1
IFA_F_NODAD = 0x02

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")  # len, type
_NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_RECV_SIZE = 65536  # the kernel fills a dump's datagrams up to 32 KiB
_DUMP_TRIES = 5

# Each message kind: its header's struct and field names, and the attributes ztun reads as
# {type: (name, how its value is held)}: u32, u8, str (NUL-terminated), addr (4 or 16
# bytes), linkinfo (nested, the kind only).
_IFINFOMSG = (struct.Struct("=BxHiII"), ("family", "ifi_type", "index", "flags", "change"))
_IFADDRMSG = (struct.Struct("=BBBBI"), ("family", "prefixlen", "flags", "scope", "index"))
_RTMSG = (struct.Struct("=BBBBBBBBI"), ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type", "flags"))
_FIBRULEHDR = (struct.Struct("=BBBBBBBBI"), ("family", "dst_len", "src_len", "tos", "table", "res1", "res2", "action", "flags"))

_LINK_ATTRS = {3: ("IFLA_IFNAME", "str"), 4: ("IFLA_MTU", "u32"), 18: ("IFLA_LINKINFO", "linkinfo"),
               33: ("IFLA_CARRIER", "u8")}
_LINKINFO_ATTRS = {1: ("IFLA_INFO_KIND", "str")}
_ADDR_ATTRS = {1: ("IFA_ADDRESS", "addr"), 2: ("IFA_LOCAL", "addr"), 3: ("IFA_LABEL", "str"), 8: ("IFA_FLAGS", "u32")}
_ROUTE_ATTRS = {1: ("RTA_DST", "addr"), 4: ("RTA_OIF", "u32"), 5: ("RTA_GATEWAY", "addr"), 6: ("RTA_PRIORITY", "u32"),
                7: ("RTA_PREFSRC", "addr"), 9: ("RTA_MULTIPATH", "nexthop"), 15: ("RTA_TABLE", "u32")}
_RULE_ATTRS = {1: ("FRA_DST", "addr"), 2: ("FRA_SRC", "addr"), 3: ("FRA_IIFNAME", "str"), 4: ("FRA_GOTO", "u32"),
               6: ("FRA_PRIORITY", "u32"), 10: ("FRA_FWMARK", "u32"), 14: ("FRA_SUPPRESS_PREFIXLEN", "u32"),
               15: ("FRA_TABLE", "u32"), 16: ("FRA_FWMASK", "u32"), 17: ("FRA_OIFNAME", "str"),
               21: ("FRA_PROTOCOL", "u8"),
               22: ("FRA_IP_PROTO", "u8"), 24: ("FRA_DPORT_RANGE", "ports")}
_RTNEXTHOP = struct.Struct("=HBBi")  # len, flags, hops, ifindex
_KINDS = {RTM_NEWLINK: (_IFINFOMSG, _LINK_ATTRS), RTM_NEWADDR: (_IFADDRMSG, _ADDR_ATTRS),
          RTM_NEWROUTE: (_RTMSG, _ROUTE_ATTRS), RTM_NEWRULE: (_FIBRULEHDR, _RULE_ATTRS)}
_BY_NAME = {name: (num, decoder) for attrs in (_LINK_ATTRS, _ADDR_ATTRS, _ROUTE_ATTRS, _RULE_ATTRS)
            for num, (name, decoder) in attrs.items()}
_INTS = {"u32": struct.Struct("=I"), "u8": struct.Struct("=B")}
_PORTS = struct.Struct("=HH")  # struct fib_rule_port_range: start, end


class RtnlError(OSError):
    """The kernel refused a request (errno is its error), or its reply did not parse (EBADMSG)."""

    def __init__(self, code: int, detail: str = ""):
        text = os.strerror(code) + (f": {detail}" if detail else "")
        super().__init__(code, text)


def _bad(what: str) -> RtnlError:
    return RtnlError(errno.EBADMSG, f"malformed netlink reply: {what}")


# --- encoding ------------------------------------------------------------------------

def attr(kind: str, value) -> bytes:
    """One attribute named by its kernel name, value encoded by what the name holds, padded to 4 bytes."""
    num, decoder = _BY_NAME[kind]
    if decoder in _INTS:
        data = _INTS[decoder].pack(value)
    elif decoder == "str":
        data = value.encode() + b"\0"
    elif decoder == "addr":
        data = ipaddress.ip_address(value).packed
    elif decoder == "ports":
        data = _PORTS.pack(*value)
    else:
        raise ValueError(f"{kind} cannot be encoded")
    return _NLATTR.pack(_NLATTR.size + len(data), num) + data + b"\0" * (-len(data) % 4)


def pack(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    """A netlink message: header (pid 0, the kernel's) and payload."""
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(payload), msg_type, flags, seq, 0) + payload


def _header(kind, **fields) -> bytes:
    st, names = kind
    return st.pack(*(fields.get(n, 0) for n in names))


def link_request(*, index: int = 0, name: str | None = None, mtu: int | None = None, up: bool | None = None) -> bytes:
    """ifinfomsg + attributes: a link by index or name; up/down through flags and change (IFF_UP only)."""
    body = _header(_IFINFOMSG, index=index, flags=IFF_UP if up else 0, change=IFF_UP if up is not None else 0)
    if name is not None:
        body += attr("IFLA_IFNAME", name)
    if mtu is not None:
        body += attr("IFLA_MTU", mtu)
    return body


def addr_request(*, family: int, index: int, address: str, prefixlen: int, flags: int = 0) -> bytes:
    """ifaddrmsg + attributes: IPv4 gives the address as IFA_LOCAL and IFA_ADDRESS (no peer), IPv6 as IFA_ADDRESS."""
    body = _header(_IFADDRMSG, family=family, prefixlen=prefixlen, flags=flags & 0xFF, index=index)
    if family == socket.AF_INET:
        body += attr("IFA_LOCAL", address)
    body += attr("IFA_ADDRESS", address)
    if flags:
        body += attr("IFA_FLAGS", flags)
    return body


def route_request(*, family: int, dst: str | None = None, dst_len: int = 0, table: int = RT_TABLE_MAIN,
                  type: int = RTN_UNICAST, proto: int = 0, scope: int = RT_SCOPE_UNIVERSE, oif: int | None = None,
                  gateway: str | None = None, priority: int | None = None, prefsrc: str | None = None) -> bytes:
    """rtmsg + attributes. Tables above 255 fit only RTA_TABLE (the header then says RT_TABLE_UNSPEC); RTA_TABLE is always sent."""
    body = _header(_RTMSG, family=family, dst_len=dst_len, table=table if table < 256 else RT_TABLE_UNSPEC,
                   proto=proto, scope=scope, type=type)
    body += attr("RTA_TABLE", table)
    if dst is not None and dst_len:
        body += attr("RTA_DST", dst)
    for kind, value in (("RTA_OIF", oif), ("RTA_GATEWAY", gateway), ("RTA_PRIORITY", priority), ("RTA_PREFSRC", prefsrc)):
        if value is not None:
            body += attr(kind, value)
    return body


def rule_request(*, family: int, action: int, priority: int | None = None, table: int | None = None,
                 goto: int | None = None, iifname: str | None = None, oifname: str | None = None,
                 src: str | None = None, src_len: int = 0,
                 fwmark: int | None = None, fwmask: int | None = None, suppress_prefixlen: int | None = None,
                 protocol: int | None = None, dst: str | None = None, dst_len: int = 0, ip_proto: int | None = None,
                 dport_range: tuple | None = None) -> bytes:
    """fib_rule_hdr + attributes; None leaves a field out (on delete: matches any). dport_range: (first, last)."""
    head_table = table if table is not None and table < 256 else RT_TABLE_UNSPEC
    body = _header(_FIBRULEHDR, family=family, src_len=src_len if src is not None else 0,
                   dst_len=dst_len if dst is not None else 0, table=head_table, action=action)
    for kind, value in (("FRA_PRIORITY", priority), ("FRA_TABLE", table), ("FRA_GOTO", goto), ("FRA_IIFNAME", iifname),
                        ("FRA_OIFNAME", oifname),
                        ("FRA_SRC", src), ("FRA_DST", dst), ("FRA_FWMARK", fwmark), ("FRA_FWMASK", fwmask),
                        ("FRA_SUPPRESS_PREFIXLEN", suppress_prefixlen), ("FRA_PROTOCOL", protocol),
                        ("FRA_IP_PROTO", ip_proto), ("FRA_DPORT_RANGE", dport_range)):
        if value is not None:
            body += attr(kind, value)
    return body


# --- decoding ------------------------------------------------------------------------

def split(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """The messages of one datagram as (type, flags, seq, payload); EBADMSG if a length is wrong."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < _NLMSGHDR.size:
            raise _bad(f"{len(data) - pos} bytes left, too short for a message header")
        length, msg_type, flags, seq, _ = _NLMSGHDR.unpack_from(data, pos)
        if length < _NLMSGHDR.size or length > len(data) - pos:
            raise _bad(f"message length {length} at offset {pos} of a {len(data)}-byte datagram")
        out.append((msg_type, flags, seq, bytes(data[pos + _NLMSGHDR.size:pos + length])))
        pos += (length + 3) & ~3
    return out


def attributes(data: bytes, offset: int = 0):
    """Yield (type, value bytes) of the attributes from offset on; EBADMSG if one overruns."""
    pos = offset
    while pos < len(data):
        if len(data) - pos < _NLATTR.size:
            raise _bad(f"{len(data) - pos} bytes left, too short for an attribute header")
        length, kind = _NLATTR.unpack_from(data, pos)
        if length < _NLATTR.size or length > len(data) - pos:
            raise _bad(f"attribute {kind & _NLA_TYPE_MASK} of length {length} at offset {pos} of {len(data)}")
        yield kind & _NLA_TYPE_MASK, data[pos + _NLATTR.size:pos + length]
        pos += (length + 3) & ~3


def _value(name: str, decoder: str, raw: bytes):
    if decoder in _INTS:
        if len(raw) != _INTS[decoder].size:
            raise _bad(f"{name} has {len(raw)} bytes, not {_INTS[decoder].size}")
        return _INTS[decoder].unpack(raw)[0]
    if decoder == "str":
        return raw.split(b"\0", 1)[0].decode(errors="replace")
    if decoder == "addr":
        if len(raw) not in (4, 16):
            raise _bad(f"{name} has {len(raw)} bytes, not an IPv4 or IPv6 address")
        return str(ipaddress.ip_address(bytes(raw)))
    if decoder == "ports":
        if len(raw) != _PORTS.size:
            raise _bad(f"{name} has {len(raw)} bytes, not {_PORTS.size}")
        return _PORTS.unpack(raw)
    if decoder == "nexthop":  # the first hop of a multipath route: {"oif": index, "RTA_GATEWAY": address?}
        if len(raw) < _RTNEXTHOP.size:
            raise _bad(f"{name} has {len(raw)} bytes, too short for a next hop")
        length, _, _, index = _RTNEXTHOP.unpack_from(raw)
        if length < _RTNEXTHOP.size or length > len(raw):
            raise _bad(f"{name}'s next hop of length {length} in {len(raw)} bytes")
        hop = {"oif": index}
        for kind, value in attributes(raw[:length], _RTNEXTHOP.size):
            if kind == 5:
                hop["RTA_GATEWAY"] = _value("RTA_GATEWAY", "addr", value)
        return hop
    assert decoder == "linkinfo", decoder
    return {_LINKINFO_ATTRS[k][0]: _value(_LINKINFO_ATTRS[k][0], _LINKINFO_ATTRS[k][1], v)
            for k, v in attributes(raw) if k in _LINKINFO_ATTRS}


def decode(msg_type: int, payload: bytes) -> dict:
    """A link, address, route or rule message (RTM_NEW*) as a dict: header fields, then known attributes by name."""
    if msg_type not in _KINDS:
        raise _bad(f"unexpected message type {msg_type}")
    (st, names), attrs = _KINDS[msg_type]
    if len(payload) < st.size:
        raise _bad(f"message type {msg_type} has {len(payload)} bytes, its header needs {st.size}")
    msg = dict(zip(names, st.unpack_from(payload)))
    for kind, raw in attributes(payload, st.size):
        if kind in attrs:
            name, decoder = attrs[kind]
            msg[name] = _value(name, decoder, raw)
    return msg


def error_of(payload: bytes, flags: int) -> tuple[int, str]:
    """An NLMSG_ERROR's (errno, extended-ack text): errno 0 is the ack of a request that succeeded."""
    if len(payload) < 4 + _NLMSGHDR.size:
        raise _bad(f"error message of {len(payload)} bytes")
    code = -struct.unpack_from("=i", payload)[0]
    text = ""
    if flags & NLM_F_ACK_TLVS:
        request_len = _NLMSGHDR.size if flags & NLM_F_CAPPED else _NLMSGHDR.unpack_from(payload, 4)[0]
        start = 4 + ((request_len + 3) & ~3)
        for kind, raw in attributes(payload, min(start, len(payload))):
            if kind == NLMSGERR_ATTR_MSG:
                text = raw.split(b"\0", 1)[0].decode(errors="replace")
    if code < 0 or code > 4095:
        raise _bad(f"error code {-code}")
    return code, text


# --- the socket ----------------------------------------------------------------------

class Rtnl:
    """A NETLINK_ROUTE socket in the network namespace the process runs in; not thread-safe."""

    def __init__(self, timeout: float = 10.0):
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            try:
                self._sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # the kernel's reason in words, where it has one
            except OSError:
                pass  # kernels before 4.12: errors without words
            self._sock.settimeout(timeout)  # the kernel always answers; never hang if it does not
            self._sock.bind((0, 0))
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- requests --------------------------------------------------------------------

    def request(self, msg_type: int, payload: bytes, flags: int = 0) -> list[dict]:
        """Send one request with NLM_F_ACK; return the messages it answered before its ack, decoded."""
        return self._exchange(msg_type, NLM_F_REQUEST | NLM_F_ACK | flags, payload)

    def dump(self, msg_type: int, payload: bytes) -> list[dict]:
        """Every object of a GET dump; a dump the kernel marks inconsistent (NLM_F_DUMP_INTR) is taken again."""
        for _ in range(_DUMP_TRIES):
            try:
                return self._exchange(msg_type, NLM_F_REQUEST | NLM_F_DUMP, payload)
            except _Interrupted:
                continue
        raise RtnlError(errno.EAGAIN, f"dump of message type {msg_type} changed while read, {_DUMP_TRIES} times")

    def _exchange(self, msg_type: int, flags: int, payload: bytes) -> list[dict]:
        self._seq = self._seq % 0xFFFFFFFF + 1
        seq = self._seq
        try:
            self._sock.send(pack(msg_type, flags, seq, payload))
        except socket.timeout:
            raise RtnlError(errno.ETIMEDOUT, "netlink send") from None
        out, interrupted = [], False
        while True:
            for kind, mflags, mseq, body in self._receive():
                if mseq != seq:
                    continue  # the late answer of an earlier request
                interrupted = interrupted or bool(mflags & NLM_F_DUMP_INTR)
                if kind == NLMSG_ERROR:
                    code, text = error_of(body, mflags)
                    if code:
                        raise RtnlError(code, text)
                    return out  # the ack
                if kind == NLMSG_DONE:
                    status = struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
                    if status < 0:
                        raise RtnlError(-status if -status <= 4095 else errno.EIO, "dump")
                    if interrupted:
                        raise _Interrupted()
                    return out
                if kind == NLMSG_OVERRUN:
                    raise RtnlError(errno.ENOBUFS, "netlink overrun")
                if kind in _KINDS:
                    out.append(decode(kind, body))
                if not mflags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return out  # a single answer to a request that asked no ack

    def _receive(self):
        try:
            data, _, mflags, _ = self._sock.recvmsg(_RECV_SIZE)
        except socket.timeout:
            raise RtnlError(errno.ETIMEDOUT, "no answer from the kernel") from None
        if mflags & socket.MSG_TRUNC:
            raise RtnlError(errno.EMSGSIZE, f"netlink datagram larger than {_RECV_SIZE} bytes")
        return split(data)

    # --- links -----------------------------------------------------------------------

    def link_index(self, name: str) -> int | None:
        """The index of the interface name, or None if there is none."""
        if not name or len(name.encode()) > 15:
            return None  # not a name a device can have (IFNAMSIZ); the kernel would say EINVAL
        try:
            found = self.request(RTM_GETLINK, link_request(name=name))
        except RtnlError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return found[0]["index"] if found else None

    def get_link(self, index: int) -> dict:
        """The link with this index: flags, IFLA_MTU, IFLA_CARRIER, IFLA_LINKINFO {IFLA_INFO_KIND}; ENODEV if none."""
        found = self.request(RTM_GETLINK, link_request(index=index))
        if not found:
            raise _bad("no link in the answer to RTM_GETLINK")
        return found[0]

    def set_link(self, index: int, *, mtu: int | None = None, up: bool | None = None) -> None:
        self.request(RTM_NEWLINK, link_request(index=index, mtu=mtu, up=up))

    # --- addresses, routes, rules -----------------------------------------------------

    def addr(self, cmd: str, *, index: int, address: str, prefixlen: int, flags: int = 0) -> None:
        """cmd "add" (EEXIST if there) or "del" the address/prefixlen on the link index."""
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        body = addr_request(family=family, index=index, address=address, prefixlen=prefixlen, flags=flags)
        self._change(cmd, RTM_NEWADDR, RTM_DELADDR, body)

    def route(self, cmd: str, **kw) -> None:
        """cmd "add" (EEXIST if there) or "del" a route; kw are route_request's. A delete matches any scope."""
        if cmd == "del":
            kw.setdefault("scope", RT_SCOPE_NOWHERE)
        self._change(cmd, RTM_NEWROUTE, RTM_DELROUTE, route_request(**kw))

    def rule(self, cmd: str, **kw) -> None:
        """cmd "add" (EEXIST if the same rule is there) or "del" a policy rule; kw are rule_request's."""
        self._change(cmd, RTM_NEWRULE, RTM_DELRULE, rule_request(**kw))

    def _change(self, cmd: str, new: int, delete: int, body: bytes) -> None:
        if cmd == "add":
            self.request(new, body, NLM_F_CREATE | NLM_F_EXCL)
        elif cmd == "del":
            self.request(delete, body)
        else:
            raise ValueError(f"cmd must be 'add' or 'del', got {cmd!r}")

    def links(self) -> list[dict]:
        """Every link: index, flags, IFLA_IFNAME, ..."""
        return self.dump(RTM_GETLINK, _header(_IFINFOMSG))

    def addresses(self, family: int) -> list[dict]:
        return self.dump(RTM_GETADDR, _header(_IFADDRMSG, family=family))

    def routes(self, family: int) -> list[dict]:
        """Every route of the family, in every table."""
        return self.dump(RTM_GETROUTE, _header(_RTMSG, family=family))

    def rules(self, family: int) -> list[dict]:
        return self.dump(RTM_GETRULE, _header(_FIBRULEHDR, family=family))


class _Interrupted(Exception):
    """A dump ended with NLM_F_DUMP_INTR on one of its messages: the tables changed while it was read."""
