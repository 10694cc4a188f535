"""BGP announcement through BIRD 2: every eligible node announces each VIP's /32 (/128)
with itself as next hop, and the router spreads flows over the nodes with ECMP.

Three layers, each usable alone:

- `bird_config(settings, vips)`: the node's whole BIRD configuration, a pure function. The
  VIPs are `blackhole` routes of a `protocol static` (the XDP balancer takes their packets
  before the kernel would route them, and no kernel protocol is configured, so they never
  reach the node's FIB); an export filter lets only those routes out to the peers, with
  the configured communities attached.
- `BirdSpeaker`: one BIRD daemon per node, with its configuration, control socket, pid file
  and log under a state directory. It is started detached (its own session), so it
  outlives the agent: a crashed or restarted agent leaves the routes announced, and a new
  agent adopts the running daemon instead of starting another. A new configuration is
  parse-checked (`bird -p`), written atomically and loaded with `birdc configure`.
- `BgpAnnouncer`: the `Announcer` of mode "bgp": keeps the set of announced addresses and
  reconfigures BIRD once per change (`sync` batches).

BGP graceful restart is deliberately off: a router honouring it would keep a dead node's
routes for the restart time (two minutes by default) and black-hole its share of the
flows. Surviving an agent restart is the speaker's job instead (it keeps running).
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import (Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Set,
                    Tuple)

from ..errors import PyxlbError
from . import Announcer, IPAddress, Result, _order

log = logging.getLogger("pyxlb.announce.bgp")

DEFAULT_STATE_DIR = "/run/pyxlb/bird"
DEFAULT_HOLD_TIME = 3
BFD_INTERVAL_MS = 100
BFD_MULTIPLIER = 3
AS_TRANS = 23456                # RFC 6793's stand-in for 4-byte ASNs: never a real one
MAX_ASN = 4294967295
MAX_PASSWORD = 80               # TCP_MD5SIG_MAXKEYLEN
UNIX_PATH_MAX = 107             # sun_path, less its terminating NUL
VIPS_MARK = "# pyxlb-vips:"     # the config's own record of what it announces (adoption)

Community = Tuple[int, ...]     # (asn, value) standard, (asn, a, b) large (RFC 8092)


class BgpError(PyxlbError, ValueError):
    """BGP settings that cannot work; the message names the field and the fault."""


class BirdError(PyxlbError):
    """The BIRD daemon refused or did not answer. `retry`: worth trying again later (the
    daemon is starting, hung, or gone) rather than wrong as configured."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


# -- settings ---------------------------------------------------------------------------

def _int(value: Any, where: str, low: int, high: int, what: str = "an integer") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BgpError(f"{where}: must be {what} {low}-{high}, not {value!r}")
    if not low <= value <= high:
        raise BgpError(f"{where}: must be {what} {low}-{high}, not {value}")
    return value


def _asn(value: Any, where: str) -> int:
    asn = _int(value, where, 1, MAX_ASN, "an AS number")
    if asn == AS_TRANS:
        raise BgpError(f"{where}: {AS_TRANS} is AS_TRANS (RFC 6793), not a usable AS number")
    return asn


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise BgpError(f"{where}: must be true or false, not {value!r}")
    return value


