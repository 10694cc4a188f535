"""The YAML file of `pyxlb apply -f`: a desired state, checked against a JSON Schema.

Reading is strict and bounded, so that whatever a file holds, loading it ends quickly with
a DesiredState or one error line, before the CLI takes the datapath's lock:

- at most MAX_BYTES of UTF-8 are read (a larger file or stdin is refused unread);
- the YAML is read with a loader of our own (`_Loader`): one document; mappings and
  sequences nested at most MAX_DEPTH deep; at most MAX_NODES nodes once every alias is
  counted as a copy of what it names (an "alias bomb" is refused, not expanded); no alias
  to a node that contains it; keys are strings and appear once per mapping;
- plain scalars are read as in YAML 1.2's core schema, with decimal ASCII digits only:
  ``true``/``false``, ``null``/``~``, ``80``, ``-1``, ``0.5``, ``1e3``. A plain scalar
  that YAML 1.1 readers (PyYAML's default, many tools) take for something else, such as
  ``yes``/``no``/``on``/``off``, base-60 ``1:30``, ``0x1F``, ``0o17``, ``8_0``, ``+80``,
  ``010``, ``.inf``, or digits that are not ASCII (``８０``), is refused with its line and
  column rather than guessed at: quote it if a string is meant. Merge keys (``<<``) and
  tags beyond the core ones (``!!binary``, ``!!timestamp``, ...) are not accepted.

The schema then catches the shape (unknown or misspelt fields, wrong types, out-of-range
numbers) and names the field; DesiredState checks what a schema cannot (a VIP listed
twice, an IPv6 VIP with an IPv4 backend in L2 mode, an address that cannot be a VIP or a
backend, ...). Every error is one line naming the source and, where it has one, the line
and column: ``lb.yaml: line 4, column 17: vips[0].backends[0].weight: -2 is less than the
minimum of 0``. See docs/config.md for the format and the limits.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import IO, Any, Dict, List, Mapping, Optional, Tuple

import jsonschema
import yaml
from yaml.composer import Composer
from yaml.constructor import BaseConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import BaseResolver

from .announce.bgp import schema as bgp_schema
from .errors import PyxlbError
from .state import (AFFINITIES, BACKEND_STATES, HEALTH_COUNT_MAX, HEALTH_INTERVAL,
                    HEALTH_ON_FAIL, HEALTH_PATH_MAX, HEALTH_TYPES, HEALTH_VIAS, MAX_WEIGHT,
                    MODES, RING_SIZE_MAX, STATELESS, DesiredState, StateError, Vip,
                    VipKey, vip_from_dict)

try:        # libyaml's parser when PyYAML was built with it (about 5 times faster)
    from yaml._yaml import CParser as _CParser
except ImportError:         # pragma: no cover - PyYAML without libyaml
    _CParser = None

MAX_BYTES = 8 * 1024 * 1024     # a state file or stdin: 4096 VIPs of 8 backends as `vip list
                                # --json` are 4.1 MiB
MAX_DEPTH = 32                  # mappings and sequences within each other (a state uses 6)
MAX_NODES = 1_000_000           # scalars, mappings and sequences, each alias counted as a
                                # copy of what it names (that 4.1 MiB state has 300,000)


class ConfigError(PyxlbError, ValueError):
    """A config file that cannot be read or does not describe a valid state."""


_HEALTH = {
    "type": "object",
    "additionalProperties": False,
    "description": "how the backends are health-checked (docs/config.md, Health checks); on "
                   "a backend: the fields that differ from its VIP's",
    "properties": {
        "type": {"enum": list(HEALTH_TYPES)},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "path": {"type": "string", "minLength": 1, "maxLength": HEALTH_PATH_MAX},
        "expect": {"type": ["string", "integer"]},
        "interval": {"type": "number", "minimum": HEALTH_INTERVAL[0],
                     "maximum": HEALTH_INTERVAL[1]},
        "timeout": {"type": "number", "exclusiveMinimum": 0,
                    "maximum": HEALTH_INTERVAL[1]},
        "rise": {"type": "integer", "minimum": 1, "maximum": HEALTH_COUNT_MAX},
        "fall": {"type": "integer", "minimum": 1, "maximum": HEALTH_COUNT_MAX},
        "via": {"enum": list(HEALTH_VIAS)},
        "on_fail": {"enum": list(HEALTH_ON_FAIL)},
    },
}

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
                "health": _HEALTH,
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
        "bgp": bgp_schema.SCHEMA,
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
                    "flow_table": {"enum": [True, False, STATELESS],
                                   "description": "true, false, or stateless (TCP, "
                                                  "ipip: docs/config.md)"},
                    "affinity": {"enum": list(AFFINITIES)},
                    "announce": {"type": "boolean"},
                    "ring_size": {"type": "integer", "minimum": 2, "maximum": RING_SIZE_MAX},
                    "backends": {"type": "array", "items": _BACKEND},
                    "health": _HEALTH,
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


# -- the strict YAML loader --------------------------------------------------------------

_STR, _INT, _FLOAT, _BOOL, _NULL, _SEQ, _MAP = (
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map"))
_AMBIGUOUS = "tag:pyxlb,2025:ambiguous"       # a plain scalar refused by its constructor

_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_BOOLS = {"true": True, "True": True, "TRUE": True,
          "false": False, "False": False, "FALSE": False}
_BOOLS_1_1 = frozenset("y Y yes Yes YES n N no No NO on On ON off Off OFF".split())
_INT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)")
_FLOAT_RE = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?|[eE][-+]?[0-9]+)")
MAX_DIGITS = 100        # a longer number is refused before Python converts it

# What YAML 1.1 (PyYAML's default, many tools) or YAML 1.2's core schema reads as a
# number and the rules above do not, with the reason it is refused; checked in order.
_NUMBERISH = [
    (re.compile(r"[-+]?(?:[1-9][0-9_]*(?::[0-5]?[0-9])+|[0-9][0-9_]*(?::[0-5]?[0-9])+"
                r"\.[0-9_]*)"),
     "a base-60 number in YAML 1.1 (1:30 is 90)"),
    (re.compile(r"[-+]?0(?:[xX][0-9a-fA-F_]+|[oO][0-7_]+|[bB][01_]+)"),
     "a hexadecimal, octal or binary number in YAML"),
    (re.compile(r"[-+]?\.(?:inf|Inf|INF|nan|NaN|NAN)"), "infinity or not-a-number in YAML"),
]
# a decimal number that is not written plainly (one point at most: 10.0.0.1 is a string)
_DECIMALISH = re.compile(r"[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9_]+)?")


def _numberish(text: str) -> Optional[str]:
    """What some YAML reader takes ASCII `text` for, when it is a number not written as
    _INT_RE or _FLOAT_RE say; None when no reader takes it for a number."""
    for pattern, why in _NUMBERISH:
        if pattern.fullmatch(text):
            return why
    if not _DECIMALISH.fullmatch(text):
        return None
    if text[0] == "+":
        return "a number with a leading '+'"
    if "_" in text:
        return "a number with digit separators in YAML 1.1 (8_0 is 80)"
    mantissa = text.lstrip("-").split("e")[0].split("E")[0]
    if mantissa.startswith(".") or mantissa.endswith("."):
        return "a number without a digit before or after its point"
    return "a number with a leading zero (octal in YAML 1.1: 010 is 8)"


def _ambiguity(value: str) -> Optional[str]:
    """Why a plain scalar that the rules above read as a string is refused, or None."""
    if value in _BOOLS_1_1:
        return f"{value!r} is a boolean in YAML 1.1 and a string in YAML 1.2: write true " \
               f"or false, or quote it for a string"
    if not value.isascii():
        text = unicodedata.normalize("NFKC", value)
        if text == value or not text.isascii():
            return None
        if (text in _BOOLS or text in _BOOLS_1_1 or _INT_RE.fullmatch(text)
                or _FLOAT_RE.fullmatch(text) or _numberish(text)):
            return f"{value!r} is written with characters that are not ASCII (some YAML " \
                   f"readers take it for {text!r}): write ASCII digits and letters, or " \
                   f"quote it for a string"
        return None
    if not value or value[0] not in "+-.0123456789":
        return None
    why = _numberish(value)
    if why is None:
        return None
    return f"{value!r} is {why}: write a plain decimal number, or quote it for a string"


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that this loader does not accept (a limit, a duplicate key, ...)."""

    def __init__(self, problem: str, mark=None):
        super().__init__(problem=problem, problem_mark=mark)


