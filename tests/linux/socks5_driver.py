"""Drives ztun's Socks5Outbound against a real SOCKS5 server; run inside a test namespace, prints one JSON line.

python socks5_driver.py URL connect TARGETS_JSON   # [[host, port, domain|null], ...]: CONNECT, then
                                                      # GET /bytes/N from servers.py's http server, checked
python socks5_driver.py URL udp TARGETS_JSON N     # UDP ASSOCIATE, N datagrams to each target, echoed
"""

import json
import os
import random
import socket
import sys
import time

from ztun.outbound.socks5 import Socks5Outbound
from ztun.loop import Loop

FWMARK = 0x2022
DEADLINE = 30.0


def run_until(loop, cond, timeout):
    end = time.monotonic() + timeout
    while not cond() and time.monotonic() < end:
        loop.run_once(0.05)
    return cond()


def tcp(loop, out, targets):
    results = []
    for host, port, domain in targets:
        done = []
        out.open_tcp((host, port), lambda s, e: done.append((s, e)), domain=domain)
        if not run_until(loop, lambda: done, DEADLINE):
            results.append({"ok": False, "reason": "open_tcp never called back"})
            continue
        sock, err = done[0]
        if sock is None:
            results.append({"ok": False, "errno": err.errno, "reason": err.strerror})
            continue
        size = 1 << 20
        with sock:
            sock.setblocking(True)
            sock.settimeout(DEADLINE)
            sock.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
            response = b""
            while chunk := sock.recv(1 << 16):
                response += chunk
        body = response.partition(b"\r\n\r\n")[2]
        results.append({"ok": True, "echo_ok": body == random.Random(size).randbytes(size)})
    return results


def udp(loop, out, targets, n):
    got, closed = [], []
    flow = out.open_udp(socket.AF_INET, lambda p, s: got.append((p, s)), closed.append)
    sent = 0
    window = 32  # outstanding datagrams: the relay is not overrun, so every loss is a real one
    expected = {}
    start = time.monotonic()
    for ti, (host, port, domain) in enumerate(targets):
        for i in range(n):
            payload = b"%d:%d:" % (ti, i) + os.urandom(64 + i % 512)
            expected[payload] = domain or host
            flow.send(payload, (host, port), domain=domain)
            sent += 1
            run_until(loop, lambda: sent - len(got) < window or closed, 5)
    run_until(loop, lambda: len(got) >= sent or closed, 10)
    matched = sum(1 for p, s in got if expected.get(p) is not None)
    sources = sorted({s[0] for _, s in got})
    flow.close()
    return {"sent": sent, "received": len(got), "matched": matched, "sources": sources, "closed": closed,
            "seconds": round(time.monotonic() - start, 3)}


def main():
    url, mode, targets = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with Loop() as loop:
        out = Socks5Outbound.from_url(loop, url, fwmark=FWMARK, connect_timeout=10.0)
        if mode == "connect":
            result = {"results": tcp(loop, out, targets)}
        else:
            result = udp(loop, out, targets, int(sys.argv[4]))
        result["counters"] = out.counters
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
