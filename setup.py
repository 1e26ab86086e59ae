"""Build the Cython extensions of ztun._fast (metadata lives in pyproject.toml)."""

import os
import sys

from Cython.Build import cythonize
from setuptools import Extension, setup

TRACE = os.environ.get("ZTUN_CYTHON_TRACE") == "1"
CORE = ["checksum", "packet", "nat", "gso", "build", "icmp"]
# Device I/O is POSIX: tunio (Linux TUN) and utunio (macOS utun framing, also built on Linux
# for its socketpair tests), sockq (a worker thread for connect/shutdown/close), relay (the
# relay engine: a native thread with its own epoll, Linux), udptable (UDP sessions after their first
# datagram, sendmmsg/recvmmsg, Linux). Windows
# reads Wintun's rings through ctypes.
PLATFORM = {"linux": ["tunio", "utunio", "sockq", "relay", "udptable", "tunpump", "handshake"], "darwin": ["utunio", "sockq"]}
MODULES = CORE + PLATFORM.get("linux" if sys.platform.startswith("linux") else sys.platform, [])

macros = [("CYTHON_TRACE_NOGIL", "1")] if TRACE else []
extra = [] if os.name == "nt" else ["-O3"]

extensions = [
    Extension(
        f"ztun._fast.{name}",
        [f"ztun/_fast/{name}.pyx"],
        include_dirs=["ztun/_fast/includes"],
        define_macros=macros,
        extra_compile_args=extra,
    )
    for name in MODULES
]

setup(
    ext_modules=cythonize(
        extensions,
        include_path=["ztun/_fast/includes"],
        compiler_directives={
            "language_level": 3,
            "embedsignature": True,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "linetrace": TRACE,
        },
    ),
)
