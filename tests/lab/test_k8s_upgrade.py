"""A rollout in the Kubernetes lab (tests/support/k8slab.py): every node runs the previous
release's agent (tests/support/release.py, built from git by hash), and the agents are
replaced one node at a time by this tree's, as a DaemonSet rollout replaces its pods, while
long-lived connections transfer through the Service's VIP and new ones keep opening
(tests/support/traffic.py). Each new agent finds the datapath its predecessor left pinned
and attached, upgrades it in place (pyxlb/datapath/upgrade.py) and takes over; nothing is
reset, no connect fails, and no connection changes backend.

The Service is a Local one with a pod on every node: n1 receives the VIP's traffic from the
router and balances it over n1-n3, whose balancers decapsulate what n1 tunnels to them, so
every node's program carries traffic while it is swapped.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import Set

import pytest

from pyxlb.datapath import Datapath
from pyxlb.datapath.upgrade import STAGE_DIR
from pyxlb.errors import PyxlbError
from pyxlb.k8s import objects as o
from pyxlb.lab import VIP4, node_addr

from tests.support.k8slab import HEALTH_CHECK_PORT, KNODES, KubeLab, wait_for
from tests.support.release import Release, build_release
from tests.support.traffic import Opener, Streams, Verdict, stalled

AGENT_ARGS = ("--lease-duration", "2")
SHOP, WEB = "shop", "web"
VIP_KEY = f"{VIP4}:80/tcp"

STREAMS = 200
# The streams' client source ports: below a KubeLab client's ephemeral range (32768-60999,
# the kernel's default), so the opener's connections never take one of them.
FIRST_PORT = 21000
STREAM_SECONDS = 120.0      # an upper bound: finish() ends the streams when the rollout is done
SETTLE = 1.0                # traffic watched after each new agent is ready
# Connections that check the VIP forwards before the streams start, from fixed source ports
# (so which node answers each is fixed too: Maglev with the lab's seed).
PROBE_PORTS = range(20000, 20030)
READY_TIMEOUT = 30.0
UPGRADED = "from version unrecorded"      # how the previous release's datapath is named
SYNCED = "listed Services, EndpointSlices and Nodes: reconciling"
# a node's XDP outcomes that carry the VIP's traffic: n1 tunnels it on (tx) or passes its
# own share up (pass_local); n2 and n3 decapsulate what n1 tunnels to them
CARRIED = ("tx", "redirect", "pass_local", "decap")


@pytest.fixture
def rollout():
    """A KubeLab of its own (prefix xlbu<pid>), pyxlb installed in the API stand-in, the
    Service on VIP4 with a pod on every node, and the previous release's agent on every
    node. Yields (lab, api, the release); then checks the agents were refused nothing, and
    takes it all down (agents, servers, pins, namespaces), whatever happened; and fails if
    a namespace or pin directory of the lab is left."""
    release = build_release()           # cached; a cold build takes about a minute
    lab = KubeLab(f"xlbu{os.getpid() % 10000}")
    with lab.running() as api:
        api.create(o.namespace(SHOP))
        api.create(o.ip_pool("lab", [f"{VIP4}/32"], auto_assign=False))
        api.create(o.service(WEB, SHOP, policy="Local", health_port=HEALTH_CHECK_PORT,
                             load_balancer_ip=str(VIP4)))
        api.create(o.spread(WEB, {n: 1 for n in KNODES}, namespace=SHOP, name=f"{WEB}-ipv4"))
        for node in KNODES:
            lab.start_process(node, api, *AGENT_ARGS, env=release.env())
        yield lab, api, release
    left = lab.existing() + [lab.pin_dir(n) for n in lab.NODES if os.path.isdir(lab.pin_dir(n))]
    assert not left, f"the rollout test left these behind: {', '.join(left)}"


def every_node() -> Set[str]:
    """Every node's address: the backends of the Service, whose pods are on every node."""
    return {str(node_addr(n, 4)) for n in KNODES}


