"""Datapath.apply at scale: 1,000 VIPs x 100 backends loaded at once, then one backend of
one VIP changing again and again.

Run as root: `make bench` (or .venv/bin/python bench/apply.py [--quick]). Prints tables and
writes bench/results/apply.json.

Two layouts of 1,000 VIPs, each with 100 backends, 10,000 backend addresses in all (one
VIP per backend set would be 100,000 addresses: more than the 65,536 backend ids):
- shared: 100 services of 10 ports each (VIP 198.18.0.S, ports 8000-8009), every port of
  a service listing the service's 100 backends, as a Kubernetes Service's ports do. VIPs
  with the same ring members share a ring: 100 rings.
- distinct: the same, except that each port of a service gives a different one of its
  backends weight 2, so no two VIPs have the same ring: 1,000 rings (the worst case).

For each: the initial apply (and the part of it spent planning and refreshing next hops),
the process's VmRSS before, after and at its peak, and the kernel memory of the maps (``memlock`` in
/proc/self/fdinfo, every ring's inner map and the VIP index's included). Then one VIP has one
backend drained and re-activated in turn, CHANGES applies or CHANGE_BUDGET_S seconds, whichever comes
first: the apply duration (``ApplyResult.seconds``) and the time until the changed VIP used
its new ring (``ApplyResult.live_seconds``). In the shared layout draining writes a new ring
(the VIP leaves its service's ring) while re-activating points the VIP back at the
service's ring and frees the other; in the distinct layout both write a ring.

Every update of a map-of-maps slot (xlb_rings) makes the kernel wait for an RCU grace
period before returning, so each ring write or ring delete costs that wait; it is timed
alone after the shared layout's changes (set_inner into an empty slot, over a ring, and
delete, in a slot no VIP uses).

The benchmark runs in a network namespace of its own: a veth whose address is 10.63.0.2/24,
a permanent neighbour 10.63.0.1 standing for the router, and a route to the backends
(10.64.0.0/16) through it, so apply's next-hop refresh resolves every backend as it would on
an LB node, whatever the host's routes.
"""

import argparse
import gc
import ipaddress
import math
import os
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_info, write_results  # noqa: E402

from pyxlb import _bpf, netns  # noqa: E402
from pyxlb import plan as plan_mod  # noqa: E402
from pyxlb.datapath import Datapath  # noqa: E402
from pyxlb.datapath import apply as apply_mod  # noqa: E402
from pyxlb.state import Backend, DesiredState, Vip, VipKey  # noqa: E402

SERVICES, PORTS, BACKENDS = 100, 10, 100
CHANGES = 200
CHANGE_BUDGET_S = 40.0
RCU_REPEATS = 20
MAP_SIZES = {"xlb_flowsets6": 1024, "xlb_flowsets4": 16384}     # flows play no part here
TARGETS = {"initial_apply_s": 5.0, "change_live_ms_median": 10.0}

ROUTER = ("10.63.0.1", "02:00:5e:00:53:01")
BACKEND_NET = "10.64.0.0/16"


# -- the state ---------------------------------------------------------------------------

def make_state(distinct: bool, services: int = SERVICES) -> DesiredState:
    vips = []
    for s in range(services):
        addrs = [ipaddress.ip_address(f"10.64.{s}.{i + 1}") for i in range(BACKENDS)]
        vip_addr = ipaddress.ip_address(f"198.18.0.{s + 1}")
        for p in range(PORTS):
            backends = tuple(Backend(a, weight=2 if distinct and i == p else 1)
                             for i, a in enumerate(addrs))
            vips.append(Vip(VipKey(vip_addr, 8000 + p, "tcp"), backends))
    return DesiredState(tuple(vips))


def drained(state: DesiredState) -> DesiredState:
    """`state` with the first backend of its first VIP draining."""
    vip = state.vips[0]
    first = vip.backends[0]
    backends = (Backend(first.address, first.weight, "draining"),) + vip.backends[1:]
    return state.with_vip(vip.replace(backends=backends))


# -- measuring -----------------------------------------------------------------------------

