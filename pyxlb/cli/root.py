"""The root `pyxlb` group: its options (--pin-dir, --netns), the one-line error report,
and every command registered on it, each defined in its own module of pyxlb/cli/."""

from __future__ import annotations

import sys
from typing import Optional

import click

from pyxlb import netns
from pyxlb.cli.agent import agent
from pyxlb.cli.announce import announce
from pyxlb.cli.common import (EXIT_FAILURE, FAILURES, Fail, Options, one_line,
                              require_command)
from pyxlb.cli.datapath import attach, detach, status
from pyxlb.cli.decap import decap
from pyxlb.cli.health import health
from pyxlb.cli.lab import lab
from pyxlb.cli.observe import metrics, stats
from pyxlb.cli.serve import serve
from pyxlb.cli.state import apply_cmd
from pyxlb.cli.upgrade import upgrade
from pyxlb.cli.vips import backend, vip
from pyxlb.datapath import DEFAULT_PIN_DIR


class _Cli(click.Group):
    """Runs every command in standalone fashion, but reports any click error (usage or
    our own) as one line, `pyxlb: error: ...`, with exit status 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as exc:
            message = one_line(exc.format_message())
            if isinstance(exc, click.UsageError) and exc.ctx is not None:
                message += f" (see '{exc.ctx.command_path} --help')"
            click.echo(f"pyxlb: error: {message}", err=True)
            sys.exit(EXIT_FAILURE)
        except click.Abort:
            click.echo("pyxlb: interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=_Cli, invoke_without_command=True, subcommand_metavar="COMMAND [ARGS]...",
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--pin-dir", default=DEFAULT_PIN_DIR, show_default=True, envvar="PYXLB_PIN_DIR",
              show_envvar=True, type=click.Path(file_okay=False),
              help="Directory on bpffs where the datapath's maps and programs are pinned. "
                   "Use one per datapath; a balancer and a decapsulator may share one.")
@click.option("--netns", "netns_name", metavar="NAME",
              help="Run the command inside network namespace NAME (as made by `ip netns "
                   "add`): interface names and addresses are that namespace's. Only the "
                   "network namespace is entered, so the pins on bpffs stay visible.")
@click.version_option(package_name="pyxlb", prog_name="pyxlb")
@click.pass_context
def cli(ctx: click.Context, pin_dir: str, netns_name: Optional[str]) -> None:
    """pyxlb: an XDP layer-4 load balancer (Maglev hashing, flow table, direct server
    return), driven by hand.

    Attach the balancer to the interface that receives VIP traffic, add VIPs and their
    backends (or apply a whole YAML state with `apply -f`), then watch `stats`. The
    datapath lives in the kernel, pinned under --pin-dir: it keeps forwarding between
    commands and across restarts, until `detach` takes it off its last interface.

    \b
    Example:
      pyxlb attach eth0
      pyxlb vip add 192.0.2.10:80/tcp
      pyxlb backend add 192.0.2.10:80/tcp 10.0.1.1
      pyxlb backend add 192.0.2.10:80/tcp 10.0.1.2 --weight 2
      pyxlb stats --watch

    A VIP is ADDR:PORT/PROTO, e.g. 192.0.2.10:80/tcp or [2001:db8::10]:443/udp; port 0
    stands for every port of the address. Errors are one line on stderr and exit status 2.
    Full reference: docs/cli.md. Shell completion (bash; zsh_source and fish_source too):

    \b
      eval "$(_PYXLB_COMPLETE=bash_source pyxlb)"
    """
    require_command(ctx)
    ctx.obj = Options(pin_dir)
    if netns_name:
        try:
            ctx.with_resource(netns.enter(netns_name))
        except FAILURES as exc:
            raise Fail(one_line(exc)) from None


for command in (attach, detach, status, upgrade, vip, backend, apply_cmd, stats, metrics, decap,
                lab, agent, announce, serve, health):
    cli.add_command(command)
