/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* consts.h: every limit and flag shared by the XDP programs and user space. */
#ifndef XLB_CONSTS_H
#define XLB_CONSTS_H

/* Address families as stored in map keys (not AF_* values: those differ per OS). */
#define XLB_FAMILY_V4 4
#define XLB_FAMILY_V6 6

/* Map sizes; user space may shrink or grow them before load. */
#ifndef XLB_MAX_VIPS
#define XLB_MAX_VIPS 4096
#endif
#ifndef XLB_MAX_BACKENDS
#define XLB_MAX_BACKENDS 65536
#endif
#ifndef XLB_MAX_RINGS
#define XLB_MAX_RINGS XLB_MAX_VIPS
#endif
/* IPv4 flows: xlb_flowsets4 holds XLB_FLOW4_SETS sets (a power of two) of XLB_FLOW4_WAYS
 * flows, 32 bytes each: 4 ways are two cache lines (docs/datapath.md, "Flow tables"). */
#ifndef XLB_FLOW4_WAYS
#define XLB_FLOW4_WAYS 4
#endif
#ifndef XLB_FLOW4_SETS
#define XLB_FLOW4_SETS (1 << 19)
#endif
/* IPv6 flows: xlb_flowsets6 holds XLB_FLOW6_SETS sets (a power of two) of XLB_FLOW6_WAYS
 * flows, 64 bytes (one cache line) each. */
#ifndef XLB_FLOW6_WAYS
#define XLB_FLOW6_WAYS 4
#endif
#ifndef XLB_FLOW6_SETS
#define XLB_FLOW6_SETS (1 << 18)
#endif
/* Flow stamps (struct xlb_flow4_key.stamp): bpf_ktime_get_coarse_ns() >> XLB_STAMP_SHIFT,
 * 16 bits, so a unit is 1.05 ms and a stamp wraps after 68.7 s. */
#define XLB_STAMP_SHIFT 20
/* A flow in the back half of its set is promoted to the front half only by a packet that
 * comes at least this many stamp units (about 67 ms) after it entered, and that is not a
 * TCP SYN (docs/datapath.md, "Flow tables"). */
#ifndef XLB_PROMOTE_AGE
#define XLB_PROMOTE_AGE 64
#endif
#ifndef XLB_MAX_MEMBERS
#define XLB_MAX_MEMBERS (1 << 18)
#endif
/* Slots of xlb_if_macs: an interface's MAC sits at ifindex % XLB_IF_MAC_SLOTS (a power of
 * two). Two attached interfaces in one slot: the later one is checked, the other not. */
#define XLB_IF_MAC_SLOTS 256
#ifndef XLB_MAX_LOCAL_ADDRS
#define XLB_MAX_LOCAL_ADDRS 256
#endif
#ifndef XLB_MAX_SOURCE_PREFIXES
#define XLB_MAX_SOURCE_PREFIXES 1024
#endif
/* Client prefixes of every VIP together (xlb_source_ranges). */
#ifndef XLB_MAX_SOURCE_RANGES
#define XLB_MAX_SOURCE_RANGES 16384
#endif

/* Bits of xlb_addr_filter: one per slot an address folds to (see hash.h). */
#define XLB_ADDR_FILTER_BITS (1 << 16)

/* Slots of the VIP index (a power of two; the slot of a VIP key: hash.h). 40 bytes a slot,
 * 2.5 MiB an index. */
#define XLB_VIP_INDEX_BITS 16
#define XLB_VIP_INDEX_SLOTS (1 << XLB_VIP_INDEX_BITS)
/* struct xlb_vip_slot.flags */
#define XLB_SLOT_VIP (1 << 0)	/* the slot holds a VIP: its key and a copy of its record */
#define XLB_SLOT_MORE (1 << 1)	/* another VIP has this slot: look in xlb_vips */

/* Maglev ring size: prime, per the paper; 65537 slots of 4 bytes = 256 KiB a ring. */
#define XLB_RING_SIZE_DEFAULT 65537
/* Largest ring a VIP may use (also the inner-map template's size). */
#define XLB_RING_SIZE_MAX 655373
/* A ring slot that names no backend (an empty backend set). */
#define XLB_RING_EMPTY 0xFFFFFFFFu

