"""SOCKS5 negotiations driven by the loop: the twin of handshake.pyx (macOS, Windows, ZTUN_HANDSHAKE=python).

The same steps with the same checks as includes/zt_handshake.h, one readiness callback at a
time: the connect (through the loop's socket worker), then each send and exact-length
receive. The Progress reported at the end or at a cancel is the compiled engine's, byte for byte.
"""

import errno
import itertools
import logging
import operator
import socket

from .defs import HS_CONNECT_FAILED, HS_EOF, HS_OK, HS_PROTOCOL, HS_RECV_FAILED, HS_SEND_FAILED, HS_TRANSCRIPT_MAX
from .defs import Progress

log = logging.getLogger("ztun.handshake")

GREET, METHOD, AUTH, AUTH_REPLY, REQUEST, REPLY, NAME_LEN, ADDRESS, END = range(9)
_SENDS = (GREET, AUTH, REQUEST)
_RECV_LEN = {METHOD: 2, AUTH_REPLY: 2, REPLY: 4}
GREET_MAX, AUTH_MAX, REQUEST_MAX = 4, 513, 262
KINDS = (HS_OK, HS_CONNECT_FAILED, HS_SEND_FAILED, HS_RECV_FAILED, HS_EOF, HS_PROTOCOL)
TRANSCRIPT_MAX = HS_TRANSCRIPT_MAX


class _Talk:
    __slots__ = ("sock", "fd", "out", "offered_auth", "callback", "step", "off", "need", "got", "connected",
                 "reading", "writing", "kind", "err")

    def __init__(self, sock, greeting, auth, request, offered_auth, callback):
        self.sock, self.fd, self.callback = sock, sock.fileno(), callback
        self.out = {GREET: greeting, AUTH: auth, REQUEST: request}
        self.offered_auth = offered_auth
        self.step, self.off, self.need = GREET, 0, 0
        self.got = bytearray()  # the transcript
        self.connected = self.reading = self.writing = False
        self.kind = self.err = 0

    def progress(self) -> Progress:
        receiving = self.step not in _SENDS and self.step != END
        partial = self.off if receiving else 0
        return Progress(self.kind, self.err, bytes(self.got), partial, self.connected, not receiving and self.step != END)


