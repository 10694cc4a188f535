"""What every `pyxlb` command shares: the one-line failure, the options of the root group,
opening the pinned datapath, parameter types and table and number formatting.

This module imports no command module: the command modules import it, and
pyxlb/cli/root.py imports them all.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
from typing import Iterable, Optional, Sequence

import click

from pyxlb import netlink, netns
from pyxlb.addr import format_mac, format_prefix, parse_mac, parse_prefix
from pyxlb.datapath import DEFAULT_PIN_DIR, Datapath, ForeignDatapath
from pyxlb.errors import PyxlbError
from pyxlb.numbers import int_in
from pyxlb.state import DesiredState, StateError, VipKey

FAILURES = (PyxlbError, OSError, ValueError)     # what a command reports as one line
EXIT_FAILURE = 2


# -- errors ----------------------------------------------------------------------------


class Fail(click.ClickException):
    """A failure reported as ``pyxlb: error: <message>`` and exit status 2."""

    exit_code = EXIT_FAILURE


def one_line(error) -> str:
    """A message on one line: an exception's (OSError: its strerror and file name) or a
    text's, line breaks joined with "; "."""
    if isinstance(error, OSError) and error.strerror:
        text = error.strerror + (f": {error.filename}" if error.filename else "")
    elif isinstance(error, BaseException):
        text = str(error) or type(error).__name__
    else:
        text = str(error)
    return "; ".join(part.strip() for part in text.splitlines() if part.strip())


# -- the root group's options and the datapath -----------------------------------------


class Options:
    """What the root group's options give every command (the click context's object)."""

    def __init__(self, pin_dir: str):
        self.pin_dir = pin_dir


def current_pin_dir() -> str:
    """The --pin-dir of the command running now."""
    return click.get_current_context().find_object(Options).pin_dir


def require_command(ctx: click.Context) -> None:
    """A group given no command: one line naming the commands (instead of click's help
    on stderr)."""
    if ctx.invoked_subcommand is None and not ctx.resilient_parsing:
        names = ", ".join(ctx.command.list_commands(ctx))
        raise click.UsageError(f"missing command, one of: {names}", ctx)


@contextlib.contextmanager
def opened(kind=Datapath, *, create: bool = False, sizes=None):
    """The datapath (or, with kind=DecapPath, the decapsulator) pinned at --pin-dir, closed
    afterwards; `create` makes one when there is none (`sizes`: its map sizes). Any
    PyxlbError, OSError or ValueError inside the block becomes a one-line failure with exit
    status 2."""
    where = current_pin_dir()
    try:
        with (kind.create(where, **({"map_sizes": sizes} if sizes else {}))
              if create else kind.open(where)) as dp:
            yield dp
    except BrokenPipeError:
        raise       # `pyxlb ... | head`: click exits quietly
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None


def apply_state(dp: Datapath, state: DesiredState, *, dry_run: bool = False) -> None:
    """Apply `state` in one step and print what changed (Plan.describe)."""
    result = dp.apply(state, dry_run=dry_run)
    plan = result.plan
    if plan.empty:
        click.echo("nothing to change")
        return
    for line in plan.describe():
        click.echo(line)
    if dry_run:
        click.echo("dry run: nothing was written")
    elif result.seconds is not None:
        click.echo(f"applied in {result.seconds * 1000:.1f} ms")


def ifindex(iface: str) -> int:
    """The index of interface `iface`, or a one-line failure."""
    try:
        return netlink.ifindex(iface)
    except PyxlbError as exc:
        raise Fail(one_line(exc)) from None


def took_off_foreign(kind, iface: str, detached: str, gone: str) -> bool:
    """If the `kind` datapath at --pin-dir was made by another version (no command can
    read its maps), take it off `iface` all the same, removing it with its last interface;
    say so (`gone` may name {pin_dir}) and return True. False: this version can read it."""
    where = os.path.abspath(current_pin_dir())
    try:
        kind.open(where).close()
        return False
    except ForeignDatapath:
        pass
    except FAILURES:
        return False        # opened() reports it
    try:
        removed = kind.detach_foreign(iface, where)
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
    click.echo(f"{detached} (a datapath made by another version of pyxlb)")
    if removed:
        click.echo(gone.format(pin_dir=where))
    return True


# -- parameter types -------------------------------------------------------------------


class VipType(click.ParamType):
    name = "ADDR:PORT/PROTO"

    def convert(self, value, param, ctx):
        if isinstance(value, VipKey):
            return value
        try:
            return VipKey.parse(value)
        except StateError as exc:
            self.fail(str(exc), param, ctx)

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem
        try:
            with _completion_datapath(ctx) as dp:
                keys = [str(v.key) for v in dp.current_state()]
        except Exception:      # completion must never print a traceback into the shell
            return []
        return [CompletionItem(k) for k in keys if k.startswith(incomplete)]


class AddressType(click.ParamType):
    name = "ADDR"

    def convert(self, value, param, ctx):
        try:
            return ipaddress.ip_address(str(value).strip())
        except ValueError:
            self.fail(f"not an IPv4 or IPv6 address: {value!r}", param, ctx)


