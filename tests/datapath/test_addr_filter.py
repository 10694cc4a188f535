"""The address filter: most packets are known not to be for a VIP without a hash lookup,
and the filter never changes a decision, only its cost."""

import ipaddress

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.addr import filter_slot, parse_addr
from pyxlb.datapath import Datapath, addr_filter
from pyxlb.state import Backend, DesiredState, Vip, VipKey

from .raw import raw_nexthops

VIP4, VIP6 = "192.0.2.10", "2001:db8::10"


def frame(dst):
    ip = IPv6(src="2001:db8:9::7", dst=dst) if ":" in dst else IP(src="198.51.100.7", dst=dst)
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip /
                 TCP(sport=1000, dport=80))


def slot(addr):
    return filter_slot(parse_addr(addr)[1], L.ADDR_FILTER_BITS)


def colliding(addr, within="10.0.0.0/8"):
    """An address of `within` (not `addr`) whose filter slot is the same as addr's."""
    want = slot(addr)
    for candidate in ipaddress.ip_network(within).hosts():
        if str(candidate) != addr and slot(str(candidate)) == want:
            return str(candidate)
    raise AssertionError("no colliding address found")


@pytest.fixture
def dp():
    d = Datapath.load(map_sizes={"xlb_flowsets6": 1024, "xlb_flowsets4": 1024})
    d.configure(src4="10.255.0.0/16", src6="fd00:ff::/96")
    d.apply(DesiredState((Vip(VipKey.parse(f"{VIP4}:80/tcp"), (Backend("10.0.1.1"),)),
                          Vip(VipKey.parse(f"[{VIP6}]:80/tcp"), (Backend("2001:db8:1::1"),)))))
    raw_nexthops(d)
    yield d
    d.close()


def test_the_filter_holds_exactly_the_vip_addresses(dp):
    bits = dp.maps.addr_filter.lookup(0)
    assert bits == addr_filter([parse_addr(VIP4)[1], parse_addr(VIP6)[1]])
    assert sum(bin(b).count("1") for b in bits) == 2


def test_raw_cleared_bits_mean_not_a_vip(dp):
    """Proof that the datapath consults the filter: with the bits cleared, VIP packets
    pass as not-VIP traffic (a state apply never leaves)."""
    assert dp.run(frame(VIP4))[0] == _bpf.XDP_TX
    dp.tables.vip_addrs.write_filter([])
    assert dp.maps.addr_filter.lookup(0) == bytes(L.ADDR_FILTER_BITS // 8)
    before = dp.stats()["pass_not_vip"]
    assert dp.run(frame(VIP4))[0] == _bpf.XDP_PASS
    assert dp.run(frame(VIP6))[0] == _bpf.XDP_PASS
    assert dp.stats()["pass_not_vip"] == before + 2


def test_an_address_sharing_a_vips_slot_is_still_not_a_vip(dp):
    other = colliding(VIP4)
    before = dp.stats()["pass_not_vip"]
    action, out = dp.run(frame(other))
    assert action == _bpf.XDP_PASS and out == frame(other)
    assert dp.stats()["pass_not_vip"] == before + 1


def test_apply_keeps_the_filter_current(dp):
    dp.apply(DesiredState((Vip(VipKey.parse("192.0.2.99:53/udp"), (Backend("10.0.1.1"),)),)))
    assert dp.maps.addr_filter.lookup(0) == addr_filter([parse_addr("192.0.2.99")[1]])
    assert dp.run(frame(VIP4))[0] == _bpf.XDP_PASS
    dp.apply(DesiredState())
    assert dp.maps.addr_filter.lookup(0) == bytes(L.ADDR_FILTER_BITS // 8)


def test_raw_filter_rebuilt_from_the_address_map(dp):
    """What raw writers do after changing xlb_vip_addrs: the filter made again from every
    address the map holds is the one apply wrote."""
    vip_addrs = dp.tables.vip_addrs
    bits = vip_addrs.filter_bits()
    vip_addrs.write_filter([])
    assert sorted(vip_addrs.addresses()) == sorted([parse_addr(VIP4)[1], parse_addr(VIP6)[1]])
    vip_addrs.write_filter(vip_addrs.addresses())
    assert vip_addrs.filter_bits() == bits == addr_filter([parse_addr(VIP4)[1],
                                                           parse_addr(VIP6)[1]])
