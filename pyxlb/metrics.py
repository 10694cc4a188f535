"""Prometheus metrics of a running datapath, read from its maps when scraped.

No polling loop: each scrape reads the per-CPU counters, sums them over CPUs and reports
the totals, so a scrape sees what the kernel counted up to that moment. Which VIP and
backend an id stands for is read from xlb_vips / xlb_backends at the same time, never from
a cached layout: another process (`pyxlb apply`, the agent) may have changed the maps since
this one started.

The only metric that is not in the maps is `pyxlb_apply_duration_seconds`, observed through
`Datapath.on_apply`: it has samples only in the process that calls `apply` (the agent), not
in an exporter that just reads a pinned datapath. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import signal
import threading
from typing import Dict, Iterator, Tuple

from prometheus_client import CollectorRegistry, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pyxlb import _layouts as L
from pyxlb.addr import format_addr
from pyxlb.errors import PyxlbError

# The outcomes of enum xlb_stat, {stat name: (XDP action, reason)}: each frame is counted
# under one of them. tests/unit/test_metrics_names.py checks that every name of
# _layouts.STAT_NAMES is in one of the tables below.
XDP_ACTIONS: Dict[str, Tuple[str, str]] = {
    "pass_not_vip": ("pass", "not_vip"),
    "pass_local": ("pass", "local"),
    "pass_fragment": ("pass", "fragment"),
    "pass_malformed": ("pass", "malformed"),
    "pass_no_neigh": ("pass", "no_neigh"),
    "pass_not_ours": ("pass", "not_ours"),
    "decap": ("pass", "decap"),
    "decap_refused": ("pass", "decap_refused"),
    "tx": ("tx", "forwarded"),
    "redirect": ("redirect", "forwarded"),
    "icmp_sent": ("tx", "icmp_too_big"),
    "arp_reply": ("tx", "arp_reply"),
    "ndp_reply": ("tx", "ndp_reply"),
    "drop_no_backend": ("drop", "no_backend"),
    "drop_too_big": ("drop", "too_big"),
    "drop_unsupported": ("drop", "unsupported"),
    "drop_no_route": ("drop", "no_route"),
    "drop_internal": ("drop", "internal"),
    "drop_source_range": ("drop", "source_range"),
}
# Counted on the way to an outcome, not instead of one.
FLOW_LOOKUPS: Dict[str, str] = {"flow_hit": "hit", "flow_miss": "miss", "flow_stale": "stale"}
ICMP_STEERED = "icmp_steered"   # also counted under the action its forwarding took
MIDSTREAM_MISSES = "flow_miss_midstream"    # a subset of the flow_miss lookups
INSERT_LIMITED = "flow_insert_limited"      # new flows balanced but not recorded
# Stateless mode's chaining, counted beside the frame's outcome: {stat name: event}
CHAIN_EVENTS: Dict[str, str] = {"chain_sent": "sent", "chain_forwarded": "forwarded",
                                "chain_no_peer": "no_peer"}
UNKNOWN_ACTION = "unknown"      # a stat this table does not know yet: reason = its name

APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                 10.0, 30.0)

_PROTO_NAMES = {6: "tcp", 17: "udp"}
_VIP_HELP = {
    "packets": "Packets that matched each VIP (those dropped for want of a backend too)",
    "bytes": "Bytes (IP header and payload, no link-layer header) that matched each VIP",
    "new_flows": "Flows each VIP added to the flow table (none without a flow table)",
}
_BACKEND_HELP = {
    "packets": "Packets sent to each backend address",
    "bytes": "Bytes (IP header and payload of the client's packet, before encapsulation) "
             "sent to each backend address",
    "new_flows": "Flows pinned to each backend address (flow-table inserts)",
}
_SHARED = (". A backend address has one id and one set of counters however many VIPs list "
           "it: this is its total over all of them")


def action_of(stat: str) -> Tuple[str, str]:
    """(action, reason) labels of a stat name; unknown names keep their name as reason."""
    return XDP_ACTIONS.get(stat, (UNKNOWN_ACTION, stat))


def vip_label(family: int, addr: bytes, port: int, proto: int) -> str:
    """A VIP as pyxlb writes it everywhere: ``192.0.2.10:80/tcp``, ``[2001:db8::10]:443/udp``."""
    host = format_addr(family, addr)
    if family == L.FAMILY_V6:
        host = f"[{host}]"
    return f"{host}:{port}/{_PROTO_NAMES.get(proto, str(proto))}"


class DatapathCollector(Collector):
    """Reads a Datapath's counters at each scrape (see the module docstring)."""

    def __init__(self, dp):
        self.dp = dp

    def collect(self) -> Iterator[Metric]:
        dp = self.dp
        yield from stat_families(dp.stats())
        vip_records = _vips(dp)
        vips = {vid: label for vid, (label, _) in vip_records.items()}
        backends = _backends(dp)
        yield from _per_id("vip", _VIP_HELP, vips, dp.vip_counters)
        drops = CounterMetricFamily(
            "pyxlb_vip_source_range_drops", "Packets to each VIP with source ranges dropped "
            "because the client is in none of them (not in pyxlb_vip_packets_total)",
            labels=["vip"])
        for vid, (name, flags) in sorted(vip_records.items(), key=lambda kv: kv[1]):
            if flags & L.VIP_SOURCE_RANGES:
                drops.add_metric([name], dp.vip_range_drops(vid))
        yield drops
        yield from _per_id("backend", {c: h + _SHARED for c, h in _BACKEND_HELP.items()},
                           {bid: addr for bid, (addr, _) in backends.items()},
                           dp.backend_counters)

        g = GaugeMetricFamily("pyxlb_vips", "VIPs in the datapath (address, port, protocol)")
        g.add_metric([], len(vips))
        yield g
        g = GaugeMetricFamily("pyxlb_backends", "Distinct backend addresses in the datapath, "
                              "by state (draining: out of every ring, keeping its flows)",
                              labels=["state"])
        states = [s for _, s in backends.values()]
        for state in ("active", "draining"):
            g.add_metric([state], states.count(state))
        yield g
        g = GaugeMetricFamily("pyxlb_flow_table_entries", "Flows in the flow tables (IPv4 "
                              "and IPv6)")
        g.add_metric([], dp.flow_count())
        yield g
        g = GaugeMetricFamily("pyxlb_flow_table_max_entries", "Established flows the flow "
                              "tables (IPv4 and IPv6) are rated for: with no more, 99.9% of "
                              "their packets find their flow on average (--max-flows, "
                              "--max-flows6)")
        g.add_metric([], dp.flow_capacity())
        yield g
        g = GaugeMetricFamily("pyxlb_flow_table_ways", "Ways of the flow tables' sets (IPv4 "
                              "and IPv6): flows they hold at most")
        g.add_metric([], sum(dp.flow_ways()))
        yield g
        g = GaugeMetricFamily("pyxlb_flow_insert_limit", "New flows each CPU records a "
                              "second in the flow table of a family (0: no limit)",
                              labels=["family"])
        for family, limit in zip(("ipv4", "ipv6"), dp.insert_limits()):
            g.add_metric([family], limit)
        yield g
        g = GaugeMetricFamily("pyxlb_datapath_info", "The datapath's version (1): which "
                              "nodes a rollout has upgraded", labels=["version"])
        g.add_metric([str(dp.directory_version() if dp.pin_dir else dp.version())], 1)
        yield g


