/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* balance.h: the balancing decision (VIP, flow table, Maglev ring, backend state) and
 * forwarding by the VIP's mode; ICMP errors about VIP flows; inline decapsulation. */
#ifndef XLB_BALANCE_H
#define XLB_BALANCE_H

#include <linux/bpf.h>
#include <linux/icmpv6.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "hash.h"
#include "encap.h"
#include "icmp.h"
#include "decap.h"
#include "neigh.h"

/*
 * The record of the VIP (addr, port, proto, family): from its slot of the VIP index when
 * the slot holds it (an array lookup and a compare, all in registers), from xlb_vips when
 * the slot says another VIP shares it or there is no index yet. An empty slot means no
 * such VIP. `addr` is 16 bytes on the stack, 4-byte aligned (a flow key's address).
 */
static __always_inline struct xlb_vip *xlb_lookup_vip(const __u8 *addr, __be16 port,
						      __u8 proto, __u8 family)
{
	const __u32 *a = (const __u32 *)addr;
	__u32 a0 = a[0], a1 = a[1], a2 = a[2], a3 = a[3];
	__u32 last = xlb_vip_key_word(port, proto, family);
	__u32 zero = 0, slot = xlb_vip_index_slot(a0 ^ a1 ^ a2 ^ a3, last);
	struct xlb_vip_key vk = {};
	struct xlb_vip_slot *s;
	const __u32 *k;
	void *index;

	index = bpf_map_lookup_elem(&xlb_vip_index, &zero);
	if (!index)
		goto hash;
	s = bpf_map_lookup_elem(index, &slot);
	if (!s)
		goto hash;
	k = (const __u32 *)&s->key;
	if ((s->flags & XLB_SLOT_VIP) && k[0] == a0 && k[1] == a1 && k[2] == a2 && k[3] == a3 &&
	    k[4] == last)
		return &s->vip;
	if (!(s->flags & XLB_SLOT_MORE))
		return NULL;
hash:
	__builtin_memcpy(vk.addr, addr, 16);
	vk.port = port;
	vk.proto = proto;
	vk.family = family;
	return bpf_map_lookup_elem(&xlb_vips, &vk);
}

/* The VIP for (dst, dport, proto, family) of `key`: exact port first, then port 0. */
static __always_inline struct xlb_vip *xlb_find_vip(const __u8 *addr, __be16 port,
						    __u8 proto, __u8 family, __u32 addr_flags)
{
	struct xlb_vip *vip;

	if (addr_flags & XLB_ADDR_PORTS) {
		vip = xlb_lookup_vip(addr, port, proto, family);
		if (vip)
			return vip;
	}
	if (addr_flags & XLB_ADDR_ALL_PORTS)
		return xlb_lookup_vip(addr, 0, proto, family);
	return NULL;
}

/* May `addr` be a VIP address? A clear bit in the filter says no without a hash lookup:
 * the answer for most packets. */
static __always_inline int xlb_maybe_vip_addr(const __u8 *addr)
{
	__u32 zero = 0, slot = xlb_addr_slot(addr);
	__u8 *filter = bpf_map_lookup_elem(&xlb_addr_filter, &zero);

	return filter && (filter[slot >> 3] & (1 << (slot & 7)));
}

/* The address-map entry of a destination the filter let through (NULL: not a VIP). */
static __always_inline struct xlb_addr *xlb_lookup_addr(const __u8 *addr, __u8 family)
{
	struct xlb_addr_key key = {};

	__builtin_memcpy(key.addr, addr, 16);
	key.family = family;
	return bpf_map_lookup_elem(&xlb_vip_addrs, &key);
}

/* The address-map entry for a destination (NULL: not a VIP address). */
static __always_inline struct xlb_addr *xlb_vip_addr(const __u8 *addr, __u8 family)
{
	if (!xlb_maybe_vip_addr(addr))
		return NULL;
	return xlb_lookup_addr(addr, family);
}

static __always_inline void xlb_add_counters(struct xlb_counters *c, __u32 bytes, int new_flow)
{
	if (!c)
		return;
	c->packets++;
	c->bytes += bytes;
	c->new_flows += new_flow;
}

/*
 * The flow sets, xlb_flowsets4 (IPv4) and xlb_flowsets6 (IPv6), handled by one code path
 * specialised by `v6` (a constant at each call). A way is read as 32-bit words: the key's
 * KW words (4 or 10; the last one's upper half is the stamp, not part of the flow's
 * identity), the struct xlb_flow (3), the check word, and for IPv6 two words of padding.
 */
#define XLB_KW(v6) ((v6) ? 10 : 4)				/* key words */
#define XLB_WW(v6) ((v6) ? 16 : 8)				/* words a way */
#define XLB_WAYS(v6) ((v6) ? XLB_FLOW6_WAYS : XLB_FLOW4_WAYS)
#define XLB_FRONT(v6) (XLB_WAYS(v6) / 2)			/* the back half's first way */
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define XLB_STAMP_MASK 0x0000ffffu	/* the key's last word without its stamp */
#define XLB_STAMP_AT 16
#else
#define XLB_STAMP_MASK 0xffff0000u
#define XLB_STAMP_AT 0
#endif

/* Now, in stamp units (wrapping at 16 bits). */
static __always_inline __u16 xlb_stamp(__u64 now_ns)
{
	return (__u16)(now_ns >> XLB_STAMP_SHIFT);
}

/* The key words of a parsed flow as its table keeps them (stamp 0): IPv4 its words 0, 4, 8
 * and 9; IPv6 its first ten. */
static __always_inline void xlb_set_key(const struct xlb_flow_key *key, __u32 *k, const int v6)
{
	const __u32 *w = (const __u32 *)key;
	int i;

	if (!v6) {
		k[0] = w[0];
		k[1] = w[4];
		k[2] = w[8];
		k[3] = w[9];
		return;
	}
#pragma unroll
	for (i = 0; i < 10; i++)
		k[i] = w[i];
	k[9] &= XLB_STAMP_MASK;
}

/*
 * The set of an IPv6 flow (xlb_set_index, below), from its key words k (k9: the last one,
 * without its stamp): a multilinear hash (xlb_flowsets6 meaning 2; ext/layouts.pyx
 * _set_index computes the same). The words are paired; each word plus the seed XORed with
 * a constant of its own (XLB_SET6_SALT: below 2^31, so one instruction each), the two sums
 * (33 bits) multiplied, the five products summed (mod 2^64): independent multiplies, a
 * short critical path. The sum's halves XORed, times a 64-bit odd constant, and bits 32 and
 * up of that are the set. The words a client picks (the low half of its address, its
 * port) meet secret offsets before the multiplies, so they cannot be chosen to share a set
 * whatever the seed. The chain of ten xlb_mix() steps it replaced (meaning 1) made each
 * step wait for the one before: ~20 ns a packet more.
 */
