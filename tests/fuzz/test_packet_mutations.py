"""Mutation fuzzing of the XDP balancer (xdp/balancer.bpf.c) and decapsulator
(xdp/decap.bpf.c) through BPF_PROG_TEST_RUN, against real maps.

A seeded corpus of valid frames (IPv4/IPv6 TCP/UDP to VIPs in IPIP, L2 and local mode,
port-0 and source-range VIPs, IPv6 extension headers, VLAN tags, fragments, ICMP echo,
ICMP errors quoting VIP flows, frames too big to encapsulate, ARP and neighbour
solicitations for announced VIPs, IPIP / IP6IP6 / 4in6 / 6in4 tunnels for the inline and
the stand-alone decapsulator, traffic for no VIP) is mutated: bit flips, byte sets, header
fields set to edge values (lengths, IHL, protocols, ethertypes, addresses, ports, ICMP
type/code), truncation, extension, insertion and deletion of bytes, swapped addresses
and ports, a VLAN tag added or removed, two frames spliced; now and then the IP lengths
are made consistent again so the mutation reaches past the parser. Each mutated frame
runs once through the program in a world of VIPs, backends (cached next hops, and FIB
next hops that resolve, do not resolve or have no route, in a network namespace of the
test's own), announced addresses, local addresses and decap sources, and for every frame:

- the return code is never XDP_ABORTED and is the one its outcome counter names
  (pyxlb.metrics.XDP_ACTIONS);
- exactly one outcome counter of enum xlb_stat moved, by one (read before and after every
  frame); flow-table counters move by at most one, one of them at most;
- a frame not addressed to this node (destination neither a VIP nor a local address; not
  ARP or a solicitation for an announced address) passes with identical bytes; so does
  every frame whose outcome is a pass other than a decapsulation or pass_no_neigh;
- a forwarded frame is VIP traffic (by the spec's parse: the packet itself, or for a
  steered ICMP error the flow it quotes, which must lie inside the IP packet) and is
  either the frame with the backend's next-hop MACs (L2 VIP) or a well-formed
  encapsulation (IPIP VIP): outer lengths, checksum, TTL, protocol, TOS, DF consistent
  with the inner packet, outer source in the configured prefix, outer destination one of
  the VIP's backends, inner packet and padding byte for byte (a steered ICMP error too
  big to tunnel whole: cut to its headers and XLB_STEER_QUOTE bytes of quote, lengths
  and checksums rewritten); XDP_TX exactly when the egress is the ingress interface;
- pass_no_neigh (no neighbour for the backend, any mode): tunnelled as above, with the
  frame's MACs and an outer IPv4 source that is the client's (the configured src4 is this
  node's own address here, as `pyxlb attach` sets it, and Linux drops a packet to forward
  from its own address);
- a drop for a VIP reason is VIP traffic; a source-range drop is a client the VIP does
  not admit;
- an ICMP error sent back is well formed (checksums, lengths, quote, MTU, addresses
  reversed), for a packet of an IPIP VIP that was too big, and never in reply to an ICMP
  error;
- ARP and NDP replies are well formed and answer a request for an announced address
  (a solicitation whose message lies inside its IPv6 payload);
- a decapsulation (either program) obeys every condition of docs/datapath.md
  (outer header exactly 20/40 bytes, no fragment, allowed source, outer destination a
  local address (balancer), inner packet whole, unfragmented, ending with the outer one,
  inner destination a VIP (balancer: by port for TCP/UDP; decap.o: a given address)), and
  the output is the Ethernet header with the inner protocol, then the inner packet
  untouched.

Size and seed: ``PYXLB_FUZZ_MUTATIONS`` (default 20,000) mutated frames per run, three
quarters through the balancer and one quarter through the decapsulator;
``PYXLB_FUZZ_SEED`` (default 1) seeds them. Mutation *i* depends only on the seed, the
program and *i*, so a run of any size repeats the first mutations of a bigger one. The
default run takes a few seconds; ``make fuzz`` runs millions (bench/fuzz.py).

A violation does not stop the run: all are collected and the test fails at the end
listing the first ones, each with the seed, the mutation index, the ingress and the frame
in hex, and a command that replays that one frame in a fresh world
(``PYXLB_FUZZ_REPLAY=program:ingress:hex``, test ``test_replay``, which otherwise replays
the frames the fuzzer once found violating, kept in ``FOUND``; the flow table is then
empty, so a violation that needed an earlier flow may not show again).
``PYXLB_FUZZ_REPORT=path.json``: counts per outcome, action and seed corpus entry are
merged into that file (bench/fuzz.py reads it).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
import struct
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Set, Tuple

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from datapath import packets as P
from datapath.raw import raw_announce, raw_backend, raw_index, raw_vip
from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb import metrics
from pyxlb.datapath import Datapath, DecapPath
from pyxlb.netns import enter as enter_netns

MUTATIONS = int(os.environ.get("PYXLB_FUZZ_MUTATIONS", "20000"))
SEED = int(os.environ.get("PYXLB_FUZZ_SEED", "1"))
REPORT = os.environ.get("PYXLB_FUZZ_REPORT")
REPLAY = os.environ.get("PYXLB_FUZZ_REPLAY")
SHARES = {"balancer": 3, "decap": 1}         # of MUTATIONS, in quarters
MAX_FRAME = 3000                             # BPF_PROG_TEST_RUN takes ~3.5 KB linear
MAX_REPORTED = 12                            # violations spelled out in the failure

ABORTED, DROP, PASS, TX, REDIRECT = (_bpf.XDP_ABORTED, _bpf.XDP_DROP, _bpf.XDP_PASS,
                                     _bpf.XDP_TX, _bpf.XDP_REDIRECT)
ACTION_NAMES = {ABORTED: "aborted", DROP: "drop", PASS: "pass", TX: "tx",
                REDIRECT: "redirect"}
ACTION_OF_LABEL = {"drop": DROP, "pass": PASS, "tx": TX, "redirect": REDIRECT}

# Counters that go with an outcome rather than being one (pyxlb.metrics' tables); every
# other name of enum xlb_stat, a new one too, is an outcome.
FLOW_LOOKUPS = set(metrics.FLOW_LOOKUPS)
AUXILIARY = FLOW_LOOKUPS | {metrics.ICMP_STEERED, metrics.MIDSTREAM_MISSES}
UNTOUCHED_PASSES = {"pass_not_vip", "pass_local", "pass_fragment", "pass_malformed",
                    "pass_not_ours", "decap_refused"}
# Outcomes that only VIP traffic reaches (the VIP is found before any of them).
VIP_OUTCOMES = {"pass_local", "tx", "redirect", "pass_no_neigh", "drop_no_backend",
                "drop_too_big", "drop_unsupported", "drop_no_route", "drop_source_range",
                "icmp_sent"}

ETH_IP, ETH_IP6, ETH_ARP, ETH_8021Q, ETH_8021AD = 0x0800, 0x86DD, 0x0806, 0x8100, 0x88A8
TCP_, UDP_, ICMP4, ICMP6, IPIP, IPV6_IN = 6, 17, 1, 58, 4, 41
EXT_HEADERS = {0, 43, 60}           # hop-by-hop, routing, destination options
FRAGMENT_HDR = 44

# -- the world ---------------------------------------------------------------------------


def _a(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed


def _mac(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


VIP4B, VIP4C, VIP6B = "10.0.0.11", "10.0.0.12", "fd00::11"
CLIENT4_OUT = "198.51.100.200"       # outside VIP4B's source ranges
LB_MAC = _mac(P.LB_MAC)
EGRESS_MAC = _mac(P.EGRESS_MAC)
ANNOUNCE_MAC = _mac(P.ANNOUNCE_MAC)
FIB_NEIGH_MAC = _mac(P.FIB_NEIGH_MAC)
VETH0_MAC = _mac(P.FIB_LINKS["veth0"][0])
REDIRECT_IFINDEX = 7                 # a cached next hop on another interface
GONE = 9                             # a backend id some ring names, never written


@dataclass(frozen=True)
class Backend:
    bid: int
    addr: str
    cached: Optional[int] = None     # ifindex of the cached next hop; None: the FIB
    flags: int = 0

    @property
    def mac(self) -> bytes:          # the cached next hop's MAC: tells backends apart
        return bytes([2, 0xBE, 0, 0, 0, self.bid])


BACKENDS = {b.bid: b for b in [
    Backend(1, "10.1.0.1", 1), Backend(2, "10.1.0.2", 1),
    Backend(3, "10.1.0.3", REDIRECT_IFINDEX), Backend(4, "10.1.0.4", 1, L.BACKEND_LOCAL),
    Backend(11, "fd00:1::1", 1), Backend(12, "fd00:1::2", REDIRECT_IFINDEX),
    # no cached next hop: bpf_fib_lookup in the test's namespace decides
    Backend(21, P.FIB_NEIGH4), Backend(22, P.FIB_UNRESOLVED4), Backend(23, P.FIB_UNROUTED4),
    Backend(24, P.FIB_NEIGH6), Backend(25, P.FIB_UNRESOLVED6), Backend(26, P.FIB_UNROUTED6),
]}
BY_ADDR = {_a(b.addr): b.bid for b in BACKENDS.values()}
BY_MAC: Dict[bytes, Set[int]] = {}
for _b in BACKENDS.values():
    BY_MAC.setdefault(_b.mac if _b.cached else FIB_NEIGH_MAC, set()).add(_b.bid)

RING = 7
EMPTY = L.RING_EMPTY


@dataclass(frozen=True)
class Vip:
    vid: int
    addr: str
    port: int
    proto: int
    mode: int
    ring: Optional[Tuple[int, ...]]       # RING slots; None: no ring installed
    flags: int = 0
    ranges: Tuple[str, ...] = ()

    @property
    def backends(self) -> Set[int]:
        return set(self.ring or ()) - {EMPTY}


VIPS = [
    Vip(1, P.VIP4, 80, TCP_, L.MODE_IPIP, (1, 2, 3, 21, 22, 23, 12)),
    Vip(2, P.VIP4, 53, UDP_, L.MODE_L2, (1, 2, 21, 22, 23, 3, 4)),
    Vip(3, P.VIP4, 0, TCP_, L.MODE_IPIP, (2, 12, 1, 12, 2, 1, 21), L.VIP_AFFINITY_SRC),
    Vip(4, VIP4B, 443, TCP_, L.MODE_IPIP, (1, 2, 1, 2, 1, 2, 3), L.VIP_SOURCE_RANGES,
        ("198.51.100.0/25", "203.0.113.0/24")),
    Vip(5, VIP4C, 8080, UDP_, L.MODE_IPIP, (EMPTY,) * RING, L.VIP_NO_FLOW_TABLE),
    Vip(6, VIP4C, 8081, TCP_, L.MODE_LOCAL, (1,) * RING),
    Vip(7, VIP4C, 8082, TCP_, L.MODE_IPIP, (GONE,) * RING),
    Vip(8, VIP4C, 8083, TCP_, L.MODE_IPIP, None),
    Vip(9, P.VIP6, 80, TCP_, L.MODE_IPIP, (11, 12, 24, 25, 26, 11, 12)),
    Vip(10, P.VIP6, 53, UDP_, L.MODE_L2, (11, 12, 24, 25, 26, 11, 12)),
    Vip(11, VIP6B, 443, TCP_, L.MODE_IPIP, (11, 1, 11, 1, 12, 4, 11), L.VIP_SOURCE_RANGES,
        ("2001:db8:1::/64",)),
    Vip(12, VIP6B, 0, UDP_, L.MODE_IPIP, (12,) * RING,
        L.VIP_NO_FLOW_TABLE | L.VIP_AFFINITY_SRC),
]
VIP_BY_KEY = {(_a(v.addr), v.port, v.proto): v for v in VIPS}
VIP_ADDRS = {_a(v.addr) for v in VIPS}
ANNOUNCED = {P.VIP4: 0, P.VIP6: 0, VIP4B: "veth0", VIP6B: "veth0"}   # address: interface
ANNOUNCED_ADDRS = {_a(a) for a in ANNOUNCED}
LOCAL_ADDRS = {_a(P.LOCAL4), _a(P.LOCAL6)}
DECAP_SOURCES = [ipaddress.ip_network(P.SRC4), ipaddress.ip_network(P.SRC6)]
# The outer IPv4 source is this node's own address (what `pyxlb attach` configures by
# default); IPv6 tunnels come from a prefix, host bits from the flow hash.
ENCAP_SRC4 = f"{P.LOCAL4}/32"
SRC4_NET, SRC6_NET = ipaddress.ip_network(ENCAP_SRC4), ipaddress.ip_network(P.SRC6)
DECAP_VIPS = {_a(P.VIP4), _a(P.VIP6)}          # decap.o is given addresses only
MTU = 1500
STEER_QUOTE = getattr(L, "STEER_QUOTE", 128)    # XLB_STEER_QUOTE: what a cut error keeps
# What the unmutated corpus reaches; the mutations must reach these and a few more.
CORPUS_OUTCOMES = {"tx", "redirect", "pass_not_vip", "pass_local", "pass_fragment",
                   "pass_not_ours", "drop_no_backend", "drop_too_big", "drop_source_range",
                   "icmp_sent", "arp_reply", "ndp_reply", "decap", "decap_refused"}
FUZZ_OUTCOMES = {"balancer": CORPUS_OUTCOMES - {"decap_refused"} | {
                     "pass_malformed", "decap_refused", "pass_no_neigh", "drop_no_route",
                     "drop_unsupported"},
                 "decap": {"decap", "decap_refused", "pass_not_vip", "pass_malformed"}}
MAP_SIZES = {"xlb_flowsets6": 1024, "xlb_flowsets4": 1024, "xlb_backends": 64,
             "xlb_nexthops": 64, "xlb_backend_stats": 64}


def find_vip(dst: bytes, dport: int, proto: int) -> Optional[Vip]:
    """The VIP of (destination, port, protocol) as docs/datapath.md step 6 says: the exact
    port, else a port-0 VIP on the address."""
    return VIP_BY_KEY.get((dst, dport, proto)) or VIP_BY_KEY.get((dst, 0, proto))


def admitted(vip: Vip, src: bytes) -> bool:
    addr = ipaddress.ip_address(src)
    return any(addr in ipaddress.ip_network(r) for r in vip.ranges
               if ipaddress.ip_network(r).version == addr.version)


def build_balancer(ifindex: Dict[str, int]) -> Datapath:
    """The world above, written raw through the accessors (ids and rings picked here)."""
    dp = Datapath.load(map_sizes=MAP_SIZES)
    t = dp.tables
    try:
        t.config.write(seed=P.SEED, mtu=MTU, src4=ENCAP_SRC4, src6=P.SRC6,
                       decap_check_source=True)
        for b in BACKENDS.values():
            raw_backend(dp, b.bid, b.addr, local=bool(b.flags & L.BACKEND_LOCAL))
            if b.cached:
                t.nexthops.put(b.bid, b.mac, EGRESS_MAC, b.cached)
        for v in VIPS:
            raw_vip(dp, v.addr, v.port, v.proto, vip_id=v.vid, ring_id=v.vid, ring_size=RING,
                    mode=v.mode, flags=v.flags)
            for prefix in v.ranges:
                t.source_ranges.add(v.vid, prefix)
            if v.ring is not None:
                t.rings.put(v.vid, list(v.ring))
        raw_index(dp)
        for addr, iface in ANNOUNCED.items():
            raw_announce(dp, addr, ifindex[iface] if iface else 0, ANNOUNCE_MAC)
        for addr in (P.LOCAL4, P.LOCAL6):
            dp.add_local_addr(addr)
        for prefix in (P.SRC4, P.SRC6):
            t.decap_sources.add(prefix)
        if "veth0" in ifindex:
            t.if_macs.put(ifindex["veth0"], LB_MAC)
    except BaseException:
        dp.close()
        raise
    return dp


def build_decap() -> DecapPath:
    dp = DecapPath.load()
    for addr in (P.VIP4, P.VIP6):
        dp.add_vip(addr)
    for prefix in (P.SRC4, P.SRC6):
        dp.add_source(prefix)
    dp.set_config(check_source=True)
    return dp


# -- the seed corpus ---------------------------------------------------------------------


def _icmp_error_big(quote: bytes) -> bytes:
    """A "fragmentation needed" about a VIP flow, padded with a long payload so that it is
    too big to encapsulate (an ICMP error about which no ICMP error may be sent)."""
    return bytes(Ether(src=P.ROUTER_MAC, dst=P.LB_MAC)
                 / IP(src=P.FAR_ROUTER4, dst=P.VIP4, flags="DF", id=0x777, ttl=250)
                 / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(quote + bytes(1460 - len(quote))))


def _icmp6_error_big(quote: bytes) -> bytes:
    """A "packet too big" about a VIP flow, too big itself to tunnel."""
    return bytes(Ether(src=P.ROUTER_MAC, dst=P.LB_MAC)
                 / IPv6(src=P.FAR_ROUTER6, dst=P.VIP6, hlim=250)
                 / ICMPv6PacketTooBig(mtu=1280) / Raw(quote + bytes(1452 - len(quote))))


def _quote_in_padding() -> bytes:
    """A "fragmentation needed" whose IP packet ends inside the quoted IP header: the
    quoted ports are in the Ethernet padding, not in the packet."""
    quote = P.reply_quote4()[:20]
    frame = bytes(Ether(src=P.ROUTER_MAC, dst=P.LB_MAC)
                  / IP(src=P.FAR_ROUTER4, dst=P.VIP4, id=0x777, ttl=250)
                  / ICMP(type=3, code=4, nexthopmtu=1400) / Raw(quote))
    return frame + P.reply_quote4()[20:28] + bytes(8)


def balancer_corpus() -> List[Tuple[str, bytes]]:
    t4, t6 = P.tcp4(), P.tcp6()
    return [
        ("tcp4_syn", t4), ("tcp4_ack", P.tcp4(tcp_flags="A")),
        ("tcp4_options", P.tcp4(options=P.ipv4_options(), flags="DF")),
        ("tcp4_vlan", P.tcp4(vlan=100)), ("tcp4_8021ad", P.tcp4(vlan=300, service_tag=True)),
        ("udp4_l2", P.udp4()), ("udp4_l2_vlan", P.udp4(vlan=7)),
        ("tcp4_port0_affinity", P.tcp4(dport=8443)),
        ("tcp4_ranges_admitted", P.tcp4(dst=VIP4B, dport=443)),
        ("tcp4_ranges_refused", P.tcp4(src=CLIENT4_OUT, dst=VIP4B, dport=443)),
        ("udp4_empty_ring", P.udp4(dst=VIP4C, dport=8080)),
        ("tcp4_local_mode", P.tcp4(dst=VIP4C, dport=8081)),
        ("tcp4_gone_backend", P.tcp4(dst=VIP4C, dport=8082)),
        ("tcp4_no_ring", P.tcp4(dst=VIP4C, dport=8083)),
        ("tcp6_syn", t6), ("tcp6_rst", P.tcp6(tcp_flags="R")),
        ("tcp6_ext", P.tcp6(ext=[P.hop_by_hop(), P.dest_opts(), P.routing()])),
        ("tcp6_four_ext", P.tcp6(ext=[P.hop_by_hop(), P.dest_opts(), P.routing(),
                                      P.dest_opts()])),
        ("udp6_l2", P.udp6()), ("udp6_vlan", P.udp6(vlan=9)),
        ("tcp6_ranges_admitted", P.tcp6(dst=VIP6B, dport=443)),
        ("tcp6_ranges_refused", P.tcp6(src="2001:db8:2::5", dst=VIP6B, dport=443)),
        ("udp6_port0", P.udp6(dst=VIP6B, dport=5353)),
        ("frag4_first", P.udp4(flags="MF")), ("frag4_later", P.udp4(frag=100)),
        ("frag6_first", P.udp6(ext=[P.fragment6(0, more=True)])),
        ("frag6_later", P.tcp6(ext=[P.fragment6(100)])),
        ("icmp4_echo", P.icmp4_echo()), ("icmp6_echo", P.icmp6_echo()),
        ("gre4_to_vip", P.other4(47)),
        ("frag_needed_tcp", P.frag_needed(P.reply_quote4())),
        ("frag_needed_l2_udp", P.frag_needed(bytes(
            IP(src=P.VIP4, dst=P.CLIENT4, flags="DF") / UDP(sport=53, dport=P.CLIENT_PORT))[:28])),
        ("frag_needed_port0", P.frag_needed(P.reply_quote4(vip_port=8443))),
        ("frag_needed_options", P.frag_needed(P.reply_quote4(), mtu=1300)),
        ("frag_needed_big", _icmp_error_big(P.reply_quote4())),
        ("frag_needed_quote_in_padding", _quote_in_padding()),
        ("too_big6_tcp", P.packet_too_big(P.reply_quote6())),
        ("too_big6_ranges", P.packet_too_big(P.reply_quote6(vip=VIP6B, vip_port=443))),
        ("too_big6_big", _icmp6_error_big(P.reply_quote6())),
        ("big4_df", P.big(P.tcp4, 1481, flags="DF")), ("big4", P.big(P.tcp4, 1481)),
        ("big4_port0_4in6", P.big(P.tcp4, 1470, flags="DF", dport=8443)),
        ("big6", P.big(P.tcp6, 1461)), ("big4_fits", P.big(P.tcp4, 1480, flags="DF")),
        ("arp_vip", P.arp_request()), ("arp_vip_vlan", P.arp_request(vlan=7)),
        ("arp_vip_on_veth0", P.arp_request(VIP4B)), ("arp_not_announced", P.arp_request(VIP4C)),
        ("ns_vip", P.neighbour_solicit()), ("ns_vip_no_lladdr", P.neighbour_solicit(lladdr=False)),
        ("ns_vip_vlan", P.neighbour_solicit(vlan=7)), ("ns_dad", P.neighbour_solicit(src="::")),
        ("ns_vip_on_veth0", P.neighbour_solicit(VIP6B)),
        ("ipip_local", P.tunnel4(t4)), ("ip6ip6_local", P.tunnel6(t6)),
        ("4in6_local", P.tunnel6(t4)), ("6in4_local", P.tunnel4(t6)),
        ("ipip_local_udp", P.tunnel4(P.udp4())), ("ipip_steered_icmp",
                                                    P.tunnel4(P.frag_needed(P.reply_quote4()))),
        ("ipip_stranger", P.tunnel4(t4, src=P.STRANGER4)),
        ("ipip_not_local", P.tunnel4(t4, dst="10.2.0.99")),
        ("ipip_vlan", P.tunnel4(P.tcp4(vlan=9))),
        ("not_vip4", P.tcp4(dst="10.0.0.99")), ("not_vip6", P.udp6(dst="fd00::99")),
        ("vip4_other_port", P.tcp4(dport=444)), ("not_ip_lldp", P.non_ip()),
        ("qinq", P.two_vlan_tags()), ("padded_udp4", P.with_padding(P.udp4(payload=b"x"))),
        ("tcp4_other_host_mac", bytes.fromhex("02000000 00cc".replace(" ", "")) + t4[6:]),
    ]


def decap_corpus() -> List[Tuple[str, bytes]]:
    t4, t6 = P.tcp4(), P.tcp6()
    return [
        ("ipip", P.tunnel4(t4)), ("ip6ip6", P.tunnel6(t6)), ("4in6", P.tunnel6(t4)),
        ("6in4", P.tunnel4(t6)), ("ipip_udp", P.tunnel4(P.udp4())),
        ("ipip_icmp", P.tunnel4(P.frag_needed(P.reply_quote4()))),
        ("ip6ip6_ext_inner", P.tunnel6(P.tcp6(ext=[P.hop_by_hop()]))),
        ("ipip_stranger", P.tunnel4(t4, src=P.STRANGER4)),
        ("ip6ip6_stranger", P.tunnel6(t6, src=P.STRANGER6)),
        ("ipip_inner_fragment", P.tunnel4(P.udp4(flags="MF"))),
        ("ipip_inner_not_vip", P.tunnel4(P.tcp4(dst="10.0.0.99"))),
        ("ipip_vlan", P.tunnel4(P.tcp4(vlan=9))), ("ip6ip6_vlan", P.tunnel6(P.tcp6(vlan=9))),
        ("ipip_outer_options", P.tunnel4(t4, options=P.ipv4_options())),
        ("ip6ip6_outer_ext", P.tunnel6(t6, ext=[P.dest_opts()])),
        ("ipip_outer_fragment", P.tunnel4(t4, flags="MF")),
        ("ipip_inner_short", P.tunnel4_inner_short(t4)),
        ("plain_tcp4", t4), ("plain_udp6", P.udp6()), ("lldp", P.non_ip()),
        ("ipip_padded", P.with_padding(P.tunnel4(P.udp4(payload=b"")), 80)),
    ]


# -- a lenient map of a frame's header fields, for aiming mutations ---------------------

ETHERTYPE, MACF, VERIHL, LEN16, FRAG, PROTO, TTL, ADDR4, ADDR6, PORT, ICMPT, ICMPC, \
    EXTLEN, BYTE = range(14)


def layout(f: bytes) -> Tuple[List[Tuple[int, int, int]], List[int], List[Tuple[int, int]]]:
    """(fields (offset, size, kind), header boundaries, IP headers (offset, version) of the
    frame and of any tunnelled inner packet) as far as the bytes go; nothing is checked."""
    n = len(f)
    fields = [(0, 6, MACF), (6, 6, MACF)]
    bounds = [12, 14]
    et_off = 12
    if n >= 18 and f[12:14] in (b"\x81\x00", b"\x88\xa8"):
        et_off = 16
        bounds.append(18)
    fields.append((et_off, 2, ETHERTYPE))
    l3 = et_off + 2
    ips: List[Tuple[int, int]] = []
    et = f[et_off:et_off + 2]
    if et == b"\x08\x06":
        fields += [(l3 + 6, 2, BYTE), (l3 + 14, 4, ADDR4), (l3 + 24, 4, ADDR4)]
        bounds.append(l3 + 28)
    elif et in (b"\x08\x00", b"\x86\xdd"):
        _ip_layout(f, l3, fields, bounds, ips, 0)
    return fields, bounds, ips


def _ip_layout(f, l3, fields, bounds, ips, depth) -> None:
    n = len(f)
    if n <= l3 or depth > 2:
        return
    version = f[l3] >> 4
    if version == 4 and n >= l3 + 20:
        ips.append((l3, 4))
        fields += [(l3, 1, VERIHL), (l3 + 1, 1, BYTE), (l3 + 2, 2, LEN16), (l3 + 6, 2, FRAG),
                   (l3 + 8, 1, TTL), (l3 + 9, 1, PROTO), (l3 + 10, 2, BYTE),
                   (l3 + 12, 4, ADDR4), (l3 + 16, 4, ADDR4)]
        l4 = l3 + max(5, f[l3] & 0xF) * 4
        proto = f[l3 + 9]
    elif version == 6 and n >= l3 + 40:
        ips.append((l3, 6))
        fields += [(l3, 1, BYTE), (l3 + 4, 2, LEN16), (l3 + 6, 1, PROTO), (l3 + 7, 1, TTL),
                   (l3 + 8, 16, ADDR6), (l3 + 24, 16, ADDR6)]
        proto, l4 = f[l3 + 6], l3 + 40
        for _ in range(5):
            if proto not in EXT_HEADERS | {FRAGMENT_HDR} or n < l4 + 8:
                break
            fields += [(l4, 1, PROTO), (l4 + 1, 1, EXTLEN)]
            bounds.append(l4)
            proto = f[l4]
            l4 += 8 if proto == FRAGMENT_HDR else (f[l4 + 1] + 1) * 8
    else:
        return
    bounds += [l3 + 20 if version == 4 else l3 + 40, l4]
    if proto in (TCP_, UDP_) and n >= l4 + 4:
        fields += [(l4, 2, PORT), (l4 + 2, 2, PORT)]
        if proto == UDP_ and n >= l4 + 6:
            fields.append((l4 + 4, 2, LEN16))
        if proto == TCP_ and n >= l4 + 14:
            fields.append((l4 + 13, 1, BYTE))
        bounds.append(l4 + (20 if proto == TCP_ else 8))
    elif proto in (ICMP4, ICMP6) and n >= l4 + 8:
        fields += [(l4, 1, ICMPT), (l4 + 1, 1, ICMPC), (l4 + 4, 4, BYTE)]
        if n >= l4 + 24:
            fields.append((l4 + 8, 16, ADDR6))       # a solicitation's target
        bounds.append(l4 + 8)
        _ip_layout(f, l4 + 8, fields, bounds, [], depth + 1)   # a quoted packet
    elif proto in (IPIP, IPV6_IN):
        _ip_layout(f, l4, fields, bounds, ips, depth + 1)


# -- mutations -----------------------------------------------------------------------------

ADDRS4 = [_a(a) for a in (P.VIP4, VIP4B, VIP4C, P.LOCAL4, P.CLIENT4, CLIENT4_OUT, P.PEER_LB4,
                          P.STRANGER4, "10.1.0.1", "0.0.0.0", "255.255.255.255", "10.0.0.99")]
ADDRS6 = [_a(a) for a in (P.VIP6, VIP6B, P.LOCAL6, P.CLIENT6, P.PEER_LB6, P.STRANGER6, "::",
                          "ff02::1", P.solicited_node(P.VIP6)[0], "fd00:1::1", "fd00::99",
                          "::ffff:10.0.0.10")]
MACS = [LB_MAC, b"\xff" * 6, _mac("33:33:ff:00:00:10"), _mac("02:00:00:00:00:cc"), bytes(6),
        _mac(P.ROUTER_MAC)]
VALUES = {
    ETHERTYPE: [ETH_IP, ETH_IP6, ETH_ARP, ETH_8021Q, ETH_8021AD, 0x88CC, 0, 0xFFFF],
    FRAG: [0, 0x4000, 0x2000, 0x0001, 0x6000, 0x1FFF, 0x4001, 0x8000],
    PROTO: [0, 1, 4, 6, 17, 41, 43, 44, 47, 50, 58, 59, 60, 135, 255],
    TTL: [0, 1, 64, 254, 255],
    PORT: [0, 80, 53, 443, 8080, 8081, 8082, 8083, 8443, 5353, P.CLIENT_PORT, 65535],
    ICMPT: [0, 1, 2, 3, 4, 5, 8, 11, 12, 128, 129, 133, 134, 135, 136, 255],
    ICMPC: [0, 1, 3, 4, 255],
    EXTLEN: [0, 1, 2, 5, 31, 255],
}
BYTES = [0, 1, 2, 4, 5, 6, 0x0F, 0x10, 0x11, 0x29, 0x3A, 0x40, 0x45, 0x46, 0x4F, 0x60, 0x7F,
         0x80, 0x86, 0xDD, 0xFE, 0xFF]


def _set_field(f: bytearray, rng: random.Random, fields) -> None:
    off, size, kind = rng.choice(fields)
    if off + size > len(f):
        return
    if kind == MACF:
        value = rng.choice(MACS)
    elif kind == ADDR4:
        value = rng.choice(ADDRS4) if rng.random() < 0.8 else rng.randbytes(4)
    elif kind == ADDR6:
        value = rng.choice(ADDRS6) if rng.random() < 0.8 else rng.randbytes(16)
    elif kind == VERIHL:
        version = rng.choice([4, 4, 4, 6, 0, 15])
        ihl = rng.choice([5, 5, 6, 4, 0, 15, rng.randrange(16)])
        value = bytes([version << 4 | ihl])
    elif kind == LEN16:
        cur = int.from_bytes(f[off:off + 2], "big")
        rest = len(f) - off
        n = rng.choice([0, 1, 7, 8, 19, 20, 21, 23, 24, 39, 40, 41, cur - 1, cur + 1, cur - 4,
                        cur + 4, cur - 8, cur + 8, rest, rest - 2, rest + 2, 0xFFFF,
                        rng.randrange(65536)])
        value = (n & 0xFFFF).to_bytes(2, "big")
    elif kind in VALUES:
        v = rng.choice(VALUES[kind])
        value = v.to_bytes(size, "big")
    else:
        value = rng.randbytes(size) if rng.random() < 0.5 else bytes([rng.choice(BYTES)] * size)
    f[off:off + size] = value


def _header_pos(f: bytearray, rng: random.Random) -> int:
    """A position, mostly in the headers."""
    limit = len(f) if rng.random() < 0.15 else min(len(f), 120)
    return rng.randrange(limit)


def _fixup(f: bytearray, ips) -> None:
    """IP lengths made to cover the rest of the frame (innermost first) and IPv4 header
    checksums recomputed: the frame goes past the parser's length checks."""
    for l3, version in reversed(ips):
        if version == 4 and len(f) >= l3 + 20 and f[l3] >> 4 == 4:
            f[l3 + 2:l3 + 4] = min(len(f) - l3, 0xFFFF).to_bytes(2, "big")
            hlen = max(5, f[l3] & 0xF) * 4
            if len(f) >= l3 + hlen:
                f[l3 + 10:l3 + 12] = b"\0\0"
                f[l3 + 10:l3 + 12] = (0xFFFF - _sum16(bytes(f[l3:l3 + hlen]))).to_bytes(2, "big")
        elif version == 6 and len(f) >= l3 + 40 and f[l3] >> 4 == 6:
            f[l3 + 4:l3 + 6] = min(len(f) - l3 - 40, 0xFFFF).to_bytes(2, "big")


