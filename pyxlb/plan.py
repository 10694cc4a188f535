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
"""

from __future__ import annotations

import dataclasses
import ipaddress
from array import array
from typing import Dict, List, Optional, Set, Tuple

from . import _layouts as L
from .maglev import build_table
from .state import Backend, DesiredState, IPAddress, StateError, Vip, VipKey

MODE_CODES = {"ipip": L.MODE_IPIP, "l2": L.MODE_L2, "local": L.MODE_LOCAL}
MODE_NAMES = {v: k for k, v in MODE_CODES.items()}
STATE_CODES = {"active": L.BACKEND_ACTIVE, "draining": L.BACKEND_DRAINING}
STATE_NAMES = {v: k for k, v in STATE_CODES.items()}
GEN_MAX = 0xFFFFFFFF

# A ring's identity: its size and its members as ((address, weight), ...) in address order.
RingKey = Tuple[int, Tuple[Tuple[str, int], ...]]


def ring_key(vip: Vip) -> RingKey:
    return (vip.ring_size, vip.ring_members())


def vip_flags(vip: Vip) -> int:
    flags = 0
    if not vip.flow_table:
        flags |= L.VIP_NO_FLOW_TABLE
    if vip.affinity == "client-ip":
        flags |= L.VIP_AFFINITY_SRC
    if vip.announce:
        flags |= L.VIP_ANNOUNCE
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

    def backend_records(self) -> Dict[int, BackendRecord]:
        return _backend_records(self.state, self.backend_ids, self.gens)


@dataclasses.dataclass
class Limits:
    """Capacities of the loaded maps (their max_entries)."""

    vips: int = L.MAX_VIPS
    backends: int = L.MAX_BACKENDS
    rings: int = L.MAX_RINGS


@dataclasses.dataclass
class Plan:
    """The writes that turn one Layout into the next, grouped by map."""

    old: Layout
    new: Layout
    backend_writes: Dict[int, BackendRecord] = dataclasses.field(default_factory=dict)
    backend_frees: Dict[int, int] = dataclasses.field(default_factory=dict)  # id -> gen kept
    ring_writes: Dict[int, array] = dataclasses.field(default_factory=dict)
    ring_deletes: Set[int] = dataclasses.field(default_factory=set)
    member_writes: Dict[Tuple[int, int], Tuple[int, int]] = dataclasses.field(default_factory=dict)
    member_deletes: Set[Tuple[int, int]] = dataclasses.field(default_factory=set)
    vip_writes: Dict[VipKey, VipRecord] = dataclasses.field(default_factory=dict)
    vip_deletes: Set[VipKey] = dataclasses.field(default_factory=set)
    addr_flags: Dict[IPAddress, int] = dataclasses.field(default_factory=dict)  # 0: delete
    new_vip_ids: Set[int] = dataclasses.field(default_factory=set)
    new_backend_ids: Set[int] = dataclasses.field(default_factory=set)
    added: Tuple[Vip, ...] = ()
    removed: Tuple[Vip, ...] = ()
    changed: Tuple[Tuple[Vip, Vip], ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.backend_writes or self.backend_frees or self.ring_writes
                    or self.ring_deletes or self.member_writes or self.member_deletes
                    or self.vip_writes or self.vip_deletes or self.addr_flags)

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
        return lines


def _vip_changes(old: Vip, new: Vip) -> List[str]:
    out = []
    for field in ("mode", "flow_table", "affinity", "announce", "ring_size"):
        a, b = getattr(old, field), getattr(new, field)
        if a != b:
            out.append(f"{field}: {a} -> {b}")
    ob = {b.address: b for b in old.backends}
    nb = {b.address: b for b in new.backends}
    for addr in sorted(nb.keys() - ob.keys(), key=lambda a: (a.version, a)):
        out.append(f"+ backend {addr} (weight {nb[addr].weight}, {nb[addr].state})")
    for addr in sorted(ob.keys() - nb.keys(), key=lambda a: (a.version, a)):
        out.append(f"- backend {addr}")
    for addr in sorted(ob.keys() & nb.keys(), key=lambda a: (a.version, a)):
        if ob[addr] != nb[addr]:
            changes = [f"{f} {getattr(ob[addr], f)} -> {getattr(nb[addr], f)}"
                       for f in ("weight", "state", "mac", "local")
                       if getattr(ob[addr], f) != getattr(nb[addr], f)]
            out.append(f"~ backend {addr}: {', '.join(changes)}")
    return out


def _backend_attrs(state: DesiredState) -> Dict[IPAddress, Backend]:
    """One Backend per address, checking that every VIP agrees on what the address is."""
    seen: Dict[IPAddress, Tuple[Backend, VipKey]] = {}
    for vip in state:
        for b in vip.backends:
            prev = seen.get(b.address)
            if prev is None:
                seen[b.address] = (b, vip.key)
                continue
            other, where = prev
            if other.local != b.local:
                raise StateError(f"backend {b.address} is local in one VIP and not in another "
                                 f"({where} and {vip.key}): it is one node")
            if other.mac != b.mac:
                raise StateError(f"backend {b.address} has MAC {other.mac} in {where} but "
                                 f"{b.mac} in {vip.key}")
    return {addr: b for addr, (b, _) in seen.items()}


def _backend_records(state: DesiredState, ids: Dict[IPAddress, int],
                     gens: Dict[int, int]) -> Dict[int, BackendRecord]:
    active = {b.address for v in state for b in v.backends if b.in_ring}
    out = {}
    for addr, b in _backend_attrs(state).items():
        bid = ids[addr]
        out[bid] = BackendRecord(addr, L.BACKEND_ACTIVE if addr in active
                                 else L.BACKEND_DRAINING, b.local, b.mac, gens[bid])
    return out


def _lowest_free(used, limit: int, what: str) -> int:
    for i in range(limit):
        if i not in used:
            return i
    raise StateError(f"no free {what} id: all {limit} are in use (the map is full)")


def _addr_flags(state: DesiredState) -> Dict[IPAddress, int]:
    flags: Dict[IPAddress, int] = {}
    for v in state:
        f = L.ADDR_PORTS if v.key.port else L.ADDR_ALL_PORTS
        if v.announce:
            f |= L.ADDR_ANNOUNCE
        flags[v.key.address] = flags.get(v.key.address, 0) | f
    return flags


def make_plan(old: Layout, desired: DesiredState, limits: Limits = Limits()) -> Plan:
    """The writes from `old` to `desired`; StateError (before anything is written) when
    the state is inconsistent or does not fit the maps."""
    if len(desired) > limits.vips:
        raise StateError(f"{len(desired)} VIPs do not fit the VIP map ({limits.vips})")
    attrs = _backend_attrs(desired)
    old_records = old.backend_records()
    old_by_key, new_by_key = old.state.by_key(), desired.by_key()

    # Ids are kept for what stays and handed out (lowest free first) for what is new. An id
    # freed by this plan is not handed out again by it: until the plan's last step the old
    # holder may still be in use, so reusing it at once could send its packets astray.
    backend_ids = {a: i for a, i in old.backend_ids.items() if a in attrs}
    gens = dict(old.gens)
    new_backend_ids = set()
    used = set(old.backend_ids.values())
    for addr in sorted(attrs.keys() - backend_ids.keys(), key=lambda a: (a.version, a)):
        bid = _lowest_free(used, limits.backends, "backend")
        used.add(bid)
        backend_ids[addr] = bid
        gens[bid] = gens.get(bid, 0) % GEN_MAX + 1
        new_backend_ids.add(bid)

    # VIP ids
    vip_ids = {k: i for k, i in old.vip_ids.items() if k in new_by_key}
    used = set(old.vip_ids.values())
    new_vip_ids = set()
    for vip in desired:
        if vip.key not in vip_ids:
            vid = _lowest_free(used, limits.vips, "VIP")
            used.add(vid)
            vip_ids[vip.key] = vid
            new_vip_ids.add(vid)

    # rings: one per distinct ring key; existing rings keep their ids and contents
    wanted = {ring_key(v) for v in desired}
    ring_ids = {k: i for k, i in old.ring_ids.items() if k in wanted}
    used = set(old.ring_ids.values())
    ring_writes: Dict[int, array] = {}
    for key in sorted(wanted - ring_ids.keys()):
        rid = _lowest_free(used, limits.rings, "ring")
        used.add(rid)
        ring_ids[key] = rid
        size, members = key
        ring_writes[rid] = build_table(
            [(addr, weight, backend_ids[ipaddress.ip_address(addr)]) for addr, weight in members],
            size)

    new = Layout(desired, vip_ids, backend_ids, gens, ring_ids)
    plan = Plan(old=old, new=new, ring_writes=ring_writes, new_vip_ids=new_vip_ids,
                new_backend_ids=new_backend_ids)
    plan.ring_deletes = set(old.ring_ids.values()) - set(ring_ids.values())

    new_records = new.backend_records()
    plan.backend_writes = {i: r for i, r in new_records.items() if old_records.get(i) != r}
    plan.backend_frees = {i: gens[i] for i in old_records.keys() - new_records.keys()}

    for key, vip in new_by_key.items():
        rec = VipRecord(vip_ids[key], ring_ids[ring_key(vip)], vip.ring_size,
                        MODE_CODES[vip.mode], vip_flags(vip))
        prev = old_by_key.get(key)
        prev_rec = None if prev is None else VipRecord(
            old.vip_ids[key], old.ring_ids[ring_key(prev)], prev.ring_size,
            MODE_CODES[prev.mode], vip_flags(prev))
        if rec != prev_rec:
            plan.vip_writes[key] = rec
    plan.vip_deletes = old_by_key.keys() - new_by_key.keys()

    old_members = _members(old.state, old.vip_ids, old.backend_ids)
    new_members = _members(desired, vip_ids, backend_ids)
    plan.member_writes = {k: v for k, v in new_members.items() if old_members.get(k) != v}
    plan.member_deletes = old_members.keys() - new_members.keys()

    old_flags, new_flags = _addr_flags(old.state), _addr_flags(desired)
    for addr in old_flags.keys() | new_flags.keys():
        if old_flags.get(addr) != new_flags.get(addr):
            plan.addr_flags[addr] = new_flags.get(addr, 0)

    added = tuple(v for k, v in new_by_key.items() if k not in old_by_key)
    removed = tuple(v for k, v in old_by_key.items() if k not in new_by_key)
    changed = tuple((old_by_key[k], v) for k, v in new_by_key.items()
                    if k in old_by_key and old_by_key[k] != v)
    plan.added, plan.removed, plan.changed = added, removed, changed
    return plan


def _members(state: DesiredState, vip_ids: Dict[VipKey, int],
             backend_ids: Dict[IPAddress, int]) -> Dict[Tuple[int, int], Tuple[int, int]]:
    """{(vip id, backend id): (weight, state code)} of every VIP's backends."""
    out = {}
    for vip in state:
        vid = vip_ids[vip.key]
        for b in vip.backends:
            out[(vid, backend_ids[b.address])] = (b.weight, STATE_CODES[b.state])
    return out


