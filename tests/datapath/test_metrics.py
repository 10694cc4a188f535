"""The Prometheus exporter over a real datapath: a state applied with Datapath.apply, the
exporter's HTTP server on an ephemeral port, scrapes parsed with prometheus_client's own
parser, and frames pushed through the program (BPF_PROG_TEST_RUN) moving the counters by
exactly what was sent.

Next hops are set by hand to ifindex 1 after apply: with no ctx the test run's ingress is
ifindex 1, so every balanced frame leaves with XDP_TX.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import urllib.request
from collections import Counter
from typing import Dict, Tuple

import pytest
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families

from pyxlb import _bpf, metrics
from pyxlb import _layouts as L
from pyxlb.config import load_text
from pyxlb.datapath import FLOWS_PER_SET, Datapath, maps

from . import packets as P
from .raw import raw_nexthops

SMALL = {maps.FLOWS6: 1024, maps.FLOWS4: 2048, maps.BACKENDS: 64, maps.NEXTHOPS: 64,
         maps.BACKEND_STATS: 64}

WEB80, WEB443, WEB6, DNS = ("10.0.0.10:80/tcp", "10.0.0.10:443/tcp", "[fd00::10]:80/tcp",
                            "10.0.0.20:53/udp")
STATE = f"""
vips:
  - vip: {WEB80}
    backends: [{{address: 10.1.0.1}}, {{address: 10.1.0.2}}]
  - vip: {WEB443}
    backends: [{{address: 10.1.0.1}}, {{address: 10.1.0.2}}]
  - vip: "{WEB6}"
    backends: [{{address: "fd00:1::1"}}]
  - vip: {DNS}
    backends: [{{address: 10.1.0.3, state: draining}}]