def mutate(seed_frame: bytes, other: bytes, rng: random.Random) -> bytes:
    f = bytearray(seed_frame)
    ops = 1 + (rng.random() < 0.45) + (rng.random() < 0.2) + (rng.random() < 0.08)
    for _ in range(ops):
        fields, bounds, ips = layout(f)
        r = rng.random()
        if r < 0.32:
            _set_field(f, rng, fields)
        elif r < 0.50:
            for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
                pos = _header_pos(f, rng)
                f[pos] ^= 1 << rng.randrange(8)
        elif r < 0.58:
            f[_header_pos(f, rng)] = rng.choice(BYTES) if rng.random() < 0.6 else rng.randrange(256)
        elif r < 0.68:                                  # truncate, often near a boundary
            if rng.random() < 0.6 and bounds:
                cut = rng.choice(bounds) + rng.choice([-2, -1, 0, 0, 1, 2, 4, 8])
            else:
                cut = rng.randrange(14, len(f) + 1)
            del f[max(14, cut):]
        elif r < 0.76:                                  # extend: padding or garbage
            k = rng.choice([1, 2, 4, 6, 8, 20, 40, 64, rng.randrange(1, 300)])
            f += bytes(k) if rng.random() < 0.5 else rng.randbytes(k)
        elif r < 0.83:                                  # insert or delete in the middle
            pos = rng.choice(bounds) if rng.random() < 0.6 else _header_pos(f, rng)
            k = rng.choice([1, 2, 4, 8, 20, 40])
            if rng.random() < 0.5:
                f[pos:pos] = rng.randbytes(k) if rng.random() < 0.5 else bytes(k)
            elif len(f) - k >= 14:
                del f[max(12, pos):max(12, pos) + k]
        elif r < 0.88:                                  # swap addresses or ports
            same = [(o, s) for o, s, kind in fields if kind in (ADDR4, ADDR6, PORT)]
            if len(same) >= 2:
                (o1, s1), (o2, s2) = rng.sample(same, 2)
                if s1 == s2 and max(o1, o2) + s1 <= len(f):
                    f[o1:o1 + s1], f[o2:o2 + s2] = f[o2:o2 + s2], f[o1:o1 + s1]
        elif r < 0.93:                                  # a VLAN tag more or less
            if f[12:14] in (b"\x81\x00", b"\x88\xa8") and rng.random() < 0.6:
                del f[12:16]
            else:
                f[12:12] = rng.choice([b"\x81\x00", b"\x88\xa8"]) + rng.randbytes(2)
        else:                                           # splice with another frame
            ob = layout(other)[1]
            a, b = rng.choice(bounds), rng.choice(ob)
            f = f[:a] + bytearray(other[b:])
            if len(f) < 14:
                f += bytes(14 - len(f))
        if len(f) < 14:
            f += bytes(14 - len(f))
    del f[MAX_FRAME:]
    if rng.random() < 0.4:
        _fixup(f, layout(f)[2])
    return bytes(f)


