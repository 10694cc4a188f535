"""Failover: seconds from a failure of the announcing LB node to traffic flowing via
another, and the established connections each failure resets.

Run as root: .venv/bin/python bench/failover.py [--trials N] [--section l2|bgp]
Prints a table per section and writes bench/results/failover.json, one key per section
("l2", "bgp"; a section that is not run keeps what the file held).

The lab is pyxlb's namespace lab (pyxlb/lab/), built by this script under its own
prefix and removed at the end, also on failure or Ctrl-C.

## L2 (section "l2")

The router is the host on the segment: it reaches the VIP on-link (`ip route replace
VIP/32 dev br0`), so it resolves it by ARP and follows gratuitous ARP. Both LB nodes hold
the VIP (IPIP to be1-3); each runs `python -m pyxlb.announce.l2` (heartbeats every 0.2 s,
dead after 1.0 s, unless told otherwise), which sets the announce flag on the VIP of the
rendezvous owner and sends gratuitous ARP when it takes over. The bridge does not flood
unknown unicast to the LB ports while this runs: a real NIC drops frames for another MAC
before XDP sees them, a veth does not.

Each trial: both announcers start and settle; the router resolves the VIP to the owner;
CONNECTIONS uploads are opened through the VIP and held half-sent; a client starts a
request every 50 ms (each in its own thread, 0.5 s timeout) and notes the router's
neighbour entry for the VIP when it starts. Then the owner fails:

  kill   its announcer gets SIGKILL (the node and its XDP stay up)
  hung   its announcer gets SIGSTOP (idem; SIGCONT and kill after the trial)
  link   its eth0 goes down (the announcer runs on, alone)

"failover" is the time from the failure until the first request that started with the
router's entry naming the survivor's MAC has completed: traffic flows via the other node.
"outage" is the longest time without a completed request around the failure: what a
client notices (for kill and hung the old node's XDP keeps forwarding meanwhile, so there
is none). Then the held uploads are finished: one that fails or is answered wrongly was
reset. Every trial restores the lab: announcers stopped, link up with its addresses and
routes, announce flags off, the router's entry flushed.

## BGP (section "bgp")

Section "bgp": the router runs BIRD (pyxlb.announce.bgp.upstream_router_config: ECMP with
`merge paths`, the L4 multipath hash policy) and peers with lb1 and lb2, whose speakers
are BgpAnnouncers (BIRD too), both announcing the VIP (IPIP to be1-3). Two modes: every
session with BFD (100 ms x 3), and without (hold time 3 s). As for L2, unknown unicast is
not flooded to the LB ports. Each trial: both nodes announce and the router has both
next hops; CONNECTIONS uploads are opened through the VIP and held half-sent; the L2
client's requests run, each noting the router's next hops when it starts. Then lb1 fails:

  kill   its BIRD gets SIGKILL (the node and its XDP stay up; the router sees the TCP
         session close at once)
  hung   its BIRD gets SIGSTOP (idem; only BFD or the hold timer can tell)
  link   its eth0 goes down (a dead node, seen the same way)

"failover" is the time from the failure until the first request that started with the
route through lb2 alone has completed. With ECMP the other node's share never stops, so
instead of an outage the section reports the requests that failed (lb1's share of new
connections while lb1 was dead and still in the route) and how long after the failure
the last of them started. Then the held uploads are finished (one that fails or is
answered wrongly was reset): half of them crossed lb1 and continue through lb2, which
never saw them (Maglev). Every trial restores the lab: BIRD continued or started again,
link up with its addresses and routes, both next hops back.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import RESULTS_DIR, machine_info, write_results  # noqa: E402

from pyroute2 import NetNS  # noqa: E402

from pyxlb import _layouts as L  # noqa: E402
from pyxlb.announce import rendezvous  # noqa: E402
from pyxlb.lab import (BACKENDS, HTTP_PORT, LBS, ROUTER, VIP4,  # noqa: E402
                       VIP6, Lab, node_addr)
from pyxlb.state import DesiredState  # noqa: E402

Row = Tuple[str, str, int, float, float, int]   # (mode, failure, trials, median_s, max_s, resets)

PUBLISHED = [
    "MetalLB L2: \"a few seconds\" (its documentation: memberlist detects the failed node, "
    "the new owner sends gratuitous ARP); users report tens of seconds",
    "Cilium L2 announcements (Kubernetes leases): 10-20 s with the default lease timings, "
    "2-4 s tuned",
]


def format_rows(rows: List[Row]) -> str:
    """The table every section prints: one row per (mode, failure)."""
    head = ("mode", "failure", "trials", "median s", "max s", "resets")
    lines = [f"{head[0]:<10} {head[1]:<8} {head[2]:>6} {head[3]:>9} {head[4]:>7} {head[5]:>7}"]
    for mode, failure, trials, med, mx, resets in rows:
        lines.append(f"{mode:<10} {failure:<8} {trials:>6} {med:>9.2f} {mx:>7.2f} {resets:>7}")
    return "\n".join(lines)


# -- L2 ------------------------------------------------------------------------------------

L2_FAILURES = ("kill", "hung", "link")
L2_PACE_S = 0.05            # a request started this often
L2_REQUEST_TIMEOUT_S = 0.5
L2_CONNECTIONS = 4          # uploads held open across each failure
L2_GIVE_UP_S = 15.0         # a trial that has not recovered by then is a failure


def _sh(*args: str, check: bool = True) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=check).stdout


class L2Announcer:
    """`python -m pyxlb.announce.l2` for one LB node; its JSON event lines collected."""

    def __init__(self, lab: Lab, lb: str, vip, interval: float, dead_after: float):
        other = next(n for n in LBS if n != lb)
        self.lb = lb
        self.events: List[dict] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyxlb.announce.l2", "--netns", lab.ns(lb), "--node", lb,
             "--peer", f"{other}={node_addr(other, 4)}", "--iface", "eth0",
             "--pin-dir", lab.pin_dir(lb), "--vip", str(vip), "--interval", str(interval),
             "--dead-after", str(dead_after)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
            text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.cond:
                self.events.append(json.loads(line))
                self.cond.notify_all()

    def wait_owned(self, alive, owned, timeout: float = 10.0) -> None:
        alive, owned = sorted(alive), sorted(map(str, owned))
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(e["event"] == "owned" and e["alive"] == alive and e["owned"] == owned
                          for e in self.events):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"{self.lb}: never owned {owned} with {alive} alive: "
                                       f"{self.events}")
                self.cond.wait(min(left, 0.1))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=5)
        self.reader.join(timeout=5)
        self.proc.stdout.close()


def l2_mac(lab: Lab, node: str) -> str:
    with NetNS(lab.ns(node)) as n:
        return n.get_links(n.link_lookup(ifname="eth0")[0])[0].get_attr("IFLA_ADDRESS")


def l2_router_mac(lab: Lab, vip) -> Optional[str]:
    out = _sh("ip", "-n", lab.ns(ROUTER), "neigh", "show", str(vip), "dev", "br0").split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else None


class L2Held:
    """An upload through the VIP sent half-way; finish() sends the rest and checks the
    reply (the backend echoes how many bytes it read)."""

    SIZE = 4000

    def __init__(self, lab: Lab, family: int):
        self.sock = lab.client_socket(family)
        self.sock.settimeout(5.0)
        self.sock.connect((str(VIP4 if family == 4 else VIP6), HTTP_PORT))
        self.body = bytes(i % 251 for i in range(self.SIZE))
        self.sock.sendall(f"POST /echo HTTP/1.0\r\nHost: vip\r\nContent-Length: {self.SIZE}"
                          f"\r\n\r\n".encode() + self.body[:self.SIZE // 2])

    def finish(self) -> bool:
        """True when the connection survived: the whole body arrived at one backend."""
        try:
            self.sock.sendall(self.body[self.SIZE // 2:])
            chunks = []
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
            head, _, payload = b"".join(chunks).partition(b"\r\n\r\n")
            name, got = payload.decode().split()
            return head.startswith(b"HTTP/1.0 200") and name in BACKENDS and \
                int(got) == self.SIZE
        except (OSError, ValueError):
            return False
        finally:
            self.sock.close()


class L2Client:
    """Starts a request every L2_PACE_S, each in its own thread with a 0.5 s timeout;
    records (started, finished or None, router entry at the start)."""

    def __init__(self, lab: Lab, family: int, vip):
        self.lab, self.family, self.vip = lab, family, vip
        self.records: List[Tuple[float, Optional[float], Optional[str]]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=24)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _one(self, via: Optional[str]) -> None:
        started = time.monotonic()
        try:
            self.lab.request(self.family, timeout=L2_REQUEST_TIMEOUT_S)
            done: Optional[float] = time.monotonic()
        except Exception:       # noqa: BLE001 - a failed request is what is measured
            done = None
        with self.lock:
            self.records.append((started, done, via))

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.pool.submit(self._one, l2_router_mac(self.lab, self.vip))
            next_at += L2_PACE_S
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> "L2Client":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.pool.shutdown(wait=True)

    def recovered_at(self, mac: str, since: float) -> Optional[float]:
        with self.lock:
            done = [d for s, d, via in self.records if s >= since and d and via == mac]
        return min(done) if done else None

    def outage(self, since: float) -> float:
        """The longest gap between completed requests around `since` (the client runs
        from 0.3 s before it)."""
        with self.lock:
            done = sorted(d for _, d, _ in self.records if d and d > since - 0.25)
        return max((b - a for a, b in zip(done, done[1:])), default=float("inf"))


def l2_trial(lab: Lab, failure: str, family: int, interval: float,
             dead_after: float) -> Dict[str, object]:
    """One failure of the owner; the lab is as before afterwards."""
    vip = VIP4 if family == 4 else VIP6
    owner = rendezvous(vip, LBS)
    other = next(n for n in LBS if n != owner)
    survivor_mac = l2_mac(lab, other)
    plain = DesiredState((lab.vip(family),))
    lab.apply(plain)
    _sh("ip", "-n", lab.ns(ROUTER), "neigh", "flush", "to", str(vip), "dev", "br0")
    procs = {lb: L2Announcer(lab, lb, vip, interval, dead_after) for lb in LBS}
    held: List[L2Held] = []
    try:
        procs[owner].wait_owned(LBS, [vip])
        procs[other].wait_owned(LBS, [])
        lab.request(family)
        if l2_router_mac(lab, vip) != l2_mac(lab, owner):
            raise RuntimeError(f"the router did not resolve {vip} to {owner}")
        held = [L2Held(lab, family) for _ in range(L2_CONNECTIONS)]
        with L2Client(lab, family, vip) as client:
            # at a random point of the heartbeat cycle: detection time depends on it
            time.sleep(0.3 + random.uniform(0, interval))
            failed = time.monotonic()
            if failure == "kill":
                procs[owner].proc.send_signal(signal.SIGKILL)
            elif failure == "hung":
                procs[owner].proc.send_signal(signal.SIGSTOP)
            else:
                lab.set_link(owner, False)
            while client.recovered_at(survivor_mac, failed) is None:
                if time.monotonic() - failed > L2_GIVE_UP_S:
                    raise RuntimeError(f"{failure}: no traffic via {other} after "
                                       f"{L2_GIVE_UP_S} s")
                time.sleep(0.02)
            time.sleep(0.3)
        resets = sum(1 for h in held if not h.finish())
        return {"failure": failure, "failover_s": round(client.recovered_at(survivor_mac,
                                                                            failed) - failed, 3),
                "outage_s": round(client.outage(failed), 3), "resets": resets,
                "connections": len(held)}
    finally:
        for h in held:
            h.sock.close()
        for p in procs.values():
            p.close()
        lab.restore_link(owner)
        lab.apply(plain)
        _sh("ip", "-n", lab.ns(ROUTER), "neigh", "flush", "to", str(vip), "dev", "br0")
        with lab.datapath(owner) as dp:
            entry = dp.vip_addr(vip)
            assert not (entry and entry["flags"] & L.ADDR_ANNOUNCE)


def l2_section(lab: Lab, args) -> Tuple[List[Row], Dict[str, object]]:
    """Every failure, args.trials times each, in rounds (drift touches all alike)."""
    vip = VIP4 if args.family == 4 else VIP6
    _sh("ip", "-n", lab.ns(ROUTER), "route", "replace", f"{vip}/{vip.max_prefixlen}",
        "dev", "br0")
    lab.flood(LBS, False)
    trials: List[Dict[str, object]] = []
    try:
        for round_no in range(args.trials):
            for failure in L2_FAILURES:
                t = l2_trial(lab, failure, args.family, args.interval, args.dead_after)
                t["round"] = round_no
                trials.append(t)
                print(f"  l2 {failure:<5} round {round_no + 1}: failover {t['failover_s']:.2f} s, "
                      f"outage {t['outage_s']:.2f} s, resets {t['resets']}/{t['connections']}",
                      flush=True)
    finally:
        lab.flood(LBS, True)
        lab.route_via("lb1")
    rows: List[Row] = []
    summary = {}
    for failure in L2_FAILURES:
        mine = [t for t in trials if t["failure"] == failure]
        fo = [t["failover_s"] for t in mine]
        out = [t["outage_s"] for t in mine]
        rows.append(("l2", failure, len(mine), statistics.median(fo), max(fo),
                     max(t["resets"] for t in mine)))
        summary[failure] = {"failover_median_s": statistics.median(fo), "failover_max_s": max(fo),
                            "outage_median_s": statistics.median(out), "outage_max_s": max(out),
                            "resets_max": max(t["resets"] for t in mine),
                            "resets_total": sum(t["resets"] for t in mine),
                            "connections_total": sum(t["connections"] for t in mine)}
    return rows, {"settings": {"interval_s": args.interval, "dead_after_s": args.dead_after,
                               "family": args.family, "connections": L2_CONNECTIONS,
                               "request_every_s": L2_PACE_S,
                               "request_timeout_s": L2_REQUEST_TIMEOUT_S},
                  "rows": [dict(zip(("mode", "failure", "trials", "median_s", "max_s", "resets"),
                                    r)) for r in rows],
                  "summary": summary, "trials": trials, "published": PUBLISHED}


def l2_print(rows: List[Row], data: Dict[str, object]) -> None:
    s = data["settings"]
    print(f"\nL2 failover (heartbeat every {s['interval_s']:g} s, dead after "
          f"{s['dead_after_s']:g} s; IPv{s['family']}): seconds until traffic flows via the "
          f"other LB node")
    print(format_rows(rows))
    print("outage seen by a client (median / max s): " + ", ".join(
        f"{f} {v['outage_median_s']:.2f} / {v['outage_max_s']:.2f}"
        for f, v in data["summary"].items()))
    print(f"resets: most of the {s['connections']} held connections reset in one event")
    print("published figures of today's tools, for comparison:")
    for line in PUBLISHED:
        print(f"  {line}")


# -- BGP (the docstring says what it measures) -----------------------------------------

BGP_ROUTER_ASN, BGP_NODE_ASN = 64512, 64513
BGP_MODES = (("bgp+bfd", True), ("bgp hold3", False))   # (row name, BFD on every session)
BGP_FAILURES = ("kill", "hung", "link")
BGP_FAILED, BGP_SURVIVOR = "lb1", "lb2"
BGP_CONNECTIONS = 8         # uploads held open across each failure (about half cross lb1)
BGP_SETTLE_S = 15.0         # bound on re-establishing both sessions between trials
BGP_SYSCTLS = ("net/ipv4/fib_multipath_hash_policy", "net/ipv6/fib_multipath_hash_policy")


def bgp_next_hops(lab: Lab, family: int) -> frozenset[str]:
    """The LB nodes the router's VIP route goes through now."""
    vip = VIP4 if family == 4 else VIP6
    out = _sh("ip", f"-{family}", "-j", "-n", lab.ns(ROUTER), "route", "show", "exact",
              f"{vip}/{vip.max_prefixlen}")
    routes = json.loads(out or "[]")
    if not routes:
        return frozenset()
    names = {str(node_addr(lb, family)): lb for lb in LBS}
    return frozenset(names.get(h.get("gateway"), "?")
                     for h in routes[0].get("nexthops", [routes[0]]))


