"""What the API server does to a write between decoding it and storing it, for the stand-in.

A real kube-apiserver (v1.33) does not store what a client sends: it fills in defaults,
allocates cluster IPs and node ports, refuses what does not validate, and refuses writes into
namespaces that do not exist or are being deleted. pyxlb reads the objects that come out of
that (ipFamilies, externalTrafficPolicy, healthCheckNodePort, addressType, ...), so a stand-in
that stored bodies as given let tests pass on objects no cluster would hold. This module is
that step, called by the stand-in's store (``tests.support.standin``) on every create, update,
patch and delete, for HTTP and administrator writes alike:

- Namespace lifecycle (the NamespaceLifecycle admission plugin): a namespaced object can only
  be created in a Namespace that exists and is not terminating; default, kube-system and
  kube-public cannot be deleted. ``initial_namespaces()`` are the four a cluster starts with.
  Deleting a Namespace (the namespace controller emptying it in the background, then
  removing it) is the store's, helped by ``namespace_conditions()``.
- Service: the v1 defaults, the REST strategy's carry-over of allocated values on update and
  its clearing of fields a type change makes meaningless, cluster IP allocation from the
  service CIDRs (single or dual stack), node port and health check node port allocation, and
  ``ValidateService``/``ValidateServiceUpdate``/``ValidateServiceStatusUpdate``.
- EndpointSlice: port defaults, addressType (required, immutable), addresses of that type,
  ports.
- Namespace: spec.finalizers, status.phase and the kubernetes.io/metadata.name label.
- Every kind: the object name rule of its kind (``Kind.names``).

Refusals carry the real server's codes, reasons and messages (field errors as the API's
``field.Error`` prints them, Status ``details.causes`` included), so a client's error
handling meets what it would meet in a cluster.

Allocation is sequential (lowest free address or port after the last one handed out, upper
part of the range first, as the real allocators prefer for dynamic values), where the real
server picks at random: tests can rely on neither. ``default_service`` is the schema
defaulting alone (no allocation), for code that builds Service objects without a server.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from pyxlb.numbers import int_in

from .standin import (DNS1035_LABEL, DNS1123_LABEL, DNS1123_SUBDOMAIN, NAMESPACE_FINALIZER,
                      PATH_SEGMENT, Kind, StandInError)

# kube-apiserver's --service-cluster-ip-range default for a dual-stack cluster (IPv4 primary)
# and --service-node-port-range
SERVICE_CIDRS: Tuple[str, ...] = ("10.96.0.0/12", "fd00:10:96::/108")
NODE_PORTS: Tuple[int, int] = (30000, 32767)

IMMORTAL_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
INITIAL_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

_LB, _NODE_PORT = "LoadBalancer", "NodePort"
_CLUSTER_IP, _EXTERNAL_NAME = "ClusterIP", "ExternalName"
_SINGLE, _PREFER, _REQUIRE = "SingleStack", "PreferDualStack", "RequireDualStack"
_FAMILIES = ("IPv4", "IPv6")
_PROTOCOLS = ("SCTP", "TCP", "UDP")
_CLIENT_IP_TIMEOUT = 10800              # v1.DefaultClientIPServiceAffinitySeconds
_CLIENT_IP_TIMEOUT_MAX = 86400
_LB_SOURCE_RANGES_ANNOTATION = "service.beta.kubernetes.io/load-balancer-source-ranges"


# ---------------------------------------------------------------------------------------
# Field errors, printed as k8s.io/apimachinery/pkg/util/validation/field prints them


class GoText(str):
    """A bad value already written the way Go's fmt would print it (a struct dump)."""


def _go(value: Any, slice_type: str = "string") -> str:
    """A bad value as field.Error shows it: strings quoted, numbers bare, slices as Go
    literals (``[]string{"a", "b"}``; an absent slice is ``[]string(nil)``)."""
    if isinstance(value, GoText):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        if not value:
            return f"[]{slice_type}(nil)"
        return f"[]{slice_type}{{" + ", ".join(json.dumps(str(v), ensure_ascii=False)
                                                for v in value) + "}"
    return json.dumps(str(value), ensure_ascii=False)


# type -> (text, Status cause reason, whether the bad value is shown)
_ERROR_TYPES = {
    "invalid": ("Invalid value", "FieldValueInvalid", True),
    "required": ("Required value", "FieldValueRequired", False),
    "duplicate": ("Duplicate value", "FieldValueDuplicate", True),
    "forbidden": ("Forbidden", "FieldValueForbidden", False),
    "unsupported": ("Unsupported value", "FieldValueNotSupported", True),
}


@dataclass(frozen=True)
class FieldError:
    """One field's fault: its path ("spec.ports[0].port"), the kind of fault, the bad value
    as Go prints it, and the detail."""

    type: str
    field: str
    shown: str = ""
    detail: str = ""

    def body(self) -> str:
        text, _, with_value = _ERROR_TYPES[self.type]
        out = f"{text}: {self.shown}" if with_value else text
        return f"{out}: {self.detail}" if self.detail else out

    def __str__(self) -> str:
        return f"{self.field}: {self.body()}"

    def cause(self) -> dict:
        return {"reason": _ERROR_TYPES[self.type][1], "message": self.body(), "field": self.field}


def _invalid(path: str, value: Any, detail: str, slice_type: str = "string") -> FieldError:
    return FieldError("invalid", path, _go(value, slice_type), detail)


def _required(path: str, detail: str = "") -> FieldError:
    return FieldError("required", path, "", detail)


def _forbidden(path: str, detail: str) -> FieldError:
    return FieldError("forbidden", path, "", detail)


def _duplicate(path: str, value: Any) -> FieldError:
    return FieldError("duplicate", path, _go(value))


def _unsupported(path: str, value: Any, supported: Iterable[str]) -> FieldError:
    listed = ", ".join(json.dumps(v) for v in sorted(supported))
    return FieldError("unsupported", path, _go(value), f"supported values: {listed}")


class AdmissionError(StandInError):
    """A refusal whose Status carries details the plain StandInError does not build: the
    Kind (not the resource) of a 422, the field causes, a namespace-terminating cause."""

    def __init__(self, code: int, message: str, reason: str, details: dict):
        super().__init__(code, message, reason=reason)
        self.details = details

    def status(self) -> dict:
        out = super().status()
        out["details"] = self.details
        return out


def qualified_kind(kind: Kind) -> str:
    """"Service", "EndpointSlice.discovery.k8s.io": how a 422 names the kind."""
    return f"{kind.kind}.{kind.group}" if kind.group else kind.kind


def qualified_resource(kind: Kind) -> str:
    """"services", "leases.coordination.k8s.io": how a 403 or 404 names the resource."""
    return f"{kind.plural}.{kind.group}" if kind.group else kind.plural


def invalid(kind: Kind, name: str, errors: Sequence[FieldError]) -> AdmissionError:
    """The 422 Invalid the API server answers for field errors (apierrors.NewInvalid):
    one error is printed alone, several in brackets, identical ones once."""
    texts: List[str] = []
    for err in errors:
        if str(err) not in texts:
            texts.append(str(err))
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {"name": name, "group": kind.group, "kind": kind.kind,
               "causes": [err.cause() for err in errors]}
    return AdmissionError(422, f'{qualified_kind(kind)} "{name}" is invalid: {joined}',
                          "Invalid", details)


def _internal(message: str) -> StandInError:
    return StandInError(500, f"Internal error occurred: {message}", reason="InternalError")


def _bad_shape(kind: Kind, path: str, want: str) -> StandInError:
    """A body the API server's decoder would not take (a field of the wrong JSON type)."""
    return StandInError(400, f'{kind.kind} in version "{kind.version}" cannot be handled as a '
                             f"{kind.kind}: {path} must be {want}", reason="BadRequest")


# ---------------------------------------------------------------------------------------
# Names (k8s.io/apimachinery/pkg/util/validation)


_DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_FMT = _DNS1123_LABEL_FMT + r"(\." + _DNS1123_LABEL_FMT + ")*"
_DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
_QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_DNS1123_LABEL_RE = re.compile(f"^{_DNS1123_LABEL_FMT}$")
_DNS1123_SUBDOMAIN_RE = re.compile(f"^{_DNS1123_SUBDOMAIN_FMT}$")
_DNS1035_LABEL_RE = re.compile(f"^{_DNS1035_LABEL_FMT}$")
_QUALIFIED_NAME_RE = re.compile(f"^{_QUALIFIED_NAME_FMT}$")


def _regex_error(message: str, fmt: str, *examples: str) -> str:
    """The apimachinery wording: the rule, examples each followed by "', '" (hence the
    double space before "or"), then the regular expression."""
    if not examples:
        return f"{message} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{fmt}')"


