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
           "Service", "TRANSIENT", "FINALIZER", "SERVICE_ACCOUNT_DIR", "connect", "in_cluster",
           "pod_namespace", "to_dict", "key_of"]


class KubeError(PyxlbError):
    """The API server cannot be reached as configured."""


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_LEASE_NAMESPACE = "pyxlb-system"


def in_cluster() -> bool:
    """Whether this process runs in a pod: the kubelet sets these for every container."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def connect(server: Optional[str] = None, kubeconfig: Optional[str] = None,
            timeout: float = 10.0, service_account: str = SERVICE_ACCOUNT_DIR) -> Client:
    """A client for `server` (a URL: the API stand-in in tests), else the kubeconfig file
    given, else the in-cluster service account, else $KUBECONFIG / ~/.kube/config.

    In a pod (KUBERNETES_SERVICE_HOST set) the client uses what the kubelet mounts, as
    client-go's in-cluster configuration does: https to KUBERNETES_SERVICE_HOST:PORT, the
    server's certificate checked against `service_account`/ca.crt, and the bearer token
    in `service_account`/token, read again whenever the server answers 401 (the kubelet
    replaces a projected token before it expires; the old one stays valid until then)."""
    try:
        if server:
            # an empty user: lightkube wants one, a plain-http server needs no credentials
            config = KubeConfig.from_one(cluster=Cluster(server=server), user=User())
        elif kubeconfig:
            config = KubeConfig.from_file(kubeconfig)
        elif in_cluster():
            config = _service_account_config(service_account)
        else:
            config = KubeConfig.from_env()
    except KubeError:
        raise
    except Exception as exc:  # lightkube raises several types for a missing/bad config
        where = server or kubeconfig or "the in-cluster service account or ~/.kube/config"
        raise KubeError(f"cannot configure the Kubernetes client from {where}: {exc}") from None
    # --server is for stand-ins and tests: no proxy from the environment in between
    return Client(config=config, field_manager=FIELD_MANAGER, timeout=httpx2.Timeout(timeout),
                  trust_env=not server)


def _service_account_config(directory: str) -> KubeConfig:
    if not os.environ.get("KUBERNETES_SERVICE_PORT"):
        raise KubeError("KUBERNETES_SERVICE_HOST is set but KUBERNETES_SERVICE_PORT is not: "
                        "not a pod's environment (give --kubeconfig or --server)")
    missing = [f for f in ("token", "ca.crt") if not os.path.isfile(os.path.join(directory, f))]
    if missing:
        raise KubeError(f"in-cluster configuration: no {' and no '.join(missing)} in "
                        f"{directory} (is the service account token mounted? "
                        f"automountServiceAccountToken must not be false)")
    return KubeConfig.from_service_account(directory)


def pod_namespace(service_account: str = SERVICE_ACCOUNT_DIR) -> str:
    """The namespace this pod runs in, from the service account's `namespace` file (the
    DaemonSet also passes it as POD_NAMESPACE); outside a pod, pyxlb-system."""
    try:
        with open(os.path.join(service_account, "namespace")) as f:
            ns = f.read().strip()
    except OSError:
        ns = ""
    return ns or DEFAULT_LEASE_NAMESPACE


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
