"""Each compiled module of ztun._fast and its twin against the module's .pyi stub, and against each other
on bad input: the same names and signatures, the same exception type, and nothing changed before the raise.
A compiled module with no twin (COMPILED_ONLY) is held against its stub alone, name for name."""

import ast
import inspect
import os
import socket
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import ztun._fast as fast
from ztun._fast import PacketBatch
from ztun._fast.nat_config import NatConfig
from ztun.errors import ConfigError, PacketError
from ztun.loop import Loop

FAST = Path(fast.__file__).parent
NO_EXT = os.environ.get("ZTUN_NO_EXTENSIONS", "") not in ("", "0")
MODULES = ("build", "checksum", "gso", "handshake", "icmp", "nat", "packet", "relay", "sockq", "tunio", "udptable",
           "utunio")
# Compiled with no twin: where one is not built the caller does without (the loop reads the TUN).
COMPILED_ONLY = ("tunpump",)


def test_every_stub_is_covered():
    assert sorted(p.stem for p in FAST.glob("*.pyi")) == sorted(MODULES + COMPILED_ONLY)


def test_the_compiled_only_modules_are_those_with_no_twin():
    compiled = {n for names in fast.PLATFORM.values() for n in names} | set(fast.CORE)
    assert sorted(n for n in compiled if not (FAST / f"{n}_py.py").exists()) == sorted(COMPILED_ONLY)


def _implementations(name, fast_module):
    """[(kind, module)]: the compiled module where this platform builds one (and extensions are on), and the twin."""
    if name in COMPILED_ONLY:
        platform = "linux" if sys.platform.startswith("linux") else sys.platform
        if NO_EXT or name not in fast.PLATFORM.get(platform, ()):
            pytest.skip(f"{name} is compiled only, and not here ({sys.platform}, ZTUN_NO_EXTENSIONS={int(NO_EXT)})")
        return [("cython", fast_module(name, "cython"))]
    if getattr(fast, name) is None:
        pytest.skip(f"{sys.platform} has no {name}, compiled or twin")
    out = []
    if fast.IMPLEMENTATIONS[name] is not None and not NO_EXT:
        out.append(("cython", fast_module(name, "cython")))
    out.append(("python", fast_module(name, "python")))
    return out


# --- the .pyi stubs --------------------------------------------------------------


def _stub(name):
    return ast.parse((FAST / f"{name}.pyi").read_text())


