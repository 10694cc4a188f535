"""The VIP index (pyxlb/datapath/vipindex.py, xlb_vip_index): what apply puts in it, that
the kernel reads VIPs from it (and from xlb_vips only where a slot says so), shared slots,
raw writes outside apply, rollback and restart."""

import errno

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.datapath import Datapath, vipindex
from pyxlb.datapath.apply import Transaction
from pyxlb.datapath.maps import Vips
from pyxlb.datapath.vipindex import VipIndex
from pyxlb.state import Backend, DesiredState, Vip, VipKey

from .pristine import Pristine
from .raw import raw_backend, raw_index, raw_nexthops, raw_unvip, raw_vip

SMALL = {"xlb_flowsets6": 1024, "xlb_flowsets4": 1024}
ADDR = "192.0.2.10"


def vip(text, *backends, **kw):
    return Vip(VipKey.parse(text), backends=tuple(Backend(b) for b in backends), **kw)


def key_bytes(text):
    return Vips.key(VipKey.parse(text))


def shared_ports(n=2):
    """Ports of ADDR/tcp whose VIP keys fall in one index slot (found by search)."""
    seen = {}
    for port in range(1, 65536):
        slot = vipindex.slot_of(key_bytes(f"{ADDR}:{port}/tcp"))
        seen.setdefault(slot, []).append(port)
        if len(seen[slot]) == n:
            return seen[slot]
    raise AssertionError("no shared slot among 65535 ports")


def frame(dport, sport=40000):
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") /
                 IP(src="198.51.100.7", dst=ADDR) / TCP(sport=sport, dport=dport))


def send(dp, dport, sport=40000):
    """(action, outer destination or None)."""
    action, out = dp.run(frame(dport, sport))
    pkt = Ether(out)
    return action, (pkt[IP].dst if action == _bpf.XDP_TX else None)


def prepare(dp):
    dp.configure(src4="10.255.0.0/16")
    raw_nexthops(dp)


def live_image(dp) -> bytes:
    """The bytes of the live index, slot by slot (lookups through the inner array)."""
    size = vipindex.SLOT_SIZE
    with dp.maps.vip_index.inner_map(0) as inner:
        assert inner.max_entries == L.VIP_INDEX_SLOTS and inner.value_size == size
        _, values, n = inner.lookup_batch()
        return bytes(values[:n * size])


def held(dp, text):
    """(flags, key, record) of the slot of VIP `text` in the live index."""
    s = dp.tables.vip_index.slot(key_bytes(text))
    return s["flags"], s["key"], s["vip"]


@pytest.fixture(scope="module")
def _balancer():
    objects = Pristine(Datapath, SMALL)
    yield objects
    objects.close()


@pytest.fixture
def dp(_balancer):
    """The balancer with SMALL maps, as freshly loaded (one load per module: pristine.py)."""
    return _balancer.fresh()


@pytest.mark.parametrize("text", ["192.0.2.10:80/tcp", "192.0.2.10:443/udp",
                                  "203.0.113.255:1/tcp", "[2001:db8::10]:8080/tcp",
                                  "[2001:db8:ffff::1]:65535/udp"])
def test_raw_delete_shows_slot_of_matches_the_kernel(dp, text):
    """The kernel finds a VIP at the slot Python computed for it: a VIP whose record is only
    in the index (deleted from xlb_vips behind apply's back) is still balanced."""
    k = VipKey.parse(text)
    v6 = k.family == 6
    backend = "2001:db8:1::1" if v6 else "10.0.1.1"
    dp.apply(DesiredState((Vip(k, backends=(Backend(backend),)),)))
    dp.configure(src4="10.255.0.0/16", src6="fd00:ff::/96")
    raw_nexthops(dp)
    ip = (IPv6(src="2001:db8:9::7", dst=str(k.address)) if v6
          else IP(src="198.51.100.7", dst=str(k.address)))
    l4 = (TCP if k.protocol == "tcp" else UDP)(sport=40000, dport=k.port)
    pkt = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip / l4)
    assert dp.run(pkt)[0] == _bpf.XDP_TX
    dp.tables.vips.delete(k)
    assert dp.run(pkt)[0] == _bpf.XDP_TX
    assert dp.stats()["tx"] == 2


def test_apply_puts_every_vip_in_its_slot(dp):
    state = DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.1", "10.0.1.2"),
                          vip(f"{ADDR}:53/udp", "10.0.1.3"),
                          vip("[2001:db8::10]:443/tcp", "2001:db8:1::1")))
    dp.apply(state)
    slots = {}
    for k, rec in dp.maps.vips.items():
        slots.setdefault(vipindex.slot_of(k), []).append((k, rec))
    assert all(len(v) == 1 for v in slots.values())
    for text in (f"{ADDR}:80/tcp", f"{ADDR}:53/udp", "[2001:db8::10]:443/tcp"):
        flags, k, rec = held(dp, text)
        assert (flags, k, rec) == (L.SLOT_VIP, key_bytes(text), dp.maps.vips.get(k))
    image = live_image(dp)
    assert sum(1 for i in range(L.VIP_INDEX_SLOTS)
               if image[i * vipindex.SLOT_SIZE:(i + 1) * vipindex.SLOT_SIZE]
               != bytes(vipindex.SLOT_SIZE)) == 3


