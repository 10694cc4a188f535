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


def test_an_empty_state_must_be_said():
    """`vips: []` is the empty state; a document that says nothing is refused, since
    applying it would remove every VIP (a failed `generate | pyxlb apply -f -`)."""
    assert load_text("vips: []") == DesiredState()
    assert load_text('{"vips": []}') == DesiredState()


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "---\n...\n",
                                  "~", "null", "--- ~\n"])
def test_an_empty_document_is_refused(text):
    with pytest.raises(ConfigError, match=r"^lb.yaml: empty: no document, so no `vips` "
                                          r"list \(to remove every VIP, write `vips: \[\]`\)$"):
        load_text(text, "lb.yaml")


@pytest.mark.parametrize("text", ["{}", "announce: {mode: l2}\n"])
def test_a_document_without_vips_is_refused(text):
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 1, column 1: no `vips` list"):
        load_text(text, "lb.yaml")


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
    ("vips: [", r"^lb.yaml: line 2, column 1: not valid YAML: "),
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


# -- strict, bounded YAML ------------------------------------------------------------------

ONE_VIP = "vips:\n  - vip: 192.0.2.10:80/tcp\n    backends: [10.0.0.1]\n"


@pytest.mark.parametrize("text,message", [
    # a second key wins in plain YAML loaders: a second `vips: []` wiped the state
    (ONE_VIP + "vips: []\n",
     r"^lb.yaml: line 4, column 1: duplicate key 'vips' \(first at line 1, column 1\)$"),
    ("vips:\n  - vip: 192.0.2.10:80/tcp\n    mode: l2\n    mode: ipip\n",
     r"^lb.yaml: line 4, column 5: duplicate key 'mode' \(first at line 3, column 5\)$"),
    ('{"vips": [{"vip": "192.0.2.10:80/tcp", "backends": [{"address": "10.0.0.1", '
     '"weight": 1, "weight": 2}]}]}',
     r"^lb.yaml: line 1, column 90: duplicate key 'weight' \(first at line 1, column 77\)$"),
])
def test_duplicate_keys_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        load_text(text, "lb.yaml")


def _with(field: str, value: str) -> str:
    return f"vips:\n  - vip: 192.0.2.10:80/tcp\n    backends:\n      - address: 10.0.0.1\n" \
           f"        {field}: {value}\n"


@pytest.mark.parametrize("value,why", [
    ("1:30", "base-60"),                 # YAML 1.1 reads 90
    ("0x1F", "hexadecimal"), ("0o17", "octal"), ("0b11", "binary"),
    ("8_0", "digit separators"), ("+80", "leading '+'"),
    ("010", "leading zero"),             # YAML 1.1 reads 8
    (".inf", "infinity"), ("-.inf", "infinity"), (".nan", "not-a-number"),
    (".5", "without a digit before or after"), ("5.", "without a digit before or after"),
    ("８０", "not ASCII"), ("１:３０", "not ASCII"),
])
def test_numbers_are_plain_ascii_decimal(value, why):
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 5, column 17: ") as exc:
        load_text(_with("weight", value), "lb.yaml")
    assert why in str(exc.value) and "quote it" in str(exc.value)


@pytest.mark.parametrize("value", ["yes", "no", "on", "off", "Y", "n", "NO", "On"])
def test_yaml_1_1_booleans_are_refused(value):
    with pytest.raises(ConfigError, match=r"line 5, column 16: .* is a boolean in YAML 1\.1 "
                                          r"and a string in YAML 1\.2"):
        load_text(_with("local", value), "lb.yaml")


