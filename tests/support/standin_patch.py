"""The patches of the API stand-in (``standin.py``): JSON merge patch (RFC 7386), JSON patch
(RFC 6902), strategic merge patch and server-side apply.

``kubectl apply`` sends a strategic merge patch (``application/strategic-merge-patch+json``)
for the built-in kinds, computed three ways from the last-applied annotation, the file and
the live object; ``kubectl apply --server-side`` sends the whole object as an apply patch
(``application/apply-patch+yaml``) and lets the server merge it. Both need the server to
know, for each list, whether it is merged item by item and by which key. This module holds
that knowledge for the kinds the stand-in serves (the patch strategies and merge keys of
the Kubernetes Go types: Service ``spec.ports`` by ``port``, a pod template's containers by
``name``, their ports by ``containerPort``, env by ``name``, conditions by ``type``,
``metadata.finalizers`` as a set, ...) and applies both kinds of patch.

Strategic merge patch, as the API server applies it: maps merge key by key, ``null``
deletes; lists with a merge key merge item by item (a patch item replaces the fields it
names in the item with the same key, a new key is appended); lists of scalars with the merge
strategy are unions; every other list is replaced whole. Directives: ``$patch: replace``
(a map or a list replaced whole), ``$patch: delete`` (a map deleted, or a list item by its
key), ``$deleteFromPrimitiveList/<field>``, ``$setElementOrder/<field>`` and
``$retainKeys`` (the keys a ``retainKeys`` map keeps, e.g. a Deployment's strategy).
Custom resources take no strategic merge patch (415, as on the server).

Simplified: with ``$setElementOrder``, items the server has and the patch does not name go
after the ordered ones (the server interleaves them where they were); merge keys are single
fields (the server keys ports by port and protocol for apply).

Server-side apply (``apply``), simplified: an apply creates the object when it does not
exist and otherwise merges the applied configuration into it with the same list semantics;
each field manager's applied fields are recorded in ``metadata.managedFields`` (operation
``Apply``, ``FieldsV1``), and a field the same manager applied before and no longer applies
is removed (unless another apply manager also applied it; the maps that held it stay). A
field applied by another manager with a different value is a 409 conflict unless
``force=true`` (which moves it to the new manager). Only apply managers are tracked: fields
written by create, update or other patches have no owner here, so they never conflict and
are never removed by an apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

PRIMITIVE = "<primitive>"       # a merge key meaning "a list of scalars merged as a set"


class PatchError(ValueError):
    """A patch the server refuses: the HTTP code and the message."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class F:
    """A field's patch metadata: its list merge key (or PRIMITIVE), and the metadata of what
    it holds. (retainKeys fields need none: the patch says which keys stay.)"""

    merge_key: Optional[str] = None
    child: Optional[Dict[str, "F"]] = field(default=None, hash=False, compare=False)


_META = {"finalizers": F(PRIMITIVE), "ownerReferences": F("uid")}
_CONDITIONS = F("type")
_CONTAINER = {"ports": F("containerPort"), "env": F("name"), "volumeMounts": F("mountPath"),
              "volumeDevices": F("devicePath")}
_POD_SPEC = {"containers": F("name", child=_CONTAINER),
             "initContainers": F("name", child=_CONTAINER),
             "ephemeralContainers": F("name", child=_CONTAINER),
             "volumes": F("name"), "imagePullSecrets": F("name"),
             "hostAliases": F("ip"), "topologySpreadConstraints": F("topologyKey"),
             "resourceClaims": F("name"), "schedulingGates": F("name")}
_TEMPLATE = F(child={"metadata": F(child=_META), "spec": F(child=_POD_SPEC)})
_STATUS = F(child={"conditions": _CONDITIONS})

# (group, kind) -> the patch metadata of the object's top-level fields
SCHEMAS: Dict[Tuple[str, str], Dict[str, F]] = {
    ("", "Service"): {"spec": F(child={"ports": F("port")}), "status": _STATUS},
    ("", "Node"): {"spec": F(child={"podCIDRs": F(PRIMITIVE)}),
                   "status": F(child={"addresses": F("type"), "conditions": _CONDITIONS})},
    ("", "Namespace"): {"status": _STATUS},
    ("", "ServiceAccount"): {"secrets": F("name")},
    ("apps", "Deployment"): {"spec": F(child={"template": _TEMPLATE}), "status": _STATUS},
    ("apps", "DaemonSet"): {"spec": F(child={"template": _TEMPLATE}), "status": _STATUS},
}


def schema_of(group: str, kind: str) -> Dict[str, F]:
    """The patch metadata of a built-in kind (metadata always; the rest as listed)."""
    return dict(SCHEMAS.get((group, kind), {}), metadata=F(child=_META))


