"""Upgrades under traffic in the namespace lab (pyxlb/datapath/upgrade.py).

The lab's own (prefix u<pid>), so the upgrades and the client's TCP counters are this
module's alone. Every test starts from lb1 and the backends running this version with the
VIP on all three backends, opens long-lived streams through lb1 (tests/support/traffic.py),
then drains be2: new connections go to be1 and be3, while the streams be2 holds keep going
only through the flow table. An upgrade that lost a flow would send its next segment to
another backend, which answers it with a reset.

- the previous release's datapath (the commit before upgrades existed, built from git:
  tests/support/release.py) is upgraded to this one, balancer and decapsulators;
- a layout change (the test-only variant of pyxlb/bpf, whose flow records order their
  members differently) migrates both flow tables, and back;
- a SIGKILL after each step of an upgrade leaves lb1 forwarding, and the next start
  converges.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from pyxlb import _bpf
from pyxlb import netns
from pyxlb import node as node_mod
from pyxlb.bpf import DIR_ENV, object_path
from pyxlb.datapath import Datapath, DecapPath, ForeignDatapath
from pyxlb.datapath import upgrade as upgrade_mod
from pyxlb.datapath.upgrade import KILL_ENV
from pyxlb.lab import BACKENDS, HTTP_PORT, SEED, SEGMENT_MTU, VIP4, VIP6, node_addr
from pyxlb.lab.topology import ENCAP_SOURCE
from pyxlb.state import DesiredState, Vip, VipKey

from tests.support.jumps import CHAIN_LOCAL, tail_calls
from tests.support.release import build_release
from tests.support.traffic import Opener, Streams, Verdict, stalled

from .conftest import lab_up
from .helpers import Ports

PREFIX = f"u{os.getpid() % 100000}"
STREAMS4, STREAMS6 = 120, 100           # 220 long-lived connections through lb1
DRAINED = "be2"


@pytest.fixture(scope="module")
def ulab():
    with lab_up(PREFIX) as lab:
        lab.route_via("lb1")
        yield lab


@pytest.fixture(scope="module")
def ports():
    return Ports()


def objects(tmp_path_factory, balancer: str) -> str:
    """A directory for PYXLB_BPF_DIR whose balancer.o is pyxlb/bpf/<balancer>.o (a test
    variant, setup.py TEST_VARIANTS), with this version's decap.o beside it."""
    here = os.path.dirname(os.path.abspath(object_path("balancer")))
    where = tmp_path_factory.mktemp(balancer)
    shutil.copy(os.path.join(here, f"{balancer}.o"), where / "balancer.o")
    shutil.copy(os.path.join(here, "decap.o"), where / "decap.o")
    return str(where)


@pytest.fixture(scope="module")
def variant_dir(tmp_path_factory):
    """The balancer with the test-only flow layout: both flow tables migrate."""
    return objects(tmp_path_factory, "test_variant_balancer")


@pytest.fixture(scope="module")
def program_dir(tmp_path_factory):
    """The balancer whose program alone differs: every map is kept."""
    return objects(tmp_path_factory, "test_program_balancer")


def pyxlb(lab, node, *args, release=None, env=None, check=True):
    """`pyxlb --pin-dir <node's> ARGS` run in `node`'s namespace, by this tree or by
    `release` (a tests/support/release.py Release)."""
    base = release.env() if release is not None else dict(os.environ)
    base.pop(DIR_ENV, None)
    base.pop(KILL_ENV, None)
    base.update(env or {})
    argv = release.argv if release is not None else (
        lambda *a: [sys.executable, "-m", "pyxlb", *a])
    proc = subprocess.run(argv("--pin-dir", lab.pin_dir(node), *args), env=base,
                          preexec_fn=lab.preexec_in(node), capture_output=True, text=True,
                          timeout=120)
    if check:
        assert proc.returncode == 0, f"pyxlb {' '.join(args)} on {node}: {proc.stderr.strip()}"
    return proc


def attach_args(lb="lb1"):
    src = ENCAP_SOURCE[lb]
    return ["attach", "eth0", "--seed", str(SEED), "--mtu", str(SEGMENT_MTU),
            "--encap-source", src.v4, "--encap-source", src.v6]


def decap_args(node):
    sources = [p for s in ENCAP_SOURCE.values() for p in (s.v4, s.v6)]
    return ["decap", "attach", "eth0", "--vip", str(VIP4), "--vip", str(VIP6),
            *[a for p in sources for a in ("--allow-source", p)]]


def desired(lab, drained=False) -> DesiredState:
    """The VIP (IPv4 and IPv6) on every backend; with `drained`, be2 draining."""
    state = "draining" if drained else "active"
    return DesiredState(tuple(
        Vip(VipKey(VIP4 if family == 4 else VIP6, HTTP_PORT, "tcp"), backends=tuple(
            lab.backend(be, family, state=state if be == DRAINED else "active")
            for be in BACKENDS))
        for family in (4, 6)))


