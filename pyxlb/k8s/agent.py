"""The node agent: Kubernetes objects in, this node's datapath out.

Every node runs one. It keeps informers on Services, EndpointSlices and Nodes; each change
marks the Services it touches dirty; a reconcile loop, debounced so a burst of changes
costs one apply, recomputes the VIPs of the dirty Services (translation is a pure function,
cached per Service), combines them into one `DesiredState` and hands it to
`Datapath.apply`, which writes only the difference.

Fail static: until every informer has listed once, nothing is applied (a restarted agent
with the API down keeps forwarding from the pinned maps); when the API goes away later, the
informers keep their caches and retry, and the datapath stays as it was.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

from ..datapath import Datapath
from . import translate as tr
from .health import Prober
from .informer import ALL_NAMESPACES, Informer, InformerGroup
from .kube import BGPPeer, EndpointSlice, IPPool, Node, Service

log = logging.getLogger("pyxlb.k8s")


@dataclass
class AgentSettings:
    """Everything `pyxlb agent` can be told (see its --help for each)."""

    node_name: str
    lb_class: str = "pyxlb.io/lb"
    default_class: bool = True
    namespaces: Tuple[str, ...] = ()   # where Services and EndpointSlices are watched;
                                       # empty: every namespace
    ring_size: int = 65537
    debounce: float = 0.02           # a burst within this many seconds of a reconcile waits
                                     # for it, to be applied as one
    health_interval: float = 2.0
    health_timeout: float = 1.0
    health_rise: int = 2
    health_fall: int = 3
    watch_timeout: int = 60

    def translate_settings(self) -> "tr.Settings":
        return tr.Settings(node_name=self.node_name, lb_class=self.lb_class,
                           default_class=self.default_class, ring_size=self.ring_size)


def _node_view(node: Optional[dict]):
    """The part of a Node that translation reads: heartbeats change the object every few
    seconds, and must not cost a recomputation of every Service."""
    if node is None:
        return None
    meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
    ready = next((c.get("status") for c in status.get("conditions") or ()
                  if c.get("type") == "Ready"), None)
    addrs = tuple(sorted((a.get("type"), a.get("address")) for a in status.get("addresses") or ()))
    labels = tuple(sorted((meta.get("labels") or {}).items()))
    return (ready, bool(spec.get("unschedulable")), addrs, labels,
            bool(meta.get("deletionTimestamp")))


@dataclass
class AgentStatus:
    synced: bool = False              # every informer listed once
    applied: int = 0                  # applies that wrote something
    reconciles: int = 0
    last_error: Optional[str] = None
    last_reconcile: float = 0.0       # time.monotonic() of the last completed reconcile
    problems: Tuple = ()


class Agent:
    """Informers + debounced reconcile into one Datapath. `connect()` returns a new
    lightkube Client (each informer gets its own: a watch holds its connection)."""

    def __init__(self, settings: AgentSettings, datapath: Datapath,
                 connect: Callable[[], object], *, metrics=None,
                 on_service_change: Optional[Callable[[str, Optional[dict], Optional[dict]], None]] = None,
                 prober: Optional[Prober] = None, announcer=None):
        self.settings = settings
        self.tsettings = settings.translate_settings()
        self.dp = datapath
        self.metrics = metrics
        self.status = AgentStatus()
        self.on_service_change = on_service_change
        self.on_problems: Optional[Callable[[Tuple], None]] = None   # the leader posts Events
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._dirty: Set[str] = set()
        self._all_dirty = True
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._last_end = 0.0
        self._results: Dict[str, tr.ServiceResult] = {}
        self._slices: Dict[str, Dict[str, dict]] = {}      # service -> {slice key: slice}
        self._nodes_changed = True
        self._node_index: Optional[tr.NodeIndex] = None
        self._health_targets: Dict[str, Dict[str, Tuple[str, int]]] = {}
        self._local_addrs: Set[str] = set()
        self.prober = prober if prober is not None else Prober(
            self._on_health_flip, interval=settings.health_interval,
            timeout=settings.health_timeout, rise=settings.health_rise,
            fall=settings.health_fall)
        if prober is not None:
            prober.on_flip = self._on_health_flip
        kw = dict(watch_timeout=settings.watch_timeout, metrics=metrics)
        # one list+watch of each kind across all namespaces, or one per namespace served
        # (an operator may grant the agent Roles in those namespaces only)
        where = settings.namespaces or (ALL_NAMESPACES,)
        self.services = InformerGroup([Informer(connect, Service, self._on_change,
                                                namespace=ns, **kw) for ns in where])
        self.slices = InformerGroup([Informer(connect, EndpointSlice, self._on_change,
                                              namespace=ns, **kw) for ns in where])
        self.nodes = Informer(connect, Node, self._on_change, **kw)
        self.informers: List[Informer] = [*self.services.informers, *self.slices.informers,
                                          self.nodes]
        self._ignored_class: Set[str] = set()    # Services left to another implementation
        # announcement (pyxlb.k8s.announcing.ClusterAnnouncer): IPPools say each address's
        # mode, BGPPeers where BGP goes; heartbeats of the L2 peers wake the loop
        self.announcer = announcer
        self._announce_config = True
        self._announce_dirty = False
        if announcer is not None:
            announcer.on_change = self.poke_announce
            self.pools = Informer(connect, IPPool, self._on_change, kind="IPPool", **kw)
            self.bgp_peers = Informer(connect, BGPPeer, self._on_change, kind="BGPPeer", **kw)
            self.informers += [self.pools, self.bgp_peers]

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> "Agent":
        for inf in self.informers:
            inf.start()
        self.prober.start()
        self._thread = threading.Thread(target=self._run, name="agent-reconcile", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for inf in self.informers:
            inf.stop()
        self.prober.stop()
        if self._thread is not None:
            self._thread.join(10)
        if self.announcer is not None:
            try:
                self.announcer.close(withdraw=True)
            except Exception:
                log.exception("withdrawing announcements")

    @property
    def ready(self) -> bool:
        """Listed everything once and applied the result: the readiness probe."""
        return self.status.synced and self.status.reconciles > 0

    @property
    def api_up(self) -> bool:
        return all(inf.connected for inf in self.informers)

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The reconcile loop's thread (None before start)."""
        return self._thread

    def health_targets(self) -> Dict[str, Tuple[str, int]]:
        """{node: (address, port)} of every node probed for a Service's health check."""
        out: Dict[str, Tuple[str, int]] = {}
        for nodes in list(self._health_targets.values()):   # (the loop replaces entries)
            out.update(nodes)
        return out

    # -- change intake (informer threads) -----------------------------------------------------

    def _on_change(self, kind: str, key: str, old: Optional[dict], new: Optional[dict]) -> None:
        with self._cond:
            if kind == "Service":
                self._dirty.add(key)
            elif kind == "EndpointSlice":
                for obj in (old, new):
                    if obj is None:
                        continue
                    svc = tr.slice_service(obj)
                    if svc is None:
                        continue
                    self._dirty.add(svc)
                    group = self._slices.setdefault(svc, {})
                    if obj is new:
                        group[key] = new
                    elif new is None or tr.slice_service(new) != svc:
                        group.pop(key, None)
                        if not group:
                            del self._slices[svc]
            elif kind == "Node":
                if _node_view(old) == _node_view(new):
                    return
                self._nodes_changed = True
                self._all_dirty = True
                self._announce_config = True
            elif kind in ("IPPool", "BGPPeer"):
                self._announce_config = True
                self._announce_dirty = True
            self._cond.notify()
        if kind == "Service" and self.on_service_change is not None:
            self.on_service_change(key, old, new)

    def _on_health_flip(self, target, healthy: bool) -> None:
        with self._cond:
            # (a copy: the reconcile thread replaces entries while probes report)
            for svc, nodes in list(self._health_targets.items()):
                if target in nodes.values():
                    self._dirty.add(svc)
            self._cond.notify()

    def poke_announce(self) -> None:
        """The set of live L2 peers changed: recompute who announces what."""
        with self._cond:
            self._announce_dirty = True
            self._cond.notify()

    def poke(self) -> None:
        """Reconcile everything soon (e.g. after a restart of the datapath)."""
        with self._cond:
            self._all_dirty = True
            self._cond.notify()

    # -- the reconcile loop -----------------------------------------------------------------

    def _run(self) -> None:
        # fail static: nothing is applied before every informer has a complete list
        while not self._stop.is_set():
            if all(inf.synced.wait(0.1) for inf in self.informers):
                break
        self.status.synced = True
        log.info("listed Services, EndpointSlices and Nodes: reconciling")
        while not self._stop.is_set():
            with self._cond:
                while not (self._dirty or self._all_dirty or self._announce_dirty) \
                        and not self._stop.is_set():
                    if not self._cond.wait(1.0) and self.announcer is not None:
                        # a quiet second: look again at what to announce (the interface,
                        # the speaker, L2 peers that settled without a change to report)
                        self._announce_dirty = True
            if self._stop.is_set():
                break
            # debounce on the trailing edge only: a change after a quiet spell is applied
            # at once; changes arriving within `debounce` of the last reconcile (a burst)
            # wait for it and go together
            quiet = time.monotonic() - self._last_end
            if quiet < self.settings.debounce:
                self._stop.wait(self.settings.debounce - quiet)
            try:
                self.reconcile()
                self._last_end = time.monotonic()
            except Exception as exc:  # keep the loop alive; the next change retries
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("reconcile failed (the datapath keeps its previous state)")
                if self.metrics is not None:
                    self.metrics.reconciles.labels("error").inc()
                with self._cond:
                    self._all_dirty = True
                self._stop.wait(1.0)

    def reconcile(self) -> None:
        """Recompute the dirty Services and apply the node's state."""
        started = time.perf_counter()
        with self._cond:
            dirty, self._dirty = self._dirty, set()
            all_dirty, self._all_dirty = self._all_dirty, False
            nodes_changed, self._nodes_changed = self._nodes_changed, False
            announce_config, self._announce_config = self._announce_config, False
            self._announce_dirty = False
        services = self.services.snapshot()
        if nodes_changed or self._node_index is None:
            self._node_index = tr.NodeIndex.build(self.nodes.snapshot().values())
            self._sync_local_addrs()
        if all_dirty:
            dirty = set(services) | set(self._results)
        health = self._health()
        for key in dirty:
            svc = services.get(key)
            if svc is None or not tr.is_ours(svc, self.tsettings):
                self._results.pop(key, None)
                self._health_targets.pop(key, None)
                self._note_not_ours(key, svc)
                continue
            with self._lock:
                slices = list(self._slices.get(key, {}).values())
            self._results[key] = tr.service_vips(svc, slices, self._node_index,
                                                 self.tsettings, health)
            targets = tr.health_targets(svc, slices, self._node_index)
            if targets:
                self._health_targets[key] = {n: (str(a), p) for n, (a, p) in targets.items()}
            else:
                self._health_targets.pop(key, None)
        self.prober.set_targets({t for nodes in self._health_targets.values()
                                 for t in nodes.values()})
        state, problems = tr.combine(self._results, services)
        state = tr.with_chain_peers(state, self._node_index)
        for p in problems:
            if p not in self.status.problems:
                log.log(logging.WARNING if p.type == "Warning" else logging.INFO,
                        "%s: %s: %s", p.service, p.reason, p.message)
        if self.on_problems is not None:
            self.on_problems(problems)
        wanted = None
        if self.announcer is not None:
            if announce_config:
                self.announcer.configure(self.pools.snapshot().values(),
                                         self.bgp_peers.snapshot().values(),
                                         self.nodes.snapshot().values())
            state, l2, bgp = self.announcer.desired(state, attached=bool(self.dp.interfaces()))
            wanted = (l2, bgp)
        # every Node is a chain peer: this apply sets them (others keep what it set)
        plan = self.dp.apply(state, peers="set").plan
        if wanted is not None:
            # after apply: the XDP responder answers before a gratuitous ARP draws traffic
            self.announcer.sync(*wanted)
        if not plan.empty:
            self.status.applied += 1
        self.status.problems = tuple(problems)
        self.status.reconciles += 1
        self.status.last_error = None
        self.status.last_reconcile = time.monotonic()
        if self.metrics is not None:
            self.metrics.reconciles.labels("ok").inc()
            self.metrics.reconcile_seconds.observe(time.perf_counter() - started)
            self.metrics.services.set(len(self._results))

    def _note_not_ours(self, key: str, svc: Optional[dict]) -> None:
        """Say once, at debug level, that a LoadBalancer Service is left alone because of
        its class: it belongs to another implementation, so no Event (that one may post
        its own), and no repeat on every reconcile."""
        cls = tr.foreign_class(svc, self.tsettings) if svc is not None else None
        if cls is None:
            self._ignored_class.discard(key)
        elif key not in self._ignored_class:
            self._ignored_class.add(key)
            log.debug("Service %s: left alone, its loadBalancerClass is %s (pyxlb serves %s%s)",
                      key, cls, self.tsettings.lb_class,
                      " and Services without a class" if self.tsettings.default_class else "")

    def _health(self) -> Dict[Tuple[str, str], bool]:
        down = self.prober.unhealthy()
        if not down:
            return {}
        return {(svc, node): False for svc, nodes in self._health_targets.items()
                for node, target in nodes.items() if target in down}

    def _sync_local_addrs(self) -> None:
        """This node's InternalIPs are where tunnelled VIP packets for it arrive: the
        balancer decapsulates those itself (`xlb_local_addrs`)."""
        want = set()
        for fam in (4, 6):
            a = self._node_index.address(self.settings.node_name, fam)
            if a is not None:
                want.add(str(a))
        for a in want - self._local_addrs:
            self.dp.add_local_addr(ipaddress.ip_address(a))
        for a in self._local_addrs - want:
            try:
                self.dp.del_local_addr(ipaddress.ip_address(a))
            except KeyError:
                pass
        self._local_addrs = want

