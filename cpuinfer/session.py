"""A multi-turn conversation that keeps the model's KV cache between turns."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

from .errors import ContextFullError, CpuinferError, quote
from .generation import Reply
from .sampler import Sampler, SamplerSettings


class ChatSession:
    """Messages plus the exact tokens in the conversation's KV cache.

    Each turn renders the whole conversation with the chat template, keeps the
    cached tokens it shares with that rendering, and prefills only the rest, so
    a new turn costs its own tokens. Replies are kept with the ids the model
    generated, so the next rendering matches the cache token for token.
    """

    def __init__(self, model, system: str | None = None, settings: SamplerSettings = SamplerSettings(),
                 max_tokens: int | None = None, cache=None):
        self.model = model
        self.cache = cache if cache is not None else model.new_cache()
        self.system = system
        self.settings = settings
        self.sampler = Sampler(settings)
        self.max_tokens = max_tokens
        self.messages: list[dict] = []
        self.cached: list[int] = []  # the tokens in the KV cache, in order
        self.last: Reply | None = None
        self.cache.reset()

    def configure(self, **changes) -> None:
        """Change sampling settings (temperature=..., top_p=..., seed=...)."""
        self.settings = self.settings.with_(**changes)
        self.sampler = Sampler(self.settings)

    def conversation(self) -> list[dict]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages, self.cached = [], []
        self.cache.reset()

    def drop_oldest(self) -> bool:
        """Remove the oldest exchange (a user message and the replies after it); False if none."""
        if not self.messages:
            return False
        end = 1
        while end < len(self.messages) and self.messages[end]["role"] != "user":
            end += 1
        del self.messages[:end]
        return True

    def context_used(self) -> int:
        return self.cache.pos

    def send(self, text: str, on_prefill: Callable[[int, int], None] | None = None) -> Iterator[str]:
        """Add a user message and stream the reply's text. Ctrl-C (KeyboardInterrupt) stops the reply but
        keeps what was said; `self.last` holds the reply's ids and timings."""
        if not text.strip():
            raise CpuinferError("empty message")
        self.messages.append({"role": "user", "content": text})
        target = self.model.tokenizer.apply_chat_template(self.conversation(), add_generation_prompt=True)
        limit = self.cache.limit
        if limit is not None and len(target) >= limit:
            self.messages.pop()
            raise ContextFullError(f"context full: the conversation needs {len(target)} tokens of {limit}; "
                                   "use /reset to start over or /drop to forget the oldest exchange")
        new = self._keep_common_prefix(target)
        reply = self.last = Reply(self.model, self.cache, new, self.sampler, max_tokens=self.max_tokens, on_prefill=on_prefill)
        try:
            yield from reply
        finally:
            self.cached = (target + reply.ids)[:self.cache.pos]
            if reply.ids:
                ids = reply.ids[:-1] if reply.ids[-1] in self.model.tokenizer.stop_ids else reply.ids
                self.messages.append({"role": "assistant", "content": reply.text, "ids": ids})
            else:  # stopped during the prompt: the turn did not happen
                self.messages.pop()

    def _keep_common_prefix(self, target: list[int]) -> list[int]:
        """Rewind the cache to the longest prefix it shares with `target`; return the tokens to feed."""
        common = 0
        for a, b in zip(self.cached, target):
            if a != b:
                break
            common += 1
        common = min(common, len(target) - 1)  # feed at least one token, to get logits
        if not self.cache.rewind(common):
            self.cache.reset()
            common = 0
        self.cached = self.cached[:common]
        return target[common:]

    def save(self, path: str | Path) -> None:
        """Write the conversation as JSON ({"system": ..., "messages": [{"role", "content"}, ...]})."""
        data = {"system": self.system, "messages": [{"role": m["role"], "content": m["content"]}
                                                    for m in self.messages]}
        try:
            Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=2), encoding="utf-8")
        except OSError as e:
            raise CpuinferError(f"cannot save the conversation to {path} ({e.strerror})") from None

    def load(self, path: str | Path) -> None:
        """Replace the conversation with one saved by `save` (prefilled on the next turn)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            messages = [{"role": str(m["role"]), "content": str(m["content"])} for m in data["messages"]]
            system = str(data.get("system") or "") or self.system
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
            raise CpuinferError(f"cannot load a conversation from {path}: {quote(str(e), 120)}") from None
        self.reset()
        self.system = system
        self.messages = messages
