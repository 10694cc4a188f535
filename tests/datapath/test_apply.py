"""Datapath.apply against the real kernel: minimal writes, all-or-nothing, id recycling,
draining, read-back, and a restart that loses nothing."""

import errno
import ipaddress
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
from pyxlb import _layouts as L
from pyxlb.datapath import Datapath
from pyxlb.datapath.apply import Transaction
from pyxlb.state import Backend, DesiredState, StateError, Vip, VipKey

from .pristine import Pristine
from .raw import raw_nexthops

# Tests here count on every flow they send staying pinned. The IPv4 set hash has a random
# seed per load, so a set can overflow (more than 4 flows: its quietest is forgotten) by
# chance: with 2^16 sets and the at most 600 flows a test sends, the odds that any set
# does are below 1 in 10^7 (1,024 sets made them about 1 in 3 for 600 flows).
SMALL = {"xlb_flowsets6": 1024, "xlb_flowsets4": 1 << 16}
WEB = ("10.0.1.1", "10.0.1.2", "10.0.1.3")


def vip(text, *backends, **kw):
    return Vip(VipKey.parse(text), backends=tuple(
        b if isinstance(b, Backend) else Backend(b) for b in backends), **kw)


STATE = DesiredState((vip("192.0.2.10:80/tcp", *WEB, ring_size=13),
                      vip("192.0.2.10:443/tcp", *WEB, ring_size=13),
                      vip("[2001:db8::10]:80/tcp", "2001:db8:1::1", "2001:db8:1::2")))


def frame(sport, dport=80, src="198.51.100.7", dst="192.0.2.10", flags="S"):
    if ":" in dst:
        return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                     IPv6(src="2001:db8:9::7", dst=dst) / TCP(sport=sport, dport=dport,
                                                               flags=flags))
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                 IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags))


def backend_of(out):
    """The backend an encapsulated frame goes to (its outer destination)."""
    pkt = Ether(out)
    return pkt[IPv6].dst if IPv6 in pkt and pkt[IPv6].nh in (4, 41) else pkt[IP].dst


def prepare(dp):
    """Outer sources, and a raw next-hop entry (ifindex 1: XDP_TX) for every backend."""
    dp.configure(src4="10.255.0.0/16", src6="fd00:ff::/96")
    raw_nexthops(dp)


def send(dp, sport, **kw):
    action, out = dp.run(frame(sport, **kw))
    assert action == _bpf.XDP_TX, action
    return backend_of(out)


def open_flow(dp, sport, **kw):
    """A connection's first two packets (SYNs: neither promotes the flow, see
    test_a_full_set_takes_new_flows_in_its_back_half_and_promotes_only_late_packets): the
    first pins the flow, the second finds it. Returns the backend, the same for both."""
    first = send(dp, sport, **kw)
    assert send(dp, sport, **kw) == first
    return first


@pytest.fixture(scope="module")
def _balancer():
    objects = Pristine(Datapath, SMALL)
    yield objects
    objects.close()


@pytest.fixture
def dp(_balancer):
    """The balancer with SMALL maps, as freshly loaded (one load per module: pristine.py)."""
    return _balancer.fresh()


class Recorder:
    """Records every map write apply makes: (map name, "update"/"delete"/"insert"/"remove"/
    "add_inners"/"delete_inners")."""

    def __init__(self, monkeypatch, fail_after=None):
        self.ops = []
        self.fail_after = fail_after
        tx = Transaction
        rec = self

        def wrap(name):
            orig = getattr(tx, name)

            def call(self_, m, *args, **kw):
                if name.endswith("_inners") and not args[0]:
                    return orig(self_, m, *args, **kw)  # nothing to do: not a write
                if rec.fail_after is not None and len(rec.ops) >= rec.fail_after:
                    if name == "add_inners":
                        for inner in args[0].values():
                            inner.close()           # as add_inners does when it fails
                    raise OSError(errno.E2BIG, "injected: map full")
                rec.ops.append((m.name, name))
                return orig(self_, m, *args, **kw)
            monkeypatch.setattr(tx, name, call)

        for name in ("update", "delete", "insert", "remove", "add_inners", "delete_inners"):
            wrap(name)

    def maps(self):
        return sorted({name for name, _ in self.ops})