def bgp_wait_hops(lab: Lab, family: int, want, timeout: float = BGP_SETTLE_S) -> None:
    deadline = time.monotonic() + timeout
    while bgp_next_hops(lab, family) != frozenset(want):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the router's route goes via {sorted(bgp_next_hops(lab, family))}"
                               f" after {timeout} s, not {sorted(want)}")
        time.sleep(0.02)


class BgpClient(L2Client):
    """The L2 client's requests, each noting the router's next hops for the VIP when it
    starts (instead of its ARP entry)."""

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self.stop.is_set():
            self.pool.submit(self._one, bgp_next_hops(self.lab, self.family))
            next_at += L2_PACE_S
            self.stop.wait(max(0.0, next_at - time.monotonic()))

    def failed(self, since: float) -> List[float]:
        """Start times of the requests started after `since` that failed."""
        with self.lock:
            return sorted(s for s, d, _ in self.records if s >= since and d is None)

    def withdrawn_at(self, node: str, since: float) -> Optional[float]:
        """When the first request started that saw `node` out of the route."""
        with self.lock:
            starts = [s for s, _, via in self.records if s >= since and node not in via]
        return min(starts) if starts else None


class BgpNodes:
    """The router's BIRD and the LB nodes' BgpAnnouncers, with state under a temporary
    directory; close() kills every daemon (by its pid file) and restores the router."""

    def __init__(self, lab: Lab, family: int):
        import tempfile

        from pyxlb import netns
        from pyxlb.announce.bgp import BirdSpeaker
        self.lab, self.family, self.netns = lab, family, netns
        self.vip = VIP4 if family == 4 else VIP6
        self.base = tempfile.mkdtemp(prefix="pyxlb-failover-bgp-", dir="/tmp")
        self.router = BirdSpeaker(os.path.join(self.base, "router"))
        self.speakers = {lb: BirdSpeaker(os.path.join(self.base, lb), timeout=2.0)
                         for lb in LBS}
        self.announcers: Dict[str, object] = {}
        self.saved: Dict[str, str] = {}
        with netns.enter(lab.ns(ROUTER)):
            for path in BGP_SYSCTLS:
                with open(f"/proc/sys/{path}") as f:
                    self.saved[path] = f.read().strip()
                with open(f"/proc/sys/{path}", "w") as f:
                    f.write("1")
        for fam in (4, 6):
            v = VIP4 if fam == 4 else VIP6
            _sh("ip", f"-{fam}", "-n", lab.ns(ROUTER), "route", "del", f"{v}/{v.max_prefixlen}",
                check=False)

    def mode(self, bfd: bool) -> None:
        """(Re)configure the router and both nodes with BFD on or off; both announce."""
        from pyxlb.announce.bgp import (BgpAnnouncer, BgpPeer, BgpSettings,
                                        upstream_router_config)
        fam = self.family
        with self.netns.enter(self.lab.ns(ROUTER)):
            self.router.apply(upstream_router_config(
                node_addr(ROUTER, 4), BGP_ROUTER_ASN,
                [(node_addr(lb, fam), BGP_NODE_ASN) for lb in LBS], bfd=bfd))
        for lb in LBS:
            settings = BgpSettings(asn=BGP_NODE_ASN, router_id=node_addr(lb, 4), node=lb,
                                   state_dir=self.speakers[lb].state_dir,
                                   peers=(BgpPeer(node_addr(ROUTER, fam), BGP_ROUTER_ASN,
                                                  bfd=bfd, hold_time=3),))
            with self.netns.enter(self.lab.ns(lb)):
                self.announcers[lb] = BgpAnnouncer(settings, self.speakers[lb])
        self.announce()

    def announce(self) -> None:
        """Both nodes announce the VIP (a dead speaker is started again); wait for ECMP."""
        for lb in LBS:
            with self.netns.enter(self.lab.ns(lb)):
                result = self.announcers[lb].sync([self.vip])
                if any(r.value != "ok" for r in result.values()):
                    raise RuntimeError(f"{lb}: {self.announcers[lb].last_error}")
        bgp_wait_hops(self.lab, self.family, LBS)

    def pid(self, lb: str) -> int:
        with self.netns.enter(self.lab.ns(lb)):
            pid = self.speakers[lb].pid()
        if pid is None:
            raise RuntimeError(f"{lb}: no BIRD runs")
        return pid

    def close(self) -> None:
        import shutil
        for speaker, ns in [(s, lb) for lb, s in self.speakers.items()] + \
                           [(self.router, ROUTER)]:
            with contextlib.suppress(Exception):
                with open(speaker.pid_path) as f:
                    pid = int(f.read().strip())
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                with self.netns.enter(self.lab.ns(ns)):
                    deadline = time.monotonic() + 5
                    while speaker.pid() is not None and time.monotonic() < deadline:
                        time.sleep(0.01)        # also reaps the daemons this process started
        with self.netns.enter(self.lab.ns(ROUTER)):
            for path, value in self.saved.items():
                with open(f"/proc/sys/{path}", "w") as f:
                    f.write(value)
        self.lab.route_via("lb1")           # the route BIRD's kernel protocol left is replaced
        shutil.rmtree(self.base, ignore_errors=True)


