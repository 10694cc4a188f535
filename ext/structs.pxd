# The structs and constants shared with the XDP programs, taken from xdp/include/structs.h
# and consts.h (never retyped: sizes, offsets and values come from the headers; only the
# names are listed here). Fields typed __be16 in C are uint16_t here: they hold network
# order, the caller converts.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "consts.h":
    enum:
        # address families as stored in map keys
        XLB_FAMILY_V4
        XLB_FAMILY_V6
        # map sizes (the defaults the objects are compiled with)
        XLB_MAX_VIPS
        XLB_MAX_BACKENDS
        XLB_MAX_RINGS
        XLB_FLOW4_WAYS
        XLB_FLOW4_SETS
        XLB_FLOW6_WAYS
        XLB_FLOW6_SETS
        XLB_STAMP_SHIFT
        XLB_PROMOTE_AGE
        XLB_MAX_LOCAL_ADDRS
        XLB_ADDR_FILTER_BITS
        XLB_MAX_MEMBERS
        XLB_MAX_SOURCE_PREFIXES
        XLB_MAX_SOURCE_RANGES
        XLB_IF_MAC_SLOTS
        # the VIP index
        XLB_VIP_INDEX_BITS
        XLB_VIP_INDEX_SLOTS
        XLB_SLOT_VIP
        XLB_SLOT_MORE
        # Maglev rings
        XLB_RING_SIZE_DEFAULT
        XLB_RING_SIZE_MAX
        # struct xlb_vip.mode
        XLB_MODE_IPIP
        XLB_MODE_L2
        XLB_MODE_LOCAL
        # struct xlb_vip.flags
        XLB_VIP_NO_FLOW_TABLE
        XLB_VIP_AFFINITY_SRC
        XLB_VIP_ANNOUNCE
        XLB_VIP_SOURCE_RANGES
        XLB_VIP_STATELESS
        XLB_SRC_RANGE_PLEN_MAX
        # stateless mode's chaining
        XLB_CHAIN_IDS
        XLB_CHAIN_TIME_SHIFT
        XLB_CHAIN_WINDOW_DEFAULT
        # struct xlb_addr.flags
        XLB_ADDR_PORTS
        XLB_ADDR_ALL_PORTS
        XLB_ADDR_ANNOUNCE
        # struct xlb_backend.state and .flags
        XLB_BACKEND_ACTIVE
        XLB_BACKEND_DRAINING
        XLB_BACKEND_LOCAL
        # health checks: struct xlb_member.health, struct xlb_health_spec
        XLB_HEALTH_PATH_MAX
        XLB_HEALTH_UNCHECKED
        XLB_HEALTH_UP
        XLB_HEALTH_DOWN
        XLB_HEALTH_TCP
        XLB_HEALTH_HTTP
        XLB_HEALTH_NONE
        XLB_HEALTH_F_DIRECT
        XLB_HEALTH_F_GONE
        # struct xlb_config.flags
        XLB_CFG_DECAP_CHECK_SOURCE
        XLB_CFG_INSERTS_SET
        # packet limits
        XLB_MTU_DEFAULT
        # health checks through the tunnel: registered local ports at most
        XLB_HC_MAX_PATHS
        XLB_IPV6_EXT_MAX
        XLB_TTL
        XLB_ICMP4_QUOTE
        XLB_ICMP6_QUOTE

    # 0xFFFFFFFFu: typed, so Python sees 4294967295 and not an int's -1
    const uint32_t XLB_RING_EMPTY
    const uint32_t XLB_HEALTH_VIP
    const uint32_t XLB_CHAIN_LABEL

    enum xlb_stat:
        XLB_STAT_PASS_NOT_VIP
        XLB_STAT_PASS_LOCAL
        XLB_STAT_PASS_FRAGMENT
        XLB_STAT_PASS_MALFORMED
        XLB_STAT_PASS_NO_NEIGH
        XLB_STAT_TX
        XLB_STAT_REDIRECT
        XLB_STAT_DROP_NO_BACKEND
        XLB_STAT_DROP_TOO_BIG
        XLB_STAT_DROP_UNSUPPORTED
        XLB_STAT_DROP_NO_ROUTE
        XLB_STAT_DROP_INTERNAL
        XLB_STAT_FLOW_HIT
        XLB_STAT_FLOW_MISS
        XLB_STAT_FLOW_STALE
        XLB_STAT_ICMP_SENT
        XLB_STAT_ICMP_STEERED
        XLB_STAT_ARP_REPLY
        XLB_STAT_NDP_REPLY
        XLB_STAT_DECAP
        XLB_STAT_DECAP_REFUSED
        XLB_STAT_DROP_SOURCE_RANGE
        XLB_STAT_PASS_NOT_OURS
        XLB_STAT_FLOW_MISS_MIDSTREAM
        XLB_STAT_FLOW_INSERT_LIMITED
        XLB_STAT_CHAIN_SENT
        XLB_STAT_CHAIN_FORWARDED
        XLB_STAT_CHAIN_NO_PEER
        XLB_STAT_MAX


