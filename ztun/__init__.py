"""ztun: a transparent TUN gateway with a NAT-based system stack and a Cython hot path."""

__version__ = "0.1.0"
