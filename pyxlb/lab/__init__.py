"""The namespace lab (docs/lab.md): `topology` builds it (Lab), `demo` is `pyxlb lab demo`,
`http` the backends' HTTP server, `scenarios` the expected-against-actual checks that the
Vagrant lab shares.

`scenarios` and `http` are standard library only: the Vagrant lab's VMs run them from the
checkout with Debian's python3. So the names below come from `topology` (pyroute2, the
bindings) only when asked for.
"""

from typing import TYPE_CHECKING

TOPOLOGY = ("BACKENDS", "CLIENT", "CLIENT_NET", "HOST", "HTTP_PORT", "LBS", "Lab", "ROUTER",
            "SEED", "SEGMENT_MTU", "SEGMENT_NET", "VIP4", "VIP6", "node_addr")
__all__ = list(TOPOLOGY)

if TYPE_CHECKING:
    from .topology import (BACKENDS, CLIENT, CLIENT_NET, HOST, HTTP_PORT, LBS, ROUTER, SEED,
                           SEGMENT_MTU, SEGMENT_NET, VIP4, VIP6, Lab, node_addr)


def __getattr__(name: str):
    if name in TOPOLOGY:
        from . import topology
        return getattr(topology, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
