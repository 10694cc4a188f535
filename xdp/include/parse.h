/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* parse.h: Ethernet (+ one VLAN tag), IPv4 (with options), IPv6 (with extension headers),
 * TCP/UDP ports. Every read is bounds-checked; a short or inconsistent packet is reported
 * as malformed and never balanced. */
#ifndef XLB_PARSE_H
#define XLB_PARSE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define XLB_IP_MF 0x2000
#define XLB_IP_DF 0x4000
#define XLB_IP_OFFSET 0x1FFF

enum xlb_parse {
	XLB_PARSE_OK = 0,
	XLB_PARSE_MALFORMED,
};

/* What parsing learned about a packet; internal to the programs. */
struct xlb_pkt {
	struct xlb_flow_key key;	/* addresses always; ports once parsed */
	__u32 l3_len;		/* IP packet length from its header (the frame may be padded) */
	__u16 l3_off;		/* ETH_HLEN, or ETH_HLEN + 4 with a VLAN tag */
	__u16 l4_off;		/* offset of the transport header from the frame start */
	__u8 l4_proto;		/* after IPv6 extension headers */
	__u8 frag;		/* a fragment: never balanced */
	__u8 df;		/* IPv4 DF (IPv6: 1, routers never fragment it) */
	__u8 tos;		/* IPv4 TOS / IPv6 traffic class, copied to outer headers */
};

struct xlb_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/*
 * The flow key's protocol-and-family word (protocol, family, zero padding) with one 4-byte
 * store. The flow hash and the flow table read the key back by 4-byte words, and a load
 * that spans several smaller stores still in flight stalls store-to-load forwarding.
 */
static __always_inline void xlb_key_set_proto(struct xlb_flow_key *key, __u8 proto,
					      __u8 family)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	*(__u32 *)&key->proto = (__u32)proto | (__u32)family << 8;
#else
	*(__u32 *)&key->proto = (__u32)proto << 24 | (__u32)family << 16;
#endif
}

/* Ethernet and at most one 802.1Q/802.1ad tag: returns the L3 protocol (network order)
 * and sets l3_off, or returns 0 for a frame too short to hold them. */
static __always_inline __be16 xlb_parse_eth(void *data, void *data_end, __u16 *l3_off)
{
	struct ethhdr *eth = data;
	struct xlb_vlan_hdr *vlan;

	if ((void *)(eth + 1) > data_end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_8021Q) && eth->h_proto != bpf_htons(ETH_P_8021AD)) {
		*l3_off = ETH_HLEN;
		return eth->h_proto;
	}
	vlan = (void *)(eth + 1);
	if ((void *)(vlan + 1) > data_end)
		return 0;
	*l3_off = ETH_HLEN + sizeof(*vlan);
	return vlan->proto;
}

/* IPv4 header at l3_off: addresses, length, fragment bits; l4_off past the options. */
static __always_inline int xlb_parse_ipv4(void *data, void *data_end, struct xlb_pkt *pkt)
{
	struct iphdr *iph = data + pkt->l3_off;
	__u32 hlen, tot_len;

	if ((void *)(iph + 1) > data_end)
		return XLB_PARSE_MALFORMED;
	if (iph->version != 4 || iph->ihl < 5)
		return XLB_PARSE_MALFORMED;
	hlen = iph->ihl * 4;
	tot_len = bpf_ntohs(iph->tot_len);
	/* the header must fit in the packet, and the packet must hold what it claims */
	if (tot_len < hlen || data + pkt->l3_off + tot_len > data_end)
		return XLB_PARSE_MALFORMED;
	pkt->l3_len = tot_len;
	pkt->l4_off = pkt->l3_off + hlen;
	pkt->l4_proto = iph->protocol;
	pkt->frag = (iph->frag_off & bpf_htons(XLB_IP_MF | XLB_IP_OFFSET)) != 0;
	pkt->df = (iph->frag_off & bpf_htons(XLB_IP_DF)) != 0;
	pkt->tos = iph->tos;
	xlb_key_set_proto(&pkt->key, iph->protocol, XLB_FAMILY_V4);
	__builtin_memcpy(pkt->key.src, &iph->saddr, 4);
	__builtin_memcpy(pkt->key.dst, &iph->daddr, 4);
	return XLB_PARSE_OK;
}

