"""OpenAI's response bodies: completions, their stream chunks, the model list."""

from __future__ import annotations

import base64
import json
import time
import uuid

import numpy as np

from ..embeddings import openai_embeddings


class Completion:
    """The shared fields of one chat or text completion's bodies (id, created, model)."""

    def __init__(self, model_name: str, chat: bool):
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.model = model_name

    def _body(self, obj: str, choices: list, usage: dict | None = None) -> dict:
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": None, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    def whole(self, text: str, finish_reason: str, usage: dict) -> dict:
        """The non-streamed response."""
        if self.chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                      "finish_reason": finish_reason}
            return self._body("chat.completion", [choice], usage)
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        return self._body("text_completion", [choice], usage)

    def chunk(self, text: str | None = None, finish_reason: str | None = None, first: bool = False) -> dict:
        """One streamed piece: text, or the closing finish_reason (chat's first chunk names the role)."""
        if self.chat:
            delta = {"role": "assistant", "content": ""} if first else {} if text is None else {"content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            return self._body("chat.completion.chunk", [choice])
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        return self._body("text_completion", [choice])

    def usage_chunk(self, usage: dict) -> dict:
        """stream_options.include_usage: the last chunk, with no choices."""
        return self._body("chat.completion.chunk" if self.chat else "text_completion", [], usage)


def sse(body: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def embeddings_body(vectors: list[np.ndarray], model_name: str, tokens: int, as_base64: bool) -> dict:
    """/v1/embeddings; base64 is the little-endian float32 bytes (what the openai client asks for)."""
    body = openai_embeddings(vectors if not as_base64 else [], model_name, tokens)
    if as_base64:
        body["data"] = [{"object": "embedding", "index": i,
                         "embedding": base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")}
                        for i, v in enumerate(vectors)]
    return body


def models_body(model_name: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                        "owned_by": "cpuinfer"}]}
