"""Direct server return: what the client, the backends and the LB nodes each see, and
full-size packets and large transfers through both modes."""

import socket
import time

from pyxlb.lab import HTTP_PORT, SEGMENT_MTU

from .helpers import (DSR, TCP_TIMESTAMP_OPTION_LEN, answers, delta, lb_counters, link_mtu,
                      read_to_end, state, tcp_counters, tcp_info, vip_addr)

REQUESTS = 100
# Packets an LB node may count in a window of ~0.1 s that are not VIP traffic: ARP and
# neighbour discovery on the shared segment (the bridge floods broadcasts and multicast).
NEIGHBOUR_NOISE = 20
# VIP packets that may meet an unresolved next hop (a SYN and its retransmissions).
UNRESOLVED = 5


@DSR
def test_backends_see_the_client_and_reply_past_the_lb(lab, family, mode):
    """Requests through the VIP succeed; each backend sees the client's own address; the
    replies go backend -> router -> client and never pass an LB node.

    The proof is arithmetic on counters taken before and after REQUESTS requests:
    - the client's TCP stack counts the segments it sent (OutSegs + RetransSegs) and
      received (InSegs); nothing else in its namespace speaks TCP;
    - lb1's VIP packet counter grew by exactly the client's sent segments: every client
      packet crossed lb1 once, and nothing else was counted as VIP traffic;
    - every frame lb1's XDP program handles is counted once in an outcome counter (tx,
      pass_not_vip, drop_...), and a reply crossing lb1 would have been counted too (as
      pass_not_vip: its destination, the client, is not a VIP). Besides the client's
      packets, lb1 handled at most NEIGHBOUR_NOISE frames, while the client received at
      least 3 segments per request (SYN-ACK, the response, FIN): the replies cannot have
      gone through lb1;
    - lb2, which the router does not use, saw no VIP packet (nor, then, a reply).
    """
    lab.apply(state(lab.vip(family, mode=mode)))
    before = {"client": tcp_counters(lab, "client"),
              "lb1": lb_counters(lab, "lb1"), "lb2": lb_counters(lab, "lb2")}
    answered = answers(lab, family, [0] * REQUESTS)
    client = delta(tcp_counters(lab, "client"), before["client"])
    lb1 = delta(lb_counters(lab, "lb1"), before["lb1"])
    lb2 = delta(lb_counters(lab, "lb2"), before["lb2"])

    assert {name for _, name in answered} == {"be1", "be2", "be3"}
    sent = client["OutSegs"] + client["RetransSegs"]
    assert lb1["vip_packets"] == sent
    # Every VIP packet leaves lb1 tunnelled: by XDP_TX, or, for the few that arrive while
    # the kernel's neighbour entry for the router is missing or being resolved (as on the
    # first IPv6 packets after the lab starts), handed to the kernel to forward.
    assert lb1["tx"] + lb1["pass_no_neigh"] == sent, lb1
    assert lb1["pass_no_neigh"] <= UNRESOLVED, lb1
    assert client["InSegs"] >= 3 * REQUESTS
    others = lb1["seen"] - lb1["vip_packets"]
    assert others <= NEIGHBOUR_NOISE < client["InSegs"], \
        f"lb1 handled {others} non-VIP frames while the client received " \
        f"{client['InSegs']} segments: {lb1}"
    assert lb2["vip_packets"] == 0
    assert lb2["seen"] <= NEIGHBOUR_NOISE


UPLOAD = DOWNLOAD = 5_000_000


@DSR
def test_full_size_packets_and_large_transfers(lab, family, mode):
    """A full-size client packet arrives, and multi-megabyte transfers complete.

    The client's link has MTU 1500 and the connection negotiates the full MSS (1460 for
    IPv4, 1440 for IPv6); the server segment has MTU 1600, so a 1500-byte client packet
    still fits once tunnelled (+20 bytes IPIP, +40 IP6IP6). One segment of exactly the
    MSS is sent on its own: lb1 counts one VIP packet of 1500 bytes, and the backend
    acknowledges it without a retransmission (a packet dropped on the way as too big
    would have been sent again, smaller) and later reports every byte. Then a 5 MB upload
    (through lb1) and a 5 MB download (backend -> client directly) complete, with nothing
    dropped as too big and no ICMP "too big" sent by lb1. (Retransmissions during the
    bulk transfer are not checked: on a loaded machine a tail-loss probe is normal.)"""
    assert link_mtu(lab, "client") == 1500
    assert link_mtu(lab, "lb1") == link_mtu(lab, "be1") == SEGMENT_MTU
    lab.apply(state(lab.vip(family, mode=mode)))

    sock = lab.client_socket(family)
    try:
        sock.settimeout(10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect((vip_addr(family), HTTP_PORT))
        info = tcp_info(sock)
        assert info["pmtu"] == 1500
        mss = info["snd_mss"] + (TCP_TIMESTAMP_OPTION_LEN if info["timestamps"] else 0)
        assert mss == (1460 if family == 4 else 1440), info
        one_segment = b"s" * info["snd_mss"]
        length = len(one_segment) + UPLOAD
        sock.sendall(f"POST /echo HTTP/1.0\r\nHost: vip\r\nContent-Length: {length}\r\n\r\n"
                     .encode())
        wait_acked(sock)
        start, retransmitted = lb_counters(lab, "lb1"), tcp_info(sock)["total_retrans"]
        sock.sendall(one_segment)
        wait_acked(sock)
        one = delta(lb_counters(lab, "lb1"), start)
        retransmitted = tcp_info(sock)["total_retrans"] - retransmitted
        sock.sendall(b"u" * UPLOAD)
        reply = read_to_end(sock)
    finally:
        sock.close()
    bulk = delta(lb_counters(lab, "lb1"), start)

    assert (one["vip_packets"], one["vip_bytes"], retransmitted) == (1, 1500, 0), one
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert int(body.split()[1]) == length
    assert bulk["vip_bytes"] >= length
    assert bulk["drop_too_big"] == bulk["icmp_sent"] == 0, bulk

    got = lab.request(family, path=f"/bytes?n={DOWNLOAD}", timeout=10)
    assert got == b"x" * DOWNLOAD


def wait_acked(sock: socket.socket, timeout: float = 2.0) -> None:
    """Until the peer has acknowledged everything sent (a delayed ACK takes ~40 ms)."""
    deadline = time.monotonic() + timeout
    while tcp_info(sock)["unacked"]:
        assert time.monotonic() < deadline, "the backend did not acknowledge"
        time.sleep(0.005)
