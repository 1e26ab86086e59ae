"""The API's HTTP server: one thread, one selector, non-blocking sockets, off the appliance's loop.

Like metrics.HttpEndpoint (a deadline for the request, a cap on connections where a new client
pushes out the oldest one still sending its request or only lingering after its answer), plus
what the Clash API needs: a request body (PATCH), answers that wait for the next view (Pending), and streams that stay open:
chunked HTTP (one JSON document a line) or WebSocket. The WebSocket protocol is wsproto's
(sans-IO: it turns bytes into events and messages into bytes, so it runs inside this selector
loop as it is; no thread or asyncio of its own).

A stream's client that does not read falls behind: beyond MAX_BUFFERED unsent bytes, or when it
took nothing of what waits for it for write_timeout, it is closed, so it costs bounded memory and
a connection for a bounded time, and never a wait.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time

from ..metrics import BACKLOG, ListeningThread, Request

log = logging.getLogger("ztun.api")

HEADER_TIMEOUT = 5.0  # seconds from connect to the whole request (head and body)
WRITE_TIMEOUT = 10.0  # seconds to take a whole answer
PENDING_TIMEOUT = 5.0  # seconds an answer waits for the view it needs
MAX_CONNECTIONS = 64  # streams included
MAX_REQUEST = 8192  # bytes of request line and headers
MAX_BODY = 65536  # bytes of a request body
MAX_BUFFERED = 4 << 20  # unsent bytes a stream may fall behind before it is closed
TICK = 0.25  # seconds between looks at the streams' sources
LINGER = 2.0

REASONS = {101: "Switching Protocols", 200: "OK", 204: "No Content", 301: "Moved Permanently", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
           431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable"}


class Answer:
    """A whole answer: status, headers, body (the connection closes after it)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict | None = None, body: bytes = b""):
        self.status, self.headers, self.body = status, headers or {}, body

    def encode(self, head_only: bool = False) -> bytes:
        lines = [f"HTTP/1.1 {self.status} {REASONS.get(self.status, '')}", "Connection: close"]
        if self.status not in (204, 304):
            lines.append(f"Content-Length: {len(self.body)}")
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else self.body)


class Pending:
    """An answer that needs a later view: poll() gives the Answer once it can, else None."""

    def __init__(self, poll):
        self.poll = poll


class Stream:
    """Messages for as long as the client stays: poll() gives the text messages due now (maybe none).

    websocket: sent as WebSocket text messages (after the upgrade); else as chunks of one chunked
    HTTP answer with headers, one message a line. latest_only: each message supersedes the one
    before (a snapshot), so a client still taking the last one is not polled: it gets the newest
    when it has caught up, and never holds more than one message.
    """

    def __init__(self, poll, *, websocket: bool, headers: dict | None = None, latest_only: bool = False):
        self.poll, self.websocket, self.headers, self.latest_only = poll, websocket, headers or {}, latest_only


class _Conn:
    __slots__ = ("sock", "inbuf", "out", "deadline", "state", "request", "job", "ws", "moved", "eof")

    def __init__(self, sock, deadline: float):
        self.sock, self.inbuf, self.out, self.deadline = sock, b"", bytearray(), deadline
        self.state = "request"  # request -> answer | pending -> answer | stream | websocket
        self.request = self.job = self.ws = None
        self.moved = time.monotonic()  # when the client last took bytes (or had nothing waiting)
        self.eof = False  # the client shut its sending side after its request: it may still read the answer


