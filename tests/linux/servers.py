"""Servers the namespace tests run in their server namespace: `python servers.py KIND PORT`.

http: GET /bytes/N sends N bytes of random.Random(N); POST /upload answers the body's sha256.
halfclose: reads until EOF, then sends back what it read.
udp-echo: sends every datagram back, from the address it was sent to (as DNS servers do); one
  that starts with b"GROW" and a 4-byte length is answered with that many bytes of it, repeated;
  one of b"BURST" and three 2-byte numbers n, size, last with n datagrams in one UDP GSO send
  (UDP_SEGMENT), each `size` bytes of its number (2 bytes, repeated), the last `last` bytes.
dns ADDRESS: a DNS server over UDP on ADDRESS: A records for web.example (198.19.0.1) and direct.example
(198.19.1.1), a TXT record "ztun-test" for any name, NXDOMAIN otherwise.
hostile-socks MODE: a SOCKS5 server that misbehaves: bad-version (answers the greeting as
SOCKS4), truncated (half a CONNECT reply, then closes), huge-address (a CONNECT reply whose
domain-name address claims 255 bytes and sends 3), never (accepts, reads, never answers),
drip (the CONNECT reply one byte per second).
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


def echo(port: int):
    """Each chunk back as it arrives (a ping-pong's other end)."""
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128)
    print("ready", flush=True)

    def serve(conn):
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while chunk := conn.recv(1 << 16):
                conn.sendall(chunk)

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
            gso = []
            if data[:4] == b"GROW" and len(data) >= 8:  # "GROW" + length: that many bytes back (a reply larger than the ask)
                data = (data * (int.from_bytes(data[4:8], "big") // len(data) + 1))[:int.from_bytes(data[4:8], "big")]
            elif data[:5] == b"BURST" and len(data) >= 11:  # n datagrams in one GSO send: the kernel keeps them one message
                n, size, last = (int.from_bytes(data[k : k + 2], "big") for k in (5, 7, 9))
                data = b"".join((i.to_bytes(2, "big") * (size // 2 + 1))[: last if i == n - 1 else size] for i in range(n))
                gso = [(socket.SOL_UDP, 103, size.to_bytes(2, sys.byteorder))]  # UDP_SEGMENT
            s.sendmsg([data], ([(level, kind, info[0])] if info else []) + gso, 0, addr)

    # IPv4: send from in_pktinfo.addr (the header's destination), any interface
    t = threading.Thread(target=serve, args=(s4, socket.SOL_IP, _IP_PKTINFO, lambda d: bytes(4) + d[8:12] + bytes(4)), daemon=True)
    t.start()
    print("ready", flush=True)
    serve(s6, socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, lambda d: d[:16] + bytes(4))


def dns_server(port: int, address: str):
    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    names = {"web.example.": "198.19.0.1", "direct.example.": "198.19.1.1"}
    # Bound to one address: a wildcard socket would answer from whatever source routing picks.
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, port))
    print("ready", flush=True)
    while True:
        data, addr = s.recvfrom(65535)
        try:
            query = dns.message.from_wire(data)
        except Exception:
            continue
        answer = dns.message.make_response(query)
        q = query.question[0]
        name = q.name.to_text().lower()
        if q.rdtype == dns.rdatatype.A and name in names:
            answer.answer.append(dns.rrset.from_text(q.name, 60, "IN", "A", names[name]))
        elif q.rdtype == dns.rdatatype.TXT:
            answer.answer.append(dns.rrset.from_text(q.name, 60, "IN", "TXT", '"ztun-test"'))
        elif name not in names:
            answer.set_rcode(dns.rcode.NXDOMAIN)
        s.sendto(answer.to_wire(), addr)


def hostile_socks(port: int, mode: str):
    import time

    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=128)
    print("ready", flush=True)
    ok_reply = bytes([5, 0, 0, 1, 198, 18, 10, 2, 0x04, 0x38])

    def serve(conn):
        with conn:
            conn.settimeout(30)
            conn.recv(512)  # the greeting
            if mode == "bad-version":
                conn.sendall(bytes([4, 0]))
                conn.recv(512)
                return
            if mode == "never":
                conn.recv(512)
                time.sleep(30)
                return
            conn.sendall(bytes([5, 0]))
            conn.recv(512)  # the CONNECT request
            if mode == "truncated":
                conn.sendall(ok_reply[:5])
            elif mode == "huge-address":
                conn.sendall(bytes([5, 0, 0, 3, 255]) + b"abc")
                time.sleep(30)
            elif mode == "drip":
                for b in ok_reply:
                    conn.sendall(bytes([b]))
                    time.sleep(1)
                time.sleep(30)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "http":
        server = DualStackServer(("::", port), Handler)
        print("ready", flush=True)
        server.serve_forever()
    elif kind == "halfclose":
        halfclose(port)
    elif kind == "echo":
        echo(port)
    elif kind == "udp-echo":
        udp_echo(port)
    elif kind == "dns":
        dns_server(port, sys.argv[3])
    elif kind == "hostile-socks":
        hostile_socks(port, sys.argv[3])
    else:
        raise SystemExit(f"unknown server kind {kind}")
