"""Stateless mode through Datapath.apply against the real maps: a stateless VIP's ring and
its previous owners (xlb_prev_rings) written together, kept while their window lasts and
freed with the ring; chain peers (xlb_chain_peers); the node's chain window; the packets
that carry a previous owner; the commands' errors."""

import errno
import ipaddress
import time

import pytest
from click.testing import CliRunner
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.chain import chain_id
from pyxlb.cli.root import cli
from pyxlb.datapath import Datapath
from pyxlb.datapath.apply import Transaction
from pyxlb.plan import ring_key
from pyxlb.state import Backend, DesiredState, Vip, VipKey

from .pristine import Pristine
from .raw import raw_nexthops

SMALL = {"xlb_flowsets6": 1024, "xlb_flowsets4": 1024}
KEY = VipKey.parse("192.0.2.10:80/tcp")
WEB = ("10.0.1.1", "10.0.1.2", "10.0.1.3")
RING = 1009


def state(*backends, **kw):
    kw.setdefault("stateless", True)
    return DesiredState((Vip(KEY, backends=tuple(Backend(b) for b in backends),
                             ring_size=RING, **kw),))


@pytest.fixture(scope="module")
def _balancer():
    objects = Pristine(Datapath, SMALL)
    yield objects
    objects.close()


@pytest.fixture
def dp(_balancer):
    """The balancer with SMALL maps, as freshly loaded (one load per module: pristine.py)."""
    return _balancer.fresh()


def ring_of(dp):
    rid = dp.layout().ring_ids[ring_key(dp.current_state().vip(KEY))]
    return rid, dp.ring(rid)


def now_units() -> int:
    return time.monotonic_ns() >> L.CHAIN_TIME_SHIFT


def window_units(seconds: int) -> int:
    return (seconds * 1_000_000_000) >> L.CHAIN_TIME_SHIFT


def owner_addresses(dp):
    return {bid: str(a) for a, bid in dp.layout().backend_ids.items()}


def test_removing_a_backend_remembers_it_in_the_slots_that_moved(dp):
    first = dp.apply(state(*WEB))
    rid0, ring0 = ring_of(dp)
    assert first.plan.prev_writes == {rid0: None}
    chains, untils = dp.tables.prev_rings.get(rid0)
    assert len(chains) == RING and not any(chains) and not any(untils)
    names0 = owner_addresses(dp)

    before = now_units()
    dp.apply(state(*WEB[:2]))
    after = now_units()
    rid1, ring1 = ring_of(dp)
    assert rid1 != rid0
    with pytest.raises(KeyError):           # freed with its ring
        dp.tables.prev_rings.get(rid0)
    chains, untils = dp.tables.prev_rings.get(rid1)
    gone = chain_id(WEB[2])
    moved = [i for i in range(RING) if ring0[i] != ring1[i]]
    assert moved and all(names0[ring0[i]] == WEB[2] or chains[i] for i in moved)
    for i in range(RING):
        if i in moved:
            assert chains[i] == chain_id(names0[ring0[i]])
            assert before + window_units(L.CHAIN_WINDOW_DEFAULT) <= untils[i] \
                <= after + window_units(L.CHAIN_WINDOW_DEFAULT) + 1
        else:
            assert (chains[i], untils[i]) == (0, 0)
    # every slot the removed backend held moved, and remembers it
    assert {i for i in range(RING) if names0[ring0[i]] == WEB[2]} \
        <= {i for i in range(RING) if chains[i] == gone}


def test_the_node_chain_window_sets_the_time(dp):
    dp.configure(chain_window=30)
    assert dp.chain_window() == 30 and dp.config()["chain_window"] == 30
    dp.apply(state(*WEB))
    start = now_units()
    dp.apply(state(*WEB[:2]))
    _, untils = dp.tables.prev_rings.get(ring_of(dp)[0])
    times = {u for u in untils if u}
    assert times and all(start + window_units(30) - 1 <= u <= start + window_units(30) + 2
                         for u in times)
    dp.configure(chain_window=0)
    assert dp.chain_window() == L.CHAIN_WINDOW_DEFAULT


