"""rtnl's encoding and decoding without a kernel: requests round-trip through the decoder, a reply
that does not parse is RtnlError(EBADMSG), and the request loop (acks, errors, dumps, sequence
numbers) over a stand-in socket."""

import errno
import socket
import struct
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="netlink is Linux's")

if sys.platform.startswith("linux"):
    from ztun.system import rtnl as R
    from ztun.system.rtnl import RtnlError

V4, V6 = socket.AF_INET, socket.AF_INET6


def reply(msg_type, payload, flags=0, seq=1):
    """One netlink message as the kernel sends it (4-byte aligned)."""
    data = R.pack(msg_type, flags, seq, payload)
    return data + b"\0" * (-len(data) % 4)


# --- round trips ----------------------------------------------------------------------

def test_route_round_trip_with_a_table_above_255():
    body = R.route_request(family=V4, dst="198.19.0.0", dst_len=16, table=70000, type=R.RTN_THROW, proto=122,
                           oif=7, gateway="198.18.0.2", priority=50, prefsrc="198.18.0.1")
    msg = R.decode(R.RTM_NEWROUTE, body)
    assert msg["table"] == R.RT_TABLE_UNSPEC and msg["RTA_TABLE"] == 70000  # the header's u8 cannot hold it
    assert (msg["family"], msg["dst_len"], msg["proto"], msg["type"], msg["scope"]) == (V4, 16, 122, R.RTN_THROW, 0)
    assert (msg["RTA_DST"], msg["RTA_OIF"], msg["RTA_GATEWAY"], msg["RTA_PRIORITY"], msg["RTA_PREFSRC"]) == \
        ("198.19.0.0", 7, "198.18.0.2", 50, "198.18.0.1")


def test_route_leaves_out_what_is_not_given():
    msg = R.decode(R.RTM_NEWROUTE, R.route_request(family=V6, dst="::", dst_len=0, table=254))
    assert msg["table"] == 254 and msg["RTA_TABLE"] == 254
    assert not {"RTA_DST", "RTA_OIF", "RTA_GATEWAY", "RTA_PRIORITY", "RTA_PREFSRC"} & set(msg)


@given(table=st.integers(0, 2**32 - 1), dst_len=st.integers(0, 128), priority=st.integers(0, 2**32 - 1),
       dst=st.binary(min_size=16, max_size=16), kind=st.sampled_from([R.RTN_UNICAST, R.RTN_UNREACHABLE, R.RTN_THROW])
       if sys.platform.startswith("linux") else st.just(1))
def test_route_round_trip_any(table, dst_len, priority, dst, kind):
    address = socket.inet_ntop(V6, dst)
    msg = R.decode(R.RTM_NEWROUTE, R.route_request(family=V6, dst=address, dst_len=dst_len or 1, table=table, type=kind,
                                                   priority=priority))
    assert msg["RTA_TABLE"] == table and msg["table"] == (table if table < 256 else 0)
    assert (msg["RTA_DST"], msg["dst_len"], msg["RTA_PRIORITY"], msg["type"]) == (address, dst_len or 1, priority, kind)


def test_rule_round_trip_with_each_field():
    body = R.rule_request(family=V6, action=R.FR_ACT_GOTO, priority=9001, table=300, goto=9009, iifname="zt0",
                          src="fd00:18::", src_len=126, fwmark=0x2022, fwmask=0xFFFF, suppress_prefixlen=0, protocol=122)
    msg = R.decode(R.RTM_NEWRULE, body)
    assert (msg["family"], msg["action"], msg["src_len"], msg["table"]) == (V6, R.FR_ACT_GOTO, 126, 0)
    assert {k: v for k, v in msg.items() if k.startswith("FRA_")} == {
        "FRA_PRIORITY": 9001, "FRA_TABLE": 300, "FRA_GOTO": 9009, "FRA_IIFNAME": "zt0", "FRA_SRC": "fd00:18::",
        "FRA_FWMARK": 0x2022, "FRA_FWMASK": 0xFFFF, "FRA_SUPPRESS_PREFIXLEN": 0, "FRA_PROTOCOL": 122}


