"""Host and BPF layouts agree: every struct's size as the host compiler sees structs.h
(pyxlb._layouts.SIZES) equals the key or value size of the map that uses it in the objects
clang -target bpf built (their BTF, as the kernel reports it after load).

The objects must exist: a missing one is an error here, never a skip.
"""

import pytest

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.datapath import Datapath, DecapPath, maps

# (map, "key" or "value", struct)
BALANCER_USES = [
    (maps.VIPS, "key", "xlb_vip_key"),
    (maps.VIPS, "value", "xlb_vip"),
    (maps.VIP_ADDRS, "key", "xlb_addr_key"),
    (maps.VIP_ADDRS, "value", "xlb_addr"),
    (maps.LOCAL_ADDRS, "key", "xlb_addr_key"),
    (maps.BACKENDS, "value", "xlb_backend"),
    (maps.NEXTHOPS, "value", "xlb_nexthop"),
    (maps.IF_MACS, "value", "xlb_if_mac"),
    (maps.FLOWS4, "value", "xlb_flowset4"),
    (maps.FLOWS6, "value", "xlb_flowset6"),
    (maps.FLOW_BUDGET, "value", "xlb_flow_budget"),
    (maps.MEMBERS, "key", "xlb_member_key"),
    (maps.MEMBERS, "value", "xlb_member"),
    (maps.HEALTH_SPECS, "key", "xlb_member_key"),
    (maps.HEALTH_SPECS, "value", "xlb_health_spec"),
    (maps.VIP_STATS, "value", "xlb_counters"),
    (maps.BACKEND_STATS, "value", "xlb_counters"),
    (maps.DECAP_SOURCES, "key", "xlb_lpm_key"),
    (maps.SOURCE_RANGES, "key", "xlb_src_range_key"),
    (maps.CONFIG, "value", "xlb_config"),
    (maps.CHAIN_PEERS, "value", "xlb_chain_peer"),
]
DECAP_USES = [
    (maps.DECAP_VIPS, "key", "xlb_addr_key"),
    (maps.DECAP_SOURCES, "key", "xlb_lpm_key"),
    (maps.CONFIG, "value", "xlb_config"),
    (maps.CHAIN_PEERS, "value", "xlb_chain_peer"),
]


@pytest.fixture(scope="module")
def balancer():
    dp = Datapath.load()
    yield dp
    dp.close()


@pytest.fixture(scope="module")
def decap():
    dp = DecapPath.load()
    yield dp
    dp.close()


HEALTH_USES = [
    (maps.HC_PATHS, "key", "xlb_hc_key"),
    (maps.HC_PATHS, "value", "xlb_hc_path"),
]


@pytest.fixture(scope="module")
def health():
    from pyxlb.health.tunnel import Tunnel

    tunnel = Tunnel.open()
    yield tunnel
    tunnel.close()


# inner maps of a map-of-maps: their value size is the template's, which the kernel checks
# when an inner map is put in (the outer map's own value is a map fd)
INNER_USES = [(maps.VIP_INDEX, "xlb_vip_slot")]
# inner maps that differ in length (BPF_F_INNER_MAP), checked by test_prev_ring_size
SIZED_INNER_USES = [(maps.PREV_RINGS, "xlb_prev_slot")]
# parts of a map's value, checked through it; xlb_flow_key is the packet's flow key the sets
# are made from, and the key of the LRU flow table of earlier releases (upgrade.SUCCESSORS
# checks it against that map)
PARTS = {"xlb_flow4_way", "xlb_flow4_key", "xlb_flow6_way", "xlb_flow6_key", "xlb_flow",
         "xlb_flow_key"}


def test_every_struct_is_checked():
    assert ({s for _, _, s in BALANCER_USES + DECAP_USES + HEALTH_USES}
            | {s for _, s in INNER_USES + SIZED_INNER_USES}
            | PARTS == set(L.SIZES))


def test_a_flow_set_is_its_ways():
    """A set of xlb_flowsets4 is its ways, back to back; a way is a key, a flow and the
    check word, which comes last (Datapath clears a way by zeroing its last 4 bytes)."""
    assert L.SIZES["xlb_flowset4"] == L.FLOW4_WAYS * L.SIZES["xlb_flow4_way"]
    assert L.SIZES["xlb_flow4_way"] == L.SIZES["xlb_flow4_key"] + L.SIZES["xlb_flow"] + 4
    assert L.SIZES["xlb_flow4_way"] * 2 == 64       # two ways a cache line
    assert L.SIZES["xlb_flowset6"] == L.FLOW6_WAYS * L.SIZES["xlb_flow6_way"]
    assert L.SIZES["xlb_flow6_way"] == L.SIZES["xlb_flow6_key"] + L.SIZES["xlb_flow"] + 12
    assert L.SIZES["xlb_flow6_way"] == 64            # a way a cache line


