"""ztun's readiness loop: one thread, `selectors` (epoll, kqueue), timers, and signals through a self-pipe.

The TUN device, and later the stack's listeners and relayed sockets, register readers
and writers here; callbacks must never block.
"""

import heapq
import itertools
import logging
import selectors
import signal
import socket
import time
from collections import deque

log = logging.getLogger("ztun.loop")

_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


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

    def __init__(self, selector: selectors.BaseSelector | None = None):
        self._sel = selector or selectors.DefaultSelector()
        self._timers: list = []  # heap of (when, seq, Handle)
        self._cancelled_timers = 0
        self._seq = itertools.count()
        self._ready: deque = deque()
        self._stopping = False
        self._closed = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, _READ, (Handle(0.0, self._on_wake, ()), None))
        self._signals: dict = {}  # signum -> (Handle, previous Python handler)
        self._old_wakeup_fd = None

    # --- readers and writers -------------------------------------------------

    def add_reader(self, fd, callback, *args) -> None:
        """Call callback(*args) whenever fd is readable (replacing an earlier reader of fd)."""
        self._add(fd, _READ, Handle(0.0, callback, args))

    def add_writer(self, fd, callback, *args) -> None:
        """Call callback(*args) whenever fd is writable (replacing an earlier writer of fd)."""
        self._add(fd, _WRITE, Handle(0.0, callback, args))

    def remove_reader(self, fd) -> bool:
        return self._remove(fd, _READ)

    def remove_writer(self, fd) -> bool:
        return self._remove(fd, _WRITE)

    def _add(self, fd, event, handle):
        self._check_open()
        try:
            key = self._sel.get_key(fd)
        except KeyError:
            pair = (handle, None) if event == _READ else (None, handle)
            self._sel.register(fd, event, pair)
            return
        reader, writer = key.data
        old = reader if event == _READ else writer
        if old is not None:
            old.cancel()
        pair = (handle, writer) if event == _READ else (reader, handle)
        self._sel.modify(fd, key.events | event, pair)

    def _remove(self, fd, event) -> bool:
        try:
            key = self._sel.get_key(fd)
        except (KeyError, ValueError):
            return False
        if not key.events & event:
            return False
        reader, writer = key.data
        # It may already be queued for this iteration: it must not run after its removal.
        (reader if event == _READ else writer).cancel()
        events = key.events & ~event
        if events:
            self._sel.modify(fd, events, (None, writer) if event == _READ else (reader, None))
        else:
            self._sel.unregister(fd)
        return True

    # --- timers ----------------------------------------------------------------

    def time(self) -> float:
        return time.monotonic()

    def call_soon(self, callback, *args) -> Handle:
        """Run callback(*args) on the next iteration."""
        h = Handle(self.time(), callback, args)
        self._ready.append(h)
        return h

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
        if self._ready:
            wait = 0.0
        elif self._timers:
            wait = max(0.0, self._timers[0][0] - self.time())
            if timeout is not None:
                wait = min(wait, timeout)
        else:
            wait = timeout
        for key, events in self._sel.select(wait):
            reader, writer = key.data
            if events & _READ and reader is not None:
                self._ready.append(reader)
            if events & _WRITE and writer is not None:
                self._ready.append(writer)
        now = self.time()
        while self._timers and self._timers[0][0] <= now:
            h = heapq.heappop(self._timers)[2]
            if h.cancelled:
                self._cancelled_timers = max(0, self._cancelled_timers - 1)
            else:
                h.loop = None  # due: a cancel() from now on no longer concerns the heap
                self._ready.append(h)
        for _ in range(len(self._ready)):
            h = self._ready.popleft()
            if h.cancelled:
                continue
            try:
                h.callback(*h.args)
            except Exception:
                log.exception("callback %r failed", h)

    def _check_open(self):
        if self._closed:
            raise RuntimeError("the loop is closed")

    def close(self) -> None:
        """Restore signal handlers and release the selector. Idempotent."""
        if self._closed:
            return
        for signum in list(self._signals):
            self.remove_signal_handler(signum)
        self._closed = True
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
        self._timers.clear()
        self._ready.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _ignore(signum, frame):
    pass


def _noop(*args):
    pass
