"""A flood of forged flows against established ones, through BPF_PROG_TEST_RUN: how many
real connections a flood of new flows pushes out of the flow table.

``survival(family)`` loads the balancer (pyxlb/bpf/balancer.o) with its default table
sizes, one VIP (TCP or UDP port 80 of the family) over three backends, then:

1. opens ``real`` flows as real clients do: a SYN each; an RTT later an ACK and a first
   data segment; ``settle`` seconds later (the connections go on) another segment each;
2. sends ``forged`` forged flows of two packets each (SYN then ACK, or two datagrams) as
   fast as one CPU can, with ``gap`` other flows' first packets between a flow's two,
   through the bench object's ``bench_flood`` entry (xdp/bench/bench.bpf.c), which shares
   the balancer's maps;
3. sends one more segment of every real flow and counts the flow-table hits: the share
   that survived.

It uses only what every release's Datapath has (load, apply, run, stats), so the same
code measures an older tree: ``python tests/support/flood.py [--family 4|6] ...`` with
that tree's pyxlb importable and its bench object built with this bench.bpf.c prints one
JSON line. tests/datapath/test_flood.py asserts on it; bench/lab_flood.py measures the
same in the namespace lab, with real TCP connections, at full size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from pyxlb import _bpf
from pyxlb.bpf import object_path
from pyxlb.datapath import Datapath, maps
from pyxlb.state import Backend, DesiredState, Vip, VipKey

VIP = {4: "192.0.2.80", 6: "2001:db8:80::1"}
BACKENDS = {4: ("10.1.0.1", "10.1.0.2", "10.1.0.3"),
            6: ("2001:db8:b::1", "2001:db8:b::2", "2001:db8:b::3")}
SOURCES = {4: "10.255.0.0/16", 6: "2001:db8:ff::/64"}
FORGED_SRC = {4: "11.0.0.0", 6: "2001:db8:f10::"}   # the flood's sources: low 32 bits vary
FRAME = 128                     # the bench wrapper saves and restores this much
BENCH_OBJECT = "bench_bench"


def _frame(family: int, src: str, sport: int, proto: str, flags: str = "A") -> bytes:
    ip = IP(src=src, dst=VIP[family]) if family == 4 else IPv6(src=src, dst=VIP[family])
    l4 = TCP(sport=sport, dport=80, flags=flags) if proto == "tcp" else \
        UDP(sport=sport, dport=80)
    pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4
    return bytes(pkt / Raw(b"x" * max(0, FRAME - len(pkt))))


def _client(family: int, i: int) -> str:
    return f"198.51.{100 + i // 250}.{1 + i % 250}" if family == 4 else \
        f"2001:db8:c::{i + 1:x}"


def _flood_program(dp: Datapath):
    """bench_flood over `dp`'s maps, and the map of its state."""
    obj = _bpf.BpfObject.open(object_path(BENCH_OBJECT))
    try:
        for name in maps.BALANCER.maps.values():
            obj.reuse_map(name, dp.maps[name])
        obj.load()
        return obj.program("bench_flood"), obj.map("bench_flood_state")
    finally:
        obj.close()


def survival(family: int = 4, proto: str = "tcp", real: int = 1000, forged: int = 5_000_000,
             gap: int = 0, rtt: float = 0.002, settle: float = 0.15,
             map_sizes=None, inserts=None, pace: float = 0.0) -> dict:
    """Run the scenario of the module docstring; returns {survived, real, forged, seconds
    (of the flood), pps, stats (global counters the flood moved)}. `inserts`: the
    per-CPU insertion limit (None: the datapath's default). `pace`: seconds to wait after
    each `gap` flows (a patient flood, whose second packets come that much later)."""
    dp = Datapath.load(map_sizes=map_sizes)
    try:
        dp.configure(src4=SOURCES[4], src6=SOURCES[6])
        if inserts is not None:
            dp.set_insert_limits(inserts)
        key = VipKey.parse(f"{VIP[family]}:80/{proto}" if family == 4 else
                           f"[{VIP[family]}]:80/{proto}")
        dp.apply(DesiredState(vips=(Vip(key, backends=tuple(
            Backend(b) for b in BACKENDS[family])),)))
        conns = [(_client(family, i), 20000 + i) for i in range(real)]
        frames = {flags: [_frame(family, src, sport, proto, flags) for src, sport in conns]
                  for flags in ("S", "A", "PA")}
        for f in frames["S" if proto == "tcp" else "A"]:
            dp.run(f)
        time.sleep(rtt)
        for ack, data in zip(frames["A"], frames["PA"]):
            dp.run(ack)                                         # the handshake's ACK
            dp.run(data)                                        # and the request
        time.sleep(settle)
        for f in frames["A"]:
            dp.run(f)                                           # the connection goes on
        prog, state = _flood_program(dp)
        try:
            prefix = int.from_bytes(__import__("ipaddress").ip_address(
                FORGED_SRC[family]).packed[-4:], "big")
            state.update(0, (0).to_bytes(8, "little") + prefix.to_bytes(4, "little")
                         + gap.to_bytes(4, "little"))
            before = dp.stats()
            start = time.perf_counter()
            left = 2 * forged
            while left:
                n = min(left, 2 * gap if pace else 1 << 24)
                action, _, _ = prog.test_run(_frame(family, FORGED_SRC[family], 9999, proto),
                                             repeat=n)
                left -= n
                if pace and left:
                    time.sleep(pace)
            seconds = time.perf_counter() - start
            moved = {k: v - before.get(k, 0) for k, v in dp.stats().items()
                     if v != before.get(k, 0)}
        finally:
            prog.close()
            state.close()
        hits = dp.stats()["flow_hit"]
        for f in frames["A"]:
            dp.run(f)
        survived = dp.stats()["flow_hit"] - hits
        return {"family": family, "proto": proto, "real": real, "forged": forged, "gap": gap,
                "survived": survived, "share": survived / real, "seconds": seconds,
                "pps": 2 * forged / seconds, "stats": moved}
    finally:
        dp.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", type=int, choices=(4, 6), default=4)
    ap.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    ap.add_argument("--real", type=int, default=1000)
    ap.add_argument("--forged", type=int, default=5_000_000)
    ap.add_argument("--gap", type=int, default=0)
    a = ap.parse_args(argv)
    print(json.dumps(survival(a.family, a.proto, a.real, a.forged, a.gap)))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    sys.exit(main())
