/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* structs.h: every struct shared between the XDP programs and user space (Cython includes it). */
#ifndef XLB_STRUCTS_H
#define XLB_STRUCTS_H

#include <linux/types.h>

/*
 * Rules (another language fills these maps): fixed-width types only, explicit padding
 * fields (always zero), no bitfields, byte order noted on each field. A test checks that
 * the sizes the host compiler sees equal the sizes in the BPF objects' BTF.
 * IPv4 addresses use the first 4 bytes of a 16-byte addr field, the rest zero.
 */

/* Key of xlb_vips: one VIP is (address, port, protocol, family). */
struct xlb_vip_key {
	__u8 addr[16];		/* network order */
	__be16 port;		/* network order; 0 matches every port of addr */
	__u8 proto;		/* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;		/* XLB_FAMILY_V4 / XLB_FAMILY_V6 */
};

/* Value of xlb_vips. */
struct xlb_vip {
	__u32 vip_id;		/* host order; index of xlb_vip_stats */
	__u32 ring_id;		/* host order; slot of xlb_rings (VIPs may share a ring) */
	__u32 ring_size;	/* host order; slots in that ring, a prime */
	__u16 flags;		/* host order; XLB_VIP_* */
	__u8 mode;		/* XLB_MODE_* */
	__u8 pad;
};

/*
 * Value of the VIP index's inner array (maps.h), by slot: a VIP's key and a copy of its
 * xlb_vips record, found with an array lookup instead of a hash lookup.
 */
struct xlb_vip_slot {
	struct xlb_vip_key key;
	__u32 flags;		/* host order; XLB_SLOT_* (0: no VIP has this slot) */
	struct xlb_vip vip;
};

/* Key of the address maps (xlb_vip_addrs, xlb_local_addrs, xlb_decap_vips). */
struct xlb_addr_key {
	__u8 addr[16];		/* network order */
	__u8 family;		/* XLB_FAMILY_* */
	__u8 pad[3];
};

/* Value of xlb_vip_addrs: one lookup tells a non-VIP packet to go (the common case). */
struct xlb_addr {
	__u32 flags;		/* host order; XLB_ADDR_* */
	__u32 ifindex;		/* host order; answer ARP/NDP only on this one (0: any) */
	__u8 mac[6];		/* the MAC to answer ARP/NDP with */
	__u8 pad[2];
};

/* Value of xlb_backends, indexed by backend id. */
struct xlb_backend {
	__u8 addr[16];		/* network order: the node to tunnel to, or the L2 peer */
	__u8 family;		/* XLB_FAMILY_*; 0 with state 0: unused id */
	__u8 state;		/* XLB_BACKEND_ACTIVE / _DRAINING; 0: gone */
	__u16 flags;		/* host order; XLB_BACKEND_* */
	__u32 gen;		/* host order; changes whenever the id is given to a new backend */
	__u8 mac[6];		/* the MAC the operator gave (L2 mode); zero if none */
	__u8 pad[2];
};

/* Value of xlb_nexthops, indexed by backend id: the cached next hop towards it. */
struct xlb_nexthop {
	__u8 dmac[6];		/* next hop's MAC */
	__u8 smac[6];		/* egress interface's MAC */
	__u32 ifindex;		/* host order; egress interface; 0: no entry (use the FIB) */
};

/* Value of xlb_if_macs: the MAC of an interface the balancer runs on. */
struct xlb_if_mac {
	__u32 ifindex;		/* host order; the interface (0: empty slot) */
	__u8 mac[6];		/* its MAC: only frames addressed to it (or to a group) balance */
	__u8 pad[2];
};

/* The parsed form of every flow: the 5-tuple (source port zero for ClientIP affinity). */
struct xlb_flow_key {
	__u8 src[16];		/* network order */
	__u8 dst[16];		/* network order */
	__be16 sport;		/* network order */
	__be16 dport;		/* network order */
	__u8 proto;
	__u8 family;		/* XLB_FAMILY_* */
	__u8 pad[2];
};

/* An IPv4 flow as xlb_flowsets4 keeps it: the four words of its xlb_flow_key that are not
 * always zero (0: source, 4: destination, 8: ports, 9: protocol and family), in that
 * order. `stamp` is not part of the flow's identity (lookups mask it out): the time
 * (XLB_STAMP_SHIFT units) the flow entered its set, or last was promoted to its front
 * half (docs/datapath.md, "Flow tables"). */
struct xlb_flow4_key {
	__be32 src;		/* network order */
	__be32 dst;		/* network order */
	__be16 sport;		/* network order */
	__be16 dport;		/* network order */
	__u8 proto;
	__u8 family;		/* XLB_FAMILY_V4 */
	__u16 stamp;		/* host order; bpf_ktime_get_coarse_ns() >> XLB_STAMP_SHIFT, wrapping */
};

