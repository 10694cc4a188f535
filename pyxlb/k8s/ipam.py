"""The IP allocator behind the IP-allocation controller: which external IP a Service gets.

Plain data in, plain data out: no Kubernetes client and no kernel (MetalLB keeps its
allocator free of Kubernetes types for the same reason), so every rule is tested fast and
exhaustively. The controller turns IPPool objects into `Pool`s (`Pool.from_object`) and
each LoadBalancer Service into a `Request`, calls `Allocator.assign`, and writes what comes
back into ``status.loadBalancer.ingress``; an `AllocationError` becomes an Event whose
reason is ``error.reason``.

The allocator's memory is only a cache of the Service statuses: at start and on Lease
handover the controller calls `Allocator.restore` for each Service's current ingress IPs,
oldest Service first, so nothing is leaked or handed out twice across restarts.

Pools are addressed by integers internally: an IPv6 /64 has 2**64 addresses, and the
allocator never iterates or materialises a pool, only the (small) set of addresses in use.
docs/ipam.md is the user-facing description of every rule here.
"""

from __future__ import annotations

import bisect
import dataclasses
import ipaddress
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Set, Tuple, Union

from ..errors import PyxlbError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Span = Tuple[int, int]                      # an inclusive range of addresses, as integers

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
_ADDRESS_TYPES = {4: ipaddress.IPv4Address, 6: ipaddress.IPv6Address}


class PoolError(PyxlbError, ValueError):
    """An IPPool that cannot be used; the message names the pool and the bad field."""


