"""A pure-Python model of the balancer's decision, the reference its tests compare against.

It mirrors, function by function, what xdp/include/ decides for a TCP or UDP packet:

- ``flow_hash``                        xlb_flow_hash, xlb_mix, xlb_fmix (hash.h)
- ``outer_source4`` / ``outer_source6``  xlb_outer_src4 / xlb_outer_src6 (encap.h)
- ``Model.find_vip``                   xlb_vip_addr + xlb_find_vip (balance.h)
- ``Model.admits``                     xlb_source_admitted (balance.h): the LPM lookup
- ``Model.pick``                       xlb_pick (balance.h)
- ``Model.forward``                    xlb_forward, xlb_tunnel and the next-hop cache branch
                                       of xlb_send
- ``Model.decide``                     xlb_process_ip for TCP/UDP (the source-range check
                                       included), then xlb_balance

``Model`` is set up with one call per record (``set_config``, ``set_vip``, ``set_backend``,
``set_nexthop``, ``set_ring``, ``add_source_range``, ...); tests/datapath/test_model_vs_kernel.py
makes each call on the model and, through the map accessors, on the kernel's maps
(``RawKernel``), then compares, packet by packet, the kernel's action and output with
``Model.decide``. ``decide`` updates the model's flow table exactly as the kernel
updates the flow tables, so both must see the same packets in the same order.

Out of scope (a test that needs them extends the model first): parsing failures,
fragments, ICMP (steering and ARP/NDP), inline decapsulation, and backends without a
next-hop cache entry, whose fate the kernel's FIB decides (``decide`` raises NotModelled;
that includes an L2 VIP's packet tunnelled and passed up for want of a neighbour entry,
and its MTU check).

Imports no kernel: only the struct layouts (pyxlb._layouts) and the XDP action numbers.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Set, Tuple

from pyxlb import _layouts as L
from pyxlb._bpf import XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX
from pyxlb.addr import Address, Prefix, lpm_prefix, parse_addr, parse_mac, prefix_or_none

__all__ = ["TEST_RUN_IFINDEX", "Decision", "FlowKey", "Model", "NotModelled", "Packet",
           "flow_hash", "outer_source4", "outer_source6"]

_M32 = 0xFFFFFFFF
_PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_IPV4_HLEN = 20
_IPV6_HLEN = 40
_V4_MAPPED = bytes(10) + b"\xff\xff"     # how the source-range trie keys IPv4
#: BPF_PROG_TEST_RUN without a context runs the program as if it arrived on the loopback
#: device of the calling namespace: ifindex 1.
TEST_RUN_IFINDEX = 1


class NotModelled(Exception):
    """The kernel's answer depends on something the model leaves out (the FIB)."""


# -- hash.h -------------------------------------------------------------------------------


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def _mix(h: int, k: int) -> int:
    """xlb_mix: one Murmur3 block step."""
    k = (k * 0xCC9E2D51) & _M32
    k = _rotl32(k, 15)
    k = (k * 0x1B873593) & _M32
    h ^= k
    h = _rotl32(h, 13)
    return (h * 5 + 0xE6546B64) & _M32


def _fmix(h: int) -> int:
    """xlb_fmix: the Murmur3 finaliser."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


@dataclass(frozen=True)
class FlowKey:
    """struct xlb_flow_key: addresses as 16 bytes (IPv4 in the first 4), ports in host
    order. Also the key of ``Model.flows``."""

    src: bytes
    dst: bytes
    sport: int
    dport: int
    proto: int
    family: int

    def pack(self) -> bytes:
        """The struct's bytes, as the kernel sees the key (pyxlb._layouts lays it out)."""
        return L.pack_flow_key(self.src, self.dst, self.sport, self.dport, self.proto,
                               self.family)


def flow_hash(key: FlowKey, seed: int, src_only: bool = False) -> int:
    """xlb_flow_hash: Murmur3-style mixing of the key's 32-bit words, read in host byte
    order (the native ``=`` struct format), seeded with ``seed``: the source address
    (IPv4: word 0; IPv6: words 0^2 and 1^3), then the ports word and the
    protocol-and-family word, finalised with 40. The destination is not mixed (a ring
    serves one VIP). ``src_only`` (ClientIP affinity): the source words, then the family
    byte, finalised with 20."""
    words = struct.unpack("=10I", key.pack())
    h = seed & _M32
    if key.family == L.FAMILY_V4:
        h = _mix(h, words[0])
    else:
        h = _mix(h, words[0] ^ words[2])
        h = _mix(h, words[1] ^ words[3])
    if src_only:
        return _fmix(_mix(h, key.family) ^ 20)
    h = _mix(h, words[8])
    h = _mix(h, words[9])
    return _fmix(h ^ 40)


