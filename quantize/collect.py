"""Collect an importance matrix: run the model over a calibration text and sum each matmul input's squares.

As llama-imatrix does, the text is cut into chunks of `ctx` tokens, each
evaluated from an empty cache (its first token replaced by BOS when the model
uses one), and every weight matrix's input rows are squared and summed per
column, with the count of rows (per expert for Mixtral's stacks: an expert sees
only the tokens routed to it). The router and output.weight are left out, as
llama-imatrix leaves them (the router stays F32; output needs --process-output).

The recorder replaces `matmul` in the two modules that call it
(transformer.py, moe.py) only while `collect` runs, so the normal forward pays
nothing for it.
"""

from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator

import numpy as np

from cpuinfer import linear, moe, transformer
from cpuinfer.errors import CpuinferError

from .imatrix import Entry, Imatrix

_EXPERT = re.compile(r"(.+)\[(\d+)\]")  # linear.py names expert e of a stack NAME[e]
_SKIPPED = re.compile(r"output\.weight|blk\.\d+\.ffn_gate_inp\.weight")


class _Sums:
    """Per tensor and expert: the float64 sums of squared input columns and the count of rows."""

    def __init__(self) -> None:
        self.sums: dict[str, dict[int, np.ndarray]] = {}
        self.counts: dict[str, dict[int, int]] = {}

    def add(self, name: str, x: np.ndarray) -> None:
        m = _EXPERT.fullmatch(name)
        name, expert = (m.group(1), int(m.group(2))) if m else (name, 0)
        if _SKIPPED.fullmatch(name):
            return
        squares = np.einsum("ij,ij->j", x, x, dtype=np.float64)
        per_expert = self.sums.setdefault(name, {})
        per_expert[expert] = per_expert.get(expert, 0.0) + squares
        counts = self.counts.setdefault(name, {})
        counts[expert] = counts.get(expert, 0) + x.shape[0]

    def imatrix(self, n_experts: int) -> Imatrix:
        out = Imatrix()
        for name in sorted(self.sums):
            per_expert = self.sums[name]
            n = max(n_experts, 1) if "_exps." in name else 1
            cols = next(iter(per_expert.values())).shape[0]
            sums = np.stack([per_expert.get(e, np.zeros(cols)) for e in range(n)]).astype(np.float32)
            out.entries[name] = Entry(sums, np.array([self.counts[name].get(e, 0) for e in range(n)], np.int64))
        return out


@contextlib.contextmanager
def _recording(sums: _Sums) -> Iterator[None]:
    real = linear.matmul

    def recorded(w, x, out, workers):
        sums.add(w.name, x)
        return real(w, x, out, workers)

    transformer.matmul = moe.matmul = recorded
    try:
        yield
    finally:
        transformer.matmul = moe.matmul = real


def collect(model, text: str, ctx: int = 512, dataset: str = "",
            on_chunk: Callable[[int, int], None] | None = None) -> Imatrix:
    """The importance matrix of `model` (a loaded cpuinfer model) over `text` in chunks of `ctx` tokens.

    `on_chunk(done, total)` is called after every chunk.
    """
    if ctx < 2:
        raise CpuinferError("--ctx must be at least 2")
    if ctx > model.config.context_length:
        raise CpuinferError(f"--ctx {ctx} is larger than the model's context {model.config.context_length}")
    tok = model.tokenizer
    ids = tok.encode(text, bos=tok.add_bos)
    chunks = len(ids) // ctx
    if chunks == 0:
        raise CpuinferError(f"the text has {len(ids)} tokens, fewer than one chunk of {ctx}")
    sums = _Sums()
    cache = model.new_cache(ctx)
    with _recording(sums):
        for c in range(chunks):
            chunk = ids[c * ctx:(c + 1) * ctx]
            if tok.add_bos and tok.bos_id is not None:
                chunk = [tok.bos_id] + chunk[1:]
            cache.reset()
            model.forward(chunk, cache, all_logits=False)
            if on_chunk:
                on_chunk(c + 1, chunks)
    out = sums.imatrix(model.config.n_experts)
    out.datasets, out.chunk_count, out.chunk_size = [dataset] if dataset else [], chunks, ctx
    return out
