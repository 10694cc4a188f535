"""Reading the Kubernetes protobuf encoding, as far as the API stand-in needs it.

kubectl's typed clients send some request bodies as ``application/vnd.kubernetes.protobuf``
whatever the server prefers: ``kubectl auth can-i`` posts its SelfSubjectAccessReview so, and
client-go falls back to JSON only for CBOR. The encoding is the 4-byte magic ``k8s\\0``, then
a ``runtime.Unknown`` message (1: TypeMeta {1: apiVersion, 2: kind}, 2: the object's own
message, 3: contentEncoding, 4: contentType). This module reads the protobuf wire format
(varints, length-delimited fields) and turns the messages the stand-in takes into the JSON
form (``review_from_protobuf``); the stand-in always answers in JSON, which those clients
accept.
"""

from __future__ import annotations

from typing import Dict, List, Tuple, Union

MAGIC = b"k8s\x00"
PROTOBUF = "application/vnd.kubernetes.protobuf"

Fields = Dict[int, List[Union[int, bytes]]]


class ProtobufError(ValueError):
    """A body that is not the protobuf it says it is."""


def _varint(data: bytes, pos: int) -> Tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtobufError("a varint runs past the end of the message")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def fields(data: bytes) -> Fields:
    """The fields of one message: number -> the values in order (ints for varints and
    fixed-width numbers, bytes for length-delimited fields: strings and sub-messages)."""
    out: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError(f"field {number} runs past the end of the message")
            value, pos = data[pos:pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = int.from_bytes(data[pos:pos + size], "little"), pos + size
        else:
            raise ProtobufError(f"field {number} has unsupported wire type {wire}")
        out.setdefault(number, []).append(value)
    return out


def _text(f: Fields, number: int) -> str:
    values = f.get(number) or [b""]
    value = values[-1]
    return value.decode() if isinstance(value, bytes) else str(value)


def _message(f: Fields, number: int) -> Fields:
    value = (f.get(number) or [b""])[-1]
    return fields(value) if isinstance(value, bytes) else {}


def unwrap(body: bytes) -> Tuple[str, str, bytes]:
    """(apiVersion, kind, the object's message) of a ``k8s\\0``-prefixed body."""
    if not body.startswith(MAGIC):
        raise ProtobufError("a Kubernetes protobuf body starts with k8s\\0")
    unknown = fields(body[len(MAGIC):])
    type_meta = _message(unknown, 1)
    raw = (unknown.get(2) or [b""])[-1]
    return _text(type_meta, 1), _text(type_meta, 2), raw if isinstance(raw, bytes) else b""


# authorization/v1 ResourceAttributes and NonResourceAttributes: field numbers -> JSON names
_RESOURCE_ATTRIBUTES = {1: "namespace", 2: "verb", 3: "group", 4: "version", 5: "resource",
                        6: "subresource", 7: "name"}
_NON_RESOURCE_ATTRIBUTES = {1: "path", 2: "verb"}


def review_from_protobuf(body: bytes) -> dict:
    """A SelfSubjectAccessReview or SelfSubjectReview body in its JSON form (the spec; the
    metadata and status a client sends are not read)."""
    api_version, kind, raw = unwrap(body)
    out: dict = {"apiVersion": api_version, "kind": kind}
    if kind != "SelfSubjectAccessReview":
        return out
    spec = _message(fields(raw), 2)
    json_spec: dict = {}
    for number, names in ((1, _RESOURCE_ATTRIBUTES), (2, _NON_RESOURCE_ATTRIBUTES)):
        if number in spec:
            attrs = _message(spec, number)
            json_spec["resourceAttributes" if number == 1 else "nonResourceAttributes"] = {
                name: _text(attrs, n) for n, name in names.items() if n in attrs}
    out["spec"] = json_spec
    return out


__all__ = ["MAGIC", "PROTOBUF", "ProtobufError", "fields", "review_from_protobuf", "unwrap"]
