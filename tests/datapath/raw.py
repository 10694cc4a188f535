"""Map writes that Datapath.apply never makes, for tests that need a state of their own
choosing: ids picked by hand, flags, a deliberately inconsistent state, a ring swapped
under load, a next hop the host's tables would not give. They write through the same
accessors as apply (``dp.tables``, pyxlb/datapath/maps.py); every helper here says raw.

A raw write of xlb_vips moves the epoch, as another process's write would: the
Datapath's next apply reads the maps back instead of trusting what it kept.
"""

from __future__ import annotations

from typing import Optional

from pyxlb import _layouts as L
from pyxlb.datapath.vipindex import VipIndex
from pyxlb.plan import BackendRecord, VipRecord
from pyxlb.state import VipKey

NEXTHOP_MAC = "02:00:00:00:00:aa"
EGRESS_MAC = "02:00:00:00:00:bb"
# BPF_PROG_TEST_RUN without a ctx runs as if received on the loopback device (ifindex 1):
# a next hop out of ifindex 1 is out of the receiving interface, XDP_TX
TEST_RUN_IFINDEX = 1


def vip_key(addr: str, port: int, proto) -> VipKey:
    """A VipKey from an address, a port and "tcp" / "udp" or 6 / 17."""
    return VipKey(addr, port, {6: "tcp", 17: "udp"}.get(proto, proto))


def raw_backend(dp, backend_id: int, addr: str, *, state: int = L.BACKEND_ACTIVE,
                local: bool = False, gen: int = 1, mac: Optional[str] = None) -> None:
    """Backend `backend_id` is `addr`."""
    dp.tables.backends.put(backend_id, BackendRecord(addr, state, local, mac, gen))


def raw_nexthops(dp, *, dmac: str = NEXTHOP_MAC, smac: str = EGRESS_MAC,
                 ifindex: int = TEST_RUN_IFINDEX) -> None:
    """A cached next hop for every backend of the layout, out of `ifindex` (by default
    the one a test run receives on: XDP_TX), where apply would have resolved them through
    the host's route and neighbour tables."""
    for bid in dp.layout().backend_records():
        dp.tables.nexthops.put(bid, dmac, smac, ifindex)


def raw_addr_flags(dp, addr: str, *, set_flags: int = 0, clear_flags: int = 0,
                   ifindex: Optional[int] = None, mac=None) -> None:
    """Change the ADDR_* flags (and the announcing interface and MAC) of addr's
    xlb_vip_addrs entry, which goes once its flags are 0; then the address filter from
    every address of the map."""
    t = dp.tables
    entry = t.vip_addrs.get(addr)
    had = entry is not None
    entry = entry or {"flags": 0, "ifindex": 0, "mac": bytes(6)}
    flags = (entry["flags"] & ~clear_flags) | set_flags
    if flags:
        t.vip_addrs.put(addr, flags, entry["ifindex"] if ifindex is None else ifindex,
                        entry["mac"] if mac is None else mac)
    elif had:
        t.vip_addrs.delete(addr)
    t.vip_addrs.write_filter(t.vip_addrs.addresses())


def raw_vip(dp, addr: str, port: int, proto, *, vip_id: int, ring_id: int,
            ring_size: int, mode: int = L.MODE_IPIP, flags: int = 0) -> None:
    """VIP (addr, port, proto) with the ids and flags given, and ADDR_PORTS (ADDR_ALL_PORTS
    for port 0) on its address. A live VIP index is told to look the key up in xlb_vips."""
    t = dp.tables
    key = vip_key(addr, port, proto)
    t.vips.put(key, VipRecord(vip_id, ring_id, ring_size, mode, flags))
    raw_addr_flags(dp, addr, set_flags=L.ADDR_PORTS if port else L.ADDR_ALL_PORTS)
    t.vip_index.demote(t.vips.key(key))
    t.epoch.bump()


def raw_unvip(dp, addr: str, port: int, proto) -> None:
    """Delete the VIP's record alone (KeyError if there is none): its address keeps its
    xlb_vip_addrs entry. A live VIP index is told to look the key up in xlb_vips."""
    t = dp.tables
    key = vip_key(addr, port, proto)
    t.vips.delete(key)
    t.vip_index.demote(t.vips.key(key))
    t.epoch.bump()


def raw_announce(dp, addr: str, ifindex: int = 0, mac: str = NEXTHOP_MAC) -> None:
    """Answer ARP / neighbour solicitations for addr with `mac`, on `ifindex` only (0:
    any); the address's VIP flags stay."""
    raw_addr_flags(dp, addr, set_flags=L.ADDR_ANNOUNCE, ifindex=ifindex, mac=mac)


def raw_index(dp) -> int:
    """Build the VIP index from the whole of xlb_vips and swap it in, as apply does after
    its VIP writes; returns how many VIPs it holds (the others share a slot and are found
    in xlb_vips)."""
    index = VipIndex(dp.tables.vips.packed())
    dp.tables.vip_index.install(index)()
    return len(index) - index.shared()


def raw_flow(dp, src: bytes, dst: bytes, sport: int, dport: int, proto, backend_id: int,
             gen: int, hash_: int = 0, *, way: Optional[int] = None) -> int:
    """Pin a flow (16-byte addresses, as parse_addr gives them) in its set of
    xlb_flowsets4 or xlb_flowsets6, as the datapath would find it: in way `way`, or the
    set's first empty way. Returns the set."""
    v6 = any(src[4:])
    proto = {"tcp": 6, "udp": 17}.get(proto, proto)
    cfg = dp.config()
    flow = L.pack_flow(backend_id, gen, hash_)
    if v6:
        key = L.pack_flow6_key(src, dst, sport, dport, proto)
        m, raw_way, n = dp.maps.flows6, L.pack_flow6_way(key, flow), L.FLOW6_WAYS
        bits = cfg["flow6_bits"]
    else:
        key = L.pack_flow4_key(src, dst, sport, dport, proto)
        m, raw_way, n = dp.maps.flows4, L.pack_flow4_way(key, flow), L.FLOW4_WAYS
        bits = cfg["flow4_bits"]
    index = L.flow_set(key, cfg["flow4_seed"], bits)
    cur = bytearray(m.lookup(index))
    size = len(raw_way)
    if way is None:
        way = next(i for i in range(n) if not any(cur[(i + 1) * size - 4 - (8 if v6 else 0):
                                                      (i + 1) * size - (8 if v6 else 0)]))
    cur[way * size:(way + 1) * size] = raw_way
    m.update(index, bytes(cur))
    return index
