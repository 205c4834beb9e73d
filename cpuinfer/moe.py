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
    """What the router did: picks per layer and expert, bytes of expert weights read, reuse.

    Counted over every sequence the model runs; "reuse" compares each token's
    picks with the previous token of the same sequence (kept in its cache).
    """

    def __init__(self, n_layers: int, n_experts: int):
        self.counts = np.zeros((n_layers, n_experts), dtype=np.int64)
        self.clear()

    def clear(self) -> None:
        """Zero every counter."""
        self.counts[:] = 0
        self.bytes_read = 0
        self.tokens = 0  # tokens routed (counted once, not per layer)
        self.reused = 0  # picks that the previous token also made in the same layer
        self.picks = 0  # picks that had a previous token to compare with

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
                    self.reused += len(picked & previous)
                    self.picks += len(picked)
                cache.expert_picks[layer] = picked
            start += n

    @property
    def bytes_per_token(self) -> float:
        return self.bytes_read / max(self.tokens, 1)

    @property
    def reuse_rate(self) -> float:
        return self.reused / max(self.picks, 1)


def moe_feed_forward(layer: Layer, layer_index: int, h: np.ndarray, out: np.ndarray, k: int,
                     scratch, workers, stats: ExpertStats, owners) -> None:
    """out = sum over each token's top-k experts of weight * down(silu(gate(h)) * up(h)).

    `owners` [(cache, rows), ...] says which sequence each run of rows belongs to (for the counters).
    """
    T = h.shape[0]
    logits = scratch.router[:T]
    matmul(layer.router, h, logits, workers)
    chosen, weights = route(logits, k)
    out[:] = 0.0
    nbytes = 0
    for e in np.unique(chosen):
        rows, which = np.nonzero(chosen == e)
        expert = layer.experts[e]
        n = len(rows)
        x = np.ascontiguousarray(h[rows])
        gate, up, down = scratch.gate[:n], scratch.up[:n], scratch.down[:n]
        matmul(expert.gate, x, gate, workers)
        matmul(expert.up, x, up, workers)
        silu_mul(gate, up)
        matmul(expert.down, gate, down, workers)
        out[rows] += weights[rows, which][:, None] * down
        nbytes += expert.nbytes
    stats.record(layer_index, chosen, nbytes, owners)
