"""Reading the Kubernetes protobuf encoding, as far as the API stand-in needs it.

kubectl's typed clients send their request bodies as ``application/vnd.kubernetes.protobuf``
whatever the server prefers (their Accept is ``application/vnd.kubernetes.protobuf,
application/json``, so the stand-in's JSON answers are taken): ``kubectl create namespace|
configmap|serviceaccount|deployment|service ...|role|rolebinding|clusterrole|
clusterrolebinding|token`` and ``kubectl auth can-i|whoami`` all do. The encoding is the 4-byte
magic ``k8s\\0``, then a ``runtime.Unknown`` message (1: TypeMeta {1: apiVersion, 2: kind}, 2:
the object's own message, 3: contentEncoding, 4: contentType). This module reads the protobuf
wire format (varints, fixed-width and length-delimited fields) and turns a body into the JSON
the API server would hold for it (``decode``), driven by the schema tables of
``standin_protobuf``: Go's JSON rules decide what is left out (``omitempty``), what is null
(an unset list, map or pointer that is not ``omitempty``; the zero Time) and what is written
though the body did not send it (a struct; a scalar that is not ``omitempty``).

Two kinds of failure: ``ProtobufError`` for a body that is not the protobuf it claims to be
(the stand-in answers 400, as the server does), and its subclass ``Unsupported`` for a valid
body that holds something the tables do not (a kind, a field number, a message in
``NOT_DECODED``, a compressed or non-protobuf raw object): the stand-in answers 415 naming it,
so a gap in the tables shows instead of an object silently stored without a field.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any, Dict, Iterator, List, Tuple, Union

from .standin_protobuf import FAMILIES, KINDS, MESSAGES, NOT_DECODED

MAGIC = b"k8s\x00"
PROTOBUF = "application/vnd.kubernetes.protobuf"

Fields = Dict[int, List[Union[int, bytes]]]

_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """A body that is not the protobuf it says it is."""


class Unsupported(ProtobufError):
    """A well-formed body holding what the stand-in's schema tables do not describe."""


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ProtobufError("a varint runs past the end of the message")
        if shift > 63:
            raise ProtobufError("a varint is longer than ten bytes")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if value >> 64:
                raise ProtobufError("a varint overflows 64 bits")
            return value, pos


