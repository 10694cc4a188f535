"""The agent as a cluster runs it: the `pyxlb agent` process (AgentNode: datapath pinned on
bpffs, not attached) on in-cluster configuration (a service account directory as the
kubelet mounts it, KUBERNETES_SERVICE_HOST/PORT, HTTPS checked against the CA), with exactly
the permissions of deploy/rbac.yaml, enforced by the API stand-in, and Services in namespaces
other than its own.

What the agent's ServiceAccount asked for during the scenario is recorded by the stand-in
and checked against deploy/rbac.yaml both ways: nothing was refused, and every permission the
file grants was needed by some request (least privilege).
"""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path

import pytest
import yaml

from pyxlb.datapath import Datapath
from pyxlb.k8s import objects as o
from pyxlb.k8s.kube import FINALIZER
from pyxlb.k8s.run import AgentNode, Options

from tests.support import standin_auth as auth
from tests.support.standin import ApiStandIn

ROOT = Path(__file__).resolve().parents[2]
NS, SA = "pyxlb-system", "pyxlb-agent"
AGENT = f"system:serviceaccount:{NS}:{SA}"
NODES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}
POOL = "192.0.2.0/29"


def eventually(check, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def shipped_rbac():
    return [d for d in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()) if d]


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """An HTTPS API stand-in enforcing RBAC, installed as deploy/ says (namespace and RBAC
    applied), with three nodes, a pool and two user namespaces; the environment of a pod."""
    with ApiStandIn(tls=True, authorization="RBAC", bookmark_interval=0.2) as api:
        assert api.apply_manifests(ROOT / "deploy" / "namespace.yaml") == []
        assert api.apply_manifests(ROOT / "deploy" / "rbac.yaml") == []
        for ns in ("shop", "blog"):
            api.create(o.namespace(ns))
        for name, addr in NODES.items():
            api.create(o.node(name, [addr]))
        # announced by no one: these agents are not attached to an interface
        api.create(o.ip_pool("public", [POOL], announce="none"))
        for key, value in api.service_env().items():
            monkeypatch.setenv(key, value)
        yield api


class Agents:
    """`pyxlb agent` processes (in this process), each with its own service account token
    as each pod has, stopped and their datapaths destroyed at the end."""

    def __init__(self, api, base: Path, bpffs_dir: str):
        self.api, self.base, self.bpffs_dir = api, base, bpffs_dir
        self.nodes = {}

    def start(self, node: str, **kw) -> AgentNode:
        sa = self.api.write_service_account(self.base / f"sa-{node}", NS, SA)
        opts = Options(node_name=node, pin_dir=f"{self.bpffs_dir}/{node}", service_account=sa,
                       attach=False, metrics_port=0, probe_port=0, lease_duration=1.0,
                       max_vips=64, max_flows=4096, max_flows6=2048, identity=node, **kw)
        n = AgentNode(opts)
        self.nodes[node] = n
        return n.start()

    def token(self, node: str) -> str:
        return (self.base / f"sa-{node}" / "token").read_text().strip()

    def stop(self):
        for n in self.nodes.values():        # every one, even when one fails to stop
            try:
                n.stop()
            except Exception:
                pass
            if n.dp is not None:
                Datapath.open(n.opts.pin_dir).destroy()


@pytest.fixture
def agents(cluster, tmp_path, bpffs_dir):
    a = Agents(cluster, tmp_path, bpffs_dir)
    try:
        yield a
    finally:
        a.stop()


def ips(api, ns, name):
    svc = api.get("Service", name, ns)
    return o.ingress(svc) if svc else []


def vip_backends(node: AgentNode, vip: str):
    v = node.dp.layout(refresh=True).state.vip(vip)
    return None if v is None else sorted(str(b.address) for b in v.backends)


