"""A flood of forged two-packet TCP flows through a lab LB node, and what it does to real
long-lived connections: the survival scenario of issue 20, shared by the lab test
(tests/lab/test_flood.py) and the benchmark (bench/lab_flood.py).

- Flood: the generator (xdp/bench/gen.bpf.c, program gen_chain, mode GEN_PAIRS) runs
  with BPF_PROG_TEST_RUN in the LB node's namespace, its ctx naming the node's eth0, one
  thread per CPU; each of its iterations writes the next forged packet and tail-calls the
  node's own attached balancer program (the same program and maps that serve eth0), so the
  balancer handles every forged packet as if eth0 had received it, at the rate one core
  runs it. Each forged flow is a SYN then an ACK from a new client address and port
  (addresses from FORGED4 / FORGED6, checksums computed) to the VIP. Nothing forged is
  transmitted: the balancer's verdict (XDP_TX of the tunnelled packet) is discarded, so the
  backends' TCP stacks never see millions of SYNs. (The live-frames mode, which would
  transmit them into eth0 from the router's side, is refused with EPERM by this machine's
  kernel, 6.18.44-fc-v1300; it worked on an earlier build.)
- survival(): `count` real connections (tests/support/traffic.py Streams) open through the
  VIP served by be1 and be2; idle (they sent their request head and a few chunks, then
  nothing) or active (sending a chunk every 50 ms throughout); then the flood; then be3 is
  added (the ring changes: about a third of it moves to be3); then every connection sends
  the rest of its body and reads the answer. A connection survives when it was neither
  reset nor stalled and the backend that answered is the one that accepted it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

from pyroute2 import NetNS

from pyxlb import _bpf, netns
from pyxlb.bpf import object_path
from pyxlb.lab import HTTP_PORT, ROUTER, VIP4, VIP6, Lab
from pyxlb.state import DesiredState

from tests.lab.helpers import delta
from tests.support.traffic import Streams, Verdict

FORGED4 = ipaddress.ip_network("10.78.0.0/16")      # the generator fills in the host bits
FORGED6 = ipaddress.ip_network("fd78::/64")         # ... the low 32 bits
FRAME_LEN = {4: 64, 6: 84}                          # xdp/bench/gen.bpf.c
GEN_FLOWS, GEN_PAIRS = 0, 1
# the balancer's counters a flood report keeps (xlb_stats names; absent ones read 0)
STAT_KEYS = ("flow_hit", "flow_miss", "flow_stale", "tx", "redirect", "pass_not_ours",
             "drop_internal", "flow_insert_limited")


def _ignore(signum, frame):
    pass    # a signal only interrupts a generator call that overran (the watchdog)


def _mac(ns: str, ifname: str) -> bytes:
    with NetNS(ns) as n:
        link = n.get_links(n.link_lookup(ifname=ifname)[0])[0]
        return bytes.fromhex(link.get_attr("IFLA_ADDRESS").replace(":", ""))


class Flood:
    """The generator, chained to LB node `lb`'s balancer. Use as a context manager."""

    def __init__(self, lab: Lab, lb: str = "lb1"):
        self.lab, self.lb = lab, lb
        self.handles: list = []
        with netns.enter(lab.ns(lb)):
            self.ifindex = socket.if_nametoindex("eth0")
        self.dmac = _mac(lab.ns(lb), "eth0")
        self.smac = _mac(lab.ns(ROUTER), f"p-{lb}")
        try:
            with _bpf.BpfObject.open(object_path("bench_gen")) as obj:
                obj.load()
                self.gen = obj.program("gen_chain")
                self.gen_config = obj.map("gen_config")
                chain = obj.map("gen_next")
            self.handles += [self.gen, self.gen_config, chain]
            with lab.datapath(lb) as dp:
                chain.update(0, struct.pack("=I", dp.prog.fd))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for h in self.handles:
            with contextlib.suppress(Exception):
                h.close()
        self.handles.clear()

    def __enter__(self) -> "Flood":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def balancer_stats(self) -> Dict[str, int]:
        with self.lab.datapath(self.lb) as dp:
            return dict(dp.stats())

    def configure(self, family: int, mode: int, lag: int, flows: int = 0) -> None:
        self.gen_config.update(0, self.dmac + self.smac + FORGED4.network_address.packed
                               + VIP4.packed + struct.pack("!H", HTTP_PORT) + b"\0\0"
                               + struct.pack("=IIII", flows, mode, lag, family)
                               + FORGED6.network_address.packed + VIP6.packed)

    def run(self, family: int, flows: int, lag: int = 1, cpus: Optional[Sequence[int]] = None,
            timeout: float = 60.0) -> "FloodReport":
        """`flows` forged two-packet flows (rounded up to whole batches of `lag` per CPU),
        one generator thread per CPU in `cpus` (default: every CPU this process may use),
        all at once, bounded by `timeout` seconds."""
        cpus = list(cpus or sorted(os.sched_getaffinity(0)))
        self.configure(family, GEN_PAIRS, lag)
        batch = 2 * lag
        per_thread = -(-2 * flows // len(cpus) // batch) * batch
        return self._generate(family, lag, cpus, per_thread, timeout)

    def established(self, family: int, flows: int, burst: int = 1, passes: int = 1,
                    timeout: float = 60.0) -> "FloodReport":
        """`passes` passes over `flows` established flows (TCP ACKs and UDP, one of each
        kind a flow) from one CPU, each flow sending `burst` packets in a row a pass."""
        cpu = sorted(os.sched_getaffinity(0))[-1]
        self.configure(family, GEN_FLOWS, burst, flows)
        return self._generate(family, burst, [cpu], flows * burst * passes, timeout)

    def new_flows(self, family: int, count: int, timeout: float = 60.0) -> "FloodReport":
        """`count` packets from one CPU, each a new flow (a TCP SYN or a UDP datagram)."""
        cpu = sorted(os.sched_getaffinity(0))[-1]
        self.configure(family, GEN_FLOWS, 1, 0)
        return self._generate(family, 1, [cpu], count, timeout)

    def _generate(self, family: int, lag: int, cpus: List[int], per_thread: int,
                  timeout: float) -> "FloodReport":
        ctx = struct.pack("=6I", 0, FRAME_LEN[family], 0, self.ifindex, 0, 0)   # xdp_md
        frame = bytes(FRAME_LEN[family])
        errors: List[str] = []
        kernel_s: List[float] = []
        barrier = threading.Barrier(len(cpus) + 1)
        where = self.lab.ns(self.lb)

        def worker(cpu: int) -> None:
            try:
                os.sched_setaffinity(0, {cpu})
                with netns.enter(where):
                    barrier.wait(timeout=10)
                    _, _, ns_per = self.gen.test_run(frame, repeat=per_thread, ctx=ctx)
                    kernel_s.append(ns_per * per_thread / 1e9)
            except Exception as exc:        # noqa: BLE001 - reported below
                errors.append(f"{type(exc).__name__}: {exc}")

        old = signal.signal(signal.SIGUSR1, _ignore)
        st0 = self.balancer_stats()
        threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in cpus]
        try:
            for t in threads:
                t.start()
            barrier.wait(timeout=10)
            t0 = time.monotonic()
            for t in threads:
                t.join(max(0.0, t0 + timeout - time.monotonic()))
            wall = time.monotonic() - t0
        finally:
            barrier.abort()
            for t in threads:
                while t.is_alive():     # the watchdog: a signal ends the kernel's loop
                    signal.pthread_kill(t.ident, signal.SIGUSR1)
                    t.join(0.2)
            signal.signal(signal.SIGUSR1, old)
        stats = delta(self.balancer_stats(), st0)
        if errors:
            raise AssertionError(f"the flood generator failed: {'; '.join(errors)}")
        sent = per_thread * len(cpus)
        handled = stats.get("tx", 0) + stats.get("redirect", 0)
        return FloodReport(
            family=family, lag=lag, cpus=len(cpus), flows_sent=sent // 2, packets_sent=sent,
            seconds=round(wall, 3), mpps=sent / wall / 1e6,
            mpps_per_core=sent / sum(kernel_s) / 1e6 if kernel_s and sum(kernel_s) else 0.0,
            forwarded=handled, stats={k: stats.get(k, 0) for k in STAT_KEYS},
            stats_all={k: v for k, v in stats.items() if v})


