"""Kubernetes objects -> DesiredState (pyxlb.k8s.translate), from fixtures shaped like a real
cluster's JSON (tests/k8s/fixtures: one v1 List per scenario, the base Nodes in nodes.json)."""

from __future__ import annotations

import copy
import ipaddress
import json
import random
from pathlib import Path

import kubernetes_validate
import pytest
from hypothesis import HealthCheck, given, settings as hsettings
from hypothesis import strategies as st

from pyxlb.k8s.translate import (
    FLOW_TABLE_ANNOTATION, NodeIndex, Problem, ServiceResult, Settings, SettingsError,
    Translation, combine, foreign_class, health_targets, is_ours, service_key, service_vips,
    slice_service, translate, wanted_ports, with_chain_peers)
from pyxlb.state import DesiredState, VipKey

FIXTURES = Path(__file__).parent / "fixtures"
SCENARIOS = sorted(p.name for p in FIXTURES.glob("*.json") if p.name != "nodes.json")


def load(name: str) -> list:
    return json.loads((FIXTURES / name).read_text())["items"]


def objects(*names: str, base_nodes: bool = True):
    """(Services, EndpointSlices, Nodes) from the named fixtures, plus the base cluster's Nodes."""
    items = [o for n in (("nodes.json",) if base_nodes else ()) + names for o in load(n)]
    kinds = {"Service": [], "EndpointSlice": [], "Node": []}
    for o in items:
        kinds[o["kind"]].append(o)
    return kinds["Service"], kinds["EndpointSlice"], kinds["Node"]


def run(*names: str, node: str = "node-a", health=None, **kw) -> Translation:
    services, slices, nodes = objects(*names)
    return translate(services, slices, nodes, Settings(node_name=node, **kw), health)


def summary(state: DesiredState) -> dict:
    """{"192.0.2.10:80/tcp": "10.0.0.2 w2, 10.0.0.3 w1 draining, ..."}: what a row expects."""
    out = {}
    for v in state:
        parts = []
        for b in v.backends:
            text = f"{b.address} w{b.weight}"
            if b.state != "active":
                text += f" {b.state}"
            if b.local:
                text += " local"
            parts.append(text)
        out[str(v.key)] = ", ".join(parts)
    return out


def reasons(problems) -> list:
    return sorted((p.service, p.reason) for p in problems)


CLUSTER_FROM_A = "10.0.0.1 w1 local, 10.0.0.2 w1, 10.0.0.3 w1"

