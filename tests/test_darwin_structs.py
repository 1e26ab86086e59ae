"""Byte layouts of the macOS utun and interface structs, and the ioctl request numbers derived from their sizes.

Expected sizes: XNU bsd/sys/kern_control.h (ctl_info 100, sockaddr_ctl 32), bsd/net/if.h
(ifreq 32, ifaliasreq 64), bsd/netinet6/in6_var.h (in6_aliasreq 128 on 64-bit). Expected
request numbers: golang.org/x/sys/unix zerrors_darwin_arm64.go (SIOC*), WireGuard's
WireGuardKitC.h (CTLIOCGINFO 0xc0644e03) and sing-tun's tun_darwin.go (SIOCAIFADDR_IN6
2155899162 = 0x8080691a).
"""

import ipaddress
import struct

import pytest

from ztun.system import darwin_ioctl as di
from ztun.system import darwin_sockaddr as sa
from ztun.tun import utun_control as uc


def test_ioctl_numbers():
    assert uc.CTLIOCGINFO == 0xC0644E03
    assert di.SIOCSIFFLAGS == 0x80206910
    assert di.SIOCGIFFLAGS == 0xC0206911
    assert di.SIOCDIFADDR == 0x80206919
    assert di.SIOCAIFADDR == 0x8040691A
    assert di.SIOCGIFMTU == 0xC0206933
    assert di.SIOCSIFMTU == 0x80206934
    assert di.SIOCAIFADDR_IN6 == 0x8080691A == 2155899162
    assert di.SIOCDIFADDR_IN6 == 0x81206919  # as macOS tools use it; not in x/sys/unix


def test_ctl_info():
    raw = uc.ctl_info()
    assert len(raw) == 100
    assert raw[:4] == b"\0\0\0\0"  # ctl_id, filled in by the kernel
    assert raw[4:30] == b"com.apple.net.utun_control" and raw[30:] == bytes(70)
    assert uc.CTL_INFO.unpack(struct.pack("<I", 0x1234) + raw[4:])[0] == 0x1234
    with pytest.raises(ValueError):
        uc.ctl_info("x" * 96)


def test_sockaddr_ctl():
    raw = uc.sockaddr_ctl(0xABCD, 8)
    # u_char sc_len 32, sc_family AF_SYSTEM 32; u_int16 ss_sysaddr AF_SYS_CONTROL 2; sc_id; sc_unit; 5 reserved
    assert raw == bytes([32, 32, 2, 0]) + bytes([0xCD, 0xAB, 0, 0]) + bytes([8, 0, 0, 0]) + bytes(20)


def test_unit_for_name():
    assert uc.unit_for_name("utun0") == 1
    assert uc.unit_for_name("utun12") == 13
    for other in ("ztun0", "utun", "utunx", "", None, "eth0"):
        assert uc.unit_for_name(other) == 0  # the kernel picks the next free utun


def test_sockaddrs():
    assert sa.sockaddr_in("198.18.0.1") == bytes([16, 2, 0, 0, 198, 18, 0, 1]) + bytes(8)
    six = sa.sockaddr_in6("fd00::1")
    assert len(six) == 28 and six[:8] == bytes([28, 30, 0, 0, 0, 0, 0, 0])
    assert six[8:24] == ipaddress.IPv6Address("fd00::1").packed and six[24:] == bytes(4)
    dl = sa.sockaddr_dl(sa.LinkAddr(0x0107, "utun3"))
    assert dl == bytes([20, 18, 0x07, 0x01, 0, 5, 0, 0]) + b"utun3" + bytes(7)
    for raw, want in ((sa.sockaddr_in("10.1.2.3"), ipaddress.ip_address("10.1.2.3")), (six, ipaddress.ip_address("fd00::1")), (dl, sa.LinkAddr(0x107, "utun3"))):
        assert sa.decode(raw) == want


