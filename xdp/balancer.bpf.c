// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * balancer.bpf.c: the XDP program on an LB node's uplink. VIP traffic is balanced with
 * Maglev and a flow table and sent to its backend by direct server return; tunnelled VIP
 * traffic for this node is decapsulated; ARP/NDP for announced VIPs is answered; all
 * other traffic passes untouched. The logic lives in xdp/include/ (one header a concern).
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

SEC("xdp")
int xlb_balancer(struct xdp_md *ctx)
{
#ifdef XLB_TEST_PROGRAM_VARIANT
	/* a change of program alone, for the upgrade tests (setup.py TEST_VARIANTS) */
	volatile __u32 variant = 1;

	(void)variant;
#endif
	return xlb_handle_frame(ctx);
}

/* Reached only by tail call from xlb_balancer (xlb_jumps): a stateless VIP's segment
 * whose slot this node now owns, which may belong to the slot's previous owner. */
SEC("xdp")
int xlb_chain_local(struct xdp_md *ctx)
{
	return xlb_chain_here(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
