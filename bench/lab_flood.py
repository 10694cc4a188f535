"""Real connections through a flood of forged new flows, and the flow table's capacity.

Run as root: .venv/bin/python bench/lab_flood.py [--quick]. Prints two tables, writes
bench/results/lab_flood.json.

Survival (issue 20; the scenario of tests/support/labflood.py, the lab test's own, with more
detail): in a fresh namespace lab per case, `--connections` real long-lived TCP connections
open through lb1's VIP (served by be1 and be2); they idle (sent their request head and a few
chunks, then nothing) or stay active (a chunk every 50 ms); then `--flows` forged flows of
two packets each (a SYN, then an ACK, from new addresses and ports) go through lb1's
balancer as fast as the generator runs it, on every CPU, `lag` flows at a time (lag 1: each
ACK right behind its SYN; 2^20: 2 Mi packets between them, over 67 ms at up to 31 Mpps a
core); then be3 is added (the Maglev ring changes) and every connection sends the rest of
its body. A connection survives when it was not reset and the backend that answers is the
one that accepted it. Besides the share: the forged packets per second achieved, and the
balancer's counters during the flood (flows missed, i.e. new; hits; insertions refused by
a rate limit, where the datapath has one).

Capacity (issue 20, "a capacity that means what it says"): in a fresh lab, `--capacity`
distinct established flows (TCP ACKs and UDP) through lb1, each first sending two packets
in a row (to be admitted as a real flow), then `--passes` passes in which each sends one
packet; the share of flow-table hits in each pass, from the balancer's counters (the
default table, and one that `--max-flows N` (and `--max-flows6 N`) asks for N = those
flows). Each with nothing else between the passes, and with `--churn` new one-packet flows
before each pass (what a node sees from new clients while its connections idle). "rated":
the flows the tables are rated for (Datapath.flow_capacities()).

How the flood reaches the balancer: the generator (xdp/bench/gen.bpf.c, gen_chain) runs
with BPF_PROG_TEST_RUN in lb1's namespace with lb1's eth0 as the ingress interface and
tail-calls lb1's own attached balancer program each iteration: same program, same maps,
same interface; only the transmission is left out (this kernel refuses the live-frames mode
with EPERM). So "Mpps" is the rate one balancer core handles forged packets, the generator's
cost included.
"""

import argparse
import dataclasses
import os
import signal
import sys
import time
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests.support

from common import machine_info, write_results  # noqa: E402

from pyxlb import netns  # noqa: E402
from pyxlb.state import DesiredState  # noqa: E402
from pyxlb.lab import BACKENDS, CLIENT, Lab  # noqa: E402

from tests.lab.helpers import EPHEMERAL  # noqa: E402
from tests.support.labflood import Flood, survival  # noqa: E402


def lab_up(prefix: str, max_flows: Optional[int] = None) -> Lab:
    lab = Lab(prefix, max_flows=max_flows, max_flows6=max_flows)
    lab.up()
    with netns.enter(lab.ns(CLIENT)):
        with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
            f.write(f"{EPHEMERAL[0]} {EPHEMERAL[1]}")
    lab.route_via("lb1")
    return lab


def survival_case(prefix: str, family: int, activity: str, lag: int, flows: int,
                  connections: int) -> dict:
    lab = lab_up(prefix)
    try:
        with Flood(lab, "lb1") as flood:
            with lab.datapath("lb1") as dp:
                capacity = dp.flow_capacities()
            r = survival(lab, flood, family, range(21000, 21000 + connections),
                         active=activity == "active", flows=flows, lag=lag)
    finally:
        lab.down()
    out = r.as_dict()
    out["lag"] = lag
    out["flow_capacities"] = {"ipv4": capacity[0], "ipv6": capacity[1]}
    return out


