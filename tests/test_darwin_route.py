"""PF_ROUTE messages byte for byte, reply parsing, the request/reply exchange and the macOS Router's undo log.

Expected bytes are written out from XNU's documented layouts, not produced by the code
under test: struct rt_msghdr in bsd/net/route.h (u_short rtm_msglen; u_char rtm_version
= RTM_VERSION 5, rtm_type; u_short rtm_index; 2 bytes of padding; int rtm_flags,
rtm_addrs; pid_t rtm_pid; int rtm_seq, rtm_errno, rtm_use; u_int32_t rtm_inits; struct
rt_metrics = 14 u_int32_t: 92 bytes, little-endian), the sockaddrs of
bsd/netinet/in.h, bsd/netinet6/in6.h and bsd/net/if_dl.h, each padded to 4 bytes
(ROUNDUP32, bsd/net/rtsock.c), and the RTM_/RTF_/RTA_ values of bsd/net/route.h.
"""

import errno
import ipaddress
import os
import socket
import sys
import threading

import pytest

from ztun.errors import RouteError, ZtunError
from ztun.system import darwin_ioctl as di
from ztun.system import route_socket as rs
from ztun.system.darwin_sockaddr import LinkAddr
from ztun.system.route_ranges import route_ranges, subtract
from ztun.system.router import Router
from ztun.tun.options import TunOptions

METRICS = bytes(56)


