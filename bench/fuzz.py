"""The fuzzers, run long: `make fuzz`.

Run: .venv/bin/python bench/fuzz.py [--mutations N] [--model-packets N] [--cli-cases N]
                                    [--seed S] [--jobs J] [--out bench/results/fuzz.json]

Three parts, each a pytest run of the suite's own fuzz tests made bigger by their
environment variables (two at a time by default, one per vCPU):

- mutations: tests/fuzz/test_packet_mutations.py, PYXLB_FUZZ_MUTATIONS mutated frames
  (default 2,000,000: 1,500,000 through the balancer, 500,000 through the decapsulator),
  seed PYXLB_FUZZ_SEED (default: a fresh random one, printed and saved);
- model: the kernel against tests/support/model.py (tests/datapath/test_model_vs_kernel.py,
  test_kernel_decides_like_the_model), PYXLB_MODEL_PACKETS random packets (default
  100,000);
- cli: tests/fuzz/test_cli_inputs.py, the CLI's bad-input corpus, PYXLB_FUZZ_CLI_CASES
  mutated state files (default 20,000, about 3 minutes), seed PYXLB_FUZZ_CLI_SEED (default:
  the run's seed), when the file exists.

It prints the time of each part, a table of frames per outcome (the XDP action and reason
of pyxlb.metrics) and the number of invariant violations, writes bench/results/fuzz.json,
and exits 1 when any part failed (the failing part's pytest output is printed: each
violation with its seed, mutation index, frame in hex and a replay command).
"""

import argparse
import concurrent.futures
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_info, write_results  # noqa: E402

from pyxlb import metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI_TESTS = "tests/fuzz/test_cli_inputs.py"
DEFAULTS = {"mutations": 2_000_000, "model_packets": 100_000, "cli_cases": 20_000}


def _env_int(name, default):
    value = os.environ.get(name)
    return int(value) if value else default


def parts(args):
    """(name, pytest arguments, extra environment, size) of each part to run."""
    out = [("mutations", ["tests/fuzz/test_packet_mutations.py", "-k",
                          "balancer_mutations or decap_mutations"],
            {"PYXLB_FUZZ_MUTATIONS": str(args.mutations), "PYXLB_FUZZ_SEED": str(args.seed)},
            f"{args.mutations} mutated frames, seed {args.seed}"),
           ("model", ["tests/datapath/test_model_vs_kernel.py", "-k",
                      "test_kernel_decides_like_the_model"],
            {"PYXLB_MODEL_PACKETS": str(args.model_packets)},
            f"{args.model_packets} packets")]
    if os.path.exists(os.path.join(ROOT, CLI_TESTS)):
        cli_seed = os.environ.get("PYXLB_FUZZ_CLI_SEED") or str(args.seed)
        out.append(("cli", [CLI_TESTS], {"PYXLB_FUZZ_CLI_CASES": str(args.cli_cases),
                                         "PYXLB_FUZZ_CLI_SEED": cli_seed},
                    f"{args.cli_cases} state-file mutations (and a quarter as many "
                    f"argument mutations), seed {cli_seed}"))
    else:
        print(f"({CLI_TESTS} does not exist: no CLI part)")
    return out


def run_part(name, pytest_args, extra_env, report_dir):
    report = os.path.join(report_dir, f"{name}.json")
    env = dict(os.environ, PYXLB_FUZZ_REPORT=report, **extra_env)
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *pytest_args]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    try:
        with open(report) as fh:
            data = json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    summary = lines[-1].strip("= ") if lines else ""
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)",
                                                summary)}
    return {"name": name, "returncode": proc.returncode, "seconds": round(seconds, 1),
            "pytest": summary, "tests": counts, "report": data,
            "output": proc.stdout + proc.stderr}


def outcome_table(results):
    """Rows (outcome, action, reason, {column: count}) over every part that counted."""
    columns, rows = [], {}
    for r in results:
        for key, section in sorted(r["report"].items()):
            column = key.replace("mutations_", "")
            columns.append(column)
            for outcome, n in section.get("outcomes", {}).items():
                rows.setdefault(outcome, {})[column] = n
            for outcome, n in section.get("also_counted", {}).items():
                rows.setdefault(f"({outcome})", {})[column] = n
    order = sorted(rows, key=lambda o: (o.startswith("("), -sum(rows[o].values())))
    return columns, [(o, *(metrics.action_of(o) if not o.startswith("(") else ("", "")),
                      rows[o]) for o in order]


