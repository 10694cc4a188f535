"""Packets per second through an LB node in network namespaces: pyxlb beside kernel DNAT.

Run as root: `make bench` (or .venv/bin/python bench/lab_throughput.py [--quick]
[--flows N,...] [--generator socket]). Prints a table (IPv4 and IPv6 side by side), writes
bench/results/lab_throughput.json and a bar chart beside it (lab_throughput.png); with
--generator socket (below, "Generator: socket") bench/results/lab_throughput_socket.json.

Established flows, N. A full run measures at N = 1,000 established flows (what a bench
that stays in the CPU's cache sees) and N = 1,000,000 (a busy balancer: issue 21), --quick
at 1,000 only; --flows picks others. A full run takes about 21 minutes on this 2-vCPU VM
(1,251 s on 2026-12-07 with pyxlb stateless, 1,124 s before it; a minute of it filling the
tables; the million-flow cases are two thirds of the rest); --quick one or two.

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
              out0, IPIP, and two IPv6 VIPs [2001:2::10]:8080 with backends
              2001:2:0:2::21-23, IP6IP6; next hops from refresh_nexthops() (the backends'
              neighbour entries are static: the sink answers nothing)
  pyxlb_stateless
              pyxlb IPIP stateless: the same as pyxlb_ipip, but its TCP VIPs are
              stateless (docs/datapath.md, "Stateless mode": no flow table, each ring
              slot keeps its previous owner for the chain window) and its UDP VIPs have
              no flow table (flow_table false; stateless mode is TCP's only): with both,
              this node keeps no per-flow state at all (its flow tables are made, at the
              default sizes, and never read or written); every packet goes by the ring
  pyxlb_l2    the same in L2 (MAC rewrite) mode
  iptables    pass.o on in0, the kernel forwards; iptables-restore of a kube-proxy-like
              layout: KUBE-SERVICES -> KUBE-SVC-* with statistic-mode random rules ->
              KUBE-SEP-* DNAT, plus kube-proxy's filter chains (KUBE-FORWARD, ...)
  nftables    the same with a kube-proxy nftables-like table: a service-ips verdict map,
              numgen random mod 3 into endpoint chains that DNAT
  ceiling     ceiling.bpf.c: rewrite the MACs and bpf_redirect() to out0, nothing else
  tunnel      ceiling.bpf.c's tunnel floor: the ceiling plus one outer header pushed (IPIP,
              IP6IP6; fixed addresses, no parsing, hashing or lookups): the least any
              tunnelling balancer does; pyxlb's IPIP figures over it are x_tunnel in the
              results (the chain table's last section, the socket table's "/ tun")

pyxlb's nodes are made once per N (their flow tables hold that N's flows) and, where N
is more than a default table is rated for (docs/datapath.md, "Capacity": 209,715 IPv4 and
104,857 IPv6 flows), once more with tables made for N, `--max-flows N --max-flows6 N`
(Datapath.create with map_sizes(max_flows=N, max_flows6=N): 4 Mi sets each for a million,
512 MiB IPv4 and 1 GiB IPv6): forwarders pyxlb_ipip_rated and pyxlb_l2_rated, "pyxlb IPIP,
max-flows" in the table. pyxlb stateless, the kernel DNAT nodes and the ceiling serve every
N (they keep no flow state across measurements: conntrack is flushed before each); kernel
DNAT runs only where conntrack holds N established flows and the new ones (N <= 62,144
here).

IPv4 and IPv6 traffic (84-byte frames: a 40-byte IPv6 header and the same 30-byte L4
segment) go through all of them: the kernel DNAT nodes load kube-proxy's IPv6 layouts
beside the IPv4 ones (ip6tables-restore; nftables' ip6 table) and forward IPv6. RFC 5180's
benchmark range 2001:2::/48 holds the addresses.

The VIP has a blackhole route on every LB node, so a DNAT that did not happen drops the
packet instead of forwarding it. The sink counts packets by inner protocol and by the
backend the destination MAC names; every run is checked against that (both protocols
arrive, all three backends get traffic, IPIP only from pyxlb_ipip), for kernel DNAT
against the conntrack table (new flows: one entry per packet; established: at most N),
and for pyxlb against its own counters, which hold with the chain generator too: every
packet looked up in the flow table once (hit + miss + stale = forwarded) and forwarded,
none stale, its TCP and UDP VIPs 35-65% each, each of the three backends at least 15%
(per-VIP and per-backend counters), a TCP miss of established traffic (an ACK) counted
mid-stream and one of new flows (a SYN) never; established: hits at least 99% of lookups
where N is within the table's rating, else at least what the set rule gives for N flows
over the table's sets less 3 points (tests/support/flowsets.py missing_share); new flows:
a miss for every packet. pyxlb stateless instead: no flow-table lookup at all (flow_hit,
flow_miss, flow_stale all 0), no previous owner carried (chain_sent 0: no ring changes
during the run), a new TCP flow counted for every SYN (every TCP packet of new traffic,
none of established), and the rest as above (forwarded, both VIPs, all three backends).

The generator (xdp/bench/gen.bpf.c, built into bench_gen.o) runs with BPF_PROG_TEST_RUN in
live-frames mode from threads that entered the generator's namespace and are pinned to a
CPU, so each XDP_TX really leaves g-<fwd>. Traffic is 64-byte frames, UDP and TCP
alternately: "established" cycles over N flows (half of them TCP, sending ACKs; one set
of flows shared out among the generator threads: one core sends all N, two cores N/2
each, the same N flows), "new" makes every packet a new flow (SYNs for TCP) through the
node whose table holds N established flows (numbered from that node's own sequence, so
that none repeats a flow its table may still hold); "new, no limit" is the same through
pyxlb with its insertion limit off (below; not pyxlb stateless, which inserts nothing).
One core: one generator thread; two cores: one per CPU. The generator, the forwarder and the sink then share each CPU: a veth runs
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

Each measurement: a warm-up (every established flow sent at least once since the last
new flows, rate estimated), then one generator call per thread sized to last --duration
seconds (bounded in packets; a watchdog interrupts a call that overruns). Before the
first one pyxlb's flow tables (IPv4 and IPv6) are brought to a long-running node's state:
where new flows go (each set's back half) full, so every new flow pushes an older one out
of its set (see fill_flow_tables: twice the table's ways of new flows). Before the first
measurement of established flows on a pyxlb node (each family), its N flows are admitted
as real connections are (see admit): each sends two packets in a row, then, past the
promotion age (67 ms), one more, which moves it to the front half of its set, where only
other promotions move it; they stay there for the run (new flows push out back halves
only). pyxlb stateless has no table to fill and no flow to admit: neither runs for it. Flows are admitted in batches, a batch's third packets sent while the next batch
sends its pairs, so that few others enter a flow's set between its pair and its third
packet, as with connections that come over time. The hit share reported beside the Mpps
is flow_hit over lookups in the measured calls. For new flows through conntrack the
count is capped so that its table never fills (nf_conntrack_max is global and read-only
inside a namespace); conntrack is flushed before and after. Rounds run every case in
turn, so drift touches all alike; a figure is the median of the rounds.

Insertion limit. pyxlb records at most flow_inserts4/6 new flows a second per CPU (the
default: the table's ways / CPUs, Datapath.default_insert_limits()); above it a new flow is
balanced but not recorded (flow_insert_limited). "new flow every packet" runs with the
default limits, what a node gets; "new, no limit" with set_insert_limits(0), every new
flow recorded. The results say which limits each ran with and how many new flows were
recorded. (A datapath without limits, before them: only "new", all recorded.)

Generator: live frames or a chain. Some kernels refuse live frames (EPERM even to root;
docs/development.md). --generator chain (what --generator auto falls back to there) runs
the generator as bench/lab_flood.py does: gen_chain under a plain BPF_PROG_TEST_RUN inside
the LB node's namespace, its ctx naming in0, tail-calling the program attached to in0 (the
same program and maps that serve received traffic); the verdict is discarded, so nothing
is transmitted and nothing reaches the sink: no kernel DNAT forwarder (they are not XDP
programs), no sink checks (pyxlb's own counters are checked), and Mpps is packets per
second of the kernel's own loop time of each generator thread (BPF_PROG_TEST_RUN's
duration), summed over the threads: the generator, the forwarder's program and, for the
ceiling, the MAC rewrite and bpf_redirect()'s bookkeeping, without the transmission.
Figures of the two generators do not compare; a figure compares with one of its own kind.

Generator: socket (--generator socket): kernel DNAT beside XDP without live frames. The
chain generator cannot drive iptables or nftables (they are not XDP programs), so where
live frames are refused they would go unmeasured. The socket generator really transmits:
bench/socket_gen.py, AF_PACKET sockets bound to g-<fwd> in the generator's namespace,
PACKET_QDISC_BYPASS, sendmmsg(2) of precomputed frames (IPv4 64 bytes, IPv6 84; half TCP,
half UDP). It sends under 1 Mpps a CPU: enough to load iptables, not pyxlb, so its
figure is not Mpps but the CPU time a packet costs. What runs, at each N of --flows
(default 1,000 and 1,000,000), IPv4 and IPv6, on one CPU (the last one allowed) and on
two: established flows (the N flows, numbered as the generator program's shared mode
numbers them, cycled in order) and new flows (a never-seen flow a packet, a TCP SYN or a
UDP datagram, numbered as the generator program numbers new flows, sent while the node
holds its N established flows); through the nodes pyxlb stateless, pyxlb IPIP with the
default tables (and, at an N beyond their rating, with tables made for N), iptables and
nftables (kube-proxy's layouts for both families), the ceiling, and "generator alone"
(drop): the sink's program on that node's in0 counts and drops every frame. pyxlb's
tables are filled first (chain generator, as above).

How the cost is taken. One sending thread for each measured CPU, pinned there, with a
socket of its own; all start together, thread i of c sending its c-th of the flows. The
veth runs its receiver's NAPI on the sending CPU when the system call re-enables bottom
halves (XPS puts each CPU's frames on a queue of their own), so in0's XDP program, the
kernel's forwarding (or the XDP redirect), the hop out0 -> s-<fwd> and the sink's count
all run in softirq on that CPU, within the sending thread's own time (this kernel has no
IRQ time accounting, CONFIG_IRQ_TIME_ACCOUNTING unset: softirq work is charged to the
task it runs on; what the kernel defers runs in ksoftirqd there). ns/pkt = (the threads'
CPU clocks + ksoftirqd's run time on their CPUs) over the measured send / frames sent:
the generator, the veth, the forwarder and the sink. cost = ns/pkt less that of the drop
node measured in the same round with the same traffic and CPUs (the generator, its
system call and the veth hop into in0's XDP, which every node shares): what the LB node
does with a packet plus the hop to the sink and the sink's count (the same for every
forwarder; the ceiling's cost is about that alone). prog ns = the in0 program's own time
a packet, from the kernel's run-time statistics (BPF_ENABLE_STATS, on for the
measurements: every program run then also reads the clock twice): the one figure here
that is the forwarder's alone. Reported beside: ratios of costs, pyxlb over iptables DNAT
and pyxlb over the ceiling; ns beyond the ceiling's cost; delivered Mpps (sink count /
wall time of the send: the generator's pace, not a forwarder's limit) and the share
delivered (at least 99% or the run fails). Every node is measured in turn each round, the
drop node first; a figure is the median of the rounds (per-round costs: against that
round's drop). Other work on the shared CPU still shows (its interrupts and cache misses
land in our time): costs vary by some tens of percent between runs; compare within one
run.

Flows. Admitted as connections are: pyxlb's flow table once a node, family and N, with
two packets a flow, then one more past the promotion age (admit_socket, as admit()), then
one more packet from every flow (to the steady state of the cycle); a DNAT node's
conntrack, flushed first, with two packets a flow before any measurement that finds it
holding anything but those N (the other family's flows, or the last measurement's new
flows, at most SOCKET_NEW_MAX), so every measurement starts from exactly the N; its
unreplied UDP and unacknowledged TCP timeouts (30 and 300 s by default) raised to
CT_IDLE_TIMEOUT so that the entries outlive the rounds; each measurement of established
flows checks that conntrack still holds exactly N entries after it (fewer: some expired,
their packets opened new ones). A million entries exceed nf_conntrack_max (262,144 here,
global, writable only from the initial namespace): the run raises it to N + twice
SOCKET_NEW_MAX + CT_MAX_SLACK and puts it back at the end, also on failure; conntrack's hash
table, which every namespace shares, gets a bucket for every four established entries of
the two DNAT nodes together (kube-proxy sizes it a quarter of its max: each node then
sees the chains it would alone), put back likewise. Each measurement: a warm-up of
SOCKET_WARM packets a CPU (established flows after new ones went through: a whole pass,
which brings back those the new flows pushed out of the back halves), then about
--duration seconds of packets (1.5 by default); established: at least one whole pass over
the N flows, each thread cycling its share on from where it last stopped; new: at most
SOCKET_NEW_MAX flows. Results: bench/results/lab_throughput_socket.json (no chart; the
live and chain results stay in lab_throughput.json). Limits: AF_PACKET frames reach XDP
on a veth by a copy into a page (their headroom is under XDP's 256 bytes), which every
node pays, the drop node included; every frame goes through alone (one frame a NAPI poll,
right after its system call: nothing batched, no code or data kept hot between two
frames), so every forwarder costs more here than in the chain generator's tight loop (the
prog ns column shows how much of that is the program's own), and the figures of the two
generators never compare.
"""

import argparse
import contextlib
import dataclasses
import ipaddress
import json
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
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the repository's root, for tests.support
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import RESULTS_DIR, machine_info  # noqa: E402

from pyroute2 import IPRoute, NFCTSocket  # noqa: E402
from pyroute2 import netns as pr_netns  # noqa: E402

import pyxlb  # noqa: E402
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
# IPv6 (2001:2::/48, RFC 5180): clients a /96 (the generator fills in the low 32 bits)
CLIENTS6 = "2001:2:0:100::"
VIP6 = "2001:2::10"
LB_IN_ADDR6, GEN_ADDR6 = "2001:2:0:1::1", "2001:2:0:1::2"    # /64 on in0
LB_OUT_ADDR6 = "2001:2:0:2::1"                              # /64 on out0
BACKENDS6 = {1: "2001:2:0:2::21", 2: "2001:2:0:2::22", 3: "2001:2:0:2::23"}
ENCAP_SRC6 = "2001:2:0:3::/64"
SEED = 0x5EED

GEN_MAC, LB_IN_MAC = "02:00:00:00:01:01", "02:00:00:00:01:02"
LB_OUT_MAC, SINK_MAC = "02:00:00:00:02:01", "02:00:00:00:02:02"
# backend k's MAC ends in 0x2k: the sink counts by the last two bits of the destination MAC
BACKEND_MACS = {k: f"02:00:00:00:02:2{k}" for k in BACKENDS}

FRAME_LEN = 64                  # IPv4 frames
FRAME_LEN6 = 84                 # IPv6: 40 bytes of IPv6 header and the same 30-byte L4
FRAME_LENS = {4: FRAME_LEN, 6: FRAME_LEN6}
FLOWS = 1000                    # established flows in all: --quick, upgrade.py
FULL_FLOWS = (1000, 1_000_000)  # --flows of a full run
MAX_FLOWS = 1 << 26             # --max-flows' bound (the generator numbers 588 million)
GEN_SHARED = 2                  # gen.bpf.c's mode: one set of flows shared out among CPUs
NUD_PERMANENT = 0x80
RTN_BLACKHOLE = 6
IFA_F_NODAD = 0x02
OTHER_TOLERATED = 32            # frames the sink may count as neither TCP nor UDP: the
                                # LB nodes' own IPv6 chatter (MLD reports at address setup)

# -- forwarders and targets --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Forwarder:
    """A forwarder; with `flows`, the LB node of a pyxlb forwarder for that many
    established flows (each N has nodes of its own: their flow tables hold N flows)."""
    key: str                    # in the results
    label: str
    short: str                  # in interface and namespace names
    kind: str                   # pyxlb, iptables, nftables, ceiling, tunnel, drop
    mode: Optional[str] = None  # pyxlb: ipip or l2
    # pyxlb: "default" (as made), "rated" (--max-flows N) or "stateless" (none used)
    table: Optional[str] = None
    flows: Optional[int] = None     # pyxlb: the N of this node (None: any N, no flow state)
    max_flows: Optional[int] = None     # a "rated" node: its tables made for this many
    stateless: bool = False     # pyxlb: TCP VIPs stateless, UDP VIPs without a flow table

    @property
    def node(self) -> str:
        """Which LB node: the forwarder, and for pyxlb its N."""
        return self.key if self.flows is None else f"{self.key}@{self.flows}"

    @property
    def conntrack(self) -> bool:
        return self.kind in ("iptables", "nftables")

    @property
    def xdp(self) -> bool:
        """A program on in0 does the forwarding (the chain generator can run it)."""
        return not self.conntrack


