"""`pyxlb decap ...`: the decapsulator, for a host that is only a backend."""

from __future__ import annotations

from typing import Sequence

import click

from pyxlb import node
from pyxlb.cli.common import (ADDRESS, FAILURES, IFACE, PREFIX, UPGRADE_OPTION, Fail,
                              current_pin_dir, ifindex, one_line, opened, require_command,
                              took_off_foreign)
from pyxlb.datapath import DecapPath


@click.group(invoke_without_command=True, subcommand_metavar="COMMAND [ARGS]...")
@click.pass_context
def decap(ctx: click.Context) -> None:
    """Run the decapsulator on a host that is only a backend.

    It strips the IPIP/IP6IP6 header that the balancer added, but only for packets to the
    VIPs it is told about (and, with --allow-source, only from the LB nodes' prefixes), so
    it is not an open tunnel. It pins beside a balancer in the same --pin-dir and shares
    its counters, config, allowed sources and chain peers (which the balancer's applies
    then set).
    """
    require_command(ctx)


@decap.command("attach")
@click.argument("iface", type=IFACE)
@click.option("--vip", "vips", type=ADDRESS, multiple=True, required=True,
              help="A VIP address to accept tunnelled packets for (repeat for several).")
@click.option("--allow-source", "sources", type=PREFIX, multiple=True,
              help="Accept tunnels only from this outer source prefix (repeat for several: "
                   "the LB nodes' encap sources). Without it, any source is accepted.")
@click.option("--peer", "peers", type=ADDRESS, multiple=True,
              help="A backend that may hand this host a stateless VIP's connections (repeat "
                   "for several: normally every backend of those VIPs, this host's own "
                   "address included or not). A segment of a connection this host has no "
                   "socket for goes on to its previous owner among them. Given, the peers "
                   "replace those the decapsulator had; none given: kept.")
@click.option("--mode", type=click.Choice(["native", "generic"]), default="native",
              show_default=True, help="XDP mode, as for `pyxlb attach`.")
@UPGRADE_OPTION
def decap_attach(iface: str, vips, sources: Sequence[str], peers, mode: str,
                 upgrade: str) -> None:
    """Run the decapsulator on interface IFACE for the given VIP addresses.

    \b
    Example:
      pyxlb decap attach eth0 --vip 192.0.2.10 --vip 2001:db8::10 \\
          --allow-source 10.255.0.0/24
      pyxlb decap attach eth0 --vip 192.0.2.10 --peer 10.0.1.1 --peer 10.0.1.2 \\
          --peer 10.0.1.3
    """
    ifindex(iface)
    try:
        up = node.bring_up_decap(current_pin_dir(), (iface,), vips, sources, mode, upgrade,
                                 peers)
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
    with up.dp as dc:
        link = up.links[iface]
        if up.created:
            click.echo(f"created the decapsulator pinned at {dc.pin_dir}")
        if dc.upgraded is not None:
            click.echo(dc.upgraded.summary())
        state = "attached" if link["changed"] else "already attached"
        click.echo(f"{state} to {iface} ({mode} mode, program id {dc.prog.id})")
        click.echo(f"VIPs: {', '.join(map(str, vips))}")
        click.echo(f"sources: {', '.join(sources) if sources else 'any (no source check)'}")
        named = dc.tables.chain_peers.read()
        shown = ", ".join(map(str, sorted(named.values(), key=_order))) or "none"
        click.echo(f"chain peers: {shown}")
        shared = sorted(set(peers) - set(named.values()), key=_order)
        if shared:
            click.echo(f"note: {', '.join(map(str, shared))} share a chain id with another "
                       f"peer: connections are not chained to them")


def _order(address):
    return (address.version, address)


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
    ifindex(iface)
    if took_off_foreign(DecapPath, iface, f"detached the decapsulator from {iface}",
                        "no interface runs it any more: removed its pins from {pin_dir}"):
        return
    with opened(DecapPath) as dc:
        removed = dc.detach(iface)
        click.echo(f"detached the decapsulator from {iface}")
        if removed:
            click.echo(f"no interface runs it any more: removed its pins from {dc.pin_dir}")
