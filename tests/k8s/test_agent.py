"""The agent and the IP controller with the real lightkube client against the API stand-in,
programming a real datapath (BPF maps in the kernel, not attached to any interface).

Scenarios from the issue: a Service gets an IP, status and finalizer; EndpointSlice changes
reach the maps; dropped watches and 410 Gone converge without a missed change; the API going
away leaves the datapath as it was (also across an agent restart); two controllers share
one allocator through a Lease, with handover on expiry and no double allocation; deleting a
Service releases its IP and its finalizer.
"""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import time

import pytest

from pyxlb import netns as nsmod
from pyxlb.datapath import Datapath
from pyxlb.k8s import objects as o
from pyxlb.k8s.agent import Agent, AgentSettings
from pyxlb.k8s.controller import Controller
from pyxlb.k8s.kube import FINALIZER, connect

from tests.support.standin import ApiStandIn

NODES = {"n1": "10.0.0.1", "n2": "10.0.0.2", "n3": "10.0.0.3"}
POOL = "192.0.2.0/29"
# Services live where users put them: two namespaces, neither the agent's (pyxlb-system)
SHOP, BLOG = "shop", "blog"


def service(name, ns=SHOP, **kw):
    return o.service(name, ns, **kw)


def spread(service_name, per_node, ns=SHOP, **kw):
    return o.spread(service_name, per_node, namespace=ns, **kw)


def endpoint_slice(service_name, endpoints, ns=SHOP, **kw):
    return o.endpoint_slice(service_name, endpoints, namespace=ns, **kw)


@pytest.fixture
def api():
    server = ApiStandIn(bookmark_interval=0.2).start()
    server.create(o.namespace("pyxlb-system"))      # as deploy/namespace.yaml does
    for ns in (SHOP, BLOG):
        server.create(o.namespace(ns))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def cluster(api):
    """Three Ready nodes and one IP pool."""
    for name, addr in NODES.items():
        api.create(o.node(name, [addr]))
    api.create(o.ip_pool("public", [POOL]))
    return api


class Running:
    """Agents and controllers started by a test, all stopped at the end."""

    def __init__(self, api):
        self.api = api
        self.things = []
        self.datapaths = []

    def connect(self):
        return connect(self.api.url)

    def datapath(self, pin_dir=None):
        dp = Datapath.load(pin_dir=pin_dir) if pin_dir is None else Datapath.create(pin_dir)
        self.datapaths.append(dp)
        return dp

    def agent(self, node="n1", dp=None, **kw) -> Agent:
        # no kube-proxy answers the healthCheckNodePort the API gives a Local Service here
        # (the nodes' addresses are not even local): failing probes would empty the rings
        kw.setdefault("health_fall", 1_000_000)
        settings = AgentSettings(node_name=node, debounce=0.01, watch_timeout=5, **kw)
        agent = Agent(settings, dp or self.datapath(), self.connect)
        self.things.append(agent)
        return agent.start()

    def controller(self, agent: Agent, identity: str, lease: float = 1.0) -> Controller:
        c = Controller(self.connect, agent.services.snapshot, agent.tsettings,
                       namespace="pyxlb-system", lease_duration=lease, identity=identity,
                       watch_timeout=5)
        agent.on_service_change = c.service_changed
        agent.on_problems = c.post_problems
        self.things.append(c)
        return c.start()

    def stop(self):
        for t in reversed(self.things):
            try:
                t.stop()
            except Exception:
                pass
        for dp in self.datapaths:
            dp.close()


@pytest.fixture
def run(cluster):
    r = Running(cluster)
    try:
        yield r
    finally:
        r.stop()


def eventually(check, timeout=10.0, what="condition"):
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        try:
            last = check()
            if last:
                return last
        except (AssertionError, KeyError) as exc:
            last = exc
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def backends(dp, vip: str):
    """{node address: (weight, state, local)} of a VIP in the maps (None: no such VIP)."""
    v = dp.layout(refresh=True).state.vip(vip)
    if v is None:
        return None
    return {str(b.address): (b.weight, b.state, b.local) for b in v.backends}


def svc_ips(api, name, ns=SHOP):
    return o.ingress(api.get("Service", name, ns))


def events(api, reason=None):
    return [e for e in api.list("Event")
            if reason is None or e.get("reason") == reason]


# -- the whole path: Service → IP → maps → changes → deletion ---------------------------------

