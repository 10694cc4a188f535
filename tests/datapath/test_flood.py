"""A flood of forged flows does not push real connections out of the flow table, and the
per-CPU insertion limit holds (tests/support/flood.py runs the flood through
BPF_PROG_TEST_RUN; bench/lab_flood.py measures it in the namespace lab at full size: 5
million forged flows)."""

from __future__ import annotations

import pytest

from pyxlb.datapath import maps

from tests.support.flood import survival

# ten forged flows a set, as 5 million are in the default IPv4 table (512 Ki sets), on a
# table small enough to flood in about a second
SETS = 1 << 16
SMALL = {maps.FLOWS4: SETS, maps.FLOWS6: SETS}


@pytest.mark.parametrize("family, proto", [(4, "tcp"), (6, "tcp"), (4, "udp")])
def test_forged_two_packet_flows_do_not_push_out_established_ones(family, proto):
    got = survival(family, proto, real=1000, forged=10 * SETS, map_sizes=SMALL)
    stats = got["stats"]
    # every packet was looked up; first packets all missed, and a second one too where
    # the first was not recorded (this CPU's insertion limit was spent)
    assert stats["flow_hit"] + stats["flow_miss"] == 20 * SETS
    assert stats["flow_miss"] >= 10 * SETS
    assert got["share"] >= 0.999, got


def test_forged_flows_that_come_back_later_are_promoted():
    """What a flood can still do (docs/datapath.md): a forged flow whose second packet
    comes XLB_PROMOTE_AGE or more after its first, while it is still in its set, is
    promoted like a real connection; enough of them per set push real ones out."""
    # a flow's second packet after `gap` other flows and a pause longer than the age
    got = survival(4, "tcp", real=1000, forged=4 * SETS, gap=SETS // 2, map_sizes=SMALL,
                   inserts=0, pace=0.1)
    assert got["share"] < 0.99, got


def test_the_insertion_limit_records_no_more_flows_than_it_allows():
    """Above this CPU's limit a new flow is balanced by the ring but not recorded, and
    counted (flow_insert_limited); the established flows stay."""
    got = survival(4, "tcp", real=100, forged=5000, map_sizes=SMALL, inserts=1000)
    stats = got["stats"]
    # 1,000 inserts a second: the flood (well under a second here) records at most 2,000
    # (the window may turn once) of its 5,000 flows, the rest limited twice each
    assert 2 * (5000 - 2000) <= stats["flow_insert_limited"] <= 2 * (5000 - 1000)
    assert stats["flow_hit"] + stats["flow_miss"] == 10000
    assert got["share"] == 1.0
