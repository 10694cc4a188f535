"""Datapath.apply: a DesiredState into the maps, writing only the difference, all or nothing.

``Applier`` keeps what an apply needs between calls: the Layout the maps hold (read back
once, then carried from plan to plan), the image of the live VIP index, the epoch it last
saw, and the lock that makes applies to one pinned datapath take turns. Each apply plans
(pyxlb/plan.py), then writes through the accessors of ``dp.tables`` bound to a
``Transaction``, which records how to undo every write: a kernel error half-way rolls back
what was written, so the previous state is still what packets see.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Optional, Tuple

from pyxlb import _bpf, netlink
from pyxlb import _layouts as L
from pyxlb import plan as plan_mod
from pyxlb.addr import parse_addr, parse_mac
from pyxlb.chain import chain_id
from pyxlb.state import DesiredState, StateError, carry_verdicts

from .flows import purge_moved
from .readback import limits, read_layout
from .tables import BalancerTables
from .vipindex import VipIndex

NO_ANNOUNCE = (0, bytes(6))
VERDICTS = ("keep", "set")
PEERS = ("keep", "set")


def held_peers(layout: plan_mod.Layout) -> frozenset:
    """The extra chain peers xlb_chain_peers holds: the planned state's own when this
    process wrote the table, else (a layout read back, whose state has none) every address
    the table names that no stateless VIP of the state lists as a backend. (An address
    that is both is taken for a backend: the table cannot tell.)"""
    if layout.peers_synced:
        return layout.state.peers
    backends = {b.address for v in layout.state.vips if v.stateless for b in v.backends}
    return frozenset(a for a in (layout.chain_peers or {}).values() if a not in backends)


@dataclasses.dataclass(frozen=True)
class ApplyResult:
    """What one apply did.

    ``plan``: the writes planned (``plan.empty``: the state was already in force);
    ``seconds``: from the call until it returned, None when nothing was written (a dry run
    or an empty plan); ``live_seconds``: from the call until every changed VIP pointed at
    its new ring, which is what a client sees (the rest frees old rings, which waits for
    the kernel's RCU grace period, and refreshes next hops); ``writes``: map entries
    written or deleted; ``flows_forgotten``: flows moved off a backend their VIP no longer
    sends them to; ``nexthops``: next hops resolved for new backends."""

    plan: plan_mod.Plan = dataclasses.field(repr=False)
    seconds: Optional[float] = None
    live_seconds: Optional[float] = None
    writes: int = 0
    flows_forgotten: int = 0
    nexthops: int = 0


class Transaction:
    """A writer (see pyxlb/datapath/maps.py) that keeps an undo log: rollback() puts every
    touched entry back, commit() forgets it."""

    def __init__(self):
        self._undo = []
        self._keep = []     # inner maps taken out of a map-of-maps, held until commit

    @property
    def writes(self) -> int:
        """Entries written or deleted so far."""
        return len(self._undo)

    def update(self, m: "_bpf.Map", key, value) -> None:
        prev = m.get(key)
        m.update(key, value)
        self._undo.append((m, key, prev))

    def delete(self, m: "_bpf.Map", key) -> None:
        """Delete an entry; one that is absent is skipped."""
        prev = m.get(key)
        if prev is None:
            return
        m.delete(key)
        self._undo.append((m, key, prev))

    # An LPM trie's lookup answers with the longest prefix that covers the key, not the
    # key's own entry, so update() and delete() cannot read what to undo: the planner,
    # which knows which entries exist, says so instead.

    def insert(self, m: "_bpf.Map", key, value) -> None:
        """Add an entry the caller knows is absent (undo: delete it)."""
        m.update(key, value)
        self._undo.append((m, key, None))

    def remove(self, m: "_bpf.Map", key, value) -> None:
        """Delete an entry the caller knows holds `value` (undo: put it back); one already
        gone is skipped."""
        try:
            m.delete(key)
        except KeyError:
            return
        self._undo.append((m, key, value))

    def add_inners(self, outer: "_bpf.Map", new: Dict[int, "_bpf.Map"], *,
                   keep_old: bool = False) -> Callable[[], None]:
        """Point slots of a map-of-maps at new inner maps (slot -> map, handles this takes
        over) with one batch update made in a thread: the kernel publishes the slots at
        once, then waits for an RCU grace period before the call returns. This returns as
        soon as every slot shows its map; the returned function waits for the call (and
        raises its error). keep_old: hold the maps replaced until commit, so a rollback
        can put them back (rollback otherwise finds them by id, if they still exist)."""
        rids = sorted(new)
        inners = [new[rid] for rid in rids]
        try:
            for rid in rids:
                present = outer.get(rid) is not None
                if present and keep_old:
                    old = outer.inner_map(rid)
                    self._keep.append(old)
                    self._undo.append((outer, rid, ("ring", old.id)))
                else:
                    self._undo.append((outer, rid, ("ring", present and outer.inner_id(rid))))
        except BaseException:
            for m in inners:
                m.close()
            raise
        failure = []

        def install():
            try:
                outer.set_inner_batch(rids, inners)
            except BaseException as exc:        # reported by finish()
                failure.append(exc)

        worker = threading.Thread(target=install, name="pyxlb-rings", daemon=True)
        worker.start()
        wanted = {rid: m.id for rid, m in zip(rids, inners)}

        def visible():
            return all(outer.get(rid) is not None and outer.inner_id(rid) == mid
                       for rid, mid in wanted.items())

        while worker.is_alive() and not visible():
            time.sleep(0.0002)

        def finish():
            worker.join()
            for m in inners:
                m.close()
            if failure:
                raise failure[0]
        if failure:
            finish()
        return finish

    def delete_inners(self, outer: "_bpf.Map", slots) -> None:
        """Empty slots of a map-of-maps, in parallel: each delete waits for its own RCU
        grace period, and the waits overlap. The old inner maps stay open until commit, for
        rollback; an empty slot is skipped."""
        present = [rid for rid in slots if outer.get(rid) is not None]
        for rid in present:
            old = outer.inner_map(rid)
            self._keep.append(old)
            self._undo.append((outer, rid, ("ring", old.id)))
        if not present:
            return
        with ThreadPoolExecutor(max_workers=min(16, len(present))) as pool:
            list(pool.map(outer.delete, present))

    def commit(self) -> None:
        for m in self._keep:
            m.close()
        self._keep.clear()
        self._undo.clear()

    def rollback(self) -> None:
        for m, key, prev in reversed(self._undo):
            try:
                if isinstance(prev, tuple) and prev and prev[0] == "ring":
                    if not prev[1]:
                        if m.get(key) is not None:
                            m.delete(key)
                    else:
                        with _bpf.Map.from_id(prev[1]) as old:
                            m.set_inner(key, old)
                elif prev is None:
                    m.delete(key)
                else:
                    m.update(key, prev)
            except (OSError, KeyError):
                pass        # best effort: keep undoing the rest
        self._undo.clear()
        for m in self._keep:
            m.close()
        self._keep.clear()


def chain_window(config: dict) -> int:
    """Seconds a stateless VIP's changed ring slot remembers its previous owner: the
    config record's chain_window, or the default when it is 0."""
    return config["chain_window"] or L.CHAIN_WINDOW_DEFAULT


def prev_tables(t: BalancerTables, plan: plan_mod.Plan, now_ns: int, window: int,
                ) -> Dict[int, Tuple[object, object]]:
    """The previous owners of each stateless ring the plan writes ({ring id: (chains,
    untils)}), by plan.prev_slots from the old ring and its previous owners as the maps
    hold them now (read before any of the plan's writes). `now_ns`: CLOCK_MONOTONIC ns;
    a slot that changes hands now is remembered for `window` seconds."""
    if not plan.prev_writes:
        return {}
    shift = L.CHAIN_TIME_SHIFT
    now, until = now_ns >> shift, (now_ns + window * 1_000_000_000) >> shift
    chains = None
    out = {}
    for rid, source in sorted(plan.prev_writes.items()):
        old_ring = old_chains = old_untils = None
        if source is not None:
            if chains is None:      # the old owners' chain ids, by their backend ids
                chains = {bid: chain_id(a) for a, bid in plan.old.backend_ids.items()}
            try:
                old_ring = t.rings.get(source)
            except KeyError:
                pass
            try:
                old_chains, old_untils = t.prev_rings.get(source)
            except KeyError:
                pass
        out[rid] = plan_mod.prev_slots(old_ring, plan.ring_writes[rid], old_chains,
                                       old_untils, chains or {}, now, until)
    return out


def refresh_nexthops(t: BalancerTables, layout: plan_mod.Layout,
                     backend_ids: Optional[Iterable[int]] = None) -> int:
    """Fill the next-hop cache from the kernel's route and neighbour tables (and the MACs
    given for L2 backends), for the backends of `layout` (or those of them in
    `backend_ids`). Unresolved backends are left to the datapath's FIB fallback, which lets
    the kernel resolve them. Returns how many were written."""
    if backend_ids is not None and not backend_ids:
        return 0
    records = layout.backend_records()
    ids = records.keys() if backend_ids is None else set(backend_ids) & records.keys()
    resolver = netlink.Resolver()
    written = 0
    for bid in sorted(ids):
        rec = records[bid]
        if rec.local:
            continue
        hop = resolver.resolve(rec.address, rec.mac)
        if hop is not None:
            t.nexthops.put(bid, hop.dmac, hop.smac, hop.ifindex)
            written += 1
    return written


def announce_source(interfaces, fallback_mac=None) -> Tuple[int, bytes]:
    """(ifindex, MAC) that ARP/NDP answers for announced VIPs carry: the first of
    `interfaces` (those running the balancer) with a MAC, else `fallback_mac` on any
    interface; StateError if neither."""
    for iface in interfaces:
        mac = netlink.link_mac(iface["ifindex"])
        if mac:
            return iface["ifindex"], parse_mac(mac)
    if fallback_mac is not None:
        return 0, parse_mac(fallback_mac)
    raise StateError("announcing a VIP needs the balancer attached to an interface "
                     "with a MAC address")


class Applier:
    """Applies to one Datapath's maps (``tables``), pinned at `pin_dir` (None: not
    pinned, no lock needed)."""

    def __init__(self, tables: BalancerTables, pin_dir: Optional[str]):
        self.tables = tables
        self.pin_dir = pin_dir
        # the image of the live VIP index; None: built from xlb_vips by the next apply
        self.image: Optional[VipIndex] = None
        self._layout: Optional[plan_mod.Layout] = None
        self._epoch: Optional[int] = None   # xlb_epoch when this process last read or wrote
        self._lock_depth = 0                # lock() held (re-entered by apply in editing)
        # called once the lock is taken: Datapath raises there if an upgrade by another
        # process replaced the pinned maps this object holds
        self.on_locked: Optional[Callable[[], None]] = None

    def layout(self, refresh: bool = False) -> plan_mod.Layout:
        """What the maps hold, read back once (apply keeps it current afterwards); with
        refresh, read again (another process may have applied since)."""
        if self._layout is None or refresh:
            now = self.tables.epoch.read()  # read before: an apply meanwhile shows later
            if now != self._epoch:
                self.image = None           # another process wrote: the image may be stale
            self._epoch = now
            self._layout = read_layout(self.tables)
        return self._layout

    @contextlib.contextmanager
    def lock(self):
        """Applies to one pinned datapath, from any process, one at a time: an exclusive
        flock on the pin directory (released when its descriptor closes). Re-entrant
        within this object: apply inside editing() does not wait for itself."""
        if self.pin_dir is None or self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self.pin_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_depth = 1
            if self.on_locked is not None:
                self.on_locked()
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)

    def sync(self) -> None:
        """Forget what this object knows of the maps (the layout, the image of the VIP
        index) if another writer wrote them since it last read or wrote them (the epoch
        moved)."""
        if self._layout is not None and self.tables.epoch.read() != self._epoch:
            self._layout = None
            self.image = None

    def apply(self, state: DesiredState, *, dry_run: bool = False,
              announce_as: Callable[[], Tuple[int, bytes]],
              verdicts: str = "keep", peers: str = "keep") -> ApplyResult:
        """See Datapath.apply. `announce_as` gives the (ifindex, MAC) of ARP/NDP answers,
        asked only when the plan announces an address."""
        if verdicts not in VERDICTS:
            raise ValueError(f"verdicts must be 'keep' or 'set', not {verdicts!r}")
        if peers not in PEERS:
            raise ValueError(f"peers must be 'keep' or 'set', not {peers!r}")
        with self.lock():
            self.sync()
            started = time.perf_counter()
            layout = self.layout()
            if layout.chain_peers is None:      # read back without them: read them now
                layout.chain_peers = self.tables.chain_peers.read()
            if verdicts == "keep":
                state = carry_verdicts(layout.state, state)
            if peers == "keep":
                held = held_peers(layout)
                if state.peers != held:
                    state = state.with_peers(held)
            plan = plan_mod.make_plan(layout, state, limits(self.tables))
            if plan.empty and not dry_run:
                layout.peers_synced = True      # compared with the state's: they agree
                if layout.state.peers != state.peers:   # (a state read back has none)
                    layout.state = layout.state.with_peers(state.peers)
            if dry_run or plan.empty:
                return ApplyResult(plan)
            announce = announce_as() if any(f & L.ADDR_ANNOUNCE
                                            for f in plan.addr_flags.values()) else NO_ANNOUNCE
            tx = Transaction()
            try:
                live_at = self._execute(plan, self.tables.through(tx), announce)
            except BaseException:
                tx.rollback()
                self.image = None       # read back from the maps by the next apply
                raise
            writes = tx.writes
            tx.commit()
            self._layout = plan.new
            self._epoch = self.tables.epoch.bump()
            forgotten = purge_moved(self.tables.flows, plan)
            old_records = plan.old.backend_records()
            nexthops = refresh_nexthops(
                self.tables, plan.new,
                {bid for bid, rec in plan.backend_writes.items()
                 if bid not in old_records or old_records[bid].mac != rec.mac
                 or old_records[bid].local != rec.local})
            return ApplyResult(plan, time.perf_counter() - started, live_at - started,
                               writes, forgotten, nexthops)

    def _next_image(self, writes: Dict[bytes, bytes], deletes) -> VipIndex:
        """The VIP index for what xlb_vips holds once this apply's VIP writes are done: the
        kept image with the changes, or the whole map read back when there is no image
        (none yet, or dropped because another writer wrote since: see sync)."""
        if self.image is None:
            self.image = VipIndex(self.tables.vips.packed())
        else:
            self.image.update(writes, deletes)
        return self.image

    def _execute(self, plan: plan_mod.Plan, t: BalancerTables,
                 announce: Tuple[int, bytes]) -> float:
        """The writes, in an order that keeps each packet's view whole: what new things
        need (backends, rings, members) exists before a VIP points at it, and what old
        things used goes only once no VIP points at it. Returns when every VIP used its
        new ring (time.perf_counter)."""
        # stray trie entries: no VIP record consults them, so they may go before anything
        t.source_ranges.remove_all(plan.stray_deletes)
        new_backends = sorted(plan.new_backend_ids)
        t.counters.reset_backends(new_backends)
        t.nexthops.clear_all(new_backends)
        t.backends.put_all(sorted(plan.backend_writes.items()))
        # stateless VIPs' previous owners, from their old rings as they are now
        prev = prev_tables(t, plan, time.monotonic_ns(), chain_window(t.config.read()))
        t.chain_peers.put_all(plan.peer_writes)
        # new rings go in with one batch update; its RCU grace period (ms) runs in the
        # background while the rest is written: the rings are visible before it ends;
        # their previous owners likewise, before any VIP record points at them
        finish_rings = t.rings.put_all(plan.ring_writes)
        finish_prev = t.prev_rings.put_all(prev)
        t.members.put_all(sorted(plan.member_writes.items()))
        # health specs, like members, before the VIP records (read back after them)
        t.health_specs.put_all(sorted(plan.spec_writes.items()))
        t.counters.reset_vips(sorted(plan.new_vip_ids))
        # a VIP's client prefixes are in the trie before its record says to look there
        t.source_ranges.add_all(plan.range_writes)
        vip_writes = t.vips.put_all(sorted(plan.vip_writes.items(), key=lambda kv: str(kv[0])))
        for addr, flags in sorted(plan.addr_flags.items(), key=lambda kv: str(kv[0])):
            if flags:
                t.vip_addrs.put(addr, flags, *(announce if flags & L.ADDR_ANNOUNCE
                                               else NO_ANNOUNCE))
            else:
                t.vip_addrs.delete(addr)
        if plan.addr_flags:
            t.vip_addrs.write_filter(parse_addr(a)[1] for a in plan.new.index().kinds)
        vip_deletes = t.vips.delete_all(sorted(plan.vip_deletes, key=str))
        # the datapath reads VIPs from the index, a copy: a new one, with the writes and
        # deletes above, goes in with one swap, before any ring or backend they used goes
        finish_index = None
        if vip_writes or vip_deletes:
            finish_index = t.vip_index.install(self._next_image(vip_writes, vip_deletes))
        live_at = time.perf_counter()       # every VIP now uses its new ring
        # ... and leave once no record (or only one without the flag) points there
        t.source_ranges.remove_all(plan.range_deletes)
        try:
            finish_rings()
        finally:
            finish_prev()
        if finish_index is not None:
            finish_index()
        t.members.delete_all(sorted(plan.member_deletes))
        t.health_specs.delete_all(sorted(plan.spec_deletes))
        t.rings.delete_all(plan.ring_deletes)
        t.prev_rings.delete_all(plan.prev_deletes)
        t.chain_peers.clear_all(plan.peer_clears)
        # gone: flows pinned to them re-hash; the generation stays for the next holder
        frees = sorted(plan.backend_frees.items())
        t.backends.free_all(frees)
        t.nexthops.clear_all(bid for bid, _ in frees)
        return live_at
