"""Kubernetes objects -> DesiredState: which VIPs this node serves, and towards which nodes.

A pure function of the agent's cache: Services, EndpointSlices (discovery.k8s.io/v1) and
Nodes as the plain dicts the API server returns (camelCase keys), plus this node's name and
the operator's settings. No Kubernetes client, no kernel: so every rule is tested with
fixtures, and the agent can recompute one Service without touching the others.

The flow is ``translate = NodeIndex.build + service_vips (per Service) + combine +
with_chain_peers``. The agent caches ``service_vips`` per Service and calls ``combine`` when
any of them changed; ``service_vips`` depends only on its arguments, and ``combine`` is
linear in the VIPs.

Nothing a user writes into a Service, EndpointSlice or Node makes this module raise:
every fault becomes a `Problem` (the agent turns it into an Event on the Service) and the
Service is served as far as is safe, or not at all where serving would be unsafe (a bad
source range: the VIP would be open to every client). The rules, for users, are in
docs/kubernetes.md, "How Services become VIPs".
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Set, Tuple

from ..errors import PyxlbError
from ..maglev import is_prime
from ..state import (MAX_WEIGHT, RING_SIZE_DEFAULT, RING_SIZE_MAX, STATELESS, Backend,
                     DesiredState, IPAddress, IPNetwork, StateError, Vip, VipKey,
                     address_fault, key_order)

__all__ = [
    "Settings", "SettingsError", "Problem", "ServiceResult", "NodeIndex", "ClusterBackends",
    "Translation", "service_key", "slice_service", "is_ours", "wanted_ports",
    "service_vips", "combine", "translate", "health_targets",
    "SERVICE_NAME_LABEL", "EXCLUDE_LABEL", "SOURCE_RANGES_ANNOTATION",
    "FLOW_TABLE_ANNOTATION", "with_chain_peers",
]

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"
# a Service's flow table: "true", "false" or "stateless" (docs/kubernetes.md)
FLOW_TABLE_ANNOTATION = "pyxlb.io/flow-table"
# the cluster autoscaler's taint on a node it is about to remove
AUTOSCALER_DELETE_TAINT = "ToBeDeletedByClusterAutoscaler"

_FAMILIES = {"IPv4": 4, "IPv6": 6}        # spec.ipFamilies, EndpointSlice addressType
_SERVED_PROTOCOLS = {"TCP": "tcp", "UDP": "udp"}


class SettingsError(PyxlbError, ValueError):
    """Translation settings an operator got wrong (not a user's object: those are Problems)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the operator configured for this node's agent."""

    node_name: str
    lb_class: str = "pyxlb.io/lb"
    default_class: bool = True         # also take LoadBalancer Services with no loadBalancerClass
    ring_size: int = RING_SIZE_DEFAULT
    flow_table: bool = True

    def __post_init__(self):
        if not isinstance(self.node_name, str) or not self.node_name:
            raise SettingsError(f"node name must be a non-empty string, not {self.node_name!r}")
        if not isinstance(self.lb_class, str) or not self.lb_class:
            raise SettingsError(f"load-balancer class must be a non-empty string, "
                                f"not {self.lb_class!r}")
        for flag in ("default_class", "flow_table"):
            if not isinstance(getattr(self, flag), bool):
                raise SettingsError(f"{flag} must be true or false, not {getattr(self, flag)!r}")
        size = self.ring_size
        if isinstance(size, bool) or not isinstance(size, int) or not (
                2 <= size <= RING_SIZE_MAX and is_prime(size)):
            raise SettingsError(f"ring size {size!r} must be a prime between 2 and "
                                f"{RING_SIZE_MAX} (e.g. {RING_SIZE_DEFAULT})")


@dataclasses.dataclass(frozen=True)
class Problem:
    """Something a user should hear about, as an Event on the Service."""

    service: str                        # "namespace/name"
    reason: str                         # CamelCase Event reason, e.g. "UnsupportedProtocol"
    message: str                        # one sentence
    type: str = "Warning"


@dataclasses.dataclass(frozen=True)
class ServiceResult:
    """What one Service asks for: its VIPs (before conflicts with other Services are settled)
    and what is wrong with it."""

    vips: Tuple[Vip, ...] = ()
    problems: Tuple[Problem, ...] = ()


_NOTHING = ServiceResult()


@dataclasses.dataclass(frozen=True)
class Translation:
    """The node's DesiredState, every Problem, and which VIPs each Service owns in it."""

    state: DesiredState
    problems: Tuple[Problem, ...]
    vips_by_service: Mapping[str, Tuple[VipKey, ...]]


# -- reading API objects without trusting their shape -----------------------------------

def _dict(value) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def _str(value) -> Optional[str]:
    return value if isinstance(value, str) else None


def _family(value) -> Optional[int]:
    """4 or 6 for "IPv4"/"IPv6" (spec.ipFamilies, addressType); None for anything else."""
    return _FAMILIES.get(value) if isinstance(value, str) else None


def _protocol(value) -> str:
    """A port's protocol as the API writes it ("TCP" when unset)."""
    if value is None or value == "":
        return "TCP"
    return value if isinstance(value, str) else repr(value)


def _port_number(value) -> Optional[int]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    return None


def service_key(obj: dict) -> str:
    """``"namespace/name"`` of a Service (or of any namespaced object)."""
    meta = _dict(_dict(obj).get("metadata"))
    return f"{_str(meta.get('namespace')) or 'default'}/{_str(meta.get('name')) or ''}"


def slice_service(obj: dict) -> Optional[str]:
    """``"namespace/<service>"`` of the Service an EndpointSlice belongs to (its
    ``kubernetes.io/service-name`` label), or None for a slice of no Service."""
    meta = _dict(_dict(obj).get("metadata"))
    name = _str(_dict(meta.get("labels")).get(SERVICE_NAME_LABEL))
    if not name:
        return None
    return f"{_str(meta.get('namespace')) or 'default'}/{name}"


def is_ours(service: dict, settings: Settings) -> bool:
    """A LoadBalancer Service of our class (or of no class, in default-class mode)."""
    spec = _dict(_dict(service).get("spec"))
    if spec.get("type") != "LoadBalancer":
        return False
    cls = spec.get("loadBalancerClass")
    if cls is None:
        return settings.default_class
    return cls == settings.lb_class


def foreign_class(service: dict, settings: Settings) -> Optional[str]:
    """Why a LoadBalancer Service is not ours, when its class is the reason: the class it
    names ("no class" when it names none and default-class mode is off). None for a
    Service that is ours, or not of type LoadBalancer."""
    spec = _dict(_dict(service).get("spec"))
    if spec.get("type") != "LoadBalancer" or is_ours(service, settings):
        return None
    cls = spec.get("loadBalancerClass")
    return "no class" if cls is None else repr(cls)


def _policy_local(spec: dict) -> bool:
    # Cluster is the API default; any other value is refused by the API server
    return spec.get("externalTrafficPolicy") == "Local"


def _port_entries(spec: dict) -> List[Tuple[str, str, int]]:
    """(port name, protocol as the API writes it, port) of each usable-looking port entry."""
    out = []
    for p in _list(spec.get("ports")):
        p = _dict(p)
        out.append((_str(p.get("name")) or "", _protocol(p.get("protocol")), p.get("port")))
    return out


def wanted_ports(service: dict) -> Tuple[Tuple[str, int], ...]:
    """The (protocol, port) pairs the Service's VIPs cover, protocol "tcp" or "udp" as in
    VipKey: what the allocator compares when two Services ask to share an IP. SCTP ports
    and malformed entries are not served, so they are not listed."""
    spec = _dict(_dict(service).get("spec"))
    out = set()
    for _, proto, port in _port_entries(spec):
        number = _port_number(port)
        if proto in _SERVED_PROTOCOLS and number is not None:
            out.add((_SERVED_PROTOCOLS[proto], number))
    return tuple(sorted(out))


# -- Nodes ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Node:
    v4: Optional[ipaddress.IPv4Address]
    v6: Optional[ipaddress.IPv6Address]
    ready: bool
    eligible: bool                     # a backend under the Cluster policy


@dataclasses.dataclass(frozen=True)
class ClusterBackends:
    """The backends of every Cluster-policy VIP of one family, and the eligible nodes left
    out for want of an address of that family."""

    backends: Tuple[Backend, ...]
    unaddressed: Tuple[str, ...]


def _read_node(obj: dict) -> Tuple[Optional[str], Optional[_Node]]:
    meta = _dict(obj.get("metadata"))
    name = _str(meta.get("name"))
    if not name:
        return None, None
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    v4 = v6 = None
    for a in _list(status.get("addresses")):
        a = _dict(a)
        if a.get("type") != "InternalIP" or not isinstance(a.get("address"), str):
            continue
        try:
            ip = ipaddress.ip_address(a["address"].strip())
        except ValueError:
            continue
        if address_fault(ip) is not None:
            continue        # loopback, multicast...: no backend address, whatever the node says
        # the first InternalIP of each family, as the kubelet lists the preferred one first
        if ip.version == 4 and v4 is None:
            v4 = ip
        elif ip.version == 6 and v6 is None:
            v6 = ip
    ready = any(_dict(c).get("type") == "Ready" and _dict(c).get("status") == "True"
                for c in _list(status.get("conditions")))
    leaving = (meta.get("deletionTimestamp") is not None
               or any(_dict(t).get("key") == AUTOSCALER_DELETE_TAINT
                      for t in _list(spec.get("taints"))))
    eligible = (ready and spec.get("unschedulable") is not True and not leaving
                and EXCLUDE_LABEL not in _dict(meta.get("labels")))
    return name, _Node(v4, v6, ready, eligible)


class NodeIndex:
    """What translation needs of the Nodes: addresses, readiness, Cluster eligibility.

    Built once per change of the Node set. Two indexes built from Nodes that differ only in
    what translation ignores (heartbeats, images, capacity) compare equal, so the agent can
    skip recomputing every Service when a Node update changes nothing that matters here.
    """

    __slots__ = ("_nodes", "_cluster", "_backends", "_hash", "_addresses")

    def __init__(self, nodes: Mapping[str, _Node]):
        self._nodes: Dict[str, _Node] = dict(sorted(nodes.items()))
        self._cluster: Dict[Tuple[int, str], ClusterBackends] = {}
        self._backends: Dict[tuple, Optional[Backend]] = {}
        self._hash: Optional[int] = None
        self._addresses: Dict[int, FrozenSet[IPAddress]] = {}

    @classmethod
    def build(cls, nodes: Iterable[dict]) -> "NodeIndex":
        out: Dict[str, _Node] = {}
        for obj in nodes or ():
            if isinstance(obj, dict):
                name, node = _read_node(obj)
                if name is not None:
                    out[name] = node
        return cls(out)

    def __eq__(self, other) -> bool:
        return isinstance(other, NodeIndex) and self._nodes == other._nodes

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(self._nodes.items()))
        return self._hash

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: str) -> bool:
        return node in self._nodes

    def __repr__(self) -> str:
        return f"NodeIndex({len(self._nodes)} nodes)"

    def address(self, node: str, family: int) -> Optional[IPAddress]:
        """The node's InternalIP of that family (4 or 6), or None."""
        n = self._nodes.get(node)
        if n is None:
            return None
        return n.v4 if family == 4 else n.v6 if family == 6 else None

    def tunnel_addresses(self, vip_family: int) -> FrozenSet[IPAddress]:
        """Every node's `tunnel_address` for VIPs of that family, whatever its state: the
        addresses a balancer may name as a previous owner (with_chain_peers). Computed once
        per index and family."""
        cached = self._addresses.get(vip_family)
        if cached is None:
            cached = frozenset(a for a in (self.tunnel_address(n, vip_family)
                                           for n in self._nodes) if a is not None)
            self._addresses[vip_family] = cached
        return cached

    def tunnel_address(self, node: str, vip_family: int) -> Optional[IPAddress]:
        """Where to tunnel a VIP's packets for this node: its InternalIP of the VIP's family;
        for an IPv4 VIP, its IPv6 InternalIP when it has no IPv4 one (IPv4-in-IPv6). An
        IPv6 packet cannot travel in IPv4, so an IPv6 VIP needs an IPv6 address."""
        n = self._nodes.get(node)
        if n is None:
            return None
        if vip_family == 4:
            return n.v4 or n.v6
        return n.v6 if vip_family == 6 else None

    def backend(self, node: str, vip_family: int, weight: int = 1, state: str = "active",
                local: bool = False) -> Optional[Backend]:
        """The Backend for this node under a VIP of that family (None: no address to tunnel
        to). Backends never change, so equal ones are made once and shared by every VIP:
        at 10,000 Services that is most of translation's cost saved."""
        key = (node, vip_family, weight, state, local)
        try:
            return self._backends[key]
        except KeyError:
            pass
        addr = self.tunnel_address(node, vip_family)
        made = None if addr is None else Backend(addr, weight, state, None, local)
        if len(self._backends) < 100_000:                  # bounded: weights are few
            self._backends[key] = made
        return made

    def ready(self, node: str) -> bool:
        """The node's Ready condition is True."""
        n = self._nodes.get(node)
        return n is not None and n.ready

    def eligible(self, node: str) -> bool:
        """A backend for Cluster-policy VIPs: Ready, schedulable, not excluded by label,
        not being deleted (by the API or the cluster autoscaler)."""
        n = self._nodes.get(node)
        return n is not None and n.eligible

    def cluster_backends(self, family: int, local_node: str) -> ClusterBackends:
        """Backends of a Cluster-policy VIP of that family as seen from `local_node`: every
        eligible node with an address to tunnel to, weight 1. Computed once per index and
        shared by every such VIP (a Backend never changes)."""
        cached = self._cluster.get((family, local_node))
        if cached is None:
            backends, unaddressed = [], []
            for name, n in self._nodes.items():
                if not n.eligible:
                    continue
                backend = self.backend(name, family, 1, "active", name == local_node)
                if backend is None:
                    unaddressed.append(name)
                else:
                    backends.append(backend)
            backends.sort(key=lambda b: (b.address.version, b.address))
            cached = ClusterBackends(tuple(backends), tuple(unaddressed))
            self._cluster[(family, local_node)] = cached
        return cached