/* An IPv6 flow as xlb_flowsets6 keeps it: xlb_flow_key's ten words, its padding holding the
 * stamp (as xlb_flow4_key's). */
struct xlb_flow6_key {
	__u8 src[16];		/* network order */
	__u8 dst[16];		/* network order */
	__be16 sport;		/* network order */
	__be16 dport;		/* network order */
	__u8 proto;
	__u8 family;		/* XLB_FAMILY_V6 */
	__u16 stamp;		/* host order; as xlb_flow4_key's */
};

/* Part of a way of the flow sets: the backend a flow is pinned to. */
#ifndef XLB_TEST_LAYOUT_VARIANT
struct xlb_flow {
	__u32 backend_id;	/* host order */
	__u32 gen;		/* host order; must equal the backend's gen, else re-hash */
	__u32 hash;		/* host order; the flow hash, kept so a hit need not recompute it */
};
#else
/* A layout change for the upgrade tests only (pyxlb/bpf/test_variant_balancer.o, built by
 * setup.py): the same members in another order, so both flow tables must be migrated. */
struct xlb_flow {
	__u32 hash;
	__u32 backend_id;
	__u32 gen;
};
#endif

/* One IPv4 flow in a set of xlb_flowsets4. `check` is xlb_way_check() of the other
 * seven words, never 0: 0 marks an empty way, and a way read while another CPU was
 * writing it (sets are written without a lock) fails the check and counts as absent. */
struct xlb_flow4_way {
	struct xlb_flow4_key key;
	struct xlb_flow flow;
	__u32 check;
};

/* Value of xlb_flowsets4: the ways of one set, front half first (docs/datapath.md). */
struct xlb_flowset4 {
	struct xlb_flow4_way way[XLB_FLOW4_WAYS];
};

/* One IPv6 flow in a set of xlb_flowsets6, one cache line: the 40-byte key, the
 * `struct xlb_flow`, the check word (xlb_flow6_check() of the other thirteen words, as for
 * IPv4), and padding up to 64 bytes, so that no way straddles two lines. */
struct xlb_flow6_way {
	struct xlb_flow6_key key;
	struct xlb_flow flow;
	__u32 check;
	__u32 pad[2];
};

/* Value of xlb_flowsets6: the ways of one set (four lines, one 256-byte block). */
struct xlb_flowset6 {
	struct xlb_flow6_way way[XLB_FLOW6_WAYS];
};

/* Value of xlb_flow_budget, per CPU, by family (0: IPv4, 1: IPv6): this CPU's flow-table
 * insertions in the current one-second window. */
struct xlb_flow_budget {
	__u64 start;		/* host order; bpf_ktime_get_coarse_ns() when the window began */
	__u32 count;		/* host order; insertions since */
	__u32 pad;
};

/* Value of xlb_prev_rings' inner arrays, by ring slot: the slot's previous owner, kept
 * for a stateless VIP's ring while the slot's change is recent. */
struct xlb_prev_slot {
	__u16 chain;		/* host order; the previous owner's chain id (0: none) */
	__u16 pad;
	__u32 until;		/* host order; forgotten once bpf_ktime_get_coarse_ns() >>
				 * XLB_CHAIN_TIME_SHIFT reaches this */
};

/* Value of xlb_chain_peers, by chain id: the node a chained packet is re-tunnelled to. */
struct xlb_chain_peer {
	__u8 addr[16];		/* network order */
	__u8 family;		/* XLB_FAMILY_*; 0: no peer has this id, or several do */
	__u8 pad[3];
};

/* Value of xlb_jump_arg: what xlb_chain_local needs from the balancer's pick. */
struct xlb_jump_arg {
	__u32 hash;		/* the flow's hash (the outer source, as for any tunnelled packet) */
	__u32 chain;		/* the slot's chain id: its previous owner */
};

/* Key of xlb_members: one backend of one VIP. */
struct xlb_member_key {
	__u32 vip_id;		/* host order */
	__u32 backend_id;	/* host order */
};

/* Value of xlb_members: the control plane's record of a VIP's backend (the datapath does
 * not read it: the ring says who gets new flows). */
struct xlb_member {
	__u32 weight;		/* host order */
	__u8 state;		/* XLB_BACKEND_ACTIVE / _DRAINING */
	__u8 health;		/* XLB_HEALTH_* verdict: 0 not checked, 1 checked and not
				 * down (up, or no verdict yet), 2 down */
	__u8 pad[2];
};

