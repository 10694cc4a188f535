# cython: language_level=3
"""pyxlb._layouts: the bytes of every struct shared with the XDP programs.

Each ``pack_<struct>`` fills the C struct of xdp/include/structs.h (declared in
ext/structs.pxd) and returns its bytes; each ``unpack_<struct>`` copies bytes into the C
struct and returns its fields as a dict whose keys are ``pack_<struct>``'s parameters, so
``pack_x(**unpack_x(b)) == b`` whenever the padding of ``b`` is zero. Offsets and sizes
therefore come from the header as the host compiler lays it out; a datapath test checks
them against the BTF of the BPF objects.

Conventions:

- Addresses are 16 bytes in network order; an IPv4 address takes the first 4 and the
  other 12 must be zero (``pyxlb.addr`` makes them). Families are ``FAMILY_V4`` /
  ``FAMILY_V6``.
- Ports are given and returned in host order; they are stored in network order.
- Every other integer is stored in host order, as the header says.
- Padding is written as zero and ignored when read.

A value outside its C type's range, an address that breaks the convention, or bytes of
the wrong length raise ValueError; a value of the wrong type raises TypeError.

Module attributes: ``SIZES`` (sizeof of each struct, by C name), every constant of
consts.h that user space needs under its name without the ``XLB_`` prefix
(``MODE_IPIP``, ``RING_EMPTY``, ``STAT_TX``, ...) and ``STAT_NAMES``, the lowercase names
of ``enum xlb_stat`` indexed by value (``STAT_NAMES[STAT_PASS_NOT_VIP] == "pass_not_vip"``).
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset

from structs cimport *


cdef extern from "arpa/inet.h" nogil:
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)


# -- constants (values from consts.h) ----------------------------------------------------

FAMILY_V4 = XLB_FAMILY_V4
FAMILY_V6 = XLB_FAMILY_V6

MAX_VIPS = XLB_MAX_VIPS
MAX_BACKENDS = XLB_MAX_BACKENDS
MAX_RINGS = XLB_MAX_RINGS
FLOW4_WAYS = XLB_FLOW4_WAYS        # IPv4 flows: ways a set of xlb_flowsets4
FLOW4_SETS = XLB_FLOW4_SETS        # and its sets (a power of two) by default
FLOW6_WAYS = XLB_FLOW6_WAYS        # IPv6 flows: ways a set of xlb_flowsets6
FLOW6_SETS = XLB_FLOW6_SETS        # and its sets by default
STAMP_SHIFT = XLB_STAMP_SHIFT      # flow stamps: bpf_ktime_get_coarse_ns() >> STAMP_SHIFT, 16 bits
PROMOTE_AGE = XLB_PROMOTE_AGE      # stamp units a flow waits in the back half
MAX_LOCAL_ADDRS = XLB_MAX_LOCAL_ADDRS
ADDR_FILTER_BITS = XLB_ADDR_FILTER_BITS
MAX_MEMBERS = XLB_MAX_MEMBERS
MAX_SOURCE_PREFIXES = XLB_MAX_SOURCE_PREFIXES
MAX_SOURCE_RANGES = XLB_MAX_SOURCE_RANGES
IF_MAC_SLOTS = XLB_IF_MAC_SLOTS
VIP_INDEX_BITS = XLB_VIP_INDEX_BITS
VIP_INDEX_SLOTS = XLB_VIP_INDEX_SLOTS
SLOT_VIP = XLB_SLOT_VIP
SLOT_MORE = XLB_SLOT_MORE

RING_SIZE_DEFAULT = XLB_RING_SIZE_DEFAULT
RING_SIZE_MAX = XLB_RING_SIZE_MAX
RING_EMPTY = XLB_RING_EMPTY

MODE_IPIP = XLB_MODE_IPIP
MODE_L2 = XLB_MODE_L2
MODE_LOCAL = XLB_MODE_LOCAL
MODES = (MODE_IPIP, MODE_L2, MODE_LOCAL)

VIP_NO_FLOW_TABLE = XLB_VIP_NO_FLOW_TABLE
VIP_AFFINITY_SRC = XLB_VIP_AFFINITY_SRC
VIP_ANNOUNCE = XLB_VIP_ANNOUNCE
VIP_SOURCE_RANGES = XLB_VIP_SOURCE_RANGES
VIP_STATELESS = XLB_VIP_STATELESS
CHAIN_IDS = XLB_CHAIN_IDS
CHAIN_LABEL = XLB_CHAIN_LABEL
CHAIN_TIME_SHIFT = XLB_CHAIN_TIME_SHIFT
CHAIN_WINDOW_DEFAULT = XLB_CHAIN_WINDOW_DEFAULT
SRC_RANGE_PLEN_MAX = XLB_SRC_RANGE_PLEN_MAX

ADDR_PORTS = XLB_ADDR_PORTS
ADDR_ALL_PORTS = XLB_ADDR_ALL_PORTS
ADDR_ANNOUNCE = XLB_ADDR_ANNOUNCE

BACKEND_ACTIVE = XLB_BACKEND_ACTIVE
BACKEND_DRAINING = XLB_BACKEND_DRAINING
BACKEND_LOCAL = XLB_BACKEND_LOCAL

HEALTH_VIP = XLB_HEALTH_VIP
HEALTH_PATH_MAX = XLB_HEALTH_PATH_MAX
HEALTH_UNCHECKED = XLB_HEALTH_UNCHECKED
HEALTH_UP = XLB_HEALTH_UP
HEALTH_DOWN = XLB_HEALTH_DOWN
HEALTH_TCP = XLB_HEALTH_TCP
HEALTH_HTTP = XLB_HEALTH_HTTP
HEALTH_NONE = XLB_HEALTH_NONE
HEALTH_F_DIRECT = XLB_HEALTH_F_DIRECT
HEALTH_F_GONE = XLB_HEALTH_F_GONE

CFG_DECAP_CHECK_SOURCE = XLB_CFG_DECAP_CHECK_SOURCE
CFG_INSERTS_SET = XLB_CFG_INSERTS_SET

MTU_DEFAULT = XLB_MTU_DEFAULT
HC_MAX_PATHS = XLB_HC_MAX_PATHS
IPV6_EXT_MAX = XLB_IPV6_EXT_MAX
TTL = XLB_TTL
ICMP4_QUOTE = XLB_ICMP4_QUOTE
ICMP6_QUOTE = XLB_ICMP6_QUOTE

STAT_PASS_NOT_VIP = XLB_STAT_PASS_NOT_VIP
STAT_PASS_LOCAL = XLB_STAT_PASS_LOCAL
STAT_PASS_FRAGMENT = XLB_STAT_PASS_FRAGMENT
STAT_PASS_MALFORMED = XLB_STAT_PASS_MALFORMED
STAT_PASS_NO_NEIGH = XLB_STAT_PASS_NO_NEIGH
STAT_TX = XLB_STAT_TX
STAT_REDIRECT = XLB_STAT_REDIRECT
STAT_DROP_NO_BACKEND = XLB_STAT_DROP_NO_BACKEND
STAT_DROP_TOO_BIG = XLB_STAT_DROP_TOO_BIG
STAT_DROP_UNSUPPORTED = XLB_STAT_DROP_UNSUPPORTED
STAT_DROP_NO_ROUTE = XLB_STAT_DROP_NO_ROUTE
STAT_DROP_INTERNAL = XLB_STAT_DROP_INTERNAL
STAT_FLOW_HIT = XLB_STAT_FLOW_HIT
STAT_FLOW_MISS = XLB_STAT_FLOW_MISS
STAT_FLOW_STALE = XLB_STAT_FLOW_STALE
STAT_ICMP_SENT = XLB_STAT_ICMP_SENT
STAT_ICMP_STEERED = XLB_STAT_ICMP_STEERED
STAT_ARP_REPLY = XLB_STAT_ARP_REPLY
STAT_NDP_REPLY = XLB_STAT_NDP_REPLY
STAT_DECAP = XLB_STAT_DECAP
STAT_DECAP_REFUSED = XLB_STAT_DECAP_REFUSED
STAT_DROP_SOURCE_RANGE = XLB_STAT_DROP_SOURCE_RANGE
STAT_PASS_NOT_OURS = XLB_STAT_PASS_NOT_OURS
STAT_FLOW_MISS_MIDSTREAM = XLB_STAT_FLOW_MISS_MIDSTREAM
STAT_FLOW_INSERT_LIMITED = XLB_STAT_FLOW_INSERT_LIMITED
STAT_CHAIN_SENT = XLB_STAT_CHAIN_SENT
STAT_CHAIN_FORWARDED = XLB_STAT_CHAIN_FORWARDED
STAT_CHAIN_NO_PEER = XLB_STAT_CHAIN_NO_PEER
STAT_MAX = XLB_STAT_MAX


def _stat_names():
    # The index is the C enum's value; only the spelling lives here. An enum member added
    # to consts.h but not to this table shows up as "stat_<n>" (and fails a unit test).
    named = {
        XLB_STAT_PASS_NOT_VIP: "pass_not_vip",
        XLB_STAT_PASS_LOCAL: "pass_local",
        XLB_STAT_PASS_FRAGMENT: "pass_fragment",
        XLB_STAT_PASS_MALFORMED: "pass_malformed",
        XLB_STAT_PASS_NO_NEIGH: "pass_no_neigh",
        XLB_STAT_TX: "tx",
        XLB_STAT_REDIRECT: "redirect",
        XLB_STAT_DROP_NO_BACKEND: "drop_no_backend",
        XLB_STAT_DROP_TOO_BIG: "drop_too_big",
        XLB_STAT_DROP_UNSUPPORTED: "drop_unsupported",
        XLB_STAT_DROP_NO_ROUTE: "drop_no_route",
        XLB_STAT_DROP_INTERNAL: "drop_internal",
        XLB_STAT_FLOW_HIT: "flow_hit",
        XLB_STAT_FLOW_MISS: "flow_miss",
        XLB_STAT_FLOW_STALE: "flow_stale",
        XLB_STAT_ICMP_SENT: "icmp_sent",
        XLB_STAT_ICMP_STEERED: "icmp_steered",
        XLB_STAT_ARP_REPLY: "arp_reply",
        XLB_STAT_NDP_REPLY: "ndp_reply",
        XLB_STAT_DECAP: "decap",
        XLB_STAT_DECAP_REFUSED: "decap_refused",
        XLB_STAT_DROP_SOURCE_RANGE: "drop_source_range",
        XLB_STAT_PASS_NOT_OURS: "pass_not_ours",
        XLB_STAT_FLOW_MISS_MIDSTREAM: "flow_miss_midstream",
        XLB_STAT_FLOW_INSERT_LIMITED: "flow_insert_limited",
        XLB_STAT_CHAIN_SENT: "chain_sent",
        XLB_STAT_CHAIN_FORWARDED: "chain_forwarded",
        XLB_STAT_CHAIN_NO_PEER: "chain_no_peer",
    }
    return [named.get(i, f"stat_{i}") for i in range(XLB_STAT_MAX)]


STAT_NAMES = _stat_names()

SIZES = {
    "xlb_vip_key": sizeof(xlb_vip_key),
    "xlb_vip": sizeof(xlb_vip),
    "xlb_vip_slot": sizeof(xlb_vip_slot),
    "xlb_addr_key": sizeof(xlb_addr_key),
    "xlb_addr": sizeof(xlb_addr),
    "xlb_backend": sizeof(xlb_backend),
    "xlb_nexthop": sizeof(xlb_nexthop),
    "xlb_if_mac": sizeof(xlb_if_mac),
    "xlb_flow_key": sizeof(xlb_flow_key),
    "xlb_flow4_key": sizeof(xlb_flow4_key),
    "xlb_flow": sizeof(xlb_flow),
    "xlb_flow4_way": sizeof(xlb_flow4_way),
    "xlb_flowset4": sizeof(xlb_flowset4),
    "xlb_flow6_key": sizeof(xlb_flow6_key),
    "xlb_flow6_way": sizeof(xlb_flow6_way),
    "xlb_flowset6": sizeof(xlb_flowset6),
    "xlb_flow_budget": sizeof(xlb_flow_budget),
    "xlb_member_key": sizeof(xlb_member_key),
    "xlb_member": sizeof(xlb_member),
    "xlb_health_spec": sizeof(xlb_health_spec),
    "xlb_counters": sizeof(xlb_counters),
    "xlb_lpm_key": sizeof(xlb_lpm_key),
    "xlb_src_range_key": sizeof(xlb_src_range_key),
    "xlb_config": sizeof(xlb_config),
    "xlb_prev_slot": sizeof(xlb_prev_slot),
    "xlb_chain_peer": sizeof(xlb_chain_peer),
    "xlb_hc_key": sizeof(xlb_hc_key),
    "xlb_hc_path": sizeof(xlb_hc_path),
}


# -- checks -----------------------------------------------------------------------------

cdef object _uint(object value, int bits, str name):
    """`value` as a Python int in 0 .. 2**bits - 1, else TypeError / ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 0 or value >> bits:
        raise ValueError(f"{name}={value} is out of range for a {bits}-bit unsigned field")
    return int(value)