# -- EndpointSlices ---------------------------------------------------------------------

# per node: (addresses of ready endpoints, addresses of serving-and-terminating endpoints)
_NodeEndpoints = Dict[str, Tuple[Set[str], Set[str]]]


def _endpoints_by_port(key: str, slices: Iterable[dict],
                       ) -> Dict[Tuple[int, str, str], _NodeEndpoints]:
    """{(family, port name, protocol): {node: (ready, draining)}} over the Service's slices.

    An endpoint counts for a Service port only when its slice lists that port (by name and
    protocol), as kube-proxy does: a pod missing a named targetPort gets nothing for it.
    An endpoint is known by its first address (the API says the others are fungible), so
    one seen in two slices while they are being rebalanced counts once.
    """
    out: Dict[Tuple[int, str, str], _NodeEndpoints] = {}
    for s in slices or ():
        if not isinstance(s, dict) or slice_service(s) != key:
            continue
        family = _family(s.get("addressType"))           # FQDN slices: None, ignored
        if family is None:
            continue
        ports = []
        for p in _list(s.get("ports")):
            p = _dict(p)
            ports.append((family, _str(p.get("name")) or "", _protocol(p.get("protocol"))))
        if not ports:
            continue
        found = []                                          # (node, slot, address)
        for ep in _list(s.get("endpoints")):
            if not isinstance(ep, dict):
                continue
            node, addrs = ep.get("nodeName"), ep.get("addresses")
            if not node or not isinstance(node, str) or not isinstance(addrs, list) \
                    or not addrs or not isinstance(addrs[0], str):
                continue
            cond = _dict(ep.get("conditions"))
            if cond.get("ready") is not False:                  # unknown means ready
                found.append((node, 0, addrs[0]))
            # not ready: serving defers to ready, so it must say True itself;
            # terminating unknown means not terminating
            elif cond.get("serving") is True and cond.get("terminating") is True:
                found.append((node, 1, addrs[0]))
        for port in ports:
            group = out.get(port)
            if group is None:
                group = out[port] = {}
            for node, slot, addr in found:
                entry = group.get(node)
                if entry is None:
                    entry = group[node] = (set(), set())
                entry[slot].add(addr)
    return out


