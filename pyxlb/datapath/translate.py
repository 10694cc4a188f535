"""Records of one map layout rewritten in another, by the names in their BTF.

An upgrade that changes a map's layout copies every entry of the old map into the new one
(pyxlb/datapath/upgrade.py). ``copy_ops`` compares the two layouts (BpfObject.map_layout's
trees) and says which byte runs of an old record go where in a new one: struct members are
matched by name at any depth, arrays element by element; a member the old layout lacks is
zero in the new record, one the new layout lacks is dropped. What cannot be carried over
safely (a member whose type changed, a bitfield that moved, records known only by size
whose sizes differ) raises Untranslatable: the upgrade is refused before anything changes.
A change of meaning with the same layout is not this module's business (version.MEANINGS).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from pyxlb.errors import PyxlbError

Op = Tuple[int, int, int]       # (source offset, destination offset, length)


class Untranslatable(PyxlbError):
    """Two layouts whose records cannot be carried over by name."""


def size_of(tree) -> int:
    kind = tree[0]
    if kind in ("int", "enum", "float", "struct", "union"):
        return tree[1]
    if kind == "ptr":
        return 8
    if kind == "array":
        return tree[1] * size_of(tree[2])
    raise Untranslatable(f"a member of kind {kind} has no known size")


def _ops(old, new, src: int, dst: int, path: str, out: List[Op]) -> None:
    if old == new:
        out.append((src, dst, size_of(new)))
        return
    if old[0] == "array" and new[0] == "array":
        step_old, step_new = size_of(old[2]), size_of(new[2])
        for i in range(min(old[1], new[1])):
            _ops(old[2], new[2], src + i * step_old, dst + i * step_new, f"{path}[{i}]", out)
        return
    if old[0] == new[0] == "struct":
        members = {m[0]: m for m in old[2] if m[0]}
        for name, bit_off, bits, tree in new[2]:
            if not name:
                raise Untranslatable(f"{path or 'the record'} has an unnamed member")
            was = members.get(name)
            if was is None:
                continue                    # new member: zero
            if bits or was[2] or bit_off % 8 or was[1] % 8:
                if (was[1], was[2], was[3]) != (bit_off, bits, tree):
                    raise Untranslatable(f"bitfield {path}.{name} changed")
            _ops(was[3], tree, src + was[1] // 8, dst + bit_off // 8, f"{path}.{name}", out)
        return
    raise Untranslatable(f"{path or 'the record'} changed from {_kind(old)} to {_kind(new)}")


def _kind(tree) -> str:
    if tree[0] in ("int", "enum", "float", "struct", "union"):
        return f"{tree[0]} of {tree[1]} bytes"
    if tree[0] == "array":
        return f"array of {tree[1]}"
    return tree[0]


def _merged(ops: List[Op]) -> List[Op]:
    out: List[Op] = []
    for a, b, n in sorted(ops, key=lambda op: op[1]):
        if out and out[-1][0] + out[-1][2] == a and out[-1][1] + out[-1][2] == b:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + n)
        else:
            out.append((a, b, n))
    return out


def copy_ops(old: Optional[tuple], old_size: int, new: Optional[tuple], new_size: int,
             what: str) -> List[Op]:
    """How to rewrite a record of layout `old` (`old_size` bytes) as one of layout `new`.
    A layout of None is a record known only by its size (no BTF): it is copied whole if
    the sizes agree. `what` names the record in errors (e.g. "xlb_flows value")."""
    if old is None or new is None:
        if old_size != new_size:
            raise Untranslatable(f"{what}: {old_size} bytes become {new_size}, and its "
                                 f"layout is known only by size")
        return [(0, 0, new_size)]
    if size_of(old) != old_size or size_of(new) != new_size:
        raise Untranslatable(f"{what}: the BTF layout does not match the map's record size")
    ops: List[Op] = []
    try:
        _ops(old, new, 0, 0, "", ops)
    except Untranslatable as exc:
        raise Untranslatable(f"{what}: {exc}") from None
    return _merged(ops)


def identity(ops: List[Op], old_size: int, new_size: int) -> bool:
    """True when the ops copy a record unchanged."""
    return old_size == new_size and ops == [(0, 0, new_size)]
