"""The one owner of the BPF maps: loads an XDP object, applies states to its maps, reads
them back.

``Datapath`` drives the balancer (pyxlb/bpf/balancer.o, program ``xlb_balancer``);
``DecapPath`` drives the decapsulator that backend-only hosts run (decap.o, ``xlb_decap``).
Both load without attaching: ``run(packet)`` pushes a packet through the program with
BPF_PROG_TEST_RUN, so packet tests use the same maps as production.

What the balancer serves changes in one way only: ``Datapath.apply(DesiredState)``
(apply.py). Node settings that are not part of a DesiredState (the config record, local
addresses, interface MACs) have methods of their own. Everything writes through the
typed accessors of ``dp.tables`` (maps.py); ``dp.maps`` holds the raw map handles, by
attribute (``dp.maps.vips``) or by map name (``dp.maps["xlb_vips"]``).

The modules: loader.py (load, pin, adopt, attach, detach, remove: what both objects
share), maps.py (map names and the accessors), vipindex.py, flows.py and counters.py (the
accessors of the VIP index, the flow tables and the counters), tables.py (an object's set
of accessors), readback.py (the Layout read back from the maps), apply.py (the lock, the
epoch, the transaction).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from typing import Dict, List, Optional, Tuple

from pyxlb import _layouts as L
from pyxlb import netlink
from pyxlb import plan as plan_mod
from pyxlb.addr import Address, Prefix, prefix_or_none
from pyxlb.chain import peer_table
from pyxlb.errors import PyxlbError
from pyxlb.numbers import int_in
from pyxlb.state import DesiredState

from . import counters, readback
from .apply import ApplyResult, Applier, announce_source, chain_window, refresh_nexthops
from .loader import (DEFAULT_PIN_DIR, FLOWS_PER_SET, VIP_MAPS, ForeignDatapath, LoadedObject,
                     flow4_sets, flow_sets, map_sizes, rated_flows)
from .maps import (BALANCER, DECAP, addr_filter, completed_config, default_inserts,
                   online_cpus)
from .tables import BalancerTables, DecapTables

__all__ = ["CHAIN_WINDOW_MAX", "DEFAULT_PIN_DIR", "FLOWS_PER_SET", "VIP_MAPS", "ApplyResult",
           "Datapath", "DecapPath", "ForeignDatapath", "addr_filter", "default_inserts",
           "flow4_sets", "flow_sets", "map_sizes", "rated_flows"]


# The longest chain window: a day (xlb_prev_slot.until counts ~1.07 s units in 32 bits, so
# far more would fit; a connection idle longer than this is not worth a slot's memory).
CHAIN_WINDOW_MAX = 86400


def _random_seed() -> int:
    """A random 32-bit seed, never 0 (0 marks "not set")."""
    while True:
        seed = int.from_bytes(os.urandom(4), "little")
        if seed:
            return seed


class Datapath(LoadedObject):
    """The XDP balancer and its maps (see the module docstring).

    ``on_apply``: None, or called with the ApplyResult of every apply that wrote something
    (pyxlb/metrics.py times applies with it). ``announce_mac``: the MAC ARP/NDP answers
    carry for announced VIPs while no interface with a MAC runs the balancer (None: such
    an apply is refused)."""

    SPEC = BALANCER
    TABLES = BalancerTables

    def __init__(self, prog, maps, pin_dir):
        super().__init__(prog, maps, pin_dir)
        self.applier = Applier(self.tables, pin_dir)
        self.applier.on_locked = self.check_current
        self.on_apply = None
        self.announce_mac = None

    def _after_load(self) -> None:
        """Tell the program how many sets each flow table has (a power of two: load checks
        map_sizes), through the config record's flow4_bits and flow6_bits; give new flow
        tables their set-hash seed, random and this node's own (flow4_seed; 0 means not yet
        given); and, where no insertion limit was ever given, the default ones
        (maps.completed_config). An adopted table keeps its seed: another would put its
        flows in other sets, where lookups would not find them."""
        cfg = self.config()
        want = completed_config(cfg, self.maps.flows4.max_entries,
                                self.maps.flows6.max_entries, online_cpus(),
                                _random_seed())
        if want != cfg:
            self.tables.config.write_fields(**want)

    @classmethod
    def create(cls, pin_dir: str = DEFAULT_PIN_DIR, map_sizes=None, upgrade: str = "auto"):
        self = super().create(pin_dir, map_sizes=map_sizes, upgrade=upgrade)
        try:
            self._after_load()      # an upgraded record may lack what this version adds
        except BaseException:
            self.close()
            raise
        return self

    create.__doc__ = LoadedObject.create.__doc__

    # -- interfaces: the balancer also learns each one's MAC -------------------------------

    def attach(self, iface: str, mode: str = "native") -> dict:
        """As for every program; and the interface's MAC is registered, so a VIP frame
        addressed to another host (a promiscuous NIC, a veth or a flooding bridge hand XDP
        those) is left to the kernel, which drops it, rather than balanced a second time."""
        link = super().attach(iface, mode)
        mac = netlink.link_mac(link["ifindex"])
        if mac is not None:
            self.tables.if_macs.put(link["ifindex"], mac)
        return link

    def detach(self, iface: str) -> bool:
        index = netlink.ifindex(iface)
        if any(i["ifindex"] == index for i in self.interfaces()):
            self.tables.if_macs.clear(index)
        return super().detach(iface)

    detach.__doc__ = LoadedObject.detach.__doc__

    # -- node settings -------------------------------------------------------------------

    def configure(self, *, seed: Optional[int] = None, mtu: Optional[int] = None,
                  src4: Optional[Prefix] = None, src6: Optional[Prefix] = None,
                  chain_window: Optional[int] = None) -> dict:
        """Change some fields of the config record (None: keep); returns the new record.
        chain_window: seconds a stateless VIP's changed ring slot remembers its previous
        owner (0: the default, CHAIN_WINDOW_DEFAULT); applies from then on use it."""
        cfg = self.config()
        if chain_window is not None:
            if not int_in(chain_window, 0, CHAIN_WINDOW_MAX):
                raise PyxlbError(f"the chain window must be an integer 0..{CHAIN_WINDOW_MAX} "
                                 f"seconds (0: the default, {L.CHAIN_WINDOW_DEFAULT}), not "
                                 f"{chain_window!r}")
            cfg["chain_window"] = chain_window
        if seed is not None:
            if not int_in(seed, 0, 0xFFFFFFFF):
                raise PyxlbError(f"seed must be an integer 0..4294967295, not {seed!r}")
            cfg["seed"] = seed
        if mtu is not None:
            if not int_in(mtu, 576, 65535):
                raise PyxlbError(f"mtu must be 576..65535, not {mtu!r}")
            cfg["mtu"] = mtu
        for prefix, fam, field in ((src4, L.FAMILY_V4, "src4"), (src6, L.FAMILY_V6, "src6")):
            if prefix is not None:
                addr, plen = prefix_or_none(prefix, fam, "encap source")
                cfg[field] = addr[:4] if fam == L.FAMILY_V4 else addr
                cfg[f"{field}_plen"] = plen
        self.tables.config.write_fields(**cfg)
        return cfg

    def chain_window(self) -> int:
        """Seconds a stateless VIP's changed ring slot remembers its previous owner (the
        default when the config record says 0)."""
        return chain_window(self.config())

    def insert_limits(self) -> Tuple[int, int]:
        """New flows each CPU records a second, IPv4 and IPv6 (0: no limit)."""
        cfg = self.config()
        return cfg["flow_inserts4"], cfg["flow_inserts6"]

    def default_insert_limits(self) -> Tuple[int, int]:
        """The limits a datapath of this size gets when none is given (default_inserts)."""
        ncpus = online_cpus()
        return (default_inserts(self.maps.flows4.max_entries, L.FLOW4_WAYS, ncpus),
                default_inserts(self.maps.flows6.max_entries, L.FLOW6_WAYS, ncpus))

    def set_insert_limits(self, per_cpu: Optional[int] = None) -> Tuple[int, int]:
        """Limit the new flows each CPU records a second in each flow table to `per_cpu`
        (0: no limit; None: the defaults, sized from each table). Above it a new flow is
        still balanced by the ring, but not recorded (flow_insert_limited counts it).
        Returns the limits now in force (IPv4, IPv6)."""
        if per_cpu is None:
            limits = self.default_insert_limits()
        elif not int_in(per_cpu, 0, 0xFFFFFFFF):
            raise PyxlbError(f"the insertion limit must be an integer 0..4294967295, not "
                             f"{per_cpu!r}")
        else:
            limits = (per_cpu, per_cpu)
        cfg = self.config()
        cfg.update(flow_inserts4=limits[0], flow_inserts6=limits[1],
                   flags=cfg["flags"] | L.CFG_INSERTS_SET)
        self.tables.config.write_fields(**cfg)
        return limits

    def add_local_addr(self, addr: Address) -> None:
        """This node owns addr: tunnelled packets to it are decapsulated inline."""
        self.tables.local_addrs.add(addr)

    def del_local_addr(self, addr: Address) -> None:
        self.tables.local_addrs.remove(addr)

    # -- the control plane: apply, read back -----------------------------------------------

    def apply(self, state: DesiredState, *, dry_run: bool = False,
              verdicts: str = "keep", peers: str = "keep") -> ApplyResult:
        """Make the maps implement `state`, writing only the difference.

        All or nothing: a state that is inconsistent or does not fit raises StateError
        before anything is written; a kernel error half-way rolls back every write done so
        far and re-raises, so the previous state is still what packets see. With
        dry_run, only the plan is made. Re-applying the state in force writes nothing.

        Several processes may apply to one pinned datapath (the agent, the CLI by hand).
        Their applies take turns (a lock on the pin directory), and one that finds that
        another applied since this object last read the maps reads them again first, so
        ids are never handed out twice. Each apply sets the whole state: the last one wins.

        Health verdicts (Backend.down): with verdicts="keep" (the CLI, `apply -f`, the
        agent: their states say nothing of verdicts) each backend's `down` is what the maps
        hold, carried over while the backend stays in its VIP and stays checked, whatever
        `state` says; a new backend, or one whose checks were off, starts not down. With
        verdicts="set" (the checker, `pyxlb serve`), `state`'s values are written: read,
        change and apply inside editing(), so no other writer's change is undone.

        Extra chain peers (DesiredState.peers): with peers="keep" (the CLI, `apply -f`,
        `pyxlb serve`: their states name none) the extras xlb_chain_peers holds stay as
        they are, whatever `state` says (read back from another process's table: every
        address it names that is no backend of a stateless VIP); with peers="set" (the
        Kubernetes agent, which knows every Node) they become `state.peers`.
        """
        result = self.applier.apply(
            state, dry_run=dry_run,
            announce_as=lambda: announce_source(self.interfaces(), self.announce_mac),
            verdicts=verdicts, peers=peers)
        if result.seconds is not None and self.on_apply is not None:
            self.on_apply(result)
        return result

    @contextlib.contextmanager
    def editing(self):
        """Hold the apply lock across a read, edit and apply (the CLI's `vip add`, ...):
        no other process applies between this one reading the state and applying the
        edited one. Inside, current_state() is what the maps hold now."""
        with self.applier.lock():
            self.applier.sync()
            yield self

    def layout(self, refresh: bool = False) -> "plan_mod.Layout":
        """What the maps hold, read back once (apply keeps it current afterwards); with
        refresh, read again (another process may have applied since)."""
        return self.applier.layout(refresh)

    def current_state(self) -> DesiredState:
        """The DesiredState the maps implement (what `pyxlb vip list` shows)."""
        return self.layout().state

    def refresh_nexthops(self, backend_ids=None) -> int:
        """Fill the next-hop cache from the kernel's route and neighbour tables (and the
        MACs given for L2 backends); apply does it for the backends it adds. Unresolved
        backends are left to the datapath's FIB fallback. Returns how many were written."""
        return refresh_nexthops(self.tables, self.layout(), backend_ids)

    # -- readers -------------------------------------------------------------------------

    def counters(self) -> List[dict]:
        """Per VIP: {vip, vip_id, packets, bytes, new_flows, backends: [{address, backend_id,
        state, packets, bytes, new_flows}]}, summed over CPUs."""
        return counters.table(self.layout(), self.tables.counters)

    def vip_counters(self, vip_id: int) -> Dict[str, int]:
        return self.tables.counters.vip(vip_id)

    def backend_counters(self, backend_id: int) -> Dict[str, int]:
        return self.tables.counters.backend(backend_id)

    def vip_range_drops(self, vip_id: int) -> int:
        return self.tables.counters.range_drops(vip_id)

    def source_ranges(self) -> Dict[int, List[str]]:
        """{VIP id: [prefix, ...]} of xlb_source_ranges (readback.source_ranges)."""
        return readback.source_ranges(self.tables)

    def vip_addr(self, addr: Address) -> Optional[dict]:
        """The xlb_vip_addrs entry of addr (flags, ifindex, mac), None if there is none."""
        return self.tables.vip_addrs.get(addr)

    def ring(self, ring_id: int):
        """What ring `ring_id` holds now, as array('I') (KeyError if no ring is there)."""
        return self.tables.rings.get(ring_id)

    def flows(self) -> List[Tuple[dict, dict]]:
        """The flow tables, IPv4 then IPv6: [(key, value)] (FlowTables.listing)."""
        return self.tables.flows.listing()

    def flow_counts(self) -> Tuple[int, int]:
        """Flows in the IPv4 table and in the IPv6 one."""
        return self.tables.flows.counts()

    def flow_count(self) -> int:
        return sum(self.flow_counts())

    def flow_capacities(self) -> Tuple[int, int]:
        """Established flows the IPv4 table and the IPv6 one are rated for (>= 99.9% of
        their packets hit: rated_flows), what --max-flows and --max-flows6 ask for."""
        return self.tables.flows.capacities()

    def flow_capacity(self) -> int:
        """Established flows the two tables are rated for (IPv4 and IPv6 together)."""
        return sum(self.flow_capacities())

    def flow_ways(self) -> Tuple[int, int]:
        """Ways of the IPv4 table and of the IPv6 one (sets x ways): flows they can hold at
        all, a set at a time."""
        return self.tables.flows.ways()

    def size_mismatches(self, max_vips: Optional[int] = None, max_flows: Optional[int] = None,
                        max_flows6: Optional[int] = None) -> List[str]:
        """How this datapath's sizes differ from those asked for (None: not asked), one
        sentence each. Sizes are fixed when a datapath is created: an adopted one keeps
        its own until it is removed (detached from every interface) and made again."""
        out = []
        have4, have6 = self.flow_capacities()

        def table(n):   # the rating of the table flow_sets makes for n flows
            return rated_flows(flow_sets(n))

        for what, have, want, made in (("VIPs", self.maps.vips.max_entries, max_vips, int),
                                       ("IPv4 flows", have4, max_flows, table),
                                       ("IPv6 flows", have6, max_flows6, table)):
            if want is not None and have != made(want):
                out.append(f"the pinned datapath holds {have} {what}, not the {want} asked "
                           f"for: it keeps its size until it is detached from every "
                           f"interface and attached again")
        return out