def test_services_in_every_namespace_with_the_shipped_rbac(cluster, agents):
    """shop/web and blog/web (one name, two namespaces) each get their own address, status,
    finalizer, Events in their own namespace and VIP; deleting one leaves the other; the
    agents never got a 403, and every permission of deploy/rbac.yaml was used."""
    api = cluster
    n1 = agents.start("n1")
    n2 = agents.start("n2")
    # not the docs' lb class, no class at all: `kubectl expose ... --type=LoadBalancer`
    api.create(o.service("web", "shop", lb_class=None))
    api.create(o.spread("web", {"n1": 1}, namespace="shop"))
    api.create(o.service("web", "blog", lb_class=None, ports=((443, "TCP"),)))
    api.create(o.spread("web", {"n2": 1}, namespace="blog"))

    shop = eventually(lambda: ips(api, "shop", "web"), what="shop/web's address")[0]
    blog = eventually(lambda: ips(api, "blog", "web"), what="blog/web's address")[0]
    assert shop != blog
    for ip in (shop, blog):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(POOL)
    for ns in ("shop", "blog"):
        svc = api.get("Service", "web", ns)
        assert FINALIZER in svc["metadata"]["finalizers"]
        assert eventually(lambda ns=ns: [e for e in api.list("Event", ns)
                                         if e["reason"] == "IPAllocated"
                                         and e["involvedObject"]["namespace"] == ns],
                          what=f"the IPAllocated Event in {ns}")
    # both agents serve both Services, each VIP with its own ring (Cluster policy: every
    # ready node); the stand-in defaulted externalTrafficPolicy, the fixture did not write it
    assert api.get("Service", "web", "shop")["spec"]["externalTrafficPolicy"] == "Cluster"
    every = sorted(NODES.values())
    for n in (n1, n2):
        assert eventually(lambda n=n: vip_backends(n, f"{shop}:80/tcp") == every)
        assert eventually(lambda n=n: vip_backends(n, f"{blog}:443/tcp") == every)

    # the token rotates (the kubelet replaces it; the old one dies): the agents carry on
    for node in ("n1", "n2"):
        api.rotate_service_account(agents.base / f"sa-{node}", revoke_old=True)
    api.create(o.service("api", "shop", lb_class=None))
    assert eventually(lambda: ips(api, "shop", "api"), what="an address after rotation")

    # one of the two goes; the other keeps its address and its VIP
    api.delete("Service", "web", "shop")
    assert eventually(lambda: api.get("Service", "web", "shop") is None,
                      what="shop/web to be finalized and go")
    for n in (n1, n2):
        assert eventually(lambda n=n: vip_backends(n, f"{shop}:80/tcp") is None)
        assert vip_backends(n, f"{blog}:443/tcp") == every
    assert ips(api, "blog", "web") == [blog]
    n1.stop()            # gives the Lease up (get + update of it)
    n2.stop()

    # what the agents asked for, as the API server recorded it
    mine = [r for r in api.audit if r.user == AGENT]
    refused = [r.attributes.describe() for r in mine if not r.allowed or r.code == 403]
    assert refused == [], f"deploy/rbac.yaml refused the agent: {refused}"
    rbac = shipped_rbac()
    unused = [str(p) for p in auth.unused_permissions(rbac, mine)]
    assert unused == [], f"deploy/rbac.yaml grants what the agent never used: {unused}"


@pytest.mark.parametrize("perm", [str(p) for p in auth.permissions_of(shipped_rbac())])
def test_each_shipped_permission_is_needed(perm):
    """Taking any one permission out of deploy/rbac.yaml refuses a request the agent makes
    (as recorded above): offline, on the requests every agent makes at start and on a
    Service's life."""
    rbac = shipped_rbac()
    p = next(p for p in auth.permissions_of(rbac) if str(p) == perm)
    reduced = auth.without_permission(rbac, p)
    groups = ("system:serviceaccounts", f"system:serviceaccounts:{NS}", "system:authenticated")
    refused = [a.describe() for a in AGENT_REQUESTS
               if not auth.authorize(reduced, AGENT, groups, a)]
    assert refused, f"nothing the agent does needs {perm}"


def _req(verb, resource, namespace="", name="", group="", sub=""):
    return auth.RequestAttributes(verb=verb, resource=resource, api_group=group,
                                  namespace=namespace, name=name, subresource=sub)


# The requests an agent makes, written out (the scenario test above checks them against what
# the agent really sent: a request missing here shows up there as an unused permission).
AGENT_REQUESTS = [
    _req("list", "services"), _req("watch", "services"),
    _req("list", "endpointslices", group="discovery.k8s.io"),
    _req("watch", "endpointslices", group="discovery.k8s.io"),
    _req("list", "nodes"), _req("watch", "nodes"),
    _req("list", "ippools", group="pyxlb.io"), _req("watch", "ippools", group="pyxlb.io"),
    _req("list", "bgppeers", group="pyxlb.io"), _req("watch", "bgppeers", group="pyxlb.io"),
    _req("patch", "services", "shop", "web"),
    _req("patch", "services", "shop", "web", sub="status"),
    _req("create", "events", "shop"),
    _req("create", "leases", NS, group="coordination.k8s.io"),
    _req("get", "leases", NS, "pyxlb-controller", group="coordination.k8s.io"),
    _req("update", "leases", NS, "pyxlb-controller", group="coordination.k8s.io"),
]