def test_rule_round_trip_by_destination_protocol_and_port():
    """The fail-closed and DNS rules: `to PREFIX`, `ipproto udp dport 53`."""
    body = R.rule_request(family=V4, action=R.FR_ACT_TO_TBL, priority=8004, table=3033, dst="198.18.3.0", dst_len=24,
                          ip_proto=17, dport_range=(53, 53), protocol=122)
    msg = R.decode(R.RTM_NEWRULE, body)
    assert (msg["dst_len"], msg["FRA_DST"], msg["FRA_IP_PROTO"], msg["FRA_DPORT_RANGE"]) == (24, "198.18.3.0", 17, (53, 53))
    with pytest.raises(R.RtnlError):  # a port range of the wrong size
        R.decode(R.RTM_NEWRULE, R.rule_request(family=V4, action=1) + struct.pack("=HH", 6, 24) + b"\x35\x00\x00\x00")


def test_multipath_first_hop():
    gateway = struct.pack("=HH", 8, 5) + bytes([198, 18, 0, 9])
    hop = struct.pack("=HBBi", 8 + len(gateway), 0, 0, 4) + gateway
    body = R.route_request(family=V4, dst="198.19.0.0", dst_len=16) + struct.pack("=HH", 4 + len(hop), 9) + hop
    assert R.decode(R.RTM_NEWROUTE, body)["RTA_MULTIPATH"] == {"oif": 4, "RTA_GATEWAY": "198.18.0.9"}
    short = struct.pack("=HBBi", 64, 0, 0, 4)  # a hop longer than the attribute
    with pytest.raises(R.RtnlError):
        R.decode(R.RTM_NEWROUTE, R.route_request(family=V4) + struct.pack("=HH", 4 + len(short), 9) + short)


def test_rule_action_numbers_are_the_kernels():
    assert (R.FR_ACT_TO_TBL, R.FR_ACT_GOTO, R.FR_ACT_NOP, R.FR_ACT_UNREACHABLE) == (1, 2, 3, 7)  # <linux/fib_rules.h>
    assert R.decode(R.RTM_NEWRULE, R.rule_request(family=V4, action=R.FR_ACT_NOP, priority=5))["table"] == 0


def test_address_requests_per_family():
    v4 = R.decode(R.RTM_NEWADDR, R.addr_request(family=V4, index=7, address="198.18.0.1", prefixlen=30))
    assert (v4["IFA_LOCAL"], v4["IFA_ADDRESS"], v4["prefixlen"], v4["index"]) == ("198.18.0.1", "198.18.0.1", 30, 7)
    assert "IFA_FLAGS" not in v4
    v6 = R.decode(R.RTM_NEWADDR, R.addr_request(family=V6, index=7, address="fd00:18::1", prefixlen=126,
                                                flags=R.IFA_F_NODAD))
    assert "IFA_LOCAL" not in v6 and v6["IFA_ADDRESS"] == "fd00:18::1"
    assert v6["flags"] == v6["IFA_FLAGS"] == R.IFA_F_NODAD


@pytest.mark.parametrize("up,flags,change", [(True, 1, 1), (False, 0, 1), (None, 0, 0)])
def test_link_request_up_down(up, flags, change):
    msg = R.decode(R.RTM_NEWLINK, R.link_request(index=7, mtu=1400, up=up, name="zt0"))
    assert (msg["index"], msg["flags"], msg["change"], msg["IFLA_MTU"], msg["IFLA_IFNAME"]) == (7, flags, change, 1400, "zt0")


def test_link_info_is_nested_and_unknown_attributes_are_skipped():
    kind = struct.pack("=HH", 8, 1) + b"tun\0"
    nested = struct.pack("=HH", 4 + len(kind), 18 | 0x8000) + kind  # IFLA_LINKINFO, NLA_F_NESTED
    unknown = struct.pack("=HH", 6, 999) + b"ab\0\0"
    carrier = struct.pack("=HH", 5, 33) + b"\1\0\0\0"
    msg = R.decode(R.RTM_NEWLINK, R.link_request(index=3) + unknown + nested + carrier)
    assert msg["IFLA_LINKINFO"] == {"IFLA_INFO_KIND": "tun"} and msg["IFLA_CARRIER"] == 1
    assert not any(isinstance(k, int) for k in msg)


def test_split_round_trip():
    data = reply(R.RTM_NEWRULE, b"x" * 13, R.NLM_F_MULTI, seq=5) + reply(R.NLMSG_DONE, b"\0" * 4, R.NLM_F_MULTI, seq=5)
    assert R.split(data) == [(R.RTM_NEWRULE, R.NLM_F_MULTI, 5, b"x" * 13), (R.NLMSG_DONE, R.NLM_F_MULTI, 5, b"\0" * 4)]


# --- replies that do not parse -----------------------------------------------------------

ROUTE = R.route_request(family=V4, dst="198.19.0.0", dst_len=16, table=300, oif=7) if sys.platform.startswith("linux") else b""


