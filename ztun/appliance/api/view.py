"""What the API serves, made on the loop once a second: counters, traffic, outbounds, rules and (while
someone asks for them) the flows in the Clash API's shapes. The API's thread only reads the result.
"""

from __future__ import annotations

import datetime
import logging
import time

from ..flows import PROTO_NAMES
from ..forwarder import BLOCK

FLOWS_WANTED = 5.0  # seconds the flow list is made for after a request for it (none: no per-flow work)

# Clash's names of the Python levels, and back
CLASH_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
                "silent": logging.CRITICAL + 10}


def clash_level(level: int) -> str:
    for name, value in CLASH_LEVELS.items():
        if level <= value:
            return name
    return "silent"


def rfc3339(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def outbound_type(ob) -> str:
    """The Clash adapter type of an outbound: Direct, Reject or Socks5."""
    if ob.blocks:
        return "Reject"
    return "Socks5" if ob.proxy_address is not None else "Direct"


class ApiView:
    """Callable on the loop (by PublishedSnapshot): the dict the API's thread reads, made fresh each time."""

    def __init__(self, snapshot, version: str):
        self.snapshot = snapshot  # app.Snapshot: .forwarder, and the counters of `status`
        self.version = version
        self.flows_wanted_until = 0.0  # monotonic; set by the API's thread (a float store is atomic)
        self.seq = 0
        self._last = None  # (monotonic, up, down) of the previous view: the rate between the two
        self._rules = (None, [])  # (Rules object, its Clash list): remade only after a reload
        self._fixed: dict = {}  # Flow -> its connection dict but the byte counts (made once; never changed after)

    def want_flows(self) -> None:
        self.flows_wanted_until = time.monotonic() + FLOWS_WANTED

    def __call__(self, include_flows: bool = False) -> dict:
        now, wall = time.monotonic(), time.time()
        fwd = self.snapshot.forwarder
        status = self.snapshot(include_flows=False)
        counters = status["counters"]
        up, down = counters.get("bytes_up", 0), counters.get("bytes_down", 0)
        traffic = {"up": 0, "down": 0}
        if self._last is not None and now > self._last[0]:
            dt = now - self._last[0]
            traffic = {"up": max(0, round((up - self._last[1]) / dt)), "down": max(0, round((down - self._last[2]) / dt))}
        self._last = (now, up, down)
        self.seq += 1
        totals = {name: list(v) for name, v in fwd.flows.ended_by_outbound.items()}
        flows = [] if now < self.flows_wanted_until else None
        offset = wall - now  # monotonic -> unix time
        fixed, kept = self._fixed, {}
        for f in list(fwd.flows.open):
            f_up, f_down = f.bytes_up, f.bytes_down
            t = totals.get(f.outbound)
            if t is None:
                t = totals[f.outbound] = [0, 0]
            t[0] += f_up
            t[1] += f_down
            if flows is not None:
                # The loop pays a look-up a flow; the API's thread joins counts and the rest (connections()).
                c = fixed.get(f)
                if c is None or c["state"] != f.state:
                    c = _connection(f, offset)
                kept[f] = c
                flows.append((c, f_up, f_down))
        self._fixed = kept
        return {
            "seq": self.seq,
            "taken": wall,
            "version": self.version,
            "status": status,
            "traffic": traffic,
            "upload_total": up,
            "download_total": down,
            "outbound_bytes": totals,
            "connections": flows,
            "proxies": self._proxies(fwd, status.get("health") or {}),
            "rules": self._clash_rules(fwd.rules),
            "log_level": clash_level(logging.getLogger().getEffectiveLevel()),
        }

    def _proxies(self, fwd, health: dict) -> dict:
        proxies = {}
        for name, ob in fwd.outbounds.items():
            h = health.get(name) or {}
            history = []
            if h.get("checked") is not None:  # the probe's time (connect, greeting, auth); 0: it failed, as in Clash
                delay = h.get("delay_ms") if h.get("state") == "ok" else None
                history.append({"time": rfc3339(h["checked"]), "delay": max(1, round(delay)) if delay is not None else 0})
            proxies[name] = {"name": name, "type": outbound_type(ob), "udp": not ob.blocks, "xudp": False, "tfo": False,
                             "alive": h.get("state") != "failing", "history": history, "extra": {},
                             "health": h.get("state", "unknown" if getattr(ob, "health", None) else "none"),
                             "error": h.get("error")}
        names = [n for n in proxies if n != BLOCK] + ([BLOCK] if BLOCK in proxies else [])
        proxies["GLOBAL"] = {"name": "GLOBAL", "type": "Selector", "udp": True, "xudp": False, "tfo": False, "alive": True,
                             "history": [],
                             "all": names, "now": fwd.rules.default, "extra": {}, "health": "none", "error": None}
        return proxies

    def _clash_rules(self, rules) -> list:
        if self._rules[0] is not rules:
            out = [{"type": kind, "payload": payload, "proxy": r.outbound, "size": -1}
                   for r, (kind, payload) in zip(rules.rules, rules.described)]
            out.append({"type": "Match", "payload": "", "proxy": rules.default, "size": -1})
            self._rules = (rules, out)
        return self._rules[1]


def connections(flows) -> list:
    """The view's (fixed part, up, down) of each flow as the Clash API's connection objects (on the API's thread)."""
    return [{**c, "upload": up, "download": down} for c, up, down in flows]


def _connection(f, offset: float) -> dict:
    """One flow in the Clash API's shape (sing-box's and mihomo's /connections), but its byte counts."""
    src, dst = f.source, f.destination
    kind, payload = f.rule or ("", "")
    return {
        "id": str(f.id),
        "metadata": {"network": PROTO_NAMES.get(f.proto, str(f.proto)), "type": "Tun",
                     "sourceIP": str(src[0]), "sourcePort": str(src[1]),
                     "destinationIP": str(dst[0]), "destinationPort": str(dst[1]),
                     "host": f.domain or "", "dnsMode": "fake-ip" if f.domain else "normal",  # mihomo's DNSMode words
                     "uid": 0, "process": "", "processPath": "",  # no owning process: ztun sees other hosts' packets
                     "inboundIP": "", "inboundPort": "", "inboundName": "tun", "inboundUser": "",
                     "sniffHost": "", "specialProxy": "", "specialRules": "", "remoteDestination": ""},
        "start": rfc3339(f.started + offset),
        "chains": [f.outbound or ""],
        "rule": kind,
        "rulePayload": payload,
        "state": f.state,  # ztun's own: connecting, accepting, relaying, open
    }
