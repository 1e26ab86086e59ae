"""LinuxTunDevice over a stand-in fd, open_tun's platform choice, and the errors of a missing /dev/net/tun."""

import errno
import socket
import sys

import pytest
from scapy.layers.inet import ICMP, IP

from ztun._fast import PacketBatch
from ztun._fast import defs as d
from ztun.errors import TunError, ZtunError
from ztun.tun import device as device_mod
from ztun.tun.device import TunDevice, open_tun
from ztun.tun.options import TunOptions

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux TUN device")


@pytest.fixture
def dev_and_peer():
    from ztun.tun.device_linux import LinuxTunDevice

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev = LinuxTunDevice(a.detach(), "zt-fake", 1500)
    yield dev, b
    dev.close()
    b.close()


@linux
def test_satisfies_the_protocol(dev_and_peer):
    dev, _ = dev_and_peer
    assert isinstance(dev, TunDevice)


@linux
def test_single_and_batch_io(dev_and_peer):
    dev, peer = dev_and_peer
    pkt = bytes(IP(src="198.18.0.1", dst="198.19.0.7") / ICMP())
    peer.send(pkt)
    buf = bytearray(2000)
    assert dev.read(buf) == len(pkt) and bytes(buf[: len(pkt)]) == pkt
    dev.set_nonblocking(True)
    with pytest.raises(BlockingIOError):
        dev.read(buf)
    assert dev.write(pkt) == len(pkt) and peer.recv(2000) == pkt

    for _ in range(3):
        peer.send(pkt)
    batch = PacketBatch(slots=8, max_packet=dev.mtu)
    assert dev.read_batch(batch) == 3
    batch.verdicts[:3] = [d.V_WRITE, d.V_DROP, d.V_WRITE]
    batch.lengths[2] = 0  # a slot the device must refuse without stopping
    assert dev.write_batch(batch, 3, only_verdict=d.V_WRITE) == 1
    assert dev.failed_slots() == [(2, errno.EINVAL)]
    assert dev.write_batch(batch, 2) == 2
    assert dev.failed_slots() == []


@linux
def test_close_is_idempotent(dev_and_peer):
    dev, _ = dev_and_peer
    dev.close()
    dev.close()
    with pytest.raises(TunError):
        dev.fileno()


def test_unsupported_platform_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(device_mod.sys, "platform", "plan9")
    with pytest.raises(ZtunError, match="no TUN device for platform 'plan9'"):
        open_tun(TunOptions())


@linux
def test_missing_dev_net_tun(monkeypatch, tmp_path):
    from ztun.tun import device_linux

    monkeypatch.setattr(device_linux, "TUN_PATH", str(tmp_path / "no-tun"))
    with pytest.raises(TunError, match="modprobe tun") as e:
        open_tun(TunOptions(name="zt-none0"))
    assert e.value.errno == errno.ENOENT


@linux
def test_no_permission(monkeypatch):
    from ztun.tun import device_linux

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(device_linux.os, "open", denied)
    with pytest.raises(TunError, match="needs root or CAP_NET_ADMIN") as e:
        open_tun(TunOptions(name="zt-none0"))
    assert e.value.errno == errno.EACCES


def test_a_run_without_privilege_is_refused_in_one_line_before_anything(tmp_path, monkeypatch):
    """Not root and no CAP_NET_ADMIN: the TUN cannot be made, and that is the one thing said."""
    from ztun.errors import TunError
    from ztun.tun.options import TunOptions

    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapEff:\t0000000000000000\n")
    monkeypatch.setattr(device_mod.os, "geteuid", lambda: 65534)
    assert not device_mod.has_net_admin(str(status))
    status.write_text("Name:\tpython\nCapEff:\t0000000000001000\n")  # bit 12: CAP_NET_ADMIN
    assert device_mod.has_net_admin(str(status))
    monkeypatch.setattr(device_mod, "has_net_admin", lambda: False)
    monkeypatch.setattr(device_mod.sys, "platform", "linux")
    with pytest.raises(TunError) as e:
        device_mod.check_privilege(TunOptions())
    assert str(e.value) == "cannot open /dev/net/tun (needs root or CAP_NET_ADMIN): Permission denied (errno 13)"
    device_mod.check_privilege(TunOptions(file_descriptor=3))  # an adopted fd needs no privilege to be used
    monkeypatch.setattr(device_mod, "has_net_admin", lambda: True)
    device_mod.check_privilege(TunOptions())


def test_the_cli_checks_privilege_before_the_control_socket(tmp_path, monkeypatch, capsys):
    """The control socket (and everything after it) is not touched by a run that may not make the TUN."""
    from ztun.appliance import cli, gateway, status

    opened = []

    def reached(*args, **kw):  # whatever the check lets through stops here: nothing is made on this host
        opened.append(args)
        raise ZtunError("reached")

    monkeypatch.setattr(device_mod, "has_net_admin", lambda: False)
    monkeypatch.setattr(device_mod.sys, "platform", "linux")
    monkeypatch.setattr(status.ControlServer, "__init__", reached)
    monkeypatch.setattr(gateway.Gateway, "open", reached)
    code = cli.main(["run", "--control-socket", str(tmp_path / "c.sock"), "--log-level", "ERROR"])
    assert code == 1 and opened == []
    assert capsys.readouterr().err.strip() == \
        "ztun-appliance: error: cannot open /dev/net/tun (needs root or CAP_NET_ADMIN): Permission denied (errno 13)"
