"""Named packets for the datapath tests, and the frames the datapath must turn them into.

Four parts:

- **The test world**: addresses, MACs, prefixes and backend ids every packet test shares.
  They are bytes inside test packets, never sent anywhere, and come from documentation or
  private ranges only (RFC 5737 198.51.100.0/24 and 192.0.2.0/24, RFC 3849 2001:db8::/32,
  RFC 1918 10/8, RFC 4193 fd00::/8).
- **Inputs**: what a client, a router, a neighbour or another LB node sends us.
- **Expected outputs**: the frame docs/datapath.md says comes out, built here with scapy
  from the input and the spec alone (lengths and checksums left for scapy to compute), so
  a test compares the datapath's bytes with an independent construction.
- **The flow hash** (docs/datapath.md, "Flow hash"), written again from the spec so the
  tests can predict the ring slot, the outer source address and the IPv6 flow label.
"""

from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
from typing import Dict, Optional, Sequence, Tuple

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_Router_Alert
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    ICMPv6PacketTooBig,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import hexdump

from pyxlb import _layouts as L
from pyxlb.addr import parse_addr

from tests.support.model import FlowKey
from tests.support.model import flow_hash as model_flow_hash
from tests.support.model import ring_slot as model_ring_slot

# -- the test world ------------------------------------------------------------------------

SEED = 0x5EED                        # xlb_config.seed in every balancer test

LB_MAC = "02:00:00:00:00:aa"         # our uplink: where clients' frames are addressed
ROUTER_MAC = "02:00:00:00:00:01"     # the upstream router that hands us client traffic
NEXTHOP_MAC = "02:00:00:00:01:01"    # the next hop towards backends (xlb_nexthops.dmac)
EGRESS_MAC = "02:00:00:00:00:ab"     # our egress interface (xlb_nexthops.smac)
ANNOUNCE_MAC = "02:00:00:00:00:bb"   # the MAC a VIP is announced with (ARP / NDP)

VIP4 = "10.0.0.10"
VIP6 = "fd00::10"
ROUTER4 = "10.0.0.1"                 # on the VIP's segment: asks ARP for the VIP
ROUTER6 = "fd00::1"
CLIENT4 = "198.51.100.1"
CLIENT6 = "2001:db8:1::1"
FAR_ROUTER4 = "192.0.2.1"            # a router on the client's path: sends ICMP errors
FAR_ROUTER6 = "2001:db8:ff::1"

# Backend ids as the control plane gives them: 1.. IPv4, 11.. IPv6.
BACKENDS = {
    1: "10.1.0.1",
    2: "10.1.0.2",
    3: "10.1.0.3",
    4: "10.1.0.4",
    5: "10.1.0.5",
    6: "10.1.0.6",
    7: "10.1.0.7",
    11: "fd00:1::1",
    12: "fd00:1::2",
}

SRC4 = "10.255.0.0/16"               # outer IPv4 source prefix (xlb_config.src4)
SRC6 = "fd00:ff::/64"                # outer IPv6 source prefix (xlb_config.src6)

LOCAL4 = "10.2.0.1"                  # this node's own addresses (xlb_local_addrs)
LOCAL6 = "fd00:2::1"
PEER_LB4 = "10.255.3.4"              # another LB node: an outer source inside SRC4
PEER_LB6 = "fd00:ff::3:4"
STRANGER4 = "192.0.2.66"             # an outer source no one allowed
STRANGER6 = "2001:db8:2::66"

# The FIB fallback's namespace (tests/conftest.py `netns`: veth0 <-> veth1): its own
# addresses, MACs and neighbours, for backends that have no cached next hop.
FIB_LINKS = {                        # name: (MAC, IPv4 address, IPv6 address)
    "veth0": ("02:00:00:00:03:01", "10.3.0.1/24", "fd00:3::1/64"),
    "veth1": ("02:00:00:00:04:01", "10.4.0.1/24", "fd00:4::1/64"),
}
FIB_NEIGH_MAC = "02:00:00:00:03:05"
FIB_NEIGH4 = "10.3.0.5"              # on veth0's subnet, neighbour entry resolved
FIB_NEIGH6 = "fd00:3::5"
FIB_UNRESOLVED4 = "10.3.0.6"         # on veth0's subnet, no neighbour entry
FIB_UNRESOLVED6 = "fd00:3::6"
FIB_UNROUTED4 = "10.9.9.9"           # no route at all (the namespace has no default)
FIB_UNROUTED6 = "fd00:9::9"