def test_ifreq():
    mtu = di.ifreq_int("utun3", 9000)
    assert len(mtu) == 32 and mtu[:16] == b"utun3" + bytes(11) and mtu[16:20] == (9000).to_bytes(4, "little") and mtu[20:] == bytes(12)
    flags = di.ifreq_flags("utun3", 0x8051)
    assert len(flags) == 32 and flags[16:18] == bytes([0x51, 0x80])
    addr = di.ifreq_addr("utun3", "198.18.0.1")
    assert len(addr) == 32 and addr[16:] == sa.sockaddr_in("198.18.0.1")
    with pytest.raises(ValueError):
        di.ifreq_int("a-name-too-long!", 1)


def test_ifaliasreq():
    raw = di.ifaliasreq("utun3", ipaddress.ip_interface("198.18.0.1/30"))
    assert len(raw) == di.SIZEOF_IFALIASREQ == 64
    assert raw[16:32] == sa.sockaddr_in("198.18.0.1")  # ifra_addr
    assert raw[32:48] == sa.sockaddr_in("198.18.0.1")  # ifra_dstaddr: the utun's own address, as sing-tun sets it
    assert raw[48:64] == sa.sockaddr_in("255.255.255.252")  # ifra_mask


def test_in6_aliasreq():
    raw = di.in6_aliasreq("utun3", ipaddress.ip_interface("fd00:18::1/126"))
    assert len(raw) == di.SIZEOF_IN6_ALIASREQ == 128
    assert raw[16:44] == sa.sockaddr_in6("fd00:18::1")  # ifra_addr
    assert raw[44:72] == bytes(28)  # ifra_dstaddr: none for a prefix shorter than /128
    assert raw[72:100] == sa.sockaddr_in6("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc")  # ifra_prefixmask
    assert struct.unpack_from("<i", raw, 100)[0] == di.IN6_IFF_NODAD | di.IN6_IFF_SECURED  # ifra_flags
    # struct in6_addrlifetime at 104: time_t expire, preferred (0), u_int32 vltime, pltime (infinite)
    assert struct.unpack_from("<qqII", raw, 104) == (0, 0, 0xFFFFFFFF, 0xFFFFFFFF)
    host = di.in6_aliasreq("utun3", ipaddress.ip_interface("fd00:18::1/128"))
    assert host[44:72] == sa.sockaddr_in6("fd00:18::2")


def test_in6_ifreq():
    raw = di.in6_ifreq_addr("utun3", "fd00:18::1")
    assert len(raw) == 288 and raw[16:44] == sa.sockaddr_in6("fd00:18::1") and raw[44:] == bytes(244)


def test_ifconfig_calls_use_the_right_sockets_and_requests():
    calls = []

    def ioctl(fd, request, arg):
        calls.append((fd, request, bytes(arg)))
        if request == di.SIOCGIFMTU:
            return di.ifreq_int("utun3", 1500)
        if request == di.SIOCGIFFLAGS:
            return di.ifreq_flags("utun3", 0x8050)
        return arg

    ifc = di.Ifconfig(ioctl=ioctl, sockets={4: 40, 6: 60})
    assert ifc.get_mtu("utun3") == 1500
    assert ifc.get_flags("utun3") == 0x8050
    ifc.set_flags("utun3", 0x8051)  # a flag in the top bit of the short survives
    ifc.add_address("utun3", "198.18.0.1/30")
    ifc.add_address("utun3", "fd00:18::1/126")
    ifc.delete_address("utun3", "fd00:18::1/126")
    assert [(fd, req) for fd, req, _ in calls] == [
        (40, di.SIOCGIFMTU),
        (40, di.SIOCGIFFLAGS),
        (40, di.SIOCSIFFLAGS),
        (40, di.SIOCAIFADDR),
        (60, di.SIOCAIFADDR_IN6),
        (60, di.SIOCDIFADDR_IN6),
    ]
    assert calls[2][2][16:18] == bytes([0x51, 0x80])
    assert len(calls[4][2]) == 128 and len(calls[5][2]) == 288
