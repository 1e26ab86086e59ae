"""macOS and Windows routers: the route journal that finds a crashed run's routes, fail_closed's unreachable
routes, and `cleanup`, over stand-ins for the routing socket and iphlpapi (tests/route_fakes.py)."""

import errno
import ipaddress
import json
import os
import subprocess
import sys

import pytest
from route_fakes import WINDOWS_ALIASES, FakeIphlpapi, FakeRouteKernel, crash_plan, darwin_router

from ztun.errors import RouteError
from ztun.system import route_socket as rs
from ztun.system import winerror as we
from ztun.system.route_journal import RouteJournal, file_stem
from ztun.system.route_plan import Route

HERE = os.path.dirname(os.path.abspath(__file__))
REJECT_ADD = rs.RTF_UP | rs.RTF_GATEWAY | rs.RTF_STATIC | rs.RTF_REJECT


def lines(journal):
    with open(journal.path) as f:
        return [json.loads(line) for line in f]


# --- the journal ---------------------------------------------------------------------------


def test_journal_records_strikes_and_is_gone_after_a_clean_close(tmp_path):
    j = RouteJournal("ztun0", str(tmp_path)).open()
    a, b = Route.of("198.19.0.0/16", "198.18.9.1", "en0"), Route.of("0.0.0.0/1", kind="unreachable")
    assert j.record(a) and j.record(b) and not j.record(a)  # named once
    assert [r["op"] for r in lines(j)] == ["add", "add"]
    j.strike(a)
    assert lines(j)[-1] == {"op": "del", "cidr": "198.19.0.0/16", "gateway": "198.18.9.1", "iface": "en0",
                            "kind": "unicast"}
    assert j.leftovers() == [b]
    j.strike(b)
    j.close()
    j.close()  # idempotent
    assert not os.path.exists(j.path)


def test_journal_is_locked_while_held_and_keeps_what_was_not_removed(tmp_path):
    j = RouteJournal("ztun0", str(tmp_path)).open()
    route = Route.of("198.19.7.7/32", "198.18.9.1", "en0")
    j.record(route)
    with pytest.raises(RouteError) as ei:
        RouteJournal("ztun0", str(tmp_path)).open()  # a second owner of the same name
    assert ei.value.errno == errno.EBUSY and "still running" in str(ei.value)
    RouteJournal("ztun1", str(tmp_path)).open().close()  # another name is another journal
    j.close()  # a route is still there: the journal stays
    again = RouteJournal("ztun0", str(tmp_path)).open()
    assert again.leftovers() == [route]
    again.close()


def test_damaged_lines_are_skipped_and_counted(tmp_path):
    path = tmp_path / "ztun0.routes"
    good = {"op": "add", "cidr": "198.19.0.0/16", "gateway": None, "iface": "utun3", "kind": "unicast"}
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps(dict(good, kind="throw")),
                               json.dumps(dict(good, cidr="198.19.0.1/16")), json.dumps([1]),
                               json.dumps(dict(good, op="what")), '{"op": "add", "cidr": "198.20.0.0/1']))
    j = RouteJournal("ztun0", str(tmp_path)).open()
    assert j.leftovers() == [Route.of("198.19.0.0/16", None, "utun3")]
    assert j.damaged == 6
    j.strike(j.leftovers()[0])
    j.close()
    assert not path.exists()


def test_an_oversized_journal_is_refused(tmp_path):
    (tmp_path / "ztun0.routes").write_bytes(b" " * ((4 << 20) + 1))
    with pytest.raises(RouteError, match="over"):
        RouteJournal("ztun0", str(tmp_path)).open()


def test_odd_names_make_plain_file_names():
    assert file_stem("ztun0") == "ztun0" and file_stem("utun3") == "utun3"
    for odd in ("../x", "a/b", "..", ".hidden", "Wi Fi", "tun\\0", "é"):
        stem = file_stem(odd)
        assert "/" not in stem and "\\" not in stem and not stem.startswith(".") and stem.isascii()


# --- macOS ---------------------------------------------------------------------------------


