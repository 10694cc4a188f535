"""`pyxlb vip ...` and `pyxlb backend ...`: edit the VIPs and their backends one at a time,
each edit applied as a whole new DesiredState."""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import click

from pyxlb.cli.common import (ADDRESS, DECIMAL, JSON_OPTION, MAC, PREFIX, VIP, Fail,
                              SecondsType, apply_state, echo_json, on_off, one_line, opened,
                              require_command, table)
from pyxlb.state import (AFFINITIES, HEALTH_INTERVAL, HEALTH_ON_FAIL, HEALTH_TYPES,
                         HEALTH_VIAS, MODES, RING_SIZE_DEFAULT, Backend, DesiredState,
                         HealthSpec, StateError, Vip, VipKey, vip_to_dict)

# -- health-check options (vip add, backend add, vip health, backend health) ----------------

# option name -> HealthSpec field
_HEALTH_FIELDS = {"health": "type", "health_port": "port", "health_path": "path",
                  "health_expect": "expect", "health_interval": "interval",
                  "health_timeout": "timeout", "health_rise": "rise", "health_fall": "fall",
                  "health_via": "via", "health_on_fail": "on_fail"}
_HEALTH_OPTIONS = [
    click.option("--health", type=click.Choice(HEALTH_TYPES),
                 help="Health-check the backends: tcp (a connection is accepted), http (a "
                      "GET answers an expected status) or none. `pyxlb serve` runs the "
                      "checks; see docs/config.md, Health checks."),
    click.option("--health-port", type=DECIMAL,
                 help="Port to check (default: the VIP's; a port-0 VIP needs one). Through "
                      "the tunnel it must be the VIP's port."),
    click.option("--health-path", metavar="PATH",
                 help="HTTP path to GET (default /)."),
    click.option("--health-expect", metavar="STATUS[-STATUS]",
                 help="HTTP statuses that pass (default 200-399)."),
    click.option("--health-interval", type=SecondsType(*HEALTH_INTERVAL),
                 help="Seconds between checks of a backend (default 2)."),
    click.option("--health-timeout", type=SecondsType(0, HEALTH_INTERVAL[1]),
                 help="Seconds a check may take, at most the interval (default 1)."),
    click.option("--health-rise", type=DECIMAL,
                 help="Passes in a row that bring a down backend back (default 2)."),
    click.option("--health-fall", type=DECIMAL,
                 help="Failures in a row that put a backend down (default 3)."),
    click.option("--health-via", type=click.Choice(HEALTH_VIAS),
                 help="tunnel (default): to the VIP, encapsulated to the backend as "
                      "clients' packets are; direct: to the backend's own address."),
    click.option("--health-on-fail", type=click.Choice(HEALTH_ON_FAIL),
                 help="drain (default): a down backend gets no new flows, its flows go "
                      "on; gone: its flows of this VIP are moved too."),
]


def health_options(f):
    for option in reversed(_HEALTH_OPTIONS):
        f = option(f)
    return f


def _health_given(opts) -> dict:
    """{HealthSpec field: value} of the health options given."""
    return {_HEALTH_FIELDS[name]: value for name, value in opts.items()
            if name in _HEALTH_FIELDS and value is not None}


def _health_spec(given: dict, base: Optional[HealthSpec], what: str) -> Optional[HealthSpec]:
    """The spec the options make: `given` merged onto `base` (the spec in force, the VIP's
    for a backend); None when no option was given. Without a base, --health is needed."""
    if not given:
        return None
    if base is None and "type" not in given:
        options = ", ".join(f"--{n.replace('_', '-')}" for n, f in _HEALTH_FIELDS.items()
                            if f in given)
        raise Fail(f"{options} without --health: {what} has no health checks to change "
                   f"(say --health tcp, http or none)")
    try:
        return HealthSpec.from_dict(given, base)
    except StateError as exc:
        raise Fail(one_line(exc)) from None


