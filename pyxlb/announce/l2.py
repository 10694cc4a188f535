"""L2 announcement: one node per VIP address answers ARP / neighbour solicitations for it,
chosen by rendezvous hashing among the eligible nodes that are alive.

Three parts, each usable alone:

- `Membership`: a UDP heartbeat between the nodes that may announce (every `interval`,
  0.2 s, to every peer on port 9744; a peer not heard for `dead_after`, 1.0 s, is dead).
  It needs nothing but the peers' addresses: no API server, no leases, so announcing
  keeps working while the Kubernetes API is down. The decisions are a pure state machine
  (`Liveness`, driven by a clock the caller passes in); `Membership` only adds the socket
  and two threads.
- `owned(eligible, alive, me)`: the addresses this node must announce. Every node
  computes the same answer from the same live set, so no election is needed, and a node
  that dies moves only its own addresses.
- `L2Announcer`: sends gratuitous ARP (IPv4) / unsolicited neighbour advertisements
  (IPv6) from one interface when it takes an address over, so the segment's neighbour
  caches move at once instead of when they next expire. Answering ARP / NDP is the XDP
  responder's job (a VIP with `announce: true`); the caller sets that flag and applies it
  *before* `sync()`, so the responder is ready when the gratuitous ARP brings traffic.

`python -m pyxlb.announce.l2 --help` runs all three for a set of VIP addresses on a pinned
datapath: a lab and debugging tool (the lab tests and bench/failover.py use it); the
production entry points are `pyxlb announce` and the Kubernetes agent.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import os
import queue
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import Counter
from typing import (Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence,
                    Set, Tuple, Union)

from ..errors import PyxlbError
from ..state import DesiredState
from . import Announcer, IPAddress, Result, rendezvous

log = logging.getLogger("pyxlb.announce")

PORT = 9744
INTERVAL = 0.2              # seconds between heartbeats
DEAD_AFTER = 1.0            # a peer not heard for this long is dead
GARP_SCHEDULE = (0.0, 0.1, 0.5)     # seconds after a takeover: one frame may be lost

# -- heartbeat wire format -----------------------------------------------------------------
#
#   magic "XLBh" | version u8 | flags u8 | name length u8 | zero u8 |
#   incarnation u64 | seq u64 | ack u64 | name (UTF-8) | HMAC-SHA256[:16] if flags & HMAC
#
# Big-endian. `ack` is the recipient's incarnation as the sender last heard it, 0 when the
# sender does not hear the recipient: that is how a node learns that a peer has just started
# hearing it again (and will give back the addresses it took over).

MAGIC = b"XLBh"
VERSION = 1
FLAG_HMAC = 0x01
FLAG_LEAVING = 0x02
_HEAD = struct.Struct("!4sBBBxQQQ")
HMAC_LEN = 16
MAX_NAME = 253              # a Kubernetes node name is a DNS subdomain
MAX_MESSAGE = _HEAD.size + MAX_NAME + HMAC_LEN
_U64 = (1 << 64) - 1


class L2Error(PyxlbError, ValueError):
    """Bad L2 announcement settings; the message names the setting and the fault."""


class HeartbeatError(PyxlbError, ValueError):
    """A datagram that is not a valid heartbeat (or not signed with our key)."""


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """One heartbeat: who sends it, which run of that node (`incarnation`, chosen at start),
    its position in that run (`seq`), and whether the sender hears the recipient (`ack`)."""

    node: str
    incarnation: int
    seq: int
    ack: int = 0
    leaving: bool = False


def _key(key: Union[str, bytes, None]) -> Optional[bytes]:
    if key is None:
        return None
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if not raw:
        raise L2Error("the heartbeat key is empty (leave it out to send unsigned heartbeats)")
    return raw


def _name_bytes(node: str, what: str = "node name") -> bytes:
    if not isinstance(node, str) or not node:
        raise L2Error(f"{what} must be a non-empty string, not {node!r}")
    raw = node.encode()
    if len(raw) > MAX_NAME:
        raise L2Error(f"{what} {node[:40]!r}... is {len(raw)} bytes long (at most {MAX_NAME})")
    return raw


def encode(hb: Heartbeat, key: Union[str, bytes, None] = None) -> bytes:
    """The datagram for `hb`, signed with `key` when one is given."""
    name = _name_bytes(hb.node)
    for field in ("incarnation", "seq", "ack"):
        value = getattr(hb, field)
        if not 0 <= value <= _U64:
            raise L2Error(f"heartbeat {field} {value} does not fit 64 bits")
    key = _key(key)
    flags = (FLAG_HMAC if key else 0) | (FLAG_LEAVING if hb.leaving else 0)
    body = _HEAD.pack(MAGIC, VERSION, flags, len(name), hb.incarnation, hb.seq, hb.ack) + name
    if key:
        body += hmac.new(key, body, hashlib.sha256).digest()[:HMAC_LEN]
    return body


def decode(data: bytes, key: Union[str, bytes, None] = None) -> Heartbeat:
    """The heartbeat in `data`; HeartbeatError for anything else, for a wrong or missing
    signature when we have a key, and for a signed one when we have none (the nodes'
    settings differ: better refused loudly than half trusted)."""
    if len(data) < _HEAD.size:
        raise HeartbeatError(f"{len(data)} bytes: shorter than a heartbeat header")
    magic, version, flags, nlen, inc, seq, ack = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise HeartbeatError("not a heartbeat (wrong magic)")
    if version != VERSION:
        raise HeartbeatError(f"heartbeat version {version}, this node speaks {VERSION}")
    if flags & ~(FLAG_HMAC | FLAG_LEAVING):
        raise HeartbeatError(f"unknown heartbeat flags {flags:#04x}")
    key = _key(key)
    signed = bool(flags & FLAG_HMAC)
    want = _HEAD.size + nlen + (HMAC_LEN if signed else 0)
    if nlen == 0 or len(data) != want:
        raise HeartbeatError(f"{len(data)} bytes, the header says {want}")
    if key and not signed:
        raise HeartbeatError("unsigned heartbeat, but a key is configured")
    if signed and not key:
        raise HeartbeatError("signed heartbeat, but no key is configured")
    if key:
        body, mac = data[:-HMAC_LEN], data[-HMAC_LEN:]
        if not hmac.compare_digest(mac, hmac.new(key, body, hashlib.sha256).digest()[:HMAC_LEN]):
            raise HeartbeatError("heartbeat signature does not match (another key?)")
    try:
        node = data[_HEAD.size:_HEAD.size + nlen].decode()
    except UnicodeDecodeError:
        raise HeartbeatError("node name is not UTF-8") from None
    if inc == 0:
        raise HeartbeatError("incarnation 0 (reserved for 'not heard')")
    return Heartbeat(node, inc, seq, ack, bool(flags & FLAG_LEAVING))


def new_incarnation() -> int:
    """A number for this run of a node: the wall clock in ns, so a restarted node's is
    normally larger than its previous one's (peers use that to refuse replays)."""
    return max(1, time.time_ns() & _U64)


