"""docs/lab.md's kubectl session, as written there: `make k8s-lab IMAGE=...` (its install,
tests/support/k8slab_main.py), then the real kubectl in the lab's router against the API
stand-in, with the admin kubeconfig the lab writes. The containerised agents allocate,
program and announce what kubectl creates, real connections follow it, and kubectl shows
the address, the Events, and the deletion."""

import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from pyxlb.lab import ROUTER, VIP4, node_addr, scenarios

from tests.support.k8slab import KNODES, KubeLab
from tests.support.k8slab_main import install

ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "docs" / "lab" / "k8s-web.yaml"
EXAMPLES = ROOT / "deploy" / "examples"
FIRST_PORT = 37000          # client source ports of this module
PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture(scope="module")
def session(image, tmp_path_factory):
    lab = KubeLab(f"q{os.getpid() % 100000}", image=image)
    api = None
    try:
        lab.up()
        api = install(lab)
        config = tmp_path_factory.mktemp("kube") / "kubeconfig"
        api.write_kubeconfig(config)
        yield lab, api, config
    finally:
        if api is not None:
            api.stop()
        lab.down()


def kubectl(session, *args):
    lab, _, config = session
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
    env["KUBECONFIG"] = str(config)
    res = subprocess.run(["kubectl", *args], env=env, preexec_fn=lab.preexec_in(ROUTER),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"kubectl {' '.join(args)}: {res.stderr}"
    return res.stdout


def wait(check, timeout, what):
    end = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def svc_rows(session):
    """{(namespace, name): EXTERNAL-IP} from `kubectl get svc -A`."""
    lines = kubectl(session, "get", "svc", "-A").splitlines()
    if not lines:           # kubectl said "No resources found" on stderr
        return {}
    head = lines[0].split()
    assert head[:5] == ["NAMESPACE", "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP"], lines[0]
    return {(r.split()[0], r.split()[1]): r.split()[4] for r in lines[1:]}


def vip_backends(lab, node):
    with lab.datapath(node) as dp:
        v = dp.layout(refresh=True).state.vip(f"{VIP4}:80/tcp")
    return None if v is None else {str(b.address): b.weight for b in v.backends
                                   if b.state == "active"}


def test_the_docs_kubectl_session(session):
    lab, api, _ = session
    nodes = kubectl(session, "get", "nodes")
    assert {line.split()[0] for line in nodes.splitlines()[1:]} == set(KNODES)
    assert all(line.split()[1] == "Ready" for line in nodes.splitlines()[1:])

    out = kubectl(session, "apply", "-f", str(WEB))
    assert "service/web created" in out and "endpointslice.discovery.k8s.io/web-ipv4 created" in out
    wait(lambda: svc_rows(session).get(("shop", "web")) == str(VIP4), 30,
         "kubectl get svc -A to show web's EXTERNAL-IP")
    want = {str(node_addr("n1", 4)): 2, str(node_addr("n2", 4)): 1}
    for node in KNODES:
        wait(lambda node=node: vip_backends(lab, node) == want, 30, f"{node}'s balancer")
    seen = Counter(lab.who(4, sport=FIRST_PORT + i)[0] for i in range(150))
    shares = scenarios.compare(scenarios.pod_shares({"n1": 2, "n2": 1, "n3": 0}), seen,
                               tolerance=0.12)
    assert shares.ok, shares.table()

    described = kubectl(session, "describe", "svc", "web", "-n", "shop")
    # (VIP): the controller writes ipMode VIP, so the nodes' proxies leave the address alone
    assert re.search(rf"LoadBalancer Ingress:\s+{re.escape(str(VIP4))} \(VIP\)", described), \
        described
    assert re.search(r"Normal\s+IPAllocated\s+.*assigned " + re.escape(str(VIP4)), described)
    events = kubectl(session, "get", "events", "-A")
    assert re.search(r"shop\s+.*IPAllocated\s+service/web", events), events

    # the repository's examples: a pool and a Service with a Deployment (no pods run here)
    out = kubectl(session, "apply", "-f", str(EXAMPLES))
    assert "ippool.pyxlb.io/default created" in out and "service/echo created" in out
    echo = wait(lambda: svc_rows(session).get(("default", "echo"), "<pending>")
                .replace("<pending>", ""), 30, "echo's EXTERNAL-IP")
    assert echo.split(",")[0].startswith("192.0.2."), echo
    assert "default" in kubectl(session, "get", "ippools")

    kubectl(session, "delete", "-f", str(EXAMPLES))
    kubectl(session, "delete", "-f", str(WEB))
    assert set(svc_rows(session)) == set()
    for node in KNODES:
        wait(lambda node=node: vip_backends(lab, node) is None, 30,
             f"{node}'s balancer to drop the VIP")
    assert api.get("Service", "web", "shop") is None
    # the client's requests no longer reach a balancer's backends: n1's own stack answers
    assert lab.who(4, sport=FIRST_PORT + 200)[0] == "n1"
