"""L2 announcement, the pure parts: the heartbeat format, the liveness state machine on a
clock the test moves by hand, who owns which address, the frames, the announce flags."""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from pyxlb.announce import rendezvous
from pyxlb.announce.l2 import (
    DEAD_AFTER, FLAG_HMAC, Change, Heartbeat, HeartbeatError, L2Error, Liveness,
    Membership, SeenBy, announcement_frames, decode, encode, garp, owned, unsolicited_na,
    with_announce_on)
from pyxlb.state import Backend, DesiredState, Vip, VipKey

KEY = b"shared secret"
MAC = "02:00:5e:10:00:01"


# -- heartbeat format -------------------------------------------------------------------

names = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1,
                max_size=60).filter(lambda s: 0 < len(s.encode()) <= 253)
u64 = st.integers(min_value=0, max_value=2**64 - 1)


@settings(max_examples=300, deadline=None)
@given(node=names, inc=st.integers(min_value=1, max_value=2**64 - 1), seq=u64, ack=u64,
       leaving=st.booleans(), key=st.sampled_from([None, KEY, "text key"]))
def test_heartbeat_round_trip(node, inc, seq, ack, leaving, key):
    hb = Heartbeat(node, inc, seq, ack, leaving)
    assert decode(encode(hb, key), key) == hb


def test_heartbeat_layout_is_fixed():
    """The format is a wire contract between versions of the agent: pin it."""
    data = encode(Heartbeat("lb1", 0x0102030405060708, 9, 0))
    assert data == (b"XLBh" + bytes([1, 0, 3, 0]) + bytes(range(1, 9)) + (9).to_bytes(8, "big")
                    + bytes(8) + b"lb1")
    signed = encode(Heartbeat("lb1", 1, 1), KEY)
    assert signed[5] == FLAG_HMAC and len(signed) == 32 + 3 + 16


def _good(key=None):
    return encode(Heartbeat("lb2", 77, 5, 0), key)


JUNK = {
    "empty": b"",
    "short": _good()[:31],
    "wrong magic": b"XLBH" + _good()[4:],
    "wrong version": _good()[:4] + b"\x02" + _good()[5:],
    "unknown flag": _good()[:5] + b"\x80" + _good()[6:],
    "truncated name": _good()[:-1],
    "trailing byte": _good() + b"\0",
    "no name": _good()[:6] + b"\0" + _good()[7:32],
    "zero incarnation": _good()[:8] + bytes(8) + _good()[16:],
    "name not utf-8": _good()[:32] + b"\xff\xfe\xfd",
    "dns packet": bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001"),
}


@pytest.mark.parametrize("data", JUNK.values(), ids=JUNK.keys())
def test_junk_is_rejected(data):
    with pytest.raises(HeartbeatError):
        decode(data)


@pytest.mark.parametrize("data,key,fault", [
    (_good(KEY), b"another key", "does not match"),
    (_good(), KEY, "unsigned"),
    (_good(KEY), None, "no key"),
], ids=["wrong key", "unsigned with a key", "signed without a key"])
def test_signature_is_checked(data, key, fault):
    with pytest.raises(HeartbeatError, match=fault):
        decode(data, key)


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(min_value=0, max_value=32 + 3 + 16 - 1),
       bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_of_a_signed_heartbeat_is_rejected(pos, bit):
    data = bytearray(_good(KEY))
    data[pos] ^= 1 << bit
    with pytest.raises(HeartbeatError):
        decode(bytes(data), KEY)


@pytest.mark.parametrize("hb,key,fault", [
    (Heartbeat("", 1, 1), None, "non-empty"),
    (Heartbeat("x" * 254, 1, 1), None, "at most 253"),
    (Heartbeat("lb1", 2**64, 1), None, "64 bits"),
    (Heartbeat("lb1", 1, -1), None, "64 bits"),
    (Heartbeat("lb1", 1, 1), b"", "key is empty"),
])
def test_encode_refuses_what_cannot_be_sent(hb, key, fault):
    with pytest.raises(L2Error, match=fault):
        encode(hb, key)


# -- liveness ------------------------------------------------------------------------------

def hb(node, inc=100, seq=1, ack=0, key=None, leaving=False):
    return encode(Heartbeat(node, inc, seq, ack, leaving), key)


class Seq:
    """Heartbeats of one run of a peer, numbered in order."""

    def __init__(self, node, inc=100, key=None):
        self.node, self.inc, self.key, self.n = node, inc, key, 0

    def __call__(self, ack=0, leaving=False):
        self.n += 1
        return hb(self.node, self.inc, self.n, ack, self.key, leaving)


