"""The pure IP allocator (pyxlb.k8s.ipam): pool parsing, every allocation rule and refusal,
and a stateful hypothesis test of the invariants over random Service histories, pool
changes and controller restarts."""

from __future__ import annotations

import dataclasses
import ipaddress
import time

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from pyxlb.errors import PyxlbError
from pyxlb.k8s.ipam import (AllocationError, Allocator, Pool, PoolError, Request, Selector,
                            check_pools)

ip = ipaddress.ip_address


def ips(*texts):
    return tuple(ip(t) for t in texts)


def pool_obj(name="public", **spec):
    spec.setdefault("addresses", ["192.0.2.0/28"])
    return {"apiVersion": "pyxlb.io/v1alpha1", "kind": "IPPool",
            "metadata": {"name": name}, "spec": spec}


def refused(alloc, req, reason):
    """assign must refuse with this Event reason; the message names the Service."""
    with pytest.raises(AllocationError) as info:
        alloc.assign(req)
    assert info.value.reason == reason, str(info.value)
    assert req.service in str(info.value)
    assert isinstance(info.value, PyxlbError)
    return str(info.value)


# --- parsing -----------------------------------------------------------------------------

def test_from_object_reads_the_documented_example():
    pool = Pool.from_object(pool_obj(
        addresses=["192.0.2.0/28", "198.51.100.10-198.51.100.20", "2001:db8:100::/120"],
        autoAssign=False, avoidBuggyIPs=True,
        serviceSelector={"matchLabels": {"team": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "NotIn",
                                               "values": ["dev"]}]}))
    assert pool.name == "public"
    assert pool.ranges == (ips("192.0.2.0", "192.0.2.15"),
                           ips("198.51.100.10", "198.51.100.20"),
                           ips("2001:db8:100::", "2001:db8:100::ff"))
    assert (pool.auto_assign, pool.avoid_buggy_ips) == (False, True)
    assert pool.selects({"team": "web"})
    assert pool.selects({"team": "web", "tier": "prod"})
    assert not pool.selects({"team": "web", "tier": "dev"})
    assert not pool.selects({})


def test_from_object_defaults():
    pool = Pool.from_object(pool_obj(addresses=["2001:db8::1-2001:db8::3", "192.0.2.7"]))
    assert (pool.auto_assign, pool.avoid_buggy_ips, pool.selector) == (True, False, None)
    assert pool.ranges == (ips("2001:db8::1", "2001:db8::3"), ips("192.0.2.7", "192.0.2.7"))
    assert pool.selects({"anything": "at all"})


@pytest.mark.parametrize("obj, fragment", [
    ("not a dict", "must be a mapping"),
    ({"metadata": {}, "spec": {"addresses": ["192.0.2.0/28"]}}, "without metadata.name"),
    ({"metadata": {"name": "public"}}, "'public': spec is missing"),
    (pool_obj(addresses=None), "'public': spec.addresses is required"),
    (pool_obj(addresses=[]), "'public': spec.addresses is empty"),
    (pool_obj(addresses="192.0.2.0/28"), "'public': spec.addresses must be a list"),
    (pool_obj(addresses=["192.0.2.0/33"]),
     "'public': spec.addresses[0]: '192.0.2.0/33' is not a CIDR or a first-last range"),
    (pool_obj(addresses=["10.0.0.0/8", "192.0.2.1/24"]),
     "'public': spec.addresses[1]: '192.0.2.1/24' has host bits set (the network is "
     "192.0.2.0/24)"),
    (pool_obj(addresses=["192.0.2.20-192.0.2.10"]), "first address after its last"),
    (pool_obj(addresses=["192.0.2.1-2001:db8::1"]), "mixes IPv4 and IPv6"),
    (pool_obj(addresses=["192.0.2.1-"]), "is not a range of two addresses"),
    (pool_obj(addresses=[42]), "spec.addresses[0]: 42 is not a string"),
    (pool_obj(autoAssign="yes"), "'public': spec.autoAssign must be true or false"),
    (pool_obj(avoidBuggyIPs=1), "'public': spec.avoidBuggyIPs must be true or false"),
    (pool_obj(serviceSelector=["team"]), "spec.serviceSelector must be a mapping"),
    (pool_obj(serviceSelector={"matchLabels": {"team": 1}}), "spec.serviceSelector.matchLabels"),
    (pool_obj(serviceSelector={"matchExpressions": [
        {"key": "team", "operator": "Gt", "values": ["1"]}]}),
     "'public': spec.serviceSelector.matchExpressions[0].operator 'Gt' is not one of"),
    (pool_obj(serviceSelector={"matchExpressions": [{"key": "team", "operator": "In"}]}),
     "operator In needs at least one value"),
    (pool_obj(serviceSelector={"matchExpressions": [
        {"key": "team", "operator": "Exists", "values": ["x"]}]}), "operator Exists takes no"),
    (pool_obj(serviceSelector={"matchExpressions": [{"operator": "Exists"}]}),
     "matchExpressions[0].key must be"),
])
def test_from_object_refuses_bad_pools(obj, fragment):
    with pytest.raises(PoolError) as info:
        Pool.from_object(obj)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, PyxlbError)


def test_pool_constructed_directly_is_checked_too():
    with pytest.raises(PoolError, match="'p': spec.addresses is empty"):
        Pool("p", ())
    with pytest.raises(PoolError, match="first address after its last"):
        Pool("p", (ips("10.0.0.2", "10.0.0.1"),))
    with pytest.raises(PoolError, match="mixes IPv4 and IPv6"):
        Pool("p", (ips("10.0.0.1", "::1"),))