# -- reading a frame as the spec does (for the checks) ------------------------------------


@dataclass
class Ip:
    version: int
    l3: int                 # offset of the IP header
    end: int                # l3 + the length the header claims
    hlen: int               # IPv4 header length; IPv6: 40 (extension headers: l4 - l3)
    proto: int              # after IPv6 extension headers
    l4: int
    frag: bool
    src: bytes
    dst: bytes
    df: bool
    tos: int


def l2_of(f: bytes) -> Tuple[int, int]:
    """(L3 offset, ethertype), ethertype 0 when the frame cannot hold its header or tag."""
    if len(f) < 14:
        return 14, 0
    et = int.from_bytes(f[12:14], "big")
    if et in (ETH_8021Q, ETH_8021AD):
        if len(f) < 18:
            return 18, 0
        return 18, int.from_bytes(f[16:18], "big")
    return 14, et


def parse_ip(f: bytes, l3: int, version: int) -> Optional[Ip]:
    """The IP header at l3 per docs/datapath.md step 2, None when it is malformed."""
    n = len(f)
    if version == 4:
        if n < l3 + 20 or f[l3] >> 4 != 4 or f[l3] & 0xF < 5:
            return None
        hlen = (f[l3] & 0xF) * 4
        tot = int.from_bytes(f[l3 + 2:l3 + 4], "big")
        if tot < hlen or l3 + tot > n:
            return None
        fo = int.from_bytes(f[l3 + 6:l3 + 8], "big")
        return Ip(4, l3, l3 + tot, hlen, f[l3 + 9], l3 + hlen, bool(fo & 0x3FFF),
                  f[l3 + 12:l3 + 16], f[l3 + 16:l3 + 20], bool(fo & 0x4000), f[l3 + 1])
    if n < l3 + 40 or f[l3] >> 4 != 6:
        return None
    end = l3 + 40 + int.from_bytes(f[l3 + 4:l3 + 6], "big")
    if end > n:
        return None
    proto, off, frag = f[l3 + 6], l3 + 40, False
    for _ in range(4):
        if proto not in EXT_HEADERS and proto != FRAGMENT_HDR:
            break
        if off + 8 > n:
            return None
        if proto == FRAGMENT_HDR:
            frag, proto, off = True, f[off], off + 8
            break
        proto, off = f[off], off + (f[off + 1] + 1) * 8
    if not frag and (proto in EXT_HEADERS or proto == FRAGMENT_HDR):
        return None
    if off > end:
        return None
    tos = ((f[l3] & 0xF) << 4) | (f[l3 + 1] >> 4)
    return Ip(6, l3, end, 40, proto, off, frag, f[l3 + 8:l3 + 24], f[l3 + 24:l3 + 40], True,
              tos)


