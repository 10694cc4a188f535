// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * pass.bpf.c: an XDP program that passes every frame. A veth delivers frames that its
 * peer sends with XDP_TX or a redirect only when it runs a native XDP program itself, so
 * the lab puts this one on the far side of each balancer's link.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xlb_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