#define XLB_SET6_SALT(i) ((__u32)(((i) * 2 + 1) * 0x9e3779b9u) & 0x7fffffffu)
#define XLB_SET6_TERM(a, b, i) \
	(((__u64)(a) + (seed ^ XLB_SET6_SALT(i))) * ((__u64)(b) + (seed ^ XLB_SET6_SALT((i) + 1))))
static __always_inline __u32 xlb_set6_index(const __u32 *k, __u32 k9, __u32 seed, __u32 bits)
{
	__u64 x = XLB_SET6_TERM(k[0], k[1], 0) + XLB_SET6_TERM(k[2], k[3], 2) +
		  XLB_SET6_TERM(k[4], k[5], 4) + XLB_SET6_TERM(k[6], k[7], 6) +
		  XLB_SET6_TERM(k[8], k9, 8);

	x ^= x >> 32;
	x *= 0x9e3779b97f4a7c15ull;
	return (__u32)(x >> 32) & ((1u << (bits & 31)) - 1);
}

/* The set of a flow (of 2^bits sets): a seeded hash of its key words. It only spreads flows
 * over sets; the backend comes from the flow hash. The seed is the node's own flow4_seed,
 * not the cluster's flow-hash seed: one that nobody outside knows (so no one can aim flows
 * at a set), and one that stays put when the cluster's seed is changed (which must not
 * move flows the table pins). IPv4 mixes its four words with one multiply each; IPv6
 * hashes all ten (xlb_set6_index), since a client chooses the low 64 bits of its address
 * and a fold (XOR) of words would let it pick addresses that share a set whatever the
 * seed. */
static __always_inline __u32 xlb_set_index(const __u32 *k, __u32 seed, __u32 bits, const int v6)
{
	__u32 h;

	if (v6)
		return xlb_set6_index(k, k[9], seed, bits);
	h = (k[0] ^ seed) * 0x9e3779b1 ^ k[1] * 0x85ebca77 ^ k[2] * 0xc2b2ae3d ^ k[3];
	h ^= h >> 15;
	h *= 0x2c1b3c6d;
	h ^= h >> 13;
	return h & ((1u << (bits & 31)) - 1);
}

/* The check word of a way: its other words mixed, never 0 (IPv4: xlb_flow4_check as it
 * always was; IPv6: word i of thirteen rotated by 5 * i + 1). The struct xlb_flow words
 * are taken by name, not position, so the check of a way whose xlb_flow members an
 * upgrade reordered (pyxlb/datapath/upgrade.py copies members by name) still holds. */
static __always_inline __u32 xlb_way_check(const __u32 *w, const int v6)
{
	const struct xlb_flow *f = (const struct xlb_flow *)&w[XLB_KW(v6)];
	__u32 x = 0;
	int i;

	if (!v6) {
		x = w[0] ^ xlb_rotl32(w[1], 7) ^ xlb_rotl32(w[2], 13) ^ xlb_rotl32(w[3], 19) ^
		    xlb_rotl32(f->backend_id, 3) ^ xlb_rotl32(f->gen, 11) ^
		    xlb_rotl32(f->hash, 23);
	} else {
#pragma unroll
		for (i = 0; i < 10; i++)
			x ^= xlb_rotl32(w[i], (i * 5 + 1) & 31);
		x ^= xlb_rotl32(f->backend_id, 51 & 31) ^ xlb_rotl32(f->gen, 56 & 31) ^
		     xlb_rotl32(f->hash, 61 & 31);
	}
	return (x * 0x9e3779b1) | 1;
}

/* The set that holds (or will hold) a flow, its key words written to k; NULL only if the
 * config's set count and the map disagree. */
static __always_inline __u32 *xlb_set_of(const struct xlb_flow_key *key,
					 const struct xlb_config *cfg, __u32 *k, const int v6)
{
	__u32 idx;

	xlb_set_key(key, k, v6);
	if (!v6) {
		idx = xlb_set_index(k, cfg->flow4_seed, cfg->flow4_bits, 0);
		return bpf_map_lookup_elem(&xlb_flowsets4, &idx);
	}
	idx = xlb_set_index(k, cfg->flow4_seed, cfg->flow6_bits, 1);
	return bpf_map_lookup_elem(&xlb_flowsets6, &idx);
}

/* Does way `w` (a copy) hold the flow with key words k, whole (its check right)? */
static __always_inline int xlb_way_match(const __u32 *w, const __u32 *k, const int v6)
{
	const int kw = XLB_KW(v6);
	int i;

#pragma unroll
	for (i = 0; i < kw - 1; i++)
		if (w[i] != k[i])
			return 0;
	return (w[kw - 1] & XLB_STAMP_MASK) == k[kw - 1] && w[kw + 3] &&
	       w[kw + 3] == xlb_way_check(w, v6);
}

/* Copy way `i` of a set into w: one word at a time (the set is a map value). */
static __always_inline void xlb_way_read(const __u32 *set, int i, __u32 *w, const int v6)
{
	__builtin_memcpy(w, set + i * XLB_WW(v6), XLB_WW(v6) * 4);
}

static __always_inline void xlb_way_write(__u32 *set, int i, const __u32 *w, const int v6)
{
	__builtin_memcpy(set + i * XLB_WW(v6), w, XLB_WW(v6) * 4);
}

/* Give way copy `w` the stamp `now` and its check word. */
static __always_inline void xlb_way_seal(__u32 *w, __u16 now, const int v6)
{
	const int kw = XLB_KW(v6);

	w[kw - 1] = (w[kw - 1] & XLB_STAMP_MASK) | ((__u32)now << XLB_STAMP_AT);
	w[kw + 3] = xlb_way_check(w, v6);
}

/* The stamp of way copy `w`. */
static __always_inline __u16 xlb_way_stamp(const __u32 *w, const int v6)
{
	return (__u16)(w[XLB_KW(v6) - 1] >> XLB_STAMP_AT);
}

/*
 * Way `i` of IPv6 set `set` read once, word by word, compared as it is read with the key
 * words `k` (the last one, k9, without a stamp): 1 when it holds the flow whole (its check
 * right), its struct xlb_flow copied to *out and its stamp to *stamp. Each word is loaded
 * once (volatile: the set may be written meanwhile), so this judges one snapshot of the way
 * as a copy would, without the copy; the check is taken over the key words it matched.
 */
static __always_inline int xlb_way6_match(const __u32 *set, int i, const __u32 *k, __u32 k9,
					  struct xlb_flow *out, __u16 *stamp)
{
	const volatile __u32 *v = (const volatile __u32 *)(set + i * XLB_WW(1));
	__u32 w9, c, x = 0, fw[3];
	int j;

