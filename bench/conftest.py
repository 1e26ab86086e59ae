"""Benchmark fixtures: each micro-benchmark runs on the compiled core and on the twin."""

import importlib
import types

import pytest


@pytest.fixture(scope="session", params=["cython", "python"])
def impl(request):
    suffix = "" if request.param == "cython" else "_py"
    mods = {n: importlib.import_module(f"ztun._fast.{n}{suffix}") for n in ("checksum", "packet", "nat")}
    if request.param == "cython" and not mods["nat"].__file__.endswith((".so", ".pyd")):
        pytest.fail("the compiled core is not built")
    return types.SimpleNamespace(kind=request.param, **mods)
