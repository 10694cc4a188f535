"""The `pyxlb agent` command (registered on the `pyxlb` group in pyxlb/cli/root.py)."""

from __future__ import annotations

import logging
from typing import Optional

import click

from pyxlb import _layouts as L
from pyxlb.cli.common import Fail, Options as CliOptions, one_line
from pyxlb.datapath import CHAIN_WINDOW_MAX, rated_flows
from pyxlb.errors import PyxlbError
from pyxlb.k8s.kube import SERVICE_ACCOUNT_DIR

LOG_LEVELS = ("debug", "info", "warning", "error")


def _opt(*names, env: str, **kw):
    return click.option(*names, envvar=env, show_envvar=True, **kw)


@click.command("agent")
@_opt("--node-name", env="NODE_NAME", metavar="NAME",
      help="This node's name in Kubernetes (required; the DaemonSet passes spec.nodeName).")
@_opt("--interface", "interfaces", env="PYXLB_INTERFACE", metavar="IFACE[,IFACE...]",
      help="Uplink(s) to run the balancer on, comma-separated. Default: the interface of the "
           "default route.")
@_opt("--xdp-mode", env="PYXLB_XDP_MODE", type=click.Choice(["native", "generic"]),
      default="native", show_default=True,
      help="XDP mode: native (in the driver; most NICs and veth) or generic (any interface).")
@_opt("--kubeconfig", env="KUBECONFIG", type=click.Path(dir_okay=False),
      help="Kubeconfig file. Default: in a pod, its service account (token, CA and "
           "KUBERNETES_SERVICE_HOST/PORT, as client-go does); else ~/.kube/config.")
@_opt("--service-account-dir", env="PYXLB_SERVICE_ACCOUNT_DIR", metavar="DIR",
      default=SERVICE_ACCOUNT_DIR, show_default=True,
      help="Where the pod's service account is mounted (token, ca.crt, namespace); the token "
           "is read again whenever the API server answers 401, so rotation needs no restart.")
@_opt("--server", env="PYXLB_API_SERVER", metavar="URL",
      help="API server URL, overriding the kubeconfig (plain http: for local stand-ins).")
@_opt("--lb-class", env="PYXLB_LB_CLASS", default="pyxlb.io/lb", show_default=True,
      help="spec.loadBalancerClass of the Services pyxlb implements.")
@_opt("--default-class/--no-default-class", env="PYXLB_DEFAULT_CLASS", default=True,
      show_default=True,
      help="Also implement LoadBalancer Services that name no loadBalancerClass (what "
           "`kubectl expose --type=LoadBalancer` makes). Turn off where another "
           "implementation (MetalLB, a cloud's) takes class-less Services.")
@_opt("--namespaces", env="PYXLB_NAMESPACES", metavar="NS[,NS...]",
      help="Serve Services in these namespaces only, comma-separated. Default: every "
           "namespace.")
@_opt("--controller/--no-controller", env="PYXLB_CONTROLLER", default=True, show_default=True,
      help="Take part in the IP-allocation election (one agent allocates at a time).")
@_opt("--lease-namespace", env="POD_NAMESPACE", metavar="NS",
      help="Namespace of the election Lease. Default: the pod's own (the service account's "
           "namespace file), else pyxlb-system.")
@_opt("--lease-name", env="PYXLB_LEASE_NAME", default="pyxlb-controller", show_default=True,
      help="Name of the election Lease.")
@_opt("--lease-duration", env="PYXLB_LEASE_DURATION", type=click.FloatRange(1, 3600),
      default=15.0, show_default=True,
      help="Seconds a leader may go without renewing before a standby takes over.")
@_opt("--health-interval", env="PYXLB_HEALTH_INTERVAL", type=click.FloatRange(0.1, 600),
      default=2.0, show_default=True,
      help="Seconds between probes of each Local Service's healthCheckNodePort on each node "
           "it points at. A node leaves the ring after 3 failures in a row, returns after 2 "
           "successes.")
@_opt("--health-timeout", env="PYXLB_HEALTH_TIMEOUT", type=click.FloatRange(0.05, 60),
      default=1.0, show_default=True, help="Seconds a health probe may take.")