def _local_backends(key: str, family: int, per_node: _NodeEndpoints, nodes: NodeIndex,
                    local_node: str, health: Mapping[Tuple[str, str], bool],
                    unaddressed: Set[str]) -> Tuple[Backend, ...]:
    out = []
    for node, (ready, draining) in per_node.items():
        if ready:
            if health.get((key, node)) is False:
                continue        # its proxy says it has no endpoint: it leaves the ring
            state, weight = "active", len(ready)
        elif draining:
            # no new flows; the flows it has keep going whatever its probe says
            state, weight = "draining", len(draining)
        else:
            continue
        backend = nodes.backend(node, family, min(weight, MAX_WEIGHT), state,
                                node == local_node)
        if backend is None:
            unaddressed.add(node)
        else:
            out.append(backend)
    return tuple(out)


# -- one Service ------------------------------------------------------------------------

def _ingress_ips(key: str, spec: dict, status: dict,
                 problems: List[Problem]) -> List[IPAddress]:
    families = {_family(f) for f in _list(spec.get("ipFamilies"))} - {None}
    out: List[IPAddress] = []
    for ing in _list(_dict(status.get("loadBalancer")).get("ingress")):
        raw = _dict(ing).get("ip")
        if raw is None:
            continue                     # a hostname entry: some other LB's, not an address
        try:
            ip = ipaddress.ip_address(str(raw).strip())
        except ValueError:
            problems.append(Problem(key, "InvalidIngressIP",
                                    f"Ingress address {raw!r} in status.loadBalancer is not "
                                    f"an IP address, so it is not served."))
            continue
        if families and ip.version not in families:
            problems.append(Problem(key, "IPFamilyMismatch",
                                    f"Ingress address {ip} is IPv{ip.version} but the Service's "
                                    f"ipFamilies do not include it, so it is not served."))
            continue
        if ip not in out:
            out.append(ip)
    return out