@pytest.mark.parametrize("selector, labels, expected", [
    ({}, {}, True),
    ({"matchLabels": {"team": "web"}}, {"team": "web"}, True),
    ({"matchLabels": {"team": "web"}}, {"team": "db"}, False),
    ({"matchLabels": {"team": "web"}}, {}, False),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["a", "b"]}]},
     {"env": "b"}, True),
    ({"matchExpressions": [{"key": "env", "operator": "In", "values": ["a"]}]}, {}, False),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["a"]}]}, {}, True),
    ({"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["a"]}]},
     {"env": "a"}, False),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {"env": ""}, True),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, {"env": "a"}, False),
    ({"matchLabels": {"team": "web"},
      "matchExpressions": [{"key": "env", "operator": "Exists"}]}, {"team": "web"}, False),
])
def test_selector_semantics(selector, labels, expected):
    assert Selector.from_object(selector, "IPPool 'p'").matches(labels) is expected


def test_check_pools_reports_each_overlapping_pair():
    a = Pool.parse("a", ["10.0.0.0/28", "2001:db8::/126"])
    b = Pool.parse("b", ["10.0.0.8-10.0.0.20"])
    c = Pool.parse("c", ["10.0.0.15", "2001:db8::3-2001:db8::9"])
    d = Pool.parse("d", ["10.9.0.0/24"])
    assert check_pools([a, d]) == []
    problems = check_pools([d, c, b, a])
    assert problems == [
        "IPPools 'a' and 'b' overlap at 10.0.0.8-10.0.0.15 (8 addresses); they belong to 'a'",
        "IPPools 'a' and 'c' overlap at 10.0.0.15, 2001:db8::3 (2 addresses); "
        "they belong to 'a'",
        "IPPools 'b' and 'c' overlap at 10.0.0.15 (1 address); they belong to 'b'",
    ]


# --- automatic allocation ----------------------------------------------------------------

def test_first_free_address_of_the_first_pool_by_name():
    alloc = Allocator([Pool.parse("b", ["10.0.1.0/31"]), Pool.parse("a", ["10.0.0.0/31"])])
    got = [alloc.assign(Request(f"ns/s{i}")) for i in range(4)]
    assert got == [ips("10.0.0.0"), ips("10.0.0.1"), ips("10.0.1.0"), ips("10.0.1.1")]
    msg = refused(alloc, Request("ns/s4"), "PoolExhausted")
    assert "'a', 'b'" in msg
    alloc.release("ns/s1")
    assert alloc.assign(Request("ns/s5")) == ips("10.0.0.1")    # the hole is reused first


def test_ranges_are_scanned_lowest_address_first_and_single_addresses_work():
    alloc = Allocator([Pool.parse("p", ["10.0.0.9", "10.0.0.3-10.0.0.4"])])
    got = [alloc.assign(Request(f"ns/s{i}"))[0] for i in range(3)]
    assert got == list(ips("10.0.0.3", "10.0.0.4", "10.0.0.9"))


@pytest.mark.parametrize("families, expected", [
    ((4,), ("10.0.0.0",)),
    ((6,), ("2001:db8::",)),
    ((4, 6), ("10.0.0.0", "2001:db8::")),
    ((6, 4), ("2001:db8::", "10.0.0.0")),
])
def test_one_address_per_family_in_the_services_order(families, expected):
    alloc = Allocator([Pool.parse("v4", ["10.0.0.0/30"]), Pool.parse("v6", ["2001:db8::/64"])])
    assert alloc.assign(Request("ns/web", families=families)) == ips(*expected)


def test_dual_stack_pool_serves_both_families():
    alloc = Allocator([Pool.parse("both", ["10.0.0.0/30", "2001:db8::/126"])])
    assert alloc.assign(Request("ns/web", families=(6, 4))) == ips("2001:db8::", "10.0.0.0")
    assert alloc.usage() == {"both": (2, 8)}


@pytest.mark.parametrize("pools, req, reason", [
    ([], Request("ns/web"), "NoPool"),
    ([Pool.parse("v4", ["10.0.0.0/30"])], Request("ns/web", families=(6,)), "NoPool"),
    ([Pool.parse("v4", ["10.0.0.0/30"], auto_assign=False)], Request("ns/web"), "NoPool"),
    ([Pool.parse("v4", ["10.0.0.0/30"], selector=Selector((("team", "db"),)))],
     Request("ns/web", labels={"team": "web"}), "NoPool"),
    ([Pool.parse("v4", ["10.0.0.0/30"])], Request("ns/web", pool="other"), "UnknownPool"),
    ([Pool.parse("v4", ["10.0.0.0/30"], selector=Selector((("team", "db"),)))],
     Request("ns/web", pool="v4"), "PoolNotSelected"),
    ([Pool.parse("v4", ["10.0.0.0/32"], avoid_buggy_ips=True)], Request("ns/web"),
     "PoolExhausted"),
])
def test_refusals_of_automatic_allocation(pools, req, reason):
    alloc = Allocator(pools)
    refused(alloc, req, reason)
    assert alloc.services() == frozenset()


def test_dual_stack_refused_as_a_whole_when_one_family_has_no_pool():
    alloc = Allocator([Pool.parse("v4", ["10.0.0.0/30"])])
    msg = refused(alloc, Request("ns/web", families=(4, 6)), "NoPool")
    assert "IPv6" in msg
    assert alloc.assigned("ns/web") == () and alloc.owners("10.0.0.0") == frozenset()