def _where_mark(mark) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


class _Resolver(BaseResolver):
    """YAML 1.2 core-schema tags for plain scalars, decimal ASCII numbers only; what some
    reader would take differently gets the _AMBIGUOUS tag, which its constructor refuses."""

    def resolve(self, kind, value, implicit):
        if kind is ScalarNode and implicit[0]:
            if value in _NULLS:
                return _NULL
            if value in _BOOLS:
                return _BOOL
            if _INT_RE.fullmatch(value):
                return _INT
            if _FLOAT_RE.fullmatch(value):
                return _FLOAT
            if _ambiguity(value) is not None:
                return _AMBIGUOUS
            return _STR
        return super().resolve(kind, value, implicit)


class _Composer(Composer):
    """PyYAML's composer, bounded: nesting depth, and nodes counted with every alias
    expanded (an alias to a node still being composed is a cycle, refused)."""

    def __init__(self):
        super().__init__()
        self._depth = 0
        self._nodes = 0
        self._sizes: Dict[str, int] = {}       # anchor -> nodes it stands for

    def _count(self, n: int, mark) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise _Refused(f"more than {MAX_NODES:,} nodes with every alias expanded "
                           f"(an alias counts as a copy of what it names)", mark)

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self.anchors:
                size = self._sizes.get(event.anchor)
                if size is None:
                    raise _Refused(f"alias *{event.anchor} is inside the node it names "
                                   f"(a cycle)", event.start_mark)
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)      # an undefined one: its error
        if event.anchor is not None and event.anchor in self.anchors:
            first = self.anchors[event.anchor].start_mark
            raise _Refused(f"anchor &{event.anchor} is defined twice (first at "
                           f"{_where_mark(first)})", event.start_mark)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        start = self._nodes
        self._count(1, event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if event.anchor is not None:
            self._sizes[event.anchor] = self._nodes - start
        return node


class _Constructor(BaseConstructor):
    """Plain data from the core tags only: str, int, float, bool, null, seq, map (string
    keys, each once)."""

    def construct_str(self, node):
        self._scalar(node)
        return node.value

    def construct_null(self, node):
        if self._scalar(node) not in _NULLS:
            raise _Refused(f"{node.value!r} is not null", node.start_mark)
        return None

    def construct_bool(self, node):
        value = self._scalar(node)
        if value not in _BOOLS:
            raise _Refused(f"{value!r} is not a boolean: write true or false",
                           node.start_mark)
        return _BOOLS[value]

    def construct_int(self, node):
        value = self._scalar(node)
        if not _INT_RE.fullmatch(value):
            raise _Refused(f"{value!r} is not a decimal integer", node.start_mark)
        if len(value) > MAX_DIGITS:
            raise _Refused(f"a number of more than {MAX_DIGITS} digits", node.start_mark)
        return int(value)

    def construct_float(self, node):
        value = self._scalar(node)
        if not (_FLOAT_RE.fullmatch(value) or _INT_RE.fullmatch(value)):
            raise _Refused(f"{value!r} is not a decimal number", node.start_mark)
        if len(value) > MAX_DIGITS:
            raise _Refused(f"a number of more than {MAX_DIGITS} digits", node.start_mark)
        number = float(value)
        if not math.isfinite(number):
            raise _Refused(f"{value!r} is too large a number", node.start_mark)
        return number

    def construct_ambiguous(self, node):
        raise _Refused(_ambiguity(node.value) or f"{node.value!r} is ambiguous",
                       node.start_mark)

    def construct_seq(self, node):
        if not isinstance(node, SequenceNode):
            raise _Refused(f"!!seq on a {node.id}", node.start_mark)
        data: List[Any] = []
        yield data
        data.extend(self.construct_object(child) for child in node.value)

    def construct_map(self, node):
        if not isinstance(node, MappingNode):
            raise _Refused(f"!!map on a {node.id}", node.start_mark)
        data: Dict[str, Any] = {}
        yield data
        first: Dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR):
                what = key_node.value if isinstance(key_node, ScalarNode) else key_node.id
                raise _Refused(f"a mapping key must be a string, not {what!r}: quote it",
                               key_node.start_mark)
            key = key_node.value
            if key == "<<" and not key_node.style:        # plain (not quoted)
                raise _Refused("merge keys (<<) are not supported: write the fields out, or "
                               "quote '<<' for a key of that name", key_node.start_mark)
            if key in first:
                raise _Refused(f"duplicate key {key!r} (first at "
                               f"{_where_mark(first[key])})", key_node.start_mark)
            first[key] = key_node.start_mark
            data[key] = self.construct_object(value_node)

    def construct_other(self, node):
        raise _Refused(f"the tag {node.tag} is not accepted here (only strings, numbers, "
                       f"booleans, null, lists and mappings)", node.start_mark)

    @staticmethod
    def _scalar(node) -> str:
        if not isinstance(node, ScalarNode):
            raise _Refused(f"{node.tag} on a {node.id}", node.start_mark)
        return node.value