CLIENT_PORT = 40000
RING_SIZE = 7                        # prime and small: every slot is under the test's control

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_ARP = 0x0806

Frame = bytes


# -- inputs --------------------------------------------------------------------------------


def ether(*, vlan: Optional[int] = None, src: str = ROUTER_MAC, dst: str = LB_MAC,
          service_tag: bool = False) -> Packet:
    """An Ethernet header, with one VLAN tag (id `vlan`, priority 3) if asked: 802.1Q, or
    802.1ad with `service_tag`."""
    eth = Ether(src=src, dst=dst)
    if vlan is None:
        return eth
    return eth / (Dot1AD if service_tag else Dot1Q)(prio=3, vlan=vlan)


def _ip4(src: str, dst: str, ip: dict, options) -> Packet:
    fields = dict(src=src, dst=dst, ttl=61, id=0x1234)
    fields.update(ip)
    if options:
        fields["options"] = options
    return IP(**fields)


def tcp4(src: str = CLIENT4, dst: str = VIP4, sport: int = CLIENT_PORT, dport: int = 80, *,
         vlan: Optional[int] = None, service_tag: bool = False,
         payload: bytes = b"GET / HTTP/1.0\r\n\r\n", options=None, tcp_flags: str = "S",
         **ip) -> Frame:
    """A client's IPv4 TCP segment with a little payload: by default a SYN, as the first
    packet of a flow is (tcp_flags="PA": one from the middle of a connection). Extra
    keywords are fields of the IP header (tos, flags, frag, len, ihl, version, ...)."""
    return bytes(ether(vlan=vlan, service_tag=service_tag) / _ip4(src, dst, ip, options)
                 / TCP(sport=sport, dport=dport, flags=tcp_flags, seq=1000, ack=2000)
                 / payload)


def udp4(src: str = CLIENT4, dst: str = VIP4, sport: int = CLIENT_PORT, dport: int = 53, *,
         vlan: Optional[int] = None, payload: bytes = b"\x12\x34query", options=None,
         **ip) -> Frame:
    """A client's IPv4 UDP datagram."""
    return bytes(ether(vlan=vlan) / _ip4(src, dst, ip, options)
                 / UDP(sport=sport, dport=dport) / payload)


def ipv4_options() -> list:
    """One 4-byte IPv4 option (router alert): IHL 6."""
    return [IPOption_Router_Alert()]


def _ip6(src: str, dst: str, ext: Sequence[Packet], ip: dict) -> Packet:
    fields = dict(src=src, dst=dst, hlim=61, tc=0, fl=0x12345)
    fields.update(ip)
    layer = IPv6(**fields)
    for header in ext:
        layer = layer / header
    return layer


def tcp6(src: str = CLIENT6, dst: str = VIP6, sport: int = CLIENT_PORT, dport: int = 80, *,
         vlan: Optional[int] = None, payload: bytes = b"GET / HTTP/1.0\r\n\r\n",
         ext: Sequence[Packet] = (), tcp_flags: str = "S", **ip) -> Frame:
    """A client's IPv6 TCP segment, after the extension headers in `ext`; a SYN unless
    tcp_flags says otherwise (as tcp4). Extra keywords are fields of the IPv6 header (tc,
    fl, plen, version, ...)."""
    return bytes(ether(vlan=vlan) / _ip6(src, dst, ext, ip)
                 / TCP(sport=sport, dport=dport, flags=tcp_flags, seq=1000, ack=2000)
                 / payload)


def udp6(src: str = CLIENT6, dst: str = VIP6, sport: int = CLIENT_PORT, dport: int = 53, *,
         vlan: Optional[int] = None, payload: bytes = b"\x12\x34query",
         ext: Sequence[Packet] = (), **ip) -> Frame:
    """A client's IPv6 UDP datagram."""
    return bytes(ether(vlan=vlan) / _ip6(src, dst, ext, ip)
                 / UDP(sport=sport, dport=dport) / payload)


def hop_by_hop() -> Packet:
    return IPv6ExtHdrHopByHop()


def dest_opts() -> Packet:
    return IPv6ExtHdrDestOpt()


def routing() -> Packet:
    """A routing header with no segments left (type 0, empty): 8 bytes."""
    return IPv6ExtHdrRouting()