def apply_by_hand(lab, release, state: DesiredState, tmp_path):
    """`pyxlb apply -f` of `state` on lb1, by `release`'s CLI."""
    doc = {"vips": [{"vip": f"{v.key.address}:{v.key.port}/tcp" if v.key.address.version == 4
                     else f"[{v.key.address}]:{v.key.port}/tcp",
                     "backends": [{"address": str(b.address), "state": b.state}
                                  for b in v.backends]} for v in state.vips]}
    path = tmp_path / "lb.yaml"
    path.write_text(json.dumps(doc))            # JSON is YAML
    pyxlb(lab, "lb1", "apply", "-f", str(path), release=release)


def apply_here(lab, state: DesiredState):
    with lab.datapath("lb1") as dp:
        dp.apply(state)
        dp.refresh_nexthops()


def take_down(lab, node):
    """Remove `node`'s datapath, whichever version made it."""
    with netns.enter(lab.ns(node)):
        kind = Datapath if node == "lb1" else DecapPath
        if not kind.exists(lab.pin_dir(node)):
            return
        try:
            with kind.open(lab.pin_dir(node)) as dp:
                removed = dp.detach("eth0") if kind is DecapPath else \
                    node_mod.take_down(dp, "eth0")
        except ForeignDatapath:
            removed = kind.detach_foreign("eth0", lab.pin_dir(node))
        assert removed


def rebuild(lab, tmp_path, release=None):
    """lb1 and the backends' decapsulators made afresh by this version (or by `release`'s
    CLI, as a user of that release would), lb1 serving the VIP on all three backends."""
    for node in ("lb1", *BACKENDS):
        take_down(lab, node)
    if release is not None:
        pyxlb(lab, "lb1", *attach_args(), release=release)
        for node in BACKENDS:
            pyxlb(lab, node, *decap_args(node), release=release)
        apply_by_hand(lab, release, desired(lab), tmp_path)
        return
    src = ENCAP_SOURCE["lb1"]
    with netns.enter(lab.ns("lb1")):
        node_mod.bring_up(lab.pin_dir("lb1"), node_mod.NodeSettings(
            interfaces=("eth0",), seed=SEED, mtu=SEGMENT_MTU,
            encap_sources={4: src.v4, 6: src.v6})).dp.close()
    sources = [p for s in ENCAP_SOURCE.values() for p in (s.v4, s.v6)]
    for node in BACKENDS:
        with netns.enter(lab.ns(node)):
            node_mod.bring_up_decap(lab.pin_dir(node), ("eth0",), (VIP4, VIP6),
                                    sources).dp.close()
    apply_here(lab, desired(lab))


def plan_of(lab, node="lb1", env=None):
    """`pyxlb upgrade --dry-run --json` on `node`."""
    return json.loads(pyxlb(lab, node, "upgrade", "--dry-run", "--json", env=env).stdout)


def _after_a_while(*all_streams):
    """Bytes acknowledged per stream half a second from now."""
    time.sleep(0.5)
    return {p: n for s in all_streams for p, n in s.acked().items()}


def streams(lab, ports):
    return (Streams(lab, 4, ports.take(STREAMS4), duration=120),
            Streams(lab, 6, ports.take(STREAMS6), duration=120))


def assert_undisturbed(all_streams, opener):
    report = opener.stop()
    for s in all_streams:
        s.finish()
    verdicts = [Verdict.of(s, opener) for s in all_streams]
    for v in verdicts:
        v.assert_clean()
    assert report.successes > 20, f"the opener hardly ran: {report}"
    held = [be for v in verdicts for be in v.holders.values()]
    assert held.count(DRAINED) >= 10, f"too few streams on the drained backend: {held}"


def test_the_previous_release_is_upgraded_under_traffic(ulab, ports, tmp_path):
    """lb1 and the decapsulators run the previous release's datapath; 220 streams open, be2
    is drained; then this version's `pyxlb attach` and `pyxlb decap attach` (what the
    agent does on start) upgrade them while the streams send and new connections open:
    nothing is reset, no connect fails, every stream ends on the backend it started on."""
    lab = ulab
    release = build_release()
    rebuild(lab, tmp_path, release=release)
    old = plan_of(lab)
    assert old["needed"] and old["from"].startswith("unrecorded")
    # the flow sets' ways gained their stamps (IPv4: migrated) and the IPv6 flows move
    # from the LRU hash to new sets, with the insertion limits (the config record grew),
    # their per-CPU budget and new counters; the kernel cannot tell the templates of the
    # maps-of-maps of a datapath without a record, so those are made anew; the members
    # gained their health byte, and the health specs are new (empty); stateless mode's
    # previous owners and chain peers are new (empty)
    assert sorted((m["name"], m["action"]) for m in old["maps"] if m["action"] != "keep") \
        == [("xlb_chain_peers", "new"), ("xlb_config", "migrate"),
            ("xlb_flow_budget", "new"), ("xlb_flows", "drop"),
            ("xlb_flowsets4", "migrate"), ("xlb_flowsets6", "new"),
            ("xlb_health_specs", "new"), ("xlb_members", "migrate"),
            ("xlb_prev_rings", "new"), ("xlb_rings", "migrate"), ("xlb_stats", "migrate"),
            ("xlb_vip_index", "migrate")], old["maps"]
    s4, s6 = streams(lab, ports)
    with s4, s6, Opener(lab, 4, pace=0.02) as opener:
        apply_by_hand(lab, release, desired(lab, drained=True), tmp_path)
        before = {**s4.acked(), **s6.acked()}
        out = pyxlb(lab, "lb1", *attach_args()).stdout
        assert f"upgraded the datapath at {lab.pin_dir('lb1')} from version unrecorded" in out
        for node in BACKENDS:
            out = pyxlb(lab, node, *decap_args(node)).stdout
            assert "upgraded the datapath" in out, out
        assert not stalled(before, _after_a_while(s4, s6))
        assert_undisturbed((s4, s6), opener)
    for node in ("lb1", *BACKENDS):
        assert not plan_of(lab, node)["needed"]
        assert not upgrade_mod.interrupted(lab.pin_dir(node))
    with lab.datapath("lb1") as dp:
        states = {b.address: b.state for v in dp.current_state().vips for b in v.backends}
        assert tail_calls(dp.prog) == CHAIN_LOCAL       # new with this version
    assert states[node_addr(DRAINED, 4)] == "draining"     # the state came across whole