def test_the_written_out_requests_are_what_an_agent_sends(cluster, agents):
    """AGENT_REQUESTS (used offline above) against a short real run: the same set."""
    api = cluster
    n1 = agents.start("n1")
    api.create(o.service("web", "shop", lb_class=None))
    eventually(lambda: ips(api, "shop", "web"), what="an address")
    api.delete("Service", "web", "shop")
    eventually(lambda: api.get("Service", "web", "shop") is None, what="the Service to go")
    n1.stop()

    def shape(a):
        return (a.verb, a.api_group, a.resource, a.subresource, bool(a.namespace),
                bool(a.name))
    sent = {shape(r.attributes) for r in api.audit if r.user == AGENT}
    assert sent == {shape(a) for a in AGENT_REQUESTS}


def test_a_rule_taken_out_of_the_rbac_stops_the_agent_with_a_403(cluster, agents, caplog):
    """Without patch on services/status (the rule is gone from the cluster's ClusterRole),
    the Service gets no address and the agent logs the API server's refusal."""
    api = cluster
    role = api.get("ClusterRole", "pyxlb-agent")
    role["rules"] = [r for r in role["rules"] if "services/status" not in r["resources"]]
    api.update(role)
    agents.start("n1")
    api.create(o.service("web", "shop", lb_class=None))
    refused = eventually(lambda: [r for r in api.audit if r.user == AGENT and r.code == 403],
                         what="a refusal")
    assert refused[0].attributes.describe() == "patch services/status 'web' in shop"
    assert ips(api, "shop", "web") == []
    assert eventually(lambda: 'cannot patch resource "services/status"' in caplog.text,
                      what="the refusal in the log")


# -- the Lease: a killed allocator is replaced, no address goes out twice ------------------


def test_a_killed_allocator_is_replaced_and_no_address_goes_out_twice(cluster, agents):
    """Both agents watch shop and blog separately (--namespaces). n2's watch of shop lags:
    it never saw shop/web get its address when the allocator n1 is killed (SIGKILL: the
    Lease is not given up). n2 takes over once the Lease expires, with that stale list, and
    must still not hand shop/web's address to blog/web, created while no one allocated."""
    api = cluster
    n1 = agents.start("n1", namespaces=("shop", "blog"))
    assert eventually(lambda: n1.controller.leading, what="n1 to lead")
    n2 = agents.start("n2", namespaces=("shop", "blog"))
    assert eventually(lambda: n2.agent.ready, what="n2 to sync")
    api.stall_watches("Service", namespace="shop", token=agents.token("n2"))
    api.create(o.service("web", "shop", lb_class=None))
    shop = eventually(lambda: ips(api, "shop", "web"), what="shop/web's address")
    time.sleep(0.3)
    assert "shop/web" not in n2.agent.services.snapshot(), "n2's list of shop is not stale"

    # killed: its threads stop, nothing is given up (a real SIGKILL ends the process)
    killed = time.monotonic()
    n1.controller.stop(release=False)
    n1.agent.stop()
    api.create(o.service("web", "blog", lb_class=None))
    assert eventually(lambda: n2.controller.leading, what="n2 to take over")
    assert time.monotonic() - killed >= 0.5, "taken over before the Lease expired"
    blog = eventually(lambda: ips(api, "blog", "web"), what="blog/web's address")
    assert blog != shop, f"{shop} handed out twice"
    assert api.get("Lease", "pyxlb-controller", NS)["spec"]["holderIdentity"] == "n2"

    # the lag ends: n2 sees shop/web as it is, and keeps both where they are
    api.resume_watches()
    assert eventually(lambda: "shop/web" in n2.agent.services.snapshot())
    api.create(o.service("api", "shop", lb_class=None))
    third = eventually(lambda: ips(api, "shop", "api"), what="a third address")
    assert (ips(api, "shop", "web"), ips(api, "blog", "web")) == (shop, blog)
    assert len({shop[0], blog[0], third[0]}) == 3
