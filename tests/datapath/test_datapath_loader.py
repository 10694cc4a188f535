"""pyxlb.datapath against the kernel: loading, pinning and adoption, each accessor's effect
on its map (read back through pyxlb._layouts), and the map entries apply gives VIP
addresses. Packets are the business of the test_packets* tables; here a packet is sent only
to check run() and stats() plumbing."""

import os
import socket
import time
from array import array

import pytest

from scapy.layers.inet import IP
from scapy.layers.inet import UDP as Udp
from scapy.layers.l2 import Ether

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.addr import parse_addr
from pyxlb.datapath import Datapath, DecapPath, flow4_sets, map_sizes, maps, rated_flows
from pyxlb.errors import PyxlbError
from pyxlb.plan import BackendRecord, VipRecord
from pyxlb.state import Backend, DesiredState, StateError, Vip, VipKey

from tests.support.jumps import CHAIN_LOCAL, tail_calls

from .pristine import Pristine
from .raw import raw_flow, raw_vip

TCP, UDP = socket.IPPROTO_TCP, socket.IPPROTO_UDP
SMALL = {maps.FLOWS6: 1024, maps.BACKENDS: 256, maps.NEXTHOPS: 256, maps.BACKEND_STATS: 256,
         maps.VIPS: 64, maps.VIP_ADDRS: 64, maps.VIP_STATS: 64, maps.RINGS: 64}
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


@pytest.fixture(scope="module")
def _balancer():
    objects = Pristine(Datapath, SMALL)
    yield objects
    objects.close()


@pytest.fixture(scope="module")
def _decap():
    objects = Pristine(DecapPath)
    yield objects
    objects.close()


@pytest.fixture
def dp(_balancer):
    """The balancer with SMALL maps, as freshly loaded (one load per module: pristine.py)."""
    return _balancer.fresh()


@pytest.fixture
def decap(_decap):
    return _decap.fresh()


def vip_key(addr, port, proto):
    fam, a = parse_addr(addr)
    return L.pack_vip_key(a, port, proto, fam)


def addr_key(addr):
    fam, a = parse_addr(addr)
    return L.pack_addr_key(a, fam)


def addr_flags(dp, addr):
    entry = dp.vip_addr(addr)
    return None if entry is None else entry["flags"]


def vips(*texts, **kw):
    """A state of one-backend VIPs (the backend of the VIP's family)."""
    return DesiredState(tuple(
        Vip(VipKey.parse(t), (Backend("2001:db8:1::1" if t.startswith("[") else "10.0.0.1"),),
            **kw) for t in texts))


# -- load, close, pin ----------------------------------------------------------------------

def test_load_and_close():
    dp = Datapath.load()
    assert dp.prog.name == maps.BALANCER.program and not dp.closed
    assert sorted(dp.maps.names()) == sorted(maps.BALANCER.maps.values())
    for attr, name in maps.BALANCER.maps.items():
        assert getattr(dp.maps, attr) is dp.maps[name]
        assert getattr(dp.maps, attr).name == name
    dp.close()
    assert dp.closed
    with pytest.raises(ValueError):
        dp.maps.vips.lookup(bytes(L.SIZES["xlb_vip_key"]))
    dp.close()      # twice is harmless


def test_context_manager_and_decap():
    with DecapPath.load() as d:
        assert d.prog.name == maps.DECAP.program
        assert sorted(d.maps.names()) == sorted(maps.DECAP.maps.values())
    assert d.closed


