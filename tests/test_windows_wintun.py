"""The Wintun binding and the Windows device, run against a stand-in library built from tests/wintun_stub/wintun_stub.c.

The stand-in has wintun.dll's C API (adapters, sessions, rings of packets, the read-wait
event) and is loaded through the very same ztun.tun.wintun binding; its WintunStub*
functions play the driver's side.
"""

import ctypes
import ctypes.util
import errno
import pathlib
import random
import selectors
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from ztun._fast import PacketBatch
from ztun.errors import TunError, ZtunError
from ztun.system import winerror as we
from ztun.tun import wintun as wt
from ztun.tun.device import TunDevice
from ztun.tun.options import TunOptions

STUB_C = pathlib.Path(__file__).parent / "wintun_stub" / "wintun_stub.c"
CAP = wt.MIN_RING_CAPACITY


@pytest.fixture(scope="session")
def stub_path(tmp_path_factory):
    if sys.platform == "win32":
        pytest.skip("the stand-in wintun is built for POSIX hosts; Windows has the real wintun.dll")
    cc = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) to build the stand-in wintun library")
    out = tmp_path_factory.mktemp("wintun") / "libwintun_stub.so"
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(out), str(STUB_C), "-lpthread"], capture_output=True, text=True)
    if proc.returncode:
        pytest.fail(f"building the stand-in wintun failed:\n{proc.stderr}")
    return out


class Stub:
    """The driver's side of the stand-in: inject received packets, take sent ones, end sessions, the event."""

    def __init__(self, path):
        lib = ctypes.CDLL(str(path))
        self.lib = lib
        lib.WintunStubInject.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32)
        lib.WintunStubInject.restype = ctypes.c_uint32
        lib.WintunStubTake.argtypes = (ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32)
        lib.WintunStubTake.restype = ctypes.c_int64
        lib.WintunStubUsed.argtypes = (ctypes.c_void_p, ctypes.c_int)
        lib.WintunStubUsed.restype = ctypes.c_uint32
        lib.WintunStubTerminate.argtypes = (ctypes.c_void_p,)
        lib.WintunStubWaitEvent.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
        lib.WintunStubWaitEvent.restype = ctypes.c_uint32
        lib.WintunStubSetEvent.argtypes = (ctypes.c_void_p,)

    def inject(self, session, data: bytes) -> int:
        return self.lib.WintunStubInject(session.handle, data, len(data))

    def take(self, session):
        buf = ctypes.create_string_buffer(70000)
        n = self.lib.WintunStubTake(session.handle, buf, len(buf))
        return None if n < 0 else buf.raw[:n]

    def used(self, session, send_ring: bool) -> int:
        return self.lib.WintunStubUsed(session.handle, int(send_ring))

    def terminate(self, session):
        self.lib.WintunStubTerminate(session.handle)


class StubEvents:
    """WaitForSingleObject / SetEvent on the stand-in's auto-reset read-wait event."""

    def __init__(self, stub: Stub):
        self.lib = stub.lib

    def wait(self, handle, ms):
        return self.lib.WintunStubWaitEvent(handle, ms) == 0

    def set(self, handle):
        self.lib.WintunStubSetEvent(handle)


@pytest.fixture
def lib(stub_path):
    return wt.Wintun(stub_path)


@pytest.fixture
def stub(stub_path):
    return Stub(stub_path)


@pytest.fixture
def session(lib):
    adapter = lib.create_adapter("wt-test")
    s = adapter.start_session(CAP)
    yield s
    s.end()
    adapter.close()


def packets(seed, count, lo=20, hi=1500):
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        n = rng.randrange(lo, hi)
        out.append(bytes([rng.choice((0x45, 0x60))]) + bytes(rng.getrandbits(8) for _ in range(n - 1)))
    return out


# --- the binding -----------------------------------------------------------------------


def test_loading(stub_path, tmp_path):
    assert wt.Wintun(stub_path).driver_version() == 14
    with pytest.raises(TunError, match="cannot load"):
        wt.Wintun(tmp_path / "missing.so")
    libm = ctypes.util.find_library("m")
    if libm:
        with pytest.raises(TunError, match="lacks WintunCreateAdapter"):
            wt.Wintun(libm)


def test_find_library(tmp_path, monkeypatch):
    dll = tmp_path / "wintun.dll"
    dll.write_bytes(b"")
    assert wt.find_library(dll) == dll
    assert wt.find_library(tmp_path) == dll  # a folder holding it
    monkeypatch.setenv(wt.ENV_DLL, str(tmp_path))
    assert wt.find_library() == dll
    monkeypatch.delenv(wt.ENV_DLL)
    if not (pathlib.Path(sys.executable).parent / "wintun.dll").exists():
        with pytest.raises(TunError, match="wintun.net") as ei:
            wt.find_library(tmp_path / "elsewhere")
        assert ei.value.errno == errno.ENOENT


