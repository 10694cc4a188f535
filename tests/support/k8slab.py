"""The Kubernetes variant of the namespace lab: three "nodes" that each run `pyxlb agent`.

    client ── router ══ br0 ══╦═ n1   (agent: balancer + inline decap; "pods" = HTTP server)
     (eth0)   (eth0)           ╠═ n2
              API stand-in     ╚═ n3

Each node is what a Kubernetes node is to pyxlb: its agent attaches the balancer to eth0,
watches the API (here the API stand-in, tests/support/standin.py, listening on the router's
segment address inside the lab), and applies the VIPs it derives. A node's "pods" and
"service proxy" are one HTTP server bound to the VIP on its loopback: a tunnelled packet the
balancer decapsulates is delivered to it, as kube-proxy would deliver it to a local pod, and
it answers the client directly (DSR) with the client's own address in the body. A second one
answers GET /healthz on HEALTH_CHECK_PORT, kube-proxy's health check node port: a Local
Service asks the API for that port, and the agents probe it on the nodes with its pods.
``serve_service`` adds a Service whose port differs from its pods' (targetPort): pods on
the target port, and kube-proxy's DNAT from the Service port to it (nftables).

Agents run as in a pod when the stand-in speaks HTTPS (``start_agent``): in-cluster
configuration from a service account directory, with the permissions the stand-in's RBAC
objects grant (the tests apply deploy/rbac.yaml). Given an image (``KubeLab(image=...)``),
each agent runs from it in a podman container in its node's namespace, with the pod
deploy/daemonset.yaml and deploy/configmap.yaml describe (tests/support/daemonset.py).

The router sends VIP traffic to n1 (what an announcement would do); n1's balancer spreads it
over the nodes by their weights — all Maglev, all real packets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Mapping, Optional, Set, Tuple

from pyroute2 import NetNS

from pyxlb import netns
from pyxlb.errors import PyxlbError
from pyxlb.lab import CLIENT, ROUTER, SEED, SEGMENT_MTU, Lab, node_addr

from tests.support.daemonset import ROOT, AgentPod, container_state, podman
from tests.support.standin import ApiStandIn

DEPLOY = ROOT / "deploy"

KNODES = ("n1", "n2", "n3")
# The healthCheckNodePort the lab's Local Services ask for (in the API's node port range):
# every node answers 200 there, as kube-proxy does on a node with ready local endpoints.
HEALTH_CHECK_PORT = 32000
# Where deploy/rbac.yaml puts the agent's ServiceAccount.
AGENT_NAMESPACE, AGENT_ACCOUNT = "pyxlb-system", "pyxlb-agent"
AGENT_USER = f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_ACCOUNT}"


def agent_refusals(api) -> List[str]:
    """What the stand-in's RBAC (deploy/rbac.yaml) refused the agents, described."""
    return [r.attributes.describe() for r in api.audit if r.user == AGENT_USER and not r.allowed]
# The address the lab's automatic pool hands out (VIP4 itself is asked for by name): both
# are on every node's loopback and routed by the router to n1, like VIP4.
AUTO_VIP4 = ipaddress.ip_address("10.77.100.11")


