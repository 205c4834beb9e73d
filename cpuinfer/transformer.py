"""The decoder: embeddings -> N x (attention, feed-forward) -> norm -> logits.

Reads like the Llama/Mistral papers; every step is one kernel call over
activation buffers allocated once, so a decoded token allocates little more
than its logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .errors import CpuinferError
from .interrupts import interrupts_deferred
from .batched_attention import attend_kv_head
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


@dataclass
class Scratch:
    """Activation buffers for up to `batch` tokens, allocated once."""

    x: np.ndarray  # residual stream [B, dim]
    h: np.ndarray  # normalized input of a block [B, dim]
    q: np.ndarray  # [B, heads * head_dim]
    k: np.ndarray  # every layer's new keys [layers, B, kv_heads * head_dim], cached when the chunk ends
    v: np.ndarray
    attn: np.ndarray  # attention output before wo [B, heads * head_dim]
    o: np.ndarray  # block output [B, dim]
    gate: np.ndarray  # [B, ffn]
    up: np.ndarray
    down: np.ndarray  # one expert's output [B, dim]
    router: np.ndarray  # [B, n_experts]

    @classmethod
    def allocate(cls, cfg: ModelConfig, batch: int) -> "Scratch":
        def buf(n: int) -> np.ndarray:
            return np.zeros((batch, n), dtype=np.float32)

        q_dim, kv_dim = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
        per_layer_kv = (cfg.n_layers, batch, kv_dim)
        return cls(x=buf(cfg.dim), h=buf(cfg.dim), q=buf(q_dim), k=np.zeros(per_layer_kv, np.float32),
                   v=np.zeros(per_layer_kv, np.float32), attn=buf(q_dim), o=buf(cfg.dim), gate=buf(cfg.ffn_dim),
                   up=buf(cfg.ffn_dim), down=buf(cfg.dim), router=buf(max(cfg.n_experts, 1)))


class Transformer:
    """Forward pass of a Llama-family decoder with a rolling KV cache."""

    def __init__(self, config: ModelConfig, weights: Weights, n_ctx: int, threads: int, batch: int | None = None):
        self.config = config
        self.weights = weights
        self.cache = RollingKVCache(config, n_ctx)
        self.batch = max(1, min(batch or prompt_batch(config), self.cache.size))
        self.scratch = Scratch.allocate(config, self.batch)
        self.use_threads(threads)
        self.expert_stats = ExpertStats(config.n_layers, config.n_experts) if config.is_moe else None

    def use_threads(self, threads: int) -> None:
        """Split batched work over `threads` workers (decode kernels follow numba's thread count)."""
        cfg = self.config
        self.workers = Workers(threads, widest_row=max(cfg.dim, cfg.ffn_dim, cfg.n_heads * cfg.head_dim))

    @property
    def pos(self) -> int:
        """Number of positions processed since the last reset."""
        return self.cache.pos

    def reset(self) -> None:
        """Empty the cache: the next token is at position 0."""
        self.cache.reset()
        if self.expert_stats is not None:
            self.expert_stats.forget_sequence()

    def forward(self, ids, all_logits: bool = True, on_chunk=None) -> np.ndarray:
        """Run `ids` after the cached positions; return logits [len(ids), vocab] (or [1, vocab]
        for the last token only). `on_chunk(done, total)` is called after each prompt chunk."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise CpuinferError("forward() needs at least one token")
        bad = (ids < 0) | (ids >= self.config.n_vocab)
        if bad.any():
            raise CpuinferError(f"token id {int(ids[bad][0])} is outside the vocabulary (0..{self.config.n_vocab - 1})")
        self.cache.check_room(ids.size)
        outputs = []
        for start in range(0, ids.size, self.batch):
            chunk = ids[start:start + self.batch]
            last = start + chunk.size == ids.size
            logits = self._forward_chunk(chunk, n_logits=chunk.size if all_logits else int(last))
            if logits.shape[0]:
                outputs.append(logits)
            if on_chunk is not None:
                on_chunk(start + chunk.size, ids.size)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def _forward_chunk(self, ids: np.ndarray, n_logits: int) -> np.ndarray:
        """Process one chunk; return the logits of its last `n_logits` tokens.

        The chunk's keys and values reach the cache only at the end, in one
        step that Ctrl-C cannot split: an interrupted chunk leaves the cache as
        it was (in a rolling buffer, half-stored positions would overwrite
        slots that earlier positions still need).
        """
        cfg, w, s = self.config, self.weights, self.scratch
        T = ids.size
        x = s.x[:T]
        embed(w.tok_embd, ids, x)
        cos, sin = rope_tables(np.arange(self.cache.pos, self.cache.pos + T), cfg.rope_dim, cfg.rope_theta)
        for i, layer in enumerate(w.layers):
            x += self._attention(i, layer, x, cos, sin)
            x += self._feed_forward(i, layer, x)
        logits = np.empty((n_logits, cfg.n_vocab), dtype=np.float32)
        if n_logits:
            h = s.h[:n_logits]
            rms_norm(x[T - n_logits:], w.out_norm, cfg.norm_eps, h)
            matmul(w.output, h, logits, self.workers)
        with interrupts_deferred():
            for i in range(cfg.n_layers):
                self.cache.store(i, s.k[i, :T], s.v[i, :T])
            self.cache.advance(T)
        return logits

    def _attention(self, i: int, layer: Layer, x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
        cfg, s, cache = self.config, self.scratch, self.cache
        T = x.shape[0]
        h = s.h[:T]
        rms_norm(x, layer.attn_norm, cfg.norm_eps, h)
        q = matmul(layer.wq, h, s.q[:T], self.workers).reshape(T, cfg.n_heads, cfg.head_dim)
        k = matmul(layer.wk, h, s.k[i, :T], self.workers).reshape(T, cfg.n_kv_heads, cfg.head_dim)
        v = matmul(layer.wv, h, s.v[i, :T], self.workers).reshape(T, cfg.n_kv_heads, cfg.head_dim)
        rope(q, cos, sin)
        rope(k, cos, sin)
        out = s.attn[:T]
        args = (q, k, v, cache.k[i], cache.v[i], cache.pos, cache.window, out.reshape(T, cfg.n_heads, cfg.head_dim))
        if T == 1:
            attention(*args)
        else:
            def heads(_, start: int, stop: int) -> None:
                for g in range(start, stop):
                    attend_kv_head(*args, g)
            self.workers.run(heads, cfg.n_kv_heads)
        return matmul(layer.wo, out, s.o[:T], self.workers)

    def _feed_forward(self, i: int, layer: Layer, x: np.ndarray) -> np.ndarray:
        cfg, s = self.config, self.scratch
        T = x.shape[0]
        h = s.h[:T]
        rms_norm(x, layer.ffn_norm, cfg.norm_eps, h)
        if layer.ffn is None:
            moe_feed_forward(layer, i, h, s.o[:T], cfg.n_experts_used, s, self.workers, self.expert_stats)
            return s.o[:T]
        gate = matmul(layer.ffn.gate, h, s.gate[:T], self.workers)
        up = matmul(layer.ffn.up, h, s.up[:T], self.workers)
        self.workers.run(lambda _, start, stop: silu_mul(gate[start:stop], up[start:stop]), T)
        return matmul(layer.ffn.down, gate, s.o[:T], self.workers)
