"""pyxlb._layouts without a kernel: round trips, byte positions, bad input, constants.

That the sizes agree with the BPF objects' BTF is checked in tests/datapath/test_layouts.py.
"""

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxlb import _layouts as L

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
mac = st.binary(min_size=6, max_size=6)
family = st.sampled_from([L.FAMILY_V4, L.FAMILY_V6])


def addr_for(fam):
    """A 16-byte address obeying the IPv4 convention when fam is FAMILY_V4."""
    if fam == L.FAMILY_V4:
        return st.binary(min_size=4, max_size=4).map(lambda b: b + bytes(12))
    return st.binary(min_size=16, max_size=16)


@st.composite
def vip_keys(draw):
    fam = draw(family)
    return dict(addr=draw(addr_for(fam)), port=draw(u16), proto=draw(u8), family=fam)


@st.composite
def addr_keys(draw):
    fam = draw(family)
    return dict(addr=draw(addr_for(fam)), family=fam)


@st.composite
def backends(draw):
    fam = draw(st.sampled_from([0, L.FAMILY_V4, L.FAMILY_V6]))
    a = bytes(16) if fam == 0 else draw(addr_for(fam))
    return dict(addr=a, family=fam, state=draw(u8), flags=draw(u16), gen=draw(u32),
                mac=draw(mac))


@st.composite
def flow_keys(draw):
    fam = draw(family)
    return dict(src=draw(addr_for(fam)), dst=draw(addr_for(fam)), sport=draw(u16),
                dport=draw(u16), proto=draw(u8), family=fam)


STRATEGIES = {
    "vip_key": vip_keys(),
    "vip": st.fixed_dictionaries(dict(vip_id=u32, ring_id=u32, ring_size=u32, mode=u8,
                                      flags=u16)),
    "vip_slot": st.fixed_dictionaries(dict(key=st.binary(min_size=20, max_size=20), flags=u32,
                                           vip=st.binary(min_size=16, max_size=16))),
    "addr_key": addr_keys(),
    "addr": st.fixed_dictionaries(dict(flags=u32, ifindex=u32, mac=mac)),
    "backend": backends(),
    "nexthop": st.fixed_dictionaries(dict(dmac=mac, smac=mac, ifindex=u32)),
    "if_mac": st.fixed_dictionaries(dict(ifindex=u32, mac=mac)),
    "flow_key": flow_keys(),
    "flow4_key": st.fixed_dictionaries(dict(
        src=addr_for(L.FAMILY_V4), dst=addr_for(L.FAMILY_V4), sport=u16, dport=u16, proto=u8,
        family=st.just(L.FAMILY_V4))),
    "flow6_key": st.fixed_dictionaries(dict(
        src=addr_for(L.FAMILY_V6), dst=addr_for(L.FAMILY_V6), sport=u16, dport=u16, proto=u8,
        family=st.just(L.FAMILY_V6))),
    "flow": st.fixed_dictionaries(dict(backend_id=u32, gen=u32, hash=u32)),
    "member_key": st.fixed_dictionaries(dict(vip_id=u32, backend_id=u32)),
    "member": st.fixed_dictionaries(dict(weight=u32, state=u8, health=u8)),
    "health_spec": st.fixed_dictionaries(dict(
        type=u8, flags=u8, port=u16, interval_ms=u32, timeout_ms=u32, rise=u8, fall=u8,
        expect_lo=u16, expect_hi=u16, path=st.binary(max_size=L.HEALTH_PATH_MAX))),
    "counters": st.fixed_dictionaries(dict(packets=u64, bytes=u64, new_flows=u64)),
    "lpm_key": st.fixed_dictionaries(dict(prefixlen=st.integers(0, 128),
                                          addr=st.binary(min_size=16, max_size=16))),
    "src_range_key": st.fixed_dictionaries(dict(
        vip_id=u32, prefixlen=st.integers(32, 160), addr=st.binary(min_size=16, max_size=16))),
    "config": st.fixed_dictionaries(dict(
        seed=u32, mtu=u16, flags=u16, src4=st.binary(min_size=4, max_size=4),
        src4_plen=st.integers(0, 32), src6=st.binary(min_size=16, max_size=16),
        src6_plen=st.integers(0, 128), flow4_bits=st.integers(0, 31), flow4_seed=u32,
        flow6_bits=st.integers(0, 31), flow_inserts4=u32, flow_inserts6=u32,
        chain_window=u32)),
    "prev_slot": st.fixed_dictionaries(dict(chain=u16, until=u32)),
    "chain_peer": st.sampled_from([L.FAMILY_V4, L.FAMILY_V6]).flatmap(
        lambda f: st.fixed_dictionaries(dict(addr=addr_for(f), family=st.just(f)))),
    "hc_key": st.fixed_dictionaries(dict(port=u16, family=family)),
    "hc_path": st.fixed_dictionaries(dict(
        vip=st.binary(min_size=16, max_size=16), backend=st.binary(min_size=16, max_size=16),
        outer_src=st.binary(min_size=16, max_size=16), node=st.binary(min_size=16, max_size=16),
        mode=st.sampled_from([L.MODE_IPIP, L.MODE_L2]), dport=u16)),
}
# made from packed parts and read by a scan (tests below), not packed field by field; the
# per-CPU insertion budget only the datapath writes
WHOLE = {"xlb_flow4_way", "xlb_flowset4", "xlb_flow6_way", "xlb_flowset6", "xlb_flow_budget"}