	/* most ways are another flow: the ports word tells first */
	if (v[8] != k[8])
		return 0;
#pragma unroll
	for (j = 0; j < 8; j++)
		if (v[j] != k[j])
			return 0;
	w9 = v[9];
	if ((w9 & XLB_STAMP_MASK) != k9)
		return 0;
	fw[0] = v[10];
	fw[1] = v[11];
	fw[2] = v[12];
	c = v[13];
	if (!c)
		return 0;
	__builtin_memcpy(out, fw, sizeof(*out));
#pragma unroll
	for (j = 0; j < 9; j++)
		x ^= xlb_rotl32(k[j], (j * 5 + 1) & 31);
	x ^= xlb_rotl32(w9, 46 & 31);
	x ^= xlb_rotl32(out->backend_id, 51 & 31) ^ xlb_rotl32(out->gen, 56 & 31) ^
	     xlb_rotl32(out->hash, 61 & 31);
	if (c != ((x * 0x9e3779b1) | 1))
		return 0;
	*stamp = (__u16)(w9 >> XLB_STAMP_AT);
	return 1;
}

/* xlb_set_lookup for IPv6 (see there), reading the key words in place and each way once. */
static __always_inline int xlb_set6_lookup(const struct xlb_flow_key *key,
					   const struct xlb_config *cfg, struct xlb_flow *out,
					   int promote)
{
	const __u32 *k = (const __u32 *)key;
	__u32 k9 = k[9] & XLB_STAMP_MASK, idx;
	__u32 w[16] __attribute__((aligned(8)));
	__u32 *set;
	__u16 stamp;
	int i, j;

	idx = xlb_set6_index(k, k9, cfg->flow4_seed, cfg->flow6_bits);
	set = bpf_map_lookup_elem(&xlb_flowsets6, &idx);
	if (!set)
		return 0;
#pragma unroll
	for (i = 0; i < XLB_FLOW6_WAYS; i++) {
		if (!xlb_way6_match(set, i, k, k9, out, &stamp))
			continue;
		if (i >= XLB_FRONT(1) && promote) {
			__u16 now = xlb_stamp(bpf_ktime_get_coarse_ns());

			if ((__u16)(now - stamp) < XLB_PROMOTE_AGE)
				return 1;
#pragma unroll
			for (j = XLB_FLOW6_WAYS - 1; j > 0; j--)
				if (j <= i)
					xlb_way_write(set, j, (const __u32 *)set + (j - 1) * XLB_WW(1),
						      1);
			/* the way as it was matched: the key, the flow, no padding */
			__builtin_memcpy(w, k, 36);
			w[9] = k9;
			__builtin_memcpy(&w[10], out, sizeof(*out));
			w[13] = w[14] = w[15] = 0;
			xlb_way_seal(w, now, 1);
			xlb_way_write(set, 0, w, 1);
		}
		return 1;
	}
	return 0;
}

/*
 * The flow-table entry of a flow, copied into *out: 1 when there is one. Ways are compared
 * in order; each is copied before it is checked (another CPU may be writing the set:
 * nothing is locked, and a way read half-written fails its check and counts as absent). A
 * flow found in the back half of its set moves to the front (way 0, the ways before it
 * moving down one) when `promote` says the packet may promote (not a TCP SYN, not an ICMP
 * error) and it comes XLB_PROMOTE_AGE or more after the flow entered: the promoted way is
 * stamped with the time of its promotion. So the front half holds flows that kept sending
 * over a span of time, and only such flows push them back (docs/datapath.md).
 */
static __always_inline int xlb_set_lookup(const struct xlb_flow_key *key,
					  const struct xlb_config *cfg, struct xlb_flow *out,
					  int promote, const int v6)
{
	const int kw = XLB_KW(v6), ways = XLB_WAYS(v6);
	__u32 k[10] __attribute__((aligned(8)));
	__u32 w[16] __attribute__((aligned(8)));
	__u32 *set;
	int i, j;

	if (v6)
		return xlb_set6_lookup(key, cfg, out, promote);
	set = xlb_set_of(key, cfg, k, v6);
	if (!set)
		return 0;
#pragma unroll
	for (i = 0; i < ways; i++) {
		/* most ways are another flow: the ports word tells, without a copy */
		if (set[i * XLB_WW(v6) + kw - 2] != k[kw - 2])
			continue;
		xlb_way_read(set, i, w, v6);
		if (!xlb_way_match(w, k, v6))
			continue;
		__builtin_memcpy(out, &w[kw], sizeof(*out));	/* by its layout, not word order */
		if (i >= XLB_FRONT(v6) && promote) {
			__u16 now = xlb_stamp(bpf_ktime_get_coarse_ns());

			if ((__u16)(now - xlb_way_stamp(w, v6)) < XLB_PROMOTE_AGE)
				return 1;
#pragma unroll
			for (j = ways - 1; j > 0; j--)
				if (j <= i)
					xlb_way_write(set, j, (const __u32 *)set + (j - 1) * XLB_WW(v6),
						      v6);
			xlb_way_seal(w, now, v6);
			xlb_way_write(set, 0, w, v6);
		}
		return 1;
	}
	return 0;
}

static __always_inline int xlb_flow_lookup(const struct xlb_flow_key *key,
					   const struct xlb_config *cfg, struct xlb_flow *out,
					   int promote)
{
	if (key->family == XLB_FAMILY_V4)
		return xlb_set_lookup(key, cfg, out, promote, 0);
	return xlb_set_lookup(key, cfg, out, promote, 1);
}

/* May this CPU record one more flow of this family (`v6`) this second? `limit` 0: no
 * limit. The window restarts a second after it began. */
static __always_inline int xlb_flow_budget_take(__u32 limit, __u64 now_ns, const int v6)
{
	__u32 fam = v6;
	struct xlb_flow_budget *b;

	if (!limit)
		return 1;
	b = bpf_map_lookup_elem(&xlb_flow_budget, &fam);
	if (!b)
		return 1;
	if (now_ns - b->start >= 1000000000ull) {
		b->start = now_ns;
		b->count = 0;
	}
	if (b->count >= limit)
		return 0;
	b->count++;
	return 1;
}

/*
 * Remember a flow's backend; returns 0 when this CPU's insertion budget for the family
 * (xlb_config.flow_inserts4/6) is spent this second: the flow is not recorded. A flow its
 * set still holds (a stale entry, re-hashed) is rewritten in its way. A new flow takes the
 * set's first empty way; in a full set it enters at the head of the back half (way
 * ways / 2), the back half's ways moving down one and the last one forgotten. It reaches
 * the front half only by a promotion (xlb_set_lookup). So flows that send a burst and no
 * more (a SYN flood from forged sources, forged flows of two packets, one-datagram UDP)
 * churn the back half and never push out the front half's flows, those that kept sending.
 */
