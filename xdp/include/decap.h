/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* decap.h: checks shared by both programs before a tunnelled packet is decapsulated: the
 * outer source (when configured) and the inner packet's sanity. */
#ifndef XLB_DECAP_H
#define XLB_DECAP_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "encap.h"
#include "conntrack.h"

/* Is the outer source allowed to tunnel to us? Always, unless the check is configured. */
static __always_inline int xlb_source_allowed(const struct xlb_flow_key *outer)
{
	struct xlb_lpm_key lpm = { .prefixlen = 128 };
	struct xlb_config *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&xlb_config, &zero);
	if (!cfg || !(cfg->flags & XLB_CFG_DECAP_CHECK_SOURCE))
		return 1;
	if (outer->family == XLB_FAMILY_V4) {
		/* IPv4 sources live in the trie as ::ffff:a.b.c.d */
		lpm.addr[10] = 0xff;
		lpm.addr[11] = 0xff;
		__builtin_memcpy(&lpm.addr[12], outer->src, 4);
	} else {
		__builtin_memcpy(lpm.addr, outer->src, 16);
	}
	return bpf_map_lookup_elem(&xlb_decap_sources, &lpm) != NULL;
}

/* The outer protocol says what is inside: IPv4 (IPIP) or IPv6; 0 for anything else. */
static __always_inline __u8 xlb_inner_family(__u8 outer_proto)
{
	if (outer_proto == IPPROTO_IPIP)
		return XLB_FAMILY_V4;
	if (outer_proto == IPPROTO_IPV6)
		return XLB_FAMILY_V6;
	return 0;
}

/* Parse the packet inside `outer` (whose l4_off is where it starts) into `inner`: a
 * well-formed IP header that is not a fragment, and TCP/UDP ports when it has them. */
static __always_inline int xlb_parse_inner(void *data, void *data_end,
					   const struct xlb_pkt *outer, struct xlb_pkt *inner,
					   __u8 family)
{
	int rc;

	if (outer->l4_off > 128)
		return XLB_PARSE_MALFORMED;
	inner->l3_off = outer->l4_off;
	if (family == XLB_FAMILY_V4)
		rc = xlb_parse_ipv4(data, data_end, inner);
	else
		rc = xlb_parse_ipv6(data, data_end, inner);
	if (rc != XLB_PARSE_OK)
		return rc;
	/* the inner packet must end where the outer one does */
	if (inner->l3_off + inner->l3_len != outer->l3_off + outer->l3_len)
		return XLB_PARSE_MALFORMED;
	if (inner->frag)
		return XLB_PARSE_OK;
	if (inner->l4_proto == IPPROTO_TCP || inner->l4_proto == IPPROTO_UDP)
		return xlb_parse_ports(data, data_end, inner);
	return XLB_PARSE_OK;
}

/* What both programs require before decapsulating: only the headers a balancer sends (no
 * IPv4 options, no IPv6 extension headers, no fragment), an allowed outer source, and a
 * well-formed, unfragmented inner packet, which is parsed into `inner`. */
static __always_inline int xlb_decap_acceptable(void *data, void *data_end,
						const struct xlb_pkt *outer, struct xlb_pkt *inner)
{
	__u8 family = xlb_inner_family(outer->l4_proto);
	int outer_len = outer->l4_off - outer->l3_off;

	if (!family || outer->frag ||
	    outer_len != (outer->key.family == XLB_FAMILY_V4 ? XLB_IPV4_HLEN : XLB_IPV6_HLEN))
		return 0;
	if (!xlb_source_allowed(&outer->key))
		return 0;
	return xlb_parse_inner(data, data_end, outer, inner, family) == XLB_PARSE_OK &&
	       !inner->frag;
}

/* The chain id an accepted tunnelled packet carries (consts.h), 0 if none. */
static __always_inline __u32 xlb_chain_of(void *data, void *data_end,
					  const struct xlb_pkt *outer)
{
	__u32 label;

	if (outer->key.family == XLB_FAMILY_V4) {
		struct iphdr *iph = data + outer->l3_off;

		if ((void *)(iph + 1) > data_end || !(iph->frag_off & bpf_htons(XLB_IP_DF)))
			return 0;
		return bpf_ntohs(iph->id);
	}
	struct ipv6hdr *ip6h = data + outer->l3_off;

	if ((void *)(ip6h + 1) > data_end)
		return 0;
	label = ((__u32)(ip6h->flow_lbl[0] & 0xf) << 16) | ((__u32)ip6h->flow_lbl[1] << 8) |
		ip6h->flow_lbl[2];
	return label & XLB_CHAIN_LABEL ? label & 0xffff : 0;
}

/* Has this node the inner TCP segment's connection? A socket for it (established,
 * half-open or in TIME_WAIT; a listener does not count: it would answer a stray ACK with
 * a reset), else a conntrack entry for it (a node that NATs the VIP to a pod or another
 * port has no socket for the client's 4-tuple). */