class Stopwatch:
    """Seconds spent inside some functions, patched for the duration of a `with`."""

    def __init__(self):
        self.spent = {}

    @contextmanager
    def timing(self, owner, name: str, label: str):
        real = getattr(owner, name)
        had_own = name in vars(owner)

        def timed(*args, **kw):
            t0 = time.perf_counter()
            try:
                return real(*args, **kw)
            finally:
                self.spent[label] = self.spent.get(label, 0.0) + time.perf_counter() - t0

        setattr(owner, name, timed)
        try:
            yield self
        finally:
            if had_own:
                setattr(owner, name, real)
            else:
                delattr(owner, name)

    def take(self) -> dict:
        out, self.spent = self.spent, {}
        return out


def vm_mb(field: str = "VmRSS") -> float:
    """A memory figure of this process from /proc/self/status, in MiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def reset_peak_rss() -> None:
    """Start VmHWM (peak RSS) again from the current RSS (Linux 4.0+)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def memlock(fd: int) -> int:
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("memlock:"):
                return int(line.split()[1])
    return 0


def kernel_memory(dp: Datapath) -> dict:
    """Bytes of kernel memory per map (memlock), the inner ring maps summed as 'rings', and
    the live VIP index's inner array."""
    out = {m.name: memlock(m.fd) for m in dp.maps}
    rings = 0
    for rid in dp.layout().ring_ids.values():
        with _bpf.Map.from_id(dp.maps.rings.inner_id(rid)) as inner:
            rings += memlock(inner.fd)
    out["rings (inner maps)"] = rings
    if dp.maps.vip_index.get(0) is not None:
        with dp.maps.vip_index.inner_map(0) as inner:
            out["VIP index (inner map)"] = memlock(inner.fd)
    return out


