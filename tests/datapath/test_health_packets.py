"""The health-check tunnel's tc programs (xdp/health.bpf.c) through BPF_PROG_TEST_RUN.

Each row: a name, which program (egress: the check's packets out; ingress: the backend's
answers in), the registrations in xlb_hc_paths, the input frame, the tc verdict expected
and the output frame expected. Expected frames are built with scapy from the input and the
spec alone (docs/datapath.md, "Health checks through the tunnel"), checksums computed by
scapy, and compared byte for byte; UNTOUCHED means the output must be the input.

Every row runs on a freshly loaded health.o (Tunnel.open(), nothing attached), so no row
sees another's registrations or learned ports.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.datapath.maps import HcPaths
from pyxlb.health.tunnel import Tunnel

from . import packets as P

NEXT = 0xFFFFFFFF           # TC_ACT_UNSPEC (tcx: TCX_NEXT) as BPF_PROG_TEST_RUN reports it
SHOT = 2                    # TC_ACT_SHOT
UNTOUCHED = "untouched"

NODE_MAC, BACKEND_MAC = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
NODE4, BACKEND4, VIP4, OUTER4 = "10.1.0.1", "10.1.0.2", "10.0.0.10", "10.255.3.1"
NODE6, BACKEND6, VIP6, OUTER6 = "fd00:1::1", "fd00:1::2", "fd00::10", "fd00:ff:3::1"
CHECK_PORT = 8080           # the port the check connects to
PORT = 40001                # the check socket's local port, registered
OTHER_PORT = 40002          # a local port nobody registered


@dataclass(frozen=True)
class Reg:
    """One registration: a local port and what its packets are re-addressed with."""

    family: int             # 4 or 6
    mode: str               # "ipip" or "l2"
    port: int = PORT
    dport: int = 0          # the check's port as the egress program learned it from the
                            # SYN, with the node's address (0: no SYN yet)


def _addrs(family: int) -> Tuple[str, str, str, str]:
    return (NODE4, BACKEND4, VIP4, OUTER4) if family == 4 else (NODE6, BACKEND6, VIP6, OUTER6)


def _a16(addr: str) -> bytes:
    return ipaddress.ip_address(addr).packed.ljust(16, b"\0")


def _put(tunnel: Tunnel, reg: Reg) -> None:
    node, backend, vip, outer = _addrs(reg.family)
    fam = L.FAMILY_V4 if reg.family == 4 else L.FAMILY_V6
    mode = {"ipip": L.MODE_IPIP, "l2": L.MODE_L2}[reg.mode]
    value = L.pack_hc_path(_a16(vip), _a16(backend),
                           _a16(outer) if reg.mode == "ipip" else bytes(16), mode,
                           node=_a16(node) if reg.dport else bytes(16), dport=reg.dport)
    tunnel.paths.put(reg.port, fam, value)


# -- frames ----------------------------------------------------------------------------------

def out4(*, dst: str = BACKEND4, sport: int = PORT, dport: int = CHECK_PORT,
         tcp_flags: str = "S", payload: bytes = b"", l4=None, vlan: Optional[int] = None,
         **ip) -> bytes:
    """A check's IPv4 packet as the node's TCP stack sends it: to the backend."""
    eth = Ether(src=NODE_MAC, dst=BACKEND_MAC)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    fields = dict(src=NODE4, dst=dst, ttl=64, id=0x4321, flags="DF")
    fields.update(ip)
    l4 = l4 if l4 is not None else TCP(sport=sport, dport=dport, flags=tcp_flags, seq=7, ack=9)
    return bytes(eth / IP(**fields) / l4 / Raw(payload))


def out6(*, dst: str = BACKEND6, sport: int = PORT, dport: int = CHECK_PORT,
         tcp_flags: str = "S", payload: bytes = b"", l4=None, **ip) -> bytes:
    fields = dict(src=NODE6, dst=dst, hlim=64, tc=0, fl=0x12345)
    fields.update(ip)
    l4 = l4 if l4 is not None else TCP(sport=sport, dport=dport, flags=tcp_flags, seq=7, ack=9)
    return bytes(Ether(src=NODE_MAC, dst=BACKEND_MAC) / IPv6(**fields) / l4 / Raw(payload))


def in4(*, src: str = VIP4, sport: int = CHECK_PORT, dport: int = PORT,
        tcp_flags: str = "SA", payload: bytes = b"", **ip) -> bytes:
    """The backend's IPv4 answer as it arrives (direct server return): from the VIP."""
    fields = dict(src=src, dst=NODE4, ttl=63, id=0x1111)
    fields.update(ip)
    return bytes(Ether(src=BACKEND_MAC, dst=NODE_MAC) / IP(**fields)
                 / TCP(sport=sport, dport=dport, flags=tcp_flags, seq=70, ack=8) / Raw(payload))


