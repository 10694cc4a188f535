/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* hash.h: the flow hash. Every LB node must compute the same value for the same flow, and
 * tests/support/model.py recomputes it in Python: change both together. */
#ifndef XLB_HASH_H
#define XLB_HASH_H

#include <linux/types.h>

#include "consts.h"
#include "structs.h"

/*
 * Murmur3-style mixing of 32-bit words read in host order from the flow key, seeded with
 * the cluster-wide seed: the source address (IPv4: its one word; IPv6: folded to 64 bits,
 * its two halves XORed), then the ports word and the protocol-and-family word. The
 * destination is left out: a ring serves one VIP, so within a ring it is the same for
 * every flow and would only cost mixing. ClientIP affinity hashes the source address and
 * the family only, so one client lands on one backend whatever its ports.
 */
static __always_inline __u32 xlb_rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 xlb_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = xlb_rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = xlb_rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 xlb_fmix(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The slot of a 16-byte address in xlb_addr_filter: its four 32-bit words (host order)
 * XORed, then folded to 16 bits. pyxlb/addr.py computes the same (filter_slot). */
static __always_inline __u32 xlb_addr_slot(const __u8 *addr)
{
	const __u32 *w = (const __u32 *)addr;
	__u32 x = w[0] ^ w[1] ^ w[2] ^ w[3];

	return (x ^ (x >> 16)) & (XLB_ADDR_FILTER_BITS - 1);
}

static __always_inline __u32 xlb_flow_hash(const struct xlb_flow_key *key, __u32 seed,
					   int src_only)
{
	const __u32 *w = (const __u32 *)key;
	__u32 h = seed;

	/* words 0-3: the source address (IPv4: word 0, the rest zero) */
	if (key->family == XLB_FAMILY_V4) {
		h = xlb_mix(h, w[0]);
	} else {
		h = xlb_mix(h, w[0] ^ w[2]);
		h = xlb_mix(h, w[1] ^ w[3]);
	}
	if (src_only) {
		h = xlb_mix(h, key->family);
		return xlb_fmix(h ^ 20);
	}
	/* word 8: the ports; 9: protocol, family and (zero) padding */
	h = xlb_mix(h, w[8]);
	h = xlb_mix(h, w[9]);
	return xlb_fmix(h ^ 40);
}

/*
 * The last word of a struct xlb_vip_key (port, protocol, family) as a host-order load of
 * it would read it, made in registers: writing the fields and reading the word back
 * stalls store-to-load forwarding (~4 ns on every VIP packet here).
 */
static __always_inline __u32 xlb_vip_key_word(__be16 port, __u8 proto, __u8 family)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	return (__u32)port | (__u32)proto << 16 | (__u32)family << 24;
#else
	return (__u32)port << 16 | (__u32)proto << 8 | family;
#endif
}

/*
 * The VIP-index slot of a VIP key, from its words in host order: the address's four words
 * XORed (`addr_xor`), times a golden-ratio constant, the last word mixed in, the top
 * XLB_VIP_INDEX_BITS bits. pyxlb/datapath/vipindex.py computes the same (slot_of).
 */
static __always_inline __u32 xlb_vip_index_slot(__u32 addr_xor, __u32 last_word)
{
	__u32 x = addr_xor * 0x9e3779b1;

	x = (x ^ last_word) * 0x85ebca6b;
	return (x ^ (x >> 15)) >> (32 - XLB_VIP_INDEX_BITS);
}

/*
 * The ring slot of a flow hash: hash * ring_size / 2^32, which spreads hashes over the slots
 * as evenly as hash % ring_size does, without a division (~25 cycles here, on every new
 * flow). tests/support/model.py's ring_slot() is the same.
 */
static __always_inline __u32 xlb_ring_slot(__u32 hash, __u32 ring_size)
{
	return ((__u64)hash * ring_size) >> 32;
}

#endif /* XLB_HASH_H */