_Constructor.yaml_constructors = {
    _STR: _Constructor.construct_str, _NULL: _Constructor.construct_null,
    _BOOL: _Constructor.construct_bool, _INT: _Constructor.construct_int,
    _FLOAT: _Constructor.construct_float, _SEQ: _Constructor.construct_seq,
    _MAP: _Constructor.construct_map, _AMBIGUOUS: _Constructor.construct_ambiguous,
    None: _Constructor.construct_other,
}
_Constructor.yaml_multi_constructors = {}

if _CParser is not None:
    class _Loader(_Composer, _Constructor, _Resolver, _CParser):
        """libyaml's scanner and parser; composing, resolving, constructing as above."""

        def __init__(self, text: str):
            _CParser.__init__(self, text)
            _Composer.__init__(self)
            _Constructor.__init__(self)
            _Resolver.__init__(self)
else:       # pragma: no cover
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class _Loader(Reader, Scanner, Parser, _Composer, _Constructor, _Resolver):
        def __init__(self, text: str):
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            _Composer.__init__(self)
            _Constructor.__init__(self)
            _Resolver.__init__(self)


def parse(text: str, source: str = "config") -> Tuple[Any, Optional[Node]]:
    """(plain data, its YAML node tree) of one document; (None, None) for a stream with no
    document. Every failure is one ConfigError line naming `source` and the position."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: larger than {_size(MAX_BYTES)}")
    try:
        loader = _Loader(text)
    except UnicodeEncodeError:
        raise ConfigError(f"{source}: not UTF-8 text (a lone surrogate)") from None
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except _Refused as exc:
        raise ConfigError(_yaml_error(source, text, exc, "")) from None
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(source, text, exc, "not valid YAML: ")) from None
    except RecursionError:       # the depth limit is far below Python's: not expected
        raise ConfigError(f"{source}: nested too deeply") from None
    finally:
        loader.dispose()
    return data, node


def _yaml_error(source: str, text: str, exc: yaml.YAMLError, prefix: str) -> str:
    """One line: the source, the line and column where known, the problem."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or ""
    context = getattr(exc, "context", None)
    if context and problem.startswith("but "):        # "expected X", "but found Y"
        problem = f"{context}, {problem}"
    where = f" {_where_mark(mark)}:" if mark is not None else ""
    if isinstance(exc, yaml.reader.ReaderError):
        problem = exc.reason
        if isinstance(exc.position, int):   # libyaml: a byte offset into the UTF-8 text
            raw = text.encode("utf-8", "surrogatepass")
            where = f" {_line_column(raw, exc.position)}:"
    problem = " ".join((problem or str(exc)).split())
    return f"{source}:{where} {prefix}{problem}"


