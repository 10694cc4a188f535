"""The `pyxlb announce` command (registered on the `pyxlb` group in pyxlb/cli/root.py)."""

from __future__ import annotations

import logging

import click

from pyxlb.cli.common import Fail, one_line, opened
from pyxlb.errors import PyxlbError


@click.command("announce")
@click.option("-f", "--file", "path", required=True, metavar="FILE",
              help="YAML state file with an `announce` section (docs/announce.md).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True, help="Log verbosity.")
def announce(path: str, log_level: str) -> None:
    """Apply FILE's VIPs and keep them announced until stopped (no Kubernetes).

    With `announce.mode: l2`, run it on every LB node with the same file, each naming
    itself in `announce.node` and the others in `announce.l2.peers`: one node at a time
    answers ARP/NDP for each VIP (the others take over within a second or two when it
    stops being heard). With `bgp`, this node's BGP speaker announces every VIP with a
    backend while the balancer is attached. SIGTERM or Ctrl-C withdraws everything.

    \b
    Example:
      pyxlb attach eth0
      pyxlb announce -f lb.yaml
    """
    from pyxlb import config
    from pyxlb.announce.runner import Runner

    logging.basicConfig(level=getattr(logging, log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        state, section = config.load_announce(path)
    except config.ConfigError as exc:
        raise Fail(one_line(exc)) from None
    if section is None:
        raise Fail(f"{path}: no `announce` section (see docs/announce.md)")
    with opened() as dp:
        try:
            runner = Runner(dp, state, section)
        except (PyxlbError, OSError, ValueError) as exc:
            raise Fail(one_line(exc)) from None
        click.echo(f"pyxlb announce: {runner.mode} as {runner.node} on {runner.interface}; "
                   f"{len(state)} VIPs", err=True)
        runner.run()
