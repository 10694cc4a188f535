"""Announcement in the cluster: each IPPool's mode, the agents' L2 membership, BGPPeers.

The agent hands this the IPPools, BGPPeers and Nodes it watches, and, on every reconcile,
the node's DesiredState. Which nodes may announce an address is read from that state
(`pyxlb.announce.eligible_nodes`: the active backends of its VIPs), so announcement and
datapath never disagree: with `externalTrafficPolicy: Local` a node without ready (and
healthy) local endpoints is no backend, hence never announces.

- `l2` pools: every agent heartbeats every other node (UDP, `--l2-port`); each address is
  owned by the rendezvous winner among its eligible live nodes, which sets `announce` on
  the address's VIPs (the XDP responder answers ARP/NDP) and sends gratuitous ARP / NA.
- `bgp` pools: this node's BIRD announces each address it is eligible for to the BGPPeers
  that select this node.
- `none`: nothing (the operator routes the addresses).

Nothing is announced while the balancer is attached to no interface.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Set, Tuple

from ..announce import IPAddress, Result, eligible_nodes
from ..state import DesiredState
from . import ipam

log = logging.getLogger("pyxlb.k8s")


@dataclass(frozen=True)
class AnnounceSettings:
    interface: str
    l2_port: int = 9744
    l2_interval: float = 0.2
    l2_dead_after: float = 1.0
    l2_key: Optional[str] = None
    bird_dir: str = "/run/pyxlb/bird"


def node_addresses(node: dict) -> List[IPAddress]:
    out = []
    for a in ((node.get("status") or {}).get("addresses") or ()):
        if a.get("type") == "InternalIP":
            try:
                out.append(ipaddress.ip_address(a.get("address")))
            except ValueError:
                pass
    return out


def _selects(selector: Optional[dict], labels: Mapping[str, str]) -> bool:
    if not selector:
        return True
    return ipam.Selector.from_object(selector, "BGPPeer nodeSelector").matches(labels)


class ClusterAnnouncer:
    """The announcement side of one node's agent."""

    def __init__(self, node: str, settings: AnnounceSettings,
                 on_change: Callable[[], None] = lambda: None):
        self.node = node
        self.settings = settings
        self.on_change = on_change
        self.allocator = ipam.Allocator()       # only for pool_of(address)
        self.modes: Dict[str, str] = {}
        self.node_of: Dict[IPAddress, str] = {}
        self.membership = None
        self._peers: Dict[str, str] = {}
        self.l2 = None
        self.bgp = None
        self._bgp_settings = None
        self.problems: Tuple[str, ...] = ()

    # -- inputs ---------------------------------------------------------------------------

    def configure(self, pools: Iterable[dict], peers: Iterable[dict], nodes: Iterable[dict]) -> None:
        """Take the current IPPools, BGPPeers and Nodes."""
        problems: List[str] = []
        parsed, modes = [], {}
        for obj in pools:
            try:
                pool = ipam.Pool.from_object(obj)
            except ipam.PoolError as exc:
                problems.append(str(exc))
                continue
            mode = ((obj.get("spec") or {}).get("announce") or "l2")
            if mode not in ("none", "l2", "bgp"):
                problems.append(f"IPPool {pool.name!r}: spec.announce must be none, l2 or "
                                f"bgp, not {mode!r}")
                mode = "none"
            parsed.append(pool)
            modes[pool.name] = mode
        self.allocator.set_pools(parsed)
        self.modes = modes
        nodes = list(nodes)
        me = next((n for n in nodes if (n.get("metadata") or {}).get("name") == self.node), None)
        self.node_of = {a: (n.get("metadata") or {}).get("name") for n in nodes
                        for a in node_addresses(n)}
        if "l2" in modes.values():
            self._configure_l2(nodes)
        if "bgp" in modes.values():
            problems.extend(self._configure_bgp(list(peers), me))
        for p in problems:
            if p not in self.problems:
                log.warning("announcement: %s", p)
        self.problems = tuple(problems)

    def _configure_l2(self, nodes: List[dict]) -> None:
        from ..announce.l2 import L2Announcer, Membership

        want = {}
        for n in nodes:
            name = (n.get("metadata") or {}).get("name")
            addrs = node_addresses(n)
            if name and name != self.node and addrs:
                v4 = [a for a in addrs if a.version == 4]
                want[name] = str((v4 or addrs)[0])
        if self.l2 is None:
            self.l2 = L2Announcer(self.settings.interface)
        if want == self._peers and self.membership is not None:
            return
        self._peers = want
        if self.membership is not None:
            self.membership.set_peers(want)     # nodes came or went: nothing restarts
            return
        s = self.settings
        self.membership = Membership(self.node, want, port=s.l2_port, interval=s.l2_interval,
                                     dead_after=s.l2_dead_after, key=s.l2_key,
                                     on_change=lambda _alive: self.on_change(),
                                     on_seen_by=lambda _peer: self.l2.refresh())
        self.membership.start(wait=False)

    def _configure_bgp(self, peers: List[dict], me: Optional[dict]) -> List[str]:
        from ..announce.bgp import BgpAnnouncer, BgpError, BgpSettings

        labels = ((me or {}).get("metadata") or {}).get("labels") or {}
        specs = []
        for obj in sorted(peers, key=lambda o: (o.get("metadata") or {}).get("name") or ""):
            spec = obj.get("spec") or {}
            try:
                if _selects(spec.get("nodeSelector"), labels):
                    specs.append(spec)
            except ipam.PoolError as exc:
                return [str(exc)]
        if not specs:
            return ["bgp pools exist, but no BGPPeer selects this node"]
        try:
            settings = BgpSettings.from_crd(specs, node=self.node,
                                            interface=self.settings.interface,
                                            state_dir=self.settings.bird_dir,
                                            local_addresses=node_addresses(me or {}))
        except BgpError as exc:
            return [str(exc)]
        if settings != self._bgp_settings:
            announced = self.bgp.announced() if self.bgp is not None else frozenset()
            self.bgp = BgpAnnouncer(settings)
            self._bgp_settings = settings
            if announced:
                self.bgp.sync(announced)
        return []

    # -- each reconcile -------------------------------------------------------------------

    def mode_of(self, address: IPAddress) -> str:
        pool = self.allocator.pool_of(address)
        return self.modes.get(pool, "none") if pool else "none"

    def desired(self, state: DesiredState, attached: bool
                ) -> Tuple[DesiredState, Set[IPAddress], Set[IPAddress]]:
        """(state with the L2 owners' announce flags, L2 addresses to announce, BGP ones)."""
        from ..announce.l2 import owned, with_announce_on

        eligible = eligible_nodes(state, self.node_of)
        l2 = {a: n for a, n in eligible.items() if self.mode_of(a) == "l2"}
        bgp = {a for a, n in eligible.items() if self.mode_of(a) == "bgp" and self.node in n}
        if not attached:
            return with_announce_on(state, (), l2), set(), set()
        if self.membership is not None and not self.membership.settled:
            # until every peer was heard or dead_after passed, alive() lacks peers that
            # are alive: claiming now could take their addresses for a moment
            mine = set(self.l2.announced()) & set(l2) if self.l2 is not None else set()
        else:
            alive = self.membership.alive() if self.membership is not None else {self.node}
            mine = owned(l2, alive, self.node) if l2 else set()
        return with_announce_on(state, mine, l2), set(mine), bgp

    def sync(self, l2: Set[IPAddress], bgp: Set[IPAddress]) -> Dict[IPAddress, Result]:
        out: Dict[IPAddress, Result] = {}
        if self.l2 is not None:
            out.update(self.l2.sync(l2))
        if self.bgp is not None:
            out.update(self.bgp.sync(bgp))
        for addr, res in out.items():
            if res is not Result.OK:
                log.warning("announcing %s: %s", addr, res.value)
        return out

    def announced(self) -> FrozenSet[IPAddress]:
        out = set()
        for a in (self.l2, self.bgp):
            if a is not None:
                out |= a.announced()
        return frozenset(out)

    def close(self, withdraw: bool = True) -> None:
        """Stop announcing (with `withdraw`: take everything back; without, a BGP speaker
        keeps its routes for the next agent)."""
        if self.membership is not None:
            self.membership.stop(leave=withdraw)
        if self.l2 is not None:
            self.l2.close(withdraw=True)
        if self.bgp is not None:
            self.bgp.close(withdraw=withdraw)