def bgp_trial(lab: Lab, nodes: BgpNodes, failure: str) -> Dict[str, object]:
    """lb1 fails while both announce; the lab is as before afterwards."""
    family = nodes.family
    nodes.announce()
    held: List[L2Held] = []
    pid = nodes.pid(BGP_FAILED)
    try:
        held = [L2Held(lab, family) for _ in range(BGP_CONNECTIONS)]
        with BgpClient(lab, family, nodes.vip) as client:
            time.sleep(0.3)
            failed = time.monotonic()
            if failure == "kill":
                os.kill(pid, signal.SIGKILL)
            elif failure == "hung":
                os.kill(pid, signal.SIGSTOP)
            else:
                lab.set_link(BGP_FAILED, False)
            survivor = frozenset({BGP_SURVIVOR})
            while client.recovered_at(survivor, failed) is None:
                if time.monotonic() - failed > L2_GIVE_UP_S:
                    raise RuntimeError(f"{failure}: no traffic via {BGP_SURVIVOR} alone after "
                                       f"{L2_GIVE_UP_S} s")
                time.sleep(0.02)
            time.sleep(0.3)
        resets = sum(1 for h in held if not h.finish())
        lost = client.failed(failed)
        return {"failure": failure,
                "failover_s": round(client.recovered_at(survivor, failed) - failed, 3),
                "withdraw_s": round(client.withdrawn_at(BGP_FAILED, failed) - failed, 3),
                "failed_requests": len(lost),
                "lost_s": round(lost[-1] - failed, 3) if lost else 0.0,
                "resets": resets, "connections": len(held)}
    finally:
        for h in held:
            h.sock.close()
        if failure == "hung":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        elif failure == "link":
            lab.restore_link(BGP_FAILED)


