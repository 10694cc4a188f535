"""The VIP index: every VIP of xlb_vips in an array the datapath reads without hashing.

A hash-map lookup costs the balancer about 9 ns a packet here; an array lookup and a
20-byte compare about a third of that. So the VIPs are also laid out in an array of
``VIP_INDEX_SLOTS`` slots (``struct xlb_vip_slot``: the key, flags and a copy of the
record), at the slot their key hashes to (``slot_of``, xlb_vip_index_slot in hash.h). When
several VIPs share a slot, one is held and the slot is flagged ``SLOT_MORE``: the datapath
then looks in xlb_vips for the others. An empty slot means "no such VIP".

The array is never written in place, where a reader could see half a record: a new one is
filled whole (mmap, one copy) and swapped into xlb_vip_index with one update
(``VipIndexMap.install``). ``VipIndex`` is the image: apply keeps it between applies, so
an apply re-renders only the slots it touched.
"""

from __future__ import annotations

import mmap
import struct
from typing import Callable, Dict, Iterable, Mapping

from pyxlb import _bpf
from pyxlb import _layouts as L

from .maps import DIRECT

SLOT_SIZE = L.SIZES["xlb_vip_slot"]
KEY_SIZE = L.SIZES["xlb_vip_key"]
RECORD_SIZE = L.SIZES["xlb_vip"]
_M32 = 0xFFFFFFFF
assert SLOT_SIZE == KEY_SIZE + 4 + RECORD_SIZE and SLOT_SIZE % 8 == 0


def slot_of(key: bytes) -> int:
    """The index slot of a packed xlb_vip_key (xlb_vip_index_slot in hash.h): the address's
    four words XORed, times a golden-ratio constant, the (port, protocol, family) word
    mixed in, the top VIP_INDEX_BITS bits. Words in host order, as the kernel reads them."""
    w0, w1, w2, w3, w4 = struct.unpack("=5I", key)
    x = ((w0 ^ w1 ^ w2 ^ w3) * 0x9E3779B1) & _M32
    x = ((x ^ w4) * 0x85EBCA6B) & _M32
    return (x ^ (x >> 15)) >> (32 - L.VIP_INDEX_BITS)


class VipIndex:
    """The image of an index: {slot: {key: record}} and the bytes the array gets. Built
    from packed xlb_vips entries ({xlb_vip_key: xlb_vip}, as Vips.packed reads them)."""

    def __init__(self, records: Mapping[bytes, bytes] = None):
        self._slots: Dict[int, Dict[bytes, bytes]] = {}
        self._image = bytearray(SLOT_SIZE * L.VIP_INDEX_SLOTS)
        self.update(records or {}, ())

    def update(self, writes: Mapping[bytes, bytes], deletes: Iterable[bytes]) -> None:
        """Add or change the VIPs in `writes` ({key: record}), drop those in `deletes`."""
        touched = set()
        for key in deletes:
            slot = slot_of(key)
            held = self._slots.get(slot)
            if held and held.pop(key, None) is not None:
                touched.add(slot)
                if not held:
                    del self._slots[slot]
        for key, record in writes.items():
            if len(key) != KEY_SIZE or len(record) != RECORD_SIZE:
                raise ValueError("a VIP index entry is a packed xlb_vip_key and xlb_vip")
            slot = slot_of(key)
            self._slots.setdefault(slot, {})[bytes(key)] = bytes(record)
            touched.add(slot)
        for slot in touched:
            self._render(slot)

    def _render(self, slot: int) -> None:
        at = slot * SLOT_SIZE
        held = self._slots.get(slot)
        if not held:
            self._image[at:at + SLOT_SIZE] = bytes(SLOT_SIZE)
            return
        key = min(held)         # the same choice whatever the order of writes
        flags = L.SLOT_VIP | (L.SLOT_MORE if len(held) > 1 else 0)
        self._image[at:at + SLOT_SIZE] = L.pack_vip_slot(key, flags, held[key])

    def __len__(self) -> int:
        return sum(len(held) for held in self._slots.values())

    def shared(self) -> int:
        """VIPs the index does not hold (their slot is another's): found through xlb_vips."""
        return sum(len(held) - 1 for held in self._slots.values())

    def image(self) -> bytes:
        return bytes(self._image)

    def new_map(self) -> "_bpf.Map":
        """A new inner array holding the image, not yet in xlb_vip_index."""
        inner = _bpf.Map.create(_bpf.MAP_TYPE_ARRAY, 4, SLOT_SIZE, L.VIP_INDEX_SLOTS,
                                name="xlb_vip_index", flags=_bpf.MAP_F_MMAPABLE)
        try:
            length = -(-len(self._image) // mmap.PAGESIZE) * mmap.PAGESIZE
            with mmap.mmap(inner.fd, length, mmap.MAP_SHARED,
                           mmap.PROT_READ | mmap.PROT_WRITE) as mem:
                mem[:len(self._image)] = self._image
        except BaseException:
            inner.close()
            raise
        return inner


class VipIndexMap:
    """xlb_vip_index: slot 0 holds the live index (an inner array of struct xlb_vip_slot),
    or nothing: then the datapath finds every VIP in xlb_vips."""

    def __init__(self, outer: "_bpf.Map", writer=DIRECT):
        self.map = outer
        self._w = writer

    def install(self, index: VipIndex) -> Callable[[], None]:
        """Swap in a new array holding `index`'s image (the writer's add_inners: a
        transaction keeps the old array for a rollback); returns the function that waits
        for the swap to end."""
        return self._w.add_inners(self.map, {0: index.new_map()}, keep_old=True)

    def demote(self, key: bytes) -> None:
        """Make the live index send lookups of `key` (a packed xlb_vip_key) to xlb_vips, in
        place: its slot keeps its bytes but for the flags, which become SLOT_MORE (a reader
        sees the old flags or the new, and either is right once xlb_vips holds what it
        should). For a write of xlb_vips that no new index follows at once."""
        if self.map.get(0) is None:
            return
        slot = slot_of(key)
        with self.map.inner_map(0) as inner:
            held = L.unpack_vip_slot(inner.lookup(slot))
            if held["flags"] != L.SLOT_MORE:
                inner.update(slot, L.pack_vip_slot(held["key"], L.SLOT_MORE, held["vip"]))

    def slot(self, key: bytes) -> dict:
        """{key, flags, vip} (packed key and record) of the live index's slot for `key`."""
        with self.map.inner_map(0) as inner:
            return L.unpack_vip_slot(inner.lookup(slot_of(key)))
