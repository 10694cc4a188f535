"""Traffic through the namespace lab's VIP that proves an event (an upgrade) disturbed
nothing: 0 resets, 0 failed connects, every connection still on its backend.

- Streams: one long POST /echo per client source port. One background thread sends each
  body a small chunk at a time, round-robin over the (non-blocking) sockets, so every
  connection keeps sending client -> backend: the direction that crosses the balancer (the
  replies bypass it: direct server return). The lab's HTTP server (pyxlb/lab/http.py)
  answers "<backend> <bytes received>" once the whole body arrived; finish() sends the rest
  and reads every answer.
- Opener: a background thread opening new connections (GET /) throughout.
- Verdict: what went wrong, from the connections themselves and from the client's TCP
  counters; assert_clean() fails with all of it in one message.

Typical use (ports from the lab tests' `ports` fixture, tests/lab/conftest.py):

    with Streams(lab, 4, ports.take(200)) as streams, Opener(lab, 4) as opener:
        ...the event...
        opener.stop()
        streams.finish()
    Verdict.of(streams, opener).assert_clean()
"""

from __future__ import annotations

import math
import select
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from pyxlb.lab import BACKENDS, CLIENT, HTTP_PORT, Lab

from tests.lab.helpers import accepted_by, delta, read_to_end, tcp_counters, vip_addr

# The client's TCP MIB counters that say a connection failed (/proc/net/snmp):
# EstabResets: established connections closed by a reset; AttemptFails: connects that
# failed (reset or timed out in SYN-SENT); OutRsts: resets the client itself sent.
FAILURE_COUNTERS = ("EstabResets", "AttemptFails", "OutRsts")
TCPI_BYTES_ACKED = 120          # offset of tcpi_bytes_acked (u64) in struct tcp_info
TCP_INFO_SIZE = 128
POLL_BAD = select.POLLIN | select.POLLERR | select.POLLHUP | select.POLLRDHUP


def failure_kind(exc: BaseException) -> str:
    """A socket error as one word: reset, timeout, refused, or the error itself."""
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"          # EPIPE: the send after a reset already reported
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"        # a reset answering the SYN
    return f"error {exc!r}"


def bind_any(family: int) -> str:
    return "0.0.0.0" if family == 4 else "::"


def parse_reply(data: bytes) -> Tuple[str, str]:
    """(status line, body) of an HTTP/1.0 reply read to its end."""
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b"\r\n", 1)[0].decode(errors="replace"), body.decode(errors="replace")


# -- long-lived connections ---------------------------------------------------------------

@dataclass
class StreamResult:
    """One connection's outcome: the backend that answered and the bytes it says it
    received (None when it did not answer), and what went wrong (None: nothing)."""

    sport: int
    backend: Optional[str] = None
    received: Optional[int] = None
    error: Optional[str] = None
    error_at: Optional[float] = None      # time.monotonic() of the error


class Stream:
    """One POST /echo of `size` body bytes from client port `sport` to the VIP's `port`
    (the socket is non-blocking once connected)."""

    def __init__(self, lab: Lab, family: int, sport: int, size: int, timeout: float,
                 port: int = HTTP_PORT):
        self.sport, self.size, self.sent = sport, size, 0
        self.result = StreamResult(sport)
        self.sock = lab.client_socket(family)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # a chunk, a packet
            self.sock.bind((bind_any(family), sport))
            self.sock.settimeout(timeout)
            self.sock.connect((vip_addr(family), port))
            self.sock.sendall(f"POST /echo HTTP/1.0\r\nHost: vip\r\n"
                              f"Content-Length: {size}\r\n\r\n".encode())
            self.sock.setblocking(False)
        except BaseException:
            self.sock.close()
            raise

    @property
    def live(self) -> bool:
        return self.result.error is None

    def fail(self, kind: str) -> None:
        if self.live:
            self.result.error, self.result.error_at = kind, time.monotonic()

    def push(self, count: int) -> None:
        """Send up to `count` more body bytes without blocking (a full send buffer: none)."""
        try:
            self.sent += self.sock.send(body_bytes(self.sent, min(count, self.size - self.sent)))
        except BlockingIOError:
            pass
        except OSError as exc:
            self.fail(failure_kind(exc))

    def check_unexpected(self) -> None:
        """Called when the socket polled readable before its body was complete: a reset,
        the backend closing, or an answer too early."""
        try:
            data = self.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self.fail(failure_kind(exc))
            return
        self.fail(f"early reply {data[:40]!r}" if data else "closed")

    def acked(self) -> int:
        """Body and header bytes the backend acknowledged (tcpi_bytes_acked)."""
        raw = self.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_SIZE)
        return struct.unpack_from("Q", raw, TCPI_BYTES_ACKED)[0]

    def complete(self, deadline: float) -> None:
        """Send the rest of the body and read the answer, by `deadline`."""
        if not self.live:
            return
        try:
            self.sock.settimeout(max(0.1, deadline - time.monotonic()))
            self.sock.sendall(body_bytes(self.sent, self.size - self.sent))
            self.sent = self.size
            data = read_to_end(self.sock, 1 << 20, deadline)
        except OSError as exc:
            self.fail(failure_kind(exc))
            return
        status, body = parse_reply(data)
        parts = body.split()
        if not status.startswith("HTTP/1.0 200") or len(parts) != 2 or not parts[1].isdigit():
            self.fail(f"bad reply {data[:60]!r}" if data else "closed")
            return
        self.result.backend, self.result.received = parts[0], int(parts[1])
        if self.result.received != self.size:
            self.fail("short")

    def close(self) -> None:
        self.sock.close()


