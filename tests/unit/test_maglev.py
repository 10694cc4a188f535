"""Maglev table builder: compiled vs reference, properties, weights, disruption, errors."""

import collections
import hashlib
import math
import random
import sys
from array import array

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pyxlb import _maglev, maglev
from pyxlb.errors import PyxlbError
from pyxlb.maglev import (
    DEFAULT_SIZE,
    EMPTY_SLOT,
    MAX_SIZE,
    MaglevInputError,
    build_table,
    build_table_reference,
    disruption,
    slot_shares,
)

BUILDERS = [build_table, build_table_reference]
SMALL_PRIMES = [7, 13, 31, 101, 251, 1009, 4099]


def addr_names(n, tag="", port=80):
    return [f"10.{tag}{i // 65536}.{i // 256 % 256}.{i % 256}:{port}" for i in range(n)]


def table_digest(table):
    """sha256 of the table as little-endian uint32, the same on any machine."""
    t = array("I", table)
    if sys.byteorder == "big":
        t.byteswap()
    return hashlib.sha256(t.tobytes()).hexdigest()


def paper_table(backends, m):
    """The paper's Pseudocode 1 written out with an explicit N x M permutation table,
    extended by the weight rule (w_i turns per round, weights divided by their gcd)."""
    live = sorted((maglev._name_bytes(n), w, v) for n, w, v in backends if w > 0)
    if not live:
        return [EMPTY_SLOT] * m
    g = math.gcd(*[w for _, w, _ in live])
    perms = []
    for key, _, _ in live:
        h1, h2 = maglev.name_hash(key)
        offset, skip = h1 % m, h2 % (m - 1) + 1
        perms.append([(offset + j * skip) % m for j in range(m)])
    nxt = [0] * len(live)
    entry = [None] * m
    n = 0
    while True:
        for i, (_, w, value) in enumerate(live):
            for _ in range(w // g):
                c = perms[i][nxt[i]]
                while entry[c] is not None:
                    nxt[i] += 1
                    c = perms[i][nxt[i]]
                entry[c] = value
                nxt[i] += 1
                n += 1
                if n == m:
                    return entry


# --- strategies --------------------------------------------------------------------------

names = st.one_of(st.text(alphabet=st.characters(codec="utf-8"), max_size=12),
                  st.binary(max_size=12))


@st.composite
def tables(draw, sizes=SMALL_PRIMES, max_backends=40):
    size = draw(st.sampled_from(sizes))
    backends = draw(st.lists(
        st.tuples(names, st.integers(0, 10), st.integers(0, EMPTY_SLOT - 1)),
        max_size=max_backends,
        unique_by=lambda b: maglev._name_bytes(b[0])))
    assume(sum(1 for b in backends if b[1] > 0) <= size)
    return backends, size


# --- equivalence -------------------------------------------------------------------------

@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables())
def test_compiled_equals_reference(case):
    backends, size = case
    fast = build_table(backends, size)
    ref = build_table_reference(backends, size)
    assert isinstance(fast, array) and fast.typecode == "I" and fast.itemsize == 4
    assert isinstance(ref, array) and ref.typecode == "I"
    assert len(fast) == size
    assert fast == ref


@settings(max_examples=40, deadline=None)
@given(tables(sizes=[7, 13, 31, 101], max_backends=12))
def test_reference_equals_paper_pseudocode(case):
    backends, size = case
    assert list(build_table_reference(backends, size)) == paper_table(backends, size)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(sizes=[65537], max_backends=200))
def test_compiled_equals_reference_default_size(case):
    backends, size = case
    assert build_table(backends, size) == build_table_reference(backends, size)


def test_compiled_equals_reference_many_backends():
    backends = [(n, 1 + i % 4, i) for i, n in enumerate(addr_names(500))]
    assert build_table(backends) == build_table_reference(backends)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_hash_same_in_both(data):
    assert _maglev.name_hash(data) == maglev.name_hash(data)


def test_default_size_matches_header():
    assert _maglev.DEFAULT_SIZE == DEFAULT_SIZE == 65537
    assert _maglev.EMPTY_SLOT == EMPTY_SLOT
    assert _maglev.H2_SEED == maglev.H2_SEED