def ports_of(f: bytes, ip: Ip) -> Optional[Tuple[int, int]]:
    """(source, destination) port when the whole TCP/UDP header is in the IP packet."""
    need = 20 if ip.proto == TCP_ else 8
    if ip.l4 + need > ip.end:
        return None
    return int.from_bytes(f[ip.l4:ip.l4 + 2], "big"), int.from_bytes(f[ip.l4 + 2:ip.l4 + 4], "big")


def ip_of_frame(f: bytes) -> Optional[Ip]:
    l3, et = l2_of(f)
    if et == ETH_IP:
        return parse_ip(f, l3, 4)
    if et == ETH_IP6:
        return parse_ip(f, l3, 6)
    return None


def is_icmp_error(f: bytes, ip: Ip) -> bool:
    if ip.l4 >= len(f):
        return False
    kind = f[ip.l4]
    if ip.version == 4:
        return ip.proto == ICMP4 and kind in (3, 4, 5, 11, 12)
    return ip.proto == ICMP6 and kind < 128


def vip_of(f: bytes, steered: bool) -> Tuple[Optional[Vip], str, Optional[Ip]]:
    """The VIP a frame is traffic of (the packet's own, or for a steered ICMP error the
    flow it quotes), with a reason when there is none, and the packet's IP header."""
    ip = ip_of_frame(f)
    if ip is None:
        return None, "malformed by the spec's parse", None
    if ip.frag:
        return None, "a fragment", ip
    if not steered:
        if ip.proto not in (TCP_, UDP_):
            return None, f"protocol {ip.proto} is not TCP/UDP", ip
        ports = ports_of(f, ip)
        if ports is None:
            return None, "TCP/UDP header not whole inside the IP packet", ip
        vip = find_vip(ip.dst, ports[1], ip.proto)
        return vip, "" if vip else "no VIP has this destination", ip
    if ip.proto != (ICMP4 if ip.version == 4 else ICMP6):
        return None, "steered but not ICMP", ip
    q = ip.l4 + 8
    if ip.version == 4:
        if q + 20 > ip.end:
            return None, "quoted IPv4 header not inside the IP packet", ip
        qproto, qsrc, ql4 = f[q + 9], f[q + 12:q + 16], q + (f[q] & 0xF) * 4
    else:
        if q + 40 > ip.end:
            return None, "quoted IPv6 header not inside the IP packet", ip
        qproto, qsrc, ql4 = f[q + 6], f[q + 8:q + 24], q + 40
    if qproto not in (TCP_, UDP_):
        return None, f"quoted protocol {qproto}", ip
    if ql4 + 4 > ip.end:
        return None, ("quoted ports not inside the IP packet (read from beyond it: "
                      "Ethernet padding or nothing)"), ip
    vip = find_vip(qsrc, int.from_bytes(f[ql4:ql4 + 2], "big"), qproto)
    return vip, "" if vip else "the quoted flow is no VIP's", ip