def test_avoid_buggy_ips_skips_dot_zero_and_dot_255():
    alloc = Allocator([Pool.parse("p", ["10.0.0.254-10.0.1.1", "2001:db8::ff-2001:db8::100"],
                                  avoid_buggy_ips=True)])
    got = [alloc.assign(Request(f"ns/s{i}"))[0] for i in range(2)]
    assert got == list(ips("10.0.0.254", "10.0.1.1"))
    refused(alloc, Request("ns/s2"), "PoolExhausted")
    # IPv6 has no such addresses to avoid
    assert alloc.assign(Request("ns/v6", families=(6,))) == ips("2001:db8::ff")
    assert alloc.usage() == {"p": (3, 4 - 2 + 2)}
    msg = refused(alloc, Request("ns/r", requested=("10.0.0.255",)), "NotInPool")
    assert "avoidBuggyIPs" in msg
    assert alloc.pool_of("10.0.1.0") is None and alloc.pool_of("10.0.1.1") == "p"


def test_auto_assign_off_only_for_services_that_ask():
    alloc = Allocator([Pool.parse("a-reserved", ["10.0.0.0/30"], auto_assign=False),
                       Pool.parse("b-general", ["10.0.1.0/30"])])
    assert alloc.assign(Request("ns/any")) == ips("10.0.1.0")
    assert alloc.assign(Request("ns/named", pool="a-reserved")) == ips("10.0.0.0")
    assert alloc.assign(Request("ns/asked", requested=("10.0.0.3",))) == ips("10.0.0.3")


def test_named_pool_without_the_family_is_no_pool():
    alloc = Allocator([Pool.parse("v4", ["10.0.0.0/30"]), Pool.parse("v6", ["2001:db8::/64"])])
    msg = refused(alloc, Request("ns/x", families=(4, 6), pool="v4"), "NoPool")
    assert "IPPool 'v4' has no IPv6 addresses" in msg


def test_named_pool_is_the_only_pool_used():
    alloc = Allocator([Pool.parse("a", ["10.0.0.0/32"]), Pool.parse("b", ["10.0.1.0/31"])])
    assert alloc.assign(Request("ns/x", pool="b")) == ips("10.0.1.0")
    assert alloc.assign(Request("ns/y", pool="b")) == ips("10.0.1.1")
    msg = refused(alloc, Request("ns/z", pool="b"), "PoolExhausted")
    assert "'b'" in msg and "'a'" not in msg


def test_service_selector_steers_services_to_their_pool():
    web = Selector.from_object({"matchLabels": {"team": "web"}}, "IPPool 'a-web'")
    alloc = Allocator([Pool.parse("a-web", ["10.0.0.0/30"], selector=web),
                       Pool.parse("b-rest", ["10.0.1.0/30"])])
    assert alloc.assign(Request("ns/web", labels={"team": "web"})) == ips("10.0.0.0")
    assert alloc.assign(Request("ns/db", labels={"team": "db"})) == ips("10.0.1.0")
    msg = refused(alloc, Request("ns/db2", labels={"team": "db"}, requested=("10.0.0.2",)),
                  "NotInPool")
    assert "serviceSelector" in msg


def test_overlapping_pools_give_the_address_to_the_first_by_name():
    alloc = Allocator([Pool.parse("b", ["10.0.0.0/29"]), Pool.parse("a", ["10.0.0.0/30"])])
    assert alloc.pool_of("10.0.0.3") == "a" and alloc.pool_of("10.0.0.4") == "b"
    assert alloc.usage() == {"a": (0, 4), "b": (0, 4)}
    assert alloc.assign(Request("ns/x", pool="b")) == ips("10.0.0.4")
    msg = refused(alloc, Request("ns/y", pool="b", requested=("10.0.0.1",)), "NotInPool")
    assert "belongs to IPPool 'a'" in msg


def test_set_pools_refuses_two_pools_of_one_name():
    with pytest.raises(PoolError, match="two IPPools are named 'p'"):
        Allocator([Pool.parse("p", ["10.0.0.0/30"]), Pool.parse("p", ["10.0.1.0/30"])])


# --- requested IPs -----------------------------------------------------------------------

POOLS = [Pool.parse("v4", ["10.0.0.0/28"]), Pool.parse("v6", ["2001:db8::/64"])]


@pytest.mark.parametrize("req, expected", [
    (Request("ns/a", requested=("10.0.0.7",)), ("10.0.0.7",)),
    (Request("ns/a", requested="10.0.0.7"), ("10.0.0.7",)),
    (Request("ns/a", requested=(ip("10.0.0.7"), " 10.0.0.7 ")), ("10.0.0.7",)),
    (Request("ns/a", families=(6, 4), requested=("10.0.0.7", "2001:db8::7")),
     ("2001:db8::7", "10.0.0.7")),
    # only an IPv4 IP on a dual-stack Service: it gets that one address, no IPv6
    (Request("ns/a", families=(4, 6), requested=("10.0.0.7",)), ("10.0.0.7",)),
    (Request("ns/a", families=(6, 4), requested=("2001:db8::7",)), ("2001:db8::7",)),
])
def test_requested_ips_decide_the_result(req, expected):
    assert Allocator(POOLS).assign(req) == ips(*expected)


@pytest.mark.parametrize("req, reason, fragment", [
    (Request("ns/a", requested=("10.9.9.9",)), "NotInPool", "outside every IPPool"),
    (Request("ns/a", requested=("10.0.0.7",), pool="v6"), "NotInPool",
     "not to the requested pool 'v6'"),
    (Request("ns/a", requested=("2001:db8::1",)), "FamilyMismatch", "ipFamilies are IPv4"),
    (Request("ns/a", requested=("10.0.0.1", "10.0.0.2")), "TooManyIPs", "at most one"),
    (Request("ns/a", requested=("10.0.0.300",)), "InvalidIP", "'10.0.0.300'"),
    (Request("ns/a", families=(6,), requested=("fe80::1%eth0",)), "InvalidIP", "zone"),
    (Request("ns/a", requested=("10.0.0.7",), pool="nope"), "UnknownPool", "'nope'"),
])
def test_requested_ip_refusals(req, reason, fragment):
    alloc = Allocator(POOLS)
    assert fragment in refused(alloc, req, reason)
    assert alloc.services() == frozenset()


