"""Health checks through the tunnel (pyxlb/health/tunnel.py), with real TCP between
namespaces: an LB node running the balancer; a backend running the decapsulator, the VIPs
on its loopback and a TCP server on every address; and a node that is both (a balancer
that decapsulates inline, the same VIPs and server). A check through the tunnel reaches
the server on the VIP, encapsulated as clients' packets are (IPIP / IP6IP6) or
re-addressed (L2); it fails when the decapsulator is gone or refuses the outer source,
while a plain connection to the backend's own address still succeeds.

    ht<pid>-lb  eth0 ──veth── uplink ═ br0 ═ p0 ──veth── eth0   ht<pid>-be
    10.99.2.11, fd99:2::11     (in ht<pid>-be:  ║            10.99.2.21, fd99:2::21
    balancer (XDP), encap       a switch)       ╚ p1 ──veth── eth0   ht<pid>-both
    source 10.99.3.0/24,                                      10.99.2.31, fd99:2::31
    fd99:3::/112; the tunnel's tcx programs

ht<pid>-be: decap (XDP), sources 10.99.3.0/24, fd99:3::/112. ht<pid>-both: the balancer,
with the VIPs on PORT (only) served locally. The bridge drops frames longer than its
ports' MTU (1500), as a switch does.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from pyxlb import _bpf, bpffs, netns
from pyxlb import node as node_mod
from pyxlb.datapath import DecapPath
from pyxlb.health.tunnel import Tunnel, TunnelError
from pyxlb.state import Backend, DesiredState, Vip, VipKey

PREFIX = f"ht{os.getpid() % 100000}"
LB, BE, BOTH = f"{PREFIX}-lb", f"{PREFIX}-be", f"{PREFIX}-both"
ADDR = {LB: {4: "10.99.2.11", 6: "fd99:2::11"}, BE: {4: "10.99.2.21", 6: "fd99:2::21"},
        BOTH: {4: "10.99.2.31", 6: "fd99:2::31"}}
VIP = {4: ipaddress.ip_address("10.99.100.10"), 6: ipaddress.ip_address("fd99:100::10")}
# a VIP the backend does not serve (not on its loopback)
NOT_SERVED = {4: ipaddress.ip_address("10.99.100.99"), 6: ipaddress.ip_address("fd99:100::99")}
ENCAP = {4: "10.99.3.0/24", 6: "fd99:3::/112"}
PORT = 8080
SINK_PORT = 8081            # reads to the end, answers with how many bytes it read
CLOSED_PORT = 8089          # nothing listens there
AF = {4: socket.AF_INET, 6: socket.AF_INET6}
FAIL_TIMEOUT = 0.8          # a check that must fail: how long to wait for it


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _sysctl(ns: str, key: str, value) -> None:
    with netns.enter(ns):
        with open(f"/proc/sys/{key}", "w") as f:
            f.write(str(value))


def _pin(ns: str) -> str:
    return os.path.join(bpffs.BPFFS_ROOT, ns)


def _decap_up() -> None:
    with netns.enter(BE):
        node_mod.bring_up_decap(_pin(BE), ("eth0",), (VIP[4], VIP[6], NOT_SERVED[4],
                                                      NOT_SERVED[6]),
                                list(ENCAP.values())).dp.close()


class Server:
    """A TCP server in a backend's namespace on every address (the VIPs too): on PORT it
    answers each connection with the address it was accepted on, then closes it; on
    SINK_PORT it reads to the end first and answers with the number of bytes read."""

    def __init__(self, ns: str):
        self.socks = []
        with netns.enter(ns):
            for port in (PORT, SINK_PORT):
                for af, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                    s = socket.socket(af, socket.SOCK_STREAM)
                    if af == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind((host, port))
                    s.listen(64)
                    s.setblocking(False)
                    self.socks.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name="ht-server", daemon=True)
        self.thread.start()

    def run(self):
        sel = selectors.DefaultSelector()
        for s in self.socks:
            sel.register(s, selectors.EVENT_READ)
        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                try:
                    conn, _ = key.fileobj.accept()
                except BlockingIOError:
                    continue
                with conn:
                    conn.setblocking(True)
                    conn.settimeout(1.0)
                    with contextlib.suppress(OSError):
                        if conn.getsockname()[1] == SINK_PORT:
                            n = 0
                            while True:
                                chunk = conn.recv(65536)
                                if not chunk:
                                    break
                                n += len(chunk)
                            conn.sendall(b"%d\n" % n)
                        else:
                            conn.sendall(conn.getsockname()[0].encode() + b"\n")
        sel.close()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        for s in self.socks:
            s.close()


@pytest.fixture(scope="module")
def topo():
    """The two namespaces, wired and brought up; removed afterwards, also on failure."""
    assert os.geteuid() == 0, "this test needs root (namespaces, XDP, tcx)"
    bpffs.ensure_mounted()
    servers = []
    try:
        for ns in (LB, BE, BOTH):
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            _sysctl(ns, "net/ipv6/conf/all/accept_dad", 0)
            _sysctl(ns, "net/ipv6/conf/default/accept_dad", 0)
        _ip("-n", LB, "link", "add", "eth0", "type", "veth", "peer", "name", "uplink",
            "netns", BE)
        _ip("-n", BE, "link", "add", "p0", "type", "veth", "peer", "name", "eth0")
        _ip("-n", BE, "link", "add", "p1", "type", "veth", "peer", "name", "eth0", "netns",
            BOTH)
        _ip("-n", BE, "link", "add", "br0", "type", "bridge")
        for port in ("uplink", "p0", "p1"):
            _ip("-n", BE, "link", "set", port, "master", "br0", "up")
        _ip("-n", BE, "link", "set", "br0", "up")
        for ns in (LB, BE, BOTH):
            _ip("-n", ns, "addr", "add", f"{ADDR[ns][4]}/24", "dev", "eth0")
            _ip("-n", ns, "addr", "add", f"{ADDR[ns][6]}/64", "dev", "eth0", "nodad")
            _ip("-n", ns, "link", "set", "eth0", "up")
        for ns in (BE, BOTH):
            for fam in (4, 6):
                _ip("-n", ns, "addr", "add", f"{VIP[fam]}/{VIP[fam].max_prefixlen}", "dev",
                    "lo")
            for key, value in (("net/ipv4/conf/all/arp_ignore", 1),
                               ("net/ipv4/conf/all/arp_announce", 2),
                               ("net/ipv4/conf/all/rp_filter", 0)):
                _sysctl(ns, key, value)
        # segments leave the LB node as TCP made them, as on a NIC without TSO (a veth
        # would hand a larger one on whole, whatever the MTU)
        subprocess.run(["ip", "netns", "exec", LB, "ethtool", "-K", "eth0", "tso", "off",
                        "gso", "off"], check=True, capture_output=True)
        # an LB node on a segment with a router beyond it: a route through the backend
        _ip("-n", LB, "route", "add", "10.99.50.0/24", "via", ADDR[BE][4])
        # the LB node also routes: the other node reaches the backend's address through it
        _sysctl(LB, "net/ipv4/ip_forward", 1)
        _ip("-n", BOTH, "route", "add", f"{ADDR[BE][4]}/32", "via", ADDR[LB][4])
        with netns.enter(LB):
            node_mod.bring_up(_pin(LB), node_mod.NodeSettings(
                interfaces=("eth0",), encap_sources=ENCAP, max_vips=16, max_flows=1024,
                max_flows6=1024)).dp.close()
        with netns.enter(BOTH):
            both = node_mod.bring_up(_pin(BOTH), node_mod.NodeSettings(
                interfaces=("eth0",), max_vips=16, max_flows=1024, max_flows6=1024))
            try:
                both.dp.apply(DesiredState(vips=tuple(
                    Vip(VipKey(VIP[fam], PORT, "tcp"), mode="ipip",
                        backends=(Backend(ipaddress.ip_address(ADDR[BOTH][fam]), local=True),))
                    for fam in (4, 6))))
            finally:
                both.dp.close()
        _decap_up()
        servers += [Server(BE), Server(BOTH)]
        for node in (BE, BOTH):     # each end learns the other's MAC (and the servers are up)
            for fam in (4, 6):
                assert direct(fam, node) == ADDR[node][fam]
        yield
    finally:
        for server in servers:
            server.close()
        for ns in (LB, BE, BOTH):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            shutil.rmtree(_pin(ns), ignore_errors=True)


@pytest.fixture(scope="module")
def module_tunnel(topo):
    with netns.enter(LB):
        t = Tunnel.open(_pin(LB))
    yield t
    t.close()


@pytest.fixture
def tunnel(module_tunnel):
    """The LB node's tunnel, reading its encap source from the balancer's pins; nothing
    registered (also after a test that failed half-way)."""
    for port, _ in module_tunnel.registered():
        module_tunnel.unregister(port)
    assert module_tunnel.registered() == []
    return module_tunnel


def check(tunnel: Tunnel, family: int, vip, mode: str, timeout: float = 2.0,
          backend: str = None, send: bytes = b"") -> str:
    """One check from the LB node: connect to the backend through the tunnel for `vip`;
    returns the address the server accepted on, or with `send`, how many bytes of it the
    server read (raises OSError when it fails)."""
    backend = backend or ADDR[BE][family]
    with netns.enter(LB):
        s = socket.socket(AF[family], socket.SOCK_STREAM)
        try:
            s.settimeout(timeout)
            s.bind(("0.0.0.0" if family == 4 else "::", 0))    # any address: the route's
            tunnel.register(s, vip, backend, mode)
            try:
                s.connect((backend, SINK_PORT if send else PORT))
                assert s.getpeername()[0] == backend
                if send:
                    s.sendall(send)
                    s.shutdown(socket.SHUT_WR)
                return s.recv(100).decode().strip()
            finally:
                tunnel.unregister(s)
        finally:
            s.close()


def direct(family: int, node: str = BE) -> str:
    """A plain connection from the LB node to a backend's own address."""
    with netns.enter(LB):
        with socket.create_connection((ADDR[node][family], PORT), timeout=2.0) as s:
            return s.recv(100).decode().strip()


