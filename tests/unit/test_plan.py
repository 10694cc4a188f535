"""The planner without a kernel: ids, shared rings, copy on write, recycling, limits."""

import ipaddress

import pytest

from pyxlb import _layouts as L
from pyxlb.maglev import build_table
from pyxlb.plan import Layout, Limits, make_plan, rebuild_state, ring_key
from pyxlb.state import Backend, DesiredState, StateError, Vip, VipKey


def vip(text, *backends, **kw):
    return Vip(VipKey.parse(text), backends=tuple(
        b if isinstance(b, Backend) else Backend(b) for b in backends), **kw)


def ip(text):
    return ipaddress.ip_address(text)


WEB = ("10.0.1.1", "10.0.1.2", "10.0.1.3")
STATE = DesiredState((vip("192.0.2.10:80/tcp", *WEB, ring_size=13),
                      vip("192.0.2.10:443/tcp", *WEB, ring_size=13)))


def applied(state, old=None, limits=Limits()):
    return make_plan(old or Layout(), state, limits)


def test_first_plan_shares_one_ring_between_identical_vips():
    plan = applied(STATE)
    assert len(plan.ring_writes) == 1 and len(plan.vip_writes) == 2
    assert set(plan.new.vip_ids.values()) == {0, 1}
    assert set(plan.new.backend_ids.values()) == {0, 1, 2}
    (rid, table), = plan.ring_writes.items()
    ids = plan.new.backend_ids
    assert list(table) == list(build_table([(a, 1, ids[ip(a)]) for a in WEB], 13))
    assert {r.ring_id for r in plan.vip_writes.values()} == {rid}
    assert plan.addr_flags == {ip("192.0.2.10"): L.ADDR_PORTS}
    assert len(plan.member_writes) == 6 and plan.new_backend_ids == {0, 1, 2}
    assert {r.gen for r in plan.backend_writes.values()} == {1}


def test_same_state_is_an_empty_plan():
    first = applied(STATE)
    again = make_plan(first.new, STATE)
    assert again.empty and again.describe()[-1].startswith("maps: 0 VIP writes")


def test_changing_one_of_two_sharing_vips_copies_its_ring():
    first = applied(STATE)
    changed = STATE.with_vip(vip("192.0.2.10:443/tcp", *WEB, "10.0.1.4", ring_size=13))
    plan = make_plan(first.new, changed)
    assert len(plan.ring_writes) == 1 and not plan.ring_deletes     # the :80 VIP keeps it
    assert list(plan.vip_writes) == [VipKey.parse("192.0.2.10:443/tcp")]
    assert plan.new_backend_ids == {3} and set(plan.backend_writes) == {3}
    assert plan.member_writes == {(1, 3): (1, L.BACKEND_ACTIVE, L.HEALTH_UNCHECKED)} \
        and not plan.member_deletes
    # the existing backends keep their ids: their pinned flows stay valid
    assert {a: i for a, i in plan.new.backend_ids.items() if str(a) in WEB} == \
        first.new.backend_ids
    # and when the other VIP follows, the old ring is freed
    both = changed.with_vip(vip("192.0.2.10:80/tcp", *WEB, "10.0.1.4", ring_size=13))
    plan2 = make_plan(plan.new, both)
    assert not plan2.ring_writes and plan2.ring_deletes == set(first.ring_writes)


def test_removed_backend_is_freed_and_its_id_recycled_with_a_new_generation():
    first = applied(STATE)
    smaller = DesiredState(tuple(v.replace(backends=v.backends[:2]) for v in STATE))
    plan = make_plan(first.new, smaller)
    freed_id = first.new.backend_ids[ip("10.0.1.3")]
    assert plan.backend_frees == {freed_id: 1}
    assert len(plan.member_deletes) == 2 and len(plan.ring_deletes) == 1
    bigger = DesiredState(tuple(v.replace(backends=v.backends + (Backend("10.0.9.9"),))
                                for v in smaller))
    plan2 = make_plan(plan.new, bigger)
    assert plan2.new.backend_ids[ip("10.0.9.9")] == freed_id
    assert plan2.backend_writes[freed_id].gen == 2       # flows pinned to the old one re-hash


