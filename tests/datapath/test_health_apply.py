"""Health checks in the real maps: specs and verdicts written by apply, read back by another
handle, kept or set as `verdicts` says, rolled back with the rest, and what a down backend
does to the ring and to its pinned flows (drain: they go on; gone: they are re-hashed)."""

import errno

import pytest

from pyxlb import _layouts as L
from pyxlb.datapath import Datapath
from pyxlb.state import Backend, DesiredState, HealthSpec, VipKey

from .pristine import Pristine
from .test_apply import SMALL, WEB, Recorder, open_flow, prepare, send, vip

K80 = VipKey.parse("192.0.2.10:80/tcp")
K443 = VipKey.parse("192.0.2.10:443/tcp")
OWN = HealthSpec(type="http", path="/ready", port=8080, via="direct", on_fail="gone")
STATE = DesiredState((
    vip(str(K80), WEB[0], Backend(WEB[1], health=OWN), WEB[2], ring_size=13,
        health=HealthSpec(type="http", path="/healthz", interval=0.5, timeout=0.2)),
    vip(str(K443), *WEB, ring_size=13),                     # unchecked
))


@pytest.fixture(scope="module")
def _balancer():
    objects = Pristine(Datapath, SMALL)
    yield objects
    objects.close()


@pytest.fixture
def dp(_balancer):
    """The balancer with SMALL maps, as freshly loaded (one load per module: pristine.py)."""
    return _balancer.fresh()


def specs_in_maps(d):
    return dict(d.maps.health_specs.items())


def downs(state, key=K80):
    return {str(b.address): b.down for b in state.vip(key).backends}


def test_specs_and_verdicts_read_back_by_another_handle(bpffs_dir):
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as first:
        first.apply(STATE)
        vid = first.layout().vip_ids[K80]
        bid = first.layout().backend_ids[Backend(WEB[1]).address]
        assert set(first.tables.health_specs.read()) == {(vid, L.HEALTH_VIP), (vid, bid)}
        first.apply(STATE.with_verdicts({(K80, WEB[0]): True}), verdicts="set")
    with Datapath.open(bpffs_dir) as second:
        got = second.current_state()
        assert got.vip(K80).health == STATE.vip(K80).health
        assert got.vip(K80).backend(WEB[1]).health == OWN
        assert downs(got) == {WEB[0]: True, WEB[1]: False, WEB[2]: False}
        assert got.vip(K443) == STATE.vip(K443)
        # the same state again, from a process that read it back: nothing to write, and
        # the verdict stays (keep)
        assert second.apply(STATE).plan.empty
        assert second.apply(got, verdicts="set").plan.empty
        second.destroy()


def test_verdicts_keep_and_set(dp):
    dp.apply(STATE)
    assert not any(downs(dp.current_state()).values())
    # a state that claims a verdict: ignored by every apply but the checker's
    claims = STATE.with_verdicts({(K80, WEB[0]): True})
    assert claims.vip(K80).backend(WEB[0]).down
    assert dp.apply(claims).plan.empty
    # the checker sets it: the member's byte and the ring change
    result = dp.apply(claims, verdicts="set")
    assert [line.strip() for line in result.plan.describe()[1:2]] == \
        [f"~ backend {WEB[0]}: down False -> True"]
    vid = dp.layout().vip_ids[K80]
    bid = dp.layout().backend_ids[Backend(WEB[0]).address]
    member = L.unpack_member(dp.maps.members.lookup(L.pack_member_key(vid, bid)))
    assert member["health"] == L.HEALTH_DOWN and member["state"] == L.BACKEND_ACTIVE
    ring = set(dp.ring(dp.layout().ring_ids[(13, dp.current_state().vip(K80).ring_members())]))
    assert bid not in ring and len(ring) == 2
    # a file applied afterwards (no verdicts in it) keeps the checker's
    assert dp.apply(STATE).plan.empty
    edited = STATE.with_vip(STATE.vip(K80).replace(
        backends=STATE.vip(K80).backends + (Backend("10.0.1.4"),)))
    dp.apply(edited)
    assert downs(dp.current_state()) == {WEB[0]: True, WEB[1]: False, WEB[2]: False,
                                         "10.0.1.4": False}
    # checks off: the verdict goes; on again: the backend starts not down
    off = edited.with_vip(edited.vip(K80).replace(health=None))
    dp.apply(off)
    assert not any(downs(dp.current_state()).values())
    dp.apply(edited)
    assert not downs(dp.current_state())[WEB[0]]
    member = L.unpack_member(dp.maps.members.lookup(L.pack_member_key(vid, bid)))
    assert member["health"] == L.HEALTH_UP
    with pytest.raises(ValueError, match="verdicts must be"):
        dp.apply(STATE, verdicts="maybe")


