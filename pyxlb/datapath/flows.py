"""The flow tables, which the datapath writes and the control plane reads and prunes.

IPv4 flows are pinned in the sets of xlb_flowsets4 (an mmap-able array of struct
xlb_flowset4: FLOW4_WAYS ways each), IPv6 flows in those of xlb_flowsets6 (struct
xlb_flowset6, FLOW6_WAYS ways of one cache line), both read through mmap. After an apply,
``purge_moved`` forgets the flows it moved.
"""

from __future__ import annotations

import ipaddress
import mmap
import struct
from typing import Callable, Dict, Iterator, List, Set, Tuple

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.addr import format_addr
from pyxlb.plan import Plan
from pyxlb.state import VipKey

# per family: (way size, offset of the check word in a way, set size, scan, unpack key)
_TABLES = (
    (L.SIZES["xlb_flow4_way"], L.SIZES["xlb_flow4_key"] + L.SIZES["xlb_flow"],
     L.SIZES["xlb_flowset4"], L.flow4_ways, L.unpack_flow4_key),
    (L.SIZES["xlb_flow6_way"], L.SIZES["xlb_flow6_key"] + L.SIZES["xlb_flow"],
     L.SIZES["xlb_flowset6"], L.flow6_ways, L.unpack_flow6_key),
)
_STAMP = 2                      # the key's last two bytes: its stamp, not its identity


def _forget_way(mem: mmap.mmap, way: int, raw_key: bytes, size: int, check_at: int) -> bool:
    """Empty way `way` (of `size` bytes) if it still holds the flow `raw_key`: its check
    word goes to 0 in one aligned 4-byte store, which the datapath reads as "no flow"
    whatever it is doing to the set. (A packet may put another flow in that way between
    the compare and the store; that flow is then forgotten and balanced again by Maglev.)"""
    off = way * size
    if mem[off:off + len(raw_key) - _STAMP] != raw_key[:-_STAMP]:
        return False
    struct.pack_into("=I", mem, off + check_at, 0)
    return True


