# Declarations only: the parts of libbpf (1.1+) and the kernel UAPI that pyxlb._bpf calls.
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "linux/bpf.h" nogil:
    enum bpf_map_type:
        BPF_MAP_TYPE_UNSPEC
        BPF_MAP_TYPE_HASH
        BPF_MAP_TYPE_ARRAY
        BPF_MAP_TYPE_PROG_ARRAY
        BPF_MAP_TYPE_PERCPU_HASH
        BPF_MAP_TYPE_PERCPU_ARRAY
        BPF_MAP_TYPE_LRU_HASH
        BPF_MAP_TYPE_LRU_PERCPU_HASH
        BPF_MAP_TYPE_LPM_TRIE
        BPF_MAP_TYPE_ARRAY_OF_MAPS
        BPF_MAP_TYPE_HASH_OF_MAPS
        BPF_MAP_TYPE_DEVMAP
        BPF_MAP_TYPE_DEVMAP_HASH

    enum bpf_prog_type:
        BPF_PROG_TYPE_XDP

    enum:
        BPF_ANY
        BPF_NOEXIST
        BPF_EXIST
        BPF_F_NO_PREALLOC
        BPF_F_INNER_MAP
        BPF_F_MMAPABLE
        BPF_OBJ_NAME_LEN

    struct bpf_map_info:
        uint32_t type
        uint32_t id
        uint32_t key_size
        uint32_t value_size
        uint32_t max_entries
        uint32_t map_flags
        char name[16]
        uint32_t btf_id
        uint32_t btf_key_type_id
        uint32_t btf_value_type_id

    struct bpf_prog_info:
        uint32_t type
        uint32_t id
        char name[16]
        uint32_t nr_map_ids
        uint64_t map_ids
        uint64_t run_time_ns
        uint64_t run_cnt

    enum bpf_stats_type:
        BPF_STATS_RUN_TIME

    struct bpf_link_info:
        uint32_t type
        uint32_t id
        uint32_t prog_id


cdef extern from "linux/if_link.h" nogil:
    enum:
        XDP_FLAGS_UPDATE_IF_NOEXIST
        XDP_FLAGS_SKB_MODE
        XDP_FLAGS_DRV_MODE
        XDP_FLAGS_HW_MODE
        XDP_FLAGS_REPLACE
        XDP_ATTACHED_NONE
        XDP_ATTACHED_DRV
        XDP_ATTACHED_SKB
        XDP_ATTACHED_HW
        XDP_ATTACHED_MULTI


cdef extern from "bpf/bpf.h" nogil:
    struct bpf_map_create_opts:
        size_t sz
        uint32_t inner_map_fd
        uint32_t map_flags

    struct bpf_map_batch_opts:
        size_t sz
        uint64_t elem_flags
        uint64_t flags

    struct bpf_test_run_opts:
        size_t sz
        const void *data_in
        void *data_out
        uint32_t data_size_in
        uint32_t data_size_out
        const void *ctx_in
        void *ctx_out
        uint32_t ctx_size_in
        uint32_t ctx_size_out
        uint32_t retval
        int repeat
        uint32_t duration
        uint32_t flags
        uint32_t cpu
        uint32_t batch_size

    # attach_type is an enum bpf_attach_type; an int here so that values newer than the
    # UAPI headers (tcx, Linux 6.6) can be passed
    int bpf_link_create(int prog_fd, int target_fd, int attach_type, const void *opts)
    int bpf_link_get_fd_by_id(uint32_t id)
    int bpf_map_create(bpf_map_type map_type, const char *map_name, uint32_t key_size,
                       uint32_t value_size, uint32_t max_entries,
                       const bpf_map_create_opts *opts)
    int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)
    int bpf_map_lookup_elem(int fd, const void *key, void *value)
    int bpf_map_delete_elem(int fd, const void *key)
    int bpf_map_get_next_key(int fd, const void *key, void *next_key)
    int bpf_map_update_batch(int fd, const void *keys, const void *values, uint32_t *count,
                             const bpf_map_batch_opts *opts)
    int bpf_map_lookup_batch(int fd, void *in_batch, void *out_batch, void *keys,
                             void *values, uint32_t *count, const bpf_map_batch_opts *opts)
    int bpf_obj_pin(int fd, const char *pathname)
    int bpf_obj_get(const char *pathname)
    int bpf_map_get_fd_by_id(uint32_t id)
    int bpf_prog_get_fd_by_id(uint32_t id)
    int bpf_obj_get_info_by_fd(int bpf_fd, void *info, uint32_t *info_len)
    int bpf_prog_test_run_opts(int prog_fd, bpf_test_run_opts *opts)
    int bpf_enable_stats(bpf_stats_type type)


