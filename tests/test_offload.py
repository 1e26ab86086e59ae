"""TUN offload negotiation falls back to what the kernel takes; USO is usable only with vnet headers and both families."""

import errno
import types

from ztun.tun import offload as o


def refusing(*accepted):
    calls = []

    def ioctl(fd, request, flags):
        calls.append((fd, request, flags))
        if flags not in accepted:
            raise OSError(errno.EINVAL, "Invalid argument")

    return ioctl, calls


def test_negotiation_falls_back_to_what_the_kernel_accepts():
    ioctl, calls = refusing(o.TSO)  # a kernel before 6.2: no USO
    assert o.negotiate(5, "zt0", ioctl) == o.TSO
    assert calls == [(5, o.TUNSETOFFLOAD, o.OFFLOAD), (5, o.TUNSETOFFLOAD, o.TSO)]
    assert o.negotiate(5, "zt0", refusing(o.OFFLOAD)[0]) == o.OFFLOAD
    assert o.negotiate(5, "zt0", refusing()[0]) == 0


def test_names():
    assert o.names(o.TSO) == "csum,tso4,tso6,tso_ecn" and o.names(0) == "none"
    assert o.names(o.OFFLOAD).endswith("uso4,uso6")


def test_uso_usable_needs_vnet_headers_and_both_families():
    dev = types.SimpleNamespace
    assert o.uso_usable(dev(vnet_hdr=True, offload=o.OFFLOAD))
    assert not o.uso_usable(dev(vnet_hdr=True, offload=o.TSO | o.TUN_F_USO4))
    assert not o.uso_usable(dev(vnet_hdr=False, offload=o.OFFLOAD))