# (id, fixture, settings, health, expected VIPs, expected (service, reason) problems)
ROWS = [
    ("local-weights-2-1-0", "local-weights.json", {}, None,
     {"192.0.2.10:80/tcp": "10.0.0.2 w2, 10.0.0.3 w1"}, []),
    ("local-this-node-passes-up", "local-weights.json", {"node": "node-b"}, None,
     {"192.0.2.10:80/tcp": "10.0.0.2 w2 local, 10.0.0.3 w1"}, []),
    ("local-health-failing-node-leaves", "local-weights.json", {},
     {("shop/web", "node-b"): False, ("shop/web", "node-c"): True},
     {"192.0.2.10:80/tcp": "10.0.0.3 w1"}, []),
    ("health-of-another-service-ignored", "local-weights.json", {},
     {("shop/other", "node-b"): False},
     {"192.0.2.10:80/tcp": "10.0.0.2 w2, 10.0.0.3 w1"}, []),
    ("terminating-endpoints-drain", "local-terminating.json", {}, None,
     {"192.0.2.11:443/tcp": "10.0.0.2 w2 draining, 10.0.0.3 w1"}, []),
    ("draining-node-kept-when-probe-fails", "local-terminating.json", {},
     {("shop/cart", "node-b"): False, ("shop/cart", "node-c"): False},
     {"192.0.2.11:443/tcp": "10.0.0.2 w2 draining"}, []),
    ("cluster-eligible-nodes-only", "cluster.json", {}, None,
     {"192.0.2.12:443/tcp": CLUSTER_FROM_A}, []),
    ("cluster-ignores-health", "cluster.json", {"node": "node-c"},
     {("shop/api", "node-b"): False},
     {"192.0.2.12:443/tcp": "10.0.0.1 w1, 10.0.0.2 w1, 10.0.0.3 w1 local"}, []),
    ("cluster-from-an-ineligible-node", "cluster.json", {"node": "node-d"}, None,
     {"192.0.2.12:443/tcp": "10.0.0.1 w1, 10.0.0.2 w1, 10.0.0.3 w1"}, []),
    ("dual-stack-tcp-udp", "dual-stack.json", {}, None,
     {"192.0.2.20:80/tcp": CLUSTER_FROM_A, "192.0.2.20:5004/udp": CLUSTER_FROM_A,
      "[2001:db8::20]:80/tcp": "fd00::1 w1 local, fd00::2 w1",
      "[2001:db8::20]:5004/udp": "fd00::1 w1 local, fd00::2 w1"}, []),
    ("named-target-ports", "named-ports.json", {}, None,
     {"192.0.2.21:80/tcp": CLUSTER_FROM_A,
      "192.0.2.21:9100/tcp": "10.0.0.1 w1 local, 10.0.0.2 w1"}, []),
    ("sctp-refused-rest-served", "sctp.json", {}, None,
     {"192.0.2.22:5060/tcp": CLUSTER_FROM_A, "192.0.2.22:5060/udp": CLUSTER_FROM_A},
     [("voip/sip", "UnsupportedProtocol")]),
    ("shared-ip-different-ports", "shared-ip.json", {}, None,
     {"192.0.2.30:53/tcp": CLUSTER_FROM_A, "192.0.2.30:53/udp": CLUSTER_FROM_A,
      "192.0.2.30:80/tcp": "10.0.0.3 w1", "192.0.2.30:443/tcp": "10.0.0.3 w1"}, []),
    ("port-conflict-older-wins", "port-conflict.json", {}, None,
     {"192.0.2.40:80/tcp": CLUSTER_FROM_A, "192.0.2.40:8080/tcp": "10.0.0.3 w1"},
     [("apps/new", "PortConflict")]),
    ("affinity", "affinity.json", {}, None, {"192.0.2.50:80/tcp": CLUSTER_FROM_A}, []),
    ("source-ranges", "source-ranges.json", {}, None,
     {"192.0.2.60:443/tcp": CLUSTER_FROM_A, "192.0.2.61:443/tcp": CLUSTER_FROM_A,
      "[2001:db8::61]:443/tcp": "fd00::1 w1 local, fd00::2 w1, fd00::3 w1",
      "192.0.2.62:443/tcp": CLUSTER_FROM_A, "192.0.2.63:443/tcp": CLUSTER_FROM_A},
     [("secure/field", "NoSourceRangeForFamily"), ("secure/invalid", "InvalidSourceRange")]),
    ("class-ours-only", "classes.json", {"default_class": False}, None,
     {"192.0.2.70:80/tcp": CLUSTER_FROM_A}, []),
    ("class-unset-taken-by-default", "classes.json", {}, None,
     {"192.0.2.70:80/tcp": CLUSTER_FROM_A, "192.0.2.72:80/tcp": CLUSTER_FROM_A}, []),
    ("class-configured", "classes.json",
     {"lb_class": "example.com/other-lb", "default_class": False}, None,
     {"192.0.2.71:80/tcp": CLUSTER_FROM_A}, []),
    ("other-types-ignored", "types.json", {}, None, {}, []),
    ("no-ingress-yet", "pending.json", {}, None, {}, []),
    ("ipv6-vip-needs-ipv6-node", "single-family-nodes.json", {}, None,
     {"192.0.2.80:443/tcp": "10.0.1.1 w1, fd00:1::1 w1",
      "[2001:db8::80]:443/tcp": "fd00:1::1 w1"},
     [("edge/gw", "NoNodeAddress")]),
    ("ingress-family-not-in-ipFamilies", "family-mismatch.json", {}, None,
     {"192.0.2.90:80/tcp": CLUSTER_FROM_A}, [("shop/v4only", "IPFamilyMismatch")]),
    ("hand-made-slices", "hand-made-slices.json", {}, None,
     {"192.0.2.91:80/tcp": "10.0.0.2 w1, 10.0.0.3 w1"}, [("shop/legacy", "NoNodeAddress")]),
]


@pytest.mark.parametrize("name,fixture,opts,health,want,problems", ROWS,
                         ids=[r[0] for r in ROWS])
