"""The compiled NatTable's lock (shared with the TUN pump's thread) is never held while Python
code can run: a garbage collection (its callbacks, finalizers) or another thread taking the GIL
there could call into the table, or wait for the pump, and the lock would never be released."""

import subprocess
import sys
import textwrap

import pytest

from ztun._fast import nat as nat_module

pytestmark = pytest.mark.skipif(nat_module.__name__ != "ztun._fast.nat",
                                reason="the lock is the compiled NatTable's (ZTUN_NO_EXTENSIONS=1 has the twin)")

SCRIPT = textwrap.dedent(
    r"""
    import gc, sys
    from ztun._fast.nat import NatTable
    from ztun._fast.nat_config import NatConfig

    nat = NatTable(NatConfig.from_prefixes("198.18.0.1/28", None, port4=4000, capacity=8))
    fid = nat.insert(6, "198.19.5.5", 40000, "198.19.0.7", 80)
    calls = []
    # every allocation of a tracked object collects, and the callback calls into the table
    gc.callbacks.append(lambda phase, info: calls.append(nat.lookup(6, "198.19.5.5", 40000, "198.19.0.7", 80)))
    gc.set_threshold(1)
    junk = [[] for _ in range(3)]
    assert calls, "no collection ran"  # the callback works: an allocation under the lock would run it
    what = sys.argv[1]
    if what == "free_ports":
        nat.free_ports()
    elif what == "missing":
        for call in (nat.delete, nat.release, nat.flow, nat.endpoints, nat.allow, nat.block, lambda f: nat.touch(f, 1.0)):
            try:
                call(7)
            except KeyError:
                pass
            else:
                raise SystemExit(f"{call} took flow 7")
    elif what == "allowed":
        nat.allow(fid)
        try:
            nat.release(fid)
        except ValueError:
            pass
    elif what == "exists":
        try:
            nat.insert(6, "198.19.5.5", 40000, "198.19.0.7", 80)
        except ValueError:
            pass
    gc.set_threshold(700)
    gc.callbacks.clear()
    print("ok")
    """
)


@pytest.mark.parametrize("what", ["free_ports", "missing", "allowed", "exists"])
def test_no_python_runs_under_the_lock(what):
    try:
        r = subprocess.run([sys.executable, "-c", SCRIPT, what], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: deadlocked on the NAT table's lock (a collection ran while it was held)")
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
