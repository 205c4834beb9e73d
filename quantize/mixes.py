"""Which ggml type each tensor gets in each file type: llama.cpp's rules (llama_tensor_get_type, src/llama-quant.cpp).

A file type ("mix") has a body type; some tensors get more bits: the output
(and with tied embeddings the token embedding, which doubles as the output),
attn_v, and ffn_down of some layers; Mixtral-style models (8 experts) keep
attention in higher precision. A type whose blocks do not divide a tensor's
rows falls back to a 32-value type of similar size (Q4_K -> Q5_0, ...), and
when even that does not fit, to F16. Following these rules, a cpuinfer Q4_K_M
file has exactly the tensor types of llama-quantize's from the same source
(tests/test_mixes.py checks this against llama.cpp's own choices).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as QT
from gguf.constants import LlamaFileType as FT


@dataclass(frozen=True)
class Mix:
    body: QT  # the type of every tensor no rule moves
    file_type: FT  # general.file_type, llama.cpp's llama_ftype


MIXES = {
    "f32": Mix(QT.F32, FT.ALL_F32),
    "f16": Mix(QT.F16, FT.MOSTLY_F16),
    "bf16": Mix(QT.BF16, FT.MOSTLY_BF16),
    "q8_0": Mix(QT.Q8_0, FT.MOSTLY_Q8_0),
    "q5_1": Mix(QT.Q5_1, FT.MOSTLY_Q5_1),
    "q5_0": Mix(QT.Q5_0, FT.MOSTLY_Q5_0),
    "q4_1": Mix(QT.Q4_1, FT.MOSTLY_Q4_1),
    "q4_0": Mix(QT.Q4_0, FT.MOSTLY_Q4_0),
    "q6_k": Mix(QT.Q6_K, FT.MOSTLY_Q6_K),
    "q5_k_m": Mix(QT.Q5_K, FT.MOSTLY_Q5_K_M),
    "q5_k_s": Mix(QT.Q5_K, FT.MOSTLY_Q5_K_S),
    "q4_k_m": Mix(QT.Q4_K, FT.MOSTLY_Q4_K_M),
    "q4_k_s": Mix(QT.Q4_K, FT.MOSTLY_Q4_K_S),
    "q3_k_m": Mix(QT.Q3_K, FT.MOSTLY_Q3_K_M),
    "q3_k_s": Mix(QT.Q3_K, FT.MOSTLY_Q3_K_S),
    "q2_k": Mix(QT.Q2_K, FT.MOSTLY_Q2_K),
    "iq4_xs": Mix(QT.IQ4_XS, FT.MOSTLY_IQ4_XS),
    "iq4_nl": Mix(QT.IQ4_NL, FT.MOSTLY_IQ4_NL),
}
FLOAT_TYPES = (QT.F32, QT.F16, QT.BF16)


@dataclass(frozen=True)
class Model:
    """What the rules look at besides a tensor's name and shape."""

    n_layer: int
    n_head: int
    n_head_kv: int
    n_expert: int = 0
    tied_embeddings: bool = False  # no output.weight: token_embd is also the output
    imatrix: bool = False  # quantizing with an importance matrix

    @property
    def gqa(self) -> int:
        return self.n_head // max(1, self.n_head_kv)


@dataclass(frozen=True)
class Where:
    """A tensor's layer, for the conditions below."""

    layer: int
    model: Model


def more_bits(w: Where) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    i, n = w.layer, w.model.n_layer
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


Rule = list[tuple[QT, Callable[[Where], bool]]]  # (type, condition): the first whose condition holds wins

