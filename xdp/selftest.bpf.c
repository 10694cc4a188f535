// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * selftest.bpf.c: a small XDP program with one map of each kind pyxlb uses. The binding
 * tests (tests/datapath/test_bindings.py) load it; `pyxlb` never attaches it for traffic.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <linux/if_ether.h>

#include "consts.h"
#include "structs.h"

/* VIP-shaped keys to plain values: exercises struct keys, iteration and batch ops. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct xlb_vip_key);
	__type(value, __u64);
} xlb_test_hash SEC(".maps");

/* Slot 0: the action the program returns. Slot 1: what ring 0, slot 0 held at the last packet. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u32);
} xlb_test_array SEC(".maps");

/* Per-CPU packet and byte counters, slot 0 counts every packet the program sees. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, struct xlb_counters);
} xlb_test_counters SEC(".maps");

/* Inner-map template for the rings below; user space creates the real inner maps. */
struct xlb_test_ring {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 7);
	__type(key, __u32);
	__type(value, __u32);
};

/* Map-of-maps: outer slot -> one ring, swapped with a single update. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 4);
	__type(key, __u32);
	__array(values, struct xlb_test_ring);
} xlb_test_rings SEC(".maps");

/* Pinned by name under the object's pin root: a second load adopts it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} xlb_test_pinned SEC(".maps");

SEC("xdp")
int xlb_selftest(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct xlb_counters *cnt;
	__u32 zero = 0, one = 1;
	__u32 *action, *slot;
	void *ring;

	cnt = bpf_map_lookup_elem(&xlb_test_counters, &zero);
	if (cnt) {
		cnt->packets++;
		cnt->bytes += data_end - data;
	}
	ring = bpf_map_lookup_elem(&xlb_test_rings, &zero);
	if (ring) {
		slot = bpf_map_lookup_elem(ring, &zero);
		if (slot)
			bpf_map_update_elem(&xlb_test_array, &one, slot, BPF_ANY);
	}
	action = bpf_map_lookup_elem(&xlb_test_array, &zero);
	if (!action)
		return XDP_ABORTED;
	if (*action == XDP_TX) {
		/* swap the MAC addresses, so a test sees the program rewrite the packet */
		struct ethhdr *eth = data;
		unsigned char tmp[ETH_ALEN];

		if ((void *)(eth + 1) > data_end)
			return XDP_DROP;
		__builtin_memcpy(tmp, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, tmp, ETH_ALEN);
	}
	return *action;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
