"""The upgrade engine without traffic (pyxlb/datapath/upgrade.py, version.py, translate.py):
versions read from BTF, records translated by member name, what a plan decides, refusals,
and what a killed upgrade leaves. tests/lab/test_upgrade.py runs upgrades under traffic."""

import os
import random
import shutil

import pytest

from pyxlb import _bpf
from pyxlb.bpf import DIR_ENV, object_path
from pyxlb.datapath import Datapath, DecapPath, ForeignDatapath
from pyxlb.datapath import upgrade as U
from pyxlb.datapath import version as V
from pyxlb import _layouts as L
from pyxlb.addr import parse_addr
from pyxlb.datapath.maps import BALANCER, CONFIG, FLOWS4, FLOWS6, LRU_FLOWS6
from pyxlb.datapath.translate import Untranslatable, copy_ops

from tests.support.jumps import CHAIN_LOCAL, tail_calls

SMALL = {"xlb_flowsets6": 1024, "xlb_flowsets4": 256}     # sets: a small table copies fast

U32 = ("int", 4, False)


def words(*ns) -> bytes:
    """Little-endian u32s, as the maps hold them."""
    return b"".join(n.to_bytes(4, "little") for n in ns)
U16 = ("int", 2, False)


def struct(size, *members):
    """A BTF struct layout: members (name, byte offset, layout)."""
    return ("struct", size, tuple((n, off * 8, 0, t) for n, off, t in members))


# -- translate.py ----------------------------------------------------------------------------

def test_members_are_carried_over_by_name_wherever_they_moved():
    old = struct(12, ("a", 0, U32), ("b", 4, U32), ("c", 8, U32))
    new = struct(16, ("c", 0, U32), ("d", 4, U32), ("a", 8, U32), ("e", 12, U16))
    ops = copy_ops(old, 12, new, 16, "x")
    assert ops == [(8, 0, 4), (0, 8, 4)]                # b dropped, d and e zero
    rec = bytes(range(12))
    out = _bpf.translate_records(rec * 3, 12, 3, 16, ops)
    assert bytes(out[:16]) == rec[8:12] + b"\0" * 4 + rec[0:4] + b"\0" * 4
    assert bytes(out) == bytes(out[:16]) * 3


def test_nested_structs_and_arrays_are_translated_element_by_element():
    way_old = struct(8, ("k", 0, U32), ("v", 4, U32))
    way_new = struct(8, ("v", 0, U32), ("k", 4, U32))
    ops = copy_ops(("array", 2, way_old), 16, ("array", 2, way_new), 16, "set")
    assert ops == [(4, 0, 4), (0, 4, 4), (12, 8, 4), (8, 12, 4)]
    same = copy_ops(("array", 4, U32), 16, ("array", 4, U32), 16, "same")
    assert same == [(0, 0, 16)]


@pytest.mark.parametrize("old, new, why", [
    (struct(4, ("a", 0, U32)), struct(2, ("a", 0, U16)), "changed from int of 4 bytes"),
    (struct(4, ("a", 0, U32)), struct(4, ("a", 0, ("array", 4, ("int", 1, False)))),
     "changed from int of 4 bytes to array of 4"),
    (None, None, "known only by size"),
])
def test_what_cannot_be_carried_safely_is_refused(old, new, why):
    with pytest.raises(Untranslatable, match=why):
        copy_ops(old, 4, new, 2 if new is None else new[1], "xlb_thing value")


def test_records_known_only_by_size_are_copied_whole_when_the_sizes_agree():
    assert copy_ops(None, 40, None, 40, "slot") == [(0, 0, 40)]


# -- versions ---------------------------------------------------------------------------------

@pytest.fixture
def variant_dir(tmp_path):
    here = os.path.dirname(object_path("balancer"))
    shutil.copy(os.path.join(here, "test_variant_balancer.o"), tmp_path / "balancer.o")
    shutil.copy(os.path.join(here, "decap.o"), tmp_path / "decap.o")
    return str(tmp_path)


def test_a_version_comes_from_btf_and_moves_only_for_the_maps_that_changed(variant_dir,
                                                                          monkeypatch):
    ours = V.of_object(BALANCER)
    assert ours == V.of_object(BALANCER)                  # stable
    monkeypatch.setenv(DIR_ENV, variant_dir)
    theirs = V.of_object(BALANCER)
    changed = {n for n in ours.entries if ours.entries[n] != theirs.entries[n]}
    assert changed == {FLOWS6, FLOWS4, "balancer"}      # two layouts and the program
    assert str(ours) != str(theirs) and str(ours).startswith(f"{V.SEMANTIC_VERSION}.")