static __always_inline int xlb_set_insert(const struct xlb_flow_key *key,
					  const struct xlb_config *cfg,
					  const struct xlb_flow *flow, const int v6)
{
	const int kw = XLB_KW(v6), ways = XLB_WAYS(v6);
	__u32 k[10] __attribute__((aligned(8)));
	__u32 w[16] __attribute__((aligned(8)));
	__u64 now_ns = bpf_ktime_get_coarse_ns();
	int i, at = -1, hole = -1;
	__u32 *set;

	if (!xlb_flow_budget_take(v6 ? cfg->flow_inserts6 : cfg->flow_inserts4, now_ns, v6))
		return 0;
	set = xlb_set_of(key, cfg, k, v6);
	if (!set)
		return 1;
#pragma unroll
	for (i = 0; i < ways; i++) {
		xlb_way_read(set, i, w, v6);
		if (xlb_way_match(w, k, v6)) {
			at = i;
			break;
		}
		if (!w[kw + 3] && hole < 0)
			hole = i;	/* empty: never written, or forgotten by user space */
	}
	if (at < 0 && hole >= 0)
		at = hole;
	if (at < 0) {
#pragma unroll
		for (i = ways - 1; i > ways / 2; i--)
			xlb_way_write(set, i, (const __u32 *)set + (i - 1) * XLB_WW(v6), v6);
		at = ways / 2;
	}
#pragma unroll
	for (i = 0; i < kw; i++)
		w[i] = k[i];
	__builtin_memcpy(&w[kw], flow, sizeof(*flow));
#pragma unroll
	for (i = kw + 4; i < XLB_WW(v6); i++)
		w[i] = 0;
	xlb_way_seal(w, xlb_stamp(now_ns), v6);
#pragma unroll
	for (i = 0; i < ways; i++)
		if (i == at)
			xlb_way_write(set, i, w, v6);
	return 1;
}

static __always_inline int xlb_flow_insert(const struct xlb_flow_key *key,
					   const struct xlb_config *cfg,
					   const struct xlb_flow *flow)
{
	if (key->family == XLB_FAMILY_V4)
		return xlb_set_insert(key, cfg, flow, 0);
	return xlb_set_insert(key, cfg, flow, 1);
}

/*
 * The previous owner of a stateless VIP's ring slot, as a chain id, while its change is
 * recent; 0 once forgotten, or when the ring has no previous owners. The clock is read
 * only for a slot that has one.
 */
static __always_inline __u32 xlb_prev_chain(__u32 ring_id, __u32 slot)
{
	struct xlb_prev_slot *prev;
	void *ring;

	ring = bpf_map_lookup_elem(&xlb_prev_rings, &ring_id);
	if (!ring)
		return 0;
	prev = bpf_map_lookup_elem(ring, &slot);
	if (!prev || !prev->chain)
		return 0;
	if ((bpf_ktime_get_coarse_ns() >> XLB_CHAIN_TIME_SHIFT) >= prev->until)
		return 0;
	return prev->chain;
}

/*
 * Pick the backend of a flow: the flow table's answer if it still names a live backend of
 * the same generation, else the VIP's Maglev ring at xlb_ring_slot(). A new choice is
 * remembered when `insert` (ICMP errors look up, never insert, nor promote), unless this
 * CPU's insertion budget is spent (counted: flow_insert_limited). `syn`: the packet is a
 * TCP SYN, which never promotes a flow (xlb_set_lookup). Returns the backend id, or
 * XLB_RING_EMPTY when the VIP has no backend. *missed: the flow table did not have the flow
 * (a stale entry is not a miss). A stateless VIP has no flow table: the ring answers, and
 * *chain is its slot's previous owner while the change is recent (xlb_prev_chain), else 0.
 */
static __always_inline __u32 xlb_pick(const struct xlb_flow_key *key, const struct xlb_vip *vip,
				      __u32 *hash, const struct xlb_config *cfg, int src_only,
				      int insert, int syn, struct xlb_backend **out,
				      int *new_flow, int *missed, __u32 *chain)
{
	int use_flows = !(vip->flags & (XLB_VIP_NO_FLOW_TABLE | XLB_VIP_STATELESS));
	struct xlb_backend *be;
	struct xlb_flow flow;
	__u32 slot, id;
	__u32 *ring_slot;
	void *ring;

	*new_flow = 0;
	*missed = 0;
	*chain = 0;
	if (use_flows) {
		if (xlb_flow_lookup(key, cfg, &flow, insert && !syn)) {
			id = flow.backend_id;
			be = bpf_map_lookup_elem(&xlb_backends, &id);
			/* draining backends keep their flows; gone or re-used ids do not */
			if (be && be->state && be->gen == flow.gen) {
				xlb_count(XLB_STAT_FLOW_HIT);
				*hash = flow.hash;
				*out = be;
				return id;
			}
			xlb_count(XLB_STAT_FLOW_STALE);
		} else {
			xlb_count(XLB_STAT_FLOW_MISS);
			*missed = 1;
		}
	}
	*hash = xlb_flow_hash(key, cfg->seed, src_only);
	ring = bpf_map_lookup_elem(&xlb_rings, &vip->ring_id);
	if (!ring || !vip->ring_size)
		return XLB_RING_EMPTY;
	slot = xlb_ring_slot(*hash, vip->ring_size);
	ring_slot = bpf_map_lookup_elem(ring, &slot);
	if (!ring_slot || *ring_slot == XLB_RING_EMPTY)
		return XLB_RING_EMPTY;
	id = *ring_slot;
	be = bpf_map_lookup_elem(&xlb_backends, &id);
	if (!be || !be->state)
		return XLB_RING_EMPTY;
	if (use_flows && insert) {
		struct xlb_flow fresh = { .backend_id = id, .gen = be->gen, .hash = *hash };

		if (!xlb_flow_insert(key, cfg, &fresh))
			xlb_count(XLB_STAT_FLOW_INSERT_LIMITED);
		*new_flow = 1;	/* without a flow table no packet is known to start a flow */
	}
	if (vip->flags & XLB_VIP_STATELESS) {
		*new_flow = syn;	/* TCP only: a SYN starts a connection */
		if (insert)
			*chain = xlb_prev_chain(vip->ring_id, slot);
	}
	*out = be;
	return id;
}

/* Handed to the kernel, tunnelled to its backend, to forward: the FIB has no neighbour. */
static __always_inline int xlb_pass_no_neigh(void)
{
	xlb_count(XLB_STAT_PASS_NO_NEIGH);
	return XDP_PASS;
}

/*
 * The outer IPv4 source of a tunnelled packet handed to the kernel to forward (its
 * backend's neighbour unresolved): `src4`, the configured one, unless that is one of this
 * node's own addresses (xlb_local_addrs; `attach` and the agent default to the interface's
 * address): Linux drops a packet it is to forward whose source is its own as a martian, so
 * the neighbour would never be resolved. Then, and when no prefix is configured (0), the
 * packet's own source (the client's; a router's for a steered ICMP error), which it came
 * from anyway. (IPv6 forwards such packets.)
 */
