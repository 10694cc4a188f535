"""Kubernetes, end to end: three nodes, each running a real `pyxlb agent` process against the
API stand-in, and real TCP connections from the client through the XDP balancers. The agents
run as a cluster runs them: in-cluster configuration (service account token and CA, HTTPS),
with exactly the permissions of deploy/rbac.yaml, enforced by the stand-in, and Services in
namespaces other than the agents' own.

A Local Service has its pods spread 2/1/0 over n1/n2/n3. The agents allocate its IP (one of
them, elected), derive the backends from the EndpointSlice and program their balancers.
Connections land on the nodes in a 2:1:0 ratio, and each node sees the client's own address
(the whole point of Local: no SNAT, and no imbalance). The Kubernetes docs' own example
(`kubectl expose ... --type=LoadBalancer`, no class) gets an address and serves on its port.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import pytest
from pyroute2 import NetNS

from pyxlb.k8s import objects as o
from pyxlb.lab import CLIENT, ROUTER, VIP4, node_addr, scenarios

from tests.support.k8slab import AUTO_VIP4, HEALTH_CHECK_PORT, KNODES, KubeLab

SHOP = "shop"               # the Local Service's namespace (the docs' example: default)

CONNECTIONS = 300
FIRST_PORT = 33000          # client source ports of this module (outside the other tests')


def _wait(check, timeout, what, lab=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    logs = "".join(f"\n--- agent {n} ---\n{lab.log_of(n)[-3000:]}" for n in KNODES) if lab else ""
    raise AssertionError(f"timed out waiting for {what}{logs}")


def start_agent(lab, api, node):
    if lab.image is not None:       # a containerised agent runs the DaemonSet's own settings
        lab.start_agent(node, api)
    else:
        lab.start_agent(node, api, "--lease-duration", "2")


@pytest.fixture(scope="module")
def klab_module():
    """The module's lab, built once: the stand-in on the router, installed as docs/deploy.md
    says, and an agent on every node. Tests take it through `klab`."""
    yield from installed(KubeLab(f"k{os.getpid() % 100000}"))


def installed(lab):
    """Build `lab`, install pyxlb in its API as docs/deploy.md says, start every agent;
    yield (lab, api); then check the agents were refused nothing, and take it all down.
    tests/image/ runs this module's tests with containerised agents through it."""
    with lab.running() as api:
        api.create(o.namespace(SHOP))
        # VIP4 only to whoever asks for it by name; every other Service gets AUTO_VIP4
        api.create(o.ip_pool("lab", [f"{VIP4}/32"], auto_assign=False))
        api.create(o.ip_pool("lab-auto", [f"{AUTO_VIP4}/32"]))
        for node in KNODES:
            start_agent(lab, api, node)
        yield lab, api


@pytest.fixture
def klab(klab_module):
    """The module's lab as the module built it, whatever a test before this one did (or
    failed to undo): every agent running, every node's link up and its port flooded to, VIP
    traffic routed to n1."""
    lab, api = klab_module
    for node in KNODES:
        lab.restore_link(node)
        if not lab.agent_runs(node):
            start_agent(lab, api, node)
    lab.flood(KNODES, True)
    lab.route_via("n1")
    return lab, api


def ensure_web(api):
    """shop/web: a Local Service on VIP4 (each test that uses it makes it if missing)."""
    if api.get("Service", "web", SHOP) is None:
        api.create(o.service("web", SHOP, policy="Local", health_port=HEALTH_CHECK_PORT,
                             load_balancer_ip=str(VIP4)))
    if api.get("EndpointSlice", "web-ipv4", SHOP) is None:
        api.create(o.spread("web", {"n1": 1}, namespace=SHOP))


