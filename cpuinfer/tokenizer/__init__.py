"""Tokenizers rebuilt from GGUF metadata alone."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import GGUFError
from .base import NORMAL, StreamDecoder, Tokenizer

__all__ = ["Tokenizer", "StreamDecoder", "from_gguf_metadata"]


def _token_id(md: dict[str, Any], key: str, n: int) -> int | None:
    value = md.get(f"tokenizer.ggml.{key}")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
        raise GGUFError(f"tokenizer.ggml.{key} = {value} is outside the vocabulary of {n} tokens")
    return int(value)


def _numbers(md: dict[str, Any], key: str, default: np.ndarray, dtype) -> np.ndarray:
    value = md.get(f"tokenizer.ggml.{key}", default)
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf":  # numeric GGUF arrays read as ndarray
        raise GGUFError(f"tokenizer.ggml.{key} is not an array of numbers")
    return value.astype(dtype)


def from_gguf_metadata(md: dict[str, Any]) -> Tokenizer:
    """The tokenizer a GGUF file describes (`tokenizer.ggml.*` keys), with its chat template."""
    tokenizer = _vocabulary(md)
    tokenizer.add_eos = bool(md.get("tokenizer.ggml.add_eos_token", False))
    if not isinstance(md.get("tokenizer.chat_template", ""), str):
        raise GGUFError("tokenizer.chat_template is not a string")
    tokenizer.use_chat_template(None, md.get("tokenizer.chat_template"), str(md.get("general.name", "")))
    return tokenizer


def _vocabulary(md: dict[str, Any]) -> Tokenizer:
    kind = md.get("tokenizer.ggml.model")
    tokens = md.get("tokenizer.ggml.tokens")
    if kind is None or tokens is None or (isinstance(tokens, list) and not tokens):
        raise GGUFError("the file has no tokenizer (tokenizer.ggml.model / tokenizer.ggml.tokens are missing)")
    if not isinstance(tokens, list):  # GGUF string arrays read as lists of str
        raise GGUFError("tokenizer.ggml.tokens is not an array of strings")
    n = len(tokens)
    types = _numbers(md, "token_type", np.full(n, NORMAL), np.int32)
    if types.shape != (n,):
        raise GGUFError(f"tokenizer.ggml.token_type has {types.size} entries for {n} tokens")
    bos, eos = _token_id(md, "bos_token_id", n), _token_id(md, "eos_token_id", n)
    eot = _token_id(md, "eot_token_id", n)
    if kind == "llama":
        from .spm import SentencePieceTokenizer

        scores = _numbers(md, "scores", np.zeros(n), np.float32)
        if scores.shape != (n,):
            raise GGUFError(f"tokenizer.ggml.scores has {scores.size} entries for {n} tokens")
        return SentencePieceTokenizer(tokens, scores, types, bos, eos,
                                      add_bos=bool(md.get("tokenizer.ggml.add_bos_token", True)),
                                      add_space_prefix=bool(md.get("tokenizer.ggml.add_space_prefix", True)),
                                      eot_id=eot)
    if kind == "gpt2":
        from .bpe import ByteLevelBPETokenizer

        merges = md.get("tokenizer.ggml.merges")
        if not isinstance(merges, list) or not merges:
            raise GGUFError("a gpt2 tokenizer needs tokenizer.ggml.merges")
        return ByteLevelBPETokenizer(tokens, types, merges, str(md.get("tokenizer.ggml.pre", "default")), bos, eos,
                                     add_bos=bool(md.get("tokenizer.ggml.add_bos_token", False)), eot_id=eot)
    raise GGUFError(f"unsupported tokenizer.ggml.model {kind!r} (cpuinfer reads 'llama' and 'gpt2')")