# -- liveness: the pure state machine ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Change:
    """The set of live nodes changed (self always included)."""

    alive: FrozenSet[str]


@dataclasses.dataclass(frozen=True)
class SeenBy:
    """A peer that did not hear this node now does: it will give back what it took over,
    so this node announces its addresses again."""

    peer: str


Event = Union[Change, SeenBy]


@dataclasses.dataclass
class _Peer:
    incarnation: int = 0
    seq: int = 0
    last_heard: float = 0.0
    alive: bool = False
    acked: bool = False         # its last heartbeat said it hears us
    left: bool = False          # said goodbye (this incarnation is finished)


class Liveness:
    """Who is alive, from heartbeats received and time passing; no sockets, no threads,
    no clock of its own (every call takes `now`, seconds on a monotonic clock).

    The driver calls `tick(now)` every `interval`, `receive(data, now)` for every datagram,
    and sends what `outgoing(now)` returns. A peer is dead once `dead_after` has passed
    since its last valid heartbeat. Until every peer has been heard or `dead_after` has
    passed since the start (`settled`), no Change is reported: a node that has just started
    does not yet know who is alive, and must not take every address over meanwhile.
    """

    def __init__(self, me: str, peers: Iterable[str], *, dead_after: float = DEAD_AFTER,
                 incarnation: Optional[int] = None, key: Union[str, bytes, None] = None,
                 now: float = 0.0):
        _name_bytes(me)
        self.me = me
        self.key = _key(key)
        self.dead_after = float(dead_after)
        if not self.dead_after > 0:
            raise L2Error(f"dead_after must be positive, not {dead_after!r}")
        self.incarnation = new_incarnation() if incarnation is None else incarnation
        if not 0 < self.incarnation <= _U64:
            raise L2Error(f"incarnation must be 1..2**64-1, not {self.incarnation}")
        self._peers: Dict[str, _Peer] = {}
        for name in self._check_peers(peers):
            self._peers[name] = _Peer()
        self._seq = 0
        self._started = now
        self.settled = not self._peers
        self._reported: Optional[FrozenSet[str]] = None
        self.counters: Counter = Counter()
        self.last_rejected = ""     # why the last refused datagram was refused

    def _check_peers(self, peers: Iterable[str]) -> List[str]:
        names = list(peers)
        for name in names:
            _name_bytes(name, "peer name")
            if name == self.me:
                raise L2Error(f"peer {name!r} is this node itself")
        return names

    def start(self, now: float) -> None:
        """Count the settling time from `now` (when heartbeats really begin to flow)."""
        self._started = now

    def set_peers(self, peers: Iterable[str], now: float) -> List[Event]:
        """Change the peer set in place (nodes joined or left the cluster): kept peers keep
        their state, new ones are dead until heard, removed ones are forgotten."""
        names = self._check_peers(peers)
        self._peers = {n: self._peers.get(n) or _Peer() for n in names}
        return self._settle(now)

    def alive(self) -> FrozenSet[str]:
        return frozenset([self.me, *(n for n, p in self._peers.items() if p.alive)])

    def peers(self, now: float) -> Dict[str, dict]:
        """Per peer: alive, incarnation, seconds since heard (None: never), hears us."""
        return {n: {"alive": p.alive, "incarnation": p.incarnation,
                    "heard_ago": (now - p.last_heard) if p.incarnation else None,
                    "hears_us": p.acked}
                for n, p in self._peers.items()}

    def outgoing(self, now: float) -> List[Tuple[str, bytes]]:
        """One round of heartbeats: (peer, datagram) for every peer."""
        self._seq += 1
        return [(n, encode(Heartbeat(self.me, self.incarnation, self._seq,
                                     p.incarnation if p.alive else 0), self.key))
                for n, p in self._peers.items()]

    def goodbye(self) -> List[Tuple[str, bytes]]:
        """Heartbeats that tell every peer this node is leaving now (a clean stop: the
        peers take over at once instead of after dead_after)."""
        self._seq += 1
        return [(n, encode(Heartbeat(self.me, self.incarnation, self._seq, 0, True), self.key))
                for n in self._peers]

    def receive(self, data: bytes, now: float) -> List[Event]:
        """Take one datagram in; junk, replays and strangers are counted and ignored."""
        try:
            hb = decode(data, self.key)
        except HeartbeatError as exc:
            self.counters["rejected"] += 1
            self.last_rejected = str(exc)
            return []
        if hb.node == self.me:
            self.counters["own"] += 1       # a peer address that is ours, or a twin name
            return []
        p = self._peers.get(hb.node)
        if p is None:
            self.counters["unknown"] += 1
            self.last_rejected = f"heartbeat from {hb.node!r}, which is not a peer"
            return []
        if hb.incarnation == p.incarnation:
            if hb.seq <= p.seq or p.left:       # reordered, replayed, or after goodbye
                self.counters["stale"] += 1
                return []
        elif hb.incarnation < p.incarnation and p.alive:
            # an older run while the current one is alive: a replay (a smaller number
            # from a real restart, after the clock stepped back, is taken once the old
            # run is dead)
            self.counters["stale"] += 1
            return []
        elif p.incarnation:
            self.counters["restarts"] += 1
        p.incarnation, p.seq, p.left = hb.incarnation, hb.seq, False
        self.counters["received"] += 1
        if hb.leaving:
            p.alive, p.acked, p.left = False, False, True
        else:
            p.alive, p.last_heard = True, now
        acked = hb.ack == self.incarnation
        # before the first Change nobody acts on addresses yet: nothing to announce again
        seen = acked and not p.acked and self.settled
        p.acked = acked
        events = self._settle(now)
        if seen:
            events.append(SeenBy(hb.node))
        return events

    def tick(self, now: float) -> List[Event]:
        """Let time pass: peers not heard for dead_after die."""
        for p in self._peers.values():
            if p.alive and now - p.last_heard >= self.dead_after:
                p.alive, p.acked = False, False
        return self._settle(now)

    def _settle(self, now: float) -> List[Event]:
        if not self.settled:
            heard = all(p.incarnation for p in self._peers.values())
            self.settled = heard or now - self._started >= self.dead_after
        if not self.settled:
            return []
        alive = self.alive()
        if alive == self._reported:
            return []
        self._reported = alive
        return [Change(alive)]


