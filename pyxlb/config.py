"""The YAML file of `pyxlb apply -f`: a desired state, checked against a JSON Schema.

The schema catches the shape (unknown or misspelt fields, wrong types, out-of-range
numbers) and names the field; DesiredState then checks what a schema cannot (a VIP listed
twice, an IPv6 VIP with an IPv4 backend in L2 mode, ...). Either way the error is one line.
See docs/config.md for the format.
"""

from __future__ import annotations

from typing import Any, Mapping

import jsonschema
import yaml

from .errors import PyxlbError
from .state import (AFFINITIES, BACKEND_STATES, MAX_WEIGHT, MODES, RING_SIZE_DEFAULT,
                    RING_SIZE_MAX, Backend, DesiredState, StateError, Vip, VipKey)


class ConfigError(PyxlbError, ValueError):
    """A config file that cannot be read or does not describe a valid state."""


_BACKEND = {
    "oneOf": [
        {"type": "string", "description": "the backend's address, with default settings"},
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["address"],
            "properties": {
                "address": {"type": "string"},
                "weight": {"type": "integer", "minimum": 0, "maximum": MAX_WEIGHT},
                "state": {"enum": list(BACKEND_STATES)},
                "mac": {"type": "string"},
                "local": {"type": "boolean"},
            },
        },
    ]
}

_ANNOUNCE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mode"],
    "description": "how `pyxlb announce` makes the network send the VIPs here",
    "properties": {
        "mode": {"enum": ["l2", "bgp"]},
        "node": {"type": "string", "minLength": 1,
                 "description": "this node's name among the announcers (default: host name)"},
        "interface": {"type": "string", "minLength": 1,
                      "description": "where ARP/NDP is answered and gratuitous ARP sent "
                                     "(default: the first interface the balancer runs on)"},
        "l2": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "peers": {"type": "object", "additionalProperties": {"type": "string"},
                          "description": "the other announcers: name -> address"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "interval": {"type": "number", "exclusiveMinimum": 0, "maximum": 60},
                "dead_after": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
                "key": {"type": "string", "minLength": 1},
            },
        },
        "bgp": {"type": "object",
                "description": "BGP speaker settings (checked by pyxlb.announce.bgp)"},
    },
}

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pyxlb desired state",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "announce": _ANNOUNCE,
        "vips": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["vip"],
                "properties": {
                    "vip": {"type": "string", "description": "ADDR:PORT/PROTO"},
                    "mode": {"enum": list(MODES)},
                    "flow_table": {"type": "boolean"},
                    "affinity": {"enum": list(AFFINITIES)},
                    "announce": {"type": "boolean"},
                    "ring_size": {"type": "integer", "minimum": 2, "maximum": RING_SIZE_MAX},
                    "backends": {"type": "array", "items": _BACKEND},
                    "source_ranges": {
                        "type": "array",
                        "items": {"type": "string", "minLength": 1},
                        "description": "client prefixes allowed to reach the VIP (same "
                                       "family as the VIP); absent or empty: every client",
                    },
                },
            },
        },
    },
}

_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def _where(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _first_error(data: Any):
    """The most specific schema error, if any (a oneOf failure names its best branch)."""
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    best = jsonschema.exceptions.best_match(errors)
    return best


def state_from_data(data: Any, source: str = "config") -> DesiredState:
    """Check plain data (as loaded from YAML or JSON) and build the DesiredState."""
    if data is None:
        data = {}
    err = _first_error(data)
    if err is not None:
        raise ConfigError(f"{source}: {_where(err.absolute_path)}: {err.message}")
    vips = []
    for i, v in enumerate(data.get("vips") or ()):
        try:
            vips.append(_vip(v))
        except StateError as exc:
            raise ConfigError(f"{source}: vips[{i}]: {exc}") from None
    try:
        return DesiredState(tuple(vips))
    except StateError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _vip(v: Mapping) -> Vip:
    backends = []
    for b in v.get("backends") or ():
        if isinstance(b, str):
            backends.append(Backend(b))
        else:
            backends.append(Backend(address=b["address"], weight=b.get("weight", 1),
                                    state=b.get("state", "active"), mac=b.get("mac"),
                                    local=b.get("local", False)))
    return Vip(key=VipKey.parse(v["vip"]), backends=tuple(backends),
               mode=v.get("mode", "ipip"), flow_table=v.get("flow_table", True),
               affinity=v.get("affinity", "none"), announce=v.get("announce", False),
               ring_size=v.get("ring_size", RING_SIZE_DEFAULT),
               source_ranges=tuple(v.get("source_ranges") or ()))


def load_file(path: str) -> DesiredState:
    """Read a YAML (or JSON) state file; every failure is one ConfigError line."""
    return load_text(_read(path), source=path)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None


def _parse(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}") from None


def load_text(text: str, source: str = "config") -> DesiredState:
    return state_from_data(_parse(text, source), source)


def load_announce(path: str):
    """(DesiredState, the `announce` section or None) of a file, for `pyxlb announce`."""
    data = _parse(_read(path), path)
    state = state_from_data(data, path)
    return state, (data or {}).get("announce")


def dump(state: DesiredState) -> str:
    """The YAML form of a state (what `load_text` reads back to an equal state)."""
    return yaml.safe_dump(state.to_dict(), sort_keys=False, default_flow_style=False)
