"""The IP-allocation controller: external IPs for LoadBalancer Services, one allocator at a time.

Every agent runs this controller, but only the holder of a `coordination.k8s.io/v1` Lease
acts; the others stand by and take over when the holder stops renewing. Leadership follows
client-go's rule: a Lease is taken over only when its record has not changed for a whole
lease duration *as observed by the local clock*, so clocks of different nodes never need
to agree.

The allocator's state is never trusted across a handover: a new leader rebuilds it from
the Services' own `status.loadBalancer.ingress` (oldest Service first) before it allocates
anything. Status and finalizer writes carry the resourceVersion they were computed from, so
a write based on a stale view fails with 409 Conflict and is retried from the fresh object:
an IP is never handed out twice, and the
`service.kubernetes.io/load-balancer-cleanup` finalizer keeps a deleted Service around
until its IP is released.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import socket
import threading
import time
import uuid
from typing import Callable, Dict, List, Optional, Set, Tuple

from lightkube.types import PatchType

from . import ipam
from . import translate as tr
from .informer import ALL_NAMESPACES, Backoff, Informer
from .kube import FINALIZER, TRANSIENT, ApiError, Event, IPPool, Lease, Service, key_of

log = logging.getLogger("pyxlb.k8s")

ANN_IPS = "pyxlb.io/load-balancer-ips"
ANN_POOL = "pyxlb.io/ip-pool"
ANN_SHARE = "pyxlb.io/allow-shared-ip"
COMPONENT = "pyxlb-controller"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def default_identity() -> str:
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


# -- leader election -------------------------------------------------------------------------

class LeaseElector:
    """Holds or watches one Lease. `tick()` does one round (acquire, renew or observe) and
    returns whether this process leads now."""

    def __init__(self, client, namespace: str, name: str, identity: str, *,
                 duration: float = 15.0, clock: Callable[[], float] = time.monotonic):
        self.client, self.namespace, self.name = client, namespace, name
        self.identity = identity
        self.duration = float(duration)
        self.clock = clock
        self.leader = False
        self._observed: Optional[Tuple] = None    # (holder, renewTime, rv) last seen
        self._observed_at = 0.0                   # local clock when it last changed
        self._renewed_at = 0.0                    # local clock of our last successful renew

    def _lease_dict(self, transitions: int, acquired: Optional[str]) -> dict:
        now = _now().isoformat().replace("+00:00", "Z")
        return {"metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"holderIdentity": self.identity,
                         "leaseDurationSeconds": max(1, int(round(self.duration))),
                         "acquireTime": acquired or now, "renewTime": now,
                         "leaseTransitions": transitions}}

    def tick(self) -> bool:
        try:
            self.leader = self._tick()
        except ApiError as exc:
            if exc.status.code != 409:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc.status.message)
            self.leader = self._still_valid()
        except TRANSIENT as exc:
            log.warning("lease %s/%s: API unreachable (%s)", self.namespace, self.name, exc)
            self.leader = self._still_valid()
        return self.leader

    def _still_valid(self) -> bool:
        # a leader that cannot renew steps down before anyone else may take over
        return self.leader and self.clock() - self._renewed_at < self.duration * 2 / 3

    def _tick(self) -> bool:
        try:
            lease = self.client.get(Lease, self.name, namespace=self.namespace).to_dict()
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            self.client.create(Lease.from_dict(self._lease_dict(0, None)))
            self._renewed_at = self.clock()
            log.info("lease %s/%s created: leading", self.namespace, self.name)
            return True
        spec = lease.get("spec") or {}
        meta = lease["metadata"]
        holder = spec.get("holderIdentity")
        seen = (holder, spec.get("renewTime"), meta.get("resourceVersion"))
        now = self.clock()
        if seen != self._observed:
            self._observed, self._observed_at = seen, now
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            body = self._lease_dict(transitions, spec.get("acquireTime"))
        else:
            duration = float(spec.get("leaseDurationSeconds") or self.duration)
            if holder and now - self._observed_at < duration:
                if self.leader:
                    log.info("lease %s/%s is held by %s: standing by", self.namespace,
                             self.name, holder)
                return False
            body = self._lease_dict(transitions + 1, None)
        body["metadata"]["resourceVersion"] = meta.get("resourceVersion")
        self.client.replace(Lease.from_dict(body))
        self._renewed_at = self.clock()
        if holder != self.identity:
            log.info("lease %s/%s taken over from %s: leading", self.namespace, self.name,
                     holder or "nobody")
        return True

    def release(self) -> None:
        """Give the Lease up at shutdown so a standby takes over at once."""
        if not self.leader:
            return
        try:
            lease = self.client.get(Lease, self.name, namespace=self.namespace).to_dict()
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                lease["spec"]["renewTime"] = None
                self.client.replace(Lease.from_dict(lease))
        except (ApiError, *TRANSIENT):
            pass
        self.leader = False


# -- reading a Service --------------------------------------------------------------------------

def request_of(svc: dict) -> ipam.Request:
    """What the allocator needs from a Service."""
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    ann = meta.get("annotations") or {}
    fams = tuple({"IPv4": 4, "IPv6": 6}[f] for f in spec.get("ipFamilies") or ("IPv4",)
                 if f in ("IPv4", "IPv6")) or (4,)
    requested: List[str] = []
    if spec.get("loadBalancerIP"):
        requested.append(str(spec["loadBalancerIP"]).strip())
    for w in str(ann.get(ANN_IPS) or "").replace(" ", ",").split(","):
        if w.strip() and w.strip() not in requested:
            requested.append(w.strip())     # checked by the allocator: a bad one is an Event
    ports = frozenset((str(p.get("protocol") or "TCP").lower(), int(p.get("port", 0)))
                      for p in spec.get("ports") or ())
    return ipam.Request(service=key_of(svc), families=fams, ports=ports,
                        requested=tuple(requested), pool=ann.get(ANN_POOL) or None,
                        share_key=ann.get(ANN_SHARE) or None,
                        labels=dict(meta.get("labels") or {}))


def ingress_ips(svc: dict) -> Tuple:
    out = []
    for ing in ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ():
        try:
            out.append(ipaddress.ip_address(ing.get("ip")))
        except (ValueError, TypeError):
            pass
    return tuple(out)


def _created(svc: dict):
    meta = svc.get("metadata") or {}
    return (meta.get("creationTimestamp") or "", key_of(svc))


# -- the controller ---------------------------------------------------------------------------

class Controller:
    """Allocates and releases IPs for the Services in `services()` (the agent's cache) while
    this process holds the Lease."""

    def __init__(self, connect: Callable[[], object], services: Callable[[], Dict[str, dict]],
                 settings: "tr.Settings", *, namespace: str = "pyxlb-system",
                 lease_name: str = "pyxlb-controller", lease_duration: float = 15.0,
                 identity: Optional[str] = None, metrics=None, watch_timeout: int = 60,
                 namespaces: Tuple[str, ...] = ()):
        self._connect = connect
        self._services = services
        self.namespaces = tuple(namespaces)     # the agent's: () every namespace
        self.settings = settings
        self.metrics = metrics
        self.client = connect()
        self.identity = identity or default_identity()
        self.elector = LeaseElector(self.client, namespace, lease_name, self.identity,
                                    duration=lease_duration)
        self.allocator = ipam.Allocator()
        self.pools = Informer(connect, IPPool, self._on_pool_change, kind="IPPool",
                              watch_timeout=watch_timeout, metrics=metrics)
        self._cond = threading.Condition()
        self._queue: Set[str] = set()
        self._retry: Dict[str, float] = {}        # key -> monotonic time to retry at
        self._pools_dirty = True
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._posted: Dict[Tuple[str, str, str], float] = {}
        self._backoff: Dict[str, Backoff] = {}
        self.leading = False
        self._took_over = False           # the allocator was rebuilt for this leadership
        self._problems: Tuple = ()
        self._problems_new = False
        self.pool_problems: Tuple[str, ...] = ()

    # the agent calls this for every Service change it sees
    def service_changed(self, key: str, old: Optional[dict], new: Optional[dict]) -> None:
        with self._cond:
            self._queue.add(key)
            self._cond.notify()

    def post_problems(self, problems) -> None:
        """Translation problems (SCTP ports, bad source ranges, ...) to post as Events on
        their Services. Called from the agent's reconcile loop, so it only hands them over:
        the controller's thread posts them, and only while leading (a cluster posts each
        once, and a slow API server never holds up the datapath)."""
        with self._cond:
            if tuple(problems) != self._problems:
                self._problems = tuple(problems)
                self._problems_new = True
                self._cond.notify()

    def _post_problems(self) -> None:
        with self._cond:
            if not self._problems_new:
                return
            self._problems_new = False
            problems = self._problems
        services = self._services()
        for p in problems:
            svc = services.get(p.service)
            if svc is not None:
                self._event(svc, p.type, p.reason, p.message)

    def _on_pool_change(self, kind, key, old, new) -> None:
        with self._cond:
            self._pools_dirty = True
            self._cond.notify()

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The controller loop's thread (None before start)."""
        return self._thread

    def start(self) -> "Controller":
        self.pools.start()
        self._thread = threading.Thread(target=self._run, name="ipam-controller", daemon=True)
        self._thread.start()
        return self

    def stop(self, release: bool = True) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(10)
        self.pools.stop()
        if release:
            self.elector.release()
        try:
            self.client.close()
        except Exception:
            pass

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        period = max(0.1, self.elector.duration / 5)
        next_tick = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_tick:
                self.leading = self.elector.tick()
                next_tick = now + period
                if self.metrics is not None:
                    self.metrics.leader.set(1 if self.leading else 0)
                if not self.leading:
                    self._took_over = False
                elif not self._took_over and self.pools.synced.is_set():
                    # (the pools must be known first: restoring against no pools would
                    # hand every Service a new address once they arrive)
                    try:
                        self._take_over()
                        self._took_over = True
                    except Exception:
                        log.exception("IP allocation: rebuilding from Service statuses "
                                      "failed; trying again")
            if self.leading and self._took_over:
                try:
                    self._work()
                    self._post_problems()
                except TRANSIENT as exc:
                    log.warning("IP allocation paused: API unreachable (%s)", exc)
                    self._stop.wait(1.0)
                except Exception:
                    log.exception("IP allocation")
                    self._stop.wait(1.0)
            with self._cond:
                busy = self.leading and self._took_over and (
                    self._queue or self._pools_dirty or self._problems_new)
                if not busy:
                    timeout = max(0.0, next_tick - time.monotonic())
                    due = [t for t in self._retry.values()]
                    if due:
                        timeout = min(timeout, max(0.0, min(due) - time.monotonic()))
                    self._cond.wait(timeout)

    def _take_over(self) -> None:
        """Rebuild the allocator from the Services' statuses, oldest Service first.

        The statuses come from a fresh list, not from the agent's cache: a watch may lag
        (and with --namespaces each namespace has its own), so the cache may not show an
        address the previous leader wrote just before it died, and handing that address
        out again would put two Services on one VIP. The cache still drives the work: a
        Service the cache does not know yet is queued when its watch delivers it."""
        self._load_pools()
        fresh = ipam.Allocator(self.allocator_pools)
        listed = self._list_services()
        for svc in sorted(listed, key=_created):
            ips = ingress_ips(svc)
            if not ips or not self._managed(svc):
                continue
            try:
                fresh.restore(request_of(svc), ips)
            except ipam.AllocationError as exc:
                # the younger of two Services claiming one IP loses it; reconcile moves it
                self._event(svc, "Warning", exc.reason,
                            f"status IPs {', '.join(map(str, ips))} conflict: {exc}")
        self.allocator = fresh
        services = self._services()
        with self._cond:
            self._queue.update(services)
        log.info("IP allocation: leading, %d Services hold addresses",
                 len(fresh.services()))

    def _list_services(self) -> List[dict]:
        out: List[dict] = []
        for ns in self.namespaces or (ALL_NAMESPACES,):
            out.extend(svc.to_dict() for svc in self.client.list(Service, namespace=ns))
        return out

    def _managed(self, svc: dict) -> bool:
        fins = (svc.get("metadata") or {}).get("finalizers") or ()
        return tr.is_ours(svc, self.settings) or FINALIZER in fins

    def _load_pools(self) -> None:
        pools, problems = [], []
        for key, obj in sorted(self.pools.snapshot().items()):
            try:
                pools.append(ipam.Pool.from_object(obj))
            except ipam.PoolError as exc:
                problems.append(str(exc))
        problems.extend(ipam.check_pools(pools))
        for p in problems:
            if p not in self.pool_problems:
                log.warning("IP pools: %s", p)
        self.pool_problems = tuple(problems)
        self.allocator_pools = pools

    def _work(self) -> None:
        with self._cond:
            if self._pools_dirty:
                self._pools_dirty = False
                self._load_pools()
                self.allocator.set_pools(self.allocator_pools)
                self._queue.update(self._services())
            now = time.monotonic()
            for key, at in list(self._retry.items()):
                if at <= now:
                    self._queue.add(key)
                    del self._retry[key]
            queue, self._queue = sorted(self._queue), set()
        services = self._services()
        # oldest first: the older Service wins a contested address
        for key in sorted(queue, key=lambda k: _created(services[k]) if k in services else ("", k)):
            if self._stop.is_set() or not self.leading:
                return
            try:
                self.reconcile(key, services.get(key))
                self._backoff.pop(key, None)
            except ApiError as exc:
                if exc.status.code == 404:
                    continue          # deleted meanwhile: its DELETED event comes next
                b = self._backoff.setdefault(key, Backoff(0.05, 5.0))
                with self._cond:
                    self._retry[key] = time.monotonic() + b.next()
                if exc.status.code != 409:
                    log.warning("Service %s: %s", key, exc.status.message)
            except TRANSIENT:
                with self._cond:           # the API went away: this one and the rest later
                    self._queue.update(k for k in queue if k not in self._retry)
                raise
            except Exception:              # a bug or an unreadable object: the others go on
                log.exception("Service %s: allocation failed", key)
                b = self._backoff.setdefault(key, Backoff(0.05, 5.0))
                with self._cond:
                    self._retry[key] = time.monotonic() + b.next()
        if self.metrics is not None:
            for pool, (used, _size) in self.allocator.usage().items():
                self.metrics.ipam_in_use.labels(pool).set(used)

    # -- one Service ----------------------------------------------------------------------

    def reconcile(self, key: str, svc: Optional[dict]) -> None:
        """Make one Service's IPs, status and finalizer right (leader only)."""
        if svc is None:
            if self.allocator.release(key):
                log.info("Service %s is gone: its addresses are free", key)
            return
        meta = svc.get("metadata") or {}
        fins = list(meta.get("finalizers") or ())
        ours = tr.is_ours(svc, self.settings)
        if meta.get("deletionTimestamp") or not ours:
            released = self.allocator.release(key)
            if not meta.get("deletionTimestamp") and FINALIZER in fins and ingress_ips(svc):
                # stopped being ours (type or class changed): take our status back
                self._patch_status(svc, [])
            if FINALIZER in fins:
                self._patch_finalizers(svc, [f for f in fins if f != FINALIZER])
            if released:
                self._event(svc, "Normal", "IPReleased",
                            f"released {', '.join(map(str, released))}")
            return
        if FINALIZER not in fins:
            svc = self._patch_finalizers(svc, fins + [FINALIZER])
        try:
            ips = self.allocator.assign(request_of(svc))
        except ipam.AllocationError as exc:
            self._event(svc, "Warning", exc.reason, str(exc))
            ips = self.allocator.assigned(key)
        want = [{"ip": str(a), "ipMode": "VIP"} for a in ips]
        have = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if [(i.get("ip"), i.get("ipMode")) for i in have] != [(w["ip"], w["ipMode"]) for w in want]:
            self._patch_status(svc, want)
            if want:
                self._event(svc, "Normal", "IPAllocated",
                            f"assigned {', '.join(w['ip'] for w in want)}")

    def _patch_status(self, svc: dict, ingress: List[dict]) -> dict:
        meta = svc["metadata"]
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")},
                 "status": {"loadBalancer": {"ingress": ingress or None}}}
        out = self.client.patch(Service.Status, meta["name"], patch,
                                namespace=meta.get("namespace"), patch_type=PatchType.MERGE)
        return out.to_dict()

    def _patch_finalizers(self, svc: dict, finalizers: List[str]) -> dict:
        meta = svc["metadata"]
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion"),
                              "finalizers": finalizers or None}}
        out = self.client.patch(Service, meta["name"], patch, namespace=meta.get("namespace"),
                                patch_type=PatchType.MERGE)
        return out.to_dict()

    def _event(self, svc: dict, etype: str, reason: str, message: str) -> None:
        """An Event on the Service (each distinct one at most every 10 minutes)."""
        meta = svc.get("metadata") or {}
        dedup = (key_of(svc), reason, message)
        now = time.monotonic()
        if now - self._posted.get(dedup, -1e9) < 600:
            return
        self._posted[dedup] = now
        log.info("Service %s: %s: %s", key_of(svc), reason, message)
        stamp = _now().isoformat().replace("+00:00", "Z")
        body = {"metadata": {"name": f"{meta.get('name')}.{uuid.uuid4().hex[:16]}",
                             "namespace": meta.get("namespace") or "default"},
                "involvedObject": {"apiVersion": "v1", "kind": "Service",
                                   "name": meta.get("name"), "namespace": meta.get("namespace"),
                                   "uid": meta.get("uid"),
                                   "resourceVersion": meta.get("resourceVersion")},
                "reason": reason, "message": message, "type": etype, "count": 1,
                "firstTimestamp": stamp, "lastTimestamp": stamp,
                "source": {"component": COMPONENT},
                "reportingComponent": "pyxlb.io/controller",
                "reportingInstance": self.identity}
        try:
            self.client.create(Event.from_dict(body))
        except (ApiError, *TRANSIENT) as exc:
            log.debug("event not posted: %s", exc)
