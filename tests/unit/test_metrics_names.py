"""pyxlb.metrics without a kernel: every counter of enum xlb_stat has a place, and labels
are written the way the rest of pyxlb writes them."""

import ipaddress

import pytest
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pyxlb import _layouts as L
from pyxlb import metrics
from pyxlb.addr import parse_addr
from pyxlb.state import VipKey

XDP_ACTIONS = {"pass", "drop", "tx", "redirect", "aborted"}


def test_every_stat_has_a_place():
    placed = (set(metrics.XDP_ACTIONS) | set(metrics.FLOW_LOOKUPS)
              | {metrics.ICMP_STEERED, metrics.MIDSTREAM_MISSES})
    missing = [n for n in L.STAT_NAMES if n not in placed]
    assert not missing, f"add these enum xlb_stat names to pyxlb.metrics: {missing}"
    stale = placed - set(L.STAT_NAMES)
    assert not stale, f"pyxlb.metrics maps names enum xlb_stat no longer has: {stale}"


def test_each_stat_is_in_one_table_only():
    tables = [set(metrics.XDP_ACTIONS), set(metrics.FLOW_LOOKUPS), {metrics.ICMP_STEERED},
              {metrics.MIDSTREAM_MISSES}]
    assert sum(len(t) for t in tables) == len(set().union(*tables))


@pytest.mark.parametrize("stat", sorted(metrics.XDP_ACTIONS))
def test_actions_are_xdp_actions(stat):
    action, reason = metrics.action_of(stat)
    assert action in XDP_ACTIONS
    assert reason and reason == reason.lower() and " " not in reason


def test_actions_and_reasons_are_unique():
    assert len(set(metrics.XDP_ACTIONS.values())) == len(metrics.XDP_ACTIONS)


def test_an_unknown_stat_is_still_exported():
    assert metrics.action_of("stat_31") == ("unknown", "stat_31")
    registry = CollectorRegistry()

    class Fake:
        def collect(self):
            return metrics.stat_families({"tx": 5, "flow_hit": 2, "icmp_steered": 1,
                                      "stat_31": 7})

    registry.register(Fake())
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(generate_latest(registry).decode())
           for s in f.samples}
    assert got == {
        ("pyxlb_xdp_actions_total", (("action", "tx"), ("reason", "forwarded"))): 5,
        ("pyxlb_xdp_actions_total", (("action", "unknown"), ("reason", "stat_31"))): 7,
        ("pyxlb_flow_lookups_total", (("result", "hit"),)): 2,
        ("pyxlb_icmp_steered_total", ()): 1,
    }


@pytest.mark.parametrize("text", ["192.0.2.10:80/tcp", "192.0.2.10:0/udp",
                                  "[2001:db8::10]:443/tcp", "[fd00::1:5]:0/udp"])
def test_vip_label_is_the_vip_as_written(text):
    key = VipKey.parse(text)
    family, addr = parse_addr(key.address)
    assert metrics.vip_label(family, addr, key.port, {"tcp": 6, "udp": 17}[key.protocol]) \
        == str(key) == text


def test_vip_label_of_a_protocol_pyxlb_does_not_write():
    family, addr = parse_addr(ipaddress.ip_address("192.0.2.1"))
    assert metrics.vip_label(family, addr, 0, 132) == "192.0.2.1:0/132"
