"""A scripted SOCKS5 server on loopback for the outbound's and the handshake engine's tests."""

import socket
import threading


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError(f"client closed after {len(data)} of {n} bytes")
        data += chunk
    return data


class FakeProxy:
    """Accepts on loopback and runs script(conn, proxy) for each connection in its own thread."""

    def __init__(self, script, host="127.0.0.1"):
        self.script = script
        self.stop = threading.Event()
        self.requests: list = []
        self.errors: list = []
        self.listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.listener.settimeout(0.05)
        self.address = self.listener.getsockname()[:2]
        self.threads: list = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, conn):
        conn.settimeout(10)
        with conn:
            try:
                self.script(conn, self)
            except (OSError, EOFError) as e:
                self.errors.append(e)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.acceptor.join(5)
        self.listener.close()
        for t in self.threads:
            t.join(5)
