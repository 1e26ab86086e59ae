"""The appliance's configuration (a package: this first step only moves config.py to config/parse.py)."""

from .parse import *  # noqa: F401,F403
