"""Discovery and OpenAPI documents for the API stand-in (``standin.py``), so kubectl works.

kubectl learns what a server serves before it sends anything else: which group versions
exist, which resources each holds, whether a resource is namespaced, its short names
(``svc``), its categories (``all``) and its verbs. It then asks the OpenAPI v3 document of
each group version whether the PATCH of a kind takes the ``fieldValidation`` query
parameter: when it does, kubectl leaves validation to the server (``fieldValidation=Strict``)
instead of validating client-side against the full schemas. This module builds those
documents from the stand-in's kinds, in the formats kube-apiserver 1.33 answers:

- ``/api`` (APIVersions), ``/apis`` (APIGroupList), ``/apis/GROUP`` (APIGroup),
  ``/api/v1`` and ``/apis/GROUP/VERSION`` (APIResourceList, subresources as
  ``services/status``);
- the aggregated form of ``/api`` and ``/apis`` (APIGroupDiscoveryList, apidiscovery.k8s.io
  v2 and v2beta1) when the Accept header asks for it, as kubectl 1.32 does first;
- ``/openapi/v3`` (the index: one ``serverRelativeURL`` per group version, with a content
  hash) and ``/openapi/v3/api/v1``, ``/openapi/v3/apis/GROUP/VERSION``: OpenAPI 3.0
  documents with every path and operation of the stand-in's kinds. Their PATCH operations
  list ``fieldValidation`` (so kubectl validates on the server) and the JSON, merge and
  apply patch bodies.

Where it differs: the PATCH operations do not list strategic merge patch, although the
stand-in takes it for the built-in kinds. kubectl computes a strategic merge patch from the
v3 schemas when they list it, and the schemas here are open objects without the patch
metadata (merge keys) it would need; without it, kubectl falls back to ``/openapi/v2``,
which is 404 here, and then to the patch metadata compiled into it: the same patch the
real schemas give, for every built-in kind kubectl knows. For custom resources it sends a
merge patch either way, as against a real cluster.

What it leaves out: the schemas of the built-in kinds are open objects (no property list), so
``kubectl explain`` shows little for them; a custom resource's schema is the CRD's
``openAPIV3Schema`` read from ``deploy/crds/``. The same schemas serve the store: strict field
validation (``unknown_fields``) and structural-schema defaulting (``apply_defaults``).
``storageVersionHash`` is not given (kubectl does not need it), nor the group-level OpenAPI
documents (``/openapi/v3/apis/GROUP``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

# What a stored kind answers to (every one of them: the stand-in serves all verbs on all)
VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")

AGGREGATED_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_V2BETA1 = "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
JSON = "application/json"

# kube-apiserver lists its groups in priority order; the ones it does not serve here are left
# out, and the custom resources' groups come last (as CRD groups do).
_GROUP_ORDER = ("apps", "events.k8s.io", "authentication.k8s.io", "authorization.k8s.io",
                "rbac.authorization.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
                "apiextensions.k8s.io")

CRD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "crds"


@dataclass(frozen=True)
class Review:
    """A create-only resource that stores nothing (SelfSubjectAccessReview and the like)."""

    kind: str
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


REVIEWS = (
    Review("SelfSubjectAccessReview", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"),
    Review("SelfSubjectReview", "authentication.k8s.io", "v1", "selfsubjectreviews"),
)


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


# ---------------------------------------------------------------------------------------
# The resources


@dataclass(frozen=True)
class _Resource:
    """One discovery entry: a stored kind (``kind`` set) or a review."""

    plural: str
    kind: str
    group: str
    version: str
    namespaced: bool
    verbs: Tuple[str, ...]
    short_names: Tuple[str, ...] = ()
    categories: Tuple[str, ...] = ()
    status: bool = False


def _resources(kinds: Iterable[Any]) -> List[_Resource]:
    out = [_Resource(k.plural, k.kind, k.group, k.version, k.namespaced, VERBS,
                     tuple(k.short_names), tuple(k.categories), k.status) for k in kinds]
    out += [_Resource(r.plural, r.kind, r.group, r.version, False, ("create",))
            for r in REVIEWS]
    return out


def _group_versions(resources: Sequence[_Resource]) -> List[Tuple[str, str]]:
    """(group, version) pairs in the order the server lists them; core ("", "v1") first."""
    seen = list(dict.fromkeys((r.group, r.version) for r in resources))

    def rank(gv: Tuple[str, str]) -> Tuple[int, int]:
        group = gv[0]
        if group == "":
            return (0, 0)
        if group in _GROUP_ORDER:
            return (1, _GROUP_ORDER.index(group))
        return (2, seen.index(gv))
    return sorted(seen, key=rank)


def _legacy_entries(resources: Sequence[_Resource], group: str, version: str) -> List[dict]:
    out = []
    for r in resources:
        if (r.group, r.version) != (group, version):
            continue
        entry: Dict[str, Any] = {"name": r.plural, "singularName": r.kind.lower(),
                                 "namespaced": r.namespaced, "kind": r.kind,
                                 "verbs": list(r.verbs)}
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        out.append(entry)
        if r.status:
            out.append({"name": f"{r.plural}/status", "singularName": "",
                        "namespaced": r.namespaced, "kind": r.kind,
                        "verbs": list(STATUS_VERBS)})
    return out


def _aggregated_entries(resources: Sequence[_Resource], group: str, version: str) -> List[dict]:
    out = []
    for r in resources:
        if (r.group, r.version) != (group, version):
            continue
        gvk = {"group": group, "version": version, "kind": r.kind}
        entry: Dict[str, Any] = {"resource": r.plural, "responseKind": gvk,
                                 "scope": "Namespaced" if r.namespaced else "Cluster",
                                 "singularResource": r.kind.lower(), "verbs": list(r.verbs)}
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        if r.status:
            entry["subresources"] = [{"subresource": "status", "responseKind": gvk,
                                      "verbs": list(STATUS_VERBS)}]
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------
# Discovery


def wants_aggregated(accept: Optional[str]) -> Optional[str]:
    """The aggregated discovery version (the v2 or v2beta1 media type) the Accept header
    prefers, or None for the plain documents."""
    for item in (accept or "").split(","):
        params = {}
        for part in item.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            params[key] = value
        if params.get("as") == "APIGroupDiscoveryList" and \
                params.get("g") == "apidiscovery.k8s.io":
            if params.get("v") == "v2":
                return AGGREGATED_V2
            if params.get("v") == "v2beta1":
                return AGGREGATED_V2BETA1
        if item.split(";")[0].strip() in (JSON, "*/*", "application/*"):
            return None
    return None


def _aggregated(resources: Sequence[_Resource], legacy: bool, media: str) -> dict:
    items = []
    for group, version in _group_versions(resources):
        if (group == "") != legacy:
            continue
        metadata: Dict[str, Any] = {"name": group} if group else {}
        items.append({"metadata": metadata,
                      "versions": [{"version": version, "freshness": "Current",
                                    "resources": _aggregated_entries(resources, group,
                                                                     version)}]})
    version = "v2" if media == AGGREGATED_V2 else "v2beta1"
    return {"kind": "APIGroupDiscoveryList", "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {}, "items": items}


def _api_group(group: str, versions: List[str]) -> dict:
    listed = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": listed, "preferredVersion": listed[0]}


def discovery(kinds: Iterable[Any], path: str, accept: Optional[str],
              server_address: str) -> Optional[Tuple[int, bytes, str]]:
    """(code, body, content type) for a discovery path, or None when `path` is not one."""
    parts = [p for p in path.split("/") if p]
    resources = _resources(kinds)
    gvs = _group_versions(resources)
    if parts == ["api"]:
        media = wants_aggregated(accept)
        if media:
            return 200, _dumps(_aggregated(resources, True, media)), media
        cidrs = [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]
        return 200, _dumps({"kind": "APIVersions", "versions": ["v1"],
                            "serverAddressByClientCIDRs": cidrs}), JSON
    if parts == ["apis"]:
        media = wants_aggregated(accept)
        if media:
            return 200, _dumps(_aggregated(resources, False, media)), media
        groups: Dict[str, List[str]] = {}
        for group, version in gvs:
            if group:
                groups.setdefault(group, []).append(version)
        return 200, _dumps({"kind": "APIGroupList", "apiVersion": "v1",
                            "groups": [_api_group(g, v) for g, v in groups.items()]}), JSON
    if parts == ["api", "v1"] or (len(parts) == 3 and parts[0] == "apis"):
        group, version = ("", "v1") if parts[0] == "api" else (parts[1], parts[2])
        if (group, version) not in gvs:
            return None
        return 200, _dumps({"kind": "APIResourceList", "apiVersion": "v1",
                            "groupVersion": f"{group}/{version}" if group else version,
                            "resources": _legacy_entries(resources, group, version)}), JSON
    if len(parts) == 2 and parts[0] == "apis":
        versions = [v for g, v in gvs if g == parts[1]]
        if not versions:
            return None
        return 200, _dumps(dict(_api_group(parts[1], versions), kind="APIGroup",
                                apiVersion="v1")), JSON
    return None


# ---------------------------------------------------------------------------------------
# OpenAPI v3


_PATCH_SCHEMA = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
_STATUS_SCHEMA = "io.k8s.apimachinery.pkg.apis.meta.v1.Status"
_PATCH_TYPES = ("application/json-patch+json", "application/merge-patch+json",
                "application/apply-patch+yaml")


def _schema_name(group: str, version: str, kind: str) -> str:
    if not group:
        return f"io.k8s.api.core.v1.{kind}"
    if group.endswith(".k8s.io") or "." not in group:
        short = group.split(".")[0] if group.endswith(".k8s.io") else group
        return f"io.k8s.api.{short}.{version}.{kind}"
    return ".".join(reversed(group.split("."))) + f".{version}.{kind}"


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


def _query(name: str, description: str) -> dict:
    return {"name": name, "in": "query", "description": description, "schema": {"type": "string"},
            "uniqueItems": True}


_WRITE_PARAMS = [
    _query("dryRun", "When present, indicates that modifications should not be persisted."),
    _query("fieldManager", "The name of the actor or entity making these changes."),
    _query("fieldValidation", "Ignore, Warn or Strict: how the server treats unknown and "
                              "duplicate fields."),
]
_FORCE = {"name": "force", "in": "query", "schema": {"type": "boolean"}, "uniqueItems": True,
          "description": "Force is going to \"force\" Apply requests."}


def _op(action: str, gvk: dict, op_id: str, body: Optional[List[str]], response: str,
        params: List[dict]) -> dict:
    op: Dict[str, Any] = {
        "operationId": op_id, "parameters": params,
        "responses": {"200": {"description": "OK", "content": {JSON: {"schema": {
            "$ref": f"#/components/schemas/{response}"}}}}},
        "x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk}
    if body is not None:
        schema = _PATCH_SCHEMA if action == "patch" else response
        op["requestBody"] = {"required": True, "content": {
            ct: {"schema": {"$ref": f"#/components/schemas/{schema}"}} for ct in body}}
    return op


def _paths_of(r: _Resource) -> Dict[str, dict]:
    gvk = {"group": r.group, "version": r.version, "kind": r.kind}
    schema = _schema_name(r.group, r.version, r.kind)
    base = "/" + _gv_path(r.group, r.version)
    scope = "Namespaced" if r.namespaced else ""
    stem = f"{r.kind}"
    collection = f"{base}/namespaces/{{namespace}}/{r.plural}" if r.namespaced \
        else f"{base}/{r.plural}"
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    ns_param = [{"name": "namespace", "in": "path", "required": True,
                 "schema": {"type": "string"}}] if r.namespaced else []
    if r.verbs == ("create",):
        return {collection: {"parameters": ns_param,
                             "post": _op("post", gvk, f"create{stem}", [JSON], schema,
                                         _WRITE_PARAMS)}}
    patch_types = list(_PATCH_TYPES)
    one = {"parameters": [name_param] + ns_param,
           "get": _op("get", gvk, f"read{scope}{stem}", None, schema, []),
           "put": _op("put", gvk, f"replace{scope}{stem}", [JSON], schema, _WRITE_PARAMS),
           "patch": _op("patch", gvk, f"patch{scope}{stem}", patch_types, schema,
                        _WRITE_PARAMS + [_FORCE]),
           "delete": _op("delete", gvk, f"delete{scope}{stem}", None, _STATUS_SCHEMA,
                         [_query("dryRun", "")])}
    paths = {collection: {"parameters": ns_param,
                          "get": _op("list", gvk, f"list{scope}{stem}", None, schema, []),
                          "post": _op("post", gvk, f"create{scope}{stem}", [JSON], schema,
                                      _WRITE_PARAMS),
                          "delete": _op("deletecollection", gvk,
                                        f"deletecollection{scope}{stem}", None,
                                        _STATUS_SCHEMA, [])},
             f"{collection}/{{name}}": one}
    if r.namespaced:
        paths[f"{base}/{r.plural}"] = {"get": _op("list", gvk, f"list{stem}ForAllNamespaces",
                                                  None, schema, [])}
    if r.status:
        paths[f"{collection}/{{name}}/status"] = {
            "parameters": [name_param] + ns_param,
            "get": _op("get", gvk, f"read{scope}{stem}Status", None, schema, []),
            "put": _op("put", gvk, f"replace{scope}{stem}Status", [JSON], schema,
                       _WRITE_PARAMS),
            "patch": _op("patch", gvk, f"patch{scope}{stem}Status", patch_types, schema,
                         _WRITE_PARAMS + [_FORCE])}
    return paths


def crd_schemas() -> Dict[Tuple[str, str], dict]:
    """The CRDs of deploy/crds/ by (group, plural): the whole CustomResourceDefinition."""
    import yaml

    out: Dict[Tuple[str, str], dict] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                spec = doc.get("spec") or {}
                out[(spec.get("group"), (spec.get("names") or {}).get("plural"))] = doc
    return out


def unknown_fields(obj: Any, schema: Optional[dict], path: str = "") -> List[str]:
    """The fields of a custom resource its CRD's structural schema does not declare
    (``spec.foo``), as strict field validation (``fieldValidation=Strict``) finds them;
    metadata is not looked into, x-kubernetes-preserve-unknown-fields keeps anything."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    out: List[str] = []
    if isinstance(obj, dict) and (schema.get("type") == "object" or "properties" in schema):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, value in obj.items():
            where = f"{path}.{key}" if path else key
            if path == "" and key in ("apiVersion", "kind", "metadata"):
                continue
            if isinstance(props, dict) and key in props:
                out += unknown_fields(value, props[key], where)
            elif isinstance(extra, dict):
                out += unknown_fields(value, extra, where)
            elif props is not None or extra is False:
                out.append(where)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(obj):
            out += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return out


