"""A flood of forged new flows must not push real connections out of the flow table
(issue 20): 1,000 real long-lived TCP connections through lb1, then 5,000,000 forged
flows of two packets each (a SYN, then an ACK, from new client addresses and ports) at
the generator's full speed, then a backend is added so the Maglev ring changes. Every
connection the flow table forgot and whose ring slot moved to the new backend is reset
by it; the share that survives (no reset, answered by the backend that accepted it) is
the figure (tests/support/labflood.py).

The connections idle during the flood (they sent their request head and a few chunks
before it, the rest after the ring change): the harder case, since a connection that
keeps sending renews its place in the table with every packet. bench/lab_flood.py measures
the active case too, and more detail.

The lab is this module's own (prefix fk<pid>): the flood fills lb1's flow table, which
no other module should inherit.
"""

import os
import sys
import time

import pytest

from tests.support.labflood import Flood, survival

from .conftest import lab_up

PREFIX = f"fk{os.getpid() % 100000}"
CONNECTIONS = 1000
FORGED_FLOWS = 5_000_000
TARGET = 0.999
# "pairs": each forged ACK right behind its SYN, the flood the target is for. A patient
# flood (each ACK sent past the promotion age, 67 ms, after its SYN) can still promote its
# flows and push idle connections out (docs/datapath.md, "What a flood can still do"):
# bench/lab_flood.py measures it (--lags 1048576), this module does not (the suite's time).
FLOODS = {"pairs": 1}


@pytest.fixture(scope="module")
def flab():
    with lab_up(PREFIX) as lab:
        lab.route_via("lb1")
        with Flood(lab, "lb1") as flood:
            lab.flood_gen = flood
            yield lab


@pytest.mark.parametrize("flood_kind", list(FLOODS))
@pytest.mark.parametrize("family,first_port", [(4, 21000), (6, 23000)],
                         ids=["ipv4", "ipv6"])
def test_idle_connections_survive_a_two_packet_flood_and_a_ring_change(
        flab, family, first_port, flood_kind):
    t0 = time.monotonic()
    first = first_port + list(FLOODS).index(flood_kind) * CONNECTIONS
    result = survival(flab, flab.flood_gen, family, range(first, first + CONNECTIONS),
                      flows=FORGED_FLOWS, lag=FLOODS[flood_kind])
    flood = result.flood
    print(f"\n{flood_kind}: {result.line()}\n{flood.line()}\n(open {result.seconds['open']} "
          f"s, flood {result.seconds['flood']} s, ring change and finish "
          f"{result.seconds['finish']} s; {time.monotonic() - t0:.1f} s in all)",
          file=sys.stderr)
    # the flood happened: the balancer forwarded every forged packet
    assert flood.flows_sent >= FORGED_FLOWS
    assert flood.forwarded >= flood.packets_sent, flood.line()
    assert flood.stats["flow_miss"] >= 0.5 * flood.flows_sent, flood.line()
    # the real connections were all there before it, spread over both backends
    assert result.connections == CONNECTIONS
    assert set(result.holders) == {"be1", "be2"}, result.holders
    assert result.share >= TARGET, f"{result.line()}; {flood.line()}"
