"""`pyxlb announce -f FILE`: announcing without Kubernetes.

The file is the same YAML as `pyxlb apply -f` with an `announce` section (docs/config.md,
docs/announce.md). The runner applies the file's VIPs to the pinned datapath and keeps them
announced until stopped:

- **l2**: every node running it with the same file (each naming itself in `node`, the
  others in `l2.peers`) hears the others' heartbeats; each VIP address is answered by the
  rendezvous winner among the live nodes. The winner's VIPs get `announce: true` (the XDP
  responder answers ARP/NDP for them) and a gratuitous ARP / unsolicited NA goes out.
- **bgp**: every VIP address with a backend is announced by this node's BGP speaker
  while the balancer is attached to an interface, and withdrawn when it is not.

A VIP address is eligible here when one of its VIPs has a backend in its ring (or is a
`local` VIP): an address nobody could serve is not announced. SIGTERM or Ctrl-C withdraws
everything and stops; the VIPs stay in the datapath.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from typing import Callable, Dict, FrozenSet, Optional, Set

from ..datapath import Datapath
from ..errors import PyxlbError
from ..state import DesiredState
from . import Announcer, IPAddress, Result

log = logging.getLogger("pyxlb.announce")

TICK_S = 1.0      # re-check what to announce at least this often (attachment, retries)


def serving_addresses(state: DesiredState) -> FrozenSet[IPAddress]:
    """Addresses this node can serve: one of their VIPs has an active backend or is local."""
    return frozenset(v.key.address for v in state
                     if v.mode == "local" or any(b.in_ring for b in v.backends))


def with_announce(state: DesiredState, addresses) -> DesiredState:
    """`state` with `announce` set exactly on the VIPs of `addresses`."""
    addresses = set(addresses)
    return state.with_vips(v if v.announce == (v.key.address in addresses)
                           else v.replace(announce=v.key.address in addresses)
                           for v in state)


class Runner:
    """Keeps one datapath's VIPs announced as the `announce` section says."""

    def __init__(self, dp: Datapath, state: DesiredState, section: dict):
        self.dp = dp
        self.state = state
        self.mode = section["mode"]
        self.node = section.get("node") or socket.gethostname()
        self.interface = section.get("interface") or self._first_interface()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.membership = None
        self.announcer: Announcer
        if self.mode == "l2":
            from .l2 import L2Announcer, Membership
            l2 = section.get("l2") or {}
            peers = dict(l2.get("peers") or {})
            if self.node in peers:
                raise PyxlbError(f"announce.l2.peers names this node ({self.node}) itself")
            kw = {k: l2[k] for k in ("port", "interval", "dead_after", "key") if k in l2}
            self.announcer = L2Announcer(self.interface)
            # a peer that hears us again after a partition may have taken our VIPs:
            # announce them again so its neighbours' caches come back to us
            self.membership = Membership(self.node, peers, on_change=self._poke,
                                         on_seen_by=lambda _peer: self.announcer.refresh(),
                                         **kw)
            self.peers = frozenset(peers)
        elif self.mode == "bgp":
            from .bgp import BgpAnnouncer, BgpSettings
            settings = BgpSettings.from_dict(section.get("bgp") or {}, node=self.node,
                                             interface=self.interface)
            self.announcer = BgpAnnouncer(settings)
        else:
            raise PyxlbError(f"announce.mode must be l2 or bgp, not {self.mode!r}")

    def _first_interface(self) -> str:
        ifaces = self.dp.interfaces()
        if not ifaces:
            raise PyxlbError("the balancer is attached to no interface: `pyxlb attach IFACE` "
                             "first, or name announce.interface")
        return ifaces[0]["name"]

    def _poke(self, *_args) -> None:
        self._wake.set()

    def wanted(self) -> Set[IPAddress]:
        """The addresses this node should announce now."""
        serving = serving_addresses(self.state)
        if self.mode == "l2":
            from .l2 import owned
            everyone = self.peers | {self.node}
            return set(owned({a: everyone for a in serving}, self.membership.alive(),
                             self.node))
        # bgp: only while the balancer can take the packets
        return set(serving) if self.dp.interfaces() else set()

    def step(self) -> Dict[IPAddress, Result]:
        """Apply the announce flags (L2), then announce/withdraw: the XDP responder is
        ready before a gratuitous ARP brings the traffic."""
        wanted = self.wanted()
        if self.mode == "l2":
            self.dp.apply(with_announce(self.state, wanted))
        results = self.announcer.sync(wanted)
        for addr, res in results.items():
            if res is not Result.OK:
                log.warning("%s %s: %s", self.mode, addr, res.value)
            else:
                log.info("%s: %s %s", self.mode,
                         "announcing" if addr in wanted else "withdrew", addr)
        return results

    def run(self, on_ready: Optional[Callable[[], None]] = None,
            on_tick: Optional[Callable[[], None]] = None) -> None:
        """Until SIGTERM/SIGINT (or stop()): announce, re-check on every membership change,
        every wake() and every second; then withdraw everything. `on_tick` is called
        before each re-check (`pyxlb serve` refreshes `state` there)."""
        self.dp.apply(self.state if self.mode != "l2" else with_announce(self.state, ()))
        previous = {}
        if threading.current_thread() is threading.main_thread():
            previous = {s: signal.signal(s, lambda *_: self.stop())
                        for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self.membership is not None:
                self.membership.start()
            self.step()
            if on_ready is not None:
                on_ready()
            while not self._stop.is_set():
                self._wake.wait(TICK_S)
                self._wake.clear()
                if not self._stop.is_set():
                    if on_tick is not None:
                        on_tick()
                    self.step()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            self.close()

    def wake(self) -> None:
        """Re-check now rather than at the next tick (from any thread or a signal)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def close(self) -> None:
        """Withdraw everything; the VIPs stay in the datapath, unannounced. L2: the peers
        are told first, so they take over at once rather than after dead_after."""
        try:
            if self.membership is not None:
                self.membership.stop(leave=True)
            if self.mode == "l2":
                self.dp.apply(with_announce(self.state, ()))
        finally:
            self.announcer.close(withdraw=True)
