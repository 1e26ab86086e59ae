"""Fixtures shared by the unit tests: every packet-core test runs on both implementations."""

import importlib
import os
import types

import pytest

NO_EXT = os.environ.get("ZTUN_NO_EXTENSIONS", "") not in ("", "0")


def _module(name: str, kind: str):
    """ztun._fast.NAME compiled (kind "cython": skipped with ZTUN_NO_EXTENSIONS=1, a failure if
    missing or not compiled) or its pure-Python twin (kind "python")."""
    if kind == "cython" and NO_EXT:
        pytest.skip("ZTUN_NO_EXTENSIONS=1: testing the pure-Python twin only")
    try:
        mod = importlib.import_module(f"ztun._fast.{name}{'' if kind == 'cython' else '_py'}")
    except ImportError as e:
        pytest.fail(f"compiled module ztun._fast.{name} is missing ({e}); build it with `pip install -e .`")
    if kind == "cython" and not mod.__file__.endswith((".so", ".pyd")):
        pytest.fail(f"ztun._fast.{name} is not compiled: {mod.__file__}")
    return mod


def _load(kind: str) -> types.SimpleNamespace:
    names = ("checksum", "packet", "nat", "gso", "build", "icmp")
    return types.SimpleNamespace(kind=kind, **{name: _module(name, kind) for name in names})


@pytest.fixture(scope="session", params=["cython", "python"])
def impl(request):
    """The compiled packet core, then the pure-Python twin."""
    if request.param == "cython" and NO_EXT:
        pytest.skip("ZTUN_NO_EXTENSIONS=1: testing the pure-Python twin only")
    return _load(request.param)


@pytest.fixture(scope="session")
def both():
    """The compiled core and the twin together, for tests that compare them."""
    if NO_EXT:
        pytest.skip("ZTUN_NO_EXTENSIONS=1: nothing compiled to compare with")
    return _load("cython"), _load("python")


@pytest.fixture(scope="session")
def fast_module():
    """_module(name, kind): one compiled module or its twin, for test files that parametrize their own."""
    return _module