def test_a_datapath_records_its_version_and_status_reads_it(bpffs_dir):
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as dp, DecapPath.create(bpffs_dir):
        assert Datapath.pinned_version(dp.pin_dir) == Datapath.version()
        assert DecapPath.pinned_version(dp.pin_dir) == DecapPath.version()
        plan = U.make_plan(bpffs_dir)
        assert not plan.needed and [k.object for k in plan.kinds] == ["balancer", "decap"]
        assert "nothing to do" in plan.describe()[0]


def test_a_newer_meaning_is_refused_naming_both_versions(bpffs_dir):
    Datapath.create(bpffs_dir, map_sizes=SMALL).close()
    with _bpf.Map.from_pinned(V.record_path(bpffs_dir)) as rec:
        entry = V.read_record(rec).entries[FLOWS6]
        V.write_record(rec, V.Version({FLOWS6: V.Entry(entry.fingerprint, 7)}))
    have = V.pinned(bpffs_dir, [])
    assert have.semantic == 7
    ours = V.SEMANTIC_VERSION
    with pytest.raises(U.UpgradeRefused, match=rf"is version 7\.\w+, newer than this pyxlb's "
                                               rf"{ours}\.\w+ .*{FLOWS6}"):
        U.upgrade(bpffs_dir)
    with pytest.raises(ForeignDatapath, match=rf"is version 7\.\w+, this pyxlb's is {ours}\."):
        Datapath.open(bpffs_dir)


def test_upgrade_never_refuses_and_changes_nothing(bpffs_dir, variant_dir, monkeypatch):
    Datapath.create(bpffs_dir, map_sizes=SMALL).close()
    before = sorted(os.listdir(bpffs_dir))
    monkeypatch.setenv(DIR_ENV, variant_dir)
    ours = V.SEMANTIC_VERSION
    with pytest.raises(U.UpgradeRefused, match=rf"is version {ours}\.\w+, this pyxlb's is "
                                               rf"{ours}\.\w+, "
                                               r"and upgrades are turned off"):
        Datapath.create(bpffs_dir, upgrade="never")
    assert sorted(os.listdir(bpffs_dir)) == before
    plan = U.upgrade(bpffs_dir, dry_run=True).plan
    assert [(c.name, c.entries) for c in plan.migrating] == [(FLOWS4, 256), (FLOWS6, 1024)]


def test_flows_are_migrated_translated_and_back(bpffs_dir, variant_dir, monkeypatch):
    """Flows written by hand into both tables come out of an upgrade to the variant layout
    with every member in its new place, and out of the way back as they went in."""
    dp = Datapath.create(bpffs_dir, map_sizes=SMALL)
    way6 = bytes(range(40)) + words(7, 8, 9, 0xDCBA)
    dp.maps.flows6.update(6, way6 + bytes(dp.maps.flows6.value_size - len(way6)))
    sets = dp.maps.flows4
    way = bytes(range(16)) + words(1, 2, 3, 0xABCD)
    sets.update(5, way + bytes(sets.value_size - len(way)))
    dp.close()
    monkeypatch.setenv(DIR_ENV, variant_dir)
    result = U.upgrade(bpffs_dir)
    assert [c.name for c in result.plan.migrating] == [FLOWS4, FLOWS6]
    with _bpf.Map.from_pinned(os.path.join(bpffs_dir, FLOWS6)) as f6, \
            _bpf.Map.from_pinned(os.path.join(bpffs_dir, FLOWS4)) as f4:
        # the variant orders them hash, backend_id, gen
        assert f6.lookup(6)[:56] == bytes(range(40)) + words(9, 7, 8, 0xDCBA)
        assert f4.lookup(5)[:32] == bytes(range(16)) + words(3, 1, 2, 0xABCD)
    with Datapath.open(bpffs_dir) as dp:
        # the new program came with its own tail calls, pinned in place of the old ones
        assert tail_calls(dp.prog) == CHAIN_LOCAL
    monkeypatch.delenv(DIR_ENV)
    U.upgrade(bpffs_dir)
    with Datapath.open(bpffs_dir) as dp:
        assert dp.maps.flows6.lookup(6)[:56] == way6
        assert dp.maps.flows4.lookup(5)[:32] == way
        assert tail_calls(dp.prog) == CHAIN_LOCAL


