"""Datapath.apply against the real kernel: minimal writes, all-or-nothing, id recycling,
draining, read-back, and a restart that loses nothing."""

import errno
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from pyxlb import _bpf
from pyxlb import datapath as datapath_mod
from pyxlb.datapath import Datapath
from pyxlb.state import Backend, DesiredState, StateError, Vip, VipKey

SMALL = {"xlb_flows": 4096}
WEB = ("10.0.1.1", "10.0.1.2", "10.0.1.3")


def vip(text, *backends, **kw):
    return Vip(VipKey.parse(text), backends=tuple(
        b if isinstance(b, Backend) else Backend(b) for b in backends), **kw)


STATE = DesiredState((vip("192.0.2.10:80/tcp", *WEB, ring_size=13),
                      vip("192.0.2.10:443/tcp", *WEB, ring_size=13),
                      vip("[2001:db8::10]:80/tcp", "2001:db8:1::1", "2001:db8:1::2")))


def frame(sport, dport=80, src="198.51.100.7", dst="192.0.2.10"):
    if ":" in dst:
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                     IPv6(src="2001:db8:9::7", dst=dst) / TCP(sport=sport, dport=dport))
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                 IP(src=src, dst=dst) / TCP(sport=sport, dport=dport))


def backend_of(out):
    """The backend an encapsulated frame goes to (its outer destination)."""
    pkt = Ether(out)
    return pkt[IPv6].dst if IPv6 in pkt and pkt[IPv6].nh in (4, 41) else pkt[IP].dst


def prepare(dp):
    """Outer sources, and a next-hop entry (ifindex 1: XDP_TX) for every backend."""
    dp.configure(src4="10.255.0.0/16", src6="fd00:ff::/96")
    for bid in dp.layout().backend_records():
        dp.set_nexthop(bid, "02:00:00:00:00:aa", "02:00:00:00:00:bb", 1)


def send(dp, sport, **kw):
    action, out = dp.run(frame(sport, **kw))
    assert action == _bpf.XDP_TX, action
    return backend_of(out)


@pytest.fixture
def dp():
    d = Datapath.load(map_sizes=SMALL)
    yield d
    d.close()


class Recorder:
    """Records every map write apply makes: (map name, "update"/"delete"/"add_rings"/
    "delete_rings")."""

    def __init__(self, monkeypatch, fail_after=None):
        self.ops = []
        self.fail_after = fail_after
        tx = datapath_mod._Transaction
        rec = self

        def wrap(name):
            orig = getattr(tx, name)

            def call(self_, m, *args):
                if name.endswith("_rings") and not args[0]:
                    return orig(self_, m, *args)        # nothing to do: not a write
                if rec.fail_after is not None and len(rec.ops) >= rec.fail_after:
                    raise OSError(errno.E2BIG, "injected: map full")
                rec.ops.append((m.name, name))
                return orig(self_, m, *args)
            monkeypatch.setattr(tx, name, call)

        for name in ("update", "delete", "add_rings", "delete_rings"):
            wrap(name)

    def maps(self):
        return sorted({name for name, _ in self.ops})


def dump(dp):
    """Every control-plane map's contents (not counters or flows)."""
    out = {}
    for name in ("xlb_vips", "xlb_vip_addrs", "xlb_members", "xlb_backends", "xlb_nexthops"):
        m = dp.maps[name]
        out[name] = dict(m.items())
    rings = {}
    for rid in range(dp.maps.rings.max_entries):
        try:
            rings[rid] = bytes(dp.ring(rid))
        except KeyError:
            pass
    out["rings"] = rings
    return out


def test_apply_then_reapply_writes_nothing(dp, monkeypatch):
    dp.apply(STATE)
    prepare(dp)
    before = {p: send(dp, p) for p in range(1000, 1100)}
    counters = dp.counters()
    rec = Recorder(monkeypatch)
    plan = dp.apply(STATE)
    assert plan.empty and rec.ops == []
    # nothing reset, nothing flushed: same backends, counters went on
    assert {p: send(dp, p) for p in range(1000, 1100)} == before
    assert dp.counters()[0]["packets"] == counters[0]["packets"] + 100
    assert dp.stats()["flow_hit"] == 100


