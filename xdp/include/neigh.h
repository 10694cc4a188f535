/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* neigh.h: answering ARP requests and IPv6 neighbour solicitations for announced VIPs, so
 * the node that announces a VIP in L2 mode needs no address on any interface for it. */
#ifndef XLB_NEIGH_H
#define XLB_NEIGH_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/icmpv6.h>
#include <linux/in.h>
#include <linux/ipv6.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "csum.h"
#include "icmp.h"
#include "maps.h"
#include "parse.h"

/* linux/if_arp.h pulls in libc's socket headers, so the few ARP values are here */
#define XLB_ARPHRD_ETHER 1
#define XLB_ARPOP_REQUEST 1
#define XLB_ARPOP_REPLY 2
#define XLB_ND_NS 135
#define XLB_ND_NA 136
#define XLB_ND_OPT_SLLA 1
#define XLB_ND_OPT_TLLA 2
#define XLB_NA_SOLICITED_OVERRIDE bpf_htonl(0x60000000)

/* An Ethernet/IPv4 ARP body. */
struct xlb_arp {
	__be16 htype;
	__be16 ptype;
	__u8 hlen;
	__u8 plen;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
} __attribute__((packed));

/* A neighbour solicitation or advertisement, with one link-layer address option. */
struct xlb_nd {
	__u8 type;
	__u8 code;
	__be16 csum;
	__be32 flags;
	__u8 target[16];
	__u8 opt_type;
	__u8 opt_len;		/* in units of 8 bytes */
	__u8 opt_mac[ETH_ALEN];
};

#define XLB_NS_MIN_LEN 24	/* a solicitation may come without the option */

/* The announce entry for an address, if we answer for it on this interface. */
static __always_inline struct xlb_addr *xlb_announced(struct xdp_md *ctx, const void *addr,
						       int len, __u8 family)
{
	struct xlb_addr_key key = {};
	struct xlb_addr *entry;

	__builtin_memcpy(key.addr, addr, len == 4 ? 4 : 16);
	key.family = family;
	entry = bpf_map_lookup_elem(&xlb_vip_addrs, &key);
	if (!entry || !(entry->flags & XLB_ADDR_ANNOUNCE))
		return NULL;
	if (entry->ifindex && entry->ifindex != ctx->ingress_ifindex)
		return NULL;
	return entry;
}

/* Turn an ARP request for an announced VIP into the reply, in place. */
static __always_inline int xlb_arp_reply(struct xdp_md *ctx, __u16 l3_off)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct xlb_arp *arp;
	struct xlb_addr *entry;
	__u8 vip[4];

	if (l3_off != ETH_HLEN && l3_off != ETH_HLEN + 4)
		goto pass;
	arp = data + l3_off;
	if ((void *)(arp + 1) > data_end || (void *)(eth + 1) > data_end) {
		xlb_count(XLB_STAT_PASS_MALFORMED);
		return XDP_PASS;
	}
	if (arp->htype != bpf_htons(XLB_ARPHRD_ETHER) || arp->ptype != bpf_htons(ETH_P_IP) ||
	    arp->hlen != ETH_ALEN || arp->plen != 4 || arp->op != bpf_htons(XLB_ARPOP_REQUEST))
		goto pass;
	entry = xlb_announced(ctx, arp->tpa, 4, XLB_FAMILY_V4);
	if (!entry)
		goto pass;
	__builtin_memcpy(vip, arp->tpa, 4);
	arp->op = bpf_htons(XLB_ARPOP_REPLY);
	__builtin_memcpy(arp->tha, arp->sha, ETH_ALEN);
	__builtin_memcpy(arp->tpa, arp->spa, 4);
	__builtin_memcpy(arp->sha, entry->mac, ETH_ALEN);
	__builtin_memcpy(arp->spa, vip, 4);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, entry->mac, ETH_ALEN);
	xlb_count(XLB_STAT_ARP_REPLY);
	return XDP_TX;
pass:
	xlb_count(XLB_STAT_PASS_NOT_VIP);
	return XDP_PASS;
}

