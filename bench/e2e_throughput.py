#!/usr/bin/env python3
"""End-to-end figures of ztun against the kernel-only path; run as root: `sudo python bench/e2e_throughput.py`.

Builds its own namespaces (removed at the end, also on errors): a client namespace that runs
ztun and a server namespace behind a veth with nginx, iperf3 and a TCP echo server on
198.19.0.1. "kernel" is the client reaching the server over the veth with no ztun; every
"ztun-*" configuration routes 198.19.0.0/16 into the TUN, and ztun forwards it directly.
With --topology gateway the load comes from a third namespace, a host whose gateway is the
client namespace (forwarding on): "kernel" is then plain forwarding, the limit of a gateway.
Configurations alternate round by round (A B C A B C ...) because this machine drifts.
UDP runs at each --udp-rates rate both ways (down: iperf3 -R, the replies ztun writes to the
TUN, coalesced into USO packets unless ZTUN_UDP_GRO=0: config ztun-mtu1500-nogro). Metric
udpmax searches each way for the highest iperf3 -u rate that loses under 1% (doubling from
100 Mbit/s, then halving the gap, ten runs at most): with 1400-byte datagrams (udp_max_*, Mbit/s)
and with 64-byte ones (udp_pps_64_*, datagrams per second). Metric udpsessions: 10,000 client
ports each send a 64-byte datagram every 100 ms for 20 s to an echo server (bench/udp_sessions.c,
built with cc): the share answered (and of the datagrams sent after the first 2 s, which leaves the
sessions' start out), ztun's CPU and RSS.
Metric idle: ztun's CPU over 5 s with no traffic, after the other metrics (a thread that spins
for more packets must stop when they stop).
Prints one `name value unit` line per metric (medians over rounds), then ratios to kernel.
The SOCKS5 configurations' download also reports the proxy's packets per second and bytes per
packet into the client namespace (the veth's receive counts: a proxy that writes small pieces
sends small segments) and its ratio to the kernel path's iperf3 -R (ratio_*_tcp_down_kernel).
Needs iperf3, ab (apache2-utils) and nginx (nginx-light); the SOCKS5 configurations microsocks,
and the redsocks reference redsocks and iptables.
"""

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER4 = "198.19.0.1"
TUN_ARGS = ["--tun-name", "zt-bench0", "--inet4", "198.18.0.1/28", "--inet6", "fd00:18::1/124",
            "--route", "198.19.0.0/16", "--route", "fd00:19::/64"]
# iperf3's UDP sockets get 4 MiB buffers: with the default (~200 KiB) the receiving iperf3, not the
# path, loses datagrams at 1 Gbit/s on this 2-core machine (UdpRcvbufErrors in its namespace)
UDP_BUFFER = ("-w", "4M")
METRICS = ("tcp", "cps", "rtt", "udp", "udpmax", "udpecho", "udpsessions", "rss", "idle")
CONFIGS = {
    "kernel": None,
    "ztun": {"mtu": "65535"},  # the defaults: offload on, NAPI off (the kernel's receive work inline in the TUN writes)
    "ztun-nooffload": {"mtu": "65535", "args": ["--offload", "off"]},
    "ztun-napi-auto": {"mtu": "65535", "args": ["--napi", "auto"]},  # a NAPI thread while saturated with large packets
    "ztun-napi-on": {"mtu": "65535", "args": ["--napi", "on"]},  # always in a NAPI thread
    "ztun-sockq-off": {"mtu": "65535", "env": {"ZTUN_SOCKQ": "0"}},  # connect/shutdown/close on the loop's thread
    "ztun-mtu1500": {"mtu": "1500"},
    "ztun-mtu1500-nooffload": {"mtu": "1500", "args": ["--offload", "off"]},  # and so --napi auto
    "ztun-mtu1500-nooffload-napi-off": {"mtu": "1500", "args": ["--offload", "off", "--napi", "off"]},
    "ztun-mtu1500-nogro": {"mtu": "1500", "env": {"ZTUN_UDP_GRO": "0"}},  # offload, but UDP replies written one by one
    "ztun-python": {"mtu": "65535", "env": {"ZTUN_NO_EXTENSIONS": "1"}},
    "ztun-relay-loop": {"mtu": "65535", "env": {"ZTUN_RELAY": "loop"}},
    "ztun-udp-python": {"mtu": "65535", "env": {"ZTUN_UDP": "python"}},  # the UDP table's twin: Python per datagram
    "ztun-udp-nogso": {"mtu": "65535", "env": {"ZTUN_UDP_GSO": "0"}},  # each datagram its own send (no UDP GSO runs)
    "ztun-udp-thread": {"mtu": "65535", "env": {"ZTUN_UDP_SENDER": "thread"}},  # the table's sendmmsg on a thread of its own
    "ztun-udp-rxgro": {"mtu": "65535", "env": {"ZTUN_UDP_RX_GRO": "1"}},  # UDP_GRO on the table's sockets
    # The client's veth coalescing as a NIC does (Bench.veth_gro; for metric udp, TCP differs there): the
    # server's datagrams reach ztun's sockets coalesced where they have UDP_GRO (ZTUN_UDP_RX_GRO=1), one by one where not.
    "ztun-vethgro": {"mtu": "65535", "veth_gro": True},
    "ztun-vethgro-udp-rxgro": {"mtu": "65535", "veth_gro": True, "env": {"ZTUN_UDP_RX_GRO": "1"}},
    "ztun-near": {"mtu": "65535", "env": {"ZTUN_RELAY_NEAR": "1"}},  # new relays pumped on the loop's thread until bulk
    "ztun-nopump": {"mtu": "65535", "env": {"ZTUN_TUN_PUMP": "off"}},  # the loop reads the TUN (no TUN pump thread)
    "ztun-pump-on": {"mtu": "65535", "env": {"ZTUN_TUN_PUMP": "on"}},  # the pump reads the TUN always (never the loop)
    "ztun-nospin": {"mtu": "65535", "env": {"ZTUN_PUMP_SPIN": "0", "ZTUN_RELAY_SPIN": "0"}},  # both threads sleep at once
    "ztun-pump-spin": {"mtu": "65535", "env": {"ZTUN_RELAY_SPIN": "0"}},  # only the TUN pump spins, not the relay engine
    "ztun-nobatch": {"mtu": "65535", "env": {"ZTUN_RELAY_BATCH": "0"}},  # no receive low-water mark for small-segment streams
    # The SOCKS5 path, measured with the same Python load tool both ways: through ztun to the
    # proxy (the client knows nothing of it), and the client speaking SOCKS5 to microsocks itself.
    "ztun-socks": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1080"], "socks": "ztun"},
    "ztun-socks-sockq-off": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1080"], "socks": "ztun",
                             "env": {"ZTUN_SOCKQ": "0"}},
    "ztun-socks-relay-loop": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1080"], "socks": "ztun",
                              "env": {"ZTUN_RELAY": "loop"}},
    "ztun-socks-nopump": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1080"], "socks": "ztun",
                          "env": {"ZTUN_TUN_PUMP": "off"}},
    "ztun-socks-near": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1080"], "socks": "ztun",
                        "env": {"ZTUN_RELAY_NEAR": "1"}},
    # the proxy's socket read as each small segment lands, not in batches at a low-water mark
    "ztun-socks-nobatch": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1080"], "socks": "ztun",
                           "env": {"ZTUN_RELAY_BATCH": "0"}},
    # the SOCKS5 negotiation's twin: each exchange with the proxy a loop callback (not the native engine)
    "ztun-socks-pyhs": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1080"], "socks": "ztun",
                        "env": {"ZTUN_HANDSHAKE": "python"}},
    # neither native thread spins before it sleeps (as ztun-nospin); the TUN pump alone (as ztun-pump-spin)
    "ztun-socks-nospin": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1080"], "socks": "ztun",
                          "env": {"ZTUN_PUMP_SPIN": "0", "ZTUN_RELAY_SPIN": "0"}},
    "ztun-socks-pump-spin": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1080"], "socks": "ztun",
                               "env": {"ZTUN_RELAY_SPIN": "0"}},
    "socks-only": {"socks": "client"},
    # References for the SOCKS5 path, with the same load tool. ztun's direct path (no proxy):
    # what ztun costs without any SOCKS5 work. redsocks (C, libevent) behind an iptables
    # REDIRECT in the client namespace: a transparent redirector to the same microsocks with
    # no TUN at all, the least a transparent path can cost (needs redsocks and iptables).
    "ztun-direct-pyload": {"mtu": "65535", "socks": "ztun"},
    # UDP through a SOCKS5 UDP ASSOCIATE (danted): ztun relaying through it, and the client speaking
    # SOCKS5 to it itself (metric udpecho only: iperf3 speaks no SOCKS5), so the two rates say whether
    # ztun or danted is the bottleneck.
    "ztun-danted": {"mtu": "65535", "args": ["--outbound", "socks5://198.18.10.2:1081"], "danted": True},
    "danted-only": {"danted": "client"},
    "redsocks": {"socks": "redsocks"},
}
OPTIONAL = ("redsocks", "ztun-danted", "danted-only",  # not in the default run: they need tools the benchmark does not otherwise
            "ztun-vethgro", "ztun-vethgro-udp-rxgro",  # or change the veths (for metric udp)
            "ztun-pump-spin",  # or measured no steady gain (README, performance)
            "ztun-socks-pyhs", "ztun-socks-nospin", "ztun-socks-pump-spin")  # or compare one lever on the proxy path
