"""The ``pyxlb`` command: drive a pinned XDP balancer by hand.

Every command opens the datapath pinned under ``--pin-dir`` (``attach`` and ``decap
attach`` create it), does one thing and exits; the datapath keeps forwarding without it.
Edits go through ``Datapath.apply`` only: a command reads the state the maps implement,
builds the new DesiredState and applies it in one step, so bad input is refused before
anything is written. Read commands print tables, or JSON with ``--json``.

Any failure is one line on stderr, ``pyxlb: error: ...``, and exit status 2; see
docs/cli.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import socket
import sys
import time
from typing import Iterable, Optional, Sequence

import click

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb import netlink, netns
from pyxlb.addr import format_mac, format_prefix, parse_mac, parse_prefix
from pyxlb.datapath import DEFAULT_PIN_DIR, Datapath, DecapPath, ForeignDatapath, map_sizes
from pyxlb.errors import PyxlbError
from pyxlb.maps import BACKENDS, FLOWS, FLOWS4, RINGS
from pyxlb.state import (AFFINITIES, MODES, RING_SIZE_DEFAULT, Backend, DesiredState,
                         StateError, VipKey, vip_to_dict)

FAILURES = (PyxlbError, OSError, ValueError)     # what a command reports as one line
EXIT_FAILURE = 2

# maps counted entry by entry for `status` (the others are arrays, always full)
_COUNTED_TYPES = frozenset((_bpf.MAP_TYPE_HASH, _bpf.MAP_TYPE_LRU_HASH, _bpf.MAP_TYPE_LPM_TRIE,
                            _bpf.MAP_TYPE_PERCPU_HASH, _bpf.MAP_TYPE_LRU_PERCPU_HASH,
                            _bpf.MAP_TYPE_HASH_OF_MAPS))


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


@contextlib.contextmanager
def opened(kind=Datapath, *, create: bool = False, sizes=None):
    """The datapath (or, with kind=DecapPath, the decapsulator) pinned at --pin-dir, closed
    afterwards; `create` makes one when there is none (`sizes`: its map sizes). Any
    PyxlbError, OSError or ValueError inside the block becomes a one-line failure with exit
    status 2."""
    pin_dir = click.get_current_context().find_object(_Options).pin_dir
    try:
        with (kind.create(pin_dir, **({"map_sizes": sizes} if sizes else {}))
              if create else kind.open(pin_dir)) as dp:
            yield dp
    except BrokenPipeError:
        raise       # `pyxlb ... | head`: click exits quietly
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None


def apply_state(dp: Datapath, state: DesiredState, *, dry_run: bool = False) -> None:
    """Apply `state` in one step and print what changed (Plan.describe)."""
    plan = dp.apply(state, dry_run=dry_run)
    if plan.empty:
        click.echo("nothing to change")
        return
    for line in plan.describe():
        click.echo(line)
    if dry_run:
        click.echo("dry run: nothing was written")
    elif dp.last_apply_seconds is not None:
        click.echo(f"applied in {dp.last_apply_seconds * 1000:.1f} ms")


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
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and self._RE.fullmatch(value):
            number = int(value)
        else:
            self.fail(f"{value!r} is not a decimal integer (ASCII digits)", param, ctx)
        if self.low is not None and number < self.low:
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
        if not m or not 0 <= port <= 65535:
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


class _IfaceType(click.ParamType):
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
                                            ListenType(), _IfaceType())
DECIMAL = DecimalType()
STATS_INTERVAL = SecondsType(0.05, 86400.0)     # a refresh at most a day apart


@contextlib.contextmanager
def _completion_datapath(ctx):
    """The datapath for completing VIPs: the group callback has not run during completion,
    so the pin dir comes from the parsed root parameters."""
    pin_dir = ctx.find_root().params.get("pin_dir") or DEFAULT_PIN_DIR
    with Datapath.open(pin_dir) as dp:
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


def _on_off(flag: bool) -> str:
    return "on" if flag else "off"


JSON_OPTION = click.option("--json", "as_json", is_flag=True,
                           help="Print JSON instead of a table (see docs/cli.md for the shape).")


# -- the command group -----------------------------------------------------------------


class _Options:
    def __init__(self, pin_dir: str):
        self.pin_dir = pin_dir


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
    ctx.obj = _Options(pin_dir)
    if netns_name:
        try:
            ctx.with_resource(netns.enter(netns_name))
        except FAILURES as exc:
            raise Fail(one_line(exc)) from None


def require_command(ctx: click.Context) -> None:
    """A group given no command: one line naming the commands (instead of click's help
    on stderr)."""
    if ctx.invoked_subcommand is None and not ctx.resilient_parsing:
        names = ", ".join(ctx.command.list_commands(ctx))
        raise click.UsageError(f"missing command, one of: {names}", ctx)


def main() -> None:
    """The console entry point (`pyxlb`, `python -m pyxlb`)."""
    cli(prog_name="pyxlb")


# -- attach / detach -------------------------------------------------------------------


@cli.command()
@click.argument("iface", type=IFACE)
@click.option("--mode", type=click.Choice(["native", "generic"]), default="native",
              show_default=True,
              help="XDP mode: native runs in the driver (fast; veth, most NICs); generic "
                   "runs after the kernel built its socket buffer (any interface, slower).")
@click.option("--encap-source", "encap_sources", type=PREFIX, multiple=True,
              help="Outer source prefix for IPIP/IP6IP6 packets, one per address family "
                   "(the flow hash fills the host bits, so receivers spread flows). "
                   "Default, for a family with none configured yet: the interface's first "
                   "address of that family, as a /32 or /128.")
@click.option("--seed", type=int,
              help="Seed of the flow hash. Give every LB node the same seed so they all "
                   "pick the same backend for a flow. Default: keep (0 for a new datapath).")
@click.option("--mtu", type=int,
              help="Largest packet after encapsulation, towards backends; a packet that "
                   "would be larger gets an ICMP error. Default: keep (1500 when new).")
@click.option("--max-vips", type=click.IntRange(1, 1 << 20),
              help="VIPs (address, port and protocol) the datapath holds. Like the two "
                   "below, only for a datapath this command creates: sizes are fixed then. "
                   f"[default: {L.MAX_VIPS}]")
@click.option("--max-flows", type=click.IntRange(1024, 1 << 26),
              help="IPv4 flows the flow table pins (32 bytes of kernel memory each), rounded "
                   f"up to a power of two of sets of {L.FLOW4_WAYS}. "
                   f"[default: {L.FLOW4_SETS * L.FLOW4_WAYS}]")
@click.option("--max-flows6", type=click.IntRange(1024, 1 << 26),
              help="IPv6 flows the flow table pins before evicting the least recently used "
                   "(132 bytes of kernel memory each at the default); a size just above a "
                   f"power of two answers fastest. [default: {L.MAX_FLOWS6}]")
def attach(iface: str, mode: str, encap_sources: Sequence[str], seed: Optional[int],
           mtu: Optional[int], max_vips: Optional[int], max_flows: Optional[int],
           max_flows6: Optional[int]) -> None:
    """Run the balancer on interface IFACE.

    Creates the datapath under --pin-dir if there is none (an existing one is adopted
    untouched, with its VIPs), sets the options given, attaches the XDP program, and
    registers IFACE's addresses as this node's own, so tunnelled VIP packets sent to this
    node are decapsulated inline. Attaching again to the same interface changes nothing.

    \b
    Example:
      pyxlb attach eth0 --encap-source 10.255.0.0/24 --seed 42
    """
    ifindex = _ifindex(iface)
    src = {}
    for prefix in encap_sources:
        family = ipaddress.ip_network(prefix).version
        if family in src:
            raise Fail(f"--encap-source: one prefix per address family, got {src[family]} "
                       f"and {prefix}")
        src[family] = prefix
    pin_dir = click.get_current_context().find_object(_Options).pin_dir
    created = not Datapath.exists(pin_dir)
    with opened(create=True, sizes=map_sizes(max_vips, max_flows, max_flows6)) as dp:
        before = dp.config()
        try:
            addrs = netlink.addresses(ifindex)
            for family, plen_field in ((4, "src4_plen"), (6, "src6_plen")):
                first = next((a for a in addrs if a.version == family), None)
                if family not in src and not before[plen_field] and first is not None:
                    src[family] = f"{first}/{first.max_prefixlen}"
            cfg = dp.configure(seed=seed, mtu=mtu, src4=src.get(4), src6=src.get(6))
            link = dp.attach(iface, mode)
            for a in addrs:
                dp.add_local_addr(a)
        except BaseException:
            if created:
                _remove_new(dp)
            else:
                _restore_config(dp, before)
            raise
        if created:
            click.echo(f"created the datapath pinned at {dp.pin_dir}")
        else:
            for text in dp.size_mismatches(max_vips, max_flows, max_flows6):
                click.echo(f"note: {text}")
        if link["changed"]:
            click.echo(f"attached to {iface} ({mode} mode, program id {dp.prog.id})")
        else:
            click.echo(f"already attached to {iface} ({mode} mode, program id {dp.prog.id})")
        click.echo(f"config: {_config_summary(cfg)}")
        if addrs:
            click.echo(f"local addresses: {', '.join(map(str, addrs))}")
        for family in (4, 6):
            if not cfg[f"src{family}_plen"]:
                click.echo(f"note: no IPv{family} encap source: IPIP VIP traffic to IPv"
                           f"{family} backends is dropped until --encap-source sets one")


def _ifindex(iface: str) -> int:
    try:
        return netlink.ifindex(iface)
    except PyxlbError as exc:
        raise Fail(one_line(exc)) from None


def _remove_new(obj) -> None:
    """Remove a datapath this command created but could not attach (maps shared with the
    other kind pinned in the same directory stay)."""
    obj.destroy()


def _restore_config(dp: Datapath, cfg: dict) -> None:
    """Put back the config fields that attach may have changed (a failed attach on an
    existing datapath leaves it as it was)."""
    dp.configure(seed=cfg["seed"], mtu=cfg["mtu"], src4=_src_prefix(cfg, 4) or "0.0.0.0/0",
                 src6=_src_prefix(cfg, 6) or "::/0")


def _src_prefix(cfg: dict, family: int) -> Optional[str]:
    """The encap source prefix of a config record, None when unset."""
    plen = cfg[f"src{family}_plen"]
    if not plen:
        return None
    raw = cfg[f"src{family}"]
    return str(ipaddress.ip_network((bytes(raw), plen), strict=False))


def _config_summary(cfg: dict) -> str:
    srcs = ", ".join(filter(None, (_src_prefix(cfg, 4), _src_prefix(cfg, 6)))) or "none"
    return f"seed {cfg['seed']}, mtu {cfg['mtu']}, encap source {srcs}"


@cli.command()
@click.argument("iface", type=IFACE)
def detach(iface: str) -> None:
    """Take the balancer off interface IFACE.

    IFACE's addresses stop being treated as this node's own. When no interface runs the
    balancer any more, the datapath itself is removed: its pinned maps and program go,
    with every VIP, backend, flow and counter in them. This works on a datapath left by
    another version of pyxlb too, which the other commands refuse to read.

    \b
    Example:
      pyxlb detach eth0
    """
    ifindex = _ifindex(iface)
    if _took_off_foreign(Datapath, iface, f"detached from {iface}",
                         "no interface runs the balancer any more: removed the datapath "
                         "pinned at {pin_dir}"):
        return
    with opened() as dp:
        addrs = netlink.addresses(ifindex)
        removed = dp.detach(iface)
        click.echo(f"detached from {iface}")
        if removed:
            click.echo(f"no interface runs the balancer any more: removed the datapath "
                       f"pinned at {dp.pin_dir}")
            return
        still = {a for i in dp.interfaces() for a in netlink.addresses(i["ifindex"])}
        for a in addrs:
            if a not in still:
                with contextlib.suppress(KeyError):
                    dp.del_local_addr(a)


def _took_off_foreign(kind, iface: str, detached: str, gone: str) -> bool:
    """If the `kind` datapath at --pin-dir was made by another version (no command can
    read its maps), take it off `iface` all the same, removing it with its last interface;
    say so (`gone` may name {pin_dir}) and return True. False: this version can read it."""
    pin_dir = os.path.abspath(click.get_current_context().find_object(_Options).pin_dir)
    try:
        kind.open(pin_dir).close()
        return False
    except ForeignDatapath:
        pass
    except FAILURES:
        return False        # opened() reports it
    try:
        removed = kind.detach_foreign(iface, pin_dir)
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
    click.echo(f"{detached} (a datapath made by another version of pyxlb)")
    if removed:
        click.echo(gone.format(pin_dir=pin_dir))
    return True


# -- status ----------------------------------------------------------------------------


@cli.command()
@JSON_OPTION
def status(as_json: bool) -> None:
    """Show the datapath and how full its maps are.

    Where it is pinned, its program and the interfaces running it, its config (seed, MTU,
    encap sources), how many VIPs, backends, rings and flows it holds, and entries against
    capacity for each map that can fill up; plus the decapsulator, when one is pinned in
    the same directory.

    \b
    Example:
      pyxlb status
      pyxlb --pin-dir /sys/fs/bpf/lb2 status --json
    """
    with opened() as dp:
        data = _status(dp)
    if as_json:
        echo_json(data)
        return
    c = data["config"]
    ifaces = ", ".join(f"{i['name']} ({i['mode']})" for i in data["interfaces"]) or "none"
    lines = [
        ("pin dir", data["pin_dir"]),
        ("program", f"xlb_balancer, id {data['program_id']}"),
        ("interfaces", ifaces),
        ("config", f"seed {c['seed']}, mtu {c['mtu']}, encap source IPv4 "
                   f"{c['encap_source4'] or 'none'}, IPv6 {c['encap_source6'] or 'none'}, "
                   f"decap source check {_on_off(c['decap_check_source'])}"),
        ("state", f"{data['vips']} VIPs, {data['backends']} backends, {data['rings']} rings, "
                  f"{data['flows']} flows in the flow table"),
    ]
    d = data["decap"]
    if d is not None:
        difaces = ", ".join(f"{i['name']} ({i['mode']})" for i in d["interfaces"]) or "none"
        lines.append(("decap", f"xlb_decap, id {d['program_id']}, on {difaces}, "
                               f"{d['vips']} VIP addresses"))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"{k.ljust(width)}  {v}")
    click.echo("")
    rows = [(name, m["entries"], m["max_entries"],
             f"{100 * m['entries'] / m['max_entries']:.1f}%")
            for name, m in data["maps"].items()]
    click.echo(table(("MAP", "ENTRIES", "MAX", "USED"), rows, right=(1, 2, 3)))


def _status(dp: Datapath) -> dict:
    cfg = dp.config()
    layout = dp.layout()
    maps = {}
    for name in dp.maps.names():
        m = dp.maps[name]
        if m.type in _COUNTED_TYPES:
            maps[name] = {"entries": m.count(), "max_entries": m.max_entries}
    # arrays hold every index: count the ids in use instead (and the IPv4 flows, in ways)
    (n4, _), (cap4, _) = dp.flow_counts(), dp.flow_capacities()
    maps[FLOWS4] = {"entries": n4, "max_entries": cap4}
    maps[BACKENDS] = {"entries": len(layout.backend_ids),
                      "max_entries": dp.maps.backends.max_entries}
    maps[RINGS] = {"entries": len(layout.ring_ids), "max_entries": dp.maps.rings.max_entries}
    decap = None
    if DecapPath.exists(dp.pin_dir):
        with DecapPath.open(dp.pin_dir) as dc:
            decap = {"program_id": dc.prog.id, "interfaces": dc.interfaces(),
                     "vips": dc.maps.decap_vips.count()}
    return {
        "pin_dir": dp.pin_dir,
        "program_id": dp.prog.id,
        "interfaces": dp.interfaces(),
        "config": {"seed": cfg["seed"], "mtu": cfg["mtu"],
                   "encap_source4": _src_prefix(cfg, 4), "encap_source6": _src_prefix(cfg, 6),
                   "decap_check_source": bool(cfg["flags"] & L.CFG_DECAP_CHECK_SOURCE)},
        "vips": len(layout.state),
        "backends": len(layout.backend_ids),
        "rings": len(layout.ring_ids),
        "flows": maps[FLOWS4]["entries"] + maps[FLOWS]["entries"],
        "maps": dict(sorted(maps.items())),
        "decap": decap,
    }


# -- VIPs ------------------------------------------------------------------------------


@cli.group(invoke_without_command=True, subcommand_metavar="COMMAND [ARGS]...")
@click.pass_context
def vip(ctx: click.Context) -> None:
    """Add, remove and list VIPs.

    A VIP is ADDR:PORT/PROTO: 192.0.2.10:80/tcp, [2001:db8::10]:443/udp. Port 0 means
    every port of the address (tcp or udp); a VIP with the exact port wins over it.
    """
    require_command(ctx)


@vip.command("add")
@click.argument("key", metavar="ADDR:PORT/PROTO", type=VIP)
@click.option("--mode", type=click.Choice(MODES), default="ipip", show_default=True,
              help="ipip: tunnel to the backend (IPIP/IP6IP6 DSR, backends anywhere routed); "
                   "l2: rewrite the MAC only (backends on this segment, holding the VIP); "
                   "local: this node serves the VIP itself (no backends).")
@click.option("--no-flow-table", is_flag=True,
              help="Do not remember each flow's backend: every packet is hashed onto the "
                   "ring (saves the flow table for stateless UDP; a ring change moves flows).")
@click.option("--affinity", type=click.Choice(AFFINITIES), default="none", show_default=True,
              help="client-ip: hash the client address only, so one client sticks to one "
                   "backend whatever its ports.")
@click.option("--ring-size", type=DECIMAL, default=RING_SIZE_DEFAULT, show_default=True,
              help="Maglev ring slots: a prime, well above 100 x the number of backends "
                   "for an even spread.")
@click.option("--announce", is_flag=True,
              help="Answer ARP/NDP for the VIP address on the attached interface (L2 "
                   "announcement). Needs the balancer attached to an interface with a MAC.")
@click.option("--source-range", "source_ranges", type=PREFIX, multiple=True,
              help="Admit only clients in PREFIX (repeatable; the VIP's family); others are "
                   "dropped and counted (drop_source_range). None given: every client.")
def vip_add(key: VipKey, mode: str, no_flow_table: bool, affinity: str, ring_size: int,
            announce: bool, source_ranges: Sequence[str]) -> None:
    """Add a VIP, with no backends yet.

    The VIP is ADDR:PORT/PROTO, with tcp or udp; port 0 takes every port of the address
    that no VIP with the exact port claims. Packets to it are dropped (counted as
    drop_no_backend) until `backend add` gives it a backend; a local-mode VIP takes
    none. Adding a VIP that exists is an error: change one with `apply -f`, or delete
    and add it again.

    \b
    Example:
      pyxlb vip add 192.0.2.10:80/tcp
      pyxlb vip add '[2001:db8::53]:0/udp' --mode l2 --affinity client-ip --announce
      pyxlb vip add 192.0.2.10:443/tcp --source-range 198.51.100.0/24 --source-range 203.0.113.7
    """
    from pyxlb.state import Vip
    try:        # checked before the datapath is opened and locked
        new = Vip(key=key, mode=mode, flow_table=not no_flow_table, affinity=affinity,
                  announce=announce, ring_size=ring_size, source_ranges=tuple(source_ranges))
    except StateError as exc:
        raise Fail(one_line(exc)) from None
    with opened() as dp, dp.editing():
        state = dp.current_state()
        if state.vip(key) is not None:
            raise Fail(f"VIP {key} already exists (remove it first, or use apply -f)")
        apply_state(dp, state.with_vip(new))


@vip.command("del")
@click.argument("key", metavar="ADDR:PORT/PROTO", type=VIP)
def vip_del(key: VipKey) -> None:
    """Remove a VIP with its backends.

    Its traffic stops being balanced at once: packets to it pass to the kernel.

    \b
    Example:
      pyxlb vip del 192.0.2.10:80/tcp
    """
    with opened() as dp, dp.editing():
        apply_state(dp, dp.current_state().without_vip(key))


@vip.command("list")
@JSON_OPTION
def vip_list(as_json: bool) -> None:
    """List the VIPs, with their settings.

    One row per VIP: mode, flow table, affinity, announcement, ring size, how many of its
    backends are active, and the client prefixes it admits ("any" when it has no source
    ranges). --json prints the whole state, backends and every source range included, in
    the format `apply -f` reads.

    \b
    Example:
      pyxlb vip list --json > state.json && pyxlb apply -f state.json
    """
    with opened() as dp:
        state = dp.current_state()
    if as_json:
        echo_json(state.to_dict())
        return
    if not len(state):
        click.echo("no VIPs")
        return
    rows = []
    for v in state:
        active = sum(1 for b in v.backends if b.state == "active")
        rows.append((str(v.key), v.mode, _on_off(v.flow_table), v.affinity,
                     "yes" if v.announce else "no", v.ring_size,
                     f"{active}/{len(v.backends)}", _ranges_cell(v.source_ranges)))
    click.echo(table(("VIP", "MODE", "FLOW TABLE", "AFFINITY", "ANNOUNCE", "RING",
                      "BACKENDS (ACTIVE/ALL)", "SOURCE RANGES"), rows, right=(5, 6)))


def _ranges_cell(ranges, shown: int = 3) -> str:
    """A VIP's source ranges for a table cell: "any" for none; past `shown`, a count of
    the rest (--json lists them all)."""
    if not ranges:
        return "any"
    text = ",".join(str(n) for n in ranges[:shown])
    return text + (f" (+{len(ranges) - shown} more)" if len(ranges) > shown else "")


# -- backends --------------------------------------------------------------------------


@cli.group(invoke_without_command=True, subcommand_metavar="COMMAND [ARGS]...")
@click.pass_context
def backend(ctx: click.Context) -> None:
    """Add, drain, remove and list the backends of a VIP.

    A backend is an address; the same address may serve several VIPs. In ipip mode it is
    the host the packets are tunnelled to; in l2 mode a host on this segment.
    """
    require_command(ctx)


def _vip_of(state: DesiredState, key: VipKey):
    v = state.vip(key)
    if v is None:
        raise Fail(f"no VIP {key}")
    return v


@backend.command("add")
@click.argument("key", metavar="VIP", type=VIP)
@click.argument("address", metavar="ADDR", type=ADDRESS)
@click.option("--weight", type=DECIMAL, default=1, show_default=True,
              help="Share of the VIP's new flows, relative to the other backends (0-65535; "
                   "0 keeps the backend out of the ring).")
@click.option("--mac", type=MAC,
              help="The backend's MAC, for l2 mode when it should not be looked up in the "
                   "neighbour table.")
def backend_add(key: VipKey, address, weight: int, mac: Optional[str]) -> None:
    """Add backend ADDR to VIP.

    The VIP's Maglev ring is rebuilt and swapped in at once; flows already in the flow
    table stay on their backends. Adding an address the VIP already has is an error.

    \b
    Example:
      pyxlb backend add 192.0.2.10:80/tcp 10.0.1.3 --weight 2
    """
    try:        # the backend alone is checked before the datapath is opened and locked;
        b = Backend(address=address, weight=weight, mac=mac)    # with its VIP, inside
    except StateError as exc:
        raise Fail(one_line(exc)) from None
    with opened() as dp, dp.editing():
        state = dp.current_state()
        v = _vip_of(state, key)
        if v.backend(address) is not None:
            raise Fail(f"duplicate backend: {address} is already a backend of VIP {key}")
        apply_state(dp, state.with_vip(v.replace(backends=v.backends + (b,))))


@backend.command("drain")
@click.argument("key", metavar="VIP", type=VIP)
@click.argument("address", metavar="ADDR", type=ADDRESS)
def backend_drain(key: VipKey, address) -> None:
    """Drain backend ADDR of VIP: no new flows.

    The backend leaves the ring, so it gets no new flows, while the flows already pinned
    to it in the flow table keep going. Remove it with `backend del` once they ended.

    \b
    Example:
      pyxlb backend drain 192.0.2.10:80/tcp 10.0.1.3
    """
    with opened() as dp, dp.editing():
        state = dp.current_state()
        v = _vip_of(state, key)
        b = v.backend(address)
        if b is None:
            raise Fail(f"VIP {key} has no backend {address}")
        drained = tuple(dataclasses.replace(x, state="draining") if x is b else x
                        for x in v.backends)
        apply_state(dp, state.with_vip(v.replace(backends=drained)))


@backend.command("del")
@click.argument("key", metavar="VIP", type=VIP)
@click.argument("address", metavar="ADDR", type=ADDRESS)
def backend_del(key: VipKey, address) -> None:
    """Remove backend ADDR from VIP.

    Its flows of this VIP are re-hashed onto the other backends at once (drain it first
    to let them finish).

    \b
    Example:
      pyxlb backend del 192.0.2.10:80/tcp 10.0.1.3
    """
    with opened() as dp, dp.editing():
        state = dp.current_state()
        v = _vip_of(state, key)
        if v.backend(address) is None:
            raise Fail(f"VIP {key} has no backend {address}")
        left = tuple(b for b in v.backends if b.address != address)
        apply_state(dp, state.with_vip(v.replace(backends=left)))


@backend.command("list")
@click.argument("key", metavar="VIP", type=VIP)
@JSON_OPTION
def backend_list(key: VipKey, as_json: bool) -> None:
    """List the backends of VIP.

    Address, weight, state (active or draining), MAC (l2 mode) and whether the backend is
    this node.

    \b
    Example:
      pyxlb backend list 192.0.2.10:80/tcp
    """
    with opened() as dp:
        v = _vip_of(dp.current_state(), key)
    backends = vip_to_dict(v)["backends"]
    if as_json:
        echo_json({"vip": str(v.key), "backends": backends})
        return
    if not backends:
        click.echo(f"VIP {key} has no backends")
        return
    rows = [(b["address"], b["weight"], b["state"], b.get("mac", "-"),
             "yes" if b.get("local") else "no") for b in backends]
    click.echo(table(("ADDRESS", "WEIGHT", "STATE", "MAC", "LOCAL"), rows, right=(1,)))


# -- apply -----------------------------------------------------------------------------


@cli.command("apply")
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


@cli.command()
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


# -- decap -----------------------------------------------------------------------------


@cli.group(invoke_without_command=True, subcommand_metavar="COMMAND [ARGS]...")
@click.pass_context
def decap(ctx: click.Context) -> None:
    """Run the decapsulator on a host that is only a backend.

    It strips the IPIP/IP6IP6 header that the balancer added, but only for packets to the
    VIPs it is told about (and, with --allow-source, only from the LB nodes' prefixes), so
    it is not an open tunnel. It pins beside a balancer in the same --pin-dir and shares
    its counters, config and allowed sources.
    """
    require_command(ctx)


@decap.command("attach")
@click.argument("iface", type=IFACE)
@click.option("--vip", "vips", type=ADDRESS, multiple=True, required=True,
              help="A VIP address to accept tunnelled packets for (repeat for several).")
@click.option("--allow-source", "sources", type=PREFIX, multiple=True,
              help="Accept tunnels only from this outer source prefix (repeat for several: "
                   "the LB nodes' encap sources). Without it, any source is accepted.")
@click.option("--mode", type=click.Choice(["native", "generic"]), default="native",
              show_default=True, help="XDP mode, as for `pyxlb attach`.")
def decap_attach(iface: str, vips, sources: Sequence[str], mode: str) -> None:
    """Run the decapsulator on interface IFACE for the given VIP addresses.

    \b
    Example:
      pyxlb decap attach eth0 --vip 192.0.2.10 --vip 2001:db8::10 \\
          --allow-source 10.255.0.0/24
    """
    _ifindex(iface)
    pin_dir = click.get_current_context().find_object(_Options).pin_dir
    created = not DecapPath.exists(pin_dir)
    with opened(DecapPath, create=True) as dc:
        try:
            for a in vips:
                dc.add_vip(a)
            for p in sources:
                dc.add_source(p)
            dc.set_config(check_source=bool(sources))
            link = dc.attach(iface, mode)
        except BaseException:
            if created:
                _remove_new(dc)
            raise
        if created:
            click.echo(f"created the decapsulator pinned at {dc.pin_dir}")
        state = "attached" if link["changed"] else "already attached"
        click.echo(f"{state} to {iface} ({mode} mode, program id {dc.prog.id})")
        click.echo(f"VIPs: {', '.join(map(str, vips))}")
        click.echo(f"sources: {', '.join(sources) if sources else 'any (no source check)'}")


@decap.command("detach")
@click.argument("iface", type=IFACE)
def decap_detach(iface: str) -> None:
    """Take the decapsulator off IFACE.

    When no interface runs it any more, its pinned program and maps are removed. This
    works on a decapsulator left by another version of pyxlb too.

    \b
    Example:
      pyxlb decap detach eth0
    """
    _ifindex(iface)
    if _took_off_foreign(DecapPath, iface, f"detached the decapsulator from {iface}",
                         "no interface runs it any more: removed its pins from {pin_dir}"):
        return
    with opened(DecapPath) as dc:
        removed = dc.detach(iface)
        click.echo(f"detached the decapsulator from {iface}")
        if removed:
            click.echo(f"no interface runs it any more: removed its pins from {dc.pin_dir}")


# -- metrics ---------------------------------------------------------------------------


@cli.command()
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


# -- the namespace lab -----------------------------------------------------------------

PREFIX = click.option("--prefix", default="xlb", show_default=True,
                      help="Name prefix of the lab's namespaces and pin directories "
                           "(1-8 letters, digits or '-'); two labs with different prefixes "
                           "coexist.")


@cli.group(invoke_without_command=True)
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
@PREFIX
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
@PREFIX
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
@PREFIX
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
@PREFIX
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards.")
def lab_demo(prefix: str, keep: bool) -> None:
    """Build the lab, send a few hundred real TCP connections through the XDP balancer,
    and show where they went, what happens when a backend goes and when the other LB node
    takes over, and the counters; then tear the lab down. Under a minute."""
    from pyxlb import labdemo

    try:
        labdemo.run(prefix, keep=keep, out=click.echo)
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None


# -- the Kubernetes agent ------------------------------------------------------------------

from pyxlb.k8s.command import agent as _agent_command  # noqa: E402

cli.add_command(_agent_command)

from pyxlb.announce.command import announce as _announce_command  # noqa: E402

cli.add_command(_announce_command)
