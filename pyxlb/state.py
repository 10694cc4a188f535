"""DesiredState: what the datapath should do, as plain data.

Every source of intent (the CLI, a YAML file, the Kubernetes agent) builds a DesiredState;
`Datapath.apply` is the only thing that turns one into BPF map contents. Nothing here
touches the kernel or Kubernetes: it is validated, compared and serialised in pure Python.

A VIP is written ``192.0.2.10:80/tcp`` or ``[2001:db8::10]:443/udp``; port 0 means every
port of the address (a "port-0 VIP": the datapath tries the exact port first).

Addresses that cannot be right (`address_fault`: unspecified, broadcast, multicast,
loopback, IPv4-mapped, scoped), a backend that is its VIP's own address and a backend MAC
that is not one host's (`mac_fault`) are refused when the Vip or Backend is made: this is
the one place, so the CLI, a state file and the Kubernetes agent refuse them alike. A
VipKey alone is not checked, so a key can still name a VIP to look up or delete.

Health checks (docs/config.md, "Health checks"): a Vip's `health` (a HealthSpec) says how
its backends are checked, a Backend's `health` overrides it for that backend, and a
Backend's `down` is the checker's verdict. A down backend is out of the ring; what can
be checked is checked here too (a tunnel check on the VIP's own port, of the VIP's
family, ...). Verdicts are not part of the file format: `carry_verdicts` gives a state
the verdicts of the state in force (what every apply but the checker's does).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from typing import Dict, FrozenSet, Iterable, Iterator, Mapping, Optional, Tuple, Union

from .errors import PyxlbError
from .maglev import DEFAULT_SIZE as RING_SIZE_DEFAULT, is_prime

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTOCOLS = {"tcp": 6, "udp": 17}
MODES = ("ipip", "l2", "local")
AFFINITIES = ("none", "client-ip")
BACKEND_STATES = ("active", "draining")
MAX_WEIGHT = 65535
RING_SIZE_MAX = 655373      # XLB_RING_SIZE_MAX in consts.h; checked by a test
HEALTH_TYPES = ("tcp", "http", "none")
HEALTH_VIAS = ("tunnel", "direct")
HEALTH_ON_FAIL = ("drain", "gone")
HEALTH_PATH_MAX = 96        # XLB_HEALTH_PATH_MAX in consts.h; checked by a test
HEALTH_INTERVAL = (0.1, 3600.0)     # seconds, the least and the most
HEALTH_COUNT_MAX = 100      # rise and fall
STATELESS = "stateless"     # the third value of a state file's flow_table


class StateError(PyxlbError, ValueError):
    """A desired state that cannot be applied; the message names the field and the fault."""


def _ip(value, what: str) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    try:
        return ipaddress.ip_address(str(value).strip())
    except ValueError:
        raise StateError(f"{what}: not an IPv4 or IPv6 address: {value!r}") from None


_BROADCAST4 = ipaddress.IPv4Address("255.255.255.255")


def address_fault(address: IPAddress) -> Optional[str]:
    """Why `address` can be neither a VIP nor a backend, as the end of a sentence ("is the
    unspecified address"), or None when it can be either: unspecified, limited broadcast,
    multicast, loopback, an IPv6 address with a zone, or an IPv4-mapped IPv6 address
    (which never appears on the wire; the IPv4 address is meant)."""
    if address.version == 6:
        if address.scope_id:
            return f"scoped (%{address.scope_id}): a VIP or backend needs an address " \
                   f"without a zone"
        mapped = address.ipv4_mapped
        if mapped is not None:
            return f"IPv4-mapped, an address that never appears on the wire: write {mapped}"
    if address.is_unspecified:
        return "the unspecified address"
    if address == _BROADCAST4:
        return "the broadcast address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_loopback:
        return "a loopback address"
    return None


def mac_fault(mac: bytes) -> Optional[str]:
    """Why a backend cannot have this MAC (6 bytes), or None: all zeros (what the maps
    store for "no MAC"), broadcast or multicast (not one host)."""
    if mac == bytes(6):
        return "all zeros (leave the MAC out to have it looked up)"
    if mac == b"\xff" * 6:
        return "the broadcast MAC"
    if mac[0] & 1:
        return "a multicast MAC (the low bit of its first octet is set)"
    return None


_VIP_RE = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<v4>[^:/\[\]]+)):(?P<port>[^/]*)/(?P<proto>.+)$")
_PORT_RE = re.compile(r"[0-9]{1,5}")        # ASCII digits: int() would take "８０", "8_0", "+80"


@dataclasses.dataclass(frozen=True, eq=False)
class VipKey:
    """What a VIP answers to: address, port (0: every port), protocol ("tcp"/"udp")."""

    address: IPAddress
    port: int
    protocol: str

    def __post_init__(self):
        object.__setattr__(self, "address", _ip(self.address, "VIP address"))
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise StateError(f"VIP {self.address}: port must be an integer, not {self.port!r}")
        if not 0 <= self.port <= 65535:
            raise StateError(f"VIP {self.address}: port {self.port} is outside 0-65535")
        proto = str(self.protocol).lower()
        if proto not in PROTOCOLS:
            raise StateError(f"VIP {self.address}:{self.port}: protocol must be tcp or udp, "
                             f"not {self.protocol!r}")
        object.__setattr__(self, "protocol", proto)
        # what sorting and hashing read, computed once: states of thousands of VIPs are
        # built, sorted and diffed on every change the agent sees
        order = (self.address.version, int(self.address), self.port, proto)
        object.__setattr__(self, "_order", order)
        object.__setattr__(self, "_hash", hash(order))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        if other.__class__ is not VipKey:
            return NotImplemented
        return self._order == other._order

    def __lt__(self, other: "VipKey") -> bool:
        return self._order < other._order

    @classmethod
    def parse(cls, text: str) -> "VipKey":
        """``"192.0.2.10:80/tcp"`` or ``"[2001:db8::10]:443/udp"``."""
        text = str(text).strip()
        if not text.startswith("[") and text.count(":") > 1:
            raise StateError(f"not a VIP: {text!r} (write an IPv6 VIP as [ADDR]:PORT/PROTO)")
        m = _VIP_RE.match(text)
        if not m:
            raise StateError(f"not a VIP: {text!r} (write ADDR:PORT/PROTO, e.g. "
                             f"192.0.2.10:80/tcp or [2001:db8::10]:443/tcp)")
        addr = m.group("v6") or m.group("v4")
        port = m.group("port")
        if not _PORT_RE.fullmatch(port):
            if port.isascii() and port.isdigit():
                raise StateError(f"VIP {addr}: port {port} is outside 0-65535")
            raise StateError(f"not a VIP: {text!r} (port {port!r} is not a number of "
                             f"ASCII digits 0-65535)")
        address = _ip(addr, "VIP address")
        if m.group("v6") and address.version == 4:
            raise StateError(f"not a VIP: {text!r} (brackets are for an IPv6 address: write "
                             f"{address}:{port}/...)")
        return cls(address, int(port), m.group("proto"))

    @property
    def family(self) -> int:
        return self.address.version

    def __str__(self) -> str:
        addr = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{addr}:{self.port}/{self.protocol}"


_EXPECT_RE = re.compile(r"([0-9]{3})(?:-([0-9]{3}))?")


def _seconds(value, what: str, where: str) -> float:
    """A duration in seconds, to the millisecond (what xlb_health_specs keeps)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise StateError(f"{where}: {what} must be a number of seconds, not {value!r}")
    return round(float(value) * 1000) / 1000


@dataclasses.dataclass(frozen=True)
class HealthSpec:
    """How the backends of a VIP are health-checked (docs/config.md, "Health checks").

    type: "tcp" (a connection is accepted), "http" (a GET of `path` answers a status in
    `expect`) or "none" (not checked); port: where (None: the VIP's port); interval and
    timeout in seconds (kept to the millisecond); rise / fall: passes / failures in a row
    that bring a backend up / put it down; via: "tunnel" (to the VIP address, encapsulated
    to the backend as clients' packets are) or "direct" (to the backend's own address);
    on_fail: "drain" (out of the ring, pinned flows go on) or "gone" (its flows of the VIP
    are forgotten too). Checked when made: every fault is one StateError line."""

    type: str = "tcp"
    port: Optional[int] = None
    path: str = "/"
    expect: str = "200-399"
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    via: str = "tunnel"
    on_fail: str = "drain"

    def __post_init__(self):
        where = "health"
        if self.type not in HEALTH_TYPES:
            raise StateError(f"{where}: type must be one of {', '.join(HEALTH_TYPES)}, "
                             f"not {self.type!r}")
        if self.port is not None:
            if isinstance(self.port, bool) or not isinstance(self.port, int) \
                    or not 1 <= self.port <= 65535:
                raise StateError(f"{where}: port must be an integer 1-65535 (or left out "
                                 f"for the VIP's port), not {self.port!r}")
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise StateError(f"{where}: path must start with '/', not {self.path!r}")
        if len(self.path) > HEALTH_PATH_MAX or not all(0x21 <= ord(c) <= 0x7e
                                                        for c in self.path):
            raise StateError(f"{where}: path must be at most {HEALTH_PATH_MAX} printable "
                             f"ASCII characters without spaces, not {self.path!r}")
        expect = str(self.expect) if isinstance(self.expect, int) \
            and not isinstance(self.expect, bool) else self.expect
        m = _EXPECT_RE.fullmatch(expect) if isinstance(expect, str) else None
        lo, hi = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
        if not (m and 100 <= lo <= hi <= 599):
            raise StateError(f"{where}: expect must be an HTTP status 100-599 or a range "
                             f"of them (200, 200-299), not {self.expect!r}")
        object.__setattr__(self, "expect", f"{lo}" if lo == hi else f"{lo}-{hi}")
        interval = _seconds(self.interval, "interval", where)
        low, high = HEALTH_INTERVAL
        if not low <= interval <= high:
            raise StateError(f"{where}: interval {self.interval} is outside {low:g}-{high:g} "
                             f"seconds")
        timeout = _seconds(self.timeout, "timeout", where)
        if not 0 < timeout <= interval:
            raise StateError(f"{where}: timeout {self.timeout} must be more than 0 and at "
                             f"most the interval ({interval:g} s)")
        object.__setattr__(self, "interval", interval)
        object.__setattr__(self, "timeout", timeout)
        for name in ("rise", "fall"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not 1 <= value <= HEALTH_COUNT_MAX:
                raise StateError(f"{where}: {name} must be an integer 1-{HEALTH_COUNT_MAX}, "
                                 f"not {value!r}")
        if self.via not in HEALTH_VIAS:
            raise StateError(f"{where}: via must be one of {', '.join(HEALTH_VIAS)}, "
                             f"not {self.via!r}")
        if self.on_fail not in HEALTH_ON_FAIL:
            raise StateError(f"{where}: on_fail must be one of {', '.join(HEALTH_ON_FAIL)}, "
                             f"not {self.on_fail!r}")

    @property
    def checked(self) -> bool:
        """Whether the backends are checked at all (type is not "none")."""
        return self.type != "none"

    @property
    def expect_range(self) -> Tuple[int, int]:
        """The statuses that pass, (lowest, highest)."""
        lo, _, hi = self.expect.partition("-")
        return int(lo), int(hi or lo)

    def port_for(self, vip_key: "VipKey") -> int:
        """The port checks go to: `port`, else the VIP's."""
        return self.port if self.port is not None else vip_key.port

    def to_dict(self, base: Optional["HealthSpec"] = None) -> dict:
        """The plain-data form: `type` and the fields that differ from their defaults; with
        `base`, only the fields that differ from base's (a backend's override of its VIP's
        spec, as a state file writes it). from_dict(d, base) gives this spec back."""
        ref = base if base is not None else _HEALTH_DEFAULT
        out = {} if base is not None else {"type": self.type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != getattr(ref, f.name):
                out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping, base: Optional["HealthSpec"] = None) -> "HealthSpec":
        """A spec from plain data: the fields given, the others from `base` (the VIP's spec,
        for a backend's override) or the defaults. An unknown field is a StateError."""
        if not isinstance(data, Mapping):
            raise StateError(f"health must be a mapping of fields, not {data!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise StateError(f"health: unknown field {unknown[0]!r} (one of "
                             f"{', '.join(sorted(names))})")
        return dataclasses.replace(base if base is not None else _HEALTH_DEFAULT, **data)


_HEALTH_DEFAULT = HealthSpec()


@dataclasses.dataclass(frozen=True)
class Backend:
    """A backend of a VIP. `local`: this node (its packets are passed up, not tunnelled).
    `health`: this backend's own checks, a whole spec (None: its VIP's). `down`: the
    checker's verdict, "failed its health check": a down backend whose checks are on
    (Vip.health_for) is out of the ring like a draining one; a Vip turns the `down` of an
    unchecked backend to False."""

    address: IPAddress
    weight: int = 1
    state: str = "active"
    mac: Optional[str] = None
    local: bool = False
    health: Optional[HealthSpec] = None
    down: bool = False

    def __post_init__(self):
        object.__setattr__(self, "address", _ip(self.address, "backend address"))
        if isinstance(self.weight, bool) or not isinstance(self.weight, int):
            raise StateError(f"backend {self.address}: weight must be an integer, "
                             f"not {self.weight!r}")
        if not 0 <= self.weight <= MAX_WEIGHT:
            raise StateError(f"backend {self.address}: weight {self.weight} is outside "
                             f"0-{MAX_WEIGHT}")
        if self.state not in BACKEND_STATES:
            raise StateError(f"backend {self.address}: state must be one of "
                             f"{', '.join(BACKEND_STATES)}, not {self.state!r}")
        if self.mac is not None:
            from .addr import format_mac, parse_mac
            try:
                raw = parse_mac(self.mac)
            except (ValueError, TypeError) as exc:
                raise StateError(f"backend {self.address}: {exc}") from None
            object.__setattr__(self, "mac", format_mac(raw))
            fault = mac_fault(raw)
            if fault is not None:
                raise StateError(f"backend {self.address}: MAC {self.mac} is {fault}")
        if self.health is not None and not isinstance(self.health, HealthSpec):
            try:
                object.__setattr__(self, "health", HealthSpec.from_dict(self.health))
            except StateError as exc:
                raise StateError(f"backend {self.address}: {exc}") from None
        if not isinstance(self.down, bool):
            raise StateError(f"backend {self.address}: down must be true or false")

    @property
    def in_ring(self) -> bool:
        """Active with a positive weight, and not down: the backend owns ring slots."""
        return self.state == "active" and self.weight > 0 and not self.down


@dataclasses.dataclass(frozen=True)
class Vip:
    """A VIP with its forwarding mode, flags and backends."""

    key: VipKey
    backends: Tuple[Backend, ...] = ()
    mode: str = "ipip"
    flow_table: bool = True
    affinity: str = "none"
    announce: bool = False
    ring_size: int = RING_SIZE_DEFAULT
    # client prefixes allowed to reach the VIP (Kubernetes' loadBalancerSourceRanges);
    # empty: every client. Only prefixes of the VIP's own family.
    source_ranges: Tuple[IPNetwork, ...] = ()
    # how its backends are health-checked (None: not checked)
    health: Optional[HealthSpec] = None
    # stateless mode (docs/config.md, "Stateless mode"): a TCP VIP in ipip mode without a
    # flow table whose ring slots remember their previous owner for a while after a
    # change; a backend without the connection passes its packets there. Implies
    # flow_table False (a state file writes both as `flow_table: stateless`).
    stateless: bool = False

    def __post_init__(self):
        if not isinstance(self.key, VipKey):
            object.__setattr__(self, "key", VipKey.parse(self.key))
        where = f"VIP {self.key}"
        fault = address_fault(self.key.address)
        if fault is not None:
            raise StateError(f"{where}: {self.key.address} is {fault}; a VIP must be a "
                             f"unicast address that clients can reach")
        if self.mode not in MODES:
            raise StateError(f"{where}: mode must be one of {', '.join(MODES)}, "
                             f"not {self.mode!r}")
        if self.affinity not in AFFINITIES:
            raise StateError(f"{where}: affinity must be one of {', '.join(AFFINITIES)}, "
                             f"not {self.affinity!r}")
        for flag in ("flow_table", "announce", "stateless"):
            if not isinstance(getattr(self, flag), bool):
                raise StateError(f"{where}: {flag} must be true or false")
        if self.stateless:
            if self.key.protocol != "tcp":
                raise StateError(f"{where}: stateless mode is for TCP VIPs only: a backend "
                                 f"cannot tell a UDP flow it serves from a new one, so a "
                                 f"UDP VIP keeps its flow table (or has none: flow_table "
                                 f"false)")
            if self.mode != "ipip":
                raise StateError(f"{where}: stateless mode needs mode ipip: the previous "
                                 f"owner of a ring slot rides in the tunnel's outer header, "
                                 f"which {self.mode} mode does not have")
            object.__setattr__(self, "flow_table", False)
        if isinstance(self.ring_size, bool) or not isinstance(self.ring_size, int):
            raise StateError(f"{where}: ring size must be an integer")
        if not (2 <= self.ring_size <= RING_SIZE_MAX and is_prime(self.ring_size)):
            raise StateError(f"{where}: ring size {self.ring_size} must be a prime between "
                             f"2 and {RING_SIZE_MAX} (e.g. {RING_SIZE_DEFAULT})")
        backends = tuple(b if isinstance(b, Backend) else Backend(**b) for b in self.backends)
        if self.health is not None and not isinstance(self.health, HealthSpec):
            try:
                object.__setattr__(self, "health", HealthSpec.from_dict(self.health))
            except StateError as exc:
                raise StateError(f"{where}: {exc}") from None
        if self.health is not None or any(b.health is not None or b.down for b in backends):
            backends = self._checked(backends)
        seen = set()
        for b in backends:
            if b.address in seen:
                raise StateError(f"{where}: backend {b.address} is listed twice")
            seen.add(b.address)
            fault = address_fault(b.address)
            if fault is not None:
                raise StateError(f"{where}: backend {b.address} is {fault}")
            if b.address == self.key.address:
                raise StateError(f"{where}: backend {b.address} is the VIP's own address "
                                 f"(its packets would come back here)")
            if self.mode == "l2" and b.address.version != self.key.family:
                raise StateError(f"{where}: L2 mode needs IPv{self.key.family} backends, "
                                 f"{b.address} is IPv{b.address.version}")
            if self.mode == "ipip" and self.key.family == 6 and b.address.version == 4:
                raise StateError(f"{where}: an IPv6 VIP cannot be tunnelled to the IPv4 "
                                 f"backend {b.address} (no IPv6-in-IPv4)")
        if self.mode == "local" and backends:
            raise StateError(f"{where}: local mode serves the VIP on this node and takes "
                             f"no backends")
        if sum(1 for b in backends if b.in_ring) > self.ring_size:
            raise StateError(f"{where}: more active backends than ring slots "
                             f"({self.ring_size})")
        # a canonical order, so that equal states compare equal
        object.__setattr__(self, "backends", tuple(sorted(backends, key=_addr_order)))
        object.__setattr__(self, "source_ranges", _source_ranges(self.source_ranges, self.key))

    def _checked(self, backends: Tuple[Backend, ...]) -> Tuple[Backend, ...]:
        """The backends with their health made canonical (an override equal to the VIP's
        spec is none; an unchecked backend is not down), every spec checked against the
        VIP: what a schema cannot see."""
        where = f"VIP {self.key}"
        if self.mode == "local" and self.health is not None and self.health.checked:
            raise StateError(f"{where}: a local-mode VIP is served by this node and cannot "
                             f"have health checks")
        if self.health is not None:
            self._check_spec(self.health, None)
        out = []
        for b in backends:
            if b.health is not None and b.health == self.health:
                b = dataclasses.replace(b, health=None)
            spec = b.health if b.health is not None else self.health
            checked = spec is not None and spec.checked
            if b.down and not checked:
                b = dataclasses.replace(b, down=False)
            if checked:
                self._check_spec(spec, b)
            out.append(b)
        return tuple(out)

    def _check_spec(self, spec: HealthSpec, b: Optional[Backend]) -> None:
        where = f"VIP {self.key}" + (f": backend {b.address}" if b is not None else "")
        if not spec.checked:
            return
        if spec.port is None and self.key.port == 0:
            raise StateError(f"{where}: health checks of a port-0 VIP need a port "
                             f"(health port)")
        if spec.via != "tunnel":
            return
        if spec.port is not None and self.key.port and spec.port != self.key.port:
            raise StateError(f"{where}: a health check through the tunnel goes to the VIP, "
                             f"so to its port {self.key.port}, not {spec.port} (the "
                             f"backend accepts only its VIPs' packets): drop the port or "
                             f"check with via: direct")
        if b is not None and b.address.version != self.key.family:
            raise StateError(f"{where}: a health check through the tunnel cannot go from "
                             f"an IPv{self.key.family} VIP to an IPv{b.address.version} "
                             f"backend: check it with via: direct")

    def health_for(self, backend: Backend) -> Optional[HealthSpec]:
        """The checks `backend` (one of this VIP's) gets: its own spec, else the VIP's;
        None when it is not checked (no spec, or type none)."""
        spec = backend.health if backend.health is not None else self.health
        return spec if spec is not None and spec.checked else None

    def keeps_flows(self, backend: Backend) -> bool:
        """Whether flows pinned to `backend` go on: not when it is down and its checks say
        on_fail: gone (apply then forgets them)."""
        if not backend.down:
            return True
        spec = self.health_for(backend)
        return spec is None or spec.on_fail != "gone"

    def backend(self, address) -> Optional[Backend]:
        address = _ip(address, "backend address")
        return next((b for b in self.backends if b.address == address), None)

    def ring_members(self) -> Tuple[Tuple[str, int], ...]:
        """(address, weight) of the backends in the ring: what the Maglev table depends on.
        (Computed once per Vip: a Vip never changes.)"""
        cached = self.__dict__.get("_ring_members")
        if cached is None:
            cached = tuple((str(b.address), b.weight) for b in self.backends if b.in_ring)
            self.__dict__["_ring_members"] = cached
        return cached

    def replace(self, **changes) -> "Vip":
        return dataclasses.replace(self, **changes)


def _source_ranges(ranges, key: VipKey) -> Tuple[IPNetwork, ...]:
    if isinstance(ranges, (str, bytes)):
        raise StateError(f"VIP {key}: source ranges must be a list of prefixes")
    out = set()
    for r in ranges:
        try:
            net = ipaddress.ip_network(str(r).strip(), strict=False)
        except ValueError:
            raise StateError(f"VIP {key}: not a source prefix: {r!r} "
                             f"(write e.g. 192.0.2.0/24 or 2001:db8::/32)") from None
        if net.version != key.family:
            raise StateError(f"VIP {key}: source range {net} is IPv{net.version}, the VIP "
                             f"IPv{key.family}")
        out.add(net)
    return tuple(sorted(out, key=lambda n: (n.network_address, n.prefixlen)))


def _addr_order(b: Backend):
    return (b.address.version, b.address)


@dataclasses.dataclass(frozen=True)
class DesiredState:
    """Every VIP the datapath should serve, keyed by VipKey; and the extra chain peers.

    `peers`: nodes this node's decapsulation may hand a stateless VIP's connection to
    (xlb_chain_peers), besides the backends of this state's stateless VIPs, which are
    always peers. The Kubernetes agent puts every node there: a node that left a Service's
    backends still owns connections its ring slots moved away from, and another agent's
    balancer may name it (docs/kubernetes.md, "Stateless Services"). Not part of the file
    format (like verdicts), and not read back from the maps: a state read back has none.
    Written only by an apply with peers="set" (Datapath.apply: the agent's); every other
    apply keeps the extras the maps hold."""

    vips: Tuple[Vip, ...] = ()
    peers: FrozenSet[IPAddress] = frozenset()

    def __post_init__(self):
        vips = tuple(self.vips)
        seen = set()
        for v in vips:
            if not isinstance(v, Vip):
                raise StateError(f"not a Vip: {v!r}")
            if v.key in seen:
                raise StateError(f"VIP {v.key} is defined twice")
            seen.add(v.key)
        object.__setattr__(self, "vips", tuple(sorted(vips, key=lambda v: key_order(v.key))))
        if isinstance(self.peers, (str, bytes)):
            raise StateError("peers must be a set of addresses, not one string")
        peers = frozenset(_ip(a, "chain peer") for a in self.peers)
        for a in peers:
            fault = address_fault(a)
            if fault is not None:
                raise StateError(f"chain peer {a} is {fault}")
        object.__setattr__(self, "peers", peers)

    def with_vips(self, vips: Iterable[Vip]) -> "DesiredState":
        """A state of `vips` with this state's peers."""
        return DesiredState(tuple(vips), self.peers)

    def with_peers(self, peers: Iterable) -> "DesiredState":
        """This state's VIPs with `peers` as its extra chain peers."""
        return DesiredState(self.vips, frozenset(peers))

    def __iter__(self) -> Iterator[Vip]:
        return iter(self.vips)

    def __len__(self) -> int:
        return len(self.vips)

    def by_key(self) -> Dict[VipKey, Vip]:
        """{key: Vip} (computed once per state: a state never changes; do not modify it)."""
        cached = self.__dict__.get("_by_key")
        if cached is None:
            cached = {v.key: v for v in self.vips}
            self.__dict__["_by_key"] = cached
        return cached

    def vip(self, key) -> Optional[Vip]:
        key = key if isinstance(key, VipKey) else VipKey.parse(key)
        return self.by_key().get(key)

    def with_vip(self, vip: Vip) -> "DesiredState":
        """This state with `vip` added or replaced."""
        return self.with_vips(tuple(v for v in self.vips if v.key != vip.key) + (vip,))

    def with_verdicts(self, verdicts: Mapping[Tuple[VipKey, IPAddress], bool]) -> "DesiredState":
        """This state with the `down` of backends set: {(VIP key, backend address): down}.
        A pair this state does not have is skipped (it went meanwhile); a verdict on an
        unchecked backend has no effect (a Vip makes it False)."""
        by_vip: Dict[VipKey, Dict[IPAddress, bool]] = {}
        for (key, address), down in verdicts.items():
            by_vip.setdefault(key, {})[_ip(address, "backend address")] = bool(down)
        vips = []
        for v in self.vips:
            want = by_vip.get(v.key)
            if want:
                flips = {b.address for b in v.backends if b.address in want
                         and want[b.address] != b.down and v.health_for(b) is not None}
                if flips:
                    v = v.replace(backends=tuple(
                        dataclasses.replace(b, down=want[b.address]) if b.address in flips
                        else b for b in v.backends))
            vips.append(v)
        return self.with_vips(vips)

    def without_vip(self, key) -> "DesiredState":
        key = key if isinstance(key, VipKey) else VipKey.parse(key)
        if key not in self.by_key():
            raise StateError(f"no VIP {key}")
        return self.with_vips(v for v in self.vips if v.key != key)

    # -- plain data (YAML, JSON) ----------------------------------------------------------

    def to_dict(self) -> dict:
        return {"vips": [vip_to_dict(v) for v in self.vips]}

    @classmethod
    def from_dict(cls, data: Mapping) -> "DesiredState":
        """From the plain-data form (already schema-checked by pyxlb.config)."""
        return cls(tuple(vip_from_dict(v) for v in data.get("vips") or ()))


def key_order(key: VipKey):
    """The order VIPs are listed in: IPv4 first, then by address, port, protocol."""
    return key._order


def carry_verdicts(old: DesiredState, new: DesiredState) -> DesiredState:
    """`new` with the `down` of each backend taken from `old` (what the maps hold): a
    backend that `old` has for the same VIP, checked there and checked in `new`, keeps its
    verdict; any other starts not down. What every apply but the checker's does: a state
    from a file or the CLI says nothing of verdicts. VIPs without checks are kept as they
    are (the same objects)."""
    old_by_key = old.by_key()
    vips = []
    changed = False
    for v in new.vips:
        if v.health is not None or any(b.health is not None or b.down for b in v.backends):
            before = old_by_key.get(v.key)
            was = {} if before is None else {b.address: before.health_for(b) is not None
                                             and b.down for b in before.backends}
            downs = [was.get(b.address, False) and v.health_for(b) is not None
                     for b in v.backends]
            if any(d != b.down for d, b in zip(downs, v.backends)):
                v = v.replace(backends=tuple(dataclasses.replace(b, down=d) if d != b.down
                                             else b for d, b in zip(downs, v.backends)))
                changed = True
        vips.append(v)
    return new.with_vips(vips) if changed else new


def vip_to_dict(v: Vip) -> dict:
    """A VIP as plain data (what `vip list --json` prints and a state file holds). A
    backend's `down` is a verdict of the checker, not part of the format: left out."""
    out = {"vip": str(v.key), "mode": v.mode,
           "flow_table": STATELESS if v.stateless else v.flow_table,
           "affinity": v.affinity, "announce": v.announce, "ring_size": v.ring_size,
           "backends": []}
    if v.source_ranges:
        out["source_ranges"] = [str(n) for n in v.source_ranges]
    if v.health is not None:
        out["health"] = v.health.to_dict()
    for b in v.backends:
        d = {"address": str(b.address), "weight": b.weight, "state": b.state}
        if b.mac:
            d["mac"] = b.mac
        if b.local:
            d["local"] = True
        if b.health is not None:
            d["health"] = b.health.to_dict(v.health)
        out["backends"].append(d)
    return out


def vip_from_dict(d: Mapping) -> Vip:
    """A VIP from plain data (already schema-checked: pyxlb.config). A backend's `health`
    gives the fields it changes of its VIP's; with no VIP spec, it must give `type`."""
    key = VipKey.parse(d["vip"])
    health = None
    if d.get("health") is not None:
        try:
            health = HealthSpec.from_dict(d["health"])
        except StateError as exc:
            raise StateError(f"VIP {key}: {exc}") from None
    backends = []
    for b in d.get("backends") or ():
        if isinstance(b, str):
            backends.append(Backend(b))
            continue
        own = None
        if b.get("health") is not None:
            where = f"VIP {key}: backend {b['address']}"
            if health is None and "type" not in b["health"]:
                raise StateError(f"{where}: health: the VIP has no health checks, so the "
                                 f"backend's must say its type")
            try:
                own = HealthSpec.from_dict(b["health"], health)
            except StateError as exc:
                raise StateError(f"{where}: {exc}") from None
        backends.append(Backend(address=b["address"], weight=b.get("weight", 1),
                                state=b.get("state", "active"), mac=b.get("mac"),
                                local=b.get("local", False), health=own))
    flow_table = d.get("flow_table", True)
    stateless = flow_table == STATELESS
    if not stateless and not isinstance(flow_table, bool):
        raise StateError(f"VIP {key}: flow_table must be true, false or {STATELESS}, not "
                         f"{flow_table!r}")
    return Vip(key=key, backends=tuple(backends), mode=d.get("mode", "ipip"),
               flow_table=flow_table is True, stateless=stateless,
               affinity=d.get("affinity", "none"),
               announce=d.get("announce", False),
               ring_size=d.get("ring_size", RING_SIZE_DEFAULT),
               source_ranges=tuple(d.get("source_ranges") or ()), health=health)
