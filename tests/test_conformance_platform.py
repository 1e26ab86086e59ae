"""Every platform's TUN device and Router conform to their protocol, on every OS (the modules import anywhere).

Classes are checked as written (conformance.assert_conforms); where an object is cheap to
build off its platform (over stand-ins that its constructor only stores), it is checked
too, with its declared capabilities' values.
"""

import importlib
import os
import sys
import types

import pytest
from conformance import assert_conforms

from ztun.errors import RouteError
from ztun.system.route_plan import Route, Rule
from ztun.system.router import Router
from ztun.tun.device import TunDevice

DEVICES = [("ztun.tun.device_linux", "LinuxTunDevice"), ("ztun.tun.device_darwin", "DarwinTunDevice"),
           ("ztun.tun.device_windows", "WintunDevice")]
ROUTERS = [("ztun.system.router_linux", "LinuxRouter"), ("ztun.system.router_darwin", "DarwinRouter"),
           ("ztun.system.router_windows", "WindowsRouter")]


def load(module: str, name: str):
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as e:  # the Linux router and TUN's compiled I/O exist only where they can run
        pytest.skip(f"{module} does not import on {sys.platform}: {e}")


@pytest.mark.parametrize("module,name", DEVICES, ids=[n for _, n in DEVICES])
def test_device_class_conforms(module, name):
    assert_conforms(load(module, name), TunDevice)


@pytest.mark.parametrize("module,name", ROUTERS, ids=[n for _, n in ROUTERS])
def test_router_class_conforms(module, name):
    assert_conforms(load(module, name), Router)


def router_objects():
    """(router, policy routing expected) over stand-ins the constructors only store."""
    stub = object()
    out = [(load("ztun.system.router_darwin", "DarwinRouter")(route_socket=stub, ifconfig=stub), False),
           (load("ztun.system.router_windows", "WindowsRouter")(api=stub), False)]
    try:
        from ztun.system.router_linux import LinuxRouter
    except ImportError:
        return out
    return out + [(LinuxRouter(types.SimpleNamespace(close=lambda: None)), True)]


def test_router_objects_declare_their_capabilities():
    for router, policy in router_objects():
        assert_conforms(type(router), Router, instance=router)
        assert router.policy_routing is policy


def test_routers_without_policy_routing_say_so_instead_of_failing_deep_inside():
    rule = Rule(4, 9000, "goto", goto=9009, fwmark=0x2022)
    for router, policy in router_objects():
        if policy:
            continue
        for call in (router.add_rule, router.delete_rule, router.add, router.delete):
            with pytest.raises(RouteError, match="policy rules are a Linux feature"):
                call(rule)
        with pytest.raises(RouteError, match="routing tables are a Linux feature"):
            router.add(Route.of("198.19.0.0/16", iface="zt0", table=2022))
        with pytest.raises(RouteError, match="'throw' routes are Linux-only"):
            router.add_route("198.19.0.0/16", kind="throw")
        assert router.strict_rp_filter_sources(skip="zt0") == ()
        assert router.remove_leftovers(2022, range(9000, 9010)) == 0
        router._undo.closed = True  # nothing to undo; the stand-ins have no close()


def device_objects():
    """Devices built over stand-ins: the Wintun one anywhere, the fd ones where an fd's blocking mode can be read."""
    from ztun.tun.device_windows import WintunDevice

    adapter = types.SimpleNamespace(name="wt0", luid=0x1234, created=True)
    out = [WintunDevice(None, adapter, None, 1500)]
    if sys.platform == "win32":
        return out
    from ztun._fast import utunio_py
    from ztun.tun.device_darwin import DarwinTunDevice

    out.append(DarwinTunDevice(os.open(os.devnull, os.O_RDONLY), "utun9", 1500, adopted=True, io=utunio_py))
    try:
        from ztun.tun.device_linux import LinuxTunDevice
    except ImportError:
        return out
    return out + [LinuxTunDevice(os.open(os.devnull, os.O_RDONLY), "zt-none", 1500, created=True)]


def test_device_objects_declare_their_capabilities():
    devices = device_objects()
    try:
        for dev in devices:
            assert_conforms(type(dev), TunDevice, instance=dev)
            # none of these stand-ins was opened with a vnet header, offload or NAPI
            assert (dev.vnet_hdr, dev.offload, dev.napi) == (False, 0, False), dev
        assert [(d.created, d.adopted) for d in devices] == [(True, False), (False, True), (True, False)][: len(devices)]
    finally:
        for dev in devices[1:]:
            dev.close()
