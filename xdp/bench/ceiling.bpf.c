// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * ceiling.bpf.c: the ceiling of bench/lab_throughput.py: the least an XDP forwarder can do
 * on the LB node of that bench. One array lookup for where to send, both MACs rewritten,
 * bpf_redirect() to the interface towards the backends: the same way out as the balancer
 * takes there (it redirects too, its backends being behind another interface), with no
 * parsing, no balancing and no encapsulation.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>

struct ceil_cfg {
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
	__u32 ifindex;		/* egress, in the namespace the program runs in */
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

char LICENSE[] SEC("license") = "Dual BSD/GPL";