def wait_for(check, timeout: float, what: str, lab: "KubeLab", interval: float = 0.05) -> None:
    """Poll `check` until it is true, at most `timeout` seconds; else fail with the tail of
    every agent's log."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return
        time.sleep(interval)
    logs = "".join(f"\n--- agent {n} ---\n{lab.log_of(n)[-3000:]}" for n in KNODES)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{logs}")


class KubeLab(Lab):
    """client, router and three agent nodes; `prefix` names its namespaces."""

    NODES = (CLIENT, ROUTER, *KNODES)

    def __init__(self, prefix: str = "xlbk", image: Optional[str] = None):
        super().__init__(prefix)
        self.image = image
        self.agents: Dict[str, subprocess.Popen] = {}
        self.containers: Dict[str, str] = {}
        self.logs: Dict[str, str] = {}
        self._pods: Set[Tuple[str, int]] = set()
        self._logdir = tempfile.mkdtemp(prefix=f"pyxlb-{prefix}-")

    def build(self, log) -> None:
        self.create_namespaces()
        self.wire(KNODES)
        self.add_addresses(KNODES, forwarding=(ROUTER, *KNODES))
        self.route_via("n1")
        for node in KNODES:
            self.serve_vip(node)
            with NetNS(self.ns(node)) as n:
                n.addr("add", index=n.link_lookup(ifname="lo")[0], address=str(AUTO_VIP4),
                       prefixlen=32)
            # kube-proxy's /healthz (the lab's HTTP server answers every GET with 200)
            self.start_http(node, HEALTH_CHECK_PORT)
        self.pass_on_router_ports(KNODES)
        self.warm_neighbours()
        self.wait_http(nodes=KNODES)
        log(f"Kubernetes lab {self.prefix}: client, router, nodes {', '.join(KNODES)}")

    def route_via(self, lb: str) -> None:
        super().route_via(lb)
        with NetNS(self.ns(ROUTER)) as r:
            r.route("replace", dst=f"{AUTO_VIP4}/32", gateway=str(node_addr(lb, 4)))

    def serve_service(self, address, port: int, target_port: int) -> None:
        """What kube-proxy and a Deployment's pods do for a Service with `port` and
        `targetPort`, on every node: an HTTP server (the pods) on `target_port`, and a DNAT
        of `address`:`port` to it (nftables, in the node's namespace; IPv4 or IPv6, as
        `address` is). Idempotent."""
        family = "ip" if ipaddress.ip_address(str(address)).version == 4 else "ip6"
        rules = (f"table {family} pyxlb-lab-proxy {{\n"
                 f"  chain prerouting {{\n"
                 f"    type nat hook prerouting priority dstnat; policy accept;\n"
                 f"    {family} daddr {address} tcp dport {port} dnat to :{target_port}\n"
                 f"  }}\n}}\n")
        for node in KNODES:
            if (node, target_port) not in self._pods:
                self.start_http(node, target_port)
                self._pods.add((node, target_port))
            subprocess.run(["ip", "netns", "exec", self.ns(node), "nft", "-f", "-"],
                           input=rules, text=True, check=True, capture_output=True)
        self.wait_http(nodes=KNODES, port=target_port)

    def warm_neighbours(self, senders=KNODES, targets=KNODES) -> None:
        """Every node resolves every other node's MAC, so the balancers' next-hop caches
        fill on the first apply."""
        super().warm_neighbours(senders, targets)
        time.sleep(0.2)

    # -- the API stand-in's place, and the agents ----------------------------------------------

    @property
    def api_host(self) -> str:
        """Where the API stand-in listens: the router's address on the nodes' segment."""
        return str(node_addr(ROUTER, 4))

    @contextlib.contextmanager
    def in_router(self):
        """Run code in the router's namespace (a server socket made here listens there)."""
        with netns.enter(self.ns(ROUTER)):
            yield

    def start_agent(self, node: str, api, *extra: str):
        """The agent of `node`: a process (`start_process`), or with an image a container
        (`start_container`), which takes no extra arguments: the DaemonSet's are its own."""
        if self.image is None:
            return self.start_process(node, api, *extra)
        if extra:
            raise PyxlbError(f"a containerised agent runs the DaemonSet's arguments, not {extra}")
        return self.start_container(node, api)

    def start_process(self, node: str, api, *extra: str,
                      env: Optional[Mapping[str, str]] = None) -> subprocess.Popen:
        """Run `pyxlb agent` as its own process inside `node`'s namespace, against `api`
        (an ApiStandIn). Over HTTPS the agent runs as in a pod: no --server, the
        environment's KUBERNETES_SERVICE_HOST/PORT, and a service account directory as the
        kubelet mounts it (token of ServiceAccount pyxlb-system/pyxlb-agent, the CA, the
        namespace), so it has exactly the permissions the stand-in's RBAC objects give.
        `env`: the environment to start from instead of this process's (a previous
        release's, tests/support/release.py Release.env(), runs that release's agent)."""
        if self.agent_runs(node):
            raise PyxlbError(f"the agent of {node} runs already")
        env = {k: v for k, v in (os.environ if env is None else env).items()
               if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
        if api.tls:
            sa = api.write_service_account(os.path.join(self._logdir, f"sa-{node}"),
                                           AGENT_NAMESPACE, AGENT_ACCOUNT)
            env.update(api.service_env())
            where = ["--service-account-dir", sa]
        else:
            where = ["--server", api.url]
        logpath = os.path.join(self._logdir, f"agent-{node}.log")
        self.logs[node] = logpath
        out = open(logpath, "ab")
        cmd = [sys.executable, "-m", "pyxlb", "--pin-dir", self.pin_dir(node), "agent",
               "--node-name", node, *where, "--interface", "eth0",
               "--seed", str(SEED), "--mtu", str(SEGMENT_MTU), "--metrics-port", "0",
               "--probe-port", "0", *extra]
        try:
            proc = subprocess.Popen(cmd, preexec_fn=self.preexec_in(node),
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    close_fds=True, start_new_session=True, env=env)
        finally:
            out.close()
        self.agents[node] = proc
        return proc

    def container_name(self, node: str) -> str:
        return f"{self.prefix}-agent-{node}"

    def start_container(self, node: str, api, pod: Optional[AgentPod] = None) -> str:
        """Run `node`'s agent from the lab's image, as kubelet would run the DaemonSet's pod
        on that node (tests/support/daemonset.py); `pod` is deploy/'s unless given.
        Returns the container's name."""
        if self.agent_runs(node):
            raise PyxlbError(f"the agent of {node} runs already")
        if not api.tls:
            raise PyxlbError("a containerised agent needs the stand-in over HTTPS (in-cluster)")
        pod = pod or AgentPod.read()
        name = self.container_name(node)
        podman(["rm", "--force", "--ignore", name])
        sa = api.write_service_account(os.path.join(self._logdir, f"sa-{node}"),
                                       pod.namespace, pod.service_account)
        logpath = os.path.join(self._logdir, f"agent-{node}.log")
        self.logs[node] = logpath
        # the one thing a lab node differs in: three nodes share this machine's bpffs
        env = {"PYXLB_PIN_DIR": self.pin_dir(node)}
        cmd = pod.podman_run(name=name, image=self.image, netns=self.ns(node), node=node,
                             sa_dir=sa, api_env=api.service_env(), lab_env=env,
                             scratch=os.path.join(self._logdir, node), log_path=logpath)
        podman(cmd[1:])
        self.containers[node] = name
        return name

    def agent_runs(self, node: str) -> bool:
        if self.image is not None:
            return node in self.containers and container_state(self.containers[node]) == "running"
        return node in self.agents and self.agents[node].poll() is None

    def stop_agent(self, node: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.image is not None:
            return self._stop_container(node, sig, timeout)
        proc = self.agents.pop(node, None)
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def _stop_container(self, node: str, sig: int, timeout: float) -> int:
        """SIGTERM: `podman stop`, SIGKILL after the DaemonSet's grace period (the
        container's stop timeout, terminationGracePeriodSeconds); another signal: sent as
        it is, then wait up to `timeout`. The container is removed, as kubelet removes a
        pod's dead container; returns its exit code."""
        name = self.containers.pop(node, None)
        if name is None:
            return 0
        if sig == signal.SIGTERM:
            podman(["stop", name], check=False)
        else:
            podman(["kill", f"--signal={int(sig)}", name], check=False)
            podman(["wait", name], check=False, timeout=timeout + 5)
        code = podman(["inspect", "--format", "{{.State.ExitCode}}", name],
                      check=False).stdout.strip()
        podman(["rm", "--force", "--ignore", name], check=False)
        return int(code) if code.lstrip("-").isdigit() else -1

    def log_of(self, node: str) -> str:
        try:
            with open(self.logs[node], errors="replace") as f:
                return f.read()
        except (KeyError, OSError):
            return ""

    @contextlib.contextmanager
    def running(self):
        """This lab up with its API stand-in started (watch bookmarks every second): yields
        the API. Once the body is done, checks that deploy/rbac.yaml refused the agents
        nothing; stops the API and takes the lab down whatever happened."""
        assert os.geteuid() == 0, "the lab tests need root (namespaces, XDP, bpffs)"
        api = None
        try:
            self.up()
            api = self.start_api(bookmark_interval=1.0)
            yield api
            refused = agent_refusals(api)
            assert refused == [], f"deploy/rbac.yaml refused the agents: {refused}"
        finally:
            if api is not None:
                api.stop()
            self.down()

    def start_api(self, *manifests: str, **options):
        """The API stand-in on the router (HTTPS, RBAC; `options` go to ApiStandIn), with
        pyxlb installed as docs/deploy.md says (deploy/namespace.yaml and deploy/rbac.yaml,
        then each of `manifests`, paths under deploy/) and the lab's Node objects. A
        manifest the API refuses raises; the caller stops the stand-in it gets back."""
        with self.in_router():          # a server socket made here listens in the lab
            api = ApiStandIn(host=self.api_host, tls=True, authorization="RBAC",
                             **options).start()
        try:
            for name in ("namespace.yaml", "rbac.yaml", *manifests):
                refused = api.apply_manifests(DEPLOY / name)
                if refused:
                    raise PyxlbError(f"the API refused deploy/{name}: {refused}")
            for node in self.node_objects():
                api.create(node)
        except BaseException:
            api.stop()
            raise
        return api

    def node_objects(self) -> List[dict]:
        """The Node objects a cluster would have for n1-n3 (Ready, InternalIPs)."""
        out = []
        for node in KNODES:
            out.append({"apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node}},
                        "spec": {},
                        "status": {"addresses": [
                            {"type": "InternalIP", "address": str(node_addr(node, 4))},
                            {"type": "InternalIP", "address": str(node_addr(node, 6))},
                            {"type": "Hostname", "address": node}],
                            "conditions": [{"type": "Ready", "status": "True"}]}})
        return out

    def down(self) -> List[str]:
        for node in list(self.agents) + list(self.containers):
            with contextlib.suppress(Exception):
                self.stop_agent(node, signal.SIGKILL, timeout=5)
        # containers of this prefix left by an earlier run that crashed
        left = podman(["ps", "--all", "--quiet", "--filter", f"name=^{self.prefix}-agent-"],
                      check=False).stdout.split() if shutil.which("podman") else []
        if left:
            podman(["rm", "--force", *left], check=False)
        return [f"container {c}" for c in left] + super().down()
