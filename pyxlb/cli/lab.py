"""`pyxlb lab ...`: the lab of network namespaces (pyxlb/lab/), built, shown and torn down
from the command line."""

from __future__ import annotations

import click

from pyxlb.cli.common import (FAILURES, JSON_OPTION, Fail, echo_json, one_line,
                              require_command, table)

PREFIX_OPTION = click.option("--prefix", default="xlb", show_default=True,
                             help="Name prefix of the lab's namespaces and pin directories "
                                  "(1-8 letters, digits or '-'); two labs with different "
                                  "prefixes coexist.")


@click.group(invoke_without_command=True)
@click.pass_context
def lab(ctx: click.Context) -> None:
    """A lab of network namespaces: client, router, two LB nodes, three backends.

    Everything runs on this machine, with the real XDP programs and real TCP, and every
    address lives inside the lab's own namespaces. Needs root. See docs/lab.md.

    \b
    Example:
      pyxlb lab demo            # build, show, tear down (what `make demo` runs)
      pyxlb lab up              # build and leave it up
      ip netns exec xlb-client curl http://10.77.100.10/
      pyxlb lab down
    """
    require_command(ctx)


@lab.command("up")
@PREFIX_OPTION
def lab_up(prefix: str) -> None:
    """Build the lab (about 1.5 s) and leave it up."""
    from pyxlb.lab import Lab

    try:
        Lab(prefix).up(log=lambda m: click.echo(f"  {m}"))
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
    click.echo(f"lab {prefix!r} is up: `pyxlb lab status --prefix {prefix}`; "
               f"`pyxlb lab down --prefix {prefix}` removes it")


@lab.command("down")
@PREFIX_OPTION
def lab_down(prefix: str) -> None:
    """Remove everything the lab made: its processes, pins and namespaces (and only
    those); works after a crash too."""
    from pyxlb.lab import Lab

    try:
        removed = Lab(prefix).down()
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
    click.echo(f"removed {len(removed)} things" if removed else f"no lab {prefix!r} here")


@lab.command("status")
@PREFIX_OPTION
@JSON_OPTION
def lab_status(prefix: str, as_json: bool) -> None:
    """Which of the lab's namespaces, XDP programs and pin directories exist."""
    from pyxlb.lab import Lab

    try:
        st = Lab(prefix).status()
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
    if as_json:
        echo_json(st)
        return
    rows = [[node, row["namespace"], "yes" if row["exists"] else "no",
             ", ".join(f"{i} ({m})" for i, m in row.get("xdp", {}).items()) or "-",
             "yes" if row["pins"] else "no"] for node, row in st.items()]
    click.echo(table(["node", "namespace", "exists", "XDP", "pins"], rows))


@lab.command("demo")
@PREFIX_OPTION
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards.")
def lab_demo(prefix: str, keep: bool) -> None:
    """Build the lab, send a few hundred real TCP connections through the XDP balancer,
    and show where they went, what happens when a backend goes and when the other LB node
    takes over, and the counters; then tear the lab down. Under a minute."""
    from pyxlb.lab import demo as labdemo

    try:
        labdemo.run(prefix, keep=keep, out=click.echo)
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