def test_requested_ip_in_use_is_refused():
    alloc = Allocator(POOLS)
    alloc.assign(Request("ns/first", requested=("10.0.0.7",)))
    msg = refused(alloc, Request("ns/second", requested=("10.0.0.7",)), "AddressInUse")
    assert "held by ns/first" in msg
    assert alloc.owners("10.0.0.7") == {"ns/first"}
    # automatic allocation walks around it
    assert [alloc.assign(Request(f"ns/s{i}"))[0] for i in range(8)][-1] == ip("10.0.0.8")


# --- sharing -----------------------------------------------------------------------------

TCP80, TCP443, UDP53 = ("tcp", 80), ("tcp", 443), ("udp", 53)


@pytest.mark.parametrize("first, second, shared", [
    (("k", {TCP80}), ("k", {TCP443}), True),
    (("k", {TCP80}), ("k", {("udp", 80)}), True),             # same number, other protocol
    (("k", {TCP80, UDP53}), ("k", {TCP443, UDP53}), False),   # one port in common
    (("k", {TCP80}), ("other", {TCP443}), False),
    (("k", {TCP80}), (None, {TCP443}), False),
    ((None, {TCP80}), ("k", {TCP443}), False),
    ((None, {TCP80}), (None, {TCP443}), False),
])
def test_requested_ip_sharing_rule(first, second, shared):
    alloc = Allocator(POOLS)
    alloc.assign(Request("ns/a", share_key=first[0], ports=first[1], requested=("10.0.0.5",)))
    b = Request("ns/b", share_key=second[0], ports=second[1], requested=("10.0.0.5",))
    if shared:
        assert alloc.assign(b) == ips("10.0.0.5")
        assert alloc.owners("10.0.0.5") == {"ns/a", "ns/b"}
        assert alloc.usage()["v4"] == (1, 16)
    else:
        refused(alloc, b, "AddressInUse")
        assert alloc.owners("10.0.0.5") == {"ns/a"}


def test_automatic_allocation_with_a_key_reuses_the_keys_address():
    alloc = Allocator(POOLS)
    alloc.assign(Request("ns/other"))                                           # 10.0.0.0
    assert alloc.assign(Request("ns/a", share_key="k", ports={TCP80})) == ips("10.0.0.1")
    assert alloc.assign(Request("ns/b", share_key="k", ports={TCP443})) == ips("10.0.0.1")
    # a port already used at the key's address: a free address instead
    assert alloc.assign(Request("ns/c", share_key="k", ports={TCP80})) == ips("10.0.0.2")
    # the key's lowest address whose ports do not collide comes first
    assert alloc.assign(Request("ns/d", share_key="k", ports={UDP53})) == ips("10.0.0.1")
    assert alloc.owners("10.0.0.1") == {"ns/a", "ns/b", "ns/d"}
    # a different key never lands on these
    assert alloc.assign(Request("ns/e", share_key="j", ports={UDP53})) == ips("10.0.0.3")
    alloc.release("ns/a")
    assert alloc.owners("10.0.0.1") == {"ns/b", "ns/d"}
    for s in ("ns/b", "ns/c", "ns/d", "ns/e", "ns/other"):
        alloc.release(s)
    assert alloc.services() == frozenset() and alloc.usage()["v4"] == (0, 16)


def test_key_reuse_respects_the_pools_the_service_may_use():
    alloc = Allocator([Pool.parse("a", ["10.0.0.0/30"]), Pool.parse("b", ["10.0.1.0/30"])])
    alloc.assign(Request("ns/x", share_key="k", ports={TCP80}, pool="b"))
    assert alloc.assign(Request("ns/y", share_key="k", ports={TCP443}, pool="a")) \
        == ips("10.0.0.0")
    assert alloc.assign(Request("ns/z", share_key="k", ports={UDP53})) == ips("10.0.0.0")


# --- idempotence and changes -------------------------------------------------------------

def test_assign_is_idempotent():
    alloc = Allocator(POOLS)
    req = Request("ns/web", families=(4, 6), ports={TCP80})
    first = alloc.assign(req)
    assert alloc.assign(req) == first == alloc.assigned("ns/web")
    assert alloc.assign(Request("ns/web", families=(4, 6), ports={TCP443})) == first


def test_changes_keep_what_still_fits():
    alloc = Allocator(POOLS)
    alloc.assign(Request("ns/filler"))
    v4, = alloc.assign(Request("ns/web"))
    assert v4 == ip("10.0.0.1")
    # add IPv6: IPv4 stays
    assert alloc.assign(Request("ns/web", families=(6, 4))) == (ip("2001:db8::"), v4)
    # drop IPv6: released
    assert alloc.assign(Request("ns/web", families=(4,))) == (v4,)
    assert alloc.owners("2001:db8::") == frozenset()
    # request another IP: moves, the old one is free again
    assert alloc.assign(Request("ns/web", requested=("10.0.0.9",))) == ips("10.0.0.9")
    assert alloc.owners(v4) == frozenset()
    # stop requesting: the requested address is kept
    assert alloc.assign(Request("ns/web")) == ips("10.0.0.9")
    # a sharing key with nobody to share with changes nothing
    assert alloc.assign(Request("ns/web", share_key="k")) == ips("10.0.0.9")