def _sum16(data: bytes) -> int:
    """The one's complement sum of big-endian 16-bit words, folded."""
    if len(data) & 1:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _verifies(data: bytes) -> bool:
    return _sum16(data) == 0xFFFF


def _pseudo6(src: bytes, dst: bytes, length: int, nh: int) -> bytes:
    return src + dst + struct.pack("!IxxxB", length, nh)


def addressed_to_us(f: bytes) -> bool:
    """May this frame be the balancer's to act on? (To a VIP or local address, or ARP /
    a solicitation about an announced one.) Everything else must pass untouched."""
    l3, et = l2_of(f)
    if et == ETH_ARP:
        return f[l3 + 24:l3 + 28] in ANNOUNCED_ADDRS
    if et == ETH_IP:
        dst = f[l3 + 16:l3 + 20]
        return len(dst) == 4 and (dst in VIP_ADDRS or dst in LOCAL_ADDRS)
    if et == ETH_IP6:
        dst = f[l3 + 24:l3 + 40]
        return len(dst) == 16 and (dst in VIP_ADDRS or dst in LOCAL_ADDRS
                                   or f[l3 + 48:l3 + 64] in ANNOUNCED_ADDRS)
    return False


# -- the checks of one frame ---------------------------------------------------------------


class Violation(Exception):
    pass


def need(cond: bool, what: str) -> None:
    if not cond:
        raise Violation(what)


def check_shortened(f: bytes, ip: Ip, inner: bytes, h: int) -> None:
    """`inner` is the steered ICMP error of `f`, too big to tunnel whole, cut to its IP
    header(s), its ICMP header and the first STEER_QUOTE bytes of its quote, with the IP
    length and the checksums written afresh (an ICMP error is never answered with one)."""
    l3, l4 = ip.l3, ip.l4
    hlen = l4 - l3
    need(ip.end - l3 + h > MTU, "a steered ICMP error was cut though it fitted")
    need(len(inner) == hlen + 8 + STEER_QUOTE and len(inner) + h <= MTU,
         f"steered ICMP error cut to {len(inner)} bytes (headers {hlen} + 8 + {STEER_QUOTE})")
    if ip.version == 4:
        need(inner[:2] + inner[4:10] + inner[12:hlen] == f[l3:l3 + 2] + f[l3 + 4:l3 + 10]
             + f[l3 + 12:l4] and int.from_bytes(inner[2:4], "big") == len(inner),
             "cut ICMP error: IPv4 header")
        need(_verifies(inner[:hlen]), "cut ICMP error: IPv4 checksum does not verify")
        icmp = inner[hlen:]
        need(_verifies(icmp), "cut ICMP error: ICMP checksum does not verify")
    else:
        need(inner[:4] + inner[6:hlen] == f[l3:l3 + 4] + f[l3 + 6:l4]
             and int.from_bytes(inner[4:6], "big") == len(inner) - 40,
             "cut ICMPv6 error: IPv6 header")
        icmp = inner[hlen:]
        need(_verifies(_pseudo6(ip.src, ip.dst, len(icmp), ICMP6) + icmp),
             "cut ICMPv6 error: checksum does not verify")
    need(icmp[:2] + icmp[4:] == f[l4:l4 + 2] + f[l4 + 4:l4 + 8 + STEER_QUOTE],
         "cut ICMP error: ICMP header or quote changed")


