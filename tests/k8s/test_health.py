"""healthCheckNodePort probes: real HTTP servers on loopback answering /healthz."""

from __future__ import annotations

import threading

import pytest

from pyxlb.k8s.health import Prober, probe


def test_probe_reads_the_status_code(healthz):
    h = healthz()
    assert probe("127.0.0.1", h.port, 1.0)
    h.status = 503
    assert not probe("127.0.0.1", h.port, 1.0)


def test_probe_of_a_closed_port_fails(healthz):
    h = healthz()
    port = h.port
    h.close()
    assert not probe("127.0.0.1", port, 0.5)


def test_damping_needs_fall_failures_to_go_down_and_rise_successes_to_come_back(healthz):
    h = healthz()
    flips = []
    p = Prober(lambda t, ok: flips.append(ok), interval=60, timeout=1.0, rise=2, fall=3)
    try:
        p.set_targets({h.target})
        p.run_once()
        assert p.healthy(h.target) and flips == []
        h.status = 503
        p.run_once()
        p.run_once()
        assert p.healthy(h.target), "two failures are not enough with fall=3"
        h.status = 200          # a blip: the failure streak starts over
        p.run_once()
        h.status = 503
        p.run_once()
        p.run_once()
        assert p.healthy(h.target)
        p.run_once()
        assert not p.healthy(h.target) and flips == [False]
        assert p.unhealthy() == {h.target}
        h.status = 200
        p.run_once()
        assert not p.healthy(h.target), "one success is not enough with rise=2"
        p.run_once()
        assert p.healthy(h.target) and flips == [False, True]
    finally:
        p.stop()


def test_targets_dropped_forget_their_state(healthz):
    a, b = healthz(), healthz()
    a.status = 503
    p = Prober(lambda t, ok: None, interval=60, timeout=1.0, rise=1, fall=1)
    try:
        p.set_targets({a.target, b.target})
        p.run_once()
        assert p.unhealthy() == {a.target}
        p.set_targets({b.target})
        assert p.unhealthy() == set()
        assert p.healthy(a.target)       # unknown again: healthy until probed
    finally:
        p.stop()


def test_the_thread_probes_new_targets_at_once(healthz):
    h = healthz()
    h.status = 500
    down = threading.Event()
    p = Prober(lambda t, ok: down.set() if not ok else None, interval=60, timeout=1.0,
               rise=1, fall=1).start()
    try:
        p.set_targets({h.target})
        assert down.wait(5), "a new target is probed without waiting an interval"
    finally:
        p.stop()


def test_bad_settings_are_refused():
    with pytest.raises(ValueError):
        Prober(lambda t, ok: None, interval=0)
    with pytest.raises(ValueError):
        Prober(lambda t, ok: None, fall=0)