def stat_families(stats: Dict[str, int]) -> Iterator[Metric]:
    """The global counters (xlb_stats), split into six families."""
    actions = CounterMetricFamily(
        "pyxlb_xdp_actions", "Frames by what the XDP program did with them (action) and why "
        "(reason); each frame is counted once", labels=["action", "reason"])
    lookups = CounterMetricFamily(
        "pyxlb_flow_lookups", "Flow-table lookups of VIP packets: hit, miss (Maglev chose), "
        "stale (the flow's backend is gone or its id was reused: chosen again)",
        labels=["result"])
    steered = CounterMetricFamily(
        "pyxlb_icmp_steered", "ICMP fragmentation-needed / packet-too-big errors about a VIP "
        "flow, sent on to that flow's backend (their frames are also counted in "
        "pyxlb_xdp_actions_total)")
    limited = CounterMetricFamily(
        "pyxlb_flow_insert_limited", "New flows balanced by the ring but not recorded in the "
        "flow table: their CPU had recorded its --max-inserts this second (a flood of new "
        "flows, or a limit too low for the real rate)")
    midstream = CounterMetricFamily(
        "pyxlb_flow_midstream_misses", "TCP segments without SYN that found no flow (also "
        "counted as pyxlb_flow_lookups_total{result=\"miss\"}): connections the flow table "
        "had forgotten (too small for the live flows: raise --max-flows) or that came from "
        "another LB node or one that restarted")
    chain = CounterMetricFamily(
        "pyxlb_chain_packets", "Stateless VIPs' chaining: packets a balancer sent carrying "
        "their ring slot's previous owner (sent), mid-connection TCP segments a backend "
        "without the connection passed on to that owner (forwarded) or kept because the "
        "owner named no known peer (no_peer); each is also counted by its action",
        labels=["event"])
    for name, value in sorted(stats.items()):
        if name in CHAIN_EVENTS:
            chain.add_metric([CHAIN_EVENTS[name]], value)
        elif name in FLOW_LOOKUPS:
            lookups.add_metric([FLOW_LOOKUPS[name]], value)
        elif name == ICMP_STEERED:
            steered.add_metric([], value)
        elif name == MIDSTREAM_MISSES:
            midstream.add_metric([], value)
        elif name == INSERT_LIMITED:
            limited.add_metric([], value)
        else:
            actions.add_metric(list(action_of(name)), value)
    yield actions
    yield lookups
    yield steered
    yield midstream
    yield limited
    yield chain


