"""The health checker: probes, the up/down state machine, and the one loop that runs them.

Every (VIP, backend) with a check (`Vip.health_for(backend)`, type tcp or http) is a
Target. The loop is a plain epoll loop on one thread (no asyncio: a check is a few
non-blocking syscalls, and a hand-made loop spends the least CPU between them):

- **tcp**: the connection is established within the timeout;
- **http**: then `GET path HTTP/1.0` with `Host:` the VIP, and a status line whose code is
  in `expect` (e.g. "200-399", "200,204"), within the same timeout.

A check through the tunnel binds its socket, registers it with the Tunnel (tc programs
then address its packets to the VIP and encapsulate them to the backend as the balancer
does) and connects to the backend's address; a direct check just connects there. Every
check socket is closed with SO_LINGER 0: the connection ends with a RST and leaves no
TIME_WAIT behind (a thousand checks a second would otherwise keep 60,000 sockets in it).

Checks are spread over the interval: each target's first check is at a random point of
its first interval, the next ones an interval (±5%) after the previous start, so 1,000
targets at 1 s make about one check per millisecond, not a burst each second. At most
`max_in_flight` checks run at once; a check that finds the previous one of its target
still running is skipped.

The state machine: `fall` failures in a row turn an up target down, `rise` successes in a
row a down one up. A target starts with the verdict the datapath holds (a restarted
checker goes on from the last known states), and up when it was never checked. A change
is logged once, counted, and handed to `on_change` with every other change of the same
loop turn, so changes that happen together are applied together.
"""

from __future__ import annotations

import _socket
import collections
import errno
import heapq
import logging
import os
import random
import select
import socket
import struct
import threading
import time
from typing import Callable, Deque, Dict, Iterable, List, Optional, Tuple

log = logging.getLogger("pyxlb.health")

TYPES = ("tcp", "http")                 # the checks that probe; "none" checks nothing
LINGER_RST = struct.pack("ii", 1, 0)    # SO_LINGER on, 0 s: close() sends a RST
MAX_STATUS_LINE = 4096                  # an HTTP reply's first line must come within this
DEFAULT_MAX_IN_FLIGHT = 512
JITTER = 0.05                           # each interval is drawn from interval × (1 ± JITTER)
SLOT = 0.005                            # a loop turn lasts at least this long (see turn())

_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK
_SOL_SOCKET, _SO_LINGER, _SO_ERROR = socket.SOL_SOCKET, socket.SO_LINGER, socket.SO_ERROR
_EVENT_READ = select.EPOLLIN
_EVENT_WRITE = select.EPOLLOUT
_EVENT_BAD = select.EPOLLERR | select.EPOLLHUP


class ExpectError(ValueError):
    pass


def parse_expect(text) -> Tuple[Tuple[int, int], ...]:
    """HTTP status codes accepted, "200-399" or "200,204,300-308", as (low, high) ranges."""
    out = []
    for part in str(text).split(","):
        part = part.strip()
        low, sep, high = part.partition("-")
        try:
            lo = int(low)
            hi = int(high) if sep else lo
        except ValueError:
            raise ExpectError(f"expect: {text!r} is not a list of status codes and "
                              f"ranges (e.g. 200-399 or 200,204)") from None
        if not 100 <= lo <= hi <= 599:
            raise ExpectError(f"expect: {part!r} is not a range of status codes 100-599")
        out.append((lo, hi))
    if not out:
        raise ExpectError("expect: empty")
    return tuple(out)


def _reason(err: int) -> str:
    """An errno as a check's reason: "connection refused", "no route to host"."""
    return os.strerror(err).lower() if err else "failed"