@_opt("--seed", env="PYXLB_SEED", type=click.IntRange(0, 0xFFFFFFFF),
      help="Flow-hash seed. Must be the same on every node, so every node picks the same "
           "backend for a flow. Default: keep (0 for a new datapath).")
@_opt("--mtu", env="PYXLB_MTU", type=click.IntRange(576, 65535),
      help="Largest packet after encapsulation; larger ones get an ICMP error. Default: keep "
           "(1500 for a new datapath).")
@_opt("--ring-size", env="PYXLB_RING_SIZE", type=int, default=65537, show_default=True,
      help="Slots in each VIP's Maglev ring, a prime above 100 x the largest backend count "
           "(65537 serves up to ~650 nodes; each distinct ring costs ring-size x 8 bytes of "
           "kernel memory, so clusters with thousands of Local Services want e.g. 1021).")
@_opt("--max-vips", env="PYXLB_MAX_VIPS", type=click.IntRange(1, 1 << 20), default=4096,
      show_default=True,
      help="VIPs the datapath holds (one per Service port and external IP), fixed when the "
           "datapath is created.")
@_opt("--max-flows", env="PYXLB_MAX_FLOWS", type=click.IntRange(1024, 1 << 26),
      default=rated_flows(L.FLOW4_SETS), show_default=True,
      help="Established IPv4 flows the flow table is rated for: with no more, 99.9% of their "
           "packets find their flow. The table gets at least 2.5 sets a flow (sets of 4 "
           "ways, 128 bytes), rounded up to a power of two: 320-640 bytes of kernel memory "
           "a flow, taken when the datapath is created, which fixes it.")
@_opt("--max-flows6", env="PYXLB_MAX_FLOWS6", type=click.IntRange(1024, 1 << 26),
      default=rated_flows(L.FLOW6_SETS), show_default=True,
      help="The same for IPv6 (sets of 256 bytes: 640-1280 bytes a flow).")
@_opt("--max-inserts", env="PYXLB_MAX_INSERTS", type=click.IntRange(0, 0xFFFFFFFF),
      default=None, metavar="N",
      help="New flows each CPU records a second in each flow table. Above it a new flow is "
           "still balanced by the ring, but not recorded (counted as "
           "pyxlb_flow_insert_limited_total). 0: no limit. Default: keep the datapath's; a "
           "new one gets its table's ways divided by the CPUs, so that a flood cannot "
           "rewrite a table faster than once a second.")
@_opt("--chain-window", env="PYXLB_CHAIN_WINDOW", type=click.IntRange(0, CHAIN_WINDOW_MAX),
      default=None, metavar="SECONDS",
      help="How long a stateless Service's ring slot that changed hands remembers its "
           "previous node, so that the nodes pass that node's connections on to it "
           f"(0: the default, {L.CHAIN_WINDOW_DEFAULT}). Longer than the connections that "
           "must outlive a change of nodes. Default: keep the datapath's.")
@_opt("--announce/--no-announce", env="PYXLB_ANNOUNCE", default=True, show_default=True,
      help="Announce VIPs as their IPPool's `announce` says (l2, bgp or none); "
           "--no-announce leaves routing the addresses to you.")
@_opt("--l2-port", env="PYXLB_L2_PORT", type=click.IntRange(1, 65535), default=9744,
      show_default=True, help="UDP port of the L2 heartbeats between agents.")
@_opt("--l2-interval", env="PYXLB_L2_INTERVAL", type=click.FloatRange(0.01, 10),
      default=0.2, show_default=True, help="Seconds between L2 heartbeats.")
@_opt("--l2-dead-after", env="PYXLB_L2_DEAD_AFTER", type=click.FloatRange(0.05, 60),
      default=1.0, show_default=True,
      help="Seconds without a heartbeat before a node's L2 addresses move to another node.")
@_opt("--l2-key", env="PYXLB_L2_KEY", metavar="SECRET",
      help="Shared key authenticating the L2 heartbeats (HMAC); the same on every node.")
@_opt("--bird-dir", env="PYXLB_BIRD_DIR", default="/run/pyxlb/bird", show_default=True,
      help="State directory of the node's BIRD (config, control socket, pid file).")
@_opt("--listen", env="PYXLB_LISTEN", default="::", show_default=True,
      help="Address for the metrics and probe endpoints.")
