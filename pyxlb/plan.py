"""From (what the maps hold, what should be) to the smallest set of map writes.

Pure: no kernel. `Datapath.apply` reads the current `Layout` back from the maps (or keeps
it from its last apply), calls `make_plan`, and executes the plan in an order that keeps
every packet's view consistent (see `Datapath.apply`). A plan of an unchanged state is
empty, so re-applying the same state writes nothing: no counter reset, no flow flush.

Identities:
- VIP ids index the per-VIP counters and membership; one per VIP key, kept while the VIP
  exists, recycled after (counters are zeroed when an id is handed out again).
- Backend ids are per backend address, shared by every VIP listing that address, kept
  while any VIP lists it. Each hand-out of an id bumps its generation, so a flow pinned to
  a backend that went away never reaches the next holder of the id.
- Rings are shared: VIPs whose ring members (active backends with their weights) and ring
  size are equal use one ring, as every port of a Kubernetes Service does. A VIP whose
  members change moves to another ring (copy on write); a ring nobody uses is freed.
- Membership (VIP id, backend id) is what lets a flow stay on a draining backend while a
  backend removed from one VIP, but still serving others, loses that VIP's flows.
- Health checks: a VIP's spec is the xlb_health_specs entry (VIP id, HEALTH_VIP), a
  backend's own spec (only where it differs from its VIP's) the entry (VIP id, backend id);
  the checker's verdict is the health byte of the backend's member entry. Like members,
  the datapath never reads them: a down backend is simply out of the ring. Entries left by
  an apply that was killed half-way are strays, deleted by the next plan.
- Source ranges are (VIP id, prefix) entries of one LPM trie; a VIP with any carries
  VIP_SOURCE_RANGES in its record. A VIP's entries go in before its record (so the flag
  never meets a trie that lacks them) and leave after it (so clearing the flag comes
  first); while ranges change, the old and the new both admit for a moment.
- Stateless VIPs (docs/config.md, "Stateless mode") never share a ring: their ring key
  names the VIP, so a change of one VIP's members writes that VIP's ring alone, and its
  previous owners (xlb_prev_rings, under the same ring id) describe that one change. The
  plan says which rings get previous owners and from which old ring they derive
  (`prev_writes`); apply reads the old ring and its previous owners back and computes the
  new ones with `prev_slots`, the pure rule, at the time it writes them.
- Chain peers (xlb_chain_peers) are `pyxlb.chain.peer_table` of every backend address of
  the stateless VIPs and of the state's extra `peers` (the Kubernetes agent's: every
  node), compared with what the map holds when that set of addresses changes (and once
  after a Layout is read back: the extras are not read back, the maps cannot tell them
  from the backends).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from array import array
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

from . import _layouts as L
from .chain import peer_table
from .maglev import build_table
from .state import (Backend, DesiredState, HealthSpec, IPAddress, IPNetwork, StateError, Vip,
                    VipKey, key_order)

MODE_CODES = {"ipip": L.MODE_IPIP, "l2": L.MODE_L2, "local": L.MODE_LOCAL}
MODE_NAMES = {v: k for k, v in MODE_CODES.items()}
STATE_CODES = {"active": L.BACKEND_ACTIVE, "draining": L.BACKEND_DRAINING}
STATE_NAMES = {v: k for k, v in STATE_CODES.items()}
HEALTH_TYPE_CODES = {"tcp": L.HEALTH_TCP, "http": L.HEALTH_HTTP, "none": L.HEALTH_NONE}
HEALTH_TYPE_NAMES = {v: k for k, v in HEALTH_TYPE_CODES.items()}
GEN_MAX = 0xFFFFFFFF

# A ring's identity: its size and its members as ((address, weight), ...) in address order;
# a stateless VIP's own ring has its VIP (as text) third.
RingKey = Tuple
# One entry of xlb_source_ranges: (VIP id, client prefix).
RangeEntry = Tuple[int, IPNetwork]
# One key of xlb_members and xlb_health_specs: (VIP id, backend id or HEALTH_VIP).
MemberKey = Tuple[int, int]
# One xlb_members value: (weight, BACKEND_* state, HEALTH_* verdict).
MemberValue = Tuple[int, int, int]


def member_health(vip: Vip, b: Backend) -> int:
    """The health byte of a backend's member entry: HEALTH_UNCHECKED, or HEALTH_DOWN /
    HEALTH_UP by its verdict."""
    if vip.health_for(b) is None:
        return L.HEALTH_UNCHECKED
    return L.HEALTH_DOWN if b.down else L.HEALTH_UP


def member_value(vip: Vip, b: Backend) -> MemberValue:
    return (b.weight, STATE_CODES[b.state], member_health(vip, b))


def health_entries(vip: Vip, vid: int, backend_ids: Dict[IPAddress, int],
                   ) -> Dict[MemberKey, HealthSpec]:
    """The xlb_health_specs entries of one VIP: its own spec, and each backend's own."""
    out = {}
    if vip.health is not None:
        out[(vid, L.HEALTH_VIP)] = vip.health
    for b in vip.backends:
        if b.health is not None:
            out[(vid, backend_ids[b.address])] = b.health
    return out


def health_count(vip: Vip) -> int:
    return (vip.health is not None) + sum(1 for b in vip.backends if b.health is not None)


