"""Scenario logic shared by the namespace lab (tests/lab/test_k8s.py) and the Vagrant lab
(vagrant/scenarios/*.sh): what share of connections each node should get, what it got, and a
table of both with OK/FAIL.

Standard library only (and `pyxlb.lab.http`, itself standard library only), so the client VM
runs it straight from the synced checkout without building pyxlb:

    python3 -m pyxlb.lab.scenarios measure --vip 10.77.100.0 --pods node1=2,node2=1,node3=0 \\
        --policy Local --client 10.77.1.2
    python3 -m pyxlb.lab.scenarios serve --name web-1@node1 --port 8080  # in the echo pods
    python3 -m pyxlb.lab.scenarios router-config --router-id 10.77.2.1 --asn 64512 \\
        --node 10.77.2.31=64513 ...                                  # the router's BIRD

A share is a fraction of all connections. A row passes when its actual share is within the
tolerance of the expected one, except that a row expected to get nothing must get exactly
nothing: a node without pods that receives one connection under `Local` is a bug, not noise.
"""

from __future__ import annotations

import argparse
import http.client
import ipaddress
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ..errors import PyxlbError
from ..numbers import int_in

DEFAULT_TOLERANCE = 0.10
POLICIES = ("Local", "Cluster")


class ScenarioError(PyxlbError):
    """Bad input to a scenario: counts, shares, tolerances or addresses that make no sense."""


@dataclass(frozen=True)
class Row:
    """One name (a node, usually) with its expected and observed share of connections."""

    name: str
    expected: float
    hits: int
    actual: float
    ok: bool


@dataclass(frozen=True)
class Comparison:
    """Expected against actual for every name, and whether all of them agree."""

    title: str
    rows: Tuple[Row, ...]
    total: int
    tolerance: float

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    @property
    def failed(self) -> List[str]:
        return [r.name for r in self.rows if not r.ok]

    def table(self) -> str:
        """A fixed-width table a person reads beside the scenario's output."""
        width = max([len("name")] + [len(r.name) for r in self.rows])
        lines = [f"{self.title}: {self.total} connections, tolerance "
                 f"±{self.tolerance * 100:.0f} points (0 expected means exactly 0)",
                 f"  {'name':<{width}}  {'expected':>8}  {'actual':>8}  {'hits':>6}  result"]
        for r in self.rows:
            lines.append(f"  {r.name:<{width}}  {r.expected * 100:7.1f}%  {r.actual * 100:7.1f}%"
                         f"  {r.hits:>6}  {'OK' if r.ok else 'FAIL'}")
        lines.append(f"  => {'OK' if self.ok else 'FAIL (' + ', '.join(self.failed) + ')'}")
        return "\n".join(lines)


def _check_counts(counts: Mapping[str, int], what: str) -> None:
    for name, n in counts.items():
        if not int_in(n, 0):
            raise ScenarioError(f"{what} of {name!r} is {n!r}: it must be a whole number >= 0")


def pod_shares(pods: Mapping[str, int]) -> Dict[str, float]:
    """externalTrafficPolicy Local: each node's share is its ready pods over all ready pods,
    so every pod gets the same share (a node with no pods gets nothing)."""
    _check_counts(pods, "pod count")
    total = sum(pods.values())
    if total == 0:
        raise ScenarioError(f"no node holds a pod ({dict(pods)}): there is nothing to expect")
    return {name: n / total for name, n in pods.items()}


def even_shares(names: Iterable[str]) -> Dict[str, float]:
    """externalTrafficPolicy Cluster, as seen at the nodes' entry: every eligible node gets
    the same share, whatever pods it holds."""
    names = list(names)
    if not names:
        raise ScenarioError("no eligible node: there is nothing to expect")
    if len(set(names)) != len(names):
        raise ScenarioError(f"a node is named twice in {names}")
    return {name: 1 / len(names) for name in names}


def compare(expected: Mapping[str, float], hits: Mapping[str, int], *,
            tolerance: float = DEFAULT_TOLERANCE, title: str = "share per node") -> Comparison:
    """Expected shares against observed hits. A name that got hits but was not expected is a
    row expected at 0 (so it fails); a row expected at 0 passes only with no hits."""
    if not 0 < tolerance < 1:
        raise ScenarioError(f"tolerance {tolerance!r} must be between 0 and 1 (a share)")
    _check_counts(hits, "hit count")
    for name, share in expected.items():
        if not 0 <= share <= 1:
            raise ScenarioError(f"expected share of {name!r} is {share!r}: it must be in 0..1")
    if abs(sum(expected.values()) - 1) > 1e-9:
        raise ScenarioError(f"expected shares {dict(expected)} add up to "
                            f"{sum(expected.values()):.3f}, not 1")
    total = sum(hits.values())
    if total == 0:
        raise ScenarioError("no connection was counted: nothing to compare")
    names = list(expected) + sorted(n for n in hits if n not in expected)
    rows = []
    for name in names:
        want = expected.get(name, 0.0)
        got = hits.get(name, 0)
        actual = got / total
        ok = got == 0 if want == 0 else abs(actual - want) <= tolerance
        rows.append(Row(name, want, got, actual, ok))
    return Comparison(title, tuple(rows), total, tolerance)


