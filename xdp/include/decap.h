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
