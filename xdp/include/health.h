/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* health.h: health checks through the tunnel. A checker's TCP socket is connected to a
 * backend's own address; its packets leave re-addressed to the VIP (in IPIP mode also
 * tunnelled to the backend), and the backend's answers, sent from the VIP straight back
 * (DSR), are re-addressed from the backend so the socket takes them. Only for the local
 * ports registered in xlb_hc_paths; everything else goes on untouched. */
#ifndef XLB_HEALTH_H
#define XLB_HEALTH_H

#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "encap.h"

/* tcx's TCX_NEXT (TC_ACT_UNSPEC): on to the next program on the hook, or pass. Not
 * TCX_PASS, which would skip programs attached after ours. */
#define XLB_TC_NEXT TC_ACT_UNSPEC

/* The directions, as the helpers below take them. */
#define XLB_HC_OUT 0		/* egress: a check's packet to the backend */
#define XLB_HC_IN 1		/* ingress: the backend's answer, from the VIP */

/*
 * A check's packet out: the first one (its SYN) records the check's port and own address
 * (`src`, `len` bytes), to which answers must come; a first packet that is no SYN means
 * the socket was registered after its connection went out plain, and every other port is
 * not this check's: the packet is dropped (-1), so the check fails instead of passing
 * without the tunnel.
 */
static __always_inline int xlb_hc_learn(struct xlb_hc_path *p, const struct tcphdr *th,
					const void *src, const int len)
{
	if (p->dport == th->dest)
		return 0;
	if (p->dport || !th->syn)
		return -1;
	__builtin_memcpy(p->node, src, len);
	p->dport = th->dest;
	return 0;
}

/* Make the first `len` bytes linear (direct access needs them); -1 if the packet is
 * shorter. A check's packets come from our own TCP stack, whose headers always are. */
static __always_inline int xlb_hc_pull(struct __sk_buff *skb, __u32 len)
{
	if ((void *)(long)skb->data + len <= (void *)(long)skb->data_end)
		return 0;
	if (len > skb->len)
		return -1;
	return bpf_skb_pull_data(skb, len) ? -1 : 0;
}

/* The path of a registered TCP port: the source port going out, the destination port
 * coming in. */
static __always_inline struct xlb_hc_path *xlb_hc_lookup(const struct tcphdr *th, __u8 family,
							 const int dir)
{
	struct xlb_hc_key key = {
		.port = dir == XLB_HC_OUT ? th->source : th->dest,
		.family = family,
	};

	return bpf_map_lookup_elem(&xlb_hc_paths, &key);
}

/* Two 16-byte addresses are equal (clang turns __builtin_memcmp into a call). */
static __always_inline int xlb_hc_addr6_eq(const void *a, const void *b)
{
	const __u32 *x = a, *y = b;

	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]));
}

/* The frame's Ethernet header announces `proto` and no VLAN tag (a tagged frame is left
 * alone: the tunnel runs on the VLAN's own interface, which sees it untagged). */
static __always_inline int xlb_hc_eth_is(struct __sk_buff *skb, __be16 proto)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	return eth->h_proto == proto;
}

/* Push an outer IPv4 header (protocol IPIP) from `src` to `dst` in front of the IPv4
 * packet at ETH_HLEN, `inner_len` bytes long. */
static __always_inline int xlb_hc_push4(struct __sk_buff *skb, __be32 src, __be32 dst,
					__u32 inner_len, __u8 tos, __u8 df)
{
	struct iphdr outer;

	if (bpf_skb_adjust_room(skb, XLB_IPV4_HLEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV4))
		return -1;
	xlb_write_ipv4(&outer, tos, inner_len + XLB_IPV4_HLEN, df, 0, IPPROTO_IPIP, src, dst);
	return bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0) ? -1 : 0;
}

/* Push an outer IPv6 header (next header IPv6) from `src` to `dst` in front of the IPv6
 * packet at ETH_HLEN, `inner_len` bytes long. */
