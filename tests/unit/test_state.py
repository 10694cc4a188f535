"""DesiredState and VipKey: parsing, validation, canonical order, plain-data round trip."""

import ipaddress
import re

import pytest

from pyxlb import _layouts as L
from pyxlb.state import RING_SIZE_MAX, Backend, DesiredState, StateError, Vip, VipKey


@pytest.mark.parametrize("text,addr,port,proto", [
    ("192.0.2.10:80/tcp", "192.0.2.10", 80, "tcp"),
    ("192.0.2.10:0/udp", "192.0.2.10", 0, "udp"),
    ("[2001:db8::10]:443/TCP", "2001:db8::10", 443, "tcp"),
    (" 10.0.0.1:65535/udp ", "10.0.0.1", 65535, "udp"),
])
def test_vip_key_parse_and_format(text, addr, port, proto):
    key = VipKey.parse(text)
    assert key == VipKey(ipaddress.ip_address(addr), port, proto)
    assert VipKey.parse(str(key)) == key


@pytest.mark.parametrize("text,message", [
    ("192.0.2.10/tcp", "ADDR:PORT/PROTO"),
    ("192.0.2.10:80", "ADDR:PORT/PROTO"),
    ("192.0.2.10:http/tcp", "not a number"),
    ("192.0.2.10:70000/tcp", "outside 0-65535"),
    ("192.0.2.10:80/sctp", "tcp or udp"),
    ("2001:db8::10:80/tcp", r"\[ADDR\]:PORT/PROTO"),
    ("example.com:80/tcp", "not an IPv4 or IPv6 address"),
    ("[192.0.2.10]:80/tcp", r"brackets are for an IPv6 address: write 192.0.2.10:80/\.\.\."),
    ("", "ADDR:PORT/PROTO"),
])
def test_vip_key_errors_are_one_line(text, message):
    with pytest.raises(StateError, match=message) as exc:
        VipKey.parse(text)
    assert "\n" not in str(exc.value)


def test_backend_validation():
    assert Backend("10.0.0.1").in_ring
    assert not Backend("10.0.0.1", weight=0).in_ring
    assert not Backend("10.0.0.1", state="draining").in_ring
    assert Backend("10.0.0.1", mac="02:AA:00:00:00:01").mac == "02:aa:00:00:00:01"
    for kwargs, message in [({"weight": -1}, "outside"), ({"weight": 70000}, "outside"),
                            ({"weight": 1.5}, "integer"), ({"weight": True}, "integer"),
                            ({"state": "gone"}, "state"), ({"mac": "zz"}, "MAC")]:
        with pytest.raises(StateError, match=message):
            Backend("10.0.0.1", **kwargs)


def test_vip_validation():
    k4, k6 = VipKey.parse("192.0.2.10:80/tcp"), VipKey.parse("[2001:db8::10]:80/tcp")
    with pytest.raises(StateError, match="twice"):
        Vip(k4, backends=(Backend("10.0.0.1"), Backend("10.0.0.1", weight=2)))
    with pytest.raises(StateError, match="L2 mode needs IPv6"):
        Vip(k6, mode="l2", backends=(Backend("10.0.0.1"),))
    with pytest.raises(StateError, match="IPv6-in-IPv4"):
        Vip(k6, backends=(Backend("10.0.0.1"),))
    assert Vip(k4, backends=(Backend("2001:db8::1"),))  # IPv4-in-IPv6 is fine
    with pytest.raises(StateError, match="no backends"):
        Vip(k4, mode="local", backends=(Backend("10.0.0.1"),))
    for size in (65536, 1, RING_SIZE_MAX + 2):
        with pytest.raises(StateError, match="prime"):
            Vip(k4, ring_size=size)
    with pytest.raises(StateError, match="mode"):
        Vip(k4, mode="nat")
    with pytest.raises(StateError, match="more active backends"):
        Vip(k4, ring_size=2, backends=tuple(Backend(f"10.0.0.{i}") for i in range(1, 4)))


def test_ring_size_max_is_the_datapaths():
    assert RING_SIZE_MAX == L.RING_SIZE_MAX


def test_canonical_order_makes_equal_states_equal():
    k = VipKey.parse("192.0.2.10:80/tcp")
    a = Vip(k, backends=(Backend("10.0.0.2"), Backend("10.0.0.1")))
    b = Vip(k, backends=(Backend("10.0.0.1"), Backend("10.0.0.2")))
    assert a == b
    other = Vip(VipKey.parse("192.0.2.9:80/tcp"))
    assert DesiredState((a, other)) == DesiredState((other, b))


def test_state_edits_and_round_trip():
    s = DesiredState()
    v = Vip(VipKey.parse("192.0.2.10:80/tcp"), backends=(Backend("10.0.0.1", mac="02:00:00:00:00:01"),
                                                         Backend("10.0.0.2", 3, "draining", local=True)),
            mode="l2", flow_table=False, affinity="client-ip", announce=True, ring_size=13)
    s = s.with_vip(v)
    assert s.vip("192.0.2.10:80/tcp") == v
    assert DesiredState.from_dict(s.to_dict()) == s
    with pytest.raises(StateError, match="defined twice"):
        DesiredState((v, v))
    with pytest.raises(StateError, match="no VIP"):
        s.without_vip("192.0.2.11:80/tcp")
    assert len(s.without_vip("192.0.2.10:80/tcp")) == 0


