"""ztun's readiness loop: one thread, epoll (Linux), WSAPoll (Windows) or `selectors` (kqueue on macOS), timers, signals
through a self-pipe.

The TUN device, and later the stack's listeners and relayed sockets, register readers
and writers here; callbacks must never block. On Linux the loop drives `select.epoll`
itself: every relayed byte costs a few loop iterations, and the `selectors` layer
(a SelectorKey per (un)registration, a mapping lookup per event) was a large share of them.
"""

import errno
import heapq
import itertools
import logging
import select
import selectors
import signal
import socket
import sys
import time
from collections import deque

from ._fast import handshakes, socket_queue

log = logging.getLogger("ztun.loop")

# Interest and readiness bits, epoll's values (the selectors backend translates).
_IN, _OUT = getattr(select, "EPOLLIN", 1), getattr(select, "EPOLLOUT", 4)
_MAX_EVENTS = 1024


class _SelectorPoller:
    """The epoll-shaped interface over a `selectors` selector (kqueue on macOS/BSD, poll elsewhere)."""

    def __init__(self, selector):
        self.sel = selector

    @staticmethod
    def _events(mask):
        return (selectors.EVENT_READ if mask & _IN else 0) | (selectors.EVENT_WRITE if mask & _OUT else 0)

    def register(self, fd, mask):
        self.sel.register(fd, self._events(mask))

    def modify(self, fd, mask):
        try:
            self.sel.modify(fd, self._events(mask))
        except KeyError:
            raise FileNotFoundError(errno.ENOENT, "not registered") from None

    def unregister(self, fd):
        try:
            self.sel.unregister(fd)
        except (KeyError, ValueError):
            pass

    def poll(self, timeout=-1, maxevents=-1):
        out = []
        for key, ev in self.sel.select(None if timeout is None or timeout < 0 else timeout):
            out.append((key.fd, (_IN if ev & selectors.EVENT_READ else 0) | (_OUT if ev & selectors.EVENT_WRITE else 0)))
        return out

    def close(self):
        self.sel.close()


def _fileno(fd) -> int:
    return fd if isinstance(fd, int) else fd.fileno()


class Handle:
    """A scheduled callback; cancel() keeps it from running."""

    __slots__ = ("when", "callback", "args", "cancelled", "loop")

    def __init__(self, when: float, callback, args, loop=None):
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False
        self.loop = loop  # set for timers: the loop counts cancelled ones to compact its heap

    def cancel(self) -> None:
        if self.cancelled:
            return
        self.cancelled = True
        # Drop the references now: a cancelled timer may wait in the heap for hours.
        self.callback, self.args = _noop, ()
        if self.loop is not None:
            self.loop._timer_cancelled()

    def __repr__(self):
        return f"<Handle {getattr(self.callback, '__qualname__', self.callback)} at {self.when:.3f}{' cancelled' if self.cancelled else ''}>"


