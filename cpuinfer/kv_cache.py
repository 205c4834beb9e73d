"""The key/value cache: a rolling buffer of fixed size.

Position p lives in slot p % size (mistral-inference's layout). With a sliding
window W the buffer needs only W slots however long the conversation runs;
without one it holds n_ctx positions and refuses to grow past them.
"""

from __future__ import annotations

import numpy as np

from .config import ModelConfig
from .errors import ContextFullError
from .kernels.attention import store_kv


class RollingKVCache:
    """Keys and values of every layer, [layers, kv_heads, slots, head_dim] float32."""

    def __init__(self, config: ModelConfig, n_ctx: int):
        self.n_ctx = n_ctx
        self.sliding = config.sliding_window > 0
        # A window wider than the context is narrowed to it: memory stays at n_ctx slots.
        self.size = min(config.sliding_window, n_ctx) if self.sliding else n_ctx
        shape = (config.n_layers, config.n_kv_heads, self.size, config.head_dim)
        self.k = np.zeros(shape, dtype=np.float32)
        self.v = np.zeros(shape, dtype=np.float32)
        self.pos = 0  # the next position to write

    @property
    def window(self) -> int:
        """How many positions (including its own) a query can see."""
        return self.size

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    def room(self) -> int | None:
        """Positions left before the cache is full; None when it never fills (sliding window)."""
        return None if self.sliding else self.n_ctx - self.pos

    def check_room(self, n_new: int) -> None:
        """Raise ContextFullError unless n_new more positions fit."""
        room = self.room()
        if room is not None and n_new > room:
            raise ContextFullError(
                f"context full: {self.pos} of {self.n_ctx} positions used, {n_new} more requested "
                "(start a new conversation, or load the model with a larger n_ctx)")

    def store(self, layer: int, k_new: np.ndarray, v_new: np.ndarray) -> None:
        """Write the keys/values [T, kv_heads * head_dim] of positions pos .. pos+T-1."""
        shape = (k_new.shape[0], self.k.shape[1], self.k.shape[3])
        store_kv(self.k[layer], self.v[layer], k_new.reshape(shape), v_new.reshape(shape), self.pos)

    def advance(self, n: int) -> None:
        self.pos += n

    def rewind(self, pos: int) -> bool:
        """Forget positions >= pos. False (and nothing changes) when the buffer has already
        overwritten a slot that positions < pos still need."""
        if pos > self.pos or pos < 0:
            return False
        if self.sliding and self.pos - pos > 1 and self.pos > self.size:
            return False
        self.pos = pos
        return True

    def reset(self) -> None:
        self.pos = 0
