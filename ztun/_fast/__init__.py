"""The packet core: compiled Cython modules, or their pure-Python twins.

This is the one place that chooses. ZTUN_NO_EXTENSIONS=1 (or a compiled module that
cannot load) selects the twins; IMPLEMENTATION says which is in use.
"""

import os
import sys

from .batch import PacketBatch
from .defs import HEADROOM, MAX_PACKET, META_DTYPE

IMPLEMENTATION = "python"
if os.environ.get("ZTUN_NO_EXTENSIONS", "") in ("", "0"):
    try:
        from . import build, checksum, gso, icmp, nat, packet

        IMPLEMENTATION = "cython"
    except ImportError:
        pass
if IMPLEMENTATION == "python":
    from . import build_py as build
    from . import checksum_py as checksum
    from . import gso_py as gso
    from . import icmp_py as icmp
    from . import nat_py as nat
    from . import packet_py as packet

# Device I/O exists where the platform has it (Linux TUN, macOS utun; Windows uses ctypes).
# (No placeholder names before these imports: `from . import x` returns an existing attribute x.)
if sys.platform == "win32":
    tunio = utunio = None
elif IMPLEMENTATION == "cython":
    try:
        from . import tunio, utunio
    except ImportError:  # pragma: no cover - a build without them
        from . import tunio_py as tunio
        from . import utunio_py as utunio
else:
    from . import tunio_py as tunio
    from . import utunio_py as utunio

# Connect, shutdown and close on a worker thread (POSIX, compiled); ZTUN_SOCKQ=0 makes them
# at once on the loop's thread, as the twin does, for comparison.
if IMPLEMENTATION == "cython" and sys.platform != "win32" and os.environ.get("ZTUN_SOCKQ", "1") not in ("0", "off"):
    try:
        from . import sockq
    except ImportError:  # pragma: no cover - a build without it
        from . import sockq_py as sockq
else:
    from . import sockq_py as sockq

NatTable = nat.NatTable
parse_batch = packet.parse_batch
verify_checksums = packet.verify_checksums
echo_batch = icmp.echo_batch

__all__ = [
    "HEADROOM",
    "IMPLEMENTATION",
    "MAX_PACKET",
    "META_DTYPE",
    "NatTable",
    "PacketBatch",
    "build",
    "checksum",
    "echo_batch",
    "gso",
    "icmp",
    "nat",
    "packet",
    "parse_batch",
    "sockq",
    "tunio",
    "utunio",
    "verify_checksums",
]
