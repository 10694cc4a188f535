"""Kernel memory of one balancer node in each flow-table mode (issue 21: "kernel memory per
node in each mode").

Run as root: `make bench` (or .venv/bin/python bench/node_memory.py [--vips N]). Prints a
table and writes bench/results/node_memory.json.

One datapath is made per case (not pinned, in bench/apply.py's network namespace with a
route to the backends), the same state applied to it, and
the kernel memory of every map summed: ``memlock`` in /proc/self/fdinfo, each ring's and
each previous-owner array's inner map included. The state: VIPS TCP VIPs (one address,
ports 8000 and up), all with the same BACKENDS backends, as the ports of one Service are.

- flow table: the default tables (rated for 209,715 IPv4 and 104,857 IPv6 flows); the
  VIPs share one ring (same members).
- flow table, rated for 1 M: `--max-flows 1000000 --max-flows6 1000000`.
- stateless: the same VIPs with `flow_table: stateless` and the default tables (what a
  node gets today: the tables are made whatever its VIPs are); each stateless VIP has a
  ring of its own and an array of previous owners beside it.
- stateless, smallest tables: `--max-flows 1024 --max-flows6 1024`, what a node whose
  VIPs are all stateless (or `flow_table: false`) needs.

The figures are what the kernel charges for each map as made; the flow tables are
preallocated arrays, so they cost the same empty or full.
"""

import argparse
import ipaddress
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from apply import bench_namespace, memlock  # noqa: E402
from common import machine_info, write_results  # noqa: E402

from pyxlb import _bpf  # noqa: E402
from pyxlb.datapath import Datapath, map_sizes  # noqa: E402
from pyxlb.state import Backend, DesiredState, Vip, VipKey  # noqa: E402

VIPS, BACKENDS = 100, 10
CASES = (
    ("flow table", False, {}),
    ("flow table, rated for 1 M", False, {"max_flows": 1_000_000, "max_flows6": 1_000_000}),
    ("stateless", True, {}),
    ("stateless, smallest tables", True, {"max_flows": 1024, "max_flows6": 1024}),
)
MiB = 1 << 20


def kernel_memory(dp: Datapath) -> dict:
    """Bytes per map, the rings' and previous owners' inner maps summed apart."""
    out = {m.name: memlock(m.fd) for m in dp.maps}
    layout = dp.layout()
    rings = prevs = 0
    for rid in set(layout.ring_ids.values()):
        with _bpf.Map.from_id(dp.maps.rings.inner_id(rid)) as inner:
            rings += memlock(inner.fd)
        try:
            prev = dp.maps.prev_rings.inner_id(rid)
        except KeyError:            # a ring of VIPs with a flow table: no previous owners
            continue
        with _bpf.Map.from_id(prev) as inner:
            prevs += memlock(inner.fd)
    out["rings (inner maps)"] = rings
    out["previous owners (inner maps)"] = prevs
    return out


def make_state(stateless: bool, vips: int) -> DesiredState:
    backends = tuple(Backend(ipaddress.ip_address(f"10.64.0.{i + 1}")) for i in range(BACKENDS))
    return DesiredState(tuple(
        Vip(VipKey.parse(f"198.18.0.1:{8000 + p}/tcp"), backends,
            flow_table=not stateless, stateless=stateless)
        for p in range(vips)))


def measure(stateless: bool, sizes: dict, vips: int) -> dict:
    dp = Datapath.load(map_sizes=map_sizes(**sizes) if sizes else None)
    try:
        dp.apply(make_state(stateless, vips))
        per_map = kernel_memory(dp)
        rings = len(set(dp.layout().ring_ids.values()))
    finally:
        dp.close()
    flows = sum(v for k, v in per_map.items() if k.startswith("xlb_flowsets"))
    ring_bytes = per_map["rings (inner maps)"] + per_map["previous owners (inner maps)"]
    total = sum(per_map.values())
    return {"total_bytes": total, "flow_tables_bytes": flows, "rings_bytes": ring_bytes,
            "chain_peers_bytes": per_map.get("xlb_chain_peers", 0),
            "other_bytes": total - flows - ring_bytes - per_map.get("xlb_chain_peers", 0),
            "rings": rings, "per_map": per_map}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vips", type=int, default=VIPS,
                        help=f"TCP VIPs in the state (default {VIPS})")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/node_memory.py: run as root (it makes BPF maps and a namespace)")
    rows = []
    with bench_namespace():
        for label, stateless, sizes in CASES:
            r = measure(stateless, sizes, args.vips)
            r.update(case=label, stateless=stateless, sizes=sizes)
            rows.append(r)
    print(f"\nkernel memory of one node: {args.vips} TCP VIPs x {BACKENDS} backends (MiB)\n")
    print(f"{'case':<30} {'total':>8} {'flow tables':>12} {'rings':>8} {'chain peers':>12}"
          f" {'other':>8}")
    for r in rows:
        print(f"{r['case']:<30} {r['total_bytes'] / MiB:8.1f} "
              f"{r['flow_tables_bytes'] / MiB:12.1f} {r['rings_bytes'] / MiB:8.1f} "
              f"{r['chain_peers_bytes'] / MiB:12.2f} {r['other_bytes'] / MiB:8.1f}")
    path = write_results("node_memory", {
        "benchmark": "kernel memory per node in each flow-table mode",
        "machine": machine_info(), "vips": args.vips, "backends": BACKENDS, "rows": rows})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
