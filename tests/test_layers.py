"""The layers import downward only (docs/architecture.md): a walk over every import of the package.

Python files are read with `ast`; Cython files (.pyx, .pxd) line by line for their `import`
and `cimport` statements. Imports inside functions count too: a lazy import is still an arrow.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ztun"

# Bottom to top. A module may import its own layer and those below it.
LAYERS = (
    ("base", ("ztun", "ztun.errors", "ztun.net")),
    ("fast", ("ztun._fast",)),
    ("loop", ("ztun.loop", "ztun.wsapoll")),
    ("system", ("ztun.system",)),
    ("tun", ("ztun.tun",)),
    ("stack", ("ztun.stack",)),
    ("outbound", ("ztun.outbound",)),
    ("dns", ("ztun.dns",)),
    ("appliance", ("ztun.appliance",)),
)
RANK = {name: i for i, (name, _) in enumerate(LAYERS)}

_CYTHON_IMPORT = re.compile(r"^\s*(?:from\s+(\.*[\w.]*)\s+c?import\s+([\w, ()*]+)|c?import\s+([\w.]+))")


def layer_of(module: str) -> str | None:
    """The layer of a ztun module (the longest matching prefix), None outside ztun."""
    best, best_len = None, -1
    for name, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = name, len(prefix)
    return best


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, target: str, level: int) -> str:
    if level == 0:
        return target
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports_of(path: Path) -> list:
    """(line, imported module) for each import in path; `from X import name` also yields X.name (a submodule or not)."""
    module, is_package = _module_name(path), path.name.startswith("__init__.")
    found = []
    if path.suffix == ".py":
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.module or "", node.level)
                found.append((node.lineno, base))
                found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
        return found
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        m = _CYTHON_IMPORT.match(line)
        if not m:
            continue
        if m.group(1) is not None:
            dots = len(m.group(1)) - len(m.group(1).lstrip("."))
            base = _resolve(module, is_package, m.group(1).lstrip("."), dots)
            found.append((lineno, base))
            names = [n.strip(" ()") for n in m.group(2).split(",")]
            found += [(lineno, f"{base}.{n.split()[0]}") for n in names if n and n != "*"]
        else:
            found.append((lineno, m.group(3)))
    return found


def _sources():
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".pyx", ".pxd") and "__pycache__" not in path.parts:
            yield path


def upward_imports(paths) -> list:
    """`file:line: importer (layer) -> imported (layer)` for each import statement that points to a higher layer."""
    bad = {}
    for path in paths:
        own = layer_of(_module_name(path))
        for lineno, target in imports_of(path):
            theirs = layer_of(target)
            if own is None or theirs is None or RANK[theirs] <= RANK[own]:
                continue
            where = f"{path.relative_to(ROOT)}:{lineno}"
            bad.setdefault(where, f"{where}: {_module_name(path)} ({own}) -> {target} ({theirs})")
    return sorted(bad.values())


def test_every_module_has_a_layer():
    assert [str(p.relative_to(ROOT)) for p in _sources() if layer_of(_module_name(p)) is None] == []


def test_layers_import_downward_only():
    assert upward_imports(_sources()) == []


@pytest.mark.parametrize("source, line", [
    ("ztun/stack/system.py", "from ..outbound.relay import Relay"),
    ("ztun/tun/device_linux.py", "from ..appliance import config"),
    ("ztun/system/router.py", "from ..tun.options import TunOptions"),
    ("ztun/outbound/direct.py", "import ztun.appliance.rules"),
    ("ztun/_fast/nat_py.py", "from ..stack.handler import Verdict"),
    ("ztun/_fast/tunio.pyx", "from ..tun.device import TunDevice"),
    ("ztun/_fast/nat.pyx", "from ztun.stack cimport handler"),
    ("ztun/loop.py", "    from .system import router  # lazily, inside a function"),
])
def test_an_upward_import_is_found(tmp_path, monkeypatch, source, line):
    """The walk itself can fail: each of these arrows, added to a copy of a real module, is reported."""
    copy = tmp_path / source
    copy.parent.mkdir(parents=True)
    text = (ROOT / source).read_text()
    if line.startswith("    "):
        text += f"\n\ndef _added():\n{line}\n"
    else:
        text = f"{line}\n{text}"
    copy.write_text(text)
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert len(upward_imports([copy])) == 1, line
