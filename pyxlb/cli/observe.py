"""`pyxlb stats` and `pyxlb metrics`: the datapath's counters, as tables, JSON or
Prometheus metrics."""

from __future__ import annotations

import sys
import time
from typing import Optional

import click

from pyxlb.cli.common import (JSON_OPTION, LISTEN, DecimalType, Fail, SecondsType, echo_json,
                              human_bytes, human_rate, opened, table)

STATS_INTERVAL = SecondsType(0.05, 86400.0)     # a refresh at most a day apart

# -- stats -----------------------------------------------------------------------------

_COUNTERS = ("packets", "bytes", "new_flows")


def _snapshot() -> dict:
    """Counters now. Each refresh opens the datapath afresh, so VIPs changed by another
    process since the last one are seen."""
    with opened() as dp:
        return {"time": time.time(), "vips": dp.counters(), "outcomes": dp.stats(),
                "flows": dp.flow_count()}


def _rates(prev: Optional[dict], cur: dict) -> dict:
    """`cur` with per-second rates against `prev` (None: no rates) on every VIP, backend
    and outcome. A counter that went down (its id was handed out again) counts from
    zero."""
    dt = cur["time"] - prev["time"] if prev else 0

    def rate(old: Optional[dict], new: dict, names) -> Optional[dict]:
        if not prev or dt <= 0:
            return None
        old = old or {}
        return {n: (new[n] - old.get(n, 0) if new[n] >= old.get(n, 0) else new[n]) / dt
                for n in names}

    old_vips = {v["vip"]: v for v in prev["vips"]} if prev else {}
    vips = []
    for v in cur["vips"]:
        ov = old_vips.get(v["vip"])
        old_b = {b["address"]: b for b in ov["backends"]} if ov else {}
        backends = [{**b, "rates": rate(old_b.get(b["address"]), b, _COUNTERS)}
                    for b in v["backends"]]
        vips.append({**v, "rates": rate(ov, v, _COUNTERS), "backends": backends})
    return {"time": cur["time"], "interval": dt if prev else None, "vips": vips,
            "outcomes": cur["outcomes"],
            "outcome_rates": rate(prev["outcomes"] if prev else None, cur["outcomes"],
                                  cur["outcomes"].keys()),
            "flows": cur["flows"]}


def _print_stats(doc: dict) -> None:
    watching = doc["interval"] is not None
    headers = ["VIP / BACKEND", "STATE", "PACKETS", "BYTES", "NEW FLOWS"]
    if watching:
        headers += ["PKT/S", "BYTES/S", "FLOWS/S"]

    def row(name, state, c):
        r = [name, state, c["packets"], human_bytes(c["bytes"]), c["new_flows"]]
        if watching:
            rt = c["rates"]
            r += ["-", "-", "-"] if rt is None else [
                human_rate(rt["packets"]), human_bytes(rt["bytes"]) + "/s",
                human_rate(rt["new_flows"])]
        return r

    rows = []
    for v in doc["vips"]:
        rows.append(row(v["vip"], "", v))
        rows.extend(row(f"  {b['address']}", b["state"], b) for b in v["backends"])
    if rows:
        click.echo(table(headers, rows, right=range(2, len(headers))))
    else:
        click.echo("no VIPs")
    click.echo(f"flow table: {doc['flows']} entries")
    outcomes = [(name, n) for name, n in doc["outcomes"].items() if n]
    if not outcomes:
        click.echo("outcomes: none yet")
        return
    rates = doc["outcome_rates"] or {}
    text = ", ".join(f"{name} {n}" + (f" ({human_rate(rates[name])}/s)" if watching else "")
                     for name, n in outcomes)
    click.echo(f"outcomes: {text}")


@click.command()
@JSON_OPTION
@click.option("--watch", is_flag=True,
              help="Refresh every --interval seconds with per-second rates, until Ctrl-C "
                   "or --count refreshes. Implied by --interval and --count.")
@click.option("--interval", type=STATS_INTERVAL, metavar="SECONDS",
              help="Seconds between refreshes, 0.05 to 86400 (default 1).")
@click.option("--count", type=DecimalType(low=1), metavar="N",
              help="Stop after N refreshes.")
def stats(as_json: bool, watch: bool, interval: Optional[float], count: Optional[int]) -> None:
    """Show traffic per VIP and per backend.

    Packets, bytes and new flows per VIP and per backend, the flow-table size, and the
    datapath's outcome counters (forwarded, passed, dropped and why; only those that are
    not zero in the table, all of them with --json).

    Counters count from when the VIP or backend appeared. With --watch, every refresh
    also shows per-second rates; --json then prints one JSON document per line.

    \b
    Example:
      pyxlb stats
      pyxlb stats --watch --interval 2
      pyxlb stats --json --count 5 | jq .vips
    """
    watch = watch or interval is not None or count is not None
    if not watch:
        doc = _rates(None, _snapshot())
        if as_json:
            echo_json(doc)
        else:
            _print_stats(doc)
        return
    interval = 1.0 if interval is None else interval
    tty = sys.stdout.isatty() and not as_json
    prev = _snapshot()
    done = 0
    try:
        while count is None or done < count:
            time.sleep(max(0.0, prev["time"] + interval - time.time()))
            cur = _snapshot()
            doc = _rates(prev, cur)
            if as_json:
                echo_json(doc, compact=True)
            else:
                if tty:
                    click.clear()
                elif done:
                    click.echo("")
                click.echo(f"{time.strftime('%H:%M:%S', time.localtime(cur['time']))}, "
                           f"every {interval:g}s")
                _print_stats(doc)
            prev = cur
            done += 1
    except KeyboardInterrupt:
        pass


# -- metrics ---------------------------------------------------------------------------


@click.command()
@click.option("--listen", type=LISTEN, required=True, metavar="ADDR:PORT",
              help="Where to serve /metrics: 127.0.0.1:9100, [::1]:9100, :9100 for every "
                   "IPv4 address, [::]:9100 for every address. Port 0 takes any free port.")
def metrics(listen) -> None:
    """Serve the counters to Prometheus.

    Exposes the datapath's counters at http://ADDR:PORT/metrics until interrupted
    (Ctrl-C).

    \b
    Example:
      pyxlb metrics --listen 127.0.0.1:9100
    """
    host, port = listen
    with opened() as dp:
        try:
            from pyxlb.metrics import serve
        except ImportError as exc:
            raise Fail(f"the metrics exporter is not available: {exc}") from None
        try:
            serve(dp, host, port)
        except KeyboardInterrupt:
            pass
