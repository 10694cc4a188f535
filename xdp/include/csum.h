/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* csum.h: Internet checksums (RFC 1071) for the headers the programs write. */
#ifndef XLB_CSUM_H
#define XLB_CSUM_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

static __always_inline __u16 xlb_csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Sum of an IPv4 header without options (20 bytes), checksum field included. */
static __always_inline __u16 xlb_ipv4_csum(const void *iph)
{
	const __u16 *w = iph;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	return xlb_csum_fold(sum);
}

/*
 * Hide a pointer's value from the compiler. After xlb_csum_add() walked a header, clang may
 * reuse the loop's "past the end" pointer to store the checksum, and the verifier rejects
 * the store on that path; a fresh copy, bounds-checked again, keeps the two apart.
 */
#define xlb_barrier_var(var) asm volatile("" : "+r"(var))

/* Add `len` bytes (even, at most `max` bytes) at `p` to `sum`, checking every word against
 * data_end: the loop bound is a constant so the verifier accepts it. */
static __always_inline __u64 xlb_csum_add(__u64 sum, const void *p, __u32 len,
					  const void *data_end, const int max)
{
	const __u16 *w = p;

	for (int i = 0; i < max / 2; i++) {
		if ((__u32)i * 2 >= len)
			break;
		if ((const void *)(w + i + 1) > data_end)
			break;
		sum += w[i];
	}
	return sum;
}

/* Sum of the IPv6 pseudo-header (addresses, upper-layer length, next header). */
static __always_inline __u64 xlb_csum_pseudo6(const __u32 *saddr, const __u32 *daddr,
					      __u32 len, __u8 nexthdr)
{
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < 4; i++)
		sum += (__u64)(saddr[i] & 0xffff) + (saddr[i] >> 16) +
		       (daddr[i] & 0xffff) + (daddr[i] >> 16);
	/* each 32-bit field in network order, summed as its two 16-bit words */
	sum += (bpf_htonl(len) & 0xffff) + (bpf_htonl(len) >> 16);
	sum += (bpf_htonl((__u32)nexthdr) & 0xffff) + (bpf_htonl((__u32)nexthdr) >> 16);
	return sum;
}

#endif /* XLB_CSUM_H */
