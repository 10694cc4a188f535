"""The pure model of the balancer's decision (tests/support/model.py), without a kernel.

The flow-hash values below were computed once by the kernel (balancer.o, read back as the
last 32 bits of an IP6IP6 outer source with a /96 source prefix) and pinned here: with
tests/datapath/test_model_vs_kernel.py checking the kernel against the model, a change to
either hash is caught. The kernel reads the key's words in host order, so these are the
values of a little-endian host.
"""

import sys
import time

import pytest

from pyxlb import _layouts as L
from pyxlb._bpf import XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX

from tests.support.model import (Decision, Model, NotModelled, Packet, flow_hash,
                                 outer_source4, outer_source6, ring_slot)

# (src, dst, sport, dport, proto, seed, affinity) -> xlb_flow_hash from the kernel
KNOWN_HASHES = [
    (("198.51.100.7", "192.0.2.1", 40000, 80, 6, 0, False), 0x436D5E1A),
    (("198.51.100.7", "192.0.2.1", 40000, 80, 6, 0xDEADBEEF, False), 0x25A5DFF6),
    (("198.51.100.7", "192.0.2.1", 40000, 80, 17, 1, False), 0xACD764CA),
    (("198.51.100.7", "192.0.2.1", 0, 80, 6, 0, True), 0x902D12CB),
    (("2001:db8::7", "2001:db8:f::1", 40000, 443, 6, 0, False), 0x48C9E27B),
    (("2001:db8::7", "2001:db8:f::1", 40000, 443, 17, 0x12345678, False), 0xB68EF0DF),
    (("2001:db8::7", "2001:db8:f::1", 0, 443, 6, 0x12345678, True), 0x9650DE40),
]

VIP4, VIP6 = "192.0.2.1", "2001:db8:f::1"
CLIENT4, CLIENT6 = "198.51.100.7", "2001:db8::7"


def key(src, dst, sport, dport, proto=6):
    return Packet(src, dst, sport, dport, proto, l3_len=40).key()


@pytest.mark.parametrize("fields,expected", KNOWN_HASHES, ids=lambda v: str(v))
def test_flow_hash_known_answers(fields, expected):
    assert sys.byteorder == "little", "the pinned values are those of a little-endian host"
    src, dst, sport, dport, proto, seed, affinity = fields
    assert flow_hash(key(src, dst, sport, dport, proto), seed, affinity) == expected


def test_flow_hash_is_deterministic_and_seeded():
    k = key(CLIENT4, VIP4, 40000, 80)
    assert flow_hash(k, 7) == flow_hash(key(CLIENT4, VIP4, 40000, 80), 7)
    assert flow_hash(k, 7) != flow_hash(k, 8)
    assert flow_hash(k, 7) != flow_hash(key(CLIENT4, VIP4, 40001, 80), 7)
    # affinity hashes the source and family only
    assert flow_hash(k, 7, True) == flow_hash(key(CLIENT4, "192.0.2.9", 1, 443, 17), 7, True)
    assert flow_hash(k, 7, True) != flow_hash(key("198.51.100.8", VIP4, 40000, 80), 7, True)


def test_outer_source4():
    prefix = bytes([10, 255, 0, 0])
    assert outer_source4(prefix, 16, 0x12345678) == bytes([10, 255, 0x56, 0x78])
    assert outer_source4(bytes([10, 1, 2, 0]), 24, 0x12345678) == bytes([10, 1, 2, 0x78])
    assert outer_source4(bytes([10, 9, 9, 9]), 32, 0x12345678) == bytes([10, 9, 9, 9])
    assert outer_source4(bytes(4), 0, 0x12345678) is None     # no prefix configured


def test_outer_source6():
    prefix = bytes.fromhex("fd0000ff") + bytes(12)
    h = 0x12345678
    assert outer_source6(prefix, 64, h) == prefix[:12] + h.to_bytes(4, "big")
    assert outer_source6(prefix, 96, h) == prefix[:12] + h.to_bytes(4, "big")
    assert outer_source6(prefix, 120, h) == prefix[:15] + b"\x78"
    host = prefix[:15] + b"\x09"
    assert outer_source6(host, 128, h) == host
    assert outer_source6(bytes(16), 0, h) is None


