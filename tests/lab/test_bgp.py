"""BGP mode in the lab: the router runs BIRD (AS 64512, ECMP with the L4 hash policy) and
peers with lb1 and lb2 (AS 64513), whose speakers are BgpAnnouncers driven from this
process (each call made with the thread in the node's namespace, so every BIRD runs in its
node's namespace, as the agent's would).

For this module the router's static VIP routes are replaced by what BIRD installs; they
are put back (and the router's sysctls restored) afterwards, also on failure. Every BIRD
is killed by its pid file after each test. Every session uses a TCP MD5 password and BFD.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List, Set

import pytest
import yaml

from pyxlb import netns
from pyxlb.announce import Result
from pyxlb.announce.bgp import (BgpAnnouncer, BgpPeer, BgpSettings, BirdSpeaker,
                                upstream_router_config)
from pyxlb.lab import BACKENDS, LBS, ROUTER, VIP4, VIP6, Lab, node_addr

from tests.support.traffic import Streams, Verdict, stalled

from .helpers import (HeldPost, accepted_by, chained, delta, flows, held_posts, lb_counters,
                      state, tcp_counters)

ROUTER_ASN, NODE_ASN = 64512, 64513
PASSWORD = "pyxlb-lab"
WAIT = 8.0          # bound on every wait for the router to learn or forget a route
SYSCTLS = ("net/ipv4/fib_multipath_hash_policy", "net/ipv6/fib_multipath_hash_policy")
FAMILY = pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
STREAMS = 500       # long-lived uploads of the stateless test
SETTLE = 0.5        # its seconds of traffic after each event


def vip(family: int) -> ipaddress._BaseAddress:
    return VIP4 if family == 4 else VIP6


def kill_by_pid_file(speaker: BirdSpeaker) -> None:
    """SIGKILL whatever the speaker's pid file names, if it is a bird (also a stopped
    one), and reap it when it was our child."""
    with contextlib.suppress(OSError, ValueError):
        with open(speaker.pid_path) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"bird" in f.read().split(b"\0")[0]:
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if speaker.pid() is None:       # reaps a child of ours
                return
        except Exception:                   # noqa: BLE001 - dying: look again
            pass
        time.sleep(0.01)


def next_hops(lab: Lab, family: int) -> Set[str]:
    """The LB nodes the router's route to the VIP goes through (none: no route)."""
    net = f"{vip(family)}/{32 if family == 4 else 128}"
    out = subprocess.run(["ip", f"-{family}", "-j", "-n", lab.ns(ROUTER), "route", "show",
                          "exact", net], capture_output=True, text=True, check=True).stdout
    routes = json.loads(out or "[]")
    if not routes:
        return set()
    by_addr = {str(node_addr(lb, family)): lb for lb in LBS}
    gateways = [h.get("gateway") for h in routes[0].get("nexthops", [routes[0]])]
    return {by_addr.get(g, f"?{g}") for g in gateways}


def wait_hops(lab: Lab, family: int, want: Set[str], timeout: float = WAIT) -> float:
    """Seconds until the router's VIP route goes exactly through `want` (bounded)."""
    start = time.monotonic()
    while True:
        got = next_hops(lab, family)
        if got == want:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, \
            f"after {timeout} s the router's IPv{family} VIP route goes via " \
            f"{sorted(got) or 'nothing'}, not {sorted(want) or 'nothing'}"
        time.sleep(0.01)


