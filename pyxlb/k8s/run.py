"""`pyxlb agent`: the process a DaemonSet runs on every node.

It attaches the balancer to the node's uplink (adopting the pinned datapath a previous agent
left, so forwarding never stops across restarts), runs the node agent (informers →
translation → `Datapath.apply`), the IP-allocation controller (acting only while it holds
the Lease), health probes of healthCheckNodePorts, and two small HTTP endpoints: Prometheus
metrics, and liveness/readiness for the kubelet.

Stopping (SIGTERM, as the kubelet does) gives the Lease up and leaves the datapath attached
and forwarding: the next agent adopts it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Optional, Set, Tuple

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from .. import bpffs
from .. import node as node_mod
from .. import metrics as dp_metrics
from ..datapath import DEFAULT_PIN_DIR, Datapath
from ..errors import PyxlbError
from . import kube
from .agent import Agent, AgentSettings
from .controller import Controller, default_identity

log = logging.getLogger("pyxlb.k8s")

MAX_VIPS_DEFAULT = 4096

# a namespace's name: an RFC 1123 label
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# Every label value the agent counts under (pyxlb/k8s/agent.py counts reconciles,
# pyxlb/k8s/informer.py watch restarts; tests/unit/test_metrics_names.py holds them
# together). Each series exists at 0 from the start, so a healthy agent's dashboard panels
# and alert rules read 0 rather than no data.
RECONCILE_RESULTS = ("ok", "error")
WATCH_RESTART_REASONS = ("gone", "error")


class AgentMetrics:
    """The agent's own metrics, beside the datapath's (docs/metrics.md lists them all)."""

    def __init__(self, registry):
        self.reconciles = Counter("pyxlb_agent_reconciles", "Reconciles of the node's "
                                  "datapath with the Kubernetes objects, by result",
                                  ["result"], registry=registry)
        self.reconcile_seconds = Histogram("pyxlb_agent_reconcile_seconds", "Duration of a "
                                           "reconcile: translation plus Datapath.apply",
                                           buckets=RECONCILE_BUCKETS, registry=registry)
        self.services = Gauge("pyxlb_agent_services", "LoadBalancer Services this agent "
                              "serves", registry=registry)
        self.watch_restarts = Counter("pyxlb_agent_watch_restarts", "Restarts of a watch, "
                                      "by resource and reason (gone: 410, relisted; error: "
                                      "API unreachable or failing)", ["resource", "reason"],
                                      registry=registry)
        self.api_up = Gauge("pyxlb_agent_api_up", "1 while every watch is connected to the "
                            "API server", registry=registry)
        self.leader = Gauge("pyxlb_agent_leader", "1 while this agent holds the IP "
                            "allocation Lease", registry=registry)
        self.ipam_in_use = Gauge("pyxlb_ipam_addresses_in_use", "Addresses of each IPPool "
                                 "held by Services (reported by the leader)", ["pool"],
                                 registry=registry)
        self.node_health = Gauge("pyxlb_agent_node_health", "healthCheckNodePort verdict per "
                                 "probed node (1 healthy, 0 failing)", ["node"],
                                 registry=registry)
        for result in RECONCILE_RESULTS:
            self.reconciles.labels(result)
        self._probed: Set[str] = set()

    def watching(self, kinds) -> None:
        """Start the watch-restart counters of each watched kind at 0, for every reason."""
        for kind in kinds:
            for reason in WATCH_RESTART_REASONS:
                self.watch_restarts.labels(kind, reason)

    def node_verdicts(self, healthy: Dict[str, bool]) -> None:
        """Set pyxlb_agent_node_health to `healthy` ({node: verdict} of the nodes probed
        now), removing nodes no longer probed: a node a Service stopped pointing at would
        otherwise show its last verdict (perhaps failing) for as long as the agent runs."""
        for node in self._probed - set(healthy):
            self.node_health.remove(node)
        for node, ok in healthy.items():
            self.node_health.labels(node).set(1 if ok else 0)
        self._probed = set(healthy)


@dataclass
class Options:
    """Every setting of `pyxlb agent` (the click command fills it; tests build it)."""

    node_name: str
    interfaces: Tuple[str, ...] = ()
    xdp_mode: str = "native"
    pin_dir: str = DEFAULT_PIN_DIR
    server: Optional[str] = None
    kubeconfig: Optional[str] = None
    lb_class: str = "pyxlb.io/lb"
    default_class: bool = True
    namespaces: Tuple[str, ...] = ()      # Services served: () every namespace, else these
    service_account: str = kube.SERVICE_ACCOUNT_DIR   # in-cluster credentials
    controller: bool = True
    lease_namespace: Optional[str] = None   # None: the pod's own namespace, else pyxlb-system
    lease_name: str = "pyxlb-controller"
    lease_duration: float = 15.0
    health_interval: float = 2.0
    health_timeout: float = 1.0
    seed: Optional[int] = None
    mtu: Optional[int] = None
    listen: str = "::"
    metrics_port: int = 9742
    probe_port: int = 9743
    identity: Optional[str] = None
    debounce: float = 0.02
    ring_size: int = 65537
    max_vips: int = MAX_VIPS_DEFAULT
    max_flows: Optional[int] = None     # None: the object's default (xlb_flowsets4)
    max_flows6: Optional[int] = None    # None: the object's default (xlb_flowsets6)
    max_inserts: Optional[int] = None   # None: keep the datapath's (new ones: the default)
    chain_window: Optional[int] = None  # None: keep the datapath's (new ones: the default)
    announce: bool = True
    l2_port: int = 9744
    l2_interval: float = 0.2
    l2_dead_after: float = 1.0
    l2_key: Optional[str] = None
    bird_dir: str = "/run/pyxlb/bird"
    attach: bool = True              # tests of the control plane alone load without attaching
    upgrade: str = "auto"            # a datapath of another version: auto | never


def default_interface() -> str:
    """The interface of the default route (IPv4, else IPv6) of this network namespace."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for family in (2, 10):
            for route in ipr.get_default_routes(family=family):
                oif = route.get_attr("RTA_OIF")
                if oif:
                    return ipr.get_links(oif)[0].get_attr("IFLA_IFNAME")
    raise PyxlbError("no default route to find the uplink by: give --interface")


