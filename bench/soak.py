#!/usr/bin/env python3
"""A soak of the appliance: mixed load through it for --duration seconds while faults happen on a schedule.

Run as root: `sudo python bench/soak.py --duration 600`. It builds its own namespaces (removed at
the end, also on errors and Ctrl-C) and touches nothing of the root namespace but /etc/netns/NAME
(the server namespace's hosts file, removed too):

  client ns  `python -m ztun.appliance run --config` (TUN zt-soak0, fake-IP DNS, default outbound
             the SOCKS5 proxy, 198.19.1.0/24 and fd00:19:1::/64 direct) and the load
  server ns  behind a veth: microsocks on 198.18.10.2:1080; tests/linux/servers.py's http
             (GET /bytes/N, POST /upload) and udp-echo on 198.19.0.1, fd00:19::1 (reached
             only through the proxy) and 198.19.1.1, fd00:19:1::1 (routed over the veth)

The load, from the client namespace, every check end to end:
  http   downloads of 64 KiB..4 MiB, each compared with what the server sent (sha256, then byte by byte)
  short  one connection per small upload (POST /upload), the server's sha256 compared
  udp    echo datagrams to the direct servers, each compared with what was sent
  dns    a name resolved through the TUN (fake-IP, A or AAAA), then a download by that address,
         which ztun sends to the proxy by name (microsocks resolves it from its namespace's hosts)

The faults, after a warm-up: SIGHUP every minute (every duration/4 for shorter runs), and
between reloads, in turn, microsocks killed and restarted, the HTTP server killed and restarted,
the direct routes deleted and added again, the server's veth end down and up. A failed request
whose span overlaps a fault (or the GRACE seconds after it) is counted against that fault;
any other is unexplained.

Prints one `name value unit` line per metric. Exits 1 on a corrupted byte, an unexplained
failure, an appliance that did not run to the end and exit 0, or (runs of 600 s or more) RSS or
open descriptors growing more than 10% from warm-up to the end; 2 when it cannot run here.
ZTUN_SOAK_CORRUPT=1 flips one byte of the first download after it is read (a check that the
checks can fail).
"""

import argparse
import errno
import hashlib
import json
import os
import queue
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVERS = REPO / "tests" / "linux" / "servers.py"

PROXY, PROXY_PORT = "198.18.10.2", 1080
PROXIED4, PROXIED6 = "198.19.0.1", "fd00:19::1"  # only through the proxy
DIRECT4, DIRECT6 = "198.19.1.1", "fd00:19:1::1"  # the direct rule, over the veth
DNS4, DNS6 = "198.19.0.53", "fd00:19::53"  # any address on port 53 routed into the TUN is ztun's DNS
HTTP_PORT, UDP_PORT = 8080, 9007
NAMES = [f"soak{i}.example" for i in range(8)]  # few names: the fake-IP pool does not grow with time
TUN = "zt-soak0"

GRACE = 5.0  # seconds after a fault's end in which failures are its doing
GROWTH_LIMIT = 10.0  # % of RSS or descriptors from warm-up to the end
GROWTH_MIN_DURATION = 600.0  # shorter runs report growth but do not fail on it
IO_TIMEOUT = 10.0  # each socket operation of the load
OP_DEADLINE = 30.0  # each request as a whole
FAILED_PAUSE = 0.25  # after a failed request: a dead proxy is not hammered (or its failures counted) in a tight loop
STOP_TIMEOUT = 30.0

CONFIG = """\
[tun]
name = "{tun}"
inet4 = "198.18.0.1/30"
inet6 = "fd00:18::1/126"
routes = ["198.19.0.0/16", "fd00:19::/48"]

[flows]
connect_timeout = 3

[control]
socket = "{control}"

[[outbounds]]
name = "proxy"
type = "socks5"
url = "socks5://{proxy}:{port}"

[route]
default = "proxy"

[[route.rules]]
cidr = ["198.19.1.0/24", "fd00:19:1::/64"]
outbound = "direct"

[dns]
mode = "fake-ip"
fake_ip4 = "198.18.128.0/20"
fake_ip6 = "fd00:f::/64"
"""

DISRUPTIVE = ("proxy_restart", "http_restart", "route_change", "link_flap")
KINDS = ("http", "short", "udp", "dns")


# -- the load, run in the client namespace as `soak.py --load-worker SECONDS` --------------------------