def all_fail(*checks: dict) -> None:
    """Run the checks (check()'s arguments) at once: every one must fail (OSError), each
    within FAIL_TIMEOUT."""
    with ThreadPoolExecutor(len(checks)) as pool:
        futures = [pool.submit(check, timeout=FAIL_TIMEOUT, **kw) for kw in checks]
    for future, kw in zip(futures, checks):
        exc = future.exception()
        assert isinstance(exc, OSError), \
            f"{kw}: expected to fail, got {exc!r}" if exc else f"{kw}: {future.result()!r}"


@contextlib.contextmanager
def decap_removed():
    """The backend without its decapsulator for the block; then back as it was."""
    with netns.enter(BE):
        dc = DecapPath.open(_pin(BE))
        try:
            assert dc.detach("eth0")        # its last interface: the decapsulator is gone
        finally:
            dc.close()
    try:
        yield
    finally:
        _decap_up()


@pytest.mark.parametrize("family,mode", [(4, "ipip"), (6, "ipip"), (4, "l2"), (6, "l2")])
def test_check_reaches_the_vip_through_the_tunnel(tunnel, family, mode):
    assert check(tunnel, family, VIP[family], mode) == str(VIP[family])
    assert direct(family) == ADDR[BE][family]       # without the tunnel: its own address
    assert tunnel.registered() == []


