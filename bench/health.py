"""Health checks: the CPU `pyxlb serve` spends checking 1,000 backends every second.

Run as root: .venv/bin/python bench/health.py [--backends N] [--seconds S] [--only CASE]
Prints a table and writes bench/results/health.json.

Two namespaces of its own, `<prefix>-lb` and `<prefix>-be`, joined by a veth pair:

- lb runs the balancer (encap source 10.88.3.0/24) and `pyxlb serve` (a real process,
  no -f: it checks what the datapath holds);
- be runs the decapsulator, holds N backend addresses (10.89.x.y/32) and the VIP
  (10.90.0.10) on its loopback, and one server process accepting on every address:
  port 80 accepts and closes (tcp checks), port 8080 answers "HTTP/1.0 200 OK" (http).

Each case applies one VIP with the N backends and a health spec (interval 1 s: N checks
a second), starts serve, lets it run WARMUP seconds (every backend checked once), then
reads serve's CPU time (utime + stime of /proc/PID/stat) over S seconds: CPU % of one
core = CPU seconds / wall seconds. The checks counted in that window come from serve's
status file. Cases: tcp and http, each direct (to the backend's address) and through the
tunnel (to the VIP, encapsulated by tc on lb's eth0, decapsulated by XDP on be's eth0).

Beside them, in the same run, the baseline: a bare loop in one Python process that makes
the same N connections a second (blocking connect, close with RST, nothing else) — the
cost of the TCP connections themselves, which no checker can avoid. A veth delivers in
the sender's context, so the server side's SYN handling is also counted in the sender's
system time (on a real network it is another host's): system time of both is reported.

Each case runs twice: as is, and "steered": serve (and the baseline loop) pinned to CPU
0 and the receive processing of both veth ends sent to CPU 1 by RPS, so that the
backend's half of each handshake and the handling of the answers run in softirq on the
other core, as they do when packets come from a NIC (the backend is then another host).
Steered, the figure is the checker's own: its Python, its syscalls, the sending of its
packets.

The machine has 2 cores shared with other work: the load average is recorded with each
case, and figures move with it.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import machine_info, write_results  # noqa: E402
from pyxlb import bpffs, netlink, netns  # noqa: E402
from pyxlb import node as node_mod  # noqa: E402
from pyxlb.datapath import Datapath  # noqa: E402
from pyxlb.health.service import read_status  # noqa: E402
from pyxlb.state import Backend, DesiredState, HealthSpec, Vip, VipKey  # noqa: E402

PREFIX = "hcb"
LB_ADDR, BE_ADDR = "10.88.0.1", "10.88.0.2"
ENCAP = "10.88.3.0/24"
VIP = "10.90.0.10"
TCP_PORT, HTTP_PORT = 80, 8080
WARMUP = 4.0
CASES = (("tcp", "direct"), ("tcp", "tunnel"), ("http", "direct"), ("http", "tunnel"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

SERVER = r"""
import selectors, socket, sys, time
sel = selectors.DefaultSelector()
for port, http in ((%d, False), (%d, True)):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(4096); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, ("listen", http))
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    for key, _ in sel.select(0.5):
        kind, http = key.data
        if kind == "listen":
            for _ in range(64):
                try:
                    c, _a = key.fileobj.accept()
                except OSError:
                    break
                if http:
                    c.setblocking(False); sel.register(c, selectors.EVENT_READ, ("conn", 1))
                else:
                    c.close()
        else:
            c = key.fileobj
            try:
                if c.recv(4096):
                    c.send(b"HTTP/1.0 200 OK\r\n\r\n")
            except OSError:
                pass
            sel.unregister(c); c.close()
""" % (TCP_PORT, HTTP_PORT)


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def backend_addr(i: int) -> str:
    return f"10.89.{i // 250}.{i % 250 + 1}"


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_seconds(pid: int):
    """(user, system) CPU seconds of a process and its threads."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


