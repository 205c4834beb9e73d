"""Where a mixture of experts gets its expert weights: the mapping, or a cache of whole experts.

A model that fits its memory budget reads experts in place from the mapped
file (`MappedExperts`) and lets the page cache keep them. One that does not
keeps `slots` whole experts in preallocated slabs of anonymous memory
(`ExpertCache`): a miss reads the expert's three matrices with large preadv
calls (slabs.py) on a reader thread, so reading overlaps computing.

Once a layer's router has chosen, both experts are requested before the first
is computed, so the second is read while the first computes; a guess of the
next layer's experts (its router applied to this layer's input, as in Eliseev
& Mazur 2023) can be read ahead too. Demand reads go before guesses, and a
guess the next router did not confirm is dropped (mid-read too) or, if
already read, is the policy's next victim: replaying a recorded Mixtral-shape
trace (bench/mixtral.py), this raised LRU's hit rate from 68% to 71% at 13
of 32 experts and from 85% to 90% at 20.
"""

from __future__ import annotations

import dataclasses
import mmap
import threading
from collections import Counter, deque
from typing import Callable

from .errors import CpuinferError
from .gguf_file import GGUFFile
from .moe import ExpertStats
from .slabs import Extent, FileReader, anonymous, lay_out, load_dense
from .weights import Expert, Layer, Weights


class MappedExperts:
    """Experts read in place from the mapped file: the model fits its budget."""

    guesses_next = False  # the page cache decides what is read ahead

    def __init__(self, layers: tuple[Layer, ...], stats):
        self._layers = layers
        self.stats = stats  # moe.ExpertStats

    def run(self, layer: int, experts: list[int], compute: Callable[[int, Expert], None],
            next_guess: list[int] | None = None) -> None:
        """compute(e, expert) for every e in `experts`, in order."""
        for e in experts:
            compute(e, self._layers[layer].experts[e])


def expert_layout(gguf: GGUFFile, layers: tuple[Layer, ...]) -> tuple[dict[tuple[int, int], list[Extent]], int]:
    """Every (layer, expert)'s three matrices as extents of a slab, and the slab size (the largest expert).

    Works from the experts' views of the mapping, so any tensor layout (3-D
    expert stacks, or one 2-D tensor per expert) is read the same way.
    """
    layout, slab = {}, 0
    for i, layer in enumerate(layers):
        for e, expert in enumerate(layer.experts):
            layout[(i, e)], size = lay_out(gguf, [m.data for m in (expert.gate, expert.up, expert.down)])
            slab = max(slab, size)
    return layout, slab


def cache_experts(gguf: GGUFFile, weights: Weights, layout: dict[tuple[int, int], list[Extent]], slab_bytes: int,
                  slots: int, policy, guesses_next: bool) -> tuple[Weights, "ExpertCache"]:
    """The model's weights with the dense part in a slab, and a cache of `slots` experts read from the
    file: afterwards the mapping holds no pages."""
    reader = FileReader(gguf.path)
    mapped = weights.layers
    experts = {id(m.data) for layer in mapped for ex in layer.experts for m in (ex.gate, ex.up, ex.down)}
    dense = load_dense(gguf, weights, reader, experts)
    stats = ExpertStats(len(mapped), len(mapped[0].experts))
    return dense, ExpertCache(reader, mapped, layout, slab_bytes, slots, policy, stats, guesses_next)