def test_adapters(lib):
    a = lib.create_adapter("wt-a", "ztun", bytes(range(16)))
    try:
        assert a.created and a.luid != 0
        b = lib.open_adapter("wt-a")
        assert not b.created and b.luid == a.luid
        b.close()
        with pytest.raises(TunError) as ei:
            lib.open_adapter("wt-none")
        assert ei.value.winerror == we.ERROR_FILE_NOT_FOUND and ei.value.errno == errno.ENOENT
        with pytest.raises(TunError) as ei:
            lib.create_adapter("")
        assert ei.value.winerror == we.ERROR_INVALID_PARAMETER and ei.value.errno == errno.EINVAL
        for bad in (0x1000, CAP + 1, wt.MAX_RING_CAPACITY * 2):
            with pytest.raises(TunError, match="power of two"):
                a.start_session(bad)
    finally:
        a.close()
        a.close()  # idempotent


def test_receive_batch(session, stub):
    pkts = packets(1, 10)
    for p in pkts:
        assert stub.inject(session, p) == 0
    batch = PacketBatch(slots=4, max_packet=2048)
    got = []
    for want in (4, 4, 2, 0):
        assert session.receive_batch(batch) == want == batch.count
        got += [bytes(batch.packet(i)) for i in range(batch.count)]
    assert got == pkts
    assert session.last_status == we.ERROR_NO_MORE_ITEMS
    assert stub.used(session, send_ring=False) == 0  # every packet was released


def test_receive_drops_packets_too_big_for_a_slot(session, stub):
    small, big = packets(2, 1, 60, 61)[0], packets(3, 1, 200, 201)[0]
    stub.inject(session, big)
    stub.inject(session, small)
    batch = PacketBatch(slots=4, max_packet=128)
    drops = np.zeros(1, dtype=np.int64)
    assert session.receive_batch(batch, drops) == 1
    assert bytes(batch.packet(0)) == small and drops[0] == 1
    assert stub.used(session, send_ring=False) == 0


def test_single_receive_and_send(session, stub):
    assert session.receive() is None
    p = packets(4, 1)[0]
    stub.inject(session, p)
    assert session.receive() == p
    assert session.send(p) == len(p)
    assert stub.take(session) == p
    with pytest.raises(TunError):
        session.send(b"")


def test_send_batch(session, stub):
    pkts = packets(5, 6)
    batch = PacketBatch(slots=6, max_packet=2048)
    batch.fill(pkts)
    batch.verdicts[:] = [1, 1, 0, 1, 1, 1]
    batch.lengths[4] = 0
    errnos = np.full(6, -1, dtype=np.int32)
    assert session.send_batch(batch, 6, errnos, 1) == 4
    assert list(errnos) == [0, 0, 0, 0, errno.EINVAL, 0]
    assert [stub.take(session) for _ in range(5)] == [pkts[0], pkts[1], pkts[3], pkts[5], None]


def test_send_ring_full(session, stub):
    # Each 9000-byte packet takes 9004 + 4 bytes of a 128 KiB ring: 14 fit, the rest fail with ENOBUFS.
    batch = PacketBatch(slots=16, max_packet=9000)
    batch.fill(packets(6, 16, 9000, 9001))
    errnos = np.zeros(16, dtype=np.int32)
    assert session.send_batch(batch, 16, errnos) == 14
    assert list(errnos[:14]) == [0] * 14 and list(errnos[14:]) == [errno.ENOBUFS] * 2
    assert stub.take(session) == bytes(batch.packet(0))  # the ring drains; room again
    assert session.send_batch(batch, 1, errnos) == 1


def test_end_of_session(session, stub):
    stub.inject(session, packets(7, 1)[0])
    stub.terminate(session)
    batch = PacketBatch(slots=4, max_packet=2048)
    with pytest.raises(TunError) as ei:
        session.receive_batch(batch)
    assert ei.value.winerror == we.ERROR_HANDLE_EOF and ei.value.errno == errno.EPIPE
    with pytest.raises(TunError):
        session.receive()
    batch.fill(packets(8, 2))
    errnos = np.zeros(2, dtype=np.int32)
    assert session.send_batch(batch, 2, errnos) == 0
    assert list(errnos) == [errno.EPIPE] * 2
    with pytest.raises(TunError) as ei:
        session.send(bytes(batch.packet(0)))
    assert ei.value.winerror == we.ERROR_HANDLE_EOF