class _ProbeHandler(BaseHTTPRequestHandler):
    node: "AgentNode" = None

    def do_GET(self):
        if self.path.startswith("/healthz"):
            ok, why = self.node.alive()
        elif self.path.startswith("/readyz"):
            ok, why = self.node.ready()
        else:
            self.send_error(404)
            return
        body = (why + "\n").encode()
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _DualStackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, handler):
        import socket
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, handler)

    def server_bind(self):
        import socket
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class AgentNode:
    """One node's agent process: datapath, agent, controller, metrics and probes."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.dp: Optional[Datapath] = None
        self.agent: Optional[Agent] = None
        self.controller: Optional[Controller] = None
        self._servers = []
        self._stopped = threading.Event()

    # -- start ----------------------------------------------------------------------------

    def start(self) -> "AgentNode":
        o = self.opts
        if not o.node_name:
            raise PyxlbError("the node name is required: --node-name or $NODE_NAME")
        for ns in o.namespaces:
            if not _DNS_LABEL.fullmatch(ns):
                raise PyxlbError(f"--namespaces: {ns!r} is not a namespace name (lower-case "
                                 f"letters, digits and '-', at most 63)")
        connect = lambda: kube.connect(o.server, o.kubeconfig,   # noqa: E731
                                       service_account=o.service_account)
        connect().close()      # a bad kubeconfig fails now, in one line; a down API does not
        self.lease_namespace = o.lease_namespace or kube.pod_namespace(o.service_account)
        self.dp = self._datapath()
        registry = dp_metrics.make_registry(self.dp)
        self.metrics = AgentMetrics(registry)
        settings = AgentSettings(node_name=o.node_name, lb_class=o.lb_class,
                                 default_class=o.default_class, namespaces=o.namespaces,
                                 health_interval=o.health_interval,
                                 health_timeout=o.health_timeout, debounce=o.debounce,
                                 ring_size=o.ring_size)
        announcer = None
        if o.announce:
            from .announcing import AnnounceSettings, ClusterAnnouncer
            iface = (list(o.interfaces) or [i["name"] for i in self.dp.interfaces()] or [""])[0]
            announcer = ClusterAnnouncer(o.node_name, AnnounceSettings(
                interface=iface, l2_port=o.l2_port, l2_interval=o.l2_interval,
                l2_dead_after=o.l2_dead_after, l2_key=o.l2_key, bird_dir=o.bird_dir))
        self.agent = Agent(settings, self.dp, connect, metrics=self.metrics,
                           announcer=announcer)
        if o.controller:
            self.controller = Controller(connect, self.agent.services.snapshot,
                                         settings.translate_settings(),
                                         namespace=self.lease_namespace,
                                         lease_name=o.lease_name,
                                         lease_duration=o.lease_duration,
                                         namespaces=o.namespaces,
                                         identity=o.identity or f"{o.node_name}_{default_identity()}",
                                         metrics=self.metrics)
            self.agent.on_service_change = self.controller.service_changed
            self.agent.on_problems = self.controller.post_problems
        watched = [i.kind for i in self.agent.informers]
        if self.controller is not None:
            watched.append(self.controller.pools.kind)
        self.metrics.watching(watched)
        if o.metrics_port:
            try:
                server, _thread = start_http_server(o.metrics_port, addr=o.listen,
                                                    registry=registry)
            except OSError as exc:
                raise PyxlbError(f"cannot serve metrics on {o.listen}:{o.metrics_port}: "
                                 f"{exc.strerror or exc}") from None
            self._servers.append(server)
        if o.probe_port:
            handler = type("ProbeHandler", (_ProbeHandler,), {"node": self})
            try:
                probe = _DualStackServer((o.listen, o.probe_port), handler)
            except OSError as exc:
                raise PyxlbError(f"cannot serve probes on {o.listen}:{o.probe_port}: "
                                 f"{exc.strerror or exc}") from None
            threading.Thread(target=probe.serve_forever, name="probes", daemon=True).start()
            self._servers.append(probe)
        self.agent.start()
        if self.controller is not None:
            self.controller.start()
        threading.Thread(target=self._gauges, name="agent-gauges", daemon=True).start()
        return self

    def _datapath(self) -> Datapath:
        o = self.opts
        parent = os.path.dirname(os.path.abspath(o.pin_dir))
        if not bpffs.is_bpffs(parent):
            # mounting one here would pin into this container's own mount: the datapath
            # would die with the pod instead of outliving it
            raise PyxlbError(f"{parent} is not a BPF filesystem: mount one on the host "
                             f"(mount -t bpf bpf /sys/fs/bpf) and give the agent the host's "
                             f"directory, so the datapath outlives agent restarts")
        interfaces = (tuple(o.interfaces) or (default_interface(),)) if o.attach else ()
        node = node_mod.bring_up(o.pin_dir, node_mod.NodeSettings(
            interfaces=interfaces, mode=o.xdp_mode, seed=o.seed, mtu=o.mtu,
            max_vips=o.max_vips, max_flows=o.max_flows, max_flows6=o.max_flows6,
            max_inserts=o.max_inserts, chain_window=o.chain_window, upgrade=o.upgrade))
        if node.upgraded:
            log.info("%s", node.upgraded)
        for text in node.notes:
            log.warning("%s", text)
        for iface, link in node.links.items():
            log.info("balancer %s %s (%s mode)",
                     "attached to" if link["changed"] else "already on", iface, o.xdp_mode)
        return node.dp

    def _gauges(self) -> None:
        while not self._stopped.wait(1.0):
            self.metrics.api_up.set(1 if self.agent.api_up else 0)
            self.metrics.node_verdicts({node: self.agent.prober.healthy(target) for node, target
                                        in self.agent.health_targets().items()})

    # -- probes ---------------------------------------------------------------------------

    def alive(self) -> Tuple[bool, str]:
        threads = [self.agent.thread] + [i.thread for i in self.agent.informers]
        if self.controller is not None:
            threads.append(self.controller.thread)
        dead = [t.name for t in threads if t is None or not t.is_alive()]
        if dead:
            return False, f"stopped: {', '.join(dead)}"
        return True, "ok"

    def ready(self) -> Tuple[bool, str]:
        if not self.agent.ready:
            return False, "not synced with the API server yet"
        return True, "ok"

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything but the datapath: it keeps forwarding for the next agent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.controller is not None:
            self.controller.stop()
        if self.agent is not None:
            self.agent.stop()
        for s in self._servers:
            s.shutdown()
            s.server_close()
        if self.dp is not None:
            self.dp.close()

    def wait(self) -> None:
        """Block until SIGTERM or SIGINT, then stop."""
        done = threading.Event()
        previous = {s: signal.signal(s, lambda *_: done.set())
                    for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while not done.wait(0.5):
                pass
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            log.info("stopping (the datapath stays attached)")
            self.stop()
