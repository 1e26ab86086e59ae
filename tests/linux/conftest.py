"""Namespace tests: each test gets its own network namespace, deleted afterwards, and runs the appliance in it.

Everything here needs Linux, root, `ip netns` and /dev/net/tun; without them the tests are
skipped with the reason. Nothing touches the root namespace.
"""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def _why_not():
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (network namespaces and TUN devices)"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (modprobe tun)"
    return None


def pytest_collection_modifyitems(config, items):
    reason = _why_not()
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.linux_root)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def need(tool: str, package: str):
    if shutil.which(tool) is None:
        pytest.skip(f"needs `{tool}` (apt-get install {package})")


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


class Appliance:
    """One `python -m ztun.appliance` process inside a namespace; its stderr goes to a file."""

    def __init__(self, ns: "Netns", args, command="run"):
        self.ns = ns
        self.logfile = ns.tmp / f"appliance-{len(ns.procs)}.log"
        self._log = open(self.logfile, "wb")
        if command == "run" and "--control-socket" not in args and "--config" not in args:
            # Unix sockets are not per network namespace: each appliance gets its own (a --config names its own).
            args = (*args, "--control-socket", str(ns.tmp / f"control-{ns.name}-{len(ns.procs)}.sock"))
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns.name, sys.executable, "-m", "ztun.appliance", command, *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env(), cwd=REPO,
        )  # `ip netns exec` execs python: this PID is the appliance's
        ns.procs.append(self.proc)

    @property
    def log(self) -> str:
        return self.logfile.read_text(errors="replace")

    def wait_ready(self, timeout=READY_TIMEOUT) -> "Appliance":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready: " in self.log:
                return self
            if self.proc.poll() is not None:
                pytest.fail(f"appliance exited with {self.proc.returncode} before it was ready:\n{self.log}")
            time.sleep(0.05)
        pytest.fail(f"appliance not ready after {timeout}s:\n{self.log}")

    def send(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout=STOP_TIMEOUT) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"appliance did not exit within {timeout}s:\n{self.log}")
        self._log.close()
        return rc

    def stop(self, sig=signal.SIGTERM) -> int:
        self.send(sig)
        return self.wait()

    def stats(self) -> dict:
        found = re.findall(r"stats: (.*)", self.log)
        assert found, f"no stats line in the log:\n{self.log}"
        return {k: int(v) for k, v in (kv.split("=") for kv in found[-1].split())}


class Netns:
    """A network namespace of this test, and helpers that run commands inside it."""

    def __init__(self, name: str, tmp: Path):
        self.name = name
        self.tmp = tmp
        self.procs: list = []

    def run(self, *cmd, check=True, timeout=60) -> subprocess.CompletedProcess:
        r = subprocess.run(["ip", "netns", "exec", self.name, *cmd], capture_output=True, text=True,
                           timeout=timeout, env=env(), cwd=REPO)
        if check and r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}{r.stderr}")
        return r

    def ip(self, *args, check=True) -> str:
        return self.run("ip", *args, check=check).stdout

    def python(self, code: str, *args, check=True, timeout=60) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-c", code, *args, check=check, timeout=timeout)

    def appliance(self, *args, command="run") -> Appliance:
        return Appliance(self, args, command)

    def snapshot(self) -> dict:
        """Everything ztun may touch: rules, routes of every table, links and addresses."""
        shot = {}
        for key, args in {
            "rules4": ("rule",), "rules6": ("-6", "rule"),
            "routes4": ("route", "show", "table", "all"), "routes6": ("-6", "route", "show", "table", "all"),
        }.items():
            shot[key] = self.ip(*args)
        shot["addrs"] = {a["ifname"]: a["addr_info"] for a in json.loads(self.ip("-j", "addr"))}
        links = json.loads(self.ip("-j", "-d", "link"))
        for link in links:
            # Bringing a link up once attaches a default qdisc and, on a TUN, switches the IPv6
            # address generation mode to random; both stay, and both are the kernel's doing.
            link.pop("qdisc", None)
            link.pop("inet6_addr_gen_mode", None)
        shot["links"] = links
        return shot

    def link_stats(self, ifname: str) -> dict:
        return json.loads(self.ip("-j", "-s", "link", "show", "dev", ifname))[0]["stats64"]

    def spawn(self, *cmd, ready: str | None = None, timeout=READY_TIMEOUT) -> subprocess.Popen:
        """Start cmd in the background (killed at teardown); wait until its output contains ready."""
        out = self.tmp / f"{self.name}-proc-{len(self.procs)}.log"
        with open(out, "wb") as f:
            p = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], stdout=f, stderr=subprocess.STDOUT, env=env(), cwd=REPO)
        self.procs.append(p)
        deadline = time.monotonic() + timeout
        while ready is not None and ready not in out.read_text(errors="replace"):
            if p.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{' '.join(cmd)} did not get ready:\n{out.read_text(errors='replace')}")
            time.sleep(0.05)
        return p

    def server(self, kind: str, port: int, *args: str) -> subprocess.Popen:
        """One of tests/linux/servers.py's servers, listening on [::]:port."""
        return self.spawn(sys.executable, str(HERE / "servers.py"), kind, str(port), *args, ready="ready")

    def ping(self, *args, timeout=60) -> subprocess.CompletedProcess:
        return self.run("ping", *args, check=False, timeout=timeout)

    def teardown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    pass
        # Whatever else still runs in the namespace was started by this test.
        pids = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


