"""The host side of ztun: routes, addresses and policy rules, per platform."""
