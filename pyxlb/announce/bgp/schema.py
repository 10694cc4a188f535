"""The `bgp` section of `announce` (docs/announce.md): one JSON Schema, which pyxlb/config.py
checks as part of the whole file and `BgpSettings.from_dict` checks alone, and the one-line
messages for what it refuses.

Each field's schema carries its message in ``x-message``: one template, or one per
failing keyword (``*`` for the others); a required field says in ``x-missing`` what its
absence (or null) is called. Templates know ``{value!r}``, ``{type}`` (the value's type's
name) and ``{bytes}`` (its length in UTF-8). What a schema cannot say (an address that
parses, keepalive below the hold time, the range of each part of a community) settings.py
here checks after it; `problem` also refuses a float where an integer is wanted (JSON
Schema counts 3.0 as an integer, Python does not).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

DEFAULT_STATE_DIR = "/run/pyxlb/bird"
DEFAULT_HOLD_TIME = 3
BFD_INTERVAL_MS = 100
BFD_MULTIPLIER = 3
AS_TRANS = 23456                # RFC 6793's stand-in for 4-byte ASNs: never a real one
MAX_ASN = 4294967295
MAX_PASSWORD = 80               # TCP_MD5SIG_MAXKEYLEN

# BIRD's strings have no escapes: a quote would end one, a backslash is taken literally by
# some versions and not others. A password holds printable ASCII but those two.
_NOT_IN_PASSWORD = r'[^ !#-\[\]-~]'


def _asn(missing: str) -> dict:
    return {"type": "integer", "minimum": 1, "maximum": MAX_ASN, "not": {"const": AS_TRANS},
            "x-missing": missing,
            "x-message": {"not": f"{AS_TRANS} is AS_TRANS (RFC 6793), not a usable AS number",
                          "*": f"must be an AS number 1-{MAX_ASN}, not {{value!r}}"}}


def _address(what: str, optional: bool = True) -> dict:
    return {"type": ["string", "null"] if optional else "string", "description": what,
            "x-message": "not an IP address: {value!r}"}


_PATH = {"type": "string", "minLength": 1, "not": {"type": "string", "pattern": '["\n]'},
         "x-message": {"not": "must be a path without quotes, not {value!r}",
                       "*": "must be a non-empty string"}}

COMMUNITIES = {
    "type": ["array", "null"],
    "description": "ASN:VALUE (standard) or ASN:A:B (large, RFC 8092)",
    "x-message": "must be a list of communities, not {value!r}",
    "items": {"type": "string", "pattern": r"^\s*[0-9]+(:[0-9]+){1,2}\s*$",
              "x-message": "a community is ASN:VALUE (standard) or ASN:A:B (large), "
                           "not {value!r}"},
}

PEER_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["address", "asn"],
    "x-message": "must be a mapping with address and asn, not {value!r}",
    "properties": {
        "address": {**_address("the router's address", optional=False), "x-missing": "missing"},
        "asn": _asn("missing"),
        "password": {
            "type": ["string", "null"], "minLength": 1, "maxLength": MAX_PASSWORD,
            "not": {"type": "string", "pattern": _NOT_IN_PASSWORD},
            "x-message": {
                "maxLength": f"TCP MD5 keys are at most {MAX_PASSWORD} bytes, this one has "
                             f"{{bytes}}",
                "not": "may hold printable ASCII except '\"' and '\\' only",
                "*": "must be a non-empty string"}},
        "bfd": {"type": "boolean", "x-message": "must be true or false, not {value!r}"},
        "hold_time": {
            "type": "integer", "anyOf": [{"const": 0}, {"minimum": 3, "maximum": 65535}],
            "x-message": "must be 0 (no keepalives) or 3-65535 seconds (BGP's minimum is "
                         "3), not {value!r}"},
        "keepalive": {"type": ["integer", "null"], "minimum": 1, "maximum": 65535,
                      "x-message": "must be seconds 1-65535, not {value!r}"},
        "multihop": {"type": "integer", "minimum": 0, "maximum": 255,
                     "x-message": "must be an integer 0-255, not {value!r}"},
        "communities": COMMUNITIES,
        "source_address": _address("our end of the session"),
    },
}

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["asn", "peers"],
    "description": "BGP speaker settings (docs/announce.md)",
    "x-message": "must be a mapping, not {type}",
    "properties": {
        "asn": _asn("missing (this node's AS number)"),
        "router_id": _address("an IPv4 address (default: the interface's first)"),
        "peers": {"type": "array", "minItems": 1, "items": PEER_SCHEMA,
                  "x-missing": "must be a non-empty list of peers",
                  "x-message": "must be a non-empty list of peers"},
        "communities": COMMUNITIES,
        "state_dir": _PATH,
        "bird": _PATH,
        "birdc": _PATH,
        "bfd_interval_ms": {"type": "integer", "minimum": 10, "maximum": 60000,
                            "x-message": "must be milliseconds 10-60000, not {value!r}"},
        "bfd_multiplier": {"type": "integer", "minimum": 1, "maximum": 255,
                           "x-message": "must be an integer 1-255, not {value!r}"},
    },
}

_VALIDATORS: Dict[int, Any] = {}


def _validator(schema: dict):
    # imported when first needed: the Vagrant lab's router imports this package with
    # Debian's python3 and its python3-jsonschema, and only to validate, never at import
    import jsonschema

    v = _VALIDATORS.get(id(schema))
    if v is None:
        v = _VALIDATORS[id(schema)] = jsonschema.Draft202012Validator(schema)
    return v


class _Quoted:
    """A value whose repr is `text`."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _fill(template: str, value: Any, limit: int = 240) -> str:
    """The message of `template` for `value`, at most `limit` characters: a whole list
    quoted back would make a line of megabytes (pyxlb/config.py cuts its own the same
    way)."""
    def fill(quoted: str) -> str:
        return template.format(value=_Quoted(quoted), type=type(value).__name__,
                               bytes=len(str(value).encode(errors="replace")))

    quoted = repr(value)
    message = fill(quoted)
    if len(message) > limit and len(quoted) > 60:
        message = fill(f"{quoted[:50]}...{quoted[-5:]}")
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _template(schema: dict, keyword: str) -> Optional[str]:
    message = schema.get("x-message")
    if isinstance(message, dict):
        return message.get(keyword, message.get("*"))
    return message