def ring_key(vip: Vip) -> RingKey:
    """What a ring is shared by: size and members; a stateless VIP's ring is its own (its
    previous owners are the history of that VIP's changes alone)."""
    if vip.stateless:
        return (vip.ring_size, vip.ring_members(), str(vip.key))
    return (vip.ring_size, vip.ring_members())


def vip_flags(vip: Vip) -> int:
    flags = 0
    if vip.stateless:
        flags |= L.VIP_STATELESS
    elif not vip.flow_table:
        flags |= L.VIP_NO_FLOW_TABLE
    if vip.affinity == "client-ip":
        flags |= L.VIP_AFFINITY_SRC
    if vip.announce:
        flags |= L.VIP_ANNOUNCE
    if vip.source_ranges:
        flags |= L.VIP_SOURCE_RANGES
    return flags


@dataclasses.dataclass(frozen=True)
class BackendRecord:
    """One xlb_backends entry (struct xlb_backend) in control-plane terms."""

    address: IPAddress
    state: int           # BACKEND_ACTIVE / BACKEND_DRAINING (0 is a freed id)
    local: bool
    mac: Optional[str]
    gen: int


@dataclasses.dataclass(frozen=True)
class VipRecord:
    """One xlb_vips value (struct xlb_vip)."""

    vip_id: int
    ring_id: int
    ring_size: int
    mode: int
    flags: int


@dataclasses.dataclass
class Layout:
    """What the maps hold, with the ids that were handed out."""

    state: DesiredState = dataclasses.field(default_factory=DesiredState)
    vip_ids: Dict[VipKey, int] = dataclasses.field(default_factory=dict)
    backend_ids: Dict[IPAddress, int] = dataclasses.field(default_factory=dict)
    gens: Dict[int, int] = dataclasses.field(default_factory=dict)   # last gen of each id
    ring_ids: Dict[RingKey, int] = dataclasses.field(default_factory=dict)
    # xlb_source_ranges entries that no VIP's record accounts for (an apply that was killed
    # half-way leaves them): the next plan deletes them
    stray_ranges: FrozenSet[RangeEntry] = frozenset()
    # xlb_health_specs keys no VIP or member accounts for (the same): deleted alike
    stray_specs: FrozenSet[MemberKey] = frozenset()
    # xlb_chain_peers: chain id -> the address it names (ids naming none left out; None:
    # not read yet, planned as empty), and whether it is what the state wants (a plan
    # made it, or found it so; read back, it is compared with the state's once)
    chain_peers: Optional[Dict[int, IPAddress]] = dataclasses.field(default_factory=dict)
    peers_synced: bool = False
    # derived from the above; built once, then carried from plan to plan
    _index: Optional["_Index"] = dataclasses.field(default=None, repr=False, compare=False)

    def index(self) -> "_Index":
        if self._index is None:
            self._index = _Index.build(self)
        return self._index

    def backend_records(self) -> Dict[int, BackendRecord]:
        """{backend id: what xlb_backends holds for it} (do not modify)."""
        return self.index().records


