"""The appliance's open flows: what `status` lists, the byte totals, and each flow's closing log line."""

import logging
import time

from ..net import endpoint_text

log = logging.getLogger("ztun.flows")

PROTO_NAMES = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp"}


def describe(flow) -> str:
    """`tcp 198.18.0.5:40000 -> 93.184.216.34:443 [example.com] via proxy`."""
    domain = f" [{flow.domain}]" if flow.domain else ""
    return (f"{PROTO_NAMES.get(flow.proto, flow.proto)} {endpoint_text(flow.source)} -> "
            f"{endpoint_text(flow.destination)}{domain} via {flow.outbound}")


def as_dict(flow, now: float) -> dict:
    """One flow as `status` shows it."""
    return {"id": flow.id, "proto": PROTO_NAMES.get(flow.proto, flow.proto), "source": endpoint_text(flow.source),
            "destination": endpoint_text(flow.destination), "domain": flow.domain, "outbound": flow.outbound,
            "state": flow.state, "bytes_up": flow.bytes_up, "bytes_down": flow.bytes_down,
            "age_s": round(now - flow.started, 3)}


class FlowTable:
    """The open flows by id, and the bytes of those that ended (counters: they only go up)."""

    def __init__(self):
        self.open: dict = {}  # Flow -> None: an ordered set
        self.ended_up = self.ended_down = 0
        self.ended_by_outbound: dict = {}  # outbound name -> [up, down] of its ended flows (counters)

    def __len__(self):
        return len(self.open)

    def add(self, flow) -> None:
        self.open[flow] = None

    def forget(self, flow) -> None:
        """Drop a flow that never carried a byte (refused, failed, unclaimed)."""
        self.open.pop(flow, None)

    def ended(self, flow, reason: str) -> None:
        """A flow that carried traffic has ended: its bytes go to the totals and its line to the log."""
        if flow not in self.open:
            return
        del self.open[flow]
        up, down = flow.bytes_up, flow.bytes_down
        self.ended_up += up
        self.ended_down += down
        totals = self.ended_by_outbound.get(flow.outbound)
        if totals is None:
            totals = self.ended_by_outbound[flow.outbound] = [0, 0]
        totals[0] += up
        totals[1] += down
        if log.isEnabledFor(logging.INFO):
            now = time.monotonic()
            duration = now - flow.started
            log.info("%s up %d down %d bytes %.1fs %s", describe(flow), up, down, duration, reason,
                     extra={"flow": {**as_dict(flow, now), "duration_s": round(duration, 3), "reason": reason}})

    def bytes_total(self) -> tuple:
        """(up, down): the bytes of ended flows plus those of the open ones so far."""
        live = list(self.open)
        return self.ended_up + sum(f.bytes_up for f in live), self.ended_down + sum(f.bytes_down for f in live)

    def snapshot(self) -> list:
        now = time.monotonic()
        return [as_dict(f, now) for f in list(self.open)]