def parse_counts(text: str) -> Dict[str, int]:
    """`node1=2,node2=1,node3=0` -> {"node1": 2, "node2": 1, "node3": 0} (order kept)."""
    out: Dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name or not value.strip().isdigit():
            raise ScenarioError(f"{part!r} in {text!r}: expected NAME=COUNT, COUNT a whole number")
        if name in out:
            raise ScenarioError(f"{name!r} appears twice in {text!r}")
        out[name] = int(value)
    if not out:
        raise ScenarioError(f"{text!r} names no node: expected NAME=COUNT,...")
    return out


def parse_networks(text: str) -> Dict[str, List[ipaddress._BaseNetwork]]:
    """`node1=10.42.0.0/24+10.77.2.31,node2=...` -> each node's networks (addresses a node's
    SNAT may use under Cluster: its pod CIDR and its own address)."""
    out: Dict[str, List[ipaddress._BaseNetwork]] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name or not value:
            raise ScenarioError(f"{part!r} in {text!r}: expected NAME=CIDR[+CIDR...]")
        try:
            out.setdefault(name, []).extend(ipaddress.ip_network(v, strict=False)
                                            for v in value.split("+"))
        except ValueError as exc:
            raise ScenarioError(f"{part!r}: {exc}") from None
    return out


def owner(address: str, networks: Mapping[str, Sequence[ipaddress._BaseNetwork]]) -> str:
    """The node whose networks hold `address`, or "other"."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return "other"
    for name, nets in networks.items():
        if any(addr in n for n in nets):
            return name
    return "other"


# -- the client side: one request per connection ---------------------------------------------

@dataclass(frozen=True)
class Answer:
    """One connection's answer, in pyxlb.lab.http's format "<name> <client> <port>": the
    echo pods name themselves POD@NODE; the namespace lab's backends by their node."""

    pod: str
    node: str
    client: str


def parse_answer(body: str) -> Answer:
    parts = body.split()
    if len(parts) != 3:
        raise ScenarioError(f"answer {body.strip()!r}: expected '<name> <client> <port>'")
    name, client, _ = parts
    pod, _, node = name.rpartition("@")
    return Answer(pod or node, node, client)


def probe(host: str, port: int, count: int, *, timeout: float = 2.0,
          interval: float = 0.0) -> Tuple[List[Answer], int]:
    """`count` requests, each on a new TCP connection (a new source port, so a new flow for
    the router's ECMP hash and the balancers' Maglev). Returns the answers and the number of
    connections that failed."""
    answers: List[Answer] = []
    failed = 0
    for _ in range(count):
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            answers.append(parse_answer(resp.read().decode(errors="replace")))
        except (OSError, http.client.HTTPException, ScenarioError):
            failed += 1
        finally:
            conn.close()
        if interval:
            time.sleep(interval)
    return answers, failed


def measure(answers: Sequence[Answer], failed: int, *, pods: Mapping[str, int], policy: str,
            client: Optional[str], entries: Optional[Mapping[str, Sequence]] = None,
            tolerance: float = DEFAULT_TOLERANCE) -> Tuple[bool, str]:
    """Everything a scenario prints, and whether all of it matched: the share per node of the
    pod that answered (by pods, for either policy: Cluster's proxies pick any pod), under
    Cluster the share per entry node (even, from the SNAT address the pods saw), the client
    address the pods saw, and the failed connections (expected none)."""
    if policy not in POLICIES:
        raise ScenarioError(f"policy {policy!r}: expected one of {', '.join(POLICIES)}")
    out = []
    ok = True
    if not answers:
        return False, f"no connection was answered ({failed} failed)"
    by_node = compare(pod_shares(pods), Counter(a.node for a in answers), tolerance=tolerance,
                      title="answering pods, per node (expected: by ready pods)")
    out.append(by_node.table())
    ok &= by_node.ok
    seen = Counter(a.client for a in answers)
    if policy == "Local":
        good = client is None or set(seen) == {client}
        out.append(f"client address the pods saw: expected {client or '(any)'} only; actual "
                   f"{', '.join(f'{a} x{n}' for a, n in seen.most_common())}  "
                   f"{'OK' if good else 'FAIL'}")
        ok &= good
    else:
        good = client is None or client not in seen
        out.append(f"client address the pods saw: expected node addresses (SNAT), never "
                   f"{client or 'the client'}; actual "
                   f"{', '.join(f'{a} x{n}' for a, n in seen.most_common())}  "
                   f"{'OK' if good else 'FAIL'}")
        ok &= good
        if entries:
            entry = compare(even_shares(entries),
                            Counter(owner(a.client, entries) for a in answers),
                            tolerance=tolerance,
                            title="entry node, from the SNAT address (expected: even)")
            out.append(entry.table())
            ok &= entry.ok
    out.append(f"failed connections: expected 0; actual {failed}  {'OK' if not failed else 'FAIL'}")
    ok &= failed == 0
    return ok, "\n".join(out)


