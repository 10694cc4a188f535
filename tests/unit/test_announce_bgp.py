"""BGP settings and BIRD configuration, without a daemon: what `bird_config` writes (checked
by BIRD's own parser, `bird -p`), how settings are read from YAML and BGPPeer specs, and the
one-line errors for every bad field."""

from __future__ import annotations

import ipaddress
import re
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from pyxlb import config
from pyxlb.announce import Result
from pyxlb.announce.bgp import (BgpAnnouncer, BgpError, BgpPeer, BgpSettings, BirdSpeaker,
                                announced_in, bird_config, schema, upstream_router_config)

V4 = ipaddress.ip_address("192.0.2.10")
V6 = ipaddress.ip_address("2001:db8::10")

EXAMPLE = {     # the shape of docs/announce.md
    "asn": 64513,
    "router_id": "10.77.2.11",
    "peers": [{"address": "10.77.2.1", "asn": 64512, "bfd": True, "hold_time": 3,
               "password": "s3cret", "multihop": 0}],
    "communities": ["64512:100"],
}


def bird_parses(text: str, tmp_path) -> None:
    """BIRD's own parser accepts `text` (bird -p: parse and exit, no daemon)."""
    path = tmp_path / "bird.conf"
    path.write_text(text)
    done = subprocess.run(["bird", "-p", "-c", str(path)], capture_output=True, text=True,
                          timeout=10)
    numbered = "\n".join(f"{i + 1:3} {line}" for i, line in enumerate(text.splitlines()))
    assert done.returncode == 0, f"bird -p: {done.stderr.strip()}\n{numbered}"


def settings(*peers: BgpPeer, **kw) -> BgpSettings:
    kw.setdefault("asn", 64513)
    kw.setdefault("router_id", "10.0.0.11")
    return BgpSettings(peers=peers or (BgpPeer(ipaddress.ip_address("10.0.0.1"), 64512),),
                       **kw)


def block(config: str, header: str) -> str:
    """The `header { ... }` block of a configuration (to its closing brace at column 0)."""
    start = config.index(header)
    return config[start:config.index("\n}", start) + 2]


CONFIGS = [
    pytest.param(settings(), [V4], id="one-ipv4-peer"),
    pytest.param(settings(), [], id="nothing-announced"),
    pytest.param(settings(BgpPeer(ipaddress.ip_address("2001:db8::1"), 64512)),
                 [V6], id="one-ipv6-peer"),
    pytest.param(settings(
        BgpPeer(ipaddress.ip_address("10.0.0.1"), 64512, password="s3cret", bfd=True,
                hold_time=3, keepalive=1),
        BgpPeer(ipaddress.ip_address("2001:db8::1"), 64512, bfd=True, hold_time=9,
                communities=((64512, 7, 7),)),
        BgpPeer(ipaddress.ip_address("192.0.2.254"), 65000, multihop=4, hold_time=0),
        communities=((64512, 100), (65535, 65281))),
        [V4, V6, ipaddress.ip_address("192.0.2.11")], id="mixed-bfd-md5-multihop-communities"),
    pytest.param(settings(BgpPeer(ipaddress.ip_address("10.0.0.1"), 64513)), [V4],
                 id="ibgp-same-asn"),
    pytest.param(settings(BgpPeer(ipaddress.ip_address("10.0.0.1"), 4200000001, bfd=True),
                          asn=4200000000, bfd_interval_ms=300, bfd_multiplier=5),
                 [ipaddress.ip_address(f"198.51.100.{i}") for i in range(1, 200)],
                 id="four-byte-asns-many-vips"),
]


@pytest.mark.parametrize("config_settings,vips", CONFIGS)
def test_bird_accepts_the_generated_configuration(tmp_path, config_settings, vips):
    config = bird_config(config_settings, vips)
    bird_parses(config, tmp_path)
    assert announced_in(config) == frozenset(vips)