def fragment6(offset: int = 0, more: bool = False) -> Packet:
    return IPv6ExtHdrFragment(offset=offset, m=int(more), id=0xBEEF)


def other4(proto: int, dst: str = VIP4, payload: bytes = bytes(24)) -> Frame:
    """An IPv4 packet of protocol `proto` that is neither TCP nor UDP."""
    return bytes(ether() / IP(src=CLIENT4, dst=dst, proto=proto, id=0x1234) / payload)


def non_ip(ethertype: int = 0x88CC) -> Frame:
    """A frame of another ethertype (LLDP by default) sent to our MAC."""
    return bytes(Ether(src=ROUTER_MAC, dst=LB_MAC, type=ethertype) / Raw(bytes(46)))


def big(proto_frame, size: int, **kw) -> Frame:
    """An IP packet of exactly `size` bytes (IP header included): `proto_frame` is one of
    the builders above, its payload sized to fit."""
    small = proto_frame(payload=b"", **kw)
    l3 = len(small) - l3_offset(small)
    return proto_frame(payload=bytes((i * 7) & 0xFF for i in range(size - l3)), **kw)


def _reply_bytes(size: int) -> bytes:
    """`size` bytes of a reply's payload (a pattern, so a cut in the wrong place shows)."""
    return bytes((i * 13 + 5) & 0xFF for i in range(max(0, size)))


def reply_quote4(client: str = CLIENT4, vip: str = VIP4, client_port: int = CLIENT_PORT,
                 vip_port: int = 80, length: int = 1500, size: int = 28) -> bytes:
    """What a router quotes of a backend's reply that was too big for the next link (the
    reply went VIP -> client): its IPv4 header and the first 8 bytes (RFC 792), or the
    first `size` bytes (RFC 1812 routers quote as much as fits in 576)."""
    reply = IP(src=vip, dst=client, len=length, flags="DF", id=0x4321, ttl=60) \
        / TCP(sport=vip_port, dport=client_port, flags="A", seq=5000, ack=1018) \
        / _reply_bytes(size - 40)
    return bytes(reply)[:size]


def reply_quote6(client: str = CLIENT6, vip: str = VIP6, client_port: int = CLIENT_PORT,
                 vip_port: int = 80, size: int = 64) -> bytes:
    """What an IPv6 router quotes of a too-big reply from the VIP: as much as fits
    (RFC 4443 2.4: the error no larger than 1,280 bytes); 64 bytes unless `size` says."""
    reply = IPv6(src=vip, dst=client, plen=1460, hlim=60) \
        / TCP(sport=vip_port, dport=client_port, flags="A", seq=5000, ack=1018) \
        / _reply_bytes(size - 60)
    return bytes(reply)[:size]


def frag_needed(quote: bytes, mtu: int = 1400, dst: str = VIP4, **ip) -> Frame:
    """ICMPv4 3/4 from a router on the client's path, about a reply from the VIP. Extra
    keywords are fields of its IP header (flags="DF", ...)."""
    fields = dict(src=FAR_ROUTER4, dst=dst, id=0x777, ttl=250)
    fields.update(ip)
    return bytes(ether() / IP(**fields) / ICMP(type=3, code=4, nexthopmtu=mtu) / Raw(quote))


def packet_too_big(quote: bytes, mtu: int = 1400, dst: str = VIP6) -> Frame:
    """ICMPv6 "packet too big" from a router on the client's path."""
    return bytes(ether() / IPv6(src=FAR_ROUTER6, dst=dst, hlim=250)
                 / ICMPv6PacketTooBig(mtu=mtu) / Raw(quote))


def icmp4_echo(dst: str = VIP4) -> Frame:
    return bytes(ether() / IP(src=CLIENT4, dst=dst, id=0x1234) / ICMP(type=8, id=1, seq=1)
                 / b"ping")


def icmp6_echo(dst: str = VIP6) -> Frame:
    return bytes(ether() / IPv6(src=CLIENT6, dst=dst) / ICMPv6EchoRequest(id=1, seq=1)
                 / b"ping")


def arp_request(target: str = VIP4, *, op: int = 1, vlan: Optional[int] = None) -> Frame:
    """The router asks who has `target` (broadcast)."""
    return bytes(ether(vlan=vlan, dst="ff:ff:ff:ff:ff:ff")
                 / ARP(op=op, hwsrc=ROUTER_MAC, psrc=ROUTER4, hwdst="00:00:00:00:00:00",
                       pdst=target))


