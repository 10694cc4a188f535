"""pyxlb.addr: addresses, prefixes, the LPM key convention and MACs (pure)."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyxlb import addr
from pyxlb._layouts import FAMILY_V4, FAMILY_V6

V4 = bytes([192, 0, 2, 1]) + bytes(12)


def test_parse_ipv4_fills_the_first_four_bytes():
    assert addr.parse_addr("192.0.2.1") == (FAMILY_V4, V4)
    assert addr.parse_addr(ipaddress.IPv4Address("192.0.2.1")) == (FAMILY_V4, V4)
    assert addr.parse_addr(" 192.0.2.1 ") == (FAMILY_V4, V4)


def test_parse_ipv6():
    fam, a = addr.parse_addr("2001:db8::1")
    assert fam == FAMILY_V6
    assert a == bytes.fromhex("20010db8000000000000000000000001")
    assert addr.parse_addr(ipaddress.IPv6Address("2001:db8::1")) == (fam, a)


def test_a_mapped_address_stays_ipv6():
    fam, a = addr.parse_addr("::ffff:192.0.2.1")
    assert fam == FAMILY_V6 and a == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 1])


@pytest.mark.parametrize("bad", ["", "192.0.2", "192.0.2.256", "10.0.0.0/8", "fe80::1%eth0x/64",
                                 "hello", "1:2:3:4:5:6:7:8:9"])
def test_parse_addr_rejects(bad):
    with pytest.raises(ValueError, match="address"):
        addr.parse_addr(bad)


def test_parse_addr_rejects_a_scope_and_wrong_types():
    with pytest.raises(ValueError, match="scoped"):
        addr.parse_addr("fe80::1%eth0")
    with pytest.raises(TypeError):
        addr.parse_addr(b"\xc0\x00\x02\x01")
    with pytest.raises(TypeError):
        addr.parse_addr(3221225985)


@given(st.ip_addresses())
def test_addr_round_trip(ip):
    fam, a = addr.parse_addr(ip)
    assert len(a) == 16
    assert fam == (FAMILY_V4 if ip.version == 4 else FAMILY_V6)
    assert addr.format_addr(fam, a) == str(ip)
    assert addr.ip_address(fam, a) == ip


def test_format_addr_rejects():
    with pytest.raises(ValueError, match="16 bytes"):
        addr.format_addr(FAMILY_V4, bytes(4))
    with pytest.raises(ValueError, match="non-zero"):
        addr.format_addr(FAMILY_V4, bytes(15) + b"\x01")
    with pytest.raises(ValueError, match="family"):
        addr.format_addr(5, bytes(16))


def test_parse_prefix():
    assert addr.parse_prefix("10.1.0.0/16") == (FAMILY_V4, bytes([10, 1]) + bytes(14), 16)
    assert addr.parse_prefix("2001:db8::/32") == (
        FAMILY_V6, bytes.fromhex("20010db8") + bytes(12), 32)
    assert addr.parse_prefix(ipaddress.ip_network("0.0.0.0/0")) == (FAMILY_V4, bytes(16), 0)
    # a bare address is a host prefix
    assert addr.parse_prefix("192.0.2.1") == (FAMILY_V4, V4, 32)
    assert addr.parse_prefix("::1")[2] == 128


@pytest.mark.parametrize("bad", ["10.1.0.1/16", "10.0.0.0/33", "10.0.0.0/-1", "10.0.0.0/",
                                 "2001:db8::/129", "nope/8", ""])
def test_parse_prefix_rejects(bad):
    with pytest.raises(ValueError, match="prefix"):
        addr.parse_prefix(bad)


def test_parse_prefix_rejects_wrong_types():
    with pytest.raises(TypeError):
        addr.parse_prefix(16)


@given(st.ip_addresses(), st.data())
def test_prefix_round_trip(ip, data):
    plen = data.draw(st.integers(0, ip.max_prefixlen))
    net = ipaddress.ip_network(f"{ip}/{plen}", strict=False)
    fam, a, n = addr.parse_prefix(str(net))
    assert n == plen
    assert addr.format_prefix(fam, a, n) == str(net)


def test_lpm_maps_ipv4_into_ipv6():
    plen, key = addr.lpm_prefix("10.255.0.0/16")
    assert plen == 96 + 16
    assert key == bytes(10) + b"\xff\xff" + bytes([10, 255, 0, 0])
    assert addr.lpm_prefix("2001:db8::/48") == (48, bytes.fromhex("20010db80000") + bytes(10))


@given(st.ip_addresses(), st.data())
def test_lpm_round_trip(ip, data):
    plen = data.draw(st.integers(0, ip.max_prefixlen))
    fam, a, n = addr.parse_prefix(ipaddress.ip_network(f"{ip}/{plen}", strict=False))
    lpm_len, lpm_addr = addr.to_lpm(fam, a, n)
    assert 0 <= lpm_len <= 128 and len(lpm_addr) == 16
    back = addr.from_lpm(lpm_len, lpm_addr)
    if fam == FAMILY_V6 and plen >= 96 and a[:12] == bytes(10) + b"\xff\xff":
        # an IPv4-mapped IPv6 prefix and the IPv4 prefix share one LPM key, by design
        assert back == (FAMILY_V4, a[12:] + bytes(12), plen - 96)
    else:
        assert back == (fam, a, n)


def test_to_lpm_rejects():
    with pytest.raises(ValueError):
        addr.to_lpm(FAMILY_V4, V4, 33)
    with pytest.raises(ValueError):
        addr.to_lpm(FAMILY_V6, bytes(16), 129)
    with pytest.raises(ValueError):
        addr.to_lpm(FAMILY_V4, bytes(15) + b"\x01", 8)
    with pytest.raises(ValueError):
        addr.to_lpm(7, bytes(16), 8)
    with pytest.raises(ValueError):
        addr.from_lpm(129, bytes(16))


def test_mac():
    assert addr.parse_mac("02:00:00:00:00:01") == bytes([2, 0, 0, 0, 0, 1])
    assert addr.parse_mac("02-AB-00-00-00-0f") == bytes([2, 0xAB, 0, 0, 0, 15])
    assert addr.parse_mac(b"\x02\x00\x00\x00\x00\x01") == bytes([2, 0, 0, 0, 0, 1])
    assert addr.format_mac(bytes([2, 0xAB, 0, 0, 0, 15])) == "02:ab:00:00:00:0f"


@pytest.mark.parametrize("bad", ["02:00:00:00:00", "02:00:00:00:00:01:02", "02:00:00:00:00:1g",
                                 "02:00:00:00:00:+1", "0200.0000.0001", "", "02:00:00:00:00:100",
                                 b"\x00" * 5])
def test_parse_mac_rejects(bad):
    with pytest.raises(ValueError, match="MAC"):
        addr.parse_mac(bad)


@given(st.binary(min_size=6, max_size=6))
def test_mac_round_trip(mac):
    assert addr.parse_mac(addr.format_mac(mac)) == mac
