"""The BPF maps: their names, which object holds which, and one typed accessor per map.

Names are those of xdp/include/maps.h, and this is the only place Python writes them. A
map whose layout changes gets a new name there and here (``xlb_backends_v2``), so an old
pinned map is never misread. Pinned maps live at ``<pin dir>/<map name>``.

The accessors are the only code that knows a map's key and value layout: they pack and
unpack (with pyxlb._layouts, generated from xdp/include/structs.h) and read in batches.
Each writes through a *writer*: ``DIRECT`` writes at once (loading, node settings, and
the tests and benchmarks that set up a state by hand), an apply's transaction
(pyxlb/datapath/apply.py) writes and keeps what it needs to undo. ``dp.tables`` holds one
accessor per map (pyxlb/datapath/tables.py); ``dp.maps`` holds the raw map handles.
"""

from __future__ import annotations

import ipaddress
import mmap
import os
import struct
from array import array
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.addr import (Address, Prefix, filter_slot, format_addr, format_mac, format_prefix,
                        from_lpm, lpm_prefix, parse_addr, parse_mac, prefix_or_none)
from pyxlb.errors import PyxlbError
from pyxlb.numbers import int_in
from pyxlb.plan import (HEALTH_TYPE_CODES, HEALTH_TYPE_NAMES, BackendRecord, MemberKey,
                        MemberValue, RangeEntry, VipRecord)
from pyxlb.state import PROTOCOLS, HealthSpec, StateError, VipKey

# -- names ------------------------------------------------------------------------------

# In both objects.
STATS = "xlb_stats"                  # global outcome counters (enum xlb_stat), per CPU
CONFIG = "xlb_config"                # the one struct xlb_config
DECAP_SOURCES = "xlb_decap_sources"  # LPM trie of outer sources allowed to tunnel to us
CHAIN_PEERS = "xlb_chain_peers"      # chain id -> xlb_chain_peer (stateless mode's chaining)

# Balancer only.
VIPS = "xlb_vips"                    # xlb_vip_key -> xlb_vip
VIP_INDEX = "xlb_vip_index"          # 0 -> inner array (slot -> xlb_vip_slot): VIPs, no hash
ADDR_FILTER = "xlb_addr_filter"      # one bit per address slot: "may be a VIP address"
VIP_ADDRS = "xlb_vip_addrs"          # xlb_addr_key -> xlb_addr (kinds of VIP, announce)
LOCAL_ADDRS = "xlb_local_addrs"      # xlb_addr_key -> u32: this node's own addresses
IF_MACS = "xlb_if_macs"              # ifindex % slots -> xlb_if_mac: MACs of our interfaces
RINGS = "xlb_rings"                  # ring id -> inner array (slot -> backend id)
PREV_RINGS = "xlb_prev_rings"        # ring id -> inner array (slot -> xlb_prev_slot)
BACKENDS = "xlb_backends"            # backend id -> xlb_backend
NEXTHOPS = "xlb_nexthops"            # backend id -> xlb_nexthop
EPOCH = "xlb_epoch"                  # u64 bumped by every apply (control plane only)
MEMBERS = "xlb_members"              # xlb_member_key -> xlb_member (control plane's record)
HEALTH_SPECS = "xlb_health_specs"    # xlb_member_key -> xlb_health_spec (control plane's)
FLOWS4 = "xlb_flowsets4"             # set -> xlb_flowset4 (mmap-able array): IPv4 flows
FLOWS6 = "xlb_flowsets6"             # set -> xlb_flowset6 (mmap-able array): IPv6 flows
FLOW_BUDGET = "xlb_flow_budget"      # family -> xlb_flow_budget, per CPU: inserts this second
# The IPv6 flow table of releases before xlb_flowsets6 (an LRU hash, xlb_flow_key ->
# xlb_flow): an upgrade fills xlb_flowsets6 from it (upgrade.SUCCESSORS).
LRU_FLOWS6 = "xlb_flows"
VIP_STATS = "xlb_vip_stats"          # vip id -> xlb_counters, per CPU
BACKEND_STATS = "xlb_backend_stats"  # backend id -> xlb_counters, per CPU
SOURCE_RANGES = "xlb_source_ranges"  # LPM trie: xlb_src_range_key -> u32, clients VIPs admit
VIP_RANGE_DROPS = "xlb_vip_range_drops"  # vip id -> u64 refused by source range, per CPU

# The balancer's own, never pinned (ObjectSpec.jumps).
JUMPS = "xlb_jumps"                  # prog array: XLB_JUMP_* -> program (tail calls)
JUMP_ARG = "xlb_jump_arg"            # per CPU, 1 entry: what a tail call hands on

# Decap only.
DECAP_VIPS = "xlb_decap_vips"        # xlb_addr_key -> u32: VIPs a backend accepts tunnelled

# Health checks through the tunnel (health.o, one per checker process, never pinned).
HC_PATHS = "xlb_hc_paths"            # xlb_hc_key -> xlb_hc_path: check sockets' local ports


@dataclass(frozen=True)
class ObjectSpec:
    """One compiled object: its file name in pyxlb/bpf, its XDP program, and its maps as
    {attribute name: map name} (the attribute under which ``dp.maps`` exposes it).

    `jumps` names the prog array its program tail-calls through and the programs that
    fill it, in slot order; that map and the `private` ones are this object's own: never
    shared with another version, never migrated. The prog array is pinned beside the
    program (links.jumps_pin; see fill_jumps), the private ones are held by the program."""

    object: str
    program: str
    maps: Mapping[str, str]
    jumps: Optional[Tuple[str, Tuple[str, ...]]] = None
    private: Tuple[str, ...] = ()


