"""Informers: a local cache of one kind of object, kept current by list + watch.

The protocol, as Kubernetes' own informers follow it:

1. **list** every object; the list's resourceVersion says which moment the cache shows;
2. **watch** from that resourceVersion with bookmarks on, so a quiet stream still moves the
   resourceVersion forward (a resumed watch then starts close to now, not from history the
   server may have compacted);
3. a dropped connection or a server-side timeout resumes the watch from the last
   resourceVersion seen: no change is missed and none is delivered twice;
4. **410 Gone** (the server no longer has history that old) → list again. The fresh list
   is compared with the cache, so an object deleted while we were away is reported
   deleted, and one that changed is reported changed;
5. errors (API server down, 5xx) → retry with capped exponential backoff and jitter. The
   cache stays as it was meanwhile: the agent keeps the datapath in its last state.

Each informer runs in its own thread and calls `on_change(kind, key, old, new)` (old or
new None for add / delete) from that thread; consumers hand the work to their own loop.
"""

from __future__ import annotations

import logging
import random
import threading
from typing import Callable, Dict, List, Optional

from . import lightkube_adapter
from .kube import TRANSIENT, ApiError, key_of, to_dict

log = logging.getLogger("pyxlb.k8s")

OnChange = Callable[[str, str, Optional[dict], Optional[dict]], None]


class Backoff:
    """Capped exponential backoff with full jitter: the n-th retry waits a random time in
    [base·2^n / 2, base·2^n], capped, so many agents that lost the API together do not
    return together."""

    def __init__(self, base: float = 0.2, cap: float = 10.0, rng: Optional[random.Random] = None):
        self.base, self.cap, self.failures = base, cap, 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self.failures))
        self.failures += 1
        return self._rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


ALL_NAMESPACES = "*"


class Informer:
    """List + watch one resource kind into `cache` ({key: object dict}).

    `namespace` says where, for a namespaced kind: "*" (the default) is every namespace,
    a name is that namespace alone. It must be given: left to the client, lightkube would
    use the client's own namespace (the agent's pod's), and the agent would serve no one
    else's Services. Cluster-scoped kinds ignore it."""

    def __init__(self, connect: Callable[[], "object"], resource, on_change: OnChange, *,
                 kind: Optional[str] = None, namespace: str = ALL_NAMESPACES,
                 watch_timeout: int = 60, backoff: Optional[Backoff] = None, metrics=None):
        if not namespace:
            raise ValueError("an informer needs a namespace, or '*' for all of them")
        self._connect = connect
        self.resource = resource
        self.kind = kind or resource.__name__
        # a namespaced kind is listed in `namespace`; None for a cluster-scoped one
        self.namespace: Optional[str] = (namespace if lightkube_adapter.is_namespaced(resource)
                                         else None)
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.backoff = backoff or Backoff()
        self.metrics = metrics
        self.cache: Dict[str, dict] = {}
        self.resource_version: Optional[str] = None
        self.synced = threading.Event()        # set after the first complete list
        self.connected = False                 # the last request to the API succeeded
        self.lists = 0                         # how many complete lists (1 + relists)
        self._stop = threading.Event()
        self._client = None
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> "Informer":
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._close_client()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def thread(self) -> Optional[threading.Thread]:
        """The list + watch loop's thread (None before start)."""
        return self._thread

    def snapshot(self) -> Dict[str, dict]:
        with self._lock:
            return dict(self.cache)

    # -- the loop -------------------------------------------------------------------------

    def _run(self) -> None:
        need_list = True
        while not self._stop.is_set():
            try:
                if self._client is None:
                    self._client = self._connect()
                if need_list:
                    self._list()
                    need_list = False
                # returns only when stopping: lightkube re-requests by itself when the
                # server ends a stream (timeoutSeconds), from the last resourceVersion
                self._watch()
            except ApiError as exc:
                if self._stop.is_set():
                    break
                code = getattr(exc.status, "code", None)
                if code == 410:
                    log.info("%s: resourceVersion %s expired (410 Gone), listing again",
                             self.kind, self.resource_version)
                    self._restarted("gone")
                    need_list = True
                    continue
                self._failed(f"API error {code}: {getattr(exc.status, 'message', exc)}")
                need_list = need_list or code in (400, 404)
            except TRANSIENT as exc:
                if self._stop.is_set():
                    break
                self._failed(f"{type(exc).__name__}: {exc}")
            except Exception as exc:  # a bug or an unexpected reply: log, back off, go on
                if self._stop.is_set():
                    break
                log.exception("%s informer: unexpected error", self.kind)
                self._failed(f"{type(exc).__name__}: {exc}")
                need_list = True

    def _failed(self, why: str) -> None:
        self.connected = False
        self._restarted("error")
        delay = self.backoff.next()
        log.warning("%s: %s; retrying in %.1fs (the datapath keeps its state)",
                    self.kind, why, delay)
        self._close_client()
        self._stop.wait(delay)

    def _restarted(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.watch_restarts.labels(self.kind, reason).inc()

    def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception:
                pass

    def _list(self) -> None:
        items, rv = lightkube_adapter.list_objects(self._client, self.resource, self.namespace)
        fresh = {}
        for obj in items:
            d = to_dict(obj)
            fresh[key_of(d)] = d
        self.connected = True
        self.backoff.reset()
        with self._lock:
            old = self.cache
            self.cache = fresh
            self.resource_version = rv
            self.lists += 1
        # report the difference: after a relist this is exactly what changed while away
        for key in old.keys() - fresh.keys():
            self.on_change(self.kind, key, old[key], None)
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None or _rv(prev) != _rv(obj):
                self.on_change(self.kind, key, prev, obj)
        self.synced.set()

    def _watch(self) -> None:
        for etype, obj in lightkube_adapter.watch(self._client, self.resource, self.namespace,
                                                  server_timeout=self.watch_timeout,
                                                  resource_version=self.resource_version):
            if self._stop.is_set():
                return
            self.connected = True
            self.backoff.reset()
            d = to_dict(obj)
            rv = _rv(d)
            if etype == "BOOKMARK":
                self.resource_version = rv or self.resource_version
                continue
            key = key_of(d)
            with self._lock:
                prev = self.cache.get(key)
                if etype == "DELETED":
                    self.cache.pop(key, None)
                else:
                    self.cache[key] = d
                self.resource_version = rv or self.resource_version
            self.on_change(self.kind, key, prev, None if etype == "DELETED" else d)


class InformerGroup:
    """Several informers of one kind (one per namespace served) seen as one: the merged
    cache and the count of lists. Keys are "namespace/name", so the caches of different
    namespaces never collide."""

    def __init__(self, informers: List[Informer]):
        if not informers:
            raise ValueError("an informer group needs at least one informer")
        self.informers = list(informers)

    def snapshot(self) -> Dict[str, dict]:
        out: Dict[str, dict] = {}
        for inf in self.informers:
            out.update(inf.snapshot())
        return out

    @property
    def lists(self) -> int:
        """Complete lists made by the group's informers (each: 1 + its relists)."""
        return sum(inf.lists for inf in self.informers)


def _rv(obj: dict) -> Optional[str]:
    return (obj.get("metadata") or {}).get("resourceVersion")
