// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * bench.bpf.c: benchmark-only entries around the balancer, for bench/datapath.py. Never
 * attached to an interface.
 *
 * BPF_PROG_TEST_RUN with repeat N hands every iteration the same buffer, so a packet the
 * balancer encapsulated in iteration 1 would be what iteration 2 parses. bench_balancer
 * therefore saves the head of the frame, runs the balancer's own xlb_handle_frame() (the
 * headers are included unchanged, with their own maps), then moves the head back to where
 * it was and copies the saved bytes over it: every iteration sees the original packet.
 * bench_wrapper does the same save and restore around nothing, so its cost (minus
 * bench_empty's) is what the wrapper adds to each bench_balancer figure.
 */
#define XLB_BALANCER_MAPS

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "consts.h"
#include "structs.h"
#include "maps.h"
#include "parse.h"
#include "balance.h"

/* Bytes saved and restored: the bench's test frames are exactly this long (the balancer
 * itself only overwrites the Ethernet header and VLAN tag of the frame it encapsulates). */
#define BENCH_SAVE 128

struct bench_saved {
	__u64 bytes[BENCH_SAVE / 8];
	long len;		/* data_end - data when saved */
	long jumped;		/* bench_balancer saved the frame and may tail-call: the
				 * program it jumps to puts the frame back (bench_chain_local) */
};

/*
 * Where the saved bytes wait. Not the stack: the balancer alone uses 344 of its 512 bytes,
 * and clang refuses 128 more. XDP runs with migration disabled, so one per-CPU slot is
 * private to the running packet. The lookup is part of the wrapper's measured cost.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_saved);
} bench_scratch SEC(".maps");

/*
 * Copy the saved span by 8-byte words. __builtin_memcpy would copy byte by byte here (clang
 * knows nothing of the packet's alignment): 256 instructions and ~17 ns for 128 bytes,
 * which would swamp the cheaper cases. x86 does not mind unaligned loads.
 */
static __always_inline void bench_copy(void *dst, const void *src)
{
	__u64 *d = dst;
	const __u64 *from = src;

#pragma unroll
	for (int i = 0; i < BENCH_SAVE / 8; i++)
		d[i] = from[i];
}

/* The scratch slot, filled with the head of the frame; NULL if the frame is too short. */
static __always_inline struct bench_saved *bench_save(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bench_saved *s;
	__u32 zero = 0;

	if (data + BENCH_SAVE > data_end)
		return NULL;
	s = bpf_map_lookup_elem(&bench_scratch, &zero);
	if (!s)
		return NULL;
	bench_copy(s->bytes, data);
	s->len = data_end - data;
	return s;
}

/*
 * Undo a head adjustment and put the saved bytes back. bpf_xdp_adjust_head() never moves
 * ctx->data_end, so how far ctx->data moved is how much the frame grew, read as a length:
 * a packet pointer kept from before the call would be invalidated by the verifier. The
 * helper is called even when nothing moved, so bench_wrapper pays exactly what
 * bench_balancer pays for a forwarded packet.
 */
static __always_inline int bench_restore(struct xdp_md *ctx, const struct bench_saved *s)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	long grown = data_end - data;

	/* keep clang from folding this into data + len, a pointer the verifier refuses (the
	 * subtraction of two packet pointers itself needs CAP_PERFMON: the bench runs as root) */
	asm volatile("" : "+r"(grown));
	grown -= s->len;
	if (bpf_xdp_adjust_head(ctx, (int)grown))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + BENCH_SAVE > data_end)
		return -1;
	bench_copy(data, s->bytes);
	return 0;
}

/*
 * The balancer's frame handling as a BPF-to-BPF call rather than inlined into the wrapper.
 * Inlined, clang schedules the wrapper and the balancer together, and in one such
 * schedule the verifier refused the NDP reply's checksum store (a packet pointer it had
 * marked beyond the end). As its own function it compiles to the same instructions as
 * balancer.bpf.c's entry (checked with llvm-objdump), which the verifier accepts.
 * bench_wrapper makes the same call to a function doing nothing, so the call is part of
 * the wrapper cost that is subtracted.
 */
static __noinline int bench_handle(struct xdp_md *ctx)
{
	return xlb_handle_frame(ctx);
}

static __noinline int bench_nothing(struct xdp_md *ctx)
{
	int action = XDP_PASS;

	/* opaque to clang, so neither the call nor its result is folded away */
	asm volatile("" : "+r"(action));
	return action;
}

/* The balancer, with the frame put back as it came after each packet. A frame too short to
 * save, or one that cannot be restored, is XDP_ABORTED (the bench checks the action). */
