"""ztun._fast chooses each module once: IMPLEMENTATIONS says what each one is, IMPLEMENTATION sums it up,
the loop asks _fast for its socket worker, and the wheel check names the modules whose twin stands in."""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ztun._fast as fast
from ztun._fast import sockq_py
from ztun.loop import Loop

ROOT = Path(__file__).resolve().parent.parent
NO_EXT = os.environ.get("ZTUN_NO_EXTENSIONS", "") not in ("", "0")
ALL = fast.CORE + ("tunio", "utunio", "sockq", "relay", "udptable", "handshake")
HERE = fast.CORE + fast.PLATFORM.get("linux" if sys.platform.startswith("linux") else sys.platform, ())

# Prints what a fresh interpreter chose; a meta path finder can refuse to load named compiled modules.
_REPORT = """
import importlib.abc, json, sys
REFUSE = set(sys.argv[1:])

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.rpartition(".")[2] in REFUSE and name.startswith("ztun._fast."):
            raise ImportError(f"refused: {name}")

sys.meta_path.insert(0, Refuse())
import ztun._fast as fast
modules = {name: getattr(getattr(fast, name), "__file__", None) for name in fast.IMPLEMENTATIONS}
try:
    import ztun._fast.sockq  # rebinds the package's attribute sockq to the compiled module: the choice stands
except ImportError:
    pass
from ztun.loop import Loop
with Loop() as lp:
    worker = type(lp.sockq).__module__
print(json.dumps({"map": fast.IMPLEMENTATIONS, "summary": fast.IMPLEMENTATION, "worker": worker, "files": modules}))
"""


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZTUN_")}
    return {**env, **extra}


def _chosen(refuse=(), env=None, **extra):
    """What a fresh interpreter chose (env: this one's ZTUN_ variables, else none but extra)."""
    env = {**os.environ, **extra} if env == "this" else _env(**extra)
    out = subprocess.run([sys.executable, "-c", _REPORT, *refuse], env=env, capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    files = got.pop("files")
    for name, kind in got["map"].items():  # each module attribute is what the mapping says
        if kind is None:
            assert name not in HERE
            assert files[name] is None or files[name].endswith("_py.py"), (name, files[name])
        else:
            assert name in HERE
            assert files[name].endswith((".so", ".pyd")) == (kind == "cython"), (name, files[name])
    return got


def test_the_mapping_says_what_each_module_is():
    """In a fresh interpreter with this run's ZTUN_ variables: a later `import ztun._fast.sockq` (the
    sockq tests) rebinds the package's attribute, though not the loop's choice (test below)."""
    got = _chosen(env="this")
    assert set(got["map"]) == set(ALL) == set(fast.IMPLEMENTATIONS)
    kinds = {kind for kind in got["map"].values() if kind}
    assert got["summary"] == (kinds.pop() if len(kinds) == 1 else "mixed")


def test_setup_builds_what_the_chooser_expects():
    values = {}
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and node.targets[0].id in ("CORE", "PLATFORM"):
            values[node.targets[0].id] = ast.literal_eval(node.value)
    assert tuple(values["CORE"]) == fast.CORE
    assert {k: tuple(v) for k, v in values["PLATFORM"].items()} == fast.PLATFORM


def _expect(kind, **other):
    return {name: (None if name not in HERE else other.get(name, kind)) for name in ALL}


@pytest.mark.skipif(NO_EXT, reason="ZTUN_NO_EXTENSIONS=1: nothing compiled to choose")
def test_compiled_everywhere():
    got = _chosen()
    worker = "ztun._fast.sockq" if "sockq" in HERE else "ztun._fast.sockq_py"  # Windows: the calls at once
    assert got == {"map": _expect("cython"), "summary": "cython", "worker": worker}


@pytest.mark.skipif(NO_EXT, reason="ZTUN_NO_EXTENSIONS=1: nothing compiled to choose")
@pytest.mark.skipif("sockq" not in HERE, reason=f"{sys.platform} builds no compiled sockq")
def test_sockq_off_selects_its_twin_and_says_so():
    got = _chosen(ZTUN_SOCKQ="0")
    assert got == {"map": _expect("cython", sockq="python"), "summary": "mixed", "worker": "ztun._fast.sockq_py"}


def test_no_extensions_selects_every_twin():
    got = _chosen(ZTUN_NO_EXTENSIONS="1")
    assert got == {"map": _expect("python"), "summary": "python", "worker": "ztun._fast.sockq_py"}


@pytest.mark.skipif(NO_EXT, reason="ZTUN_NO_EXTENSIONS=1: nothing compiled to choose")
@pytest.mark.parametrize("refused", [m for m in ("tunio", "utunio", "nat") if m in HERE])
def test_a_module_that_does_not_load_is_its_twin_alone(refused):
    """The rest stay compiled (utunio no longer falls with tunio), and the core is "mixed", not "cython"."""
    got = _chosen([refused])
    assert got["map"] == _expect("cython", **{refused: "python"})
    assert got["summary"] == "mixed"


def test_the_loop_asks_fast_for_its_worker():
    tree = ast.parse((ROOT / "ztun" / "loop.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "_fast"
                for alias in node.names}
    assert imported == {"socket_queue", "handshakes"}
    with Loop() as lp:
        assert type(lp.sockq) is fast._sockq.SocketQueue
        assert type(lp.handshakes) is fast._handshake.Handshakes
    with Loop() as lp:
        pass
    assert type(lp.sockq) is sockq_py.SocketQueue  # closed, never started one: the calls are made at once


def _check_wheel(**env):
    return subprocess.run([sys.executable, str(ROOT / ".ci" / "check_wheel.py")], env=_env(**env), capture_output=True, text=True)


@pytest.mark.skipif(NO_EXT, reason="ZTUN_NO_EXTENSIONS=1: nothing compiled to check")
def test_the_wheel_check_passes_a_compiled_core():
    run = _check_wheel()
    assert run.returncode == 0, run.stderr
    assert "cython packet core" in run.stdout


def test_the_wheel_check_names_the_twins():
    run = _check_wheel(ZTUN_SOCKQ="0") if not NO_EXT and "sockq" in HERE else _check_wheel(ZTUN_NO_EXTENSIONS="1")
    assert run.returncode != 0
    assert "sockq" in run.stderr


def test_version_names_each_module_when_mixed():
    if NO_EXT or "sockq" not in HERE:
        pytest.skip("no compiled sockq here to mix with its twin")
    code = "from ztun.appliance.cli import main; main(['version'])"
    out = subprocess.run([sys.executable, "-c", code], env=_env(ZTUN_SOCKQ="0"), capture_output=True, text=True).stdout
    assert "mixed packet core" in out and "sockq python" in out and "nat cython" in out
