"""The ztun appliance: the `ztun-appliance` command and the Gateway it runs."""
