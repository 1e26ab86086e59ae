"""Every platform's modules import on every platform; asking for a device or router where there is none is a clear ZtunError."""

import importlib
import sys

import pytest

from ztun.errors import ZtunError
from ztun.tun.options import TunOptions

MODULES = [
    "ztun",
    "ztun.tun.device_darwin",
    "ztun.tun.utun_control",
    "ztun.tun.device_windows",
    "ztun.tun.wintun",
    "ztun.system.darwin_sockaddr",
    "ztun.system.darwin_ioctl",
    "ztun.system.route_socket",
    "ztun.system.router_darwin",
    "ztun.system.route_ranges",
    "ztun.system.iphlpapi_types",
    "ztun.system.iphlpapi",
    "ztun.system.router_windows",
]


@pytest.mark.parametrize("name", MODULES)
def test_imports_everywhere(name):
    importlib.import_module(name)


@pytest.mark.parametrize("platform", ["sunos5", "aix", "emscripten"])
def test_unsupported_platform(monkeypatch, platform):
    from ztun.system.router import open_router
    from ztun.tun.device import open_tun

    monkeypatch.setattr(sys, "platform", platform)
    with pytest.raises(ZtunError, match=platform):
        open_tun(TunOptions())
    with pytest.raises(ZtunError, match=platform):
        open_router()


def test_platform_classes_refuse_the_wrong_platform(monkeypatch):
    from ztun.system.router_darwin import DarwinRouter
    from ztun.system.router_windows import WindowsRouter
    from ztun.tun.device_darwin import DarwinTunDevice
    from ztun.tun.device_windows import WintunDevice

    monkeypatch.setattr(sys, "platform", "sunos5")
    for make in (lambda: DarwinTunDevice.open(TunOptions(name="utun3")), lambda: WintunDevice.open(TunOptions()), DarwinRouter, WindowsRouter):
        with pytest.raises(ZtunError, match="sunos5"):
            make()
