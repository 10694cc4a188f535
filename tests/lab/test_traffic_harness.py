"""tests/support/traffic.py, the traffic the upgrade tests judge an upgrade by: undisturbed,
it reports nothing wrong; when a backend resets its connections and refuses new ones, it
reports exactly those connections, and the opener's failed connects."""

import contextlib
import subprocess
import time

import pytest

from pyxlb.lab import BACKENDS, HTTP_PORT

from tests.support.traffic import Opener, Streams, Verdict, stalled

from .helpers import state

STREAMS = 200
QUIET = 3.0             # seconds of traffic with nothing happening
NFT_TABLE = "traffic_harness"


@contextlib.contextmanager
def refusing_new_connections(lab, node):
    """An nftables rule in `node`'s namespace answering every SYN to the HTTP port with a
    reset; removed afterwards, whatever happens."""
    rules = (f"table inet {NFT_TABLE} {{\n chain input {{\n"
             f"  type filter hook input priority 0;\n"
             f"  tcp dport {HTTP_PORT} tcp flags & (syn | ack) == syn reject with tcp reset\n"
             f" }}\n}}\n")
    nft(lab, node, "-f", "-", stdin=rules)
    try:
        yield
    finally:
        nft(lab, node, "delete", "table", "inet", NFT_TABLE)


def nft(lab, node, *args, stdin=None):
    done = subprocess.run(["nft", *args], input=stdin, text=True, capture_output=True,
                          preexec_fn=lab.preexec_in(node), timeout=10)
    assert done.returncode == 0, f"nft {' '.join(args)} in {node}: {done.stderr.strip()}"


def reset_connections(lab, node, sports):
    """`node`'s server side of the connections from client ports `sports` destroyed
    (ss -K: the kernel sends the client a reset); returns how many it destroyed."""
    done = subprocess.run(["ss", "-N", lab.ns(node), "-K", "-Htn", "state", "established",
                           f"( sport = :{HTTP_PORT} and dport >= :{min(sports)} "
                           f"and dport <= :{max(sports)} )"],
                          capture_output=True, text=True, check=True, timeout=10)
    return len(done.stdout.splitlines())


def test_undisturbed_traffic_is_judged_clean(lab, ports):
    """200 streams and an opener for QUIET seconds with nothing happening: every stream
    kept transferring and completed on its starting backend, the opener never failed."""
    lab.apply(state(lab.vip(4, mode="ipip")))
    with Streams(lab, 4, ports.take(STREAMS)) as streams, Opener(lab, 4) as opener:
        first = streams.acked()
        time.sleep(QUIET)
        later = streams.acked()
        opener.stop()
        results = streams.finish()
    verdict = Verdict.of(streams, opener)
    verdict.assert_clean()

    holders = streams.holders()
    assert set(holders.values()) == set(BACKENDS)
    assert {r.sport: r.backend for r in results} == holders
    assert all(r.received == streams.size and r.error is None for r in results)
    assert len(first) == STREAMS and not stalled(first, later), \
        f"streams that sent nothing in {QUIET} s: {stalled(first, later)}"
    assert streams.rounds >= QUIET / streams.interval / 2, streams.rounds
    report = opener.report
    assert report.successes == report.attempts >= QUIET / opener.pace / 3, report
    assert set(report.backends) == set(BACKENDS), report.backends


def test_a_backend_resetting_its_connections_is_reported(lab, ports):
    """be2 resets the streams it holds and refuses new connections: the verdict names
    exactly be2's streams as reset (the others keep transferring and complete), counts the
    client's resets and the opener's failed connects, and assert_clean fails saying so."""
    lab.apply(state(lab.vip(6, mode="l2")))
    with Streams(lab, 6, ports.take(STREAMS)) as streams, Opener(lab, 6) as opener:
        victims = sorted(p for p, be in streams.holders().items() if be == "be2")
        assert victims, streams.holders()
        time.sleep(0.5)
        with refusing_new_connections(lab, "be2"):
            before = streams.acked()
            assert reset_connections(lab, "be2", victims) == len(victims)
            time.sleep(1.0)
            opener.stop()
            after = streams.acked()
        streams.finish()
    verdict = Verdict.of(streams, opener)

    assert verdict.reset_ports() == victims
    assert sorted(verdict.errors) == victims
    assert not verdict.moved and not verdict.short
    assert stalled(before, after) == victims, "the others kept transferring"
    assert verdict.tcp["EstabResets"] == len(victims)
    report = opener.report
    assert report.failed_connects >= 1 and report.failures == report.failed_connects, report
    assert verdict.tcp["AttemptFails"] == report.failed_connects
    with pytest.raises(AssertionError) as caught:
        verdict.assert_clean()
    message = str(caught.value)
    assert f"{len(victims)} of {STREAMS} streams failed (reset: {len(victims)})" in message
    assert f"{report.failed_connects} failed connects" in message
    assert f"EstabResets +{len(victims)}" in message
