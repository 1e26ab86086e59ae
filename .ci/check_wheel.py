"""Fail unless the installed ztun loads every compiled module its platform has (run by cibuildwheel's test step)."""

import ztun
import ztun._fast as fast

print(f"ztun {ztun.__version__} from {ztun.__file__}: {fast.describe()}")
missing = [name for name, kind in fast.IMPLEMENTATIONS.items() if kind == "python"]
if missing:
    raise SystemExit(f"the wheel's compiled modules did not load, their twins stand in: {', '.join(missing)}")
