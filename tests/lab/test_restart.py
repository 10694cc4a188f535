"""The process that owns the datapath dies and comes back while clients keep connecting.

There is no daemon in the lab: tests/lab/owner.py stands in for it (adopt the pinned
datapath of lb1, apply a state, hold it). The datapath lives in the kernel: killing its
owner must not disturb a single connection, and the new owner must find the state in force
and change nothing."""

import threading
import time
from collections import defaultdict

from .helpers import DSR, Owner, ask, state

MAX_REQUESTS = 10000
MAX_SECONDS = 20.0      # the test stops the requester after ~1 s; these are backstops
PACE = 0.002            # at most one request per 2 ms, so the limits are not reached while
                        # a slow (loaded) machine starts the next owner
PHASE = 80              # successful requests before the kill, and again after the restart


class Requester(threading.Thread):
    """Requests through the VIP one after the other (every PACE at most), cycling over
    `sports`, until stopped, or MAX_REQUESTS, or MAX_SECONDS. Records (time, port,
    backend) and failures."""

    def __init__(self, lab, family, sports):
        super().__init__(daemon=True)
        self.lab, self.family, self.sports = lab, family, sports
        self.stop = threading.Event()
        self.done = []          # (monotonic time, port, backend)
        self.failed = []        # (monotonic time, port, error)

    def run(self):
        deadline = time.monotonic() + MAX_SECONDS
        for i in range(MAX_REQUESTS):
            if self.stop.is_set() or time.monotonic() > deadline:
                break
            sport = self.sports[i % len(self.sports)]
            started = time.monotonic()
            try:
                name, _ = ask(self.lab, self.family, sport)
                self.done.append((started, sport, name))
            except Exception as exc:     # noqa: BLE001 - every failure is the finding
                self.failed.append((started, sport, repr(exc)))
            time.sleep(max(0.0, started + PACE - time.monotonic()))

    def wait_for(self, count, since=0.0, timeout=5.0):
        """Until `count` requests started after `since` succeeded (bounded)."""
        deadline = time.monotonic() + timeout
        while sum(1 for t, _, _ in self.done if t > since) < count:
            assert self.is_alive(), f"the requester reached its limits first " \
                f"({len(self.done)} done, {len(self.failed)} failed)"
            assert time.monotonic() < deadline, f"requests stalled: {len(self.done)} " \
                f"done, failures {self.failed[:3]}"
            time.sleep(0.01)


@DSR
def test_killing_and_restarting_the_owner_loses_no_request(lab, ports, family, mode):
    """Owner #1 applies the VIP to lb1 (a real change: lb1 starts empty); a client thread
    requests through it without pause; owner #1 is killed with SIGKILL; owner #2 adopts
    the pinned datapath and re-applies the same state, which must be an empty plan. No
    request fails, requests went on while no process owned the datapath, and every flow
    (client port) stayed on one backend throughout."""
    lab.apply(state())
    desired = state(lab.vip(family, mode=mode))
    requester = Requester(lab, family, ports.take(100))
    with Owner(lab, "lb1", desired) as first:
        assert not first.report["plan_empty"], first.report
        requester.start()
        try:
            requester.wait_for(PHASE)
            killed_at = time.monotonic()
            first.kill()
            with Owner(lab, "lb1", desired) as second:
                assert second.report["plan_empty"], second.report["changes"]
                requester.wait_for(PHASE, since=second.ready_at)
        finally:
            requester.stop.set()
            requester.join(timeout=10)
    assert not requester.is_alive()

    assert requester.failed == [], f"{len(requester.failed)} of " \
        f"{len(requester.failed) + len(requester.done)} requests failed: {requester.failed[:5]}"
    ownerless = [t for t, _, _ in requester.done if killed_at < t < second.ready_at]
    assert ownerless, "no request was made while no process owned the datapath"
    backends = defaultdict(set)
    for _, sport, name in requester.done:
        backends[sport].add(name)
    assert all(len(names) == 1 for names in backends.values()), \
        {p: names for p, names in backends.items() if len(names) > 1}
    assert set().union(*backends.values()) == {"be1", "be2", "be3"}
