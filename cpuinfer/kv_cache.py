"""The key/value cache: a rolling buffer of fixed size, one per conversation.

Position p lives in slot p % size (mistral-inference's layout). With a sliding
window W the buffer needs only W slots however long the conversation runs;
without one it holds n_ctx positions and refuses to grow past them.

The cache is the whole state of a sequence: the model itself is shared and
stateless, so one loaded model serves as many conversations as there are
caches (`model.forward(ids, cache)`).

Keys and values are stored as float16 by default (llama.cpp's default: half
of float32's memory, 0.5 GiB instead of 1 GiB for Mistral-7B's 4096-token
window), or float32, or q8_0 blocks (kernels/kv_store.py).
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .errors import ContextFullError, CpuinferError
from .kernels.kv_store import KV_TYPES, Q8_BLOCK, round_to_cache, store_kv

DEFAULT_KV_TYPE = "f16"


class RollingKVCache:
    """Keys and values of every layer, [layers, kv_heads, slots, head_dim] of the cache type
    (with per-block scales for q8_0: `k_scales`, `v_scales`)."""

    def __init__(self, config: ModelConfig, n_ctx: int, kv_type: str = DEFAULT_KV_TYPE):
        if kv_type not in KV_TYPES:
            raise CpuinferError(f"unknown KV cache type {kv_type!r}; choose one of {', '.join(KV_TYPES)}")
        if kv_type == "q8_0" and config.head_dim % Q8_BLOCK:
            raise CpuinferError(f"a q8_0 KV cache needs a head dimension that is a multiple of {Q8_BLOCK}, "
                                f"not {config.head_dim}; use f16")
        self.n_ctx = n_ctx
        self.kv_type = kv_type
        self.sliding = config.sliding_window > 0
        # A window wider than the context is narrowed to it: memory stays at n_ctx slots.
        self.size = min(config.sliding_window, n_ctx) if self.sliding else n_ctx
        shape = (config.n_layers, config.n_kv_heads, self.size, config.head_dim)
        dtype = KV_TYPES[kv_type]
        self.k = np.zeros(shape, dtype=dtype)
        self.v = np.zeros(shape, dtype=dtype)
        blocks = shape[:3] + (config.head_dim // Q8_BLOCK,) if kv_type == "q8_0" else shape[:2] + (1, 1)
        self.k_scales = np.zeros(blocks, dtype=np.float32)
        self.v_scales = np.zeros(blocks, dtype=np.float32)
        self.pos = 0  # the next position to write
        # Mixture of experts: the experts the previous token picked in each layer (for the reuse counter).
        self.expert_picks: list[frozenset[int] | None] = [None] * config.n_layers

    @property
    def window(self) -> int:
        """How many positions (including its own) a query can see."""
        return self.size

    @property
    def limit(self) -> int | None:
        """Most positions this cache can hold; None when a sliding window lets it roll forever."""
        return None if self.sliding else self.n_ctx

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.k_scales.nbytes + self.v_scales.nbytes

    def layer(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Layer i's (keys, key scales, values, value scales), as the attention kernels take them."""
        return self.k[i], self.k_scales[i], self.v[i], self.v_scales[i]

    def round(self, x: np.ndarray) -> None:
        """Round new keys or values [T, kv_heads, head_dim] in place to the precision this cache stores."""
        if self.kv_type != "f32":
            round_to_cache(self.k, x)

    def room(self) -> int | None:
        """Positions left before the cache is full; None when it never fills (sliding window)."""
        return None if self.sliding else self.n_ctx - self.pos

    def check_room(self, n_new: int) -> None:
        """Raise ContextFullError unless n_new more positions fit."""
        room = self.room()
        if room is not None and n_new > room:
            raise ContextFullError(
                f"context full: {self.pos} of {self.n_ctx} positions used, {n_new} more requested "
                "(start a new conversation, or use a larger context)")

    def store(self, layer: int, k_new: np.ndarray, v_new: np.ndarray) -> None:
        """Write the keys/values [T, kv_heads * head_dim] of positions pos .. pos+T-1."""
        shape = (k_new.shape[0], self.k.shape[1], self.k.shape[3])
        store_kv(*self.layer(layer), k_new.reshape(shape), v_new.reshape(shape), self.pos)

    def advance(self, n: int) -> None:
        self.pos += n

    def rewind(self, pos: int) -> bool:
        """Forget positions >= pos. False (and nothing changes) when the buffer has already
        overwritten a slot that positions < pos still need."""
        if pos > self.pos or pos < 0:
            return False
        if self.sliding and self.pos - pos > 1 and self.pos > self.size:
            return False
        if pos != self.pos:
            self.expert_picks = [None] * len(self.expert_picks)
        self.pos = pos
        return True

    def reset(self) -> None:
        """Empty the cache: the next token is at position 0."""
        self.pos = 0
        self.expert_picks = [None] * len(self.expert_picks)