# -- addresses and MACs that cannot be right -------------------------------------------------

K4, K6 = VipKey.parse("192.0.2.10:80/tcp"), VipKey.parse("[2001:db8::10]:80/tcp")

REFUSED = [
    ("0.0.0.0", "the unspecified address"), ("::", "the unspecified address"),
    ("255.255.255.255", "the broadcast address"),
    ("224.0.0.1", "a multicast address"), ("239.255.255.250", "a multicast address"),
    ("ff02::1", "a multicast address"), ("ff0e::1", "a multicast address"),
    ("127.0.0.1", "a loopback address"), ("127.1.2.3", "a loopback address"),
    ("::1", "a loopback address"),
    ("::ffff:127.0.0.1", "IPv4-mapped"), ("::ffff:0.0.0.0", "IPv4-mapped"),
    ("::ffff:192.0.2.1", "IPv4-mapped, an address that never appears on the wire: write "
                         "192.0.2.1"),
    ("fe80::1%eth0", "scoped"),
]


@pytest.mark.parametrize("addr,why", REFUSED)
def test_vip_addresses_that_cannot_be_right(addr, why):
    key = VipKey(ipaddress.ip_address(addr), 80, "tcp")      # a key, for lookups, parses
    shown = re.escape(str(key.address))      # ::ffff:7f00:1 before Python 3.13
    with pytest.raises(StateError, match=rf"^VIP .*: {shown} is {re.escape(why)}"):
        Vip(key)
    with pytest.raises(StateError, match=re.escape(why)):
        Vip(key, mode="local")


@pytest.mark.parametrize("addr,why", REFUSED)
def test_backend_addresses_that_cannot_be_right(addr, why):
    key = K4 if "." in addr and ":" not in addr else K6
    shown = re.escape(str(ipaddress.ip_address(addr)))
    with pytest.raises(StateError, match=rf"^VIP {re.escape(str(key))}: backend "
                                         rf"{shown} is {re.escape(why)}"):
        Vip(key, backends=(Backend(addr),))


def test_a_backend_is_not_its_vip():
    for key, addr in ((K4, "192.0.2.10"), (K6, "2001:db8::10")):
        with pytest.raises(StateError, match=rf"backend {addr} is the VIP's own address"):
            Vip(key, backends=(Backend(addr),))
    # the same address on another VIP is a backend like any other
    assert Vip(VipKey.parse("192.0.2.11:80/tcp"), backends=(Backend("192.0.2.10"),))


@pytest.mark.parametrize("addr", ["10.77.100.10", "10.77.1.1", "fd77:100::10", "192.0.2.1",
                                  "2001:db8::1", "10.0.0.0", "172.16.0.255", "169.254.1.1",
                                  "fe80::1", "100.64.0.1", "1.1.1.1", "::2", "fd00::ffff:1"])
def test_ordinary_addresses_are_fine(addr):
    a = ipaddress.ip_address(addr)
    key = VipKey(a, 80, "tcp")
    other = "192.0.2.99" if a.version == 4 else "2001:db8::99"
    assert Vip(key, backends=(Backend(other),)).key.address == a
    assert Vip(VipKey(ipaddress.ip_address(other), 80, "tcp"), backends=(Backend(addr),))


@pytest.mark.parametrize("mac,why", [
    ("ff:ff:ff:ff:ff:ff", "the broadcast MAC"), ("01:00:5e:00:00:fb", "a multicast MAC"),
    ("33:33:ff:00:00:01", "a multicast MAC"), ("03:00:00:00:00:00", "a multicast MAC"),
    ("00:00:00:00:00:00", "all zeros"), ("0-0-0-0-0-0", "all zeros"),
])
def test_backend_macs_that_cannot_be_right(mac, why):
    with pytest.raises(StateError, match=rf"^backend 10.0.0.1: MAC [0-9a-f:]+ is {why}"):
        Backend("10.0.0.1", mac=mac)


@pytest.mark.parametrize("mac", ["02:00:00:00:00:01", "00:00:00:00:00:01", "fe:ff:ff:ff:ff:ff",
                                 "52:54:00:12:34:56"])
def test_unicast_macs_are_fine(mac):
    assert Backend("10.0.0.1", mac=mac).mac == mac


@pytest.mark.parametrize("text", ["192.0.2.10:８０/tcp", "192.0.2.10:8_0/tcp",
                                  "192.0.2.10:+80/tcp", "192.0.2.10: 80/tcp",
                                  "192.0.2.10:80 /tcp", "192.0.2.10:/tcp", "192.0.2.10:0x50/tcp",
                                  "192.0.2.10:٨٠/tcp"])
def test_a_vip_port_is_ascii_decimal(text):
    with pytest.raises(StateError, match=r"is not a number of ASCII digits"):
        VipKey.parse(text)


def test_a_long_port_is_out_of_range():
    with pytest.raises(StateError, match=r"^VIP 192.0.2.10: port 9999999 is outside 0-65535$"):
        VipKey.parse("192.0.2.10:9999999/tcp")