def test_changing_the_share_key_moves_off_a_shared_address():
    alloc = Allocator(POOLS)
    alloc.assign(Request("ns/a", share_key="k", ports={TCP80}))
    alloc.assign(Request("ns/b", share_key="k", ports={TCP443}))
    assert alloc.assign(Request("ns/b", share_key="j", ports={TCP443})) == ips("10.0.0.1")
    assert alloc.owners("10.0.0.0") == {"ns/a"}
    # and ports that collide with the sharer move too
    alloc.assign(Request("ns/c", share_key="k", ports={TCP443}))
    assert alloc.assign(Request("ns/c", share_key="k", ports={TCP80})) == ips("10.0.0.2")


def test_failed_change_keeps_the_old_addresses_while_they_are_legal():
    alloc = Allocator(POOLS)
    alloc.assign(Request("ns/other", requested=("10.0.0.9",)))
    old = alloc.assign(Request("ns/web", families=(4,)))
    refused(alloc, Request("ns/web", requested=("10.0.0.9",)), "AddressInUse")
    assert alloc.assigned("ns/web") == old
    refused(alloc, Request("ns/web", requested=("10.9.9.9",)), "NotInPool")
    refused(alloc, Request("ns/web", requested=("not-an-ip",)), "InvalidIP")
    assert alloc.assigned("ns/web") == old


def test_failed_dual_stack_change_keeps_the_family_it_had():
    alloc = Allocator([Pool.parse("v4", ["10.0.0.0/30"])])
    old = alloc.assign(Request("ns/web"))
    refused(alloc, Request("ns/web", families=(4, 6)), "NoPool")
    assert alloc.assigned("ns/web") == old


def test_failed_change_releases_addresses_that_are_no_longer_legal():
    alloc = Allocator([Pool.parse("a", ["10.0.0.0/32"]), Pool.parse("b", ["10.0.1.0/32"])])
    alloc.assign(Request("ns/x", pool="b"))
    alloc.assign(Request("ns/web", pool="a"))
    # now pointed at a pool with no room: its old address is not in that pool, so it goes
    refused(alloc, Request("ns/web", pool="b"), "PoolExhausted")
    assert alloc.assigned("ns/web") == () and "ns/web" not in alloc.services()
    assert alloc.owners("10.0.0.0") == frozenset()
    alloc.assign(Request("ns/web", pool="a"))
    refused(alloc, Request("ns/web", pool="gone"), "UnknownPool")
    assert alloc.assigned("ns/web") == ()


def test_failed_change_releases_a_shared_address_whose_ports_now_collide():
    alloc = Allocator([Pool.parse("p", ["10.0.0.0/32"])])
    alloc.assign(Request("ns/a", share_key="k", ports={TCP80}))
    alloc.assign(Request("ns/b", share_key="k", ports={TCP443}))
    refused(alloc, Request("ns/b", share_key="k", ports={TCP443, TCP80}), "PoolExhausted")
    assert alloc.owners("10.0.0.0") == {"ns/a"}
    assert alloc.assigned("ns/b") == ()


# --- pools changing ----------------------------------------------------------------------

def test_set_pools_keeps_holdings_and_reports_them_stale():
    alloc = Allocator([Pool.parse("a", ["10.0.0.0/30"]), Pool.parse("b", ["10.0.1.0/30"])])
    alloc.assign(Request("ns/x"))
    alloc.assign(Request("ns/y", pool="b"))
    alloc.set_pools([Pool.parse("b", ["10.0.1.0/30"])])
    assert alloc.assigned("ns/x") == ips("10.0.0.0") and alloc.stale() == {"ns/x"}
    assert alloc.usage() == {"b": (1, 4)}          # an address outside every pool is in none
    assert alloc.assign(Request("ns/x")) == ips("10.0.1.1")
    assert alloc.stale() == frozenset() and alloc.owners("10.0.0.0") == frozenset()


@pytest.mark.parametrize("new_pools, req", [
    # the selector stops matching
    ([Pool.parse("a", ["10.0.0.0/30"], selector=Selector((("team", "db"),)))],
     Request("ns/x", labels={"team": "web"})),
    # the named pool is gone
    ([Pool.parse("c", ["10.0.0.0/30"])], Request("ns/x", pool="a")),
    # the address starts being avoided
    ([Pool.parse("a", ["10.0.0.0/30"], avoid_buggy_ips=True)], Request("ns/x")),
])
def test_stale_after_pool_changes(new_pools, req):
    alloc = Allocator([Pool.parse("a", ["10.0.0.0/30"])])
    alloc.assign(req)
    assert alloc.stale() == frozenset()
    alloc.set_pools(new_pools)
    assert alloc.stale() == {"ns/x"} and alloc.assigned("ns/x") == ips("10.0.0.0")


def test_turning_auto_assign_off_leaves_holders_in_place():
    alloc = Allocator([Pool.parse("a", ["10.0.0.0/30"])])
    alloc.assign(Request("ns/x"))
    alloc.set_pools([Pool.parse("a", ["10.0.0.0/30"], auto_assign=False)])
    assert alloc.stale() == frozenset()
    assert alloc.assign(Request("ns/x")) == ips("10.0.0.0")
    refused(alloc, Request("ns/y"), "NoPool")


# --- restore, release, reading -----------------------------------------------------------