class AllocationError(PyxlbError):
    """A Service that cannot get (or keep) the addresses it asks for.

    ``reason`` is a short CamelCase word the controller uses as the Event reason;
    the message names the Service and says what to change.
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --- pools -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Selector:
    """A Kubernetes LabelSelector: every matchLabels pair and every expression must hold.

    An empty selector matches every Service, as in Kubernetes.
    """

    match_labels: Tuple[Tuple[str, str], ...] = ()
    match_expressions: Tuple[Tuple[str, str, FrozenSet[str]], ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for key, op, values in self.match_expressions:
            present = key in labels
            if op == "In":
                ok = present and labels[key] in values
            elif op == "NotIn":
                ok = not present or labels[key] not in values
            elif op == "Exists":
                ok = present
            else:                                               # DoesNotExist
                ok = not present
            if not ok:
                return False
        return True

    @classmethod
    def from_object(cls, obj, where: str) -> "Selector":
        """Parse a LabelSelector dict; ``where`` prefixes every error ("IPPool 'x': spec....")."""
        field = "spec.serviceSelector"
        if not isinstance(obj, Mapping):
            raise PoolError(f"{where}: {field} must be a mapping, not {type(obj).__name__}")
        labels = obj.get("matchLabels") or {}
        if not isinstance(labels, Mapping):
            raise PoolError(f"{where}: {field}.matchLabels must be a mapping")
        pairs = []
        for key, value in labels.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise PoolError(f"{where}: {field}.matchLabels {key!r}: {value!r} "
                                f"must map strings to strings")
            pairs.append((key, value))
        exprs = obj.get("matchExpressions") or []
        if not isinstance(exprs, list):
            raise PoolError(f"{where}: {field}.matchExpressions must be a list")
        parsed = []
        for i, expr in enumerate(exprs):
            at = f"{where}: {field}.matchExpressions[{i}]"
            if not isinstance(expr, Mapping):
                raise PoolError(f"{at} must be a mapping")
            key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
            if not isinstance(key, str) or not key:
                raise PoolError(f"{at}.key must be a non-empty string")
            if op not in OPERATORS:
                raise PoolError(f"{at}.operator {op!r} is not one of {', '.join(OPERATORS)}")
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise PoolError(f"{at}.values must be a list of strings")
            if op in ("In", "NotIn") and not values:
                raise PoolError(f"{at}: operator {op} needs at least one value")
            if op in ("Exists", "DoesNotExist") and values:
                raise PoolError(f"{at}: operator {op} takes no values")
            parsed.append((key, op, frozenset(values)))
        return cls(tuple(sorted(pairs)), tuple(parsed))


def _parse_entry(text, where: str) -> Tuple[IPAddress, IPAddress]:
    """``"192.0.2.0/28"`` or ``"198.51.100.10-198.51.100.20"`` -> (first, last)."""
    if not isinstance(text, str):
        raise PoolError(f"{where}: {text!r} is not a string")
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        try:
            first = ipaddress.ip_address(first_text.strip())
            last = ipaddress.ip_address(last_text.strip())
        except ValueError:
            raise PoolError(f"{where}: {text!r} is not a range of two addresses "
                            f"(\"first-last\")") from None
        if first.version != last.version:
            raise PoolError(f"{where}: {text!r} mixes IPv4 and IPv6")
        if first > last:
            raise PoolError(f"{where}: {text!r} has its first address after its last")
        return first, last
    try:
        net = ipaddress.ip_network(text.strip(), strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text.strip(), strict=False)
        except ValueError:
            raise PoolError(f"{where}: {text!r} is not a CIDR or a first-last range") from None
        # host bits set: more likely a typo than a wish, so say what it would have meant
        raise PoolError(f"{where}: {text!r} has host bits set (the network is {loose})") \
            from None
    return net.network_address, net.broadcast_address


def _merge(spans: Iterable[Span]) -> List[Span]:
    """Sorted, non-overlapping, non-adjacent spans covering the same addresses."""
    out: List[Span] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _subtract(spans: List[Span], taken: List[Span]) -> List[Span]:
    """``spans`` minus ``taken`` (both merged): what is left, merged."""
    out: List[Span] = []
    for lo, hi in spans:
        for tlo, thi in taken:
            if thi < lo or tlo > hi:
                continue
            if tlo > lo:
                out.append((lo, tlo - 1))
            lo = thi + 1
            if lo > hi:
                break
        if lo <= hi:
            out.append((lo, hi))
    return out


def _intersect(a: List[Span], b: List[Span]) -> List[Span]:
    out: List[Span] = []
    for alo, ahi in a:
        for blo, bhi in b:
            lo, hi = max(alo, blo), min(ahi, bhi)
            if lo <= hi:
                out.append((lo, hi))
    return _merge(out)


def _is_buggy(n: int) -> bool:
    """An IPv4 address ending in .0 or .255, which some old clients and routers mishandle."""
    return n & 0xFF in (0, 0xFF)


def _count_buggy(lo: int, hi: int) -> int:
    """How many IPv4 addresses in [lo, hi] end in .0 or .255, without iterating."""
    return sum((hi - r) // 256 - (lo - 1 - r) // 256 for r in (0, 255))


def _addr(version: int, n: int) -> IPAddress:
    return _ADDRESS_TYPES[version](n)


def _as_address(value) -> IPAddress:
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return value
    return ipaddress.ip_address(value)


def _span_text(version: int, lo: int, hi: int) -> str:
    return str(_addr(version, lo)) if lo == hi else f"{_addr(version, lo)}-{_addr(version, hi)}"


@dataclasses.dataclass(frozen=True)
class Pool:
    """One IPPool: the addresses it gives out and to whom.

    ``ranges`` holds one inclusive (first, last) pair per spec.addresses entry, as written;
    ``selector`` None means every Service.
    """

    name: str
    ranges: Tuple[Tuple[IPAddress, IPAddress], ...]
    auto_assign: bool = True
    avoid_buggy_ips: bool = False
    selector: Optional[Selector] = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise PoolError(f"IPPool {self.name!r}: the name must be a non-empty string")
        where = f"IPPool {self.name!r}: spec.addresses"
        ranges = tuple(self.ranges)
        if not ranges:
            raise PoolError(f"{where} is empty: a pool needs at least one CIDR or range")
        for first, last in ranges:
            if first.version != last.version:
                raise PoolError(f"{where}: {first}-{last} mixes IPv4 and IPv6")
            if first > last:
                raise PoolError(f"{where}: {first}-{last} has its first address after its last")
        object.__setattr__(self, "ranges", ranges)

    @classmethod
    def parse(cls, name: str, addresses: Iterable[str], *, auto_assign: bool = True,
              avoid_buggy_ips: bool = False, selector: Optional[Selector] = None) -> "Pool":
        """A pool from spec.addresses strings (CIDRs, single addresses, "first-last")."""
        if isinstance(addresses, str) or not isinstance(addresses, Iterable):
            raise PoolError(f"IPPool {name!r}: spec.addresses must be a list of strings")
        ranges = tuple(_parse_entry(text, f"IPPool {name!r}: spec.addresses[{i}]")
                       for i, text in enumerate(addresses))
        return cls(name, ranges, auto_assign, avoid_buggy_ips, selector)

    @classmethod
    def from_object(cls, obj) -> "Pool":
        """Parse an IPPool (pyxlb.io/v1alpha1) as the API server returns it."""
        if not isinstance(obj, Mapping):
            raise PoolError(f"an IPPool must be a mapping, not {type(obj).__name__}")
        name = (obj.get("metadata") or {}).get("name")
        if not isinstance(name, str) or not name:
            raise PoolError("IPPool without metadata.name")
        where = f"IPPool {name!r}"
        spec = obj.get("spec")
        if not isinstance(spec, Mapping):
            raise PoolError(f"{where}: spec is missing or not a mapping")
        addresses = spec.get("addresses")
        if addresses is None:
            raise PoolError(f"{where}: spec.addresses is required")
        if not isinstance(addresses, list):
            raise PoolError(f"{where}: spec.addresses must be a list of strings")
        flags = {}
        for field, default in (("autoAssign", True), ("avoidBuggyIPs", False)):
            value = spec.get(field, default)
            if not isinstance(value, bool):
                raise PoolError(f"{where}: spec.{field} must be true or false, not {value!r}")
            flags[field] = value
        selector = None
        if spec.get("serviceSelector") is not None:
            selector = Selector.from_object(spec["serviceSelector"], where)
        return cls.parse(name, addresses, auto_assign=flags["autoAssign"],
                         avoid_buggy_ips=flags["avoidBuggyIPs"], selector=selector)

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether a Service with these labels may use this pool (autoAssign aside)."""
        return self.selector is None or self.selector.matches(labels)

    def spans(self, version: int) -> List[Span]:
        """The pool's addresses of one family as merged integer spans."""
        return _merge((int(f), int(l)) for f, l in self.ranges if f.version == version)