def test_an_asyncio_check(tunnel):
    """As the checker runs them: non-blocking sockets on an event loop, several at once."""
    async def one(family: int, mode: str) -> str:
        loop = asyncio.get_running_loop()
        with netns.enter(LB):
            sock = socket.socket(AF[family], socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.bind(("0.0.0.0" if family == 4 else "::", 0))
            tunnel.register(sock, VIP[family], ADDR[BE][family], mode)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, (ADDR[BE][family], PORT)), 2)
            return (await asyncio.wait_for(loop.sock_recv(sock, 100), 2)).decode().strip()
        finally:
            tunnel.unregister(sock)
            sock.close()

    async def all_of_them():
        return await asyncio.gather(*(one(f, m) for f in (4, 6) for m in ("ipip", "l2")))

    assert asyncio.run(all_of_them()) == [str(VIP[4])] * 2 + [str(VIP[6])] * 2
    assert tunnel.registered() == []


@pytest.mark.parametrize("family,mode", [(4, "ipip"), (6, "ipip"), (4, "l2"), (6, "l2")])
def test_full_size_segments_fit_once_tunnelled(tunnel, family, mode):
    """A check that sends a full segment (what a plain connection sends as one on this
    link, TCP timestamps on), and one that sends many: tunnelled, they still fit the
    switch's MTU (it drops a frame that does not, without a word)."""
    one_segment = 1500 - {4: 20, 6: 40}[family] - 20 - 12
    for size in (one_segment, 20000):
        data = os.urandom(size)
        assert check(tunnel, family, VIP[family], mode, send=data) == str(size)


def test_without_the_decapsulator_the_tunnelled_check_fails(tunnel):
    with decap_removed():
        all_fail(dict(tunnel=tunnel, family=4, vip=VIP[4], mode="ipip"),
                 dict(tunnel=tunnel, family=6, vip=VIP[6], mode="ipip"))
        assert (direct(4), direct(6)) == (ADDR[BE][4], ADDR[BE][6])
    for family in (4, 6):
        assert check(tunnel, family, VIP[family], "ipip") == str(VIP[family])