def bgp_section(lab: Lab, args) -> Tuple[List[Row], Dict[str, object]]:
    """Every (mode, failure), args.trials times each, in rounds."""
    lab.apply(DesiredState((lab.vip(args.family),)))
    # frames for a node whose link is down would be flooded to the other, whose veth (unlike
    # a NIC) hands them to XDP: the dead node would seem to keep forwarding
    lab.flood(LBS, False)
    nodes = BgpNodes(lab, args.family)
    trials: List[Dict[str, object]] = []
    try:
        for mode, bfd in BGP_MODES:
            nodes.mode(bfd)
            for round_no in range(args.trials):
                for failure in BGP_FAILURES:
                    t = bgp_trial(lab, nodes, failure)
                    t.update(mode=mode, round=round_no)
                    trials.append(t)
                    print(f"  {mode} {failure:<5} round {round_no + 1}: failover "
                          f"{t['failover_s']:.2f} s (route withdrawn {t['withdraw_s']:.2f} s), "
                          f"{t['failed_requests']} requests failed, the last "
                          f"{t['lost_s']:.2f} s after the failure, resets {t['resets']}/"
                          f"{t['connections']}", flush=True)
    finally:
        nodes.close()
        lab.flood(LBS, True)
    rows: List[Row] = []
    summary: Dict[str, Dict[str, object]] = {}
    for mode, _ in BGP_MODES:
        for failure in BGP_FAILURES:
            mine = [t for t in trials if t["mode"] == mode and t["failure"] == failure]
            fo = [t["failover_s"] for t in mine]
            rows.append((mode, failure, len(mine), statistics.median(fo), max(fo),
                         max(t["resets"] for t in mine)))
            summary[f"{mode} {failure}"] = {
                "failover_median_s": statistics.median(fo), "failover_max_s": max(fo),
                "withdraw_median_s": statistics.median(t["withdraw_s"] for t in mine),
                "lost_median_s": statistics.median(t["lost_s"] for t in mine),
                "lost_max_s": max(t["lost_s"] for t in mine),
                "failed_requests_total": sum(t["failed_requests"] for t in mine),
                "requests_every_s": L2_PACE_S,
                "resets_max": max(t["resets"] for t in mine),
                "resets_total": sum(t["resets"] for t in mine),
                "connections_total": sum(t["connections"] for t in mine)}
    return rows, {"settings": {"family": args.family, "hold_time_s": 3,
                               "bfd": "100 ms x 3", "connections": BGP_CONNECTIONS,
                               "request_every_s": L2_PACE_S,
                               "request_timeout_s": L2_REQUEST_TIMEOUT_S},
                  "rows": [dict(zip(("mode", "failure", "trials", "median_s", "max_s",
                                     "resets"), r)) for r in rows],
                  "summary": summary, "trials": trials}