def stalled(before: Mapping[int, int], after: Mapping[int, int]) -> List[int]:
    """Client ports whose acknowledged bytes did not grow between two Streams.acked()
    readings (a port missing from `after` failed meanwhile, and counts too)."""
    return sorted(p for p, n in before.items() if after.get(p, n) <= n)


def body_bytes(offset: int, count: int) -> bytes:
    """Bytes [offset, offset+count) of every body: a repeating pattern."""
    return bytes((offset + i) % 251 for i in range(count))


class Streams:
    """Long-lived uploads through the VIP, one per client source port in `sports`.

    The sender thread sends `chunk` bytes on every live connection each `interval`
    seconds. It stops after `duration` seconds, or when every body is sent but its last
    chunk (kept back so no backend answers before finish()), or at finish(). The body size
    is what `duration` needs: chunk * (duration / interval + 1) bytes. `backends`: the
    nodes serving the VIP, where holders() looks (a KubeLab's are its nodes). `port`: the
    VIP's port; `served_port`: the port of the backends' sockets where it is another (a
    Kubernetes Service's targetPort, behind the node's DNAT)."""

    def __init__(self, lab: Lab, family: int, sports: Sequence[int], chunk: int = 64,
                 interval: float = 0.05, duration: float = 60.0, timeout: float = 5.0,
                 backends: Sequence[str] = BACKENDS, port: int = HTTP_PORT,
                 served_port: Optional[int] = None):
        assert sports and chunk > 0 and interval > 0 and duration > 0
        self.lab, self.family, self.sports = lab, family, list(sports)
        self.backends = tuple(backends)
        self.port = port
        self.served_port = port if served_port is None else served_port
        self.chunk, self.interval, self.duration, self.timeout = chunk, interval, duration, timeout
        self.size = chunk * (math.ceil(duration / interval) + 1)
        self.streams: List[Stream] = []
        self.rounds = 0                     # sender rounds done
        self.tcp_before: Dict[str, int] = {}
        self.tcp_after: Dict[str, int] = {}
        self.results: List[StreamResult] = []
        self._holders: Dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="streams")
        self._crash: Optional[BaseException] = None

    # -- life cycle -----------------------------------------------------------------------

    def start(self) -> "Streams":
        """Connect every stream, note which backend holds each, start the sender."""
        self.tcp_before = tcp_counters(self.lab, CLIENT)
        for sport in self.sports:
            self.streams.append(Stream(self.lab, self.family, sport, self.size, self.timeout,
                                       self.port))
        self._holders = accepted_by(self.lab, self.family, self.sports, timeout=self.timeout,
                                    backends=self.backends, port=self.served_port)
        self._thread.start()
        return self

    def __enter__(self) -> "Streams":
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the sender and close every socket (also after a failure)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for s in self.streams:
            s.close()

    # -- what they did -------------------------------------------------------------------

    def holders(self) -> Dict[int, str]:
        """{client source port: backend holding it} when the streams started (from the
        backends' own sockets: tests/lab/helpers.py accepted_by)."""
        return dict(self._holders)

    def acked(self) -> Dict[int, int]:
        """{client source port: bytes its backend acknowledged so far}, for live streams:
        two readings around an event show which connections kept transferring (stalled)."""
        return {s.sport: s.acked() for s in self.streams if s.live}

    def errors(self) -> Dict[int, str]:
        """{client source port: what went wrong} so far."""
        return {s.sport: s.result.error for s in self.streams if not s.live}

    def finish(self, timeout: float = 15.0) -> List[StreamResult]:
        """Stop the sender, send every body's rest, read every answer (all by `timeout`)."""
        self._stop.set()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "the streams' sender thread did not stop"
        if self._crash is not None:
            raise AssertionError(f"the streams' sender thread failed: {self._crash!r}")
        deadline = time.monotonic() + timeout
        for s in self.streams:
            s.complete(deadline)
        self.tcp_after = tcp_counters(self.lab, CLIENT)
        self.results = [s.result for s in self.streams]
        return self.results

    # -- the sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._send_rounds()
        except BaseException as exc:      # noqa: BLE001 - reported by finish()
            self._crash = exc

    def _send_rounds(self) -> None:
        poller = select.poll()
        for s in self.streams:
            poller.register(s.sock, POLL_BAD)
        by_fd = {s.sock.fileno(): s for s in self.streams}
        deadline = time.monotonic() + self.duration
        quota = self.size - self.chunk          # the last chunk waits for finish()
        while not self._stop.is_set() and time.monotonic() < deadline:
            busy = [s for s in self.streams if s.live and s.sent < quota]
            if not busy:
                break
            for s in busy:
                s.push(min(self.chunk, quota - s.sent))
            for fd, _ in poller.poll(0):
                by_fd[fd].check_unexpected()
                if not by_fd[fd].live:
                    poller.unregister(fd)
            self.rounds += 1
            self._stop.wait(self.interval)


