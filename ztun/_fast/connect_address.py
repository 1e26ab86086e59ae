"""connect()'s address as the socket worker (sockq.pyx) and its twin both read it."""

import operator


def split_address(address) -> tuple[bytes, int, int, int]:
    """(host, port, flowinfo, scope_id) of (host, port[, flowinfo, scope_id]), host as bytes.

    Refused as connect() refuses them: TypeError for another shape or a number that is not an
    integer, OverflowError for one out of its range, ValueError for a host with a NUL byte (or
    not ASCII). Whether host is an IP literal is the caller's inet_pton to say.
    """
    if not 2 <= len(address) <= 4:
        raise TypeError(f"address must be (host, port[, flowinfo, scope_id]), got {address!r}")
    host = address[0].encode("ascii") if isinstance(address[0], str) else bytes(address[0])
    if b"\0" in host:
        raise ValueError(f"{address[0]!r} has a NUL byte")
    port = operator.index(address[1])
    if not 0 <= port <= 65535:
        raise OverflowError(f"port must be 0-65535, not {port}")
    flowinfo = operator.index(address[2]) if len(address) > 2 else 0
    if not 0 <= flowinfo < 1 << 20:
        raise OverflowError(f"flowinfo must be 0-1048575, not {flowinfo}")
    scope_id = operator.index(address[3]) if len(address) > 3 else 0
    if not 0 <= scope_id < 1 << 32:
        raise OverflowError(f"scope_id must be 0-4294967295, not {scope_id}")
    return host, port, flowinfo, scope_id
