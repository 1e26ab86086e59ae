"""Fail unless the installed ztun imports its compiled core (run by cibuildwheel's test step)."""

import ztun
import ztun._fast as fast

print(f"ztun {ztun.__version__} from {ztun.__file__}: {fast.IMPLEMENTATION}")
if fast.IMPLEMENTATION != "cython":
    raise SystemExit("the wheel's compiled core did not load")
