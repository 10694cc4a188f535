"""L2 announcement on real sockets, in a namespace the test makes (tests/conftest.py
`netns`: veth0 <-> veth1): heartbeats between two Memberships, the gratuitous ARP and
neighbour advertisement frames as the peer end of a veth receives them, and what a Linux
neighbour table does with them."""

import contextlib
import ipaddress
import select
import socket
import subprocess
import threading
import time

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from pyxlb import netns as pyxlb_netns
from pyxlb.announce import Result
from pyxlb.announce.l2 import GARP_SCHEDULE, L2Announcer, L2Error, Membership

INTERVAL, DEAD_AFTER = 0.05, 0.3
SLACK = 0.4         # thread wake-ups on a loaded, shared 2-core machine
VIP4, VIP6 = "10.99.0.10", "fd99::10"
OLD_MAC = "02:00:00:00:00:99"
ETH_P_ALL = 0x0003


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check).stdout


@pytest.fixture
def ns(netns):
    """The fixture's namespace with lo up and an address on veth1 (the "peer" end)."""
    ip("-n", netns, "link", "set", "lo", "up")
    ip("-n", netns, "addr", "add", "10.99.0.2/24", "dev", "veth1")
    ip("-n", netns, "addr", "add", "fd99::2/64", "dev", "veth1", "nodad")
    return netns


class Recorder:
    """Membership callbacks, with the time each came."""

    def __init__(self):
        self.changes, self.seen = [], []
        self.cond = threading.Condition()

    def change(self, alive):
        with self.cond:
            self.changes.append((time.monotonic(), alive))
            self.cond.notify_all()

    def seen_by(self, peer):
        with self.cond:
            self.seen.append((time.monotonic(), peer))
            self.cond.notify_all()

    def wait_for(self, alive, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.changes or self.changes[-1][1] != alive:
                left = deadline - time.monotonic()
                assert left > 0, f"live set is {self.changes[-1:]} after {timeout} s, " \
                                 f"not {sorted(alive)}"
                self.cond.wait(left)
            return self.changes[-1][0]


@contextlib.contextmanager
def member(ns, me, addr, peers, rec=None, **kw):
    """A started Membership bound to `addr` inside namespace `ns`, stopped afterwards."""
    rec = rec or Recorder()
    kw = {"interval": INTERVAL, "dead_after": DEAD_AFTER, "port": 9744, **kw}
    m = Membership(me, peers, bind=addr, on_change=rec.change, on_seen_by=rec.seen_by, **kw)
    with pyxlb_netns.enter(ns):
        m.start(wait=False)
    try:
        yield m, rec
    finally:
        m.stop()


def l2_threads():
    return [t.name for t in threading.enumerate() if t.name.startswith("l2-")]


@pytest.mark.parametrize("a_addr,b_addr", [("127.0.0.1", "127.0.0.2"), ("::1", "fd99::2")],
                         ids=["ipv4", "ipv6"])
def test_two_members_see_each_other_and_a_stop(ns, a_addr, b_addr):
    with member(ns, "a", a_addr, {"b": b_addr}) as (a, ra):
        with member(ns, "b", b_addr, {"a": a_addr}) as (b, rb):
            assert a.wait_settled(2) and b.wait_settled(2)
            ra.wait_for({"a", "b"}, 2)
            rb.wait_for({"a", "b"}, 2)
            time.sleep(3 * INTERVAL)
            # a few heartbeats heard (bounded: on a loaded machine 3 intervals may hold fewer)
            end = time.monotonic() + 2
            while a.status()["counters"]["received"] <= 3 and time.monotonic() < end:
                time.sleep(INTERVAL)
            assert a.status()["peers"]["b"]["hears_us"] and b.status()["peers"]["a"]["hears_us"]
            stopped = time.monotonic()
        died = ra.wait_for({"a"}, DEAD_AFTER + INTERVAL + 2)
        assert died - stopped <= DEAD_AFTER + INTERVAL + SLACK, \
            f"a saw b dead {died - stopped:.3f} s after it stopped"
        assert died - stopped >= DEAD_AFTER - INTERVAL
        status = a.status()
        assert status["counters"]["received"] > 3 and not status["counters"].get("rejected")
    assert l2_threads() == []


def test_leaving_is_seen_at_once(ns):
    with member(ns, "a", "127.0.0.1", {"b": "127.0.0.2"}, dead_after=2.0) as (a, ra):
        b = Membership("b", {"a": "127.0.0.1"}, bind="127.0.0.2", interval=INTERVAL,
                       dead_after=2.0)
        with pyxlb_netns.enter(ns):
            b.start(wait=True)
        ra.wait_for({"a", "b"}, 3)
        left = time.monotonic()
        b.stop(leave=True)
        died = ra.wait_for({"a"}, 2)
        assert died - left < INTERVAL + SLACK


def test_a_member_with_another_key_is_not_heard(ns):
    with member(ns, "a", "127.0.0.1", {"b": "127.0.0.2"}, key="k1") as (a, ra):
        with member(ns, "b", "127.0.0.2", {"a": "127.0.0.1"}, key="k2") as (b, rb):
            ra.wait_for({"a"}, 2)
            time.sleep(5 * INTERVAL)
            assert a.alive() == {"a"} and b.alive() == {"b"}
            assert a.status()["counters"]["rejected"] >= 3
            assert "does not match" in a.status()["last_rejected"]


def test_a_restarted_member_is_taken_without_a_flap(ns):
    with member(ns, "a", "127.0.0.1", {"b": "127.0.0.2"}, dead_after=1.0) as (a, ra):
        with member(ns, "b", "127.0.0.2", {"a": "127.0.0.1"}, dead_after=1.0) as (b, rb):
            ra.wait_for({"a", "b"}, 2)
        with member(ns, "b", "127.0.0.2", {"a": "127.0.0.1"}, dead_after=1.0) as (b2, rb2):
            rb2.wait_for({"a", "b"}, 2)
            time.sleep(3 * INTERVAL)
            assert b2.status()["peers"]["a"]["hears_us"]
            assert a.status()["counters"]["restarts"] == 1
            assert [alive for _, alive in ra.changes] == [{"a", "b"}]


def nft(ns, script):
    """Run an nftables script in namespace `ns`."""
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, text=True,
                   check=True, capture_output=True)