def test_raw_empty_slot_is_no_vip(dp):
    """The kernel trusts an empty slot: with the VIP in xlb_vips but an index without it,
    the packet is not balanced; the index built again from xlb_vips balances it again."""
    dp.apply(DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.1"),)))
    prepare(dp)
    dp.tables.vip_index.install(VipIndex())()
    assert send(dp, 80) == (_bpf.XDP_PASS, None)
    assert dp.stats()["pass_not_vip"] == 1
    assert raw_index(dp) == 1
    assert send(dp, 80) == (_bpf.XDP_TX, "10.0.1.1")


def raw_one_backend(dp):
    """Backend 1 (10.0.1.9), its next hop out of the test run's interface, ring 1 all of it."""
    raw_backend(dp, 1, "10.0.1.9")
    dp.tables.nexthops.put(1, "02:00:00:00:00:aa", "02:00:00:00:00:bb", 1)
    dp.tables.rings.put(1, [1] * 7)
    dp.configure(src4="10.255.0.0/16")


def test_raw_vips_and_no_index_yet_means_xlb_vips(dp):
    """A datapath whose VIPs were written without apply has no index: the hash map serves."""
    assert dp.maps.vip_index.get(0) is None
    raw_one_backend(dp)
    raw_vip(dp, ADDR, 80, "tcp", vip_id=1, ring_id=1, ring_size=7)
    assert dp.maps.vip_index.get(0) is None
    assert send(dp, 80) == (_bpf.XDP_TX, "10.0.1.9")


def test_vips_sharing_a_slot(dp):
    """Two VIPs in one slot: one is held (flags VIP|MORE), the other found in xlb_vips; both
    balance to their own backends. When the held one goes, the other takes the slot."""
    p1, p2 = shared_ports()
    state = DesiredState((vip(f"{ADDR}:{p1}/tcp", "10.0.1.1"),
                          vip(f"{ADDR}:{p2}/tcp", "10.0.1.2")))
    dp.apply(state)
    prepare(dp)
    flags, k, _ = held(dp, f"{ADDR}:{p1}/tcp")
    assert flags == L.SLOT_VIP | L.SLOT_MORE
    assert k == min(key_bytes(f"{ADDR}:{p1}/tcp"), key_bytes(f"{ADDR}:{p2}/tcp"))
    assert send(dp, p1) == (_bpf.XDP_TX, "10.0.1.1")
    assert send(dp, p2) == (_bpf.XDP_TX, "10.0.1.2")
    holder = p1 if k == key_bytes(f"{ADDR}:{p1}/tcp") else p2
    other = p2 if holder == p1 else p1
    dp.apply(DesiredState(tuple(v for v in state.vips if v.key.port == other)))
    assert held(dp, f"{ADDR}:{other}/tcp")[:2] == (L.SLOT_VIP, key_bytes(f"{ADDR}:{other}/tcp"))
    assert send(dp, other, sport=40001)[0] == _bpf.XDP_TX
    assert send(dp, holder) == (_bpf.XDP_PASS, None)


def test_changes_keep_the_image_equal_to_a_fresh_build(dp):
    """Apply after apply, the kept image (updated slot by slot) is what a build from the whole
    of xlb_vips gives, and what the kernel holds."""
    p1, p2, p3 = shared_ports(3)
    states = [
        [f"{ADDR}:80/tcp", f"{ADDR}:{p1}/tcp", "[2001:db8::10]:443/tcp"],
        [f"{ADDR}:80/tcp", f"{ADDR}:{p1}/tcp", f"{ADDR}:{p2}/tcp", f"{ADDR}:{p3}/tcp"],
        [f"{ADDR}:{p2}/tcp", f"{ADDR}:53/udp"],
        [f"{ADDR}:{p2}/tcp", f"{ADDR}:53/udp", f"{ADDR}:{p1}/tcp"],
        [],
    ]
    for i, texts in enumerate(states):
        dp.apply(DesiredState(tuple(
            vip(t, f"10.0.{i}.1", "10.0.9.9") if "[" not in t else vip(t, f"2001:db8:{i}::1")
            for t in texts)))
        fresh = VipIndex(dp.tables.vips.packed())
        assert dp.applier.image is not None
        assert dp.applier.image.image() == fresh.image() == live_image(dp), f"state {i}"
        assert len(fresh) == len(texts)


def test_raw_write_outside_apply_is_not_hidden_by_the_copy(dp):
    """A raw write changes xlb_vips alone: the slot is turned to 'look in xlb_vips' at once
    (VipIndexMap.demote), so the packet sees the new record, not the index's old copy."""
    dp.apply(DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.1"),)))
    prepare(dp)
    rec = dp.tables.vips.get(VipKey.parse(f"{ADDR}:80/tcp"))
    raw_vip(dp, ADDR, 80, "tcp", vip_id=rec.vip_id, ring_id=rec.ring_id,
            ring_size=rec.ring_size, mode=L.MODE_LOCAL)
    assert held(dp, f"{ADDR}:80/tcp")[0] == L.SLOT_MORE
    assert send(dp, 80) == (_bpf.XDP_PASS, None)
    assert dp.stats()["pass_local"] == 1
    raw_unvip(dp, ADDR, 80, "tcp")
    assert send(dp, 80) == (_bpf.XDP_PASS, None)
    assert dp.stats()["pass_not_vip"] == 1
    # the epoch moved: the next apply reads the maps back and builds the index from them
    dp.apply(DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.2"),)))
    prepare(dp)
    assert held(dp, f"{ADDR}:80/tcp")[0] == L.SLOT_VIP
    assert send(dp, 80, sport=40002) == (_bpf.XDP_TX, "10.0.1.2")


def test_a_failed_apply_puts_the_old_index_back(dp, monkeypatch):
    dp.apply(DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.1"),)))
    prepare(dp)
    before = dp.maps.vip_index.inner_id(0)

    def fail(self, outer, rids):
        raise OSError(errno.EIO, "injected after the index swap")
    monkeypatch.setattr(Transaction, "delete_inners", fail)
    with pytest.raises(OSError, match="injected"):
        dp.apply(DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.2"),
                               vip(f"{ADDR}:81/tcp", "10.0.1.3"))))
    monkeypatch.undo()
    assert dp.maps.vip_index.inner_id(0) == before
    assert send(dp, 80) == (_bpf.XDP_TX, "10.0.1.1")
    assert send(dp, 81) == (_bpf.XDP_PASS, None)
    # and the next apply starts from the maps, not from the image of the failed one
    assert dp.applier.image is None
    dp.apply(DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.2"),)))
    assert live_image(dp) == VipIndex(dp.tables.vips.packed()).image()


def test_a_restarted_owner_keeps_the_index_and_rebuilds_it_from_the_maps(bpffs_dir):
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as first:
        first.apply(DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.1"),)))
        live = first.maps.vip_index.inner_id(0)
    with Datapath.open(bpffs_dir) as second:
        assert second.maps.vip_index.inner_id(0) == live
        second.apply(DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.1"),
                                   vip(f"{ADDR}:443/tcp", "10.0.1.1"))))
        assert live_image(second) == VipIndex(second.tables.vips.packed()).image()
        assert held(second, f"{ADDR}:443/tcp")[0] == L.SLOT_VIP
        second.destroy()


def test_raw_index_after_raw_writes(dp):
    """An index built from the whole of xlb_vips holds what raw writes put there (the
    benchmark's setup)."""
    raw_one_backend(dp)
    for port in (80, 81):
        raw_vip(dp, ADDR, port, "tcp", vip_id=port, ring_id=1, ring_size=7)
    assert raw_index(dp) == 2
    assert held(dp, f"{ADDR}:81/tcp")[0] == L.SLOT_VIP
    dp.tables.vips.delete(VipKey.parse(f"{ADDR}:81/tcp"))   # only the index has it now
    assert send(dp, 81) == (_bpf.XDP_TX, "10.0.1.9")


def test_another_writer_between_applies(bpffs_dir):
    """The agent and the CLI may both apply to one pinned datapath. A VIP the other process
    added is in xlb_vips but not in this process's image of the index: the next index this
    process builds must still hold it (it reads the map again once it sees the epoch moved,
    here when it reads its layout again)."""
    one = DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.1"),))
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as agent:
        agent.apply(one)
        with Datapath.open(bpffs_dir) as cli:
            cli.apply(DesiredState(one.vips + (vip(f"{ADDR}:81/tcp", "10.0.1.2"),)))
        # the agent reads the maps again (its layout; apply's plan needs that anyway) but
        # its image of the index is from before the CLI's apply
        agent.layout(refresh=True)
        agent.apply(DesiredState((vip(f"{ADDR}:80/tcp", "10.0.1.3"),
                                  vip(f"{ADDR}:81/tcp", "10.0.1.2"))))
        prepare(agent)
        assert held(agent, f"{ADDR}:81/tcp")[0] == L.SLOT_VIP
        assert send(agent, 81) == (_bpf.XDP_TX, "10.0.1.2")
        assert send(agent, 80) == (_bpf.XDP_TX, "10.0.1.3")
        agent.destroy()
