"""Where a bad value is: its key path as text (`route.rules[2].port`), its line in the file
(tomllib keeps none), or the flag that set it; _Context.fail raises the ConfigError saying so."""

from __future__ import annotations

import re

from ...errors import ConfigError
from .schema import FLAGS


def key_name(path: tuple) -> str:
    """("route", "rules", 2, "port") -> "route.rules[2].port"."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


_HEADER = re.compile(r"^\s*(\[\[?)([^\[\]]+)\]\]?\s*(?:#.*)?$")


class _Locator:
    """Best-effort line numbers for key paths: tomllib keeps no positions, so scan the text.

    Finds the path's table header ([tun], the third [[route.rules]], ...) and the `key =`
    line under it; falls back to a key that occurs only once in the file.
    """

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers = []  # (name, is_array, index among same-name arrays, line number)
        counts: dict = {}
        for n, line in enumerate(self.lines, 1):
            m = _HEADER.match(line)
            if m:
                name = ".".join(part.strip().strip("\"'") for part in m.group(2).split("."))
                array = m.group(1) == "[["
                index = counts.get(name, 0) if array else None
                if array:
                    counts[name] = index + 1
                self.headers.append((name, array, index, n))

    def _section(self, table: tuple):
        """(first line, end line) of the table's own lines: after its header up to the next one."""
        if not table:
            start = 0
        else:
            name = ".".join(p for p in table if isinstance(p, str))
            index = next((p for p in reversed(table) if isinstance(p, int)), None)
            for h_name, array, h_index, n in self.headers:
                if h_name == name and (array and h_index == index if index is not None else not array):
                    start = n
                    break
            else:
                return None
        end = next((n - 1 for *_, n in self.headers if n > start), len(self.lines))
        return start, end

    def line(self, path: tuple) -> int | None:
        table, key = (path[:-1], path[-1]) if path and isinstance(path[-1], str) else (path, None)
        section = self._section(table)
        if key is None:
            return section[0] if section and section[0] else None
        if section is None and table and isinstance(table[-1], str):
            return self.line(table)  # an inline or dotted table: point at it
        pattern = re.compile(rf"""^\s*["']?{re.escape(key)}["']?\s*[=.]""")
        if section is not None:
            for n in range(section[0] + 1, section[1] + 1):
                if pattern.match(self.lines[n - 1]):
                    return n
        whole = self._section(path)  # the key is itself a table with a header: [tunn]
        if whole is not None and whole[0]:
            return whole[0]
        hits = [n for n, line in enumerate(self.lines, 1) if pattern.match(line)]
        if len(hits) == 1:
            return hits[0]
        return section[0] if section and section[0] else None


class _Context:
    """Where values came from (file or flag), to word an error the way its reader will find it."""

    def __init__(self, source: str | None, text: str, flags: dict):
        self.source = source
        self.locator = _Locator(text)
        self.flags = flags  # key name -> the flag that set it

    def _flag(self, key: str) -> str | None:
        """The flag that set key (or the table or array holding it)."""
        for origin, flag in self.flags.items():
            if key == origin or key.startswith((origin + ".", origin + "[")):
                return flag
        return None

    def _by_flag(self, path: tuple, key: str) -> str | None:
        """key's flag if the error at path is told in flags (its value came from one, or there is no file)."""
        flag = next((f for k, f in FLAGS.values() if k == key), None)
        if flag is not None and (self.source is None or self._flag(key_name(path)) is not None):
            return flag
        return None

    def name(self, path: tuple, key: str) -> str:
        """key ("tun.exclude_routes") as the error at path names it: its flag or the key (see setting)."""
        return self._by_flag(path, key) or key

    def setting(self, path: tuple, key: str, value) -> str:
        """How to give key this value, told the way the error at path is: as its flag (`--inet6 none`)
        when path's value came from a flag or there is no file, else as the key (`tun.inet6 = "none"`);
        a key without a flag always as the key. value: True for a switch, the text of the value, or a list
        of one text for a key holding a list (a repeatable flag)."""
        flag = self._by_flag(path, key)
        one = value[0] if isinstance(value, list) else value
        if flag is not None:
            return flag if value is True else f"{flag} {one}"
        if value is True:
            return f"{key} = true"
        return f'{key} = ["{one}"]' if isinstance(value, list) else f'{key} = "{one}"'

    def fail(self, path: tuple, reason: str):
        key = key_name(path)
        flag = self._flag(key)
        if flag is not None:
            err = ConfigError(f"argument {flag}: {reason}")
            err.key, err.line, err.flag = key, None, flag
            raise err
        line = self.locator.line(path) if self.source else None
        where = [p for p in (self.source, f"line {line}" if line else None, key) if p]
        err = ConfigError(": ".join(where + [reason]))
        err.key, err.line, err.flag = key, line, None
        raise err


def config_error(config, path: tuple, reason: str) -> ConfigError:
    """The error of a check made on a loaded configuration (on the host, at run time), worded as
    load() words its own: naming the flag that set path's value, or the file, line and key."""
    text = ""
    if config.source is not None:
        try:
            with open(config.source, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            pass  # no line number, the key still
    try:
        _Context(config.source, text, dict(config.flags)).fail(path, reason)
    except ConfigError as e:
        return e
