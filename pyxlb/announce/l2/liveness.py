"""Who is alive, and so who announces what: the pure part of L2 announcement.

`Liveness` is a state machine driven by heartbeats received and a clock the caller passes
in (no sockets, no threads: pyxlb/announce/l2/membership.py adds those). `owned` turns
the live set into the addresses this node must announce: every node computes the same
answer from the same live set, so no election is needed, and a node that dies moves only
its own addresses.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Dict, FrozenSet, Iterable, List, Mapping, Optional, Set, Tuple, Union

from .. import IPAddress, rendezvous
from .wire import (MAX_U64, Heartbeat, HeartbeatError, L2Error, decode, encode, name_bytes,
                   new_incarnation, signing_key)

DEAD_AFTER = 1.0            # a peer not heard for this long is dead


@dataclasses.dataclass(frozen=True)
class Change:
    """The set of live nodes changed (self always included)."""

    alive: FrozenSet[str]


@dataclasses.dataclass(frozen=True)
class SeenBy:
    """A peer that did not hear this node now does: it will give back what it took over,
    so this node announces its addresses again."""

    peer: str


Event = Union[Change, SeenBy]


@dataclasses.dataclass
class _Peer:
    incarnation: int = 0
    seq: int = 0
    last_heard: float = 0.0
    alive: bool = False
    acked: bool = False         # its last heartbeat said it hears us
    left: bool = False          # said goodbye (this incarnation is finished)


class Liveness:
    """Who is alive, from heartbeats received and time passing; no sockets, no threads,
    no clock of its own (every call takes `now`, seconds on a monotonic clock).

    The driver calls `tick(now)` every `interval`, `receive(data, now)` for every datagram,
    and sends what `outgoing(now)` returns. A peer is dead once `dead_after` has passed
    since its last valid heartbeat. Until every peer has been heard or `dead_after` has
    passed since the start (`settled`), no Change is reported: a node that has just started
    does not yet know who is alive, and must not take every address over meanwhile.
    """

    def __init__(self, me: str, peers: Iterable[str], *, dead_after: float = DEAD_AFTER,
                 incarnation: Optional[int] = None, key: Union[str, bytes, None] = None,
                 now: float = 0.0):
        name_bytes(me)
        self.me = me
        self.key = signing_key(key)
        self.dead_after = float(dead_after)
        if not self.dead_after > 0:
            raise L2Error(f"dead_after must be positive, not {dead_after!r}")
        self.incarnation = new_incarnation() if incarnation is None else incarnation
        if not 0 < self.incarnation <= MAX_U64:
            raise L2Error(f"incarnation must be 1..2**64-1, not {self.incarnation}")
        self._peers: Dict[str, _Peer] = {}
        for name in self._check_peers(peers):
            self._peers[name] = _Peer()
        self._seq = 0
        self._started = now
        self.settled = not self._peers
        self._reported: Optional[FrozenSet[str]] = None
        self.counters: Counter = Counter()
        self.last_rejected = ""     # why the last refused datagram was refused

    def _check_peers(self, peers: Iterable[str]) -> List[str]:
        names = list(peers)
        for name in names:
            name_bytes(name, "peer name")
            if name == self.me:
                raise L2Error(f"peer {name!r} is this node itself")
        return names

    def start(self, now: float) -> None:
        """Count the settling time from `now` (when heartbeats really begin to flow)."""
        self._started = now

    def set_peers(self, peers: Iterable[str], now: float) -> List[Event]:
        """Change the peer set in place (nodes joined or left the cluster): kept peers keep
        their state, new ones are dead until heard, removed ones are forgotten."""
        names = self._check_peers(peers)
        self._peers = {n: self._peers.get(n) or _Peer() for n in names}
        return self._settle(now)

    def alive(self) -> FrozenSet[str]:
        return frozenset([self.me, *(n for n, p in self._peers.items() if p.alive)])

    def peers(self, now: float) -> Dict[str, dict]:
        """Per peer: alive, incarnation, seconds since heard (None: never), hears us."""
        return {n: {"alive": p.alive, "incarnation": p.incarnation,
                    "heard_ago": (now - p.last_heard) if p.incarnation else None,
                    "hears_us": p.acked}
                for n, p in self._peers.items()}

    def outgoing(self, now: float) -> List[Tuple[str, bytes]]:
        """One round of heartbeats: (peer, datagram) for every peer."""
        self._seq += 1
        return [(n, encode(Heartbeat(self.me, self.incarnation, self._seq,
                                     p.incarnation if p.alive else 0), self.key))
                for n, p in self._peers.items()]

    def goodbye(self) -> List[Tuple[str, bytes]]:
        """Heartbeats that tell every peer this node is leaving now (a clean stop: the
        peers take over at once instead of after dead_after)."""
        self._seq += 1
        return [(n, encode(Heartbeat(self.me, self.incarnation, self._seq, 0, True), self.key))
                for n in self._peers]

    def receive(self, data: bytes, now: float) -> List[Event]:
        """Take one datagram in; junk, replays and strangers are counted and ignored."""
        try:
            hb = decode(data, self.key)
        except HeartbeatError as exc:
            self.counters["rejected"] += 1
            self.last_rejected = str(exc)
            return []
        if hb.node == self.me:
            self.counters["own"] += 1       # a peer address that is ours, or a twin name
            return []
        p = self._peers.get(hb.node)
        if p is None:
            self.counters["unknown"] += 1
            self.last_rejected = f"heartbeat from {hb.node!r}, which is not a peer"
            return []
        if hb.incarnation == p.incarnation:
            if hb.seq <= p.seq or p.left:       # reordered, replayed, or after goodbye
                self.counters["stale"] += 1
                return []
        elif hb.incarnation < p.incarnation and p.alive:
            # an older run while the current one is alive: a replay (a smaller number
            # from a real restart, after the clock stepped back, is taken once the old
            # run is dead)
            self.counters["stale"] += 1
            return []
        elif p.incarnation:
            self.counters["restarts"] += 1
        p.incarnation, p.seq, p.left = hb.incarnation, hb.seq, False
        self.counters["received"] += 1
        if hb.leaving:
            p.alive, p.acked, p.left = False, False, True
        else:
            p.alive, p.last_heard = True, now
        acked = hb.ack == self.incarnation
        # before the first Change nobody acts on addresses yet: nothing to announce again
        seen = acked and not p.acked and self.settled
        p.acked = acked
        events = self._settle(now)
        if seen:
            events.append(SeenBy(hb.node))
        return events

    def tick(self, now: float) -> List[Event]:
        """Let time pass: peers not heard for dead_after die."""
        for p in self._peers.values():
            if p.alive and now - p.last_heard >= self.dead_after:
                p.alive, p.acked = False, False
        return self._settle(now)

    def _settle(self, now: float) -> List[Event]:
        if not self.settled:
            heard = all(p.incarnation for p in self._peers.values())
            self.settled = heard or now - self._started >= self.dead_after
        if not self.settled:
            return []
        alive = self.alive()
        if alive == self._reported:
            return []
        self._reported = alive
        return [Change(alive)]


# -- who announces what -----------------------------------------------------------------

def owned(eligible: Mapping[IPAddress, Iterable[str]], alive: Iterable[str],
          me: str) -> Set[IPAddress]:
    """The addresses `me` must announce: those whose rendezvous winner among their eligible
    nodes that are alive is `me`. An address with no live eligible node is nobody's."""
    alive = set(alive)
    if me not in alive:
        return set()
    return {addr for addr, nodes in eligible.items()
            if me in nodes and rendezvous(addr, set(nodes) & alive) == me}