def in6(*, src: str = VIP6, sport: int = CHECK_PORT, dport: int = PORT,
        tcp_flags: str = "SA", payload: bytes = b"", **ip) -> bytes:
    fields = dict(src=src, dst=NODE6, hlim=63)
    fields.update(ip)
    return bytes(Ether(src=BACKEND_MAC, dst=NODE_MAC) / IPv6(**fields)
                 / TCP(sport=sport, dport=dport, flags=tcp_flags, seq=70, ack=8) / Raw(payload))


def _recompute(pkt):
    """The packet with its lengths and checksums left for scapy to compute again."""
    for layer in (IP, TCP):
        if layer in pkt:
            del pkt[layer].chksum
    if IP in pkt:
        del pkt[IP].len
    if IPv6 in pkt:
        del pkt[IPv6].plen
    return pkt


def readdressed(frame: bytes, *, dst: Optional[str] = None, src: Optional[str] = None) -> bytes:
    """`frame` with a new destination (or source) address, checksums right."""
    pkt = Ether(frame)
    ip = pkt[IP] if IP in pkt else pkt[IPv6]
    if dst:
        ip.dst = dst
    if src:
        ip.src = src
    return bytes(_recompute(pkt))


def tunnelled(frame: bytes, family: int) -> bytes:
    """What the egress program sends in IPIP mode: the check re-addressed to the VIP,
    inside an outer header from the outer source to the backend (TTL 64, id 0; IPv4: the
    inner DF and TOS; IPv6: the inner traffic class, flow label sport ^ dport)."""
    _, backend, vip, outer = _addrs(family)
    inner = Ether(readdressed(frame, dst=vip))
    eth = Ether(src=inner.src, dst=inner.dst)
    if family == 4:
        ip = inner[IP]
        hdr = IP(src=outer, dst=backend, proto=4, ttl=64, id=0, tos=ip.tos,
                 flags="DF" if ip.flags.DF else 0)
        return bytes(eth / hdr / ip)
    ip6 = inner[IPv6]
    tcp = inner[TCP]
    hdr = IPv6(src=outer, dst=backend, nh=41, hlim=64, tc=ip6.tc, fl=tcp.sport ^ tcp.dport)
    return bytes(eth / hdr / ip6)


@dataclass(frozen=True)
class Case:
    name: str
    prog: str                       # "egress" or "ingress"
    regs: Tuple[Reg, ...]
    packet: bytes
    verdict: int
    expect: object                  # bytes, UNTOUCHED, or None (dropped: not looked at)
    learned: Optional[int] = None   # the registration's dport after the run, if checked


R4, R6 = Reg(4, "ipip"), Reg(6, "ipip")
L4, L6 = Reg(4, "l2"), Reg(6, "l2")
# after the SYN went out: the check's port known
R4_ON, R6_ON = Reg(4, "ipip", dport=CHECK_PORT), Reg(6, "ipip", dport=CHECK_PORT)
L4_ON, L6_ON = Reg(4, "l2", dport=CHECK_PORT), Reg(6, "l2", dport=CHECK_PORT)
HTTP = b"GET /healthz HTTP/1.0\r\n\r\n"
OUT4, OUT6 = out4(), out6()
DATA4, DATA6 = out4(tcp_flags="PA", payload=HTTP), out6(tcp_flags="PA", payload=HTTP)

