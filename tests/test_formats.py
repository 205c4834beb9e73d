"""The GGUF files people download: K-quants, Q5_0/Q5_1, IQ4_NL/IQ4_XS, BF16, Mixtral's per-expert layout.

* Tiny Mistral (sliding window) and Mixtral checkpoints with 256-value rows, quantized by llama.cpp itself
  (committed; tests/fixtures/make_llamacpp_quants.py): every tensor dequantizes bit for bit like
  gguf.quants, and the logits of prompt and decode equal a float64 numpy forward over the file's own
  dequantized weights.
* BF16 files, written here with gguf.quants (whose bytes equal llama.cpp's: the dev script checks).
* Mixtral files of before April 2024 (a 2-D tensor per expert), made here from the 3-D file: the same
  logits and expert counters, and `cpuinfer quantize` writes the very file it writes from the 3-D twin.
* `cpuinfer quantize` and `cpuinfer info` on these files.
* The default model re-quantized to Q4_K_M / Q6_K by llama.cpp: perplexity within 1% of llama.cpp's on the
  same files (skipped unless the dev script has made them: they are ~100 MB each).
"""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

import checkpoints
import cpuinfer
import numpy_forward
from conftest import REFERENCE, TEXT
from cpuinfer.gguf_file import GGUFFile
from cpuinfer.linear import dequantize_rows, linear_views
from cpuinfer.weights import load_weights
from gguf_oracle import dequantized_hf_weights
from gguf_parts import Parts
from quantize import convert

FILES = sorted((REFERENCE / "llamacpp").glob("*.gguf"))
TYPES = {QT.Q2_K, QT.Q3_K, QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.Q5_0, QT.Q5_1, QT.IQ4_NL, QT.IQ4_XS}
PROMPT = np.random.default_rng(0).integers(3, 320, 48).tolist()  # 3 sliding windows of 16
PREFILL = 40  # then one token at a time, through the decode kernels
REL_TOL = 1e-3  # as tests/test_engine.py: max |diff| <= REL_TOL * max |logit|, per position


def kind_of(path) -> str:
    return path.name.split("-")[0]