cdef bytes _fixed(object value, Py_ssize_t size, str name):
    """`value` (bytes-like) as bytes of exactly `size`."""
    if isinstance(value, str) or isinstance(value, int):
        raise TypeError(f"{name} must be {size} bytes, not {type(value).__name__}")
    try:
        data = bytes(value)
    except TypeError:
        raise TypeError(f"{name} must be {size} bytes, not {type(value).__name__}") from None
    if len(data) != size:
        raise ValueError(f"{name} must be {size} bytes, got {len(data)}")
    return data


cdef int _family(object family, bint allow_unset=False) except -1:
    fam = _uint(family, 8, "family")
    if fam == XLB_FAMILY_V4 or fam == XLB_FAMILY_V6 or (allow_unset and fam == 0):
        return fam
    raise ValueError(f"family must be FAMILY_V4 ({XLB_FAMILY_V4}) or FAMILY_V6 "
                     f"({XLB_FAMILY_V6}), not {family!r}")


cdef bytes _addr(object value, int family, str name):
    """A 16-byte address obeying the IPv4 convention (first 4 bytes, the rest zero)."""
    data = _fixed(value, 16, name)
    if family == XLB_FAMILY_V4 and data[4:] != bytes(12):
        raise ValueError(f"{name}: an IPv4 address uses the first 4 of its 16 bytes, "
                         f"the other 12 must be zero")
    if family == 0 and data != bytes(16):
        raise ValueError(f"{name} must be zero when family is 0")
    return data