def _mmap(m: "_bpf.Map", set_size: int) -> mmap.mmap:
    length = m.max_entries * set_size
    length = -(-length // mmap.PAGESIZE) * mmap.PAGESIZE
    return mmap.mmap(m.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


# Established flows a set of 4 ways is rated for, so that >= 99.9% of their packets hit:
# a set that more than 4 live flows fall in keeps 2 (its front half) and the others miss
# again and again, and with flows spread over sets at random (Poisson, mean m per set) the
# share of flows that miss is the sum over k > 4 of P(k) (k - 2) / m: 0.047% at m = 0.40,
# 0.092% at 0.48, 0.106% at 0.5, 8.0% at 1.9 (docs/datapath.md, "Flow tables";
# tests/support/flowsets.py replays the rule). 0.40, not the 0.48 that gives 99.9% on
# average: a table is one random draw of flows over sets, and its share varies by about
# 0.011% (one standard deviation at the default sizes); at 0.40 a table's share is at
# least four of them above 99.9%.
FLOWS_PER_SET = 0.40


def flow_sets(max_flows: int) -> int:
    """Sets of a flow table (xlb_flowsets4 or xlb_flowsets6) for `max_flows` established
    flows at >= 99.9% hits: at least max_flows / FLOWS_PER_SET, rounded up to a power of
    two (the datapath picks a set by masking a hash)."""
    if max_flows < 1:
        raise ValueError(f"max_flows must be positive, not {max_flows}")
    need = -(-max_flows * 100 // round(FLOWS_PER_SET * 100))
    return 1 << (need - 1).bit_length()


flow4_sets = flow_sets      # the name of releases before IPv6 sets


def rated_flows(sets: int) -> int:
    """Established flows a table of `sets` sets is rated for (flow_sets' inverse)."""
    return sets * round(FLOWS_PER_SET * 100) // 100



class FlowTables:
    """xlb_flowsets4 (IPv4) and xlb_flowsets6 (IPv6)."""

    def __init__(self, flows4: "_bpf.Map", flows6: "_bpf.Map"):
        self.flows4 = flows4
        self.flows6 = flows6

    def _maps(self):
        return ((self.flows4, _TABLES[0]), (self.flows6, _TABLES[1]))

    def mmap4(self) -> mmap.mmap:
        """xlb_flowsets4 mapped into this process, to read and to clear ways."""
        return _mmap(self.flows4, _TABLES[0][2])

    def mmap6(self) -> mmap.mmap:
        """xlb_flowsets6 mapped into this process."""
        return _mmap(self.flows6, _TABLES[1][2])

    def entries(self, backend_ids=None) -> Iterator[Tuple[Callable[[], bool], dict, bytes]]:
        """Every flow of both tables: (forget, key unpacked with 16-byte addresses, raw
        xlb_flow). forget() removes that flow, False if it was gone; call it before taking
        the next entry (a table's mapping closes when the scan moves on). With
        backend_ids, only the flows pinned to those backends."""
        for m, (size, check_at, set_size, scan, unpack) in self._maps():
            with _mmap(m, set_size) as mem:
                for way, raw_key, raw_flow in scan(mem, backend_ids=backend_ids):
                    yield (lambda way=way, raw_key=raw_key, size=size, check_at=check_at:
                           _forget_way(mem, way, raw_key, size, check_at),
                           unpack(raw_key), raw_flow)

    def listing(self) -> List[Tuple[dict, dict]]:
        """IPv4 then IPv6: [(key, value)], key {src, dst (str), sport, dport (host order),
        proto, family}, value {backend_id, gen, hash}."""
        out = []
        for _, key, value in self.entries():
            key["src"] = format_addr(key["family"], key["src"])
            key["dst"] = format_addr(key["family"], key["dst"])
            out.append((key, L.unpack_flow(value)))
        return out

    def counts(self) -> Tuple[int, int]:
        """Flows in the IPv4 table and in the IPv6 one (their ways scanned through mmap in
        C, about 25 ms for 2 Mi ways)."""
        out = []
        for m, (_, _, set_size, scan, _) in self._maps():
            with _mmap(m, set_size) as mem:
                out.append(scan(mem, True))
        return out[0], out[1]

    def ways(self) -> Tuple[int, int]:
        """Ways of the IPv4 table and of the IPv6 one (sets x ways each)."""
        return (self.flows4.max_entries * L.FLOW4_WAYS,
                self.flows6.max_entries * L.FLOW6_WAYS)

    def capacities(self) -> Tuple[int, int]:
        """Established flows each table is rated for (>= 99.9% of their packets hit:
        loader.rated_flows), IPv4 and IPv6."""
        return rated_flows(self.flows4.max_entries), rated_flows(self.flows6.max_entries)


def purge_moved(flows: FlowTables, plan: Plan) -> int:
    """Forget the flows (ClientIP affinity pins included) that the VIP serving them after
    `plan` would not send where they are pinned: a backend the VIP no longer has (or has
    down, with health checks that say on_fail: gone), a VIP
    that went (it may come back with other backends: Kubernetes reuses addresses), or a
    packet another VIP now takes (a port-0 VIP taking the address of a removed port, a
    port's own VIP added under a port-0 one). Only pins to backends that live on need
    this: a freed backend's id changes generation, and the datapath re-balances its flows
    by itself. Returns how many were removed."""
    old_by_key, new_by_key = plan.old.state.by_key(), plan.new.state.by_key()
    live = set(plan.new.backend_ids.values())

    def ids_of(layout, vip) -> Set[int]:
        """The backends `vip`'s flows may stay on."""
        return {layout.backend_ids[b.address] for b in vip.backends if vip.keeps_flows(b)}

    # which (address, protocol) may hold such flows, pinned to which ids: scanning the
    # flow tables costs milliseconds, so only when an apply can have made any
    touched: Set[Tuple[object, str]] = set()
    pinned: Set[int] = set()
    for old in plan.removed:
        touched.add((old.key.address, old.key.protocol))
        pinned |= ids_of(plan.old, old)
    for old, new in plan.changed:
        moved = ids_of(plan.old, old) - ids_of(plan.new, new)
        if moved & live:
            touched.add((old.key.address, old.key.protocol))
            pinned |= moved
    for new in plan.added:
        under = old_by_key.get(VipKey(new.key.address, 0, new.key.protocol))
        if new.key.port and under is not None:      # takes packets the port-0 VIP had
            touched.add((new.key.address, new.key.protocol))
            pinned |= ids_of(plan.old, under)
    pinned &= live
    if not pinned:
        return 0
    keep: Dict[VipKey, Set[int]] = {}    # new VIP -> the ids its flows may stay on

    def serving(by_key, address, port: int, proto: str):
        return by_key.get(VipKey(address, port, proto)) or \
            by_key.get(VipKey(address, 0, proto))

    removed = 0
    for forget, k, value in flows.entries(backend_ids=pinned):
        proto = {6: "tcp", 17: "udp"}.get(k["proto"])
        if proto is None:
            continue
        address = ipaddress.ip_address(format_addr(k["family"], k["dst"]))
        if (address, proto) not in touched:
            continue
        bid = L.unpack_flow(value)["backend_id"]
        if bid not in pinned:
            continue
        now = serving(new_by_key, address, k["dport"], proto)
        if now is not None:
            ids = keep.get(now.key)
            if ids is None:
                ids = keep[now.key] = ids_of(plan.new, now)
            if bid in ids:
                continue
        removed += forget()
    return removed