def test_a_staged_upgrade_whose_program_runs_nowhere_is_rolled_back(bpffs_dir, variant_dir,
                                                                   monkeypatch):
    """What a process killed before the swap leaves (new maps and program pinned in the
    stage) is removed by the next start, which then upgrades afresh; while it is there,
    commands refuse the datapath rather than read half of it."""
    Datapath.create(bpffs_dir, map_sizes=SMALL).close()
    monkeypatch.setenv(DIR_ENV, variant_dir)
    plan = U.make_plan(bpffs_dir)
    progs = U._stage(plan, os.path.join(bpffs_dir, U.STAGE_DIR))   # the first step alone
    for p in progs.values():
        p.close()
    assert U.interrupted(bpffs_dir)
    with pytest.raises(ForeignDatapath, match="an upgrade of the datapath .* was interrupted"):
        Datapath.open(bpffs_dir)
    result = U.upgrade(bpffs_dir)
    assert result.resumed == "rolled back" and result.changed
    assert "rolled back an interrupted upgrade; upgraded the datapath" in result.summary()
    assert not U.interrupted(bpffs_dir)
    assert Datapath.pinned_version(bpffs_dir) == Datapath.version()


def test_flows_the_old_program_adds_after_the_copy_are_merged_unless_the_new_one_wrote(
        variant_dir, monkeypatch):
    """Between the copy and the swap the old program keeps recording flows: merge() brings
    those across, except into a set the new program has written since (its record wins)."""
    old = Datapath.load(map_sizes=SMALL)
    monkeypatch.setenv(DIR_ENV, variant_dir)
    new = Datapath.load(map_sizes=SMALL)
    with _bpf.BpfObject.open(object_path("balancer")) as obj:
        layouts = {name: obj.map_layout(name) for name in (FLOWS6, FLOWS4)}
    try:
        pad6 = bytes(old.maps.flows6.value_size - 56)
        old.maps.flows6.update(0, bytes(40) + words(1, 2, 3, 4) + pad6)
        snaps = {FLOWS6: U.copy_map(FLOWS6, old.maps.flows6, new.maps.flows6, layouts[FLOWS6]),
                 FLOWS4: U.copy_map(FLOWS4, old.maps.flows4, new.maps.flows4,
                                    layouts[FLOWS4])}
        pad = bytes(old.maps.flows4.value_size - 32)
        old.maps.flows6.update(1, bytes(40) + words(4, 5, 6, 7) + pad6)     # after the copy
        old.maps.flows4.update(3, bytes(16) + words(7, 8, 9, 10) + pad)
        old.maps.flows4.update(4, bytes(16) + words(11, 12, 13, 14) + pad)
        new.maps.flows4.update(4, b"\1" * 32 + pad)                     # the new program's
        assert U.merge(FLOWS6, old.maps.flows6, new.maps.flows6, snaps[FLOWS6],
                       layouts[FLOWS6]) == 1
        assert U.merge(FLOWS4, old.maps.flows4, new.maps.flows4, snaps[FLOWS4],
                       layouts[FLOWS4]) == 1
        assert new.maps.flows6.lookup(1)[:56] == bytes(40) + words(6, 4, 5, 7)
        assert new.maps.flows6.lookup(0)[:56] == bytes(40) + words(3, 1, 2, 4)
        assert new.maps.flows4.lookup(3)[:32] == bytes(16) + words(9, 7, 8, 10)
        assert new.maps.flows4.lookup(4)[:32] == b"\1" * 32
    finally:
        old.close()
        new.close()


def test_a_changed_inner_map_template_changes_the_fingerprint():
    """A shape check of the pinned maps alone misses a map-of-maps whose inner template
    changed: the fingerprint does not. Sizes that are node settings do not count."""
    with _bpf.BpfObject.open(object_path("balancer")) as obj:
        rings, index = obj.map_layout("xlb_rings"), obj.map_layout("xlb_vip_index")
    base = V.fingerprint("xlb_vip_index", index, 1)
    for change in ({"value_size": 44}, {"max_entries": 1 << 17}, {"flags": 0}):
        other = {**index, "inner": {**index["inner"], **change}}
        assert V.fingerprint("xlb_vip_index", other, 1) != base, change
    assert V.fingerprint("xlb_vip_index", index, 2) != base            # its meaning
    # rings may differ in size (BPF_F_INNER_MAP), and their count is a node setting
    resized = {**rings, "max_entries": 99, "inner": {**rings["inner"], "max_entries": 7}}
    assert V.fingerprint("xlb_rings", resized, 1) == V.fingerprint("xlb_rings", rings, 1)