def rel_err(logits: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(logits.astype(np.float64) - ref).max(axis=1) / np.abs(ref).max(axis=1)


def prompt_then_decode(model) -> np.ndarray:
    """Logits of PROMPT: the first PREFILL tokens as one prompt, the rest one at a time."""
    cache = model.new_cache()
    rows = [model.forward(PROMPT[:PREFILL], cache)]
    rows += [model.forward([t], cache) for t in PROMPT[PREFILL:]]
    return np.concatenate(rows)


def assert_matches_float64_forward(path) -> None:
    cfg = checkpoints.SPECS[kind_of(path)]
    want = numpy_forward.forward(dequantized_hf_weights(path, cfg), cfg, PROMPT)
    got = prompt_then_decode(cpuinfer.load(path, kv_type="f32", exact=True))
    err = rel_err(got, want)
    assert err.max() <= REL_TOL, (int(err.argmax()), float(err.max()))
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()


def assert_bit_exact(out: np.ndarray, ref: np.ndarray) -> None:
    """Identical float32 bits, except that 0.0 may stand for -0.0 (see tests/test_kernels.py)."""
    nonzero = ref != 0
    assert np.array_equal(out.view(np.uint32)[nonzero], ref.view(np.uint32)[nonzero])
    assert not out[~nonzero].any()


@pytest.fixture(scope="module")
def legacy_mixtral(tmp_path_factory):
    """(3-D file, the same file with one 2-D tensor per expert)."""
    twin = REFERENCE / "llamacpp" / "mixtral256-q4_k_m.gguf"
    legacy = Parts.read(twin).split_experts().write(tmp_path_factory.mktemp("legacy") / "legacy.gguf")
    return twin, legacy


# --- files llama.cpp wrote ------------------------------------------------------------------

def test_the_files_hold_every_type():
    found = {QT(t.ggml_type) for path in FILES for t in GGUFFile(path).tensors.values()}
    assert TYPES <= found, sorted(t.name for t in TYPES - found)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_tensor_dequantizes_like_gguf(path):
    """Real blocks: llama.cpp's quantizer output, through the prompt path's tile dequantizers."""
    g = GGUFFile(path)
    for info in g.tensors.values():
        if len(info.shape) < 2:
            continue
        ref = dequantize(g.blocks(info), QT(info.ggml_type)).reshape(-1, info.shape[-1])
        got = np.concatenate([dequantize_rows(w, 0, w.rows) for w in linear_views(g, info)])
        assert_bit_exact(got, ref)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_logits_match_float64_forward_on_the_dequantized_weights(path):
    assert_matches_float64_forward(path)


@pytest.mark.parametrize("source", ["mistral256-q4_k_m", "mixtral256-q4_k_m"])
def test_bf16_file(source, tmp_path):
    """Every matrix of a llama.cpp file, as BF16 (gguf.quants rounds as ggml does)."""
    parts = Parts.read(REFERENCE / "llamacpp" / f"{source}.gguf")
    for t in parts.tensors:
        _, qtype, shape, data = t
        if len(shape) >= 2:
            values = dequantize(np.frombuffer(data, dtype=np.uint8), qtype).reshape(shape)
            t[1], t[3] = QT.BF16, quantize(values, QT.BF16).tobytes()
    path = parts.write(tmp_path / f"{source.split('-')[0]}-bf16.gguf")
    assert {QT(t.ggml_type) for t in GGUFFile(path).tensors.values() if len(t.shape) >= 2} == {QT.BF16}
    assert_matches_float64_forward(path)


# --- Mixtral's per-expert layout (files written before April 2024) ------------------------------

def test_legacy_mixtral_gives_the_logits_and_expert_reads_of_its_3d_twin(legacy_mixtral):
    twin, legacy = legacy_mixtral
    names = GGUFFile(legacy).tensors
    assert "blk.0.ffn_gate.3.weight" in names and "blk.0.ffn_gate_exps.weight" not in names
    results = []
    for path in (twin, legacy):
        m = cpuinfer.load(path)
        m.expert_stats.clear()
        logits = prompt_then_decode(m)
        stats = m.expert_stats
        results.append((logits, stats.counts.copy(), stats.bytes_read))
        g = GGUFFile(path)
        gate = load_weights(g, m.config).layers[0].experts[3].gate
        assert np.shares_memory(gate.data, g.data)  # a view of the mapping, no copy
    (a, counts_a, bytes_a), (b, counts_b, bytes_b) = results
    assert np.array_equal(a, b)
    assert np.array_equal(counts_a, counts_b) and bytes_a == bytes_b > 0


def test_quantize_writes_the_3d_layout_from_a_legacy_mixtral(legacy_mixtral, tmp_path):
    twin, legacy = legacy_mixtral
    from_legacy = convert(legacy, tmp_path / "from-legacy.gguf", "q8_0")
    from_twin = convert(twin, tmp_path / "from-twin.gguf", "q8_0")
    assert filecmp.cmp(from_legacy, from_twin, shallow=False)
    assert GGUFFile(from_legacy).tensors["blk.0.ffn_down_exps.weight"].shape == (4, 256, 256)


def test_legacy_mixtral_missing_an_expert_is_refused(legacy_mixtral, tmp_path):
    _, legacy = legacy_mixtral
    path = Parts.read(legacy).drop_tensor("blk.0.ffn_up.2.weight").write(tmp_path / "missing.gguf")
    with pytest.raises(cpuinfer.CpuinferError, match="missing tensor blk.0.ffn_up.2.weight"):
        cpuinfer.load(path)
    with pytest.raises(cpuinfer.CpuinferError, match="blk.0.ffn_up.E.weight are not experts 0 ... 2"):
        convert(path, tmp_path / "out.gguf", "q8_0")


# --- cpuinfer quantize and info ---------------------------------------------------------------

@pytest.mark.parametrize("source", ["mistral256-q3_k_m", "mistral256-iq4_xs", "mistral256-q5_1"])
def test_quantize_reads_every_type_exactly(source, tmp_path):
    """Re-quantizing to F32 writes each tensor's exact dequantized values (gguf.quants's)."""
    src = REFERENCE / "llamacpp" / f"{source}.gguf"
    out = GGUFFile(convert(src, tmp_path / "f32.gguf", "f32"))
    g = GGUFFile(src)
    for name, info in g.tensors.items():
        want = dequantize(g.blocks(info), QT(info.ggml_type)).reshape(info.shape)
        got = out.raw(out.tensors[name]).view(np.float32).reshape(info.shape)
        assert_bit_exact(got, want)


def test_quantize_reads_types_cpuinfer_does_not_compute_with(tmp_path):
    """An IQ2_XXS tensor (e.g. in an IQ2 file) is read through gguf.quants."""
    src = Parts.read(REFERENCE / "llamacpp" / "mistral256-q4_k_m.gguf").retype(
        "blk.0.ffn_up.weight", QT.IQ2_XXS).write(tmp_path / "iq2.gguf")
    with pytest.raises(cpuinfer.CpuinferError, match="blk.0.ffn_up.weight is IQ2_XXS"):
        cpuinfer.load(src)
    out = GGUFFile(convert(src, tmp_path / "q8_0.gguf", "q8_0"))
    g = GGUFFile(src)
    want = dequantize(g.blocks(g.tensors["blk.0.ffn_up.weight"]), QT.IQ2_XXS)
    got = dequantize(out.blocks(out.tensors["blk.0.ffn_up.weight"]), QT.Q8_0)
    assert np.abs(got - want).max() <= np.abs(want).max() / 127


def test_info_shows_every_type_with_its_bytes():
    from typer.testing import CliRunner

    from cpuinfer.cli import app

    path = REFERENCE / "llamacpp" / "mistral256-q3_k_m.gguf"
    r = CliRunner().invoke(app, ["info", str(path)])
    assert r.exit_code == 0, r.output
    by_type: dict[str, int] = {}
    for t in GGUFFile(path).tensors.values():
        by_type[t.type_name] = by_type.get(t.type_name, 0) + t.nbytes
    assert len(by_type) == 5  # F32, Q3_K, Q4_K, Q5_K, Q6_K
    for name, nbytes in by_type.items():
        assert any(name in line and f"{nbytes:,}" in line for line in r.output.splitlines()), (name, r.output)


# --- the default model re-quantized by llama.cpp -------------------------------------------------

def smollm2_kquants():
    from cpuinfer.default_model import cache_dir

    want = json.loads((REFERENCE / "smollm2_kquants_llamacpp.json").read_text())
    return [(cache_dir() / "llamacpp" / name, ref) for name, ref in want.items()]


@pytest.mark.parametrize("path, llamacpp", smollm2_kquants(), ids=lambda v: getattr(v, "name", ""))
def test_smollm2_kquant_perplexity_matches_llamacpp(path, llamacpp, record_property):
    from cpuinfer.default_model import sha256_file
    from cpuinfer.perplexity import perplexity

    if not path.exists() or sha256_file(path) != llamacpp["sha256"]:
        pytest.skip(f"{path} is made by tests/fixtures/make_llamacpp_quants.py --smollm2")
    m = cpuinfer.load(path, n_ctx=llamacpp["ctx"])
    result = perplexity(m, (TEXT / "GPL-3.txt").read_text(), ctx=llamacpp["ctx"])
    ppl, _ = result.ppl
    record_property("ppl", ppl)
    record_property("llamacpp_ppl", llamacpp["ppl"])
    print(f"{path.name}: cpuinfer {ppl:.4f}, llama.cpp {llamacpp['ppl']:.4f}")
    assert result.tokens == llamacpp["tokens"]
    assert abs(ppl / llamacpp["ppl"] - 1) < 0.01
