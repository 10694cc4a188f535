"""The frames a takeover sends: gratuitous ARP (IPv4) and unsolicited neighbour
advertisements (IPv6), whole Ethernet frames for a packet socket."""

from __future__ import annotations

import ipaddress
import socket
import struct
from typing import List, Union

from .wire import L2Error

ETH_P_ARP, ETH_P_IPV6 = 0x0806, 0x86DD
ARPOP_REQUEST, ARPOP_REPLY = 1, 2
BROADCAST = b"\xff" * 6
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ALL_NODES_MAC = b"\x33\x33\x00\x00\x00\x01"
ND_NEIGHBOR_ADVERT = 136
ND_OPT_TARGET_LLADDR = 2
NA_FLAG_OVERRIDE = 0x20000000
ETH_MIN = 60            # an Ethernet frame without its FCS is at least this long


def mac_bytes(mac: Union[str, bytes]) -> bytes:
    """The 6 bytes of a MAC written as aa:bb:cc:dd:ee:ff (or given as bytes)."""
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
    mac = mac_bytes(mac)
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
    mac = mac_bytes(mac)
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
