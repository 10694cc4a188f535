"""A replay of the flow sets' rule in Python: what xlb_set_lookup and xlb_set_insert
(xdp/include/balance.h) do to one set, packet by packet, and the capacity that follows
from it (docs/datapath.md, "Flow tables").

The rule: a set has WAYS ways, the front half before FRONT. A new flow takes the first
empty way, else enters the full set at FRONT (the back half's ways move down one, the last
one forgotten). A packet that finds its flow in the back half promotes it to way 0 (the
ways before it move down one) when it is no TCP SYN and comes PROMOTE_AGE stamp units or
more after the flow's stamp; the promoted flow is stamped anew. Nothing else moves a flow.

tests/datapath/test_flowset_rule.py checks this replay against the kernel, packet by
packet; tests/unit/test_flowsets.py derives the capacity rule (FLOWS_PER_SET) from it.
"""

from __future__ import annotations

import math
import random
from typing import Hashable, List, Tuple

from pyxlb import _layouts as L

WAYS = L.FLOW4_WAYS                 # both tables: L.FLOW6_WAYS is the same
FRONT = WAYS // 2
PROMOTE_AGE = L.PROMOTE_AGE         # stamp units (2^STAMP_SHIFT ns)


class FlowSets:
    """Sets of ways, each a list of [flow, stamp] in way order (empty ways at the end: the
    replay never empties a way, so a set fills in order)."""

    def __init__(self, sets: int):
        self.sets: List[List[list]] = [[] for _ in range(sets)]

    def packet(self, s: int, flow: Hashable, now: int, syn: bool = False) -> bool:
        """One packet of `flow`, in set `s`, at `now` (stamp units): True if the set had
        the flow (a hit), else the flow is inserted (a new flow: a miss)."""
        ways = self.sets[s]
        for i, (f, stamp) in enumerate(ways):
            if f != flow:
                continue
            if i >= FRONT and not syn and now - stamp >= PROMOTE_AGE:
                del ways[i]
                ways.insert(0, [flow, now])
            return True
        if len(ways) < WAYS:
            ways.append([flow, now])
        else:
            ways.insert(FRONT, [flow, now])
            del ways[WAYS]
        return False

    def flows(self, s: int) -> List[Hashable]:
        return [f for f, _ in self.sets[s]]


def capacity(sets: int, flows: int, passes: int = 3, churn: int = 0,
             seed: int = 1) -> Tuple[List[float], List[int]]:
    """The scenario of bench/lab_flood.py's capacity check, replayed: `flows` established
    flows, each in a set drawn at random (the datapath's set hash spreads flows so), first
    send two packets in a row (a SYN and an ACK), then `passes` passes in which each sends
    one packet, a promotion age or more apart, with `churn` new one-packet flows (SYNs, in
    random sets) before each pass. Returns (the share of each pass's packets that hit,
    how many flows each set got)."""
    rnd = random.Random(seed)
    table = FlowSets(sets)
    where = [rnd.randrange(sets) for _ in range(flows)]
    now = 0
    for f, s in enumerate(where):
        table.packet(s, f, now, syn=True)
        table.packet(s, f, now)
    shares = []
    fresh = flows
    for _ in range(passes):
        now += PROMOTE_AGE
        for _ in range(churn):
            table.packet(rnd.randrange(sets), fresh, now, syn=True)
            fresh += 1
        now += PROMOTE_AGE
        hits = sum(table.packet(s, f, now) for f, s in enumerate(where))
        shares.append(hits / flows)
    load = [0] * sets
    for s in where:
        load[s] += 1
    return shares, load


def missing_share(m: float, ways: int = WAYS) -> float:
    """The share of established flows that miss, by the rule, when flows fall into sets at
    random with m flows a set on average (Poisson): a set holding k > ways keeps its front
    half for good and its other k - FRONT flows take turns in the back half, each missing
    every time it sends."""
    p, total = math.exp(-m), 0.0
    for k in range(1, 64):
        p *= m / k
        if k > ways:
            total += p * (k - FRONT)
    return total / m


def expected_misses(load: List[int]) -> int:
    """Misses a pass of `load` (flows a set) has by the rule, once the sets settle."""
    return sum(k - FRONT for k in load if k > WAYS)