def test_vips_are_blackhole_host_routes_exported_only_by_their_filter():
    config = bird_config(settings(BgpPeer(ipaddress.ip_address("10.0.0.1"), 64512),
                                  BgpPeer(ipaddress.ip_address("2001:db8::1"), 64512)),
                         [V6, V4])
    assert "route 192.0.2.10/32 blackhole;" in block(config, "protocol static pyxlb_vip4")
    assert "route 2001:db8::10/128 blackhole;" in block(config, "protocol static pyxlb_vip6")
    assert "protocol kernel" not in config      # never installed in this node's FIB
    export = block(config, "filter pyxlb_export")
    assert 'if proto = "pyxlb_vip4" || proto = "pyxlb_vip6" then' in export
    assert export.rstrip("}\n ").endswith("reject;")
    for peer, family in (("10_0_0_1", 4), ("2001_db8__1", 6)):
        session = block(config, f"protocol bgp pyxlb_peer_{peer}")
        assert f"ipv{family} {{" in session and f"ipv{10 - family} {{" not in session
        assert "import none;" in session and "export filter pyxlb_export;" in session
        assert "next hop self;" in session and "graceful restart off;" in session


def test_session_options_follow_each_peer():
    config = bird_config(settings(
        BgpPeer(ipaddress.ip_address("10.0.0.1"), 64512, password="pw", bfd=True,
                hold_time=6, keepalive=2),
        BgpPeer(ipaddress.ip_address("10.0.9.1"), 64512, multihop=3),
        BgpPeer(ipaddress.ip_address("10.0.8.1"), 64512, multihop=2, bfd=True,
                source_address=ipaddress.ip_address("10.0.0.11"))), [V4])
    first = block(config, "protocol bgp pyxlb_peer_10_0_0_1")
    second = block(config, "protocol bgp pyxlb_peer_10_0_9_1")
    assert "neighbor 10.0.0.1 as 64512;" in first and "local as 64513;" in first
    for line in ("direct;", "hold time 6;", "keepalive time 2;", "bfd on;", 'password "pw";',
                 "connect retry time 1;", "error wait time 1, 5;"):
        assert line in first
    assert "multihop 3;" in second and "hold time 3;" in second
    for line in ("bfd on;", "password", "keepalive", "direct;"):
        assert line not in second
    third = block(config, "protocol bgp pyxlb_peer_10_0_8_1")
    assert "local 10.0.0.11 as 64513;" in third and "bfd on;" in third
    bfd = block(config, "protocol bfd pyxlb_bfd")
    assert bfd.count("interval 100 ms;") == 2 and bfd.count("multiplier 3;") == 2
    assert "protocol bfd" not in bird_config(settings(), [V4])


def test_communities_are_added_by_the_export_filter_of_each_peer():
    config = bird_config(settings(
        BgpPeer(ipaddress.ip_address("10.0.0.1"), 64512),
        BgpPeer(ipaddress.ip_address("10.0.0.2"), 64512, communities=((1, 2, 3),)),
        communities=((64512, 100),)), [V4])
    shared = block(config, "filter pyxlb_export\n")
    assert "bgp_community.add((64512, 100));" in shared and "large" not in shared
    own = block(config, "filter pyxlb_export_1")
    assert "bgp_community.add((64512, 100));" in own
    assert "bgp_large_community.add((1, 2, 3));" in own
    assert "export filter pyxlb_export_1;" in block(config, "protocol bgp pyxlb_peer_10_0_0_2")


def test_session_names_do_not_depend_on_peer_order():
    a = BgpPeer(ipaddress.ip_address("10.0.0.1"), 64512)
    b = BgpPeer(ipaddress.ip_address("2001:db8::1"), 64512)
    one, two = bird_config(settings(a, b), [V4]), bird_config(settings(b, a), [V4])
    for peer in (a, b):
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", peer.protocol)
        assert block(one, f"protocol bgp {peer.protocol} ") == \
            block(two, f"protocol bgp {peer.protocol} ")


_peer_addresses = st.one_of(
    st.integers(1, 2**32 - 2).map(ipaddress.IPv4Address),
    st.integers(1, 2**128 - 2).map(ipaddress.IPv6Address))
_passwords = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e,
                                   blacklist_characters='"\\'), min_size=1, max_size=80)
_communities = st.lists(st.one_of(st.tuples(st.integers(0, 65535), st.integers(0, 65535)),
                                  st.tuples(*[st.integers(0, 2**32 - 1)] * 3)), max_size=3)


