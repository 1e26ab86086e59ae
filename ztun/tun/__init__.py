"""The TUN side of ztun: options, devices, the readiness loop and the system stack."""