def _source_ranges(key: str, spec: dict, annotations: dict,
                   problems: List[Problem]) -> Optional[Tuple[IPNetwork, ...]]:
    """The client prefixes allowed in: () for everyone, None when malformed (fail closed)."""
    field = spec.get("loadBalancerSourceRanges")
    if field:
        raw = field if isinstance(field, list) else [field]
        where = "spec.loadBalancerSourceRanges"
    else:
        text = annotations.get(SOURCE_RANGES_ANNOTATION)
        raw = text.split(",") if isinstance(text, str) else ([text] if text else [])
        where = f"the annotation {SOURCE_RANGES_ANNOTATION}"
    out = []
    for r in raw:
        text = r.strip() if isinstance(r, str) else r
        if text == "" and where != "spec.loadBalancerSourceRanges":
            continue                     # "a, b," : an empty item is no range
        try:
            if not isinstance(text, str) or "/" not in text:
                raise ValueError
            # host bits are tolerated, as the API server and kube-proxy tolerate them
            out.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            problems.append(Problem(key, "InvalidSourceRange",
                                    f"Source range {r!r} in {where} is not a CIDR prefix, so "
                                    f"the Service is not served until it is fixed."))
            return None
    return tuple(out)


_FLOW_TABLES = {"true": (True, False), "false": (False, False), STATELESS: (False, True)}