def check_encap(f: bytes, out: bytes, vip: Vip, ip: Ip, *, steered: bool = False,
                passed: bool = False) -> int:
    """`out` is `f` encapsulated to one of `vip`'s backends (a steered ICMP error perhaps
    cut to fit: check_shortened); returns the backend id. `passed`: handed to the kernel to
    forward, so an outer IPv4 source that is one of this node's addresses (src4 here) is
    replaced by the client's: Linux drops a packet to forward from its own address."""
    l3 = ip.l3
    oet = int.from_bytes(out[l3 - 2:l3], "big") if len(out) >= l3 else 0
    need(oet in (ETH_IP, ETH_IP6), f"encapsulation with ethertype {oet:#06x}")
    h = 20 if oet == ETH_IP else 40
    need(out[12:l3 - 2] == f[12:l3 - 2], "VLAN tag not kept")
    inner = out[l3 + h:]
    if inner == f[l3:]:
        inner_len = ip.end - l3
    else:
        need(steered, "inner packet (or the padding after it) changed")
        check_shortened(f, ip, inner, h)
        inner_len = len(inner)
    o = out[l3:l3 + h]
    need(len(o) == h, "outer header cut short")
    if h == 20:
        need(ip.version == 4, "IPv6 inside an outer IPv4 header")
        need(o[0] == 0x45, f"outer IPv4 version/IHL {o[0]:#04x}")
        need(int.from_bytes(o[2:4], "big") == 20 + inner_len,
             f"outer tot_len {int.from_bytes(o[2:4], 'big')} for inner {inner_len}")
        need(_verifies(o), "outer IPv4 checksum does not verify")
        need(o[8] == L.TTL and o[9] == IPIP, f"outer TTL {o[8]} / protocol {o[9]}")
        need(o[4:6] == b"\0\0", "outer IPv4 id not 0")
        need(o[1] == ip.tos, "TOS not copied")
        fo = int.from_bytes(o[6:8], "big")
        need(fo == (0x4000 if ip.df else 0), f"outer flags/offset {fo:#06x} (inner DF {ip.df})")
        if passed:
            need(o[12:16] == ip.src, "outer IPv4 source of a packet passed to the kernel to "
                 "forward is not the client's (src4 is a local address: a martian)")
        else:
            need(ipaddress.ip_address(o[12:16]) in SRC4_NET, "outer IPv4 source not in src4")
        dst = o[16:20]
    else:
        need(o[0] >> 4 == 6, "outer IPv6 version")
        need(int.from_bytes(o[4:6], "big") == inner_len,
             f"outer payload length {int.from_bytes(o[4:6], 'big')} for inner {inner_len}")
        need(o[6] == (IPIP if ip.version == 4 else IPV6_IN) and o[7] == L.TTL,
             f"outer next header {o[6]} / hop limit {o[7]}")
        need(((o[0] & 0xF) << 4 | o[1] >> 4) == ip.tos, "traffic class not copied")
        # the prefix, host bits from the hash in (at most) the last 32 bits only
        need(o[8:20] == SRC6_NET.network_address.packed[:12], "outer IPv6 source not in "
             "src6 (or host bits above the last 32 set)")
        label = int.from_bytes(o[1:4], "big") & 0xFFFFF
        need(label == int.from_bytes(o[20:24], "big") & (L.CHAIN_LABEL - 1),
             "flow label and outer source disagree about the flow hash")
        dst = o[24:40]
    bid = BY_ADDR.get(dst)
    need(bid in vip.backends,
         f"outer destination {ipaddress.ip_address(dst)} is not a backend of VIP {vip.vid}")
    return bid


def check_forward(f: bytes, out: bytes, action: int, ingress: int, vip: Vip, ip: Ip,
                  fib_egress: Optional[int], steered: bool) -> None:
    """A frame sent on (XDP_TX / redirect) for `vip`; `fib_egress`: the interface the FIB
    routes backends without a cached next hop to."""
    if vip.mode == L.MODE_L2:
        need(len(out) == len(f) and out[12:] == f[12:], "L2 DSR changed more than the MACs")
        ids = BY_MAC.get(out[:6], set()) & vip.backends
        need(bool(ids), f"L2 DSR to MAC {out[:6].hex()}, no backend of VIP {vip.vid}")
        need(out[6:12] in (EGRESS_MAC, VETH0_MAC), "L2 DSR source MAC")
    else:
        need(vip.mode == L.MODE_IPIP, f"VIP {vip.vid} in mode {vip.mode} forwarded")
        bid = check_encap(f, out, vip, ip, steered=steered)
        b = BACKENDS[bid]
        want = (b.mac, EGRESS_MAC) if b.cached else (FIB_NEIGH_MAC, VETH0_MAC)
        need((out[:6], out[6:12]) == want, f"MACs {out[:12].hex()} for backend {bid}")
        ids = {bid}
    egress = {BACKENDS[i].cached or fib_egress for i in ids}
    if len(egress) == 1 and None not in egress:
        (ifindex,) = egress
        need((action == TX) == (ifindex == ingress),
             f"{ACTION_NAMES[action]} to ifindex {ifindex}, arriving on {ingress}")


def check_icmp_sent(f: bytes, out: bytes, ip: Ip, vip: Vip) -> None:
    need(not is_icmp_error(f, ip), "ICMP error sent in reply to an ICMP error "
         "(RFC 1122 3.2.2, RFC 4443 2.4 e)")
    # an L2 VIP's path has the room: even tunnelled for want of a neighbour, too big drops
    need(vip.mode == L.MODE_IPIP, f"too-big error for a VIP in mode {vip.mode}")
    l3 = ip.l3
    need(out[:6] == f[6:12] and out[6:12] == f[:6], "ICMP error: MACs not reversed")
    need(out[12:l3 - 2] == f[12:l3 - 2], "ICMP error: VLAN tag not kept")
    inner_len = ip.end - l3
    if ip.version == 4:
        quote = f[l3:l3 + ip.hlen + 8]
        o = out[l3:]
        need(len(o) == 28 + len(quote), f"ICMP error of {len(o)} bytes")
        # IPIP (20 bytes) or IPv4-in-IPv6 (40): the MTU it announces says which
        h = MTU - int.from_bytes(o[26:28], "big")
        need(h in (20, 40) and inner_len + h > MTU,
             f"frag-needed (MTU {MTU - h}) for a packet of {inner_len} bytes")
        need(o[0] == 0x45 and int.from_bytes(o[2:4], "big") == len(o) and o[9] == ICMP4
             and o[8] == L.TTL, "ICMP error: outer IPv4 header")
        need(_verifies(o[:20]), "ICMP error: IPv4 checksum")
        need(o[12:16] == ip.dst and o[16:20] == ip.src, "ICMP error: addresses not reversed")
        need(o[20] == 3 and o[21] == 4, "ICMP error: type/code")
        need(_verifies(o[20:]), "ICMP error: ICMP checksum")
        need(o[28:] == quote, "ICMP error: quote")
    else:
        need(inner_len + 40 > MTU, f"packet-too-big for a packet of {inner_len} bytes")
        quote = f[l3:l3 + min(128, inner_len & ~1)]
        o = out[l3:]
        need(len(o) == 48 + len(quote), f"ICMPv6 error of {len(o)} bytes")
        need(o[0] >> 4 == 6 and int.from_bytes(o[4:6], "big") == 8 + len(quote)
             and o[6] == ICMP6 and o[7] == L.TTL, "ICMPv6 error: IPv6 header")
        need(o[8:24] == ip.dst and o[24:40] == ip.src, "ICMPv6 error: addresses not reversed")
        need(o[40] == 2 and o[41] == 0, "ICMPv6 error: type/code")
        need(_verifies(_pseudo6(o[8:24], o[24:40], len(o) - 40, ICMP6) + o[40:]),
             "ICMPv6 error: checksum")
        need(int.from_bytes(o[44:48], "big") == max(1280, MTU - 40), "ICMPv6 error: MTU")
        need(o[48:] == quote, "ICMPv6 error: quote")


