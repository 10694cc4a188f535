"""Stateless mode without a kernel: the state and its YAML, the plan (a stateless VIP's own
ring, its previous owners, chain peers) and the previous-owner rule (plan.prev_slots)."""

import ipaddress
from array import array

import pytest

from pyxlb import _layouts as L
from pyxlb.chain import chain_id
from pyxlb.config import ConfigError, dump, load_text
from pyxlb.plan import Layout, make_plan, rebuild_state, ring_key, vip_flags, prev_slots
from pyxlb.state import Backend, DesiredState, StateError, Vip, VipKey, vip_from_dict, \
    vip_to_dict

E = L.RING_EMPTY
WEB = ("10.0.1.1", "10.0.1.2", "10.0.1.3")


def vip(text, *backends, **kw):
    return Vip(VipKey.parse(text), backends=tuple(Backend(b) for b in backends), **kw)


# -- the state and its YAML ------------------------------------------------------------------


def test_stateless_implies_no_flow_table_and_round_trips_as_data():
    v = vip("192.0.2.10:80/tcp", *WEB, stateless=True)
    assert v.stateless and v.flow_table is False
    assert v == vip("192.0.2.10:80/tcp", *WEB, stateless=True, flow_table=False)
    d = vip_to_dict(v)
    assert d["flow_table"] == "stateless"
    assert vip_from_dict(d) == v
    plain = vip("192.0.2.10:80/tcp", *WEB, flow_table=False)
    assert vip_to_dict(plain)["flow_table"] is False and vip_from_dict(vip_to_dict(plain)) == plain


@pytest.mark.parametrize("text,kw,match", [
    ("192.0.2.10:53/udp", {}, "stateless mode is for TCP VIPs only"),
    ("192.0.2.10:53/udp", {}, "a UDP VIP keeps its flow table"),
    ("192.0.2.10:80/tcp", {"mode": "l2"}, "stateless mode needs mode ipip"),
    ("192.0.2.10:80/tcp", {"mode": "local"}, "stateless mode needs mode ipip"),
])
def test_stateless_is_tcp_and_ipip_only(text, kw, match):
    with pytest.raises(StateError, match=match) as err:
        Vip(VipKey.parse(text), stateless=True, **kw)
    assert "\n" not in str(err.value)


def test_stateless_must_be_a_bool():
    with pytest.raises(StateError, match="stateless must be true or false"):
        vip("192.0.2.10:80/tcp", stateless=1)


YAML = """
vips:
  - vip: 192.0.2.10:80/tcp
    flow_table: stateless
    backends: [10.0.1.1, 10.0.1.2]
  - vip: "[2001:db8::10]:443/tcp"
    flow_table: stateless
    affinity: client-ip
    backends: ["2001:db8:1::1"]
  - vip: 192.0.2.10:53/udp
    flow_table: false
"""


def test_yaml_reads_writes_and_reads_back_stateless():
    state = load_text(YAML)
    v4, v6, udp = (state.vip(k) for k in ("192.0.2.10:80/tcp", "[2001:db8::10]:443/tcp",
                                          "192.0.2.10:53/udp"))
    assert (v4.stateless, v4.flow_table) == (True, False)
    assert v6.stateless and v6.affinity == "client-ip"
    assert (udp.stateless, udp.flow_table) == (False, False)
    text = dump(state)
    assert text.count("flow_table: stateless") == 2 and "flow_table: false" in text
    assert load_text(text) == state


@pytest.mark.parametrize("text,match", [
    ("vips:\n  - vip: 192.0.2.10:53/udp\n    flow_table: stateless\n",
     "line 2, column 5: vips[0]: VIP 192.0.2.10:53/udp: stateless mode is for TCP VIPs only"),
    ("vips:\n  - vip: 192.0.2.10:80/tcp\n    mode: l2\n    flow_table: stateless\n",
     "vips[0]: VIP 192.0.2.10:80/tcp: stateless mode needs mode ipip"),
    ("vips:\n  - vip: 192.0.2.10:80/tcp\n    flow_table: Stateless\n",
     "line 3, column 17: vips[0].flow_table: 'Stateless' is not true, false or stateless"),
    ("vips:\n  - vip: 192.0.2.10:80/tcp\n    flow_table: 1\n",
     "vips[0].flow_table: 1 is not true, false or stateless"),
])
def test_yaml_errors_are_one_line(text, match):
    with pytest.raises(ConfigError) as err:
        load_text(text, "lb.yaml")
    line = str(err.value)
    assert match in line and "\n" not in line and line.startswith("lb.yaml: ")


# -- the plan: flags, rings, previous owners, peers -------------------------------------------