def test_an_id_freed_by_a_plan_is_not_handed_out_by_the_same_plan():
    first = applied(STATE)
    swapped = DesiredState(tuple(v.replace(backends=v.backends[:2] + (Backend("10.0.9.9"),))
                                 for v in STATE))
    plan = make_plan(first.new, swapped)
    old_id = first.new.backend_ids[ip("10.0.1.3")]
    assert plan.new.backend_ids[ip("10.0.9.9")] != old_id
    assert old_id in plan.backend_frees
    # VIP and ring ids likewise
    renamed = DesiredState((vip("192.0.2.11:80/tcp", *WEB, ring_size=11),))
    plan = make_plan(first.new, renamed)
    assert set(plan.new.vip_ids.values()).isdisjoint(first.new.vip_ids.values())
    assert set(plan.ring_writes).isdisjoint(first.ring_writes)


def test_draining_backend_leaves_the_ring_not_the_vip():
    first = applied(STATE)
    drained = DesiredState(tuple(
        v.replace(backends=tuple(b if str(b.address) != "10.0.1.2" else
                                 Backend(b.address, state="draining") for b in v.backends))
        for v in STATE))
    plan = make_plan(first.new, drained)
    bid = first.new.backend_ids[ip("10.0.1.2")]
    (rid, table), = plan.ring_writes.items()
    assert bid not in set(table)
    assert plan.backend_writes[bid].state == L.BACKEND_DRAINING
    assert {k: v for k, v in plan.member_writes.items()} == {
        (0, bid): (1, L.BACKEND_DRAINING, 0), (1, bid): (1, L.BACKEND_DRAINING, 0)}
    assert not plan.backend_frees


def test_backend_active_anywhere_is_active():
    s = DesiredState((vip("192.0.2.1:80/tcp", Backend("10.0.0.1", state="draining")),
                      vip("192.0.2.2:80/tcp", "10.0.0.1")))
    plan = applied(s)
    assert plan.backend_writes[0].state == L.BACKEND_ACTIVE


def test_vip_flags_and_address_flags():
    s = DesiredState((vip("192.0.2.1:0/udp", "10.0.0.1", flow_table=False,
                          affinity="client-ip", announce=True, mode="l2"),
                      vip("192.0.2.1:53/tcp", "10.0.0.1")))
    plan = applied(s)
    rec = plan.vip_writes[VipKey.parse("192.0.2.1:0/udp")]
    assert rec.flags == L.VIP_NO_FLOW_TABLE | L.VIP_AFFINITY_SRC | L.VIP_ANNOUNCE
    assert rec.mode == L.MODE_L2
    assert plan.addr_flags == {ip("192.0.2.1"): L.ADDR_PORTS | L.ADDR_ALL_PORTS |
                               L.ADDR_ANNOUNCE}
    gone = make_plan(plan.new, DesiredState())
    assert gone.addr_flags == {ip("192.0.2.1"): 0} and len(gone.vip_deletes) == 2


def test_inconsistent_backends_are_refused():
    with pytest.raises(StateError, match="local in one VIP"):
        applied(DesiredState((vip("192.0.2.1:80/tcp", Backend("10.0.0.1", local=True)),
                              vip("192.0.2.2:80/tcp", "10.0.0.1"))))
    with pytest.raises(StateError, match="MAC"):
        applied(DesiredState((vip("192.0.2.1:80/tcp", Backend("10.0.0.1", mac="02:00:00:00:00:01")),
                              vip("192.0.2.2:80/tcp", "10.0.0.1"))))


def test_limits_are_checked_before_anything_is_written():
    with pytest.raises(StateError, match="VIP map"):
        applied(STATE, limits=Limits(vips=1))
    with pytest.raises(StateError, match="no free backend id"):
        applied(STATE, limits=Limits(backends=2))
    with pytest.raises(StateError, match="no free ring id"):
        applied(DesiredState((vip("192.0.2.1:80/tcp", "10.0.0.1"),
                              vip("192.0.2.2:80/tcp", "10.0.0.2"))), limits=Limits(rings=1))


