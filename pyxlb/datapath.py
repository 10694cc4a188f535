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

import os
import socket
from array import array
from typing import Dict, Iterator, List, Mapping, Optional, Tuple

from pyxlb import _bpf, bpffs
from pyxlb import _layouts as L
from pyxlb.addr import Address, Prefix, format_addr, lpm_prefix, parse_addr, parse_mac, parse_prefix
from pyxlb.bpf import object_path
from pyxlb.errors import PyxlbError
from pyxlb.maps import BALANCER, DECAP, ObjectSpec

_CONFIG_KEY = 0
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
        return self

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

    def config(self) -> dict:
        """The config record, as pyxlb._layouts.unpack_config reads it."""
        return L.unpack_config(self.maps.config.lookup(_CONFIG_KEY))

    def _set_config_flag(self, flag: int, on: bool) -> None:
        cfg = self.config()
        cfg["flags"] = (cfg["flags"] | flag) if on else (cfg["flags"] & ~flag)
        self.maps.config.update(_CONFIG_KEY, L.pack_config(**cfg))

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

    # -- config --------------------------------------------------------------------------

    def set_config(self, seed: int = 0, mtu: int = L.MTU_DEFAULT, src4: Optional[Prefix] = None,
                   src6: Optional[Prefix] = None, decap_check_source: bool = False) -> None:
        """Write the whole config record. src4 / src6 are the outer source prefixes
        ("10.255.0.0/16"; the flow hash fills the host bits), None for none."""
        src4_addr, src4_plen = _prefix_of(src4, L.FAMILY_V4, "src4")
        src6_addr, src6_plen = _prefix_of(src6, L.FAMILY_V6, "src6")
        flags = L.CFG_DECAP_CHECK_SOURCE if decap_check_source else 0
        self.maps.config.update(_CONFIG_KEY, L.pack_config(
            seed=seed, mtu=mtu, flags=flags, src4=src4_addr[:4], src4_plen=src4_plen,
            src6=src6_addr, src6_plen=src6_plen))

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
        self._update_addr(family, a, set_flags=L.ADDR_PORTS if port else L.ADDR_ALL_PORTS)

    def del_vip(self, addr: Address, port: int, proto) -> None:
        """Remove a VIP (KeyError if absent), then recompute its address's PORTS /
        ALL_PORTS from the VIPs left on it; the address entry goes when nothing (no VIP,
        no announcement) is left."""
        family, a = parse_addr(addr)
        self.maps.vips.delete(L.pack_vip_key(a, port, _proto(proto), family))
        keys, _, _ = self.maps.vips.lookup_batch()
        left = L.vip_ports_on(keys, a, family)
        kinds = 0
        if any(p != 0 for p, _ in left):
            kinds |= L.ADDR_PORTS
        if any(p == 0 for p, _ in left):
            kinds |= L.ADDR_ALL_PORTS
        self._update_addr(family, a, set_flags=kinds, clear_flags=_VIP_KINDS & ~kinds)

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
        slots = _u32_array(table)
        if not 1 <= len(slots) <= L.RING_SIZE_MAX:
            raise ValueError(f"a ring has 1..{L.RING_SIZE_MAX} slots, not {len(slots)}")
        inner = _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, 4, len(slots), name=f"xlb_ring_{ring_id}",
                                flags=_bpf.MAP_F_INNER_MAP)
        try:
            inner.write_array(slots)
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

    # -- readers -------------------------------------------------------------------------

    def vip_counters(self, vip_id: int) -> Dict[str, int]:
        """{packets, bytes, new_flows} of a VIP, summed over CPUs."""
        m = self.maps.vip_stats
        return L.sum_counters(m.lookup(_index(m, vip_id, "vip_id")), m.ncpus)

    def backend_counters(self, backend_id: int) -> Dict[str, int]:
        """{packets, bytes, new_flows} of a backend, summed over CPUs."""
        m = self.maps.backend_stats
        return L.sum_counters(m.lookup(_index(m, backend_id, "backend_id")), m.ncpus)

    def flows(self) -> List[Tuple[dict, dict]]:
        """The flow table: [(key, value)], key {src, dst (str), sport, dport (host order),
        proto, family}, value {backend_id, gen}."""
        keys, values, count = self.maps.flows.lookup_batch()
        ksz, vsz = L.SIZES["xlb_flow_key"], L.SIZES["xlb_flow"]
        out = []
        for i in range(count):
            key = L.unpack_flow_key(keys[i * ksz:(i + 1) * ksz])
            key["src"] = format_addr(key["family"], key["src"])
            key["dst"] = format_addr(key["family"], key["dst"])
            out.append((key, L.unpack_flow(values[i * vsz:(i + 1) * vsz])))
        return out


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


def _prefix_of(prefix: Optional[Prefix], family: int, what: str) -> Tuple[bytes, int]:
    if prefix is None:
        return bytes(16), 0
    fam, addr, plen = parse_prefix(prefix)
    if fam != family:
        raise ValueError(f"{what} must be an IPv{family} prefix, not {prefix!r}")
    return addr, plen


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