@pytest.mark.parametrize("value,message", [
    ("'80'", r"weight: '80' is not of type 'integer'"),        # a quoted number is a string
    ("!!int 0x10", r"line 5, column 17: '0x10' is not a decimal integer"),
    ("!!binary AAAA", r"the tag tag:yaml.org,2002:binary is not accepted"),
    ("!!python/object:os.system x", r"the tag tag:yaml.org,2002:python/object:os.system"),
    ("1e999", r"'1e999' is too large a number"),
    ("1" * 101, r"more than 100 digits"),
])
def test_tags_and_odd_numbers(value, message):
    with pytest.raises(ConfigError, match=message):
        load_text(_with("weight", value), "lb.yaml")


def test_plain_decimal_and_yaml_1_2_scalars_are_read():
    state = load_text("vips:\n  - vip: 192.0.2.10:80/tcp\n    flow_table: FALSE\n"
                      "    announce: True\n    ring_size: 251\n"
                      "    backends:\n      - {address: 10.0.0.1, weight: 0, local: true}\n"
                      "      - {address: 2001:db8::1, weight: 65535}\n"
                      "      - {address: 10.0.0.2, mac: 02:00:00:00:00:01}\n"
                      "      - {address: '10.0.0.3', weight: !!int 7}\n")
    v = state.vip("192.0.2.10:80/tcp")
    assert (v.flow_table, v.announce, v.ring_size) == (False, True, 251)
    assert [(str(b.address), b.weight, b.local, b.mac) for b in v.backends] == [
        ("10.0.0.1", 0, True, None), ("10.0.0.2", 1, False, "02:00:00:00:00:01"),
        ("10.0.0.3", 7, False, None), ("2001:db8::1", 65535, False, None)]


@pytest.mark.parametrize("port", ["８０", "8_0", "+80", " 80", "0x50", "", "٨٠"])
def test_a_vip_port_is_ascii_digits(port):
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 2, column 5: vips\[0\]: not a "
                                          r"VIP: .*is not a number of ASCII digits"):
        load_text(f"vips:\n  - vip: '192.0.2.10:{port}/tcp'\n", "lb.yaml")


def test_anchors_and_aliases_still_work():
    state = load_text("vips:\n  - vip: 192.0.2.10:80/tcp\n    backends: &web [10.0.0.1, 10.0.0.2]\n"
                      "  - vip: 192.0.2.10:443/tcp\n    backends: *web\n")
    assert state.vip("192.0.2.10:443/tcp").backends == state.vip("192.0.2.10:80/tcp").backends


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs": each level an alias list of the one before (574 bytes)."""
    names = "abcdefghijklmnop"
    lines = [f"{names[0]}: &{names[0]} [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"{names[i]}: &{names[i]} [{', '.join(['*' + names[i - 1]] * width)}]")
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once():
    import time
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"^bomb.yaml: line \d+, column \d+: more than "
                                          r"1,000,000 nodes with every alias expanded"):
        load_text(alias_bomb(), "bomb.yaml")
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("text", ["[" * 3000 + "]" * 3000, "vips: " + "[" * 40 + "]" * 40,
                                  "".join(f"{' ' * i}a:\n" for i in range(100)),
                                  "".join(f"{' ' * 2 * i}-\n" for i in range(100))])
def test_deep_nesting_is_one_line(text):
    with pytest.raises(ConfigError, match=r"^lb.yaml: line \d+, column \d+: .*(nested deeper "
                                          r"than 32 levels|maximum nesting depth)") as exc:
        load_text(text, "lb.yaml")
    assert "\n" not in str(exc.value)


def test_a_cycle_is_refused():
    with pytest.raises(ConfigError, match=r"line 1, column 11: alias \*v is inside the node "
                                          r"it names"):
        load_text("vips: &v [*v]", "lb.yaml")


@pytest.mark.parametrize("text,message", [
    ("vips: []\n---\nvips: []\n", "expected a single document in the stream, but found "
                                  "another document"),
    ("a: &x 1\nb: &x 2\n", r"anchor &x is defined twice \(first at line 1, column 4\)"),
    ("vips: []\n<<: {a: 1}\n", r"merge keys \(<<\) are not supported"),
    ("vips: []\n1: x\n", "a mapping key must be a string, not '1'"),
    ("vips: [\x00]", "control characters are not allowed"),
])
def test_other_yaml_refusals(text, message):
    with pytest.raises(ConfigError, match=message) as exc:
        load_text(text, "lb.yaml")
    assert str(exc.value).startswith("lb.yaml: line ") and "\n" not in str(exc.value)