def test_every_struct_has_a_size_and_a_strategy():
    assert set(L.SIZES) - WHOLE == {f"xlb_{name}" for name in STRATEGIES}


flow4_ways = st.tuples(STRATEGIES["flow4_key"], STRATEGIES["flow"]).map(
    lambda kf: L.pack_flow4_way(L.pack_flow4_key(**kf[0]), L.pack_flow(**kf[1])))


@given(flow4_ways, st.integers(0, 32 * 8 - 1))
def test_a_flow4_way_is_key_flow_check_and_any_flipped_bit_voids_it(way, bit):
    """pack_flow4_way: the key, the flow, then a check word that is never 0; a scan finds
    the way, and finds nothing once any one bit of it has flipped (the check multiplies by
    an odd constant, so one flipped bit always shows; a way torn between two writers
    differs in more bits, and shows unless 32 bits happen to agree)."""
    wsz, ssz = L.SIZES["xlb_flow4_way"], L.SIZES["xlb_flowset4"]
    assert len(way) == wsz and way[-4:] != bytes(4)
    one_set = way + bytes(ssz - wsz)
    assert L.flow4_ways(one_set) == [(0, way[:16], way[16:28])]
    bad = bytearray(way)
    bad[bit // 8] ^= 1 << (bit % 8)
    assert L.flow4_ways(bytes(bad) + bytes(ssz - wsz)) == []


flow6_ways = st.tuples(STRATEGIES["flow6_key"], STRATEGIES["flow"]).map(
    lambda kf: L.pack_flow6_way(L.pack_flow6_key(**kf[0]), L.pack_flow(**kf[1])))


@given(flow6_ways, st.integers(0, 56 * 8 - 1))
def test_a_flow6_way_is_key_flow_check_padding_and_any_flipped_bit_voids_it(way, bit):
    """pack_flow6_way: one cache line, the key, the flow, the check word, 8 bytes of zero;
    a flipped bit of the first 56 voids it, as for IPv4."""
    wsz, ssz = L.SIZES["xlb_flow6_way"], L.SIZES["xlb_flowset6"]
    assert wsz == 64 and ssz == 64 * L.FLOW6_WAYS and way[52:56] != bytes(4)
    assert way[56:] == bytes(8)
    one_set = bytes(wsz) + way + bytes(ssz - 2 * wsz)
    assert L.flow6_ways(one_set) == [(1, way[:40], way[40:52])]
    bad = bytearray(way)
    bad[bit // 8] ^= 1 << (bit % 8)
    assert L.flow6_ways(bytes(wsz) + bytes(bad) + bytes(ssz - 2 * wsz)) == []


def test_flow4_ways_numbers_ways_across_sets():
    wsz, ssz = L.SIZES["xlb_flow4_way"], L.SIZES["xlb_flowset4"]
    way = L.pack_flow4_way(L.pack_flow4_key(V4, V4, 1, 2, 6), L.pack_flow(3, 4, 5))
    buf = bytearray(3 * ssz)
    for n in (1, L.FLOW4_WAYS + 2, 3 * L.FLOW4_WAYS - 1):
        buf[n * wsz:(n + 1) * wsz] = way
    assert [w for w, _, _ in L.flow4_ways(buf)] == [1, L.FLOW4_WAYS + 2, 3 * L.FLOW4_WAYS - 1]
    assert L.flow4_ways(buf, True) == 3 and L.flow4_ways(bytes(ssz), True) == 0
    other = L.pack_flow4_way(L.pack_flow4_key(V4, V4, 1, 2, 6), L.pack_flow(9, 4, 5))
    buf[0:wsz] = other
    assert [w for w, _, _ in L.flow4_ways(buf, backend_ids={9})] == [0]
    assert L.flow4_ways(buf, True, backend_ids={3, 7}) == 3
    assert L.flow4_ways(b"") == []
    with pytest.raises(ValueError, match="multiple"):
        L.flow4_ways(bytes(ssz + 1))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_round_trip(name):
    pack, unpack = getattr(L, f"pack_{name}"), getattr(L, f"unpack_{name}")

    @given(STRATEGIES[name])
    def check(fields):
        data = pack(**fields)
        assert isinstance(data, bytes) and len(data) == L.SIZES[f"xlb_{name}"]
        assert unpack(data) == fields
        assert unpack(bytearray(data)) == fields
        assert pack(**unpack(data)) == data

    check()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_unpack_rejects_a_wrong_length(name):
    unpack = getattr(L, f"unpack_{name}")
    size = L.SIZES[f"xlb_{name}"]
    for n in (0, size - 1, size + 1):
        with pytest.raises(ValueError, match=f"{size} bytes"):
            unpack(bytes(n))
    with pytest.raises(TypeError):
        unpack("x" * size)


# -- where the bytes go (independent of the header: these are the wire expectations) ------

V4 = bytes([10, 0, 0, 1]) + bytes(12)
V6 = bytes.fromhex("20010db8000000000000000000000001")


def test_vip_key_bytes():
    data = L.pack_vip_key(V4, 0x1234, socket.IPPROTO_UDP, L.FAMILY_V4)
    assert data[:16] == V4
    assert data[16:18] == b"\x12\x34"           # port in network order
    assert data[18] == socket.IPPROTO_UDP
    assert data[19] == L.FAMILY_V4


def test_flow_key_bytes():
    data = L.pack_flow_key(V6, V6[::-1], 1, 0xABCD,
                           socket.IPPROTO_TCP, L.FAMILY_V6)
    assert data[:16] == V6 and data[16:32] == V6[::-1]
    assert data[32:34] == b"\x00\x01" and data[34:36] == b"\xab\xcd"
    assert data[36] == socket.IPPROTO_TCP and data[37] == L.FAMILY_V6
    assert data[38:] == bytes(len(data) - 38)   # padding is zero


def test_host_order_fields():
    assert L.pack_vip(1, 2, 65537, L.MODE_L2, 0x0102)[:12] == struct.pack("=III", 1, 2, 65537)
    assert L.pack_flow(7, 9, 11) == struct.pack("=III", 7, 9, 11)
    assert L.pack_member_key(3, 4) == struct.pack("=II", 3, 4)
    assert L.pack_counters(1, 2, 3) == struct.pack("=QQQ", 1, 2, 3)
    assert L.pack_lpm_key(112, V6)[:4] == struct.pack("=I", 112)
    cfg = L.pack_config(seed=0xDEADBEEF, mtu=9000, flags=L.CFG_DECAP_CHECK_SOURCE)
    assert cfg[:8] == struct.pack("=IHH", 0xDEADBEEF, 9000, L.CFG_DECAP_CHECK_SOURCE)


def test_member_and_health_spec_bytes():
    """The verdict sits in what was the member's first pad byte; a health spec is its
    integers in host order, then the path's length and the path, zero-padded."""
    assert L.pack_member(5, L.BACKEND_ACTIVE, L.HEALTH_DOWN) == \
        struct.pack("=IBBxx", 5, L.BACKEND_ACTIVE, L.HEALTH_DOWN)
    data = L.pack_health_spec(L.HEALTH_HTTP, L.HEALTH_F_GONE, 8080, 2000, 500, 2, 3, 200,
                              299, b"/healthz")
    assert data[:20] == struct.pack("=BBHIIBBHHBx", L.HEALTH_HTTP, L.HEALTH_F_GONE, 8080,
                                    2000, 500, 2, 3, 200, 299, 8)
    assert data[20:] == b"/healthz".ljust(L.HEALTH_PATH_MAX, b"\0")
    assert len(data) == L.SIZES["xlb_health_spec"]


def test_src_range_key_bytes():
    # the VIP id leads the matched data, so every trie prefix is "this VIP, then addresses"
    data = L.pack_src_range_key(7, 32 + 96 + 24, bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 0]))
    assert data == struct.pack("=II", 152, 7) + bytes(10) + b"\xff\xff\x0a\x01\x02\x00"
    assert L.SRC_RANGE_PLEN_MAX == 160


