"""Every accessor of one loaded object (``dp.tables``), each over the map of the same name
in ``dp.maps``, all writing through one writer. ``through(writer)`` gives the same set over
the same maps writing through another: what an apply's transaction writes with."""

from __future__ import annotations

from .counters import Counters, Stats
from .flows import FlowTables
from .maps import (DIRECT, AddrSet, Backends, ChainPeers, Config, Epoch, HealthSpecs, IfMacs,
                   MapSet, Members, Nexthops, PrefixSet, PrevRings, Rings, SourceRanges,
                   VipAddrs, Vips)
from .vipindex import VipIndexMap


class CommonTables:
    """The maps every object has (a balancer and a decapsulator pinned in one directory
    share them)."""

    def __init__(self, maps: MapSet, writer=DIRECT):
        self.maps = maps
        self.writer = writer
        self.config = Config(maps.config, writer)
        self.stats = Stats(maps.stats)
        self.decap_sources = PrefixSet(maps.decap_sources, writer)
        self.chain_peers = ChainPeers(maps.chain_peers, writer)

    def through(self, writer):
        """The same accessors over the same maps, writing through `writer`."""
        return type(self)(self.maps, writer)


class DecapTables(CommonTables):
    """The decapsulator's maps (decap.o)."""

    def __init__(self, maps: MapSet, writer=DIRECT):
        super().__init__(maps, writer)
        self.decap_vips = AddrSet(maps.decap_vips, writer)


class BalancerTables(CommonTables):
    """The balancer's maps (balancer.o)."""

    def __init__(self, maps: MapSet, writer=DIRECT):
        super().__init__(maps, writer)
        self.vips = Vips(maps.vips, maps.vip_stats.max_entries, maps.rings.max_entries, writer)
        self.vip_index = VipIndexMap(maps.vip_index, writer)
        self.vip_addrs = VipAddrs(maps.vip_addrs, maps.addr_filter, writer)
        self.local_addrs = AddrSet(maps.local_addrs, writer)
        self.if_macs = IfMacs(maps.if_macs, writer)
        self.rings = Rings(maps.rings, writer)
        self.prev_rings = PrevRings(maps.prev_rings, writer)
        self.backends = Backends(maps.backends, writer)
        self.nexthops = Nexthops(maps.nexthops, writer)
        self.members = Members(maps.members, writer)
        self.health_specs = HealthSpecs(maps.health_specs, writer)
        self.epoch = Epoch(maps.epoch, writer)
        self.source_ranges = SourceRanges(maps.source_ranges, writer)
        self.counters = Counters(maps.vip_stats, maps.backend_stats, maps.vip_range_drops,
                                 writer)
        self.flows = FlowTables(maps.flows4, maps.flows6)