@pytest.mark.parametrize("data,why", [
    (b"\x10\0\0\0\x18\0", "too short for a message header"),
    (struct.pack("=IHHII", 8, 24, 0, 1, 0), "message length 8"),
    (struct.pack("=IHHII", 400, 24, 0, 1, 0) + b"\0" * 20, "message length 400"),
])
def test_bad_datagrams(data, why):
    with pytest.raises(RtnlError, match=why) as e:
        R.split(data)
    assert e.value.errno == errno.EBADMSG


@pytest.mark.parametrize("payload,why", [
    (ROUTE[:11], "its header needs 12"),
    (ROUTE[:12] + b"\x08\0", "too short for an attribute header"),
    (ROUTE[:12] + struct.pack("=HH", 2, 4), "attribute 4 of length 2"),
    (ROUTE[:12] + struct.pack("=HH", 40, 4) + b"\0" * 4, "attribute 4 of length 40"),
    (ROUTE[:12] + struct.pack("=HH", 6, 4) + b"\0\0\0\0", "RTA_OIF has 2 bytes, not 4"),
    (ROUTE[:12] + struct.pack("=HH", 9, 1) + b"\xc6\x13\0\0\0\0\0\0", "RTA_DST has 5 bytes"),
])
def test_bad_route_messages(payload, why):
    with pytest.raises(RtnlError, match=why) as e:
        R.decode(R.RTM_NEWROUTE, payload)
    assert e.value.errno == errno.EBADMSG and "malformed netlink reply" in str(e.value)


def test_nested_attribute_overrun_and_unknown_type():
    nested = struct.pack("=HH", 12, 18) + struct.pack("=HH", 40, 1) + b"tun\0"
    with pytest.raises(RtnlError, match="attribute 1 of length 40"):
        R.decode(R.RTM_NEWLINK, R.link_request(index=3) + nested)
    with pytest.raises(RtnlError, match="unexpected message type 99"):
        R.decode(99, b"\0" * 64)


def test_bad_error_messages():
    with pytest.raises(RtnlError, match="error message of 6 bytes"):
        R.error_of(b"\0" * 6, 0)
    with pytest.raises(RtnlError, match="error code"):
        R.error_of(struct.pack("=i", 5) + b"\0" * 16, 0)  # positive: no errno


@given(st.binary(max_size=300), st.sampled_from([16, 20, 24, 32] if sys.platform.startswith("linux") else [16]))
def test_garbage_is_only_ever_rtnl_error(data, msg_type):
    try:
        R.decode(msg_type, data)
    except RtnlError as e:
        assert e.errno == errno.EBADMSG
    try:
        for kind, flags, _, body in R.split(data):
            if kind == R.NLMSG_ERROR:
                R.error_of(body, flags)
    except RtnlError as e:
        assert e.errno == errno.EBADMSG


def test_every_truncation_of_a_route_is_a_clear_error_or_a_shorter_route():
    whole = []
    for cut in range(len(ROUTE)):
        try:
            R.decode(R.RTM_NEWROUTE, ROUTE[:cut])
        except RtnlError as e:
            assert e.errno == errno.EBADMSG
        else:
            whole.append(cut)
    assert whole == [12, 20, 28]  # the header, then RTA_TABLE, RTA_DST (RTA_OIF ends at 36): whole attributes only


# --- the request loop, over a stand-in socket ---------------------------------------

class FakeSock:
    """Answers each send with the datagrams answer(seq) returns."""

    def __init__(self, answer):
        self.answer, self.sent, self.queue, self.closed = answer, [], [], False

    def send(self, data):
        msg_type, flags, seq = struct.unpack_from("=HHI", data, 4)
        self.sent.append((msg_type, flags, seq))
        self.queue.extend(self.answer(seq, len(self.sent)))
        return len(data)

    def recvmsg(self, size):
        data = self.queue.pop(0)
        return data[:size], [], socket.MSG_TRUNC if len(data) > size else 0, None

    def close(self):
        self.closed = True


def client(answer) -> "R.Rtnl":
    nl = R.Rtnl.__new__(R.Rtnl)
    nl._sock, nl._seq = FakeSock(answer), 0
    return nl


def ack(seq, code=0, text=None):
    payload = struct.pack("=i", -code) + R.pack(R.RTM_NEWROUTE, 0, seq, b"")
    flags = 0
    if text is not None:
        flags = R.NLM_F_ACK_TLVS | R.NLM_F_CAPPED
        raw = text.encode() + b"\0"
        payload += struct.pack("=HH", 4 + len(raw), R.NLMSGERR_ATTR_MSG) + raw + b"\0" * (-len(raw) % 4)
    return reply(R.NLMSG_ERROR, payload, flags, seq)