def rebuild_state(vips: Dict[VipKey, VipRecord], members: Dict[Tuple[int, int], Tuple[int, int]],
                  backends: Dict[int, BackendRecord]) -> Layout:
    """The Layout (and so the DesiredState) that map contents describe: what a restarted
    process reads back before its first apply. Inverse of what apply writes."""
    by_vip: Dict[int, List[Tuple[int, int, int]]] = {}
    for (vid, bid), (weight, st) in members.items():
        by_vip.setdefault(vid, []).append((bid, weight, st))
    out_vips = []
    ring_ids: Dict[RingKey, int] = {}
    for key, rec in vips.items():
        bks = []
        for bid, weight, st in by_vip.get(rec.vip_id, ()):
            br = backends.get(bid)
            if br is None:
                raise StateError(f"VIP {key} lists backend id {bid}, which is not in use: "
                                 f"the maps are inconsistent")
            bks.append(Backend(br.address, weight, STATE_NAMES.get(st, "active"), br.mac,
                               br.local))
        vip = Vip(key=key, backends=tuple(bks), mode=MODE_NAMES[rec.mode],
                  flow_table=not rec.flags & L.VIP_NO_FLOW_TABLE,
                  affinity="client-ip" if rec.flags & L.VIP_AFFINITY_SRC else "none",
                  announce=bool(rec.flags & L.VIP_ANNOUNCE), ring_size=rec.ring_size)
        out_vips.append(vip)
        ring_ids[ring_key(vip)] = rec.ring_id
    state = DesiredState(tuple(out_vips))
    backend_ids = {br.address: bid for bid, br in backends.items() if br.state}
    gens = {bid: br.gen for bid, br in backends.items() if br.gen}
    return Layout(state, {k: r.vip_id for k, r in vips.items()}, backend_ids, gens, ring_ids)

