// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * gen.bpf.c: the packet generator of bench/lab_throughput.py. Never attached: it runs under
 * BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, where every XDP_TX it returns is
 * really transmitted out of the interface named by the test run's ctx (ingress_ifindex).
 *
 * Live-frames mode recycles its page buffers without copying the template back in, and
 * whatever handled a frame downstream (an encapsulating balancer, a NAT rewriting the
 * addresses, the TTL decrement of forwarding) may have written into it. So every packet
 * is written whole here: Ethernet, IPv4 and L4 headers, the payload zeroed, both checksums
 * computed. A 64-byte frame carries either UDP (22 bytes of payload) or TCP (10 bytes).
 *
 * Flows: with cfg.flows = N > 0, packet k of a CPU belongs to flow k % N of that CPU (a
 * fixed set: "established" traffic); with 0, every packet is a new 5-tuple (source address
 * and port from a per-CPU sequence number that never repeats within 2^29 packets). The
 * source address carries the CPU number, so CPUs sending at once never share a flow (as
 * RSS would have it). Even sequence numbers are UDP, odd ones TCP: an ACK for
 * established traffic, a SYN for new flows.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"

#define GEN_FRAME_LEN 64
#define GEN_L4_LEN (GEN_FRAME_LEN - ETH_HLEN - (int)sizeof(struct iphdr))	/* 30 */
#define GEN_EST_SPORT 10000		/* established flows: source ports 10000 + flow */
#define GEN_NEW_SPORT 16384		/* new flows: source ports 16384..49151 */

/* Written by user space before each run (slot 0). Addresses and port in network order. */
struct gen_cfg {
	__u8 dmac[ETH_ALEN];	/* the balancer's interface */
	__u8 smac[ETH_ALEN];	/* ours */
	__be32 saddr;		/* the clients' /16: host bits are filled in per packet */
	__be32 daddr;		/* the VIP */
	__be16 dport;
	__u16 pad;
	__u32 flows;		/* flows per CPU; 0: a new flow every packet */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cfg);
} gen_config SEC(".maps");

/* Packets generated so far on each CPU (never reset: new flows stay new across runs). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} gen_seq SEC(".maps");

SEC("xdp")
int gen_packet(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *iph = data + ETH_HLEN;
	void *l4 = data + ETH_HLEN + sizeof(*iph);
	struct gen_cfg *cfg;
	__u32 zero = 0, cpu, host, flow;
	__u16 sport, *w;
	__u64 *seq, n, sum;
	int tcp, i;

	if (data + GEN_FRAME_LEN > data_end)
		return XDP_ABORTED;
	cfg = bpf_map_lookup_elem(&gen_config, &zero);
	seq = bpf_map_lookup_elem(&gen_seq, &zero);
	if (!cfg || !seq)
		return XDP_ABORTED;
	n = (*seq)++;
	cpu = bpf_get_smp_processor_id() & 3;
	tcp = n & 1;
	if (cfg->flows) {
		flow = n % cfg->flows;
		host = (cpu << 14) | ((1 + flow) & 0x3fff);
		sport = GEN_EST_SPORT + flow;
	} else {
		host = (cpu << 14) | ((n >> 15) & 0x3fff);
		sport = GEN_NEW_SPORT + (n & 0x7fff);
	}

	__builtin_memcpy(eth->h_dest, cfg->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	iph->version = 4;
	iph->ihl = 5;
	iph->tos = 0;
	iph->tot_len = bpf_htons(GEN_FRAME_LEN - ETH_HLEN);
	iph->id = bpf_htons((__u16)n);
	iph->frag_off = bpf_htons(0x4000);	/* DF */
	iph->ttl = 64;
	iph->protocol = tcp ? IPPROTO_TCP : IPPROTO_UDP;
	iph->check = 0;
	iph->saddr = cfg->saddr | bpf_htonl(host);
	iph->daddr = cfg->daddr;
	iph->check = xlb_ipv4_csum(iph);

	/* the L4 segment, payload included, zeroed by 16-bit words: 15 of them */
	w = l4;
#pragma unroll
	for (i = 0; i < GEN_L4_LEN / 2; i++)
		w[i] = 0;
	if (tcp) {
		struct tcphdr *th = l4;

		th->source = bpf_htons(sport);
		th->dest = cfg->dport;
		th->seq = bpf_htonl(1);
		th->doff = 5;
		th->window = bpf_htons(512);
		if (cfg->flows) {
			th->ack = 1;
			th->ack_seq = bpf_htonl(1);
		} else {
			th->syn = 1;
		}
	} else {
		struct udphdr *uh = l4;

		uh->source = bpf_htons(sport);
		uh->dest = cfg->dport;
		uh->len = bpf_htons(GEN_L4_LEN);
	}
	/* pseudo-header (addresses, protocol, length) plus the segment as written */
	sum = (iph->saddr & 0xffff) + (iph->saddr >> 16) + (iph->daddr & 0xffff) +
	      (iph->daddr >> 16) + bpf_htons((__u16)iph->protocol) + bpf_htons(GEN_L4_LEN);
#pragma unroll
	for (i = 0; i < GEN_L4_LEN / 2; i++)
		sum += w[i];
	if (tcp) {
		((struct tcphdr *)l4)->check = xlb_csum_fold(sum);
	} else {
		__u16 c = xlb_csum_fold(sum);

		((struct udphdr *)l4)->check = c ? c : 0xffff;	/* 0 means "no checksum" */
	}
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
