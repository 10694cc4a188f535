// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * decap.bpf.c: the XDP program for hosts that are only backends. It strips the outer
 * header of IPIP / IP6IP6 / IPv4-in-IPv6 packets whose inner destination is a VIP it was
 * given (and whose outer source is allowed, when that is configured), and passes the inner
 * packet up; everything else passes untouched. It is not an open tunnel.
 */
#define XLB_DECAP_MAPS

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "encap.h"
#include "decap.h"

SEC("xdp")
int xlb_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_pkt outer = {}, inner = {};
	struct xlb_addr_key vip = {};
	__be16 proto = xlb_parse_eth(data, data_end, &outer.l3_off);
	int rc;

	if (proto == bpf_htons(ETH_P_IP))
		rc = xlb_parse_ipv4(data, data_end, &outer);
	else if (proto == bpf_htons(ETH_P_IPV6))
		rc = xlb_parse_ipv6(data, data_end, &outer);
	else
		goto not_tunnel;
	if (rc != XLB_PARSE_OK) {
		xlb_count(XLB_STAT_PASS_MALFORMED);
		return XDP_PASS;
	}
	if (!xlb_inner_family(outer.l4_proto))
		goto not_tunnel;
	if (!xlb_decap_acceptable(data, data_end, &outer, &inner))
		goto refuse;
	/* a backend-only host is given VIP addresses, not ports */
	__builtin_memcpy(vip.addr, inner.key.dst, 16);
	vip.family = inner.key.family;
	if (!bpf_map_lookup_elem(&xlb_decap_vips, &vip))
		goto refuse;
	rc = xlb_chain(ctx, &outer, &inner);
	if (rc >= 0)
		return rc;
	return xlb_strip_outer(ctx, &outer);
refuse:
	xlb_count(XLB_STAT_DECAP_REFUSED);
	return XDP_PASS;
not_tunnel:
	xlb_count(XLB_STAT_PASS_NOT_VIP);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