class ExpertCache:
    """Whole experts in preallocated slabs (at most `capacity` at a time), read by a reader thread.

    Keys are (layer, expert). The compute thread pins the experts of the
    layer it runs (never evicted); the policy (cache_policy.py) names the
    victim among the others. `stats` (moe.ExpertStats) gets hits, misses,
    bytes read and guesses.
    """

    def __init__(self, reader: FileReader, layers: tuple[Layer, ...], layout: dict[tuple[int, int], list[Extent]],
                 slab_bytes: int, slots: int, policy, stats, guesses_next: bool = True):
        self.reader, self.path, self.policy, self.stats = reader, reader.path, policy, stats
        self.guesses_next = guesses_next  # read the next layer's guessed experts ahead
        self.slots, self.slab_bytes = slots, slab_bytes
        self._layers, self._layout = layers, layout
        self._arena, self._bytes = anonymous(slots * slab_bytes)
        self._cv = threading.Condition()
        self.capacity = slots  # slots that may be filled (fewer while extra KV caches need the room)
        self._free = list(range(slots - 1, -1, -1))  # pop() hands out the lowest slot first
        self._slot_of: dict[tuple[int, int], int] = {}  # resident keys
        self._views: dict[int, Expert] = {}  # slot -> its expert, as views of the slab
        self._pins: Counter = Counter()  # keys the running layer still needs
        self._demand: deque = deque()  # keys to read because a router chose them
        self._guesses: deque = deque()  # keys to read on a guess, after every demand
        self._guessed: dict[int, set[int]] = {}  # layer -> experts guessed for it
        self._unconfirmed: set[tuple[int, int]] = set()  # read on a guess, not picked since
        self._loading: tuple[int, int] | None = None
        self._loading_guess = False
        self._cancel = False  # drop the guess being read
        self._error: CpuinferError | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._read_loop, name="cpuinfer-expert-reader", daemon=True)
        self._thread.start()

    # --- the compute thread ---------------------------------------------------------------

    def run(self, layer: int, experts: list[int], compute: Callable[[int, Expert], None],
            next_guess: list[int] | None = None) -> None:
        """compute(e, expert) for every e in `experts`, in order, each once it is resident.

        Reads ahead as many of them as the capacity allows, so an expert is read
        while the one before it computes; the order is kept so the sums, and the
        logits, are exactly those of the mapping. `next_guess`: experts the next
        layer will likely choose, read after these.
        """
        keys = [(layer, int(e)) for e in experts]
        with self._cv:
            self._route(layer, keys)
            window = min(len(keys), self.capacity)
            for key in keys[:window]:
                self._want(key)
            if next_guess is not None:
                self._guess(layer + 1, next_guess)
            self._cv.notify_all()
        try:
            for i, key in enumerate(keys):
                compute(key[1], self._wait(key))
                with self._cv:
                    self._pins[key] -= 1
                    if i + window < len(keys):
                        self._want(keys[i + window])
                    self._cv.notify_all()
        finally:  # Ctrl-C or an error: unpin this layer and forget its unread keys
            with self._cv:
                for key in keys:
                    self._pins.pop(key, None)
                self._demand = deque(k for k in self._demand if k not in keys)
                self._cv.notify_all()

    def resize(self, capacity: int) -> None:
        """Hold at most `capacity` experts (between 1 and `slots`), dropping the least wanted at once if
        they are not in use."""
        with self._cv:
            self.capacity = max(1, min(capacity, self.slots))
            while len(self._slot_of) > self.capacity:
                victim = self.policy.victim(self._evictable)
                if victim is None:
                    break  # in use: the next read frees it
                self._release_slot(self._evict(victim))

    def close(self) -> None:
        """Stop the reader and close the file (the slabs go with the object)."""
        with self._cv:
            self._closed = self._cancel = True
            self._cv.notify_all()
        if threading.current_thread() is not self._thread:  # a garbage collection may run on any thread
            self._thread.join()
        self.reader.close()

    def resident(self) -> list[tuple[int, int]]:
        """The keys held now."""
        with self._cv:
            return sorted(self._slot_of)

    def _route(self, layer: int, keys: list[tuple[int, int]]) -> None:
        """Count what the router's choice finds, and drop the guesses it did not confirm."""
        s, chosen = self.stats, {e for _, e in keys}
        for key in keys:
            self.policy.picked(key)
            self._unconfirmed.discard(key)
            if key in self._slot_of or key == self._loading:
                s.hits += 1
            else:
                s.misses += 1
        guessed = self._guessed.pop(layer, None)
        if guessed is not None:
            s.guesses += len(guessed)
            s.guesses_right += len(guessed & chosen)
            for e in guessed - chosen:
                if (layer, e) in self._unconfirmed:
                    self._unconfirmed.discard((layer, e))
                    self.policy.demoted((layer, e))
        self._guesses = deque(k for k in self._guesses if k[0] != layer)
        if self._loading_guess and self._loading is not None and self._loading[0] == layer:
            if self._loading[1] in chosen:
                self._loading_guess = False  # now a demand read
            else:
                self._cancel = True

    def _guess(self, layer: int, experts: list[int]) -> None:
        """Queue these experts of `layer` to be read after every demand read."""
        self._guessed[layer] = {int(e) for e in experts}
        for e in sorted(self._guessed[layer]):
            key = (layer, e)
            if key not in self._slot_of and key != self._loading and key not in self._guesses:
                self._guesses.append(key)

    def _want(self, key) -> None:
        self._pins[key] += 1
        if key not in self._slot_of and key != self._loading and key not in self._demand:
            self._demand.append(key)

    def _wait(self, key) -> Expert:
        with self._cv:
            while key not in self._slot_of:
                if self._error is not None:
                    raise self._error
                self._cv.wait()
            return self._views[self._slot_of[key]]

    # --- the reader thread ----------------------------------------------------------------

    def _evictable(self, key) -> bool:
        return self._pins[key] == 0

    def _evict(self, key) -> int:
        self.policy.removed(key)
        self._unconfirmed.discard(key)
        slot = self._slot_of.pop(key)
        del self._views[slot]
        return slot

    def _release_slot(self, slot: int) -> None:
        """Give a slot's memory back to the system (while extra KV caches need it)."""
        self._arena.madvise(mmap.MADV_DONTNEED, slot * self.slab_bytes, self.slab_bytes)
        self._free.append(slot)

    def _claim(self, guess: bool) -> int | None:
        """A slot to read into: a free one, or the policy's victim's; None for a guess if all are in use."""
        while True:
            if len(self._slot_of) < self.capacity and self._free:
                return self._free.pop()
            victim = self.policy.victim(self._evictable)
            if victim is not None:
                slot = self._evict(victim)
                if len(self._slot_of) < self.capacity:
                    return slot
                self._release_slot(slot)  # the capacity shrank: this slot goes back
                continue
            if guess:
                return None
            # Every resident expert is pinned by the running layer. A layer pins at most
            # `capacity` experts, one of them this unread one, so this happens only if the
            # capacity shrank mid-layer: go over it until the layer ends (the slot exists).
            return self._free.pop()

    def _next_read(self) -> tuple[tuple[int, int], int] | None:
        with self._cv:
            while True:
                if self._closed:
                    return None
                if self._demand or self._guesses:
                    guess = not self._demand
                    key = (self._guesses if guess else self._demand).popleft()
                    if key in self._slot_of:
                        continue
                    slot = self._claim(guess)
                    if slot is None:
                        continue
                    self._loading, self._loading_guess, self._cancel = key, guess, False
                    return key, slot
                self._cv.wait()

    def _read_loop(self) -> None:
        while (job := self._next_read()) is not None:
            key, slot = job
            try:
                done = self._read(key, slot)
                error = None
            except Exception as e:  # OSError, or a bug: either way the compute thread must hear of it
                done, error = False, CpuinferError(f"{self.path}: cannot read expert {key[1]} of layer {key[0]} "
                                                   f"({getattr(e, 'strerror', None) or e})")
            with self._cv:
                self._loading = None
                if done:
                    self._slot_of[key] = slot
                    self._views[slot] = self._expert_view(key, slot)
                    self.policy.added(key)
                    if self._loading_guess:
                        self._unconfirmed.add(key)
                else:
                    self._free.append(slot)
                    self._error = error or self._error
                self._cv.notify_all()

    def _read(self, key, slot: int) -> bool:
        """Read the expert's matrices into the slot; False if its guess was dropped meanwhile."""
        view = memoryview(self._arena)
        for extent in self._layout[key]:
            done, nbytes = self.reader.read(extent, view, slot * self.slab_bytes, lambda: self._cancel)
            self.stats.disk_bytes += nbytes
            if not done:
                return False
        return True

    def _expert_view(self, key, slot: int) -> Expert:
        mapped = self._layers[key[0]].experts[key[1]]
        return Expert(*(dataclasses.replace(m, data=extent.view(self._bytes, slot * self.slab_bytes))
                        for m, extent in zip((mapped.gate, mapped.up, mapped.down), self._layout[key])))
