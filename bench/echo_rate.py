#!/usr/bin/env python3
"""ICMP echo rate through the TUN, end to end: its own namespace, `ztun-appliance run`, a bounded `ping -f` flood.

Run as root: `python bench/echo_rate.py`. Prints one `name value unit` line per measure:
echo replies per second with the compiled core and with ZTUN_NO_EXTENSIONS=1 (median of
--runs floods of --count requests, --preload in flight), and the one-in-flight rate that
shows the round-trip latency instead of throughput.
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DST = "198.19.0.7"


def ping_rate(ns, count, preload) -> float:
    """Echo replies per second of one flood, by ping's own clock."""
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-f", "-q", "-l", str(preload), "-c", str(count), "-W", "2", DST],
                       capture_output=True, text=True, timeout=600)
    m = re.search(r"(\d+) packets transmitted, (\d+) received.*time (\d+)ms", r.stdout)
    if not m:
        sys.exit(f"echo_rate: no ping summary:\n{r.stdout}{r.stderr}")
    got, ms = int(m.group(2)), max(int(m.group(3)), 1)
    return got / (ms / 1000)


def appliance(ns, mtu, python_only, logfile):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ZTUN_NO_EXTENSIONS", None)
    if python_only:
        env["ZTUN_NO_EXTENSIONS"] = "1"
    log = open(logfile, "wb")
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "ztun.appliance", "run", "--tun-name", "ztb0",
                             "--inet4", "198.18.0.1/30", "--inet6", "none", "--route", "198.19.0.0/16", "--mtu", str(mtu)],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while " ready: " not in Path(logfile).read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            sys.exit(f"echo_rate: the appliance did not start:\n{Path(logfile).read_text(errors='replace')}")
        time.sleep(0.05)
    return proc, log


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=200_000, help="echo requests per flood (default 200000)")
    p.add_argument("--preload", type=int, default=64, help="requests in flight (ping -l, default 64)")
    p.add_argument("--runs", type=int, default=3, help="floods per implementation; the median is printed (default 3)")
    p.add_argument("--mtu", type=int, default=9000, help="TUN MTU (default 9000)")
    p.add_argument("--impl", choices=("both", "cython", "python"), default="both")
    args = p.parse_args()
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("ping") is None:
        sys.exit("echo_rate: needs root, iproute2 and iputils-ping")

    ns = f"ztun-b-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    proc = log = None
    logfile = f"/tmp/{ns}.log"
    try:
        for impl in (("cython", "python") if args.impl == "both" else (args.impl,)):
            proc, log = appliance(ns, args.mtu, impl == "python", logfile)
            ping_rate(ns, 2000, args.preload)  # warm up
            rates = [ping_rate(ns, args.count, args.preload) for _ in range(args.runs)]
            one = ping_rate(ns, 5000, 1)
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.close()
            suffix = "" if impl == "cython" else "_python"
            print(f"icmp_echo_rate{suffix} {statistics.median(rates):.0f} pps", flush=True)
            print(f"icmp_echo_rate_one_in_flight{suffix} {one:.0f} pps", flush=True)
            proc = None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if log is not None:
            log.close()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if os.path.exists(logfile):
            os.unlink(logfile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