def h(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", "").replace("\n", ""))


def header(msglen, type_, flags, addrs, seq, index=0, pid=0, err=0):
    """rt_msghdr written field by field (see the module docstring)."""
    le = lambda v, n: (v & (1 << 8 * n) - 1).to_bytes(n, "little")  # noqa: E731
    return le(msglen, 2) + bytes([5, type_]) + le(index, 2) + b"\0\0" + le(flags, 4) + le(addrs, 4) + le(pid, 4) + le(seq, 4) + le(err, 4) + bytes(8) + METRICS


def test_add_ipv4_route_via_gateway():
    msg = rs.route_message(rs.RTM_ADD, "1.0.0.0/8", "198.18.0.1")
    msg.seq = 1
    expected = h(
        "8c00 05 01 0000 0000"  # msglen 92 + 3 * 16 = 140, version 5, RTM_ADD, index 0, padding
        "03080000"  # flags RTF_UP 0x1 | RTF_GATEWAY 0x2 | RTF_STATIC 0x800
        "07000000"  # addrs RTA_DST | RTA_GATEWAY | RTA_NETMASK
        "00000000 01000000 00000000 00000000 00000000"  # pid (the kernel fills it), seq 1, errno, use, inits
    ) + METRICS + h(
        "10 02 0000 01000000 0000000000000000"  # DST: sockaddr_in len 16, AF_INET, port 0, 1.0.0.0
        "10 02 0000 c6120001 0000000000000000"  # GATEWAY 198.18.0.1
        "10 02 0000 ff000000 0000000000000000"  # NETMASK 255.0.0.0
    )
    assert len(expected) == 140
    assert rs.encode(msg) == expected


def test_add_ipv6_route_via_gateway():
    msg = rs.route_message(rs.RTM_ADD, "2000::/3", "fd00:18::1")
    msg.seq = 7
    dst = h("1c 1e 0000 00000000 20000000000000000000000000000000 00000000")  # sockaddr_in6: len 28, AF_INET6 30
    gw = h("1c 1e 0000 00000000 fd000018000000000000000000000001 00000000")
    mask = h("1c 1e 0000 00000000 e0000000000000000000000000000000 00000000")
    expected = header(92 + 3 * 28, 1, 0x803, 0x7, 7) + dst + gw + mask
    assert len(expected) == 176
    assert rs.encode(msg) == expected


def test_interface_route_uses_a_sockaddr_dl_gateway():
    msg = rs.route_message(rs.RTM_ADD, "198.18.0.0/30", link=LinkAddr(9, "utun4"))
    msg.seq = 2
    dl = h("14 12 0900 00 05 00 00") + b"utun4" + bytes(7)  # len 20, AF_LINK 18, index 9, type 0, nlen 5, alen 0, slen 0, data[12]
    expected = header(92 + 16 + 20 + 16, 1, 0x801, 0x7, 2, index=9) + h("10020000 c6120000 0000000000000000") + dl + h("10020000 fffffffc 0000000000000000")
    assert rs.encode(msg) == expected  # RTF_UP | RTF_STATIC, no RTF_GATEWAY: out of the interface


def test_host_route_has_no_netmask():
    msg = rs.route_message(rs.RTM_ADD, "203.0.113.7/32", "192.168.1.1")
    msg.seq = 3
    expected = header(92 + 32, 1, 0x807, 0x3, 3) + h("10020000 cb007107 0000000000000000 10020000 c0a80101 0000000000000000")
    assert rs.encode(msg) == expected  # RTF_HOST 0x4 added, RTA_NETMASK left out, as route(8) does


def test_delete_routes():
    msg = rs.route_message(rs.RTM_DELETE, "128.0.0.0/1", "198.18.0.1")
    msg.seq = 4
    expected = header(140, 2, 0x802, 0x7, 4) + h(
        "10020000 80000000 0000000000000000 10020000 c6120001 0000000000000000 10020000 80000000 0000000000000000"
    )
    assert rs.encode(msg) == expected  # RTM_DELETE: RTF_GATEWAY | RTF_STATIC, not RTF_UP
    msg6 = rs.route_message(rs.RTM_DELETE, "8000::/1", "fd00:18::1")
    msg6.seq = 5
    assert rs.encode(msg6)[:92] == header(176, 2, 0x802, 0x7, 5)


def test_get_route_messages():
    msg = rs.get_message("8.8.8.8")
    msg.seq = 9
    ifp = h("14 12 0000 00 00 00 00") + bytes(12)  # an empty sockaddr_dl asks for the interface
    expected = header(92 + 16 + 20, 4, 0x807, 0x11, 9) + h("10020000 08080808 0000000000000000") + ifp
    assert rs.encode(msg) == expected  # RTM_GET; RTF_UP|GATEWAY|HOST|STATIC; RTA_DST | RTA_IFP
    msg6 = rs.get_message("2001:db8::1")
    msg6.seq = 10
    assert rs.encode(msg6) == header(92 + 28 + 20, 4, 0x807, 0x11, 10) + h("1c1e0000 00000000 20010db8000000000000000000000001 00000000") + ifp


def test_roundup():
    assert [rs.roundup(n) for n in (0, 1, 4, 5, 16, 20, 28, 29)] == [4, 4, 4, 8, 16, 20, 28, 32]


def test_decode_a_get_reply_with_trimmed_netmask():
    # What the kernel answers to `route get 8.8.8.8`: DST, GATEWAY, NETMASK (trimmed to 5 bytes,
    # family 0, padded to 8), IFP (en0, index 4), IFA.
    body = (
        h("10020000 08080808 0000000000000000")  # DST
        + h("10020000 c0a80101 0000000000000000")  # GATEWAY 192.168.1.1
        + h("05000000 00000000")  # NETMASK: len 5, family 0, 0.0.0.0 (a default route)
        + h("14 12 0400 06 03 06 00") + b"en0" + bytes([1, 2, 3, 4, 5, 6]) + bytes(3)  # IFP: ether, name en0, 6-byte lladdr
        + h("10020000 c0a8010a 0000000000000000")  # IFA 192.168.1.10
    )
    raw = header(92 + len(body), 4, 0x843, 0x37, 9, index=4, pid=4242) + body
    msg = rs.decode(raw)
    assert (msg.type, msg.seq, msg.pid, msg.errno, msg.index) == (rs.RTM_GET, 9, 4242, 0, 4)
    assert msg.flags & rs.RTF_DONE
    assert msg.dst == ipaddress.ip_address("8.8.8.8")
    assert msg.gateway == ipaddress.ip_address("192.168.1.1")
    assert msg.netmask == ipaddress.ip_address("0.0.0.0")
    assert msg.addrs[rs.RTAX_IFP] == LinkAddr(4, "en0")
    assert msg.addrs[rs.RTAX_IFA] == ipaddress.ip_address("192.168.1.10")


def test_decode_error_replies():
    # The kernel echoes a failed request with rtm_errno set and no RTF_DONE.
    raw = header(140, 2, 0x802, 0x7, 4, pid=77, err=errno.ESRCH) + h(
        "10020000 80000000 0000000000000000 10020000 c6120001 0000000000000000 10020000 80000000 0000000000000000"
    )
    msg = rs.decode(raw)
    assert msg.errno == errno.ESRCH and not msg.flags & rs.RTF_DONE
    assert msg.dst == ipaddress.ip_address("128.0.0.0")
    eexist = rs.decode(header(92, 1, 0x803, 0, 5, err=errno.EEXIST))
    assert eexist.errno == errno.EEXIST and eexist.addrs == {}


def test_decode_rejects_broken_messages():
    with pytest.raises(ValueError, match="shorter"):
        rs.decode(bytes(40))
    with pytest.raises(ValueError, match="version"):
        rs.decode(b"\x5c\x00\x04" + bytes(89))
    with pytest.raises(ValueError, match="rtm_msglen"):
        rs.decode(header(200, 1, 0, 0, 1))
    with pytest.raises(ValueError, match="more sockaddrs"):
        rs.decode(header(92, 1, 0, 0x1, 1))


def test_encode_decode_round_trip():
    for cidr, gw in (("1.0.0.0/8", "198.18.0.1"), ("100::/8", "fd00::1"), ("10.0.0.0/24", None)):
        msg = rs.route_message(rs.RTM_ADD, cidr, gw, None if gw else LinkAddr(3, "utun2"))
        msg.seq = 11
        back = rs.decode(rs.encode(msg))
        assert back.dst == ipaddress.ip_network(cidr).network_address
        assert back.gateway == (ipaddress.ip_address(gw) if gw else LinkAddr(3, "utun2"))
        assert back.netmask == ipaddress.ip_network(cidr).netmask


# --- the exchange over a socketpair standing in for the PF_ROUTE socket ------------------


class FakeKernel:
    """Answers each routing message like XNU's route_output: the echo, with our pid, RTF_DONE or rtm_errno."""

    def __init__(self, sock, errors=None, noise=True):
        self.sock, self.errors, self.noise = sock, errors or {}, noise
        self.requests = []
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while True:
            try:
                raw = self.sock.recv(4096)
            except OSError:
                return
            if not raw:
                return
            msg = rs.decode(raw)
            self.requests.append(msg)
            if self.noise:  # another process's message, and a stale one of ours, first
                other = rs.RouteMessage(msg.type, rs.RTF_DONE, {}, seq=msg.seq, pid=os.getpid() + 1)
                stale = rs.RouteMessage(msg.type, rs.RTF_DONE, {}, seq=msg.seq - 1, pid=os.getpid())
                self.sock.send(rs.encode(other))
                self.sock.send(rs.encode(stale))
                self.sock.send(b"\x10\x00\x09" + bytes(20))  # junk of another version
            err = self.errors.get((msg.type, str(msg.dst)), 0)
            msg.pid, msg.errno = os.getpid(), err
            if not err:
                msg.flags |= rs.RTF_DONE
            self.sock.send(rs.encode(msg))


@pytest.fixture
def kernel_pair():
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("the stand-in routing socket is an AF_UNIX socketpair")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    yield ours, theirs
    ours.close()
    theirs.close()


def test_request_matches_the_reply_by_pid_and_seq(kernel_pair):
    ours, theirs = kernel_pair
    kernel = FakeKernel(theirs, {(rs.RTM_DELETE, "10.0.0.0"): errno.ESRCH})
    rsock = rs.RouteSocket(ours)
    reply = rsock.request(rs.route_message(rs.RTM_ADD, "10.0.0.0/8", "198.18.0.1"))
    assert reply.flags & rs.RTF_DONE and reply.seq == 1
    with pytest.raises(RouteError) as ei:
        rsock.request(rs.route_message(rs.RTM_DELETE, "10.0.0.0/8", "198.18.0.1"))
    assert ei.value.errno == errno.ESRCH
    assert [m.seq for m in kernel.requests] == [1, 2]


def test_request_times_out(kernel_pair):
    ours, _ = kernel_pair
    with pytest.raises(RouteError) as ei:
        rs.RouteSocket(ours, timeout=0.1).request(rs.get_message("1.1.1.1"))
    assert ei.value.errno == errno.ETIMEDOUT


def test_send_failure_is_a_route_error(kernel_pair):
    ours, theirs = kernel_pair
    theirs.close()
    with pytest.raises(RouteError) as ei:
        rs.RouteSocket(ours).request(rs.get_message("1.1.1.1"))
    assert ei.value.errno is not None


# --- the Router ------------------------------------------------------------------------


class FakeIoctl:
    def __init__(self):
        self.calls = []
        self.mtu, self.flags = 1500, 0x8050

    def __call__(self, fd, request, arg):
        self.calls.append((request, bytes(arg)))
        if request == di.SIOCGIFMTU:
            return di.ifreq_int("x", self.mtu)
        if request == di.SIOCGIFFLAGS:
            return di.ifreq_flags("x", self.flags)
        return arg


def test_darwin_router_records_and_undoes(kernel_pair):
    from ztun.system.router_darwin import DarwinRouter

    ours, theirs = kernel_pair
    kernel = FakeKernel(theirs, {(rs.RTM_ADD, "2.0.0.0"): errno.EEXIST}, noise=False)
    ioctl = FakeIoctl()
    router = DarwinRouter(route_socket=rs.RouteSocket(ours), ifconfig=di.Ifconfig(ioctl=ioctl, sockets={4: 4, 6: 6}))
    assert isinstance(router, Router)
    lo = socket.if_nameindex()[0][1]
    assert router.get_interface_index(lo) == socket.if_nametoindex(lo)
    with pytest.raises(RouteError) as ei:
        router.get_interface_index("no-such-if0")
    assert ei.value.errno == errno.ENXIO
    assert router.tun_attached(lo) and not router.tun_attached("no-such-if0")

    router.set_link("utun3", up=True, mtu=9000)
    assert router.add_address("utun3", "198.18.0.1/30") is True
    assert router.add_route("1.0.0.0/8", "198.18.0.1") is True
    assert router.add_route("2.0.0.0/7", "198.18.0.1") is False  # EEXIST: there already, not ours to remove
    assert router.add_route("198.18.0.0/30", iface=lo) is True
    assert router.delete_route("1.0.0.0/8", "198.18.0.1") is True  # forgotten: close() leaves it
    with pytest.raises(RouteError) as ei:
        router.add_route("10.0.0.0/8", "198.18.0.1", table=100)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(RouteError):
        router.add_route("10.0.0.0/8", kind="throw", iface=lo)
    with pytest.raises(RouteError):
        router.add_route("10.0.0.0/8")  # neither gateway nor interface

    n = len(kernel.requests)
    router.close()
    router.close()  # idempotent
    undone = kernel.requests[n:]
    assert [(m.type, str(m.dst)) for m in undone] == [(rs.RTM_DELETE, "198.18.0.0")]
    assert undone[0].gateway == LinkAddr(socket.if_nametoindex(lo), lo)
    reqs = [r for r, _ in ioctl.calls]
    assert reqs == [di.SIOCGIFMTU, di.SIOCSIFMTU, di.SIOCGIFFLAGS, di.SIOCSIFFLAGS, di.SIOCAIFADDR, di.SIOCDIFADDR, di.SIOCSIFFLAGS, di.SIOCSIFMTU]
    assert ioctl.calls[1][1][16:20] == (9000).to_bytes(4, "little")
    assert ioctl.calls[3][1][16:18] == (0x8051).to_bytes(2, "little")
    assert ioctl.calls[-2][1][16:18] == (0x8050).to_bytes(2, "little")  # flags restored
    assert ioctl.calls[-1][1][16:20] == (1500).to_bytes(4, "little")  # MTU restored


def test_darwin_router_elsewhere_is_a_clear_error():
    from ztun.system.router_darwin import DarwinRouter

    if sys.platform == "darwin":
        pytest.skip("on macOS this opens the real routing socket")
    with pytest.raises(ZtunError, match="needs macOS"):
        DarwinRouter()


# --- which prefixes go into the TUN ---------------------------------------------------------


def nets(*xs):
    return [ipaddress.ip_network(x) for x in xs]


def test_darwin_auto_route_ranges():
    opts = TunOptions(name="utun9", inet4="198.18.0.1/30", inet6="fd00:18::1/126", auto_route=True)
    got = route_ranges(opts, "darwin")
    assert got[:8] == sorted(nets("1.0.0.0/8", "2.0.0.0/7", "4.0.0.0/6", "8.0.0.0/5", "16.0.0.0/4", "32.0.0.0/3", "64.0.0.0/2", "128.0.0.0/1"))
    assert len(got) == 8 + 8  # the TUN's own prefixes fall inside the ranges (collapsed)
    assert ipaddress.ip_network("100::/8") in got and ipaddress.ip_network("8000::/1") in got
    assert not any(n.overlaps(ipaddress.ip_network("0.0.0.0/8")) for n in got if n.version == 4)


def test_windows_auto_route_ranges_exclude_the_proxy():
    opts = TunOptions(inet4="198.18.0.1/30", inet6=None, auto_route=True, exclude_routes=["10.0.0.0/8"])
    got = route_ranges(opts, "win32", exclude=["203.0.113.7/32"])
    space = ipaddress.ip_network("0.0.0.0/0")
    covered = sum(n.num_addresses for n in got)
    assert covered == space.num_addresses - 2**24 - 1
    assert not any(ipaddress.ip_address("203.0.113.7") in n or ipaddress.ip_address("10.1.2.3") in n for n in got)
    assert any(ipaddress.ip_address("203.0.113.6") in n for n in got)
    assert all(n.version == 4 for n in got)


def test_route_mode_and_subtract():
    opts = TunOptions(name="utun9", inet4="198.18.0.1/30", inet6=None, routes=["10.0.0.0/8", "192.0.2.0/24"], exclude_routes=["10.1.0.0/16"])
    got = route_ranges(opts, "darwin")
    assert ipaddress.ip_network("198.18.0.0/30") in got  # the point-to-point utun's own prefix
    assert ipaddress.ip_network("192.0.2.0/24") in got
    assert not any(n.overlaps(ipaddress.ip_network("10.1.0.0/16")) for n in got)
    assert sum(n.num_addresses for n in got if n.subnet_of(ipaddress.ip_network("10.0.0.0/8"))) == 2**24 - 2**16
    assert subtract(nets("0.0.0.0/0"), nets("0.0.0.0/0")) == []
    assert subtract(nets("10.0.0.0/8", "::/0"), nets("10.0.0.0/9", "8000::/1")) == nets("10.128.0.0/9", "::/1")
    assert route_ranges(TunOptions(inet6=None), "darwin") == []  # neither routes nor auto-route


# --- against the real kernel, where there is one (no root needed) ----------------------------


@pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS's PF_ROUTE socket and interfaces")
def test_real_route_get_and_mtu_on_macos():
    rsock = rs.RouteSocket()
    try:
        reply = rsock.request(rs.get_message("127.0.0.1"))
    finally:
        rsock.close()
    assert reply.errno == 0 and reply.flags & rs.RTF_DONE
    assert reply.addrs[rs.RTAX_IFP].name == "lo0"
    ifc = di.Ifconfig()
    try:
        assert ifc.get_mtu("lo0") > 0
        assert ifc.get_flags("lo0") & di.IFF_UP
    finally:
        ifc.close()


@pytest.mark.skipif(sys.platform != "darwin", reason="needs macOS's kernel control sockets")
def test_real_utun_control_id_on_macos():
    import fcntl

    from ztun.tun import utun_control as uc

    s = socket.socket(uc.PF_SYSTEM, socket.SOCK_DGRAM, uc.SYSPROTO_CONTROL)
    try:
        ctl_id = uc.CTL_INFO.unpack(fcntl.ioctl(s.fileno(), uc.CTLIOCGINFO, uc.ctl_info()))[0]
    finally:
        s.close()
    assert ctl_id != 0
