"""The agent process's own endpoints, as the kubelet and Prometheus use them: /readyz answers
503 until the first list is applied and 200 after, /healthz 200 while its threads run, and
/metrics carries the agent's metrics beside the datapath's. A real AgentNode (datapath
pinned on bpffs, not attached), the API stand-in, real HTTP on loopback."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request

import pytest

from pyxlb.datapath import Datapath
from pyxlb.errors import PyxlbError
from pyxlb.k8s import objects as o
from pyxlb.k8s.run import AgentNode, Options


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def until(check, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def node(api, bpffs_dir):
    api.create(o.node("n1", ["10.0.0.1"]))
    api.create(o.ip_pool("public", ["192.0.2.0/29"]))
    opts = Options(node_name="n1", pin_dir=f"{bpffs_dir}/pyxlb", server=api.url,
                   listen="127.0.0.1", metrics_port=free_port(), probe_port=free_port(),
                   lease_duration=1.0, attach=False, max_vips=64, max_flows=4096,
                   max_flows6=2048)
    api.set_down(True)           # start with the API away: not ready, but alive
    n = AgentNode(opts).start()
    try:
        yield n, api
    finally:
        n.stop()
        Datapath.open(opts.pin_dir).destroy()


def test_probes_follow_the_sync_and_metrics_carry_the_agent(node):
    n, api = node
    opts = n.opts
    assert get(opts.probe_port, "/healthz")[0] == 200
    status, body = get(opts.probe_port, "/readyz")
    assert status == 503 and "not synced" in body
    api.set_down(False)
    assert until(lambda: get(opts.probe_port, "/readyz")[0] == 200), "ready once synced"
    api.create(o.namespace("shop"))
    api.create(o.service("web", "shop"))
    assert until(lambda: o.ingress(api.get("Service", "web", "shop")))
    assert get(opts.probe_port, "/nothing")[0] == 404

    def metrics():
        return get(opts.metrics_port, "/metrics")[1]

    # the reconcile that counts the Service, not just any ok one (the first list's made the
    # agent ready): the controller may give the address before that reconcile ends
    assert until(lambda: "pyxlb_agent_services 1.0" in metrics())
    text = metrics()
    for line in ('pyxlb_agent_reconciles_total{result="ok"}', "pyxlb_agent_leader 1.0",
                 'pyxlb_ipam_addresses_in_use{pool="public"} 1.0', "pyxlb_vips "):
        assert line in text, line
    assert until(lambda: "pyxlb_agent_api_up 1.0" in metrics(), 5)


def test_the_datapath_has_the_sizes_asked_for(node):
    """--max-vips, --max-flows and --max-flows6 size the datapath the agent creates."""
    n, _ = node
    with Datapath.open(n.opts.pin_dir) as dp:
        assert (dp.maps.vips.max_entries, dp.maps.rings.max_entries) == (64, 128)
        # rated at 0.40 established flows a set: 4096 -> 10,240 sets -> 16,384 sets of 4
        # ways, rated for 6,553 flows; 2048 -> 5,120 -> 8,192 sets, 3,276 flows
        assert dp.flow_capacities() == (6553, 3276)
        assert dp.flow_ways() == (65536, 32768)


def test_a_node_name_is_required(api, bpffs_dir):
    with pytest.raises(PyxlbError, match="node name is required"):
        AgentNode(Options(node_name="", pin_dir=f"{bpffs_dir}/pyxlb", server=api.url,
                          attach=False)).start()