class DecapPath(LoadedObject):
    """The decapsulator of backend-only hosts (decap.o): accepts IPIP / IP6IP6 only for
    known VIPs and, with check_source, only from known LB node prefixes."""

    SPEC = DECAP
    TABLES = DecapTables

    def add_vip(self, addr: Address) -> None:
        """Accept tunnelled packets to `addr`."""
        self.tables.decap_vips.add(addr)

    def add_source(self, prefix: Prefix) -> None:
        """Accept tunnels from `prefix` (an LB node's address or subnet)."""
        self.tables.decap_sources.add(prefix)

    def set_peers(self, addresses) -> Dict[int, Address]:
        """Make xlb_chain_peers name exactly `addresses` (the nodes that may hand this one
        a stateless VIP's connections: its fellow backends), each under its chain id; an id
        two of them share names neither, and ids no longer named are cleared. Returns
        {chain id: address} of the ids now naming a peer."""
        addresses = [ipaddress.ip_address(str(a).strip()) for a in addresses]
        want = {cid: a for cid, a in peer_table(addresses).items() if a is not None}
        have = self.tables.chain_peers.read()
        self.tables.chain_peers.put_all({cid: a for cid, a in want.items()
                                         if have.get(cid) != a})
        self.tables.chain_peers.clear_all(have.keys() - want.keys())
        return want

    def set_config(self, check_source: bool = False) -> None:
        """Turn the outer-source check on or off. Only that flag is changed: the record may
        be shared with a balancer pinned in the same directory."""
        self.tables.config.set_flag(L.CFG_DECAP_CHECK_SOURCE, check_source)