def test_darwin_fail_closed_routes_are_reject_routes_to_loopback(tmp_path):
    kernel = FakeRouteKernel()
    router = darwin_router(kernel, RouteJournal("ztun0", str(tmp_path)))
    assert router.add_route("0.0.0.0/1", kind="unreachable") is True
    assert router.add_route("8000::/1", kind="unreachable") is True
    v4, v6 = kernel.messages
    assert v4.type == rs.RTM_ADD and v4.flags == REJECT_ADD
    assert v4.dst == ipaddress.ip_address("0.0.0.0") and v4.gateway == ipaddress.ip_address("127.0.0.1")
    assert v4.netmask == ipaddress.ip_address("128.0.0.0")
    assert v6.flags == REJECT_ADD and v6.gateway == ipaddress.ip_address("::1")
    for bad in (dict(gateway="198.18.0.1"), dict(iface="lo0"), dict(kind="blackhole")):
        with pytest.raises(RouteError):
            router.add_route("10.0.0.0/8", **dict(dict(kind="unreachable"), **bad))
    router.close()
    undone = kernel.messages[2:]
    assert [(m.type, str(m.dst), m.flags & rs.RTF_REJECT) for m in undone] == [
        (rs.RTM_DELETE, "8000::", rs.RTF_REJECT), (rs.RTM_DELETE, "0.0.0.0", rs.RTF_REJECT)]
    assert kernel.table == {} and not os.path.exists(tmp_path / "ztun0.routes")


def test_darwin_journal_follows_add_delete_and_close(tmp_path):
    kernel = FakeRouteKernel({("198.19.1.0", "255.255.255.0"): "theirs"})  # someone else's route
    router = darwin_router(kernel, RouteJournal("ztun0", str(tmp_path)))
    journal = router._journal
    assert router.add_route("198.19.0.0/16", "198.18.9.1") is True
    assert router.add_route("198.19.1.0/24", "198.18.9.1") is False  # EEXIST: not ours, not journaled
    assert router.add_route("198.19.2.0/24", "198.18.9.1") is True
    assert [str(r.cidr) for r in journal.leftovers()] == ["198.19.2.0/24", "198.19.0.0/16"]
    assert router.delete_route("198.19.2.0/24", "198.18.9.1") is True  # removed by hand: struck out
    assert [str(r.cidr) for r in journal.leftovers()] == ["198.19.0.0/16"]
    kernel.refuse = errno.EACCES  # the undo fails: the route stays named for the next run
    router.close()
    assert [r["op"] + " " + r["cidr"] for r in lines(journal)] == [
        "add 198.19.0.0/16", "add 198.19.1.0/24", "del 198.19.1.0/24", "add 198.19.2.0/24", "del 198.19.2.0/24"]
    again = RouteJournal("ztun0", str(tmp_path)).open()
    assert [str(r) for r in again.leftovers()] == ["198.19.0.0/16 via 198.18.9.1"]
    again.close()


def test_a_route_is_journaled_before_it_is_added(tmp_path):
    class DiesAfterTheAdd(FakeRouteKernel):
        def request(self, msg, what=""):
            super().request(msg, what)
            raise KeyboardInterrupt  # the process stops right after the kernel added the route

    kernel = DiesAfterTheAdd()
    router = darwin_router(kernel, RouteJournal("ztun0", str(tmp_path)))
    with pytest.raises(KeyboardInterrupt):
        router.add_route("198.19.0.0/16", "198.18.9.1")
    assert list(kernel.table) == [("198.19.0.0", "255.255.0.0")]
    assert [str(r) for r in router._journal.leftovers()] == ["198.19.0.0/16 via 198.18.9.1"]
    kernel.refuse = errno.ETIMEDOUT  # no answer: it may have been added, so it stays named
    with pytest.raises(RouteError):
        router.add_route("198.19.1.0/24", "198.18.9.1")
    kernel.refuse = errno.ENETUNREACH  # refused: not added, struck out
    with pytest.raises(RouteError):
        router.add_route("198.19.2.0/24", "198.18.9.1")
    assert [str(r.cidr) for r in router._journal.leftovers()] == ["198.19.1.0/24", "198.19.0.0/16"]
    router._journal.close()


