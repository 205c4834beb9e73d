"""`cpuinfer.load(path)`: a GGUF file mapped into a runnable model with its tokenizer.

The model is weights + config + tokenizer and is shared: the state of a
conversation is its KV cache, a value made by `new_cache()` and passed to every
call, as in mlx-lm's `model(x, cache)`. Calls may come from several threads;
they run one at a time (numba's thread pool runs one parallel region at a
time), and concurrency comes from batching sequences into one step instead.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Iterator

import numpy as np

from . import bus_error
from .cache_policy import make_policy
from .config import ModelConfig
from .errors import CpuinferError, GGUFError
from .expert_cache import ExpertCache, cache_experts, expert_layout
from .ggml_types import GGMLQuantizationType as QT
from .gguf_file import GGUFFile
from .kernels import int8_dot
from .kv_cache import DEFAULT_KV_TYPE, RollingKVCache
from .linear import MATVEC_MAX_ROWS
from .memory import KVBudget, default_budget, parse_size, plan_memory, resident_bytes
from .parallel import Workers
from .threads import clamp_threads, physical_cores, threads_for_call
from .tokenizer import Tokenizer, from_gguf_metadata
from .transformer import Segment, Transformer, prompt_batch
from .weights import load_weights

DEFAULT_MAX_CTX = 4096


class Model:
    """A loaded model. `forward(ids, cache)` appends tokens to a sequence's cache and returns their logits."""

    def __init__(self, path: str | os.PathLike, n_ctx: int | None = None, threads: int | None = None,
                 kv_type: str | None = None, exact: bool = False, max_memory: int | str | None = None,
                 expert_cache: str = "lru", guess_next: bool = True):
        process = resident_bytes()
        self.path = str(path)
        self.exact = exact
        self.file = GGUFFile(path)
        md = self.file.metadata
        embd = self.file.tensors.get("token_embd.weight")
        if embd is None or len(embd.shape) != 2:
            raise GGUFError(f"{self.path}: no 2-D token_embd.weight tensor")
        self.config = ModelConfig.from_metadata(md, n_vocab=embd.shape[0], tensor_names=self.file.tensors)
        self.tokenizer: Tokenizer = from_gguf_metadata(md)
        if self.tokenizer.vocab_size != self.config.n_vocab:
            raise GGUFError(f"{self.path}: the tokenizer has {self.tokenizer.vocab_size} tokens but the embedding "
                            f"has {self.config.n_vocab} rows")
        self.weights = load_weights(self.file, self.config, int8=not exact)
        bus_error.install()  # the kernels read the mapping from here on
        self.n_ctx = self._checked_ctx(min(self.config.context_length, DEFAULT_MAX_CTX) if n_ctx is None else n_ctx)
        self.threads = clamp_threads(threads or physical_cores())
        self.kv_type = kv_type or ("f32" if exact else DEFAULT_KV_TYPE)
        RollingKVCache(self.config, 1, self.kv_type)  # an unknown or unusable type fails at load, not later
        self.batch = prompt_batch(self.config)  # tokens per prompt chunk
        policy = make_policy(expert_cache)
        layout, slab = expert_layout(self.file, self.weights.layers) if self.config.is_moe else ({}, 0)
        self.memory = plan_memory(self.file, self.config, self.n_ctx, self.kv_type, self.batch, layout, slab,
                                  default_budget() if max_memory is None else parse_size(max_memory), process)
        self.expert_cache: ExpertCache | None = None  # whole experts in slabs, when they do not all fit
        if self.config.is_moe and not self.memory.fits:
            slots = min(self.memory.expert_slots, len(layout))
            self.weights, self.expert_cache = cache_experts(self.file, self.weights, layout, slab, slots, policy,
                                                            guess_next)
            weakref.finalize(self, self.expert_cache.close)
        self.transformer = Transformer(self.config, self.weights, self.expert_cache)
        self._kv_budget = KVBudget(self.memory, self.expert_cache, self.config.n_experts_used)
        self._float32_weights = any(t.ggml_type == QT.F32 and len(t.shape) > 1 for t in self.file.tensors.values())
        self._workers: dict[int, Workers] = {}
        self._lock = threading.Lock()

    def _checked_ctx(self, n_ctx: int) -> int:
        # With a sliding window the cache holds min(window, n_ctx) slots whatever n_ctx is.
        if n_ctx <= 0 or (n_ctx > self.config.context_length and not self.config.sliding_window):
            raise CpuinferError(f"the context must be 1..{self.config.context_length} tokens "
                                f"(the length this model was trained for), not {n_ctx}")
        return n_ctx

    def new_cache(self, n_ctx: int | None = None, kv_type: str | None = None) -> RollingKVCache:
        """An empty KV cache for one sequence of up to `n_ctx` tokens, storing `kv_type` (f16, f32, q8_0)
        values (defaults: the model's n_ctx and kv_type)."""
        n_ctx = self._checked_ctx(self.n_ctx if n_ctx is None else n_ctx)
        try:
            cache = RollingKVCache(self.config, n_ctx, kv_type or self.kv_type)
        except MemoryError:
            raise CpuinferError(f"not enough memory for a KV cache of {n_ctx} tokens; use a smaller context") from None
        self._kv_budget.admit(cache)
        return cache

    @property
    def kernels(self) -> str:
        """The arithmetic of the matrix products: "int8 (<instructions>)" or "float32"."""
        return f"int8 ({int8_dot.ISA})" if not self.exact and int8_dot.ISA else "float32"

    @property
    def expert_stats(self):
        """Router counters of a mixture-of-experts model, over every sequence (None for dense models)."""
        return self.transformer.expert_stats

    def forward(self, ids, cache: RollingKVCache, all_logits: bool = True, on_chunk=None,
                threads: int | None = None) -> np.ndarray:
        """Logits float32 [len(ids), vocab] (or [1, vocab] of the last token) of `ids` appended to `cache`.

        A long prompt runs in chunks; `on_chunk(done, total)` is called after each.
        """
        ids = self._checked_ids(ids)
        cache.check_room(ids.size)
        step = max(1, min(self.batch, cache.size))
        outputs = []
        for start in range(0, ids.size, step):
            chunk = ids[start:start + step]
            last = start + chunk.size == ids.size
            wanted = slice(None) if all_logits else slice(-1, None) if last else slice(0)
            segment = Segment(chunk, cache, wanted)
            logits = self._step([segment], threads)[0]
            if logits.shape[0]:
                outputs.append(logits)
            if on_chunk is not None:
                on_chunk(start + chunk.size, ids.size)
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def forward_batch(self, requests: list[tuple[list[int], RollingKVCache]],
                      threads: int | None = None) -> list[np.ndarray]:
        """One step for several sequences together: each (ids, cache) is appended to its cache, and the
        logits [vocab] of its last token come back. Every weight is read once for all of them."""
        segments = []
        for ids, cache in requests:
            ids = self._checked_ids(ids)
            cache.check_room(ids.size)
            segments.append(Segment(ids, cache, slice(-1, None)))
        if len({id(s.cache) for s in segments}) != len(segments):
            raise CpuinferError("forward_batch() got the same cache twice")
        return [logits[0] for logits in self._step(segments, threads)]

    def embed(self, texts: list[str], pooling: str | None = None, normalize: bool = True,
              on_text=None, threads: int | None = None):
        """Embeddings of `texts` from the final normed hidden state: float32 [len(texts), dim], or with
        pooling "none" a list of [tokens, dim] arrays. See cpuinfer/embeddings.py."""
        from .embeddings import embed

        return embed(self, texts, pooling=pooling, normalize=normalize, on_text=on_text, threads=threads)

    def _step(self, segments: list[Segment], threads: int | None, hidden: bool = False) -> list[np.ndarray]:
        n = clamp_threads(threads or self.threads)
        blas = self._float32_weights or sum(len(s) for s in segments) > MATVEC_MAX_ROWS or \
            any(len(s) > 1 for s in segments)
        with self._lock, threads_for_call(n, blas):
            return self.transformer.step(segments, self._workers_for(n), hidden=hidden)

    def _workers_for(self, threads: int) -> Workers:
        if threads not in self._workers:
            cfg = self.config
            self._workers[threads] = Workers(threads, widest_row=max(cfg.dim, cfg.ffn_dim, cfg.n_heads * cfg.head_dim))
        return self._workers[threads]

    def _checked_ids(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            raise CpuinferError("forward() needs at least one token")
        bad = (ids < 0) | (ids >= self.config.n_vocab)
        if bad.any():
            raise CpuinferError(f"token id {int(ids[bad][0])} is outside the vocabulary (0..{self.config.n_vocab - 1})")
        return ids

    def generate(self, ids, cache: RollingKVCache, sampler, max_tokens: int | None = None,
                 on_prefill=None) -> Iterator[int]:
        """Yield sampled token ids after prefilling `ids` into `cache`; stops at an end-of-sequence token."""
        from .generation import generate

        return generate(self, cache, ids, sampler, max_tokens=max_tokens, on_prefill=on_prefill)


def load(path: str | os.PathLike, n_ctx: int | None = None, threads: int | None = None,
         kv_type: str | None = None, exact: bool = False, max_memory: int | str | None = None,
         expert_cache: str = "lru", guess_next: bool = True) -> Model:
    """Memory-map a GGUF model. `n_ctx` and `kv_type` are the defaults of new caches: min(trained
    context, 4096) and float16; `threads` defaults to the physical cores.

    By default the quantized matrices multiply activations quantized to int8 with integer dot
    products where the CPU has them (AVX2 or better), as llama.cpp does. `exact=True` keeps the
    activations in float32, and the KV cache too unless `kv_type` is given: exact up to float32
    rounding, for references and tests.

    `max_memory` (bytes, or a size such as "12G") caps the process's memory; by
    default its current memory plus 80% of the memory available now. The dense
    weights and KV caches stay resident; a mixture of experts that does not fit
    keeps whole experts in a cache within the rest (`expert_cache`: "lru" or
    "lfu"), read from the file as the router picks them and, with `guess_next`,
    read ahead for the next layer's guessed choice. A model whose dense part
    does not fit is refused.
    """
    return Model(path, n_ctx=n_ctx, threads=threads, kv_type=kv_type, exact=exact, max_memory=max_memory,
                 expert_cache=expert_cache, guess_next=guess_next)
