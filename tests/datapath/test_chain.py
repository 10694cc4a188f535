"""Stateless mode, packet by packet (docs/datapath.md, "Stateless mode").

The balancer side: a stateless VIP's packet carries its ring slot's previous owner (a
chain id) in the outer IPv4 id (with DF only) or in the IPv6 flow label (L.CHAIN_LABEL |
chain), while the slot's change is recent, and records no flow.

The backend side, for the decapsulator (decap.o) and the balancer's inline decapsulation
alike: a tunnelled TCP segment without SYN that carries a chain id, for a connection that
has no socket on this node, is re-tunnelled to the peer its chain id names, without the
chain id; everything else is decapsulated here. These rows run in a network namespace of
their own (the `netns` fixture): the re-tunnelled packet goes out through the FIB
(tests/datapath/packets.py fib_namespace), and the socket lookup sees that namespace's
sockets, made by the row.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import pytest

from pyxlb import _layouts as L
from pyxlb.datapath import Datapath, DecapPath
from pyxlb.netns import enter as enter_netns

from . import packets as P
from .raw import raw_backend
from .test_packets import (ACTION_NAMES, MAP_SIZES, PASS, TX, _changed, _mismatch, vip,
                           world)

CHAIN = 0x2b1d                   # the previous owner's chain id in every row
FOREIGN_CHAIN = 0x0777           # a chain id no peer has
VETH0_MAC = P.FIB_LINKS["veth0"][0]


def _now() -> int:
    return time.monotonic_ns() >> L.CHAIN_TIME_SHIFT


# -- the balancer: carrying the previous owner ----------------------------------------------

def prev(chain: int = CHAIN, *, ahead: int = 100, ring_id: int = 1):
    """Every slot of ring `ring_id` had `chain` before, for `ahead` more time units (about
    a second each; 0 or less: already forgotten)."""
    def step(dp):
        until = max(_now() + ahead, 0)
        dp.tables.prev_rings.put_all({ring_id: ([chain] * P.RING_SIZE,
                                                [until] * P.RING_SIZE)})()
    return step


STATELESS = L.VIP_STATELESS
ACK4_DF = P.tcp4(tcp_flags="A", flags="DF")
ACK4 = P.tcp4(tcp_flags="A")
ACK6 = P.tcp6(tcp_flags="A")
SYN4_DF = P.tcp4(flags="DF")


@dataclass(frozen=True)
class Mark:
    name: str
    packet: bytes
    state: Tuple[Callable, ...]
    expect: bytes
    stats: Dict[str, int]


MARKS = [
    Mark("stateless_v4_carries_chain_in_id", ACK4_DF,
         (vip(P.VIP4, flags=STATELESS), prev()),
         P.encapsulated(ACK4_DF, P.BACKENDS[1], P.flow_hash(ACK4_DF), chain=CHAIN),
         {"tx": 1, "chain_sent": 1}),
    Mark("stateless_v4_syn_carries_chain_too", SYN4_DF,
         (vip(P.VIP4, flags=STATELESS), prev()),
         P.encapsulated(SYN4_DF, P.BACKENDS[1], P.flow_hash(SYN4_DF), chain=CHAIN),
         {"tx": 1, "chain_sent": 1}),
    # without DF the id is the datagram's own, for reassembly: no chain id in it
    Mark("stateless_v4_without_df_no_chain", ACK4,
         (vip(P.VIP4, flags=STATELESS), prev()),
         P.encapsulated(ACK4, P.BACKENDS[1], P.flow_hash(ACK4)), {"tx": 1}),
    Mark("stateless_v6_carries_chain_in_label", ACK6,
         (vip(P.VIP6, flags=STATELESS, backends=(11,)), prev()),
         P.encapsulated(ACK6, P.BACKENDS[11], P.flow_hash(ACK6), chain=CHAIN),
         {"tx": 1, "chain_sent": 1}),
    Mark("stateless_4in6_carries_chain_in_label", ACK4_DF,
         (vip(P.VIP4, flags=STATELESS, backends=(11,)), prev()),
         P.encapsulated(ACK4_DF, P.BACKENDS[11], P.flow_hash(ACK4_DF), chain=CHAIN),
         {"tx": 1, "chain_sent": 1}),
    Mark("stateless_forgotten_no_chain", ACK4_DF,
         (vip(P.VIP4, flags=STATELESS), prev(ahead=0)),
         P.encapsulated(ACK4_DF, P.BACKENDS[1], P.flow_hash(ACK4_DF)), {"tx": 1}),
    Mark("stateless_v6_forgotten_label_without_mark", ACK6,
         (vip(P.VIP6, flags=STATELESS, backends=(11,)), prev(ahead=-5)),
         P.encapsulated(ACK6, P.BACKENDS[11], P.flow_hash(ACK6)), {"tx": 1}),
    Mark("stateless_no_previous_owners", ACK4_DF, (vip(P.VIP4, flags=STATELESS),),
         P.encapsulated(ACK4_DF, P.BACKENDS[1], P.flow_hash(ACK4_DF)), {"tx": 1}),
    Mark("stateless_slot_without_previous_owner", ACK4_DF,
         (vip(P.VIP4, flags=STATELESS), prev(0)),
         P.encapsulated(ACK4_DF, P.BACKENDS[1], P.flow_hash(ACK4_DF)), {"tx": 1}),
    # a flow-table VIP never reads previous owners (a ring shared with a stateless VIP)
    Mark("flow_table_vip_ignores_previous_owners", ACK4_DF, (vip(P.VIP4), prev()),
         P.encapsulated(ACK4_DF, P.BACKENDS[1], P.flow_hash(ACK4_DF)),
         {"flow_miss": 1, "flow_miss_midstream": 1, "tx": 1}),
]


@pytest.mark.parametrize("case", MARKS, ids=[c.name for c in MARKS])
def test_balancer_marks(case: Mark):
    with Datapath.load(map_sizes=MAP_SIZES) as dp:
        for step in (world,) + case.state:
            step(dp)
        before = dp.stats()
        action, out = dp.run(case.packet)
        changed = _changed(before, dp.stats())
        flows = dp.flows()
    assert action == TX, f"{ACTION_NAMES.get(action, action)}; counters {changed}"
    assert out == case.expect, _mismatch(out, case.expect)
    assert changed == case.stats, "counters"
    if "flow_miss" not in case.stats:
        assert flows == [], "a stateless VIP recorded a flow"


def test_stateless_vip_counts_syns_as_new_flows_and_records_none():
    """No flow table: a SYN is a new flow in the VIP's counters, an ACK is not, and
    nothing is recorded."""
    with Datapath.load(map_sizes=MAP_SIZES) as dp:
        world(dp)
        vip(P.VIP4, flags=STATELESS)(dp)
        for frame in (SYN4_DF, ACK4_DF, ACK4_DF):
            assert dp.run(frame)[0] == TX
        (counters,) = dp.counters()
        assert (counters["packets"], counters["new_flows"]) == (3, 1)
        assert dp.flows() == []
        assert dp.stats()["flow_miss"] == 0


# -- the backend: chaining --------------------------------------------------------------------

def rechained(frame: bytes, peer: str) -> bytes:
    """`frame` (tunnelled, no VLAN tag) re-tunnelled to `peer` out of veth0: the FIB's MACs,
    the outer destination `peer`, TTL / hop limit 64, no chain id (IPv4 id 0, the flow
    label's mark cleared); the rest as it came."""
    out = bytearray(frame)
    out[0:12] = bytes.fromhex(P.FIB_NEIGH_MAC.replace(":", "")) + \
        bytes.fromhex(VETH0_MAC.replace(":", ""))
    if struct.unpack_from("!H", out, 12)[0] == P.ETH_P_IP:
        out[18:20] = bytes(2)
        out[22] = 64
        out[30:34] = socket.inet_pton(socket.AF_INET, peer)
        out[24:26] = bytes(2)
        total = sum(struct.unpack_from("!10H", out, 14))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        struct.pack_into("!H", out, 24, ~total & 0xFFFF)
    else:
        out[15] &= ~((L.CHAIN_LABEL >> 16) & 0xF) & 0xFF
        out[21] = 64
        out[38:54] = socket.inet_pton(socket.AF_INET6, peer)
    return bytes(out)


def carried(inner: bytes, chain: int = CHAIN, *, to: str = P.BACKENDS[1]) -> bytes:
    """`inner` as a balancer tunnels it to backend `to` from a stateless VIP's moved slot."""
    return P.encapsulated(inner, to, P.flow_hash(inner), chain=chain)


def peers(*pairs: Tuple[int, str]):
    return lambda dp: dp.tables.chain_peers.put_all(dict(pairs))


def connection(family: int, *, established: bool = True):
    """Sockets for the inner tuple client:CLIENT_PORT -> VIP:80 in the row's namespace: a
    listener on VIP:80, and (`established`) a connection from the client's address and
    port. Returns a function that makes them and returns them (to close afterwards)."""
    def make():
        af = socket.AF_INET if family == 4 else socket.AF_INET6
        vip_addr, client = (P.VIP4, P.CLIENT4) if family == 4 else (P.VIP6, P.CLIENT6)
        made = []
        listener = socket.socket(af, socket.SOCK_STREAM)
        made.append(listener)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((vip_addr, 80))
        listener.listen(4)
        if established:
            c = socket.socket(af, socket.SOCK_STREAM)
            made.append(c)
            c.bind((client, P.CLIENT_PORT))
            c.settimeout(5)
            c.connect((vip_addr, 80))
            made.append(listener.accept()[0])
        return made
    return make


@dataclass(frozen=True)
class Chain:
    name: str
    packet: bytes
    action: int
    expect: Optional[bytes]          # None: decapsulated here (the inner packet passed up)
    stats: Dict[str, int]
    state: Tuple[Callable, ...] = (peers((CHAIN, P.FIB_NEIGH4), (CHAIN + 1, P.FIB_NEIGH6)),)
    sockets: Optional[Callable] = None
    prog: str = "decap"


def decapsulated(frame: bytes) -> bytes:
    """What a decapsulator passes up: the inner packet, its protocol in the Ethernet
    header (the frames here have no VLAN tag)."""
    inner = frame[14 + (20 if frame[14] >> 4 == 4 else 40):]
    ethertype = P.ETH_P_IP if inner[0] >> 4 == 4 else P.ETH_P_IPV6
    return frame[:12] + struct.pack("!H", ethertype) + inner


V6_PEERS = (peers((CHAIN, P.FIB_NEIGH6)),)
DECAPPED = {"decap": 1}
CHAINED = {"chain_forwarded": 1, "tx": 1}
ACK4_V6 = carried(ACK4_DF, to=P.BACKENDS[11])

CHAINS = [
    Chain("chain_v4_no_socket_forwarded", carried(ACK4_DF), TX,
          rechained(carried(ACK4_DF), P.FIB_NEIGH4), CHAINED),
    Chain("chain_v6_no_socket_forwarded", carried(ACK6, to=P.BACKENDS[11]), TX,
          rechained(carried(ACK6, to=P.BACKENDS[11]), P.FIB_NEIGH6), CHAINED,
          state=V6_PEERS),
    Chain("chain_4in6_no_socket_forwarded", ACK4_V6, TX, rechained(ACK4_V6, P.FIB_NEIGH6),
          CHAINED, state=V6_PEERS),
    # a listener alone would answer the segment with a reset: it is not the connection
    Chain("chain_v4_listener_only_forwarded", carried(ACK4_DF), TX,
          rechained(carried(ACK4_DF), P.FIB_NEIGH4), CHAINED,
          sockets=connection(4, established=False)),
    Chain("chain_v4_connection_here_decapsulated", carried(ACK4_DF), PASS, None, DECAPPED,
          sockets=connection(4)),
    Chain("chain_v6_connection_here_decapsulated", carried(ACK6, to=P.BACKENDS[11]), PASS,
          None, DECAPPED, state=V6_PEERS, sockets=connection(6)),
    Chain("chain_syn_decapsulated", carried(SYN4_DF), PASS, None, DECAPPED),
    Chain("chain_udp_decapsulated", carried(P.udp4(flags="DF")), PASS, None, DECAPPED),
    Chain("chain_unknown_id_decapsulated", carried(ACK4_DF, FOREIGN_CHAIN), PASS, None,
          {"chain_no_peer": 1, "decap": 1}),
    # the peer of another outer family: an outer header of another size, not rewritten
    Chain("chain_peer_of_other_family_decapsulated", carried(ACK4_DF), PASS, None,
          {"chain_no_peer": 1, "decap": 1}, state=V6_PEERS),
    Chain("no_chain_decapsulated", carried(ACK4_DF, 0), PASS, None, DECAPPED),
    Chain("chain_v4_without_df_not_a_chain", carried(ACK4), PASS, None, DECAPPED),
    # no neighbour for the peer yet: handed to the kernel re-tunnelled, its Ethernet header
    # as it came; the kernel forwards it and resolves the neighbour
    Chain("chain_peer_unresolved_passed_to_kernel", carried(ACK4_DF), PASS,
          carried(ACK4_DF)[:12] + rechained(carried(ACK4_DF), P.FIB_UNRESOLVED4)[12:],
          {"chain_forwarded": 1, "pass_no_neigh": 1},
          state=(peers((CHAIN, P.FIB_UNRESOLVED4)),)),
    # the balancer's own decapsulation (this node is a backend) chains the same way
    Chain("inline_chain_v4_forwarded", carried(ACK4_DF, to=P.LOCAL4), TX,
          rechained(carried(ACK4_DF, to=P.LOCAL4), P.FIB_NEIGH4), CHAINED, prog="balancer"),
    Chain("inline_chain_v4_connection_here_decapsulated", carried(ACK4_DF, to=P.LOCAL4), PASS,
          None, DECAPPED, sockets=connection(4), prog="balancer"),
]


# -- the balancer's own share: this node is the slot's new owner -------------------------------

def local_owner(addr: str = P.VIP4, backend_id: int = 1, *, flags: int = STATELESS,
                chain: int = CHAIN):
    """A VIP of this node's (its only backend is local) whose slots had `chain` before."""
    def step(dp):
        vip(addr, flags=flags, backends=(backend_id,))(dp)
        raw_backend(dp, backend_id, P.BACKENDS[backend_id], local=True)
        prev(chain)(dp)
    return step


def sent_to(frame: bytes, peer: str) -> bytes:
    """`frame`, as it came to the balancer, tunnelled to `peer` out of veth0 (the FIB's
    MACs), without a chain id: a moved connection's packet on its way to the previous
    owner."""
    return P.encapsulated(frame, peer, P.flow_hash(frame), dmac=P.FIB_NEIGH_MAC,
                          smac=VETH0_MAC)


def Local(*args, **kw) -> Chain:     # noqa: N802 (a row, as Chain)
    return Chain(*args, prog="local", **kw)


LOCAL_PEERS = peers((CHAIN, P.FIB_NEIGH4), (CHAIN + 1, P.FIB_NEIGH6))
HERE = {"pass_local": 1}

LOCAL_CHAINS = [
    Local("local_v4_no_connection_chained", ACK4_DF, TX, sent_to(ACK4_DF, P.FIB_NEIGH4),
          CHAINED, state=(local_owner(), LOCAL_PEERS)),
    Local("local_v6_no_connection_chained", ACK6, TX, sent_to(ACK6, P.FIB_NEIGH6), CHAINED,
          state=(local_owner(P.VIP6, 11), peers((CHAIN, P.FIB_NEIGH6)))),
    Local("local_4in6_no_connection_chained", ACK4_DF, TX, sent_to(ACK4_DF, P.FIB_NEIGH6),
          CHAINED, state=(local_owner(), peers((CHAIN, P.FIB_NEIGH6)))),
    # without DF: no chain id is carried, but the previous owner is this node's to use
    Local("local_v4_without_df_chained", ACK4, TX, sent_to(ACK4, P.FIB_NEIGH4), CHAINED,
          state=(local_owner(), LOCAL_PEERS)),
    Local("local_v4_listener_only_chained", ACK4_DF, TX, sent_to(ACK4_DF, P.FIB_NEIGH4),
          CHAINED, state=(local_owner(), LOCAL_PEERS), sockets=connection(4, established=False)),
    Local("local_v4_connection_here_passed", ACK4_DF, PASS, ACK4_DF, HERE,
          state=(local_owner(), LOCAL_PEERS), sockets=connection(4)),
    Local("local_v6_connection_here_passed", ACK6, PASS, ACK6, HERE,
          state=(local_owner(P.VIP6, 11), peers((CHAIN, P.FIB_NEIGH6))),
          sockets=connection(6)),
    Local("local_syn_passed", SYN4_DF, PASS, SYN4_DF, HERE,
          state=(local_owner(), LOCAL_PEERS)),
    Local("local_no_previous_owner_passed", ACK4_DF, PASS, ACK4_DF, HERE,
          state=(local_owner(chain=0), LOCAL_PEERS)),
    Local("local_unknown_chain_id_passed", ACK4_DF, PASS, ACK4_DF,
          {"chain_no_peer": 1, "pass_local": 1},
          state=(local_owner(chain=FOREIGN_CHAIN), LOCAL_PEERS)),
    # an IPv6 client's packet has no IPv4 tunnel to its previous owner
    Local("local_v6_to_v4_peer_passed", ACK6, PASS, ACK6, {"chain_no_peer": 1, "pass_local": 1},
          state=(local_owner(P.VIP6, 11), peers((CHAIN, P.FIB_NEIGH4)))),
    # no neighbour for the peer yet: the kernel forwards the tunnelled packet
    Local("local_peer_unresolved_passed_to_kernel", ACK4_DF, PASS,
          ACK4_DF[:12] + sent_to(ACK4_DF, P.FIB_UNRESOLVED4)[12:],
          {"chain_forwarded": 1, "pass_no_neigh": 1},
          state=(local_owner(), peers((CHAIN, P.FIB_UNRESOLVED4)))),
    # a flow-table VIP never reads its slots' previous owners
    Local("local_flow_table_vip_passed", ACK4_DF, PASS, ACK4_DF,
          {"flow_miss": 1, "flow_miss_midstream": 1, "pass_local": 1},
          state=(local_owner(flags=0), LOCAL_PEERS)),
]


def _lo_addresses(name: str) -> None:
    """The VIPs and the clients' addresses on the namespace's loopback, for its sockets."""
    def ip(*args):
        subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True)
    ip("link", "set", "lo", "up")
    for addr in (P.VIP4 + "/32", P.CLIENT4 + "/32"):
        ip("addr", "add", addr, "dev", "lo")
    for addr in (P.VIP6 + "/128", P.CLIENT6 + "/128"):
        ip("addr", "add", addr, "dev", "lo", "nodad")