static __always_inline __be32 xlb_passable_src4(__be32 src4, const struct xlb_pkt *pkt)
{
	struct xlb_addr_key own = {};
	__be32 client;

	if (src4) {
		__builtin_memcpy(own.addr, &src4, 4);
		own.family = XLB_FAMILY_V4;
		if (!bpf_map_lookup_elem(&xlb_local_addrs, &own))
			return src4;
	}
	__builtin_memcpy(&client, pkt->key.src, 4);
	return client;
}

/*
 * The packet would exceed the MTU once tunnelled, with `room` bytes left for it. Returns
 * the action to end with, or -1 when it fits now. A steered ICMP error (`steered`: its
 * family) is cut to fit (xlb_shorten_error): the backend needs only its quoted headers, and
 * no ICMP error is ever sent about an ICMP error (RFC 1122 3.2.2, RFC 4443 2.4). Else an
 * IPv4 packet with DF or an IPv6 packet gets a too-big error back; the rest is dropped: an
 * IPv4 packet without DF, and a packet on its way to the kernel in place of an L2 send
 * (`unresolved`): the L2 path has the room, so the client must not learn a smaller MTU
 * from a moment without a neighbour.
 */
static __always_inline int xlb_too_big(struct xdp_md *ctx, struct xlb_pkt *pkt, int room,
				       const int steered, const int unresolved)
{
	int rc;

	if (steered) {
		rc = xlb_shorten_error(ctx, pkt, room, steered);
		if (rc == 0)
			return -1;
		if (rc < 0)
			return xlb_internal_drop();
	} else if (!unresolved && (pkt->key.family != XLB_FAMILY_V4 || pkt->df)) {
		if (pkt->key.family == XLB_FAMILY_V4)
			return xlb_icmp4_too_big(ctx, pkt, room);
		return xlb_icmp6_too_big(ctx, pkt, room);
	}
	xlb_count(XLB_STAT_DROP_TOO_BIG);
	return XDP_DROP;
}

/*
 * Tunnel the packet to backend `be`: IPIP, IP6IP6 or IPv4-in-IPv6 by the two families, then
 * send it by `nh` or the FIB. Where the FIB has no neighbour for the backend yet, or
 * `unresolved` says the caller's L2 send found none, the tunnelled packet is passed up:
 * it is addressed to the backend, so the kernel forwards it there and resolves the
 * neighbour on the way (the next packets find it), and a backend that decapsulates serves
 * even this one. `steered`: an ICMP error about a VIP flow, its family (xlb_too_big).
 */
static __always_inline int xlb_tunnel(struct xdp_md *ctx, struct xlb_pkt *pkt,
				      const struct xlb_config *cfg, const struct xlb_backend *be,
				      const struct xlb_nexthop *nh, __u32 hash, __u32 chain,
				      const int steered, const int unresolved)
{
	__u32 src6[4], label;
	__u16 id;
	__be32 src4, dst4, pass4;
	__u32 tot;
	int rc;

	if (be->family == XLB_FAMILY_V4) {
		/* IPv6 inside IPv4 is not a mode we offer: the control plane refuses it too */
		if (pkt->key.family != XLB_FAMILY_V4)
			goto unsupported;
		if (pkt->l3_len + XLB_IPV4_HLEN > cfg->mtu) {
			rc = xlb_too_big(ctx, pkt, (int)cfg->mtu - XLB_IPV4_HLEN, steered,
					 unresolved);
			if (rc >= 0)
				return rc;
		}
		tot = pkt->l3_len + XLB_IPV4_HLEN;
		src4 = xlb_outer_src4(cfg, hash);
		if (unresolved)
			src4 = xlb_passable_src4(src4, pkt);
		if (!src4)
			goto unsupported;
		__builtin_memcpy(&dst4, be->addr, 4);
		/* a chain id needs DF: a datagram that may be fragmented needs its id */
		id = pkt->df ? chain : 0;
		if (id)
			xlb_count(XLB_STAT_CHAIN_SENT);
		if (xlb_push_ipv4(ctx, pkt->l3_off, src4, dst4, pkt->l3_len, pkt->tos, pkt->df,
				  id))
			goto internal;
		if (unresolved)
			return xlb_pass_no_neigh();
		rc = xlb_send(ctx, nh, XLB_FAMILY_V4, &src4, &dst4, tot);
		if (rc != XLB_NO_NEIGH)
			return rc;
		pass4 = xlb_passable_src4(src4, pkt);
		if (pass4 != src4) {
			void *data = (void *)(long)ctx->data;
			void *data_end = (void *)(long)ctx->data_end;
			struct iphdr *outer = data + (pkt->l3_off == ETH_HLEN ? ETH_HLEN :
								      ETH_HLEN + 4);

			if ((void *)(outer + 1) > data_end)
				goto internal;
			xlb_write_ipv4(outer, pkt->tos, tot, pkt->df, id, IPPROTO_IPIP, pass4,
				       dst4);
		}
		return xlb_pass_no_neigh();
	}
	if (pkt->l3_len + XLB_IPV6_HLEN > cfg->mtu) {
		rc = xlb_too_big(ctx, pkt, (int)cfg->mtu - XLB_IPV6_HLEN, steered, unresolved);
		if (rc >= 0)
			return rc;
	}
	tot = pkt->l3_len + XLB_IPV6_HLEN;
	if (!xlb_outer_src6(cfg, hash, src6)) {
		/* an L2 VIP's packet needs no prefix: the client's address (see above) */
		if (!unresolved || pkt->key.family != XLB_FAMILY_V6)
			goto unsupported;
		__builtin_memcpy(src6, pkt->key.src, 16);
	}
	/* the flow label spreads flows (ECMP), or carries a chain id (consts.h) */
	label = hash & (XLB_CHAIN_LABEL - 1);
	if (chain) {
		label = XLB_CHAIN_LABEL | chain;
		xlb_count(XLB_STAT_CHAIN_SENT);
	}
	if (xlb_push_ipv6(ctx, pkt->l3_off, src6, be->addr, pkt->l3_len,
			  pkt->key.family == XLB_FAMILY_V4 ? IPPROTO_IPIP : IPPROTO_IPV6,
			  pkt->tos, label))
		goto internal;
	if (unresolved)
		return xlb_pass_no_neigh();
	rc = xlb_send(ctx, nh, XLB_FAMILY_V6, src6, be->addr, tot);
	if (rc != XLB_NO_NEIGH)
		return rc;
	return xlb_pass_no_neigh();
unsupported:
	xlb_count(XLB_STAT_DROP_UNSUPPORTED);
	return XDP_DROP;
internal:
	return xlb_internal_drop();
}

