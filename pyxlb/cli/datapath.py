"""`pyxlb attach`, `pyxlb detach` and `pyxlb status`: the balancer's datapath itself."""

from __future__ import annotations

import ipaddress
import os
from typing import Dict, Optional, Sequence, Tuple

import click

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb import node as node_mod
from pyxlb.cli.common import (FAILURES, IFACE, JSON_OPTION, PREFIX, Fail, current_pin_dir,
                              UPGRADE_OPTION, echo_json, ifindex, on_off, one_line, opened,
                              table, took_off_foreign)
from pyxlb.datapath import CHAIN_WINDOW_MAX, FLOWS_PER_SET, Datapath, DecapPath, rated_flows
from pyxlb.datapath.apply import chain_window
from pyxlb.datapath import upgrade as upgrade_mod
from pyxlb.datapath.maps import BACKENDS, FLOWS4, FLOWS6, RINGS
from pyxlb.node import NodeSettings, encap_source

# maps counted entry by entry for `status` (the others are arrays, always full)
_COUNTED_TYPES = frozenset((_bpf.MAP_TYPE_HASH, _bpf.MAP_TYPE_LRU_HASH, _bpf.MAP_TYPE_LPM_TRIE,
                            _bpf.MAP_TYPE_PERCPU_HASH, _bpf.MAP_TYPE_LRU_PERCPU_HASH,
                            _bpf.MAP_TYPE_HASH_OF_MAPS))


# -- attach / detach -------------------------------------------------------------------


@click.command()
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
              help="Established IPv4 flows the flow table is rated for: with no more, 99.9% "
                   "of their packets find their flow. The table gets at least "
                   f"{1 / FLOWS_PER_SET:.2f} sets a flow (sets of {L.FLOW4_WAYS} ways, 128 "
                   "bytes), rounded up to a power of two: 320-640 bytes of kernel memory a "
                   f"flow. [default: {rated_flows(L.FLOW4_SETS)}]")
@click.option("--max-flows6", type=click.IntRange(1024, 1 << 26),
              help="The same for IPv6 (sets of 256 bytes: 640-1280 bytes a flow). "
                   f"[default: {rated_flows(L.FLOW6_SETS)}]")
@click.option("--max-inserts", type=click.IntRange(0, 0xFFFFFFFF), metavar="N",
              help="New flows each CPU records a second in each flow table. Above it a new "
                   "flow is still balanced by the ring, but not recorded (counted as "
                   "flow_insert_limited). 0: no limit. Default: keep; a new datapath gets "
                   "its table's ways divided by the CPUs, so that a flood cannot rewrite a "
                   "table faster than once a second.")
@click.option("--chain-window", type=click.IntRange(0, CHAIN_WINDOW_MAX), metavar="SECONDS",
              help="How long a stateless VIP's ring slot that changed hands remembers its "
                   "previous owner, so that backends pass that owner's connections to it "
                   f"(0: the default, {L.CHAIN_WINDOW_DEFAULT}). Applies after this one use "
                   "it. Default: keep.")
@UPGRADE_OPTION
def attach(iface: str, mode: str, encap_sources: Sequence[str], seed: Optional[int],
           mtu: Optional[int], max_vips: Optional[int], max_flows: Optional[int],
           max_flows6: Optional[int], max_inserts: Optional[int],
           chain_window: Optional[int], upgrade: str) -> None:
    """Run the balancer on interface IFACE.

    Creates the datapath under --pin-dir if there is none (an existing one is adopted
    untouched, with its VIPs; one made by another version of pyxlb is first upgraded to
    this one under traffic, see --upgrade), sets the options given, attaches the XDP program, and
    registers IFACE's addresses as this node's own, so tunnelled VIP packets sent to this
    node are decapsulated inline. Attaching again to the same interface changes nothing.

    \b
    Example:
      pyxlb attach eth0 --encap-source 10.255.0.0/24 --seed 42
    """
    ifindex(iface)      # an unknown interface: one line, before anything is made
    src: Dict[int, str] = {}
    for prefix in encap_sources:
        family = ipaddress.ip_network(prefix).version
        if family in src:
            raise Fail(f"--encap-source: one prefix per address family, got {src[family]} "
                       f"and {prefix}")
        src[family] = prefix
    bring_up(iface, mode, src, seed, mtu, max_vips, max_flows, max_flows6, upgrade,
             max_inserts, chain_window)