def dump(dp):
    """Every control-plane map's contents (not counters or flows)."""
    out = {}
    for name in ("xlb_vips", "xlb_vip_addrs", "xlb_members", "xlb_backends", "xlb_nexthops"):
        m = dp.maps[name]
        out[name] = dict(m.items())
    out["xlb_source_ranges"] = set(dp.maps.source_ranges.keys())
    rings = {}
    for rid in range(dp.maps.rings.max_entries):
        try:
            rings[rid] = bytes(dp.ring(rid))
        except KeyError:
            pass
    out["rings"] = rings
    # the VIP index: which inner array is live (a rollback puts the very same one back)
    out["vip_index"] = dp.maps.vip_index.get(0) and dp.maps.vip_index.inner_id(0)
    return out


def test_apply_then_reapply_writes_nothing(dp, monkeypatch):
    dp.apply(STATE)
    prepare(dp)
    before = {p: open_flow(dp, p) for p in range(1000, 1100)}
    counters = dp.counters()
    rec = Recorder(monkeypatch)
    result = dp.apply(STATE)
    assert result.plan.empty and rec.ops == [] and result.seconds is None
    # nothing reset, nothing flushed: same backends, counters went on
    assert {p: send(dp, p) for p in range(1000, 1100)} == before
    assert dp.counters()[0]["packets"] == counters[0]["packets"] + 100
    assert dp.stats()["flow_hit"] == 200       # each flow's second packet, then these


def test_the_result_times_an_apply_that_writes_and_the_hook_gets_it(dp):
    seen = []
    dp.on_apply = seen.append
    result = dp.apply(STATE)
    assert not result.plan.empty and result.writes > 0
    assert 0 < result.live_seconds <= result.seconds
    assert seen == [result]
    again = dp.apply(STATE)                             # nothing to write: not timed
    assert again.plan.empty and (again.seconds, again.live_seconds, again.writes) == \
        (None, None, 0)
    dry = dp.apply(DesiredState(), dry_run=True)
    assert len(dry.plan.removed) == 3 and dry.seconds is None
    assert seen == [result] and dp.current_state() == STATE


def test_one_backend_added_touches_only_that_vip(dp, monkeypatch):
    dp.apply(STATE)
    rec = Recorder(monkeypatch)
    new = STATE.with_vip(vip("192.0.2.10:443/tcp", *WEB, "10.0.1.4", ring_size=13))
    result = dp.apply(new)
    # one new backend (record, counters, next hop reset), one new ring, one member, one VIP
    # (no chain peer: no VIP is stateless)
    assert rec.maps() == ["xlb_backend_stats", "xlb_backends", "xlb_members", "xlb_nexthops",
                          "xlb_rings", "xlb_vip_index", "xlb_vips"]
    assert sum(1 for n, op in rec.ops if n == "xlb_vips") == 1
    assert rec.ops.count(("xlb_rings", "add_inners")) == 1
    assert result.writes == len(rec.ops)
    assert not result.plan.ring_deletes     # the :80 VIP still uses the shared ring
    assert dp.current_state() == new


def test_failure_half_way_leaves_the_previous_state(dp, monkeypatch):
    dp.apply(STATE)
    prepare(dp)
    served = {p: open_flow(dp, p) for p in range(2000, 2050)}
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
        assert d.layout(refresh=True).state == STATE


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
    on = {p: open_flow(dp, p) for p in range(3000, 3200)}
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
    on = {p: open_flow(dp, p) for p in range(4000, 4300)}
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
    on80 = {p: open_flow(dp, p) for p in range(6000, 6200)}
    on443 = {p: open_flow(dp, p, dport=443) for p in range(6000, 6200)}
    # 10.0.1.3 leaves :80 but still serves :443
    dp.apply(STATE.with_vip(vip("192.0.2.10:80/tcp", "10.0.1.1", "10.0.1.2", ring_size=13)))
    after80 = {p: send(dp, p) for p in range(6000, 6200)}
    after443 = {p: send(dp, p, dport=443) for p in range(6000, 6200)}
    assert "10.0.1.3" not in after80.values()
    assert all(after80[p] == b for p, b in on80.items() if b != "10.0.1.3")
    assert after443 == on443


def _without(state, text):
    key = VipKey.parse(text)
    return DesiredState(tuple(v for v in state if v.key != key))