def settled(peers=("b", "c"), t=0.0, **kw):
    """A Liveness for node "a" that has heard every peer once at time t (settled)."""
    lv = Liveness("a", peers, incarnation=1000, now=t, **kw)
    runs = {p: Seq(p, key=kw.get("key")) for p in peers}
    events = []
    for p in peers:
        events += lv.receive(runs[p](), t)
    assert lv.settled and events == [Change(frozenset({"a", *peers}))]
    return lv, runs


def test_nothing_is_reported_until_every_peer_is_heard():
    lv = Liveness("a", ["b", "c"], now=0.0)
    assert lv.alive() == {"a"}
    assert lv.receive(hb("b"), 0.1) == []
    assert lv.tick(0.2) == []
    assert lv.alive() == {"a", "b"} and not lv.settled
    assert lv.receive(hb("c"), 0.3) == [Change(frozenset({"a", "b", "c"}))]
    assert lv.tick(0.4) == []


def test_a_silent_peer_is_given_up_after_dead_after_from_the_start():
    lv = Liveness("a", ["b", "c"], dead_after=1.0, now=10.0)
    lv.receive(hb("b"), 10.2)
    assert lv.tick(10.999) == []
    assert lv.tick(11.0) == [Change(frozenset({"a", "b"}))]
    # the late one joins with a change of its own
    assert lv.receive(hb("c"), 11.1) == [Change(frozenset({"a", "b", "c"}))]


def test_alone_is_settled_at_once():
    lv = Liveness("a", [], now=0.0)
    assert lv.tick(0.0) == [Change(frozenset({"a"}))]
    assert lv.outgoing(0.0) == []


def test_a_peer_dies_exactly_dead_after_its_last_heartbeat():
    lv, runs = settled(t=0.0, dead_after=1.0)
    lv.receive(runs["b"](), 2.0)
    lv.receive(runs["c"](), 2.5)
    assert lv.tick(2.999) == []
    assert lv.tick(3.0) == [Change(frozenset({"a", "c"}))]
    assert lv.tick(3.499) == []
    assert lv.tick(3.5) == [Change(frozenset({"a"}))]
    assert lv.alive() == {"a"}
    # and comes back with its next heartbeat
    assert lv.receive(runs["b"](), 4.0) == [Change(frozenset({"a", "b"}))]


def test_a_heartbeat_just_before_the_deadline_keeps_a_peer():
    lv, runs = settled(peers=("b",), dead_after=1.0)
    lv.receive(runs["b"](), 0.999)
    assert lv.tick(1.0) == [] and lv.tick(1.998) == []
    assert lv.tick(1.999) == [Change(frozenset({"a"}))]


def test_a_new_incarnation_is_a_restart_not_a_death():
    lv, runs = settled(peers=("b",))
    for _ in range(50):
        lv.receive(runs["b"](), 0.1)
    restarted = Seq("b", inc=200)
    assert lv.receive(restarted(), 0.5) == []       # seq starts again at 1: accepted, no flap
    assert lv.counters["restarts"] == 1 and lv.alive() == {"a", "b"}
    # the old run's heartbeats (a replay, or a twin) are ignored and keep nothing alive
    assert lv.receive(runs["b"](), 1.4) == []
    assert lv.counters["stale"] == 1
    assert lv.tick(1.5) == [Change(frozenset({"a"}))]


def test_a_smaller_incarnation_is_taken_only_once_the_larger_is_dead():
    """A restart whose wall clock stepped back gets a smaller number: it joins after the old
    run is given up, instead of never."""
    lv, runs = settled(peers=("b",))
    older = Seq("b", inc=50)
    assert lv.receive(older(), 0.5) == [] and lv.counters["stale"] == 1
    assert lv.tick(1.0) == [Change(frozenset({"a"}))]
    assert lv.receive(older(), 1.1) == [Change(frozenset({"a", "b"}))]


def test_reordered_and_replayed_heartbeats_do_not_count():
    lv, runs = settled(peers=("b",))
    first = runs["b"]()
    later = runs["b"]()
    lv.receive(later, 0.2)
    assert lv.receive(first, 0.9) == []     # older seq: ignored, refreshes nothing
    assert lv.receive(later, 0.95) == []    # the same one again
    assert lv.counters["stale"] == 2
    assert lv.tick(1.2) == [Change(frozenset({"a"}))]


