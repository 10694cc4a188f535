"""The socket generator of bench/lab_throughput.py (--generator socket): frames that really
leave an interface, without live frames.

An AF_PACKET socket bound to the generator's end of a veth, with PACKET_QDISC_BYPASS (no
qdisc: each frame goes straight to the veth's transmit function), sends precomputed
frames with sendmmsg(2) through ctypes, up to SEND_BATCH frames a system call, so Python
costs next to nothing a packet (ctypes lets go of the GIL for the call: one Sender a
thread sends on each CPU at once). The frames are built with numpy (a dependency of
matplotlib, the bench extra) and are exactly those gen.bpf.c writes for the same flows
(the IPv4 identification is 0 here), so a flow table filled or a conntrack table opened
by one generator holds the flows of the other: build_frames() the established flows of
its GEN_SHARED mode (flow f: source port 1024 + f % 8976, host part 1 + f / 8976 of the
clients' /16 or /96, an ACK for odd f, UDP for even f), build_new_frames() the new flows
of one CPU's sequence (a TCP SYN for odd numbers, UDP for even ones). A send cycles over
a list of frame indices (a numpy array): all flows in order, a CPU's share of them, each
flow twice in a row (admission), or a part.

On a veth the receiver's NAPI runs on the sending CPU when the sending system call
re-enables bottom halves, so the forwarder and the sink run in the sending thread's own
time (and, for softirq work the kernel defers, in ksoftirqd's on that CPU): see
lab_throughput.py's docstring for how their cost is taken from that.
"""

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import time
from typing import Dict, Tuple

import numpy as np

SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
SEND_BATCH = 1024               # frames a sendmmsg call
MMSGHDR = 64                    # sizeof(struct mmsghdr) on 64-bit Linux
IOVEC = 16                      # sizeof(struct iovec)

SHARED_SPORT = 1024             # gen.bpf.c GEN_SHARED_SPORT
SHARED_PORTS = 8976             # gen.bpf.c GEN_SHARED_PORTS
NEW_SPORT = 16384               # gen.bpf.c GEN_NEW_SPORT: new flows' ports 16384..49151
NEW_FLOWS = 1 << 29             # new flows a CPU before its numbers repeat
L4_LEN = 30                     # gen.bpf.c GEN_L4_LEN: the TCP or UDP segment
TCP, UDP = 6, 17

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_libc.sendmmsg.restype = ctypes.c_int


def _fold(total: np.ndarray) -> np.ndarray:
    """Ones' complement of the folded 16-bit sum (a checksum field's value)."""
    total = total.astype(np.uint64)
    for _ in range(3):
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF).astype(np.uint16)


def _words(a: np.ndarray) -> np.ndarray:
    """Sum of the big-endian 16-bit words of each row of a uint8 array (even width)."""
    return np.ascontiguousarray(a).view(">u2").astype(np.uint64).sum(axis=1)