def test_a_service_gets_an_ip_and_its_nodes_become_backends(run):
    api = run.api
    agent = run.agent("n1")
    run.controller(agent, "c1")
    api.create(service("web", policy="Local"))
    api.create(spread("web", {"n1": 2, "n2": 1}))
    # the same name in another namespace: another Service, its own address and ring
    api.create(service("web", BLOG, policy="Local"))
    api.create(spread("web", {"n3": 1}, BLOG))

    ip = eventually(lambda: svc_ips(api, "web"), what="an ingress IP")[0]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(POOL)
    other = eventually(lambda: svc_ips(api, "web", BLOG), what="blog/web's IP")[0]
    assert other != ip
    blog_vip, blog_ring = f"{other}:80/tcp", {"10.0.0.3": (1, "active", False)}
    assert eventually(lambda: backends(agent.dp, blog_vip) == blog_ring)
    svc = api.get("Service", "web", SHOP)
    assert FINALIZER in svc["metadata"]["finalizers"]
    assert svc["status"]["loadBalancer"]["ingress"][0]["ipMode"] == "VIP"
    assert eventually(lambda: events(api, "IPAllocated"), what="an IPAllocated event")

    vip = f"{ip}:80/tcp"
    # Local: the nodes holding ready endpoints, weighted by how many; n1 is this node
    assert eventually(lambda: backends(agent.dp, vip) == {
        "10.0.0.1": (2, "active", True), "10.0.0.2": (1, "active", False)}, what="the VIP")
    assert agent.ready

    # an endpoint appears on n3, one on n2 starts terminating: the maps follow
    api.update(endpoint_slice("web", [
        o.endpoint("10.244.0.2", "n1"), o.endpoint("10.244.0.3", "n1"),
        o.endpoint("10.244.0.4", "n2", ready=False, serving=True, terminating=True),
        o.endpoint("10.244.0.5", "n3")], name="web-ipv4"))
    assert eventually(lambda: backends(agent.dp, vip) == {
        "10.0.0.1": (2, "active", True), "10.0.0.2": (1, "draining", False),
        "10.0.0.3": (1, "active", False)}, what="the changed backends")

    # Cluster policy: every ready node, weight 1
    api.patch("Service", "web", {"spec": {"externalTrafficPolicy": "Cluster"}}, SHOP)
    assert eventually(lambda: backends(agent.dp, vip) == {
        "10.0.0.1": (1, "active", True), "10.0.0.2": (1, "active", False),
        "10.0.0.3": (1, "active", False)}, what="Cluster backends")
    assert backends(agent.dp, blog_vip) == blog_ring, "blog/web followed shop/web"

    # deletion: the finalizer holds the object until the IP is released, then it goes
    api.delete("Service", "web", SHOP)
    assert eventually(lambda: api.get("Service", "web", SHOP) is None,
                      what="the Service to be deleted")
    assert eventually(lambda: backends(agent.dp, vip) is None, what="the VIP to go")
    assert eventually(lambda: events(api, "IPReleased"), what="an IPReleased event")
    assert backends(agent.dp, blog_vip) == blog_ring and svc_ips(api, "web", BLOG) == [other]
    # the address is free again: the next Service gets the same one
    api.create(service("next", BLOG))
    assert eventually(lambda: svc_ips(api, "next", BLOG),
                      what="an IP for the next Service") == [ip]


def test_refusals_are_events_and_write_no_status(run):
    api = run.api
    agent = run.agent("n1")
    run.controller(agent, "c1")
    api.create(service("outside", load_balancer_ip="198.51.100.7"))
    api.create(service("dns", BLOG, ports=((53, "UDP"), (5353, "SCTP"))))
    ev = eventually(lambda: events(api, "NotInPool"), what="a NotInPool event")
    assert ev[0]["involvedObject"]["name"] == "outside"
    assert "198.51.100.7" in ev[0]["message"]
    assert svc_ips(api, "outside") == []
    # the SCTP port is refused with an Event; the UDP port is served
    ip = eventually(lambda: svc_ips(api, "dns", BLOG), what="an IP for dns")[0]
    sctp = eventually(lambda: events(api, "UnsupportedProtocol"), what="the SCTP event")
    assert sctp[0]["involvedObject"]["name"] == "dns"
    assert eventually(lambda: agent.dp.layout(refresh=True).state.vip(f"{ip}:53/udp"))
    assert agent.dp.layout().state.vip(f"{ip}:5353/udp") is None