def _max_len(n: int) -> str:
    return f"must be no more than {n} characters"


def dns1123_label(value: str) -> List[str]:
    errs = [_max_len(63)] if len(value) > 63 else []
    if not _DNS1123_LABEL_RE.match(value):
        if _DNS1123_SUBDOMAIN_RE.match(value):
            errs.append("must not contain dots")
        else:
            errs.append(_regex_error(
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character",
                _DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


def dns1123_subdomain(value: str) -> List[str]:
    errs = [_max_len(253)] if len(value) > 253 else []
    if not _DNS1123_SUBDOMAIN_RE.match(value):
        errs.append(_regex_error(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, "
            "'-' or '.', and must start and end with an alphanumeric character",
            _DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def dns1035_label(value: str) -> List[str]:
    errs = [_max_len(63)] if len(value) > 63 else []
    if not _DNS1035_LABEL_RE.match(value):
        errs.append(_regex_error(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
            "start with an alphabetic character, and end with an alphanumeric character",
            _DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errs


def _path_segment(value: str, prefix: bool) -> List[str]:
    if not prefix and value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{bad}'" for bad in ("/", "%") if bad in value]


def qualified_name(value: str) -> List[str]:
    """IsQualifiedName: an optional DNS subdomain prefix and "/", then a name part."""
    errs: List[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs += ["prefix part " + msg for msg in dns1123_subdomain(prefix)]
    else:
        return [_regex_error("a qualified name must consist of alphanumeric characters, '-', "
                             "'_' or '.', and must start and end with an alphanumeric "
                             "character", _QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + _max_len(63))
    if name and not _QUALIFIED_NAME_RE.match(name):
        errs.append("name part " + _regex_error(
            "must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
            "with an alphanumeric character", _QUALIFIED_NAME_FMT, "MyName", "my.name",
            "123-abc"))
    return errs


def _mask_trailing_dash(prefix: str) -> str:
    """A generateName prefix is checked as if a suffix followed: a final '-' is fine (the
    apimachinery helper swaps the last two characters for an 'a', and so does this)."""
    return prefix[:-2] + "a" if len(prefix) > 1 and prefix.endswith("-") else prefix


def name_errors(rule: str, value: str, prefix: bool = False) -> List[str]:
    """What is wrong with an object name (or a generateName prefix) under a kind's rule."""
    if rule == PATH_SEGMENT:
        return _path_segment(value, prefix)
    if prefix:
        value = _mask_trailing_dash(value)
    if rule == DNS1035_LABEL:
        return dns1035_label(value)
    if rule == DNS1123_LABEL:
        return dns1123_label(value)
    if rule != DNS1123_SUBDOMAIN:
        raise StandInError(500, f"unknown object name rule {rule!r}")
    return dns1123_subdomain(value)


def _meta_errors(kind: Kind, meta: dict) -> List[FieldError]:
    """ValidateObjectMeta's name checks: generateName (as a prefix) and name."""
    errs: List[FieldError] = []
    gen = meta.get("generateName")
    if isinstance(gen, str) and gen:
        errs += [_invalid("metadata.generateName", gen, msg)
                 for msg in name_errors(kind.names, gen, prefix=True)]
    name = meta.get("name") or ""
    errs += [_invalid("metadata.name", name, msg) for msg in name_errors(kind.names, name)]
    return errs


# ---------------------------------------------------------------------------------------
# Addresses and ports


def _ip(text: Any) -> Optional[ipaddress._BaseAddress]:
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _family_of(text: str) -> str:
    ip = _ip(text)
    return "unknown" if ip is None else ("IPv4" if ip.version == 4 else "IPv6")


def _port_range_error(lo: int, hi: int) -> str:
    return f"must be between {lo} and {hi}, inclusive"


def _valid_port(value: Any) -> bool:
    return int_in(value, 1, 65535)


_IP_EXAMPLE = "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
_CIDR_EXAMPLE = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def _cidr_ok(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
        return "/" in text
    except ValueError:
        return False


class _Pool:
    """Numbers from first to last (addresses as integers, or ports) and who holds which.
    Dynamic picks start above a lower band kept for values asked for by name (the real
    allocators' static band), and go on from the last pick."""

    def __init__(self, first: int, last: int, band_step: int, band_max: int):
        self.first, self.last = first, last
        size = last - first + 1
        self.band = 0 if size < 16 else max(16, min(band_max, size // band_step))
        self.owner: Dict[int, str] = {}
        self._cursor = first + self.band

    def __contains__(self, value: int) -> bool:
        return self.first <= value <= self.last

    def free(self, value: int, pending: Set[int]) -> bool:
        return value not in pending and value not in self.owner

    def pick(self, pending: Set[int]) -> Optional[int]:
        """The next free number (not held, not picked earlier in this write), or None:
        from the last pick on to the end, then the rest of the upper part, then the band."""
        upper = range(self.first + self.band, self.last + 1)
        start = min(max(self._cursor, upper.start), upper.stop - 1) if upper else upper.start
        order = itertools.chain(range(start, upper.stop), range(upper.start, start),
                                range(self.first, self.first + self.band))
        for value in order:
            if value not in self.owner and value not in pending:
                self._cursor = value + 1
                return value
        return None

    def take(self, values: Iterable[int], owner: str) -> None:
        for v in values:
            if v in self:
                self.owner[v] = owner

    def release(self, values: Iterable[int], owner: str) -> None:
        for v in values:
            if self.owner.get(v) == owner:
                del self.owner[v]


@dataclass
class _Cidr:
    """One service CIDR (one family) and its addresses in use."""

    network: ipaddress._BaseNetwork
    pool: _Pool = field(init=False)

    def __post_init__(self) -> None:
        first = int(self.network.network_address) + 1       # the network address is kept
        last = int(self.network.broadcast_address) - (1 if self.network.version == 4 else 0)
        self.pool = _Pool(first, last, band_step=16, band_max=256)

    @property
    def family(self) -> str:
        return "IPv4" if self.network.version == 4 else "IPv6"

    def address(self, value: int) -> str:
        return str(ipaddress.ip_address(value))


# ---------------------------------------------------------------------------------------
# Service helpers (a Service as the API's JSON: spec fields may be absent)


def _needs_cluster_ip(spec: dict) -> bool:
    return spec.get("type") != _EXTERNAL_NAME


def _needs_node_port(spec: dict) -> bool:
    return spec.get("type") in (_NODE_PORT, _LB)


def _needs_health_check(spec: dict) -> bool:
    return spec.get("type") == _LB and spec.get("externalTrafficPolicy") == "Local"


def _externally_accessible(spec: dict) -> bool:
    return spec.get("type") in (_LB, _NODE_PORT) or (
        spec.get("type") == _CLUSTER_IP and bool(spec.get("externalIPs")))


def _headless(spec: dict) -> bool:
    return list(spec.get("clusterIPs") or ()) == ["None"]


def _should_allocate_node_ports(spec: dict) -> bool:
    if spec.get("type") == _NODE_PORT:
        return True
    return spec.get("type") == _LB and spec.get("allocateLoadBalancerNodePorts") is not False


def _node_ports(spec: dict) -> List[int]:
    return [p["nodePort"] for p in spec.get("ports") or () if p.get("nodePort")]


def _held_ports(spec: dict) -> Set[int]:
    held = set(_node_ports(spec))
    if spec.get("healthCheckNodePort"):
        held.add(spec["healthCheckNodePort"])
    return held


def _set(spec: dict, key: str, value: Any) -> None:
    """Set a field, or remove it for an empty value (Go's omitempty)."""
    if value in (None, "", [], 0) and not isinstance(value, bool):
        spec.pop(key, None)
    else:
        spec[key] = value


def _service_port_dump(port: dict) -> GoText:
    """A ServicePort as Go's %#v prints the internal type (the Duplicate error shows it)."""
    target = port.get("targetPort")
    if isinstance(target, str):
        target_text = f'intstr.IntOrString{{Type:1, IntVal:0, StrVal:{json.dumps(target)}}}'
    else:
        target_text = f'intstr.IntOrString{{Type:0, IntVal:{int(target or 0)}, StrVal:""}}'
    app = port.get("appProtocol")
    app_text = "(*string)(nil)" if app is None else f"(*string)({json.dumps(app)})"
    return GoText(f'core.ServicePort{{Name:"", Protocol:{json.dumps(port.get("protocol") or "")}, '
                  f"AppProtocol:{app_text}, Port:{port.get('port') or 0}, "
                  f"TargetPort:{target_text}, NodePort:0}}")


# the JSON types a Service spec's fields must have; anything else is a 400, as from the decoder
_STR, _INT, _BOOL, _LIST, _DICT = "a string", "an integer", "a boolean", "a list", "an object"
_SPEC_TYPES = {
    "type": _STR, "clusterIP": _STR, "externalName": _STR, "externalTrafficPolicy": _STR,
    "internalTrafficPolicy": _STR, "sessionAffinity": _STR, "loadBalancerClass": _STR,
    "loadBalancerIP": _STR, "ipFamilyPolicy": _STR, "trafficDistribution": _STR,
    "healthCheckNodePort": _INT, "allocateLoadBalancerNodePorts": _BOOL,
    "publishNotReadyAddresses": _BOOL, "clusterIPs": _LIST, "ipFamilies": _LIST,
    "loadBalancerSourceRanges": _LIST, "externalIPs": _LIST, "ports": _LIST, "selector": _DICT,
    "sessionAffinityConfig": _DICT,
}
_PORT_TYPES = {"name": _STR, "protocol": _STR, "appProtocol": _STR, "port": _INT,
               "nodePort": _INT}


def _type_ok(value: Any, want: str) -> bool:
    if want == _STR:
        return isinstance(value, str)
    if want == _INT:
        return int_in(value)
    if want == _BOOL:
        return isinstance(value, bool)
    if want == _LIST:
        return isinstance(value, list)
    return isinstance(value, dict)


def _decode_service(kind: Kind, obj: dict) -> dict:
    """The Service's spec, checked for JSON types, with nulls and empty lists and maps
    dropped (they decode to Go zero values, which the API omits). Returns the spec dict
    inside obj."""
    spec = obj.get("spec")
    if spec is None:
        spec = obj["spec"] = {}
    if not isinstance(spec, dict):
        raise _bad_shape(kind, "spec", _DICT)
    for key in [k for k, v in spec.items() if v is None or v == [] or v == {}]:
        del spec[key]
    for key, want in _SPEC_TYPES.items():
        if key in spec and not _type_ok(spec[key], want):
            raise _bad_shape(kind, f"spec.{key}", want)
    for key in ("clusterIPs", "ipFamilies", "loadBalancerSourceRanges", "externalIPs"):
        if any(not isinstance(v, str) for v in spec.get(key) or ()):
            raise _bad_shape(kind, f"spec.{key}", "a list of strings")
    for i, port in enumerate(spec.get("ports") or ()):
        if not isinstance(port, dict):
            raise _bad_shape(kind, f"spec.ports[{i}]", _DICT)
        for key in [k for k, v in port.items() if v is None]:
            del port[key]
        for key, want in _PORT_TYPES.items():
            if key in port and not _type_ok(port[key], want):
                raise _bad_shape(kind, f"spec.ports[{i}].{key}", want)
        target = port.get("targetPort")
        if target is not None and (isinstance(target, bool)
                                   or not isinstance(target, (int, str))):
            raise _bad_shape(kind, f"spec.ports[{i}].targetPort", "an integer or a string")
    status = obj.get("status")
    if status is not None and not isinstance(status, dict):
        raise _bad_shape(kind, "status", _DICT)
    return spec


def _default_status(obj: dict) -> None:
    """status.loadBalancer is always there (a Go struct, not a pointer); an ingress with an
    ip and no ipMode gets VIP (the LoadBalancerIPMode default)."""
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    lb = status.get("loadBalancer")
    if not isinstance(lb, dict):
        lb = status["loadBalancer"] = {}
    for ing in lb.get("ingress") or ():
        if isinstance(ing, dict) and ing.get("ip") and ing.get("ipMode") is None:
            ing["ipMode"] = "VIP"


def default_service(obj: dict) -> dict:
    """The v1 Service defaults (SetDefaults_Service), applied in place and returned: what
    the API server fills in before anything else, whatever the cluster. Allocated values
    (clusterIP(s), ipFamilies, ipFamilyPolicy, nodePorts, healthCheckNodePort) are not
    among them: they need a cluster's ranges and state (``Admission``)."""
    spec = obj.setdefault("spec", {})
    for key in [k for k, v in spec.items() if v is None]:
        del spec[key]
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "None":
        spec.pop("sessionAffinityConfig", None)
    elif spec["sessionAffinity"] == "ClientIP":
        config = spec.get("sessionAffinityConfig")
        client_ip = config.get("clientIP") if isinstance(config, dict) else None
        if not isinstance(client_ip, dict) or client_ip.get("timeoutSeconds") is None:
            spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": _CLIENT_IP_TIMEOUT}}
    spec.setdefault("type", _CLUSTER_IP)
    for port in spec.get("ports") or ():
        if not isinstance(port, dict):
            continue
        port.setdefault("protocol", "TCP")
        if port.get("targetPort") in (None, 0, ""):
            if port.get("port") is not None:
                port["targetPort"] = port["port"]
    if _externally_accessible(spec) and not spec.get("externalTrafficPolicy"):
        spec["externalTrafficPolicy"] = "Cluster"
    if spec.get("internalTrafficPolicy") is None and spec["type"] in (_NODE_PORT, _LB,
                                                                        _CLUSTER_IP):
        spec["internalTrafficPolicy"] = "Cluster"
    if spec["type"] == _LB and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True
    _default_status(obj)
    return obj


def crd_status(crd: dict, now: Any) -> dict:
    """What the apiextensions controllers write on a new CRD: its names accepted, the CRD
    established (``kubectl wait --for condition=established`` returns), its stored versions.
    The stand-in serves only the custom resources it knows (IPPool, BGPPeer): a CRD of another
    kind is stored, not served."""
    spec = crd.get("spec") if isinstance(crd.get("spec"), dict) else {}
    names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
    stored = [v.get("name") for v in spec.get("versions") or ()
              if isinstance(v, dict) and v.get("storage")]

    def cond(ctype: str, reason: str, message: str) -> dict:
        return {"type": ctype, "status": "True", "lastTransitionTime": now, "reason": reason,
                "message": message}
    return {"acceptedNames": dict(names),
            "conditions": [cond("NamesAccepted", "NoConflicts", "no conflicts found"),
                           cond("Established", "InitialNamesAccepted",
                                "the initial names have been accepted")],
            "storedVersions": stored}


# ---------------------------------------------------------------------------------------
# The admission step


class Admission:
    """The API server's part of every write: namespace lifecycle, defaulting, allocation,
    validation. One per stand-in; the store calls it with its lock held and tells it what
    was stored (``stored``) so allocations follow what exists."""

    def __init__(self, service_cidrs: Optional[Sequence[str]] = None,
                 node_ports: Optional[Tuple[int, int]] = None):
        """`service_cidrs`: kube-apiserver's --service-cluster-ip-range, one CIDR (a
        single-stack cluster) or one per family, the first the primary; `node_ports`: its
        --service-node-port-range. None: the defaults (SERVICE_CIDRS, NODE_PORTS)."""
        service_cidrs = SERVICE_CIDRS if service_cidrs is None else service_cidrs
        node_ports = NODE_PORTS if node_ports is None else node_ports
        if isinstance(service_cidrs, str):
            service_cidrs = (service_cidrs,)
        if not 1 <= len(service_cidrs) <= 2:
            raise StandInError(400, f"service CIDRs: one, or one per family, not "
                                    f"{list(service_cidrs)}")
        cidrs = []
        for text in service_cidrs:
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise StandInError(400, f"service CIDR {text!r}: {exc}") from None
            smallest = 12 if net.version == 4 else 108      # kube-apiserver's own limits
            if net.prefixlen < smallest:
                raise StandInError(400, f"service CIDR {text} is too large: for IPv{net.version} "
                                        f"the mask must be >= {smallest}")
            cidrs.append(_Cidr(net))
        if len({c.family for c in cidrs}) != len(cidrs):
            raise StandInError(400, f"service CIDRs {list(service_cidrs)}: a dual-stack cluster "
                                    f"needs one IPv4 and one IPv6 range")
        lo, hi = node_ports
        if not 1 <= lo <= hi <= 65535:
            raise StandInError(400, f"node port range {lo}-{hi} is not a range of ports")
        self.cidrs: Dict[str, _Cidr] = {c.family: c for c in cidrs}
        self.primary = cidrs[0].family
        self.node_ports = _Pool(lo, hi, band_step=32, band_max=128)
        self.node_port_range = f"{lo}-{hi}"

    # -- what exists --------------------------------------------------------------------

    def stored(self, kind: Kind, old: Optional[dict], new: Optional[dict]) -> None:
        """The store wrote `new` over `old` (either may be None): allocations follow, so an
        address or a port is free again once the Service holding it is gone."""
        if kind.kind != "Service" or kind.group:
            return
        for obj, keep in ((old, False), (new, True)):
            if obj is None:
                continue
            meta = obj.get("metadata") or {}
            owner = f"{meta.get('namespace')}/{meta.get('name')}"
            spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
            addrs = [a for a in (_ip(t) for t in spec.get("clusterIPs") or ()) if a is not None]
            ports = _held_ports(spec)
            if keep:
                self.node_ports.take(ports, owner)
            else:
                self.node_ports.release(ports, owner)
            for addr in addrs:
                cidr = self.cidrs.get("IPv4" if addr.version == 4 else "IPv6")
                if cidr is not None:
                    (cidr.pool.take if keep else cidr.pool.release)([int(addr)], owner)

    # -- namespaces ---------------------------------------------------------------------

    @staticmethod
    def initial_namespaces() -> List[dict]:
        """The Namespaces a new cluster has (kube-apiserver creates them at start)."""
        return [{"apiVersion": "v1", "kind": "Namespace",
                 "metadata": {"name": n, "labels": {NAMESPACE_NAME_LABEL: n}},
                 "spec": {"finalizers": [NAMESPACE_FINALIZER]},
                 "status": {"phase": "Active"}} for n in INITIAL_NAMESPACES]

    @staticmethod
    def check_create_in(kind: Kind, namespace: str, meta: dict, ns_kind: Kind,
                        ns_obj: Optional[dict]) -> None:
        """NamespaceLifecycle on a create: 404 when the namespace does not exist, 403 when it
        is being deleted."""
        if ns_obj is None:
            raise StandInError(404, f'namespaces "{namespace}" not found', kind=ns_kind,
                               name=namespace)
        if (ns_obj.get("status") or {}).get("phase") == "Terminating":
            name = meta.get("name") or meta.get("generateName") or "Unknown"
            raise AdmissionError(
                403, f'{qualified_resource(kind)} "{name}" is forbidden: unable to create new '
                     f"content in namespace {namespace} because it is being terminated",
                "Forbidden",
                {"name": name, "group": kind.group, "kind": kind.plural,
                 "causes": [{"reason": "NamespaceTerminating",
                             "message": f"namespace {namespace} is being terminated",
                             "field": "metadata.namespace"}]})

    @staticmethod
    def check_delete(kind: Kind, name: str) -> None:
        """NamespaceLifecycle on a delete: the namespaces a cluster needs stay."""
        if kind.kind == "Namespace" and not kind.group and name in IMMORTAL_NAMESPACES:
            raise StandInError(403, f'namespaces "{name}" is forbidden: this namespace may not '
                                    f"be deleted", kind=kind, name=name)

    @staticmethod
    def namespace_conditions(remaining: Dict[str, int], finalizers: Dict[str, int],
                             now: str) -> List[dict]:
        """The five conditions the namespace controller writes on a Namespace being deleted
        after each pass: what content remains (by resource) and which finalizers hold it, or
        the "all done" form of each."""
        def cond(ctype: str, status: str, reason: str, message: str) -> dict:
            return {"type": ctype, "status": status, "lastTransitionTime": now,
                    "reason": reason, "message": message}

        out = [cond("NamespaceDeletionDiscoveryFailure", "False", "ResourcesDiscovered",
                    "All resources successfully discovered"),
               cond("NamespaceDeletionGroupVersionParsingFailure", "False",
                    "ParsedGroupVersions", "All legacy kube types successfully parsed"),
               cond("NamespaceDeletionContentFailure", "False", "ContentDeleted",
                    "All content successfully deleted, may be waiting on finalization")]
        if remaining:
            out.append(cond("NamespaceContentRemaining", "True", "SomeResourcesRemain",
                            "Some resources are remaining: " + ", ".join(
                                f"{r} has {n} resource instances"
                                for r, n in sorted(remaining.items()))))
        else:
            out.append(cond("NamespaceContentRemaining", "False", "ContentRemoved",
                            "All content successfully removed"))
        if finalizers:
            out.append(cond("NamespaceFinalizersRemaining", "True", "SomeFinalizersRemain",
                            "Some content in the namespace has finalizers remaining: "
                            + ", ".join(f"{f} in {n} resource instances"
                                        for f, n in sorted(finalizers.items()))))
        else:
            out.append(cond("NamespaceFinalizersRemaining", "False", "ContentHasNoFinalizers",
                            "All content-preserving finalizers finished"))
        return out

    # -- writes -------------------------------------------------------------------------

    def create(self, kind: Kind, obj: dict) -> None:
        """Default, allocate and validate an object being created (in place); raises the
        API server's refusal. metadata.name is set (generated names included)."""
        meta = obj["metadata"]
        if kind.kind == "Service" and not kind.group:
            self._create_service(kind, obj)
            return
        if kind.kind == "Namespace" and not kind.group:
            spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
            obj["spec"] = dict(spec, finalizers=[NAMESPACE_FINALIZER])
            status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
            obj["status"] = dict(status, phase="Active")
        if kind.kind == "CustomResourceDefinition" and "status" not in obj:
            obj["status"] = crd_status(obj, meta.get("creationTimestamp"))
        errs = _meta_errors(kind, meta)
        if kind.kind == "EndpointSlice":
            errs += self._endpoint_slice(kind, obj, None)
        self._labels(kind, obj)
        if errs:
            raise invalid(kind, meta["name"], errs)

    def update(self, kind: Kind, old: dict, new: dict, part: str) -> None:
        """Default, carry allocations over, allocate and validate `new`, which replaces
        `old` (in place). `part` is "main", "status" or "all" (an administrator's write of
        both); the store has already kept what it owns (metadata, and the status or the rest
        as `part` says)."""
        name = new["metadata"]["name"]
        if kind.kind == "Service" and not kind.group:
            if part == "status":
                self._service_status(kind, new)
            else:
                self._update_service(kind, old, new)
            return
        if kind.kind == "Namespace" and not kind.group:
            # spec.finalizers change only through /finalize; status only through /status
            new["spec"] = dict(new.get("spec") if isinstance(new.get("spec"), dict) else {},
                               finalizers=list((old.get("spec") or {}).get("finalizers") or []))
            if not new["spec"]["finalizers"]:
                del new["spec"]["finalizers"]
        errs: List[FieldError] = []
        if kind.kind == "Namespace" and not kind.group:
            errs += self._namespace_phase(new)
        if kind.kind == "EndpointSlice":
            errs += self._endpoint_slice(kind, new, old)
        self._labels(kind, new)
        if errs:
            raise invalid(kind, name, errs)

    @staticmethod
    def _namespace_phase(obj: dict) -> List[FieldError]:
        """ValidateNamespaceStatusUpdate: the phase says whether deletion has begun."""
        status = obj.get("status") if isinstance(obj.get("status"), dict) else {}
        phase = status.get("phase") or ""
        if "deletionTimestamp" not in obj["metadata"]:
            if phase != "Active":
                return [_invalid("status.Phase", phase,
                                 "may only be 'Active' if `deletionTimestamp` is empty")]
        elif phase != "Terminating":
            return [_invalid("status.Phase", phase,
                             "may only be 'Terminating' if `deletionTimestamp` is not empty")]
        return []

    @staticmethod
    def _labels(kind: Kind, obj: dict) -> None:
        """A Namespace carries its own name as a label, whatever the write says."""
        if kind.kind == "Namespace" and not kind.group:
            meta = obj["metadata"]
            labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
            meta["labels"] = dict(labels, **{NAMESPACE_NAME_LABEL: meta["name"]})

    # -- EndpointSlice --------------------------------------------------------------------

    @staticmethod
    def _endpoint_slice(kind: Kind, obj: dict, old: Optional[dict]) -> List[FieldError]:
        """Port defaults (name "", protocol TCP) and ValidateEndpointSlice(Update). Endpoint
        conditions are left as sent: nil means unknown, and the server does not guess."""
        errs: List[FieldError] = []
        address_type = obj.get("addressType")
        if not address_type:
            errs.append(_required("addressType"))
        elif address_type not in ("FQDN", "IPv4", "IPv6"):
            errs.append(_unsupported("addressType", address_type, ("FQDN", "IPv4", "IPv6")))
        endpoints = obj.get("endpoints")
        if endpoints is not None and not isinstance(endpoints, list):
            raise _bad_shape(kind, "endpoints", _LIST)
        for i, ep in enumerate(endpoints or ()):
            if not isinstance(ep, dict):
                raise _bad_shape(kind, f"endpoints[{i}]", _DICT)
            addresses = ep.get("addresses") or []
            if not isinstance(addresses, list):
                raise _bad_shape(kind, f"endpoints[{i}].addresses", _LIST)
            path = f"endpoints[{i}].addresses"
            if not addresses:
                errs.append(_required(path, "must contain at least 1 address"))
            for j, addr in enumerate(addresses):
                ip = _ip(addr)
                if address_type == "IPv4" and (ip is None or ip.version != 4):
                    errs.append(_invalid(f"{path}[{j}]", addr, "must be a valid IPv4 address"))
                elif address_type == "IPv6" and (ip is None or ip.version != 6):
                    errs.append(_invalid(f"{path}[{j}]", addr, "must be a valid IPv6 address"))
        ports = obj.get("ports")
        if ports is not None and not isinstance(ports, list):
            raise _bad_shape(kind, "ports", _LIST)
        names: Set[str] = set()
        for i, port in enumerate(ports or ()):
            if not isinstance(port, dict):
                raise _bad_shape(kind, f"ports[{i}]", _DICT)
            if port.get("name") is None:
                port["name"] = ""
            if port.get("protocol") is None:
                port["protocol"] = "TCP"
            if port["name"]:
                errs += [_invalid(f"ports[{i}].name", port["name"], msg)
                         for msg in dns1123_label(str(port["name"]))]
                if port["name"] in names:
                    errs.append(_duplicate(f"ports[{i}].name", port["name"]))
                names.add(port["name"])
            if port.get("port") is not None and not _valid_port(port["port"]):
                errs.append(_invalid(f"ports[{i}].port", port["port"],
                                     _port_range_error(1, 65535)))
            if port["protocol"] not in _PROTOCOLS:
                errs.append(_unsupported(f"ports[{i}].protocol", port["protocol"], _PROTOCOLS))
        if old is not None and obj.get("addressType") != old.get("addressType"):
            errs.append(_invalid("addressType", obj.get("addressType") or "",
                                 "field is immutable"))
        return errs

    # -- Service: create and update -------------------------------------------------------

    def _create_service(self, kind: Kind, obj: dict) -> None:
        """Defaults, then (as the Service REST storage's BeginCreate) cluster IPs and node
        ports, then the strategy's PrepareForCreate and ValidateService."""
        spec = _decode_service(kind, obj)
        default_service(obj)
        name = obj["metadata"]["name"]
        if spec.get("clusterIP") and not spec.get("clusterIPs"):
            spec["clusterIPs"] = [spec["clusterIP"]]
        self._init_ip_families(kind, name, spec, None)
        pending_ips: Dict[str, Set[int]] = {f: set() for f in self.cidrs}
        self._alloc_cluster_ips(kind, name, spec, pending_ips)
        pending: Set[int] = set()
        if _needs_node_port(spec):
            self._init_node_ports(kind, name, spec, pending)
        if _needs_health_check(spec):
            self._alloc_health_check(spec, pending)
        errs = self._validate(kind, obj, None)
        if errs:
            raise invalid(kind, name, errs)

    def _update_service(self, kind: Kind, old_obj: dict, new: dict) -> None:
        """Defaults, then BeginUpdate (allocated values carried over, cluster IPs and node
        ports allocated or released), then PrepareForUpdate (fields a type change leaves
        meaningless dropped) and ValidateServiceUpdate."""
        name = new["metadata"]["name"]
        old = old_obj.get("spec") or {}
        spec = _decode_service(kind, new)
        default_service(new)
        self._patch_allocated(spec, old)
        self._normalize_cluster_ips(spec, old)
        self._init_ip_families(kind, name, spec, old)
        pending_ips: Dict[str, Set[int]] = {f: set() for f in self.cidrs}
        self._update_cluster_ips(kind, name, spec, old, pending_ips)
        pending: Set[int] = set()
        if _needs_node_port(spec):
            self._update_node_ports(kind, name, spec, pending, set(_node_ports(old)))
        if not _needs_health_check(old) and _needs_health_check(spec):
            self._alloc_health_check(spec, pending)
        self._drop_type_dependent(new, old)
        if spec.get("type") == _EXTERNAL_NAME:
            spec.pop("internalTrafficPolicy", None)   # hidden on read for ExternalName
        errs = self._validate(kind, new, old_obj)
        if errs:
            raise invalid(kind, name, errs)

    def _service_status(self, kind: Kind, obj: dict) -> None:
        """A write to /status: the defaults of the status, ValidateLoadBalancerStatus."""
        spec = obj.get("spec") or {}
        if obj.get("status") is not None and not isinstance(obj.get("status"), dict):
            raise _bad_shape(kind, "status", _DICT)
        _default_status(obj)
        ingress = obj["status"]["loadBalancer"].get("ingress") or []
        if not isinstance(ingress, list):
            raise _bad_shape(kind, "status.loadBalancer.ingress", _LIST)
        errs: List[FieldError] = []
        path = "status.loadBalancer.ingress"
        if ingress and spec.get("type") != _LB:
            errs.append(_forbidden(path, "may only be used when `spec.type` is 'LoadBalancer'"))
        else:
            for i, ing in enumerate(ingress):
                if not isinstance(ing, dict):
                    raise _bad_shape(kind, f"{path}[{i}]", _DICT)
                ip, mode, host = ing.get("ip"), ing.get("ipMode"), ing.get("hostname")
                if ip and _ip(ip) is None:
                    errs.append(_invalid(f"{path}[{i}].ip", ip, _IP_EXAMPLE))
                if mode is not None and not ip:
                    errs.append(_forbidden(f"{path}[{i}].ipMode",
                                           "may not be specified when `ip` is not set"))
                elif mode is not None and mode not in ("Proxy", "VIP"):
                    errs.append(_unsupported(f"{path}[{i}].ipMode", mode, ("Proxy", "VIP")))
                if host:
                    errs += [_invalid(f"{path}[{i}].hostname", host, msg)
                             for msg in dns1123_subdomain(str(host))]
                    if _ip(host) is not None:
                        errs.append(_invalid(f"{path}[{i}].hostname", host,
                                             "must be a DNS name, not an IP address"))
        if errs:
            raise invalid(kind, obj["metadata"]["name"], errs)

    @staticmethod
    def _patch_allocated(spec: dict, old: dict) -> None:
        """A write that leaves out what was allocated keeps it: cluster IPs, the node port of
        a port of the same name (unless the write gives that number to another port), the
        health check node port."""
        if _needs_cluster_ip(old) and _needs_cluster_ip(spec):
            if not spec.get("clusterIP") and old.get("clusterIP"):
                spec["clusterIP"] = old["clusterIP"]
            if not spec.get("clusterIPs") and old.get("clusterIPs"):
                spec["clusterIPs"] = list(old["clusterIPs"])
        if _needs_node_port(old) and _needs_node_port(spec):
            used = set(_node_ports(old)) & set(_node_ports(spec))
            by_name = {p.get("name") or "": p.get("nodePort") or 0 for p in old.get("ports") or ()}
            for port in spec.get("ports") or ():
                if not port.get("nodePort"):
                    value = by_name.get(port.get("name") or "", 0)
                    if value and value not in used:
                        port["nodePort"] = value
        if _needs_health_check(old) and _needs_health_check(spec):
            if not spec.get("healthCheckNodePort") and old.get("healthCheckNodePort"):
                spec["healthCheckNodePort"] = old["healthCheckNodePort"]

    @staticmethod
    def _normalize_cluster_ips(spec: dict, old: dict) -> None:
        """Keep clusterIP and clusterIPs in step when a write gives one of them only."""
        old_ips, new_ips = list(old.get("clusterIPs") or ()), list(spec.get("clusterIPs") or ())
        if old_ips and not new_ips and old.get("clusterIP", "") == spec.get("clusterIP", ""):
            spec["clusterIPs"] = new_ips = old_ips
        if old.get("clusterIP", "") != spec.get("clusterIP", ""):
            if old.get("clusterIP") and not spec.get("clusterIP"):
                if old_ips == new_ips:
                    spec.pop("clusterIPs", None)
            elif old_ips == new_ips:
                spec["clusterIPs"] = [spec["clusterIP"]]

    @staticmethod
    def _matching_prefer_dual_stack(spec: dict, old: Optional[dict]) -> bool:
        """An update of a PreferDualStack Service that leaves its IPs and families alone:
        nothing is added or removed, even if the cluster's stacks changed."""
        return (old is not None and spec.get("ipFamilyPolicy") is not None
                and old.get("type") == spec.get("type")
                and spec.get("type") in (_CLUSTER_IP, _NODE_PORT, _LB)
                and spec.get("ipFamilyPolicy") == _PREFER
                and old.get("ipFamilyPolicy") in (None, _PREFER)
                and list(old.get("clusterIPs") or ()) == list(spec.get("clusterIPs") or ())
                and list(old.get("ipFamilies") or ()) == list(spec.get("ipFamilies") or ()))

    def _init_ip_families(self, kind: Kind, name: str, spec: dict, old: Optional[dict]) -> None:
        """ipFamilyPolicy and ipFamilies from what was asked and what the cluster has."""
        if spec.get("type") == _EXTERNAL_NAME or self._matching_prefer_dual_stack(spec, old):
            return
        if spec.get("ipFamilyPolicy") is None:
            if old is not None and old.get("ipFamilyPolicy") is not None:
                spec["ipFamilyPolicy"] = old["ipFamilyPolicy"]
            elif spec.get("clusterIP") == "None" and not spec.get("selector"):
                spec["ipFamilyPolicy"] = _REQUIRE
            else:
                spec["ipFamilyPolicy"] = _SINGLE
        pre = _cluster_ip_errors(spec)
        if pre:
            raise invalid(kind, name, pre)
        policy = spec["ipFamilyPolicy"]
        ips, fams = list(spec.get("clusterIPs") or ()), list(spec.get("ipFamilies") or ())
        errs: List[FieldError] = []
        if old is not None:
            old_ips, old_fams = list(old.get("clusterIPs") or ()), list(old.get("ipFamilies") or ())
            if policy == _SINGLE:
                if old_ips == ips and len(ips) > 1:
                    ips = ips[:1]
                if old_fams == fams and len(fams) > 1:
                    fams = fams[:1]
            else:
                if ips and len(ips) < len(old_ips):
                    errs.append(_invalid("spec.ipFamilyPolicy", policy, "must be 'SingleStack' "
                                         "to release the secondary cluster IP"))
                if fams and len(fams) < len(old_fams):
                    errs.append(_invalid("spec.ipFamilyPolicy", policy, "must be 'SingleStack' "
                                         "to release the secondary IP family"))
        if policy == _SINGLE:
            if len(ips) == 2:
                errs.append(_invalid("spec.ipFamilyPolicy", policy, "must be 'RequireDualStack' "
                                     "or 'PreferDualStack' when multiple cluster IPs are "
                                     "specified"))
            if len(fams) == 2:
                errs.append(_invalid("spec.ipFamilyPolicy", policy, "must be 'RequireDualStack' "
                                     "or 'PreferDualStack' when multiple IP families are "
                                     "specified"))
        for i, ip in enumerate(ips):
            if ip == "None":
                break
            fam = _family_of(ip)
            if i >= len(fams):
                if fam not in self.cidrs:
                    errs.append(_invalid(f"spec.clusterIPs[{i}]", ips,
                                         f"{fam} is not configured on this cluster"))
                else:
                    fams.append(fam)
        _set(spec, "clusterIPs", ips)
        _set(spec, "ipFamilies", fams)
        if errs:
            raise invalid(kind, name, errs)
        other = {"IPv4": "IPv6", "IPv6": "IPv4"}
        if spec.get("clusterIP") == "None" and not spec.get("selector"):
            # headless without a selector: its endpoints may be of either family
            if not fams:
                fams = [self.primary]
            if len(fams) < 2 and policy != _SINGLE and fams[0] in other:
                fams.append(other[fams[0]])
            spec["ipFamilies"] = fams
            return
        if policy == _REQUIRE and len(self.cidrs) < 2:
            errs.append(_invalid("spec.ipFamilyPolicy", policy,
                                 "this cluster is not configured for dual-stack services"))
        for i, fam in enumerate(fams):
            if fam not in self.cidrs:
                errs.append(_invalid(f"spec.ipFamilies[{i}]", fam, "not configured on this "
                                                                   "cluster"))
        if errs:
            raise invalid(kind, name, errs)
        if not fams:
            fams = [self.primary]
        if policy != _SINGLE and len(fams) == 1 and len(self.cidrs) == 2:
            fams.append(other[fams[0]])
        spec["ipFamilies"] = fams

    def _alloc_cluster_ips(self, kind: Kind, name: str, spec: dict,
                           pending: Dict[str, Set[int]], only: Optional[int] = None) -> None:
        """Give each family without one an address from its CIDR, and reserve the ones
        asked for (422 if outside the range or taken). `only`: that index alone (a
        Service becoming dual-stack keeps its first address)."""
        if spec.get("type") == _EXTERNAL_NAME or _headless(spec):
            return
        ips = list(spec.get("clusterIPs") or ())
        fams = list(spec.get("ipFamilies") or ())
        while len(ips) < len(fams):
            ips.append("")
        for i, fam in enumerate(fams):
            if only is not None and i != only:
                continue
            cidr = self.cidrs[fam]
            if not ips[i]:
                value = cidr.pool.pick(pending[fam])
                if value is None:
                    raise _internal("failed to allocate a serviceIP: range is full")
                pending[fam].add(value)
                ips[i] = cidr.address(value)
                continue
            addr = _ip(ips[i])
            if addr is None or addr not in cidr.network or int(addr) not in cidr.pool:
                why = "the provided network does not match the current range"
            elif not cidr.pool.free(int(addr), pending[fam]):
                why = "provided IP is already allocated"
            else:
                pending[fam].add(int(addr))
                continue
            raise invalid(kind, name, [_invalid("spec.clusterIPs", list(spec.get("clusterIPs")
                                                                         or ()),
                                                f"failed to allocate IP {ips[i]}: {why}")])
        spec["clusterIPs"] = ips
        if ips:
            spec["clusterIP"] = ips[0]

    def _update_cluster_ips(self, kind: Kind, name: str, spec: dict, old: dict,
                            pending: Dict[str, Set[int]]) -> None:
        """Allocate what an update needs: every address for a Service leaving ExternalName,
        the second one for a Service becoming dual-stack. Releases happen when the update
        is stored (``stored``)."""
        if self._matching_prefer_dual_stack(spec, old):
            return
        if old.get("type") == _EXTERNAL_NAME and spec.get("type") != _EXTERNAL_NAME:
            self._alloc_cluster_ips(kind, name, spec, pending)
            return
        if _headless(old) or spec.get("type") == _EXTERNAL_NAME:
            return
        if len(old.get("ipFamilies") or ()) == 1 and len(spec.get("ipFamilies") or ()) == 2:
            self._alloc_cluster_ips(kind, name, spec, pending, only=1)

    def _reserve_port(self, value: int, pending: Set[int]) -> Optional[str]:
        """Reserve a node port asked for by number; the allocator's complaint, or None."""
        if value not in self.node_ports:
            return (f"provided port is not in the valid range. The range of valid ports is "
                    f"{self.node_port_range}")
        if not self.node_ports.free(value, pending):
            return "provided port is already allocated"
        pending.add(value)
        return None

    def _next_port(self, pending: Set[int]) -> int:
        value = self.node_ports.pick(pending)
        if value is None:
            raise _internal("failed to allocate a nodePort: range is full")
        pending.add(value)
        return value

    def _init_node_ports(self, kind: Kind, name: str, spec: dict, pending: Set[int]) -> None:
        """Node ports of a new NodePort or LoadBalancer Service: one per port number (TCP and
        UDP on the same port share it), the ones asked for reserved (422 if taken)."""
        by_port: Dict[int, int] = {}
        ports = spec.get("ports") or []
        for i, port in enumerate(ports):
            if not port.get("nodePort") and not _should_allocate_node_ports(spec):
                continue          # not allocated, but a number asked for is still reserved
            number = port.get("port")
            have = by_port.get(number, 0)
            if not have:
                asked = next((p["nodePort"] for p in ports
                              if p.get("port") == number and p.get("nodePort")), 0)
                if asked:
                    why = self._reserve_port(asked, pending)
                    if why:
                        raise invalid(kind, name, [_invalid(f"spec.ports[{i}].nodePort", asked,
                                                            why)])
                    port["nodePort"] = by_port[number] = asked
                else:
                    port["nodePort"] = by_port[number] = self._next_port(pending)
            elif port.get("nodePort", 0) != have:
                if not port.get("nodePort"):
                    port["nodePort"] = have
                else:
                    why = self._reserve_port(port["nodePort"], pending)
                    if why:
                        raise invalid(kind, name, [_invalid(f"spec.ports[{i}].nodePort",
                                                            port["nodePort"], why)])

    def _update_node_ports(self, kind: Kind, name: str, spec: dict, pending: Set[int],
                           own: Set[int]) -> None:
        """Node ports on an update: numbers the Service held stay, new numbers asked for are
        reserved, ports without one get one (unless allocation is off)."""
        seen: Set[Tuple[str, int]] = set()
        for i, port in enumerate(spec.get("ports") or ()):
            if not port.get("nodePort") and not _should_allocate_node_ports(spec):
                continue
            if port.get("nodePort"):
                if port["nodePort"] not in own and port["nodePort"] not in pending:
                    why = self._reserve_port(port["nodePort"], pending)
                    if why:
                        raise invalid(kind, name, [_invalid(f"spec.ports[{i}].nodePort",
                                                            port["nodePort"], why)])
            else:
                port["nodePort"] = self._next_port(pending)
            key = (port.get("protocol") or "", port["nodePort"])
            if key in seen:
                raise _internal(f"duplicate nodePort: {{{key[0]} {key[1]}}}")
            seen.add(key)

    def _alloc_health_check(self, spec: dict, pending: Set[int]) -> None:
        """healthCheckNodePort for a Local LoadBalancer: the one asked for, or the next
        free; the API server answers 500 when it cannot have it."""
        asked = spec.get("healthCheckNodePort")
        if asked:
            why = self._reserve_port(asked, pending)
            if why:
                raise _internal(f"failed to allocate requested HealthCheck NodePort {asked}: {why}")
        else:
            spec["healthCheckNodePort"] = self._next_port(pending)

    @staticmethod
    def _drop_type_dependent(new: dict, old: dict) -> None:
        """What the Service strategy clears when the type or policy no longer needs it, if
        the write left it as it was (allocated values are released when stored)."""
        spec = new["spec"]
        if _needs_cluster_ip(old) and not _needs_cluster_ip(spec):
            if (old.get("clusterIP", "") == spec.get("clusterIP", "")
                    and list(old.get("clusterIPs") or ()) == list(spec.get("clusterIPs") or ())):
                spec.pop("clusterIP", None)
                spec.pop("clusterIPs", None)
            if list(old.get("ipFamilies") or ()) == list(spec.get("ipFamilies") or ()):
                spec.pop("ipFamilies", None)
            if old.get("ipFamilyPolicy") == spec.get("ipFamilyPolicy"):
                spec.pop("ipFamilyPolicy", None)
        if (_needs_node_port(old) and not _needs_node_port(spec)
                and set(_node_ports(spec)) <= set(_node_ports(old))):
            for port in spec.get("ports") or ():
                port.pop("nodePort", None)
        if (_needs_health_check(old) and not _needs_health_check(spec)
                and old.get("healthCheckNodePort") == spec.get("healthCheckNodePort")):
            spec.pop("healthCheckNodePort", None)
        if old.get("type") == _LB and spec.get("type") != _LB:
            if (old.get("allocateLoadBalancerNodePorts") is not None
                    and old.get("allocateLoadBalancerNodePorts")
                    == spec.get("allocateLoadBalancerNodePorts")):
                spec.pop("allocateLoadBalancerNodePorts", None)
            if old.get("loadBalancerClass") == spec.get("loadBalancerClass"):
                spec.pop("loadBalancerClass", None)
        if (_externally_accessible(old) and not _externally_accessible(spec)
                and old.get("externalTrafficPolicy") == spec.get("externalTrafficPolicy")):
            spec.pop("externalTrafficPolicy", None)
        if spec.get("type") != _LB:
            new["status"] = dict(new.get("status") or {}, loadBalancer={})

    # -- Service: validation --------------------------------------------------------------

    def _validate(self, kind: Kind, obj: dict, old_obj: Optional[dict]) -> List[FieldError]:
        """ValidateService, preceded on an update by ValidateServiceUpdate's own checks."""
        spec = obj["spec"]
        errs: List[FieldError] = []
        if old_obj is not None:
            errs += _update_errors(spec, old_obj.get("spec") or {})
        else:
            errs += _meta_errors(kind, obj["metadata"])
        errs += _service_errors(obj)
        return errs


def _cluster_ip_errors(spec: dict) -> List[FieldError]:
    """ValidateServiceClusterIPsRelatedFields."""
    if spec.get("type") == _EXTERNAL_NAME:
        return []
    errs: List[FieldError] = []
    ips = list(spec.get("clusterIPs") or ())
    fams = list(spec.get("ipFamilies") or ())
    if spec.get("clusterIP"):
        if not ips:
            errs.append(_required("spec.clusterIPs"))
        elif ips[0] != spec["clusterIP"]:
            errs.append(_invalid("spec.clusterIPs", ips, "first value must match `clusterIP`"))
    elif ips:
        errs.append(_invalid("spec.clusterIPs", ips,
                             "must be empty when `clusterIP` is not specified"))
    seen: Set[str] = set()
    for i, fam in enumerate(fams):
        if fam not in _FAMILIES:
            errs.append(_unsupported(f"spec.ipFamilies[{i}]", fam, _FAMILIES))
        if fam in seen:
            errs.append(_duplicate(f"spec.ipFamilies[{i}]", fam))
        seen.add(fam)
    policy = spec.get("ipFamilyPolicy")
    if policy is not None and policy not in (_SINGLE, _PREFER, _REQUIRE):
        errs.append(_unsupported("spec.ipFamilyPolicy", policy, (_SINGLE, _PREFER, _REQUIRE)))
    bad_ips = False
    for i, ip in enumerate(ips):
        if i == 0 and ip == "None":
            if len(ips) > 1:
                bad_ips = True
                errs.append(_invalid("spec.clusterIPs", ips,
                                     "'None' must be the first and only value"))
            continue
        if _ip(ip) is None:
            bad_ips = True
            errs.append(_invalid(f"spec.clusterIPs[{i}]", ip, _IP_EXAMPLE))
    if len(ips) > 2:
        errs.append(_invalid("spec.clusterIPs", ips, "may only hold up to 2 values"))
    if bad_ips:
        return errs
    if len(ips) > 1 and len({_family_of(ip) for ip in ips}) != len(ips):
        errs.append(_invalid("spec.clusterIPs", ips,
                             "may specify no more than one IP for each IP family"))
    if not _headless(spec) and ips and fams:
        for i, ip in enumerate(ips[:len(fams)]):
            if fams[i] == "IPv4" and _family_of(ip) == "IPv6":
                errs.append(_invalid(f"spec.clusterIPs[{i}]", ip,
                                     f"expected an IPv4 value as indicated by `ipFamilies[{i}]`"))
            if fams[i] == "IPv6" and _family_of(ip) != "IPv6":
                errs.append(_invalid(f"spec.clusterIPs[{i}]", ip,
                                     f"expected an IPv6 value as indicated by `ipFamilies[{i}]`"))
    return errs


def _update_errors(spec: dict, old: dict) -> List[FieldError]:
    """ValidateServiceUpdate's checks of what may not change: cluster IPs, the primary IP
    family, the load balancer class, the health check node port."""
    errs: List[FieldError] = []
    external = _EXTERNAL_NAME in (spec.get("type"), old.get("type"))
    ips, old_ips = list(spec.get("clusterIPs") or ()), list(old.get("clusterIPs") or ())
    if not external and not (_headless(old) and _headless(spec)):
        if len(old_ips) == len(ips):
            errs += [_invalid(f"spec.clusterIPs[{i}]", ips, "may not change once set")
                     for i, ip in enumerate(old_ips) if ip != ips[i]]
        elif len(old_ips) > len(ips):
            if not ips:
                errs.append(_invalid("spec.clusterIPs[0]", ips,
                                     "primary clusterIP can not be unset"))
            elif ips[0] != old_ips[0]:
                errs.append(_invalid("spec.clusterIPs[0]", ips, "may not change once set"))
            if len(ips) == 1 and spec.get("ipFamilyPolicy") != _SINGLE:
                errs.append(_invalid("spec.ipFamilyPolicy", spec.get("ipFamilyPolicy"),
                                     "must be set to 'SingleStack' when releasing the "
                                     "secondary clusterIP"))
        elif old_ips and ips[0] != old_ips[0]:
            errs.append(_invalid("spec.clusterIPs[0]", ips, "may not change once set"))
    fams, old_fams = list(spec.get("ipFamilies") or ()), list(old.get("ipFamilies") or ())
    if not external and _headless(old) == _headless(spec) and not _headless(spec):
        fam_type = "core.IPFamily"
        if len(old_fams) == len(fams):
            errs += [_invalid("spec.ipFamilies[0]", fams, "may not change once set", fam_type)
                     for i, fam in enumerate(old_fams) if fam != fams[i]]
        elif len(old_fams) > len(fams):
            if not ips:
                errs.append(_invalid("spec.ipFamilies[0]", fams,
                                     "primary ipFamily can not be unset", fam_type))
            if fams and fams[0] != old_fams[0]:
                errs.append(_invalid("spec.ipFamilies[0]", ips, "may not change once set"))
            if len(fams) == 1 and spec.get("ipFamilyPolicy") != _SINGLE:
                errs.append(_invalid("spec.ipFamilyPolicy", spec.get("ipFamilyPolicy"),
                                     "must be set to 'SingleStack' when releasing the "
                                     "secondary ipFamily"))
        elif old_fams and fams and fams[0] != old_fams[0]:
            errs.append(_invalid("spec.ipFamilies[0]", ips, "may not change once set"))
    if (old.get("type") == _LB and spec.get("type") == _LB
            and old.get("loadBalancerClass") != spec.get("loadBalancerClass")):
        errs.append(_invalid("spec.loadBalancerClass", spec.get("loadBalancerClass"),
                             "may not change once set"))
    if (_needs_health_check(old) and _needs_health_check(spec)
            and old.get("healthCheckNodePort") != spec.get("healthCheckNodePort")):
        errs.append(_forbidden("spec.healthCheckNodePort", "field is immutable"))
    return errs


def _service_errors(obj: dict) -> List[FieldError]:
    """ValidateService: ports, types, affinity, addresses, source ranges, traffic policies,
    load balancer class, in the API server's order."""
    spec, meta = obj["spec"], obj["metadata"]
    errs: List[FieldError] = []
    stype = spec.get("type")
    ports = spec.get("ports") or []
    headless = _headless(spec)
    if not ports and not headless and stype != _EXTERNAL_NAME:
        errs.append(_required("spec.ports"))
    if stype in (_LB, _NODE_PORT) and headless:
        errs.append(_invalid("spec.clusterIPs[0]", "None",
                             f"may not be set to 'None' for {stype} services"))
    elif stype == _EXTERNAL_NAME:
        for key in ("clusterIPs", "ipFamilies"):
            if spec.get(key):
                errs.append(_forbidden(f"spec.{key}", "may not be set for ExternalName services"))
        if spec.get("ipFamilyPolicy") is not None:
            errs.append(_forbidden("spec.ipFamilyPolicy",
                                   "may not be set for ExternalName services"))
        cname = (spec.get("externalName") or "").rstrip(".") if isinstance(
            spec.get("externalName"), str) else ""
        if cname:
            errs += [_invalid("spec.externalName", cname, msg) for msg in dns1123_subdomain(cname)]
        else:
            errs.append(_required("spec.externalName"))
    names: Set[str] = set()
    for i, port in enumerate(ports):
        path = f"spec.ports[{i}]"
        pname = port.get("name") or ""
        if len(ports) > 1 and not pname:
            errs.append(_required(f"{path}.name"))
        elif pname:
            errs += [_invalid(f"{path}.name", pname, msg) for msg in dns1123_label(pname)]
            if pname in names:
                errs.append(_duplicate(f"{path}.name", pname))
            names.add(pname)
        if not _valid_port(port.get("port")):
            errs.append(_invalid(f"{path}.port", port.get("port") or 0,
                                 _port_range_error(1, 65535)))
        proto = port.get("protocol")
        if not proto:
            errs.append(_required(f"{path}.protocol"))
        elif proto not in _PROTOCOLS:
            errs.append(_unsupported(f"{path}.protocol", proto, _PROTOCOLS))
        target = port.get("targetPort")
        if isinstance(target, str):
            errs += [_invalid(f"{path}.targetPort", target, msg)
                     for msg in _port_name_errors(target)]
        elif not _valid_port(target):
            errs.append(_invalid(f"{path}.targetPort", target or 0, _port_range_error(1, 65535)))
        if port.get("appProtocol") is not None:
            errs += [_invalid(f"{path}.appProtocol", port["appProtocol"], msg)
                     for msg in qualified_name(port["appProtocol"])]
    affinity = spec.get("sessionAffinity")
    if not affinity:
        errs.append(_required("spec.sessionAffinity"))
    elif affinity not in ("ClientIP", "None"):
        errs.append(_unsupported("spec.sessionAffinity", affinity, ("ClientIP", "None")))
    if affinity == "ClientIP":
        timeout = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {}).get(
            "timeoutSeconds")
        if not isinstance(timeout, int) or not 0 < timeout <= _CLIENT_IP_TIMEOUT_MAX:
            errs.append(_invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", timeout,
                                 f"must be greater than 0 and less than {_CLIENT_IP_TIMEOUT_MAX}"))
    elif affinity == "None" and spec.get("sessionAffinityConfig") is not None:
        errs.append(_forbidden("spec.sessionAffinityConfig",
                               "must not be set when session affinity is None"))
    errs += _cluster_ip_errors(spec)
    for i, ip in enumerate(spec.get("externalIPs") or ()):
        if _ip(ip) is None:
            errs.append(_invalid(f"spec.externalIPs[{i}]", ip, _IP_EXAMPLE))
    types = (_CLUSTER_IP, _EXTERNAL_NAME, _LB, _NODE_PORT)
    if not stype:
        errs.append(_required("spec.type"))
    elif stype not in types:
        errs.append(_unsupported("spec.type", stype, types))
    if stype == _CLUSTER_IP:
        errs += [_forbidden(f"spec.ports[{i}].nodePort", "may not be used when `type` is "
                                                         "'ClusterIP'")
                 for i, p in enumerate(ports) if p.get("nodePort")]
    taken: Set[Tuple[str, int]] = set()
    for i, port in enumerate(ports):
        if port.get("nodePort"):
            key = (port.get("protocol") or "", port["nodePort"])
            if key in taken:
                errs.append(_duplicate(f"spec.ports[{i}].nodePort", port["nodePort"]))
            taken.add(key)
    pairs: Set[Tuple[str, Any]] = set()
    for i, port in enumerate(ports):
        key = (port.get("protocol") or "", port.get("port"))
        if key in pairs:
            errs.append(_duplicate(f"spec.ports[{i}]", _service_port_dump(port)))
        pairs.add(key)
    ranges = spec.get("loadBalancerSourceRanges") or []
    annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
    if ranges:
        path = "spec.LoadBalancerSourceRanges"      # sic: the API server's own spelling
        if stype != _LB:
            errs.append(_forbidden(path, "may only be used when `type` is 'LoadBalancer'"))
        errs += [_invalid(f"{path}[{i}]", r.strip(), _CIDR_EXAMPLE)
                 for i, r in enumerate(ranges) if not _cidr_ok(r.strip())]
    elif _LB_SOURCE_RANGES_ANNOTATION in annotations:
        path = f"metadata.annotations[{_LB_SOURCE_RANGES_ANNOTATION}]"
        if stype != _LB:
            errs.append(_forbidden(path, "may only be used when `type` is 'LoadBalancer'"))
        text = str(annotations[_LB_SOURCE_RANGES_ANNOTATION]).strip()
        if text:
            errs += [_invalid(path, r.strip(), _CIDR_EXAMPLE)
                     for r in text.split(",") if not _cidr_ok(r.strip())]
    if spec.get("allocateLoadBalancerNodePorts") is not None and stype != _LB:
        errs.append(_forbidden("spec.allocateLoadBalancerNodePorts",
                               "may only be used when `type` is 'LoadBalancer'"))
    if stype == _LB and spec.get("allocateLoadBalancerNodePorts") is None:
        errs.append(_required("allocateLoadBalancerNodePorts"))   # sic: no "spec."
    lb_class = spec.get("loadBalancerClass")
    if lb_class is not None:
        if stype == _LB:
            errs += [_invalid("spec.loadBalancerClass", lb_class, msg)
                     for msg in qualified_name(lb_class)]
        else:
            errs.append(_forbidden("spec.loadBalancerClass",
                                   "may only be used when `type` is 'LoadBalancer'"))
    etp = spec.get("externalTrafficPolicy")
    if not _externally_accessible(spec):
        if etp:
            errs.append(_invalid("spec.externalTrafficPolicy", etp,
                                 "may only be set for externally-accessible services"))
    elif not etp:
        errs.append(_required("spec.externalTrafficPolicy"))
    elif etp not in ("Cluster", "Local"):
        errs.append(_unsupported("spec.externalTrafficPolicy", etp, ("Cluster", "Local")))
    hc = spec.get("healthCheckNodePort")
    if not _needs_health_check(spec):
        if hc:
            errs.append(_invalid("spec.healthCheckNodePort", hc, "may only be set when `type` is "
                                 "'LoadBalancer' and `externalTrafficPolicy` is 'Local'"))
    elif not hc:
        errs.append(_required("spec.healthCheckNodePort"))
    elif not _valid_port(hc):
        errs.append(_invalid("spec.healthCheckNodePort", hc, _port_range_error(1, 65535)))
    itp = spec.get("internalTrafficPolicy")
    if itp is None and stype in (_NODE_PORT, _LB, _CLUSTER_IP):
        errs.append(_required("spec.internalTrafficPolicy"))
    elif itp is not None and itp not in ("Cluster", "Local"):
        errs.append(_unsupported("spec.internalTrafficPolicy", itp, ("Cluster", "Local")))
    return errs


_PORT_NAME_CHARS = re.compile("^[-a-z0-9]+$")


def _port_name_errors(name: str) -> List[str]:
    """IsValidPortName (an IANA service name: what a named targetPort must be)."""
    errs = [_max_len(15)] if len(name) > 15 else []
    if not _PORT_NAME_CHARS.match(name):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", name):
        errs.append("must contain at least one letter (a-z)")
    if "--" in name:
        errs.append("must not contain consecutive hyphens")
    if name and (name[0] == "-" or name[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs
