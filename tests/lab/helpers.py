"""What the lab tests share: the IPv4/IPv6 × IPIP/L2 parametrisation, client source ports,
traffic (one request per flow, uploads held open half-way), and what each node saw (the
backends' sockets, the client's TCP counters, the LB nodes' XDP counters)."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import pytest
from pyroute2 import NetNS

from pyxlb import config, netns
from pyxlb._layouts import STAT_NAMES
from pyxlb.datapath import DecapPath
from pyxlb.lab import BACKENDS, CLIENT, HTTP_PORT, VIP4, VIP6, Lab, node_addr
from pyxlb.state import DesiredState, Vip

# One scenario, four ways: every lab test that makes sense for both address
# families and both DSR modes takes (family, mode) from @DSR (ids "ipv4-ipip", ...).
CASES = ((4, "ipip"), (4, "l2"), (6, "ipip"), (6, "l2"))
DSR = pytest.mark.parametrize("family,mode", [pytest.param(family, mode, id=f"ipv{family}-{mode}")
                                              for family, mode in CASES])

# -- client source ports ----------------------------------------------------------------
#
# A flow is the client's 5-tuple, so a test that needs to send "the same flow" again binds
# an explicit source port. The LB nodes' flow tables remember every flow for the session,
# so no two tests may share a port (a remembered flow would not be balanced afresh). Ports:
#   10000-20799  fixed blocks of the distribution test (a reproducible sample, whatever
#                else runs), one block per (family, mode): FIXED_BLOCK ports each;
#   21000-32767  handed out in order by the `ports` fixture, never twice in a session;
#   40000-60999  the client's ephemeral range (set by conftest), for requests from port 0.
FIXED_FIRST, FIXED_BLOCK = 10000, 2700
PORTS_FIRST, PORTS_LAST = 21000, 32767
EPHEMERAL = (40000, 60999)


def fixed_ports(family: int, mode: str, offset: int, count: int) -> range:
    """Ports [offset, offset+count) of (family, mode)'s fixed block."""
    assert offset + count <= FIXED_BLOCK, "the fixed block of a case is too small"
    first = FIXED_FIRST + CASES.index((family, mode)) * FIXED_BLOCK + offset
    return range(first, first + count)


class Ports:
    """Hands out client source ports that no other test of the session uses."""

    def __init__(self):
        self._next = PORTS_FIRST

    def take(self, count: int) -> List[int]:
        first, self._next = self._next, self._next + count
        assert self._next - 1 <= PORTS_LAST, "the lab tests ran out of client source ports"
        return list(range(first, first + count))


# -- traffic ------------------------------------------------------------------------------

def client_addr(family: int) -> str:
    return str(node_addr(CLIENT, family))


def vip_addr(family: int) -> str:
    return str(VIP4 if family == 4 else VIP6)


def ask(lab: Lab, family: int, sport: int = 0, timeout: float = 5.0) -> Tuple[str, str]:
    """One GET / through the VIP: (backend name, client address the backend saw)."""
    name, seen, _ = lab.request(family, sport, timeout=timeout).decode().split()
    return name, seen


def answers(lab: Lab, family: int, sports: Iterable[int],
            budget: float = 30.0) -> List[Tuple[int, str]]:
    """One connection per entry of `sports` (a client source port, 0: any), in order:
    [(port, backend that answered)]. Every backend must have seen the client's own
    address. At most `budget` seconds in all."""
    deadline = time.monotonic() + budget
    out = []
    for sport in sports:
        assert time.monotonic() < deadline, f"{len(out)} connections took over {budget} s"
        name, seen = ask(lab, family, sport)
        assert seen == client_addr(family), \
            f"{name} saw {seen} (port {sport}), not the client's address {client_addr(family)}"
        out.append((sport, name))
    return out


def flows(lab: Lab, family: int, sports: Iterable[int], budget: float = 30.0) -> Dict[int, str]:
    """{client source port: backend that answered}, one connection per port."""
    return dict(answers(lab, family, sports, budget))


def weighted_vip(lab: Lab, family: int, mode: str, weights: Mapping[str, int]) -> Vip:
    """The lab VIP served by the backends named in `weights`, with those weights."""
    vip = lab.vip(family, mode=mode, backends=tuple(weights))
    return vip.replace(backends=tuple(lab.backend(name, family, weight=w)
                                      for name, w in weights.items()))


def state(*vips: Vip) -> DesiredState:
    return DesiredState(tuple(vips))


class HeldPost:
    """A POST /echo sent as headers and the first half of its body; the connection stays
    open until finish() sends the rest. The lab's HTTP server (pyxlb/lab/http.py) answers
    only once it has the whole body, with the name of the backend that read it."""

    SIZE = 4000

    def __init__(self, lab: Lab, family: int, sport: int, timeout: float = 5.0):
        self.sport = sport
        self.body = bytes(i % 251 for i in range(self.SIZE))
        self.sock = lab.client_socket(family)
        try:
            self.sock.settimeout(timeout)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind(("0.0.0.0" if family == 4 else "::", sport))
            self.sock.connect((vip_addr(family), HTTP_PORT))
            head = (f"POST /echo HTTP/1.0\r\nHost: vip\r\n"
                    f"Content-Length: {self.SIZE}\r\n\r\n").encode()
            self.sock.sendall(head + self.body[:self.SIZE // 2])
        except BaseException:
            self.sock.close()
            raise

    def finish(self) -> Tuple[str, int]:
        """Send the second half and read the reply: (backend name, bytes it received)."""
        self.sock.sendall(self.body[self.SIZE // 2:])
        data = read_to_end(self.sock)
        self.sock.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200"), f"port {self.sport}: reply {head[:60]!r}"
        name, got = payload.decode().split()
        return name, int(got)

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def held_posts(lab: Lab, family: int, sports: Sequence[int]) -> Iterator[List[HeldPost]]:
    """A HeldPost per port; all closed afterwards, whatever happens."""
    posts: List[HeldPost] = []
    try:
        for sport in sports:
            posts.append(HeldPost(lab, family, sport))
        yield posts
    finally:
        for p in posts:
            p.close()


def read_to_end(sock: socket.socket, limit: int = 64 << 20,
                deadline: Optional[float] = None) -> bytes:
    """Everything until the peer closes (at most about `limit` bytes); with a `deadline`
    (time.monotonic()), socket.timeout once it passed."""
    chunks, size = [], 0
    while size <= limit:
        if deadline is not None:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


# -- what the nodes saw -------------------------------------------------------------------

def accepted_by(lab: Lab, family: int, sports: Sequence[int], timeout: float = 2.0,
                backends: Sequence[str] = BACKENDS, port: int = HTTP_PORT) -> Dict[int, str]:
    """{client source port: backend holding an established connection from it}, read
    from the backends' own sockets (`ss` in each backend's namespace), not from the LB.
    `backends`: the nodes that serve the VIP (a KubeLab's are its nodes); `port`: the
    sockets' local port (behind a DNAT, the target port)."""
    want, found = set(sports), {}
    deadline = time.monotonic() + timeout
    while True:
        for be in backends:
            out = subprocess.run(["ss", "-N", lab.ns(be), "-Htn", "state", "established",
                                  f"( sport = :{port} )"],
                                 capture_output=True, text=True, check=True).stdout
            for line in out.splitlines():
                host, _, sport = line.split()[-1].rpartition(":")
                host = host.strip("[]").removeprefix("::ffff:")
                if host == client_addr(family) and int(sport) in want:
                    found[int(sport)] = be
        if len(found) == len(want) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert set(found) == want, f"no backend holds a connection from ports " \
                               f"{sorted(want - set(found))}"
    return found


def tcp_counters(lab: Lab, node: str) -> Dict[str, int]:
    """The TCP MIB of a node's namespace (/proc/net/snmp "Tcp:"; IPv4 and IPv6 together)."""
    with netns.enter(lab.ns(node)):
        with open("/proc/thread-self/net/snmp") as f:
            lines = f.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("Tcp:"):
            return dict(zip(names.split()[1:], map(int, values.split()[1:])))
    raise AssertionError("no Tcp: line in /proc/net/snmp")


# xlb_stats entries that are not the outcome of a packet but extra facts about one (a flow
# table lookup; an ICMP error steered, which is then also forwarded)
NOT_OUTCOMES = ("flow_hit", "flow_miss", "flow_stale", "icmp_steered", "flow_miss_midstream")


def lb_counters(lab: Lab, lb: str) -> Dict[str, int]:
    """An LB node's counters, flat: its global stats, plus vip_packets / vip_bytes /
    vip_new_flows summed over its VIPs, plus `seen`: the outcome counters summed, i.e.
    the frames its XDP program handled."""
    with lab.datapath(lb) as dp:
        out = dict(dp.stats())
        vips = dp.counters()
    for field in ("packets", "bytes", "new_flows"):
        out[f"vip_{field}"] = sum(v[field] for v in vips)
    out["seen"] = sum(v for k, v in out.items()
                      if k in STAT_NAMES and k not in NOT_OUTCOMES)
    return out


def delta(after: Mapping[str, int], before: Mapping[str, int]) -> Dict[str, int]:
    return {k: after[k] - before.get(k, 0) for k in after}


def decap_stats(lab: Lab, node: str) -> Dict[str, int]:
    """The global counters of backend `node`'s decapsulator."""
    with netns.enter(lab.ns(node)):
        with DecapPath.open(lab.pin_dir(node)) as dc:
            return dc.stats()


def chained(lab: Lab) -> Dict[str, int]:
    """{backend: packets its decapsulator passed on to their previous owner} (stateless
    mode's chaining, docs/datapath.md)."""
    return {be: decap_stats(lab, be)["chain_forwarded"] for be in BACKENDS}


def link_mtu(lab: Lab, node: str, ifname: str = "eth0") -> int:
    with NetNS(lab.ns(node)) as n:
        index = n.link_lookup(ifname=ifname)[0]
        return n.get_links(index)[0].get_attr("IFLA_MTU")


TCPI_OPT_TIMESTAMPS = 1
TCP_TIMESTAMP_OPTION_LEN = 12    # option, padded to 4 bytes


def tcp_info(sock: socket.socket) -> Dict[str, int]:
    """From struct tcp_info (linux/tcp.h): the MSS the socket sends with (TCP options
    taken off), whether timestamps were negotiated, segments sent but not yet
    acknowledged, the path MTU, and retransmissions over the connection's life."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    u32 = lambda offset: struct.unpack_from("I", raw, offset)[0]  # noqa: E731
    return {"timestamps": bool(raw[5] & TCPI_OPT_TIMESTAMPS), "snd_mss": u32(16),
            "unacked": u32(24), "pmtu": u32(60), "total_retrans": u32(100)}


def assert_shares(counts: Mapping[str, int], weights: Mapping[str, int],
                  tolerance: float = 0.15) -> None:
    """Each backend's share of the connections is within ±tolerance (relative) of its
    share of the weights."""
    total, wsum = sum(counts.values()), sum(weights.values())
    report = ", ".join(f"{b}: {counts.get(b, 0)} ({counts.get(b, 0) / total:.1%}, "
                       f"weight share {w / wsum:.1%})" for b, w in weights.items())
    assert set(counts) <= set(weights), f"connections reached other backends: {report}"
    for b, w in weights.items():
        expected = w / wsum
        got = counts.get(b, 0) / total
        assert abs(got - expected) <= tolerance * expected, \
            f"{b} got {got:.1%} of {total} connections, weight share {expected:.1%} " \
            f"±{tolerance:.0%}: {report}"


def spread(mapping: Mapping[int, str]) -> Counter:
    return Counter(mapping.values())


# -- the process that owns a datapath (restart test) -------------------------------------

OWNER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "owner.py")


class Owner:
    """tests/lab/owner.py run for one LB node: it adopts the node's pinned datapath,
    applies `state` (sent as YAML on its stdin), reports, then holds the datapath until
    killed. `report`: {"ready", "plan_empty", "changes"}."""

    def __init__(self, lab: Lab, lb: str, desired: DesiredState, timeout: float = 15.0):
        self.proc = subprocess.Popen(
            [sys.executable, OWNER_SCRIPT, "--netns", lab.ns(lb), "--pin-dir", lab.pin_dir(lb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.proc.stdin.write(config.dump(desired))
            self.proc.stdin.close()
            self.report = json.loads(self._line(timeout))
            self.ready_at = time.monotonic()
        except BaseException:
            self.kill()
            raise

    def _line(self, timeout: float) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=5)
            raise AssertionError(f"the owner process did not report within {timeout} s; "
                                 f"stderr: {self.proc.stderr.read()[-2000:]}")
        return line

    def kill(self) -> None:
        """SIGKILL: nothing is closed or cleaned up by the process itself."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(Exception):
                f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()