def _flow_table(key: str, annotations: dict, settings: Settings,
                problems: List[Problem]) -> Tuple[bool, bool]:
    """Service step: (flow table, stateless) the Service's TCP ports ask for with the
    annotation FLOW_TABLE_ANNOTATION; the operator's default without it, or with a value
    that is none of true, false, stateless (a Problem: the Service is still served)."""
    default = (settings.flow_table, False)
    raw = annotations.get(FLOW_TABLE_ANNOTATION)
    if raw is None:
        return default
    text = raw.strip().lower() if isinstance(raw, str) else None
    if text not in _FLOW_TABLES:
        problems.append(Problem(key, "InvalidFlowTable",
                                f"The annotation {FLOW_TABLE_ANNOTATION} is {raw!r}, not "
                                f"true, false or {STATELESS}, so the Service is served "
                                f"with the default ({str(settings.flow_table).lower()})."))
        return default
    return _FLOW_TABLES[text]


def _served_ports(key: str, spec: dict, problems: List[Problem]) -> List[Tuple[str, str, int]]:
    """Service step: the ports served, (name, protocol, number), first of each protocol/number."""
    ports, seen_ports = [], set()
    for name, proto, port in _port_entries(spec):
        number = _port_number(port)
        if number is None:
            problems.append(Problem(key, "InvalidPort",
                                    f"Port {port!r} of the Service is not a port number "
                                    f"(1-65535), so it is not served."))
        elif proto not in _SERVED_PROTOCOLS:
            problems.append(Problem(key, "UnsupportedProtocol",
                                    f"Port {number}/{proto} is not served: pyxlb balances TCP "
                                    f"and UDP only."))
        elif (proto, number) not in seen_ports:
            seen_ports.add((proto, number))
            ports.append((name, proto, number))
    return ports


