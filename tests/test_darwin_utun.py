"""utun framing (4-byte address-family header) over an AF_UNIX datagram socketpair standing in for the utun socket.

Runs the compiled ztun._fast.utunio and its twin, and the DarwinTunDevice on top of them.
"""

import errno
import importlib
import os
import random
import socket
import sys
import threading

import numpy as np
import pytest

from ztun._fast import HEADROOM, PacketBatch
from ztun.errors import TunError, ZtunError
from ztun.tun.device import TunDevice
from ztun.tun.options import TunOptions

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="utun framing is POSIX-only (no AF_UNIX datagram socketpair on Windows)")

NO_EXT = os.environ.get("ZTUN_NO_EXTENSIONS", "") not in ("", "0")
V4, V6 = b"\x00\x00\x00\x02", b"\x00\x00\x00\x1e"  # Darwin AF_INET 2, AF_INET6 30, big-endian


@pytest.fixture(params=["cython", "python"])
def io(request, fast_module):
    return fast_module("utunio", request.param)


def socketpair():
    """(ours, kernel): ours is what ztun reads and writes (non-blocking), kernel plays the utun's other end."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (ours, kernel):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:  # macOS caps AF_UNIX datagrams at 2 KiB and 4 KiB of queue unless asked for more
                s.setsockopt(socket.SOL_SOCKET, opt, 1 << 20)
            except OSError:
                pass
    ours.setblocking(False)
    return ours, kernel


@pytest.fixture
def pair():
    ours, kernel = socketpair()
    yield ours, kernel
    ours.close()
    kernel.close()


def packet(rng, version, n=None):
    n = n if n is not None else rng.randrange(20, 1400)
    body = bytes(rng.getrandbits(8) for _ in range(n - 1))
    return bytes([0x45 if version == 4 else 0x60]) + body


def drops():
    return np.zeros(2, dtype=np.int64)


def test_constants_agree(io):
    twin = importlib.import_module("ztun._fast.utunio_py")
    for name in ("HDR", "AF_INET", "AF_INET6", "DROP_SHORT", "DROP_FAMILY", "N_DROPS"):
        assert getattr(io, name) == getattr(twin, name), name
    assert (io.HDR, io.AF_INET, io.AF_INET6) == (4, 2, 30)


def test_read_strips_header_and_lands_at_headroom(io, pair):
    ours, kernel = pair
    rng = random.Random(1)
    pkts = [packet(rng, rng.choice((4, 6))) for _ in range(8)]
    for p in pkts:
        kernel.send((V4 if p[0] >> 4 == 4 else V6) + p)
    batch = PacketBatch(slots=16, max_packet=2048)
    d = drops()
    assert io.read_batch(ours.fileno(), batch, d) == 8
    assert batch.count == 8
    for i, p in enumerate(pkts):
        assert batch.lengths[i] == len(p)
        assert bytes(batch.packet(i)) == p
        assert bytes(batch.data[i, HEADROOM - 4 : HEADROOM]) in (V4, V6)  # the header stayed in the headroom
    assert list(d) == [0, 0]
    assert io.read_batch(ours.fileno(), batch, d) == 0  # nothing queued: non-blocking returns at once
    assert batch.count == 0


def test_read_stops_when_the_batch_is_full(io, pair):
    ours, kernel = pair
    rng = random.Random(2)
    pkts = [packet(rng, 4, 100 + i) for i in range(7)]
    for p in pkts:
        kernel.send(V4 + p)
    batch = PacketBatch(slots=3, max_packet=512)
    got = []
    for want in (3, 3, 1, 0):
        assert io.read_batch(ours.fileno(), batch, drops()) == want
        got += [bytes(batch.packet(i)) for i in range(batch.count)]
    assert got == pkts


def test_bad_datagrams_are_counted_and_skipped(io, pair):
    ours, kernel = pair
    rng = random.Random(3)
    good = [packet(rng, 4, 60), packet(rng, 6, 80), packet(rng, 4, 40)]
    kernel.send(b"\x00")  # shorter than the header
    kernel.send(V4 + good[0])
    kernel.send(b"\x00\x00\x00\x0a" + good[1])  # Linux's AF_INET6 (10): not a utun family
    kernel.send(b"\x00\x00\x00")  # short again
    kernel.send(V6 + good[1])
    kernel.send(b"\x01\x00\x00\x02" + good[2])  # high bytes set: not a family
    kernel.send(V4 + good[2])
    batch = PacketBatch(slots=8, max_packet=512)
    d = drops()
    assert io.read_batch(ours.fileno(), batch, d) == 3
    assert [bytes(batch.packet(i)) for i in range(3)] == good
    assert d[io.DROP_SHORT] == 2 and d[io.DROP_FAMILY] == 2


def test_a_header_alone_is_an_empty_packet(io, pair):
    ours, kernel = pair
    kernel.send(V4)
    batch = PacketBatch(slots=2, max_packet=128)
    assert io.read_batch(ours.fileno(), batch, drops()) == 1
    assert batch.lengths[0] == 0  # the parser drops it as empty


def test_oversized_datagram_is_truncated_to_the_slot(io, pair):
    ours, kernel = pair
    big = packet(random.Random(4), 4, 300)
    kernel.send(V4 + big)
    batch = PacketBatch(slots=2, max_packet=128)
    assert io.read_batch(ours.fileno(), batch, drops()) == 1
    assert batch.lengths[0] == 128
    assert bytes(batch.packet(0)) == big[:128]


def test_blocking_read_waits_for_the_first_packet_only(io, pair):
    ours, kernel = pair
    ours.setblocking(True)
    batch = PacketBatch(slots=8, max_packet=256)
    p = packet(random.Random(5), 6, 90)
    result = {}

    def reader():
        result["n"] = io.read_batch(ours.fileno(), batch, drops(), True)

    t = threading.Thread(target=reader)
    t.start()
    t.join(0.2)
    assert t.is_alive()  # blocked: nothing queued yet
    kernel.send(V6 + p)
    t.join(5)
    if t.is_alive():
        ours.shutdown(socket.SHUT_RDWR)
        pytest.fail("blocking read_batch kept waiting after its first packet")
    assert result["n"] == 1 and bytes(batch.packet(0)) == p


def test_read_error_before_any_packet_raises(io):
    r, w = os.pipe()
    os.close(r)
    try:
        with pytest.raises(TunError) as ei:
            io.read_batch(w, PacketBatch(slots=2, max_packet=128), drops())
        assert ei.value.errno in (errno.EBADF, errno.ENOTSOCK)
    finally:
        os.close(w)
    with pytest.raises(ValueError):
        io.read_batch(0, PacketBatch(slots=2, max_packet=128), np.zeros(1, dtype=np.int64))


def test_write_prepends_the_family_of_each_packet(io, pair):
    ours, kernel = pair
    rng = random.Random(6)
    pkts = [packet(rng, rng.choice((4, 6))) for _ in range(8)]
    batch = PacketBatch(slots=8, max_packet=2048)
    batch.fill(pkts)
    errnos = np.full(8, -1, dtype=np.int32)
    assert io.write_batch(ours.fileno(), batch, 8, errnos) == 8
    assert list(errnos) == [0] * 8
    for p in pkts:
        assert kernel.recv(4096) == (V4 if p[0] >> 4 == 4 else V6) + p


def test_write_reports_bad_slots_and_goes_on(io, pair):
    ours, kernel = pair
    rng = random.Random(7)
    batch = PacketBatch(slots=5, max_packet=256)
    batch.fill([packet(rng, 4, 50), packet(rng, 6, 60), b"\x55" + bytes(30), packet(rng, 4, 70), packet(rng, 6, 80)])
    batch.lengths[1] = 0  # no packet
    batch.lengths[3] = 10_000  # longer than the slot
    errnos = np.zeros(5, dtype=np.int32)
    assert io.write_batch(ours.fileno(), batch, 5, errnos) == 2
    assert list(errnos) == [0, errno.EINVAL, errno.EAFNOSUPPORT, errno.EINVAL, 0]
    assert kernel.recv(4096) == V4 + bytes(batch.packet(0))
    assert kernel.recv(4096) == V6 + bytes(batch.packet(4))


def test_write_only_verdict(io, pair):
    ours, kernel = pair
    rng = random.Random(8)
    batch = PacketBatch(slots=4, max_packet=256)
    batch.fill([packet(rng, 4, 40 + i) for i in range(4)])
    batch.verdicts[:] = [1, 0, 1, 2]
    errnos = np.zeros(4, dtype=np.int32)
    assert io.write_batch(ours.fileno(), batch, 4, errnos, 1) == 2
    assert kernel.recv(4096)[4:] == bytes(batch.packet(0))
    assert kernel.recv(4096)[4:] == bytes(batch.packet(2))
    kernel.setblocking(False)
    with pytest.raises(BlockingIOError):
        kernel.recv(4096)


def test_send_failure_is_per_slot(io, pair):
    ours, kernel = pair
    kernel.close()  # the other end is gone: every send fails
    batch = PacketBatch(slots=3, max_packet=128)
    batch.fill([packet(random.Random(9), 4, 40)] * 3)
    errnos = np.zeros(3, dtype=np.int32)
    assert io.write_batch(ours.fileno(), batch, 3, errnos) == 0
    assert all(errnos != 0)
    with pytest.raises(ValueError):
        io.write_batch(ours.fileno(), batch, 4, errnos)


def test_compiled_and_twin_agree():
    if NO_EXT:
        pytest.skip("ZTUN_NO_EXTENSIONS=1: nothing compiled to compare with")
    mods = [importlib.import_module("ztun._fast.utunio"), importlib.import_module("ztun._fast.utunio_py")]
    rng = random.Random(10)
    frames = []
    for _ in range(40):
        kind = rng.random()
        v = rng.choice((4, 6))
        if kind < 0.1:
            frames.append(bytes(rng.randrange(1, 4)))
        elif kind < 0.2:
            frames.append(bytes([0, 0, 0, rng.choice((0, 1, 10, 24, 255))]) + packet(rng, v))
        else:
            frames.append((V4 if v == 4 else V6) + packet(rng, v, rng.randrange(1, 700)))
    results = []
    for mod in mods:
        ours, kernel = socketpair()
        batch, d, seen = PacketBatch(slots=6, max_packet=512), drops(), []
        for start in range(0, len(frames), 8):
            for f in frames[start : start + 8]:
                kernel.send(f)
            while mod.read_batch(ours.fileno(), batch, d):
                seen += [(int(batch.lengths[i]), bytes(batch.packet(i))) for i in range(batch.count)]
        results.append((seen, list(d)))
        ours.close()
        kernel.close()
    assert results[0] == results[1]


# --- the device on top ---------------------------------------------------------------


def test_device_satisfies_the_protocol_and_moves_batches(io, pair):
    from ztun.tun.device_darwin import DarwinTunDevice

    ours, kernel = pair
    dev = DarwinTunDevice(ours.detach(), "utun9", 1500, io=io)
    try:
        assert isinstance(dev, TunDevice)
        dev.set_nonblocking(True)
        rng = random.Random(11)
        pkts = [packet(rng, 4, 100), packet(rng, 6, 200)]
        kernel.send(V4 + pkts[0])
        kernel.send(b"\x00\x00")
        kernel.send(V6 + pkts[1])
        batch = PacketBatch(slots=4, max_packet=512)
        assert dev.read_batch(batch) == 2
        assert [bytes(batch.packet(i)) for i in range(2)] == pkts
        assert dev.drops == {"short": 1, "bad_family": 0}
        batch.lengths[0] = 0
        assert dev.write_batch(batch, 2) == 1
        assert dev.failed_slots() == [(0, errno.EINVAL)]
        assert kernel.recv(4096) == V6 + pkts[1]
        # single packets
        kernel.send(V4 + pkts[0])
        buf = bytearray(512)
        assert dev.read(buf) == len(pkts[0]) and bytes(buf[: len(pkts[0])]) == pkts[0]
        with pytest.raises(BlockingIOError):
            dev.read(buf)
        assert dev.write(pkts[1]) == len(pkts[1])
        assert kernel.recv(4096) == V6 + pkts[1]
        with pytest.raises(TunError) as ei:
            dev.write(b"\x10abc")
        assert ei.value.errno == errno.EAFNOSUPPORT
    finally:
        dev.close()
        dev.close()  # idempotent
    with pytest.raises(TunError):
        dev.fileno()


def test_opening_a_utun_elsewhere_is_a_clear_error():
    from ztun.tun.device_darwin import DarwinTunDevice

    if sys.platform == "darwin":
        pytest.skip("on macOS this would create a real utun (needs root)")
    with pytest.raises(ZtunError, match="needs macOS"):
        DarwinTunDevice.open(TunOptions(name="utun7"))
