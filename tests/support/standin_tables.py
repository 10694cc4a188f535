"""Server-side table output for the API stand-in (``standin.py``): what ``kubectl get`` prints.

kubectl does not format objects itself: ``kubectl get`` asks for
``Accept: application/json;as=Table;v=v1;g=meta.k8s.io`` and prints the columns and cells
the server sends (the NAMESPACE column of ``-A`` is the only one it adds, from each row's
object metadata). This module turns stored objects into those Table objects, with the
columns and cell formats of kube-apiserver 1.33's printers (pkg/printers/internalversion in
Kubernetes): Service (NAME, TYPE, CLUSTER-IP, EXTERNAL-IP, PORT(S), AGE; SELECTOR wide),
Node, Namespace, Event (both APIs), EndpointSlice, ConfigMap, Lease, ServiceAccount,
Deployment, DaemonSet, RoleBinding and ClusterRoleBinding. Kinds without a printer get the
server's default table (NAME, CREATED AT); custom resources get their CRD's
additionalPrinterColumns (the CRD stored in the stand-in, else the one in ``deploy/crds/``).

As on the server, rows are generated wide (the ``-o wide`` columns have priority 1, and
kubectl hides them unless asked), ages are "5m10s"-style durations as of the request, and
each row carries the object's metadata (``includeObject=Metadata``, the default), the whole
object (``Object``) or nothing (``None``).
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

TABLE_MEDIA = "application/json;as=Table;v={v};g=meta.k8s.io"

Column = Tuple[str, str, int, str]          # name, type, priority, format


def wants_table(accept: Optional[str]) -> Optional[str]:
    """The meta.k8s.io version of Table the Accept header asks for first ("v1",
    "v1beta1"), or None when it prefers plain objects."""
    for item in (accept or "").split(","):
        fields = [p.strip() for p in item.split(";")]
        params = dict(p.partition("=")[::2] for p in fields[1:])
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" \
                and params.get("v") in ("v1", "v1beta1"):
            return params["v"]
        if fields[0] in ("application/json", "*/*", "application/*"):
            return None
    return None


# ---------------------------------------------------------------------------------------
# Cells


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration: "45s", "3m20s", "12m", "5h10m", "3d4h", "2y"."""
    secs = int(seconds)
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    if secs < 120:
        return f"{secs}s"
    minutes = secs // 60
    if minutes < 10:
        rem = secs % 60
        return f"{minutes}m" if rem == 0 else f"{minutes}m{rem}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = secs // 3600
    if hours < 8:
        rem = minutes % 60
        return f"{hours}h" if rem == 0 else f"{hours}h{rem}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rem = hours % 24
        return f"{hours // 24}d" if rem == 0 else f"{hours // 24}d{rem}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rem = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if rem == 0 else f"{hours // 24 // 365}y{rem}d"
    return f"{hours // 24 // 365}y"


def _parse_time(text: Any) -> Optional[datetime.datetime]:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _since(text: Any, now: datetime.datetime) -> str:
    """translateTimestampSince: the age of a timestamp, "<unknown>" when there is none."""
    when = _parse_time(text)
    if when is None:
        return "<unknown>"
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return human_duration((now - when).total_seconds())


def format_labels(labels: Any) -> str:
    """labels.FormatLabels: "k=v,k2=v2" in key order, "<none>" when empty."""
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def format_selector(selector: Any) -> str:
    """metav1.FormatLabelSelector: a LabelSelector in the string syntax, "<none>" if empty."""
    if not isinstance(selector, dict):
        return "<none>"
    terms: List[Tuple[str, str]] = [(k, f"{k}={v}") for k, v in
                                    (selector.get("matchLabels") or {}).items()]
    for expr in selector.get("matchExpressions") or ():
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = ",".join(sorted(expr.get("values") or ()))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                "Exists": key, "DoesNotExist": f"!{key}"}.get(op, f"{key} {op}")
        terms.append((key, text))
    out = ",".join(t for _, t in sorted(terms, key=lambda kt: kt[0]))
    return out or "<none>"


def _more(items: List[str], limit: int = 3) -> str:
    """listWithMoreString: the first three, "+ N more...", "<unset>" when empty."""
    if not items:
        return "<unset>"
    text = ",".join(items[:limit])
    return f"{text} + {len(items) - limit} more..." if len(items) > limit else text


def _containers(spec: dict) -> Tuple[str, str]:
    containers = ((spec.get("template") or {}).get("spec") or {}).get("containers") or ()
    return (",".join(c.get("name", "") for c in containers),
            ",".join(c.get("image", "") for c in containers))


# ---------------------------------------------------------------------------------------
# Rows, by kind