def test_restore_rebuilds_holdings_and_refuses_conflicts():
    alloc = Allocator(POOLS)
    alloc.restore(Request("ns/a", families=(6, 4), share_key="k", ports={TCP80}),
                  ["2001:db8::5", "10.0.0.5"])
    assert alloc.assigned("ns/a") == ips("2001:db8::5", "10.0.0.5")
    alloc.restore(Request("ns/b", share_key="k", ports={TCP443}), ["10.0.0.5"])
    assert alloc.owners("10.0.0.5") == {"ns/a", "ns/b"}
    with pytest.raises(AllocationError) as info:
        alloc.restore(Request("ns/c", families=(6, 4), share_key="k", ports={TCP443}),
                      ["2001:db8::6", "10.0.0.5"])
    assert info.value.reason == "AddressInUse" and "ns/c" in str(info.value)
    assert alloc.assigned("ns/c") == () and alloc.owners("2001:db8::6") == frozenset()
    with pytest.raises(AllocationError) as info:
        alloc.restore(Request("ns/c"), ["10.0.0.6", "10.0.0.7"])
    assert info.value.reason == "TooManyIPs"
    # automatic allocation does not hand out what was restored
    alloc.restore(Request("ns/d"), ["10.0.0.0"])
    assert alloc.assign(Request("ns/e")) == ips("10.0.0.1")
    refused(alloc, Request("ns/f", requested=("10.0.0.0",)), "AddressInUse")
    # restoring nothing releases
    alloc.restore(Request("ns/b"), [])
    assert alloc.owners("10.0.0.5") == {"ns/a"}


def test_restore_outside_every_pool_is_kept_and_stale():
    alloc = Allocator(POOLS)
    alloc.restore(Request("ns/a"), ["10.9.9.9"])
    assert alloc.assigned("ns/a") == ips("10.9.9.9") and alloc.stale() == {"ns/a"}
    assert alloc.assign(Request("ns/a")) == ips("10.0.0.0")


def test_release_and_readers():
    alloc = Allocator(POOLS)
    assert alloc.release("ns/unknown") == ()
    assert alloc.assigned("ns/unknown") == () and alloc.owners("10.0.0.1") == frozenset()
    got = alloc.assign(Request("ns/a", families=(4, 6)))
    assert alloc.services() == {"ns/a"}
    assert alloc.usage() == {"v4": (1, 16), "v6": (1, 2 ** 64)}
    assert alloc.release("ns/a") == got
    assert alloc.services() == frozenset()
    assert alloc.usage() == {"v4": (0, 16), "v6": (0, 2 ** 64)}
    assert [p.name for p in alloc.pools()] == ["v4", "v6"]


@pytest.mark.parametrize("kwargs", [
    {"service": ""}, {"service": "ns/a", "families": ()}, {"service": "ns/a", "families": (5,)},
    {"service": "ns/a", "families": (4, 4)},
])
def test_malformed_requests_are_caller_bugs(kwargs):
    with pytest.raises(ValueError):
        Request(**kwargs)


def test_request_normalises_its_fields():
    req = Request("ns/a", families=[6], ports=[("TCP", 80)], requested=["10.0.0.1"],
                  pool="", share_key="")
    assert req.families == (6,) and req.ports == frozenset({("tcp", 80)})
    assert req.requested == ("10.0.0.1",) and req.pool is None and req.share_key is None


# --- efficiency --------------------------------------------------------------------------

def test_a_slash_64_is_never_iterated():
    alloc = Allocator([Pool.parse("big", ["2001:db8:0:1::/64", "10.0.0.0/8"])])
    start = time.perf_counter()
    got = [alloc.assign(Request(f"ns/s{i}", families=(6, 4)))[0] for i in range(100)]
    elapsed = time.perf_counter() - start
    assert got == [ip("2001:db8:0:1::") + i for i in range(100)]
    assert elapsed < 0.25, elapsed
    assert alloc.usage() == {"big": (200, 2 ** 64 + 2 ** 24)}
    alloc.release("ns/s50")
    assert alloc.assign(Request("ns/new", families=(6,))) == (ip("2001:db8:0:1::") + 50,)
    # a nearly full range far into the /64 is found without walking up to it
    alloc.set_pools([Pool.parse("big", ["2001:db8:0:1::/64"]),
                     Pool.parse("a-end", ["2001:db8:0:1:ffff:ffff:ffff:fff0/124"])])
    start = time.perf_counter()
    assert alloc.assign(Request("ns/end", families=(6,), pool="a-end")) \
        == ips("2001:db8:0:1:ffff:ffff:ffff:fff0")
    assert time.perf_counter() - start < 0.05


def test_a_long_run_in_use_is_skipped_in_one_step():
    alloc = Allocator([Pool.parse("p", ["10.0.0.0/16"])])
    for i in range(2000):
        alloc.assign(Request(f"ns/s{i}"))
    start = time.perf_counter()
    for i in range(2000, 2200):
        alloc.assign(Request(f"ns/s{i}"))
    assert time.perf_counter() - start < 0.25
    assert alloc.assigned("ns/s2199") == (ip("10.0.0.0") + 2199,)


# --- random histories --------------------------------------------------------------------

V4 = [ip("10.0.0.250") + i for i in range(12)]            # crosses .255 and .0
V6 = [ip("fd00::") + i for i in range(8)]
UNIVERSE = V4 + V6
SERVICES = [f"ns/s{i}" for i in range(6)]
PORTS = [TCP80, TCP443, UDP53]
LABELS = [{}, {"team": "web"}, {"team": "db"}]


@st.composite
def span(draw, addresses):
    i = draw(st.integers(0, len(addresses) - 1))
    j = draw(st.integers(i, min(i + 4, len(addresses) - 1)))
    return addresses[i], addresses[j]


@st.composite
def pool_set(draw, min_size=1):
    names = draw(st.lists(st.sampled_from("abc"), min_size=min_size, max_size=3, unique=True))
    pools = []
    for name in names:
        ranges = draw(st.lists(span(V4), max_size=2)) + draw(st.lists(span(V6), max_size=2))
        if not ranges:
            ranges = [draw(span(V4))]
        selector = draw(st.sampled_from([None, None, Selector((("team", "web"),)),
                                         Selector.from_object({"matchExpressions": [
                                             {"key": "team", "operator": "NotIn",
                                              "values": ["web"]}]}, "test")]))
        pools.append(Pool(name, tuple(ranges),
                          auto_assign=draw(st.sampled_from([True, True, False])),
                          avoid_buggy_ips=draw(st.booleans()), selector=selector))
    return pools