/*
 * Answer a neighbour solicitation for an announced VIP with a solicited, override
 * advertisement carrying our MAC. Returns -1 when the packet is not one we answer (the
 * caller goes on with it).
 */
static __always_inline int xlb_ns_reply(struct xdp_md *ctx, struct xlb_pkt *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ipv6hdr *ip6h = data + pkt->l3_off;
	struct xlb_nd *nd = data + pkt->l4_off;
	struct xlb_addr *entry;
	__u32 target[4], asker[4];
	__u8 mac[ETH_ALEN];
	__u64 sum;

	/* no extension headers, and an ICMP length of at least 24 (RFC 4861 7.1.1) by the
	 * IPv6 payload length: what the frame holds after it is not the solicitation's */
	if (pkt->l4_off != pkt->l3_off + XLB_IPV6_HLEN ||
	    pkt->l3_len < XLB_IPV6_HLEN + XLB_NS_MIN_LEN)
		return -1;
	if ((void *)(ip6h + 1) > data_end || (void *)nd + XLB_NS_MIN_LEN > data_end)
		return -1;
	/* RFC 4861 7.1.1: hop limit 255 and code 0, else not a valid solicitation */
	if (nd->type != XLB_ND_NS || nd->code != 0 || ip6h->hop_limit != 255)
		return -1;
	__builtin_memcpy(asker, &ip6h->saddr, 16);
	/* duplicate address detection (source ::) is not answered: the VIP is not ours alone */
	if (!(asker[0] | asker[1] | asker[2] | asker[3]))
		return -1;
	entry = xlb_announced(ctx, nd->target, 16, XLB_FAMILY_V6);
	if (!entry)
		return -1;
	__builtin_memcpy(target, nd->target, 16);
	__builtin_memcpy(mac, entry->mac, ETH_ALEN);

	if (xlb_truncate(ctx, pkt->l3_off + XLB_IPV6_HLEN + XLB_NS_MIN_LEN) == 0 &&
	    bpf_xdp_adjust_tail(ctx, sizeof(struct xlb_nd) - XLB_NS_MIN_LEN))
		return xlb_internal_drop();
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (xlb_eth_reverse(data, data_end))
		return xlb_internal_drop();
	__builtin_memcpy(((struct ethhdr *)data)->h_source, mac, ETH_ALEN);
	ip6h = data + (pkt->l3_off == ETH_HLEN ? ETH_HLEN : ETH_HLEN + 4);
	nd = (void *)(ip6h + 1);
	if ((void *)(nd + 1) > data_end)
		return xlb_internal_drop();
	ip6h->priority = 0;
	ip6h->flow_lbl[0] = 0;
	ip6h->flow_lbl[1] = 0;
	ip6h->flow_lbl[2] = 0;
	ip6h->payload_len = bpf_htons(sizeof(*nd));
	ip6h->nexthdr = IPPROTO_ICMPV6;
	ip6h->hop_limit = 255;
	__builtin_memcpy(&ip6h->saddr, target, 16);
	__builtin_memcpy(&ip6h->daddr, asker, 16);
	nd->type = XLB_ND_NA;
	nd->code = 0;
	nd->csum = 0;
	nd->flags = XLB_NA_SOLICITED_OVERRIDE;
	__builtin_memcpy(nd->target, target, 16);
	nd->opt_type = XLB_ND_OPT_TLLA;
	nd->opt_len = 1;
	__builtin_memcpy(nd->opt_mac, mac, ETH_ALEN);
	sum = xlb_csum_pseudo6(target, asker, sizeof(*nd), IPPROTO_ICMPV6);
	sum = xlb_csum_add(sum, nd, sizeof(*nd), data_end, sizeof(struct xlb_nd));
	xlb_barrier_var(nd);
	if ((void *)(nd + 1) > data_end)
		return xlb_internal_drop();
	nd->csum = xlb_csum_fold(sum);
	xlb_count(XLB_STAT_NDP_REPLY);
	return XDP_TX;
}

#endif /* XLB_NEIGH_H */