class _Index:
    """What a Layout implies, kept so that planning costs what changed, not the whole
    state: per backend address, how many VIPs list it and how many put it in a ring, and
    the attributes they agree on; the backend records; each VIP's members; how many VIPs
    use each ring; per VIP address, how many VIPs of each kind it carries."""

    def __init__(self):
        self.refs: Dict[IPAddress, int] = {}
        self.active: Dict[IPAddress, int] = {}
        self.stateless: Dict[IPAddress, int] = {}      # how many stateless VIPs list it
        self.attrs: Dict[IPAddress, Backend] = {}
        self.records: Dict[int, BackendRecord] = {}
        self.members: Dict[int, Dict[int, MemberValue]] = {}   # vip id -> {bid: (w, st, h)}
        self.ring_refs: Dict[RingKey, int] = {}
        self.kinds: Dict[IPAddress, Tuple[int, int, int]] = {}  # (ports, all ports, announce)
        self.counts: Dict[str, int] = {"source_ranges": 0,      # entries, all VIPs together
                                       "health_specs": 0}

    @classmethod
    def build(cls, layout: "Layout") -> "_Index":
        idx = cls()
        for vip in layout.state:
            idx.add_vip(vip)
            idx.members[layout.vip_ids[vip.key]] = {
                layout.backend_ids[b.address]: member_value(vip, b) for b in vip.backends}
        for addr in idx.refs:
            idx.records[layout.backend_ids[addr]] = idx.record(addr, layout.backend_ids,
                                                               layout.gens)
        return idx

    def copy(self) -> "_Index":
        new = _Index()
        for name, value in self.__dict__.items():
            setattr(new, name, dict(value))
        return new

    def add_vip(self, vip: Vip) -> None:
        for b in vip.backends:
            a = b.address
            if self.refs.get(a, 0):
                other = self.attrs[a]
                if other.local != b.local:
                    raise StateError(f"backend {a} is local in one VIP and not in another "
                                     f"({vip.key} disagrees): it is one node")
                if other.mac != b.mac:
                    raise StateError(f"backend {a} has {_mac_text(other.mac)} in one VIP but "
                                     f"{_mac_text(b.mac)} in {vip.key}")
            else:
                self.attrs[a] = b
            self.refs[a] = self.refs.get(a, 0) + 1
            if b.in_ring:
                self.active[a] = self.active.get(a, 0) + 1
        key = ring_key(vip)
        self.ring_refs[key] = self.ring_refs.get(key, 0) + 1
        self._kind(vip, +1)
        self.counts["source_ranges"] += len(vip.source_ranges)
        self.counts["health_specs"] += health_count(vip)
        if vip.stateless:
            for b in vip.backends:
                self.stateless[b.address] = self.stateless.get(b.address, 0) + 1

    def remove_vip(self, vip: Vip) -> None:
        for b in vip.backends:
            a = b.address
            self.refs[a] -= 1
            if not self.refs[a]:
                del self.refs[a]
                del self.attrs[a]
            if b.in_ring:
                self.active[a] -= 1
                if not self.active[a]:
                    del self.active[a]
        key = ring_key(vip)
        self.ring_refs[key] -= 1
        if not self.ring_refs[key]:
            del self.ring_refs[key]
        self._kind(vip, -1)
        self.counts["source_ranges"] -= len(vip.source_ranges)
        self.counts["health_specs"] -= health_count(vip)
        if vip.stateless:
            for b in vip.backends:
                self.stateless[b.address] -= 1
                if not self.stateless[b.address]:
                    del self.stateless[b.address]

    def _kind(self, vip: Vip, delta: int) -> None:
        ports, every, announce = self.kinds.get(vip.key.address, (0, 0, 0))
        ports += delta if vip.key.port else 0
        every += 0 if vip.key.port else delta
        announce += delta if vip.announce else 0
        if ports or every or announce:
            self.kinds[vip.key.address] = (ports, every, announce)
        else:
            self.kinds.pop(vip.key.address, None)

    def flags(self, addr: IPAddress) -> int:
        ports, every, announce = self.kinds.get(addr, (0, 0, 0))
        return ((L.ADDR_PORTS if ports else 0) | (L.ADDR_ALL_PORTS if every else 0)
                | (L.ADDR_ANNOUNCE if announce else 0))

    def record(self, addr: IPAddress, ids, gens) -> BackendRecord:
        b = self.attrs[addr]
        return BackendRecord(addr, L.BACKEND_ACTIVE if self.active.get(addr) else
                             L.BACKEND_DRAINING, b.local, b.mac, gens[ids[addr]])


@dataclasses.dataclass
class Limits:
    """Capacities of the loaded maps (their max_entries)."""

    vips: int = L.MAX_VIPS
    backends: int = L.MAX_BACKENDS
    rings: int = L.MAX_RINGS
    source_ranges: int = L.MAX_SOURCE_RANGES
    health_specs: int = L.MAX_MEMBERS + L.MAX_VIPS


@dataclasses.dataclass
class Plan:
    """The writes that turn one Layout into the next, grouped by map."""

    old: Layout
    new: Layout
    backend_writes: Dict[int, BackendRecord] = dataclasses.field(default_factory=dict)
    backend_frees: Dict[int, int] = dataclasses.field(default_factory=dict)  # id -> gen kept
    ring_writes: Dict[int, array] = dataclasses.field(default_factory=dict)
    ring_deletes: Set[int] = dataclasses.field(default_factory=set)
    member_writes: Dict[MemberKey, MemberValue] = dataclasses.field(default_factory=dict)
    member_deletes: Set[MemberKey] = dataclasses.field(default_factory=set)
    spec_writes: Dict[MemberKey, HealthSpec] = dataclasses.field(default_factory=dict)
    spec_deletes: Set[MemberKey] = dataclasses.field(default_factory=set)   # strays included
    vip_writes: Dict[VipKey, VipRecord] = dataclasses.field(default_factory=dict)
    vip_deletes: Set[VipKey] = dataclasses.field(default_factory=set)
    addr_flags: Dict[IPAddress, int] = dataclasses.field(default_factory=dict)  # 0: delete
    range_writes: Set[RangeEntry] = dataclasses.field(default_factory=set)
    range_deletes: Set[RangeEntry] = dataclasses.field(default_factory=set)
    stray_deletes: Set[RangeEntry] = dataclasses.field(default_factory=set)  # done first
    new_vip_ids: Set[int] = dataclasses.field(default_factory=set)
    new_backend_ids: Set[int] = dataclasses.field(default_factory=set)
    # stateless VIPs' new rings -> the old ring their previous owners derive from (None:
    # none, they start empty); previous owners of rings no stateless VIP uses any more
    prev_writes: Dict[int, Optional[int]] = dataclasses.field(default_factory=dict)
    prev_deletes: Set[int] = dataclasses.field(default_factory=set)
    peer_writes: Dict[int, IPAddress] = dataclasses.field(default_factory=dict)
    peer_clears: Set[int] = dataclasses.field(default_factory=set)
    added: Tuple[Vip, ...] = ()
    removed: Tuple[Vip, ...] = ()
    changed: Tuple[Tuple[Vip, Vip], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.backend_writes or self.backend_frees or self.ring_writes
                    or self.ring_deletes or self.member_writes or self.member_deletes
                    or self.vip_writes or self.vip_deletes or self.addr_flags
                    or self.range_writes or self.range_deletes or self.stray_deletes
                    or self.spec_writes or self.spec_deletes or self.prev_writes
                    or self.prev_deletes or self.peer_writes or self.peer_clears)

    def describe(self) -> List[str]:
        """The plan for a person: one line per VIP added, removed or changed."""
        lines = [f"+ vip {v.key} ({v.mode}, {len(v.backends)} backends)" for v in self.added]
        lines += [f"- vip {v.key}" for v in self.removed]
        for old, new in self.changed:
            lines.append(f"~ vip {new.key}")
            lines.extend(f"    {line}" for line in _vip_changes(old, new))
        lines.append(f"maps: {len(self.vip_writes)} VIP writes, {len(self.vip_deletes)} VIP "
                     f"deletes, {len(self.ring_writes)} new rings, {len(self.ring_deletes)} "
                     f"rings freed, {len(self.backend_writes)} backend writes, "
                     f"{len(self.backend_frees)} backends freed")
        if self.range_writes or self.range_deletes or self.stray_deletes:
            lines[-1] += (f", {len(self.range_writes)} source ranges added, "
                          f"{len(self.range_deletes) + len(self.stray_deletes)} removed")
        if self.spec_writes or self.spec_deletes:
            lines[-1] += (f", {len(self.spec_writes)} health specs written, "
                          f"{len(self.spec_deletes)} removed")
        if self.prev_writes or self.prev_deletes:
            lines[-1] += (f", {len(self.prev_writes)} previous-owner tables written, "
                          f"{len(self.prev_deletes)} freed")
        if self.peer_writes or self.peer_clears:
            lines[-1] += (f", {len(self.peer_writes)} chain peers written, "
                          f"{len(self.peer_clears)} cleared")
        return lines