def build_frames(flows: int, family: int, dmac: bytes, smac: bytes, clients: str, vip: str,
                 dport: int) -> np.ndarray:
    """`flows` established flows' frames (rows of a uint8 array), flow f numbered as
    gen.bpf.c's GEN_SHARED numbers it: 64 bytes over IPv4, 84 over IPv6."""
    f = np.arange(flows, dtype=np.uint64)
    host = (1 + f // SHARED_PORTS).astype(np.uint32)
    sport = (SHARED_SPORT + f % SHARED_PORTS).astype(np.uint16)
    return _frames(host, sport, (f & 1).astype(bool), False, family, dmac, smac, clients,
                   vip, dport)


def build_new_frames(first: int, count: int, cpu: int, family: int, dmac: bytes,
                     smac: bytes, clients: str, vip: str, dport: int) -> np.ndarray:
    """`count` new flows' frames, a flow a frame, numbered first .. first + count - 1 as
    gen.bpf.c numbers the new flows of CPU `cpu` (its per-CPU sequence n): source port
    NEW_SPORT + n % 32768, host part (cpu << 14) | (n / 32768) % 16384, a TCP SYN for odd
    n, UDP for even n. Never the ports of established flows; distinct for each CPU (0-3)
    and each n below 2^29."""
    if not 0 <= cpu < 4 or first < 0 or first + count > NEW_FLOWS:
        raise ValueError(f"new flows {first}..{first + count - 1} of CPU {cpu}: the "
                         f"numbering holds {NEW_FLOWS} a CPU (0-3)")
    n = np.arange(first, first + count, dtype=np.uint64)
    host = ((cpu << 14) | ((n >> 15) & 0x3FFF)).astype(np.uint32)
    sport = (NEW_SPORT + (n & 0x7FFF)).astype(np.uint16)
    return _frames(host, sport, (n & 1).astype(bool), True, family, dmac, smac, clients,
                   vip, dport)


def _frames(host: np.ndarray, sport: np.ndarray, tcp: np.ndarray, syn: bool, family: int,
            dmac: bytes, smac: bytes, clients: str, vip: str, dport: int) -> np.ndarray:
    """A frame for each row of host (the client's host part), sport and tcp (else UDP):
    TCP segments are SYNs when `syn`, else ACKs."""
    flows = len(host)
    v6 = family == 6
    ip_len = 40 if v6 else 20
    length = 14 + ip_len + L4_LEN
    frames = np.zeros((flows, length), dtype=np.uint8)
    frames[:, 0:6] = np.frombuffer(dmac, np.uint8)
    frames[:, 6:12] = np.frombuffer(smac, np.uint8)
    proto = np.where(tcp, TCP, UDP).astype(np.uint8)
    src_base = np.frombuffer(socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET,
                                              clients), np.uint8)
    host_be = host.astype(">u4").view(np.uint8).reshape(flows, 4)
    if v6:
        frames[:, 12:14] = (0x86, 0xDD)
        frames[:, 14] = 0x60
        frames[:, 18:20] = (0, L4_LEN)
        frames[:, 20] = proto
        frames[:, 21] = 64
        frames[:, 22:34] = src_base[:12]
        frames[:, 34:38] = host_be | src_base[12:16]
        frames[:, 38:54] = np.frombuffer(socket.inet_pton(socket.AF_INET6, vip), np.uint8)
        pseudo = _words(frames[:, 22:54]) + L4_LEN + proto.astype(np.uint64)
    else:
        frames[:, 12:14] = (0x08, 0x00)
        frames[:, 14] = 0x45
        frames[:, 16:18] = (0, 20 + L4_LEN)
        frames[:, 20:22] = (0x40, 0x00)             # DF
        frames[:, 22] = 64
        frames[:, 23] = proto
        frames[:, 26:30] = host_be | src_base
        frames[:, 30:34] = np.frombuffer(socket.inet_aton(vip), np.uint8)
        check = _fold(_words(frames[:, 14:34]))
        frames[:, 24:26] = check.astype(">u2").view(np.uint8).reshape(flows, 2)
        pseudo = _words(frames[:, 26:34]) + L4_LEN + proto.astype(np.uint64)
    l4 = 14 + ip_len
    frames[:, l4:l4 + 2] = sport.astype(">u2").view(np.uint8).reshape(flows, 2)
    frames[:, l4 + 2:l4 + 4] = np.frombuffer(struct.pack("!H", dport), np.uint8)
    # TCP: seq 1, data offset 5, window 512; an ACK (ack 1) or a SYN
    t = np.nonzero(tcp)[0]
    frames[t, l4 + 7] = 1
    frames[t, l4 + 12] = 0x50
    if syn:
        frames[t, l4 + 13] = 0x02
    else:
        frames[t, l4 + 11] = 1
        frames[t, l4 + 13] = 0x10
    frames[t, l4 + 14:l4 + 16] = (0x02, 0x00)
    u = np.nonzero(~tcp)[0]
    frames[u, l4 + 4:l4 + 6] = (0, L4_LEN)
    check = _fold(pseudo + _words(frames[:, l4:l4 + L4_LEN]))
    check = np.where(~tcp & (check == 0), 0xFFFF, check).astype(np.uint16)  # UDP: 0 is none
    frames[t, l4 + 16:l4 + 18] = check[t].astype(">u2").view(np.uint8).reshape(-1, 2)
    frames[u, l4 + 6:l4 + 8] = check[u].astype(">u2").view(np.uint8).reshape(-1, 2)
    return frames