# -- new connections ----------------------------------------------------------------------

@dataclass
class OpenerReport:
    successes: int = 0
    failed_connects: int = 0     # refused (a reset answering the SYN) or timed out connecting
    resets: int = 0              # reset once connected
    timeouts: int = 0            # connected, then no complete answer in time
    other: int = 0               # any other failure (a bad answer, an unexpected error)
    errors: List[Tuple[float, str]] = field(default_factory=list)   # (monotonic, what)
    backends: Counter = field(default_factory=Counter)              # answers per backend
    slowest_connect: float = 0.0  # over ~1 s: a SYN was retransmitted

    @property
    def attempts(self) -> int:
        return self.successes + self.failed_connects + self.resets + self.timeouts + self.other

    @property
    def failures(self) -> int:
        return self.attempts - self.successes

    def failed(self, started: float, what: str, counter: str) -> None:
        setattr(self, counter, getattr(self, counter) + 1)
        self.errors.append((started, what))


AFTER_CONNECT = {"reset": "resets", "timeout": "timeouts"}     # failure kind -> counter


class Opener:
    """A background thread opening a new connection to the VIP (GET /, from an ephemeral
    port) every `pace` seconds, until stop(), `max_count` attempts or `max_seconds`."""

    def __init__(self, lab: Lab, family: int, pace: float = 0.03, max_count: int = 3000,
                 max_seconds: float = 90.0, timeout: float = 3.0):
        self.lab, self.family, self.pace = lab, family, pace
        self.max_count, self.max_seconds, self.timeout = max_count, max_seconds, timeout
        self.report = OpenerReport()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="opener")

    def start(self) -> "Opener":
        self._thread.start()
        return self

    def stop(self) -> OpenerReport:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout + 5)
        assert not self._thread.is_alive(), "the opener thread did not stop"
        return self.report

    def __enter__(self) -> "Opener":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.max_count):
            if self._stop.is_set() or time.monotonic() > deadline:
                break
            started = time.monotonic()
            try:
                self._one(started)
            except BaseException as exc:      # noqa: BLE001 - every failure is the finding
                self.report.failed(started, f"unexpected {exc!r}", "other")
            self._stop.wait(max(0.0, started + self.pace - time.monotonic()))

    def _one(self, started: float) -> None:
        r = self.report
        sock = self.lab.client_socket(self.family)
        try:
            sock.settimeout(self.timeout)
            try:
                sock.connect((vip_addr(self.family), HTTP_PORT))
            except OSError as exc:
                r.failed(started, f"connect: {failure_kind(exc)}", "failed_connects")
                return
            r.slowest_connect = max(r.slowest_connect, time.monotonic() - started)
            try:
                sock.sendall(b"GET / HTTP/1.0\r\nHost: vip\r\n\r\n")
                data = read_to_end(sock, 1 << 20, started + self.timeout)
            except OSError as exc:
                kind = failure_kind(exc)
                r.failed(started, kind, AFTER_CONNECT.get(kind, "other"))
                return
            status, body = parse_reply(data)
            if not status.startswith("HTTP/1.0 200") or not body.split():
                r.failed(started, f"bad reply {data[:60]!r}", "other")
                return
            r.successes += 1
            r.backends[body.split()[0]] += 1
        finally:
            sock.close()