cdef const uint8_t *_input(object data, Py_ssize_t size, str struct_name) except NULL:
    if not isinstance(data, bytes):
        raise TypeError(f"{struct_name}: expected bytes, not {type(data).__name__}")
    if len(data) != size:
        raise ValueError(f"{struct_name} is {size} bytes, got {len(data)}")
    return <const uint8_t *><const char *>data


cdef inline void _put(uint8_t *dst, bytes src):
    memcpy(dst, <const char *>src, len(src))


cdef inline bytes _out(const void *p, size_t size):
    return PyBytes_FromStringAndSize(<const char *>p, size)


cdef inline bytes _b(const uint8_t *p, size_t size):
    return PyBytes_FromStringAndSize(<const char *>p, size)


def _as_bytes(data):
    """bytes-like -> bytes, so unpack_* accept bytearray and memoryview too."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    return data


# -- struct xlb_vip_key -----------------------------------------------------------------

def pack_vip_key(addr, port, proto, family):
    """struct xlb_vip_key: (address, port in host order (0: every port), IP protocol, family)."""
    cdef xlb_vip_key k
    cdef int fam = _family(family)
    memset(&k, 0, sizeof(k))
    _put(k.addr, _addr(addr, fam, "addr"))
    k.port = htons(<uint16_t>_uint(port, 16, "port"))
    k.proto = _uint(proto, 8, "proto")
    k.family = fam
    return _out(&k, sizeof(k))


def unpack_vip_key(data):
    cdef xlb_vip_key k
    data = _as_bytes(data)
    memcpy(&k, _input(data, sizeof(k), "xlb_vip_key"), sizeof(k))
    return {"addr": _b(k.addr, 16), "port": ntohs(k.port), "proto": k.proto,
            "family": k.family}


# -- struct xlb_vip ---------------------------------------------------------------------

def pack_vip(vip_id, ring_id, ring_size, mode, flags=0):
    """struct xlb_vip: the VIP's counter index, its ring and ring size, mode and flags."""
    cdef xlb_vip v
    memset(&v, 0, sizeof(v))
    v.vip_id = _uint(vip_id, 32, "vip_id")
    v.ring_id = _uint(ring_id, 32, "ring_id")
    v.ring_size = _uint(ring_size, 32, "ring_size")
    v.mode = _uint(mode, 8, "mode")
    v.flags = _uint(flags, 16, "flags")
    return _out(&v, sizeof(v))


def unpack_vip(data):
    cdef xlb_vip v
    data = _as_bytes(data)
    memcpy(&v, _input(data, sizeof(v), "xlb_vip"), sizeof(v))
    return {"vip_id": v.vip_id, "ring_id": v.ring_id, "ring_size": v.ring_size,
            "mode": v.mode, "flags": v.flags}


# -- struct xlb_vip_slot -----------------------------------------------------------------

def pack_vip_slot(key, flags, vip):
    """struct xlb_vip_slot: a slot of the VIP index: a packed xlb_vip_key, SLOT_* flags and
    a packed xlb_vip."""
    cdef xlb_vip_slot s
    cdef bytes k = _fixed(key, sizeof(s.key), "key")
    cdef bytes v = _fixed(vip, sizeof(s.vip), "vip")
    memset(&s, 0, sizeof(s))
    memcpy(&s.key, <const char *>k, sizeof(s.key))
    s.flags = _uint(flags, 32, "flags")
    memcpy(&s.vip, <const char *>v, sizeof(s.vip))
    return _out(&s, sizeof(s))


def unpack_vip_slot(data):
    cdef xlb_vip_slot s
    data = _as_bytes(data)
    memcpy(&s, _input(data, sizeof(s), "xlb_vip_slot"), sizeof(s))
    return {"key": PyBytes_FromStringAndSize(<const char *>&s.key, sizeof(s.key)),
            "flags": s.flags,
            "vip": PyBytes_FromStringAndSize(<const char *>&s.vip, sizeof(s.vip))}


# -- struct xlb_addr_key ----------------------------------------------------------------

def pack_addr_key(addr, family):
    """struct xlb_addr_key: an address of xlb_vip_addrs, xlb_local_addrs, xlb_decap_vips."""
    cdef xlb_addr_key k
    cdef int fam = _family(family)
    memset(&k, 0, sizeof(k))
    _put(k.addr, _addr(addr, fam, "addr"))
    k.family = fam
    return _out(&k, sizeof(k))


def unpack_addr_key(data):
    cdef xlb_addr_key k
    data = _as_bytes(data)
    memcpy(&k, _input(data, sizeof(k), "xlb_addr_key"), sizeof(k))
    return {"addr": _b(k.addr, 16), "family": k.family}


# -- struct xlb_addr --------------------------------------------------------------------

def pack_addr(flags, ifindex=0, mac=bytes(6)):
    """struct xlb_addr: what an address is to this node (ADDR_*), and how to announce it."""
    cdef xlb_addr a
    memset(&a, 0, sizeof(a))
    a.flags = _uint(flags, 32, "flags")
    a.ifindex = _uint(ifindex, 32, "ifindex")
    _put(a.mac, _fixed(mac, 6, "mac"))
    return _out(&a, sizeof(a))


def unpack_addr(data):
    cdef xlb_addr a
    data = _as_bytes(data)
    memcpy(&a, _input(data, sizeof(a), "xlb_addr"), sizeof(a))
    return {"flags": a.flags, "ifindex": a.ifindex, "mac": _b(a.mac, 6)}


# -- struct xlb_backend -----------------------------------------------------------------