addresses = st.sampled_from(UNIVERSE + [ip("10.9.9.9")])


@st.composite
def requests(draw):
    """Mostly requests that can succeed, so histories build up holdings and sharing; every
    refusal still comes up (a stranger's address, two IPv4 addresses, a missing pool...)."""
    families = draw(st.sampled_from([(4,), (4,), (6,), (4, 6), (6, 4)]))
    fitting = st.sampled_from([a for a in UNIVERSE if a.version in families])
    requested = draw(st.one_of(st.just(()), st.just(()), st.just(()), st.tuples(fitting),
                               st.tuples(fitting), st.tuples(addresses, addresses)))
    return Request(
        service=draw(st.sampled_from(SERVICES)),
        families=families,
        ports=draw(st.frozensets(st.sampled_from(PORTS), min_size=1, max_size=2)),
        requested=requested,
        pool=draw(st.sampled_from([None, None, None, None, "a", "b", "zz"])),
        share_key=draw(st.sampled_from([None, "k", "k", "k", "j"])),
        labels=draw(st.sampled_from(LABELS)),
    )


def oracle_range_owner(pools, addr):
    """The first pool by name with a range holding the address, found the slow obvious way."""
    for pool in sorted(pools, key=lambda p: p.name):
        if any(f.version == addr.version and f <= addr <= l for f, l in pool.ranges):
            return pool.name
    return None


def oracle_pool_of(pools, addr):
    name = oracle_range_owner(pools, addr)
    if name is not None and addr.version == 4 and int(addr) % 256 in (0, 255) \
            and {p.name: p for p in pools}[name].avoid_buggy_ips:
        return None
    return name


class Refused(Exception):
    """The oracle's refusal, carrying the Event reason it expects."""


def oracle_allowed(pools, req, strict=False):
    by_name = {p.name: p for p in pools}
    if req.pool is not None:
        pool = by_name.get(req.pool)
        if pool is None and strict:
            raise Refused("UnknownPool")
        if pool is not None and not pool.selects(req.labels):
            if strict:
                raise Refused("PoolNotSelected")
            return set()
        return {pool.name} if pool is not None else set()
    return {p.name for p in pools if p.selects(req.labels)}


def oracle_may_share(owners, requests, addr, req):
    for other in owners.get(addr, set()) - {req.service}:
        theirs = requests[other]
        if req.share_key is None or theirs.share_key != req.share_key \
                or theirs.ports & req.ports:
            return False
    return True


def oracle_assign(pools, owners, requests, before, req):
    """What assign should return, by brute force over every address of the (tiny) pools;
    Refused(reason) where it should refuse. ``owners`` and ``requests`` are the state
    before the call; requests[other] is each other holder's request."""
    wanted = {}
    for a in map(ipaddress.ip_address, req.requested):
        if wanted.setdefault(a.version, a) != a:
            raise Refused("TooManyIPs")
    if any(v not in req.families for v in wanted):
        raise Refused("FamilyMismatch")
    allowed = oracle_allowed(pools, req, strict=True)
    auto = sorted(p.name for p in pools if p.name in allowed
                  and (p.auto_assign or p.name == req.pool))
    old = {a.version: a for a in before}
    out = []
    for version in [f for f in req.families if f in wanted] if wanted else req.families:
        family = [a for a in UNIVERSE if a.version == version]
        if version in wanted:
            addr = wanted[version]
            if oracle_pool_of(pools, addr) not in allowed:
                raise Refused("NotInPool")
            if not oracle_may_share(owners, requests, addr, req):
                raise Refused("AddressInUse")
            out.append(addr)
            continue
        addr = old.get(version)
        if addr is not None and oracle_pool_of(pools, addr) in allowed \
                and oracle_may_share(owners, requests, addr, req):
            out.append(addr)
            continue
        candidates = [p for p in auto if any(oracle_range_owner(pools, a) == p for a in family)]
        if not candidates:
            raise Refused("NoPool")
        in_pools = [a for p in candidates for a in family if oracle_pool_of(pools, a) == p]
        shared = [a for a in in_pools if owners.get(a, set()) - {req.service}
                  and oracle_may_share(owners, requests, a, req)]
        free = [a for a in in_pools if not owners.get(a)]
        if req.share_key is not None and shared:
            out.append(shared[0])
        elif free:
            out.append(free[0])
        else:
            raise Refused("PoolExhausted")
    return tuple(out)


def oracle_keeps(pools, owners, requests, before, req):
    """After a refusal: whether the Service keeps ``before`` (else it holds nothing)."""
    allowed = oracle_allowed(pools, req)
    return all(a.version in req.families and oracle_pool_of(pools, a) in allowed
               and oracle_may_share(owners, requests, a, req) for a in before)