def test_a_second_change_keeps_the_first_ones_entries_in_the_window(dp):
    dp.apply(state(*WEB))
    _, ring0 = ring_of(dp)
    dp.apply(state(*WEB[:2]))
    rid1, ring1 = ring_of(dp)
    c1, u1 = dp.tables.prev_rings.get(rid1)
    names = owner_addresses(dp)
    dp.apply(state(*WEB[:2], "10.0.1.4"))          # a backend comes
    rid2, ring2 = ring_of(dp)
    c2, u2 = dp.tables.prev_rings.get(rid2)
    kept = [i for i in range(RING) if ring1[i] == ring2[i] and c1[i]]
    moved = [i for i in range(RING) if ring1[i] != ring2[i]]
    assert kept and moved
    assert all((c2[i], u2[i]) == (c1[i], u1[i]) for i in kept)
    assert all(c2[i] == chain_id(names[ring1[i]]) for i in moved)
    assert all((c2[i], u2[i]) == (0, 0) for i in range(RING)
               if ring1[i] == ring2[i] and not c1[i])


def test_raw_expired_previous_owners_are_not_carried_over(dp):
    """A slot whose time passed is not carried into the next ring (the rule's expiry, with
    a time written in the past by hand: raw)."""
    dp.apply(state(*WEB))
    dp.apply(state(*WEB[:2]))
    rid1, ring1 = ring_of(dp)
    chains, untils = dp.tables.prev_rings.get(rid1)
    past = [u and now_units() - 1 for u in untils]
    dp.tables.prev_rings.put_all({rid1: (chains, past)})()
    dp.apply(state(*WEB[:2], "10.0.1.4"))
    rid2, ring2 = ring_of(dp)
    c2, _ = dp.tables.prev_rings.get(rid2)
    assert all(c2[i] == 0 for i in range(RING) if ring1[i] == ring2[i])


def test_a_vip_leaving_stateless_mode_loses_its_previous_owners(dp):
    dp.apply(state(*WEB))
    dp.apply(state(*WEB[:2]))
    rid, _ = ring_of(dp)
    result = dp.apply(state(*WEB[:2], stateless=False))
    assert result.plan.prev_deletes == {rid}
    assert not dp.current_state().vip(KEY).stateless
    assert dp.current_state().vip(KEY).flow_table
    rid_flows, _ = ring_of(dp)
    for r in (rid, rid_flows):
        with pytest.raises(KeyError):
            dp.tables.prev_rings.get(r)
    # and coming back starts with no previous owners
    dp.apply(state(*WEB[:2]))
    chains, _ = dp.tables.prev_rings.get(ring_of(dp)[0])
    assert not any(chains)


def test_a_failed_apply_puts_the_ring_and_its_previous_owners_back(dp, monkeypatch):
    dp.apply(state(*WEB))
    dp.apply(state(*WEB[:2]))
    rid, ring = ring_of(dp)
    prev = dp.tables.prev_rings.get(rid)
    peers = dp.tables.chain_peers.read()

    def fail(*args, **kw):      # freeing the old rings, after the new ones went in
        raise OSError(errno.EIO, "injected")
    monkeypatch.setattr(Transaction, "delete_inners", fail)
    with pytest.raises(OSError, match="injected"):
        dp.apply(state(WEB[0]))
    monkeypatch.undo()
    assert dp.layout(refresh=True).state == state(*WEB[:2])
    assert ring_of(dp) == (rid, ring) and dp.tables.prev_rings.get(rid) == prev
    assert dp.tables.chain_peers.read() == peers
    assert [r for r in range(dp.maps.prev_rings.max_entries)
            if dp.maps.prev_rings.get(r) is not None] == [rid]


def test_chain_peers_hold_the_stateless_vips_backends(dp):
    other = Vip(VipKey.parse("[2001:db8::10]:80/tcp"), backends=(Backend("2001:db8:1::1"),))
    dp.apply(DesiredState((other,)))
    assert dp.tables.chain_peers.read() == {}           # no stateless VIP: no chaining
    dp.apply(DesiredState(state(*WEB).vips + (other,)))
    want = {chain_id(a): ipaddress.ip_address(a) for a in WEB}
    assert dp.tables.chain_peers.read() == want
    dp.apply(state(*WEB[:2]))
    assert dp.tables.chain_peers.read() == {chain_id(a): ipaddress.ip_address(a)
                                            for a in WEB[:2]}