# mix -> tensor kind -> rule. The kinds: attn_v, ffn_down, attn_output.
RULES: dict[str, dict[str, Rule]] = {
    "q2_k": {"attn_v": [(QT.Q4_K, lambda w: w.model.gqa >= 4), (QT.Q3_K, lambda w: True)],
             "ffn_down": [(QT.Q3_K, lambda w: True)],
             "attn_output": [(QT.Q3_K, lambda w: w.model.n_expert != 8)]},
    "q3_k_m": {"attn_v": [(QT.Q5_K, lambda w: w.layer < 2), (QT.Q4_K, lambda w: True)],
               "ffn_down": [(QT.Q5_K, lambda w: w.layer < w.model.n_layer // 16), (QT.Q4_K, lambda w: True)],
               "attn_output": [(QT.Q4_K, lambda w: w.model.n_expert != 8)]},
    "q4_k_s": {"attn_v": [(QT.Q5_K, lambda w: w.layer < 4)],
               "ffn_down": [(QT.Q5_K, lambda w: w.layer < w.model.n_layer // 8)]},
    "q4_k_m": {"attn_v": [(QT.Q6_K, more_bits)], "ffn_down": [(QT.Q6_K, more_bits)]},
    "q5_k_m": {"attn_v": [(QT.Q6_K, more_bits)], "ffn_down": [(QT.Q6_K, more_bits)]},
    "iq4_nl": {"attn_v": [(QT.Q5_K, lambda w: w.model.gqa >= 4)],
               "ffn_down": [(QT.Q5_K, lambda w: w.layer < w.model.n_layer // 8 and not w.model.imatrix)]},
    "iq4_xs": {"attn_v": [(QT.Q5_K, lambda w: w.model.gqa >= 4)],
               "ffn_down": [(QT.Q5_K, lambda w: w.layer < w.model.n_layer // 8 and not w.model.imatrix)]},
    # with an importance matrix, llama.cpp guards the first ffn_down layers of Q4_0/Q5_0 files
    "q4_0": {"ffn_down": [(QT.Q4_1, lambda w: w.layer < w.model.n_layer // 8 and w.model.imatrix)]},
    "q5_0": {"ffn_down": [(QT.Q5_1, lambda w: w.layer < w.model.n_layer // 8 and w.model.imatrix)]},
}
# With 8 experts (Mixtral) attention is a small part of the model: attn_v and attn_k get Q8_0 in every
# quantized mix, attn_output Q5_K in these.
MOE8_ATTN_OUTPUT_Q5_K = ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m", "iq4_nl", "iq4_xs")
# A type whose blocks do not divide the rows: the 32-value type llama.cpp uses instead.
FALLBACK = {QT.Q2_K: QT.Q4_0, QT.Q3_K: QT.Q4_0, QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1, QT.Q6_K: QT.Q8_0,
            QT.IQ4_XS: QT.IQ4_NL}


def quantized(name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama.cpp quantizes the tensor at all: matrices and expert stacks, but not norms or the router."""
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name \
        and "ffn_gate_inp.weight" not in name


def tensor_type(name: str, cols: int, mix_name: str, model: Model) -> QT:
    """The type of a quantized tensor (see `quantized`) with rows of `cols` values in mix `mix_name`."""
    mix = MIXES[mix_name]
    if mix.body in FLOAT_TYPES:
        return mix.body
    chosen = mix.body
    if name == "output.weight" or (name == "token_embd.weight" and model.tied_embeddings):
        chosen = QT.Q8_0 if cols % _block(mix.body) or mix.body == QT.Q8_0 else QT.Q6_K
    elif (kind := _kind(name)) is not None:
        where = Where(_layer(name), model)
        for t, condition in RULES.get(mix_name, {}).get(kind, []):
            if condition(where):
                chosen = t
                break
        if kind == "attn_v" and model.n_layer == 80 and model.n_head != model.n_head_kv \
                and chosen in (QT.Q3_K, QT.Q4_K):  # Llama-2/3 70B: attn_v is 8x smaller than attn_q
            chosen = QT.Q5_K
        if model.n_expert == 8:
            if kind in ("attn_v", "attn_k"):
                chosen = QT.Q8_0
            elif kind == "attn_output" and mix_name in MOE8_ATTN_OUTPUT_Q5_K:
                chosen = QT.Q5_K
    if cols % _block(chosen):
        chosen = FALLBACK.get(chosen, chosen)
        if cols % _block(chosen):
            chosen = QT.F16
    return chosen


def _block(qtype: QT) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def _kind(name: str) -> str | None:
    """attn_v, attn_k, attn_output or ffn_down (also Mixtral's ffn_down_exps); None for the rest."""
    m = re.fullmatch(r"blk\.\d+\.(attn_v|attn_k|attn_output|ffn_down)(_exps)?\.weight", name)
    return m.group(1) if m else None


def _layer(name: str) -> int:
    return int(name.split(".")[1])
