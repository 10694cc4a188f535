"""The heartbeat's wire format: one UDP datagram per heartbeat, optionally signed.

::

    magic "XLBh" | version u8 | flags u8 | name length u8 | zero u8 |
    incarnation u64 | seq u64 | ack u64 | name (UTF-8) | HMAC-SHA256[:16] if flags & HMAC

Big-endian. `ack` is the recipient's incarnation as the sender last heard it, 0 when the
sender does not hear the recipient: that is how a node learns that a peer has just started
hearing it again (and will give back the addresses it took over). The format is a contract
between versions of the agent (tests/unit/test_announce_l2.py pins it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import struct
import time
from typing import Optional, Union

from ...errors import PyxlbError

MAGIC = b"XLBh"
VERSION = 1
FLAG_HMAC = 0x01
FLAG_LEAVING = 0x02
_HEAD = struct.Struct("!4sBBBxQQQ")
HMAC_LEN = 16
MAX_NAME = 253              # a Kubernetes node name is a DNS subdomain
MAX_MESSAGE = _HEAD.size + MAX_NAME + HMAC_LEN
MAX_U64 = (1 << 64) - 1


class L2Error(PyxlbError, ValueError):
    """Bad L2 announcement settings; the message names the setting and the fault."""


class HeartbeatError(PyxlbError, ValueError):
    """A datagram that is not a valid heartbeat (or not signed with our key)."""


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """One heartbeat: who sends it, which run of that node (`incarnation`, chosen at start),
    its position in that run (`seq`), and whether the sender hears the recipient (`ack`)."""

    node: str
    incarnation: int
    seq: int
    ack: int = 0
    leaving: bool = False


def signing_key(key: Union[str, bytes, None]) -> Optional[bytes]:
    """The HMAC key as bytes (None: heartbeats go unsigned); an empty one is refused."""
    if key is None:
        return None
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if not raw:
        raise L2Error("the heartbeat key is empty (leave it out to send unsigned heartbeats)")
    return raw


def name_bytes(node: str, what: str = "node name") -> bytes:
    """A node name as it goes on the wire; L2Error (naming `what`) if it cannot."""
    if not isinstance(node, str) or not node:
        raise L2Error(f"{what} must be a non-empty string, not {node!r}")
    raw = node.encode()
    if len(raw) > MAX_NAME:
        raise L2Error(f"{what} {node[:40]!r}... is {len(raw)} bytes long (at most {MAX_NAME})")
    return raw


def encode(hb: Heartbeat, key: Union[str, bytes, None] = None) -> bytes:
    """The datagram for `hb`, signed with `key` when one is given."""
    name = name_bytes(hb.node)
    for field in ("incarnation", "seq", "ack"):
        value = getattr(hb, field)
        if not 0 <= value <= MAX_U64:
            raise L2Error(f"heartbeat {field} {value} does not fit 64 bits")
    key = signing_key(key)
    flags = (FLAG_HMAC if key else 0) | (FLAG_LEAVING if hb.leaving else 0)
    body = _HEAD.pack(MAGIC, VERSION, flags, len(name), hb.incarnation, hb.seq, hb.ack) + name
    if key:
        body += hmac.new(key, body, hashlib.sha256).digest()[:HMAC_LEN]
    return body


def decode(data: bytes, key: Union[str, bytes, None] = None) -> Heartbeat:
    """The heartbeat in `data`; HeartbeatError for anything else, for a wrong or missing
    signature when we have a key, and for a signed one when we have none (the nodes'
    settings differ: better refused loudly than half trusted)."""
    if len(data) < _HEAD.size:
        raise HeartbeatError(f"{len(data)} bytes: shorter than a heartbeat header")
    magic, version, flags, nlen, inc, seq, ack = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise HeartbeatError("not a heartbeat (wrong magic)")
    if version != VERSION:
        raise HeartbeatError(f"heartbeat version {version}, this node speaks {VERSION}")
    if flags & ~(FLAG_HMAC | FLAG_LEAVING):
        raise HeartbeatError(f"unknown heartbeat flags {flags:#04x}")
    key = signing_key(key)
    signed = bool(flags & FLAG_HMAC)
    want = _HEAD.size + nlen + (HMAC_LEN if signed else 0)
    if nlen == 0 or len(data) != want:
        raise HeartbeatError(f"{len(data)} bytes, the header says {want}")
    if key and not signed:
        raise HeartbeatError("unsigned heartbeat, but a key is configured")
    if signed and not key:
        raise HeartbeatError("signed heartbeat, but no key is configured")
    if key:
        body, mac = data[:-HMAC_LEN], data[-HMAC_LEN:]
        if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:HMAC_LEN]):
            raise HeartbeatError("heartbeat signature does not match (another key?)")
    try:
        node = data[_HEAD.size:_HEAD.size + nlen].decode()
    except UnicodeDecodeError:
        raise HeartbeatError("node name is not UTF-8") from None
    if inc == 0:
        raise HeartbeatError("incarnation 0 (reserved for 'not heard')")
    return Heartbeat(node, inc, seq, ack, bool(flags & FLAG_LEAVING))


def new_incarnation() -> int:
    """A number for this run of a node: the wall clock in ns, so a restarted node's is
    normally larger than its previous one's (peers use that to refuse replays)."""
    return max(1, time.time_ns() & MAX_U64)
