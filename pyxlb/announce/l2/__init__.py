"""L2 announcement: one node per VIP address answers ARP / neighbour solicitations for it,
chosen by rendezvous hashing among the eligible nodes that are alive.

- wire.py: the heartbeat's format (`encode`, `decode`);
- liveness.py: who is alive (`Liveness`, a pure state machine) and what this node owns
  (`owned`);
- membership.py: the heartbeat socket and threads around Liveness (`Membership`);
- frames.py: gratuitous ARP and unsolicited neighbour advertisement frames;
- announcer.py: `L2Announcer`, which sends them on a takeover, and `with_announce_on`,
  the announce flags that make the XDP responder answer for the owned addresses;
- tool.py: `python -m pyxlb.announce.l2`, a lab and debugging tool.
"""

from .announcer import GARP_SCHEDULE, L2Announcer, with_announce_on
from .frames import announcement_frames, garp, unsolicited_na
from .liveness import DEAD_AFTER, Change, Liveness, SeenBy, owned
from .membership import INTERVAL, PORT, Membership
from .wire import FLAG_HMAC, Heartbeat, HeartbeatError, L2Error, decode, encode

__all__ = [
    "DEAD_AFTER", "FLAG_HMAC", "GARP_SCHEDULE", "INTERVAL", "PORT", "Change", "Heartbeat",
    "HeartbeatError", "L2Announcer", "L2Error", "Liveness", "Membership", "SeenBy",
    "announcement_frames", "decode", "encode", "garp", "owned", "unsolicited_na",
    "with_announce_on",
]