class Node:
    """One LB node's BGP side: settings and an announcer whose BIRD runs in the node's
    namespace (calls go through `run`)."""

    def __init__(self, lab: Lab, name: str, state_dir: str, timeout: float = 5.0):
        self.lab, self.name = lab, name
        self.settings = BgpSettings(
            asn=NODE_ASN, router_id=node_addr(name, 4), node=name, state_dir=state_dir,
            peers=tuple(BgpPeer(node_addr(ROUTER, f), ROUTER_ASN, password=PASSWORD,
                                bfd=True, hold_time=3) for f in (4, 6)))
        self.timeout = timeout
        self.speakers: List[BirdSpeaker] = []
        self.announcer = self.new_announcer()

    def new_announcer(self) -> BgpAnnouncer:
        """A fresh announcer on the same state directory: what a restarted agent makes."""
        speaker = BirdSpeaker(self.settings.state_dir, timeout=self.timeout)
        self.speakers.append(speaker)
        return self.run(BgpAnnouncer, self.settings, speaker)

    def run(self, fn, *args, **kw):
        with netns.enter(self.lab.ns(self.name)):
            return fn(*args, **kw)

    def sync(self, *addresses) -> Dict:
        return self.run(self.announcer.sync, addresses)

    def pid(self):
        return self.run(self.announcer.speaker.pid)

    def cleanup(self) -> None:
        for speaker in self.speakers:
            self.run(kill_by_pid_file, speaker)


@dataclasses.dataclass
class Router:
    speaker: BirdSpeaker
    base: str           # the module's state directories live under it


@pytest.fixture(scope="module")
def router(lab_session) -> Iterator[Router]:
    """The router's BIRD, peering with lb1 and lb2 over IPv4 and IPv6, in place of the
    lab's static VIP routes; all undone at the end of the module."""
    lab = lab_session
    base = tempfile.mkdtemp(prefix="pyxlb-bgp-", dir="/tmp")
    speaker = BirdSpeaker(os.path.join(base, "router"))
    saved = {}
    try:
        with netns.enter(lab.ns(ROUTER)):
            for path in SYSCTLS:
                with open(f"/proc/sys/{path}") as f:
                    saved[path] = f.read().strip()
                with open(f"/proc/sys/{path}", "w") as f:
                    f.write("1")
        for family in (4, 6):
            net = f"{vip(family)}/{32 if family == 4 else 128}"
            subprocess.run(["ip", f"-{family}", "-n", lab.ns(ROUTER), "route", "del", net],
                           capture_output=True, check=False)
        nodes = [(node_addr(lb, f), NODE_ASN) for lb in LBS for f in (4, 6)]
        config = upstream_router_config(node_addr(ROUTER, 4), ROUTER_ASN, nodes, bfd=True,
                                        password=PASSWORD)
        with netns.enter(lab.ns(ROUTER)):
            speaker.apply(config)
        yield Router(speaker, base)
    finally:
        with netns.enter(lab.ns(ROUTER)):
            with contextlib.suppress(Exception):
                speaker.stop(timeout=2)         # SIGTERM: BIRD takes its routes out
            kill_by_pid_file(speaker)
            for path, value in saved.items():
                with open(f"/proc/sys/{path}", "w") as f:
                    f.write(value)
        lab.route_via("lb1")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def nodes(lab_session, router, request) -> Iterator[Dict[str, Node]]:
    """lb1 and lb2 with fresh state directories, both VIPs (IPIP, three backends) in
    their datapaths; their BIRDs are killed afterwards and the router has forgotten
    them before the next test starts."""
    lab = lab_session
    lab.apply(state(lab.vip(4), lab.vip(6)))
    test_dir = tempfile.mkdtemp(prefix=re.sub(r"\W", "-", request.node.name)[:24] + "-",
                                dir=router.base)
    made: Dict[str, Node] = {}
    try:
        for lb in LBS:
            made[lb] = Node(lab, lb, os.path.join(test_dir, lb))
        yield made
    finally:
        for node in made.values():
            node.cleanup()
        for family in (4, 6):
            wait_hops(lab, family, set())


def announce_both(lab: Lab, nodes: Dict[str, Node], family: int) -> float:
    """Both nodes announce the VIP; seconds until the router has both next hops."""
    start = time.monotonic()
    for node in nodes.values():
        assert node.sync(vip(family)) == {vip(family): Result.OK}, node.announcer.last_error
    wait_hops(lab, family, set(LBS))
    return time.monotonic() - start


