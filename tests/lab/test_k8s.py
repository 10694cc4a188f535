"""Kubernetes, end to end: three nodes, each running a real `pyxlb agent` process against the
API stand-in, and real TCP connections from the client through the XDP balancers.

A Local Service has its pods spread 2/1/0 over n1/n2/n3. The agents allocate its IP (one of
them, elected), derive the backends from the EndpointSlice and program their balancers.
Connections land on the nodes in a 2:1:0 ratio, and each node sees the client's own address
(the whole point of Local: no SNAT, and no imbalance).
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import pytest

from pyxlb.k8s import objects as o
from pyxlb.k8s.standin import ApiStandIn
from pyxlb.k8slab import KNODES, KubeLab
from pyxlb.lab import CLIENT, VIP4, node_addr

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


@pytest.fixture(scope="module")
def klab():
    assert os.geteuid() == 0, "the lab tests need root (namespaces, XDP, bpffs)"
    lab = KubeLab(f"k{os.getpid() % 100000}")
    api = None
    try:
        lab.up()
        with lab.in_router():          # the stand-in listens inside the lab, on the router
            api = ApiStandIn(host=lab.api_host, bookmark_interval=1.0).start()
        for node in lab.node_objects():
            api.create(node)
        api.create(o.ip_pool("lab", [f"{VIP4}/32"]))
        for node in KNODES:
            lab.start_agent(node, api.url, "--lease-duration", "2")
        yield lab, api
    finally:
        if api is not None:
            api.stop()
        lab.down()


def test_local_service_traffic_lands_on_nodes_by_their_pods(klab):
    lab, api = klab
    api.create(o.service("web", load_balancer_ip=str(VIP4)))
    api.create(o.spread("web", {"n1": 2, "n2": 1}))
    _wait(lambda: o.ingress(api.get("Service", "web", "default")) == [str(VIP4)], 20,
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
    share = {n: seen[n] / CONNECTIONS for n in KNODES}
    assert abs(share["n1"] - 2 / 3) <= 0.10, share
    assert abs(share["n2"] - 1 / 3) <= 0.10, share
    assert seen["n3"] == 0, share

    # the agent that owns n1's datapath dies: its balancer keeps forwarding the same flows
    lab.stop_agent("n1", signal.SIGKILL)
    again = Counter(lab.who(4, sport=FIRST_PORT + i)[0] for i in range(60))
    assert sum(again.values()) == 60 and set(again) <= {"n1", "n2"}

    # a restarted agent adopts the pinned datapath, and follows a change: pods move to n3
    lab.start_agent("n1", api.url, "--lease-duration", "2")
    api.update(o.spread("web", {"n3": 2}, name="web-ipv4"))

    def moved():
        with lab.datapath("n1") as dp:
            v = dp.layout(refresh=True).state.vip(f"{VIP4}:80/tcp")
        return {str(b.address) for b in v.backends} == {str(node_addr("n3", 4))}

    _wait(moved, 20, "the restarted agent to follow the EndpointSlice", lab)
    after = Counter(lab.who(4, sport=FIRST_PORT + CONNECTIONS + i)[0] for i in range(30))
    assert after == Counter({"n3": 30})
