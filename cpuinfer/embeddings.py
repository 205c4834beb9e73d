"""Embeddings: the pooled final hidden state of a decoder, as llama.cpp's llama-embedding computes it.

Each text becomes tokens (BOS when the file adds one, EOS appended when the
file sets `tokenizer.ggml.add_eos_token`), runs through the model, and its
final normed hidden state (the input of the output projection) is pooled:
`last` token (e5-mistral, SFR-Embedding-Mistral), `mean` over tokens, `cls`
(the first token) or `none` (every token). The result is L2-normalised unless
asked not to be. Instruction-tuned embedders want their prompt in the text,
e.g. e5-mistral's "Instruct: {task}\\nQuery: {query}" for queries (documents
go in as they are): that prefix is the caller's to add.

Short texts are packed into steps of up to `model.batch` tokens, each text with
a small cache of its own (float32: it lives only for one text, and keeps the
vectors exact), so many texts share one pass over the weights.
"""

from __future__ import annotations

import numpy as np

from .errors import CpuinferError
from .transformer import Segment

POOLINGS = ("last", "mean", "cls", "none")
# llama.cpp's `{arch}.pooling_type` values (enum llama_pooling_type); 4 (rank) is for rerankers
GGUF_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last"}
_WANTED = {"last": slice(-1, None), "cls": slice(0, 1), "mean": slice(None), "none": slice(None)}


def default_pooling(model) -> str:
    """The file's `{arch}.pooling_type` when it has one, else `last` (decoder models)."""
    value = model.file.metadata.get(f"{model.config.architecture}.pooling_type")
    if value is None:
        return "last"
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) not in GGUF_POOLING:
        raise CpuinferError(f"{model.config.architecture}.pooling_type = {str(value)[:20]!r} is not a pooling "
                            f"cpuinfer knows ({', '.join(f'{k} = {v}' for k, v in GGUF_POOLING.items())})")
    return GGUF_POOLING[int(value)]


def embedding_tokens(model, text: str) -> list[int]:
    """The ids a text is embedded from."""
    tok = model.tokenizer
    ids = tok.encode(text, bos=tok.add_bos)
    if tok.add_eos and tok.eos_id is not None:
        ids.append(tok.eos_id)
    return ids


def embed(model, texts: list[str], pooling: str | None = None, normalize: bool = True, on_text=None,
          threads: int | None = None):
    """float32 [len(texts), dim] (pooling "none": a list of [tokens, dim]); `on_text(i, vector)` as each ends."""
    if isinstance(texts, str):
        raise CpuinferError("embed() takes a list of texts")
    return embed_tokens(model, [embedding_tokens(model, t) for t in texts], pooling, normalize, on_text, threads)


def embed_tokens(model, token_lists: list[list[int]], pooling: str | None = None, normalize: bool = True,
                 on_text=None, threads: int | None = None):
    """`embed` for texts already turned into ids."""
    pooling = pooling or default_pooling(model)
    if pooling not in POOLINGS:
        raise CpuinferError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    token_lists = [model._checked_ids(ids).tolist() if len(ids) else [] for ids in token_lists]
    limit = None if model.config.sliding_window else model.config.context_length
    for i, ids in enumerate(token_lists):
        if not ids:
            raise CpuinferError(f"text {i} is empty: it has no tokens to embed")
        if limit is not None and len(ids) > limit:
            raise CpuinferError(f"text {i} has {len(ids)} tokens, more than the model's context of {limit}")
    results: list = [None] * len(token_lists)

    def finish(i: int, rows: np.ndarray) -> None:
        results[i] = _pooled(rows, pooling, normalize)
        if on_text is not None:
            on_text(i, results[i])

    group: list[int] = []
    for i in sorted(range(len(token_lists)), key=lambda i: len(token_lists[i])):  # similar lengths share a step
        n = len(token_lists[i])
        if n > model.batch:
            finish(i, _long_text(model, token_lists[i], pooling, threads))
            continue
        if group and sum(len(token_lists[j]) for j in group) + n > model.batch:
            _packed(model, group, token_lists, pooling, threads, finish)
            group = []
        group.append(i)
    if group:
        _packed(model, group, token_lists, pooling, threads, finish)
    return results if pooling == "none" else np.stack(results) if results else np.zeros((0, model.config.dim),
                                                                                       np.float32)


def _packed(model, group: list[int], token_lists: list[list[int]], pooling: str, threads, finish) -> None:
    segments = [Segment(np.asarray(token_lists[i], dtype=np.int64), model.new_cache(len(token_lists[i]), "f32"),
                        _WANTED[pooling]) for i in group]
    for i, rows in zip(group, model._step(segments, threads, hidden=True)):
        finish(i, rows)


def _long_text(model, ids: list[int], pooling: str, threads) -> np.ndarray:
    """A text longer than one step, in chunks through one cache; only the rows pooling needs are kept."""
    cache = model.new_cache(len(ids), "f32")
    step = max(1, min(model.batch, cache.size))
    kept = []
    for start in range(0, len(ids), step):
        chunk = np.asarray(ids[start:start + step], dtype=np.int64)
        first, last = start == 0, start + step >= len(ids)
        wanted = {"last": slice(-1, None) if last else slice(0), "cls": slice(0, 1) if first else slice(0)}
        kept.append(model._step([Segment(chunk, cache, wanted.get(pooling, slice(None)))], threads, hidden=True)[0])
    return np.concatenate(kept)


def _pooled(rows: np.ndarray, pooling: str, normalize: bool) -> np.ndarray:
    vec = rows.astype(np.float64).mean(axis=0) if pooling == "mean" else rows if pooling == "none" else rows[0]
    if normalize:
        norm = np.linalg.norm(vec, axis=-1, keepdims=True)
        vec = vec / np.where(norm > 0, norm, 1.0)
    return np.asarray(vec, dtype=np.float32)


def openai_embeddings(vectors, model_name: str, prompt_tokens: int) -> dict:
    """OpenAI's /v1/embeddings response body for `vectors` (in input order)."""
    return {"object": "list", "model": model_name,
            "data": [{"object": "embedding", "index": i, "embedding": np.asarray(v).tolist()}
                     for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