@FAMILY
def test_router_learns_the_vip_from_both_nodes(lab_session, nodes, family):
    """Both LB nodes announce; within a few seconds the router's kernel has one route to
    the VIP with both nodes as next hops, learned by BIRD (ECMP)."""
    seconds = announce_both(lab_session, nodes, family)
    assert seconds < 5, f"ECMP took {seconds:.2f} s"
    net = f"{vip(family)}/{32 if family == 4 else 128}"
    route = json.loads(subprocess.run(
        ["ip", f"-{family}", "-j", "-n", lab_session.ns(ROUTER), "route", "show", "exact",
         net], capture_output=True, text=True, check=True).stdout)
    assert route[0]["protocol"] == "bird" and len(route[0]["nexthops"]) == 2, route
    for node in nodes.values():
        assert node.announcer.announced() == {vip(family)}


@FAMILY
def test_flows_spread_over_both_nodes_and_keep_their_backend(lab_session, nodes, ports,
                                                             family):
    """120 flows (distinct client ports) through ECMP: each crosses exactly one LB node
    (their XDP counters add up to one new flow per connection) and both take a fair share.
    Then lb2 withdraws and the same flows all cross lb1, then lb2 alone: every flow
    reaches the backend it reached first, whichever node it crosses (Maglev)."""
    lab = lab_session
    announce_both(lab, nodes, family)
    sports = ports.take(120)

    before = {lb: lb_counters(lab, lb) for lb in LBS}
    via_both = flows(lab, family, sports)
    new = {lb: delta(lb_counters(lab, lb), before[lb])["vip_new_flows"] for lb in LBS}
    assert sum(new.values()) == len(sports), f"new flows per node: {new}"
    assert min(new.values()) >= len(sports) // 4, f"ECMP did not spread the flows: {new}"
    assert set(via_both.values()) == {"be1", "be2", "be3"}

    for alone, other in (("lb1", "lb2"), ("lb2", "lb1")):
        assert nodes[alone].sync(vip(family)) == {}        # already announced: no change
        assert nodes[other].sync() == {vip(family): Result.OK}
        wait_hops(lab, family, {alone})
        counted = lb_counters(lab, other)
        again = flows(lab, family, sports)
        assert delta(lb_counters(lab, other), counted)["vip_packets"] == 0
        moved = {p: (via_both[p], again[p]) for p in sports if via_both[p] != again[p]}
        assert not moved, f"via {alone} alone, {len(moved)} flows reached another " \
                          f"backend: {moved}"
        assert nodes[other].sync(vip(family)) == {vip(family): Result.OK}
        wait_hops(lab, family, set(LBS))


@FAMILY
def test_open_connections_survive_a_dead_node(lab_session, nodes, ports, family):
    """40 uploads are held open half-way through ECMP (some cross lb1, some lb2); lb1's
    BIRD is killed (SIGKILL, as when the node dies); the router withdraws lb1's route;
    the rest of every upload then goes through lb2, which never saw those flows, and
    reaches the backend holding the connection: every reply arrives complete, no
    connection is reset, and lb1 forwards nothing more. lb2 counts each connection it took
    over once as a mid-connection miss (its first segment without SYN), and no other."""
    lab = lab_session
    announce_both(lab, nodes, family)
    sports = ports.take(40)
    client_before = tcp_counters(lab, "client")
    before = {lb: lb_counters(lab, lb) for lb in LBS}
    with held_posts(lab, family, sports) as posts:
        holders = accepted_by(lab, family, sports)
        opened = {lb: delta(lb_counters(lab, lb), before[lb])["vip_new_flows"] for lb in LBS}
        assert opened["lb1"] > 0 and opened["lb2"] > 0, f"new flows per node: {opened}"

        os.kill(nodes["lb1"].pid(), signal.SIGKILL)
        seconds = wait_hops(lab, family, {"lb2"})
        after_kill = {lb: lb_counters(lab, lb) for lb in LBS}
        replies = {p.sport: p.finish() for p in posts}

    wrong = {port: (holders[port], got) for port, got in replies.items()
             if got != (holders[port], HeldPost.SIZE)}
    assert not wrong, f"replies from the wrong backend or short: {wrong}"
    assert delta(lb_counters(lab, "lb1"), after_kill["lb1"])["vip_packets"] == 0
    assert delta(lb_counters(lab, "lb2"), after_kill["lb2"])["vip_packets"] > 0
    taken_over = delta(lb_counters(lab, "lb2"), before["lb2"])["flow_miss_midstream"]
    assert taken_over == opened["lb1"], \
        f"lb2 counted {taken_over} mid-connection misses for {opened['lb1']} moved connections"
    client = delta(tcp_counters(lab, "client"), client_before)
    assert client["EstabResets"] == 0 and client["OutRsts"] == 0, \
        f"connections were reset (withdrawn after {seconds:.2f} s): {client}"


