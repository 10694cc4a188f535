"""The references of bench/lab_throughput.py against the real kernel: what the ceiling and
the tunnel floor do to a frame is what the bench says they do (its ratios are only as
good as that)."""

import socket
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from pyxlb import _bpf
from pyxlb.bpf import object_path

DMAC, SMAC = "02:00:00:00:02:21", "02:00:00:00:02:01"
SRC4, DST4 = "198.19.2.1", "198.19.2.21"
SRC6, DST6 = "2001:2:0:2::1", "2001:2:0:2::21"
IFINDEX = 7


def _mac(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


@pytest.fixture
def ceiling():
    """bench_ceiling.o loaded, its config set: backend 1's MAC, out0's, an ifindex and the
    outer addresses (the bench's own values)."""
    obj = _bpf.BpfObject.open(object_path("bench_ceiling"))
    obj.load()
    obj.map("ceil_config").update(0, _mac(DMAC) + _mac(SMAC) + struct.pack("=I", IFINDEX)
                                  + socket.inet_pton(socket.AF_INET, SRC4)
                                  + socket.inet_pton(socket.AF_INET, DST4)
                                  + socket.inet_pton(socket.AF_INET6, SRC6)
                                  + socket.inet_pton(socket.AF_INET6, DST6))
    yield obj
    obj.close()


def _ones_sum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _frame(inner) -> bytes:
    return bytes(Ether(dst="02:00:00:00:01:01", src="02:00:00:00:01:02") / inner)


INNER4 = IP(src="198.18.0.5", dst="198.19.0.10") / TCP(sport=4321, dport=80, flags="A")
INNER6 = IPv6(src="2001:2:1::5", dst="2001:2::10") / TCP(sport=4321, dport=80, flags="A")


def test_the_ceiling_rewrites_the_macs_and_nothing_else(ceiling):
    frame = _frame(INNER4)
    action, out, _ = ceiling.program("ceil_redirect").test_run(frame)
    assert action == _bpf.XDP_REDIRECT
    assert out == _mac(DMAC) + _mac(SMAC) + frame[12:]


@pytest.mark.parametrize("inner, outer", [(INNER4, "ipip"), (INNER6, "ip6ip6")])
def test_the_tunnel_floor_pushes_one_valid_outer_header(ceiling, inner, outer):
    """IPIP for IPv4, IP6IP6 for IPv6: the right lengths, a correct IPv4 header checksum,
    the configured addresses, and the inner packet untouched behind it."""
    frame = _frame(inner)
    action, out, _ = ceiling.program("ceil_tunnel").test_run(frame)
    assert action == _bpf.XDP_REDIRECT
    eth = Ether(out)
    assert (eth.dst, eth.src) == (DMAC, SMAC)
    if outer == "ipip":
        ip = eth[IP]
        assert (ip.src, ip.dst, ip.proto, ip.ttl, ip.flags) == (SRC4, DST4, 4, 64, "DF")
        assert ip.len == len(frame) - 14 + 20
        assert _ones_sum(out[14:34]) == 0xFFFF      # the header checksum holds
        assert out[34:] == frame[14:]
    else:
        ip6 = eth[IPv6]
        assert (ip6.src, ip6.dst, ip6.nh, ip6.hlim) == (SRC6, DST6, 41, 64)
        assert ip6.plen == len(frame) - 14
        assert out[54:] == frame[14:]


def test_the_tunnel_floor_drops_what_is_not_ip(ceiling):
    arp = bytes.fromhex("ffffffffffff" "020000000102" "0806") + bytes(28)
    action, _, _ = ceiling.program("ceil_tunnel").test_run(arp)
    assert action == _bpf.XDP_DROP