static __always_inline int xlb_hc_push6(struct __sk_buff *skb, const __u8 *src,
					const __u8 *dst, __u32 inner_len, __u8 tclass,
					__u32 flowlabel)
{
	struct ipv6hdr outer = {};

	if (bpf_skb_adjust_room(skb, XLB_IPV6_HLEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_ENCAP_L3_IPV6))
		return -1;
	xlb_write_ipv6(&outer, tclass, flowlabel, inner_len, IPPROTO_IPV6, src, dst);
	return bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0) ? -1 : 0;
}

/*
 * IPv4. Out: a registered source port towards its backend gets the VIP as destination
 * (and an outer header in IPIP mode). In: from the VIP to a registered port (from the
 * check's port, once one went out) gets the backend as source. The checksums follow the
 * address: the IPv4 header's, and TCP's through its pseudo-header (which also keeps a
 * checksum the NIC is still to fill in right).
 */
static __always_inline int xlb_hc_ipv4(struct __sk_buff *skb, const int dir)
{
	void *data, *data_end;
	struct xlb_hc_path *p;
	struct iphdr *iph;
	struct tcphdr *th;
	__be32 old, new, dst = 0;
	__u32 l4_off, len;
	__u8 tos, df;
	int addr_off;

	if (xlb_hc_pull(skb, ETH_HLEN + XLB_IPV4_HLEN + sizeof(*th)))
		return XLB_TC_NEXT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	iph = data + ETH_HLEN;
	if ((void *)(iph + 1) > data_end)
		return XLB_TC_NEXT;
	if (iph->version != 4 || iph->ihl < 5 || iph->protocol != IPPROTO_TCP ||
	    (iph->frag_off & bpf_htons(XLB_IP_MF | XLB_IP_OFFSET)))
		return XLB_TC_NEXT;
	l4_off = ETH_HLEN + iph->ihl * 4;
	if (l4_off > ETH_HLEN + XLB_IPV4_HLEN) {
		/* with IPv4 options: make room for them too */
		if (xlb_hc_pull(skb, l4_off + sizeof(*th)))
			return XLB_TC_NEXT;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		iph = data + ETH_HLEN;
		if ((void *)(iph + 1) > data_end)
			return XLB_TC_NEXT;
	}
	if (l4_off > ETH_HLEN + 60)
		return XLB_TC_NEXT;
	th = data + l4_off;
	if ((void *)(th + 1) > data_end)
		return XLB_TC_NEXT;
	p = xlb_hc_lookup(th, XLB_FAMILY_V4, dir);
	if (!p)
		return XLB_TC_NEXT;
	if (dir == XLB_HC_OUT) {
		__builtin_memcpy(&dst, p->backend, 4);
		if (iph->daddr != dst)
			return XLB_TC_NEXT;
		if (xlb_hc_learn(p, th, &iph->saddr, 4))
			return TC_ACT_SHOT;
		old = iph->daddr;
		__builtin_memcpy(&new, p->vip, 4);
		addr_off = offsetof(struct iphdr, daddr);
	} else {
		__builtin_memcpy(&old, p->vip, 4);
		if (iph->saddr != old || th->source != p->dport ||
		    iph->daddr != *(__be32 *)p->node)
			return XLB_TC_NEXT;
		__builtin_memcpy(&new, p->backend, 4);
		addr_off = offsetof(struct iphdr, saddr);
	}
	len = bpf_ntohs(iph->tot_len);
	tos = iph->tos;
	df = (iph->frag_off & bpf_htons(XLB_IP_DF)) != 0;
	/* from here on the packet is half rewritten if a helper fails: drop it rather than let
	 * a check pass that did not go the clients' way */
	if (bpf_l4_csum_replace(skb, l4_off + offsetof(struct tcphdr, check), old, new,
				BPF_F_PSEUDO_HDR | sizeof(new)) ||
	    bpf_l3_csum_replace(skb, ETH_HLEN + offsetof(struct iphdr, check), old, new,
				sizeof(new)) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + addr_off, &new, sizeof(new), 0))
		return TC_ACT_SHOT;
	if (dir == XLB_HC_IN || p->mode != XLB_MODE_IPIP)
		return XLB_TC_NEXT;
	__builtin_memcpy(&new, p->outer_src, 4);
	if (xlb_hc_push4(skb, new, dst, len, tos, df))
		return TC_ACT_SHOT;
	return XLB_TC_NEXT;
}