@_opt("--metrics-port", env="PYXLB_METRICS_PORT", type=click.IntRange(0, 65535), default=9742,
      show_default=True, help="Prometheus /metrics port (0: off).")
@_opt("--probe-port", env="PYXLB_PROBE_PORT", type=click.IntRange(0, 65535), default=9743,
      show_default=True, help="Port of /healthz (liveness) and /readyz (readiness) (0: off).")
@_opt("--upgrade", env="PYXLB_UPGRADE", type=click.Choice(["auto", "never"]), default="auto",
      show_default=True,
      help="A datapath pinned by another version of pyxlb (the previous release's, after a "
           "rollout): auto upgrades it to this version under traffic, without resetting a "
           "connection (docs/deploy.md); never refuses to start, naming both versions.")
@_opt("--log-level", env="PYXLB_LOG_LEVEL", type=click.Choice(LOG_LEVELS), default="info",
      show_default=True, help="Log verbosity.")
@click.pass_context
def agent(ctx: click.Context, node_name: Optional[str], interfaces: Optional[str],
          xdp_mode: str, kubeconfig: Optional[str], server: Optional[str], lb_class: str,
          service_account_dir: str, default_class: bool, namespaces: Optional[str],
          controller: bool, lease_namespace: Optional[str], lease_name: str,
          lease_duration: float, health_interval: float, health_timeout: float,
          seed: Optional[int], mtu: Optional[int], ring_size: int, max_vips: int,
          max_flows: int, max_flows6: int, max_inserts: Optional[int],
          chain_window: Optional[int], announce: bool, l2_port: int, l2_interval: float, l2_dead_after: float,
          l2_key: Optional[str], bird_dir: str, listen: str, metrics_port: int,
          probe_port: int, upgrade: str, log_level: str) -> None:
    """Implement Kubernetes LoadBalancer Services on this node (run by the DaemonSet).

    Attaches the balancer to the uplink (adopting the datapath pinned under --pin-dir, so
    forwarding goes on across restarts), watches Services and EndpointSlices (in every
    namespace, or those of --namespaces) and Nodes, and keeps the node's VIPs and backends
    equal to what they say: with externalTrafficPolicy Local the backends are the nodes
    holding ready endpoints, weighted by how many; with Cluster, every ready node. One agent
    at a time (elected through a Lease) allocates external IPs from IPPools and writes
    Service status.

    While the API server is unreachable the datapath keeps its last state. SIGTERM stops the
    agent and leaves the datapath forwarding. Every option can also be set by the
    environment variable shown (the DaemonSet's ConfigMap sets them). See docs/kubernetes.md.
    """
    from pyxlb.k8s.run import AgentNode, Options    # lightkube and the agent: only to run

    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    pin_dir = ctx.find_object(CliOptions).pin_dir
    ifaces = tuple(i.strip() for i in (interfaces or "").split(",") if i.strip())
    served = tuple(dict.fromkeys(n.strip() for n in (namespaces or "").split(",") if n.strip()))
    opts = Options(node_name=node_name or "", interfaces=ifaces, xdp_mode=xdp_mode,
                   pin_dir=pin_dir, server=server, kubeconfig=kubeconfig, lb_class=lb_class,
                   default_class=default_class, controller=controller,
                   namespaces=served, service_account=service_account_dir,
                   lease_namespace=lease_namespace,
                   lease_name=lease_name, lease_duration=lease_duration,
                   health_interval=health_interval, health_timeout=health_timeout,
                   seed=seed, mtu=mtu, ring_size=ring_size, max_vips=max_vips,
                   max_flows=max_flows, max_flows6=max_flows6, max_inserts=max_inserts,
                   chain_window=chain_window, announce=announce, l2_port=l2_port, l2_interval=l2_interval,
                   l2_dead_after=l2_dead_after, l2_key=l2_key, bird_dir=bird_dir,
                   listen=listen, metrics_port=metrics_port,
                   probe_port=probe_port, upgrade=upgrade)
    node = AgentNode(opts)
    try:
        node.start()
    except (PyxlbError, OSError, ValueError) as exc:
        node.stop()
        raise Fail(one_line(exc)) from None
    click.echo(f"pyxlb agent: node {node_name}, datapath at {pin_dir}; "
               f"metrics on port {metrics_port}, probes on port {probe_port}", err=True)
    node.wait()