def check_pools(pools: Iterable[Pool]) -> List[str]:
    """One line per pair of pools that share addresses (the first pool by name keeps them)."""
    ordered = sorted(pools, key=lambda p: p.name)
    problems = []
    for i, a in enumerate(ordered):
        for b in ordered[i + 1:]:
            if a.name == b.name:
                problems.append(f"two IPPools are named {a.name!r}")
                continue
            common = []
            for version in (4, 6):
                common += [(version, lo, hi)
                           for lo, hi in _intersect(a.spans(version), b.spans(version))]
            if common:
                count = sum(hi - lo + 1 for _, lo, hi in common)
                shown = ", ".join(_span_text(v, lo, hi) for v, lo, hi in common[:3])
                more = f" and {len(common) - 3} more ranges" if len(common) > 3 else ""
                problems.append(f"IPPools {a.name!r} and {b.name!r} overlap at {shown}{more} "
                                f"({count} address{'es' if count > 1 else ''}); "
                                f"they belong to {a.name!r}")
    return problems


# --- requests ----------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Request:
    """What one Service asks for, read from its spec and annotations by the controller.

    ``families`` and ``ports`` come from fields the API server validates, so a bad value is
    a caller's bug (ValueError); ``requested`` comes from free-form user input and is
    checked by `Allocator.assign` (an AllocationError, which becomes an Event).
    """

    service: str                                    # "namespace/name"
    families: Tuple[int, ...] = (4,)                # spec.ipFamilies, in order
    ports: FrozenSet[Tuple[str, int]] = frozenset()  # {("tcp", 80), ("udp", 53)}
    requested: Tuple = ()                           # spec.loadBalancerIP / pyxlb.io/load-balancer-ips
    pool: Optional[str] = None                      # pyxlb.io/ip-pool
    share_key: Optional[str] = None                 # pyxlb.io/allow-shared-ip
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self):
        if not isinstance(self.service, str) or not self.service:
            raise ValueError(f"a Request needs a service name, not {self.service!r}")
        families = tuple(self.families)
        if not families or any(f not in (4, 6) for f in families) \
                or len(set(families)) != len(families):
            raise ValueError(f"{self.service}: families must be (4,), (6,), (4, 6) or (6, 4), "
                             f"not {self.families!r}")
        ports = frozenset((str(proto).lower(), int(port)) for proto, port in self.ports)
        requested = (self.requested,) if isinstance(self.requested, str) \
            else tuple(self.requested)
        object.__setattr__(self, "families", families)
        object.__setattr__(self, "ports", ports)
        object.__setattr__(self, "requested", requested)
        object.__setattr__(self, "pool", self.pool or None)
        object.__setattr__(self, "share_key", self.share_key or None)