def _service(obj: dict, now: datetime.datetime) -> List[Any]:
    spec = obj.get("spec") or {}
    stype = spec.get("type") or ""
    cluster_ip = (spec.get("clusterIPs") or ["<none>"])[0]
    external = spec.get("externalIPs") or []
    if stype in ("ClusterIP", "NodePort"):
        ext = ",".join(external) or "<none>"
    elif stype == "LoadBalancer":
        ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
        lb = sorted({i.get("ip") or i.get("hostname") for i in ingress
                     if i.get("ip") or i.get("hostname")})
        ext = ",".join(lb + external) or "<pending>"
    elif stype == "ExternalName":
        ext = spec.get("externalName") or ""
    else:
        ext = "<unknown>"
    ports = ",".join(
        f"{p.get('port')}:{p['nodePort']}/{p.get('protocol', '')}" if p.get("nodePort")
        else f"{p.get('port')}/{p.get('protocol', '')}" for p in spec.get("ports") or ())
    return [stype, cluster_ip, ext, ports or "<none>", _since(_created(obj), now),
            format_labels(spec.get("selector"))]


def _node(obj: dict, now: datetime.datetime) -> List[Any]:
    status = obj.get("status") or {}
    ready = [c for c in status.get("conditions") or () if c.get("type") == "Ready"]
    state = ["Ready" if ready[0].get("status") == "True" else "NotReady"] if ready \
        else ["Unknown"]
    if (obj.get("spec") or {}).get("unschedulable"):
        state.append("SchedulingDisabled")
    labels = (obj.get("metadata") or {}).get("labels") or {}
    roles = sorted({k[len("node-role.kubernetes.io/"):] for k in labels
                    if k.startswith("node-role.kubernetes.io/")
                    and len(k) > len("node-role.kubernetes.io/")}
                   | ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role")
                      else set()))
    info = status.get("nodeInfo") or {}

    def address(atype: str) -> str:
        return next((a.get("address") for a in status.get("addresses") or ()
                     if a.get("type") == atype), "<none>")
    return [",".join(state), ",".join(roles) or "<none>", _since(_created(obj), now),
            info.get("kubeletVersion", ""), address("InternalIP"), address("ExternalIP"),
            info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def _event_fields(obj: dict) -> dict:
    """An events.k8s.io Event in the core v1 field names (they are one resource)."""
    if "regarding" not in obj and "note" not in obj and "deprecatedCount" not in obj:
        return obj
    return {"metadata": obj.get("metadata") or {}, "involvedObject": obj.get("regarding") or {},
            "message": obj.get("note", ""), "reason": obj.get("reason", ""),
            "type": obj.get("type", ""), "eventTime": obj.get("eventTime"),
            "series": obj.get("series"), "count": obj.get("deprecatedCount", 0),
            "firstTimestamp": obj.get("deprecatedFirstTimestamp"),
            "lastTimestamp": obj.get("deprecatedLastTimestamp"),
            "source": obj.get("deprecatedSource") or {},
            "reportingComponent": obj.get("reportingController", ""),
            "reportingInstance": obj.get("reportingInstance", "")}


def _event(obj: dict, now: datetime.datetime) -> List[Any]:
    ev = _event_fields(obj)
    first = _since(ev.get("firstTimestamp"), now) if _parse_time(ev.get("firstTimestamp")) \
        else _since(ev.get("eventTime"), now)
    last = _since(ev.get("lastTimestamp"), now) if _parse_time(ev.get("lastTimestamp")) \
        else first
    count = ev.get("count") or 0
    if isinstance(ev.get("series"), dict):
        last = _since(ev["series"].get("lastObservedTime"), now)
        count = ev["series"].get("count", 0)
    elif count == 0:
        count = 1
    ref = ev.get("involvedObject") or {}
    target = f"{str(ref.get('kind', '')).lower()}/{ref['name']}" if ref.get("name") \
        else str(ref.get("kind", "")).lower()
    source = ev.get("source") or {}
    component = source.get("component") or ev.get("reportingComponent") or ""
    instance = source.get("host") or ev.get("reportingInstance") or ""
    return [last, ev.get("type", ""), ev.get("reason", ""), target,
            ref.get("fieldPath", ""), f"{component}, {instance}" if instance else component,
            str(ev.get("message") or "").strip(), first, int(count),
            (ev.get("metadata") or {}).get("name", "")]


def _endpoint_slice(obj: dict, now: datetime.datetime) -> List[Any]:
    ports = [str(p["port"]) if p.get("port") is not None else (p.get("name") or "*")
             for p in obj.get("ports") or ()]
    addresses = [a for e in obj.get("endpoints") or () for a in e.get("addresses") or ()]
    return [obj.get("addressType", ""), _more(ports), _more(addresses),
            _since(_created(obj), now)]


def _deployment(obj: dict, now: datetime.datetime) -> List[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    replicas = spec.get("replicas", 1)      # the server's default
    names, images = _containers(spec)
    return [f"{status.get('readyReplicas', 0)}/{replicas}", status.get("updatedReplicas", 0),
            status.get("availableReplicas", 0), _since(_created(obj), now), names, images,
            format_selector(spec.get("selector"))]


def _daemon_set(obj: dict, now: datetime.datetime) -> List[Any]:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    names, images = _containers(spec)
    node_selector = ((spec.get("template") or {}).get("spec") or {}).get("nodeSelector")
    return [status.get(k, 0) for k in ("desiredNumberScheduled", "currentNumberScheduled",
                                       "numberReady", "updatedNumberScheduled",
                                       "numberAvailable")] + \
        [format_labels(node_selector), _since(_created(obj), now), names, images,
         format_selector(spec.get("selector"))]


def _binding(obj: dict, now: datetime.datetime) -> List[Any]:
    ref = obj.get("roleRef") or {}
    subjects = obj.get("subjects") or ()

    def of(kind: str) -> str:
        out = []
        for s in subjects:
            if s.get("kind") == kind:
                ns = s.get("namespace") or ""
                out.append(f"{ns}/{s.get('name')}" if kind == "ServiceAccount" and ns
                           else str(s.get("name")))
        return ", ".join(out)
    return [f"{ref.get('kind')}/{ref.get('name')}", _since(_created(obj), now),
            of("User"), of("Group"), of("ServiceAccount")]


def _created(obj: dict) -> Any:
    return (obj.get("metadata") or {}).get("creationTimestamp")


def _name(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("name", "")


def _simple(cell: Callable[[dict], Any]) -> Callable[[dict, datetime.datetime], List[Any]]:
    return lambda obj, now: [cell(obj), _since(_created(obj), now)]


_AGE: Column = ("Age", "string", 0, "")
_WIDE_CONTAINERS: Tuple[Column, ...] = (("Containers", "string", 1, ""),
                                        ("Images", "string", 1, ""),
                                        ("Selector", "string", 1, ""))
_BINDING_COLUMNS: Tuple[Column, ...] = (("Role", "string", 0, ""), _AGE,
                                        ("Users", "string", 1, ""), ("Groups", "string", 1, ""),
                                        ("ServiceAccounts", "string", 1, ""))

# (group, kind) -> (the columns after Name, the cells after the name); Event has no Name first
_PRINTERS: Dict[Tuple[str, str], Tuple[Tuple[Column, ...], Callable[..., List[Any]]]] = {
    ("", "Service"): ((("Type", "string", 0, ""), ("Cluster-IP", "string", 0, ""),
                       ("External-IP", "string", 0, ""), ("Port(s)", "string", 0, ""), _AGE,
                       ("Selector", "string", 1, "")), _service),
    ("", "Node"): ((("Status", "string", 0, ""), ("Roles", "string", 0, ""), _AGE,
                    ("Version", "string", 0, ""), ("Internal-IP", "string", 1, ""),
                    ("External-IP", "string", 1, ""), ("OS-Image", "string", 1, ""),
                    ("Kernel-Version", "string", 1, ""),
                    ("Container-Runtime", "string", 1, "")), _node),
    ("", "Namespace"): ((("Status", "string", 0, ""), _AGE),
                        _simple(lambda o: (o.get("status") or {}).get("phase", ""))),
    ("", "ConfigMap"): ((("Data", "string", 0, ""), _AGE),
                        _simple(lambda o: len(o.get("data") or {}) +
                                len(o.get("binaryData") or {}))),
    ("", "ServiceAccount"): ((("Secrets", "string", 0, ""), _AGE),
                             _simple(lambda o: len(o.get("secrets") or ()))),
    ("coordination.k8s.io", "Lease"): (
        (("Holder", "string", 0, ""), _AGE),
        _simple(lambda o: (o.get("spec") or {}).get("holderIdentity") or "")),
    ("discovery.k8s.io", "EndpointSlice"): (
        (("AddressType", "string", 0, ""), ("Ports", "string", 0, ""),
         ("Endpoints", "string", 0, ""), _AGE), _endpoint_slice),
    ("apps", "Deployment"): ((("Ready", "string", 0, ""), ("Up-to-date", "string", 0, ""),
                              ("Available", "string", 0, ""), _AGE) + _WIDE_CONTAINERS,
                             _deployment),
    ("apps", "DaemonSet"): ((("Desired", "integer", 0, ""), ("Current", "integer", 0, ""),
                             ("Ready", "integer", 0, ""), ("Up-to-date", "integer", 0, ""),
                             ("Available", "integer", 0, ""), ("Node Selector", "string", 0, ""),
                             _AGE) + _WIDE_CONTAINERS, _daemon_set),
    ("rbac.authorization.k8s.io", "RoleBinding"): (_BINDING_COLUMNS, _binding),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): (_BINDING_COLUMNS, _binding),
}
_EVENT_COLUMNS: Tuple[Column, ...] = (
    ("Last Seen", "string", 0, ""), ("Type", "string", 0, ""), ("Reason", "string", 0, ""),
    ("Object", "string", 0, ""), ("Subobject", "string", 1, ""), ("Source", "string", 1, ""),
    ("Message", "string", 0, ""), ("First Seen", "string", 1, ""), ("Count", "string", 1, ""),
    ("Name", "string", 1, "name"))
_NAME: Column = ("Name", "string", 0, "name")


# ---------------------------------------------------------------------------------------
# Custom resources


def _json_path(obj: Any, path: str) -> Any:
    """A CRD printer column's simple JSONPath (``.spec.addresses``, ``.a.b[0]``), or None."""
    node = obj
    for part in path.strip().lstrip(".").split("."):
        if not part:
            continue
        name, _, index = part.partition("[")
        if name:
            if not isinstance(node, dict) or name not in node:
                return None
            node = node[name]
        if index:
            try:
                i = int(index.rstrip("]"))
                node = node[i] if isinstance(node, list) else None
            except (ValueError, IndexError):
                return None
        if node is None:
            return None
    return node


def _crd_cell(ctype: str, value: Any, now: datetime.datetime) -> Any:
    """The apiextensions table convertor's cell: strings printed as kubectl's JSONPath
    prints them (lists and maps as JSON), typed values kept, dates as ages."""
    if value is None:
        return None
    if ctype == "string":
        if isinstance(value, (dict, list)):
            return json.dumps(value, separators=(",", ":"))
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)
    if ctype == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if ctype == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if ctype == "boolean" and isinstance(value, bool):
        return value
    if ctype == "date" and isinstance(value, str):
        return _since(value, now) if _parse_time(value) else "<invalid>"
    return None


def printer_columns(crd: Optional[dict], version: str) -> List[dict]:
    """The additionalPrinterColumns of a CRD's version (the CRD default, Age, without any)."""
    for v in ((crd or {}).get("spec") or {}).get("versions") or ():
        if v.get("name") == version:
            columns = v.get("additionalPrinterColumns")
            if columns is not None:
                return list(columns)
    return [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}]


