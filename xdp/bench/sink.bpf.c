// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * sink.bpf.c: the counting sink of bench/lab_throughput.py, attached in native mode to the
 * interface that receives what a forwarder sends to its backends. Every frame is counted
 * and dropped, so the sink costs one lookup and a few increments per packet and the
 * stack above it never runs.
 *
 * Besides the total it counts IPv6 frames, the inner protocol (looking through one IPIP,
 * IP6IP6 or IPv4-in-IPv6 header) and
 * which backend the frame was addressed to at layer 2 (the last two bits of the
 * destination MAC: the bench gives backend k the MAC ending in k), so the bench can check
 * that a forwarder really balanced and really carried both protocols.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct sink_counts {
	__u64 packets;
	__u64 bytes;
	__u64 tcp;
	__u64 udp;
	__u64 ipip;		/* of which were tunnelled (IPIP, IP6IP6, IPv4 in IPv6) */
	__u64 other;		/* neither TCP nor UDP inside */
	__u64 backend[4];	/* by destination MAC & 3 */
	__u64 ipv6;		/* of which the outer header was IPv6 */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sink_counts);
} sink_stats SEC(".maps");

SEC("xdp")
int sink_count(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + ETH_HLEN;
	struct sink_counts *c;
	__u32 zero = 0;
	__u8 proto;

	c = bpf_map_lookup_elem(&sink_stats, &zero);
	if (!c)
		return XDP_DROP;
	c->packets++;
	c->bytes += data_end - data;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	c->backend[eth->h_dest[5] & 3]++;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;

		c->ipv6++;
		if ((void *)(ip6 + 1) > data_end) {
			c->other++;
			return XDP_DROP;
		}
		proto = ip6->nexthdr;
		if (proto == IPPROTO_IPV6) {
			struct ipv6hdr *inner = (void *)(ip6 + 1);

			c->ipip++;
			if ((void *)(inner + 1) > data_end) {
				c->other++;
				return XDP_DROP;
			}
			proto = inner->nexthdr;
		} else if (proto == IPPROTO_IPIP) {
			struct iphdr *inner = (void *)(ip6 + 1);

			c->ipip++;
			if ((void *)(inner + 1) > data_end) {
				c->other++;
				return XDP_DROP;
			}
			proto = inner->protocol;
		}
	} else if ((void *)(iph + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP)) {
		c->other++;
		return XDP_DROP;
	} else {
		proto = iph->protocol;
		if (proto == IPPROTO_IPIP) {
			struct iphdr *inner = (void *)(iph + 1);

			c->ipip++;
			if ((void *)(inner + 1) > data_end) {
				c->other++;
				return XDP_DROP;
			}
			proto = inner->protocol;
		}
	}
	if (proto == IPPROTO_TCP)
		c->tcp++;
	else if (proto == IPPROTO_UDP)
		c->udp++;
	else
		c->other++;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