def release_serves(lab: KubeLab, release: Release, node: str) -> bool:
    """`node`'s balancer holds the VIP with every node as an active backend, as the
    previous release's own CLI reads it (this tree refuses a datapath of another version).
    Traffic is no way to wait for this: a connection abandoned while the VIP is half
    programmed has its server retransmit for up to a minute, and the client answers each
    retransmission with a reset, which the verdict would count."""
    done = subprocess.run(release.argv("--pin-dir", lab.pin_dir(node), "backend", "list",
                                       VIP_KEY, "--json"),
                          env=release.env(), capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return False
    backends = json.loads(done.stdout)["backends"]
    return {b["address"] for b in backends if b["state"] == "active"} == every_node()


def serves(lab: KubeLab, node: str) -> bool:
    """`node`'s balancer, opened by this tree's code, holds the VIP with every node as an
    active backend."""
    with lab.datapath(node) as dp:
        vip = dp.layout(refresh=True).state.vip(VIP_KEY)
    return vip is not None and \
        {str(b.address) for b in vip.backends if b.state == "active"} == every_node()


def carried(lab: KubeLab, node: str) -> int:
    """Packets of `node`'s balancer with an outcome in CARRIED, so far."""
    with lab.datapath(node) as dp:
        stats = dp.stats()
    return sum(stats[k] for k in CARRIED)


def replace_agent(lab: KubeLab, api, node: str) -> str:
    """SIGTERM `node`'s agent and start this tree's on the same pin directory; wait until
    it upgraded the datapath and serves the VIP. Returns the new agent's log."""
    mark = len(lab.log_of(node))
    assert lab.stop_agent(node) == 0, f"the previous agent of {node} did not stop cleanly:\n" \
                                      f"{lab.log_of(node)[-2000:]}"
    lab.start_process(node, api, *AGENT_ARGS)
    pin = lab.pin_dir(node)

    def ready() -> bool:
        assert lab.agent_runs(node), f"the new agent of {node} exited:\n{lab.log_of(node)[mark:]}"
        log = lab.log_of(node)[mark:]
        if UPGRADED not in log or SYNCED not in log:
            return False
        try:        # the upgrade may still be committing its pins
            return Datapath.pinned_version(pin) == Datapath.version() and serves(lab, node)
        except (OSError, PyxlbError):
            return False

    wait_for(ready, READY_TIMEOUT, f"the new agent of {node} to upgrade and serve", lab)
    return lab.log_of(node)[mark:]


def test_agents_replaced_node_by_node_under_traffic_reset_nothing(rollout):
    lab, api, release = rollout
    wait_for(lambda: o.ingress(api.get("Service", WEB, SHOP)) == [str(VIP4)], READY_TIMEOUT,
             "the Service's status to carry the VIP", lab)
    for node in KNODES:
        wait_for(lambda node=node: release_serves(lab, release, node), READY_TIMEOUT,
                 f"the previous release's balancer on {node} to hold the VIP", lab)
    answered = {lab.who(4, sport=p)[0] for p in PROBE_PORTS}
    assert answered == set(KNODES), f"the VIP forwarded only to {sorted(answered)}"
    ports = range(FIRST_PORT, FIRST_PORT + STREAMS)
    logs, stalls, moving = {}, {}, {}
    with Streams(lab, 4, ports, duration=STREAM_SECONDS, backends=KNODES) as streams, \
            Opener(lab, 4, max_seconds=STREAM_SECONDS) as opener:
        assert set(streams.holders().values()) == set(KNODES), streams.holders()
        for node in KNODES:
            before = streams.acked()
            logs[node] = replace_agent(lab, api, node)
            ready, packets = streams.acked(), carried(lab, node)
            time.sleep(SETTLE)
            after = streams.acked()
            stalls[node] = (stalled(before, ready), stalled(ready, after))
            moving[node] = carried(lab, node) - packets
        opener.stop()
        streams.finish()
    verdict = Verdict.of(streams, opener)
    verdict.assert_clean()
    for node, (across, since) in stalls.items():
        assert not across and not since, \
            f"streams stopped transferring when {node}'s agent was replaced: " \
            f"{len(across)} across the replacement, {len(since)} in the {SETTLE} s after"
    assert opener.report.successes > 0 and set(opener.report.backends) == set(KNODES), \
        opener.report
    assert all(moving.values()), \
        f"a node's new program carried no packet in the {SETTLE} s after its swap: {moving}"
    want = Datapath.version()
    for node in KNODES:
        pin = lab.pin_dir(node)
        assert f"upgraded the datapath at {pin} {UPGRADED}" in logs[node], logs[node]
        assert Datapath.pinned_version(pin) == want, f"{node}: {Datapath.pinned_version(pin)}"
        assert not os.path.exists(os.path.join(pin, STAGE_DIR)), f"{pin}/{STAGE_DIR} left"
        assert lab.agent_runs(node), lab.log_of(node)[-2000:]
        assert "Traceback" not in logs[node], logs[node]
