"""Packets per second through an LB node in network namespaces: pyxlb beside kernel DNAT.

Run as root: `make bench` (or .venv/bin/python bench/lab_throughput.py [--quick]).
Prints a table, writes bench/results/lab_throughput.json and a bar chart beside it
(lab_throughput.png).

One topology per forwarder, all alike, all built by this script and removed at the end
(also on failure or Ctrl-C):

    <p>-gen                 <p>-lb-<fwd>                     <p>-sink
    g-<fwd> ==== veth ==== in0  [forwarder]  out0 ==== veth ==== s-<fwd>
    (live-frames            198.19.1.1/24    198.19.2.1/24       (native XDP:
     generator)                                                    count and drop)

Every veth has two queues, XPS maps transmit queue i to CPU i, and transmit checksum
offload is off (docs/development.md, "Kernel facts the lab relies on"). The forwarders,
on the LB node's in0:

  pyxlb_ipip  pyxlb's balancer (Datapath.create / configure / apply / attach), two VIPs
              198.19.0.10:8080 tcp and udp with three backends 198.19.2.21-23 behind
              out0, IPIP; next hops from refresh_nexthops() (the backends' neighbour
              entries are static: the sink answers nothing)
  pyxlb_l2    the same in L2 (MAC rewrite) mode
  iptables    pass.o on in0, the kernel forwards; iptables-restore of a kube-proxy-like
              layout: KUBE-SERVICES -> KUBE-SVC-* with statistic-mode random rules ->
              KUBE-SEP-* DNAT, plus kube-proxy's filter chains (KUBE-FORWARD, ...)
  nftables    the same with a kube-proxy nftables-like table: a service-ips verdict map,
              numgen random mod 3 into endpoint chains that DNAT
  ceiling     ceiling.bpf.c: rewrite the MACs and bpf_redirect() to out0, nothing else

The VIP has a blackhole route on every LB node, so a DNAT that did not happen drops the
packet instead of forwarding it. The sink counts packets by inner protocol and by the
backend the destination MAC names; every run is checked against that (both protocols
arrive, all three backends get traffic, IPIP only from pyxlb_ipip) and, for pyxlb, against
its flow-table counters (established: hits; new flows: a miss for every packet), for
kernel DNAT against the conntrack table (new flows: one entry per packet).

The generator (xdp/bench/gen.bpf.c, built into bench_gen.o) runs with BPF_PROG_TEST_RUN in
live-frames mode from threads that entered the generator's namespace and are pinned to a
CPU, so each XDP_TX really leaves g-<fwd>. Traffic is 64-byte frames, UDP and TCP
alternately: "established" cycles over a fixed set of 1000 flows (ACKs for TCP), "new"
makes every packet a new flow (SYNs for TCP). One core: one generator thread; two cores:
one per CPU. The generator, the forwarder and the sink then share each CPU: a veth runs
its receiver's NAPI on the sending CPU, so the whole path of a packet runs on the CPU
that generated it, in the generator thread's own time (softirq work the kernel defers
goes to ksoftirqd).

What is reported. The machine is shared (other work may take the measured CPUs for a
while), so the headline figure does not divide by wall time: Mpps = packets counted at
the sink / CPU time the pipeline got (the generator threads' own clocks plus ksoftirqd's
run time on those CPUs) x the number of cores: what the cores would forward were they the
pipeline's alone. Beside it: wall Mpps (packets / wall time), the share of the cores the
pipeline got meanwhile, and Mpps per softirq core (packets / softirq time of those CPUs
in /proc/stat: the forwarder and the sink without the generator). All are measured
between counter snapshots taken while every generator call is running, which leaves out
each call's fixed costs at either end. "ns>ceil" is what a packet costs beyond the
ceiling's path: the forwarder's own work.

Each measurement: a warm-up (flows known to every forwarder, rate estimated), then one
generator call per thread sized to last --duration seconds (bounded in packets; a
watchdog interrupts a call that overruns). Before the first one pyxlb's IPv4 flow table is
brought to a long-running node's state: where new flows go (each set's back half) full,
so every new flow pushes an older one out of its set (see fill_flow_tables). For
new flows through conntrack the count is capped so that its table never fills
(nf_conntrack_max is global and read-only inside a namespace); conntrack is flushed
before and after. Rounds run every case in turn, so drift touches all alike; a figure is
the median of the rounds.
"""

import argparse
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import RESULTS_DIR, machine_info, write_results  # noqa: E402

from pyroute2 import IPRoute, NFCTSocket  # noqa: E402
from pyroute2 import netns as pr_netns  # noqa: E402

from pyxlb import _bpf, bpffs, netlink, netns  # noqa: E402
from pyxlb.bpf import object_path  # noqa: E402
from pyxlb.datapath import Datapath  # noqa: E402
from pyxlb.state import Backend, DesiredState, Vip, VipKey  # noqa: E402

# -- addresses (198.18.0.0/15 is the range set aside for benchmarks, RFC 2544) -------------

CLIENTS = "198.18.0.0"          # /16; the generator fills in the host bits
VIP = "198.19.0.10"
PORT = 8080
LB_IN_ADDR, GEN_ADDR = "198.19.1.1", "198.19.1.2"       # /24 on in0
LB_OUT_ADDR = "198.19.2.1"                              # /24 on out0
BACKENDS = {1: "198.19.2.21", 2: "198.19.2.22", 3: "198.19.2.23"}
ENCAP_SRC = "198.19.3.0/24"
SEED = 0x5EED

GEN_MAC, LB_IN_MAC = "02:00:00:00:01:01", "02:00:00:00:01:02"
LB_OUT_MAC, SINK_MAC = "02:00:00:00:02:01", "02:00:00:00:02:02"
# backend k's MAC ends in 0x2k: the sink counts by the last two bits of the destination MAC
BACKEND_MACS = {k: f"02:00:00:00:02:2{k}" for k in BACKENDS}

FRAME_LEN = 64
FLOWS = 1000                    # established traffic: this many flows in all
NUD_PERMANENT = 0x80
RTN_BLACKHOLE = 6

# -- forwarders and targets --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Forwarder:
    key: str
    label: str
    short: str                  # in interface and namespace names
    kind: str                   # pyxlb, iptables, nftables, ceiling
    mode: Optional[str] = None  # pyxlb: ipip or l2

    @property
    def conntrack(self) -> bool:
        return self.kind in ("iptables", "nftables")