class Failed(Exception):
    """A request that did not complete; cause is a short word for the metric's name."""

    def __init__(self, cause: str):
        super().__init__(cause)
        self.cause = cause


def _cause(e: BaseException) -> str:
    if isinstance(e, Failed):
        return e.cause
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno)).lower()
    return type(e).__name__.lower()


def body(n: int) -> bytes:
    """What servers.py sends for GET /bytes/N."""
    return random.Random(n).randbytes(n)


class Load:
    """The load's threads, their counts and failures; a gate lets the orchestrator pause them all."""

    SIZES = (64 << 10, 256 << 10, 1 << 20, 4 << 20)

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.paused = False
        self.inflight = 0
        self.out = threading.Lock()
        self.requests = dict.fromkeys(KINDS, 0)
        self.failures = dict.fromkeys(KINDS, 0)
        self.bytes = 0
        self.corrupted = 0
        self.late_datagrams = 0
        self.corrupt_next = os.environ.get("ZTUN_SOAK_CORRUPT") == "1"
        self.expected = {n: (body(n), hashlib.sha256(body(n)).digest()) for n in self.SIZES}

    def emit(self, tag: str, obj) -> None:
        with self.out:
            sys.stdout.write(f"{tag} {json.dumps(obj)}\n")
            sys.stdout.flush()

    # The gate: pause() returns once no request is in flight; requests wait while paused.
    def enter(self) -> bool:
        with self.cond:
            while self.paused and not self.stop.is_set():
                self.cond.wait(0.5)
            if self.stop.is_set() or time.monotonic() > self.deadline:
                return False
            self.inflight += 1
            return True

    def leave(self) -> None:
        with self.cond:
            self.inflight -= 1
            self.cond.notify_all()

    def pause(self) -> bool:
        end = time.monotonic() + OP_DEADLINE + 10
        with self.cond:
            self.paused = True
            while self.inflight and time.monotonic() < end:
                self.cond.wait(0.5)
            return self.inflight == 0

    def resume(self) -> None:
        with self.cond:
            self.paused = False
            self.cond.notify_all()

    def loop(self, kind: str, op, pause: float) -> None:
        """op(i) again and again until stopped; each call is one request of kind, timed and checked."""
        for i in range(10_000_000):  # bounded; the deadline ends it first
            if not self.enter():
                return
            t0 = time.monotonic()
            try:
                op(i)
                ok, cause = True, None
            except Exception as e:  # every failure is counted and reported, none ends the load
                ok, cause = False, _cause(e)
            finally:
                self.leave()
            t1 = time.monotonic()
            with self.out:
                self.requests[kind] += 1
                if not ok:
                    self.failures[kind] += 1
            if not ok:
                self.emit("F", {"kind": kind, "cause": cause, "t0": t0, "t1": t1})
            self.stop.wait(pause if ok else FAILED_PAUSE)

    def count_corruption(self, got: bytes, want: bytes) -> int:
        bad = sum(a != b for a, b in zip(got, want)) + abs(len(got) - len(want))
        with self.out:
            self.corrupted += bad
        return bad

    # -- requests ---------------------------------------------------------------

    def http(self, host: str, method: str, path: str, payload: bytes = b"") -> bytes:
        """One request on its own connection (Connection: close); the body of a 200 answer, complete."""
        end = time.monotonic() + OP_DEADLINE
        with socket.create_connection((host, HTTP_PORT), timeout=IO_TIMEOUT) as s:
            head = f"{method} {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\nContent-Length: {len(payload)}\r\n\r\n"
            s.sendall(head.encode() + payload)
            chunks = []
            while chunk := s.recv(1 << 18):
                chunks.append(chunk)
                if time.monotonic() > end:
                    raise Failed("slow")
        data = b"".join(chunks)
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise Failed("no_answer" if not data else "truncated")
        lines = head.decode("latin-1").split("\r\n")
        if lines[0].split()[1:2] != ["200"]:
            raise Failed("bad_status")
        length = next((int(v) for k, _, v in (ln.partition(":") for ln in lines[1:]) if k.lower() == "content-length"), None)
        if length is None or len(rest) < length:
            raise Failed("truncated")
        return rest[:length]

    def download(self, host: str, n: int) -> None:
        got = self.http(host, "GET", f"/bytes/{n}")
        if self.corrupt_next:
            self.corrupt_next = False
            got = bytes([got[0] ^ 1]) + got[1:]
        want, digest = self.expected[n]
        if len(got) != n:
            raise Failed("truncated")
        if hashlib.sha256(got).digest() != digest:
            self.count_corruption(got, want)
            raise Failed("corrupted")
        with self.out:
            self.bytes += n

    def op_http(self, i: int) -> None:
        targets = (PROXIED4, DIRECT4, PROXIED6, DIRECT6)
        self.download(targets[i % 4], self.SIZES[(i // 4) % len(self.SIZES)])

    def op_short(self, i: int) -> None:
        targets = (DIRECT4, PROXIED4, DIRECT6, PROXIED6)
        payload = random.Random(i).randbytes(1 + (i * 97) % 4000)
        got = self.http(targets[i % 4], "POST", "/upload", payload)
        if got != hashlib.sha256(payload).hexdigest().encode():
            with self.out:
                self.corrupted += len(payload)  # only a digest to compare: the whole upload counts
            raise Failed("corrupted")

    def udp_sockets(self) -> dict:
        """One socket a family for the whole run: one UDP session each in ztun, not one per datagram."""
        socks = {}
        for host in (DIRECT4, DIRECT6):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(1.0)
            socks[host] = s
        return socks

    def op_udp(self, socks: dict, i: int) -> None:
        host = (DIRECT4, DIRECT6)[i % 2]
        s = socks[host]
        payload = struct.pack("!Q", i) + random.Random(-i - 1).randbytes(i % 1400)
        s.sendto(payload, (host, UDP_PORT))
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            try:
                got = s.recv(65535)
            except (socket.timeout, TimeoutError):
                break
            seq = struct.unpack("!Q", got[:8])[0] if len(got) >= 8 else -1
            if 0 <= seq < i:
                with self.out:
                    self.late_datagrams += 1  # the answer to an earlier datagram that timed out
                continue
            if got != payload:
                self.count_corruption(got, payload)
                raise Failed("corrupted")
            return
        raise Failed("lost")

    def op_dns(self, socks: dict, state: dict, i: int) -> None:
        name = NAMES[i % len(NAMES)]
        qtype = (1, 28)[(i // len(NAMES)) % 2]  # A, then AAAA
        server = (DNS4, DNS6)[i % 2]
        s = socks[server]
        qid = i & 0xFFFF
        s.sendto(_dns_query(qid, name, qtype), (server, 53))
        end = time.monotonic() + 2.0
        address = None
        while time.monotonic() < end:
            try:
                got = s.recv(4096)
            except (socket.timeout, TimeoutError):
                break
            if len(got) >= 2 and struct.unpack("!H", got[:2])[0] == qid:
                address = _dns_answer(got, qtype)
                if address is None:
                    raise Failed("dns_no_answer")
                break
        if address is None:
            raise Failed("dns_timeout")
        known = state.setdefault((name, qtype), address)
        if known != address:
            raise Failed("dns_changed")  # a name keeps its fake address while the pool has room
        self.download(address, 64 << 10)

    def run(self) -> None:
        udp = self.udp_sockets()
        dns = {}
        for server in (DNS4, DNS6):
            dns[server] = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
            dns[server].settimeout(1.0)
        dns_state: dict = {}
        threads = [
            threading.Thread(target=self.loop, args=("http", self.op_http, 0.05)),
            threading.Thread(target=self.loop, args=("http", lambda i: self.op_http(i + 2), 0.05)),
            threading.Thread(target=self.loop, args=("short", self.op_short, 0.01)),
            threading.Thread(target=self.loop, args=("udp", lambda i: self.op_udp(udp, i), 0.02)),
            threading.Thread(target=self.loop, args=("dns", lambda i: self.op_dns(dns, dns_state, i), 0.1)),
        ]
        for t in threads:
            t.daemon = True
            t.start()
        # Commands on stdin: pause (answered "paused" once nothing is in flight), resume, stop.
        while not self.stop.is_set():
            line = sys.stdin.readline()
            cmd = line.strip()
            if cmd == "pause":
                self.emit("P", {"idle": self.pause()})
            elif cmd == "resume":
                self.resume()
            elif cmd == "stop" or not line:
                self.stop.set()
        self.resume()
        for t in threads:
            t.join(OP_DEADLINE + 10)
        with self.out:
            summary = {"requests": self.requests, "failures": self.failures, "bytes": self.bytes,
                       "corrupted": self.corrupted, "late_datagrams": self.late_datagrams,
                       "hung": sum(t.is_alive() for t in threads)}
        self.emit("S", summary)
        for s in (*udp.values(), *dns.values()):
            s.close()


def _dns_query(qid: int, name: str, qtype: int) -> bytes:
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)


def _skip_name(data: bytes, pos: int) -> int:
    for _ in range(128):
        n = data[pos]
        if n & 0xC0 == 0xC0:
            return pos + 2
        if n == 0:
            return pos + 1
        pos += n + 1
    raise Failed("dns_bad_answer")


def _dns_answer(data: bytes, qtype: int):
    """The first address of type qtype in a DNS response, or None."""
    try:
        _, flags, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
        if flags & 0x000F:
            return None
        pos = 12
        for _ in range(qd):
            pos = _skip_name(data, pos) + 4
        for _ in range(an):
            pos = _skip_name(data, pos)
            rtype, _, _, rdlen = struct.unpack("!HHIH", data[pos:pos + 10])
            pos += 10
            if rtype == qtype:
                family = socket.AF_INET if qtype == 1 else socket.AF_INET6
                return socket.inet_ntop(family, data[pos:pos + rdlen])
            pos += rdlen
    except (struct.error, IndexError, ValueError):
        raise Failed("dns_bad_answer") from None
    return None


# -- the orchestrator ----------------------------------------------------------------------------------


class Setup(Exception):
    """The soak could not be set up."""


class Soak:
    """The namespaces, the processes in them, the schedule of faults and what was measured."""

    def __init__(self, duration: float, tmp: Path):
        self.duration = duration
        self.tmp = tmp
        tag = uuid.uuid4().hex[:8]
        self.client, self.server = f"ztun-soak-c-{tag}", f"ztun-soak-s-{tag}"
        self.made_ns: list = []
        self.hosts_dir = Path("/etc/netns") / self.server
        self.made_etc_netns = False
        self.procs: list = []  # every process started, stopped by PID at the end
        self.appliance = self.microsocks = self.http = self.worker = None
        self.windows: list = []  # (fault, start, end)
        self.faults = dict.fromkeys((*DISRUPTIVE, "reload"), 0)
        self.fault_errors: list = []
        self.failures: list = []
        self.summary = None
        self.pause_answers: queue.Queue = queue.Queue()
        self.samples: dict = {}
        self.t0 = time.monotonic()
        self.appliance_rc = None

    # -- plumbing --------------------------------------------------------------

    def ns(self, name, *cmd, check=True, timeout=30):
        r = subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)
        if check and r.returncode:
            raise Setup(f"{' '.join(cmd)}: {r.stdout}{r.stderr}".strip())
        return r

    def spawn(self, name, *cmd, ready=None, log_name="proc", stdin=subprocess.DEVNULL, stdout=None):
        """cmd in namespace name, in its own session (a Ctrl-C reaches only this script, which stops it)."""
        log = self.tmp / f"{log_name}-{len(self.procs)}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(["ip", "netns", "exec", name, *cmd], stdin=stdin, stdout=stdout or f,
                                 stderr=f if stdout else subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                 text=stdout is not None, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.procs.append(p)  # `ip netns exec` execs the command: p.pid is the command's PID
        p.log = log
        deadline = time.monotonic() + 30
        while ready and ready not in log.read_text(errors="replace"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise Setup(f"{' '.join(cmd)} did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        return p

    @staticmethod
    def kill(p, sig=signal.SIGKILL, timeout=10.0):
        if p is not None and p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout)

    # -- set-up and tear-down ----------------------------------------------------

    def setup(self):
        for name in (self.client, self.server):
            subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            self.made_ns.append(name)
        c, s = self.client, self.server
        self.ns(c, "ip", "link", "add", "zt-c0", "type", "veth", "peer", "name", "zt-s0", "netns", s)
        for name, dev, a4, a6 in ((c, "zt-c0", "198.18.10.1/24", "fd00:10::1/64"), (s, "zt-s0", PROXY + "/24", "fd00:10::2/64")):
            self.ns(name, "ip", "link", "set", "lo", "up")
            self.ns(name, "ip", "link", "set", dev, "addrgenmode", "none")
            self.ns(name, "ip", "addr", "add", a4, "dev", dev)
            self.ns(name, "ip", "-6", "addr", "add", a6, "dev", dev, "nodad")
            self.ns(name, "ip", "link", "set", dev, "up")
        for addr in (PROXIED4 + "/32", DIRECT4 + "/32"):
            self.ns(s, "ip", "addr", "add", addr, "dev", "lo")
        for addr in (PROXIED6 + "/128", DIRECT6 + "/128"):
            self.ns(s, "ip", "-6", "addr", "add", addr, "dev", "lo")
        self.direct_routes("add")  # the proxied servers have no route but through the proxy
        # microsocks resolves the fake-IP names from its namespace's hosts (`ip netns exec` mounts it)
        self.made_etc_netns = not Path("/etc/netns").is_dir()
        self.hosts_dir.mkdir(parents=True)
        (self.hosts_dir / "hosts").write_text("127.0.0.1 localhost\n" + "".join(f"{PROXIED4} {n}\n" for n in NAMES))
        self.start_http()
        self.spawn(s, sys.executable, str(SERVERS), "udp-echo", str(UDP_PORT), ready="ready", log_name="udp-echo")
        self.start_microsocks()
        config = self.tmp / "ztun.toml"
        config.write_text(CONFIG.format(tun=TUN, control=self.tmp / "control.sock", proxy=PROXY, port=PROXY_PORT))
        self.appliance = self.spawn(c, sys.executable, "-m", "ztun.appliance", "run", "--config", str(config),
                                    ready=" ready: ", log_name="appliance")

    def direct_routes(self, action):
        self.ns(self.client, "ip", "route", action, "198.19.1.0/24", "via", "198.18.10.2")
        self.ns(self.client, "ip", "-6", "route", action, "fd00:19:1::/64", "via", "fd00:10::2")

    def start_http(self):
        self.http = self.spawn(self.server, sys.executable, str(SERVERS), "http", str(HTTP_PORT), ready="ready", log_name="http")

    def start_microsocks(self):
        """microsocks on the proxy address, retried while the port is still held by the one killed."""
        for _ in range(20):
            self.microsocks = self.spawn(self.server, "microsocks", "-i", PROXY, "-p", str(PROXY_PORT), log_name="microsocks")
            deadline = time.monotonic() + 5
            while self.microsocks.poll() is None and time.monotonic() < deadline:
                if f"{PROXY}:{PROXY_PORT}" in self.ns(self.server, "ss", "-Hltn").stdout:
                    return
                time.sleep(0.1)
            self.kill(self.microsocks)
            time.sleep(0.5)
        raise Setup(f"microsocks did not start:\n{self.microsocks.log.read_text(errors='replace')}")

    def teardown(self):
        for p in reversed(self.procs):  # the load first, the appliance before the servers
            try:
                self.kill(p, signal.SIGTERM if p is self.appliance else signal.SIGKILL, STOP_TIMEOUT)
            except (OSError, subprocess.SubprocessError):
                pass
        for name in self.made_ns:
            # Whatever still runs in a namespace of this soak was started by it.
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(self.hosts_dir, ignore_errors=True)
        if self.made_etc_netns:
            try:
                os.rmdir("/etc/netns")
            except OSError:
                pass  # another user's namespace has files there now

    # -- faults ----------------------------------------------------------------

    def fault(self, name):
        """Inject one fault; its window is from its start until what it broke is back."""
        start = time.monotonic()
        try:
            if name == "proxy_restart":
                self.kill(self.microsocks)
                time.sleep(3)
                self.start_microsocks()
            elif name == "http_restart":
                self.kill(self.http)
                time.sleep(2)
                self.start_http()
            elif name == "route_change":
                self.direct_routes("del")
                time.sleep(3)
                self.direct_routes("add")
            elif name == "link_flap":
                self.ns(self.server, "ip", "link", "set", "zt-s0", "down")
                time.sleep(2)
                self.ns(self.server, "ip", "link", "set", "zt-s0", "up")
                # a link going down drops its IPv6 addresses
                if "fd00:10::2" not in self.ns(self.server, "ip", "-6", "addr", "show", "dev", "zt-s0").stdout:
                    self.ns(self.server, "ip", "-6", "addr", "add", "fd00:10::2/64", "dev", "zt-s0", "nodad")
            elif name == "reload":
                before = self.appliance.log.read_text(errors="replace").count("SIGHUP: reloaded")
                self.appliance.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 10
                while self.appliance.log.read_text(errors="replace").count("SIGHUP: reloaded") <= before:
                    if time.monotonic() > deadline or self.appliance.poll() is not None:
                        raise Setup("no `SIGHUP: reloaded` line within 10 s")
                    time.sleep(0.1)
        except (Setup, OSError, subprocess.SubprocessError) as e:
            self.fault_errors.append(f"{name}: {e}")
        self.faults[name] += 1
        self.windows.append((name, start, time.monotonic()))

    def schedule(self):
        """[(seconds from the start, what)]: warm-up measured, reloads every R, disruptive faults between them."""
        every = min(60.0, self.duration / 4)
        tail = min(30.0, self.duration / 10)  # a quiet end: failures there are nobody's
        events = [(every - 2, "warm")]
        t = every
        while t <= self.duration - tail:
            events.append((t, "reload"))
            t += every
        k, t = 0, every * 1.25
        while t <= self.duration - tail:
            events.append((t, DISRUPTIVE[k % len(DISRUPTIVE)]))
            k += 1
            t += every / 2
        return sorted(events)

    # -- measuring -------------------------------------------------------------

    def sample(self, when):
        pid = self.appliance.pid
        rss = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        self.samples[when] = (rss / 1024, len(os.listdir(f"/proc/{pid}/fd")))

    def quiet_sample(self, when):
        """A sample with no request in flight (open connections are descriptors): the load paused."""
        self.tell("pause")
        try:
            idle = self.pause_answers.get(timeout=OP_DEADLINE + 20)
        except queue.Empty:
            idle = False
        time.sleep(1.5)  # relays end and are collected within milliseconds; sessions stay
        self.sample(when)
        if not idle:
            self.fault_errors.append(f"{when}: the load did not pause")

    def tell(self, command):
        """A command to the load (pause, resume, stop); one that has died hears nothing and reports nothing."""
        try:
            self.worker.stdin.write(command + "\n")
            self.worker.stdin.flush()
        except OSError:
            pass

    def read_worker(self):
        for line in self.worker.stdout:
            tag, _, rest = line.partition(" ")
            if tag == "F":
                self.failures.append(json.loads(rest))
            elif tag == "S":
                self.summary = json.loads(rest)
            elif tag == "P":
                self.pause_answers.put(json.loads(rest)["idle"])

    def run(self):
        time.sleep(0.5)
        self.sample("start")
        t0 = self.t0 = time.monotonic()
        self.worker = self.spawn(self.client, sys.executable, str(Path(__file__).resolve()), "--load-worker",
                                 str(self.duration + 60), stdin=subprocess.PIPE, stdout=subprocess.PIPE, log_name="load")
        reader = threading.Thread(target=self.read_worker, daemon=True)
        reader.start()
        for at, what in self.schedule():
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if self.appliance.poll() is not None:
                break
            if what == "warm":
                self.quiet_sample("warm")
                self.tell("resume")
            else:
                self.fault(what)
        if self.appliance.poll() is None:
            time.sleep(max(0.0, t0 + self.duration - time.monotonic()))
        alive = self.appliance.poll() is None
        if alive:
            self.quiet_sample("end")
        self.tell("stop")
        try:
            self.worker.wait(OP_DEADLINE + 30)
        except subprocess.TimeoutExpired:
            self.kill(self.worker)
        reader.join(10)
        self.appliance_rc = self.stop_appliance() if alive else self.appliance.returncode

    def stop_appliance(self):
        self.appliance.send_signal(signal.SIGTERM)
        try:
            return self.appliance.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill(self.appliance)
            return "hung"

    # -- the report ------------------------------------------------------------

    def blame(self, failure):
        """The fault whose window (plus GRACE) overlaps the failed request's span; None if none does."""
        hit = [name for name, start, end in self.windows if failure["t0"] <= end + GRACE and failure["t1"] >= start]
        for name in hit:
            if name != "reload":
                return name
        return hit[0] if hit else None

    def report(self) -> int:
        lines = [("duration", self.duration, "s")]
        s = self.summary or {"requests": dict.fromkeys(KINDS, 0), "bytes": 0, "corrupted": 0, "late_datagrams": 0, "hung": 0}
        for kind in KINDS:
            lines.append((f"requests_{kind}", s["requests"][kind], "requests"))
        lines.append(("bytes_downloaded_checked", s["bytes"], "bytes"))
        lines.append(("udp_late_datagrams", s["late_datagrams"], "datagrams"))
        for name, n in self.faults.items():
            lines.append((f"faults_{name}", n, "faults"))
        after = dict.fromkeys(self.faults, 0)
        causes: dict = {}
        unexplained = []
        for f in self.failures:
            who = self.blame(f)
            if who is None:
                unexplained.append(f)
            else:
                after[who] += 1
            key = f"failures_{'unexplained' if who is None else 'explained'}_{f['kind']}_{f['cause']}"
            causes[key] = causes.get(key, 0) + 1
        for name, n in after.items():
            lines.append((f"failures_after_{name}", n, "failures"))
        lines.append(("failures_unexplained", len(unexplained), "failures"))
        for key in sorted(causes):
            lines.append((key, causes[key], "failures"))
        lines.append(("corrupted_bytes", s["corrupted"], "bytes"))
        growth = {}
        for i, metric in enumerate(("rss", "fds")):
            unit = "MiB" if metric == "rss" else "fds"
            for when in ("start", "warm", "end"):
                if when in self.samples:
                    value = self.samples[when][i]
                    lines.append((f"{metric}_{when}", f"{value:.1f}" if metric == "rss" else value, unit))
            if "warm" in self.samples and "end" in self.samples and self.samples["warm"][i]:
                growth[metric] = (self.samples["end"][i] / self.samples["warm"][i] - 1) * 100
                lines.append((f"{metric}_growth_after_warmup", f"{growth[metric]:.1f}", "%"))
        rc = self.appliance_rc
        lines.append(("appliance_exit", rc, "code"))
        for name, value, unit in lines:
            print(f"{name} {value} {unit}", flush=True)

        problems = []
        if s["corrupted"]:
            problems.append(f"{s['corrupted']} corrupted bytes")
        if unexplained:
            problems.append(f"{len(unexplained)} unexplained failures, the first: " +
                            "; ".join(f"{f['kind']} {f['cause']} at {f['t1'] - self.t0:.1f}s" for f in unexplained[:5]))
        if self.summary is None:
            problems.append("the load ended without its summary")
        elif self.summary["hung"]:
            problems.append(f"{self.summary['hung']} load threads hung")
        if rc != 0:
            problems.append(f"the appliance did not run to the end and exit 0 (exit {rc})")
        problems += [f"fault {e}" for e in self.fault_errors]
        if self.duration >= GROWTH_MIN_DURATION:
            problems += [f"{m} grew {g:.1f}% after warm-up" for m, g in growth.items() if g > GROWTH_LIMIT]
        for p in problems:
            print(f"soak: {p}", file=sys.stderr)
        return 1 if problems else 0


def _why_not() -> str | None:
    if not sys.platform.startswith("linux"):
        return "needs Linux"
    if os.geteuid() != 0:
        return "run as root: the soak builds network namespaces"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun (modprobe tun)"
    missing = [t for t in ("ip", "ss", "microsocks") if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (apt-get install iproute2 microsocks)"
    return None


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def main() -> int:
    if sys.argv[1:2] == ["--load-worker"]:
        Load(float(sys.argv[2])).run()
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load, 20..86400 (default 600)")
    ap.add_argument("--log-dir", type=Path, help="keep the appliance's, servers' and load's logs here")
    args = ap.parse_args()
    if not 20 <= args.duration <= 86400:
        ap.error("--duration: 20..86400 seconds")
    why = _why_not()
    if why:
        print(f"soak: {why}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also where a shell started it ignoring SIGINT
    with tempfile.TemporaryDirectory(prefix="ztun-soak-") as tmp:
        soak = Soak(args.duration, Path(tmp))
        try:
            soak.setup()
            soak.run()
            rc = soak.report()
        except Setup as e:
            print(f"soak: set-up failed: {e}", file=sys.stderr)
            rc = 1
        except KeyboardInterrupt:
            print("soak: interrupted", file=sys.stderr)
            rc = 130
        finally:
            # Nothing interrupts the tear-down: a second Ctrl-C waits for it.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            soak.teardown()
            if args.log_dir:
                args.log_dir.mkdir(parents=True, exist_ok=True)
                for f in Path(tmp).glob("*.log"):
                    shutil.copy(f, args.log_dir / f.name)
    return rc


if __name__ == "__main__":
    sys.exit(main())
