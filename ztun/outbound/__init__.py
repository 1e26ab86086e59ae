"""Outbounds: where the system stack's flows go (direct, SOCKS5, block) and the relay between sockets."""
