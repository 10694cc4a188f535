"""The image tests: the agent image built from ./Dockerfile (scripts/build-image.sh, what
`make image` runs; podman's layer cache makes a rebuild of unchanged sources quick) and the
lab's agents run from it, in podman containers set up as deploy/daemonset.yaml says.

`make test-image` runs this directory (`make test` runs it after the rest)."""

import os
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "localhost/pyxlb:dev"


@pytest.fixture(scope="session")
def image():
    """pyxlb:dev, built from this checkout (once a session)."""
    assert os.geteuid() == 0, "the image tests need root (podman, namespaces, XDP)"
    start = time.monotonic()
    res = subprocess.run([str(ROOT / "scripts" / "build-image.sh")], capture_output=True,
                         text=True, timeout=1800)
    assert res.returncode == 0, f"make image failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    print(f"image built in {time.monotonic() - start:.0f} s")
    return IMAGE
