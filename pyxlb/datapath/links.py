"""Where an object's program is pinned, and which interfaces run a program: what the loader
(loader.py) and upgrades (upgrade.py) both need."""

from __future__ import annotations

import os
import socket
from typing import List

from pyxlb import _bpf

from .maps import ObjectSpec


def prog_pin(spec: ObjectSpec, pin_dir: str) -> str:
    """Where the program of `spec` is pinned, beside its maps."""
    return os.path.join(pin_dir, f"prog_{spec.object}")


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