def test_a_leftover_found_gone_is_struck_out_not_counted(tmp_path):
    router = darwin_router(FakeRouteKernel(), RouteJournal("ztun0", str(tmp_path)))
    router.add_route("198.19.0.0/16", "198.18.9.1")
    router._journal.close()  # a crash
    later = darwin_router(FakeRouteKernel(refuse=errno.ENXIO), RouteJournal("ztun0", str(tmp_path)))
    assert later.remove_leftovers(2022, range(9000, 9010)) == 0  # its interface went, and the route with it
    assert later._journal.leftovers() == []
    later.close()
    assert not (tmp_path / "ztun0.routes").exists()


def test_darwin_leftovers_need_privilege_in_one_line(tmp_path):
    router = darwin_router(FakeRouteKernel(), RouteJournal("ztun0", str(tmp_path)))
    router.add_route("198.19.0.0/16", "198.18.9.1")
    router._journal.close()  # as a crash leaves it
    later = darwin_router(FakeRouteKernel(refuse=errno.EPERM), RouteJournal("ztun0", str(tmp_path)))
    with pytest.raises(RouteError) as ei:
        later.remove_leftovers(2022, range(9000, 9010))
    assert ei.value.errno == errno.EPERM and "needs root" in str(ei.value)
    assert later._journal.leftovers()  # still named: a later cleanup with the privilege removes it
    later._journal.close()