/*
 * A stateless VIP's segment whose slot's new owner is this node, while the slot remembers
 * its previous owner (`chain`): on to xlb_chain_local, which decides whether the connection
 * is here. Returns only when the jump cannot be made (an object whose loader filled no
 * xlb_jumps, as the benchmark's), and the packet is then passed up as before.
 */
static __always_inline void xlb_jump_chain_local(struct xdp_md *ctx, __u32 hash, __u32 chain)
{
	struct xlb_jump_arg *arg;
	__u32 zero = 0;

	arg = bpf_map_lookup_elem(&xlb_jump_arg, &zero);
	if (!arg)
		return;
	arg->hash = hash;
	arg->chain = chain;
	bpf_tail_call(ctx, &xlb_jumps, XLB_JUMP_CHAIN_LOCAL);
}

/*
 * Send a VIP packet (or an ICMP error about a VIP flow: `steered`, its family, a constant)
 * to backend `id` by the VIP's mode: pass up when it is served here, rewrite MACs for L2
 * DSR, else tunnel. An L2 VIP's backend whose neighbour the FIB does not know is tunnelled
 * to as well, and the packet passed up: passed as it came, the kernel would route it by
 * the VIP and never ask for the backend's MAC (xlb_tunnel).
 */
static __always_inline int xlb_forward(struct xdp_md *ctx, struct xlb_pkt *pkt,
				       const struct xlb_config *cfg, const struct xlb_vip *vip,
				       __u32 id, const struct xlb_backend *be, __u32 hash,
				       __u32 chain, const int steered)
{
	struct xlb_nexthop *nh;
	int rc;

	if ((be->flags & XLB_BACKEND_LOCAL) || vip->mode == XLB_MODE_LOCAL) {
		if (chain)
			xlb_jump_chain_local(ctx, hash, chain);
		xlb_count(XLB_STAT_PASS_LOCAL);
		return XDP_PASS;
	}
	nh = bpf_map_lookup_elem(&xlb_nexthops, &id);
	if (vip->mode == XLB_MODE_L2) {
		if (be->family == XLB_FAMILY_V4)
			rc = xlb_send(ctx, nh, XLB_FAMILY_V4, pkt->key.src, be->addr, pkt->l3_len);
		else
			rc = xlb_send(ctx, nh, XLB_FAMILY_V6, pkt->key.src, be->addr, pkt->l3_len);
		if (rc != XLB_NO_NEIGH)
			return rc;
		return xlb_tunnel(ctx, pkt, cfg, be, NULL, hash, 0, steered, 1);
	}
	return xlb_tunnel(ctx, pkt, cfg, be, nh, hash, chain, steered, 0);
}

/*
 * Stateless mode, the balancer's own share (xlb_chain_local's body, after the tail call
 * from xlb_forward): this node is the slot's new owner, the frame is still as it came
 * (parsed again here: the jump keeps only the frame). A TCP segment without SYN of a
 * connection this node does not have (xlb_has_connection: a socket, or a conntrack entry
 * where a service proxy NATs the VIP) belongs to the slot's previous owner, which the
 * chain id names: tunnel it there as any backend's packet, without a chain id, so the
 * previous owner decapsulates it whatever it finds (never a loop). Anything else is passed
 * up, as a local backend's packet always was.
 */
static __always_inline int xlb_chain_here(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_backend to = {};
	struct xlb_chain_peer *peer;
	struct xlb_jump_arg *arg;
	struct xlb_config *cfg;
	struct xlb_pkt pkt = {};
	__u32 zero = 0, chain, hash;
	__be16 proto;
	int rc;

	arg = bpf_map_lookup_elem(&xlb_jump_arg, &zero);
	cfg = bpf_map_lookup_elem(&xlb_config, &zero);
	if (!arg || !cfg || !arg->chain)
		goto here;
	chain = arg->chain;
	hash = arg->hash;
	proto = xlb_parse_eth(data, data_end, &pkt.l3_off);
	if (proto == bpf_htons(ETH_P_IP))
		rc = xlb_parse_ipv4(data, data_end, &pkt);
	else if (proto == bpf_htons(ETH_P_IPV6))
		rc = xlb_parse_ipv6(data, data_end, &pkt);
	else
		goto here;
	if (rc != XLB_PARSE_OK || pkt.frag || pkt.l4_proto != IPPROTO_TCP ||
	    xlb_parse_ports(data, data_end, &pkt) != XLB_PARSE_OK || xlb_tcp_syn(ctx, &pkt))
		goto here;
	peer = bpf_map_lookup_elem(&xlb_chain_peers, &chain);
	/* IPv6 inside IPv4 is no tunnel we send (xlb_tunnel) */
	if (!peer || !peer->family ||
	    (peer->family == XLB_FAMILY_V4 && pkt.key.family != XLB_FAMILY_V4)) {
		xlb_count(XLB_STAT_CHAIN_NO_PEER);
		goto here;
	}
	if (xlb_has_connection(ctx, &pkt))
		goto here;
	__builtin_memcpy(to.addr, peer->addr, 16);
	to.family = peer->family;
	to.state = XLB_BACKEND_ACTIVE;
	xlb_count(XLB_STAT_CHAIN_FORWARDED);
	return xlb_tunnel(ctx, &pkt, cfg, &to, NULL, hash, 0, 0, 0);
here:
	xlb_count(XLB_STAT_PASS_LOCAL);
	return XDP_PASS;
}

/*
 * Does `vip` (flagged XLB_VIP_SOURCE_RANGES) admit the client of `pkt`? One LPM lookup keyed
 * by the VIP id and the client's address at full length; the longest match is any of the
 * VIP's prefixes that holds the address. `family` is a constant at each call.
 */
static __always_inline int xlb_source_admitted(const struct xlb_pkt *pkt, __u32 vip_id,
					       const int family)
{
	struct xlb_src_range_key key = {};

	key.prefixlen = XLB_SRC_RANGE_PLEN_MAX;
	key.vip_id = vip_id;
	if (family == XLB_FAMILY_V4) {
		key.addr[10] = 0xff;
		key.addr[11] = 0xff;
		__builtin_memcpy(&key.addr[12], pkt->key.src, 4);
	} else {
		__builtin_memcpy(key.addr, pkt->key.src, 16);
	}
	return bpf_map_lookup_elem(&xlb_source_ranges, &key) != NULL;
}

/* Drop a packet whose client the VIP does not admit: counted globally and for the VIP (not
 * in its traffic counters: the packet never reached a backend or the flow table). */
static __always_inline int xlb_refuse_source(__u32 vip_id)
{
	__u64 *n = bpf_map_lookup_elem(&xlb_vip_range_drops, &vip_id);

	if (n)
		*n += 1;
	xlb_count(XLB_STAT_DROP_SOURCE_RANGE);
	return XDP_DROP;
}