class Loop:
    """Readers, writers, timers and signal handlers, run by run() until stop()."""

    def __init__(self, selector: selectors.BaseSelector | None = None, *, poller=None):
        # poller: an epoll-shaped poller to use instead (tests run the WSAPoll one over a stand-in)
        self._epoll = selector is None and poller is None and hasattr(select, "epoll")
        if poller is not None:
            self._poller = poller
        elif self._epoll:
            self._poller = select.epoll()
        elif selector is None and sys.platform == "win32":
            from .wsapoll import WSAPollPoller  # select() stops at 512 sockets there

            self._poller = WSAPollPoller()
        else:
            self._poller = _SelectorPoller(selector or selectors.DefaultSelector())
        self._fds: dict = {}  # fd -> [reader Handle | None, writer Handle | None]
        self._timers: list = []  # heap of (when, seq, Handle)
        self._cancelled_timers = 0
        self._seq = itertools.count()
        self._ready: deque = deque()
        self._at_end: list = []  # callbacks for the end of this iteration (call_at_end)
        self._every: list = []  # callbacks at the end of every iteration (call_every_iteration)
        self._stopping = False
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.add_reader(self._wake_r.fileno(), self._on_wake)
        self._signals: dict = {}  # signum -> (Handle, previous Python handler)
        self._old_wakeup_fd = None
        self._sockq = None
        self._handshakes = None
        self.handshake_capacity = 4096  # negotiations at once, for the engine started on first use
        self.shared: dict = {}  # what other modules keep per loop (idle checks, pipes), gone with it: close() closes
        # each value that has a close()

    @property
    def sockq(self):
        """This loop's worker for connect, shutdown and close (ztun._fast.sockq), started on first use.

        On a closed loop that never started one, the calls are made at once (a late close still closes).
        """
        if self._sockq is None:
            if self._closed:
                return socket_queue(self, inline=True)
            epoll_fd = self._poller.fileno() if self._epoll else -1
            self._sockq = socket_queue(self, epoll_fd=epoll_fd)
        return self._sockq

    @property
    def handshakes(self):
        """This loop's SOCKS5 negotiation engine (ztun._fast.handshake), started on first use with
        handshake_capacity slots (the forwarder raises it to its bound on pending connects)."""
        if self._handshakes is None:
            self._check_open()
            self._handshakes = handshakes(self, self.handshake_capacity)
        return self._handshakes

    # --- readers and writers -------------------------------------------------

    def add_reader(self, fd, callback, *args) -> None:
        """Call callback(*args) whenever fd is readable (replacing an earlier reader of fd)."""
        self._add(_fileno(fd), 0, Handle(0.0, callback, args))

    def add_writer(self, fd, callback, *args) -> None:
        """Call callback(*args) whenever fd is writable (replacing an earlier writer of fd)."""
        self._add(_fileno(fd), 1, Handle(0.0, callback, args))

    def remove_reader(self, fd) -> bool:
        return self._remove(fd, 0)

    def remove_writer(self, fd) -> bool:
        return self._remove(fd, 1)

    def _add(self, fd, side, handle):
        if self._closed:
            raise RuntimeError("the loop is closed")
        entry = self._fds.get(fd)
        if entry is None:
            try:
                self._poller.register(fd, _OUT if side else _IN)
            except FileExistsError:  # discard()ed but still open: the kernel still has it
                self._poller.modify(fd, _OUT if side else _IN)
            self._fds[fd] = [None, handle] if side else [handle, None]
            return
        old = entry[side]
        entry[side] = handle
        if old is not None:
            old.cancel()
            return  # same interest as before
        try:
            self._poller.modify(fd, _IN | _OUT)
        except FileNotFoundError:  # closed and reopened under the same number without a remove
            self._poller.register(fd, _IN | _OUT)

    def _remove(self, fd, side) -> bool:
        try:
            fd = _fileno(fd)
        except (OSError, ValueError):
            return False
        entry = self._fds.get(fd)
        if entry is None or entry[side] is None:
            return False
        # It may already be queued for this iteration: it must not run after its removal.
        entry[side].cancel()
        entry[side] = None
        try:
            if entry[1 - side] is None:
                del self._fds[fd]
                self._poller.unregister(fd)
            else:
                self._poller.modify(fd, _IN if side else _OUT)
        except (OSError, ValueError):
            pass  # the fd was closed first: the kernel already forgot it
        return True

    def discard(self, fd) -> None:
        """Forget fd's reader and writer because the caller closes fd next (no call if it never was added).

        With epoll, closing an fd drops its registration in the kernel, so this saves the
        epoll_ctl calls of remove_reader/remove_writer; elsewhere it is the same as both.
        """
        fd = _fileno(fd)
        entry = self._fds.get(fd)
        if entry is None:
            return
        if self._epoll:
            del self._fds[fd]
            for h in entry:
                if h is not None:
                    h.cancel()
            return
        self._remove(fd, 0)
        self._remove(fd, 1)

    # --- timers ----------------------------------------------------------------

    def time(self) -> float:
        return time.monotonic()

    def call_soon(self, callback, *args) -> Handle:
        """Run callback(*args) on the next iteration."""
        h = Handle(self.time(), callback, args)
        self._ready.append(h)
        return h

    def call_soon_threadsafe(self, callback, *args) -> Handle:
        """call_soon from another thread: the loop wakes up for it (deque appends are atomic)."""
        h = Handle(time.monotonic(), callback, args)
        self._ready.append(h)
        self.wakeup()
        return h

    def call_at_end(self, callback) -> None:
        """Run callback() once, after the callbacks of this iteration (of the next one, called outside).

        For work that gathers what the iteration's callbacks produced, such as one TUN write
        of every packet they queued: done before the next poll, it costs no extra iteration.
        """
        self._check_open()
        self._at_end.append(callback)

    def call_later(self, delay: float, callback, *args) -> Handle:
        """Run callback(*args) once, delay seconds from now."""
        return self.call_at(self.time() + max(delay, 0.0), callback, *args)

    def call_at(self, when: float, callback, *args) -> Handle:
        self._check_open()
        h = Handle(when, callback, args, self)
        heapq.heappush(self._timers, (when, next(self._seq), h))
        return h

    def _timer_cancelled(self) -> None:
        self._cancelled_timers += 1
        # Rebuild the heap when most of it is cancelled timers (as asyncio does).
        if self._cancelled_timers > 64 and self._cancelled_timers * 2 > len(self._timers):
            self._timers = [t for t in self._timers if not t[2].cancelled]
            heapq.heapify(self._timers)
            self._cancelled_timers = 0

    # --- signals ---------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback, *args) -> None:
        """Run callback(*args) in the loop after signal signum arrives (main thread only)."""
        self._check_open()
        if self._old_wakeup_fd is None:
            self._old_wakeup_fd = signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
        # The C-level handler writes signum to the wakeup fd; the Python one has nothing to do.
        previous = signal.signal(signum, _ignore)
        if signum in self._signals:
            previous = self._signals[signum][1]
        self._signals[signum] = (Handle(0.0, callback, args), previous)

    def remove_signal_handler(self, signum: int) -> bool:
        entry = self._signals.pop(signum, None)
        if entry is None:
            return False
        signal.signal(signum, entry[1] if entry[1] is not None else signal.SIG_DFL)
        if not self._signals and self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None
        return True

    def _on_wake(self):
        try:
            data = self._wake_r.recv(4096)
        except BlockingIOError:
            return
        for signum in data:
            entry = self._signals.get(signum)
            if entry is not None:
                self._ready.append(entry[0])

    def wakeup(self) -> None:
        """Make a blocked select() return (from another thread)."""
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    # --- running -----------------------------------------------------------------

    def stop(self) -> None:
        """Make run() return after the current iteration."""
        self._stopping = True

    def run(self) -> None:
        """Dispatch events until stop() is called."""
        self._check_open()
        self._stopping = False
        while not self._stopping:
            self.run_once()

    def run_once(self, timeout: float | None = None) -> None:
        """Wait for events (at most timeout seconds, or until the next timer) and run what is due."""
        ready = self._ready
        if ready or self._at_end:
            wait = 0.0
        elif self._timers:
            wait = max(self._timers[0][0] - time.monotonic(), 0.0)
            if timeout is not None and timeout < wait:
                wait = timeout
        else:
            wait = -1.0 if timeout is None else timeout
        events = self._poller.poll(wait, _MAX_EVENTS)
        if events:
            fds = self._fds
            for fd, ev in events:
                entry = fds.get(fd)
                if entry is None:
                    # discard()ed but not closed after all (or shared with another process): stop
                    # the level-triggered reports instead of spinning on them
                    try:
                        self._poller.unregister(fd)
                    except (OSError, ValueError):
                        pass
                    continue
                # error and hang-up wake both sides, as selectors does
                if ev & ~_OUT and entry[0] is not None:
                    ready.append(entry[0])
                if ev & ~_IN and entry[1] is not None:
                    ready.append(entry[1])
        timers = self._timers
        if timers:
            now = time.monotonic()
            while timers and timers[0][0] <= now:
                h = heapq.heappop(timers)[2]
                if h.cancelled:
                    self._cancelled_timers = max(0, self._cancelled_timers - 1)
                else:
                    h.loop = None  # due: a cancel() from now on no longer concerns the heap
                    ready.append(h)
        for _ in range(len(ready)):
            h = ready.popleft()
            if h.cancelled:
                continue
            try:
                h.callback(*h.args)
            except Exception:
                log.exception("callback %r failed", h)
        if self._at_end:
            self._run_at_end()
        for callback in self._every:
            try:
                callback()
            except Exception:
                log.exception("every-iteration callback %r failed", callback)

    def call_every_iteration(self, callback) -> None:
        """Call callback() at the end of every iteration, after the call_at_end ones, until
        remove_every_iteration(callback). For cheap checks of what the iteration's work made ready."""
        self._every.append(callback)

    def remove_every_iteration(self, callback) -> None:
        try:
            self._every.remove(callback)
        except ValueError:
            pass

    def _run_at_end(self):
        at_end, self._at_end = self._at_end, []  # what these add runs at the next iteration's end
        for i, callback in enumerate(at_end):
            try:
                callback()
            except Exception:
                log.exception("end-of-iteration callback %r failed", callback)
            except BaseException:  # KeyboardInterrupt, SystemExit: the rest still run later
                self._at_end[:0] = at_end[i + 1:]
                raise

    def _check_open(self):
        if self._closed:
            raise RuntimeError("the loop is closed")

    def close(self) -> None:
        """Restore signal handlers and release the selector. Idempotent."""
        if self._closed:
            return
        for signum in list(self._signals):
            self.remove_signal_handler(signum)
        if self._handshakes is not None:
            self._handshakes.stop()
        if self._sockq is not None:
            self._sockq.stop()  # the calls still queued are made first
        self._closed = True
        self._poller.close()
        self._fds.clear()
        for value in list(self.shared.values()):
            close = getattr(value, "close", None)  # a pool of fds (the relays' pipes) is closed with its loop
            if close is not None:
                close()
        self.shared.clear()
        self._wake_r.close()
        self._wake_w.close()
        self._timers.clear()
        self._ready.clear()
        self._at_end.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ignore(signum, frame):
    pass


def _noop(*args):
    pass
