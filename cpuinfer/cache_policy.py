"""Which expert the expert cache evicts: least recently or least frequently picked.

A policy sees every router pick (`picked`), learns which keys are resident
(`added`, `removed`) and names the victim among those the cache may evict.
Keys are (layer, expert) pairs; the cache is shared by all layers.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable, Hashable

from .errors import CpuinferError

class LRU:
    """Evict the resident expert picked longest ago."""

    name = "lru"

    def __init__(self):
        self._order: OrderedDict[Hashable, None] = OrderedDict()  # resident keys, least recent first

    def picked(self, key) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def added(self, key) -> None:
        self._order[key] = None

    def removed(self, key) -> None:
        self._order.pop(key, None)

    def demoted(self, key) -> None:
        """`key` was read on a guess the router did not confirm: first to go among equals."""
        if key in self._order:
            self._order.move_to_end(key, last=False)

    def victim(self, evictable: Callable[[Hashable], bool]):
        return next((key for key in self._order if evictable(key)), None)


class LFU(LRU):
    """Evict the resident expert the router has picked least often (over the whole run; ties: least recent)."""

    name = "lfu"

    def __init__(self):
        super().__init__()
        self._picks: Counter = Counter()

    def picked(self, key) -> None:
        self._picks[key] += 1
        super().picked(key)

    def victim(self, evictable: Callable[[Hashable], bool]):
        # min() keeps the first of equal counts, and _order runs from least to most recent
        return min((key for key in self._order if evictable(key)), key=self._picks.__getitem__, default=None)


POLICIES = {p.name: p for p in (LRU, LFU)}


def make_policy(name: str):
    """The policy called `name` (lru or lfu)."""
    if name not in POLICIES:
        raise CpuinferError(f"unknown expert cache policy {name!r}; choose {' or '.join(POLICIES)}")
    return POLICIES[name]()