def test_after_a_partition_each_side_learns_the_other_hears_it_again(ns):
    """a's heartbeats to b are dropped for a while (a one-way partition): b gives a up and
    tells a so (ack 0); when they flow again, a hears from b that b hears it: SeenBy, the
    cue to announce its addresses again, which b had taken over meanwhile."""
    with member(ns, "a", "127.0.0.1", {"b": "127.0.0.2"}) as (a, ra):
        with member(ns, "b", "127.0.0.2", {"a": "127.0.0.1"}) as (b, rb):
            rb.wait_for({"a", "b"}, 2)
            time.sleep(3 * INTERVAL)
            seen_before = len(ra.seen)
            nft(ns, "table ip l2test {\n chain out {\n type filter hook output priority 0;\n"
                    " ip saddr 127.0.0.1 ip daddr 127.0.0.2 udp dport 9744 drop\n }\n}\n")
            rb.wait_for({"b"}, DEAD_AFTER + 1)
            assert a.alive() == {"a", "b"}          # a still hears b ...
            time.sleep(3 * INTERVAL)
            assert not a.status()["peers"]["b"]["hears_us"]     # ... and knows b lost it
            nft(ns, "delete table ip l2test")
            healed = time.monotonic()
            rb.wait_for({"a", "b"}, 1)
            deadline = healed + 1
            with ra.cond:
                while len(ra.seen) == seen_before:
                    assert time.monotonic() < deadline, "a never learnt b hears it again"
                    ra.cond.wait(0.05)
            assert ra.seen[-1][1] == "b"
            assert [alive for _, alive in ra.changes] == [{"a", "b"}]