def check_arp(f: bytes, out: bytes) -> None:
    l3, _ = l2_of(f)
    a = f[l3:l3 + 28]
    need(len(a) == 28 and a[:8] == b"\x00\x01\x08\x00\x06\x04\x00\x01",
         "ARP reply to something that is no Ethernet/IPv4 ARP request")
    need(a[24:28] in ANNOUNCED_ADDRS, "ARP reply for an address not announced")
    need(len(out) == len(f) and out[l3 + 28:] == f[l3 + 28:], "ARP reply: length or trailer")
    need(out[:6] == f[6:12] and out[6:12] == ANNOUNCE_MAC and out[12:l3] == f[12:l3],
         "ARP reply: Ethernet header")
    r = out[l3:l3 + 28]
    need(r[:8] == b"\x00\x01\x08\x00\x06\x04\x00\x02" and r[8:14] == ANNOUNCE_MAC
         and r[14:18] == a[24:28] and r[18:24] == a[8:14] and r[24:28] == a[14:18],
         "ARP reply body")


def check_ndp(f: bytes, out: bytes) -> None:
    l3, et = l2_of(f)
    need(et == ETH_IP6 and len(f) >= l3 + 64, "NDP reply to a frame too short for a solicitation")
    plen = int.from_bytes(f[l3 + 4:l3 + 6], "big")
    need(f[l3 + 6] == ICMP6 and f[l3 + 7] == 255, "NDP reply: next header / hop limit")
    need(plen >= 24, f"NDP reply to a solicitation that is not inside its IPv6 payload "
         f"(payload length {plen})")
    need(f[l3 + 40] == 135 and f[l3 + 41] == 0, "NDP reply to something that is no solicitation")
    asker, target = f[l3 + 8:l3 + 24], f[l3 + 48:l3 + 64]
    need(asker != bytes(16), "NDP reply to duplicate address detection")
    need(target in ANNOUNCED_ADDRS, "NDP reply for a target not announced")
    need(len(out) == l3 + 72, f"NDP reply of {len(out)} bytes")
    need(out[:6] == f[6:12] and out[6:12] == ANNOUNCE_MAC and out[12:l3] == f[12:l3],
         "NDP reply: Ethernet header")
    o = out[l3:]
    need(o[:4] == b"\x60\0\0\0" and o[4:8] == b"\x00\x20\x3a\xff", "NDP reply: IPv6 header")
    need(o[8:24] == target and o[24:40] == asker, "NDP reply: addresses")
    need(o[40] == 136 and o[41] == 0 and o[44:48] == b"\x60\0\0\0" and o[48:64] == target
         and o[64:66] == b"\x02\x01" and o[66:72] == ANNOUNCE_MAC, "NDP reply: advertisement")
    need(_verifies(_pseudo6(target, asker, 32, ICMP6) + o[40:72]), "NDP reply: checksum")


def check_decap(f: bytes, out: bytes, balancer: bool) -> None:
    outer = ip_of_frame(f)
    need(outer is not None, "decapsulated a malformed packet")
    need(outer.proto in (IPIP, IPV6_IN), f"decapsulated protocol {outer.proto}")
    need(outer.l4 - outer.l3 == (20 if outer.version == 4 else 40),
         "decapsulated despite IPv4 options or IPv6 extension headers")
    need(not outer.frag, "decapsulated a fragment")
    need(any(ipaddress.ip_address(outer.src) in n for n in DECAP_SOURCES
             if n.version == (4 if outer.version == 4 else 6)),
         "decapsulated from a source not allowed")
    if balancer:
        need(outer.dst in LOCAL_ADDRS, "decapsulated a packet not for a local address")
    inner = parse_ip(f, outer.l4, 4 if outer.proto == IPIP else 6)
    need(inner is not None, "inner packet malformed")
    need(inner.end == outer.end, "inner packet does not end where the outer one does")
    need(not inner.frag, "inner packet is a fragment")
    if balancer:
        need(inner.dst in VIP_ADDRS, "inner destination is no VIP address")
        if inner.proto in (TCP_, UDP_):
            ports = ports_of(f, inner)
            need(ports is not None and find_vip(inner.dst, ports[1], inner.proto) is not None,
                 "inner TCP/UDP packet for no VIP")
    else:
        need(inner.dst in DECAP_VIPS, "inner destination is no VIP given to decap.o")
    et = (ETH_IP if inner.version == 4 else ETH_IP6).to_bytes(2, "big")
    l3 = outer.l3
    need(out == f[:l3 - 2] + et + f[outer.l4:], "decapsulated frame is not the inner packet "
         "under the frame's Ethernet header")


def check_frame(prog: str, f: bytes, action: int, out: bytes, moved: Dict[str, int],
                ingress: int, fib_egress: Optional[int] = None) -> str:
    """Every invariant of one frame; returns its outcome name (raises Violation)."""
    need(action != ABORTED, "XDP_ABORTED")
    need(action in ACTION_NAMES, f"return code {action}")
    need(all(d == 1 for d in moved.values()), f"a counter moved by more than one: {moved}")
    outcomes = [n for n in moved if n not in AUXILIARY]
    need(len(outcomes) == 1, f"{len(outcomes)} outcome counters moved: {moved}")
    outcome = outcomes[0]
    need(sum(1 for n in moved if n in FLOW_LOOKUPS) <= 1, f"several flow lookups: {moved}")
    need(metrics.MIDSTREAM_MISSES not in moved or "flow_miss" in moved,
         f"midstream miss without a miss: {moved}")
    label, reason = metrics.action_of(outcome)
    if label in ACTION_OF_LABEL:
        need(action == ACTION_OF_LABEL[label],
             f"{ACTION_NAMES[action]} for outcome {outcome} ({label})")
    untouched = action == PASS and out == f
    if prog == "decap":
        need(action == PASS, f"decap.o returned {ACTION_NAMES[action]}")
        if outcome == "decap":
            check_decap(f, out, balancer=False)
        else:
            need(untouched, f"{outcome}: the frame was changed")
        return outcome
    if not addressed_to_us(f):
        need(untouched, f"{outcome}: a frame for no VIP, local or announced address "
             f"did not pass untouched ({ACTION_NAMES[action]})")
    steered = metrics.ICMP_STEERED in moved
    known = outcome in UNTOUCHED_PASSES | VIP_OUTCOMES | {"decap", "arp_reply", "ndp_reply"}
    vip = ip = None
    if outcome in VIP_OUTCOMES or steered or (not known and label != "drop"):
        vip, why, ip = vip_of(f, steered)
        need(vip is not None, f"{outcome}{' (steered)' if steered else ''} for no VIP: {why}")
    if outcome in UNTOUCHED_PASSES:
        need(untouched, f"{outcome}: the frame was changed")
    elif outcome == "decap":
        check_decap(f, out, balancer=True)
    elif outcome in ("tx", "redirect"):
        check_forward(f, out, action, ingress, vip, ip, fib_egress, steered)
    elif outcome == "icmp_sent":
        check_icmp_sent(f, out, ip, vip)
    elif outcome == "arp_reply":
        check_arp(f, out)
    elif outcome == "ndp_reply":
        check_ndp(f, out)
    elif outcome == "drop_source_range":
        need(not steered and vip.flags & L.VIP_SOURCE_RANGES and not admitted(vip, ip.src),
             "source-range drop of a client the VIP admits")
    elif label == "pass" and "no_neigh" in reason:
        # tunnelled to the backend, in every mode, and handed to the kernel to forward: as
        # it came, the kernel would route it by the VIP and never resolve the backend
        need(not untouched, f"{outcome}: passed up as it came, not tunnelled to the backend")
        need(out[:12] == f[:12], f"{outcome}: MACs changed")
        check_encap(f, out, vip, ip, steered=steered, passed=True)
    elif label == "pass":
        need(untouched, f"{outcome}: the frame was changed")
    elif label in ("tx", "redirect"):
        check_forward(f, out, action, ingress, vip, ip, fib_egress, steered)
    return outcome


# -- running ---------------------------------------------------------------------------------


