"""Benchmark the Maglev table builder: compiled vs pure-Python reference, balance, disruption.

Run: .venv/bin/python bench/maglev.py [--quick] [--out bench/results/maglev.json]

For each (M slots, N backends of equal weight) row it measures
- the median time of pyxlb.maglev.build_table (the public call, validation included),
- the median time of build_table_reference (3 runs, fewer once they have used
  REF_BUDGET_S seconds; a single run over that budget is flagged in the table),
- slot imbalance: max slots of a backend / mean slots of a backend,
- disruption: the fraction of slots that change owner when one backend is removed,
  averaged over several removed backends, and its ratio to the ideal 1/N.
It prints a table and writes the figures with machine information as JSON.
"""

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_info  # noqa: E402

from pyxlb import maglev  # noqa: E402

ROWS = [(65537, 10), (65537, 100), (65537, 1000), (65537, 10000), (655373, 1000)]
REF_BUDGET_S = 30.0
TARGET = {"M": 65537, "N": 1000, "max_median_ms": 3.0, "min_speedup": 30.0}


def backend_names(n):
    return [f"10.{i // 65536}.{i // 256 % 256}.{i % 256}:80" for i in range(n)]


def time_runs(fn, repeats, budget_s=None):
    """Run fn up to `repeats` times; return the list of durations in seconds."""
    out = []
    spent = 0.0
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            out.append(dt)
            spent += dt
            if budget_s is not None and spent >= budget_s:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return out


def bench_row(m, n, quick, rng):
    backends = [(name, 1, i) for i, name in enumerate(backend_names(n))]
    build = lambda: maglev.build_table(backends, m)  # noqa: E731

    if m <= 65537:
        repeats = 20 if quick else (200 if n <= 1000 else 60)
    else:
        repeats = 5 if quick else 30
    build()  # warm up
    fast = time_runs(build, repeats)
    fast_ms = statistics.median(fast) * 1e3

    # Reference: a few runs, no more once REF_BUDGET_S seconds are spent.
    ref = time_runs(lambda: maglev.build_table_reference(backends, m), 1 if quick else 3,
                    budget_s=REF_BUDGET_S)
    ref_ms = statistics.median(ref) * 1e3
    ref_over_budget = ref[0] > REF_BUDGET_S  # one run only; flagged in the table

    table = build()
    shares = maglev.slot_shares(table)
    mean = m / n
    imbalance = max(shares.values()) / mean

    removals = sorted(rng.sample(range(n), min(n, 3 if quick else 10)))
    moved = []
    for k in removals:
        after = maglev.build_table(backends[:k] + backends[k + 1:], m)
        moved.append(maglev.disruption(table, after))
    disrupt = statistics.mean(moved)
    return {
        "M": m,
        "N": n,
        "cython_ms_median": round(fast_ms, 4),
        "cython_ms_min": round(min(fast) * 1e3, 4),
        "cython_repeats": len(fast),
        "reference_ms_median": round(ref_ms, 2),
        "reference_repeats": len(ref),
        "reference_over_budget": ref_over_budget,
        "speedup": round(ref_ms / fast_ms, 1),
        "imbalance_max_over_mean": round(imbalance, 4),
        "disruption_mean": round(disrupt, 6),
        "disruption_over_ideal_mean": round(disrupt * n, 3),
        "disruption_over_ideal_max": round(max(moved) * n, 3),
        "removals": len(moved),
    }


def print_table(rows):
    head = (f"{'M':>7} {'N':>6} | {'cython ms':>9} {'(runs)':>6} | {'ref ms':>9} {'(runs)':>6}"
            f" | {'speedup':>7} | {'max/mean':>8} | {'disrupt':>8} {'x 1/N':>6} {'max x':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ref = f"{r['reference_ms_median']:9.1f}"
        if r["reference_over_budget"]:
            ref = f"{'>' + format(REF_BUDGET_S, '.0f') + ' s':>9}"
        print(f"{r['M']:>7} {r['N']:>6} | {r['cython_ms_median']:9.3f} {r['cython_repeats']:>6}"
              f" | {ref} {r['reference_repeats']:>6} | {r['speedup']:>6.1f}x"
              f" | {r['imbalance_max_over_mean']:8.4f} | {r['disruption_mean']:8.5f}"
              f" {r['disruption_over_ideal_mean']:6.3f} {r['disruption_over_ideal_max']:6.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "results", "maglev.json"))
    args = ap.parse_args(argv)

    rng = random.Random(2016)
    t0 = time.perf_counter()
    rows = [bench_row(m, n, args.quick, rng) for m, n in ROWS]
    elapsed = time.perf_counter() - t0

    print_table(rows)
    print("cython/ref ms: median build time (validation included); speedup = ref / cython;")
    print("max/mean: most slots of a backend over the mean M/N; disrupt: mean fraction of")
    print("slots changed when one backend is removed; x 1/N: that over the ideal 1/N (mean,")
    print("max over the removals). Equal weights, names '10.a.b.c:80'.")

    target_row = next(r for r in rows if r["M"] == TARGET["M"] and r["N"] == TARGET["N"])
    ok = (target_row["cython_ms_median"] <= TARGET["max_median_ms"]
          and target_row["speedup"] >= TARGET["min_speedup"])
    print(f"target N={TARGET['N']} M={TARGET['M']}: median {target_row['cython_ms_median']:.3f} ms"
          f" (<= {TARGET['max_median_ms']}), speedup {target_row['speedup']:.1f}x"
          f" (>= {TARGET['min_speedup']:.0f}x): {'PASS' if ok else 'FAIL'}")
    print(f"total {elapsed:.1f} s")

    result = {
        "benchmark": "maglev table build",
        "quick": args.quick,
        "machine": machine_info(),
        "weights": "equal",
        "reference_budget_s": REF_BUDGET_S,
        "rows": rows,
        "target": dict(TARGET, passed=ok),
        "elapsed_s": round(elapsed, 1),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
