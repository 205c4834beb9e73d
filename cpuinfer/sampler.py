"""Choosing the next token from logits, in llama.cpp's order:
repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .errors import CpuinferError
from .numbers import checked

_LARGEST = np.finfo(np.float64).max


# field: (integer?, lo, hi, above, names a user types): the range each setting accepts
_RANGES = {
    "temperature": (False, 0, None, None, "--temp, /temp"),
    "top_k": (True, 0, None, None, "--top-k, /top_k"),
    "top_p": (False, 0, 1, None, "--top-p, /top_p"),
    "min_p": (False, 0, 1, None, "--min-p, /min_p"),
    "repeat_penalty": (False, None, None, 0, "--repeat-penalty, /repeat_penalty"),
    "repeat_last_n": (True, -1, None, None, "--repeat-last-n"),
    "seed": (True, -1, 2**64 - 1, None, "--seed, /seed"),
}


@dataclass(frozen=True)
class SamplerSettings:
    """llama.cpp's defaults and ranges. temperature 0 is greedy; top_k 0, top_p 1, min_p 0, repeat_penalty 1
    turn those off; repeat_last_n -1 penalizes the whole history; seed None or -1 draws a random seed.
    A value out of range raises CpuinferError naming the setting and its flags."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    seed: int | None = None

    def __post_init__(self):
        for name, (integer, lo, hi, above, flags) in _RANGES.items():
            value = getattr(self, name)
            if not (name == "seed" and value is None):
                checked(value, f"{name} ({flags})", integer=integer, lo=lo, hi=hi, above=above)
        if self.seed == -1:
            object.__setattr__(self, "seed", None)

    def with_(self, **changes) -> "SamplerSettings":
        return replace(self, **changes)


class Sampler:
    """Draws tokens with a private random generator, so a seed reproduces a run."""

    def __init__(self, settings: SamplerSettings = SamplerSettings()):
        self.settings = settings
        self.rng = np.random.default_rng(settings.seed)

    def __call__(self, logits: np.ndarray, history: list[int] | None = None, position: int | None = None) -> int:
        """The next token after `logits` (of the token at `position`, named in errors); `history` holds the
        ids the repetition penalty looks at."""
        s = self.settings
        logits = np.asarray(logits, dtype=np.float64)
        # NaN or +inf cannot be ranked (NaN was an IndexError here); -inf is a token ruled out.
        bad = np.isnan(logits) | (logits == np.inf)
        if bad.any() or not (logits > -np.inf).any():
            where = f" at position {position}" if position is not None else ""
            raise CpuinferError(f"the model computed {int(bad.sum())} NaN or infinite logits of {logits.size}"
                                f"{where}, so no token can be chosen; the file's weights are probably corrupt")
        if s.repeat_penalty != 1.0 and history and s.repeat_last_n != 0:
            recent = np.unique(np.asarray(history[-s.repeat_last_n:] if s.repeat_last_n > 0 else history))
            recent = recent[(recent >= 0) & (recent < logits.size)]
            logits = logits.copy()
            seen = logits[recent]
            penalized = np.where(seen > 0, seen / s.repeat_penalty, seen * s.repeat_penalty)
            logits[recent] = np.clip(penalized, -_LARGEST, _LARGEST)  # a tiny penalty must not overflow to inf
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