def test_a_node_that_is_both_decapsulates_inline(tunnel):
    """A backend that is also a balancer: its balancer strips the tunnel (the VIP's port
    is one of its VIPs) and passes the check up, as it would a client's packet; a port
    that is no VIP there is not decapsulated, and the check fails."""
    for family in (4, 6):
        assert check(tunnel, family, VIP[family], "ipip", backend=ADDR[BOTH][family]) == \
            str(VIP[family])
    all_fail(*(dict(tunnel=tunnel, family=family, vip=VIP[family], mode="ipip",
                    backend=ADDR[BOTH][family], send=b"to a port that is no VIP")
               for family in (4, 6)))
    assert (direct(4, BOTH), direct(6, BOTH)) == (ADDR[BOTH][4], ADDR[BOTH][6])


@pytest.mark.parametrize("family,mode", [(4, "ipip"), (6, "ipip"), (4, "l2"), (6, "l2")])
def test_a_closed_port_is_refused_at_once(tunnel, family, mode):
    """The backend's reset comes back from the VIP, re-addressed like any answer: the
    check is refused, it does not wait for a timeout."""
    with netns.enter(LB):
        s = socket.socket(AF[family], socket.SOCK_STREAM)
        s.settimeout(2.0)
        s.bind(("0.0.0.0" if family == 4 else "::", 0))
        tunnel.register(s, VIP[family], ADDR[BE][family], mode)
    try:
        t0 = time.monotonic()
        with pytest.raises(ConnectionRefusedError):
            s.connect((ADDR[BE][family], CLOSED_PORT))
        assert time.monotonic() - t0 < 1.0
    finally:
        tunnel.unregister(s)
        s.close()


def test_a_vip_the_backend_does_not_serve_fails(tunnel):
    all_fail(*(dict(tunnel=tunnel, family=family, vip=NOT_SERVED[family], mode=mode)
               for family in (4, 6) for mode in ("ipip", "l2")))
    assert (direct(4), direct(6)) == (ADDR[BE][4], ADDR[BE][6])


def test_an_outer_source_the_decapsulator_refuses_fails(topo):
    """Without the balancer's pins the outer source is the node's own address, which the
    backend's decapsulator (sources: the balancer's encap prefixes) refuses."""
    with netns.enter(LB):
        t = Tunnel.open()
    try:
        assert t.sources == {}
        all_fail(dict(tunnel=t, family=4, vip=VIP[4], mode="ipip"),
                 dict(tunnel=t, family=6, vip=VIP[6], mode="ipip"))
        for family in (4, 6):       # L2 has no outer header
            assert check(t, family, VIP[family], "l2") == str(VIP[family])
    finally:
        t.close()


def test_the_outer_source_comes_from_the_balancers_config(tunnel):
    assert tunnel.sources == {4: ipaddress.ip_address("10.99.3.1"),
                              6: ipaddress.ip_address("fd99:3::1")}


def test_refusals(tunnel):
    with netns.enter(LB):
        with pytest.raises(TunnelError, match="different families"):
            tunnel.prepare(VIP[4], ADDR[BE][6], "ipip")
        with pytest.raises(TunnelError, match="mode must be"):
            tunnel.prepare(VIP[4], ADDR[BE][4], "gre")
        with pytest.raises(TunnelError, match="this node's own address"):
            tunnel.prepare(VIP[4], ADDR[LB][4], "ipip")
        with pytest.raises(TunnelError, match="through router 10.99.2.21"):
            tunnel.prepare(VIP[4], "10.99.50.5", "l2")
        tunnel.prepare(VIP[4], "10.99.50.5", "ipip")    # IPIP goes through routers
        with pytest.raises(TunnelError, match="no route"):
            tunnel.prepare(VIP[6], "fd99:77::1", "ipip")
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((ADDR[LB][6], 0))
            with pytest.raises(TunnelError, match="AF_INET"):
                tunnel.register(s, VIP[4], ADDR[BE][4], "ipip")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            with pytest.raises(TunnelError, match="bind the socket"):
                tunnel.register(s, VIP[4], ADDR[BE][4], "ipip")
        # connected first: its connection went out plain, it cannot be a check any more
        with socket.create_connection((ADDR[BE][4], PORT), timeout=2.0) as s:
            with pytest.raises(TunnelError, match="before connecting"):
                tunnel.register(s, VIP[4], ADDR[BE][4], "ipip")
    assert tunnel.registered() == []


