"""The decoder: embeddings -> N x (attention, feed-forward) -> norm -> logits.

Reads like the Llama/Mistral papers. The transformer holds only weights: each
step is given the sequences it advances, as segments of new tokens that each
follow what their own KV cache holds, so one step can decode a token for many
conversations at once (every weight is read once for all of them) or read a
chunk of one prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .batched_attention import attend_kv_head
from .config import ModelConfig
from .interrupts import interrupts_deferred
from .kernels.attention import attention
from .kernels.nn import rms_norm, rope, rope_tables, silu_mul
from .kv_cache import RollingKVCache
from .linear import embed, matmul
from .moe import ExpertStats, moe_feed_forward
from .parallel import Workers
from .weights import Layer, Weights

# Prompt chunks: large enough that BLAS runs near its peak and each dequantized
# weight tile serves many tokens (measured here, pp512 on SmolLM2: 64 tokens ->
# 405 t/s, 256 -> 588; pp128 on Mistral-7B Q4_0: 32 -> 7.2, 128 -> 12.9), small
# enough that progress reports come every few seconds. A mixture of experts
# reads every chosen expert once per chunk: there the largest chunk wins.
CHUNK_FLOPS = 4e12
MIN_BATCH, MAX_BATCH = 32, 256


def prompt_batch(cfg: ModelConfig) -> int:
    """Tokens per prompt chunk: a power of two in [32, 256] worth about CHUNK_FLOPS (MoE: 256)."""
    if cfg.is_moe:
        return MAX_BATCH
    q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    per_layer = 2 * cfg.dim * (q_dim + kv_dim) + 3 * cfg.dim * cfg.ffn_dim
    flops_per_token = 2 * (cfg.n_layers * per_layer + cfg.n_vocab * cfg.dim)
    batch = MIN_BATCH
    while batch < MAX_BATCH and 2 * batch * flops_per_token <= CHUNK_FLOPS:
        batch *= 2
    return batch


@dataclass(frozen=True)
class Segment:
    """New tokens of one sequence, at the positions after those its cache holds."""

    ids: np.ndarray  # int64 [n]
    cache: RollingKVCache
    wanted: slice  # the tokens (of these n) whose outputs are returned

    def __len__(self) -> int:
        return self.ids.size

    def wanted_rows(self, start: int) -> np.ndarray:
        """Row numbers of the wanted tokens in a step where this segment starts at row `start`."""
        return start + np.arange(len(self))[self.wanted]


@dataclass
class Scratch:
    """Activation buffers of one step of T tokens."""

    x: np.ndarray  # residual stream [T, dim]
    h: np.ndarray  # normalized input of a block [T, dim]
    q: np.ndarray  # [T, heads * head_dim]
    k: np.ndarray  # every layer's new keys [layers, T, kv_heads * head_dim], cached when the step ends
    v: np.ndarray
    attn: np.ndarray  # attention output before wo [T, heads * head_dim]
    o: np.ndarray  # block output [T, dim]
    gate: np.ndarray  # [T, ffn]
    up: np.ndarray
    down: np.ndarray  # one expert's output [T, dim]
    router: np.ndarray  # [T, n_experts]

    @classmethod
    def allocate(cls, cfg: ModelConfig, T: int) -> "Scratch":
        def buf(n: int) -> np.ndarray:
            return np.empty((T, n), dtype=np.float32)

        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        per_layer_kv = (cfg.n_layers, T, kv_dim)
        return cls(x=buf(cfg.dim), h=buf(cfg.dim), q=buf(q_dim), k=np.empty(per_layer_kv, np.float32),
                   v=np.empty(per_layer_kv, np.float32), attn=buf(q_dim), o=buf(cfg.dim), gate=buf(cfg.ffn_dim),
                   up=buf(cfg.ffn_dim), down=buf(cfg.dim), router=buf(max(cfg.n_experts, 1)))


class Transformer:
    """Forward pass of a Llama-family decoder; the state of each sequence lives in its RollingKVCache."""

    def __init__(self, config: ModelConfig, weights: Weights):
        self.config = config
        self.weights = weights
        self.expert_stats = ExpertStats(config.n_layers, config.n_experts) if config.is_moe else None

    def step(self, segments: list[Segment], workers: Workers, hidden: bool = False) -> list[np.ndarray]:
        """Run every segment's tokens after its cache; return each segment's logits [wanted, vocab], or
        with `hidden` its final normed hidden states [wanted, dim] (before the output projection).

        The keys and values reach the caches only at the end, in one step that
        Ctrl-C cannot split: an interrupted step leaves every cache as it was
        (in a rolling buffer, half-stored positions would overwrite slots that
        earlier positions still need).
        """
        cfg, w = self.config, self.weights
        T = sum(len(s) for s in segments)
        s = Scratch.allocate(cfg, T)
        starts = np.cumsum([0] + [len(seg) for seg in segments])
        positions = np.concatenate([np.arange(seg.cache.pos, seg.cache.pos + len(seg)) for seg in segments])
        x = s.x
        embed(w.tok_embd, np.concatenate([seg.ids for seg in segments]), x)
        cos, sin = rope_tables(positions, cfg.rope_dim, cfg.rope_theta)
        for i, layer in enumerate(w.layers):
            x += self._attention(i, layer, x, cos, sin, segments, starts, s, workers)
            x += self._feed_forward(i, layer, x, segments, s, workers)
        rows = [seg.wanted_rows(a) for seg, a in zip(segments, starts)]
        wanted = np.concatenate(rows)
        h = np.empty((wanted.size, cfg.dim), dtype=np.float32)
        rms_norm(x[wanted], w.out_norm, cfg.norm_eps, h)
        if hidden:
            out = h
        else:
            out = np.empty((wanted.size, cfg.n_vocab), dtype=np.float32)
            if wanted.size:
                matmul(w.output, h, out, workers)
        with interrupts_deferred():
            for seg, a, b in zip(segments, starts, starts[1:]):
                for i in range(cfg.n_layers):
                    seg.cache.store(i, s.k[i, a:b], s.v[i, a:b])
                seg.cache.advance(b - a)
        ends = np.cumsum([r.size for r in rows])
        return [out[e - r.size:e] for r, e in zip(rows, ends)]

    def _attention(self, i: int, layer: Layer, x: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                   segments: list[Segment], starts: np.ndarray, s: Scratch, workers: Workers) -> np.ndarray:
        cfg = self.config
        T = x.shape[0]
        rms_norm(x, layer.attn_norm, cfg.norm_eps, s.h)
        q = matmul(layer.wq, s.h, s.q, workers).reshape(T, cfg.n_heads, cfg.head_dim)
        k = matmul(layer.wk, s.h, s.k[i], workers).reshape(T, cfg.n_kv_heads, cfg.head_dim)
        v = matmul(layer.wv, s.h, s.v[i], workers).reshape(T, cfg.n_kv_heads, cfg.head_dim)
        rope(q, cos, sin)
        rope(k, cos, sin)
        out = s.attn.reshape(T, cfg.n_heads, cfg.head_dim)
        for seg, a, b in zip(segments, starts, starts[1:]):
            cache = seg.cache
            cache.round(k[a:b])  # the chunk's own keys as the cache will hold them: chunking changes nothing
            cache.round(v[a:b])
            args = (q[a:b], k[a:b], v[a:b], *cache.layer(i), cache.pos, cache.window, out[a:b])
            if b - a == 1:
                attention(*args)
            else:
                def heads(_, start: int, stop: int, args=args) -> None:
                    for g in range(start, stop):
                        attend_kv_head(*args, g)
                workers.run(heads, cfg.n_kv_heads)
        return matmul(layer.wo, s.attn, s.o, workers)

    def _feed_forward(self, i: int, layer: Layer, x: np.ndarray, segments: list[Segment], s: Scratch,
                      workers: Workers) -> np.ndarray:
        cfg = self.config
        rms_norm(x, layer.ffn_norm, cfg.norm_eps, s.h)
        if layer.ffn is None:
            moe_feed_forward(layer, i, s.h, s.o, cfg.n_experts_used, s, workers, self.expert_stats,
                             [(seg.cache, len(seg)) for seg in segments])
            return s.o
        gate = matmul(layer.ffn.gate, s.h, s.gate, workers)
        up = matmul(layer.ffn.up, s.h, s.up, workers)
        workers.run(lambda _, start, stop: silu_mul(gate[start:stop], up[start:stop]), x.shape[0])
        return matmul(layer.ffn.down, gate, s.o, workers)