# -- the membership: sockets and threads around Liveness --------------------------------

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
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise L2Error(f"heartbeat port must be 1-65535, not {port!r}")
        for what, value in (("interval", interval), ("dead_after", dead_after)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
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


# -- who announces what -----------------------------------------------------------------

def owned(eligible: Mapping[IPAddress, Iterable[str]], alive: Iterable[str],
          me: str) -> Set[IPAddress]:
    """The addresses `me` must announce: those whose rendezvous winner among their eligible
    nodes that are alive is `me`. An address with no live eligible node is nobody's."""
    alive = set(alive)
    if me not in alive:
        return set()
    return {addr for addr, nodes in eligible.items()
            if me in nodes and rendezvous(addr, set(nodes) & alive) == me}


# -- frames --------------------------------------------------------------------------------

ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
ARPOP_REQUEST, ARPOP_REPLY = 1, 2
BROADCAST = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LLADDR = 2
NA_FLAG_OVERRIDE = 0x20000000
ETH_MIN = 60            # an Ethernet frame without its FCS is at least this long


def _mac_bytes(mac: Union[str, bytes]) -> bytes:
    if isinstance(mac, (bytes, bytearray)):
        raw = bytes(mac)
    else:
        try:
            raw = bytes(int(p, 16) for p in str(mac).split(":"))
        except ValueError:
            raw = b""
    if len(raw) != 6:
        raise L2Error(f"not a MAC address: {mac!r}")
    return raw


def _pad(frame: bytes) -> bytes:
    return frame + bytes(max(0, ETH_MIN - len(frame)))


def garp(mac: Union[str, bytes], vip, op: int = ARPOP_REQUEST) -> bytes:
    """A gratuitous ARP frame for IPv4 `vip` from `mac`, broadcast. The request form
    (RFC 5227's announcement: sender = target = VIP) is what Linux takes as gratuitous by
    default; the reply form needs the target MAC equal to the sender's to count."""
    mac = _mac_bytes(mac)
    ip = ipaddress.IPv4Address(vip).packed
    tha = mac if op == ARPOP_REPLY else bytes(6)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, ip, tha, ip)
    return _pad(BROADCAST + mac + struct.pack("!H", ETH_P_ARP) + arp)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def unsolicited_na(mac: Union[str, bytes], vip) -> bytes:
    """An unsolicited neighbour advertisement for IPv6 `vip` from `mac` (RFC 4861 7.2.6):
    to all nodes, override set, solicited clear, the target link-layer address option,
    hop limit 255 (receivers drop anything else)."""
    mac = _mac_bytes(mac)
    src = ipaddress.IPv6Address(vip).packed
    dst = ALL_NODES.packed
    body = struct.pack("!BBHI16sBB6s", ND_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE, src,
                       ND_OPT_TARGET_LLADDR, 1, mac)
    pseudo = src + dst + struct.pack("!I3xB", len(body), socket.IPPROTO_ICMPV6)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(body), socket.IPPROTO_ICMPV6, 255, src, dst)
    return ALL_NODES_MAC + mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def announcement_frames(mac: Union[str, bytes], vip) -> List[bytes]:
    """What one announcement of `vip` sends: for IPv4 the request and the reply forms of
    gratuitous ARP (neighbours differ in which one they heed), for IPv6 one unsolicited NA."""
    addr = ipaddress.ip_address(vip)
    if addr.version == 4:
        return [garp(mac, addr, ARPOP_REQUEST), garp(mac, addr, ARPOP_REPLY)]
    return [unsolicited_na(mac, addr)]


# -- the announcer -------------------------------------------------------------------------

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
        self.mac = _mac_bytes(mac) if mac is not None else bytes(own_mac)
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
            self._schedule(sorted(wanted, key=lambda a: (a.version, int(a))))

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


# -- lab / debugging tool ----------------------------------------------------------------

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
    return DesiredState(tuple(vips))


class _Tool:
    """Membership + L2Announcer + the announce flags of a pinned datapath, for a fixed set
    of VIP addresses for which every configured node is eligible."""

    def __init__(self, args):
        from ..datapath import Datapath
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
            from .. import netns
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


if __name__ == "__main__":
    sys.exit(main())