def test_peers_join_and_leave_without_a_restart(ns):
    with member(ns, "a", "127.0.0.1", {}) as (a, ra):
        ra.wait_for({"a"}, 2)
        with member(ns, "b", "127.0.0.2", {"a": "127.0.0.1"}) as (b, rb):
            a.set_peers({"b": "127.0.0.2"})
            ra.wait_for({"a", "b"}, 2)
            incarnation = a.incarnation
            a.set_peers({})
            ra.wait_for({"a"}, 1)
            rb.wait_for({"b"}, DEAD_AFTER + 1)      # a no longer sends to b
            assert a.incarnation == incarnation


def test_the_port_in_use_is_one_clear_error(ns):
    with member(ns, "a", "127.0.0.1", {"b": "127.0.0.2"}):
        twin = Membership("a", {"b": "127.0.0.2"}, bind="127.0.0.1")
        with pyxlb_netns.enter(ns):
            with pytest.raises(L2Error, match="heartbeat socket 127.0.0.1 port 9744"):
                twin.start(wait=False)


# -- frames on the wire ------------------------------------------------------------------

@contextlib.contextmanager
def capture(ns, iface="veth1"):
    """An AF_PACKET socket receiving every frame that arrives on `iface`."""
    with pyxlb_netns.enter(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        s.bind((iface, 0))
        yield s
    finally:
        s.close()


def frames(sock, want, timeout, kind):
    """(arrival time, scapy frame) of frames of `kind` (ARP / ICMPv6ND_NA) until `want`
    came or `timeout` passed."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        data, addr = sock.recvfrom(65535)
        if addr[2] == socket.PACKET_OUTGOING:
            continue
        p = Ether(data)
        if kind in p:
            got.append((time.monotonic(), p))
    return got


@pytest.fixture
def announcer(ns):
    with pyxlb_netns.enter(ns):
        a = L2Announcer("veth0")
    try:
        yield a
    finally:
        a.close()
    assert l2_threads() == []


def test_gratuitous_arp_as_received(ns, announcer):
    mac = announcer.mac_text
    assert mac == ip("-n", ns, "-br", "link", "show", "veth0").split()[2]
    with capture(ns) as cap:
        started = time.monotonic()
        assert announcer.announce(ipaddress.ip_address(VIP4)) is Result.OK
        assert time.monotonic() - started < 0.05, "announce() waited for the sends"
        got = frames(cap, 2 * len(GARP_SCHEDULE), 2.0, ARP)
    assert len(got) == 2 * len(GARP_SCHEDULE)
    ops = []
    for _, p in got:
        a = p[ARP]
        assert p.dst == "ff:ff:ff:ff:ff:ff" and p.src == mac and a.hwsrc == mac
        assert a.psrc == a.pdst == VIP4
        assert a.hwdst == (mac if a.op == 2 else "00:00:00:00:00:00")
        ops.append(a.op)
    assert ops == [1, 2] * len(GARP_SCHEDULE)
    times = [t - got[0][0] for t, _ in got[::2]]
    for t, planned in zip(times, GARP_SCHEDULE):
        assert planned - 0.02 <= t <= planned + SLACK, f"sent at {times}, planned {GARP_SCHEDULE}"
    assert announcer.announced() == {ipaddress.ip_address(VIP4)}


def test_neighbour_advertisement_as_received(ns, announcer):
    mac = announcer.mac_text
    with capture(ns) as cap:
        assert announcer.announce(ipaddress.ip_address(VIP6)) is Result.OK
        got = frames(cap, len(GARP_SCHEDULE), 2.0, ICMPv6ND_NA)
    assert len(got) == len(GARP_SCHEDULE)
    for _, p in got:
        assert p.dst == "33:33:00:00:00:01" and p.src == mac
        ip6, na = p[IPv6], p[ICMPv6ND_NA]
        assert (ip6.src, ip6.dst, ip6.hlim) == (VIP6, "ff02::1", 255)
        assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, VIP6)
        assert p[ICMPv6NDOptDstLLAddr].lladdr == mac
        sent = na.cksum
        del p[ICMPv6ND_NA].cksum
        assert Ether(bytes(p))[ICMPv6ND_NA].cksum == sent


def test_withdraw_stops_what_is_still_planned(ns, announcer):
    with capture(ns) as cap:
        announcer.announce(ipaddress.ip_address(VIP4))
        assert len(frames(cap, 2, 1.0, ARP)) == 2          # the frames at 0 s
        assert announcer.withdraw(ipaddress.ip_address(VIP4)) is Result.OK
        assert frames(cap, 1, GARP_SCHEDULE[-1] + 0.2, ARP) == []
    assert announcer.announced() == frozenset()


def test_refresh_announces_again(ns, announcer):
    announcer.announce(ipaddress.ip_address(VIP6))
    time.sleep(GARP_SCHEDULE[-1] + 0.1)
    with capture(ns) as cap:
        announcer.refresh()
        assert len(frames(cap, len(GARP_SCHEDULE), 2.0, ICMPv6ND_NA)) == len(GARP_SCHEDULE)


@pytest.mark.parametrize("state", ["reachable", "stale", "probe"])
@pytest.mark.parametrize("vip", [VIP4, VIP6], ids=["arp", "na"])
def test_a_linux_neighbour_entry_moves(ns, announcer, vip, state):
    """What the segment's hosts do with it: Linux (arp_accept 0, the default) replaces the
    MAC of an entry it already has, whatever its state, and makes it STALE (so it is
    confirmed by unicast before long). It creates no entry: a host without one asks, and
    the XDP responder answers."""
    ip("-n", ns, "neigh", "replace", vip, "lladdr", OLD_MAC, "dev", "veth1", "nud", state)
    announcer.announce(ipaddress.ip_address(vip))
    deadline = time.monotonic() + 1.0
    while True:
        entry = ip("-n", ns, "neigh", "show", vip, "dev", "veth1").split()
        if announcer.mac_text in entry or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert entry[1:4] == ["lladdr", announcer.mac_text, "STALE"], entry


def test_no_entry_is_created(ns, announcer):
    announcer.announce(ipaddress.ip_address(VIP4))
    announcer.announce(ipaddress.ip_address(VIP6))
    time.sleep(0.2)
    assert ip("-n", ns, "neigh", "show", "dev", "veth1", VIP4).strip() == ""
    assert ip("-n", ns, "neigh", "show", "dev", "veth1", VIP6).strip() == ""


def test_link_down_is_retry_and_not_recorded(ns, announcer):
    ip("-n", ns, "link", "set", "veth0", "down")
    assert announcer.announce(ipaddress.ip_address(VIP4)) is Result.RETRY
    assert announcer.announced() == frozenset()
    ip("-n", ns, "link", "set", "veth0", "up")
    deadline = time.monotonic() + 2
    while not announcer.link_ready():       # the carrier comes back a moment later
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert announcer.announce(ipaddress.ip_address(VIP4)) is Result.OK


def test_close_withdraws(ns):
    with pyxlb_netns.enter(ns):
        a = L2Announcer("veth0")
    a.announce(ipaddress.ip_address(VIP4))
    with capture(ns) as cap:
        a.close()
        # a frame sent just before close() returned may still be on its way through the
        # veth's backlog: let those arrive and drop them; none may come after
        time.sleep(0.05)
        while select.select([cap], [], [], 0)[0]:
            cap.recv(65535)
        assert frames(cap, 1, GARP_SCHEDULE[-1] + 0.2, ARP) == []
    assert a.announced() == frozenset() and l2_threads() == []
    assert a.announce(ipaddress.ip_address(VIP4)) is Result.GIVE_UP


@pytest.mark.parametrize("iface,fault", [("nope0", "no interface named 'nope0'"),
                                         ("lo", "not an Ethernet interface")])
def test_bad_interface(ns, iface, fault):
    with pyxlb_netns.enter(ns):
        with pytest.raises(L2Error, match=fault):
            L2Announcer(iface)
