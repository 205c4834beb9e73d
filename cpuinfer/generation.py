"""Token generation: prefill a prompt, then sample one token at a time, streaming text."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .numbers import token_limit
from .sampler import Sampler


def generate(model, cache, ids: list[int], sampler: Sampler, max_tokens: int | None = None,
             on_prefill: Callable[[int, int], None] | None = None) -> Iterator[int]:
    """Prefill `ids` into `cache`, then yield sampled tokens until a stop token or `max_tokens` (0: none,
    -1: no cap).

    Every yielded token but the last is also fed to the model, so when the
    generator ends the cache holds the prompt and all tokens before the final
    one; a caller that continues must feed that one first.
    """
    max_tokens = token_limit(max_tokens)
    logits = model.forward(ids, cache, all_logits=False, on_chunk=on_prefill)[-1]
    if max_tokens == 0:  # as llama.cpp's -n 0: the prompt is processed, nothing generated
        return
    history = list(ids)
    stop_ids = model.tokenizer.stop_ids
    n = 0
    while True:
        token = sampler(logits, history, position=cache.pos - 1)
        history.append(token)
        n += 1
        yield token
        if token in stop_ids or (max_tokens is not None and n >= max_tokens):
            return
        room = cache.room()
        if room is not None and room < 1:
            return
        logits = model.forward([token], cache, all_logits=False)[-1]


@dataclass
class Timings:
    """Counts and durations of one prompt + reply, for the tokens/s users ask for."""

    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    generated_tokens: int = 0
    generation_seconds: float = 0.0
    stop_reason: str = ""  # "eos", "stop string", "max tokens", "context full", "interrupted"

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def generation_tps(self) -> float:
        """Decode speed: the first token comes with the prompt, the others each cost one forward pass."""
        return (self.generated_tokens - 1) / self.generation_seconds if self.generation_seconds else 0.0

    def as_dict(self) -> dict:
        return dict(prompt_tokens=self.prompt_tokens, prompt_seconds=round(self.prompt_seconds, 4),
                    prompt_tokens_per_second=round(self.prompt_tps, 2), generated_tokens=self.generated_tokens,
                    generation_seconds=round(self.generation_seconds, 4),
                    generation_tokens_per_second=round(self.generation_tps, 2), stop_reason=self.stop_reason)


class StopStrings:
    """Holds back streamed text that could be the start of a stop string; cuts at the first match."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """Text that is safe to show now."""
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit = True
            out, self.pending = self.pending[:cut], ""
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out = self.pending[:len(self.pending) - keep]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


@dataclass
class Reply:
    """A streamed completion: iterate for text deltas; afterwards `ids`, `text` and `timings` are final.

    The cache then holds a prefix of what it was given plus `ids` (`cache.pos`
    says how much: an interrupted prefill keeps whole chunks).
    """

    model: object
    cache: object
    prompt: list[int]
    sampler: Sampler
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    on_prefill: Callable[[int, int], None] | None = None
    ids: list[int] = field(default_factory=list)
    text: str = ""
    timings: Timings = field(default_factory=Timings)

    def __post_init__(self):
        self.max_tokens = token_limit(self.max_tokens)

    def __iter__(self) -> Iterator[str]:
        t = self.timings
        t.prompt_tokens = len(self.prompt)
        stop_ids = self.model.tokenizer.stop_ids
        decoder, stops = self.model.tokenizer.stream(), StopStrings(self.stop)
        start = time.perf_counter()
        stamps: list[float] = []
        tokens = generate(self.model, self.cache, self.prompt, self.sampler, self.max_tokens, self.on_prefill)
        try:
            for token in tokens:
                stamps.append(time.perf_counter())
                self.ids.append(token)
                if token in stop_ids:
                    t.stop_reason = "eos"
                    break
                delta = stops.feed(decoder.push(token))
                if delta:
                    self.text += delta
                    yield delta
                if stops.hit:
                    t.stop_reason = "stop string"
                    break
            else:
                full = self.max_tokens is not None and len(self.ids) >= self.max_tokens
                t.stop_reason = "max tokens" if full else "context full"
            if not stops.hit:
                tail = stops.feed(decoder.flush()) + stops.flush()
                if tail:
                    self.text += tail
                    yield tail
        except KeyboardInterrupt:
            t.stop_reason = "interrupted"
            raise
        finally:
            tokens.close()
            t.prompt_seconds = (stamps[0] if stamps else time.perf_counter()) - start
            t.generated_tokens = len(self.ids)
            t.generation_seconds = stamps[-1] - stamps[0] if len(stamps) > 1 else 0.0