def _vip_changes(old: Vip, new: Vip) -> List[str]:
    out = []
    for field in ("mode", "flow_table", "stateless", "affinity", "announce", "ring_size"):
        a, b = getattr(old, field), getattr(new, field)
        if a != b:
            out.append(f"{field}: {a} -> {b}")
    if old.source_ranges != new.source_ranges:
        out.append(f"source ranges: {_ranges_text(old)} -> {_ranges_text(new)}")
    if old.health != new.health:
        out.append(f"health: {_health_change(old.health, new.health)}")
    ob = {b.address: b for b in old.backends}
    nb = {b.address: b for b in new.backends}
    for addr in sorted(nb.keys() - ob.keys(), key=lambda a: (a.version, a)):
        out.append(f"+ backend {addr} (weight {nb[addr].weight}, {nb[addr].state})")
    for addr in sorted(ob.keys() - nb.keys(), key=lambda a: (a.version, a)):
        out.append(f"- backend {addr}")
    for addr in sorted(ob.keys() & nb.keys(), key=lambda a: (a.version, a)):
        if ob[addr] != nb[addr]:
            changes = [f"{f} {getattr(ob[addr], f)} -> {getattr(nb[addr], f)}"
                       for f in ("weight", "state", "mac", "local", "down")
                       if getattr(ob[addr], f) != getattr(nb[addr], f)]
            was, now = old.health_for(ob[addr]), new.health_for(nb[addr])
            if was != now:
                changes.append(f"health {_health_change(was, now)}")
            out.append(f"~ backend {addr}: {', '.join(changes)}")
    return out


def _health_change(was: Optional[HealthSpec], now: Optional[HealthSpec]) -> str:
    """How checks changed, in one line: the fields that did, or the whole spec that came
    ("none": not checked)."""
    if was is None or now is None:
        def text(spec):
            return "none" if spec is None else \
                " ".join(f"{k}={v}" for k, v in spec.to_dict().items())
        return f"{text(was)} -> {text(now)}"
    return ", ".join(f"{f} {getattr(was, f)} -> {getattr(now, f)}"
                     for f in now.to_dict(was))


def _ranges_text(vip: Vip) -> str:
    return ", ".join(str(n) for n in vip.source_ranges) if vip.source_ranges else "any client"


def _mac_text(mac: Optional[str]) -> str:
    return f"MAC {mac}" if mac else "no MAC"


class _Ids:
    """Hands out the lowest free ids of one kind, never one in `taken`."""

    def __init__(self, taken, limit: int, what: str):
        self._taken = set(taken)
        self._next = 0
        self._limit = limit
        self._what = what

    def take(self) -> int:
        while self._next < self._limit and self._next in self._taken:
            self._next += 1
        if self._next >= self._limit:
            raise StateError(f"no free {self._what} id: all {self._limit} are in use "
                             f"(the map is full)")
        self._taken.add(self._next)
        return self._next


def _same(a: Vip, b: Vip) -> bool:
    return a is b or a == b