def test_local_service_traffic_lands_on_nodes_by_their_pods(klab):
    lab, api = klab
    ensure_web(api)
    api.update(o.spread("web", {"n1": 2, "n2": 1}, namespace=SHOP, name="web-ipv4"))
    _wait(lambda: o.ingress(api.get("Service", "web", SHOP)) == [str(VIP4)], 20,
          "the Service's status to carry the VIP", lab)

    def programmed(node):
        """Every node holds the same VIP; only the backend that is the node itself is
        local (passed up to its own stack rather than tunnelled)."""
        want = {str(node_addr(n, 4)): (w, n == node) for n, w in (("n1", 2), ("n2", 1))}
        with lab.datapath(node) as dp:
            v = dp.layout(refresh=True).state.vip(f"{VIP4}:80/tcp")
        return v is not None and {str(b.address): (b.weight, b.local)
                                  for b in v.backends if b.state == "active"} == want

    for node in KNODES:
        _wait(lambda node=node: programmed(node), 20, f"{node}'s balancer to hold the VIP", lab)

    seen = Counter()
    clients = set()
    for i in range(CONNECTIONS):
        name, client = lab.who(4, sport=FIRST_PORT + i)
        seen[name] += 1
        clients.add(client)
    assert clients == {str(node_addr(CLIENT, 4))}, "the nodes see the client's own address"
    # the Vagrant lab's check (pyxlb/lab/scenarios.py): 2:1 within 10 points, n3 exactly 0
    shares = scenarios.compare(scenarios.pod_shares({"n1": 2, "n2": 1, "n3": 0}), seen,
                               tolerance=0.10)
    assert shares.ok, shares.table()

    # the agent that owns n1's datapath dies: its balancer keeps forwarding the same flows
    lab.stop_agent("n1", signal.SIGKILL)
    again = Counter(lab.who(4, sport=FIRST_PORT + i)[0] for i in range(60))
    assert sum(again.values()) == 60 and set(again) <= {"n1", "n2"}

    # a restarted agent adopts the pinned datapath, and follows a change: pods move to n3
    start_agent(lab, api, "n1")
    api.update(o.spread("web", {"n3": 2}, namespace=SHOP, name="web-ipv4"))

    def moved():
        with lab.datapath("n1") as dp:
            v = dp.layout(refresh=True).state.vip(f"{VIP4}:80/tcp")
        return {str(b.address) for b in v.backends} == {str(node_addr("n3", 4))}

    _wait(moved, 20, "the restarted agent to follow the EndpointSlice", lab)
    after = Counter(lab.who(4, sport=FIRST_PORT + CONNECTIONS + i)[0] for i in range(30))
    assert after == Counter({"n3": 30})


def test_the_docs_kubectl_expose_example_serves_on_its_port(klab):
    """The Kubernetes docs' example, on a default install: `kubectl expose deployment
    example --port=8765 --target-port=9376 --name=example-service --type=LoadBalancer`.
    No loadBalancerClass, the default namespace, Cluster policy (the API server's default):
    it gets the automatic pool's address and serves on 8765, its pods listening on 9376."""
    lab, api = klab
    lab.serve_service(AUTO_VIP4, 8765, 9376)        # the Deployment's pods and kube-proxy
    # what that kubectl command sends (the Deployment's labels become the selector)
    api.create({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "example-service", "namespace": "default",
                             "labels": {"app": "example"}},
                "spec": {"ports": [{"port": 8765, "protocol": "TCP", "targetPort": 9376}],
                         "selector": {"app": "example"}, "type": "LoadBalancer"}})
    api.create(o.endpoint_slice("example-service", [
        o.endpoint(f"10.244.{i}.2", node) for i, node in enumerate(KNODES, 1)],
        ports=((9376, "TCP"),)))
    _wait(lambda: o.ingress(api.get("Service", "example-service", "default")) ==
          [str(AUTO_VIP4)], 20, "example-service's address", lab)
    svc = api.get("Service", "example-service", "default")
    assert svc["spec"]["externalTrafficPolicy"] == "Cluster"
    assert "loadBalancerClass" not in svc["spec"]

    def programmed(node):
        """The VIP on port 8765 with every node as a backend (Cluster policy)."""
        with lab.datapath(node) as dp:
            v = dp.layout(refresh=True).state.vip(f"{AUTO_VIP4}:8765/tcp")
        return v is not None and {str(b.address) for b in v.backends} == {
            str(node_addr(n, 4)) for n in KNODES}

    # (until n1's balancer holds the VIP, n1's own stack would answer: wait for all)
    for node in KNODES:
        _wait(lambda node=node: programmed(node), 20, f"{node}'s balancer to hold it", lab)
    seen = Counter(lab.who(4, sport=FIRST_PORT + 2 * CONNECTIONS + i, port=8765,
                           vip=AUTO_VIP4)[0] for i in range(60))
    assert sum(seen.values()) == 60 and set(seen) == set(KNODES), seen   # every ready node