def test_size_is_bounded(tmp_path):
    from pyxlb import config
    big = tmp_path / "big.yaml"
    big.write_bytes(b"vips: []\n" + b"#" * config.MAX_BYTES)
    with pytest.raises(ConfigError, match=rf"^{big}: larger than 8 MiB"):
        load_file(str(big))
    with pytest.raises(ConfigError, match=r"^config: larger than 8 MiB"):
        load_text(" " * (config.MAX_BYTES + 1))
    with open(big, "rb") as f, pytest.raises(ConfigError, match=r"^<stdin>: larger than 8 MiB"):
        config.load_stream(f)


def test_text_must_be_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"vips:\n  - vip: 192.0.2.1:80/tcp # caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{path}: line 2, column 32: not UTF-8 text "
                                          r"\(byte 0xe9\)$"):
        load_file(str(path))


def test_a_directory_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=rf"^{tmp_path}: Is a directory$"):
        load_file(str(tmp_path))


def test_errors_name_line_and_column():
    text = ("vips:\n"
            "  - vip: 192.0.2.10:80/tcp\n"
            "    backends:\n"
            "      - 10.0.0.1\n"
            "      - {address: 10.0.0.2, weight: -2}\n"
            "  - vip: 192.0.2.11:80/tcp\n"
            "    backends: []\n")
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 5, column 37: vips\[0\]\.backends"
                                          r"\[1\]\.weight: -2 is less than the minimum of 0$"):
        load_text(text, "lb.yaml")
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 7, column 5: vips\[1\]: "
                                          r"Additional properties .*'backend' was unexpected"):
        load_text(text.replace("-2", "2").replace("backends: []", "backend: []"), "lb.yaml")
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 6, column 5: vips\[1\]: VIP "
                                          r"192.0.2.10:80/tcp is defined twice \(first as "
                                          r"vips\[0\]\)$"):
        load_text(text.replace("-2", "2").replace("192.0.2.11", "192.0.2.10"), "lb.yaml")


def test_the_bgp_section_is_checked_in_its_own_words():
    """`announce.bgp` is checked with the schema of pyxlb/announce/bgp/schema.py, whose
    messages are those of BgpSettings.from_dict (docs/announce.md), with a line and column."""
    text = ("announce:\n"
            "  mode: bgp\n"
            "  bgp:\n"
            "    asn: 64513\n"
            "    peers:\n"
            "      - {address: 10.0.0.1, asn: 64512, hold_time: 2}\n"
            "vips: []\n")
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 6, column 52: announce\.bgp\.peers"
                                          r"\[0\]\.hold_time: must be 0 \(no keepalives\) or "
                                          r"3-65535 seconds \(BGP's minimum is 3\), not 2$"):
        load_text(text, "lb.yaml")
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 4, column 5: announce\.bgp\.asns: "
                                          r"unknown setting \(known: asn, bfd_interval_ms, "):
        load_text(text.replace("asn: 64513", "asns: 64513"), "lb.yaml")
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 4, column 5: announce\.bgp\.asn: "
                                          r"missing \(this node's AS number\)$"):
        load_text(text.replace("    asn: 64513\n", "    communities: []\n"), "lb.yaml")
    assert len(load_text(text.replace("hold_time: 2", "hold_time: 0"), "lb.yaml")) == 0


# -- addresses that cannot be right ----------------------------------------------------------

