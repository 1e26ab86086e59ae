"""SystemStack: the NAT-based system stack over a TUN device (docs/architecture.md, "A flow is one object").

Read a batch, parse it, rewrite every TCP packet of a known flow in place, write those back:
on a Linux TUN a native thread does this (ztun._fast.tunpump) and wakes the loop only for a
batch with rare slots; elsewhere the loop does it per readable event (compiled, GIL released,
no per-packet Python). Python runs only for the rare slots: the first packet of a new flow
(the handler decides), UDP datagrams (the user-space UDP NAT, most of them sent by the
compiled UDP table), ICMP, packets of unknown flows (answered with a reset). The kernel's own TCP terminates every connection on a
listener at the stack's address A; accepted sockets go to the handler with the flow's
original endpoints.
"""

import errno
import ipaddress
import itertools
import logging
import os
import select
import socket
import sys
import time
from collections import Counter

import numpy as np

from .._fast import NatTable, PacketBatch, echo_batch, gso, parse_batch, sockq, spin, tunpump
from .._fast import defs as d
from .._fast.nat_config import NatConfig
from ..errors import TunError
from ..net import abort
from ..tun.offload import uso_usable
from .handler import Flow, Verdict
from .outq import OutQueue, count_failures
from .udp import UdpNat

log = logging.getLogger("ztun.stack")

DEFAULT_SLOTS = 64
MAX_BATCHES = 16  # per readable event, so other fds of the loop get their turn
PUMP_HANDOFF = 8  # with the TUN pump: the batches it hands the rare packets to the loop in
# "auto": the loop reads the device instead of the pump while rare packets (new flows, UDP,
# ICMP) come faster than PUMP_OFF_ABOVE a second, and gives it back to the pump once they come
# slower than PUMP_ON_BELOW for PUMP_ON_AFTER looks in a row (a second): a thread hop per rare
# packet costs more than the loop's own batching, and the pump's slower connection rate must
# not keep a storm under the threshold (measured, README performance section)
PUMP_MODES = ("auto", "on", "off")
PUMP_LOOK = 0.1  # seconds between two looks
PUMP_OFF_ABOVE = 500.0
PUMP_ON_BELOW = 100.0
PUMP_ON_AFTER = 10
ACCEPTS_PER_EVENT = 64
SWEEP_INTERVAL = 1.0
SWEEP_FRACTION = 8  # each sweep looks at capacity/8 NAT slots: a full pass every 8 s
LISTEN_BACKLOG = 4096
_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
_IPV6_FREEBIND = 78
_NODELAY_INHERITED = sys.platform.startswith("linux")  # an accepted socket has its listener's TCP_NODELAY
# A UDP super-datagram (USO) is split before the UDP NAT sees it; Linux sends at most
# UDP_MAX_SEGMENTS (128) segments in one, so more is malformed.
UDP_MAX_SEGMENTS = 128
SEGMENT_BATCH_BYTES = 2 << 20  # the split batch grows to fit what arrives, up to about this
# ICMPv6 types a host sends on any link it is up on: MLD query/report/done (130-132), router
# solicitation and advertisement, neighbour solicitation and advertisement, redirect (133-137),
# MLDv2 report (143)
_LINK_LOCAL_ICMP6 = np.array([130, 131, 132, 133, 134, 135, 136, 137, 143], dtype=np.uint8)
_HANGUP = getattr(select, "POLLERR", 0) | getattr(select, "POLLHUP", 0)


def _hangup_errno(fd: int) -> int:
    """ENODEV if fd reports an error or hang-up now (EBADF: not open), else 0 (and where poll() is
    missing: Windows, whose device reports its end through its read). With nothing to read this
    stays so for ever: the loop would be woken for it at once, every iteration (the TUN pump's rule)."""
    if not hasattr(select, "poll"):
        return 0
    p = select.poll()
    p.register(fd, select.POLLIN)
    for _, ev in p.poll(0):
        if ev & select.POLLNVAL:
            return errno.EBADF
        if ev & _HANGUP:
            return errno.ENODEV
    return 0


