"""Addresses, prefixes and MACs as the BPF maps store them.

Map keys hold an address in 16 bytes, network order, with a family byte beside it
(``FAMILY_V4`` / ``FAMILY_V6`` from consts.h, not the OS's ``AF_*``): an IPv4 address
takes the first 4 bytes and the other 12 are zero. LPM-trie keys (struct xlb_lpm_key) are
different: one trie holds both families, so IPv4 is stored IPv4-mapped (``::ffff:a.b.c.d``)
with prefix length ``96 + n``.

Everything here is pure; bad input raises ValueError (a wrong type, TypeError).
"""

from __future__ import annotations

import ipaddress
import struct
import string
from typing import Optional, Tuple, Union

from pyxlb._layouts import FAMILY_V4, FAMILY_V6

Address = Union[str, ipaddress.IPv4Address, ipaddress.IPv6Address]
Prefix = Union[str, ipaddress.IPv4Network, ipaddress.IPv6Network]

_V4_MAPPED = bytes(10) + b"\xff\xff"
_V4_MAPPED_PLEN = 96
_HEX = frozenset(string.hexdigits)


def parse_addr(addr: Address) -> Tuple[int, bytes]:
    """``"192.0.2.1"`` -> ``(FAMILY_V4, 16 bytes)``; an ipaddress object works too.

    ``"::ffff:192.0.2.1"`` stays an IPv6 address: the family is what was written.
    """
    if isinstance(addr, ipaddress.IPv4Address):
        return FAMILY_V4, addr.packed + bytes(12)
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise ValueError(f"{addr}: a scoped address cannot be a map key")
        return FAMILY_V6, addr.packed
    if not isinstance(addr, str):
        raise TypeError(f"an address must be a str or an ipaddress address, "
                        f"not {type(addr).__name__}")
    try:
        parsed = ipaddress.ip_address(addr.strip())
    except ValueError:
        raise ValueError(f"not an IPv4 or IPv6 address: {addr!r}") from None
    return parse_addr(parsed)


def format_addr(family: int, addr: bytes) -> str:
    """The inverse of parse_addr: ``(FAMILY_V4, 16 bytes) -> "192.0.2.1"``."""
    addr = bytes(addr)
    if len(addr) != 16:
        raise ValueError(f"a map address is 16 bytes, got {len(addr)}")
    if family == FAMILY_V4:
        if addr[4:] != bytes(12):
            raise ValueError(f"IPv4 address with non-zero bytes after the first 4: {addr.hex()}")
        return str(ipaddress.IPv4Address(addr[:4]))
    if family == FAMILY_V6:
        return str(ipaddress.IPv6Address(addr))
    raise ValueError(f"unknown address family {family!r}")


