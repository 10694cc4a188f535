"""The one owner of the BPF maps: loads an XDP object and writes its maps.

``Datapath`` drives the balancer (pyxlb/bpf/balancer.o, program ``xlb_balancer``);
``DecapPath`` drives the decapsulator that backend-only hosts run (decap.o, ``xlb_decap``).
Both load without attaching: ``run(packet)`` pushes a packet through the program with
BPF_PROG_TEST_RUN, so packet tests use the same writers as production. Attaching to an
interface (pyxlb._bpf.XdpLink) and ``Datapath.apply(DesiredState)`` come later and build on
the thin, one-map-each writers here.

Maps are reachable as ``dp.maps.<name>`` (``dp.maps.vips``, ``dp.maps.flows``; the names
are the keys of ``pyxlb.maps.BALANCER.maps`` / ``DECAP.maps``). They are grouped rather than
made attributes of the Datapath itself because readers such as ``flows()`` and ``stats()``
would collide with them.

With a ``pin_dir`` every map is pinned at ``<pin_dir>/<map name>``, and a later load with
the same ``pin_dir`` adopts the pinned maps instead of creating new ones: a restarted agent
takes over a running datapath without flushing it. A balancer and a decapsulator pinned in
the same directory share xlb_stats, xlb_config and xlb_decap_sources.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import mmap
import os
import socket
import struct
import threading
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Set, Tuple

from pyxlb import _bpf, bpffs, maps, netlink, vipindex
from pyxlb import _layouts as L
from pyxlb import plan as plan_mod
from pyxlb.addr import (Address, Prefix, filter_slot, format_addr, format_mac, format_prefix,
                        from_lpm, lpm_prefix, parse_addr, parse_mac, prefix_or_none)
from pyxlb.bpf import object_path
from pyxlb.errors import PyxlbError
from pyxlb.state import DesiredState, StateError, VipKey
from pyxlb.maps import BALANCER, DECAP, ObjectSpec

DEFAULT_PIN_DIR = "/sys/fs/bpf/pyxlb"
_CONFIG_KEY = 0
# the config fields that describe xlb_flowsets4 rather than configure the node: set at load
_FLOW_TABLE_FIELDS = ("flow4_bits", "flow4_seed")

_PRESENT = 1        # value of the u32-valued set-like maps (only presence is read)
_PROTOS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}
_VIP_KINDS = L.ADDR_PORTS | L.ADDR_ALL_PORTS


class MapSet:
    """The maps of one loaded object: one attribute per map (``maps.vips``), or by map name
    (``maps["xlb_vips"]``). Each is an independent pyxlb._bpf.Map handle."""

    def __init__(self, spec: ObjectSpec, maps: Dict[str, "_bpf.Map"]):
        self._by_name = {spec.maps[attr]: m for attr, m in maps.items()}
        self.__dict__.update(maps)

    def __getitem__(self, map_name: str) -> "_bpf.Map":
        return self._by_name[map_name]

    def __iter__(self) -> Iterator["_bpf.Map"]:
        return iter(self._by_name.values())

    def names(self) -> List[str]:
        return list(self._by_name)


class ForeignDatapath(PyxlbError):
    """A pinned datapath this version cannot read: made by another version of pyxlb."""

    REMEDY = "it was made by another version; detach it and attach again"


def _random_seed() -> int:
    """A random 32-bit seed, never 0 (0 marks "not set")."""
    while True:
        seed = int.from_bytes(os.urandom(4), "little")
        if seed:
            return seed


def _interfaces_running(prog_id: int) -> List[dict]:
    """The interfaces (of the calling thread's network namespace) running XDP program
    `prog_id`: [{name, ifindex, mode}]."""
    out = []
    for index, name in socket.if_nameindex():
        try:
            info = _bpf.XdpLink.query(index)
        except OSError:
            continue
        for mode in ("native", "generic"):
            if info[f"{mode}_prog_id"] == prog_id:
                out.append({"name": name, "ifindex": index, "mode": mode})
    return out


def _proto(proto) -> int:
    """An IP protocol number from an int or "tcp" / "udp"."""
    if isinstance(proto, str):
        try:
            return _PROTOS[proto.lower()]
        except KeyError:
            raise ValueError(f"unknown protocol {proto!r}: use tcp, udp or a number") from None
    if isinstance(proto, bool) or not isinstance(proto, int) or not 0 <= proto <= 255:
        raise ValueError(f"protocol must be tcp, udp or a number 0..255, not {proto!r}")
    return proto


def _index(m: "_bpf.Map", value, what: str) -> int:
    """An index of array map `m`, checked before the kernel sees it."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < m.max_entries:
        raise ValueError(f"{what} must be an int in 0..{m.max_entries - 1}, not {value!r}")
    return value


class _LoadedObject:
    """What both objects share: loading (and pinning), the program, the maps, the config
    record, the decap source trie, global counters, test runs and closing."""

    SPEC: ObjectSpec

    def __init__(self, prog: "_bpf.Program", maps: MapSet, pin_dir: Optional[str]):
        self.prog = prog
        self.maps = maps
        self.pin_dir = pin_dir
        self._layout = None          # Datapath: what the maps hold, once read back
        self._vip_index = None       # Datapath: image of the live VIP index (None: unknown)
        self._epoch = None           # xlb_epoch when this object last read or wrote the maps
        self._lock_depth = 0         # _apply_lock held (re-entered by apply inside editing)
        self.last_apply_seconds = None
        self.last_apply_live_seconds = None
        self._live_at = None
        self.on_apply = None         # called with each apply's duration (metrics)
        self.announce_mac = None     # MAC for announced VIPs when no interface is attached

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
        sets = sizes.get(maps.FLOWS4)
        if sets is not None and (sets < 1 or sets & (sets - 1)):
            raise ValueError(f"{maps.FLOWS4} needs a power of two of sets, not {sets}")
        if pin_dir is not None:
            pin_dir = os.path.abspath(pin_dir)
            _prepare_pin_dir(pin_dir)

        obj = _bpf.BpfObject.open(object_path(spec.object))
        handles: Dict[str, _bpf.Map] = {}
        prog = None
        try:
            for name, size in sizes.items():
                obj.set_max_entries(name, size)
            if pin_dir is not None:
                for name in spec.maps.values():
                    obj.set_pin_path(name, os.path.join(pin_dir, name))
            obj.load()
            for attr, name in spec.maps.items():
                handles[attr] = obj.map(name)
            prog = obj.program(spec.program)
        except BaseException:
            for m in handles.values():
                m.close()
            raise
        finally:
            obj.close()     # the handles hold their own fds

        self = cls(prog, MapSet(spec, handles), pin_dir)
        self._init_config()
        self._after_load()
        return self

    def _after_load(self) -> None:
        """What a kind of object sets up once its maps are loaded."""

    # -- a pinned datapath: create, adopt, attach, detach ------------------------------------

    @classmethod
    def prog_pin(cls, pin_dir: str) -> str:
        """Where the program is pinned, beside its maps."""
        return os.path.join(pin_dir, f"prog_{cls.SPEC.object}")

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
               map_sizes: Optional[Mapping[str, int]] = None):
        """Adopt the datapath at `pin_dir`, or load a new one and pin its maps and program
        there."""
        if cls.exists(pin_dir):
            return cls.open(pin_dir)
        self = cls.load(pin_dir=pin_dir, map_sizes=map_sizes)
        try:
            self.prog.pin(cls.prog_pin(self.pin_dir))
        except BaseException:
            self.close()
            raise
        return self

    def interfaces(self) -> List[dict]:
        """The interfaces (of the calling thread's network namespace) running this
        program: [{name, ifindex, mode}]."""
        return _interfaces_running(self.prog.id)

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
            mine = [i for i in _interfaces_running(prog.id) if i["ifindex"] == index]
            if not mine:
                raise PyxlbError(f"{iface} does not run this datapath's program")
            _bpf.XdpLink.current(index, mine[0]["mode"]).detach()
            if _interfaces_running(prog.id):
                return False
        others = [kind for kind in _LoadedObject.__subclasses__()
                  if kind.SPEC is not cls.SPEC and kind.exists(pin_dir)]
        keep_names = {name for kind in others for name in kind.SPEC.maps.values()}
        keep_ids = set()
        for kind in others:
            with _bpf.Program.from_pinned(kind.prog_pin(pin_dir)) as other:
                keep_ids.update(other.map_ids())
        os.unlink(cls.prog_pin(pin_dir))
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

    def destroy(self) -> None:
        """Remove the pins (maps and program); the kernel frees what nothing else holds."""
        if not self.pin_dir:
            return
        # a balancer and a decapsulator pinned in one directory share some maps: those
        # stay while the other kind is still there
        shared = {name for kind in _LoadedObject.__subclasses__()
                  if kind.SPEC is not self.SPEC and kind.exists(self.pin_dir)
                  for name in kind.SPEC.maps.values()}
        for name in [*self.SPEC.maps.values(), os.path.basename(self.prog_pin(self.pin_dir))]:
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

    # -- config --------------------------------------------------------------------------

    def _init_config(self) -> None:
        """A new (all-zero) config record gets the defaults, so an MTU of 0 never reaches
        the datapath; an adopted one is left as it is."""
        if self.maps.config.lookup(_CONFIG_KEY) == bytes(L.SIZES["xlb_config"]):
            self.maps.config.update(_CONFIG_KEY, L.pack_config())

    def _write_config(self, **fields) -> None:
        """Write the config record with `fields`; the flow table's geometry (flow4_bits and
        flow4_seed, the balancer's, set at load) is kept unless given."""
        cfg = self.config()
        for name in _FLOW_TABLE_FIELDS:
            fields.setdefault(name, cfg[name])
        self.maps.config.update(_CONFIG_KEY, L.pack_config(**fields))

    def config(self) -> dict:
        """The config record, as pyxlb._layouts.unpack_config reads it."""
        return L.unpack_config(self.maps.config.lookup(_CONFIG_KEY))

    def _set_config_flag(self, flag: int, on: bool) -> None:
        cfg = self.config()
        cfg["flags"] = (cfg["flags"] | flag) if on else (cfg["flags"] & ~flag)
        self._write_config(**cfg)

    # -- decap sources (LPM trie) --------------------------------------------------------

    def _add_source(self, prefix: Prefix) -> None:
        plen, addr = lpm_prefix(prefix)
        self.maps.decap_sources.update(L.pack_lpm_key(plen, addr), _u32(_PRESENT))

    def _del_source(self, prefix: Prefix) -> None:
        plen, addr = lpm_prefix(prefix)
        self.maps.decap_sources.delete(L.pack_lpm_key(plen, addr))

    # -- readers -------------------------------------------------------------------------

    def stats(self) -> Dict[str, int]:
        """Global outcome counters, {name in pyxlb._layouts.STAT_NAMES: total over CPUs}."""
        m = self.maps.stats
        keys, values, count = m.lookup_batch()
        ids = array("I", keys)
        per_cpu = array("Q", values)
        stride = m.percpu_value_size // 8 * m.ncpus
        names = L.STAT_NAMES
        out = {}
        for i in range(count):
            stat = ids[i]
            name = names[stat] if stat < len(names) else f"stat_{stat}"
            out[name] = sum(per_cpu[i * stride:(i + 1) * stride])
        return out

    def run(self, packet: bytes, ctx: Optional[bytes] = None) -> Tuple[int, bytes]:
        """Run the program once on `packet` (BPF_PROG_TEST_RUN): (XDP action, output)."""
        action, output, _ = self.prog.test_run(packet, repeat=1, ctx=ctx)
        return action, output