def test_one_backend_added_touches_only_that_vip(dp, monkeypatch):
    dp.apply(STATE)
    rec = Recorder(monkeypatch)
    new = STATE.with_vip(vip("192.0.2.10:443/tcp", *WEB, "10.0.1.4", ring_size=13))
    plan = dp.apply(new)
    # one new backend (record, counters, next hop reset), one new ring, one member, one VIP
    assert rec.maps() == ["xlb_backend_stats", "xlb_backends", "xlb_members", "xlb_nexthops",
                          "xlb_rings", "xlb_vips"]
    assert sum(1 for n, op in rec.ops if n == "xlb_vips") == 1
    assert sum(1 for n, op in rec.ops if op == "add_rings") == 1
    assert not plan.ring_deletes            # the :80 VIP still uses the shared ring
    assert dp.current_state() == new


def test_failure_half_way_leaves_the_previous_state(dp, monkeypatch):
    dp.apply(STATE)
    prepare(dp)
    served = {p: send(dp, p) for p in range(2000, 2050)}
    snapshot = dump(dp)
    changed = DesiredState((vip("192.0.2.10:80/tcp", "10.0.2.1", "10.0.2.2", ring_size=13),
                            vip("192.0.2.30:80/tcp", "10.0.2.3")))
    for fail_after in (1, 4, 9):
        Recorder(monkeypatch, fail_after=fail_after)
        with pytest.raises(OSError) as exc:
            dp.apply(changed)
        assert exc.value.errno == errno.E2BIG
        monkeypatch.undo()
        assert dump(dp) == snapshot, f"not rolled back after {fail_after} writes"
        assert dp.current_state() == STATE
        assert {p: send(dp, p) for p in range(2000, 2050)} == served


def test_a_really_full_map_rolls_back():
    with Datapath.load(map_sizes={**SMALL, "xlb_members": 8}) as d:
        d.apply(STATE)          # 3 + 3 + 2 = 8 members: full
        snapshot = dump(d)
        with pytest.raises(OSError) as exc:
            d.apply(STATE.with_vip(vip("192.0.2.40:80/tcp", "10.0.1.1")))
        assert exc.value.errno == errno.E2BIG
        assert dump(d) == snapshot
        d._layout = None
        assert d.current_state() == STATE


def test_bad_state_writes_nothing(dp, monkeypatch):
    dp.apply(STATE)
    rec = Recorder(monkeypatch)
    with pytest.raises(StateError):
        dp.apply(DesiredState((vip("192.0.2.1:80/tcp", Backend("10.0.0.1", local=True)),
                               vip("192.0.2.2:80/tcp", "10.0.0.1"))))
    assert rec.ops == []


def test_recycled_backend_id_never_inherits_flows(dp):
    dp.apply(STATE)
    prepare(dp)
    on = {p: send(dp, p) for p in range(3000, 3200)}
    victim_flows = [p for p, b in on.items() if b == "10.0.1.3"]
    assert victim_flows
    old_id = dp.layout().backend_ids[Backend("10.0.1.3").address]
    without = DesiredState(tuple(v.replace(backends=tuple(
        b for b in v.backends if str(b.address) != "10.0.1.3")) for v in STATE))
    dp.apply(without)
    again = DesiredState(tuple(v.replace(backends=v.backends + (Backend("10.0.7.7"),))
                               if v.key.family == 4 else v for v in without))
    dp.apply(again)
    prepare(dp)
    assert dp.layout().backend_ids[Backend("10.0.7.7").address] == old_id   # id reused
    prepare(dp)
    stale_before = dp.stats()["flow_stale"]
    for p in victim_flows:
        send(dp, p)
    # every old flow found its pin stale (gen differs) and was re-hashed through the ring
    assert dp.stats()["flow_stale"] - stale_before == len(victim_flows)


def test_drain_keeps_flows_and_takes_no_new_ones(dp):
    dp.apply(STATE)
    prepare(dp)
    on = {p: send(dp, p) for p in range(4000, 4300)}
    drained = DesiredState(tuple(v.replace(backends=tuple(
        Backend(b.address, state="draining") if str(b.address) == "10.0.1.2" else b
        for b in v.backends)) for v in STATE))
    dp.apply(drained)
    assert {p: send(dp, p) for p in range(4000, 4300)} == on       # open flows stay
    fresh = {send(dp, p) for p in range(5000, 5300)}
    assert "10.0.1.2" not in fresh and fresh <= {"10.0.1.1", "10.0.1.3"}