def _object(prog: str):
    if prog == "local":
        dp = Datapath.load(map_sizes=MAP_SIZES)
        world(dp)
        return dp
    if prog == "decap":
        dp = DecapPath.load()
        dp.add_vip(P.VIP4)
        dp.add_vip(P.VIP6)
        return dp
    dp = Datapath.load(map_sizes=MAP_SIZES)
    world(dp)
    dp.add_local_addr(P.LOCAL4)
    vip(P.VIP4)(dp)
    raw_backend(dp, 11, P.BACKENDS[11])
    return dp


@pytest.mark.parametrize("case", CHAINS + LOCAL_CHAINS,
                         ids=[c.name for c in CHAINS + LOCAL_CHAINS])
def test_backend_chains(netns, case: Chain):
    ifindex = P.fib_namespace(netns)
    _lo_addresses(netns)
    made = []
    try:
        with _object(case.prog) as dp:
            for step in case.state:
                step(dp)
            with enter_netns(netns):
                if case.sockets:
                    made = case.sockets()
                before = dp.stats()
                action, out = dp.run(case.packet,
                                     ctx=P.xdp_md(len(case.packet), ifindex["veth0"]))
            changed = _changed(before, dp.stats())
    finally:
        for s in made:
            s.close()
    assert_outcome(case, action, out, changed)


def assert_outcome(case, action: int, out: bytes, changed: Dict[str, int]) -> None:
    """A row (`action`, `expect`: None for decapsulated here, `stats`) against what the
    program did with its packet."""
    assert action == case.action, (
        f"{ACTION_NAMES.get(action, action)}, expected {ACTION_NAMES[case.action]}; "
        f"counters {changed}\n--- output ---\n{P.describe(out)}")
    want = decapsulated(case.packet) if case.expect is None else case.expect
    assert out == want, _mismatch(out, want)
    assert changed == case.stats, "counters"