def test_rebuild_state_is_the_inverse_of_a_plan():
    plan = applied(DesiredState((
        vip("192.0.2.1:80/tcp", "10.0.0.1", Backend("10.0.0.2", 3, "draining"), ring_size=13),
        vip("[2001:db8::1]:0/udp", Backend("2001:db8::a", mac="02:00:00:00:00:0a", local=True),
            mode="l2", announce=True, affinity="client-ip", flow_table=False))))
    members = {k: v for k, v in plan.member_writes.items()}
    layout = rebuild_state(plan.vip_writes, members, plan.backend_writes,
                           chain_peers=plan.peer_writes)
    assert layout.state == plan.new.state
    assert layout.vip_ids == plan.new.vip_ids and layout.backend_ids == plan.new.backend_ids
    assert layout.ring_ids == plan.new.ring_ids
    assert make_plan(layout, plan.new.state).empty


def test_describe_names_the_changes():
    first = applied(STATE)
    s = STATE.with_vip(vip("192.0.2.10:80/tcp", "10.0.1.1", Backend("10.0.1.2", 5),
                           ring_size=13)).with_vip(vip("192.0.2.20:80/tcp"))
    lines = make_plan(first.new, s).describe()
    assert "+ vip 192.0.2.20:80/tcp (ipip, 0 backends)" in lines
    assert "~ vip 192.0.2.10:80/tcp" in lines
    assert "    - backend 10.0.1.3" in lines
    assert "    ~ backend 10.0.1.2: weight 1 -> 5" in lines


def test_ring_key_ignores_draining_and_zero_weight_backends():
    a = vip("192.0.2.1:80/tcp", "10.0.0.1", Backend("10.0.0.2", state="draining"))
    b = vip("192.0.2.2:80/tcp", "10.0.0.1", Backend("10.0.0.3", weight=0))
    assert ring_key(a) == ring_key(b)


# -- source ranges ----------------------------------------------------------------------------

def net(text):
    return ipaddress.ip_network(text)


RANGED = DesiredState((vip("192.0.2.10:80/tcp", *WEB, ring_size=13,
                           source_ranges=("198.51.100.0/24", "203.0.113.0/24")),
                       vip("192.0.2.10:443/tcp", *WEB, ring_size=13),
                       vip("[2001:db8::1]:80/tcp", "2001:db8:1::1",
                           source_ranges=("::ffff:198.51.100.0/120", "2001:db8:9::/48"))))


def test_ranges_go_in_with_the_flag_and_come_back_from_the_maps():
    plan = applied(RANGED)
    ids = plan.new.vip_ids
    v80, v443, v6 = (ids[VipKey.parse(t)] for t in
                     ("192.0.2.10:80/tcp", "192.0.2.10:443/tcp", "[2001:db8::1]:80/tcp"))
    assert plan.range_writes == {(v80, net("198.51.100.0/24")), (v80, net("203.0.113.0/24")),
                                 (v6, net("::ffff:198.51.100.0/120")),
                                 (v6, net("2001:db8:9::/48"))}
    assert not plan.range_deletes and not plan.stray_deletes
    flags = {k: r.flags for k, r in plan.vip_writes.items()}
    assert flags[VipKey.parse("192.0.2.10:80/tcp")] == L.VIP_SOURCE_RANGES
    assert flags[VipKey.parse("192.0.2.10:443/tcp")] == 0
    # the trie keeps IPv4 as ::ffff:a.b.c.d: read back through it, the IPv6 VIP's mapped
    # prefix is an IPv4 prefix, and the VIP's family turns it back
    trie = frozenset((vid, net("198.51.100.0/24") if n == net("::ffff:198.51.100.0/120") else n)
                     for vid, n in plan.range_writes)
    layout = rebuild_state(plan.vip_writes, dict(plan.member_writes), plan.backend_writes, trie,
                           chain_peers=plan.peer_writes)
    assert layout.state == RANGED and layout.stray_ranges == frozenset()
    assert make_plan(layout, RANGED).empty