def bring_up(iface: str, mode: str, src: Dict[int, str], seed: Optional[int],
             mtu: Optional[int], max_vips: Optional[int], max_flows: Optional[int],
             max_flows6: Optional[int], upgrade: str = "auto",
             max_inserts: Optional[int] = None, chain_window: Optional[int] = None) -> None:
    """pyxlb.node.bring_up at --pin-dir on `iface`, and say what it did."""
    settings = NodeSettings(interfaces=(iface,), mode=mode, seed=seed, mtu=mtu,
                            encap_sources=src, max_vips=max_vips, max_flows=max_flows,
                            max_flows6=max_flows6, max_inserts=max_inserts,
                            chain_window=chain_window, upgrade=upgrade)
    try:
        node = node_mod.bring_up(current_pin_dir(), settings)
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
    with node.dp as dp:
        cfg, link = node.config, node.links[iface]
        if node.created:
            click.echo(f"created the datapath pinned at {dp.pin_dir}")
        if node.upgraded:
            click.echo(node.upgraded)
        for text in node.notes:
            click.echo(f"note: {text}")
        if link["changed"]:
            click.echo(f"attached to {iface} ({mode} mode, program id {dp.prog.id})")
        else:
            click.echo(f"already attached to {iface} ({mode} mode, program id {dp.prog.id})")
        click.echo(f"config: {_config_summary(cfg)}")
        if node.addresses:
            click.echo(f"local addresses: {', '.join(map(str, node.addresses))}")
        for family in (4, 6):
            if not cfg[f"src{family}_plen"]:
                click.echo(f"note: no IPv{family} encap source: IPIP VIP traffic to IPv"
                           f"{family} backends is dropped until --encap-source sets one")


def _config_summary(cfg: dict) -> str:
    srcs = ", ".join(filter(None, (encap_source(cfg, 4), encap_source(cfg, 6)))) or "none"
    return (f"seed {cfg['seed']}, mtu {cfg['mtu']}, encap source {srcs}, chain window "
            f"{_window_text(cfg)}")


def _window_text(cfg: dict) -> str:
    return f"{chain_window(cfg)} s" + ("" if cfg["chain_window"] else " (default)")


@click.command()
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
    ifindex(iface)
    if took_off_foreign(Datapath, iface, f"detached from {iface}",
                        "no interface runs the balancer any more: removed the datapath "
                        "pinned at {pin_dir}"):
        return
    with opened() as dp:
        removed = node_mod.take_down(dp, iface)
        click.echo(f"detached from {iface}")
        if removed:
            click.echo(f"no interface runs the balancer any more: removed the datapath "
                       f"pinned at {dp.pin_dir}")


# -- status ----------------------------------------------------------------------------