def _refuse_family(key: str, ip: IPAddress, refused_families: Set[int],
                   problems: List[Problem]) -> None:
    """Service step: one Problem per family the source ranges leave without a prefix."""
    family = ip.version
    if family not in refused_families:
        refused_families.add(family)
        problems.append(Problem(key, "NoSourceRangeForFamily",
                                f"The Service's source ranges have no IPv{family} "
                                f"prefix, so its IPv{family} address {ip} is not "
                                f"served rather than open to every client."))


def _tables_of(key: str, ports: List[Tuple[str, str, int]], table: Tuple[bool, bool],
               settings: Settings, problems: List[Problem]) -> Dict[str, Tuple[bool, bool]]:
    """Service step: {protocol: (flow table, stateless)} of its ports. Stateless mode is
    for TCP in ipip mode (the only mode translation makes) alone: a UDP port keeps the
    operator's default, which a Normal Problem says once."""
    flow_table, stateless = table
    out = {"TCP": table, "UDP": table}
    if stateless:
        out["UDP"] = (settings.flow_table, False)
        udp = sorted(number for _, proto, number in ports if proto == "UDP")
        if udp:
            shown = ", ".join(f"{n}/UDP" for n in udp)
            problems.append(Problem(key, "StatelessTCPOnly",
                                    f"Port(s) {shown} keep the default flow table: stateless "
                                    f"mode is for TCP ports only.", type="Normal"))
    return out


def _vips_of(key: str, spec: dict, ips: List[IPAddress], ports: List[Tuple[str, str, int]],
             ranges: Tuple[IPNetwork, ...], slices: Iterable[dict], nodes: NodeIndex,
             settings: Settings, health: Optional[Mapping[Tuple[str, str], bool]],
             unaddressed: Dict[int, Set[str]], problems: List[Problem],
             tables: Mapping[str, Tuple[bool, bool]]) -> List[Vip]:
    """Service step: a VIP per ingress address and served port, with that port's backends."""
    affinity = "client-ip" if spec.get("sessionAffinity") == "ClientIP" else "none"
    local = _policy_local(spec)
    health = health or {}
    by_port = _endpoints_by_port(key, slices) if local else {}
    backends_cache: Dict[Tuple[int, str, str], Tuple[Backend, ...]] = {}
    refused_families: Set[int] = set()
    vips: List[Vip] = []
    for ip in ips:
        family = ip.version
        family_ranges = tuple(n for n in ranges if n.version == family)
        if ranges and not family_ranges:
            _refuse_family(key, ip, refused_families, problems)
            continue
        for name, proto, number in ports:
            if local:
                bkey = (family, name, proto)
                backends = backends_cache.get(bkey)
                if backends is None:
                    backends = _local_backends(key, family, by_port.get(bkey, {}), nodes,
                                               settings.node_name, health, unaddressed[family])
                    backends_cache[bkey] = backends
            else:
                cb = nodes.cluster_backends(family, settings.node_name)
                backends = cb.backends
                unaddressed[family].update(cb.unaddressed)
            flow_table, stateless = tables[proto]
            try:
                vips.append(Vip(VipKey(ip, number, _SERVED_PROTOCOLS[proto]), backends,
                                mode="ipip", flow_table=flow_table, stateless=stateless,
                                affinity=affinity, ring_size=settings.ring_size,
                                source_ranges=family_ranges))
            except StateError as exc:
                problems.append(Problem(key, "InvalidVip",
                                        f"VIP {ip}:{number}/{proto} cannot be served: {exc}."))
    return vips