def test_flags_carry_stateless_and_read_back():
    s = vip("192.0.2.10:80/tcp", *WEB, stateless=True)
    assert vip_flags(s) == L.VIP_STATELESS
    assert vip_flags(vip("192.0.2.10:80/tcp", flow_table=False)) == L.VIP_NO_FLOW_TABLE
    state = DesiredState((s, vip("192.0.2.10:81/tcp", *WEB, flow_table=False),
                          vip("192.0.2.10:82/tcp", *WEB)))
    plan = make_plan(Layout(), state)
    layout = rebuild_state(plan.vip_writes, dict(plan.member_writes), plan.backend_writes,
                           chain_peers=plan.peer_writes)
    assert layout.state == state and layout.ring_ids == plan.new.ring_ids
    assert make_plan(layout, state).empty


def test_a_stateless_vip_has_a_ring_of_its_own_with_previous_owners():
    same = (vip("192.0.2.10:80/tcp", *WEB, ring_size=13, stateless=True),
            vip("192.0.2.10:81/tcp", *WEB, ring_size=13, stateless=True),
            vip("192.0.2.10:82/tcp", *WEB, ring_size=13))
    plan = make_plan(Layout(), DesiredState(same))
    rids = [plan.new.ring_ids[ring_key(v)] for v in same]
    assert len(set(rids)) == 3 and len(plan.ring_writes) == 3
    # new stateless VIPs start with no previous owners; the shared ring has none
    assert plan.prev_writes == {rids[0]: None, rids[1]: None}
    assert not plan.prev_deletes


def test_a_members_change_derives_from_the_old_ring_and_frees_its_previous_owners():
    first = make_plan(Layout(), DesiredState((vip("192.0.2.10:80/tcp", *WEB, ring_size=13,
                                                  stateless=True),)))
    (old_rid,) = first.new.ring_ids.values()
    smaller = DesiredState((vip("192.0.2.10:80/tcp", *WEB[:2], ring_size=13, stateless=True),))
    plan = make_plan(first.new, smaller)
    (new_rid,) = plan.new.ring_ids.values()
    assert plan.prev_writes == {new_rid: old_rid}
    assert plan.prev_deletes == {old_rid} and plan.ring_deletes == {old_rid}
    assert "1 previous-owner tables written, 1 freed" in plan.describe()[-1]
    # another ring size: slot i is other hashes, so no previous owners
    bigger = DesiredState((vip("192.0.2.10:80/tcp", *WEB[:2], ring_size=17, stateless=True),))
    assert list(make_plan(first.new, bigger).prev_writes.values()) == [None]


def test_other_changes_keep_the_ring_and_its_previous_owners():
    first = make_plan(Layout(), DesiredState((vip("192.0.2.10:80/tcp", *WEB, ring_size=13,
                                                  stateless=True),)))
    announced = DesiredState((vip("192.0.2.10:80/tcp", *WEB, ring_size=13, stateless=True,
                                  announce=True),))
    plan = make_plan(first.new, announced)
    assert plan.vip_writes and not plan.ring_writes
    assert not plan.prev_writes and not plan.prev_deletes


def test_becoming_stateless_starts_empty_and_going_back_frees_the_previous_owners():
    flows = DesiredState((vip("192.0.2.10:80/tcp", *WEB, ring_size=13),))
    first = make_plan(Layout(), flows)
    became = make_plan(first.new, DesiredState((vip("192.0.2.10:80/tcp", *WEB, ring_size=13,
                                                    stateless=True),)))
    (rid,) = became.new.ring_ids.values()
    assert became.prev_writes == {rid: None} and became.ring_writes.keys() == {rid}
    assert "stateless: False -> True" in "\n".join(became.describe())
    back = make_plan(became.new, flows)
    assert back.prev_deletes == {rid} and not back.prev_writes
    assert back.ring_deletes == {rid}


def test_chain_peers_are_the_stateless_vips_backends():
    flows = vip("[2001:db8::10]:80/tcp", "2001:db8:1::1")
    assert make_plan(Layout(), DesiredState((flows,))).peer_writes == {}
    state = DesiredState((vip("192.0.2.10:80/tcp", *WEB, stateless=True), flows))
    plan = make_plan(Layout(), state)
    addrs = [ipaddress.ip_address(a) for a in WEB]
    assert plan.peer_writes == {chain_id(a): a for a in addrs} and not plan.peer_clears
    assert make_plan(plan.new, state).empty
    # the other VIP becoming stateless makes its backend a peer too
    both = DesiredState((state.vips[0], vip("[2001:db8::10]:80/tcp", "2001:db8:1::1",
                                            stateless=True)))
    six = ipaddress.ip_address("2001:db8:1::1")
    assert make_plan(plan.new, both).peer_writes == {chain_id(six): six}
    # a backend leaves: its id is cleared; a backend address change elsewhere re-checks
    fewer = DesiredState((vip("192.0.2.10:80/tcp", *WEB[:2], stateless=True), flows))
    plan2 = make_plan(plan.new, fewer)
    assert plan2.peer_clears == {chain_id(WEB[2])} and not plan2.peer_writes
    # read back with an empty peer map (a datapath upgraded from a release without it):
    # the first plan writes them all, once
    layout = rebuild_state(plan.vip_writes, dict(plan.member_writes), plan.backend_writes,
                           chain_peers={})
    again = make_plan(layout, state)
    assert again.peer_writes == plan.peer_writes and not again.vip_writes
    assert make_plan(again.new, state).empty