PROXY = "198.18.10.2:1080"
# An ethtool value (ETHTOOL_SGRO 0x2C, ETHTOOL_STSO 0x1F: argv[2]) on or off (argv[3] "1"/"0") for the
# device argv[1], over SIOCETHTOOL (no ethtool needed)
ETHTOOL_SET = r"""
import ctypes, fcntl, socket, struct, sys
val = ctypes.create_string_buffer(struct.pack("=II", int(sys.argv[2], 0), sys.argv[3] == "1"), 8)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    fcntl.ioctl(s.fileno(), 0x8946, struct.pack("16sP", sys.argv[1].encode(), ctypes.addressof(val)) + bytes(16))
"""
DANTE = ("198.18.10.2", "1081")
# danted (Dante 1.4) for CONNECT and UDP ASSOCIATE without authentication, its UDP relay's external
# side on the server's address (as tests/linux/test_socks5_servers.py)
DANTED_CONF = """\
logoutput: stderr
internal: {proxy} port = {port}
external: 198.19.0.1
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
}}
socks pass {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
    command: connect udpassociate
}}
socks pass {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
    command: udpreply
}}
"""
# The round-trip time is that of an appliance at rest: after the saturating TCP and HTTP runs,
# --napi auto takes up to a second to take the kernel's receive work back inline (ztun.tun.napi),
# and the TUN pump's auto mode a second to take the device back from the loop.
SETTLE = 2.0
IDLE_SECONDS = 5.0  # metric idle: ztun's CPU over this long with no traffic

BULK_SERVER = r"""
import socket, threading
def source(c):
    buf = bytes(1 << 20)
    with c:
        try:
            while True:
                c.sendall(buf)
        except OSError:
            pass
def sink(c):
    buf = bytearray(1 << 20)
    with c:
        while c.recv_into(buf):
            pass
servers = [(socket.create_server(("", port), backlog=64), fn) for port, fn in ((9010, source), (9011, sink))]
print("ready", flush=True)
def serve(srv, fn):
    while True:
        threading.Thread(target=fn, args=(srv.accept()[0],), daemon=True).start()
for srv, fn in servers[1:]:
    threading.Thread(target=serve, args=(srv, fn), daemon=True).start()
serve(*servers[0])
"""

