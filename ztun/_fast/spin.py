"""How long the native threads (the TUN pump, the relay engine) look for more work before they
sleep, after a wake that found some: ZTUN_PUMP_SPIN and ZTUN_RELAY_SPIN, in microseconds."""

import os

MAX_US = 1000  # a longer spin would cost a core for little: a thread wakes in tens of microseconds
PUMP_US = 50  # ZTUN_PUMP_SPIN's default
RELAY_US = 50  # ZTUN_RELAY_SPIN's default


def spin_us(name: str, default: int) -> int:
    """The environment's name as microseconds 0..MAX_US ("off": 0), default where it is not set;
    ValueError naming the variable for anything else."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw == "off":
        return 0
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_US:
        raise ValueError(f"{name} must be 0..{MAX_US} microseconds (or off), got {raw!r}")
    return value