# -- the verdict --------------------------------------------------------------------------

@dataclass
class Verdict:
    """What the traffic says went wrong. Empty everywhere: nothing was disturbed."""

    streams: int
    holders: Dict[int, str]                 # client port -> backend at the start
    errors: Dict[int, str]                  # client port -> reset / timeout / short / ...
    moved: Dict[int, Tuple[str, str]]       # client port -> (backend at start, at the end)
    short: Dict[int, Tuple[int, int]]       # client port -> (bytes received, body size)
    tcp: Dict[str, int]                     # the client's FAILURE_COUNTERS, change
    opener: Optional[OpenerReport] = None

    @classmethod
    def of(cls, streams: Streams, opener: Optional[Opener] = None) -> "Verdict":
        """The verdict on finished `streams` (and an `opener` that ran meanwhile)."""
        assert streams.results, "Verdict.of needs streams that finished"
        holders = streams.holders()
        done = [r for r in streams.results if r.backend is not None]
        change = delta(streams.tcp_after, streams.tcp_before)
        return cls(
            streams=len(streams.results), holders=holders,
            errors={r.sport: r.error for r in streams.results if r.error},
            moved={r.sport: (holders[r.sport], r.backend) for r in done
                   if r.backend != holders[r.sport]},
            short={r.sport: (r.received, streams.size) for r in done
                   if r.received != streams.size},
            tcp={k: change.get(k, 0) for k in FAILURE_COUNTERS},
            opener=opener.report if opener is not None else None)

    def reset_ports(self) -> List[int]:
        return sorted(p for p, e in self.errors.items() if e == "reset")

    def problems(self) -> List[str]:
        """One line per kind of disturbance (none: the traffic was undisturbed)."""
        out = []
        kinds = Counter(self.errors.values())
        if kinds:
            out.append(f"{len(self.errors)} of {self.streams} streams failed "
                       f"({', '.join(f'{k}: {n}' for k, n in kinds.most_common())}): "
                       f"{_sample(self.errors, self.holders)}")
        if self.moved:
            out.append(f"{len(self.moved)} streams ended on another backend "
                       f"(port: start -> end): "
                       f"{_sample({p: f'{a} -> {b}' for p, (a, b) in self.moved.items()})}")
        if self.short:
            out.append(f"{len(self.short)} streams were answered short (port: got/size): "
                       f"{_sample({p: f'{g}/{n}' for p, (g, n) in self.short.items()})}")
        bad = {k: v for k, v in self.tcp.items() if v}
        if bad:
            out.append(f"client TCP counters: {', '.join(f'{k} +{v}' for k, v in bad.items())}")
        o = self.opener
        if o is not None and (o.failures or not o.successes):
            out.append(f"opener: {o.successes} ok, {o.failed_connects} failed connects, "
                       f"{o.resets} resets, {o.timeouts} timeouts, {o.other} other; "
                       f"first errors {[what for _, what in o.errors[:5]]}")
        return out

    def assert_clean(self) -> None:
        """Fail, with every problem in the message, unless nothing was disturbed."""
        problems = self.problems()
        spread = Counter(self.holders.values())
        assert not problems, \
            f"traffic was disturbed ({self.streams} streams on " \
            f"{dict(sorted(spread.items()))}" \
            f"{f', opener {self.opener.attempts} attempts' if self.opener else ''}):\n  " + \
            "\n  ".join(problems)


def _sample(by_port: Mapping[int, str], holders: Optional[Mapping[int, str]] = None,
            limit: int = 12) -> str:
    items = sorted(by_port.items())
    text = ", ".join(f"{p}{f'@{holders[p]}' if holders else ''}: {v}" for p, v in items[:limit])
    return text + (f" ... ({len(items) - limit} more)" if len(items) > limit else "")
