"""`python -m pyxlb.announce.l2`: L2 announcement for a set of VIP addresses on a pinned
datapath, as a lab and debugging tool (tests/lab/test_l2.py and bench/failover.py run
it). It runs the membership, the ownership, the announce flags and the announcer together;
the production entry points are `pyxlb announce` (pyxlb/announce/runner.py) and the
Kubernetes agent (pyxlb/k8s/announcing.py).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import FrozenSet, Optional, Sequence, Set, Tuple

from ...errors import PyxlbError
from .. import IPAddress
from .announcer import L2Announcer, with_announce_on
from .liveness import DEAD_AFTER, owned
from .membership import INTERVAL, PORT, Membership


class _Tool:
    """Membership + L2Announcer + the announce flags of a pinned datapath, for a fixed set
    of VIP addresses for which every configured node is eligible."""

    def __init__(self, args):
        from ...datapath import Datapath
        self.node = args.node
        self.managed = set(args.vip)
        self.everyone = {args.node, *args.peer}
        self.lock = threading.Lock()
        self.closing = False
        self.dp = Datapath.open(args.pin_dir)
        self.announcer = L2Announcer(args.iface)
        key = None
        if args.key_file:
            with open(args.key_file, "rb") as f:
                key = f.read().strip()
        self.membership = Membership(args.node, args.peer, port=args.port,
                                     interval=args.interval, dead_after=args.dead_after,
                                     key=key, bind=args.bind, on_change=self.changed,
                                     on_seen_by=self.seen_by)

    def say(self, event: str, **kw) -> None:
        print(json.dumps({"event": event, "node": self.node, "t": time.monotonic(), **kw},
                         default=str), flush=True)

    def _set_flags(self, mine: Set[IPAddress]) -> None:
        current = self.dp.layout(refresh=True).state      # another process may apply too
        wanted = with_announce_on(current, mine, self.managed)
        if wanted != current:
            self.dp.apply(wanted)

    def changed(self, alive: FrozenSet[str]) -> None:
        with self.lock:
            if self.closing:
                return
            mine = owned({a: self.everyone for a in self.managed}, alive, self.node)
            self._set_flags(mine)           # the responder first, then the GARP
            results = self.announcer.sync(mine)
            self.say("owned", alive=sorted(alive), owned=sorted(mine, key=str),
                     results={str(a): r.value for a, r in results.items()})

    def seen_by(self, peer: str) -> None:
        with self.lock:
            if self.closing:
                return
            self.announcer.refresh()
            self.say("seen_by", peer=peer)

    def run(self) -> None:
        done = threading.Event()
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, lambda *_: done.set())
        self.membership.start(wait=True)
        self.say("ready", mac=self.announcer.mac_text, incarnation=self.membership.incarnation)
        try:
            while not done.wait(1.0):
                # RETRY results (interface down) are retried every second
                if self.announcer.announced() != owned(
                        {a: self.everyone for a in self.managed}, self.membership.alive(),
                        self.node):
                    self.changed(self.membership.alive())
        finally:
            with self.lock:         # no callback acts after this: the flags stay off
                self.closing = True
                self._set_flags(set())
                self.announcer.close(withdraw=True)
            self.membership.stop(leave=True)
            self.dp.close()
            self.say("stopped")


def _peer_arg(text: str) -> Tuple[str, str]:
    name, sep, addr = text.partition("=")
    if not sep or not name or not addr:
        raise argparse.ArgumentTypeError(f"write a peer as NAME=ADDRESS, not {text!r}")
    return name, addr


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pyxlb.announce.l2",
        description="Lab and debugging tool: announce VIP addresses in L2 mode from one LB "
                    "node (heartbeats with the peers, rendezvous ownership, announce flags "
                    "applied to the pinned datapath, gratuitous ARP / unsolicited NA). Every "
                    "configured node is eligible for every --vip. Prints one JSON line per "
                    "event; SIGTERM withdraws and says goodbye.")
    parser.add_argument("--node", required=True, help="this node's name")
    parser.add_argument("--peer", action="append", type=_peer_arg, default=[],
                        metavar="NAME=ADDRESS", help="another node (repeatable)")
    parser.add_argument("--iface", required=True, help="interface the balancer runs on")
    parser.add_argument("--pin-dir", required=True, help="the datapath's pin directory")
    parser.add_argument("--vip", action="append", type=ipaddress.ip_address, default=[],
                        metavar="ADDRESS", help="VIP address to announce (repeatable)")
    parser.add_argument("--netns", help="network namespace to run in (only the network "
                                        "namespace is entered: /sys/fs/bpf stays visible)")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--interval", type=float, default=INTERVAL)
    parser.add_argument("--dead-after", type=float, default=DEAD_AFTER)
    parser.add_argument("--bind", help="address the heartbeat socket binds to")
    parser.add_argument("--key-file", help="file holding the heartbeats' shared HMAC key")
    args = parser.parse_args(argv)
    args.peer = dict(args.peer)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.netns:
            from ... import netns
            fd = os.open(netns.path_of(args.netns), os.O_RDONLY | os.O_CLOEXEC)
            try:
                netns.setns(fd)    # before any thread exists: all of them live there
            finally:
                os.close(fd)
        tool = _Tool(args)
    except (PyxlbError, OSError) as exc:
        print(f"pyxlb.announce.l2: {exc}", file=sys.stderr)
        return 2
    tool.run()
    return 0
