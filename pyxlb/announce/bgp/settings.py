"""What a node's BGP speaker needs (`BgpSettings`, its `BgpPeer`s), from the `bgp` section of
the YAML config (`from_dict`) or from BGPPeer objects (`from_crd`).

The YAML's shape is checked by the schema of pyxlb/announce/bgp/schema.py, the same one
pyxlb/config.py checks the whole file with; what a schema cannot say is checked here.
Every error is one line naming the field: ``bgp.peers[0].hold_time: must be 0 (no
keepalives) or 3-65535 seconds (BGP's minimum is 3), not 2``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from ...errors import PyxlbError
from ...numbers import int_in
from .. import IPAddress
from . import schema
from .schema import (BFD_INTERVAL_MS, BFD_MULTIPLIER, DEFAULT_HOLD_TIME, DEFAULT_STATE_DIR,
                     MAX_ASN, PEER_SCHEMA, SCHEMA)

Community = Tuple[int, ...]     # (asn, value) standard, (asn, a, b) large (RFC 8092)

_PEER_FIELDS = PEER_SCHEMA["properties"]
_FIELDS = SCHEMA["properties"]
_CRD_NAMES = {"address": "peerAddress", "asn": "peerASN", "hold_time": "holdTime",
              "multihop": "ebgpMultihop", "source_address": "bfd"}


class BgpError(PyxlbError, ValueError):
    """BGP settings that cannot work; the message names the field and the fault."""


def _named(where: str, path: Sequence[Any], names: Optional[Mapping[str, str]] = None) -> str:
    """`where` followed by a path of keys and indexes: bgp.peers[0].asn."""
    out = where
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{(names or {}).get(part, part)}"
    return out


def check(value: Any, field_schema: dict, where: str,
          names: Optional[Mapping[str, str]] = None) -> None:
    """BgpError, naming `where`, unless `field_schema` (a part of the schema) takes
    `value`."""
    found = schema.problem(value, field_schema)
    if found is not None:
        path, message = found
        raise BgpError(f"{_named(where, path, names)}: {message}")


def parse_address(value: Any, where: str) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise BgpError(f"{where}: not an IP address: {value!r}") from None


def parse_router_id(value: Any, where: str) -> ipaddress.IPv4Address:
    addr = parse_address(value, where)
    if addr.version != 4:
        raise BgpError(f"{where}: a BGP router ID is written as an IPv4 address, not {addr}")
    if int(addr) == 0:
        raise BgpError(f"{where}: 0.0.0.0 is not a valid router ID")
    return addr


def parse_community(value: Any, where: str) -> Community:
    """A community from ASN:VALUE / ASN:A:B text or a tuple of its parts."""
    if isinstance(value, tuple) and value and all(isinstance(p, int) for p in value):
        parts = list(value)
    elif isinstance(value, str) and re.fullmatch(r"[0-9]+(:[0-9]+){1,2}", value.strip()):
        parts = [int(p) for p in value.strip().split(":")]
    else:
        raise BgpError(f"{where}: a community is ASN:VALUE (standard) or ASN:A:B (large), "
                       f"not {value!r}")
    top = 65535 if len(parts) == 2 else MAX_ASN
    if len(parts) not in (2, 3) or any(not int_in(p, 0, top) for p in parts):
        raise BgpError(f"{where}: {':'.join(map(str, parts))}: every part of a "
                       f"{'standard' if len(parts) == 2 else 'large'} community is 0-{top}")
    return tuple(parts)


def parse_communities(value: Any, where: str) -> Tuple[Community, ...]:
    """The communities of a list (None: none), each once, in their order."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise BgpError(f"{where}: must be a list of communities, not {value!r}")
    out: List[Community] = []
    for i, c in enumerate(value):
        c = parse_community(c, f"{where}[{i}]")
        if c not in out:
            out.append(c)
    return tuple(out)


def bird_symbol(address: IPAddress) -> str:
    """A BIRD symbol naming something by an address: 10.77.2.1 -> 10_77_2_1."""
    return re.sub(r"[^0-9a-z]", "_", address.compressed)