def test_a_decapsulator_joining_another_versions_balancer_upgrades_it_first(
        bpffs_dir, variant_dir, monkeypatch):
    """The two kinds share maps in one directory: a decapsulator of this version is not
    loaded over a balancer's maps of another version, which is upgraded first."""
    monkeypatch.setenv(DIR_ENV, variant_dir)
    Datapath.create(bpffs_dir, map_sizes=SMALL).close()
    monkeypatch.delenv(DIR_ENV)
    assert Datapath.pinned_version(bpffs_dir) != Datapath.version()
    with DecapPath.create(bpffs_dir) as dc:
        assert dc.upgraded is not None and dc.upgraded.changed
    assert Datapath.pinned_version(bpffs_dir) == Datapath.version()
    assert DecapPath.pinned_version(bpffs_dir) == DecapPath.version()
    with Datapath.create(bpffs_dir) as dp:
        assert dp.upgraded is None


def test_a_change_of_meaning_needs_a_transform(bpffs_dir, monkeypatch):
    """A map whose meaning moved is not copied member by member (the new program would read
    old meanings): without a transform the upgrade is refused, with one it fills the map."""
    Datapath.create(bpffs_dir, map_sizes=SMALL).close()
    with _bpf.Map.from_pinned(V.record_path(bpffs_dir)) as rec:
        entry = V.read_record(rec).entries[FLOWS6]
        V.write_record(rec, V.Version({FLOWS6: V.Entry(entry.fingerprint, 0)}))
    now = V.MEANINGS[FLOWS6]
    with pytest.raises(U.UpgradeRefused, match=f"what {FLOWS6} holds changed meaning "
                                               rf"\(0 -> {now}\) and this version has no way"):
        U.upgrade(bpffs_dir)
    seen = []
    monkeypatch.setitem(U.TRANSFORMS, (FLOWS6, 0, now),
                        lambda old, new, maps: seen.append((old.name, new.name)))
    result = U.upgrade(bpffs_dir)
    # filled once the config is whole, and again after the swap (a table the program writes)
    assert [c.name for c in result.plan.migrating] == [FLOWS6]
    assert seen == [(FLOWS6, FLOWS6)] * 2
    assert Datapath.pinned_version(bpffs_dir) == Datapath.version()


def test_an_upgrade_interrupted_in_another_network_namespace_is_left_to_it(
        bpffs_dir, variant_dir, monkeypatch, netns):
    """Whether a staged program already runs can only be seen from the namespace whose
    interfaces it was swapped on: elsewhere, the stage is neither completed nor rolled
    back, and the refusal says where to finish it."""
    from pyxlb import netns as netns_mod

    Datapath.create(bpffs_dir, map_sizes=SMALL).close()
    monkeypatch.setenv(DIR_ENV, variant_dir)
    with netns_mod.enter(netns):
        plan = U.make_plan(bpffs_dir)
        for p in U._stage(plan, os.path.join(bpffs_dir, U.STAGE_DIR)).values():
            p.close()
    with pytest.raises(U.UpgradeRefused, match="interrupted in another network namespace"):
        U.upgrade(bpffs_dir)
    assert U.interrupted(bpffs_dir)
    with netns_mod.enter(netns):
        assert U.upgrade(bpffs_dir).resumed == "rolled back"
    assert not U.interrupted(bpffs_dir)


def test_a_process_holding_migrated_maps_cannot_apply_to_them(bpffs_dir, variant_dir,
                                                             monkeypatch):
    """A long-running process (pyxlb announce -f) that opened the datapath before another
    process's upgrade migrated some maps would write where no program reads: its next
    apply is refused instead; a process that opens the datapath afresh applies."""
    from pyxlb.state import DesiredState

    Datapath.create(bpffs_dir, map_sizes=SMALL).close()
    monkeypatch.setenv(DIR_ENV, variant_dir)
    held = Datapath.create(bpffs_dir)               # upgraded: this one holds the variant's
    try:
        monkeypatch.delenv(DIR_ENV)
        U.upgrade(bpffs_dir)                        # and back, by "another process"
        with pytest.raises(ForeignDatapath, match="was upgraded by another process since "
                                                  "this one opened it .* restart"):
            held.apply(DesiredState(()))
    finally:
        held.close()
    with Datapath.open(bpffs_dir) as fresh:
        fresh.apply(DesiredState(()))


