"""quantize/mixes.py against llama.cpp: the type of every tensor in every file type.

tests/fixtures/reference/mixes.json holds what llama-quantize chose for models
whose shapes exercise each rule (and for the default model itself), without and
with an importance matrix (make_mix_reference.py).
"""

from __future__ import annotations

import json

import pytest
from conftest import REFERENCE
from gguf.constants import GGMLQuantizationType as QT

import quantize
from quantize.mixes import Model, quantized, tensor_type
from quantize.source import Matrix, Source, SourceTensor

MIXES = json.loads((REFERENCE / "mixes.json").read_text())
CASES = [(model, imatrix, ftype) for model, entry in MIXES.items() for imatrix in (False, True)
         for ftype in entry["types_imatrix" if imatrix else "types"]]


def _source(entry: dict) -> Source:
    """The reference model's tensors (names and shapes only) and the metadata the rules read."""
    hp = entry["hparams"]
    source = Source("reference model")
    for key, value in (("general.architecture", "llama"), ("llama.block_count", hp["block_count"]),
                       ("llama.attention.head_count", hp["attention.head_count"]),
                       ("llama.attention.head_count_kv", hp["attention.head_count_kv"]),
                       ("llama.expert_count", hp["expert_count"])):
        source.set(key, value, None)
    for name, shape in entry["tensors"]:
        parts = [Matrix(shape[-2] if len(shape) > 1 else 1, shape[-1], None)] * (shape[0] if len(shape) == 3 else 1)
        source.tensors.append(SourceTensor(name, tuple(shape), parts))
    return source


@pytest.mark.parametrize("model,imatrix,ftype", CASES, ids=[f"{m}-{f}{'-imatrix' if i else ''}" for m, i, f in CASES])
def test_types_match_llamacpp(model, imatrix, ftype):
    entry = MIXES[model]
    want = entry["types_imatrix" if imatrix else "types"][ftype].split()
    source = _source(entry)
    plan = quantize.plan_types(source, ftype, quantize.Imatrix() if imatrix else None)
    got = [QT(p.qtype).name for p in plan]
    wrong = [(t.name, g, w) for t, g, w in zip(source.tensors, got, want) if g != w]
    assert not wrong, f"{len(wrong)} tensors differ (name, cpuinfer, llama.cpp): {wrong[:8]}"


def test_the_reference_covers_every_rule():
    """The reference models reach each special case at least once, so the comparison above means something."""
    seen = {(QT[t], name.split(".")[-2]) for entry in MIXES.values() for types in entry["types"].values()
            for (name, _), t in zip(entry["tensors"], types.split())}
    for qtype, kind in [(QT.Q6_K, "attn_v"), (QT.Q6_K, "ffn_down"), (QT.Q5_K, "attn_v"), (QT.Q5_K, "ffn_down"),
                        (QT.Q8_0, "attn_k"), (QT.Q5_K, "attn_output"), (QT.Q5_0, "attn_q"), (QT.Q8_0, "attn_v"),
                        (QT.Q6_K, "output"), (QT.Q8_0, "token_embd"), (QT.Q4_K, "ffn_down_exps"),
                        (QT.Q3_K, "attn_output"), (QT.IQ4_NL, "attn_q"), (QT.F16, "token_embd")]:
        assert (qtype, kind) in seen, (qtype, kind)
    assert "smollm2" in MIXES, "regenerate mixes.json with --smollm2"


def test_row_lengths_that_fit_no_block_fall_back_to_f16():
    """llama.cpp's last resort, for rows that are not a multiple of 32 (no reference model has them)."""
    model = Model(n_layer=2, n_head=4, n_head_kv=4)
    assert tensor_type("blk.0.ffn_down.weight", 100, "q4_k_m", model) == QT.F16
    assert tensor_type("blk.0.ffn_down.weight", 96, "q4_k_m", model) == QT.Q5_0
    assert tensor_type("blk.0.ffn_down.weight", 100, "q8_0", model) == QT.F16
    assert not quantized("blk.0.attn_norm.weight", (64,)) and not quantized("blk.0.ffn_gate_inp.weight", (4, 64))