@pytest.mark.parametrize("map_name,struct", INNER_USES, ids=[m for m, _ in INNER_USES])
def test_inner_map_sizes(balancer, map_name, struct):
    """The kernel takes an inner array of the host's struct size and refuses one a word
    larger: the template in the object has the same size. The VIP index's template has no
    BPF_F_INNER_MAP (so the verifier inlines its lookup): its slot count is fixed too."""
    outer = balancer.maps[map_name]
    flags, n = _bpf.MAP_F_MMAPABLE, L.VIP_INDEX_SLOTS
    with _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, L.SIZES[struct], n, flags=flags) as inner:
        outer.set_inner(0, inner)
    for size, count, extra in ((L.SIZES[struct] + 8, n, 0), (L.SIZES[struct], n // 2, 0),
                               (L.SIZES[struct], n, _bpf.MAP_F_INNER_MAP)):
        with _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, size, count,
                             flags=flags | extra) as inner:
            with pytest.raises(OSError):
                outer.set_inner(0, inner)
    outer.delete(0)


def test_prev_ring_size(balancer):
    """xlb_prev_rings takes inner arrays of the host's xlb_prev_slot, any length (its
    template has BPF_F_INNER_MAP, as a ring's), and refuses a larger value."""
    outer = balancer.maps[maps.PREV_RINGS]
    flags = _bpf.MAP_F_MMAPABLE | _bpf.MAP_F_INNER_MAP
    size = L.SIZES["xlb_prev_slot"]
    for count in (7, L.RING_SIZE_DEFAULT):
        with _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, size, count, flags=flags) as inner:
            outer.set_inner(0, inner)
    with _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, size + 8, 7, flags=flags) as inner:
        with pytest.raises(OSError):
            outer.set_inner(0, inner)
    outer.delete(0)


@pytest.mark.parametrize("map_name,side,struct", BALANCER_USES,
                         ids=[f"{m}.{s}" for m, s, _ in BALANCER_USES])
def test_balancer_sizes(balancer, map_name, side, struct):
    m = balancer.maps[map_name]
    assert getattr(m, f"{side}_size") == L.SIZES[struct]


@pytest.mark.parametrize("map_name,side,struct", DECAP_USES,
                         ids=[f"{m}.{s}" for m, s, _ in DECAP_USES])
def test_decap_sizes(decap, map_name, side, struct):
    m = decap.maps[map_name]
    assert getattr(m, f"{side}_size") == L.SIZES[struct]


@pytest.mark.parametrize("map_name,side,struct", HEALTH_USES,
                         ids=[f"{m}.{s}" for m, s, _ in HEALTH_USES])
def test_health_sizes(health, map_name, side, struct):
    m = health.paths.map
    assert m.name == map_name
    assert getattr(m, f"{side}_size") == L.SIZES[struct]
    assert m.max_entries == L.HC_MAX_PATHS


def test_scalar_maps(balancer, decap):
    for dp in (balancer, decap):
        assert dp.maps.stats.max_entries == L.STAT_MAX      # one counter per enum xlb_stat
        assert (dp.maps.stats.key_size, dp.maps.stats.value_size) == (4, 8)
        assert dp.maps.config.max_entries == 1
    assert balancer.maps.rings.key_size == 4
    assert (balancer.maps.source_ranges.value_size, balancer.maps.vip_range_drops.value_size) \
        == (4, 8)
    assert balancer.maps.source_ranges.type == _bpf.MAP_TYPE_LPM_TRIE


def test_default_map_sizes_follow_consts_h(balancer):
    assert balancer.maps.vips.max_entries == L.MAX_VIPS
    assert balancer.maps.vip_stats.max_entries == L.MAX_VIPS
    assert balancer.maps.backends.max_entries == L.MAX_BACKENDS
    assert balancer.maps.rings.max_entries == L.MAX_RINGS
    assert balancer.maps.flows4.max_entries == L.FLOW4_SETS
    assert balancer.maps.flows6.max_entries == L.FLOW6_SETS
    assert balancer.maps.flow_budget.max_entries == 2            # IPv4, IPv6
    assert balancer.maps.local_addrs.max_entries == L.MAX_LOCAL_ADDRS
    assert balancer.maps.decap_sources.max_entries == L.MAX_SOURCE_PREFIXES
    assert balancer.maps.source_ranges.max_entries == L.MAX_SOURCE_RANGES
    assert balancer.maps.vip_range_drops.max_entries == L.MAX_VIPS


def test_objects_hold_exactly_the_maps_of_maps_py():
    from pyxlb import _bpf
    from pyxlb.bpf import object_path

    for spec in (maps.BALANCER, maps.DECAP):
        with _bpf.BpfObject.open(object_path(spec.object)) as obj:
            declared = {n for n in obj.map_names() if n.startswith("xlb_")}
            own = set(spec.private) | ({spec.jumps[0]} if spec.jumps else set())
            assert declared == set(spec.maps.values()) | own
            assert not own & set(spec.maps.values())
            assert spec.program in obj.program_names()
            assert set(spec.jumps[1] if spec.jumps else ()) | {spec.program} == \
                set(obj.program_names())