def test_a_map_of_another_name_fills_its_successor(bpffs_dir):
    """A release before xlb_flowsets6 kept IPv6 flows in the LRU hash xlb_flows: an upgrade
    makes xlb_flowsets6, fills it from xlb_flows (upgrade.SUCCESSORS) with every flow where
    the new program looks for it, completes the config record (the IPv6 table's geometry,
    the default insertion limits a copied record lacks), and drops xlb_flows."""
    Datapath.create(bpffs_dir, map_sizes=SMALL).close()
    os.unlink(os.path.join(bpffs_dir, FLOWS6))          # as the previous release pinned it
    ksz, vsz = L.SIZES["xlb_flow_key"], L.SIZES["xlb_flow"]
    lru = _bpf.Map.create(_bpf.MAP_TYPE_LRU_HASH, ksz, vsz, 4096, name=LRU_FLOWS6)
    _, vip = parse_addr("2001:db8::80")
    clients = [parse_addr(f"2001:db8:c::{i:x}")[1] for i in range(1, 301)]
    with lru:
        for i, src in enumerate(clients):
            lru.update(L.pack_flow_key(src, vip, 1000 + i, 443, 6, L.FAMILY_V6),
                       L.pack_flow(i % 7, 1, i))
        lru.pin(os.path.join(bpffs_dir, LRU_FLOWS6))
    with _bpf.Map.from_pinned(os.path.join(bpffs_dir, CONFIG)) as cfg_map:
        cfg = L.unpack_config(cfg_map.lookup(0))
        cfg.update(flow6_bits=0, flow_inserts4=0, flow_inserts6=0,
                   flags=cfg["flags"] & ~L.CFG_INSERTS_SET)       # a record from before
        cfg_map.update(0, L.pack_config(**cfg))
    plan = U.make_plan(bpffs_dir)
    assert [(c.action, c.why) for c in plan.changes if c.name == FLOWS6] == \
        [("new", f"filled from {LRU_FLOWS6}")]
    assert ("drop", LRU_FLOWS6) in [(c.action, c.name) for c in plan.changes]
    U.upgrade(bpffs_dir)
    assert not os.path.exists(os.path.join(bpffs_dir, LRU_FLOWS6))
    with Datapath.open(bpffs_dir) as dp:
        # a table of its own default size (the LRU's entries do not say how many sets)
        assert dp.config()["flow6_bits"] == L.FLOW6_SETS.bit_length() - 1
        assert dp.insert_limits() == dp.default_insert_limits()
        got = {(k["src"], k["sport"]): v for k, v in dp.flows() if k["family"] == 6}
        assert len(got) == len(clients)
        assert got[("2001:db8:c::5", 1004)] == {"backend_id": 4 % 7, "gen": 1, "hash": 4}
        # where the datapath looks: each flow's set
        cfg = dp.config()
        for src, sport in ((clients[0], 1000), (clients[299], 1299)):
            raw = L.pack_flow6_key(src, vip, sport, 443, 6)
            ways = dp.maps.flows6.lookup(L.flow_set(raw, cfg["flow4_seed"], cfg["flow6_bits"]))
            assert raw[:36] in ways


