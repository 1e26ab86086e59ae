"""Log set-up: JSON lines with extras, the text format; DropWarner's first-N and rate limit."""

import io
import ipaddress
import json
import logging

import pytest

from ztun.appliance.logfmt import DropWarner, JsonFormatter, setup_logging
from ztun.loop import Loop


@pytest.fixture
def json_log():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("ztun.test.json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    yield logger, stream
    logger.removeHandler(handler)


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_extras(json_log):
    logger, stream = json_log
    flow = {"source": "198.18.0.2:40000", "destination": "198.19.0.1:80", "bytes_up": 5}
    logger.info("tcp %s -> %s closed", flow["source"], flow["destination"], extra={"flow": flow})
    logger.warning("multi\nline \"quoted\" ünïcode", extra={"addr": ipaddress.ip_address("198.18.0.2"), "raw": b"\x00"})
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        logger.exception("failed")
    first, second, third = lines(stream)
    assert first["msg"] == "tcp 198.18.0.2:40000 -> 198.19.0.1:80 closed" and first["flow"] == flow
    assert first["level"] == "INFO" and first["logger"] == "ztun.test.json"
    assert first["ts"].endswith("Z") and first["ts"][10] == "T" and len(first["ts"]) == 24
    assert second["msg"] == "multi\nline \"quoted\" ünïcode" and second["raw"] == "b'\\x00'" and second["addr"] == "198.18.0.2"
    assert "ZeroDivisionError" in third["exc"] and third["level"] == "ERROR"
    assert not {"args", "levelno", "pathname", "msecs", "exc_info"} & set(first)


def _reset_root():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    return root, saved


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_setup_logging(fmt):
    root, (handlers, level) = _reset_root()
    stream = io.StringIO()
    try:
        setup_logging("debug", fmt, stream=stream)
        assert root.level == logging.DEBUG
        logging.getLogger("ztun.x").debug("hello %d", 1, extra={"flow": {"a": 1}})
        out = stream.getvalue()
        if fmt == "json":
            record = json.loads(out)
            assert record["msg"] == "hello 1" and record["flow"] == {"a": 1} and record["level"] == "DEBUG"
        else:
            assert out.rstrip().endswith("DEBUG ztun.x: hello 1")
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def test_setup_logging_rejects_unknown_format():
    with pytest.raises(ValueError, match="text, json"):
        setup_logging("INFO", "xml")


class Clockless:
    """DropWarner's loop, driven by hand: check(now) is called directly."""

    def call_later(self, delay, cb, *args):
        return type("H", (), {"cancel": lambda self: None})()

    def time(self):
        return 0.0


def test_drop_warner_first_n_then_rate_limited(caplog):
    drops = {"malformed": 0}
    w = DropWarner(Clockless(), lambda: drops, first=3, interval=60.0)
    caplog.set_level(logging.WARNING, logger="ztun.drops")
    t = 0.0
    for _ in range(10):  # ten increments a second apart: three warnings, then silence
        drops["malformed"] += 1
        t += 1
        w.check(t)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all(r.name == "ztun.drops" for r in caplog.records)
    assert messages[0] == "dropped: malformed (1 so far)"
    assert "at most every 60 s" in messages[2]
    assert caplog.records[0].drop == {"reason": "malformed", "count": 1, "new": 1}
    caplog.clear()
    w.check(t + 30)
    assert not caplog.records  # within the minute after the third warning (at t=3)
    w.check(63.0)
    assert [r.getMessage() for r in caplog.records] == ["dropped: malformed: 7 more in the last 60 s (10 in all)"]
    caplog.clear()
    w.check(200.0)
    assert not caplog.records  # nothing new: nothing said


def test_drop_warner_each_reason_on_its_own(caplog):
    drops = {"a": 0}
    w = DropWarner(Clockless(), lambda: drops, first=1, interval=60.0)
    caplog.set_level(logging.WARNING, logger="ztun.drops")
    drops["a"] = 5
    assert w.check(1.0) == 1
    drops["a"] = 6
    drops["b"] = 2  # a new reason warns at once, though "a" is rate-limited
    assert w.check(2.0) == 1
    tail = "; further drops of this kind are reported at most every 60 s"
    assert [r.getMessage() for r in caplog.records] == ["dropped: a (5 so far)" + tail, "dropped: b (2 so far)" + tail]
    drops["a"] = 1  # reset by its owner: not a drop, and counting restarts from there
    assert w.check(100.0) == 0
    drops["a"] = 3
    assert w.check(101.0) == 1 and caplog.records[-1].getMessage().startswith("dropped: a: 2 more")


def test_drop_warner_on_the_loop(caplog):
    drops = {"x": 0}
    calls = []

    def counters():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("bug in counters")
        return drops

    caplog.set_level(logging.DEBUG, logger="ztun.drops")
    with Loop() as loop:
        w = DropWarner(loop, counters, check_every=0.01)
        drops["x"] = 1
        deadline = loop.time() + 5
        while len(calls) < 4 and loop.time() < deadline:
            loop.run_once(0.05)
        w.close()
        n = len(calls)
        for _ in range(5):
            loop.run_once(0.02)
        assert len(calls) == n  # closed: no more checks
    messages = [r.getMessage() for r in caplog.records]
    assert "dropped: x (1 so far)" in messages
    assert "drop counters could not be read" in messages  # logged, and the timer kept going


def test_drop_warner_quiet_reasons_counted_not_said(caplog):
    """A retransmitted SYN of a flow whose connect is under way ("pending") is TCP at work, not a fault."""
    drops = {"pending": 0, "no_flow": 0}
    w = DropWarner(Clockless(), lambda: drops, first=3, interval=60.0)
    caplog.set_level(logging.WARNING, logger="ztun.drops")
    drops["pending"] = 11
    assert w.check(1.0) == 0 and not caplog.records
    drops["no_flow"] = 1  # another reason still warns
    assert w.check(2.0) == 1 and caplog.records[0].getMessage().startswith("dropped: no_flow")
    assert DropWarner(Clockless(), lambda: drops, quiet=()).check(3.0) == 2  # quiet=() says everything