@pytest.fixture
def model():
    """One IPv4 TCP VIP on port 80 over backends 1 and 2, ring of 7 slots; next hops on
    the test-run ingress interface."""
    m = Model()
    m.set_config(seed=5, src4="10.255.0.0/16", src6="fd00:ff::/64")
    m.set_vip(VIP4, 80, "tcp", vip_id=1, ring_id=1, ring_size=7, mode=L.MODE_IPIP)
    for bid, addr in ((1, "10.0.0.1"), (2, "10.0.0.2"), (3, "fd00:be::3")):
        m.set_backend(bid, addr)
        m.set_nexthop(bid, "02:00:00:00:00:02", "02:00:00:00:00:01", 1)
    m.set_ring(1, [1, 2, 1, 2, 1, 2, 1])
    return m


def test_not_a_vip_passes(model):
    assert model.decide(Packet(CLIENT4, "203.0.113.1", 1, 80, 6, 40)).outcome == "pass_not_vip"
    # a VIP address, but no VIP on that port or protocol
    assert model.decide(Packet(CLIENT4, VIP4, 1, 81, 6, 40)).action == XDP_PASS
    assert model.decide(Packet(CLIENT4, VIP4, 1, 80, 17, 40)).action == XDP_PASS
    assert model.flows == {}


def test_new_flow_is_remembered_then_hit(model):
    first = model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40))
    assert (first.action, first.outcome, first.flow, first.new_flow) == (XDP_TX, "tx",
                                                                         "flow_miss", True)
    assert first.backend_id == [1, 2, 1, 2, 1, 2, 1][ring_slot(first.hash, 7)]
    again = model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40))
    assert (again.backend_id, again.flow, again.new_flow) == (first.backend_id, "flow_hit",
                                                              False)


def test_a_miss_without_syn_is_midstream(model):
    """A TCP segment without SYN that misses is flagged midstream; a SYN, a hit and UDP
    are not."""
    ack = Packet(CLIENT4, VIP4, 1000, 80, 6, 40, syn=False)
    first = model.decide(ack)
    assert (first.flow, first.midstream) == ("flow_miss", True)
    again = model.decide(ack)
    assert (again.flow, again.midstream) == ("flow_hit", False)
    assert not model.decide(Packet(CLIENT4, VIP4, 1001, 80, 6, 40)).midstream
    model.set_vip(VIP4, 53, "udp", vip_id=3, ring_id=1, ring_size=7, mode=L.MODE_IPIP)
    udp = model.decide(Packet(CLIENT4, VIP4, 1002, 53, 17, 28, syn=False))
    assert (udp.flow, udp.midstream) == ("flow_miss", False)


def test_port_zero_vip_catches_other_ports(model):
    model.set_vip(VIP4, 0, "tcp", vip_id=2, ring_id=1, ring_size=7, mode=L.MODE_LOCAL)
    assert model.decide(Packet(CLIENT4, VIP4, 1, 8080, 6, 40)).vip_id == 2
    assert model.decide(Packet(CLIENT4, VIP4, 1, 80, 6, 40)).vip_id == 1


def test_draining_keeps_flows_gone_and_reused_ids_rehash(model):
    pkt = Packet(CLIENT4, VIP4, 1000, 80, 6, 40)
    chosen = model.decide(pkt).backend_id
    other = 3 - chosen
    model.set_backend(chosen, f"10.0.0.{chosen}", state=L.BACKEND_DRAINING)
    model.set_ring(1, [other] * 7)
    assert model.decide(pkt).backend_id == chosen                     # draining: kept
    model.set_backend(chosen, "10.0.0.99", gen=2)                     # id re-used
    stale = model.decide(pkt)
    assert (stale.backend_id, stale.flow, stale.new_flow) == (other, "flow_stale", True)
    model.del_backend(other)                                          # gone, ring not rebuilt
    assert model.decide(pkt).outcome == "drop_no_backend"


