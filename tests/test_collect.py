"""`cpuinfer imatrix`: llama-imatrix's statistics, collected where the model calls its matmuls (quantize/collect.py).

The sums of the first layer's attention inputs are checked against numpy's
RMSNorm of the token embeddings read from the GGUF file; the rest by what
llama-imatrix's statistics must satisfy (shared inputs give equal sums, the
experts' counts add up to top-k per token).
"""

from __future__ import annotations

import numpy as np
from gguf.constants import GGMLQuantizationType as QT
from gguf.quants import dequantize
from test_quantize import assert_cli_error, runner

import cpuinfer
from cpuinfer import linear, moe, transformer
from cpuinfer.cli import app
from cpuinfer.gguf_file import GGUFFile
from quantize.collect import collect
from quantize.imatrix import read_imatrix

TEXT = "The quick brown fox jumps over the lazy dog. " * 30
CTX = 32


def test_first_layer_sums_are_the_squared_normed_embeddings(converted):
    path = converted("llama", "f32")
    m = cpuinfer.load(path, n_ctx=CTX)
    result = collect(m, TEXT, ctx=CTX)
    assert transformer.matmul is linear.matmul  # the normal forward runs unrecorded again

    ids = m.tokenizer.encode(TEXT, bos=m.tokenizer.add_bos)
    chunks = len(ids) // CTX
    assert chunks >= 2 and result.chunk_count == chunks and result.chunk_size == CTX
    tokens = np.array(ids[:chunks * CTX]).reshape(chunks, CTX)
    if m.tokenizer.add_bos:
        tokens[:, 0] = m.tokenizer.bos_id
    g = GGUFFile(path)
    embd = dequantize(g.blocks(g.tensors["token_embd.weight"]), QT.F32).reshape(-1, m.config.dim)
    norm = g.blocks(g.tensors["blk.0.attn_norm.weight"]).view(np.float32).reshape(-1)
    x = embd[tokens.reshape(-1)].astype(np.float64)
    h = x / np.sqrt((x * x).mean(axis=1, keepdims=True) + m.config.norm_eps) * norm
    want = (h * h).sum(axis=0)
    for name in ("attn_q", "attn_k", "attn_v"):
        e = result.entries[f"blk.0.{name}.weight"]
        assert e.counts.tolist() == [chunks * CTX]
        np.testing.assert_allclose(e.sums[0], want, rtol=1e-4)
    layers = m.config.n_layers
    assert set(result.entries) == {f"blk.{i}.{n}.weight" for i in range(layers)
                                   for n in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up",
                                             "ffn_down")}
    np.testing.assert_array_equal(result.entries["blk.1.ffn_gate.weight"].sums, result.entries["blk.1.ffn_up.weight"].sums)


def test_experts_count_the_tokens_routed_to_them(converted):
    m = cpuinfer.load(converted("mixtral", "f32"), n_ctx=CTX)
    result = collect(m, TEXT, ctx=CTX)
    assert moe.matmul is linear.matmul
    tokens = result.chunk_count * CTX
    e = result.entries["blk.0.ffn_down_exps.weight"]
    assert e.sums.shape == (m.config.n_experts, m.config.ffn_dim)
    assert e.counts.sum() == tokens * m.config.n_experts_used
    assert result.entries["blk.0.ffn_gate_exps.weight"].counts.tolist() == e.counts.tolist()
    assert "blk.0.ffn_gate_inp.weight" not in result.entries


def test_cli_writes_a_matrix_quantize_reads(converted, tmp_path):
    model, text = converted("mixtral", "f32"), tmp_path / "calibration.txt"
    text.write_text(TEXT)
    r = runner.invoke(app, ["imatrix", str(model), str(text), "-o", str(tmp_path / "m.gguf"), "--ctx", str(CTX)])
    assert r.exit_code == 0, r.output
    m = read_imatrix(tmp_path / "m.gguf")
    assert m.datasets == ["calibration.txt"] and m.chunk_size == CTX and m.entries
    r = runner.invoke(app, ["quantize", str(model), "-o", str(tmp_path / "q.gguf"), "--type", "q4_k_m",
                            "--imatrix", str(tmp_path / "m.gguf")])
    assert r.exit_code == 0, r.output
    assert GGUFFile(tmp_path / "q.gguf").metadata["quantize.imatrix.chunks_count"] == m.chunk_count
    text.write_text("too short")
    r = runner.invoke(app, ["imatrix", str(model), str(text), "-o", str(tmp_path / "n.gguf"), "--ctx", str(CTX)])
    assert_cli_error(r, "fewer than one chunk of 32")
    assert not (tmp_path / "n.gguf").exists()