"""
BACKEND_ADDRS = {"10.1.0.1", "10.1.0.2", "10.1.0.3", "fd00:1::1"}

COUNTER_FAMILIES = {
    "pyxlb_xdp_actions": {"action", "reason"},
    "pyxlb_flow_lookups": {"result"},
    "pyxlb_icmp_steered": set(),
    "pyxlb_flow_midstream_misses": set(),
    "pyxlb_flow_insert_limited": set(),
    "pyxlb_chain_packets": {"event"},
    "pyxlb_vip_packets": {"vip"},
    "pyxlb_vip_bytes": {"vip"},
    "pyxlb_vip_new_flows": {"vip"},
    "pyxlb_backend_packets": {"backend"},
    "pyxlb_backend_bytes": {"backend"},
    "pyxlb_backend_new_flows": {"backend"},
    "pyxlb_vip_source_range_drops": {"vip"},
}
GAUGE_FAMILIES = {
    "pyxlb_vips": set(),
    "pyxlb_backends": {"state"},
    "pyxlb_flow_table_entries": set(),
    "pyxlb_flow_table_max_entries": set(),
    "pyxlb_flow_table_ways": set(),
    "pyxlb_flow_insert_limit": {"family"},
}

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def _raw_hop_everything_to_lo(dp: Datapath) -> None:
    raw_nexthops(dp, dmac=P.NEXTHOP_MAC, smac=P.EGRESS_MAC)


@pytest.fixture
def exporter():
    """(datapath with STATE applied, URL of its metrics), shut down afterwards."""
    dp = Datapath.load(map_sizes=SMALL)
    server = thread = None
    try:
        dp.configure(seed=P.SEED, src4=P.SRC4, src6=P.SRC6)
        registry = metrics.make_registry(dp)
        dp.apply(load_text(STATE))
        _raw_hop_everything_to_lo(dp)
        server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
        yield dp, f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
            thread.join()
        dp.close()


def scrape(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        return list(text_string_to_metric_families(resp.read().decode()))


def samples(families) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in families for s in f.samples}


def value(got: Samples, name: str, **labels) -> float:
    return got[(name, tuple(sorted(labels.items())))]


def moved(before: Samples, after: Samples) -> Samples:
    """Samples whose value changed (new samples count from 0)."""
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def ip_len(frame: bytes) -> int:
    return len(frame) - 14      # untagged Ethernet


def test_families_types_and_labels(exporter):
    dp, url = exporter
    families = {f.name: f for f in scrape(url)}
    for name, labels in COUNTER_FAMILIES.items():
        assert families[name].type == "counter", name
        for s in families[name].samples:
            assert s.name == f"{name}_total"
            assert set(s.labels) == labels, s
    for name, labels in GAUGE_FAMILIES.items():
        assert families[name].type == "gauge", name
        for s in families[name].samples:
            assert set(s.labels) == labels, s
    assert families["pyxlb_apply_duration_seconds"].type == "histogram"

    got = samples(families.values())
    for kind in ("packets", "bytes", "new_flows"):
        vips = {s.labels["vip"] for s in families[f"pyxlb_vip_{kind}"].samples}
        assert vips == {WEB80, WEB443, WEB6, DNS}
        backends = {s.labels["backend"] for s in families[f"pyxlb_backend_{kind}"].samples}
        assert backends == BACKEND_ADDRS
    assert value(got, "pyxlb_vips") == 4
    assert value(got, "pyxlb_backends", state="active") == 3
    assert value(got, "pyxlb_backends", state="draining") == 1
    assert value(got, "pyxlb_flow_table_entries") == 0
    # from the maps' real sizes: ways, the established flows they are rated for
    # (FLOWS_PER_SET a set) and the default insertion limits (ways / CPUs a CPU)
    sets4, sets6 = dp.maps[maps.FLOWS4].max_entries, dp.maps[maps.FLOWS6].max_entries
    assert (sets4, sets6) == (SMALL[maps.FLOWS4], SMALL[maps.FLOWS6])
    ways4, ways6 = sets4 * L.FLOW4_WAYS, sets6 * L.FLOW6_WAYS
    assert value(got, "pyxlb_flow_table_ways") == ways4 + ways6
    assert value(got, "pyxlb_flow_table_max_entries") == \
        int(sets4 * FLOWS_PER_SET) + int(sets6 * FLOWS_PER_SET)
    ncpus = os.cpu_count()      # online CPUs: those that take packets
    assert value(got, "pyxlb_flow_insert_limit", family="ipv4") == ways4 // ncpus
    assert value(got, "pyxlb_flow_insert_limit", family="ipv6") == ways6 // ncpus
    assert value(got, "pyxlb_apply_duration_seconds_count") == 1

    # every global counter is exported once, and nothing has counted yet
    stat_samples = [k for k in got if k[0] in ("pyxlb_xdp_actions_total",
                                               "pyxlb_flow_lookups_total",
                                               "pyxlb_icmp_steered_total",
                                               "pyxlb_flow_midstream_misses_total",
                                               "pyxlb_flow_insert_limited_total",
                                               "pyxlb_chain_packets_total")]
    assert len(stat_samples) == len(L.STAT_NAMES)
    assert not any(got[k] for k in got if k[0].endswith("_total"))


def test_counters_move_by_the_packets_sent(exporter):
    dp, url = exporter
    flows = {   # frame -> how many times it is sent
        P.tcp4(sport=40001): 3,                     # WEB80: one flow, a miss then hits
        P.tcp4(sport=40002, dport=443): 1,          # WEB443: two flows
        P.tcp4(sport=40003, dport=443): 1,
        P.tcp6(sport=40004): 1,                     # WEB6
        P.tcp4(sport=40005, tcp_flags="A"): 2,      # WEB80: mid-connection, unknown here
    }
    dropped = P.udp4(dst="10.0.0.20", dport=53)     # DNS: its only backend is draining
    passed = P.tcp4(dst="10.0.0.99")                # not a VIP

    before = samples(scrape(url))
    for frame, times in flows.items():
        for _ in range(times):
            action, _ = dp.run(frame)
            assert action == _bpf.XDP_TX
    assert dp.run(dropped)[0] == _bpf.XDP_DROP
    assert dp.run(passed)[0] == _bpf.XDP_PASS
    after = samples(scrape(url))

    # which backend each flow went to, from the flow table
    by_port = {k["sport"]: v["backend_id"] for k, v in dp.flows()}
    address = {bid: str(addr) for addr, bid in dp.layout().backend_ids.items()}
    vip_of = {40001: WEB80, 40002: WEB443, 40003: WEB443, 40004: WEB6, 40005: WEB80}
    want: Samples = Counter()
    for (frame, times), sport in zip(flows.items(), vip_of):
        for kind, label, who in (("vip", "vip", vip_of[sport]),
                                 ("backend", "backend", address[by_port[sport]])):
            want[(f"pyxlb_{kind}_packets_total", ((label, who),))] += times
            want[(f"pyxlb_{kind}_bytes_total", ((label, who),))] += times * ip_len(frame)
            want[(f"pyxlb_{kind}_new_flows_total", ((label, who),))] += 1
    want[("pyxlb_vip_packets_total", (("vip", DNS),))] += 1
    want[("pyxlb_vip_bytes_total", (("vip", DNS),))] += ip_len(dropped)
    want[("pyxlb_xdp_actions_total", (("action", "tx"), ("reason", "forwarded")))] += 8
    want[("pyxlb_xdp_actions_total", (("action", "drop"), ("reason", "no_backend")))] += 1
    want[("pyxlb_xdp_actions_total", (("action", "pass"), ("reason", "not_vip")))] += 1
    want[("pyxlb_flow_lookups_total", (("result", "miss"),))] += 6
    want[("pyxlb_flow_lookups_total", (("result", "hit"),))] += 3
    want[("pyxlb_flow_midstream_misses_total", ())] += 1    # its first segment only
    want[("pyxlb_flow_table_entries", ())] += 5
    assert moved(before, after) == dict(want)


@pytest.fixture
def one_cpu():
    """This thread on one CPU (its first allowed) while the test runs: the insertion
    budget is per CPU, and a test run counts on the CPU it runs on."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def test_insertion_limit_gauges_and_the_flows_it_leaves_out(exporter, one_cpu):
    """Above its limit a CPU still balances a new flow but does not record it: the counter
    moves by the flows left out, the table by those recorded, and each family has its own
    budget."""
    dp, url = exporter
    assert dp.set_insert_limits(3) == (3, 3)
    before = samples(scrape(url))
    assert value(before, "pyxlb_flow_insert_limit", family="ipv4") == 3
    assert value(before, "pyxlb_flow_insert_limit", family="ipv6") == 3
    new4 = [P.tcp4(sport=41000 + i) for i in range(5)]
    new6 = [P.tcp6(sport=42000 + i) for i in range(3)]
    out = []
    for frame in new4 + new6:           # well within the second a budget lasts
        action, sent = dp.run(frame)
        assert action == _bpf.XDP_TX
        out.append(sent)
    got = moved(before, samples(scrape(url)))
    assert got[("pyxlb_flow_insert_limited_total", ())] == 2       # IPv4's 4th and 5th
    assert got[("pyxlb_flow_table_entries", ())] == 6
    assert got[("pyxlb_flow_lookups_total", (("result", "miss"),))] == 8
    assert {k["sport"] for k, _ in dp.flows()} == {41000, 41001, 41002, 42000, 42001, 42002}
    # a flow left out is still balanced, by the ring (the same backend again), and still
    # not recorded while the budget is spent
    assert dp.run(new4[4]) == (_bpf.XDP_TX, out[4])
    assert moved(before, samples(scrape(url)))[("pyxlb_flow_insert_limited_total", ())] == 3


