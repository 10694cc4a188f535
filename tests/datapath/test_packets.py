"""The datapath's packet table: named frames through BPF_PROG_TEST_RUN.

Each row is one case of docs/datapath.md: a name, the input frame, the state (raw map
writes through the accessors of ``dp.tables``, with ids picked by the row, see raw.py; and
for some rows earlier packets), the XDP action expected,
the output frame expected, and the exact change of the global counters (``stats()``; every
counter not named must stay where it was). Some rows add a check of their own (flow
table, per-VIP and per-backend counters, the outer header taken apart).

Expected frames come from tests/datapath/packets.py, built with scapy from the input and
the spec alone; they are compared byte for byte. ``UNTOUCHED`` means the output must be the
input; a dropped frame's output is not looked at (``expect=None``).

Every row runs on an object as freshly loaded: one object per module, every map put back
and checked to hold what it held right after the load before each row (pristine.py:
a load costs about 0.6 s of verifier time, 240 rows would spend minutes there), so no row
sees another's flows or counters. Balancer rows start from ``world``:
the config (seed, outer source prefixes), every backend of ``P.BACKENDS`` active with a
cached next hop on ifindex 1; with no ctx, BPF_PROG_TEST_RUN's ingress is ifindex 1 (lo),
so that next hop means XDP_TX.

The FIB fallback (no cached next hop) is a second, smaller table at the end: it needs a
network namespace with routes and neighbours of its own.
"""

from __future__ import annotations

import ipaddress
import struct
import subprocess
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Tuple

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.datapath import Datapath, DecapPath
from pyxlb.netns import enter as enter_netns

from . import packets as P
from .pristine import Pristine
from .raw import raw_announce, raw_backend, raw_vip

PASS, TX, DROP, REDIRECT = _bpf.XDP_PASS, _bpf.XDP_TX, _bpf.XDP_DROP, _bpf.XDP_REDIRECT
ACTION_NAMES = {_bpf.XDP_ABORTED: "XDP_ABORTED", DROP: "XDP_DROP", PASS: "XDP_PASS",
                TX: "XDP_TX", REDIRECT: "XDP_REDIRECT"}
UNTOUCHED = "untouched"
# One packet needs no 1M-entry flow LRU nor 64K backends: smaller maps load faster.
MAP_SIZES = {"xlb_flowsets6": 1024, "xlb_flowsets4": 1024, "xlb_backends": 64, "xlb_nexthops": 64,
             "xlb_backend_stats": 64}

# the counters a row expects most often
MISS_TX = {"flow_miss": 1, "tx": 1}
HIT_TX = {"flow_hit": 1, "tx": 1}
MIDSTREAM_TX = {"flow_miss": 1, "flow_miss_midstream": 1, "tx": 1}
NOT_VIP = {"pass_not_vip": 1}
MALFORMED = {"pass_malformed": 1}
FRAGMENT = {"pass_fragment": 1}
LOCAL = {"flow_miss": 1, "pass_local": 1}
NO_BACKEND = {"flow_miss": 1, "drop_no_backend": 1}
UNSUPPORTED = {"flow_miss": 1, "drop_unsupported": 1}
DECAP = {"decap": 1}
REFUSED = {"decap_refused": 1}
SRC_REFUSED = {"drop_source_range": 1}
SR = L.VIP_SOURCE_RANGES


@dataclass(frozen=True)
class Case:
    name: str
    packet: bytes
    state: Tuple[Callable, ...]     # steps run on the loaded object, in order
    action: int
    expect: object                  # bytes, UNTOUCHED, or None (output not checked)
    stats: Dict[str, int]           # exact change of stats(); others must not move
    prog: str = "balancer"          # or "decap" (DecapPath)
    ingress: int = 0                # ctx ingress_ifindex; 0: no ctx (lo, ifindex 1)
    linear: Optional[int] = None    # bytes in the linear area, if fewer than the frame
    check: Optional[Callable] = None    # check(dp, output, case), after the rest


# -- state steps -------------------------------------------------------------------------------


def world(dp: Datapath) -> None:
    dp.tables.config.write(seed=P.SEED, src4=P.SRC4, src6=P.SRC6)
    for backend_id, addr in P.BACKENDS.items():
        raw_backend(dp, backend_id, addr)
        dp.tables.nexthops.put(backend_id, P.NEXTHOP_MAC, P.EGRESS_MAC, 1)


def config(**changes):
    """Rewrite the config record: the world's values with `changes`."""
    values = dict(seed=P.SEED, src4=P.SRC4, src6=P.SRC6)
    values.update(changes)
    return lambda dp: dp.tables.config.write(**values)


def slots(*backend_ids: int) -> list:
    """A RING_SIZE ring: one backend id everywhere, or exactly RING_SIZE of them."""
    if len(backend_ids) == 1:
        return list(backend_ids) * P.RING_SIZE
    assert len(backend_ids) == P.RING_SIZE
    return list(backend_ids)


def vip(addr: str, port: int = 80, proto: str = "tcp", *, mode: int = L.MODE_IPIP,
        backends: Sequence[int] = (1,), flags: int = 0, vip_id: int = 1, ring_id: int = 1,
        ring: bool = True):
    """A VIP with its own ring (`backends` as in slots()); ring=False installs none."""
    def step(dp):
        raw_vip(dp, addr, port, proto, vip_id=vip_id, ring_id=ring_id, ring_size=P.RING_SIZE,
                mode=mode, flags=flags)
        if ring:
            dp.tables.rings.put(ring_id, slots(*backends))
    return step


def ring(*backend_ids: int, ring_id: int = 1):
    return lambda dp: dp.tables.rings.put(ring_id, slots(*backend_ids))


def backend(backend_id: int, addr: Optional[str] = None, **kw):
    """Backend `backend_id` (P.BACKENDS' address unless given); keywords as raw_backend's."""
    return lambda dp: raw_backend(dp, backend_id, addr or P.BACKENDS[backend_id], **kw)


def gone(backend_id: int):
    return lambda dp: dp.tables.backends.free(backend_id)


def nexthop(backend_id: int, ifindex: int):
    return lambda dp: dp.tables.nexthops.put(backend_id, P.NEXTHOP_MAC, P.EGRESS_MAC, ifindex)


def send(frame: bytes, action: int = TX):
    """An earlier packet (it creates a flow, say), whose action is checked on the way."""
    def step(dp):
        got, _ = dp.run(frame)
        assert got == action, f"earlier packet: {ACTION_NAMES.get(got, got)}"
    return step


def local(addr: str):
    return lambda dp: dp.add_local_addr(addr)


def decap_source(prefix: str):
    return lambda dp: dp.tables.decap_sources.add(prefix)


def ranges(vip_id: int, *prefixes: str):
    """Client prefixes VIP `vip_id` admits (they count only with VIP_SOURCE_RANGES set)."""
    def step(dp):
        for prefix in prefixes:
            dp.tables.source_ranges.add(vip_id, prefix)
    return step


def announce(addr: str, ifindex: int = 0):
    return lambda dp: raw_announce(dp, addr, ifindex, P.ANNOUNCE_MAC)


def if_mac(ifindex: int, mac: str = P.LB_MAC):
    """Attach registers the interface's MAC: VIP frames for another MAC are not ours."""
    return lambda dp: dp.tables.if_macs.put(ifindex, mac)


def to_mac(frame: bytes, mac: str) -> bytes:
    """The frame addressed to another destination MAC."""
    return bytes.fromhex(mac.replace(":", "")) + frame[6:]


def d_vip(addr: str):
    return lambda dp: dp.add_vip(addr)


def d_source(prefix: str):
    return lambda dp: dp.add_source(prefix)


def d_check(on: bool = True):
    return lambda dp: dp.set_config(check_source=on)


# -- expectations and checks -------------------------------------------------------------------


def tunnelled(frame: bytes, backend_id: int, *, affinity: bool = False,
              flow_of: Optional[bytes] = None, addr: Optional[str] = None, **kw) -> bytes:
    """`frame` encapsulated to backend `backend_id`; the outer source and flow label come
    from the hash of `flow_of` (a client frame; default `frame` itself). Keywords go to
    P.encapsulated (other MACs or source prefixes)."""
    flow_hash = P.flow_hash(flow_of or frame, affinity=affinity)
    return P.encapsulated(frame, addr or P.BACKENDS[backend_id], flow_hash, **kw)


def _configured_prefix(dp, family: int) -> str:
    cfg = dp.config()
    if family == 4:
        return f"{ipaddress.IPv4Address(cfg['src4'])}/{cfg['src4_plen']}"
    return f"{ipaddress.IPv6Address(cfg['src6'])}/{cfg['src6_plen']}"


def outer_sane(dp, out: bytes, case: Case) -> None:
    """The encapsulated output taken apart on its own (a second opinion to the byte
    comparison, with sharper messages): lengths, checksum, TTL / hop limit, outer source in
    the prefix configured in xlb_config, inner packet byte for byte."""
    inner = P.ip_packet(case.packet)
    off = P.l3_offset(out)
    version = out[off] >> 4
    if version == 4:
        hdr = out[off:off + 20]
        outer = IP(hdr)
        assert outer.ihl == 5 and outer.len == 20 + len(inner), "outer IPv4 length"
        assert outer.ttl == L.TTL and outer.proto == 4
        # a header with a right checksum sums (one's complement) to 0xffff
        total = sum(struct.unpack("!10H", hdr))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        assert total == 0xFFFF, "outer IPv4 checksum does not verify"
        prefix = _configured_prefix(dp, 4)
        assert P.in_prefix(outer.src, prefix), f"outer source {outer.src} not in {prefix}"
        payload = out[off + 20:off + 20 + len(inner)]
    else:
        outer = IPv6(out[off:off + 40])
        assert outer.plen == len(inner) and outer.hlim == L.TTL, "outer IPv6 length / hops"
        assert outer.nh == (4 if inner[0] >> 4 == 4 else 41)
        prefix = _configured_prefix(dp, 6)
        assert P.in_prefix(outer.src, prefix), f"outer source {outer.src} not in {prefix}"
        payload = out[off + 40:off + 40 + len(inner)]
    assert payload == inner, "the inner packet was changed"


