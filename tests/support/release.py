"""The previous release of pyxlb, built from this clone's git history: what the upgrade tests
start from.

build_release() exports a commit's tree with `git archive` (no worktree is registered, so
nothing is left in .git) and builds it in place with the running interpreter (setup.py
build_ext --inplace: the BPF objects in pyxlb/bpf/ and the Cython modules). The result is
cached by full hash in build/releases/<hash>/ (build/ is git-ignored). An flock makes
concurrent callers build once; the build happens in a temporary sibling that is renamed into
place only when it is complete, so an interrupted build is never taken for a finished one.

A Release runs its own code: `release.argv(...)` with `release.env()` starts
`python -m pyxlb` with PYTHONPATH set to the release and PYTHONSAFEPATH set, so neither the
working directory nor the venv's editable install of this tree can shadow it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional

# The commit on main before issue 19's work, by hash: a tag may not travel with a clone.
PREVIOUS_RELEASE = "de6790d021375926631d42a6e06dc6709c46f287"

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "releases"
BUILD_TIMEOUT = 900.0       # a cold build takes about a minute here; the lock waits as long
PARTIAL = ".partial"


class ReleaseError(Exception):
    """A release that cannot be had: a commit missing from the clone, or a failed build."""


@dataclass(frozen=True)
class Release:
    """A built release: its full commit hash and the directory holding its tree."""

    commit: str
    path: Path

    def env(self, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
        """This process's environment, with imports of `pyxlb` resolving to the release."""
        env = dict(os.environ)
        env["PYTHONPATH"] = str(self.path)
        env["PYTHONSAFEPATH"] = "1"      # `-m` and `-c` do not put the cwd first on sys.path
        env.update(extra or {})
        return env

    def argv(self, *args: str) -> List[str]:
        """`python -m pyxlb ARGS` with this interpreter (run it with env())."""
        return [sys.executable, "-m", "pyxlb", *args]

    def object_path(self, name: str) -> Path:
        """The release's compiled BPF object pyxlb/bpf/<name>.o."""
        path = self.path / "pyxlb" / "bpf" / f"{name}.o"
        if not path.is_file():
            raise ReleaseError(f"release {self.commit[:12]} has no BPF object {name}.o "
                               f"({path})")
        return path


def resolve(commit: str) -> str:
    """The full hash of `commit`; a one-line ReleaseError if the clone does not have it."""
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                           capture_output=True)
    if found.returncode != 0:
        raise ReleaseError(f"commit {commit} is not in the clone at {ROOT}: the upgrade tests "
                           f"need that history (clone without --depth, or git fetch --unshallow)")
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
                          capture_output=True, text=True, check=True).stdout.strip()


def build_release(commit: str = PREVIOUS_RELEASE) -> Release:
    """The release of `commit`, built once and cached in build/releases/<full hash>/."""
    full = resolve(commit)
    final = CACHE / full
    if not final.is_dir():
        CACHE.mkdir(parents=True, exist_ok=True)
        with _locked(CACHE / f"{full}.lock", BUILD_TIMEOUT):
            if not final.is_dir():          # another process may have built it meanwhile
                _build(full, final)
    return Release(full, final)


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """An exclusive flock on `path`, waited for at most `timeout` seconds."""
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ReleaseError(f"{path} stayed locked for {timeout:.0f} s: another "
                                       f"build of that release is stuck") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(full: str, final: Path) -> None:
    """Export `full`'s tree into a temporary sibling of `final`, build it, rename it."""
    work = final.with_name(full + PARTIAL)
    shutil.rmtree(work, ignore_errors=True)      # an interrupted build's: we hold the lock
    work.mkdir()
    try:
        _export(full, work)
        _run([sys.executable, "setup.py", "build_ext", "--inplace"], work, full)
        missing = [p for p in ("pyxlb/bpf/balancer.o", "pyxlb/bpf/decap.o")
                   if not (work / p).is_file()]
        if missing or not list((work / "pyxlb").glob("_bpf*.so")):
            raise ReleaseError(f"the build of {full[:12]} finished without "
                               f"{', '.join(missing) or 'pyxlb/_bpf*.so'}")
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _export(full: str, dest: Path) -> None:
    """`git archive <full> | tar -x -C dest`."""
    archive = subprocess.Popen(["git", "-C", str(ROOT), "archive", "--format=tar", full],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        tar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout,
                             capture_output=True, text=True, timeout=120)
    finally:
        archive.stdout.close()
        err = archive.communicate(timeout=120)[1]
    if archive.returncode or tar.returncode:
        lines = (err.decode(errors="replace") + tar.stderr).strip().splitlines()
        raise ReleaseError(f"exporting {full[:12]} with git archive failed: "
                           f"{lines[-1] if lines else 'no message'}")


def _run(argv: List[str], cwd: Path, full: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ReleaseError(f"building {full[:12]} took over {BUILD_TIMEOUT:.0f} s") from None
    if done.returncode != 0:
        tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
        raise ReleaseError(f"building {full[:12]} failed ({' '.join(argv[1:])}): {tail}")