# -- L2 announcement by the agents ------------------------------------------------------------

def _sh(*args):
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout


def _mac(lab, node):
    with NetNS(lab.ns(node)) as n:
        return n.get_links(n.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS")


def _router_mac(lab):
    out = _sh("ip", "-n", lab.ns(ROUTER), "neigh", "show", str(VIP4), "dev", "br0").split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


def _answers(lab, n):
    out = []
    for _ in range(n):
        try:
            out.append(lab.who(4, timeout=1.0)[0])
        except Exception:           # a flow to the dead node: no answer
            out.append(None)
    return out


def test_l2_the_agents_elect_an_owner_among_nodes_with_pods_and_fail_over(klab):
    """The lab's pool announces by L2 (the IPPool default). The router reaches the VIP
    on-link: it ARPs, and exactly one agent's balancer answers — never n3, which holds no
    pod of the Service. The owner's node dies (agent killed, link down): another node with
    pods answers within seconds and requests flow again."""
    lab, api = klab
    ensure_web(api)
    api.update(o.spread("web", {"n1": 1, "n2": 1}, namespace=SHOP, name="web-ipv4"))

    def programmed(node):
        with lab.datapath(node) as dp:
            v = dp.layout(refresh=True).state.vip(f"{VIP4}:80/tcp")
        return v is not None and {str(b.address) for b in v.backends if b.state == "active"} \
            == {str(node_addr(n, 4)) for n in ("n1", "n2")}

    # when this test made the Service, a node whose balancer does not hold the VIP yet drops
    # the flows the owner sends it (its stack has no such address): wait for all of them
    for node in KNODES:
        _wait(lambda node=node: programmed(node), 20, f"{node}'s balancer to hold the VIP", lab)
    macs = {node: _mac(lab, node) for node in KNODES}
    dead = None
    try:
        lab.flood(KNODES, False)
        with NetNS(lab.ns(ROUTER)) as r:
            r.route("replace", dst=f"{VIP4}/32", oif=r.link_lookup(ifname="br0")[0])
        _sh("ip", "-n", lab.ns(ROUTER), "neigh", "flush", "to", str(VIP4))

        def owner():
            # a request makes the router resolve the VIP; whose MAC answered?
            lab.who(4, timeout=1.0)
            mac = _router_mac(lab)
            return next((n for n, m in macs.items() if m == mac), None)

        _wait(lambda: owner() in ("n1", "n2"), 20, "an owner among n1 and n2", lab)
        first = owner()
        for _ in range(20):
            assert owner() == first, "ownership moved with nothing failing"
        dead = first
        lab.stop_agent(dead, signal.SIGKILL)
        lab.set_link(dead, False)
        survivor = "n2" if dead == "n1" else "n1"
        _wait(lambda: owner() == survivor, 15, f"{survivor} to take the VIP over", lab)
        # the dead node's pods stay in the EndpointSlice until Kubernetes notices (or its
        # healthCheckNodePort fails): flows hashed to it fail meanwhile, the others flow
        assert survivor in _answers(lab, 10)
        api.update(o.spread("web", {survivor: 1}, namespace=SHOP,      # the node controller
                            name="web-ipv4"))
        _wait(lambda: _answers(lab, 10) == [survivor] * 10, 15, "every request to flow", lab)
    finally:
        if dead is not None:
            lab.restore_link(dead)
            start_agent(lab, api, dead)
        lab.route_via("n1")
        lab.flood(KNODES, True)