def test_map_sizes():
    with Datapath.load(map_sizes={maps.FLOWS6: 1024, maps.FLOWS4: 2048, maps.VIPS: 8}) as dp:
        assert dp.maps.flows6.max_entries == 1024
        assert dp.maps.flows4.max_entries == 2048
        assert dp.maps.vips.max_entries == 8
        # rated for 0.40 established flows a set (FLOWS_PER_SET)
        assert dp.flow_capacities() == (819, 409)
        assert dp.flow_ways() == (2048 * L.FLOW4_WAYS, 1024 * L.FLOW6_WAYS)
        assert dp.config()["flow6_bits"] == 10
        assert dp.config()["flow4_bits"] == 11      # the program masks its set hash so
        dp.configure(seed=5, mtu=9000)              # ... and a config change keeps it
        assert dp.config()["flow4_bits"] == 11
    with pytest.raises(ValueError, match="xlb_nope"):
        Datapath.load(map_sizes={"xlb_nope": 1})
    with pytest.raises(ValueError, match="power of two"):
        Datapath.load(map_sizes={maps.FLOWS4: 3000})
    with pytest.raises(ValueError, match=f"{maps.FLOWS6} needs a power of two"):
        Datapath.load(map_sizes={maps.FLOWS6: 3000})
    with pytest.raises(ValueError, match=maps.VIPS):
        DecapPath.load(map_sizes={maps.VIPS: 8})


@pytest.mark.parametrize("flows, sets", [(1, 4), (4, 16), (5000, 16384), (209_715, 1 << 19),
                                         (209_716, 1 << 20), (1_000_000, 1 << 22)])