def ip_address(family: int, addr: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Like format_addr, as an ipaddress object."""
    return ipaddress.ip_address(format_addr(family, addr))


def parse_prefix(prefix: Prefix) -> Tuple[int, bytes, int]:
    """``"10.1.0.0/16"`` -> ``(FAMILY_V4, 16 bytes, 16)``.

    Host bits must be zero (``"10.1.0.1/16"`` is refused: it is more likely a typo than a
    wish); a bare address is a host prefix (/32 or /128).
    """
    if isinstance(prefix, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        net = prefix
    elif isinstance(prefix, str):
        text = prefix.strip()
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            raise ValueError(f"not a valid prefix: {prefix!r} ({exc})") from None
    else:
        raise TypeError(f"a prefix must be a str or an ipaddress network, "
                        f"not {type(prefix).__name__}")
    family, addr = parse_addr(net.network_address)
    return family, addr, net.prefixlen


def format_prefix(family: int, addr: bytes, plen: int) -> str:
    """The inverse of parse_prefix."""
    limit = 32 if family == FAMILY_V4 else 128
    if not 0 <= plen <= limit:
        raise ValueError(f"prefix length {plen} out of range 0..{limit}")
    return str(ipaddress.ip_network(f"{format_addr(family, addr)}/{plen}", strict=True))


def to_lpm(family: int, addr: bytes, plen: int) -> Tuple[int, bytes]:
    """A prefix in the LPM-trie convention: ``(prefixlen, 16-byte address)``; IPv4 becomes
    ``::ffff:a.b.c.d`` with prefixlen ``96 + plen``."""
    addr = bytes(addr)
    if len(addr) != 16:
        raise ValueError(f"a map address is 16 bytes, got {len(addr)}")
    if family == FAMILY_V4:
        if not 0 <= plen <= 32:
            raise ValueError(f"IPv4 prefix length {plen} out of range 0..32")
        if addr[4:] != bytes(12):
            raise ValueError(f"IPv4 address with non-zero bytes after the first 4: {addr.hex()}")
        return _V4_MAPPED_PLEN + plen, _V4_MAPPED + addr[:4]
    if family == FAMILY_V6:
        if not 0 <= plen <= 128:
            raise ValueError(f"IPv6 prefix length {plen} out of range 0..128")
        return plen, addr
    raise ValueError(f"unknown address family {family!r}")


def from_lpm(prefixlen: int, addr: bytes) -> Tuple[int, bytes, int]:
    """The inverse of to_lpm. An IPv4-mapped key with prefixlen >= 96 reads back as IPv4."""
    addr = bytes(addr)
    if len(addr) != 16:
        raise ValueError(f"a map address is 16 bytes, got {len(addr)}")
    if not 0 <= prefixlen <= 128:
        raise ValueError(f"LPM prefix length {prefixlen} out of range 0..128")
    if prefixlen >= _V4_MAPPED_PLEN and addr[:12] == _V4_MAPPED:
        return FAMILY_V4, addr[12:] + bytes(12), prefixlen - _V4_MAPPED_PLEN
    return FAMILY_V6, addr, prefixlen


def lpm_prefix(prefix: Prefix) -> Tuple[int, bytes]:
    """``"10.255.0.0/16"`` straight to its LPM key fields ``(112, ::ffff:10.255.0.0)``."""
    return to_lpm(*parse_prefix(prefix))


def parse_mac(mac: Union[str, bytes, bytearray]) -> bytes:
    """``"02:00:00:00:00:01"`` (or with ``-``) -> 6 bytes; 6 bytes pass through."""
    if isinstance(mac, (bytes, bytearray)):
        if len(mac) != 6:
            raise ValueError(f"a MAC is 6 bytes, got {len(mac)}")
        return bytes(mac)
    if not isinstance(mac, str):
        raise TypeError(f"a MAC must be a str or 6 bytes, not {type(mac).__name__}")
    parts = mac.strip().replace("-", ":").split(":")
    if len(parts) != 6 or not all(1 <= len(p) <= 2 and set(p) <= _HEX for p in parts):
        raise ValueError(f"not a MAC address: {mac!r} (expected six hex octets, "
                         f"like 02:00:00:00:00:01)")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    """6 bytes -> ``"02:00:00:00:00:01"``."""
    mac = bytes(mac)
    if len(mac) != 6:
        raise ValueError(f"a MAC is 6 bytes, got {len(mac)}")
    return ":".join(f"{b:02x}" for b in mac)


def prefix_or_none(prefix: Optional[Prefix], family: int, what: str = "prefix") -> Tuple[bytes, int]:
    """(16-byte address, length) of a prefix that must be of `family`; None gives the
    all-zero "no prefix" (as xlb_config stores an unset outer source)."""
    if prefix is None:
        return bytes(16), 0
    fam, addr, plen = parse_prefix(prefix)
    if fam != family:
        raise ValueError(f"{what} must be an IPv{family} prefix, not {prefix!r}")
    return addr, plen


def filter_slot(addr16: bytes, bits: int) -> int:
    """The slot of a 16-byte map address in xlb_addr_filter (xlb_addr_slot in hash.h): its
    four 32-bit words in host order XORed, folded to 16 bits, modulo `bits`."""
    w0, w1, w2, w3 = struct.unpack("=4I", bytes(addr16))
    x = w0 ^ w1 ^ w2 ^ w3
    return (x ^ (x >> 16)) & (bits - 1)