def _params(args: ast.arguments, drop_self=False):
    """[(name, kind, default source)] as the stub writes them."""
    pos = [(a, inspect.Parameter.POSITIONAL_ONLY) for a in args.posonlyargs]
    pos += [(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in args.args]
    defaults = [None] * (len(pos) - len(args.defaults)) + list(args.defaults)
    out = [(a.arg, kind, None if d is None else ast.literal_eval(d)) for (a, kind), d in zip(pos, defaults)]
    if args.vararg:
        out.append((args.vararg.arg, inspect.Parameter.VAR_POSITIONAL, None))
    out += [(a.arg, inspect.Parameter.KEYWORD_ONLY, None if d is None else ast.literal_eval(d))
            for a, d in zip(args.kwonlyargs, args.kw_defaults)]
    if args.kwarg:
        out.append((args.kwarg.arg, inspect.Parameter.VAR_KEYWORD, None))
    return out[1:] if drop_self else out


def _real(obj):
    """[(name, kind, default)] of obj's signature. A compiled special method (__len__) takes self
    positional-only, which a stub does not write: self's kind is not compared."""
    out = [(p.name, p.kind, None if p.default is inspect.Parameter.empty else p.default)
           for p in inspect.signature(obj).parameters.values()]
    if out and out[0][0] == "self":
        out[0] = ("self", inspect.Parameter.POSITIONAL_OR_KEYWORD, None)
    return out


def _same(stub, real):
    return stub == real and all(type(a[2]) is type(b[2]) for a, b in zip(stub, real))


def _instances(name, kind, mod, cleanup):
    """An instance of each class the stub declares, to look for its annotated attributes."""
    if name == "nat":
        return {"NatTable": mod.NatTable(NatConfig(capacity=8, stack4="198.18.0.1", port4=1, next4=("198.18.0.2",)))}
    if name == "sockq":
        loop = Loop()
        q = mod.SocketQueue(loop)
        cleanup += [loop.close, q.stop]
        return {"SocketQueue": q}
    if name == "handshake":
        loop = Loop()
        engine = mod.Handshakes(loop)
        cleanup += [loop.close, engine.stop]
        return {"Handshakes": engine}
    if name == "relay":
        loop = Loop()
        engine = mod.RelayEngine(loop, lambda *a: None)
        cleanup += [loop.close, engine.stop]
        return {"RelayEngine": engine}
    if name == "udptable":
        loop = Loop()
        table = mod.UdpTable(loop, lambda: None, sessions=4, routes=4, sockets=4)
        cleanup += [loop.close, table.close]
        return {"UdpTable": table}
    if name == "tunpump":
        from ztun._fast.nat import NatTable  # the compiled table: the pump takes no other

        nat = NatTable(NatConfig(capacity=8, stack4="198.18.0.1", port4=1, next4=("198.18.0.2",)))
        pump = mod.TunPump(_fd(cleanup), nat, PacketBatch(4), [PacketBatch(4), PacketBatch(4)])  # not started
        cleanup.append(pump.stop)
        return {"TunPump": pump}
    return {}


@pytest.mark.parametrize("name", MODULES + COMPILED_ONLY)
def test_signatures_follow_the_stub(name, fast_module):
    """Every function, class, method, constant and attribute the stub declares, with its parameters'
    names, kinds and defaults as the stub writes them; and nothing public the stub leaves out. A
    module with no twin declares exactly what it has: its constants and attributes too.

    Cython 3 (binding=True) makes every def function and method introspectable; a cdef class's
    constructor is not (its __cinit__ has no signature), so nat.pyx and sockq.pyx give their
    classes a text signature in the docstring, and the stub's __init__ is held against the class.
    """
    stub = _stub(name)
    for kind, mod in _implementations(name, fast_module):
        where = f"{kind} {mod.__name__}"
        cleanup = []
        try:
            instances = _instances(name, kind, mod, cleanup)
            declared = set()
            for node in stub.body:
                if isinstance(node, ast.AnnAssign):
                    declared.add(node.target.id)
                    assert hasattr(mod, node.target.id), f"{where} lacks {node.target.id}"
                elif isinstance(node, ast.FunctionDef):
                    declared.add(node.name)
                    real = _real(getattr(mod, node.name))
                    assert _same(_params(node.args), real), f"{where}.{node.name}{real}"
                elif isinstance(node, ast.ClassDef):
                    declared.add(node.name)
                    cls = getattr(mod, node.name)
                    members = set()
                    for item in node.body:
                        if isinstance(item, ast.AnnAssign):
                            members.add(item.target.id)
                            assert hasattr(instances[node.name], item.target.id), f"{where}.{node.name} lacks {item.target.id}"
                        elif isinstance(item, ast.FunctionDef):
                            members.add(item.name)
                            if item.name == "__init__":
                                real, stubbed = _real(cls), _params(item.args, drop_self=True)
                            else:
                                real, stubbed = _real(getattr(cls, item.name)), _params(item.args)
                            assert _same(stubbed, real), f"{where}.{node.name}.{item.name}{real}"
                    extra = {m for m in vars(cls) if not m.startswith("_")
                             and (name in COMPILED_ONLY or callable(getattr(cls, m)))} - members
                    assert not extra, f"{where}.{node.name} has members the stub leaves out: {sorted(extra)}"
            extra = {n for n, v in vars(mod).items() if not n.startswith("_") and not inspect.ismodule(v)
                     and (getattr(v, "__module__", None) == mod.__name__ if callable(v) else name in COMPILED_ONLY)}
            extra -= declared
            assert not extra, f"{where} has names the stub leaves out: {sorted(extra)}"
        finally:
            for close in reversed(cleanup):
                close()


@pytest.mark.parametrize("name", MODULES)
def test_constants_agree(name, fast_module):
    """The stub's constants have one value in both, but THREADED, which says which one it is."""
    impls = _implementations(name, fast_module)
    if len(impls) < 2:
        pytest.skip(f"no compiled {name} to compare with on {sys.platform}")
    (_, compiled), (_, twin) = impls
    for node in _stub(name).body:
        if isinstance(node, ast.AnnAssign) and node.target.id != "THREADED":
            assert getattr(compiled, node.target.id) == getattr(twin, node.target.id), node.target.id


# --- bad input ----------------------------------------------------------------------

# An IPv4 TCP SYN 10.0.0.1:12345 -> 10.0.0.2:80 (the parser and the NAT do not check checksums).
SYN = bytes.fromhex("45000028000100004006000" + "00a0000010a000002") + struct.pack("!HHIIBBHHH", 12345, 80, 1, 0, 0x50, 0x02, 8192, 0, 0)
NAT = NatConfig(capacity=8, stack4="198.18.0.1", port4=1, next4=("198.18.0.2",))


def _batch(k, count=1, vnet=False):
    """A parsed batch of 4 slots with count SYNs (parsed by the implementation k under test)."""
    b = PacketBatch(slots=4, max_packet=1500, vnet_hdr=vnet)
    b.fill([SYN] * count)
    k.packet.parse_batch(b)
    return b


def _count(b, n):
    b.count = n
    return b


def _bad_meta(b):
    b.meta = np.zeros(b.slots, dtype=np.uint8)
    return b


def _nat(k):
    """A table with one flow and counters moved, as the stack's would be."""
    t = k.nat.NatTable(NAT)
    t.process_batch(_batch(k), 1.0)
    return t


def _errnos(n=4, dtype=np.int32):
    return np.zeros(n, dtype)


def _fd(cleanup):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    cleanup += [a.close, b.close]
    return a.fileno()


def _queue(k, cleanup, **kw):
    loop = Loop()
    q = k.sockq.SocketQueue(loop, **kw)
    cleanup += [loop.close, q.stop]
    return loop, q


def _connect(address, family=socket.AF_INET, closed=False):
    def make(k, cleanup):
        loop, q = _queue(k, cleanup)
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        cleanup.append(sock.close)
        if closed:
            sock.close()
        return q.connect, (sock, address, lambda err: None), [q, loop]
    return make


def _construct(*args, **kw):
    def make(k, cleanup):
        loop = Loop()
        cleanup.append(loop.close)

        def construct():
            cleanup.append(k.sockq.SocketQueue(loop, *args, **kw).stop)  # only if it did not raise
        return construct, (), [loop]
    return make


def _engine(*args, **kw):
    def make(k, cleanup):
        loop = Loop()
        cleanup.append(loop.close)

        def construct():
            cleanup.append(k.relay.RelayEngine(loop, lambda *a: None, *args, **kw).stop)  # only if it did not raise
        return construct, (), [loop]
    return make


def _relay_add(closed=False):
    def make(k, cleanup):
        loop = Loop()
        engine = k.relay.RelayEngine(loop, lambda *a: None)
        cleanup += [loop.close, engine.stop]
        a, b = socket.socketpair()
        cleanup += [a.close, b.close]
        if closed:
            a.close()
        return engine.add, (object(), a, b), [loop]
    return make


# (module, what is wrong, the exception both must raise, make(k, cleanup) -> (function, args, objects
# whose state must not change)). k holds one implementation's modules, cleanup what to close after.
CASES = [
    ("checksum", "initial below 0", OverflowError, lambda k, c: (k.checksum.ones_sum, (b"ab", -1), [])),
    ("checksum", "initial beyond 32 bits", OverflowError, lambda k, c: (k.checksum.checksum, (b"ab", 1 << 32), [])),
    ("checksum", "a list for a buffer", TypeError, lambda k, c: (k.checksum.ones_sum, ([1, 2],), [])),
    ("checksum", "a non-contiguous buffer", ValueError, lambda k, c: (k.checksum.ones_sum, (np.zeros(8, np.uint8)[::2],), [])),
    ("checksum", "a buffer of 16-bit items", ValueError, lambda k, c: (k.checksum.checksum, (np.zeros(4, np.uint16),), [])),
    ("checksum", "3-byte addresses", PacketError, lambda k, c: (k.checksum.pseudo_sum, (b"abc", b"abc", 6, 20), [])),
    ("checksum", "proto beyond 8 bits", OverflowError, lambda k, c: (k.checksum.pseudo_sum, (bytes(4), bytes(4), 300, 20), [])),
    ("checksum", "IPv4 length beyond 16 bits", OverflowError, lambda k, c: (k.checksum.pseudo_sum, (bytes(4), bytes(4), 6, 70000), [])),
    ("checksum", "length below 0", OverflowError, lambda k, c: (k.checksum.pseudo_sum, (bytes(16), bytes(16), 6, -1), [])),
    ("checksum", "csum below 0", OverflowError, lambda k, c: (k.checksum.update16, (-1, 0, 0), [])),
    ("checksum", "word beyond 16 bits", OverflowError, lambda k, c: (k.checksum.update16, (0, 0, 70000), [])),
    ("checksum", "addresses of two lengths", PacketError, lambda k, c: (k.checksum.update_addr, (0, bytes(4), bytes(16)), [])),
    ("packet", "a list for a packet", TypeError, lambda k, c: (k.packet.verify_checksums, ([0x45, 0],), [])),
    ("packet", "count beyond the slots", PacketError, lambda k, c: (lambda b: (k.packet.parse_batch, (b,), [b]))(_count(_batch(k), 5))),
    ("packet", "count below 0", PacketError, lambda k, c: (lambda b: (k.packet.parse_batch, (b,), [b]))(_count(_batch(k), -1))),
    ("packet", "meta of another layout", TypeError, lambda k, c: (lambda b: (k.packet.parse_batch, (b,), [b]))(_bad_meta(_batch(k)))),
    ("icmp", "count beyond the slots", PacketError, lambda k, c: (lambda b: (k.icmp.echo_batch, (b,), [b]))(_count(_batch(k), 5))),
    ("icmp", "count below 0", PacketError, lambda k, c: (lambda b: (k.icmp.echo_batch, (b,), [b]))(_count(_batch(k), -1))),
    ("icmp", "meta of another layout", TypeError, lambda k, c: (lambda b: (k.icmp.echo_batch, (b,), [b]))(_bad_meta(_batch(k)))),
    ("icmp", "verdict_counts too short", PacketError,
     lambda k, c: (lambda b, v: (k.icmp.echo_batch, (b, True, v), [b, v]))(_batch(k), np.zeros(2, np.uint64))),
    ("icmp", "drop_counts too short", PacketError,
     lambda k, c: (lambda b, v: (k.icmp.echo_batch, (b, True, None, v), [b, v]))(_batch(k), np.zeros(2, np.uint64))),
    ("icmp", "verdict_counts of int64", ValueError,
     lambda k, c: (lambda b, v: (k.icmp.echo_batch, (b, True, v), [b, v]))(_batch(k), np.zeros(8, np.int64))),
    ("icmp", "drop_counts a list", TypeError,
     lambda k, c: (lambda b, v: (k.icmp.echo_batch, (b, True, None, v), [b, v]))(_batch(k), [0] * 20)),
    ("gso", "slot below 0", IndexError, lambda k, c: (lambda b, o: (k.gso.gso_split, (b, -1, o), [b, o]))(_batch(k), PacketBatch(4))),
    ("gso", "slot at count", IndexError, lambda k, c: (lambda b, o: (k.gso.gso_split, (b, 1, o), [b, o]))(_batch(k), PacketBatch(4))),
    ("gso", "slot past the slots, count past them too", IndexError,
     lambda k, c: (lambda b, o: (k.gso.gso_split, (b, 4, o), [b, o]))(_count(_batch(k), 6), PacketBatch(4))),
    ("gso", "first below 0", IndexError, lambda k, c: (lambda b, o: (k.gso.gso_split, (b, 0, o, -1), [b, o]))(_batch(k), PacketBatch(4))),
    ("gso", "meta of another layout", TypeError,
     lambda k, c: (lambda b, o: (k.gso.gso_split, (b, 0, o), [b, o]))(_bad_meta(_batch(k)), PacketBatch(4))),
    ("gso", "gro without virtio headers", PacketError,
     lambda k, c: (lambda b, s: (k.gso.gro_udp, (b, 1, s), [b, s]))(_batch(k), _errnos())),
    ("gso", "gro n beyond the slots", PacketError,
     lambda k, c: (lambda b, s: (k.gso.gro_udp, (b, 5, s), [b, s]))(_batch(k, vnet=True), _errnos(8))),
    ("gso", "gro n below 0", PacketError,
     lambda k, c: (lambda b, s: (k.gso.gro_udp, (b, -1, s), [b, s]))(_batch(k, vnet=True), _errnos())),
    ("gso", "gro segs too short", PacketError,
     lambda k, c: (lambda b, s: (k.gso.gro_udp, (b, 3, s), [b, s]))(_batch(k, vnet=True), _errnos(2))),
    ("gso", "gro max_segments 0", PacketError,
     lambda k, c: (lambda b, s: (k.gso.gro_udp, (b, 1, s, 0), [b, s]))(_batch(k, vnet=True), _errnos())),
    ("gso", "gro segs of int64", ValueError,
     lambda k, c: (lambda b, s: (k.gso.gro_udp, (b, 1, s), [b, s]))(_batch(k, vnet=True), _errnos(4, np.int64))),
    ("gso", "gro segs a list", TypeError,
     lambda k, c: (lambda b, s: (k.gso.gro_udp, (b, 1, s), [b, s]))(_batch(k, vnet=True), [0] * 4)),
    ("build", "udp slot below 0", IndexError,
     lambda k, c: (lambda o: (k.build.udp_packet, (o, -1, bytes(4), 1, bytes(4), 2, b"x"), [o]))(PacketBatch(4))),
    ("build", "udp slot past the slots", IndexError,
     lambda k, c: (lambda o: (k.build.udp_packet, (o, 4, bytes(4), 1, bytes(4), 2, b"x"), [o]))(PacketBatch(4))),
    ("build", "udp slot below 0, payload too long for any slot", IndexError,
     lambda k, c: (lambda o: (k.build.udp_packet, (o, -1, bytes(4), 1, bytes(4), 2, bytes(70000)), [o]))(PacketBatch(4))),
    ("build", "udp 3-byte addresses", PacketError,
     lambda k, c: (lambda o: (k.build.udp_packet, (o, 0, bytes(3), 1, bytes(3), 2, b"x"), [o]))(PacketBatch(4))),
    ("build", "udp port beyond 16 bits", OverflowError,
     lambda k, c: (lambda o: (k.build.udp_packet, (o, 0, bytes(4), 70000, bytes(4), 2, b"x"), [o]))(PacketBatch(4))),
    ("build", "reset of a slot below 0", IndexError,
     lambda k, c: (lambda b, o: (k.build.tcp_reset, (b, -1, o, 0), [b, o]))(_batch(k), PacketBatch(4))),
    ("build", "reset into a slot below 0", IndexError,
     lambda k, c: (lambda b, o: (k.build.tcp_reset, (b, 0, o, -1), [b, o]))(_batch(k), PacketBatch(4))),
    ("build", "reset with meta of another layout", TypeError,
     lambda k, c: (lambda b, o: (k.build.tcp_reset, (b, 0, o, 0), [b, o]))(_bad_meta(_batch(k)), PacketBatch(4))),
    ("build", "unreachable of a slot past the slots", IndexError,
     lambda k, c: (lambda b, o: (k.build.icmp_unreachable, (b, 9, o, 0, 3), [b, o]))(_batch(k), PacketBatch(4))),
    ("build", "unreachable code beyond 8 bits", OverflowError,
     lambda k, c: (lambda b, o: (k.build.icmp_unreachable, (b, 0, o, 0, 300), [b, o]))(_batch(k), PacketBatch(4))),
    ("nat", "count beyond the slots", PacketError,
     lambda k, c: (lambda t, b: (t.process_batch, (b, 2.0), [t, b]))(_nat(k), _count(_batch(k), 5))),
    ("nat", "count below 0", PacketError,
     lambda k, c: (lambda t, b: (t.process_batch, (b, 2.0), [t, b]))(_nat(k), _count(_batch(k), -1))),
    ("nat", "meta of another layout", TypeError,
     lambda k, c: (lambda t, b: (t.process_batch, (b, 2.0), [t, b]))(_nat(k), _bad_meta(_batch(k)))),
    ("nat", "batch time not a number", TypeError, lambda k, c: (lambda t, b: (t.process_batch, (b, None), [t, b]))(_nat(k), _batch(k))),
    ("nat", "insert port beyond 16 bits", OverflowError,
     lambda k, c: (lambda t: (t.insert, (6, "10.0.0.1", 70000, "10.0.0.2", 80), [t]))(_nat(k))),
    ("nat", "insert protocol beyond 8 bits", OverflowError,
     lambda k, c: (lambda t: (t.insert, (300, "10.0.0.1", 1, "10.0.0.2", 80), [t]))(_nat(k))),
    ("nat", "insert time not a number", TypeError,
     lambda k, c: (lambda t: (t.insert, (6, "10.0.0.1", 1, "10.0.0.2", 80, "1"), [t]))(_nat(k))),
    ("nat", "insert of two IP versions", ValueError,
     lambda k, c: (lambda t: (t.insert, (6, "10.0.0.1", 1, "::2", 80), [t]))(_nat(k))),
    ("nat", "insert of a bad address", ConfigError,
     lambda k, c: (lambda t: (t.insert, (6, "10.0.0.x", 1, "10.0.0.2", 80), [t]))(_nat(k))),
    ("nat", "lookup port below 0", OverflowError,
     lambda k, c: (lambda t: (t.lookup, (6, "10.0.0.1", -1, "10.0.0.2", 80), [t]))(_nat(k))),
    ("nat", "delete of no flow", KeyError, lambda k, c: (lambda t: (t.delete, (5,), [t]))(_nat(k))),
    ("nat", "delete below 0", KeyError, lambda k, c: (lambda t: (t.delete, (-1,), [t]))(_nat(k))),
    ("nat", "touch time not a number", TypeError, lambda k, c: (lambda t: (t.touch, (0, None), [t]))(_nat(k))),
    ("tunio", "read hdr beyond the headroom", PacketError,
     lambda k, c: (lambda b: (k.tunio.read_batch, (_fd(c), b, False, 17), [b]))(_batch(k))),
    ("tunio", "write hdr below 0", PacketError,
     lambda k, c: (lambda b, e: (k.tunio.write_batch, (_fd(c), b, 1, e, -1, -1), [b, e]))(_batch(k), _errnos())),
    ("tunio", "write n beyond the slots", PacketError,
     lambda k, c: (lambda b, e: (k.tunio.write_batch, (_fd(c), b, 5, e), [b, e]))(_batch(k), _errnos(8))),
    ("tunio", "write n below 0", PacketError,
     lambda k, c: (lambda b, e: (k.tunio.write_batch, (_fd(c), b, -1, e), [b, e]))(_batch(k), _errnos())),
    ("tunio", "errnos too short", PacketError,
     lambda k, c: (lambda b, e: (k.tunio.write_batch, (_fd(c), b, 3, e), [b, e]))(_batch(k, 3), _errnos(2))),
    ("tunio", "errnos of int64", ValueError,
     lambda k, c: (lambda b, e: (k.tunio.write_batch, (_fd(c), b, 1, e), [b, e]))(_batch(k), _errnos(4, np.int64))),
    ("tunio", "errnos a list", TypeError,
     lambda k, c: (lambda b, e: (k.tunio.write_batch, (_fd(c), b, 1, e), [b, e]))(_batch(k), [0] * 4)),
    ("tunio", "errnos None", TypeError, lambda k, c: (lambda b: (k.tunio.write_batch, (_fd(c), b, 1, None), [b]))(_batch(k))),
    ("tunio", "flags beyond int", OverflowError, lambda k, c: (k.tunio.set_iff, (_fd(c), "zt0", 1 << 40), [])),
    ("tunio", "vnet header size beyond int", OverflowError, lambda k, c: (k.tunio.set_vnet_hdr_size, (_fd(c), 1 << 40), [])),
    ("utunio", "drops too short", PacketError,
     lambda k, c: (lambda b, d: (k.utunio.read_batch, (_fd(c), b, d), [b, d]))(_batch(k), np.zeros(1, np.int64))),
    ("utunio", "drops of int32", ValueError,
     lambda k, c: (lambda b, d: (k.utunio.read_batch, (_fd(c), b, d), [b, d]))(_batch(k), np.zeros(2, np.int32))),
    ("utunio", "drops None", TypeError, lambda k, c: (lambda b: (k.utunio.read_batch, (_fd(c), b, None), [b]))(_batch(k))),
    ("utunio", "write n beyond the slots", PacketError,
     lambda k, c: (lambda b, e: (k.utunio.write_batch, (_fd(c), b, 5, e), [b, e]))(_batch(k), _errnos(8))),
    ("utunio", "errnos too short", PacketError,
     lambda k, c: (lambda b, e: (k.utunio.write_batch, (_fd(c), b, 3, e), [b, e]))(_batch(k, 3), _errnos(2))),
    ("utunio", "errnos of int64", ValueError,
     lambda k, c: (lambda b, e: (k.utunio.write_batch, (_fd(c), b, 1, e), [b, e]))(_batch(k), _errnos(4, np.int64))),
    ("utunio", "errnos None", TypeError, lambda k, c: (lambda b: (k.utunio.write_batch, (_fd(c), b, 1, None), [b]))(_batch(k))),
    ("relay", "capacity 0", ValueError, _engine(0)),
    ("relay", "capacity beyond 2**24", ValueError, _engine((1 << 24) + 1)),
    ("relay", "capacity a str", TypeError, _engine("64")),
    ("relay", "sweep_every 0", ValueError, _engine(sweep_every=0)),
    ("relay", "sweep_every a str", TypeError, _engine(sweep_every="1")),
    ("relay", "add of a closed socket", ValueError, _relay_add(closed=True)),
    ("sockq", "capacity 0", ValueError, _construct(0)),
    ("sockq", "capacity below 0", ValueError, _construct(-1)),
    ("sockq", "capacity beyond 2**20", ValueError, _construct(1 << 21)),
    ("sockq", "capacity beyond 64 bits", ValueError, _construct(1 << 70)),
    ("sockq", "capacity a str", TypeError, _construct("64")),
    ("sockq", "epoll_fd a str", TypeError, _construct(epoll_fd="3")),
    ("sockq", "connect to a bad host", ValueError, _connect(("10.0.0.x", 80))),
    ("sockq", "connect to a host with a NUL", ValueError, _connect(("127.0.0.1\0junk", 80))),
    ("sockq", "connect to port beyond 16 bits", OverflowError, _connect(("127.0.0.1", 70000))),
    ("sockq", "connect to port below 0", OverflowError, _connect(("127.0.0.1", -1))),
    ("sockq", "connect to a str port", TypeError, _connect(("127.0.0.1", "80"))),
    ("sockq", "connect of another family to a bad port", OverflowError, _connect(("127.0.0.1", 70000), socket.AF_INET6)),
    ("sockq", "connect to a host alone", TypeError, _connect(("127.0.0.1",))),
    ("sockq", "connect with flowinfo beyond 20 bits", OverflowError, _connect(("::1", 80, 1 << 20, 0), socket.AF_INET6)),
    ("sockq", "connect with flowinfo a str", TypeError, _connect(("::1", 80, "0", 0), socket.AF_INET6)),
    ("sockq", "connect of a closed socket", ValueError, _connect(("127.0.0.1", 80), closed=True)),
]


def _state(obj):
    """What must not change when a call raises."""
    if isinstance(obj, PacketBatch):
        return (obj.count, *(getattr(obj, a).tobytes() for a in ("data", "lengths", "meta", "verdicts", "reasons", "flow_ids")))
    if isinstance(obj, np.ndarray):
        return obj.tobytes()
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, Loop):
        return len(obj._ready), len(obj._at_end)
    if hasattr(obj, "process_batch"):  # a NatTable
        flows = []
        for fid in range(obj.capacity):
            try:
                flows.append(obj.flow(fid))
            except KeyError:
                flows.append(None)
        return len(obj), obj.counters(), obj.free_ports(), flows
    return obj.queued, obj.overflowed, obj.ran_inline  # a SocketQueue


class _Kind:
    """One implementation's modules, loaded on first use."""

    def __init__(self, kind, fast_module):
        self.kind, self._load = kind, fast_module

    def __getattr__(self, name):
        mod = self._load(name, self.kind)
        setattr(self, name, mod)
        return mod


@pytest.mark.parametrize("module, what, expected, make", CASES, ids=[f"{m}: {w}" for m, w, _, _ in CASES])
def test_same_error_nothing_changed(module, what, expected, make, fast_module):
    """The compiled module and its twin raise the same exception type, here pinned, and leave
    batches, tables, counters and queues as they found them."""
    kinds = [kind for kind, _ in _implementations(module, fast_module)]
    for kind in kinds:
        cleanup = []
        try:
            fn, args, watched = make(_Kind(kind, fast_module), cleanup)
            before = [_state(obj) for obj in watched]
            with pytest.raises(Exception) as info:
                fn(*args)
            assert type(info.value) is expected, f"{kind}: {info.value!r}"
            assert [_state(obj) for obj in watched] == before, f"{kind} changed state before raising"
        finally:
            for close in reversed(cleanup):
                close()
    if len(kinds) < 2:
        pytest.skip(f"{module}: the twin alone was checked (no compiled module here)")