@dataclass
class FloodReport:
    """One flood: what the generator sent through the balancer and the balancer's
    counters meanwhile."""

    family: int
    lag: int
    cpus: int
    flows_sent: int
    packets_sent: int
    seconds: float
    mpps: float                     # forged packets through the balancer per wall second
    mpps_per_core: float            # ... per second of the generator calls' own time
    forwarded: int                  # of which the balancer forwarded (tx + redirect)
    stats: Dict[str, int]
    stats_all: Dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        s = self.stats
        return (f"IPv{self.family} flood: {self.flows_sent:,} forged flows "
                f"({self.packets_sent:,} packets, lag {self.lag}) in {self.seconds:.2f} s on "
                f"{self.cpus} CPUs ({self.mpps:.2f} Mpps, {self.mpps_per_core:.2f} Mpps a "
                f"core; {self.forwarded:,} forwarded); "
                f"balancer: flow_miss {s['flow_miss']:,}, flow_hit {s['flow_hit']:,}, "
                f"insert-limited {s['flow_insert_limited']:,}")


# -- the survival scenario -------------------------------------------------------------------

@dataclass
class Survival:
    family: int
    mode: str
    activity: str                   # idle or active
    connections: int
    survived: int
    reset: int
    other_errors: int
    moved: int
    holders: Dict[str, int]         # backend -> connections it accepted
    flood: Optional[FloodReport]
    seconds: Dict[str, float]

    @property
    def share(self) -> float:
        return self.survived / self.connections

    def line(self) -> str:
        return (f"IPv{self.family} {self.mode} {self.activity}: {self.survived} of "
                f"{self.connections} connections survived ({self.share:.2%}); reset "
                f"{self.reset}, other errors {self.other_errors}, moved {self.moved}")

    def as_dict(self) -> dict:
        out = asdict(self)
        out["share"] = self.share
        return out