def test_flow_sets_hold_the_flows_asked_for(flows, sets):
    """A table for N established flows has N / 0.40 sets or more, a power of two; it is
    rated for what it can hold."""
    assert flow4_sets(flows) == sets
    assert map_sizes(max_flows=flows, max_flows6=flows) == {maps.FLOWS4: sets,
                                                            maps.FLOWS6: sets}
    assert rated_flows(sets) >= flows > rated_flows(sets // 2)


def test_a_fresh_config_gets_the_defaults(dp):
    # and the balancer's flow-table geometry: xlb_flowsets4 has 2^bits sets, and its set
    # hash a seed of its own
    # hash a seed of its own; each table an insertion limit sized from it (all CPUs
    # together record at most as many flows a second as the table has ways)
    seed = dp.config()["flow4_seed"]
    assert seed != 0
    ncpus = dp.maps.flow_budget.ncpus
    sets6 = dp.maps.flows6.max_entries
    assert dp.config() == L.unpack_config(L.pack_config(
        flow4_bits=19, flow4_seed=seed, flow6_bits=sets6.bit_length() - 1,
        flags=L.CFG_INSERTS_SET, flow_inserts4=(1 << 19) * L.FLOW4_WAYS // ncpus,
        flow_inserts6=sets6 * L.FLOW6_WAYS // ncpus))
    assert dp.insert_limits() == dp.default_insert_limits()
    assert dp.config()["mtu"] == L.MTU_DEFAULT


def test_each_new_flow_table_gets_its_own_random_set_seed(bpffs_dir):
    """The set hash's seed is drawn at load, per node: unlike the cluster's flow-hash seed
    (0 unless configured, and the same everywhere), nobody outside can know it. An adopted
    datapath keeps it, and neither the cluster seed nor any other config change moves it."""
    pins = os.path.join(bpffs_dir, "pyxlb")
    seeds = set()
    for _ in range(3):
        with Datapath.load(map_sizes=SMALL) as dp:
            seeds.add(dp.config()["flow4_seed"])
    assert len(seeds) == 3 and 0 not in seeds
    with Datapath.load(pin_dir=pins, map_sizes=SMALL) as first:
        seed = first.config()["flow4_seed"]
        first.tables.config.write(seed=99, mtu=1400)
        first.configure(seed=100)
        assert first.config()["flow4_seed"] == seed
    with Datapath.load(pin_dir=pins, map_sizes=SMALL) as again, \
            DecapPath.load(pin_dir=pins) as decap:
        decap.set_config(check_source=True)
        assert again.config()["flow4_seed"] == seed
        assert again.config()["seed"] == 100


def test_a_datapath_left_by_another_version_is_refused_with_a_reason(bpffs_dir):
    """Adopting a pinned datapath whose maps this version does not know (one missing, one
    with records of another size) fails at once with one clear message, rather than with
    a misread record later on."""
    Datapath.create(bpffs_dir, map_sizes=SMALL).close()
    pin = os.path.join(bpffs_dir, maps.CONFIG)
    want = L.SIZES["xlb_config"]
    os.unlink(pin)
    with pytest.raises(PyxlbError, match=f"has no map {maps.CONFIG}: it was made by another "
                                         f"version: `pyxlb upgrade` brings it to this one"):
        Datapath.open(bpffs_dir)
    with _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, want - 4, 1, name=maps.CONFIG) as old:
        old.pin(pin)
    pins = sorted(os.listdir(bpffs_dir))
    with pytest.raises(PyxlbError, match=rf"{maps.CONFIG} of type 2 with 4-byte keys and "
                                         rf"{want - 4}-byte values, where this version has type "
                                         rf"2, 4 and {want}: it was made by another version"):
        Datapath.open(bpffs_dir)
    assert sorted(os.listdir(bpffs_dir)) == pins        # refused, and left as it was


def test_pinned_load_adopts_the_same_maps(bpffs_dir):
    pins = os.path.join(bpffs_dir, "pyxlb")     # created by load
    first = Datapath.load(pin_dir=pins, map_sizes=SMALL)
    ids = {m.name: m.id for m in first.maps}
    assert sorted(os.listdir(pins)) == sorted([*maps.BALANCER.maps.values(), "xlb_version"])
    raw_vip(first, "192.0.2.1", 80, TCP, vip_id=1, ring_id=1, ring_size=7)
    first.tables.config.write(seed=1234, mtu=1400)
    first.close()

    with Datapath.load(pin_dir=pins, map_sizes=SMALL) as second:
        assert {m.name: m.id for m in second.maps} == ids
        assert vip_key("192.0.2.1", 80, TCP) in second.maps.vips
        # an adopted config is left as it was, not reset to the defaults
        assert (second.config()["seed"], second.config()["mtu"]) == (1234, 1400)

    # a map pinned with another size cannot be adopted
    with pytest.raises(OSError):
        Datapath.load(pin_dir=pins, map_sizes={**SMALL, maps.FLOWS6: 2048})


def test_the_tail_calls_outlive_the_process_that_made_the_datapath(bpffs_dir):
    """The kernel empties a prog array once no descriptor or pin refers to it (the
    programs' references do not count): create() pins the balancer's beside its program,
    so a datapath adopted after its maker closed everything still jumps to its own
    xlb_chain_local; destroy() takes the pin away with the program's."""
    pin = os.path.join(bpffs_dir, "jumps_balancer")
    made = Datapath.create(bpffs_dir, map_sizes=SMALL)
    assert tail_calls(made.prog) == CHAIN_LOCAL
    made.close()                            # no descriptor left: the pins alone hold it
    assert os.path.exists(pin)
    with Datapath.open(bpffs_dir) as dp:
        assert tail_calls(dp.prog) == CHAIN_LOCAL
        dp.destroy()
    assert not os.path.exists(pin)
    # an unpinned load holds its table for as long as it is open
    with Datapath.load(map_sizes=SMALL) as dp:
        assert tail_calls(dp.prog) == CHAIN_LOCAL


def test_balancer_and_decap_share_pinned_common_maps(bpffs_dir):
    with Datapath.load(pin_dir=bpffs_dir, map_sizes=SMALL) as dp, \
            DecapPath.load(pin_dir=bpffs_dir) as d:
        for name in (maps.STATS, maps.CONFIG, maps.DECAP_SOURCES):
            assert dp.maps[name].id == d.maps[name].id
        dp.tables.config.write(seed=7, mtu=9000)
        d.set_config(check_source=True)
        cfg = dp.config()
        assert (cfg["seed"], cfg["mtu"]) == (7, 9000)     # decap changed its flag only
        assert cfg["flags"] & L.CFG_DECAP_CHECK_SOURCE
        d.set_config(check_source=False)
        assert dp.config()["flags"] == L.CFG_INSERTS_SET and dp.config()["seed"] == 7


def test_pin_dir_must_be_on_bpffs(tmp_path):
    with pytest.raises(PyxlbError, match="bpffs"):
        Datapath.load(pin_dir=str(tmp_path / "pins"))


# -- config --------------------------------------------------------------------------------

def test_config_write(dp):
    seed = dp.config()["flow4_seed"]
    limits = dp.insert_limits()
    dp.configure(chain_window=30)       # a node setting write() keeps, as the limits
    dp.tables.config.write(seed=0xC0FFEE, mtu=9000, src4="10.255.0.0/16", src6="fd00:ff::/64",
                           decap_check_source=True)
    assert dp.config() == {
        "seed": 0xC0FFEE, "mtu": 9000, "flags": L.CFG_DECAP_CHECK_SOURCE | L.CFG_INSERTS_SET,
        "src4": bytes([10, 255, 0, 0]), "src4_plen": 16,
        "src6": bytes.fromhex("fd0000ff") + bytes(12), "src6_plen": 64,
        "flow4_bits": dp.maps.flows4.max_entries.bit_length() - 1,   # kept from load
        "flow6_bits": dp.maps.flows6.max_entries.bit_length() - 1,
        "flow4_seed": seed, "flow_inserts4": limits[0], "flow_inserts6": limits[1],
        "chain_window": 30,
    }
    dp.tables.config.write()
    assert dp.config() == L.unpack_config(L.pack_config(
        flow4_bits=19, flow4_seed=seed, flow6_bits=dp.maps.flows6.max_entries.bit_length() - 1,
        flags=L.CFG_INSERTS_SET, flow_inserts4=limits[0], flow_inserts6=limits[1],
        chain_window=30))


@pytest.mark.parametrize("kwargs", [
    dict(src4="fd00::/64"), dict(src6="10.0.0.0/8"), dict(src4="10.0.0.1/8"),
    dict(mtu=70000), dict(seed=-1),
])
def test_config_write_rejects(dp, kwargs):
    with pytest.raises(ValueError):
        dp.tables.config.write(**kwargs)


# -- VIPs and the address map --------------------------------------------------------------

def test_vips_accessor_writes_the_record(dp):
    key = VipKey.parse("192.0.2.1:443/tcp")
    dp.tables.vips.put(key, VipRecord(3, 5, 65537, L.MODE_L2, L.VIP_AFFINITY_SRC))
    assert L.unpack_vip(dp.maps.vips.lookup(vip_key("192.0.2.1", 443, TCP))) == {
        "vip_id": 3, "ring_id": 5, "ring_size": 65537, "mode": L.MODE_L2,
        "flags": L.VIP_AFFINITY_SRC}
    # changing it in place
    dp.tables.vips.put(key, VipRecord(3, 6, 7, L.MODE_IPIP, 0))
    assert dp.tables.vips.get(key) == VipRecord(3, 6, 7, L.MODE_IPIP, 0)
    assert dp.tables.vips.read() == {key: VipRecord(3, 6, 7, L.MODE_IPIP, 0)}
    assert dp.maps.vips.count() == 1
    dp.tables.vips.delete(key)
    assert dp.tables.vips.get(key) is None
    with pytest.raises(KeyError):
        dp.tables.vips.delete(key)


def test_apply_gives_each_vip_address_its_kinds(dp):
    """ADDR_PORTS while a VIP of some port uses the address, ADDR_ALL_PORTS while a port-0
    VIP does; each address and family its own entry; the entry goes with the last VIP."""
    a = "192.0.2.1"
    dp.apply(vips(f"{a}:80/tcp"))
    assert addr_flags(dp, a) == L.ADDR_PORTS
    dp.apply(vips(f"{a}:80/tcp", f"{a}:443/tcp", f"{a}:80/udp"))
    assert addr_flags(dp, a) == L.ADDR_PORTS
    every = (f"{a}:80/tcp", f"{a}:443/tcp", f"{a}:80/udp", f"{a}:0/udp", "192.0.2.2:0/tcp",
             "[2001:db8::1]:80/tcp")
    dp.apply(vips(*every))
    assert addr_flags(dp, a) == L.ADDR_PORTS | L.ADDR_ALL_PORTS
    assert addr_flags(dp, "192.0.2.2") == L.ADDR_ALL_PORTS
    assert addr_flags(dp, "2001:db8::1") == L.ADDR_PORTS

    dp.apply(vips(*every[2:]))
    assert addr_flags(dp, a) == L.ADDR_PORTS | L.ADDR_ALL_PORTS    # 80/udp is left
    dp.apply(vips(*every[3:]))
    assert addr_flags(dp, a) == L.ADDR_ALL_PORTS
    dp.apply(vips(*every[4:]))
    assert addr_flags(dp, a) is None
    assert addr_key(a) not in dp.maps.vip_addrs
    assert addr_flags(dp, "192.0.2.2") == L.ADDR_ALL_PORTS
    assert addr_flags(dp, "2001:db8::1") == L.ADDR_PORTS


def test_announced_vips_keep_their_kinds(dp):
    """An address with an announced VIP carries ADDR_ANNOUNCE beside its kinds, and the
    interface and MAC answers carry (here announce_mac: no interface runs the balancer);
    when no VIP of it is announced any more, the kinds stay and the MAC goes."""
    a = "198.51.100.7"
    dp.announce_mac = MAC_A
    dp.apply(vips(f"{a}:80/tcp", announce=True))
    assert dp.vip_addr(a) == {"flags": L.ADDR_ANNOUNCE | L.ADDR_PORTS, "ifindex": 0,
                              "mac": bytes.fromhex("02000000000a")}
    dp.apply(vips(f"{a}:80/tcp", f"{a}:0/tcp"))
    assert dp.vip_addr(a) == {"flags": L.ADDR_PORTS | L.ADDR_ALL_PORTS, "ifindex": 0,
                              "mac": bytes(6)}
    dp.apply(DesiredState())
    assert dp.vip_addr(a) is None
    dp.announce_mac = None
    with pytest.raises(StateError, match="announcing a VIP needs the balancer attached"):
        dp.apply(vips(f"{a}:80/tcp", announce=True))
    assert dp.vip_addr(a) is None


@pytest.mark.parametrize("kwargs", [
    dict(mode=0), dict(mode=9), dict(ring_size=0), dict(ring_size=L.RING_SIZE_MAX + 1),
    dict(vip_id=SMALL[maps.VIP_STATS]), dict(ring_id=SMALL[maps.RINGS]), dict(vip_id=-1),
    dict(vip_id=True), dict(port=65536), dict(proto="sctp"), dict(proto=256),
    dict(addr="192.0.2.300"), dict(flags=1 << 16),
])
def test_vips_accessor_rejects(dp, kwargs):
    args = dict(addr="192.0.2.1", port=80, proto="tcp", vip_id=1, ring_id=1, ring_size=7,
                mode=L.MODE_IPIP, flags=0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        key = VipKey(args.pop("addr"), args.pop("port"), args.pop("proto"))
        dp.tables.vips.put(key, VipRecord(**args))
    assert dp.maps.vips.count() == 0 and dp.maps.vip_addrs.count() == 0


# -- backends and next hops ----------------------------------------------------------------

def test_backends(dp):
    backends = dp.tables.backends
    backends.put(7, BackendRecord("203.0.113.9", L.BACKEND_DRAINING, True, None, 4))
    fam, a = parse_addr("203.0.113.9")
    assert L.unpack_backend(dp.maps.backends.lookup(7)) == {
        "addr": a, "family": fam, "state": L.BACKEND_DRAINING, "flags": L.BACKEND_LOCAL,
        "gen": 4, "mac": bytes(6)}
    backends.put(8, BackendRecord("2001:db8::9", L.BACKEND_ACTIVE, False, "02:00:00:00:00:0a",
                                  1))
    assert L.unpack_backend(dp.maps.backends.lookup(8))["state"] == L.BACKEND_ACTIVE
    got = backends.get(8)
    assert (str(got.address), got.state, got.local, got.mac, got.gen) == \
        ("2001:db8::9", L.BACKEND_ACTIVE, False, "02:00:00:00:00:0a", 1)
    backends.free(7, gen=4)             # gone, its generation kept for the next holder
    assert backends.get(7) == BackendRecord(None, 0, False, None, 4)
    backends.free(7)
    assert dp.maps.backends.lookup(7) == bytes(L.SIZES["xlb_backend"])
    assert backends.get(7) is None and set(backends.read()) == {8}
    with pytest.raises(ValueError):
        backends.put(SMALL[maps.BACKENDS], BackendRecord("203.0.113.9", 1, False, None, 1))
    with pytest.raises(ValueError):
        backends.put(1, BackendRecord("203.0.113.9", 0, False, None, 1))


def test_nexthops(dp):
    dp.tables.nexthops.put(5, MAC_A, MAC_B, 2)
    assert L.unpack_nexthop(dp.maps.nexthops.lookup(5)) == {
        "dmac": bytes.fromhex("02000000000a"), "smac": bytes.fromhex("02000000000b"),
        "ifindex": 2}
    assert dp.tables.nexthops.get(5)["ifindex"] == 2
    dp.tables.nexthops.clear(5)
    assert dp.maps.nexthops.lookup(5) == bytes(L.SIZES["xlb_nexthop"])
    with pytest.raises(ValueError):
        dp.tables.nexthops.put(5, MAC_A, MAC_B, 0)
    with pytest.raises(ValueError):
        dp.tables.nexthops.put(5, "02:00", MAC_B, 1)


# -- rings ---------------------------------------------------------------------------------

def wait_gone(map_id, timeout=10.0):
    """True once no map has `map_id` (the kernel frees a replaced inner map after a grace
    period, not at once)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _bpf.Map.from_id(map_id).close()
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_a_ring_put_swaps_a_new_inner_map(dp):
    rings = dp.tables.rings
    first = rings.put(3, array("I", [1, 2, 3, 4, 5, 6, 7]))
    assert dp.maps.rings.inner_id(3) == first
    assert list(dp.ring(3)) == [1, 2, 3, 4, 5, 6, 7]

    second = rings.put(3, [9] * 7)
    assert second != first
    assert dp.maps.rings.inner_id(3) == second
    assert list(dp.ring(3)) == [9] * 7          # nothing of the old ring is visible
    assert wait_gone(first), "the replaced ring was not freed"

    with _bpf.Map.from_id(second) as inner:
        assert inner.flags & _bpf.MAP_F_INNER_MAP
        assert (inner.key_size, inner.value_size, inner.max_entries) == (4, 4, 7)


def test_rings_of_different_sizes(dp):
    rings = dp.tables.rings
    rings.put(0, [L.RING_EMPTY] * 7)
    rings.put(1, array("I", range(L.RING_SIZE_DEFAULT)))
    rings.put(2, array("I", [5]) * L.RING_SIZE_MAX)       # larger than the template
    assert list(dp.ring(0)) == [L.RING_EMPTY] * 7
    assert dp.ring(1) == array("I", range(L.RING_SIZE_DEFAULT))
    assert len(dp.ring(2)) == L.RING_SIZE_MAX
    rings.put(1, [1, 2, 3])                               # a ring may shrink
    assert list(dp.ring(1)) == [1, 2, 3]


def test_ring_delete(dp):
    dp.tables.rings.put(4, [1] * 7)
    dp.tables.rings.delete(4)
    with pytest.raises(KeyError):
        dp.ring(4)
    with pytest.raises(KeyError):
        dp.tables.rings.delete(4)


@pytest.mark.parametrize("ring_id,table,exc", [
    (0, [], ValueError),
    (0, array("I", [1]) * (L.RING_SIZE_MAX + 1), ValueError),
    (0, [-1, 2], ValueError),
    (0, [2 ** 32], ValueError),
    (SMALL[maps.RINGS], [1], ValueError),
    (0, "abc", TypeError),
])
def test_a_ring_put_rejects(dp, ring_id, table, exc):
    with pytest.raises(exc):
        dp.tables.rings.put(ring_id, table)
    with pytest.raises(KeyError):
        dp.maps.rings.inner_id(0)


# -- local addresses and decap sources -----------------------------------------------------

def test_local_addrs(dp):
    dp.add_local_addr("10.0.0.5")
    dp.add_local_addr("fd00::5")
    assert addr_key("10.0.0.5") in dp.maps.local_addrs
    assert addr_key("fd00::5") in dp.maps.local_addrs
    dp.del_local_addr("10.0.0.5")
    assert addr_key("10.0.0.5") not in dp.maps.local_addrs
    with pytest.raises(KeyError):
        dp.del_local_addr("10.0.0.5")


def test_decap_sources(dp):
    sources = dp.tables.decap_sources
    sources.add("10.255.0.0/16")
    sources.add("fd00:ff::/64")
    assert sources.covers("10.255.3.4")
    assert not sources.covers("10.254.3.4")
    assert sources.covers("fd00:ff::1234")
    # aff::1 begins with the bytes 10.255: the IPv4-mapped convention keeps it out
    assert not sources.covers("aff::1")
    sources.remove("10.255.0.0/16")
    assert not sources.covers("10.255.3.4")
    with pytest.raises(KeyError):
        sources.remove("10.255.0.0/16")
    with pytest.raises(ValueError):
        sources.add("10.255.0.1/16")


def test_source_ranges(dp):
    ranges = dp.tables.source_ranges
    ranges.add(1, "198.51.100.0/24")
    ranges.add(1, "2001:db8::/32")
    ranges.add(2, "0.0.0.0/0")
    assert ranges.admits(1, "198.51.100.9") and not ranges.admits(1, "198.51.101.9")
    assert ranges.admits(1, "2001:db8::9")
    # the VIP id leads the key: VIP 2's 0.0.0.0/0 admits nobody to VIP 3, nor IPv6 to 2
    assert ranges.admits(2, "203.0.113.1") and not ranges.admits(3, "203.0.113.1")
    assert not ranges.admits(2, "2001:db8::9")
    assert dp.source_ranges() == {1: ["198.51.100.0/24", "2001:db8::/32"], 2: ["0.0.0.0/0"]}
    ranges.remove(1, "198.51.100.0/24")
    assert not ranges.admits(1, "198.51.100.9")
    with pytest.raises(KeyError):
        ranges.remove(1, "198.51.100.0/24")
    with pytest.raises(ValueError, match="host bits"):
        ranges.add(1, "10.0.0.1/8")
    with pytest.raises(ValueError, match="vip_id"):
        ranges.add(2 ** 32, "10.0.0.0/8")
    assert dp.vip_range_drops(1) == 0
    with pytest.raises(ValueError, match="vip_id"):
        dp.vip_range_drops(L.MAX_VIPS)


def test_decap_path_settings(decap):
    decap.add_vip("192.0.2.1")
    decap.add_vip("2001:db8::1")
    assert addr_key("192.0.2.1") in decap.maps.decap_vips
    decap.tables.decap_vips.remove("192.0.2.1")
    assert "192.0.2.1" not in decap.tables.decap_vips
    assert "2001:db8::1" in decap.tables.decap_vips
    decap.add_source("10.255.0.0/16")
    assert decap.tables.decap_sources.covers("10.255.0.1")
    decap.tables.decap_sources.remove("10.255.0.0/16")
    assert not decap.tables.decap_sources.covers("10.255.0.1")
    decap.set_config(check_source=True)
    assert decap.config()["flags"] == L.CFG_DECAP_CHECK_SOURCE
    assert decap.config()["mtu"] == L.MTU_DEFAULT


# -- readers -------------------------------------------------------------------------------

def test_stats_names_match_the_enum(dp, decap):
    for d in (dp, decap):
        stats = d.stats()
        assert list(stats) == L.STAT_NAMES
        assert len(stats) == L.STAT_MAX
        assert set(stats.values()) == {0}


def test_stats_sum_every_cpu(dp):
    ncpus = dp.maps.stats.ncpus
    dp.maps.stats.update(L.STAT_TX, array("Q", [3]).tobytes())     # copied to every CPU
    assert dp.stats()["tx"] == 3 * ncpus


def test_counters(dp):
    zero = {"packets": 0, "bytes": 0, "new_flows": 0}
    assert dp.vip_counters(1) == zero and dp.backend_counters(1) == zero
    ncpus = dp.maps.vip_stats.ncpus
    dp.maps.vip_stats.update(2, L.pack_counters(1, 100, 1))         # copied to every CPU
    assert dp.vip_counters(2) == {"packets": ncpus, "bytes": 100 * ncpus, "new_flows": ncpus}
    dp.maps.backend_stats.update(3, L.pack_counters(2, 0, 0))
    assert dp.backend_counters(3)["packets"] == 2 * ncpus
    with pytest.raises(ValueError):
        dp.vip_counters(SMALL[maps.VIP_STATS])


def test_flows(dp):
    """Both tables, IPv4 (the ways of xlb_flowsets4) first, in one shape."""
    assert dp.flows() == [] and dp.flow_count() == 0
    fam, src = parse_addr("198.51.100.1")
    _, dst = parse_addr("192.0.2.1")
    fam6, src6 = parse_addr("2001:db8::1")
    _, dst6 = parse_addr("2001:db8:f::1")
    raw_flow(dp, src6, dst6, 40001, 443, TCP, 8, 1, 98)
    # a set holding one flow in its third way (its check made as the datapath makes it)
    # and, in its last, a way whose check is wrong (torn): no flow
    way = L.pack_flow4_way(L.pack_flow4_key(src, dst, 40000, 80, TCP), L.pack_flow(7, 2, 99))
    torn = way[:-4] + bytes([way[-4] ^ 1]) + way[-3:]
    wsz = L.SIZES["xlb_flow4_way"]
    dp.maps.flows4.update(5, bytes(2 * wsz) + way + torn[:wsz] + bytes(L.SIZES["xlb_flowset4"]
                                                                   - 4 * wsz))
    assert dp.flows() == [({"src": "198.51.100.1", "dst": "192.0.2.1", "sport": 40000,
                            "dport": 80, "proto": TCP, "family": fam},
                           {"backend_id": 7, "gen": 2, "hash": 99}),
                          ({"src": "2001:db8::1", "dst": "2001:db8:f::1", "sport": 40001,
                            "dport": 443, "proto": TCP, "family": fam6},
                           {"backend_id": 8, "gen": 1, "hash": 98})]
    assert dp.flow_count() == 2
    assert dp.flow_counts() == (1, 1)
    assert dp.flow_capacity() == sum(dp.flow_capacities())


def test_run_passes_a_packet_for_no_vip_and_counts_it(dp):
    pkt = bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src="198.51.100.1", dst="203.0.113.1")
                / Udp(sport=1234, dport=53) / (b"x" * 20))
    action, out = dp.run(pkt)
    assert action == _bpf.XDP_PASS
    assert out == pkt
    assert dp.stats()["pass_not_vip"] == 1


def test_attach_registers_the_interface_mac_and_detach_clears_it(netns, bpffs_dir):
    """What the destination-MAC check compares with: attach writes the interface's MAC in
    its slot, detach takes it out (test_packets has what the program does with it)."""
    from pyxlb import netlink
    from pyxlb import netns as pyxlb_netns

    with pyxlb_netns.enter(netns):
        dp = Datapath.create(f"{bpffs_dir}/pyxlb")
        try:
            link = dp.attach("veth0", "generic")
            slot = link["ifindex"] % L.IF_MAC_SLOTS
            entry = L.unpack_if_mac(dp.maps.if_macs.lookup(slot))
            assert entry == dp.tables.if_macs.get(link["ifindex"])
            assert entry["ifindex"] == link["ifindex"]
            assert ":".join(f"{b:02x}" for b in entry["mac"]) == netlink.link_mac(link["ifindex"])
            dp.attach("veth1", "generic")
            dp.detach("veth0")
            assert dp.tables.if_macs.get(link["ifindex"])["ifindex"] == 0
            other = dp.tables.if_macs.get(netlink.ifindex("veth1"))
            assert other["ifindex"] == netlink.ifindex("veth1")
            assert dp.detach("veth1") is True       # the last one: the datapath goes
        finally:
            dp.close()
