"""`pyxlb announce -f FILE` (no Kubernetes), L2 mode, on the lab's two LB nodes: the same file
on both, each naming itself. The rendezvous owner answers the router's ARP for the VIP and
serves the traffic; SIGTERM makes it say goodbye, and the other takes over at once."""

import signal
import subprocess
import sys
import time

import yaml

from pyxlb.announce import rendezvous
from pyxlb.lab import LBS, ROUTER, VIP4, node_addr

from .helpers import ask, state
from .test_l2 import (announced_by, flood_to_lbs, mac_of, request_via, router_entry, sh,
                      until)


def config(lab, node, tmp_path):
    vip = lab.vip(4)
    other = next(n for n in LBS if n != node)
    doc = {"announce": {"mode": "l2", "node": node, "interface": "eth0",
                        "l2": {"peers": {other: str(node_addr(other, 4))},
                               "interval": 0.1, "dead_after": 0.5}},
           "vips": [{"vip": str(vip.key), "mode": vip.mode,
                     "backends": [str(b.address) for b in vip.backends]}]}
    path = tmp_path / f"{node}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def start(lab, node, path):
    return subprocess.Popen([sys.executable, "-m", "pyxlb", "--netns", lab.ns(node),
                             "--pin-dir", lab.pin_dir(node), "announce", "-f", str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_announce_command_l2_owner_and_clean_handover(lab, tmp_path):
    plain = state(lab.vip(4))
    owner = rendezvous(VIP4, LBS)
    other = next(n for n in LBS if n != owner)
    mac = {lb: mac_of(lab, lb) for lb in LBS}
    procs = {}
    try:
        lab.apply(plain)
        flood_to_lbs(lab, False)
        sh("ip", "-n", lab.ns(ROUTER), "neigh", "flush", "to", str(VIP4), "dev", "br0")
        sh("ip", "-n", lab.ns(ROUTER), "route", "replace", f"{VIP4}/32", "dev", "br0")
        for lb in LBS:
            procs[lb] = start(lab, lb, config(lab, lb, tmp_path))
        until(lambda: announced_by(lab, owner, VIP4), 10, f"{owner} to announce")
        assert not announced_by(lab, other, VIP4)
        ask(lab, 4, timeout=2.0)
        assert router_entry(lab, VIP4)[0] == mac[owner]

        procs[owner].send_signal(signal.SIGTERM)
        assert procs[owner].wait(10) == 0, procs[owner].stderr.read()[-2000:]
        assert not announced_by(lab, owner, VIP4), "a stopped announcer withdraws"
        stopped = time.monotonic()
        until(lambda: request_via(lab, 4, VIP4, mac[other]), 10, f"traffic via {other}")
        # the goodbye hands over at once: well inside dead_after plus a heartbeat
        assert time.monotonic() - stopped < 5
        assert announced_by(lab, other, VIP4)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        flood_to_lbs(lab, True)
        lab.route_via("lb1")
        sh("ip", "-n", lab.ns(ROUTER), "neigh", "flush", "to", str(VIP4), "dev", "br0")
        lab.apply(plain)


def test_announce_command_refuses_a_file_without_the_section(lab, tmp_path):
    path = tmp_path / "plain.yaml"
    path.write_text("vips: []\n")
    proc = subprocess.run([sys.executable, "-m", "pyxlb", "--netns", lab.ns("lb1"),
                           "--pin-dir", lab.pin_dir("lb1"), "announce", "-f", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"pyxlb: error: {path}: no `announce` section (see " \
                                  f"docs/announce.md)"
