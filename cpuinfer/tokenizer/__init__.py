"""Tokenizers rebuilt from GGUF metadata alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import metadata
from ..errors import GGUFError, quote
from .base import NORMAL, StreamDecoder, Tokenizer

__all__ = ["Tokenizer", "StreamDecoder", "from_gguf_metadata"]


def _token_id(md: dict[str, Any], key: str, n: int) -> int | None:
    value = metadata.integer(md, f"tokenizer.ggml.{key}", None)
    if value is not None and not 0 <= value < n:
        raise GGUFError(f"tokenizer.ggml.{key} = {value} is outside the vocabulary of {n} tokens")
    return value


def from_gguf_metadata(md: dict[str, Any]) -> Tokenizer:
    """The tokenizer a GGUF file describes (`tokenizer.ggml.*` keys), with its chat template."""
    tokenizer = _vocabulary(md)
    tokenizer.add_eos = metadata.flag(md, "tokenizer.ggml.add_eos_token", False)
    template = metadata.text(md, "tokenizer.chat_template", None)
    tokenizer.use_chat_template(None, template, metadata.text(md, "general.name", ""))
    return tokenizer


def _vocabulary(md: dict[str, Any]) -> Tokenizer:
    kind = metadata.text(md, "tokenizer.ggml.model", None)
    tokens = metadata.strings(md, "tokenizer.ggml.tokens", None)
    if kind is None or not tokens:
        raise GGUFError("the file has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens are missing)")
    n = len(tokens)
    types = metadata.numbers(md, "tokenizer.ggml.token_type", n, np.full(n, NORMAL), np.int32)
    bos, eos = _token_id(md, "bos_token_id", n), _token_id(md, "eos_token_id", n)
    eot = _token_id(md, "eot_token_id", n)
    if kind == "llama":
        from .spm import SentencePieceTokenizer

        scores = metadata.numbers(md, "tokenizer.ggml.scores", n, np.zeros(n), np.float32)
        return SentencePieceTokenizer(tokens, scores, types, bos, eos,
                                      add_bos=metadata.flag(md, "tokenizer.ggml.add_bos_token", True),
                                      add_space_prefix=metadata.flag(md, "tokenizer.ggml.add_space_prefix", True),
                                      eot_id=eot)
    if kind == "gpt2":
        from .bpe import ByteLevelBPETokenizer

        merges = metadata.strings(md, "tokenizer.ggml.merges", None)
        if not merges:
            raise GGUFError("a gpt2 tokenizer needs tokenizer.ggml.merges")
        return ByteLevelBPETokenizer(tokens, types, merges, metadata.text(md, "tokenizer.ggml.pre", "default"),
                                     bos, eos, add_bos=metadata.flag(md, "tokenizer.ggml.add_bos_token", False),
                                     eot_id=eot)
    raise GGUFError(f"unsupported tokenizer.ggml.model {quote(kind)} (cpuinfer reads 'llama' and 'gpt2')")