def test_fallback_path_same_result():
    """Inputs off the compiled fast path (iterator, lists, int and str subclasses)."""

    class MyInt(int):
        pass

    class MyStr(str):
        pass

    backends = [(n, 1 + i % 3, i) for i, n in enumerate(addr_names(50))]
    expected = build_table(backends, 1009)
    assert _maglev.build(backends, 1009) == expected  # the fast path is taken
    assert build_table(iter(backends), 1009) == expected
    assert build_table(tuple(backends), 1009) == expected
    assert build_table([list(b) for b in backends], 1009) == expected
    assert build_table([(n, MyInt(w), MyInt(v)) for n, w, v in backends], 1009) == expected
    assert build_table([(MyStr(n), w, v) for n, w, v in backends], 1009) == expected
    assert build_table([(n.encode(), w, v) for n, w, v in backends], 1009) == expected
    assert build_table_reference(iter(backends), 1009) == expected
    Backend = collections.namedtuple("Backend", "name weight value")
    named = [Backend(*b) for b in backends]
    assert _maglev.build(named, 1009) == expected  # namedtuples take the fast path
    assert build_table(named, 1009) == expected


# --- properties --------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(tables(), st.randoms(use_true_random=False))
def test_order_independence(case, rnd):
    backends, size = case
    shuffled = list(backends)
    rnd.shuffle(shuffled)
    for build in BUILDERS:
        assert build(shuffled, size) == build(backends, size)


def test_order_independence_default_size():
    backends = [(n, 1 + i % 3, i) for i, n in enumerate(addr_names(300))]
    shuffled = list(backends)
    random.Random(7).shuffle(shuffled)
    assert build_table(shuffled) == build_table(backends)
    assert build_table(list(reversed(backends))) == build_table(backends)


@settings(max_examples=60, deadline=None)
@given(tables())
def test_every_slot_owned_by_a_live_backend(case):
    backends, size = case
    table = build_table(backends, size)
    live = {v for _, w, v in backends if w > 0}
    if live:
        assert set(table) <= live
        assert EMPTY_SLOT not in table
    else:
        assert set(table) == {EMPTY_SLOT}


def test_scaled_equal_weights_same_as_one():
    names_ = addr_names(20)
    ones = [(n, 1, i) for i, n in enumerate(names_)]
    fives = [(n, 5, i) for i, n in enumerate(names_)]
    for build in BUILDERS:
        assert build(fives, 4099) == build(ones, 4099)
    assert build_table(fives) == build_table(ones)
    # Scaling unequal weights by a common factor changes nothing either.
    a = [(n, 1 + i % 3, i) for i, n in enumerate(names_)]
    b = [(n, 7 * (1 + i % 3), i) for i, n in enumerate(names_)]
    assert build_table(a) == build_table(b)


def test_zero_weight_backend_owns_nothing():
    backends = [(n, 0 if i == 3 else 1, i) for i, n in enumerate(addr_names(8))]
    for build in BUILDERS:
        table = build(backends, 1009)
        assert 3 not in table
        assert set(table) == {0, 1, 2, 4, 5, 6, 7}
    # And the others get exactly the table they would get without it.
    assert build_table(backends) == build_table([b for b in backends if b[1]])


@pytest.mark.parametrize("build", BUILDERS)
def test_empty_tables(build):
    for backends in ([], [("a", 0, 1), ("b", 0, 2)]):
        table = build(backends, 31)
        assert len(table) == 31 and set(table) == {EMPTY_SLOT}
    assert slot_shares(build([], 31)) == {}
    assert len(build([])) == DEFAULT_SIZE


def test_one_slot_each_when_backends_fill_the_table():
    backends = [(f"b{i}", 1, i) for i in range(13)]
    for build in BUILDERS:
        assert sorted(build(backends, 13)) == list(range(13))
    assert sorted(build_table([("x", 1, 5), ("y", 1, 6)], 2)) == [5, 6]


def test_huge_weight_ratio_terminates():
    """Turns per round beyond the size are cut short when the table is full."""
    backends = [("heavy", maglev.MAX_WEIGHT, 1), ("light", 1, 2)]
    for build in BUILDERS:
        table = build(backends, 101)
        assert slot_shares(table)[1] >= 100 and EMPTY_SLOT not in table