def test_table(name, fixture, opts, health, want, problems):
    opts = dict(opts)
    result = run(fixture, node=opts.pop("node", "node-a"), health=health, **opts)
    assert summary(result.state) == want
    assert reasons(result.problems) == sorted(problems)
    for v in result.state:
        assert v.mode == "ipip"


def test_every_scenario_is_in_the_table():
    assert {r[1] for r in ROWS} == set(SCENARIOS)


def test_fixtures_are_valid_kubernetes_objects():
    """The fixtures would be accepted by a real API server's schema (no unknown fields)."""
    for name in ["nodes.json", *SCENARIOS]:
        for obj in load(name):
            kubernetes_validate.validate(obj, "1.30.0", strict=True)


def test_all_scenarios_at_once_equal_each_alone():
    """Services do not leak into each other: the whole cluster is the union of its parts
    (each scenario's VIPs are distinct)."""
    services, slices, nodes = objects(*SCENARIOS)
    together = translate(services, slices, nodes, Settings("node-a"))
    alone, problems = {}, []
    for name in SCENARIOS:
        services, slices, _ = objects(name, base_nodes=False)
        r = translate(services, slices, nodes, Settings("node-a"))
        alone.update(summary(r.state))
        problems += reasons(r.problems)
    assert summary(together.state) == alone
    assert reasons(together.problems) == sorted(problems)


# -- settings on every VIP -----------------------------------------------------------------

def test_vip_flags_follow_settings_and_service():
    state = run("affinity.json", "cluster.json", ring_size=251, flow_table=False).state
    session = state.vip("192.0.2.50:80/tcp")
    assert (session.affinity, session.ring_size, session.flow_table) == ("client-ip", 251, False)
    api = state.vip("192.0.2.12:443/tcp")
    assert (api.affinity, api.ring_size, api.source_ranges) == ("none", 251, ())
    assert not api.announce


def test_source_ranges_per_family():
    state = run("source-ranges.json").state
    net = ipaddress.ip_network
    assert state.vip("192.0.2.60:443/tcp").source_ranges == (net("198.51.100.7/32"),
                                                               net("203.0.113.0/24"))
    assert state.vip("[2001:db8::60]:443/tcp") is None            # would be open to all
    assert state.vip("192.0.2.61:443/tcp").source_ranges == (net("203.0.113.0/24"),)
    assert state.vip("[2001:db8::61]:443/tcp").source_ranges == (net("2001:db8:1::/48"),)
    # the field wins over the annotation
    assert state.vip("192.0.2.62:443/tcp").source_ranges == (net("198.51.100.0/24"),)
    # host bits are tolerated, as by the API server
    assert state.vip("192.0.2.63:443/tcp").source_ranges == (net("198.51.100.0/24"),)
    assert state.vip("192.0.2.64:443/tcp") is None                # failing closed


def test_problem_messages_name_the_fault():
    problems = {(p.service, p.reason): p for p in run(*SCENARIOS).problems}
    assert "5060/SCTP" in problems["voip/sip", "UnsupportedProtocol"].message
    assert "apps/old" in problems["apps/new", "PortConflict"].message
    assert "192.0.2.40:80/tcp" in problems["apps/new", "PortConflict"].message
    assert "203.0.113.0/33" in problems["secure/invalid", "InvalidSourceRange"].message
    assert "IPv6" in problems["secure/field", "NoSourceRangeForFamily"].message
    assert "node-v4" in problems["edge/gw", "NoNodeAddress"].message
    assert "node-zz" in problems["shop/legacy", "NoNodeAddress"].message
    assert "2001:db8::90" in problems["shop/v4only", "IPFamilyMismatch"].message
    for p in problems.values():
        assert p.type == "Warning" and "\n" not in p.message and p.message.endswith(".")


def test_traffic_policy_unset_means_cluster():
    services, slices, nodes = objects("local-weights.json")
    del services[0]["spec"]["externalTrafficPolicy"]
    state = translate(services, slices, nodes, Settings("node-a")).state
    assert summary(state) == {"192.0.2.10:80/tcp": CLUSTER_FROM_A}