def make_plan(old: Layout, desired: DesiredState, limits: Limits = Limits()) -> Plan:
    """The writes from `old` to `desired`; StateError (before anything is written) when
    the state is inconsistent or does not fit the maps. Costs what changed: VIPs equal in
    both states (the same objects, when a state is derived from the last) are skipped."""
    if len(desired) > limits.vips:
        raise StateError(f"{len(desired)} VIPs do not fit the VIP map ({limits.vips})")
    old_by_key = old.state.by_key()
    added, removed, changed = _diff(old_by_key, desired.by_key())
    gone = removed + tuple(o for o, _ in changed)
    coming = added + tuple(n for _, n in changed)

    old_idx = old.index()
    idx = _next_index(old_idx, gone, coming, limits)
    touched = {b.address for v in gone + coming for b in v.backends}
    backend_ids, gens, new_backend_ids = _backend_ids(old, idx, touched, limits)
    backend_writes, backend_frees = _backend_records(old_idx, idx, touched, backend_ids, gens)
    vip_ids, new_vip_ids = _vip_ids(old, added, removed, limits)
    ring_ids, ring_writes, ring_deletes = _rings(old, idx, coming, backend_ids, limits)
    member_writes, member_deletes, vip_writes = _vip_writes(
        old, old_idx, idx, old_by_key, removed, coming, vip_ids, backend_ids, ring_ids)
    spec_writes, spec_deletes = _health_specs(old, old_by_key, removed, coming, vip_ids,
                                              backend_ids)
    addr_flags = _addr_flags(old_idx, idx, gone + coming)
    range_writes, range_deletes, stray_deletes = _ranges(
        old, old_idx, old_by_key, removed, coming, vip_ids, limits)
    prev_writes, prev_deletes = _prev_rings(old, old_by_key, gone, coming, ring_ids,
                                            ring_writes)
    peers, peer_writes, peer_clears = _peers(old, old_idx, idx, touched, desired.peers)

    new = Layout(desired, vip_ids, backend_ids, gens, ring_ids, chain_peers=peers,
                 peers_synced=True, _index=idx)
    # what an apply killed half-way left: gone unless this plan writes the entry anew
    spec_deletes |= set(old.stray_specs) - spec_writes.keys()
    return Plan(old=old, new=new, backend_writes=backend_writes, backend_frees=backend_frees,
                ring_writes=ring_writes, ring_deletes=ring_deletes,
                member_writes=member_writes, member_deletes=member_deletes,
                spec_writes=spec_writes, spec_deletes=spec_deletes,
                vip_writes=vip_writes, vip_deletes={v.key for v in removed},
                addr_flags=addr_flags, range_writes=range_writes,
                range_deletes=range_deletes, stray_deletes=stray_deletes,
                new_vip_ids=new_vip_ids,
                new_backend_ids=new_backend_ids,
                prev_writes=prev_writes, prev_deletes=prev_deletes,
                peer_writes=peer_writes, peer_clears=peer_clears,
                added=tuple(sorted(added, key=lambda v: key_order(v.key))),
                removed=tuple(sorted(removed, key=lambda v: key_order(v.key))),
                changed=tuple(sorted(changed, key=lambda p: key_order(p[0].key))))


def _diff(old_by_key: Dict[VipKey, Vip], new_by_key: Dict[VipKey, Vip],
          ) -> Tuple[Tuple[Vip, ...], Tuple[Vip, ...], Tuple[Tuple[Vip, Vip], ...]]:
    """Planning step: the VIPs added, removed and changed ((old, new) pairs), by key."""
    added = tuple(v for k, v in new_by_key.items() if k not in old_by_key)
    removed = tuple(v for k, v in old_by_key.items() if k not in new_by_key)
    changed = tuple((old_by_key[k], v) for k, v in new_by_key.items()
                    if k in old_by_key and not _same(old_by_key[k], v))
    return added, removed, changed


def _next_index(old_idx: _Index, gone: Tuple[Vip, ...], coming: Tuple[Vip, ...],
                limits: Limits) -> _Index:
    """Planning step: the new state's index (`gone` out, `coming` in); checks the range total."""
    idx = old_idx.copy()
    for vip in gone:
        idx.remove_vip(vip)
    for vip in coming:
        idx.add_vip(vip)
    if idx.counts["source_ranges"] > limits.source_ranges:
        raise StateError(f"{idx.counts['source_ranges']} source ranges (all VIPs together) "
                         f"do not fit the source-range map ({limits.source_ranges})")
    if idx.counts["health_specs"] > limits.health_specs:
        raise StateError(f"{idx.counts['health_specs']} health specs (VIPs' and backends' "
                         f"own, all VIPs together) do not fit their map "
                         f"({limits.health_specs})")
    return idx


def _backend_ids(old: Layout, idx: _Index, touched: Set[IPAddress], limits: Limits,
                 ) -> Tuple[Dict[IPAddress, int], Dict[int, int], Set[int]]:
    """Planning step: backend ids and generations, with an id for each new backend address."""
    # Ids are kept for what stays and handed out (lowest free first) for what is new. An id
    # freed by this plan is not handed out again by it: until the plan's last step the old
    # holder may still be in use, so reusing it at once could send its packets astray.
    backend_ids = dict(old.backend_ids)
    gens = dict(old.gens)
    new_backend_ids = set()
    ids = _Ids(old.backend_ids.values(), limits.backends, "backend")
    for addr in sorted(touched, key=lambda a: (a.version, a)):
        if addr in idx.refs and addr not in backend_ids:
            bid = ids.take()
            backend_ids[addr] = bid
            gens[bid] = gens.get(bid, 0) % GEN_MAX + 1
            new_backend_ids.add(bid)
    return backend_ids, gens, new_backend_ids