def _health_cell(spec: Optional[HealthSpec], key: VipKey) -> str:
    """A spec in a table cell: "-" when unchecked, else type, port and how."""
    if spec is None or not spec.checked:
        return "-" if spec is None else "none"
    text = f"{spec.type}:{spec.port_for(key)}"
    if spec.type == "http":
        text += spec.path
    extra = [x for x in (spec.via == "direct" and "direct",
                         spec.on_fail == "gone" and "gone") if x]
    return text + (f" ({', '.join(extra)})" if extra else "")

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
@click.option("--stateless", is_flag=True,
              help="TCP in ipip mode only: no flow table, and a ring slot that changes hands "
                   "remembers its previous owner for the chain window (attach "
                   "--chain-window); a backend without the connection passes its packets "
                   "there, so established connections survive backend changes. Backends "
                   "run the decapsulator with --peer (see docs/config.md).")
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
@health_options
def vip_add(key: VipKey, mode: str, no_flow_table: bool, stateless: bool, affinity: str,
            ring_size: int, announce: bool, source_ranges: Sequence[str], **health) -> None:
    """Add a VIP, with no backends yet.

    The VIP is ADDR:PORT/PROTO, with tcp or udp; port 0 takes every port of the address
    that no VIP with the exact port claims. Packets to it are dropped (counted as
    drop_no_backend) until `backend add` gives it a backend; a local-mode VIP takes
    none. Adding a VIP that exists is an error: change one with `apply -f`, or delete
    and add it again (its health checks: `vip health`).

    --health and the --health-* options say how its backends are health-checked (by
    `pyxlb serve`); a backend that fails leaves the ring until it passes again.

    \b
    Example:
      pyxlb vip add 192.0.2.10:80/tcp
      pyxlb vip add '[2001:db8::53]:0/udp' --mode l2 --affinity client-ip --announce
      pyxlb vip add 192.0.2.10:443/tcp --source-range 198.51.100.0/24 --source-range 203.0.113.7
      pyxlb vip add 192.0.2.10:8080/tcp --health http --health-path /healthz
      pyxlb vip add 192.0.2.10:443/tcp --stateless
    """
    if stateless and no_flow_table:
        raise Fail("--stateless and --no-flow-table exclude each other (a stateless VIP has "
                   "no flow table already)")
    spec = _health_spec(_health_given(health), None, f"VIP {key}")
    try:        # checked before the datapath is opened and locked
        new = Vip(key=key, mode=mode, flow_table=not no_flow_table, stateless=stateless,
                  affinity=affinity, announce=announce, ring_size=ring_size,
                  source_ranges=tuple(source_ranges), health=spec)
    except StateError as exc:
        raise Fail(one_line(exc)) from None
    with opened() as dp, dp.editing():
        state = dp.current_state()
        if state.vip(key) is not None:
            raise Fail(f"VIP {key} already exists (remove it first, or use apply -f)")
        apply_state(dp, state.with_vip(new))


@vip.command("health")
@click.argument("key", metavar="ADDR:PORT/PROTO", type=VIP)
@health_options
@click.option("--remove", is_flag=True,
              help="Stop checking the VIP's backends (their own checks stay).")
