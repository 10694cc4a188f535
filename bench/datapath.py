"""Nanoseconds per packet through the XDP balancer (BPF_PROG_TEST_RUN), beside an empty program.

Run as root: `make bench` (or .venv/bin/python bench/datapath.py [--quick]).
Prints a table and writes bench/results/datapath.json.

The programs are the entries of xdp/bench/bench.bpf.c (built into pyxlb/bpf/bench_bench.o),
which includes the balancer's headers unchanged and has its own copy of the balancer's maps:

  bench_direct    xlb_handle_frame(), as balancer.bpf.c's entry runs it
  bench_balancer  the same, with the first 128 bytes of the frame saved before and put back
                  after (head adjustment undone), so `repeat=N` forwards N identical packets
  bench_wrapper   that save and restore around a call that does nothing
  bench_empty     return XDP_PASS

Packets the balancer passes untouched (not a VIP) are timed through bench_direct. Packets it
encapsulates are timed through bench_balancer; their "net" figure subtracts the wrapper's
overhead (bench_wrapper minus bench_empty, paired within each round). Ratios are to
bench_empty of the same round. Rounds run every case once, in turn, so slow drift of the
machine touches all cases alike; a figure is the median over rounds.

Stateless mode (docs/datapath.md, "Stateless mode") adds two kinds of row. On the balancer:
a stateless VIP's packet with no recent change of its ring slot, and one whose slot has a
previous owner to carry. On a backend, through the balancer's inline decapsulation (the
same code as decap.bpf.c's): a tunnelled packet without a chain id, one with a chain id
whose connection has a socket here (the socket lookup), one whose connection is only in
conntrack here (a node that DNATs the VIP, as kube-proxy does: the socket lookup misses,
the conntrack lookup finds it), and one with neither (re-tunnelled to its previous owner
through the FIB). The backend rows run in a network namespace the bench makes and removes
(a veth pair, the peer's neighbour entry, the VIP and the client's address on its loopback,
a real TCP connection between them, and one more through an nftables DNAT of VIP:NAT_PORT
to POD_PORT), with the ctx's ingress interface there: the FIB, socket and conntrack
lookups look in that namespace.

`--only KEY,...` times those cases alone (beside the empty program and the wrapper, which
every figure needs) and writes bench/results/datapath_only.json instead.

Every timed run is checked before its number is kept: the action; the buffer after the
last iteration (the input packet: untouched, or restored); and the counters, which must
have moved by exactly N (xlb_stats, per-VIP and per-backend), nothing else moving. Before
timing, one run of bench_direct per case must produce the exact packet that this script
builds itself with scapy (outer header from its own copy of the flow hash). A case failing
a check gets no number.
"""

import argparse
import contextlib
import dataclasses
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from ipaddress import IPv4Network, IPv6Network, ip_address
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests.support

from common import machine_info, write_results  # noqa: E402

from scapy.layers.inet import IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import IPv6  # noqa: E402
from scapy.layers.l2 import Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

from pyxlb import _bpf  # noqa: E402
from pyxlb import _layouts as L  # noqa: E402
from pyxlb.addr import parse_addr  # noqa: E402
from pyxlb.bpf import object_path  # noqa: E402
from pyxlb.chain import chain_id  # noqa: E402
from pyxlb.datapath import Datapath, maps  # noqa: E402
from pyxlb.datapath.vipindex import VipIndex  # noqa: E402
from pyxlb.maglev import build_table  # noqa: E402
from pyxlb.netns import enter as enter_netns  # noqa: E402
from pyxlb.plan import BackendRecord, VipRecord  # noqa: E402
from pyxlb.state import VipKey  # noqa: E402

from tests.support.model import FlowKey, flow_hash, ring_slot  # noqa: E402

BENCH_OBJECT = "bench_bench"
FRAME_LEN = 128             # = BENCH_SAVE in bench.bpf.c: the wrapper restores all of it
RING_SIZE = L.RING_SIZE_DEFAULT
SEED = 0x5EED1234
SRC4 = "10.255.0.0/16"      # outer sources: the flow hash fills the host bits
SRC6 = "2001:db8:ffff::/96"
CLIENT_MAC, LB_MAC, NEXT_HOP_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"
# BPF_PROG_TEST_RUN without a ctx runs as if received on the loopback device (ifindex 1):
# a next hop on ifindex 1 is "out of the receiving interface", i.e. XDP_TX.
TEST_RUN_IFINDEX = 1

CLIENT4, VIP4, OTHER4 = "198.51.100.7", "192.0.2.10", "192.0.2.99"
CLIENT6, VIP6, OTHER6 = "2001:db8:1::7", "2001:db8:100::10", "2001:db8:100::99"
BACKENDS4 = {i: f"10.1.0.{i}" for i in range(1, 9)}
BACKENDS6 = {i: f"2001:db8:200::{i - 10:x}" for i in range(11, 19)}
RING4, RING6 = 1, 2
# the same tables again, for stateless VIPs whose every slot has a previous owner
RING4_MOVED, RING6_MOVED = 3, 4
# the balancer's own share: rings whose every slot is this node (LOCAL_ID), one whose every
# slot had PEER4 before (RING_LOCAL_MOVED), one unchanged; the client port of a real
# connection in the bench's namespace to the moved one's VIP port (LOCAL_PORT)
RING_LOCAL_MOVED, RING_LOCAL = 5, 6
LOCAL_ID = 9
LOCAL_PORT, LOCAL_HERE_PORT = 9082, 40014
# stateless mode on a backend: this node's own address (tunnels to it are decapsulated
# inline), the previous owner a chained packet goes to (a neighbour of veth0 in the bench's
# namespace), and the client port of the real connection there; the VIP port the namespace
# DNATs to POD_PORT (VIPS["tcp4_nft"]'s) and the client port of the connection through it
LOCAL4 = "10.3.0.1"
PEER4 = "10.3.0.5"
PEER_MAC = "02:00:00:00:03:05"
HERE_PORT = 40010
NAT_PORT, POD_PORT = 8080, 9376
CT_PORT = 40012
NS_NAME = f"xlbbench-{os.getpid()}"
PROTO_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp"}