# mode (down | up | cps | rtt: 3,000 1-byte round trips to the echo server, p50 and p99 in us),
# the server, seconds, the SOCKS5 proxy host:port or "-" for none, and for cps the connections
# kept in flight (4 processes, each with that many / 4 threads). It prints "go" as the
# measured window starts and the result as it ends (CPU is read between).
SOCKS_LOAD = r"""
import multiprocessing, socket, struct, sys, threading, time
mode, server, seconds, proxy = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
inflight = int(sys.argv[5]) if len(sys.argv) > 5 else 4

def connect(port):
    if proxy == "-":
        s = socket.create_connection((server, port), timeout=10)
    else:
        host, pport = proxy.rsplit(":", 1)
        s = socket.create_connection((host, int(pport)), timeout=10)
        s.sendall(b"\x05\x01\x00")
        if s.recv(2) != b"\x05\x00":
            raise OSError("socks5 greeting refused")
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(server) + struct.pack("!H", port))
        reply = b""
        while len(reply) < 10:
            reply += s.recv(10 - len(reply))
        if reply[1]:
            raise OSError(f"socks5 connect failed: {reply[1]}")
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def bulk(up):
    buf = bytearray(1 << 20)
    print("go", flush=True)
    s = connect(9011 if up else 9010)
    n, end = 0, time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < end:
        n += s.send(buf) if up else s.recv_into(buf)
    elapsed = time.monotonic() - t0
    s.close()
    return n * 8 / elapsed / 1e9

def one_by_one(counts, end):
    n = 0
    while time.monotonic() < end:
        s = connect(8080)
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        while s.recv(4096):
            pass
        s.close()
        n += 1
    counts.append(n)

def conns(threads):
    counts, end = [], time.monotonic() + seconds
    workers = [threading.Thread(target=one_by_one, args=(counts, end)) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return sum(counts)

def rtt(n=3000):
    s = connect(9009)
    out = []
    print("go", flush=True)
    for i in range(n + 200):
        t = time.perf_counter_ns()
        s.send(b"x")
        s.recv(1)
        if i >= 200:
            out.append(time.perf_counter_ns() - t)
    s.close()
    out.sort()
    return f"{out[len(out) // 2] / 1000} {out[len(out) * 99 // 100] / 1000}"

if mode == "rtt":
    print(rtt(), flush=True)
elif mode == "cps":
    with multiprocessing.Pool(4) as pool:
        print("go", flush=True)  # the workers are up: the measured window starts
        print(sum(pool.map(conns, [max(1, inflight // 4)] * 4)) / seconds, flush=True)
else:
    print(bulk(mode == "up"), flush=True)
"""

ECHO_SERVER = r"""
import socket, threading
srv = socket.create_server(("::", 9009), family=socket.AF_INET6, dualstack_ipv6=True, backlog=64)
print("ready", flush=True)
def serve(c):
    with c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while d := c.recv(4096):
            c.sendall(d)
while True:
    threading.Thread(target=serve, args=(srv.accept()[0],), daemon=True).start()
"""

HOLD_CONNECTIONS = r"""
import socket, sys, time
conns = [socket.create_connection((sys.argv[1], 9009), timeout=10) for _ in range(int(sys.argv[2]))]
print("open", flush=True)
time.sleep(float(sys.argv[3]))
"""

REDSOCKS_CONF = """
base {{ log_debug = off; log_info = off; log = stderr; daemon = off; redirector = iptables; }}
redsocks {{ local_ip = 127.0.0.1; local_port = 12345; ip = {proxy_ip}; port = {proxy_port}; type = socks5; }}
"""