@st.composite
def _peers(draw):
    hold = draw(st.sampled_from([0, 3, 4, 90, 65535]))
    keepalive = draw(st.none() | st.integers(1, max(1, hold - 1))) if hold else None
    address = draw(_peer_addresses)
    bfd, multihop = draw(st.booleans()), draw(st.integers(0, 255))
    source = None
    if (bfd and multihop) or draw(st.booleans()):
        source = draw(_peer_addresses.filter(lambda a: a.version == address.version))
    return BgpPeer(address, draw(st.integers(1, 2**32 - 1).filter(lambda a: a != 23456)),
                   password=draw(st.none() | _passwords), bfd=bfd, hold_time=hold,
                   keepalive=keepalive, multihop=multihop, source_address=source,
                   communities=tuple(draw(_communities)))


@hsettings(max_examples=40, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(peers=st.lists(_peers(), min_size=1, max_size=4, unique_by=lambda p: p.address),
       communities=_communities,
       vips=st.sets(_peer_addresses, max_size=6))
def test_any_valid_settings_make_a_configuration_bird_accepts(tmp_path, peers, communities,
                                                              vips):
    config = bird_config(settings(*peers, communities=tuple(communities)), vips)
    bird_parses(config, tmp_path)
    assert announced_in(config) == frozenset(vips)


def test_upstream_router_configuration_parses(tmp_path):
    nodes = [("10.0.0.11", 64513), ("10.0.0.12", 64513), ("2001:db8::11", 64513)]
    config = upstream_router_config("10.0.0.1", 64512, nodes, bfd=True, password="pw")
    bird_parses(config, tmp_path)
    assert config.count("merge paths yes;") == 2
    assert "import where net.len = 32;" in block(config, "protocol bgp pyxlb_node_10_0_0_11")
    assert "import where net.len = 128;" in block(config,
                                                  "protocol bgp pyxlb_node_2001_db8__11")


# -- reading settings -------------------------------------------------------------------

def test_the_documented_example_reads_with_defaults_filled_in():
    s = BgpSettings.from_dict(EXAMPLE, node="lb1")
    assert s.asn == 64513 and s.router_id == ipaddress.ip_address("10.77.2.11")
    assert s.node == "lb1" and s.state_dir == "/run/pyxlb/bird"
    assert s.communities == ((64512, 100),)
    (peer,) = s.peers
    assert peer == BgpPeer(ipaddress.ip_address("10.77.2.1"), 64512, password="s3cret",
                           bfd=True, hold_time=3, multihop=0)
    bare = BgpSettings.from_dict({"asn": 1, "router_id": "10.0.0.1",
                                  "peers": [{"address": "10.0.0.2", "asn": 2}]})
    assert bare.peers[0] == BgpPeer(ipaddress.ip_address("10.0.0.2"), 2)
    assert (bare.peers[0].hold_time, bare.peers[0].bfd, bare.peers[0].multihop) == (3, False, 0)


def test_router_id_defaults_to_the_interfaces_first_ipv4_address():
    data = {k: v for k, v in EXAMPLE.items() if k != "router_id"}
    assert BgpSettings.from_dict(data, interface="lo").router_id == \
        ipaddress.ip_address("127.0.0.1")
    with pytest.raises(BgpError, match=r"^bgp\.router_id: missing, and no interface"):
        BgpSettings.from_dict(data)
    with pytest.raises(BgpError, match=r"^bgp\.router_id: missing, and no interface named"):
        BgpSettings.from_dict(data, interface="nosuch0")


def _with(path, value):
    """EXAMPLE with one field replaced (path: keys and list indexes); value None: removed."""
    import copy
    data = copy.deepcopy(EXAMPLE)
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


BAD = [
    (_with(["asn"], None), r"bgp\.asn: missing"),
    (_with(["asn"], 0), r"bgp\.asn: must be an AS number 1-4294967295, not 0"),
    (_with(["asn"], "64513"), r"bgp\.asn: must be an AS number .*not '64513'"),
    (_with(["asn"], True), r"bgp\.asn: must be an AS number"),
    (_with(["asn"], 23456), r"bgp\.asn: 23456 is AS_TRANS"),
    (_with(["router_id"], "fd00::1"), r"bgp\.router_id: .*IPv4 address, not fd00::1"),
    (_with(["router_id"], "10.0.0"), r"bgp\.router_id: not an IP address"),
    (_with(["peers"], []), r"bgp\.peers: must be a non-empty list"),
    (_with(["peers"], {"address": "10.0.0.1"}), r"bgp\.peers: must be a non-empty list"),
    (_with(["peers", 0, "address"], None), r"bgp\.peers\[0\]\.address: missing"),
    (_with(["peers", 0, "address"], "router"), r"bgp\.peers\[0\]\.address: not an IP"),
    (_with(["peers", 0, "asn"], 2**32), r"bgp\.peers\[0\]\.asn: must be an AS number"),
    (_with(["peers", 0, "hold_time"], 2), r"bgp\.peers\[0\]\.hold_time: .*minimum is 3"),
    (_with(["peers", 0, "hold_time"], 70000), r"bgp\.peers\[0\]\.hold_time: .*not 70000"),
    (_with(["peers", 0, "keepalive"], 3), r"bgp\.peers\[0\]\.keepalive: 3 s must be shorter"),
    (_with(["peers", 0, "password"], 'a"b'), r"bgp\.peers\[0\]\.password: .*except"),
    (_with(["peers", 0, "password"], "x\ny"), r"bgp\.peers\[0\]\.password: .*except"),
    (_with(["peers", 0, "password"], "x" * 81), r"bgp\.peers\[0\]\.password: .*80 bytes"),
    (_with(["peers", 0, "password"], ""), r"bgp\.peers\[0\]\.password: must be a non-empty"),
    (_with(["peers", 0, "multihop"], 256), r"bgp\.peers\[0\]\.multihop: must be"),
    (_with(["peers", 0, "bfd"], "yes"), r"bgp\.peers\[0\]\.bfd: must be true or false"),
    (_with(["peers", 0, "multihop"], 2), r"bgp\.peers\[0\]\.source_address: BFD on a multihop"),
    (_with(["peers", 0, "source_address"], "fd00::1"),
     r"bgp\.peers\[0\]\.source_address: fd00::1 is not of the family of the peer's"),
    (_with(["peers", 0, "port"], 179), r"bgp\.peers\[0\]\.port: unknown setting"),
    (_with(["peers", 0], "10.0.0.1"), r"bgp\.peers\[0\]: must be a mapping"),
    (_with(["peers"], [EXAMPLE["peers"][0]] * 2), r"bgp\.peers\[1\]\.address: .* twice"),
    (_with(["communities"], ["64512:70000"]), r"bgp\.communities\[0\]: 64512:70000: every"),
    (_with(["communities"], ["no-export"]), r"bgp\.communities\[0\]: a community is"),
    (_with(["communities"], "64512:100"), r"bgp\.communities: must be a list"),
    (_with(["neighbours"], []), r"bgp\.neighbours: unknown setting"),
    (_with(["bfd_interval_ms"], 1), r"bgp\.bfd_interval_ms: must be milliseconds 10-60000"),
]


@pytest.mark.parametrize("data,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_each_bad_field_is_one_line_naming_it(data, message):
    with pytest.raises(BgpError) as caught:
        BgpSettings.from_dict(data)
    text = str(caught.value)
    assert "\n" not in text
    assert re.match(message, text), text


@pytest.mark.parametrize("data,message", BAD, ids=[str(i) for i in range(len(BAD))])
def test_the_config_file_is_refused_in_the_same_words(data, message):
    """pyxlb/config.py checks the section with the same schema: what the schema refuses,
    both refuse with one message; the rest (an address that does not parse, keepalive
    above the hold time...) is left to BgpSettings."""
    with pytest.raises(BgpError) as caught:
        BgpSettings.from_dict(data)
    doc = {"announce": {"mode": "bgp", "bgp": data}, "vips": []}
    if schema.problem(data) is None:
        assert config.state_from_data(doc, "lb.yaml") == config.state_from_data({"vips": []})
    else:
        with pytest.raises(config.ConfigError) as refused:
            config.state_from_data(doc, "lb.yaml")
        assert str(refused.value) == f"lb.yaml: announce.{caught.value}"


def test_an_integer_written_as_a_float_is_refused():
    with pytest.raises(BgpError, match=r"^bgp\.peers\[0\]\.hold_time: must be 0 .*not 3\.0$"):
        BgpSettings.from_dict(_with(["peers", 0, "hold_time"], 3.0))
    with pytest.raises(BgpError, match=r"^BGP peer 10\.0\.0\.1 asn: must be an AS number"):
        BgpPeer(ipaddress.ip_address("10.0.0.1"), 64512.0)


def test_settings_from_bgppeer_specs():
    specs = [{"peerAddress": "10.0.0.1", "peerASN": 64512, "myASN": 64513, "bfd": True,
              "holdTime": 9, "password": "pw", "communities": ["64512:7"]},
             {"peerAddress": "2001:db8::1", "peerASN": 64512, "myASN": 64513,
              "ebgpMultihop": 2}]
    s = BgpSettings.from_crd(specs, node="n1", router_id="10.0.0.11")
    assert s.asn == 64513 and s.node == "n1" and s.families == {4, 6}
    assert s.peers[0] == BgpPeer(ipaddress.ip_address("10.0.0.1"), 64512, password="pw",
                                 bfd=True, hold_time=9, communities=((64512, 7),))
    assert s.peers[1].multihop == 2 and s.peers[1].hold_time == 3

    with pytest.raises(BgpError, match=r"disagree on this node's AS number"):
        BgpSettings.from_crd([specs[0], {**specs[1], "myASN": 1}], router_id="10.0.0.11")
    with pytest.raises(BgpError, match=r"^BGPPeer\[0\] \(10\.0\.0\.1\)\.spec\.holdTime: "):
        BgpSettings.from_crd([{**specs[0], "holdTime": 1}], router_id="10.0.0.11")
    with pytest.raises(BgpError, match=r"named by two BGPPeers"):
        BgpSettings.from_crd([specs[0], specs[0]], router_id="10.0.0.11")

    far = {**specs[0], "ebgpMultihop": 3}
    with pytest.raises(BgpError, match=r"^BGPPeer\[0\] \(10\.0\.0\.1\)\.spec\.bfd: BFD on a "
                                       r"multihop session needs the session's local address"):
        BgpSettings.from_crd([far], router_id="10.0.0.11")
    s = BgpSettings.from_crd([far], router_id="10.0.0.11",
                             local_addresses=["2001:db8::11", "10.0.0.11"])
    assert s.peers[0].source_address == ipaddress.ip_address("10.0.0.11")


def test_a_state_dir_too_long_for_a_socket_is_refused(tmp_path):
    with pytest.raises(BgpError, match=r"^bgp\.state_dir: .* too long"):
        BirdSpeaker(str(tmp_path / ("d" * 120)))


# -- the announcer without a daemon ---------------------------------------------------------

def test_a_missing_bird_is_give_up_with_the_reason(tmp_path):
    s = settings(state_dir=str(tmp_path / "bird"), bird=str(tmp_path / "no-bird"))
    announcer = BgpAnnouncer(s)
    assert announcer.announce(V4) is Result.GIVE_UP
    assert "no-bird: not an executable file" in announcer.last_error
    assert announcer.announced() == frozenset()
    assert not (tmp_path / "bird" / "bird.conf").exists()   # nothing half-done

    named = BgpAnnouncer(settings(state_dir=str(tmp_path / "b2"), bird="no-such-bird"))
    assert named.sync([V4]) == {V4: Result.GIVE_UP}
    assert "install BIRD 2 (the Debian package bird2)" in named.last_error
    assert named.sync([V4]) == {}               # given up: not retried every tick
    assert named.sync([V4, ipaddress.ip_address("192.0.2.11")]) != {}   # a change is


def test_an_address_of_a_family_without_peers_is_refused_once(tmp_path):
    announcer = BgpAnnouncer(settings(state_dir=str(tmp_path / "bird"),
                                      bird=str(tmp_path / "no-bird")))
    assert announcer.sync([V6]) == {V6: Result.GIVE_UP}
    assert "no IPv6 BGP peer" in announcer.last_error
    assert announcer.sync([V6]) == {}           # already said: not every tick again
    assert announcer.announce(V6) is Result.GIVE_UP