/* Forwarding modes of a VIP (struct xlb_vip.mode). */
#define XLB_MODE_IPIP 1		/* IPIP / IP6IP6 / IPv4-in-IPv6 to the backend (DSR) */
#define XLB_MODE_L2 2		/* rewrite the MACs only; backend on this segment (DSR) */
#define XLB_MODE_LOCAL 3	/* XDP_PASS: this node serves the VIP itself */

/* struct xlb_vip.flags */
#define XLB_VIP_NO_FLOW_TABLE (1 << 0)	/* pure Maglev: no flow-table lookup or insert */
#define XLB_VIP_AFFINITY_SRC (1 << 1)	/* hash the source address only (ClientIP) */
#define XLB_VIP_ANNOUNCE (1 << 2)	/* announced (the address entry says so to the datapath) */
#define XLB_VIP_SOURCE_RANGES (1 << 3)	/* only clients in its xlb_source_ranges entries */
#define XLB_VIP_STATELESS (1 << 4)	/* TCP, no flow table: each packet carries its ring
					 * slot's previous owner (xlb_prev_rings), and a
					 * backend that lacks the connection chains it there */

/*
 * Stateless mode's chaining (docs/datapath.md, "Stateless mode"). A chain id names a node
 * a backend may pass a moved connection's packets to: 1 + crc32(family byte, 16 address
 * bytes) % 65535, computed by user space on every node alike (pyxlb/chain.py); 0 is none.
 * It rides in the outer IPv4 header's identification field (only with DF set: a datagram
 * that may not be fragmented needs no id, RFC 6864), or in the outer IPv6 flow label's low
 * 16 bits with XLB_CHAIN_LABEL set (other labels keep that bit clear).
 */
#define XLB_CHAIN_IDS 65536		/* entries of xlb_chain_peers (id 0 unused) */
#define XLB_CHAIN_LABEL (1u << 19)	/* flow-label bit: the low 16 bits are a chain id */
#define XLB_CHAIN_TIME_SHIFT 30		/* xlb_prev_slot.until: ktime ns >> 30 (~1.07 s) */
#define XLB_JUMP_CHAIN_LOCAL 0		/* xlb_jumps: xlb_chain_local (the only entry) */
#define XLB_JUMP_MAX 1
#define XLB_CHAIN_WINDOW_DEFAULT 120	/* seconds a changed slot keeps its previous owner
					 * when xlb_config.chain_window is 0 */

/* Prefix length of a struct xlb_src_range_key that names one client exactly: the VIP id's
 * 32 bits, then 128 address bits (IPv4 as ::ffff:a.b.c.d, so an IPv4 /n is 32 + 96 + n). */
#define XLB_SRC_RANGE_PLEN_MAX (32 + 128)

/* struct xlb_addr.flags: what a destination address is to this node. */
#define XLB_ADDR_PORTS (1 << 0)		/* some VIP on this address has a port */
#define XLB_ADDR_ALL_PORTS (1 << 1)	/* a port-0 VIP covers every port */
#define XLB_ADDR_ANNOUNCE (1 << 2)	/* answer ARP / neighbour solicitations for it */

/* struct xlb_backend.state: 0 means the id is unused ("gone"). */
#define XLB_BACKEND_ACTIVE 1		/* in the ring */
#define XLB_BACKEND_DRAINING 2		/* out of the ring; pinned flows go on */

/* struct xlb_backend.flags */
#define XLB_BACKEND_LOCAL (1 << 0)	/* this node: pass up whatever the VIP's mode */

/* Health checks (struct xlb_member.health, struct xlb_health_spec): control plane only. */
#define XLB_HEALTH_VIP 0xFFFFFFFFu	/* xlb_health_specs key backend_id of a VIP's own spec */
#define XLB_HEALTH_PATH_MAX 96		/* bytes of an HTTP check's path */
#define XLB_HEALTH_UNCHECKED 0		/* struct xlb_member.health: not checked */
#define XLB_HEALTH_UP 1			/* checked, not down (or no verdict yet) */
#define XLB_HEALTH_DOWN 2		/* failed its check: out of the ring */
#define XLB_HEALTH_TCP 1		/* struct xlb_health_spec.type: a TCP connect */
#define XLB_HEALTH_HTTP 2		/* an HTTP GET, its status checked */
#define XLB_HEALTH_NONE 3		/* not checked (a backend's override of its VIP's) */
#define XLB_HEALTH_F_DIRECT (1 << 0)	/* to the backend's own address, not via the tunnel */
#define XLB_HEALTH_F_GONE (1 << 1)	/* on failure, forget its flows too (not just drain) */

