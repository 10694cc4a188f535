"""Lab tests: real TCP from the client namespace through the XDP balancer to the backends.

One lab (seven namespaces, about 1.5 s to build) serves the whole session; each test puts
the router's VIP route back on lb1 and applies the state it needs. The lab's name prefix is
unique to this run, and the session's finalizer tears the lab down and then fails loudly
if any namespace or pin directory of that prefix is left.
"""

import contextlib
import os
from typing import Iterator
import subprocess

import pytest

from pyxlb import bpffs, netns
from pyxlb.lab import CLIENT, Lab

from .helpers import EPHEMERAL, Ports

PREFIX = f"t{os.getpid() % 100000}"


def leftovers(prefix: str):
    """Namespaces and bpffs pin directories named after `prefix` that exist now."""
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    names = [line.split()[0] for line in listed.splitlines()
             if line.startswith(f"{prefix}-")]
    pins = [os.path.join(bpffs.BPFFS_ROOT, d) for d in os.listdir(bpffs.BPFFS_ROOT)
            if d.startswith(f"{prefix}-")]
    return names + pins


@contextlib.contextmanager
def lab_up(prefix: str) -> Iterator[Lab]:
    """A lab of its own prefix, up; afterwards down, and a loud failure if anything of it
    is left."""
    # CI runs as root: a lab test that cannot run must fail, not skip
    assert os.geteuid() == 0, "the lab tests need root (namespaces, XDP, bpffs)"
    lab = Lab(prefix)
    try:
        lab.up()
        with netns.enter(lab.ns(CLIENT)):
            # requests from port 0 never take a port that a test binds explicitly
            with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
                f.write(f"{EPHEMERAL[0]} {EPHEMERAL[1]}")
        yield lab
    finally:
        lab.down()
        left = leftovers(prefix)
        assert not left, f"the lab tests left these behind: {', '.join(left)}"


@pytest.fixture(scope="session")
def lab_session():
    with lab_up(PREFIX) as lab:
        yield lab


@pytest.fixture(scope="session")
def ports():
    """Client source ports no other test of the session uses: ports.take(n)."""
    return Ports()


@pytest.fixture
def lab(lab_session):
    """The session's lab, with VIP traffic routed to lb1."""
    lab_session.route_via("lb1")
    return lab_session
