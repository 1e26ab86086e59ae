"""Opening a macOS utun: a PF_SYSTEM control socket connected to com.apple.net.utun_control.

Structs and values from XNU bsd/sys/kern_control.h (struct ctl_info: u_int32_t ctl_id,
char ctl_name[96], 100 bytes; struct sockaddr_ctl: u_char sc_len, sc_family; u_int16_t
ss_sysaddr; u_int32_t sc_id, sc_unit, sc_reserved[5], 32 bytes; CTLIOCGINFO =
_IOWR('N', 3, struct ctl_info)), bsd/sys/sys_domain.h and bsd/net/if_utun.h.
"""

import ctypes
import errno as _errno
import re
import socket
import struct

from ..errors import TunError
from ..system.darwin_ioctl import IOC_INOUT, ioc

PF_SYSTEM = AF_SYSTEM = 32
SYSPROTO_CONTROL = 2
AF_SYS_CONTROL = 2  # ss_sysaddr of a kernel control address
UTUN_CONTROL_NAME = "com.apple.net.utun_control"
UTUN_OPT_IFNAME = 2
MAX_KCTL_NAME = 96

CTL_INFO = struct.Struct("<I96s")
SOCKADDR_CTL = struct.Struct("<BBHII20x")
CTLIOCGINFO = ioc(IOC_INOUT, "N", 3, CTL_INFO.size)

_UTUN_NAME = re.compile(r"utun(\d+)")


def ctl_info(name: str = UTUN_CONTROL_NAME, ctl_id: int = 0) -> bytes:
    b = name.encode()
    if len(b) >= MAX_KCTL_NAME:
        raise ValueError(f"kernel control name longer than {MAX_KCTL_NAME - 1} bytes: {name!r}")
    return CTL_INFO.pack(ctl_id, b)


def sockaddr_ctl(ctl_id: int, unit: int) -> bytes:
    return SOCKADDR_CTL.pack(SOCKADDR_CTL.size, AF_SYSTEM, AF_SYS_CONTROL, ctl_id, unit)


def unit_for_name(name: str | None) -> int:
    """The sc_unit that asks for utunN (N+1), or 0 (the kernel picks the next free utun) for any other name."""
    m = _UTUN_NAME.fullmatch(name or "")
    return int(m.group(1)) + 1 if m else 0


def _connect(fd: int, addr: bytes) -> None:
    # Python's socket.connect takes only (id, unit) tuples for PF_SYSTEM; libc's takes the struct as built here.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.connect.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    libc.connect.restype = ctypes.c_int
    if libc.connect(fd, addr, len(addr)) != 0:
        raise OSError(ctypes.get_errno(), "connect")


def interface_name(sock: socket.socket) -> str:
    """The utun's interface name (UTUN_OPT_IFNAME)."""
    raw = sock.getsockopt(SYSPROTO_CONTROL, UTUN_OPT_IFNAME, 16)
    return raw.split(b"\0", 1)[0].decode()


def open_utun(unit: int) -> tuple[int, str]:
    """Create utun unit-1 (or the next free one for unit 0); return its fd and interface name."""
    import fcntl  # POSIX only: this module also imports on Windows

    try:
        sock = socket.socket(PF_SYSTEM, socket.SOCK_DGRAM, SYSPROTO_CONTROL)
    except OSError as e:
        raise TunError("cannot open a PF_SYSTEM control socket", e.errno) from None
    try:
        try:
            info = fcntl.ioctl(sock.fileno(), CTLIOCGINFO, ctl_info())
        except OSError as e:
            raise TunError(f"CTLIOCGINFO {UTUN_CONTROL_NAME}", e.errno) from None
        ctl_id = CTL_INFO.unpack(info)[0]
        try:
            _connect(sock.fileno(), sockaddr_ctl(ctl_id, unit))
        except OSError as e:
            what = f"utun{unit - 1}" if unit else "a new utun"
            if e.errno == _errno.EBUSY:
                raise TunError(f"{what} is in use by another process", e.errno) from None
            if e.errno == _errno.EPERM:
                raise TunError(f"cannot create {what} (needs root)", e.errno) from None
            raise TunError(f"connecting to {UTUN_CONTROL_NAME} for {what}", e.errno) from None
        try:
            name = interface_name(sock)
        except OSError as e:
            raise TunError("getsockopt UTUN_OPT_IFNAME", e.errno) from None
    except BaseException:
        sock.close()
        raise
    return sock.detach(), name