class PrefixType(click.ParamType):
    """A prefix (host bits zero) or a bare address (a /32 or /128), returned as text."""

    name = "PREFIX"

    def convert(self, value, param, ctx):
        try:
            family, addr, plen = parse_prefix(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        return format_prefix(family, addr, plen)


class MacType(click.ParamType):
    name = "MAC"

    def convert(self, value, param, ctx):
        try:
            return format_mac(parse_mac(str(value)))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DecimalType(click.ParamType):
    """An integer in ASCII decimal digits, optionally negative: what int() takes besides
    ("８０", "8_0", "+80", " 80") is refused. `low`: the least accepted; other ranges are
    checked where the number is used (DesiredState, for weights and ring sizes)."""

    name = "integer"
    _RE = re.compile(r"-?[0-9]{1,20}")

    def __init__(self, low: Optional[int] = None):
        self.low = low

    def convert(self, value, param, ctx):
        if int_in(value):
            number = value
        elif isinstance(value, str) and self._RE.fullmatch(value):
            number = int(value)
        else:
            self.fail(f"{value!r} is not a decimal integer (ASCII digits)", param, ctx)
        if not int_in(number, self.low):
            self.fail(f"{number} is less than {self.low}", param, ctx)
        return number


class SecondsType(click.ParamType):
    """A duration in seconds, in ASCII decimal (2, 0.5, .25), from `low` to `high`: no
    nan, inf, exponent or other spelling float() would take."""

    name = "SECONDS"
    _RE = re.compile(r"(?:[0-9]{1,20}(?:\.[0-9]{0,20})?|\.[0-9]{1,20})")

    def __init__(self, low: float, high: float):
        self.low, self.high = low, high

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and self._RE.fullmatch(value):
            seconds = float(value)
        else:
            self.fail(f"{value!r} is not a number of seconds (decimal, e.g. 2 or 0.5)",
                      param, ctx)
        if not self.low <= seconds <= self.high:
            self.fail(f"{value} is outside {self.low:g}-{self.high:g} seconds", param, ctx)
        return seconds


_LISTEN_RE = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[0-9]{1,5})$")


class ListenType(click.ParamType):
    """ADDR:PORT, [V6ADDR]:PORT or :PORT (every IPv4 address) -> (host, port). Port 0:
    any free port (the exporter prints the one it got)."""

    name = "ADDR:PORT"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        m = _LISTEN_RE.match(str(value).strip())
        port = int(m.group("port")) if m else 0
        if not m or not int_in(port, 0, 65535):
            self.fail(f"{value!r} is not ADDR:PORT (e.g. 127.0.0.1:9100, [::1]:9100 or "
                      f":9100), port 0-65535", param, ctx)
        host = m.group("v6") if m.group("v6") is not None else m.group("host")
        want = 6 if m.group("v6") is not None else 4
        if host == "" and want == 4:
            return "0.0.0.0", port
        try:
            if ipaddress.ip_address(host).version != want:
                raise ValueError
        except ValueError:
            self.fail(f"{value!r}: {host!r} is not an IPv{want} address", param, ctx)
        return host, port


class IfaceType(click.ParamType):
    name = "IFACE"

    def shell_complete(self, ctx, param, incomplete):
        from click.shell_completion import CompletionItem
        try:
            name = ctx.find_root().params.get("netns_name")
            with netns.enter(name) if name else contextlib.nullcontext():
                names = [n for _, n in socket.if_nameindex()]
        except Exception:
            return []
        return [CompletionItem(n) for n in names if n.startswith(incomplete)]


VIP, ADDRESS, PREFIX, MAC, LISTEN, IFACE = (VipType(), AddressType(), PrefixType(), MacType(),
                                            ListenType(), IfaceType())
DECIMAL = DecimalType()


@contextlib.contextmanager
def _completion_datapath(ctx):
    """The datapath for completing VIPs: the group callback has not run during completion,
    so the pin dir comes from the parsed root parameters."""
    where = ctx.find_root().params.get("pin_dir") or DEFAULT_PIN_DIR
    with Datapath.open(where) as dp:
        yield dp


# -- formatting ------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence], right: Iterable[int] = ()) -> str:
    """Rows under headers in aligned columns; the columns listed in `right` (numbers) are
    right-aligned."""
    rows = [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    right = set(right)

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows])


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_rate(n: Optional[float]) -> str:
    if n is None:
        return "-"
    for unit in ("", "k", "M", "G"):
        if abs(n) < 1000 or unit == "G":
            return f"{n:.1f}{unit}" if unit or n != int(n) else f"{n:.0f}"
        n /= 1000
    return f"{n:.1f}G"


def echo_json(data, *, compact: bool = False) -> None:
    click.echo(json.dumps(data, separators=(",", ":")) if compact else json.dumps(data, indent=2))


def on_off(flag: bool) -> str:
    return "on" if flag else "off"


JSON_OPTION = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON instead of a table (see docs/cli.md for the shape).")

UPGRADE_HELP = ("What to do with a datapath pinned by another version of pyxlb: auto "
                "upgrades it to this version under traffic (maps migrated, program "
                "replaced atomically; docs/deploy.md); never refuses it with one line "
                "naming both versions.")
UPGRADE_OPTION = click.option("--upgrade", type=click.Choice(["auto", "never"]),
                              default="auto", show_default=True, help=UPGRADE_HELP)
