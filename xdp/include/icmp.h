/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* icmp.h: "fragmentation needed" (ICMPv4) and "packet too big" (ICMPv6) errors, written in
 * place of a VIP packet that would exceed the MTU once encapsulated. */
#ifndef XLB_ICMP_H
#define XLB_ICMP_H

#include <linux/bpf.h>
#include <linux/icmpv6.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "csum.h"
#include "encap.h"
#include "maps.h"
#include "parse.h"

#define XLB_ICMP_HLEN 8
/* linux/icmp.h pulls in libc's socket headers, so the few ICMPv4 bits are here */
#define XLB_ICMP_DEST_UNREACH 3
#define XLB_ICMP_FRAG_NEEDED 4

struct xlb_icmphdr {
	__u8 type;
	__u8 code;
	__be16 checksum;
	__be16 unused;
	__be16 mtu;		/* next-hop MTU of a "fragmentation needed" */
};
#define XLB_IPV6_MIN_MTU 1280

/* Swap the Ethernet addresses: the error goes back the way the packet came. */
static __always_inline int xlb_eth_reverse(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	__u8 tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
	return 0;
}

/* Cut the frame to `len` bytes. */
static __always_inline int xlb_truncate(struct xdp_md *ctx, __u32 len)
{
	__u32 cur = ctx->data_end - ctx->data;

	if (len > cur)
		return -1;
	return len == cur ? 0 : bpf_xdp_adjust_tail(ctx, (int)len - (int)cur);
}

/*
 * ICMPv4 type 3 code 4 to the client, from the VIP, quoting the IP header (options
 * included) and 8 bytes of payload. `mtu` is the next-hop MTU the client must use.
 */
static __always_inline int xlb_icmp4_too_big(struct xdp_md *ctx, struct xlb_pkt *pkt, __u16 mtu)
{
	__u32 hlen = pkt->l4_off - pkt->l3_off;
	__u32 quote = hlen + 8;
	__be32 client, vip;
	void *data, *data_end;
	struct iphdr *iph;
	struct xlb_icmphdr *icmp;
	__u64 sum;

	if (hlen < 20 || hlen > 60)
		return xlb_internal_drop();
	__builtin_memcpy(&client, pkt->key.src, 4);
	__builtin_memcpy(&vip, pkt->key.dst, 4);
	if (xlb_truncate(ctx, pkt->l3_off + quote))
		return xlb_internal_drop();
	if (bpf_xdp_adjust_head(ctx, -(XLB_IPV4_HLEN + XLB_ICMP_HLEN)))
		return xlb_internal_drop();
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (xlb_move_eth(data, data_end, XLB_IPV4_HLEN + XLB_ICMP_HLEN, 0, pkt->l3_off,
			 bpf_htons(ETH_P_IP)))
		return xlb_internal_drop();
	if (xlb_eth_reverse(data, data_end))
		return xlb_internal_drop();
	iph = data + (pkt->l3_off == ETH_HLEN ? ETH_HLEN : ETH_HLEN + 4);
	icmp = (void *)(iph + 1);
	if ((void *)(icmp + 1) > data_end)
		return xlb_internal_drop();
	xlb_write_ipv4(iph, 0, XLB_IPV4_HLEN + XLB_ICMP_HLEN + quote, 0, 0, IPPROTO_ICMP, vip,
		       client);

	icmp->type = XLB_ICMP_DEST_UNREACH;
	icmp->code = XLB_ICMP_FRAG_NEEDED;
	icmp->checksum = 0;
	icmp->unused = 0;
	icmp->mtu = bpf_htons(mtu);
	sum = xlb_csum_add(0, icmp, XLB_ICMP_HLEN + quote, data_end, XLB_ICMP_HLEN + 68);
	xlb_barrier_var(icmp);
	if ((void *)(icmp + 1) > data_end)
		return xlb_internal_drop();
	icmp->checksum = xlb_csum_fold(sum);
	xlb_count(XLB_STAT_ICMP_SENT);
	return XDP_TX;
}

/* ICMPv6 "packet too big" to the client, from the VIP, quoting XLB_ICMP6_QUOTE bytes. */
static __always_inline int xlb_icmp6_too_big(struct xdp_md *ctx, struct xlb_pkt *pkt, __u32 mtu)
{
	__u32 quote = XLB_ICMP6_QUOTE;
	__u32 client[4], vip[4];
	void *data, *data_end;
	struct ipv6hdr *ip6h;
	struct icmp6hdr *icmp6;
	__u64 sum;

	if (pkt->l3_len < quote)
		quote = pkt->l3_len & ~1u;
	if (mtu < XLB_IPV6_MIN_MTU)
		mtu = XLB_IPV6_MIN_MTU;
	__builtin_memcpy(client, pkt->key.src, 16);
	__builtin_memcpy(vip, pkt->key.dst, 16);
	if (xlb_truncate(ctx, pkt->l3_off + quote))
		return xlb_internal_drop();
	if (bpf_xdp_adjust_head(ctx, -(XLB_IPV6_HLEN + XLB_ICMP_HLEN)))
		return xlb_internal_drop();
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (xlb_move_eth(data, data_end, XLB_IPV6_HLEN + XLB_ICMP_HLEN, 0, pkt->l3_off,
			 bpf_htons(ETH_P_IPV6)))
		return xlb_internal_drop();
	if (xlb_eth_reverse(data, data_end))
		return xlb_internal_drop();
	ip6h = data + (pkt->l3_off == ETH_HLEN ? ETH_HLEN : ETH_HLEN + 4);
	icmp6 = (void *)(ip6h + 1);
	if ((void *)(icmp6 + 1) > data_end)
		return xlb_internal_drop();
	xlb_write_ipv6(ip6h, 0, 0, XLB_ICMP_HLEN + quote, IPPROTO_ICMPV6, vip, client);

	icmp6->icmp6_type = ICMPV6_PKT_TOOBIG;
	icmp6->icmp6_code = 0;
	icmp6->icmp6_cksum = 0;
	icmp6->icmp6_mtu = bpf_htonl(mtu);
	sum = xlb_csum_pseudo6(vip, client, XLB_ICMP_HLEN + quote, IPPROTO_ICMPV6);
	sum = xlb_csum_add(sum, icmp6, XLB_ICMP_HLEN + quote, data_end,
			   XLB_ICMP_HLEN + XLB_ICMP6_QUOTE);
	xlb_barrier_var(icmp6);
	if ((void *)(icmp6 + 1) > data_end)
		return xlb_internal_drop();
	icmp6->icmp6_cksum = xlb_csum_fold(sum);
	xlb_count(XLB_STAT_ICMP_SENT);
	return XDP_TX;
}

