"""L2 announcement end to end: the router is a host on the LB nodes' segment that reaches
the VIP on-link (by ARP / neighbour discovery, no route via an LB), and each LB node runs
`python -m pyxlb.announce.l2` (heartbeats, rendezvous owner, announce flag through
Datapath.apply, gratuitous ARP / unsolicited NA).

Real NICs drop frames for another MAC before XDP sees them; veths do not, so the lab's
bridge must not flood unknown unicast to the LB ports (else the survivor would balance
frames still addressed to a dead node's MAC, and failover would look instant for the wrong
reason). These tests turn that flooding off on p-lb1/p-lb2 and put it back afterwards,
with everything else they change (links, addresses, routes, announce flags)."""

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from pyroute2 import NetNS

from pyxlb import _layouts as L
from pyxlb.announce import rendezvous
from pyxlb.lab import BACKENDS, LBS, ROUTER, VIP4, VIP6, node_addr

from .helpers import ask, delta, lb_counters, state

RECOVERY_S = 10.0       # bound for "recovers"; bench/failover.py measures the seconds
NEIGH_RECOVERY_S = 1.0  # an L2 VIP whose LB node lost its neighbours serves again within
IPV = pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])


def sh(*args, check=True):
    return subprocess.run(args, capture_output=True, text=True, check=check).stdout


class Announcing:
    """`python -m pyxlb.announce.l2` for one LB node, its JSON event lines collected."""

    def __init__(self, lab, lb, vips):
        other = next(n for n in LBS if n != lb)
        cmd = [sys.executable, "-m", "pyxlb.announce.l2", "--netns", lab.ns(lb),
               "--node", lb, "--peer", f"{other}={node_addr(other, 4)}", "--iface", "eth0",
               "--pin-dir", lab.pin_dir(lb)]
        for v in vips:
            cmd += ["--vip", str(v)]
        self.lb = lb
        self.events = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self.cond:
                self.events.append(json.loads(line))
                self.cond.notify_all()

    def wait(self, pred, timeout=5.0, since=0):
        """The first event from index `since` on for which pred(event) holds."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events[since:]:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    err = "" if self.proc.poll() is None else self.proc.stderr.read()[-2000:]
                    raise AssertionError(f"{self.lb}: no such event in {timeout} s; events "
                                         f"{self.events[since:]}; stderr {err}")
                self.cond.wait(min(left, 0.1))

    def owns(self, alive, mine, timeout=5.0, since=0):
        alive, mine = sorted(alive), sorted(map(str, mine))
        return self.wait(lambda e: e["event"] == "owned" and e["alive"] == alive
                         and e["owned"] == mine, timeout, since)

    def signal(self, sig):
        self.proc.send_signal(sig)

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(timeout=5)
        self.reader.join(timeout=5)
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def mac_of(lab, node, ifname="eth0"):
    with NetNS(lab.ns(node)) as n:
        return n.get_links(n.link_lookup(ifname=ifname)[0])[0].get_attr("IFLA_ADDRESS")


def router_entry(lab, vip):
    """The router's neighbour entry for the VIP: (MAC or None, state)."""
    out = sh("ip", "-n", lab.ns(ROUTER), "neigh", "show", str(vip), "dev", "br0").split()
    mac = out[out.index("lladdr") + 1] if "lladdr" in out else None
    return mac, (out[-1] if out else "none")


def announced_by(lab, lb, vip):
    with lab.datapath(lb) as dp:
        entry = dp.vip_addr(vip)
    return bool(entry and entry["flags"] & L.ADDR_ANNOUNCE)


def flood_to_lbs(lab, on):
    lab.flood(LBS, on)


