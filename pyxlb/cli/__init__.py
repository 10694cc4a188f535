"""The ``pyxlb`` command: drive a pinned XDP balancer by hand.

Every command opens the datapath pinned under ``--pin-dir`` (``attach`` and ``decap
attach`` create it), does one thing and exits; the datapath keeps forwarding without it.
Edits go through ``Datapath.apply`` only: a command reads the state the maps implement,
builds the new DesiredState and applies it in one step, so bad input is refused before
anything is written. Read commands print tables, or JSON with ``--json``.

Any failure is one line on stderr, ``pyxlb: error: ...``, and exit status 2; see
docs/cli.md.

root.py holds the root group and registers every command; common.py what the commands
share; each other module one command or group. Importing this package loads none of them
(pyxlb.cli.common is imported by every command module, which root.py loads).
"""

from __future__ import annotations


def main() -> None:
    """The console entry point (`pyxlb`, `python -m pyxlb`)."""
    from pyxlb.cli.root import cli

    cli(prog_name="pyxlb")