OTHERS = ("10.0.2.1", "10.0.2.2", "10.0.2.3")


def test_a_vip_removed_and_added_back_forgets_its_flows(dp):
    """Kubernetes reuses pool addresses: a VIP that goes and comes back with other
    backends must not send its old flows to the old backends, even while those still
    serve another VIP (their ids stay valid, so the pins would)."""
    dp.apply(STATE)
    prepare(dp)
    on80 = {p: open_flow(dp, p) for p in range(7000, 7100)}
    on443 = {p: open_flow(dp, p, dport=443) for p in range(7000, 7100)}
    dp.apply(_without(STATE, "192.0.2.10:80/tcp"))
    assert dp.run(frame(7000))[0] == _bpf.XDP_PASS, "the VIP is gone"
    dp.apply(STATE.with_vip(vip("192.0.2.10:80/tcp", *OTHERS, ring_size=13)))
    prepare(dp)
    assert {send(dp, p) for p in on80} <= set(OTHERS)
    assert {p: send(dp, p, dport=443) for p in on443} == on443, ":443 kept its flows"


def test_clientip_affinity_does_not_outlive_its_vip(dp):
    """The same with ClientIP affinity: every new connection of a client that had one
    follows the affinity pin, so a stale one would take them all to the old backend."""
    sticky = STATE.with_vip(vip("192.0.2.10:80/tcp", *WEB, ring_size=13,
                                affinity="client-ip"))
    dp.apply(sticky)
    prepare(dp)
    clients = [f"198.51.100.{i}" for i in range(1, 61)]
    before = {c: open_flow(dp, 9000, src=c) for c in clients}
    assert set(before.values()) <= set(WEB)
    dp.apply(_without(sticky, "192.0.2.10:80/tcp"))
    dp.apply(sticky.with_vip(vip("192.0.2.10:80/tcp", *OTHERS, ring_size=13,
                                 affinity="client-ip")))
    prepare(dp)
    assert {send(dp, 9001, src=c) for c in clients} <= set(OTHERS)


def test_a_port_zero_vip_taking_the_address_forgets_the_old_ports_flows(dp):
    """192.0.2.10:80 goes and a port-0 VIP on the address (other backends) takes its
    packets; and the other way round, a specific port added under a port-0 VIP takes its
    own packets away from the port-0 VIP's pins."""
    dp.apply(STATE)
    prepare(dp)
    on80 = {p: open_flow(dp, p) for p in range(7200, 7300)}
    on443 = {p: open_flow(dp, p, dport=443) for p in range(7200, 7300)}
    wildcard = _without(STATE, "192.0.2.10:80/tcp").with_vip(
        vip("192.0.2.10:0/tcp", *OTHERS, ring_size=13))
    dp.apply(wildcard)
    prepare(dp)
    assert {send(dp, p) for p in on80} <= set(OTHERS)
    assert {p: send(dp, p, dport=443) for p in on443} == on443, ":443 kept its flows"
    # port 8080 is served by the port-0 VIP; then a VIP of its own takes it over
    on8080 = {p: open_flow(dp, p, dport=8080) for p in range(7300, 7400)}
    assert set(on8080.values()) <= set(OTHERS)
    dp.apply(wildcard.with_vip(vip("192.0.2.10:8080/tcp", *WEB, ring_size=13)))
    prepare(dp)
    assert {send(dp, p, dport=8080) for p in on8080} <= set(WEB)
    assert {send(dp, p) for p in on80} <= set(OTHERS), "the port-0 VIP's own flows stay"