def test_source_range_drops(exporter):
    dp, url = exporter
    state = load_text(STATE)
    dp.apply(state.with_vip(state.vip(WEB80).replace(source_ranges=("198.51.100.0/24",))))
    _raw_hop_everything_to_lo(dp)
    before = samples(scrape(url))
    # only VIPs with source ranges have the per-VIP family
    assert {k[1] for k in before if k[0] == "pyxlb_vip_source_range_drops_total"} == \
        {(("vip", WEB80),)}
    stranger = P.tcp4(src="203.0.113.9", sport=40010)
    for _ in range(2):
        assert dp.run(stranger)[0] == _bpf.XDP_DROP
    assert dp.run(P.tcp4(sport=40011))[0] == _bpf.XDP_TX        # 198.51.100.1 is in
    got = moved(before, samples(scrape(url)))
    assert got[("pyxlb_xdp_actions_total", (("action", "drop"), ("reason", "source_range")))] \
        == 2
    assert got[("pyxlb_vip_source_range_drops_total", (("vip", WEB80),))] == 2
    assert got[("pyxlb_vip_packets_total", (("vip", WEB80),))] == 1    # the admitted one


def test_apply_durations_are_observed(exporter):
    dp, url = exporter
    state = load_text(STATE)
    smaller = state.without_vip(DNS)
    dp.apply(smaller)
    dp.apply(smaller)       # nothing to write: not an apply that is observed
    got = samples(scrape(url))
    assert value(got, "pyxlb_apply_duration_seconds_count") == 2
    assert value(got, "pyxlb_apply_duration_seconds_sum") > 0
    assert value(got, "pyxlb_vips") == 3
    assert ("pyxlb_vip_packets_total", (("vip", DNS),)) not in got
    assert value(got, "pyxlb_backends", state="draining") == 0


