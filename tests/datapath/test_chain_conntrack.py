"""Stateless mode on a node that NATs its VIP (docs/datapath.md, "Stateless mode").

A Kubernetes service proxy DNATs VIP:port to a pod, so the node has no socket for the
client's 4-tuple (client -> VIP:port), only a conntrack entry. A chained packet of such a
connection must be decapsulated here, not re-tunnelled to the previous owner: after the
socket lookup misses, the backend asks conntrack (bpf_xdp_ct_lookup, in the receiving
device's network namespace).

One namespace for the module: nftables DNATs VIP:80 to port 9376 (IPv4 and IPv6), a
listener is on 9376, and one real connection each way is made from the client's address
and port through the DNAT, so conntrack holds (client:CLIENT_PORT -> VIP:80) and no socket
has that tuple. Rows run through decap.o and through the balancer's inline decapsulation;
a packet of another client port (no entry) is still chained.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass

import pytest

from pyxlb.bpf import DIR_ENV, object_path
from pyxlb.netns import enter as enter_netns

from . import packets as P
from .test_chain import (CHAIN, CHAINED, DECAPPED, _lo_addresses, assert_outcome, carried,
                         peers, rechained)
from .test_chain import _object as chain_object
from .test_packets import ACTION_NAMES, PASS, TX, _changed, _mismatch, vip

POD_PORT = 9376                     # where the DNAT sends VIP:80
OTHER_PORT = P.CLIENT_PORT + 1      # a client port with no connection anywhere


def _nft_rules() -> str:
    """VIP:80 DNATed to POD_PORT, for connections made here (output) and from outside
    (prerouting), as a service proxy does."""
    tables = []
    for family, match in (("ip", f"ip daddr {P.VIP4}"), ("ip6", f"ip6 daddr {P.VIP6}")):
        rule = f"{match} tcp dport 80 dnat to :{POD_PORT}"
        tables.append(f"table {family} xlbct {{\n"
                      f"  chain out {{ type nat hook output priority -100; {rule}; }}\n"
                      f"  chain pre {{ type nat hook prerouting priority -100; {rule}; }}\n"
                      f"}}\n")
    return "".join(tables)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _connect(family: int) -> list:
    """A listener on the pod port and a connection from client:CLIENT_PORT to VIP:80
    through the DNAT, in the current namespace; returns the three sockets."""
    af = socket.AF_INET if family == 4 else socket.AF_INET6
    vip_addr, client = (P.VIP4, P.CLIENT4) if family == 4 else (P.VIP6, P.CLIENT6)
    made = []
    try:
        listener = socket.socket(af, socket.SOCK_STREAM)
        made.append(listener)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((vip_addr, POD_PORT))
        listener.listen(4)
        listener.settimeout(5)
        c = socket.socket(af, socket.SOCK_STREAM)
        made.append(c)
        c.bind((client, P.CLIENT_PORT))
        c.settimeout(5)
        c.connect((vip_addr, 80))
        accepted, peer = listener.accept()
        made.append(accepted)
        assert peer[:2] == (client, P.CLIENT_PORT), peer
        c.sendall(b"x")
        assert accepted.recv(1) == b"x"
    except BaseException:
        for s in made:
            s.close()
        raise
    return made


@pytest.fixture(scope="module")
def natted():
    """The module's namespace: FIB links (for re-tunnelled packets), the VIPs and clients on
    lo, the DNAT, and one connection per family through it. Yields (name, veth0 ifindex)."""
    assert os.geteuid() == 0, "this test needs root (BPF, namespaces): run it as root"
    name = f"xlbct-{os.getpid()}"
    _ip("netns", "add", name)
    made = []
    try:
        _ip("-n", name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        _ip("-n", name, "link", "set", "veth0", "up")
        _ip("-n", name, "link", "set", "veth1", "up")
        ifindex = P.fib_namespace(name)
        _lo_addresses(name)
        subprocess.run(["nsenter", f"--net=/run/netns/{name}", "nft", "-f", "-"],
                       input=_nft_rules(), text=True, check=True, capture_output=True)
        with enter_netns(name):
            made += _connect(4)
            made += _connect(6)
        yield name, ifindex["veth0"]
    finally:
        for s in made:
            s.close()
        _ip("netns", "del", name)


@dataclass(frozen=True)
class Row:
    name: str
    packet: bytes
    action: int
    expect: object                  # None: decapsulated here
    stats: dict
    prog: str = "decap"


def _rows():
    ack4 = P.tcp4(tcp_flags="A", flags="DF")
    ack6 = P.tcp6(tcp_flags="A")
    other4 = P.tcp4(sport=OTHER_PORT, tcp_flags="A", flags="DF")
    other6 = P.tcp6(sport=OTHER_PORT, tcp_flags="A")
    rows = []
    for prog, to4, to6 in (("decap", P.BACKENDS[1], P.BACKENDS[11]),
                           ("balancer", P.LOCAL4, P.LOCAL6)):
        pre = "" if prog == "decap" else "inline_"
        v4, v6 = carried(ack4, to=to4), carried(ack6, CHAIN + 1, to=to6)
        o4, o6 = carried(other4, to=to4), carried(other6, CHAIN + 1, to=to6)
        rows += [
            Row(f"{pre}v4_in_conntrack_decapsulated", v4, PASS, None, DECAPPED, prog),
            Row(f"{pre}v6_in_conntrack_decapsulated", v6, PASS, None, DECAPPED, prog),
            Row(f"{pre}v4_unknown_connection_chained", o4, TX,
                rechained(o4, P.FIB_NEIGH4), CHAINED, prog),
            Row(f"{pre}v6_unknown_connection_chained", o6, TX,
                rechained(o6, P.FIB_NEIGH6), CHAINED, prog),
        ]
    return rows


ROWS = _rows()


def _object(prog: str):
    """test_chain's object; the balancer also takes tunnels to LOCAL6 and serves VIP6."""
    dp = chain_object(prog)
    if prog != "decap":
        dp.add_local_addr(P.LOCAL6)
        vip(P.VIP6, backends=(11,), vip_id=2, ring_id=2)(dp)
    return dp


