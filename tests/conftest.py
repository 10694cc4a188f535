"""Fixtures shared by every test directory."""

import contextlib
import itertools
import os
import re
import shutil
import subprocess
import threading
import uuid

import pytest

_ns_counter = itertools.count()

# test modules that use the previous release (tests/support/release.py)
RELEASE_USERS = ("test_upgrade.py", "test_k8s_upgrade.py", "test_release.py",
                 "test_health_upgrade.py")


def pytest_collection_modifyitems(session, config, items):
    """The previous release takes about a minute to build: when a test that needs it is
    collected, the build starts now, in the background, and overlaps the tests that run
    first (build_release waits for it, and builds it itself if it failed)."""
    if any(os.path.basename(str(item.fspath)) in RELEASE_USERS for item in items):
        threading.Thread(target=_build_release, name="release-build", daemon=True).start()


def _build_release():
    from tests.support.release import ReleaseError, build_release

    try:
        build_release()
    except ReleaseError:
        pass            # the tests that need it try again, and say why it failed


def _require_root():
    # CI runs as root; a privileged test that cannot run must fail loudly, not skip.
    assert os.geteuid() == 0, "this test needs root (BPF, namespaces): run it as root"


@contextlib.contextmanager
def _bpffs_dir():
    _require_root()
    from pyxlb import bpffs

    bpffs.ensure_mounted()
    # the process id in the name: the leak check below tells ours from another run's
    path = os.path.join(bpffs.BPFFS_ROOT, f"pyxlb-test-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    os.mkdir(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def bpffs_dir():
    """A fresh directory on bpffs for pins, removed with everything in it afterwards."""
    with _bpffs_dir() as path:
        yield path


@pytest.fixture(scope="module")
def module_bpffs_dir():
    """bpffs_dir, one for the whole module (for a fixture shared by its tests)."""
    with _bpffs_dir() as path:
        yield path


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@contextlib.contextmanager
def _netns():
    _require_root()
    name = f"xlbt-{os.getpid()}-{next(_ns_counter)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        _ip("-n", name, "link", "set", "veth0", "up")
        _ip("-n", name, "link", "set", "veth1", "up")
        yield name
    finally:
        _ip("netns", "del", name, check=False)


@pytest.fixture
def netns():
    """A uniquely named network namespace holding a veth pair (veth0 <-> veth1, both up),
    deleted afterwards even when the test fails."""
    with _netns() as name:
        yield name


@pytest.fixture(scope="module")
def module_netns():
    """netns, one for the whole module (for a fixture shared by its tests)."""
    with _netns() as name:
        yield name


@pytest.fixture(autouse=True, scope="session")
def nothing_left_on_bpffs():
    """A test that pins outside its own directory leaves something behind: fail loudly."""
    from pyxlb import bpffs

    root = bpffs.BPFFS_ROOT
    before = set(os.listdir(root)) if bpffs.is_bpffs(root) else set()
    yield
    after = set(os.listdir(root)) if bpffs.is_bpffs(root) else set()
    others = re.compile(r"pyxlb-test-(\d+)-")       # another test run's fixture directory
    left = sorted(name for name in after - before if name.startswith(("xlb", "pyxlb"))
                  and not (others.match(name) and others.match(name).group(1) != str(os.getpid())))
    assert not left, f"tests left pins in {root}: {left}"