def test_padding_is_zero_and_ignored():
    key = L.pack_addr_key(V4, L.FAMILY_V4)
    assert key[17:] == bytes(3)
    dirty = key[:17] + b"\xff\xff\xff"
    assert L.unpack_addr_key(dirty) == {"addr": V4, "family": L.FAMILY_V4}


def test_defaults():
    assert L.unpack_config(L.pack_config())["mtu"] == L.MTU_DEFAULT
    assert L.pack_addr(L.ADDR_PORTS)[4:] == bytes(len(L.pack_addr(0)) - 4)


# -- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: L.pack_vip_key(V4, 65536, 6, L.FAMILY_V4),
    lambda: L.pack_vip_key(V4, -1, 6, L.FAMILY_V4),
    lambda: L.pack_vip_key(V4, 80, 256, L.FAMILY_V4),
    lambda: L.pack_vip_key(V4, 80, 6, 5),
    lambda: L.pack_vip_key(V4, 80, 6, 0),
    lambda: L.pack_vip_key(V4[:4], 80, 6, L.FAMILY_V4),
    lambda: L.pack_vip_key(V4 + b"\0", 80, 6, L.FAMILY_V4),
    lambda: L.pack_vip_key(V6, 80, 6, L.FAMILY_V4),          # IPv4 with a non-zero tail
    lambda: L.pack_vip(2 ** 32, 0, 7, L.MODE_IPIP),
    lambda: L.pack_vip(0, 0, 7, 256),
    lambda: L.pack_vip(0, 0, 7, L.MODE_IPIP, flags=0x10000),
    lambda: L.pack_addr(0, ifindex=-1),
    lambda: L.pack_addr(0, mac=bytes(5)),
    lambda: L.pack_backend(V4, 0, L.BACKEND_ACTIVE),          # family 0 needs a zero address
    lambda: L.pack_backend(V4, L.FAMILY_V4, 256),
    lambda: L.pack_nexthop(bytes(6), bytes(7), 1),
    lambda: L.pack_flow_key(V4, V6, 1, 2, 6, L.FAMILY_V4),
    lambda: L.pack_flow_key(V6, V6, 1, 70000, 6, L.FAMILY_V6),
    lambda: L.pack_flow(-1, 0),
    lambda: L.pack_counters(packets=2 ** 64),
    lambda: L.pack_lpm_key(129, V6),
    lambda: L.pack_lpm_key(8, V6[:4]),
    lambda: L.pack_src_range_key(1, 31, V6),      # the VIP id is always matched whole
    lambda: L.pack_src_range_key(1, 161, V6),
    lambda: L.pack_src_range_key(2 ** 32, 40, V6),
    lambda: L.pack_src_range_key(1, 40, V6[:4]),
    lambda: L.pack_config(mtu=65536),
    lambda: L.pack_config(src4_plen=33),
    lambda: L.pack_config(src6_plen=129),
    lambda: L.pack_config(src4=bytes(16)),
    lambda: L.pack_health_spec(L.HEALTH_HTTP, path=b"/" * (L.HEALTH_PATH_MAX + 1)),
    lambda: L.pack_health_spec(L.HEALTH_TCP, port=65536),
    lambda: L.pack_member(1, 1, 256),
    lambda: L.unpack_health_spec(bytes(18) + bytes([L.HEALTH_PATH_MAX + 1, 0])
                                 + bytes(L.HEALTH_PATH_MAX)),     # path_len too long
    lambda: L.sum_counters(bytes(24), 0),
    lambda: L.sum_counters(bytes(25), 1),
    lambda: L.vip_ports_on(bytes(21), V4, L.FAMILY_V4),
])
def test_bad_values_raise_valueerror(call):
    with pytest.raises(ValueError):
        call()


