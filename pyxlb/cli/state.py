"""`pyxlb apply -f FILE`: serve exactly the desired state a file describes."""

from __future__ import annotations

import sys

import click

from pyxlb.cli.common import Fail, apply_state, one_line, opened


@click.command("apply")
@click.option("-f", "--file", "path", required=True, metavar="FILE",
              help="YAML (or JSON) file of the whole desired state; - reads stdin. "
                   "Format: docs/config.md.")
@click.option("--dry-run", is_flag=True,
              help="Print what would change, write nothing.")
@click.option("--allow-empty", is_flag=True,
              help="Accept a state of no VIPs (`vips: []`), which removes every VIP. "
                   "Without it that is refused; an empty file or stdin always is.")
def apply_cmd(path: str, dry_run: bool, allow_empty: bool) -> None:
    """Apply a whole desired state from a file.

    The datapath then serves exactly the state in FILE: VIPs missing from the file are
    removed, new ones added, changed ones updated, in one all-or-nothing step. A file with
    any error changes nothing; applying the same file again writes nothing. --dry-run
    prints the same summary without writing.

    FILE is read and checked in full before the datapath is touched, so a slow or bad
    input never holds up other writers. Emptiness must be explicit: a file or stdin with
    no document, or a document without `vips`, is an error; `vips: []` removes every VIP
    only with --allow-empty.

    \b
    Example:
      pyxlb apply -f docs/examples/lb.yaml --dry-run
      pyxlb apply -f docs/examples/lb.yaml
      pyxlb vip list --json | pyxlb apply -f - --dry-run
    """
    from pyxlb import config
    source = "<stdin>" if path == "-" else path
    try:        # read, parse and check before the datapath is opened and locked
        if path == "-":
            stdin = getattr(sys.stdin, "buffer", None)     # None: started with it closed
            if stdin is None:
                raise Fail("<stdin>: there is no standard input to read")
            state = config.load_stream(stdin, source)
        else:
            state = config.load_file(path)
    except config.ConfigError as exc:
        raise Fail(one_line(exc)) from None
    if not len(state) and not allow_empty:
        raise Fail(f"{source}: `vips: []` would remove every VIP: pass --allow-empty if "
                   f"that is meant")
    with opened() as dp:
        apply_state(dp, state, dry_run=dry_run)
