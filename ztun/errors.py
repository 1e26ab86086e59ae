"""The one exception hierarchy of ztun, raised by compiled and pure-Python code alike."""

import os


class ZtunError(Exception):
    """Base of every error ztun raises on purpose."""


class PacketError(ZtunError, ValueError):
    """A packet or buffer handed to ztun is not what the call needs."""


class ConfigError(ZtunError, ValueError):
    """A configuration value is wrong; the message names the field and why."""


class _OSFlavoured(ZtunError):
    """An error from the operating system, carrying errno and its text."""

    def __init__(self, message: str, errno: int | None = None):
        self.errno = errno
        self.strerror = os.strerror(errno) if errno else None
        super().__init__(f"{message}: {self.strerror} (errno {errno})" if errno else message)


class TunError(_OSFlavoured):
    """Creating, configuring or using the TUN device failed."""


class RouteError(_OSFlavoured):
    """Adding or removing an address, route or rule failed."""


class NatError(ZtunError):
    """The NAT flow table refused an operation."""


class NatTableFull(NatError):
    """Every flow slot of the NAT table is in use."""


class NatPortsExhausted(NatError):
    """No NAT port is free on any of the stack's "next" addresses."""
