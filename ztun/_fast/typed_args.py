"""The checks a compiled function's typed arguments make on the way in, made by hand in the twins,
so that both raise the same exception for the same bad argument (tests/test_fast_parity.py)."""

import operator

from ..errors import PacketError

_SIGNED = frozenset("bhilqn")
_UNSIGNED = frozenset("BHILQNc")  # Cython takes a char buffer ('c', ctypes) as uint8_t


def uint(value, bits: int) -> int:
    """value as a uintN_t argument takes it: an integer (TypeError) that fits in bits (OverflowError)."""
    v = operator.index(value)
    if v < 0 or v >> bits:
        raise OverflowError(f"{v} does not fit in uint{bits}_t")
    return v


def sint(value, bits: int) -> int:
    """value as an intN_t argument (int: 32) takes it: an integer (TypeError) that fits (OverflowError)."""
    v = operator.index(value)
    if not -(1 << (bits - 1)) <= v < 1 << (bits - 1):
        raise OverflowError(f"{v} does not fit in int{bits}_t")
    return v


def index(value) -> int:
    """value as a Py_ssize_t or int argument takes it: an integer, TypeError otherwise."""
    return operator.index(value)


def real(value) -> float:
    """value as a double argument takes it: a number, TypeError otherwise (float() would parse a str)."""
    t = type(value)
    if not (hasattr(t, "__float__") or hasattr(t, "__index__")) or isinstance(value, (str, bytes, bytearray)):
        raise TypeError(f"must be real number, not {t.__name__}")
    return float(value)


def array(obj, kind: str, itemsize: int, name: str, writable: bool = False) -> memoryview:
    """obj as a typed memoryview argument (T[::1] not None; const T unless writable) takes it:
    a 1-D C-contiguous buffer of integers, signed (kind "i") or unsigned ("u"), of itemsize bytes.

    TypeError for None or what is not a buffer, ValueError for the wrong shape or item type
    or a read-only buffer where the function writes.
    """
    if obj is None:
        raise TypeError(f"Argument '{name}' must not be None")
    mv = memoryview(obj)
    if mv.ndim != 1:
        raise ValueError(f"Buffer has wrong number of dimensions (expected 1, got {mv.ndim})")
    if mv.itemsize != itemsize or mv.format.lstrip("@=") not in (_SIGNED if kind == "i" else _UNSIGNED):
        raise ValueError(f"Buffer dtype mismatch: {name} must hold {itemsize}-byte {'un' if kind == 'u' else ''}signed integers, got {mv.format!r}")
    if not mv.c_contiguous:
        raise ValueError(f"{name} is not C-contiguous")
    if writable and mv.readonly:
        raise ValueError(f"{name} is read-only")
    return mv


def data(buf, name: str = "buf") -> bytes:
    """buf as a const uint8_t[::1] argument takes it, as bytes."""
    return array(buf, "u", 1, name).tobytes()


def check_count(batch) -> int:
    """batch.count, or PacketError if it is not 0..slots (before anything is touched)."""
    count = batch.count
    if not 0 <= count <= batch.data.shape[0]:
        raise PacketError(f"batch.count {count} outside 0..{batch.data.shape[0]}")
    return count


def check_meta(batch, itemsize: int) -> None:
    """TypeError unless batch.meta has the Meta record layout (as the compiled modules check it)."""
    if batch.meta.dtype.itemsize != itemsize:
        raise TypeError("batch.meta does not have the Meta layout")


def check_slot(i, slots: int) -> int:
    """i as a slot index: an integer (TypeError) in 0..slots-1 (IndexError)."""
    i = operator.index(i)
    if not 0 <= i < slots:
        raise IndexError(f"slot {i} outside the batch")
    return i