def _udp_gro_default(device) -> bool:
    """GRO on write for UDP replies: on where the TUN has USO (measured a win: less CPU per
    datagram, README performance section); ZTUN_UDP_GRO=0 turns it off, for comparison."""
    return uso_usable(device) and os.environ.get("ZTUN_UDP_GRO", "auto") not in ("0", "off")


class SystemStack:
    """Terminates the TCP, UDP and ICMP flows routed into the TUN and hands them to a PacketHandler.

    With no options (or no handler) it only answers ICMP echo and counts the rest as dropped.
    """

    def __init__(self, device, options=None, *, slots: int = DEFAULT_SLOTS, max_batches: int = MAX_BATCHES,
                 nat_capacity: int = 65536, udp_timeout: float = 60.0, udp_max_sessions: int = 16384,
                 pump: str | bool | None = None):
        """pump: the TUN pump's mode, "auto", "on" (True) or "off" (False); None: ZTUN_TUN_PUMP, else
        "auto". auto and on use it only where the device and the build allow it."""
        self.device = device
        self.options = options
        vnet = device.vnet_hdr
        # With offload the kernel hands over TCP super-packets up to 64 KiB whatever the MTU.
        size = d.MAX_PACKET + 40 if device.offload else max(device.mtu, 68)
        self.batch = PacketBatch(slots, max_packet=size, vnet_hdr=vnet)
        self.max_batches = max_batches
        self.nat_capacity = nat_capacity
        self.udp_timeout = udp_timeout
        self.udp_max_sessions = udp_max_sessions
        self.handler = None
        self.loop = None
        self.failure = None  # the device error that stopped the stack
        self._on_failure = None
        self._reading = False  # registered with the loop
        # reader_cpu() = _cpu_base + the reading thread's CPU clock - _cpu_start (its clock when it took over)
        self._cpu_base = self._cpu_start = 0.0
        pump = {True: "on", False: "off", None: os.environ.get("ZTUN_TUN_PUMP", "auto")}.get(pump, pump)
        pump = {"1": "on", "0": "off"}.get(pump, pump)
        if pump not in PUMP_MODES:
            raise ValueError(f"pump must be one of {', '.join(PUMP_MODES)}, got {pump!r}")
        self.pump_mode = pump
        self._pump_timer = None
        self._pump_last = None  # (time, rare packets) at the last look
        self._pump_calm = 0
        self._loop_rare = 0  # rare packets the loop found in what it read itself
        self._pump_warned: set = set()
        self.pump = None  # the TunPump reading the device, when one does
        self.nat = None
        self.udp = None
        self.out = None
        self.listeners: list = []
        self._segments = None  # PacketBatch the UDP super-datagrams are split into, made on first use
        # NAT flow id -> (Flow, its NAT endpoints), from a TCP flow's first packet until its
        # connection is accepted (or refused, or the NAT slot holds another flow)
        self._tcp: dict = {}
        self._ids = itertools.count(1)  # Flow.id
        self._sweep_timer = None
        self.verdict_counts = np.zeros(d.N_VERDICTS, dtype=np.uint64)  # echo-only mode
        self.drop_counts = np.zeros(d.N_REASONS, dtype=np.uint64)
        self.counters: Counter = Counter()
        self._packets_read = 0  # by the loop (the pump counts its own)
        self._batches_read = 0
        self._replies_written = 0
        self.write_failures: Counter = Counter()  # errno -> slots that failed with it
        self._running = False

    # -- life cycle -------------------------------------------------------------

    def start(self, handler=None, loop=None, on_failure=None) -> None:
        """Start processing; on a loop it reads the device when readable, and with a handler (and
        options) TCP and UDP flows go to the handler. on_failure(error) runs if the device fails."""
        self.handler = handler
        self.loop = loop
        self._on_failure = on_failure
        self.device.set_nonblocking(True)
        if handler is not None and loop is not None and self.options is not None:
            try:
                self._start_flows()
            except BaseException:
                self.stop()
                raise
        self._running = True
        if loop is not None:
            cpu = self.reader_cpu()
            if self._pumping():
                try:
                    self._start_pump()
                except BaseException:
                    self.stop()
                    raise
            else:
                loop.add_reader(self.device.fileno(), self._readable)
            self._reading = True
            self._reader_changed(cpu)

    def _pumping(self) -> bool:
        """Whether a TunPump reads the device: not switched off, built, and a raw-I/O device with flows."""
        return (self.pump_mode != "off" and tunpump is not None and self.nat is not None
                and getattr(self.device, "raw_io", False))

    def _start_pump(self):
        b = self.batch
        handoff = [PacketBatch(b.slots, max_packet=b.max_packet, vnet_hdr=b.vnet_hdr) for _ in range(PUMP_HANDOFF)]
        pump = tunpump.TunPump(self.device.fileno(), self.nat, b, handoff, d.VNET_HDR_LEN if b.vnet_hdr else 0,
                               spin.spin_us("ZTUN_PUMP_SPIN", spin.PUMP_US))
        try:
            pump.start()  # what it hands over before the loop waits on it stays in the pipe
        except BaseException:
            pump.stop()
            raise
        self.pump = pump
        self.loop.add_reader(pump.fileno(), self._pumped)
        log.debug("a native thread reads %s (TUN pump, %s)", self.device.name, self.pump_mode)
        if self.pump_mode == "auto":
            self._pump_last = (time.monotonic(), 0)
            self._pump_timer = self.loop.call_later(PUMP_LOOK, self._pump_look)

    def _rare_seen(self) -> int:
        c = self.pump.counters()
        return c["copied"] + c["dropped"] + self._loop_rare

    def _pump_look(self):
        """auto: the loop reads the device while rare packets come fast, the pump while they do not."""
        now, rare = time.monotonic(), self._rare_seen()
        then, before = self._pump_last
        self._pump_last = (now, rare)
        rate = (rare - before) / (now - then) if now > then else 0.0
        if not self.pump.paused:
            if rate > PUMP_OFF_ABOVE:
                cpu = self.reader_cpu()
                try:
                    self.pump.pause()
                except TimeoutError:
                    log.warning("the TUN pump did not pause; it reads %s on", self.device.name)
                else:
                    self._reader_changed(cpu)
                    self._pumped()  # what it handed over before it stopped goes first
                    if not self._reading:
                        return  # that was the device's failure: the stack has stopped reading
                    self.loop.add_reader(self.device.fileno(), self._readable)
                self.counters["tun_pump_paused"] += 1
                self._pump_calm = 0
        else:
            self._pump_calm = self._pump_calm + 1 if rate < PUMP_ON_BELOW else 0
            if self._pump_calm >= PUMP_ON_AFTER:
                cpu = self.reader_cpu()
                self.loop.remove_reader(self.device.fileno())
                self.pump.resume()
                self._reader_changed(cpu)
        self._pump_timer = self.loop.call_later(PUMP_LOOK, self._pump_look)

    def _start_flows(self):
        o = self.options
        ports = {}
        for version, iface in ((4, o.inet4), (6, o.inet6)):
            if iface is not None:
                ports[version] = self._listen(version, iface.ip)
        self.nat = NatTable(NatConfig.from_prefixes(
            o.inet4 and str(o.inet4), o.inet6 and str(o.inet6), port4=ports.get(4, 0), port6=ports.get(6, 0),
            next_count=None, capacity=self.nat_capacity))  # every next address the prefix offers (up to 16)
        self.out = OutQueue(self.loop, self.device, max_packet=d.MAX_PACKET + 40,  # UDP replies up to 64 KiB
                            gro=_udp_gro_default(self.device))
        if self.out.gro:
            log.info("UDP replies to one client are coalesced into USO super-packets (GRO on write)")
        self._one = PacketBatch(1, max_packet=self.batch.max_packet, vnet_hdr=self.batch.vnet_hdr)  # a released SYN
        self.udp = UdpNat(self.loop, self.out, self.handler, timeout=self.udp_timeout, max_sessions=self.udp_max_sessions,
                          ids=self._ids)
        self._sweep_timer = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _listen(self, version: int, address) -> int:
        """The kernel listener at A (any port): every rewritten client SYN goes to it."""
        family = socket.AF_INET if version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            # bind before the address finishes appearing (no DAD wait for IPv6)
            if version == 4:
                sock.setsockopt(socket.SOL_IP, _IP_FREEBIND, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_FREEBIND, 1)
            # Linux copies TCP_NODELAY to accepted sockets: one call here, none per connection
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind((str(address), 0))
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        self.listeners.append(sock)
        self.loop.add_reader(sock.fileno(), self._accept, sock)
        port = sock.getsockname()[1]
        log.debug("listening on %s port %d", address, port)
        return port

    def fileno(self) -> int:
        return self.device.fileno()

    def stop(self) -> None:
        """Stop processing and close the listeners and UDP sessions; the device stays open. Idempotent."""
        self._running = False
        self._stop_reading()
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        for sock in self.listeners:
            if self.loop is not None:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self.listeners.clear()
        if self.udp is not None:
            self.udp.close()
        if self.out is not None:
            try:
                self.out.flush()
            except OSError:
                pass
        for fid in list(self._tcp):
            self._forget(fid)

    def _stop_reading(self):
        if self._reading:
            cpu = self.reader_cpu()
            self._reading = False
            if self.pump is not None:
                if self._pump_timer is not None:
                    self._pump_timer.cancel()
                    self._pump_timer = None
                self.loop.remove_reader(self.pump.fileno())
                if self.pump.paused:
                    self.loop.remove_reader(self.device.fileno())
                self.pump.stop()  # the thread is joined: the NAT table and the batches are the loop's alone
            else:
                self.loop.remove_reader(self.device.fileno())
            self._reader_changed(cpu)

    @property
    def packets_read(self) -> int:
        return self._packets_read + (self.pump.counters()["packets_read"] if self.pump is not None else 0)

    @property
    def batches_read(self) -> int:
        return self._batches_read + (self.pump.counters()["batches_read"] if self.pump is not None else 0)

    @property
    def replies_written(self) -> int:
        return self._replies_written + (self.pump.counters()["written"] if self.pump is not None else 0)

    def reader_cpu(self) -> float:
        """CPU seconds of the thread that reads (and writes back into) the TUN: the pump's while it reads,
        the loop's while the loop does (the pump paused, or none); call it on the loop's thread.

        One clock across a change of reader (each thread's share adds on where the other's
        stopped): NapiThreads takes its differences, which must not jump by the other clock."""
        return self._cpu_base + self._reader_clock() - self._cpu_start

    def _reader_clock(self) -> float:
        if self.pump is not None and self._reading and not self.pump.paused:
            return self.pump.cpu_time()
        return time.thread_time()

    def _reader_changed(self, cpu: float) -> None:
        """Another thread reads from now on; cpu: reader_cpu() just before the change."""
        self._cpu_base, self._cpu_start = cpu, self._reader_clock()

    # -- the packet path ----------------------------------------------------------

    def _readable(self):
        try:
            self.on_readable()
        except TunError as e:
            self._failed(e)

    def _failed(self, e):
        self.counters["tun_failed"] += 1
        log.error("the TUN device failed: %s; stopping", e)
        self.failure = e
        self._stop_reading()
        if self._on_failure is not None:
            self._on_failure(e)

    def _pumped(self):
        """The pump handed over the packets it does not handle: do with them what on_readable does."""
        pump = self.pump
        try:
            handed = pump.take()
        except TunError as e:
            self._failed(e)
            return
        failure = None
        for index, n in handed:  # each batch is given back, whatever happens to it or the one before
            batch = pump.handoff[index]
            try:
                if self._running and failure is None:
                    batch.count = n
                    self._rare(batch, n, time.monotonic(), True, True)
                    self._write(batch, n)
            except TunError as e:
                failure = e
            except Exception:
                log.exception("the packets the TUN pump handed over (batch %d, %d packets)", index, n)
            finally:
                pump.give(index)
        if failure is not None:
            self._failed(failure)

    def on_readable(self) -> int:
        """Process up to max_batches batches of what the device has queued; return packets read.

        TunError when a read fails, or when there is nothing to read and the device reports an
        error or hang-up (ENODEV; EBADF for an fd not open): a TUN whose interface went away."""
        if self.pump is not None and not self.pump.paused:
            raise RuntimeError(f"the TUN pump reads {self.device.name}")
        if not self._running:
            return 0
        dev, batch, total = self.device, self.batch, 0
        if self.out is not None and self.out.n:
            self.out.flush()  # a SYN released since the last flush goes before its flow's next packets
        for k in range(self.max_batches):
            n = dev.read_batch(batch)
            if n == 0:
                if k == 0 and (err := _hangup_errno(dev.fileno())):
                    raise TunError(f"{dev.name} reports an error or hang-up with nothing to read", err)
                break
            total += n
            self._batches_read += 1
            parse_batch(batch)
            if self.nat is None:
                echo_batch(batch, True, self.verdict_counts, self.drop_counts)
            else:
                self._flows(batch, n)
            self._write(batch, n)
            if n < batch.slots:
                break
        self._packets_read += total
        return total

    def _write(self, batch, n):
        written = self.device.write_batch(batch, n, only_verdict=d.V_WRITE)
        self._replies_written += written
        # usually every slot is written back: count the ones meant only when some were not
        if written < n and written < int(np.count_nonzero(batch.verdicts[:n] == d.V_WRITE)):
            self._note_failures(self.device.failed_slots())

    def _flows(self, batch, n):
        nat = self.nat
        no_flow_before = int(nat.drop_counts[d.NO_FLOW])
        now = time.monotonic()
        rare = nat.process_batch(batch, now)
        self._loop_rare += rare
        self._rare(batch, n, now, rare, int(nat.drop_counts[d.NO_FLOW]) != no_flow_before)

    def _rare(self, batch, n, now, rare, no_flow):
        """The slots Python looks at, after the NAT: new flows, UDP, ICMP; resets for packets of no flow."""
        if rare:
            verdicts = batch.verdicts
            if self.udp.table.routes_open:  # datagrams of routed UDP destinations: sent, no Python each
                self.udp.table.send_batch(batch, n, now)
            for i in np.flatnonzero(verdicts[:n] >= d.V_NEW_FLOW):
                v = verdicts[i]
                if v == d.V_NEW_FLOW:
                    self._new_flow(batch, int(i), int(batch.flow_ids[i]))
                elif v == d.V_UDP:
                    verdicts[i] = d.V_DROP
                    if int(batch.meta["gso_type"][i]) & ~d.GSO_ECN:
                        self._udp_super(batch, int(i), now)
                    else:
                        self.udp.on_packet(batch, int(i), now)
            self._icmp(batch, n)
        if no_flow:
            # A host answers a segment of no connection with a reset: the client (or the
            # kernel's side, for a flow that expired) learns at once instead of retrying.
            for i in np.flatnonzero((batch.verdicts[:n] == d.V_DROP) & (batch.reasons[:n] == d.NO_FLOW)):
                if self.out.reset(batch, int(i)):
                    self.counters["tcp_reset_no_flow"] += 1

    def _udp_super(self, batch, i, now):
        """Split a UDP super-datagram (USO, GSO_UDP_L4) into the datagrams it carries, for the UDP NAT."""
        m = batch.meta[i]
        size, l4 = int(m["gso_size"]), int(m["l4_off"])
        count = -(-(int(m["ip_len"]) - l4 - 8) // size) if size else 0
        if not 0 < count <= UDP_MAX_SEGMENTS:
            self.udp.counters["dropped_gso"] += 1
            return
        segs = self._segments_for(count, l4 + 8 + size)
        n = gso.gso_split(batch, i, segs)
        if n <= 0:
            self.udp.counters["dropped_gso"] += 1
            return
        segs.count = n
        parse_batch(segs)
        self.counters["udp_gso_split"] += 1
        segs.verdicts[:n] = d.V_UDP
        if self.udp.table.routes_open:
            self.udp.table.send_batch(segs, n, now)
        for k in range(n):
            if segs.verdicts[k] == d.V_UDP:
                self.udp.on_packet(segs, k, now)

    def _segments_for(self, count, seglen):
        """The split batch, regrown when count segments of seglen bytes do not fit it."""
        segs = self._segments
        if segs is None or segs.slots < count or segs.max_packet < seglen:
            slots = max(count, segs.slots if segs else 64)
            size = max(seglen, segs.max_packet if segs else min(max(self.device.mtu, 1500), 9000))
            if slots * size > SEGMENT_BATCH_BYTES:
                slots, size = count, seglen
            segs = self._segments = PacketBatch(slots, max_packet=max(size, 68))
        return segs

    def _icmp(self, batch, n):
        policy = self.handler.icmp_echo
        icmp = batch.verdicts[:n] == d.V_ICMP
        if not icmp.any():
            return
        if policy == "drop":
            batch.verdicts[:n][icmp] = d.V_DROP
            self.counters["icmp_dropped"] += int(icmp.sum())
            return
        if policy == "ask":
            for i in np.flatnonzero(icmp):
                m = batch.meta[i]
                try:
                    flow = Flow(int(m["proto"]), (_addr(m, "src"), 0), (_addr(m, "dst"), 0), id=next(self._ids))
                    allow = self.handler.handle_icmp(flow) == Verdict.ALLOW
                except Exception:
                    log.exception("handle_icmp failed")
                    allow = False
                if not allow:
                    batch.verdicts[i] = d.V_DROP
        answered = echo_batch(batch, False)
        self.counters["echo_answered"] += answered
        rest = batch.verdicts[:n] == d.V_ICMP
        if rest.any():
            # The kernel's own link-local ICMPv6 on the TUN (router solicitations, neighbour
            # discovery, MLD) is no client's traffic: counted apart, not as a drop worth a warning.
            meta = batch.meta[:n]
            chatter = rest & (meta["proto"] == d.PROTO_ICMPV6) & np.isin(meta["icmp_type"], _LINK_LOCAL_ICMP6)
            self.counters["icmp6_link_local"] += int(np.count_nonzero(chatter))
            self.counters["icmp_dropped"] += int(np.count_nonzero(rest & ~chatter))
            batch.verdicts[:n][rest] = d.V_DROP

    def _new_flow(self, batch, i, fid):
        self._forget(fid)  # the slot's flow before this one, if the NAT reused it at once
        key = self.nat.endpoints(fid)
        flow = Flow(d.PROTO_TCP, key[0], key[1], id=next(self._ids), on_decide=self._decided)
        try:
            verdict = self.handler.prepare(flow)
        except Exception:
            log.exception("prepare failed for %s", flow)
            verdict = Verdict.REJECT
        if verdict == Verdict.DEFER:
            # Raw bytes: the packet with its virtio_net_hdr, and the parse row (a structured
            # numpy copy costs ~20x more)
            h = batch.headroom
            length = int(batch.lengths[i])
            start = h - d.VNET_HDR_LEN if batch.vnet_hdr else h
            flow.held = (fid, batch.data[i, start : h + length].tobytes(), length, batch.meta[i].tobytes())
            self._tcp[fid] = (flow, key)
            batch.verdicts[i] = d.V_DROP
            self.counters["tcp_deferred"] += 1
            return
        flow._on_decide = None  # decided
        batch.verdicts[i] = d.V_WRITE if verdict == Verdict.ALLOW else d.V_DROP
        if verdict == Verdict.ALLOW:
            self._tcp[fid] = (flow, key)
        self._apply(fid, verdict, batch, i)

    def _forget(self, fid):
        """Drop the flow held for NAT slot fid: a later decide() on it does nothing."""
        entry = self._tcp.pop(fid, None)
        if entry is not None:
            entry[0].held = entry[0]._on_decide = None

    def _apply(self, fid, verdict, batch, i):
        if verdict == Verdict.ALLOW:
            self.nat.allow(fid)
            self.counters["tcp_allowed"] += 1
        elif verdict == Verdict.REJECT:
            self.out.reset(batch, i)  # from the parse row: the client's original SYN
            self.nat.release(fid)  # its SYN never reached the kernel: the port needs no rest
            self.counters["tcp_rejected"] += 1
        else:
            # The SYN is dropped and its flow forgotten: nothing was opened for it (the handler's
            # limits), and the client's retransmitted SYN is a new flow, asked about again. A flood
            # of such SYNs costs no NAT ports: each one's port is handed out again at once.
            self.nat.release(fid)
            self.counters["tcp_dropped"] += 1

    def _decided(self, flow, verdict):
        """The handler's later decision about a deferred flow (Flow.decide)."""
        held, flow.held = flow.held, None
        if held is None or not self._running:
            return
        fid = held[0]
        entry = self._tcp.get(fid)
        if entry is None or entry[0] is not flow:
            return  # the flow is gone (it idled out of the NAT): nothing to release
        _, raw, length, row = held
        if verdict == Verdict.ALLOW:
            # Written (behind what the stack originated before it) before the NAT lets the flow's
            # other packets through: until then they are dropped as pending, so none overtakes
            # the SYN to the kernel, also where the TUN pump writes them from its own thread.
            self.out.packet(raw, length)
            self.out.flush()
            self._apply(fid, verdict, None, 0)
            return
        del self._tcp[fid]
        one = self._one  # the parse row answers a refused SYN with a reset
        one.set_packet(0, raw, len(raw) - length)
        one.meta.view(np.uint8)[:] = np.frombuffer(row, dtype=np.uint8)
        one.count = 1
        self._apply(fid, verdict, one, 0)

    def _accept(self, listener):
        accepted, err = sockq.accept_batch(listener, ACCEPTS_PER_EVENT)
        if err:
            log.warning("accept: %s", os.strerror(err))  # out of fds or memory: the rest wait in the backlog
        nat, handler = self.nat, self.handler
        for sock, peer, port in accepted:
            fid = nat.lookup_nat(peer, port)
            if fid < 0:
                self.counters["tcp_accept_no_flow"] += 1
                abort(sock)
                continue
            entry = self._tcp.get(fid)
            if entry is not None and entry[0].held is None:
                del self._tcp[fid]
                flow = entry[0]
            else:  # a second connection on an accepted flow's endpoints: the handler has nothing for it (DNS aside)
                source, destination, _ = nat.endpoints(fid)
                flow = Flow(d.PROTO_TCP, source, destination, id=next(self._ids))
            if not _NODELAY_INHERITED:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                handler.handle_tcp(sock, flow)
            except Exception:
                log.exception("handle_tcp failed")
                abort(sock)

    def _sweep(self):
        self.nat.sweep(time.monotonic(), max(1, self.nat.capacity // SWEEP_FRACTION))
        for fid, (_, key) in list(self._tcp.items()):  # flows that idled out of the NAT before they were accepted
            try:
                now_there = self.nat.endpoints(fid)
            except KeyError:
                now_there = None
            if now_there != key:
                self._forget(fid)
        if self.pump is not None:
            self._pump_failures()
        self._sweep_timer = self.loop.call_later(SWEEP_INTERVAL, self._sweep)

    def _pump_failures(self) -> Counter:
        """The pump's failed writes by errno; each errno is warned about once, as the loop's are."""
        failed = Counter(self.pump.write_failures())
        for err in failed:
            if not self.write_failures[err] and err not in self._pump_warned:
                self._pump_warned.add(err)
                log.warning("writing to %s failed: %s (errno %d); counting further failures", self.device.name,
                            errno.errorcode.get(err, err), err)
        return failed

    def _note_failures(self, failed) -> None:
        count_failures(self.write_failures, failed, f"to {self.device.name}")

    # -- counters -------------------------------------------------------------------

    def stats(self) -> dict:
        """Counters by name: packets, verdicts, drops by reason, flows, UDP sessions, write failures."""
        if self.nat is None:
            return self._echo_stats()
        nat, udp = self.nat, self.udp
        v = nat.verdict_counts
        failures = self.write_failures + self._pump_failures() if self.pump is not None else self.write_failures
        out = {"packets_read": self.packets_read, "batches_read": self.batches_read, "written_back": self.replies_written,
               "write_failed": sum(failures.values()), "tcp_flows": len(nat), "udp_sessions": len(udp.sessions)}
        out["echo_answered"] = self.counters["echo_answered"]
        udp_dropped = sum(c for k, c in udp.counters.items() if k.startswith("dropped_"))
        # read and neither written back, nor given to a UDP session, nor held for the handler (a
        # held SYN was counted a new flow, not a drop); a counter: it never goes down
        out["dropped"] = (int(v[d.V_DROP]) + int(v[d.V_OTHER])
                          + self.counters["icmp_dropped"] + self.counters["icmp6_link_local"] + udp_dropped
                          + self.counters["tcp_dropped"]
                          + out["write_failed"])
        out.update({k: v for k, v in nat.counters().items() if v})
        out.update({k: c for k, c in self.counters.items() if k != "echo_answered"})
        out.update({f"udp_{k}": c for k, c in udp.all_counters().items()})
        out["originated_written"] = self.out.written  # resets, UDP replies, unreachables and released SYNs
        out["originated_failed"] = self.out.failed
        if self.out.coalesced:
            out["udp_gro_coalesced"] = self.out.coalesced
        if self.pump is not None:
            c = self.pump.counters()
            out["tun_pump_handed_over"] = c["handed_over"]  # batches of rare packets the loop was woken for
            out["tun_pump_copied"] = c["copied"]  # the rare packets in them
            out["dropped_loop_busy"] = c["dropped"]  # new flows, UDP, ICMP: the loop held every hand-over batch
            out["tun_pump_waited"] = c["waited"]  # times the pump waited for the loop to give a batch back
            out["tun_pump_spin_found"] = c["spin_found"]  # spins (ZTUN_PUMP_SPIN) that found the next packet
            out["tun_pump_spin_empty"] = c["spin_empty"]  # and those that slept after all
            out["tun_pump_spin_us"] = c["spin_us"]  # the time they took
            out["dropped"] += c["dropped"]
            out["tun_pump_reading"] = int(self._reading and not self.pump.paused)  # not once stopped
        out.update({f"write_failed_{errno.errorcode.get(e, e)}": c for e, c in failures.items()})
        return out

    def _echo_stats(self) -> dict:
        v = self.verdict_counts
        out = {
            "packets_read": self.packets_read,
            "batches_read": self.batches_read,
            "echo_answered": int(v[d.V_WRITE]),
            "replies_written": self.replies_written,
            "write_failed": sum(self.write_failures.values()),
            "dropped_icmp_other": int(v[d.V_ICMP]),
            "dropped_udp": int(v[d.V_UDP]),
            "dropped_tcp_and_other": int(v[d.V_OTHER]),
            "dropped_malformed": int(v[d.V_DROP]),
            "tun_failed": self.counters["tun_failed"],
        }
        out["dropped"] = self.packets_read - out["echo_answered"] + out["write_failed"]
        out.update({f"malformed_{d.REASON_NAMES[i]}": int(c) for i, c in enumerate(self.drop_counts) if c})
        out.update({f"write_failed_{errno.errorcode.get(e, e)}": c for e, c in self.write_failures.items()})
        return out


def _addr(m, field):
    alen = 4 if m["version"] == 4 else 16
    return str(ipaddress.ip_address(m[field].tobytes()[:alen]))