@pytest.mark.parametrize("call", [
    lambda: L.pack_vip_key(V4, "80", 6, L.FAMILY_V4),
    lambda: L.pack_vip_key(V4, 80.0, 6, L.FAMILY_V4),
    lambda: L.pack_vip_key("10.0.0.1", 80, 6, L.FAMILY_V4),
    lambda: L.pack_flow(True, 0),
    lambda: L.pack_nexthop(6, bytes(6), 1),
    lambda: L.pack_health_spec(L.HEALTH_HTTP, path="/"),
])
def test_wrong_types_raise_typeerror(call):
    with pytest.raises(TypeError):
        call()


def test_bytes_like_inputs_are_accepted():
    assert L.pack_addr_key(bytearray(V4), L.FAMILY_V4) == L.pack_addr_key(V4, L.FAMILY_V4)
    assert L.pack_addr_key(memoryview(V6), L.FAMILY_V6) == L.pack_addr_key(V6, L.FAMILY_V6)


# -- many-entry helpers ---------------------------------------------------------------------

def test_sum_counters_adds_every_cpu():
    stride = (L.SIZES["xlb_counters"] + 7) // 8 * 8
    per_cpu = b"".join(L.pack_counters(i, 10 * i, 100 * i).ljust(stride, b"\0")
                       for i in range(1, 5))
    assert L.sum_counters(per_cpu, 4) == {"packets": 10, "bytes": 100, "new_flows": 1000}


