"""`cpuinfer.load(path)`: a GGUF file mapped into a runnable model with its tokenizer."""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np

from .config import ModelConfig
from .errors import CpuinferError, GGUFError
from .gguf_file import GGUFFile
from .kernels import int8_dot
from .threads import physical_cores, set_threads
from .tokenizer import Tokenizer, from_gguf_metadata
from .transformer import Transformer
from .weights import load_weights

DEFAULT_MAX_CTX = 4096


class Model:
    """A loaded model: `forward` appends tokens to its KV cache and returns their logits."""

    def __init__(self, path: str | os.PathLike, n_ctx: int | None = None, threads: int | None = None,
                 exact: bool = False):
        self.path = str(path)
        self.exact = exact
        self.file = GGUFFile(path)
        md = self.file.metadata
        embd = self.file.tensors.get("token_embd.weight")
        if embd is None or len(embd.shape) != 2:
            raise GGUFError(f"{self.path}: no 2-D token_embd.weight tensor")
        self.config = ModelConfig.from_metadata(md, n_vocab=embd.shape[0])
        self.tokenizer: Tokenizer = from_gguf_metadata(md)
        if self.tokenizer.vocab_size != self.config.n_vocab:
            raise GGUFError(f"{self.path}: the tokenizer has {self.tokenizer.vocab_size} tokens but the embedding "
                            f"has {self.config.n_vocab} rows")
        weights = load_weights(self.file, self.config, int8=not exact)
        if n_ctx is None:
            n_ctx = min(self.config.context_length, DEFAULT_MAX_CTX)
        # With a sliding window the cache holds min(window, n_ctx) slots whatever n_ctx is.
        if n_ctx <= 0 or (n_ctx > self.config.context_length and not self.config.sliding_window):
            raise CpuinferError(f"the context must be 1..{self.config.context_length} tokens "
                                f"(the length this model was trained for), not {n_ctx}")
        self.threads = set_threads(threads or physical_cores())
        try:
            self.transformer = Transformer(self.config, weights, n_ctx, self.threads)
        except MemoryError:
            raise CpuinferError(f"not enough memory for a KV cache of {n_ctx} tokens; use a smaller context") from None

    @property
    def kernels(self) -> str:
        """The arithmetic of the matrix products: "int8 (<instructions>)" or "float32"."""
        return f"int8 ({int8_dot.ISA})" if not self.exact and int8_dot.ISA else "float32"

    def set_threads(self, threads: int) -> None:
        """Run on `threads` threads from now on."""
        self.threads = set_threads(threads)
        self.transformer.use_threads(self.threads)

    @property
    def n_ctx(self) -> int:
        return self.transformer.cache.n_ctx

    @property
    def context_limit(self) -> int | None:
        """Most tokens a sequence may hold; None when a sliding window lets the cache roll forever."""
        return None if self.transformer.cache.sliding else self.n_ctx

    def room(self) -> int | None:
        """Positions left before the context is full (None: it never fills)."""
        return self.transformer.cache.room()

    @property
    def pos(self) -> int:
        """Tokens in the KV cache (positions processed since the last reset)."""
        return self.transformer.pos

    @property
    def expert_stats(self):
        """Router counters of a mixture-of-experts model (None for dense models)."""
        return self.transformer.expert_stats

    def forward(self, ids, all_logits: bool = True, on_chunk=None) -> np.ndarray:
        """Logits float32 [len(ids), vocab] of `ids` appended after the cached positions."""
        return self.transformer.forward(ids, all_logits=all_logits, on_chunk=on_chunk)

    def reset(self) -> None:
        """Empty the KV cache: the next token is at position 0."""
        self.transformer.reset()

    def rewind(self, pos: int) -> bool:
        """Drop cached positions >= pos; False (cache unchanged) if the rolling buffer already lost
        what they would need."""
        return self.transformer.cache.rewind(pos)

    def generate(self, ids, sampler, max_tokens: int | None = None, on_prefill=None) -> Iterator[int]:
        """Yield sampled token ids after prefilling `ids`; stops at an end-of-sequence token."""
        from .generation import generate

        return generate(self, ids, sampler, max_tokens=max_tokens, on_prefill=on_prefill)


def load(path: str | os.PathLike, n_ctx: int | None = None, threads: int | None = None,
         exact: bool = False) -> Model:
    """Memory-map a GGUF model. `n_ctx` defaults to min(trained context, 4096); `threads` to physical cores.

    By default the quantized matrices multiply activations quantized to int8 with integer dot
    products where the CPU has them (AVX2 or better), as llama.cpp does; `exact=True` keeps the
    activations in float32 (exact up to float32 rounding: for references and tests).
    """
    return Model(path, n_ctx=n_ctx, threads=threads, exact=exact)