def _line_column(raw: bytes, offset: int) -> str:
    """``line L, column C`` of a byte offset (the column counted in bytes)."""
    offset = max(0, min(offset, len(raw)))
    start = raw.rfind(b"\n", 0, offset) + 1
    line = raw.count(b"\n", 0, offset) + 1
    return f"line {line}, column {offset - start + 1}"


def _size(n: int) -> str:
    return f"{n // (1024 * 1024)} MiB" if n % (1024 * 1024) == 0 else f"{n} bytes"


# -- reading ------------------------------------------------------------------------------


def read_bounded(stream: IO[bytes], source: str) -> str:
    """At most MAX_BYTES of UTF-8 text from a binary stream (a file, stdin); more, or
    bytes that are not UTF-8, is a ConfigError."""
    try:
        raw = stream.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{source}: {exc.strerror or exc}") from None
    if raw is None:
        raise ConfigError(f"{source}: nothing to read (a non-blocking stream)")
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{source}: larger than {_size(MAX_BYTES)}, the most a state "
                          f"file may be (docs/config.md)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: {_line_column(raw, exc.start)}: not UTF-8 text "
                          f"(byte {raw[exc.start]:#04x})") from None


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return read_bounded(f, path)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None


# -- checking -----------------------------------------------------------------------------