def pack_backend(addr, family, state, flags=0, gen=0, mac=b"\0" * 6):
    """struct xlb_backend. family 0 (with a zero address) marks an unused id."""
    cdef xlb_backend b
    cdef int fam = _family(family, True)
    memset(&b, 0, sizeof(b))
    _put(b.addr, _addr(addr, fam, "addr"))
    b.family = fam
    b.state = _uint(state, 8, "state")
    b.flags = _uint(flags, 16, "flags")
    b.gen = _uint(gen, 32, "gen")
    _put(b.mac, _fixed(mac, 6, "mac"))
    return _out(&b, sizeof(b))


def unpack_backend(data):
    cdef xlb_backend b
    data = _as_bytes(data)
    memcpy(&b, _input(data, sizeof(b), "xlb_backend"), sizeof(b))
    return {"addr": _b(b.addr, 16), "family": b.family, "state": b.state,
            "flags": b.flags, "gen": b.gen, "mac": _b(b.mac, 6)}


# -- struct xlb_nexthop -----------------------------------------------------------------

def pack_nexthop(dmac, smac, ifindex):
    """struct xlb_nexthop: next hop's MAC, egress interface's MAC and index (0: none)."""
    cdef xlb_nexthop n
    memset(&n, 0, sizeof(n))
    _put(n.dmac, _fixed(dmac, 6, "dmac"))
    _put(n.smac, _fixed(smac, 6, "smac"))
    n.ifindex = _uint(ifindex, 32, "ifindex")
    return _out(&n, sizeof(n))


def unpack_nexthop(data):
    cdef xlb_nexthop n
    data = _as_bytes(data)
    memcpy(&n, _input(data, sizeof(n), "xlb_nexthop"), sizeof(n))
    return {"dmac": _b(n.dmac, 6), "smac": _b(n.smac, 6), "ifindex": n.ifindex}


# -- struct xlb_prev_slot, struct xlb_chain_peer (stateless mode) ----------------------

def pack_prev_slot(chain, until=0):
    """struct xlb_prev_slot: a ring slot's previous owner (chain id, 0: none) and when it is
    forgotten (monotonic ns >> CHAIN_TIME_SHIFT)."""
    cdef xlb_prev_slot p
    memset(&p, 0, sizeof(p))
    p.chain = _uint(chain, 16, "chain")
    p.until = _uint(until, 32, "until")
    return _out(&p, sizeof(p))


def unpack_prev_slot(data):
    cdef xlb_prev_slot p
    data = _as_bytes(data)
    memcpy(&p, _input(data, sizeof(p), "xlb_prev_slot"), sizeof(p))
    return {"chain": p.chain, "until": p.until}


def pack_chain_peer(addr, family):
    """struct xlb_chain_peer: a node's address; family 0 (address ignored): no peer."""
    cdef xlb_chain_peer c
    memset(&c, 0, sizeof(c))
    if family:
        _put(c.addr, _addr(addr, _family(family), "addr"))
        c.family = family
    return _out(&c, sizeof(c))


def unpack_chain_peer(data):
    cdef xlb_chain_peer c
    data = _as_bytes(data)
    memcpy(&c, _input(data, sizeof(c), "xlb_chain_peer"), sizeof(c))
    return {"addr": _b(c.addr, 16), "family": c.family}


# -- struct xlb_if_mac ------------------------------------------------------------------

def pack_if_mac(ifindex, mac):
    """struct xlb_if_mac: an interface the balancer runs on (0: empty slot) and its MAC."""
    cdef xlb_if_mac m
    memset(&m, 0, sizeof(m))
    m.ifindex = _uint(ifindex, 32, "ifindex")
    _put(m.mac, _fixed(mac, 6, "mac"))
    return _out(&m, sizeof(m))


def unpack_if_mac(data):
    cdef xlb_if_mac m
    data = _as_bytes(data)
    memcpy(&m, _input(data, sizeof(m), "xlb_if_mac"), sizeof(m))
    return {"ifindex": m.ifindex, "mac": _b(m.mac, 6)}


# -- struct xlb_flow_key ----------------------------------------------------------------

def pack_flow_key(src, dst, sport, dport, proto, family):
    """struct xlb_flow_key: the 5-tuple and family; ports in host order."""
    cdef xlb_flow_key k
    cdef int fam = _family(family)
    memset(&k, 0, sizeof(k))
    _put(k.src, _addr(src, fam, "src"))
    _put(k.dst, _addr(dst, fam, "dst"))
    k.sport = htons(<uint16_t>_uint(sport, 16, "sport"))
    k.dport = htons(<uint16_t>_uint(dport, 16, "dport"))
    k.proto = _uint(proto, 8, "proto")
    k.family = fam
    return _out(&k, sizeof(k))


def unpack_flow_key(data):
    cdef xlb_flow_key k
    data = _as_bytes(data)
    memcpy(&k, _input(data, sizeof(k), "xlb_flow_key"), sizeof(k))
    return {"src": _b(k.src, 16), "dst": _b(k.dst, 16), "sport": ntohs(k.sport),
            "dport": ntohs(k.dport), "proto": k.proto, "family": k.family}


# -- struct xlb_flow4_key ---------------------------------------------------------------

def pack_flow4_key(src, dst, sport, dport, proto, family=XLB_FAMILY_V4):
    """struct xlb_flow4_key: an IPv4 flow's key as a way of xlb_flowsets4 holds it (see
    pack_flow4_way). Addresses in the 16-byte map form
    (as pack_flow_key takes them); family must be FAMILY_V4."""
    cdef xlb_flow4_key k
    if _family(family) != XLB_FAMILY_V4:
        raise ValueError("xlb_flow4_key holds IPv4 flows only (family FAMILY_V4)")
    cdef bytes s = _addr(src, XLB_FAMILY_V4, "src")
    cdef bytes d = _addr(dst, XLB_FAMILY_V4, "dst")
    memset(&k, 0, sizeof(k))
    memcpy(&k.src, <const char *>s, 4)
    memcpy(&k.dst, <const char *>d, 4)
    k.sport = htons(<uint16_t>_uint(sport, 16, "sport"))
    k.dport = htons(<uint16_t>_uint(dport, 16, "dport"))
    k.proto = _uint(proto, 8, "proto")
    k.family = XLB_FAMILY_V4
    return _out(&k, sizeof(k))


def unpack_flow4_key(data):
    """As unpack_flow_key gives it: addresses in the 16-byte map form."""
    cdef xlb_flow4_key k
    data = _as_bytes(data)
    memcpy(&k, _input(data, sizeof(k), "xlb_flow4_key"), sizeof(k))
    return {"src": _b(<const uint8_t *>&k.src, 4) + bytes(12),
            "dst": _b(<const uint8_t *>&k.dst, 4) + bytes(12),
            "sport": ntohs(k.sport), "dport": ntohs(k.dport), "proto": k.proto,
            "family": k.family}


