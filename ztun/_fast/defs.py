"""Constants and record layouts shared by the compiled modules and their pure-Python twins.

The compiled side mirrors these in includes/core.pxd; tests/test_defs.py checks both agree.
"""

from typing import NamedTuple

import numpy as np

# Every slot of a PacketBatch keeps this many bytes in front of the IP packet, so a
# 10-byte virtio_net_hdr or a 4-byte utun header can sit there without a copy.
HEADROOM = 16
MAX_PACKET = 65535

# With IFF_VNET_HDR every packet is preceded by a 10-byte virtio_net_hdr (native byte
# order, little-endian on every platform ztun supports), kept at data[i, HEADROOM-10:HEADROOM].
VNET_HDR_LEN = 10
VNET_F_NEEDS_CSUM = 1  # checksum field holds the pseudo-header sum; csum_start/offset say where
VNET_F_DATA_VALID = 2
GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3
GSO_TCPV6 = 4
GSO_UDP_L4 = 5
GSO_ECN = 0x80

# Parse status and drop reasons share one numbering: a malformed packet's drop reason
# is its parse status.
OK = 0
EMPTY = 1  # zero-length slot
TRUNCATED = 2  # a header or the length the header claims does not fit in the slot
BAD_VERSION = 3  # IP version is neither 4 nor 6
BAD_IHL = 4  # IPv4 header length below 20 bytes
BAD_LENGTH = 5  # IPv4 total length below its header; IPv6 payload length 0 (jumbogram)
BAD_EXT_HEADER = 6  # IPv6 extension-header chain longer than MAX_EXT_HEADERS
BAD_TCP_HEADER = 7  # TCP data offset below 5 words
BAD_UDP_LENGTH = 8  # UDP length below 8 or beyond the IP payload
NO_FLOW = 9  # TCP packet that is neither a SYN nor part of a known flow
TABLE_FULL = 10  # new flow refused: every flow slot in use
NO_PORT = 11  # new flow refused: no NAT port free
BLOCKED = 12  # the handler chose to drop this flow
PENDING = 13  # the flow's first packet is still waiting for the handler's decision
BAD_VNET_HDR = 14  # virtio_net_hdr inconsistent with the packet (offsets beyond it, gso_size 0, wrong type)
N_REASONS = 15

REASON_NAMES = (
    "ok",
    "empty",
    "truncated",
    "bad_version",
    "bad_ihl",
    "bad_length",
    "bad_ext_header",
    "bad_tcp_header",
    "bad_udp_length",
    "no_flow",
    "table_full",
    "no_port",
    "blocked",
    "pending",
    "bad_vnet_hdr",
)

MAX_EXT_HEADERS = 8

# Fragment classification of a parsed packet.
FRAG_NONE = 0
FRAG_FIRST = 1  # offset 0, more fragments follow: transport header parsed
FRAG_LATER = 2  # offset > 0: no transport header in this packet

# What process_batch decided for each slot.
V_DROP = 0  # malformed or refused; batch.reasons says why
V_WRITE = 1  # rewritten in place: write it back to the TUN
V_NEW_FLOW = 2  # rewritten first packet of a new flow: write back if the handler allows
V_UDP = 3  # UDP: handled by the stack's user-space UDP NAT
V_ICMP = 4  # ICMP / ICMPv6
V_OTHER = 5  # not for the NAT: another protocol, or an IP fragment
N_VERDICTS = 6

VERDICT_NAMES = ("drop", "write", "new_flow", "udp", "icmp", "other")

# TCP flow states tracked from flags.
ST_FREE = 0
ST_SYN_SENT = 1
ST_ESTABLISHED = 2
ST_FIN_WAIT = 3  # one side has sent FIN
ST_CLOSING = 4  # both sides have sent FIN
ST_RESET = 5
N_STATES = 6

STATE_NAMES = ("free", "syn_sent", "established", "fin_wait", "closing", "reset")

FIN_CLIENT = 1
FIN_SERVER = 2

# What the handler decided about a flow.
D_PENDING = 0
D_ALLOW = 1
D_BLOCK = 2

DECISION_NAMES = ("pending", "allow", "block")

# Idle timeouts in seconds, by state (index = ST_*).
DEFAULT_TIMEOUTS = (0.0, 60.0, 7200.0, 300.0, 30.0, 5.0)
PORT_REST = 70.0  # seconds a freed NAT port rests: beyond the kernel's 60 s TIME_WAIT and its timer slack

TCP_FIN = 0x01
TCP_SYN = 0x02
TCP_RST = 0x04
TCP_PSH = 0x08
TCP_ACK = 0x10

PROTO_ICMP = 1
PROTO_TCP = 6
PROTO_UDP = 17
PROTO_ICMPV6 = 58

# One row per slot, filled by parse_batch. Offsets are from the start of the IP packet
# (the slot's HEADROOM). Addresses: IPv4 in the first 4 bytes, the rest zero.
META_DTYPE = np.dtype(
    [
        ("status", np.uint8),
        ("version", np.uint8),
        ("proto", np.uint8),
        ("frag", np.uint8),
        ("tcp_flags", np.uint8),
        ("icmp_type", np.uint8),
        ("icmp_code", np.uint8),
        ("hop_limit", np.uint8),
        ("src_port", np.uint16),
        ("dst_port", np.uint16),
        ("frag_offset", np.uint16),
        ("gso_size", np.uint16),  # from the virtio_net_hdr, when the batch has one
        ("l4_off", np.uint32),
        ("payload_off", np.uint32),
        ("payload_len", np.uint32),
        ("ip_len", np.uint32),
        ("seq", np.uint32),
        ("ack", np.uint32),
        ("frag_id", np.uint32),
        ("vnet_flags", np.uint8),  # virtio_net_hdr flags (VNET_F_NEEDS_CSUM: partial checksum)
        ("gso_type", np.uint8),
        ("_pad", np.uint16),
        ("src", np.uint8, (16,)),
        ("dst", np.uint8, (16,)),
    ]
)
assert META_DTYPE.itemsize == 80

# What verify_checksums says of one packet.
CS_OK = 0
CS_BAD_IP = 1  # IPv4 header checksum wrong
CS_BAD_L4 = 2  # TCP, UDP, ICMP or ICMPv6 checksum wrong
CS_UDP6_ZERO = 3  # UDP over IPv6 with checksum 0, which RFC 8200 forbids
CS_UNCHECKED = 4  # nothing to check end to end: malformed, a fragment, or another protocol

# How a SOCKS5 negotiation ended (handshake.pyx's includes/zt_handshake.h, handshake_py.py): the
# Progress a Handshakes engine reports at its end or at a cancel.
HS_OK = 0
HS_CONNECT_FAILED = 1  # err: the connect's errno
HS_SEND_FAILED = 2  # err: send()'s errno
HS_RECV_FAILED = 3  # err: recv()'s errno
HS_EOF = 4  # the proxy closed before the step's bytes all came
HS_PROTOCOL = 5  # the bytes received break the protocol (the transcript's last step says how)
HS_KIND_NAMES = ("ok", "connect_failed", "send_failed", "recv_failed", "eof", "protocol")
HS_TRANSCRIPT_MAX = 272  # every byte a negotiation can receive: 2 + 2 + 4 + 1 + 255 + 2, rounded up


class Progress(NamedTuple):
    """How far a negotiation got: kind and err (HS_*), transcript (every byte received: the complete
    steps, then partial bytes of the step under way), connected (the connect succeeded) and sending
    (it was sending, not waiting for bytes, when it ended or was cancelled)."""

    kind: int
    err: int
    transcript: bytes
    partial: int
    connected: bool
    sending: bool