FORWARDERS = (
    Forwarder("pyxlb_ipip", "pyxlb IPIP", "ipip", "pyxlb", "ipip", table="default"),
    Forwarder("pyxlb_stateless", "pyxlb IPIP stateless", "stl", "pyxlb", "ipip",
              table="stateless", stateless=True),
    Forwarder("pyxlb_l2", "pyxlb L2", "l2", "pyxlb", "l2", table="default"),
    Forwarder("iptables", "iptables DNAT", "ipt", "iptables"),
    Forwarder("nftables", "nftables DNAT", "nft", "nftables"),
    Forwarder("ceiling", "XDP redirect (ceiling)", "ceil", "ceiling"),
    Forwarder("tunnel", "XDP tunnel (floor)", "tun", "tunnel", "ipip"),
)
# pyxlb with its flow tables made for N flows (--max-flows N, --max-flows6 N): where N is
# more than the default tables are rated for
RATED = {
    "pyxlb_ipip": Forwarder("pyxlb_ipip_rated", "pyxlb IPIP, max-flows", "ipipr", "pyxlb",
                            "ipip", table="rated"),
    "pyxlb_l2": Forwarder("pyxlb_l2_rated", "pyxlb L2, max-flows", "l2r", "pyxlb", "l2",
                          table="rated"),
}
# --generator socket only: the generator's own cost, the frames dropped by XDP on in0 (the
# bench's sink program: counted, then dropped), subtracted from every other forwarder's
DROP = Forwarder("drop", "generator alone (XDP drop)", "drop", "drop")
# --generator socket measures these (and DROP); pyxlb_ipip also with tables made for N
SOCKET_KEYS = ("pyxlb_stateless", "pyxlb_ipip", "iptables", "nftables", "ceiling",
               "tunnel")
BY_KEY = {f.key: f for f in (*FORWARDERS, *RATED.values(), DROP)}
ORDER = ["pyxlb_ipip", "pyxlb_ipip_rated", "pyxlb_stateless", "pyxlb_l2", "pyxlb_l2_rated",
         "iptables", "nftables", "ceiling", "tunnel", "drop"]
TRAFFIC = {"established": "established flows", "new": "new flow every packet",
           "new_nolimit": "new flow every packet, no insertion limit"}
SHORT = {"established": "established", "new": "new", "new_nolimit": "new, no limit"}
REF_TRAFFIC = {"new_nolimit": "new"}     # the references (iptables, ceiling) it compares with
FAMILIES = (4, 6)

# (what: forwarder's figure over the reference's, traffic, cores (None: each), at least,
# forwarders, established flows N)
TARGETS = [
    ("x_iptables", "established", None, 5.0, ("pyxlb_ipip", "pyxlb_l2"), FLOWS),
    ("x_iptables", "new", None, 20.0, ("pyxlb_ipip", "pyxlb_l2"), FLOWS),
    ("x_ceiling", "established", 1, 0.70, ("pyxlb_ipip", "pyxlb_l2"), FLOWS),
    ("x_ceiling", "new", 1, 0.70, ("pyxlb_ipip", "pyxlb_l2"), FLOWS),
    # issue 21: a balancer without per-flow state at a million flows
    ("x_ceiling", "established", None, 0.80, ("pyxlb_stateless",), 1_000_000),
    ("x_ceiling", "new", None, 0.80, ("pyxlb_stateless",), 1_000_000),
]

CT_NEW_BUDGET = 200_000         # new flows through conntrack per measurement (max 262144)
CT_MAX_FLOWS = 262_144 - CT_NEW_BUDGET  # kernel DNAT runs at no more established flows
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


def iptables_rules(family: int = 4) -> str:
    """kube-proxy's iptables layout for two services (tcp and udp) with three endpoints
    each: nat KUBE-SERVICES -> KUBE-SVC (statistic random) -> KUBE-SEP (DNAT), and its
    filter chains. No clusterCIDR is set, so client traffic is not masqueraded (its
    source is kept, as with pyxlb's DSR). `family` 6: the same for ip6tables-restore, on
    the IPv6 VIP and backends (without the IPv4-only localnet rule)."""
    vip, backends, host = (VIP, BACKENDS, 32) if family == 4 else (VIP6, BACKENDS6, 128)
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
        services.append(f"-A KUBE-SERVICES -d {vip}/{host} -p {proto} -m comment --comment "
                        f"\"bench/vip:{proto} cluster IP\" -m {proto} --dport {PORT} -j {svc}")
        n = len(backends)
        for i, (k, addr) in enumerate(sorted(backends.items())):
            sep = f"KUBE-SEP-BENCH{proto.upper()}{k}"
            to = f"{addr}:{PORT}" if family == 4 else f"[{addr}]:{PORT}"
            nat.append(f":{sep} - [0:0]")
            prob = "" if i == n - 1 else \
                f"-m statistic --mode random --probability {1 / (n - i):.11f} "
            nat.append(f"-A {svc} -m comment --comment \"bench/vip:{proto} -> {to}\" "
                       f"{prob}-j {sep}")
            nat.append(f"-A {sep} -s {addr}/{host} -m comment --comment \"bench/vip:{proto}\" "
                       f"-j KUBE-MARK-MASQ")
            nat.append(f"-A {sep} -p {proto} -m comment --comment \"bench/vip:{proto}\" "
                       f"-m {proto} -j DNAT --to-destination {to}")
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
            *(["-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "
                "\"block incoming localnet connections\" -m conntrack ! --ctstate "
                "RELATED,ESTABLISHED,DNAT -j DROP"] if family == 4 else []),
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark "
            "--mark 0x4000/0x4000 -j ACCEPT",
            "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" "
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]
    return "\n".join(["*filter", *filt, "COMMIT", "*nat", *nat, *services, "COMMIT", ""])


def nftables_rules(family: int = 4) -> str:
    """kube-proxy's nftables layout, reduced to what two services with three endpoints
    each use: the service-ips verdict map, numgen random into endpoint chains that DNAT,
    and the filter hooks it installs (their maps empty: no firewall, every service has
    endpoints). As for iptables, nothing is masqueraded. `family` 6: kube-proxy's ip6
    table, on the IPv6 VIP and backends."""
    v6 = family == 6
    ip, addr_type = ("ip6", "ipv6_addr") if v6 else ("ip", "ipv4_addr")
    vip, backends = (VIP6, BACKENDS6) if v6 else (VIP, BACKENDS)
    loopback = "::1" if v6 else "127.0.0.0/8"
    chains = {
        "filter-prerouting": ["type filter hook prerouting priority dstnat - 10; "
                              "policy accept;", "ct state new jump firewall-check"],
        "filter-forward": ["type filter hook forward priority -110; policy accept;",
                           "ct state new jump service-endpoints-check",
                           "ct state new jump cluster-ips-check"],
        "firewall-check": [f"{ip} daddr . meta l4proto . th dport vmap @firewall-ips"],
        "service-endpoints-check": [f"{ip} daddr . meta l4proto . th dport vmap "
                                    "@no-endpoint-services"],
        "cluster-ips-check": [f"{ip} daddr @cluster-ips reject comment \"Reject traffic to "
                              "invalid ports of ClusterIPs\""],
        "nat-prerouting": ["type nat hook prerouting priority dstnat; policy accept;",
                           "jump services"],
        "nat-postrouting": ["type nat hook postrouting priority srcnat; policy accept;",
                            "jump masquerading"],
        "mark-for-masquerade": ["meta mark set meta mark | 0x00004000"],
        "masquerading": ["meta mark & 0x00004000 == 0 return",
                         "meta mark set meta mark ^ 0x00004000",
                         "masquerade fully-random"],
        "services": [f"{ip} daddr . meta l4proto . th dport vmap @service-ips",
                     f"fib daddr type local {ip} daddr != {loopback} "
                     "meta l4proto . th dport vmap @service-nodeports"],
    }
    elements = []
    for proto in ("tcp", "udp"):
        svc = f"service-BENCH-{proto}"
        elements.append(f"{vip} . {proto} . {PORT} : goto {svc}")
        vmap = []
        for i, (k, addr) in enumerate(sorted(backends.items())):
            ep = f"endpoint-BENCH-{proto}-{k}"
            vmap.append(f"{i} : goto {ep}")
            to = f"[{addr}]:{PORT}" if v6 else f"{addr}:{PORT}"
            chains[ep] = [f"{ip} saddr {addr} jump mark-for-masquerade",
                          f"meta l4proto {proto} dnat to {to}"]
        chains[svc] = [f"numgen random mod {len(backends)} vmap {{ {', '.join(vmap)} }}"]
    lines = [f"table {ip} kube-proxy {{", "\tcomment \"rules for kube-proxy\"",
             f"\tset cluster-ips {{ type {addr_type}; elements = {{ {vip} }}; }}",
             f"\tmap no-endpoint-services {{ type {addr_type} . inet_proto . inet_service : "
             "verdict; }",
             f"\tmap firewall-ips {{ type {addr_type} . inet_proto . inet_service : verdict; }}",
             "\tmap service-nodeports { type inet_proto . inet_service : verdict; }",
             f"\tmap service-ips {{ type {addr_type} . inet_proto . inet_service : verdict; "
             f"elements = {{ {', '.join(elements)} }}; }}"]
    for name, body in chains.items():
        lines += [f"\tchain {name} {{", *(f"\t\t{rule}" for rule in body), "\t}"]
    return "\n".join(lines + ["}", ""])


# -- the lab ----------------------------------------------------------------------------------


def default_ratings() -> Optional[Tuple[int, int]]:
    """Established flows pyxlb's default IPv4 and IPv6 tables are rated for (None: a pyxlb
    from before rated tables, whose sizes this script does not choose)."""
    from pyxlb import _layouts, datapath
    if not all(hasattr(datapath, n) for n in ("map_sizes", "rated_flows")) or \
            not hasattr(_layouts, "FLOW6_SETS"):
        return None
    return (datapath.rated_flows(_layouts.FLOW4_SETS),
            datapath.rated_flows(_layouts.FLOW6_SETS))


def lab_nodes(flows: Tuple[int, ...], socket_gen: bool = False) -> List[Forwarder]:
    """The LB nodes for established traffic over each N in `flows`: the kernel DNAT
    forwarders and the ceiling once (they keep no flow table of their own, and conntrack's
    is flushed before every measurement); each pyxlb forwarder once per N with the default
    tables, and once more with tables made for N (--max-flows N, --max-flows6 N) where N is
    more than a default table is rated for. pyxlb stateless once: it keeps no flow state,
    so one node serves every N. With `socket_gen` (--generator socket): SOCKET_KEYS and
    DROP only."""
    ratings = default_ratings()
    nodes = [DROP] if socket_gen else []
    for f in FORWARDERS:
        if socket_gen and f.key not in SOCKET_KEYS:
            continue
        if f.kind != "pyxlb" or f.stateless:
            nodes.append(f)
            continue
        for i, n in enumerate(flows):
            nodes.append(dataclasses.replace(f, flows=n, short=f.short if i == 0
                                             else f"{f.short}{i}"))
            if ratings is not None and n > min(ratings):
                r = RATED[f.key]
                nodes.append(dataclasses.replace(r, flows=n, max_flows=n,
                                                 short=f"{r.short}{i}"))
    return nodes