def test_vip_with_no_backends_is_still_served():
    """Its packets are dropped and counted on the balancer, not passed to a node that has
    nothing for them."""
    services, slices, nodes = objects("local-weights.json")
    state = translate(services, [], nodes, Settings("node-a")).state
    assert summary(state) == {"192.0.2.10:80/tcp": ""}


def test_weight_counts_distinct_endpoints():
    services, slices, nodes = objects("local-weights.json")
    # the same pod listed in a second slice (the controller moving it) counts once
    dup = copy.deepcopy(slices[1])
    dup["metadata"]["name"] = "web-zzzzz"
    state = translate(services, slices + [dup], nodes, Settings("node-a")).state
    assert summary(state) == {"192.0.2.10:80/tcp": "10.0.0.2 w2, 10.0.0.3 w1"}


def test_user_faults_become_problems():
    services, slices, nodes = objects("cluster.json")
    svc = services[0]
    svc["spec"]["ports"] += [{"name": "zero", "protocol": "TCP", "port": 0},
                             {"name": "text", "protocol": "TCP", "port": "8080"}]
    svc["status"]["loadBalancer"]["ingress"].append({"ip": "192.0.2.300"})
    r = translate(services, slices, nodes, Settings("node-a"))
    assert summary(r.state) == {"192.0.2.12:443/tcp": CLUSTER_FROM_A}
    assert reasons(r.problems) == [("shop/api", "InvalidIngressIP"), ("shop/api", "InvalidPort"),
                                   ("shop/api", "InvalidPort")]


def test_state_error_becomes_a_problem():
    """A ring too small for the backends is refused by Vip; the Service gets a Problem."""
    r = run("cluster.json", "affinity.json", ring_size=2)
    assert r.state.vips == ()
    assert reasons(r.problems) == [("shop/api", "InvalidVip"), ("shop/session", "InvalidVip")]
    assert "ring" in r.problems[0].message



# -- the flow table annotation, and chain peers ----------------------------------------------

def _annotated(value, *, udp=False, fixture="cluster.json"):
    """shop/api (Cluster policy, 192.0.2.12:443/tcp) with the flow-table annotation `value`
    (None: none), and with udp a second port, 443/UDP."""
    services, slices, nodes = objects(fixture)
    svc = services[0]
    if value is not None:
        svc["metadata"].setdefault("annotations", {})[FLOW_TABLE_ANNOTATION] = value
    if udp:
        svc["spec"]["ports"].append({"name": "quic", "protocol": "UDP", "port": 443,
                                     "targetPort": 8443, "nodePort": 30950})
    return services, slices, nodes


@pytest.mark.parametrize("value,default,want", [
    (None, True, (True, False)),
    (None, False, (False, False)),
    ("stateless", True, (False, True)),
    (" Stateless ", True, (False, True)),
    ("false", True, (False, False)),
    ("true", False, (True, False)),
])
def test_flow_table_annotation_chooses_the_table(value, default, want):
    services, slices, nodes = _annotated(value)
    r = translate(services, slices, nodes, Settings("node-a", flow_table=default))
    v = r.state.vip("192.0.2.12:443/tcp")
    assert (v.flow_table, v.stateless) == want and r.problems == ()
    assert summary(r.state) == {"192.0.2.12:443/tcp": CLUSTER_FROM_A}


def test_stateless_is_for_tcp_ports_only():
    """A UDP port of a stateless Service keeps the operator's default table, and the
    Service hears so once (a Normal Event, not a Warning: nothing is wrong)."""
    services, slices, nodes = _annotated("stateless", udp=True)
    r = translate(services, slices, nodes, Settings("node-a"))
    tcp, udp = r.state.vip("192.0.2.12:443/tcp"), r.state.vip("192.0.2.12:443/udp")
    assert tcp.stateless and not tcp.flow_table and tcp.mode == "ipip"
    assert not udp.stateless and udp.flow_table
    assert reasons(r.problems) == [("shop/api", "StatelessTCPOnly")]
    p = r.problems[0]
    assert p.type == "Normal" and "443/UDP" in p.message and "\n" not in p.message
    off = translate(services, slices, nodes, Settings("node-a", flow_table=False))
    assert not off.state.vip("192.0.2.12:443/udp").flow_table
    # without the annotation no word of it
    services, slices, nodes = _annotated(None, udp=True)
    assert translate(services, slices, nodes, Settings("node-a")).problems == ()


