"""What the datapath needs from the kernel's network tables (pyroute2): interface addresses
and MACs, and the next hop towards a backend (route + neighbour), all in the calling
thread's network namespace."""

from __future__ import annotations

import ipaddress
import socket
from typing import List, NamedTuple, Optional, Tuple

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


def link_mtu(index: int) -> int:
    """The interface's MTU."""
    with IPRoute() as ipr:
        return ipr.link("get", index=index)[0].get("IFLA_MTU")


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


class Resolver:
    """Next hops for many addresses at once, from one dump of the main routing table, the
    neighbour table and the links (a route lookup per address would cost a netlink round
    trip each: seconds for ten thousand backends). Policy routing is not followed: an
    address this cannot resolve is left to the datapath's FIB lookup."""

    RT_TABLE_MAIN = 254
    RTN_UNICAST = 1

    def __init__(self):
        self.routes = []        # (network, priority, oif, gateway)
        self.neigh = {}         # (ifindex, address) -> MAC
        self.macs = {}          # ifindex -> MAC
        with IPRoute() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.get_routes(family=family):
                    table = r.get("RTA_TABLE") or r["table"]
                    if table != self.RT_TABLE_MAIN or r["type"] != self.RTN_UNICAST:
                        continue
                    oif = r.get("RTA_OIF")
                    if not oif:
                        continue        # multipath and blackhole routes: left to the FIB
                    dst = r.get("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                    net = ipaddress.ip_network(f"{dst}/{r['dst_len']}", strict=False)
                    self.routes.append((net, r.get("RTA_PRIORITY") or 0, oif,
                                        r.get("RTA_GATEWAY")))
            for n in ipr.get_neighbours():
                mac, dst = n.get("NDA_LLADDR"), n.get("NDA_DST")
                if mac and dst and n["state"] & _NUD_USABLE:
                    self.neigh[(n["ifindex"], ipaddress.ip_address(dst))] = mac
            for link in ipr.get_links():
                mac = link.get("IFLA_ADDRESS")
                if mac and mac != "00:00:00:00:00:00":
                    self.macs[link["index"]] = mac
        # most specific first, then the lowest metric
        self.routes.sort(key=lambda r: (-r[0].prefixlen, r[1]))

    def route(self, addr) -> Optional[Tuple[int, ipaddress._BaseAddress]]:
        """(egress ifindex, next-hop address) for `addr`, or None."""
        addr = ipaddress.ip_address(str(addr))
        for net, _, oif, gateway in self.routes:
            if net.version == addr.version and addr in net:
                return oif, ipaddress.ip_address(gateway) if gateway else addr
        return None

    def resolve(self, addr, mac: Optional[str] = None) -> Optional[NextHop]:
        """The next hop towards `addr`; with `mac` (an L2 backend's MAC given by the
        operator) only the egress interface is looked up."""
        found = self.route(addr)
        if found is None:
            return None
        oif, hop = found
        smac = self.macs.get(oif)
        dmac = mac or self.neigh.get((oif, hop))
        if not smac or not dmac:
            return None
        return NextHop(dmac, smac, oif)


class Route(NamedTuple):
    """The kernel's answer to "how would a packet to this address leave?" (ip route get)."""

    local: bool                         # the address is this host's own
    ifindex: int                        # the egress interface
    gateway: Optional[ipaddress._BaseAddress]   # the router it goes through; None: on-link
    source: Optional[ipaddress._BaseAddress]    # the source address a socket would take


RTN_LOCAL = 2


def route_get(addr) -> Route:
    """How the kernel routes a packet to `addr` now (policy rules included); PyxlbError
    (one line) when it has no route."""
    from pyroute2.netlink.exceptions import NetlinkError

    addr = ipaddress.ip_address(str(addr))
    try:
        with IPRoute() as ipr:
            msg = ipr.route("get", dst=str(addr))[0]
    except NetlinkError as exc:
        raise PyxlbError(f"no route to {addr}: {exc.args[-1]}") from None
    gateway, source = msg.get_attr("RTA_GATEWAY"), msg.get_attr("RTA_PREFSRC")
    return Route(msg["type"] == RTN_LOCAL, msg.get_attr("RTA_OIF") or 0,
                 ipaddress.ip_address(gateway) if gateway else None,
                 ipaddress.ip_address(source) if source else None)


def tx_checksum_off(ifname: str) -> None:
    """Turn off transmit checksum offload on `ifname` (this thread's namespace). A veth
    hands packets on with the checksum still to be filled in, and an XDP_TX on the way
    loses that promise: lab links carry full checksums instead."""
    from pyroute2.ethtool import Ethtool

    e = Ethtool()
    try:
        features = e.get_features(ifname)
        for name in ("tx-checksum-ip-generic", "tx-checksum-ipv4", "tx-checksum-ipv6"):
            if name in features.features:
                features.features[name].enable = False
        e.set_features(ifname, features)
    finally:
        e.close()
