"""Where an object's program (and its tail calls' prog array) is pinned, and which
interfaces run a program: what the loader (loader.py) and upgrades (upgrade.py) both
need."""

from __future__ import annotations

import os
import socket
from typing import List, Optional

from pyxlb import _bpf

from .maps import ObjectSpec


def prog_pin(spec: ObjectSpec, pin_dir: str) -> str:
    """Where the program of `spec` is pinned, beside its maps."""
    return os.path.join(pin_dir, f"prog_{spec.object}")


def jumps_pin(spec: ObjectSpec, pin_dir: str) -> Optional[str]:
    """Where the prog array of `spec`'s tail calls is pinned (None: it has none). The pin
    is what keeps it filled once the loading process is gone (maps.fill_jumps); it goes
    with the program's pin, never with the maps'."""
    return os.path.join(pin_dir, f"jumps_{spec.object}") if spec.jumps else None


def interfaces_running(prog_id: int) -> List[dict]:
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
