"""The kernel's flow sets follow the replay of their rule (tests/support/flowsets.py), packet
by packet: six flows of one set (found with the set hash and the datapath's own set seed)
send through BPF_PROG_TEST_RUN what the replay is given, in phases a promotion age apart,
and each packet's hit or miss, and the set's ways in order, are the replay's."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from pyxlb import _layouts as L
from pyxlb.addr import parse_addr
from pyxlb.datapath import Datapath, maps
from pyxlb.state import Backend, DesiredState, Vip, VipKey

from tests.support.flowsets import PROMOTE_AGE, FlowSets

SETS = 256
VIP = {4: "192.0.2.80", 6: "2001:db8:80::1"}
CLIENT = {4: "198.51.100.7", 6: "2001:db8:c::7"}
BACKENDS = {4: ("10.1.0.1", "10.1.0.2"), 6: ("2001:db8:b::1", "2001:db8:b::2")}
# a phase a promotion age or more after the one before (the age: 64 units of 2^20 ns,
# 67.1 ms); the packets of one phase well within it
PAUSE = 0.1
PHASE_MAX = 0.05

# (phase, flow, TCP flags): admitted with a SYN and an ACK in a row (ways 0, 1, 5, 4 after
# that); then a retransmitted SYN of flow 5, in the back half and old enough, which must
# not promote it, and an ACK of every flow a phase, in an order that promotes flows from
# both ways of the back half and pushes front flows back
SCRIPT = ([(0, f, flags) for f in range(6) for flags in ("S", "A")]
          + [(1, 5, "S")] + [(1, f, "A") for f in (4, 0, 1, 2, 3)]
          + [(p, f, "A") for p in (2, 3) for f in range(6)])


def _frame(family: int, sport: int, flags: str) -> bytes:
    ip = IP(src=CLIENT[4], dst=VIP[4]) if family == 4 else IPv6(src=CLIENT[6], dst=VIP[6])
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ip
                 / TCP(sport=sport, dport=80, flags=flags))


def _key(family: int, sport: int) -> bytes:
    src, dst = parse_addr(CLIENT[family])[1], parse_addr(VIP[family])[1]
    pack = L.pack_flow4_key if family == 4 else L.pack_flow6_key
    return pack(src, dst, sport, 80, 6)


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def family_dp(request):
    family = request.param
    dp = Datapath.load(map_sizes={maps.FLOWS4: SETS, maps.FLOWS6: SETS})
    try:
        dp.configure(src4="10.255.0.0/16", src6="2001:db8:ff::/64")
        key = VipKey.parse(f"{VIP[4]}:80/tcp" if family == 4 else f"[{VIP[6]}]:80/tcp")
        dp.apply(DesiredState(vips=(Vip(key, backends=tuple(
            Backend(b) for b in BACKENDS[family])),)))
        yield family, dp
    finally:
        dp.close()


def _set_ways(dp: Datapath, family: int, s: int):
    """The source ports of the flows in set `s`, way by way (None: empty)."""
    ways = [None] * L.FLOW4_WAYS
    flows = dp.tables.flows
    mem = flows.mmap4() if family == 4 else flows.mmap6()
    scan, unpack = (L.flow4_ways, L.unpack_flow4_key) if family == 4 else \
        (L.flow6_ways, L.unpack_flow6_key)
    with mem:
        for way, raw_key, _ in scan(mem):
            if way // L.FLOW4_WAYS == s:
                ways[way % L.FLOW4_WAYS] = unpack(raw_key)["sport"]
    return ways


def test_the_kernel_follows_the_replay_packet_by_packet(family_dp):
    family, dp = family_dp
    cfg = dp.config()
    seed, bits = cfg["flow4_seed"], cfg[f"flow{family}_bits"]
    # six source ports whose flows share one set
    by_set = {}
    for sport in range(20000, 30000):
        by_set.setdefault(L.flow_set(_key(family, sport), seed, bits), []).append(sport)
        full = [s for s, ports in by_set.items() if len(ports) == 6]
        if full:
            target, ports = full[0], by_set[full[0]]
            break
    replay = FlowSets(1)
    got, want = [], []
    for phase in range(4):
        if phase:
            time.sleep(PAUSE)
        start = time.monotonic()
        for _, f, flags in [e for e in SCRIPT if e[0] == phase]:
            hits = dp.stats().get("flow_hit", 0)
            dp.run(_frame(family, ports[f], flags))
            got.append(dp.stats().get("flow_hit", 0) - hits)
            want.append(int(replay.packet(0, f, phase * 2 * PROMOTE_AGE, syn=flags == "S")))
        took = time.monotonic() - start
        assert took < PHASE_MAX, f"phase {phase} took {took:.3f} s: too slow to judge ages"
        ways = [ports[f] for f in replay.flows(0)]
        assert _set_ways(dp, family, target) == ways + [None] * (L.FLOW4_WAYS - len(ways)), \
            phase
    assert got == want
    # what was exercised: promotions, a SYN that did not promote, flows pushed out
    assert want.count(0) > 6