@dataclasses.dataclass(frozen=True)
class BgpPeer:
    """A router this node keeps a BGP session with."""

    address: IPAddress
    asn: int
    password: Optional[str] = None
    bfd: bool = False
    hold_time: int = DEFAULT_HOLD_TIME
    keepalive: Optional[int] = None     # BIRD's default: a third of the hold time
    multihop: int = 0                   # 0: directly connected; else the TTL
    communities: Tuple[Community, ...] = ()     # for this peer, beside the global ones
    source_address: Optional[IPAddress] = None  # our end of the session (default: BIRD's
                                                # choice, from the route to the peer)

    def __post_init__(self):
        where = f"BGP peer {self.address}"
        object.__setattr__(self, "address", parse_address(self.address, f"{where} address"))
        for name in ("asn", "password", "bfd", "hold_time", "multihop", "keepalive"):
            check(getattr(self, name), _PEER_FIELDS[name], f"{where} {name}")
        if self.keepalive is not None and self.hold_time and self.keepalive >= self.hold_time:
            raise BgpError(f"{where}: keepalive ({self.keepalive} s) must be shorter "
                           f"than the hold time ({self.hold_time} s)")
        object.__setattr__(self, "communities",
                           parse_communities(self.communities, f"{where} communities"))
        if self.source_address is not None:
            source = parse_address(self.source_address, f"{where} source_address")
            if source.version != self.address.version:
                raise BgpError(f"{where}: source_address {source} is not of the peer's "
                               f"address family")
            object.__setattr__(self, "source_address", source)
        elif self.multihop and self.bfd:
            raise BgpError(f"{where}: BFD on a multihop session needs source_address (the "
                           f"local address of the session; BIRD cannot choose it)")

    @property
    def family(self) -> int:
        """The address family of the routes this session carries (its own)."""
        return self.address.version

    @property
    def protocol(self) -> str:
        """The name of this session's `protocol bgp` (stable: derived from the address, so
        reordering the peers never restarts a session)."""
        return f"pyxlb_peer_{bird_symbol(self.address)}"


@dataclasses.dataclass(frozen=True)
class BgpSettings:
    """What a node's BGP speaker needs: its identity, its peers, where it keeps its files."""

    asn: int
    router_id: ipaddress.IPv4Address
    peers: Tuple[BgpPeer, ...]
    communities: Tuple[Community, ...] = ()
    node: str = ""
    state_dir: str = DEFAULT_STATE_DIR
    bird: str = "bird"
    birdc: str = "birdc"
    bfd_interval_ms: int = BFD_INTERVAL_MS
    bfd_multiplier: int = BFD_MULTIPLIER

    def __post_init__(self):
        check(self.asn, _FIELDS["asn"], "bgp.asn")
        object.__setattr__(self, "router_id",
                           parse_router_id(self.router_id, "bgp.router_id"))
        peers = tuple(self.peers)
        if not peers:
            raise BgpError("bgp.peers: at least one peer is needed")
        seen: Set[IPAddress] = set()
        for i, p in enumerate(peers):
            if not isinstance(p, BgpPeer):
                raise BgpError(f"bgp.peers[{i}]: must be a BgpPeer, not {type(p).__name__}")
            if p.address in seen:
                raise BgpError(f"bgp.peers[{i}]: address {p.address} appears twice")
            seen.add(p.address)
        object.__setattr__(self, "peers", peers)
        object.__setattr__(self, "communities",
                           parse_communities(self.communities, "bgp.communities"))
        for name in ("bfd_interval_ms", "bfd_multiplier", "state_dir", "bird", "birdc"):
            check(getattr(self, name), _FIELDS[name], f"bgp.{name}")

    @property
    def families(self) -> FrozenSet[int]:
        """The address families some peer carries: a VIP of another family has nobody to
        be announced to."""
        return frozenset(p.family for p in self.peers)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], node: str = "",
                  interface: Optional[str] = None) -> "BgpSettings":
        """Settings from the `bgp` section of the YAML config (docs/announce.md). The router
        ID defaults to the first IPv4 address of `interface` (looked up in the calling
        thread's network namespace). Errors are one line naming the field."""
        check(data, SCHEMA, "bgp")
        if data.get("router_id") is not None:
            router_id = parse_router_id(data["router_id"], "bgp.router_id")
        else:
            router_id = _interface_router_id(interface)
        peers = tuple(_peer(p, f"bgp.peers[{i}]") for i, p in enumerate(data["peers"]))
        seen: Set[IPAddress] = set()
        for i, p in enumerate(peers):
            if p.address in seen:
                raise BgpError(f"bgp.peers[{i}].address: {p.address} appears twice")
            seen.add(p.address)
        kw: Dict[str, Any] = {name: data[name] for name in
                              ("bfd_interval_ms", "bfd_multiplier", "state_dir", "bird", "birdc")
                              if name in data}
        return cls(asn=data["asn"], router_id=router_id, peers=peers, node=node,
                   communities=parse_communities(data.get("communities"), "bgp.communities"),
                   **kw)

    @classmethod
    def from_crd(cls, specs: Sequence[Mapping[str, Any]], node: str = "",
                 router_id: Any = None, interface: Optional[str] = None,
                 state_dir: str = DEFAULT_STATE_DIR,
                 local_addresses: Iterable[Any] = ()) -> "BgpSettings":
        """Settings from the specs of the BGPPeer objects that select this node (the caller
        applies their nodeSelector). Every BGPPeer names our ASN (myASN): they must agree.
        Communities are per peer there. `local_addresses` (the node's own addresses) give
        multihop sessions their source address, one per family."""
        sources = {}
        for a in local_addresses:
            a = parse_address(a, "local address")
            sources.setdefault(a.version, a)
        if not specs:
            raise BgpError("BGPPeer: no BGPPeer selects this node")
        asns = {s.get("myASN") for s in specs}
        if len(asns) != 1:
            raise BgpError(f"BGPPeer myASN: the BGPPeers selecting node {node or '?'} "
                           f"disagree on this node's AS number: {sorted(map(str, asns))}")
        asn = asns.pop()
        check(asn, _FIELDS["asn"], "BGPPeer.spec.myASN")
        peers: List[BgpPeer] = []
        for i, spec in enumerate(specs):
            where = f"BGPPeer[{i}] ({spec.get('peerAddress', '?')}).spec"
            source = None
            if spec.get("ebgpMultihop") and _is_ip(spec.get("peerAddress")):
                source = sources.get(ipaddress.ip_address(spec["peerAddress"]).version)
            peer = _peer({
                "address": spec.get("peerAddress"), "asn": spec.get("peerASN"),
                "password": spec.get("password"), "bfd": spec.get("bfd", False),
                "hold_time": spec.get("holdTime", DEFAULT_HOLD_TIME),
                "multihop": spec.get("ebgpMultihop", 0),
                "communities": spec.get("communities") or [],
                "source_address": None if source is None else str(source)}, where, _CRD_NAMES)
            if any(p.address == peer.address for p in peers):
                raise BgpError(f"{where}.peerAddress: {peer.address} is named by two BGPPeers")
            peers.append(peer)
        rid = (parse_router_id(router_id, "router_id") if router_id is not None
               else _interface_router_id(interface))
        return cls(asn=asn, router_id=rid, peers=tuple(peers), node=node, state_dir=state_dir)


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
        return True
    except ValueError:
        return False


