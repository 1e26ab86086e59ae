"""Micro-benchmarks of the batch writes: tunio.write_batch to /dev/null, utunio.write_batch to a
loopback UDP socket nobody reads (the kernel drops what does not fit; the send still succeeds).

Groups: tunio-write-<size>, utunio-write-<size>, each a 64-slot batch of <size>-byte IPv4 packets,
compiled and twin. `python -m pytest bench --benchmark-only -k write`.
"""

import importlib
import os
import socket

import numpy as np
import pytest

from ztun._fast import PacketBatch

SLOTS = 64


def _module(name, kind):
    mod = importlib.import_module(f"ztun._fast.{name}{'' if kind == 'cython' else '_py'}")
    if kind == "cython" and not mod.__file__.endswith((".so", ".pyd")):
        pytest.fail(f"ztun._fast.{name} is not compiled")
    return mod


def _batch(size):
    batch = PacketBatch(slots=SLOTS, max_packet=9000)
    batch.fill([bytes([0x45]) + bytes(size - 1)] * SLOTS)
    return batch


@pytest.fixture
def udp_sink():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    yield tx
    tx.close()
    rx.close()


@pytest.mark.parametrize("kind", ["cython", "python"])
@pytest.mark.parametrize("size", [64, 1500, 9000])
def test_tunio_write(benchmark, kind, size):
    tunio = _module("tunio", kind)
    benchmark.group = f"tunio-write-{size}"
    batch, errnos = _batch(size), np.zeros(SLOTS, np.int32)
    fd = os.open(os.devnull, os.O_WRONLY)
    try:
        assert benchmark(tunio.write_batch, fd, batch, SLOTS, errnos) == SLOTS
    finally:
        os.close(fd)


@pytest.mark.parametrize("kind", ["cython", "python"])
@pytest.mark.parametrize("size", [64, 1500, 9000])
def test_utunio_write(benchmark, kind, size, udp_sink):
    utunio = _module("utunio", kind)
    benchmark.group = f"utunio-write-{size}"
    batch, errnos = _batch(size), np.zeros(SLOTS, np.int32)
    assert benchmark(utunio.write_batch, udp_sink.fileno(), batch, SLOTS, errnos) == SLOTS