@pytest.mark.parametrize("value", ["yes", "Flowless", "", "1", 1, True, ["stateless"]])
def test_an_unknown_flow_table_is_a_problem_and_the_default_serves(value):
    services, slices, nodes = _annotated(value)
    r = translate(services, slices, nodes, Settings("node-a", flow_table=False))
    v = r.state.vip("192.0.2.12:443/tcp")
    assert (v.flow_table, v.stateless) == (False, False)
    assert reasons(r.problems) == [("shop/api", "InvalidFlowTable")]
    msg = r.problems[0].message
    assert FLOW_TABLE_ANNOTATION in msg and repr(value) in msg and "stateless" in msg
    assert r.problems[0].type == "Warning" and "\n" not in msg
    # heard before the Service has an address, too
    del services[0]["status"]["loadBalancer"]["ingress"]
    pending = translate(services, slices, nodes, Settings("node-a"))
    assert pending.state.vips == () and reasons(pending.problems) == reasons(r.problems)


def test_local_policy_stateless_vips_keep_their_backends():
    services, slices, nodes = objects("local-weights.json")
    services[0]["metadata"].setdefault("annotations", {})[FLOW_TABLE_ANNOTATION] = "stateless"
    r = translate(services, slices, nodes, Settings("node-a"))
    assert summary(r.state) == {"192.0.2.10:80/tcp": "10.0.0.2 w2, 10.0.0.3 w1"}
    assert r.state.vip("192.0.2.10:80/tcp").stateless


