"""What the maps hold, read back as the control plane's Layout: what a process reads
before its first apply to a datapath another process wrote (or left pinned)."""

from __future__ import annotations

from typing import Dict, List

from pyxlb import plan as plan_mod

from .tables import BalancerTables


def read_layout(t: BalancerTables) -> plan_mod.Layout:
    """The Layout (and so the DesiredState) the maps implement, with the ids they use and
    the generation of every backend id ever handed out."""
    # in the reverse of the order apply writes them (backends, members, then the VIPs that
    # point at them): read while another thread or process applies, every id a VIP or a
    # member names is already in the maps read after it
    vips = t.vips.read()
    members = t.members.read()
    backends = t.backends.read()
    live = {i: r for i, r in backends.items() if r.state}
    # xlb_chain_peers (65536 entries, ~30 ms to read) is read by the first apply, not here
    layout = plan_mod.rebuild_state(vips, members, live, t.source_ranges.read(),
                                    t.health_specs.read())
    layout.gens.update({i: r.gen for i, r in backends.items() if r.gen})
    return layout


def source_ranges(t: BalancerTables) -> Dict[int, List[str]]:
    """Every entry of xlb_source_ranges: {VIP id: [prefix, ...]}. The trie keeps IPv4 as
    ::ffff:a.b.c.d, so an IPv6 prefix inside ::ffff:0:0/96 reads as IPv4 here; the Layout
    knows each VIP's family and gives it back as written."""
    out: Dict[int, List[str]] = {}
    for vid, net in t.source_ranges.read():
        out.setdefault(vid, []).append(str(net))
    return {vid: sorted(nets) for vid, nets in sorted(out.items())}


def limits(t: BalancerTables) -> plan_mod.Limits:
    """What the maps have room for, as the planner counts it."""
    m = t.maps
    return plan_mod.Limits(vips=min(m.vips.max_entries, m.vip_stats.max_entries,
                                    m.vip_range_drops.max_entries),
                           backends=m.backends.max_entries,
                           rings=m.rings.max_entries,
                           source_ranges=m.source_ranges.max_entries,
                           health_specs=m.health_specs.max_entries)
