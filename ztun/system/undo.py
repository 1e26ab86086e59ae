"""UndoLog: the changes a Router made, each with the call that reverts it, undone newest first."""

import errno
import logging

from ..errors import RouteError

# What an undo finds already gone (with the interface it was on, or removed by hand): fine.
GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.ENXIO, errno.EADDRNOTAVAIL})


class UndoLog:
    """Every router records what it changed here, and close() calls undo_all().

    An undo that fails does not stop the rest: a RouteError whose errno is in GONE means
    the target went already (debug), anything else is logged as a warning.
    """

    def __init__(self, log: logging.Logger):
        self._log = log
        self._entries: list = []  # (key, what, undo), oldest first
        self.closed = False

    def push(self, what: str, undo, key=None) -> None:
        """Record a change: undo() reverts it, what says in the log what undo() does, key finds it for forget()."""
        self._entries.append((key, what, undo))

    def forget(self, key) -> None:
        """Drop what was recorded under key: the change was reverted already (a route deleted by hand)."""
        self._entries = [e for e in self._entries if e[0] != key]

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> bool:
        """undo_all() the first time; False (nothing done) after that: a router's close() is idempotent through it."""
        if self.closed:
            return False
        self.closed = True
        self.undo_all()
        return True

    def undo_all(self) -> None:
        """Call every recorded undo, newest first, and forget them."""
        while self._entries:
            _, what, undo = self._entries.pop()
            try:
                undo()
                self._log.info("%s", what)
            except RouteError as e:
                if e.errno in GONE:
                    self._log.debug("%s: already gone", what)
                else:
                    self._log.warning("%s failed: %s", what, e)
            except Exception as e:  # keep undoing the rest whatever happens
                self._log.warning("%s failed: %s", what, e)
