"""`pyxlb vip ...` and `pyxlb backend ...`: edit the VIPs and their backends one at a time,
each edit applied as a whole new DesiredState."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import click

from pyxlb.cli.common import (ADDRESS, DECIMAL, JSON_OPTION, MAC, PREFIX, VIP, Fail,
                              apply_state, echo_json, on_off, one_line, opened,
                              require_command, table)
from pyxlb.state import (AFFINITIES, MODES, RING_SIZE_DEFAULT, Backend, DesiredState,
                         StateError, Vip, VipKey, vip_to_dict)

# -- VIPs ------------------------------------------------------------------------------


@click.group(invoke_without_command=True, subcommand_metavar="COMMAND [ARGS]...")
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
        rows.append((str(v.key), v.mode, on_off(v.flow_table), v.affinity,
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


@click.group(invoke_without_command=True, subcommand_metavar="COMMAND [ARGS]...")
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
