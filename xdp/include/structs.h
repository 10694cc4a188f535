/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* structs.h: every struct shared between the XDP programs and user space (Cython includes it). */
#ifndef XLB_STRUCTS_H
#define XLB_STRUCTS_H

#include <linux/types.h>

/*
 * Rules (another language fills these maps): fixed-width types only, explicit padding
 * fields, no bitfields, byte order noted on each field. A test checks that the sizes the
 * host compiler sees equal the sizes in the BPF object's BTF.
 */

/* Key of the VIP table. IPv4 addresses use the first 4 bytes of addr, the rest zero. */
struct xlb_vip_key {
	__u8 addr[16];		/* network order */
	__be16 port;		/* network order; 0 matches every port of addr */
	__u8 proto;		/* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;		/* XLB_FAMILY_V4 / XLB_FAMILY_V6 */
};

/* Per-CPU traffic counters, per VIP and per backend: user space sums the CPUs. */
struct xlb_counters {
	__u64 packets;		/* host order */
	__u64 bytes;		/* host order */
	__u64 new_flows;	/* host order */
};

#endif /* XLB_STRUCTS_H */