TARGETS = {"not_vip": 3.0, "established_v4": 8.0, "new_flow": 10.0}
# Figures of a widely used XDP balancer measured on this kind of VM (ns per packet).
REFERENCE = {"empty": 12, "not-a-VIP": 73, "established TCP": 150, "UDP": 188}

XDP_NAMES = {_bpf.XDP_ABORTED: "XDP_ABORTED", _bpf.XDP_DROP: "XDP_DROP",
             _bpf.XDP_PASS: "XDP_PASS", _bpf.XDP_TX: "XDP_TX",
             _bpf.XDP_REDIRECT: "XDP_REDIRECT"}


class CheckFailed(Exception):
    """A case did not do what it should: no number is printed for it."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


# -- loading ------------------------------------------------------------------------------

class _BenchDatapath(Datapath):
    """The production loader and map accessors, pointed (through SPEC, which is what a
    subclass of Datapath sets) at the bench object's wrapper entry. Nothing else is
    overridden."""

    SPEC = dataclasses.replace(maps.BALANCER, object=BENCH_OBJECT, program="bench_balancer",
                               jumps=(maps.JUMPS, ("bench_chain_local",)))


def load():
    """The bench object loaded twice over one set of balancer maps: once through Datapath
    (its accessors fill the maps; its program is bench_balancer), once more for the other
    entries, reusing those maps so bench_direct sees the same VIPs, flows and counters."""
    dp = _BenchDatapath.load()
    progs = {"balancer": dp.prog}
    obj = _bpf.BpfObject.open(object_path(BENCH_OBJECT))
    try:
        for name in maps.BALANCER.maps.values():
            obj.reuse_map(name, dp.maps[name])
        obj.load()
        # its own tail calls (a prog array is private to the programs that share it),
        # held open as long as the programs
        progs["jumps_direct"] = maps.fill_jumps(obj, _BenchDatapath.SPEC)
        for short in ("direct", "wrapper", "empty"):
            progs[short] = obj.program(f"bench_{short}")
    finally:
        obj.close()
    return dp, progs


# -- the flow hash and the packets we expect -----------------------------------------------

def outer_src4(hash_: int) -> str:
    net = IPv4Network(SRC4)
    host_mask = (1 << (32 - net.prefixlen)) - 1
    return str(ip_address(int(net.network_address) | (hash_ & host_mask)))


def outer_src6(hash_: int) -> str:
    net = IPv6Network(SRC6)
    host_mask = (1 << min(32, 128 - net.prefixlen)) - 1
    return str(ip_address(int(net.network_address) | (hash_ & host_mask)))


def client_frame(src: str, dst: str, l4) -> bytes:
    """Client -> destination, padded to FRAME_LEN with payload (not Ethernet padding)."""
    ip = IP(src=src, dst=dst, flags="DF", ttl=64) if ":" not in dst else IPv6(src=src, dst=dst)
    pkt = Ether(src=CLIENT_MAC, dst=LB_MAC) / ip / l4
    frame = bytes(pkt / Raw(b"\x00" * (FRAME_LEN - len(pkt))))
    assert len(frame) == FRAME_LEN
    return frame


def expected_encap(frame: bytes, backend: str, hash_: int, chain: int = 0) -> bytes:
    """The frame as the balancer sends it to `backend`: IPIP, IP6IP6 or IPv4-in-IPv6 with
    the next hop's MACs; outer source and IPv6 flow label from the flow hash; `chain`, a
    previous owner, in the IPv4 id (DF) or the flow label."""
    inner = frame[14:]
    v4_inner = inner[0] >> 4 == 4
    eth = Ether(src=LB_MAC, dst=NEXT_HOP_MAC)
    if ":" not in backend:
        df = bool(inner[6] & 0x40)
        outer = IP(src=outer_src4(hash_), dst=backend, proto=socket.IPPROTO_IPIP, ttl=L.TTL,
                   id=chain if df else 0, tos=inner[1], flags="DF" if df else 0)
    else:
        tclass = inner[1] if v4_inner else ((inner[0] & 0x0F) << 4) | (inner[1] >> 4)
        outer = IPv6(src=outer_src6(hash_), dst=backend, hlim=L.TTL, tc=tclass,
                     fl=(L.CHAIN_LABEL | chain) if chain else hash_ & (L.CHAIN_LABEL - 1),
                     nh=socket.IPPROTO_IPIP if v4_inner else socket.IPPROTO_IPV6)
    return bytes(eth / outer / Raw(inner))


# -- cases ----------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    key: str
    label: str
    prog: str                       # "direct", "balancer" (wrapped), "wrapper", "empty"
    frame: bytes
    action: int
    stats: Dict[str, int]           # xlb_stats moves per packet (all others must stay)
    vip_id: Optional[int] = None    # its counters move by one packet per packet
    backend_id: Optional[int] = None
    new_flow: bool = False          # per-VIP / per-backend new_flows move too (flow-table inserts)
    target: Optional[str] = None    # key of TARGETS
    expected_out: Optional[bytes] = None    # what one bench_direct run sends
    in_netns: bool = False          # run in the bench's namespace, received on its veth0
    samples: List[int] = dataclasses.field(default_factory=list)       # ns per packet
    moved: Dict[str, int] = dataclasses.field(default_factory=dict)    # over timed runs
    iterations: int = 0
    error: Optional[str] = None

    @property
    def l3_len(self) -> int:
        return len(self.frame) - 14


@dataclasses.dataclass
class Vip:
    vip_id: int
    addr: str
    port: int
    proto: int
    ring: int
    flags: int = 0


VIPS = {
    "tcp4": Vip(1, VIP4, 80, socket.IPPROTO_TCP, RING4),
    "tcp4_nft": Vip(2, VIP4, 8080, socket.IPPROTO_TCP, RING4, L.VIP_NO_FLOW_TABLE),
    "udp4": Vip(3, VIP4, 53, socket.IPPROTO_UDP, RING4),
    "tcp6": Vip(4, VIP6, 80, socket.IPPROTO_TCP, RING6),
    "tcp6_nft": Vip(5, VIP6, 8080, socket.IPPROTO_TCP, RING6, L.VIP_NO_FLOW_TABLE),
    "tcp4_ranged": Vip(6, VIP4, 8443, socket.IPPROTO_TCP, RING4, L.VIP_SOURCE_RANGES),
    "tcp4_sl": Vip(7, VIP4, 9080, socket.IPPROTO_TCP, RING4, L.VIP_STATELESS),
    "tcp4_sl_moved": Vip(8, VIP4, 9081, socket.IPPROTO_TCP, RING4_MOVED, L.VIP_STATELESS),
    "tcp6_sl_moved": Vip(9, VIP6, 9081, socket.IPPROTO_TCP, RING6_MOVED, L.VIP_STATELESS),
    "tcp4_local_moved": Vip(10, VIP4, LOCAL_PORT, socket.IPPROTO_TCP, RING_LOCAL_MOVED,
                            L.VIP_STATELESS),
    "tcp4_local": Vip(11, VIP4, LOCAL_PORT + 1, socket.IPPROTO_TCP, RING_LOCAL,
                      L.VIP_STATELESS),
}
# the previous owner of every slot of the RING*_MOVED rings
MOVED_FROM = {RING4_MOVED: BACKENDS4[8], RING6_MOVED: BACKENDS6[18]}
# The ranged VIP's client prefixes: a Kubernetes-sized list, the client's own /24 among
# prefixes that are near it (they share trie nodes with it) and far from it.
SOURCE_RANGES = ([f"198.51.{i}.0/24" for i in range(90, 110)] + ["203.0.113.0/24", "10.0.0.0/8"]
                 + [f"192.0.2.{i * 16}/28" for i in range(10)])


def raw_configure(dp: Datapath) -> dict:
    """Config, backends, next hops, rings and VIPs, written raw through Datapath's map
    accessors (the ids are the benchmark's own, as its checks name them)."""
    t = dp.tables
    t.config.write(seed=SEED, src4=SRC4, src6=SRC6)
    rings = {}
    for ring_id, backends in ((RING4, BACKENDS4), (RING6, BACKENDS6)):
        for bid, addr in backends.items():
            t.backends.put(bid, BackendRecord(addr, L.BACKEND_ACTIVE, False, None, 1))
            t.nexthops.put(bid, NEXT_HOP_MAC, LB_MAC, TEST_RUN_IFINDEX)
        rings[ring_id] = build_table([(addr, 1, bid) for bid, addr in backends.items()],
                                     size=RING_SIZE)
        t.rings.put(ring_id, rings[ring_id])
    # stateless VIPs' rings whose every slot changed owner a moment ago: the same tables,
    # each slot's previous owner remembered for an hour
    until = (time.monotonic_ns() >> L.CHAIN_TIME_SHIFT) + 3600
    for ring_id, like in ((RING4_MOVED, RING4), (RING6_MOVED, RING6)):
        rings[ring_id] = rings[like]
        t.rings.put(ring_id, rings[ring_id])
        t.prev_rings.put_all({ring_id: ([chain_id(MOVED_FROM[ring_id])] * RING_SIZE,
                                        [until] * RING_SIZE)})()
    # this node as every slot's backend, and a ring of it that had PEER4 before
    t.backends.put(LOCAL_ID, BackendRecord(LOCAL4, L.BACKEND_ACTIVE, True, None, 1))
    for ring_id in (RING_LOCAL, RING_LOCAL_MOVED):
        rings[ring_id] = [LOCAL_ID] * RING_SIZE
        t.rings.put(ring_id, rings[ring_id])
    t.prev_rings.put_all({RING_LOCAL_MOVED: ([chain_id(PEER4)] * RING_SIZE,
                                             [until] * RING_SIZE)})()
    # a backend's side: this node's own address, and the peer chained packets go to
    dp.add_local_addr(LOCAL4)
    t.chain_peers.put_all({chain_id(PEER4): PEER4})
    for v in VIPS.values():
        if v.flags & L.VIP_SOURCE_RANGES:
            for prefix in SOURCE_RANGES:
                t.source_ranges.add(v.vip_id, prefix)
        t.vips.put(VipKey(v.addr, v.port, PROTO_NAMES[v.proto]),
                   VipRecord(v.vip_id, v.ring, RING_SIZE, L.MODE_IPIP, v.flags))
    for addr in {v.addr for v in VIPS.values()}:
        t.vip_addrs.put(addr, L.ADDR_PORTS)
    t.vip_addrs.write_filter(t.vip_addrs.addresses())
    # as apply leaves it: every VIP in the index
    index = VipIndex(t.vips.packed())
    t.vip_index.install(index)()
    held = len(index) - index.shared()
    assert held == len(VIPS), f"the VIP index holds {held} of {len(VIPS)} VIPs"
    return rings


def forwarded(key, label, vip: Vip, src, sport, l4, rings, target=None) -> Case:
    """A case the balancer encapsulates: the backend is what the ring says for the hash."""
    frame = client_frame(src, vip.addr, l4)
    family, src_b = parse_addr(src)
    _, dst_b = parse_addr(vip.addr)
    hash_ = flow_hash(FlowKey(src_b, dst_b, sport, vip.port, vip.proto, family), SEED)
    bid = rings[vip.ring][ring_slot(hash_, RING_SIZE)]
    backend = {**BACKENDS4, **BACKENDS6}[bid]
    no_table = bool(vip.flags & (L.VIP_NO_FLOW_TABLE | L.VIP_STATELESS))
    stats = {"tx": 1} if no_table else {"tx": 1, "flow_hit": 1}
    chain = chain_id(MOVED_FROM[vip.ring]) if vip.ring in MOVED_FROM else 0
    if chain:
        stats["chain_sent"] = 1
    return Case(key, label, "balancer", frame, _bpf.XDP_TX, stats, vip_id=vip.vip_id,
                backend_id=bid, target=target,
                expected_out=expected_encap(frame, backend, hash_, chain))


def tunnelled_to_us(sport: int, chain: int, dport: int = 80) -> bytes:
    """A client's TCP ACK to VIP4:dport as a balancer tunnels it to this node (LOCAL4),
    with a previous owner's chain id (0: none); FRAME_LEN bytes."""
    inner = IP(src=CLIENT4, dst=VIP4, flags="DF", ttl=64) / TCP(sport=sport, dport=dport,
                                                                 flags="A", seq=1, ack=1)
    outer = Ether(src=NEXT_HOP_MAC, dst=LB_MAC) / IP(
        src=outer_src4(0x1234), dst=LOCAL4, proto=socket.IPPROTO_IPIP, ttl=L.TTL, id=chain,
        flags="DF")
    frame = bytes(outer / inner / Raw(b"\x00" * (FRAME_LEN - 14 - 20 - len(inner))))
    assert len(frame) == FRAME_LEN
    return frame


def decapsulated(frame: bytes) -> bytes:
    """What the inline decapsulation passes up: the inner packet behind the same MACs."""
    return frame[:14] + frame[34:]


def rechained(frame: bytes, peer: str, smac: str) -> bytes:
    """The tunnelled frame re-addressed to `peer` (out of veth0, to the peer's MAC), TTL
    64, id 0 (no chain id), its header checksum made anew."""
    out = bytearray(frame)
    out[0:12] = bytes.fromhex(PEER_MAC.replace(":", "")) + bytes.fromhex(smac.replace(":", ""))
    out[18:20] = bytes(2)
    out[22] = L.TTL
    out[30:34] = socket.inet_aton(peer)
    out[24:26] = bytes(2)
    total = sum(struct.unpack_from("!10H", out, 14))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", out, 24, ~total & 0xFFFF)
    return bytes(out)


def build_cases(rings) -> List[Case]:
    tcp = dict(flags="A", seq=1, ack=1)
    return [
        Case("empty", "empty XDP program", "empty", client_frame(CLIENT4, OTHER4, TCP(dport=80)),
             _bpf.XDP_PASS, {}),
        Case("wrapper", "wrapper alone (save+restore)", "wrapper",
             client_frame(CLIENT4, VIP4, TCP(dport=80)), _bpf.XDP_PASS, {}),
        Case("not_vip_v4", "not-a-VIP IPv4", "direct",
             client_frame(CLIENT4, OTHER4, TCP(sport=40000, dport=80, **tcp)), _bpf.XDP_PASS,
             {"pass_not_vip": 1}, target="not_vip"),
        Case("not_vip_v6", "not-a-VIP IPv6", "direct",
             client_frame(CLIENT6, OTHER6, TCP(sport=40000, dport=80, **tcp)), _bpf.XDP_PASS,
             {"pass_not_vip": 1}, target="not_vip"),
        forwarded("established_tcp_v4", "established TCP IPv4 (flow hit)", VIPS["tcp4"],
                  CLIENT4, 40001, TCP(sport=40001, dport=80, **tcp), rings,
                  target="established_v4"),
        forwarded("established_tcp_v6", "established TCP IPv6 (flow hit)", VIPS["tcp6"],
                  CLIENT6, 40001, TCP(sport=40001, dport=80, **tcp), rings),
        forwarded("new_flow_v4", "new flow IPv4 (hash+ring+encap)", VIPS["tcp4_nft"], CLIENT4,
                  40002, TCP(sport=40002, dport=8080, flags="S", seq=1), rings,
                  target="new_flow"),
        forwarded("new_flow_v6", "new flow IPv6 (hash+ring+encap)", VIPS["tcp6_nft"], CLIENT6,
                  40002, TCP(sport=40002, dport=8080, flags="S", seq=1), rings,
                  target="new_flow"),
        forwarded("established_udp_v4", "UDP IPv4 (established)", VIPS["udp4"], CLIENT4, 40003,
                  UDP(sport=40003, dport=53), rings),
        forwarded("established_tcp_v4_ranged", "established IPv4, 32 source ranges",
                  VIPS["tcp4_ranged"], CLIENT4, 40004,
                  TCP(sport=40004, dport=8443, **tcp), rings),
        forwarded("stateless_tcp_v4", "stateless IPv4 (slot unchanged)", VIPS["tcp4_sl"],
                  CLIENT4, 40005, TCP(sport=40005, dport=9080, **tcp), rings),
        forwarded("stateless_tcp_v4_moved", "stateless IPv4 (slot moved: chain)",
                  VIPS["tcp4_sl_moved"], CLIENT4, 40006, TCP(sport=40006, dport=9081, **tcp),
                  rings),
        forwarded("stateless_tcp_v6_moved", "stateless IPv6 (slot moved: chain)",
                  VIPS["tcp6_sl_moved"], CLIENT6, 40006, TCP(sport=40006, dport=9081, **tcp),
                  rings),
        Case("decap_v4", "backend: decap, no chain id", "balancer",
             tunnelled_to_us(HERE_PORT, 0), _bpf.XDP_PASS, {"decap": 1},
             expected_out=decapsulated(tunnelled_to_us(HERE_PORT, 0)), in_netns=True),
        Case("decap_v4_chain_here", "backend: chain id, socket here", "balancer",
             tunnelled_to_us(HERE_PORT, chain_id(PEER4)), _bpf.XDP_PASS, {"decap": 1},
             expected_out=decapsulated(tunnelled_to_us(HERE_PORT, chain_id(PEER4))),
             in_netns=True),
        Case("decap_v4_chain_ct", "backend: chain id, conntrack here", "balancer",
             tunnelled_to_us(CT_PORT, chain_id(PEER4), NAT_PORT), _bpf.XDP_PASS,
             {"decap": 1},
             expected_out=decapsulated(tunnelled_to_us(CT_PORT, chain_id(PEER4), NAT_PORT)),
             in_netns=True),
        Case("decap_v4_chained", "backend: chain id, re-tunnelled", "balancer",
             tunnelled_to_us(HERE_PORT + 1, chain_id(PEER4)), _bpf.XDP_TX,
             {"chain_forwarded": 1, "tx": 1}, in_netns=True),
        own_share("local_v4", "own share: slot unchanged, passed up", "tcp4_local",
                  LOCAL_HERE_PORT, _bpf.XDP_PASS, {"pass_local": 1}),
        own_share("local_v4_here", "own share: slot moved, socket here", "tcp4_local_moved",
                  LOCAL_HERE_PORT, _bpf.XDP_PASS, {"pass_local": 1}),
        own_share("local_v4_chained", "own share: slot moved, tunnelled on",
                  "tcp4_local_moved", LOCAL_HERE_PORT + 1, _bpf.XDP_TX,
                  {"chain_forwarded": 1, "tx": 1}),
    ]


def own_share(key: str, label: str, vip: str, sport: int, action: int,
              stats: Dict[str, int]) -> Case:
    """A client's TCP ACK to a stateless VIP whose every slot is this node (the tail call
    to xlb_chain_local when the slot moved), received on the namespace's veth0."""
    v = VIPS[vip]
    frame = client_frame(CLIENT4, v.addr, TCP(sport=sport, dport=v.port, flags="A", seq=1,
                                              ack=1))
    return Case(key, label, "balancer", frame, action, stats, vip_id=v.vip_id,
                backend_id=LOCAL_ID, in_netns=True)


def own_share_sent(frame: bytes, smac: str) -> bytes:
    """`frame` as the balancer tunnels its own share's moved connection to PEER4: out of
    veth0 (the FIB's MACs), outer source from the flow hash, no chain id."""
    family, src_b = parse_addr(CLIENT4)
    _, dst_b = parse_addr(VIP4)
    sport, dport = struct.unpack_from("!HH", frame, 34)
    hash_ = flow_hash(FlowKey(src_b, dst_b, sport, dport, socket.IPPROTO_TCP, family), SEED)
    out = expected_encap(frame, PEER4, hash_)
    return bytes.fromhex(PEER_MAC.replace(":", "")) + bytes.fromhex(smac.replace(":", "")) + \
        out[12:]


# -- the backend rows' namespace ------------------------------------------------------------

class BenchNamespace:
    """NS_NAME: veth0 (LOCAL4/24, forwarding on, PEER4 a permanent neighbour) and its peer
    veth1, both up; the VIP and the client's address on lo, a listener on VIP4:80 and one
    connection to it from CLIENT4:HERE_PORT, the same on VIP4:LOCAL_PORT from
    CLIENT4:LOCAL_HERE_PORT; VIP4:NAT_PORT DNATed (nftables) to POD_PORT, a
    listener there and one connection through the DNAT from CLIENT4:CT_PORT. Removed by
    close(), also after a failure."""

    def __init__(self):
        self.veth0: tuple = (0, "")     # (ifindex, MAC)
        self.sockets: List[socket.socket] = []

    @staticmethod
    def _ip(*args) -> str:
        return subprocess.run(["ip", *args], check=True, capture_output=True,
                              text=True).stdout

    def open(self) -> None:
        ip = self._ip
        ip("netns", "add", NS_NAME)
        ip("-n", NS_NAME, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        for dev in ("lo", "veth0", "veth1"):
            ip("-n", NS_NAME, "link", "set", dev, "up")
        ip("-n", NS_NAME, "addr", "add", f"{LOCAL4}/24", "dev", "veth0")
        ip("-n", NS_NAME, "neigh", "add", PEER4, "lladdr", PEER_MAC, "dev", "veth0",
           "nud", "permanent")
        for addr in (VIP4, CLIENT4):
            ip("-n", NS_NAME, "addr", "add", f"{addr}/32", "dev", "lo")
        subprocess.run(["ip", "netns", "exec", NS_NAME, "sysctl", "-qw",
                        "net.ipv4.conf.all.forwarding=1"], check=True)
        rule = f"ip daddr {VIP4} tcp dport {NAT_PORT} dnat to :{POD_PORT}"
        subprocess.run(["nsenter", f"--net=/run/netns/{NS_NAME}", "nft", "-f", "-"],
                       input=f"table ip xlbbench {{\n chain out {{ type nat hook output "
                             f"priority -100; {rule}; }}\n}}\n",
                       text=True, check=True, capture_output=True)
        link = json.loads(ip("-n", NS_NAME, "-j", "link", "show", "veth0"))[0]
        self.veth0 = (link["ifindex"], link["address"])
        with enter_netns(NS_NAME):
            self._connection(80, HERE_PORT)
            self._connection(LOCAL_PORT, LOCAL_HERE_PORT)   # the own_share cases
            self._connection(POD_PORT, CT_PORT, via=NAT_PORT)

    def _connection(self, port: int, client_port: int, via: Optional[int] = None) -> None:
        """In the namespace: a listener on VIP4:port and one connection to it from
        CLIENT4:client_port (made to VIP4:via, which the namespace DNATs to `port`)."""
        listener = socket.socket()
        self.sockets.append(listener)
        listener.bind((VIP4, port))
        listener.listen(1)
        client = socket.socket()
        self.sockets.append(client)
        client.bind((CLIENT4, client_port))
        client.settimeout(5)
        client.connect((VIP4, via or port))
        self.sockets.append(listener.accept()[0])

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        subprocess.run(["ip", "netns", "del", NS_NAME], capture_output=True)


BENCH_NS = BenchNamespace()


# -- running and checking -------------------------------------------------------------------

def counters(dp: Datapath, case: Case) -> Dict[str, int]:
    out = dict(dp.stats())
    if case.vip_id is not None:
        out.update({f"vip {case.vip_id} {k}": v for k, v in dp.vip_counters(case.vip_id).items()})
    if case.backend_id is not None:
        out.update({f"backend {case.backend_id} {k}": v
                    for k, v in dp.backend_counters(case.backend_id).items()})
    return out


def expected_moves(case: Case, n: int) -> Dict[str, int]:
    moves = {name: per * n for name, per in case.stats.items()}
    for who, ident in (("vip", case.vip_id), ("backend", case.backend_id)):
        if ident is not None:
            moves[f"{who} {ident} packets"] = n
            moves[f"{who} {ident} bytes"] = n * case.l3_len
            moves[f"{who} {ident} new_flows"] = n if case.new_flow else 0
    return moves


def run_checked(dp, progs, case: Case, n: int, prog: Optional[str] = None):
    """One test run of `n` iterations, checked (see the module docstring). Returns the
    output buffer, the kernel's ns per packet and the counters that moved."""
    prog = prog or case.prog
    before = counters(dp, case)
    if case.in_netns:
        ifindex, _ = BENCH_NS.veth0
        ctx = struct.pack("=6I", 0, len(case.frame), 0, ifindex, 0, 0)
        with enter_netns(NS_NAME):
            action, out, ns = progs[prog].test_run(case.frame, repeat=n, ctx=ctx)
    else:
        action, out, ns = progs[prog].test_run(case.frame, repeat=n)
    after = counters(dp, case)
    check(action == case.action, f"bench_{prog} returned {XDP_NAMES.get(action, action)}, "
                                 f"expected {XDP_NAMES[case.action]}")
    moved = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    want = {k: v for k, v in expected_moves(case, n).items() if v}
    check(moved == want, f"counters after {n} iterations of bench_{prog}: moved {moved}, "
                         f"expected {want}")
    return out, ns, moved


def verify_single(dp, progs, case: Case) -> None:
    """Before timing: what one packet does, through bench_direct and through the wrapper."""
    if case.prog in ("empty", "wrapper"):
        out, *_ = run_checked(dp, progs, case, 1)
        check(out == case.frame, f"bench_{case.prog} changed the frame")
        return
    if case.key == "decap_v4_chained":
        case.expected_out = rechained(case.frame, PEER4, BENCH_NS.veth0[1])
    if case.key == "local_v4_chained":
        case.expected_out = own_share_sent(case.frame, BENCH_NS.veth0[1])
    if case.expected_out is None:       # passed untouched
        out, *_ = run_checked(dp, progs, case, 1)
        check(out == case.frame, "a packet passed as not-a-VIP was modified")
        return
    if "flow_hit" in case.stats:
        # the first packet of the flow is a miss that fills the flow table (a TCP ACK the
        # table has not seen also counts as a mid-connection miss)
        stats = {"tx": 1, "flow_miss": 1}
        tcp = Ether(case.frame).getlayer(TCP)
        if tcp is not None and not tcp.flags.S:
            stats["flow_miss_midstream"] = 1
        first = dataclasses.replace(case, stats=stats, new_flow=True)
        out, *_ = run_checked(dp, progs, first, 1, prog="direct")
        check(out == case.expected_out, "first packet: not the expected encapsulated packet")
    out, *_ = run_checked(dp, progs, case, 1, prog="direct")
    check(out == case.expected_out, "bench_direct output is not the expected encapsulated "
                                    f"packet:\n  got      {out.hex()}\n  expected "
                                    f"{case.expected_out.hex()}")
    out, *_ = run_checked(dp, progs, case, 1, prog="balancer")
    check(out == case.frame, "bench_balancer did not restore the frame")


def flow_entries(dp: Datapath) -> int:
    return len(dp.flows())


def measure(dp, progs, cases: List[Case], runs: int, iterations: int) -> None:
    for case in cases:
        try:
            verify_single(dp, progs, case)
            run_checked(dp, progs, case, min(iterations, 100_000))      # warm-up, checked
        except CheckFailed as exc:
            case.error = str(exc)
    flows_before = flow_entries(dp)
    for _ in range(runs):
        for case in cases:
            if case.error:
                continue
            try:
                out, ns, moved = run_checked(dp, progs, case, iterations)
                check(out == case.frame, f"after {iterations} iterations the buffer is not "
                                         f"the input frame (not restored?)")
            except CheckFailed as exc:
                case.error = str(exc)
                continue
            case.samples.append(ns)
            case.iterations += iterations
            for k, v in moved.items():
                case.moved[k] = case.moved.get(k, 0) + v
    # timed runs hit known flows or bypass the table: they must have added no flow
    if flow_entries(dp) != flows_before:
        for case in cases:
            if case.new_flow and not case.error:
                case.error = "the flow table grew during timed runs"


# -- report ---------------------------------------------------------------------------------

def summarise(cases: List[Case]) -> dict:
    by = {c.key: c for c in cases}
    empty, wrapper = by["empty"], by["wrapper"]
    if empty.error or wrapper.error:
        raise SystemExit(f"baseline failed: {empty.error or wrapper.error}")
    rounds = len(empty.samples)
    overhead = [wrapper.samples[i] - empty.samples[i] for i in range(rounds)]
    rows = []
    for c in cases:
        row = {"case": c.key, "label": c.label, "program": f"bench_{c.prog}",
               "frame_bytes": len(c.frame), "target_ratio": TARGETS.get(c.target)}
        if c.error or len(c.samples) != rounds:
            row.update(error=c.error or "missing samples", result="REFUSED")
            rows.append(row)
            continue
        s = c.samples
        net = [s[i] - overhead[i] if c.prog == "balancer" else s[i] for i in range(rounds)]
        ratio = statistics.median(s[i] / empty.samples[i] for i in range(rounds))
        net_ratio = statistics.median(net[i] / empty.samples[i] for i in range(rounds))
        row.update(
            ns_median=statistics.median(s), ns_min=min(s), ns_max=max(s), ns_samples=s,
            ratio_to_empty=round(ratio, 2),
            net_ns_median=statistics.median(net), net_ratio_to_empty=round(net_ratio, 2),
            iterations_timed=c.iterations, counters_moved=c.moved)
        if c.target:
            limit = TARGETS[c.target]
            row["result"] = "pass" if net_ratio <= limit else "FAIL"
            row["raw_ratio_within_target"] = ratio <= limit
        rows.append(row)
    return {"rows": rows, "wrapper_overhead_ns_median": statistics.median(overhead),
            "wrapper_overhead_ns_samples": overhead}


def _n(x) -> str:
    return f"{x:g}" if isinstance(x, (int, float)) else "-"


def print_table(summary: dict) -> None:
    head = (f"{'case':<34} {'program':<15} {'ns/pkt med':>10} {'min':>5} {'max':>5} "
            f"{'x empty':>7} {'net ns':>6} {'net x':>6} {'target':>7}  result")
    print(head)
    print("-" * len(head))
    for r in summary["rows"]:
        if "error" in r:
            print(f"{r['label']:<34} {r['program']:<15} REFUSED: {r['error']}")
            continue
        direct = r["program"] != "bench_balancer"
        target = f"<= {r['target_ratio']:g}x" if r["target_ratio"] else ""
        print(f"{r['label']:<34} {r['program']:<15} {_n(r['ns_median']):>10} "
              f"{r['ns_min']:>5} {r['ns_max']:>5} "
              f"{r['ratio_to_empty']:>6.2f}x {'' if direct else _n(r['net_ns_median']):>6} "
              f"{'' if direct else format(r['net_ratio_to_empty'], '.2f') + 'x':>6} "
              f"{target:>7}  {r.get('result', '')}")
    print(f"\nwrapper overhead (bench_wrapper - bench_empty, per round): "
          f"median {_n(summary['wrapper_overhead_ns_median'])} ns "
          f"(rounds: {summary['wrapper_overhead_ns_samples']})")
    print("net = wrapped figure minus that overhead; for bench_direct rows the figure is net.")
    print("Targets are judged on the net ratio; 'x empty' is the raw ratio.")
    e = REFERENCE["empty"]
    refs = ", ".join(f"{k} ~ {v} ns" + ("" if k == "empty" else f" ({v / e:.1f}x)")
                     for k, v in REFERENCE.items())
    print(f"\nfor reference, a widely used XDP balancer on this kind of VM: {refs}")
    print("\ncounters moved over the timed runs (checked run by run: exactly N per run):")
    for r in summary["rows"]:
        if "counters_moved" in r:
            moved = ", ".join(f"{k} +{v}" for k, v in sorted(r["counters_moved"].items())
                              if not k.endswith(" bytes"))
            print(f"  {r['case']:<20} {r['iterations_timed']:>10} packets: {moved or 'none'}")


def cpu_busy(interval: float = 0.5) -> Dict[int, float]:
    """Fraction of the last `interval` each CPU we may run on spent busy (from /proc/stat)."""
    def sample():
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name.startswith("cpu") and name != "cpu":
                    ticks = [int(x) for x in fields]
                    out[int(name[3:])] = (sum(ticks), ticks[3] + ticks[4])   # idle + iowait
        return out
    a = sample()
    time.sleep(interval)
    b = sample()
    busy = {}
    for cpu in os.sched_getaffinity(0):
        total = b[cpu][0] - a[cpu][0]
        busy[cpu] = 1 - (b[cpu][1] - a[cpu][1]) / total if total else 0.0
    return busy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer, shorter runs")
    parser.add_argument("--only", metavar="KEY,...",
                        help="time these cases alone (keys as in the results' 'case'), "
                             "beside the empty program and the wrapper; writes "
                             "bench/results/datapath_only.json")
    args = parser.parse_args()
    only = None
    if args.only:
        only = {"empty", "wrapper", *(k.strip() for k in args.only.split(",") if k.strip())}
        # the keys only: a ring of backend 1 everywhere stands for the real ones
        known = {c.key for c in build_cases(
            {r: [1] * RING_SIZE for r in (RING4, RING6, RING4_MOVED, RING6_MOVED)})}
        unknown = sorted(only - known)
        if unknown:
            parser.error(f"--only: no case {', '.join(unknown)} (cases: "
                         f"{', '.join(sorted(known))})")
    runs, iterations = (5, 200_000) if args.quick else (15, 2_000_000)

    # one CPU for the whole run (per-CPU state stays warm, no migration): the idlest one.
    # Other work on it does not enter the kernel's figure directly (time given to other
    # tasks is left out) but it evicts caches, which the balancer's lookups feel.
    busy = cpu_busy()
    cpu = min(busy, key=lambda c: (busy[c], -c))
    os.sched_setaffinity(0, {cpu})
    if busy[cpu] > 0.2:
        print(f"warning: CPU {cpu}, the idlest, was {busy[cpu]:.0%} busy before the run: "
              f"expect noisy, high figures", file=sys.stderr)

    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        stack.callback(BENCH_NS.close)
        BENCH_NS.open()
        dp, progs = load()
        stack.callback(dp.close)
        for p in progs.values():
            stack.callback(p.close)
        rings = raw_configure(dp)
        cases = [c for c in build_cases(rings) if only is None or c.key in only]
        measure(dp, progs, cases, runs, iterations)
    summary = summarise(cases)
    print(f"BPF_PROG_TEST_RUN, {runs} rounds x {iterations} iterations a case, "
          f"{FRAME_LEN}-byte frames, CPU {cpu} ({busy[cpu]:.0%} busy before the run)\n")
    print_table(summary)
    elapsed = time.monotonic() - t0
    path = write_results("datapath" if only is None else "datapath_only", {
        "machine": machine_info(), "quick": args.quick, "runs": runs,
        "only": sorted(only) if only else None,
        "iterations_per_run": iterations, "frame_bytes": FRAME_LEN, "cpu": cpu,
        "ring_size": RING_SIZE,
        "cpu_busy_before": {str(c): round(b, 2) for c, b in busy.items()},
        "targets_ratio_to_empty": TARGETS,
        "reference_ns": REFERENCE, "elapsed_s": round(elapsed, 1),
        "notes": [
            "ns from BPF_PROG_TEST_RUN's duration (integer ns per iteration, median over "
            "rounds). Wall-clock time around the syscall is no substitute: each call with "
            "repeat > 1 also pays ~15 ms of fixed cost here (apparently the XDP "
            "dispatcher update the kernel makes for repeat > 1)",
            "bench_balancer figures include the wrapper; net subtracts the wrapper "
            "overhead measured in the same round",
            "loaded through a Datapath subclass whose SPEC names the bench object",
        ],
        **summary})
    print(f"\nresults: {path} ({elapsed:.0f} s)")
    if any("error" in r for r in summary["rows"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
