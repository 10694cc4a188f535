// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * gen.bpf.c: the packet generator of bench/lab_throughput.py, bench/lab_flood.py and the lab's
 * flood test (tests/lab/test_flood.py). Never attached: it runs under BPF_PROG_TEST_RUN
 * with BPF_F_TEST_XDP_LIVE_FRAMES, where every XDP_TX it returns is really transmitted out
 * of the interface named by the test run's ctx (ingress_ifindex).
 *
 * Live-frames mode recycles its page buffers without copying the template back in, and
 * whatever handled a frame downstream (an encapsulating balancer, a NAT rewriting the
 * addresses, the TTL decrement of forwarding) may have written into it. So every packet
 * is written whole here: Ethernet, IP and L4 headers, the payload zeroed, the checksums
 * computed. The L4 segment is 30 bytes: UDP (22 bytes of payload) or TCP (10 bytes); a
 * frame is 64 bytes over IPv4, 84 over IPv6 (the test run's data must be that long).
 *
 * Flows (cfg.mode):
 * - GEN_FLOWS with cfg.flows = N > 0: packet k of a CPU belongs to flow k % N of that CPU
 *   (a fixed set: "established" traffic; with cfg.lag = L > 1, packets k to k + L - 1 all
 *   belong to flow (k / L) % N, its protocol by the parity of k / L: the same for every
 *   packet of a flow when N is even); with N = 0, every packet is a new 5-tuple
 *   (source address and port from a per-CPU sequence number that never repeats within
 *   2^29 packets). Even sequence numbers are UDP, odd ones TCP: an ACK for established
 *   traffic, a SYN for new flows.
 * - GEN_PAIRS: a flood of forged two-packet TCP flows, each a new 5-tuple: a SYN, then an
 *   ACK from the same address and port. cfg.lag flows at a time: the SYNs of `lag` flows,
 *   then their ACKs in the same order (lag 1: each ACK right behind its SYN; a larger lag
 *   puts 2 * lag packets between a flow's two). Its own per-CPU sequence, so pairs stay
 *   aligned whatever ran before.
 * - GEN_SHARED: established traffic over one set of flows shared out among the CPUs (so
 *   one CPU or two send the same flows): CPU c cycles flows gen_first[c] to gen_first[c] +
 *   cfg.flows - 1 (cfg.lag as for GEN_FLOWS). Flow f is numbered without the CPU: source
 *   port GEN_SHARED_SPORT + f % GEN_SHARED_PORTS, host part 1 + f / GEN_SHARED_PORTS
 *   (up to 588 million flows; no port used by the other modes), TCP (an ACK) when f is
 *   odd, else UDP: a flow keeps its protocol whichever CPU sends it.
 * In the other modes the source address carries the CPU number in bits 14-15 of its host
 * part (the low 32 bits of an IPv6 address), so CPUs sending at once never share a flow
 * (as RSS would have it).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"

#define GEN_FRAME_LEN 64
#define GEN_L4_LEN (GEN_FRAME_LEN - ETH_HLEN - (int)sizeof(struct iphdr))	/* 30 */
#define GEN_FRAME6_LEN (ETH_HLEN + (int)sizeof(struct ipv6hdr) + GEN_L4_LEN)	/* 84 */
#define GEN_EST_SPORT 10000		/* established flows: source ports 10000 + flow */
#define GEN_NEW_SPORT 16384		/* new flows: source ports 16384..49151 */
#define GEN_EST_FEW 16383		/* more established flows: numbered as new ones */
#define GEN_SHARED_SPORT 1024		/* GEN_SHARED: source ports 1024..9999 */
#define GEN_SHARED_PORTS 8976

/* Written by user space before each run (slot 0). Addresses and port in network order. */
struct gen_cfg {
	__u8 dmac[ETH_ALEN];	/* the balancer's interface */
	__u8 smac[ETH_ALEN];	/* ours */
	__be32 saddr;		/* the clients' /16: host bits are filled in per packet */
	__be32 daddr;		/* the VIP */
	__be16 dport;
	__u16 pad;
	__u32 flows;		/* flows per CPU; 0: a new flow every packet */
	__u32 mode;		/* GEN_FLOWS, GEN_PAIRS or GEN_SHARED */
	__u32 lag;		/* GEN_PAIRS: flows whose SYNs go before their ACKs (>= 1);
				 * GEN_FLOWS, GEN_SHARED: packets a flow sends in a row
				 * (0, 1: one) */
	__u32 family;		/* 4 or 6 (0: 4) */
	__u8 saddr6[16];	/* IPv6: the clients' /96; the low 32 bits are filled in */
	__u8 daddr6[16];	/* IPv6: the VIP */
};

#define GEN_FLOWS 0
#define GEN_PAIRS 1
#define GEN_SHARED 2

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gen_cfg);
} gen_config SEC(".maps");