def vip_state(lab: Lab, family: int, mode: str, backends: Sequence[str]) -> DesiredState:
    return DesiredState((lab.vip(family, mode=mode, backends=tuple(backends)),))


def survival(lab: Lab, flood: Flood, family: int, sports: Sequence[int], mode: str = "ipip",
             active: bool = False, flows: int = 5_000_000, lag: int = 1,
             cpus: Optional[Sequence[int]] = None) -> Survival:
    """The scenario of the module docstring on the lab's lb1 (the router must route the
    VIP there)."""
    times = {}
    t = time.monotonic()
    lab.apply(vip_state(lab, family, mode, ("be1", "be2")))
    # idle: a few chunks (the flow is promoted, as a real one is by its handshake and
    # request), then nothing until the end; active: a chunk every 50 ms until finish()
    # (at most a minute; the body is what that needs, 19 KiB)
    chunk, duration = (16, 60.0) if active else (64, 0.3)
    with Streams(lab, family, sports, chunk=chunk, interval=0.05, duration=duration,
                 timeout=10.0) as streams:
        times["open"] = time.monotonic() - t
        if not active:
            time.sleep(0.4)             # the sender thread is done: the connections idle
        t = time.monotonic()
        report = flood.run(family, flows, lag=lag, cpus=cpus) if flows else None
        times["flood"] = time.monotonic() - t
        t = time.monotonic()
        lab.apply(vip_state(lab, family, mode, ("be1", "be2", "be3")))
        streams.finish(timeout=30.0)
        times["finish"] = time.monotonic() - t
    v = Verdict.of(streams)
    holders = streams.holders()
    good = [r for r in streams.results if r.error is None and r.backend == holders[r.sport]]
    spread: Dict[str, int] = {}
    for b in holders.values():
        spread[b] = spread.get(b, 0) + 1
    return Survival(
        family=family, mode=mode, activity="active" if active else "idle",
        connections=len(streams.results), survived=len(good),
        reset=sum(1 for e in v.errors.values() if e == "reset"),
        other_errors=sum(1 for e in v.errors.values() if e != "reset"),
        moved=len(v.moved), holders=dict(sorted(spread.items())), flood=report,
        seconds={k: round(x, 2) for k, x in times.items()})
