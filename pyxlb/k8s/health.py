"""Health probes of `healthCheckNodePort`: is a node still able to serve a Local Service?

For a Service with `externalTrafficPolicy: Local`, Kubernetes gives it a health-check node
port; the node's service proxy (kube-proxy, or a replacement) answers ``GET /healthz`` on
it with 200 while the node holds a ready local endpoint of the Service, and 503 otherwise.
Cloud load balancers use it to stop sending to a node before the EndpointSlice says so (the
proxy knows first) and to notice a node whose proxy died. pyxlb does the same: every agent
probes the nodes that its rings point at, and a node that fails leaves the ring until it
recovers.

Flapping is damped: a node is marked down only after `fall` failures in a row and up again
only after `rise` successes in a row. Until its first verdict a node counts as healthy (the
EndpointSlice already said it has a ready endpoint).
"""

from __future__ import annotations

import http.client
import ipaddress
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, Iterable, Optional, Set, Tuple

log = logging.getLogger("pyxlb.k8s")

Target = Tuple[str, int]           # (node address, port)
Verdict = Callable[[Target, bool], None]


def probe(address: str, port: int, timeout: float) -> bool:
    """One ``GET /healthz``: True on a 200 answer, False on any other answer or none."""
    host = str(ipaddress.ip_address(address))
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz", headers={"User-Agent": "pyxlb-agent"})
        resp = conn.getresponse()
        resp.read(4096)
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


class _Damper:
    __slots__ = ("healthy", "streak")

    def __init__(self):
        self.healthy = True
        self.streak = 0          # consecutive results that disagree with `healthy`


class Prober:
    """Probes a changing set of targets every `interval` seconds and reports flips.

    `on_flip(target, healthy)` is called (from the prober's thread) when a target's damped
    state changes. `set_targets` may be called at any time from any thread."""

    def __init__(self, on_flip: Verdict, *, interval: float = 2.0, timeout: float = 1.0,
                 rise: int = 2, fall: int = 3, workers: int = 8,
                 probe_fn: Callable[[str, int, float], bool] = probe):
        if interval <= 0 or timeout <= 0 or rise < 1 or fall < 1:
            raise ValueError("health probing needs interval, timeout > 0 and rise, fall >= 1")
        self.on_flip = on_flip
        self.interval, self.timeout, self.rise, self.fall = interval, timeout, rise, fall
        self._probe = probe_fn
        self._targets: Set[Target] = set()
        self._state: Dict[Target, _Damper] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="probe")
        self._thread: Optional[threading.Thread] = None

    def set_targets(self, targets: Iterable[Target]) -> None:
        targets = set(targets)
        with self._lock:
            new = targets - self._targets
            self._targets = targets
            for t in list(self._state):
                if t not in targets:
                    del self._state[t]
        if new:
            self._wake.set()     # probe newcomers now, not an interval later

    def healthy(self, target: Target) -> bool:
        with self._lock:
            d = self._state.get(target)
            return True if d is None else d.healthy

    def unhealthy(self) -> Set[Target]:
        with self._lock:
            return {t for t, d in self._state.items() if not d.healthy}

    def start(self) -> "Prober":
        self._thread = threading.Thread(target=self._run, name="health-prober", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.timeout + 5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run_once(self) -> None:
        """Probe every target once (in parallel) and apply the damping."""
        with self._lock:
            targets = sorted(self._targets)
        if not targets:
            return
        results = list(self._pool.map(lambda t: self._probe(t[0], t[1], self.timeout), targets))
        flips = []
        with self._lock:
            for target, ok in zip(targets, results):
                if target not in self._targets:
                    continue
                d = self._state.setdefault(target, _Damper())
                if ok == d.healthy:
                    d.streak = 0
                    continue
                d.streak += 1
                if d.streak >= (self.rise if ok else self.fall):
                    d.healthy, d.streak = ok, 0
                    flips.append((target, ok))
        for target, ok in flips:
            log.info("health check %s:%d %s", target[0], target[1],
                     "recovered" if ok else "failed: the node leaves the ring")
            self.on_flip(target, ok)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("health prober")
            self._wake.wait(self.interval)
            self._wake.clear()

