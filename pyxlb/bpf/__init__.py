"""The compiled XDP objects (built from xdp/*.bpf.c by setup.py and shipped here).

PYXLB_BPF_DIR, when set, names another directory to load them from (a build of other
sources: the upgrade tests load a variant of the balancer this way)."""

import os

from ..errors import PyxlbError

_DIR = os.path.dirname(os.path.abspath(__file__))
DIR_ENV = "PYXLB_BPF_DIR"


def object_path(name: str) -> str:
    """Path of the compiled object `name` (e.g. "balancer"); a clear error if it is missing."""
    where = os.environ.get(DIR_ENV) or _DIR
    path = os.path.join(where, f"{name}.o")
    if not os.path.exists(path):
        hint = f"{DIR_ENV} names a directory without it" if where != _DIR else \
            "rebuild pyxlb (make build)"
        raise PyxlbError(f"BPF object {name}.o is missing from {where}: {hint}")
    return path
