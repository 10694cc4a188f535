"""The counters the datapath keeps, per CPU: the global outcome counters (xlb_stats), and
per VIP (xlb_vip_stats, xlb_vip_range_drops) and per backend id (xlb_backend_stats). Read
summed over CPUs; apply zeroes those of an id it hands out again."""

from __future__ import annotations

from array import array
from typing import Dict, Iterable, List

from pyxlb import _bpf
from pyxlb import _layouts as L
from pyxlb.plan import Layout

from .maps import DIRECT, check_index


class Stats:
    """xlb_stats: one counter per enum xlb_stat."""

    def __init__(self, m: "_bpf.Map"):
        self.map = m

    def read(self) -> Dict[str, int]:
        """{name in pyxlb._layouts.STAT_NAMES: total over CPUs}."""
        m = self.map
        keys, values, count = m.lookup_batch()
        ids = array("I", keys)
        per_cpu = array("Q", values)
        stride = m.percpu_value_size // 8 * m.ncpus
        names = L.STAT_NAMES
        out = {}
        for i in range(count):
            stat = ids[i]
            name = names[stat] if stat < len(names) else f"stat_{stat}"
            out[name] = sum(per_cpu[i * stride:(i + 1) * stride])
        return out


class Counters:
    """Per VIP id: struct xlb_counters (xlb_vip_stats) and the packets refused by source
    range (xlb_vip_range_drops, a u64); per backend id: struct xlb_counters
    (xlb_backend_stats)."""

    def __init__(self, vip_stats: "_bpf.Map", backend_stats: "_bpf.Map",
                 range_drops: "_bpf.Map", writer=DIRECT):
        self.vip_stats = vip_stats
        self.backend_stats = backend_stats
        self.range_drops_map = range_drops
        self._w = writer

    def vip(self, vip_id: int) -> Dict[str, int]:
        """{packets, bytes, new_flows} of a VIP, summed over CPUs."""
        m = self.vip_stats
        return L.sum_counters(m.lookup(check_index(m, vip_id, "vip_id")), m.ncpus)

    def backend(self, backend_id: int) -> Dict[str, int]:
        """{packets, bytes, new_flows} of a backend, summed over CPUs."""
        m = self.backend_stats
        return L.sum_counters(m.lookup(check_index(m, backend_id, "backend_id")), m.ncpus)

    def range_drops(self, vip_id: int) -> int:
        """Packets VIP `vip_id` dropped for a client outside its source ranges, summed over
        CPUs."""
        m = self.range_drops_map
        return m.lookup_percpu_sum(check_index(m, vip_id, "vip_id"))[0]

    def reset_vips(self, vip_ids: Iterable[int]) -> None:
        """Zero the counters of VIP ids handed out (again)."""
        stats, drops = self.vip_stats, self.range_drops_map
        zero_counters = bytes(stats.percpu_value_size * stats.ncpus)
        zero_drops = bytes(drops.percpu_value_size * drops.ncpus)
        for vid in vip_ids:
            self._w.update(stats, vid, zero_counters)
            self._w.update(drops, vid, zero_drops)

    def reset_backends(self, backend_ids: Iterable[int]) -> None:
        """Zero the counters of backend ids handed out (again)."""
        m = self.backend_stats
        zero = bytes(m.percpu_value_size * m.ncpus)
        for bid in backend_ids:
            self._w.update(m, bid, zero)


def table(layout: Layout, counters: Counters) -> List[dict]:
    """Per VIP of `layout`: {vip, vip_id, packets, bytes, new_flows, backends: [{address,
    backend_id, state, packets, bytes, new_flows}]}, summed over CPUs."""
    out = []
    for vip in layout.state:
        vid = layout.vip_ids[vip.key]
        row = {"vip": str(vip.key), "vip_id": vid, **counters.vip(vid), "backends": []}
        for b in vip.backends:
            bid = layout.backend_ids[b.address]
            row["backends"].append({"address": str(b.address), "backend_id": bid,
                                    "state": b.state, **counters.backend(bid)})
        out.append(row)
    return out