def _backend_records(old_idx: _Index, idx: _Index, touched: Set[IPAddress],
                     backend_ids: Dict[IPAddress, int], gens: Dict[int, int],
                     ) -> Tuple[Dict[int, BackendRecord], Dict[int, int]]:
    """Planning step: backend records to write and ids to free (dropped from `backend_ids`)."""
    backend_writes, backend_frees = {}, {}
    for addr in touched:
        if addr in idx.refs:
            rec = idx.record(addr, backend_ids, gens)
            bid = backend_ids[addr]
            if old_idx.records.get(bid) != rec:
                backend_writes[bid] = rec
            idx.records[bid] = rec
        elif addr in backend_ids:
            bid = backend_ids.pop(addr)
            idx.records.pop(bid, None)
            backend_frees[bid] = gens[bid]
    return backend_writes, backend_frees


def _vip_ids(old: Layout, added: Tuple[Vip, ...], removed: Tuple[Vip, ...],
             limits: Limits) -> Tuple[Dict[VipKey, int], Set[int]]:
    """Planning step: VIP ids, the removed VIPs' dropped and each added VIP given one."""
    vip_ids = dict(old.vip_ids)
    for vip in removed:
        del vip_ids[vip.key]
    ids = _Ids(old.vip_ids.values(), limits.vips, "VIP")
    new_vip_ids = set()
    for vip in added:
        vip_ids[vip.key] = ids.take()
        new_vip_ids.add(vip_ids[vip.key])
    return vip_ids, new_vip_ids


def _rings(old: Layout, idx: _Index, coming: Tuple[Vip, ...],
           backend_ids: Dict[IPAddress, int], limits: Limits,
           ) -> Tuple[Dict[RingKey, int], Dict[int, array], Set[int]]:
    """Planning step: ring ids, the tables of new rings and the rings nobody uses any more."""
    # one ring per distinct ring key; existing rings keep their ids and contents
    ring_ids = {k: i for k, i in old.ring_ids.items() if k in idx.ring_refs}
    ids = _Ids(old.ring_ids.values(), limits.rings, "ring")
    ring_writes: Dict[int, array] = {}
    for key in sorted({ring_key(v) for v in coming} - ring_ids.keys()):
        rid = ids.take()
        ring_ids[key] = rid
        size, members = key[:2]
        ring_writes[rid] = build_table(
            [(addr, weight, backend_ids[ipaddress.ip_address(addr)])
             for addr, weight in members], size)
    ring_deletes = set(old.ring_ids.values()) - set(ring_ids.values())
    return ring_ids, ring_writes, ring_deletes


def _prev_rings(old: Layout, old_by_key: Dict[VipKey, Vip], gone: Tuple[Vip, ...],
                coming: Tuple[Vip, ...], ring_ids: Dict[RingKey, int],
                ring_writes: Dict[int, array]) -> Tuple[Dict[int, Optional[int]], Set[int]]:
    """Planning step: the stateless VIPs' new rings that get previous owners, each with
    the ring they derive from (the VIP's old ring, when it was stateless before with the
    same ring size: slot i of both rings is the same hashes; else None, no previous
    owners), and the previous owners of the rings no stateless VIP uses any more."""
    writes: Dict[int, Optional[int]] = {}
    kept: Set[int] = set()
    for vip in coming:
        if not vip.stateless:
            continue
        rid = ring_ids[ring_key(vip)]
        kept.add(rid)
        if rid not in ring_writes:
            continue        # its ring stays, and so do its previous owners
        prev = old_by_key.get(vip.key)
        source = None
        if prev is not None and prev.stateless and prev.ring_size == vip.ring_size:
            source = old.ring_ids[ring_key(prev)]
        writes[rid] = source
    deletes = {old.ring_ids[ring_key(v)] for v in gone if v.stateless} - kept
    return writes, deletes


def prev_slots(old_ring, new_ring, old_chains, old_untils, chains: Dict[int, int],
               now: int, until: int) -> Tuple[array, array]:
    """The previous owners of a stateless VIP's new ring, (chain ids array('H'), times
    array('I')), slot by slot (docs/config.md, "Stateless mode"):

    - the slot changed hands from a backend (its old owner is not RING_EMPTY and differs
      from the new one): the old owner's chain id (`chains`: backend id -> chain id),
      remembered until `until`;
    - else what the slot remembered before (`old_chains`, `old_untils`), while that is
      still later than `now`; else nothing (0, 0).

    `old_ring`: the ring the VIP used before (None: the VIP had no stateless ring of this
    size: no previous owners at all); `old_chains` / `old_untils`: that ring's previous
    owners (None: none). Times are CLOCK_MONOTONIC ns >> CHAIN_TIME_SHIFT."""
    n = len(new_ring)
    out_chains, out_untils = array("H", bytes(2 * n)), array("I", bytes(4 * n))
    if old_ring is None or len(old_ring) != n:
        return out_chains, out_untils
    if old_chains is None or len(old_chains) != n or len(old_untils) != n:
        old_chains, old_untils = array("H", bytes(2 * n)), array("I", bytes(4 * n))
    empty = L.RING_EMPTY
    for i, (was, owner) in enumerate(zip(old_ring, new_ring)):
        if was != owner and was != empty:
            cid = chains.get(was, 0)
            if cid:
                out_chains[i], out_untils[i] = cid, until
                continue
        if old_chains[i] and old_untils[i] > now:
            out_chains[i], out_untils[i] = old_chains[i], old_untils[i]
    return out_chains, out_untils


