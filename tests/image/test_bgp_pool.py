"""A BGP pool with the agents run from the image as deploy/daemonset.yaml runs them: each
node's agent starts BIRD in its container (config, socket and pid file in PYXLB_BIRD_DIR,
/run/pyxlb/bird, on the DaemonSet's emptyDir: its root filesystem is read-only; port 179
with CAP_NET_BIND_SERVICE), peers with the lab's router as a BGPPeer says, and announces a
Cluster Service's address. The router learns it from every node and spreads connections
over them (ECMP); a container stopped as kubelet stops a pod withdraws its node's route
first, and a new one announces it again.

Without the DaemonSet's /run/pyxlb volume, or without NET_BIND_SERVICE, no route reaches
the router and this test fails."""

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter

import pytest

from pyxlb import netns
from pyxlb.announce.bgp import BirdSpeaker, upstream_router_config
from pyxlb.k8s import objects as o
from pyxlb.lab import ROUTER, node_addr

from tests.support.k8slab import AUTO_VIP4, KNODES, KubeLab

ROUTER_ASN, NODE_ASN = 64512, 64513
PORT, TARGET_PORT = 8765, 9376
FIRST_PORT = 36000          # client source ports of this module


def next_hops(lab):
    """The nodes the router's route to AUTO_VIP4 goes through."""
    out = subprocess.run(["ip", "-4", "-j", "-n", lab.ns(ROUTER), "route", "show", "exact",
                          f"{AUTO_VIP4}/32"], capture_output=True, text=True, check=True).stdout
    routes = json.loads(out or "[]")
    if not routes:
        return set()
    by_addr = {str(node_addr(n, 4)): n for n in KNODES}
    return {by_addr.get(h.get("gateway"), h.get("gateway"))
            for h in routes[0].get("nexthops", [routes[0]])}


def wait_hops(lab, want, timeout):
    end = time.monotonic() + timeout
    while next_hops(lab) != want:
        if time.monotonic() > end:
            logs = "".join(f"\n--- agent {n} ---\n{lab.log_of(n)[-2000:]}" for n in KNODES)
            raise AssertionError(f"the router's route goes via {sorted(next_hops(lab))}, "
                                 f"not {sorted(want)}, after {timeout} s{logs}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def bgp_lab(image):
    """The Kubernetes lab with a BIRD router in place of its static route to AUTO_VIP4,
    a BGPPeer naming it, a bgp pool, and the agents from the image."""
    lab = KubeLab(f"b{os.getpid() % 100000}", image=image)
    api, speaker = None, None
    base = tempfile.mkdtemp(prefix="pyxlb-bgp-image-")
    try:
        lab.up()
        api = lab.start_api(bookmark_interval=1.0)
        with netns.enter(lab.ns(ROUTER)):       # the lab's own router: no need to restore
            with open("/proc/sys/net/ipv4/fib_multipath_hash_policy", "w") as f:
                f.write("1")
        subprocess.run(["ip", "-n", lab.ns(ROUTER), "route", "del", f"{AUTO_VIP4}/32"],
                       check=True, capture_output=True)
        speaker = BirdSpeaker(os.path.join(base, "router"))
        config = upstream_router_config(node_addr(ROUTER, 4), ROUTER_ASN,
                                        [(node_addr(n, 4), NODE_ASN) for n in KNODES],
                                        hold_time=3)
        with netns.enter(lab.ns(ROUTER)):
            speaker.apply(config)
        api.create({"apiVersion": "pyxlb.io/v1alpha1", "kind": "BGPPeer",
                    "metadata": {"name": "lab-router"},
                    "spec": {"peerAddress": str(node_addr(ROUTER, 4)), "peerASN": ROUTER_ASN,
                             "myASN": NODE_ASN, "holdTime": 3}})
        api.create(o.ip_pool("bgp", [f"{AUTO_VIP4}/32"], announce="bgp"))
        for node in KNODES:
            lab.start_agent(node, api)
        yield lab, api
    finally:
        if speaker is not None:
            with netns.enter(lab.ns(ROUTER)), contextlib.suppress(Exception):
                speaker.stop(timeout=2)
        if api is not None:
            api.stop()
        lab.down()
        shutil.rmtree(base, ignore_errors=True)


def test_containerised_agents_announce_a_bgp_pool_and_withdraw_on_stop(bgp_lab):
    lab, api = bgp_lab
    lab.serve_service(AUTO_VIP4, PORT, TARGET_PORT)       # the pods, and kube-proxy's DNAT
    api.create(o.service("spread", "default", ports=((PORT, "TCP"),)))
    api.create(o.endpoint_slice("spread", [o.endpoint(f"10.244.{i}.2", n)
                                           for i, n in enumerate(KNODES, 1)],
                                ports=((TARGET_PORT, "TCP"),)))
    wait_hops(lab, set(KNODES), 40)
    assert o.ingress(api.get("Service", "spread", "default")) == [str(AUTO_VIP4)]

    def answers(first, n):
        return Counter(lab.who(4, sport=first + i, port=PORT, vip=AUTO_VIP4)[0]
                       for i in range(n))

    seen = answers(FIRST_PORT, 90)
    assert sum(seen.values()) == 90 and set(seen) == set(KNODES), seen

    # kubelet stops n3's pod (SIGTERM, the grace period): the agent withdraws first
    lab.stop_agent("n3")
    wait_hops(lab, {"n1", "n2"}, 10)
    assert sum(answers(FIRST_PORT + 100, 30).values()) == 30

    lab.start_agent("n3", api)
    wait_hops(lab, set(KNODES), 40)
    assert sum(answers(FIRST_PORT + 200, 30).values()) == 30