class Handshakes:
    """The loop's SOCKS5 negotiations, each from the connect to the proxy to its reply, on the loop's thread.

    A socket handed to start() is the engine's to use until its callback ran or cancel()
    returned; it stays the caller's to close (through the loop's socket worker: its connect
    may still be queued there).
    """

    def __init__(self, loop, capacity: int = 4096):
        capacity = operator.index(capacity)
        if not 0 < capacity <= 1 << 20:
            raise ValueError("capacity must be 1 to 2**20")
        self.loop, self.capacity = loop, capacity
        self.talks: dict = {}
        self._ids = itertools.count(1)
        self.stopped = False
        self.started = self.finished = self.connect_inline = 0

    @property
    def under_way(self) -> int:
        """Negotiations started whose callback has not run and that were not cancelled."""
        return len(self.talks)

    def start(self, sock, address, greeting: bytes, auth: bytes, request: bytes, offered_auth: bool, callback) -> int:
        """Connect sock (non-blocking, not connected) to the proxy at address and negotiate; callback(Progress)
        once, on the loop, at the end. Returns the negotiation's id (for cancel)."""
        if self.stopped:
            raise RuntimeError("the handshake engine is stopped")
        for value in (greeting, auth, request):
            if not isinstance(value, bytes):
                raise TypeError(f"the plan's parts must be bytes, not {type(value).__name__}")
        if not 0 < len(greeting) <= GREET_MAX or len(auth) > AUTH_MAX or len(request) > REQUEST_MAX:
            raise ValueError(f"negotiation plan out of bounds: greeting {len(greeting)}, auth {len(auth)}, "
                             f"request {len(request)} bytes")
        if sock.fileno() < 0:
            raise ValueError("the socket is closed")
        if len(self.talks) >= self.capacity:
            raise OSError(errno.EAGAIN, "too many SOCKS5 negotiations at once (the engine is full)")
        talk = _Talk(sock, greeting, auth, request, bool(offered_auth), callback)
        talk_id = next(self._ids)
        self.loop.sockq.connect(sock, address, lambda err: self._connected(talk_id, err))  # a bad address raises
        self.talks[talk_id] = talk
        self.started += 1
        return talk_id

    def cancel(self, handshake_id):
        """Stop negotiation handshake_id where it is: its Progress, or None if it is unknown or ended already."""
        talk = self.talks.pop(handshake_id, None)
        if talk is None:
            return None
        self._unwatch(talk)
        return talk.progress()

    def stop(self) -> None:
        """Negotiations under way end without a callback (their sockets stay open). Idempotent."""
        for talk in self.talks.values():
            self._unwatch(talk)
        self.talks.clear()
        self.stopped = True

    # -- the steps ----------------------------------------------------------------------

    def _connected(self, talk_id, err):
        talk = self.talks.get(talk_id)
        if talk is None:
            return
        if err == 0:
            self.connect_inline += 1
            self._talk(talk_id, talk)
        elif err in (errno.EINPROGRESS, errno.EWOULDBLOCK):
            self._watch(talk_id, talk, write=True)
        else:
            self._end(talk_id, talk, HS_CONNECT_FAILED, err)

    def _event(self, talk_id):
        talk = self.talks.get(talk_id)
        if talk is None:
            return
        if not talk.connected:
            err = talk.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._end(talk_id, talk, HS_CONNECT_FAILED, err)
                return
        self._talk(talk_id, talk)

    def _talk(self, talk_id, talk):
        """Go as far as the socket lets."""
        talk.connected = True
        while talk.step != END:
            if talk.step in _SENDS:
                data = talk.out[talk.step]
                while talk.off < len(data):
                    try:
                        n = talk.sock.send(data[talk.off:])
                    except (BlockingIOError, InterruptedError):
                        self._watch(talk_id, talk, write=True)
                        return
                    except OSError as e:
                        self._end(talk_id, talk, HS_SEND_FAILED, e.errno or errno.EIO)
                        return
                    talk.off += n
                talk.step += 1
                talk.off, talk.need = 0, _RECV_LEN.get(talk.step, 0)
                continue
            while talk.off < talk.need:
                try:
                    chunk = talk.sock.recv(talk.need - talk.off)
                except (BlockingIOError, InterruptedError):
                    self._watch(talk_id, talk, write=False)
                    return
                except OSError as e:
                    self._end(talk_id, talk, HS_RECV_FAILED, e.errno or errno.EIO)
                    return
                if not chunk:
                    self._end(talk_id, talk, HS_EOF, errno.ECONNRESET)
                    return
                talk.got += chunk
                talk.off += len(chunk)
            talk.off = 0
            if not self._check(talk):
                self._end(talk_id, talk, HS_PROTOCOL, errno.EPROTO)
                return
        self._end(talk_id, talk, HS_OK, 0)

    @staticmethod
    def _check(talk) -> bool:
        """A receive step's bytes arrived (the transcript's last need bytes): on to the next step, or False."""
        b = talk.got[len(talk.got) - talk.need:]
        after_greeting = REQUEST if talk.out[REQUEST] else END
        step = talk.step
        if step == METHOD:
            if b[0] != 5 or b[1] == 0xFF:
                return False
            if b[1] == 2 and talk.offered_auth:
                talk.step, talk.need = AUTH, 0
            elif b[1] != 0:
                return False
            else:
                talk.step, talk.need = after_greeting, 0
        elif step == AUTH_REPLY:
            if b[0] != 1 or b[1] != 0:
                return False
            talk.step, talk.need = after_greeting, 0
        elif step == REPLY:
            if b[0] != 5 or b[1] != 0 or b[3] not in (1, 3, 4):
                return False
            talk.step, talk.need = (ADDRESS, 6) if b[3] == 1 else (ADDRESS, 18) if b[3] == 4 else (NAME_LEN, 1)
        elif step == NAME_LEN:
            if b[0] == 0:
                return False
            talk.step, talk.need = ADDRESS, b[0] + 2
        else:
            talk.step, talk.need = END, 0
        return True

    # -- readiness and the end -------------------------------------------------------------

    def _watch(self, talk_id, talk, write: bool):
        loop = self.loop
        if write and not talk.writing:
            loop.add_writer(talk.fd, self._event, talk_id)
        elif not write and talk.writing:
            loop.remove_writer(talk.fd)
        if not write and not talk.reading:
            loop.add_reader(talk.fd, self._event, talk_id)
        elif write and talk.reading:
            loop.remove_reader(talk.fd)
        talk.writing, talk.reading = write, not write

    def _unwatch(self, talk):
        if talk.reading:
            self.loop.remove_reader(talk.fd)
        if talk.writing:
            self.loop.remove_writer(talk.fd)
        talk.reading = talk.writing = False

    def _end(self, talk_id, talk, kind: int, err: int):
        self._unwatch(talk)
        talk.kind, talk.err = kind, err
        del self.talks[talk_id]
        self.finished += 1
        try:
            talk.callback(talk.progress())
        except Exception:
            log.exception("handshake callback %r failed", talk.callback)
