"""scripts/: shellcheck passes on every script (the shell each one's first line names),
including its style checks."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh"))


def test_shellcheck_passes_on_every_script():
    assert {p.name for p in SCRIPTS} >= {"setup-system.sh", "build-image.sh",
                                         "containers-conf.sh"}
    done = subprocess.run(["shellcheck", "-x", "-S", "style",
                           *(str(p.relative_to(ROOT)) for p in SCRIPTS)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not done.stdout, done.stdout + done.stderr