def test_ipv6_flows_move_to_their_sets_under_the_new_set_hash(bpffs_dir):
    """xlb_flowsets6 meaning 1 placed flows by another set hash: an upgrade from it finds
    every flow its sets hold whole, wherever it is, and puts it in the set the new program
    looks in (upgrade.rehash_flowsets6), front-half flows first; a torn way (its check
    wrong) is not carried. Then the program finds them: a packet of one is a flow hit."""
    from pyxlb.state import Backend, DesiredState, Vip, VipKey

    dp = Datapath.create(bpffs_dir, map_sizes={FLOWS4: 256, FLOWS6: 16})
    vip_s, client_s = "2001:db8:80::1", "2001:db8:c::7"
    try:
        dp.configure(src4="10.255.0.0/16", src6="2001:db8:ff::/64")
        dp.apply(DesiredState(vips=(Vip(VipKey.parse(f"[{vip_s}]:80/tcp"), backends=(
            Backend("2001:db8:b::1"),)),)))
        # the backend's id and generation, as the program records them for a first packet
        dp.prog.test_run(_frame6(client_s, vip_s, 1999, "S"), repeat=1)
        (_, first), = [(k, v) for k, v in dp.flows() if k["family"] == 6]
        bid, gen = first["backend_id"], first["gen"]
        cfg = dp.config()
        _, vip = parse_addr(vip_s)
        _, client = parse_addr(client_s)
        sets = dp.maps.flows6
        size = sets.value_size // L.FLOW6_WAYS

        def new_set(sport):
            return L.flow_set(L.pack_flow6_key(client, vip, sport, 80, 6), cfg["flow4_seed"],
                              cfg["flow6_bits"])

        # 40 flows written by hand into the old layout, flow i at set i % 10, way i // 10:
        # six of them share one new set (more than its ways), the rest anywhere
        crowd = [p for p in range(2000, 4000) if new_set(p) == new_set(2000)][:6]
        sports = crowd + [p for p in range(2000, 2100) if p not in crowd][:34]
        random.Random(7).shuffle(sports)
        flows = {}
        raw = [bytearray(sets.value_size) for _ in range(16)]
        for i, sport in enumerate(sports):
            key = L.pack_flow6_key(client, vip, sport, 80, 6)
            way = L.pack_flow6_way(key, L.pack_flow(bid, gen, sport + 1000))
            s, w = i % 10, i // 10
            raw[s][w * size:w * size + len(way)] = way
            flows[sport] = (s, w)
        torn = sports[39]
        raw[9][3 * size + 40] ^= 1          # way 3 of set 9 (flow 39): torn
        for s in range(16):                 # (the first packet's flow goes too)
            sets.update(s, bytes(raw[s]))
    finally:
        dp.close()
    with _bpf.Map.from_pinned(V.record_path(bpffs_dir)) as rec:
        version = V.read_record(rec)
        entries = dict(version.maps)
        entries[FLOWS6] = V.Entry(V.fingerprint(FLOWS6, _layout(FLOWS6), 1), 1)
        V.write_record(rec, V.Version(entries))
    result = U.upgrade(bpffs_dir)
    assert [c.name for c in result.plan.migrating] == [FLOWS6]
    with Datapath.open(bpffs_dir) as dp:
        assert dp.config()["flow4_seed"] == cfg["flow4_seed"]
        got = {k["sport"]: v for k, v in dp.flows() if k["family"] == 6}
        # a set of 4 ways holds 4: where more than 4 meet, front-half flows win
        load, overfull = {}, 0
        for sport in flows:
            load.setdefault(new_set(sport), []).append(sport)
        for s, members in load.items():
            ways = dp.maps.flows6.lookup(s)
            carried = [p for p in members if p != torn]
            kept = [p for p in carried
                    if L.pack_flow6_key(client, vip, p, 80, 6)[:36] in ways]
            assert len(kept) == min(len(carried), L.FLOW6_WAYS), (s, members, kept)
            # placed in the order of the old ways, front halves first: the first two
            # placed in a set keep ways 0 and 1 (a full set takes newcomers at way 2)
            order = sorted(carried, key=lambda p: (flows[p][1] >= L.FLOW6_WAYS // 2,
                                                   flows[p][0] * L.FLOW6_WAYS + flows[p][1]))
            assert set(order[:L.FLOW6_WAYS // 2]) <= set(kept)
            overfull += len(carried) > L.FLOW6_WAYS
        assert overfull
        assert torn not in got and len(got) == sum(min(len([p for p in v if p != torn]),
                                                       L.FLOW6_WAYS) for v in load.values())
        assert all(got[p] == {"backend_id": bid, "gen": gen, "hash": p + 1000} for p in got)
        # the program looks where the flows were put: one packet of a carried flow hits
        sport = next(p for p in got)
        before = dp.stats()["flow_hit"]
        dp.prog.test_run(_frame6(client_s, vip_s, sport, "A"), repeat=1)
        assert dp.stats()["flow_hit"] == before + 1


def _frame6(src, dst, sport, flags):
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=80, flags=flags))


def _layout(name):
    with _bpf.BpfObject.open(object_path("balancer")) as obj:
        return obj.map_layout(name)
