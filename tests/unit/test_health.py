"""Health checks as state: HealthSpec, a VIP's and a backend's specs, verdicts (down), the
refusals, the plain-data form, and what the planner writes for them. No kernel."""

import re

import pytest

from pyxlb import _layouts as L
from pyxlb import config
from pyxlb.plan import Layout, make_plan, rebuild_state
from pyxlb.state import (HEALTH_PATH_MAX, Backend, DesiredState, HealthSpec, StateError, Vip,
                         VipKey, carry_verdicts, vip_from_dict, vip_to_dict)

K80 = VipKey.parse("192.0.2.10:80/tcp")
K0 = VipKey.parse("192.0.2.10:0/tcp")
K6 = VipKey.parse("[2001:db8::10]:80/tcp")
HTTP = HealthSpec(type="http", path="/healthz", expect="200-299")


def vip(key=K80, *backends, **kw):
    return Vip(key, backends=tuple(b if isinstance(b, Backend) else Backend(b)
                                   for b in backends), **kw)


# -- HealthSpec ------------------------------------------------------------------------------

def test_defaults_and_helpers():
    h = HealthSpec()
    assert (h.type, h.port, h.path, h.expect, h.interval, h.timeout, h.rise, h.fall, h.via,
            h.on_fail) == ("tcp", None, "/", "200-399", 2.0, 1.0, 2, 3, "tunnel", "drain")
    assert h.checked and not HealthSpec(type="none").checked
    assert h.port_for(K80) == 80 and HealthSpec(port=8080).port_for(K80) == 8080
    assert HealthSpec(expect=204).expect == "204"        # YAML reads 204 as a number
    assert HealthSpec(expect="204-204").expect == "204"
    assert HealthSpec(expect="200-299").expect_range == (200, 299)
    # durations are kept to the millisecond, as the map keeps them
    assert HealthSpec(interval=0.12345, timeout=0.1).interval == 0.123


@pytest.mark.parametrize("fields,match", [
    ({"type": "udp"}, "type must be one of tcp, http, none"),
    ({"port": 0}, "port must be an integer 1-65535"),
    ({"port": 65536}, "port must be"),
    ({"port": True}, "port must be"),
    ({"path": "healthz"}, "must start with '/'"),
    ({"path": "/a b"}, "printable ASCII"),
    ({"path": "/é"}, "printable ASCII"),
    ({"path": "/" * (HEALTH_PATH_MAX + 1)}, f"at most {HEALTH_PATH_MAX}"),
    ({"expect": "2xx"}, "expect must be an HTTP status"),
    ({"expect": "99"}, "expect must be"),
    ({"expect": "600"}, "expect must be"),
    ({"expect": "300-200"}, "expect must be"),
    ({"interval": 0.05}, "outside 0.1-3600"),
    ({"interval": 3601}, "outside 0.1-3600"),
    ({"interval": "2"}, "number of seconds"),
    ({"interval": float("nan")}, "number of seconds"),
    ({"timeout": 0}, "more than 0 and at most the interval"),
    ({"timeout": 3, "interval": 2}, "at most the interval"),
    ({"rise": 0}, "rise must be an integer 1-100"),
    ({"fall": 101}, "fall must be an integer 1-100"),
    ({"fall": 2.0}, "fall must be"),
    ({"via": "tunnel6"}, "via must be one of tunnel, direct"),
    ({"on_fail": "drop"}, "on_fail must be one of drain, gone"),
])
def test_bad_specs_are_one_line(fields, match):
    with pytest.raises(StateError, match=match) as exc:
        HealthSpec(**fields)
    assert "\n" not in str(exc.value)


def test_to_dict_and_from_dict():
    assert HealthSpec().to_dict() == {"type": "tcp"}
    assert HTTP.to_dict() == {"type": "http", "path": "/healthz", "expect": "200-299"}
    assert HealthSpec.from_dict(HTTP.to_dict()) == HTTP
    # a backend's override is what differs from its VIP's, merged back onto it
    own = HealthSpec(type="http", path="/healthz", expect="200-299", port=8080, via="direct")
    assert own.to_dict(HTTP) == {"port": 8080, "via": "direct"}
    assert HealthSpec.from_dict({"port": 8080, "via": "direct"}, HTTP) == own
    with pytest.raises(StateError, match="unknown field 'intervall'"):
        HealthSpec.from_dict({"intervall": 2})


# -- specs on VIPs and backends -------------------------------------------------------------

