"""A stateless Service in the Kubernetes lab (tests/support/k8slab.py): long-lived uploads
keep transferring while the Service's backend nodes change, through nodes that NAT the
Service's port to its pods' (docs/kubernetes.md, "Stateless Services").

The Service (Cluster policy, annotated ``pyxlb.io/flow-table: stateless``) serves port
PORT, its pods listen on TARGET_PORT, and every node DNATs VIP:PORT to :TARGET_PORT as
kube-proxy does (KubeLab.serve_service): so no node has a socket for (client, VIP:PORT),
only the NAT's conntrack entry. The router sends the VIP's traffic to n1, excluded from
the Service's backends by the label the agents honour, so n1 only balances; n2 and n3 are
the backends. CONNECTIONS uploads (tests/support/traffic.py Streams) start on n2 and n3;
then n3 is excluded, included, excluded and included again (each change twice). Each
change moves ring slots between n2 and n3; the balancer names each moved slot's previous
owner and the node that gets a packet of a connection it lacks chains it there. A node
that lacks a connection must tell so from its conntrack (the decapsulator's
bpf_xdp_ct_lookup): without it, a node would chain away the connections it holds itself
and the previous owner would reset them. Every upload must end on the node that accepted
it, complete, no reset, no stall, and the nodes must have chained packets. IPv4 and IPv6
(a Service of each family, the same nodes).

Then the same with n1 a backend too, as every node is on a cluster whose router spreads
the VIP: slots move between n1's own share and n3's, and n1's balancer chains the
segments of n3's connections that now land on its own share (the tail call to
xlb_chain_local) instead of passing them to its stack, which would reset them.
"""

from __future__ import annotations

import os
import time

import pytest

from pyxlb.errors import PyxlbError
from pyxlb.k8s import objects as o
from pyxlb.k8s.translate import EXCLUDE_LABEL, FLOW_TABLE_ANNOTATION
from pyxlb.lab import VIP4, VIP6, node_addr

from tests.support.k8slab import KNODES, KubeLab, wait_for
from tests.support.traffic import Streams, Verdict, stalled

NAMESPACE = "shop"
PORT, TARGET_PORT = 8080, 9376
VIPS = {4: VIP4, 6: VIP6}
NAMES = {4: "upload", 6: "upload6"}         # an IPv6 Service of its own (single-stack)
BALANCER = "n1"                         # gets the VIP's traffic from the router
BACKENDS = ("n2", "n3")
MOVING = "n3"                           # excluded and included again, twice
CONNECTIONS = 500
FIRST_PORT = 23000          # client source ports: below the client's ephemeral range
STREAM_SECONDS = 25.0       # an upper bound: finish() ends the streams first
SETTLE = 0.6                # seconds of traffic watched after each change (12 chunks)
READY = 20.0
CHAIN_WINDOW = 90           # the agents' --chain-window: longer than the test


def set_excluded(api, node: str, excluded: bool) -> None:
    obj = api.get("Node", node)
    labels = obj["metadata"].setdefault("labels", {})
    if excluded:
        labels[EXCLUDE_LABEL] = ""
    else:
        labels.pop(EXCLUDE_LABEL, None)
    api.update(obj)


def vip_key(family: int) -> str:
    return f"{VIP4}:{PORT}/tcp" if family == 4 else f"[{VIP6}]:{PORT}/tcp"


def serving(lab: KubeLab, node: str, family: int, backends) -> bool:
    """`node`'s balancer holds the family's VIP, stateless, with exactly `backends`, and
    every node's addresses as chain peers."""
    try:
        with lab.datapath(node) as dp:
            vip = dp.layout(refresh=True).state.vip(vip_key(family))
            peers = set(dp.tables.chain_peers.read().values())
    except (OSError, PyxlbError):          # its agent has not made it yet, or is applying
        return False
    return vip is not None and vip.stateless and \
        {str(b.address) for b in vip.backends} == {str(node_addr(n, family))
                                                   for n in backends} \
        and peers == {node_addr(n, f) for n in KNODES for f in (4, 6)}


def chained(lab: KubeLab) -> dict:
    """Packets each node's inline decapsulation chained to a previous owner, so far."""
    out = {}
    for node in KNODES:
        with lab.datapath(node) as dp:
            out[node] = dp.stats()["chain_forwarded"]
    return out


@pytest.fixture(scope="module")
def klab():
    """The module's KubeLab (prefix xlbsk<pid>), pyxlb installed in the API stand-in, an
    agent on every node, n1 excluded from external load balancers, and the stateless
    Services (IPv4, IPv6) with their pods and DNAT on every node. Yields (lab, api); then
    checks the agents were refused nothing, and takes it all down whatever happened."""
    lab = KubeLab(f"xlbsk{os.getpid() % 1000}")
    with lab.running() as api:
        api.create(o.namespace(NAMESPACE))
        api.create(o.ip_pool("lab", [f"{VIP4}/32", f"{VIP6}/128"], auto_assign=False,
                             announce="none"))
        set_excluded(api, BALANCER, True)
        for family, vip in VIPS.items():
            lab.serve_service(vip, PORT, TARGET_PORT)
            api.create(o.service(NAMES[family], NAMESPACE, ports=((PORT, "TCP"),),
                                 policy="Cluster", families=[f"IPv{family}"],
                                 load_balancer_ip=str(vip),
                                 annotations={FLOW_TABLE_ANNOTATION: "stateless"}))
        for node in KNODES:
            lab.start_agent(node, api, "--lease-duration", "2",
                            "--chain-window", str(CHAIN_WINDOW))
        yield lab, api


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("own_share", [False, True], ids=["balancer_only", "balancer_serves"])
def test_uploads_survive_backend_nodes_coming_and_going_through_nat(klab, family, own_share):
    lab, api = klab
    backends = KNODES if own_share else BACKENDS
    set_excluded(api, MOVING, False)            # as the module built it
    set_excluded(api, BALANCER, not own_share)
    wait_for(lambda: o.ingress(api.get("Service", NAMES[family], NAMESPACE)) ==
             [str(VIPS[family])], READY, "the Service's status to carry the VIP", lab)
    for node in KNODES:
        wait_for(lambda node=node: serving(lab, node, family, backends), READY,
                 f"{node}'s balancer to hold the stateless VIP", lab)
    for node in KNODES:
        with lab.datapath(node) as dp:
            assert dp.chain_window() == CHAIN_WINDOW, node
    before = chained(lab)
    ports = range(FIRST_PORT, FIRST_PORT + CONNECTIONS)
    stuck = []
    with Streams(lab, family, ports, duration=STREAM_SECONDS, backends=KNODES, port=PORT,
                 served_port=TARGET_PORT) as streams:
        assert set(streams.holders().values()) == set(backends), streams.holders()
        for excluded in (True, False, True, False):
            acked = streams.acked()
            set_excluded(api, MOVING, excluded)
            left = tuple(n for n in backends if n != MOVING) if excluded else backends
            wait_for(lambda: serving(lab, BALANCER, family, left), READY,
                     f"{BALANCER}'s balancer to serve {left}", lab)
            time.sleep(SETTLE)
            stuck += stalled(acked, streams.acked())
        streams.finish()
    verdict = Verdict.of(streams)
    verdict.assert_clean()
    assert not stuck, f"{len(set(stuck))} connections stopped transferring after a change"
    moves = {n: after - before[n] for n, after in chained(lab).items()}
    assert sum(moves[n] for n in BACKENDS) > 0, f"no node chained a packet: {moves}"
    if own_share:
        assert moves[BALANCER] > 0, f"{BALANCER} chained nothing of its own share: {moves}"