def capacity_case(prefix: str, family: int, flows: int, passes: int, churn: int,
                  max_flows: Optional[int]) -> dict:
    lab = lab_up(prefix, max_flows)
    try:
        # the generator's established flows are half TCP, half UDP: the VIP serves both,
        # so that every one of them is balanced and recorded
        tcp = lab.vip(family, mode="ipip", backends=BACKENDS)
        udp = dataclasses.replace(tcp, key=dataclasses.replace(tcp.key, protocol="udp"))
        lab.apply(DesiredState((tcp, udp)))
        with Flood(lab, "lb1") as flood:
            with lab.datapath("lb1") as dp:
                capacity = dp.flow_capacities()
            admit = flood.established(family, flows, burst=2, passes=1, timeout=120)
            rounds = []
            for _ in range(passes):
                if churn:
                    flood.new_flows(family, churn, timeout=120)
                rep = flood.established(family, flows, burst=1, passes=1, timeout=120)
                s = rep.stats
                looked = s["flow_hit"] + s["flow_miss"]
                rounds.append({"hit_share": s["flow_hit"] / looked if looked else 0.0,
                               "flow_hit": s["flow_hit"], "flow_miss": s["flow_miss"],
                               "mpps_per_core": rep.mpps_per_core})
    finally:
        lab.down()
    return {"family": family, "flows": flows, "churn": churn, "max_flows": max_flows,
            "flow_capacities": {"ipv4": capacity[0], "ipv6": capacity[1]},
            "admission": {"flow_hit": admit.stats["flow_hit"],
                          "flow_miss": admit.stats["flow_miss"]},
            "passes": rounds}


