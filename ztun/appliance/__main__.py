"""`python -m ztun.appliance`: the same as the `ztun-appliance` command."""

import sys

from .cli import main

sys.exit(main())