def solicited_node(target: str) -> Tuple[str, str]:
    """The solicited-node multicast address of `target` and its Ethernet group address."""
    low = ipaddress.IPv6Address(target).packed[13:]
    group = ipaddress.IPv6Address(b"\xff\x02" + bytes(9) + b"\x01\xff" + low)
    return str(group), "33:33:" + ":".join(f"{b:02x}" for b in group.packed[12:])


def neighbour_solicit(target: str = VIP6, *, src: str = ROUTER6, hlim: int = 255,
                      code: int = 0, vlan: Optional[int] = None, lladdr: bool = True,
                      ext: Sequence[Packet] = (), plen: Optional[int] = None) -> Frame:
    """A neighbour solicitation for `target`, to its solicited-node group, with the asker's
    link-layer address option unless `lladdr` is false or the source is `::` (duplicate
    address detection carries none). `plen`: an IPv6 payload length of its own (the whole
    solicitation stays in the frame)."""
    group, group_mac = solicited_node(target)
    ns = ICMPv6ND_NS(tgt=target, code=code)
    if lladdr and src != "::":
        ns = ns / ICMPv6NDOptSrcLLAddr(lladdr=ROUTER_MAC)
    fields = dict(hlim=hlim, fl=0)
    if plen is not None:
        fields["plen"] = plen
    ip = _ip6(src, group, ext, fields)
    return bytes(ether(vlan=vlan, dst=group_mac) / ip / ns)


def tunnel4(inner: Frame, *, src: str = PEER_LB4, dst: str = LOCAL4, options=None,
            **ip) -> Frame:
    """The IP packet of frame `inner` inside an outer IPv4 header (IPIP, or protocol 41 when
    the inner packet is IPv6), as an LB node sends it to a backend."""
    l3 = ip_packet(inner)
    proto = 4 if l3[0] >> 4 == 4 else 41
    fields = dict(src=src, dst=dst, proto=proto, ttl=64, id=0)
    fields.update(ip)
    if options:
        fields["options"] = options
    return bytes(_l2_of(inner, ETH_P_IP) / IP(**fields) / Raw(l3))


def tunnel6(inner: Frame, *, src: str = PEER_LB6, dst: str = LOCAL6,
            ext: Sequence[Packet] = ()) -> Frame:
    """The IP packet of frame `inner` inside an outer IPv6 header (IP6IP6, or IPv4-in-IPv6)."""
    l3 = ip_packet(inner)
    proto = 4 if l3[0] >> 4 == 4 else 41
    outer = IPv6(src=src, dst=dst, hlim=64)
    for header in ext:
        outer = outer / header
    outer.lastlayer().nh = proto
    return bytes(_l2_of(inner, ETH_P_IPV6) / outer / Raw(l3))


def _raw_frame(l3: bytes, ethertype: int) -> Frame:
    return bytes(Ether(src=ROUTER_MAC, dst=LB_MAC, type=ethertype) / Raw(l3))


def ext_header_cut() -> Frame:
    """An IPv6 packet announcing a hop-by-hop header of which only 4 bytes are there."""
    return _raw_frame(bytes(IPv6(src=CLIENT6, dst=VIP6, nh=0, plen=4)) + b"\x06\0\0\0",
                      ETH_P_IPV6)


def ext_header_too_long() -> Frame:
    """A hop-by-hop header claiming 48 bytes ((5 + 1) * 8) in an 8-byte payload."""
    return _raw_frame(bytes(IPv6(src=CLIENT6, dst=VIP6, nh=0, plen=8)) + b"\x06\x05"
                      + bytes(6), ETH_P_IPV6)


def two_vlan_tags() -> Frame:
    """A client's TCP segment under two 802.1Q tags (QinQ), one more than the datapath reads."""
    return bytes(Ether(src=ROUTER_MAC, dst=LB_MAC) / Dot1Q(vlan=10)
                 / Dot1Q(vlan=20, type=ETH_P_IP) / ip_packet(tcp4()))


def tunnel4_inner_short(inner: Frame) -> Frame:
    """IPIP whose inner packet ends 4 bytes before the outer one does."""
    return bytes(Ether(src=ROUTER_MAC, dst=LB_MAC)
                 / IP(src=PEER_LB4, dst=LOCAL4, proto=4, id=0)
                 / Raw(ip_packet(inner) + bytes(4)))