/* IPv6, as xlb_hc_ipv4; TCP right after the IPv6 header (our stack adds no extension
 * headers), and no IP checksum. */
static __always_inline int xlb_hc_ipv6(struct __sk_buff *skb, const int dir)
{
	void *data, *data_end;
	struct xlb_hc_path *p;
	struct ipv6hdr *ip6h;
	struct tcphdr *th;
	__u8 old[16], new[16];
	__u32 l4_off = ETH_HLEN + XLB_IPV6_HLEN, len, flowlabel;
	__s64 diff;
	__u8 tclass;
	int addr_off;

	if (xlb_hc_pull(skb, l4_off + sizeof(*th)))
		return XLB_TC_NEXT;
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	ip6h = data + ETH_HLEN;
	th = data + l4_off;
	if ((void *)(th + 1) > data_end)
		return XLB_TC_NEXT;
	if (ip6h->version != 6 || ip6h->nexthdr != IPPROTO_TCP)
		return XLB_TC_NEXT;
	p = xlb_hc_lookup(th, XLB_FAMILY_V6, dir);
	if (!p)
		return XLB_TC_NEXT;
	if (dir == XLB_HC_OUT) {
		if (!xlb_hc_addr6_eq(&ip6h->daddr, p->backend))
			return XLB_TC_NEXT;
		if (xlb_hc_learn(p, th, &ip6h->saddr, 16))
			return TC_ACT_SHOT;
		__builtin_memcpy(old, &ip6h->daddr, 16);
		__builtin_memcpy(new, p->vip, 16);
		addr_off = offsetof(struct ipv6hdr, daddr);
	} else {
		if (!xlb_hc_addr6_eq(&ip6h->saddr, p->vip) || th->source != p->dport ||
		    !xlb_hc_addr6_eq(&ip6h->daddr, p->node))
			return XLB_TC_NEXT;
		__builtin_memcpy(old, &ip6h->saddr, 16);
		__builtin_memcpy(new, p->backend, 16);
		addr_off = offsetof(struct ipv6hdr, saddr);
	}
	len = XLB_IPV6_HLEN + bpf_ntohs(ip6h->payload_len);
	tclass = (ip6h->priority << 4) | (ip6h->flow_lbl[0] >> 4);
	flowlabel = bpf_ntohs(th->source) ^ bpf_ntohs(th->dest);
	diff = bpf_csum_diff((__be32 *)old, 16, (__be32 *)new, 16, 0);
	if (diff < 0)
		return TC_ACT_SHOT;
	/* the address is stored with BPF_F_RECOMPUTE_CSUM: a received packet's full checksum
	 * (CHECKSUM_COMPLETE) covers the IPv6 header, which no checksum field makes up for */
	if (bpf_l4_csum_replace(skb, l4_off + offsetof(struct tcphdr, check), 0, diff,
				BPF_F_PSEUDO_HDR) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN + addr_off, new, 16, BPF_F_RECOMPUTE_CSUM))
		return TC_ACT_SHOT;
	if (dir == XLB_HC_IN || p->mode != XLB_MODE_IPIP)
		return XLB_TC_NEXT;
	if (xlb_hc_push6(skb, p->outer_src, p->backend, len, tclass, flowlabel))
		return TC_ACT_SHOT;
	return XLB_TC_NEXT;
}

/* Both directions: IPv4 and IPv6 TCP, untagged frames; out, only what a socket of this
 * host sent (a packet the host forwards for others is never a check, whatever its
 * ports). */
static __always_inline int xlb_hc(struct __sk_buff *skb, const int dir)
{
	if (dir == XLB_HC_OUT && !skb->sk)
		return XLB_TC_NEXT;
	if (skb->protocol == bpf_htons(ETH_P_IP) && xlb_hc_eth_is(skb, bpf_htons(ETH_P_IP)))
		return xlb_hc_ipv4(skb, dir);
	if (skb->protocol == bpf_htons(ETH_P_IPV6) && xlb_hc_eth_is(skb, bpf_htons(ETH_P_IPV6)))
		return xlb_hc_ipv6(skb, dir);
	return XLB_TC_NEXT;
}

#endif /* XLB_HEALTH_H */
