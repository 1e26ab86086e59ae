"""Run ztun-appliance for real on a macOS (sudo) or Windows (Administrator) runner and check it end to end.

The checks, in order, each failing the job with what it saw:
  1. ICMP echo to an address routed into the TUN is answered (by ztun's stack).
  2. A DNS query to an address routed into the TUN gets a fake-IP answer from the fake pool.
  3. 20 MB over HTTP by that fake address: ztun sends it through a SOCKS5 server started here
     (pproxy, from PyPI) by domain name; the proxy resolves the name (hosts file) to a local HTTP
     server; the body's SHA-256 is checked.
  4. The direct outbound reaches a real server (github.com, its addresses routed into the TUN)
     without looping: ztun's own sockets are bound to the default route's interface, whose
     received-byte counter grows by at least the body.
  5. SIGTERM (Windows: CTRL_C) exits 0 and leaves no route and no interface.
  6. A second run killed outright: fail-closed keeps the routed prefix's unreachable route (a
     connect there fails; on macOS at once with ENETUNREACH), the route journal names it, and
     `ztun-appliance cleanup` leaves nothing.

Nothing here runs in the repository's own CI (it needs a real macOS or Windows host).
"""

import errno
import hashlib
import http.server
import ipaddress
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

WINDOWS = sys.platform == "win32"
TUN_NAME = "ztun0" if WINDOWS else "utun9"
ROUTED = ipaddress.ip_network("198.18.99.0/24")  # into the TUN; nothing real lives there
PING_TARGET, DNS_SERVER = "198.18.99.7", "198.18.99.53"
FAKE_POOL = ipaddress.ip_network("198.18.128.0/20")
NAME = "web.ztun.test"
HTTP_PORT, SOCKS_PORT = 18080, 11080
SIZE = 20 << 20
BLOB = random.Random(2026).randbytes(SIZE)
HOSTS = Path(r"C:\Windows\System32\drivers\etc\hosts") if WINDOWS else Path("/etc/hosts")
WORK = Path(tempfile.mkdtemp(prefix="ztun-check-"))


def step(text: str) -> None:
    print(f"== {text}", flush=True)


def fail(text: str) -> None:
    raise SystemExit(f"FAILED: {text}")