def _peer(data: Any, where: str, names: Optional[Mapping[str, str]] = None) -> BgpPeer:
    """A peer from its YAML mapping; `names`: how the fields are spelt where the data
    came from (the CRD's camelCase), for the error messages."""
    def at(key: str) -> str:
        return _named(where, [key], names)

    check(data, PEER_SCHEMA, where, names)
    address = parse_address(data["address"], at("address"))
    hold = data.get("hold_time", DEFAULT_HOLD_TIME)
    keepalive = data.get("keepalive")
    if keepalive is not None and hold and keepalive >= hold:
        raise BgpError(f"{at('keepalive')}: {keepalive} s must be shorter than the hold "
                       f"time ({hold} s)")
    bfd, multihop = data.get("bfd", False), data.get("multihop", 0)
    source = data.get("source_address")
    if source is not None:
        source = parse_address(source, at("source_address"))
        if source.version != address.version:
            raise BgpError(f"{at('source_address')}: {source} is not of the family of the "
                           f"peer's address {address}")
    elif bfd and multihop:
        raise BgpError(f"{at('source_address')}: BFD on a multihop session needs the "
                       f"session's local address (BIRD cannot choose it)")
    return BgpPeer(address=address, asn=data["asn"], password=data.get("password"),
                   bfd=bfd, hold_time=hold, keepalive=keepalive, multihop=multihop,
                   communities=parse_communities(data.get("communities"), at("communities")),
                   source_address=source)


def _interface_router_id(interface: Optional[str]) -> ipaddress.IPv4Address:
    """The first IPv4 address of `interface`: the usual router ID of a node."""
    if not interface:
        raise BgpError("bgp.router_id: missing, and no interface to take an IPv4 address from")
    from ... import netlink         # only here: the settings stay importable without pyroute2
    try:
        addrs = netlink.addresses(netlink.ifindex(interface))
    except PyxlbError as exc:
        raise BgpError(f"bgp.router_id: missing, and {exc}") from None
    v4 = [a for a in addrs if a.version == 4]
    if not v4:
        raise BgpError(f"bgp.router_id: missing, and interface {interface} has no IPv4 "
                       f"address to take it from: set one")
    return v4[0]