# -- taking frames apart ---------------------------------------------------------------------


def l3_offset(frame: Frame) -> int:
    """Where the IP header starts: after Ethernet and one 802.1Q/802.1ad tag."""
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    return 18 if ethertype in (ETH_P_8021Q, ETH_P_8021AD) else 14


def _l3_len(frame: Frame) -> int:
    """The IP packet's length from its own header (the frame may carry padding after it)."""
    off = l3_offset(frame)
    if frame[off] >> 4 == 4:
        return struct.unpack_from("!H", frame, off + 2)[0]
    return 40 + struct.unpack_from("!H", frame, off + 4)[0]


def ip_packet(frame: Frame) -> bytes:
    """The IP packet a frame carries, without Ethernet padding."""
    off = l3_offset(frame)
    return frame[off:off + _l3_len(frame)]


def padding(frame: Frame) -> bytes:
    """Whatever follows the IP packet in the frame (Ethernet padding)."""
    return frame[l3_offset(frame) + _l3_len(frame):]


def _l2_of(frame: Frame, ethertype: int, *, dst: Optional[str] = None,
           src: Optional[str] = None) -> Packet:
    """The Ethernet header (and VLAN tag) of `frame`, announcing `ethertype`, MACs
    optionally replaced; the tag's priority and VLAN id stay as they were."""
    eth = Ether(frame[:l3_offset(frame)])
    out = Ether(dst=dst or eth.dst, src=src or eth.src)
    for tag_layer in (Dot1Q, Dot1AD):
        if tag_layer in eth:
            tag = eth[tag_layer]
            out.type = eth.type
            return out / tag_layer(prio=tag.prio, dei=tag.dei, vlan=tag.vlan, type=ethertype)
    out.type = ethertype
    return out


def _family_of_ip(l3: bytes) -> int:
    return l3[0] >> 4


def describe(frame: bytes) -> str:
    """A frame for an assertion message: scapy's dissection and a hex dump."""
    if not frame:
        return "(empty)"
    return Ether(frame).show2(dump=True) + hexdump(frame, dump=True)


# -- the flow hash: tests.support.model's copy of hash.h (checked against the kernel there) -


def five_tuple(frame: Frame) -> Tuple[str, str, int, int, int]:
    """(source, destination, source port, destination port, protocol) of a TCP/UDP frame,
    after any IPv6 extension headers."""
    pkt = Ether(frame)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    proto = 6 if isinstance(l4, TCP) else 17
    return ip.src, ip.dst, l4.sport, l4.dport, proto


def flow_hash(frame: Frame, seed: int = SEED, affinity: bool = False) -> int:
    """The hash the balancer computes for a client's TCP/UDP frame."""
    src, dst, sport, dport, proto = five_tuple(frame)
    family, src16 = parse_addr(src)
    _, dst16 = parse_addr(dst)
    key = FlowKey(src16, dst16, 0 if affinity else sport, dport, proto, family)
    return model_flow_hash(key, seed, affinity)


def ring_slot(frame: Frame, ring_size: int = RING_SIZE, affinity: bool = False) -> int:
    return model_ring_slot(flow_hash(frame, affinity=affinity), ring_size)


# -- expected outputs --------------------------------------------------------------------------


def outer_src4(flow_hash_value: int, prefix: str = SRC4) -> str:
    """The configured prefix with its host bits taken from the flow hash."""
    net = ipaddress.IPv4Network(prefix)
    host = flow_hash_value & int(net.hostmask)
    return str(ipaddress.IPv4Address(int(net.network_address) | host))


def outer_src6(flow_hash_value: int, prefix: str = SRC6) -> str:
    """The configured prefix with at most its last 32 host bits taken from the flow hash
    (host bits above those stay as the prefix has them: zero)."""
    net = ipaddress.IPv6Network(prefix)
    host = flow_hash_value & int(net.hostmask) & 0xFFFFFFFF
    return str(ipaddress.IPv6Address(int(net.network_address) | host))