NGINX_CONF = """
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 8080 reuseport;
        listen [::]:8080 reuseport;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


class Bench:
    def __init__(self, seconds: float, tmp: Path, topology: str = "local", udp_rates=("300M",), socks=False, metrics=METRICS,
                 danted=False):
        self.seconds = seconds
        self.danted = danted
        self.metrics = set(metrics)
        self.socks = socks
        self.microsocks = None
        self.udp_rates = udp_rates
        self._veth_gro = False  # as a veth starts
        self.tmp = tmp
        self.topology = topology
        tag = uuid.uuid4().hex[:6]
        self.client, self.server = f"ztun-bc-{tag}", f"ztun-bs-{tag}"
        self.host = f"ztun-bh-{tag}" if topology == "gateway" else None
        self.load = self.host or self.client  # where iperf3, ab and the RTT client run
        self.procs: list = []

    # -- plumbing --------------------------------------------------------------

    def ns(self, name, *cmd, check=True, timeout=120, env=None):
        r = subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {r.stdout}{r.stderr}")
        return r

    def spawn(self, name, *cmd, ready=None, env=None, log=None, repo=REPO):
        log = log or self.tmp / f"proc-{len(self.procs)}.log"
        with open(log, "wb") as f:
            p = subprocess.Popen(["ip", "netns", "exec", name, *cmd], stdout=f, stderr=subprocess.STDOUT, cwd=repo,
                                 env={**os.environ, "PYTHONPATH": str(repo), **(env or {})})
        self.procs.append(p)
        deadline = time.monotonic() + 30
        while ready and ready not in log.read_text(errors="replace"):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(cmd)} did not start:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        return p, log

    def veth(self, a, a_dev, a_addrs, b, b_dev, b_addrs):
        """A veth pair between namespaces a and b, each end up with an IPv4 and an IPv6 address."""
        self.ns(a, "ip", "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b)
        for name, dev, (a4, a6) in ((a, a_dev, a_addrs), (b, b_dev, b_addrs)):
            self.ns(name, "ip", "link", "set", "lo", "up")
            self.ns(name, "ip", "addr", "add", a4, "dev", dev)
            self.ns(name, "ip", "-6", "addr", "add", a6, "dev", dev, "nodad")
            self.ns(name, "ip", "link", "set", dev, "up")

    def setup(self):
        for name in self.namespaces():
            subprocess.run(["ip", "netns", "add", name], check=True)
        c, s = self.client, self.server
        self.veth(c, "zt-c0", ("198.18.10.1/24", "fd00:10::1/64"), s, "zt-s0", ("198.18.10.2/24", "fd00:10::2/64"))
        self.ns(s, "ip", "addr", "add", SERVER4 + "/32", "dev", "lo")
        self.ns(s, "ip", "-6", "addr", "add", "fd00:19::1/128", "dev", "lo")
        self.ns(c, "ip", "route", "add", "198.19.0.0/16", "via", "198.18.10.2")
        self.ns(c, "ip", "-6", "route", "add", "fd00:19::/64", "via", "fd00:10::2")
        if self.host:
            h = self.host
            self.veth(c, "zt-g1", ("198.18.20.1/24", "fd00:20::1/64"), h, "zt-h0", ("198.18.20.2/24", "fd00:20::2/64"))
            self.ns(h, "ip", "route", "add", "default", "via", "198.18.20.1")
            self.ns(h, "ip", "-6", "route", "add", "default", "via", "fd00:20::1")
            self.ns(c, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
            # the server answers the host itself on the kernel path
            self.ns(s, "ip", "route", "add", "198.18.20.0/24", "via", "198.18.10.1")
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=self.tmp))
        self.spawn(s, "nginx", "-c", str(conf), "-g", "daemon off;")
        self.spawn(s, "iperf3", "-s", "-B", SERVER4, "-p", "5201", "--forceflush", ready="listening")
        if self.metrics & {"udpsessions", "udpecho"}:  # bench/udp_sessions.c: the echo server and the load clients
            self.udp_tool = self.tmp / "udp_sessions"
            subprocess.run(["cc", "-O2", "-o", str(self.udp_tool), str(REPO / "bench" / "udp_sessions.c")], check=True)
            self.spawn(s, str(self.udp_tool), "-e", "9009", SERVER4, ready="ready")
        self.spawn(s, sys.executable, "-c", ECHO_SERVER, ready="ready")
        if self.danted:
            conf = self.tmp / "danted.conf"
            conf.write_text(DANTED_CONF.format(proxy=DANTE[0], port=DANTE[1]))
            self.spawn(s, shutil.which("danted") or "sockd", "-f", str(conf), "-p", str(self.tmp / "danted.pid"))
            deadline = time.monotonic() + 20
            while f"{DANTE[0]}:{DANTE[1]}" not in self.ns(s, "ss", "-ltnH").stdout:
                if time.monotonic() > deadline:
                    raise RuntimeError("danted did not start")
                time.sleep(0.1)
        if self.socks:
            self.microsocks, _ = self.spawn(s, "microsocks", "-i", PROXY.split(":")[0], "-p", PROXY.split(":")[1])
            self.spawn(s, sys.executable, "-c", BULK_SERVER, ready="ready")
        time.sleep(0.3)

    def namespaces(self):
        return [n for n in (self.client, self.server, self.host) if n]

    def everyone_cpu(self) -> float:
        """CPU seconds so far of every process in the benchmark's namespaces (ztun, the servers,
        the proxy) and of the load tools this process ran and reaped (ab, the SOCKS5 load tool)."""
        total = 0.0
        for name in self.namespaces():
            for pid in subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split():
                try:
                    total += _cpu(int(pid))
                except (FileNotFoundError, ProcessLookupError):
                    pass  # ended meanwhile
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return total + ru.ru_utime + ru.ru_stime

    def teardown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        for name in self.namespaces():
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def start_ztun(self, cfg):
        args = [*TUN_ARGS, "--mtu", cfg["mtu"], *cfg.get("args", ()), "--log-level", "WARNING",
                "--control-socket", str(self.tmp / "control.sock")]  # not the host's /run/ztun
        if self.host:
            args += ["--lan-interface", "zt-g1"]
        log = self.tmp / f"ztun-{len(self.procs)}.log"
        self.veth_gro(bool(cfg.get("veth_gro")))
        p, _ = self.spawn(self.client, sys.executable, "-m", "ztun.appliance", "run", *args, env=cfg.get("env"), log=log,
                          repo=cfg.get("repo", REPO))
        # WARNING level hides the ready line: wait for the TUN route instead
        deadline = time.monotonic() + 30
        while "zt-bench0" not in self.ns(self.client, "ip", "route", "get", SERVER4).stdout:
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ztun did not start:\n{log.read_text()}")
            time.sleep(0.05)
        time.sleep(0.2)
        return p

    def veth_gro(self, on: bool):
        """The client's veth as a NIC that coalesces (GRO, NAPI in a thread of its own: datagrams queue up
        between polls, as behind a NIC's interrupt moderation), and the server's without TSO (else a
        veth passes its datagrams by GRO); off: both as the other configurations have them."""
        if on == self._veth_gro:
            return
        self._veth_gro = on
        flag = "1" if on else "0"
        gro = (sys.executable, "-c", ETHTOOL_SET, "zt-c0", "0x2C", flag)
        threaded = ("sh", "-c", f"echo {flag} > /sys/class/net/zt-c0/threaded")
        for cmd in (gro, threaded) if on else (threaded, gro):  # a veth has NAPI while GRO is on
            self.ns(self.client, *cmd)
        self.ns(self.server, sys.executable, "-c", ETHTOOL_SET, "zt-s0", "0x1F", "0" if on else "1")

    def stop_ztun(self, p):
        p.send_signal(signal.SIGTERM)
        p.wait(30)

    # -- metrics --------------------------------------------------------------------

    def iperf(self, *extra):
        for attempt in range(10):
            r = self.ns(self.load, "iperf3", "-c", SERVER4, "-p", "5201", "-J", "-t", str(self.seconds), *extra,
                        timeout=self.seconds + 60)
            result = json.loads(r.stdout)
            error = result.get("error", "")
            if "busy" in error:  # the server still ends the run before
                time.sleep(0.5)
                continue
            if "control message" in error and attempt < 3:  # the server dropped a run's control connection: again
                print(f"  iperf3 {' '.join(extra)}: {error}; again", file=sys.stderr)
                time.sleep(2)
                continue
            break
        if "error" in result:
            raise RuntimeError(f"iperf3 {' '.join(extra)}: {result['error']}")
        return result["end"]

    def tun_counts(self):
        r = self.ns(self.client, "ip", "-j", "-s", "link", "show", "dev", "zt-bench0", check=False)
        if r.returncode:
            return None
        st = json.loads(r.stdout)[0]["stats64"]
        return st["tx"]["bytes"] + st["rx"]["bytes"], st["tx"]["packets"] + st["rx"]["packets"]

    def measure(self, pid, proxy=None, danted=False):
        """The metrics asked for; with proxy (host, port) only udpecho, the client speaking SOCKS5 to it.
        danted: the path goes through danted (its CPU is measured too)."""
        out = {}
        cpu0 = _cpu(pid)
        tun0 = self.tun_counts() if pid else None
        t0 = time.monotonic()
        want = self.metrics if proxy is None else self.metrics & {"udpecho"}
        if "tcp" in want:
            out["tcp_up"] = (self.iperf()["sum_received"]["bits_per_second"] / 1e9, "Gbit/s")
            out["tcp_down"] = (self.iperf("-R")["sum_received"]["bits_per_second"] / 1e9, "Gbit/s")
            out["tcp_4streams"] = (self.iperf("-P", "4")["sum_received"]["bits_per_second"] / 1e9, "Gbit/s")
        if pid and "tcp" in want:
            out["cpu_during_tcp"] = ((_cpu(pid) - cpu0) / (time.monotonic() - t0) * 100, "%")
            tun1 = self.tun_counts()
            if tun0 and tun1 and tun1[1] > tun0[1]:
                out["tun_bytes_per_packet"] = ((tun1[0] - tun0[0]) / (tun1[1] - tun0[1]), "bytes")
        if "cps" in want:
            cpu1, t1, all1 = _cpu(pid), time.monotonic(), self.everyone_cpu()
            r = self.ns(self.load, "ab", "-q", "-n", "20000", "-c", "32", "-s", "10", f"http://{SERVER4}:8080/", timeout=120)
            out["http_conn_per_s"] = (float(re.search(r"Requests per second:\s+([\d.]+)", r.stdout).group(1)), "conn/s")
            failed = int(re.search(r"Failed requests:\s+(\d+)", r.stdout).group(1))
            out["http_failed"] = (failed, "requests")
            # every process's CPU per connection: the load tool's, the server's, ztun's (the bound on
            # connections/s when the cores are the limit)
            out["cpu_all_us_per_conn"] = ((self.everyone_cpu() - all1) / 20000 * 1e6, "us")
            if pid:
                spent = _cpu(pid) - cpu1
                out["cpu_during_cps"] = (spent / (time.monotonic() - t1) * 100, "%")
                out["cpu_us_per_conn"] = (spent / 20000 * 1e6, "us")  # ztun's CPU per connection
        if "rtt" in want:
            if pid and want & {"tcp", "cps"}:
                time.sleep(SETTLE)
            cpu1, t1, sw1 = _cpu(pid), time.monotonic(), _switches(pid)
            rtt = self.ns(self.load, sys.executable, "-c", SOCKS_LOAD, "rtt", SERVER4, "1", "-", "1").stdout.split("\n")[1]
            p50, p99 = map(float, rtt.split())
            out["rtt_p50"] = (p50, "us")
            out["rtt_p99"] = (p99, "us")
            if pid:
                out["cpu_during_rtt"] = ((_cpu(pid) - cpu1) / (time.monotonic() - t1) * 100, "%")
                out["cpu_us_per_round_trip"] = ((_cpu(pid) - cpu1) / 3200 * 1e6, "us")  # 200 warm-up ones too
                # ztun's threads going to sleep (and so woken) per round trip
                out["switches_per_round_trip"] = ((_switches(pid) - sw1) / 3200, "switches")
        if "udp" in want:
            cpu0, tun0, t0 = _cpu(pid), (self.tun_counts() if pid else None), time.monotonic()
            for rate in self.udp_rates:
                for name, extra in (("up", ()), ("down", ("-R",))):
                    c0, t1 = _cpu(pid), time.monotonic()
                    end = self.iperf("-u", "-b", rate, "-l", "1400", *UDP_BUFFER, *extra)
                    udp = end.get("sum_received", end["sum"])  # what reached the receiving side
                    tag = f"udp_{rate.lower()}_{name}"
                    out[f"{tag}_rate"] = (udp["bits_per_second"] / 1e6, "Mbit/s")
                    out[f"{tag}_loss"] = (end["sum"]["lost_percent"], "%")
                    if pid:
                        cpu = (_cpu(pid) - c0) / (time.monotonic() - t1) * 100
                        out[f"{tag}_cpu"] = (cpu, "%")
                        if udp["bits_per_second"]:  # ztun's CPU (% of a core) per Gbit/s carried
                            out[f"{tag}_cpu_per_gbit"] = (cpu / (udp["bits_per_second"] / 1e9), "%/Gbit/s")
            if pid:
                out["cpu_during_udp"] = ((_cpu(pid) - cpu0) / (time.monotonic() - t0) * 100, "%")
                tun1 = self.tun_counts()
                if tun0 and tun1 and tun1[1] > tun0[1]:
                    out["tun_bytes_per_packet_udp"] = ((tun1[0] - tun0[0]) / (tun1[1] - tun0[1]), "bytes")
        if "udpmax" in want:
            for name, extra in (("up", ()), ("down", ("-R",))):
                c0, t1 = _cpu(pid), time.monotonic()
                out[f"udp_max_{name}"] = (self.udp_max(1400, extra) / 1e6, "Mbit/s")
                out[f"udp_pps_64_{name}"] = (self.udp_max(64, extra) / (64 * 8), "datagrams/s")
                if pid:
                    out[f"cpu_during_udpmax_{name}"] = ((_cpu(pid) - c0) / (time.monotonic() - t1) * 100, "%")
        if "udpecho" in want:  # one socket's datagrams echoed, directly or through the SOCKS5 proxy
            c0, d0, t1 = _cpu(pid), self._danted_cpu(), time.monotonic()
            out["udp_echo_max"] = (self.udp_echo_max(1400, proxy) / 1e6, "Mbit/s")
            elapsed = time.monotonic() - t1
            if pid:
                out["cpu_during_udpecho"] = ((_cpu(pid) - c0) / elapsed * 100, "%")
            if danted:
                out["danted_cpu_during_udpecho"] = ((self._danted_cpu() - d0) / elapsed * 100, "%")
        if "udpsessions" in want:  # 10,000 client ports, each a datagram every 100 ms for 20 s
            c0, t1 = _cpu(pid), time.monotonic()
            r = self.ns(self.load, str(self.udp_tool), SERVER4, "9009", "10000", "100", "20", timeout=120)
            sent, received, sent_late, received_late = map(int, r.stdout.split())
            out["udp_sessions_10k_answered"] = (received / max(sent, 1) * 100, "%")
            # after the first 2 s: the sessions' start (each session's first datagram through Python) apart
            out["udp_sessions_10k_answered_after_2s"] = (received_late / max(sent_late, 1) * 100, "%")
            out["udp_sessions_10k_sent"] = (sent, "datagrams")
            if pid:
                out["cpu_during_udp_sessions_10k"] = ((_cpu(pid) - c0) / (time.monotonic() - t1) * 100, "%")
                out["rss_udp_sessions_10k"] = (_rss(pid) / 1024, "MiB")
        if pid and "idle" in want:
            out["cpu_idle"] = (self.idle_cpu(pid), "%")
        if pid:
            out["rss"] = (_rss(pid) / 1024, "MiB")
        return out

    def idle_cpu(self, pid) -> float:
        """ztun's CPU (%) with no traffic, after the rest: a thread that spins must stop when packets do."""
        time.sleep(SETTLE)
        c0, t1 = _cpu(pid), time.monotonic()
        time.sleep(IDLE_SECONDS)
        return (_cpu(pid) - c0) / (time.monotonic() - t1) * 100

    def udp_max(self, size, extra, loss=1.0, runs=10):
        """The highest rate (bit/s of payload received) with under loss % lost, by a bounded search
        over the offered rate; a run that delivers under 90% of what it offered without loss means
        the sender is the limit: its delivered rate is the answer."""
        def run(rate):
            try:
                end = self.iperf("-u", "-b", str(int(rate)), "-l", str(size), *UDP_BUFFER, *extra)
            except (RuntimeError, ValueError) as e:  # a run the load broke (its control connection): not carried
                print(f"  udp {size} B {' '.join(extra)} at {rate / 1e6:.0f} Mbit/s: {e}", file=sys.stderr)
                time.sleep(1)
                return False, 0.0
            got = end.get("sum_received", end["sum"])["bits_per_second"]
            return end["sum"]["lost_percent"] < loss, got

        return _search(run, 100e6 if size >= 1000 else 20e6, loss, runs)

    def udp_echo_max(self, size, proxy=None, loss=1.0, runs=10):
        """udp_max for one socket's datagrams of size bytes echoed by the server (bench/udp_sessions.c -r):
        through ztun or the kernel path to the echo server, or with proxy through a SOCKS5 UDP ASSOCIATE
        (danted). The rate each way (bit/s of payload echoed back) under loss % lost on the round trip."""
        def run(rate):
            cmd = [str(self.udp_tool), "-r", SERVER4, "9009", str(size), f"{rate / (size * 8):.0f}", str(self.seconds),
                   *(proxy or ())]
            r = self.ns(self.load, *cmd, check=False, timeout=self.seconds + 30)
            if r.returncode:
                print(f"  udp echo {size} B at {rate / 1e6:.0f} Mbit/s: {r.stderr.strip()}", file=sys.stderr)
                return False, 0.0
            sent, received = map(int, r.stdout.split())
            lost = (sent - received) / max(sent, 1) * 100
            return lost < loss, received * size * 8 / self.seconds

        return _search(run, 100e6, loss, runs)

    def _danted_cpu(self) -> float:
        """CPU seconds of the danted processes (its main process and the children that relay)."""
        if not self.danted:
            return 0.0
        total = 0.0
        for pid in subprocess.run(["ip", "netns", "pids", self.server], capture_output=True, text=True).stdout.split():
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() in ("danted", "sockd"):
                    total += _cpu(int(pid))
            except (OSError, ValueError):
                pass
        return total


    def measure_socks(self, pid, via):
        """The SOCKS5 path with one Python load tool: TCP each way and HTTP connections per second;
        the CPU of ztun (or redsocks) and of microsocks (the proxy) over all of it and during each
        run, and the whole machine's (busy cores, and CPU microseconds per connection)."""
        if via == "redsocks":
            return self._with_redsocks()
        out = {}
        proxy = PROXY if via == "client" else "-"
        start = self._snapshot(pid)
        runs = (("up", "tcp_up", "Gbit/s", 1), ("down", "tcp_down", "Gbit/s", 1),
                ("cps", "http_conn_per_s", "conn/s", 32),  # in flight as `ab -c 32` on the direct path
                ("cps", "http_conn_per_s_4", "conn/s", 4))  # four clients one connection after another
        for mode, metric, unit, inflight in runs:
            value, before, after = self._socks_load(pid, mode, proxy, inflight)
            value = float(value)
            out[metric] = (value, unit)
            packets = after["link"][0] - before["link"][0]
            if mode == "down" and packets:  # the proxy's packets towards ztun (or the client): their size
                out["tcp_down_proxy_packets_per_s"] = (packets / (after["time"] - before["time"]), "packets/s")
                out["tcp_down_proxy_bytes_per_packet"] = ((after["link"][1] - before["link"][1]) / packets, "bytes")
            self._socks_cpu(out, before, after, f"_{metric}", value * self.seconds if mode == "cps" else 0)
        if "rtt" in self.metrics:  # the 1-byte round trip through the proxy (one connection, 3,000 round trips)
            if pid and self.metrics & {"tcp", "cps"}:
                time.sleep(SETTLE)
            value, _, _ = self._socks_load(pid, "rtt", proxy, 1)
            p50, p99 = map(float, value.split())
            out["rtt_p50"] = (p50, "us")
            out["rtt_p99"] = (p99, "us")
        self._socks_cpu(out, start, self._snapshot(pid), "")
        if pid and "idle" in self.metrics:
            out["cpu_idle"] = (self.idle_cpu(pid), "%")
        if pid:
            out["rss"] = (_rss(pid) / 1024, "MiB")
        return out

    def _snapshot(self, pid):
        """CPU seconds so far of ztun (or the redirector; None without one), of the proxy and of the machine;
        the packets and bytes the client namespace received from the server's (the proxy's side of the veth)."""
        r = self.ns(self.client, "ip", "-j", "-s", "link", "show", "dev", "zt-c0")
        rx = json.loads(r.stdout)[0]["stats64"]["rx"]
        return {"cpu": _cpu(pid) if pid else None, "proxy_cpu": _cpu(self.microsocks.pid),
                "machine_cpu": _machine_busy(), "time": time.monotonic(), "link": (rx["packets"], rx["bytes"])}

    def _socks_load(self, pid, mode, proxy, inflight):
        """One run of the load tool: its result, and the CPU snapshots at the start and end of its window."""
        cmd = ["ip", "netns", "exec", self.load, sys.executable, "-c", SOCKS_LOAD, mode, SERVER4, str(self.seconds),
               proxy, str(inflight)]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
        killer = threading.Timer(self.seconds + 60, p.kill)  # a hung load tool ends the run, not the benchmark
        killer.start()
        try:
            before = after = None
            if p.stdout.readline().strip() == "go":
                before = self._snapshot(pid)
                line = p.stdout.readline()
                after = self._snapshot(pid)
            _, err = p.communicate()
            if before is None or p.returncode:
                raise RuntimeError(f"SOCKS load {mode} failed ({p.returncode}): {err}")
            return line.strip(), before, after
        finally:
            killer.cancel()
            if p.poll() is None:
                p.kill()
                p.wait()

    def _socks_cpu(self, out, before, after, suffix, connections=0.0):
        """CPU between two snapshots: ztun's, the proxy's, the machine's; per connection too, given how many."""
        elapsed = after["time"] - before["time"]
        for name in ("cpu", "proxy_cpu", "machine_cpu"):
            if before[name] is None:
                continue
            seconds = after[name] - before[name]
            out[f"{name}{suffix}"] = (seconds / elapsed * 100, "%")  # of one core: the machine's can exceed 100%
            if connections:
                out[f"{name}_us_per_conn{suffix}"] = (seconds / connections * 1e6, "us")

    def _with_redsocks(self):
        """measure_socks through redsocks: the client's connections to the server are REDIRECTed to it."""
        conf = self.tmp / "redsocks.conf"
        conf.write_text(REDSOCKS_CONF.format(proxy_ip=PROXY.split(":")[0], proxy_port=PROXY.split(":")[1]))
        rule = ["-t", "nat", "-p", "tcp", "-d", "198.19.0.0/16", "-j", "REDIRECT", "--to-ports", "12345"]
        p, log = self.spawn(self.client, "redsocks", "-c", str(conf))
        try:
            deadline = time.monotonic() + 10
            while "127.0.0.1:12345" not in self.ns(self.client, "ss", "-ltnH").stdout:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redsocks did not start:\n{log.read_text(errors='replace')}")
                time.sleep(0.05)
            self.ns(self.client, "iptables", "-A", "OUTPUT", *rule)
            try:
                return self.measure_socks(p.pid, "redirected")
            finally:
                self.ns(self.client, "iptables", "-D", "OUTPUT", *rule, check=False)
        finally:
            p.kill()
            p.wait(10)

    def rss_with_connections(self, pid, n=1000):
        p, log = self.spawn(self.load, sys.executable, "-c", HOLD_CONNECTIONS, SERVER4, str(n), "30", ready="open")
        rss = _rss(pid) / 1024
        p.kill()
        p.wait(10)
        return rss