# -- struct xlb_flow6_key ---------------------------------------------------------------

def pack_flow6_key(src, dst, sport, dport, proto, family=XLB_FAMILY_V6):
    """struct xlb_flow6_key: an IPv6 flow's key as a way of xlb_flowsets6 holds it (stamp
    0); family must be FAMILY_V6."""
    cdef xlb_flow6_key k
    if _family(family) != XLB_FAMILY_V6:
        raise ValueError("xlb_flow6_key holds IPv6 flows only (family FAMILY_V6)")
    memset(&k, 0, sizeof(k))
    _put(k.src, _addr(src, XLB_FAMILY_V6, "src"))
    _put(k.dst, _addr(dst, XLB_FAMILY_V6, "dst"))
    k.sport = htons(<uint16_t>_uint(sport, 16, "sport"))
    k.dport = htons(<uint16_t>_uint(dport, 16, "dport"))
    k.proto = _uint(proto, 8, "proto")
    k.family = XLB_FAMILY_V6
    return _out(&k, sizeof(k))


def unpack_flow6_key(data):
    """As unpack_flow_key gives it."""
    cdef xlb_flow6_key k
    data = _as_bytes(data)
    memcpy(&k, _input(data, sizeof(k), "xlb_flow6_key"), sizeof(k))
    return {"src": _b(k.src, 16), "dst": _b(k.dst, 16), "sport": ntohs(k.sport),
            "dport": ntohs(k.dport), "proto": k.proto, "family": k.family}


# -- struct xlb_flow4_way: IPv4 flows in the sets of xlb_flowsets4 ------------------------

cdef inline uint32_t _rotl32(uint32_t x, int r):
    return (x << r) | (x >> (32 - r))


cdef uint32_t _flow4_check(const xlb_flow4_way *w):
    """xlb_flow4_check() of balance.h: the other seven words mixed, never 0."""
    cdef uint32_t k[4]
    memcpy(k, &w.key, 16)
    cdef uint32_t x = (k[0] ^ _rotl32(k[1], 7) ^ _rotl32(k[2], 13) ^ _rotl32(k[3], 19)
                       ^ _rotl32(w.flow.backend_id, 3) ^ _rotl32(w.flow.gen, 11)
                       ^ _rotl32(w.flow.hash, 23))
    return (x * <uint32_t>0x9e3779b1) | 1


def pack_flow4_way(key, flow):
    """struct xlb_flow4_way: `key` (pack_flow4_key) and `flow` (pack_flow) with the check
    word the datapath verifies."""
    cdef xlb_flow4_way w
    memset(&w, 0, sizeof(w))
    memcpy(&w.key, _input(_as_bytes(key), sizeof(w.key), "xlb_flow4_key"), sizeof(w.key))
    memcpy(&w.flow, _input(_as_bytes(flow), sizeof(w.flow), "xlb_flow"), sizeof(w.flow))
    w.check = _flow4_check(&w)
    return _out(&w, sizeof(w))


def flow4_ways(sets, bint count_only=False, backend_ids=None):
    """The IPv4 flows in `sets` (a buffer of whole struct xlb_flowset4, as xlb_flowsets4's
    mmap holds them): [(way number, raw key, raw flow)] for every way that holds a flow (its
    check word non-zero and right), way number = set * FLOW4_WAYS + way; with backend_ids
    (a set), only the flows pinned to one of them. With count_only, just how many. The scan
    runs in C; a Python object is made per flow found."""
    cdef const uint8_t[::1] buf = memoryview(sets).cast("B")
    cdef Py_ssize_t n = buf.shape[0], i, ways
    cdef const xlb_flow4_way *w
    cdef Py_ssize_t found = 0
    if n % sizeof(xlb_flowset4):
        raise ValueError(f"buffer of {n} bytes is not a multiple of the "
                         f"{sizeof(xlb_flowset4)}-byte xlb_flowset4")
    ways = n // sizeof(xlb_flow4_way)
    out = []
    if ways == 0:
        return 0 if count_only else out
    w = <const xlb_flow4_way *>&buf[0]
    for i in range(ways):
        if w[i].check == 0 or w[i].check != _flow4_check(&w[i]):
            continue
        if backend_ids is not None and w[i].flow.backend_id not in backend_ids:
            continue
        found += 1
        if not count_only:
            out.append((i, _out(&w[i].key, sizeof(w[i].key)), _out(&w[i].flow, sizeof(w[i].flow))))
    return found if count_only else out


# -- struct xlb_flow6_way: IPv6 flows in the sets of xlb_flowsets6 ------------------------

cdef uint32_t _flow6_check(const xlb_flow6_way *w):
    """xlb_way_check() of balance.h for IPv6: word i of the other thirteen rotated by
    5 * i + 1, mixed, never 0 (the flow's words by name, as the datapath takes them)."""
    cdef uint32_t words[10]
    cdef uint32_t x = 0
    cdef int i
    memcpy(words, &w.key, 40)
    for i in range(10):
        x ^= _rotl32(words[i], (i * 5 + 1) & 31)
    x ^= (_rotl32(w.flow.backend_id, 51 & 31) ^ _rotl32(w.flow.gen, 56 & 31)
          ^ _rotl32(w.flow.hash, 61 & 31))
    return (x * <uint32_t>0x9e3779b1) | 1


def pack_flow6_way(key, flow):
    """struct xlb_flow6_way: `key` (pack_flow6_key) and `flow` (pack_flow) with the check
    word the datapath verifies."""
    cdef xlb_flow6_way w
    memset(&w, 0, sizeof(w))
    memcpy(&w.key, _input(_as_bytes(key), sizeof(w.key), "xlb_flow6_key"), sizeof(w.key))
    memcpy(&w.flow, _input(_as_bytes(flow), sizeof(w.flow), "xlb_flow"), sizeof(w.flow))
    w.check = _flow6_check(&w)
    return _out(&w, sizeof(w))


def flow6_ways(sets, bint count_only=False, backend_ids=None):
    """flow4_ways for xlb_flowsets6: [(way number, raw xlb_flow6_key, raw flow)]."""
    cdef const uint8_t[::1] buf = memoryview(sets).cast("B")
    cdef Py_ssize_t n = buf.shape[0], i, ways
    cdef const xlb_flow6_way *w
    cdef Py_ssize_t found = 0
    if n % sizeof(xlb_flowset6):
        raise ValueError(f"buffer of {n} bytes is not a multiple of the "
                         f"{sizeof(xlb_flowset6)}-byte xlb_flowset6")
    ways = n // sizeof(xlb_flow6_way)
    out = []
    if ways == 0:
        return 0 if count_only else out
    w = <const xlb_flow6_way *>&buf[0]
    for i in range(ways):
        if w[i].check == 0 or w[i].check != _flow6_check(&w[i]):
            continue
        if backend_ids is not None and w[i].flow.backend_id not in backend_ids:
            continue
        found += 1
        if not count_only:
            out.append((i, _out(&w[i].key, sizeof(w[i].key)), _out(&w[i].flow, sizeof(w[i].flow))))
    return found if count_only else out