def ring_slot(hash_: int, ring_size: int) -> int:
    """xlb_ring_slot: the ring slot of a flow hash, hash * ring_size / 2^32 (no division in
    the datapath; as even a spread as hash % ring_size)."""
    return (hash_ * ring_size) >> 32


# -- encap.h ------------------------------------------------------------------------------


def _host_mask(plen: int, bits: int) -> int:
    """The 32-bit mask of the prefix bits that fall in the last 32 of a `bits`-bit
    address (the bits the flow hash must not touch)."""
    keep = plen - (bits - 32)
    if keep >= 32:
        return _M32
    if keep <= 0:
        return 0
    return ~((1 << (32 - keep)) - 1) & _M32


def outer_source4(prefix: bytes, plen: int, hash_: int) -> Optional[bytes]:
    """xlb_outer_src4: the outer IPv4 source, the 4-byte ``prefix`` with its host bits
    taken from the flow hash. None where the C returns 0 (no prefix configured)."""
    value = int.from_bytes(prefix, "big")
    if not value:
        return None
    mask = _host_mask(plen, 32)
    src = (value & mask) | (hash_ & ~mask & _M32)
    return src.to_bytes(4, "big") if src else None


def outer_source6(prefix: bytes, plen: int, hash_: int) -> Optional[bytes]:
    """xlb_outer_src6: the outer IPv6 source, the 16-byte ``prefix`` with (at most) its
    last 32 host bits taken from the flow hash. None when no prefix is configured."""
    if not any(prefix):
        return None
    mask = _host_mask(plen, 128)
    last = int.from_bytes(prefix[12:], "big")
    return prefix[:12] + ((last & mask) | (hash_ & ~mask & _M32)).to_bytes(4, "big")


