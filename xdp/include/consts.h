/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* consts.h: every limit and flag shared by the XDP programs and user space. */
#ifndef XLB_CONSTS_H
#define XLB_CONSTS_H

/* Address families as stored in map keys (not AF_* values: those differ per OS). */
#define XLB_FAMILY_V4 4
#define XLB_FAMILY_V6 6

/* Map sizes; user space may shrink or grow them before load. */
#ifndef XLB_MAX_VIPS
#define XLB_MAX_VIPS 4096
#endif
#ifndef XLB_MAX_BACKENDS
#define XLB_MAX_BACKENDS 65536
#endif
#ifndef XLB_MAX_RINGS
#define XLB_MAX_RINGS XLB_MAX_VIPS
#endif
#ifndef XLB_MAX_FLOWS
#define XLB_MAX_FLOWS (1 << 20)
#endif

/* Maglev ring size: prime, per the paper; 65537 slots of 4 bytes = 256 KiB a ring. */
#define XLB_RING_SIZE_DEFAULT 65537

#endif /* XLB_CONSTS_H */
