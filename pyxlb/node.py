"""Bringing a node's balancer up and taking it off an interface: the one sequence that
`pyxlb attach` / `pyxlb detach`, the agent (`pyxlb agent`) and the lab all run.

Up: create the datapath at the pin directory, or adopt the one there untouched (with its
VIPs and flows); give it an outer source prefix per address family for IPIP/IP6IP6 (one
given, else, for a family that has none yet, the first address of that family on the
interfaces as a /32 or /128); set the seed and MTU given; attach the program to each
interface; register the interfaces' addresses as this node's own (tunnelled VIP packets
sent to them are decapsulated inline). A failure on the way removes a datapath this call
created, or puts an adopted one's config back: nothing is half brought up.

Down: detach from one interface and forget the addresses no other interface still has;
the datapath itself goes with its last interface.

A host that is only a backend runs the decapsulator instead (bring_up_decap): the VIP
addresses it accepts tunnels for, the outer sources it accepts them from (none: any), the
peers it passes a stateless VIP's moved connections to (none given: kept), then the
attach; a decapsulator this call created is removed again on failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Union

from . import netlink
from .datapath import Datapath, DecapPath, map_sizes


@dataclass(frozen=True)
class NodeSettings:
    """How to bring a node's balancer up. None: keep what an adopted datapath has (a new one
    starts with seed 0, MTU 1500, no encap source)."""

    interfaces: Sequence[str] = ()      # none: create or adopt, configure, attach nowhere
    mode: str = "native"                # XDP mode: native or generic
    seed: Optional[int] = None
    mtu: Optional[int] = None
    encap_sources: Mapping[int, str] = field(default_factory=dict)   # 4 / 6 -> prefix
    max_vips: Optional[int] = None      # sizes: only for a datapath created here
    max_flows: Optional[int] = None
    max_flows6: Optional[int] = None
    # new flows each CPU records a second in each flow table (0: no limit); None keeps the
    # datapath's (a new or upgraded one gets the default, sized from its tables)
    max_inserts: Optional[int] = None
    # seconds a stateless VIP's changed ring slot remembers its previous owner (0: the
    # default); None keeps the datapath's
    chain_window: Optional[int] = None
    upgrade: str = "auto"               # a datapath of another version: auto | never


@dataclass
class Node:
    """A node's balancer, brought up: the open datapath (the caller closes it) and what
    bring_up did."""

    dp: Datapath
    created: bool                       # made here, not adopted
    links: Dict[str, dict]              # interface -> Datapath.attach's answer
    addresses: List[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]   # now local
    config: dict                        # the config record now
    notes: List[str]                    # sizes asked for that an adopted datapath lacks
    upgraded: Optional[str] = None      # what upgrading an adopted datapath did


def bring_up(pin_dir: str, settings: NodeSettings) -> Node:
    """Create or adopt the datapath at `pin_dir` and bring it up as `settings` say (see the
    module docstring). Raises what the kernel or the datapath raise, after undoing."""
    s = settings
    created = not Datapath.exists(pin_dir)
    dp = Datapath.create(pin_dir, map_sizes=map_sizes(s.max_vips, s.max_flows, s.max_flows6),
                         upgrade=s.upgrade)
    before = dp.config()
    try:
        addresses = []
        for iface in s.interfaces:
            addresses += [a for a in netlink.addresses(netlink.ifindex(iface))
                          if a not in addresses]
        src = dict(s.encap_sources)
        for family in (4, 6):
            first = next((a for a in addresses if a.version == family), None)
            if family not in src and not before[f"src{family}_plen"] and first is not None:
                src[family] = f"{first}/{first.max_prefixlen}"
        config = dp.configure(seed=s.seed, mtu=s.mtu, src4=src.get(4), src6=src.get(6),
                              chain_window=s.chain_window)
        if s.max_inserts is not None:
            dp.set_insert_limits(s.max_inserts)
            config = dp.config()
        links = {iface: dp.attach(iface, s.mode) for iface in s.interfaces}
        for a in addresses:
            dp.add_local_addr(a)
    except BaseException:
        if created:
            dp.destroy()
        else:
            with contextlib.suppress(Exception):
                restore_config(dp, before)
            dp.close()
        raise
    notes = [] if created else dp.size_mismatches(s.max_vips, s.max_flows, s.max_flows6)
    upgraded = dp.upgraded.summary() if dp.upgraded is not None else None
    return Node(dp, created, links, addresses, config, notes, upgraded)


def take_down(dp: Datapath, iface: str) -> bool:
    """Detach the balancer from `iface` and forget the interface's addresses as local ones
    (those another attached interface also has stay). True when that was the last
    interface: the datapath is then removed, with everything in its maps."""
    gone = netlink.addresses(netlink.ifindex(iface))
    if dp.detach(iface):
        return True
    still = {a for i in dp.interfaces() for a in netlink.addresses(i["ifindex"])}
    for a in gone:
        if a not in still:
            with contextlib.suppress(KeyError):
                dp.del_local_addr(a)
    return False


def restore_config(dp: Datapath, config: dict) -> None:
    """Put back a config record's seed, MTU, encap sources and chain window (a failed
    bring-up leaves an adopted datapath as it found it)."""
    dp.configure(seed=config["seed"], mtu=config["mtu"],
                 src4=encap_source(config, 4) or "0.0.0.0/0",
                 src6=encap_source(config, 6) or "::/0", chain_window=config["chain_window"])


def encap_source(config: dict, family: int) -> Optional[str]:
    """A config record's encap source prefix for IPv`family`, None when it has none."""
    plen = config[f"src{family}_plen"]
    if not plen:
        return None
    return str(ipaddress.ip_network((bytes(config[f"src{family}"]), plen), strict=False))


@dataclass
class Decap:
    """A backend's decapsulator, brought up: the open DecapPath (the caller closes it)."""

    dp: DecapPath
    created: bool
    links: Dict[str, dict]              # interface -> DecapPath.attach's answer


def bring_up_decap(pin_dir: str, interfaces: Sequence[str], vips: Sequence,
                   sources: Sequence[str] = (), mode: str = "native",
                   upgrade: str = "auto", peers: Sequence = ()) -> Decap:
    """Create or adopt the decapsulator at `pin_dir`, accept tunnels for `vips` (addresses)
    from `sources` (prefixes; none: from anywhere, no source check), chain a stateless
    VIP's moved connections to `peers` (addresses: the backends that may hand this one
    connections; given, they replace the peers it had; none: kept) and attach it to each
    interface. A decapsulator made here is removed again if a step fails."""
    created = not DecapPath.exists(pin_dir)
    dc = DecapPath.create(pin_dir, upgrade=upgrade)
    try:
        for a in vips:
            dc.add_vip(a)
        for p in sources:
            dc.add_source(p)
        dc.set_config(check_source=bool(sources))
        if peers:
            dc.set_peers(peers)
        links = {iface: dc.attach(iface, mode) for iface in interfaces}
    except BaseException:
        if created:
            dc.destroy()
        else:
            dc.close()
        raise
    return Decap(dc, created, links)
