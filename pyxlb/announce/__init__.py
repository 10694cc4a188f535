"""Announcing VIPs: making the network send a VIP's packets to this node.

One small interface, `Announcer` (after MetalLB's `Protocol`), two implementations:

- **L2** (`pyxlb.announce.l2`): exactly one node per VIP answers ARP / neighbour
  solicitations for it (from XDP: the balancer's responder) and sends gratuitous ARP /
  unsolicited neighbour advertisements when it takes over. The owner is a deterministic
  choice among the eligible nodes that are alive (rendezvous hashing, so a node coming or
  going moves only its own VIPs), and liveness is a fast heartbeat between the agents.
- **BGP** (`pyxlb.announce.bgp`): every eligible node announces the VIP's /32 (/128) with
  itself as next hop through a BGP speaker (BIRD) that the agent configures; the router
  spreads flows over them with ECMP, and Maglev sends each flow to the same backend
  whichever node it reaches.

Which nodes are eligible for a VIP is decided by the datapath's own state, so the
announcement can never disagree with it: a node is eligible for a VIP address when it is
an active backend of one of the address's VIPs (with `externalTrafficPolicy: Local` that is
a node holding ready, healthy endpoints; with `Cluster`, every ready node). See
`eligible_nodes`.
"""

from __future__ import annotations

import abc
import enum
import hashlib
import ipaddress
from typing import Dict, FrozenSet, Iterable, Mapping, Optional, Set, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

MODES = ("none", "l2", "bgp")


class Result(enum.Enum):
    """What one announce/withdraw came to (MetalLB's SyncState, reduced)."""

    OK = "ok"              # done
    RETRY = "retry"        # not now (speaker restarting, interface down): try again later
    GIVE_UP = "give-up"    # cannot be done as configured (logged; retried only on a change)


class Announcer(abc.ABC):
    """Announces VIP addresses from this node. Implementations keep what they announced,
    so `sync` can bring them to a wanted set."""

    mode: str = "none"

    @abc.abstractmethod
    def announce(self, vip: IPAddress) -> Result:
        """Start attracting `vip`'s packets to this node (idempotent)."""

    @abc.abstractmethod
    def withdraw(self, vip: IPAddress) -> Result:
        """Stop attracting them (idempotent)."""

    @abc.abstractmethod
    def announced(self) -> FrozenSet[IPAddress]:
        """What this node announces now."""

    def sync(self, wanted: Iterable[IPAddress]) -> Dict[IPAddress, Result]:
        """Withdraw what is not wanted, then announce what is: {address: result} for every
        address touched."""
        wanted = set(wanted)
        out: Dict[IPAddress, Result] = {}
        for vip in sorted(self.announced() - wanted, key=address_order):
            out[vip] = self.withdraw(vip)
        for vip in sorted(wanted - self.announced(), key=address_order):
            out[vip] = self.announce(vip)
        return out

    def close(self, withdraw: bool = True) -> None:
        """Stop; with `withdraw`, take every announcement back first."""
        if withdraw:
            self.sync(())


def address_order(a: IPAddress):
    """Sort key of addresses: IPv4 before IPv6, then by value."""
    return (a.version, int(a))


def rendezvous(vip: IPAddress, nodes: Iterable[str]) -> Optional[str]:
    """The node that owns `vip` among `nodes` (highest random weight): every node computes
    the same answer from the same set, and removing a node moves only the VIPs it owned,
    adding one takes only the VIPs it now wins."""
    best, best_score = None, b""
    key = ipaddress.ip_address(vip).packed
    for node in nodes:
        score = hashlib.blake2b(key + b"\0" + node.encode(), digest_size=8).digest()
        if best is None or score > best_score or (score == best_score and node < best):
            best, best_score = node, score
    return best


def eligible_nodes(state, node_of: Mapping[IPAddress, str]) -> Dict[IPAddress, FrozenSet[str]]:
    """{VIP address: nodes eligible to announce it}, read from a DesiredState.

    A node is eligible for an address when it is an active backend (in the ring) of at
    least one VIP on that address; `node_of` maps backend addresses (node InternalIPs) to
    node names. An address whose VIPs have no active backend has no eligible node: nobody
    announces it, which is right, since nobody could serve it."""
    out: Dict[IPAddress, Set[str]] = {}
    for vip in state:
        nodes = out.setdefault(vip.key.address, set())
        for b in vip.backends:
            if b.in_ring:
                name = node_of.get(b.address)
                if name is not None:
                    nodes.add(name)
    return {a: frozenset(n) for a, n in out.items()}