def test_a_wrong_signature_is_ignored():
    lv, runs = settled(peers=("b",), key=KEY)
    assert lv.receive(hb("b", 100, 99, key=b"other"), 0.5) == []
    assert lv.receive(hb("b", 100, 100), 0.6) == []     # unsigned
    assert lv.counters["rejected"] == 2 and "unsigned" in lv.last_rejected
    assert lv.tick(1.0) == [Change(frozenset({"a"}))]


def test_strangers_and_own_echoes_are_ignored():
    lv, runs = settled(peers=("b",))
    assert lv.receive(hb("mallory"), 0.5) == []
    assert lv.receive(hb("a", inc=1000, seq=7), 0.5) == []
    assert lv.counters["unknown"] == 1 and lv.counters["own"] == 1
    assert "mallory" in lv.last_rejected
    assert lv.alive() == {"a", "b"}


def test_goodbye_is_a_death_without_waiting():
    lv, runs = settled(peers=("b", "c"))
    assert lv.receive(runs["b"](leaving=True), 0.3) == [Change(frozenset({"a", "c"}))]
    # nothing more of that run counts; the next run does
    assert lv.receive(runs["b"](), 0.4) == []
    assert lv.receive(hb("b", inc=101), 0.5) == [Change(frozenset({"a", "b", "c"}))]


def test_seen_by_when_a_peer_starts_hearing_us_again():
    lv, runs = settled(peers=("b", "c"))
    b = runs["b"]
    assert lv.receive(b(ack=1000), 0.1) == [SeenBy("b")]
    assert lv.receive(b(ack=1000), 0.2) == []               # still hears us: nothing new
    assert lv.receive(b(ack=0), 0.3) == []                  # b lost us (a partition) ...
    assert lv.receive(b(ack=1000), 0.4) == [SeenBy("b")]    # ... and hears us again
    assert lv.receive(b(ack=999), 0.5) == []                # an ack of another run of "a"
    # b dies and comes back hearing us: its return comes first, then that it hears us
    lv.receive(runs["c"](), 1.4)
    assert lv.tick(1.5) == [Change(frozenset({"a", "c"}))]
    assert lv.receive(b(ack=1000), 1.6) == [Change(frozenset({"a", "b", "c"})), SeenBy("b")]


def test_no_seen_by_before_settling():
    lv = Liveness("a", ["b", "c"], incarnation=1000, now=0.0)
    assert lv.receive(hb("b", ack=1000), 0.1) == []
    assert lv.receive(hb("c", ack=1000), 0.2) == [Change(frozenset({"a", "b", "c"}))]


def test_outgoing_acks_the_peers_we_hear():
    lv = Liveness("a", ["b", "c"], incarnation=1000, key=KEY, now=0.0)
    lv.receive(hb("b", inc=555, key=KEY), 0.0)
    first = dict(lv.outgoing(0.0))
    second = dict(lv.outgoing(0.2))
    assert decode(first["b"], KEY) == Heartbeat("a", 1000, 1, 555)
    assert decode(first["c"], KEY) == Heartbeat("a", 1000, 1, 0)
    assert decode(second["b"], KEY).seq == 2
    bye = dict(lv.goodbye())
    assert decode(bye["c"], KEY) == Heartbeat("a", 1000, 3, 0, leaving=True)


def test_peers_change_in_place():
    lv, runs = settled(peers=("b", "c"))
    assert lv.set_peers(["b", "d"], 0.1) == [Change(frozenset({"a", "b"}))]
    assert lv.receive(runs["c"](), 0.2) == [] and lv.counters["unknown"] == 1
    assert lv.receive(hb("d"), 0.3) == [Change(frozenset({"a", "b", "d"}))]
    assert lv.receive(runs["b"](), 0.4) == []       # b kept its state: no restart, no flap
    assert lv.counters["restarts"] == 0
    with pytest.raises(L2Error, match="this node itself"):
        lv.set_peers(["a"], 0.5)


@pytest.mark.parametrize("kw,fault", [
    ({"me": "a", "peers": ["a"]}, "this node itself"),
    ({"me": "", "peers": []}, "non-empty"),
    ({"me": "a", "peers": ["b"], "dead_after": 0}, "positive"),
    ({"me": "a", "peers": ["b"], "incarnation": 0}, "incarnation"),
])
def test_liveness_settings_are_checked(kw, fault):
    me, peers = kw.pop("me"), kw.pop("peers")
    with pytest.raises(L2Error, match=fault):
        Liveness(me, peers, **kw)