/* GEN_SHARED: the first flow of each CPU's share (slot: CPU number & 3). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u32);
} gen_first SEC(".maps");

/* Packets generated so far on each CPU (never reset here: new flows stay new across runs;
 * bench/lab_throughput.py keeps slot 0 per LB node). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);		/* 0: GEN_FLOWS, 1: GEN_PAIRS, 2: GEN_SHARED */
	__type(key, __u32);
	__type(value, __u64);
} gen_seq SEC(".maps");

/* The 30-byte L4 segment at l4, its checksum over `sum` (the pseudo-header's) included. */
static __always_inline void gen_l4(void *l4, int tcp, int syn, int ack, __u16 sport,
				   __be16 dport, __u64 sum)
{
	__u16 *w = l4;
	int i;

	/* the segment, payload included, zeroed by 16-bit words: 15 of them */
#pragma unroll
	for (i = 0; i < GEN_L4_LEN / 2; i++)
		w[i] = 0;
	if (tcp) {
		struct tcphdr *th = l4;

		th->source = bpf_htons(sport);
		th->dest = dport;
		th->seq = bpf_htonl(1);
		th->doff = 5;
		th->window = bpf_htons(512);
		th->syn = syn;
		if (ack) {
			th->ack = 1;
			th->ack_seq = bpf_htonl(1);
		}
	} else {
		struct udphdr *uh = l4;

		uh->source = bpf_htons(sport);
		uh->dest = dport;
		uh->len = bpf_htons(GEN_L4_LEN);
	}
#pragma unroll
	for (i = 0; i < GEN_L4_LEN / 2; i++)
		sum += w[i];
	if (tcp) {
		((struct tcphdr *)l4)->check = xlb_csum_fold(sum);
	} else {
		__u16 c = xlb_csum_fold(sum);

		((struct udphdr *)l4)->check = c ? c : 0xffff;	/* 0 means "no checksum" */
	}
}

