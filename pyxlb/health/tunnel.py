"""Health checks through the tunnel: a TCP connection of the kernel's own stack, sent to a
backend the way the balancer sends clients' packets there.

The checker binds a socket (an ephemeral port), registers that port here with the VIP, the
backend and the VIP's mode, and connects it to the backend's own address and the check
port. The kernel routes that connection like any other (interface, next-hop MAC). On the
way out, xlb_hc_egress (xdp/health.bpf.c) re-addresses the socket's packets to the VIP
and, in IPIP mode, puts them inside an outer IPv4/IPv6 header to the backend: what leaves
is what the balancer sends for a client. The backend decapsulates it (xdp/decap.bpf.c, or
a balancer's inline decap), its service answers from the VIP straight back (direct server
return), and on the way in xlb_hc_ingress re-addresses that answer from the backend, so
the socket takes it. A check passes only if the tunnel, the decapsulator and the service
on the VIP all work; a plain connection to the backend's address proves none of that.

The programs are attached with tcx links this process alone holds: when it ends, they go,
and no rewrite rule outlives the checker. One Tunnel per network namespace (per process).

Use (an asyncio checker; the socket may be bound to any address, the route picks it):

    tunnel = Tunnel.open(pin_dir)               # once; tunnel.close() at the end
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.bind(("0.0.0.0", 0))
    tunnel.register(sock, vip, backend, "ipip")     # before connect: the SYN goes through
    try:
        await loop.sock_connect(sock, (str(backend), port))
        ...                                     # the check's own exchange
    finally:
        tunnel.unregister(sock)
        sock.close()

The outer source and the MTU are read from the pinned config once, at open.

Needs: a route to each backend (an L2 backend on a segment of this node, reached without a
router); the backends' decapsulators must admit the outer source used (the balancer's
encap source prefix, read from its pinned config, else this node's address towards the
backend); the VIP and its backend of one family (the inner packet's family cannot change).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple, Union

from .. import _bpf
from .. import _layouts as L
from .. import netlink, netns
from ..bpf import object_path
from ..datapath import maps
from ..errors import PyxlbError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

OBJECT = "health"
EGRESS = "xlb_hc_egress"
INGRESS = "xlb_hc_ingress"
MODES = {"ipip": L.MODE_IPIP, "l2": L.MODE_L2}
_FAMILY = {4: L.FAMILY_V4, 6: L.FAMILY_V6}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}
_IP_HLEN = {4: 20, 6: 40}
_TCP_HLEN = 20


class TunnelError(PyxlbError):
    """A check cannot go through the tunnel as asked (mixed families, no route, a backend
    that is this node, an L2 backend behind a router, a socket not bound...)."""


def balancer_config(pin_dir: str) -> Optional[dict]:
    """The balancer's config record pinned in `pin_dir` (None when there is none)."""
    path = os.path.join(pin_dir, maps.CONFIG)
    if not os.path.exists(path):
        return None
    m = _bpf.Map.from_pinned(path)
    try:
        if m.value_size != L.SIZES["xlb_config"]:
            raise TunnelError(f"{path} is not a config record this pyxlb reads "
                              f"({m.value_size} bytes, not {L.SIZES['xlb_config']})")
        return maps.Config(m).read()
    finally:
        m.close()


def encap_sources(cfg: dict) -> Dict[int, IPAddress]:
    """The outer source a check takes per family, from a balancer's config record: one
    address of its encap source prefix (the first host of it; the prefix itself when it is
    a single address). {} when it has no prefix."""
    out = {}
    for family, width in ((4, 4), (6, 16)):
        plen = cfg[f"src{family}_plen"]
        if not plen:
            continue
        net = ipaddress.ip_network((bytes(cfg[f"src{family}"])[:width], plen), strict=False)
        out[family] = net.network_address + (1 if net.num_addresses > 1 else 0)
    return out


def _route_and_mtu(backend: IPAddress) -> Tuple[netlink.Route, int]:
    route = netlink.route_get(backend)
    return route, netlink.link_mtu(route.ifindex) if not route.local else 0