def vip_health(key: VipKey, remove: bool, **health) -> None:
    """Change how the backends of a VIP are health-checked.

    The options given change those fields of the VIP's checks, the others stay; a VIP
    without checks needs --health. A backend with checks of its own keeps the fields in
    which they differ from the VIP's and follows the VIP in the others (as a state file
    says them). --remove takes its checks away: its backends are then
    not checked (except those with checks of their own) and none is down. The backends'
    verdicts stay while they stay checked.

    \b
    Example:
      pyxlb vip health 192.0.2.10:80/tcp --health tcp
      pyxlb vip health 192.0.2.10:80/tcp --health-interval 5 --health-fall 2
      pyxlb vip health 192.0.2.10:80/tcp --remove
    """
    given = _health_given(health)
    if remove == bool(given):
        raise Fail("give --remove or the health options to change (see --help)")
    with opened() as dp, dp.editing():
        state = dp.current_state()
        v = _vip_of(state, key)
        spec = None if remove else _health_spec(given, v.health, f"VIP {key}")
        backends = v.backends
        if spec is not None and v.health is not None:
            # a backend's own checks keep what differs from the VIP's, the rest follows it
            # (as in a state file, where a backend's health gives only what differs)
            backends = tuple(b if b.health is None else dataclasses.replace(
                b, health=HealthSpec.from_dict(b.health.to_dict(v.health), spec))
                for b in backends)
        try:
            new = v.replace(health=spec, backends=backends)
        except StateError as exc:
            raise Fail(one_line(exc)) from None
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

    One row per VIP: mode, flow table (on, off, or stateless), affinity, announcement, ring
    size, how many of its backends are active (and, of those, how many failed their
    health checks), its health checks ("-": none) and the client prefixes it admits ("any"
    when it has no source ranges). --json prints the whole state, backends, source ranges
    and health checks included, in the format `apply -f` reads (without verdicts: `pyxlb
    health` shows them).

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
        down = sum(1 for b in v.backends if b.state == "active" and b.down)
        rows.append((str(v.key), v.mode, "stateless" if v.stateless else on_off(v.flow_table),
                     v.affinity,
                     "yes" if v.announce else "no", v.ring_size,
                     f"{active}/{len(v.backends)}" + (f" ({down} down)" if down else ""),
                     _health_cell(v.health, v.key), _ranges_cell(v.source_ranges)))
    click.echo(table(("VIP", "MODE", "FLOW TABLE", "AFFINITY", "ANNOUNCE", "RING",
                      "BACKENDS (ACTIVE/ALL)", "HEALTH", "SOURCE RANGES"), rows,
                     right=(5, 6)))


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
@health_options
def backend_add(key: VipKey, address, weight: int, mac: Optional[str], **health) -> None:
    """Add backend ADDR to VIP.

    The VIP's Maglev ring is rebuilt and swapped in at once; flows already in the flow
    table stay on their backends. Adding an address the VIP already has is an error.

    The backend is health-checked as its VIP says; --health and the --health-* options
    change those of its VIP's settings for this backend alone (without VIP checks,
    --health is needed). A new backend starts not down.

    \b
    Example:
      pyxlb backend add 192.0.2.10:80/tcp 10.0.1.3 --weight 2
      pyxlb backend add 192.0.2.10:80/tcp 2001:db8::3 --health-via direct
    """
    given = _health_given(health)
    try:        # the backend alone is checked before the datapath is opened and locked;
        b = Backend(address=address, weight=weight, mac=mac)    # with its VIP, inside
        if given:
            HealthSpec.from_dict(given)     # the options alone (merged with the VIP's later)
    except StateError as exc:
        raise Fail(one_line(exc)) from None
    with opened() as dp, dp.editing():
        state = dp.current_state()
        v = _vip_of(state, key)
        if v.backend(address) is not None:
            raise Fail(f"duplicate backend: {address} is already a backend of VIP {key}")
        spec = _health_spec(given, v.health, f"VIP {key}")
        try:
            new = v.replace(backends=v.backends + (dataclasses.replace(b, health=spec),))
        except StateError as exc:
            raise Fail(one_line(exc)) from None
        apply_state(dp, state.with_vip(new))


@backend.command("health")
@click.argument("key", metavar="VIP", type=VIP)
@click.argument("address", metavar="ADDR", type=ADDRESS)
@health_options
@click.option("--inherit", is_flag=True,
              help="Drop the backend's own checks: it is checked as its VIP says.")
def backend_health(key: VipKey, address, inherit: bool, **health) -> None:
    """Change how backend ADDR of VIP is health-checked.

    The options given change those fields of the checks the backend gets now (its own,
    else its VIP's); the result becomes the backend's own checks (--health none leaves it
    unchecked). --inherit drops its own checks. Its verdict stays while it stays checked.

    \b
    Example:
      pyxlb backend health 192.0.2.10:80/tcp 10.0.1.3 --health-port 8081 --health-via direct
      pyxlb backend health 192.0.2.10:80/tcp 10.0.1.3 --health none
      pyxlb backend health 192.0.2.10:80/tcp 10.0.1.3 --inherit
    """
    given = _health_given(health)
    if inherit == bool(given):
        raise Fail("give --inherit or the health options to change (see --help)")
    with opened() as dp, dp.editing():
        state = dp.current_state()
        v = _vip_of(state, key)
        b = v.backend(address)
        if b is None:
            raise Fail(f"VIP {key} has no backend {address}")
        base = b.health if b.health is not None else v.health
        spec = None if inherit else _health_spec(given, base, f"VIP {key}")
        try:
            new = v.replace(backends=tuple(dataclasses.replace(x, health=spec) if x is b else x
                                           for x in v.backends))
        except StateError as exc:
            raise Fail(one_line(exc)) from None
        apply_state(dp, state.with_vip(new))


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

    Address, weight, state (active or draining; "(down)": failed its health checks, so out
    of the ring), MAC (l2 mode), whether the backend is this node, and its health checks
    ("*": its own, not its VIP's; "-": not checked). --json gives the state file's form.

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
    rows = [(d["address"], d["weight"], d["state"] + (" (down)" if b.down else ""),
             d.get("mac", "-"), "yes" if d.get("local") else "no",
             _health_cell(v.health_for(b) or b.health, v.key)
             + (" *" if b.health is not None else ""))
            for d, b in zip(backends, v.backends)]
    click.echo(table(("ADDRESS", "WEIGHT", "STATE", "MAC", "LOCAL", "HEALTH"), rows,
                     right=(1,)))
