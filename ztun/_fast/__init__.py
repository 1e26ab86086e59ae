"""The packet core: compiled Cython modules, or their pure-Python twins.

This is the one place that chooses, module by module: the compiled module where this platform
builds one and it loads, else its twin. ZTUN_NO_EXTENSIONS=1 selects every twin; ZTUN_SOCKQ=0
selects the twin of sockq (connect, shutdown and close made at once on the loop's thread, for
comparison); ZTUN_RELAY=loop the twin of the relay engine (relays on the loop, in Python);
ZTUN_UDP=python the twin of the UDP session table (every datagram through Python, for comparison);
ZTUN_HANDSHAKE=python the twin of the SOCKS5 negotiation engine (each exchange a loop callback);
ZTUN_TUN_PUMP=0 no TUN pump (the loop reads the TUN, as the twins do); ZTUN_PUMP_SPIN and
ZTUN_RELAY_SPIN how long (us) the pump and the relay engine's thread poll before they sleep.
IMPLEMENTATIONS says what each module is, IMPLEMENTATION sums it up.
"""

import importlib
import os
import sys

from . import sockq_py
from .batch import PacketBatch
from .defs import HEADROOM, MAX_PACKET, META_DTYPE

CORE = ("checksum", "packet", "nat", "gso", "build", "icmp")
# The device I/O and socket worker modules setup.py compiles on each platform (tests/test_fast_parity.py
# keeps the two in step): tunio is Linux TUN, utunio the macOS utun framing (also built on Linux
# for its socketpair tests), sockq a worker thread for connect/shutdown/close, relay the relay
# engine (a native thread with its own epoll), udptable the UDP sessions after their first datagram,
# tunpump the thread that reads the TUN and runs the NAT (no twin: without it the loop reads the TUN), handshake the
# thread that connects to a SOCKS5 proxy and negotiates (its twin runs on the loop). Windows reads
# Wintun's rings through ctypes and makes the socket calls at once.
PLATFORM = {"linux": ("tunio", "utunio", "sockq", "relay", "udptable", "tunpump", "handshake"), "darwin": ("utunio", "sockq")}
# Where a platform compiles none of these, the twin still serves; on Windows the TUN twins do not.
_NO_TWIN = {"win32": ("tunio", "utunio")}

_platform = "linux" if sys.platform.startswith("linux") else sys.platform
_compiled_here = CORE + PLATFORM.get(_platform, ())
_no_ext = os.environ.get("ZTUN_NO_EXTENSIONS", "") not in ("", "0")
_sockq_off = os.environ.get("ZTUN_SOCKQ", "1") in ("0", "off")
_relay_loop = os.environ.get("ZTUN_RELAY", "") == "loop"
_udp_python = os.environ.get("ZTUN_UDP", "") == "python"
_handshake_python = os.environ.get("ZTUN_HANDSHAKE", "") == "python"
_pump_off = os.environ.get("ZTUN_TUN_PUMP", "1") in ("0", "off")


def _choose(name: str):
    """(module, kind) for name: kind "cython" or "python", or None where this platform compiles no such module."""
    if name not in _compiled_here:
        twin = None if name in _NO_TWIN.get(_platform, ()) else importlib.import_module(f"{__name__}.{name}_py")
        return twin, None
    if not (_no_ext or (name == "sockq" and _sockq_off) or (name == "relay" and _relay_loop)
            or (name == "udptable" and _udp_python) or (name == "handshake" and _handshake_python)):
        try:
            return importlib.import_module(f"{__name__}.{name}"), "cython"
        except ImportError:
            pass
    return importlib.import_module(f"{__name__}.{name}_py"), "python"


_chosen = {name: _choose(name) for name in CORE + ("tunio", "utunio", "sockq", "relay", "udptable", "handshake")}
IMPLEMENTATIONS: dict[str, str | None] = {name: kind for name, (_, kind) in _chosen.items()}
_kinds = {kind for kind in IMPLEMENTATIONS.values() if kind is not None}
IMPLEMENTATION = _kinds.pop() if len(_kinds) == 1 else "mixed"

(checksum, packet, nat, gso, build, icmp, tunio, utunio, sockq, relay, udptable,
 handshake) = (module for module, _ in _chosen.values())
_sockq = sockq  # the choice, kept apart from the attribute that importing ztun._fast.sockq rebinds
_handshake = handshake  # the same for ztun._fast.handshake


def _compiled_only(name: str):
    """The compiled module name where this platform builds one and it loads, else None (it has no twin)."""
    if name not in _compiled_here or _no_ext:
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None


# ZTUN_TUN_PUMP=0 leaves the pump out (the loop reads the TUN), for comparison.
tunpump = None if _pump_off else _compiled_only("tunpump")


def describe() -> str:
    """"<IMPLEMENTATION> packet core", naming what each module is when it is mixed (`ztun-appliance version`)."""
    if IMPLEMENTATION != "mixed":
        return f"{IMPLEMENTATION} packet core"
    return "mixed packet core: " + ", ".join(f"{name} {kind}" for name, kind in IMPLEMENTATIONS.items() if kind)


def socket_queue(loop, epoll_fd: int = -1, inline: bool = False):
    """The socket worker for loop: a SocketQueue of the chosen sockq (epoll_fd: the loop's epoll, -1
    without one). inline=True gives the twin's, which makes every call at once: for a closed loop."""
    return (sockq_py if inline else _sockq).SocketQueue(loop, epoll_fd=epoll_fd)


def handshakes(loop, capacity: int = 4096):
    """The SOCKS5 negotiation engine for loop: a Handshakes of the chosen handshake module."""
    return _handshake.Handshakes(loop, capacity)


NatTable = nat.NatTable
parse_batch = packet.parse_batch
verify_checksums = packet.verify_checksums
echo_batch = icmp.echo_batch

__all__ = [
    "CORE",
    "HEADROOM",
    "IMPLEMENTATION",
    "IMPLEMENTATIONS",
    "MAX_PACKET",
    "META_DTYPE",
    "NatTable",
    "PLATFORM",
    "PacketBatch",
    "build",
    "checksum",
    "describe",
    "echo_batch",
    "gso",
    "handshake",
    "handshakes",
    "icmp",
    "nat",
    "packet",
    "parse_batch",
    "relay",
    "sockq",
    "socket_queue",
    "tunio",
    "utunio",
    "verify_checksums",
]
