"""The datapath version: what a compiled object's maps look like, and the record of it
pinned beside a running datapath.

Each map's *fingerprint* is a hash of its layout as the object's BTF declares it (map type,
flags, key and value sizes, the member names, offsets and types of its key and value
structs, the same for a map-of-maps' inner template, and the entry count of maps whose
size does not vary with a node's settings) and of its *meaning*: a number this module keeps
per map (``MEANINGS``), bumped by the release that changes what a map's entries mean while
their layout stays (a flag's sense, a hash function, a unit). Two maps with the same
fingerprint are read and written alike by both versions; any other pair is migrated
(pyxlb/datapath/upgrade.py).

The *datapath version* shown to people is ``<semantic version>.<layout id>``: the highest
meaning number, and the first 12 hex digits of a hash over every map's fingerprint and the
object's program code (its instructions: two builds of the same sources by the same
compiler agree). Commands read a datapath whose maps match this version's even when its
program differs; starts and `pyxlb upgrade` replace the program. A datapath records it, with every map's fingerprint and meaning, in
the map ``xlb_version`` pinned beside its maps (bpffs holds no plain files): name -> record.
Datapaths made before this record existed have none; their maps' layouts are read from the
kernel's BTF instead (``pinned_fingerprint``), which cannot see a map-of-maps' template, so
those are always migrated.
"""

from __future__ import annotations

import functools
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Dict, Iterable, Mapping, Optional, Tuple

from pyxlb import _bpf
from pyxlb.bpf import object_path

RECORD_MAP = "xlb_version"
NAME_SIZE = 32                              # key: a map or object name, NUL-padded
RECORD = struct.Struct("<16sII")            # fingerprint (16 bytes), meaning, flags
RECORD_MAX = 64
FLAG_OBJECT = 1                             # the entry is an object's (program's), not a map's

# What each map's entries mean, by map name: bump the number (to the new semantic version)
# in the release that changes a map's meaning without changing its layout, and give the
# upgrade a way to carry the entries over (upgrade.TRANSFORMS; without one, upgrades from
# the old meaning are refused). Maps not listed mean what they meant in semantic version 1.
MEANINGS: Dict[str, int] = {
    # 2: the IPv6 set hash is multilinear (xlb_set6_index), not a chain of Murmur3 steps:
    # the same flow lands in another set (upgrade.rehash_flowsets6 moves them)
    "xlb_flowsets6": 2,
}
SEMANTIC_VERSION = max(MEANINGS.values(), default=1)

# Maps whose entry count is a node setting (pyxlb/datapath/loader.py map_sizes): their size
# is not part of their layout, and an upgrade keeps the running datapath's size.
SIZED_MAPS = frozenset(("xlb_vips", "xlb_vip_addrs", "xlb_rings", "xlb_prev_rings",
                        "xlb_vip_stats",
                        "xlb_vip_range_drops", "xlb_decap_vips", "xlb_flowsets4",
                        "xlb_flowsets6", "xlb_flows"))

UNKNOWN = b"\0" * 16                        # a fingerprint nothing matches (see module doc)
INNER_MAP_FLAG = 1 << 12                    # BPF_F_INNER_MAP: inner maps may differ in size


def _canonical(layout: Mapping, sized: bool) -> tuple:
    inner = layout.get("inner")
    key, value = layout["key"], layout["value"]
    if key is None or value is None:
        # libbpf gives the kernel a key and value type only when it has both: a map
        # declared by size is known by its sizes alone, in the object as in the kernel
        key = value = None
    return (layout["type"], layout["flags"], layout["key_size"], layout["value_size"],
            None if sized else layout["max_entries"], key, value,
            None if inner is None else
            _canonical(inner, bool(inner["flags"] & INNER_MAP_FLAG)))


def fingerprint(name: str, layout: Mapping, meaning: int) -> bytes:
    """The 16-byte fingerprint of map `name` with `layout` (BpfObject.map_layout's form)
    meaning `meaning`."""
    text = repr((name, _canonical(layout, name in SIZED_MAPS), meaning)).encode()
    return hashlib.sha256(text).digest()[:16]


def pinned_fingerprint(name: str, m: "_bpf.Map") -> bytes:
    """The fingerprint of a pinned map that has no record, from what the kernel knows of
    it (its BTF); UNKNOWN for a map-of-maps, whose template the kernel does not tell."""
    if m.is_outer:
        return UNKNOWN
    return fingerprint(name, m.layout(), 1)


