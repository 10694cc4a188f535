// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * health.bpf.c: the tc programs that send a node's health checks through the tunnel, as
 * clients' packets go (health.h): xlb_hc_egress re-addresses (and for IPIP encapsulates)
 * a registered check socket's packets on their way out, xlb_hc_ingress re-addresses the
 * backend's answers on their way in. pyxlb/health/tunnel.py loads them per checker process
 * and attaches them with tcx links the process owns.
 */
#define XLB_HEALTH_MAPS

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "health.h"

SEC("tc")
int xlb_hc_egress(struct __sk_buff *skb)
{
	return xlb_hc(skb, XLB_HC_OUT);
}

SEC("tc")
int xlb_hc_ingress(struct __sk_buff *skb)
{
	return xlb_hc(skb, XLB_HC_IN);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