FORWARDERS = (
    Forwarder("pyxlb_ipip", "pyxlb IPIP", "ipip", "pyxlb", "ipip"),
    Forwarder("pyxlb_l2", "pyxlb L2", "l2", "pyxlb", "l2"),
    Forwarder("iptables", "iptables DNAT", "ipt", "iptables"),
    Forwarder("nftables", "nftables DNAT", "nft", "nftables"),
    Forwarder("ceiling", "XDP redirect (ceiling)", "ceil", "ceiling"),
)
BY_KEY = {f.key: f for f in FORWARDERS}
TRAFFIC = {"established": f"established ({FLOWS} flows)", "new": "new flow every packet"}

# (what, forwarder's figure over the reference's, at least), judged per pyxlb mode
TARGETS = [
    ("x_iptables", "established", None, 5.0),
    ("x_iptables", "new", None, 20.0),
    ("x_ceiling", "established", 1, 0.70),
    ("x_ceiling", "new", 1, 0.70),
]

CT_NEW_BUDGET = 200_000         # new flows through conntrack per measurement (max 262144)
MAX_PACKETS_PER_THREAD = 60_000_000


# -- small helpers ----------------------------------------------------------------------


def sh(ns: str, argv: List[str], stdin: Optional[str] = None) -> str:
    """Run a command inside namespace `ns` (`ip netns exec` gives it its own /sys too)."""
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns} failed: {r.stderr.strip()}")
    return r.stdout


def sysctl(path: str, value) -> None:
    with open(f"/proc/sys/{path}", "w") as f:
        f.write(str(value))