def test_reapplying_writes_nothing_and_a_restart_reads_it_all_back(bpffs_dir):
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as d:
        d.apply(state(*WEB))
        d.apply(state(*WEB[:2]))
        epoch = d.tables.epoch.read()
        again = d.apply(state(*WEB[:2]))
        assert again.plan.empty and again.writes == 0 and again.seconds is None
        assert d.tables.epoch.read() == epoch
        rid, _ = ring_of(d)
        prev = d.tables.prev_rings.get(rid)
    with Datapath.open(bpffs_dir) as d:
        assert d.current_state() == state(*WEB[:2])
        assert d.tables.chain_peers.read() == {chain_id(a): ipaddress.ip_address(a)
                                               for a in WEB[:2]}
        assert d.apply(state(*WEB[:2])).plan.empty
        assert d.tables.prev_rings.get(rid) == prev
        # raw: an empty peer map under a state with backends (a datapath upgraded from a
        # release without one): the next process's first apply fills it, once
        d.tables.chain_peers.clear_all(chain_id(a) for a in WEB[:2])
    with Datapath.open(bpffs_dir) as d:
        first = d.apply(state(*WEB[:2]))
        assert first.plan.peer_writes.keys() == {chain_id(a) for a in WEB[:2]}
        assert not first.plan.vip_writes and not first.plan.ring_writes
        assert len(d.tables.chain_peers.read()) == 2
        assert d.apply(state(*WEB[:2])).plan.empty


def test_packets_of_moved_slots_carry_the_previous_owner(dp):
    """Mid-connection segments (ACK, DF) after the change: those that hash to a slot that
    moved leave with the old owner's chain id in the outer IPv4 id."""
    dp.configure(src4="10.255.0.0/16")
    dp.apply(state(*WEB))
    dp.apply(state(*WEB[:2]))
    raw_nexthops(dp)
    gone, carried = chain_id(WEB[2]), set()
    for sport in range(20000, 20200):
        frame = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                      / IP(src="198.51.100.7", dst="192.0.2.10", flags="DF")
                      / TCP(sport=sport, dport=80, flags="A"))
        action, out = dp.run(frame)
        assert action == _bpf.XDP_TX
        outer = Ether(out)[IP]
        assert outer.dst in WEB[:2]
        if outer.id:
            carried.add(outer.id)
    assert gone in carried and carried <= {chain_id(a) for a in WEB}


@pytest.mark.parametrize("args, match", [
    (["vip", "add", "192.0.2.10:53/udp", "--stateless"],
     "stateless mode is for TCP VIPs only"),
    (["vip", "add", "192.0.2.10:80/tcp", "--stateless", "--mode", "l2"],
     "stateless mode needs mode ipip"),
    (["vip", "add", "192.0.2.10:80/tcp", "--stateless", "--no-flow-table"],
     "--stateless and --no-flow-table exclude each other"),
    (["attach", "veth0", "--chain-window", "-1"], "'--chain-window'"),
    (["attach", "veth0", "--chain-window", "86401"], "'--chain-window'"),
    (["decap", "attach", "veth0", "--vip", "192.0.2.10", "--peer", "10.0.0.1/24"],
     "not an IPv4 or IPv6 address"),
])
def test_the_commands_refuse_bad_input_in_one_line(tmp_path, args, match):
    """Checked before any datapath is opened or made (none is at the pin dir)."""
    pin = tmp_path / "none"
    result = CliRunner().invoke(cli, ["--pin-dir", str(pin), *args], prog_name="pyxlb")
    assert result.exit_code == 2 and result.stdout == "", result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyxlb: error: "), result.stderr
    assert match in lines[0], lines
    assert not pin.exists()