CASES = [
    # out: a registered port's packets to its backend go to the VIP, tunnelled or not
    Case("out4_ipip_syn", "egress", (R4,), OUT4, NEXT, tunnelled(OUT4, 4), CHECK_PORT),
    Case("out4_ipip_data", "egress", (R4_ON,), DATA4, NEXT, tunnelled(DATA4, 4), CHECK_PORT),
    Case("out4_ipip_tos_no_df", "egress", (R4,), out4(tos=0x28, flags=0), NEXT,
         tunnelled(out4(tos=0x28, flags=0), 4)),
    Case("out4_ipip_ip_options", "egress", (R4,), out4(options=P.ipv4_options()), NEXT,
         tunnelled(out4(options=P.ipv4_options()), 4)),
    Case("out6_ipip_syn", "egress", (R6,), OUT6, NEXT, tunnelled(OUT6, 6), CHECK_PORT),
    Case("out6_ipip_data_tclass", "egress", (R6_ON,),
         out6(tcp_flags="PA", payload=HTTP, tc=0xb8), NEXT,
         tunnelled(out6(tcp_flags="PA", payload=HTTP, tc=0xb8), 6)),
    Case("out4_l2_syn", "egress", (L4,), OUT4, NEXT, readdressed(OUT4, dst=VIP4), CHECK_PORT),
    Case("out6_l2_syn", "egress", (L6,), OUT6, NEXT, readdressed(OUT6, dst=VIP6), CHECK_PORT),
    Case("out4_l2_data", "egress", (L4_ON,), DATA4, NEXT, readdressed(DATA4, dst=VIP4),
         CHECK_PORT),
    Case("out6_l2_data", "egress", (L6_ON,), DATA6, NEXT, readdressed(DATA6, dst=VIP6),
         CHECK_PORT),
    Case("out4_learned_port_kept", "egress", (R4_ON,), OUT4, NEXT, tunnelled(OUT4, 4),
         CHECK_PORT),
    # out: a check whose SYN went out before it was registered, or another port of the
    # registered socket, is dropped: it must fail, not pass without the tunnel
    Case("out4_first_packet_not_a_syn", "egress", (R4,), DATA4, SHOT, None, 0),
    Case("out6_first_packet_not_a_syn", "egress", (L6,), DATA6, SHOT, None, 0),
    Case("out4_another_check_port", "egress", (R4_ON,), out4(dport=CHECK_PORT + 1), SHOT,
         None, CHECK_PORT),
    # out: everything else goes on as it is
    Case("out4_unregistered_port", "egress", (R4,), out4(sport=OTHER_PORT), NEXT, UNTOUCHED),
    Case("out6_unregistered_port", "egress", (R6,), out6(sport=OTHER_PORT), NEXT, UNTOUCHED),
    Case("out4_port_of_the_other_family", "egress", (R6,), OUT4, NEXT, UNTOUCHED),
    Case("out6_port_of_the_other_family", "egress", (R4,), OUT6, NEXT, UNTOUCHED),
    Case("out4_other_destination", "egress", (R4,), out4(dst="10.1.0.99"), NEXT, UNTOUCHED, 0),
    Case("out6_other_destination", "egress", (R6,), out6(dst="fd00:1::99"), NEXT, UNTOUCHED,
         0),
    Case("out4_udp", "egress", (R4,), out4(l4=UDP(sport=PORT, dport=CHECK_PORT)), NEXT,
         UNTOUCHED),
    Case("out4_fragment", "egress", (R4,), out4(flags="MF"), NEXT, UNTOUCHED),
    Case("out4_vlan_tagged", "egress", (R4,), out4(vlan=7), NEXT, UNTOUCHED),
    Case("out4_nothing_registered", "egress", (), OUT4, NEXT, UNTOUCHED),
    # in: the answer from the VIP to a registered port comes from the backend again
    Case("in4_ipip_synack", "ingress", (R4_ON,), in4(), NEXT,
         readdressed(in4(), src=BACKEND4)),
    Case("in4_l2_data", "ingress", (L4_ON,),
         in4(tcp_flags="PA", payload=b"HTTP/1.0 200 OK\r\n\r\n"), NEXT,
         readdressed(in4(tcp_flags="PA", payload=b"HTTP/1.0 200 OK\r\n\r\n"), src=BACKEND4)),
    Case("in6_ipip_synack", "ingress", (R6_ON,), in6(), NEXT,
         readdressed(in6(), src=BACKEND6)),
    Case("in6_l2_data", "ingress", (L6_ON,),
         in6(tcp_flags="PA", payload=b"HTTP/1.0 200 OK\r\n\r\n"), NEXT,
         readdressed(in6(tcp_flags="PA", payload=b"HTTP/1.0 200 OK\r\n\r\n"), src=BACKEND6)),
    # in: only from the VIP, from the check's port, once the check went out
    Case("in4_from_another_port", "ingress", (R4_ON,),
         in4(sport=9999), NEXT, UNTOUCHED),
    Case("in4_before_the_check_went_out", "ingress", (R4,), in4(), NEXT, UNTOUCHED),
    Case("in4_from_another_address", "ingress", (R4_ON,),
         in4(src="10.0.0.11"), NEXT, UNTOUCHED),
    Case("in6_from_another_address", "ingress", (R6_ON,),
         in6(src="fd00::11"), NEXT, UNTOUCHED),
    Case("in4_to_another_address", "ingress", (R4_ON,), in4(dst="10.1.0.7"), NEXT, UNTOUCHED),
    Case("in6_to_another_address", "ingress", (R6_ON,), in6(dst="fd00:1::7"), NEXT,
         UNTOUCHED),
    Case("in4_to_an_unregistered_port", "ingress", (R4_ON,),
         in4(dport=OTHER_PORT), NEXT, UNTOUCHED),
    Case("in6_to_the_port_of_the_other_family", "ingress", (R4_ON,),
         in6(), NEXT, UNTOUCHED),
]


