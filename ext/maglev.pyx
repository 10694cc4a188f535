# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Compiled Maglev table builder; the public API and the specification are pyxlb.maglev.

build() takes the backends as given to pyxlb.maglev.build_table and does everything in C:
type and range checks of the common case, sorting by name (qsort over the name bytes),
gcd of the weights, hashing, and the population loop with the GIL released. Any input it
does not accept on that fast path (an error, or an unusual but valid type such as an int
subclass or a list instead of a tuple) makes it return None; pyxlb.maglev then validates
in Python, which raises the error or hands populate() the normalized entries. Error
messages thus live in one place, pyxlb.maglev.
"""

from cpython cimport array
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8String
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, qsort
from libc.string cimport memcmp, memset

import array as _array_mod

cdef extern from "consts.h":
    int XLB_RING_SIZE_DEFAULT
    uint32_t XLB_RING_EMPTY

DEFAULT_SIZE = XLB_RING_SIZE_DEFAULT
EMPTY_SLOT = XLB_RING_EMPTY     # the datapath reads this slot value as "no backend"
H2_SEED = 0x9E3779B97F4A7C15

# C constants (macros, not module variables: the compiler can keep them in registers).
cdef extern from *:
    """
    #define XLB_MAGLEV_FNV_BASIS  0xCBF29CE484222325ULL
    #define XLB_MAGLEV_FNV_PRIME  0x100000001B3ULL
    #define XLB_MAGLEV_H2_SEED    0x9E3779B97F4A7C15ULL
    """
    const uint32_t EMPTY "XLB_RING_EMPTY"
    const uint64_t FNV_BASIS "XLB_MAGLEV_FNV_BASIS"
    const uint64_t FNV_PRIME "XLB_MAGLEV_FNV_PRIME"
    const uint64_t SEED2 "XLB_MAGLEV_H2_SEED"
# Largest size populate() accepts; pyxlb.maglev.MAX_SIZE is the same 2**24. Slot indices
# stay below 2 * size, so they fit uint32 arithmetic.
cdef Py_ssize_t MAX_SIZE = 1 << 24

cdef array.array _TEMPLATE = _array_mod.array("I")
if _TEMPLATE.itemsize != 4:
    raise ImportError("pyxlb._maglev needs array('I') items of 4 bytes")


ctypedef struct Turner:
    uint32_t pos      # next slot in this backend's permutation
    uint32_t skip     # permutation step, 1 .. size-1
    uint32_t turns    # turns per round (weight / gcd of the weights)
    uint32_t value    # written into the slots the backend claims


ctypedef struct Item:
    const unsigned char *key   # name bytes, kept alive by a Python list in build()
    Py_ssize_t keylen
    uint64_t weight
    uint32_t value


cdef int cmp_items(const void *a, const void *b) noexcept nogil:
    """Order of Python bytes comparison: memcmp (unsigned bytes), then the length."""
    cdef const Item *x = <const Item *>a
    cdef const Item *y = <const Item *>b
    cdef Py_ssize_t n = x.keylen if x.keylen < y.keylen else y.keylen
    cdef int r = memcmp(x.key, y.key, <size_t>n)
    if r != 0:
        return r
    return (x.keylen > y.keylen) - (x.keylen < y.keylen)


cdef inline uint64_t gcd64(uint64_t a, uint64_t b) noexcept nogil:
    cdef uint64_t t
    while b != 0:
        t = a % b
        a = b
        b = t
    return a


cdef inline uint64_t fmix64(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xFF51AFD7ED558CCDULL
    k ^= k >> 33
    k *= 0xC4CEB9FE1A85EC53ULL
    k ^= k >> 33
    return k


cdef inline uint64_t fnv1a64(const unsigned char *p, Py_ssize_t n) noexcept nogil:
    cdef uint64_t h = FNV_BASIS
    cdef Py_ssize_t i
    for i in range(n):
        h = (h ^ p[i]) * FNV_PRIME
    return h


def name_hash(bytes name):
    """Return (h1, h2) for the name bytes; must equal pyxlb.maglev.name_hash."""
    cdef uint64_t h1 = fmix64(fnv1a64(<const unsigned char *>name, len(name)))
    return h1, fmix64(h1 ^ SEED2)


cdef void fill(uint32_t *table, uint32_t m, Turner *bk, Py_ssize_t n) noexcept nogil:
    """Population loop: rounds over the backends until all m slots are owned (n >= 1)."""
    cdef uint32_t filled = 0
    cdef uint32_t pos, skip, t
    cdef Py_ssize_t i
    cdef Turner *b
    while True:
        for i in range(n):
            b = &bk[i]
            pos = b.pos
            skip = b.skip
            t = b.turns
            while t != 0:
                while table[pos] != EMPTY:
                    pos += skip
                    if pos >= m:
                        pos -= m
                table[pos] = b.value
                pos += skip
                if pos >= m:
                    pos -= m
                filled += 1
                if filled == m:
                    return
                t -= 1
            b.pos = pos


cdef inline void init_turner(Turner *t, const unsigned char *key, Py_ssize_t keylen,
                             uint32_t m, uint32_t turns, uint32_t value) noexcept nogil:
    cdef uint64_t h1 = fmix64(fnv1a64(key, keylen))
    cdef uint64_t h2 = fmix64(h1 ^ SEED2)
    t.pos = <uint32_t>(h1 % m)
    t.skip = <uint32_t>(h2 % (m - 1) + 1)
    t.turns = turns
    t.value = value


def populate(list entries, Py_ssize_t size):
    """Return array('I') of `size` slots filled by Maglev population.

    `entries`: [(name bytes, turns >= 1, value < 0xFFFFFFFF), ...] already validated,
    sorted by name and weight-reduced by pyxlb.maglev; `size` a prime in 2 .. 2**24.
    """
    if size < 2 or size > MAX_SIZE:
        raise ValueError(f"table size must be in 2..{MAX_SIZE}, got {size}")
    cdef Py_ssize_t n = len(entries)
    if n > size:
        raise ValueError(f"{n} backends do not fit a table of {size} slots")
    cdef array.array table = array.clone(_TEMPLATE, size, zero=False)
    cdef uint32_t *slots = table.data.as_uints
    cdef uint32_t m = <uint32_t>size
    memset(slots, 0xFF, <size_t>size * sizeof(uint32_t))
    if n == 0:
        return table

    cdef Turner *bk = <Turner *>malloc(<size_t>n * sizeof(Turner))
    if bk == NULL:
        raise MemoryError()
    cdef Py_ssize_t i
    cdef bytes key
    cdef unsigned long long turns, value
    try:
        for i in range(n):
            key, turns, value = entries[i]
            if turns < 1 or turns > 0xFFFFFFFFULL or value >= 0xFFFFFFFFULL:
                raise ValueError(f"bad entry {entries[i]!r}")
            init_turner(&bk[i], <const unsigned char *>key, len(key), m,
                        <uint32_t>turns, <uint32_t>value)
        with nogil:
            fill(slots, m, bk, n)
    finally:
        free(bk)
    return table


def build(object backends, Py_ssize_t size):
    """Return the table for `backends` (a list or tuple of (name, weight, value)), or None.

    `size` must be a prime in 2 .. 2**24 (checked by pyxlb.maglev). None means the input
    is not on the fast path (see the module doc) and pyxlb.maglev must handle it.
    """
    if size < 2 or size > MAX_SIZE:
        raise ValueError(f"table size must be in 2..{MAX_SIZE}, got {size}")
    if type(backends) is not list and type(backends) is not tuple:
        return None
    cdef Py_ssize_t n_all = len(backends)
    cdef uint32_t m = <uint32_t>size
    cdef Item *items = NULL
    cdef Turner *bk = NULL
    cdef list keep = []          # owns the encoded names while items point into them
    cdef Py_ssize_t i, j, n = 0
    cdef object item, name, key, w, v
    cdef long long wl, vl
    cdef uint64_t g = 0
    cdef array.array table
    try:
        items = <Item *>malloc(<size_t>(n_all if n_all > 0 else 1) * sizeof(Item))
        if items == NULL:
            raise MemoryError()
        for i in range(n_all):
            item = backends[i]
            if not isinstance(item, tuple) or len(<tuple>item) != 3:  # namedtuples too
                return None
            name = (<tuple>item)[0]
            w = (<tuple>item)[1]
            v = (<tuple>item)[2]
            if type(name) is str:
                try:
                    key = PyUnicode_AsUTF8String(name)
                except UnicodeEncodeError:
                    return None  # e.g. a lone surrogate
            elif type(name) is bytes:
                key = name
            else:
                return None
            if type(w) is not int or type(v) is not int:
                return None
            try:
                wl = w
                vl = v
            except OverflowError:
                return None
            if wl < 0 or wl > 0xFFFFFFFFLL or vl < 0 or vl >= 0xFFFFFFFFLL:
                return None
            keep.append(key)
            items[i].key = <const unsigned char *>PyBytes_AS_STRING(key)
            items[i].keylen = PyBytes_GET_SIZE(key)
            items[i].weight = <uint64_t>wl
            items[i].value = <uint32_t>vl
            if wl > 0:
                n += 1
                g = gcd64(g, <uint64_t>wl)
        if n > size:
            return None
        qsort(items, <size_t>n_all, sizeof(Item), cmp_items)
        for i in range(1, n_all):
            if cmp_items(&items[i - 1], &items[i]) == 0:
                return None      # duplicate name
        table = array.clone(_TEMPLATE, size, zero=False)
        memset(table.data.as_uints, 0xFF, <size_t>size * sizeof(uint32_t))
        if n == 0:
            return table
        bk = <Turner *>malloc(<size_t>n * sizeof(Turner))
        if bk == NULL:
            raise MemoryError()
        with nogil:
            j = 0
            for i in range(n_all):
                if items[i].weight > 0:
                    init_turner(&bk[j], items[i].key, items[i].keylen, m,
                                <uint32_t>(items[i].weight // g), items[i].value)
                    j += 1
            fill(table.data.as_uints, m, bk, n)
        return table
    finally:
        free(items)
        free(bk)