def _where(path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _node_at(node: Optional[Node], path) -> Optional[Node]:
    """The node at a path of keys and indexes into the data `node` was constructed to (as
    far as it goes), for its line and column."""
    for part in path:
        if isinstance(node, MappingNode):
            child = next((v for k, v in node.value
                          if isinstance(k, ScalarNode) and k.value == part), None)
        elif isinstance(node, SequenceNode) and isinstance(part, int) \
                and 0 <= part < len(node.value):
            child = node.value[part]
        else:
            child = None
        if child is None:
            break
        node = child
    return node


def _key_node(node: Optional[Node], key: str) -> Optional[Node]:
    if isinstance(node, MappingNode):
        return next((k for k, _ in node.value if isinstance(k, ScalarNode) and k.value == key),
                    None)
    return None


def _at(source: str, node: Optional[Node]) -> str:
    """``source: line L, column C`` of a node, or just the source without one."""
    if node is None or node.start_mark is None:
        return source
    return f"{source}: {_where_mark(node.start_mark)}"


def _first_error(data: Any):
    """The most specific schema error, if any (a oneOf failure names its best branch)."""
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    return jsonschema.exceptions.best_match(errors)


def _short(err, limit: int = 240) -> str:
    """A schema error's message with the value it quotes cut short: a whole list of VIPs
    "is not of type 'object'" would make a line of megabytes."""
    message = err.message
    if len(message) <= limit:
        return message
    quoted = repr(err.instance)
    if len(quoted) > 60 and quoted in message:
        message = message.replace(quoted, f"{quoted[:50]}...{quoted[-5:]}", 1)
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _short_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}...{text[-5:]}"


def state_from_data(data: Any, source: str = "config",
                    node: Optional[Node] = None) -> DesiredState:
    """Check plain data (as loaded from YAML or JSON) and build the DesiredState. `node`:
    the YAML the data came from, to give errors a line and column.

    The document must say what it wants: a mapping with a `vips` list (``vips: []`` is the
    empty state; whether to apply one is the caller's decision). A document with nothing
    in it (an empty file, only comments, ``---``, ``~``) or without `vips` is refused."""
    if data is None:
        raise ConfigError(f"{source}: empty: no document, so no `vips` list (to remove "
                          f"every VIP, write `vips: []`)")
    err = _first_error(data)
    if err is not None:
        path = list(err.absolute_path)
        at = _node_at(node, path)
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            known = err.schema.get("properties", {})
            extra = next((k for k in err.instance if k not in known), None)
            at = _key_node(at, extra) or at
        message = _short(err)
        if path[-1:] == ["flow_table"]:     # YAML's words, not Python's True and False
            message = f"{_short_value(err.instance)} is not true, false or {STATELESS}"
        if path[:2] == ["announce", "bgp"]:     # the section's own messages (docs/announce.md)
            more, message = bgp_schema.explain(err)
            path += more
        raise ConfigError(f"{_at(source, at)}: {_where(path)}: {message}")
    if "vips" not in data:
        raise ConfigError(f"{_at(source, node)}: no `vips` list (to remove every VIP, write "
                          f"`vips: []`)")
    vips = []
    seen: Dict[VipKey, int] = {}
    vips_node = _node_at(node, ["vips"])
    for i, v in enumerate(data["vips"]):
        try:
            vip = _vip(v)
        except StateError as exc:
            at = _node_at(vips_node, [i])
            raise ConfigError(f"{_at(source, at)}: vips[{i}]: {exc}") from None
        if vip.key in seen:
            at = _node_at(vips_node, [i])
            raise ConfigError(f"{_at(source, at)}: vips[{i}]: VIP {vip.key} is defined "
                              f"twice (first as vips[{seen[vip.key]}])")
        seen[vip.key] = i
        vips.append(vip)
    try:
        return DesiredState(tuple(vips))
    except StateError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _vip(v: Mapping) -> Vip:
    return vip_from_dict(v)


# -- the entry points ---------------------------------------------------------------------


def load_text(text: str, source: str = "config") -> DesiredState:
    """A state from YAML (or JSON) text; every failure is one ConfigError line."""
    data, node = parse(text, source)
    return state_from_data(data, source, node)


def load_file(path: str) -> DesiredState:
    """Read a YAML (or JSON) state file; every failure is one ConfigError line."""
    return load_text(_read(path), source=path)


def load_stream(stream: IO[bytes], source: str = "<stdin>") -> DesiredState:
    """A state from a binary stream (stdin), read to its end, at most MAX_BYTES."""
    return load_text(read_bounded(stream, source), source)


def load_announce(path: str):
    """(DesiredState, the `announce` section or None) of a file, for `pyxlb announce`."""
    data, node = parse(_read(path), path)
    state = state_from_data(data, path, node)
    return state, data.get("announce")


def dump(state: DesiredState) -> str:
    """The YAML form of a state (what `load_text` reads back to an equal state)."""
    return yaml.safe_dump(state.to_dict(), sort_keys=False, default_flow_style=False)