def _mismatch(got: bytes, want: bytes) -> str:
    return (f"output differs from the expected frame\n--- got ({len(got)} bytes) ---\n"
            f"{P.describe(got)}\n--- expected ({len(want)} bytes) ---\n{P.describe(want)}")


def test_table_is_named_uniquely():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_packet(case: Case):
    with Tunnel.open() as tunnel:
        for reg in case.regs:
            _put(tunnel, reg)
        prog = tunnel.egress if case.prog == "egress" else tunnel.ingress
        verdict, out, _ = prog.test_run(case.packet)
        assert verdict == case.verdict, f"verdict {verdict}\n{P.describe(out)}"
        want = case.packet if case.expect is UNTOUCHED else case.expect
        if want is not None:
            assert out == want, _mismatch(out, want)
        if case.learned is not None:
            reg = case.regs[0]
            fam = L.FAMILY_V4 if reg.family == 4 else L.FAMILY_V6
            entry = tunnel.paths.get(reg.port, fam)
            node = _a16(_addrs(reg.family)[0]) if case.learned else bytes(16)
            assert (entry["dport"], entry["node"]) == (case.learned, node)


def test_a_round_trip_through_both_programs():
    """The check goes out (the program learns its port), the answer comes in: each
    re-addressed, and a second answer from another port is left alone."""
    with Tunnel.open() as tunnel:
        _put(tunnel, R4)
        _, out, _ = tunnel.egress.test_run(OUT4)
        assert out == tunnelled(OUT4, 4)
        _, out, _ = tunnel.egress.test_run(DATA4)
        assert out == tunnelled(DATA4, 4)
        _, back, _ = tunnel.ingress.test_run(in4())
        assert back == readdressed(in4(), src=BACKEND4)
        _, other, _ = tunnel.ingress.test_run(in4(sport=CHECK_PORT + 1))
        assert other == in4(sport=CHECK_PORT + 1)


def test_tcx_attach_types_are_the_kernels():
    kernel = _bpf.kernel_enum("bpf_attach_type")
    assert (kernel["BPF_TCX_INGRESS"], kernel["BPF_TCX_EGRESS"]) == (_bpf.TCX_INGRESS,
                                                                    _bpf.TCX_EGRESS)


def test_kernel_enum_of_an_unknown_enum():
    with pytest.raises(KeyError):
        _bpf.kernel_enum("xlb_no_such_enum")


def test_path_values_are_checked():
    a16 = bytes(16)
    with pytest.raises(ValueError, match="mode must be"):
        L.pack_hc_path(a16, a16, a16, L.MODE_LOCAL)
    with pytest.raises(ValueError, match="one family"):
        HcPaths.path("10.0.0.10", "fd00::2", None, L.MODE_L2)
    with pytest.raises(ValueError, match="one family"):
        HcPaths.path("10.0.0.10", "10.0.0.2", "fd00::1", L.MODE_IPIP)
    assert L.unpack_hc_path(HcPaths.path("10.0.0.10", "10.0.0.2", "10.255.0.1", L.MODE_IPIP)) \
        == {"vip": bytes([10, 0, 0, 10]) + bytes(12), "backend": bytes([10, 0, 0, 2]) + bytes(12),
            "outer_src": bytes([10, 255, 0, 1]) + bytes(12), "node": bytes(16),
            "mode": L.MODE_IPIP, "dport": 0}
    assert L.unpack_hc_path(HcPaths.path("fd00::10", "fd00::2", None, L.MODE_L2))["outer_src"] \
        == bytes(16)
