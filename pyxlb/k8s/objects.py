"""Kubernetes objects in the API's JSON shape, as their writers write them.

Used where pyxlb plays the cluster itself: the Kubernetes lab, the agent benchmarks and the
agent tests (all against the API stand-in). A Service is what a user writes: what the API
server fills in (ipFamilies, ipFamilyPolicy, externalTrafficPolicy, targetPort, clusterIP,
node ports...) is left to the server, here the stand-in's admission
(tests/support/standin_admission.py), unless the caller asks for a value. Nodes and
EndpointSlices are what the kubelet and the EndpointSlice controller write (addresses,
conditions).
"""

from __future__ import annotations

import ipaddress
from typing import Dict, Iterable, List, Optional, Sequence

LB_CLASS = "pyxlb.io/lb"


def node(name: str, addresses: Sequence[str], *, ready: bool = True,
         unschedulable: bool = False, labels: Optional[Dict[str, str]] = None) -> dict:
    addrs = [{"type": "InternalIP", "address": str(a)} for a in addresses]
    addrs.append({"type": "Hostname", "address": name})
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name,
                         "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
            "spec": {"unschedulable": True} if unschedulable else {},
            "status": {"addresses": addrs,
                       "conditions": [{"type": "Ready",
                                       "status": "True" if ready else "False"}]}}


def namespace(name: str, labels: Optional[Dict[str, str]] = None) -> dict:
    """A Namespace as kubectl create namespace writes it (the server adds the rest)."""
    meta: dict = {"name": name}
    if labels:
        meta["labels"] = dict(labels)
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def service(name: str, namespace: str = "default", *, ports: Iterable = ((80, "TCP"),),
            policy: Optional[str] = None, lb_class: Optional[str] = LB_CLASS,
            families: Optional[Sequence[str]] = None, family_policy: Optional[str] = None,
            load_balancer_ip: Optional[str] = None,
            annotations: Optional[Dict[str, str]] = None, health_port: Optional[int] = None,
            affinity: Optional[str] = None, source_ranges: Sequence[str] = (),
            labels: Optional[Dict[str, str]] = None, type_: str = "LoadBalancer") -> dict:
    """A Service as a user writes it: only what is asked for. `policy` is the
    externalTrafficPolicy (None: the server's default, Cluster); `families` the ipFamilies,
    with `family_policy` the ipFamilyPolicy (None: RequireDualStack when two families are
    asked for, since the server refuses two under its default SingleStack; else unset);
    `health_port` a healthCheckNodePort asked for (Local policy only)."""
    spec: dict = {"type": type_,
                  "ports": [{"name": f"p{port}-{proto.lower()}", "port": port, "protocol": proto}
                            for port, proto in ports],
                  "selector": {"app": name}}
    if policy:
        spec["externalTrafficPolicy"] = policy
    if families:
        spec["ipFamilies"] = list(families)
    if family_policy or (families and len(families) > 1):
        spec["ipFamilyPolicy"] = family_policy or "RequireDualStack"
    if lb_class:
        spec["loadBalancerClass"] = lb_class
    if load_balancer_ip:
        spec["loadBalancerIP"] = load_balancer_ip
    if policy == "Local" and health_port:
        spec["healthCheckNodePort"] = health_port
    if affinity:
        spec["sessionAffinity"] = affinity
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    meta = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    if annotations:
        meta["annotations"] = dict(annotations)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def endpoint(address: str, node_name: str, *, ready: bool = True, serving: Optional[bool] = None,
             terminating: bool = False) -> dict:
    return {"addresses": [str(address)], "nodeName": node_name,
            "conditions": {"ready": ready,
                           "serving": ready if serving is None else serving,
                           "terminating": terminating},
            "targetRef": {"kind": "Pod", "name": f"pod-{address}"}}


def endpoint_slice(service_name: str, endpoints: Sequence[dict], *, namespace: str = "default",
                   name: Optional[str] = None, family: str = "IPv4",
                   ports: Iterable = ((80, "TCP"),)) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{service_name}-{family.lower()}",
                         "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name,
                                    "endpointslice.kubernetes.io/managed-by":
                                        "endpointslice-controller.k8s.io"}},
            "addressType": family,
            "endpoints": list(endpoints),
            "ports": [{"name": f"p{port}-{proto.lower()}", "port": port, "protocol": proto}
                      for port, proto in ports]}


def spread(service_name: str, per_node: Dict[str, int], *, base: str = "10.244.0.0",
           namespace: str = "default", name: Optional[str] = None) -> dict:
    """An EndpointSlice with `per_node[node]` ready pods on each node."""
    eps, n = [], 1
    start = ipaddress.ip_address(base)
    for node_name, count in sorted(per_node.items()):
        for _ in range(count):
            eps.append(endpoint(str(start + n), node_name))
            n += 1
    return endpoint_slice(service_name, eps, namespace=namespace, name=name)


def ip_pool(name: str, addresses: Sequence[str], *, auto_assign: bool = True,
            selector: Optional[dict] = None, announce: Optional[str] = None) -> dict:
    spec = {"addresses": list(addresses), "autoAssign": auto_assign}
    if announce is not None:
        spec["announce"] = announce
    if selector:
        spec["serviceSelector"] = selector
    return {"apiVersion": "pyxlb.io/v1alpha1", "kind": "IPPool", "metadata": {"name": name},
            "spec": spec}


def ingress(svc: dict) -> List[str]:
    """The IPs in a Service's status."""
    return [i.get("ip") for i in ((svc or {}).get("status") or {}).get("loadBalancer", {})
            .get("ingress") or ()]