def violations_of(r):
    """Invariant violations a part found: counted by the mutation fuzzer; for the other
    parts, their failed tests (each stops at its first failure)."""
    counted = [s["violations"] for s in r["report"].values() if "violations" in s]
    if counted:
        extra = r["tests"].get("failed", 0) - sum(1 for n in counted if n)
        return sum(counted) + max(0, extra) + r["tests"].get("error", 0)
    bad = r["tests"].get("failed", 0) + r["tests"].get("error", 0)
    return bad or int(r["returncode"] not in (0, 5))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mutations", type=int,
                    default=_env_int("PYXLB_FUZZ_MUTATIONS", DEFAULTS["mutations"]))
    ap.add_argument("--model-packets", type=int,
                    default=_env_int("PYXLB_MODEL_PACKETS", DEFAULTS["model_packets"]))
    ap.add_argument("--cli-cases", type=int,
                    default=_env_int("PYXLB_FUZZ_CLI_CASES", DEFAULTS["cli_cases"]))
    ap.add_argument("--seed", type=int,
                    default=_env_int("PYXLB_FUZZ_SEED", random.SystemRandom().randrange(2**31)))
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="parts run at once (default: 2, or 1 on one CPU)")
    ap.add_argument("--out", default=None, help="results file (default bench/results/fuzz.json)")
    args = ap.parse_args(argv)

    todo = parts(args)
    print(f"fuzzing: seed {args.seed}, {len(todo)} parts, {args.jobs} at a time")
    for name, _, _, size in todo:
        print(f"  {name:10} {size}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyxlb-fuzz-") as report_dir:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(run_part, name, pytest_args, env, report_dir)
                       for name, pytest_args, env, _ in todo]
            results = []
            for future in concurrent.futures.as_completed(futures):
                r = future.result()
                results.append(r)
                print(f"  done: {r['name']:10} {r['seconds']:8.1f} s  {r['pytest']}", flush=True)
    elapsed = time.monotonic() - started
    results.sort(key=lambda r: [p[0] for p in todo].index(r["name"]))

    columns, rows = outcome_table(results)
    print()
    head = f"{'outcome':22} {'action':9} {'reason':14}" + "".join(f" {c:>11}" for c in columns)
    print(head)
    print("-" * len(head))
    for outcome, action, reason, counts in rows:
        print(f"{outcome:22} {action:9} {reason:14}"
              + "".join(f" {counts.get(c, 0):>11}" for c in columns))
    print("-" * len(head))
    totals = {}
    for r in results:
        for key, section in r["report"].items():
            totals[key.replace("mutations_", "")] = section.get("mutations",
                                                                section.get("packets", 0))
    print(f"{'frames':47}" + "".join(f" {totals.get(c, 0):>11}" for c in columns))
    print("(parenthesised: counted beside the outcome, not instead of one)")

    violations = {r["name"]: violations_of(r) for r in results}
    print()
    print(f"{'part':10} {'seconds':>8} {'violations':>10}  pytest")
    for r in results:
        print(f"{r['name']:10} {r['seconds']:8.1f} {violations[r['name']]:>10}  {r['pytest']}")
    total = sum(violations.values())
    print(f"\n{total} violations; {elapsed / 60:.1f} min in all (seed {args.seed})")
    for r in results:
        if r["returncode"] not in (0, 5):
            print(f"\n--- {r['name']}: pytest output (last 150 lines) ---")
            print("\n".join(r["output"].splitlines()[-150:]))

    data = {"machine": machine_info(), "seed": args.seed, "jobs": args.jobs,
            "elapsed_s": round(elapsed, 1), "violations": total,
            "sizes": {"mutations": args.mutations, "model_packets": args.model_packets,
                      "cli_cases": args.cli_cases if any(r["name"] == "cli" for r in results)
                      else None},
            "notes": ["mutations: three quarters through the balancer, one quarter through "
                      "the decapsulator; every frame checked (tests/fuzz/"
                      "test_packet_mutations.py)",
                      "model: packets per the model's outcome; the test stops at its first "
                      "mismatch, so its violations are 0 or 1"],
            "parts": [{k: v for k, v in r.items() if k != "output"} for r in results]}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        path = args.out
    else:
        path = write_results("fuzz", data)
    print(f"results: {path}")
    return 1 if total or any(r["returncode"] not in (0, 5) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
