"""DesiredState and VipKey: parsing, validation, canonical order, plain-data round trip."""

import ipaddress

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