@pytest.mark.parametrize("kw,fault", [
    ({"peers": {"b": "10.0.0.300"}}, "peer b: not an IP address"),
    ({"peers": {"b": "lb2.example"}}, "peer b: not an IP address"),
    ({"port": 0}, "port must be 1-65535"),
    ({"port": True}, "port must be 1-65535"),
    ({"interval": 0}, "interval must be a positive"),
    ({"interval": 0.5, "dead_after": 0.5}, "must be longer than"),
    ({"peers": {"b": "fd00::2"}, "bind": "10.0.0.1"}, "IPv4, but some peers are IPv6"),
    ({"key": ""}, "key is empty"),
])
def test_membership_settings_are_checked(kw, fault):
    kw.setdefault("peers", {"b": "10.0.0.2"})
    peers = kw.pop("peers")
    with pytest.raises(L2Error, match=fault):
        Membership("a", peers, **kw)


def test_an_ipv6_peer_needs_an_ipv6_socket():
    m = Membership("a", {"b": "10.0.0.2"})
    with pytest.raises(L2Error, match="peer c: fd00::3 is IPv6, but the heartbeat socket is IPv4"):
        m.set_peers({"b": "10.0.0.2", "c": "fd00::3"})
    assert set(m.peers) == {"b"}


def test_default_timers():
    m = Membership("a", {"b": "10.0.0.2", "c": "fd00::3"})
    assert (m.port, m.interval, m.dead_after) == (9744, 0.2, DEAD_AFTER)
    # one socket for both families: IPv4 peers as mapped addresses
    assert m.bind == "::" and m._dest["b"][0] == "::ffff:10.0.0.2"


# -- ownership -----------------------------------------------------------------------------

V = [ipaddress.ip_address(a) for a in ("192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2")]


def test_owned_examples():
    everyone = {a: {"n1", "n2", "n3"} for a in V}
    assert owned(everyone, {"n1"}, "n1") == set(V)
    assert owned(everyone, {"n2", "n3"}, "n1") == set()        # not alive: owns nothing
    assert owned({V[0]: {"n2"}}, {"n1", "n2"}, "n1") == set()  # not eligible
    assert owned({V[0]: set()}, {"n1"}, "n1") == set()
    split = [owned(everyone, {"n1", "n2", "n3"}, n) for n in ("n1", "n2", "n3")]
    assert set().union(*split) == set(V) and sum(map(len, split)) == len(V)
    for n, mine in zip(("n1", "n2", "n3"), split):
        assert all(rendezvous(a, {"n1", "n2", "n3"}) == n for a in mine)


NODES = [f"node-{i}" for i in range(8)]
ADDRS = [ipaddress.ip_address(f"10.1.{i // 250}.{i % 250 + 1}") for i in range(200)] + \
        [ipaddress.ip_address(f"fd00::{i:x}") for i in range(1, 60)]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_death_moves_only_the_dead_nodes_addresses(data):
    addrs = data.draw(st.lists(st.sampled_from(ADDRS), min_size=1, max_size=60, unique=True))
    eligible = {a: data.draw(st.sets(st.sampled_from(NODES), max_size=len(NODES)))
                for a in addrs}
    alive = data.draw(st.sets(st.sampled_from(NODES), min_size=1))
    dead = data.draw(st.sampled_from(sorted(alive)))
    before = {n: owned(eligible, alive, n) for n in NODES}
    after = {n: owned(eligible, alive - {dead}, n) for n in NODES}
    # every address with a live eligible node has exactly one owner, others none
    for state, live in ((before, alive), (after, alive - {dead})):
        for a in addrs:
            owners = [n for n in NODES if a in state[n]]
            assert len(owners) == (1 if eligible[a] & live else 0)
    assert after[dead] == set()
    for n in NODES:
        if n == dead:
            continue
        assert before[n] <= after[n], f"{n} lost addresses when {dead} died"
        assert after[n] - before[n] <= before[dead], f"{n} took addresses {dead} did not own"


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_returning_node_takes_back_exactly_what_it_had(data):
    addrs = data.draw(st.lists(st.sampled_from(ADDRS), min_size=1, max_size=40, unique=True))
    eligible = {a: set(data.draw(st.sets(st.sampled_from(NODES), min_size=1))) for a in addrs}
    alive = set(data.draw(st.sets(st.sampled_from(NODES), min_size=2)))
    node = data.draw(st.sampled_from(sorted(alive)))
    during = {n: owned(eligible, alive - {node}, n) for n in NODES}
    back = {n: owned(eligible, alive, n) for n in NODES}
    taken_back = set().union(*(during[n] - back[n] for n in NODES if n != node))
    nobodys = {a for a in addrs if not eligible[a] & (alive - {node})}
    # what it owns again is what it had: taken from the others, or what nobody could hold
    assert back[node] == taken_back | (back[node] & nobodys)
    for n in NODES:
        if n != node:
            assert during[n] - back[n] <= back[node] and back[n] <= during[n]