/*
 * Value of xlb_health_specs (key: struct xlb_member_key, backend_id XLB_HEALTH_VIP for the
 * VIP's own spec, a backend id for a backend whose spec differs from its VIP's): how a
 * VIP's backends are health-checked. Control plane only, like xlb_members: the checker
 * (`pyxlb serve`) and a restarted process read it back. Every integer in host order.
 */
struct xlb_health_spec {
	__u8 type;		/* XLB_HEALTH_TCP / _HTTP / _NONE */
	__u8 flags;		/* XLB_HEALTH_F_* */
	__u16 port;		/* host order; 0: the VIP's port */
	__u32 interval_ms;	/* host order; between two checks of one backend */
	__u32 timeout_ms;	/* host order; a check not answered by then failed */
	__u8 rise;		/* passes in a row that bring a down backend up */
	__u8 fall;		/* failures in a row that put a backend down */
	__u16 expect_lo;	/* host order; lowest HTTP status that passes */
	__u16 expect_hi;	/* host order; highest one */
	__u8 path_len;		/* bytes of path used */
	__u8 pad;
	__u8 path[XLB_HEALTH_PATH_MAX];	/* HTTP request path, printable ASCII, zero-padded */
};

/* Per-CPU traffic counters, per VIP and per backend: user space sums the CPUs. */
struct xlb_counters {
	__u64 packets;		/* host order */
	__u64 bytes;		/* host order */
	__u64 new_flows;	/* host order */
};

/* Key of xlb_decap_sources (LPM trie): IPv4 as ::ffff:a.b.c.d, prefixlen 96 + n. */
struct xlb_lpm_key {
	__u32 prefixlen;	/* host order */
	__u8 addr[16];		/* network order */
};

/* Key of xlb_source_ranges (LPM trie): a client prefix that one VIP admits. The VIP id is
 * the first 32 bits of every prefix, so one trie serves all VIPs and both families. */
struct xlb_src_range_key {
	__u32 prefixlen;	/* host order; 32 + 96 + n (IPv4 /n) or 32 + n (IPv6 /n) */
	__u32 vip_id;		/* host order (always matched whole, so its byte order is moot) */
	__u8 addr[16];		/* network order; IPv4 as ::ffff:a.b.c.d */
};

/* The single value of xlb_config. */
struct xlb_config {
	__u32 seed;		/* host order; flow-hash seed, the same on every LB node */
	__u16 mtu;		/* host order; largest packet sent after encapsulation */
	__u16 flags;		/* host order; XLB_CFG_* */
	__u8 src4[4];		/* network order; outer IPv4 source prefix */
	__u8 src4_plen;		/* its length: the flow hash fills the host bits */
	__u8 src6_plen;		/* length of src6 */
	__u8 flow4_bits;	/* xlb_flowsets4 holds 2^flow4_bits sets (set at load) */
	__u8 flow6_bits;	/* xlb_flowsets6 holds 2^flow6_bits sets (set at load) */
	__u8 src6[16];		/* network order; outer IPv6 source prefix */
	__u32 flow4_seed;	/* host order; seed of the set hashes (both families): random,
				 * this node's own, set at load and kept while the tables live */
	__u32 flow_inserts4;	/* host order; new IPv4 flows each CPU records a second
				 * (0: no limit); above it they are balanced, not recorded */
	__u32 flow_inserts6;	/* host order; the same for IPv6 */
	__u32 chain_window;	/* host order; seconds a stateless VIP's ring slot remembers
				 * its previous owner after a change (0: the default,
				 * 120); read by user space only, which writes the times
				 * into xlb_prev_rings */
};

/* Key of xlb_hc_paths (health.o's own map, never pinned): a health check's socket by its
 * local port. An IPv4 and an IPv6 socket may hold the same port number. */
struct xlb_hc_key {
	__be16 port;		/* network order; the socket's local TCP port */
	__u8 family;		/* XLB_FAMILY_* */
	__u8 pad;
};

/* Value of xlb_hc_paths: how that socket's packets go through the tunnel. The socket is
 * connected to `backend`; its packets leave addressed to `vip` (and, in IPIP mode, inside
 * an outer header from `outer_src` to `backend`), and answers from `vip` come back to it
 * re-addressed from `backend`. The egress program fills in `node` and `dport` from the
 * check's SYN. */
struct xlb_hc_path {
	__u8 vip[16];		/* network order */
	__u8 backend[16];	/* network order */
	__u8 outer_src[16];	/* network order; IPIP mode only */
	__u8 node[16];		/* network order; the check's own address (0: no SYN sent yet) */
	__u8 mode;		/* XLB_MODE_IPIP / XLB_MODE_L2 */
	__u8 pad;
	__be16 dport;		/* network order; the check's port (0: no SYN sent yet) */
};

#endif /* XLB_STRUCTS_H */