def test_vip_ports_on_finds_the_address_only():
    other = bytes([10, 0, 0, 2]) + bytes(12)
    keys = b"".join([
        L.pack_vip_key(V4, 80, 6, L.FAMILY_V4),
        L.pack_vip_key(other, 81, 6, L.FAMILY_V4),
        L.pack_vip_key(V4, 0, 17, L.FAMILY_V4),
        L.pack_vip_key(V6, 82, 6, L.FAMILY_V6),
    ])
    assert L.vip_ports_on(keys, V4, L.FAMILY_V4) == [(80, 6), (0, 17)]
    assert L.vip_ports_on(keys, V6, L.FAMILY_V6) == [(82, 6)]
    assert L.vip_ports_on(b"", V4, L.FAMILY_V4) == []


# -- constants ------------------------------------------------------------------------------

def test_stat_names_follow_the_enum():
    assert len(L.STAT_NAMES) == L.STAT_MAX
    assert len(set(L.STAT_NAMES)) == L.STAT_MAX
    # every enum member has a spelled name (a new member missing from the table reads
    # "stat_<n>"), and the name is the constant's own, lowercased
    stat_attrs = [n for n in dir(L) if n.startswith("STAT_") and n not in ("STAT_MAX", "STAT_NAMES")]
    assert len(stat_attrs) == L.STAT_MAX
    for attr in stat_attrs:
        assert L.STAT_NAMES[getattr(L, attr)] == attr[len("STAT_"):].lower()
    assert L.STAT_NAMES[L.STAT_PASS_NOT_VIP] == "pass_not_vip"


def test_constants_from_consts_h():
    assert (L.FAMILY_V4, L.FAMILY_V6) == (4, 6)
    assert L.RING_EMPTY == 0xFFFFFFFF
    assert L.RING_SIZE_DEFAULT == 65537 and L.RING_SIZE_MAX >= L.RING_SIZE_DEFAULT
    assert L.MTU_DEFAULT == 1500
    assert len(set(L.MODES)) == 3 and 0 not in L.MODES
    for group in ([L.VIP_NO_FLOW_TABLE, L.VIP_AFFINITY_SRC, L.VIP_ANNOUNCE,
                   L.VIP_SOURCE_RANGES],
                  [L.ADDR_PORTS, L.ADDR_ALL_PORTS, L.ADDR_ANNOUNCE],
                  [L.BACKEND_LOCAL], [L.CFG_DECAP_CHECK_SOURCE],
                  [L.HEALTH_F_DIRECT, L.HEALTH_F_GONE]):
        assert all(f > 0 and f & (f - 1) == 0 for f in group)      # one bit each
        assert len(set(group)) == len(group)
    assert {L.BACKEND_ACTIVE, L.BACKEND_DRAINING} == {1, 2}
    assert (L.HEALTH_UNCHECKED, L.HEALTH_UP, L.HEALTH_DOWN) == (0, 1, 2)
    assert len({L.HEALTH_TCP, L.HEALTH_HTTP, L.HEALTH_NONE} - {0}) == 3
    assert L.HEALTH_VIP == 0xFFFFFFFF and L.HEALTH_VIP >= L.MAX_BACKENDS
    assert L.MAX_RINGS >= 1 and L.MAX_VIPS >= 1 and L.MAX_BACKENDS >= 1
    assert L.MAX_SOURCE_RANGES >= L.MAX_VIPS
    assert L.STAT_NAMES[L.STAT_DROP_SOURCE_RANGE] == "drop_source_range"