cdef extern from "structs.h":
    struct xlb_vip_key:
        uint8_t addr[16]
        uint16_t port           # network order
        uint8_t proto
        uint8_t family

    struct xlb_vip:
        uint32_t vip_id
        uint32_t ring_id
        uint32_t ring_size
        uint16_t flags
        uint8_t mode
        uint8_t pad

    struct xlb_vip_slot:
        xlb_vip_key key
        uint32_t flags
        xlb_vip vip

    struct xlb_addr_key:
        uint8_t addr[16]
        uint8_t family
        uint8_t pad[3]

    struct xlb_addr:
        uint32_t flags
        uint32_t ifindex
        uint8_t mac[6]
        uint8_t pad[2]

    struct xlb_backend:
        uint8_t addr[16]
        uint8_t family
        uint8_t state
        uint16_t flags
        uint32_t gen
        uint8_t mac[6]

    struct xlb_nexthop:
        uint8_t dmac[6]
        uint8_t smac[6]
        uint32_t ifindex

    struct xlb_if_mac:
        uint32_t ifindex
        uint8_t mac[6]
        uint8_t pad[2]

    struct xlb_flow_key:
        uint8_t src[16]
        uint8_t dst[16]
        uint16_t sport          # network order
        uint16_t dport          # network order
        uint8_t proto
        uint8_t family
        uint8_t pad[2]

    struct xlb_flow4_key:
        uint32_t src            # network order
        uint32_t dst            # network order
        uint16_t sport          # network order
        uint16_t dport          # network order
        uint8_t proto
        uint8_t family
        uint16_t stamp

    struct xlb_flow6_key:
        uint8_t src[16]
        uint8_t dst[16]
        uint16_t sport          # network order
        uint16_t dport          # network order
        uint8_t proto
        uint8_t family
        uint16_t stamp

    struct xlb_flow:
        uint32_t backend_id
        uint32_t gen
        uint32_t hash

    struct xlb_flow4_way:
        xlb_flow4_key key
        xlb_flow flow
        uint32_t check

    struct xlb_flowset4:
        xlb_flow4_way way[1]    # XLB_FLOW4_WAYS of them: sizeof() comes from the header

    struct xlb_flow6_way:
        xlb_flow6_key key
        xlb_flow flow
        uint32_t check
        uint32_t pad[2]

    struct xlb_flowset6:
        xlb_flow6_way way[1]    # XLB_FLOW6_WAYS of them

    struct xlb_flow_budget:
        uint64_t start
        uint32_t count

    struct xlb_member_key:
        uint32_t vip_id
        uint32_t backend_id

    struct xlb_member:
        uint32_t weight
        uint8_t state
        uint8_t health

    struct xlb_health_spec:
        uint8_t type
        uint8_t flags
        uint16_t port
        uint32_t interval_ms
        uint32_t timeout_ms
        uint8_t rise
        uint8_t fall
        uint16_t expect_lo
        uint16_t expect_hi
        uint8_t path_len
        uint8_t path[1]         # XLB_HEALTH_PATH_MAX of them: sizeof() comes from the header

    struct xlb_counters:
        uint64_t packets
        uint64_t bytes
        uint64_t new_flows

    struct xlb_lpm_key:
        uint32_t prefixlen
        uint8_t addr[16]

    struct xlb_src_range_key:
        uint32_t prefixlen
        uint32_t vip_id
        uint8_t addr[16]

    struct xlb_config:
        uint32_t seed
        uint16_t mtu
        uint16_t flags
        uint8_t src4[4]
        uint8_t src4_plen
        uint8_t src6_plen
        uint8_t flow4_bits
        uint8_t flow6_bits
        uint8_t src6[16]
        uint32_t flow4_seed
        uint32_t flow_inserts4
        uint32_t flow_inserts6
        uint32_t chain_window

    struct xlb_prev_slot:
        uint16_t chain
        uint16_t pad
        uint32_t until

    struct xlb_chain_peer:
        uint8_t addr[16]
        uint8_t family
        uint8_t pad[3]

    struct xlb_hc_key:
        uint16_t port           # network order
        uint8_t family
        uint8_t pad

    struct xlb_hc_path:
        uint8_t vip[16]
        uint8_t backend[16]
        uint8_t outer_src[16]
        uint8_t node[16]
        uint8_t mode
        uint8_t pad
        uint16_t dport          # network order
