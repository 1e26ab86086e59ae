"""The appliance's configuration: a TOML file plus command-line overrides, validated into frozen dataclasses.

Every default lives once, in the dataclasses of schema.py (and in TunOptions for [tun]). A wrong
key, type or value raises ConfigError naming the key path (`route.rules[2].port`), its line
in the file where it can be found, and what is expected. The README's "Configuration"
section documents every key; `format_config()` prints the effective configuration as TOML.

schema.py   the dataclasses, limits and the keys of each table
parse.py    reading the file; build() validates a document, table by table (routing.py: outbounds and rules)
values.py   one reader a kind of value; locate.py: the key path, line or flag an error names
flags.py    command-line overrides and load()
render.py   format_config()
"""

from .flags import load, set_key, set_outbound
from .locate import config_error, key_name
from .parse import build, read
from .render import format_config
from .schema import (BUILTIN_OUTBOUNDS, FLAGS, KEYS, MATCHERS, MAX_IDLE_SECONDS, MAX_SECONDS, MIN_FAKE_POOL, OUTBOUND_TYPES,
                     PROTOCOLS, REDACTED, SUN_PATH_MAX, TUN_KEYS, ApiConfig, AppConfig, ControlConfig, DnsConfig, FlowsConfig,
                     GatewayConfig, HealthConfig, LogConfig, MetricsConfig, OutboundConfig, RouteConfig, RuleConfig,
                     control_socket)

__all__ = [
    "ApiConfig", "AppConfig", "ControlConfig", "DnsConfig", "FlowsConfig", "GatewayConfig", "HealthConfig", "LogConfig", "MetricsConfig",
    "OutboundConfig", "RouteConfig", "RuleConfig",
    "BUILTIN_OUTBOUNDS", "FLAGS", "KEYS", "MATCHERS", "MAX_IDLE_SECONDS", "MAX_SECONDS", "MIN_FAKE_POOL", "OUTBOUND_TYPES",
    "PROTOCOLS", "REDACTED", "SUN_PATH_MAX", "TUN_KEYS",
    "build", "config_error", "control_socket", "format_config", "key_name", "load", "read", "set_key", "set_outbound",
]
