"""The compiled XDP objects (built from xdp/*.bpf.c by setup.py and shipped here)."""

import os

from ..errors import PyxlbError

_DIR = os.path.dirname(os.path.abspath(__file__))


def object_path(name: str) -> str:
    """Path of the compiled object `name` (e.g. "balancer"); a clear error if it is missing."""
    path = os.path.join(_DIR, f"{name}.o")
    if not os.path.exists(path):
        raise PyxlbError(f"BPF object {name}.o is missing from {_DIR}: rebuild pyxlb (make build)")
    return path