def rule(prio, seq, flags=R.NLM_F_MULTI):
    return reply(R.RTM_NEWRULE, R.rule_request(family=V4, action=R.FR_ACT_NOP, priority=prio), flags, seq)


def test_a_change_waits_for_its_ack_and_skips_stale_answers():
    nl = client(lambda seq, n: [ack(seq - 1, errno.EEXIST) + rule(1, seq - 1), ack(seq)])
    nl.rule("add", family=V4, action=R.FR_ACT_NOP, priority=9009)
    assert nl._sock.sent == [(R.RTM_NEWRULE, R.NLM_F_REQUEST | R.NLM_F_ACK | R.NLM_F_CREATE | R.NLM_F_EXCL, 1)]


def test_the_kernels_error_is_an_oserror_with_its_errno_and_reason():
    nl = client(lambda seq, n: [ack(seq, errno.EEXIST, "Rule exists")])
    with pytest.raises(OSError) as e:
        nl.rule("add", family=V4, action=R.FR_ACT_NOP, priority=9009)
    assert isinstance(e.value, RtnlError) and e.value.errno == errno.EEXIST
    assert str(e.value) == "[Errno 17] File exists: Rule exists"


def test_a_dump_reads_until_done_and_retakes_an_interrupted_one():
    def answer(seq, n):
        intr = R.NLM_F_DUMP_INTR if n == 1 else 0
        return [rule(1, seq) + rule(2, seq, R.NLM_F_MULTI | intr), reply(R.NLMSG_DONE, b"\0" * 4, R.NLM_F_MULTI, seq)]

    nl = client(answer)
    assert [m["FRA_PRIORITY"] for m in nl.rules(V4)] == [1, 2]
    assert [s[1] for s in nl._sock.sent] == [R.NLM_F_REQUEST | R.NLM_F_DUMP] * 2


def test_a_dump_interrupted_every_time_and_a_failed_dump():
    always = client(lambda seq, n: [reply(R.NLMSG_DONE, b"\0" * 4, R.NLM_F_MULTI | R.NLM_F_DUMP_INTR, seq)])
    with pytest.raises(RtnlError, match="changed while read") as e:
        always.routes(V4)
    assert e.value.errno == errno.EAGAIN and len(always._sock.sent) == 5
    failed = client(lambda seq, n: [reply(R.NLMSG_DONE, struct.pack("=i", -errno.ENOBUFS), R.NLM_F_MULTI, seq)])
    with pytest.raises(RtnlError) as e:
        failed.routes(V4)
    assert e.value.errno == errno.ENOBUFS


def test_link_lookups():
    link = R.link_request(index=7, name="zt0")
    nl = client(lambda seq, n: [reply(R.RTM_NEWLINK, link, 0, seq) + ack(seq)])
    assert nl.link_index("zt0") == 7
    assert nl.link_index("x" * 16) is None and len(nl._sock.sent) == 1  # no device has that name; not asked
    gone = client(lambda seq, n: [ack(seq, errno.ENODEV)])
    assert gone.link_index("zt9") is None
    with pytest.raises(RtnlError) as e:
        gone.get_link(9)
    assert e.value.errno == errno.ENODEV


def test_a_datagram_too_large_and_a_reply_that_does_not_parse():
    huge = client(lambda seq, n: [b"\0" * (R._RECV_SIZE + 1)])
    with pytest.raises(RtnlError) as e:
        huge.rules(V4)
    assert e.value.errno == errno.EMSGSIZE
    bad = client(lambda seq, n: [reply(R.RTM_NEWRULE, b"\0" * 3, R.NLM_F_MULTI, seq)])
    with pytest.raises(RtnlError) as e:
        bad.rules(V4)
    assert e.value.errno == errno.EBADMSG


def test_unknown_command():
    with pytest.raises(ValueError, match="'add' or 'del'"):
        client(lambda seq, n: []).route("replace", family=V4)


def test_rule_round_trip_by_output_interface():
    """ztun's own sockets bound to an interface (outbound_interface): `oif NAME goto`."""
    body = R.rule_request(family=V4, action=R.FR_ACT_GOTO, priority=9000, goto=9009, oifname="wlan0", protocol=122)
    msg = R.decode(R.RTM_NEWRULE, body)
    assert (msg["FRA_OIFNAME"], msg["FRA_GOTO"]) == ("wlan0", 9009) and "FRA_FWMARK" not in msg