@click.command()
@JSON_OPTION
def status(as_json: bool) -> None:
    """Show the datapath and how full its maps are.

    Where it is pinned, its datapath version (and this pyxlb's, when they differ: then
    only that is shown, until `pyxlb upgrade` or the agent upgrades it), its program and
    the interfaces running it, its config (seed, MTU, encap sources; the stateless chain
    window and chain peers), how many VIPs, backends, rings and flows it holds, and
    entries against capacity for each map that can fill up; plus the decapsulator, when
    one is pinned in the same directory.

    \b
    Example:
      pyxlb status
      pyxlb --pin-dir /sys/fs/bpf/lb2 status --json
    """
    pending, version = _pending_upgrade()
    if pending is not None:
        if as_json:
            echo_json(pending)
        else:
            click.echo(f"pin dir   {pending['pin_dir']}\n"
                       f"version   {pending['version']} (this pyxlb: {pending['this_version']})"
                       f"\nupgrade   needed{' (an interrupted one is pending)' if pending['interrupted'] else ''}"
                       f": `pyxlb upgrade`, or the agent's next start, does it under traffic")
        return
    with opened() as dp:
        data = _status(dp, version)
    if as_json:
        echo_json(data)
        return
    c = data["config"]
    ifaces = ", ".join(f"{i['name']} ({i['mode']})" for i in data["interfaces"]) or "none"
    lines = [
        ("pin dir", data["pin_dir"]),
        ("version", data["version"]),
        ("program", f"xlb_balancer, id {data['program_id']}"),
        ("interfaces", ifaces),
        ("config", f"seed {c['seed']}, mtu {c['mtu']}, encap source IPv4 "
                   f"{c['encap_source4'] or 'none'}, IPv6 {c['encap_source6'] or 'none'}, "
                   f"decap source check {on_off(c['decap_check_source'])}"),
        ("stateless", f"chain window {c['chain_window']} s, {data['chain_peers']} chain "
                      f"peers"),
        ("state", f"{data['vips']} VIPs, {data['backends']} backends, {data['rings']} rings, "
                  f"{data['flows']} flows in the flow table"),
        ("flow tables", "; ".join(
            f"IPv{fam} {m['ways']:,} ways rated for {m['max_entries']:,} flows, "
            + (f"{limit:,} new a CPU a second" if limit else "no insertion limit")
            for fam, m, limit in ((4, data["maps"][FLOWS4], c["max_inserts4"]),
                                  (6, data["maps"][FLOWS6], c["max_inserts6"])))),
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


def _pending_upgrade() -> Tuple[Optional[dict], str]:
    """(what status shows of a datapath this version cannot read yet, another version's or
    one whose upgrade was interrupted: None when it can be read or there is none; the
    version pinned)."""
    where = os.path.abspath(current_pin_dir())
    try:
        if not Datapath.exists(where):
            return None, ""
        interrupted = upgrade_mod.interrupted(where)
        have, want = upgrade_mod.versions(where)
    except FAILURES as exc:
        raise Fail(one_line(exc)) from None
    if have == want and not interrupted:
        return None, str(have)
    return {"pin_dir": where, "version": str(have), "this_version": str(want),
            "upgrade_needed": True, "interrupted": interrupted}, str(have)


def _status(dp: Datapath, version: str) -> dict:
    cfg = dp.config()
    layout = dp.layout()
    maps = {}
    for name in dp.maps.names():
        m = dp.maps[name]
        if m.type in _COUNTED_TYPES:
            maps[name] = {"entries": m.count(), "max_entries": m.max_entries}
    # arrays hold every index: count the ids in use instead (and the IPv4 flows, in ways)
    # (max_entries: the established flows a table is rated for, what --max-flows asks)
    (n4, n6), (cap4, cap6) = dp.flow_counts(), dp.flow_capacities()
    ways4, ways6 = dp.flow_ways()
    maps[FLOWS4] = {"entries": n4, "max_entries": cap4, "ways": ways4}
    maps[FLOWS6] = {"entries": n6, "max_entries": cap6, "ways": ways6}
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
        "version": version,
        "program_id": dp.prog.id,
        "interfaces": dp.interfaces(),
        "config": {"seed": cfg["seed"], "mtu": cfg["mtu"],
                   "encap_source4": encap_source(cfg, 4), "encap_source6": encap_source(cfg, 6),
                   "decap_check_source": bool(cfg["flags"] & L.CFG_DECAP_CHECK_SOURCE),
                   "max_inserts4": cfg["flow_inserts4"], "max_inserts6": cfg["flow_inserts6"],
                   "chain_window": chain_window(cfg)},
        "vips": len(layout.state),
        "backends": len(layout.backend_ids),
        "rings": len(layout.ring_ids),
        "chain_peers": len(dp.tables.chain_peers.read()),
        "flows": maps[FLOWS4]["entries"] + maps[FLOWS6]["entries"],
        "maps": dict(sorted(maps.items())),
        "decap": decap,
    }