def test_an_exporter_sees_what_another_handle_applies(bpffs_dir):
    """The exporter of a pinned datapath reads ids and labels from the maps at each scrape,
    so an apply made through another handle (another process) shows at once."""
    writer = Datapath.create(bpffs_dir, map_sizes=SMALL)
    reader = Datapath.open(bpffs_dir)
    server, thread = start_http_server(0, addr="127.0.0.1",
                                       registry=metrics.make_registry(reader))
    url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
    try:
        writer.apply(load_text(STATE))
        reader.layout()     # a reader's cached layout must not matter
        writer.apply(load_text(STATE).without_vip(WEB80).without_vip(WEB443))
        got = samples(scrape(url))
        assert {k[1][0][1] for k in got if k[0] == "pyxlb_vip_packets_total"} == {WEB6, DNS}
        assert {k[1][0][1] for k in got if k[0] == "pyxlb_backend_packets_total"} == \
            {"10.1.0.3", "fd00:1::1"}
        assert value(got, "pyxlb_apply_duration_seconds_count") == 0   # not this process
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        reader.close()
        writer.close()


SERVE = textwrap.dedent("""
    import sys
    from pyxlb import metrics
    from pyxlb.datapath import Datapath
    metrics.serve(Datapath.open(sys.argv[1]), sys.argv[2], 0)
""")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_serve_on_ipv6_until_interrupted(bpffs_dir, stop):
    """Ctrl-C, or SIGTERM (how a container is stopped), ends the exporter cleanly."""
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as dp:
        dp.apply(load_text(STATE))
        # as from a terminal: a pytest started in the background by a non-interactive shell
        # (or under nohup) ignores SIGINT, the child would inherit that and never see Ctrl-C
        proc = subprocess.Popen([sys.executable, "-c", SERVE, bpffs_dir, "::1"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            line = proc.stdout.readline().strip()
            assert line.startswith("pyxlb: metrics on http://[::1]:"), \
                (line, proc.stderr.read() if proc.poll() is not None else "")
            url = line.split(" on ", 1)[1]
            got = samples(scrape(url))
            assert value(got, "pyxlb_vips") == 4
            proc.send_signal(stop)
            out, err = proc.communicate(timeout=10)
            assert proc.returncode == 0, err
            assert "Traceback" not in err
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
