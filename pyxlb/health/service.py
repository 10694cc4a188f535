"""The health checker as a service of `pyxlb serve`: a thread running the Checker over a
pinned datapath, its verdicts applied, its status written for `pyxlb health`.

- **Targets** come from what the datapath holds (`Datapath.current_state()`): VIPs from a
  file, the CLI or anything else that applied them. Every second the service reads the
  apply epoch (one map lookup) and reads the state back only when it moved, so VIPs and
  backends added by hand while it runs are checked within a second or two.
- **Verdicts** go back through `Datapath.apply(state, verdicts="set")`: under the apply
  lock, the state the maps hold now with the changed `down` values, one apply for every
  change found in the same loop turn.
- **Status**: every STATUS_EVERY seconds (and at each change) the targets' details go to
  /run/pyxlb/health/<pin dir's name>.json, written atomically (a new file renamed over the
  old one), which `pyxlb health` reads. The file is removed when the service stops.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from typing import Callable, List, Optional

from ..datapath import Datapath
from .checker import COLUMNS, Change, Checker, changed_state

log = logging.getLogger("pyxlb.health")

RUN_DIR = "/run/pyxlb/health"
STATUS_EVERY = 2.0      # seconds between status file writes (a verdict change writes at once)
REFRESH_EVERY = 1.0     # seconds between looks at the apply epoch


def status_path(pin_dir: str, run_dir: Optional[str] = None) -> str:
    """Where the service of the datapath pinned at `pin_dir` writes its status."""
    run_dir = run_dir or os.environ.get("PYXLB_HEALTH_DIR") or RUN_DIR
    name = os.path.basename(os.path.normpath(os.path.abspath(pin_dir))) or "root"
    return os.path.join(run_dir, f"{name}.json")


def read_status(pin_dir: str, run_dir: Optional[str] = None) -> Optional[dict]:
    """The status a running service of `pin_dir` wrote, or None: no file, a file another
    pin dir's service wrote, or one left by a process that is gone."""
    try:
        with open(status_path(pin_dir, run_dir)) as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("pin_dir") != os.path.abspath(pin_dir):
        return None
    columns = doc.pop("columns", None)
    if columns is not None:         # rows, not a dict per check: a third of the size
        doc["checks"] = [dict(zip(columns, r)) for r in doc.pop("rows", ())]
    try:
        os.kill(int(doc.get("pid")), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return None
    except PermissionError:
        pass                    # alive, another user's
    return doc


def write_atomically(path: str, text: str) -> None:
    """`text` in `path`, whole or not at all: a reader sees the old file or the new one."""
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


class HealthService:
    """Checks the backends of the datapath pinned at `pin_dir` on a thread of its own.

    Construct it on the thread (in the network namespace) the checks should run from:
    the thread it starts is in the same namespace. `tunnel`: a Tunnel, or None (checks
    through the tunnel then fail, saying `tunnel_error`). `on_result(target, ok, seconds)`
    is called after each check (on the checker's thread)."""

    def __init__(self, pin_dir: str, *, tunnel=None, tunnel_error: str = "no tunnel",
                 status_file: Optional[str] = None,
                 on_result: Optional[Callable] = None, max_in_flight: Optional[int] = None):
        self.pin_dir = os.path.abspath(pin_dir)
        self.dp = Datapath.open(self.pin_dir)
        self.tunnel = tunnel
        self.status_file = status_file if status_file is not None else status_path(pin_dir)
        kw = {"max_in_flight": max_in_flight} if max_in_flight else {}
        self.checker = Checker(tunnel=tunnel, tunnel_error=tunnel_error,
                               on_change=self._apply, on_tick=self._tick,
                               tick=REFRESH_EVERY, on_result=on_result, **kw)
        self.started = time.time()
        self.applies = 0
        self._epoch = None
        self._written = 0.0
        self._refresh_now = False
        self._thread: Optional[threading.Thread] = None
        self._refresh()

    # -- on the checker's thread --------------------------------------------------------

    def _refresh(self) -> None:
        """Read the state back if another writer (or this one) applied since last time."""
        epoch = self.dp.tables.epoch.read()
        if epoch == self._epoch and not self._refresh_now:
            return
        self._refresh_now = False
        self._epoch = epoch
        added, removed = self.checker.update(self.dp.layout(refresh=True).state)
        if added or removed:
            log.info("health: %d checks (%d new, %d gone)", len(self.checker.targets),
                     added, removed)

    def _tick(self) -> None:
        self._refresh()
        if time.monotonic() - self._written >= STATUS_EVERY:
            self.write_status()

    def _apply(self, changes: List[Change]) -> None:
        with self.dp.editing():
            new = changed_state(self.dp.current_state(), changes)
            if new is not None:
                self.dp.apply(new, verdicts="set")
                self.applies += 1
        self.write_status()

    # -- from any thread ------------------------------------------------------------------

    def refresh(self) -> None:
        """Read the datapath's state again at the checker's next turn (after a reload)."""
        self._refresh_now = True
        self.checker.tick_now()

    def status(self) -> List[dict]:
        return self.checker.status()

    def write_status(self) -> None:
        if not self.status_file:
            return
        self._written = time.monotonic()
        doc = {"pid": os.getpid(), "pin_dir": self.pin_dir, "started": self.started,
               "updated": time.time(), "columns": COLUMNS, "rows": self.checker.rows()}
        try:
            write_atomically(self.status_file, json.dumps(doc, separators=(",", ":")))
        except OSError as exc:
            log.warning("health: cannot write %s: %s", self.status_file, exc)
            self.status_file = None     # said once

    def start(self) -> None:
        self.write_status()
        self._thread = threading.Thread(target=self.checker.run, name="pyxlb-health",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop checking, close the checker, the tunnel and the datapath; remove the
        status file. The verdicts stay in the datapath for the next start."""
        self.checker.stop()
        if self._thread is not None:
            self._thread.join(10)
        self.checker.close()
        try:
            if self.tunnel is not None:
                self.tunnel.close()
        finally:
            self.dp.close()
            if self.status_file:
                try:
                    os.unlink(self.status_file)
                except FileNotFoundError:
                    pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