def counted(vip_id: int, backend_id: Optional[int], packets: int, size: int, new_flows: int):
    """The per-VIP (and per-backend) counters after the row: packets, bytes (IP length),
    new flows."""
    want = {"packets": packets, "bytes": packets * size, "new_flows": new_flows}

    def check(dp, out, case):
        assert dp.vip_counters(vip_id) == want, f"VIP {vip_id} counters"
        if backend_id is not None:
            assert dp.backend_counters(backend_id) == want, f"backend {backend_id} counters"
    return check


def flows_are(*expected: Tuple[int, int, int]):
    """The flow table holds exactly these (source port, backend id, gen)."""
    def check(dp, out, case):
        got = sorted((k["sport"], v["backend_id"], v["gen"]) for k, v in dp.flows())
        assert got == sorted(expected), f"flow table: {dp.flows()}"
    return check


def range_drops(vip_id: int, n: int):
    """VIP `vip_id` counted `n` packets refused by source range."""
    def check(dp, out, case):
        assert dp.vip_range_drops(vip_id) == n, f"VIP {vip_id} source-range drops"
    return check


def refused(vip_id: int):
    """One packet refused by source range: counted for the VIP as refused, not in its
    traffic counters, and no flow (the check comes before the flow table)."""
    return all_of(range_drops(vip_id, 1), counted(vip_id, None, 0, 0, 0), flows_are())


def all_of(*checks):
    def check(dp, out, case):
        for c in checks:
            c(dp, out, case)
    return check


def ip_len(frame: bytes) -> int:
    return len(P.ip_packet(frame))


# -- the frames the rows share -----------------------------------------------------------------

T4 = P.tcp4()
U4 = P.udp4()
T6 = P.tcp6()
U6 = P.udp6()
T4_OTHER = P.tcp4(sport=P.CLIENT_PORT + 1)
T4_ACK = P.tcp4(tcp_flags="A")          # the same flow as T4, mid-connection
T6_RST = P.tcp6(tcp_flags="R")
RING7 = (1, 2, 3, 4, 5, 6, 7)


def _affinity_pair():
    """Two connections of one client: the second's 5-tuple hash picks another slot than
    the client's affinity hash does, so only ClientIP affinity puts it where the first went."""
    first = P.tcp4(sport=P.CLIENT_PORT)
    client_slot = P.ring_slot(first, affinity=True)
    for sport in range(P.CLIENT_PORT + 1, P.CLIENT_PORT + 100):
        second = P.tcp4(sport=sport)
        if P.ring_slot(second) != client_slot:
            return first, second, RING7[client_slot]
    raise AssertionError("no port gives another slot")


AFF_FIRST, AFF_SECOND, AFF_BACKEND = _affinity_pair()

ICMP4_STEER = P.frag_needed(P.reply_quote4())
ICMP6_STEER = P.packet_too_big(P.reply_quote6())
# ICMP errors too big to tunnel at a small MTU: 576 bytes (20 + 8 + 548) at mtu 576, and a
# 1,280-byte "packet too big" (40 + 8 + 1232) at mtu 1300
FRAG_576 = P.frag_needed(P.reply_quote4(size=548), mtu=556, flags="DF")
FRAG_576_NO_DF = P.frag_needed(P.reply_quote4(size=548), mtu=556)
PTB_1280 = P.packet_too_big(P.reply_quote6(size=1232), mtu=1280)
# quotes that end before the ports, the ports (VIP port 80, the client's port) in bytes
# after the IP packet; and a quote that ends inside the quoted IPv4 header
PORTS_AFTER = struct.pack("!HH", 80, P.CLIENT_PORT) + bytes(4)
ICMP4_QUOTE_NO_PORTS = P.with_trailer(P.frag_needed(P.reply_quote4(size=20)), PORTS_AFTER)
ICMP4_QUOTE_CUT_HEADER = P.with_trailer(P.frag_needed(P.reply_quote4(size=12)),
                                        P.reply_quote4()[12:])
ICMP6_QUOTE_NO_PORTS = P.with_trailer(P.packet_too_big(P.reply_quote6(size=40)), PORTS_AFTER)
ICMP6_QUOTE_CUT_HEADER = P.with_trailer(P.packet_too_big(P.reply_quote6(size=24)),
                                        P.reply_quote6()[24:])

BIG4_DF = P.big(P.tcp4, 1481, flags="DF")           # 1481 + 20 > 1500
FIT4_DF = P.big(P.tcp4, 1480, flags="DF")           # 1480 + 20 == 1500: still fits
BIG4 = P.big(P.tcp4, 1481)
BIG4_OPTS = P.big(P.tcp4, 1481, flags="DF", options=P.ipv4_options())
BIG4_VLAN = P.big(P.tcp4, 1481, flags="DF", vlan=42)
BIG4_IN6 = P.big(P.tcp4, 1461, flags="DF")          # 1461 + 40 > 1500
BIG6 = P.big(P.tcp6, 1461)
BIG6_SMALL_MTU = P.big(P.tcp6, 1270)                # 1270 + 40 > 1300

ARP_REQ = P.arp_request()
NS = P.neighbour_solicit()

TUN4 = P.tunnel4(T4)
TUN6 = P.tunnel6(T6)
TUN4IN6 = P.tunnel6(T4)

PADDED_U4 = P.with_padding(P.udp4(payload=b"x"))


EXT_CUT = P.ext_header_cut()
EXT_TOO_LONG = P.ext_header_too_long()
QINQ = P.two_vlan_tags()
TUN_INNER_SHORT = P.tunnel4_inner_short(T4)


# -- the table -----------------------------------------------------------------------------------

