/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* conntrack.h: the kernel's conntrack lookup from XDP (the nf_conntrack kfuncs), declared
 * here rather than from vmlinux.h, and the one question a backend asks it. */
#ifndef XLB_CONNTRACK_H
#define XLB_CONNTRACK_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#ifdef XLB_TEST_NO_CONNTRACK
/* tests only (setup.py TEST_VARIANTS): names no kernel has, as on one without nf_conntrack */
#define bpf_ct_opts xlb_test_absent_ct_opts
#define bpf_xdp_ct_lookup xlb_test_absent_ct_lookup
#define bpf_ct_release xlb_test_absent_ct_release
#endif

/*
 * The kernel's struct nf_conn, only ever held as a pointer. It must be a struct, not a
 * forward declaration: libbpf compares our prototype with the kernel's and takes a
 * declared-only struct for another kind of type ("func_proto incompatible").
 */
struct nf_conn {
	int opaque;
};

/* The lookup's options, as in net/netfilter/nf_conntrack_bpf.c (the kfuncs came with it,
 * Linux 5.18). We pass its first 12 bytes (XLB_CT_OPTS_SZ: every kernel with the kfuncs
 * takes that size; the ct_zone_* members came later, zone 0 without them). */
struct bpf_ct_opts {
	__s32 netns_id;
	__s32 error;
	__u8 l4proto;
	__u8 dir;
	__u16 ct_zone_id;
	__u8 ct_zone_dir;
	__u8 reserved[3];
};

#define XLB_CT_OPTS_SZ 12

/*
 * Weak: on a kernel without them (no nf_conntrack, or older than 5.18) libbpf leaves the
 * calls unresolved and the object still loads, provided the verifier sees they are never
 * reached. Whether they exist is asked of the kernel's BTF through the type that came with
 * them, struct bpf_ct_opts: a CO-RE relocation that libbpf turns into a constant at load
 * time, so the verifier drops the dead branch. (Testing the kfunc's address instead, as
 * libbpf's bpf_ksym_exists() does, needs Linux 6.4 to load where the kfunc exists.)
 */
extern struct nf_conn *bpf_xdp_ct_lookup(struct xdp_md *ctx, struct bpf_sock_tuple *tuple,
					 __u32 tuple__sz, struct bpf_ct_opts *opts,
					 __u32 opts__sz) __ksym __weak;
extern void bpf_ct_release(struct nf_conn *ct) __ksym __weak;

/*
 * Has this node's network namespace (the receiving device's) a conntrack entry for the
 * TCP connection whose original direction is `tuple` (of `size` bytes: its ipv4 or ipv6
 * part)? A node that NATs the VIP (kube-proxy's DNAT to a pod) has no socket for the
 * client's 4-tuple, but conntrack keeps the connection under it.
 */
static __always_inline int xlb_in_conntrack(struct xdp_md *ctx, struct bpf_sock_tuple *tuple,
					    __u32 size)
{
	struct bpf_ct_opts opts = {
		.netns_id = BPF_F_CURRENT_NETNS,
		.l4proto = IPPROTO_TCP,
	};
	struct nf_conn *ct;

	if (!bpf_core_type_exists(struct bpf_ct_opts))
		return 0;
	ct = bpf_xdp_ct_lookup(ctx, tuple, size, &opts, XLB_CT_OPTS_SZ);
	if (!ct)
		return 0;
	bpf_ct_release(ct);
	return 1;
}

#endif /* XLB_CONNTRACK_H */
