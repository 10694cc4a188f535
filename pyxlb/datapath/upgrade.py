"""Upgrading a pinned datapath to this version of pyxlb, under traffic.

What a start does with a datapath already pinned (the agent, `pyxlb attach`, `pyxlb decap
attach`, `pyxlb upgrade`), for every kind pinned in the directory (a balancer and a
decapsulator there share maps, so they are upgraded together):

- same version (version.py): adopt it as it is;
- a new program over maps of the same layouts: load it over the pinned maps and replace
  the program on every interface with one atomic XDP_FLAGS_REPLACE each: an interface
  always runs the old program or the new one;
- changed layouts: the new maps are made beside the old ones, in ``<pin dir>/upgrade``;
  every entry is copied into them (records translated by name, translate.py; map-of-maps
  get new inner maps, copied the same way; sized maps keep the running datapath's size);
  then the program is replaced on every interface; then the flows the old program recorded
  after the copy are copied too (``merge``); then the new pins take the old names and the
  old maps are freed.

Flows that start between the copy and the replacement are not lost: applies wait for the
upgrade (it holds the apply lock), so the rings and backends do not change, and a flow the
new program does not find is given the backend the old program gave it (Maglev over the
same ring and seed); the merge then records it, so it also survives the next ring change.

Crash safety. Markers in ``upgrade`` (bpffs holds directories, not files) say how far an
upgrade got: ``staged`` once the new maps and program are pinned there, ``committing``
once the pins start taking the old names. The next start (``resume``) completes an
upgrade whose new program already runs on an interface, or that was committing; any other
is rolled back (its pins removed: the old datapath never stopped forwarding). A process
killed at any step therefore leaves the old or the new program forwarding, never neither.
PYXLB_UPGRADE_KILL_AT=<step> (a name from Plan.kill_points) makes the process SIGKILL
itself right after that step: the tests use it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import mmap
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.bpf import object_path
from pyxlb.errors import PyxlbError

from . import version as V
from .links import interfaces_running, jumps_pin, prog_pin
from .maps import (BALANCER, CONFIG, DECAP, FLOWS4, FLOWS6, LRU_FLOWS6, ObjectSpec, fill_jumps,
                   completed_config, online_cpus)
from .translate import Untranslatable, copy_ops, identity

STAGE_DIR = "upgrade"      # bpffs refuses names with a dot
STAGED, COMMITTING = "staged", "committing"
KILL_ENV = "PYXLB_UPGRADE_KILL_AT"
POLICIES = ("auto", "never")
# maps the program itself writes: entries it adds after the copy are merged in after the swap
DATAPATH_WRITTEN = (FLOWS4, FLOWS6)

# Carrying a map's entries over a change of what they mean (version.MEANINGS):
# (map, the meaning it had, the meaning it has now) -> fill(old map, new map, maps). The
# release that bumps a meaning adds its entry here; an upgrade that would need a missing
# one is refused (a copy member by member would carry the old meaning into the new
# program). fill runs once the new config record is complete (`maps(name)` opens any map
# of the new datapath, as for SUCCESSORS), and, for a map the program writes, again after
# the swap, for entries the old program wrote meanwhile: it must add only what the new
# map lacks. It returns how many entries it added.
TRANSFORMS: Dict[Tuple[str, int, int], Callable[["_bpf.Map", "_bpf.Map", Callable], int]] = {}

# A map of this version that an older release held under another name (and type):
# new name -> (old name, fill(old map, new map, maps)). When the old map is pinned, the
# upgrade makes the new one and calls fill after every other map was migrated (`maps(name)`
# opens any map of the new datapath, staged or kept, for the caller to close), and again
# after the swap, for entries the old program wrote meanwhile: fill must add only what the
# new map lacks. The old map is dropped at the commit.
SUCCESSORS: Dict[str, Tuple[str, Callable[["_bpf.Map", "_bpf.Map", Callable], None]]] = {}


class UpgradeRefused(PyxlbError):
    """The pinned datapath cannot (or may not) be upgraded by this version."""


@dataclass
class MapChange:
    name: str
    action: str                 # keep | migrate | new | drop
    why: str = ""
    entries: Optional[int] = None


@dataclass
class Plan:
    """What an upgrade of the datapath at `pin_dir` does (describe() says it in words)."""

    pin_dir: str
    kinds: List[ObjectSpec]
    old: V.Version
    new: V.Version
    changes: List[MapChange]
    programs: Dict[str, bool]           # object -> its program changes
    interfaces: Dict[str, List[dict]] = field(default_factory=dict)   # object -> running
    layouts: Dict[str, dict] = field(default_factory=dict)   # map -> the new object's layout

    @property
    def needed(self) -> bool:
        return (any(c.action != "keep" for c in self.changes) or any(self.programs.values())
                or not self.old.recorded)

    @property
    def migrating(self) -> List[MapChange]:
        return [c for c in self.changes if c.action == "migrate"]

    def describe(self) -> List[str]:
        if not self.needed:
            return [f"the datapath at {self.pin_dir} is already version {self.new}: "
                    f"nothing to do"]
        lines = [f"upgrade the datapath at {self.pin_dir} from version {self.old} to "
                 f"{self.new}"]
        for c in self.changes:
            if c.action == "keep":
                continue
            count = "" if c.entries is None else \
                f" ({c.entries} {'entry' if c.entries == 1 else 'entries'})"
            lines.append(f"  {c.action} {c.name}{count}{': ' + c.why if c.why else ''}")
        kept = sum(c.action == "keep" for c in self.changes)
        if kept:
            lines.append(f"  keep {kept} maps as they are")
        for obj, changed in self.programs.items():
            names = ", ".join(i["name"] for i in self.interfaces.get(obj, [])) or "no interface"
            lines.append(f"  {'replace' if changed else 'keep'} the {obj} program "
                         f"(on {names})")
        return lines

    def kill_points(self) -> List[str]:
        """Every step after which PYXLB_UPGRADE_KILL_AT may stop the upgrade, in order."""
        points = [STAGED, "migrated"]
        for obj in self.programs:
            points += [f"swap:{i['name']}" for i in self.interfaces.get(obj, [])]
        points += ["swapped", "merged"]
        points += [f"commit:{c.name}" for c in self.changes if c.action in ("migrate", "new")]
        return points + ["committed"]


def _netns_marker() -> str:
    """The name of the stage's marker of the network namespace the upgrade runs in (the
    calling thread's: the interfaces it swaps are that namespace's)."""
    ino = os.stat(f"/proc/self/task/{threading.get_native_id()}/ns/net").st_ino
    return f"netns_{ino}"


def _kill_point(step: str) -> None:
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


SPECS = (BALANCER, DECAP)


def kinds_at(pin_dir: str) -> List[ObjectSpec]:
    """The objects with a datapath pinned at `pin_dir`."""
    return [k for k in SPECS if os.path.exists(prog_pin(k, pin_dir))]


def _pinned_maps(pin_dir: str) -> List[str]:
    return sorted(n for n in os.listdir(pin_dir)
                  if n.startswith("xlb_") and n != V.RECORD_MAP)


@contextlib.contextmanager
def locked(pin_dir: str):
    """The apply lock (an flock on the pin directory, as Applier.lock takes it)."""
    fd = os.open(pin_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- the plan --------------------------------------------------------------------------------

def versions(pin_dir: str):
    """(the version pinned at `pin_dir`, this pyxlb's version of the same kinds): of every
    kind pinned there together (a balancer and a decapsulator share maps and are upgraded
    together), as `pyxlb status` and `pyxlb upgrade` show them."""
    pin_dir = os.path.abspath(pin_dir)
    kinds = kinds_at(pin_dir)
    pinned = _pinned_maps(pin_dir)
    new = V.combined(V.of_object(k) for k in kinds)
    old = V.pinned(pin_dir, pinned).subset([*pinned, *(k.object for k in kinds)])
    return old, new


def _filled_slots(outer: "_bpf.Map") -> List[int]:
    """The slots of a map-of-maps that hold an inner map."""
    out = []
    for slot in range(outer.max_entries):
        with contextlib.suppress(KeyError):
            outer.inner_id(slot)
            out.append(slot)
    return out


def _entries(m: "_bpf.Map") -> Optional[int]:
    if m.is_outer:
        return len(_filled_slots(m))
    if m.type in (_bpf.MAP_TYPE_ARRAY, _bpf.MAP_TYPE_PERCPU_ARRAY):
        return m.max_entries
    return m.count()


def make_plan(pin_dir: str, count: bool = False) -> Plan:
    """The plan to bring the datapath at `pin_dir` to this version (UpgradeRefused if this
    version cannot). With `count`, how many entries each migrated map holds."""
    pin_dir = os.path.abspath(pin_dir)
    kinds = kinds_at(pin_dir)
    if not kinds:
        raise UpgradeRefused(f"no datapath at {pin_dir}")
    pinned = _pinned_maps(pin_dir)
    old, new = versions(pin_dir)
    newer = old.newer_meanings(new)
    if newer:
        which = ", ".join(sorted(newer))
        raise UpgradeRefused(f"the datapath at {pin_dir} is version {old}, newer than this "
                             f"pyxlb's {new} (what {which} holds means something this "
                             f"version does not know): run the newer pyxlb, or detach it "
                             f"and attach again")
    changes = []
    for name in sorted(new.maps):
        if name not in pinned:
            was = SUCCESSORS.get(name, ("",))[0]
            changes.append(MapChange(name, "new", f"filled from {was}" if was in pinned
                                     else ""))
        elif old.maps.get(name) == new.maps[name]:
            changes.append(MapChange(name, "keep"))
        else:
            changes.append(MapChange(name, "migrate", _why(pin_dir, name, old, new)))
    changes += [MapChange(n, "drop", "this version has no such map")
                for n in pinned if n not in new.maps]
    programs, interfaces = {}, {}
    for k in kinds:
        obj = k.object
        programs[obj] = old.entries.get(obj) != new.entries[obj]
        with _bpf.Program.from_pinned(prog_pin(k, pin_dir)) as prog:
            interfaces[obj] = interfaces_running(prog.id)
    plan = Plan(pin_dir, kinds, old, new, changes, programs, interfaces)
    migrating = {c.name for c in plan.migrating}
    for k in kinds:                     # each object opened once for the maps it migrates
        with _bpf.BpfObject.open(object_path(k.object)) as obj:
            plan.layouts.update({name: obj.map_layout(name) for name in k.maps.values()
                                 if name in migrating and name not in plan.layouts})
    for c in plan.migrating:
        was, now = _meanings(plan, c.name)
        if was != now and _transform(plan, c.name) is None:
            raise UpgradeRefused(f"cannot upgrade the datapath at {pin_dir} from version {old} "
                                 f"to {new}: what {c.name} holds changed meaning ({was} -> "
                                 f"{now}) and this version has no way to carry it over")
        with _bpf.Map.from_pinned(os.path.join(pin_dir, c.name)) as m:
            if was == now:
                _check_translatable(plan, c.name, m)
            if count:
                c.entries = _entries(m)
    return plan


def _meanings(plan: Plan, name: str) -> Tuple[int, int]:
    """(the meaning of map `name` pinned, in this version)."""
    was = plan.old.maps.get(name)
    return (was.meaning if was is not None else 1), plan.new.maps[name].meaning


def _transform(plan: Plan, name: str):
    was, now = _meanings(plan, name)
    return TRANSFORMS.get((name, was, now)) if was != now else None


def _why(pin_dir: str, name: str, old: V.Version, new: V.Version) -> str:
    if not old.recorded:
        return ("a map-of-maps, whose template the kernel does not tell"
                if old.maps.get(name, V.Entry(V.UNKNOWN)).fingerprint == V.UNKNOWN
                else "its layout changed")
    was, now = old.maps[name], new.maps[name]
    if was.meaning != now.meaning:
        return f"its meaning changed ({was.meaning} -> {now.meaning})"
    return "its layout changed"


def _inner_layout(outer: "_bpf.Map") -> Optional[dict]:
    for slot in _filled_slots(outer):
        with outer.inner_map(slot) as inner:
            return inner.layout()
    return None


def _record_ops(name: str, old: dict, new: dict):
    keys = copy_ops(old["key"], old["key_size"], new["key"], new["key_size"], f"{name} key")
    values = copy_ops(old["value"], old["value_size"], new["value"], new["value_size"],
                      f"{name} value")
    return keys, values


def _check_translatable(plan: Plan, name: str, m: "_bpf.Map") -> None:
    new = plan.layouts[name]
    try:
        if (m.type, bool(m.is_outer)) != (new["type"], new["inner"] is not None):
            raise Untranslatable(f"{name} changed its map type ({m.type} -> {new['type']})")
        if m.is_outer:
            inner = _inner_layout(m)
            if inner is not None:
                _record_ops(f"{name} inner map", inner, new["inner"])
        else:
            _record_ops(name, m.layout(), new)
    except Untranslatable as exc:
        raise UpgradeRefused(f"cannot upgrade the datapath at {plan.pin_dir} from version "
                             f"{plan.old} to {plan.new}: {exc}") from None


# -- copying a map ---------------------------------------------------------------------------

def _translate(data: bytes, count: int, old_size: int, new_size: int, ops) -> bytes:
    if identity(ops, old_size, new_size):
        return data
    return bytes(_bpf.translate_records(data, old_size, count, new_size, ops))


def _stride(m: "_bpf.Map", size: int) -> int:
    return (size + 7) // 8 * 8 if m.percpu else size


def _mmapable(m: "_bpf.Map") -> bool:
    return m.type == _bpf.MAP_TYPE_ARRAY and bool(m.flags & _bpf.MAP_F_MMAPABLE)


@contextlib.contextmanager
def _mapped(m: "_bpf.Map"):
    """An mmap-able array mapped into this process: (mapping, bytes between elements)."""
    stride = (m.value_size + 7) // 8 * 8
    length = -(-m.max_entries * stride // mmap.PAGESIZE) * mmap.PAGESIZE
    mm = mmap.mmap(m.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        yield mm, stride
    finally:
        mm.close()


def _read_values(m: "_bpf.Map") -> bytes:
    """Every value of an array, value_size bytes each (an mmap-able one read in one copy)."""
    if not _mmapable(m):
        return m.lookup_batch(chunk=65536)[1]
    with _mapped(m) as (mm, stride):
        raw = mm[:m.max_entries * stride]
    if stride == m.value_size:
        return raw
    return bytes(_bpf.translate_records(raw, stride, m.max_entries, m.value_size,
                                        [(0, 0, m.value_size)]))


def _write_values(m: "_bpf.Map", values: bytes, count: int) -> None:
    """Write `count` values (value_size bytes each) at indices 0.. of an array."""
    if not count:
        return
    if not _mmapable(m):
        m.write_array(memoryview(values)[:count * m.value_size])
        return
    with _mapped(m) as (mm, stride):
        if stride != m.value_size:
            values = bytes(_bpf.translate_records(values, m.value_size, count, stride,
                                                  [(0, 0, m.value_size)]))
        mm[:count * stride] = memoryview(values)[:count * stride]


@dataclass
class Snapshot:
    """What a datapath-written map held when it was copied (for the merge)."""

    keys: bytes
    values: bytes
    count: int
    new_values: bytes = b""             # arrays: the translated values written


def copy_map(name: str, old: "_bpf.Map", new: "_bpf.Map", layout: dict) -> Optional[Snapshot]:
    """Copy every entry of `old` into `new` (layout: the new map's, map_layout's form)."""
    if old.is_outer:
        _copy_outer(name, old, new, layout["inner"])
        return None
    src = old.layout()
    kops, vops = _record_ops(name, src, layout)
    if old.type == _bpf.MAP_TYPE_LPM_TRIE:
        for k, v in old.items():
            new.update(_translate(k, 1, old.key_size, new.key_size, kops),
                       _translate(v, 1, old.value_size, new.value_size, vops))
        return None
    if old.type not in (_bpf.MAP_TYPE_ARRAY, _bpf.MAP_TYPE_PERCPU_ARRAY):
        return _copy_hash(name, old, new, kops, vops)
    if _mmapable(old):
        keys, values, count = b"", _read_values(old), old.max_entries
    else:
        keys, values, count = old.lookup_batch(chunk=65536)
    ncpu = old.ncpus if old.percpu else 1
    out_values = _translate(values, count * ncpu, _stride(old, old.value_size),
                            _stride(new, new.value_size), vops)
    if old.type == _bpf.MAP_TYPE_ARRAY:
        _write_values(new, out_values, min(count, new.max_entries))
        return Snapshot(keys, values, count, out_values) if name in DATAPATH_WRITTEN else None
    n = min(count, new.max_entries)             # a per-CPU array
    if n:
        new.write_array(memoryview(out_values)[:n * len(out_values) // count])
    return None


def _copy_hash(name: str, old: "_bpf.Map", new: "_bpf.Map", kops, vops) -> Optional[Snapshot]:
    """Copy a hash map a batch at a time: one thread writes a batch while this one reads
    the next (both system calls run without the GIL)."""
    keys_seen: List[bytes] = []
    total = 0
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="upgrade") as writer:
        pending = None
        for keys, values, count in old.batches(65536):
            k = _translate(keys, count, old.key_size, new.key_size, kops)
            v = _translate(values, count, _stride(old, old.value_size),
                           _stride(new, new.value_size), vops)
            if pending is not None:
                pending.result()
            pending = writer.submit(new.update_batch, k, v)
            keys_seen.append(keys)
            total += count
        if pending is not None:
            pending.result()
    return Snapshot(b"".join(keys_seen), b"", total) if name in DATAPATH_WRITTEN else None


def _copy_outer(name: str, old: "_bpf.Map", new: "_bpf.Map", template: dict) -> None:
    flags = template["flags"]       # the kernel wants an inner map's flags equal to these
    for slot in _filled_slots(old):
        with old.inner_map(slot) as inner:
            src = inner.layout()
            _, vops = _record_ops(f"{name} inner map", src, template)
            size = (inner.max_entries if template["flags"] & V.INNER_MAP_FLAG
                    else template["max_entries"])
            _, values, count = inner.lookup_batch(chunk=max(inner.max_entries, 1))
        fresh = _bpf.Map.create(template["type"], template["key_size"],
                                template["value_size"], size, name=inner.name, flags=flags)
        try:
            n = min(count, size)
            if n:
                data = _translate(values, count, inner.value_size, template["value_size"], vops)
                fresh.write_array(memoryview(data)[:n * template["value_size"]])
            new.set_inner(slot, fresh)
        finally:
            fresh.close()


def merge(name: str, old: "_bpf.Map", new: "_bpf.Map", snap: Optional[Snapshot],
          layout: dict) -> int:
    """After the swap: copy what the old program recorded in `old` since `snap` into `new`,
    where the new program has not written since. Returns the entries copied."""
    src = old.layout()
    kops, vops = _record_ops(name, src, layout)
    if old.type == _bpf.MAP_TYPE_ARRAY:
        return _merge_array(old, new, snap, vops)
    keys, values, count = old.lookup_batch(chunk=65536)
    ks, vs = old.key_size, old.value_size
    # keys the old program added since the copy; without a snapshot (a resumed upgrade),
    # those the new map lacks
    known = snap.keys if snap is not None else new.lookup_batch(chunk=65536)[0]
    fresh = _bpf.keys_not_in(keys, known, ks)
    moved = 0
    for i in fresh:
        try:
            new.update(_translate(keys[i * ks:(i + 1) * ks], 1, ks, new.key_size, kops),
                       _translate(values[i * vs:(i + 1) * vs], 1, vs, new.value_size, vops),
                       _bpf.NOEXIST)
            moved += 1
        except FileExistsError:
            pass                            # the new program has it already
    return moved


def _merge_array(old: "_bpf.Map", new: "_bpf.Map", snap: Optional[Snapshot], vops) -> int:
    """merge() for an array: records the old program changed since the copy, where the new
    program has not written the same record since the swap."""
    size_old, size_new = old.value_size, new.value_size
    values = _read_values(old)
    if snap is None or len(values) != len(snap.values) or new.max_entries != old.max_entries:
        return 0
    current = _read_values(new)
    touched = set(_bpf.changed_records(current, snap.new_values, size_new))
    moved = 0
    for i in _bpf.changed_records(values, snap.values, size_old):
        if i in touched:
            continue                        # the new program wrote this record: it wins
        new.update(i, _translate(values[i * size_old:(i + 1) * size_old], 1, size_old,
                                 size_new, vops))
        moved += 1
    return moved


# -- running an upgrade ----------------------------------------------------------------------

@dataclass
class Result:
    plan: Plan
    resumed: str = ""                   # "", "completed" or "rolled back": a past upgrade's
    seconds: Dict[str, float] = field(default_factory=dict)   # step -> seconds
    merged: int = 0

    @property
    def changed(self) -> bool:
        return self.plan.needed

    def summary(self) -> str:
        """One line: what this upgrade (and a resumed one) did."""
        parts = []
        if self.resumed:
            parts.append(f"{self.resumed} an interrupted upgrade")
        if self.changed:
            moved = [c.name for c in self.plan.migrating]
            total = sum(self.seconds.values()) * 1000
            parts.append(f"upgraded the datapath at {self.plan.pin_dir} from version "
                         f"{self.plan.old} to {self.plan.new} in {total:.0f} ms"
                         + (f", migrating {', '.join(moved)}" if moved else
                            ", replacing the program over the same maps"))
        return "; ".join(parts) or "nothing to do"


def upgrade(pin_dir: str, *, dry_run: bool = False, policy: str = "auto") -> Result:
    """Bring the datapath at `pin_dir` to this version (see the module docstring): first
    complete or roll back an interrupted upgrade, then plan, then (unless dry_run) run the
    plan. With policy "never", a datapath of another version is refused (UpgradeRefused)
    rather than upgraded."""
    if policy not in POLICIES:
        raise ValueError(f"upgrade policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    pin_dir = os.path.abspath(pin_dir)
    with locked(pin_dir):
        resumed = "" if dry_run else resume(pin_dir)
        plan = make_plan(pin_dir, count=dry_run)
        result = Result(plan, resumed)
        if dry_run or not plan.needed:
            return result
        if policy == "never":
            raise UpgradeRefused(f"the datapath at {pin_dir} is version {plan.old}, this "
                                 f"pyxlb's is {plan.new}, and upgrades are turned off "
                                 f"(--upgrade=never)")
        _run(plan, result)
        return result


def _timed(result: Result, step: str, started: float) -> float:
    now = time.perf_counter()
    result.seconds[step] = now - started
    return now


def _run(plan: Plan, result: Result) -> None:
    pin_dir, stage = plan.pin_dir, os.path.join(plan.pin_dir, STAGE_DIR)
    t = time.perf_counter()
    progs = _stage(plan, stage)
    try:
        t = _timed(result, "stage", t)
        _kill_point(STAGED)
        snaps = {}
        transformed = []
        for c in plan.migrating:
            if _transform(plan, c.name) is not None:
                transformed.append(c.name)      # filled below, once the config is whole
                continue
            with _bpf.Map.from_pinned(os.path.join(pin_dir, c.name)) as old, \
                    _bpf.Map.from_pinned(os.path.join(stage, c.name)) as new:
                snaps[c.name] = copy_map(c.name, old, new, plan.layouts[c.name])
        _complete_config(plan)
        _fill_transformed(plan, transformed)
        _fill_successors(plan)
        t = _timed(result, "migrate", t)
        _kill_point("migrated")
    except BaseException:
        for p in progs.values():
            p.close()
        rollback(pin_dir)
        raise
    try:
        for k in plan.kinds:
            _swap(pin_dir, k, progs[k.object])
    except BaseException:
        # nothing swapped yet: the old datapath is whole, undo the stage; else the next
        # start completes the swap (resume)
        if not any(interfaces_running(p.id) for p in progs.values()):
            rollback(pin_dir)
        raise
    finally:
        for p in progs.values():
            p.close()
    t = _timed(result, "swap", t)
    _kill_point("swapped")
    for c in plan.migrating:
        if c.name in DATAPATH_WRITTEN and c.name in snaps:
            with _bpf.Map.from_pinned(os.path.join(pin_dir, c.name)) as old, \
                    _bpf.Map.from_pinned(os.path.join(stage, c.name)) as new:
                result.merged += merge(c.name, old, new, snaps.get(c.name),
                                       plan.layouts[c.name])
    result.merged += _fill_transformed(plan, [n for n in transformed if n in DATAPATH_WRITTEN])
    result.merged += _fill_successors(plan)
    t = _timed(result, "merge", t)
    _kill_point("merged")
    _commit(pin_dir, {name for k in plan.kinds for name in k.maps.values()})
    _timed(result, "commit", t)


def _new_map(plan: Plan, name: str) -> "_bpf.Map":
    """Map `name` of the new datapath: staged, or kept where it is pinned."""
    stage = os.path.join(plan.pin_dir, STAGE_DIR, name)
    if os.path.exists(stage):
        return _bpf.Map.from_pinned(stage)
    return _bpf.Map.from_pinned(os.path.join(plan.pin_dir, name))


def _complete_config(plan: Plan) -> None:
    """Give the new balancer's config record what this version adds before its program
    runs (maps.completed_config): the IPv6 table's geometry and, copied from a release
    without them (a member the old layout lacks reads 0: no limit), the default insertion
    limits."""
    if BALANCER not in plan.kinds:
        return
    with _new_map(plan, CONFIG) as cfg_map, _new_map(plan, FLOWS4) as f4, \
            _new_map(plan, FLOWS6) as f6:
        cfg = L.unpack_config(cfg_map.lookup(0))
        want = completed_config(cfg, f4.max_entries, f6.max_entries, online_cpus(),
                                int.from_bytes(os.urandom(4), "little") | 1)
        if want != cfg:
            cfg_map.update(0, L.pack_config(**want))


def _fill_transformed(plan: Plan, names: List[str]) -> int:
    """Fill each new map in `names` from its pinned predecessor by its TRANSFORMS entry.
    Returns how many entries were added."""
    added = 0
    for name in names:
        with _bpf.Map.from_pinned(os.path.join(plan.pin_dir, name)) as old, \
                _new_map(plan, name) as new:
            added += _transform(plan, name)(old, new, lambda m: _new_map(plan, m)) or 0
    return added


def _fill_successors(plan: Plan) -> int:
    """Fill each new map that succeeds a pinned map of another name (SUCCESSORS) from it.
    Returns how many entries were added."""
    added = 0
    for c in plan.changes:
        entry = SUCCESSORS.get(c.name)
        if c.action != "new" or entry is None:
            continue
        old_path = os.path.join(plan.pin_dir, entry[0])
        if not os.path.exists(old_path):
            continue
        with _bpf.Map.from_pinned(old_path) as old, _new_map(plan, c.name) as new:
            added += entry[1](old, new, lambda name: _new_map(plan, name)) or 0
    return added


def fill_flowsets6(old: "_bpf.Map", new: "_bpf.Map", maps: Callable) -> int:
    """SUCCESSORS' fill of xlb_flowsets6 from the LRU hash xlb_flows of releases before it:
    every IPv6 flow placed in its set as the datapath would insert it (keys and values have
    the same layouts: struct xlb_flow_key, struct xlb_flow). Flows the sets hold already are
    left alone."""
    if (old.key_size, old.value_size) != (L.SIZES["xlb_flow_key"], L.SIZES["xlb_flow"]):
        raise UpgradeRefused(f"{LRU_FLOWS6} has {old.key_size}-byte keys and "
                             f"{old.value_size}-byte values: this version cannot read them")
    with maps(CONFIG) as cfg_map:
        cfg = L.unpack_config(cfg_map.lookup(0))
    keys, values, count = old.lookup_batch(chunk=65536)
    if not count:
        return 0
    with _mapped(new) as (mm, _):
        return L.place_flows6(mm, keys, values, count, cfg["flow4_seed"],
                              new.max_entries.bit_length() - 1)


SUCCESSORS[FLOWS6] = (LRU_FLOWS6, fill_flowsets6)


def rehash_flowsets6(old: "_bpf.Map", new: "_bpf.Map", maps: Callable) -> int:
    """TRANSFORMS' fill of xlb_flowsets6 across the change of its set hash (meaning 1: the
    ten key words chained through Murmur3 steps; 2: the multilinear xlb_set6_index): every
    flow the old sets hold whole (its check word right: the check did not change) placed
    where the new program looks for it, stamp 0, as fill_flowsets6 does. The flows of the
    old sets' front halves go first, so where more flows than ways meet in one new set,
    those that kept sending keep their ways. Flows the new sets hold already are left
    alone. Returns how many were placed."""
    with maps(CONFIG) as cfg_map:
        cfg = L.unpack_config(cfg_map.lookup(0))
    with _mapped(old) as (omm, _):
        found = L.flow6_ways(omm)
    if not found:
        return 0
    found.sort(key=lambda f: (f[0] % L.FLOW6_WAYS >= L.FLOW6_WAYS // 2, f[0]))
    pad = bytes(L.SIZES["xlb_flow_key"] - L.SIZES["xlb_flow6_key"])
    keys = b"".join(k + pad for _, k, _ in found)
    values = b"".join(v for _, _, v in found)
    with _mapped(new) as (mm, _):
        return L.place_flows6(mm, keys, values, len(found), cfg["flow4_seed"],
                              new.max_entries.bit_length() - 1)


TRANSFORMS[(FLOWS6, 1, 2)] = rehash_flowsets6


def _stage(plan: Plan, stage: str) -> Dict[str, "_bpf.Program"]:
    """Load every kind's new object: kept maps from their pins, the others made in the
    stage directory; the programs and the new record pinned there too."""
    pin_dir = plan.pin_dir
    os.mkdir(stage)
    progs: Dict[str, _bpf.Program] = {}
    actions = {c.name: c.action for c in plan.changes}
    try:
        for k in plan.kinds:
            with _bpf.BpfObject.open(object_path(k.object)) as obj:
                for name in k.maps.values():
                    here = os.path.join(pin_dir, name)
                    if name in V.SIZED_MAPS and os.path.exists(here):
                        with _bpf.Map.from_pinned(here) as m:
                            obj.set_max_entries(name, m.max_entries)
                    where = pin_dir if actions[name] == "keep" else stage
                    obj.set_pin_path(name, os.path.join(where, name))
                obj.load()
                jumps = fill_jumps(obj, k)
                prog = obj.program(k.program)
            progs[k.object] = prog
            if jumps is not None:
                with jumps:     # pinned first: a program without it loses its tail calls
                    jumps.pin(os.path.join(stage, os.path.basename(jumps_pin(k, pin_dir))))
            prog.pin(os.path.join(stage, os.path.basename(prog_pin(k, pin_dir))))
        with V.new_record_map() as rec:
            V.write_record(rec, plan.new)
            rec.pin(os.path.join(stage, V.RECORD_MAP))
        os.mkdir(os.path.join(stage, _netns_marker()))
        os.mkdir(os.path.join(stage, STAGED))
    except BaseException:
        for p in progs.values():
            p.close()
        rollback(pin_dir)
        raise
    return progs


def _swap(pin_dir: str, kind, new_prog: "_bpf.Program") -> None:
    """Replace the pinned program of `kind` by `new_prog` on every interface running it,
    each with one atomic XDP_FLAGS_REPLACE."""
    with _bpf.Program.from_pinned(prog_pin(kind, pin_dir)) as old:
        for i in interfaces_running(old.id):
            _bpf.XdpLink.current(i["ifindex"], i["mode"]).replace(new_prog)
            _kill_point(f"swap:{i['name']}")


def _commit(pin_dir: str, wanted: Optional[set]) -> None:
    """The new pins take the old names; pinned maps not in `wanted` are unpinned (None:
    none is, as when completing another process's commit, which may have been another
    version's)."""
    stage = os.path.join(pin_dir, STAGE_DIR)
    with contextlib.suppress(FileExistsError):
        os.mkdir(os.path.join(stage, COMMITTING))
    for name in sorted(os.listdir(stage)):
        if name.startswith("xlb_") and name != V.RECORD_MAP:
            os.rename(os.path.join(stage, name), os.path.join(pin_dir, name))
            _kill_point(f"commit:{name}")
    for name in _pinned_maps(pin_dir):
        if wanted is not None and name not in wanted:
            os.unlink(os.path.join(pin_dir, name))
    for name in sorted(os.listdir(stage)):     # jumps_* (tail calls) before prog_*
        if name.startswith(("jumps_", "prog_")):
            os.rename(os.path.join(stage, name), os.path.join(pin_dir, name))
    if os.path.exists(os.path.join(stage, V.RECORD_MAP)):
        os.rename(os.path.join(stage, V.RECORD_MAP), V.record_path(pin_dir))
    _remove_stage(stage)
    _kill_point("committed")


def _kinds_of(objects: List[str]) -> List[ObjectSpec]:
    return [k for k in SPECS if k.object in objects]


def _remove_stage(stage: str) -> None:
    for name in os.listdir(stage):
        path = os.path.join(stage, name)
        if os.path.isdir(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    os.rmdir(stage)


def rollback(pin_dir: str) -> None:
    """Remove an upgrade's stage: its maps and program are freed (nothing runs them)."""
    stage = os.path.join(pin_dir, STAGE_DIR)
    if os.path.isdir(stage):
        _remove_stage(stage)


def interrupted(pin_dir: str) -> bool:
    return os.path.isdir(os.path.join(pin_dir, STAGE_DIR))


def _stage_transforms(pin_dir: str, stage: str) -> List[Tuple[str, Callable]]:
    """(map, fill) for each map the program writes whose staged copy an interrupted upgrade
    filled by a transform (the stage's version record and the pinned one say so)."""
    old_rec, new_rec = V.record_path(pin_dir), os.path.join(stage, V.RECORD_MAP)
    if not (os.path.exists(old_rec) and os.path.exists(new_rec)):
        return []
    with _bpf.Map.from_pinned(old_rec) as o, _bpf.Map.from_pinned(new_rec) as n:
        was, now = V.read_record(o).maps, V.read_record(n).maps
    out = []
    for name in DATAPATH_WRITTEN:
        if name not in was or name not in now or was[name].meaning == now[name].meaning:
            continue
        fill = TRANSFORMS.get((name, was[name].meaning, now[name].meaning))
        if fill is not None and os.path.exists(os.path.join(stage, name)):
            out.append((name, fill))
    return out


def resume(pin_dir: str) -> str:
    """Complete or roll back an upgrade a killed process left (the caller holds the lock):
    "completed", "rolled back", or "" when there was none."""
    stage = os.path.join(pin_dir, STAGE_DIR)
    if not os.path.isdir(stage):
        return ""
    objects = [n[len("prog_"):] for n in os.listdir(stage) if n.startswith("prog_")]
    if os.path.isdir(os.path.join(stage, COMMITTING)):
        _commit(pin_dir, None)
        return "completed"
    marks = [n for n in os.listdir(stage) if n.startswith("netns_")]
    if marks and marks != [_netns_marker()]:
        # whether its program runs can be seen only from the namespace it swapped in
        raise UpgradeRefused(f"an upgrade of the datapath at {pin_dir} was interrupted in "
                             f"another network namespace ({marks[0]}, by inode): complete "
                             f"it there (`pyxlb --netns NAME upgrade`)")
    running = False
    if os.path.isdir(os.path.join(stage, STAGED)):
        for obj in objects:
            with _bpf.Program.from_pinned(os.path.join(stage, f"prog_{obj}")) as p:
                running |= bool(interfaces_running(p.id))
    if not running:
        rollback(pin_dir)
        return "rolled back"
    for k in _kinds_of(objects):
        with _bpf.Program.from_pinned(os.path.join(stage, f"prog_{k.object}")) as p:
            _swap(pin_dir, k, p)
    for name in DATAPATH_WRITTEN:
        old, new = os.path.join(pin_dir, name), os.path.join(stage, name)
        if os.path.exists(old) and os.path.exists(new):
            with _bpf.Map.from_pinned(old) as o, _bpf.Map.from_pinned(new) as n:
                if o.type != _bpf.MAP_TYPE_ARRAY:
                    merge(name, o, n, None, n.layout())
    for name, fill in _stage_transforms(pin_dir, stage):
        with _bpf.Map.from_pinned(os.path.join(pin_dir, name)) as o, \
                _bpf.Map.from_pinned(os.path.join(stage, name)) as n:
            fill(o, n, lambda m: _bpf.Map.from_pinned(
                os.path.join(stage if os.path.exists(os.path.join(stage, m)) else pin_dir, m)))
    for name, (was, fill) in SUCCESSORS.items():
        old, new = os.path.join(pin_dir, was), os.path.join(stage, name)
        if os.path.exists(old) and os.path.exists(new):
            with _bpf.Map.from_pinned(old) as o, _bpf.Map.from_pinned(new) as n:
                fill(o, n, lambda m: _bpf.Map.from_pinned(
                    os.path.join(stage if os.path.exists(os.path.join(stage, m)) else pin_dir,
                                 m)))
    _commit(pin_dir, None)
    return "completed"