class Datapath(_LoadedObject):
    """The XDP balancer and its maps (see the module docstring)."""

    SPEC = BALANCER

    def _after_load(self) -> None:
        """Tell the program how many sets xlb_flowsets4 has (a power of two: load checks
        map_sizes), through the config record's flow4_bits; and give a new flow table its
        set-hash seed, random and this node's own (flow4_seed; 0 means not yet given). An
        adopted table keeps its seed: another would put its flows in other sets, where
        lookups would not find them."""
        cfg = self.config()
        want = {"flow4_bits": self.maps.flows4.max_entries.bit_length() - 1,
                "flow4_seed": cfg["flow4_seed"] or _random_seed()}
        if any(cfg[k] != v for k, v in want.items()):
            self._write_config(**{**cfg, **want})

    # -- interfaces: the balancer also learns each one's MAC -------------------------------

    def attach(self, iface: str, mode: str = "native") -> dict:
        """As for every program; and the interface's MAC is registered, so a VIP frame
        addressed to another host (a promiscuous NIC, a veth or a flooding bridge hand XDP
        those) is left to the kernel, which drops it, rather than balanced a second time."""
        link = super().attach(iface, mode)
        mac = netlink.link_mac(link["ifindex"])
        if mac is not None:
            self.set_if_mac(link["ifindex"], mac)
        return link

    def detach(self, iface: str) -> bool:
        index = netlink.ifindex(iface)
        if any(i["ifindex"] == index for i in self.interfaces()):
            self.del_if_mac(index)
        return super().detach(iface)

    detach.__doc__ = _LoadedObject.detach.__doc__

    def set_if_mac(self, ifindex: int, mac) -> None:
        """Check VIP frames arriving on `ifindex` against `mac` (slot ifindex % 256)."""
        if isinstance(ifindex, bool) or not isinstance(ifindex, int) or ifindex <= 0:
            raise ValueError(f"ifindex must be a positive int, not {ifindex!r}")
        self.maps.if_macs.update(ifindex % L.IF_MAC_SLOTS, L.pack_if_mac(ifindex,
                                                                          parse_mac(mac)))

    def del_if_mac(self, ifindex: int) -> None:
        """Stop checking frames on `ifindex` (its slot is cleared only if it is its own)."""
        slot = ifindex % L.IF_MAC_SLOTS
        if L.unpack_if_mac(self.maps.if_macs.lookup(slot))["ifindex"] == ifindex:
            self.maps.if_macs.update(slot, bytes(L.SIZES["xlb_if_mac"]))

    # -- config --------------------------------------------------------------------------

    def set_config(self, seed: int = 0, mtu: int = L.MTU_DEFAULT, src4: Optional[Prefix] = None,
                   src6: Optional[Prefix] = None, decap_check_source: bool = False) -> None:
        """Write the whole config record. src4 / src6 are the outer source prefixes
        ("10.255.0.0/16"; the flow hash fills the host bits), None for none."""
        src4_addr, src4_plen = prefix_or_none(src4, L.FAMILY_V4, "src4")
        src6_addr, src6_plen = prefix_or_none(src6, L.FAMILY_V6, "src6")
        flags = L.CFG_DECAP_CHECK_SOURCE if decap_check_source else 0
        self._write_config(seed=seed, mtu=mtu, flags=flags, src4=src4_addr[:4],
                           src4_plen=src4_plen, src6=src6_addr, src6_plen=src6_plen)

    # -- VIPs and their addresses --------------------------------------------------------

    def set_vip(self, addr: Address, port: int, proto, *, vip_id: int, ring_id: int,
                ring_size: int, mode: int, flags: int = 0) -> None:
        """Add or change the VIP (addr, port, proto); port 0 covers every port of addr.
        Marks addr in xlb_vip_addrs (PORTS or ALL_PORTS) after the VIP exists."""
        family, a = parse_addr(addr)
        if mode not in L.MODES:
            raise ValueError(f"mode must be one of MODE_IPIP, MODE_L2, MODE_LOCAL, not {mode!r}")
        if isinstance(ring_size, bool) or not isinstance(ring_size, int) \
                or not 1 <= ring_size <= L.RING_SIZE_MAX:
            raise ValueError(f"ring_size must be in 1..{L.RING_SIZE_MAX}, not {ring_size!r}")
        _index(self.maps.vip_stats, vip_id, "vip_id")
        _index(self.maps.rings, ring_id, "ring_id")
        key = L.pack_vip_key(a, port, _proto(proto), family)
        value = L.pack_vip(vip_id, ring_id, ring_size, mode, flags)
        self.maps.vips.update(key, value)
        self._vip_written(key)
        self._update_addr(family, a, set_flags=L.ADDR_PORTS if port else L.ADDR_ALL_PORTS)

    def del_vip(self, addr: Address, port: int, proto) -> None:
        """Remove a VIP (KeyError if absent), then recompute its address's PORTS /
        ALL_PORTS from the VIPs left on it; the address entry goes when nothing (no VIP,
        no announcement) is left."""
        family, a = parse_addr(addr)
        key = L.pack_vip_key(a, port, _proto(proto), family)
        self.maps.vips.delete(key)
        self._vip_written(key)
        keys, _, _ = self.maps.vips.lookup_batch()
        left = L.vip_ports_on(keys, a, family)
        kinds = 0
        if any(p != 0 for p, _ in left):
            kinds |= L.ADDR_PORTS
        if any(p == 0 for p, _ in left):
            kinds |= L.ADDR_ALL_PORTS
        self._update_addr(family, a, set_flags=kinds, clear_flags=_VIP_KINDS & ~kinds)

    def _vip_written(self, key: bytes) -> None:
        """After a write to xlb_vips outside apply: the live index must not answer for that
        key from its copy, so its slot sends lookups to xlb_vips; the next apply builds a
        whole index again from the map."""
        vipindex.demote(self.maps.vip_index, key)
        self._vip_index = None
        self._bump_epoch()      # other processes' images of the index no longer hold

    def rebuild_vip_index(self) -> int:
        """Build the VIP index again from the whole of xlb_vips and swap it in. apply does
        this itself; after set_vip / del_vip the index sends their keys to xlb_vips (a hash
        lookup more a packet) until this or the next apply. Returns how many VIPs the index
        holds (the rest share a slot and are found through xlb_vips)."""
        self._vip_index = vipindex.VipIndex.from_batch(*self.maps.vips.lookup_batch())
        with self._vip_index.new_map() as inner:
            self.maps.vip_index.set_inner(0, inner)
        return len(self._vip_index) - self._vip_index.shared()

    def _next_vip_index(self, writes: Dict[bytes, bytes], deletes) -> "_bpf.Map":
        """A new VIP index for what xlb_vips holds once this apply's VIP writes are done:
        the kept image with the changes, or the whole map read back when there is no image
        (none yet, or dropped because another process wrote since: see _sync_with_maps)."""
        if self._vip_index is None:
            self._vip_index = vipindex.VipIndex.from_batch(*self.maps.vips.lookup_batch())
        else:
            self._vip_index.update(writes, deletes)
        return self._vip_index.new_map()

    def vip_addr(self, addr: Address) -> Optional[dict]:
        """The xlb_vip_addrs entry of addr (flags, ifindex, mac), None if there is none."""
        family, a = parse_addr(addr)
        raw = self.maps.vip_addrs.get(L.pack_addr_key(a, family))
        return None if raw is None else L.unpack_addr(raw)

    def announce(self, addr: Address, ifindex: int = 0, mac=None) -> None:
        """Answer ARP / neighbour solicitations for addr with `mac` ("02:00:00:00:00:01" or
        6 bytes), on interface `ifindex` only (0: any). Keeps the address's VIP flags."""
        if mac is None:
            raise ValueError("announce() needs the MAC to answer with")
        self._update_addr(*parse_addr(addr), set_flags=L.ADDR_ANNOUNCE, ifindex=ifindex,
                          mac=parse_mac(mac))

    def unannounce(self, addr: Address) -> None:
        """Stop answering for addr (KeyError if it is not announced); its VIP flags stay."""
        family, a = parse_addr(addr)
        current = self.vip_addr(addr)
        if current is None or not current["flags"] & L.ADDR_ANNOUNCE:
            raise KeyError(f"{addr} is not announced")
        self._update_addr(family, a, clear_flags=L.ADDR_ANNOUNCE, ifindex=0, mac=bytes(6))

    def _update_addr(self, family: int, a: bytes, *, set_flags: int = 0, clear_flags: int = 0,
                     ifindex: Optional[int] = None, mac: Optional[bytes] = None) -> None:
        """Read-modify-write one xlb_vip_addrs entry; delete it once its flags are 0."""
        m = self.maps.vip_addrs
        key = L.pack_addr_key(a, family)
        raw = m.get(key)
        entry = L.unpack_addr(raw) if raw is not None else {"flags": 0, "ifindex": 0,
                                                            "mac": bytes(6)}
        entry["flags"] = (entry["flags"] & ~clear_flags) | set_flags
        if ifindex is not None:
            entry["ifindex"] = ifindex
        if mac is not None:
            entry["mac"] = mac
        if entry["flags"]:
            m.update(key, L.pack_addr(**entry))
        elif raw is not None:
            m.delete(key)
        keys, _, n = m.lookup_batch()
        ksz = L.SIZES["xlb_addr_key"]
        self.maps.addr_filter.update(0, addr_filter(
            L.unpack_addr_key(keys[i * ksz:(i + 1) * ksz])["addr"] for i in range(n)))

    # -- backends and next hops ----------------------------------------------------------

    def set_backend(self, backend_id: int, addr: Address, *, state: int = L.BACKEND_ACTIVE,
                    flags: int = 0, gen: int = 1, mac=None) -> None:
        """Write backend `backend_id`. state: BACKEND_ACTIVE or BACKEND_DRAINING (gone is
        del_backend); gen must change whenever the id goes to a different backend; mac:
        the MAC the operator gave for it (L2 mode), kept for reading the state back."""
        _index(self.maps.backends, backend_id, "backend_id")
        if state not in (L.BACKEND_ACTIVE, L.BACKEND_DRAINING):
            raise ValueError(f"state must be BACKEND_ACTIVE or BACKEND_DRAINING, not {state!r} "
                             f"(del_backend() marks a backend gone)")
        family, a = parse_addr(addr)
        self.maps.backends.update(backend_id, L.pack_backend(
            a, family, state, flags, gen, parse_mac(mac) if mac is not None else bytes(6)))

    def del_backend(self, backend_id: int) -> None:
        """Mark the id gone (all zero): flows pinned to it are re-hashed."""
        _index(self.maps.backends, backend_id, "backend_id")
        self.maps.backends.update(backend_id, bytes(L.SIZES["xlb_backend"]))

    def set_nexthop(self, backend_id: int, dmac, smac, ifindex: int) -> None:
        """Cache the next hop towards a backend: its MAC, ours, and the egress interface."""
        _index(self.maps.nexthops, backend_id, "backend_id")
        if isinstance(ifindex, bool) or not isinstance(ifindex, int) or ifindex <= 0:
            raise ValueError(f"ifindex must be a positive int (del_nexthop() clears), "
                             f"not {ifindex!r}")
        self.maps.nexthops.update(
            backend_id, L.pack_nexthop(parse_mac(dmac), parse_mac(smac), ifindex))

    def del_nexthop(self, backend_id: int) -> None:
        """Forget the cached next hop (ifindex 0): the datapath falls back to the FIB."""
        _index(self.maps.nexthops, backend_id, "backend_id")
        self.maps.nexthops.update(backend_id, bytes(L.SIZES["xlb_nexthop"]))

    # -- rings ---------------------------------------------------------------------------

    def set_ring(self, ring_id: int, table) -> int:
        """Install a Maglev table (array('I') of backend ids, or any sequence of them) as
        ring `ring_id`: a new inner map of len(table) slots is written in one call and then
        swapped into xlb_rings with one update, so a packet sees the old ring or the new
        one, never a mix. Returns the new inner map's id.

        No handle on the inner map is kept: xlb_rings holds the only reference, so the
        replaced ring is freed by the kernel as soon as the swap is done (and no file
        descriptor per ring is spent).
        """
        _index(self.maps.rings, ring_id, "ring_id")
        inner = _new_ring(ring_id, table)
        try:
            self.maps.rings.set_inner(ring_id, inner)
            return inner.id
        finally:
            inner.close()

    def del_ring(self, ring_id: int) -> None:
        """Empty slot `ring_id` of xlb_rings (KeyError if it holds no ring)."""
        _index(self.maps.rings, ring_id, "ring_id")
        self.maps.rings.delete(ring_id)

    def ring(self, ring_id: int) -> array:
        """What ring `ring_id` holds now, as array('I') (KeyError if no ring is there)."""
        _index(self.maps.rings, ring_id, "ring_id")
        with self.maps.rings.inner_map(ring_id) as inner:
            keys, values, count = inner.lookup_batch()
        slots = array("I", bytes(4 * count))
        for k, v in zip(array("I", keys), array("I", values)):
            slots[k] = v
        return slots

    # -- local addresses and decap sources -----------------------------------------------

    def add_local_addr(self, addr: Address) -> None:
        """This node owns addr: tunnelled packets to it are decapsulated inline."""
        family, a = parse_addr(addr)
        self.maps.local_addrs.update(L.pack_addr_key(a, family), _u32(_PRESENT))

    def del_local_addr(self, addr: Address) -> None:
        family, a = parse_addr(addr)
        self.maps.local_addrs.delete(L.pack_addr_key(a, family))

    def add_decap_source(self, prefix: Prefix) -> None:
        """Accept tunnelled packets from `prefix` (checked when decap_check_source is on)."""
        self._add_source(prefix)

    def del_decap_source(self, prefix: Prefix) -> None:
        self._del_source(prefix)

    # -- source ranges (LPM trie) --------------------------------------------------------

    def add_source_range(self, vip_id: int, prefix: Prefix) -> None:
        """Let clients in `prefix` reach VIP `vip_id` (checked while its record carries
        VIP_SOURCE_RANGES; the prefix should be of the VIP's family)."""
        self.maps.source_ranges.update(_range_key(vip_id, prefix), _u32(_PRESENT))

    def del_source_range(self, vip_id: int, prefix: Prefix) -> None:
        """Remove one prefix of VIP `vip_id` (KeyError if it has no such entry)."""
        self.maps.source_ranges.delete(_range_key(vip_id, prefix))

    def source_ranges(self) -> Dict[int, List[str]]:
        """Every entry of xlb_source_ranges: {VIP id: [prefix, ...]} (a walk of the trie:
        LPM tries have no batch read). The trie keeps IPv4 as ::ffff:a.b.c.d, so an IPv6
        prefix inside ::ffff:0:0/96 reads as IPv4 here; current_state() knows each VIP's
        family and gives it back as written."""
        out: Dict[int, List[str]] = {}
        for vid, net in self._range_entries():
            out.setdefault(vid, []).append(str(net))
        return {vid: sorted(nets) for vid, nets in sorted(out.items())}

    def _range_entries(self) -> "frozenset":
        entries = set()
        for raw in self.maps.source_ranges.keys():
            k = L.unpack_src_range_key(raw)
            family, addr, plen = from_lpm(k["prefixlen"] - 32, k["addr"])
            entries.add((k["vip_id"], ipaddress.ip_network(format_prefix(family, addr, plen))))
        return frozenset(entries)

    # -- readers -------------------------------------------------------------------------

    def vip_range_drops(self, vip_id: int) -> int:
        """Packets VIP `vip_id` dropped for a client outside its source ranges, summed over
        CPUs."""
        m = self.maps.vip_range_drops
        return m.lookup_percpu_sum(_index(m, vip_id, "vip_id"))[0]

    def vip_counters(self, vip_id: int) -> Dict[str, int]:
        """{packets, bytes, new_flows} of a VIP, summed over CPUs."""
        m = self.maps.vip_stats
        return L.sum_counters(m.lookup(_index(m, vip_id, "vip_id")), m.ncpus)

    def backend_counters(self, backend_id: int) -> Dict[str, int]:
        """{packets, bytes, new_flows} of a backend, summed over CPUs."""
        m = self.maps.backend_stats
        return L.sum_counters(m.lookup(_index(m, backend_id, "backend_id")), m.ncpus)

    def _flowsets4(self) -> mmap.mmap:
        """xlb_flowsets4 mapped into this process, to read and to clear ways."""
        m = self.maps.flows4
        length = m.max_entries * L.SIZES["xlb_flowset4"]
        length = -(-length // mmap.PAGESIZE) * mmap.PAGESIZE
        return mmap.mmap(m.fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)

    @staticmethod
    def _forget_way4(mem: mmap.mmap, way: int, raw_key: bytes) -> bool:
        """Empty IPv4 way `way` if it still holds the flow `raw_key`: its check word goes to
        0 in one aligned 4-byte store, which the datapath reads as "no flow" whatever it is
        doing to the set. (A packet may put another flow in that way between the compare
        and the store; that flow is then forgotten and balanced again by Maglev.)"""
        off = way * L.SIZES["xlb_flow4_way"]
        if mem[off:off + len(raw_key)] != raw_key:
            return False
        struct.pack_into("=I", mem, off + L.SIZES["xlb_flow4_way"] - 4, 0)
        return True

    @staticmethod
    def _forget_flow6(m: "_bpf.Map", raw_key: bytes) -> bool:
        try:
            m.delete(raw_key)
        except KeyError:
            return False
        return True

    def _flow_entries(self, backend_ids=None) -> Iterator[Tuple[Callable[[], bool], dict,
                                                                  bytes]]:
        """Every flow of both flow tables (IPv4: the ways of xlb_flowsets4, read through
        mmap; IPv6: xlb_flows, read in batches): (forget, key unpacked with 16-byte
        addresses, raw xlb_flow). forget() removes that flow, False if it was gone; call it
        before taking the next entry (the IPv4 mapping closes when the scan moves on). With
        backend_ids, the IPv4 scan passes on only the flows pinned to those backends."""
        with self._flowsets4() as mem:
            for way, raw_key, raw_flow in L.flow4_ways(mem, backend_ids=backend_ids):
                yield (lambda way=way, raw_key=raw_key: self._forget_way4(mem, way, raw_key),
                       L.unpack_flow4_key(raw_key), raw_flow)
        m, ksz, vsz = self.maps.flows, L.SIZES["xlb_flow_key"], L.SIZES["xlb_flow"]
        keys, values, count = m.lookup_batch()
        for i in range(count):
            raw = bytes(keys[i * ksz:(i + 1) * ksz])
            yield (lambda raw=raw: self._forget_flow6(m, raw), L.unpack_flow_key(raw),
                   values[i * vsz:(i + 1) * vsz])

    def flows(self) -> List[Tuple[dict, dict]]:
        """The flow tables, IPv4 then IPv6: [(key, value)], key {src, dst (str), sport,
        dport (host order), proto, family}, value {backend_id, gen, hash}."""
        out = []
        for _, key, value in self._flow_entries():
            key["src"] = format_addr(key["family"], key["src"])
            key["dst"] = format_addr(key["family"], key["dst"])
            out.append((key, L.unpack_flow(value)))
        return out


    # -- the control plane: configure, read back, apply ------------------------------------

    def configure(self, *, seed: Optional[int] = None, mtu: Optional[int] = None,
                  src4: Optional[Prefix] = None, src6: Optional[Prefix] = None) -> dict:
        """Change some fields of the config record (None: keep); returns the new record."""
        cfg = self.config()
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= 0xFFFFFFFF:
                raise PyxlbError(f"seed must be an integer 0..4294967295, not {seed!r}")
            cfg["seed"] = seed
        if mtu is not None:
            if isinstance(mtu, bool) or not isinstance(mtu, int) or not 576 <= mtu <= 65535:
                raise PyxlbError(f"mtu must be 576..65535, not {mtu!r}")
            cfg["mtu"] = mtu
        for prefix, fam, field in ((src4, L.FAMILY_V4, "src4"), (src6, L.FAMILY_V6, "src6")):
            if prefix is not None:
                addr, plen = prefix_or_none(prefix, fam, "encap source")
                cfg[field] = addr[:4] if fam == L.FAMILY_V4 else addr
                cfg[f"{field}_plen"] = plen
        self._write_config(**cfg)
        return cfg

    def layout(self, refresh: bool = False) -> "plan_mod.Layout":
        """What the maps hold, read back once (apply keeps it current afterwards); with
        refresh, read again (another process may have applied since)."""
        if self._layout is None or refresh:
            now = self._epoch_now()     # read before: an apply meanwhile shows later
            if now != self._epoch:
                self._vip_index = None  # another process wrote: the image may be stale too
            self._epoch = now
            self._layout = self._read_layout()
        return self._layout

    def _epoch_now(self) -> int:
        return struct.unpack("=Q", self.maps.epoch.lookup(0))[0]

    def _bump_epoch(self) -> None:
        """Tell other processes that this one wrote the maps (it stays in step itself)."""
        self._epoch = self._epoch_now() + 1
        self.maps.epoch.update(0, struct.pack("=Q", self._epoch))

    @contextlib.contextmanager
    def _apply_lock(self):
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
            yield
        finally:
            self._lock_depth = 0
            os.close(fd)

    def _sync_with_maps(self) -> None:
        """Forget what this object knows of the maps (the layout, the image of the VIP
        index) if another process wrote them since it last read or wrote them (the epoch
        moved)."""
        if self._layout is not None and self._epoch_now() != self._epoch:
            self._layout = None
            self._vip_index = None

    @contextlib.contextmanager
    def editing(self):
        """Hold the apply lock across a read, edit and apply (the CLI's `vip add`, ...):
        no other process applies between this one reading the state and applying the
        edited one. Inside, current_state() is what the maps hold now."""
        with self._apply_lock():
            self._sync_with_maps()
            yield self

    def current_state(self) -> "DesiredState":
        """The DesiredState the maps implement (what `pyxlb vip list` shows)."""
        return self.layout().state

    def vip_records(self) -> Iterator[Tuple[dict, dict]]:
        """(xlb_vip_key, xlb_vip) of every entry of xlb_vips now, unpacked, in one batch
        read."""
        ksz, vsz = L.SIZES["xlb_vip_key"], L.SIZES["xlb_vip"]
        keys, values, n = self.maps.vips.lookup_batch()
        for i in range(n):
            yield (L.unpack_vip_key(keys[i * ksz:(i + 1) * ksz]),
                   L.unpack_vip(values[i * vsz:(i + 1) * vsz]))

    def _read_layout(self) -> "plan_mod.Layout":
        vips = {}
        for k, v in self.vip_records():
            proto = {6: "tcp", 17: "udp"}.get(k["proto"])
            if proto is None:
                raise PyxlbError(f"the VIP map holds protocol {k['proto']}, which pyxlb "
                                 f"does not write: the maps were not made by pyxlb apply")
            key = VipKey(format_addr(k["family"], k["addr"]), k["port"], proto)
            vips[key] = plan_mod.VipRecord(v["vip_id"], v["ring_id"], v["ring_size"],
                                           v["mode"], v["flags"])
        ksz, vsz = L.SIZES["xlb_member_key"], L.SIZES["xlb_member"]
        keys, values, n = self.maps.members.lookup_batch()
        members = {}
        for i in range(n):
            k = L.unpack_member_key(keys[i * ksz:(i + 1) * ksz])
            v = L.unpack_member(values[i * vsz:(i + 1) * vsz])
            members[(k["vip_id"], k["backend_id"])] = (v["weight"], v["state"])
        bsz = L.SIZES["xlb_backend"]
        _, values, n = self.maps.backends.lookup_batch()
        backends = {}
        for i in range(n):
            raw = values[i * bsz:(i + 1) * bsz]
            if raw == bytes(bsz):
                continue
            b = L.unpack_backend(raw)
            if b["state"]:
                backends[i] = plan_mod.BackendRecord(
                    ipaddress.ip_address(format_addr(b["family"], b["addr"])), b["state"],
                    bool(b["flags"] & L.BACKEND_LOCAL),
                    None if b["mac"] == bytes(6) else format_mac(b["mac"]), b["gen"])
            else:       # a freed id: only its generation matters
                backends[i] = plan_mod.BackendRecord(None, 0, False, None, b["gen"])
        live = {i: r for i, r in backends.items() if r.state}
        layout = plan_mod.rebuild_state(vips, members, live, self._range_entries())
        layout.gens.update({i: r.gen for i, r in backends.items() if r.gen})
        return layout

    def _limits(self) -> "plan_mod.Limits":
        return plan_mod.Limits(vips=min(self.maps.vips.max_entries,
                                        self.maps.vip_stats.max_entries,
                                        self.maps.vip_range_drops.max_entries),
                               backends=self.maps.backends.max_entries,
                               rings=self.maps.rings.max_entries,
                               source_ranges=self.maps.source_ranges.max_entries)

    def apply(self, state: "DesiredState", *, dry_run: bool = False) -> "plan_mod.Plan":
        """Make the maps implement `state`, writing only the difference.

        All or nothing: a state that is inconsistent or does not fit raises StateError
        before anything is written; a kernel error half-way rolls back every write done so
        far and re-raises, so the previous state is still what packets see. With
        dry_run, only the plan is returned. Re-applying the state in force writes nothing.

        Several processes may apply to one pinned datapath (the agent, the CLI by hand).
        Their applies take turns (a lock on the pin directory), and one that finds that
        another applied since this object last read the maps reads them again first, so
        ids are never handed out twice. Each apply sets the whole state: the last one wins.
        """
        with self._apply_lock():
            self._sync_with_maps()
            return self._apply(state, dry_run)

    def _apply(self, state: "DesiredState", dry_run: bool) -> "plan_mod.Plan":
        started = time.perf_counter()
        plan = plan_mod.make_plan(self.layout(), state, self._limits())
        if dry_run or plan.empty:
            return plan
        announce_as = self._announce_as(plan)
        tx = _Transaction()
        try:
            self._execute(plan, tx, announce_as)
        except BaseException:
            tx.rollback()
            self._vip_index = None      # read back from the maps by the next apply
            raise
        tx.commit()
        self._layout = plan.new
        self._bump_epoch()
        self._purge_moved_flows(plan)
        old_records = plan.old.backend_records()
        self.refresh_nexthops({bid for bid, rec in plan.backend_writes.items()
                               if bid not in old_records
                               or old_records[bid].mac != rec.mac
                               or old_records[bid].local != rec.local})
        self.last_apply_seconds = time.perf_counter() - started
        # from the start of apply until every changed VIP pointed at its new ring: what a
        # client sees; freeing old rings afterwards waits for the kernel's RCU grace period
        self.last_apply_live_seconds = self._live_at - started
        if self.on_apply is not None:
            self.on_apply(self.last_apply_seconds)
        return plan

    def _announce_as(self, plan) -> Tuple[int, bytes]:
        """(ifindex, MAC) that ARP/NDP answers for announced VIPs carry: the first
        interface running the balancer."""
        if not any(f & L.ADDR_ANNOUNCE for f in plan.addr_flags.values()):
            return 0, bytes(6)
        for iface in self.interfaces():
            mac = netlink.link_mac(iface["ifindex"])
            if mac:
                return iface["ifindex"], parse_mac(mac)
        if self.announce_mac is not None:
            return 0, parse_mac(self.announce_mac)
        raise StateError("announcing a VIP needs the balancer attached to an interface "
                         "with a MAC address")

    def _execute(self, plan, tx: "_Transaction", announce_as: Tuple[int, bytes]) -> None:
        """The writes, in an order that keeps each packet's view whole: what new things
        need (backends, rings, members) exists before a VIP points at it, and what old
        things used goes only once no VIP points at it."""
        m = self.maps
        zero_counters = bytes(m.vip_stats.percpu_value_size * m.vip_stats.ncpus)
        # stray trie entries: no VIP record consults them, so they may go before anything
        for vid, net in sorted(plan.stray_deletes, key=_range_order):
            tx.remove(m.source_ranges, _range_key(vid, net), _u32(_PRESENT))
        for bid in sorted(plan.new_backend_ids):
            tx.update(m.backend_stats, bid, zero_counters)
            tx.update(m.nexthops, bid, bytes(L.SIZES["xlb_nexthop"]))
        for bid, rec in sorted(plan.backend_writes.items()):
            family, a = parse_addr(rec.address)
            tx.update(m.backends, bid, L.pack_backend(
                a, family, rec.state, L.BACKEND_LOCAL if rec.local else 0, rec.gen,
                parse_mac(rec.mac) if rec.mac else bytes(6)))
        # new rings go in with one batch update; its RCU grace period (ms) runs in the
        # background while the rest is written: the rings are visible before it ends
        finish_rings = tx.add_rings(m.rings, plan.ring_writes)
        for (vid, bid), (weight, st) in sorted(plan.member_writes.items()):
            tx.update(m.members, L.pack_member_key(vid, bid), L.pack_member(weight, st))
        zero_drops = bytes(m.vip_range_drops.percpu_value_size * m.vip_range_drops.ncpus)
        for vid in sorted(plan.new_vip_ids):
            tx.update(m.vip_stats, vid, zero_counters)
            tx.update(m.vip_range_drops, vid, zero_drops)
        # a VIP's client prefixes are in the trie before its record says to look there
        for vid, net in sorted(plan.range_writes, key=_range_order):
            tx.insert(m.source_ranges, _range_key(vid, net), _u32(_PRESENT))
        vip_writes = {}
        for key, rec in sorted(plan.vip_writes.items(), key=lambda kv: str(kv[0])):
            kb = _vip_key_bytes(key)
            vip_writes[kb] = L.pack_vip(rec.vip_id, rec.ring_id, rec.ring_size, rec.mode,
                                        rec.flags)
            tx.update(m.vips, kb, vip_writes[kb])
        for addr, flags in sorted(plan.addr_flags.items(), key=lambda kv: str(kv[0])):
            family, a = parse_addr(addr)
            key = L.pack_addr_key(a, family)
            if flags:
                ifindex, mac = announce_as if flags & L.ADDR_ANNOUNCE else (0, bytes(6))
                tx.update(m.vip_addrs, key, L.pack_addr(flags, ifindex, mac))
            else:
                tx.delete(m.vip_addrs, key)
        if plan.addr_flags:
            bits = addr_filter(parse_addr(a)[1] for a in plan.new.index().kinds)
            if m.addr_filter.lookup(0) != bits:
                tx.update(m.addr_filter, 0, bits)
        for key in sorted(plan.vip_deletes, key=str):
            tx.delete(m.vips, _vip_key_bytes(key))
        # the datapath reads VIPs from the index, a copy: a new one, with the writes and
        # deletes above, goes in with one swap, before any ring or backend they used goes
        finish_index = lambda: None     # noqa: E731
        if vip_writes or plan.vip_deletes:
            finish_index = tx.add_inners(
                m.vip_index, {0: self._next_vip_index(
                    vip_writes, [_vip_key_bytes(k) for k in plan.vip_deletes])}, keep_old=True)
        self._live_at = time.perf_counter()     # every VIP now uses its new ring
        # ... and leave once no record (or only one without the flag) points there
        for vid, net in sorted(plan.range_deletes, key=_range_order):
            tx.remove(m.source_ranges, _range_key(vid, net), _u32(_PRESENT))
        finish_rings()
        finish_index()
        for vid, bid in sorted(plan.member_deletes):
            tx.delete(m.members, L.pack_member_key(vid, bid))
        tx.delete_rings(m.rings, sorted(plan.ring_deletes))
        for bid, gen in sorted(plan.backend_frees.items()):
            # gone: flows pinned to it re-hash; the generation stays for the next holder
            tx.update(m.backends, bid, L.pack_backend(bytes(16), 0, 0, 0, gen))
            tx.update(m.nexthops, bid, bytes(L.SIZES["xlb_nexthop"]))

    def _purge_moved_flows(self, plan) -> int:
        """Forget the flows (ClientIP affinity pins included) that the VIP serving them
        after this apply would not send where they are pinned: a backend the VIP no longer
        has, a VIP that went (it may come back with other backends: Kubernetes reuses
        addresses), or a packet another VIP now takes (a port-0 VIP taking the address of
        a removed port, a port's own VIP added under a port-0 one). Only pins to backends
        that live on need this: a freed backend's id changes generation, and the datapath
        re-balances its flows by itself. Returns how many were removed."""
        old_by_key, new_by_key = plan.old.state.by_key(), plan.new.state.by_key()
        live = set(plan.new.backend_ids.values())

        def ids_of(layout, vip) -> Set[int]:
            return {layout.backend_ids[b.address] for b in vip.backends}

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
        for forget, k, value in self._flow_entries(backend_ids=pinned):
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
                    ids = keep[now.key] = {plan.new.backend_ids[b.address]
                                           for b in now.backends}
                if bid in ids:
                    continue
            removed += forget()
        return removed

    def refresh_nexthops(self, backend_ids=None) -> int:
        """Fill the next-hop cache from the kernel's route and neighbour tables (and the
        MACs given for L2 backends). Unresolved backends are left to the datapath's FIB
        fallback, which lets the kernel resolve them. Returns how many were written."""
        if backend_ids is not None and not backend_ids:
            return 0
        records = self.layout().backend_records()
        ids = records.keys() if backend_ids is None else set(backend_ids) & records.keys()
        resolver = netlink.Resolver()
        written = 0
        for bid in sorted(ids):
            rec = records[bid]
            if rec.local:
                continue
            hop = resolver.resolve(rec.address, rec.mac)
            if hop is not None:
                self.set_nexthop(bid, hop.dmac, hop.smac, hop.ifindex)
                written += 1
        return written

    def counters(self) -> List[dict]:
        """Per VIP: {vip, vip_id, packets, bytes, new_flows, backends: [{address, backend_id,
        packets, bytes, new_flows}]}, summed over CPUs."""
        layout = self.layout()
        out = []
        for vip in layout.state:
            vid = layout.vip_ids[vip.key]
            row = {"vip": str(vip.key), "vip_id": vid, **self.vip_counters(vid),
                   "backends": []}
            for b in vip.backends:
                bid = layout.backend_ids[b.address]
                row["backends"].append({"address": str(b.address), "backend_id": bid,
                                        "state": b.state, **self.backend_counters(bid)})
            out.append(row)
        return out

    def flow_counts(self) -> Tuple[int, int]:
        """Flows in the IPv4 table (its ways scanned through mmap, about 25 ms for 2 Mi
        ways) and in the IPv6 one (read in batches)."""
        with self._flowsets4() as mem:
            n4 = L.flow4_ways(mem, True)
        return n4, self.maps.flows.lookup_batch()[2]

    def flow_count(self) -> int:
        """Flows in the flow tables, IPv4 and IPv6."""
        return sum(self.flow_counts())

    def flow_capacities(self) -> Tuple[int, int]:
        """Flows the IPv4 table (sets x ways) and the IPv6 one hold."""
        return self.maps.flows4.max_entries * L.FLOW4_WAYS, self.maps.flows.max_entries

    def flow_capacity(self) -> int:
        """Flows the two tables hold before evicting (IPv4 and IPv6 together)."""
        return sum(self.flow_capacities())

    def size_mismatches(self, max_vips: Optional[int] = None, max_flows: Optional[int] = None,
                        max_flows6: Optional[int] = None) -> List[str]:
        """How this datapath's sizes differ from those asked for (None: not asked), one
        sentence each. Sizes are fixed when a datapath is created: an adopted one keeps
        its own until it is removed (detached from every interface) and made again."""
        out = []
        if max_flows is not None:
            max_flows = flow4_sets(max_flows) * L.FLOW4_WAYS
        have4, have6 = self.flow_capacities()
        for what, have, want in (("VIPs", self.maps.vips.max_entries, max_vips),
                                 ("IPv4 flows", have4, max_flows),
                                 ("IPv6 flows", have6, max_flows6)):
            if want is not None and have != want:
                out.append(f"the pinned datapath holds {have} {what}, not the {want} asked "
                           f"for: it keeps its size until it is detached from every "
                           f"interface and attached again")
        return out


class _Transaction:
    """Map writes with an undo log: rollback() puts every touched entry back."""

    def __init__(self):
        self._undo = []
        self._keep = []     # inner maps removed from xlb_rings, held until commit for undo

    def update(self, m: "_bpf.Map", key, value) -> None:
        prev = m.get(key)
        m.update(key, value)
        self._undo.append((m, key, prev))

    def delete(self, m: "_bpf.Map", key) -> None:
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

    def add_rings(self, outer: "_bpf.Map", tables) -> "Callable[[], None]":
        """Install new rings (ring id -> table): see add_inners."""
        if not tables:
            return lambda: None
        rids = sorted(tables)
        inners = []
        try:
            for rid in rids:
                inners.append(_new_ring(rid, tables[rid]))
        except BaseException:
            for m in inners:
                m.close()
            raise
        return self.add_inners(outer, dict(zip(rids, inners)))

    def add_inners(self, outer: "_bpf.Map", new: Dict[int, "_bpf.Map"], *,
                   keep_old: bool = False) -> "Callable[[], None]":
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

    def delete_rings(self, outer: "_bpf.Map", rids) -> None:
        """Empty ring slots, in parallel: each delete waits for its own RCU grace period,
        and the waits overlap. The old rings stay open until commit, for rollback."""
        present = [rid for rid in rids if outer.get(rid) is not None]
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


# maps with one entry per VIP (or ring): sized together by a VIP capacity
VIP_MAPS = ("xlb_vips", "xlb_vip_addrs", "xlb_rings", "xlb_vip_stats", "xlb_vip_range_drops",
            "xlb_decap_vips")


def flow4_sets(max_flows: int) -> int:
    """Sets of xlb_flowsets4 for at least `max_flows` IPv4 flows: a power of two (the
    datapath picks a set by masking a hash), so capacity = sets x FLOW4_WAYS rounds up."""
    if max_flows < 1:
        raise ValueError(f"max_flows must be positive, not {max_flows}")
    need = -(-max_flows // L.FLOW4_WAYS)
    return 1 << (need - 1).bit_length()


def map_sizes(max_vips: Optional[int] = None, max_flows: Optional[int] = None,
              max_flows6: Optional[int] = None) -> Dict[str, int]:
    """map_sizes (for Datapath.load/create) of a balancer holding up to `max_vips` VIPs
    (one per address, port and protocol), `max_flows` IPv4 and `max_flows6` IPv6 flows;
    None keeps the object's default for that part."""
    sizes: Dict[str, int] = {}
    if max_vips is not None:
        names = set(Datapath.SPEC.maps.values())
        sizes.update({m: max_vips for m in VIP_MAPS if m in names})
        # a changed VIP gets its new ring before the old one is freed: room for both (an
        # unused slot of the outer map costs 8 bytes)
        sizes["xlb_rings"] = 2 * max_vips
    if max_flows is not None:
        sizes[maps.FLOWS4] = flow4_sets(max_flows)
    if max_flows6 is not None:
        sizes[maps.FLOWS] = max_flows6
    return sizes


def addr_filter(addresses) -> bytes:
    """The xlb_addr_filter bitmap with the slot of every address (16-byte map form) set."""
    bits = bytearray(L.ADDR_FILTER_BITS // 8)
    for a in addresses:
        slot = filter_slot(a, L.ADDR_FILTER_BITS)
        bits[slot >> 3] |= 1 << (slot & 7)
    return bytes(bits)


def _new_ring(ring_id: int, table) -> "_bpf.Map":
    """A new inner ring map holding `table` (backend ids), not yet in xlb_rings.

    Rings are mmap-able arrays: the whole table goes in with one memcpy (~0.1 ms for 65537
    slots, where a batch update takes ~7 ms). The kernel lays array elements out 8 bytes
    apart, so each u32 slot sits at the start of its 8-byte cell.
    """
    slots = _u32_array(table)
    if not 1 <= len(slots) <= L.RING_SIZE_MAX:
        raise ValueError(f"a ring has 1..{L.RING_SIZE_MAX} slots, not {len(slots)}")
    inner = _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, 4, len(slots), name=f"xlb_ring_{ring_id}",
                            flags=_bpf.MAP_F_INNER_MAP | _bpf.MAP_F_MMAPABLE)
    try:
        cells = bytearray(8 * len(slots))
        memoryview(cells).cast("I")[0::2] = slots
        length = -(-len(cells) // mmap.PAGESIZE) * mmap.PAGESIZE
        with mmap.mmap(inner.fd, length, mmap.MAP_SHARED,
                       mmap.PROT_READ | mmap.PROT_WRITE) as mem:
            mem[:len(cells)] = cells
    except BaseException:
        inner.close()
        raise
    return inner


def _range_key(vip_id: int, prefix: Prefix) -> bytes:
    """The xlb_source_ranges key of one client prefix of a VIP."""
    plen, addr = lpm_prefix(prefix)
    return L.pack_src_range_key(vip_id, 32 + plen, addr)


def _range_order(entry):
    vid, net = entry
    return (vid, net.version, net.network_address.packed, net.prefixlen)


def _vip_key_bytes(key: "VipKey") -> bytes:
    family, a = parse_addr(key.address)
    return L.pack_vip_key(a, key.port, _PROTOS[key.protocol], family)


class DecapPath(_LoadedObject):
    """The decapsulator of backend-only hosts (decap.o): accepts IPIP / IP6IP6 only for
    known VIPs and, with check_source, only from known LB node prefixes."""

    SPEC = DECAP

    def add_vip(self, addr: Address) -> None:
        family, a = parse_addr(addr)
        self.maps.decap_vips.update(L.pack_addr_key(a, family), _u32(_PRESENT))

    def del_vip(self, addr: Address) -> None:
        family, a = parse_addr(addr)
        self.maps.decap_vips.delete(L.pack_addr_key(a, family))

    def add_source(self, prefix: Prefix) -> None:
        """Accept tunnels from `prefix` (an LB node's address or subnet)."""
        self._add_source(prefix)

    def del_source(self, prefix: Prefix) -> None:
        self._del_source(prefix)

    def set_config(self, check_source: bool = False) -> None:
        """Turn the outer-source check on or off. Only that flag is changed: the record may
        be shared with a balancer pinned in the same directory."""
        self._set_config_flag(L.CFG_DECAP_CHECK_SOURCE, check_source)


# -- helpers ----------------------------------------------------------------------------


def _prepare_pin_dir(pin_dir: str) -> None:
    if pin_dir == bpffs.BPFFS_ROOT or pin_dir.startswith(bpffs.BPFFS_ROOT + os.sep):
        bpffs.ensure_mounted()
    os.makedirs(pin_dir, exist_ok=True)
    if not bpffs.is_bpffs(pin_dir):
        raise PyxlbError(f"cannot pin maps in {pin_dir}: it is not on a bpffs mount")


def _u32(value: int) -> bytes:
    return array("I", [value]).tobytes()


def _u32_array(table) -> array:
    if isinstance(table, array) and table.typecode == "I" and table.itemsize == 4:
        return table
    try:
        return array("I", table)
    except OverflowError:
        raise ValueError("ring slots must be backend ids in 0..0xFFFFFFFF") from None
    except TypeError:
        raise TypeError(f"a ring must be a sequence of ints, not {type(table).__name__}") from None