def _ports_text(ports: Iterable[Tuple[str, int]]) -> str:
    return ", ".join(f"{port}/{proto}" for proto, port in sorted(ports))


def _family_name(version: int) -> str:
    return f"IPv{version}"


def _parse_addresses(service: str, values: Iterable) -> Tuple[IPAddress, ...]:
    """Requested or restored addresses, repeats dropped, order kept; InvalidIP /
    TooManyIPs on bad input."""
    if isinstance(values, (str, ipaddress.IPv4Address, ipaddress.IPv6Address)):
        values = (values,)
    by_family: Dict[int, IPAddress] = {}
    for value in values:
        if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            addr = value
        else:
            try:
                addr = ipaddress.ip_address(str(value).strip())
            except ValueError:
                raise AllocationError(
                    "InvalidIP", f"{service}: {value!r} is not an IPv4 or IPv6 address") from None
        if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id:
            raise AllocationError("InvalidIP", f"{service}: {addr} has a zone; an external "
                                  f"IP cannot")
        held = by_family.get(addr.version)
        if held is not None and held != addr:
            raise AllocationError(
                "TooManyIPs", f"{service}: {held} and {addr} are both "
                f"{_family_name(addr.version)}; a Service has at most one address per family")
        by_family[addr.version] = addr
    return tuple(by_family.values())


# --- the allocator -----------------------------------------------------------------------

class _Runs:
    """A set of integers kept as sorted, merged runs, so that "the first member-free
    integer from n" costs one bisection however many consecutive addresses are in use."""

    def __init__(self):
        self._starts: List[int] = []
        self._ends: List[int] = []

    def _find(self, n: int) -> int:
        """Index of the run holding n, or -1."""
        i = bisect.bisect_right(self._starts, n) - 1
        return i if i >= 0 and self._ends[i] >= n else -1

    def add(self, n: int) -> None:
        if self._find(n) >= 0:
            return
        i = bisect.bisect_right(self._starts, n)        # the run after n, if any
        joins_left = i > 0 and self._ends[i - 1] == n - 1
        joins_right = i < len(self._starts) and self._starts[i] == n + 1
        if joins_left and joins_right:
            self._ends[i - 1] = self._ends[i]
            del self._starts[i], self._ends[i]
        elif joins_left:
            self._ends[i - 1] = n
        elif joins_right:
            self._starts[i] = n
        else:
            self._starts.insert(i, n)
            self._ends.insert(i, n)

    def remove(self, n: int) -> None:
        i = self._find(n)
        if i < 0:
            return
        start, end = self._starts[i], self._ends[i]
        if start == end:
            del self._starts[i], self._ends[i]
        elif n == start:
            self._starts[i] = n + 1
        elif n == end:
            self._ends[i] = n - 1
        else:
            self._ends[i] = n - 1
            self._starts.insert(i + 1, n + 1)
            self._ends.insert(i + 1, end)

    def skip(self, n: int) -> int:
        """n if n is not a member, else the first non-member after n's run."""
        i = self._find(n)
        return n if i < 0 else self._ends[i] + 1


@dataclasses.dataclass(frozen=True)
class _Holding:
    request: Request            # the latest request: its ports and share key govern sharing
    addresses: Tuple[IPAddress, ...]


