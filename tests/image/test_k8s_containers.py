"""The Kubernetes lab's scenarios (tests/lab/test_k8s.py: a Local Service's 2:1:0 spread in
one namespace, the docs' Cluster example in another, an agent killed and restarted, L2
failover) with every agent run from the image, in a container set up exactly as
deploy/daemonset.yaml and deploy/configmap.yaml say (tests/support/daemonset.py): the
DaemonSet's capabilities and no others, a read-only root, its volumes, its environment,
in-cluster credentials. A container SIGKILLed and started again leaves the datapath
forwarding throughout."""

import os

import pytest

from tests.lab.test_k8s import (installed, klab,  # noqa: F401 (klab: a fixture)
                                test_l2_the_agents_elect_an_owner_among_nodes_with_pods_and_fail_over,
                                test_local_service_traffic_lands_on_nodes_by_their_pods,
                                test_the_docs_kubectl_expose_example_serves_on_its_port)
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