def test_a_new_program_then_a_layout_change_and_back(ulab, ports, variant_dir, program_dir,
                                                     tmp_path):
    """A program that alone changed replaces the running one over every map, kept; then
    the variant layout migrates both flow tables (everything else kept); then upgrading
    back migrates them down. Across the three, under traffic, nothing is reset and the
    streams on the drained backend stay there."""
    lab = ulab
    rebuild(lab, tmp_path)
    variant = {DIR_ENV: variant_dir}
    plan = plan_of(lab, env=variant)
    moved = sorted(m["name"] for m in plan["maps"] if m["action"] == "migrate")
    assert moved == ["xlb_flowsets4", "xlb_flowsets6"], plan
    s4, s6 = streams(lab, ports)
    with s4, s6, Opener(lab, 6, pace=0.02) as opener:
        apply_here(lab, desired(lab, drained=True))
        with lab.datapath("lb1") as dp:
            n4, n6 = dp.flow_counts()
        assert n4 >= STREAMS4 and n6 >= STREAMS6
        program = {DIR_ENV: program_dir}
        for env, migrated in ((program, False), (variant, True), ({}, True)):
            before = {**s4.acked(), **s6.acked()}
            out = pyxlb(lab, "lb1", "upgrade", env=env).stdout
            assert ("migrate xlb_flowsets4" in out) == migrated and "done in" in out, out
            assert "replace the balancer program (on eth0)" in out, out
            assert not stalled(before, _after_a_while(s4, s6))
        assert_undisturbed((s4, s6), opener)
    assert not plan_of(lab)["needed"]


def test_a_killed_upgrade_leaves_the_node_forwarding_and_the_next_start_converges(
        ulab, ports, variant_dir, tmp_path):
    """For every step of an upgrade to the variant layout (and, alternately, back): the
    upgrading process is SIGKILLed right after it; lb1 still forwards (a new connection is
    answered, the streams keep going), `pyxlb status` says an upgrade is pending where one
    is, and the next `pyxlb upgrade` completes or rolls it back and brings the datapath to
    the version asked for. The streams, open all along, end undisturbed."""
    lab = ulab
    rebuild(lab, tmp_path)
    variant = {DIR_ENV: variant_dir}
    pin = lab.pin_dir("lb1")
    points = plan_of(lab, env=variant)["steps"]
    assert points[0] == "staged" and points[-1] == "committed" and "swap:eth0" in points
    s4, s6 = streams(lab, ports)
    with s4, s6, Opener(lab, 4, pace=0.03) as opener:
        apply_here(lab, desired(lab, drained=True))
        versions = {"variant": plan_of(lab, env=variant)["to"], "this": plan_of(lab)["to"]}
        target = "variant"
        for point in points:
            env = variant if target == "variant" else {}
            killed = pyxlb(lab, "lb1", "upgrade", env={**env, KILL_ENV: point}, check=False)
            assert killed.returncode == -9, f"{point}: {killed.stdout} {killed.stderr}"
            lab.request(4, timeout=3)           # lb1 forwards whatever the step
            assert upgrade_mod.interrupted(pin) == (point != "committed"), point
            if point == "swapped":
                status = pyxlb(lab, "lb1", "status", env=env).stdout
                assert "(an interrupted one is pending)" in status, status
            pyxlb(lab, "lb1", "upgrade", env=env)
            assert str(Datapath.pinned_version(pin)) == versions[target], point
            assert not upgrade_mod.interrupted(pin), point
            # the program's own tail calls, pinned (either version's)
            with _bpf.Program.from_pinned(Datapath.prog_pin(pin)) as prog:
                assert tail_calls(prog) == CHAIN_LOCAL, point
            target = "this" if target == "variant" else "variant"
        assert_undisturbed((s4, s6), opener)
    if plan_of(lab)["needed"]:
        pyxlb(lab, "lb1", "upgrade")
    with Datapath.open(pin) as dp:
        assert dp.current_state() == desired(lab, drained=True)
