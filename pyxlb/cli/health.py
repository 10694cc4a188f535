"""`pyxlb health`: the health checks of the datapath's backends and their verdicts, with
what a running `pyxlb serve` knows of each (registered in pyxlb/cli/root.py)."""

from __future__ import annotations

import sys
import time
from typing import List, Optional

import click

from pyxlb.cli.common import (JSON_OPTION, DecimalType, SecondsType, current_pin_dir,
                              echo_json, opened, table)

WATCH_INTERVAL = SecondsType(0.1, 86400.0)
DETAILS = ("since", "last_check", "last_result", "last_error", "last_seconds", "successes",
           "failures", "checks", "failed_checks", "transitions")


def snapshot() -> dict:
    """The checks as `--json` prints them: every checked (VIP, backend) of the datapath,
    its spec and verdict from the maps, and the details of serve's status file (None when
    no serve runs for this pin dir)."""
    from pyxlb.health.service import read_status
    with opened() as dp:
        state = dp.current_state()
    doc = read_status(current_pin_dir())
    details = {(c["vip"], c["backend"]): c for c in (doc or {}).get("checks", ())}
    checks = []
    for vip in state:
        for b in vip.backends:
            spec = vip.health_for(b)
            if spec is None:
                continue
            row = {"vip": str(vip.key), "backend": str(b.address), "type": spec.type,
                   "via": spec.via, "port": spec.port_for(vip.key),
                   "path": spec.path if spec.type == "http" else None,
                   "expect": spec.expect if spec.type == "http" else None,
                   "interval": spec.interval, "timeout": spec.timeout, "rise": spec.rise,
                   "fall": spec.fall, "on_fail": spec.on_fail,
                   "verdict": "down" if b.down else "up"}
            seen = details.get((row["vip"], row["backend"]))
            for k in DETAILS:
                row[k] = seen.get(k) if seen else None
            checks.append(row)
    serve = None
    if doc is not None:
        serve = {"pid": doc["pid"], "started": doc["started"], "updated": doc["updated"]}
    return {"time": time.time(), "serve": serve, "checks": checks}


def _age(now: float, then: Optional[float]) -> str:
    if then is None:
        return "-"
    s = max(0.0, now - then)
    if s < 60:
        return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"
    if s < 3600:
        return f"{s / 60:.0f}m"
    if s < 86400:
        return f"{s / 3600:.1f}h"
    return f"{s / 86400:.1f}d"


def _check(c: dict) -> str:
    text = f"{c['type']} :{c['port']}"
    if c["type"] == "http":
        text += f" {c['path']}"
    return f"{text} {c['via']}"


def _print(doc: dict) -> None:
    now = doc["time"]
    serve = doc["serve"]
    if serve is None:
        click.echo("pyxlb serve is not running for this datapath: verdicts as the "
                   "datapath holds them")
    else:
        click.echo(f"pyxlb serve (pid {serve['pid']}) checking for "
                   f"{_age(now, serve['started'])}, status {_age(now, serve['updated'])} old")
    if not doc["checks"]:
        click.echo("no health checks (give a VIP or backend a `health` spec: docs/config.md)")
        return
    rows: List[list] = []
    for c in doc["checks"]:
        row = [c["vip"], c["backend"], _check(c), c["verdict"]]
        if serve is not None:
            last = "-" if c["last_result"] is None else \
                f"{c['last_result']} {_age(now, c['last_check'])} ago"
            error = c["last_error"] if c["last_result"] == "fail" or c["verdict"] == "down" \
                else ""
            row += [_age(now, c["since"]), last, c["successes"], c["failures"], error or ""]
        rows.append(row)
    headers = ["VIP", "BACKEND", "CHECK", "VERDICT"]
    if serve is not None:
        headers += ["SINCE", "LAST", "OK", "FAIL", "LAST ERROR"]
    click.echo(table(headers, rows, right=(6, 7) if serve is not None else ()))
    down = sum(1 for c in doc["checks"] if c["verdict"] == "down")
    click.echo(f"{len(doc['checks'])} checked, {down} down")


@click.command("health")
@JSON_OPTION
@click.option("--watch", type=WATCH_INTERVAL, is_flag=False, flag_value=2.0, default=None,
              metavar="[SECONDS]",
              help="Refresh every SECONDS (default 2) until Ctrl-C or --count refreshes.")
@click.option("--count", type=DecimalType(low=1), metavar="N",
              help="With --watch: stop after N refreshes.")
def health(as_json: bool, watch: Optional[float], count: Optional[int]) -> None:
    """Show the health checks of the backends and their verdicts.

    One row per checked (VIP, backend): the check (type, port, path, tunnel or direct)
    and the verdict the datapath holds (up, or down: out of the ring). While `pyxlb serve`
    runs for this datapath, also since when the verdict holds, the last check's result
    and age, the passes (OK) and failures (FAIL) in a row, and the last error; serve
    writes them to /run/pyxlb/health/<pin dir's name>.json every 2 s and at each change.

    With --watch the table is redrawn every SECONDS; --json prints one document (one per
    line with --watch). Exit status 0 whatever the verdicts.

    \b
    Example:
      pyxlb health
      pyxlb health --watch 1
      pyxlb health --json | jq '.checks[] | select(.verdict == "down")'
    """
    if watch is None and count is not None:
        watch = 2.0
    if watch is None:
        doc = snapshot()
        echo_json(doc) if as_json else _print(doc)
        return
    tty = sys.stdout.isatty() and not as_json
    done = 0
    try:
        while count is None or done < count:
            started = time.monotonic()
            doc = snapshot()
            if as_json:
                echo_json(doc, compact=True)
            else:
                if tty:
                    click.clear()
                elif done:
                    click.echo("")
                click.echo(f"{time.strftime('%H:%M:%S', time.localtime(doc['time']))}, "
                           f"every {watch:g}s")
                _print(doc)
            done += 1
            if count is not None and done >= count:
                break
            time.sleep(max(0.0, started + watch - time.monotonic()))
    except KeyboardInterrupt:
        pass
