"""The constants and the Meta record of defs.py match their C mirror in includes/core.pxd."""

import pathlib
import re

import ztun._fast as fast
from ztun._fast import defs

# The source tree's copy: wheels do not ship .pxd files.
PXD = pathlib.Path(__file__).resolve().parents[1] / "ztun" / "_fast" / "includes" / "core.pxd"


def test_pxd_enum_matches_defs():
    text = PXD.read_text()
    block = text.split("cdef enum:")[1].split("\n\n")[0]
    pairs = re.findall(r"^\s+(\w+) = (0x[0-9a-fA-F]+|\d+)$", block, re.M)
    assert len(pairs) > 40
    for name, value in pairs:
        assert getattr(defs, name) == int(value, 0), name


def test_names_cover_codes():
    assert len(defs.REASON_NAMES) == defs.N_REASONS
    assert len(defs.VERDICT_NAMES) == defs.N_VERDICTS
    assert len(defs.STATE_NAMES) == defs.N_STATES == len(defs.DEFAULT_TIMEOUTS)


def test_meta_layout_matches_c(both):
    compiled, _ = both
    size, offsets = compiled.packet._c_layout()
    assert size == defs.META_DTYPE.itemsize
    for name, off in offsets.items():
        assert defs.META_DTYPE.fields[name][1] == off, name


def test_implementation_is_chosen_once():
    assert fast.IMPLEMENTATION in ("cython", "python", "mixed")  # mixed: e.g. ZTUN_SOCKQ=0
    for name in ("checksum", "packet", "nat", "gso", "build", "icmp", "tunio", "utunio"):
        mod = getattr(fast, name)
        if mod is not None:  # tunio/utunio are None on Windows
            assert mod.__file__.endswith((".so", ".pyd")) == (fast.IMPLEMENTATIONS[name] == "cython"), mod
    assert fast.parse_batch is fast.packet.parse_batch
    assert fast.NatTable is fast.nat.NatTable