class Bench:
    def __init__(self, prefix: str, n: int):
        self.prefix, self.n = prefix, n
        self.lb, self.be = f"{prefix}-lb", f"{prefix}-be"
        self.pin_lb = os.path.join(bpffs.BPFFS_ROOT, f"{prefix}-lb")
        self.pin_be = os.path.join(bpffs.BPFFS_ROOT, f"{prefix}-be")
        self.server = None

    def preexec(self, ns: str):
        path = netns.path_of(ns)

        def enter():
            fd = os.open(path, os.O_RDONLY)
            netns.setns(fd)
            os.close(fd)
        return enter

    def up(self) -> None:
        bpffs.ensure_mounted()
        for ns in (self.lb, self.be):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.lb, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
           "netns", self.be)
        for ns, addr in ((self.lb, LB_ADDR), (self.be, BE_ADDR)):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            with netns.enter(ns):
                netlink.tx_checksum_off("eth0")
        sh("ip", "-n", self.lb, "route", "add", "10.89.0.0/16", "via", BE_ADDR)
        batch = "".join(f"address add {backend_addr(i)}/32 dev lo\n" for i in range(self.n))
        batch += f"address add {VIP}/32 dev lo\n"
        with tempfile.NamedTemporaryFile("w", suffix=".batch") as f:
            f.write(batch)
            f.flush()
            sh("ip", "-n", self.be, "-batch", f.name)
        with netns.enter(self.be):
            for k in ("all", "default", "lo", "eth0"):
                with open(f"/proc/sys/net/ipv4/conf/{k}/rp_filter", "w") as f:
                    f.write("0")
            with open("/proc/sys/net/core/somaxconn", "w") as f:
                f.write("4096")
            node_mod.bring_up_decap(self.pin_be, ("eth0",), (ipaddress.ip_address(VIP),),
                                    [ENCAP]).dp.close()
        with netns.enter(self.lb):
            with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
                f.write("20000 60999")
            node_mod.bring_up(self.pin_lb, node_mod.NodeSettings(
                interfaces=("eth0",), encap_sources={4: ENCAP})).dp.close()
        self.server = subprocess.Popen([sys.executable, "-c", SERVER, "900"],
                                       preexec_fn=self.preexec(self.be),
                                       stdin=subprocess.DEVNULL)
        time.sleep(0.5)

    def down(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        for ns, pin in ((self.lb, self.pin_lb), (self.be, self.pin_be)):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            subprocess.run(["rm", "-rf", pin], capture_output=True)

    def apply(self, typ: str, via: str) -> None:
        """One VIP with every backend, checked as the case says, every verdict up. The VIP's
        port is the check's (a check through the tunnel goes to the VIP's port)."""
        spec = HealthSpec(type=typ, via=via, interval=1.0, timeout=1.0, rise=2, fall=3,
                          path="/health")
        port = TCP_PORT if typ == "tcp" else HTTP_PORT
        vip = Vip(VipKey(ipaddress.ip_address(VIP), port, "tcp"),
                  backends=tuple(Backend(backend_addr(i)) for i in range(self.n)),
                  health=spec)
        with netns.enter(self.lb):
            with Datapath.open(self.pin_lb) as dp:
                with dp.editing():
                    state = DesiredState((vip,))
                    dp.apply(state.with_verdicts({(vip.key, b.address): False
                                                  for b in vip.backends}), verdicts="set")

    def steer(self, on: bool) -> None:
        """RPS of both veth ends' receive queue to CPU 1 (on), or none (off)."""
        mask = "2" if on else "0"
        for ns in (self.lb, self.be):
            sh("ip", "netns", "exec", ns, "sh", "-c",
               f"echo {mask} > /sys/class/net/eth0/queues/rx-0/rps_cpus")

    def run_case(self, typ: str, via: str, seconds: float, steered: bool = False) -> dict:
        self.apply(typ, via)
        self.steer(steered)
        pin = (lambda: os.sched_setaffinity(0, {0})) if steered else None
        proc = subprocess.Popen([sys.executable, "-m", "pyxlb", "--netns", self.lb,
                                 "--pin-dir", self.pin_lb, "serve", "--log-level", "error"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, preexec_fn=pin)
        try:
            time.sleep(WARMUP)
            assert proc.poll() is None, proc.stderr.read()
            loadavg = load()
            before, c0, t0 = cpu_seconds(proc.pid), self.checks(), time.monotonic()
            time.sleep(seconds)
            after, c1, t1 = cpu_seconds(proc.pid), self.checks(), time.monotonic()
            doc = read_status(self.pin_lb)
        finally:
            proc.terminate()
            proc.wait(15)
        wall = t1 - t0
        user, system = after[0] - before[0], after[1] - before[1]
        rows = doc["checks"]
        rate = (c1[0] - c0[0]) / max(1e-9, c1[2] - c0[2])
        return {"case": f"{typ} {via}" + (" steered" if steered else ""),
                "backends": self.n, "seconds": round(wall, 2),
                "checks": c1[0] - c0[0], "failed": c1[1] - c0[1],
                "checks_per_s": round(rate, 1),
                "up": sum(1 for r in rows if r["verdict"] == "up"),
                "cpu_pct": round(100 * (user + system) / wall, 2),
                "user_pct": round(100 * user / wall, 2),
                "system_pct": round(100 * system / wall, 2),
                "us_per_check": round(1e6 * (user + system) / max(1.0, rate * wall), 1),
                "loadavg": loadavg}

    def checks(self):
        """(checks, failed checks, when) as serve's status file says (written every 2 s)."""
        doc = read_status(self.pin_lb)
        rows = doc["checks"] if doc else []
        return (sum(r["checks"] for r in rows), sum(r["failed_checks"] for r in rows),
                doc["updated"] if doc else time.time())

    def baseline(self, seconds: float, steered: bool = False) -> dict:
        """N bare connections a second from one Python loop in lb, direct, RST on close."""
        linger = struct.pack("ii", 1, 0)
        addrs = [backend_addr(i) for i in range(self.n)]
        self.steer(steered)
        affinity = os.sched_getaffinity(0)
        if steered:
            os.sched_setaffinity(0, {0})
        loadavg = load()
        with netns.enter(self.lb):
            r0, t0 = os.times(), time.monotonic()
            done = failed = 0
            end = t0 + seconds
            while time.monotonic() < end:
                slot = time.monotonic()
                for a in addrs:
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    try:
                        s.connect((a, TCP_PORT))
                    except OSError:
                        failed += 1
                    s.close()
                    done += 1
                rest = slot + 1.0 - time.monotonic()
                if rest > 0:
                    time.sleep(rest)
            r1, t1 = os.times(), time.monotonic()
        os.sched_setaffinity(0, affinity)
        wall = t1 - t0
        user, system = r1.user - r0.user, r1.system - r0.system
        return {"case": "baseline: bare connects" + (" steered" if steered else ""),
                "backends": self.n,
                "seconds": round(wall, 2), "checks": done, "failed": failed,
                "checks_per_s": round(done / wall, 1), "up": None,
                "cpu_pct": round(100 * (user + system) / wall, 2),
                "user_pct": round(100 * user / wall, 2),
                "system_pct": round(100 * system / wall, 2),
                "us_per_check": round(1e6 * (user + system) / max(1, done), 1),
                "loadavg": loadavg}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--only", choices=[f"{t}-{v}" for t, v in CASES])
    ap.add_argument("--prefix", default=PREFIX)
    ap.add_argument("--no-steer", action="store_true", help="skip the steered runs")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/health.py needs root (namespaces, XDP, bpffs)")
    if (os.cpu_count() or 1) < 2:
        args.no_steer = True
    bench = Bench(args.prefix, args.backends)
    rows = []
    try:
        bench.up()
        for steered in (False, True) if not args.no_steer else (False,):
            rows.append(bench.baseline(args.seconds, steered))
            for typ, via in CASES:
                if args.only and args.only != f"{typ}-{via}":
                    continue
                rows.append(bench.run_case(typ, via, args.seconds, steered))
    finally:
        bench.down()
    head = ("case", "checks/s", "failed", "up", "CPU %", "user %", "sys %", "µs/check",
            "load avg")
    out = [head] + [(r["case"], r["checks_per_s"], r["failed"],
                     "-" if r["up"] is None else r["up"], r["cpu_pct"], r["user_pct"],
                     r["system_pct"], r["us_per_check"], r["loadavg"]) for r in rows]
    widths = [max(len(str(r[i])) for r in out) for i in range(len(head))]
    for r in out:
        print("  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                        for i, (c, w) in enumerate(zip(r, widths))))
    target = [r for r in rows if not r["case"].startswith("baseline")]
    print(f"target: <= 5% of one core for {args.backends} checks/s; "
          f"met by {sum(1 for r in target if r['cpu_pct'] <= 5)} of {len(target)} cases")
    path = write_results("health", {"machine": machine_info(), "backends": args.backends,
                                    "interval_s": 1.0, "seconds": args.seconds,
                                    "warmup_s": WARMUP, "rows": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
