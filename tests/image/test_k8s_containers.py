"""The Kubernetes lab's scenarios (tests/lab/test_k8s.py: a Local Service's 2:1:0 spread in
one namespace, the docs' Cluster example in another, an agent killed and restarted, L2
failover) with every agent run from the image, in a container set up exactly as
deploy/daemonset.yaml and deploy/configmap.yaml say (tests/support/daemonset.py): the
DaemonSet's capabilities and no others, a read-only root, its volumes, its environment,
in-cluster credentials. A container SIGKILLed and started again leaves the datapath
forwarding throughout."""

import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.lab.test_k8s import (installed, klab,  # noqa: F401 (klab: a fixture)
                                test_l2_the_agents_elect_an_owner_among_nodes_with_pods_and_fail_over,
                                test_local_service_traffic_lands_on_nodes_by_their_pods,
                                test_the_docs_kubectl_expose_example_serves_on_its_port)
from tests.support.daemonset import DAEMONSET, AgentPod
from tests.support.k8slab import KubeLab

__all__ = ["test_l2_the_agents_elect_an_owner_among_nodes_with_pods_and_fail_over",
           "test_local_service_traffic_lands_on_nodes_by_their_pods",
           "test_the_docs_kubectl_expose_example_serves_on_its_port"]


@pytest.fixture(scope="module")
def klab_module(image):
    """The lab of tests/lab/test_k8s.py, its agents from the image."""
    yield from installed(KubeLab(f"c{os.getpid() % 100000}", image=image))


def test_the_agents_run_in_containers(klab):
    lab, _ = klab
    assert set(lab.containers) == {"n1", "n2", "n3"} and not lab.agents
    for node in lab.containers:
        assert lab.agent_runs(node)


def test_a_daemonset_without_net_admin_fails_to_start_the_agent(klab, tmp_path):
    """What the lab runs is what deploy/daemonset.yaml says: take NET_ADMIN out of it and
    the agent, on a node with no datapath yet, cannot attach its program: it exits, and
    its log says the kernel refused. The node's agent from the real manifest starts
    afterwards."""
    lab, api = klab
    lab.stop_agent("n3")
    subprocess.run([sys.executable, "-m", "pyxlb", "--pin-dir", lab.pin_dir("n3"), "detach",
                    "eth0"], preexec_fn=lab.preexec_in("n3"), check=True, capture_output=True)
    ds = yaml.safe_load(DAEMONSET.read_text())
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"]["capabilities"][
        "add"].remove("NET_ADMIN")
    (tmp_path / "daemonset.yaml").write_text(yaml.safe_dump(ds))
    try:
        lab.start_container("n3", api, pod=AgentPod.read(daemonset=tmp_path / "daemonset.yaml"))
        end = time.monotonic() + 30
        while lab.agent_runs("n3") and time.monotonic() < end:
            time.sleep(0.2)
        assert not lab.agent_runs("n3"), "the agent ran without NET_ADMIN"
        assert lab.stop_agent("n3") != 0
        log = lab.log_of("n3")
        assert "Operation not permitted" in log or "permission" in log.lower(), log[-2000:]
    finally:
        lab.stop_agent("n3")
        lab.start_agent("n3", api)