def until(check, timeout, what):
    """Poll `check()` until it returns a true value (returned), at most `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, AssertionError) as exc:
            last = exc
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})")


@contextlib.contextmanager
def l2_lab(lab, family):
    """The lab VIP (IPIP, not announced) on both LB nodes, the router reaching it on-link,
    and an announcer per LB node; everything put back afterwards, also on failure."""
    vip = VIP4 if family == 4 else VIP6
    plain = state(lab.vip(family))
    procs = {}

    def start(lb):
        procs[lb] = Announcing(lab, lb, [vip])
        return procs[lb]

    try:
        lab.apply(plain)
        flood_to_lbs(lab, False)
        sh("ip", "-n", lab.ns(ROUTER), "neigh", "flush", "to", str(vip), "dev", "br0")
        sh("ip", "-n", lab.ns(ROUTER), "route", "replace",
           f"{vip}/{vip.max_prefixlen}", "dev", "br0")
        yield vip, start, procs
    finally:
        for p in procs.values():
            p.close()
        for lb in LBS:
            lab.restore_link(lb)
        flood_to_lbs(lab, True)
        lab.route_via("lb1")
        sh("ip", "-n", lab.ns(ROUTER), "neigh", "flush", "to", str(vip), "dev", "br0")
        lab.apply(plain)        # announce flags off on both
        for lb in LBS:
            assert not announced_by(lab, lb, vip)


def request_via(lab, family, vip, mac):
    """One request (which also makes the router resolve the VIP if it has no entry); true
    when it succeeded with the router's entry for the VIP naming `mac` before it: then it
    went through that LB node."""
    via = router_entry(lab, vip)[0]
    ask(lab, family, timeout=1.0)
    return via == mac


@IPV
def test_the_owner_answers_and_a_dead_owner_is_replaced(lab, family):
    with l2_lab(lab, family) as (vip, start, procs):
        owner = rendezvous(vip, LBS)
        other = next(n for n in LBS if n != owner)
        mac = {lb: mac_of(lab, lb) for lb in LBS}
        for lb in LBS:
            start(lb)
        procs[owner].owns(LBS, [vip])
        procs[other].owns(LBS, [])
        assert announced_by(lab, owner, vip) and not announced_by(lab, other, vip)

        # the router resolves the VIP: only the owner's XDP responder answers
        ask(lab, family)
        assert router_entry(lab, vip)[0] == mac[owner]

        # the owner's agent dies and its link goes down
        mark = len(procs[other].events)
        procs[owner].signal(signal.SIGKILL)
        lab.set_link(owner, False)
        failed = time.monotonic()
        until(lambda: request_via(lab, family, vip, mac[other]), RECOVERY_S,
              f"traffic via {other}")
        recovered = time.monotonic() - failed
        procs[other].owns([other], [vip], since=mark, timeout=1)
        assert announced_by(lab, other, vip)
        print(f"IPv{family}: traffic via {other} {recovered:.2f} s after {owner} died")

        # it comes back: rendezvous gives it its address again
        procs[owner].close()
        lab.restore_link(owner)
        mark = len(procs[other].events)
        start(owner)
        procs[owner].owns(LBS, [vip])
        procs[other].owns(LBS, [], since=mark)
        until(lambda: request_via(lab, family, vip, mac[owner]), RECOVERY_S,
              f"traffic back via {owner}")
        assert not announced_by(lab, other, vip)


def test_a_hung_owner_is_replaced_and_takes_over_again_when_it_wakes(lab):
    """SIGSTOP: the owner's XDP keeps forwarding, but it sends no heartbeats. The other
    node takes over (its GARP moves the router). On SIGCONT the owner hears that the other
    hears it again and announces once more; the other gives the address back."""
    family = 4
    with l2_lab(lab, family) as (vip, start, procs):
        owner = rendezvous(vip, LBS)
        other = next(n for n in LBS if n != owner)
        mac = {lb: mac_of(lab, lb) for lb in LBS}
        for lb in LBS:
            start(lb)
        procs[owner].owns(LBS, [vip])
        procs[other].owns(LBS, [])
        ask(lab, family)
        assert router_entry(lab, vip)[0] == mac[owner]

        mark = len(procs[other].events)
        procs[owner].signal(signal.SIGSTOP)
        procs[other].owns([other], [vip], since=mark)
        until(lambda: request_via(lab, family, vip, mac[other]), RECOVERY_S,
              f"traffic via {other}")

        mark_owner, mark = len(procs[owner].events), len(procs[other].events)
        procs[owner].signal(signal.SIGCONT)
        procs[other].owns(LBS, [], since=mark)
        procs[owner].wait(lambda e: e["event"] == "seen_by" and e["peer"] == other,
                          since=mark_owner)
        until(lambda: request_via(lab, family, vip, mac[owner]), RECOVERY_S,
              f"traffic back via {owner}")
        assert announced_by(lab, owner, vip) and not announced_by(lab, other, vip)


def test_a_clean_stop_hands_over_without_waiting(lab):
    """SIGTERM: the stopping node clears its announce flag and says goodbye; the other
    takes over without waiting for dead_after."""
    family = 6
    with l2_lab(lab, family) as (vip, start, procs):
        owner = rendezvous(vip, LBS)
        other = next(n for n in LBS if n != owner)
        for lb in LBS:
            start(lb)
        procs[owner].owns(LBS, [vip])
        procs[other].owns(LBS, [])
        ask(lab, family)
        assert router_entry(lab, vip)[0] == mac_of(lab, owner)
        mark = len(procs[other].events)
        procs[owner].signal(signal.SIGTERM)
        stopped = time.monotonic()
        procs[owner].wait(lambda e: e["event"] == "stopped")
        took = procs[other].owns([other], [vip], since=mark)
        # without the goodbye it would take dead_after minus at most one interval (0.8 s)
        assert took["t"] - stopped < 0.5, "the other waited for the heartbeat timeout"
        assert not announced_by(lab, owner, vip) and announced_by(lab, other, vip)
        until(lambda: request_via(lab, family, vip, mac_of(lab, other)), RECOVERY_S,
              f"traffic via {other}")


# -- an L2 VIP whose LB node has no neighbour entry for a backend --------------------------


def backend_neighbours(lab, lb, family):
    """The backends `lb` has a usable neighbour entry for (not FAILED or INCOMPLETE)."""
    out = sh("ip", f"-{family}", "-n", lab.ns(lb), "-j", "neigh", "show", "dev", "eth0")
    usable = {e["dst"] for e in json.loads(out or "[]") if "lladdr" in e
              and not set(e.get("state", [])) & {"FAILED", "INCOMPLETE"}}
    return {be for be in BACKENDS if str(node_addr(be, family)) in usable}


def cached_backends(lab, lb):
    """The backends the balancer of `lb` has a cached next hop for (xlb_nexthops)."""
    names = {node_addr(be, fam): be for be in BACKENDS for fam in (4, 6)}
    with lab.datapath(lb) as dp:
        records = dp.layout(refresh=True).backend_records()
        return {names[rec.address] for bid, rec in records.items()
                if L.unpack_nexthop(dp.maps.nexthops.lookup(bid))["ifindex"]}


def forget_neighbours(lab, lb, how):
    """`lb` loses its neighbour entries: flushed, or its link goes down and up (which
    flushes them too)."""
    if how == "flush":
        sh("ip", "-n", lab.ns(lb), "neigh", "flush", "dev", "eth0")
    else:
        lab.set_link(lb, False)
        lab.restore_link(lb)


def first_answer(lab, family, within):
    """Requests, one after the other, until one is answered: the seconds that took. Fails
    if none is answered within `within` s (each request gets what is left of it)."""
    start = time.monotonic()
    errors = []
    while True:
        left = start + within - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no request answered within {within} s: {errors}")
        try:
            ask(lab, family, timeout=left)
            return time.monotonic() - start
        except OSError as exc:
            errors.append(repr(exc))


@IPV
@pytest.mark.parametrize("how", ["flush", "link_flap"])
def test_an_l2_vip_serves_again_within_a_second_when_the_lb_loses_its_neighbours(lab, family,
                                                                                how):
    """The backends of an L2 VIP come (back) while lb1 has no neighbour entry for them
    (after `ip neigh flush`, or a link flap, which flushes them), so the next-hop cache
    cannot be filled and the FIB says "no neighbour". The datapath tunnels those packets
    to the backend and passes them up: the kernel forwards them and resolves the MAC, the
    backends' decapsulators deliver even the first ones, and the packets after take the L2
    path. Without that the unchanged packet went up, the kernel routed it by the VIP, and
    the MAC was never asked for: no request was ever answered."""
    l2 = state(lab.vip(family, mode="l2"))
    try:
        for _ in range(3):
            lab.apply(state())      # the backends leave the datapath, and their next hops
            forget_neighbours(lab, "lb1", how)
            lab.apply(l2)           # ... and come back while nothing is resolved
            # a backend's own ARP or ND request for lb1 (its stray traffic) may teach lb1 its
            # address again between the two: then forget again
            if not backend_neighbours(lab, "lb1", family):
                break
        assert not backend_neighbours(lab, "lb1", family), "lb1 still has neighbours"
        assert not cached_backends(lab, "lb1"), "the next-hop cache was filled: no test"
        before = lb_counters(lab, "lb1")

        recovered = first_answer(lab, family, NEIGH_RECOVERY_S)
        served = [ask(lab, family, timeout=1.0)[0] for _ in range(20)]
        moved = delta(lb_counters(lab, "lb1"), before)

        assert moved["pass_no_neigh"] > 0, f"no packet took the fallback: {moved}"
        assert moved["tx"] > 0, f"no packet took the L2 path afterwards: {moved}"
        assert set(served) <= set(BACKENDS) and len(served) == 20
        assert backend_neighbours(lab, "lb1", family), "lb1 resolved no backend"
        print(f"IPv{family} {how}: the first request, with no neighbour resolved, answered "
              f"in {recovered * 1000:.1f} ms; {moved['pass_no_neigh']} packets tunnelled and "
              f"passed up, {moved['tx']} sent by MAC")
    finally:
        if how == "link_flap":
            lab.restore_link("lb1")
        lab.warm_neighbours()       # whatever happened, the next test finds them resolved
        lab.apply(l2)