def test_specs_change_only_what_changed(dp, monkeypatch):
    dp.apply(STATE)
    rec = Recorder(monkeypatch)
    slower = STATE.with_vip(STATE.vip(K80).replace(
        health=STATE.vip(K80).health.__class__(type="http", path="/healthz", interval=1)))
    result = dp.apply(slower)
    # the VIP's spec entry alone: no ring, no member, no VIP record
    assert rec.ops == [("xlb_health_specs", "update")] and result.writes == 1
    assert dp.current_state() == slower
    # the override goes (the backend takes its VIP's checks): its entry goes
    inherit = slower.with_vip(slower.vip(K80).replace(backends=tuple(
        Backend(b.address) for b in slower.vip(K80).backends)))
    rec.ops.clear()
    dp.apply(inherit)
    assert rec.ops == [("xlb_health_specs", "delete")]
    assert len(specs_in_maps(dp)) == 1
    dp.apply(DesiredState((STATE.vip(K443),)))
    assert specs_in_maps(dp) == {}


def test_a_failure_half_way_leaves_specs_and_verdicts_as_they_were(dp, monkeypatch):
    dp.apply(STATE.with_verdicts({(K80, WEB[2]): True}), verdicts="set")
    before = (specs_in_maps(dp), dict(dp.maps.members.items()), dp.current_state())
    changed = DesiredState((vip(str(K80), WEB[0], "10.0.1.9", ring_size=13,
                                health=HealthSpec(rise=4)),))
    for fail_after in (1, 3, 6):
        Recorder(monkeypatch, fail_after=fail_after)
        with pytest.raises(OSError) as exc:
            dp.apply(changed.with_verdicts({(K80, WEB[0]): True}), verdicts="set")
        assert exc.value.errno == errno.E2BIG
        monkeypatch.undo()
        assert (specs_in_maps(dp), dict(dp.maps.members.items()),
                dp.layout(refresh=True).state) == before, fail_after


def test_a_down_backend_drains_or_is_gone_as_its_spec_says(dp):
    """WEB[1] says on_fail: gone, WEB[2] the VIP's drain. Both go down: neither gets new
    flows; WEB[2]'s pinned flows go on, WEB[1]'s are forgotten and re-hashed (its id and
    generation stay, so only apply's purge can move them)."""
    dp.apply(STATE)
    prepare(dp)
    first = {p: open_flow(dp, p) for p in range(3000, 3090)}
    assert set(first.values()) == set(WEB)
    result = dp.apply(STATE.with_verdicts({(K80, WEB[1]): True, (K80, WEB[2]): True}),
                      verdicts="set")
    gone = [p for p, b in first.items() if b == WEB[1]]
    assert result.flows_forgotten == len(gone)
    after = {p: send(dp, p) for p in first}
    for p, b in first.items():
        if b == WEB[1]:
            assert after[p] == WEB[0], p           # re-hashed onto the only backend left
        else:
            assert after[p] == b, p                # WEB[0]'s, and the drained WEB[2]'s
    assert {send(dp, p) for p in range(4000, 4040)} == {WEB[0]}     # new flows
    # the other VIP (unchecked) still sends to all three
    assert {send(dp, p, dport=443) for p in range(5000, 5060)} == set(WEB)
    # back up: new flows spread again, nothing is forgotten
    back = dp.apply(STATE, verdicts="set")
    assert back.flows_forgotten == 0
    assert {send(dp, p) for p in range(6000, 6090)} == set(WEB)


def test_raw_stray_specs_go_with_the_next_apply_and_bad_records_are_one_line(dp):
    """An entry of no VIP (an apply killed half-way leaves such) is not read as anyone's
    spec, even when its VIP id is handed out again, and the next apply deletes it; a
    record pyxlb never writes is refused in one line."""
    dp.apply(STATE)
    taken = set(dp.layout().vip_ids.values())
    free = next(i for i in range(8) if i not in taken)
    stray = (free, L.HEALTH_VIP)
    dp.tables.health_specs.put_all([(stray, HealthSpec(type="http"))])
    assert dp.layout(refresh=True).state == STATE
    added = STATE.with_vip(vip("192.0.2.10:8080/tcp", WEB[0], ring_size=13))
    dp.apply(added)
    assert dp.layout().vip_ids[VipKey.parse("192.0.2.10:8080/tcp")] == free
    assert stray not in dp.tables.health_specs.read()
    assert dp.layout(refresh=True).state == added
    assert dp.layout(refresh=True).state.vip("192.0.2.10:8080/tcp").health is None

    from pyxlb.errors import PyxlbError
    vid = dp.layout().vip_ids[K80]
    bad = bytearray(dp.maps.health_specs.lookup(L.pack_member_key(vid, L.HEALTH_VIP)))
    bad[0] = 9                                   # no such type
    dp.maps.health_specs.update(L.pack_member_key(vid, L.HEALTH_VIP), bytes(bad))
    with pytest.raises(PyxlbError, match="health-spec map holds a record pyxlb does not "
                                         "write") as exc:
        dp.layout(refresh=True)
    assert "\n" not in str(exc.value)