def _copy(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _strip(value: Any) -> Any:
    """A patch value with its directives removed (what a new item or map becomes)."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and "$patch" in v
                                                 and len(v) == 1)]
    return value


_DELETE = object()      # a map patch that deletes the map


# ---------------------------------------------------------------------------------------
# JSON merge patch and JSON patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null removes, anything else
    (lists included) replaces. Returns a new value; neither argument is changed."""
    if not isinstance(patch, dict):
        return _copy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _failed(message: str) -> "PatchError":
    """A JSON patch operation that cannot apply to the document (-> 422)."""
    return PatchError(422, message)


def _pointer(path: Any) -> List[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _failed(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [tok.replace("~1", "/").replace("~0", "~") for tok in path[1:].split("/")]


def _index(container: list, token: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise _failed(f"invalid array index {token!r}")
    idx = int(token)
    if idx > len(container) or (idx == len(container) and not allow_end):
        raise _failed(f"array index {idx} out of range")
    return idx


def _walk(doc: Any, tokens: List[str]) -> Any:
    node = doc
    for tok in tokens:
        if isinstance(node, dict):
            if tok not in node:
                raise _failed(f"path element {tok!r} not found")
            node = node[tok]
        elif isinstance(node, list):
            node = node[_index(node, tok, allow_end=False)]
        else:
            raise _failed(f"path element {tok!r} is inside a scalar")
    return node


def _json_patch_add(doc: Any, tokens: List[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, allow_end=True), value)
    else:
        raise _failed(f"cannot add {last!r} to a scalar")
    return doc


def _json_patch_remove(doc: Any, tokens: List[str]) -> Tuple[Any, Any]:
    if not tokens:
        raise _failed("cannot remove the whole document")
    parent = _walk(doc, tokens[:-1])
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _failed(f"path element {last!r} not found")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, allow_end=False))
    raise _failed(f"cannot remove {last!r} from a scalar")


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, move, copy, test), applied to `doc` in
    place and returned. A malformed patch is a PatchError 400; one that cannot apply (a
    missing path, a failed test), a 422."""
    if not isinstance(ops, list):
        raise PatchError(400, "a JSON patch must be a list of operations")
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("op"), str) or "path" not in op:
            raise PatchError(400, f"malformed JSON patch operation {op!r}")
        name, tokens = op["op"], _pointer(op["path"])
        if name in ("add", "replace", "test") and "value" not in op:
            raise PatchError(400, f"JSON patch operation {name} at {op['path']!r} has no value")
        if name == "add":
            doc = _json_patch_add(doc, tokens, _copy(op["value"]))
        elif name == "remove":
            doc, _ = _json_patch_remove(doc, tokens)
        elif name == "replace":
            doc, _ = _json_patch_remove(doc, tokens) if tokens else (doc, None)
            doc = _json_patch_add(doc, tokens, _copy(op["value"]))
        elif name in ("move", "copy"):
            source = _pointer(op.get("from"))
            if name == "move":
                doc, value = _json_patch_remove(doc, source)
            else:
                value = _copy(_walk(doc, source))
            doc = _json_patch_add(doc, tokens, value)
        elif name == "test":
            if _walk(doc, tokens) != op["value"]:
                raise _failed(f"test failed at {op['path']!r}")
        else:
            raise PatchError(400, f"unknown JSON patch operation {name!r}")
    return doc


# ---------------------------------------------------------------------------------------
# Strategic merge patch


def strategic_merge(original: Any, patch: Any, schema: Optional[Dict[str, F]]) -> Any:
    """Apply strategic merge patch `patch` to `original` (neither is changed)."""
    out = _merge_map(original, patch, schema or {})
    return {} if out is _DELETE else out


def _merge_map(original: Any, patch: Any, schema: Dict[str, F]) -> Any:
    if not isinstance(patch, dict):
        return _copy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip(patch)
    if directive == "delete":
        return _DELETE
    if directive not in (None, "merge"):
        raise PatchError(400, f"unknown patch directive {directive!r}")
    result = _copy(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        meta = schema.get(key) or F()
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and meta.merge_key is not None:
            result[key] = _merge_list(result.get(key), value, meta, key)
        elif isinstance(value, dict):
            merged = _merge_map(result.get(key), value, meta.child or {})
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        else:
            result[key] = _strip(_copy(value))
    _list_directives(result, patch, schema)
    if isinstance(patch.get("$retainKeys"), list):
        keep = set(patch["$retainKeys"])
        result = {k: v for k, v in result.items() if k in keep}
    return result


def _list_directives(result: dict, patch: dict, schema: Dict[str, F]) -> None:
    for key, value in patch.items():
        name = key.partition("/")[2]
        if key.startswith("$deleteFromPrimitiveList/") and isinstance(result.get(name), list):
            drop = value if isinstance(value, list) else []
            result[name] = [v for v in result[name] if v not in drop]
    for key, value in patch.items():
        name = key.partition("/")[2]
        if key.startswith("$setElementOrder/") and isinstance(result.get(name), list) \
                and isinstance(value, list):
            result[name] = _ordered(result[name], value, (schema.get(name) or F()).merge_key)


def _ordered(items: List[Any], order: List[Any], merge_key: Optional[str]) -> List[Any]:
    def key_of(item: Any) -> Any:
        if merge_key in (None, PRIMITIVE) or not isinstance(item, dict):
            return json.dumps(item, sort_keys=True)
        return json.dumps(item.get(merge_key), sort_keys=True)
    wanted = [key_of(o) for o in order]
    placed = sorted((i for i in items if key_of(i) in wanted),
                    key=lambda i: wanted.index(key_of(i)))
    return placed + [i for i in items if key_of(i) not in wanted]


def _merge_list(original: Any, patch: List[Any], meta: F, name: str) -> List[Any]:
    current = _copy(original) if isinstance(original, list) else []
    if meta.merge_key == PRIMITIVE:
        return current + [v for v in _strip(patch) if v not in current]
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return _strip([p for p in patch if not (isinstance(p, dict) and "$patch" in p)])
    key = meta.merge_key
    child = meta.child or {}
    for item in patch:
        if not isinstance(item, dict) or key not in item:      # the server's answer: a 500
            raise PatchError(500, f"Internal error occurred: map: {item} does not contain "
                                  f"declared merge key: {key}")
        found = next((i for i, c in enumerate(current)
                      if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            if found is not None:
                del current[found]
            continue
        body = {k: v for k, v in item.items() if k != "$patch"}
        if found is None:
            current.append(_merge_map({}, body, child))
        else:
            current[found] = _merge_map(current[found], body, child)
    return current


# ---------------------------------------------------------------------------------------
# Server-side apply

Path = Tuple[Tuple[str, str], ...]      # (("f", "spec"), ("k", '{"port":80}'), ("f", "port"))

_IDENTITY = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
             "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields", "selfLink")


def field_paths(obj: dict, schema: Dict[str, F]) -> Set[Path]:
    """The fields an applied configuration sets, as server-side apply tracks them: every
    map key, each item of a keyed list (and its fields), each value of a set-like list;
    other lists are one field."""
    out: Set[Path] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind"):
            continue
        if key == "metadata" and isinstance(value, dict):
            value = {k: v for k, v in value.items() if k not in _IDENTITY}
            if not value:
                continue
        _collect((("f", key),), value, schema.get(key) or F(), out)
    return out


def _collect(prefix: Path, value: Any, meta: F, out: Set[Path]) -> None:
    out.add(prefix)
    if isinstance(value, dict):
        for key, sub in value.items():
            child = (meta.child or {}).get(key) or F()
            _collect(prefix + (("f", key),), sub, child, out)
    elif isinstance(value, list) and meta.merge_key == PRIMITIVE:
        for item in value:
            out.add(prefix + (("v", json.dumps(item)),))
    elif isinstance(value, list) and meta.merge_key is not None:
        for item in value:
            if isinstance(item, dict) and meta.merge_key in item:
                ident = json.dumps({meta.merge_key: item[meta.merge_key]},
                                   separators=(",", ":"))
                item_meta = F(child=meta.child)
                _collect(prefix + (("k", ident),), item, item_meta, out)


def encode_fields(paths: Iterable[Path]) -> dict:
    """FieldsV1: {"f:spec": {"f:ports": {"k:{\\"port\\":80}": {".": {}, "f:port": {}}}}}."""
    tree: Dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for kind, name in path:
            node = node.setdefault(f"{kind}:{name}", {})
    _mark_items(tree)
    return tree


def _mark_items(node: Dict[str, Any]) -> None:
    for key, sub in node.items():
        if key.startswith("k:") and sub:
            sub.setdefault(".", {})
        if isinstance(sub, dict):
            _mark_items(sub)


def decode_fields(tree: Any, prefix: Path = ()) -> Set[Path]:
    """The paths a FieldsV1 tree holds (the inverse of encode_fields)."""
    out: Set[Path] = set()
    if not isinstance(tree, dict):
        return out
    for key, sub in tree.items():
        if key == ".":
            continue
        kind, _, name = key.partition(":")
        path = prefix + ((kind, name),)
        out.add(path)
        out |= decode_fields(sub, path)
    return out


def _locate(obj: Any, path: Path) -> Tuple[bool, Any]:
    node = obj
    for kind, name in path:
        if kind == "f" and isinstance(node, dict) and name in node:
            node = node[name]
        elif kind == "k" and isinstance(node, list):
            ident = json.loads(name)
            found = [i for i in node if isinstance(i, dict)
                     and all(i.get(k) == v for k, v in ident.items())]
            if not found:
                return False, None
            node = found[0]
        elif kind == "v" and isinstance(node, list) and json.loads(name) in node:
            node = json.loads(name)
        else:
            return False, None
    return True, node


def _remove(obj: Any, path: Path) -> None:
    found, parent = _locate(obj, path[:-1])
    if not found:
        return
    kind, name = path[-1]
    if kind == "f" and isinstance(parent, dict):
        parent.pop(name, None)
    elif kind == "k" and isinstance(parent, list):
        ident = json.loads(name)
        parent[:] = [i for i in parent if not (isinstance(i, dict) and
                                               all(i.get(k) == v for k, v in ident.items()))]
    elif kind == "v" and isinstance(parent, list):
        value = json.loads(name)
        parent[:] = [i for i in parent if i != value]


def _dotted(path: Path) -> str:
    out = ""
    for kind, name in path:
        out += f".{name}" if kind == "f" else f"[{name}]"
    return out


def _leaves(paths: Set[Path]) -> Set[Path]:
    return {p for p in paths if not any(q[:len(p)] == p and len(q) > len(p) for q in paths)}


@dataclass
class Applied:
    """The outcome of an apply: the object to store."""

    obj: dict
    created: bool


def apply(live: Optional[dict], applied: dict, schema: Dict[str, F], manager: str,
          force: bool, api_version: str, now: str) -> Applied:
    """Server-side apply of `applied` by `manager` onto `live` (None: create)."""
    new_paths = field_paths(applied, schema)
    body = {k: v for k, v in applied.items()}
    body_meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    entry = {"manager": manager, "operation": "Apply", "apiVersion": api_version, "time": now,
             "fieldsType": "FieldsV1", "fieldsV1": encode_fields(new_paths)}
    if live is None:
        obj = _strip(_copy(dict(body, metadata=body_meta)))
        obj["metadata"]["managedFields"] = [entry]
        return Applied(obj, True)
    managed = [m for m in (live.get("metadata") or {}).get("managedFields") or ()
               if isinstance(m, dict)]
    mine = next((m for m in managed if m.get("manager") == manager
                 and m.get("operation") == "Apply"), None)
    others = [m for m in managed if m is not mine]
    owned_by_others: Dict[Path, str] = {}
    for m in others:
        if m.get("operation") == "Apply":
            for p in _leaves(decode_fields(m.get("fieldsV1"))):
                owned_by_others.setdefault(p, str(m.get("manager")))
    conflicts = []
    for path in sorted(_leaves(new_paths)):
        owner = owned_by_others.get(path)
        if owner is None:
            continue
        _, theirs = _locate(live, path)
        _, ours = _locate(applied, path)
        if theirs != ours:
            conflicts.append((owner, path))
    if conflicts and not force:
        plural = "s" if len(conflicts) > 1 else ""
        raise PatchError(409, f"Apply failed with {len(conflicts)} conflict{plural}: " + "; ".join(
            f'conflict with "{o}": {_dotted(p)}' for o, p in conflicts))
    merged = strategic_merge({k: v for k, v in live.items()},
                             dict(body, metadata=body_meta), schema)
    old_paths = decode_fields(mine.get("fieldsV1")) if mine else set()
    still_owned: Set[Path] = set(owned_by_others)
    # what goes: the fields (leaves) and list items this manager applied before and no longer
    # does, unless another manager applied them too; the maps that held them stay
    old_leaves = _leaves(old_paths)
    removed: List[Path] = []
    for path in sorted(old_paths - new_paths, key=len):    # an item before what it holds
        if path not in old_leaves and path[-1][0] not in ("k", "v"):
            continue
        if path in still_owned or any(p[:len(path)] == path for p in new_paths) \
                or any(path[:len(r)] == r for r in removed):
            continue
        _remove(merged, path)
        removed.append(path)
    taken = {p for _, p in conflicts}
    kept = []
    for m in others:
        if taken and m.get("operation") == "Apply":
            paths = decode_fields(m.get("fieldsV1")) - taken
            m = dict(m, fieldsV1=encode_fields(paths))
        kept.append(m)
    merged.setdefault("metadata", {})["managedFields"] = kept + [entry]
    return Applied(merged, False)


def applied_paths(obj: dict) -> FrozenSet[str]:
    """The dotted fields each apply manager owns, for tests: {"kubectl: .spec.ports[...]"}."""
    out = set()
    for m in (obj.get("metadata") or {}).get("managedFields") or ():
        for p in _leaves(decode_fields(m.get("fieldsV1"))):
            out.add(f"{m.get('manager')}: {_dotted(p)}")
    return frozenset(out)


__all__ = ["Applied", "F", "PRIMITIVE", "PatchError", "SCHEMAS", "apply", "applied_paths",
           "decode_fields", "encode_fields", "field_paths", "json_patch", "merge_patch",
           "schema_of", "strategic_merge"]
