"""The membership: a UDP heartbeat between the nodes that may announce, around `Liveness`.

Every `interval` (0.2 s) each node sends a heartbeat to every peer on port 9744; a peer not
heard for `dead_after` (1.0 s) is dead. It needs nothing but the peers' addresses: no API
server, no leases, so announcing keeps working while the Kubernetes API is down. The
decisions are Liveness's (pyxlb/announce/l2/liveness.py); `Membership` only adds the
socket and two threads.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import select
import socket
import threading
import time
from typing import Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Tuple, Union

from ...numbers import int_in, positive_number
from .. import IPAddress
from .liveness import DEAD_AFTER, Change, Event, Liveness
from .wire import MAX_MESSAGE, L2Error

log = logging.getLogger("pyxlb.announce")

PORT = 9744
INTERVAL = 0.2              # seconds between heartbeats


def _peer_addr(name: str, text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(str(text).strip())
    except ValueError:
        raise L2Error(f"peer {name}: not an IP address: {text!r}") from None


class Membership:
    """The live nodes among `me` and `peers` ({name: IP address}), kept by heartbeats.

    One UDP socket on `port` (bound to `bind`, default every address of the family the
    peers need) sends to the configured peer addresses only. Two threads: one sends and
    receives (it never runs callbacks, so a slow callback cannot make this node look dead),
    one runs `on_change(alive)` on every change of the live set and `on_seen_by(peer)` when
    a peer starts hearing this node again, in the order they happened.

    The socket is made by `start()` in the calling thread's network namespace.
    """

    def __init__(self, me: str, peers: Mapping[str, str], *, port: int = PORT,
                 interval: float = INTERVAL, dead_after: float = DEAD_AFTER,
                 key: Union[str, bytes, None] = None, bind: Optional[str] = None,
                 on_change: Optional[Callable[[FrozenSet[str]], None]] = None,
                 on_seen_by: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic):
        if not int_in(port, 1, 65535):
            raise L2Error(f"heartbeat port must be 1-65535, not {port!r}")
        for what, value in (("interval", interval), ("dead_after", dead_after)):
            if not positive_number(value):
                raise L2Error(f"heartbeat {what} must be a positive number of seconds, "
                              f"not {value!r}")
        if not dead_after > interval:
            raise L2Error(f"dead_after ({dead_after} s) must be longer than the heartbeat "
                          f"interval ({interval} s); three intervals or more is sensible")
        self.me = me
        peers = {n: _peer_addr(n, a) for n, a in dict(peers).items()}
        self.port, self.interval, self.dead_after = port, float(interval), float(dead_after)
        self.clock = clock
        self.on_change, self.on_seen_by = on_change, on_seen_by
        self._lock = threading.Lock()
        self._state = Liveness(me, peers, dead_after=dead_after, key=key, now=clock())
        six = any(a.version == 6 for a in peers.values())
        if bind is None:
            self.family = socket.AF_INET6 if six else socket.AF_INET
            self.bind = "::" if six else "0.0.0.0"
        else:
            b = _peer_addr("bind", bind)
            if b.version == 4 and six:
                raise L2Error(f"bind address {bind} is IPv4, but some peers are IPv6")
            self.family = socket.AF_INET if b.version == 4 else socket.AF_INET6
            self.bind = str(b)
        self.peers: Dict[str, IPAddress] = peers
        self._dest = self._destinations(peers)
        self._sock: Optional[socket.socket] = None
        self._wake_r = self._wake_w = None
        self._stopping = threading.Event()
        self._settled = threading.Event()
        self._events: "queue.Queue[Optional[Event]]" = queue.Queue()
        self._threads: List[threading.Thread] = []
        self.send_errors = 0

    def _destinations(self, peers: Mapping[str, IPAddress]) -> Dict[str, Tuple]:
        """Where each peer's heartbeats go, in the socket's family."""
        out: Dict[str, Tuple] = {}
        for n, a in peers.items():
            if self.family == socket.AF_INET6:
                out[n] = (str(a) if a.version == 6 else f"::ffff:{a}", self.port, 0, 0)
            elif a.version == 6:
                raise L2Error(f"peer {n}: {a} is IPv6, but the heartbeat socket is IPv4 "
                              f"(bind it to an IPv6 address, or '::')")
            else:
                out[n] = (str(a), self.port)
        return out

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Change the peers without a restart (this node keeps its incarnation, the others
        keep their state): for a cluster whose nodes come and go."""
        parsed = {n: _peer_addr(n, a) for n, a in dict(peers).items()}
        dest = self._destinations(parsed)
        with self._lock:
            events = self._state.set_peers(parsed, self.clock())
            self.peers, self._dest = parsed, dest
            self._emit(events)

    # -- life cycle ---------------------------------------------------------------------

    def start(self, wait: bool = True) -> "Membership":
        """Open the socket and start the threads; with `wait`, return once the membership
        has settled (every peer heard, or dead_after passed): alive() is meaningful then."""
        if self._threads or self._stopping.is_set():
            raise L2Error("this membership is started already (or stopped: make a new one)")
        sock = socket.socket(self.family, socket.SOCK_DGRAM)
        try:
            # no SO_REUSEADDR: on Linux it would let a second membership share the port
            if self.family == socket.AF_INET6 and self.bind == "::":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((self.bind, self.port))
        except OSError as exc:
            sock.close()
            raise L2Error(f"heartbeat socket {self.bind} port {self.port}: "
                          f"{exc.strerror or exc}") from None
        sock.setblocking(False)
        self._sock = sock
        self._wake_r, self._wake_w = socket.socketpair()
        with self._lock:
            self._state.start(self.clock())
        self._threads = [threading.Thread(target=self._io, name=f"l2-heartbeat-{self.me}",
                                          daemon=True),
                         threading.Thread(target=self._notify, name=f"l2-notify-{self.me}",
                                          daemon=True)]
        for t in self._threads:
            t.start()
        if wait:
            self.wait_settled(self.dead_after + 2 * self.interval + 1.0)
        return self

    def wait_settled(self, timeout: Optional[float] = None) -> bool:
        return self._settled.wait(timeout)

    def stop(self, leave: bool = False) -> None:
        """Stop the threads and close the socket. With `leave`, first tell every peer this
        node is going (a planned stop: they take over at once); without, they notice after
        dead_after (a restart that will be back before that moves nothing). No callback
        runs once this is called."""
        if self._stopping.is_set():
            return
        msgs = []
        with self._lock:
            # stopping and the goodbye under one lock: the I/O thread makes no heartbeat
            # after it, whose higher sequence number would make the peers drop the goodbye
            self._stopping.set()
            if leave and self._sock is not None:
                msgs = [(self._dest[n], data) for n, data in self._state.goodbye()]
        self._send(msgs)
        if self._wake_w is not None:
            try:
                self._wake_w.send(b"x")
            except OSError:
                pass
        self._events.put(None)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join()
        for s in (self._sock, self._wake_r, self._wake_w):
            if s is not None:
                s.close()

    def __enter__(self) -> "Membership":
        return self.start() if not self._threads else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- reading ------------------------------------------------------------------------

    def alive(self) -> FrozenSet[str]:
        """The live nodes, this one included. Before `settled`, only those heard so far:
        acting on it then would take over every address for a moment."""
        with self._lock:
            return self._state.alive()

    @property
    def settled(self) -> bool:
        """Every peer has been heard, or dead_after has passed since start()."""
        return self._settled.is_set()

    @property
    def incarnation(self) -> int:
        return self._state.incarnation

    def status(self) -> dict:
        """For logs and debugging: the peers as this node sees them and the counters."""
        with self._lock:
            return {"node": self.me, "incarnation": self._state.incarnation,
                    "alive": sorted(self._state.alive()),
                    "peers": self._state.peers(self.clock()),
                    "counters": dict(self._state.counters, send_errors=self.send_errors),
                    "last_rejected": self._state.last_rejected}

    # -- threads ------------------------------------------------------------------------

    def _send(self, msgs: Sequence[Tuple[Tuple, bytes]]) -> None:
        for dest, data in msgs:
            try:
                self._sock.sendto(data, dest)
            except OSError as exc:      # unreachable, link down, buffer full: next round
                self.send_errors += 1
                if self.send_errors in (1, 10, 100) or self.send_errors % 1000 == 0:
                    log.warning("l2 heartbeat to %s: %s (%d send errors so far)", dest[0],
                                exc.strerror or exc, self.send_errors)

    def _emit(self, events: List[Event]) -> None:
        for ev in events:
            if isinstance(ev, Change):
                self._settled.set()
            self._events.put(ev)

    def _io(self) -> None:
        next_send = self.clock()
        while not self._stopping.is_set():
            timeout = max(0.0, next_send - self.clock())
            try:
                ready, _, _ = select.select([self._sock, self._wake_r], [], [], timeout)
            except OSError:
                break
            if self._stopping.is_set():
                break
            if self._sock in ready:
                # every waiting datagram before any death is judged: after this thread
                # was held up, its peers' queued heartbeats speak for them
                for _ in range(1024):
                    try:
                        data = self._sock.recv(MAX_MESSAGE + 1)
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        continue        # e.g. ICMP port unreachable reported on the socket
                    with self._lock:
                        self._emit(self._state.receive(data, self.clock()))
            now = self.clock()
            if now >= next_send:
                with self._lock:
                    if self._stopping.is_set():
                        break
                    self._emit(self._state.tick(now))
                    msgs = [(self._dest[n], data) for n, data in self._state.outgoing(now)]
                self._send(msgs)
                next_send += self.interval
                if next_send <= now:
                    next_send = now + self.interval

    def _notify(self) -> None:
        while True:
            ev = self._events.get()
            if ev is None or self._stopping.is_set():
                return
            try:
                if isinstance(ev, Change):
                    log.info("l2 %s: alive %s", self.me, ", ".join(sorted(ev.alive)))
                    if self.on_change is not None:
                        self.on_change(ev.alive)
                elif self.on_seen_by is not None:
                    self.on_seen_by(ev.peer)
            except Exception:       # noqa: BLE001 - a failing callback must not stop us
                log.exception("l2 %s: membership callback failed", self.me)