# -- the rule -----------------------------------------------------------------------------------


def arrays(chains, untils):
    return array("H", chains), array("I", untils)


CHAINS = {0: 100, 1: 101, 2: 102}       # backend id -> chain id


def test_a_slot_that_changes_hands_remembers_its_old_owner_until_then():
    old = array("I", [0, 1, 2, 0, E])
    new = array("I", [0, 0, 1, 1, 0])
    chains, untils = prev_slots(old, new, None, None, CHAINS, now=50, until=170)
    assert list(chains) == [0, 101, 102, 100, 0]      # an empty slot had no owner
    assert list(untils) == [0, 170, 170, 170, 0]


def test_no_old_ring_or_another_size_means_no_previous_owners():
    new = array("I", [0, 1, 0])
    for old in (None, array("I", [1, 0])):
        assert prev_slots(old, new, None, None, CHAINS, 50, 170) == arrays([0] * 3, [0] * 3)


def test_unmoved_slots_keep_what_they_remembered_while_it_lasts():
    old = array("I", [0, 1, 2, 2])
    new = array("I", [0, 1, 2, 2])
    was = arrays([101, 102, 100, 0], [80, 50, 49, 0])
    chains, untils = prev_slots(old, new, *was, CHAINS, now=50, until=170)
    # expired (until not after now) or empty: forgotten
    assert (list(chains), list(untils)) == ([101, 0, 0, 0], [80, 0, 0, 0])


def test_a_second_change_within_the_window():
    first_old = array("I", [0, 1, 2, 0, 1, 2])
    first_new = array("I", [0, 0, 2, 0, 0, 2])          # backend 1 leaves
    c1, u1 = prev_slots(first_old, first_new, None, None, CHAINS, now=10, until=130)
    assert list(c1) == [0, 101, 0, 0, 101, 0]
    second_new = array("I", [0, 0, 0, 0, 0, 0])         # then backend 2 leaves, at 40
    c2, u2 = prev_slots(first_new, second_new, c1, u1, CHAINS, now=40, until=160)
    # the first change's entries stay with their own time; the new ones get theirs
    assert list(c2) == [0, 101, 102, 0, 101, 102]
    assert list(u2) == [0, 130, 160, 0, 130, 160]
    # after the first window, only the second change is remembered
    c3, u3 = prev_slots(second_new, second_new, c2, u2, CHAINS, now=130, until=250)
    assert list(c3) == [0, 0, 102, 0, 0, 102] and list(u3) == [0, 0, 160, 0, 0, 160]


# -- extra chain peers (DesiredState.peers: the Kubernetes agent's every node) ----------------

NODES = tuple(ipaddress.ip_address(f"10.0.9.{i}") for i in range(1, 4))


def _colliding(taken):
    """An address whose chain id is that of one of `taken` (found by search: deterministic)."""
    ids = {chain_id(a): a for a in taken}
    for i in range(1, 1 << 20):
        a = ipaddress.ip_address(0x0A100000 + i)
        if chain_id(a) in ids:
            return a
    raise AssertionError("no colliding address found")


def test_peers_are_addresses_and_survive_every_edit_of_the_state():
    with pytest.raises(StateError, match="chain peer 127.0.0.1 is a loopback address"):
        DesiredState((), peers={"127.0.0.1"})
    with pytest.raises(StateError, match="chain peer: not an IPv4 or IPv6 address"):
        DesiredState((), peers={"node-a"})
    with pytest.raises(StateError, match="a set of addresses, not one string"):
        DesiredState((), peers="10.0.9.1")
    state = DesiredState((vip("192.0.2.10:80/tcp", *WEB, stateless=True),),
                         peers=[str(a) for a in NODES])
    assert state.peers == frozenset(NODES) and state != state.with_peers(())
    other = vip("192.0.2.11:80/tcp", WEB[0])
    for edited in (state.with_vip(other), state.with_vip(other).without_vip(other.key),
                   state.with_verdicts({}), state.with_vips(state.vips)):
        assert edited.peers == state.peers
    from pyxlb.announce.l2 import with_announce_on
    from pyxlb.announce.runner import with_announce
    assert with_announce_on(state, [state.vips[0].key.address], []).peers == state.peers
    assert with_announce(state, [state.vips[0].key.address]).peers == state.peers
    assert "peers" not in state.to_dict()           # not part of the file format


