"""A loaded object handed out as if freshly loaded, for tables of rows that each need one.

Loading the balancer costs about 0.6 s of CPU (the verifier); a table of 200 rows that
each loaded it spent two minutes there. ``Pristine`` loads an object once, records what
every one of its maps holds right after the load (the program's maps as the verifier
recorded them, plus the maps the facade holds that the program does not use; an outer
map's inner maps too), and before each row puts back every map that differs and checks
that each now holds exactly what it held after the load: a row sees no earlier row's
flows, counters or rings, or the check fails. Each row gets a new facade over the same
handles, so nothing kept in Python carries over either.
"""

from __future__ import annotations

from typing import Dict, Mapping, Optional

from pyxlb import _bpf

# bpf_map_type values (uapi/linux/bpf.h)
_HASH, _ARRAY, _PROG_ARRAY, _PERCPU_ARRAY, _LPM_TRIE, _ARRAY_OF_MAPS = 1, 2, 3, 6, 11, 12
_ARRAYS = (_ARRAY, _PERCPU_ARRAY)
_KEYED = (_HASH, _LPM_TRIE)
_OUTERS = (_ARRAY_OF_MAPS,)
_RDONLY_PROG = 1 << 7       # BPF_F_RDONLY_PROG: .rodata, frozen, never written


def _dump(m: "_bpf.Map"):
    """What map `m` holds: an array's values (one buffer); a hash's or trie's {key:
    value}; an outer map's {key: (inner id, what the inner map holds)}; a prog array's
    {slot: program id} (the loader fills it; no row may change it)."""
    if m.type == _PROG_ARRAY:
        return {k: m.get(k) for k in range(m.max_entries)}
    if m.type in _ARRAYS:
        # batches no larger than the map: each allocates chunk × value size bytes
        return m.lookup_batch(min(m.max_entries, 4096))[1]
    if m.type in _KEYED:
        return dict(m.items())
    if m.type in _OUTERS:
        out = {}
        for k in _slots(m):
            with m.inner_map(k) as inner:
                out[k] = (inner.id, _dump(inner))
        return out
    raise TypeError(f"map {m.name!r} of type {m.type}: Pristine cannot restore it")


def _slots(outer: "_bpf.Map"):
    """The keys of an outer map's filled slots (an array of maps: every index is a key)."""
    for k in range(outer.max_entries):
        try:
            outer.inner_id(k)
        except KeyError:
            continue
        yield k


class Pristine:
    """``Pristine(Datapath, map_sizes).fresh()``: the object as `load` leaves it."""

    def __init__(self, cls, map_sizes: Optional[Mapping[str, int]] = None):
        self.cls = cls
        self.obj = cls.load(map_sizes=map_sizes)
        try:
            maps: Dict[int, "_bpf.Map"] = {m.id: m for m in self.obj.maps}
            self._opened = [_bpf.Map.from_id(i) for i in self.obj.prog.map_ids()
                            if i not in maps]
            maps.update((m.id, m) for m in self._opened)
            self.maps = list(maps.values())
            # an outer map's inner maps as the load left them, held open to be put back
            self._inners = {(m.id, k): m.inner_map(k) for m in self.maps
                            if m.type in _OUTERS for k in _slots(m)}
            self.snapshot = {m.id: _dump(m) for m in self.maps}
        except BaseException:
            self.close()
            raise

    def fresh(self):
        """A new facade over the object, every map as right after the load (checked)."""
        for m in self.maps:
            want = self.snapshot[m.id]
            if _dump(m) != want:
                assert not m.flags & _RDONLY_PROG, f"read-only map {m.name} changed"
                self._restore(m, want)
                assert _dump(m) == want, f"{m.name} holds other than after the load"
        return self.cls(self.obj.prog, self.obj.maps, None)

    def _restore(self, m: "_bpf.Map", want) -> None:
        assert m.type != _PROG_ARRAY, f"a row changed the tail calls in {m.name}"
        if m.type in _ARRAYS:
            m.write_array(want)
        elif m.type in _KEYED:
            for k in [k for k in m.keys() if k not in want]:
                m.delete(k)
            for k, v in want.items():
                m.update(k, v)
        else:
            for k in [k for k in _slots(m) if k not in want]:
                m.delete(k)
            for k, (_, inner_want) in want.items():
                inner = self._inners[(m.id, k)]
                if m.inner_id(k) != inner.id:
                    m.set_inner(k, inner)
                if _dump(inner) != inner_want:
                    self._restore(inner, inner_want)

    def close(self) -> None:
        for m in getattr(self, "_inners", {}).values():
            m.close()
        for m in getattr(self, "_opened", ()):
            m.close()
        self.obj.close()
