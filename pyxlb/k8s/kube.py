"""The Kubernetes client: how pyxlb reaches the API server, and the resource kinds it uses.

lightkube (a maintained, typed client) does every request; nothing here speaks HTTP itself.
Objects handed to the rest of the agent are plain dicts in the API's own JSON shape
(camelCase keys), so translation and allocation stay free of client types.
"""

from __future__ import annotations

import os
from typing import Optional

import httpx2
from lightkube import ApiError, Client, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.generic_resource import create_global_resource
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Node, Service
from lightkube.resources.discovery_v1 import EndpointSlice

from ..errors import PyxlbError

IPPool = create_global_resource("pyxlb.io", "v1alpha1", "IPPool", "ippools")
BGPPeer = create_global_resource("pyxlb.io", "v1alpha1", "BGPPeer", "bgppeers")

FIELD_MANAGER = "pyxlb"
FINALIZER = "service.kubernetes.io/load-balancer-cleanup"

# Failures that mean "the API server is not answering now": retry later, keep the datapath.
TRANSIENT = (httpx2.TransportError, httpx2.TimeoutException)

__all__ = ["ApiError", "BGPPeer", "Client", "EndpointSlice", "Event", "IPPool", "Lease", "Node",
           "Service", "TRANSIENT", "FINALIZER", "connect", "to_dict", "key_of"]


class KubeError(PyxlbError):
    """The API server cannot be reached as configured."""


def connect(server: Optional[str] = None, kubeconfig: Optional[str] = None,
            timeout: float = 10.0) -> Client:
    """A client for `server` (a URL: the API stand-in in tests), else the kubeconfig file
    given, else the in-cluster service account, else $KUBECONFIG / ~/.kube/config."""
    try:
        if server:
            # an empty user: lightkube wants one, a plain-http server needs no credentials
            config = KubeConfig.from_one(cluster=Cluster(server=server), user=User())
        elif kubeconfig:
            config = KubeConfig.from_file(kubeconfig)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            config = KubeConfig.from_service_account()
        else:
            config = KubeConfig.from_env()
    except Exception as exc:  # lightkube raises several types for a missing/bad config
        where = server or kubeconfig or "the in-cluster service account or ~/.kube/config"
        raise KubeError(f"cannot configure the Kubernetes client from {where}: {exc}") from None
    # --server is for stand-ins and tests: no proxy from the environment in between
    return Client(config=config, field_manager=FIELD_MANAGER, timeout=httpx2.Timeout(timeout),
                  trust_env=not server)


def to_dict(obj) -> dict:
    """A lightkube object (typed model or generic resource) as the API's plain JSON dict."""
    if isinstance(obj, dict):
        return dict(obj)
    return obj.to_dict()


def key_of(obj: dict) -> str:
    """"namespace/name" for namespaced objects, "name" for cluster-scoped ones."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))
