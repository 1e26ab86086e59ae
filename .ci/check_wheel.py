"""Fail unless the installed ztun imports its compiled core (run by cibuildwheel's test step)."""

import sys

import ztun
import ztun._fast as fast

print(f"ztun {ztun.__version__} from {ztun.__file__}: {fast.IMPLEMENTATION}")
if fast.IMPLEMENTATION != "cython":
    raise SystemExit("the wheel's compiled core did not load")
if sys.platform != "win32" and not fast.sockq.THREADED:  # Windows makes the socket calls inline
    raise SystemExit("the wheel's socket worker (ztun._fast.sockq) did not load")