def print_survival(rows: List[dict]) -> None:
    head = (f"{'family':<6} {'conns':>5} {'lag':>5}  {'survived':>15} {'reset':>5} "
            f"{'moved':>5}  {'forged flows':>12} {'Mpps':>5} {'Mpps/core':>9} "
            f"{'new (miss)':>10} {'hits':>10} {'insert-limited':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        f = r["flood"]
        s = f["stats"]
        print(f"IPv{r['family']:<2} {r['activity']:<6} {r['connections']:>5} {r['lag']:>5}  "
              f"{r['survived']:>5} ({r['share']:7.2%}) {r['reset']:>5} {r['moved']:>5}  "
              f"{f['flows_sent']:>12,} {f['mpps']:>5.2f} {f['mpps_per_core']:>9.2f} "
              f"{s['flow_miss']:>10,} {s['flow_hit']:>10,} {s['flow_insert_limited']:>14,}")


def print_capacity(rows: List[dict]) -> None:
    head = (f"{'family':<6} {'flows':>9} {'--max-flows':>11} {'new between':>11} "
            f"{'rated (v4 / v6)':>21}  flow-hit share per pass")
    print(head)
    print("-" * len(head))
    for r in rows:
        c = r["flow_capacities"]
        shares = ", ".join(f"{p['hit_share']:.2%}" for p in r["passes"])
        asked = f"{r['max_flows']:,}" if r["max_flows"] else "default"
        print(f"IPv{r['family']:<3} {r['flows']:>9,} {asked:>11} {r['churn']:>11,} "
              f"{c['ipv4']:>9,} / {c['ipv6']:<9,}  {shares}")


def families(text: str) -> List[int]:
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or any(f not in (4, 6) for f in out):
        raise argparse.ArgumentTypeError(f"families are 4 and/or 6, comma-separated, "
                                         f"not {text!r}")
    return out


def positive_ints(text: str) -> List[int]:
    try:
        out = [int(x) for x in text.split(",")]
    except ValueError:
        out = []
    if not out or any(x < 1 for x in out):
        raise argparse.ArgumentTypeError(f"expected positive integers, comma-separated, "
                                         f"not {text!r}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Each case builds its own namespace lab (prefix --prefix, a few seconds).")
    parser.add_argument("--quick", action="store_true",
                        help="idle connections, lag 1 only; capacity with 2 passes")
    parser.add_argument("--families", type=families, default=[4, 6], help="default 4,6")
    parser.add_argument("--flows", type=int, default=5_000_000,
                        help="forged two-packet flows a case (default 5,000,000)")
    parser.add_argument("--connections", type=int, default=1000,
                        help="real connections a case (default 1000)")
    parser.add_argument("--lags", type=positive_ints, default=[1, 1 << 20],
                        help="forged flows whose SYNs go before their ACKs (default "
                             "1,1048576: ACKs right behind their SYNs; ACKs 2 Mi packets "
                             "after them)")
    parser.add_argument("--capacity", type=int, default=1_000_000,
                        help="established flows of the capacity check (0: skip; "
                             "default 1,000,000)")
    parser.add_argument("--passes", type=int, default=3,
                        help="passes of the capacity check (default 3)")
    parser.add_argument("--churn", type=int, default=None,
                        help="the capacity check's second run: new one-packet flows before "
                             "each pass, as a node sees while its connections idle (default: "
                             "as many as --capacity; 0: no second run)")
    parser.add_argument("--prefix", default=f"fkb{os.getpid() % 10000}",
                        help="the labs' namespace prefix (default fkb<pid>)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("flood: needs root (namespaces, XDP, bpffs)")
    if args.flows < 1 or not 1 <= args.connections <= 10000:
        sys.exit("flood: --flows must be positive and --connections 1-10000")
    if args.capacity < 0 or args.capacity % 2 or args.passes < 1 or (args.churn or 0) < 0:
        sys.exit("flood: --capacity must be even (0 skips it), --passes positive, --churn "
                 "not negative")
    if Lab(args.prefix).exists():
        sys.exit(f"flood: a lab with prefix {args.prefix!r} exists already")
    activities = ["idle"] if args.quick else ["idle", "active"]
    lags = [1] if args.quick else args.lags
    passes = 2 if args.quick else args.passes
    main_pid = os.getpid()
    # SIGTERM ends the run through its finally clauses (the labs come down); a process
    # forked from this one (pyroute2 forks to make namespaces) just ends
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143) if os.getpid() == main_pid
                  else os._exit(143))

    t0 = time.monotonic()
    rows, caps = [], []
    for family in args.families:
        for activity in activities:
            for lag in lags:
                r = survival_case(args.prefix, family, activity, lag, args.flows,
                                  args.connections)
                rows.append(r)
                print(f"  IPv{family} {activity:<6} lag {lag:>5}: {r['survived']} of "
                      f"{r['connections']} survived ({r['share']:.2%}), forged "
                      f"{r['flood']['mpps']:.2f} Mpps", flush=True)
    churns = [0] + ([args.capacity if args.churn is None else args.churn]
                     if args.churn != 0 else [])
    if args.capacity:
        for family in args.families:
            for max_flows in (None, args.capacity):
                for churn in churns:
                    c = capacity_case(args.prefix, family, args.capacity, passes, churn,
                                      max_flows)
                    caps.append(c)
                    shares = ", ".join(f"{p['hit_share']:.2%}" for p in c["passes"])
                    print(f"  capacity IPv{family}: {args.capacity:,} flows, --max-flows "
                          f"{max_flows or 'default'}, {churn:,} new between passes: hit "
                          f"share {shares}", flush=True)
    elapsed = time.monotonic() - t0

    print(f"\nSurvival: {args.connections} real connections through lb1, "
          f"{args.flows:,} forged two-packet flows, then be3 joins the ring\n")
    print_survival(rows)
    print("\nMpps: forged packets through the balancer per wall second (all CPUs); "
          "Mpps/core: per second\n  of the generator calls' own time (generator and "
          "balancer on one core). new (miss), hits,\n  insert-limited: the balancer's "
          "counters during the flood.")
    if caps:
        print(f"\nCapacity: established flows, each admitted with two packets in a row, "
              f"then {passes} passes\n(one packet a flow), with that many new one-packet "
              f"flows before each pass\n")
        print_capacity(caps)
    path = write_results("lab_flood", {
        "machine": machine_info(), "quick": args.quick, "elapsed_s": round(elapsed, 1),
        "flows": args.flows, "connections": args.connections,
        "notes": [
            "the generator tail-calls lb1's attached balancer under BPF_PROG_TEST_RUN "
            "(ingress lb1 eth0): the balancer's work and tables are real, nothing forged is "
            "transmitted (live frames are refused with EPERM on this kernel)",
            "survived: not reset, answered by the backend that accepted the connection, "
            "after the flood and be3's joining the ring (be1, be2 before)",
            "idle: the connections sent nothing during the flood; active: a 64-byte chunk "
            "every 50 ms each",
        ],
        "survival": rows, "capacity": caps})
    print(f"\nresults: {path} ({elapsed:.0f} s)")


if __name__ == "__main__":
    main()