def _peers(old: Layout, old_idx: _Index, idx: _Index, touched: Set[IPAddress],
           extra: FrozenSet[IPAddress],
           ) -> Tuple[Dict[int, IPAddress], Dict[int, IPAddress], Set[int]]:
    """Planning step: xlb_chain_peers as the new state wants it (peer_table of every
    backend address of the stateless VIPs, the only owners a chain id of this node's own
    balancer can name, and of the state's extra `peers`, the owners other balancers may
    name; an id several addresses share names none), with the entries to write and the ids
    to clear. Without stateless VIPs or extra peers the table is empty, so this node's own
    decapsulation chains nothing. Computed only when that set of addresses changes (the
    extras, or a touched address becoming or ceasing to be a stateless VIP's backend), or
    the old Layout's peers were read back rather than planned (a state read back has no
    extras: the maps cannot tell them from the backends)."""
    have = old.chain_peers or {}
    if old.peers_synced and extra == old.state.peers and \
            all((a in old_idx.stateless) == (a in idx.stateless) for a in touched):
        return have, {}, set()
    named = set(idx.stateless)
    named.update(extra)
    want = {cid: a for cid, a in peer_table(named).items() if a is not None}
    writes = {cid: a for cid, a in want.items() if have.get(cid) != a}
    clears = have.keys() - want.keys()
    return want, writes, clears


def _vip_writes(old: Layout, old_idx: _Index, idx: _Index, old_by_key: Dict[VipKey, Vip],
                removed: Tuple[Vip, ...], coming: Tuple[Vip, ...],
                vip_ids: Dict[VipKey, int], backend_ids: Dict[IPAddress, int],
                ring_ids: Dict[RingKey, int],
                ) -> Tuple[Dict[MemberKey, MemberValue], Set[MemberKey],
                           Dict[VipKey, VipRecord]]:
    """Planning step: members and VIP records of the VIPs that went, came or changed."""
    member_writes, member_deletes = {}, set()
    vip_writes = {}
    for vip in removed:
        vid = old.vip_ids[vip.key]
        member_deletes.update((vid, bid) for bid in idx.members.pop(vid, {}))
    for vip in coming:
        vid = vip_ids[vip.key]
        before = old_idx.members.get(vid, {})
        after = {backend_ids[b.address]: member_value(vip, b) for b in vip.backends}
        idx.members[vid] = after
        member_writes.update(((vid, bid), v) for bid, v in after.items() if before.get(bid) != v)
        member_deletes.update((vid, bid) for bid in before.keys() - after.keys())
        rec = VipRecord(vid, ring_ids[ring_key(vip)], vip.ring_size, MODE_CODES[vip.mode],
                        vip_flags(vip))
        prev = old_by_key.get(vip.key)
        if prev is None or rec != VipRecord(vid, old.ring_ids[ring_key(prev)],
                                            prev.ring_size, MODE_CODES[prev.mode],
                                            vip_flags(prev)):
            vip_writes[vip.key] = rec
    return member_writes, member_deletes, vip_writes


def _health_specs(old: Layout, old_by_key: Dict[VipKey, Vip], removed: Tuple[Vip, ...],
                  coming: Tuple[Vip, ...], vip_ids: Dict[VipKey, int],
                  backend_ids: Dict[IPAddress, int],
                  ) -> Tuple[Dict[MemberKey, HealthSpec], Set[MemberKey]]:
    """Planning step: xlb_health_specs entries to write and to delete, of the VIPs that
    went, came or changed (a changed VIP keeps its id, a backend that stays its id)."""
    writes: Dict[MemberKey, HealthSpec] = {}
    deletes: Set[MemberKey] = set()
    for vip in removed:
        if vip.health is not None or any(b.health is not None for b in vip.backends):
            deletes.update(health_entries(vip, old.vip_ids[vip.key], old.backend_ids))
    for vip in coming:
        prev = old_by_key.get(vip.key)
        vid = vip_ids[vip.key]
        before = {} if prev is None else health_entries(prev, vid, old.backend_ids)
        after = health_entries(vip, vid, backend_ids)
        writes.update((k, spec) for k, spec in after.items() if before.get(k) != spec)
        deletes.update(before.keys() - after.keys())
    return writes, deletes


def _addr_flags(old_idx: _Index, idx: _Index, moved: Tuple[Vip, ...]) -> Dict[IPAddress, int]:
    """Planning step: the VIP addresses whose address flags change, with their new flags."""
    addr_flags = {}
    for addr in {v.key.address for v in moved}:
        before, after = old_idx.flags(addr), idx.flags(addr)
        if before != after:
            addr_flags[addr] = after
    return addr_flags