def _report_unaddressed(key: str, unaddressed: Dict[int, Set[str]],
                        problems: List[Problem]) -> None:
    """Service step: a Problem per family naming the nodes left out for want of an address."""
    for family in (4, 6):
        missing = sorted(unaddressed[family])
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more"
                                              if len(missing) > 5 else "")
            problems.append(Problem(key, "NoNodeAddress",
                                    f"Node(s) {shown} have no usable InternalIP for the "
                                    f"Service's IPv{family} address, so they get none of its "
                                    f"traffic."))


def service_vips(service: dict, slices: Iterable[dict], nodes: NodeIndex, settings: Settings,
                 health: Optional[Mapping[Tuple[str, str], bool]] = None) -> ServiceResult:
    """The VIPs one Service asks for and its Problems; nothing for a Service not ours.

    `slices` may hold other Services' slices (they are skipped); `health` maps
    (service key, node name) to False for a node whose healthCheckNodePort probe fails.
    """
    if not isinstance(service, dict) or not is_ours(service, settings):
        return _NOTHING
    key = service_key(service)
    spec, status = _dict(service.get("spec")), _dict(service.get("status"))
    annotations = _dict(_dict(service.get("metadata")).get("annotations"))
    problems: List[Problem] = []

    ips = _ingress_ips(key, spec, status, problems)
    ports = _served_ports(key, spec, problems)
    ranges = _source_ranges(key, spec, annotations, problems)
    table = _flow_table(key, annotations, settings, problems)
    if not ips or not ports or ranges is None:
        return ServiceResult((), tuple(dict.fromkeys(problems)))

    tables = _tables_of(key, ports, table, settings, problems)
    unaddressed: Dict[int, Set[str]] = {4: set(), 6: set()}
    vips = _vips_of(key, spec, ips, ports, ranges, slices, nodes, settings, health,
                    unaddressed, problems, tables)
    _report_unaddressed(key, unaddressed, problems)
    return ServiceResult(tuple(vips), tuple(dict.fromkeys(problems)))


def health_targets(service: dict, slices: Iterable[dict],
                   nodes: NodeIndex) -> Dict[str, Tuple[IPAddress, int]]:
    """{node: (InternalIP, healthCheckNodePort)} for a Local LoadBalancer Service: the nodes
    holding ready endpoints of it, to probe with ``GET /healthz``; {} for any other Service.
    The IPv4 InternalIP is used where the node has one."""
    if not isinstance(service, dict):
        return {}
    spec = _dict(service.get("spec"))
    port = _port_number(spec.get("healthCheckNodePort"))
    if spec.get("type") != "LoadBalancer" or not _policy_local(spec) or port is None:
        return {}
    holding = set()
    for per_node in _endpoints_by_port(service_key(service), slices).values():
        holding.update(node for node, (ready, _) in per_node.items() if ready)
    out = {}
    for node in sorted(holding):
        addr = nodes.address(node, 4) or nodes.address(node, 6)
        if addr is not None:
            out[node] = (addr, port)
    return out


# -- every Service ----------------------------------------------------------------------

def _age(service: Optional[dict], key: str):
    """Sort key: older Services first; one without a readable creation time after them."""
    ts = _dict(_dict(service).get("metadata")).get("creationTimestamp")
    if isinstance(ts, str):
        try:
            when = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.timezone.utc)
            return (0, when.timestamp(), key)
        except ValueError:
            pass
    return (1, 0.0, key)