/* Balance a parsed TCP/UDP packet for `vip`: count, pick, forward. */
static __always_inline int xlb_balance(struct xdp_md *ctx, struct xlb_pkt *pkt,
				       const struct xlb_vip *vip)
{
	struct xlb_config *cfg;
	struct xlb_backend *be = NULL;
	__u32 zero = 0, hash = 0, id, vip_id = vip->vip_id;
	int src_only = vip->flags & XLB_VIP_AFFINITY_SRC;
	int new_flow, missed, syn;
	__u32 chain;

	cfg = bpf_map_lookup_elem(&xlb_config, &zero);
	if (!cfg) {
		xlb_count(XLB_STAT_DROP_INTERNAL);
		return XDP_DROP;
	}
	if (src_only)
		pkt->key.sport = 0;	/* one flow-table entry per client and VIP port */
	syn = pkt->l4_proto == IPPROTO_TCP && xlb_tcp_syn(ctx, pkt);
	id = xlb_pick(&pkt->key, vip, &hash, cfg, src_only, 1, syn, &be, &new_flow, &missed,
		      &chain);
	/* a TCP segment without SYN is part of a connection: one the table should have had */
	if (missed && pkt->l4_proto == IPPROTO_TCP && !syn)
		xlb_count(XLB_STAT_FLOW_MISS_MIDSTREAM);
	xlb_add_counters(bpf_map_lookup_elem(&xlb_vip_stats, &vip_id), pkt->l3_len, new_flow);
	if (id == XLB_RING_EMPTY || !be) {
		xlb_count(XLB_STAT_DROP_NO_BACKEND);
		return XDP_DROP;
	}
	xlb_add_counters(bpf_map_lookup_elem(&xlb_backend_stats, &id), pkt->l3_len, new_flow);
	return xlb_forward(ctx, pkt, cfg, vip, id, be, hash, chain, 0);
}

/*
 * An ICMP "fragmentation needed" / ICMPv6 "packet too big" sent to a VIP address is about
 * a reply the backend sent (source VIP, destination client). Send it to that flow's backend
 * so its path MTU learns. `inner` is the offset of the quoted IP header. Returns -1 when
 * the quote is not a VIP flow (the caller passes the packet). The quote ends where the ICMP
 * packet's IP length says, not at the end of the frame: bytes after it (Ethernet padding)
 * are not ports.
 */
static __always_inline int xlb_steer_icmp(struct xdp_md *ctx, struct xlb_pkt *pkt, __u32 inner,
					  const int family)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_flow_key key __attribute__((aligned(8))) = {};
	struct xlb_config *cfg;
	struct xlb_backend *be = NULL;
	struct xlb_addr *addr;
	struct xlb_vip *vip;
	__u32 zero = 0, hash = 0, id, l4, end = pkt->l3_off + pkt->l3_len, chain;
	__u16 *ports;
	int src_only, new_flow, missed;

	if (inner > 256)
		return -1;
	if (family == XLB_FAMILY_V4) {
		struct iphdr *q = data + inner;

		if ((void *)(q + 1) > data_end || inner + sizeof(*q) > end || q->ihl < 5)
			return -1;
		l4 = inner + q->ihl * 4;
		key.proto = q->protocol;
		/* the quoted packet went VIP -> client: reverse it into the client's flow */
		__builtin_memcpy(key.src, &q->daddr, 4);
		__builtin_memcpy(key.dst, &q->saddr, 4);
	} else {
		struct ipv6hdr *q = data + inner;

		if ((void *)(q + 1) > data_end || inner + sizeof(*q) > end)
			return -1;
		l4 = inner + XLB_IPV6_HLEN;
		key.proto = q->nexthdr;
		__builtin_memcpy(key.src, &q->daddr, 16);
		__builtin_memcpy(key.dst, &q->saddr, 16);
	}
	if (key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP)
		return -1;
	/* both ports inside the quote (the packet's IP length), not just inside the frame */
	if (l4 > 512 || l4 + 4 > end)
		return -1;
	ports = data + l4;
	if ((void *)(ports + 2) > data_end)
		return -1;
	key.family = family;
	key.sport = ports[1];
	key.dport = ports[0];
	addr = xlb_vip_addr(key.dst, key.family);
	if (!addr)
		return -1;
	vip = xlb_find_vip(key.dst, key.dport, key.proto, key.family, addr->flags);
	if (!vip)
		return -1;
	cfg = bpf_map_lookup_elem(&xlb_config, &zero);
	if (!cfg)
		return -1;
	src_only = vip->flags & XLB_VIP_AFFINITY_SRC;
	if (src_only)
		key.sport = 0;
	id = xlb_pick(&key, vip, &hash, cfg, src_only, 0, 0, &be, &new_flow, &missed, &chain);
	if (id == XLB_RING_EMPTY || !be)
		return -1;
	xlb_count(XLB_STAT_ICMP_STEERED);
	return xlb_forward(ctx, pkt, cfg, vip, id, be, hash, 0, family);
}

/*
 * ICMP to a VIP address (`family` is a constant at each call): steer an ICMPv4
 * "fragmentation needed" or an ICMPv6 "packet too big" about a VIP flow to that flow's
 * backend; pass the rest. Both ICMP headers are 8 bytes, type and code first.
 */
static __always_inline int xlb_icmp_in(struct xdp_md *ctx, struct xlb_pkt *pkt, const int family)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_icmphdr *icmp;
	int too_big, rc;

	icmp = data + pkt->l4_off;
	if (pkt->l4_off > 512 || (void *)(icmp + 1) > data_end) {
		xlb_count(XLB_STAT_PASS_MALFORMED);
		return XDP_PASS;
	}
	too_big = family == XLB_FAMILY_V4 ?
		  icmp->type == XLB_ICMP_DEST_UNREACH && icmp->code == XLB_ICMP_FRAG_NEEDED :
		  icmp->type == ICMPV6_PKT_TOOBIG;
	if (too_big) {
		rc = xlb_steer_icmp(ctx, pkt, pkt->l4_off + sizeof(*icmp), family);
		if (rc >= 0)
			return rc;
	}
	xlb_count(XLB_STAT_PASS_NOT_VIP);
	return XDP_PASS;
}

/*
 * A tunnelled packet addressed to one of this node's own addresses, for a known VIP: this
 * node is the backend, so strip the outer header and pass the inner packet up, never
 * balancing it again. Returns -1 when it is not addressed to us (the caller passes it).
 */
