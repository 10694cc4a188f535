"""Where new connections go: spread by weight, the same from either LB node (Maglev with
the same backends and seed, no shared state), and few moved when a backend goes."""

import pytest

from .helpers import (DSR, assert_shares, delta, fixed_ports, flows, lb_counters, spread,
                      state, weighted_vip)

WEIGHTS = [pytest.param({"be1": 1, "be2": 1, "be3": 1}, 900, 0, id="equal"),
           pytest.param({"be1": 1, "be2": 2, "be3": 3}, 1800, 900, id="weights-1-2-3")]


@DSR
@pytest.mark.parametrize("weights,connections,offset", WEIGHTS)
def test_connections_spread_by_weight(lab, family, mode, weights, connections, offset):
    """Each backend's share of `connections` new connections (one per client source port)
    is within ±15% of its share of the weights. The ports are a fixed block per case, so
    the sample is the same on every run. (Binomial noise at these sizes: about 1/3 of
    the margin for the smallest share.)"""
    lab.apply(state(weighted_vip(lab, family, mode, weights)))
    before = lb_counters(lab, "lb1")
    got = flows(lab, family, fixed_ports(family, mode, offset, connections))
    lb1 = delta(lb_counters(lab, "lb1"), before)
    assert lb1["vip_new_flows"] == connections, "each connection was balanced afresh"
    assert_shares(spread(got), weights)


@DSR
def test_both_lb_nodes_send_a_flow_to_the_same_backend(lab, ports, family, mode):
    """The same 300 flows through lb1 and then through lb2 reach the same backends; lb2
    had never seen them (every one is a new flow there), so it decided alone."""
    lab.apply(state(lab.vip(family, mode=mode)))
    sports = ports.take(300)
    via_lb1 = flows(lab, family, sports)
    lab.route_via("lb2")
    before = lb_counters(lab, "lb2")
    via_lb2 = flows(lab, family, sports)
    assert delta(lb_counters(lab, "lb2"), before)["vip_new_flows"] == len(sports)
    differ = {p: (via_lb1[p], via_lb2[p]) for p in sports if via_lb1[p] != via_lb2[p]}
    assert not differ, f"{len(differ)} flows reached another backend via lb2: {differ}"
    assert set(via_lb1.values()) == {"be1", "be2", "be3"}


@DSR
def test_removing_a_backend_moves_few_flows(lab, ports, family, mode):
    """With three backends, 600 flows are sent through lb1; be3 is removed; the same flows
    are sent through lb2, which never saw them, so its choice is Maglev's alone (no flow
    table helps). Only about be3's third should move: at most 1.5 × 1/3 of all flows do,
    and every flow of be3 finds another backend."""
    lab.apply(state(lab.vip(family, mode=mode)))
    sports = ports.take(600)
    before = flows(lab, family, sports)
    lab.apply(state(lab.vip(family, mode=mode, backends=("be1", "be2"))))
    lab.route_via("lb2")
    counted = lb_counters(lab, "lb2")
    after = flows(lab, family, sports)
    assert delta(lb_counters(lab, "lb2"), counted)["vip_new_flows"] == len(sports)

    assert "be3" in before.values() and "be3" not in after.values()
    moved = [p for p in sports if before[p] != after[p]]
    on_be3 = [p for p in sports if before[p] == "be3"]
    assert set(on_be3) <= set(moved)
    assert len(moved) <= 1.5 * len(sports) / 3, \
        f"{len(moved)} of {len(sports)} flows moved ({len(on_be3)} had been on be3)"
