/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* maps.h: every BPF map, each with what it holds. A program defines XLB_BALANCER_MAPS,
 * XLB_DECAP_MAPS or XLB_HEALTH_MAPS first, so each object creates only the maps it uses
 * (health.o declares the first three too, unused: its loader does not create them). */
#ifndef XLB_MAPS_H
#define XLB_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"

/* Global outcome counters (enum xlb_stat), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} xlb_stats SEC(".maps");

/* The one configuration record (seed, MTU, outer source prefixes, flags). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xlb_config);
} xlb_config SEC(".maps");

/* Outer sources allowed to tunnel to us, when XLB_CFG_DECAP_CHECK_SOURCE is set. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, XLB_MAX_SOURCE_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct xlb_lpm_key);
	__type(value, __u32);
} xlb_decap_sources SEC(".maps");

#if defined(XLB_BALANCER_MAPS) || defined(XLB_DECAP_MAPS)
/* Chain id -> the node it names (stateless mode: where a backend re-tunnels a
 * mid-connection segment it has no socket for). Filled by user space on every node. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_CHAIN_IDS);
	__type(key, __u32);
	__type(value, struct xlb_chain_peer);
} xlb_chain_peers SEC(".maps");
#endif

/* Count one outcome on this CPU. */
static __always_inline void xlb_count(__u32 stat)
{
	__u64 *n = bpf_map_lookup_elem(&xlb_stats, &stat);

	if (n)
		*n += 1;
}

/* A helper failed (headroom, tail, a write): drop the frame, and say so. */
static __always_inline int xlb_internal_drop(void)
{
	xlb_count(XLB_STAT_DROP_INTERNAL);
	return XDP_DROP;
}

#ifdef XLB_BALANCER_MAPS

/* VIP (address, port, protocol, family) -> its ring, mode and flags. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_VIPS);
	__type(key, struct xlb_vip_key);
	__type(value, struct xlb_vip);
} xlb_vips SEC(".maps");

/* A bit per address slot (hash.h): clear means no VIP address falls in that slot, so most
 * packets are known not to be VIP traffic without a hash lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(value_size, XLB_ADDR_FILTER_BITS / 8);
} xlb_addr_filter SEC(".maps");

/* VIP address -> which kinds of VIP it carries, and whether we announce it (ARP/NDP). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_VIPS);
	__type(key, struct xlb_addr_key);
	__type(value, struct xlb_addr);
} xlb_vip_addrs SEC(".maps");

/* ifindex % XLB_IF_MAC_SLOTS -> the MAC of the interface the balancer runs on, written by
 * attach: a VIP frame addressed to another host (a promiscuous NIC, a veth, a flooding
 * bridge hand XDP those) is passed to the kernel, which drops it, not balanced twice. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_IF_MAC_SLOTS);
	__type(key, __u32);
	__type(value, struct xlb_if_mac);
} xlb_if_macs SEC(".maps");

/* This node's own addresses: tunnelled packets to them are decapsulated inline. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_LOCAL_ADDRS);
	__type(key, struct xlb_addr_key);
	__type(value, __u32);
} xlb_local_addrs SEC(".maps");

/* Template of the VIP index: slot (hash.h) -> struct xlb_vip_slot. User space fills a new
 * index whole (one memcpy, BPF_F_MMAPABLE) and swaps it in; it never writes one in place.
 * Every index has the template's size, so no BPF_F_INNER_MAP: without it the verifier
 * inlines the lookup (an address computation) instead of calling array_map_lookup_elem. */
struct xlb_vip_index_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_VIP_INDEX_SLOTS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	/* by size: BTF would carry the struct only as a forward declaration here */
	__uint(value_size, sizeof(struct xlb_vip_slot));
};

/*
 * Slot 0 -> the VIP index: every VIP of xlb_vips, or (slot flag XLB_SLOT_MORE) the word to
 * look there, so most VIP packets are matched without a hash lookup (~9 ns here). Empty
 * (before the first index is written) -> every lookup goes to xlb_vips.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct xlb_vip_index_inner);
} xlb_vip_index SEC(".maps");

/* Template of a Maglev ring: slot -> backend id. BPF_F_INNER_MAP lets rings differ in size;
 * BPF_F_MMAPABLE lets user space fill a new ring with one memcpy. */
struct xlb_ring {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_RING_SIZE_DEFAULT);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, __u32);
};

/* Ring id -> ring; a new ring is written aside and swapped in with one update. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, XLB_MAX_RINGS);
	__type(key, __u32);
	__array(values, struct xlb_ring);
} xlb_rings SEC(".maps");

/* Template of a stateless VIP's previous owners: ring slot -> xlb_prev_slot, the same
 * length as its ring. */