# -- the echo pods' server --------------------------------------------------------------------

def make_server(name: str, port: int, host: str = "::"):
    """pyxlb.lab.http's server (the namespace lab's backends) answering as `name`, logging
    whom each request came from, so `kubectl logs` shows the client address a pod saw.
    On "::" it takes IPv4 and IPv6 on one socket, or IPv4 alone in a pod without IPv6."""
    from . import http as lab_http

    class Logged(lab_http.Handler):
        def log_message(self, fmt: str, *args) -> None:
            peer, peer_port = self.client_address[:2]
            if peer.startswith("::ffff:"):
                peer = peer[7:]
            print(f"{name}: {peer} port {peer_port}: {fmt % args}", flush=True)

    server: Any
    if host == "::":
        try:
            server = lab_http.DualStackServer(("::", port), Logged)
        except OSError:
            host = "0.0.0.0"
    if host != "::":
        server = lab_http.ThreadingHTTPServer((host, port), Logged)
        server.daemon_threads = True
    server.name = name
    return server


def serve(name: str, port: int) -> None:
    """The echo pods' process: serve until killed."""
    server = make_server(name, port)
    print(f"{name}: listening on port {server.server_address[1]}", flush=True)
    server.serve_forever()


# -- the command line -------------------------------------------------------------------------

def _arg(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a parser raising ScenarioError (argparse reports only its own
    error types as a usage error)."""
    def wrapped(text: str) -> Any:
        try:
            return parse(text)
        except ScenarioError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    wrapped.__name__ = parse.__name__
    return wrapped


def _node_asn(text: str) -> Tuple[str, int]:
    address, sep, asn = text.partition("=")
    if not sep or not asn.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: expected ADDRESS=ASN")
    return address, int(asn)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m pyxlb.lab.scenarios",
                                     description="pyxlb lab scenarios: expected beside actual")
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="connect COUNT times to the VIP and compare")
    m.add_argument("--vip", required=True)
    m.add_argument("--port", type=int, default=80)
    m.add_argument("--count", type=int, default=300)
    m.add_argument("--pods", required=True, type=_arg(parse_counts),
                   help="ready pods per node: node1=2,node2=1,node3=0")
    m.add_argument("--policy", choices=POLICIES, default="Local")
    m.add_argument("--client", help="this machine's address, as the pods should see it")
    m.add_argument("--entries", type=_arg(parse_networks),
                   help="Cluster: each eligible node's SNAT networks: node1=10.42.0.0/24+...")
    m.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE)
    m.add_argument("--interval", type=float, default=0.0, help="seconds between connections")
    m.add_argument("--timeout", type=float, default=2.0)
    s = sub.add_parser("serve", help="the echo pods' HTTP server")
    s.add_argument("--name", required=True, help="POD@NODE")
    s.add_argument("--port", type=int, default=8080)
    r = sub.add_parser("router-config", help="the lab router's BIRD configuration")
    r.add_argument("--router-id", required=True)
    r.add_argument("--asn", type=int, required=True)
    r.add_argument("--node", type=_node_asn, action="append", required=True,
                   help="ADDRESS=ASN of a node (repeat)")
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            serve(args.name, args.port)
            return 0
        if args.command == "router-config":
            from ..announce.bgp import upstream_router_config
            print(upstream_router_config(args.router_id, args.asn, args.node))
            return 0
        if args.count < 1:
            raise ScenarioError(f"--count {args.count}: at least one connection")
        print(f"external IP: {args.vip}; {args.count} connections to {args.vip}:{args.port}, "
              f"policy {args.policy}")
        answers, failed = probe(args.vip, args.port, args.count, timeout=args.timeout,
                                interval=args.interval)
        ok, text = measure(answers, failed, pods=args.pods, policy=args.policy,
                           client=args.client, entries=args.entries, tolerance=args.tolerance)
        print(text)
        print("RESULT: " + ("OK" if ok else "FAIL"))
        return 0 if ok else 1
    except PyxlbError as exc:
        print(f"pyxlb.lab.scenarios: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