def explain(err) -> Tuple[List[Any], str]:
    """(keys to add to the error's path: the unknown or missing field, if any; its message
    without the field's name) for a jsonschema error of SCHEMA or a part of it."""
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        known = err.schema.get("properties", {})
        extra = next(k for k in err.instance if k not in known)
        return [extra], f"unknown setting (known: {', '.join(sorted(known))})"
    if err.validator == "required" and isinstance(err.instance, dict):
        missing = next(k for k in err.schema["required"] if k not in err.instance)
        return [missing], err.schema["properties"][missing].get("x-missing", "missing")
    if err.instance is None and "x-missing" in err.schema:
        return [], err.schema["x-missing"]
    at = err
    while at is not None and "x-message" not in at.schema:     # a branch of an anyOf
        at = at.parent
    if at is None:
        return [], err.message
    return [], _fill(_template(at.schema, at.validator), err.instance)


def _whole_numbers(data: Any, schema: dict, path: List[Any]) -> Optional[Tuple[List, str]]:
    """The first float where `schema` wants an integer: JSON Schema counts 3.0 as one."""
    types = schema.get("type")
    if isinstance(data, float) and "integer" in (types if isinstance(types, list) else [types]):
        return path, _fill(_template(schema, "type"), data)
    if isinstance(data, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in data:
                found = _whole_numbers(data[key], sub, path + [key])
                if found:
                    return found
    elif isinstance(data, list) and "items" in schema:
        for i, item in enumerate(data):
            found = _whole_numbers(item, schema["items"], path + [i])
            if found:
                return found
    return None


def problem(data: Any, schema: dict = SCHEMA) -> Optional[Tuple[List[Any], str]]:
    """(path of the field at fault, its message) for the first thing in `data` that
    `schema` (SCHEMA or a part of it) refuses, or None."""
    import jsonschema.exceptions

    errors = sorted(_validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        err = jsonschema.exceptions.best_match(errors)
        extra, message = explain(err)
        return list(err.absolute_path) + extra, message
    return _whole_numbers(data, schema, [])
