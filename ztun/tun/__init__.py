"""The TUN device layer: TunOptions, the TunDevice protocol and one device per platform (Linux, macOS utun, Windows Wintun, an adopted fd)."""
