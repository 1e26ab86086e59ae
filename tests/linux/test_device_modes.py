"""The Linux device's other modes, driven through Gateway in one process: IFF_VNET_HDR + multi-queue, and an adopted fd."""

import json
import os

import pytest
from conftest import need

pytestmark = pytest.mark.linux_root

# Runs a Gateway for `options` in the namespace until the ping commands given as JSON are done.
DRIVER = r"""
import json, subprocess, sys
from ztun.appliance.gateway import Gateway
from ztun.loop import Loop
from ztun.tun.options import TunOptions

def run(options, pings, setup=None):
    loop, results = Loop(), []
    with Gateway(options) as gw:
        if setup:
            setup(gw)
        gw.attach(loop)
        details = subprocess.run(["ip", "-d", "link", "show", "dev", gw.device.name], capture_output=True, text=True).stdout
        procs = [subprocess.Popen(p, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in pings]
        deadline = loop.time() + 60

        def check():
            if all(p.poll() is not None for p in procs) or loop.time() > deadline:
                loop.stop()
            else:
                loop.call_later(0.05, check)

        loop.call_soon(check)
        loop.run()
        for p in procs:
            if p.poll() is None:
                p.kill()
            results.append({"rc": p.wait(), "out": p.stdout.read()})
        stats = gw.stack.stats()
    loop.close()
    return {"details": details, "pings": results, "stats": stats}
"""

OFFLOAD = DRIVER + r"""
opts = TunOptions(name="zt-off0", inet4="198.18.0.1/30", inet6="fd00:18::1/126", mtu=1500, offload=True,
                  multi_queue=True, routes=("198.19.0.0/16", "fd00:19::/64"))
def second_queue(gw):
    q = gw.device.open_queue()  # a multi-queue device takes another fd
    q.close()
print(json.dumps(run(opts, [["ping", "-c", "3", "-i", "0.2", "-W", "5", "198.19.0.7"],
                            ["ping", "-6", "-c", "3", "-i", "0.2", "-W", "5", "fd00:19::7"]], second_queue)))
"""

ADOPT = DRIVER + r"""
import os
from ztun._fast import tunio
# What Android's VpnService or systemd would do: open and configure the device, pass the fd on.
fd = os.open("/dev/net/tun", os.O_RDWR)
name = tunio.set_iff(fd, "zt-adopt0", tunio.CONSTANTS["IFF_TUN"] | tunio.CONSTANTS["IFF_NO_PI"])
for cmd in (["addr", "add", "198.18.0.1/30", "dev", name], ["link", "set", name, "up"]):
    subprocess.run(["ip", *cmd], check=True)
opts = TunOptions(file_descriptor=fd, inet4="198.18.0.1/30", inet6=None, mtu=1500, routes=("198.19.0.0/16",))
print(json.dumps(run(opts, [["ping", "-c", "3", "-i", "0.2", "-W", "5", "198.19.0.7"]])))
"""


def test_vnet_hdr_and_multi_queue(netns):
    need("ping", "iputils-ping")
    before = netns.snapshot()
    res = json.loads(netns.python(OFFLOAD).stdout)
    assert "vnet_hdr on" in res["details"] and "multi_queue numqueues" in res["details"], res["details"]
    for p in res["pings"]:
        assert p["rc"] == 0 and "3 received" in p["out"], p["out"]
    assert res["stats"]["echo_answered"] >= 6 and res["stats"]["write_failed"] == 0 and res["stats"]["dropped_malformed"] == 0
    assert netns.snapshot() == before


def test_adopted_fd(netns):
    need("ping", "iputils-ping")
    res = json.loads(netns.python(ADOPT).stdout)
    assert "zt-adopt0" in res["details"]
    assert res["pings"][0]["rc"] == 0 and "3 received" in res["pings"][0]["out"], res["pings"][0]["out"]
    # The adopted device's address was its owner's; ztun took only its own route and rules back.
    assert "zt-adopt0" not in netns.ip("link")  # the fd was closed with the device: it is gone
    assert netns.ip("rule").count("\n") == 3


# A created device with IFF_NAPI: the flag as the kernel reports it, the threaded switch as
# each mode leaves it, and echo still answered through the NAPI receive path.
NAPI = DRIVER + r"""
from ztun._fast import tunio
from ztun.tun.napi import IFF_NAPI
out = {}
for mode in ("off", "auto", "on"):
    opts = TunOptions(name="zt-napi0", inet4="198.18.0.1/30", inet6=None, mtu=1500, napi=mode, routes=("198.19.0.0/16",))
    seen = {}
    def look(gw):
        seen["flags"] = tunio.get_iff(gw.device.fileno())[1]
    # the commands start once the gateway is attached: cat sees the switch as the mode set it
    res = run(opts, [["ping", "-c", "3", "-i", "0.2", "-W", "5", "198.19.0.7"], ["cat", "/sys/class/net/zt-napi0/threaded"]], look)
    out[mode] = {"napi": bool(seen["flags"] & IFF_NAPI), "threaded": res["pings"][1]["out"].strip(), "ping": res["pings"][0]}
# A device someone else made with IFF_NAPI, adopted: its switch is its owner's, ztun leaves it be.
import os
fd = os.open("/dev/net/tun", os.O_RDWR)
name = tunio.set_iff(fd, "zt-napi1", tunio.CONSTANTS["IFF_TUN"] | tunio.CONSTANTS["IFF_NO_PI"] | IFF_NAPI)
for cmd in (["addr", "add", "198.18.0.5/30", "dev", name], ["link", "set", name, "up"]):
    subprocess.run(["ip", *cmd], check=True)
opts = TunOptions(file_descriptor=fd, inet4="198.18.0.5/30", inet6=None, mtu=1500, napi="on", routes=("198.19.0.0/16",))
seen = {}
res = run(opts, [["ping", "-c", "2", "-i", "0.2", "-W", "5", "198.19.0.7"], ["cat", "/sys/class/net/zt-napi1/threaded"]],
          lambda gw: seen.update(controller=gw.napi is not None, napi=gw.device.napi))
out["adopted"] = {"napi": seen["napi"], "controller": seen["controller"], "threaded": res["pings"][1]["out"].strip(),
                  "ping": res["pings"][0]}
print(json.dumps(out))
"""


def test_napi_modes(netns):
    need("ping", "iputils-ping")
    if not os.path.exists("/sys/class/net/lo/threaded"):
        pytest.skip("threaded NAPI's sysfs switch needs Linux 5.12+")
    before = netns.snapshot()
    res = json.loads(netns.python(NAPI).stdout)
    assert not res["off"]["napi"] and res["auto"]["napi"] and res["on"]["napi"], res
    # auto starts inline (threaded only once the loop is saturated); on is threaded from the start
    assert (res["off"]["threaded"], res["auto"]["threaded"], res["on"]["threaded"]) == ("0", "0", "1"), res
    assert res["adopted"]["napi"] and not res["adopted"]["controller"] and res["adopted"]["threaded"] == "0", res["adopted"]
    for mode, r in res.items():
        assert r["ping"]["rc"] == 0 and " 0% packet loss" in r["ping"]["out"], (mode, r["ping"]["out"])
    assert netns.snapshot() == before
