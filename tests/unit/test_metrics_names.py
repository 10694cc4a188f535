"""pyxlb.metrics and the agent's metrics without a kernel: every counter of enum xlb_stat
has a place, labels are written the way the rest of pyxlb writes them, the agent's labelled
series start at 0, and every query pyxlb ships (dashboard, docs, alert rules) filters only
on labels and values the metrics have."""

import ipaddress
import re
from typing import Dict, Iterator, Set, Tuple

import pytest
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from pyxlb import _layouts as L
from pyxlb import metrics
from pyxlb.addr import parse_addr
from pyxlb.k8s.run import RECONCILE_RESULTS, WATCH_RESTART_REASONS, AgentMetrics
from pyxlb.state import VipKey

from tests.support.promql import (METRICS_DOC, ROOT, RULES, dashboard_queries, docs_queries,
                                  rule_queries)

XDP_ACTIONS = {"pass", "drop", "tx", "redirect", "aborted"}


def test_every_stat_has_a_place():
    placed = (set(metrics.XDP_ACTIONS) | set(metrics.FLOW_LOOKUPS)
              | {metrics.ICMP_STEERED, metrics.MIDSTREAM_MISSES, metrics.INSERT_LIMITED}
              | set(metrics.CHAIN_EVENTS))
    missing = [n for n in L.STAT_NAMES if n not in placed]
    assert not missing, f"add these enum xlb_stat names to pyxlb.metrics: {missing}"
    stale = placed - set(L.STAT_NAMES)
    assert not stale, f"pyxlb.metrics maps names enum xlb_stat no longer has: {stale}"


def test_each_stat_is_in_one_table_only():
    tables = [set(metrics.XDP_ACTIONS), set(metrics.FLOW_LOOKUPS), {metrics.ICMP_STEERED},
              {metrics.MIDSTREAM_MISSES}, {metrics.INSERT_LIMITED}]
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
                                          "flow_insert_limited": 3, "stat_31": 7})

    registry.register(Fake())
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(generate_latest(registry).decode())
           for s in f.samples}
    assert got == {
        ("pyxlb_xdp_actions_total", (("action", "tx"), ("reason", "forwarded"))): 5,
        ("pyxlb_xdp_actions_total", (("action", "unknown"), ("reason", "stat_31"))): 7,
        ("pyxlb_flow_lookups_total", (("result", "hit"),)): 2,
        ("pyxlb_icmp_steered_total", ()): 1,
        ("pyxlb_flow_insert_limited_total", ()): 3,
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


# -- the agent's labelled series, and the labels queries filter on -----------------------

def samples(registry) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(generate_latest(registry).decode())
            for s in f.samples if not s.name.endswith("_created")}


def test_agent_labelled_counters_start_at_zero():
    """A fresh agent's registry already has every reconcile result and, for each watched
    kind, every watch-restart reason at 0: the dashboard reads 0, not "No data"."""
    registry = CollectorRegistry()
    m = AgentMetrics(registry)
    m.watching(["Service", "Node"])
    got = samples(registry)
    for result in RECONCILE_RESULTS:
        assert got[("pyxlb_agent_reconciles_total", (("result", result),))] == 0
    restarts = {k: v for k, v in got.items() if k[0] == "pyxlb_agent_watch_restarts_total"}
    assert restarts == {("pyxlb_agent_watch_restarts_total",
                         (("reason", reason), ("resource", kind))): 0
                        for kind in ("Service", "Node") for reason in WATCH_RESTART_REASONS}
    m.reconciles.labels("error").inc()
    assert samples(registry)[("pyxlb_agent_reconciles_total", (("result", "error"),))] == 1


def test_node_health_has_the_nodes_probed_now():
    registry = CollectorRegistry()
    m = AgentMetrics(registry)

    def health():
        return {dict(k[1])["node"]: v for k, v in samples(registry).items()
                if k[0] == "pyxlb_agent_node_health"}

    assert health() == {}
    m.node_verdicts({"n1": True, "n2": False})
    assert health() == {"n1": 1, "n2": 0}
    m.node_verdicts({"n1": False})            # n2 no longer probed: its last verdict goes
    assert health() == {"n1": 0}
    m.node_verdicts({})
    assert health() == {}


