# cython: language_level=3
"""pyxlb._bpf: libbpf bindings, one class per resource.

- `BpfObject`: an ELF object file, opened, adjusted (map sizes, pin paths) and loaded.
- `Map`: a BPF map by file descriptor: element and batch operations, per-CPU reads,
  map-of-maps slots, pinning.
- `Program`: a loaded program: `test_run` over BPF_PROG_TEST_RUN, pinning.
- `XdpLink`: a program attached to an interface's XDP hook (netlink attachment, so it
  outlives this process until detached).
- `TcxLink`: a tc program attached to an interface's tcx ingress or egress hook by a BPF
  link this process holds (it goes when the link is closed or the process ends).

Every instance owns its own file descriptor (maps and programs taken from an object are
duplicated), so closing one never invalidates another. Failures of the kernel or libbpf
raise OSError with the errno, which Python turns into FileNotFoundError, FileExistsError,
PermissionError where they apply; a missing key is KeyError; a buffer of the wrong size is
ValueError raised before any system call; any use of a closed object is ValueError.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.errno cimport errno, ENOENT, ENOSPC
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcmp, memset, memcpy, strerror

from includes.libbpf cimport *
from structs cimport *

import array as _array
import os
import socket
import struct as _struct


cdef extern from "fcntl.h" nogil:
    int fcntl(int fd, int cmd, ...)
    enum:
        F_DUPFD_CLOEXEC

cdef extern from "unistd.h" nogil:
    int close(int fd)


# Constants, read from the headers (never a second literal in Python).
MAP_TYPE_HASH = BPF_MAP_TYPE_HASH
MAP_TYPE_ARRAY = BPF_MAP_TYPE_ARRAY
MAP_TYPE_PERCPU_HASH = BPF_MAP_TYPE_PERCPU_HASH
MAP_TYPE_PERCPU_ARRAY = BPF_MAP_TYPE_PERCPU_ARRAY
MAP_TYPE_LRU_HASH = BPF_MAP_TYPE_LRU_HASH
MAP_TYPE_LRU_PERCPU_HASH = BPF_MAP_TYPE_LRU_PERCPU_HASH
MAP_TYPE_LPM_TRIE = BPF_MAP_TYPE_LPM_TRIE
MAP_TYPE_ARRAY_OF_MAPS = BPF_MAP_TYPE_ARRAY_OF_MAPS
MAP_TYPE_HASH_OF_MAPS = BPF_MAP_TYPE_HASH_OF_MAPS
MAP_TYPE_DEVMAP = BPF_MAP_TYPE_DEVMAP
MAP_F_NO_PREALLOC = BPF_F_NO_PREALLOC
MAP_F_INNER_MAP = BPF_F_INNER_MAP
MAP_F_MMAPABLE = BPF_F_MMAPABLE

ANY = BPF_ANY
NOEXIST = BPF_NOEXIST
EXIST = BPF_EXIST

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
# BPF_F_TEST_XDP_LIVE_FRAMES (kernel >= 5.18); kept as a literal because Debian 12's libbpf
# headers may predate it, and its value is kernel ABI.
TEST_XDP_LIVE_FRAMES = 1 << 1

CONSTANTS = {
    "XLB_FAMILY_V4": XLB_FAMILY_V4,
    "XLB_FAMILY_V6": XLB_FAMILY_V6,
    "XLB_MAX_VIPS": XLB_MAX_VIPS,
    "XLB_MAX_BACKENDS": XLB_MAX_BACKENDS,
    "XLB_MAX_RINGS": XLB_MAX_RINGS,
    "XLB_FLOW4_WAYS": XLB_FLOW4_WAYS,
    "XLB_FLOW4_SETS": XLB_FLOW4_SETS,
    "XLB_FLOW6_WAYS": XLB_FLOW6_WAYS,
    "XLB_FLOW6_SETS": XLB_FLOW6_SETS,
    "XLB_RING_SIZE_DEFAULT": XLB_RING_SIZE_DEFAULT,
}

_PERCPU_TYPES = frozenset((BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY,
                           BPF_MAP_TYPE_LRU_PERCPU_HASH))
_OUTER_TYPES = frozenset((BPF_MAP_TYPE_ARRAY_OF_MAPS, BPF_MAP_TYPE_HASH_OF_MAPS))
_ARRAY_TYPES = frozenset((BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY,
                          BPF_MAP_TYPE_ARRAY_OF_MAPS))

xlb_log_install()


def struct_sizes():
    """sizeof() of every shared struct as the host compiler lays it out (see structs.h)."""
    return {
        "xlb_vip_key": sizeof(xlb_vip_key),
        "xlb_counters": sizeof(xlb_counters),
    }


def kernel_enum(name):
    """{enumerator: value} of enum `name` as the running kernel has it (its BTF, from
    /sys/kernel/btf/vmlinux): for checking constants the UAPI headers are too old to
    hold. KeyError if the kernel has no such enum."""
    cdef btf *b = btf__load_vmlinux_btf()
    cdef const btf_type *t
    cdef const btf_enum *e
    cdef int type_id
    cdef uint16_t i
    if b == NULL:
        _raise_errno(errno or ENOENT, "load the kernel's BTF")
    try:
        type_id = btf__find_by_name_kind(b, name.encode(), BTF_KIND_ENUM)
        if type_id < 0:
            raise KeyError(f"the kernel has no enum {name!r}")
        t = btf__type_by_id(b, type_id)
        e = btf_enum_of(t)
        return {btf__name_by_offset(b, e[i].name_off).decode(): e[i].val
                for i in range(btf_vlen(t))}
    finally:
        btf__free(b)


def num_possible_cpus():
    """How many CPUs per-CPU maps hold a value for (possible, not online, CPUs)."""
    cdef int n = libbpf_num_possible_cpus()
    if n < 0:
        _raise_errno(-n)
    return n


def enable_run_stats():
    """Make the kernel keep every BPF program's run time and run count (bpf_prog_info's
    run_time_ns and run_cnt; Program.run_stats()) while the returned descriptor is open
    (BPF_ENABLE_STATS: unlike the kernel.bpf_stats_enabled sysctl, it ends with the
    process). Each program run then also reads the clock twice. Close it with os.close()."""
    return _check(bpf_enable_stats(BPF_STATS_RUN_TIME), "enable BPF run-time statistics")


def libbpf_log():
    """libbpf's recent messages (warnings, and the verifier's log after a failed load)."""
    return xlb_log_text().decode("utf-8", "replace")


cdef _raise_errno(int err, what=None, filename=None):
    """Raise OSError for a positive errno; Python picks FileNotFoundError etc. itself."""
    msg = strerror(err).decode("utf-8", "replace")
    if what:
        msg = f"{what}: {msg}"
    if filename is not None:
        raise OSError(err, msg, filename)
    raise OSError(err, msg)


cdef inline int _check(int ret, what=None, filename=None) except -1:
    """libbpf returns -errno (and sets errno); turn a negative return into OSError."""
    if ret < 0:
        _raise_errno(-ret if ret != -1 else (errno or 1), what, filename)
    return ret


cdef int _dup(int fd) except -1:
    cdef int new_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0)
    if new_fd < 0:
        _raise_errno(errno, "dup")
    return new_fd


cdef bytes _path_bytes(path):
    return os.fsencode(path)


def _ifindex(iface):
    """An interface index from an int or a name (looked up in the current network namespace)."""
    if isinstance(iface, int):
        if iface <= 0:
            raise ValueError(f"invalid interface index {iface}")
        return iface
    try:
        return socket.if_nametoindex(iface)
    except OSError as exc:
        raise OSError(exc.errno or 19, f"no such interface: {iface}") from None


def changed_records(a, b, uint32_t stride):
    """Indices of the `stride`-byte records that differ between two equally long buffers
    (a map read twice): an array('I')."""
    cdef const uint8_t[::1] ab = memoryview(a).cast("B")
    cdef const uint8_t[::1] bb = memoryview(b).cast("B")
    if stride == 0 or ab.shape[0] != bb.shape[0] or ab.shape[0] % stride:
        raise ValueError("two buffers of the same whole number of records are needed")
    out = _array.array("I")
    cdef size_t n = ab.shape[0] // stride, i
    if n == 0:
        return out
    cdef const uint8_t *pa = &ab[0]
    cdef const uint8_t *pb = &bb[0]
    for i in range(n):
        if memcmp(pa + i * stride, pb + i * stride, stride) != 0:
            out.append(i)
    return out


cdef inline uint64_t _fnv(const uint8_t *p, uint32_t n) noexcept nogil:
    """A hash of n bytes, 8 at a time (FNV-style multiply-xor, then a final mix)."""
    cdef uint64_t h = 1469598103934665603ULL, w
    cdef uint32_t i = 0
    while i + 8 <= n:
        memcpy(&w, p + i, 8)
        h = (h ^ w) * 1099511628211ULL
        h ^= h >> 29
        i += 8
    while i < n:
        h = (h ^ p[i]) * 1099511628211ULL
        i += 1
    h ^= h >> 32
    return h * 0x9E3779B97F4A7C15ULL


def keys_not_in(current, seen, uint32_t key_size):
    """Indices of the `key_size`-byte keys of `current` that are not among those of `seen`
    (both as lookup_batch returns them): an array('I')."""
    cdef const uint8_t[::1] cb = memoryview(current).cast("B")
    cdef const uint8_t[::1] sb = memoryview(seen).cast("B")
    if key_size == 0 or cb.shape[0] % key_size or sb.shape[0] % key_size:
        raise ValueError("buffers of whole keys are needed")
    cdef size_t nc = cb.shape[0] // key_size, ns = sb.shape[0] // key_size, i, slot
    out = _array.array("I")
    if nc == 0:
        return out
    if ns == 0:
        out.extend(range(nc))
        return out
    cdef size_t cap = 1
    while cap < 2 * ns:
        cap <<= 1
    cdef uint32_t *table = <uint32_t *>malloc(cap * sizeof(uint32_t))
    if table == NULL:
        raise MemoryError()
    cdef const uint8_t *sp = &sb[0]
    cdef const uint8_t *cp = &cb[0]
    cdef const uint8_t *k
    cdef bint found
    try:
        memset(table, 0xFF, cap * sizeof(uint32_t))
        with nogil:
            for i in range(ns):
                slot = _fnv(sp + i * key_size, key_size) & (cap - 1)
                while table[slot] != 0xFFFFFFFFu:
                    slot = (slot + 1) & (cap - 1)
                table[slot] = <uint32_t>i
        for i in range(nc):
            k = cp + i * key_size
            slot = _fnv(k, key_size) & (cap - 1)
            found = False
            while table[slot] != 0xFFFFFFFFu:
                if memcmp(sp + <size_t>table[slot] * key_size, k, key_size) == 0:
                    found = True
                    break
                slot = (slot + 1) & (cap - 1)
            if not found:
                out.append(i)
    finally:
        free(table)
    return out


# -- BTF: the layout of map keys and values, as plain tuples --------------------------------

cdef object _btf_tree(const btf *b, uint32_t type_id, int depth=0):
    """The layout of BTF type `type_id` as nested tuples that compare equal exactly when
    two layouts are the same (typedefs and qualifiers see through, struct members keep
    their names and bit offsets):

        ("int", size, signed)          ("enum", size)        ("float", size)
        ("ptr",)                       ("array", nelems, element)
        ("struct" | "union", size, ((name, bit_offset, bitfield_bits, member), ...))
        ("fwd", name)                  ("void",)             ("kind", n)
    """
    cdef const btf_type *t
    cdef const btf_member *mem
    cdef const btf_array *arr
    cdef uint16_t kind
    cdef uint32_t i, n
    if depth > 32:
        raise ValueError("BTF type nested too deep")
    if type_id == 0:
        return ("void",)
    t = btf__type_by_id(b, type_id)
    if t == NULL:
        raise ValueError(f"no BTF type {type_id}")
    kind = btf_kind(t)
    if kind in (BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT,
                BTF_KIND_TYPE_TAG):
        return _btf_tree(b, t.type, depth + 1)
    if kind == BTF_KIND_INT:
        return ("int", t.size, bool(btf_int_encoding(t) & BTF_INT_SIGNED))
    if kind in (BTF_KIND_ENUM, BTF_KIND_ENUM64):
        return ("enum", t.size)
    if kind == BTF_KIND_FLOAT:
        return ("float", t.size)
    if kind == BTF_KIND_PTR:
        return ("ptr",)
    if kind == BTF_KIND_ARRAY:
        arr = btf_array_of(t)
        return ("array", arr.nelems, _btf_tree(b, arr.type, depth + 1))
    if kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
        mem = btf_members(t)
        n = btf_vlen(t)
        members = []
        for i in range(n):
            members.append((btf__name_by_offset(b, mem[i].name_off).decode(),
                            btf_member_bit_offset(t, i), btf_member_bitfield_size(t, i),
                            _btf_tree(b, mem[i].type, depth + 1)))
        return ("struct" if kind == BTF_KIND_STRUCT else "union", t.size, tuple(members))
    if kind == BTF_KIND_FWD:
        return ("fwd", btf__name_by_offset(b, t.name_off).decode())
    return ("kind", kind)


cdef dict _def_layout(const btf *b, bpf_map *m):
    """The layout an object declares for one of its maps (see BpfObject.map_layout)."""
    cdef uint32_t kid = bpf_map__btf_key_type_id(m)
    cdef uint32_t vid = bpf_map__btf_value_type_id(m)
    cdef bpf_map *inner = bpf_map__inner_map(m)
    return {
        "type": <uint32_t>bpf_map__type(m),
        "key_size": bpf_map__key_size(m),
        "value_size": bpf_map__value_size(m),
        "max_entries": bpf_map__max_entries(m),
        "flags": bpf_map__map_flags(m),
        "key": _btf_tree(b, kid) if b != NULL and kid else None,
        "value": _btf_tree(b, vid) if b != NULL and vid else None,
        "inner": _def_layout(b, inner) if inner != NULL else None,
    }


def translate_records(src, uint32_t src_stride, uint32_t count, uint32_t dst_stride, ops):
    """`count` records of `src_stride` bytes rewritten as records of `dst_stride` bytes:
    each op (src_offset, dst_offset, length) copies that run of every record; bytes no op
    writes are zero. Returns a bytearray of count x dst_stride bytes."""
    cdef const uint8_t[::1] sb = memoryview(src).cast("B")
    if <uint64_t>sb.shape[0] < <uint64_t>src_stride * count:
        raise ValueError(f"{sb.shape[0]} bytes hold fewer than {count} records of {src_stride}")
    cdef list plan = [(int(a), int(b), int(n)) for a, b, n in ops]
    cdef uint32_t nops = len(plan), i, r
    for a, b, n in plan:
        if a < 0 or b < 0 or n <= 0 or a + n > src_stride or b + n > dst_stride:
            raise ValueError(f"copy op {(a, b, n)} does not fit records of {src_stride} -> "
                             f"{dst_stride} bytes")
    out = bytearray(<size_t>dst_stride * count)
    if count == 0 or nops == 0:
        return out
    cdef uint8_t[::1] db = out
    cdef uint32_t *o = <uint32_t *>malloc(3 * nops * sizeof(uint32_t))
    if o == NULL:
        raise MemoryError()
    for i in range(nops):
        o[3 * i], o[3 * i + 1], o[3 * i + 2] = plan[i]
    cdef const uint8_t *sp = &sb[0]
    cdef uint8_t *dp = &db[0]
    with nogil:
        for r in range(count):
            for i in range(nops):
                memcpy(dp + <size_t>r * dst_stride + o[3 * i + 1],
                       sp + <size_t>r * src_stride + o[3 * i], o[3 * i + 2])
    free(o)
    return out


cdef class BpfObject:
    """A BPF ELF object: open, adjust maps, load, then take maps and programs by name.

    Use `BpfObject.open(path)`. Before `load()`, map sizes and pin paths may be changed;
    after it, `map(name)` and `program(name)` return independent `Map` / `Program` handles.
    """

    cdef bpf_object *_obj
    cdef readonly object path
    cdef readonly bint loaded
    cdef bytes _pin_root
    cdef dict _aliases     # declared name -> libbpf's name after reuse_map() renamed it

    def __cinit__(self):
        self._obj = NULL
        self.loaded = False
        self._aliases = {}

    def __init__(self):
        raise TypeError("use BpfObject.open(path)")

    @staticmethod
    def open(path, pin_root_path=None):
        """Open an object file. Maps declared with LIBBPF_PIN_BY_NAME are pinned under (or,
        when already there, adopted from) `pin_root_path` at load time."""
        cdef BpfObject self = BpfObject.__new__(BpfObject)
        cdef bpf_object_open_opts opts
        cdef bytes bpath = _path_bytes(path)
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        if pin_root_path is not None:
            self._pin_root = _path_bytes(pin_root_path)
            opts.pin_root_path = self._pin_root
        xlb_log_clear()
        self._obj = bpf_object__open_file(bpath, &opts)
        if self._obj == NULL:
            _raise_errno(errno or 22, "cannot open BPF object", os.fsdecode(path))
        self.path = os.fsdecode(path)
        return self

    cdef bpf_object *_ptr(self) except NULL:
        if self._obj == NULL:
            raise ValueError("operation on a closed BPF object")
        return self._obj

    cdef bpf_map *_find_map(self, name) except NULL:
        cdef bpf_map *m = bpf_object__find_map_by_name(
            self._ptr(), self._aliases.get(name, name).encode())
        if m == NULL:
            raise KeyError(f"no map named {name!r} in {self.path}")
        return m

    cdef bpf_program *_find_prog(self, name) except NULL:
        cdef bpf_program *p = bpf_object__find_program_by_name(self._ptr(), name.encode())
        if p == NULL:
            raise KeyError(f"no program named {name!r} in {self.path}")
        return p

    def map_names(self):
        """Names of the maps the object declares (including .rodata/.bss style ones)."""
        cdef bpf_map *m = bpf_object__next_map(self._ptr(), NULL)
        names = []
        while m != NULL:
            names.append(bpf_map__name(m).decode())
            m = bpf_object__next_map(self._obj, m)
        return names

    def program_names(self):
        cdef bpf_program *p = bpf_object__next_program(self._ptr(), NULL)
        names = []
        while p != NULL:
            names.append(bpf_program__name(p).decode())
            p = bpf_object__next_program(self._obj, p)
        return names

    def _before_load(self):
        if self.loaded:
            raise ValueError("the object is already loaded: map settings are fixed")

    def set_autocreate(self, name, bint create):
        """Whether load() creates map `name` (a map no program of the object uses may be
        left out; a used one then fails the load)."""
        self._before_load()
        _check(bpf_map__set_autocreate(self._find_map(name), create),
               f"set_autocreate({name})")

    def set_max_entries(self, name, uint32_t max_entries):
        """Resize a map before load."""
        self._before_load()
        if max_entries == 0:
            raise ValueError("max_entries must be > 0")
        _check(bpf_map__set_max_entries(self._find_map(name), max_entries),
               f"set_max_entries({name})")

    def max_entries(self, name):
        return bpf_map__max_entries(self._find_map(name))

    def map_shape(self, name):
        """(type, key_size, value_size) the object declares for map `name`: what a map
        pinned by another build must match to be used with this one."""
        cdef bpf_map *m = self._find_map(name)
        return (<uint32_t>bpf_map__type(m), bpf_map__key_size(m), bpf_map__value_size(m))

    def map_layout(self, name):
        """What the object declares for map `name`: {type, key_size, value_size,
        max_entries, flags, key, value, inner}; key and value are BTF layouts (see
        _btf_tree) or None for a map declared by size, inner the same dict for the
        template of a map-of-maps (else None)."""
        return _def_layout(bpf_object__btf(self._ptr()), self._find_map(name))

    def program_code(self, name):
        """The instructions of program `name` as the object holds them (before load and
        relocation): what the program does, without the debug information (source paths)
        that makes two builds of the same code differ."""
        cdef bpf_program *p = self._find_prog(name)
        cdef const void *insns = bpf_program__insns(p)
        cdef size_t n = bpf_program__insn_cnt(p)
        if insns == NULL:
            return b""
        return PyBytes_FromStringAndSize(<const char *>insns, n * 8)

    def struct_layout(self, name):
        """The BTF layout of `struct name` in the object (KeyError if it has none)."""
        cdef const btf *b = bpf_object__btf(self._ptr())
        cdef int type_id = -1
        if b != NULL:
            type_id = btf__find_by_name_kind(b, name.encode(), BTF_KIND_STRUCT)
        if type_id < 0:
            raise KeyError(f"no struct {name} in the BTF of {self.path}")
        return _btf_tree(b, type_id)

    def set_pin_path(self, name, path):
        """Pin a map at `path` on load; if a compatible map is already pinned there, the
        object adopts it instead of creating a new one (a restarted process takes over a
        running datapath this way). An incompatible pinned map makes load() fail."""
        self._before_load()
        _check(bpf_map__set_pin_path(self._find_map(name), _path_bytes(path)),
               f"set_pin_path({name})")

    def pin_path(self, name):
        cdef const char *p = bpf_map__pin_path(self._find_map(name))
        return None if p == NULL else os.fsdecode(<bytes>p)

    def reuse_map(self, name, Map existing):
        """Before load: make the object use `existing` instead of creating map `name`."""
        self._before_load()
        cdef bpf_map *m = self._find_map(name)
        _check(bpf_map__reuse_fd(m, existing._get_fd()), f"reuse_map({name})")
        # libbpf renames the map after the one it now uses; keep answering to the old name
        self._aliases[name] = bpf_map__name(m).decode()

    def load(self):
        """Load every program and create (or adopt) every map. On failure the OSError
        message ends with libbpf's last lines (the verifier's reason)."""
        self._before_load()
        xlb_log_clear()
        cdef int ret
        with nogil:
            ret = bpf_object__load(self._obj)
        if ret < 0:
            log = libbpf_log().strip().splitlines()
            detail = "; ".join(line.strip() for line in log[-6:] if line.strip())
            _raise_errno(-ret, f"cannot load {self.path}" + (f" ({detail})" if detail else ""))
        self.loaded = True

    def _after_load(self):
        self._ptr()
        if not self.loaded:
            raise ValueError("load() the object first")

    def map(self, name):
        """The loaded map `name` as an independent Map handle."""
        self._after_load()
        cdef bpf_map *m = self._find_map(name)
        return Map._adopt_fd(_dup(bpf_map__fd(m)), name)

    def program(self, name):
        """The loaded program `name` as an independent Program handle."""
        self._after_load()
        cdef bpf_program *p = self._find_prog(name)
        return Program._adopt_fd(_dup(bpf_program__fd(p)), name)

    def close(self):
        if self._obj != NULL:
            bpf_object__close(self._obj)
            self._obj = NULL

    @property
    def closed(self):
        return self._obj == NULL

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        if self._obj != NULL:
            bpf_object__close(self._obj)
            self._obj = NULL

    def __repr__(self):
        state = "closed" if self._obj == NULL else ("loaded" if self.loaded else "open")
        return f"<BpfObject {self.path!r} {state}>"


cdef class Map:
    """A BPF map held by file descriptor.

    Keys and values are bytes-like objects of exactly `key_size` / `value_size` bytes (an
    int is accepted for a 4-byte key). Per-CPU maps read and write one value per possible
    CPU, each padded to 8 bytes, as the kernel lays them out.
    """

    cdef int _fd
    cdef readonly str name
    cdef readonly uint32_t type
    cdef readonly uint32_t id
    cdef readonly uint32_t key_size
    cdef readonly uint32_t value_size
    cdef readonly uint32_t max_entries
    cdef readonly uint32_t flags
    cdef readonly int ncpus
    cdef readonly bint percpu
    cdef readonly uint32_t btf_id
    cdef uint32_t _btf_key, _btf_value
    cdef uint32_t _slot_size   # bytes of one value as the syscalls see it

    def __cinit__(self):
        self._fd = -1

    def __init__(self):
        raise TypeError("use Map.create(), Map.from_pinned(), Map.from_id() or BpfObject.map()")

    @staticmethod
    cdef Map _adopt_fd(int fd, name=None):
        """Wrap an fd this Map will own and close; reads the map's identity from the kernel."""
        cdef Map self = Map.__new__(Map)
        cdef bpf_map_info info
        cdef uint32_t info_len = sizeof(info)
        self._fd = fd
        memset(&info, 0, sizeof(info))
        _check(bpf_obj_get_info_by_fd(fd, &info, &info_len), "map info")
        self.name = name if name is not None else info.name.decode("utf-8", "replace")
        self.type = info.type
        self.id = info.id
        self.key_size = info.key_size
        self.value_size = info.value_size
        self.max_entries = info.max_entries
        self.flags = info.map_flags
        self.btf_id = info.btf_id
        self._btf_key = info.btf_key_type_id
        self._btf_value = info.btf_value_type_id
        self.percpu = info.type in _PERCPU_TYPES
        self.ncpus = num_possible_cpus() if self.percpu else 1
        if self.percpu:
            self._slot_size = ((info.value_size + 7) // 8) * 8 * self.ncpus
        else:
            self._slot_size = info.value_size
        return self

    @staticmethod
    def create(uint32_t map_type, uint32_t key_size, uint32_t value_size,
               uint32_t max_entries, name="", uint32_t flags=0, Map inner_map=None):
        """Create a new map (e.g. an inner ring for a map-of-maps). `inner_map` is the
        template an outer map's slots must match."""
        cdef bpf_map_create_opts opts
        cdef bytes bname = name.encode()[:15]
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        opts.map_flags = flags
        if inner_map is not None:
            opts.inner_map_fd = inner_map._get_fd()
        if max_entries == 0:
            raise ValueError("max_entries must be > 0")
        cdef int fd = _check(bpf_map_create(<bpf_map_type>map_type, bname, key_size,
                                            value_size, max_entries, &opts),
                             f"create map {name!r}")
        return Map._adopt_fd(fd, name or None)

    def layout(self):
        """What the kernel knows of this map's layout, in BpfObject.map_layout's terms
        (key and value from the BTF it was created with; inner is always None: the kernel
        does not tell a map-of-maps' template)."""
        cdef btf *b = NULL
        if self.btf_id and (self._btf_key or self._btf_value):
            b = btf__load_from_kernel_by_id(self.btf_id)
            if b == NULL:
                _raise_errno(errno or 2, f"BTF of map {self.name!r}")
        try:
            return {"type": self.type, "key_size": self.key_size,
                    "value_size": self.value_size, "max_entries": self.max_entries,
                    "flags": self.flags,
                    "key": _btf_tree(b, self._btf_key) if b != NULL and self._btf_key else None,
                    "value": (_btf_tree(b, self._btf_value)
                              if b != NULL and self._btf_value else None),
                    "inner": None}
        finally:
            if b != NULL:
                btf__free(b)

    @staticmethod
    def from_pinned(path):
        """Open the map pinned at `path` (FileNotFoundError if nothing is there)."""
        cdef int fd = _check(bpf_obj_get(_path_bytes(path)), "open pinned map",
                             os.fsdecode(path))
        try:
            return Map._adopt_fd(fd)
        except BaseException:
            close(fd)
            raise

    @staticmethod
    def from_id(uint32_t map_id):
        """Open a map by its kernel id (e.g. the id an outer map slot holds)."""
        cdef int fd = _check(bpf_map_get_fd_by_id(map_id), f"open map id {map_id}")
        return Map._adopt_fd(fd)

    cdef int _get_fd(self) except -1:
        if self._fd < 0:
            raise ValueError("operation on a closed map")
        return self._fd

    @property
    def fd(self):
        return self._get_fd()

    @property
    def closed(self):
        return self._fd < 0

    @property
    def is_outer(self):
        return self.type in _OUTER_TYPES

    @property
    def percpu_value_size(self):
        """Bytes one CPU's value takes in a per-CPU read (value_size rounded up to 8)."""
        return ((self.value_size + 7) // 8) * 8

    def close(self):
        if self._fd >= 0:
            close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        if self._fd >= 0:
            close(self._fd)

    def __repr__(self):
        state = "closed" if self._fd < 0 else f"id={self.id}"
        return (f"<Map {self.name!r} {state} type={self.type} key={self.key_size} "
                f"value={self.value_size} max={self.max_entries}>")

    # -- buffers -----------------------------------------------------------------------

    cdef bytes _key(self, key):
        if isinstance(key, int):
            if self.key_size == 4:
                return _struct.pack("=I", key)
            if self.key_size == 8:
                return _struct.pack("=Q", key)
            raise ValueError(f"map {self.name!r}: an int key needs a 4- or 8-byte key, "
                             f"this map's key is {self.key_size} bytes")
        data = bytes(key)
        if <uint32_t>len(data) != self.key_size:
            raise ValueError(f"map {self.name!r}: key is {len(data)} bytes, "
                             f"expected {self.key_size}")
        return data

    cdef bytes _value(self, value):
        """A value as the update syscall wants it: for per-CPU maps either one value (copied
        to every CPU) or the full per-CPU buffer."""
        if self.is_outer:
            raise TypeError(f"map {self.name!r} is a map-of-maps: use set_inner()")
        data = bytes(value)
        cdef uint32_t n = len(data)
        if self.percpu:
            if n == self.value_size:
                one = data + b"\0" * (self.percpu_value_size - n)
                return one * self.ncpus
            if n == self._slot_size:
                return data
            raise ValueError(f"map {self.name!r}: per-CPU value is {n} bytes, expected "
                             f"{self.value_size} (all CPUs) or {self._slot_size} (each CPU)")
        if n != self.value_size:
            raise ValueError(f"map {self.name!r}: value is {n} bytes, "
                             f"expected {self.value_size}")
        return data

    # -- elements ----------------------------------------------------------------------

    def lookup(self, key):
        """The value at `key` (KeyError if absent). Per-CPU maps return every CPU's value
        concatenated; see lookup_percpu() and lookup_percpu_sum()."""
        cdef int fd = self._get_fd()
        cdef bytes k = self._key(key)
        if self.is_outer:
            return self.inner_id(key)
        cdef bytes out = PyBytes_FromStringAndSize(NULL, self._slot_size)
        cdef int ret = bpf_map_lookup_elem(fd, PyBytes_AS_STRING(k), PyBytes_AS_STRING(out))
        if ret == -ENOENT:
            raise KeyError(key)
        _check(ret, f"lookup in {self.name}")
        return out

    def get(self, key, default=None):
        try:
            return self.lookup(key)
        except KeyError:
            return default

    def __getitem__(self, key):
        return self.lookup(key)

    def __setitem__(self, key, value):
        self.update(key, value)

    def __delitem__(self, key):
        self.delete(key)

    def __contains__(self, key):
        try:
            self.lookup(key)
        except KeyError:
            return False
        return True

    def update(self, key, value, uint64_t flags=BPF_ANY):
        """Write `value` at `key`. flags: ANY, NOEXIST (FileExistsError if present),
        EXIST (FileNotFoundError if absent)."""
        cdef int fd = self._get_fd()
        if flags not in (BPF_ANY, BPF_NOEXIST, BPF_EXIST):
            raise ValueError(f"flags must be ANY, NOEXIST or EXIST, not {flags}")
        cdef bytes k = self._key(key)
        cdef bytes v = self._value(value)
        _check(bpf_map_update_elem(fd, PyBytes_AS_STRING(k), PyBytes_AS_STRING(v), flags),
               f"update in {self.name}")

    def delete(self, key):
        """Remove `key` (KeyError if absent)."""
        cdef int fd = self._get_fd()
        cdef bytes k = self._key(key)
        cdef const char *kp = PyBytes_AS_STRING(k)
        cdef int ret
        with nogil:     # a map-of-maps delete waits for an RCU grace period
            ret = bpf_map_delete_elem(fd, kp)
        if ret == -ENOENT:
            raise KeyError(key)
        _check(ret, f"delete in {self.name}")

    def keys(self):
        """Iterate over the keys (bytes). Keys deleted meanwhile may be skipped; that is
        the kernel's iteration contract."""
        cdef int fd = self._get_fd()
        cdef bytes cur = PyBytes_FromStringAndSize(NULL, self.key_size)
        cdef bytes nxt
        cdef int ret
        cdef const void *prev = NULL
        while True:
            nxt = PyBytes_FromStringAndSize(NULL, self.key_size)
            ret = bpf_map_get_next_key(self._get_fd(), prev, PyBytes_AS_STRING(nxt))
            if ret == -ENOENT:
                return
            _check(ret, f"iterate {self.name}")
            yield nxt
            cur = nxt
            prev = PyBytes_AS_STRING(cur)

    def __iter__(self):
        return self.keys()

    def items(self):
        """Iterate over (key, value) pairs, skipping keys deleted during the walk."""
        for k in self.keys():
            try:
                yield k, self.lookup(k)
            except KeyError:
                continue

    def count(self):
        """Number of keys present (walks the map; arrays always hold max_entries)."""
        return sum(1 for _ in self.keys())

    # -- per-CPU -----------------------------------------------------------------------

    def lookup_percpu(self, key):
        """One bytes value per possible CPU (each value_size bytes)."""
        if not self.percpu:
            raise TypeError(f"map {self.name!r} is not a per-CPU map")
        raw = self.lookup(key)
        step = self.percpu_value_size
        return [raw[i * step: i * step + self.value_size] for i in range(self.ncpus)]

    def lookup_percpu_sum(self, key):
        """Sum over CPUs, treating the value as an array of u64 counters (value_size must
        be a multiple of 8): a tuple of ints, one per counter."""
        if not self.percpu:
            raise TypeError(f"map {self.name!r} is not a per-CPU map")
        if self.value_size % 8:
            raise ValueError(f"map {self.name!r}: value of {self.value_size} bytes is not u64 counters")
        cdef bytes raw = self.lookup(key)
        cdef const uint64_t *p = <const uint64_t *>PyBytes_AS_STRING(raw)
        cdef int n = self.value_size // 8, stride = self.percpu_value_size // 8
        cdef int cpu, i
        sums = [0] * n
        for i in range(n):
            total = 0
            for cpu in range(self.ncpus):
                total += p[cpu * stride + i]
            sums[i] = total
        return tuple(sums)

    # -- batches -----------------------------------------------------------------------

    def update_batch(self, keys, values, uint64_t flags=BPF_ANY):
        """Write many elements in one system call from two contiguous buffers: `keys` holds
        count × key_size bytes and `values` count × value size bytes (per-CPU maps: the
        per-CPU layout). Returns the count written."""
        cdef int fd = self._get_fd()
        if self.is_outer:
            raise TypeError(f"map {self.name!r} is a map-of-maps: use set_inner()")
        cdef const uint8_t[::1] kb = memoryview(keys).cast("B")
        cdef const uint8_t[::1] vb = memoryview(values).cast("B")
        if kb.shape[0] == 0 or kb.shape[0] % self.key_size:
            raise ValueError(f"map {self.name!r}: keys buffer of {kb.shape[0]} bytes is not "
                             f"a positive multiple of the {self.key_size}-byte key")
        cdef uint32_t count = kb.shape[0] // self.key_size
        if <uint64_t>vb.shape[0] != <uint64_t>count * self._slot_size:
            raise ValueError(f"map {self.name!r}: values buffer is {vb.shape[0]} bytes, "
                             f"expected {count} × {self._slot_size}")
        cdef bpf_map_batch_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        opts.elem_flags = flags
        cdef int ret
        with nogil:
            ret = bpf_map_update_batch(fd, &kb[0], &vb[0], &count, &opts)
        _check(ret, f"batch update of {self.name} (stopped after {count} elements)")
        return count

    def write_array(self, values, uint32_t start=0):
        """Fill array slots start, start+1, ... from one contiguous values buffer (one
        system call): how a Maglev ring goes into its map."""
        if self.type not in _ARRAY_TYPES or self.is_outer:
            raise TypeError(f"map {self.name!r} is not an array map")
        cdef const uint8_t[::1] vb = memoryview(values).cast("B")
        if vb.shape[0] == 0 or vb.shape[0] % self._slot_size:
            raise ValueError(f"map {self.name!r}: values buffer of {vb.shape[0]} bytes is not "
                             f"a positive multiple of {self._slot_size}")
        cdef uint32_t count = vb.shape[0] // self._slot_size, i
        if <uint64_t>start + count > self.max_entries:
            raise ValueError(f"map {self.name!r}: {count} values from slot {start} exceed "
                             f"its {self.max_entries} entries")
        cdef uint32_t *keys = <uint32_t *>malloc(count * sizeof(uint32_t))
        if keys == NULL:
            raise MemoryError()
        try:
            for i in range(count):
                keys[i] = start + i
            return self.update_batch(<uint8_t[:count * 4]><uint8_t *>keys, values)
        finally:
            free(keys)

    def lookup_batch(self, uint32_t chunk=4096):
        """Read the whole map in batches of `chunk` elements: returns (keys, values, count)
        with keys and values as contiguous bytes, laid out as for update_batch()."""
        keys_out, values_out = [], []
        total = 0
        for keys, values, count in self.batches(chunk):
            keys_out.append(keys)
            values_out.append(values)
            total += count
        return b"".join(keys_out), b"".join(values_out), total

    def batches(self, uint32_t chunk=4096):
        """lookup_batch() a batch at a time: yields (keys, values, count) of each batch of
        up to `chunk` elements (more when one hash bucket holds more). The system calls run
        without the GIL, so another thread can write what was read meanwhile."""
        cdef int fd = self._get_fd()
        if self.is_outer:
            raise TypeError(f"map {self.name!r} is a map-of-maps: use inner_id()")
        if chunk == 0:
            raise ValueError("chunk must be > 0")
        cdef bpf_map_batch_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        cdef uint32_t token_size = max(self.key_size, 8)
        cdef bytearray in_tok = bytearray(token_size), out_tok = bytearray(token_size)
        cdef bytearray kbuf, vbuf
        cdef uint32_t count
        cdef int ret
        cdef bint first = True
        cdef unsigned char *inp
        cdef unsigned char *outp
        cdef unsigned char *kp
        cdef unsigned char *vp
        while True:
            kbuf = bytearray(chunk * self.key_size)
            vbuf = bytearray(<uint64_t>chunk * self._slot_size)
            count = chunk
            inp = NULL if first else <unsigned char *>in_tok
            outp = <unsigned char *>out_tok
            kp = <unsigned char *>kbuf
            vp = <unsigned char *>vbuf
            with nogil:
                ret = bpf_map_lookup_batch(fd, inp, outp, kp, vp, &count, &opts)
            if ret == -ENOSPC and count == 0:
                chunk *= 2          # one hash bucket holds more than a chunk: grow
                continue
            if ret < 0 and ret != -ENOENT:
                _check(ret, f"batch lookup of {self.name}")
            if count:
                yield (bytes(kbuf[:count * self.key_size]),
                       bytes(vbuf[:count * self._slot_size]), count)
            if ret == -ENOENT:
                return
            in_tok[:] = out_tok
            first = False

    # -- map-of-maps -------------------------------------------------------------------

    def set_inner(self, key, Map inner not None, uint64_t flags=BPF_ANY):
        """Point an outer map's slot at `inner` (one atomic update: readers see the old or
        the new inner map, never a mix)."""
        cdef int fd = self._get_fd()
        if not self.is_outer:
            raise TypeError(f"map {self.name!r} is not a map-of-maps")
        cdef bytes k = self._key(key)
        cdef uint32_t inner_fd = inner._get_fd()
        cdef const char *kp = PyBytes_AS_STRING(k)
        cdef int ret
        # the kernel waits for an RCU grace period after updating a map-of-maps (ms): let
        # other threads run meanwhile
        with nogil:
            ret = bpf_map_update_elem(fd, kp, &inner_fd, flags)
        _check(ret, f"set inner map in {self.name}")

    def set_inner_batch(self, keys, inners):
        """Point many slots at inner maps in one system call (and one RCU grace period):
        keys[i] gets inners[i]. Each slot changes atomically; the batch as a whole does
        not."""
        cdef int fd = self._get_fd()
        if not self.is_outer:
            raise TypeError(f"map {self.name!r} is not a map-of-maps")
        keys, inners = list(keys), list(inners)
        if len(keys) != len(inners) or not keys:
            raise ValueError("set_inner_batch needs as many inner maps as keys (at least one)")
        kbuf = b"".join(self._key(k) for k in keys)
        vbuf = b"".join(_struct.pack("=I", (<Map?>m)._get_fd()) for m in inners)
        cdef const char *kp = kbuf
        cdef const char *vp = vbuf
        cdef uint32_t count = len(keys)
        cdef bpf_map_batch_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        cdef int ret
        with nogil:
            ret = bpf_map_update_batch(fd, kp, vp, &count, &opts)
        _check(ret, f"batch set inner maps in {self.name} (stopped after {count})")

    def inner_id(self, key):
        """The kernel id of the inner map at `key` (KeyError if the slot is empty)."""
        cdef int fd = self._get_fd()
        if not self.is_outer:
            raise TypeError(f"map {self.name!r} is not a map-of-maps")
        cdef bytes k = self._key(key)
        cdef uint32_t map_id = 0
        cdef int ret = bpf_map_lookup_elem(fd, PyBytes_AS_STRING(k), &map_id)
        if ret == -ENOENT:
            raise KeyError(key)
        _check(ret, f"lookup in {self.name}")
        return map_id

    def inner_map(self, key):
        """The inner map at `key`, opened by id."""
        return Map.from_id(self.inner_id(key))

    # -- pinning -----------------------------------------------------------------------

    def pin(self, path):
        """Pin at `path` on a bpffs mount (FileExistsError if the path is taken)."""
        _check(bpf_obj_pin(self._get_fd(), _path_bytes(path)), f"pin {self.name}",
               os.fsdecode(path))

    @staticmethod
    def unpin(path):
        """Remove a pin (the map itself lives on while anything else holds it)."""
        os.unlink(path)


cdef class Program:
    """A loaded BPF program held by file descriptor."""

    cdef int _fd
    cdef readonly str name
    cdef readonly uint32_t type
    cdef readonly uint32_t id

    def __cinit__(self):
        self._fd = -1

    def __init__(self):
        raise TypeError("use BpfObject.program(), Program.from_pinned() or Program.from_id()")

    @staticmethod
    cdef Program _adopt_fd(int fd, name=None):
        cdef Program self = Program.__new__(Program)
        cdef bpf_prog_info info
        cdef uint32_t info_len = sizeof(info)
        self._fd = fd
        memset(&info, 0, sizeof(info))
        _check(bpf_obj_get_info_by_fd(fd, &info, &info_len), "program info")
        self.name = name if name is not None else info.name.decode("utf-8", "replace")
        self.type = info.type
        self.id = info.id
        return self

    @staticmethod
    def from_pinned(path):
        cdef int fd = _check(bpf_obj_get(_path_bytes(path)), "open pinned program",
                             os.fsdecode(path))
        try:
            return Program._adopt_fd(fd)
        except BaseException:
            close(fd)
            raise

    @staticmethod
    def from_id(uint32_t prog_id):
        cdef int fd = _check(bpf_prog_get_fd_by_id(prog_id), f"open program id {prog_id}")
        return Program._adopt_fd(fd)

    cdef int _get_fd(self) except -1:
        if self._fd < 0:
            raise ValueError("operation on a closed program")
        return self._fd

    @property
    def fd(self):
        return self._get_fd()

    @property
    def closed(self):
        return self._fd < 0

    def map_ids(self):
        """The ids of the maps the program uses (as the verifier recorded them)."""
        cdef int fd = self._get_fd()
        cdef bpf_prog_info info
        cdef uint32_t info_len = sizeof(info)
        cdef uint32_t n, i
        cdef uint32_t *ids
        memset(&info, 0, sizeof(info))
        _check(bpf_obj_get_info_by_fd(fd, &info, &info_len), "program info")
        n = info.nr_map_ids
        if n == 0:
            return []
        ids = <uint32_t *>malloc(n * sizeof(uint32_t))
        if ids == NULL:
            raise MemoryError()
        try:
            memset(&info, 0, sizeof(info))
            info.nr_map_ids = n
            info.map_ids = <uint64_t><size_t>ids
            info_len = sizeof(info)
            _check(bpf_obj_get_info_by_fd(fd, &info, &info_len), "program map ids")
            return [ids[i] for i in range(min(n, info.nr_map_ids))]
        finally:
            free(ids)

    def run_stats(self):
        """(run_time_ns, run_cnt): the program's time and runs so far, counted only while
        statistics are on (enable_run_stats()); (0, 0) if they never were."""
        cdef int fd = self._get_fd()
        cdef bpf_prog_info info
        cdef uint32_t info_len = sizeof(info)
        memset(&info, 0, sizeof(info))
        _check(bpf_obj_get_info_by_fd(fd, &info, &info_len), "program info")
        return info.run_time_ns, info.run_cnt

    def test_run(self, data, int repeat=1, ctx=None, uint32_t flags=0,
                 uint32_t batch_size=0):
        """Run the program on `data` with BPF_PROG_TEST_RUN.

        Returns (return code, output bytes, duration in ns per run). With repeat > 1 the
        kernel reuses one buffer: iteration 2 sees what iteration 1 wrote. `ctx` is an
        optional struct xdp_md. With flags=TEST_XDP_LIVE_FRAMES the kernel really
        transmits XDP_TX/redirected frames and no output is returned.
        """
        cdef int fd = self._get_fd()
        if repeat < 1:
            raise ValueError("repeat must be >= 1")
        cdef const uint8_t[::1] din = memoryview(data).cast("B")
        if din.shape[0] == 0:
            raise ValueError("data must not be empty")
        cdef bint live = (flags & TEST_XDP_LIVE_FRAMES) != 0
        cdef uint32_t out_size = 0 if live else din.shape[0] + 4096
        cdef bytearray out = bytearray(out_size if out_size else 1)
        cdef bytes ctx_bytes = bytes(ctx) if ctx is not None else None
        cdef bpf_test_run_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        opts.data_in = &din[0]
        opts.data_size_in = din.shape[0]
        if not live:
            opts.data_out = <unsigned char *>out
            opts.data_size_out = out_size
        if ctx_bytes is not None:
            opts.ctx_in = PyBytes_AS_STRING(ctx_bytes)
            opts.ctx_size_in = len(ctx_bytes)
        opts.repeat = repeat
        opts.flags = flags
        opts.batch_size = batch_size
        cdef int ret
        with nogil:
            ret = bpf_prog_test_run_opts(fd, &opts)
        _check(ret, f"test_run of {self.name}")
        output = b"" if live else bytes(out[:opts.data_size_out])
        return opts.retval, output, opts.duration

    def pin(self, path):
        _check(bpf_obj_pin(self._get_fd(), _path_bytes(path)), f"pin {self.name}",
               os.fsdecode(path))

    def close(self):
        if self._fd >= 0:
            close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        if self._fd >= 0:
            close(self._fd)

    def __repr__(self):
        state = "closed" if self._fd < 0 else f"id={self.id}"
        return f"<Program {self.name!r} {state}>"


_XDP_MODES = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE,
              "offload": XDP_FLAGS_HW_MODE}
_ATTACH_NAMES = {XDP_ATTACHED_NONE: None, XDP_ATTACHED_DRV: "native",
                 XDP_ATTACHED_SKB: "generic", XDP_ATTACHED_HW: "offload",
                 XDP_ATTACHED_MULTI: "multi"}


def _mode_flags(mode):
    try:
        return _XDP_MODES[mode]
    except KeyError:
        raise ValueError(f"XDP mode must be one of {', '.join(_XDP_MODES)}, not {mode!r}") from None


cdef class XdpLink:
    """A program attached to an interface's XDP hook through netlink. The attachment
    stays after this process exits, until detach() (or another process) removes it.
    Interface names are resolved in the calling thread's network namespace."""

    cdef readonly int ifindex
    cdef readonly str mode
    cdef readonly uint32_t prog_id

    def __init__(self):
        raise TypeError("use XdpLink.attach() or XdpLink.current()")

    @staticmethod
    def query(iface):
        """What is attached: {'mode': None|'native'|'generic'|'offload'|'multi',
        'prog_id', 'native_prog_id', 'generic_prog_id', 'offload_prog_id'}."""
        cdef int ifindex = _ifindex(iface)
        cdef bpf_xdp_query_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        _check(bpf_xdp_query(ifindex, 0, &opts), f"query XDP on ifindex {ifindex}")
        return {
            "mode": _ATTACH_NAMES.get(opts.attach_mode, "unknown"),
            "prog_id": opts.prog_id,
            "native_prog_id": opts.drv_prog_id,
            "generic_prog_id": opts.skb_prog_id,
            "offload_prog_id": opts.hw_prog_id,
        }

    @staticmethod
    def attach(iface, Program program not None, mode="native", bint exclusive=True):
        """Attach `program`. With exclusive (the default) an interface that already runs
        an XDP program is left alone and OSError(EBUSY) is raised: use replace()."""
        cdef int ifindex = _ifindex(iface)
        cdef uint32_t flags = _mode_flags(mode)
        if exclusive:
            flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
        _check(bpf_xdp_attach(ifindex, program._get_fd(), flags, NULL),
               f"attach {program.name} to ifindex {ifindex} ({mode})")
        return XdpLink._make(ifindex, mode, program.id)

    @staticmethod
    def current(iface, mode="native"):
        """The attachment currently on `iface` in `mode` (FileNotFoundError if none)."""
        info = XdpLink.query(iface)
        key = {"native": "native_prog_id", "generic": "generic_prog_id",
               "offload": "offload_prog_id"}[mode] if mode in _XDP_MODES else None
        if key is None:
            _mode_flags(mode)
        if not info[key]:
            raise FileNotFoundError(2, f"no {mode} XDP program on {iface}")
        return XdpLink._make(_ifindex(iface), mode, info[key])

    @staticmethod
    cdef XdpLink _make(int ifindex, mode, uint32_t prog_id):
        cdef XdpLink self = XdpLink.__new__(XdpLink)
        self.ifindex = ifindex
        self.mode = mode
        self.prog_id = prog_id
        return self

    def replace(self, Program program not None):
        """Swap in `program` atomically: the kernel refuses (OSError EEXIST/EBUSY) if the
        interface no longer runs the program this link knows, so a concurrent change is
        never overwritten blindly."""
        old = Program.from_id(self.prog_id)
        cdef bpf_xdp_attach_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        opts.old_prog_fd = (<Program>old)._get_fd()
        try:
            _check(bpf_xdp_attach(self.ifindex, program._get_fd(),
                                  _mode_flags(self.mode) | XDP_FLAGS_REPLACE, &opts),
                   f"replace XDP program on ifindex {self.ifindex}")
        finally:
            old.close()
        self.prog_id = program.id

    def detach(self):
        """Remove the program, only if it is still the one this link attached."""
        cdef bpf_xdp_attach_opts opts
        memset(&opts, 0, sizeof(opts))
        opts.sz = sizeof(opts)
        old = Program.from_id(self.prog_id)
        opts.old_prog_fd = (<Program>old)._get_fd()
        try:
            _check(bpf_xdp_detach(self.ifindex, _mode_flags(self.mode) | XDP_FLAGS_REPLACE,
                                  &opts), f"detach XDP from ifindex {self.ifindex}")
        finally:
            old.close()
        self.prog_id = 0

    def __repr__(self):
        return f"<XdpLink ifindex={self.ifindex} mode={self.mode} prog_id={self.prog_id}>"


# enum bpf_attach_type's tcx hooks (Linux 6.6); Debian 12's UAPI headers predate them.
# tests/datapath/test_health_tunnel.py checks both against the running kernel's BTF.
TCX_INGRESS = 46
TCX_EGRESS = 47
_TCX_HOOKS = {"ingress": TCX_INGRESS, "egress": TCX_EGRESS}


cdef class TcxLink:
    """A tc program (SEC("tc")) attached to an interface's tcx ingress or egress hook, after
    the programs already there, by a BPF link whose only holder is this object: close()
    detaches it, and so does the end of the process, so nothing it rewrote is left behind
    by a process that died. Interface names are resolved in the calling thread's network
    namespace."""

    cdef int _fd
    cdef readonly int ifindex
    cdef readonly str direction
    cdef readonly uint32_t prog_id
    cdef readonly uint32_t id

    def __cinit__(self):
        self._fd = -1

    def __init__(self):
        raise TypeError("use TcxLink.attach()")

    @staticmethod
    def attach(iface, Program program not None, direction):
        """Attach `program` to `iface`'s "ingress" or "egress" hook."""
        try:
            attach_type = _TCX_HOOKS[direction]
        except KeyError:
            raise ValueError(f"direction must be 'ingress' or 'egress', not {direction!r}") \
                from None
        cdef int ifindex = _ifindex(iface)
        cdef int fd = _check(bpf_link_create(program._get_fd(), ifindex, attach_type, NULL),
                             f"attach {program.name} to tcx {direction} of ifindex {ifindex}")
        cdef TcxLink self = TcxLink.__new__(TcxLink)
        cdef bpf_link_info info
        cdef uint32_t info_len = sizeof(info)
        self._fd = fd
        self.ifindex = ifindex
        self.direction = direction
        memset(&info, 0, sizeof(info))
        _check(bpf_obj_get_info_by_fd(fd, &info, &info_len), "link info")
        self.id = info.id
        self.prog_id = info.prog_id
        return self

    @staticmethod
    def exists(uint32_t link_id):
        """Whether the kernel still has link `link_id` (held by some process)."""
        cdef int fd = bpf_link_get_fd_by_id(link_id)
        if fd == -ENOENT:
            return False
        _check(fd, f"open link id {link_id}")
        close(fd)
        return True

    @property
    def closed(self):
        return self._fd < 0

    def close(self):
        """Detach: the link's last holder goes."""
        if self._fd >= 0:
            close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __dealloc__(self):
        if self._fd >= 0:
            close(self._fd)

    def __repr__(self):
        state = "closed" if self._fd < 0 else f"id={self.id} prog_id={self.prog_id}"
        return f"<TcxLink ifindex={self.ifindex} {self.direction} {state}>"
