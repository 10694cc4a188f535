"""The namespace lab: a client, a router, two LB nodes and three backends on one machine.

    client ── router ══ br0 ══╦═ lb1   (balancer, XDP native)
     (eth0)   (eth0)           ╠═ lb2   (balancer, XDP native)
                               ╠═ be1   (decap, XDP native; HTTP server, VIP on lo)
                               ╠═ be2
                               ╚═ be3

Every node is a network namespace named ``<prefix>-<node>``; the links are veth pairs, the
server segment a bridge in the router's namespace. The router sends VIP traffic to one LB
node; the LB tunnels it (IPIP / IP6IP6) or re-addresses it (L2) to a backend, which
answers the client directly through the router (direct server return). Every address is
inside the lab's own namespaces, so two labs with different prefixes coexist.

Facts this kernel needs (docs/lab.md): a veth delivers XDP_TX'd frames only to a
peer that runs a native XDP program (the router's side of each LB link runs pass.o); veth
checksum offload does not survive XDP_TX (transmit checksumming is off on the lab's
links); the server segment has MTU 1600 so a full 1500-byte client packet still fits once
tunnelled.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from pyroute2 import NetNS
from pyroute2 import netns as pr_netns

from .. import _bpf, bpffs, netlink, netns
from ..bpf import object_path
from .. import node as node_mod
from ..datapath import Datapath
from ..errors import PyxlbError
from ..state import Backend, DesiredState, Vip, VipKey

CLIENT, ROUTER = "client", "router"
LBS = ("lb1", "lb2")
BACKENDS = ("be1", "be2", "be3")
NODES = (CLIENT, ROUTER, *LBS, *BACKENDS)

VIP4 = ipaddress.ip_address("10.77.100.10")
VIP6 = ipaddress.ip_address("fd77:100::10")
SEGMENT_MTU = 1600
SEED = 0x5EED
HTTP_PORT = 80
IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class Addr:
    v4: str
    v6: str


# Client link, server segment (all nodes but the client), per-LB outer source prefixes.
CLIENT_NET = Addr("10.77.1.0/24", "fd77:1::/64")
SEGMENT_NET = Addr("10.77.2.0/24", "fd77:2::/64")
HOST = {CLIENT: 2, ROUTER: 1, "lb1": 11, "lb2": 12, "be1": 21, "be2": 22, "be3": 23,
        "n1": 31, "n2": 32, "n3": 33}      # n1-n3: the Kubernetes lab's nodes
ENCAP_SOURCE = {"lb1": Addr("10.77.3.0/24", "fd77:3::/112"),
                "lb2": Addr("10.77.4.0/24", "fd77:4::/112")}


def node_addr(node: str, family: int, net: Optional[Addr] = None) -> ipaddress._BaseAddress:
    """A node's address on its link: the client's on the client link, the others' on the
    server segment (the router has one on each)."""
    net = net or (CLIENT_NET if node == CLIENT else SEGMENT_NET)
    n = ipaddress.ip_network(net.v4 if family == 4 else net.v6)
    return n.network_address + HOST[node]


class Lab:
    """One lab, identified by its name prefix."""

    NODES: Tuple[str, ...] = NODES      # a variant of the lab names its own

    def __init__(self, prefix: str = "xlb", max_flows: Optional[int] = None,
                 max_flows6: Optional[int] = None):
        """`max_flows`, `max_flows6`: the LB nodes' flow tables, as `--max-flows` and
        `--max-flows6` ask (None: the defaults)."""
        if not prefix or len(prefix) > 8 or not prefix.replace("-", "").isalnum():
            raise PyxlbError(f"lab prefix must be 1-8 letters, digits or '-', not {prefix!r}")
        self.prefix = prefix
        self.max_flows, self.max_flows6 = max_flows, max_flows6

    # -- names ---------------------------------------------------------------------------

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def pin_dir(self, node: str) -> str:
        return os.path.join(bpffs.BPFFS_ROOT, f"{self.prefix}-{node}")

    def existing(self) -> List[str]:
        """This lab's namespaces that exist now."""
        present = set(pr_netns.listnetns())
        return [self.ns(n) for n in self.NODES if self.ns(n) in present]

    def exists(self) -> bool:
        return bool(self.existing())

    # -- build ---------------------------------------------------------------------------

    def up(self, log=lambda msg: None) -> None:
        """Build the lab; on any failure, what was built is removed again."""
        if os.geteuid() != 0:
            raise PyxlbError("the lab needs root (namespaces, XDP, bpffs)")
        if self.exists():
            raise PyxlbError(f"lab {self.prefix!r} exists already: `pyxlb lab down "
                             f"--prefix {self.prefix}` removes it")
        bpffs.ensure_mounted()
        for node in self.NODES:  # pins a crashed lab left behind would be adopted: clear them
            shutil.rmtree(self.pin_dir(node), ignore_errors=True)
        try:
            self.build(log)
        except BaseException:
            self.down()
            raise

    def build(self, log) -> None:
        """What `up` builds once its checks passed: a variant of the lab builds its own."""
        servers = (*LBS, *BACKENDS)
        self.create_namespaces()
        log(f"namespaces: {', '.join(self.ns(n) for n in NODES)}")
        self.wire(servers)
        log("links: client-router veth; lb1, lb2, be1-3 on bridge br0 (MTU 1600)")
        # backends forward too: a stateless VIP's backend passes a connection it does not
        # have to its previous owner with bpf_fib_lookup, which answers only on an
        # interface that forwards (docs/config.md, "Stateless mode")
        self.add_addresses(servers, forwarding=(ROUTER, *LBS, *BACKENDS))
        self.route_via("lb1")
        log("addresses: client 10.77.1.2, router .1, segment 10.77.2.0/24 (+ IPv6)")
        for node in BACKENDS:
            self.serve_vip(node)
        log(f"backends: VIP {VIP4} / {VIP6} on lo, HTTP server on port {HTTP_PORT}")

        self.pass_on_router_ports((*LBS, *BACKENDS))   # backends XDP_TX chained packets
        for node in LBS:
            src = ENCAP_SOURCE[node]
            with netns.enter(self.ns(node)):
                up = node_mod.bring_up(self.pin_dir(node), node_mod.NodeSettings(
                    interfaces=("eth0",), seed=SEED, mtu=SEGMENT_MTU,
                    encap_sources={4: src.v4, 6: src.v6}, max_flows=self.max_flows,
                    max_flows6=self.max_flows6))
                up.dp.close()
        sources = [p for src in ENCAP_SOURCE.values() for p in (src.v4, src.v6)]
        # every backend may hand the others a stateless VIP's connections after a change
        peers = [node_addr(b, family) for b in BACKENDS for family in (4, 6)]
        for node in BACKENDS:
            with netns.enter(self.ns(node)):
                node_mod.bring_up_decap(self.pin_dir(node), ("eth0",), (VIP4, VIP6),
                                        sources, peers=peers).dp.close()
        log("XDP: balancer on lb1/lb2 eth0, decap on be1-3 eth0 (each other's chain peers), "
            "pass on the router's ports")
        self.warm_neighbours()
        self.wait_http()

    # -- building blocks (a variant of the lab builds from them too) ------------------------

    def create_namespaces(self) -> None:
        for node in self.NODES:
            pr_netns.create(self.ns(node))
            with netns.enter(self.ns(node)):
                _sysctl("net/ipv6/conf/all/accept_dad", 0)
                _sysctl("net/ipv6/conf/default/accept_dad", 0)
            with NetNS(self.ns(node)) as n:
                n.link("set", index=n.link_lookup(ifname="lo")[0], state="up")

    def wire(self, servers: Tuple[str, ...]) -> None:
        """The client's veth to the router, and each server's eth0 on the router's bridge."""
        with NetNS(self.ns(ROUTER)) as r:
            r.link("add", ifname="br0", kind="bridge", br_mcast_snooping=0)
            r.link("set", index=r.link_lookup(ifname="br0")[0], mtu=SEGMENT_MTU)
        self._veth(CLIENT, "eth0", ROUTER, "eth0", mtu=1500)
        for node in servers:
            self._veth(node, "eth0", ROUTER, f"p-{node}", mtu=SEGMENT_MTU, master="br0")
        with NetNS(self.ns(ROUTER)) as r:
            r.link("set", index=r.link_lookup(ifname="br0")[0], state="up")

    def add_addresses(self, servers: Tuple[str, ...], forwarding: Tuple[str, ...]) -> None:
        """Addresses and default routes; IP forwarding on the `forwarding` nodes."""
        self._address(CLIENT, "eth0", CLIENT_NET)
        self._address(ROUTER, "eth0", CLIENT_NET)
        self._address(ROUTER, "br0", SEGMENT_NET)
        for node in servers:
            self._address(node, "eth0", SEGMENT_NET)
        with NetNS(self.ns(CLIENT)) as c:
            self._default_route(c, CLIENT_NET)
        for node in servers:
            with NetNS(self.ns(node)) as n:
                self._default_route(n, SEGMENT_NET)
        for node in forwarding:
            with netns.enter(self.ns(node)):
                _sysctl("net/ipv4/ip_forward", 1)
                _sysctl("net/ipv6/conf/all/forwarding", 1)

    def serve_vip(self, node: str) -> None:
        """The VIP on the node's loopback (answering no ARP for it), and its HTTP server."""
        with netns.enter(self.ns(node)):
            _sysctl("net/ipv4/conf/all/arp_ignore", 1)
            _sysctl("net/ipv4/conf/all/arp_announce", 2)
            _sysctl("net/ipv4/conf/all/rp_filter", 0)
        with NetNS(self.ns(node)) as n:
            lo = n.link_lookup(ifname="lo")[0]
            n.addr("add", index=lo, address=str(VIP4), prefixlen=32)
            n.addr("add", index=lo, address=str(VIP6), prefixlen=128, flags=IFA_F_NODAD)
        self.start_http(node)

    def pass_on_router_ports(self, nodes) -> None:
        """A veth delivers XDP_TX'd frames only to a peer running native XDP: the router's
        side of the link of each node that sends with XDP_TX (the balancers, and the
        backends, which chain packets) runs the pass program."""
        for node in nodes:
            with netns.enter(self.ns(ROUTER)):
                with _bpf.BpfObject.open(object_path("pass")) as obj:
                    obj.load()
                    prog = obj.program("xlb_pass")
                    _bpf.XdpLink.attach(f"p-{node}", prog, mode="native")
                    prog.close()

    def _veth(self, a: str, a_if: str, b: str, b_if: str, mtu: int, master=None) -> None:
        with NetNS(self.ns(a)) as na:
            na.link("add", ifname=a_if, kind="veth", peer={"ifname": b_if,
                                                            "net_ns_fd": self.ns(b)})
            ia = na.link_lookup(ifname=a_if)[0]
            na.link("set", index=ia, mtu=mtu, state="up")
        with NetNS(self.ns(b)) as nb:
            ib = nb.link_lookup(ifname=b_if)[0]
            if master:
                nb.link("set", index=ib, master=nb.link_lookup(ifname=master)[0])
            nb.link("set", index=ib, mtu=mtu, state="up")
        for node, ifname in ((a, a_if), (b, b_if)):
            with netns.enter(self.ns(node)):
                netlink.tx_checksum_off(ifname)

    def _address(self, node: str, ifname: str, net: Addr) -> None:
        with NetNS(self.ns(node)) as n:
            idx = n.link_lookup(ifname=ifname)[0]
            for fam, text in ((4, net.v4), (6, net.v6)):
                plen = ipaddress.ip_network(text).prefixlen
                kw = {"flags": IFA_F_NODAD} if fam == 6 else {}
                n.addr("add", index=idx, address=str(node_addr(node, fam, net)),
                       prefixlen=plen, **kw)

    def _default_route(self, n, net: Addr) -> None:
        n.route("add", dst="0.0.0.0/0", gateway=str(node_addr(ROUTER, 4, net)))
        n.route("add", dst="::/0", gateway=str(node_addr(ROUTER, 6, net)), family=socket.AF_INET6)

    def route_via(self, lb: str) -> None:
        """Send VIP traffic from the router to LB node `lb` (IPv4 and IPv6)."""
        with NetNS(self.ns(ROUTER)) as r:
            r.route("replace", dst=f"{VIP4}/32", gateway=str(node_addr(lb, 4)))
            r.route("replace", dst=f"{VIP6}/128", gateway=str(node_addr(lb, 6)),
                    family=socket.AF_INET6)

    def set_link(self, node: str, up: bool) -> None:
        """Take a node's eth0 (its link to the router) down or up: a failing node."""
        with NetNS(self.ns(node)) as n:
            n.link("set", index=n.link_lookup(ifname="eth0")[0], state="up" if up else "down")

    def restore_link(self, node: str) -> None:
        """Bring a node's eth0 back as the lab built it: a link going down takes its IPv6
        address (keep_addr_on_down is 0) and the routes through it along."""
        self.set_link(node, True)
        with NetNS(self.ns(node)) as n:
            idx = n.link_lookup(ifname="eth0")[0]
            if not any(a.get_attr("IFA_ADDRESS") == str(node_addr(node, 6))
                       for a in n.get_addr(index=idx, family=socket.AF_INET6)):
                n.addr("add", index=idx, address=str(node_addr(node, 6)), prefixlen=64,
                       flags=IFA_F_NODAD)
            n.route("replace", dst="0.0.0.0/0", gateway=str(node_addr(ROUTER, 4)))
            n.route("replace", dst="::/0", gateway=str(node_addr(ROUTER, 6)),
                    family=socket.AF_INET6)

    def flood(self, nodes, on: bool) -> None:
        """Whether the router's bridge floods unknown unicast to these nodes' ports. Real
        NICs drop frames for another MAC before XDP sees them, veths do not: failover tests
        turn flooding off, or a node would balance frames still addressed to a dead one."""
        for node in nodes:
            subprocess.run(["ip", "netns", "exec", self.ns(ROUTER), "bridge", "link", "set",
                            "dev", f"p-{node}", "flood", "on" if on else "off"],
                           check=True, capture_output=True)

    def preexec_in(self, node: str):
        """A `preexec_fn` for subprocess.Popen: the child runs in the node's namespace."""
        target = os.path.join(pr_netns.NETNS_RUN_DIR, self.ns(node))

        def enter():
            fd = os.open(target, os.O_RDONLY)
            netns.setns(fd)
            os.close(fd)

        return enter

    def start_http(self, node: str, port: int = HTTP_PORT) -> None:
        """The lab's HTTP server (pyxlb/lab/http.py) on `port` in the node's namespace, named
        after the node; `down` ends it with the namespace's other processes."""
        subprocess.Popen([sys.executable, "-m", "pyxlb.lab.http", "--name", node,
                          "--port", str(port)], preexec_fn=self.preexec_in(node),
                         start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True)

    def wait_http(self, timeout: float = 10.0, nodes: Tuple[str, ...] = BACKENDS,
                   port: int = HTTP_PORT) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            while True:
                with netns.enter(self.ns(node)):
                    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
                try:
                    s.settimeout(0.5)
                    s.connect(("::1", port))
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise PyxlbError(f"the HTTP server on {node} did not start") from None
                    time.sleep(0.05)
                finally:
                    s.close()

    def warm_neighbours(self, senders=(*LBS, *BACKENDS), targets=BACKENDS) -> None:
        """Have every sender (the LBs, and the backends, which chain a stateless VIP's
        connections to each other) resolve the targets' MACs (the backends; one datagram
        each, to the discard port), so the balancers' next-hop caches can be filled."""
        for node in senders:
            with netns.enter(self.ns(node)):
                for fam, af in ((4, socket.AF_INET), (6, socket.AF_INET6)):
                    s = socket.socket(af, socket.SOCK_DGRAM)
                    try:
                        for other in targets:
                            if other != node:
                                s.sendto(b"", (str(node_addr(other, fam)), 9))
                    finally:
                        s.close()
        time.sleep(0.2)

    # -- tear down -----------------------------------------------------------------------

    def down(self) -> List[str]:
        """Remove what this lab made (processes in its namespaces, XDP programs, pins,
        namespaces) — only that, and also after a crash. Returns what was removed."""
        removed = []
        mine = {}
        for name in self.existing():
            try:
                mine[os.stat(os.path.join(pr_netns.NETNS_RUN_DIR, name)).st_ino] = name
            except OSError:
                pass
        for pid in _pids_in(mine):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                removed.append(f"process {pid}")
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)      # a server this process started: reap it
        for node in self.NODES:
            path = self.pin_dir(node)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(f"pins {path}")
        for name in mine.values():
            with contextlib.suppress(Exception):
                pr_netns.remove(name)
                removed.append(f"namespace {name}")
        return removed

    # -- status --------------------------------------------------------------------------

    def status(self) -> Dict[str, dict]:
        out = {}
        present = set(self.existing())
        for node in self.NODES:
            ns = self.ns(node)
            row = {"namespace": ns, "exists": ns in present}
            if ns in present:
                with netns.enter(ns):
                    modes = {name: _bpf.XdpLink.query(index)["mode"]
                             for index, name in socket.if_nameindex()}
                row["xdp"] = {name: mode for name, mode in modes.items() if mode}
            row["pins"] = os.path.isdir(self.pin_dir(node))
            out[node] = row
        return out

    # -- using it ------------------------------------------------------------------------

    @contextlib.contextmanager
    def datapath(self, lb: str) -> Iterator[Datapath]:
        """The balancer of LB node `lb`, with the calling thread in its namespace."""
        with netns.enter(self.ns(lb)):
            dp = Datapath.open(self.pin_dir(lb))
            try:
                yield dp
            finally:
                dp.close()

    def apply(self, state: DesiredState) -> None:
        """Apply `state` on both LB nodes (the same state: Maglev makes them agree)."""
        for lb in LBS:
            with self.datapath(lb) as dp:
                dp.apply(state)
                dp.refresh_nexthops()

    def backend(self, node: str, family: int, **kw) -> Backend:
        return Backend(node_addr(node, family), **kw)

    def vip(self, family: int = 4, mode: str = "ipip", port: int = HTTP_PORT,
            backends: Tuple[str, ...] = BACKENDS, **kw) -> Vip:
        """The lab's VIP on `port`, served by `backends` (node names)."""
        addr = VIP4 if family == 4 else VIP6
        return Vip(VipKey(addr, port, "tcp"), mode=mode,
                   backends=tuple(self.backend(b, family) for b in backends), **kw)

    def client_socket(self, family: int) -> socket.socket:
        """A TCP socket that lives in the client's namespace."""
        with netns.enter(self.ns(CLIENT)):
            return socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6,
                                 socket.SOCK_STREAM)

    def request(self, family: int = 4, sport: int = 0, path: str = "/", body: bytes = None,
                timeout: float = 5.0, port: int = HTTP_PORT, vip=None) -> bytes:
        """One HTTP/1.0 request from the client to the VIP (or to `vip`), from source port
        `sport` (0: any); returns the response body."""
        s = self.client_socket(family)
        try:
            s.settimeout(timeout)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sport:
                s.bind(("0.0.0.0" if family == 4 else "::", sport))
            s.connect((str(vip or (VIP4 if family == 4 else VIP6)), port))
            method = "POST" if body is not None else "GET"
            head = f"{method} {path} HTTP/1.0\r\nHost: vip\r\n"
            if body is not None:
                head += f"Content-Length: {len(body)}\r\n"
            s.sendall(head.encode() + b"\r\n" + (body or b""))
            chunks = []
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            s.close()
        data = b"".join(chunks)
        head, _, payload = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.0 200"):
            raise PyxlbError(f"unexpected reply: {head[:60]!r}")
        return payload

    def who(self, family: int = 4, sport: int = 0, port: int = HTTP_PORT,
            timeout: float = 5.0, vip=None) -> Tuple[str, str]:
        """(backend name, client address the backend saw) for one request."""
        name, addr, _ = self.request(family, sport, port=port, timeout=timeout,
                                     vip=vip).decode().split()
        return name, addr


def _sysctl(path: str, value) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(str(value))


def _pids_in(inodes: Dict[int, str]) -> List[int]:
    """Processes whose network namespace is one of `inodes`."""
    pids = []
    if not inodes:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino in inodes:
                pids.append(int(entry))
        except OSError:
            continue
    return [p for p in pids if p != os.getpid()]
