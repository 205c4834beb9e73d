"""`tokenizer.ggml.model = llama`: SentencePiece BPE with byte fallback (Llama 2, Mistral).

GGUF keeps the pieces, scores and types of the original `tokenizer.model` but
not the file itself; rebuilding the model proto from them and running the
`sentencepiece` library gives exactly the original tokenizer's ids.
"""

from __future__ import annotations

import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

from ..errors import GGUFError, quote
from .base import BYTE, CONTROL, UNKNOWN, USER_DEFINED, Tokenizer

_PIECE_TYPE = {1: pb.ModelProto.SentencePiece.NORMAL, UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN,
               CONTROL: pb.ModelProto.SentencePiece.CONTROL,
               USER_DEFINED: pb.ModelProto.SentencePiece.USER_DEFINED,
               5: pb.ModelProto.SentencePiece.UNUSED, BYTE: pb.ModelProto.SentencePiece.BYTE}


def _model_proto(tokens: list[str], scores: np.ndarray, types: np.ndarray, add_space_prefix: bool) -> bytes:
    m = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        m.pieces.add(piece=piece, score=float(score), type=_PIECE_TYPE.get(int(kind), 1))
    t = m.trainer_spec
    t.model_type = pb.TrainerSpec.BPE
    t.vocab_size = len(tokens)
    t.byte_fallback = bool((types == BYTE).any())
    t.allow_whitespace_only_pieces = True
    t.split_digits = True
    n = m.normalizer_spec
    n.name = "identity"
    n.add_dummy_prefix = add_space_prefix
    n.remove_extra_whitespaces = False
    n.escape_whitespaces = True
    return m.SerializeToString()


class SentencePieceTokenizer(Tokenizer):
    def __init__(self, tokens, scores, types, bos_id, eos_id, add_bos, add_space_prefix=True, eot_id=None):
        super().__init__(tokens, types, bos_id, eos_id, add_bos, eot_id)
        try:
            self._sp = spm.SentencePieceProcessor(model_proto=_model_proto(tokens, scores, types, add_space_prefix))
        except RuntimeError as e:  # duplicate, empty or malformed pieces
            raise GGUFError("the vocabulary (tokenizer.ggml.tokens) is not a valid SentencePiece model: "
                            f"{quote(str(e), 200)}") from None

    def _encode_text(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def _decode_ids(self, ids: list[int]) -> str:
        return self._sp.decode(ids)
