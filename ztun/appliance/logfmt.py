"""Logging set-up: text or JSON lines (`--log-format json`), and DropWarner, which warns when packets are dropped.

JSON lines carry ts (ISO 8601, UTC, milliseconds), level, logger and msg, plus every field
passed as `extra=` (e.g. `log.info("tcp ... closed", extra={"flow": {...}})`), and exc with
the traceback when there is one. The standard library's Formatter does the rest; a dozen
lines are not worth a dependency.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Collection
from datetime import datetime, timezone

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The attributes every LogRecord has: anything else on a record came in through extra=.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON cannot hold (an address object, bytes) is shown, not fatal.
        return json.dumps(out, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    """Log to stderr at level ("DEBUG".."ERROR") as text or JSON."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])


# Drops that are not faults: "pending" is a client's retransmitted SYN (or any packet) of a flow
# whose outbound connect is still under way; its first SYN is held and answered once the connect
# ends. A slow or unreachable destination makes these, and the connect's own outcome is logged.
QUIET = ("pending",)


class DropWarner:
    """Warns (logger ztun.drops) when a drop counter grows: the first `first` times each reason grows,
    then at most once per `interval` seconds per reason, with how many more were dropped.

    counters() returns {reason: count} (monotonic); a loop timer reads it every `check_every`
    seconds, so growth is noticed within that time and the hot path pays nothing. Reasons in
    `quiet` are TCP doing its job, not a fault: they stay counted (status, metrics) and unsaid.
    """

    def __init__(self, loop, counters: Callable[[], dict], *, first: int = 3, interval: float = 60.0,
                 check_every: float = 1.0, logger: logging.Logger | None = None, quiet: Collection[str] = QUIET):
        self.loop = loop
        self.counters = counters
        self.quiet = frozenset(quiet)
        self.first = first
        self.interval = interval
        self.check_every = check_every
        self.log = logger or logging.getLogger("ztun.drops")
        self._seen: dict = {}  # reason -> count already reported
        self._warned: dict = {}  # reason -> warnings given
        self._last: dict = {}  # reason -> loop time of its last warning
        self._failed = False
        self._timer = loop.call_later(check_every, self._tick) if loop is not None else None

    def _tick(self) -> None:
        try:
            self.check()
        except Exception:  # a bug in counters(): say it once, keep the loop and the timer going
            (self.log.debug if self._failed else self.log.exception)("drop counters could not be read")
            self._failed = True
        self._timer = self.loop.call_later(self.check_every, self._tick)

    def check(self, now: float | None = None) -> int:
        """Compare the counters with what was reported; warn as due. Returns the warnings given."""
        if now is None:
            now = self.loop.time() if self.loop is not None else time.monotonic()
        given = 0
        for reason, count in list(self.counters().items()):
            if reason in self.quiet:
                continue
            seen = self._seen.get(reason, 0)
            if not isinstance(count, int) or count <= seen:
                if isinstance(count, int) and count < seen:
                    self._seen[reason] = count  # the counter was reset (e.g. its owner recreated)
                continue
            warned = self._warned.get(reason, 0)
            if warned < self.first:
                self.log.warning("dropped: %s (%d so far)%s", reason, count,
                                 f"; further drops of this kind are reported at most every {self.interval:g} s"
                                 if warned + 1 == self.first else "",
                                 extra={"drop": {"reason": reason, "count": count, "new": count - seen}})
            elif now - self._last[reason] >= self.interval:
                self.log.warning("dropped: %s: %d more in the last %.0f s (%d in all)", reason, count - seen,
                                 now - self._last[reason], count,
                                 extra={"drop": {"reason": reason, "count": count, "new": count - seen}})
            else:
                continue  # rate-limited: reported with the next warning
            self._seen[reason] = count
            self._warned[reason] = warned + 1
            self._last[reason] = now
            given += 1
        return given

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