def test_backend_removed_from_one_vip_loses_only_that_vips_flows(dp):
    dp.apply(STATE)
    prepare(dp)
    on80 = {p: send(dp, p) for p in range(6000, 6200)}
    on443 = {p: send(dp, p, dport=443) for p in range(6000, 6200)}
    # 10.0.1.3 leaves :80 but still serves :443
    dp.apply(STATE.with_vip(vip("192.0.2.10:80/tcp", "10.0.1.1", "10.0.1.2", ring_size=13)))
    after80 = {p: send(dp, p) for p in range(6000, 6200)}
    after443 = {p: send(dp, p, dport=443) for p in range(6000, 6200)}
    assert "10.0.1.3" not in after80.values()
    assert all(after80[p] == b for p, b in on80.items() if b != "10.0.1.3")
    assert after443 == on443


def test_ids_and_state_read_back_from_pinned_maps(bpffs_dir):
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as first:
        first.apply(STATE)
        layout = first.layout()
    with Datapath.open(bpffs_dir) as second:
        assert second.current_state() == STATE
        got = second.layout()
        assert (got.vip_ids, got.backend_ids, got.ring_ids) == \
            (layout.vip_ids, layout.backend_ids, layout.ring_ids)
        assert second.apply(STATE).empty
        second.destroy()


def test_open_without_a_datapath_is_a_clear_error(bpffs_dir):
    from pyxlb.errors import PyxlbError
    with pytest.raises(PyxlbError, match="no balancer datapath at"):
        Datapath.open(os.path.join(bpffs_dir, "nothing"))


RESTART_CHILD = textwrap.dedent("""
    import sys
    from pyxlb.datapath import Datapath
    from pyxlb.config import load_text
    state = load_text(sys.stdin.read())
    dp = Datapath.create(sys.argv[1], map_sizes={"xlb_flows": 4096})
    dp.configure(src4="10.255.0.0/16", src6="fd00:ff::/96")
    plan = dp.apply(state)
    for bid in dp.layout().backend_records():
        dp.set_nexthop(bid, "02:00:00:00:00:aa", "02:00:00:00:00:bb", 1)
    print("empty" if plan.empty else "changed")
""")


def test_restart_loses_nothing(bpffs_dir):
    """A process applies and exits while packets keep flowing through the pinned program;
    a new process adopts the maps and re-applies the same state: no write, no failed
    packet, counters keep counting, flows keep their backends."""
    from pyxlb.config import dump as dump_yaml

    def child():
        return subprocess.run([sys.executable, "-c", RESTART_CHILD, bpffs_dir],
                              input=dump_yaml(STATE), capture_output=True, text=True,
                              timeout=60, check=True).stdout.strip()

    assert child() == "changed"
    prog = _bpf.Program.from_pinned(Datapath.prog_pin(bpffs_dir))
    results, stop = [], threading.Event()

    def loop():
        deadline = time.monotonic() + 20
        i = 0
        while not stop.is_set() and time.monotonic() < deadline and i < 200000:
            sport = 7000 + i % 200
            action, out, _ = prog.test_run(frame(sport))
            results.append((sport, action, backend_of(out) if action == _bpf.XDP_TX else None))
            i += 1

    worker = threading.Thread(target=loop)
    worker.start()
    try:
        time.sleep(0.2)
        assert child() == "empty"          # the restarted process changes nothing
        time.sleep(0.2)
    finally:
        stop.set()
        worker.join()
    assert len(results) > 400
    assert all(action == _bpf.XDP_TX for _, action, _ in results)
    first = {}
    for sport, _, backend in results:
        assert first.setdefault(sport, backend) == backend, "a flow changed backend"
    with Datapath.open(bpffs_dir) as dp:
        total = sum(v["packets"] for v in dp.counters())
        assert total == len(results)        # one count per packet, none reset
        assert dp.stats()["flow_hit"] == len(results) - len(first)
        dp.destroy()
    prog.close()