class Tunnel:
    """The through-tunnel check path of this network namespace; close() detaches."""

    def __init__(self, egress: "_bpf.Program", ingress: "_bpf.Program", paths: "_bpf.Map",
                 sources: Dict[int, IPAddress], mtu: Optional[int] = None):
        """Use Tunnel.open()."""
        self.egress, self.ingress = egress, ingress
        self.paths = maps.HcPaths(paths)     # the accessor of xlb_hc_paths
        self.sources = dict(sources)        # family -> configured outer source
        self.mtu = mtu                      # the balancer's: largest packet once tunnelled
        self._links: Dict[int, Tuple["_bpf.TcxLink", "_bpf.TcxLink"]] = {}
        # (vip, backend, mode) as given -> (socket family, map family, packed value, MSS)
        self._ready: Dict[tuple, Tuple[int, int, bytes, Optional[int]]] = {}
        self._socks: Dict[socket.socket, Tuple[int, int]] = {}   # -> (port, family)
        self._ports: Dict[Tuple[int, int], object] = {}          # (port, family) -> socket
        # Routes are looked up and programs attached in the namespace the tunnel was opened
        # in, by one thread of its own that lives there: prepare() may be called from any
        # thread, and from a running event loop (pyroute2 runs one of its own).
        self._netns = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="pyxlb-tunnel",
                                          initializer=netns.setns, initargs=(self._netns,))

    @classmethod
    def open(cls, pin_dir: Optional[str] = None) -> "Tunnel":
        """Load health.o (nothing is attached until prepare()); the outer source and the
        MTU come from the balancer's config pinned in `pin_dir` when there is one there."""
        cfg = balancer_config(pin_dir) if pin_dir else None
        sources = encap_sources(cfg) if cfg else {}
        obj = _bpf.BpfObject.open(object_path(OBJECT))
        try:
            for name in obj.map_names():
                if name != maps.HC_PATHS:       # maps.h's common maps: unused here
                    obj.set_autocreate(name, False)
            obj.load()
            egress, ingress = obj.program(EGRESS), obj.program(INGRESS)
            paths = obj.map(maps.HC_PATHS)
        finally:
            obj.close()
        return cls(egress, ingress, paths, sources, cfg["mtu"] if cfg else None)

    # -- where checks go ------------------------------------------------------------------

    def prepare(self, vip: IPAddress, backend: IPAddress, mode: str) -> None:
        """Check that `backend` can be checked for `vip` in `mode` ("ipip" or "l2") through
        the tunnel, and attach the programs to the interface the route to `backend` uses
        (once per interface). Asks the kernel's routes again each time: call it after they
        change. Routes and interfaces are those of the network namespace the tunnel was
        opened in, whichever thread calls. Blocks for a netlink round trip or two.
        TunnelError says why a check cannot work."""
        key = (vip, backend, mode)
        try:
            v, b = ipaddress.ip_address(str(vip)), ipaddress.ip_address(str(backend))
        except ValueError as exc:
            raise TunnelError(str(exc)) from None
        if mode not in MODES:
            raise TunnelError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        what = f"a check of VIP {v} through backend {b}"
        if v.version != b.version:
            raise TunnelError(f"{what} cannot go through the tunnel: the VIP and the backend "
                              f"are of different families (the inner packet would change "
                              f"family); check an IPv{v.version} address of the backend")
        if v == b:
            raise TunnelError(f"{what}: the VIP is the backend's own address")
        try:
            route, link_mtu = self._worker.submit(_route_and_mtu, b).result()
        except PyxlbError as exc:
            raise TunnelError(f"{what}: {exc}") from None
        if route.local:
            raise TunnelError(f"{what}: {b} is this node's own address")
        if mode == "l2" and route.gateway is not None:
            raise TunnelError(f"{what} in L2 mode: {b} is reached through router "
                              f"{route.gateway}, and L2 mode needs it on a segment of "
                              f"this node")
        outer, mss = None, None
        if mode == "ipip":
            src = self.sources.get(b.version) or route.source
            if src is None:
                raise TunnelError(f"{what}: no outer source address (no encap source is "
                                  f"configured and the route to {b} has no source)")
            outer = src
            # segments that still fit the link (and the balancer's MTU) once tunnelled: a
            # switch drops a bigger frame without a word
            mtu = min(m for m in (link_mtu, self.mtu) if m)
            mss = mtu - 2 * _IP_HLEN[b.version] - _TCP_HLEN
        family = _FAMILY[b.version]
        value = self.paths.path(v, b, outer, MODES[mode])
        self._worker.submit(self._attach, route.ifindex).result()
        self._ready[key] = (_AF[b.version], family, value, mss)

    def _attach(self, ifindex: int) -> None:
        """In the worker thread (one: attaches never race)."""
        if ifindex in self._links:
            return
        egress = _bpf.TcxLink.attach(ifindex, self.egress, "egress")
        try:
            ingress = _bpf.TcxLink.attach(ifindex, self.ingress, "ingress")
        except BaseException:
            egress.close()
            raise
        self._links[ifindex] = (egress, ingress)

    def interfaces(self) -> List[int]:
        """The interfaces (ifindex) the programs run on."""
        return sorted(self._links)

    def links(self) -> List["_bpf.TcxLink"]:
        return [link for pair in self._links.values() for link in pair]

    # -- sockets --------------------------------------------------------------------------

    def register(self, sock: socket.socket, vip, backend, mode: str) -> None:
        """Send `sock`'s connection through the tunnel: `sock` is bound (its local port is
        registered) and not yet connected; connect it to (backend, check port) next. In
        IPIP mode its MSS is lowered so that its segments fit the link once tunnelled. The
        first registration of a (vip, backend, mode) prepares it (see prepare())."""
        ready = self._ready.get((vip, backend, mode))
        if ready is None:
            self.prepare(vip, backend, mode)
            ready = self._ready[(vip, backend, mode)]
        af, family, value, mss = ready
        name = sock.getsockname()       # (address, port), and two more for IPv6
        if len(name) != (2 if af == socket.AF_INET else 4) or sock.type != socket.SOCK_STREAM:
            raise TunnelError(f"a check of {backend} needs a TCP socket of family "
                              f"{af.name}, not {sock.family.name} {sock.type.name}")
        port = name[1]
        if not port:
            raise TunnelError("bind the socket before registering it (its local port is "
                              "what the tunnel knows it by)")
        try:
            sock.getpeername()
        except OSError:
            pass                # not connected: as it must be
        else:
            raise TunnelError("register the socket before connecting it: its connection "
                              "went out without the tunnel")
        if mss is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        self.paths.put(port, family, value)
        before = self._ports.get((port, family))
        if before is not None and before is not sock:
            # a socket closed without unregistering had this port: it has no say any more
            self._socks.pop(before, None)
        self._socks[sock] = (port, family)
        self._ports[(port, family)] = sock

    def unregister(self, sock_or_port) -> None:
        """Forget a socket (also once closed) or a local port (both families); nothing
        happens for one not registered, nor for a socket whose port another socket has
        registered since."""
        if isinstance(sock_or_port, int):
            keys = [(sock_or_port, f) for f in _FAMILY.values()
                    if (sock_or_port, f) in self._ports]
        else:
            key = self._socks.pop(sock_or_port, None)
            keys = [key] if key is not None and self._ports.get(key) is sock_or_port else []
        for key in keys:
            self._socks.pop(self._ports.pop(key), None)
            try:
                self.paths.delete(*key)
            except KeyError:
                pass

    def registered(self) -> List[Tuple[int, int]]:
        """The (local port, family) pairs registered now, as the map holds them."""
        return self.paths.ports()

    def path_of(self, port: int, family: int) -> dict:
        """The map's entry for a registered port (pyxlb._layouts.unpack_hc_path)."""
        return self.paths.get(port, family)

    # -- the end --------------------------------------------------------------------------

    def close(self) -> None:
        """Detach the programs from every interface and free the map."""
        if self._netns >= 0:
            self._worker.shutdown()
            os.close(self._netns)
            self._netns = -1
        for egress, ingress in self._links.values():
            egress.close()
            ingress.close()
        self._links.clear()
        self._ready.clear()
        self._socks.clear()
        self._ports.clear()
        for handle in (self.egress, self.ingress, self.paths.map):
            handle.close()

    @property
    def closed(self) -> bool:
        return self.egress.closed

    def __enter__(self) -> "Tunnel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