# ---------------------------------------------------------------------------------------
# Tables


def _definition(column: Column) -> dict:
    name, ctype, priority, fmt = column
    return {"name": name, "type": ctype, "format": fmt, "description": "",
            "priority": priority}


def _row_object(obj: dict, include: str) -> Optional[dict]:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {}}


def table(kind: Any, objs: Sequence[dict], meta: Dict[str, Any], *, version: str = "v1",
          include: str = "Metadata", crd: Optional[dict] = None,
          now: Optional[datetime.datetime] = None) -> dict:
    """The Table the API server answers for `objs` of `kind` (a stand-in Kind): `meta` is
    the list's metadata (resourceVersion, continue), `crd` the CustomResourceDefinition of a
    custom resource (for its printer columns)."""
    if include not in ("None", "Metadata", "Object"):
        include = "Metadata"
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = (kind.group, kind.kind)
    columns: List[dict]
    cells: Callable[[dict], List[Any]]
    if kind.kind == "Event" and kind.group in ("", "events.k8s.io"):
        columns = [_definition(c) for c in _EVENT_COLUMNS]
        cells = lambda o: _event(o, now)    # noqa: E731 (a row builder)
    elif key in _PRINTERS:
        more, printer = _PRINTERS[key]
        columns = [_definition(c) for c in (_NAME,) + more]
        cells = lambda o: [_name(o)] + printer(o, now)   # noqa: E731 (a row builder)
    elif getattr(kind, "custom", False) or crd is not None:
        extra = printer_columns(crd, kind.version)
        columns = [_definition(_NAME)] + [
            {"name": c.get("name", ""), "type": c.get("type", "string"),
             "format": c.get("format", ""), "description": c.get("description", ""),
             "priority": int(c.get("priority", 0))} for c in extra]
        cells = lambda o: [_name(o)] + [  # noqa: E731
            _crd_cell(c.get("type", "string"), _json_path(o, c.get("jsonPath", "")), now)
            for c in extra]
    else:       # the server's default table convertor
        columns = [_definition(_NAME), _definition(("Created At", "date", 0, ""))]
        cells = lambda o: [_name(o), _created(o) or ""]  # noqa: E731
    rows = []
    for obj in objs:
        row: Dict[str, Any] = {"cells": cells(obj)}
        attached = _row_object(obj, include)
        if attached is not None:
            row["object"] = attached
        rows.append(row)
    return {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": dict(meta),
            "columnDefinitions": columns, "rows": rows}


__all__ = ["TABLE_MEDIA", "format_labels", "format_selector", "human_duration",
           "printer_columns", "table", "wants_table"]