@FAMILY
def test_stateless_connections_survive_a_dead_node_and_backend_changes(lab_session, nodes,
                                                                        ports, family):
    """Stateless mode (docs/datapath.md) across a node's death: both nodes announce a
    stateless VIP (be1, be2) and 500 uploads cross them through ECMP. Then be3 is added,
    lb1's BIRD is killed (the router sends everything to lb2, which has no flow table to
    have missed these connections in), and be3 is removed again. Every upload keeps
    transferring after each event and ends complete on the backend that accepted it, with
    no reset; the backends chained packets (be3's slots moved); lb1 forwards nothing after
    the withdrawal; neither node looked up or recorded a flow."""
    lab = lab_session

    def stateless(*backends):
        return state(lab.vip(family, backends=backends, stateless=True))

    lab.warm_neighbours(senders=BACKENDS, targets=BACKENDS)
    lab.apply(stateless("be1", "be2"))
    announce_both(lab, nodes, family)
    sports = set(ports.take(STREAMS))
    before = {lb: lb_counters(lab, lb) for lb in LBS}
    chained_before = chained(lab)
    stuck: List[int] = []

    def settle() -> None:
        acked = streams.acked()
        time.sleep(SETTLE)
        stuck.extend(stalled(acked, streams.acked()))

    with Streams(lab, family, sorted(sports), duration=15.0) as streams:
        opened = {lb: delta(lb_counters(lab, lb), before[lb])["vip_new_flows"] for lb in LBS}
        assert min(opened.values()) >= STREAMS // 4, f"SYNs per node: {opened}"
        lab.apply(stateless("be1", "be2", "be3"))
        settle()
        os.kill(nodes["lb1"].pid(), signal.SIGKILL)
        seconds = wait_hops(lab, family, {"lb2"})
        after_kill = {lb: lb_counters(lab, lb) for lb in LBS}
        settle()
        lab.apply(stateless("be1", "be2"))
        settle()
        streams.finish()
    Verdict.of(streams).assert_clean()
    assert not stuck, f"{len(set(stuck))} connections stopped transferring after an event " \
                      f"(lb1 withdrawn after {seconds:.2f} s)"
    assert delta(lb_counters(lab, "lb1"), after_kill["lb1"])["vip_packets"] == 0
    assert delta(lb_counters(lab, "lb2"), after_kill["lb2"])["vip_packets"] > 0
    moves = delta(chained(lab), chained_before)
    assert sum(moves.values()) > 0, f"no backend chained a packet: {moves}"
    for lb in LBS:
        looked = {k: v for k, v in delta(lb_counters(lab, lb), before[lb]).items()
                  if k in ("flow_hit", "flow_miss", "flow_stale", "flow_miss_midstream") and v}
        assert not looked, f"{lb} used a flow table: {looked}"
        with lab.datapath(lb) as dp:
            recorded = [k for k, _ in dp.flows() if k["sport"] in sports]
        assert not recorded, f"{lb} recorded {len(recorded)} of these flows: {recorded[:3]}"


def wait_bfd_up(router: "Router", address, timeout: float = WAIT) -> None:
    """Wait until the router's BFD session with `address` is Up (with its fast timers):
    after a node's BIRD was killed, its session comes back slowly, and until it is Up only
    the hold timer would notice a hung node."""
    deadline = time.monotonic() + timeout
    answer = ""
    while time.monotonic() < deadline:
        answer = router.speaker.command("show", "bfd", "sessions")
        if any(line.split()[:1] == [str(address)] and "Up" in line.split()
               for line in answer.splitlines()):
            return
        time.sleep(0.05)
    raise AssertionError(f"the router's BFD session with {address} is not up: {answer}")