# -- the set of a flow (xlb_set_index of balance.h) --------------------------------------

cdef inline uint64_t _set6_salt(int i):
    """XLB_SET6_SALT of balance.h: the constant word i's seed offset is XORed with."""
    return <uint32_t>((<uint32_t>(2 * i + 1)) * <uint32_t>0x9e3779b9) & 0x7fffffff


cdef uint32_t _set_index(const uint32_t *k, uint32_t seed, uint32_t bits, bint v6):
    cdef uint32_t h
    cdef uint64_t x = 0
    cdef int i
    if not v6:
        h = ((k[0] ^ seed) * <uint32_t>0x9e3779b1 ^ k[1] * <uint32_t>0x85ebca77
             ^ k[2] * <uint32_t>0xc2b2ae3d ^ k[3])
        h ^= h >> 15
        h *= <uint32_t>0x2c1b3c6d
        h ^= h >> 13
        return h & ((<uint32_t>1 << (bits & 31)) - 1)
    # xlb_set6_index: the pairs of words, each plus its seed offset, multiplied and summed
    for i in range(0, 10, 2):
        x += ((<uint64_t>k[i] + (seed ^ _set6_salt(i)))
              * (<uint64_t>k[i + 1] + (seed ^ _set6_salt(i + 1))))
    x ^= x >> 32
    x *= 0x9e3779b97f4a7c15ULL
    return <uint32_t>(x >> 32) & ((<uint32_t>1 << (bits & 31)) - 1)


def flow_set(key, seed, bits):
    """The set a flow (`key`: a packed xlb_flow4_key or xlb_flow6_key, its stamp ignored)
    falls in, in a table of 2^bits sets whose set-hash seed is `seed`."""
    cdef uint32_t k[10]
    raw = _as_bytes(key)
    if len(raw) == sizeof(xlb_flow4_key):
        memcpy(k, <const char *>raw, 16)
        k[3] &= 0xffff
        return _set_index(k, _uint(seed, 32, "seed"), _uint(bits, 8, "bits"), False)
    memcpy(k, _input(raw, sizeof(xlb_flow6_key), "xlb_flow6_key"), 40)
    k[9] &= 0xffff
    return _set_index(k, _uint(seed, 32, "seed"), _uint(bits, 8, "bits"), True)