def encapsulated(frame: Frame, backend: str, flow_hash_value: int, *,
                 dmac: str = NEXTHOP_MAC, smac: str = EGRESS_MAC, src4: str = SRC4,
                 src6: str = SRC6, chain: int = 0) -> Frame:
    """`frame` tunnelled to `backend` (IPIP, IP6IP6 or IPv4-in-IPv6 by the two families):
    MACs from the next hop, the tag kept, an outer header with TTL / hop limit 64, TOS /
    traffic class copied, IPv4 DF copied, IPv6 flow label = low 19 bits of the flow hash,
    outer source from the prefix and the hash; the inner packet and any Ethernet padding
    after it untouched. `chain`: a stateless VIP's previous owner, carried as the IPv4 id
    (with DF only; else id 0) or as the flow label L.CHAIN_LABEL | chain."""
    inner = ip_packet(frame)
    if _family_of_ip(inner) == 4:
        tos = inner[1]
        df = bool(struct.unpack_from("!H", inner, 6)[0] & 0x4000)
    else:
        tos = (struct.unpack_from("!I", inner, 0)[0] >> 20) & 0xFF
        df = True
    if ipaddress.ip_address(backend).version == 4:
        outer = _l2_of(frame, ETH_P_IP, dst=dmac, src=smac) / IP(
            version=4, ihl=5, tos=tos, id=chain if df else 0, flags="DF" if df else 0,
            frag=0, ttl=64,
            proto=4, src=outer_src4(flow_hash_value, src4), dst=backend)
    else:
        outer = _l2_of(frame, ETH_P_IPV6, dst=dmac, src=smac) / IPv6(
            version=6, tc=tos,
            fl=(L.CHAIN_LABEL | chain) if chain else flow_hash_value & (L.CHAIN_LABEL - 1),
            nh=4 if _family_of_ip(inner) == 4 else 41, hlim=64,
            src=outer_src6(flow_hash_value, src6), dst=backend)
    return bytes(outer / Raw(inner)) + padding(frame)


def rewritten_macs(frame: Frame, dmac: str = NEXTHOP_MAC, smac: str = EGRESS_MAC) -> Frame:
    """L2 DSR: the same frame with the next hop's MACs, nothing else changed."""
    return bytes(Ether(dst=dmac, src=smac))[:12] + frame[12:]


def frag_needed_reply(frame: Frame, mtu: int) -> Frame:
    """ICMPv4 3/4 from the VIP back to the client, out the way `frame` came: reversed MACs,
    tag kept, TTL 64, no DF, id 0, tos 0, next-hop MTU `mtu`, quoting the client's IP
    header (options included) and 8 bytes."""
    eth = Ether(frame[:14])
    l3 = ip_packet(frame)
    ihl = (l3[0] & 0xF) * 4
    ip = IP(l3)
    return bytes(_l2_of(frame, ETH_P_IP, dst=eth.src, src=eth.dst)
                 / IP(version=4, ihl=5, tos=0, id=0, flags=0, frag=0, ttl=64, proto=1,
                      src=ip.dst, dst=ip.src)
                 / ICMP(type=3, code=4, unused=0, nexthopmtu=mtu) / Raw(l3[:ihl + 8]))


def too_big_reply(frame: Frame, mtu: int, quote: int = 128) -> Frame:
    """ICMPv6 "packet too big" from the VIP back to the client: reversed MACs, tag kept,
    traffic class and flow label 0, hop limit 64, MTU `mtu`, quoting the first `quote`
    bytes of the client's packet."""
    eth = Ether(frame[:14])
    l3 = ip_packet(frame)
    ip = IPv6(l3)
    return bytes(_l2_of(frame, ETH_P_IPV6, dst=eth.src, src=eth.dst)
                 / IPv6(version=6, tc=0, fl=0, nh=58, hlim=64, src=ip.dst, dst=ip.src)
                 / ICMPv6PacketTooBig(mtu=mtu) / Raw(l3[:quote]))


def arp_reply(request: Frame, mac: str = ANNOUNCE_MAC) -> Frame:
    """The request turned into its reply: `mac` has the target address; to the asker."""
    req = Ether(request)[ARP]
    return bytes(_l2_of(request, ETH_P_ARP, dst=req.hwsrc, src=mac)
                 / ARP(op=2, hwsrc=mac, psrc=req.pdst, hwdst=req.hwsrc, pdst=req.psrc))


