"""What a health check pays to go through the tunnel: Tunnel.register + unregister of a
bound socket, beside a bare map update + delete of the same entry (the floor: two
syscalls) and the socket the check makes anyway (create, bind, close), measured in one run.

Runs in a network namespace of its own (a veth pair, a route to a made-up backend; no
packet is sent): the tunnel's programs attach there, never to the host's interfaces.

Run as root: .venv/bin/python bench/health_register.py [--quick]
Prints a table and writes bench/results/health_register.json.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import machine_info, write_results  # noqa: E402

from pyxlb import _layouts as L  # noqa: E402
from pyxlb import netns  # noqa: E402
from pyxlb.health.tunnel import Tunnel  # noqa: E402

NS = f"htbench-{os.getpid()}"
NODE, BACKEND, VIP = "10.98.0.1", "10.98.0.2", "10.98.100.10"


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def per_op_us(fn, n, repeats):
    """Median over `repeats` runs of fn(n), per operation, in microseconds."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        fn(n)
        samples.append((time.perf_counter_ns() - t0) / n / 1e3)
    return statistics.median(samples), min(samples), max(samples)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    n, repeats = (2000, 3) if args.quick else (10000, 7)

    ip("netns", "add", NS)
    try:
        ip("-n", NS, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        ip("-n", NS, "addr", "add", f"{NODE}/24", "dev", "eth0")
        ip("-n", NS, "link", "set", "eth0", "up")
        ip("-n", NS, "link", "set", "eth1", "up")
        with netns.enter(NS):
            tunnel = Tunnel.open()
            tunnel.prepare(VIP, BACKEND, "ipip")
            socks = []
            for _ in range(256):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.bind((NODE, 0))
                socks.append(s)
        try:
            ports = [s.getsockname()[1] for s in socks]
            value = tunnel.paths.path(VIP, BACKEND, None, L.MODE_L2)
            keys = [L.pack_hc_key(p, L.FAMILY_V4) for p in ports]
            m = tunnel.paths.map

            def register(count):
                reg, unreg = tunnel.register, tunnel.unregister
                for i in range(count):
                    s = socks[i & 255]
                    reg(s, VIP, BACKEND, "ipip")
                    unreg(s)

            def bare_map(count):
                update, delete = m.update, m.delete
                for i in range(count):
                    k = keys[i & 255]
                    update(k, value)
                    delete(k)

            def sockets(count):
                with netns.enter(NS):
                    for _ in range(count):
                        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                        s.bind((NODE, 0))
                        s.close()

            rows = []
            for name, fn in (("register + unregister", register),
                             ("bare map update + delete", bare_map),
                             ("socket + bind + close", sockets)):
                med, lo, hi = per_op_us(fn, n, repeats)
                rows.append({"what": name, "us_median": round(med, 2), "us_min": round(lo, 2),
                             "us_max": round(hi, 2)})
            assert tunnel.registered() == []
        finally:
            for s in socks:
                s.close()
            tunnel.close()
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)

    print(f"{'per check (µs)':<26} | {'median':>7} | {'min':>7} | {'max':>7}")
    print("-" * 56)
    for r in rows:
        print(f"{r['what']:<26} | {r['us_median']:>7.2f} | {r['us_min']:>7.2f} | "
              f"{r['us_max']:>7.2f}")
    ratio = rows[0]["us_median"] / rows[1]["us_median"]
    print(f"register + unregister is {ratio:.1f}x the bare map operations; "
          f"{n} operations a run, {repeats} runs")
    path = write_results("health_register", {"machine": machine_info(), "operations": n,
                                              "repeats": repeats, "rows": rows,
                                              "ratio_to_bare_map": round(ratio, 2)})
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
