"""Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4), with weights.

A Maglev table ("ring") is ``size`` slots, ``size`` a prime. Each backend has a
preference list over the slots, a permutation derived from a hash of its name; the
backends take turns claiming their next preferred free slot until every slot is owned.
The datapath hashes a flow's 5-tuple to a slot and sends the flow to the slot's owner.

Public API
----------
``build_table(backends, size=DEFAULT_SIZE) -> array.array('I')``
    The fast builder (the C loop in ``pyxlb._maglev``).
``build_table_reference(backends, size=DEFAULT_SIZE) -> array.array('I')``
    The same algorithm in plain Python; slow, identical output, kept as the specification.

``backends`` is an iterable of ``(name, weight, value)`` 3-tuples:

- ``name``: ``str`` (encoded as UTF-8) or ``bytes``, the backend's stable identity, for
  example its address. Only the name decides where a backend's slots are, so a backend
  keeps its slots across rebuilds as long as its name is unchanged. Names must be unique.
- ``weight``: an ``int`` in ``0 .. MAX_WEIGHT``. Weight 0 keeps the backend out of the
  table (drained). Only the ratios matter: the positive weights are divided by their gcd.
- ``value``: an ``int`` in ``0 .. 0xFFFFFFFE`` written into every slot the backend owns
  (the datapath uses backend ids). ``EMPTY_SLOT`` (``0xFFFFFFFF``) is reserved. Two
  backends may carry the same value.

The order of ``backends`` does not matter: they are sorted by name bytes first. A table
with no backend of positive weight is all ``EMPTY_SLOT``, which the datapath reads as
"no backend". Any invalid input raises ``MaglevInputError`` (a ``ValueError``) before any
work is done.

Hash (fixed, so tables agree across processes, machines and Python versions; never the
built-in ``hash()``)::

    h1     = fmix64(fnv1a64(name))
    h2     = fmix64(h1 ^ H2_SEED)          # H2_SEED = 0x9E3779B97F4A7C15
    offset = h1 % size
    skip   = h2 % (size - 1) + 1
    permutation[j] = (offset + j * skip) % size

``fnv1a64`` is 64-bit FNV-1a (basis 0xCBF29CE484222325, prime 0x100000001B3) and ``fmix64``
is the 64-bit finalizer of MurmurHash3. ``size`` being prime and ``1 <= skip < size``
makes every permutation visit every slot.

Weights: with the positive weights divided by their gcd (``w_i``), each population round
walks the backends in name order and gives backend ``i`` ``w_i`` turns in a row; a turn
claims the backend's next preferred free slot. Population stops as soon as every slot is
owned, possibly in the middle of a round. With equal weights this is exactly the paper's
unweighted algorithm, and backend ``i`` ends up with between ``k * w_i`` and
``(k + 1) * w_i`` slots, ``k`` being the number of complete rounds.
"""

from __future__ import annotations

import functools

import math
import operator
from array import array
from collections import Counter
from typing import Iterable, Sequence, Tuple, Union

from pyxlb import _maglev
from pyxlb.errors import PyxlbError

__all__ = [
    "DEFAULT_SIZE",
    "EMPTY_SLOT",
    "H2_SEED",
    "MAX_SIZE",
    "MAX_WEIGHT",
    "MaglevInputError",
    "build_table",
    "build_table_reference",
    "disruption",
    "is_prime",
    "name_hash",
    "slot_shares",
]

#: Default table size, a prime: XLB_RING_SIZE_DEFAULT of xdp/include/consts.h.
DEFAULT_SIZE = _maglev.DEFAULT_SIZE
#: Largest accepted table size: 2**24 slots, a 64 MiB table. The paper's sizes (65537,
#: 655373) are far below; the bound keeps slot arithmetic in 32 bits and memory sane.
MAX_SIZE = 1 << 24
#: Largest accepted weight (a weight is a number of turns per round, kept in 32 bits).
MAX_WEIGHT = 0xFFFFFFFF
#: Value of a slot no backend owns (XLB_RING_EMPTY); reserved, so no backend may use it.
EMPTY_SLOT = _maglev.EMPTY_SLOT
#: Constant XORed into h1 before the second finalization that gives h2.
H2_SEED = 0x9E3779B97F4A7C15

_MASK64 = 0xFFFFFFFFFFFFFFFF
_FNV_BASIS = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3

if array("I").itemsize != 4:  # pragma: no cover - every Linux ABI pyxlb targets has 4
    raise ImportError("pyxlb.maglev needs array('I') items of 4 bytes")

Name = Union[str, bytes]
Backend = Tuple[Name, int, int]


class MaglevInputError(PyxlbError, ValueError):
    """Invalid Maglev input: table size, backend name, weight or value."""


# --- hash -------------------------------------------------------------------------------

def _fmix64(k: int) -> int:
    k ^= k >> 33
    k = (k * 0xFF51AFD7ED558CCD) & _MASK64
    k ^= k >> 33
    k = (k * 0xC4CEB9FE1A85EC53) & _MASK64
    k ^= k >> 33
    return k


def _fnv1a64(data: bytes) -> int:
    h = _FNV_BASIS
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return h


def name_hash(name: Name) -> Tuple[int, int]:
    """Return ``(h1, h2)``, the two 64-bit hashes of a backend name (see the module doc)."""
    h1 = _fmix64(_fnv1a64(_name_bytes(name)))
    return h1, _fmix64(h1 ^ H2_SEED)


# --- validation -------------------------------------------------------------------------