def neighbour_advert(solicit: Frame, mac: str = ANNOUNCE_MAC) -> Frame:
    """The advertisement answering `solicit`: from the target to the asker, hop limit 255,
    solicited and override (not router), with a target link-layer address option."""
    eth = Ether(solicit[:14])
    ns = Ether(solicit)
    asker, target = ns[IPv6].src, ns[ICMPv6ND_NS].tgt
    return bytes(_l2_of(solicit, ETH_P_IPV6, dst=eth.src, src=mac)
                 / IPv6(version=6, tc=0, fl=0, hlim=255, src=target, dst=asker)
                 / ICMPv6ND_NA(R=0, S=1, O=1, tgt=target) / ICMPv6NDOptDstLLAddr(lladdr=mac))


def decapsulated(frame: Frame) -> Frame:
    """A tunnelled frame with its outer header stripped: the Ethernet header (and tag) kept,
    announcing the inner packet's protocol; the inner packet untouched."""
    outer = ip_packet(frame)
    if _family_of_ip(outer) == 4:
        inner = outer[(outer[0] & 0xF) * 4:]
    else:
        inner = outer[40:]
    ethertype = ETH_P_IP if _family_of_ip(inner) == 4 else ETH_P_IPV6
    return bytes(_l2_of(frame, ethertype) / Raw(inner))


def with_trailer(frame: Frame, trailer: bytes) -> Frame:
    """`frame` with bytes after its IP packet: Ethernet padding, or anything a sender left
    there. Only the IP lengths say where the packet ends."""
    return frame + trailer


def shortened_error(frame: Frame, quote: int = 128) -> Frame:
    """An ICMPv4 "fragmentation needed" or ICMPv6 "packet too big" with its quote cut to
    its first `quote` bytes: the IP length and both checksums computed afresh, every other
    header field as it came."""
    l3 = ip_packet(frame)
    if _family_of_ip(l3) == 4:
        hlen = (l3[0] & 0xF) * 4
        ip = IP(l3[:hlen])
        ip.len = None
        ip.chksum = None
        icmp = ICMP(l3[hlen:hlen + 8])
        icmp.chksum = None
        body = l3[hlen + 8:hlen + 8 + quote]
        return bytes(_l2_of(frame, ETH_P_IP) / ip / icmp / Raw(body))
    ip6 = IPv6(l3[:40])
    ip6.plen = None
    ptb = ICMPv6PacketTooBig(l3[40:48])
    ptb.cksum = None
    body = l3[48:48 + quote]
    return bytes(_l2_of(frame, ETH_P_IPV6) / ip6 / ptb / Raw(body))


def with_padding(frame: Frame, total: int = 60) -> Frame:
    """`frame` padded with zeros to `total` bytes, as a NIC pads a short frame."""
    return frame + bytes(max(0, total - len(frame)))


def xdp_md(size: int, ingress_ifindex: int = 0, linear: Optional[int] = None) -> bytes:
    """struct xdp_md for BPF_PROG_TEST_RUN: data, data_end, data_meta, ingress_ifindex,
    rx_queue_index, egress_ifindex. `linear` < size puts only that many bytes in the
    linear area the program can read (the rest goes in a fragment)."""
    return struct.pack("=6I", 0, size if linear is None else linear, 0, ingress_ifindex, 0, 0)


def in_prefix(addr: str, prefix: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(prefix)


def _ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=True).stdout


def fib_namespace(name: str, forwarding: bool = True) -> Dict[str, int]:
    """Addresses, MACs and neighbours of FIB_LINKS in namespace `name` (one resolved
    neighbour per family), and forwarding on or off there whatever the host has (a new
    namespace copies the host's IPv4 forwarding); returns {interface name: ifindex}."""
    for dev, (mac, addr4, addr6) in FIB_LINKS.items():
        _ip("-n", name, "link", "set", dev, "address", mac)
        _ip("-n", name, "addr", "add", addr4, "dev", dev)
        _ip("-n", name, "addr", "add", addr6, "dev", dev, "nodad")
    for addr in (FIB_NEIGH4, FIB_NEIGH6):
        _ip("-n", name, "neigh", "add", addr, "lladdr", FIB_NEIGH_MAC, "dev", "veth0",
            "nud", "permanent")
    on = int(forwarding)
    # "all" carries the value to every interface that exists (veth0 and veth1 do)
    subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                    f"net.ipv4.conf.all.forwarding={on}", f"net.ipv6.conf.all.forwarding={on}"],
                   check=True)
    return {link["ifname"]: link["ifindex"]
            for link in json.loads(_ip("-n", name, "-j", "link", "show"))}
