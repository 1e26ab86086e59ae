"""The packet core: compiled Cython modules, or their pure-Python twins.

This is the one place that chooses. ZTUN_NO_EXTENSIONS=1 (or a compiled module that
cannot load) selects the twins; IMPLEMENTATION says which is in use.
"""

import os

from .batch import PacketBatch
from .defs import HEADROOM, MAX_PACKET, META_DTYPE

IMPLEMENTATION = "python"
if os.environ.get("ZTUN_NO_EXTENSIONS", "") in ("", "0"):
    try:
        from . import checksum, nat, packet

        IMPLEMENTATION = "cython"
    except ImportError:
        pass
if IMPLEMENTATION == "python":
    from . import checksum_py as checksum
    from . import nat_py as nat
    from . import packet_py as packet

NatTable = nat.NatTable
parse_batch = packet.parse_batch
verify_checksums = packet.verify_checksums

__all__ = [
    "HEADROOM",
    "IMPLEMENTATION",
    "MAX_PACKET",
    "META_DTYPE",
    "NatTable",
    "PacketBatch",
    "checksum",
    "nat",
    "packet",
    "parse_batch",
    "verify_checksums",
]