def fill_jumps(obj: "_bpf.BpfObject", spec: ObjectSpec) -> Optional["_bpf.Map"]:
    """Put the loaded object's tail-call targets in its own prog array, and return a
    handle to it (None: the object has none). The object is complete only then: a jump to
    an empty slot falls through, silently. The kernel empties a prog array once no file
    descriptor or pin refers to it any more (the programs' own references do not count),
    so whoever keeps the datapath keeps the handle open or pins it (links.jumps_pin)."""
    if spec.jumps is None:
        return None
    table, programs = spec.jumps
    jumps = obj.map(table)
    try:
        for slot, name in enumerate(programs):
            with obj.program(name) as prog:
                jumps.update(struct.pack("I", slot), struct.pack("I", prog.fd))
    except BaseException:
        jumps.close()
        raise
    return jumps


BALANCER = ObjectSpec(
    object="balancer",
    program="xlb_balancer",
    maps={
        "stats": STATS,
        "config": CONFIG,
        "decap_sources": DECAP_SOURCES,
        "chain_peers": CHAIN_PEERS,
        "vips": VIPS,
        "vip_index": VIP_INDEX,
        "addr_filter": ADDR_FILTER,
        "vip_addrs": VIP_ADDRS,
        "local_addrs": LOCAL_ADDRS,
        "if_macs": IF_MACS,
        "rings": RINGS,
        "prev_rings": PREV_RINGS,
        "backends": BACKENDS,
        "nexthops": NEXTHOPS,
        "members": MEMBERS,
        "health_specs": HEALTH_SPECS,
        "epoch": EPOCH,
        "flows4": FLOWS4,
        "flows6": FLOWS6,
        "flow_budget": FLOW_BUDGET,
        "vip_stats": VIP_STATS,
        "backend_stats": BACKEND_STATS,
        "source_ranges": SOURCE_RANGES,
        "vip_range_drops": VIP_RANGE_DROPS,
    },
    # stateless mode's own share: xlb_balancer -> xlb_chain_local (balance.h)
    jumps=(JUMPS, ("xlb_chain_local",)),
    private=(JUMP_ARG,),
)

DECAP = ObjectSpec(
    object="decap",
    program="xlb_decap",
    maps={
        "stats": STATS,
        "config": CONFIG,
        "decap_sources": DECAP_SOURCES,
        "chain_peers": CHAIN_PEERS,
        "decap_vips": DECAP_VIPS,
    },
)


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


# -- writers ----------------------------------------------------------------------------

def _done() -> None:
    """What add_inners returns when nothing is left to wait for."""


class Direct:
    """The writer that writes at once. ``delete`` and ``remove`` of an absent key raise
    KeyError, as the map does."""

    def update(self, m: "_bpf.Map", key, value) -> None:
        m.update(key, value)

    def delete(self, m: "_bpf.Map", key) -> None:
        m.delete(key)

    def insert(self, m: "_bpf.Map", key, value) -> None:
        m.update(key, value)

    def remove(self, m: "_bpf.Map", key, value) -> None:
        m.delete(key)

    def add_inners(self, outer: "_bpf.Map", new: Dict[int, "_bpf.Map"], *,
                   keep_old: bool = False) -> Callable[[], None]:
        """Point slots of a map-of-maps at new inner maps (slot -> map; this takes the
        handles over and closes them: the outer map holds the only reference)."""
        try:
            for slot in sorted(new):
                outer.set_inner(slot, new[slot])
        finally:
            for m in new.values():
                m.close()
        return _done

    def delete_inners(self, outer: "_bpf.Map", slots) -> None:
        for slot in slots:
            outer.delete(slot)


DIRECT = Direct()
PRESENT = array("I", [1]).tobytes()     # the value of the set-like u32 maps: only presence


def check_index(m: "_bpf.Map", value, what: str) -> int:
    """An index of array map `m`, checked before the kernel sees it."""
    if not int_in(value, 0, m.max_entries - 1):
        raise ValueError(f"{what} must be an int in 0..{m.max_entries - 1}, not {value!r}")
    return value


def _check_ifindex(ifindex, hint: str = "") -> int:
    if not int_in(ifindex, 1):
        raise ValueError(f"ifindex must be a positive int{hint}, not {ifindex!r}")
    return ifindex


def _addr_key(addr: Address) -> bytes:
    """struct xlb_addr_key of an address (xlb_vip_addrs, xlb_local_addrs, xlb_decap_vips)."""
    family, a = parse_addr(addr)
    return L.pack_addr_key(a, family)


