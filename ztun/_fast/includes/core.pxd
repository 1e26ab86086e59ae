# Declarations shared by the compiled modules: the C byte/checksum helpers, the constants
# of defs.py (tests/test_defs.py keeps both in step) and the per-slot parse record.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, int32_t
from libc.string cimport memset


cdef extern from "zt_bytes.h" nogil:
    uint16_t zt_be16(const uint8_t *p)
    uint32_t zt_be32(const uint8_t *p)
    uint16_t zt_le16(const uint8_t *p)
    void zt_put16(uint8_t *p, uint16_t v)
    uint32_t zt_fold(unsigned long long s)
    uint16_t zt_sum(const uint8_t *p, size_t n, uint32_t initial)
    uint32_t zt_delta(const uint8_t *old, const uint8_t *new_, size_t n)
    uint16_t zt_apply(uint16_t csum, uint32_t delta)


cdef enum:
    HEADROOM = 16
    OK = 0
    EMPTY = 1
    TRUNCATED = 2
    BAD_VERSION = 3
    BAD_IHL = 4
    BAD_LENGTH = 5
    BAD_EXT_HEADER = 6
    BAD_TCP_HEADER = 7
    BAD_UDP_LENGTH = 8
    NO_FLOW = 9
    TABLE_FULL = 10
    NO_PORT = 11
    BLOCKED = 12
    PENDING = 13
    BAD_VNET_HDR = 14
    N_REASONS = 15
    VNET_HDR_LEN = 10
    VNET_F_NEEDS_CSUM = 1
    GSO_NONE = 0
    GSO_TCPV4 = 1
    GSO_UDP = 3
    GSO_TCPV6 = 4
    GSO_UDP_L4 = 5
    GSO_ECN = 0x80
    MAX_EXT_HEADERS = 8
    FRAG_NONE = 0
    FRAG_FIRST = 1
    FRAG_LATER = 2
    V_DROP = 0
    V_WRITE = 1
    V_NEW_FLOW = 2
    V_UDP = 3
    V_ICMP = 4
    V_OTHER = 5
    N_VERDICTS = 6
    ST_FREE = 0
    ST_SYN_SENT = 1
    ST_ESTABLISHED = 2
    ST_FIN_WAIT = 3
    ST_CLOSING = 4
    ST_RESET = 5
    N_STATES = 6
    FIN_CLIENT = 1
    FIN_SERVER = 2
    D_PENDING = 0
    D_ALLOW = 1
    D_BLOCK = 2
    TCP_FIN = 0x01
    TCP_SYN = 0x02
    TCP_RST = 0x04
    TCP_ACK = 0x10
    PROTO_ICMP = 1
    PROTO_TCP = 6
    PROTO_UDP = 17
    PROTO_ICMPV6 = 58
    CS_OK = 0
    CS_BAD_IP = 1
    CS_BAD_L4 = 2
    CS_UDP6_ZERO = 3
    CS_UNCHECKED = 4


cdef packed struct Meta:
    uint8_t status
    uint8_t version
    uint8_t proto
    uint8_t frag
    uint8_t tcp_flags
    uint8_t icmp_type
    uint8_t icmp_code
    uint8_t hop_limit
    uint16_t src_port
    uint16_t dst_port
    uint16_t frag_offset
    uint16_t gso_size
    uint32_t l4_off
    uint32_t payload_off
    uint32_t payload_len
    uint32_t ip_len
    uint32_t seq
    uint32_t ack
    uint32_t frag_id
    uint8_t vnet_flags
    uint8_t gso_type
    uint16_t _pad
    uint8_t src[16]
    uint8_t dst[16]


cdef inline void zt_put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline uint32_t zt_pseudo(const uint8_t *src, const uint8_t *dst, int alen, int proto, uint32_t length) noexcept nogil:
    """Ones'-complement sum of the IPv4 (alen 4) or IPv6 (alen 16) pseudo-header."""
    cdef uint8_t tail[8]
    memset(tail, 0, 8)
    if alen == 4:
        tail[1] = <uint8_t>proto
        tail[2] = <uint8_t>(length >> 8)
        tail[3] = <uint8_t>length
        return zt_sum(tail, 4, zt_sum(src, 4, zt_sum(dst, 4, 0)))
    zt_put32(tail, length)
    tail[7] = <uint8_t>proto
    return zt_sum(tail, 8, zt_sum(src, 16, zt_sum(dst, 16, 0)))


cdef inline void zt_uso_vnet_hdr(uint8_t *h, uint32_t l4, uint32_t size) noexcept nogil:
    """The virtio_net_hdr at h of a UDP super-packet (USO) whose UDP header is at l4, cut into
    datagrams of size payload bytes: GSO_UDP_L4, the checksum to finish at UDP's offset 6."""
    h[0] = VNET_F_NEEDS_CSUM
    h[1] = GSO_UDP_L4
    h[2] = <uint8_t>(l4 + 8)  # the header length, little-endian
    h[3] = <uint8_t>((l4 + 8) >> 8)
    h[4] = <uint8_t>size
    h[5] = <uint8_t>(size >> 8)
    h[6] = <uint8_t>l4  # where the checksum starts, and its offset in it
    h[7] = <uint8_t>(l4 >> 8)
    h[8] = 6
    h[9] = 0


cdef inline Meta *meta_of(batch) except NULL:
    """batch.meta as Meta records; TypeError unless it has their layout (the twins: typed_args.check_meta)."""
    cdef uint8_t[::1] raw = batch.meta.view("u1")
    if batch.meta.dtype.itemsize != sizeof(Meta):
        raise TypeError("batch.meta does not have the Meta layout")
    return <Meta *>&raw[0]
