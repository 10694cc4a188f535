"""The L2 announcer: gratuitous ARP (IPv4) / unsolicited neighbour advertisements (IPv6)
from one interface when this node takes an address over, so the segment's neighbour caches
move at once instead of when they next expire.

Answering ARP / NDP is the XDP responder's job (a VIP with `announce: true`); the caller
sets that flag (`with_announce_on`) and applies it *before* `sync()`, so the responder is
ready when the gratuitous ARP brings traffic.
"""

from __future__ import annotations

import fcntl
import heapq
import ipaddress
import logging
import socket
import struct
import threading
import time
from typing import FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple, Union

from ...state import DesiredState
from .. import Announcer, IPAddress, Result, address_order
from .frames import announcement_frames, mac_bytes
from .wire import L2Error

log = logging.getLogger("pyxlb.announce")

GARP_SCHEDULE = (0.0, 0.1, 0.5)     # seconds after a takeover: one frame may be lost

SIOCGIFFLAGS = 0x8913
IFF_UP, IFF_RUNNING = 0x1, 0x40
ARPHRD_ETHER = 1


class L2Announcer(Announcer):
    """Announces VIP addresses on one Ethernet interface by gratuitous ARP / unsolicited NA,
    sent in a background thread at `schedule` seconds after each announce() (and refresh()),
    so the caller never waits. The interface is looked up in the calling thread's network
    namespace; its MAC is read once (or given)."""

    mode = "l2"

    def __init__(self, iface: str, *, mac: Union[str, bytes, None] = None,
                 schedule: Sequence[float] = GARP_SCHEDULE):
        if not schedule or any(not 0 <= s <= 60 for s in schedule):
            raise L2Error(f"announcement schedule must be 1 or more delays of 0-60 s, "
                          f"not {schedule!r}")
        self.iface = iface
        self.schedule = tuple(sorted(float(s) for s in schedule))
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # 0: receive nothing
        except PermissionError:
            raise L2Error(f"L2 announcement on {iface} needs CAP_NET_RAW") from None
        try:
            sock.bind((iface, 0))
        except OSError:
            sock.close()
            raise L2Error(f"no interface named {iface!r} to announce on") from None
        _, _, _, hatype, own_mac = sock.getsockname()
        if hatype != ARPHRD_ETHER or len(own_mac) != 6:
            sock.close()
            raise L2Error(f"{iface} is not an Ethernet interface: cannot announce on it")
        self.mac = mac_bytes(mac) if mac is not None else bytes(own_mac)
        sock.setblocking(False)     # a full device queue costs a frame, never a wait
        self._sock = sock
        self._vips: Set[IPAddress] = set()
        self._due: List[Tuple[float, int, IPAddress]] = []    # heap: (time, seq, vip)
        self._seq = 0
        self._cond = threading.Condition()
        self._closing = False
        self.sent = 0
        self.send_errors = 0
        self._thread = threading.Thread(target=self._run, name=f"l2-garp-{iface}", daemon=True)
        self._thread.start()

    @property
    def mac_text(self) -> str:
        return ":".join(f"{b:02x}" for b in self.mac)

    def link_ready(self) -> bool:
        """The interface is up with a carrier (frames sent now can arrive)."""
        ifreq = struct.pack("16sH14x", self.iface.encode()[:15], 0)
        try:
            flags = struct.unpack_from("16xH", fcntl.ioctl(self._sock.fileno(), SIOCGIFFLAGS,
                                                           ifreq))[0]
        except OSError:
            return False
        return bool(flags & IFF_UP and flags & IFF_RUNNING)

    def announce(self, vip) -> Result:
        addr = ipaddress.ip_address(vip)
        with self._cond:
            if self._closing:
                return Result.GIVE_UP
            if addr in self._vips:
                return Result.OK
        if not self.link_ready():
            return Result.RETRY         # not recorded: the next sync tries again
        with self._cond:
            self._vips.add(addr)
            self._schedule([addr])
        return Result.OK

    def withdraw(self, vip) -> Result:
        addr = ipaddress.ip_address(vip)
        with self._cond:
            self._vips.discard(addr)
            self._due = [d for d in self._due if d[2] != addr]
            heapq.heapify(self._due)
        return Result.OK

    def announced(self) -> FrozenSet[IPAddress]:
        with self._cond:
            return frozenset(self._vips)

    def refresh(self, vips: Optional[Iterable] = None) -> None:
        """Announce again (all announced addresses, or those of `vips` that are): after a
        peer that had taken them over hears this node again."""
        with self._cond:
            wanted = self._vips if vips is None else \
                {ipaddress.ip_address(v) for v in vips} & self._vips
            self._schedule(sorted(wanted, key=address_order))

    def _schedule(self, addrs: Sequence[IPAddress]) -> None:
        now = time.monotonic()
        for addr in addrs:
            for delay in self.schedule:
                self._seq += 1
                heapq.heappush(self._due, (now + delay, self._seq, addr))
        self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and \
                        (not self._due or self._due[0][0] > time.monotonic()):
                    wait = None if not self._due else self._due[0][0] - time.monotonic()
                    self._cond.wait(wait)
                if self._closing:
                    return
                _, _, addr = heapq.heappop(self._due)
                # sent under the lock (microseconds): once withdraw() returns, nothing more
                # goes out for the address
                for frame in announcement_frames(self.mac, addr):
                    try:
                        self._sock.send(frame)
                        self.sent += 1
                    except OSError as exc:  # link down, queue full, device gone: counted
                        self.send_errors += 1
                        log.warning("l2 announcement of %s on %s: %s", addr, self.iface,
                                    exc.strerror or exc)

    def close(self, withdraw: bool = True) -> None:
        if withdraw:
            self.sync(())
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self._sock.close()


def with_announce_on(state: DesiredState, owned_addrs: Iterable[IPAddress],
                     managed: Iterable[IPAddress]) -> DesiredState:
    """`state` with `announce` true on the VIPs of `owned_addrs` and false on the other VIPs
    of `managed` addresses; VIPs on other addresses keep their flag."""
    owned_addrs, managed = set(owned_addrs), set(managed)
    vips = []
    for v in state:
        a = v.key.address
        want = (a in owned_addrs) if a in managed else v.announce
        vips.append(v if v.announce == want else v.replace(announce=want))
    return state.with_vips(vips)
