"""A ctypes binding of wintun.dll's C API (api/wintun.h of Wintun 0.14): adapters, sessions, ring I/O.

The library path is an argument, so the same binding loads the real wintun.dll on
Windows and, in tests, a stand-in shared library with the same C API. The real DLL
reports errors through GetLastError; the stand-in through errno.
"""

import ctypes
import errno as _errno
import os
import sys
from ctypes import POINTER, byref, c_uint32, c_uint64, c_void_p, c_wchar_p
from pathlib import Path

from .._fast.defs import HEADROOM
from ..errors import TunError
from ..system import winerror as we
from ..system.winerror import ERROR_HANDLE_EOF, ERROR_NO_MORE_ITEMS, ERROR_SUCCESS

DLL_NAME = "wintun.dll"
ENV_DLL = "ZTUN_WINTUN_DLL"  # a configured path to wintun.dll (or its folder)

MIN_RING_CAPACITY = 0x20000  # 128 KiB
MAX_RING_CAPACITY = 0x4000000  # 64 MiB
MAX_IP_PACKET_SIZE = 0xFFFF

WHERE_TO_GET = "get wintun.zip from https://www.wintun.net/ and copy bin\\<arch>\\wintun.dll"


def win_error(what: str, code: int) -> TunError:
    """A TunError for a Win32 error code: the nearest errno, and the code itself in .winerror."""
    return we.win_error(TunError, what, code)


def find_library(configured: str | os.PathLike | None = None) -> Path:
    """wintun.dll from the configured path, $ZTUN_WINTUN_DLL, the ztun package folder or the executable's folder."""
    import ztun

    candidates = []
    for given in (configured, os.environ.get(ENV_DLL)):
        if given:
            p = Path(given)
            candidates.append(p / DLL_NAME if p.is_dir() else p)
    candidates += [Path(ztun.__file__).resolve().parent / DLL_NAME, Path(sys.executable).resolve().parent / DLL_NAME]
    for p in candidates:
        if p.is_file():
            return p
    looked = ", ".join(str(p) for p in candidates)
    raise TunError(f"no {DLL_NAME} found (looked at {looked}); {WHERE_TO_GET} next to the executable or into the ztun package folder, or set {ENV_DLL}", _errno.ENOENT)


class GUID(ctypes.Structure):
    _fields_ = [("Data1", c_uint32), ("Data2", ctypes.c_uint16), ("Data3", ctypes.c_uint16), ("Data4", ctypes.c_uint8 * 8)]

    @classmethod
    def from_bytes(cls, b: bytes) -> "GUID":
        g = cls()
        ctypes.memmove(byref(g), b, 16)
        return g


class Wintun:
    """wintun.dll (or a stand-in with its C API) loaded from path."""

    def __init__(self, path):
        path = str(path)
        try:
            if sys.platform == "win32":
                self._lib = ctypes.WinDLL(path, use_last_error=True)
                self.last_error = ctypes.get_last_error
            else:
                self._lib = ctypes.CDLL(path, use_errno=True)
                self.last_error = ctypes.get_errno
        except OSError as e:
            raise TunError(f"cannot load {path}: {e}", getattr(e, "errno", None) or _errno.ENOENT) from None
        self.path = path
        lib = self._lib
        proto = {
            "WintunCreateAdapter": ((c_wchar_p, c_wchar_p, POINTER(GUID)), c_void_p),
            "WintunOpenAdapter": ((c_wchar_p,), c_void_p),
            "WintunCloseAdapter": ((c_void_p,), None),
            "WintunGetAdapterLUID": ((c_void_p, POINTER(c_uint64)), None),
            "WintunGetRunningDriverVersion": ((), c_uint32),
            "WintunStartSession": ((c_void_p, c_uint32), c_void_p),
            "WintunEndSession": ((c_void_p,), None),
            "WintunGetReadWaitEvent": ((c_void_p,), c_void_p),
            "WintunReceivePacket": ((c_void_p, POINTER(c_uint32)), c_void_p),
            "WintunReleaseReceivePacket": ((c_void_p, c_void_p), None),
            "WintunAllocateSendPacket": ((c_void_p, c_uint32), c_void_p),
            "WintunSendPacket": ((c_void_p, c_void_p), None),
        }
        for name, (args, res) in proto.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                raise TunError(f"{path} lacks {name}: not a Wintun 0.14 library", _errno.ENOENT) from None
            fn.argtypes = args
            fn.restype = res

    def create_adapter(self, name: str, tunnel_type: str = "ztun", guid: bytes | None = None) -> "Adapter":
        """A new adapter; it is removed again when closed."""
        g = byref(GUID.from_bytes(guid)) if guid is not None else None
        h = self._lib.WintunCreateAdapter(name, tunnel_type, g)
        if not h:
            raise win_error(f"WintunCreateAdapter {name!r}", self.last_error())
        return Adapter(self, h, name, created=True)

    def open_adapter(self, name: str) -> "Adapter":
        """An existing adapter; closing it leaves it in place."""
        h = self._lib.WintunOpenAdapter(name)
        if not h:
            raise win_error(f"WintunOpenAdapter {name!r}", self.last_error())
        return Adapter(self, h, name, created=False)

    def driver_version(self) -> int:
        """The running driver's version ((major << 16) | minor), or 0 if none is loaded."""
        return self._lib.WintunGetRunningDriverVersion()