static __always_inline int xlb_has_connection(struct xdp_md *ctx, const struct xlb_pkt *inner)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 size;
	int have;

	if (inner->key.family == XLB_FAMILY_V4) {
		__builtin_memcpy(&t.ipv4.saddr, inner->key.src, 4);
		__builtin_memcpy(&t.ipv4.daddr, inner->key.dst, 4);
		t.ipv4.sport = inner->key.sport;
		t.ipv4.dport = inner->key.dport;
		size = sizeof(t.ipv4);
	} else {
		__builtin_memcpy(t.ipv6.saddr, inner->key.src, 16);
		__builtin_memcpy(t.ipv6.daddr, inner->key.dst, 16);
		t.ipv6.sport = inner->key.sport;
		t.ipv6.dport = inner->key.dport;
		size = sizeof(t.ipv6);
	}
	sk = bpf_skc_lookup_tcp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		have = sk->state != BPF_TCP_LISTEN;
		bpf_sk_release(sk);
		if (have)
			return 1;
	}
	return xlb_in_conntrack(ctx, &t, size);
}

/*
 * Stateless mode, on the backend (docs/datapath.md, "Stateless mode"): an accepted packet
 * that carries a chain id and is a TCP segment without SYN, of a connection this node has
 * no socket for, belongs to the slot's previous owner. Re-address the outer header to the
 * peer that chain id names (same outer family), without the chain id, so the peer
 * decapsulates it whatever it finds (never a loop), and send it there. Returns the action,
 * or -1 to decapsulate here (no chain id, a SYN, a connection of ours, no such peer).
 */
static __always_inline int xlb_chain(struct xdp_md *ctx, const struct xlb_pkt *outer,
				     const struct xlb_pkt *inner)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_chain_peer *peer;
	__u32 chain, tot;
	int rc;

	chain = xlb_chain_of(data, data_end, outer);
	if (!chain || inner->l4_proto != IPPROTO_TCP || xlb_tcp_syn(ctx, inner))
		return -1;
	peer = bpf_map_lookup_elem(&xlb_chain_peers, &chain);
	if (!peer || peer->family != outer->key.family) {
		xlb_count(XLB_STAT_CHAIN_NO_PEER);
		return -1;
	}
	if (xlb_has_connection(ctx, inner))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	tot = outer->l3_len;
	if (outer->key.family == XLB_FAMILY_V4) {
		struct iphdr *iph = data + outer->l3_off;
		__be32 saddr, daddr;

		if ((void *)(iph + 1) > data_end)
			return xlb_internal_drop();
		saddr = iph->saddr;
		__builtin_memcpy(&daddr, peer->addr, 4);
		xlb_write_ipv4(iph, iph->tos, tot, 1, 0, iph->protocol, saddr, daddr);
		xlb_count(XLB_STAT_CHAIN_FORWARDED);
		rc = xlb_send(ctx, NULL, XLB_FAMILY_V4, &saddr, &daddr, tot);
	} else {
		struct ipv6hdr *ip6h = data + outer->l3_off;
		const __u32 *to = (const __u32 *)peer->addr;	/* a map value's: aligned */
		__u32 *daddr = (__u32 *)&ip6h->daddr;
		__u8 saddr[16];

		if ((void *)(ip6h + 1) > data_end)
			return xlb_internal_drop();
		__builtin_memcpy(saddr, &ip6h->saddr, 16);
		/* word by word: a memcpy from the u8 array is sixteen byte copies */
		daddr[0] = to[0];
		daddr[1] = to[1];
		daddr[2] = to[2];
		daddr[3] = to[3];
		ip6h->flow_lbl[0] &= ~((XLB_CHAIN_LABEL >> 16) & 0xf);
		ip6h->hop_limit = XLB_TTL;
		xlb_count(XLB_STAT_CHAIN_FORWARDED);
		rc = xlb_send(ctx, NULL, XLB_FAMILY_V6, saddr, peer->addr, tot);
	}
	if (rc != XLB_NO_NEIGH)
		return rc;
	/* no neighbour for the peer yet: the kernel forwards it (and resolves one) */
	xlb_count(XLB_STAT_PASS_NO_NEIGH);
	return XDP_PASS;
}

/* Strip the outer header of an accepted packet and pass the inner one up. */
static __always_inline int xlb_strip_outer(struct xdp_md *ctx,
					   const struct xlb_pkt *outer)
{
	__be16 proto = xlb_inner_family(outer->l4_proto) == XLB_FAMILY_V4 ?
		       bpf_htons(ETH_P_IP) : bpf_htons(ETH_P_IPV6);

	if (xlb_pop_outer(ctx, outer->l3_off, outer->l4_off - outer->l3_off, proto)) {
		xlb_count(XLB_STAT_DECAP_REFUSED);
		return XDP_PASS;
	}
	xlb_count(XLB_STAT_DECAP);
	return XDP_PASS;
}

#endif /* XLB_DECAP_H */