class Blob(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = BLOB if self.path == "/blob" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def github_addresses() -> list:
    return sorted({ai[4][0] for ai in socket.getaddrinfo("github.com", 443, socket.AF_INET, socket.SOCK_STREAM)})


def config_text(direct: list) -> str:
    # fail_closed (on by default) routes each prefix as its two halves under an unreachable route
    # of it, so a host route cannot be kept closed: the github.com addresses go in by their /24
    routes = [str(ROUTED)] + sorted({str(ipaddress.ip_network(f"{a}/24", strict=False)) for a in direct})
    control = "" if WINDOWS else f'\n[control]\nsocket = "{(WORK / "ztun.sock").as_posix()}"\n'
    return f"""
[tun]
name = "{TUN_NAME}"
inet4 = "198.18.0.1/30"
inet6 = "none"
routes = {routes!r}
outbound_interface = "auto"

[[outbounds]]
name = "proxy"
type = "socks5"
url = "socks5://127.0.0.1:{SOCKS_PORT}"

[route]
default = "proxy"

[[route.rules]]
cidr = {[f"{a}/32" for a in direct]!r}
outbound = "direct"

[dns]
mode = "fake-ip"
fake_ip4 = "{FAKE_POOL}"
fake_ip6 = "none"

{control}""".replace("'", '"')


def start_appliance(config: Path, log: Path) -> subprocess.Popen:
    flags = subprocess.CREATE_NEW_PROCESS_GROUP if WINDOWS else 0
    proc = subprocess.Popen([sys.executable, "-m", "ztun.appliance", "run", "--config", str(config)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, creationflags=flags)
    deadline = time.monotonic() + 60
    while " ready: " not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            fail(f"appliance not ready (exit {proc.poll()}):\n{log.read_text(errors='replace')}")
        time.sleep(0.2)
    return proc


def stop(proc: subprocess.Popen) -> int:
    if WINDOWS:
        # CTRL_C to our console group; the check itself ignores it meanwhile
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            os.kill(0, signal.CTRL_C_EVENT)
            return proc.wait(60)
        finally:
            signal.signal(signal.SIGINT, previous)
    proc.send_signal(signal.SIGTERM)
    return proc.wait(60)


def leftovers() -> list:
    """Routes into the routed prefix or out of the TUN, and the TUN itself, as lines (empty: clean)."""
    table = subprocess.run(["route", "print", "-4"] if WINDOWS else ["netstat", "-rn", "-f", "inet"],
                           capture_output=True, text=True).stdout
    found = [line for line in table.splitlines() if "198.18.99" in line or TUN_NAME in line]
    try:
        socket.if_nametoindex(TUN_NAME)
        found.append(f"interface {TUN_NAME} still exists")
    except OSError:
        pass
    return found


def dns_query(name: str) -> list:
    """A-record addresses of name from the DNS server routed into the TUN (a hand-made query)."""
    qid = random.randrange(65536)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question, (DNS_SERVER, 53))
        reply = s.recv(2048)
    rid, flags, _, count = struct.unpack_from("!HHHH", reply)
    if rid != qid or flags & 0x000F:
        fail(f"DNS reply id {rid} flags {flags:#x}")
    pos, out = 12 + len(question), []
    for _ in range(count):
        pos += 2 if reply[pos] & 0xC0 == 0xC0 else reply.index(b"\0", pos) + 1 - pos
        rtype, _, _, length = struct.unpack_from("!HHIH", reply, pos)
        pos += 10
        if rtype == 1:
            out.append(str(ipaddress.IPv4Address(reply[pos:pos + length])))
        pos += length
    return out


def received(iface: str) -> int:
    return psutil.net_io_counters(pernic=True)[iface].bytes_recv


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from ztun.system.default_route import find_default

    uplink = find_default()
    if uplink is None:
        fail("this runner has no default route")
    step(f"default route via {uplink[0]} (index {uplink[1]})")
    before = leftovers()
    if before:
        fail(f"not clean before the run: {before}")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", HTTP_PORT), Blob)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proxy = subprocess.Popen([sys.executable, "-m", "pproxy", "-l", f"socks5://127.0.0.1:{SOCKS_PORT}"])
    hosts = HOSTS.read_text()
    HOSTS.write_text(hosts + f"\n127.0.0.1 {NAME}\n")  # the proxy resolves the name
    direct = github_addresses()
    config = WORK / "ztun.toml"
    config.write_text(config_text(direct))
    log = WORK / "appliance.log"
    try:
        proc = start_appliance(config, log)
        text = log.read_text(errors="replace")
        if f"own sockets bound to {uplink[0]}" not in text:
            fail(f"ztun's sockets are not bound to {uplink[0]}:\n{text}")

        step("1. ICMP echo through the TUN")
        ping = ["ping", "-n", "3", "-w", "3000", PING_TARGET] if WINDOWS else ["ping", "-c", "3", "-t", "10", PING_TARGET]
        r = subprocess.run(ping, capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"ping {PING_TARGET}: {r.stdout}{r.stderr}")

        step("2. fake-IP DNS answer")
        answers = dns_query(NAME)
        if len(answers) != 1 or ipaddress.ip_address(answers[0]) not in FAKE_POOL:
            fail(f"{NAME} answered {answers}, not one address of {FAKE_POOL}")
        fake = answers[0]

        step(f"3. 20 MB by name ({NAME} = {fake}) through the SOCKS5 proxy")
        with urllib.request.urlopen(f"http://{fake}:{HTTP_PORT}/blob", timeout=120) as resp:
            body = resp.read()
        if hashlib.sha256(body).digest() != hashlib.sha256(BLOB).digest():
            fail(f"SHA-256 mismatch ({len(body)} bytes)")

        step(f"4. the direct outbound reaches github.com ({', '.join(direct)}) without looping")
        start = received(uplink[0])
        real = socket.getaddrinfo
        # github.com by the address routed into the TUN (DNS may rotate to one that is not)
        socket.getaddrinfo = lambda host, *a, **k: real(direct[0] if host == "github.com" else host, *a, **k)
        try:
            with urllib.request.urlopen("https://github.com/", timeout=60) as resp:
                page = resp.read()
        finally:
            socket.getaddrinfo = real
        grew = received(uplink[0]) - start
        if grew < len(page):
            fail(f"{uplink[0]} received {grew} bytes for a {len(page)}-byte page: not the physical interface")
        if "via direct up" not in log.read_text(errors="replace"):
            fail("no flow went through the direct outbound")

        step("5. clean exit leaves nothing")
        rc = stop(proc)
        left = leftovers()
        if rc != 0 or left:
            fail(f"exit {rc}, left behind: {left}\n{log.read_text(errors='replace')}")

        step("6. a killed run, then cleanup")
        proc = start_appliance(config, WORK / "appliance-2.log")
        proc.kill()
        proc.wait(30)
        kept = [line for line in leftovers() if "198.18.99" in line]
        if not kept:
            fail("fail-closed: no route of 198.18.99.0/24 outlived the killed run")
        journal = Path(os.environ.get("ProgramData", r"C:\ProgramData"), "ztun") if WINDOWS else Path("/var/run/ztun")
        if not (journal / f"{TUN_NAME}.routes").exists():
            fail(f"no route journal {journal / (TUN_NAME + '.routes')} after the killed run")
        with socket.socket() as s:
            s.settimeout(5)
            code = s.connect_ex((PING_TARGET, HTTP_PORT))
        if code == 0 or (not WINDOWS and code not in (errno.ENETUNREACH, errno.EHOSTUNREACH)):
            fail(f"fail-closed: a connect to {PING_TARGET} after the kill gave {code} ({os.strerror(code) if code else 'connected'})")
        step(f"   fail-closed after the kill: {kept}; connect gave {os.strerror(code)}")
        r = subprocess.run([sys.executable, "-m", "ztun.appliance", "cleanup", "--config", str(config)],
                           capture_output=True, text=True)
        left = leftovers()
        if r.returncode != 0 or left:
            fail(f"cleanup exit {r.returncode}: {r.stdout}{r.stderr}; left behind: {left}")
        step("all checks passed")
    finally:
        HOSTS.write_text(hosts)
        proxy.kill()
        server.shutdown()
        for name in ("appliance.log", "appliance-2.log"):
            if (WORK / name).exists():
                print(f"--- {name}\n{(WORK / name).read_text(errors='replace')[-4000:]}")


if __name__ == "__main__":
    main()