def layout_id(entries: Mapping[str, "Entry"]) -> str:
    digest = hashlib.sha256()
    for name in sorted(entries):
        digest.update(name.encode() + entries[name].fingerprint)
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class Entry:
    """What the record says of one map (or, with is_object, of one object's program)."""

    fingerprint: bytes
    meaning: int = 1
    is_object: bool = False


class Version:
    """A datapath version: {map or object name: Entry}."""

    def __init__(self, entries: Mapping[str, Entry], recorded: bool = True):
        self.entries = dict(entries)
        self.recorded = recorded        # False: read from a datapath that had no record

    @property
    def maps(self) -> Dict[str, Entry]:
        return {n: e for n, e in self.entries.items() if not e.is_object}

    def subset(self, names: Iterable[str]) -> "Version":
        return Version({n: self.entries[n] for n in names if n in self.entries},
                       self.recorded)

    @property
    def semantic(self) -> int:
        return max((e.meaning for e in self.maps.values()), default=1)

    def __str__(self) -> str:
        if not self.recorded:
            return "unrecorded (a release before datapath versions)"
        return f"{self.semantic}.{layout_id(self.entries)}"

    def __eq__(self, other) -> bool:
        return isinstance(other, Version) and self.entries == other.entries

    def newer_meanings(self, than: "Version") -> Dict[str, Tuple[int, int]]:
        """{map: (its meaning here, in `than`)} for maps that mean something newer here
        than `than` knows."""
        return {n: (e.meaning, than.entries[n].meaning if n in than.entries else 0)
                for n, e in self.maps.items()
                if e.meaning > (than.entries[n].meaning if n in than.entries else 1)}


def object_digest(obj: "_bpf.BpfObject") -> bytes:
    """The identity of an object's programs: a hash of their instructions (not of the file,
    whose debug information names the directory it was built in)."""
    digest = hashlib.sha256()
    for name in sorted(obj.program_names()):
        digest.update(name.encode() + b"\0" + obj.program_code(name))
    return digest.digest()[:16]


def of_object(spec, path: Optional[str] = None) -> Version:
    """The version of a compiled object (`spec`: maps.ObjectSpec): its maps and program."""
    path = path or object_path(spec.object)
    stat = os.stat(path)
    return Version(_of_object(spec.object, tuple(spec.maps.values()), path,
                              stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=16)
def _of_object(object_name: str, map_names: Tuple[str, ...], path: str, mtime_ns: int,
               size: int) -> Dict[str, Entry]:
    with _bpf.BpfObject.open(path) as obj:
        entries = {name: Entry(fingerprint(name, obj.map_layout(name), MEANINGS.get(name, 1)),
                               MEANINGS.get(name, 1))
                   for name in map_names}
        entries[object_name] = Entry(object_digest(obj), is_object=True)
    return entries


def combined(versions: Iterable[Version]) -> Version:
    entries: Dict[str, Entry] = {}
    for v in versions:
        entries.update(v.entries)
    return Version(entries)


# -- the record pinned beside the maps -----------------------------------------------------

def _key(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= NAME_SIZE:
        raise ValueError(f"name too long for the version record: {name}")
    return raw.ljust(NAME_SIZE, b"\0")


def new_record_map() -> "_bpf.Map":
    return _bpf.Map.create(_bpf.MAP_TYPE_HASH, NAME_SIZE, RECORD.size, RECORD_MAX,
                           name=RECORD_MAP)


def write_record(m: "_bpf.Map", version: Version) -> None:
    for name, e in version.entries.items():
        m.update(_key(name), RECORD.pack(e.fingerprint, e.meaning,
                                         FLAG_OBJECT if e.is_object else 0))


def read_record(m: "_bpf.Map") -> Version:
    entries = {}
    for k, v in m.items():
        fp, meaning, flags = RECORD.unpack(v)
        entries[k.rstrip(b"\0").decode()] = Entry(fp, meaning, bool(flags & FLAG_OBJECT))
    return Version(entries)


def record_path(pin_dir: str) -> str:
    return os.path.join(pin_dir, RECORD_MAP)


def pinned(pin_dir: str, map_names: Iterable[str]) -> Version:
    """The version of the datapath pinned at `pin_dir`: its record, or for a datapath made
    before records existed, what the kernel tells of each of `map_names` pinned there."""
    try:
        with _bpf.Map.from_pinned(record_path(pin_dir)) as m:
            return read_record(m)
    except FileNotFoundError:
        pass
    entries = {}
    for name in map_names:
        try:
            with _bpf.Map.from_pinned(os.path.join(pin_dir, name)) as m:
                entries[name] = Entry(pinned_fingerprint(name, m))
        except FileNotFoundError:
            continue
    return Version(entries, recorded=False)
