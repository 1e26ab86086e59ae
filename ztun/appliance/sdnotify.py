"""systemd's readiness protocol (sd_notify): READY=1, STOPPING=1, STATUS=... to $NOTIFY_SOCKET.

A few lines instead of a dependency: the protocol is one datagram of newline-separated
VAR=value assignments to the unix socket named by $NOTIFY_SOCKET (a path, or an abstract
address written with a leading "@"). Without systemd the variable is unset and notify()
does nothing; a failure to send is logged at debug and never raised, so the appliance runs
the same with or without a service manager.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("ztun.sdnotify")


def notify(state: str, *, environ=None) -> bool:
    """Send state (e.g. "READY=1" or "STATUS=forwarding\\nREADY=1") to systemd; True if it was sent."""
    address = (os.environ if environ is None else environ).get("NOTIFY_SOCKET")
    if not address or not hasattr(socket, "AF_UNIX"):  # systemd only; Windows has no AF_UNIX here
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    elif not address.startswith("/"):
        log.debug("sd_notify: unsupported NOTIFY_SOCKET %r (only unix socket paths and @abstract names)", address)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # a full receive queue must not stall the caller
            sock.sendto(state.encode("utf-8"), address)
    except (OSError, UnicodeError) as e:
        log.debug("sd_notify %r to %r failed: %s", state, address, e)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """READY=1, with an optional STATUS= line for `systemctl status`."""
    return notify(_status(status) + "READY=1")


def stopping(status: str | None = None) -> bool:
    """STOPPING=1: systemd then expects the process to exit."""
    return notify(_status(status) + "STOPPING=1")


def status(text: str) -> bool:
    """STATUS=text, shown by `systemctl status`."""
    return notify(_status(text).rstrip("\n"))


def _status(text: str | None) -> str:
    # One line: a newline inside would start another (bogus) assignment.
    return "STATUS=" + " ".join(text.splitlines()) + "\n" if text else ""