def bgp_print(rows: List[Row], data: Dict[str, object]) -> None:
    s = data["settings"]
    print(f"\nBGP failover (BIRD on the router and both LB nodes, ECMP; hold time "
          f"{s['hold_time_s']} s, BFD {s['bfd']}; IPv{s['family']}; lb1 fails): seconds "
          f"until traffic flows via lb2 alone")
    print(format_rows(rows))
    print("requests that failed (new connections of lb1's share, black-holed until the "
          "route moved), in all trials; the last one's start after the failure, median / "
          "max s:")
    for k, v in data["summary"].items():
        print(f"  {k:<15} {v['failed_requests_total']:>4} failed   "
              f"{v['lost_median_s']:.2f} / {v['lost_max_s']:.2f}")
    print(f"resets: most of the {s['connections']} held connections reset in one event")


SECTIONS = {"l2": (l2_section, l2_print), "bgp": (bgp_section, bgp_print)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5, help="trials per failure (>= 5 for "
                                                          "the recorded results)")
    ap.add_argument("--section", action="append", choices=sorted(SECTIONS),
                    help="run only this section (repeatable); default: all")
    ap.add_argument("--family", type=int, choices=(4, 6), default=4)
    ap.add_argument("--interval", type=float, default=0.2, help="L2 heartbeat interval")
    ap.add_argument("--dead-after", type=float, default=1.0, help="L2 peer timeout")
    ap.add_argument("--prefix", default=f"fo{os.getpid() % 10000}", help="lab name prefix")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/failover.py needs root (namespaces, XDP)", file=sys.stderr)
        return 2
    path = os.path.join(RESULTS_DIR, "failover.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    lab = Lab(args.prefix)
    started = time.monotonic()
    try:
        lab.up()
        for name in args.section or sorted(SECTIONS):
            run, show = SECTIONS[name]
            print(f"section {name}:", flush=True)
            rows, data = run(lab, args)
            show(rows, data)
            results[name] = {"machine": machine_info(), **data}
    finally:
        with contextlib.suppress(Exception):
            lab.down()
    results["benchmark"] = "failover: failure of the announcing LB node to traffic via another"
    print(f"\ntotal {time.monotonic() - started:.0f} s; wrote {write_results('failover', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