class Lab:
    """The namespaces, links and programs; down() removes all of it (idempotent)."""

    def __init__(self, prefix: str, objects: Optional[str] = None, chain: bool = False,
                 flows: Tuple[int, ...] = (FLOWS,), socket_gen: bool = False):
        self.prefix = prefix
        self.objects = objects          # where the bench objects are (None: pyxlb's)
        self.chain = chain              # the chain generator (no live frames)
        # --generator socket: AF_PACKET senders on each g-<fwd> measure (the chain
        # generator, chain true, only fills pyxlb's tables)
        self.socket_gen = socket_gen
        self.senders: Dict[Tuple[str, int], object] = {}   # (node, i): a socket_gen.Sender
        # (node, family, threads, i): where thread i of that many stopped in its share
        self.send_pos: Dict[Tuple[str, int, int, int], int] = {}
        self.ct_admitted: Dict[str, Tuple[int, int]] = {}    # node: (family, N) admitted
        self.new_seq: Dict[Tuple[str, int, int], int] = {}  # (node, family, cpu): next new
        self.new_since: set = set()     # (node, family): new flows went through since the
                                        # last established measurement
        self.flows = tuple(sorted(set(flows)))
        self.nodes = lab_nodes(self.flows, socket_gen)
        self.by_node = {f.node: f for f in self.nodes}
        self.made_ns: List[str] = []
        self.pin_dirs: List[str] = []
        self.datapaths: Dict[str, Datapath] = {}
        self.sinks: Dict[str, "_bpf.Map"] = {}
        self.gen_ifindex: Dict[str, int] = {}
        self.lb_ifindex: Dict[str, int] = {}      # in0 in each LB node
        self.xdp_progs: Dict[str, "_bpf.Program"] = {}    # what runs on in0 (chain mode)
        self.insert_limits: Dict[str, Tuple[int, int]] = {}   # pyxlb: the defaults in force
        self.handles: list = []         # program / map handles to close at the end
        self.gen_prog = None
        self.gen_chain = None
        self.gen_next = None
        self.gen_config = None
        self.gen_first = None
        self.gen_seq = None
        self.seqs: Dict[str, bytes] = {}     # node: its per-CPU sequence (gen_seq slot 0)
        self.admitted: Dict[Tuple[str, int], dict] = {}    # (node, family): admission

    def node(self, f: Forwarder) -> Forwarder:
        """The LB node of `f` (a forwarder without its N: its node at the first N)."""
        if f.node in self.by_node:
            return self.by_node[f.node]
        for n in self.nodes:
            if n.key == f.key:
                return n
        raise KeyError(f"no LB node for {f.key}")

    def nodes_at(self, flows: int) -> List[Forwarder]:
        """The nodes that serve N = `flows`: stateless ones and pyxlb's for that N."""
        return [f for f in self.nodes if f.flows in (None, flows)]

    def object_path(self, name: str) -> str:
        if self.objects and name.startswith("bench_"):
            return os.path.join(self.objects, f"{name}.o")
        return object_path(name)

    def ns(self, node: str) -> str:
        return f"{self.prefix}-{node}"

    def lb(self, f: Forwarder) -> str:
        return self.ns(f"lb-{self.node(f).short}")

    # -- build ---------------------------------------------------------------------------

    def up(self) -> None:
        bpffs.ensure_mounted()
        for node in ["gen", "sink", *(f"lb-{f.short}" for f in self.nodes)]:
            name = self.ns(node)
            if name in pr_netns.listnetns():
                raise RuntimeError(f"namespace {name} exists already")
            pr_netns.create(name)
            self.made_ns.append(name)
            with netns.enter(name):
                if node.startswith("lb-"):
                    # IPv6 for the IPv6 VIPs' routes and neighbours, and as quiet as it
                    # goes: no router solicitations, no DAD, no link-local addresses
                    for dev in ("all", "default"):
                        for key, value in (("accept_ra", 0), ("router_solicitations", 0),
                                           ("accept_dad", 0), ("addr_gen_mode", 1)):
                            sysctl(f"net/ipv6/conf/{dev}/{key}", value)
                else:
                    # no IPv6 (no router solicitations, no MLD): the links carry bench
                    # traffic only (the generator's IPv6 frames are XDP's alone)
                    sysctl("net/ipv6/conf/all/disable_ipv6", 1)
                    sysctl("net/ipv6/conf/default/disable_ipv6", 1)
                with IPRoute() as ipr:
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for f in self.nodes:
            self._links(f)
        self._load_generator()
        for f in self.nodes:
            self._sink(f)
            self._lb_node(f)
            {"pyxlb": self._pyxlb, "iptables": self._iptables, "nftables": self._nftables,
             "ceiling": self._ceiling, "tunnel": self._ceiling,
             "drop": self._drop}[f.kind](f)
        if self.socket_gen:
            import socket_gen
            with netns.enter(self.ns("gen")):
                for f in self.nodes:
                    for i in range(SOCKET_SENDERS):
                        self.senders[(f.node, i)] = socket_gen.Sender(f"g-{f.short}")

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
            self.gen_ifindex[f.node] = socket.if_nametoindex(f"g-{f.short}")
        with netns.enter(lb):
            self.lb_ifindex[f.node] = socket.if_nametoindex("in0")

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
                # IPv6: the same
                ipr.addr("add", index=i_in, address=LB_IN_ADDR6, prefixlen=64,
                         flags=IFA_F_NODAD)
                ipr.addr("add", index=i_out, address=LB_OUT_ADDR6, prefixlen=64,
                         flags=IFA_F_NODAD)
                ipr.neigh("add", dst=GEN_ADDR6, lladdr=GEN_MAC, ifindex=i_in,
                          state=NUD_PERMANENT, family=socket.AF_INET6)
                for k, addr in BACKENDS6.items():
                    ipr.neigh("add", dst=addr, lladdr=BACKEND_MACS[k], ifindex=i_out,
                              state=NUD_PERMANENT, family=socket.AF_INET6)
                ipr.route("add", dst=f"{CLIENTS6}/96", gateway=GEN_ADDR6,
                          family=socket.AF_INET6)
                ipr.route("add", dst=f"{VIP6}/128", type=RTN_BLACKHOLE,
                          family=socket.AF_INET6)

    def _load_generator(self) -> None:
        obj = _bpf.BpfObject.open(self.object_path("bench_gen"))
        try:
            obj.load()
            self.gen_prog = obj.program("gen_packet")
            self.gen_config = obj.map("gen_config")
            if "gen_chain" not in obj.program_names():
                raise RuntimeError(f"{self.object_path('bench_gen')} has no gen_chain and no "
                                   f"IPv6: an older generator (--objects names a newer one)")
            self.gen_chain = obj.program("gen_chain")
            self.gen_next = obj.map("gen_next")
            if "gen_first" not in obj.map_names():
                raise RuntimeError(f"{self.object_path('bench_gen')} has no gen_first (no "
                                   f"shared flow set): an older generator")
            self.gen_first = obj.map("gen_first")
            self.gen_seq = obj.map("gen_seq")
        finally:
            obj.close()
        self.handles += [self.gen_prog, self.gen_config, self.gen_chain, self.gen_next,
                         self.gen_first, self.gen_seq]

    def seq_to(self, f: Forwarder) -> None:
        """The generator's per-CPU packet sequence where node f's traffic left it (new
        flows are numbered by it: a node's new flows never repeat within 2^29 packets a
        CPU of that node's own traffic, whatever went through the others)."""
        m = self.gen_seq
        self.gen_seq.update(0, self.seqs.get(f.node, bytes(m.percpu_value_size * m.ncpus)))

    def seq_from(self, f: Forwarder) -> None:
        self.seqs[f.node] = self.gen_seq.lookup(0)

    def chain_to(self, f: Forwarder) -> None:
        """The chain generator's next program: what runs on f's in0."""
        self.gen_next.update(0, struct.pack("=I", self.xdp_progs[self.node(f).node].fd))

    def _sink(self, f: Forwarder) -> None:
        obj = _bpf.BpfObject.open(self.object_path("bench_sink"))
        try:
            obj.load()
            prog = obj.program("sink_count")
            self.sinks[f.node] = obj.map("sink_stats")
        finally:
            obj.close()
        self.handles.append(self.sinks[f.node])
        with prog, netns.enter(self.ns("sink")):
            _bpf.XdpLink.attach(f"s-{f.short}", prog, mode="native")

    def _attach_object(self, f: Forwarder, name: str, program: str):
        """Attach one program of bench object / pyxlb object `name` to the LB node's in0;
        returns the loaded object's maps by name (the caller closes them)."""
        obj = _bpf.BpfObject.open(self.object_path(name))
        try:
            obj.load()
            prog = obj.program(program)
            maps = {m: obj.map(m) for m in obj.map_names() if not m.startswith(".")}
        finally:
            obj.close()
        self.xdp_progs[f.node] = prog
        self.handles.append(prog)
        with netns.enter(self.lb(f)):
            _bpf.XdpLink.attach("in0", prog, mode="native")
        self.handles += maps.values()
        return maps

    def _pyxlb(self, f: Forwarder) -> None:
        pin_dir = os.path.join(bpffs.BPFFS_ROOT, f"{self.lb(f)}")
        self.pin_dirs.append(pin_dir)
        sizes = None
        if f.max_flows:
            from pyxlb.datapath import map_sizes
            sizes = map_sizes(max_flows=f.max_flows, max_flows6=f.max_flows)
        with netns.enter(self.lb(f)):
            dp = Datapath.create(pin_dir, map_sizes=sizes) if sizes else \
                Datapath.create(pin_dir)
            self.datapaths[f.node] = dp
            dp.configure(seed=SEED, src4=ENCAP_SRC, src6=ENCAP_SRC6)
            backends = tuple(Backend(addr) for addr in BACKENDS.values())
            backends6 = tuple(Backend(addr) for addr in BACKENDS6.values())
            # stateless: TCP VIPs stateless (no flow table, ring slots keep their previous
            # owner), UDP VIPs without a flow table (stateless mode is TCP's only)
            flags = {"tcp": {"stateless": True}, "udp": {"flow_table": False}} \
                if f.stateless else {"tcp": {}, "udp": {}}
            dp.apply(DesiredState(tuple(
                Vip(VipKey(vip, PORT, proto), backends=bes, mode=f.mode, **flags[proto])
                for vip, bes in ((VIP, backends), (VIP6, backends6))
                for proto in ("tcp", "udp"))))
            dp.attach("in0", "native")
            hops = dp.refresh_nexthops()
            # a datapath with insertion limits (no flow is inserted on a stateless node)
            if hasattr(dp, "insert_limits") and not f.stateless:
                self.insert_limits[f.node] = dp.insert_limits()
        self.xdp_progs[f.node] = dp.prog
        if hops != len(BACKENDS) + len(BACKENDS6):
            raise RuntimeError(f"{f.key}: refresh_nexthops() filled {hops} next hops, "
                               f"expected {len(BACKENDS) + len(BACKENDS6)}")

    def _kernel_forwarder(self, f: Forwarder) -> None:
        self._attach_object(f, "pass", "xlb_pass")     # receives the generator's XDP_TX
        with netns.enter(self.lb(f)):
            # a NIC would have verified the L4 checksum; a frame from XDP arrives unverified
            # and conntrack would check it in software: spare the DNAT forwarders that cost
            sysctl("net/netfilter/nf_conntrack_checksum", 0)
            sysctl("net/ipv6/conf/all/forwarding", 1)
            if self.socket_gen:
                # flows admitted once an N stay for its rounds: no reply ever comes
                for key in ("udp_timeout", "tcp_timeout_unacknowledged"):
                    sysctl(f"net/netfilter/nf_conntrack_{key}", CT_IDLE_TIMEOUT)

    def _iptables(self, f: Forwarder) -> None:
        self._kernel_forwarder(f)
        sh(self.lb(f), ["iptables-restore"], stdin=iptables_rules(4))
        sh(self.lb(f), ["ip6tables-restore"], stdin=iptables_rules(6))

    def _nftables(self, f: Forwarder) -> None:
        self._kernel_forwarder(f)
        sh(self.lb(f), ["nft", "-f", "-"], stdin=nftables_rules(4) + nftables_rules(6))

    def _drop(self, f: Forwarder) -> None:
        """The generator alone: the sink's program on in0 counts and drops every frame
        (in0 is this node's sink; its out0 and s-<fwd> stay idle)."""
        maps = self._attach_object(f, "bench_sink", "sink_count")
        self.sinks[f.node] = maps["sink_stats"]

    def _ceiling(self, f: Forwarder) -> None:
        """The ceiling (ceil_redirect) or the tunnel floor (ceil_tunnel, kind "tunnel"):
        the redirect to backend 1 over out0; the floor's outer header from out0's addresses,
        as pyxlb's outer source defaults to the interface's (the ceiling ignores them)."""
        maps = self._attach_object(f, "bench_ceiling", "ceil_tunnel" if f.kind == "tunnel"
                                   else "ceil_redirect")
        with netns.enter(self.lb(f)):
            out = socket.if_nametoindex("out0")
        maps["ceil_config"].update(0, mac_bytes(BACKEND_MACS[1]) + mac_bytes(LB_OUT_MAC)
                                   + struct.pack("=I", out)
                                   + socket.inet_pton(socket.AF_INET, LB_OUT_ADDR)
                                   + socket.inet_pton(socket.AF_INET, BACKENDS[1])
                                   + socket.inet_pton(socket.AF_INET6, LB_OUT_ADDR6)
                                   + socket.inet_pton(socket.AF_INET6, BACKENDS6[1]))

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
        v = self.sinks[self.node(f).node].lookup_percpu_sum(0)
        names = ("packets", "bytes", "tcp", "udp", "ipip", "other", "mac0", "backend1",
                 "backend2", "backend3", "ipv6")
        return dict(zip(names, v))

    # -- tear down -----------------------------------------------------------------------

    def down(self) -> List[str]:
        done = []
        for s in self.senders.values():
            s.close()
        self.senders.clear()
        for f in self.nodes:
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


