"""`pyxlb upgrade`: bring the datapath pinned at --pin-dir to this version of pyxlb."""

from __future__ import annotations

import os

import click

from pyxlb.cli.common import FAILURES, JSON_OPTION, Fail, current_pin_dir, echo_json, one_line
from pyxlb.datapath import upgrade as upgrade_mod


@click.command("upgrade")
@click.option("--dry-run", is_flag=True,
              help="Print what would be migrated (with entry counts) and change nothing.")
@JSON_OPTION
def upgrade(dry_run: bool, as_json: bool) -> None:
    """Upgrade the datapath (balancer and decapsulator) pinned at --pin-dir to this version.

    Under traffic and without resetting a connection: maps whose layout is unchanged are
    kept; maps whose layout changed are made anew beside them and every entry is copied,
    flows included; then the new program replaces the old one on every interface with one
    atomic swap each, flows recorded meanwhile are copied too, and the old maps go. An
    upgrade a killed process left half-way is completed or rolled back first. The agent,
    `pyxlb attach` and `pyxlb decap attach` do the same by themselves when they start
    (unless --upgrade=never); see docs/deploy.md.

    \b
    Example:
      pyxlb upgrade --dry-run
      pyxlb upgrade
    """
    where = os.path.abspath(current_pin_dir())
    try:
        result = upgrade_mod.upgrade(where, dry_run=dry_run)
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
    plan = result.plan
    if as_json:
        echo_json({
            "pin_dir": plan.pin_dir, "from": str(plan.old), "to": str(plan.new),
            "needed": plan.needed, "dry_run": dry_run, "resumed": result.resumed or None,
            "maps": [{"name": c.name, "action": c.action, "why": c.why or None,
                      "entries": c.entries} for c in plan.changes],
            "programs": {obj: {"replace": changed,
                               "interfaces": [i["name"] for i in plan.interfaces.get(obj, [])]}
                         for obj, changed in plan.programs.items()},
            "steps": plan.kill_points() if plan.needed else [],
            "seconds": result.seconds,
        })
        return
    if result.resumed:
        click.echo(f"{result.resumed} an upgrade a stopped process had left half-way")
    for line in plan.describe():
        click.echo(line)
    if dry_run:
        if upgrade_mod.interrupted(where):
            click.echo("an interrupted upgrade is pending: it is completed or rolled back first")
        click.echo("dry run: nothing was changed")
    elif plan.needed:
        steps = ", ".join(f"{k} {v * 1000:.1f}" for k, v in result.seconds.items())
        click.echo(f"done in {sum(result.seconds.values()) * 1000:.0f} ms ({steps} ms)")