def percentile(values, p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary_ms(values) -> dict:
    ms = [v * 1e3 for v in values]
    return {"median": round(statistics.median(ms), 2), "p99": round(percentile(ms, 99), 2),
            "min": round(min(ms), 2), "max": round(max(ms), 2)}


# -- the network namespace -------------------------------------------------------------------

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@contextmanager
def bench_namespace():
    name = f"xlb-bench-{os.getpid()}"
    _ip("netns", "add", name)
    try:
        for cmd in (["link", "add", "veth0", "type", "veth", "peer", "name", "veth1"],
                    ["link", "set", "veth0", "up"], ["link", "set", "veth1", "up"],
                    ["addr", "add", "10.63.0.2/24", "dev", "veth0"],
                    ["neigh", "replace", ROUTER[0], "lladdr", ROUTER[1], "dev", "veth0",
                     "nud", "permanent"],
                    ["route", "add", BACKEND_NET, "via", ROUTER[0], "dev", "veth0"]):
            _ip("-n", name, *cmd)
        with netns.enter(name):
            yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


# -- one layout ------------------------------------------------------------------------------

def run_layout(name: str, distinct: bool, args) -> dict:
    gc.collect()
    reset_peak_rss()
    rss_before = vm_mb()
    state = make_state(distinct, args.services)
    other = drained(state)
    watch = Stopwatch()
    dp = Datapath.load(map_sizes=MAP_SIZES)
    try:
        with watch.timing(plan_mod, "make_plan", "plan"), \
                watch.timing(apply_mod, "refresh_nexthops", "nexthops"):
            result = dp.apply(state)
            plan = result.plan
            parts = watch.take()
            initial = {
                "apply_s": round(result.seconds, 3),
                "live_s": round(result.live_seconds, 3),
                "plan_s": round(parts.get("plan", 0.0), 3),
                "nexthop_refresh_s": round(parts.get("nexthops", 0.0), 3),
            }
            rings_written = len(plan.ring_writes)
            del plan, result    # they hold every new ring's table
            gc.collect()
            rss = {"before": round(rss_before, 1), "after": round(vm_mb(), 1),
                   "peak": round(vm_mb("VmHWM"), 1)}
            kmem = kernel_memory(dp)
            counts = {"vips": len(state), "backends": len(dp.layout().backend_ids),
                      "rings": len(dp.layout().ring_ids)}
            print(f"  {name}: initial apply {initial['apply_s']:.2f} s ({counts['vips']} VIPs, "
                  f"{counts['backends']} backends, {counts['rings']} rings)", flush=True)

            steps = {"drain": [], "re-activate": []}
            started = time.perf_counter()
            for i in range(args.changes):
                if time.perf_counter() - started > args.budget:
                    break
                kind, target = ("drain", other) if i % 2 == 0 else ("re-activate", state)
                result = dp.apply(target)
                plan = result.plan
                parts = watch.take()
                steps[kind].append({"apply": result.seconds,
                                    "live": result.live_seconds,
                                    "plan": parts.get("plan", 0.0),
                                    "nexthops": parts.get("nexthops", 0.0),
                                    "ring_writes": len(plan.ring_writes),
                                    "ring_deletes": len(plan.ring_deletes)})
            changes_s = time.perf_counter() - started
        rcu = None if distinct else time_ring_slot_updates(dp)
    finally:
        dp.close()

    every = steps["drain"] + steps["re-activate"]
    changes = {"steps": len(every), "seconds": round(changes_s, 1),
               "budget_hit": len(every) < args.changes}
    for kind, rows in (("all", every), *steps.items()):
        if rows:
            changes[kind] = {
                "n": len(rows),
                "apply_ms": summary_ms([r["apply"] for r in rows]),
                "live_ms": summary_ms([r["live"] for r in rows]),
                "plan_ms_median": round(statistics.median(r["plan"] for r in rows) * 1e3, 2),
                "nexthop_refresh_ms_median": round(
                    statistics.median(r["nexthops"] for r in rows) * 1e3, 2),
                "ring_writes_per_step": sorted({r["ring_writes"] for r in rows}),
                "ring_deletes_per_step": sorted({r["ring_deletes"] for r in rows}),
            }
    out = {"layout": name, **counts,
           "initial": dict(initial, rings_written=rings_written),
           "rss_mb": rss,
           "kernel_memory_mb": {k: round(v / 2**20, 2) for k, v in
                                sorted(kmem.items(), key=lambda kv: -kv[1])},
           "kernel_memory_mb_total": round(sum(kmem.values()) / 2**20, 1),
           "changes": changes}
    if rcu:
        out["ring_slot_update_ms"] = rcu
    return out


def time_ring_slot_updates(dp: Datapath) -> dict:
    """A bare update of xlb_rings, with a one-slot inner map, in a slot no VIP uses."""
    rings = dp.maps.rings
    slot = rings.max_entries - 1
    inner = _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, 4, 1, name="xlb_ring_bench",
                            flags=_bpf.MAP_F_INNER_MAP | _bpf.MAP_F_MMAPABLE)
    fresh, over, delete = [], [], []
    try:
        for _ in range(RCU_REPEATS):
            t0 = time.perf_counter()
            rings.set_inner(slot, inner)
            t1 = time.perf_counter()
            rings.set_inner(slot, inner)
            t2 = time.perf_counter()
            rings.delete(slot)
            t3 = time.perf_counter()
            fresh.append(t1 - t0)
            over.append(t2 - t1)
            delete.append(t3 - t2)
    finally:
        inner.close()
    return {"set_inner_empty_slot": summary_ms(fresh), "set_inner_over_ring": summary_ms(over),
            "delete": summary_ms(delete), "repeats": RCU_REPEATS}


# -- output ----------------------------------------------------------------------------------