/* Write the next packet into the frame: XDP_TX, or XDP_ABORTED if the frame is short. */
static __always_inline int gen_write(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct gen_cfg *cfg;
	__u32 zero = 0, slot, cpu, host, flow, *first;
	__u16 sport;
	__u64 *seq, n, sum;
	int tcp, syn, ack, v6;
	__u8 proto;

	cfg = bpf_map_lookup_elem(&gen_config, &zero);
	if (!cfg)
		return XDP_ABORTED;
	v6 = cfg->family == 6;
	if (data + (v6 ? GEN_FRAME6_LEN : GEN_FRAME_LEN) > data_end)
		return XDP_ABORTED;
	slot = cfg->mode == GEN_PAIRS ? 1 : cfg->mode == GEN_SHARED ? 2 : 0;
	seq = bpf_map_lookup_elem(&gen_seq, &slot);
	if (!seq)
		return XDP_ABORTED;
	n = (*seq)++;
	cpu = bpf_get_smp_processor_id() & 3;
	if (slot == 1) {		/* GEN_PAIRS */
		__u64 lag = cfg->lag ? cfg->lag : 1;
		__u64 round = n / (2 * lag), r = n % (2 * lag);
		__u64 f = round * lag + r % lag;

		tcp = 1;
		syn = r < lag;
		ack = !syn;
		host = (cpu << 14) | ((f >> 15) & 0x3fff);
		sport = GEN_NEW_SPORT + (f & 0x7fff);
	} else if (cfg->mode == GEN_SHARED) {
		__u64 k = cfg->lag > 1 ? n / cfg->lag : n;

		first = bpf_map_lookup_elem(&gen_first, &cpu);
		if (!first || !cfg->flows)
			return XDP_ABORTED;
		flow = *first + (__u32)(k % cfg->flows);
		tcp = flow & 1;
		syn = 0;
		ack = 1;
		host = 1 + flow / GEN_SHARED_PORTS;
		sport = GEN_SHARED_SPORT + flow % GEN_SHARED_PORTS;
	} else if (cfg->flows) {
		__u64 k = cfg->lag > 1 ? n / cfg->lag : n;

		tcp = k & 1;
		syn = 0;
		ack = 1;
		flow = k % cfg->flows;
		if (cfg->flows <= GEN_EST_FEW) {
			host = (cpu << 14) | ((1 + flow) & 0x3fff);
			sport = GEN_EST_SPORT + flow;
		} else {
			host = (cpu << 14) | ((flow >> 15) & 0x3fff);
			sport = GEN_NEW_SPORT + (flow & 0x7fff);
		}
	} else {
		tcp = n & 1;
		syn = 1;
		ack = 0;
		host = (cpu << 14) | ((n >> 15) & 0x3fff);
		sport = GEN_NEW_SPORT + (n & 0x7fff);
	}
	proto = tcp ? IPPROTO_TCP : IPPROTO_UDP;

	__builtin_memcpy(eth->h_dest, cfg->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, cfg->smac, ETH_ALEN);

	if (v6) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		void *l4 = data + ETH_HLEN + sizeof(*ip6);

		if (l4 + GEN_L4_LEN > data_end)
			return XDP_ABORTED;
		eth->h_proto = bpf_htons(ETH_P_IPV6);
		*(__be32 *)ip6 = bpf_htonl(0x60000000);		/* version 6, no class or label */
		ip6->payload_len = bpf_htons(GEN_L4_LEN);
		ip6->nexthdr = proto;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, cfg->saddr6, 12);
		ip6->saddr.in6_u.u6_addr32[3] = bpf_htonl(host);
		__builtin_memcpy(&ip6->daddr, cfg->daddr6, 16);
		sum = xlb_csum_pseudo6(ip6->saddr.in6_u.u6_addr32, ip6->daddr.in6_u.u6_addr32,
				       GEN_L4_LEN, proto);
		gen_l4(l4, tcp, syn, ack, sport, cfg->dport, sum);
	} else {
		struct iphdr *iph = data + ETH_HLEN;
		void *l4 = data + ETH_HLEN + sizeof(*iph);

		if (l4 + GEN_L4_LEN > data_end)
			return XDP_ABORTED;
		eth->h_proto = bpf_htons(ETH_P_IP);
		iph->version = 4;
		iph->ihl = 5;
		iph->tos = 0;
		iph->tot_len = bpf_htons(GEN_FRAME_LEN - ETH_HLEN);
		iph->id = bpf_htons((__u16)n);
		iph->frag_off = bpf_htons(0x4000);	/* DF */
		iph->ttl = 64;
		iph->protocol = proto;
		iph->check = 0;
		iph->saddr = cfg->saddr | bpf_htonl(host);
		iph->daddr = cfg->daddr;
		iph->check = xlb_ipv4_csum(iph);
		/* pseudo-header: addresses, protocol, length */
		sum = (iph->saddr & 0xffff) + (iph->saddr >> 16) + (iph->daddr & 0xffff) +
		      (iph->daddr >> 16) + bpf_htons((__u16)proto) + bpf_htons(GEN_L4_LEN);
		gen_l4(l4, tcp, syn, ack, sport, cfg->dport, sum);
	}
	return XDP_TX;
}

SEC("xdp")
int gen_packet(struct xdp_md *ctx)
{
	return gen_write(ctx);
}

/* gen_chain's next program: slot 0, a balancer (user space puts its fd there). */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} gen_next SEC(".maps");

/*
 * The generator in front of a balancer, without transmitting: BPF_PROG_TEST_RUN (not in
 * live-frames mode) with repeat N and ctx naming the balancer's interface runs this N
 * times on one buffer; each time the frame is put back to its length (the balancer may
 * have pushed an IPIP / IP6IP6 header in front of it), the next packet is written, and
 * the balancer of gen_next runs on it as it would on a received frame: same maps, same
 * interface, its verdict discarded. For where live frames are refused (bench/lab_flood.py).
 */
SEC("xdp")
int gen_chain(struct xdp_md *ctx)
{
	struct gen_cfg *cfg;
	__u32 zero = 0;
	long len, want;

	cfg = bpf_map_lookup_elem(&gen_config, &zero);
	if (!cfg)
		return XDP_ABORTED;
	want = cfg->family == 6 ? GEN_FRAME6_LEN : GEN_FRAME_LEN;
	len = (long)ctx->data_end - (long)ctx->data;
	if (len > want && len <= want + 64 && bpf_xdp_adjust_head(ctx, (int)(len - want)))
		return XDP_ABORTED;
	if (gen_write(ctx) != XDP_TX)
		return XDP_ABORTED;
	bpf_tail_call(ctx, &gen_next, 0);
	return XDP_ABORTED;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