def _ranges(old: Layout, old_idx: _Index, old_by_key: Dict[VipKey, Vip],
            removed: Tuple[Vip, ...], coming: Tuple[Vip, ...], vip_ids: Dict[VipKey, int],
            limits: Limits) -> Tuple[Set[RangeEntry], Set[RangeEntry], Set[RangeEntry]]:
    """Planning step: source-range entries to write, to delete, and strays to delete first."""
    # source ranges of the VIPs that went, came or changed (a changed VIP keeps its id);
    # entries a killed apply left behind go too, unless wanted again (then they stay)
    range_writes: Set[RangeEntry] = set()
    range_deletes: Set[RangeEntry] = set()
    for vip in removed:
        vid = old.vip_ids[vip.key]
        range_deletes.update((vid, net) for net in vip.source_ranges)
    for vip in coming:
        vid = vip_ids[vip.key]
        prev = old_by_key.get(vip.key)
        before = set(prev.source_ranges) if prev is not None else set()
        after = set(vip.source_ranges)
        range_writes.update((vid, net) for net in after - before)
        range_deletes.update((vid, net) for net in before - after)
    # a stray entry is never consulted (its VIP id has no record, or a record without the
    # flag), so it can go before anything else; one that is wanted again just stays
    kept = old.stray_ranges & range_writes
    range_writes -= kept
    stray_deletes = set(old.stray_ranges - kept)
    peak = old_idx.counts["source_ranges"] + len(kept) + len(range_writes)
    if peak > limits.source_ranges:
        raise StateError(f"the source-range map holds {limits.source_ranges} entries, and "
                         f"this change needs {peak} at once (new ranges go in before old "
                         f"ones leave): apply the removals first")
    return range_writes, range_deletes, stray_deletes


_V4_MAPPED = bytes(10) + b"\xff\xff"


def _in_family(net: IPNetwork, family: int) -> Optional[IPNetwork]:
    """A prefix read back from the trie, as a prefix of a VIP of `family`. The trie keeps
    IPv4 as ::ffff:a.b.c.d, so what reads back as IPv4 may be an IPv6 VIP's prefix inside
    ::ffff:0:0/96; an IPv6 prefix is never an IPv4 VIP's. None: not this family's."""
    if net.version == family:
        return net
    if family == 6:
        return ipaddress.IPv6Network((_V4_MAPPED + net.network_address.packed,
                                      96 + net.prefixlen))
    return None


def rebuild_state(vips: Dict[VipKey, VipRecord], members: Dict[MemberKey, MemberValue],
                  backends: Dict[int, BackendRecord],
                  ranges: FrozenSet[RangeEntry] = frozenset(),
                  specs: Optional[Dict[MemberKey, HealthSpec]] = None,
                  chain_peers: Optional[Dict[int, IPAddress]] = None) -> Layout:
    """The Layout (and so the DesiredState) that map contents describe: what a restarted
    process reads back before its first apply. Inverse of what apply writes. `ranges` are
    the xlb_source_ranges entries: a VIP whose record has VIP_SOURCE_RANGES admits those of
    its id; the others are strays, which the next plan deletes. `specs`: the
    xlb_health_specs entries; those of no VIP or member are strays too. `chain_peers`:
    what xlb_chain_peers holds (chain id -> address; None: not read)."""
    specs = specs or {}
    used_specs: Set[MemberKey] = set()
    by_range: Dict[int, List[IPNetwork]] = {}
    for vid, net in ranges:
        by_range.setdefault(vid, []).append(net)
    stray: Set[RangeEntry] = set(ranges)
    by_vip: Dict[int, List[Tuple[int, int, int, int]]] = {}
    for (vid, bid), (weight, st, health) in members.items():
        by_vip.setdefault(vid, []).append((bid, weight, st, health))
    out_vips = []
    ring_ids: Dict[RingKey, int] = {}
    for key, rec in vips.items():
        bks = []
        for bid, weight, st, health in by_vip.get(rec.vip_id, ()):
            br = backends.get(bid)
            if br is None:
                raise StateError(f"VIP {key} lists backend id {bid}, which is not in use: "
                                 f"the maps are inconsistent")
            own = specs.get((rec.vip_id, bid))
            if own is not None:
                used_specs.add((rec.vip_id, bid))
            bks.append(Backend(br.address, weight, STATE_NAMES.get(st, "active"), br.mac,
                               br.local, own, health == L.HEALTH_DOWN))
        health = specs.get((rec.vip_id, L.HEALTH_VIP))
        if health is not None:
            used_specs.add((rec.vip_id, L.HEALTH_VIP))
        nets: List[IPNetwork] = []
        if rec.flags & L.VIP_SOURCE_RANGES:
            for net in by_range.get(rec.vip_id, ()):
                mine = _in_family(net, key.family)
                if mine is not None:
                    nets.append(mine)
                    stray.discard((rec.vip_id, net))
        vip = Vip(key=key, backends=tuple(bks), mode=MODE_NAMES[rec.mode],
                  flow_table=not rec.flags & (L.VIP_NO_FLOW_TABLE | L.VIP_STATELESS),
                  stateless=bool(rec.flags & L.VIP_STATELESS),
                  affinity="client-ip" if rec.flags & L.VIP_AFFINITY_SRC else "none",
                  announce=bool(rec.flags & L.VIP_ANNOUNCE), ring_size=rec.ring_size,
                  source_ranges=tuple(nets), health=health)
        out_vips.append(vip)
        ring_ids[ring_key(vip)] = rec.ring_id
    state = DesiredState(tuple(out_vips))
    backend_ids = {br.address: bid for bid, br in backends.items() if br.state}
    gens = {bid: br.gen for bid, br in backends.items() if br.gen}
    return Layout(state, {k: r.vip_id for k, r in vips.items()}, backend_ids, gens, ring_ids,
                  stray_ranges=frozenset(stray),
                  stray_specs=frozenset(specs.keys() - used_specs),
                  chain_peers=None if chain_peers is None else dict(chain_peers))

