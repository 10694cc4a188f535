"""What the datapath needs from the kernel's network tables (pyroute2): interface addresses
and MACs, and the next hop towards a backend (route + neighbour), all in the calling
thread's network namespace."""

from __future__ import annotations

import ipaddress
import socket
from typing import List, NamedTuple, Optional

from pyroute2 import IPRoute

from .errors import PyxlbError


# neighbour states whose link-layer address can be used (NUD_REACHABLE, STALE, DELAY, PROBE,
# NOARP, PERMANENT); INCOMPLETE and FAILED cannot
_NUD_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80


class NextHop(NamedTuple):
    """Where a packet for a backend leaves: mirrors struct xlb_nexthop."""

    dmac: str
    smac: str
    ifindex: int


def ifindex(name: str) -> int:
    """The index of interface `name`; PyxlbError (one line) if there is none."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        raise PyxlbError(f"no interface named {name!r}") from None


def link_mac(index: int) -> Optional[str]:
    with IPRoute() as ipr:
        links = ipr.link("get", index=index)
    mac = links[0].get("IFLA_ADDRESS") if links else None
    return None if mac in (None, "00:00:00:00:00:00") else mac


def addresses(index: int) -> List[ipaddress._BaseAddress]:
    """The interface's addresses, IPv4 first, without link-local IPv6 ones."""
    with IPRoute() as ipr:
        msgs = ipr.get_addr(index=index)
    out = []
    for m in msgs:
        a = ipaddress.ip_address(m.get("IFA_ADDRESS"))
        if a.version == 6 and a.is_link_local:
            continue
        out.append(a)
    return sorted(out, key=lambda a: (a.version, a))


def resolve(addr) -> Optional[NextHop]:
    """The next hop the kernel would use towards `addr`: the route's egress interface and
    the gateway's (or the address's own) neighbour entry. None while the neighbour is not
    resolved (the datapath then lets the kernel forward, which resolves it)."""
    addr = ipaddress.ip_address(str(addr))
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=str(addr))
        except Exception:       # no route: pyroute2 raises NetlinkError(ENETUNREACH)
            return None
        if not routes:
            return None
        oif = routes[0].get("RTA_OIF")
        hop = routes[0].get("RTA_GATEWAY") or str(addr)
        if not oif:
            return None
        smac = link_mac(oif)
        family = socket.AF_INET if ipaddress.ip_address(hop).version == 4 else socket.AF_INET6
        for n in ipr.get_neighbours(family=family, ifindex=oif):
            if _same(n.get("NDA_DST"), hop) and n.get("NDA_LLADDR") and \
                    n["state"] & _NUD_USABLE:
                if smac is None:
                    return None
                return NextHop(n.get("NDA_LLADDR"), smac, oif)
    return None


def _same(a, b) -> bool:
    try:
        return a is not None and ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return False


def egress(addr) -> Optional[int]:
    """The interface index a route to `addr` leaves by (None without a route)."""
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=str(addr))
        except Exception:
            return None
    return routes[0].get("RTA_OIF") if routes else None