def place_flows6(sets, keys, values, Py_ssize_t count, seed, bits):
    """Put `count` IPv6 flows (keys: contiguous struct xlb_flow_key; values: struct
    xlb_flow) into `sets` (a writable buffer of whole struct xlb_flowset6, 2^bits of them)
    as the datapath would insert them, stamp 0: a flow already there is left alone, else it
    takes its set's first empty way, else the head of the back half (the last way
    forgotten). Returns how many were placed."""
    cdef uint8_t[::1] buf = memoryview(sets).cast("B")
    cdef const uint8_t[::1] kb = memoryview(keys).cast("B")
    cdef const uint8_t[::1] vb = memoryview(values).cast("B")
    cdef uint32_t s = _uint(seed, 32, "seed"), b = _uint(bits, 8, "bits")
    cdef Py_ssize_t nsets = buf.shape[0] // sizeof(xlb_flowset6), i, j, at, placed = 0
    cdef uint32_t k[10]
    cdef uint32_t idx
    cdef xlb_flow6_way *ways
    cdef xlb_flow6_way fresh
    if (<Py_ssize_t>1 << b) > nsets:
        raise ValueError(f"{nsets} sets, fewer than 2^{b}")
    if kb.shape[0] < count * sizeof(xlb_flow_key) or vb.shape[0] < count * sizeof(xlb_flow):
        raise ValueError("keys or values shorter than count records")
    for i in range(count):
        memcpy(k, &kb[i * sizeof(xlb_flow_key)], 40)
        k[9] &= 0xffff
        idx = _set_index(k, s, b, True)
        ways = <xlb_flow6_way *>&buf[idx * sizeof(xlb_flowset6)]
        memset(&fresh, 0, sizeof(fresh))
        memcpy(&fresh.key, k, 40)
        memcpy(&fresh.flow, &vb[i * sizeof(xlb_flow)], sizeof(xlb_flow))
        fresh.check = _flow6_check(&fresh)
        at = -1
        for j in range(XLB_FLOW6_WAYS):
            if (ways[j].check and ways[j].check == _flow6_check(&ways[j])
                    and memcmp(&ways[j].key, &fresh.key, 36) == 0
                    and ways[j].key.proto == fresh.key.proto
                    and ways[j].key.family == fresh.key.family):
                at = -2
                break
            if at == -1 and ways[j].check == 0:
                at = j
        if at == -2:
            continue
        if at == -1:
            for j in range(XLB_FLOW6_WAYS - 1, XLB_FLOW6_WAYS // 2, -1):
                ways[j] = ways[j - 1]
            at = XLB_FLOW6_WAYS // 2
        ways[at] = fresh
        placed += 1
    return placed


# -- struct xlb_flow --------------------------------------------------------------------

def pack_flow(backend_id, gen, hash=0):
    """struct xlb_flow: the backend a flow is pinned to, that backend's generation, and
    the flow's hash."""
    cdef xlb_flow f
    memset(&f, 0, sizeof(f))
    f.backend_id = _uint(backend_id, 32, "backend_id")
    f.gen = _uint(gen, 32, "gen")
    f.hash = _uint(hash, 32, "hash")
    return _out(&f, sizeof(f))


def unpack_flow(data):
    cdef xlb_flow f
    data = _as_bytes(data)
    memcpy(&f, _input(data, sizeof(f), "xlb_flow"), sizeof(f))
    return {"backend_id": f.backend_id, "gen": f.gen, "hash": f.hash}


# -- struct xlb_member_key / xlb_member -------------------------------------------------

def pack_member_key(vip_id, backend_id):
    """struct xlb_member_key: one backend of one VIP."""
    cdef xlb_member_key k
    memset(&k, 0, sizeof(k))
    k.vip_id = _uint(vip_id, 32, "vip_id")
    k.backend_id = _uint(backend_id, 32, "backend_id")
    return _out(&k, sizeof(k))


def unpack_member_key(data):
    cdef xlb_member_key k
    data = _as_bytes(data)
    memcpy(&k, _input(data, sizeof(k), "xlb_member_key"), sizeof(k))
    return {"vip_id": k.vip_id, "backend_id": k.backend_id}


def pack_member(weight, state, health=XLB_HEALTH_UNCHECKED):
    """struct xlb_member: the control plane's record of a VIP's backend (health: the
    HEALTH_UNCHECKED / _UP / _DOWN verdict)."""
    cdef xlb_member m
    memset(&m, 0, sizeof(m))
    m.weight = _uint(weight, 32, "weight")
    m.state = _uint(state, 8, "state")
    m.health = _uint(health, 8, "health")
    return _out(&m, sizeof(m))


def unpack_member(data):
    cdef xlb_member m
    data = _as_bytes(data)
    memcpy(&m, _input(data, sizeof(m), "xlb_member"), sizeof(m))
    return {"weight": m.weight, "state": m.state, "health": m.health}


# -- struct xlb_health_spec -------------------------------------------------------------

def pack_health_spec(type, flags=0, port=0, interval_ms=0, timeout_ms=0, rise=0, fall=0,
                     expect_lo=0, expect_hi=0, path=b""):
    """struct xlb_health_spec: how a VIP's (or one backend's) health is checked. `path`:
    bytes, at most HEALTH_PATH_MAX (its length goes in path_len, the rest is zero)."""
    cdef xlb_health_spec h
    cdef bytes p
    if isinstance(path, str) or isinstance(path, int):
        raise TypeError(f"path must be bytes, not {path.__class__.__name__}")
    p = bytes(path)
    if len(p) > XLB_HEALTH_PATH_MAX:
        raise ValueError(f"path is {len(p)} bytes, more than {XLB_HEALTH_PATH_MAX}")
    memset(&h, 0, sizeof(h))
    h.type = _uint(type, 8, "type")
    h.flags = _uint(flags, 8, "flags")
    h.port = _uint(port, 16, "port")
    h.interval_ms = _uint(interval_ms, 32, "interval_ms")
    h.timeout_ms = _uint(timeout_ms, 32, "timeout_ms")
    h.rise = _uint(rise, 8, "rise")
    h.fall = _uint(fall, 8, "fall")
    h.expect_lo = _uint(expect_lo, 16, "expect_lo")
    h.expect_hi = _uint(expect_hi, 16, "expect_hi")
    h.path_len = len(p)
    memcpy(h.path, <const char *>p, len(p))
    return _out(&h, sizeof(h))


def unpack_health_spec(data):
    cdef xlb_health_spec h
    data = _as_bytes(data)
    memcpy(&h, _input(data, sizeof(h), "xlb_health_spec"), sizeof(h))
    if h.path_len > XLB_HEALTH_PATH_MAX:
        raise ValueError(f"xlb_health_spec: path_len {h.path_len} is more than "
                         f"{XLB_HEALTH_PATH_MAX}")
    return {"type": h.type, "flags": h.flags, "port": h.port, "interval_ms": h.interval_ms,
            "timeout_ms": h.timeout_ms, "rise": h.rise, "fall": h.fall,
            "expect_lo": h.expect_lo, "expect_hi": h.expect_hi,
            "path": _b(h.path, h.path_len)}


# -- struct xlb_counters ----------------------------------------------------------------

def pack_counters(packets=0, bytes=0, new_flows=0):
    """struct xlb_counters (one CPU's share)."""
    cdef xlb_counters c
    memset(&c, 0, sizeof(c))
    c.packets = _uint(packets, 64, "packets")
    c.bytes = _uint(bytes, 64, "bytes")
    c.new_flows = _uint(new_flows, 64, "new_flows")
    return _out(&c, sizeof(c))


def unpack_counters(data):
    cdef xlb_counters c
    data = _as_bytes(data)
    memcpy(&c, _input(data, sizeof(c), "xlb_counters"), sizeof(c))
    return {"packets": c.packets, "bytes": c.bytes, "new_flows": c.new_flows}


def sum_counters(data, int ncpus):
    """Sum a per-CPU read of struct xlb_counters (as Map.lookup returns it: `ncpus` values,
    each padded to a multiple of 8 bytes) into one dict."""
    cdef Py_ssize_t stride = (sizeof(xlb_counters) + 7) // 8 * 8
    cdef xlb_counters c
    cdef uint64_t packets = 0, nbytes = 0, new_flows = 0
    cdef int cpu
    if ncpus <= 0:
        raise ValueError("ncpus must be > 0")
    data = _as_bytes(data)
    cdef const uint8_t *p = _input(data, stride * ncpus, "per-CPU xlb_counters")
    for cpu in range(ncpus):
        memcpy(&c, p + cpu * stride, sizeof(c))
        packets += c.packets
        nbytes += c.bytes
        new_flows += c.new_flows
    return {"packets": packets, "bytes": nbytes, "new_flows": new_flows}


# -- struct xlb_lpm_key -----------------------------------------------------------------

def pack_lpm_key(prefixlen, addr):
    """struct xlb_lpm_key: an LPM-trie key (IPv4 as ::ffff:a.b.c.d with prefixlen 96 + n;
    pyxlb.addr.to_lpm makes it)."""
    cdef xlb_lpm_key k
    plen = _uint(prefixlen, 32, "prefixlen")
    if plen > 128:
        raise ValueError(f"prefixlen={plen} is longer than 128 bits")
    memset(&k, 0, sizeof(k))
    k.prefixlen = plen
    _put(k.addr, _fixed(addr, 16, "addr"))
    return _out(&k, sizeof(k))


def unpack_lpm_key(data):
    cdef xlb_lpm_key k
    data = _as_bytes(data)
    memcpy(&k, _input(data, sizeof(k), "xlb_lpm_key"), sizeof(k))
    return {"prefixlen": k.prefixlen, "addr": _b(k.addr, 16)}


# -- struct xlb_src_range_key -----------------------------------------------------------

def pack_src_range_key(vip_id, prefixlen, addr):
    """struct xlb_src_range_key: one client prefix of VIP `vip_id` in xlb_source_ranges.
    `prefixlen` counts the VIP id's 32 bits too: 32 + the LPM-trie length of the address
    prefix (IPv4 as ::ffff:a.b.c.d with 96 + n; pyxlb.addr.to_lpm makes that part)."""
    cdef xlb_src_range_key k
    plen = _uint(prefixlen, 32, "prefixlen")
    if not 32 <= plen <= XLB_SRC_RANGE_PLEN_MAX:
        raise ValueError(f"prefixlen={plen} is outside 32..{XLB_SRC_RANGE_PLEN_MAX} (the VIP "
                         f"id's 32 bits, then up to 128 address bits)")
    memset(&k, 0, sizeof(k))
    k.prefixlen = plen
    k.vip_id = _uint(vip_id, 32, "vip_id")
    _put(k.addr, _fixed(addr, 16, "addr"))
    return _out(&k, sizeof(k))


def unpack_src_range_key(data):
    cdef xlb_src_range_key k
    data = _as_bytes(data)
    memcpy(&k, _input(data, sizeof(k), "xlb_src_range_key"), sizeof(k))
    return {"vip_id": k.vip_id, "prefixlen": k.prefixlen, "addr": _b(k.addr, 16)}


# -- struct xlb_config ------------------------------------------------------------------

def pack_config(seed=0, mtu=XLB_MTU_DEFAULT, flags=0, src4=bytes(4), src4_plen=0,
                src6=bytes(16), src6_plen=0, flow4_bits=0, flow4_seed=0, flow6_bits=0,
                flow_inserts4=0, flow_inserts6=0, chain_window=0):
    """struct xlb_config: flow-hash seed, MTU, CFG_* flags, outer source prefixes, the
    flow sets' geometry (the log2 of each table's number of sets, the seed of their set
    hash), each table's insertion limit per CPU and second (0: none), and the seconds
    a stateless VIP's ring slot remembers its previous owner (0: the default)."""
    cdef xlb_config c
    memset(&c, 0, sizeof(c))
    c.seed = _uint(seed, 32, "seed")
    c.mtu = _uint(mtu, 16, "mtu")
    c.flags = _uint(flags, 16, "flags")
    _put(c.src4, _fixed(src4, 4, "src4"))
    p4 = _uint(src4_plen, 8, "src4_plen")
    if p4 > 32:
        raise ValueError(f"src4_plen={p4} is longer than 32 bits")
    c.src4_plen = p4
    _put(c.src6, _fixed(src6, 16, "src6"))
    p6 = _uint(src6_plen, 8, "src6_plen")
    if p6 > 128:
        raise ValueError(f"src6_plen={p6} is longer than 128 bits")
    c.src6_plen = p6
    bits = _uint(flow4_bits, 8, "flow4_bits")
    if bits > 31:
        raise ValueError(f"flow4_bits={bits} is more than 31")
    c.flow4_bits = bits
    bits = _uint(flow6_bits, 8, "flow6_bits")
    if bits > 31:
        raise ValueError(f"flow6_bits={bits} is more than 31")
    c.flow6_bits = bits
    c.flow4_seed = _uint(flow4_seed, 32, "flow4_seed")
    c.flow_inserts4 = _uint(flow_inserts4, 32, "flow_inserts4")
    c.flow_inserts6 = _uint(flow_inserts6, 32, "flow_inserts6")
    c.chain_window = _uint(chain_window, 32, "chain_window")
    return _out(&c, sizeof(c))


def unpack_config(data):
    cdef xlb_config c
    data = _as_bytes(data)
    memcpy(&c, _input(data, sizeof(c), "xlb_config"), sizeof(c))
    return {"seed": c.seed, "mtu": c.mtu, "flags": c.flags, "src4": _b(c.src4, 4),
            "src4_plen": c.src4_plen, "src6": _b(c.src6, 16), "src6_plen": c.src6_plen,
            "flow4_bits": c.flow4_bits, "flow4_seed": c.flow4_seed,
            "flow6_bits": c.flow6_bits, "flow_inserts4": c.flow_inserts4,
            "flow_inserts6": c.flow_inserts6, "chain_window": c.chain_window}


# -- struct xlb_hc_key, struct xlb_hc_path ----------------------------------------------

def pack_hc_key(port, family):
    """struct xlb_hc_key: a health check socket's local port (host order) and family."""
    cdef xlb_hc_key k
    memset(&k, 0, sizeof(k))
    k.port = htons(<uint16_t>_uint(port, 16, "port"))
    k.family = _family(family)
    return _out(&k, sizeof(k))


def unpack_hc_key(data):
    cdef xlb_hc_key k
    data = _as_bytes(data)
    memcpy(&k, _input(data, sizeof(k), "xlb_hc_key"), sizeof(k))
    return {"port": ntohs(k.port), "family": k.family}


def pack_hc_path(vip, backend, outer_src, mode, node=bytes(16), dport=0):
    """struct xlb_hc_path: the VIP, the backend and the outer source (16-byte addresses of
    the key's family, IPv4 in the first 4; the outer source is all zero in L2 mode),
    MODE_IPIP or MODE_L2, and the check's own address and port (host order), both zero
    until the egress program learns them from the check's SYN."""
    cdef xlb_hc_path v
    memset(&v, 0, sizeof(v))
    _put(v.vip, _fixed(vip, 16, "vip"))
    _put(v.backend, _fixed(backend, 16, "backend"))
    _put(v.outer_src, _fixed(outer_src, 16, "outer_src"))
    _put(v.node, _fixed(node, 16, "node"))
    m = _uint(mode, 8, "mode")
    if m != XLB_MODE_IPIP and m != XLB_MODE_L2:
        raise ValueError(f"mode must be MODE_IPIP ({XLB_MODE_IPIP}) or MODE_L2 "
                         f"({XLB_MODE_L2}), not {mode!r}")
    v.mode = m
    v.dport = htons(<uint16_t>_uint(dport, 16, "dport"))
    return _out(&v, sizeof(v))


def unpack_hc_path(data):
    cdef xlb_hc_path v
    data = _as_bytes(data)
    memcpy(&v, _input(data, sizeof(v), "xlb_hc_path"), sizeof(v))
    return {"vip": _b(v.vip, 16), "backend": _b(v.backend, 16),
            "outer_src": _b(v.outer_src, 16), "node": _b(v.node, 16), "mode": v.mode,
            "dport": ntohs(v.dport)}


# -- scans over many keys (no Python object per entry) ----------------------------------

def vip_ports_on(keys, addr, family):
    """[(port, proto), ...] of the VIP keys in `keys` (contiguous struct xlb_vip_key, as
    Map.lookup_batch returns them) whose address is (`addr`, `family`); ports in host order.
    The scan runs in C: a Python object is made only for the matches."""
    cdef int fam = _family(family)
    cdef bytes a = _addr(addr, fam, "addr")
    cdef bytes buf = bytes(keys)
    cdef Py_ssize_t n = len(buf), i
    cdef const uint8_t *p = <const uint8_t *><const char *>buf
    cdef xlb_vip_key k
    if n % sizeof(xlb_vip_key):
        raise ValueError(f"keys buffer of {n} bytes is not a multiple of the "
                         f"{sizeof(xlb_vip_key)}-byte xlb_vip_key")
    found = []
    for i in range(0, n, sizeof(xlb_vip_key)):
        memcpy(&k, p + i, sizeof(k))
        if k.family == fam and memcmp(k.addr, <const char *>a, 16) == 0:
            found.append((ntohs(k.port), k.proto))
    return found