def _combine(results: Mapping[str, ServiceResult], services: Mapping[str, dict],
             ) -> Tuple[DesiredState, Tuple[Problem, ...], Dict[str, Tuple[VipKey, ...]]]:
    owner: Dict[VipKey, Tuple[str, Vip]] = {}
    contested: Dict[VipKey, List[Tuple[str, Vip]]] = {}
    for svc in sorted(results):
        for vip in results[svc].vips:
            held = owner.get(vip.key)
            if held is None:
                owner[vip.key] = (svc, vip)
            elif held[0] != svc:
                contested.setdefault(vip.key, [held]).append((svc, vip))
    conflicts: Dict[str, List[Problem]] = {}
    for key, claims in contested.items():
        claims.sort(key=lambda c: _age(services.get(c[0]), c[0]))
        winner = claims[0]
        owner[key] = winner
        for svc, _ in claims[1:]:
            conflicts.setdefault(svc, []).append(Problem(
                svc, "PortConflict", f"VIP {key} is already served for the older Service "
                                     f"{winner[0]}, so this Service does not get it."))
    by_service: Dict[str, List[VipKey]] = {svc: [] for svc in results}
    for key, (svc, _) in owner.items():
        by_service[svc].append(key)
    problems: List[Problem] = []
    for svc in sorted(results):
        problems.extend(results[svc].problems)
        problems.extend(conflicts.get(svc, ()))
    state = DesiredState(tuple(vip for _, vip in owner.values()))
    return (state, tuple(problems),
            {svc: tuple(sorted(keys, key=key_order)) for svc, keys in by_service.items()})


def combine(results: Mapping[str, ServiceResult], services: Mapping[str, dict],
            ) -> Tuple[DesiredState, Tuple[Problem, ...]]:
    """Every Service's VIPs in one DesiredState, and every Problem (each Service's own, then
    its port conflicts, Services in name order).

    A VipKey claimed by two Services (only possible when a user writes the status by hand:
    the allocator never shares a port) goes to the older one (creationTimestamp, then
    namespace/name); the other gets a "PortConflict" Problem and keeps its other VIPs.
    `services` (key -> Service) is read for creation times only.
    """
    state, problems, _ = _combine(results, services)
    return state, problems


def with_chain_peers(state: DesiredState, nodes: NodeIndex) -> DesiredState:
    """`state` with every node as an extra chain peer (DesiredState.peers): for each
    family of its stateless VIPs, each node's address for tunnels of that family (what a
    balancer names a previous owner by); none without a stateless VIP.

    Every node, not the VIPs' backends: a node that left a Service's backends still owns
    the connections its ring slots carried, for the chain window, and the balancers that
    name it may be other nodes' (whose backend sets this agent's may lag or lead). Only the
    families in use: two addresses with one chain id name neither, so no address more
    than needed. Only with a stateless VIP: only then do balancers send chain ids, and a
    cluster that does not use the mode keeps a decapsulation that never chains."""
    families = {v.key.family for v in state if v.stateless}
    want: FrozenSet[IPAddress] = frozenset()
    for family in sorted(families):
        want = want | nodes.tunnel_addresses(family)
    return state if state.peers == want else state.with_peers(want)


def translate(services: Iterable[dict], slices: Iterable[dict], nodes, settings: Settings,
              health: Optional[Mapping[Tuple[str, str], bool]] = None) -> Translation:
    """The node's DesiredState from the whole cache: NodeIndex.build, service_vips for each
    Service of ours, combine. `services` and `slices` may be iterables or mappings (their
    values are used); `nodes` Node dicts or a NodeIndex already built."""
    if isinstance(services, Mapping):
        services = services.values()
    if isinstance(slices, Mapping):
        slices = slices.values()
    index = nodes if isinstance(nodes, NodeIndex) else NodeIndex.build(nodes)
    grouped: Dict[str, List[dict]] = {}
    for s in slices or ():
        owner = slice_service(s) if isinstance(s, dict) else None
        if owner is not None:
            grouped.setdefault(owner, []).append(s)
    by_key: Dict[str, dict] = {}
    results: Dict[str, ServiceResult] = {}
    for svc in services or ():
        if not isinstance(svc, dict) or not is_ours(svc, settings):
            continue
        key = service_key(svc)
        by_key[key] = svc
        results[key] = service_vips(svc, grouped.get(key, ()), index, settings, health)
    state, problems, owned = _combine(results, by_key)
    return Translation(with_chain_peers(state, index), problems, owned)
