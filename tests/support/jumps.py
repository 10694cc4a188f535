"""What a loaded balancer's tail calls reach (pyxlb/datapath/maps.py, ObjectSpec.jumps)."""

from __future__ import annotations

from pyxlb import _bpf
from pyxlb.datapath import maps


def tail_calls(prog: "_bpf.Program") -> list:
    """The programs in `prog`'s tail-call table (its xlb_jumps), slot by slot: for each,
    (name, whether it uses the same xlb_jump_arg as `prog`), or None for an empty slot."""
    found = {}
    for map_id in prog.map_ids():
        m = _bpf.Map.from_id(map_id)
        found[m.name] = m
    try:
        jumps, arg = found[maps.JUMPS], found[maps.JUMP_ARG]
        out = []
        for slot in range(jumps.max_entries):
            value = jumps.get(slot)
            if value is None:
                out.append(None)
                continue
            with _bpf.Program.from_id(int.from_bytes(value, "little")) as target:
                out.append((target.name, arg.id in target.map_ids()))
        return out
    finally:
        for m in found.values():
            m.close()


# what every balancer of this version jumps to
CHAIN_LOCAL = [("xlb_chain_local", True)]
