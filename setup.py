"""Build the Cython extensions of ztun._fast (metadata lives in pyproject.toml)."""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

TRACE = os.environ.get("ZTUN_CYTHON_TRACE") == "1"
MODULES = [m for m in ["checksum", "packet", "nat", "gso", "build", "icmp", "tunio", "utunio"] if os.path.exists(f"ztun/_fast/{m}.pyx")]

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
