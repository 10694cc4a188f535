"""Loading an XDP object, pinning and adopting its maps, attaching and removing it: what the
balancer (Datapath) and the decapsulator (DecapPath) share.

With a ``pin_dir`` every map is pinned at ``<pin_dir>/<map name>``, and a later load with
the same ``pin_dir`` adopts the pinned maps instead of creating new ones: a restarted agent
takes over a running datapath without flushing it. A balancer and a decapsulator pinned in
the same directory share xlb_stats, xlb_config and xlb_decap_sources. Map sizes are fixed
when a datapath is created (``map_sizes``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Dict, List, Mapping, Optional, Tuple

from pyxlb import _bpf, bpffs, netlink
from pyxlb import _layouts as L
from pyxlb.bpf import object_path
from pyxlb.errors import PyxlbError

from . import upgrade as upgrade_mod
from . import version as V
from .links import interfaces_running, jumps_pin, prog_pin
from .flows import FLOWS_PER_SET, flow4_sets, flow_sets, rated_flows  # noqa: F401 (re-exported)
from .maps import BALANCER, FLOWS4, FLOWS6, MapSet, ObjectSpec, fill_jumps
from .tables import CommonTables

DEFAULT_PIN_DIR = "/sys/fs/bpf/pyxlb"

# maps with one entry per VIP (or ring): sized together by a VIP capacity
VIP_MAPS = ("xlb_vips", "xlb_vip_addrs", "xlb_rings", "xlb_prev_rings", "xlb_vip_stats",
            "xlb_vip_range_drops", "xlb_decap_vips")


class ForeignDatapath(PyxlbError):
    """A pinned datapath this version cannot read: made by another version of pyxlb."""

    HINT = ("`pyxlb upgrade` brings it to this one (the agent and `pyxlb attach` do it by "
            "themselves)")
    REMEDY = f"it was made by another version: {HINT}"


def map_sizes(max_vips: Optional[int] = None, max_flows: Optional[int] = None,
              max_flows6: Optional[int] = None) -> Dict[str, int]:
    """map_sizes (for Datapath.load/create) of a balancer holding up to `max_vips` VIPs
    (one per address, port and protocol), `max_flows` established IPv4 and `max_flows6`
    IPv6 flows (flow_sets); None keeps the object's default for that part."""
    sizes: Dict[str, int] = {}
    if max_vips is not None:
        names = set(BALANCER.maps.values())
        sizes.update({m: max_vips for m in VIP_MAPS if m in names})
        # a changed VIP gets its new ring before the old one is freed: room for both (an
        # unused slot of the outer map costs 8 bytes)
        sizes["xlb_rings"] = sizes["xlb_prev_rings"] = 2 * max_vips
    if max_flows is not None:
        sizes[FLOWS4] = flow_sets(max_flows)
    if max_flows6 is not None:
        sizes[FLOWS6] = flow_sets(max_flows6)
    return sizes


def _prepare_pin_dir(pin_dir: str) -> None:
    if pin_dir == bpffs.BPFFS_ROOT or pin_dir.startswith(bpffs.BPFFS_ROOT + os.sep):
        bpffs.ensure_mounted()
    os.makedirs(pin_dir, exist_ok=True)
    if not bpffs.is_bpffs(pin_dir):
        raise PyxlbError(f"cannot pin maps in {pin_dir}: it is not on a bpffs mount")