def test_extra_peers_join_the_stateless_backends_and_change_incrementally():
    web = vip("192.0.2.10:80/tcp", *WEB, stateless=True)
    wanted = [ipaddress.ip_address(a) for a in WEB] + list(NODES)
    state = DesiredState((web,), peers=NODES + (ipaddress.ip_address(WEB[0]),))
    plan = make_plan(Layout(), state)
    assert plan.peer_writes == {chain_id(a): a for a in wanted} and not plan.peer_clears
    assert make_plan(plan.new, state).empty
    # extras alone are peers too (translation decides when to give them)
    alone = make_plan(Layout(), DesiredState((), peers=NODES))
    assert alone.peer_writes == {chain_id(a): a for a in NODES}
    # a node goes: only its id is cleared; one comes: only its id is written
    fewer = state.with_peers(NODES[:2] + (ipaddress.ip_address(WEB[0]),))
    p2 = make_plan(plan.new, fewer)
    assert p2.peer_clears == {chain_id(NODES[2])} and not p2.peer_writes and not p2.vip_writes
    p3 = make_plan(p2.new, state)
    assert p3.peer_writes == {chain_id(NODES[2]): NODES[2]} and not p3.peer_clears
    # a backend that leaves the VIP but is an extra peer stays named
    left = DesiredState((vip("192.0.2.10:80/tcp", *WEB[1:], stateless=True),), state.peers)
    p4 = make_plan(p3.new, left)
    assert not p4.peer_clears and not p4.peer_writes and p4.ring_writes
    # and one that is no extra is cleared
    p5 = make_plan(p3.new, DesiredState((left.vips[0],), peers=NODES))
    assert p5.peer_clears == {chain_id(WEB[0])}
    # a change of an unrelated VIP leaves the peers alone
    more = state.with_vip(vip("192.0.2.11:80/tcp", "10.0.7.1"))
    p6 = make_plan(p3.new, more)
    assert not p6.peer_writes and not p6.peer_clears and p6.new.chain_peers == p3.new.chain_peers


def test_an_extra_peer_sharing_a_backends_chain_id_makes_it_name_neither():
    web = vip("192.0.2.10:80/tcp", *WEB, stateless=True)
    plan = make_plan(Layout(), DesiredState((web,)))
    twin = _colliding([ipaddress.ip_address(a) for a in WEB])
    clash = next(ipaddress.ip_address(a) for a in WEB if chain_id(a) == chain_id(twin))
    p2 = make_plan(plan.new, DesiredState((web,), peers={twin}))
    assert p2.peer_clears == {chain_id(clash)} and not p2.peer_writes
    assert chain_id(clash) not in p2.new.chain_peers
    p3 = make_plan(p2.new, DesiredState((web,)))
    assert p3.peer_writes == {chain_id(clash): clash}


def test_a_read_back_layout_has_no_extras_and_the_first_plan_compares_them():
    """The maps cannot tell an extra peer from a backend, so a state read back has none;
    that is harmless: a Layout read back is not synced, so its first plan compares the
    whole table with what the state wants, writing only what differs."""
    state = DesiredState((vip("192.0.2.10:80/tcp", *WEB, stateless=True),), peers=NODES)
    plan = make_plan(Layout(), state)
    back = rebuild_state(plan.vip_writes, dict(plan.member_writes), plan.backend_writes,
                         chain_peers=plan.new.chain_peers)
    assert back.state.peers == frozenset() and not back.peers_synced
    again = make_plan(back, state)
    assert again.empty and again.new.chain_peers == plan.new.chain_peers
    # the extras lost from the map meanwhile: written back; a state without them clears
    lost = dict(plan.new.chain_peers)
    del lost[chain_id(NODES[0])]
    back = rebuild_state(plan.vip_writes, dict(plan.member_writes), plan.backend_writes,
                         chain_peers=lost)
    assert make_plan(back, state).peer_writes == {chain_id(NODES[0]): NODES[0]}
    back = rebuild_state(plan.vip_writes, dict(plan.member_writes), plan.backend_writes,
                         chain_peers=plan.new.chain_peers)
    assert make_plan(back, state.with_peers(())).peer_clears == {chain_id(a) for a in NODES}