class Target:
    """One (VIP, backend) and what its checks found (every field is read by status())."""

    __slots__ = ("key", "labels", "vip", "backend", "spec", "mode", "family", "addr", "port", "via",
                 "request", "expect", "up", "successes", "failures", "since", "last_ok",
                 "last_check", "last_error", "last_seconds", "checks", "failed_checks",
                 "transitions", "due", "token", "prepared",
                 # the check in flight (sock is None when there is none)
                 "sock", "fd", "started", "deadline", "sent", "buf", "tunneled")

    def __init__(self, vip, backend, spec, up: bool, now_wall: float):
        self.key = (vip.key, backend.address)
        self.labels = (str(vip.key), str(backend.address))
        self.up = up
        self.successes = self.failures = 0
        self.since = now_wall           # wall time of the last transition (or of the start)
        self.last_ok: Optional[bool] = None
        self.last_check: Optional[float] = None
        self.last_error: Optional[str] = None
        self.last_seconds: Optional[float] = None
        self.checks = self.failed_checks = 0
        self.transitions = {"up": 0, "down": 0}
        self.due = 0.0                  # when the next check starts (-1: removed)
        self.token = 0                  # which entry of the timing wheel is the live one
        self.prepared = False
        self.sock = None
        self.fd = -1
        self.started = self.deadline = 0.0
        self.sent = self.tunneled = False
        self.buf = b""
        self.configure(vip, backend, spec)

    def configure(self, vip, backend, spec) -> None:
        """Take (possibly new) settings; the verdict and the counts stay."""
        self.vip, self.backend, self.spec = vip, backend, spec
        self.mode = vip.mode
        self.via = spec.via
        self.port = spec.port_for(vip.key)
        self.addr = str(backend.address)
        self.family = socket.AF_INET if backend.address.version == 4 else socket.AF_INET6
        self.expect = parse_expect(spec.expect)
        if spec.type == "http":
            host = vip.key.address
            host = f"[{host}]" if host.version == 6 else str(host)
            if self.port != 80:
                host += f":{self.port}"
            path = spec.path
            self.request = (f"GET {path} HTTP/1.0\r\nHost: {host}\r\n"
                            f"User-Agent: pyxlb-health\r\nConnection: close\r\n\r\n").encode()
        else:
            self.request = None

    @property
    def name(self) -> str:
        return f"VIP {self.key[0]} backend {self.key[1]}"

    def row(self) -> list:
        """The status as a list, in the order of COLUMNS (the status file's rows)."""
        spec = self.spec
        return [self.labels[0], self.labels[1], spec.type, self.via, self.port,
                spec.path if spec.type == "http" else None, spec.interval, spec.timeout,
                spec.rise, spec.fall, "up" if self.up else "down", self.since,
                self.last_check,
                None if self.last_ok is None else ("ok" if self.last_ok else "fail"),
                self.last_error, self.last_seconds, self.successes, self.failures,
                self.checks, self.failed_checks, dict(self.transitions)]

    def status(self) -> dict:
        """Plain data for `pyxlb health`, the status file and the metrics: {COLUMNS...}."""
        return dict(zip(COLUMNS, self.row()))


COLUMNS = ("vip", "backend", "type", "via", "port", "path", "interval", "timeout", "rise",
           "fall", "verdict", "since", "last_check", "last_result", "last_error",
           "last_seconds", "successes", "failures", "checks", "failed_checks", "transitions")


class Change:
    """A verdict that changed: target's key, the new verdict, the reason."""

    __slots__ = ("key", "up", "reason")

    def __init__(self, key, up: bool, reason: str):
        self.key, self.up, self.reason = key, up, reason

    def __repr__(self):
        return f"Change({self.key[0]} {self.key[1]} -> {'up' if self.up else 'down'})"


