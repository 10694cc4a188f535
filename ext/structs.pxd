# The structs shared with the XDP programs, taken from xdp/include/structs.h (never retyped:
# only the field names Python touches are listed; sizes and layout come from the header).
from libc.stdint cimport uint8_t, uint16_t, uint64_t


cdef extern from "consts.h":
    enum:
        XLB_FAMILY_V4
        XLB_FAMILY_V6
        XLB_MAX_VIPS
        XLB_MAX_BACKENDS
        XLB_MAX_RINGS
        XLB_MAX_FLOWS
        XLB_RING_SIZE_DEFAULT


cdef extern from "structs.h":
    struct xlb_vip_key:
        uint8_t addr[16]
        uint16_t port
        uint8_t proto
        uint8_t family

    struct xlb_counters:
        uint64_t packets
        uint64_t bytes
        uint64_t new_flows
