"""The flow tables, which the datapath writes and the control plane reads and prunes.

IPv4 flows are pinned in the sets of xlb_flowsets4 (an mmap-able array of struct
xlb_flowset4: FLOW4_WAYS ways each), read through mmap; IPv6 flows in xlb_flows (an LRU
hash), read in batches. After an apply, ``purge_moved`` forgets the flows it moved.
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

_WAY = L.SIZES["xlb_flow4_way"]


def _forget_way4(mem: mmap.mmap, way: int, raw_key: bytes) -> bool:
    """Empty IPv4 way `way` if it still holds the flow `raw_key`: its check word goes to 0
    in one aligned 4-byte store, which the datapath reads as "no flow" whatever it is doing
    to the set. (A packet may put another flow in that way between the compare and the
    store; that flow is then forgotten and balanced again by Maglev.)"""
    off = way * _WAY
    if mem[off:off + len(raw_key)] != raw_key:
        return False
    struct.pack_into("=I", mem, off + _WAY - 4, 0)
    return True


def _forget_flow6(m: "_bpf.Map", raw_key: bytes) -> bool:
    try:
        m.delete(raw_key)
    except KeyError:
        return False
    return True


class FlowTables:
    """xlb_flowsets4 (IPv4) and xlb_flows (IPv6)."""

    def __init__(self, flows4: "_bpf.Map", flows6: "_bpf.Map"):
        self.flows4 = flows4
        self.flows6 = flows6

    def mmap4(self) -> mmap.mmap:
        """xlb_flowsets4 mapped into this process, to read and to clear ways."""
        m = self.flows4
        length = m.max_entries * L.SIZES["xlb_flowset4"]
        length = -(-length // mmap.PAGESIZE) * mmap.PAGESIZE
        return mmap.mmap(m.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    def entries(self, backend_ids=None) -> Iterator[Tuple[Callable[[], bool], dict, bytes]]:
        """Every flow of both tables: (forget, key unpacked with 16-byte addresses, raw
        xlb_flow). forget() removes that flow, False if it was gone; call it before taking
        the next entry (the IPv4 mapping closes when the scan moves on). With backend_ids,
        the IPv4 scan passes on only the flows pinned to those backends."""
        with self.mmap4() as mem:
            for way, raw_key, raw_flow in L.flow4_ways(mem, backend_ids=backend_ids):
                yield (lambda way=way, raw_key=raw_key: _forget_way4(mem, way, raw_key),
                       L.unpack_flow4_key(raw_key), raw_flow)
        m, ksz, vsz = self.flows6, L.SIZES["xlb_flow_key"], L.SIZES["xlb_flow"]
        keys, values, count = m.lookup_batch()
        for i in range(count):
            raw = bytes(keys[i * ksz:(i + 1) * ksz])
            yield (lambda raw=raw: _forget_flow6(m, raw), L.unpack_flow_key(raw),
                   values[i * vsz:(i + 1) * vsz])

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
        """Flows in the IPv4 table (its ways scanned through mmap, about 25 ms for 2 Mi
        ways) and in the IPv6 one (read in batches)."""
        with self.mmap4() as mem:
            n4 = L.flow4_ways(mem, True)
        return n4, self.flows6.lookup_batch()[2]

    def capacities(self) -> Tuple[int, int]:
        """Flows the IPv4 table (sets x ways) and the IPv6 one hold."""
        return self.flows4.max_entries * L.FLOW4_WAYS, self.flows6.max_entries


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