def _per_id(kind: str, helps: Dict[str, str], names: Dict[int, str], read) -> Iterator[Metric]:
    """pyxlb_<kind>_{packets,bytes,new_flows}_total labelled <kind>=name, one sample per id
    of `names`, with the counters read(id) returns."""
    families = {c: CounterMetricFamily(f"pyxlb_{kind}_{c}", helps[c], labels=[kind])
                for c in ("packets", "bytes", "new_flows")}
    for ident, name in sorted(names.items(), key=lambda kv: kv[1]):
        counters = read(ident)
        for c, family in families.items():
            family.add_metric([name], counters[c])
    yield from families.values()


def _vips(dp) -> Dict[int, Tuple[str, int]]:
    """{VIP id: (label, VIP_* flags)} of every VIP in xlb_vips now."""
    out = {}
    for k, v in dp.tables.vips.records():
        out[v["vip_id"]] = (vip_label(k["family"], k["addr"], k["port"], k["proto"]),
                            v["flags"])
    return out


def _backends(dp) -> Dict[int, Tuple[str, str]]:
    """{backend id: (address, "active" | "draining")} of every id in use now."""
    states = {L.BACKEND_ACTIVE: "active", L.BACKEND_DRAINING: "draining"}
    return {bid: (str(rec.address), states[rec.state])
            for bid, rec in dp.tables.backends.read().items() if rec.state in states}


HEALTH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                  5.0)


class HealthCollector(Collector):
    """The health checker's verdicts and counts, from `source()`: a list of
    {vip, backend, verdict ("up"/"down"), transitions: {up, down}, checks, failed_checks}
    (what pyxlb.health's Target.status() gives), read at each scrape."""

    def __init__(self, source):
        self.source = source

    def collect(self) -> Iterator[Metric]:
        rows = self.source()
        health = GaugeMetricFamily(
            "pyxlb_backend_health", "Health-check verdict of each checked (VIP, backend): 1 "
            "up, 0 down (out of the VIP's ring)", labels=["vip", "backend"])
        transitions = CounterMetricFamily(
            "pyxlb_backend_health_transitions", "Verdict changes of each checked (VIP, "
            "backend), by the verdict it changed to", labels=["vip", "backend", "to"])
        checks = CounterMetricFamily(
            "pyxlb_backend_health_checks", "Health checks of each (VIP, backend), by result",
            labels=["vip", "backend", "result"])
        for r in rows:
            labels = [r["vip"], r["backend"]]
            health.add_metric(labels, 1 if r["verdict"] == "up" else 0)
            for to in ("up", "down"):
                transitions.add_metric(labels + [to], r["transitions"][to])
            checks.add_metric(labels + ["ok"], r["checks"] - r["failed_checks"])
            checks.add_metric(labels + ["fail"], r["failed_checks"])
        yield health
        yield transitions
        yield checks


def add_health(registry: CollectorRegistry, source):
    """Register the health checker's metrics (HealthCollector over `source`) and the check
    duration histogram; returns observe(seconds), to be called after each check."""
    registry.register(HealthCollector(source))
    hist = Histogram("pyxlb_health_check_duration_seconds", "Time from a health check's "
                     "start to its result (a connection, a status line, an error or the "
                     "timeout), to within 5 ms", buckets=HEALTH_BUCKETS, registry=registry)
    return hist.observe


def make_registry(dp) -> CollectorRegistry:
    """A registry holding the datapath's metrics, and the apply-duration histogram fed by
    `dp.on_apply` (called with each ApplyResult; a hook already there is still called)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatapathCollector(dp))
    hist = Histogram("pyxlb_apply_duration_seconds", "Duration of Datapath.apply calls that "
                     "wrote something, observed in this process only", buckets=APPLY_BUCKETS,
                     registry=registry)
    previous = dp.on_apply

    def on_apply(result) -> None:
        hist.observe(result.seconds)
        if previous is not None:
            previous(result)

    dp.on_apply = on_apply
    return registry


def start_server(registry: CollectorRegistry, host: str, port: int):
    """Serve `registry` at http://host:port/metrics on a thread of its own; returns
    (server, thread, url). Stop it with stop_server(server, thread)."""
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:      # port taken, address not ours, name not resolved
        raise PyxlbError(f"cannot serve metrics on {host}:{port}: "
                         f"{exc.strerror or exc}") from None
    bound_host, bound_port = server.server_address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return server, thread, f"http://{shown}:{bound_port}/metrics"


def stop_server(server, thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join()


def serve(dp, host: str, port: int) -> None:
    """Serve the metrics of `dp` over HTTP on host:port (an IPv4 or IPv6 address, or a
    name) until interrupted: Ctrl-C, or SIGTERM (how a container is stopped), both end it
    cleanly."""
    server, thread, url = start_server(make_registry(dp), host, port)
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print(f"pyxlb: metrics on {url}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        stop_server(server, thread)
