"""Stateless mode's chain ids: the 16-bit names by which a balancer tells a backend where a
moved connection lived before (docs/datapath.md, "Stateless mode").

A chain id is a pure function of a node's address, so every balancer and every
decapsulator computes the same one without agreeing on anything: 1 + crc32(family byte,
the 16 address bytes, IPv4 in the first 4) % 65535 (0 means "no previous owner"). Two
known nodes may share an id; `peer_table` then names neither (the datapath decapsulates
such a packet where it arrived, as it would without chaining).
"""

from __future__ import annotations

import zlib
from typing import Dict, Iterable, Optional

from pyxlb.addr import Address, parse_addr

IDS = 65535     # chain ids are 1..IDS


def chain_id(address: Address) -> int:
    """The chain id of a node's address (1..65535)."""
    family, packed = parse_addr(address)
    return 1 + zlib.crc32(bytes([family]) + packed) % IDS


def peer_table(addresses: Iterable[Address]) -> Dict[int, Optional[Address]]:
    """Chain id -> the one address that has it, or None where several do (ambiguous: no
    packet is chained to either)."""
    out: Dict[int, Optional[Address]] = {}
    for a in sorted(set(addresses), key=lambda a: parse_addr(a)):
        cid = chain_id(a)
        out[cid] = a if cid not in out else None
    return out