def read_sysctl(path: str) -> str:
    with open(f"/proc/sys/{path}") as f:
        return f.read().strip()


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def tool_version(argv: List[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "missing"


def cpu_times() -> Dict[int, List[int]]:
    """Per-CPU /proc/stat counters (USER_HZ ticks): user nice system idle iowait irq
    softirq steal ..."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                name, *fields = line.split()
                out[int(name[3:])] = [int(x) for x in fields]
    return out


def ksoftirqd_pids(cpus: List[int]) -> Dict[int, int]:
    """{cpu: pid of ksoftirqd/cpu}: softirq work the kernel defers runs there."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                continue
            if comm.startswith("ksoftirqd/") and int(comm.split("/")[1]) in cpus:
                out[int(comm.split("/")[1])] = int(entry)
    return out


def run_time_s(pids) -> float:
    """Seconds on CPU of these tasks (/proc/PID/schedstat, current to the last tick)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


# -- rulesets -------------------------------------------------------------------------------


def iptables_rules() -> str:
    """kube-proxy's iptables layout for two services (tcp and udp) with three endpoints
    each: nat KUBE-SERVICES -> KUBE-SVC (statistic random) -> KUBE-SEP (DNAT), and its
    filter chains. No clusterCIDR is set, so client traffic is not masqueraded (its
    source is kept, as with pyxlb's DSR)."""
    nat = [":KUBE-SERVICES - [0:0]", ":KUBE-POSTROUTING - [0:0]", ":KUBE-MARK-MASQ - [0:0]",
           ":KUBE-NODEPORTS - [0:0]",
           "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
           "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
           "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" "
           "-j KUBE-POSTROUTING",
           "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
           "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
           "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
           "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring "
           "SNAT\" -j MASQUERADE --random-fully"]
    services = []
    for proto in ("tcp", "udp"):
        svc = f"KUBE-SVC-BENCH{proto.upper()}"
        nat.append(f":{svc} - [0:0]")
        services.append(f"-A KUBE-SERVICES -d {VIP}/32 -p {proto} -m comment --comment "
                        f"\"bench/vip:{proto} cluster IP\" -m {proto} --dport {PORT} -j {svc}")
        n = len(BACKENDS)
        for i, (k, addr) in enumerate(sorted(BACKENDS.items())):
            sep = f"KUBE-SEP-BENCH{proto.upper()}{k}"
            nat.append(f":{sep} - [0:0]")
            prob = "" if i == n - 1 else \
                f"-m statistic --mode random --probability {1 / (n - i):.11f} "
            nat.append(f"-A {svc} -m comment --comment \"bench/vip:{proto} -> {addr}:{PORT}\" "
                       f"{prob}-j {sep}")
            nat.append(f"-A {sep} -s {addr}/32 -m comment --comment \"bench/vip:{proto}\" "
                       f"-j KUBE-MARK-MASQ")
            nat.append(f"-A {sep} -p {proto} -m comment --comment \"bench/vip:{proto}\" "
                       f"-m {proto} -j DNAT --to-destination {addr}:{PORT}")
    services.append("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; "
                    "NOTE: this must be the last rule in this chain\" -m addrtype "
                    "--dst-type LOCAL -j KUBE-NODEPORTS")
    filt = [":KUBE-FORWARD - [0:0]", ":KUBE-SERVICES - [0:0]",
            ":KUBE-EXTERNAL-SERVICES - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]",
            ":KUBE-NODEPORTS - [0:0]", ":KUBE-FIREWALL - [0:0]",
            "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load "
            "balancer firewall\" -j KUBE-PROXY-FIREWALL",
            "-A INPUT -j KUBE-FIREWALL",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load "
            "balancer firewall\" -j KUBE-PROXY-FIREWALL",
            "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service "
            "portals\" -j KUBE-SERVICES",
            "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes "
            "externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES",
            "-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block "
            "incoming localnet connections\" -m conntrack ! --ctstate "
            "RELATED,ESTABLISHED,DNAT -j DROP",
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark "
            "--mark 0x4000/0x4000 -j ACCEPT",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" "
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    return "\n".join(["*filter", *filt, "COMMIT", "*nat", *nat, *services, "COMMIT", ""])


def nftables_rules() -> str:
    """kube-proxy's nftables layout, reduced to what two services with three endpoints
    each use: the service-ips verdict map, numgen random into endpoint chains that DNAT,
    and the filter hooks it installs (their maps empty: no firewall, every service has
    endpoints). As for iptables, nothing is masqueraded."""
    chains = {
        "filter-prerouting": ["type filter hook prerouting priority dstnat - 10; "
                              "policy accept;", "ct state new jump firewall-check"],
        "filter-forward": ["type filter hook forward priority -110; policy accept;",
                           "ct state new jump service-endpoints-check",
                           "ct state new jump cluster-ips-check"],
        "firewall-check": ["ip daddr . meta l4proto . th dport vmap @firewall-ips"],
        "service-endpoints-check": ["ip daddr . meta l4proto . th dport vmap "
                                    "@no-endpoint-services"],
        "cluster-ips-check": ["ip daddr @cluster-ips reject comment \"Reject traffic to "
                              "invalid ports of ClusterIPs\""],
        "nat-prerouting": ["type nat hook prerouting priority dstnat; policy accept;",
                           "jump services"],
        "nat-postrouting": ["type nat hook postrouting priority srcnat; policy accept;",
                            "jump masquerading"],
        "mark-for-masquerade": ["meta mark set meta mark | 0x00004000"],
        "masquerading": ["meta mark & 0x00004000 == 0 return",
                         "meta mark set meta mark ^ 0x00004000",
                         "masquerade fully-random"],
        "services": ["ip daddr . meta l4proto . th dport vmap @service-ips",
                     "fib daddr type local ip daddr != 127.0.0.0/8 "
                     "meta l4proto . th dport vmap @service-nodeports"],
    }
    elements = []
    for proto in ("tcp", "udp"):
        svc = f"service-BENCH-{proto}"
        elements.append(f"{VIP} . {proto} . {PORT} : goto {svc}")
        vmap = []
        for i, (k, addr) in enumerate(sorted(BACKENDS.items())):
            ep = f"endpoint-BENCH-{proto}-{k}"
            vmap.append(f"{i} : goto {ep}")
            chains[ep] = [f"ip saddr {addr} jump mark-for-masquerade",
                          f"meta l4proto {proto} dnat to {addr}:{PORT}"]
        chains[svc] = [f"numgen random mod {len(BACKENDS)} vmap {{ {', '.join(vmap)} }}"]
    lines = ["table ip kube-proxy {", "\tcomment \"rules for kube-proxy\"",
             f"\tset cluster-ips {{ type ipv4_addr; elements = {{ {VIP} }}; }}",
             "\tmap no-endpoint-services { type ipv4_addr . inet_proto . inet_service : "
             "verdict; }",
             "\tmap firewall-ips { type ipv4_addr . inet_proto . inet_service : verdict; }",
             "\tmap service-nodeports { type inet_proto . inet_service : verdict; }",
             "\tmap service-ips { type ipv4_addr . inet_proto . inet_service : verdict; "
             f"elements = {{ {', '.join(elements)} }}; }}"]
    for name, body in chains.items():
        lines += [f"\tchain {name} {{", *(f"\t\t{rule}" for rule in body), "\t}"]
    return "\n".join(lines + ["}", ""])


# -- the lab ----------------------------------------------------------------------------------


class Lab:
    """The namespaces, links and programs; down() removes all of it (idempotent)."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.made_ns: List[str] = []
        self.pin_dirs: List[str] = []
        self.datapaths: Dict[str, Datapath] = {}
        self.sinks: Dict[str, "_bpf.Map"] = {}
        self.gen_ifindex: Dict[str, int] = {}
        self.handles: list = []         # program / map handles to close at the end
        self.gen_prog = None
        self.gen_config = None

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def lb(self, f: Forwarder) -> str:
        return self.ns(f"lb-{f.short}")

    # -- build ---------------------------------------------------------------------------

    def up(self) -> None:
        bpffs.ensure_mounted()
        for node in ["gen", "sink", *(f"lb-{f.short}" for f in FORWARDERS)]:
            name = self.ns(node)
            if name in pr_netns.listnetns():
                raise RuntimeError(f"namespace {name} exists already")
            pr_netns.create(name)
            self.made_ns.append(name)
            with netns.enter(name):
                # no IPv6 (no router solicitations, no MLD): the links carry bench traffic only
                sysctl("net/ipv6/conf/all/disable_ipv6", 1)
                sysctl("net/ipv6/conf/default/disable_ipv6", 1)
                with IPRoute() as ipr:
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for f in FORWARDERS:
            self._links(f)
        self._load_generator()
        for f in FORWARDERS:
            self._sink(f)
            self._lb_node(f)
            {"pyxlb": self._pyxlb, "iptables": self._iptables, "nftables": self._nftables,
             "ceiling": self._ceiling}[f.kind](f)

    def _veth(self, ns_a: str, if_a: str, mac_a: str, ns_b: str, if_b: str, mac_b: str):
        q = {"num_tx_queues": 2, "num_rx_queues": 2}
        with netns.enter(ns_a), IPRoute() as ipr:
            ipr.link("add", ifname=if_a, kind="veth", address=mac_a, **q,
                     peer={"ifname": if_b, "net_ns_fd": ns_b, "address": mac_b, **q})
        for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
            with netns.enter(ns):
                with IPRoute() as ipr:
                    ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
                netlink.tx_checksum_off(ifname)
            # transmit queue i -> CPU i (a CPU beyond the queues keeps the default)
            cmds = [f"echo {1 << c:x} > /sys/class/net/{ifname}/queues/tx-{c}/xps_cpus"
                    for c in range(2) if c < os.cpu_count()]
            sh(ns, ["sh", "-c", "; ".join(cmds)])

    def _links(self, f: Forwarder) -> None:
        lb = self.lb(f)
        self._veth(self.ns("gen"), f"g-{f.short}", GEN_MAC, lb, "in0", LB_IN_MAC)
        self._veth(lb, "out0", LB_OUT_MAC, self.ns("sink"), f"s-{f.short}", SINK_MAC)
        with netns.enter(self.ns("gen")):
            self.gen_ifindex[f.key] = socket.if_nametoindex(f"g-{f.short}")

    def _lb_node(self, f: Forwarder) -> None:
        """Addresses, routes and neighbours of an LB node; the same on every one."""
        with netns.enter(self.lb(f)):
            sysctl("net/ipv4/ip_forward", 1)
            for dev in ("all", "default", "in0", "out0"):
                sysctl(f"net/ipv4/conf/{dev}/rp_filter", 0)
            with IPRoute() as ipr:
                i_in = ipr.link_lookup(ifname="in0")[0]
                i_out = ipr.link_lookup(ifname="out0")[0]
                ipr.addr("add", index=i_in, address=LB_IN_ADDR, prefixlen=24)
                ipr.addr("add", index=i_out, address=LB_OUT_ADDR, prefixlen=24)
                # static neighbours: the generator and the sink answer no ARP
                ipr.neigh("add", dst=GEN_ADDR, lladdr=GEN_MAC, ifindex=i_in,
                          state=NUD_PERMANENT)
                for k, addr in BACKENDS.items():
                    ipr.neigh("add", dst=addr, lladdr=BACKEND_MACS[k], ifindex=i_out,
                              state=NUD_PERMANENT)
                ipr.route("add", dst=f"{CLIENTS}/16", gateway=GEN_ADDR)
                # a DNAT that did not happen must drop, not forward
                ipr.route("add", dst=f"{VIP}/32", type=RTN_BLACKHOLE)

    def _load_generator(self) -> None:
        obj = _bpf.BpfObject.open(object_path("bench_gen"))
        try:
            obj.load()
            self.gen_prog = obj.program("gen_packet")
            self.gen_config = obj.map("gen_config")
        finally:
            obj.close()
        self.handles += [self.gen_prog, self.gen_config]

    def _sink(self, f: Forwarder) -> None:
        obj = _bpf.BpfObject.open(object_path("bench_sink"))
        try:
            obj.load()
            prog = obj.program("sink_count")
            self.sinks[f.key] = obj.map("sink_stats")
        finally:
            obj.close()
        self.handles.append(self.sinks[f.key])
        with prog, netns.enter(self.ns("sink")):
            _bpf.XdpLink.attach(f"s-{f.short}", prog, mode="native")

    def _attach_object(self, f: Forwarder, name: str, program: str):
        """Attach one program of bench object / pyxlb object `name` to the LB node's in0;
        returns the loaded object's maps by name (the caller closes them)."""
        obj = _bpf.BpfObject.open(object_path(name))
        try:
            obj.load()
            prog = obj.program(program)
            maps = {m: obj.map(m) for m in obj.map_names() if not m.startswith(".")}
        finally:
            obj.close()
        with prog, netns.enter(self.lb(f)):
            _bpf.XdpLink.attach("in0", prog, mode="native")
        self.handles += maps.values()
        return maps

    def _pyxlb(self, f: Forwarder) -> None:
        pin_dir = os.path.join(bpffs.BPFFS_ROOT, f"{self.lb(f)}")
        self.pin_dirs.append(pin_dir)
        with netns.enter(self.lb(f)):
            dp = Datapath.create(pin_dir)
            self.datapaths[f.key] = dp
            dp.configure(seed=SEED, src4=ENCAP_SRC)
            backends = tuple(Backend(addr) for addr in BACKENDS.values())
            dp.apply(DesiredState(tuple(
                Vip(VipKey(VIP, PORT, proto), backends=backends, mode=f.mode)
                for proto in ("tcp", "udp"))))
            dp.attach("in0", "native")
            hops = dp.refresh_nexthops()
        if hops != len(BACKENDS):
            raise RuntimeError(f"{f.key}: refresh_nexthops() filled {hops} next hops, "
                               f"expected {len(BACKENDS)}")

    def _kernel_forwarder(self, f: Forwarder) -> None:
        self._attach_object(f, "pass", "xlb_pass")     # receives the generator's XDP_TX
        with netns.enter(self.lb(f)):
            # a NIC would have verified the L4 checksum; a frame from XDP arrives unverified
            # and conntrack would check it in software: spare the DNAT forwarders that cost
            sysctl("net/netfilter/nf_conntrack_checksum", 0)

    def _iptables(self, f: Forwarder) -> None:
        self._kernel_forwarder(f)
        sh(self.lb(f), ["iptables-restore"], stdin=iptables_rules())

    def _nftables(self, f: Forwarder) -> None:
        self._kernel_forwarder(f)
        sh(self.lb(f), ["nft", "-f", "-"], stdin=nftables_rules())

    def _ceiling(self, f: Forwarder) -> None:
        maps = self._attach_object(f, "bench_ceiling", "ceil_redirect")
        with netns.enter(self.lb(f)):
            out = socket.if_nametoindex("out0")
        maps["ceil_config"].update(0, mac_bytes(BACKEND_MACS[1]) + mac_bytes(LB_OUT_MAC)
                                   + struct.pack("=I", out))

    # -- state during runs ---------------------------------------------------------------

    def conntrack_count(self, f: Forwarder) -> int:
        with netns.enter(self.lb(f)):
            return int(read_sysctl("net/netfilter/nf_conntrack_count"))

    def conntrack_flush(self, f: Forwarder) -> None:
        with netns.enter(self.lb(f)):
            ct = NFCTSocket()
            try:
                ct.flush()
            finally:
                ct.close()

    def sink_counts(self, f: Forwarder) -> Dict[str, int]:
        v = self.sinks[f.key].lookup_percpu_sum(0)
        names = ("packets", "bytes", "tcp", "udp", "ipip", "other", "mac0", "backend1",
                 "backend2", "backend3")
        return dict(zip(names, v))

    # -- tear down -----------------------------------------------------------------------

    def down(self) -> List[str]:
        done = []
        for f in FORWARDERS:
            if f.conntrack and self.lb(f) in self.made_ns:
                with contextlib.suppress(Exception):
                    self.conntrack_flush(f)
        for dp in self.datapaths.values():
            with contextlib.suppress(Exception):
                dp.destroy()            # the pins; the attachment goes with the namespace
            with contextlib.suppress(Exception):
                dp.close()
        self.datapaths.clear()
        for d in self.pin_dirs:
            if os.path.isdir(d):
                shutil.rmtree(d, ignore_errors=True)
            done.append(f"pins {d}")
        for h in self.handles:
            with contextlib.suppress(Exception):
                h.close()
        self.handles.clear()
        for name in reversed(self.made_ns):
            with contextlib.suppress(Exception):
                pr_netns.remove(name)
                done.append(f"namespace {name}")
        self.made_ns.clear()
        return done


# -- the generator ------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def _on_sigusr1(signum, frame):
    pass    # only there so that the signal interrupts a test run instead of killing us


def generate(lab: Lab, f: Forwarder, cpus: List[int], per_thread: int, timeout: float,
             sample=None, expect_s: float = 1.0) -> dict:
    """One live-frames test run of `per_thread` packets on each CPU in `cpus`, all at
    once, from the generator's namespace out of g-<fwd>.

    With `sample` (a function returning a snapshot), the calling thread takes snapshots
    while every generator thread is still inside its call, from a little after the start
    (each call first waits for the kernel to switch its XDP dispatcher) until the first
    thread returns: the caller measures between the first and the last of them, which
    leaves out the calls' fixed costs at either end. Returns those snapshots (each
    (time, snapshot, CPU seconds of the pipeline so far)), the wall time from the common start to the last return, the
    kernel's own loop time (max over threads) and how many packets were sent."""
    ifindex = lab.gen_ifindex[f.key]
    ctx = struct.pack("=6I", 0, FRAME_LEN, 0, ifindex, 0, 0)  # struct xdp_md
    frame = bytes(FRAME_LEN)
    barrier = threading.Barrier(len(cpus) + 1)
    results: List[Optional[dict]] = [None] * len(cpus)
    done = threading.Event()

    def worker(i: int, cpu: int) -> None:
        out = {"sent": 0, "kernel_s": 0.0, "error": None}
        try:
            os.sched_setaffinity(0, {cpu})
            with netns.enter(lab.ns("gen")):
                barrier.wait(timeout=10)
                t0 = time.monotonic()
                try:
                    _, _, ns_per = lab.gen_prog.test_run(
                        frame, repeat=per_thread, ctx=ctx, flags=_bpf.TEST_XDP_LIVE_FRAMES)
                    out["sent"] = per_thread
                    out["kernel_s"] = ns_per * per_thread / 1e9
                except InterruptedError:
                    out["error"] = "interrupted by the watchdog"
                out["t0"], out["t1"] = t0, time.monotonic()
        except Exception as exc:   # reported by the caller
            out["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            done.set()
        results[i] = out

    threads = [threading.Thread(target=worker, args=(i, c), daemon=True)
               for i, c in enumerate(cpus)]
    for t in threads:
        t.start()
    try:
        snaps = _follow(threads, barrier, done, cpus, timeout, sample, expect_s)
    finally:
        barrier.abort()             # frees threads still waiting to start (none if started)
        for t in threads:
            while t.is_alive():     # the watchdog: a signal ends the kernel's loop
                signal.pthread_kill(t.ident, signal.SIGUSR1)
                t.join(0.2)
    errors = [r["error"] for r in results if r is None or r["error"]]
    if errors:
        raise Interrupt("; ".join(str(e) for e in errors))
    return {"wall_s": max(r["t1"] for r in results) - min(r["t0"] for r in results),
            "kernel_s": max(r["kernel_s"] for r in results),
            "sent": sum(r["sent"] for r in results), "snaps": snaps}


def _follow(threads, barrier, done, cpus, timeout, sample, expect_s) -> list:
    """Start the generator threads together, take the snapshots, wait for the threads
    until `timeout` (the caller interrupts any still running)."""
    barrier.wait(timeout=10)
    deadline = time.monotonic() + timeout
    snaps = []
    if sample is not None:
        softirqd = ksoftirqd_pids(cpus).values()
        step = min(0.1, max(0.01, expect_s / 25))
        try:
            clocks = [time.pthread_getcpuclockid(t.ident) for t in threads]
        except OSError:         # a thread is gone already: a run too short to sample
            done.set()
        if not done.wait(max(0.05, expect_s * 0.05)):
            while not done.is_set() and time.monotonic() < deadline:
                t_a = time.monotonic()
                snap = sample()
                # CPU time of the pipeline: the generator threads (the forwarder and the
                # sink run in softirq on their time) and ksoftirqd (softirq work deferred)
                try:
                    cpu_s = sum(time.clock_gettime(c) for c in clocks)
                except OSError:
                    break       # a thread ended (its clock with it): not inside any more
                cpu_s += run_time_s(softirqd)
                t_b = time.monotonic()
                if done.is_set():
                    break           # a thread may have returned while we read: not inside
                snaps.append(((t_a + t_b) / 2, snap, cpu_s))
                done.wait(step)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return snaps


def set_traffic(lab: Lab, traffic: str, ncpus: int) -> None:
    flows = FLOWS // ncpus if traffic == "established" else 0
    lab.gen_config.update(0, mac_bytes(LB_IN_MAC) + mac_bytes(GEN_MAC)
                          + socket.inet_aton(CLIENTS) + socket.inet_aton(VIP)
                          + struct.pack("!H", PORT) + b"\0\0" + struct.pack("=I", flows)
                          + struct.pack("=III", 0, 0, 4) + bytes(32))   # GEN_FLOWS, IPv4


def fill_flow_tables(lab: Lab, core_sets: Dict[int, List[int]]) -> None:
    """Bring every pyxlb node to the state of a node that has been up a while: where a new
    IPv4 flow goes, the back half of its set, full of other flows (twice the table's
    capacity of new flows went through), so a new flow pushes the oldest flow there out.
    The front halves hold flows that sent a second packet: here the established flows,
    which go in during each measurement's warm-up. Where in its set a flow sits costs
    nothing (a set is two cache lines, read together; a lookup compares all four ways)."""
    cpus = core_sets[max(core_sets)]
    set_traffic(lab, "new", len(cpus))
    for f in FORWARDERS:
        dp = lab.datapaths.get(f.key)
        if dp is not None:
            per_thread = 2 * dp.flow_capacities()[0] // len(cpus) + 1     # IPv4
            generate(lab, f, cpus, per_thread, timeout=60)


# -- one measurement ---------------------------------------------------------------------


def _delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a.get(k, 0) for k in b}


def measure(lab: Lab, f: Forwarder, traffic: str, cpus: List[int], duration: float,
            rate_hint: Optional[float]) -> dict:
    """Warm up, then one timed run; returns the figures and the checks that failed."""
    set_traffic(lab, traffic, len(cpus))
    if f.conntrack:
        lab.conntrack_flush(f)
    # warm-up: every established flow seen many times over; also a rate estimate from
    # the kernel's loop time (the wall time of a short call is mostly fixed cost)
    warm = 20_000 if traffic == "established" else 10_000
    s0 = lab.sink_counts(f)
    g = generate(lab, f, cpus, warm, timeout=30)
    time.sleep(0.02)
    got = lab.sink_counts(f)["packets"] - s0["packets"]
    estimate = got / g["kernel_s"] if g["kernel_s"] > 0 else 1e6
    rate = rate_hint or estimate
    if f.conntrack and traffic == "new":
        lab.conntrack_flush(f)
    per_thread = int(rate * duration / len(cpus))
    if f.conntrack and traffic == "new":
        per_thread = min(per_thread, CT_NEW_BUDGET // len(cpus))
    per_thread = max(10_000, min(per_thread, MAX_PACKETS_PER_THREAD))

    dp = lab.datapaths.get(f.key)
    st0 = dp.stats() if dp else {}
    s0 = lab.sink_counts(f)

    def snapshot():
        return lab.sink_counts(f)["packets"], cpu_times()

    g = generate(lab, f, cpus, per_thread, timeout=3 * duration + 5, sample=snapshot,
                 expect_s=per_thread * len(cpus) / rate)
    time.sleep(0.02)                # the last frames reach the sink within microseconds
    sink = _delta(s0, lab.sink_counts(f))
    stats = _delta(st0, dp.stats()) if dp else {}
    ct_entries = lab.conntrack_count(f) if f.conntrack else None
    if f.conntrack:
        lab.conntrack_flush(f)

    # the rate between the first and last snapshot taken inside the generator calls;
    # a run too short for two snapshots falls back to the whole call's wall time
    snaps = g["snaps"]
    window = snaps[-1][0] - snaps[0][0] if len(snaps) >= 2 else 0.0
    hz = os.sysconf("SC_CLK_TCK")
    if window >= 0.1:
        (_, (pa, ca), ua), (_, (pb, cb), ub) = snaps[0], snaps[-1]
        wall_mpps, basis = (pb - pa) / window / 1e6, "window"
        softirq_s = sum(cb[c][6] - ca[c][6] for c in cpus) / hz
        steal_s = sum(cb[c][7] - ca[c][7] for c in cpus) / hz
        window_packets = pb - pa
        cpu_s = ub - ua
    else:
        wall_mpps, basis = sink["packets"] / g["wall_s"] / 1e6, "whole call"
        softirq_s = steal_s = cpu_s = None
        window_packets = None
    n = sink["packets"]
    # what the cores would forward were they the pipeline's alone: packets per second of
    # its CPU time, times the cores (the machine is shared; the wall figure is kept too)
    mpps = window_packets * len(cpus) / cpu_s / 1e6 if cpu_s else wall_mpps
    run = {
        "mpps": mpps, "mpps_wall": wall_mpps, "basis": basis, "window_s": round(window, 4),
        "cpu_s": cpu_s, "cpu_share": cpu_s / (window * len(cpus)) if cpu_s else None,
        "window_packets": window_packets, "snapshots": len(snaps),
        "mpps_whole_call": n / g["wall_s"] / 1e6,
        "mpps_kernel_time": n / g["kernel_s"] / 1e6 if g["kernel_s"] else None,
        "packets": n, "sent": g["sent"], "delivered": n / g["sent"] if g["sent"] else 0,
        "wall_s": round(g["wall_s"], 4), "softirq_s": softirq_s, "steal_s": steal_s,
        "mpps_per_softirq_core": (window_packets / softirq_s / 1e6
                                  if softirq_s and softirq_s >= 0.05 else None),
        "sink": sink,
    }
    if dp:
        run["xlb_stats"] = {k: v for k, v in stats.items() if v}
    if ct_entries is not None:
        run["conntrack_entries"] = ct_entries
    run["failed_checks"] = check_run(f, traffic, run)
    return run


def check_run(f: Forwarder, traffic: str, run: dict) -> List[str]:
    """What the sink and the forwarder's own counters say about the run."""
    bad = []
    s, n = run["sink"], run["packets"]
    if n == 0:
        return ["nothing reached the sink"]
    l4 = s["tcp"] + s["udp"]
    if s["other"] or not 0.35 <= s["tcp"] / max(l4, 1) <= 0.65:
        bad.append(f"protocol mix off: tcp {s['tcp']} udp {s['udp']} other {s['other']}")
    if s["ipip"] != (n if f.mode == "ipip" else 0):
        bad.append(f"{s['ipip']} of {n} packets were IPIP")
    shares = [s[f"backend{k}"] / n for k in BACKENDS]
    if f.kind != "ceiling" and min(shares) < 0.15:
        bad.append("backend shares " + ", ".join(f"{x:.0%}" for x in shares))
    st = run.get("xlb_stats")
    if st is not None:
        handled = st.get("flow_hit", 0) + st.get("flow_miss", 0)
        if st.get("redirect", 0) < n:
            bad.append(f"pyxlb redirected {st.get('redirect', 0)}, the sink saw {n}")
        drops = {k: v for k, v in st.items() if k.startswith(("drop_", "pass_"))}
        if drops:
            bad.append(f"pyxlb dropped or passed: {drops}")
        key = "flow_hit" if traffic == "established" else "flow_miss"
        if handled and st.get(key, 0) < 0.99 * handled:
            bad.append(f"pyxlb {key} {st.get(key, 0)} of {handled} packets")
    if f.conntrack and traffic == "new" and run["conntrack_entries"] < 0.95 * n:
        bad.append(f"{run['conntrack_entries']} conntrack entries for {n} new flows")
    if f.conntrack and traffic == "established" and run["conntrack_entries"] > FLOWS + 50:
        bad.append(f"{run['conntrack_entries']} conntrack entries for {FLOWS} flows")
    return bad


# -- summary, table, chart ------------------------------------------------------------------


def summarise(runs: Dict[tuple, List[dict]], core_counts: List[int]) -> dict:
    rows = []
    med = {}
    for (fkey, traffic, cores), rs in runs.items():
        ok = [r for r in rs if not r["failed_checks"]]
        use = ok or rs
        mpps = [r["mpps"] for r in use]
        per_core = [r["mpps_per_softirq_core"] for r in use if r["mpps_per_softirq_core"]]
        shares = [r["cpu_share"] for r in use if r["cpu_share"]]
        row = {"forwarder": fkey, "label": BY_KEY[fkey].label, "traffic": traffic,
               "cores": cores, "mpps": statistics.median(mpps), "mpps_min": min(mpps),
               "mpps_max": max(mpps),
               "mpps_wall": statistics.median(r["mpps_wall"] for r in use),
               "cpu_share": statistics.median(shares) if shares else None,
               "mpps_per_softirq_core": statistics.median(per_core) if per_core else None,
               "delivered": statistics.median(r["delivered"] for r in use),
               "runs_ok": len(ok), "runs": len(rs),
               "failed_checks": sorted({c for r in rs for c in r["failed_checks"]})}
        med[(fkey, traffic, cores)] = row["mpps"]
        rows.append(row)
    for row in rows:
        k = (row["traffic"], row["cores"])
        ipt, ceil = med.get(("iptables", *k)), med.get(("ceiling", *k))
        row["x_iptables"] = row["mpps"] / ipt if ipt else None
        row["x_ceiling"] = row["mpps"] / ceil if ceil else None
        # what the forwarder adds per packet to the ceiling's path, per core
        row["ns_over_ceiling"] = (1e3 / row["mpps"] - 1e3 / ceil) * row["cores"] \
            if ceil else None
    for row in rows:
        ipt = next((r for r in rows if r["forwarder"] == "iptables"
                    and r["traffic"] == row["traffic"] and r["cores"] == row["cores"]), None)
        own = row["ns_over_ceiling"]
        row["work_ratio_iptables"] = ipt["ns_over_ceiling"] / own \
            if ipt and ipt["ns_over_ceiling"] and own and own > 0 else None
    order = {f.key: i for i, f in enumerate(FORWARDERS)}
    rows.sort(key=lambda r: (list(TRAFFIC).index(r["traffic"]), r["cores"],
                             order[r["forwarder"]]))
    targets = []
    for what, traffic, cores, need in TARGETS:
        for fkey in ("pyxlb_ipip", "pyxlb_l2"):
            for c in ([cores] if cores else core_counts):
                row = next((r for r in rows if r["forwarder"] == fkey
                            and r["traffic"] == traffic and r["cores"] == c), None)
                if row is None or row[what] is None:
                    continue
                ref = "iptables" if what == "x_iptables" else "ceiling"
                targets.append({
                    "target": f"{BY_KEY[fkey].label} >= "
                              + (f"{need:g}x {ref}" if what == "x_iptables"
                                 else f"{need:.0%} of {ref}")
                              + f", {traffic}, {c} core{'s' if c > 1 else ''}",
                    "forwarder": fkey, "traffic": traffic, "cores": c, "metric": what,
                    "value": row[what], "need": need,
                    "pass": row[what] >= need and row["runs_ok"] == row["runs"]})
    return {"rows": rows, "targets": targets}


def print_table(summary: dict) -> None:
    head = (f"{'traffic':<12} {'cores':>5}  {'forwarder':<23} {'Mpps':>6} {'(min-max)':>13} "
            f"{'wall Mpps':>9} {'CPU got':>7} {'Mpps/sirq-core':>14} {'x iptables':>10} "
            f"{'x ceiling':>9} {'ns>ceil':>7}")
    print(head)
    print("-" * len(head))
    last = None
    for r in summary["rows"]:
        if last and last != (r["traffic"], r["cores"]):
            print()
        last = (r["traffic"], r["cores"])
        pc = f"{r['mpps_per_softirq_core']:.2f}" if r["mpps_per_softirq_core"] else "-"
        share = f"{r['cpu_share']:.0%}" if r["cpu_share"] else "-"
        xi = f"{r['x_iptables']:.1f}x" if r["x_iptables"] else "-"
        xc = f"{r['x_ceiling']:.0%}" if r["x_ceiling"] else "-"
        span = f"({r['mpps_min']:.2f}-{r['mpps_max']:.2f})"
        flag = "" if not r["failed_checks"] else \
            f"  CHECK FAILED ({r['runs'] - r['runs_ok']} of {r['runs']} runs): " \
            + "; ".join(r["failed_checks"])
        print(f"{r['traffic']:<12} {r['cores']:>5}  {r['label']:<23} {r['mpps']:>6.2f} "
              f"{span:>13} {r['mpps_wall']:>9.2f} {share:>7} {pc:>14} {xi:>10} {xc:>9} "
              f"{r['ns_over_ceiling'] or 0:>7.0f}{flag}")
    print("\nMpps: packets at the sink per second of the CPU time the generator, forwarder "
          "and sink got,\n  times the cores (what the cores would forward were they theirs "
          "alone); wall Mpps: per\n  second of wall time; CPU got: their share of the cores "
          "meanwhile (the rest went to\n  other work on this shared machine); Mpps/sirq-core: "
          "per second of softirq time (/proc/stat),\n  where the forwarder and the sink run; "
          "ns>ceil: CPU time a packet costs beyond the\n  ceiling's (the forwarder's own "
          "work).")
    print()
    head = f"{'target':<58} {'value':>7} {'need':>6}  result"
    print(head)
    print("-" * len(head))
    for t in summary["targets"]:
        fmt = (lambda v: f"{v:.1f}x") if t["metric"] == "x_iptables" else (lambda v: f"{v:.0%}")
        print(f"{t['target']:<58} {fmt(t['value']):>7} {fmt(t['need']):>6}  "
              f"{'PASS' if t['pass'] else 'FAIL'}")
    print("\nthe forwarder's own work per packet (ns>ceil), iptables DNAT's over pyxlb's "
          "(not a target):")
    for r in summary["rows"]:
        if BY_KEY[r["forwarder"]].kind == "pyxlb" and r["work_ratio_iptables"]:
            print(f"  {r['label']:<11} {r['traffic']:<12} {r['cores']} core"
                  f"{'s' if r['cores'] > 1 else ' '}  {r['ns_over_ceiling']:6.0f} ns vs "
                  f"{r['ns_over_ceiling'] * r['work_ratio_iptables']:6.0f} ns: "
                  f"{r['work_ratio_iptables']:.1f}x less")


def chart(summary: dict, core_counts: List[int], path: str, subtitle: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["forwarder"], r["traffic"], r["cores"]): r for r in summary["rows"]}
    colors = {1: "#4C72B0", 2: "#DD8452"}
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), sharey=True)
    width = 0.8 / len(core_counts)
    top = max(r["mpps_max"] for r in summary["rows"])
    for ax, traffic in zip(axes, TRAFFIC):
        xs = range(len(FORWARDERS))
        for j, cores in enumerate(core_counts):
            vals, lo, hi = [], [], []
            for f in FORWARDERS:
                r = rows.get((f.key, traffic, cores))
                vals.append(r["mpps"] if r else 0)
                lo.append(r["mpps"] - r["mpps_min"] if r else 0)
                hi.append(r["mpps_max"] - r["mpps"] if r else 0)
            pos = [x - 0.4 + width * (j + 0.5) for x in xs]
            bars = ax.bar(pos, vals, width * 0.92, color=colors.get(cores, "#55A868"),
                          label=f"{cores} core{'s' if cores > 1 else ''}",
                          yerr=[lo, hi], capsize=3, error_kw={"elinewidth": 0.8})
            for b, f, v in zip(bars, FORWARDERS, vals):
                r = rows.get((f.key, traffic, cores))
                text = f"{v:.2f}" if v < 1 else f"{v:.1f}"
                if r and f.kind == "pyxlb" and r["x_iptables"]:
                    text += f"\n{r['x_iptables']:.1f}x ipt"
                    if r["x_ceiling"]:
                        text += f"\n{r['x_ceiling']:.0%} ceil"
                ax.annotate(text, (b.get_x() + b.get_width() / 2, v + hi[FORWARDERS.index(f)]),
                            xytext=(0, 3), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7.5)
        ax.set_xticks(list(xs))
        ax.set_xticklabels([f.label.replace(" (", "\n(") for f in FORWARDERS], fontsize=9)
        ax.set_title(TRAFFIC[traffic].capitalize(), fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.set_ylim(0, top * 1.25)
    axes[0].set_ylabel("Mpps at the sink, 64-byte frames\n(per second of the pipeline's CPU "
                       "time x cores)")
    axes[0].legend(loc="upper right")
    fig.suptitle("Forwarding throughput of the LB node: pyxlb vs kernel DNAT (kube-proxy "
                 "layouts) vs a bare XDP redirect", fontsize=12)
    fig.text(0.5, 0.01, subtitle, ha="center", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.04, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter measurements (about a minute in all)")
    parser.add_argument("--duration", type=float, help="seconds a measurement (default 2, "
                        "--quick 0.5)")
    parser.add_argument("--rounds", type=int, help="measurements a case, of which the "
                        "median is reported (default 5, --quick 3)")
    args = parser.parse_args()
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    if args.rounds < 1:
        sys.exit("lab_throughput: --rounds must be at least 1")
    duration = args.duration or (0.5 if args.quick else 2.0)
    if os.geteuid() != 0:
        sys.exit("lab_throughput: needs root (namespaces, XDP, iptables)")
    for tool in ("iptables-restore", "nft", "ip"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            sys.exit(f"lab_throughput: {tool} not found (apt-get install iptables nftables "
                     f"iproute2; `make bench` does)")
    try:
        import matplotlib  # noqa: F401  (only whether it is there)
    except ImportError:
        sys.exit("lab_throughput: matplotlib missing: pip install -e '.[bench]' "
                 "(`make bench` does)")

    allowed = sorted(os.sched_getaffinity(0))
    core_sets = {1: [allowed[-1]]}
    if len(allowed) >= 2:
        core_sets[2] = allowed[:2]
    core_counts = sorted(core_sets)
    signal.signal(signal.SIGUSR1, _on_sigusr1)
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(143))

    lab = Lab(f"ltp{os.getpid()}")
    t_start = time.monotonic()
    runs: Dict[tuple, List[dict]] = {}
    hints: Dict[tuple, float] = {}
    try:
        print(f"building the lab ({lab.prefix}-*: generator, sink, "
              f"{len(FORWARDERS)} LB nodes)...", flush=True)
        lab.up()
        print(f"measuring: {args.rounds} rounds x {len(FORWARDERS)} forwarders x "
              f"{len(TRAFFIC)} traffic kinds x {len(core_counts)} core counts, "
              f"{duration:g} s each", flush=True)
        print("filling pyxlb's flow tables (steady state: new flows push old ones out)...",
              flush=True)
        fill_flow_tables(lab, core_sets)
        for rnd in range(args.rounds):
            for cores in core_counts:
                # this thread (which reads the counters) keeps off a lone measured CPU
                rest = set(allowed) - set(core_sets[cores])
                os.sched_setaffinity(0, rest or set(allowed))
                for traffic in TRAFFIC:
                    for f in FORWARDERS:
                        key = (f.key, traffic, cores)
                        run = measure(lab, f, traffic, core_sets[cores], duration,
                                      hints.get(key))
                        hints[key] = run["mpps_wall"] * 1e6
                        runs.setdefault(key, []).append(run)
                        flag = "" if not run["failed_checks"] else \
                            "  CHECK FAILED: " + "; ".join(run["failed_checks"])
                        print(f"  round {rnd + 1}  {cores} core{'s' if cores > 1 else ' '}  "
                              f"{traffic:<11}  {f.label:<23} {run['mpps']:6.2f} Mpps  "
                              f"({run['delivered']:.0%} of {run['sent']} delivered){flag}",
                              flush=True)
    finally:
        os.sched_setaffinity(0, set(allowed))
        lab.down()
    elapsed = time.monotonic() - t_start

    summary = summarise(runs, core_counts)
    info = machine_info()
    print(f"\n64-byte frames (UDP and TCP alternately), medians of {args.rounds} runs of "
          f"~{duration:g} s; 1 core = CPU {core_sets[1][0]}"
          + (f", 2 cores = CPUs {core_sets[2]}" if 2 in core_sets else "") + "\n")
    print_table(summary)
    png = os.path.join(RESULTS_DIR, "lab_throughput.png")
    os.makedirs(RESULTS_DIR, exist_ok=True)
    chart(summary, core_counts, png,
          f"{info['date']}, kernel {info['kernel']}, {info['cpus']} vCPUs (shared VM). "
          f"Generator, forwarder and sink share each core. Medians of {args.rounds} runs, "
          f"whiskers min-max. 'x ipt': ratio to iptables; 'ceil': share of the bare "
          f"XDP redirect")
    path = write_results("lab_throughput", {
        "machine": info, "quick": args.quick, "duration_s": duration, "rounds": args.rounds,
        "frame_bytes": FRAME_LEN, "flows_established": FLOWS, "cpus": core_sets,
        "conntrack_new_flow_budget": CT_NEW_BUDGET,
        "tools": {"iptables": tool_version(["iptables", "--version"]),
                  "nft": tool_version(["nft", "--version"])},
        "elapsed_s": round(elapsed, 1),
        "notes": [
            "mpps = packets counted by native XDP at the sink / CPU time of the pipeline "
            "(generator threads' clocks + ksoftirqd of the CPUs used) x cores, between "
            "snapshots taken inside the generator calls; mpps_wall divides by wall time "
            "instead; cpu_share = CPU time / (window x cores): the machine is shared",
            "generator, forwarder and sink run on the same CPU(s): a veth runs its "
            "receiver's NAPI on the sending CPU; mpps_per_softirq_core divides by the "
            "softirq time of those CPUs (/proc/stat), where the forwarder and the sink run",
            "ns_over_ceiling = (1/mpps - 1/mpps of the ceiling) x cores: CPU time per "
            "packet beyond the bare redirect's path, i.e. the forwarder's own work",
            "pyxlb's IPv4 flow table (2 Mi flows in sets of 4) takes twice its capacity "
            "of new flows before the first measurement: as on a node that has run a while, "
            "the back half of every set, where new flows go, is full, and every new flow "
            "pushes an older one out of its set",
            "established flows are flows the forwarder already knows (pyxlb's flow table, a "
            "conntrack entry); no replies flow, so conntrack keeps them unreplied",
            "kernel DNAT forwarders: nf_conntrack_checksum=0 on their node (a NIC would "
            "have checked), no masquerade (client address kept, as DSR keeps it); "
            "iptables is Debian's default, the nf_tables backend",
            f"new flows through conntrack: at most {CT_NEW_BUDGET} a measurement (the table "
            "is global and full at 262144), flushed before and after",
            "the ceiling redirects to the interface towards the backends, as pyxlb does "
            "here (its backends are behind another interface than the clients)",
        ],
        **summary,
        "runs": [{"forwarder": k[0], "traffic": k[1], "cores": k[2], "runs": v}
                 for k, v in runs.items()],
    })
    print(f"\nresults: {path}\nchart:   {png}\n({elapsed:.0f} s)")
    if any(r["failed_checks"] for r in summary["rows"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