def _hold_time(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0 or value > 65535 \
            or 0 < value < 3:
        raise BgpError(f"{where}: must be 0 (no keepalives) or 3-65535 seconds (BGP's "
                       f"minimum is 3), not {value!r}")
    return value


def _address(value: Any, where: str) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise BgpError(f"{where}: not an IP address: {value!r}") from None


def _router_id(value: Any, where: str) -> ipaddress.IPv4Address:
    addr = _address(value, where)
    if addr.version != 4:
        raise BgpError(f"{where}: a BGP router ID is written as an IPv4 address, not {addr}")
    if int(addr) == 0:
        raise BgpError(f"{where}: 0.0.0.0 is not a valid router ID")
    return addr


_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


def _password(value: Any, where: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise BgpError(f"{where}: must be a non-empty string")
    if len(value.encode()) > MAX_PASSWORD:
        raise BgpError(f"{where}: TCP MD5 keys are at most {MAX_PASSWORD} bytes, "
                       f"this one has {len(value.encode())}")
    # BIRD's strings have no escapes: a quote would end it, a backslash is taken literally
    # by some versions and not others
    if not _PRINTABLE.match(value) or '"' in value or "\\" in value:
        raise BgpError(f"{where}: may hold printable ASCII except '\"' and '\\' only")
    return value


def _community(value: Any, where: str) -> Community:
    if isinstance(value, tuple) and value and all(isinstance(p, int) for p in value):
        parts = list(value)
    elif isinstance(value, str) and re.fullmatch(r"\d+(:\d+){1,2}", value.strip()):
        parts = [int(p) for p in value.strip().split(":")]
    else:
        raise BgpError(f"{where}: a community is ASN:VALUE (standard) or ASN:A:B (large), "
                       f"not {value!r}")
    top = 65535 if len(parts) == 2 else MAX_ASN
    if len(parts) not in (2, 3) or any(not 0 <= p <= top for p in parts):
        raise BgpError(f"{where}: {':'.join(map(str, parts))}: every part of a "
                       f"{'standard' if len(parts) == 2 else 'large'} community is 0-{top}")
    return tuple(parts)


def _communities(value: Any, where: str) -> Tuple[Community, ...]:
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise BgpError(f"{where}: must be a list of communities, not {value!r}")
    out: List[Community] = []
    for i, c in enumerate(value):
        c = _community(c, f"{where}[{i}]")
        if c not in out:
            out.append(c)
    return tuple(out)


def _symbol(address: IPAddress) -> str:
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
        object.__setattr__(self, "address", _address(self.address, f"{where} address"))
        _asn(self.asn, f"{where} asn")
        _password(self.password, f"{where} password")
        _bool(self.bfd, f"{where} bfd")
        _hold_time(self.hold_time, f"{where} hold_time")
        _int(self.multihop, f"{where} multihop", 0, 255)
        if self.keepalive is not None:
            _int(self.keepalive, f"{where} keepalive", 1, 65535, "seconds")
            if self.hold_time and self.keepalive >= self.hold_time:
                raise BgpError(f"{where}: keepalive ({self.keepalive} s) must be shorter "
                               f"than the hold time ({self.hold_time} s)")
        object.__setattr__(self, "communities",
                           _communities(self.communities, f"{where} communities"))
        if self.source_address is not None:
            source = _address(self.source_address, f"{where} source_address")
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
        return f"pyxlb_peer_{_symbol(self.address)}"


_PEER_KEYS = {"address", "asn", "password", "bfd", "hold_time", "keepalive", "multihop",
              "communities", "source_address"}
_CRD_NAMES = {"address": "peerAddress", "asn": "peerASN", "hold_time": "holdTime",
              "multihop": "ebgpMultihop", "source_address": "bfd"}
_SETTINGS_KEYS = {"asn", "router_id", "peers", "communities", "state_dir", "bird", "birdc",
                  "bfd_interval_ms", "bfd_multiplier"}


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
        _asn(self.asn, "bgp.asn")
        object.__setattr__(self, "router_id", _router_id(self.router_id, "bgp.router_id"))
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
                           _communities(self.communities, "bgp.communities"))
        _int(self.bfd_interval_ms, "bgp.bfd_interval_ms", 10, 60000, "milliseconds")
        _int(self.bfd_multiplier, "bgp.bfd_multiplier", 1, 255)
        for name in ("state_dir", "bird", "birdc"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or '"' in value or "\n" in value:
                raise BgpError(f"bgp.{name}: must be a path without quotes, not {value!r}")

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
        if not isinstance(data, Mapping):
            raise BgpError(f"bgp: must be a mapping, not {type(data).__name__}")
        unknown = sorted(set(data) - _SETTINGS_KEYS)
        if unknown:
            raise BgpError(f"bgp.{unknown[0]}: unknown setting (known: "
                           f"{', '.join(sorted(_SETTINGS_KEYS))})")
        if "asn" not in data:
            raise BgpError("bgp.asn: missing (this node's AS number)")
        asn = _asn(data["asn"], "bgp.asn")
        if data.get("router_id") is not None:
            router_id = _router_id(data["router_id"], "bgp.router_id")
        else:
            router_id = _interface_router_id(interface)
        raw_peers = data.get("peers")
        if not isinstance(raw_peers, (list, tuple)) or not raw_peers:
            raise BgpError("bgp.peers: must be a non-empty list of peers")
        peers = tuple(_peer_from_dict(p, f"bgp.peers[{i}]") for i, p in enumerate(raw_peers))
        kw: Dict[str, Any] = {}
        for name in ("bfd_interval_ms", "bfd_multiplier"):
            if name in data:
                kw[name] = data[name]
        for name in ("state_dir", "bird", "birdc"):
            if name in data:
                if not isinstance(data[name], str) or not data[name]:
                    raise BgpError(f"bgp.{name}: must be a non-empty string")
                kw[name] = data[name]
        seen: Set[IPAddress] = set()
        for i, p in enumerate(peers):
            if p.address in seen:
                raise BgpError(f"bgp.peers[{i}].address: {p.address} appears twice")
            seen.add(p.address)
        return cls(asn=asn, router_id=router_id, peers=peers, node=node,
                   communities=_communities(data.get("communities"), "bgp.communities"),
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
            a = _address(a, "local address")
            sources.setdefault(a.version, a)
        if not specs:
            raise BgpError("BGPPeer: no BGPPeer selects this node")
        asns = {s.get("myASN") for s in specs}
        if len(asns) != 1:
            raise BgpError(f"BGPPeer myASN: the BGPPeers selecting node {node or '?'} "
                           f"disagree on this node's AS number: {sorted(map(str, asns))}")
        asn = _asn(asns.pop(), "BGPPeer.spec.myASN")
        peers: List[BgpPeer] = []
        for i, spec in enumerate(specs):
            where = f"BGPPeer[{i}] ({spec.get('peerAddress', '?')}).spec"
            peer = _peer_from_dict({
                "address": spec.get("peerAddress"), "asn": spec.get("peerASN"),
                "password": spec.get("password"), "bfd": spec.get("bfd", False),
                "hold_time": spec.get("holdTime", DEFAULT_HOLD_TIME),
                "multihop": spec.get("ebgpMultihop", 0),
                "communities": spec.get("communities") or [],
                "source_address": (sources.get(ipaddress.ip_address(spec["peerAddress"]).version)
                                   if spec.get("ebgpMultihop") and _is_ip(spec.get("peerAddress"))
                                   else None)}, where, _CRD_NAMES)
            if any(p.address == peer.address for p in peers):
                raise BgpError(f"{where}.peerAddress: {peer.address} is named by two BGPPeers")
            peers.append(peer)
        rid = (_router_id(router_id, "router_id") if router_id is not None
               else _interface_router_id(interface))
        return cls(asn=asn, router_id=rid, peers=tuple(peers), node=node, state_dir=state_dir)


def _is_ip(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value))
        return True
    except ValueError:
        return False


def _peer_from_dict(data: Any, where: str,
                    names: Optional[Mapping[str, str]] = None) -> BgpPeer:
    """A peer from its YAML mapping; `names`: how the fields are spelt where the data
    came from (the CRD's camelCase), for the error messages."""
    def at(key: str) -> str:
        return f"{where}.{(names or {}).get(key, key)}"

    if not isinstance(data, Mapping):
        raise BgpError(f"{where}: must be a mapping with address and asn, not {data!r}")
    unknown = sorted(set(data) - _PEER_KEYS)
    if unknown:
        raise BgpError(f"{where}.{unknown[0]}: unknown setting (known: "
                       f"{', '.join(sorted(_PEER_KEYS))})")
    for key in ("address", "asn"):
        if data.get(key) is None:
            raise BgpError(f"{at(key)}: missing")
    address = _address(data["address"], at("address"))
    hold = _hold_time(data.get("hold_time", DEFAULT_HOLD_TIME), at("hold_time"))
    keepalive = data.get("keepalive")
    if keepalive is not None:
        _int(keepalive, at("keepalive"), 1, 65535, "seconds")
        if hold and keepalive >= hold:
            raise BgpError(f"{at('keepalive')}: {keepalive} s must be shorter than the hold "
                           f"time ({hold} s)")
    bfd = _bool(data.get("bfd", False), at("bfd"))
    multihop = _int(data.get("multihop", 0), at("multihop"), 0, 255)
    source = data.get("source_address")
    if source is not None:
        source = _address(source, at("source_address"))
        if source.version != address.version:
            raise BgpError(f"{at('source_address')}: {source} is not of the family of the "
                           f"peer's address {address}")
    elif bfd and multihop:
        raise BgpError(f"{at('source_address')}: BFD on a multihop session needs the "
                       f"session's local address (BIRD cannot choose it)")
    return BgpPeer(address=address, asn=_asn(data["asn"], at("asn")),
                   password=_password(data.get("password"), at("password")),
                   bfd=bfd, hold_time=hold, keepalive=keepalive, multihop=multihop,
                   communities=_communities(data.get("communities"), at("communities")),
                   source_address=source)


def _interface_router_id(interface: Optional[str]) -> ipaddress.IPv4Address:
    """The first IPv4 address of `interface`: the usual router ID of a node."""
    if not interface:
        raise BgpError("bgp.router_id: missing, and no interface to take an IPv4 address from")
    from .. import netlink          # only here: the settings stay importable without pyroute2
    try:
        addrs = netlink.addresses(netlink.ifindex(interface))
    except PyxlbError as exc:
        raise BgpError(f"bgp.router_id: missing, and {exc}") from None
    v4 = [a for a in addrs if a.version == 4]
    if not v4:
        raise BgpError(f"bgp.router_id: missing, and interface {interface} has no IPv4 "
                       f"address to take it from: set one")
    return v4[0]


# -- configuration ----------------------------------------------------------------------

def _community_statements(communities: Iterable[Community]) -> List[str]:
    out = []
    for c in communities:
        attr = "bgp_community" if len(c) == 2 else "bgp_large_community"
        out.append(f"{attr}.add(({', '.join(map(str, c))}));")
    return out


def _log_statement() -> str:
    # stderr is the log file the speaker opens (bird.log in the state directory); routine
    # information stays out so that it does not grow with every keepalive or update
    return "log stderr { remote, warning, error, auth, fatal, bug };"


def _bfd_section(interval_ms: int, multiplier: int) -> List[str]:
    timers = [f"    interval {interval_ms} ms;", f"    multiplier {multiplier};"]
    return ["protocol bfd pyxlb_bfd {",
            '  interface "*" {', *timers, "  };",
            "  multihop {", *timers, "  };",
            "}", ""]


def _comment(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)


def bird_config(settings: BgpSettings, vips: Iterable[IPAddress]) -> str:
    """The BIRD 2 configuration that announces `vips` from this node to its peers."""
    addrs = sorted({ipaddress.ip_address(v) for v in vips}, key=_order)
    lines = [
        f"# BIRD 2 configuration of pyxlb node {_comment(settings.node or '(unnamed)')}: "
        f"written by pyxlb.announce.bgp,",
        "# replaced on every change (edits here are lost).",
        f"{VIPS_MARK} {' '.join(a.compressed for a in addrs)}".rstrip(),
        "",
        f"router id {settings.router_id};",
        _log_statement(),
        "",
        "protocol device pyxlb_device {",
        "}",
        "",
    ]
    # the VIPs: blackhole routes, only ever exported (no kernel protocol installs them)
    for family in (4, 6):
        lines.append(f"protocol static pyxlb_vip{family} {{")
        lines.append(f"  ipv{family};")
        plen = 32 if family == 4 else 128
        for a in addrs:
            if a.version == family:
                lines.append(f"  route {a.compressed}/{plen} blackhole;")
        lines += ["}", ""]

    # one export filter per distinct list of communities (the global ones, then a peer's)
    filters: Dict[Tuple[Community, ...], str] = {}
    for peer in settings.peers:
        wanted = tuple(dict.fromkeys(settings.communities + peer.communities))
        if wanted not in filters:
            name = "pyxlb_export" if not filters else f"pyxlb_export_{len(filters)}"
            filters[wanted] = name
            lines += [f"filter {name}", "{",
                      '  if proto = "pyxlb_vip4" || proto = "pyxlb_vip6" then {',
                      *(f"    {s}" for s in _community_statements(wanted)),
                      "    accept;", "  }", "  reject;", "}", ""]

    if any(p.bfd for p in settings.peers):
        lines += _bfd_section(settings.bfd_interval_ms, settings.bfd_multiplier)

    for peer in settings.peers:
        export = filters[tuple(dict.fromkeys(settings.communities + peer.communities))]
        lines += [
            f"protocol bgp {peer.protocol} {{",
            f'  description "pyxlb: router {peer.address} AS {peer.asn}";',
            (f"  local {peer.source_address.compressed} as {settings.asn};"
             if peer.source_address is not None else f"  local as {settings.asn};"),
            f"  neighbor {peer.address.compressed} as {peer.asn};",
            "  direct;" if peer.multihop == 0 else f"  multihop {peer.multihop};",
            f"  hold time {peer.hold_time};",
        ]
        if peer.keepalive is not None:
            lines.append(f"  keepalive time {peer.keepalive};")
        lines += [
            "  connect delay time 1;",
            "  connect retry time 1;",
            "  error wait time 1, 5;",
            "  graceful restart off;",
        ]
        if peer.bfd:
            lines.append("  bfd on;")
        if peer.password is not None:
            lines.append(f'  password "{peer.password}";')
        lines += [
            f"  ipv{peer.family} {{",
            "    import none;",
            f"    export filter {export};",
            "    next hop self;",
            "  };",
            "}",
            "",
        ]
    return "\n".join(lines)


def announced_in(config: str) -> FrozenSet[IPAddress]:
    """The addresses a configuration written by `bird_config` announces (its VIPS_MARK
    line): what a running speaker announces when an agent adopts it."""
    for line in config.splitlines():
        if line.startswith(VIPS_MARK):
            out = set()
            for word in line[len(VIPS_MARK):].split():
                try:
                    out.add(ipaddress.ip_address(word))
                except ValueError:
                    continue
            return frozenset(out)
    return frozenset()


def upstream_router_config(router_id: Any, asn: int,
                           nodes: Iterable[Tuple[Any, int]], *, bfd: bool = False,
                           hold_time: int = DEFAULT_HOLD_TIME, password: Optional[str] = None,
                           bfd_interval_ms: int = BFD_INTERVAL_MS,
                           bfd_multiplier: int = BFD_MULTIPLIER) -> str:
    """The other side: a BIRD 2 router that peers with the LB nodes (`nodes`: (address,
    ASN) pairs), takes only host routes from them and installs them in the kernel with
    every node as a next hop (ECMP, `merge paths`). The lab's router runs this; it is also
    the example in docs/announce.md. The router still needs the L4 hash policy sysctls
    (net.ipv4.fib_multipath_hash_policy=1, net.ipv6.fib_multipath_hash_policy=1) or every
    flow to a VIP takes the same node."""
    rid = _router_id(router_id, "router_id")
    _asn(asn, "asn")
    _hold_time(hold_time, "hold_time")
    _password(password, "password")
    lines = [f"router id {rid};", _log_statement(), "", "protocol device {", "}", ""]
    for family in (4, 6):
        lines += [f"protocol kernel pyxlb_kernel{family} {{",
                  f"  ipv{family} {{", "    import none;",
                  "    export where source = RTS_BGP;", "  };",
                  "  merge paths yes;", "}", ""]
    if bfd:
        lines += _bfd_section(bfd_interval_ms, bfd_multiplier)
    for address, node_asn in nodes:
        addr = _address(address, "node address")
        _asn(node_asn, f"AS of node {addr}")
        plen = 32 if addr.version == 4 else 128
        lines += [f"protocol bgp pyxlb_node_{_symbol(addr)} {{",
                  f"  local as {asn};",
                  f"  neighbor {addr.compressed} as {node_asn};",
                  f"  hold time {hold_time};",
                  "  connect delay time 1;",
                  "  connect retry time 1;",
                  "  error wait time 1, 5;"]
        if bfd:
            lines.append("  bfd on;")
        if password is not None:
            lines.append(f'  password "{password}";')
        lines += [f"  ipv{addr.version} {{",
                  f"    import where net.len = {plen};",
                  "    export none;", "  };", "}", ""]
    return "\n".join(lines)


# -- the daemon ---------------------------------------------------------------------------

def _binary(name: str) -> str:
    """The path of `name` (bird, birdc): as given when it is a path, else on PATH or in
    the sbin directories (which a non-root PATH may lack)."""
    if os.sep in name:
        if os.access(name, os.X_OK):
            return name
        raise BirdError(f"{name}: not an executable file", retry=False)
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin:/sbin")
    if found:
        return found
    raise BirdError(f"{name} not found on PATH or in /usr/sbin: install BIRD 2 (the Debian "
                    f"package bird2)", retry=False)


def _proc_state(pid: int) -> Optional[str]:
    """The one-letter state of a process (R, S, T, Z, ...) or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None


def _netns_inode(pid: Optional[int] = None) -> Optional[int]:
    path = "/proc/thread-self/ns/net" if pid is None else f"/proc/{pid}/ns/net"
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _one_line(text: str, limit: int = 400) -> str:
    out = "; ".join(part.strip() for part in text.splitlines() if part.strip())
    return out[:limit] + ("..." if len(out) > limit else "")


class BirdSpeaker:
    """One BIRD daemon, in the caller's network namespace, with its files under
    `state_dir`: bird.conf (mode 0600: it may hold passwords), bird.ctl (control socket),
    bird.pid, bird.log (its warnings and errors, emptied at each start).

    The daemon runs in its own session and is never tied to this object's life: dropping
    the object, or the process, leaves it announcing. A later BirdSpeaker on the same
    state directory adopts it (its pid file names a live bird serving our socket in this
    network namespace). Every method call that talks to the daemon is bounded by
    `timeout` seconds."""

    def __init__(self, state_dir: str = DEFAULT_STATE_DIR, bird: str = "bird",
                 birdc: str = "birdc", timeout: float = 5.0):
        self.state_dir = os.path.abspath(state_dir)
        self.config_path = os.path.join(self.state_dir, "bird.conf")
        self.socket_path = os.path.join(self.state_dir, "bird.ctl")
        self.pid_path = os.path.join(self.state_dir, "bird.pid")
        self.log_path = os.path.join(self.state_dir, "bird.log")
        if len(self.socket_path.encode()) > UNIX_PATH_MAX:
            raise BgpError(f"bgp.state_dir: {self.state_dir} is too long for a control "
                           f"socket path (at most {UNIX_PATH_MAX - 9} bytes)")
        if '"' in self.state_dir:
            raise BgpError(f"bgp.state_dir: {self.state_dir!r} must not contain a quote")
        self.bird, self.birdc = bird, birdc
        self.timeout = timeout
        self._child: Optional[subprocess.Popen] = None   # a daemon this object started

    def __repr__(self) -> str:
        return f"BirdSpeaker({self.state_dir!r})"

    # -- finding the daemon --------------------------------------------------------------

    def pid(self) -> Optional[int]:
        """The pid of the live daemon of this state directory, or None. BirdError if it
        runs in another network namespace (one state directory per node)."""
        if self._child is not None and self._child.poll() is not None:
            self._child = None                      # ours, and dead: reaped just now
        try:
            with open(self.pid_path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None                 # none, or empty (a bird that failed at start)
        if _proc_state(pid) in (None, "Z", "X"):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0")]
        except OSError:
            return None
        if not argv or not os.path.basename(argv[0]).startswith("bird"):
            return None                 # the pid was reused by something else
        sockets = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-s"]
        if self.socket_path not in sockets:
            return None
        if _netns_inode(pid) != _netns_inode():
            raise BirdError(f"bird (pid {pid}) of {self.state_dir} runs in another network "
                            f"namespace: one state directory per node", retry=False)
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def running_config(self) -> Optional[str]:
        """The configuration file of the live daemon, or None when none runs."""
        if self.pid() is None:
            return None
        try:
            with open(self.config_path) as f:
                return f.read()
        except OSError:
            return None

    def _answers(self, timeout: float = 0.5) -> bool:
        """Whether something greets on the control socket (BIRD says "0001 ... ready")."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.connect(self.socket_path)
            return s.recv(64).startswith(b"0001")
        except OSError:
            return False
        finally:
            s.close()

    # -- changing what it announces ------------------------------------------------------

    def apply(self, config: str) -> bool:
        """Make the daemon run `config`: check it (`bird -p`), write it atomically, then
        `birdc configure` the live daemon or start one. Returns whether a daemon was
        started. BirdError on any refusal (retry=False: the configuration is at fault)."""
        _binary(self.bird), _binary(self.birdc)      # both there, before anything changes
        pid = self.pid()
        self._write(config)
        if pid is None:
            self._start()
            return True
        self.command("configure", f'"{self.config_path}"')
        return False

    def _write(self, config: str) -> None:
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        candidate = self.config_path + ".new"
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(config)
            f.flush()
            os.fsync(f.fileno())
        try:
            checked = subprocess.run([_binary(self.bird), "-p", "-c", candidate],
                                     stdin=subprocess.DEVNULL, capture_output=True,
                                     text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BirdError(f"bird -p did not finish within {self.timeout} s") from None
        if checked.returncode != 0:
            raise BirdError(f"BIRD rejects the configuration ({candidate}): "
                            f"{_one_line(checked.stderr or checked.stdout)}", retry=False)
        os.replace(candidate, self.config_path)

    def _start(self) -> None:
        if self._answers():
            raise BirdError(f"a BIRD that its pid file ({self.pid_path}) does not name "
                            f"answers on {self.socket_path}: stop it first", retry=False)
        bird = _binary(self.bird)
        for stale in (self.pid_path, self.socket_path):
            try:
                os.unlink(stale)
            except FileNotFoundError:
                pass
        with open(self.log_path, "wb") as logf:
            # a session of its own: no signal meant for the agent (Ctrl-C, a terminal
            # hang-up, the agent's process group) reaches it
            child = subprocess.Popen(
                [bird, "-f", "-c", self.config_path, "-s", self.socket_path,
                 "-P", self.pid_path],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=self.state_dir,
                start_new_session=True, close_fds=True)
        deadline = time.monotonic() + self.timeout
        while True:
            if child.poll() is not None:
                raise BirdError(f"bird exited at start (status {child.returncode}): "
                                f"{_one_line(self._log_tail()) or 'no message'}")
            if self._pid_file_names(child.pid) and self._answers():
                break       # both: a later pid() must find it, or a second one would start
            if time.monotonic() > deadline:
                child.kill()
                child.wait()
                raise BirdError(f"bird did not write {self.pid_path} and open "
                                f"{self.socket_path} within {self.timeout} s")
            time.sleep(0.01)
        self._child = child
        log.info("started bird (pid %d) in %s", child.pid, self.state_dir)

    def _pid_file_names(self, pid: int) -> bool:
        try:
            with open(self.pid_path) as f:
                return f.read().strip() == str(pid)
        except OSError:
            return False

    def _log_tail(self, size: int = 2000) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - size))
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def command(self, *words: str) -> str:
        """One birdc command; its answer without reply codes. BirdError when BIRD
        reports an error (a configuration error: retry=False) or does not answer."""
        argv = [_binary(self.birdc), "-v", "-s", self.socket_path, *words]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise BirdError(f"bird did not answer `{' '.join(words)}` on {self.socket_path} "
                            f"within {self.timeout} s (hung or stopped?)") from None
        lines, failures = [], []
        for line in done.stdout.splitlines():
            code, text = line[:4], line[5:]
            if code.isdigit():
                if code[0] in "89":
                    failures.append((code, text))
                if code != "0001":          # the greeting
                    lines.append(text)
            else:       # a continuation: the code's place is blank
                lines.append(line[5:] if line[:5] == "     " else line.lstrip(" "))
        if failures:
            code, text = failures[0]
            # 8002: configuration file error; the others are run-time refusals
            raise BirdError(f"birdc {' '.join(words)}: {text}", retry=code != "8002")
        if done.returncode != 0:
            raise BirdError(f"birdc {' '.join(words)}: "
                            f"{_one_line(done.stderr or done.stdout) or 'failed'}")
        return "\n".join(lines)

    # -- stopping -------------------------------------------------------------------------

    def stop(self, timeout: Optional[float] = None) -> None:
        """End the daemon: SIGTERM (BIRD closes its sessions with a Cease notification, so
        the peers drop its routes at once), SIGKILL if it is still there after `timeout`.
        Its pid file and socket are removed either way."""
        timeout = self.timeout if timeout is None else timeout
        pid = self.pid()
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() == pid and time.monotonic() < deadline:
                time.sleep(0.01)
            if self.pid() == pid:
                log.warning("bird (pid %d) ignored SIGTERM for %.1f s: killing it", pid,
                            timeout)
                self._signal(pid, signal.SIGKILL)
                while self.pid() == pid and time.monotonic() < deadline + timeout:
                    time.sleep(0.01)
            log.info("stopped bird (pid %d) of %s", pid, self.state_dir)
        for path in (self.pid_path, self.socket_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def _signal(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
            if _proc_state(pid) == "T":
                os.kill(pid, signal.SIGCONT)    # a stopped process acts on SIGTERM only then
        except ProcessLookupError:
            pass
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                raise


# -- the announcer ----------------------------------------------------------------------

class BgpAnnouncer(Announcer):
    """Announces VIP addresses through this node's BIRD. `last_error` holds the message of
    the last RETRY or GIVE_UP."""

    mode = "bgp"

    def __init__(self, settings: BgpSettings, speaker: Optional[BirdSpeaker] = None):
        self.settings = settings
        self.speaker = speaker or BirdSpeaker(settings.state_dir, settings.bird,
                                              settings.birdc)
        self.last_error: Optional[str] = None
        self._refused: Set[IPAddress] = set()       # wanted, but of a family no peer has
        self._vips: FrozenSet[IPAddress] = frozenset()
        self._current = False           # the daemon runs bird_config(settings, _vips)
        self._gave_up: Optional[FrozenSet[IPAddress]] = None
        try:
            running = self.speaker.running_config()
        except BirdError as exc:
            running = None
            self.last_error = str(exc)
        if running is not None:
            # adopt: what its file announces is announced. The first sync still
            # reconfigures once (a no-op for BIRD when nothing changed: no session or route
            # moves), since a configure that failed before the old agent died may have
            # left a file the daemon does not run.
            self._vips = announced_in(running)
            log.info("adopted bird (pid %s) of %s announcing %d addresses",
                     self.speaker.pid(), self.speaker.state_dir, len(self._vips))

    def announced(self) -> FrozenSet[IPAddress]:
        return self._vips

    def announce(self, vip: IPAddress) -> Result:
        vip = ipaddress.ip_address(vip)
        if vip.version not in self.settings.families:
            return self._refuse(vip)
        return self._apply(self._vips | {vip})[0]

    def withdraw(self, vip: IPAddress) -> Result:
        vip = ipaddress.ip_address(vip)
        self._refused.discard(vip)
        return self._apply(self._vips - {vip})[0]

    def sync(self, wanted: Iterable[IPAddress]) -> Dict[IPAddress, Result]:
        """One reconfiguration for the whole change. Also restarts a daemon that died (and
        then reports every address as touched). Cheap when nothing changed: no process is
        run, the daemon's liveness is read from /proc."""
        wanted_set = {ipaddress.ip_address(a) for a in wanted}
        out: Dict[IPAddress, Result] = {}
        fresh_refusals = {a for a in wanted_set
                          if a.version not in self.settings.families} - self._refused
        for a in sorted(fresh_refusals, key=_order):
            out[a] = self._refuse(a)
        self._refused &= wanted_set
        target = frozenset(a for a in wanted_set if a.version in self.settings.families)
        before = self._vips
        result, worked = self._apply(target)
        if not worked:      # in force already, or given up on before: nothing new to say
            touched: FrozenSet[IPAddress] = frozenset()
        elif before != target:
            touched = before ^ target
        else:               # the same set; a daemon restarted or reconfigured re-announced it
            touched = target
        for a in sorted(touched, key=_order):
            out[a] = result
        return out

    def close(self, withdraw: bool = True, terminate: bool = False) -> None:
        """With `withdraw`, take every route back (the sessions stay up); with
        `terminate`, also stop the daemon. Neither: leave it announcing (an agent that
        restarts, and adopts it)."""
        if withdraw:
            self._gave_up = None
            self._apply(frozenset())
        if terminate:
            self.speaker.stop()
            self._current = False

    def _refuse(self, vip: IPAddress) -> Result:
        self._refused.add(vip)
        self.last_error = (f"{vip}: no IPv{vip.version} BGP peer to announce it to "
                           f"(add a peer of that family)")
        log.warning("%s", self.last_error)
        return Result.GIVE_UP

    def _apply(self, vips: FrozenSet[IPAddress]) -> Tuple[Result, bool]:
        """(result, whether the daemon was asked: reconfigured or started). A set that
        was given up on is not tried again until the set changes."""
        vips = frozenset(vips)
        if vips == self._gave_up:
            return Result.GIVE_UP, False
        try:
            running = self.speaker.running()
            if vips == self._vips and self._current and running:
                return Result.OK, False
            if not vips and not running:
                self._vips = vips          # no daemon is needed to announce nothing
                return Result.OK, False
            self.speaker.apply(bird_config(self.settings, vips))
        except BirdError as exc:
            self._current = False
            self.last_error = str(exc)
            log.warning("bgp: %s", exc)
            if not exc.retry:
                self._gave_up = vips
                return Result.GIVE_UP, True
            return Result.RETRY, True
        except OSError as exc:          # the state directory cannot be written
            self._current = False
            self.last_error = f"{self.speaker.state_dir}: {exc.strerror or exc}"
            log.warning("bgp: %s", self.last_error)
            return Result.RETRY, True
        self._vips, self._current, self.last_error, self._gave_up = vips, True, None, None
        return Result.OK, True