def apply_defaults(obj: Any, schema: Optional[dict]) -> Any:
    """Default a custom resource from its CRD's structural schema, in place, as the API server
    does when it decodes one (every create, update and patch, and every read from storage):

    - a null field that is not ``nullable`` and has no default is dropped;
    - a field with a ``default`` is set to it when absent, or null and not ``nullable`` (a
      nullable null stays null);
    - this goes on inside every object and array present (and inside a default just set),
      never into an absent parent: a missing ``spec`` stays missing.

    Metadata is left alone (the schemas here declare no properties for it). Returns `obj`."""
    if isinstance(schema, dict):
        _prune_nulls(obj, schema)
        _default(obj, schema)
    return obj


def _has_default(schema: Any) -> bool:
    return isinstance(schema, dict) and schema.get("default") is not None


def _schema_of(schema: dict, key: str) -> Optional[dict]:
    """The schema of an object's field `key`: its property, else additionalProperties."""
    props = schema.get("properties")
    if isinstance(props, dict) and key in props:
        return props[key] if isinstance(props[key], dict) else None
    extra = schema.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def _prune_nulls(obj: Any, schema: dict) -> None:
    if isinstance(obj, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for key in [k for k, v in obj.items() if v is None and isinstance(props.get(k), dict)]:
            if not _has_default(props[key]) and not props[key].get("nullable"):
                del obj[key]
        for key, value in obj.items():
            sub = _schema_of(schema, key)
            if sub is not None:
                _prune_nulls(value, sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for item in obj:
            _prune_nulls(item, schema["items"])


def _default(obj: Any, schema: dict) -> None:
    if isinstance(obj, dict):
        props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        for key, sub in props.items():
            if _has_default(sub) and (key not in obj or
                                      (obj[key] is None and not sub.get("nullable"))):
                obj[key] = json.loads(json.dumps(sub["default"]))
        for key in list(obj):
            sub = _schema_of(schema, key)
            if sub is None:
                continue
            if key not in props and obj[key] is None and _has_default(sub) \
                    and not sub.get("nullable"):
                obj[key] = json.loads(json.dumps(sub["default"]))
            _default(obj[key], sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        items = schema["items"]
        for i, item in enumerate(obj):
            if item is None and _has_default(items) and not items.get("nullable"):
                obj[i] = json.loads(json.dumps(items["default"]))
            _default(obj[i], items)


def crd_version_schema(crd: Optional[dict], version: str) -> Optional[dict]:
    """The openAPIV3Schema of one version of a CRD."""
    return _crd_version_schema(crd, version)


def _crd_version_schema(crd: Optional[dict], version: str) -> Optional[dict]:
    for v in ((crd or {}).get("spec") or {}).get("versions") or ():
        if v.get("name") == version:
            return ((v.get("schema") or {}).get("openAPIV3Schema"))
    return None


def openapi_document(kinds: Iterable[Any], group: str, version: str,
                     crds: Dict[Tuple[str, str], dict]) -> Optional[dict]:
    """The OpenAPI 3.0 document of one group version, or None if it is not served."""
    resources = [r for r in _resources(kinds) if (r.group, r.version) == (group, version)]
    if not resources:
        return None
    custom = {k.plural for k in kinds if getattr(k, "custom", False) and
              (k.group, k.version) == (group, version)}
    paths: Dict[str, dict] = {}
    schemas: Dict[str, dict] = {
        _PATCH_SCHEMA: {"type": "object", "description": "The body of a PATCH request."},
        _STATUS_SCHEMA: {"type": "object", "description": "The answer to a failed request "
                                                          "or a delete.",
                         "x-kubernetes-group-version-kind": [
                             {"group": "", "version": "v1", "kind": "Status"}]}}
    for r in resources:
        paths.update(_paths_of(r))
        gvk = [{"group": group, "version": version, "kind": r.kind}]
        schema = _crd_version_schema(crds.get((group, r.plural)), version) \
            if r.plural in custom else None
        if schema is None:
            schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                      "properties": {"apiVersion": {"type": "string"},
                                     "kind": {"type": "string"},
                                     "metadata": {"type": "object"}}}
        schemas[_schema_name(group, version, r.kind)] = dict(
            schema, **{"x-kubernetes-group-version-kind": gvk})
    return {"openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": "v1.33.0"},
            "paths": paths, "components": {"schemas": schemas}}


def openapi(kinds: Sequence[Any], path: str, crds: Dict[Tuple[str, str], dict]
            ) -> Optional[Tuple[int, bytes, str]]:
    """(code, body, content type) for ``/openapi/...``, or None when `path` is not served
    (the caller answers 404, as for /openapi/v2)."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] != ["openapi", "v3"]:
        return None
    gvs = _group_versions(_resources(kinds))
    if len(parts) == 2:
        index = {}
        for group, version in gvs:
            doc = openapi_document(kinds, group, version, crds)
            digest = hashlib.sha256(_dumps(doc)).hexdigest().upper()
            index[_gv_path(group, version)] = {
                "serverRelativeURL": f"/openapi/v3/{_gv_path(group, version)}?hash={digest}"}
        return 200, _dumps({"paths": index}), JSON
    rest = parts[2:]
    if rest[:1] == ["api"] and len(rest) == 2:
        group, version = "", rest[1]
    elif rest[:1] == ["apis"] and len(rest) == 3:
        group, version = rest[1], rest[2]
    else:
        return None
    doc = openapi_document(kinds, group, version, crds)
    if doc is None:
        return None
    return 200, _dumps(doc), JSON


__all__ = ["AGGREGATED_V2", "AGGREGATED_V2BETA1", "CRD_DIR", "REVIEWS", "Review", "VERBS",
           "crd_schemas", "crd_version_schema", "discovery", "openapi", "openapi_document",
           "unknown_fields", "wants_aggregated"]