def run_crash(platform, directory):
    """Run route_fakes.crash in a child that SIGKILLs itself; the number of routes it added."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.path.dirname(HERE), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "route_fakes.py"), platform, str(directory)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode != 0 and proc.stdout.startswith("added "), (proc.returncode, proc.stdout, proc.stderr)
    return int(proc.stdout.split()[1])


def surviving(routes):
    """What a crash leaves: the routes not out of the TUN (exclusions via the uplink, the unreachable ones)."""
    return [r for r in routes if r.kind == "unreachable" or r.gateway is not None]


def test_darwin_cleanup_after_a_crash_removes_what_outlived_the_utun(tmp_path, monkeypatch, capsys):
    from ztun.appliance import cli
    from ztun.system import router as router_mod

    plan = crash_plan("utun9").routes
    assert run_crash("darwin", tmp_path) == len(plan)
    # what the utun's own routes were is not kept: its number may be another program's by now
    assert "utun9" not in (tmp_path / "ztun0.routes").read_text()
    assert {"utun9"} & {name for _, name in __import__("socket").if_nameindex()} == set()  # the utun went
    kernel = FakeRouteKernel()
    left = surviving(plan)
    for route in left:  # the kernel after the crash: the utun's routes went with it, these did not
        kernel.table[FakeRouteKernel.key(rs.decode(rs.encode(rs.route_message(
            rs.RTM_ADD, route.cidr, route.gateway or ("127.0.0.1" if route.family == 4 else "::1")))))] = "survived"
    monkeypatch.setattr(router_mod, "open_router",
                        lambda name: darwin_router(kernel, RouteJournal(name, str(tmp_path))))
    assert cli.main(["cleanup", "--tun-name", "ztun0"]) == 0
    assert f"removed {len(left)} leftover routes" in capsys.readouterr().out
    deleted = [m for m in kernel.messages if m.type == rs.RTM_DELETE]
    # every journaled route but those out of utun9 (no interface: gone with it), newest first
    assert [str(m.dst) for m in deleted] == [str(r.cidr.network_address) for r in reversed(left)]
    assert [bool(m.flags & rs.RTF_REJECT) for m in deleted] == [r.kind == "unreachable" for r in reversed(left)]
    assert kernel.table == {}
    assert not (tmp_path / "ztun0.routes").exists()
    assert cli.main(["cleanup", "--tun-name", "ztun0"]) == 0  # nothing left: nothing asked
    assert "removed 0 leftover routes" in capsys.readouterr().out
    assert [m for m in kernel.messages if m.type == rs.RTM_DELETE] == deleted


def test_cleanup_refuses_while_a_running_router_holds_the_journal(tmp_path, monkeypatch, capsys):
    from ztun.appliance import cli
    from ztun.system import router as router_mod

    running = darwin_router(FakeRouteKernel(), RouteJournal("ztun0", str(tmp_path)))
    running.add_route("198.19.0.0/16", "198.18.9.1")
    kernel = FakeRouteKernel()
    monkeypatch.setattr(router_mod, "open_router", lambda name: darwin_router(kernel, RouteJournal(name, str(tmp_path))))
    assert cli.main(["cleanup", "--tun-name", "ztun0"]) == 1
    err = capsys.readouterr().err
    assert "still running" in err and err.count("\n") == 1
    assert kernel.messages == []
    running.close()


# --- Windows -------------------------------------------------------------------------------


def test_windows_fail_closed_routes_go_out_of_loopback_at_a_high_metric(tmp_path):
    from ztun.system.router_windows import LOOPBACK_LUID, UNREACHABLE_METRIC, WindowsRouter

    api = FakeIphlpapi(WINDOWS_ALIASES)
    router = WindowsRouter(api, journal=RouteJournal("ztun0", str(tmp_path)))
    assert LOOPBACK_LUID == 0x0018000000000000 and UNREACHABLE_METRIC == 9999
    assert router.add_route("128.0.0.0/1", kind="unreachable") is True
    assert router.add_route("::/1", kind="unreachable") is True
    assert router.add_route("0.0.0.0/2", iface="ztun0") is True
    assert api.calls == [("create", (LOOPBACK_LUID, "128.0.0.0", 1, "0.0.0.0"), 9999),
                         ("create", (LOOPBACK_LUID, "::", 1, "::"), 9999),
                         ("create", (WINDOWS_ALIASES["ztun0"], "0.0.0.0", 2, "0.0.0.0"), 0)]
    with pytest.raises(RouteError):
        router.add_route("10.0.0.0/8", gateway="198.18.9.1")  # Windows routes name their interface
    router.close()
    assert [c[:2] for c in api.calls[3:]] == [("delete", (WINDOWS_ALIASES["ztun0"], "0.0.0.0", 2, "0.0.0.0")),
                                              ("delete", (LOOPBACK_LUID, "::", 1, "::")),
                                              ("delete", (LOOPBACK_LUID, "128.0.0.0", 1, "0.0.0.0"))]
    assert api.routes == {} and not (tmp_path / "ztun0.routes").exists()


def test_windows_next_run_removes_a_crashed_runs_routes(tmp_path):
    from ztun.system.router_windows import WindowsRouter

    plan = crash_plan("ztun0").routes
    assert run_crash("windows", tmp_path) == len(plan)
    # after the crash the adapter is gone, with its routes; the uplink's and loopback's routes stay
    api = FakeIphlpapi({"en0": WINDOWS_ALIASES["en0"]})
    scratch = FakeIphlpapi(WINDOWS_ALIASES)
    for route in surviving(plan):
        WindowsRouter(scratch).add(route)
    api.routes = dict(scratch.routes)
    router = WindowsRouter(api, journal=RouteJournal("ztun0", str(tmp_path)))
    assert router.remove_leftovers(2022, range(9000, 9010)) == len(surviving(plan))
    assert api.routes == {}
    assert all(call[0] == "delete" for call in api.calls)
    assert router._journal.leftovers() == []
    router.close()
    assert not (tmp_path / "ztun0.routes").exists()


def test_windows_leftovers_without_administrator_in_one_line(tmp_path):
    from ztun.system.router_windows import WindowsRouter

    first = WindowsRouter(FakeIphlpapi(WINDOWS_ALIASES), journal=RouteJournal("ztun0", str(tmp_path)))
    first.add_route("198.19.7.7/32", "198.18.9.1", "en0")
    first._journal.close()  # a crash
    later = WindowsRouter(FakeIphlpapi(WINDOWS_ALIASES, refuse=we.ERROR_ACCESS_DENIED),
                          journal=RouteJournal("ztun0", str(tmp_path)))
    with pytest.raises(RouteError) as ei:
        later.remove_leftovers(2022, range(9000, 9010))
    assert ei.value.errno == errno.EACCES and "needs Administrator" in str(ei.value)
    later._journal.close()


def test_routers_without_a_journal_have_no_leftovers():
    from ztun.system.router_windows import WindowsRouter

    assert darwin_router(FakeRouteKernel(), None).remove_leftovers(2022, range(9000, 9010)) == 0
    assert WindowsRouter(FakeIphlpapi(WINDOWS_ALIASES)).remove_leftovers(2022, range(9000, 9010)) == 0

