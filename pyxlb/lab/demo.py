"""`pyxlb lab demo`: build the namespace lab, send real TCP connections through the XDP
balancer, and show what happened, step by step. Under a minute; no Kubernetes."""

from __future__ import annotations

import time
from collections import Counter
from typing import Callable, Dict, List

from ..plan import ring_key
from ..state import DesiredState
from .topology import BACKENDS, LBS, Lab, node_addr

FLOWS = 300
FIRST_PORT = 20000


def _table(rows: List[List[str]], head: List[str]) -> str:
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join(["  " + line(head), "  " + "  ".join("-" * w for w in widths),
                      *("  " + line(r) for r in rows)])


class Demo:
    def __init__(self, lab: Lab, out: Callable[[str], None] = print):
        self.lab = lab
        self.out = out
        self.started = time.monotonic()

    def say(self, text: str = "") -> None:
        self.out(text)

    def step(self, n: int, title: str) -> None:
        self.say(f"\n[{n}] {title}  (t={time.monotonic() - self.started:.1f}s)")

    def flows(self) -> Dict[int, str]:
        """One HTTP request per client source port: which backend answered each."""
        out = {}
        for sport in range(FIRST_PORT, FIRST_PORT + FLOWS):
            name, seen = self.lab.who(4, sport=sport)
            if seen != str(node_addr("client", 4)):
                raise AssertionError(f"{name} saw {seen}, not the client's own address")
            out[sport] = name
        return out

    def maglev_shares(self, state: DesiredState) -> Dict[str, float]:
        """Each backend's share of its VIP's ring slots on lb1 (what Maglev promises)."""
        vip = state.vips[0]
        with self.lab.datapath("lb1") as dp:
            layout = dp.layout()
            ring = dp.ring(layout.ring_ids[ring_key(vip)])
            names = {layout.backend_ids[b.address]: n
                     for n in BACKENDS for b in vip.backends
                     if b.address == node_addr(n, 4)}
        counts = Counter(ring)
        return {names[i]: c / len(ring) for i, c in counts.items() if i in names}

    def run(self) -> None:
        lab = self.lab
        self.step(1, "Build the lab: client, router, two LB nodes, three backends")
        lab.up(log=lambda m: self.say(f"    {m}"))

        self.step(2, "Add VIP 10.77.100.10:80/tcp -> be1, be2, be3 (IPIP) on both LB nodes")
        three = DesiredState((lab.vip(4),))
        lab.apply(three)
        self.say("    through Datapath.apply, as the CLI does; the router sends VIP traffic to lb1")

        self.step(3, f"{FLOWS} real TCP connections from {FLOWS} client ports through lb1")
        via_lb1 = self.flows()
        shares = self.maglev_shares(three)
        got = Counter(via_lb1.values())
        rows = [[b, got[b], f"{100 * got[b] / FLOWS:.1f}%", f"{100 * shares[b]:.1f}%"]
                for b in BACKENDS]
        self.say(_table(rows, ["backend", "connections", "share", "Maglev ring share"]))
        self.say("    every backend answered and saw the client's own address (10.77.1.2):")
        self.say("    direct server return preserves it; the replies went backend -> router.")

        self.step(4, "The same connections through lb2, which has never seen them")
        lab.route_via("lb2")
        via_lb2 = self.flows()
        same = sum(via_lb1[p] == via_lb2[p] for p in via_lb1)
        self.say(f"    {same}/{FLOWS} connections reached the same backend as through lb1.")
        self.say("    No state is shared between LB nodes: both build the same Maglev ring from "
                 "the same backends and seed.")

        self.step(5, "Remove be3; open the same connections again (through lb2)")
        lab.apply(DesiredState((lab.vip(4, backends=("be1", "be2")),)))
        after = self.flows()
        moved = [p for p in via_lb2 if via_lb2[p] != after[p]]
        on_be3 = [p for p in via_lb2 if via_lb2[p] == "be3"]
        self.say(_table([["without be3", f"{len(moved)}", f"{100 * len(moved) / FLOWS:.1f}%",
                          f"{100 * len(on_be3) / FLOWS:.1f}%", "33.3%",
                          sum(1 for p in moved if via_lb2[p] != "be3")]],
                        ["", "moved", "of all", "had been on be3", "ideal 1/N",
                         "moved from be1/be2"]))
        self.say("    Only be3's connections moved: the flow table keeps every other one on "
                 "its backend,\n    and be3's were spread over be1 and be2.")

        self.step(6, "Counters (per CPU in the kernel, summed)")
        rows = []
        for lb in LBS:
            with lab.datapath(lb) as dp:
                c = dp.counters()[0]
                s = dp.stats()
                rows.append([lb, c["packets"], c["new_flows"], s.get("tx", 0),
                             s.get("flow_hit", 0), s.get("flow_stale", 0),
                             s.get("pass_not_vip", 0)])
        self.say(_table(rows, ["LB", "VIP packets", "new flows", "tunnelled (tx)",
                               "flow hits", "re-hashed", "not for a VIP"]))
        self.say("    The LB nodes only count client->VIP packets: replies never pass them.")
        self.say(f"\nDone in {time.monotonic() - self.started:.1f}s.")


def run(prefix: str = "xlb", keep: bool = False, out: Callable[[str], None] = print) -> None:
    lab = Lab(prefix)
    try:
        Demo(lab, out).run()
    finally:
        if keep and lab.exists():
            out(f"\nThe lab stays up (--keep): `pyxlb lab status --prefix {prefix}`, "
                f"`pyxlb lab down --prefix {prefix}`.")
        else:
            lab.down()
            out("The lab is torn down.")
