"""tests/support/release.py: the previous release, built from this clone's history, runs its
own code (not this tree's), is built once, and a commit the clone lacks is one clear error.

The first run builds the release (about a minute); later runs find it in build/releases/.
"""

import os
import re
import subprocess
import sys

import pytest

from tests.support.release import (CACHE, PREVIOUS_RELEASE, ROOT, ReleaseError,
                                   build_release)

# PYTHONVERBOSE names the file behind every module it imports
LOADED = re.compile(r"^# code object from '?([^']+?)'?$|"
                    r"^# extension module '[^']+' loaded from '([^']+)'$")


def test_the_clone_has_the_previous_release():
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e",
                            f"{PREVIOUS_RELEASE}^{{commit}}"], capture_output=True)
    assert found.returncode == 0, f"the clone lacks {PREVIOUS_RELEASE}: {found.stderr!r}"


def test_python_m_pyxlb_runs_the_release_code():
    release = build_release()
    assert release.commit == PREVIOUS_RELEASE
    assert release.path == CACHE / PREVIOUS_RELEASE
    # from the repository root: the worst case, where this tree's pyxlb/ is right there
    done = subprocess.run(release.argv("--version"), env=release.env({"PYTHONVERBOSE": "1"}),
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("pyxlb, version "), done.stdout
    loaded = [a or b for line in done.stderr.splitlines()
              for a, b in LOADED.findall(line)]
    ours = [p for p in loaded if f"{os.sep}pyxlb{os.sep}" in p and "site-packages" not in p]
    main = str(release.path / "pyxlb" / "__main__.py")
    assert main in ours, f"python -m pyxlb did not run {main}: {ours[:5]}"
    elsewhere = [p for p in ours if not p.startswith(str(release.path) + os.sep)]
    assert not elsewhere, f"modules of pyxlb came from outside the release: {elsewhere}"


def test_release_imports_its_own_extensions_and_objects():
    release = build_release()
    probe = ("import pyxlb, pyxlb._bpf, pyxlb.bpf\n"
             "print(pyxlb.__file__); print(pyxlb._bpf.__file__)\n"
             "print(pyxlb.bpf.object_path('balancer'))")
    done = subprocess.run([sys.executable, "-c", probe], env=release.env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    package, extension, balancer = done.stdout.split()
    assert package == str(release.path / "pyxlb" / "__init__.py")
    assert extension.startswith(str(release.path / "pyxlb" / "_bpf."))
    assert balancer == str(release.object_path("balancer"))
    assert release.object_path("balancer").stat().st_size > 0


def test_second_build_is_a_cache_hit():
    first = build_release()
    before = (first.path.stat().st_ino, first.object_path("balancer").stat().st_mtime_ns)
    second = build_release(PREVIOUS_RELEASE[:12])     # an abbreviation names the same release
    assert second == first
    after = (second.path.stat().st_ino, second.object_path("balancer").stat().st_mtime_ns)
    assert after == before, "the release was built again"
    assert not list(CACHE.glob("*.partial")), "a partial build was left beside the cache"


def test_unknown_commit_is_one_clear_line():
    unknown = "0123456789abcdef0123456789abcdef01234567"
    with pytest.raises(ReleaseError) as caught:
        build_release(unknown)
    message = str(caught.value)
    assert "\n" not in message
    assert unknown in message and "history" in message
    assert not (CACHE / unknown).exists()


def test_missing_object_is_named():
    release = build_release()
    with pytest.raises(ReleaseError, match="no BPF object nosuch.o"):
        release.object_path("nosuch")