def addr_filter(addresses) -> bytes:
    """The xlb_addr_filter bitmap with the slot of every address (16-byte map form) set."""
    bits = bytearray(L.ADDR_FILTER_BITS // 8)
    for a in addresses:
        slot = filter_slot(a, L.ADDR_FILTER_BITS)
        bits[slot >> 3] |= 1 << (slot & 7)
    return bytes(bits)


def _entries(keys, values, n: int, ksz: int, vsz: int):
    """The (key, value) byte strings of a batch read."""
    for i in range(n):
        yield keys[i * ksz:(i + 1) * ksz], values[i * vsz:(i + 1) * vsz]


# -- VIPs -------------------------------------------------------------------------------

class Vips:
    """xlb_vips: VipKey -> VipRecord (struct xlb_vip_key -> struct xlb_vip). VIP and ring
    ids are checked against the maps they index (xlb_vip_stats, xlb_rings)."""

    KEY_SIZE = L.SIZES["xlb_vip_key"]
    VALUE_SIZE = L.SIZES["xlb_vip"]

    def __init__(self, m: "_bpf.Map", vip_ids: int, ring_ids: int, writer=DIRECT):
        self.map = m
        self._w = writer
        self._vip_ids = vip_ids
        self._ring_ids = ring_ids

    @staticmethod
    def key(key: VipKey) -> bytes:
        family, a = parse_addr(key.address)
        return L.pack_vip_key(a, key.port, PROTOCOLS[key.protocol], family)

    def value(self, rec: VipRecord) -> bytes:
        if rec.mode not in L.MODES:
            raise ValueError(f"mode must be one of MODE_IPIP, MODE_L2, MODE_LOCAL, "
                             f"not {rec.mode!r}")
        if not int_in(rec.ring_size, 1, L.RING_SIZE_MAX):
            raise ValueError(f"ring_size must be in 1..{L.RING_SIZE_MAX}, not {rec.ring_size!r}")
        for what, value, limit in (("vip_id", rec.vip_id, self._vip_ids),
                                   ("ring_id", rec.ring_id, self._ring_ids)):
            if not int_in(value, 0, limit - 1):
                raise ValueError(f"{what} must be an int in 0..{limit - 1}, not {value!r}")
        return L.pack_vip(rec.vip_id, rec.ring_id, rec.ring_size, rec.mode, rec.flags)

    def put(self, key: VipKey, rec: VipRecord) -> None:
        """Add or change one VIP (its address's xlb_vip_addrs entry is VipAddrs')."""
        self.put_all([(key, rec)])

    def put_all(self, items: Iterable[Tuple[VipKey, VipRecord]]) -> Dict[bytes, bytes]:
        """Write every (key, record), in order; returns them packed (the VIP index copies
        them)."""
        out = {}
        for key, rec in items:
            kb, vb = self.key(key), self.value(rec)
            self._w.update(self.map, kb, vb)
            out[kb] = vb
        return out

    def delete(self, key: VipKey) -> None:
        self.delete_all([key])

    def delete_all(self, keys: Iterable[VipKey]) -> List[bytes]:
        """Delete every key, in order; returns them packed."""
        out = []
        for key in keys:
            kb = self.key(key)
            self._w.delete(self.map, kb)
            out.append(kb)
        return out

    def get(self, key: VipKey) -> Optional[VipRecord]:
        raw = self.map.get(self.key(key))
        return None if raw is None else VipRecord(**L.unpack_vip(raw))

    def packed(self) -> Dict[bytes, bytes]:
        """Every entry, packed: {xlb_vip_key: xlb_vip}, in one batch read."""
        keys, values, n = self.map.lookup_batch()
        return {bytes(k): bytes(v)
                for k, v in _entries(keys, values, n, self.KEY_SIZE, self.VALUE_SIZE)}

    def records(self) -> Iterator[Tuple[dict, dict]]:
        """(xlb_vip_key, xlb_vip) of every entry, unpacked, in one batch read."""
        keys, values, n = self.map.lookup_batch()
        for k, v in _entries(keys, values, n, self.KEY_SIZE, self.VALUE_SIZE):
            yield L.unpack_vip_key(k), L.unpack_vip(v)

    def read(self) -> Dict[VipKey, VipRecord]:
        """Every VIP; PyxlbError for one no pyxlb apply writes (another protocol)."""
        names = {n: p for p, n in PROTOCOLS.items()}
        out = {}
        for k, v in self.records():
            proto = names.get(k["proto"])
            if proto is None:
                raise PyxlbError(f"the VIP map holds protocol {k['proto']}, which pyxlb "
                                 f"does not write: the maps were not made by pyxlb apply")
            out[VipKey(format_addr(k["family"], k["addr"]), k["port"], proto)] = \
                VipRecord(**v)
        return out


class VipAddrs:
    """xlb_vip_addrs (address -> struct xlb_addr: ADDR_* flags, and the interface and MAC
    ARP / NDP answers carry) and the address filter it drives (xlb_addr_filter: one bit per
    slot an address folds to, set for every address of the map)."""

    def __init__(self, m: "_bpf.Map", filter_map: "_bpf.Map", writer=DIRECT):
        self.map = m
        self.filter_map = filter_map
        self._w = writer

    def get(self, addr: Address) -> Optional[dict]:
        """{flags, ifindex, mac} of addr, None if it has no entry."""
        raw = self.map.get(_addr_key(addr))
        return None if raw is None else L.unpack_addr(raw)

    def put(self, addr: Address, flags: int, ifindex: int = 0, mac=bytes(6)) -> None:
        self._w.update(self.map, _addr_key(addr), L.pack_addr(flags, ifindex, parse_mac(mac)))

    def delete(self, addr: Address) -> None:
        self._w.delete(self.map, _addr_key(addr))

    def addresses(self) -> List[bytes]:
        """The address (16-byte map form) of every entry, in one batch read."""
        keys, _, n = self.map.lookup_batch()
        ksz = L.SIZES["xlb_addr_key"]
        return [L.unpack_addr_key(keys[i * ksz:(i + 1) * ksz])["addr"] for i in range(n)]

    def filter_bits(self) -> bytes:
        """The address filter's bitmap."""
        return self.filter_map.lookup(0)

    def write_filter(self, addresses) -> None:
        """Set the filter to the slots of `addresses` (16-byte map form), if it differs."""
        bits = addr_filter(addresses)
        if self.filter_map.lookup(0) != bits:
            self._w.update(self.filter_map, 0, bits)


# -- backends, next hops, members -----------------------------------------------------------

class Backends:
    """xlb_backends: backend id -> BackendRecord (struct xlb_backend). A record without an
    address is a freed id, which keeps only its generation; all zero is an id never used."""

    SIZE = L.SIZES["xlb_backend"]

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    @staticmethod
    def value(rec: BackendRecord) -> bytes:
        if rec.address is None:
            return L.pack_backend(bytes(16), 0, 0, 0, rec.gen)
        if rec.state not in (L.BACKEND_ACTIVE, L.BACKEND_DRAINING):
            raise ValueError(f"state must be BACKEND_ACTIVE or BACKEND_DRAINING, not "
                             f"{rec.state!r} (a freed id has no address)")
        family, a = parse_addr(rec.address)
        return L.pack_backend(a, family, rec.state, L.BACKEND_LOCAL if rec.local else 0,
                              rec.gen, parse_mac(rec.mac) if rec.mac else bytes(6))

    def put(self, backend_id: int, rec: BackendRecord) -> None:
        self.put_all([(backend_id, rec)])

    def put_all(self, items: Iterable[Tuple[int, BackendRecord]]) -> None:
        for bid, rec in items:
            self._w.update(self.map, check_index(self.map, bid, "backend_id"), self.value(rec))

    def free(self, backend_id: int, gen: int = 0) -> None:
        """Mark the id gone: flows pinned to it are re-hashed. `gen` stays for the next
        holder of the id (0: as if never used)."""
        self.free_all([(backend_id, gen)])

    def free_all(self, items: Iterable[Tuple[int, int]]) -> None:
        for bid, gen in items:
            self._w.update(self.map, check_index(self.map, bid, "backend_id"),
                           L.pack_backend(bytes(16), 0, 0, 0, gen))

    @staticmethod
    def _record(raw) -> BackendRecord:
        b = L.unpack_backend(raw)
        if not b["state"]:
            return BackendRecord(None, 0, False, None, b["gen"])
        return BackendRecord(ipaddress.ip_address(format_addr(b["family"], b["addr"])),
                             b["state"], bool(b["flags"] & L.BACKEND_LOCAL),
                             None if b["mac"] == bytes(6) else format_mac(b["mac"]), b["gen"])

    def get(self, backend_id: int) -> Optional[BackendRecord]:
        """The id's record, None if it was never used (all zero)."""
        raw = self.map.lookup(check_index(self.map, backend_id, "backend_id"))
        return None if raw == bytes(self.SIZE) else self._record(raw)

    def read(self) -> Dict[int, BackendRecord]:
        """Every id ever used (freed ones too), in one batch read."""
        _, values, n = self.map.lookup_batch()
        size, empty = self.SIZE, bytes(self.SIZE)
        out = {}
        for i in range(n):
            raw = values[i * size:(i + 1) * size]
            if raw != empty:
                out[i] = self._record(raw)
        return out


class Nexthops:
    """xlb_nexthops: backend id -> the cached next hop (struct xlb_nexthop: its MAC, ours,
    the egress interface). An ifindex of 0 is no entry: the datapath asks the FIB."""

    NONE = bytes(L.SIZES["xlb_nexthop"])

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def put(self, backend_id: int, dmac, smac, ifindex: int) -> None:
        check_index(self.map, backend_id, "backend_id")
        _check_ifindex(ifindex, " (clear() forgets a next hop)")
        self._w.update(self.map, backend_id,
                       L.pack_nexthop(parse_mac(dmac), parse_mac(smac), ifindex))

    def clear(self, backend_id: int) -> None:
        self.clear_all([backend_id])

    def clear_all(self, backend_ids: Iterable[int]) -> None:
        for bid in backend_ids:
            self._w.update(self.map, check_index(self.map, bid, "backend_id"), self.NONE)

    def get(self, backend_id: int) -> dict:
        """{dmac, smac, ifindex} (ifindex 0: none)."""
        return L.unpack_nexthop(self.map.lookup(check_index(self.map, backend_id,
                                                            "backend_id")))


class Members:
    """xlb_members: (VIP id, backend id) -> (weight, BACKEND_* state, HEALTH_* verdict): the
    control plane's record of each VIP's backends (the datapath never reads it)."""

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def put_all(self, items: Iterable[Tuple[MemberKey, MemberValue]]) -> None:
        update, m = self._w.update, self.map
        for (vid, bid), (weight, state, health) in items:
            update(m, L.pack_member_key(vid, bid), L.pack_member(weight, state, health))

    def delete_all(self, keys: Iterable[MemberKey]) -> None:
        delete, m = self._w.delete, self.map
        for vid, bid in keys:
            delete(m, L.pack_member_key(vid, bid))

    def read(self) -> Dict[MemberKey, MemberValue]:
        keys, values, n = self.map.lookup_batch()
        out = {}
        for k, v in _entries(keys, values, n, L.SIZES["xlb_member_key"], L.SIZES["xlb_member"]):
            k, v = L.unpack_member_key(k), L.unpack_member(v)
            out[(k["vip_id"], k["backend_id"])] = (v["weight"], v["state"], v["health"])
        return out


def pack_health(spec: HealthSpec) -> bytes:
    """struct xlb_health_spec of a HealthSpec (durations in milliseconds)."""
    lo, hi = spec.expect_range
    flags = ((L.HEALTH_F_DIRECT if spec.via == "direct" else 0)
             | (L.HEALTH_F_GONE if spec.on_fail == "gone" else 0))
    return L.pack_health_spec(HEALTH_TYPE_CODES[spec.type], flags, spec.port or 0,
                              round(spec.interval * 1000), round(spec.timeout * 1000),
                              spec.rise, spec.fall, lo, hi, spec.path.encode("ascii"))


def unpack_health(raw: bytes) -> HealthSpec:
    """The HealthSpec of a struct xlb_health_spec; PyxlbError for a record pyxlb does not
    write."""
    h = L.unpack_health_spec(raw)
    try:
        return HealthSpec(type=HEALTH_TYPE_NAMES[h["type"]], port=h["port"] or None,
                          path=h["path"].decode("ascii"),
                          expect=(f"{h['expect_lo']}" if h["expect_lo"] == h["expect_hi"]
                                  else f"{h['expect_lo']}-{h['expect_hi']}"),
                          interval=h["interval_ms"] / 1000, timeout=h["timeout_ms"] / 1000,
                          rise=h["rise"], fall=h["fall"],
                          via="direct" if h["flags"] & L.HEALTH_F_DIRECT else "tunnel",
                          on_fail="gone" if h["flags"] & L.HEALTH_F_GONE else "drain")
    except (KeyError, UnicodeDecodeError, StateError) as exc:
        raise PyxlbError(f"the health-spec map holds a record pyxlb does not write "
                         f"({exc}): the maps were not made by pyxlb apply") from None


class HealthSpecs:
    """xlb_health_specs: (VIP id, HEALTH_VIP or backend id) -> HealthSpec (struct
    xlb_health_spec): how each VIP's backends are checked, and the backends whose checks
    differ from their VIP's. Control plane only: the checker and a restarted process read
    it back."""

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def put_all(self, items: Iterable[Tuple[MemberKey, HealthSpec]]) -> None:
        update, m = self._w.update, self.map
        for (vid, bid), spec in items:
            update(m, L.pack_member_key(vid, bid), pack_health(spec))

    def delete_all(self, keys: Iterable[MemberKey]) -> None:
        """Delete every key (one that is absent is skipped)."""
        m = self.map
        for vid, bid in keys:
            key = L.pack_member_key(vid, bid)
            if self._w is DIRECT and m.get(key) is None:
                continue
            self._w.delete(m, key)

    def read(self) -> Dict[MemberKey, HealthSpec]:
        keys, values, n = self.map.lookup_batch()
        out = {}
        for k, v in _entries(keys, values, n, L.SIZES["xlb_member_key"],
                             L.SIZES["xlb_health_spec"]):
            k = L.unpack_member_key(k)
            out[(k["vip_id"], k["backend_id"])] = unpack_health(bytes(v))
        return out


# -- rings --------------------------------------------------------------------------------

def _u32_array(table) -> array:
    if isinstance(table, array) and table.typecode == "I" and table.itemsize == 4:
        return table
    try:
        return array("I", table)
    except OverflowError:
        raise ValueError("ring slots must be backend ids in 0..0xFFFFFFFF") from None
    except TypeError:
        raise TypeError(f"a ring must be a sequence of ints, not {type(table).__name__}") from None


def new_ring(ring_id: int, table) -> "_bpf.Map":
    """A new inner ring map holding `table` (backend ids), not yet in xlb_rings.

    Rings are mmap-able arrays: the whole table goes in with one memcpy (~0.1 ms for 65537
    slots, where a batch update takes ~7 ms). The kernel lays array elements out 8 bytes
    apart, so each u32 slot sits at the start of its 8-byte cell.
    """
    slots = _u32_array(table)
    if not 1 <= len(slots) <= L.RING_SIZE_MAX:
        raise ValueError(f"a ring has 1..{L.RING_SIZE_MAX} slots, not {len(slots)}")
    cells = bytearray(8 * len(slots))
    memoryview(cells).cast("I")[0::2] = slots
    return _filled_inner(f"xlb_ring_{ring_id}", 4, cells)


def _filled_inner(name: str, value_size: int, cells: bytearray) -> "_bpf.Map":
    """A new mmap-able inner array (BPF_F_INNER_MAP: any length) of one value per 8-byte
    cell of `cells`, filled with one copy."""
    inner = _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, value_size, len(cells) // 8, name=name,
                            flags=_bpf.MAP_F_INNER_MAP | _bpf.MAP_F_MMAPABLE)
    try:
        length = -(-len(cells) // mmap.PAGESIZE) * mmap.PAGESIZE
        with mmap.mmap(inner.fd, length, mmap.MAP_SHARED,
                       mmap.PROT_READ | mmap.PROT_WRITE) as mem:
            mem[:len(cells)] = cells
    except BaseException:
        inner.close()
        raise
    return inner


def _cells(inner: "_bpf.Map") -> Optional[bytes]:
    """An mmap-able array's values, each in its 8-byte cell, with one copy (~0.2 ms for
    65537 slots, where a batch read takes ~20 ms); None when it cannot be mapped (an inner
    map of a release that did not make them mmap-able)."""
    n = inner.max_entries
    length = -(-8 * n // mmap.PAGESIZE) * mmap.PAGESIZE
    try:
        with mmap.mmap(inner.fd, length, mmap.MAP_SHARED, mmap.PROT_READ) as mem:
            return mem[:8 * n]
    except (OSError, ValueError):
        return None


def _install_inners(outer: "_bpf.Map", writer, tables: Mapping[int, object],
                    make: Callable[[int, object], "_bpf.Map"]) -> Callable[[], None]:
    """Make an inner map per ring id (make(ring id, table)) and put them all into `outer`
    with one batch update; returns the function that waits for it to end (the writer's
    add_inners). None is installed if one cannot be made."""
    if not tables:
        return _done
    rids = sorted(tables)
    inners = []
    try:
        for rid in rids:
            inners.append(make(check_index(outer, rid, "ring_id"), tables[rid]))
    except BaseException:
        for m in inners:
            m.close()
        raise
    return writer.add_inners(outer, dict(zip(rids, inners)))


class Rings:
    """xlb_rings: ring id -> an inner array of backend ids (a Maglev table, any length up to
    RING_SIZE_MAX). A ring is never written in place: a new inner map is filled whole and
    swapped in, so a packet sees the old ring or the new one, never a mix. No handle on an
    inner map is kept: xlb_rings holds the only reference, so a replaced ring is freed by
    the kernel once the swap is done (and no file descriptor per ring is spent)."""

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def put(self, ring_id: int, table) -> int:
        """Install a table (array('I') of backend ids, or any sequence of them) as ring
        `ring_id`; returns the new inner map's id."""
        check_index(self.map, ring_id, "ring_id")
        inner = new_ring(ring_id, table)
        map_id = inner.id
        self._w.add_inners(self.map, {ring_id: inner})()
        return map_id

    def put_all(self, tables: Mapping[int, object]) -> Callable[[], None]:
        """Install new rings (ring id -> table) with one batch update; returns the function
        that waits for it to end (the writer's add_inners)."""
        return _install_inners(self.map, self._w, tables, new_ring)

    def delete(self, ring_id: int) -> None:
        """Empty slot `ring_id` (KeyError if it holds no ring)."""
        self.delete_all([check_index(self.map, ring_id, "ring_id")])

    def delete_all(self, ring_ids: Iterable[int]) -> None:
        rids = sorted(ring_ids)
        if rids:
            self._w.delete_inners(self.map, rids)

    def get(self, ring_id: int) -> array:
        """What ring `ring_id` holds now, as array('I') (KeyError if no ring is there)."""
        check_index(self.map, ring_id, "ring_id")
        with self.map.inner_map(ring_id) as inner:
            if inner.value_size == 4:
                cells = _cells(inner)
                if cells is not None:
                    return array("I", cells)[0::2]
            keys, values, count = inner.lookup_batch()
        slots = array("I", bytes(4 * count))
        for k, v in zip(array("I", keys), array("I", values)):
            slots[k] = v
        return slots


# -- stateless mode: previous owners and chain peers ----------------------------------------

def new_prev_ring(ring_id: int, chains, untils) -> "_bpf.Map":
    """A new inner map of previous owners (struct xlb_prev_slot by ring slot), not yet in
    xlb_prev_rings: `chains` (chain ids, 0: none) and `untils` (when each is forgotten:
    CLOCK_MONOTONIC ns >> CHAIN_TIME_SHIFT), one of each per ring slot. Filled through
    mmap with one copy, as rings are (8-byte cells: chain at 0, until at 4)."""
    try:
        chains, untils = array("H", chains), array("I", untils)
    except (OverflowError, TypeError):
        raise ValueError("previous owners are chain ids in 0..65535 and times in "
                         "0..0xFFFFFFFF") from None
    if len(chains) != len(untils) or not 1 <= len(chains) <= L.RING_SIZE_MAX:
        raise ValueError(f"previous owners need one chain and one time per ring slot "
                         f"(1..{L.RING_SIZE_MAX}), not {len(chains)} and {len(untils)}")
    cells = bytearray(8 * len(chains))
    memoryview(cells).cast("H")[0::4] = chains
    memoryview(cells).cast("I")[1::2] = untils
    return _filled_inner(f"xlb_prev_{ring_id}", L.SIZES["xlb_prev_slot"], cells)


class PrevRings:
    """xlb_prev_rings: ring id -> the previous owner of each of its slots (stateless VIPs'
    rings only). Written whole and swapped in like xlb_rings, in the same transaction."""

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def put_all(self, tables: Mapping[int, Tuple[object, object]]) -> Callable[[], None]:
        """Install (chains, untils) per ring id with one batch update; returns the function
        that waits for it to end (the writer's add_inners)."""
        return _install_inners(self.map, self._w, tables,
                               lambda rid, table: new_prev_ring(rid, *table))

    def delete_all(self, ring_ids: Iterable[int]) -> None:
        rids = sorted(ring_ids)
        if rids:
            self._w.delete_inners(self.map, rids)

    def get(self, ring_id: int) -> Tuple[array, array]:
        """(chains array('H'), untils array('I')) of ring `ring_id` (KeyError if none)."""
        check_index(self.map, ring_id, "ring_id")
        with self.map.inner_map(ring_id) as inner:
            cells = _cells(inner)
            if cells is not None:           # 8-byte cells: chain at 0, until at 4
                view = memoryview(cells)
                return array("H", view.cast("H")[0::4]), array("I", view.cast("I")[1::2])
            keys, values, count = inner.lookup_batch()
        chains, untils = array("H", bytes(2 * count)), array("I", bytes(4 * count))
        cells = memoryview(bytes(values))
        for k, c, u in zip(array("I", keys), cells.cast("H")[0::4], cells.cast("I")[1::2]):
            chains[k], untils[k] = c, u
        return chains, untils


class ChainPeers:
    """xlb_chain_peers: chain id -> the node it names (pyxlb.chain). Entries not set are
    family 0: no peer."""

    NONE = bytes(L.SIZES["xlb_chain_peer"])

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def put_all(self, peers: Mapping[int, Optional[Address]]) -> None:
        """Set chain id -> address (None: no peer, e.g. an id several nodes share)."""
        for cid in sorted(peers):
            check_index(self.map, cid, "chain id")
            addr = peers[cid]
            if addr is None:
                value = self.NONE
            else:
                family, a = parse_addr(addr)
                value = L.pack_chain_peer(a, family)
            self._w.update(self.map, cid, value)

    def clear_all(self, ids: Iterable[int]) -> None:
        self.put_all({cid: None for cid in ids})

    def read(self) -> Dict[int, Address]:
        """Every chain id that names a peer, in one batch read (only the entries whose
        family byte is set are unpacked: a node's table names a few of its 65536 ids)."""
        keys, values, n = self.map.lookup_batch()
        size, out = L.SIZES["xlb_chain_peer"], {}
        values = bytes(values)
        families = values[16:n * size:size]     # struct xlb_chain_peer: family at 16
        ids = array("I", keys)
        for i in [j for j, family in enumerate(families) if family]:
            p = L.unpack_chain_peer(values[i * size:(i + 1) * size])
            out[ids[i]] = ipaddress.ip_address(format_addr(p["family"], p["addr"]))
        return out


# -- source ranges, address and prefix sets -----------------------------------------------

def _range_order(entry: RangeEntry):
    vid, net = entry
    return (vid, net.version, net.network_address.packed, net.prefixlen)


class SourceRanges:
    """xlb_source_ranges, an LPM trie: (VIP id, client prefix) entries, the clients a VIP
    with VIP_SOURCE_RANGES admits. The trie keeps IPv4 as ::ffff:a.b.c.d. An LPM lookup
    answers with the longest prefix covering a key, not the key's own entry: the writer is
    told which entries exist (insert: absent; remove: present)."""

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    @staticmethod
    def key(vip_id: int, prefix: Prefix) -> bytes:
        plen, addr = lpm_prefix(prefix)
        return L.pack_src_range_key(vip_id, 32 + plen, addr)

    def add(self, vip_id: int, prefix: Prefix) -> None:
        """Let clients in `prefix` (of the VIP's family) reach VIP `vip_id`."""
        self._w.insert(self.map, self.key(vip_id, prefix), PRESENT)

    def remove(self, vip_id: int, prefix: Prefix) -> None:
        """Remove one prefix of VIP `vip_id` (directly: KeyError if it has no such entry)."""
        self._w.remove(self.map, self.key(vip_id, prefix), PRESENT)

    def add_all(self, entries: Iterable[RangeEntry]) -> None:
        for vid, net in sorted(entries, key=_range_order):
            self.add(vid, net)

    def remove_all(self, entries: Iterable[RangeEntry]) -> None:
        for vid, net in sorted(entries, key=_range_order):
            self.remove(vid, net)

    def admits(self, vip_id: int, addr: Address) -> bool:
        """Whether the trie has a prefix of VIP `vip_id` covering a client address."""
        plen, a = lpm_prefix(addr)
        return L.pack_src_range_key(vip_id, 32 + plen, a) in self.map

    def read(self) -> frozenset:
        """Every entry, as (VIP id, ipaddress network): a walk of the trie (LPM tries have
        no batch read). A prefix inside ::ffff:0:0/96 reads back as IPv4."""
        entries = set()
        for raw in self.map.keys():
            k = L.unpack_src_range_key(raw)
            family, addr, plen = from_lpm(k["prefixlen"] - 32, k["addr"])
            entries.add((k["vip_id"],
                         ipaddress.ip_network(format_prefix(family, addr, plen))))
        return frozenset(entries)


class AddrSet:
    """A set of addresses: xlb_addr_key -> u32 1 (xlb_local_addrs, xlb_decap_vips)."""

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def add(self, addr: Address) -> None:
        self._w.update(self.map, _addr_key(addr), PRESENT)

    def remove(self, addr: Address) -> None:
        """Directly: KeyError if addr is not in the set."""
        self._w.delete(self.map, _addr_key(addr))

    def __contains__(self, addr: Address) -> bool:
        return _addr_key(addr) in self.map


class PrefixSet:
    """A set of prefixes, an LPM trie: xlb_lpm_key -> u32 1 (xlb_decap_sources)."""

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    @staticmethod
    def key(prefix: Prefix) -> bytes:
        plen, addr = lpm_prefix(prefix)
        return L.pack_lpm_key(plen, addr)

    def add(self, prefix: Prefix) -> None:
        self._w.insert(self.map, self.key(prefix), PRESENT)

    def remove(self, prefix: Prefix) -> None:
        """Directly: KeyError if the prefix is not in the set."""
        self._w.remove(self.map, self.key(prefix), PRESENT)

    def covers(self, addr: Address) -> bool:
        """Whether some prefix of the set covers a host address (a longest-prefix lookup)."""
        return self.key(addr) in self.map


# -- node settings: config, interface MACs, epoch ------------------------------------------

class Config:
    """xlb_config: the one struct xlb_config (the flow-hash seed, MTU, CFG_* flags, outer
    source prefixes, and xlb_flowsets4's geometry). A balancer and a decapsulator pinned in
    one directory share it."""

    KEY = 0
    # the fields that describe the flow tables rather than configure the node (set at
    # load), and their insertion limits (set by attach or the agent): kept by write()
    FLOW_TABLE_FIELDS = ("flow4_bits", "flow4_seed", "flow6_bits", "flow_inserts4",
                         "flow_inserts6")
    # node settings of their own (attach's --chain-window): kept by write() too
    KEPT_FIELDS = FLOW_TABLE_FIELDS + ("chain_window",)

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def read(self) -> dict:
        """The record, as pyxlb._layouts.unpack_config reads it."""
        return L.unpack_config(self.map.lookup(self.KEY))

    def init(self) -> None:
        """A new (all-zero) record gets the defaults, so an MTU of 0 never reaches the
        datapath; an adopted one is left as it is."""
        if self.map.lookup(self.KEY) == bytes(L.SIZES["xlb_config"]):
            self._w.update(self.map, self.KEY, L.pack_config())

    def write_fields(self, **fields) -> None:
        """Write the record with `fields` (as pyxlb._layouts.pack_config takes them); the
        flow table's geometry, the insertion limits and the chain window are kept unless
        given."""
        cfg = self.read()
        for name in self.KEPT_FIELDS:
            fields.setdefault(name, cfg[name])
        self._w.update(self.map, self.KEY, L.pack_config(**fields))

    def write(self, *, seed: int = 0, mtu: int = L.MTU_DEFAULT, src4: Optional[Prefix] = None,
              src6: Optional[Prefix] = None, decap_check_source: bool = False) -> None:
        """Write the whole record (the flow table's geometry kept). src4 / src6 are the
        outer source prefixes ("10.255.0.0/16"; the flow hash fills the host bits), None
        for none."""
        src4_addr, src4_plen = prefix_or_none(src4, L.FAMILY_V4, "src4")
        src6_addr, src6_plen = prefix_or_none(src6, L.FAMILY_V6, "src6")
        flags = L.CFG_DECAP_CHECK_SOURCE if decap_check_source else 0
        flags |= self.read()["flags"] & L.CFG_INSERTS_SET
        self.write_fields(seed=seed, mtu=mtu, flags=flags, src4=src4_addr[:4],
                          src4_plen=src4_plen, src6=src6_addr, src6_plen=src6_plen)

    def set_flag(self, flag: int, on: bool) -> None:
        """Turn one CFG_* flag on or off, the rest of the record kept."""
        cfg = self.read()
        cfg["flags"] = (cfg["flags"] | flag) if on else (cfg["flags"] & ~flag)
        self.write_fields(**cfg)


class IfMacs:
    """xlb_if_macs: slot ifindex % IF_MAC_SLOTS -> (ifindex, MAC) of an interface the
    balancer runs on; VIP frames arriving there addressed to another MAC are not balanced."""

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def put(self, ifindex: int, mac) -> None:
        _check_ifindex(ifindex)
        self._w.update(self.map, ifindex % L.IF_MAC_SLOTS, L.pack_if_mac(ifindex,
                                                                          parse_mac(mac)))

    def clear(self, ifindex: int) -> None:
        """Forget `ifindex` (its slot is cleared only if it is its own)."""
        slot = ifindex % L.IF_MAC_SLOTS
        if L.unpack_if_mac(self.map.lookup(slot))["ifindex"] == ifindex:
            self._w.update(self.map, slot, bytes(L.SIZES["xlb_if_mac"]))

    def get(self, ifindex: int) -> dict:
        """{ifindex, mac} of the slot `ifindex` uses (ifindex 0: empty)."""
        return L.unpack_if_mac(self.map.lookup(ifindex % L.IF_MAC_SLOTS))


class Epoch:
    """xlb_epoch: a u64 bumped by every write of the control plane, so another process
    knows that what it read of the maps is stale."""

    def __init__(self, m: "_bpf.Map", writer=DIRECT):
        self.map = m
        self._w = writer

    def read(self) -> int:
        return struct.unpack("=Q", self.map.lookup(0))[0]

    def bump(self) -> int:
        """Move the epoch on; returns the new value."""
        now = self.read() + 1
        self._w.update(self.map, 0, struct.pack("=Q", now))
        return now


def online_cpus() -> int:
    """CPUs online now: those that receive packets. (Per-CPU maps have a slot for every
    possible CPU, which on many VMs is far more: a limit shared over those would leave each
    working CPU a small part of it.)"""
    return os.cpu_count() or 1


def default_inserts(sets: int, ways: int, ncpus: int) -> int:
    """The default insertion limit of a flow table of `sets` sets of `ways` ways, per CPU
    and second: all CPUs together record at most as many new flows a second as the table
    has ways, so a flood cannot rewrite the table faster than once a second (docs/datapath.md,
    "Flow tables")."""
    return max(1, sets * ways // max(1, ncpus))


def completed_config(cfg: dict, sets4: int, sets6: int, ncpus: int, seed: int) -> dict:
    """The config record `cfg` (unpack_config's form) with what a balancer's flow tables
    need: their geometry (the log2 of each table's sets), a set-hash seed (`seed` when
    the record has none), and, when no limit was ever given (CFG_INSERTS_SET clear: a new
    record, or one an upgrade copied from a release without limits), the default
    insertion limits."""
    out = dict(cfg)
    out["flow4_bits"] = sets4.bit_length() - 1
    out["flow6_bits"] = sets6.bit_length() - 1
    out["flow4_seed"] = cfg["flow4_seed"] or seed
    if not cfg["flags"] & L.CFG_INSERTS_SET:
        out["flow_inserts4"] = default_inserts(sets4, L.FLOW4_WAYS, ncpus)
        out["flow_inserts6"] = default_inserts(sets6, L.FLOW6_WAYS, ncpus)
        out["flags"] = cfg["flags"] | L.CFG_INSERTS_SET
    return out


# -- health checks through the tunnel (health.o's own map) ---------------------------------

class HcPaths:
    """xlb_hc_paths: a health check socket's local port (and family) -> the VIP, backend,
    mode and outer source its packets are re-addressed with (xdp/include/health.h). The
    checker process owns the map (never pinned); this accessor writes it directly, one
    update per registered socket."""

    def __init__(self, m: "_bpf.Map"):
        self.map = m

    @staticmethod
    def path(vip: Address, backend: Address, outer_src: Optional[Address], mode: int) -> bytes:
        """A value, packed once and written for every socket that checks this way: the
        VIP, the backend and (IPIP mode; None in L2 mode) the outer source, of one family."""
        fam, vip16 = parse_addr(vip)
        backend_fam, backend16 = parse_addr(backend)
        outer_fam, outer16 = parse_addr(outer_src) if outer_src is not None else (fam, bytes(16))
        if not fam == backend_fam == outer_fam:
            raise ValueError(f"the VIP {vip}, the backend {backend} and the outer source "
                             f"{outer_src} must be of one family")
        return L.pack_hc_path(vip16, backend16, outer16, mode)

    def put(self, port: int, family: int, path: bytes) -> None:
        self.map.update(L.pack_hc_key(port, family), path)

    def delete(self, port: int, family: int) -> None:
        """Forget a port (KeyError if it is not there)."""
        self.map.delete(L.pack_hc_key(port, family))

    def get(self, port: int, family: int) -> dict:
        """The port's entry as pyxlb._layouts.unpack_hc_path reads it (KeyError if none)."""
        return L.unpack_hc_path(self.map.lookup(L.pack_hc_key(port, family)))

    def ports(self) -> List[Tuple[int, int]]:
        """Every registered (port, family)."""
        return sorted((k["port"], k["family"]) for k in map(L.unpack_hc_key, self.map.keys()))
