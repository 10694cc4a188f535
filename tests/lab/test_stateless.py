"""Stateless mode in the lab: long-lived connections through a stateless VIP keep
transferring while backends are added and removed and while the router moves them to the
other LB node, and none is reset, though the balancers keep no flow (docs/datapath.md,
"Stateless mode").

CONNECTIONS uploads (tests/support/traffic.py Streams: every connection sends a chunk each
50 ms) start on be1 and be2, through lb1. Then, each a second apart: be3 is added, be3 is
removed, lb1 is lost (the router sends the VIP's traffic to lb2, which never saw these
connections), be1 is removed, be1 is added: each kind of backend change twice. A
connection whose ring slot moved is
carried by the packets' previous owner and chained back by the backend that lacks it; each
change moves every slot at most once away from its first owner and back (Maglev gives the
same backend set the same ring), the case the mode guarantees. Every upload must end on the
backend that accepted it, complete, with no reset, no timeout and no failed-connection
counter moving on the client; the backends must have chained packets (the test would pass
without chaining if no slot had moved), and the balancers must have recorded no flow.
"""

from __future__ import annotations

import time

import pytest

from pyxlb.lab import BACKENDS, LBS

from tests.support.traffic import Streams, Verdict, stalled

from .helpers import chained, state

CONNECTIONS = 500
LOSE_LB1 = "lb1 lost"
STEPS = (("be1", "be2", "be3"), ("be1", "be2"), LOSE_LB1, ("be2",), ("be1", "be2"))
SETTLE = 1.0            # seconds of traffic after each change


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_connections_survive_backends_coming_and_going(lab, ports, family):
    def stateless(*backends):
        return state(lab.vip(family, backends=backends, stateless=True))

    lab.warm_neighbours(senders=BACKENDS, targets=BACKENDS)
    lab.apply(stateless("be1", "be2"))
    before = chained(lab)
    sports = set(ports.take(CONNECTIONS))
    with Streams(lab, family, sorted(sports), duration=30.0) as streams:
        assert set(streams.holders().values()) == {"be1", "be2"}
        stuck = []
        for step in STEPS:
            if step == LOSE_LB1:
                lab.route_via("lb2")
            else:
                lab.apply(stateless(*step))
            acked = streams.acked()
            time.sleep(SETTLE)
            stuck += stalled(acked, streams.acked())
        streams.finish()
    verdict = Verdict.of(streams)
    verdict.assert_clean()
    assert not stuck, f"{len(set(stuck))} connections stopped transferring after a change"
    moves = {be: n - before[be] for be, n in chained(lab).items()}
    assert sum(moves.values()) > 0, f"no backend chained a packet: {moves}"
    for lb in LBS:
        with lab.datapath(lb) as dp:
            recorded = [k for k, _ in dp.flows() if k["sport"] in sports]
        assert not recorded, f"{lb} recorded {len(recorded)} of these flows: {recorded[:3]}"