def test_hung_speaker_is_dropped_by_bfd_and_reported_as_retry(lab_session, nodes, router):
    """lb1's BIRD is stopped (SIGSTOP, a hung node): BFD (100 ms x 3) takes lb1 out of
    the route well before the 3 s hold time could; the announcer's next change cannot
    reach BIRD within its timeout and says RETRY; once BIRD runs again the session comes
    back and the retried change goes through."""
    lab = lab_session
    node = nodes["lb1"]
    announce_both(lab, nodes, 4)
    wait_bfd_up(router, node_addr("lb1", 4))
    pid = node.pid()
    os.kill(pid, signal.SIGSTOP)
    try:
        seconds = wait_hops(lab, 4, {"lb2"})
        assert seconds < 2.0, f"withdrawn after {seconds:.2f} s: the hold timer's pace " \
                              f"(2-3 s), not BFD's"
        node.announcer.speaker.timeout = 1.0
        started = time.monotonic()
        assert node.sync(VIP4, VIP6) == {VIP6: Result.RETRY}
        assert time.monotonic() - started < 3
        assert "did not answer" in node.announcer.last_error
    finally:
        os.kill(pid, signal.SIGCONT)
    assert node.sync(VIP4, VIP6) == {VIP6: Result.OK}
    assert node.pid() == pid
    wait_hops(lab, 4, set(LBS))
    wait_hops(lab, 6, {"lb1"})


def test_restarted_agent_adopts_the_running_speaker(lab_session, nodes, router):
    """An announcer dropped without closing (its agent crashed) leaves BIRD announcing; a
    new announcer on the same state directory adopts that daemon (same pid, same
    announced set), and syncing the same set neither restarts the BGP session nor
    touches the route; a different set then applies through the adopted daemon."""
    lab = lab_session
    announce_both(lab, nodes, 4)
    node = nodes["lb1"]
    pid = node.pid()
    up_since = _session_since(lab, router, "lb1")

    node.announcer = node.new_announcer()       # the old one is simply dropped
    assert node.announcer.announced() == {VIP4}
    assert node.pid() == pid
    node.sync(VIP4)
    assert node.pid() == pid
    assert next_hops(lab, 4) == set(LBS)
    # a restarted session would be up again seconds later (BIRD's connect delay)
    assert abs(_session_since(lab, router, "lb1") - up_since) < 0.05, \
        "the BGP session restarted"

    assert node.sync() == {VIP4: Result.OK}
    wait_hops(lab, 4, {"lb2"})
    assert node.pid() == pid


def _session_since(lab: Lab, router: "Router", lb: str) -> float:
    """When the router's IPv4 session with `lb` last changed state (from `show
    protocols`), in seconds of the day. BIRD prints its monotonic timestamp as wall time
    converted at each command, so two readings of one moment may differ by a millisecond."""
    name = f"pyxlb_node_{str(node_addr(lb, 4)).replace('.', '_')}"
    with netns.enter(lab.ns(ROUTER)):
        answer = router.speaker.command("show", "protocols", name)
    for line in answer.splitlines():
        words = line.split()
        if words and words[0] == name:
            assert words[-1] == "Established", line
            h, m, sec = words[4].split(":")
            return int(h) * 3600 + int(m) * 60 + float(sec)
    raise AssertionError(f"the router has no protocol {name}")