def test_health_for_overrides_and_canonical_forms():
    own = HealthSpec(type="tcp", port=22, via="direct")
    v = vip(K80, "10.0.0.1", Backend("10.0.0.2", health=own),
            Backend("10.0.0.3", health=HealthSpec(type="none")),
            Backend("10.0.0.4", health=HTTP), health=HTTP)
    b1, b2, b3, b4 = v.backends
    assert v.health_for(b1) == HTTP and v.health_for(b2) == own
    assert v.health_for(b3) is None          # excluded from checks by its override
    assert b4.health is None                 # an override equal to the VIP's is none
    assert vip(K80, "10.0.0.1").health_for(vip(K80, "10.0.0.1").backends[0]) is None


def test_down_takes_a_checked_backend_out_of_the_ring_and_is_false_when_unchecked():
    v = vip(K80, Backend("10.0.0.1", down=True), Backend("10.0.0.2"),
            Backend("10.0.0.3", down=True, health=HealthSpec(type="none")), health=HTTP)
    assert [b.down for b in v.backends] == [True, False, False]
    assert v.ring_members() == (("10.0.0.2", 1), ("10.0.0.3", 1))
    # no checks at all: a verdict means nothing
    assert not vip(K80, Backend("10.0.0.1", down=True)).backends[0].down
    with pytest.raises(StateError, match="down must be true or false"):
        Backend("10.0.0.1", down=1)


def test_keeps_flows_only_drain():
    gone = HealthSpec(on_fail="gone")
    v = vip(K80, Backend("10.0.0.1", down=True), Backend("10.0.0.2", down=True, health=gone),
            Backend("10.0.0.3", health=gone), health=HealthSpec())
    assert [v.keeps_flows(b) for b in v.backends] == [True, False, True]


@pytest.mark.parametrize("make,match", [
    (lambda: vip(K0, "10.0.0.1", health=HealthSpec()), "port-0 VIP need a port"),
    (lambda: vip(K0, Backend("10.0.0.1", health=HealthSpec())), "port-0 VIP need a port"),
    (lambda: vip(K80, health=HealthSpec(port=81)), "to its port 80, not 81"),
    (lambda: vip(K80, "2001:db8::1", health=HealthSpec()),
     "IPv4 VIP to an IPv6 backend: check it with via: direct"),
    (lambda: vip(K80, mode="local", health=HealthSpec()), "local-mode VIP"),
])
def test_refusals(make, match):
    with pytest.raises(StateError, match=match) as exc:
        make()
    assert "\n" not in str(exc.value)


def test_what_is_allowed():
    assert vip(K0, "10.0.0.1", health=HealthSpec(port=8080)).health.port == 8080
    assert vip(K80, health=HealthSpec(port=80)).health.port == 80
    assert vip(K80, health=HealthSpec(port=81, via="direct"))
    assert vip(K80, "2001:db8::1", health=HealthSpec(via="direct"))
    # a backend excluded from checks needs none of the checks' conditions
    assert vip(K80, Backend("2001:db8::1", health=HealthSpec(type="none")),
               health=HealthSpec())
    assert vip(K6, "2001:db8::1", health=HealthSpec())
    assert vip(K80, mode="local", health=HealthSpec(type="none"))


# -- the file format ------------------------------------------------------------------------

FILE = """
vips:
- vip: 192.0.2.10:80/tcp
  health: {type: http, path: /healthz, expect: 200, interval: 0.5, timeout: 0.25}
  backends:
  - 10.0.0.1
  - address: 10.0.0.2
    health: {port: 8080, via: direct, on_fail: gone}
  - address: 10.0.0.3
    health: {type: none}
- vip: 192.0.2.11:0/udp
  backends:
  - address: 10.0.0.4
    health: {type: tcp, port: 53, via: direct}
"""


def test_a_file_with_health_checks_and_its_round_trip():
    state = config.load_text(FILE)
    web, dns = state.vips
    assert web.health == HealthSpec(type="http", path="/healthz", expect="200", interval=0.5,
                                    timeout=0.25)
    b1, b2, b3 = web.backends
    assert b1.health is None
    assert b2.health == HealthSpec(type="http", path="/healthz", expect="200", interval=0.5,
                                   timeout=0.25, port=8080, via="direct", on_fail="gone")
    assert web.health_for(b3) is None
    assert dns.health is None and dns.health_for(dns.backends[0]).port == 53
    assert config.load_text(config.dump(state)) == state
    assert DesiredState.from_dict(state.to_dict()) == state
    data = vip_to_dict(web)
    assert data["health"] == {"type": "http", "path": "/healthz", "expect": "200",
                              "interval": 0.5, "timeout": 0.25}
    assert data["backends"][1]["health"] == {"port": 8080, "via": "direct", "on_fail": "gone"}
    assert "down" not in str(data)