class FrameSet:
    """Frames and their iovecs, kept alive for the messages that point into them."""

    def __init__(self, frames: np.ndarray):
        self.frames = np.ascontiguousarray(frames)
        self.count, self.length = self.frames.shape
        base = self.frames.ctypes.data
        self.iov = np.empty((self.count, 2), dtype=np.uint64)
        self.iov[:, 0] = base + np.arange(self.count, dtype=np.uint64) * self.length
        self.iov[:, 1] = self.length
        self._cache: Dict[Tuple, np.ndarray] = {}

    def messages(self, index: np.ndarray) -> np.ndarray:
        """struct mmsghdr[len(index)], message i sending frame index[i] (on a bound
        socket: no address, one iovec, no control data)."""
        msgs = np.zeros((len(index), MMSGHDR // 8), dtype=np.uint64)
        msgs[:, 2] = self.iov.ctypes.data + index.astype(np.uint64) * IOVEC    # msg_iov
        msgs[:, 3] = 1                                                          # msg_iovlen
        return msgs

    def cycle(self) -> np.ndarray:
        """Every flow once, in order (cached)."""
        if "cycle" not in self._cache:
            self._cache["cycle"] = self.messages(np.arange(self.count))
        return self._cache["cycle"]

    def share(self, i: int, n: int) -> np.ndarray:
        """Share i of n: flows i * (count // n) to (i + 1) * (count // n) - 1, once each, in
        order (cached)."""
        key = ("share", i, n)
        if key not in self._cache:
            size = self.count // n
            self._cache[key] = self.messages(np.arange(i * size, (i + 1) * size))
        return self._cache[key]

    def part(self, start: int, count: int, repeat: int = 1) -> np.ndarray:
        """Flows start .. start + count - 1, each `repeat` times in a row."""
        return self.messages(np.repeat(np.arange(start, start + count), repeat))


class Sender:
    """An AF_PACKET socket on one interface of the namespace it was made in."""

    def __init__(self, ifname: str):
        self.ifname = ifname
        # protocol 0: the socket receives nothing; the veth's receiver reads the frame's
        # own EtherType
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            self.sock.bind((ifname, 0))
        except OSError:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()

    def send(self, msgs: np.ndarray, packets: int, timeout: float, start: int = 0) -> dict:
        """Send `packets` frames cycling over `msgs` from message `start`, at most
        `timeout` seconds. Returns frames sent, frames refused (the kernel said ENOBUFS
        or EAGAIN: a full veth ring), system calls and the wall time."""
        fd = self.sock.fileno()
        n = len(msgs)
        base = msgs.ctypes.data
        sent = refused = calls = 0
        pos = start % n
        t0 = time.monotonic()
        deadline = t0 + timeout
        left = packets
        while left > 0:
            vlen = min(SEND_BATCH, left, n - pos)
            got = _libc.sendmmsg(fd, base + pos * MMSGHDR, vlen, 0)
            calls += 1
            if got < 0:
                err = ctypes.get_errno()
                if err not in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                    raise OSError(err, f"sendmmsg on {self.ifname}: {os.strerror(err)}")
                got, refused = 1, refused + 1      # that frame is lost: skip it
            else:
                sent += got
            left -= got
            pos = (pos + got) % n
            if calls & 63 == 0 and time.monotonic() > deadline:
                break
        return {"sent": sent, "refused": refused, "calls": calls,
                "wall_s": time.monotonic() - t0, "next": pos}
