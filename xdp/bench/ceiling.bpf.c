// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ceiling.bpf.c: the ceiling of bench/lab_throughput.py: the least an XDP forwarder can do
 * on the LB node of that bench. One array lookup for where to send, both MACs rewritten,
 * bpf_redirect() to the interface towards the backends: the same way out as the balancer
 * takes there (it redirects too, its backends being behind another interface), with no
 * parsing, no balancing and no encapsulation.
 *
 * ceil_tunnel, the tunnel floor: the same with the least a tunnelling forwarder adds, one
 * outer header pushed (IPIP for IPv4, IP6IP6 for IPv6) with fixed addresses, no parsing
 * beyond the EtherType, no hashing, no lookups. pyxlb's IPIP modes over it: what their
 * balancing costs beyond the encapsulation any tunnelling balancer does.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct ceil_cfg {
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
	__u32 ifindex;		/* egress, in the namespace the program runs in */
	/* ceil_tunnel only: the outer addresses, network order */
	__be32 src4;
	__be32 dst4;
	__u8 src6[16];
	__u8 dst6[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ceil_cfg);
} ceil_config SEC(".maps");

SEC("xdp")
int ceil_redirect(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ceil_cfg *cfg;
	__u32 zero = 0;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	cfg = bpf_map_lookup_elem(&ceil_config, &zero);
	if (!cfg || !cfg->ifindex)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, cfg->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->smac, ETH_ALEN);
	return bpf_redirect(cfg->ifindex, 0);
}

static __always_inline __u16 ceil_csum(const __u16 *words, int n)
{
	__u32 sum = 0;
	int i;

#pragma unroll
	for (i = 0; i < n; i++)
		sum += words[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

SEC("xdp")
int ceil_tunnel(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct ceil_cfg *cfg;
	__u32 zero = 0, len;
	__be16 proto;
	int v6;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	proto = eth->h_proto;
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return XDP_DROP;
	v6 = proto == bpf_htons(ETH_P_IPV6);
	cfg = bpf_map_lookup_elem(&ceil_config, &zero);
	if (!cfg || !cfg->ifindex)
		return XDP_DROP;
	len = data_end - data - ETH_HLEN;	/* the inner packet */
	if (bpf_xdp_adjust_head(ctx, v6 ? -(int)sizeof(struct ipv6hdr) :
				     -(int)sizeof(struct iphdr)))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(eth->h_dest, cfg->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->smac, ETH_ALEN);
	eth->h_proto = proto;
	if (v6) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end)
			return XDP_DROP;
		*(__be32 *)ip6 = bpf_htonl(0x60000000);
		ip6->payload_len = bpf_htons(len);
		ip6->nexthdr = IPPROTO_IPV6;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, cfg->src6, 16);
		__builtin_memcpy(&ip6->daddr, cfg->dst6, 16);
	} else {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end)
			return XDP_DROP;
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0;
		ip->tot_len = bpf_htons(len + sizeof(*ip));
		ip->id = 0;
		ip->frag_off = bpf_htons(0x4000);	/* DF */
		ip->ttl = 64;
		ip->protocol = IPPROTO_IPIP;
		ip->check = 0;
		ip->saddr = cfg->src4;
		ip->daddr = cfg->dst4;
		ip->check = ceil_csum((const __u16 *)ip, sizeof(*ip) / 2);
	}
	return bpf_redirect(cfg->ifindex, 0);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
