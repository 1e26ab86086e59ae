"""assert_conforms(cls, protocol): a class has every method and attribute a typing.Protocol declares.

The Python counterpart of Go's `var _ Device = (*NativeTun)(nil)`, for any protocol
(devices, routers, stacks, handlers, outbounds):

    from conformance import assert_conforms
    assert_conforms(LinuxRouter, Router)
    assert_conforms(FakeHandler, PacketHandler, instance=FakeHandler())

Methods: every method defined in the protocol's body (and its protocol bases) must be a
method of cls (its own or inherited), of the same kind (plain, classmethod, staticmethod,
property) and with the same parameters after `self`: names, order, kinds (positional,
keyword-only, *args, **kwargs) and defaults. Annotations are not compared: they document,
and the same type is often spelled differently.

Attributes: every name the protocol annotates must be set by cls: as a class attribute,
property or other descriptor, a __slots__ entry, an assignment `self.NAME = ...` that
__init__ always runs (a statement at the top level of its body; __init__ of a base class
counts when the one before it calls super().__init__(...)), or, if instance is given, an
attribute of that instance. A value found (class attribute or on instance) must be of the
annotated type when that is a plain class (bool, int, str, ...).

conformance_problems() returns the list of what is wrong, for tests that expect some.
"""

import ast
import inspect
import textwrap
import typing

_MISSING = object()
_TYPING_INTERNALS = {"__init__", "__subclasshook__", "__init_subclass__", "__class_getitem__"}


def _protocol_bases(protocol) -> list:
    return [b for b in reversed(protocol.__mro__) if b not in (object, typing.Protocol, typing.Generic)
            and getattr(b, "_is_protocol", False)]


def _declared(protocol) -> tuple[dict, dict]:
    """(methods, attributes) of protocol: {name: the protocol's raw member}, {name: annotated type or None}."""
    methods, attributes = {}, {}
    for base in _protocol_bases(protocol):
        try:
            hints = typing.get_type_hints(base)
        except Exception:  # an annotation that does not resolve here: names still count
            hints = dict(getattr(base, "__annotations__", {}))
        for name in base.__dict__.get("__annotations__", {}):
            attributes[name] = hints.get(name)
        for name, member in vars(base).items():
            if name in _TYPING_INTERNALS:
                continue
            func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
            if isinstance(member, property):
                attributes.setdefault(name, None)
            elif inspect.isfunction(func) and func.__qualname__ == f"{base.__qualname__}.{name}":
                methods[name] = member
    for name in methods:
        attributes.pop(name, None)
    return methods, attributes


def _kind(member) -> str:
    if isinstance(member, staticmethod):
        return "staticmethod"
    if isinstance(member, classmethod):
        return "classmethod"
    if isinstance(member, property):
        return "property"
    return "method" if callable(member) else "attribute"


def _parameters(member) -> list:
    """(name, kind, default) of each parameter after self/cls."""
    func = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
    params = list(inspect.signature(func).parameters.values())
    if not isinstance(member, staticmethod):
        params = params[1:]
    return [(p.name, p.kind.description, "(none)" if p.default is p.empty else repr(p.default)) for p in params]


def _static_member(cls, name):
    """cls's member name as written in the class body that defines it (not bound), or _MISSING."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return _MISSING


def _init_assignments(cls) -> set:
    """Names __init__ always assigns to self, following super().__init__ up the MRO."""
    names = set()
    mro = [k for k in cls.__mro__ if k is not object]
    i = next((n for n, k in enumerate(mro) if "__init__" in vars(k)), None)
    while i is not None:
        klass = mro[i]
        try:
            source = textwrap.dedent(inspect.getsource(vars(klass)["__init__"]))
        except (OSError, TypeError):
            return names
        func = ast.parse(source).body[0]
        self_name = func.args.args[0].arg if func.args.args else "self"
        calls_super = False
        for stmt in func.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) else []
            for target in targets:
                for node in ast.walk(target):
                    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == self_name:
                        names.add(node.attr)
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                f = stmt.value.func
                calls_super |= (isinstance(f, ast.Attribute) and f.attr == "__init__" and isinstance(f.value, ast.Call)
                                and isinstance(f.value.func, ast.Name) and f.value.func.id == "super")
        i = next((n for n in range(i + 1, len(mro)) if "__init__" in vars(mro[n])), None) if calls_super else None
    return names


def _slots(cls) -> set:
    out = set()
    for klass in cls.__mro__:
        slots = vars(klass).get("__slots__", ())
        out.update([slots] if isinstance(slots, str) else slots)
    return out


def conformance_problems(cls, protocol, instance=None) -> list:
    """What keeps cls from conforming to protocol (see the module docstring); [] if nothing."""
    if not getattr(protocol, "_is_protocol", False):
        raise TypeError(f"{protocol!r} is not a typing.Protocol")
    if instance is not None and not isinstance(instance, cls):
        raise TypeError(f"instance {instance!r} is not a {cls.__name__}")
    methods, attributes = _declared(protocol)
    where = f"{cls.__module__}.{cls.__qualname__}"
    problems = []
    for name, declared in sorted(methods.items()):
        member = _static_member(cls, name)
        if member is _MISSING:
            problems.append(f"{where} lacks method {name}()")
            continue
        if _kind(member) != _kind(declared):
            problems.append(f"{where}.{name} is a {_kind(member)}, the protocol's a {_kind(declared)}")
            continue
        want, got = _parameters(declared), _parameters(member)
        if want != got:
            problems.append(f"{where}.{name} parameters {got} differ from the protocol's {want}")
    assigned, slots = None, _slots(cls)
    for name, annotated in sorted(attributes.items()):
        member = _static_member(cls, name)
        value = _MISSING
        if instance is not None and hasattr(instance, name):
            value = getattr(instance, name)
        elif member is not _MISSING and not hasattr(member, "__get__"):  # a plain class attribute
            value = member
        if member is _MISSING and name not in slots and value is _MISSING:
            if assigned is None:
                assigned = _init_assignments(cls)
            if name not in assigned:
                problems.append(f"{where} lacks attribute {name} (no class attribute, property, slot"
                                f"{', instance attribute' if instance is not None else ''} or assignment in __init__)")
                continue
        if value is not _MISSING and isinstance(annotated, type) and not isinstance(value, annotated):
            problems.append(f"{where}.{name} is {value!r}, not a {annotated.__name__}")
    return problems


def assert_conforms(cls, protocol, instance=None) -> None:
    """Fail (AssertionError listing every problem) unless cls conforms to protocol; instance: an object of cls, optional."""
    problems = conformance_problems(cls, protocol, instance)
    assert not problems, f"{cls.__qualname__} does not conform to {protocol.__qualname__}:\n  " + "\n  ".join(problems)