def test_changed_ranges_write_and_delete_only_the_difference():
    first = applied(RANGED)
    v80 = first.new.vip_ids[VipKey.parse("192.0.2.10:80/tcp")]
    changed = RANGED.with_vip(RANGED.vip("192.0.2.10:80/tcp").replace(
        source_ranges=("198.51.100.0/24", "192.0.2.0/25")))
    plan = make_plan(first.new, changed)
    assert plan.range_writes == {(v80, net("192.0.2.0/25"))}
    assert plan.range_deletes == {(v80, net("203.0.113.0/24"))}
    assert not plan.vip_writes              # the flag was already there
    assert "    source ranges: 198.51.100.0/24, 203.0.113.0/24 -> 192.0.2.0/25, " \
           "198.51.100.0/24" in plan.describe()
    assert plan.describe()[-1].endswith("1 source ranges added, 1 removed")
    # all ranges gone: the flag goes from the record, the entries from the trie
    cleared = changed.with_vip(changed.vip("192.0.2.10:80/tcp").replace(source_ranges=()))
    plan2 = make_plan(plan.new, cleared)
    assert plan2.vip_writes[VipKey.parse("192.0.2.10:80/tcp")].flags == 0
    assert plan2.range_deletes == {(v80, net("198.51.100.0/24")), (v80, net("192.0.2.0/25"))}
    assert "any client" in "\n".join(plan2.describe())
    # a removed VIP takes its entries along
    plan3 = make_plan(plan2.new, cleared.without_vip("[2001:db8::1]:80/tcp"))
    v6 = first.new.vip_ids[VipKey.parse("[2001:db8::1]:80/tcp")]
    assert plan3.range_deletes == {(v6, net("::ffff:198.51.100.0/120")),
                                   (v6, net("2001:db8:9::/48"))}


def test_stray_entries_are_deleted_first_unless_wanted():
    plan = applied(RANGED)
    ids = plan.new.vip_ids
    v443 = ids[VipKey.parse("192.0.2.10:443/tcp")]
    v80 = ids[VipKey.parse("192.0.2.10:80/tcp")]
    trie = set(plan.range_writes) | {(v443, net("10.0.0.0/8")), (v80, net("2001:db8::/32")),
                                     (99, net("10.1.0.0/16"))}
    layout = rebuild_state(plan.vip_writes, dict(plan.member_writes), plan.backend_writes,
                           frozenset(trie))
    # a prefix of a VIP without the flag, one of the wrong family, one of an id not in use
    assert layout.stray_ranges == {(v443, net("10.0.0.0/8")), (v80, net("2001:db8::/32")),
                                   (99, net("10.1.0.0/16"))}
    assert layout.state == RANGED
    again = make_plan(layout, RANGED)
    assert not again.empty and again.stray_deletes == layout.stray_ranges
    assert not again.range_writes and not again.range_deletes and not again.vip_writes
    assert make_plan(again.new, RANGED).empty
    # a stray that the state wants is kept as it is, not written again
    wanted = RANGED.with_vip(vip("192.0.2.10:443/tcp", *WEB, ring_size=13,
                                 source_ranges=("10.0.0.0/8",)))
    plan2 = make_plan(layout, wanted)
    assert (v443, net("10.0.0.0/8")) not in plan2.range_writes | plan2.stray_deletes
    assert plan2.vip_writes[VipKey.parse("192.0.2.10:443/tcp")].flags == L.VIP_SOURCE_RANGES


def test_range_limits_are_checked_before_anything_is_written():
    with pytest.raises(StateError, match=r"4 source ranges \(all VIPs together\) do not fit "
                                         r"the source-range map \(3\)"):
        applied(RANGED, limits=Limits(source_ranges=3))
    first = applied(RANGED, limits=Limits(source_ranges=4))
    # 4 entries are in; replacing two of them needs 6 while old and new coexist
    swapped = RANGED.with_vip(RANGED.vip("192.0.2.10:80/tcp").replace(
        source_ranges=("10.1.0.0/16", "10.2.0.0/16")))
    with pytest.raises(StateError, match="needs 6 at once"):
        make_plan(first.new, swapped, Limits(source_ranges=4))
    assert not make_plan(first.new, swapped, Limits(source_ranges=6)).empty