@functools.lru_cache(maxsize=256)
def is_prime(n: int) -> bool:
    """Trial division; fine for n <= MAX_SIZE (at most ~2,000 divisions). Cached: every Vip
    checks its ring size, and a cluster uses one or two sizes."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    d = 3
    while d * d <= n:
        if n % d == 0:
            return False
        d += 2
    return True


def _name_bytes(name: object) -> bytes:
    if isinstance(name, str):
        try:
            return name.encode("utf-8")
        except UnicodeEncodeError:
            raise MaglevInputError(f"backend name {name!r} is not valid UTF-8") from None
    if isinstance(name, bytes):
        return name
    raise MaglevInputError(f"backend name must be str or bytes, not {type(name).__name__}")


def _int(x: object, what: str) -> int:
    # bool is an int subclass but a weight/value of True is almost surely a mistake.
    if isinstance(x, bool):
        raise MaglevInputError(f"{what} must be an int, not bool")
    try:
        return operator.index(x)
    except TypeError:
        raise MaglevInputError(f"{what} must be an int, not {type(x).__name__}") from None


def _check_size(size: object) -> int:
    n = _int(size, "table size")
    if n < 2:
        raise MaglevInputError(f"table size must be a prime >= 2, got {n}")
    if n > MAX_SIZE:
        raise MaglevInputError(f"table size {n} exceeds the maximum {MAX_SIZE}")
    if not is_prime(n):
        raise MaglevInputError(f"table size must be a prime, got {n}")
    return n


def _prepare(backends: Iterable[Backend], size: object) -> Tuple[int, list]:
    """Validate the input; return ``(size, entries)``.

    ``entries`` is ``[(name_bytes, turns, value), ...]`` for the backends of positive
    weight, sorted by name bytes, ``turns`` being the weight divided by the gcd of all the
    positive weights. Both builders start from this list.
    """
    m = _check_size(size)
    seen = set()
    entries = []
    # build_table checks the common case in C (pyxlb._maglev.build) and comes here only
    # for the rest; this loop is the one place where error messages are made.
    for item in backends:
        try:
            name, weight, value = item
        except (TypeError, ValueError):
            raise MaglevInputError(
                f"each backend must be a (name, weight, value) tuple, got {item!r}") from None
        key = _name_bytes(name)
        if key in seen:
            raise MaglevInputError(f"duplicate backend name {name!r}")
        seen.add(key)
        if type(weight) is not int:
            weight = _int(weight, f"weight of backend {name!r}")
        if type(value) is not int:
            value = _int(value, f"value of backend {name!r}")
        if not 0 <= weight <= MAX_WEIGHT:
            raise MaglevInputError(
                f"weight of backend {name!r} must be in 0..{MAX_WEIGHT}, got {weight}")
        if not 0 <= value < EMPTY_SLOT:
            raise MaglevInputError(
                f"value of backend {name!r} must be in 0..{EMPTY_SLOT - 1:#x} "
                f"({EMPTY_SLOT:#x} is reserved for empty slots), got {value}")
        if weight:
            entries.append((key, weight, value))
    if len(entries) > m:
        raise MaglevInputError(
            f"{len(entries)} backends of positive weight do not fit a table of {m} slots")
    if entries:
        g = math.gcd(*[e[1] for e in entries])
        if g != 1:
            entries = [(k, w // g, v) for k, w, v in entries]
        entries.sort(key=operator.itemgetter(0))
    return m, entries


# --- builders ---------------------------------------------------------------------------

def build_table(backends: Iterable[Backend], size: int = DEFAULT_SIZE) -> array:
    """Build a Maglev table with the compiled builder; returns ``array('I')`` of ``size``."""

    m = _check_size(size)
    if not isinstance(backends, (list, tuple)):
        backends = list(backends)  # may be an iterator: the fallback reads it a second time
    table = _maglev.build(backends, m)
    if table is None:
        # Not the common case (an error, or e.g. an int subclass as a weight): validate
        # here, which raises MaglevInputError or yields entries for the compiled loop.
        m, entries = _prepare(backends, m)
        table = _maglev.populate(entries, m)
    return table


def build_table_reference(backends: Iterable[Backend], size: int = DEFAULT_SIZE) -> array:
    """Build a Maglev table in plain Python; same output as :func:`build_table`."""
    m, entries = _prepare(backends, size)
    table = array("I", [EMPTY_SLOT]) * m
    if not entries:
        return table
    state = []  # per backend: [next slot in its permutation, skip, turns, value]
    for key, turns, value in entries:
        h1, h2 = name_hash(key)
        state.append([h1 % m, h2 % (m - 1) + 1, turns, value])
    filled = 0
    while True:
        for st in state:
            pos, skip, turns, value = st
            for _ in range(turns):
                while table[pos] != EMPTY_SLOT:
                    pos = (pos + skip) % m
                table[pos] = value
                pos = (pos + skip) % m
                filled += 1
                if filled == m:
                    return table
            st[0] = pos


# --- helpers for tests and benchmarks ---------------------------------------------------

def slot_shares(table: Sequence[int]) -> dict:
    """Return ``{value: number of slots}``; ``EMPTY_SLOT`` slots are not counted."""
    counts = Counter(table)
    counts.pop(EMPTY_SLOT, None)
    return dict(counts)


def disruption(old: Sequence[int], new: Sequence[int]) -> float:
    """Fraction of slots whose value differs between two tables of the same size."""
    if len(old) != len(new):
        raise ValueError(f"tables differ in size: {len(old)} != {len(new)}")
    if not old:
        return 0.0
    return sum(map(operator.ne, old, new)) / len(old)