struct xlb_prev_ring {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_RING_SIZE_DEFAULT);
	__uint(map_flags, BPF_F_INNER_MAP | BPF_F_MMAPABLE);
	__type(key, __u32);
	/* by size: BTF would carry the struct only as a forward declaration here */
	__uint(value_size, sizeof(struct xlb_prev_slot));
};

/* Ring id -> its previous owners (only rings that a stateless VIP uses have one); swapped
 * in with the ring, in the same batch. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, XLB_MAX_RINGS);
	__type(key, __u32);
	__array(values, struct xlb_prev_ring);
} xlb_prev_rings SEC(".maps");

/* Backend id -> address, state, generation. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xlb_backend);
} xlb_backends SEC(".maps");

/* Backend id -> cached next hop (MACs, egress interface), kept fresh by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xlb_nexthop);
} xlb_nexthops SEC(".maps");

/* The apply epoch: every apply that writes bumps it, so a process about to apply learns
 * whether another (the CLI beside the agent) applied since it last read the maps. The
 * datapath never reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} xlb_epoch SEC(".maps");

/* (VIP id, backend id) -> weight and state: the control plane's record of each VIP's
 * backends, read back by a restarted agent. The datapath never reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_MEMBERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct xlb_member_key);
	__type(value, struct xlb_member);
} xlb_members SEC(".maps");

/* (VIP id, XLB_HEALTH_VIP or backend id) -> how that VIP's (or that backend's) health is
 * checked: the control plane's record, read back by the checker and a restarted process.
 * The datapath never reads it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_MEMBERS + XLB_MAX_VIPS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct xlb_member_key);
	__type(value, struct xlb_health_spec);
} xlb_health_specs SEC(".maps");

/* IPv4 flows -> pinned backend: a set-associative table. A flow lives in one set, chosen
 * by xlb_set_index(); a new flow takes an empty way, else the head of the set's back half
 * (xlb_flow_insert). Userspace reads and clears ways through mmap (docs/datapath.md). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, XLB_FLOW4_SETS);
	__type(key, __u32);
	__type(value, struct xlb_flowset4);
} xlb_flowsets4 SEC(".maps");

/* IPv6 flows -> pinned backend: sets as xlb_flowsets4's, of 64-byte ways. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, XLB_FLOW6_SETS);
	__type(key, __u32);
	__type(value, struct xlb_flowset6);
} xlb_flowsets6 SEC(".maps");

/* Family (0: IPv4, 1: IPv6) -> this CPU's flow-table insertions this second. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct xlb_flow_budget);
} xlb_flow_budget SEC(".maps");

/* (VIP id, client prefix) -> 1: the clients a VIP flagged XLB_VIP_SOURCE_RANGES admits
 * (Kubernetes' loadBalancerSourceRanges). One trie for every VIP: the id leads the key. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, XLB_MAX_SOURCE_RANGES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct xlb_src_range_key);
	__type(value, __u32);
} xlb_source_ranges SEC(".maps");

/* Per-VIP count of packets dropped for a client outside its source ranges, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_VIPS);
	__type(key, __u32);
	__type(value, __u64);
} xlb_vip_range_drops SEC(".maps");

/* Per-VIP counters by vip_id, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct xlb_counters);
} xlb_vip_stats SEC(".maps");

/* Per-backend counters by backend id, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xlb_counters);
} xlb_backend_stats SEC(".maps");

/*
 * Stateless mode, the balancer's own share: a segment whose slot's new owner is this node
 * goes on by tail call to xlb_chain_local (balance.h, xlb_chain_here). Both maps are this
 * object's own, never shared with another version nor migrated: the loader puts this
 * object's program in xlb_jumps right after loading it and pins it beside the program
 * (jumps_balancer: the kernel empties a prog array that only programs refer to).
 */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, XLB_JUMP_MAX);
	__type(key, __u32);
	__type(value, __u32);
} xlb_jumps SEC(".maps");

/* What the tail call hands on (it keeps only the frame): one slot per CPU, written right
 * before the jump on the CPU that makes it (XDP runs with migration disabled). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xlb_jump_arg);
} xlb_jump_arg SEC(".maps");

#endif /* XLB_BALANCER_MAPS */

#ifdef XLB_DECAP_MAPS

/* VIP addresses a backend-only host accepts tunnelled packets for. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_VIPS);
	__type(key, struct xlb_addr_key);
	__type(value, __u32);
} xlb_decap_vips SEC(".maps");

#endif /* XLB_DECAP_MAPS */

#ifdef XLB_HEALTH_MAPS

/* Health checks' local ports -> the VIP, backend and mode their packets are re-addressed
 * with (health.h). Owned by the checker process, never pinned: it goes with the process. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_HC_MAX_PATHS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct xlb_hc_key);
	__type(value, struct xlb_hc_path);
} xlb_hc_paths SEC(".maps");

#endif /* XLB_HEALTH_MAPS */

#endif /* XLB_MAPS_H */
