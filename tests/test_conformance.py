"""The conformance helper itself: it finds each way a class can differ from a protocol, and accepts the ways to conform."""

from typing import Protocol

import pytest
from conformance import assert_conforms, conformance_problems


class Shape(Protocol):
    size: int
    """An attribute."""

    @property
    def label(self) -> str:
        """A read-only attribute, as a property."""

    def grow(self, by: int, *, twice: bool = False) -> None:
        """A method."""

    @classmethod
    def make(cls, size: int) -> "Shape":
        """A classmethod."""


class Base:
    label = "base"

    def __init__(self, size):
        self.size = size

    def grow(self, by, *, twice=False):
        pass

    @classmethod
    def make(cls, size):
        return cls(size)


class Good(Base):
    """Conforms through its base: __init__ runs the base's, which assigns size."""

    def __init__(self, size):
        super().__init__(size)


def problems(cls, instance=None) -> str:
    return "\n".join(conformance_problems(cls, Shape, instance))


def test_a_conforming_class_passes():
    assert_conforms(Base, Shape)
    assert_conforms(Good, Shape, instance=Good(3))
    assert_conforms(type("Slotted", (Base,), {"__slots__": ("size",), "__init__": lambda self: None}), Shape)


def test_a_missing_method():
    cls = type("NoGrow", (), {"label": "x", "size": 1, "make": Base.__dict__["make"]})
    assert "lacks method grow()" in problems(cls)


def test_a_renamed_parameter():
    class Renamed(Base):
        def grow(self, amount, *, twice=False):
            pass

    assert "Renamed.grow parameters" in problems(Renamed)


def test_a_changed_default_or_kind():
    class Default(Base):
        def grow(self, by, *, twice=True):
            pass

    class Positional(Base):
        def grow(self, by, twice=False):
            pass

    assert "Default.grow parameters" in problems(Default)
    assert "Positional.grow parameters" in problems(Positional)


def test_a_method_of_another_kind():
    class Static(Base):
        @staticmethod
        def make(size):
            return Base(size)

    assert "Static.make is a staticmethod, the protocol's a classmethod" in problems(Static)


def test_a_missing_attribute():
    class NoSize(Base):
        def __init__(self, size):  # does not call the base's __init__
            self.length = size

    class Sometimes(Base):
        def __init__(self, size):
            if size:
                self.size = size

    assert "NoSize lacks attribute size" in problems(NoSize)
    assert "Sometimes lacks attribute size" in problems(Sometimes)
    assert "lacks attribute size" not in problems(Sometimes, instance=Sometimes(1))  # the object has it


def test_an_attribute_of_the_wrong_type():
    class Wrong(Base):
        size = "big"

    assert "Wrong.size is 'big', not a int" in problems(Wrong)
    assert "is 'big'" in problems(Base, instance=Base("big"))


def test_only_protocols_and_objects_of_the_class():
    with pytest.raises(TypeError):
        conformance_problems(Base, Base)
    with pytest.raises(TypeError):
        conformance_problems(Good, Shape, instance=Base(1))
