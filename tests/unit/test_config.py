"""The YAML config of `pyxlb apply -f`: schema errors name the field, round trips."""

import os

import pytest

from pyxlb.config import ConfigError, dump, load_file, load_text
from pyxlb.state import Backend, DesiredState, Vip, VipKey

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "examples", "lb.yaml")

GOOD = """
vips:
  - vip: 192.0.2.10:80/tcp
    backends:
      - 10.0.0.1
      - {address: 10.0.0.2, weight: 3}
      - {address: 10.0.0.3, state: draining}
  - vip: "[2001:db8::10]:443/udp"
    mode: l2
    affinity: client-ip
    flow_table: false
    announce: true
    ring_size: 251
    backends:
      - {address: "2001:db8::1", mac: "02:00:00:00:00:01"}
"""


def test_good_file():
    state = load_text(GOOD)
    v4 = state.vip("192.0.2.10:80/tcp")
    assert v4.mode == "ipip" and v4.flow_table and v4.ring_size == 65537
    assert v4.backends == (Backend("10.0.0.1"), Backend("10.0.0.2", 3),
                           Backend("10.0.0.3", state="draining"))
    v6 = state.vip("[2001:db8::10]:443/udp")
    assert (v6.mode, v6.affinity, v6.flow_table, v6.announce, v6.ring_size) == \
        ("l2", "client-ip", False, True, 251)
    assert load_text(dump(state)) == state


def test_empty_file_is_an_empty_state():
    assert load_text("") == DesiredState()
    assert load_text("vips: []") == DesiredState()


def test_the_documented_example_loads():
    state = load_file(EXAMPLE)
    assert len(state) >= 2


@pytest.mark.parametrize("text,message", [
    ("vips: [{vip: 192.0.2.1:80/tcp, backends: [{address: 10.0.0.1, weight: -1}]}]",
     r"vips\[0\]\.backends\[0\]\.weight: -1 is less than the minimum of 0"),
    ("vips: [{vip: 192.0.2.1:80/tcp, mdoe: l2}]", r"vips\[0\]: .*'mdoe' was unexpected"),
    ("vips: [{vip: 192.0.2.1:80/tcp, mode: nat}]", r"vips\[0\]\.mode: 'nat' is not one of"),
    ("vips: [{vip: 192.0.2.1:80/tcp, ring_size: 65536}]", r"vips\[0\]: .*prime"),
    ("vips: [{backends: []}]", r"vips\[0\]: 'vip' is a required property"),
    ("vips: [{vip: 192.0.2.1:80/tcp, backends: [{weight: 2}]}]", r"'address' is a required"),
    ("vips: [{vip: 192.0.2.1/tcp}]", r"vips\[0\]: not a VIP"),
    ("vips: [{vip: '[2001:db8::1]:80/tcp', mode: l2, backends: [10.0.0.1]}]", "L2 mode"),
    ("vips: [{vip: 192.0.2.1:80/tcp}, {vip: 192.0.2.1:80/tcp}]", "defined twice"),
    ("vips: [{vip: 192.0.2.1:80/tcp, backends: [10.0.0.1, 10.0.0.1]}]", "listed twice"),
    ("vipz: []", r"\(top level\): .*'vipz' was unexpected"),
    ("vips: [", r"not valid YAML \(line"),
    ("- a\n- b", r"\(top level\): .* is not of type 'object'"),
    ("vips: [{vip: 192.0.2.1:80/tcp, source_ranges: 10.0.0.0/8}]",
     r"vips\[0\]\.source_ranges: '10.0.0.0/8' is not of type 'array'"),
    ("vips: [{vip: 192.0.2.1:80/tcp, source_ranges: [8]}]",
     r"vips\[0\]\.source_ranges\[0\]: 8 is not of type 'string'"),
    ("vips: [{vip: 192.0.2.1:80/tcp, source_ranges: [10.0.0.0/33]}]",
     r"vips\[0\]: VIP 192.0.2.1:80/tcp: not a source prefix: '10.0.0.0/33'"),
    ("vips: [{vip: 192.0.2.1:80/tcp, source_ranges: ['2001:db8::/32']}]",
     r"vips\[0\]: VIP 192.0.2.1:80/tcp: source range 2001:db8::/32 is IPv6, the VIP IPv4"),
])
def test_errors_are_one_line_naming_the_field(text, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_text(text, "lb.yaml")
    assert str(exc.value).startswith("lb.yaml: ") and "\n" not in str(exc.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="No such file"):
        load_file("/nonexistent/lb.yaml")


def test_dump_is_the_schema_form():
    state = DesiredState((Vip(VipKey.parse("192.0.2.1:0/udp"), backends=(Backend("10.0.0.1", local=True),)),))
    assert "local: true" in dump(state)
    assert load_text(dump(state)) == state


def test_source_ranges():
    state = load_text("""
vips:
  - vip: 192.0.2.10:443/tcp
    source_ranges: [203.0.113.0/24, 198.51.100.7, 198.51.100.0/24, 203.0.113.0/24]
  - vip: "[2001:db8::10]:443/tcp"
    source_ranges: ["2001:db8:9::/48"]
  - vip: 192.0.2.10:80/tcp
    source_ranges: []
""")
    v = state.vip("192.0.2.10:443/tcp")
    # canonical: sorted, duplicates gone, a bare address a host prefix
    assert [str(n) for n in v.source_ranges] == ["198.51.100.0/24", "198.51.100.7/32",
                                                 "203.0.113.0/24"]
    assert [str(n) for n in state.vip("[2001:db8::10]:443/tcp").source_ranges] == \
        ["2001:db8:9::/48"]
    assert state.vip("192.0.2.10:80/tcp").source_ranges == ()      # every client
    text = dump(state)
    assert "source_ranges" in text and load_text(text) == state