def test_duplicate_values_allowed():
    table = build_table([("a", 1, 9), ("b", 1, 9), ("c", 1, 4)], 31)
    assert slot_shares(table).keys() == {9, 4}


# --- determinism (golden values: a change of the hash or of the rules breaks these) -----

def test_hash_golden():
    assert maglev._fnv1a64(b"") == 0xCBF29CE484222325  # FNV-1a test vectors
    assert maglev._fnv1a64(b"a") == 0xAF63DC4C8601EC8C
    assert maglev._fnv1a64(b"foobar") == 0x85944171F73967E8
    assert maglev._fmix64(0) == 0
    assert maglev.name_hash("10.0.0.1:80") == (0x5ED8F8275E47A14A, 0xA08DD604949B3371)
    assert maglev.name_hash("10.0.0.1:80") == maglev.name_hash(b"10.0.0.1:80")


@pytest.mark.parametrize("build", BUILDERS)
def test_table_golden(build):
    three = [("10.0.0.1:80", 1, 1), ("10.0.0.2:80", 1, 2), ("10.0.0.3:80", 1, 3)]
    assert list(build(three, 13)) == [2, 2, 1, 2, 2, 1, 3, 1, 1, 1, 3, 3, 3]
    weighted = [("10.0.0.1:80", 1, 1), ("10.0.0.2:80", 2, 2), ("10.0.0.3:80", 3, 3),
                ("10.0.0.4:80", 0, 4)]
    assert list(build(weighted, 31)) == [
        3, 3, 3, 2, 3, 3, 1, 3, 1, 3, 3, 2, 3, 2, 2, 3, 2, 1, 1, 2, 3, 2, 2, 3, 3, 1, 2, 1,
        3, 2, 3]
    ten = [(f"10.0.0.{i}:80", 1 + i % 3, i) for i in range(10)]
    table = build(ten)
    assert list(table[:16]) == [9, 3, 5, 6, 5, 7, 8, 8, 2, 6, 6, 2, 8, 9, 2, 1]
    assert table_digest(table) == (
        "930ef8a6cf66a196ceb5f7b0b18bf2e63e38a31dd8e641e5046c1aad35537728")


# --- load shares -------------------------------------------------------------------------