SEC("xdp")
int bench_balancer(struct xdp_md *ctx)
{
	struct bench_saved *saved = bench_save(ctx);
	int action;

	if (!saved)
		return XDP_ABORTED;
	saved->jumped = 1;
	action = bench_handle(ctx);
	saved->jumped = 0;
	if (bench_restore(ctx, saved))
		return XDP_ABORTED;
	return action;
}

/*
 * xlb_chain_local as this object's own balancer reaches it (the loader fills this object's
 * xlb_jumps with it: bench/datapath.py). A tail call never returns, so when bench_balancer
 * saved the frame this program puts it back, as bench_balancer would have; reached from
 * bench_direct it leaves the frame as xlb_chain_local does.
 */
SEC("xdp")
int bench_chain_local(struct xdp_md *ctx)
{
	int action = xlb_chain_here(ctx);
	struct bench_saved *s;
	__u32 zero = 0;

	s = bpf_map_lookup_elem(&bench_scratch, &zero);
	if (!s || !s->jumped)
		return action;
	s->jumped = 0;
	if (bench_restore(ctx, s))
		return XDP_ABORTED;
	return action;
}

/* The wrapper's own cost: save, call and restore around no work at all. */
SEC("xdp")
int bench_wrapper(struct xdp_md *ctx)
{
	struct bench_saved *saved = bench_save(ctx);
	int action;

	if (!saved)
		return XDP_ABORTED;
	action = bench_nothing(ctx);
	if (bench_restore(ctx, saved))
		return XDP_ABORTED;
	return action;
}

/*
 * A flood of forged flows (tests/datapath/test_flood.py, bench/flood.py): iteration n of a
 * run (counted in bench_flood_state: one counter for every CPU, since a long test run may
 * move from one CPU to another between iterations, and a per-CPU count would start the
 * flood over there, sending old flows' packets again) is packet n % 2 of forged flow n / 2, or with
 * a gap g the second packet of flow n / 2 - g, so that g flows' first packets come between
 * a flow's two. The frame is a TCP or UDP packet to a VIP, at least BENCH_SAVE bytes; the
 * low 32 bits of its source address become `prefix` + the flow's number, and a TCP
 * packet's flags SYN (first packet) or ACK (second). The frame is put back after each.
 */
struct bench_flood_state {
	__u64 n;		/* iterations so far */
	__u32 prefix;		/* host order: the source's low 32 bits are prefix + flow */
	__u32 gap;		/* flows between a flow's first and second packet */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_flood_state);
} bench_flood_state SEC(".maps");

static __always_inline int bench_forge(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bench_flood_state *st;
	__u32 zero = 0, flow, src_at, l4_at;
	__u8 *p = data, proto;
	__u64 n;

	st = bpf_map_lookup_elem(&bench_flood_state, &zero);
	if (!st)
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	p = data;
	if (data + BENCH_SAVE > data_end)
		return -1;
	n = __sync_fetch_and_add(&st->n, 1);
	flow = (__u32)(n >> 1);
	if (n & 1)
		flow = flow >= st->gap ? flow - st->gap : flow;
	if (p[12] == 0x08 && p[13] == 0x00) {		/* IPv4: source at 26, protocol at 23 */
		src_at = 26;
		proto = p[23];
		l4_at = 14 + (p[14] & 0x0f) * 4;
	} else {					/* IPv6: the source's last word at 34 */
		src_at = 34;
		proto = p[20];
		l4_at = 54;
	}
	p = data + (src_at & 63);
	if ((void *)(p + 4) > data_end)
		return -1;
	*(__be32 *)p = bpf_htonl(st->prefix + flow);
	if (proto == IPPROTO_TCP) {
		p = data + ((l4_at + 13) & 127);
		if ((void *)(p + 1) > data_end)
			return -1;
		*p = (n & 1) ? 0x10 : 0x02;
	}
	return 0;
}

SEC("xdp")
int bench_flood(struct xdp_md *ctx)
{
	struct bench_saved *saved = bench_save(ctx);
	int action;

	if (!saved || bench_forge(ctx))
		return XDP_ABORTED;
	action = bench_handle(ctx);
	if (bench_restore(ctx, saved))
		return XDP_ABORTED;
	return action;
}

/* The balancer exactly as balancer.bpf.c's entry runs it (no restore): one run shows the
 * packet it sends, and packets it passes untouched can be timed without the wrapper. */
SEC("xdp")
int bench_direct(struct xdp_md *ctx)
{
	return xlb_handle_frame(ctx);
}

/* The floor: what BPF_PROG_TEST_RUN costs for a program that does nothing. */
SEC("xdp")
int bench_empty(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
