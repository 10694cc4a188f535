"""The health checker's pure parts: expected statuses, status lines, the up/down state
machine (rise, fall, the starting verdict, batching), and targets following the state.
No check is sent: results are recorded by hand (the lab tests send real ones)."""

import logging

import pytest

from pyxlb.health.checker import Checker, ExpectError, changed_state, judge, parse_expect
from pyxlb.state import Backend, DesiredState, HealthSpec, Vip, VipKey

SPEC = HealthSpec(type="tcp", via="direct", interval=1.0, timeout=0.5, rise=2, fall=3)
KEY = VipKey.parse("192.0.2.10:80/tcp")


def state(*backends, spec=SPEC, key=KEY):
    return DesiredState((Vip(key, backends=tuple(backends), health=spec),))


@pytest.fixture
def checker():
    changes = []
    c = Checker(on_change=changes.extend, slot=0)
    c.changes = changes
    yield c
    c.close()


def target(c, address):
    return next(t for t in c.targets.values() if str(t.key[1]) == address)


@pytest.mark.parametrize("text,ranges", [("200-399", ((200, 399),)), ("200", ((200, 200),)),
                                         ("200,204, 300-308", ((200, 200), (204, 204),
                                                               (300, 308)))])
def test_expect_ranges(text, ranges):
    assert parse_expect(text) == ranges


@pytest.mark.parametrize("text", ["", "2xx", "399-200", "99", "200-600", "200,"])
def test_expect_refused(text):
    with pytest.raises(ExpectError):
        parse_expect(text)


@pytest.mark.parametrize("line,verdict", [
    (b"HTTP/1.0 200 OK", (True, None)),
    (b"HTTP/1.1 302 Found", (True, None)),
    (b"HTTP/1.1 503 Service Unavailable", (False, "HTTP 503")),
    (b"HTTP/1.1 200", (True, None)),
    (b"SSH-2.0-OpenSSH_9.2", (False, "not an HTTP status line: b'SSH-2.0-OpenSSH_9.2'")),
    (b"HTTP/1.1 abc", (False, "not an HTTP status line: b'HTTP/1.1 abc'")),
])
def test_status_lines(line, verdict):
    assert judge(line, parse_expect("200-399")) == verdict


def test_fall_failures_in_a_row_put_a_backend_down_and_rise_passes_bring_it_back(checker, caplog):
    checker.update(state(Backend("10.0.0.1"), Backend("10.0.0.2")))
    t = target(checker, "10.0.0.1")
    assert t.up
    for ok in (False, False, True, False, False):     # a pass in between starts over
        checker.record(t, ok, None if ok else "connection refused", 0.001)
    assert t.up and not checker._changes
    with caplog.at_level(logging.WARNING, logger="pyxlb.health"):
        checker.record(t, False, "connection refused", 0.001)
    assert not t.up and t.transitions == {"up": 0, "down": 1}
    assert [m for m in caplog.messages if "->" in m] == [
        "health: VIP 192.0.2.10:80/tcp backend 10.0.0.1: up -> down (tcp check direct: "
        "3 failures: connection refused)"]
    checker.record(t, False, "connection refused", 0.001)       # down stays down: no line
    checker.record(t, True, None, 0.001)
    assert not t.up
    checker.record(t, True, None, 0.001)
    assert t.up and t.transitions == {"up": 1, "down": 1}
    assert [(c.key, c.up) for c in checker._changes] == [((KEY, t.key[1]), False),
                                                        ((KEY, t.key[1]), True)]


def test_changes_of_one_turn_are_handed_over_together(checker):
    checker.update(state(*(Backend(f"10.0.0.{i}") for i in range(1, 4))))
    for t in list(checker.targets.values())[:2]:
        for _ in range(3):
            checker.record(t, False, "timed out", 0.5)
    checker.turn(max_wait=0)
    assert len(checker.changes) == 2 and not checker._changes
    new = changed_state(state(*(Backend(f"10.0.0.{i}") for i in range(1, 4))),
                        checker.changes)
    assert [b.down for b in new.vips[0].backends] == [True, True, False]
    assert [b.in_ring for b in new.vips[0].backends] == [False, False, True]
    assert changed_state(new, checker.changes) is None      # nothing left to change


def test_targets_start_from_the_verdicts_the_datapath_holds(checker):
    checker.update(state(Backend("10.0.0.1", down=True), Backend("10.0.0.2")))
    assert not target(checker, "10.0.0.1").up
    assert target(checker, "10.0.0.2").up
    assert checker.status()[0]["verdict"] == "down"


def test_targets_follow_the_state(checker):
    s = state(Backend("10.0.0.1"), Backend("10.0.0.2"))
    assert checker.update(s) == (2, 0)
    t = target(checker, "10.0.0.1")
    for _ in range(3):
        checker.record(t, False, "refused", 0.0)
    # new settings keep the verdict and the counts; a backend that went is dropped
    slower = HealthSpec(type="http", via="direct", interval=5.0, path="/ready")
    assert checker.update(state(Backend("10.0.0.1"), spec=slower)) == (0, 1)
    t2 = target(checker, "10.0.0.1")
    assert t2 is t and not t.up and t.checks == 3 and t.spec == slower
    assert t.request.startswith(b"GET /ready HTTP/1.0\r\nHost: 192.0.2.10\r\n")
    # a backend whose own spec says none is not checked; a VIP without one neither
    none = HealthSpec(type="none")
    assert checker.update(state(Backend("10.0.0.1", health=none), Backend("10.0.0.3"))) \
        == (1, 1)
    assert checker.update(DesiredState((Vip(KEY, backends=(Backend("10.0.0.3"),)),))) \
        == (0, 1)
    assert checker.targets == {}


def test_a_removed_target_records_nothing(checker):
    checker.update(state(Backend("10.0.0.1")))
    t = target(checker, "10.0.0.1")
    checker.update(state())
    for _ in range(3):
        checker.record(t, False, "refused", 0.0)
    assert t.checks == 0 and not checker._changes


def test_http_host_names_the_vip_and_its_port():
    c = Checker(slot=0)
    try:
        v6 = VipKey.parse("[2001:db8::10]:8443/tcp")
        c.update(state(Backend("2001:db8::1"), key=v6,
                       spec=HealthSpec(type="http", via="direct")))
        t = next(iter(c.targets.values()))
        assert b"\r\nHost: [2001:db8::10]:8443\r\n" in t.request
        assert (t.addr, t.port, t.via) == ("2001:db8::1", 8443, "direct")
    finally:
        c.close()