def test_a_stateless_service_makes_every_node_a_chain_peer(run):
    """pyxlb.io/flow-table: stateless gives stateless TCP VIPs (the UDP port keeps its
    table, said by a Normal Event), and every Node, a backend or not, becomes a chain peer
    of this node's decapsulation; a bad value is a Warning Event, the default table, and no
    peers (no stateless VIP left)."""
    from pyxlb.chain import chain_id
    from pyxlb.k8s.translate import FLOW_TABLE_ANNOTATION

    api = run.api
    agent = run.agent("n1")
    run.controller(agent, "c1")
    api.create(service("up", ports=((80, "TCP"), (53, "UDP")),
                       annotations={FLOW_TABLE_ANNOTATION: "stateless"}))
    ip = eventually(lambda: svc_ips(api, "up"), what="an IP")[0]

    def peers():
        return {str(a) for a in agent.dp.tables.chain_peers.read().values()}

    def vips():
        state = agent.dp.layout(refresh=True).state
        return state.vip(f"{ip}:80/tcp"), state.vip(f"{ip}:53/udp")

    assert eventually(lambda: vips()[0] is not None and vips()[0].stateless, what="stateless")
    assert vips()[1].flow_table and not vips()[1].stateless
    assert eventually(lambda: peers() == set(NODES.values()), what="every node a peer")
    note = eventually(lambda: events(api, "StatelessTCPOnly"), what="the UDP port's Event")
    assert note[0]["type"] == "Normal" and "53/UDP" in note[0]["message"]
    # a node that is no backend (not Ready) is a peer all the same
    api.create(o.node("n4", ["10.0.0.4"], ready=False))
    assert eventually(lambda: peers() == set(NODES.values()) | {"10.0.0.4"}, what="n4 a peer")
    assert "10.0.0.4" not in {str(b.address) for b in vips()[0].backends}
    assert chain_id("10.0.0.4") in agent.dp.tables.chain_peers.read()
    api.patch("Service", "up", {"metadata": {"annotations": {FLOW_TABLE_ANNOTATION: "on"}}},
              SHOP)
    assert eventually(lambda: events(api, "InvalidFlowTable"), what="the bad value's Event")
    assert eventually(lambda: not vips()[0].stateless and vips()[0].flow_table,
                      what="the default table")
    assert eventually(lambda: peers() == set(), what="no peers without a stateless VIP")