@pytest.mark.parametrize("row", ROWS, ids=[r.name for r in ROWS])
def test_conntrack_keeps_natted_connection_here(natted, row: Row):
    name, veth0 = natted
    with _object(row.prog) as dp:
        peers((CHAIN, P.FIB_NEIGH4), (CHAIN + 1, P.FIB_NEIGH6))(dp)
        before = dp.stats()
        with enter_netns(name):
            action, out = dp.run(row.packet, ctx=P.xdp_md(len(row.packet), veth0))
        changed = _changed(before, dp.stats())
    assert_outcome(row, action, out, changed)


def test_no_socket_has_the_natted_tuple(natted):
    """What makes the rows above about conntrack: the DNATed connection's sockets are
    client:CLIENT_PORT <-> VIP:9376, so nothing listens on or is connected to VIP:80."""
    name, _ = natted
    out = subprocess.run(["ip", "netns", "exec", name, "ss", "-Htan"], capture_output=True,
                         text=True, check=True).stdout
    assert f":{POD_PORT}" in out, out
    local = [line.split()[3] for line in out.splitlines()]
    assert not any(addr.endswith(":80") for addr in local), out


def test_loads_and_chains_without_the_kfunc(natted, tmp_path, monkeypatch):
    """A kernel without nf_conntrack has no bpf_xdp_ct_lookup: the weak kfunc stays 0, the
    object still loads (test_noct_decap.o names kfuncs no kernel has), and a backend goes
    by its sockets alone: the DNATed connection's packet is chained away."""
    here = os.path.dirname(os.path.abspath(object_path("decap")))
    shutil.copy(os.path.join(here, "test_noct_decap.o"), tmp_path / "decap.o")
    monkeypatch.setenv(DIR_ENV, str(tmp_path))
    name, veth0 = natted
    packet = carried(P.tcp4(tcp_flags="A", flags="DF"))
    with _object("decap") as dp:
        peers((CHAIN, P.FIB_NEIGH4))(dp)
        with enter_netns(name):
            action, out = dp.run(packet, ctx=P.xdp_md(len(packet), veth0))
    assert action == TX, ACTION_NAMES.get(action, action)
    want = rechained(packet, P.FIB_NEIGH4)
    assert out == want, _mismatch(out, want)
