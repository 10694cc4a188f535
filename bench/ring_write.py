"""Writing a Maglev ring into a BPF array map: an mmap-ed copy (what Datapath does), one
batch call, and one update per slot.

Run as root: `make bench` (or .venv/bin/python bench/ring_write.py [--quick]).
Prints a table and writes bench/results/ring_write.json.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_info, write_results  # noqa: E402

from pyxlb import _bpf  # noqa: E402
from pyxlb.datapath.maps import new_ring  # noqa: E402
from pyxlb.maglev import build_table  # noqa: E402


def time_call(fn, repeats):
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    repeats = 5 if args.quick else 20

    rows = []
    for size in (65537, 655373):
        backends = [(f"10.0.{i // 250}.{i % 250 + 1}", 1, i) for i in range(100)]
        table = build_table(backends, size=size)
        raw = table.tobytes()
        ring = _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, 4, size, "bench_ring")

        def batch():
            ring.write_array(raw)

        def per_slot():
            update = ring.update
            for i in range(size):
                update(i, raw[4 * i: 4 * i + 4])

        def mmapped():      # a new mmap-able ring filled by memcpy, as Datapath.apply does
            new_ring(0, table).close()

        mmap_ms = time_call(mmapped, repeats)
        batch_ms = time_call(batch, repeats)
        slot_ms = time_call(per_slot, max(2, repeats // 5))
        # both wrote the same ring
        assert ring.lookup_batch()[1] == raw
        ring.close()
        rows.append({"slots": size, "mmap_ms": round(mmap_ms, 3), "batch_ms": round(batch_ms, 3),
                     "per_slot_ms": round(slot_ms, 1), "ratio": round(slot_ms / batch_ms, 1),
                     "batch_over_mmap": round(batch_ms / mmap_ms, 1)})

    print(f"{'ring slots':>10} | {'new mmap ring (ms)':>18} | {'batch write (ms)':>16} | "
          f"{'per-slot updates (ms)':>21} | {'batch vs per-slot':>17}")
    print("-" * 96)
    for r in rows:
        print(f"{r['slots']:>10} | {r['mmap_ms']:>18.3f} | {r['batch_ms']:>16.3f} | "
              f"{r['per_slot_ms']:>21.1f} | {r['ratio']:>16.1f}x")
    print("new mmap ring: create the inner map and fill it with one memcpy (Datapath.apply's "
          "path, map creation included)")
    path = write_results("ring_write", {"machine": machine_info(), "repeats": repeats,
                                        "rows": rows})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