class Adapter:
    def __init__(self, wintun: Wintun, handle: int, name: str, created: bool):
        self._w = wintun
        self.handle = handle
        self.name = name
        self.created = created

    @property
    def luid(self) -> int:
        luid = c_uint64()
        self._w._lib.WintunGetAdapterLUID(self.handle, byref(luid))
        return luid.value

    def start_session(self, capacity: int = 0x400000) -> "Session":
        """A session with send and receive rings of capacity bytes (a power of two, 128 KiB..64 MiB)."""
        if not MIN_RING_CAPACITY <= capacity <= MAX_RING_CAPACITY or capacity & (capacity - 1):
            raise TunError(f"ring capacity must be a power of two in {MIN_RING_CAPACITY:#x}..{MAX_RING_CAPACITY:#x}, got {capacity:#x}", _errno.EINVAL)
        h = self._w._lib.WintunStartSession(self.handle, capacity)
        if not h:
            raise win_error(f"WintunStartSession on {self.name!r}", self._w.last_error())
        return Session(self._w, h, capacity)

    def close(self) -> None:
        """Release the adapter (an adapter this handle created is removed). Idempotent."""
        h, self.handle = self.handle, None
        if h:
            self._w._lib.WintunCloseAdapter(h)


class Session:
    """A Wintun session: packets in from the receive ring, out through the send ring."""

    def __init__(self, wintun: Wintun, handle: int, capacity: int):
        lib = wintun._lib
        self._w = wintun
        self.handle = handle
        self.capacity = capacity
        self.read_wait_event = lib.WintunGetReadWaitEvent(handle)
        self._recv = lib.WintunReceivePacket
        self._release = lib.WintunReleaseReceivePacket
        self._alloc = lib.WintunAllocateSendPacket
        self._send = lib.WintunSendPacket
        self._size = c_uint32()
        # The Win32 code that ended the last receive_batch (ERROR_NO_MORE_ITEMS: the ring is empty).
        self.last_status = ERROR_SUCCESS

    def _check(self):
        if not self.handle:
            raise TunError("the Wintun session has ended", _errno.EPIPE)

    def receive_batch(self, batch, drops=None) -> int:
        """Move packets from the receive ring into batch slots 0.. until it is full or the ring is empty; return the count.

        Each packet is copied once, into data[i, HEADROOM:]. One too big for a slot is
        released unread and counted in drops[0]. The end of the session or a corrupt ring
        raises TunError if no packet came first (else the next call raises it).
        """
        self._check()
        data, lengths = batch.data, batch.lengths
        base, stride = data.ctypes.data + HEADROOM, data.strides[0]
        room = data.shape[1] - HEADROOM
        h, size, psize = self.handle, self._size, byref(self._size)
        recv, release, memmove = self._recv, self._release, ctypes.memmove
        i, slots, status = 0, data.shape[0], ERROR_SUCCESS
        while i < slots:
            p = recv(h, psize)
            if not p:
                status = self._w.last_error()
                break
            n = size.value
            if n > room:
                if drops is not None:
                    drops[0] += 1
                release(h, p)
                continue
            memmove(base + i * stride, p, n)
            release(h, p)
            lengths[i] = n
            i += 1
        batch.count = i
        self.last_status = status
        if i == 0 and status not in (ERROR_SUCCESS, ERROR_NO_MORE_ITEMS):
            what = "the Wintun session has ended" if status == ERROR_HANDLE_EOF else "WintunReceivePacket"
            raise win_error(what, status)
        return i

    def receive(self) -> bytes | None:
        """One packet from the receive ring, or None if it is empty."""
        self._check()
        p = self._recv(self.handle, byref(self._size))
        if not p:
            code = self._w.last_error()
            if code == ERROR_NO_MORE_ITEMS:
                return None
            raise win_error("WintunReceivePacket", code)
        try:
            return ctypes.string_at(p, self._size.value)
        finally:
            self._release(self.handle, p)

    def send_batch(self, batch, n: int, errnos, only_verdict: int = -1) -> int:
        """Put slots 0..n-1 into the send ring; return how many went in.

        errnos[i] gets 0 for a slot sent or skipped, EINVAL for a bad length, and the errno
        of the Win32 code otherwise (ENOBUFS: the ring is full; EPIPE: the session ended).
        """
        self._check()
        if not 0 <= n <= batch.slots:
            raise ValueError(f"n {n} outside 0..{batch.slots}")
        data, lengths, verdicts = batch.data, batch.lengths, batch.verdicts
        base, stride = data.ctypes.data + HEADROOM, data.strides[0]
        room = min(data.shape[1] - HEADROOM, MAX_IP_PACKET_SIZE)
        h, alloc, send, memmove = self.handle, self._alloc, self._send, ctypes.memmove
        written = 0
        for i in range(n):
            errnos[i] = 0
            if only_verdict >= 0 and verdicts[i] != only_verdict:
                continue
            length = int(lengths[i])
            if not 0 < length <= room:
                errnos[i] = _errno.EINVAL
                continue
            p = alloc(h, length)
            if not p:
                errnos[i] = we.to_errno(self._w.last_error())
                continue
            memmove(p, base + i * stride, length)
            send(h, p)
            written += 1
        return written

    def send(self, packet) -> int:
        """Put one packet into the send ring; return its length."""
        self._check()
        view = memoryview(packet)
        if not 0 < len(view) <= MAX_IP_PACKET_SIZE:
            raise TunError(f"a Wintun packet is 1..{MAX_IP_PACKET_SIZE} bytes, got {len(view)}", _errno.EINVAL)
        p = self._alloc(self.handle, len(view))
        if not p:
            raise win_error("WintunAllocateSendPacket", self._w.last_error())
        ctypes.memmove(p, bytes(view), len(view))
        self._send(self.handle, p)
        return len(view)

    def end(self) -> None:
        """End the session. Idempotent."""
        h, self.handle = self.handle, None
        if h:
            self._w._lib.WintunEndSession(h)
