/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* encap.h: pushing and popping outer IPv4/IPv6 headers, and sending a frame towards its
 * next hop (cached MACs and interface, else the kernel's FIB). */
#ifndef XLB_ENCAP_H
#define XLB_ENCAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "csum.h"
#include "parse.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

#define XLB_IPV4_HLEN ((int)sizeof(struct iphdr))
#define XLB_IPV6_HLEN ((int)sizeof(struct ipv6hdr))

/* The outer IPv4 source: the configured prefix, its host bits taken from the flow hash so
 * a receiver's RSS spreads flows over its queues. 0 if no prefix is configured. */
static __always_inline __be32 xlb_outer_src4(const struct xlb_config *cfg, __u32 hash)
{
	__u32 prefix, mask;

	__builtin_memcpy(&prefix, cfg->src4, 4);
	if (!prefix)
		return 0;
	prefix = bpf_ntohl(prefix);
	mask = cfg->src4_plen >= 32 ? 0xffffffff : cfg->src4_plen == 0 ? 0 :
	       ~((1u << (32 - cfg->src4_plen)) - 1);
	return bpf_htonl((prefix & mask) | (hash & ~mask));
}

/* The outer IPv6 source: the prefix with (at most) its last 32 host bits from the hash.
 * Returns 0 if no prefix is configured. */
static __always_inline int xlb_outer_src6(const struct xlb_config *cfg, __u32 hash,
					  __u32 out[4])
{
	__u32 last, mask;

	__builtin_memcpy(out, cfg->src6, 16);
	if (!(out[0] | out[1] | out[2] | out[3]))
		return 0;
	last = bpf_ntohl(out[3]);
	mask = cfg->src6_plen >= 128 ? 0xffffffff : cfg->src6_plen <= 96 ? 0 :
	       ~((1u << (128 - cfg->src6_plen)) - 1);
	out[3] = bpf_htonl((last & mask) | (hash & ~mask));
	return 1;
}

/*
 * Move the Ethernet header (and its VLAN tag) from `from` to `to` bytes into the frame,
 * then set the L3 protocol it announces. Constant sizes keep the verifier simple. Copied
 * as 8-, 4- and 2-byte words: the frame's alignment is unknown to clang, so a memcpy
 * would move it byte by byte; x86 and arm64 load unaligned words at full speed, and the
 * verifier allows unaligned packet access where the architecture does. Everything is
 * read before anything is written, so the two spans may overlap.
 */
static __always_inline int xlb_move_eth(void *data, void *data_end, int from, int to,
					__u16 l3_off, __be16 proto)
{
	__u64 macs;
	__u32 macs_tail, tag;

	if (from < 0 || from > 64 || to < 0 || to > 64)
		return -1;
	if (data + from + ETH_HLEN + sizeof(struct xlb_vlan_hdr) > data_end ||
	    data + to + ETH_HLEN + sizeof(struct xlb_vlan_hdr) > data_end)
		return -1;
	macs = *(__u64 *)(data + from);			/* destination, source's first 2 */
	macs_tail = *(__u32 *)(data + from + 8);	/* the source's last 4 */
	if (l3_off == ETH_HLEN) {
		*(__u64 *)(data + to) = macs;
		*(__u32 *)(data + to + 8) = macs_tail;
		*(__be16 *)(data + to + 12) = proto;
		return 0;
	}
	tag = *(__u32 *)(data + from + ETH_HLEN - 2);	/* the tag's TPID and TCI */
	*(__u64 *)(data + to) = macs;
	*(__u32 *)(data + to + 8) = macs_tail;
	*(__u32 *)(data + to + ETH_HLEN - 2) = tag;
	*(__be16 *)(data + to + ETH_HLEN + 2) = proto;
	return 0;
}

/*
 * Write a whole IPv4 header without options (TTL XLB_TTL), checksum included. `id` is
 * its identification: 0, or with DF a stateless VIP's chain id (consts.h). The
 * checksum is summed from the values in registers, not read back from the packet: reading
 * 16-bit words over bytes just stored stalls store-to-load forwarding (~6 ns a header).
 */
static __always_inline void xlb_write_ipv4(struct iphdr *iph, __u8 tos, __u16 tot_len, __u8 df,
					   __u16 id, __u8 protocol, __be32 saddr, __be32 daddr)
{
	__be16 *w = (__be16 *)iph;
	__be16 ver_tos = bpf_htons((__u16)(0x4500 | tos));	/* version 4, IHL 5 */
	__be16 len = bpf_htons(tot_len);
	__be16 frag = df ? bpf_htons(XLB_IP_DF) : 0;
	__be16 idw = bpf_htons(id);
	__be16 ttl_proto = bpf_htons((__u16)((XLB_TTL << 8) | protocol));
	__u64 sum = (__u64)ver_tos + len + idw + frag + ttl_proto +
		    (saddr & 0xffff) + (saddr >> 16) + (daddr & 0xffff) + (daddr >> 16);

	w[0] = ver_tos;
	w[1] = len;
	w[2] = idw;
	w[3] = frag;
	w[4] = ttl_proto;
	w[5] = xlb_csum_fold(sum);
	iph->saddr = saddr;
	iph->daddr = daddr;
}

/*
 * Write a whole IPv6 header (hop limit XLB_TTL) as ten 4-byte words. `saddr` and `daddr`
 * must be 4-byte aligned (map values, and struct members at offset 0, are): passed as
 * void pointers, a memcpy of them compiles to sixteen byte loads and stores each, where
 * the words are four (6 ns a packet less for an IPv6 tunnel, bench/datapath.py).
 */
static __always_inline void xlb_write_ipv6(struct ipv6hdr *ip6h, __u8 tclass, __u32 flowlabel,
					   __u16 payload_len, __u8 nexthdr, const void *saddr,
					   const void *daddr)
{
	const __u32 *s = saddr, *d = daddr;
	__u32 *w = (__u32 *)ip6h;

	w[0] = bpf_htonl((6u << 28) | ((__u32)tclass << 20) | (flowlabel & 0xfffff));
	w[1] = bpf_htonl(((__u32)payload_len << 16) | ((__u32)nexthdr << 8) | XLB_TTL);
	w[2] = s[0];
	w[3] = s[1];
	w[4] = s[2];
	w[5] = s[3];
	w[6] = d[0];
	w[7] = d[1];
	w[8] = d[2];
	w[9] = d[3];
}

/* Prepend an outer IPv4 header (protocol IPIP, or IPv6 is not supported inside IPv4). */
static __always_inline int xlb_push_ipv4(struct xdp_md *ctx, __u16 l3_off, __be32 saddr,
					 __be32 daddr, __u32 inner_len, __u8 tos, __u8 df,
					 __u16 id)
{
	void *data, *data_end;
	struct iphdr *iph;

	if (bpf_xdp_adjust_head(ctx, -XLB_IPV4_HLEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (xlb_move_eth(data, data_end, XLB_IPV4_HLEN, 0, l3_off, bpf_htons(ETH_P_IP)))
		return -1;
	iph = data + (l3_off == ETH_HLEN ? ETH_HLEN : ETH_HLEN + 4);
	if ((void *)(iph + 1) > data_end)
		return -1;
	xlb_write_ipv4(iph, tos, inner_len + XLB_IPV4_HLEN, df, id, IPPROTO_IPIP, saddr, daddr);
	return 0;
}

/* Prepend an outer IPv6 header; nexthdr IPPROTO_IPV6 (IP6IP6) or IPPROTO_IPIP (4in6). */
static __always_inline int xlb_push_ipv6(struct xdp_md *ctx, __u16 l3_off, const __u32 *saddr,
					 const __u8 *daddr, __u32 inner_len, __u8 nexthdr,
					 __u8 tclass, __u32 flowlabel)
{
	void *data, *data_end;
	struct ipv6hdr *ip6h;

	if (bpf_xdp_adjust_head(ctx, -XLB_IPV6_HLEN))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (xlb_move_eth(data, data_end, XLB_IPV6_HLEN, 0, l3_off, bpf_htons(ETH_P_IPV6)))
		return -1;
	ip6h = data + (l3_off == ETH_HLEN ? ETH_HLEN : ETH_HLEN + 4);
	if ((void *)(ip6h + 1) > data_end)
		return -1;
	xlb_write_ipv6(ip6h, tclass, flowlabel, inner_len, nexthdr, saddr, daddr);
	return 0;
}

/* Strip an outer header of `outer_len` bytes that sits at l3_off; the inner packet's
 * protocol goes into the Ethernet header. */
static __always_inline int xlb_pop_outer(struct xdp_md *ctx, __u16 l3_off, int outer_len,
					 __be16 inner_proto)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	/* two constant-size cases: the verifier checks a constant offset, not a variable one */
	if (outer_len == XLB_IPV4_HLEN) {
		if (xlb_move_eth(data, data_end, 0, XLB_IPV4_HLEN, l3_off, inner_proto))
			return -1;
		return bpf_xdp_adjust_head(ctx, XLB_IPV4_HLEN) ? -1 : 0;
	}
	if (outer_len == XLB_IPV6_HLEN) {
		if (xlb_move_eth(data, data_end, 0, XLB_IPV6_HLEN, l3_off, inner_proto))
			return -1;
		return bpf_xdp_adjust_head(ctx, XLB_IPV6_HLEN) ? -1 : 0;
	}
	return -1;
}

/* xlb_send's answer when the FIB knows the route but not the next hop's MAC yet. */
#define XLB_NO_NEIGH (-1)

/*
 * Send the frame towards a backend: MACs and interface from the next-hop cache `nh`, else
 * from the FIB (the addresses of the header the frame carries outermost given). Counts
 * what it returns, except XLB_NO_NEIGH: the FIB has a route but no neighbour entry, the
 * frame is unchanged, and the caller decides (xlb_tunnel: hand it to the kernel, which
 * resolves the neighbour on the way).
 */
static __always_inline int xlb_send(struct xdp_md *ctx, const struct xlb_nexthop *nh,
				   int family, const void *saddr, const void *daddr,
				   __u32 tot_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth = data;
	__u32 ifindex;
	int rc;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	if (nh && nh->ifindex) {
		/* dmac then smac, as in the Ethernet header: one 8- and one 4-byte word */
		*(__u64 *)eth = *(const __u64 *)nh->dmac;
		*(__u32 *)((void *)eth + 8) = *(const __u32 *)(nh->dmac + 8);
		ifindex = nh->ifindex;
	} else {
		/* no cached next hop: ask the FIB (dearer, so only on a cache miss) */
		fib.ifindex = ctx->ingress_ifindex;
		fib.tot_len = tot_len;
		if (family == XLB_FAMILY_V4) {
			fib.family = AF_INET;
			__builtin_memcpy(&fib.ipv4_src, saddr, 4);
			__builtin_memcpy(&fib.ipv4_dst, daddr, 4);
		} else {
			fib.family = AF_INET6;
			__builtin_memcpy(fib.ipv6_src, saddr, 16);
			__builtin_memcpy(fib.ipv6_dst, daddr, 16);
		}
		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
		if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
			return XLB_NO_NEIGH;
		if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
			xlb_count(XLB_STAT_DROP_NO_ROUTE);
			return XDP_DROP;
		}
		data = (void *)(long)ctx->data;
		data_end = (void *)(long)ctx->data_end;
		eth = data;
		if ((void *)(eth + 1) > data_end)
			return XDP_DROP;
		__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
		ifindex = fib.ifindex;
	}
	if (ifindex == ctx->ingress_ifindex) {
		xlb_count(XLB_STAT_TX);
		return XDP_TX;
	}
	xlb_count(XLB_STAT_REDIRECT);
	return bpf_redirect(ifindex, 0);
}

#endif /* XLB_ENCAP_H */