def test_chain_peers_are_every_node_with_a_stateless_vip_and_none_without():
    nodes = load("nodes.json")
    everyone = {ipaddress.ip_address(a["address"]) for n in nodes
                for a in n["status"]["addresses"] if a["type"] == "InternalIP"
                and "." in a["address"]}       # an IPv4 VIP: the nodes' IPv4 addresses
    services, slices, _ = _annotated("stateless")
    r = translate(services, slices, nodes, Settings("node-a"))
    assert r.state.peers == everyone
    # every node, backend or not: one that left the Service (excluded here) stays a peer
    nodes[3]["metadata"]["labels"]["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
    nodes[4]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    r = translate(services, slices, nodes, Settings("node-a"))
    backends = {b.address for b in r.state.vip("192.0.2.12:443/tcp").backends}
    assert r.state.peers == everyone and not {ipaddress.ip_address("10.0.0.4"),
                                              ipaddress.ip_address("10.0.0.5")} & backends
    # no stateless VIP, no peers: the decapsulation of such a cluster never chains
    services, slices, _ = _annotated("false")
    assert translate(services, slices, nodes, Settings("node-a")).state.peers == frozenset()
    # what the agent does with cached results gives the same
    index = NodeIndex.build(nodes)
    services, slices, _ = _annotated("stateless")
    results = {"shop/api": service_vips(services[0], slices, index, Settings("node-a"))}
    state, _ = combine(results, {"shop/api": services[0]})
    assert state.peers == frozenset()
    assert with_chain_peers(state, index) == translate(services, slices, index,
                                                       Settings("node-a")).state
    assert with_chain_peers(with_chain_peers(state, index), index).peers == everyone
    assert index.tunnel_addresses(4) is index.tunnel_addresses(4)    # computed once


def test_chain_peers_follow_the_families_of_the_stateless_vips():
    """A previous owner is named by its tunnel address for the VIP's family (IPv4-in-IPv6
    for a node without IPv4): the peers are those of the families in use, no more (two
    addresses sharing a chain id name neither)."""
    services, slices, nodes = objects("dual-stack.json", "single-family-nodes.json")
    for svc in services:
        svc["metadata"].setdefault("annotations", {})[FLOW_TABLE_ANNOTATION] = "stateless"
    index = NodeIndex.build(nodes)
    state = translate(services, slices, index, Settings("node-a")).state
    families = {v.key.family for v in state if v.stateless}
    assert families == {4, 6}
    assert state.peers == index.tunnel_addresses(4) | index.tunnel_addresses(6)
    assert ipaddress.ip_address("fd00:1::1") in index.tunnel_addresses(4)   # node-v6
    v4_only = DesiredState(tuple(v for v in state if v.key.family == 4))
    assert with_chain_peers(v4_only, index).peers == index.tunnel_addresses(4)
    assert not {a for a in index.tunnel_addresses(4) if a.version == 6} - {
        index.tunnel_address("node-v6", 4)}


# -- conflicts -----------------------------------------------------------------------------

def _conflict(ts_old, ts_new):
    services, slices, nodes = objects("port-conflict.json")
    by = {s["metadata"]["name"]: s for s in services}
    for name, ts in (("old", ts_old), ("new", ts_new)):
        if ts is None:
            del by[name]["metadata"]["creationTimestamp"]
        else:
            by[name]["metadata"]["creationTimestamp"] = ts
    r = translate(services, slices, nodes, Settings("node-a"))
    return r.vips_by_service, reasons(r.problems)


def test_conflict_same_age_goes_by_name():
    owned, problems = _conflict("2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z")
    assert problems == [("apps/old", "PortConflict")]        # "apps/new" < "apps/old"
    assert [str(k) for k in owned["apps/new"]] == ["192.0.2.40:80/tcp", "192.0.2.40:8080/tcp"]
    assert owned["apps/old"] == ()


def test_conflict_newer_created_loses():
    owned, problems = _conflict("2024-06-01T00:00:01Z", "2024-06-01T00:00:00Z")
    assert problems == [("apps/old", "PortConflict")]
    owned, problems = _conflict(None, "2024-06-01T00:00:00Z")  # unknown age: after the rest
    assert problems == [("apps/old", "PortConflict")]
    owned, problems = _conflict("2024-06-01T00:00:00Z", "not a time")
    assert problems == [("apps/new", "PortConflict")]
    assert [str(k) for k in owned["apps/old"]] == ["192.0.2.40:80/tcp"]
    assert [str(k) for k in owned["apps/new"]] == ["192.0.2.40:8080/tcp"]


def test_combine_of_cached_results_equals_translate():
    """The agent's path: one service_vips per Service, cached, then combine."""
    services, slices, nodes = objects(*SCENARIOS)
    index, cfg = NodeIndex.build(nodes), Settings("node-a")
    results, by_key = {}, {}
    for svc in services:
        if is_ours(svc, cfg):
            key = service_key(svc)
            mine = [s for s in slices if slice_service(s) == key]
            results[key], by_key[key] = service_vips(svc, mine, index, cfg), svc
    state, problems = combine(results, by_key)
    whole = translate(services, slices, nodes, cfg)
    assert state == whole.state and problems == whole.problems
    # service_vips skips other Services' slices by itself
    web = next(s for s in services if service_key(s) == "shop/web")
    assert service_vips(web, slices, index, cfg) == results["shop/web"]
    # and returns nothing for a Service that is not ours
    assert service_vips(copy.deepcopy(load("types.json")[0]), slices, index, cfg) == ServiceResult()


def test_deterministic_whatever_the_order():
    services, slices, nodes = objects(*SCENARIOS)
    first = translate(services, slices, nodes, Settings("node-a"))
    rng = random.Random(7)
    for _ in range(5):
        for seq in (services, slices, nodes):
            rng.shuffle(seq)
        again = translate(services, slices, nodes, Settings("node-a"))
        assert again.state == first.state
        assert again.state.to_dict() == first.state.to_dict()
        assert again.problems == first.problems
        assert dict(again.vips_by_service) == dict(first.vips_by_service)


def test_vips_by_service():
    owned = run("shared-ip.json", "pending.json").vips_by_service
    assert {k: [str(x) for x in v] for k, v in owned.items()} == {
        "team/dns": ["192.0.2.30:53/tcp", "192.0.2.30:53/udp"],
        "team/web": ["192.0.2.30:80/tcp", "192.0.2.30:443/tcp"],
        "shop/pending": [], "shop/hostname": []}


# -- small functions -----------------------------------------------------------------------

def test_keys_and_class():
    services, slices, _ = objects("classes.json", "local-weights.json")
    assert [service_key(s) for s in services] == [
        "classes/ours", "classes/other", "classes/unset", "shop/web"]
    assert {slice_service(s) for s in slices} == {"shop/web"}
    assert slice_service({"metadata": {"namespace": "x", "labels": {}}}) is None
    only, dflt = Settings("node-a", default_class=False), Settings("node-a")
    assert [is_ours(s, only) for s in services] == [True, False, False, True]
    assert [is_ours(s, dflt) for s in services] == [True, False, True, True]
    assert not any(is_ours(s, dflt) for s in load("types.json"))
    # why a LoadBalancer Service is left alone, when its class is the reason
    assert [foreign_class(s, only) for s in services] == [
        None, "'example.com/other-lb'", "no class", None]
    assert [foreign_class(s, dflt) for s in services] == [
        None, "'example.com/other-lb'", None, None]
    assert not any(foreign_class(s, dflt) for s in load("types.json"))


def test_wanted_ports():
    assert wanted_ports(load("sctp.json")[0]) == (("tcp", 5060), ("udp", 5060))
    assert wanted_ports(load("dual-stack.json")[0]) == (("tcp", 80), ("udp", 5004))
    assert wanted_ports({"spec": {"ports": [{"port": 443}]}}) == (("tcp", 443),)
    assert wanted_ports({}) == ()


def test_node_index():
    index = NodeIndex.build(objects("single-family-nodes.json")[2])
    ip = ipaddress.ip_address
    assert index.address("node-a", 4) == ip("10.0.0.1")
    assert index.address("node-a", 6) == ip("fd00::1")
    assert index.address("node-v4", 6) is None and index.address("nope", 4) is None
    assert index.tunnel_address("node-v6", 4) == ip("fd00:1::1")     # IPv4-in-IPv6
    assert index.tunnel_address("node-v4", 6) is None
    assert [n for n in "abcdefgh" if index.ready(f"node-{n}")] == list("abcefgh")
    assert [n for n in "abcdefgh" if index.eligible(f"node-{n}")] == list("abc")
    assert not index.ready("nope")
    v6 = index.cluster_backends(6, "node-b")
    assert [(str(b.address), b.local) for b in v6.backends] == [
        ("fd00::1", False), ("fd00::2", True), ("fd00::3", False), ("fd00:1::1", False)]
    assert v6.unaddressed == ("node-v4",)
    assert index.cluster_backends(6, "node-b") is v6                 # computed once


def test_node_addresses_that_cannot_be_backends_are_skipped():
    """A loopback or multicast InternalIP is not a tunnel destination: the next usable one
    of the family is taken, and a node with none has no address (its Services' other
    nodes are still served; the VIP does not fail as a whole)."""
    from pyxlb.k8s import objects as o
    index = NodeIndex.build([o.node("odd", ["127.0.0.5", "10.0.0.9", "ff02::1"]),
                             o.node("lo", ["127.0.0.6"]), o.node("ok", ["10.0.0.7"])])
    assert index.address("odd", 4) == ipaddress.ip_address("10.0.0.9")
    assert index.address("odd", 6) is None and index.address("lo", 4) is None
    assert [str(b.address) for b in index.cluster_backends(4, "ok").backends] == \
        ["10.0.0.7", "10.0.0.9"]


def test_node_index_equality_ignores_heartbeats():
    nodes = load("nodes.json")
    beat = copy.deepcopy(nodes)
    for n in beat:
        n["metadata"]["resourceVersion"] += "1"
        for c in n["status"]["conditions"]:
            c["lastHeartbeatTime"] = "2024-06-20T10:45:00Z"
    assert NodeIndex.build(beat) == NodeIndex.build(nodes)
    assert hash(NodeIndex.build(beat)) == hash(NodeIndex.build(nodes))
    beat[1]["spec"]["unschedulable"] = True
    assert NodeIndex.build(beat) != NodeIndex.build(nodes)


def test_translate_takes_a_built_index_and_mappings():
    services, slices, nodes = objects("local-weights.json")
    a = translate({service_key(s): s for s in services}, {s["metadata"]["name"]: s for s in slices},
                  NodeIndex.build(nodes), Settings("node-a"))
    assert a == run("local-weights.json")


def test_health_targets():
    index = NodeIndex.build(objects("single-family-nodes.json")[2])
    services, slices, _ = objects("local-weights.json", "single-family-nodes.json",
                                  "cluster.json", "hand-made-slices.json")
    by = {service_key(s): s for s in services}
    ip = ipaddress.ip_address
    assert health_targets(by["shop/web"], slices, index) == {
        "node-b": (ip("10.0.0.2"), 32101), "node-c": (ip("10.0.0.3"), 32101)}
    assert health_targets(by["edge/gw"], slices, index) == {
        "node-v4": (ip("10.0.1.1"), 32180), "node-v6": (ip("fd00:1::1"), 32180)}
    # an unknown node cannot be probed; a Cluster Service has nothing to probe
    assert set(health_targets(by["shop/legacy"], slices, index)) == {"node-b", "node-c"}
    assert health_targets(by["shop/api"], slices, index) == {}
    # terminating-only nodes are draining whatever their probe says: not probed
    svc, sl, _ = objects("local-terminating.json")
    assert set(health_targets(svc[0], sl, index)) == {"node-c"}


def test_settings_are_checked():
    for kwargs, message in [({"node_name": ""}, "node name"),
                            ({"node_name": "a", "ring_size": 65536}, "prime"),
                            ({"node_name": "a", "ring_size": True}, "prime"),
                            ({"node_name": "a", "lb_class": ""}, "class"),
                            ({"node_name": "a", "default_class": "yes"}, "default_class")]:
        with pytest.raises(SettingsError, match=message) as exc:
            Settings(**kwargs)
        assert "\n" not in str(exc.value)


# -- never raises, whatever users write ----------------------------------------------------

_ALL = {n: load(n) for n in ["nodes.json", *SCENARIOS]}
_BY_KIND = {k: [o for objs in _ALL.values() for o in objs if o["kind"] == k]
            for k in ("Service", "EndpointSlice", "Node")}
_VALUES = [None, True, False, 0, -1, 1, 80, 65536, 1.5, "", "x", "TCP", "UDP", "SCTP", "IPv4",
           "IPv6", "FQDN", "Local", "Cluster", "LoadBalancer", "ClientIP", "pyxlb.io/lb", "True",
           "192.0.2.10", "2001:db8::10", "10.0.0.0/33", "198.51.100.0/24", "node-a", "node-zz",
           "2024-01-01T00:00:00Z", [], {}, ["192.0.2.0/24", "bad"], [{"ip": "2001:db8::9"}],
           [None], [[]], {"ready": False, "serving": True, "terminating": True},
           {"kubernetes.io/service-name": "web"}, [{"type": "InternalIP", "address": "fd00::9"}]]


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


@st.composite
def _mutated(draw, kind):
    obj = copy.deepcopy(draw(st.sampled_from(_BY_KIND[kind])))
    for _ in range(draw(st.integers(0, 4))):
        paths = [p for p in _paths(obj) if p]
        path = draw(st.sampled_from(paths))
        _set(obj, path, copy.deepcopy(draw(st.sampled_from(_VALUES))))
    return obj


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(services=st.lists(_mutated("Service"), max_size=5),
       slices=st.lists(_mutated("EndpointSlice"), max_size=5),
       nodes=st.lists(_mutated("Node"), max_size=5),
       junk=st.lists(st.sampled_from(_VALUES), max_size=2),
       default_class=st.booleans(), node=st.sampled_from(["node-a", "node-v6"]),
       fail=st.sets(st.tuples(st.sampled_from(["shop/web", "edge/gw", "shop/cart"]),
                              st.sampled_from(["node-a", "node-b", "node-c", "node-v4"]))))
def test_translate_never_raises(services, slices, nodes, junk, default_class, node, fail):
    before = json.dumps([services, slices, nodes], sort_keys=True)
    cfg = Settings(node, default_class=default_class)
    health = {k: False for k in fail}
    out = translate(services + junk, slices + junk, nodes + junk, cfg, health)
    assert isinstance(out.state, DesiredState)
    assert json.dumps([services, slices, nodes], sort_keys=True) == before   # inputs untouched
    owned = [k for keys in out.vips_by_service.values() for k in keys]
    assert sorted(owned, key=str) == sorted((v.key for v in out.state), key=str)
    for p in out.problems:
        assert isinstance(p, Problem) and p.service in out.vips_by_service
        assert p.reason.isalpha() and "\n" not in p.message
    assert translate(services + junk, slices + junk, nodes + junk, cfg, health) == out
    assert all(isinstance(k, VipKey) for k in owned)