def test_a_packet_the_node_forwards_is_never_a_check(tunnel):
    """Another host's connection that the LB node forwards to the backend, from the port
    a check registered: it goes on untouched (only the node's own sockets' packets are
    re-addressed), and the check's entry learns nothing from it."""
    with netns.enter(LB):
        mine = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with mine:
        mine.bind(("0.0.0.0", 0))
        port = mine.getsockname()[1]
        with netns.enter(LB):
            tunnel.register(mine, VIP[4], ADDR[BE][4], "ipip")
        with netns.enter(BOTH):
            other = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with other:
            other.settimeout(2.0)
            other.bind((ADDR[BOTH][4], port))
            other.connect((ADDR[BE][4], PORT))     # through the LB node (BOTH's route)
            assert other.recv(100).decode().strip() == ADDR[BE][4]
        assert tunnel.path_of(port, 4)["dport"] == 0
        tunnel.unregister(mine)


def test_routes_and_interfaces_are_the_tunnels_namespaces(tunnel):
    """prepare() from a thread in another namespace (here the test's own) still looks up
    routes and attaches in the namespace the tunnel was opened in."""
    tunnel.prepare(VIP[4], ADDR[BE][4], "ipip")
    tunnel.prepare(VIP[6], ADDR[BE][6], "l2")
    with netns.enter(LB):
        assert tunnel.interfaces() == [socket.if_nametoindex("eth0")]
    assert {link.ifindex for link in tunnel.links()} == set(tunnel.interfaces())


def test_registration_is_one_entry_per_port(tunnel):
    with netns.enter(LB):
        s4 = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    with s4, s6:
        s4.bind((ADDR[LB][4], 0))
        s6.bind((ADDR[LB][6], 0))
        with netns.enter(LB):
            tunnel.register(s4, VIP[4], ADDR[BE][4], "ipip")
            tunnel.register(s6, VIP[6], ADDR[BE][6], "l2")
        p4, p6 = s4.getsockname()[1], s6.getsockname()[1]
        assert sorted(tunnel.registered()) == sorted([(p4, 4), (p6, 6)])
        e4 = tunnel.path_of(p4, 4)
        assert (e4["vip"][:4], e4["backend"][:4], e4["outer_src"][:4], e4["dport"]) == (
            VIP[4].packed, ipaddress.ip_address(ADDR[BE][4]).packed,
            ipaddress.ip_address("10.99.3.1").packed, 0)
        assert tunnel.path_of(p6, 6)["outer_src"] == bytes(16)     # L2: no outer header
        tunnel.unregister(p4)
        s6.close()
        tunnel.unregister(s6)           # also once closed
        tunnel.unregister(s6)           # and again: nothing happens
        assert tunnel.registered() == []

        # a socket closed without unregistering, its port taken by the next one: the old
        # socket's unregister leaves the new registration alone
        with netns.enter(LB):
            tunnel.register(s4, VIP[4], ADDR[BE][4], "ipip")
            s4.close()
            s4b = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with s4b:
            s4b.bind((ADDR[LB][4], p4))
            with netns.enter(LB):
                tunnel.register(s4b, VIP[4], ADDR[BE][4], "l2")
            assert tunnel.registered() == [(p4, 4)]
            tunnel.unregister(s4)
            assert tunnel.registered() == [(p4, 4)]
            tunnel.unregister(s4b)
            assert tunnel.registered() == []


def test_links_go_with_close_and_with_the_process(topo):
    """The programs are attached by links only their process holds: closing the tunnel
    detaches them, and so does the process's death (SIGKILL: no clean-up runs)."""
    with netns.enter(LB):
        t = Tunnel.open()
        t.prepare(VIP[4], ADDR[BE][4], "ipip")
    ids = [link.id for link in t.links()]
    assert len(ids) == 2 and all(_bpf.TcxLink.exists(i) for i in ids)
    t.close()
    assert not any(_bpf.TcxLink.exists(i) for i in ids)

    code = ("import sys; from pyxlb.health.tunnel import Tunnel; t = Tunnel.open(); "
            f"t.prepare('{VIP[6]}', '{ADDR[BE][6]}', 'ipip'); "
            "print(*[l.id for l in t.links()], flush=True); sys.stdin.read()")
    target = os.path.join(netns.NETNS_RUN_DIR, LB)

    def enter():
        fd = os.open(target, os.O_RDONLY)
        netns.setns(fd)
        os.close(fd)

    child = subprocess.Popen([sys.executable, "-c", code], preexec_fn=enter,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        ids = [int(i) for i in child.stdout.readline().split()]
        assert len(ids) == 2 and all(_bpf.TcxLink.exists(i) for i in ids)
    finally:
        child.kill()
        child.wait(timeout=5)
    deadline = time.monotonic() + 2
    while any(_bpf.TcxLink.exists(i) for i in ids) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_bpf.TcxLink.exists(i) for i in ids)