/* IPv6 header at l3_off, then up to XLB_IPV6_EXT_MAX hop-by-hop / routing / destination
 * options headers; a fragment header marks the packet as a fragment. */
static __always_inline int xlb_parse_ipv6(void *data, void *data_end, struct xlb_pkt *pkt)
{
	struct ipv6hdr *ip6h = data + pkt->l3_off;
	__u32 off, payload;
	__u8 nexthdr;

	if ((void *)(ip6h + 1) > data_end)
		return XLB_PARSE_MALFORMED;
	if (ip6h->version != 6)
		return XLB_PARSE_MALFORMED;
	payload = bpf_ntohs(ip6h->payload_len);
	if (data + pkt->l3_off + sizeof(*ip6h) + payload > data_end)
		return XLB_PARSE_MALFORMED;
	pkt->l3_len = sizeof(*ip6h) + payload;
	pkt->df = 1;
	pkt->tos = (ip6h->priority << 4) | (ip6h->flow_lbl[0] >> 4);
	__builtin_memcpy(pkt->key.src, &ip6h->saddr, 16);
	__builtin_memcpy(pkt->key.dst, &ip6h->daddr, 16);

	nexthdr = ip6h->nexthdr;
	off = pkt->l3_off + sizeof(*ip6h);
#pragma unroll
	for (int i = 0; i < XLB_IPV6_EXT_MAX; i++) {
		__u8 *ext = data + off;

		if (nexthdr != IPPROTO_HOPOPTS && nexthdr != IPPROTO_ROUTING &&
		    nexthdr != IPPROTO_DSTOPTS && nexthdr != IPPROTO_FRAGMENT)
			break;
		if ((void *)(ext + 8) > data_end)
			return XLB_PARSE_MALFORMED;
		if (nexthdr == IPPROTO_FRAGMENT) {
			/* ports are only in the first fragment: a fragment is never balanced */
			pkt->frag = 1;
			nexthdr = ext[0];
			off += 8;
			break;
		}
		nexthdr = ext[0];
		off += (ext[1] + 1) * 8;
	}
	/* more extension headers than we walk: the transport header is unknown */
	if (!pkt->frag && (nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
			   nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT))
		return XLB_PARSE_MALFORMED;
	if (off > pkt->l3_off + pkt->l3_len)
		return XLB_PARSE_MALFORMED;
	pkt->l4_off = off;
	pkt->l4_proto = nexthdr;
	xlb_key_set_proto(&pkt->key, nexthdr, XLB_FAMILY_V6);
	return XLB_PARSE_OK;
}

/* TCP or UDP ports into the flow key; the whole minimal header must be there. */
static __always_inline int xlb_parse_ports(void *data, void *data_end, struct xlb_pkt *pkt)
{
	__u32 need = pkt->l4_proto == IPPROTO_TCP ? sizeof(struct tcphdr) : sizeof(struct udphdr);
	__u16 *ports;

	if (pkt->l4_off > 512)
		return XLB_PARSE_MALFORMED;
	ports = data + pkt->l4_off;
	if ((void *)ports + sizeof(struct tcphdr) > data_end && pkt->l4_proto == IPPROTO_TCP)
		return XLB_PARSE_MALFORMED;
	if ((void *)ports + sizeof(struct udphdr) > data_end)
		return XLB_PARSE_MALFORMED;
	if (pkt->l4_off + need > pkt->l3_off + pkt->l3_len)
		return XLB_PARSE_MALFORMED;
	/* both ports, as they are in the header, with one store (see xlb_key_set_proto) */
	*(__u32 *)&pkt->key.sport = *(__u32 *)ports;
	return XLB_PARSE_OK;
}

/* Whether a parsed TCP packet has SYN set (xlb_parse_ports checked its header is whole;
 * the verifier wants the bound again). */
static __always_inline int xlb_tcp_syn(struct xdp_md *ctx, const struct xlb_pkt *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct tcphdr *th;

	if (pkt->l4_off > 512)
		return 0;
	th = data + pkt->l4_off;
	if ((void *)(th + 1) > data_end)
		return 0;
	return th->syn;
}

#endif /* XLB_PARSE_H */
