"""Servers the namespace tests run in their server namespace: `python servers.py KIND PORT`.

http: GET /bytes/N sends N bytes of random.Random(N); POST /upload answers the body's sha256.
halfclose: reads until EOF, then sends back what it read.
udp-echo: sends every datagram back, from the address it was sent to (as DNS servers do).
Each listens on [::] (IPv4 too), prints "ready" and runs until killed.
"""

import hashlib
import random
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def body(n: int) -> bytes:
    return random.Random(n).randbytes(n)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if not self.path.startswith("/bytes/"):
            self.send_error(404)
            return
        data = body(int(self.path.split("/")[2]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        left = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        while left:
            chunk = self.rfile.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
        out = h.hexdigest().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 1024

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def halfclose(port: int):
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128)
    print("ready", flush=True)

    def serve(conn):
        with conn:
            data = b""
            while chunk := conn.recv(1 << 16):
                data += chunk
            conn.sendall(data)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


_IP_PKTINFO = 8  # <linux/in.h>; struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}


def udp_echo(port: int):
    """One socket per family with PKTINFO, so each echo leaves from the address the datagram came to:
    replies from the interface's own address would fail strict rp_filter on a gateway's TUN."""
    s4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s4.setsockopt(socket.SOL_IP, _IP_PKTINFO, 1)
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
    for s, host in ((s4, "0.0.0.0"), (s6, "::")):
        s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33), 8 << 20)
        s.bind((host, port))

    def serve(s, level, kind, reply_info):
        while True:
            data, anc, _, addr = s.recvmsg(65535, 256)
            info = [reply_info(d) for lvl, t, d in anc if lvl == level and t == kind]
            s.sendmsg([data], [(level, kind, info[0])] if info else [], 0, addr)

    # IPv4: send from in_pktinfo.addr (the header's destination), any interface
    t = threading.Thread(target=serve, args=(s4, socket.SOL_IP, _IP_PKTINFO, lambda d: bytes(4) + d[8:12] + bytes(4)), daemon=True)
    t.start()
    print("ready", flush=True)
    serve(s6, socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, lambda d: d[:16] + bytes(4))


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "http":
        server = DualStackServer(("::", port), Handler)
        print("ready", flush=True)
        server.serve_forever()
    elif kind == "halfclose":
        halfclose(port)
    elif kind == "udp-echo":
        udp_echo(port)
    else:
        raise SystemExit(f"unknown server kind {kind}")