CASES = [
    # forwarding: every family pair and protocol, by mode
    Case("ipip_v4_tcp", T4, (vip(P.VIP4),), TX, tunnelled(T4, 1), MISS_TX,
         check=all_of(outer_sane, counted(1, 1, 1, ip_len(T4), 1),
                      flows_are((P.CLIENT_PORT, 1, 1)))),
    Case("ipip_v4_udp", U4, (vip(P.VIP4, 53, "udp"),), TX, tunnelled(U4, 1), MISS_TX,
         check=outer_sane),
    Case("ip6ip6_tcp", T6, (vip(P.VIP6, backends=(11,)),), TX, tunnelled(T6, 11), MISS_TX,
         check=all_of(outer_sane, counted(1, 11, 1, ip_len(T6), 1))),
    Case("ip6ip6_udp", U6, (vip(P.VIP6, 53, "udp", backends=(11,)),), TX, tunnelled(U6, 11),
         MISS_TX, check=outer_sane),
    Case("4in6_tcp", T4, (vip(P.VIP4, backends=(12,)),), TX, tunnelled(T4, 12), MISS_TX,
         check=outer_sane),
    Case("4in6_udp", U4, (vip(P.VIP4, 53, "udp", backends=(12,)),), TX, tunnelled(U4, 12),
         MISS_TX, check=outer_sane),
    Case("l2_v4_tcp", T4, (vip(P.VIP4, mode=L.MODE_L2),), TX, P.rewritten_macs(T4), MISS_TX),
    Case("l2_v4_udp", U4, (vip(P.VIP4, 53, "udp", mode=L.MODE_L2),), TX,
         P.rewritten_macs(U4), MISS_TX),
    Case("l2_v6_tcp", T6, (vip(P.VIP6, mode=L.MODE_L2, backends=(11,)),), TX,
         P.rewritten_macs(T6), MISS_TX),
    Case("l2_v6_udp", U6, (vip(P.VIP6, 53, "udp", mode=L.MODE_L2, backends=(11,)),), TX,
         P.rewritten_macs(U6), MISS_TX),
    Case("local_v4_tcp", T4, (vip(P.VIP4, mode=L.MODE_LOCAL),), PASS, UNTOUCHED, LOCAL,
         check=counted(1, 1, 1, ip_len(T4), 1)),
    Case("local_v4_udp", U4, (vip(P.VIP4, 53, "udp", mode=L.MODE_LOCAL),), PASS, UNTOUCHED,
         LOCAL),
    Case("local_v6_tcp", T6, (vip(P.VIP6, mode=L.MODE_LOCAL, backends=(11,)),), PASS,
         UNTOUCHED, LOCAL),
    Case("local_v6_udp", U6, (vip(P.VIP6, 53, "udp", mode=L.MODE_LOCAL, backends=(11,)),),
         PASS, UNTOUCHED, LOCAL),
    Case("local_backend_ipip_vip", T4,
         (backend(1, local=True), vip(P.VIP4)), PASS, UNTOUCHED, LOCAL),
    Case("local_backend_l2_vip_v6", T6,
         (backend(11, local=True), vip(P.VIP6, mode=L.MODE_L2, backends=(11,))),
         PASS, UNTOUCHED, LOCAL),
    Case("ipip_tos_and_df_copied", P.tcp4(tos=0xB8, flags="DF"), (vip(P.VIP4),), TX,
         tunnelled(P.tcp4(tos=0xB8, flags="DF"), 1), MISS_TX, check=outer_sane),
    Case("ip6ip6_traffic_class_copied", P.tcp6(tc=0xB8, fl=0xABCDE),
         (vip(P.VIP6, backends=(11,)),), TX,
         tunnelled(P.tcp6(tc=0xB8, fl=0xABCDE), 11), MISS_TX, check=outer_sane),
    Case("4in6_tos_copied", P.tcp4(tos=0x28), (vip(P.VIP4, backends=(12,)),), TX,
         tunnelled(P.tcp4(tos=0x28), 12), MISS_TX, check=outer_sane),
    Case("ipip_redirect_other_ifindex", T4, (vip(P.VIP4), nexthop(1, 7)), REDIRECT,
         tunnelled(T4, 1), {"flow_miss": 1, "redirect": 1}),
    Case("ip6ip6_redirect_other_ifindex", T6, (vip(P.VIP6, backends=(11,)), nexthop(11, 7)),
         REDIRECT, tunnelled(T6, 11), {"flow_miss": 1, "redirect": 1}),
    Case("l2_redirect_other_ifindex", T4, (vip(P.VIP4, mode=L.MODE_L2), nexthop(1, 7)),
         REDIRECT, P.rewritten_macs(T4), {"flow_miss": 1, "redirect": 1}),
    Case("vlan_ipip_tag_kept", P.tcp4(vlan=100), (vip(P.VIP4),), TX,
         tunnelled(P.tcp4(vlan=100), 1), MISS_TX, check=outer_sane),
    Case("vlan_ip6ip6_tag_kept", P.udp6(vlan=100), (vip(P.VIP6, 53, "udp", backends=(11,)),),
         TX, tunnelled(P.udp6(vlan=100), 11), MISS_TX, check=outer_sane),
    Case("vlan_l2_tag_kept", P.tcp6(vlan=100), (vip(P.VIP6, mode=L.MODE_L2, backends=(11,)),),
         TX, P.rewritten_macs(P.tcp6(vlan=100)), MISS_TX),
    Case("vlan_8021ad_ipip_tag_kept", P.tcp4(vlan=300, service_tag=True), (vip(P.VIP4),), TX,
         tunnelled(P.tcp4(vlan=300, service_tag=True), 1), MISS_TX, check=outer_sane),
    Case("ipv4_options_balanced", P.tcp4(options=P.ipv4_options()), (vip(P.VIP4),), TX,
         tunnelled(P.tcp4(options=P.ipv4_options()), 1), MISS_TX, check=outer_sane),
    Case("ipv6_hop_by_hop_balanced", P.tcp6(ext=[P.hop_by_hop()]),
         (vip(P.VIP6, backends=(11,)),), TX, tunnelled(P.tcp6(ext=[P.hop_by_hop()]), 11),
         MISS_TX, check=outer_sane),
    Case("ipv6_dest_opts_balanced", P.udp6(ext=[P.dest_opts()]),
         (vip(P.VIP6, 53, "udp", backends=(11,)),), TX,
         tunnelled(P.udp6(ext=[P.dest_opts()]), 11), MISS_TX, check=outer_sane),
    Case("ipv6_routing_balanced", P.tcp6(ext=[P.routing()]), (vip(P.VIP6, backends=(11,)),),
         TX, tunnelled(P.tcp6(ext=[P.routing()]), 11), MISS_TX, check=outer_sane),
    Case("ipv6_four_ext_headers_balanced",
         P.tcp6(ext=[P.hop_by_hop(), P.dest_opts(), P.routing(), P.dest_opts()]),
         (vip(P.VIP6, backends=(11,)),), TX,
         tunnelled(P.tcp6(ext=[P.hop_by_hop(), P.dest_opts(), P.routing(), P.dest_opts()]),
                   11), MISS_TX, check=outer_sane),
    # more than XLB_IPV6_EXT_MAX extension headers: the transport header is not reached,
    # so the packet is malformed to us and passed, never balanced
    Case("ipv6_five_ext_headers_not_balanced",
         P.tcp6(ext=[P.hop_by_hop(), P.dest_opts(), P.routing(), P.dest_opts(),
                     P.dest_opts()]),
         (vip(P.VIP6, backends=(11,)),), PASS, UNTOUCHED, MALFORMED),
    # ... and so is a fragment header behind four others
    Case("ipv6_fragment_after_four_ext_headers",
         P.udp6(ext=[P.hop_by_hop(), P.dest_opts(), P.routing(), P.dest_opts(),
                     P.fragment6(0, more=True)]),
         (vip(P.VIP6, 53, "udp", backends=(11,)),), PASS, UNTOUCHED, MALFORMED),
    Case("padded_frame_outer_counts_ip_length", PADDED_U4, (vip(P.VIP4, 53, "udp"),), TX,
         tunnelled(PADDED_U4, 1), MISS_TX,
         check=all_of(outer_sane, counted(1, 1, 1, ip_len(PADDED_U4), 1))),
    Case("outer_src4_prefix_24", T4, (config(src4="10.255.7.0/24"), vip(P.VIP4)), TX,
         tunnelled(T4, 1, src4="10.255.7.0/24"), MISS_TX, check=outer_sane),
    Case("outer_src4_prefix_32", T4, (config(src4="10.255.7.7/32"), vip(P.VIP4)), TX,
         tunnelled(T4, 1, src4="10.255.7.7/32"), MISS_TX, check=outer_sane),
    Case("outer_src6_prefix_112", T6, (config(src6="fd00:ff::7:0/112"), vip(P.VIP6,
         backends=(11,))), TX, tunnelled(T6, 11, src6="fd00:ff::7:0/112"), MISS_TX,
         check=outer_sane),
    Case("outer_src6_prefix_128", T4, (config(src6="fd00:ff::7:7/128"), vip(P.VIP4,
         backends=(12,))), TX, tunnelled(T4, 12, src6="fd00:ff::7:7/128"), MISS_TX,
         check=outer_sane),
    Case("v6_client_v4_backend_unsupported", T6, (vip(P.VIP6, backends=(1,)),), DROP, None,
         UNSUPPORTED),
    Case("ipip_no_src4_prefix_unsupported", T4, (config(src4=None), vip(P.VIP4)), DROP, None,
         UNSUPPORTED),
    Case("ip6ip6_no_src6_prefix_unsupported", T6,
         (config(src6=None), vip(P.VIP6, backends=(11,))), DROP, None, UNSUPPORTED),
    Case("4in6_no_src6_prefix_unsupported", T4,
         (config(src6=None), vip(P.VIP4, backends=(12,))), DROP, None, UNSUPPORTED),

    # not for a VIP
    Case("not_vip_v4", P.tcp4(dst="10.0.0.99"), (vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP),
    Case("not_vip_v6", P.tcp6(dst="fd00::99"), (vip(P.VIP6, backends=(11,)),), PASS,
         UNTOUCHED, NOT_VIP),
    Case("not_ip_ethertype", P.non_ip(), (vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP),
    Case("vip_address_other_port", P.tcp4(dport=443), (vip(P.VIP4),), PASS, UNTOUCHED,
         NOT_VIP),
    Case("vip_address_other_l4_protocol", P.udp4(dport=80), (vip(P.VIP4),), PASS, UNTOUCHED,
         NOT_VIP),
    Case("vip_address_gre", P.other4(47), (vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP),
    Case("vip_address_icmp_echo", P.icmp4_echo(), (vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP),
    Case("vip_address_icmp6_echo", P.icmp6_echo(), (vip(P.VIP6, backends=(11,)),), PASS,
         UNTOUCHED, NOT_VIP),
    Case("two_vlan_tags_not_read", QINQ, (vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP),

    # port-0 VIPs
    Case("port0_vip_any_port_v4", P.tcp4(dport=8443), (vip(P.VIP4, 0),), TX,
         tunnelled(P.tcp4(dport=8443), 1), MISS_TX),
    Case("port0_vip_any_port_v6_udp", P.udp6(dport=5353),
         (vip(P.VIP6, 0, "udp", backends=(11,)),), TX, tunnelled(P.udp6(dport=5353), 11),
         MISS_TX),
    Case("port0_vip_other_protocol", P.udp4(dport=8443), (vip(P.VIP4, 0),), PASS, UNTOUCHED,
         NOT_VIP),
    Case("exact_port_before_port0", T4,
         (vip(P.VIP4, 80, backends=(1,)), vip(P.VIP4, 0, backends=(2,), vip_id=2, ring_id=2)),
         TX, tunnelled(T4, 1), MISS_TX, check=counted(1, 1, 1, ip_len(T4), 1)),
    Case("port0_beside_exact_port", P.tcp4(dport=81),
         (vip(P.VIP4, 80, backends=(1,)), vip(P.VIP4, 0, backends=(2,), vip_id=2, ring_id=2)),
         TX, tunnelled(P.tcp4(dport=81), 2), MISS_TX,
         check=counted(2, 2, 1, ip_len(P.tcp4(dport=81)), 1)),

    # source ranges (Kubernetes' loadBalancerSourceRanges): P.CLIENT4 is 198.51.100.1,
    # P.CLIENT6 2001:db8:1::1
    Case("src_range_v4_admitted", T4, (vip(P.VIP4, flags=SR), ranges(1, "198.51.100.0/24")),
         TX, tunnelled(T4, 1), MISS_TX,
         check=all_of(outer_sane, counted(1, 1, 1, ip_len(T4), 1), range_drops(1, 0))),
    Case("src_range_v4_refused", T4, (vip(P.VIP4, flags=SR), ranges(1, "203.0.113.0/24")),
         DROP, None, SRC_REFUSED, check=refused(1)),
    Case("src_range_v4_udp_refused", U4,
         (vip(P.VIP4, 53, "udp", flags=SR), ranges(1, "203.0.113.0/24")), DROP, None,
         SRC_REFUSED, check=refused(1)),
    Case("src_range_v6_admitted", T6,
         (vip(P.VIP6, backends=(11,), flags=SR), ranges(1, "2001:db8:1::/48")), TX,
         tunnelled(T6, 11), MISS_TX, check=all_of(outer_sane, range_drops(1, 0))),
    Case("src_range_v6_refused", T6,
         (vip(P.VIP6, backends=(11,), flags=SR), ranges(1, "2001:db8:2::/48")), DROP, None,
         SRC_REFUSED, check=refused(1)),
    # without the flag the trie is not consulted, whatever it holds for the VIP's id
    Case("src_range_unflagged_vip_admits_all", T4,
         (vip(P.VIP4), ranges(1, "203.0.113.0/24")), TX, tunnelled(T4, 1), MISS_TX,
         check=range_drops(1, 0)),
    Case("src_range_flag_without_entries_refuses_all", T4, (vip(P.VIP4, flags=SR),), DROP,
         None, SRC_REFUSED, check=refused(1)),
    Case("src_range_port0_vip_admitted", P.tcp4(dport=8443),
         (vip(P.VIP4, 0, flags=SR), ranges(1, "198.51.100.1/32")), TX,
         tunnelled(P.tcp4(dport=8443), 1), MISS_TX),
    Case("src_range_port0_vip_refused", P.tcp4(dport=8443),
         (vip(P.VIP4, 0, flags=SR), ranges(1, "198.51.100.2/32")), DROP, None, SRC_REFUSED,
         check=refused(1)),
    # nested: the longest prefix holding the client answers, and any answer admits
    Case("src_range_nested_outer_admits", T4,
         (vip(P.VIP4, flags=SR), ranges(1, "198.51.0.0/16", "198.51.100.128/25")), TX,
         tunnelled(T4, 1), MISS_TX),
    Case("src_range_nested_inner_admits", P.tcp4(src="198.51.100.200"),
         (vip(P.VIP4, flags=SR), ranges(1, "198.51.0.0/16", "198.51.100.128/25")), TX,
         tunnelled(P.tcp4(src="198.51.100.200"), 1), MISS_TX),
    Case("src_range_v6_nested_inner_admits", T6,
         (vip(P.VIP6, backends=(11,), flags=SR), ranges(1, "2001:db8::/32", "2001:db8:1::/64")),
         TX, tunnelled(T6, 11), MISS_TX),
    Case("src_range_neighbours_refused", T4,
         (vip(P.VIP4, flags=SR), ranges(1, "198.51.100.128/25", "198.51.100.64/26",
                                        "198.51.101.0/24", "198.51.100.0/32")),
         DROP, None, SRC_REFUSED, check=refused(1)),
    Case("src_range_v4_slash0_admits_all", P.tcp4(src="203.0.113.77"),
         (vip(P.VIP4, flags=SR), ranges(1, "0.0.0.0/0")), TX,
         tunnelled(P.tcp4(src="203.0.113.77"), 1), MISS_TX),
    Case("src_range_v6_slash0_admits_all", P.tcp6(src="2001:db8:ee::7"),
         (vip(P.VIP6, backends=(11,), flags=SR), ranges(1, "::/0")), TX,
         tunnelled(P.tcp6(src="2001:db8:ee::7"), 11), MISS_TX),
    Case("src_range_v4_slash32_exact", T4, (vip(P.VIP4, flags=SR), ranges(1, "198.51.100.1/32")),
         TX, tunnelled(T4, 1), MISS_TX),
    Case("src_range_v6_slash128_exact", T6,
         (vip(P.VIP6, backends=(11,), flags=SR), ranges(1, "2001:db8:1::1/128")), TX,
         tunnelled(T6, 11), MISS_TX),
    Case("src_range_v6_slash128_neighbour_refused", T6,
         (vip(P.VIP6, backends=(11,), flags=SR), ranges(1, "2001:db8:1::/128",
                                                       "2001:db8:1::2/127")),
         DROP, None, SRC_REFUSED, check=refused(1)),
    # the VIP id leads the key: a prefix of one VIP admits nobody to another
    Case("src_range_of_other_vip_does_not_admit", T4,
         (vip(P.VIP4, 80, flags=SR), ranges(1, "203.0.113.0/24"),
          vip(P.VIP4, 443, backends=(2,), vip_id=2, ring_id=2, flags=SR),
          ranges(2, "198.51.100.0/24", "0.0.0.0/0")),
         DROP, None, SRC_REFUSED, check=all_of(refused(1), range_drops(2, 0))),
    Case("src_range_other_family_vip_does_not_admit", T4,
         (vip(P.VIP4, flags=SR), vip(P.VIP6, backends=(11,), vip_id=2, ring_id=2, flags=SR),
          ranges(2, "::/0", "::ffff:0:0/96")),
         DROP, None, SRC_REFUSED, check=refused(1)),
    Case("src_range_refused_in_local_mode", T4,
         (vip(P.VIP4, mode=L.MODE_LOCAL, flags=SR), ranges(1, "203.0.113.0/24")), DROP, None,
         SRC_REFUSED, check=refused(1)),
    Case("src_range_refused_with_affinity_no_flow", AFF_SECOND,
         (vip(P.VIP4, flags=SR | L.VIP_AFFINITY_SRC), ranges(1, "203.0.113.0/24")), DROP,
         None, SRC_REFUSED, check=refused(1)),
    # checked before the flow table: a client whose range went keeps no established flow
    Case("src_range_refused_despite_established_flow", T4,
         (vip(P.VIP4), send(T4), vip(P.VIP4, flags=SR, ring=False),
          ranges(1, "203.0.113.0/24")),
         DROP, None, SRC_REFUSED,
         check=all_of(range_drops(1, 1), counted(1, 1, 1, ip_len(T4), 1),
                      flows_are((P.CLIENT_PORT, 1, 1)))),
    # ICMP errors about VIP flows (from routers on the path) and ARP/NDP are not filtered
    Case("src_range_icmp4_steering_not_filtered", ICMP4_STEER,
         (vip(P.VIP4, flags=SR), ranges(1, "203.0.113.0/24")), TX,
         tunnelled(ICMP4_STEER, 1, flow_of=T4), {"flow_miss": 1, "icmp_steered": 1, "tx": 1},
         check=range_drops(1, 0)),
    Case("src_range_icmp6_steering_not_filtered", ICMP6_STEER,
         (vip(P.VIP6, backends=(11,), flags=SR),), TX,
         tunnelled(ICMP6_STEER, 11, flow_of=T6), {"flow_miss": 1, "icmp_steered": 1, "tx": 1}),
    Case("src_range_arp_not_filtered", ARP_REQ, (vip(P.VIP4, flags=SR), announce(P.VIP4)), TX,
         P.arp_reply(ARP_REQ), {"arp_reply": 1}),
    Case("src_range_ns_not_filtered", NS,
         (vip(P.VIP6, backends=(11,), flags=SR), announce(P.VIP6)), TX,
         P.neighbour_advert(NS), {"ndp_reply": 1}),

    # malformed and truncated: passed untouched, never balanced
    # BPF_PROG_TEST_RUN refuses frames under 14 bytes, but (Linux 6.18 here) takes a ctx
    # whose data_end is below the data size: the program then sees 13 linear bytes and the
    # rest sits in a fragment it cannot read. Older kernels answer EINVAL: a loud failure.
    Case("truncated_ethernet", T4, (vip(P.VIP4),), PASS, UNTOUCHED, MALFORMED, linear=13),
    Case("truncated_vlan_tag", P.tcp4(vlan=5)[:16], (vip(P.VIP4),), PASS, UNTOUCHED,
         MALFORMED),
    Case("truncated_ipv4_header", T4[:14 + 19], (vip(P.VIP4),), PASS, UNTOUCHED, MALFORMED),
    Case("truncated_ipv4_options", P.tcp4(options=P.ipv4_options())[:14 + 22],
         (vip(P.VIP4),), PASS, UNTOUCHED, MALFORMED),
    Case("ipv4_tot_len_beyond_frame", P.tcp4(len=200), (vip(P.VIP4),), PASS, UNTOUCHED,
         MALFORMED),
    Case("ipv4_tot_len_below_header", P.tcp4(len=16), (vip(P.VIP4),), PASS, UNTOUCHED,
         MALFORMED),
    Case("ipv4_tot_len_below_options", P.tcp4(options=P.ipv4_options(), len=20),
         (vip(P.VIP4),), PASS, UNTOUCHED, MALFORMED),
    Case("ipv4_ihl_below_5", P.tcp4(ihl=4), (vip(P.VIP4),), PASS, UNTOUCHED, MALFORMED),
    Case("ipv4_bad_version", P.tcp4(version=5), (vip(P.VIP4),), PASS, UNTOUCHED, MALFORMED),
    Case("ipv6_bad_version", P.tcp6(version=4), (vip(P.VIP6, backends=(11,)),), PASS,
         UNTOUCHED, MALFORMED),
    Case("truncated_ipv6_header", T6[:14 + 39], (vip(P.VIP6, backends=(11,)),), PASS,
         UNTOUCHED, MALFORMED),
    Case("ipv6_payload_len_beyond_frame", P.tcp6(plen=500), (vip(P.VIP6, backends=(11,)),),
         PASS, UNTOUCHED, MALFORMED),
    Case("truncated_ipv6_ext_header", EXT_CUT, (vip(P.VIP6, backends=(11,)),), PASS,
         UNTOUCHED, MALFORMED),
    Case("ipv6_ext_header_beyond_packet", EXT_TOO_LONG, (vip(P.VIP6, backends=(11,)),), PASS,
         UNTOUCHED, MALFORMED),
    Case("truncated_tcp_v4", P.tcp4(payload=b"", len=32)[:14 + 32], (vip(P.VIP4),), PASS,
         UNTOUCHED, MALFORMED),
    Case("truncated_udp_v4", P.udp4(payload=b"", len=26)[:14 + 26],
         (vip(P.VIP4, 53, "udp"),), PASS, UNTOUCHED, MALFORMED),
    Case("truncated_tcp_v6", P.tcp6(payload=b"", plen=12)[:14 + 52],
         (vip(P.VIP6, backends=(11,)),), PASS, UNTOUCHED, MALFORMED),
    Case("truncated_udp_v6", P.udp6(payload=b"", plen=6)[:14 + 46],
         (vip(P.VIP6, 53, "udp", backends=(11,)),), PASS, UNTOUCHED, MALFORMED),
    # the whole TCP header is in the frame, but not inside the IP packet's tot_len
    Case("tcp_header_beyond_tot_len", P.tcp4(payload=b"", len=30), (vip(P.VIP4),), PASS,
         UNTOUCHED, MALFORMED),
    Case("truncated_arp", ARP_REQ[:14 + 20], (announce(P.VIP4),), PASS, UNTOUCHED, MALFORMED),

    # fragments to a VIP: never balanced
    Case("fragment_v4_more_fragments", P.udp4(flags="MF"), (vip(P.VIP4, 53, "udp"),), PASS,
         UNTOUCHED, FRAGMENT),
    Case("fragment_v4_offset", P.udp4(frag=100), (vip(P.VIP4, 53, "udp"),), PASS, UNTOUCHED,
         FRAGMENT),
    Case("fragment_v6_first", P.udp6(ext=[P.fragment6(0, more=True)]),
         (vip(P.VIP6, 53, "udp", backends=(11,)),), PASS, UNTOUCHED, FRAGMENT),
    Case("fragment_v6_later", P.udp6(ext=[P.fragment6(100)]),
         (vip(P.VIP6, 53, "udp", backends=(11,)),), PASS, UNTOUCHED, FRAGMENT),
    Case("fragment_v6_atomic", P.udp6(ext=[P.fragment6(0)]),
         (vip(P.VIP6, 53, "udp", backends=(11,)),), PASS, UNTOUCHED, FRAGMENT),
    Case("fragment_v4_not_vip", P.udp4(dst="10.0.0.99", flags="MF"), (vip(P.VIP4, 53, "udp"),),
         PASS, UNTOUCHED, NOT_VIP),

    # the ring and the flow table
    Case("ring_slot_is_hash_mod_size", T4, (vip(P.VIP4, backends=RING7),), TX,
         tunnelled(T4, RING7[P.ring_slot(T4)]), MISS_TX),
    Case("flow_sticks_after_ring_swap", T4, (vip(P.VIP4), send(T4), ring(2)), TX,
         tunnelled(T4, 1), HIT_TX, check=counted(1, 1, 2, ip_len(T4), 1)),
    Case("new_flow_follows_new_ring", T4_OTHER, (vip(P.VIP4), send(T4), ring(2)), TX,
         tunnelled(T4_OTHER, 2), MISS_TX),
    Case("no_flow_table_follows_new_ring", T4,
         (vip(P.VIP4, flags=L.VIP_NO_FLOW_TABLE), send(T4), ring(2)), TX, tunnelled(T4, 2),
         {"tx": 1}, check=flows_are()),
    Case("draining_backend_keeps_its_flow", T4,
         (vip(P.VIP4), send(T4), backend(1, state=L.BACKEND_DRAINING), ring(2)), TX,
         tunnelled(T4, 1), HIT_TX),
    Case("draining_backend_gets_no_new_flow", T4_OTHER,
         (vip(P.VIP4), send(T4), backend(1, state=L.BACKEND_DRAINING), ring(2)), TX,
         tunnelled(T4_OTHER, 2), MISS_TX),
    Case("gone_backend_flow_rehashed", T4, (vip(P.VIP4), send(T4), gone(1), ring(2)), TX,
         tunnelled(T4, 2), {"flow_stale": 1, "tx": 1}, check=flows_are((P.CLIENT_PORT, 2, 1))),
    Case("reused_backend_id_flow_rehashed", T4,
         (vip(P.VIP4), send(T4), backend(1, "10.1.0.9", gen=2)), TX,
         tunnelled(T4, 1, addr="10.1.0.9"), {"flow_stale": 1, "tx": 1},
         check=flows_are((P.CLIENT_PORT, 1, 2))),
    # a TCP segment without SYN that finds no flow: a connection this table did not know
    Case("midstream_miss_counted_v4", T4_ACK, (vip(P.VIP4),), TX, tunnelled(T4_ACK, 1),
         MIDSTREAM_TX, check=flows_are((P.CLIENT_PORT, 1, 1))),
    Case("midstream_miss_counted_v6", T6_RST, (vip(P.VIP6, backends=(11,)),), TX,
         tunnelled(T6_RST, 11), MIDSTREAM_TX),
    Case("midstream_hit_not_counted", T4_ACK, (vip(P.VIP4), send(T4)), TX,
         tunnelled(T4_ACK, 1), HIT_TX),
    Case("midstream_stale_not_counted", T4_ACK, (vip(P.VIP4), send(T4), gone(1), ring(2)),
         TX, tunnelled(T4_ACK, 2), {"flow_stale": 1, "tx": 1}),
    Case("midstream_no_flow_table_not_counted", T4_ACK,
         (vip(P.VIP4, flags=L.VIP_NO_FLOW_TABLE),), TX, tunnelled(T4_ACK, 1), {"tx": 1}),
    Case("midstream_miss_no_backend_counted", T4_ACK,
         (vip(P.VIP4, backends=(L.RING_EMPTY,)),), DROP, None,
         {**NO_BACKEND, "flow_miss_midstream": 1}),
    Case("affinity_same_client_other_port", AFF_SECOND,
         (vip(P.VIP4, backends=RING7, flags=L.VIP_AFFINITY_SRC), send(AFF_FIRST)), TX,
         tunnelled(AFF_SECOND, AFF_BACKEND, affinity=True), HIT_TX,
         check=flows_are((0, AFF_BACKEND, 1))),
    Case("empty_ring_drops", T4, (vip(P.VIP4, backends=(L.RING_EMPTY,)),), DROP, None,
         NO_BACKEND),
    Case("no_ring_installed_drops", T4, (vip(P.VIP4, ring=False),), DROP, None, NO_BACKEND),
    Case("ring_slot_names_gone_backend_drops", T4, (gone(3), vip(P.VIP4, backends=(3,))),
         DROP, None, NO_BACKEND, check=counted(1, None, 1, ip_len(T4), 0)),

    # ICMP errors about VIP flows: to the flow's backend
    Case("icmp4_frag_needed_steered_to_flow", ICMP4_STEER,
         (vip(P.VIP4), send(T4), ring(2)), TX, tunnelled(ICMP4_STEER, 1, flow_of=T4),
         {"flow_hit": 1, "icmp_steered": 1, "tx": 1},
         check=all_of(outer_sane, flows_are((P.CLIENT_PORT, 1, 1)))),
    Case("icmp4_frag_needed_no_flow_yet", ICMP4_STEER, (vip(P.VIP4, backends=(2,)),), TX,
         tunnelled(ICMP4_STEER, 2, flow_of=T4), {"flow_miss": 1, "icmp_steered": 1, "tx": 1},
         check=flows_are()),
    Case("icmp6_too_big_steered_to_flow", ICMP6_STEER,
         (vip(P.VIP6, backends=(11,)), send(T6), ring(12)), TX,
         tunnelled(ICMP6_STEER, 11, flow_of=T6), {"flow_hit": 1, "icmp_steered": 1, "tx": 1},
         check=outer_sane),
    Case("icmp4_steered_l2", ICMP4_STEER, (vip(P.VIP4, mode=L.MODE_L2),), TX,
         P.rewritten_macs(ICMP4_STEER), {"flow_miss": 1, "icmp_steered": 1, "tx": 1}),
    Case("icmp4_quoting_non_vip_flow", P.frag_needed(P.reply_quote4(vip="10.0.0.99")),
         (vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP),
    Case("icmp4_quoting_other_vip_port", P.frag_needed(P.reply_quote4(vip_port=443)),
         (vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP),
    Case("icmp6_quoting_non_vip_flow", P.packet_too_big(P.reply_quote6(vip="fd00::99")),
         (vip(P.VIP6, backends=(11,)),), PASS, UNTOUCHED, NOT_VIP),
    # an ICMP error about an ICMP error is never sent (RFC 1122 3.2.2, RFC 4443 2.4): an
    # error too big to tunnel goes to the backend with its quote cut to 128 bytes
    Case("icmp6_too_big_too_big_to_tunnel_shortened", PTB_1280,
         (config(mtu=1300), vip(P.VIP6, backends=(11,))), TX,
         tunnelled(P.shortened_error(PTB_1280), 11, flow_of=T6),
         {"flow_miss": 1, "icmp_steered": 1, "tx": 1}),
    Case("icmp4_frag_needed_too_big_to_tunnel_shortened", FRAG_576,
         (config(mtu=576), vip(P.VIP4)), TX,
         tunnelled(P.shortened_error(FRAG_576), 1, flow_of=T4),
         {"flow_miss": 1, "icmp_steered": 1, "tx": 1}),
    Case("icmp4_frag_needed_no_df_too_big_shortened", FRAG_576_NO_DF,
         (config(mtu=576), vip(P.VIP4)), TX,
         tunnelled(P.shortened_error(FRAG_576_NO_DF), 1, flow_of=T4),
         {"flow_miss": 1, "icmp_steered": 1, "tx": 1}),
    Case("icmp4_frag_needed_4in6_too_big_shortened", FRAG_576,
         (config(mtu=576), vip(P.VIP4, backends=(12,))), TX,
         tunnelled(P.shortened_error(FRAG_576), 12, flow_of=T4),
         {"flow_miss": 1, "icmp_steered": 1, "tx": 1}),
    Case("icmp4_frag_needed_padded_too_big_shortened",
         P.with_trailer(FRAG_576, bytes(6)), (config(mtu=576), vip(P.VIP4)), TX,
         tunnelled(P.shortened_error(FRAG_576), 1, flow_of=T4),
         {"flow_miss": 1, "icmp_steered": 1, "tx": 1}),
    # ... only when it is tunnelled: an L2 send changes the MACs alone
    Case("icmp6_too_big_l2_not_shortened", PTB_1280,
         (config(mtu=1300), vip(P.VIP6, mode=L.MODE_L2, backends=(11,))), TX,
         P.rewritten_macs(PTB_1280), {"flow_miss": 1, "icmp_steered": 1, "tx": 1}),
    Case("icmp_error_too_big_even_shortened_dropped", FRAG_576,
         (config(mtu=150), vip(P.VIP4)), DROP, None,
         {"flow_miss": 1, "icmp_steered": 1, "drop_too_big": 1}),
    # the quote is read within the IP packet, never from bytes after it
    Case("icmp4_quote_without_ports_not_steered", ICMP4_QUOTE_NO_PORTS, (vip(P.VIP4),),
         PASS, UNTOUCHED, NOT_VIP),
    Case("icmp4_quote_cut_in_header_not_steered", ICMP4_QUOTE_CUT_HEADER, (vip(P.VIP4),),
         PASS, UNTOUCHED, NOT_VIP),
    Case("icmp6_quote_without_ports_not_steered", ICMP6_QUOTE_NO_PORTS,
         (vip(P.VIP6, backends=(11,)),), PASS, UNTOUCHED, NOT_VIP),
    Case("icmp6_quote_cut_in_header_not_steered", ICMP6_QUOTE_CUT_HEADER,
         (vip(P.VIP6, backends=(11,)),), PASS, UNTOUCHED, NOT_VIP),

    # too big once encapsulated
    Case("too_big_v4_df_frag_needed", BIG4_DF, (vip(P.VIP4),), TX,
         P.frag_needed_reply(BIG4_DF, 1480), {"flow_miss": 1, "icmp_sent": 1}),
    Case("mtu_exactly_fits", FIT4_DF, (vip(P.VIP4),), TX, tunnelled(FIT4_DF, 1), MISS_TX,
         check=outer_sane),
    Case("too_big_v4_no_df_dropped", BIG4, (vip(P.VIP4),), DROP, None,
         {"flow_miss": 1, "drop_too_big": 1}),
    Case("too_big_v4_options_quoted", BIG4_OPTS, (vip(P.VIP4),), TX,
         P.frag_needed_reply(BIG4_OPTS, 1480), {"flow_miss": 1, "icmp_sent": 1}),
    Case("too_big_v4_vlan_tag_kept", BIG4_VLAN, (vip(P.VIP4),), TX,
         P.frag_needed_reply(BIG4_VLAN, 1480), {"flow_miss": 1, "icmp_sent": 1}),
    Case("too_big_4in6_frag_needed", BIG4_IN6, (vip(P.VIP4, backends=(12,)),), TX,
         P.frag_needed_reply(BIG4_IN6, 1460), {"flow_miss": 1, "icmp_sent": 1}),
    Case("too_big_4in6_no_df_dropped", P.big(P.tcp4, 1461), (vip(P.VIP4, backends=(12,)),),
         DROP, None, {"flow_miss": 1, "drop_too_big": 1}),
    Case("too_big_v6_packet_too_big", BIG6, (vip(P.VIP6, backends=(11,)),), TX,
         P.too_big_reply(BIG6, 1460), {"flow_miss": 1, "icmp_sent": 1}),
    Case("too_big_v6_vlan_tag_kept", P.big(P.udp6, 1461, vlan=42),
         (vip(P.VIP6, 53, "udp", backends=(11,)),), TX,
         P.too_big_reply(P.big(P.udp6, 1461, vlan=42), 1460), {"flow_miss": 1, "icmp_sent": 1}),
    Case("too_big_v6_mtu_at_least_1280", BIG6_SMALL_MTU,
         (config(mtu=1300), vip(P.VIP6, backends=(11,))), TX,
         P.too_big_reply(BIG6_SMALL_MTU, 1280), {"flow_miss": 1, "icmp_sent": 1}),

    # ARP and neighbour discovery for announced VIPs
    Case("arp_announced_vip_answered", ARP_REQ, (announce(P.VIP4),), TX, P.arp_reply(ARP_REQ),
         {"arp_reply": 1}),
    Case("arp_vip_not_announced", ARP_REQ, (vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP),
    Case("arp_unknown_address", P.arp_request("10.0.0.99"), (announce(P.VIP4),), PASS,
         UNTOUCHED, NOT_VIP),
    Case("arp_announced_on_other_interface", ARP_REQ, (announce(P.VIP4, ifindex=2),), PASS,
         UNTOUCHED, NOT_VIP, ingress=1),
    Case("arp_announced_on_this_interface", ARP_REQ, (announce(P.VIP4, ifindex=1),), TX,
         P.arp_reply(ARP_REQ), {"arp_reply": 1}, ingress=1),
    Case("arp_reply_not_answered", P.arp_request(op=2), (announce(P.VIP4),), PASS, UNTOUCHED,
         NOT_VIP),
    Case("arp_vlan_tag_kept", P.arp_request(vlan=7), (announce(P.VIP4),), TX,
         P.arp_reply(P.arp_request(vlan=7)), {"arp_reply": 1}),
    Case("ns_announced_vip_answered", NS, (announce(P.VIP6),), TX, P.neighbour_advert(NS),
         {"ndp_reply": 1}),
    Case("ns_dad_not_answered", P.neighbour_solicit(src="::"), (announce(P.VIP6),), PASS,
         UNTOUCHED, NOT_VIP),
    Case("ns_hop_limit_not_255", P.neighbour_solicit(hlim=64), (announce(P.VIP6),), PASS,
         UNTOUCHED, NOT_VIP),
    Case("ns_code_not_0", P.neighbour_solicit(code=1), (announce(P.VIP6),), PASS, UNTOUCHED,
         NOT_VIP),
    Case("ns_with_ext_header_not_answered", P.neighbour_solicit(ext=[P.hop_by_hop()]),
         (announce(P.VIP6),), PASS, UNTOUCHED, NOT_VIP),
    Case("ns_without_lladdr_option_answered", P.neighbour_solicit(lladdr=False),
         (announce(P.VIP6),), TX, P.neighbour_advert(P.neighbour_solicit(lladdr=False)),
         {"ndp_reply": 1}),
    Case("ns_vip_not_announced", NS, (vip(P.VIP6, backends=(11,)),), PASS, UNTOUCHED, NOT_VIP),
    Case("ns_announced_on_other_interface", NS, (announce(P.VIP6, ifindex=2),), PASS,
         UNTOUCHED, NOT_VIP, ingress=1),
    Case("ns_vlan_tag_kept", P.neighbour_solicit(vlan=7), (announce(P.VIP6),), TX,
         P.neighbour_advert(P.neighbour_solicit(vlan=7)), {"ndp_reply": 1}),
    # RFC 4861 7.1.1: an ICMP length under 24 bytes is no solicitation, whatever the frame
    # holds after the IPv6 payload
    Case("ns_payload_length_1_not_answered", P.neighbour_solicit(plen=1), (announce(P.VIP6),),
         PASS, UNTOUCHED, NOT_VIP),
    Case("ns_payload_length_23_not_answered", P.neighbour_solicit(lladdr=False, plen=23),
         (announce(P.VIP6),), PASS, UNTOUCHED, NOT_VIP),

    # inline decapsulation in the balancer
    Case("decap_ipip_to_local_addr", TUN4, (vip(P.VIP4), local(P.LOCAL4)), PASS,
         P.decapsulated(TUN4), DECAP),
    Case("decap_ip6ip6_to_local_addr", TUN6, (vip(P.VIP6, backends=(11,)), local(P.LOCAL6)),
         PASS, P.decapsulated(TUN6), DECAP),
    Case("decap_4in6_to_local_addr", TUN4IN6, (vip(P.VIP4), local(P.LOCAL6)), PASS,
         P.decapsulated(TUN4IN6), DECAP),
    Case("decap_6in4_to_local_addr", P.tunnel4(T6), (vip(P.VIP6, backends=(11,)),
         local(P.LOCAL4)), PASS, P.decapsulated(P.tunnel4(T6)), DECAP),
    Case("decap_not_local_passed", TUN4, (vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP),
    Case("decap_inner_not_vip_refused", TUN4, (local(P.LOCAL4),), PASS, UNTOUCHED, REFUSED),
    Case("decap_inner_other_port_refused", P.tunnel4(P.tcp4(dport=443)),
         (vip(P.VIP4), local(P.LOCAL4)), PASS, UNTOUCHED, REFUSED),
    Case("decap_source_checked_allowed", TUN4,
         (config(decap_check_source=True), decap_source(P.SRC4), vip(P.VIP4), local(P.LOCAL4)),
         PASS, P.decapsulated(TUN4), DECAP),
    Case("decap_source_checked_refused", P.tunnel4(T4, src=P.STRANGER4),
         (config(decap_check_source=True), decap_source(P.SRC4), vip(P.VIP4), local(P.LOCAL4)),
         PASS, UNTOUCHED, REFUSED),
    Case("decap_source_not_checked", P.tunnel4(T4, src=P.STRANGER4),
         (vip(P.VIP4), local(P.LOCAL4)), PASS, P.decapsulated(P.tunnel4(T4, src=P.STRANGER4)),
         DECAP),
    Case("decap_source_checked_v6_refused", P.tunnel6(T6, src=P.STRANGER6),
         (config(decap_check_source=True), decap_source(P.SRC6), vip(P.VIP6, backends=(11,)),
          local(P.LOCAL6)), PASS, UNTOUCHED, REFUSED),
    Case("decap_outer_options_refused", P.tunnel4(T4, options=P.ipv4_options()),
         (vip(P.VIP4), local(P.LOCAL4)), PASS, UNTOUCHED, REFUSED),
    Case("decap_outer_fragment_refused", P.tunnel4(T4, flags="MF"),
         (vip(P.VIP4), local(P.LOCAL4)), PASS, UNTOUCHED, REFUSED),
    Case("decap_inner_fragment_refused", P.tunnel4(P.udp4(flags="MF")),
         (vip(P.VIP4, 53, "udp"), local(P.LOCAL4)), PASS, UNTOUCHED, REFUSED),
    Case("decap_inner_shorter_than_outer_refused", TUN_INNER_SHORT,
         (vip(P.VIP4), local(P.LOCAL4)), PASS, UNTOUCHED, REFUSED),
    Case("decap_steered_icmp_to_vip_address", P.tunnel4(ICMP4_STEER),
         (vip(P.VIP4), local(P.LOCAL4)), PASS, P.decapsulated(P.tunnel4(ICMP4_STEER)), DECAP),
    Case("decap_vlan_tag_kept", P.tunnel4(P.tcp4(vlan=9)), (vip(P.VIP4), local(P.LOCAL4)),
         PASS, P.decapsulated(P.tunnel4(P.tcp4(vlan=9))), DECAP),

    # decap.bpf.c, on hosts that are only backends
    Case("dcp_ipip_vip_given", TUN4, (d_vip(P.VIP4),), PASS, P.decapsulated(TUN4), DECAP,
         prog="decap"),
    Case("dcp_ipip_vip_not_given", TUN4, (d_vip(P.VIP6),), PASS, UNTOUCHED, REFUSED,
         prog="decap"),
    Case("dcp_source_allowed", TUN4, (d_vip(P.VIP4), d_source(P.SRC4), d_check()), PASS,
         P.decapsulated(TUN4), DECAP, prog="decap"),
    Case("dcp_source_not_allowed", P.tunnel4(T4, src=P.STRANGER4),
         (d_vip(P.VIP4), d_source(P.SRC4), d_check()), PASS, UNTOUCHED, REFUSED, prog="decap"),
    Case("dcp_source_check_off", P.tunnel4(T4, src=P.STRANGER4), (d_vip(P.VIP4),), PASS,
         P.decapsulated(P.tunnel4(T4, src=P.STRANGER4)), DECAP, prog="decap"),
    Case("dcp_source_allowed_v6", TUN6, (d_vip(P.VIP6), d_source(P.SRC6), d_check()), PASS,
         P.decapsulated(TUN6), DECAP, prog="decap"),
    Case("dcp_4in6", TUN4IN6, (d_vip(P.VIP4),), PASS, P.decapsulated(TUN4IN6), DECAP,
         prog="decap"),
    Case("dcp_ip6ip6", TUN6, (d_vip(P.VIP6),), PASS, P.decapsulated(TUN6), DECAP, prog="decap"),
    Case("dcp_6in4", P.tunnel4(T6), (d_vip(P.VIP6),), PASS, P.decapsulated(P.tunnel4(T6)),
         DECAP, prog="decap"),
    Case("dcp_outer_options_refused", P.tunnel4(T4, options=P.ipv4_options()),
         (d_vip(P.VIP4),), PASS, UNTOUCHED, REFUSED, prog="decap"),
    Case("dcp_outer_ext_header_refused", P.tunnel6(T6, ext=[P.dest_opts()]), (d_vip(P.VIP6),),
         PASS, UNTOUCHED, REFUSED, prog="decap"),
    Case("dcp_outer_fragment_refused", P.tunnel4(T4, flags="MF"), (d_vip(P.VIP4),), PASS,
         UNTOUCHED, REFUSED, prog="decap"),
    Case("dcp_inner_fragment_refused", P.tunnel4(P.udp4(frag=10)), (d_vip(P.VIP4),), PASS,
         UNTOUCHED, REFUSED, prog="decap"),
    Case("dcp_inner_truncated_refused", P.tunnel4(P.tcp4(payload=b"", len=32)[:14 + 32]),
         (d_vip(P.VIP4),), PASS, UNTOUCHED, REFUSED, prog="decap"),
    Case("dcp_vlan_tag_kept", P.tunnel6(P.tcp6(vlan=9)), (d_vip(P.VIP6),), PASS,
         P.decapsulated(P.tunnel6(P.tcp6(vlan=9))), DECAP, prog="decap"),
    Case("dcp_not_a_tunnel", T4, (d_vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP, prog="decap"),
    Case("dcp_not_ip", P.non_ip(), (d_vip(P.VIP4),), PASS, UNTOUCHED, NOT_VIP, prog="decap"),
    Case("dcp_malformed_outer", P.tunnel4(T4, len=300), (d_vip(P.VIP4),), PASS, UNTOUCHED,
         MALFORMED, prog="decap"),
    # the destination MAC: a VIP frame for another host is the kernel's to drop (attach
    # registers the interface's MAC; a veth, a promiscuous NIC or a bridge hand XDP those)
    Case("mac_ours_is_balanced", T4, (vip(P.VIP4), if_mac(1)), TX, tunnelled(T4, 1), MISS_TX,
         ingress=1),
    Case("mac_other_host_is_not_ours", to_mac(T4, "02:00:00:00:00:cc"), (vip(P.VIP4), if_mac(1)),
         PASS, UNTOUCHED, {"pass_not_ours": 1}, ingress=1,
         check=flows_are()),
    Case("mac_other_host_is_not_ours_v6", to_mac(T6, "02:00:00:00:00:cc"),
         (vip(P.VIP6, backends=(11,)), if_mac(1)), PASS, UNTOUCHED, {"pass_not_ours": 1},
         ingress=1),
    Case("mac_broadcast_is_balanced", to_mac(T4, "ff:ff:ff:ff:ff:ff"), (vip(P.VIP4), if_mac(1)),
         TX, tunnelled(to_mac(T4, "ff:ff:ff:ff:ff:ff"), 1), MISS_TX, ingress=1),
    Case("mac_slot_of_another_interface_is_unchecked", to_mac(T4, "02:00:00:00:00:cc"),
         (vip(P.VIP4), if_mac(1 + L.IF_MAC_SLOTS)), TX,
         tunnelled(to_mac(T4, "02:00:00:00:00:cc"), 1), MISS_TX, ingress=1),
    Case("mac_not_a_vip_stays_not_vip", to_mac(P.tcp4(dst="10.0.0.99"), "02:00:00:00:00:cc"),
         (vip(P.VIP4), if_mac(1)), PASS, UNTOUCHED, NOT_VIP, ingress=1),
]


def _changed(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def _mismatch(got: bytes, want: bytes) -> str:
    return (f"output differs from the expected frame\n--- got ({len(got)} bytes) ---\n"
            f"{P.describe(got)}\n--- expected ({len(want)} bytes) ---\n{P.describe(want)}")


def _ctx(case: Case) -> Optional[bytes]:
    if not case.ingress and case.linear is None:
        return None
    return P.xdp_md(len(case.packet), case.ingress, case.linear)


def test_table_is_named_uniquely():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names)), "two rows share a name"
    assert len(CASES) >= 60


@pytest.fixture(scope="module")
def balancer():
    """The balancer with MAP_SIZES, handed to each row as freshly loaded."""
    objects = Pristine(Datapath, MAP_SIZES)
    yield objects
    objects.close()


@pytest.fixture(scope="module")
def decap():
    objects = Pristine(DecapPath)
    yield objects
    objects.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_packet(request, case: Case):
    if case.prog == "balancer":
        dp = request.getfixturevalue("balancer").fresh()
        steps = (world,) + case.state
    else:
        dp = request.getfixturevalue("decap").fresh()
        steps = case.state
    for step in steps:
        step(dp)
    before = dp.stats()
    action, out = dp.run(case.packet, ctx=_ctx(case))
    changed = _changed(before, dp.stats())

    assert action == case.action, (
        f"action {ACTION_NAMES.get(action, action)}, expected "
        f"{ACTION_NAMES[case.action]}; counters moved: {changed}\n"
        f"--- input ---\n{P.describe(case.packet)}\n--- output ---\n{P.describe(out)}")
    want = case.packet if case.expect is UNTOUCHED else case.expect
    if want is not None:
        assert out == want, _mismatch(out, want)
    assert changed == case.stats, "counters"
    if case.check:
        case.check(dp, out, case)


# -- the FIB fallback: no cached next hop ----------------------------------------------------------
#
# BPF_PROG_TEST_RUN's bpf_fib_lookup looks in the network namespace of the calling thread,
# from the ctx's ingress interface; each row gets a fresh namespace (the `netns` fixture)
# set up as P.FIB_LINKS says, and the packet runs from inside it. The lookup also reads that
# namespace's forwarding sysctls (off: BPF_FIB_LKUP_RET_FWD_DISABLED), and a new namespace
# starts with the IPv4 ones copied from the host's: every row sets both, on or off.
#
# A backend whose neighbour the FIB does not know yet: the packet is tunnelled to it (IPIP
# mode, and an L2 VIP's packet too) and passed up, Ethernet header as it came, so the
# kernel forwards it to the backend and resolves the neighbour on the way. Its outer
# source is the configured prefix's; in IPv4, not one of this node's own addresses (the
# kernel drops a forwarded packet from one as a martian), and for an L2 VIP without a
# prefix: the client's address.

FIB = 21                            # a backend id with no entry in xlb_nexthops
VETH0_MAC = P.FIB_LINKS["veth0"][0]
VETH0_ADDR4 = P.FIB_LINKS["veth0"][1].split("/")[0]     # this node's own addresses
VETH0_ADDR6 = P.FIB_LINKS["veth0"][2].split("/")[0]


@dataclass(frozen=True)
class FibCase:
    name: str
    packet: bytes
    backend: str                    # the address of backend FIB
    service: Callable               # the VIP step (a vip(...)) that uses backend FIB
    ingress: str                    # the interface the packet arrives on
    action: int
    expect: object                  # bytes, UNTOUCHED, or None
    stats: Dict[str, int]
    forwarding: bool = True         # IPv4 / IPv6 forwarding on in the namespace
    state: Tuple[Callable, ...] = ()    # more steps, after the service's


def via_fib(frame: bytes, backend: str, *, dmac: str = P.FIB_NEIGH_MAC,
            smac: str = VETH0_MAC, flow_of: Optional[bytes] = None, **kw) -> bytes:
    """`frame` encapsulated to `backend` with the MACs the FIB lookup returns; the outer
    source and flow label from the hash of `flow_of` (default: `frame`)."""
    return P.encapsulated(frame, backend, P.flow_hash(flow_of or frame), dmac=dmac, smac=smac,
                          **kw)


def unresolved(frame: bytes, backend: str, **kw) -> bytes:
    """Encapsulated, but the Ethernet header as it came: the kernel forwards it."""
    return via_fib(frame, backend, dmac=P.LB_MAC, smac=P.ROUTER_MAC, **kw)


L2_V4 = vip(P.VIP4, mode=L.MODE_L2, backends=(FIB,))
L2_V6 = vip(P.VIP6, mode=L.MODE_L2, backends=(FIB,))
NO_NEIGH = {"flow_miss": 1, "pass_no_neigh": 1}
CLIENT4_SRC = f"{P.CLIENT4}/32"     # the client's address as the outer source
CLIENT6_SRC = f"{P.CLIENT6}/128"

FIB_CASES = [
    FibCase("fib_ipip_tx", T4, P.FIB_NEIGH4, vip(P.VIP4, backends=(FIB,)), "veth0", TX,
            via_fib(T4, P.FIB_NEIGH4), MISS_TX),
    FibCase("fib_ipip_redirect", T4, P.FIB_NEIGH4, vip(P.VIP4, backends=(FIB,)), "veth1",
            REDIRECT, via_fib(T4, P.FIB_NEIGH4), {"flow_miss": 1, "redirect": 1}),
    FibCase("fib_ipip_no_neigh_passed", T4, P.FIB_UNRESOLVED4, vip(P.VIP4, backends=(FIB,)),
            "veth0", PASS, unresolved(T4, P.FIB_UNRESOLVED4), NO_NEIGH),
    FibCase("fib_ipip_no_route_dropped", T4, P.FIB_UNROUTED4, vip(P.VIP4, backends=(FIB,)),
            "veth0", DROP, None, {"flow_miss": 1, "drop_no_route": 1}),
    FibCase("fib_ip6ip6_tx", T6, P.FIB_NEIGH6, vip(P.VIP6, backends=(FIB,)), "veth0", TX,
            via_fib(T6, P.FIB_NEIGH6), MISS_TX),
    FibCase("fib_ip6ip6_redirect", T6, P.FIB_NEIGH6, vip(P.VIP6, backends=(FIB,)), "veth1",
            REDIRECT, via_fib(T6, P.FIB_NEIGH6), {"flow_miss": 1, "redirect": 1}),
    FibCase("fib_ip6ip6_no_neigh_passed", T6, P.FIB_UNRESOLVED6, vip(P.VIP6, backends=(FIB,)),
            "veth0", PASS, unresolved(T6, P.FIB_UNRESOLVED6), NO_NEIGH),
    FibCase("fib_ip6ip6_no_route_dropped", T6, P.FIB_UNROUTED6, vip(P.VIP6, backends=(FIB,)),
            "veth0", DROP, None, {"flow_miss": 1, "drop_no_route": 1}),
    FibCase("fib_4in6_tx", U4, P.FIB_NEIGH6, vip(P.VIP4, 53, "udp", backends=(FIB,)), "veth0",
            TX, via_fib(U4, P.FIB_NEIGH6), MISS_TX),
    FibCase("fib_l2_tx", T4, P.FIB_NEIGH4, L2_V4, "veth0", TX,
            P.rewritten_macs(T4, P.FIB_NEIGH_MAC, VETH0_MAC), MISS_TX),
    FibCase("fib_l2_v6_tx", T6, P.FIB_NEIGH6, L2_V6, "veth0", TX,
            P.rewritten_macs(T6, P.FIB_NEIGH_MAC, VETH0_MAC), MISS_TX),
    FibCase("fib_l2_redirect", T4, P.FIB_NEIGH4, L2_V4, "veth1", REDIRECT,
            P.rewritten_macs(T4, P.FIB_NEIGH_MAC, VETH0_MAC), {"flow_miss": 1, "redirect": 1}),
    # an L2 VIP's backend without a neighbour entry: tunnelled and passed up, never the
    # unchanged packet (the kernel would route that by the VIP and never ask for the MAC)
    FibCase("fib_l2_no_neigh_tunnelled", T4, P.FIB_UNRESOLVED4, L2_V4, "veth0", PASS,
            unresolved(T4, P.FIB_UNRESOLVED4), NO_NEIGH),
    FibCase("fib_l2_v6_no_neigh_tunnelled", T6, P.FIB_UNRESOLVED6, L2_V6, "veth0", PASS,
            unresolved(T6, P.FIB_UNRESOLVED6), NO_NEIGH),
    FibCase("fib_l2_udp_vlan_no_neigh_tunnelled", P.udp4(vlan=5), P.FIB_UNRESOLVED4,
            vip(P.VIP4, 53, "udp", mode=L.MODE_L2, backends=(FIB,)), "veth0", PASS,
            unresolved(P.udp4(vlan=5), P.FIB_UNRESOLVED4), NO_NEIGH),
    FibCase("fib_l2_no_neigh_no_prefix_client_source", T4, P.FIB_UNRESOLVED4, L2_V4, "veth0",
            PASS, unresolved(T4, P.FIB_UNRESOLVED4, src4=CLIENT4_SRC), NO_NEIGH,
            state=(config(src4=None),)),
    FibCase("fib_l2_v6_no_neigh_no_prefix_client_source", T6, P.FIB_UNRESOLVED6, L2_V6,
            "veth0", PASS, unresolved(T6, P.FIB_UNRESOLVED6, src6=CLIENT6_SRC), NO_NEIGH,
            state=(config(src6=None),)),
    FibCase("fib_l2_no_neigh_own_source_client_source", T4, P.FIB_UNRESOLVED4, L2_V4,
            "veth0", PASS, unresolved(T4, P.FIB_UNRESOLVED4, src4=CLIENT4_SRC), NO_NEIGH,
            state=(config(src4=f"{VETH0_ADDR4}/32"), local(VETH0_ADDR4))),
    FibCase("fib_ipip_no_neigh_own_source_client_source", T4, P.FIB_UNRESOLVED4,
            vip(P.VIP4, backends=(FIB,)), "veth0", PASS,
            unresolved(T4, P.FIB_UNRESOLVED4, src4=CLIENT4_SRC), NO_NEIGH,
            state=(config(src4=f"{VETH0_ADDR4}/32"), local(VETH0_ADDR4))),
    # ... a resolved backend keeps the node's own address as the source
    FibCase("fib_ipip_own_source_tx", T4, P.FIB_NEIGH4, vip(P.VIP4, backends=(FIB,)),
            "veth0", TX, via_fib(T4, P.FIB_NEIGH4, src4=f"{VETH0_ADDR4}/32"), MISS_TX,
            state=(config(src4=f"{VETH0_ADDR4}/32"), local(VETH0_ADDR4))),
    # ... and IPv6 forwards a packet from one of its own addresses: the source stays
    FibCase("fib_l2_v6_no_neigh_own_source_kept", T6, P.FIB_UNRESOLVED6, L2_V6, "veth0",
            PASS, unresolved(T6, P.FIB_UNRESOLVED6, src6=f"{VETH0_ADDR6}/128"), NO_NEIGH,
            state=(config(src6=f"{VETH0_ADDR6}/128"), local(VETH0_ADDR6))),
    # too big to tunnel: dropped, never an ICMP error (the L2 path itself has the room)
    FibCase("fib_l2_no_neigh_too_big_dropped", BIG4_DF, P.FIB_UNRESOLVED4, L2_V4, "veth0",
            DROP, None, {"flow_miss": 1, "drop_too_big": 1}),
    FibCase("fib_l2_v6_no_neigh_too_big_dropped", BIG6, P.FIB_UNRESOLVED6, L2_V6, "veth0",
            DROP, None, {"flow_miss": 1, "drop_too_big": 1}),
    FibCase("fib_l2_no_neigh_mtu_exactly_fits", FIT4_DF, P.FIB_UNRESOLVED4, L2_V4, "veth0",
            PASS, unresolved(FIT4_DF, P.FIB_UNRESOLVED4), NO_NEIGH),
    # an ICMP error about an L2 flow whose backend is unresolved: tunnelled too, and cut
    # to fit when it would not
    FibCase("fib_l2_no_neigh_icmp_steered", ICMP4_STEER, P.FIB_UNRESOLVED4, L2_V4, "veth0",
            PASS, unresolved(ICMP4_STEER, P.FIB_UNRESOLVED4, flow_of=T4),
            {"flow_miss": 1, "icmp_steered": 1, "pass_no_neigh": 1}),
    FibCase("fib_l2_v6_no_neigh_icmp_too_big_shortened", PTB_1280, P.FIB_UNRESOLVED6, L2_V6,
            "veth0", PASS,
            unresolved(P.shortened_error(PTB_1280), P.FIB_UNRESOLVED6, flow_of=T6),
            {"flow_miss": 1, "icmp_steered": 1, "pass_no_neigh": 1},
            state=(config(mtu=1300),)),
    # a node that does not forward cannot send to a backend through the FIB either
    FibCase("fib_forwarding_off_dropped", T4, P.FIB_NEIGH4, vip(P.VIP4, backends=(FIB,)),
            "veth0", DROP, None, {"flow_miss": 1, "drop_no_route": 1}, forwarding=False),
    FibCase("fib_forwarding_off_v6_dropped", T6, P.FIB_NEIGH6, vip(P.VIP6, backends=(FIB,)),
            "veth0", DROP, None, {"flow_miss": 1, "drop_no_route": 1}, forwarding=False),
]


def _forwarding_of(name: str) -> Dict[str, str]:
    """The forwarding sysctls of P.FIB_LINKS' interfaces in namespace `name`."""
    out = {}
    for dev in P.FIB_LINKS:
        for family in ("ipv4", "ipv6"):
            key = f"net.{family}.conf.{dev}.forwarding"
            out[key] = subprocess.run(["ip", "netns", "exec", name, "sysctl", "-n", key],
                                      capture_output=True, text=True, check=True).stdout.strip()
    return out


@pytest.mark.parametrize("case", FIB_CASES, ids=[c.name for c in FIB_CASES])
def test_fib_fallback(netns, balancer, case: FibCase):
    ifindex = P.fib_namespace(netns, case.forwarding)
    assert set(_forwarding_of(netns).values()) == {str(int(case.forwarding))}
    dp = balancer.fresh()
    world(dp)
    raw_backend(dp, FIB, case.backend)
    case.service(dp)
    for step in case.state:
        step(dp)
    before = dp.stats()
    with enter_netns(netns):
        action, out = dp.run(case.packet, ctx=P.xdp_md(len(case.packet),
                                                       ifindex[case.ingress]))
    changed = _changed(before, dp.stats())

    assert action == case.action, (
        f"action {ACTION_NAMES.get(action, action)}, expected {ACTION_NAMES[case.action]}; "
        f"counters moved: {changed}\n--- output ---\n{P.describe(out)}")
    want = case.packet if case.expect is UNTOUCHED else case.expect
    if want is not None:
        assert out == want, _mismatch(out, want)
    assert changed == case.stats, "counters"