def test_ids_and_state_read_back_from_pinned_maps(bpffs_dir):
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as first:
        first.apply(STATE)
        layout = first.layout()
    with Datapath.open(bpffs_dir) as second:
        assert second.current_state() == STATE
        got = second.layout()
        assert (got.vip_ids, got.backend_ids, got.ring_ids) == \
            (layout.vip_ids, layout.backend_ids, layout.ring_ids)
        assert second.apply(STATE).plan.empty
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
    dp = Datapath.create(sys.argv[1], map_sizes={"xlb_flowsets6": 1024, "xlb_flowsets4": 1 << 18})
    dp.configure(src4="10.255.0.0/16", src6="fd00:ff::/96")
    plan = dp.apply(state).plan
    for bid in dp.layout().backend_records():       # raw: out of the test run's interface
        dp.tables.nexthops.put(bid, "02:00:00:00:00:aa", "02:00:00:00:00:bb", 1)
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
            sport = 7000 + (i // 2) % 200     # two packets in a row: each flow opens
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


# -- source ranges ----------------------------------------------------------------------------

CLIENT = "198.51.100.7"             # frame()'s IPv4 source
RANGED = DesiredState((
    vip("192.0.2.10:80/tcp", *WEB, ring_size=13, source_ranges=("198.51.100.0/24",)),
    vip("192.0.2.10:443/tcp", *WEB, ring_size=13),
    vip("[2001:db8::10]:80/tcp", "2001:db8:1::1", "2001:db8:1::2",
        source_ranges=("2001:db8:9::/48", "::ffff:198.51.100.0/120"))))


def ranges_in_maps(dp):
    """{VIP key text: [prefix, ...]} from the trie, through the VIP ids of the layout."""
    by_id = {i: str(k) for k, i in dp.layout().vip_ids.items()}
    return {by_id.get(vid, vid): nets for vid, nets in dp.source_ranges().items()}


def admitted(dp, sport, **kw):
    """True when the packet is balanced, False when refused by source range."""
    before = dp.stats()["drop_source_range"]
    action, _ = dp.run(frame(sport, **kw))
    if action == _bpf.XDP_DROP:
        assert dp.stats()["drop_source_range"] == before + 1, "dropped for another reason"
        return False
    assert action == _bpf.XDP_TX, action
    return True


def test_ranges_added_changed_removed(dp, monkeypatch):
    dp.apply(STATE)
    prepare(dp)
    assert admitted(dp, 100) and dp.source_ranges() == {}
    # add: the trie gets the prefixes, the VIP record the flag
    dp.apply(RANGED)
    # (the trie keeps IPv4 as ::ffff:a.b.c.d, so the IPv6 VIP's mapped prefix reads as IPv4
    # at this level; current_state() gives it back as written)
    assert ranges_in_maps(dp) == {
        "192.0.2.10:80/tcp": ["198.51.100.0/24"],
        "[2001:db8::10]:80/tcp": ["198.51.100.0/24", "2001:db8:9::/48"]}
    assert dp.layout(refresh=True).state == RANGED
    assert admitted(dp, 101)
    assert not admitted(dp, 102, src="203.0.113.5")
    assert admitted(dp, 103, src="203.0.113.5", dport=443)       # the other port: no ranges
    assert admitted(dp, 104, dst="2001:db8::10")                   # 2001:db8:9::7 is in
    # change: one prefix replaced; only the trie is written (the flag stays)
    rec = Recorder(monkeypatch)
    changed = RANGED.with_vip(RANGED.vip("192.0.2.10:80/tcp").replace(
        source_ranges=("203.0.113.0/24",)))
    plan = dp.apply(changed).plan
    assert sorted(rec.ops) == [("xlb_source_ranges", "insert"), ("xlb_source_ranges", "remove")]
    assert "source ranges: 198.51.100.0/24 -> 203.0.113.0/24" in "\n".join(plan.describe())
    monkeypatch.undo()
    assert not admitted(dp, 105) and admitted(dp, 106, src="203.0.113.5")
    # remove: the flag goes, then the entries; every client is admitted again
    dp.apply(STATE)
    assert dp.source_ranges() == {}
    assert admitted(dp, 107, src="203.0.113.9") and admitted(dp, 108, dst="2001:db8::10")
    assert dp.current_state() == STATE


def test_ranges_reapplied_write_nothing_and_read_back(bpffs_dir, monkeypatch):
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as first:
        first.apply(RANGED)
        rec = Recorder(monkeypatch)
        assert first.apply(RANGED).plan.empty and rec.ops == []
        monkeypatch.undo()
    with Datapath.open(bpffs_dir) as second:
        # the IPv6 VIP's ::ffff:198.51.100.0/120 reads back as the IPv6 prefix it was
        assert second.current_state() == RANGED
        rec = Recorder(monkeypatch)
        assert second.apply(RANGED).plan.empty and rec.ops == []
        second.destroy()


def test_ranges_roll_back_on_failure(dp, monkeypatch):
    changed = DesiredState((
        vip("192.0.2.10:80/tcp", *WEB, ring_size=13, source_ranges=("203.0.113.0/24",)),
        vip("192.0.2.10:443/tcp", *WEB, ring_size=13, source_ranges=("10.9.0.0/16",)),
        vip("192.0.2.20:80/tcp", "10.0.1.9", source_ranges=("198.51.100.7/32",))))
    # the writes this change makes, learnt on a twin datapath
    with Datapath.load(map_sizes=SMALL) as twin:
        twin.apply(RANGED)
        rec = Recorder(monkeypatch)
        twin.apply(changed)
        monkeypatch.undo()
    ops = rec.ops
    first_insert = ops.index(("xlb_source_ranges", "insert"))
    first_remove = ops.index(("xlb_source_ranges", "remove"))
    assert first_insert < ops.index(("xlb_vips", "update")) < first_remove < len(ops) - 1
    dp.apply(RANGED)
    prepare(dp)
    snapshot = dump(dp)
    # fail just after the first trie insert, just after the first removal, and at the last
    # write: each time every write made so far is undone
    for fail_after in (first_insert + 1, first_remove + 1, len(ops) - 1):
        Recorder(monkeypatch, fail_after=fail_after)
        with pytest.raises(OSError) as exc:
            dp.apply(changed)
        monkeypatch.undo()
        assert exc.value.errno == errno.E2BIG
        assert dump(dp) == snapshot, f"not rolled back after {fail_after} writes"
        assert dp.current_state() == RANGED
        assert admitted(dp, 200) and not admitted(dp, 201, src="203.0.113.5")
    dp.apply(changed)
    assert dp.layout(refresh=True).state == changed
    assert admitted(dp, 202, src="203.0.113.5") and not admitted(dp, 203)


def test_raw_full_trie_rolls_back():
    """The kernel refuses an entry past max_entries: the entries already written go. (The
    trie is filled by hand beyond what the planner counts.)"""
    with Datapath.load(map_sizes={**SMALL, "xlb_source_ranges": 4}) as d:
        d.apply(RANGED)                 # 3 entries
        snapshot = dump(d)
        # 4 in total fits the planner's limit; the kernel is given a smaller trie by hand
        bigger = RANGED.with_vip(vip("192.0.2.30:80/tcp", "10.0.1.1",
                                     source_ranges=("10.8.0.0/16",)))
        d.tables.source_ranges.add(999, "::/0")
        with pytest.raises(OSError) as exc:
            d.apply(bigger)
        assert exc.value.errno == errno.ENOSPC      # what a full LPM trie answers
        d.tables.source_ranges.remove(999, "::/0")
        assert dump(d) == snapshot
        assert d.layout(refresh=True).state == RANGED


def test_too_many_ranges_is_a_state_error_before_any_write(monkeypatch):
    with Datapath.load(map_sizes={**SMALL, "xlb_source_ranges": 4}) as d:
        d.apply(RANGED)
        rec = Recorder(monkeypatch)
        five = tuple(f"10.{i}.0.0/16" for i in range(2))
        with pytest.raises(StateError, match=r"5 source ranges .* do not fit the source-range "
                                             r"map \(4\)"):
            d.apply(RANGED.with_vip(vip("192.0.2.30:80/tcp", "10.0.1.1", source_ranges=five)))
        # 4 fit, but old and new together (3 + 3) would not while they change
        swap = DesiredState(tuple(v.replace(source_ranges=()) for v in RANGED)).with_vip(
            vip("192.0.2.30:80/tcp", "10.0.1.1", source_ranges=("10.0.0.0/16", "10.1.0.0/16",
                                                                "10.2.0.0/16")))
        with pytest.raises(StateError, match="needs 6 at once"):
            d.apply(swap)
        assert rec.ops == []
        assert d.current_state() == RANGED


def test_raw_stray_entries_are_removed_and_never_admit(dp):
    """Entries no VIP record accounts for (an apply killed half-way leaves them; here they
    are written by hand) are read back as strays: the next apply deletes them, first, and
    keeps those wanted again."""
    dp.apply(STATE)
    prepare(dp)
    ids = dp.layout().vip_ids
    v80, v443 = ids[VipKey.parse("192.0.2.10:80/tcp")], ids[VipKey.parse("192.0.2.10:443/tcp")]
    ranges = dp.tables.source_ranges
    ranges.add(v80, "203.0.113.0/24")                   # a VIP without the flag
    ranges.add(v443, "198.51.100.0/24")
    ranges.add(77, "10.0.0.0/8")                        # an id no VIP holds
    layout = dp.layout(refresh=True)
    assert layout.state == STATE and len(layout.stray_ranges) == 3
    assert admitted(dp, 300, src="198.51.100.9")        # the flagless VIP admits everyone
    wanted = STATE.with_vip(vip("192.0.2.10:443/tcp", *WEB, ring_size=13,
                                source_ranges=("198.51.100.0/24",)))
    plan = dp.apply(wanted).plan
    assert not plan.range_writes and len(plan.stray_deletes) == 2
    assert dp.source_ranges() == {v443: ["198.51.100.0/24"]}
    assert not admitted(dp, 301, src="203.0.113.9", dport=443)
    assert dp.layout(refresh=True).stray_ranges == frozenset()
    assert dp.apply(wanted).plan.empty


def test_removed_vip_takes_its_ranges_and_a_recycled_id_starts_clean(dp):
    dp.apply(RANGED)
    prepare(dp)
    assert not admitted(dp, 400, src="203.0.113.1")
    vid = dp.layout().vip_ids[VipKey.parse("192.0.2.10:80/tcp")]
    dp.apply(RANGED.without_vip("192.0.2.10:80/tcp"))
    assert vid not in dp.source_ranges()
    again = RANGED.without_vip("192.0.2.10:80/tcp").with_vip(
        vip("192.0.2.10:80/tcp", *WEB, ring_size=13))
    dp.apply(again)
    assert dp.layout().vip_ids[VipKey.parse("192.0.2.10:80/tcp")] == vid     # id reused
    assert dp.vip_range_drops(vid) == 0                 # its refused count starts at zero
    assert admitted(dp, 401, src="203.0.113.1")


def test_each_family_has_its_flow_table(dp):
    """IPv4 flows are pinned in the sets of xlb_flowsets4, IPv6 flows in xlb_flows; a flow
    of either family is found again there (a hit, the same backend)."""
    dp.apply(STATE)
    prepare(dp)
    b4 = send(dp, 5000)
    assert dp.flow_counts() == (1, 0)
    b6 = send(dp, 5000, dst="2001:db8::10")
    assert dp.flow_counts() == (1, 1)
    assert (send(dp, 5000), send(dp, 5000, dst="2001:db8::10")) == (b4, b6)
    assert dp.stats()["flow_hit"] == 2 and dp.stats()["flow_miss"] == 2
    keys = {k["family"]: k for k, _ in dp.flows()}
    assert keys[L.FAMILY_V4]["dst"] == "192.0.2.10" and keys[L.FAMILY_V4]["sport"] == 5000
    assert keys[L.FAMILY_V6]["dst"] == "2001:db8::10"


def test_a_new_cluster_seed_keeps_every_pinned_flow(dp):
    """Changing the flow-hash seed re-deals new flows, but flows already in the table stay
    where they are: the IPv4 sets are found by the table's own seed, not the cluster's."""
    dp.apply(STATE)
    prepare(dp)
    ports = range(6000, 6200)
    before = {(p, d): open_flow(dp, p, dst=d)
              for p in ports for d in ("192.0.2.10", "2001:db8::10")}
    hits = dp.stats()["flow_hit"]
    dp.configure(seed=0x5EED)
    assert {(p, d): send(dp, p, dst=d) for p, d in before} == before
    assert dp.stats()["flow_hit"] == hits + len(before)
    with Datapath.load(map_sizes=SMALL) as other:      # a node that had the new seed
        other.apply(STATE)
        prepare(other)
        other.configure(seed=0x5EED)
        # it deals many of the pinned flows elsewhere: only the table kept them
        moved = sum(send(other, p, dst=d) != b for (p, d), b in before.items())
        assert moved > len(before) // 3
        # and new flows follow the new seed: dealt as that node deals them
        fresh = [(p, d) for p in range(7000, 7100) for d in ("192.0.2.10", "2001:db8::10")]
        assert [send(dp, p, dst=d) for p, d in fresh] == [send(other, p, dst=d)
                                                          for p, d in fresh]


@pytest.fixture
def one_set():
    """A balancer whose IPv4 flow table is one set: every IPv4 flow shares it (and no
    insertion limit: the default for one set would be 2 new flows a CPU a second)."""
    d = Datapath.load(map_sizes={"xlb_flowsets6": 1024, "xlb_flowsets4": 1})
    d.apply(STATE)
    prepare(d)
    d.set_insert_limits(0)
    yield d
    d.close()


def ways(d):
    return [k["sport"] for k, _ in d.flows()]


def positions(d):
    """The one set's ways in order: each flow's source port, None for an empty way."""
    out = [None] * L.FLOW4_WAYS
    for way, raw_key, _ in L.flow4_ways(d.maps.flows4.lookup(0)):
        out[way] = L.unpack_flow4_key(raw_key)["sport"]
    return out


def test_a_full_set_takes_new_flows_in_its_back_half_and_promotes_only_late_packets(one_set):
    """A new IPv4 flow takes its set's first empty way; in a full set it enters at way 2,
    the head of the back half, and way 3's flow is forgotten. A flow in the back half moves
    to the front (way 0) only by a packet that is no SYN and comes XLB_PROMOTE_AGE (about
    67 ms) or more after it entered: a forged flow's second packet right behind its first
    does not promote it. So one-packet and two-packet floods churn the back half and leave
    the front half's flows alone. A pushed-out flow is balanced again (a miss)."""
    d = one_set
    age = (L.PROMOTE_AGE << L.STAMP_SHIFT) / 1e9 + 0.02
    ack = dict(flags="A")
    for p in (7001, 7002, 7003, 7004):  # empty ways, in order
        send(d, p)
    assert positions(d) == [7001, 7002, 7003, 7004]
    send(d, 7005)                       # full: the back half moves down, 7004 goes
    assert positions(d) == [7001, 7002, 7005, 7003]
    send(d, 7005, **ack)                # a second packet at once: no promotion
    assert positions(d) == [7001, 7002, 7005, 7003]
    time.sleep(age)
    send(d, 7003, flags="S")            # a SYN never promotes, however late
    assert positions(d) == [7001, 7002, 7005, 7003]
    send(d, 7003, **ack)                # late and no SYN: to the front
    assert positions(d) == [7003, 7001, 7002, 7005]
    send(d, 7003, **ack)                # a hit in the front half moves nothing
    assert positions(d) == [7003, 7001, 7002, 7005]
    for p in (7006, 7007, 7008):        # a flood of two-packet flows
        send(d, p)
        send(d, p, **ack)
    assert positions(d) == [7003, 7001, 7008, 7007]
    before = d.stats()
    send(d, 7002, **ack)                # pushed out by the flood: a miss, and back in
    assert d.stats()["flow_miss"] == before["flow_miss"] + 1
    assert positions(d) == [7003, 7001, 7002, 7008]
    assert d.flow_counts() == (4, 0) and d.flow_ways()[0] == 4


def test_the_datapath_takes_a_way_only_when_its_check_holds(one_set):
    """A way written from Python with the check made by pack_flow4_way pins its flow; the
    same way with one bit of its check wrong (as a way torn by two writers would read) is
    no flow: a miss, and the flow gets a way of its own."""
    d = one_set
    b = send(d, 7100)
    addr_of = {bid: str(a) for a, bid in d.layout().backend_ids.items()}
    other = next(bid for bid, a in sorted(addr_of.items()) if a != b and a in WEB)
    gen = L.unpack_backend(d.maps.backends.lookup(other))["gen"]
    src = ipaddress.ip_address("198.51.100.7").packed + bytes(12)
    dst = ipaddress.ip_address("192.0.2.10").packed + bytes(12)
    way = L.pack_flow4_way(L.pack_flow4_key(src, dst, 7100, 80, 6), L.pack_flow(other, gen, 1))
    wsz, ssz = L.SIZES["xlb_flow4_way"], L.SIZES["xlb_flowset4"]
    d.maps.flows4.update(0, way + bytes(ssz - wsz))
    before = d.stats()
    assert send(d, 7100) == addr_of[other]
    assert d.stats()["flow_hit"] == before["flow_hit"] + 1
    torn = way[:-1] + bytes([way[-1] ^ 0x80])
    d.maps.flows4.update(0, torn + bytes(ssz - wsz))
    assert d.flows() == []
    assert send(d, 7100) == b                   # Maglev's choice again
    assert d.stats()["flow_miss"] == before["flow_miss"] + 1
    assert ways(d) == [7100]


def test_two_processes_apply_in_turn_without_clashing_ids(bpffs_dir):
    """The agent and the CLI on one pinned datapath: the CLI's apply comes between two of
    the agent's. The agent reads the maps again before planning (the epoch moved): its
    state replaces the CLI's whole (the CLI's VIP goes), and the backend it adds does not
    take the id the CLI gave another backend, which would leave the CLI's VIP sending its
    packets to the agent's backend."""
    agent = Datapath.create(bpffs_dir, map_sizes=SMALL)
    try:
        agent.apply(DesiredState((vip("192.0.2.10:80/tcp", "10.0.1.1"),)))
        with Datapath.open(bpffs_dir) as cli:
            cli.apply(DesiredState((vip("192.0.2.10:80/tcp", "10.0.1.1"),
                                    vip("192.0.2.10:81/tcp", "10.0.1.2"))))
        final = DesiredState((vip("192.0.2.10:80/tcp", "10.0.1.3"),))
        agent.apply(final)
        with Datapath.open(bpffs_dir) as reader:
            assert reader.current_state() == final
        prepare(agent)
        assert send(agent, 1000) == "10.0.1.3"
        action, _ = agent.run(frame(1000, dport=81))
        assert action == _bpf.XDP_PASS
    finally:
        agent.destroy()
        agent.close()


def test_the_epoch_moves_once_per_apply_that_writes(dp):
    def epoch():
        return dp.tables.epoch.read()
    assert epoch() == 0
    dp.apply(STATE)
    assert epoch() == 1
    dp.apply(STATE)                                     # nothing to write
    dp.apply(STATE.with_vip(vip("192.0.2.40:80/tcp", "10.0.1.1")), dry_run=True)
    assert epoch() == 1
    dp.apply(STATE.with_vip(vip("192.0.2.40:80/tcp", "10.0.1.1")))
    assert epoch() == 2


def test_applies_to_one_pinned_datapath_take_turns(bpffs_dir):
    """editing() holds the lock across read, edit and apply (as the CLI's edits do): another
    handle's apply waits for it, and the edit sees what the maps held when it began."""
    first = Datapath.create(bpffs_dir, map_sizes=SMALL)
    second = Datapath.open(bpffs_dir)
    try:
        first.apply(STATE)
        second.apply(STATE.without_vip(VipKey.parse("192.0.2.10:443/tcp")))
        done = threading.Event()

        def apply():
            second.apply(STATE)
            done.set()
        with first.editing():
            assert first.current_state() == second.current_state()   # read again
            worker = threading.Thread(target=apply)
            worker.start()
            edited = first.current_state().with_vip(vip("192.0.2.50:80/tcp", "10.0.1.1"))
            first.apply(edited)                 # the lock is this object's: no wait
            assert not done.wait(0.3), "an apply ran while another held the lock"
        worker.join(10)
        assert done.is_set() and first.layout(refresh=True).state == STATE
    finally:
        second.close()
        first.destroy()
        first.close()


def test_reading_back_while_another_handle_applies_sees_whole_states(bpffs_dir):
    """A reader does not take the apply lock (`pyxlb vip list`, the agent's tests): it reads
    the maps in the reverse of the order apply writes them, so a VIP it reads never names a
    backend id it has not read. Here VIPs with fresh backends come and go under it."""
    writer = Datapath.create(bpffs_dir, map_sizes=SMALL)
    reader = Datapath.open(bpffs_dir)
    stop = threading.Event()
    seen, failures = set(), []

    def read():
        while not stop.is_set():
            try:
                seen.add(len(reader.layout(refresh=True).state))
            except StateError as exc:
                failures.append(str(exc))
                return
    worker = threading.Thread(target=read)
    try:
        worker.start()
        for i in range(60):
            backends = [f"10.0.{(i % 3) + 2}.{b}" for b in range(1, 4)]
            writer.apply(STATE.with_vip(vip("192.0.2.60:80/tcp", *backends)))
            writer.apply(STATE)
            if failures:
                break
    finally:
        stop.set()
        worker.join(10)
        reader.close()
        writer.destroy()
        writer.close()
    assert not failures, failures[0]
    assert len(seen) > 1, "the reader never overlapped an apply"