class AllocatorHistory(RuleBasedStateMachine):
    """Random Service histories against one allocator, with restarts from the holdings,
    each step checked against a brute-force oracle."""

    @initialize(pools=pool_set())
    def start(self, pools):
        self.pools = pools
        self.alloc = Allocator(pools)
        self.requests = {}                  # service -> its latest Request (creation order)

    def _owners(self):
        return {a: set(self.alloc.owners(a)) for a in UNIVERSE + [ip("10.9.9.9")]
                if self.alloc.owners(a)}

    @rule(req=requests())
    def create_or_update(self, req):
        self._assign(req)

    @rule(service=st.sampled_from(SERVICES),
          ports=st.frozensets(st.sampled_from(PORTS), min_size=1, max_size=2),
          share_key=st.sampled_from([None, "k", "k", "j"]),
          families=st.sampled_from([None, (4,), (4, 6)]))
    def change_ports_key_or_families(self, service, ports, share_key, families):
        """An update that keeps the rest of the Service's request: sharing and families
        change under existing holdings."""
        old = self.requests.get(service, Request(service))
        self._assign(dataclasses.replace(old, ports=ports, share_key=share_key,
                                         families=families or old.families))

    @rule(data=st.data())
    def request_an_address_in_use(self, data):
        """Ask for an address someone holds: sharing, or AddressInUse."""
        held = sorted({a for s in self.alloc.services() for a in self.alloc.assigned(s)},
                      key=lambda a: (a.version, int(a)))
        if not held:
            return
        addr = data.draw(st.sampled_from(held))
        service = data.draw(st.sampled_from(SERVICES))
        self._assign(Request(
            service, families=(addr.version,), requested=(addr,),
            ports=data.draw(st.frozensets(st.sampled_from(PORTS), min_size=1, max_size=2)),
            share_key=data.draw(st.sampled_from([None, "k", "k", "j"])),
            labels=self.requests[service].labels if service in self.requests else {}))

    def _assign(self, req):
        before = self.alloc.assigned(req.service)
        owners = self._owners()
        try:
            expected = oracle_assign(self.pools, owners, self.requests, before, req)
        except Refused as refusal:
            expected = refusal
        self.requests[req.service] = req         # an update keeps the creation position
        try:
            got = self.alloc.assign(req)
        except AllocationError as e:
            assert isinstance(expected, Refused), (expected, e)
            assert e.reason == expected.args[0], (e.reason, expected, str(e))
            assert req.service in str(e)
            keeps = oracle_keeps(self.pools, owners, self.requests, before, req)
            assert self.alloc.assigned(req.service) == (before if keeps else ()), str(e)
            # nobody else's holdings changed
            def others(holders):
                return {a: o - {req.service} for a, o in holders.items() if o - {req.service}}
            assert others(self._owners()) == others(owners)
            return
        assert not isinstance(expected, Refused), (expected, got)
        assert got == expected == self.alloc.assigned(req.service)
        assert self.alloc.assign(req) == got                            # idempotent
        assert all(oracle_pool_of(self.pools, a) in oracle_allowed(self.pools, req)
                   for a in got)

    @rule(service=st.sampled_from(SERVICES))
    def delete(self, service):
        held = self.alloc.assigned(service)
        assert self.alloc.release(service) == held
        self.requests.pop(service, None)
        assert self.alloc.assigned(service) == ()

    @rule(pools=pool_set(min_size=0))
    def set_pools(self, pools):
        before = {s: self.alloc.assigned(s) for s in SERVICES}
        self.pools = pools
        self.alloc.set_pools(pools)
        assert {s: self.alloc.assigned(s) for s in SERVICES} == before

    @rule(what=st.sampled_from(["restart", "restart", "delete everything"]))
    def restart_or_delete_everything(self, what):
        if what == "restart":
            self._restart()
        else:
            self._delete_everything()

    def _restart(self):
        """A new allocator restoring every Service's holdings, oldest Service first, as
        the controller does from Service statuses."""
        holdings = {s: self.alloc.assigned(s) for s in SERVICES}
        owners = {a: self.alloc.owners(a) for a in UNIVERSE}
        fresh = Allocator(self.pools)
        for service, req in self.requests.items():               # creation order
            fresh.restore(req, holdings[service])
        assert {s: fresh.assigned(s) for s in SERVICES} == holdings
        assert {a: fresh.owners(a) for a in UNIVERSE} == owners
        assert fresh.stale() == self.alloc.stale()
        assert fresh.usage() == self.alloc.usage()
        self.alloc = fresh

    def _delete_everything(self):
        for service in SERVICES:
            self.alloc.release(service)
        self.requests.clear()
        assert self.alloc.services() == frozenset()
        assert all(not self.alloc.owners(a) for a in UNIVERSE)
        assert all(used == 0 for used, _ in self.alloc.usage().values())

    @invariant()
    def no_double_allocation_outside_sharing(self):
        for addr in UNIVERSE + [ip("10.9.9.9")]:
            owners = sorted(self.alloc.owners(addr))
            for i, a in enumerate(owners):
                for b in owners[i + 1:]:
                    ra, rb = self.requests[a], self.requests[b]
                    assert ra.share_key is not None and ra.share_key == rb.share_key, addr
                    assert not ra.ports & rb.ports, addr

    @invariant()
    def every_holding_in_a_pool_or_stale(self):
        stale = set()
        for service in self.alloc.services():
            held = self.alloc.assigned(service)
            assert held and len({a.version for a in held}) == len(held)
            allowed = oracle_allowed(self.pools, self.requests[service])
            if any(oracle_pool_of(self.pools, a) not in allowed for a in held):
                stale.add(service)
            for a in held:
                assert service in self.alloc.owners(a)
        assert self.alloc.stale() == stale

    @invariant()
    def usage_counts_what_is_held(self):
        usage = self.alloc.usage()
        assert set(usage) == {p.name for p in self.pools}
        for pool in self.pools:
            held = {a for s in self.alloc.services() for a in self.alloc.assigned(s)
                    if oracle_pool_of(self.pools, a) == pool.name}
            size = sum(1 for a in UNIVERSE if oracle_pool_of(self.pools, a) == pool.name)
            assert usage[pool.name] == (len(held), size)


AllocatorHistory.TestCase.settings = settings(max_examples=100, stateful_step_count=30,
                                              deadline=None, derandomize=True, database=None)
test_allocator_history = AllocatorHistory.TestCase