class ApiHttpServer(ListeningThread):
    """Serves handler(request, body) -> Answer | Pending | Stream on (host, port) from its own thread until close()."""

    THREAD_NAME = "ztun-api"

    def __init__(self, host: str, port: int, handler, *, header_timeout: float = HEADER_TIMEOUT,
                 write_timeout: float = WRITE_TIMEOUT, max_connections: int = MAX_CONNECTIONS):
        self.counters = {"requests": 0, "bad_requests": 0, "timeouts": 0, "slow_streams_closed": 0, "pushed_out": 0,
                         "refused_busy": 0, "errors": 0}
        super().__init__(host, port, handler, header_timeout=header_timeout, write_timeout=write_timeout,
                         max_connections=max_connections)

    # -- the thread ----------------------------------------------------------------------

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ)
        sel.register(self._wake_r, selectors.EVENT_READ)
        next_tick = time.monotonic() + TICK
        try:
            while not self._closing:
                now = time.monotonic()
                timeout = max(0.0, next_tick - now)
                for key, events in sel.select(timeout):
                    if key.fileobj is self._listener:
                        self._accept(sel)
                    elif key.fileobj is not self._wake_r and key.fileobj in self._conns:
                        self._event(sel, self._conns[key.fileobj], events)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + TICK
                    for conn in list(self._conns.values()):
                        self._tick(sel, conn, now)
        except Exception:
            log.exception("api: the HTTP server failed; the API no longer answers")
        finally:
            self._teardown(sel)

    def _accept(self, sel) -> None:
        for _ in range(BACKLOG):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.debug("api: accept: %s", e)
                return
            if len(self._conns) >= self.max_connections:
                # the oldest still sending its request, or answered and only lingering (all sent)
                oldest = next((c for c in self._conns.values()
                               if c.state == "request" or (c.state == "answer" and not c.out)), None)
                if oldest is None:
                    self.counters["refused_busy"] += 1
                    sock.close()
                    continue
                self.counters["pushed_out"] += 1
                self._drop(sel, oldest)
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + self.header_timeout)
            self._conns[sock] = conn
            sel.register(sock, selectors.EVENT_READ)

    def _tick(self, sel, conn: _Conn, now: float) -> None:
        """Deadlines, pending answers and stream messages."""
        try:
            if conn.state in ("request", "answer") and now >= conn.deadline:
                if conn.state == "request":
                    self.counters["timeouts"] += 1
                self._drop(sel, conn)
            elif conn.state == "pending":
                answer = conn.job.poll()
                if answer is None and now >= conn.deadline:
                    answer = Answer(503, {"Content-Type": "application/json"}, b'{"message":"no data yet"}')
                if answer is not None:
                    self._answer(sel, conn, answer.encode())
            elif conn.state in ("stream", "websocket"):
                if conn.out and now - conn.moved > self.write_timeout:  # it took nothing for that long
                    self.counters["slow_streams_closed"] += 1
                    self._drop(sel, conn)
                elif not (conn.out and conn.job.latest_only):
                    self._push(sel, conn, conn.job.poll())
        except OSError:
            self._drop(sel, conn)
        except Exception:
            self.counters["errors"] += 1
            log.exception("api: a stream failed")
            self._drop(sel, conn)

    def _event(self, sel, conn: _Conn, events: int) -> None:
        try:
            if events & selectors.EVENT_READ:
                data = conn.sock.recv(65536)
                if not data:
                    if conn.state == "pending" or (conn.state == "answer" and conn.out):
                        conn.eof = True  # a half-close (nc -N, some libraries): the answer still goes
                        self._watch(sel, conn)
                    else:
                        self._drop(sel, conn)
                    return
                self._received(sel, conn, data)
            if conn.sock.fileno() >= 0 and events & selectors.EVENT_WRITE:
                self._flush(sel, conn)
        except OSError:
            self._drop(sel, conn)
        except Exception:  # a stream's first poll, wsproto: this connection's end, not the server's
            self.counters["errors"] += 1
            log.exception("api: a connection failed")
            self._drop(sel, conn)

    def _received(self, sel, conn: _Conn, data: bytes) -> None:
        if conn.state == "request":
            conn.inbuf += data
            self._parse(sel, conn)
        elif conn.state == "websocket":
            self._ws_received(sel, conn, data)
        # answered or streaming over HTTP: what it sends is discarded until it closes

    def _refuse(self, sel, conn: _Conn, status: int) -> None:
        """A request ztun will not take: counted, answered with status, closed after."""
        self.counters["bad_requests"] += 1
        self._answer(sel, conn, Answer(status).encode())

    def _parse(self, sel, conn: _Conn) -> None:
        end = conn.inbuf.find(b"\r\n\r\n")
        if end > MAX_REQUEST or (end < 0 and len(conn.inbuf) > MAX_REQUEST):
            return self._refuse(sel, conn, 431)
        if end < 0:
            return
        head = conn.inbuf[:end]
        bare = head.replace(b"\r\n", b"")
        if b"\r" in bare or b"\n" in bare or b"\0" in bare:
            # A lone CR or LF ends a line for some parsers and not for ours: a value that carries one
            # (an Origin the CORS answer echoes) could add headers to the answer.
            return self._refuse(sel, conn, 400)
        try:
            request = Request(head)
            length = int(request.headers.get("content-length", "0") or "0")
        except ValueError:
            return self._refuse(sel, conn, 400)
        if "chunked" in request.headers.get("transfer-encoding", "").lower() or length < 0:
            return self._refuse(sel, conn, 400)
        if length > MAX_BODY:
            return self._refuse(sel, conn, 413)
        if len(conn.inbuf) < end + 4 + length:
            return  # the rest of the body is still coming
        body = conn.inbuf[end + 4:end + 4 + length]
        conn.request = request
        self.counters["requests"] += 1
        try:
            result = self._handler(request, body)
        except Exception:
            self.counters["errors"] += 1
            # the path only: the query may hold ?token=SECRET
            log.exception("api: answering %s %s failed", request.method, request.target.partition("?")[0])
            result = Answer(500)
        if isinstance(result, Answer):
            self._answer(sel, conn, result.encode(head_only=request.method == "HEAD"))
        elif isinstance(result, Pending):
            conn.state, conn.job = "pending", result
            conn.deadline = time.monotonic() + PENDING_TIMEOUT
            self._tick(sel, conn, time.monotonic())
        elif result.websocket:
            self._ws_accept(sel, conn, head + b"\r\n\r\n", result)
        else:
            conn.state, conn.job = "stream", result
            lines = ["HTTP/1.1 200 OK", "Transfer-Encoding: chunked", "Cache-Control: no-store",
                     "Content-Type: application/json"] + [f"{k}: {v}" for k, v in result.headers.items()]
            conn.out += ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
            self._push(sel, conn, result.poll())

    # -- writing --------------------------------------------------------------------------

    def _answer(self, sel, conn: _Conn, data: bytes) -> None:
        conn.state = "answer"
        conn.out += data
        conn.deadline = time.monotonic() + self.write_timeout
        self._flush(sel, conn)

    def _push(self, sel, conn: _Conn, messages) -> None:
        """Queue a stream's messages and send what the socket takes."""
        for text in messages or ():
            data = text.encode()
            if conn.ws is not None:
                from wsproto.events import TextMessage

                conn.out += conn.ws.send(TextMessage(data=text))
            else:
                data += b"\n"
                conn.out += b"%x\r\n%s\r\n" % (len(data), data)
        self._flush(sel, conn)
        if len(conn.out) > MAX_BUFFERED and not conn.job.latest_only:
            self.counters["slow_streams_closed"] += 1
            self._drop(sel, conn)

    def _flush(self, sel, conn: _Conn) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            del conn.out[:sent]
            if sent:
                conn.moved = time.monotonic()
        self._watch(sel, conn)
        if conn.out:
            return
        conn.moved = time.monotonic()
        if conn.state == "answer" and conn.eof:  # all sent, and the client has closed its side already
            self._drop(sel, conn)
        elif conn.state == "answer" and conn.deadline > time.monotonic() + LINGER:
            # All sent: shut our side and give the client LINGER to close its own (a close with
            # unread bytes would reset and could lose the end of the answer).
            conn.sock.shutdown(socket.SHUT_WR)
            conn.deadline = time.monotonic() + LINGER

    @staticmethod
    def _watch(sel, conn: _Conn) -> None:
        """Watch conn for reading (until the client's EOF) and for writing while something waits."""
        events = (0 if conn.eof else selectors.EVENT_READ) | (selectors.EVENT_WRITE if conn.out else 0)
        try:
            registered = sel.get_key(conn.sock).events
        except KeyError:
            registered = 0
        if events == registered:
            return
        if not events:
            sel.unregister(conn.sock)  # half-closed, waiting for its answer: an EOF is readable for ever
        elif registered:
            sel.modify(conn.sock, events)
        else:
            sel.register(conn.sock, events)

    # -- WebSocket ------------------------------------------------------------------------

    def _ws_accept(self, sel, conn: _Conn, head: bytes, stream: Stream) -> None:
        from wsproto import ConnectionType, WSConnection
        from wsproto.events import AcceptConnection, Request as WsRequest
        from wsproto.utilities import RemoteProtocolError

        ws = WSConnection(ConnectionType.SERVER)
        try:
            ws.receive_data(head)
            events = list(ws.events())
        except RemoteProtocolError:
            events = []
        if not events or not isinstance(events[0], WsRequest):
            self.counters["bad_requests"] += 1
            on_close = getattr(stream.poll, "on_close", None)
            if on_close is not None:  # the stream never starts: what its poll holds (a /logs reader) is let go
                on_close()
            self._answer(sel, conn, Answer(400, {"Content-Type": "text/plain"}, b"not a WebSocket upgrade\n").encode())
            return
        conn.ws, conn.state, conn.job = ws, "websocket", stream
        conn.out += ws.send(AcceptConnection(extra_headers=[(k.encode(), v.encode()) for k, v in stream.headers.items()]))
        self._push(sel, conn, stream.poll())

    def _ws_received(self, sel, conn: _Conn, data: bytes) -> None:
        from wsproto.events import CloseConnection, Ping
        from wsproto.utilities import RemoteProtocolError

        try:
            conn.ws.receive_data(data)
            for event in conn.ws.events():
                if isinstance(event, Ping):
                    conn.out += conn.ws.send(event.response())
                elif isinstance(event, CloseConnection):
                    conn.out += conn.ws.send(event.response())
                    self._answer(sel, conn, b"")
                    return
                # text or binary from the client: nothing in the Clash API listens to it
        except RemoteProtocolError:
            self.counters["bad_requests"] += 1
            self._drop(sel, conn)
            return
        if len(conn.out) > MAX_BUFFERED:  # a client that pings and never reads
            self.counters["slow_streams_closed"] += 1
            self._drop(sel, conn)
            return
        self._flush(sel, conn)

    def _drop(self, sel, conn: _Conn) -> None:
        on_close = getattr(getattr(conn.job, "poll", None), "on_close", None)
        conn.job = None
        if on_close is not None:
            on_close()
        self._conns.pop(conn.sock, None)
        try:
            sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