def test_down_is_not_in_the_file_format():
    v = vip(K80, Backend("10.0.0.1", down=True), health=HealthSpec())
    assert v.backends[0].down and "down" not in vip_to_dict(v)["backends"][0]
    assert not vip_from_dict(vip_to_dict(v)).backends[0].down
    with pytest.raises(config.ConfigError, match="down"):
        config.load_text("vips: [{vip: 192.0.2.10:80/tcp, backends: "
                         "[{address: 10.0.0.1, down: true}]}]")


@pytest.mark.parametrize("text,match", [
    ("{vip: 192.0.2.10:80/tcp, health: {type: tcp, port: 81}}", "to its port 80, not 81"),
    ("{vip: 192.0.2.10:0/tcp, health: {type: tcp}}", "port-0 VIP need a port"),
    ("{vip: 192.0.2.10:80/tcp, health: {type: tcp}, backends: ['2001:db8::1']}",
     "via: direct"),
    ("{vip: 192.0.2.10:80/tcp, backends: [{address: 10.0.0.1, health: {port: 80}}]}",
     "the backend's must say its type"),
    ("{vip: 192.0.2.10:80/tcp, mode: local, health: {type: http}}", "local-mode"),
    ("{vip: 192.0.2.10:80/tcp, health: {type: http, timeout: 5}}", "at most the interval"),
    ("{vip: 192.0.2.10:80/tcp, health: {type: http, expect: 2xx}}", "expect must be"),
    ("{vip: 192.0.2.10:80/tcp, health: {type: http, path: /a b}}", "printable ASCII"),
    ("{vip: 192.0.2.10:80/tcp, health: {type: htp}}", "vips[0].health.type"),
    ("{vip: 192.0.2.10:80/tcp, health: {type: tcp, rise: 0}}", "vips[0].health.rise"),
    ("{vip: 192.0.2.10:80/tcp, health: {type: tcp, interval: 0.01}}",
     "vips[0].health.interval"),
    ("{vip: 192.0.2.10:80/tcp, health: {type: tcp, every: 2}}", "every"),
    ("{vip: 192.0.2.10:80/tcp, health: tcp}", "vips[0].health"),
])
def test_file_refusals_are_one_line_with_a_position(text, match):
    with pytest.raises(config.ConfigError, match=re.escape(match)) as exc:
        config.load_text(f"vips:\n- {text}\n", "lb.yaml")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("lb.yaml: line ")


# -- verdicts ------------------------------------------------------------------------------

def test_carry_verdicts_keeps_the_maps_verdicts():
    old = DesiredState((vip(K80, Backend("10.0.0.1", down=True), Backend("10.0.0.2", down=True),
                            Backend("10.0.0.3"), health=HealthSpec()),))
    # a state from a file says nothing of verdicts
    new = DesiredState((vip(K80, "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4",
                            health=HealthSpec(port=80)),))
    got = carry_verdicts(old, new)
    assert [b.down for b in got.vips[0].backends] == [True, True, False, False]
    # a state that says down where the maps do not: not down
    claims = DesiredState((vip(K80, Backend("10.0.0.3", down=True), health=HealthSpec()),))
    assert not carry_verdicts(old, claims).vips[0].backends[0].down
    # checks turned off then on again: the old verdict is gone
    off = carry_verdicts(old, DesiredState((vip(K80, "10.0.0.1"),)))
    assert not off.vips[0].backends[0].down
    assert not carry_verdicts(off, DesiredState((vip(K80, "10.0.0.1", health=HealthSpec()),))
                              ).vips[0].backends[0].down
    # nothing to carry: the very same state
    plain = DesiredState((vip(K80, "10.0.0.1"),))
    assert carry_verdicts(old, plain) is plain


def test_with_verdicts_sets_down():
    state = DesiredState((vip(K80, "10.0.0.1", "10.0.0.2", health=HealthSpec()),
                          vip(K6, "2001:db8::1")))
    got = state.with_verdicts({(K80, "10.0.0.2"): True, (K6, "2001:db8::1"): True,
                               (K80, "10.9.9.9"): True})
    assert [b.down for b in got.vips[0].backends] == [False, True]
    assert not got.vips[1].backends[0].down        # unchecked: no effect
    assert got.vips[1] is state.vips[1]


# -- what the planner writes -----------------------------------------------------------------

