"""Perplexity of a text, computed the way llama.cpp's `llama-perplexity` does.

The text is tokenized once (with BOS if the model adds one) and cut into
windows of `ctx` tokens starting every `stride` tokens (non-overlapping by
default). Each window is evaluated from an empty cache, its first token
replaced by BOS when the model uses one, and only the second half is scored:
the logits at positions ctx/2 .. ctx-2 predict the tokens at ctx/2+1 .. ctx-1,
so every scored token has at least ctx/2 tokens of context. PPL = exp(mean
negative log-likelihood); the ± is PPL times the standard error of that mean.
With a base model (e.g. F16 against a Q4_0), also the KL divergence of the
model's token distributions from the base's, and how often their top-1 agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from .errors import CpuinferError


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x -= x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class PerplexityResult:
    nll: list[float] = field(default_factory=list)  # per scored token
    kl: list[float] = field(default_factory=list)  # per scored token, with a base model
    base_nll: list[float] = field(default_factory=list)
    top1_same: int = 0
    windows: int = 0

    @staticmethod
    def _ppl(nll: list[float]) -> tuple[float, float]:
        n = len(nll)
        if n == 0:
            return float("nan"), float("nan")
        mean = float(np.mean(nll))
        se = float(np.std(nll, ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        return math.exp(mean), math.exp(mean) * se

    @property
    def tokens(self) -> int:
        return len(self.nll)

    @property
    def ppl(self) -> tuple[float, float]:
        """(perplexity, its standard error)."""
        return self._ppl(self.nll)

    @property
    def base_ppl(self) -> tuple[float, float]:
        return self._ppl(self.base_nll)

    @property
    def mean_kl(self) -> float:
        return float(np.mean(self.kl)) if self.kl else float("nan")

    @property
    def top1_agreement(self) -> float:
        return self.top1_same / self.tokens if self.kl else float("nan")

    def as_dict(self) -> dict:
        ppl, err = self.ppl
        out = dict(tokens=self.tokens, windows=self.windows, ppl=ppl, ppl_stderr=err)
        if self.kl:
            base, base_err = self.base_ppl
            out.update(base_ppl=base, base_ppl_stderr=base_err, delta_ppl=ppl - base, mean_kl=self.mean_kl,
                       top1_agreement=self.top1_agreement)
        return out


def windows(ids: list[int], ctx: int, stride: int) -> Iterator[list[int]]:
    for start in range(0, len(ids) - ctx + 1, stride):
        yield ids[start:start + ctx]


def perplexity(model, text: str, ctx: int = 512, stride: int | None = None, base=None,
               on_window: Callable[[int, int, PerplexityResult], None] | None = None) -> PerplexityResult:
    """Score `text` with `model` (and compare with `base`, another loaded model of the same vocabulary)."""
    stride = stride or ctx
    if ctx < 4 or stride < 1:
        raise CpuinferError("--ctx must be at least 4 and --stride at least 1")
    if ctx > model.config.context_length:
        raise CpuinferError(f"--ctx {ctx} is larger than the model's context {model.config.context_length}")
    tok = model.tokenizer
    if base is not None and base.tokenizer.tokens != tok.tokens:
        raise CpuinferError("the base model has a different vocabulary")
    ids = tok.encode(text, bos=tok.add_bos)
    n_windows = (len(ids) - ctx) // stride + 1 if len(ids) >= ctx else 0
    if n_windows == 0:
        raise CpuinferError(f"the text has {len(ids)} tokens, fewer than one window of {ctx}")
    result = PerplexityResult()
    cache = model.new_cache(ctx)
    base_cache = base.new_cache(ctx) if base is not None else None
    first = ctx // 2
    for window in windows(ids, ctx, stride):
        if tok.add_bos and tok.bos_id is not None:
            window = [tok.bos_id] + window[1:]
        targets = np.asarray(window[first + 1:])
        logp = _scored_log_probs(model, cache, window, first)
        result.nll.extend((-logp[np.arange(targets.size), targets]).tolist())
        if base is not None:
            base_logp = _scored_log_probs(base, base_cache, window, first)
            result.base_nll.extend((-base_logp[np.arange(targets.size), targets]).tolist())
            p_base = np.exp(base_logp)
            result.kl.extend((p_base * (base_logp - logp)).sum(axis=1).tolist())
            result.top1_same += int((logp.argmax(axis=1) == base_logp.argmax(axis=1)).sum())
        result.windows += 1
        if on_window:
            on_window(result.windows, n_windows, result)
    return result


def _scored_log_probs(model, cache, window: list[int], first: int) -> np.ndarray:
    cache.reset()
    logits = model.forward(window, cache, all_logits=True)
    return log_softmax(logits[first:len(window) - 1])
