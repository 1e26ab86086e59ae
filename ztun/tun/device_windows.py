"""The Windows TUN device: a Wintun adapter and session; a helper thread turns Wintun's read-wait event into a readable socket.

Importable everywhere; open() needs Windows. Tests drive the same class over a stand-in
wintun library and its event functions.
"""

import errno
import hashlib
import logging
import socket
import sys
import threading

import numpy as np

from ..errors import TunError
from ..system import winerror as we
from . import wintun as wt
from .options import TunOptions

log = logging.getLogger("ztun.tun.device")

DEFAULT_RING_CAPACITY = 0x400000  # 4 MiB per ring, as wireguard-go's default
WAIT_OBJECT_0 = 0
WAIT_TIMEOUT = 0x102
_SLICE_MS = 200  # blocking waits wake this often to notice close()


class Kernel32Events:
    """WaitForSingleObject and SetEvent from kernel32 (Windows)."""

    def __init__(self):
        import ctypes

        k32 = ctypes.WinDLL("kernel32", use_last_error=True)
        self._wait = k32.WaitForSingleObject
        self._wait.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        self._wait.restype = ctypes.c_uint32
        self._set = k32.SetEvent
        self._set.argtypes = (ctypes.c_void_p,)
        self._set.restype = ctypes.c_int

    def wait(self, handle, ms: int) -> bool:
        """True once handle is signaled, False after ms milliseconds."""
        return self._wait(handle, ms) == WAIT_OBJECT_0

    def set(self, handle) -> None:
        self._set(handle)