class LoadedObject:
    """One loaded object (``SPEC``): its program, its maps (``maps``: raw handles;
    ``tables``: an accessor per map, a ``TABLES``), where they are pinned; and what every
    kind does with them: load, adopt, attach, detach, remove, test runs, the config record
    and the global counters."""

    SPEC: ObjectSpec
    TABLES = CommonTables

    def __init__(self, prog: "_bpf.Program", maps: MapSet, pin_dir: Optional[str]):
        self.prog = prog
        self.maps = maps
        self.pin_dir = pin_dir
        self.upgraded: Optional[upgrade_mod.Result] = None    # what create() upgraded
        self.tables = self.TABLES(maps)
        # a loaded object's tail-call table, held until pinned beside the program (an
        # adopted one's is held by its pin)
        self.jumps: Optional[_bpf.Map] = None

    @classmethod
    def load(cls, pin_dir: Optional[str] = None,
             map_sizes: Optional[Mapping[str, int]] = None):
        """Load the object without attaching it.

        ``pin_dir``: None pins nothing (the maps die with this instance); otherwise a
        directory on bpffs (created if missing) where every map is pinned by name, or
        adopted from if already pinned there. ``map_sizes``: {map name: max_entries},
        applied before load (a pinned map must already have that size, or load fails).
        """
        spec = cls.SPEC
        sizes = dict(map_sizes or {})
        unknown = set(sizes) - set(spec.maps.values())
        if unknown:
            raise ValueError(f"map_sizes names maps {spec.object}.o does not have: "
                             f"{', '.join(sorted(unknown))}")
        for table in (FLOWS4, FLOWS6):
            sets = sizes.get(table)
            if sets is not None and (sets < 1 or sets & (sets - 1)):
                raise ValueError(f"{table} needs a power of two of sets, not {sets}")
        if pin_dir is not None:
            pin_dir = os.path.abspath(pin_dir)
            _prepare_pin_dir(pin_dir)

        obj = _bpf.BpfObject.open(object_path(spec.object))
        handles: Dict[str, _bpf.Map] = {}
        prog = jumps = None
        try:
            for name, size in sizes.items():
                obj.set_max_entries(name, size)
            if pin_dir is not None:
                for name in spec.maps.values():
                    obj.set_pin_path(name, os.path.join(pin_dir, name))
            obj.load()
            jumps = fill_jumps(obj, spec)
            for attr, name in spec.maps.items():
                handles[attr] = obj.map(name)
            prog = obj.program(spec.program)
        except BaseException:
            for m in handles.values():
                m.close()
            if jumps is not None:
                jumps.close()
            raise
        finally:
            obj.close()     # the handles hold their own fds

        self = cls(prog, MapSet(spec, handles), pin_dir)
        self.jumps = jumps
        try:
            self.tables.config.init()
            self._after_load()
            if pin_dir is not None:
                self._record_version()
        except BaseException:
            self.close()
            raise
        return self

    def _record_version(self) -> None:
        """Add this object's version to the record pinned beside the maps (version.py)."""
        path = V.record_path(self.pin_dir)
        try:
            rec = _bpf.Map.from_pinned(path)
        except FileNotFoundError:
            rec = V.new_record_map()
            try:
                rec.pin(path)
            except BaseException:
                rec.close()
                raise
        with rec:
            V.write_record(rec, V.of_object(self.SPEC))

    @classmethod
    def version(cls) -> "V.Version":
        """This pyxlb's version of the object: its maps and program (version.py)."""
        return V.of_object(cls.SPEC)

    def directory_version(self) -> "V.Version":
        """The version of the datapath pinned where this one is, every kind there together
        (what `pyxlb status` shows)."""
        return upgrade_mod.versions(self.pin_dir)[0]

    @classmethod
    def pinned_version(cls, pin_dir: str = DEFAULT_PIN_DIR) -> "V.Version":
        """The version of this kind of datapath pinned at `pin_dir`."""
        pin_dir = os.path.abspath(pin_dir)
        names = [*cls.SPEC.maps.values(), cls.SPEC.object]
        return V.pinned(pin_dir, cls.SPEC.maps.values()).subset(names)

    def check_current(self) -> None:
        """ForeignDatapath if a map pinned at pin_dir is no longer the one this object holds:
        an upgrade by another process migrated it since this one opened the datapath, and
        what this object writes would reach no program (applies call this under the lock)."""
        if not self.pin_dir:
            return
        for name in self.maps.names():
            try:
                with _bpf.Map.from_pinned(os.path.join(self.pin_dir, name)) as pinned:
                    current = pinned.id == self.maps[name].id
            except FileNotFoundError:
                current = False
            if not current:
                raise ForeignDatapath(f"the datapath at {self.pin_dir} was upgraded by another "
                                      f"process since this one opened it ({name} is another "
                                      f"map now): restart this process")

    def _after_load(self) -> None:
        """What a kind of object sets up once its maps are loaded."""

    # -- a pinned datapath: create, adopt, attach, detach ------------------------------------

    @classmethod
    def prog_pin(cls, pin_dir: str) -> str:
        """Where the program is pinned, beside its maps."""
        return prog_pin(cls.SPEC, pin_dir)

    @classmethod
    def exists(cls, pin_dir: str = DEFAULT_PIN_DIR) -> bool:
        return os.path.exists(cls.prog_pin(os.path.abspath(pin_dir)))

    @classmethod
    def open(cls, pin_dir: str = DEFAULT_PIN_DIR):
        """Adopt the datapath pinned at `pin_dir`: its maps and its program, exactly as a
        previous process left them (nothing is reset). PyxlbError if there is none."""
        pin_dir = os.path.abspath(pin_dir)
        if pin_dir.startswith(bpffs.BPFFS_ROOT):
            bpffs.ensure_mounted()
        if not cls.exists(pin_dir):
            raise PyxlbError(f"no {cls.SPEC.object} datapath at {pin_dir} "
                             f"(attach it to an interface first)")
        if upgrade_mod.interrupted(pin_dir):
            raise ForeignDatapath(f"an upgrade of the datapath at {pin_dir} was interrupted: "
                                  f"`pyxlb upgrade` (or the agent's next start) completes "
                                  f"it or rolls it back")
        if cls.pinned_version(pin_dir).maps != cls.version().maps:     # the program may differ
            have, want = upgrade_mod.versions(pin_dir)
            raise ForeignDatapath(f"the datapath at {pin_dir} is version {have}, this "
                                  f"pyxlb's is {want}: {ForeignDatapath.HINT}")
        handles: Dict[str, _bpf.Map] = {}
        try:
            for attr, name in cls.SPEC.maps.items():
                try:
                    handles[attr] = _bpf.Map.from_pinned(os.path.join(pin_dir, name))
                except FileNotFoundError:
                    raise ForeignDatapath(f"the datapath at {pin_dir} has no map {name}: "
                                          f"{ForeignDatapath.REMEDY}")
            cls._check_shapes(pin_dir, handles)
            prog = _bpf.Program.from_pinned(cls.prog_pin(pin_dir))
        except BaseException:
            for m in handles.values():
                m.close()
            raise
        return cls(prog, MapSet(cls.SPEC, handles), pin_dir)

    @classmethod
    def _check_shapes(cls, pin_dir: str, handles: Mapping[str, "_bpf.Map"]) -> None:
        """ForeignDatapath unless every pinned map has the type, key and value sizes this
        version's object declares: a datapath left by a version whose records differ would
        be misread, not merely refused later on some lookup."""
        obj = _bpf.BpfObject.open(object_path(cls.SPEC.object))
        try:
            for attr, name in cls.SPEC.maps.items():
                m = handles[attr]
                want = obj.map_shape(name)
                if (m.type, m.key_size, m.value_size) != want:
                    raise ForeignDatapath(
                        f"the datapath at {pin_dir} has map {name} of type {m.type} with "
                        f"{m.key_size}-byte keys and {m.value_size}-byte values, where this "
                        f"version has type {want[0]}, {want[1]} and {want[2]}: "
                        f"{ForeignDatapath.REMEDY}")
        finally:
            obj.close()

    @classmethod
    def create(cls, pin_dir: str = DEFAULT_PIN_DIR,
               map_sizes: Optional[Mapping[str, int]] = None, upgrade: str = "auto"):
        """Adopt the datapath at `pin_dir`, or load a new one and pin its maps and program
        there. A datapath of another version is first upgraded to this one, under traffic
        (pyxlb/datapath/upgrade.py); with upgrade="never" it is refused instead
        (UpgradeRefused)."""
        if upgrade not in upgrade_mod.POLICIES:
            raise PyxlbError(f"upgrade must be one of {', '.join(upgrade_mod.POLICIES)}, "
                             f"not {upgrade!r}")
        result = None
        if upgrade_mod.kinds_at(os.path.abspath(pin_dir)):
            # the other kind pinned here shares maps with this one: those must be this
            # version's before this kind is loaded over them
            result = upgrade_mod.upgrade(pin_dir, policy=upgrade)
        if cls.exists(pin_dir):
            self = cls.open(pin_dir)
        else:
            self = cls.load(pin_dir=pin_dir, map_sizes=map_sizes)
            try:
                # the tail calls' table before the program: a program pinned without it
                # would lose its tail calls with this process
                self._pin_jumps()
                self.prog.pin(cls.prog_pin(self.pin_dir))
            except BaseException:
                self.close()
                raise
        if result is not None and (result.changed or result.resumed):
            self.upgraded = result
        return self

    def _pin_jumps(self) -> None:
        path = jumps_pin(self.SPEC, self.pin_dir)
        if path is None or self.jumps is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)     # left by a load that never pinned its program
        self.jumps.pin(path)

    def interfaces(self) -> List[dict]:
        """The interfaces (of the calling thread's network namespace) running this
        program: [{name, ifindex, mode}]."""
        return interfaces_running(self.prog.id)

    def attach(self, iface: str, mode: str = "native") -> dict:
        """Run the program on `iface`. Already there: nothing changes. An older pyxlb
        program of the same kind there: replaced atomically. Any other XDP program: left
        alone, PyxlbError."""
        index = netlink.ifindex(iface)
        if mode not in ("native", "generic"):
            raise PyxlbError(f"XDP mode must be native or generic, not {mode!r}")
        info = _bpf.XdpLink.query(index)
        current = info[f"{mode}_prog_id"]
        other = info["generic_prog_id" if mode == "native" else "native_prog_id"]
        if current == self.prog.id:
            return {"name": iface, "ifindex": index, "mode": mode, "changed": False}
        if other:
            raise PyxlbError(f"{iface} already runs XDP program {other} in "
                             f"{'generic' if mode == 'native' else 'native'} mode")
        if current:
            with _bpf.Program.from_id(current) as running:
                if running.name != self.SPEC.program[:15]:
                    raise PyxlbError(f"{iface} already runs another XDP program "
                                     f"({running.name!r}, id {current}); pyxlb leaves it alone")
            _bpf.XdpLink.current(index, mode).replace(self.prog)
        else:
            try:
                _bpf.XdpLink.attach(index, self.prog, mode=mode)
            except OSError as exc:
                raise PyxlbError(f"cannot attach to {iface} in {mode} mode: "
                                 f"{exc.strerror or exc}") from None
        return {"name": iface, "ifindex": index, "mode": mode, "changed": True}

    def detach(self, iface: str) -> bool:
        """Take the program off `iface`. When no interface runs it any more, its pins
        (maps and program) are removed too: this is the one thing that deletes a
        datapath. Returns True when the datapath was removed."""
        index = netlink.ifindex(iface)
        mine = [i for i in self.interfaces() if i["ifindex"] == index]
        if not mine:
            raise PyxlbError(f"{iface} does not run this datapath's program")
        _bpf.XdpLink.current(index, mine[0]["mode"]).detach()
        if self.interfaces():
            return False
        self.destroy()
        return True

    @classmethod
    def detach_foreign(cls, iface: str, pin_dir: str = DEFAULT_PIN_DIR) -> bool:
        """detach() for a datapath that open() refuses (ForeignDatapath: another version
        made it), so that the new version can remove what the old one left. It relies only
        on what every version pins alike: the program, at prog_pin(). When no interface
        runs it any more, every pyxlb map (xlb_*, as every version names them) pinned in
        `pin_dir` goes with it, except those of the other kind of datapath pinned there (by
        name, or used by its program). Returns True when the datapath was removed."""
        pin_dir = os.path.abspath(pin_dir)
        index = netlink.ifindex(iface)
        if not cls.exists(pin_dir):
            raise PyxlbError(f"no {cls.SPEC.object} datapath at {pin_dir}")
        with _bpf.Program.from_pinned(cls.prog_pin(pin_dir)) as prog:
            mine = [i for i in interfaces_running(prog.id) if i["ifindex"] == index]
            if not mine:
                raise PyxlbError(f"{iface} does not run this datapath's program")
            _bpf.XdpLink.current(index, mine[0]["mode"]).detach()
            if interfaces_running(prog.id):
                return False
        others = cls._other_kinds(pin_dir)
        keep_names = {name for kind in others for name in kind.SPEC.maps.values()}
        if others:
            keep_names.add(V.RECORD_MAP)        # the other kind's version is recorded there
        keep_ids = set()
        for kind in others:
            with _bpf.Program.from_pinned(kind.prog_pin(pin_dir)) as other:
                keep_ids.update(other.map_ids())
        os.unlink(cls.prog_pin(pin_dir))
        jumps = jumps_pin(cls.SPEC, pin_dir)
        if jumps is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(jumps)
        for name in os.listdir(pin_dir):
            if not name.startswith("xlb_") or name in keep_names:
                continue
            path = os.path.join(pin_dir, name)
            try:
                with _bpf.Map.from_pinned(path) as m:
                    if m.id in keep_ids:
                        continue
            except OSError:
                continue        # not a pinned map: not ours to remove
            os.unlink(path)
        with contextlib.suppress(OSError):
            os.rmdir(pin_dir)
        return True

    @classmethod
    def _other_kinds(cls, pin_dir: str) -> Tuple[type, ...]:
        """The other kinds of datapath (balancer, decapsulator) pinned in `pin_dir`."""
        return tuple(kind for kind in LoadedObject.__subclasses__()
                     if kind.SPEC is not cls.SPEC and kind.exists(pin_dir))

    def destroy(self) -> None:
        """Remove the pins (maps and program); the kernel frees what nothing else holds."""
        if not self.pin_dir:
            return
        # a balancer and a decapsulator pinned in one directory share some maps: those
        # stay while the other kind is still there
        shared = {name for kind in self._other_kinds(self.pin_dir)
                  for name in kind.SPEC.maps.values()}
        names = [*self.SPEC.maps.values(), os.path.basename(self.prog_pin(self.pin_dir))]
        jumps = jumps_pin(self.SPEC, self.pin_dir)
        if jumps is not None:
            names.append(os.path.basename(jumps))
        if not self._other_kinds(self.pin_dir):
            names.append(V.RECORD_MAP)
        for name in names:
            if name in shared:
                continue
            try:
                os.unlink(os.path.join(self.pin_dir, name))
            except FileNotFoundError:
                pass
        try:
            os.rmdir(self.pin_dir)
        except OSError:
            pass        # something else lives there (e.g. the other kind of datapath)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Close every handle. Unpinned maps are freed; pinned ones stay for the next load."""
        for m in self.maps:
            m.close()
        if self.jumps is not None:
            self.jumps.close()
        self.prog.close()

    @property
    def closed(self) -> bool:
        return self.prog.closed

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        where = f" pinned at {self.pin_dir}" if self.pin_dir else ""
        state = "closed" if self.closed else f"prog id {self.prog.id}"
        return f"<{type(self).__name__} {self.SPEC.object}.o {state}{where}>"

    # -- what every object has ----------------------------------------------------------

    def config(self) -> dict:
        """The config record, as pyxlb._layouts.unpack_config reads it."""
        return self.tables.config.read()

    def stats(self) -> Dict[str, int]:
        """Global outcome counters, {name in pyxlb._layouts.STAT_NAMES: total over CPUs}."""
        return self.tables.stats.read()

    def run(self, packet: bytes, ctx: Optional[bytes] = None) -> Tuple[int, bytes]:
        """Run the program once on `packet` (BPF_PROG_TEST_RUN): (XDP action, output)."""
        action, output, _ = self.prog.test_run(packet, repeat=1, ctx=ctx)
        return action, output