# -- packets and decisions ----------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """The fields of a TCP/UDP packet the decision reads (struct xlb_pkt): addresses as
    strings, ports in host order, the IP length, IPv4 DF (IPv6 packets: always True), and
    for TCP whether SYN is set."""

    src: str
    dst: str
    sport: int
    dport: int
    proto: int
    l3_len: int
    df: bool = True
    syn: bool = True

    def key(self) -> FlowKey:
        family, src = parse_addr(self.src)
        dst_family, dst = parse_addr(self.dst)
        if dst_family != family:
            raise ValueError(f"{self.src} -> {self.dst}: mixed address families")
        return FlowKey(src, dst, self.sport, self.dport, self.proto, family)


@dataclass(frozen=True)
class Decision:
    """What the balancer does with one packet.

    ``action``: the XDP action. ``outcome``: the name (pyxlb._layouts.STAT_NAMES) of the
    global counter that ends the packet's path. ``flow``: the flow-table counter it bumped
    (``flow_hit`` / ``flow_miss`` / ``flow_stale``), None when the VIP has no flow table,
    the packet is not for a VIP or its client was refused. ``vip_id`` / ``backend_id``:
    whose counters it adds to (None: none); a packet refused by source range
    (``drop_source_range``) adds to its VIP's refused count (xlb_vip_range_drops), not to
    the VIP's traffic counters. ``new_flow``: counted as a new flow. ``hash``: the flow hash
    (None for a packet not balanced), from which the outer source and flow label come.
    ``midstream``: a miss that is a TCP segment without SYN (``flow_miss_midstream``).
    ``chain``: the previous owner's chain id the tunnelled packet carries (0: none; a
    stateless VIP's, counted as ``chain_sent``). ``chain_no_peer``: a TCP segment without
    SYN for the balancer's own share (a local backend) whose slot names a previous owner
    that xlb_chain_peers does not know (counted, then passed up as ``pass_local``).
    """

    action: int
    outcome: str
    flow: Optional[str] = None
    vip_id: Optional[int] = None
    backend_id: Optional[int] = None
    new_flow: bool = False
    hash: Optional[int] = None
    midstream: bool = False
    chain: int = 0
    chain_no_peer: bool = False


@dataclass
class Vip:
    """struct xlb_vip."""

    vip_id: int
    ring_id: int
    ring_size: int
    mode: int
    flags: int = 0


@dataclass
class Backend:
    """struct xlb_backend (state 0, "gone", is the absence of an entry here)."""

    addr: bytes
    family: int
    state: int = L.BACKEND_ACTIVE
    flags: int = 0
    gen: int = 1


@dataclass
class Config:
    """struct xlb_config, the fields the decision reads."""

    seed: int = 0
    mtu: int = L.MTU_DEFAULT
    src4: bytes = bytes(4)
    src4_plen: int = 0
    src6: bytes = bytes(16)
    src6_plen: int = 0


def _proto(proto) -> int:
    return _PROTOS[proto.lower()] if isinstance(proto, str) else proto


class Model:
    """The balancer's maps as Python values, and its decision over them.

    ``vips``: (family, 16-byte addr, port, proto) -> Vip; ``backends``: id -> Backend;
    ``nexthops``: id -> (dmac, smac, ifindex); ``rings``: ring id -> sequence of backend
    ids; ``prev_rings``: ring id -> (chain ids, until times) by slot (a stateless VIP's
    previous owners; `now` is read from the clock as the kernel reads its own: the tests
    keep every until far from it); ``flows``: FlowKey -> (backend id, gen, hash);
    ``source_ranges``: VIP id -> set of
    (LPM prefix length, 16-byte address) as the trie keys them (IPv4 as ::ffff:a.b.c.d);
    ``config``: Config. ``ingress_ifindex`` is the interface packets arrive on
    (TEST_RUN_IFINDEX under BPF_PROG_TEST_RUN).
    """

    def __init__(self, ingress_ifindex: int = TEST_RUN_IFINDEX):
        self.vips: Dict[Tuple[int, bytes, int, int], Vip] = {}
        self.backends: Dict[int, Backend] = {}
        self.nexthops: Dict[int, Tuple[bytes, bytes, int]] = {}
        self.rings: Dict[int, Sequence[int]] = {}
        self.prev_rings: Dict[int, Tuple[Sequence[int], Sequence[int]]] = {}
        self.flows: Dict[FlowKey, Tuple[int, int, int]] = {}
        self.source_ranges: Dict[int, Set[Tuple[int, bytes]]] = {}
        self.chain_peers: Dict[int, int] = {}       # chain id -> the family of its node
        self.config = Config()
        self.ingress_ifindex = ingress_ifindex

    # -- the writers, with Datapath's signatures ----------------------------------------

    def set_config(self, seed: int = 0, mtu: int = L.MTU_DEFAULT,
                   src4: Optional[Prefix] = None, src6: Optional[Prefix] = None,
                   decap_check_source: bool = False) -> None:
        src4_addr, src4_plen = prefix_or_none(src4, L.FAMILY_V4)
        src6_addr, src6_plen = prefix_or_none(src6, L.FAMILY_V6)
        self.config = Config(seed, mtu, src4_addr[:4], src4_plen, src6_addr, src6_plen)

    def set_vip(self, addr: Address, port: int, proto, *, vip_id: int, ring_id: int,
                ring_size: int, mode: int, flags: int = 0) -> None:
        family, a = parse_addr(addr)
        self.vips[(family, a, port, _proto(proto))] = Vip(vip_id, ring_id, ring_size, mode,
                                                          flags)

    def del_vip(self, addr: Address, port: int, proto) -> None:
        family, a = parse_addr(addr)
        del self.vips[(family, a, port, _proto(proto))]

    def set_backend(self, backend_id: int, addr: Address, *, state: int = L.BACKEND_ACTIVE,
                    flags: int = 0, gen: int = 1) -> None:
        family, a = parse_addr(addr)
        self.backends[backend_id] = Backend(a, family, state, flags, gen)

    def del_backend(self, backend_id: int) -> None:
        self.backends.pop(backend_id, None)

    def set_nexthop(self, backend_id: int, dmac, smac, ifindex: int) -> None:
        self.nexthops[backend_id] = (parse_mac(dmac), parse_mac(smac), ifindex)

    def del_nexthop(self, backend_id: int) -> None:
        self.nexthops.pop(backend_id, None)

    def set_ring(self, ring_id: int, table: Sequence[int]) -> None:
        self.rings[ring_id] = list(table)

    def del_ring(self, ring_id: int) -> None:
        del self.rings[ring_id]

    def set_prev_ring(self, ring_id: int, chains: Sequence[int], untils: Sequence[int]) -> None:
        self.prev_rings[ring_id] = (list(chains), list(untils))

    def set_chain_peer(self, chain: int, addr: Address) -> None:
        self.chain_peers[chain] = parse_addr(addr)[0]

    def add_source_range(self, vip_id: int, prefix: Prefix) -> None:
        self.source_ranges.setdefault(vip_id, set()).add(lpm_prefix(prefix))

    def del_source_range(self, vip_id: int, prefix: Prefix) -> None:
        self.source_ranges[vip_id].remove(lpm_prefix(prefix))

    # -- the decision -------------------------------------------------------------------

    def find_vip(self, key: FlowKey) -> Optional[Vip]:
        """xlb_find_vip: the VIP with the key's port first, else the address's port-0 VIP.
        (The C consults the XLB_ADDR_PORTS / ALL_PORTS flags of xlb_vip_addrs first; the
        control plane keeps them equal to "some VIP has a port / port 0 on this address".)
        """
        vips = self.vips
        return (vips.get((key.family, key.dst, key.dport, key.proto))
                or vips.get((key.family, key.dst, 0, key.proto)))

    def is_vip_address(self, family: int, addr: bytes) -> bool:
        """xlb_vip_addr: is there an entry in xlb_vip_addrs (some VIP on this address)?
        Addresses only announced, with no VIP, are not modelled."""
        return any(f == family and a == addr for f, a, _, _ in self.vips)

    def admits(self, vip: Vip, key: FlowKey) -> bool:
        """xlb_source_admitted: is some prefix of the VIP's id a prefix of the client's
        address, taken as the trie takes it (IPv4 as ::ffff:a.b.c.d, 128 bits)?"""
        client = (_V4_MAPPED + key.src[:4]) if key.family == L.FAMILY_V4 else key.src
        value = int.from_bytes(client, "big")
        for plen, addr in self.source_ranges.get(vip.vip_id, ()):
            shift = 128 - plen
            if value >> shift == int.from_bytes(addr, "big") >> shift:
                return True
        return False

    def prev_chain(self, ring_id: int, slot: int) -> int:
        """xlb_prev_chain: the slot's previous owner while it is remembered, else 0."""
        chains, untils = self.prev_rings.get(ring_id, ((), ()))
        if slot >= len(chains) or not chains[slot]:
            return 0
        if time.monotonic_ns() >> L.CHAIN_TIME_SHIFT >= untils[slot]:
            return 0
        return chains[slot]

    def pick(self, key: FlowKey, vip: Vip, hash_: int, insert: bool = True,
             syn: bool = False) -> Tuple[Optional[int], Optional[str], bool, int, int]:
        """xlb_pick: (backend id or None for "no backend", the flow counter bumped,
        new_flow, the flow hash, the slot's previous owner). A live flow-table entry of the
        same generation wins (draining backends keep their flows) with the hash it stored;
        otherwise the ring decides and, with a flow table, the choice (and hash) is
        remembered. A stateless VIP has no flow table: a TCP SYN is its new flow, and its
        slot's previous owner goes with the packet."""
        stateless = bool(vip.flags & L.VIP_STATELESS)
        use_flows = not vip.flags & (L.VIP_NO_FLOW_TABLE | L.VIP_STATELESS)
        flow_stat = None
        if use_flows:
            entry = self.flows.get(key)
            if entry is None:
                flow_stat = "flow_miss"
            else:
                backend_id, gen, stored_hash = entry
                be = self.backends.get(backend_id)
                if be is not None and be.gen == gen:
                    return backend_id, "flow_hit", False, stored_hash, 0
                flow_stat = "flow_stale"
        ring = self.rings.get(vip.ring_id)
        if ring is None or not vip.ring_size:
            return None, flow_stat, False, hash_, 0
        slot = ring_slot(hash_, vip.ring_size)
        # the ring's inner map may be smaller than ring_size: a lookup past it fails
        backend_id = ring[slot] if slot < len(ring) else L.RING_EMPTY
        if backend_id == L.RING_EMPTY or backend_id not in self.backends:
            return None, flow_stat, False, hash_, 0
        if use_flows and insert:
            self.flows[key] = (backend_id, self.backends[backend_id].gen, hash_)
            return backend_id, flow_stat, True, hash_, 0
        if stateless:
            chain = self.prev_chain(vip.ring_id, slot) if insert else 0
            return backend_id, flow_stat, syn, hash_, chain
        # without a flow table no packet is known to start a flow: none counts as new
        return backend_id, flow_stat, False, hash_, 0

    def forward(self, key: FlowKey, vip: Vip, backend_id: int, l3_len: int,
                df: bool, hash_: int, chain: int = 0,
                segment: bool = False) -> Tuple[int, str, int, bool]:
        """xlb_forward and xlb_tunnel (and the cached-next-hop branch of xlb_send): (XDP
        action, outcome counter, the chain id the outer header carries, chain_no_peer) for
        a packet sent to `backend_id` by the VIP's mode. An L2 VIP's packet is tunnelled
        only when the FIB has no neighbour for its backend, which the model leaves to the
        kernel (_send raises NotModelled). `chain` rides in an outer IPv4 header with DF,
        or in an outer IPv6 header. The balancer's own share with a previous owner
        (xlb_chain_here, `segment`: TCP without SYN) is passed up when the chain id names
        no usable peer; else the node's sockets, its conntrack and the FIB decide
        (NotModelled)."""
        be = self.backends[backend_id]
        if be.flags & L.BACKEND_LOCAL or vip.mode == L.MODE_LOCAL:
            if chain and segment:
                peer = self.chain_peers.get(chain)
                if peer == L.FAMILY_V6 or (peer == L.FAMILY_V4 and key.family == L.FAMILY_V4):
                    raise NotModelled("the own share of a known previous owner: this node's "
                                      "sockets and conntrack decide")
                return XDP_PASS, "pass_local", 0, True
            return XDP_PASS, "pass_local", 0, False
        if vip.mode == L.MODE_L2:
            return (*self._send(backend_id), 0, False)
        cfg = self.config
        if be.family == L.FAMILY_V4:
            # IPv6 inside IPv4 is not offered
            if key.family != L.FAMILY_V4:
                return XDP_DROP, "drop_unsupported", 0, False
            if l3_len + _IPV4_HLEN > cfg.mtu:
                return (XDP_TX, "icmp_sent", 0, False) if df else \
                    (XDP_DROP, "drop_too_big", 0, False)
            if outer_source4(cfg.src4, cfg.src4_plen, hash_) is None:
                return XDP_DROP, "drop_unsupported", 0, False
            return (*self._send(backend_id), chain if df else 0, False)
        if l3_len + _IPV6_HLEN > cfg.mtu:
            if key.family == L.FAMILY_V4 and not df:
                return XDP_DROP, "drop_too_big", 0, False
            return XDP_TX, "icmp_sent", 0, False
        if outer_source6(cfg.src6, cfg.src6_plen, hash_) is None:
            return XDP_DROP, "drop_unsupported", 0, False
        return (*self._send(backend_id), chain, False)

    def _send(self, backend_id: int) -> Tuple[int, str]:
        """xlb_send with a next-hop cache entry: out of the ingress interface or another."""
        nexthop = self.nexthops.get(backend_id)
        if nexthop is None or not nexthop[2]:
            raise NotModelled(f"backend {backend_id} has no next-hop entry: the FIB decides")
        if nexthop[2] == self.ingress_ifindex:
            return XDP_TX, "tx"
        return XDP_REDIRECT, "redirect"

    def decide(self, pkt: Packet) -> Decision:
        """xlb_process_ipv4/6 and xlb_balance for one well-formed, unfragmented TCP or UDP
        packet: what the kernel does with it. Updates the flow table like the kernel."""
        if pkt.proto not in _PROTOS.values():
            raise ValueError(f"the model decides TCP and UDP only, not protocol {pkt.proto}")
        key = pkt.key()
        if not self.is_vip_address(key.family, key.dst):
            return Decision(XDP_PASS, "pass_not_vip")
        vip = self.find_vip(key)
        if vip is None:
            return Decision(XDP_PASS, "pass_not_vip")
        if vip.flags & L.VIP_SOURCE_RANGES and not self.admits(vip, key):
            return Decision(XDP_DROP, "drop_source_range", vip_id=vip.vip_id)
        src_only = bool(vip.flags & L.VIP_AFFINITY_SRC)
        if src_only:
            # one flow-table entry per client and VIP port
            key = FlowKey(key.src, key.dst, 0, key.dport, key.proto, key.family)
        hash_ = flow_hash(key, self.config.seed, src_only)
        syn = pkt.proto == _PROTOS["tcp"] and pkt.syn
        backend_id, flow_stat, new_flow, hash_, chain = self.pick(key, vip, hash_, syn=syn)
        midstream = (flow_stat == "flow_miss" and pkt.proto == _PROTOS["tcp"]
                     and not pkt.syn)
        if backend_id is None:
            return Decision(XDP_DROP, "drop_no_backend", flow_stat, vip.vip_id, None,
                            new_flow, hash_, midstream)
        action, outcome, chain, no_peer = self.forward(
            key, vip, backend_id, pkt.l3_len, pkt.df, hash_, chain,
            segment=pkt.proto == _PROTOS["tcp"] and not pkt.syn)
        return Decision(action, outcome, flow_stat, vip.vip_id, backend_id, new_flow, hash_,
                        midstream, chain, no_peer)