class Allocator:
    """Which Service holds which addresses, and the rules for handing out more.

    Invariants: an address with several holders is held only by Services with the same
    non-empty share key and pairwise disjoint ports; a Service that holds something holds
    at most one address per family; every holding is inside a pool the Service may use,
    or the Service is listed by `stale` (pools changed under it).
    """

    def __init__(self, pools: Iterable[Pool] = ()):
        self._held: Dict[str, _Holding] = {}
        self._owners: Dict[IPAddress, Set[str]] = {}
        self._in_use = {4: _Runs(), 6: _Runs()}       # addresses with any holder
        self._keyed: Dict[str, Set[str]] = {}         # share key -> Services holding under it
        self.set_pools(pools)

    # pools

    def set_pools(self, pools: Iterable[Pool]) -> None:
        """Replace the pools. Holdings stay; the next `assign` moves what no longer fits.

        Where pools overlap, an address belongs to the first pool by name (`check_pools`
        reports the overlap); a pool's other addresses are unaffected.
        """
        ordered = sorted(pools, key=lambda p: p.name)
        names = [p.name for p in ordered]
        for a, b in zip(names, names[1:]):
            if a == b:
                raise PoolError(f"two IPPools are named {a!r}")
        self._pools: Dict[str, Pool] = {p.name: p for p in ordered}
        # Each pool's own addresses (overlaps removed), and one sorted index per family
        # from which the pool of any address is found by bisection.
        self._spans: Dict[str, Dict[int, List[Span]]] = {}
        index: Dict[int, List[Tuple[int, int, str]]] = {4: [], 6: []}
        for version in (4, 6):
            claimed: List[Span] = []
            for pool in ordered:
                own = pool.spans(version)
                left = _subtract(own, claimed)
                self._spans.setdefault(pool.name, {})[version] = left
                index[version] += [(lo, hi, pool.name) for lo, hi in left]
                claimed = _merge(claimed + own)
        self._index = {v: sorted(entries) for v, entries in index.items()}
        self._starts = {v: [lo for lo, _, _ in entries] for v, entries in self._index.items()}

    def pools(self) -> Tuple[Pool, ...]:
        """The current pools, in name order."""
        return tuple(self._pools.values())

    def pool_of(self, address) -> Optional[str]:
        """The pool an address belongs to, or None (outside every pool, or a .0/.255
        address of a pool that avoids them)."""
        addr = _as_address(address)
        name = self._range_owner(addr)
        if name is not None and addr.version == 4 and self._pools[name].avoid_buggy_ips \
                and _is_buggy(int(addr)):
            return None
        return name

    def _range_owner(self, addr: IPAddress) -> Optional[str]:
        n = int(addr)
        i = bisect.bisect_right(self._starts[addr.version], n) - 1
        if i >= 0:
            lo, hi, name = self._index[addr.version][i]
            if lo <= n <= hi:
                return name
        return None

    def _allowed(self, req: Request) -> List[Pool]:
        """The pools ``req`` may take addresses from, autoAssign aside (name order)."""
        if req.pool is not None:
            pool = self._pools.get(req.pool)
            if pool is None:
                raise AllocationError("UnknownPool", f"{req.service}: pyxlb.io/ip-pool names "
                                      f"IPPool {req.pool!r}, which does not exist")
            if not pool.selects(req.labels):
                raise AllocationError("PoolNotSelected", f"{req.service}: IPPool {req.pool!r} "
                                      f"does not select this Service (its serviceSelector does "
                                      f"not match the Service's labels)")
            return [pool]
        return [p for p in self._pools.values() if p.selects(req.labels)]

    # sharing

    def _conflict(self, addr: IPAddress, req: Request) -> Optional[str]:
        """Why ``req``'s Service may not hold ``addr`` beside its other holders, or None."""
        for other in sorted(self._owners.get(addr, frozenset()) - {req.service}):
            theirs = self._held[other].request
            if req.share_key is None or theirs.share_key != req.share_key:
                return (f"{addr} is held by {other}; two Services share an address only when "
                        f"both carry the same pyxlb.io/allow-shared-ip key")
            clash = req.ports & theirs.ports
            if clash:
                return (f"{addr} is shared with {other}, which already uses "
                        f"{_ports_text(clash)}")
        return None

    def _legal(self, addresses: Iterable[IPAddress], req: Request) -> bool:
        """Whether ``req``'s Service may go on holding ``addresses``: each of a family it
        asks for, in a pool it may use, and shareable with the other holders."""
        try:
            allowed = {p.name for p in self._allowed(req)}
        except AllocationError:
            return False
        return all(a.version in req.families and self.pool_of(a) in allowed
                   and self._conflict(a, req) is None for a in addresses)

    # choosing

    def _plan(self, req: Request) -> Tuple[IPAddress, ...]:
        """The addresses ``req`` should hold, or AllocationError; changes nothing."""
        requested = {a.version: a for a in _parse_addresses(req.service, req.requested)}
        for version, addr in requested.items():
            if version not in req.families:
                raise AllocationError(
                    "FamilyMismatch", f"{req.service}: requested {addr} is "
                    f"{_family_name(version)}, but the Service's ipFamilies are "
                    f"{', '.join(map(_family_name, req.families))}")
        allowed = self._allowed(req)
        allowed_names = {p.name for p in allowed}
        families = [f for f in req.families if f in requested] if requested else req.families
        old = {a.version: a for a in self._held[req.service].addresses} \
            if req.service in self._held else {}
        chosen = []
        for version in families:
            if version in requested:
                addr = requested[version]
                pool = self.pool_of(addr)
                if pool not in allowed_names:
                    raise AllocationError("NotInPool", self._not_in_pool(req, addr, pool))
                why = self._conflict(addr, req)
                if why:
                    raise AllocationError("AddressInUse", f"{req.service}: {why}")
                chosen.append(addr)
            elif version in old and self.pool_of(old[version]) in allowed_names \
                    and self._conflict(old[version], req) is None:
                chosen.append(old[version])
            else:
                chosen.append(self._pick(req, version, allowed))
        return tuple(chosen)

    def _not_in_pool(self, req: Request, addr: IPAddress, pool: Optional[str]) -> str:
        if pool is not None:
            why = (f"it belongs to IPPool {pool!r}, not to the requested pool {req.pool!r}"
                   if req.pool is not None else
                   f"it belongs to IPPool {pool!r}, whose serviceSelector does not match "
                   f"the Service")
        else:
            owner = self._range_owner(addr)
            why = (f"IPPool {owner!r} never hands out addresses ending in .0 or .255 "
                   f"(avoidBuggyIPs)" if owner else "it is outside every IPPool")
        return f"{req.service}: cannot have requested {addr}: {why}"

    def _pick(self, req: Request, version: int, allowed: List[Pool]) -> IPAddress:
        """Automatic choice: an address shared under the key, else the first free one."""
        pools = [p for p in allowed if (p.auto_assign or p.name == req.pool)
                 and self._spans[p.name][version]]
        fam = _family_name(version)
        if not pools:
            why = (f"IPPool {req.pool!r} has no {fam} addresses" if req.pool is not None else
                   f"no IPPool with {fam} addresses, autoAssign on and a serviceSelector "
                   f"that matches")
            raise AllocationError("NoPool", f"{req.service}: cannot choose an {fam} address: "
                                  f"{why}")
        if req.share_key is not None:
            names = [p.name for p in pools]
            shared = set()
            for other in self._keyed.get(req.share_key, ()):
                shared.update(a for a in self._held[other].addresses if a.version == version)
            candidates = sorted((names.index(pool), addr) for addr in shared
                                if (pool := self.pool_of(addr)) in names)
            for _, addr in candidates:
                if self._conflict(addr, req) is None:
                    return addr
        in_use = self._in_use[version]
        for pool in pools:
            avoid = version == 4 and pool.avoid_buggy_ips
            for lo, hi in self._spans[pool.name][version]:
                # Jump over each run of addresses in use: a few steps per allocation,
                # never one per address of the pool.
                n = lo
                while n <= hi:
                    after = in_use.skip(n)
                    if after != n:
                        n = after
                    elif avoid and _is_buggy(n):
                        n += 1
                    else:
                        return _addr(version, n)
        raise AllocationError("PoolExhausted", f"{req.service}: every {fam} address of "
                              f"IPPool{'s' if len(pools) > 1 else ''} "
                              f"{', '.join(repr(p.name) for p in pools)} is in use")

    # changing

    def _hold(self, service: str, holding: Optional[_Holding]) -> None:
        """The one writer of holdings: keeps the owner map and both indexes in step."""
        old = self._held.pop(service, None)
        if old is not None:
            if old.request.share_key is not None:
                keyed = self._keyed[old.request.share_key]
                keyed.discard(service)
                if not keyed:
                    del self._keyed[old.request.share_key]
            for addr in old.addresses:
                if holding is None or addr not in holding.addresses:
                    owners = self._owners[addr]
                    owners.discard(service)
                    if not owners:
                        del self._owners[addr]
                        self._in_use[addr.version].remove(int(addr))
        if holding is None or not holding.addresses:
            return
        self._held[service] = holding
        if holding.request.share_key is not None:
            self._keyed.setdefault(holding.request.share_key, set()).add(service)
        for addr in holding.addresses:
            owners = self._owners.setdefault(addr, set())
            if not owners:
                self._in_use[addr.version].add(int(addr))
            owners.add(service)

    def assign(self, req: Request) -> Tuple[IPAddress, ...]:
        """The addresses ``req.service`` should hold, taken; one per family, in
        ``req.families`` order (only the requested families when IPs are requested).

        Per family: a requested IP if there is one; else the address already held, while
        it is in a pool the Service may use and its sharing still holds; else a new one.
        So a Service whose request is still met gets its addresses back unchanged.

        On AllocationError nothing new is taken, and the Service keeps all its old
        addresses if every one is still legal under this request (a family it asks for,
        a pool it may use, sharing valid with its new ports and key), else loses them all.
        """
        try:
            chosen = self._plan(req)
        except AllocationError:
            held = self._held.get(req.service)
            if held is not None:
                self._hold(req.service, _Holding(req, held.addresses)
                           if self._legal(held.addresses, req) else None)
            raise
        self._hold(req.service, _Holding(req, chosen))
        return chosen

    def restore(self, req: Request, addresses: Iterable) -> None:
        """Re-take what a Service's status says it holds (start, Lease handover).

        Pools are not checked (a holding outside every pool is kept and listed by
        `stale`), only the sharing rule against what others hold: AllocationError
        (AddressInUse, InvalidIP, TooManyIPs) changes nothing and leaves the caller to
        decide. Restoring no addresses releases the Service.
        """
        order = _parse_addresses(req.service, addresses)
        for addr in order:
            why = self._conflict(addr, req)
            if why:
                raise AllocationError("AddressInUse", f"{req.service}: cannot restore: {why}")
        self._hold(req.service, _Holding(req, order))

    def release(self, service: str) -> Tuple[IPAddress, ...]:
        """Forget a Service (deleted, or no longer a LoadBalancer); what it held."""
        held = self._held.get(service)
        if held is None:
            return ()
        self._hold(service, None)
        return held.addresses

    # reading

    def assigned(self, service: str) -> Tuple[IPAddress, ...]:
        held = self._held.get(service)
        return held.addresses if held else ()

    def owners(self, address) -> FrozenSet[str]:
        return frozenset(self._owners.get(_as_address(address), ()))

    def services(self) -> FrozenSet[str]:
        """Every Service holding at least one address."""
        return frozenset(self._held)

    def stale(self) -> FrozenSet[str]:
        """Services holding an address outside every pool they may use (pools changed or
        their request named a pool that is gone); the next `assign` moves them."""
        out = set()
        for service, held in self._held.items():
            try:
                allowed = {p.name for p in self._allowed(held.request)}
            except AllocationError:
                allowed = set()
            if any(self.pool_of(a) not in allowed for a in held.addresses):
                out.add(service)
        return frozenset(out)

    def usage(self) -> Dict[str, Tuple[int, int]]:
        """pool -> (addresses in use, addresses it can hand out); sizes may be 2**64 and
        more, and are computed, never counted."""
        used: Dict[str, int] = {name: 0 for name in self._pools}
        for addr in self._owners:
            name = self.pool_of(addr)
            if name is not None:
                used[name] += 1
        out = {}
        for name, pool in self._pools.items():
            size = 0
            for version, spans in self._spans[name].items():
                for lo, hi in spans:
                    size += hi - lo + 1
                    if version == 4 and pool.avoid_buggy_ips:
                        size -= _count_buggy(lo, hi)
            out[name] = (used[name], size)
        return out