class ReadWaker:
    """Makes the readiness loop see Wintun's receive ring: a socket that is readable while the ring may hold packets.

    The socket starts readable. The thread waits on the read-wait event only after the
    loop found the ring empty (rearm); until then the wake byte stays unread, so the socket
    stays readable and the loop keeps reading. The event (the send ring's TailMoved in
    Wintun's api/session.c) is auto-reset and set when the driver adds packets, so an
    arrival between the empty read and the thread's wait leaves it set: nothing is lost.
    """

    def __init__(self, event_handle, events):
        self._handle = event_handle
        self._events = events
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._armed = threading.Event()  # set by rearm(): the ring was empty, wait for the event
        self._stop = False
        self._w.send(b"\1")  # packets may be queued before the first read: look once
        self._thread = threading.Thread(target=self._run, name="ztun-wintun-waker", daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            self._armed.wait()
            self._armed.clear()
            while not self._stop and not self._events.wait(self._handle, _SLICE_MS):
                pass
            if self._stop:
                return
            try:
                self._w.send(b"\1")
            except (BlockingIOError, OSError):
                pass  # already readable, or closing

    def fileno(self) -> int:
        return self._r.fileno()

    def rearm(self) -> None:
        """The ring was found empty: clear the readable state and wait for the event again."""
        try:
            while self._r.recv(64):
                pass
        except (BlockingIOError, OSError):
            pass
        self._armed.set()

    def close(self) -> None:
        self._stop = True
        self._armed.set()
        self._events.set(self._handle)
        self._thread.join(timeout=5)
        self._r.close()
        self._w.close()


def _adapter_guid(name: str) -> bytes:
    # A stable GUID per name keeps Windows from creating a new network profile each run (sing-tun does the same).
    return hashlib.md5(b"ztun-wintun" + name.encode(), usedforsecurity=False).digest()


class WintunDevice:
    """A Wintun adapter with one session. fileno() is a socket the loop waits on (see ReadWaker).

    Wintun moves plain IP packets: no virtio header, no offload, no NAPI; and there is no
    fd to adopt from another process.
    """

    vnet_hdr = False
    offload = 0
    napi = False
    raw_io = False
    adopted = False

    def __init__(self, library: wt.Wintun, adapter: wt.Adapter, session: wt.Session, mtu: int, *, events=None, if_index: int = 0):
        self._lib = library
        self._adapter = adapter
        self._session = session
        self.name = adapter.name
        self.luid = adapter.luid
        self.if_index = if_index
        self.mtu = mtu
        self.created = adapter.created
        self._events = events
        self._waker = None
        self._nonblocking = False
        self._drops = np.zeros(1, dtype=np.int64)
        self._errnos = np.zeros(0, dtype=np.int32)
        self._last_n = 0
        self._closed = False

    @classmethod
    def open(cls, options: TunOptions, *, library: wt.Wintun | None = None, dll_path=None, events=None, ring_capacity: int = DEFAULT_RING_CAPACITY) -> "WintunDevice":
        """Create the adapter options.name (or open it if it exists) and start a session.

        library (a loaded Wintun) replaces loading wintun.dll from dll_path, $ZTUN_WINTUN_DLL,
        the ztun package folder or the executable's folder; only then can this run off Windows.
        """
        if library is None and sys.platform != "win32":
            raise TunError(f"a Wintun device needs Windows; this is {sys.platform} (use ztun.tun.device.open_tun)")
        for field in ("multi_queue", "offload", "file_descriptor"):
            if getattr(options, field) not in (None, False):
                raise TunError(f"{field} is not available with Wintun on Windows")
        if library is None:
            library = wt.Wintun(wt.find_library(dll_path))
        if events is None and sys.platform == "win32":
            events = Kernel32Events()
        try:
            adapter = library.open_adapter(options.name)
            log.info("opened existing Wintun adapter %s", options.name)
        except TunError as e:
            if getattr(e, "winerror", None) != we.ERROR_FILE_NOT_FOUND:
                raise
            adapter = library.create_adapter(options.name, "ztun", _adapter_guid(options.name))
            log.info("created Wintun adapter %s", options.name)
        session = None
        try:
            session = adapter.start_session(ring_capacity)
            if_index = 0
            if sys.platform == "win32":
                from ..system.iphlpapi import Iphlpapi

                if_index = Iphlpapi().luid_to_index(adapter.luid)
        except BaseException:
            if session is not None:
                session.end()
            adapter.close()
            raise
        return cls(library, adapter, session, options.mtu, events=events, if_index=if_index)

    def _live(self) -> wt.Session:
        if self._closed:
            raise TunError(f"TUN device {self.name} is closed", errno.EBADF)
        return self._session

    def fileno(self) -> int:
        """A socket that is readable while the receive ring may hold packets (started on first use)."""
        session = self._live()
        if self._waker is None:
            if self._events is None:
                raise TunError("no event functions to wait on Wintun's read event with", errno.EOPNOTSUPP)
            self._waker = ReadWaker(session.read_wait_event, self._events)
        return self._waker.fileno()

    def _wait_readable(self, session) -> None:
        if self._events is None:
            raise TunError("no event functions to wait on Wintun's read event with", errno.EOPNOTSUPP)
        while not self._closed and not self._events.wait(session.read_wait_event, _SLICE_MS):
            pass

    def read_batch(self, batch) -> int:
        """Read packets into batch's slots until it is full or the ring is empty; return batch.count.

        Blocking mode waits for the first packet. Packets larger than a slot are dropped
        (counted in drops).
        """
        session = self._live()
        while True:
            n = session.receive_batch(batch, self._drops)
            empty = session.last_status == we.ERROR_NO_MORE_ITEMS
            if empty and self._waker is not None:
                self._waker.rearm()
            if n or self._nonblocking or not empty:
                return n
            self._wait_readable(session)
            self._live()

    def read(self, buf) -> int:
        """Read one packet into buf; return its length. BlockingIOError if none is queued (non-blocking)."""
        while True:
            session = self._live()
            packet = session.receive()
            if packet is not None:
                n = min(len(packet), len(buf))
                memoryview(buf)[:n] = packet[:n]
                return n
            if self._waker is not None:
                self._waker.rearm()
            if self._nonblocking:
                raise BlockingIOError(errno.EAGAIN, f"no packet queued on {self.name}")
            self._wait_readable(session)

    def write(self, buf) -> int:
        return self._live().send(buf)

    def write_batch(self, batch, n: int, *, only_verdict: int | None = None) -> int:
        """Write slots 0..n-1 (only those whose verdict is only_verdict if given); return how many were written.

        A full send ring fails a slot with ENOBUFS (the packet is dropped, as a full NIC
        queue would); the others go on.
        """
        session = self._live()
        if self._errnos.shape[0] < batch.slots:
            self._errnos = np.zeros(batch.slots, dtype=np.int32)
        self._last_n = n
        return session.send_batch(batch, n, self._errnos, -1 if only_verdict is None else only_verdict)

    def failed_slots(self) -> list:
        errs = self._errnos[: self._last_n]
        return [(int(i), int(errs[i])) for i in np.flatnonzero(errs)]

    @property
    def drops(self) -> dict:
        return {"too_big": int(self._drops[0])}

    def set_nonblocking(self, nonblocking: bool) -> None:
        self._live()
        self._nonblocking = nonblocking

    def close(self) -> None:
        """Stop the waker, end the session and release the adapter (one ztun created is removed). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._waker is not None:
            self._waker.close()
        self._session.end()
        self._adapter.close()
        log.info("closed Wintun device %s", self.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"<WintunDevice {self.name} luid={self.luid:#x} index={self.if_index} mtu={self.mtu}>"
