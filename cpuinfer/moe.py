"""Mixtral's sparse feed-forward: a router picks the top-k experts of every token.

Only the chosen experts' weights are touched. For a chunk of tokens, the
tokens are grouped by expert, so every chosen expert's bytes are read once per
chunk however many tokens picked it; the counters record what was read.
"""

from __future__ import annotations

import numpy as np

from .kernels.nn import silu_mul
from .linear import matmul
from .weights import Layer


def route(logits: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts per row of router logits [T, E] and their weights: softmax over the k logits.

    (Equal to softmax over all experts, keep the top k, renormalise.)
    """
    chosen = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(logits, chosen, axis=1).astype(np.float64)
    w = np.exp(top - top[:, :1])
    return chosen, (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


class ExpertStats:
    """What the router did and where the experts came from, counted over every sequence the model runs.

    Router: picks per layer and expert, bytes of expert weights computed with,
    and reuse: how many of each token's picks the previous token of the same
    sequence (kept in its cache) also made, per layer. Expert cache (zero when
    the experts are read from the mapping): picks found resident (hits) or
    read after the router chose (misses), bytes read from the file, and how
    many guessed experts of the next layer its router then chose.
    """

    def __init__(self, n_layers: int, n_experts: int):
        self.counts = np.zeros((n_layers, n_experts), dtype=np.int64)
        self.reused = np.zeros(n_layers, dtype=np.int64)  # picks the previous token also made in the layer
        self.compared = np.zeros(n_layers, dtype=np.int64)  # picks that had a previous token to compare with
        self.clear()

    def clear(self) -> None:
        """Zero every counter."""
        self.counts[:] = 0
        self.reused[:] = 0
        self.compared[:] = 0
        self.bytes_read = 0
        self.tokens = 0  # tokens routed (counted once, not per layer)
        self.hits = self.misses = self.disk_bytes = self.guesses = self.guesses_right = 0

    def record(self, layer: int, chosen: np.ndarray, nbytes: int, owners) -> None:
        """Count one layer's picks `chosen` [T, k]; `owners` lists (cache, rows) of consecutive row runs."""
        np.add.at(self.counts[layer], chosen.ravel(), 1)
        self.bytes_read += nbytes
        if layer == 0:
            self.tokens += chosen.shape[0]
        start = 0
        for cache, n in owners:
            for row in chosen[start:start + n]:
                picked = frozenset(row.tolist())
                previous = cache.expert_picks[layer]
                if previous is not None:
                    self.reused[layer] += len(picked & previous)
                    self.compared[layer] += len(picked)
                cache.expert_picks[layer] = picked
            start += n

    @property
    def bytes_per_token(self) -> float:
        return self.bytes_read / max(self.tokens, 1)

    @property
    def reuse_rate(self) -> float:
        return float(self.reused.sum() / max(self.compared.sum(), 1))

    @property
    def reuse_per_layer(self) -> list[float]:
        return (self.reused / np.maximum(self.compared, 1)).tolist()

    def as_dict(self) -> dict:
        """The counters per token, for bench --json and chat's /stats (cache figures None without a cache)."""
        per_token = 1 / max(self.tokens, 1)
        looked_up = self.hits + self.misses
        return dict(
            expert_bytes_per_token=self.bytes_per_token, expert_reuse_rate=self.reuse_rate,
            expert_reuse_per_layer=self.reuse_per_layer, expert_histogram=self.counts.sum(axis=0).tolist(),
            cache_hits_per_token=self.hits * per_token if looked_up else None,
            cache_misses_per_token=self.misses * per_token if looked_up else None,
            cache_hit_rate=self.hits / looked_up if looked_up else None,
            cache_read_bytes_per_token=self.disk_bytes * per_token if looked_up else None,
            guess_accuracy=self.guesses_right / self.guesses if self.guesses else None)


def summary(counters: dict) -> str:
    """One line of expert counters (ExpertStats.as_dict(), plus disk_bytes_per_token if measured)."""
    c = counters
    parts = [f"experts {c['expert_bytes_per_token'] / 1e6:.0f} MB/token", f"reuse {c['expert_reuse_rate']:.0%}"]
    if c["cache_hit_rate"] is not None:
        parts.append(f"cache hits {c['cache_hit_rate']:.0%} ({c['cache_misses_per_token']:.1f} misses/token, "
                     f"{c['cache_read_bytes_per_token'] / 1e6:.0f} MB read/token)")
    if c.get("disk_bytes_per_token") is not None:
        parts.append(f"disk {c['disk_bytes_per_token'] / 1e6:.0f} MB/token")
    if c["guess_accuracy"] is not None:
        parts.append(f"next-layer guesses right {c['guess_accuracy']:.0%}")
    return ", ".join(parts)


# Guess the next layer's experts only when decoding (a prompt chunk chooses nearly every expert anyway).
GUESS_MAX_ROWS = 4


def moe_feed_forward(layer: Layer, layer_index: int, h: np.ndarray, out: np.ndarray, k: int,
                     scratch, workers, experts, owners, next_router=None) -> None:
    """out = sum over each token's top-k experts of weight * down(silu(gate(h)) * up(h)).

    `experts` (expert_cache.py) hands out each chosen expert's weights and
    counts into `experts.stats`; `owners` [(cache, rows), ...] says which
    sequence each run of rows belongs to (for the counters). With
    `next_router`, the next layer's router applied to h guesses its experts,
    so they can be read ahead.
    """
    T = h.shape[0]
    logits = scratch.router[:T]
    matmul(layer.router, h, logits, workers)
    chosen, weights = route(logits, k)
    guess = None
    if next_router is not None and experts.guesses_next and T <= GUESS_MAX_ROWS:
        guess = np.unique(route(matmul(next_router, h, logits, workers), k)[0]).tolist()
    out[:] = 0.0

    def compute(e: int, expert) -> None:
        rows, which = np.nonzero(chosen == e)
        n = len(rows)
        x = np.ascontiguousarray(h[rows])
        gate, up, down = scratch.gate[:n], scratch.up[:n], scratch.down[:n]
        matmul(expert.gate, x, gate, workers)
        matmul(expert.up, x, up, workers)
        silu_mul(gate, up)
        matmul(expert.down, gate, down, workers)
        out[rows] += weights[rows, which][:, None] * down

    picked = np.unique(chosen).tolist()
    experts.run(layer_index, picked, compute, guess)
    experts.stats.record(layer_index, chosen, sum(layer.experts[e].nbytes for e in picked), owners)