def test_clean_stop_withdraws_then_terminates(lab_session, nodes):
    """close(withdraw=True) takes lb2's route back at once while its BGP sessions stay
    up; close(terminate=True) then stops its BIRD, removing its pid file and socket."""
    lab = lab_session
    announce_both(lab, nodes, 4)
    node = nodes["lb2"]
    pid = node.pid()
    node.run(node.announcer.close, withdraw=True)
    assert wait_hops(lab, 4, {"lb1"}) < 1.0
    assert node.announcer.announced() == frozenset()
    assert node.pid() == pid
    assert "Established" in node.run(node.announcer.speaker.command, "show", "protocols")

    node.run(node.announcer.close, withdraw=True, terminate=True)
    assert node.pid() is None
    assert not os.path.exists(node.announcer.speaker.pid_path)
    assert not os.path.exists(node.announcer.speaker.socket_path)
    assert next_hops(lab, 4) == {"lb1"}


def _announce_file(lab: Lab, node: Node, tmp_path) -> str:
    """A `pyxlb announce -f` file for `node` in BGP mode: the lab's IPv4 VIP, the router as
    the one peer, no router_id (taken from eth0), BIRD's files in the node's state dir."""
    vip4 = lab.vip(4)
    doc = {"announce": {"mode": "bgp", "node": node.name, "interface": "eth0",
                        "bgp": {"asn": NODE_ASN, "state_dir": node.settings.state_dir,
                                "peers": [{"address": str(node_addr(ROUTER, 4)),
                                           "asn": ROUTER_ASN, "bfd": True,
                                           "password": PASSWORD}]}},
           "vips": [{"vip": str(vip4.key), "mode": vip4.mode,
                     "backends": [str(b.address) for b in vip4.backends]}]}
    path = tmp_path / f"{node.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def _start_announce(lab: Lab, node: str, path: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pyxlb", "--netns", lab.ns(node),
                             "--pin-dir", lab.pin_dir(node), "announce", "-f", path],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _stays(lab: Lab, want: Set[str], seconds: float) -> None:
    """The router's IPv4 VIP route goes via `want` throughout the next `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert next_hops(lab, 4) == want
        time.sleep(0.05)


def test_announce_command_keeps_routes_through_an_agent_crash(lab_session, nodes, router,
                                                              tmp_path):
    """`pyxlb announce -f FILE` in BGP mode on both LB nodes: the router gets both next
    hops. SIGKILL of lb1's announce process (the agent crashing) leaves its BIRD
    announcing: the route does not change. A new `pyxlb announce` adopts that BIRD (same
    pid, the BGP session not restarted). SIGTERM then withdraws lb1's route, and its
    BIRD stays up for the next start."""
    lab = lab_session
    files = {lb: _announce_file(lab, nodes[lb], tmp_path) for lb in LBS}
    procs: Dict[str, subprocess.Popen] = {}
    try:
        for lb in LBS:
            procs[lb] = _start_announce(lab, lb, files[lb])
        wait_hops(lab, 4, set(LBS))
        pid = nodes["lb1"].pid()
        since = _session_since(lab, router, "lb1")
        config = os.stat(nodes["lb1"].announcer.speaker.config_path).st_ino

        procs["lb1"].kill()
        procs["lb1"].wait(timeout=10)
        _stays(lab, set(LBS), 1.5)                  # over a tick of the survivor's loop
        assert nodes["lb1"].pid() == pid

        procs["lb1"] = _start_announce(lab, "lb1", files["lb1"])
        deadline = time.monotonic() + WAIT
        # the adopting announcer's first sync loads the configuration once (a new file)
        while os.stat(nodes["lb1"].announcer.speaker.config_path).st_ino == config:
            assert procs["lb1"].poll() is None, procs["lb1"].stderr.read()[-2000:]
            assert time.monotonic() < deadline, "the new announcer never reconfigured BIRD"
            time.sleep(0.05)
        _stays(lab, set(LBS), 0.5)
        assert nodes["lb1"].pid() == pid
        assert abs(_session_since(lab, router, "lb1") - since) < 0.05, \
            "the BGP session restarted"

        procs["lb1"].send_signal(signal.SIGTERM)
        assert procs["lb1"].wait(timeout=10) == 0, procs["lb1"].stderr.read()[-2000:]
        assert wait_hops(lab, 4, {"lb2"}) < 1.0
        assert nodes["lb1"].pid() == pid
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stderr.close()
