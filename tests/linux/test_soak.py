"""The soak for two minutes: bench/soak.py's mixed load through the appliance while faults are injected.

The soak builds and removes its own namespaces; this test checks what it prints and its exit
code (non-zero on a corrupted byte, a failure no fault explains, or an appliance that did not
stop cleanly). ZTUN_SOAK_CORRUPT=1 in the environment makes it fail (a corrupted byte).
"""

import signal
import subprocess
import sys

import pytest
from conftest import REPO, need

DURATION = 120
KINDS = ("http", "short", "udp", "dns")
FAULTS = ("proxy_restart", "http_restart", "route_change", "link_flap", "reload")


@pytest.mark.timeout(DURATION + 240)
def test_soak_two_minutes(tmp_path):
    need("microsocks", "microsocks")
    need("ss", "iproute2")
    p = subprocess.Popen([sys.executable, str(REPO / "bench" / "soak.py"), "--duration", str(DURATION),
                          "--log-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=DURATION + 150)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)  # the soak removes its namespaces on SIGTERM; a SIGKILL would leave them
        out, err = p.communicate(timeout=60)
        pytest.fail(f"the soak did not end within {DURATION + 150}s (logs in {tmp_path}):\n{out}{err}")
    metrics = {}
    for line in out.splitlines():
        name, value, _unit = line.split()
        metrics[name] = value
    assert p.returncode == 0, f"soak exited {p.returncode} (logs in {tmp_path}):\n{out}{err}"
    assert metrics["corrupted_bytes"] == "0", out
    assert metrics["failures_unexplained"] == "0", out
    for kind in KINDS:
        assert int(metrics[f"requests_{kind}"]) > 0, out
    for fault in FAULTS:
        assert int(metrics[f"faults_{fault}"]) > 0, out