@pytest.mark.parametrize("vip,why", [
    ("0.0.0.0:80/tcp", "the unspecified address"),
    ("255.255.255.255:80/tcp", "the broadcast address"),
    ("224.0.0.1:80/udp", "a multicast address"),
    ("127.0.0.1:80/tcp", "a loopback address"),
    ("'[::]:80/tcp'", "the unspecified address"),
    ("'[::1]:80/tcp'", "a loopback address"),
    ("'[ff02::1]:80/udp'", "a multicast address"),
    ("'[::ffff:192.0.2.1]:80/tcp'", "IPv4-mapped"),
    ("'[::ffff:127.0.0.1]:80/tcp'", "IPv4-mapped"),
    ("'[fe80::1%eth0]:80/tcp'", "scoped"),
])
def test_vip_addresses_that_cannot_be_right(vip, why):
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 2, column 5: vips\[0\]: VIP "
                                          rf".*: .* is {why}"):
        load_text(f"vips:\n  - vip: {vip}\n", "lb.yaml")


@pytest.mark.parametrize("backend,why", [
    ("0.0.0.0", "the unspecified address"), ("255.255.255.255", "the broadcast address"),
    ("239.1.2.3", "a multicast address"), ("127.0.0.2", "a loopback address"),
    ("192.0.2.10", "the VIP's own address"), ("'::'", "the unspecified address"),
    ("'::1'", "a loopback address"), ("'ff05::2'", "a multicast address"),
    ("'::ffff:10.0.0.1'", "IPv4-mapped"),
])
def test_backend_addresses_that_cannot_be_right(backend, why):
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 2, column 5: vips\[0\]: VIP "
                                          rf"192.0.2.10:80/tcp: backend .* is {why}"):
        load_text(f"vips:\n  - vip: 192.0.2.10:80/tcp\n    backends: [{backend}]\n",
                  "lb.yaml")


@pytest.mark.parametrize("mac,why", [
    ("ff:ff:ff:ff:ff:ff", "the broadcast MAC"), ("01:00:5e:00:00:01", "a multicast MAC"),
    ("33:33:00:00:00:01", "a multicast MAC"), ("00:00:00:00:00:00", "all zeros"),
])
def test_backend_macs_that_cannot_be_right(mac, why):
    with pytest.raises(ConfigError, match=rf"vips\[0\]: backend 2001:db8::a: MAC {mac} is "
                                          rf"{why}"):
        load_text(f"vips:\n  - vip: '[2001:db8::53]:0/udp'\n    mode: l2\n"
                  f"    backends: [{{address: '2001:db8::a', mac: '{mac}'}}]\n", "lb.yaml")


def test_vip_list_json_of_a_large_state_loads_in_bounded_time():
    """1024 VIPs of 8 backends each, as `vip list --json` prints them (1 MiB; 4096 such
    VIPs, 4.1 MiB, take about 5 s): within the limits, and read in about a second."""
    import json
    import time
    vips = [{"vip": f"192.0.{i // 256}.{i % 256}:80/tcp", "mode": "ipip", "flow_table": True,
             "affinity": "none", "announce": False, "ring_size": 65537,
             "backends": [{"address": f"10.{j}.{i // 256}.{i % 256}", "weight": 1,
                           "state": "active"} for j in range(8)]} for i in range(1, 1025)]
    text = json.dumps({"vips": vips}, indent=2)
    started = time.monotonic()
    state = load_text(text)
    assert len(state) == 1024 and time.monotonic() - started < 10


def test_a_schema_error_quoting_a_large_value_stays_short():
    vips = [{"vip": f"192.0.2.{i}:80/tcp", "backends": ["10.0.0.1"]} for i in range(1, 200)]
    import json
    with pytest.raises(ConfigError, match=r"^lb.yaml: line 1, column 1: \(top level\): "
                                          r"\[\{'vip': .*\.\.\..* is not of type 'object'$") as exc:
        load_text(json.dumps(vips), "lb.yaml")
    assert len(str(exc.value)) < 300