# -- frames --------------------------------------------------------------------------------

@pytest.mark.parametrize("op", [1, 2], ids=["request", "reply"])
def test_gratuitous_arp(op):
    frame = garp(MAC, "10.77.100.10", op)
    assert len(frame) == 60     # padded to the Ethernet minimum
    p = Ether(frame)
    assert p.dst == "ff:ff:ff:ff:ff:ff" and p.src == MAC and p.type == 0x0806
    a = p[ARP]
    assert (a.hwtype, a.ptype, a.hwlen, a.plen, a.op) == (1, 0x0800, 6, 4, op)
    assert a.psrc == a.pdst == "10.77.100.10" and a.hwsrc == MAC
    # Linux takes a reply as gratuitous only when the target MAC is the sender's
    assert a.hwdst == (MAC if op == 2 else "00:00:00:00:00:00")


def test_unsolicited_neighbour_advertisement():
    frame = unsolicited_na(MAC, "fd77:100::10")
    p = Ether(frame)
    assert p.dst == "33:33:00:00:00:01" and p.src == MAC and p.type == 0x86DD
    ip6 = p[IPv6]
    assert (ip6.src, ip6.dst, ip6.hlim, ip6.nh, ip6.plen) == \
        ("fd77:100::10", "ff02::1", 255, 58, 32)
    na = p[ICMPv6ND_NA]
    assert (na.type, na.code, na.R, na.S, na.O, na.tgt) == (136, 0, 0, 0, 1, "fd77:100::10")
    assert p[ICMPv6NDOptDstLLAddr].lladdr == MAC
    rebuilt = IPv6(bytes(ip6))
    del rebuilt[ICMPv6ND_NA].cksum
    assert IPv6(bytes(rebuilt))[ICMPv6ND_NA].cksum == na.cksum


@settings(max_examples=100, deadline=None)
@given(addr=st.integers(min_value=1, max_value=2**128 - 1),
       mac=st.binary(min_size=6, max_size=6))
def test_na_checksum_for_any_address(addr, mac):
    vip = ipaddress.IPv6Address(addr)
    p = Ether(unsolicited_na(mac, vip))
    got = p[ICMPv6ND_NA].cksum
    del p[ICMPv6ND_NA].cksum
    assert Ether(bytes(p))[ICMPv6ND_NA].cksum == got


def test_frames_per_family():
    assert [Ether(f)[ARP].op for f in announcement_frames(MAC, "192.0.2.1")] == [1, 2]
    assert [Ether(f)[ICMPv6ND_NA].tgt for f in announcement_frames(MAC, "2001:db8::1")] == \
        ["2001:db8::1"]


@pytest.mark.parametrize("mac", ["02:00:00:00:00", "zz:00:00:00:00:01", b"\x01" * 5, ""])
def test_bad_mac(mac):
    with pytest.raises(L2Error, match="not a MAC address"):
        garp(mac, "192.0.2.1")


# -- announce flags ------------------------------------------------------------------------

def test_with_announce_on_touches_only_managed_addresses():
    b = (Backend("10.0.0.1"),)
    vips = (Vip(VipKey("192.0.2.1", 80, "tcp"), b),
            Vip(VipKey("192.0.2.1", 443, "tcp"), b, announce=True),
            Vip(VipKey("192.0.2.2", 80, "tcp"), b, announce=True),
            Vip(VipKey("192.0.2.3", 80, "tcp"), b, announce=True))
    state = DesiredState(vips)
    a1, a2, a3 = (ipaddress.ip_address(f"192.0.2.{i}") for i in (1, 2, 3))
    out = with_announce_on(state, {a1}, {a1, a2})
    assert [v.announce for v in out] == [True, True, False, True]
    assert with_announce_on(out, {a1}, {a1, a2}) == out
    assert [v.announce for v in with_announce_on(state, (), {a1, a2, a3})] == [False] * 4