/* The sum of XLB_ICMP_HLEN + XLB_STEER_QUOTE bytes at `p` (the caller checked they are
 * there): a constant length, unrolled, one bounds check instead of one a word. */
static __always_inline __u64 xlb_csum_steer_quote(__u64 sum, const void *p)
{
	const __u16 *w = p;

#pragma unroll
	for (int i = 0; i < (XLB_ICMP_HLEN + XLB_STEER_QUOTE) / 2; i++)
		sum += w[i];
	return sum;
}

/*
 * Cut a steered ICMPv4 "fragmentation needed" / ICMPv6 "packet too big" (the packet in
 * `pkt`, its ICMP header at l4_off; `family` a constant at each call) to its IP header(s),
 * the ICMP header and the first XLB_STEER_QUOTE bytes of its quote, so that it is at most
 * `room` bytes: then it can be tunnelled to the backend, which needs only the quoted
 * headers and ports to find the connection. The IP length and the checksums are written
 * afresh (a header checksum that was wrong is right afterwards, as an error we sent would
 * be); pkt->l3_len follows. Returns 0 when cut, 1 when it cannot be made to fit (the caller
 * drops it: an error about an error is never sent), -1 on a failed helper.
 */
static __always_inline int xlb_shorten_error(struct xdp_md *ctx, struct xlb_pkt *pkt, int room,
					     const int family)
{
	__u32 hlen = pkt->l4_off - pkt->l3_off;
	__u32 len = hlen + XLB_ICMP_HLEN + XLB_STEER_QUOTE;
	__u32 addrs[8];
	void *data, *data_end;
	__u64 sum;

	if (hlen > 512 || (int)len > room || len >= pkt->l3_len)
		return 1;
	__builtin_memcpy(addrs, pkt->key.src, 16);	/* ICMPv6's pseudo-header */
	__builtin_memcpy(&addrs[4], pkt->key.dst, 16);
	if (xlb_truncate(ctx, pkt->l3_off + len))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (family == XLB_FAMILY_V4) {
		struct iphdr *iph = data + (pkt->l3_off == ETH_HLEN ? ETH_HLEN : ETH_HLEN + 4);
		struct xlb_icmphdr *icmp;

		/* the frame now holds more than 60 bytes after the IPv4 header's start */
		if (hlen < 20 || hlen > 60 || (void *)iph + 60 > data_end)
			return -1;
		iph->tot_len = bpf_htons(len);
		iph->check = 0;
		/* options and all: a helper sums a length the verifier knows only as a range
		 * at the cost of one call, where a loop would be walked once per length */
		sum = (__u32)bpf_csum_diff(NULL, 0, (void *)iph, hlen & 0x3c, 0);
		iph->check = xlb_csum_fold(sum);
		icmp = (void *)iph + hlen;
		if ((void *)icmp + XLB_ICMP_HLEN + XLB_STEER_QUOTE > data_end)
			return -1;
		icmp->checksum = 0;
		icmp->checksum = xlb_csum_fold(xlb_csum_steer_quote(0, icmp));
	} else {
		struct ipv6hdr *ip6h = data + (pkt->l3_off == ETH_HLEN ? ETH_HLEN : ETH_HLEN + 4);
		struct icmp6hdr *icmp6;

		if ((void *)(ip6h + 1) > data_end)
			return -1;
		ip6h->payload_len = bpf_htons(len - XLB_IPV6_HLEN);
		icmp6 = (void *)ip6h + hlen;
		if ((void *)icmp6 + XLB_ICMP_HLEN + XLB_STEER_QUOTE > data_end)
			return -1;
		icmp6->icmp6_cksum = 0;
		sum = xlb_csum_pseudo6(addrs, &addrs[4], XLB_ICMP_HLEN + XLB_STEER_QUOTE,
				       IPPROTO_ICMPV6);
		icmp6->icmp6_cksum = xlb_csum_fold(xlb_csum_steer_quote(sum, icmp6));
	}
	pkt->l3_len = len;
	return 0;
}

#endif /* XLB_ICMP_H */