def test_empty_ring_drops(model):
    model.set_ring(1, [L.RING_EMPTY] * 7)
    d = model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40))
    assert (d.action, d.outcome, d.vip_id, d.backend_id) == (XDP_DROP, "drop_no_backend", 1,
                                                             None)


def test_no_flow_table_counts_no_new_flows(model):
    model.set_vip(VIP4, 80, "tcp", vip_id=1, ring_id=1, ring_size=7, mode=L.MODE_IPIP,
                  flags=L.VIP_NO_FLOW_TABLE)
    for _ in range(2):
        d = model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40))
        assert (d.flow, d.new_flow) == (None, False)
    assert model.flows == {}


def test_a_flow_hit_uses_the_hash_it_stored(model):
    d1 = model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40))
    model.set_config(seed=99)      # a different seed would give another hash
    d2 = model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40))
    assert d2.flow == "flow_hit" and d2.hash == d1.hash and d2.backend_id == d1.backend_id


def test_affinity_ignores_the_source_port(model):
    model.set_vip(VIP4, 80, "tcp", vip_id=1, ring_id=1, ring_size=7, mode=L.MODE_IPIP,
                  flags=L.VIP_AFFINITY_SRC)
    picks = {model.decide(Packet(CLIENT4, VIP4, sport, 80, 6, 40)).backend_id
             for sport in range(1000, 1050)}
    assert len(picks) == 1
    assert [k.sport for k in model.flows] == [0]


def test_families_modes_and_mtu(model):
    model.set_vip(VIP6, 80, "tcp", vip_id=2, ring_id=1, ring_size=7, mode=L.MODE_IPIP)
    assert model.decide(Packet(CLIENT6, VIP6, 1, 80, 6, 60)).outcome == "drop_unsupported"
    model.set_ring(1, [3] * 7)                                        # IPv6 backend
    assert model.decide(Packet(CLIENT4, VIP4, 1, 80, 6, 40)).outcome == "tx"   # 4in6
    assert model.decide(Packet(CLIENT4, VIP4, 2, 80, 6, 1461)).outcome == "icmp_sent"
    assert model.decide(Packet(CLIENT4, VIP4, 3, 80, 6, 1461, df=False)).outcome == \
        "drop_too_big"
    model.set_backend(3, "fd00:be::3", flags=L.BACKEND_LOCAL)
    assert model.decide(Packet(CLIENT4, VIP4, 4, 80, 6, 40)).outcome == "pass_local"


def test_the_own_share_of_a_moved_slot(model):
    """A stateless VIP whose slots are this node's (a local backend) and remember a
    previous owner: a TCP segment without SYN asks xlb_chain_local, which passes it up
    counting chain_no_peer when the chain id names no usable peer; a known one is the
    node's sockets' and the FIB's to decide (NotModelled). A SYN never asks; nor does a
    slot without a previous owner."""
    model.set_vip(VIP4, 80, "tcp", vip_id=1, ring_id=1, ring_size=7, mode=L.MODE_IPIP,
                  flags=L.VIP_STATELESS)
    model.set_backend(1, "10.0.0.1", flags=L.BACKEND_LOCAL)
    model.set_ring(1, [1] * 7)
    until = (time.monotonic_ns() >> L.CHAIN_TIME_SHIFT) + 3600
    model.set_prev_ring(1, [0x2b1d] * 7, [until] * 7)
    ack = model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40, syn=False))
    assert (ack.action, ack.outcome, ack.chain_no_peer) == (XDP_PASS, "pass_local", True)
    syn = model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40))
    assert (syn.outcome, syn.chain_no_peer) == ("pass_local", False)
    model.set_chain_peer(0x2b1d, "fd00:be::9")      # an IPv6 peer: usable for IPv4 too
    with pytest.raises(NotModelled):
        model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40, syn=False))
    model.set_prev_ring(1, [0] * 7, [until] * 7)
    ack = model.decide(Packet(CLIENT4, VIP4, 1000, 80, 6, 40, syn=False))
    assert (ack.outcome, ack.chain_no_peer) == ("pass_local", False)


