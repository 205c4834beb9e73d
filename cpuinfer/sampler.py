"""Choosing the next token from logits, in llama.cpp's order:
repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class SamplerSettings:
    """llama.cpp's defaults. temperature 0 is greedy; top_k 0, top_p 1, min_p 0, repeat_penalty 1 turn those off."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def with_(self, **changes) -> "SamplerSettings":
        return replace(self, **changes)


class Sampler:
    """Draws tokens with a private random generator, so a seed reproduces a run."""

    def __init__(self, settings: SamplerSettings = SamplerSettings()):
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray, history: list[int] | None = None) -> int:
        s = self.settings
        logits = np.asarray(logits, dtype=np.float64)
        if s.repeat_penalty != 1.0 and history and s.repeat_last_n != 0:
            recent = np.unique(np.asarray(history[-s.repeat_last_n:] if s.repeat_last_n > 0 else history))
            logits = logits.copy()
            seen = logits[recent]
            logits[recent] = np.where(seen > 0, seen / s.repeat_penalty, seen * s.repeat_penalty)
        if s.temperature <= 0:
            return int(np.argmax(logits))
        if 0 < s.top_k < logits.size:
            ids = np.argpartition(-logits, s.top_k - 1)[:s.top_k]  # O(vocab), then sort only k
            ids = ids[np.argsort(-logits[ids], kind="stable")]
        else:
            ids = np.argsort(-logits, kind="stable")
        top = logits[ids]
        p = np.exp(top - top[0])
        p /= p.sum()
        if s.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(p), s.top_p)) + 1
            ids, top, p = ids[:keep], top[:keep], p[:keep]
        if s.min_p > 0:
            keep = p >= s.min_p * p[0]
            ids, top = ids[keep], top[keep]
        w = np.exp((top - top[0]) / s.temperature)
        return int(ids[self.rng.choice(ids.size, p=w / w.sum())])