class Checker:
    """Runs the checks of every target on one epoll loop (see the module docstring).

    `tunnel`: a pyxlb.health.tunnel.Tunnel (or None: checks through the tunnel fail with
    `tunnel_error` as their reason). `on_change(changes)`: called on the loop's thread with
    a list of Change, every time some verdicts changed. `on_tick()`: called on the loop's
    thread every `tick` seconds (the service refreshes the targets and writes its status
    file there). `on_result(target, ok, seconds)`: after each check (metrics)."""

    def __init__(self, *, tunnel=None, tunnel_error: str = "no tunnel",
                 on_change: Optional[Callable[[List[Change]], None]] = None,
                 on_tick: Optional[Callable[[], None]] = None, tick: float = 1.0,
                 on_result: Optional[Callable[[Target, bool, float], None]] = None,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, slot: float = SLOT,
                 rng: Optional[random.Random] = None):
        self.tunnel = tunnel
        self.slot = slot
        self._bucket = slot or 0.001        # the timing wheel's resolution, seconds
        self.tunnel_error = tunnel_error
        self.on_change = on_change
        self.on_tick = on_tick
        self.on_result = on_result
        self.tick = tick
        self.max_in_flight = max_in_flight
        self.rng = rng or random.Random()
        self.targets: Dict[tuple, Target] = {}
        self._sorted: Optional[List[Target]] = None     # targets in order, for rows()
        self.lock = threading.Lock()        # targets: updated here, read by other threads
        # the timing wheel: {slot number: [(target, token)]} and a heap of those numbers;
        # an entry whose token is no longer its target's is stale and skipped
        self._wheel: Dict[int, List[Tuple[Target, int]]] = {}
        self._buckets: List[int] = []
        # checks in flight by timeout, in start order: their deadlines are in order too,
        # so the earliest is the first (cheaper than a heap); finished ones leave lazily
        self._deadlines: Dict[float, Deque[Tuple[float, Target]]] = {}
        self._inflight: Dict[int, Target] = {}                   # fd -> target
        self._changes: List[Change] = []
        self._ep = select.epoll()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._ep.register(self._wake_r, _EVENT_READ)
        self._stop = False
        self._next_tick = 0.0

    # -- the targets ----------------------------------------------------------------------

    def update(self, state, now: Optional[float] = None) -> Tuple[int, int]:
        """Make the targets those of `state` (on the loop's thread, or before run): new
        ones start with the verdict the state holds (`Backend.down`), existing ones keep
        theirs and take new settings. Returns (targets added, targets removed)."""
        now = time.monotonic() if now is None else now
        wall = time.time()
        seen = set()
        added = 0
        with self.lock:
            for vip in state:
                for b in vip.backends:
                    spec = vip.health_for(b)
                    if spec is None or spec.type not in TYPES:
                        continue
                    key = (vip.key, b.address)
                    seen.add(key)
                    t = self.targets.get(key)
                    if t is None:
                        t = Target(vip, b, spec, not b.down, wall)
                        self.targets[key] = t
                        self._schedule(t, now + self.rng.random() * spec.interval)
                        added += 1
                    elif t.spec != spec or t.vip.mode != vip.mode:
                        t.configure(vip, b, spec)
                        t.prepared = False
                        self._schedule(t, now + self.rng.random() * spec.interval)
                    else:
                        t.vip, t.backend = vip, b
            gone = [k for k in self.targets if k not in seen]
            if added or gone:
                self._sorted = None
            for k in gone:
                t = self.targets.pop(k)
                t.due = -1.0            # removed: record() ignores it
                t.token += 1            # its wheel entries are dropped when they come up
                self._end(t, None, None)
        return added, len(gone)

    def _schedule(self, t: Target, when: float) -> None:
        """Put t's next check in the timing wheel, at `when` (to within a slot)."""
        t.due = when
        t.token += 1
        bucket = int(when / self._bucket)
        entries = self._wheel.get(bucket)
        if entries is None:
            entries = self._wheel[bucket] = []
            heapq.heappush(self._buckets, bucket)
        entries.append((t, t.token))

    # -- running --------------------------------------------------------------------------

    def wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def tick_now(self) -> None:
        """Call on_tick at the loop's next turn (from any thread)."""
        self._next_tick = 0.0
        self.wake()

    def stop(self) -> None:
        """End run() (from any thread)."""
        self._stop = True
        self.wake()

    def run(self) -> None:
        """Check until stop(); then close every socket in flight."""
        self._next_tick = time.monotonic()
        try:
            while not self._stop:
                try:
                    self.turn()
                except Exception:   # a bug must not end the checks in silence
                    log.exception("health: the check loop failed; going on")
                    time.sleep(self.tick)
        finally:
            for t in list(self._inflight.values()):
                self._end(t, None, None)

    def turn(self, max_wait: float = 1.0) -> None:
        """One turn of the loop: start the checks that are due, wait for sockets (at most
        until the next due time or deadline), handle what they say, time out the late
        ones, and report the changes.

        A turn lasts at least `slot` seconds: what becomes due or ready meanwhile waits
        for the next turn, so that a busy checker handles a few sockets per turn instead
        of paying a turn for each (times are then measured to within a slot)."""
        now = started = time.monotonic()
        if now >= self._next_tick and self.on_tick is not None:
            self._next_tick = now + self.tick
            try:
                self.on_tick()
            except Exception:       # a failing tick must not stop the checks
                log.exception("health: periodic work failed")
            now = time.monotonic()
        self._start_due(now)
        wait = max_wait
        if self._buckets and len(self._inflight) < self.max_in_flight:
            wait = min(wait, self._buckets[0] * self._bucket - now)
        for queue in self._deadlines.values():
            if queue:
                wait = min(wait, queue[0][0] - now)
        if self.on_tick is not None:
            wait = min(wait, self._next_tick - now)
        if self._changes:
            wait = 0
        events = self._ep.poll(max(0.0, wait), 256)
        inflight = self._inflight
        while True:
            for fd, ev in events:
                t = inflight.get(fd)
                if t is not None:
                    self._event(t, ev)
                elif fd == self._wake_r:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
            if len(events) < 256:
                break
            events = self._ep.poll(0, 256)
        # deadlines after the answers: a check whose answer came while the loop was busy
        # (a first check's tunnel preparation, a tick) is not timed out for the wait; the
        # deadlines are judged by the time this turn began
        self._expire(now)
        if self._changes:
            changes, self._changes = self._changes, []
            if self.on_change is not None:
                try:
                    self.on_change(changes)
                except Exception:
                    log.exception("health: applying %d verdict changes failed", len(changes))
        rest = started + self.slot - time.monotonic()
        if rest > 0 and not self._stop:
            time.sleep(rest)

    def _start_due(self, now: float) -> None:
        """Start the checks of every bucket of the wheel up to now, as many as fit."""
        wheel, buckets, inflight = self._wheel, self._buckets, self._inflight
        rand, limit, current = self.rng.random, self.max_in_flight, int(now / self._bucket)
        while buckets and buckets[0] <= current:
            bucket = heapq.heappop(buckets)
            entries = wheel.pop(bucket)
            for n, (t, token) in enumerate(entries):
                if t.token != token:
                    continue            # rescheduled or removed since
                if len(inflight) >= limit:      # the rest wait for the next slot
                    late = [e for e in entries[n:] if e[0].token == e[1]]
                    wheel.setdefault(current + 1, []).extend(late)
                    if len(wheel[current + 1]) == len(late):
                        heapq.heappush(buckets, current + 1)
                    return
                interval = t.spec.interval
                nxt = t.due + interval * (1.0 + JITTER * (2.0 * rand() - 1.0))
                if nxt <= now:          # far behind (a stalled loop): start a fresh phase
                    nxt = now + rand() * interval
                self._schedule(t, nxt)
                if t.sock is None:
                    self._start(t, now)

    def _start(self, t: Target, now: float) -> None:
        try:
            # the C socket type: socket.socket's Python layer costs a few µs per check
            sock = _socket.socket(t.family, _STREAM_NONBLOCK)
        except OSError as exc:
            self.record(t, False, f"socket: {_reason(exc.errno)}", 0.0)
            return
        t.sock, t.fd, t.started = sock, sock.fileno(), now
        t.sent, t.buf, t.tunneled = False, b"", False
        try:
            sock.setsockopt(_SOL_SOCKET, _SO_LINGER, LINGER_RST)
            if t.via == "tunnel":
                if self.tunnel is None:
                    raise _Refused(f"through the tunnel: {self.tunnel_error}")
                vip, backend = t.key[0].address, t.key[1]
                if not t.prepared:      # attach to the route's interface, check the path
                    self.tunnel.prepare(vip, backend, t.mode)
                    t.prepared = True
                sock.bind(("0.0.0.0", 0) if t.family == socket.AF_INET else ("::", 0))
                self.tunnel.register(sock, vip, backend, t.mode)
                t.tunneled = True
            err = sock.connect_ex((t.addr, t.port))
        except _Refused as exc:
            self._end(t, False, str(exc), count_time=False)
            return
        except OSError as exc:
            self._end(t, False, _reason(exc.errno), count_time=False)
            return
        except Exception as exc:        # the tunnel refused (TunnelError: mixed families...)
            self._end(t, False, f"through the tunnel: {exc}", count_time=False)
            return
        if err and err != errno.EINPROGRESS:
            self._end(t, False, _reason(err), count_time=False)
            return
        self._inflight[t.fd] = t
        self._ep.register(t.fd, _EVENT_WRITE)
        t.deadline = deadline = now + t.spec.timeout
        queue = self._deadlines.get(t.spec.timeout)
        if queue is None:
            queue = self._deadlines[t.spec.timeout] = collections.deque()
        queue.append((deadline, t))

    def _expire(self, now: float) -> None:
        for queue in self._deadlines.values():
            while queue:
                deadline, t = queue[0]
                if t.sock is None or t.deadline != deadline:
                    queue.popleft()         # finished already
                elif deadline <= now:
                    queue.popleft()
                    what = "no status line" if t.sent else "no connection"
                    self._end(t, False, f"timed out after {t.spec.timeout:g} s ({what})")
                else:
                    break

    def _event(self, t: Target, ev: int) -> None:
        sock = t.sock
        if not t.sent:                  # connecting
            if ev & _EVENT_BAD:
                self._end(t, False, _reason(sock.getsockopt(_SOL_SOCKET, _SO_ERROR)))
            elif t.request is None:
                self._end(t, True, None)
            else:
                try:
                    sock.send(t.request)
                except OSError as exc:
                    self._end(t, False, _reason(exc.errno))
                    return
                t.sent = True
                self._ep.modify(t.fd, _EVENT_READ)
            return
        try:
            chunk = sock.recv(MAX_STATUS_LINE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._end(t, False, _reason(exc.errno))
            return
        if not chunk:
            self._end(t, False, "connection closed before a status line")
            return
        t.buf += chunk
        end = t.buf.find(b"\n")
        if end < 0:
            if len(t.buf) >= MAX_STATUS_LINE:
                self._end(t, False, "no status line in the first 4 KiB")
            return
        self._end(t, *judge(t.buf[:end].rstrip(b"\r"), t.expect))

    def _end(self, t: Target, ok: Optional[bool], error: Optional[str],
             count_time: bool = True) -> None:
        """End t's check: close its socket; unless `ok` is None, record the result."""
        sock = t.sock
        if sock is None:
            return
        t.sock = None
        self._inflight.pop(t.fd, None)
        # closed before it is unregistered: the RST close() sends must go through the
        # tunnel too, or the backend never sees it and keeps its end of the connection
        # (FIN_WAIT2 for a minute); a later check from the same port then meets that
        # stale connection and times out
        sock.close()            # also takes it out of the epoll set
        if t.tunneled:
            t.tunneled = False
            try:
                self.tunnel.unregister(sock)
            except Exception as exc:
                log.warning("health: %s: unregistering a check socket: %s", t.name, exc)
        if ok is not None:
            self.record(t, ok, error,
                        time.monotonic() - t.started if count_time else 0.0)

    # -- the state machine -------------------------------------------------------------------

    def record(self, t: Target, ok: bool, error: Optional[str], seconds: float) -> None:
        """Count one check of `t` (ok, or failed saying `error`), turning its verdict as rise
        and fall say; a change is logged and queued for on_change."""
        if t.due < 0:
            return              # removed while its check ran
        t.checks += 1
        t.last_ok = ok
        t.last_check = time.time()
        t.last_seconds = seconds
        spec = t.spec
        if ok:
            t.successes += 1
            t.failures = 0
            if not t.up and t.successes >= spec.rise:
                self._transition(t, True, f"{t.successes} successes")
        else:
            t.failed_checks += 1
            t.last_error = error
            t.failures += 1
            t.successes = 0
            if t.up and t.failures >= spec.fall:
                self._transition(t, False, f"{t.failures} failures: {error}")
        if self.on_result is not None:
            self.on_result(t, ok, seconds)

    def _transition(self, t: Target, up: bool, reason: str) -> None:
        t.up = up
        t.since = time.time()
        to = "up" if up else "down"
        t.transitions[to] += 1
        log.warning("health: %s: %s -> %s (%s check%s: %s)", t.name,
                    "down" if up else "up", to, t.spec.type,
                    "" if t.via == "tunnel" else f" {t.via}", reason)
        self._changes.append(Change(t.key, up, reason))

    # -- reading -------------------------------------------------------------------------------

    def status(self) -> List[dict]:
        """Every target's status (Target.status), in VIP then backend order."""
        return [dict(zip(COLUMNS, r)) for r in self.rows()]

    def rows(self) -> List[list]:
        """Every target's Target.row(), in VIP then backend order."""
        with self.lock:
            if self._sorted is None:
                self._sorted = sorted(self.targets.values(), key=_order)
            targets = self._sorted
        return [t.row() for t in targets]

    def verdicts(self) -> Dict[tuple, bool]:
        """{(VipKey, backend address): up}."""
        with self.lock:
            return {k: t.up for k, t in self.targets.items()}

    def close(self) -> None:
        for t in list(self._inflight.values()):
            self._end(t, None, None)
        self._ep.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class _Refused(Exception):
    pass


def _order(t: Target):
    return (t.key[0], t.key[1].version, t.key[1])


def judge(line: bytes, expect) -> Tuple[bool, Optional[str]]:
    """(passed, why not) of an HTTP status line against the accepted codes."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False, f"not an HTTP status line: {line[:40]!r}"
    code = int(parts[1])
    if any(lo <= code <= hi for lo, hi in expect):
        return True, None
    return False, f"HTTP {code}"


def changed_state(state, changes: Iterable[Change]):
    """`state` (a DesiredState) with the verdicts of `changes` set, or None if that
    changes nothing (the backends went meanwhile, or have those verdicts already)."""
    new = state.with_verdicts({c.key: not c.up for c in changes})
    return None if new == state else new