def test_a_kubernetes_nodes_chain_peers_are_every_node(bpffs_dir):
    """What the agent applies for a stateless Service (pyxlb.k8s.translate), with
    peers="set": the chain peers are every Node's address of the VIP's family, also one
    that is no backend (excluded by label: it may still own connections from before); a
    restarted process, whose read-back state cannot tell them apart, applies the same state
    without a write; with the annotation gone, no VIP is stateless and the table empties."""
    from pyxlb.k8s import objects as o
    from pyxlb.k8s import translate as tr

    names = ("n1", "n2", "n3", "n4")
    addrs = {n: (f"10.0.9.{i}", f"fd00:9::{i}") for i, n in enumerate(names, 1)}
    nodes = [o.node(n, addrs[n], labels={tr.EXCLUDE_LABEL: ""} if n == "n4" else None)
             for n in names]
    svc = o.service("web", annotations={tr.FLOW_TABLE_ANNOTATION: "stateless"})
    svc["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}}
    settings = tr.Settings("n1", ring_size=RING)
    wanted = tr.translate([svc], [], nodes, settings).state
    every = {ipaddress.ip_address(pair[0]) for pair in addrs.values()}    # an IPv4 VIP
    vip = wanted.vip("192.0.2.10:80/tcp")
    assert vip.stateless and "10.0.9.4" not in {str(b.address) for b in vip.backends}
    assert wanted.peers == every
    table = {chain_id(a): a for a in every}
    assert len(table) == len(every)                 # no two share an id: all named
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as d:
        d.apply(wanted, peers="set")
        assert d.tables.chain_peers.read() == table
    with Datapath.open(bpffs_dir) as d:
        assert d.current_state().peers == frozenset()     # not read back
        assert d.apply(wanted, peers="set").plan.empty
        assert d.current_state() == wanted                # known once compared
        assert d.apply(wanted, peers="set").plan.empty
        # a node leaves the cluster: its id alone is cleared
        fewer = tr.translate([svc], [], nodes[:3], settings).state
        plan = d.apply(fewer, peers="set").plan
        assert plan.peer_clears == {chain_id(addrs["n4"][0])} and not plan.peer_writes
        del svc["metadata"]["annotations"]
        plain = tr.translate([svc], [], nodes, settings).state
        assert plain.peers == frozenset() and not plain.vips[0].stateless
        d.apply(plain, peers="set")
        assert d.tables.chain_peers.read() == {}


def test_an_apply_by_hand_keeps_the_agents_chain_peers(bpffs_dir):
    """The CLI (peers="keep", the default) on a node whose agent set every Node as a chain
    peer: in the agent's own process, or in another one that reads the table back (where
    the extras are the addresses that no stateless VIP lists), an edit of the VIPs leaves
    the extras as they were, and the agent's next apply finds nothing to change. An
    address the edit drops as a stateless VIP's backend goes, unless it is an extra."""
    extras = ("10.0.9.1", "10.0.9.2", "10.0.9.3")
    agents = state(*WEB).with_peers(extras)
    every = {chain_id(a): ipaddress.ip_address(a) for a in (*WEB, *extras)}
    assert len(every) == 6
    with Datapath.create(bpffs_dir, map_sizes=SMALL) as d:
        d.apply(agents, peers="set")
        assert d.tables.chain_peers.read() == every
        d.apply(state(*WEB))                        # same process, a state naming none
        assert d.tables.chain_peers.read() == every
    with Datapath.open(bpffs_dir) as d:             # another process: read back
        plan = d.apply(state(*WEB[:2])).plan        # drops a backend, names no extras
        assert plan.peer_clears == {chain_id(WEB[2])} and not plan.peer_writes
        assert d.tables.chain_peers.read() == {c: a for c, a in every.items()
                                               if c != chain_id(WEB[2])}
        assert d.current_state().peers == frozenset(map(ipaddress.ip_address, extras))
    with Datapath.open(bpffs_dir) as d:             # the agent again: nothing to do
        assert d.apply(state(*WEB[:2]).with_peers(extras), peers="set").plan.empty
        # and the agent's own change of the extras goes through
        plan = d.apply(state(*WEB[:2]).with_peers(extras[:2]), peers="set").plan
        assert plan.peer_clears == {chain_id(extras[2])}
    with Datapath.open(bpffs_dir) as d:
        with pytest.raises(ValueError, match="peers must be 'keep' or 'set'"):
            d.apply(state(*WEB[:2]), peers="replace")