def _search(run, rate, loss, runs):
    """The highest rate run(rate) -> (under loss % lost, bit/s delivered) carries, doubling from rate,
    then halving the gap, at most runs runs; a run that delivers under 90% of what it offered without
    loss means the sender is the limit: its delivered rate is the answer."""
    best, good, bad = 0.0, 0.0, None
    for _ in range(runs):
        ok, got = run(rate)
        if ok:
            best = max(best, got)
            if got < 0.9 * rate:
                break  # the sender cannot offer more
            good = rate
            rate = rate * 2 if bad is None else (rate + bad) / 2
        else:
            bad = rate
            rate = (good + bad) / 2 if good else rate / 4
        if bad is not None and good and bad - good < 0.05 * bad:
            break
    return best


def _cpu(pid) -> float:
    if not pid:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _switches(pid) -> int:
    """Voluntary context switches so far of every thread of pid (0 without one)."""
    if not pid:
        return 0
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int(re.search(r"^voluntary_ctxt_switches:\s+(\d+)", (task / "status").read_text(), re.M).group(1))
        except (FileNotFoundError, AttributeError):
            pass  # a thread that ended meanwhile
    return total


def _machine_busy() -> float:
    """CPU seconds the machine has spent busy, all cores: user, nice, system, irq and softirq of
    /proc/stat (guest time is inside user; steal, a VM's time taken by the host, is not ours)."""
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in Path("/proc/stat").read_text().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _rss(pid) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each iperf3 run")
    ap.add_argument("--configs", default=",".join(c for c in CONFIGS if c not in OPTIONAL),
                    help=f"comma-separated, of {', '.join(CONFIGS)} (default: all but {', '.join(OPTIONAL)})")
    ap.add_argument("--topology", choices=("local", "gateway"), default="local",
                    help="local: the load runs where ztun runs; gateway: on a host routed through it")
    ap.add_argument("--udp-rates", default="300M,1G", help="iperf3 -b rates of the UDP runs (each up and down)")
    ap.add_argument("--metrics", default=",".join(m for m in METRICS if m not in ("udpmax", "udpsessions")),
                    help=f"comma-separated, of {', '.join(METRICS)} (default: all but udpmax, a search of "
                         "about two minutes a configuration, and udpsessions, 10,000 UDP sessions for 20 s "
                         "(needs cc); fewer: a faster run while iterating)")
    ap.add_argument("--baseline", metavar="DIR",
                    help="another checkout of ztun, built in place (e.g. `git worktree add DIR REV` and "
                         "`python setup.py build_ext --inplace` there): each ztun configuration also runs "
                         "from it as NAME@base, alternating in the same rounds, and ratios NAME/NAME@base are printed")
    args = ap.parse_args()
    metrics = args.metrics.split(",")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise SystemExit(f"unknown metrics: {', '.join(sorted(unknown))}")
    if os.geteuid() != 0:
        raise SystemExit("run as root: the benchmark builds network namespaces")
    missing = [t for t in ("iperf3", "ab", "nginx") if shutil.which(t) is None]
    if missing:
        raise SystemExit(f"needs {', '.join(missing)} (apt-get install iperf3 apache2-utils nginx-light)")
    configs = args.configs.split(",")
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configurations: {', '.join(unknown)}")
    if args.baseline:
        base = Path(args.baseline).resolve()
        if not (base / "ztun" / "appliance").is_dir():
            raise SystemExit(f"--baseline {base}: not a ztun checkout")
        for name in [c for c in configs if CONFIGS[c] and "mtu" in CONFIGS[c]]:
            CONFIGS[f"{name}@base"] = {**CONFIGS[name], "repo": base}
            configs.insert(configs.index(name) + 1, f"{name}@base")
    socks = any((CONFIGS[c] or {}).get("socks") for c in configs)
    danted = any((CONFIGS[c] or {}).get("danted") for c in configs)
    if danted and not (shutil.which("danted") or shutil.which("sockd")):
        raise SystemExit("the danted configurations need danted (apt-get install dante-server)")
    if socks and shutil.which("microsocks") is None:
        raise SystemExit("the SOCKS5 configurations need microsocks (apt-get install microsocks)")
    if "redsocks" in configs and not (shutil.which("redsocks") and shutil.which("iptables")):
        raise SystemExit("the redsocks configuration needs redsocks and iptables (apt-get install redsocks iptables)")
    if "redsocks" in configs and args.topology != "local":
        raise SystemExit("the redsocks configuration is for --topology local: its REDIRECT sees only the client's own connections")
    results = {c: {} for c in configs}
    with tempfile.TemporaryDirectory(prefix="ztun-bench-") as tmp:
        os.chmod(tmp, 0o755)
        bench = Bench(args.seconds, Path(tmp), args.topology, tuple(args.udp_rates.split(",")), socks, metrics, danted)
        try:
            bench.setup()
            for _ in range(args.rounds):
                for name in configs:
                    cfg = CONFIGS[name]
                    p = bench.start_ztun(cfg) if cfg and "mtu" in cfg else None
                    try:
                        via = (cfg or {}).get("socks")
                        if via:
                            measured = bench.measure_socks(p.pid if p else 0, via)
                        elif (cfg or {}).get("danted") == "client":
                            measured = bench.measure(0, proxy=DANTE, danted=True)
                        else:
                            measured = bench.measure(p.pid if p else 0, danted=bool((cfg or {}).get("danted")))
                        for metric, (value, unit) in measured.items():
                            results[name].setdefault(metric, ([], unit))[0].append(value)
                        if p and not via and "rss" in metrics and "rss_1000_conns" not in results[name]:
                            results[name]["rss_1000_conns"] = ([bench.rss_with_connections(p.pid)], "MiB")
                    finally:
                        if p:
                            bench.stop_ztun(p)
        finally:
            bench.teardown()
    for name in configs:
        for metric, (values, unit) in results[name].items():
            print(f"{name}_{metric} {statistics.median(values):.4g} {unit}", flush=True)
    for name in [c for c in configs if f"{c}@base" in results]:
        for metric, (values, _) in results[name].items():
            based = results[f"{name}@base"].get(metric)
            if based and statistics.median(based[0]):
                print(f"vs_base_{name}_{metric} {statistics.median(values) / statistics.median(based[0]):.3f} of-baseline")
    if "socks-only" in results:
        for name in [c for c in configs if (CONFIGS[c] or {}).get("socks") and c != "socks-only"]:
            for metric in ("tcp_up", "tcp_down", "http_conn_per_s", "http_conn_per_s_4"):
                z, o = (statistics.median(results[c][metric][0]) for c in (name, "socks-only"))
                print(f"ratio_{name}_{metric} {z / o:.3f} of-socks-only")
            if "rtt_p50" in results[name] and "rtt_p50" in results["socks-only"]:
                added = statistics.median(results[name]["rtt_p50"][0]) - statistics.median(results["socks-only"]["rtt_p50"][0])
                print(f"added_{name}_rtt_p50 {added:.1f} us-over-socks-only")
    if "danted-only" in results and "udp_echo_max" in results["danted-only"]:
        d = statistics.median(results["danted-only"]["udp_echo_max"][0])
        for name in [c for c in configs if c != "danted-only" and "udp_echo_max" in results[c]]:
            if d:
                print(f"ratio_{name}_udp_echo_max {statistics.median(results[name]['udp_echo_max'][0]) / d:.3f} of-danted-only")
    if "kernel" in results and "tcp_down" in results["kernel"]:
        # the download through the proxy (any load tool) against the kernel path's iperf3 -R: issue #15's figure
        k = statistics.median(results["kernel"]["tcp_down"][0])
        for name in [c for c in configs if (CONFIGS[c] or {}).get("socks") and "tcp_down" in results[c]]:
            print(f"ratio_{name}_tcp_down_kernel {statistics.median(results[name]['tcp_down'][0]) / k:.3f} of-kernel")
    if "kernel" in results:
        for name in configs:
            if name == "kernel" or (CONFIGS[name] or {}).get("socks"):
                continue
            for metric in ("tcp_up", "tcp_down", "tcp_4streams", "http_conn_per_s", "cpu_all_us_per_conn"):
                if metric in results[name]:
                    k = statistics.median(results["kernel"][metric][0])
                    print(f"ratio_{name}_{metric} {statistics.median(results[name][metric][0]) / k:.3f} of-kernel")
            if "rtt_p50" in results[name]:
                for metric in ("rtt_p50", "rtt_p99"):
                    added = statistics.median(results[name][metric][0]) - statistics.median(results["kernel"][metric][0])
                    print(f"added_{name}_{metric} {added:.1f} us")


if __name__ == "__main__":
    main()