def test_a_service_of_another_class_is_left_alone(run, caplog):
    """Another implementation's Service: no address, no finalizer, no Event; one debug
    line says why, however often it changes. A class-less one is ours (the default)."""
    caplog.set_level(logging.DEBUG, logger="pyxlb.k8s")
    api = run.api
    agent = run.agent("n1")
    run.controller(agent, "c1")
    api.create(service("theirs", BLOG, lb_class="example.com/other"))
    api.create(service("mine", lb_class=None))
    eventually(lambda: svc_ips(api, "mine"), what="our Service's IP")
    for n in range(3):       # changes to it bring no new line
        api.patch("Service", "theirs", {"metadata": {"labels": {"n": str(n)}}}, BLOG)
    time.sleep(0.3)
    theirs = api.get("Service", "theirs", BLOG)
    assert o.ingress(theirs) == [] and not theirs["metadata"].get("finalizers")
    assert [e for e in events(api) if e["involvedObject"]["name"] == "theirs"] == []
    said = [r for r in caplog.records if "blog/theirs: left alone" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.DEBUG
    assert "example.com/other" in said[0].getMessage()


# -- watch faults: dropped connections, 410 Gone, API down --------------------------------------

def test_dropped_watches_and_410_converge_without_a_missed_change(run):
    api = run.api
    agent = run.agent("n1")
    run.controller(agent, "c1")
    where = {"a": SHOP, "b": BLOG}
    for name, ns in where.items():
        api.create(service(name, ns, policy="Local"))
        api.create(spread(name, {"n2": 1}, ns))
    ips = {n: eventually(lambda n=n: svc_ips(api, n, where[n]))[0] for n in where}
    assert eventually(lambda: all(backends(agent.dp, f"{ip}:80/tcp") for ip in ips.values()))

    # connections drop; a change lands meanwhile; the watches resume from their version
    assert api.drop_watches() >= 3
    api.update(spread("a", {"n2": 1, "n3": 3}, name="a-ipv4"))
    assert eventually(lambda: backends(agent.dp, f"{ips['a']}:80/tcp") == {
        "10.0.0.2": (1, "active", False), "10.0.0.3": (3, "active", False)})

    # the API goes away; while down, b loses its endpoints and a Node goes NotReady, and
    # the history is compacted: the resumed watches get 410 and must list again
    lists_before = agent.services.lists
    api.set_down(True)
    time.sleep(0.3)
    api.delete("EndpointSlice", "b-ipv4", BLOG)
    api.update(o.node("n3", [NODES["n3"]], ready=False))
    api.compact()
    assert backends(agent.dp, f"{ips['a']}:80/tcp") is not None, "fail static while down"
    api.set_down(False)
    assert eventually(lambda: backends(agent.dp, f"{ips['b']}:80/tcp") == {},
                      what="b's deleted slice to be noticed after the relist")
    # (each informer comes back after its own backoff)
    assert eventually(lambda: agent.services.lists > lists_before,
                      what="410 Gone to make the Service informer list again")
    # Local policy ignores node readiness (the endpoints say where pods are), Cluster not
    api.patch("Service", "a", {"spec": {"externalTrafficPolicy": "Cluster"}}, SHOP)
    assert eventually(lambda: backends(agent.dp, f"{ips['a']}:80/tcp") == {
        "10.0.0.1": (1, "active", True), "10.0.0.2": (1, "active", False)})


def test_restart_with_the_api_down_keeps_the_pinned_state(cluster, bpffs_dir):
    api = cluster
    first = Running(api)
    try:
        agent = first.agent("n1", dp=first.datapath(bpffs_dir))
        first.controller(agent, "c1")
        api.create(service("web", policy="Local"))
        api.create(spread("web", {"n1": 1, "n2": 2}))
        ip = eventually(lambda: svc_ips(api, "web"))[0]
        want = {"10.0.0.1": (1, "active", True), "10.0.0.2": (2, "active", False)}
        assert eventually(lambda: backends(agent.dp, f"{ip}:80/tcp") == want)
    finally:
        first.stop()
    api.set_down(True)
    second = Running(api)
    try:
        agent = second.agent("n1", dp=second.datapath(bpffs_dir))
        time.sleep(1.0)
        assert not agent.status.synced and agent.status.reconciles == 0
        assert backends(agent.dp, f"{ip}:80/tcp") == want, "nothing applied before a list"
        api.set_down(False)
        assert eventually(lambda: agent.ready, what="the agent to sync")
        assert backends(agent.dp, f"{ip}:80/tcp") == want
        assert agent.status.applied == 0, "the same state: nothing rewritten"
    finally:
        second.stop()
        Datapath.open(bpffs_dir).destroy()


# -- the controller: conflicts, Lease, handover ----------------------------------------------

def test_conflicts_are_retried_from_the_fresh_object(run):
    api = run.api
    agent = run.agent("n1")
    run.controller(agent, "c1")
    api.fail_next(3, code=409, kind="Service", verb="patch")
    api.create(service("web"))
    assert eventually(lambda: svc_ips(api, "web"), what="the status after conflicts")
    assert FINALIZER in api.get("Service", "web", SHOP)["metadata"]["finalizers"]


def test_two_controllers_one_allocator_and_handover_on_lease_expiry(run):
    api = run.api
    a1, a2 = run.agent("n1"), run.agent("n2")
    c1 = run.controller(a1, "c1", lease=1.0)
    c2 = run.controller(a2, "c2", lease=1.0)
    def ns(i):
        return (SHOP, BLOG)[i % 2]
    for i in range(3):
        api.create(service(f"s{i}", ns(i)))
    for i in range(3):
        eventually(lambda i=i: svc_ips(api, f"s{i}", ns(i)))
    assert eventually(lambda: c1.leading != c2.leading, what="exactly one leader")
    leader, standby = (c1, c2) if c1.leading else (c2, c1)
    lease = api.get("Lease", "pyxlb-controller", "pyxlb-system")
    assert lease["spec"]["holderIdentity"] == leader.identity

    # the leader dies without giving the Lease up: the standby waits out the duration
    died = time.monotonic()         # (stop() may take a moment: count from before it)
    leader.stop(release=False)
    assert eventually(lambda: standby.leading, timeout=10, what="the standby to take over")
    assert time.monotonic() - died >= 0.5, "taken over before the Lease expired"
    lease = api.get("Lease", "pyxlb-controller", "pyxlb-system")
    assert lease["spec"]["holderIdentity"] == standby.identity
    assert lease["spec"]["leaseTransitions"] >= 1
    for i in range(3, 6):
        api.create(service(f"s{i}", ns(i)))
    got = [eventually(lambda i=i: svc_ips(api, f"s{i}", ns(i)))[0] for i in range(6)]
    assert len(set(got)) == 6, f"an address was handed out twice: {got}"


def test_a_new_leader_rebuilds_from_statuses(run):
    api = run.api
    a1 = run.agent("n1")
    c1 = run.controller(a1, "c1", lease=1.0)
    api.create(service("old"))
    first = eventually(lambda: svc_ips(api, "old"))
    c1.stop()               # gives the Lease up: the next one leads at once
    a2 = run.agent("n2")
    c2 = run.controller(a2, "c2", lease=1.0)
    assert eventually(lambda: c2.leading)
    api.create(service("new", BLOG))
    second = eventually(lambda: svc_ips(api, "new", BLOG))
    assert first != second, "the new leader knew the old Service's address"
    assert c2.allocator.owners(ipaddress.ip_address(first[0])) == frozenset({"shop/old"})


# -- health: healthCheckNodePort probes take a node out of the ring ---------------------------

def test_a_node_failing_its_health_check_leaves_the_ring_until_it_recovers(netns, healthz):
    """Nodes whose addresses are on the loopback of a namespace of this test's own, each with
    a real /healthz on the Service's health port; the API stand-in and the agent run in that
    namespace too (threads started there stay there)."""
    addrs = {"h1": "10.99.0.11", "h2": "10.99.0.12", "h3": "10.99.0.13"}
    subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
    for addr in addrs.values():
        subprocess.run(["ip", "-n", netns, "addr", "add", f"{addr}/32", "dev", "lo"],
                       check=True)
    with nsmod.enter(netns):
        api = ApiStandIn(bookmark_interval=0.2).start()
        r = Running(api)
        try:
            api.create(o.namespace(SHOP))
            for name, addr in addrs.items():
                api.create(o.node(name, [addr]))
            _health_check_scenario(api, r, addrs, healthz)
        finally:
            r.stop()
            api.stop()


def _health_check_scenario(api, r, addrs, healthz):
    agent = r.agent("h1", health_interval=0.05, health_timeout=0.5, health_fall=3)
    # the API server allocates the healthCheckNodePort; kube-proxy serves it on each node
    port = api.create(service("web", policy="Local"))["spec"]["healthCheckNodePort"]
    checks = {"h2": healthz(addrs["h2"], port), "h3": healthz(addrs["h3"], port)}
    live = api.get("Service", "web", SHOP)
    live["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}
    api.update(live)
    api.create(spread("web", {"h2": 1, "h3": 1}))
    vip = "192.0.2.1:80/tcp"
    both = {addrs["h2"]: (1, "active", False), addrs["h3"]: (1, "active", False)}
    assert eventually(lambda: backends(agent.dp, vip) == both)

    checks["h3"].status = 503           # kube-proxy on h3 says: no local endpoint
    assert eventually(lambda: backends(agent.dp, vip) == {
        addrs["h2"]: (1, "active", False)}, what="h3 to leave the ring")
    checks["h3"].status = 200
    assert eventually(lambda: backends(agent.dp, vip) == both, what="h3 to come back")
    checks["h2"].close()                # nothing answers on h2 at all
    assert eventually(lambda: backends(agent.dp, vip) == {
        addrs["h3"]: (1, "active", False)}, what="h2 to leave the ring")


def test_a_service_that_stops_being_a_load_balancer_gives_its_ip_back(run):
    api = run.api
    agent = run.agent("n1")
    run.controller(agent, "c1")
    api.create(service("web"))
    ip = eventually(lambda: svc_ips(api, "web"))[0]
    assert eventually(lambda: backends(agent.dp, f"{ip}:80/tcp") is not None)
    api.patch("Service", "web", {"spec": {"type": "ClusterIP"}}, SHOP)
    assert eventually(lambda: svc_ips(api, "web") == [], what="the status to be cleared")
    # (the API server clears the status itself on the type change: wait for the controller)
    assert eventually(lambda: FINALIZER not in (
        api.get("Service", "web", SHOP)["metadata"].get("finalizers") or []),
        what="the finalizer to be removed")
    assert eventually(lambda: backends(agent.dp, f"{ip}:80/tcp") is None)
    api.create(service("other", BLOG))
    assert eventually(lambda: svc_ips(api, "other", BLOG)) == [ip], "the address is free again"
