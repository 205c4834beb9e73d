"""A SentencePiece `tokenizer.model` (+ HF tokenizer_config.json) as GGUF tokenizer metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import sentencepiece as spm
from gguf.constants import GGUFValueType as VT
from sentencepiece import sentencepiece_model_pb2 as pb

from cpuinfer.errors import CpuinferError, quote

from .hf_config import TokenizerConfig
from .source import Source

# llama.cpp's token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def find_tokenizer_model(folder: Path) -> Path:
    for name in ("tokenizer.model", *sorted(p.name for p in folder.glob("tokenizer.model.v*"))):
        if (folder / name).is_file():
            return folder / name
    raise CpuinferError(f"{folder}: missing tokenizer.model (cpuinfer converts SentencePiece tokenizers)")


def add_sentencepiece_vocab(source: Source, model_path: Path, vocab_size: int, bos_id: int | None = None,
                            eos_id: int | None = None, config: TokenizerConfig = TokenizerConfig()) -> None:
    """Write tokenizer.ggml.* keys for `model_path`, padded to the model's vocab_size as llama.cpp does."""
    try:
        sp = spm.SentencePieceProcessor(model_file=str(model_path))
        proto = pb.ModelProto.FromString(model_path.read_bytes())
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own text
        raise CpuinferError(f"{model_path}: not a SentencePiece model ({quote(str(e), 200)})") from None
    n = sp.vocab_size()
    if n > vocab_size:
        raise CpuinferError(f"{model_path} has {n} tokens but the model's vocab_size is {vocab_size}")
    try:  # sentencepiece loads a piece that is not UTF-8 and fails only when asked for its text
        tokens = [sp.id_to_piece(i) for i in range(n)]
    except UnicodeDecodeError as e:
        raise CpuinferError(f"{model_path}: not a SentencePiece model (a piece is not UTF-8: "
                            f"{quote(e.object[max(e.start - 8, 0):e.end + 8])})") from None
    scores, types = [], []
    for i in range(n):
        scores.append(sp.get_score(i))
        types.append(UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else
                     UNUSED if sp.is_unused(i) else BYTE if sp.is_byte(i) else NORMAL)
    for i in range(n, vocab_size):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(UNUSED)
    source.set("tokenizer.ggml.model", "llama", VT.STRING)
    source.set("tokenizer.ggml.pre", "default", VT.STRING)
    source.set("tokenizer.ggml.tokens", tokens, VT.ARRAY, VT.STRING)
    source.set("tokenizer.ggml.scores", np.asarray(scores, dtype=np.float32), VT.ARRAY, VT.FLOAT32)
    source.set("tokenizer.ggml.token_type", np.asarray(types, dtype=np.int32), VT.ARRAY, VT.INT32)
    for key, value in (("bos_token_id", bos_id if bos_id is not None else sp.bos_id()),
                       ("eos_token_id", eos_id if eos_id is not None else sp.eos_id()),
                       ("unknown_token_id", sp.unk_id())):
        if value is not None and 0 <= value < vocab_size:
            source.set(f"tokenizer.ggml.{key}", int(value), VT.UINT32)
    source.set("tokenizer.ggml.add_bos_token", config.add_bos, VT.BOOL)
    source.set("tokenizer.ggml.add_eos_token", config.add_eos, VT.BOOL)
    source.set("tokenizer.ggml.add_space_prefix", bool(proto.normalizer_spec.add_dummy_prefix), VT.BOOL)
    if config.chat_template:
        source.set("tokenizer.chat_template", config.chat_template, VT.STRING)
