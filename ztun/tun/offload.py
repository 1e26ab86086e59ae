"""TUN offload on Linux: the TUN_F_* flags, their negotiation with TUNSETOFFLOAD, and what they allow.

With IFF_VNET_HDR each packet carries a virtio_net_hdr, and the flags set with
TUNSETOFFLOAD say which super-packets the kernel may hand ztun and take from it: TCP
(TSO) both ways, and UDP (USO, Linux 6.2+) where the kernel has it. The stack splits a
UDP super-datagram it reads (gso_split) and may write coalesced replies as one.
"""

import logging

log = logging.getLogger("ztun.tun.device")

# <linux/if_tun.h>: TUNSETOFFLOAD = _IOW('T', 208, unsigned int) and its flags
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
TUN_F_USO4, TUN_F_USO6 = 0x20, 0x40  # Linux 6.2+
TSO = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
USO = TUN_F_USO4 | TUN_F_USO6
OFFLOAD = TSO | USO
NAMES = {TUN_F_CSUM: "csum", TUN_F_TSO4: "tso4", TUN_F_TSO6: "tso6", TUN_F_TSO_ECN: "tso_ecn",
         TUN_F_USO4: "uso4", TUN_F_USO6: "uso6"}
# What negotiate() asks for, most first: the kernel refuses (EINVAL) a flag it does not know.
_LADDER = (OFFLOAD, TSO, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6, TUN_F_CSUM, 0)


def names(flags: int) -> str:
    """The flags as `ip -d link` would name them, comma-separated ("none" for 0)."""
    return ",".join(n for f, n in NAMES.items() if flags & f) or "none"


def negotiate(fd: int, name: str, ioctl=None) -> int:
    """Enable checksum, TSO and USO offload on the TUN fd, falling back to what the kernel accepts; return the flags set.

    ioctl (fcntl.ioctl by default) is injectable for tests.
    """
    if ioctl is None:
        import fcntl  # POSIX only: this module also imports on Windows

        ioctl = fcntl.ioctl
    for flags in _LADDER:
        try:
            ioctl(fd, TUNSETOFFLOAD, flags)
        except OSError as e:
            log.debug("TUNSETOFFLOAD 0x%x on %s: %s", flags, name, e)
            continue
        log.info("offload on %s: %s", name, names(flags))
        return flags
    return 0


def uso_usable(device) -> bool:
    """Whether device (a TunDevice) takes UDP super-datagrams: vnet headers on, and USO for IPv4 and IPv6.

    Only then may the stack coalesce UDP replies into one write.
    """
    return device.vnet_hdr and device.offload & USO == USO
