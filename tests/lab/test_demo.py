"""`pyxlb lab demo`, the README's main job, run as a user runs it: the installed command in
a subprocess, with a lab of its own (a prefix unique to this run) that it builds and tears
down. The demo checks the client address each backend saw itself; this test reads what it
printed and holds it to what each step claims."""

import os
import re
import subprocess
import sys
from pathlib import Path

from .conftest import leftovers

PYXLB = Path(sys.executable).with_name("pyxlb")
PREFIX = f"d{os.getpid() % 100000}"
BACKENDS = ("be1", "be2", "be3")


def test_the_demo_shows_what_it_claims_and_leaves_nothing():
    assert not leftovers(PREFIX)
    try:
        run = subprocess.run([str(PYXLB), "lab", "demo", "--prefix", PREFIX],
                             capture_output=True, text=True, timeout=120)
    finally:
        left = leftovers(PREFIX)
    assert run.returncode == 0, run.stdout + run.stderr
    assert not left, f"the demo left these behind: {left}"
    out = run.stdout
    steps = [int(n) for n in re.findall(r"^\[(\d)\] ", out, re.M)]
    assert steps == [1, 2, 3, 4, 5, 6], out

    # [3] where 300 connections went: every backend, near its third of the ring
    got = {b: int(n) for b, n in re.findall(r"^  (be\d) +(\d+) +[\d.]+% +33\.3%$", out, re.M)}
    assert set(got) == set(BACKENDS) and sum(got.values()) == 300, out
    assert all(60 <= n <= 140 for n in got.values()), got
    assert "saw the client's own address" in out

    # [4] the other LB node, which never saw them, sends every one to the same backend
    assert "300/300 connections reached the same backend as through lb1." in out

    # [5] without be3: exactly be3's connections moved, none of be1's or be2's
    row = re.search(r"^  without be3 +(\d+) +([\d.]+)% +([\d.]+)% +33\.3% +(\d+)$", out, re.M)
    assert row, out
    moved, _, on_be3, from_others = row.groups()
    assert int(moved) == got["be3"] and float(on_be3) == round(100 * got["be3"] / 300, 1)
    assert int(from_others) == 0

    # [6] counters: lb1 tunnelled every packet of its 300 connections, new flows 300
    lb1 = re.search(r"^  lb1 +(\d+) +(\d+) +(\d+) +(\d+) +(\d+) +\d+$", out, re.M)
    assert lb1, out
    packets, new_flows, tx, hits, rehashed = map(int, lb1.groups())
    assert new_flows == 300 and packets == tx and hits == packets - 300 and rehashed == 0
    assert out.rstrip().endswith("The lab is torn down.")
