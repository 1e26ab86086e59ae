"""sd_notify: a datagram socket standing in for systemd receives READY=1 / STOPPING=1 / STATUS=; unset is a no-op."""

import os
import pathlib
import shutil
import socket
import tempfile

import pytest

from ztun.appliance import sdnotify

pytestmark = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="needs unix sockets (not on Windows)")


@pytest.fixture
def tmp_path():
    """A short directory: a unix socket's path is limited to 104 bytes on macOS, 108 on Linux."""
    d = tempfile.mkdtemp(prefix="zt-", dir="/tmp" if os.path.isdir("/tmp") else None)
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)



def receiver(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_path_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with receiver(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.ready("forwarding through proxy")
        assert sock.recv(4096) == b"STATUS=forwarding through proxy\nREADY=1"
        assert sdnotify.stopping()
        assert sock.recv(4096) == b"STOPPING=1"
        assert sdnotify.status("two\nlines")
        assert sock.recv(4096) == b"STATUS=two lines"


def test_abstract_socket(monkeypatch):
    name = f"ztun-test-notify-{os.getpid()}"
    with receiver("\0" + name) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert sock.recv(4096) == b"READY=1"


def test_unset_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False


@pytest.mark.parametrize("value", ["/nonexistent/notify", "relative/path", "vsock:2:1234", "@"])
def test_failures_never_raise(tmp_path, monkeypatch, value):
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.ready() is False


def test_a_full_receiver_does_not_block(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with receiver(path) as sock:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        sent = [sdnotify.notify("STATUS=" + "x" * 1000) for _ in range(2000)]  # far more than its queue holds
        assert sent[0] and not all(sent)  # the overflow is dropped (EAGAIN), not waited for
        assert sock.recv(4096).startswith(b"STATUS=x")


def test_no_fd_leak(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "missing"))
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        sdnotify.notify("READY=1")
    assert len(os.listdir("/proc/self/fd")) == before