def test_plan_writes_specs_and_verdicts_and_nothing_twice():
    own = HealthSpec(port=8080, via="direct")
    state = DesiredState((vip(K80, "10.0.0.1", Backend("10.0.0.2", health=own),
                              health=HealthSpec()),
                          vip(VipKey.parse("192.0.2.11:80/tcp"), "10.0.0.1")))
    plan = make_plan(Layout(), state)
    vid = plan.new.vip_ids[K80]
    b1, b2 = (plan.new.backend_ids[b.address] for b in state.vips[0].backends)
    assert plan.spec_writes == {(vid, L.HEALTH_VIP): HealthSpec(), (vid, b2): own}
    assert plan.member_writes[(vid, b1)] == (1, L.BACKEND_ACTIVE, L.HEALTH_UP)
    other = plan.new.vip_ids[state.vips[1].key]
    assert plan.member_writes[(other, b1)] == (1, L.BACKEND_ACTIVE, L.HEALTH_UNCHECKED)
    assert make_plan(plan.new, state).empty

    # a verdict: the member's byte and the ring, nothing else of the VIP
    down = state.with_verdicts({(K80, "10.0.0.1"): True})
    p2 = make_plan(plan.new, down)
    assert p2.member_writes == {(vid, b1): (1, L.BACKEND_ACTIVE, L.HEALTH_DOWN)}
    assert not p2.spec_writes and not p2.spec_deletes and len(p2.ring_writes) == 1
    assert make_plan(p2.new, down).empty

    # the spec changes: only that entry; the override goes: its entry goes
    changed = DesiredState((vip(K80, "10.0.0.1", "10.0.0.2", health=HealthSpec(rise=5)),
                            state.vips[1]))
    p3 = make_plan(plan.new, changed)
    assert p3.spec_writes == {(vid, L.HEALTH_VIP): HealthSpec(rise=5)}
    assert p3.spec_deletes == {(vid, b2)}
    # the VIP goes: every entry goes
    p4 = make_plan(plan.new, DesiredState((state.vips[1],)))
    assert p4.spec_deletes == {(vid, L.HEALTH_VIP), (vid, b2)} and not p4.spec_writes


def test_rebuild_reads_specs_and_verdicts_back_and_drops_strays():
    own = HealthSpec(type="http", path="/x", port=8080, via="direct")
    state = DesiredState((vip(K80, Backend("10.0.0.1", down=True), Backend("10.0.0.2",
                                                                           health=own),
                              health=HealthSpec(on_fail="gone")),))
    plan = make_plan(Layout(), state)
    specs = dict(plan.spec_writes)
    specs[(7, L.HEALTH_VIP)] = HealthSpec()      # of no VIP: a killed apply's stray
    layout = rebuild_state(plan.vip_writes, dict(plan.member_writes), plan.backend_writes,
                           specs=specs)
    assert layout.state == state and layout.state.vips[0].backends[0].down
    assert layout.stray_specs == {(7, L.HEALTH_VIP)}
    again = make_plan(layout, state)
    assert again.spec_deletes == {(7, L.HEALTH_VIP)} and not again.spec_writes
    assert not again.member_writes and not again.ring_writes


def test_too_many_specs_is_refused_before_any_write():
    from pyxlb.plan import Limits
    state = DesiredState((vip(K80, "10.0.0.1", Backend("10.0.0.2", health=HealthSpec(rise=3)),
                              health=HealthSpec()),))
    with pytest.raises(StateError, match="health specs .* do not fit their map"):
        make_plan(Layout(), state, Limits(health_specs=1))


def test_plan_describes_health_changes():
    before = DesiredState((vip(K80, "10.0.0.1", Backend("10.0.0.2", health=HealthSpec(port=80)),
                               health=HealthSpec(type="http")),))
    after = DesiredState((vip(K80, Backend("10.0.0.1", down=True), "10.0.0.2",
                              health=HealthSpec(type="http", fall=5)),))
    lines = make_plan(make_plan(Layout(), before).new, after).describe()
    assert lines[:3] == ["~ vip 192.0.2.10:80/tcp", "    health: fall 3 -> 5",
                         "    ~ backend 10.0.0.1: down False -> True, health fall 3 -> 5"]
    # 10.0.0.2's own spec (tcp on port 80) goes: it takes the VIP's
    assert lines[3] == "    ~ backend 10.0.0.2: health type tcp -> http, port 80 -> None, " \
        "fall 3 -> 5"
    assert "1 health specs written, 1 removed" in lines[-1]
    off = make_plan(make_plan(Layout(), before).new, DesiredState((vip(K80, "10.0.0.1"),)))
    assert off.describe()[1] == "    health: type=http -> none"
