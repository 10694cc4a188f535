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
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from typing import Dict, Iterator, Mapping, Optional, Tuple, Union

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


@dataclasses.dataclass(frozen=True)
class Backend:
    """A backend of a VIP. `local`: this node (its packets are passed up, not tunnelled)."""

    address: IPAddress
    weight: int = 1
    state: str = "active"
    mac: Optional[str] = None
    local: bool = False

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

    @property
    def in_ring(self) -> bool:
        """Active with a positive weight: the backend owns ring slots."""
        return self.state == "active" and self.weight > 0


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
        for flag in ("flow_table", "announce"):
            if not isinstance(getattr(self, flag), bool):
                raise StateError(f"{where}: {flag} must be true or false")
        if isinstance(self.ring_size, bool) or not isinstance(self.ring_size, int):
            raise StateError(f"{where}: ring size must be an integer")
        if not (2 <= self.ring_size <= RING_SIZE_MAX and is_prime(self.ring_size)):
            raise StateError(f"{where}: ring size {self.ring_size} must be a prime between "
                             f"2 and {RING_SIZE_MAX} (e.g. {RING_SIZE_DEFAULT})")
        backends = tuple(b if isinstance(b, Backend) else Backend(**b) for b in self.backends)
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
    """Every VIP the datapath should serve, keyed by VipKey."""

    vips: Tuple[Vip, ...] = ()

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
        return DesiredState(tuple(v for v in self.vips if v.key != vip.key) + (vip,))

    def without_vip(self, key) -> "DesiredState":
        key = key if isinstance(key, VipKey) else VipKey.parse(key)
        if key not in self.by_key():
            raise StateError(f"no VIP {key}")
        return DesiredState(tuple(v for v in self.vips if v.key != key))

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


def vip_to_dict(v: Vip) -> dict:
    out = {"vip": str(v.key), "mode": v.mode, "flow_table": v.flow_table,
           "affinity": v.affinity, "announce": v.announce, "ring_size": v.ring_size,
           "backends": []}
    if v.source_ranges:
        out["source_ranges"] = [str(n) for n in v.source_ranges]
    for b in v.backends:
        d = {"address": str(b.address), "weight": b.weight, "state": b.state}
        if b.mac:
            d["mac"] = b.mac
        if b.local:
            d["local"] = True
        out["backends"].append(d)
    return out


def vip_from_dict(d: Mapping) -> Vip:
    backends = tuple(Backend(address=b["address"], weight=b.get("weight", 1),
                             state=b.get("state", "active"), mac=b.get("mac"),
                             local=b.get("local", False))
                     for b in d.get("backends") or ())
    return Vip(key=VipKey.parse(d["vip"]), backends=backends, mode=d.get("mode", "ipip"),
               flow_table=d.get("flow_table", True), affinity=d.get("affinity", "none"),
               announce=d.get("announce", False),
               ring_size=d.get("ring_size", RING_SIZE_DEFAULT),
               source_ranges=tuple(d.get("source_ranges") or ()))