def _walk(data: bytes) -> Iterator[Tuple[int, int, Union[int, bytes]]]:
    """(field number, wire type, value) of one message's fields, in the order sent: ints for
    varints and fixed-width numbers, bytes for length-delimited fields."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("a field numbered 0")
        value: Union[int, bytes]
        if wire == _VARINT:
            value, pos = _varint(data, pos)
        elif wire == _BYTES:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError(f"field {number} runs past the end of the message")
            value, pos = data[pos:pos + length], pos + length
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > len(data):
                raise ProtobufError(f"field {number} runs past the end of the message")
            value, pos = int.from_bytes(data[pos:pos + size], "little"), pos + size
        else:
            raise ProtobufError(f"field {number} has unsupported wire type {wire}")
        yield number, wire, value


def fields(data: bytes) -> Fields:
    """The fields of one message: number -> the values in order (ints for varints and
    fixed-width numbers, bytes for length-delimited fields: strings and sub-messages)."""
    out: Fields = {}
    for number, _, value in _walk(data):
        out.setdefault(number, []).append(value)
    return out


def _last(f: Fields, number: int, default: Union[int, bytes]) -> Union[int, bytes]:
    return (f.get(number) or [default])[-1]


def _text(value: Union[int, bytes], where: str) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError(f"{where} is a number where a string belongs")
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise ProtobufError(f"{where} is not UTF-8") from None


def unwrap(body: bytes) -> Tuple[str, str, bytes]:
    """(apiVersion, kind, the object's message) of a ``k8s\\0``-prefixed body."""
    if not body.startswith(MAGIC):
        raise ProtobufError("a Kubernetes protobuf body starts with k8s\\0")
    unknown = fields(body[len(MAGIC):])
    meta = _last(unknown, 1, b"")
    if not isinstance(meta, bytes):
        raise ProtobufError("runtime.Unknown's typeMeta is not a message")
    type_meta = fields(meta)
    encoding = _text(_last(unknown, 3, b""), "runtime.Unknown's contentEncoding")
    content_type = _text(_last(unknown, 4, b""), "runtime.Unknown's contentType")
    if encoding:
        raise Unsupported(f"the object is {encoding}-encoded; the API stand-in reads only "
                          f"uncompressed protobuf")
    if content_type not in ("", PROTOBUF):
        raise Unsupported(f"the object inside the protobuf envelope is {content_type}")
    raw = _last(unknown, 2, b"")
    if not isinstance(raw, bytes):
        raise ProtobufError("runtime.Unknown's raw is not a message")
    return (_text(_last(type_meta, 1, b""), "TypeMeta's apiVersion"),
            _text(_last(type_meta, 2, b""), "TypeMeta's kind"), raw)


def message_of(api_version: str, kind: str) -> str:
    """The schema table's name of a kind's message ("core/v1 Service"); Unsupported for a
    kind the tables do not hold."""
    if (api_version, kind) not in KINDS:
        known = ", ".join(f"{k} ({v})" for v, k in KINDS)
        raise Unsupported(f"the API stand-in reads protobuf bodies of {known} only, not "
                          f"{kind or '(no kind)'} ({api_version or 'no apiVersion'}): send it "
                          f"as JSON (kubectl apply -f)")
    return f"{FAMILIES[api_version]} {kind}"


def decode(body: bytes) -> Dict[str, Any]:
    """The JSON form of a protobuf request body (apiVersion and kind first, then the object's
    fields in the order the server writes them)."""
    api_version, kind, raw = unwrap(body)
    out: Dict[str, Any] = {"kind": kind, "apiVersion": api_version}
    out.update(to_json(message_of(api_version, kind), raw))
    return out


# -- one message ---------------------------------------------------------------------------

_ZERO = {"string": "", "int": 0, "bool": False, "intstr": 0, "quantity": "0"}
_OMITTED = object()


def to_json(message: str, data: bytes) -> Dict[str, Any]:
    """The JSON object of one message of the schema tables, as Go's encoding/json writes the
    struct the server decodes it into."""
    table = MESSAGES[message]
    sent: Dict[int, Any] = {}
    for number, wire, value in _walk(data):
        field = table.get(number)
        if field is None:
            raise Unsupported(f"field {number} of {message} is not in the API stand-in's "
                              f"protobuf tables (tests/support/standin_protobuf.py)")
        where = f"field {number} ({field[0]}) of {message}"
        _, kind, flags = field
        if "m" in flags:
            key, item = _map_entry(kind, wire, value, where)
            sent.setdefault(number, {})[key] = item
        elif "r" in flags:
            sent.setdefault(number, []).append(_value(kind, wire, value, where))
        else:
            sent[number] = _value(kind, wire, value, where)
    out: Dict[str, Any] = {}
    for number, (name, kind, flags) in table.items():
        item = sent[number] if number in sent else _unset(kind, flags)
        if item is not _OMITTED and not _left_out(item, kind, flags):
            out[name] = item
    return out


def _unset(kind: str, flags: str) -> Any:
    """What Go holds for a field the body did not send."""
    if "r" in flags or "m" in flags or "p" in flags:
        return _OMITTED if "o" in flags else None
    if kind in MESSAGES:
        return to_json(kind, b"")
    return _ZERO.get(kind)     # null: the zero Time, nil bytes, FieldsV1 and ExtraValue


def _left_out(item: Any, kind: str, flags: str) -> bool:
    """Whether omitempty drops a value the body sent (never a struct, a pointer's target or
    a list or map the wire can only carry non-empty)."""
    if "o" not in flags or "p" in flags or "r" in flags or "m" in flags:
        return False
    return kind in ("string", "int", "bool", "bytes") and not item


def _message(kind: str, wire: int, value: Union[int, bytes], where: str) -> bytes:
    if wire != _BYTES or not isinstance(value, bytes):
        raise ProtobufError(f"{where} should be length-delimited, is wire type {wire}")
    if kind in NOT_DECODED:
        raise Unsupported(f"{where} holds a {kind}, which the API stand-in's protobuf tables "
                          f"do not describe (tests/support/standin_protobuf.py): send the "
                          f"object as JSON (kubectl apply -f)")
    return value


def _value(kind: str, wire: int, value: Union[int, bytes], where: str) -> Any:
    """One scalar or message value."""
    if kind in ("int", "bool"):
        if wire != _VARINT or not isinstance(value, int):
            raise ProtobufError(f"{where} should be a varint, is wire type {wire}")
        return bool(value) if kind == "bool" else _signed(value)
    data = _message(kind, wire, value, where)
    if kind == "string":
        return _text(data, where)
    if kind == "bytes":
        return base64.b64encode(data).decode()
    if kind in MESSAGES:
        return to_json(kind, data)
    return _SPECIAL[kind](fields(data), where)


def _map_entry(kind: str, wire: int, value: Union[int, bytes], where: str) -> Tuple[str, Any]:
    """A map field's entry: a message {1: key, 2: value}; a missing value is the zero one."""
    if wire != _BYTES or not isinstance(value, bytes):
        raise ProtobufError(f"{where} should be length-delimited, is wire type {wire}")
    key, item = "", _unset(kind, "")
    for number, item_wire, part in _walk(value):
        if number == 1:
            key = _text(part, f"a key of {where}")
        elif number == 2:
            item = _value(kind, item_wire, part, f"a value of {where}")
        else:
            raise ProtobufError(f"{where}: a map entry has a field {number}")
    return key, item


def _signed(value: int) -> int:
    """A varint as the int32/int64 it encodes (negative numbers are ten-byte two's
    complement)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _time(f: Fields, where: str) -> Any:
    if not f:
        return None     # Go's zero Time: the server writes null
    seconds = _last(f, 1, 0)
    if not isinstance(seconds, int):
        raise ProtobufError(f"{where}: a Timestamp's seconds is not a number")
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_signed(seconds)))
    except (OverflowError, OSError, ValueError):
        raise ProtobufError(f"{where}: {_signed(seconds)} seconds is not a time") from None


def _intstr(f: Fields, where: str) -> Any:
    kind = _last(f, 1, 0)
    if kind == 0:
        number = _last(f, 2, 0)
        if not isinstance(number, int):
            raise ProtobufError(f"{where}: IntOrString's intVal is not a number")
        return _signed(number)
    if kind == 1:
        return _text(_last(f, 3, b""), where)
    raise ProtobufError(f"{where}: IntOrString has type {kind} (0 int, 1 string)")


def _quantity(f: Fields, where: str) -> str:
    return _text(_last(f, 1, b"0"), where)


def _fieldsv1(f: Fields, where: str) -> Any:
    raw = _last(f, 1, b"")
    try:
        return json.loads(raw) if isinstance(raw, bytes) and raw else None
    except ValueError:
        raise ProtobufError(f"{where}: FieldsV1 does not hold JSON") from None


def _strings(f: Fields, where: str) -> List[str]:
    return [_text(v, where) for v in f.get(1, [])]


_SPECIAL = {"time": _time, "intstr": _intstr, "quantity": _quantity, "fieldsv1": _fieldsv1,
            "strings": _strings}


__all__ = ["MAGIC", "PROTOBUF", "Fields", "ProtobufError", "Unsupported", "decode",
           "fields", "message_of", "to_json", "unwrap"]
