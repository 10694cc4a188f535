"""Names of the BPF maps (xdp/include/maps.h), and which object holds which.

The only place these strings are written in Python. A map whose layout changes gets a new
name in maps.h (``xlb_backends_v2``) and here, so an old pinned map is never misread.
Pinned maps live at ``<pin dir>/<map name>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

# In both objects.
STATS = "xlb_stats"                  # global outcome counters (enum xlb_stat), per CPU
CONFIG = "xlb_config"                # the one struct xlb_config
DECAP_SOURCES = "xlb_decap_sources"  # LPM trie of outer sources allowed to tunnel to us

# Balancer only.
VIPS = "xlb_vips"                    # xlb_vip_key -> xlb_vip
VIP_INDEX = "xlb_vip_index"          # 0 -> inner array (slot -> xlb_vip_slot): VIPs, no hash
ADDR_FILTER = "xlb_addr_filter"      # one bit per address slot: "may be a VIP address"
VIP_ADDRS = "xlb_vip_addrs"          # xlb_addr_key -> xlb_addr (kinds of VIP, announce)
LOCAL_ADDRS = "xlb_local_addrs"      # xlb_addr_key -> u32: this node's own addresses
IF_MACS = "xlb_if_macs"              # ifindex % slots -> xlb_if_mac: MACs of our interfaces
RINGS = "xlb_rings"                  # ring id -> inner array (slot -> backend id)
BACKENDS = "xlb_backends"            # backend id -> xlb_backend
NEXTHOPS = "xlb_nexthops"            # backend id -> xlb_nexthop
EPOCH = "xlb_epoch"                  # u64 bumped by every apply (control plane only)
MEMBERS = "xlb_members"              # xlb_member_key -> xlb_member (control plane's record)
FLOWS = "xlb_flows"                  # xlb_flow_key -> xlb_flow (LRU): IPv6 flows
FLOWS4 = "xlb_flowsets4"             # set -> xlb_flowset4 (mmap-able array): IPv4 flows
VIP_STATS = "xlb_vip_stats"          # vip id -> xlb_counters, per CPU
BACKEND_STATS = "xlb_backend_stats"  # backend id -> xlb_counters, per CPU
SOURCE_RANGES = "xlb_source_ranges"  # LPM trie: xlb_src_range_key -> u32, clients VIPs admit
VIP_RANGE_DROPS = "xlb_vip_range_drops"  # vip id -> u64 refused by source range, per CPU

# Decap only.
DECAP_VIPS = "xlb_decap_vips"        # xlb_addr_key -> u32: VIPs a backend accepts tunnelled


@dataclass(frozen=True)
class ObjectSpec:
    """One compiled object: its file name in pyxlb/bpf, its XDP program, and its maps as
    {attribute name: map name} (the attribute under which Datapath.maps exposes it)."""

    object: str
    program: str
    maps: Mapping[str, str]


BALANCER = ObjectSpec(
    object="balancer",
    program="xlb_balancer",
    maps={
        "stats": STATS,
        "config": CONFIG,
        "decap_sources": DECAP_SOURCES,
        "vips": VIPS,
        "vip_index": VIP_INDEX,
        "addr_filter": ADDR_FILTER,
        "vip_addrs": VIP_ADDRS,
        "local_addrs": LOCAL_ADDRS,
        "if_macs": IF_MACS,
        "rings": RINGS,
        "backends": BACKENDS,
        "nexthops": NEXTHOPS,
        "members": MEMBERS,
        "epoch": EPOCH,
        "flows": FLOWS,
        "flows4": FLOWS4,
        "vip_stats": VIP_STATS,
        "backend_stats": BACKEND_STATS,
        "source_ranges": SOURCE_RANGES,
        "vip_range_drops": VIP_RANGE_DROPS,
    },
)

DECAP = ObjectSpec(
    object="decap",
    program="xlb_decap",
    maps={
        "stats": STATS,
        "config": CONFIG,
        "decap_sources": DECAP_SOURCES,
        "decap_vips": DECAP_VIPS,
    },
)
