"""The BIRD 2 configuration, as pure functions: settings in, text out, no I/O.

`bird_config(settings, vips)` is a node's whole configuration. The VIPs are `blackhole`
routes of a `protocol static` (the XDP balancer takes their packets before the kernel
would route them, and no kernel protocol is configured, so they never reach the node's
FIB); an export filter lets only those routes out to the peers, with the configured
communities attached. BGP graceful restart is deliberately off: a router honouring it
would keep a dead node's routes for the restart time (two minutes by default) and
black-hole its share of the flows. Surviving an agent restart is the speaker's job
instead (it keeps running: pyxlb/announce/bgp/speaker.py).

`upstream_router_config` writes the other side, a router peering with the nodes (the lab's,
and the example in docs/announce.md).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Dict, FrozenSet, Iterable, List, Optional, Tuple

from .. import IPAddress, address_order
from .schema import BFD_INTERVAL_MS, BFD_MULTIPLIER, DEFAULT_HOLD_TIME, PEER_SCHEMA, SCHEMA
from .settings import (BgpPeer, BgpSettings, Community, bird_symbol, check, parse_address,
                       parse_router_id)

VIPS_MARK = "# pyxlb-vips:"     # the config's own record of what it announces (adoption)
_FIELDS, _PEER_FIELDS = SCHEMA["properties"], PEER_SCHEMA["properties"]


def _community_statements(communities: Iterable[Community]) -> List[str]:
    out = []
    for c in communities:
        attr = "bgp_community" if len(c) == 2 else "bgp_large_community"
        out.append(f"{attr}.add(({', '.join(map(str, c))}));")
    return out


def _log_statement() -> str:
    # stderr is the log file the speaker opens (bird.log in the state directory); routine
    # information stays out so that it does not grow with every keepalive or update
    return "log stderr { remote, warning, error, auth, fatal, bug };"


def _bfd_section(interval_ms: int, multiplier: int) -> List[str]:
    timers = [f"    interval {interval_ms} ms;", f"    multiplier {multiplier};"]
    return ["protocol bfd pyxlb_bfd {",
            '  interface "*" {', *timers, "  };",
            "  multihop {", *timers, "  };",
            "}", ""]


def _comment(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)


def _head(settings: BgpSettings, addrs: List[IPAddress]) -> List[str]:
    """Config step: the header (with the VIPS_MARK record), router id, log and device."""
    return [
        f"# BIRD 2 configuration of pyxlb node {_comment(settings.node or '(unnamed)')}: "
        f"written by pyxlb.announce.bgp,",
        "# replaced on every change (edits here are lost).",
        f"{VIPS_MARK} {' '.join(a.compressed for a in addrs)}".rstrip(),
        "",
        f"router id {settings.router_id};",
        _log_statement(),
        "",
        "protocol device pyxlb_device {",
        "}",
        "",
    ]


def _vip_sections(addrs: List[IPAddress]) -> List[str]:
    """Config step: the VIPs as blackhole routes of one static protocol per family."""
    # only ever exported: no kernel protocol installs them
    lines = []
    for family in (4, 6):
        lines.append(f"protocol static pyxlb_vip{family} {{")
        lines.append(f"  ipv{family};")
        plen = 32 if family == 4 else 128
        for a in addrs:
            if a.version == family:
                lines.append(f"  route {a.compressed}/{plen} blackhole;")
        lines += ["}", ""]
    return lines


def _export_filters(settings: BgpSettings,
                    ) -> Tuple[Dict[Tuple[Community, ...], str], List[str]]:
    """Config step: one export filter per distinct community list ({list: name}, lines)."""
    # the global communities, then a peer's
    filters: Dict[Tuple[Community, ...], str] = {}
    lines: List[str] = []
    for peer in settings.peers:
        wanted = tuple(dict.fromkeys(settings.communities + peer.communities))
        if wanted not in filters:
            name = "pyxlb_export" if not filters else f"pyxlb_export_{len(filters)}"
            filters[wanted] = name
            lines += [f"filter {name}", "{",
                      '  if proto = "pyxlb_vip4" || proto = "pyxlb_vip6" then {',
                      *(f"    {s}" for s in _community_statements(wanted)),
                      "    accept;", "  }", "  reject;", "}", ""]
    return filters, lines


def _peer_section(settings: BgpSettings, peer: BgpPeer, export: str) -> List[str]:
    """Config step: the BGP protocol of one peer, exporting through filter `export`."""
    lines = [
        f"protocol bgp {peer.protocol} {{",
        f'  description "pyxlb: router {peer.address} AS {peer.asn}";',
        (f"  local {peer.source_address.compressed} as {settings.asn};"
         if peer.source_address is not None else f"  local as {settings.asn};"),
        f"  neighbor {peer.address.compressed} as {peer.asn};",
        "  direct;" if peer.multihop == 0 else f"  multihop {peer.multihop};",
        f"  hold time {peer.hold_time};",
    ]
    if peer.keepalive is not None:
        lines.append(f"  keepalive time {peer.keepalive};")
    lines += [
        "  connect delay time 1;",
        "  connect retry time 1;",
        "  error wait time 1, 5;",
        "  graceful restart off;",
    ]
    if peer.bfd:
        lines.append("  bfd on;")
    if peer.password is not None:
        lines.append(f'  password "{peer.password}";')
    lines += [
        f"  ipv{peer.family} {{",
        "    import none;",
        f"    export filter {export};",
        "    next hop self;",
        "  };",
        "}",
        "",
    ]
    return lines


def bird_config(settings: BgpSettings, vips: Iterable[IPAddress]) -> str:
    """The BIRD 2 configuration that announces `vips` from this node to its peers."""
    addrs = sorted({ipaddress.ip_address(v) for v in vips}, key=address_order)
    lines = _head(settings, addrs)
    lines += _vip_sections(addrs)
    filters, filter_lines = _export_filters(settings)
    lines += filter_lines
    if any(p.bfd for p in settings.peers):
        lines += _bfd_section(settings.bfd_interval_ms, settings.bfd_multiplier)
    for peer in settings.peers:
        export = filters[tuple(dict.fromkeys(settings.communities + peer.communities))]
        lines += _peer_section(settings, peer, export)
    return "\n".join(lines)


def announced_in(config: str) -> FrozenSet[IPAddress]:
    """The addresses a configuration written by `bird_config` announces (its VIPS_MARK
    line): what a running speaker announces when an agent adopts it."""
    for line in config.splitlines():
        if line.startswith(VIPS_MARK):
            out = set()
            for word in line[len(VIPS_MARK):].split():
                try:
                    out.add(ipaddress.ip_address(word))
                except ValueError:
                    continue
            return frozenset(out)
    return frozenset()


def upstream_router_config(router_id: Any, asn: int,
                           nodes: Iterable[Tuple[Any, int]], *, bfd: bool = False,
                           hold_time: int = DEFAULT_HOLD_TIME, password: Optional[str] = None,
                           bfd_interval_ms: int = BFD_INTERVAL_MS,
                           bfd_multiplier: int = BFD_MULTIPLIER) -> str:
    """The other side: a BIRD 2 router that peers with the LB nodes (`nodes`: (address,
    ASN) pairs), takes only host routes from them and installs them in the kernel with
    every node as a next hop (ECMP, `merge paths`). The lab's router runs this; it is also
    the example in docs/announce.md. The router still needs the L4 hash policy sysctls
    (net.ipv4.fib_multipath_hash_policy=1, net.ipv6.fib_multipath_hash_policy=1) or every
    flow to a VIP takes the same node."""
    rid = parse_router_id(router_id, "router_id")
    check(asn, _FIELDS["asn"], "asn")
    check(hold_time, _PEER_FIELDS["hold_time"], "hold_time")
    check(password, _PEER_FIELDS["password"], "password")
    lines = [f"router id {rid};", _log_statement(), "", "protocol device {", "}", ""]
    for family in (4, 6):
        lines += [f"protocol kernel pyxlb_kernel{family} {{",
                  f"  ipv{family} {{", "    import none;",
                  "    export where source = RTS_BGP;", "  };",
                  "  merge paths yes;", "}", ""]
    if bfd:
        lines += _bfd_section(bfd_interval_ms, bfd_multiplier)
    for address, node_asn in nodes:
        addr = parse_address(address, "node address")
        check(node_asn, _FIELDS["asn"], f"AS of node {addr}")
        plen = 32 if addr.version == 4 else 128
        lines += [f"protocol bgp pyxlb_node_{bird_symbol(addr)} {{",
                  f"  local as {asn};",
                  f"  neighbor {addr.compressed} as {node_asn};",
                  f"  hold time {hold_time};",
                  "  connect delay time 1;",
                  "  connect retry time 1;",
                  "  error wait time 1, 5;"]
        if bfd:
            lines.append("  bfd on;")
        if password is not None:
            lines.append(f'  password "{password}";')
        lines += [f"  ipv{addr.version} {{",
                  f"    import where net.len = {plen};",
                  "    export none;", "  };", "}", ""]
    return "\n".join(lines)