static __always_inline int xlb_decap_inline(struct xdp_md *ctx, struct xlb_pkt *outer)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_pkt inner = {};
	struct xlb_addr_key local = {};
	struct xlb_addr *addr;
	int rc;

	__builtin_memcpy(local.addr, outer->key.dst, 16);
	local.family = outer->key.family;
	if (!bpf_map_lookup_elem(&xlb_local_addrs, &local))
		return -1;
	if (!xlb_decap_acceptable(data, data_end, outer, &inner))
		goto refuse;
	addr = xlb_vip_addr(inner.key.dst, inner.key.family);
	if (!addr)
		goto refuse;
	/* TCP/UDP must match a VIP; other protocols (steered ICMP errors) its address */
	if ((inner.l4_proto == IPPROTO_TCP || inner.l4_proto == IPPROTO_UDP) &&
	    !xlb_find_vip(inner.key.dst, inner.key.dport, inner.l4_proto, inner.key.family,
			  addr->flags))
		goto refuse;
	rc = xlb_chain(ctx, outer, &inner);
	if (rc >= 0)
		return rc;
	return xlb_strip_outer(ctx, outer);
refuse:
	/* passed untouched: with no tunnel device the kernel drops it, as it should */
	xlb_count(XLB_STAT_DECAP_REFUSED);
	return XDP_PASS;
}

/*
 * Is the frame addressed to the interface it arrived on (or to a group)? An interface
 * whose MAC attach did not register (a test run, another loader) is not checked.
 */
static __always_inline int xlb_frame_for_us(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 slot = ifindex & (XLB_IF_MAC_SLOTS - 1);
	struct ethhdr *eth = data;
	struct xlb_if_mac *own;

	if ((void *)(eth + 1) > data_end || (eth->h_dest[0] & 1))
		return 1;	/* (parsed already) / broadcast or multicast */
	own = bpf_map_lookup_elem(&xlb_if_macs, &slot);
	if (!own || !own->ifindex || own->ifindex != ifindex)
		return 1;
	return *(__u32 *)eth->h_dest == *(__u32 *)own->mac &&
	       *(__u16 *)(eth->h_dest + 4) == *(__u16 *)(own->mac + 4);
}

/*
 * An IPv4 or IPv6 packet (`family` is a constant at each call, so each copy is specialised):
 * neighbour solicitations, then the VIP-address check that most packets stop at, tunnelled
 * packets for this node, fragments, ICMP about VIP flows, and TCP/UDP to balance.
 */
static __always_inline int xlb_process_ip(struct xdp_md *ctx, struct xlb_pkt *pkt,
					  const int family)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_addr *addr;
	struct xlb_vip *vip;
	int rc;

	rc = family == XLB_FAMILY_V4 ? xlb_parse_ipv4(data, data_end, pkt) :
				       xlb_parse_ipv6(data, data_end, pkt);
	if (rc != XLB_PARSE_OK)
		goto malformed;
	if (family == XLB_FAMILY_V6 && pkt->l4_proto == IPPROTO_ICMPV6 && !pkt->frag) {
		/* solicitations go to a multicast address: look at them before the VIP check */
		rc = xlb_ns_reply(ctx, pkt);
		if (rc >= 0)
			return rc;
	}
	if (!xlb_maybe_vip_addr(pkt->key.dst))
		goto not_vip_addr;
	/*
	 * The common VIP packet, TCP or UDP to a VIP with its own port, is found with one
	 * lookup (the VIP index, or xlb_vips); everything else (port-0 VIPs, ICMP, fragments,
	 * a malformed or unknown packet to a VIP address) is sorted out below with the
	 * address entry.
	 */
	if ((pkt->l4_proto == IPPROTO_TCP || pkt->l4_proto == IPPROTO_UDP) && !pkt->frag &&
	    xlb_parse_ports(data, data_end, pkt) == XLB_PARSE_OK) {
		vip = xlb_find_vip(pkt->key.dst, pkt->key.dport, pkt->l4_proto, family,
				   XLB_ADDR_PORTS);
		if (vip) {
			if (!xlb_frame_for_us(ctx))
				goto not_ours;
			goto balance;
		}
	}
	addr = xlb_lookup_addr(pkt->key.dst, family);
	if (!addr)
		goto not_vip_addr;
	if (!xlb_frame_for_us(ctx))
		goto not_ours;
	if (pkt->frag) {
		xlb_count(XLB_STAT_PASS_FRAGMENT);
		return XDP_PASS;
	}
	if (pkt->l4_proto == (family == XLB_FAMILY_V4 ? IPPROTO_ICMP : IPPROTO_ICMPV6))
		return xlb_icmp_in(ctx, pkt, family);
	if (pkt->l4_proto != IPPROTO_TCP && pkt->l4_proto != IPPROTO_UDP)
		goto not_vip;
	if (xlb_parse_ports(data, data_end, pkt) != XLB_PARSE_OK)
		goto malformed;
	/* the exact port was looked up above: only a port-0 VIP is left to find */
	vip = xlb_find_vip(pkt->key.dst, pkt->key.dport, pkt->l4_proto, family,
			   addr->flags & XLB_ADDR_ALL_PORTS);
	if (!vip)
		goto not_vip;
balance:
	/* before the flow table and the ring: a refused client leaves no flow behind */
	if ((vip->flags & XLB_VIP_SOURCE_RANGES) && !xlb_source_admitted(pkt, vip->vip_id, family))
		return xlb_refuse_source(vip->vip_id);
	return xlb_balance(ctx, pkt, vip);
not_vip_addr:
	/* a tunnelled packet for this node (the inner packet's VIP is checked there) */
	if (xlb_inner_family(pkt->l4_proto)) {
		rc = xlb_decap_inline(ctx, pkt);
		if (rc >= 0)
			return rc;
	}
not_vip:
	xlb_count(XLB_STAT_PASS_NOT_VIP);
	return XDP_PASS;
not_ours:
	xlb_count(XLB_STAT_PASS_NOT_OURS);
	return XDP_PASS;
malformed:
	xlb_count(XLB_STAT_PASS_MALFORMED);
	return XDP_PASS;
}

/* Everything the balancer does with one frame (the program entry and the benchmark wrapper
 * both call this, so what is measured is what runs). */
static __always_inline int xlb_handle_frame(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_pkt pkt = {};
	__be16 proto = xlb_parse_eth(data, data_end, &pkt.l3_off);

	if (proto == bpf_htons(ETH_P_IP))
		return xlb_process_ip(ctx, &pkt, XLB_FAMILY_V4);
	if (proto == bpf_htons(ETH_P_IPV6))
		return xlb_process_ip(ctx, &pkt, XLB_FAMILY_V6);
	if (proto == bpf_htons(ETH_P_ARP))
		return xlb_arp_reply(ctx, pkt.l3_off);
	xlb_count(proto ? XLB_STAT_PASS_NOT_VIP : XLB_STAT_PASS_MALFORMED);
	return XDP_PASS;
}

#endif /* XLB_BALANCE_H */
