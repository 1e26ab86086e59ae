"""Batch read/write of ztun._fast.tunio (compiled and twin) over a datagram socketpair, and the TUN ioctl constants."""

import errno
import os
import socket
import sys

import numpy as np
import pytest

from ztun._fast import HEADROOM, PacketBatch
from ztun._fast import defs as d
from ztun.errors import TunError

NO_EXT = os.environ.get("ZTUN_NO_EXTENSIONS", "") not in ("", "0")


@pytest.fixture(scope="module", params=["cython", "python"])
def tunio(request, fast_module):
    """The compiled tunio, then the pure-Python twin."""
    return fast_module("tunio", request.param)


@pytest.fixture
def pair():
    """(device side, peer side) of a datagram socketpair standing in for a TUN fd: one packet per read."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def packets(n, size=60):
    return [bytes([0x45]) + bytes([(i + j) & 0xFF for j in range(size - 1)]) for i in range(n)]


def test_read_until_would_block(tunio, pair):
    dev, peer = pair
    sent = packets(5)
    for p in sent:
        peer.send(p)
    batch = PacketBatch(slots=8, max_packet=1500)
    assert tunio.read_batch(dev.fileno(), batch) == 5
    assert batch.count == 5
    assert [bytes(batch.packet(i)) for i in range(5)] == sent
    assert tunio.read_batch(dev.fileno(), batch) == 0
    assert batch.count == 0


def test_read_stops_when_full(tunio, pair):
    dev, peer = pair
    sent = packets(10, 100)
    for p in sent:
        peer.send(p)
    batch = PacketBatch(slots=4, max_packet=1500)
    got = []
    for want in (4, 4, 2, 0):
        assert tunio.read_batch(dev.fileno(), batch) == want
        got += [bytes(batch.packet(i)) for i in range(batch.count)]
    assert got == sent


def test_blocking_fd_takes_only_what_is_queued(tunio, pair):
    dev, peer = pair
    dev.setblocking(True)
    for p in packets(3):
        peer.send(p)
    batch = PacketBatch(slots=8, max_packet=1500)
    assert tunio.read_batch(dev.fileno(), batch, True) == 3


def test_oversized_packet_is_cut_to_the_slot(tunio, pair):
    dev, peer = pair
    peer.send(bytes(200))
    batch = PacketBatch(slots=2, max_packet=100)
    assert tunio.read_batch(dev.fileno(), batch) == 1
    assert batch.lengths[0] == 100


def test_header_in_headroom(tunio, pair):
    dev, peer = pair
    peer.send(b"HDR!" + b"\x45packet")
    batch = PacketBatch(slots=2, max_packet=100)
    assert tunio.read_batch(dev.fileno(), batch, False, 4) == 1
    assert bytes(batch.packet(0)) == b"\x45packet"
    assert bytes(batch.data[0, HEADROOM - 4 : HEADROOM]) == b"HDR!"
    errs = np.zeros(2, dtype=np.int32)
    assert tunio.write_batch(dev.fileno(), batch, 1, errs, -1, 4) == 1
    assert peer.recv(200) == b"HDR!\x45packet"


def test_write_batch_selected_slots_in_order(tunio, pair):
    dev, peer = pair
    batch = PacketBatch(slots=6, max_packet=1500)
    sent = packets(6)
    batch.fill(sent)
    batch.verdicts[:6] = [d.V_WRITE, d.V_DROP, d.V_WRITE, d.V_ICMP, d.V_WRITE, d.V_DROP]
    errs = np.full(6, -1, dtype=np.int32)
    assert tunio.write_batch(dev.fileno(), batch, 6, errs, d.V_WRITE) == 3
    assert list(errs) == [0] * 6
    assert [peer.recv(2000) for _ in range(3)] == [sent[0], sent[2], sent[4]]
    with pytest.raises(BlockingIOError):
        peer.recv(2000)
    assert tunio.write_batch(dev.fileno(), batch, 6, errs) == 6


def test_write_failures_reported_per_slot(tunio, pair):
    dev, peer = pair
    batch = PacketBatch(slots=3, max_packet=1500)
    batch.fill(packets(3))
    batch.lengths[1] = 0
    errs = np.zeros(3, dtype=np.int32)
    assert tunio.write_batch(dev.fileno(), batch, 3, errs) == 2
    assert list(errs) == [0, errno.EINVAL, 0]
    peer.close()
    assert tunio.write_batch(dev.fileno(), batch, 3, errs) == 0
    assert errs[0] != 0 and errs[2] != 0 and errs[1] == errno.EINVAL


def test_read_error_raises_tun_error(tunio):
    r, w = os.pipe()
    os.close(w)
    os.close(r)
    batch = PacketBatch(slots=2, max_packet=100)
    with pytest.raises(TunError) as e:
        tunio.read_batch(r, batch)
    assert e.value.errno == errno.EBADF


def test_arguments_checked(tunio, pair):
    dev, _ = pair
    batch = PacketBatch(slots=2, max_packet=100)
    with pytest.raises(ValueError):
        tunio.write_batch(dev.fileno(), batch, 3, np.zeros(3, dtype=np.int32))
    with pytest.raises(ValueError):
        tunio.write_batch(dev.fileno(), batch, 2, np.zeros(1, dtype=np.int32))
    with pytest.raises(ValueError):
        tunio.read_batch(dev.fileno(), batch, False, HEADROOM + 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux TUN ioctls")
def test_ioctls_on_a_non_tun_fd_raise(tunio, pair):
    dev, _ = pair
    with pytest.raises(TunError) as e:
        tunio.get_iff(dev.fileno())
    assert e.value.errno is not None
    with pytest.raises(TunError):
        tunio.set_iff(dev.fileno(), "zt-none", 0x1001)
    with pytest.raises(ValueError):
        tunio.set_iff(dev.fileno(), "x" * 16, 0x1001)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux TUN ioctls")
def test_twin_constants_match_kernel_headers(fast_module):
    if NO_EXT:
        pytest.skip("ZTUN_NO_EXTENSIONS=1: no compiled module to read the headers through")
    assert fast_module("tunio", "python").CONSTANTS == fast_module("tunio", "cython").CONSTANTS