def print_tables(layouts, rcu) -> None:
    head = (f"{'layout':<9} {'VIPs':>5} {'backends':>8} {'rings':>5} | {'apply s':>7} "
            f"{'live s':>6} {'plan s':>6} {'nexthops s':>10} | {'RSS MB: before after peak':>20} "
            f"| {'kernel MB':>9} {'of it rings':>11}")
    print(head)
    print("-" * len(head))
    for r in layouts:
        i, k = r["initial"], r["kernel_memory_mb"]
        print(f"{r['layout']:<9} {r['vips']:>5} {r['backends']:>8} {r['rings']:>5} | "
              f"{i['apply_s']:>7.2f} {i['live_s']:>6.2f} {i['plan_s']:>6.2f} "
              f"{i['nexthop_refresh_s']:>10.2f} | "
              f"{r['rss_mb']['before']:>6.0f} {r['rss_mb']['after']:>6.0f} "
              f"{r['rss_mb']['peak']:>6.0f} | "
              f"{r['kernel_memory_mb_total']:>9.1f} {k['rings (inner maps)']:>11.1f}")
    print()
    head = (f"{'layout':<9} {'step':<12} {'n':>4} | {'apply ms med':>12} {'p99':>8} | "
            f"{'live ms med':>11} {'p99':>8} | {'plan ms med':>11} {'nexthops ms':>11} | "
            f"{'rings +/-':>9}")
    print(head)
    print("-" * len(head))
    for r in layouts:
        c = r["changes"]
        for kind in ("drain", "re-activate", "all"):
            if kind not in c:
                continue
            s = c[kind]
            rings = "/".join(map(str, s["ring_writes_per_step"])) + " / " + \
                "/".join(map(str, s["ring_deletes_per_step"]))
            print(f"{r['layout']:<9} {kind:<12} {s['n']:>4} | {s['apply_ms']['median']:>12.1f} "
                  f"{s['apply_ms']['p99']:>8.1f} | {s['live_ms']['median']:>11.1f} "
                  f"{s['live_ms']['p99']:>8.1f} | {s['plan_ms_median']:>11.1f} "
                  f"{s['nexthop_refresh_ms_median']:>11.1f} | {rings:>9}")
        if c["budget_hit"]:
            print(f"{'':<9} (stopped after {c['steps']} steps: the {CHANGE_BUDGET_S:.0f} s "
                  f"budget was spent)")
    if rcu:
        print(f"\nbare xlb_rings updates (the kernel's RCU wait), {rcu['repeats']} each: "
              f"set_inner into an empty slot {rcu['set_inner_empty_slot']['median']:.1f} ms, "
              f"over a ring {rcu['set_inner_over_ring']['median']:.1f} ms, "
              f"delete {rcu['delete']['median']:.1f} ms (medians)")
    print("apply: Datapath.apply from call to return; live: from the call until the changed "
          "VIPs point\nat their new rings; plan: make_plan; nexthops: refresh_nexthops "
          "(netlink); rings +/-: rings\nwritten / freed per step; p99 is nearest-rank. RSS: "
          "this process before the state is built,\nafter the initial apply (its plan "
          "dropped), and at its peak in between; kernel MB: memlock of\nevery map.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="10 services (100 VIPs) and 20 changes: a smoke run")
    args = ap.parse_args(argv)
    args.services = 10 if args.quick else SERVICES
    args.changes = 20 if args.quick else CHANGES
    args.budget = CHANGE_BUDGET_S

    load_at_start = os.getloadavg()[0]
    t0 = time.perf_counter()
    layouts = []
    with bench_namespace():
        for name, distinct in (("shared", False), ("distinct", True)):
            layouts.append(run_layout(name, distinct, args))
            gc.collect()
    elapsed = time.perf_counter() - t0
    rcu = next((r["ring_slot_update_ms"] for r in layouts if "ring_slot_update_ms" in r), None)
    print()
    print_tables(layouts, rcu)

    shared = layouts[0]
    passed = {
        "initial_apply_s": shared["initial"]["apply_s"] <= TARGETS["initial_apply_s"],
        "change_live_ms_median":
            shared["changes"]["all"]["live_ms"]["median"] <= TARGETS["change_live_ms_median"],
    }
    print(f"\ntarget initial apply (shared) <= {TARGETS['initial_apply_s']:g} s: "
          f"{shared['initial']['apply_s']:.2f} s {'PASS' if passed['initial_apply_s'] else 'FAIL'}")
    print(f"target time to ring live, median of changes (shared) <= "
          f"{TARGETS['change_live_ms_median']:g} ms: "
          f"{shared['changes']['all']['live_ms']['median']:.1f} ms "
          f"{'PASS' if passed['change_live_ms_median'] else 'FAIL'}")
    print(f"total {elapsed:.0f} s; load average {load_at_start:.2f} at the start, "
          f"{os.getloadavg()[0]:.2f} at the end ({os.cpu_count()} CPUs)")

    path = write_results("apply", {
        "benchmark": "Datapath.apply at scale",
        "quick": args.quick,
        "machine": machine_info(),
        "layouts": layouts,
        "ring_slot_update_ms": rcu,
        "targets": {k: {"limit": v, "layout": "shared", "passed": passed[k]}
                    for k, v in TARGETS.items()},
        "elapsed_s": round(elapsed, 1),
        "load_average_1m": {"start": round(load_at_start, 2),
                            "end": round(os.getloadavg()[0], 2)},
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
