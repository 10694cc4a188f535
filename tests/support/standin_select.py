"""Label and field selectors for the API stand-in (``standin.py``), as the API server parses
and applies them.

Label selectors: ``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``, ``>``, ``<``.
Field selectors: ``=``, ``==`` and ``!=`` on the fields the API server lets a client select
on: metadata.name and metadata.namespace for every kind, and for some kinds more (a core
Event's involvedObject.* fields, reason, source, type and reportingComponent: what
``kubectl describe`` and ``kubectl get events --field-selector`` use; a Namespace's
status.phase; a Node's spec.unschedulable). A selector the server would refuse raises
SelectorError (the stand-in answers 400).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Tuple


class SelectorError(ValueError):
    """A selector the API server refuses (-> 400 BadRequest)."""


_SET_RE = re.compile(r"^\s*([^\s!=<>(),]+)\s+(in|notin)\s+\(([^()]*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^\s!=<>(),]+)\s*(==|=|!=|>|<)\s*([^\s!=<>(),]*)\s*$")
_KEY_RE = re.compile(r"^\s*(!?)\s*([^\s!=<>(),]+)\s*$")


def _split_top(text: str) -> List[str]:
    """Split a selector at the commas that are not inside a parenthesised value set."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def parse_label_selector(text: str) -> Callable[[Dict[str, str]], bool]:
    """A predicate on a labels dict, from a label selector in the API's string syntax."""
    tests: List[Callable[[Dict[str, str]], bool]] = []
    for req in _split_top(text):
        m = _SET_RE.match(req)
        if m:
            key, op = m.group(1), m.group(2)
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            if op == "in":
                tests.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                tests.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
            continue
        m = _OP_RE.match(req)
        if m:
            key, op, value = m.groups()
            if op in ("=", "=="):
                tests.append(lambda labels, k=key, v=value: labels.get(k) == v)
            elif op == "!=":
                tests.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                try:
                    bound = int(value)
                except ValueError:
                    raise SelectorError(f"unable to parse requirement {req.strip()!r}: "
                                       f"{op} needs an integer value") from None
                tests.append(lambda labels, k=key, b=bound, gt=(op == ">"):
                             _int_compare(labels.get(k), b, gt))
            continue
        m = _KEY_RE.match(req)
        if m:
            negate, key = m.groups()
            if negate:
                tests.append(lambda labels, k=key: k not in labels)
            else:
                tests.append(lambda labels, k=key: k in labels)
            continue
        raise SelectorError(f"unable to parse requirement {req.strip()!r} in labelSelector "
                            f"{text!r}")
    return lambda labels: all(t(labels) for t in tests)


def _int_compare(value: Optional[str], bound: int, greater: bool) -> bool:
    try:
        number = int(value) if value is not None else None
    except ValueError:
        return False
    if number is None:
        return False
    return number > bound if greater else number < bound


def _event_source(obj: dict) -> str:
    return (obj.get("source") or {}).get("component") or obj.get("reportingComponent") or ""


def _ref(field_name: str) -> Callable[[dict], str]:
    return lambda obj: str((obj.get("involvedObject") or {}).get(field_name) or "")


# The fields a field selector may name: metadata.name and metadata.namespace on every kind,
# and what the API server adds for some ((group, kind) -> field -> value of an object).
_META_FIELDS: Dict[str, Callable[[dict], str]] = {
    "metadata.name": lambda obj: (obj.get("metadata") or {}).get("name") or "",
    "metadata.namespace": lambda obj: (obj.get("metadata") or {}).get("namespace") or ""}
_KIND_FIELDS: Dict[Tuple[str, str], Dict[str, Callable[[dict], str]]] = {
    ("", "Event"): {**{f"involvedObject.{f}": _ref(f) for f in (
        "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
        "reason": lambda obj: str(obj.get("reason") or ""),
        "reportingComponent": lambda obj: str(obj.get("reportingComponent") or ""),
        "source": _event_source, "type": lambda obj: str(obj.get("type") or "")},
    ("", "Namespace"): {"status.phase": lambda obj: (obj.get("status") or {}).get("phase") or ""},
    ("", "Node"): {"spec.unschedulable": lambda obj: "true" if (obj.get("spec") or {}).get(
        "unschedulable") else "false"},
}


def parse_field_selector(text: str, kind: Any = None) -> Callable[[dict], bool]:
    """A predicate on an object, from a field selector (=, == and !=) on the fields the API
    server supports: metadata.name and metadata.namespace on every kind, the involvedObject
    fields, reason, source, type and reportingComponent of a core Event, a Namespace's
    status.phase, a Node's spec.unschedulable."""
    known = dict(_META_FIELDS, **(_KIND_FIELDS.get((kind.group, kind.kind), {})
                                  if kind is not None else {}))
    tests: List[Callable[[dict], bool]] = []
    for req in _split_top(text):
        m = _OP_RE.match(req)
        if not m or m.group(2) not in ("=", "==", "!="):
            raise SelectorError(f"invalid field selector requirement {req.strip()!r}")
        path, op, value = m.groups()
        if path not in known:
            raise SelectorError(f'field label not supported: "{path}"')
        get = known[path]
        if op == "!=":
            tests.append(lambda obj, g=get, v=value: g(obj) != v)
        else:
            tests.append(lambda obj, g=get, v=value: g(obj) == v)
    return lambda obj: all(t(obj) for t in tests)


__all__ = ["SelectorError", "parse_field_selector", "parse_label_selector"]