def share_errors(backends, m):
    """Per backend: (slots, ideal slots, reduced weight)."""
    table = build_table(backends, m)
    shares = slot_shares(table)
    total = sum(w for _, w, _ in backends)
    g = math.gcd(*[w for _, w, _ in backends])
    return [(shares.get(v, 0), m * w / total, w // g) for _, w, v in backends]


@pytest.mark.parametrize("n", [3, 10, 100, 1000])
@pytest.mark.parametrize("weights", ["equal", "1,2,3"])
def test_shares_follow_weights(n, weights):
    """Slot share vs weight share at M=65537.

    Rule: the relative error |slots - ideal| / ideal is at most 2% wherever that can hold,
    that is for N in {3, 10, 100} with any of these weights and for N=1000 with equal
    weights (measured at most 0.2% for N <= 100, 0.8% for N=1000 equal). It cannot hold for
    N=1000 with weights 1,2,3: the population stops in the middle of round k+1 with
    k = floor(M / sum(w)) = 32, so a backend gets between k*w and (k+1)*w slots, up to
    w slots from its ideal, 1/k = 3.1% relative (measured 2.4%). There the test checks
    that exact guarantee, |slots - ideal| < w (reduced weight), for every backend, and the
    2% bound on average over backends.
    """
    names_ = addr_names(n, tag="1")
    backends = [(name, 1 if weights == "equal" else 1 + i % 3, i)
                for i, name in enumerate(names_)]
    rows = share_errors(backends, 65537)
    for slots, ideal, w in rows:
        assert abs(slots - ideal) < w + 1e-9
    rel = [abs(slots - ideal) / ideal for slots, ideal, _ in rows]
    if n <= 100 or weights == "equal":
        assert max(rel) <= 0.02
    else:
        assert sum(rel) / len(rel) <= 0.02


def test_imbalance_equal_weights_at_most_one_slot():
    shares = slot_shares(build_table([(n, 1, i) for i, n in enumerate(addr_names(777))]))
    assert max(shares.values()) - min(shares.values()) <= 1


# --- disruption --------------------------------------------------------------------------

@pytest.mark.parametrize("n,bound,removals", [(10, 1.1, 10), (100, 2.0, 12)])
@pytest.mark.parametrize("name_set", range(3))
def test_disruption_when_one_backend_leaves(n, bound, removals, name_set):
    """Removing one of N equal backends moves at most bound/N of the slots (M=65537):
    1.1/N for N=10, 2/N for N=100 (worst measured 1.075/N and 1.67/N)."""
    names_ = [f"set{name_set}-{name}" for name in addr_names(n, port=8000 + name_set)]
    backends = [(name, 1, i) for i, name in enumerate(names_)]
    before = build_table(backends)
    for k in random.Random(name_set).sample(range(n), removals):
        after = build_table(backends[:k] + backends[k + 1:])
        moved = disruption(before, after)
        assert moved >= sum(1 for v in before if v == k) / len(before)  # its own slots
        assert moved <= bound / n, (k, moved * n)


def test_disruption_helper():
    assert disruption(array("I", [1, 2, 3, 4]), array("I", [1, 2, 0, 0])) == 0.5
    assert disruption([], []) == 0.0
    with pytest.raises(ValueError):
        disruption([1], [1, 2])


# --- invalid input -----------------------------------------------------------------------

OK = [("a", 1, 1), ("b", 2, 2)]
INVALID = {
    "size not prime": (OK, 65536),
    "size 9": (OK, 9),
    "size 1": (OK, 1),
    "size 0": (OK, 0),
    "size negative": (OK, -7),
    "size float": (OK, 13.0),
    "size bool": (OK, True),
    "size too big": (OK, 16777259),  # a prime above MAX_SIZE
    "negative weight": ([("a", -1, 1)], 13),
    "float weight": ([("a", 1.0, 1)], 13),
    "str weight": ([("a", "1", 1)], 13),
    "bool weight": ([("a", True, 1)], 13),
    "weight too big": ([("a", 2**32, 1)], 13),
    "duplicate name": ([("a", 1, 1), ("b", 1, 2), ("a", 1, 3)], 13),
    "duplicate name str/bytes": ([("a", 1, 1), (b"a", 0, 2)], 13),
    "duplicate zero-weight name": ([("a", 0, 1), ("a", 0, 2)], 13),
    "value reserved": ([("a", 1, EMPTY_SLOT)], 13),
    "value too big": ([("a", 1, 2**32)], 13),
    "value negative": ([("a", 1, -1)], 13),
    "value float": ([("a", 1, 1.5)], 13),
    "value None": ([("a", 1, None)], 13),
    "name int": ([(5, 1, 1)], 13),
    "name None": ([(None, 1, 1)], 13),
    "name surrogate": ([("\ud800", 1, 1)], 13),
    "pair not triple": ([("a", 1)], 13),
    "4-tuple": ([("a", 1, 1, 1)], 13),
    "not a tuple": (["abc"], 13),
    "too many backends": ([(f"b{i}", 1, i) for i in range(8)], 7),
}


@pytest.mark.parametrize("build", BUILDERS, ids=["compiled", "reference"])
@pytest.mark.parametrize("case", INVALID.keys())
def test_invalid_input(build, case):
    backends, size = INVALID[case]
    with pytest.raises(ValueError) as info:
        build(backends, size)
    assert isinstance(info.value, MaglevInputError)
    assert isinstance(info.value, PyxlbError)


def test_zero_weight_backends_do_not_count_against_size():
    backends = [(f"b{i}", 1 if i < 7 else 0, i) for i in range(20)]
    assert sorted(build_table(backends, 7)) == list(range(7))


def test_is_prime():
    primes = [p for p in range(200) if maglev.is_prime(p)]
    assert primes[:10] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29] and len(primes) == 46
    assert maglev.is_prime(65537) and maglev.is_prime(655373)
    assert not maglev.is_prime(65535) and not maglev.is_prime(1)
    assert MAX_SIZE == 2**24 and maglev.is_prime(16777213)
    assert len(build_table([("a", 1, 1)], 16777213)) == 16777213