@pytest.fixture
def netns(tmp_path):
    """A fresh network namespace `ztun-t-<random>`, deleted (with what runs in it) also when the test fails."""
    name = f"ztun-t-{uuid.uuid4().hex[:8]}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
    ns = Netns(name, tmp_path)
    try:
        yield ns
    finally:
        ns.teardown()


def received(ping: subprocess.CompletedProcess) -> tuple[int, int]:
    """(transmitted, received) from ping's summary."""
    m = re.search(r"(\d+) packets transmitted, (\d+) received", ping.stdout)
    assert m, f"no ping summary:\n{ping.stdout}{ping.stderr}"
    return int(m.group(1)), int(m.group(2))


def veth(a: Netns, a_dev: str, a_addrs: tuple, b: Netns, b_dev: str, b_addrs: tuple) -> None:
    """A veth pair between namespaces a and b, each end up with an IPv4 and an IPv6 address (no DAD)."""
    a.ip("link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b.name)
    for ns, dev, (a4, a6) in ((a, a_dev, a_addrs), (b, b_dev, b_addrs)):
        ns.ip("link", "set", "lo", "up")
        ns.ip("link", "set", dev, "addrgenmode", "none")  # no link-local address appearing mid-test
        ns.ip("addr", "add", a4, "dev", dev)
        ns.ip("-6", "addr", "add", a6, "dev", dev, "nodad")
        ns.ip("link", "set", dev, "up")


def netns_hosts(ns: "Netns", text: str):
    """ns's own /etc/hosts while the block runs."""
    return netns_etc(ns, "hosts", text)


@contextlib.contextmanager
def netns_etc(ns: "Netns", name: str, text: str):
    """ns's own /etc/NAME (hosts, resolv.conf) while the block runs (`ip netns exec` mounts /etc/netns/NS/NAME)."""
    etc = f"/etc/netns/{ns.name}"
    made_parent = not os.path.isdir("/etc/netns")
    os.makedirs(etc)
    try:
        with open(f"{etc}/{name}", "w") as f:
            f.write(text)
        yield
    finally:
        shutil.rmtree(etc, ignore_errors=True)
        if made_parent:
            try:
                os.rmdir("/etc/netns")
            except OSError:
                pass  # another test's namespace uses it now


@contextlib.contextmanager
def namespaces(tmp_path, roles: str):
    """One fresh namespace per letter of roles (`ztun-t<role>-<random>`), all deleted afterwards."""
    made = []
    try:
        for role in roles:
            name = f"ztun-t{role}-{uuid.uuid4().hex[:8]}"
            r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"cannot create a network namespace: {r.stderr.strip()}")
            made.append(Netns(name, tmp_path))
        yield made
    finally:
        for ns in made:
            ns.teardown()


class Lan:
    """Two namespaces joined by a veth: `client` (where ztun runs) and `server`.

    client zt-c0 198.18.10.1/24 fd00:10::1/64 <-> server zt-s0 198.18.10.2/24 fd00:10::2/64;
    the servers listen on the server's loopback addresses 198.19.0.1 and fd00:19::1, which the
    client's main table reaches over the veth: only traffic that skips ztun's rules (its own
    marked sockets) takes that path, everything else is routed into the TUN.
    """

    SERVER4, SERVER6 = "198.19.0.1", "fd00:19::1"

    def __init__(self, client: Netns, server: Netns):
        self.client, self.server = client, server
        c, s = client, server
        veth(c, "zt-c0", ("198.18.10.1/24", "fd00:10::1/64"), s, "zt-s0", ("198.18.10.2/24", "fd00:10::2/64"))
        s.ip("addr", "add", self.SERVER4 + "/32", "dev", "lo")
        s.ip("-6", "addr", "add", self.SERVER6 + "/128", "dev", "lo")
        c.ip("route", "add", "198.19.0.0/16", "via", "198.18.10.2")
        c.ip("-6", "route", "add", "fd00:19::/64", "via", "fd00:10::2")

    APPLIANCE = ("--tun-name", "zt-tun0", "--inet4", "198.18.0.1/30", "--inet6", "fd00:18::1/126",
                 "--route", "198.19.0.0/16", "--route", "fd00:19::/64")

    def appliance(self, *extra) -> Appliance:
        return self.client.appliance(*self.APPLIANCE, *extra).wait_ready()


@pytest.fixture
def lan(tmp_path):
    """A client and a server namespace joined by a veth (see Lan); both deleted afterwards."""
    with namespaces(tmp_path, "cs") as made:
        yield Lan(*made)


class GatewayLan(Lan):
    """Lan plus a `host` namespace behind the client, which becomes the host's gateway.

    host zt-h0 198.18.20.2/24 fd00:20::2/64, default routes via the gateway's zt-g1
    198.18.20.1/24 fd00:20::1/64; ztun runs on the gateway (Lan.client) with
    --lan-interface zt-g1.
    """

    def __init__(self, gateway: Netns, server: Netns, host: Netns):
        super().__init__(gateway, server)
        self.host = host
        h = host
        veth(gateway, "zt-g1", ("198.18.20.1/24", "fd00:20::1/64"), h, "zt-h0", ("198.18.20.2/24", "fd00:20::2/64"))
        h.ip("route", "add", "default", "via", "198.18.20.1")
        h.ip("-6", "route", "add", "default", "via", "fd00:20::1")

    def appliance(self, *extra) -> Appliance:
        return super().appliance("--lan-interface", "zt-g1", *extra)


@pytest.fixture
def gateway_lan(tmp_path):
    """Host -> gateway (where ztun runs) -> server namespaces (see GatewayLan); all deleted afterwards."""
    with namespaces(tmp_path, "gsh") as made:
        yield GatewayLan(*made)