/* struct xlb_config.flags */
#define XLB_CFG_DECAP_CHECK_SOURCE (1 << 0)	/* decap only from xlb_decap_sources */
#define XLB_CFG_INSERTS_SET (1 << 1)	/* flow_inserts4/6 were given (else user space
					 * writes the defaults: an upgrade copies the record
					 * from a release that had no such members) */

/* Packet limits. */
/* health checks through the tunnel (health.h): local ports registered at once */
#ifndef XLB_HC_MAX_PATHS
#define XLB_HC_MAX_PATHS 65536
#endif

#define XLB_MTU_DEFAULT 1500
#define XLB_IPV6_EXT_MAX 4	/* extension headers skipped before giving up */
#define XLB_TTL 64		/* TTL / hop limit of outer headers and ICMP errors */
#define XLB_ICMP4_QUOTE 28	/* bytes of the offending packet an ICMPv4 error quotes */
#define XLB_ICMP6_QUOTE 128	/* ... and an ICMPv6 one (at most; less if shorter) */
#define XLB_STEER_QUOTE 128	/* a steered ICMP error too big to tunnel keeps this much
				 * of its quote */

/* Global outcome counters: index of xlb_stats. */
enum xlb_stat {
	XLB_STAT_PASS_NOT_VIP = 0,	/* not for a VIP: passed untouched */
	XLB_STAT_PASS_LOCAL,		/* VIP served here (local mode or local backend) */
	XLB_STAT_PASS_FRAGMENT,		/* IP fragment: passed, never balanced */
	XLB_STAT_PASS_MALFORMED,	/* truncated or bad lengths: passed to the kernel */
	XLB_STAT_PASS_NO_NEIGH,		/* next hop unresolved: tunnelled to the backend
					 * (any mode) and passed up; the kernel forwards it
					 * and resolves the neighbour */
	XLB_STAT_TX,			/* XDP_TX out of the receiving interface */
	XLB_STAT_REDIRECT,		/* redirected to another interface */
	XLB_STAT_DROP_NO_BACKEND,	/* VIP with an empty ring */
	XLB_STAT_DROP_TOO_BIG,		/* too big to encapsulate and no ICMP possible */
	XLB_STAT_DROP_UNSUPPORTED,	/* e.g. IPv6 client to an IPv4-only backend */
	XLB_STAT_DROP_NO_ROUTE,		/* the FIB has no route to the backend */
	XLB_STAT_DROP_INTERNAL,		/* a helper failed (headroom, map) */
	XLB_STAT_FLOW_HIT,		/* flow table had the flow */
	XLB_STAT_FLOW_MISS,		/* new flow: Maglev chose */
	XLB_STAT_FLOW_STALE,		/* flow pointed at a gone backend: re-hashed */
	XLB_STAT_ICMP_SENT,		/* ICMP too-big generated */
	XLB_STAT_ICMP_STEERED,		/* ICMP error about a VIP flow sent to its backend */
	XLB_STAT_ARP_REPLY,		/* ARP request for an announced VIP answered */
	XLB_STAT_NDP_REPLY,		/* neighbour solicitation answered */
	XLB_STAT_DECAP,			/* tunnelled VIP packet decapsulated and passed up */
	XLB_STAT_DECAP_REFUSED,		/* tunnelled packet not for a known VIP or source */
	XLB_STAT_DROP_SOURCE_RANGE,	/* client outside the VIP's source ranges */
	XLB_STAT_PASS_NOT_OURS,		/* VIP frame addressed to another host's MAC */
	XLB_STAT_FLOW_MISS_MIDSTREAM,	/* a flow_miss that is a TCP segment without SYN: a
					 * connection the table forgot, or that came from
					 * another LB node */
	XLB_STAT_FLOW_INSERT_LIMITED,	/* a new flow above this CPU's insertion budget: balanced
					 * by the ring, not recorded */
	XLB_STAT_CHAIN_SENT,		/* stateless VIP: tunnelled carrying its slot's
					 * previous owner */
	XLB_STAT_CHAIN_FORWARDED,	/* decap: a mid-connection TCP segment this node has
					 * no socket for, re-tunnelled to its previous owner */
	XLB_STAT_CHAIN_NO_PEER,		/* decap: the same, but its chain id names no (or
					 * no single) known peer of the outer family:
					 * decapsulated here */
	XLB_STAT_MAX,
};

#endif /* XLB_CONSTS_H */