class Counters:
    """The global counters, read whole after every frame (one batch lookup): what moved."""

    def __init__(self, dp):
        self.map = dp.maps.stats
        keys, values, count = self.map.lookup_batch()
        assert list(array("I", keys)) == list(range(count))
        ncpus = self.map.ncpus
        assert self.map.percpu_value_size == 8
        self.names = [L.STAT_NAMES[i // ncpus] if i // ncpus < len(L.STAT_NAMES)
                      else f"stat_{i // ncpus}" for i in range(count * ncpus)]
        self.raw = values

    def moved(self) -> Dict[str, int]:
        _, values, _ = self.map.lookup_batch()
        if values == self.raw:
            return {}
        out: Dict[str, int] = {}
        for name, a, b in zip(self.names, array("Q", values), array("Q", self.raw)):
            if a != b:
                out[name] = out.get(name, 0) + a - b
        self.raw = values
        return out


@dataclass
class Run:
    prog: str
    seed: int
    mutations: int = 0
    outcomes: Counter = field(default_factory=Counter)
    also: Counter = field(default_factory=Counter)      # flow lookups, steered ICMP
    actions: Counter = field(default_factory=Counter)
    by_seed: Dict[str, Counter] = field(default_factory=dict)
    violations: int = 0
    kinds: Counter = field(default_factory=Counter)
    reported: List[str] = field(default_factory=list)
    seconds: float = 0.0

    def violation(self, index: int, name: str, ingress_name: str, f: bytes, action: int,
                  out: bytes, moved, what: str) -> None:
        self.violations += 1
        kind = re.sub(r"[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,}|\d+\.\d+\.\d+\.\d+", "ADDR", what)
        self.kinds[re.sub(r"(?<!RFC )(?<![\w.])\d+(?![\w.])", "N", kind)[:120]] += 1
        if len(self.reported) < MAX_REPORTED:
            self.reported.append(
                f"[{self.prog} seed {self.seed} mutation {index} of corpus frame {name!r}, "
                f"ingress {ingress_name}] {what}\n"
                f"  action {ACTION_NAMES.get(action, action)}, counters moved {moved}\n"
                f"  frame  {f.hex()}\n  output {out.hex()}\n"
                f"  replay: PYXLB_FUZZ_REPLAY={self.prog}:{ingress_name}:{f.hex()} "
                f".venv/bin/python -m pytest tests/fuzz/test_packet_mutations.py -k replay")

    def summary(self) -> dict:
        return {"mutations": self.mutations, "seed": self.seed,
                "seconds": round(self.seconds, 2),
                "per_second": round(self.mutations / self.seconds) if self.seconds else None,
                "outcomes": dict(self.outcomes.most_common()),
                "also_counted": dict(self.also.most_common()),
                "actions": dict(self.actions.most_common()),
                "violations": self.violations, "violation_kinds": dict(self.kinds),
                "examples": self.reported,
                "corpus": {k: dict(v.most_common()) for k, v in sorted(self.by_seed.items())}}


def run_one(dp, prog: str, f: bytes, ingress_name: str, ifindex: Dict[str, int],
            counters: Counters):
    ctx = None if ingress_name == "lo" else P.xdp_md(len(f), ifindex[ingress_name])
    action, out, _ = dp.prog.test_run(f, 1, ctx)
    return action, out, counters.moved()


def fuzz(dp, prog: str, corpus: List[Tuple[str, bytes]], count: int, seed: int,
         ifindex: Dict[str, int]) -> Run:
    run = Run(prog, seed)
    counters = Counters(dp)
    ingresses = ["lo"] + (["veth0"] if prog == "balancer" and "veth0" in ifindex else [])
    started = time.perf_counter()
    for index in range(count):
        rng = random.Random(f"{prog}:{seed}:{index}")
        name, base = rng.choice(corpus)
        # one frame in twenty goes unmutated: the flows and replies of valid traffic
        f = base if rng.random() < 0.05 else mutate(base, rng.choice(corpus)[1], rng)
        ingress = rng.choice(ingresses) if rng.random() < 0.3 else "lo"
        action, out, moved = run_one(dp, prog, f, ingress, ifindex, counters)
        try:
            outcome = check_frame(prog, f, action, out, moved,
                                  1 if ingress == "lo" else ifindex[ingress],
                                  ifindex.get("veth0"))
        except Violation as e:
            outcome = "|".join(n for n in moved if n not in AUXILIARY) or "none"
            run.violation(index, name, ingress, f, action, out, moved, str(e))
        run.outcomes[outcome] += 1
        run.also.update(n for n in moved if n in AUXILIARY)
        run.actions[ACTION_NAMES.get(action, str(action))] += 1
        run.by_seed.setdefault(name, Counter())[outcome] += 1
    run.mutations = count
    run.seconds = time.perf_counter() - started
    return run


def report(run: Run) -> None:
    summary = run.summary()
    print(f"\n{run.prog}: {run.mutations} mutations (seed {run.seed}) in {run.seconds:.1f} s, "
          f"{run.violations} violations")
    for name, n in summary["outcomes"].items():
        print(f"  {name:20} {n:9}")
    for name, n in summary["also_counted"].items():
        print(f"  {'(' + name + ')':20} {n:9}")
    if REPORT:
        try:
            with open(REPORT) as fh:
                data = json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        data[f"mutations_{run.prog}"] = summary
        with open(REPORT, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")


def failure(run: Run) -> str:
    kinds = "\n".join(f"  {n:6}  {k}" for k, n in run.kinds.most_common())
    return (f"{run.violations} of {run.mutations} mutated frames broke an invariant of "
            f"{run.prog} (PYXLB_FUZZ_SEED={run.seed}); by kind:\n{kinds}\nfirst ones:\n"
            + "\n".join(run.reported))


def _share(prog: str) -> int:
    return MUTATIONS * SHARES[prog] // sum(SHARES.values())


@pytest.fixture(scope="module")
def corpora():
    return {"balancer": balancer_corpus(), "decap": decap_corpus()}


def test_corpus_is_valid_traffic(netns, corpora):
    """Every seed frame, unmutated, from both interfaces: no invariant broken, and the
    corpus reaches the outcomes it was written for (so the mutations start from there)."""
    ifindex = P.fib_namespace(netns)
    seen: Counter = Counter()
    broken = []
    with enter_netns(netns):
        for prog, corpus in corpora.items():
            assert len({n for n, _ in corpus}) == len(corpus), f"{prog}: corpus names repeat"
            dp = build_balancer(ifindex) if prog == "balancer" else build_decap()
            with dp:
                counters = Counters(dp)
                for name, f in corpus:
                    for ingress in ("lo", "veth0") if prog == "balancer" else ("lo",):
                        action, out, moved = run_one(dp, prog, f, ingress, ifindex, counters)
                        try:
                            seen[check_frame(prog, f, action, out, moved,
                                             1 if ingress == "lo" else ifindex[ingress],
                                             ifindex["veth0"])] += 1
                        except Violation as e:
                            broken.append(f"{prog} corpus frame {name!r} from {ingress}: {e} "
                                          f"(counters moved {moved})\n  frame  {f.hex()}\n"
                                          f"  output {out.hex()}")
    assert not broken, "\n".join(broken)
    missing = CORPUS_OUTCOMES - set(seen)
    assert not missing, f"the corpus no longer reaches {sorted(missing)}: {dict(seen)}"


def test_balancer_mutations(netns, corpora):
    ifindex = P.fib_namespace(netns)
    with enter_netns(netns):
        dp = build_balancer(ifindex)
        with dp:
            run = fuzz(dp, "balancer", corpora["balancer"], _share("balancer"), SEED, ifindex)
    report(run)
    assert run.violations == 0, failure(run)
    missing = FUZZ_OUTCOMES["balancer"] - set(run.outcomes)
    assert not missing or run.mutations < 5000, f"the fuzzer never reached {sorted(missing)}"


def test_decap_mutations(corpora):
    with build_decap() as dp:
        run = fuzz(dp, "decap", corpora["decap"], _share("decap"), SEED, {})
    report(run)
    assert run.violations == 0, failure(run)
    missing = FUZZ_OUTCOMES["decap"] - set(run.outcomes)
    assert not missing or run.mutations < 2000, f"the fuzzer never reached {sorted(missing)}"


# Frames this fuzzer once found violating (kept as regressions; each replays as
# PYXLB_FUZZ_REPLAY would): an ICMP error whose quoted ports lay in Ethernet padding, one
# whose quoted IP header did, and an NDP solicitation with IPv6 payload length 0.
FOUND = (
    "balancer:lo:0200000000aa02000000000108004500003007770000fa01ed4ac00002010a00000a0304f7"
    "8300000578450005dc432140003c06c1bc0a00000ac633640100509c40000013880000000000000000",
    "balancer:veth0:0200000000aaffffffffffff08004500002807770000fa01ed42c00002010a00000a03"
    "042bdc000005784500001c00014000401106920a00000ac633640100359c4000082f2a0000",
    "balancer:lo:3333ff00001002000000000186dd6000000000003afffd00000000000000000000000000"
    "0001ff0200000000000000000001ff0000108700808500000000fd000000000000000000000000000010",
)


@pytest.mark.parametrize("replay", (REPLAY,) if REPLAY else FOUND)
def test_replay(netns, replay):
    """One frame (as a violation message prints it) through a fresh world, every check:
    the frames in FOUND, or the one PYXLB_FUZZ_REPLAY names."""
    prog, ingress, hexframe = replay.split(":")
    f = bytes.fromhex(hexframe)
    ifindex = P.fib_namespace(netns) if prog == "balancer" else {}
    with enter_netns(netns):
        dp = build_balancer(ifindex) if prog == "balancer" else build_decap()
        with dp:
            counters = Counters(dp)
            action, out, moved = run_one(dp, prog, f, ingress, ifindex, counters)
    print(f"action {ACTION_NAMES.get(action, action)}, counters moved {moved}\n"
          f"--- input ---\n{P.describe(f)}\n--- output ---\n{P.describe(out)}")
    check_frame(prog, f, action, out, moved, 1 if ingress == "lo" else ifindex[ingress],
                ifindex.get("veth0"))