def test_calls_after_end_are_errors(lib):
    adapter = lib.create_adapter("wt-end")
    s = adapter.start_session(CAP)
    s.end()
    s.end()
    with pytest.raises(TunError, match="ended"):
        s.receive_batch(PacketBatch(slots=1, max_packet=128))
    adapter.close()


# --- the device ------------------------------------------------------------------------------


@pytest.fixture
def device(lib, stub):
    from ztun.tun.device_windows import WintunDevice

    dev = WintunDevice.open(TunOptions(name="wt-dev", mtu=1500), library=lib, events=StubEvents(stub))
    yield dev
    dev.close()


def test_device_protocol_and_reopen(device, lib, stub):
    from ztun.tun.device_windows import WintunDevice

    assert isinstance(device, TunDevice)
    assert device.created and device.name == "wt-dev" and device.luid != 0 and device.mtu == 1500
    again = WintunDevice.open(TunOptions(name="wt-dev"), library=lib, events=StubEvents(stub))
    assert not again.created and again.luid == device.luid  # the existing adapter is opened
    again.close()


def test_device_batches_and_single_packets(device, stub):
    device.set_nonblocking(True)
    batch = PacketBatch(slots=8, max_packet=2048)
    assert device.read_batch(batch) == 0
    pkts = packets(9, 3)
    for p in pkts:
        stub.inject(device._session, p)
    assert device.read_batch(batch) == 3
    assert [bytes(batch.packet(i)) for i in range(3)] == pkts
    batch.lengths[1] = 0
    assert device.write_batch(batch, 3) == 2
    assert device.failed_slots() == [(1, errno.EINVAL)]
    assert [stub.take(device._session) for _ in range(3)] == [pkts[0], pkts[2], None]
    buf = bytearray(2048)
    with pytest.raises(BlockingIOError):
        device.read(buf)
    stub.inject(device._session, pkts[0])
    assert device.read(buf) == len(pkts[0]) and bytes(buf[: len(pkts[0])]) == pkts[0]
    assert device.write(pkts[1]) == len(pkts[1]) and stub.take(device._session) == pkts[1]


def test_blocking_read_waits_on_the_event(device, stub):
    batch = PacketBatch(slots=4, max_packet=2048)
    p = packets(10, 1)[0]
    threading.Timer(0.1, stub.inject, (device._session, p)).start()
    t0 = time.monotonic()
    assert device.read_batch(batch) == 1
    assert bytes(batch.packet(0)) == p and time.monotonic() - t0 < 2


def test_the_readiness_loop_is_woken_through_a_socket(device, stub):
    sel = selectors.DefaultSelector()
    sel.register(device.fileno(), selectors.EVENT_READ)
    device.set_nonblocking(True)
    batch = PacketBatch(slots=2, max_packet=2048)

    def settles():
        # The event is auto-reset and keeps a signal from packets that arrived while the
        # waker was not waiting: one spurious wake may follow, whose read finds nothing.
        for _ in range(2):
            if not sel.select(0.1):
                return True
            assert device.read_batch(batch) == 0
        return False

    try:
        assert sel.select(0)  # readable at first: packets may be queued before the first read
        assert device.read_batch(batch) == 0  # empty: the waker rearms
        assert settles()
        pkts = packets(11, 3)
        for p in pkts:
            stub.inject(device._session, p)
        assert sel.select(2)  # the helper thread saw the read-wait event
        assert device.read_batch(batch) == 2  # batch full: the ring may hold more,
        assert sel.select(0)  # so the socket stays readable
        assert device.read_batch(batch) == 1
        assert device.read_batch(batch) == 0
        assert settles()
    finally:
        sel.close()


def test_close_is_idempotent_and_final(lib, stub):
    from ztun.tun.device_windows import WintunDevice

    dev = WintunDevice.open(TunOptions(name="wt-close"), library=lib, events=StubEvents(stub))
    dev.fileno()  # starts the waker thread
    dev.close()
    dev.close()
    with pytest.raises(TunError):
        dev.fileno()
    with pytest.raises(TunError):
        dev.read_batch(PacketBatch(slots=1, max_packet=128))
    assert not any(t.name == "ztun-wintun-waker" for t in threading.enumerate())
    with pytest.raises(TunError, match="WintunOpenAdapter"):
        lib.open_adapter("wt-close")  # the adapter it created is gone


def test_device_option_checks_and_platform(lib, stub):
    from ztun.tun.device_windows import WintunDevice

    with pytest.raises(TunError, match="offload"):
        WintunDevice.open(TunOptions(name="wt-x", offload=True), library=lib, events=StubEvents(stub))
    if sys.platform != "win32":
        with pytest.raises(ZtunError, match="needs Windows"):
            WintunDevice.open(TunOptions(name="wt-x"))