def test_next_hop_decides_tx_or_redirect(model):
    model.set_ring(1, [1] * 7)
    model.set_nexthop(1, "02:00:00:00:00:02", "02:00:00:00:00:01", 7)
    assert model.decide(Packet(CLIENT4, VIP4, 1, 80, 6, 40)).action == XDP_REDIRECT
    model.del_nexthop(1)
    with pytest.raises(NotModelled):
        model.decide(Packet(CLIENT4, VIP4, 2, 80, 6, 40))


# -- source ranges ------------------------------------------------------------------------


def ranged_model(*prefixes, vip=VIP4, flags=L.VIP_SOURCE_RANGES):
    m = Model()
    m.set_config(seed=1, src4="10.255.0.0/16", src6="fd00:ff::/96")
    m.set_backend(1, "10.0.0.1" if ":" not in vip else "fd00::1")
    m.set_nexthop(1, "02:00:00:00:00:01", "02:00:00:00:00:02", 1)
    m.set_vip(vip, 80, "tcp", vip_id=3, ring_id=1, ring_size=7, mode=L.MODE_IPIP,
              flags=flags)
    m.set_ring(1, [1] * 7)
    for p in prefixes:
        m.add_source_range(3, p)
    return m


@pytest.mark.parametrize("prefixes,client,admitted", [
    (("198.51.100.0/24",), "198.51.100.7", True),
    (("198.51.100.0/25",), "198.51.100.200", False),
    (("198.51.0.0/16", "198.51.100.128/25"), "198.51.100.7", True),
    (("198.51.100.6/32", "198.51.100.8/29"), "198.51.100.7", False),
    (("198.51.100.7/32",), "198.51.100.7", True),
    (("0.0.0.0/0",), "203.0.113.1", True),
    ((), "198.51.100.7", False),                       # flagged, no entries: nobody
    # the trie keys IPv4 as ::ffff:a.b.c.d: a mapped IPv6 prefix covers IPv4 clients
    (("::ffff:0:0/96",), "198.51.100.7", True),
    (("::/0",), "198.51.100.7", True),
    (("2001:db8::/32",), "198.51.100.7", False),
])
def test_source_ranges_v4(prefixes, client, admitted):
    m = ranged_model(*prefixes)
    d = m.decide(Packet(client, VIP4, 40000, 80, 6, l3_len=40))
    if admitted:
        assert (d.action, d.outcome, d.flow) == (XDP_TX, "tx", "flow_miss")
    else:
        assert d == Decision(XDP_DROP, "drop_source_range", vip_id=3)
        assert m.flows == {}


def test_source_ranges_v6_and_the_flag():
    m = ranged_model("2001:db8::/32", "2001:db8:0:1::/64", vip=VIP6)
    assert m.decide(Packet("2001:db8::7", VIP6, 1, 80, 6, 60)).outcome == "tx"
    assert m.decide(Packet("2001:db9::7", VIP6, 1, 80, 6, 60)).outcome == "drop_source_range"
    m.del_source_range(3, "2001:db8::/32")
    assert m.decide(Packet("2001:db8::8", VIP6, 1, 80, 6, 60)).outcome == "drop_source_range"
    assert m.decide(Packet("2001:db8:0:1::8", VIP6, 1, 80, 6, 60)).outcome == "tx"
    # without the flag the prefixes are not consulted
    m.set_vip(VIP6, 80, "tcp", vip_id=3, ring_id=1, ring_size=7, mode=L.MODE_IPIP)
    assert m.decide(Packet("2001:db9::7", VIP6, 1, 80, 6, 60)).outcome == "tx"


def test_a_range_of_another_vip_id_does_not_admit():
    m = ranged_model()
    m.add_source_range(4, "0.0.0.0/0")
    assert m.decide(Packet(CLIENT4, VIP4, 1, 80, 6, 40)).outcome == "drop_source_range"