def _on_sigterm(signum, frame):
    """Stop the run, cleaning up: a second SIGTERM (timeout(1) passes one on, pkill sends
    its own) is ignored, so it cannot cut the cleanup short (putting conntrack's table
    size back takes seconds with a million entries)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


def _on_sigusr1(signum, frame):
    pass    # only there so that the signal interrupts a test run instead of killing us


def generate(lab: Lab, f: Forwarder, cpus: List[int], per_thread: int, timeout: float,
             sample=None, expect_s: float = 1.0, family: int = 4) -> dict:
    """One live-frames test run of `per_thread` packets on each CPU in `cpus`, all at
    once, from the generator's namespace out of g-<fwd> (with lab.chain: a chain test run
    in f's LB node, its ctx naming in0, into the program on in0; nothing transmitted).

    With `sample` (a function returning a snapshot), the calling thread takes snapshots
    while every generator thread is still inside its call, from a little after the start
    (each call first waits for the kernel to switch its XDP dispatcher) until the first
    thread returns: the caller measures between the first and the last of them, which
    leaves out the calls' fixed costs at either end. Returns those snapshots (each
    (time, snapshot, CPU seconds of the pipeline so far)), the wall time from the common start to the last return, the
    kernel's own loop time (max over threads) and how many packets were sent."""
    f = lab.node(f)
    if lab.chain:
        lab.chain_to(f)
        ifindex, where, prog, flags = lab.lb_ifindex[f.node], lab.lb(f), lab.gen_chain, 0
    else:
        ifindex, where, prog = lab.gen_ifindex[f.node], lab.ns("gen"), lab.gen_prog
        flags = _bpf.TEST_XDP_LIVE_FRAMES
    length = FRAME_LENS[family]
    ctx = struct.pack("=6I", 0, length, 0, ifindex, 0, 0)  # struct xdp_md
    frame = bytes(length)
    barrier = threading.Barrier(len(cpus) + 1)
    results: List[Optional[dict]] = [None] * len(cpus)
    done = threading.Event()

    def worker(i: int, cpu: int) -> None:
        out = {"sent": 0, "kernel_s": 0.0, "error": None}
        try:
            os.sched_setaffinity(0, {cpu})
            with netns.enter(where):
                barrier.wait(timeout=10)
                t0 = time.monotonic()
                try:
                    _, _, ns_per = prog.test_run(frame, repeat=per_thread, ctx=ctx,
                                                 flags=flags)
                    out["sent"] = per_thread
                    out["kernel_s"] = ns_per * per_thread / 1e9
                    out["ns_per"] = ns_per
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
    lab.seq_to(f)
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
        lab.seq_from(f)
    errors = [r["error"] for r in results if r is None or r["error"]]
    if errors:
        raise Interrupt("; ".join(str(e) for e in errors))
    return {"wall_s": max(r["t1"] for r in results) - min(r["t0"] for r in results),
            "kernel_s": max(r["kernel_s"] for r in results),
            "ns_per": [r["ns_per"] for r in results],
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


def set_traffic(lab: Lab, traffic: str, ncpus: int, family: int = 4, flows: int = FLOWS,
                cpus: Optional[List[int]] = None, lag: int = 1,
                part: Optional[Tuple[int, int]] = None) -> None:
    """The generator's traffic: "established": `flows` flows in all, shared out among the
    `ncpus` generator threads, one share a CPU of `cpus` (None: one thread, any CPU), each
    flow sending `lag` packets in a row (with `part` = (start, count): only flows start to
    start + count - 1 of each CPU's share); else a new flow every packet."""
    per_cpu, mode = 0, 0                                    # GEN_FLOWS, flows 0: new flows
    if traffic == "established":
        share, mode = flows // ncpus, GEN_SHARED
        start, per_cpu = part or (0, share)
        first = {c: start for c in range(4)}
        for i, c in enumerate(cpus or []):
            first[c & 3] = i * share + start
        for slot, value in first.items():
            lab.gen_first.update(slot, struct.pack("=I", value))
    lab.gen_config.update(0, mac_bytes(LB_IN_MAC) + mac_bytes(GEN_MAC)
                          + socket.inet_aton(CLIENTS) + socket.inet_aton(VIP)
                          + struct.pack("!H", PORT) + b"\0\0" + struct.pack("=I", per_cpu)
                          + struct.pack("=III", mode, lag, family)
                          + socket.inet_pton(socket.AF_INET6, CLIENTS6)
                          + socket.inet_pton(socket.AF_INET6, VIP6))


def table_ways(dp: Datapath) -> Tuple[int, int]:
    """Ways of the IPv4 flow table and of the IPv6 one (entries of an IPv6 LRU hash, on
    a datapath from before IPv6 sets, whose flow_capacities() were ways)."""
    flows = dp.tables.flows
    return flows.ways() if hasattr(flows, "ways") else tuple(dp.flow_capacities())


def set_limits(lab: Lab, f: Forwarder, traffic: str) -> Optional[Tuple[int, int]]:
    """pyxlb's insertion limits for this traffic: none for new_nolimit, else the
    defaults it had from the start. Returns those in force (None: a datapath without)."""
    dp = lab.datapaths.get(f.node)
    if dp is None or f.node not in lab.insert_limits:
        return None
    if traffic == "new_nolimit":
        return dp.set_insert_limits(0)
    want = lab.insert_limits[f.node]
    if dp.insert_limits() != want:
        dp.set_insert_limits(None)
        if dp.insert_limits() != want:
            raise RuntimeError(f"{f.key}: insertion limits {dp.insert_limits()}, "
                               f"expected {want}")
    return want


def fill_flow_tables(lab: Lab, core_sets: Dict[int, List[int]],
                     families: Tuple[int, ...] = FAMILIES) -> Dict[str, dict]:
    """Bring every pyxlb node to the state of a node that has been up a while: where a new
    flow goes, the back half of its set, full of other flows (twice the table's ways of
    new flows went through, its insertion limit off meanwhile), so a new flow pushes the
    oldest flow there out. Both tables, IPv4 and IPv6. (New flows fill a set's empty ways
    first, front half included.) The established flows go in before each measurement of
    them, as real connections do (admit): promoted to the front half of their set. Where
    in its set a flow sits costs nothing (a set is two cache lines, one for IPv6, read
    together; a lookup compares all four ways). Only the tables of `families`. Returns
    each node's tables and what went in, by node."""
    cpus = core_sets[max(core_sets)]
    out = {}
    for f in lab.nodes:
        dp = lab.datapaths.get(f.node)
        if dp is None or f.stateless:       # stateless: nothing would go in
            continue
        limited = f.node in lab.insert_limits
        if limited:
            dp.set_insert_limits(0)
        st0 = dp.stats()
        ways = table_ways(dp)
        for family, n in zip(FAMILIES, ways):
            if family not in families:
                continue
            set_traffic(lab, "new", len(cpus), family)
            per_thread = 2 * n // len(cpus) + 1
            generate(lab, f, cpus, per_thread, timeout=60 + per_thread / 500_000,
                     family=family)
        if limited:
            set_limits(lab, f, "new")
        st = _delta(st0, dp.stats())
        out[f.node] = {"forwarder": f.key, "flows": f.flows, "table": f.table,
                       "max_flows": f.max_flows,
                       "ways": {"ipv4": ways[0], "ipv6": ways[1]},
                       "flow_miss": st.get("flow_miss", 0),
                       "flow_insert_limited": st.get("flow_insert_limited", 0)}
        if hasattr(dp, "flow_capacities"):
            rated = dp.flow_capacities()
            out[f.node]["rated_flows"] = {"ipv4": rated[0], "ipv6": rated[1]}
    return out


def table_sets(lab: Lab, f: Forwarder, family: int) -> Optional[int]:
    """Sets of pyxlb node f's table for `family` (None: not a pyxlb node)."""
    dp = lab.datapaths.get(f.node)
    if dp is None:
        return None
    return table_ways(dp)[FAMILIES.index(family)] // 4


def expected_hit_share(lab: Lab, f: Forwarder, family: int) -> Optional[float]:
    """The share of an established flow's packets that find it in pyxlb node f's table
    by the set rule (docs/datapath.md, "Capacity"): f.flows over the table's sets at
    random; None where the table is not a pyxlb set table."""
    sets = table_sets(lab, f, family)
    if not sets or not f.flows:
        return None
    from tests.support.flowsets import missing_share
    return 1 - missing_share(f.flows / sets)


ADMIT_BATCH_PER_SETS = 16      # admission: a batch of flows a 16th of the table's sets
PROMOTE_WAIT_S = 0.1            # past pyxlb's promotion age (XLB_PROMOTE_AGE: 67 ms)


def admit(lab: Lab, f: Forwarder, cpus: List[int], family: int, flows: int) -> dict:
    """Admit `flows` established flows to pyxlb node f's table as real connections go in:
    each flow sends two packets in a row (recorded in the back half of its set, where new
    flows push it out), then, past the promotion age, one more (promoted to the front half,
    where only other promotions move it; docs/datapath.md, "The set policy"). In batches
    of a 16th of the table's sets, each batch's third packets going out while the next
    batch sends its pairs: between a flow's pair and its third packet few other flows
    enter its set (two could push it out), as with connections that come over time and
    not all at once; then, past the promotion age again, one packet from every flow (which
    promotes those pushed out before their third packet). Into a node that has run a
    while, where the front halves hold flows that no longer send (here: the fill), each
    set's front ends up with two of its established flows (the last two promoted), the
    state the set rule's capacity assumes. (All at once, in the order the generator
    cycles them, three or more flows of a set would push each other out of its back half
    before their next packet, for ever, behind a front of flows that no longer send.)
    The insertion limit is off meanwhile (a million connections come over more than a
    second). Returns pyxlb's counters of the admission."""
    dp = lab.datapaths[f.node]
    share = flows // len(cpus)
    sets = table_sets(lab, f, family) or flows
    batch = max(1, min(share, sets // ADMIT_BATCH_PER_SETS // len(cpus)))
    limited = f.node in lab.insert_limits
    if limited:
        dp.set_insert_limits(0)
    st0 = dp.stats()
    t0 = time.monotonic()
    pending = None              # (start, count, time its pairs ended)
    for start in [*range(0, share, batch), None]:
        sent = None
        if start is not None:
            count = min(batch, share - start)
            set_traffic(lab, "established", len(cpus), family, flows, cpus, lag=2,
                        part=(start, count))
            generate(lab, f, cpus, 2 * count, timeout=60, family=family)
            sent = (start, count, time.monotonic())
        if pending:
            time.sleep(max(0.0, pending[2] + PROMOTE_WAIT_S - time.monotonic()))
            set_traffic(lab, "established", len(cpus), family, flows, cpus,
                        part=pending[:2])
            generate(lab, f, cpus, pending[1], timeout=60, family=family)
        pending = sent
    # a flow pushed out between its pair and its third packet came back in with the third:
    # past the promotion age again, one more packet from every flow promotes it
    time.sleep(PROMOTE_WAIT_S)
    set_traffic(lab, "established", len(cpus), family, flows, cpus)
    generate(lab, f, cpus, share, timeout=60 + share / 200_000, family=family)
    if limited:
        set_limits(lab, f, "established")
    st = _delta(st0, dp.stats())
    return {"flows": flows, "batch_per_cpu": batch,
            "seconds": round(time.monotonic() - t0, 2),
            **{k: st.get(k, 0) for k in ("flow_hit", "flow_miss", "flow_insert_limited")}}


# -- one measurement ---------------------------------------------------------------------


def _delta(a: dict, b: dict) -> dict:
    return {k: b[k] - a.get(k, 0) for k in b}


def measure(lab: Lab, f: Forwarder, traffic: str, cpus: List[int], duration: float,
            rate_hint: Optional[float], family: int = 4, flows: int = FLOWS) -> dict:
    """Admit the established flows (established traffic), warm up, then one timed run;
    returns the figures and the checks that failed."""
    f = lab.node(f)
    flows = f.flows or flows
    limits = set_limits(lab, f, traffic)
    if f.conntrack:
        lab.conntrack_flush(f)
    dp = lab.datapaths.get(f.node)
    if traffic == "established":
        if dp and not f.stateless and (f.node, family) not in lab.admitted:
            # once a node and family: the flows stay (the front halves of their sets)
            lab.admitted[(f.node, family)] = admit(lab, f, cpus, family, flows)
        elif f.conntrack:
            # conntrack was flushed: every flow opens its entry again
            set_traffic(lab, traffic, len(cpus), family, flows, cpus)
            generate(lab, f, cpus, flows // len(cpus), timeout=60, family=family)
    set_traffic(lab, traffic, len(cpus), family, flows, cpus)
    # warm-up: every established flow seen at least once since the last new flows went
    # through (they push out flows of the back halves: those come back in now), and with
    # 1,000 flows many times over; a rate estimate from the kernel's loop time (the wall
    # time of a short call is mostly fixed cost)
    warm = max(20_000, flows // len(cpus)) if traffic == "established" else 10_000
    s0 = lab.sink_counts(f)
    g = generate(lab, f, cpus, warm, timeout=30, family=family)
    time.sleep(0.02)
    got = lab.sink_counts(f)["packets"] - s0["packets"]
    if lab.chain:
        got = g["sent"]
    estimate = got / g["kernel_s"] if g["kernel_s"] > 0 else 1e6
    rate = rate_hint or estimate
    if f.conntrack and traffic == "new":
        lab.conntrack_flush(f)
    per_thread = int(rate * duration / len(cpus))
    if f.conntrack and traffic == "new":
        per_thread = min(per_thread, CT_NEW_BUDGET // len(cpus))
    per_thread = max(10_000, min(per_thread, MAX_PACKETS_PER_THREAD))

    st0 = dp.stats() if dp else {}
    c0 = pyxlb_counts(dp, family) if dp else None
    s0 = lab.sink_counts(f)

    def snapshot():
        return lab.sink_counts(f)["packets"], cpu_times()

    g = generate(lab, f, cpus, per_thread, timeout=3 * duration + 5,
                 sample=None if lab.chain else snapshot,
                 expect_s=per_thread * len(cpus) / rate, family=family)
    time.sleep(0.02)                # the last frames reach the sink within microseconds
    sink = _delta(s0, lab.sink_counts(f))
    stats = _delta(st0, dp.stats()) if dp else {}
    counts = _delta(c0, pyxlb_counts(dp, family)) if dp else None
    ct_entries = lab.conntrack_count(f) if f.conntrack else None
    if f.conntrack:
        lab.conntrack_flush(f)

    # the rate between the first and last snapshot taken inside the generator calls;
    # a run too short for two snapshots falls back to the whole call's wall time
    snaps = g["snaps"]
    window = snaps[-1][0] - snaps[0][0] if len(snaps) >= 2 else 0.0
    hz = os.sysconf("SC_CLK_TCK")
    if lab.chain:
        # nothing reaches the sink: the packets are those the threads ran, the time
        # each thread's own loop time in the kernel (BPF_PROG_TEST_RUN's duration)
        window = 0.0
        wall_mpps, basis = g["sent"] / g["wall_s"] / 1e6, "kernel loop time (chain)"
        softirq_s = steal_s = cpu_s = window_packets = None
    elif window >= 0.1:
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
    n = g["sent"] if lab.chain else sink["packets"]
    # what the cores would forward were they the pipeline's alone: packets per second of
    # its CPU time, times the cores (the machine is shared; the wall figure is kept too)
    mpps = window_packets * len(cpus) / cpu_s / 1e6 if cpu_s else wall_mpps
    if lab.chain:
        mpps = sum(1e3 / ns for ns in g["ns_per"] if ns)
    run = {
        "family": family, "flows": flows, "generator": "chain" if lab.chain else "live",
        "mpps": mpps, "mpps_wall": wall_mpps, "basis": basis, "window_s": round(window, 4),
        "cpu_s": cpu_s, "cpu_share": cpu_s / (window * len(cpus)) if cpu_s else None,
        "window_packets": window_packets, "snapshots": len(snaps),
        "mpps_whole_call": n / g["wall_s"] / 1e6,
        "mpps_kernel_time": n / g["kernel_s"] / 1e6 if g["kernel_s"] else None,
        "packets": n, "sent": g["sent"],
        "delivered": (None if lab.chain else n / g["sent"] if g["sent"] else 0),
        "ns_per_packet_threads": g["ns_per"],
        "wall_s": round(g["wall_s"], 4), "softirq_s": softirq_s, "steal_s": steal_s,
        "mpps_per_softirq_core": (window_packets / softirq_s / 1e6
                                  if softirq_s and softirq_s >= 0.05 else None),
        "sink": sink,
    }
    if dp:
        run["xlb_stats"] = {k: v for k, v in stats.items() if v}
        run["xlb_counts"] = counts
        looked = sum(stats.get(k, 0) for k in ("flow_hit", "flow_miss", "flow_stale"))
        run["hit_share"] = stats.get("flow_hit", 0) / looked if looked else None
        if traffic == "established":
            run["hit_share_expected"] = expected_hit_share(lab, f, family)
        if lab.chain:
            run["delivered"] = (stats.get("redirect", 0) + stats.get("tx", 0)) / g["sent"]
        if limits is not None:
            run["insert_limits_per_cpu"] = {"ipv4": limits[0], "ipv6": limits[1]}
        if traffic != "established":
            miss = stats.get("flow_miss", 0)
            run["recorded_share"] = (1 - stats.get("flow_insert_limited", 0) / miss
                                     if miss else None)
    if ct_entries is not None:
        run["conntrack_entries"] = ct_entries
    run["failed_checks"] = check_run(f, traffic, run, chain=lab.chain)
    return run


def pyxlb_counts(dp: Datapath, family: int) -> Dict[str, int]:
    """pyxlb's own per-VIP and per-backend counters of one family's VIPs: packets of the
    TCP VIP and of the UDP one, the TCP VIP's new flows (flow-table misses it balanced),
    packets per backend (backend1..3, as the sink names them)."""
    out = {"tcp": 0, "udp": 0, "tcp_new_flows": 0, "backend1": 0, "backend2": 0,
           "backend3": 0}
    addrs = BACKENDS if family == 4 else BACKENDS6
    names = {str(ipaddress.ip_address(a)): f"backend{k}" for k, a in addrs.items()}
    seen = set()
    for v in dp.counters():
        if not v["vip"].startswith(VIP if family == 4 else f"[{VIP6}]"):
            continue
        proto = v["vip"].rsplit("/", 1)[1]
        out[proto] += v["packets"]
        if proto == "tcp":
            out["tcp_new_flows"] += v["new_flows"]
        for b in v["backends"]:
            if b["backend_id"] not in seen:      # one id a backend, shared by both VIPs
                seen.add(b["backend_id"])
                out[names[str(ipaddress.ip_address(b["address"]))]] += b["packets"]
    return out


def check_run(f: Forwarder, traffic: str, run: dict, chain: bool = False) -> List[str]:
    """What the sink and the forwarder's own counters say about the run (with the chain
    generator nothing reaches the sink: pyxlb's counters only, and none for the ceiling)."""
    bad = []
    s, n = run["sink"], run["packets"]
    if n == 0:
        return ["nothing reached the sink"]
    if not chain:
        l4 = s["tcp"] + s["udp"]
        if s["other"] > OTHER_TOLERATED or not 0.35 <= s["tcp"] / max(l4, 1) <= 0.65:
            bad.append(f"protocol mix off: tcp {s['tcp']} udp {s['udp']} other {s['other']}")
        if s["ipip"] != (n if f.mode == "ipip" else 0):
            bad.append(f"{s['ipip']} of {n} packets were tunnelled")
        v6 = s.get("ipv6", 0)
        if v6 < (n - OTHER_TOLERATED if run["family"] == 6 else 0) or \
                (run["family"] == 4 and v6 > OTHER_TOLERATED):
            bad.append(f"{v6} of {n} packets were IPv6 (IPv{run['family']} traffic)")
        shares = [s[f"backend{k}"] / n for k in BACKENDS]
        if f.kind not in ("ceiling", "tunnel", "drop") and min(shares) < 0.15:
            bad.append("backend shares " + ", ".join(f"{x:.0%}" for x in shares))
    st = run.get("xlb_stats")
    if st is not None:
        bad += _check_pyxlb(traffic, run, st, n, chain, f.stateless)
    if f.conntrack and traffic == "new" and run["conntrack_entries"] < 0.95 * n:
        bad.append(f"{run['conntrack_entries']} conntrack entries for {n} new flows")
    flows = run["flows"]
    if f.conntrack and traffic == "established" and run["conntrack_entries"] > flows + 50:
        bad.append(f"{run['conntrack_entries']} conntrack entries for {flows} flows")
    return bad


HIT_SHARE_RATED = 0.99          # established flows within a table's rating: hits at least
HIT_SHARE_SLACK = 0.03          # beyond it: at least the set rule's share less this


def _check_pyxlb(traffic: str, run: dict, st: dict, n: int, chain: bool,
                 stateless: bool = False) -> List[str]:
    """pyxlb's counters against the traffic: every packet looked up once and forwarded,
    both protocols and all three backends (its per-VIP and per-backend counters: these
    hold with the chain generator too), the flow table's hits and misses. Stateless:
    no packet looked up, none carrying a previous owner (the rings do not change), a new
    TCP flow for every SYN and none else."""
    bad = []
    hit, miss, stale = (st.get(k, 0) for k in ("flow_hit", "flow_miss", "flow_stale"))
    looked = hit + miss + stale
    redirect = st.get("redirect", 0)
    if redirect < n:
        bad.append(f"pyxlb redirected {redirect}, "
                   + (f"of {n} sent" if chain else f"the sink saw {n}"))
    if stateless:
        if looked:
            bad.append(f"pyxlb stateless looked up {looked} flows (hit {hit}, miss {miss}, "
                       f"stale {stale}): expected none")
        if st.get("chain_sent", 0):
            bad.append(f"pyxlb chain_sent {st['chain_sent']}: no ring changed")
    elif looked != redirect:
        bad.append(f"pyxlb looked up {looked} flows for {redirect} packets forwarded")
    drops = {k: v for k, v in st.items() if k.startswith(("drop_", "pass_"))}
    if drops:
        bad.append(f"pyxlb dropped or passed: {drops}")
    if stale:
        bad.append(f"pyxlb flow_stale {stale}: no backend changed")
    c = run["xlb_counts"]
    vip = c["tcp"] + c["udp"]
    if vip != redirect or not 0.35 <= c["tcp"] / max(vip, 1) <= 0.65:
        bad.append(f"pyxlb's VIPs: tcp {c['tcp']} udp {c['udp']} of {redirect} packets")
    shares = [c[f"backend{k}"] / max(vip, 1) for k in BACKENDS]
    if min(shares) < 0.15 or sum(c[f"backend{k}"] for k in BACKENDS) != vip:
        bad.append("pyxlb's backend shares " + ", ".join(f"{x:.0%}" for x in shares))
    # a TCP miss of established traffic (ACKs) is mid-stream; of new traffic (SYNs) never
    midstream = st.get("flow_miss_midstream", 0)
    want = c["tcp_new_flows"] if traffic == "established" and not stateless else 0
    if midstream != want:
        bad.append(f"pyxlb flow_miss_midstream {midstream}, expected {want} (TCP misses)")
    if stateless:
        # a stateless VIP counts a SYN as a new flow: every TCP packet of new traffic,
        # none of established traffic (ACKs)
        want = c["tcp"] if traffic != "established" else 0
        if c["tcp_new_flows"] != want:
            bad.append(f"pyxlb stateless: {c['tcp_new_flows']} new TCP flows of "
                       f"{c['tcp']} TCP packets, expected {want}")
    elif traffic == "established":
        share, expected = run["hit_share"] or 0.0, run.get("hit_share_expected")
        need = HIT_SHARE_RATED if expected is None or expected >= 0.999 \
            else expected - HIT_SHARE_SLACK
        if share < need:
            bad.append(f"pyxlb flow_hit {share:.2%} of lookups, expected at least "
                       f"{need:.2%}" + (f" (the set rule: {expected:.2%})"
                                        if expected is not None else ""))
    elif looked and miss < 0.99 * looked:
        bad.append(f"pyxlb flow_miss {miss} of {looked} packets")
    return bad


# -- summary, table, chart ------------------------------------------------------------------


def _over_tunnel(row: dict) -> bool:
    """The row is pyxlb's in an IPIP mode: it is compared with the tunnel floor too."""
    f = BY_KEY[row["forwarder"]]
    return f.kind == "pyxlb" and f.mode == "ipip"


def summarise(runs: Dict[tuple, List[dict]], core_counts: List[int]) -> dict:
    """Rows (medians over the rounds) keyed by forwarder, traffic, flows, cores, family;
    the ratios to the ceiling and iptables of the same traffic, N and cores; the targets
    (at FLOWS established flows, today's, for the default tables)."""
    rows = []
    for (fkey, traffic, flows, cores, family), rs in runs.items():
        ok = [r for r in rs if not r["failed_checks"]]
        use = ok or rs
        mpps = [r["mpps"] for r in use]
        per_core = [r["mpps_per_softirq_core"] for r in use if r["mpps_per_softirq_core"]]
        shares = [r["cpu_share"] for r in use if r["cpu_share"]]
        delivered = [r["delivered"] for r in use if r["delivered"] is not None]
        recorded = [r["recorded_share"] for r in use if r.get("recorded_share") is not None]
        hits = [r["hit_share"] for r in use if r.get("hit_share") is not None]
        f = BY_KEY[fkey]
        row = {"forwarder": fkey, "label": f.label, "traffic": traffic, "flows": flows,
               "cores": cores, "family": family, "mpps": statistics.median(mpps),
               "mpps_min": min(mpps), "mpps_max": max(mpps),
               "mpps_wall": statistics.median(r["mpps_wall"] for r in use),
               "cpu_share": statistics.median(shares) if shares else None,
               "mpps_per_softirq_core": statistics.median(per_core) if per_core else None,
               "delivered": statistics.median(delivered) if delivered else None,
               "runs_ok": len(ok), "runs": len(rs),
               "failed_checks": sorted({c for r in rs for c in r["failed_checks"]})}
        if f.table:
            row["table"] = f.table
        if hits:
            row["hit_share"] = statistics.median(hits)
            row["hit_share_min"] = min(hits)
        expected = use[0].get("hit_share_expected")
        if expected is not None:
            row["hit_share_expected"] = expected
        if recorded:
            row["recorded_share"] = statistics.median(recorded)
        limits = use[0].get("insert_limits_per_cpu")
        if limits is not None:
            row["insert_limits_per_cpu"] = limits
        rows.append(row)
    by = {(r["forwarder"], r["traffic"], r["flows"], r["cores"], r["family"]): r
          for r in rows}

    def ref_row(row, fkey):
        ref = REF_TRAFFIC.get(row["traffic"], row["traffic"])
        return by.get((fkey, ref, row["flows"], row["cores"], row["family"]))

    for row in rows:
        ipt, ceil = ref_row(row, "iptables"), ref_row(row, "ceiling")
        row["x_iptables"] = row["mpps"] / ipt["mpps"] if ipt else None
        row["x_ceiling"] = row["mpps"] / ceil["mpps"] if ceil else None
        # what the forwarder adds per packet to the ceiling's path, per core
        row["ns_over_ceiling"] = (1e3 / row["mpps"] - 1e3 / ceil["mpps"]) * row["cores"] \
            if ceil else None
        tun = ref_row(row, "tunnel") if _over_tunnel(row) else None
        row["x_tunnel"] = row["mpps"] / tun["mpps"] if tun else None
    for row in rows:
        ipt = ref_row(row, "iptables")
        own = row["ns_over_ceiling"]
        row["work_ratio_iptables"] = ipt["ns_over_ceiling"] / own \
            if ipt and ipt["ns_over_ceiling"] and own and own > 0 else None
    rows.sort(key=lambda r: (r["flows"], list(TRAFFIC).index(r["traffic"]), r["cores"],
                             ORDER.index(r["forwarder"]), r["family"]))
    targets = []
    for what, traffic, cores, need, fkeys, flows in TARGETS:
        for fkey in fkeys:
            for c in ([cores] if cores else core_counts):
                for family in FAMILIES:
                    row = by.get((fkey, traffic, flows, c, family))
                    if row is None or row[what] is None:
                        continue
                    ref = "iptables" if what == "x_iptables" else "ceiling"
                    targets.append({
                        "target": f"{BY_KEY[fkey].label} >= "
                                  + (f"{need:g}x {ref}" if what == "x_iptables"
                                     else f"{need:.0%} of {ref}")
                                  + f", {_flows_text(flows)} IPv{family} {traffic}, "
                                  f"{c} core{'s' if c > 1 else ''}",
                        "forwarder": fkey, "traffic": traffic, "flows": flows, "cores": c,
                        "family": family, "metric": what, "value": row[what], "need": need,
                        "pass": row[what] >= need and row["runs_ok"] == row["runs"]})
    return {"rows": rows, "targets": targets}


def _fmt_row(r: Optional[dict]) -> Tuple[str, str, str, str, str]:
    if r is None:
        return "-", "", "-", "-", "-"
    span = f"({r['mpps_min']:.2f}-{r['mpps_max']:.2f})"
    xc = f"{r['x_ceiling']:.0%}" if r["x_ceiling"] else "-"
    ns = f"{r['ns_over_ceiling']:.0f}" if r["ns_over_ceiling"] is not None else "-"
    hits = f"{r['hit_share']:.1%}" if r.get("hit_share") is not None and \
        r["traffic"] == "established" else "-"
    return f"{r['mpps']:.2f}", span, xc, hits, ns


def _flows_text(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n:,}"


def print_table(summary: dict, chain: bool = False) -> None:
    by = {(r["forwarder"], r["traffic"], r["flows"], r["cores"], r["family"]): r
          for r in summary["rows"]}
    keys = []
    for r in summary["rows"]:
        k = (r["flows"], r["traffic"], r["cores"], r["forwarder"])
        if k not in keys:
            keys.append(k)
    head = (f"{'flows':>5} {'traffic':<13} {'cores':>5}  {'forwarder':<22} "
            f"{'IPv4 Mpps':>9} {'(min-max)':>13} {'x ipt':>6} {'x ceil':>6} {'hits':>6} "
            f"{'ns>ceil':>7}  {'IPv6 Mpps':>9} {'(min-max)':>13} {'x ceil':>6} {'hits':>6} "
            f"{'ns>ceil':>7} {'v6/v4':>6}")
    print(head)
    print("-" * len(head))
    last = None
    flags = []
    for flows, traffic, cores, fkey in keys:
        if last and last != (flows, traffic, cores):
            print()
        last = (flows, traffic, cores)
        r4 = by.get((fkey, traffic, flows, cores, 4))
        r6 = by.get((fkey, traffic, flows, cores, 6))
        m4, s4, c4, h4, n4 = _fmt_row(r4)
        m6, s6, c6, h6, n6 = _fmt_row(r6)
        xi = f"{r4['x_iptables']:.1f}x" if r4 and r4["x_iptables"] else "-"
        ratio = f"{r6['mpps'] / r4['mpps']:.2f}" if r4 and r6 else "-"
        print(f"{_flows_text(flows):>5} {SHORT[traffic]:<13} {cores:>5}  "
              f"{BY_KEY[fkey].label:<22} {m4:>9} {s4:>13} {xi:>6} {c4:>6} {h4:>6} {n4:>7}  "
              f"{m6:>9} {s6:>13} {c6:>6} {h6:>6} {n6:>7} {ratio:>6}")
        for r in (r4, r6):
            if r and r["failed_checks"]:
                flags.append(f"  CHECK FAILED, IPv{r['family']} {SHORT[traffic]} "
                             f"{_flows_text(flows)} flows {cores} core(s) {r['label']} "
                             f"({r['runs'] - r['runs_ok']} of {r['runs']} runs): "
                             + "; ".join(r["failed_checks"]))
    for line in flags:
        print(line)
    if chain:
        print("\nMpps (chain generator): packets per second of each generator thread's own "
              "loop time in the\n  kernel, summed over the threads; nothing transmitted "
              "(generator + forwarder's program,\n  no veth, no sink). ns>ceil: what a "
              "packet costs beyond the ceiling's program (the\n  forwarder's own work).")
    else:
        print("\nMpps: packets at the sink per second of the CPU time the generator, "
              "forwarder and sink got,\n  times the cores (what the cores would forward "
              "were they theirs alone; per-run wall Mpps,\n  CPU share and Mpps per softirq "
              "core are in the results file); ns>ceil: CPU time a packet\n  costs beyond "
              "the ceiling's (the forwarder's own work). IPv4: 64-byte frames, IPv6: 84.")
    print("flows: established flows (admitted to pyxlb's table before they are measured); "
          "for new flows,\n  the established flows the node's table holds meanwhile. "
          "hits: pyxlb's flow-table hits over\n  lookups in the measured calls (medians). "
          "'max-flows': pyxlb with tables made for that N\n  "
          "(--max-flows N --max-flows6 N); "
          "'stateless': no flow table (TCP VIPs\n  stateless, UDP VIPs flow_table "
          "false); the others with the default tables.")
    sized = {}
    for r in summary["rows"]:
        if r.get("hit_share_expected") is not None and r["traffic"] == "established":
            sized[(r["forwarder"], r["flows"], r["family"])] = r["hit_share_expected"]
    if sized:
        print("\nflow-table hits the set rule gives (docs/datapath.md, 'Capacity'), "
              "N flows over the table's sets:")
        for (fkey, flows, family), e in sized.items():
            print(f"  {BY_KEY[fkey].label:<22} {_flows_text(flows):>5} IPv{family}  "
                  f"{e:.2%}")
    limited = [r for r in summary["rows"] if "insert_limits_per_cpu" in r
               and r["traffic"] != "established"]
    if limited:
        print("\npyxlb's insertion limits (new flows recorded a second per CPU) and the share "
              "of new flows\nrecorded, medians:")
        for r in limited:
            lim = r["insert_limits_per_cpu"][f"ipv{r['family']}"]
            rec = f"{r['recorded_share']:.0%}" if r.get("recorded_share") is not None else "-"
            print(f"  {r['label']:<22} {_flows_text(r['flows']):>5} IPv{r['family']} "
                  f"{SHORT[r['traffic']]:<13} {r['cores']} "
                  f"core{'s' if r['cores'] > 1 else ' '}"
                  f"  limit {lim or 'none':>9}  recorded {rec}")
    if summary["targets"]:
        print()
        head = f"{'target (flows)':<72} {'value':>7} {'need':>6}  result"
        print(head)
        print("-" * len(head))
        for t in summary["targets"]:
            fmt = (lambda v: f"{v:.1f}x") if t["metric"] == "x_iptables" \
                else (lambda v: f"{v:.0%}")
            print(f"{t['target']:<72} {fmt(t['value']):>7} {fmt(t['need']):>6}  "
                  f"{'PASS' if t['pass'] else 'FAIL'}")
    work = [r for r in summary["rows"]
            if BY_KEY[r["forwarder"]].kind == "pyxlb" and r["work_ratio_iptables"]]
    if work:
        print("\nthe forwarder's own work per packet (ns>ceil), iptables DNAT's over pyxlb's "
              "(not a target):")
    for r in work:
        print(f"  {r['label']:<22} {_flows_text(r['flows']):>5} IPv{r['family']} "
              f"{SHORT[r['traffic']]:<13} {r['cores']} "
              f"core{'s' if r['cores'] > 1 else ' '}  {r['ns_over_ceiling']:6.0f} ns vs "
              f"{r['ns_over_ceiling'] * r['work_ratio_iptables']:6.0f} ns: "
              f"{r['work_ratio_iptables']:.1f}x less")
    floor = [r for r in summary["rows"] if r["forwarder"] == "tunnel" and r["x_ceiling"]]
    if floor:
        print("\nthe tunnel floor (the ceiling plus one outer header) as a share of the "
              "ceiling, and pyxlb's\nIPIP forwarders as a share of the floor:")
    for t in floor:
        over = [r for r in summary["rows"] if r.get("x_tunnel") and
                (r["traffic"], r["flows"], r["cores"], r["family"]) ==
                (t["traffic"], t["flows"], t["cores"], t["family"])]
        print(f"  {_flows_text(t['flows']):>5} IPv{t['family']} {SHORT[t['traffic']]:<13} "
              f"{t['cores']} core{'s' if t['cores'] > 1 else ' '}  floor {t['x_ceiling']:.0%}"
              + "".join(f"   {r['label']} {r['x_tunnel']:.0%}" for r in over))


def chart(summary: dict, core_counts: List[int], path: str, subtitle: str,
          chain: bool = False) -> None:
    """One panel per N and traffic: bars per forwarder, IPv4 and IPv6, one core and two;
    pyxlb's bars say their share of the ceiling (and, established, their hits)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {(r["forwarder"], r["traffic"], r["flows"], r["cores"], r["family"]): r
            for r in summary["rows"]}
    traffics = [t for t in TRAFFIC if any(r["traffic"] == t for r in summary["rows"])]
    flow_counts = sorted({r["flows"] for r in summary["rows"]})
    colors = {1: "#4C72B0", 2: "#DD8452"}
    groups = [(c, fam) for c in core_counts for fam in FAMILIES]
    fig, axes = plt.subplots(len(flow_counts), len(traffics),
                             figsize=(7.5 * len(traffics), 5.6 * len(flow_counts)),
                             sharey=True, squeeze=False)
    width = 0.84 / len(groups)
    top = max(r["mpps_max"] for r in summary["rows"])
    for ax_row, flows in zip(axes, flow_counts):
        for ax, traffic in zip(ax_row, traffics):
            fwds = [BY_KEY[k] for k in ORDER
                    if any(r["forwarder"] == k and r["flows"] == flows
                           and r["traffic"] == traffic for r in summary["rows"])]
            xs = range(len(fwds))
            for j, (cores, family) in enumerate(groups):
                vals, lo, hi = [], [], []
                for f in fwds:
                    r = rows.get((f.key, traffic, flows, cores, family))
                    vals.append(r["mpps"] if r else 0)
                    lo.append(r["mpps"] - r["mpps_min"] if r else 0)
                    hi.append(r["mpps_max"] - r["mpps"] if r else 0)
                pos = [x - 0.42 + width * (j + 0.5) for x in xs]
                bars = ax.bar(pos, vals, width * 0.92, color=colors.get(cores, "#55A868"),
                              hatch="//" if family == 6 else None, edgecolor="white",
                              label=f"IPv{family}, {cores} core{'s' if cores > 1 else ''}",
                              yerr=[lo, hi], capsize=2, error_kw={"elinewidth": 0.8})
                for b, f, v, h in zip(bars, fwds, vals, hi):
                    if not v:
                        continue
                    r = rows.get((f.key, traffic, flows, cores, family))
                    text = f"{v:.2f}" if v < 1 else f"{v:.1f}"
                    if r and f.kind == "pyxlb" and r["x_ceiling"]:
                        text += f"\n{r['x_ceiling']:.0%}"
                    if r and traffic == "established" and r.get("hit_share") is not None \
                            and r["hit_share"] < 0.995:
                        text += f"\nh{r['hit_share']:.0%}"
                    ax.annotate(text, (b.get_x() + b.get_width() / 2, v + h), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom",
                                fontsize=6)
            ax.set_xticks(list(xs))
            ax.set_xticklabels([f.label.replace(" (", "\n(").replace(", ", ",\n")
                                for f in fwds], fontsize=8.5)
            ax.set_title(f"{TRAFFIC[traffic].capitalize()}, {flows:,} flows", fontsize=11)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            ax.set_ylim(0, top * 1.3)
        ax_row[0].set_ylabel("Mpps per second of the generator threads' kernel loop time"
                             if chain else "Mpps at the sink, 64-byte frames (IPv6: 84)\n"
                             "(per second of the pipeline's CPU time x cores)")
    axes[0][0].legend(loc="upper right", fontsize=8)
    fig.suptitle("Forwarding throughput of the LB node: pyxlb vs kernel DNAT (kube-proxy "
                 "layouts) vs a bare XDP redirect; pyxlb's figures: share of the ceiling, "
                 "h: flow-table hits where under 99.5%"
                 + (" (chain generator: nothing transmitted)" if chain else ""), fontsize=11)
    fig.text(0.5, 0.01, subtitle, ha="center", fontsize=8, color="#555555")
    fig.tight_layout(rect=(0, 0.03, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the socket generator (--generator socket) ------------------------------------------------

SOCKET_DURATION = 1.5           # seconds a measurement (about; --duration)
SOCKET_MIN_PACKETS = 200_000    # packets a measurement at least (all CPUs together)
SOCKET_MAX_PACKETS = 4_000_000
SOCKET_WARM = 20_000            # warm-up packets a CPU before each measurement
SOCKET_NEW_MAX = 400_000        # new flows a measurement at most (all CPUs together): what
                                # a DNAT node's conntrack grows by
SOCKET_TRAFFIC = ("established", "new")
SOCKET_NEW_FIRST = 1 << 28      # the first new flow's number on each CPU: far beyond the
                                # new flows the chain generator fills the tables with
SOCKET_SENDERS = 2              # AF_PACKET sockets a node: one for each sending thread
CT_IDLE_TIMEOUT = 900           # --generator socket: conntrack's timeouts of unreplied UDP
                                # and unacknowledged TCP on the DNAT nodes (30 s and 300 s:
                                # admitted flows must outlive a round at a million flows)
SOCKET_DELIVERED = 0.99         # a run must deliver at least this share of what was sent
CT_MAX_SLACK = 65_536           # nf_conntrack_max during a socket run: N + this at least


CT_HASHSIZE = "/sys/module/nf_conntrack/parameters/hashsize"


@contextlib.contextmanager
def conntrack_room(flows: int, nodes: int, extra: int = 0):
    """Room in conntrack for `nodes` DNAT nodes of `flows` entries each (and `extra` more
    each, the new flows a round adds) while the block runs, put back after it, also on
    failure. nf_conntrack_max (global, writable only in the initial namespace; each
    namespace's count is held to it) at least `flows` + `extra` + CT_MAX_SLACK; and the
    hash table, which all namespaces share, at least a bucket for every four of their
    established entries together: kube-proxy sizes it a quarter of its max, so each node
    sees chains as long as it would alone."""
    path = "net/netfilter/nf_conntrack_max"
    before = int(read_sysctl(path))
    with open(CT_HASHSIZE) as fh:
        buckets_before = int(fh.read())
    want = flows + extra + CT_MAX_SLACK
    buckets = -(-nodes * flows // 4)
    try:
        if want > before:
            sysctl(path, want)
        if buckets > buckets_before:
            with open(CT_HASHSIZE, "w") as fh:
                fh.write(str(buckets))
        yield {"nf_conntrack_max_before": before, "nf_conntrack_max": max(before, want),
               "nf_conntrack_buckets_before": buckets_before,
               "nf_conntrack_buckets": int(read_sysctl("net/netfilter/nf_conntrack_buckets"))}
    finally:
        if buckets > buckets_before:
            with open(CT_HASHSIZE, "w") as fh:
                fh.write(str(buckets_before))
        if want > before:
            sysctl(path, before)


def _send_timeout(packets: int) -> float:
    """A send's bound in time: generous (new flows through conntrack on a busy CPU go at
    some 50,000 a second), but a bound."""
    return 60 + packets / 20_000


def _socket_send(lab: Lab, f: Forwarder, msgs, packets: int, start: int = 0) -> dict:
    """Send `packets` frames of `msgs` (cycled from message `start`) out of g-<fwd> from
    this thread, all of them (an admission cut short by the time bound is an error)."""
    g = lab.senders[(f.node, 0)].send(msgs, packets, timeout=_send_timeout(packets),
                                      start=start)
    if g["sent"] + g["refused"] < packets:
        raise RuntimeError(f"{f.label}: sent {g['sent']} of {packets} frames in "
                           f"{g['wall_s']:.0f} s (the time bound)")
    return g


def _send_parallel(lab: Lab, f: Forwarder, jobs: List[tuple]) -> List[dict]:
    """One sending thread a job (cpu, msgs, packets, start), each pinned to its CPU with a
    socket of its own, all started together. Returns each thread's send (sent, refused,
    wall_s, next) with its own CPU time (cpu_s) and its start and end (t0, t1)."""
    barrier = threading.Barrier(len(jobs))
    results: List[Optional[dict]] = [None] * len(jobs)
    errors: List[str] = []

    def worker(i: int, cpu: int, msgs, packets: int, start: int) -> None:
        try:
            os.sched_setaffinity(0, {cpu})
            barrier.wait(timeout=10)
            c0, t0 = time.thread_time(), time.monotonic()
            g = lab.senders[(f.node, i)].send(msgs, packets,
                                              timeout=_send_timeout(packets), start=start)
            g.update(cpu_s=time.thread_time() - c0, t0=t0, t1=time.monotonic())
            results[i] = g
        except Exception as exc:    # reported below
            errors.append(f"CPU {cpu}: {type(exc).__name__}: {exc}")
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(i, *job), daemon=True)
               for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t, job in zip(threads, jobs):
        t.join(_send_timeout(job[2]) + 20)
    if errors or any(r is None for r in results):
        raise RuntimeError(f"{f.label}: a sending thread failed: "
                           + ("; ".join(errors) or "it overran its time bound"))
    return results


def _span(results: List[dict]) -> float:
    """Wall time from the first thread's start to the last one's end (_send_parallel)."""
    return max(g["t1"] for g in results) - min(g["t0"] for g in results)


def admit_socket(lab: Lab, f: Forwarder, frames, family: int) -> dict:
    """admit() with the socket generator: each flow sends two packets in a row, then, past
    the promotion age, one more, in batches of a 16th of the table's sets (the next
    batch's pairs going out meanwhile), then one packet from every flow. Returns pyxlb's
    counters of the admission."""
    dp = lab.datapaths[f.node]
    flows = frames.count
    sets = table_sets(lab, f, family) or flows
    batch = max(1, min(flows, sets // ADMIT_BATCH_PER_SETS))
    limited = f.node in lab.insert_limits
    if limited:
        dp.set_insert_limits(0)
    st0 = dp.stats()
    t0 = time.monotonic()
    pending = None
    for start in [*range(0, flows, batch), None]:
        sent = None
        if start is not None:
            count = min(batch, flows - start)
            _socket_send(lab, f, frames.part(start, count, 2), 2 * count)
            sent = (start, count, time.monotonic())
        if pending:
            time.sleep(max(0.0, pending[2] + PROMOTE_WAIT_S - time.monotonic()))
            _socket_send(lab, f, frames.part(*pending[:2]), pending[1])
        pending = sent
    time.sleep(PROMOTE_WAIT_S)
    _socket_send(lab, f, frames.cycle(), flows)
    if limited:
        set_limits(lab, f, "established")
    st = _delta(st0, dp.stats())
    return {"flows": flows, "batch": batch, "seconds": round(time.monotonic() - t0, 2),
            **{k: st.get(k, 0) for k in ("flow_hit", "flow_miss", "flow_insert_limited")}}


def ready_socket(lab: Lab, f: Forwarder, frames, family: int) -> None:
    """Bring node f to its N established flows of `family` (what both kinds of traffic
    are measured against), from this thread. conntrack, whenever it holds anything else
    (another family's flows, or the new flows of the last measurements): flushed, then
    two packets a flow. pyxlb's flow table, once a node and family: admit_socket, then one
    more pass of every flow (from the admission's state to the table's steady state under
    the cycle, as the live generator's warm-up does)."""
    flows = frames.count
    dp = lab.datapaths.get(f.node)
    if f.conntrack:
        if lab.ct_admitted.get(f.node) == (family, flows) and \
                lab.conntrack_count(f) == flows:
            return
        lab.conntrack_flush(f)
        t_adm = time.monotonic()
        _socket_send(lab, f, frames.part(0, flows, 2), 2 * flows)
        lab.ct_admitted[f.node] = (family, flows)
        key = (f"{f.node}@{flows}", family)
        times = lab.admitted.get(key, {}).get("times", 0) + 1
        lab.admitted[key] = {"flows": flows, "conntrack_entries": lab.conntrack_count(f),
                             "seconds": round(time.monotonic() - t_adm, 2), "times": times}
    elif dp and not f.stateless and (f.node, family) not in lab.admitted:
        lab.admitted[(f.node, family)] = admit_socket(lab, f, frames, family)
        _socket_send(lab, f, frames.cycle(), flows)


def _new_frames(lab: Lab, f: Forwarder, family: int, cpu: int, count: int):
    """A FrameSet of `count` flows this node has never seen, for the thread on `cpu` (new
    flows are numbered per node, family and CPU, as the generator program numbers them)."""
    import socket_gen
    key = (f.node, family, cpu & 3)
    first = lab.new_seq.get(key, SOCKET_NEW_FIRST)
    lab.new_seq[key] = first + count
    return socket_gen.FrameSet(socket_gen.build_new_frames(
        first, count, cpu & 3, family, mac_bytes(LB_IN_MAC), mac_bytes(GEN_MAC),
        CLIENTS if family == 4 else CLIENTS6, VIP if family == 4 else VIP6, PORT))


def measure_socket(lab: Lab, f: Forwarder, frames, family: int, traffic: str,
                   cpus: List[int], duration: float, rate_hint: Optional[float]) -> dict:
    """One measurement with the socket generator: the node brought to its N established
    flows (ready_socket), a warm-up, then the measured send: one sending thread a CPU of
    `cpus`, pinned there, all at once. Established: thread i cycles its share of the N
    flows (the i-th 1/len(cpus) of them) from where its last send stopped, at least one
    whole pass; new: a never-seen flow a packet. Taken between readings of the threads'
    CPU clocks, ksoftirqd's run time on `cpus` and the run-time statistics of the
    program on in0. Returns the figures and the checks that failed."""
    f = lab.node(f)
    flows = frames.count
    n_cpu = len(cpus)
    dp = lab.datapaths.get(f.node)
    prog = lab.xdp_progs.get(f.node) if not f.conntrack else None
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[-1]})
    try:
        if dp and not f.stateless:
            set_limits(lab, f, traffic)
        ready_socket(lab, f, frames, family)
    finally:
        os.sched_setaffinity(0, allowed)
    if traffic == "established":
        share = flows // n_cpu
        msgs = [frames.share(i, n_cpu) for i in range(n_cpu)]
        pos_key = [(f.node, family, n_cpu, i) for i in range(n_cpu)]
        # after new flows went through a flow table, every established flow once (those
        # pushed out of the back halves come back in), as the chain generator's warm-up
        warm = max(SOCKET_WARM, share if (f.node, family) in lab.new_since else 0)
        got = _send_parallel(lab, f, [(c, msgs[i], warm, lab.send_pos.get(pos_key[i], 0))
                                      for i, c in enumerate(cpus)])
        lab.new_since.discard((f.node, family))
        rate = rate_hint or sum(g["sent"] for g in got) / max(_span(got), 1e-3)
        # at least one whole pass over the flows: which flows of a set keep their place
        # depends on where in the pass they come, so only a whole pass shows the table's
        # hit share (a window over the first fifth of a million flows hit 87%, a whole
        # pass 91.5%, where the set rule says 92%)
        per = max(share, -(-int(min(SOCKET_MAX_PACKETS,
                                    max(SOCKET_MIN_PACKETS, rate * duration))) // n_cpu))
        jobs = [(c, msgs[i], per, got[i]["next"]) for i, c in enumerate(cpus)]
    else:
        warm_sets = [_new_frames(lab, f, family, c, SOCKET_WARM // 2) for c in cpus]
        got = _send_parallel(lab, f, [(c, warm_sets[i].cycle(), warm_sets[i].count, 0)
                                      for i, c in enumerate(cpus)])
        del warm_sets
        rate = rate_hint or sum(g["sent"] for g in got) / max(_span(got), 1e-3)
        per = -(-int(min(SOCKET_NEW_MAX, max(SOCKET_MIN_PACKETS, rate * duration))) // n_cpu)
        new_sets = [_new_frames(lab, f, family, c, per) for c in cpus]
        jobs = [(c, new_sets[i].cycle(), per, 0) for i, c in enumerate(cpus)]

    st0 = dp.stats() if dp else {}
    c0 = pyxlb_counts(dp, family) if dp else None
    s0 = lab.sink_counts(f)
    softirqd = list(ksoftirqd_pids(cpus).values())
    p0 = cpu_times()
    r0 = prog.run_stats() if prog else None
    k0 = run_time_s(softirqd)
    res = _send_parallel(lab, f, jobs)
    k1 = run_time_s(softirqd)
    r1 = prog.run_stats() if prog else None
    p1 = cpu_times()
    if traffic == "established":
        for i, g in enumerate(res):
            lab.send_pos[pos_key[i]] = g["next"]
    else:
        lab.new_since.add((f.node, family))
    time.sleep(0.02)
    sink = _delta(s0, lab.sink_counts(f))
    stats = _delta(st0, dp.stats()) if dp else {}
    counts = _delta(c0, pyxlb_counts(dp, family)) if dp else None
    ct_entries = lab.conntrack_count(f) if f.conntrack else None
    hz = os.sysconf("SC_CLK_TCK")
    stat = {name: sum(p1[c][i] - p0[c][i] for c in cpus) / hz for i, name in
            enumerate(("user", "nice", "system", "idle", "iowait", "irq", "softirq",
                       "steal"))}
    sent = sum(g["sent"] for g in res)
    refused = sum(g["refused"] for g in res)
    wall = _span(res)
    cpu_s = sum(g["cpu_s"] for g in res) + (k1 - k0)
    n = sink["packets"]
    runs_prog = r1[1] - r0[1] if prog else 0
    run = {
        "family": family, "flows": flows, "traffic": traffic, "generator": "socket",
        "cpus": cpus, "sent": sent, "refused": refused, "packets": n,
        "delivered": n / sent if sent else 0.0,
        "wall_s": round(wall, 4), "mpps_sent": sent / wall / 1e6, "mpps": n / wall / 1e6,
        "thread_cpu_s": [round(g["cpu_s"], 6) for g in res],
        "ksoftirqd_s": round(k1 - k0, 6), "cpu_s": round(cpu_s, 6),
        "cpu_share": cpu_s / (wall * n_cpu), "ns_total": cpu_s * 1e9 / sent if sent else None,
        # the in0 program's own time a run (its statistics: run_time_ns / run_cnt)
        "prog_ns": (r1[0] - r0[0]) / runs_prog if runs_prog else None,
        "prog_runs": runs_prog, "proc_stat_s": stat, "sink": sink,
    }
    if dp:
        run["xlb_stats"] = {k: v for k, v in stats.items() if v}
        run["xlb_counts"] = counts
        looked = sum(stats.get(k, 0) for k in ("flow_hit", "flow_miss", "flow_stale"))
        run["hit_share"] = stats.get("flow_hit", 0) / looked if looked else None
        if traffic == "established":
            run["hit_share_expected"] = expected_hit_share(lab, f, family)
        else:
            miss = stats.get("flow_miss", 0)
            run["recorded_share"] = (1 - stats.get("flow_insert_limited", 0) / miss
                                     if miss else None)
    if ct_entries is not None:
        run["conntrack_entries"] = ct_entries
    run["failed_checks"] = check_run(f, traffic, run)
    want = sum(j[2] for j in jobs)
    if sent + refused < want:
        run["failed_checks"].append(f"sent {sent} of {want} frames: the time bound")
    if run["delivered"] < SOCKET_DELIVERED:
        run["failed_checks"].append(f"{run['delivered']:.1%} of {sent} sent delivered")
    if f.conntrack and traffic == "established" and ct_entries < flows:
        # fewer: entries expired (their packets then open new ones: not established)
        run["failed_checks"].append(f"{ct_entries} conntrack entries for {flows} flows")
    if prog and runs_prog < sent:
        run["failed_checks"].append(f"in0's program counted {runs_prog} runs for {sent} "
                                    f"frames (run-time statistics off?)")
    return run


def summarise_socket(runs: Dict[tuple, List[dict]]) -> dict:
    """Rows keyed by forwarder, traffic, flows, cores, family: medians over the rounds of
    the CPU time a packet (ns_total), of the forwarder's cost (ns_cost: ns_total less the
    same round's drop baseline), of in0's program time a packet and of the delivered
    Mpps; the ratios of ns_cost to iptables' and to the ceiling's (pyxlb over them), and
    ns_cost beyond the ceiling's."""
    rows = []
    for (fkey, traffic, flows, cores, family), rs in runs.items():
        ok = [r for r in rs if not r["failed_checks"]]
        use = ok or rs
        base = runs.get(("drop", traffic, flows, cores, family), [])
        costs = []
        for r in use:
            b = [d for d in base if d["round"] == r["round"]]
            if fkey != "drop" and b:
                costs.append(r["ns_total"] - b[0]["ns_total"])
        total = [r["ns_total"] for r in use]
        progs = [r["prog_ns"] for r in use if r.get("prog_ns") is not None]
        f = BY_KEY[fkey]
        row = {"forwarder": fkey, "label": f.label, "traffic": traffic, "flows": flows,
               "cores": cores, "family": family,
               "ns_total": statistics.median(total), "ns_total_min": min(total),
               "ns_total_max": max(total),
               "ns_cost": statistics.median(costs) if costs else None,
               "ns_cost_min": min(costs) if costs else None,
               "ns_cost_max": max(costs) if costs else None,
               "prog_ns": statistics.median(progs) if progs else None,
               "mpps": statistics.median(r["mpps"] for r in use),
               "delivered": statistics.median(r["delivered"] for r in use),
               "cpu_share": statistics.median(r["cpu_share"] for r in use),
               "runs_ok": len(ok), "runs": len(rs),
               "failed_checks": sorted({c for r in rs for c in r["failed_checks"]})}
        if f.table:
            row["table"] = f.table
        hits = [r["hit_share"] for r in use if r.get("hit_share") is not None]
        if hits and traffic == "established":
            row["hit_share"] = statistics.median(hits)
        if use[0].get("hit_share_expected") is not None:
            row["hit_share_expected"] = use[0]["hit_share_expected"]
        rec = [r["recorded_share"] for r in use if r.get("recorded_share") is not None]
        if rec:
            row["recorded_share"] = statistics.median(rec)
        rows.append(row)
    by = {(r["forwarder"], r["traffic"], r["flows"], r["cores"], r["family"]): r
          for r in rows}
    for row in rows:
        case = (row["traffic"], row["flows"], row["cores"], row["family"])
        ipt = by.get(("iptables", *case))
        ceil = by.get(("ceiling", *case))
        own = row["ns_cost"]
        row["x_iptables"] = own / ipt["ns_cost"] if own and ipt and ipt["ns_cost"] else None
        row["x_ceiling"] = own / ceil["ns_cost"] if own and ceil and ceil["ns_cost"] \
            else None
        row["ns_over_ceiling"] = own - ceil["ns_cost"] \
            if own is not None and ceil and ceil["ns_cost"] is not None else None
        tun = by.get(("tunnel", *case)) if _over_tunnel(row) else None
        row["x_tunnel"] = own / tun["ns_cost"] if own and tun and tun["ns_cost"] else None
    rows.sort(key=lambda r: (r["flows"], r["family"], SOCKET_TRAFFIC.index(r["traffic"]),
                             r["cores"], ORDER.index(r["forwarder"])))
    return {"rows": rows}


def print_table_socket(summary: dict) -> None:
    head = (f"{'flows':>5} {'IP':>3} {'traffic':<11} {'cores':>5}  {'forwarder':<26} "
            f"{'ns/pkt':>7} {'cost ns':>7} {'(min-max)':>11} {'/ ipt':>6} {'/ ceil':>6} "
            f"{'/ tun':>6} {'ns>ceil':>7} {'prog ns':>7} {'Mpps':>5} {'deliv':>6} "
            f"{'hits':>6}")
    print(head)
    print("-" * len(head))
    last, flags = None, []
    for r in summary["rows"]:
        case = (r["flows"], r["family"], r["traffic"], r["cores"])
        if last and last != case:
            print()
        last = case
        cost = f"{r['ns_cost']:.0f}" if r["ns_cost"] is not None else "(base)"
        span = f"({r['ns_cost_min']:.0f}-{r['ns_cost_max']:.0f})" \
            if r["ns_cost"] is not None else ""
        xi = f"{r['x_iptables']:.2f}" if r["x_iptables"] else "-"
        xc = f"{r['x_ceiling']:.2f}" if r["x_ceiling"] else "-"
        xt = f"{r['x_tunnel']:.2f}" if r.get("x_tunnel") else "-"
        over = f"{r['ns_over_ceiling']:.0f}" if r["ns_over_ceiling"] is not None else "-"
        prog = f"{r['prog_ns']:.0f}" if r.get("prog_ns") is not None else "-"
        hits = f"{r['hit_share']:.1%}" if r.get("hit_share") is not None else "-"
        print(f"{_flows_text(r['flows']):>5} {'v' + str(r['family']):>3} "
              f"{SHORT[r['traffic']]:<11} {r['cores']:>5}  {r['label']:<26} "
              f"{r['ns_total']:7.0f} {cost:>7} {span:>11} {xi:>6} {xc:>6} {xt:>6} {over:>7} "
              f"{prog:>7} {r['mpps']:5.2f} {r['delivered']:6.1%} {hits:>6}")
        if r["failed_checks"]:
            flags.append(f"  CHECK FAILED, IPv{r['family']} {_flows_text(r['flows'])} flows "
                         f"{SHORT[r['traffic']]} {r['cores']} core(s) {r['label']} "
                         f"({r['runs'] - r['runs_ok']} of {r['runs']} runs): "
                         + "; ".join(r["failed_checks"]))
    for line in flags:
        print(line)
    print("\nns/pkt: CPU time a packet of the sending threads and ksoftirqd on the measured "
          "CPUs (generator,\n  veth, forwarder and sink: all run there); cost ns: ns/pkt "
          "less the same round's\n  'generator alone' (XDP drop on in0), medians over the "
          "rounds: the LB node's work and the\n  hop to the sink. / ipt, / ceil: cost over "
          "iptables DNAT's, over the bare redirect's.\n  / tun: pyxlb IPIP's cost over "
          "the tunnel floor's (the redirect plus one outer header).\n  prog ns: the XDP "
          "program on in0, "
          "its own time a packet (the kernel's run-time statistics).\n  Mpps: delivered at "
          "the sink per wall second (the generator's pace, not the forwarder's).")


def run_socket(args, prefix: str, families: Tuple[int, ...], flow_counts: Tuple[int, ...],
               duration: float) -> None:
    """--generator socket: build the lab, fill pyxlb's tables (chain generator), measure
    every node at each N, family, traffic and core count in interleaved rounds, print and
    write the results."""
    import socket_gen
    allowed = sorted(os.sched_getaffinity(0))
    core_sets = {1: [allowed[-1]]}
    if len(allowed) >= 2:
        core_sets[2] = allowed[:2]
    signal.signal(signal.SIGUSR1, _on_sigusr1)
    signal.signal(signal.SIGTERM, _on_sigterm)
    lab = Lab(prefix, objects=args.objects, chain=True, flows=flow_counts, socket_gen=True)
    t_start = time.monotonic()
    runs: Dict[tuple, List[dict]] = {}
    hints: Dict[tuple, float] = {}
    fill, ct_info = {}, {}
    stats_fd = None
    try:
        ct_nodes = sum(1 for f in lab.nodes if f.conntrack)
        # new flows stay in conntrack until the next measurement admits the N again: one
        # measurement's worth, and as much again to spare
        extra = 2 * SOCKET_NEW_MAX
        with conntrack_room(max(flow_counts), ct_nodes, extra) as ct_info:
            print(f"building the lab ({lab.prefix}-*: generator, sink, "
                  f"{len(lab.nodes)} LB nodes)...", flush=True)
            lab.up()
            print("filling pyxlb's flow tables (chain generator)...", flush=True)
            t_fill = time.monotonic()
            fill = fill_flow_tables(lab, core_sets, families)
            print(f"  ({time.monotonic() - t_fill:.0f} s)", flush=True)
            stats_fd = _bpf.enable_run_stats()
            print(f"measuring (socket generator, CPUs {core_sets}): {args.rounds} rounds, "
                  f"established and new flows, with established flows "
                  + ", ".join(f"{n:,}" for n in lab.flows), flush=True)
            for flows in lab.flows:
                nodes = sorted(lab.nodes_at(flows), key=lambda n: (n.kind != "drop",
                                                                    ORDER.index(n.key)))
                for family in families:
                    frames = socket_gen.FrameSet(socket_gen.build_frames(
                        flows, family, mac_bytes(LB_IN_MAC), mac_bytes(GEN_MAC),
                        CLIENTS if family == 4 else CLIENTS6, VIP if family == 4 else VIP6,
                        PORT))
                    for rnd in range(args.rounds):
                        for traffic in SOCKET_TRAFFIC:
                            for cores, cpus in core_sets.items():
                                for f in nodes:
                                    key = (f.key, traffic, flows, cores, family)
                                    run = measure_socket(lab, f, frames, family, traffic,
                                                         cpus, duration, hints.get(key))
                                    run["round"] = rnd
                                    hints[key] = run["mpps_sent"] * 1e6
                                    runs.setdefault(key, []).append(run)
                                    _print_socket_run(rnd, f, run, cores)
                    del frames
                for f in nodes:         # conntrack's entries of this N go
                    if f.conntrack:
                        lab.conntrack_flush(f)
                lab.ct_admitted.clear()
    finally:
        if stats_fd is not None:
            os.close(stats_fd)
        lab.down()
    elapsed = time.monotonic() - t_start
    for (node, family), a in lab.admitted.items():
        fill.setdefault(node, {}).setdefault("admission", {})[f"ipv{family}"] = a
    summary = summarise_socket(runs)
    info = machine_info()
    print(f"\n64-byte frames over IPv4, 84 over IPv6 (UDP and TCP alternately), socket "
          f"generator: a sending\nthread on each measured CPU (the forwarder and the sink "
          f"run there too), medians of {args.rounds} rounds of ~{duration:g} s\n")
    print_table_socket(summary)
    path = args.output or os.path.join(RESULTS_DIR, "lab_throughput_socket.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    notes = [
        "generator 'socket': AF_PACKET sockets on g-<fwd> (PACKET_QDISC_BYPASS, sendmmsg "
        "of precomputed frames: bench/socket_gen.py) really transmit, one sending thread "
        "pinned to each measured CPU; the kernel runs the veth's receiver, the forwarder "
        "and the sink in softirq on the sending CPU, in the sending thread's own time "
        "(each CPU sends into its own veth queue: XPS maps transmit queue i to CPU i)",
        "ns_total = (the sending threads' CPU clocks + ksoftirqd's run time on those CPUs) "
        "/ frames sent, over the measured send (this kernel has no IRQ time accounting: "
        "softirq work is charged to the task it interrupts, here the sender)",
        "ns_cost = ns_total - ns_total of the same round's 'drop' node (the generator "
        "alone: its frames dropped by XDP on in0 after the veth hop), same traffic and "
        "cores: what the LB node does with a packet, plus the hop out0 -> sink and the "
        "sink's count; medians over the rounds",
        "x_iptables, x_ceiling: ns_cost over iptables DNAT's, over the ceiling's (bare "
        "MAC rewrite + bpf_redirect); ns_over_ceiling = ns_cost - the ceiling's",
        "prog_ns: the in0 XDP program's own time a run (BPF_ENABLE_STATS on for the "
        "measurements: run_time_ns / run_cnt; every program run, the sink's included, "
        "then also reads the clock twice); none for the kernel DNAT nodes (their program "
        "only passes the frame up)",
        "mpps: delivered at the sink per wall second of the send: the generator's pace "
        "(under ~1 Mpps a CPU), not what the forwarder could do",
        "traffic: established = the N flows cycled in order (thread i of c: the i-th c-th "
        "of them), at least one whole pass a measurement; new = a flow never seen a "
        "packet (a TCP SYN or a UDP datagram, numbered as the generator program numbers "
        f"new flows), at most {SOCKET_NEW_MAX} a measurement, sent while the node holds "
        "its N established flows",
        "flows admitted as connections are: conntrack (flushed first): two packets a flow, "
        "again before any measurement that finds it holding anything but them (the last "
        "measurement's new flows, the other family's), so every measurement starts from "
        f"exactly N entries; its timeouts of unreplied UDP and unacknowledged TCP at "
        f"{CT_IDLE_TIMEOUT} s on the DNAT nodes so that the entries outlive the rounds "
        "(checked: as many entries as flows after each established measurement); pyxlb's "
        "flow table: admit_socket (pairs, then a third packet past the promotion age) and "
        "one more pass of every flow, once; then each measurement: a warm-up of "
        f"{SOCKET_WARM} packets a CPU (established after new flows: a whole pass), and the "
        "measured send (about duration_s)",
        "the veth hands an AF_PACKET skb to XDP by copying it into a page (its headroom "
        "is under XDP's 256 bytes): every node, the drop baseline included, pays that",
        "kernel DNAT forwarders: kube-proxy's layouts for IPv4 and IPv6 "
        "(iptables/ip6tables, nftables ip/ip6 tables), nf_conntrack_checksum=0 on their "
        f"node, no masquerade; nf_conntrack_max raised to {ct_info.get('nf_conntrack_max')}"
        f" and conntrack's hash (shared by all namespaces) to "
        f"{ct_info.get('nf_conntrack_buckets')} buckets for the run, a bucket for every 4 "
        "established entries of the DNAT nodes together (kube-proxy's quarter of its max "
        "for one node), both restored after",
    ]
    data = {
        "machine": info, "generator": "socket", "quick": args.quick, "duration_s": duration,
        "rounds": args.rounds, "families": list(families), "flows": list(lab.flows),
        "traffic": list(SOCKET_TRAFFIC), "cpus": {str(k): v for k, v in core_sets.items()},
        "frame_bytes": FRAME_LEN, "frame_bytes_ipv6": FRAME_LEN6,
        "pyxlb": os.path.dirname(os.path.abspath(pyxlb.__file__)),
        "conntrack": ct_info, "flow_tables": fill,
        "tools": {"iptables": tool_version(["iptables", "--version"]),
                  "nft": tool_version(["nft", "--version"])},
        "elapsed_s": round(elapsed, 1), "notes": notes, **summary,
        "runs": [{"forwarder": k[0], "traffic": k[1], "flows": k[2], "cores": k[3],
                  "family": k[4], "runs": v} for k, v in runs.items()],
    }
    with open(path, "w") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    print(f"\nresults: {path}\n({elapsed:.0f} s)")
    if any(r["failed_checks"] for r in summary["rows"]):
        sys.exit(1)


def _print_socket_run(rnd: int, f: Forwarder, run: dict, cores: int) -> None:
    flag = "" if not run["failed_checks"] else \
        "  CHECK FAILED: " + "; ".join(run["failed_checks"])
    hits = "" if run.get("hit_share") is None or run["traffic"] != "established" else \
        f"  hits {run['hit_share']:.2%}"
    prog = "" if run.get("prog_ns") is None else f"  prog {run['prog_ns']:.0f} ns"
    print(f"  round {rnd + 1} {_flows_text(run['flows']):>5} IPv{run['family']} "
          f"{SHORT[run['traffic']]:<11} {cores} core{'s' if cores > 1 else ' '} "
          f"{f.label:<26} {run['ns_total']:6.0f} ns/pkt{prog}  {run['mpps']:.2f} Mpps "
          f"({run['delivered']:.0%} of {run['sent']} delivered){hits}{flag}", flush=True)


# -- main ------------------------------------------------------------------------------------


def live_frames_allowed(prefix: str) -> bool:
    """Whether this kernel runs live-frames test runs (some answer EPERM even to root):
    one packet of the generator out of a loopback in a namespace of our own."""
    name = f"{prefix}-probe"
    obj = _bpf.BpfObject.open(object_path("bench_gen"))
    try:
        obj.load()
        prog = obj.program("gen_packet")
    finally:
        obj.close()
    pr_netns.create(name)
    try:
        with prog, netns.enter(name):
            ctx = struct.pack("=6I", 0, FRAME_LEN, 0, socket.if_nametoindex("lo"), 0, 0)
            try:
                prog.test_run(bytes(FRAME_LEN), repeat=1, ctx=ctx,
                              flags=_bpf.TEST_XDP_LIVE_FRAMES)
            except PermissionError:
                return False
            return True
    finally:
        pr_netns.remove(name)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="shorter measurements (about a minute in all)")
    parser.add_argument("--duration", type=float, help="seconds a measurement (default 2, "
                        "--quick 0.5; socket generator 1.5, and at least a pass over "
                        "the flows)")
    parser.add_argument("--rounds", type=int, help="measurements a case, of which the "
                        "median is reported (default 5, --quick 3; socket generator 3, "
                        "--quick 2)")
    parser.add_argument("--generator", choices=("auto", "live", "chain", "socket"),
                        default="auto",
                        help="live: live-frames test runs, really transmitted; chain: the "
                        "generator tail-calls the program on the LB node's in0, nothing "
                        "transmitted, XDP forwarders only; auto (default): live where the "
                        "kernel allows it, else chain; socket: AF_PACKET senders "
                        "(under 1 Mpps a CPU, really transmitted), established and new "
                        "flows on one CPU and two, every forwarder's CPU cost a packet "
                        "beside iptables, nftables and the ceiling (results: "
                        "lab_throughput_socket.json)")
    parser.add_argument("--flows", action="append", metavar="N[,N...]",
                        help="established flows in all, shared out among the cores: each N "
                        "measured in turn (pyxlb nodes of its own for each); repeatable or "
                        "a list (default: 1000,1000000; with --quick, 1000)")
    parser.add_argument("--families", default="4,6",
                        help="IP versions of the traffic: 4, 6 or 4,6 (default)")
    parser.add_argument("--prefix", help="namespace names' prefix (default ltp<pid>)")
    parser.add_argument("--objects", metavar="DIR",
                        help="load bench_gen.o, bench_sink.o, bench_ceiling.o from DIR "
                        "(default: pyxlb's own; to measure an older pyxlb with this "
                        "script's generator, run it with that pyxlb's python and this "
                        "tree's pyxlb/bpf)")
    parser.add_argument("--output", metavar="PATH", help="the results file (default "
                        "bench/results/lab_throughput.json); the chart goes beside it "
                        "(.png)")
    args = parser.parse_args()
    socket_run = args.generator == "socket"
    if args.rounds is None:
        args.rounds = (2 if args.quick else 3) if socket_run else (3 if args.quick else 5)
    if args.rounds < 1:
        sys.exit("lab_throughput: --rounds must be at least 1")
    duration = args.duration or (0.5 if args.quick else
                                 SOCKET_DURATION if socket_run else 2.0)
    if duration <= 0 or duration > 60:
        sys.exit("lab_throughput: --duration must be more than 0 and at most 60 seconds")
    try:
        families = tuple(sorted({int(x) for x in args.families.split(",")}))
    except ValueError:
        families = ()
    if not families or not set(families) <= set(FAMILIES):
        sys.exit(f"lab_throughput: --families must be 4, 6 or 4,6, not {args.families!r}")
    flow_counts = FULL_FLOWS if not args.flows and not args.quick else (FLOWS,)
    if args.flows:
        try:
            flow_counts = tuple(sorted({int(x.replace("_", "")) for arg in args.flows
                                        for x in arg.split(",") if x.strip()}))
        except ValueError:
            flow_counts = ()
        if not flow_counts or any(n < 2 or n > MAX_FLOWS or n % 2 for n in flow_counts):
            sys.exit(f"lab_throughput: --flows takes even numbers from 2 to {MAX_FLOWS}, "
                     f"not {', '.join(args.flows)!r}")
    if args.prefix is not None and not (args.prefix.replace("-", "").isalnum()
                                        and len(args.prefix) <= 8):
        sys.exit(f"lab_throughput: --prefix must be 1-8 letters, digits or '-', "
                 f"not {args.prefix!r}")
    if args.objects and not os.path.isfile(os.path.join(args.objects, "bench_gen.o")):
        sys.exit(f"lab_throughput: no bench_gen.o in {args.objects}")
    if os.geteuid() != 0:
        sys.exit("lab_throughput: needs root (namespaces, XDP, iptables)")
    for tool in ("iptables-restore", "ip6tables-restore", "nft", "ip"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            sys.exit(f"lab_throughput: {tool} not found (apt-get install iptables nftables "
                     f"iproute2; `make bench` does)")
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        sys.exit("lab_throughput: matplotlib missing: pip install -e '.[bench]' "
                 "(`make bench` does)")
    bpffs.ensure_mounted()
    prefix = args.prefix or f"ltp{os.getpid()}"
    if socket_run:
        run_socket(args, prefix, families, flow_counts, duration)
        return
    live = args.generator != "chain" and live_frames_allowed(prefix)
    if args.generator == "live" and not live:
        sys.exit("lab_throughput: this kernel refuses live frames (EPERM): use "
                 "--generator chain (see --help)")
    if args.generator == "auto" and not live:
        print("lab_throughput: this kernel refuses live frames (EPERM): the chain generator "
              "(nothing transmitted, XDP forwarders only; see --help)", file=sys.stderr)
    live_keys = {f.key for f in BY_KEY.values() if live or f.xdp}

    allowed = sorted(os.sched_getaffinity(0))
    core_sets = {1: [allowed[-1]]}
    if len(allowed) >= 2:
        core_sets[2] = allowed[:2]
    core_counts = sorted(core_sets)
    signal.signal(signal.SIGUSR1, _on_sigusr1)
    signal.signal(signal.SIGTERM, _on_sigterm)

    lab = Lab(prefix, objects=args.objects, chain=not live, flows=flow_counts)
    t_start = time.monotonic()
    runs: Dict[tuple, List[dict]] = {}
    hints: Dict[tuple, float] = {}
    fill = {}
    try:
        print(f"building the lab ({lab.prefix}-*: generator, sink, "
              f"{len(lab.nodes)} LB nodes)...", flush=True)
        lab.up()
        kinds = [t for t in TRAFFIC if t != "new_nolimit" or lab.insert_limits]
        # each N in turn: its established flows (admitted before they are measured), then
        # new flows through the nodes whose tables hold them; the kernel DNAT forwarders
        # only where conntrack has room for N established flows and the new ones
        cases = [(n, t, f, fam) for n in lab.flows for t in kinds for f in lab.nodes_at(n)
                 for fam in families
                 if f.key in live_keys
                 and (t != "new_nolimit" or f.node in lab.insert_limits)
                 and (not f.conntrack or n <= CT_MAX_FLOWS)]
        print(f"measuring ({'chain' if lab.chain else 'live-frames'} generator): "
              f"{args.rounds} rounds x {len(cases)} cases x {len(core_counts)} core counts, "
              f"{duration:g} s each; established flows: "
              + ", ".join(f"{n:,}" for n in lab.flows), flush=True)
        print("filling pyxlb's flow tables (steady state: new flows push old ones out)...",
              flush=True)
        t_fill = time.monotonic()
        fill = fill_flow_tables(lab, core_sets)
        print(f"  ({time.monotonic() - t_fill:.0f} s)", flush=True)
        for rnd in range(args.rounds):
            for cores in core_counts:
                # this thread (which reads the counters) keeps off a lone measured CPU
                rest = set(allowed) - set(core_sets[cores])
                os.sched_setaffinity(0, rest or set(allowed))
                for flows, traffic, f, family in cases:
                    key = (f.key, traffic, flows, cores, family)
                    run = measure(lab, f, traffic, core_sets[cores], duration,
                                  hints.get(key), family, flows)
                    hints[key] = run["mpps_wall"] * 1e6
                    runs.setdefault(key, []).append(run)
                    flag = "" if not run["failed_checks"] else \
                        "  CHECK FAILED: " + "; ".join(run["failed_checks"])
                    got = "" if run["delivered"] is None else \
                        f"  ({run['delivered']:.0%} of {run['sent']} delivered)"
                    rec = "" if run.get("recorded_share") is None else \
                        f"  recorded {run['recorded_share']:.0%}"
                    hits = "" if traffic != "established" or run.get("hit_share") is None \
                        else f"  hits {run['hit_share']:.2%}"
                    print(f"  round {rnd + 1}  {cores} core{'s' if cores > 1 else ' '}  "
                          f"{_flows_text(flows):>5} IPv{family} {SHORT[traffic]:<13} "
                          f"{f.label:<22} {run['mpps']:6.2f} Mpps{got}{hits}{rec}{flag}",
                          flush=True)
    finally:
        os.sched_setaffinity(0, set(allowed))
        lab.down()
    elapsed = time.monotonic() - t_start

    for (node, family), a in lab.admitted.items():
        fill.setdefault(node, {}).setdefault("admission", {})[f"ipv{family}"] = a
    summary = summarise(runs, core_counts)
    if lab.chain:
        # the targets are shares of a ceiling that transmits: not of one that does not
        summary["targets"] = []
    info = machine_info()
    print(f"\n64-byte frames over IPv4, 84 over IPv6 (UDP and TCP alternately), medians of "
          f"{args.rounds} runs of ~{duration:g} s; 1 core = CPU {core_sets[1][0]}"
          + (f", 2 cores = CPUs {core_sets[2]}" if 2 in core_sets else "")
          + ("; chain generator (nothing transmitted)" if lab.chain else "") + "\n")
    print_table(summary, chain=lab.chain)
    path = args.output or os.path.join(RESULTS_DIR, "lab_throughput.json")
    png = os.path.splitext(path)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    chart(summary, core_counts, png,
          f"{info['date']}, kernel {info['kernel']}, {info['cpus']} vCPUs (shared VM). "
          + ("Chain generator: generator + forwarder's program per second of kernel loop "
             "time, nothing transmitted. " if lab.chain else
             "Generator, forwarder and sink share each core. ")
          + f"Medians of {args.rounds} runs, whiskers min-max; hatched: IPv6. "
          f"Under pyxlb's bars: share of the bare XDP redirect", chain=lab.chain)
    notes = [
        "mpps = packets counted by native XDP at the sink / CPU time of the pipeline "
        "(generator threads' clocks + ksoftirqd of the CPUs used) x cores, between "
        "snapshots taken inside the generator calls; mpps_wall divides by wall time "
        "instead; cpu_share = CPU time / (window x cores): the machine is shared",
        "generator, forwarder and sink run on the same CPU(s): a veth runs its "
        "receiver's NAPI on the sending CPU; mpps_per_softirq_core divides by the "
        "softirq time of those CPUs (/proc/stat), where the forwarder and the sink run",
    ] if not lab.chain else [
        "generator 'chain' (this kernel refuses live frames): gen_chain under a plain "
        "BPF_PROG_TEST_RUN in the LB node's namespace (ctx: in0) tail-calls the program "
        "attached to in0; nothing is transmitted, so there is no sink and no kernel DNAT "
        "forwarder; mpps = sum over the generator threads of packets per second of their "
        "kernel loop time (BPF_PROG_TEST_RUN's duration, integer ns per packet); "
        "mpps_wall = packets / wall time of the calls (fixed costs included). Not "
        "comparable with live-frames figures",
    ]
    notes += [
        "ns_over_ceiling = (1/mpps - 1/mpps of the ceiling) x cores: CPU time per "
        "packet beyond the bare redirect's path, i.e. the forwarder's own work",
        "IPv4: 64-byte frames; IPv6: 84-byte frames (the same 30-byte TCP/UDP segment "
        "behind a 40-byte header); IPv6 goes through every forwarder (pyxlb IP6IP6 or "
        "L2; kube-proxy's ip6tables and nftables ip6 layouts)",
        "pyxlb's flow tables take twice their ways of new flows (IPv4 and IPv6, "
        "insertion limit off) before the first measurement: as on a node that has run a "
        "while, the back half of every set, where new flows go, is full, and every new "
        "flow pushes an older one out of its set (fill_flow_tables in the results)",
        "insertion limits: 'new' runs with pyxlb's default limits (new flows recorded a "
        "second per CPU: the table's ways / CPUs), what a node gets; 'new_nolimit' with "
        "none; each pyxlb row says its limits (insert_limits_per_cpu) and the share of "
        "its new flows recorded (recorded_share); a datapath without limits has no "
        "new_nolimit rows",
        "established flows are flows the forwarder already knows (pyxlb's flow table, a "
        "conntrack entry); no replies flow, so conntrack keeps them unreplied",
        "flows: N established flows in all, one set shared out among the generator "
        "threads (one core: all N; two: N/2 each), half TCP ACKs, half UDP; before every "
        "measurement of them each flow sends two packets in a row, then, 150 ms later "
        "(past pyxlb's promotion age), one more, as a real connection does: admitted to "
        "pyxlb's table and promoted to the front half of its set (admission in each run); "
        "the new-flow rows of an N run through pyxlb nodes whose tables hold those N "
        "flows (each N has pyxlb nodes of its own)",
        "tables: pyxlb's 'default' nodes have the default tables (rated for "
        "flow_tables[*].rated_flows established flows: 99.9% hits); where N is more, "
        "'rated' nodes (forwarders pyxlb_*_rated) have tables made for N (--max-flows N "
        "--max-flows6 N); hit_share: flow_hit / (flow_hit + flow_miss + flow_stale) of "
        "the measured calls, hit_share_expected: what the set rule gives for N flows over "
        "the table's sets (docs/datapath.md, 'Capacity')",
        "targets are judged at 1,000 flows through the default tables; at more flows "
        "pyxlb's flow-table figures are reported as they are (issue 21); pyxlb "
        "stateless's (issue 21's goal: 80% of the ceiling) at 1,000,000 flows",
        "pyxlb_stateless: pyxlb_ipip with its TCP VIPs stateless and its UDP VIPs "
        "without a flow table (flow_table false): no per-flow state on the node, no "
        "flow-table fill, no admission; one node serves every N (table 'stateless'; "
        "no hit_share: nothing is looked up; no insertion limits, no new_nolimit rows)",
    ]
    if live:
        notes += [
            "kernel DNAT forwarders: nf_conntrack_checksum=0 on their node (a NIC would "
            "have checked), no masquerade (client address kept, as DSR keeps it); "
            "iptables is Debian's default, the nf_tables backend",
            f"new flows through conntrack: at most {CT_NEW_BUDGET} a measurement (the table "
            "is global and full at 262144), flushed before and after",
        ]
    notes.append("the ceiling redirects to the interface towards the backends, as pyxlb "
                 "does here (its backends are behind another interface than the clients)")
    data = {
        "machine": info, "quick": args.quick, "duration_s": duration, "rounds": args.rounds,
        "generator": "chain" if lab.chain else "live",
        "families": list(families), "frame_bytes": FRAME_LEN, "frame_bytes_ipv6": FRAME_LEN6,
        "flows": list(lab.flows), "cpus": core_sets,
        "conntrack_new_flow_budget": CT_NEW_BUDGET,
        "pyxlb": os.path.dirname(os.path.abspath(pyxlb.__file__)),   # which build ran
        "insert_limits_default_per_cpu": {k: {"ipv4": v[0], "ipv6": v[1]}
                                          for k, v in lab.insert_limits.items()},
        "flow_tables": fill,
        "tools": {"iptables": tool_version(["iptables", "--version"]),
                  "nft": tool_version(["nft", "--version"])},
        "elapsed_s": round(elapsed, 1),
        "notes": notes,
        **summary,
        "runs": [{"forwarder": k[0], "traffic": k[1], "flows": k[2], "cores": k[3],
                  "family": k[4], "runs": v} for k, v in runs.items()],
    }
    with open(path, "w") as out:
        json.dump(data, out, indent=2)
        out.write("\n")
    print(f"\nresults: {path}\nchart:   {png}\n({elapsed:.0f} s)")
    if any(r["failed_checks"] for r in summary["rows"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