def test_the_agent_counts_only_known_label_values():
    """The label values pyxlb/k8s/agent.py and informer.py count under are the ones
    pyxlb/k8s/run.py starts at 0 (read from their source: they are literals there)."""
    k8s = ROOT / "pyxlb" / "k8s"
    results = set(re.findall(r'reconciles\.labels\("(\w+)"\)', (k8s / "agent.py").read_text()))
    reasons = set(re.findall(r'_restarted\("(\w+)"\)', (k8s / "informer.py").read_text()))
    assert results == set(RECONCILE_RESULTS)
    assert reasons == set(WATCH_RESTART_REASONS)


def known_labels() -> Dict[str, Set[str]]:
    """{series name: its label names}: the agent's from a registry of AgentMetrics with a
    sample in every family, the datapath's global counters from stat_families, the other
    datapath metrics from docs/metrics.md's tables (their Labels column)."""
    registry = CollectorRegistry()
    m = AgentMetrics(registry)
    m.watching(["Service"])
    m.ipam_in_use.labels("pool").set(1)
    m.node_verdicts({"n1": True})
    registry.register(type("Stats", (), {"collect": lambda self: metrics.stat_families(
        {name: 0 for name in L.STAT_NAMES})})())
    out: Dict[str, Set[str]] = {}
    for (name, labels), _ in samples(registry).items():
        out.setdefault(name, set()).update(k for k, _ in labels)
    for row in re.findall(r"^\| `(pyxlb_\w+)` \| ([^|]*) \|", METRICS_DOC.read_text(), re.M):
        out.setdefault(row[0], set(re.findall(r"`(\w+)`", row[1])))
    out["pyxlb_apply_duration_seconds_bucket"] = {"le"}
    out["pyxlb_apply_duration_seconds_count"] = out["pyxlb_apply_duration_seconds_sum"] = set()
    return out


def queries() -> Iterator[Tuple[str, str]]:
    """(where, PromQL) of the dashboard, docs/metrics.md's promql blocks and the rules."""
    for title, expr in dashboard_queries():
        yield f"dashboard panel {title!r}", expr
    for line in docs_queries():
        yield "docs/metrics.md", line
    for alert, expr in rule_queries():
        yield f"{RULES.name} {alert}", expr


# label values the code has a table of: a query filtering on another value reads nothing
KNOWN_VALUES = {
    ("pyxlb_xdp_actions_total", "action"): {a for a, _ in metrics.XDP_ACTIONS.values()},
    ("pyxlb_xdp_actions_total", "reason"): {r for _, r in metrics.XDP_ACTIONS.values()},
    ("pyxlb_flow_lookups_total", "result"): set(metrics.FLOW_LOOKUPS.values()),
    ("pyxlb_agent_reconciles_total", "result"): set(RECONCILE_RESULTS),
    ("pyxlb_agent_watch_restarts_total", "reason"): set(WATCH_RESTART_REASONS),
}
SCRAPE_LABELS = {"instance", "job"}      # Prometheus adds these to every series


def test_queries_filter_only_on_labels_the_metrics_have():
    """A matcher on a label a metric does not have (or on a value it never takes) makes a
    panel or an alert read nothing, silently: tests/lab/test_prometheus.py finds that in a
    running lab, this finds it without one."""
    labels = known_labels()
    wrong = []
    for where, expr in queries():
        for name, matchers in re.findall(r"(pyxlb_\w+)\s*\{([^}]*)\}", expr):
            assert name in labels, f"{where}: {name} is no metric pyxlb exports"
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
                if label not in labels[name] | SCRAPE_LABELS:
                    wrong.append(f"{where}: {name} has no label {label!r}: {expr}")
                elif op == "=" and value not in KNOWN_VALUES.get((name, label), {value}):
                    wrong.append(f"{where}: {name}{{{label}}} is never {value!r}: {expr}")
    assert not wrong, "\n".join(wrong)