cdef extern from "bpf/libbpf.h" nogil:
    struct bpf_object:
        pass
    struct bpf_map:
        pass
    struct bpf_program:
        pass

    struct bpf_object_open_opts:
        size_t sz
        const char *object_name
        const char *pin_root_path

    struct bpf_xdp_attach_opts:
        size_t sz
        int old_prog_fd

    struct bpf_xdp_query_opts:
        size_t sz
        uint32_t prog_id
        uint32_t drv_prog_id
        uint32_t hw_prog_id
        uint32_t skb_prog_id
        uint8_t attach_mode

    enum libbpf_print_level:
        LIBBPF_WARN
        LIBBPF_INFO
        LIBBPF_DEBUG

    bpf_object *bpf_object__open_file(const char *path, const bpf_object_open_opts *opts)
    int bpf_object__load(bpf_object *obj)
    void bpf_object__close(bpf_object *obj)
    const char *bpf_object__name(const bpf_object *obj)
    bpf_map *bpf_object__find_map_by_name(const bpf_object *obj, const char *name)
    bpf_map *bpf_object__next_map(const bpf_object *obj, const bpf_map *map)
    bpf_program *bpf_object__find_program_by_name(const bpf_object *obj, const char *name)
    bpf_program *bpf_object__next_program(const bpf_object *obj, bpf_program *prog)

    int bpf_map__fd(const bpf_map *map)
    const char *bpf_map__name(const bpf_map *map)
    bpf_map_type bpf_map__type(const bpf_map *map)
    uint32_t bpf_map__max_entries(const bpf_map *map)
    int bpf_map__set_max_entries(bpf_map *map, uint32_t max_entries)
    uint32_t bpf_map__key_size(const bpf_map *map)
    uint32_t bpf_map__value_size(const bpf_map *map)
    int bpf_map__set_pin_path(bpf_map *map, const char *path)
    const char *bpf_map__pin_path(const bpf_map *map)
    bint bpf_map__is_pinned(const bpf_map *map)
    int bpf_map__reuse_fd(bpf_map *map, int fd)
    int bpf_map__set_autocreate(bpf_map *map, bint autocreate)

    int bpf_program__fd(const bpf_program *prog)
    const void *bpf_program__insns(const bpf_program *prog)
    size_t bpf_program__insn_cnt(const bpf_program *prog)
    const char *bpf_program__name(const bpf_program *prog)

    int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags,
                       const bpf_xdp_attach_opts *opts)
    int bpf_xdp_detach(int ifindex, uint32_t flags, const bpf_xdp_attach_opts *opts)
    int bpf_xdp_query(int ifindex, int flags, bpf_xdp_query_opts *opts)

    int libbpf_num_possible_cpus()

    btf *bpf_object__btf(const bpf_object *obj)
    uint32_t bpf_map__map_flags(const bpf_map *map)
    uint32_t bpf_map__btf_key_type_id(const bpf_map *map)
    uint32_t bpf_map__btf_value_type_id(const bpf_map *map)
    bpf_map *bpf_map__inner_map(bpf_map *map)


cdef extern from "bpf/btf.h" nogil:
    # What pyxlb._bpf reads of BTF: the layout of map keys and values (datapath versions).
    struct btf:
        pass

    struct btf_type:
        uint32_t name_off
        uint32_t info
        uint32_t size
        uint32_t type

    struct btf_member:
        uint32_t name_off
        uint32_t type
        uint32_t offset

    struct btf_array:
        uint32_t type
        uint32_t index_type
        uint32_t nelems

    struct btf_enum:
        uint32_t name_off
        int32_t val

    enum:
        BTF_KIND_INT
        BTF_KIND_PTR
        BTF_KIND_ARRAY
        BTF_KIND_STRUCT
        BTF_KIND_UNION
        BTF_KIND_ENUM
        BTF_KIND_FWD
        BTF_KIND_TYPEDEF
        BTF_KIND_VOLATILE
        BTF_KIND_CONST
        BTF_KIND_RESTRICT
        BTF_KIND_FLOAT
        BTF_KIND_TYPE_TAG
        BTF_KIND_ENUM64
        BTF_INT_SIGNED

    btf *btf__load_from_kernel_by_id(uint32_t id)
    btf *btf__load_vmlinux_btf()
    void btf__free(btf *b)
    const btf_type *btf__type_by_id(const btf *b, uint32_t id)
    const char *btf__name_by_offset(const btf *b, uint32_t offset)
    int btf__find_by_name_kind(const btf *b, const char *name, uint32_t kind)
    uint16_t btf_kind(const btf_type *t)
    uint16_t btf_vlen(const btf_type *t)
    uint8_t btf_int_encoding(const btf_type *t)
    btf_array *btf_array_of "btf_array"(const btf_type *t)
    btf_enum *btf_enum_of "btf_enum"(const btf_type *t)
    btf_member *btf_members(const btf_type *t)
    uint32_t btf_member_bit_offset(const btf_type *t, uint32_t member_idx)
    uint32_t btf_member_bitfield_size(const btf_type *t, uint32_t member_idx)


cdef extern from "libbpf_log.h" nogil:
    # libbpf's messages go to a buffer (and to stderr when PYXLB_LIBBPF_DEBUG is set), so an
    # error can quote the verifier's reason instead of spraying it over a CLI's output.
    void xlb_log_install()
    void xlb_log_clear()
    const char *xlb_log_text()
