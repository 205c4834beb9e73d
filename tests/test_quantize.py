"""`cpuinfer quantize` (package quantize/) and `cpuinfer info`.

The converted files are checked with `gguf.GGUFReader` and `gguf.quants` (llama.cpp's
own Python package) against the weights `checkpoints.make_weights` generates, never
against quantize/'s own readers.
"""

from __future__ import annotations

import errno
import filecmp
import functools
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from types import SimpleNamespace

import checkpoints
import gguf
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as QT
from gguf.quants import dequantize
from gguf.quants import quantize as ggml_quantize
from typer.testing import CliRunner

import quantize
import quantize.writer
from cpuinfer.cli import app
from cpuinfer.errors import CpuinferError
from cpuinfer.gguf_file import GGUFFile

REPO = Path(__file__).resolve().parents[1]
KINDS = ("mistral", "mixtral", "llama")
# the file types whose reference bytes gguf.quants also writes (the K-quant mixes: test_mixes.py, test_quantizers.py)
TYPES = {"q8_0": QT.Q8_0, "q5_1": QT.Q5_1, "q5_0": QT.Q5_0, "q4_1": QT.Q4_1, "q4_0": QT.Q4_0, "bf16": QT.BF16,
         "f16": QT.F16, "f32": QT.F32}
FILE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "bf16": 32}  # llama_ftype
SHARD2 = "model-00002-of-00002.safetensors"

runner = CliRunner()


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def expected_tensors(kind: str) -> dict[str, np.ndarray]:
    """GGUF name -> float32 values (numpy order), built from the HF weights the way llama.cpp's
    converter does: Q/K rows back to Meta's interleaved order, Mixtral experts stacked."""
    w = checkpoints.make_weights(kind)
    spec = checkpoints.SPECS[kind]
    n_heads, n_kv = spec["num_attention_heads"], spec["num_key_value_heads"]
    out = {"token_embd.weight": w.pop("model.embed_tokens.weight")}
    for i in range(spec["num_hidden_layers"]):
        p, b = f"model.layers.{i}.", f"blk.{i}."
        out[b + "attn_norm.weight"] = w.pop(p + "input_layernorm.weight")
        out[b + "attn_q.weight"] = checkpoints.hf_to_meta_rows(w.pop(p + "self_attn.q_proj.weight"), n_heads)
        out[b + "attn_k.weight"] = checkpoints.hf_to_meta_rows(w.pop(p + "self_attn.k_proj.weight"), n_kv)
        out[b + "attn_v.weight"] = w.pop(p + "self_attn.v_proj.weight")
        out[b + "attn_output.weight"] = w.pop(p + "self_attn.o_proj.weight")
        out[b + "ffn_norm.weight"] = w.pop(p + "post_attention_layernorm.weight")
        if kind == "mixtral":
            out[b + "ffn_gate_inp.weight"] = w.pop(p + "block_sparse_moe.gate.weight")
            for gguf_part, hf_part in (("gate", "w1"), ("up", "w3"), ("down", "w2")):
                out[b + f"ffn_{gguf_part}_exps.weight"] = np.stack(
                    [w.pop(p + f"block_sparse_moe.experts.{e}.{hf_part}.weight")
                     for e in range(spec["num_local_experts"])])
        else:
            for part in ("gate", "up", "down"):
                out[b + f"ffn_{part}.weight"] = w.pop(p + f"mlp.{part}_proj.weight")
    out["output_norm.weight"] = w.pop("model.norm.weight")
    out["output.weight"] = w.pop("lm_head.weight")
    assert not w, f"weights not mapped: {sorted(w)}"
    return {name: np.ascontiguousarray(a, dtype=np.float32) for name, a in out.items()}


def expected_type(name: str, shape: tuple[int, ...], type_name: str) -> QT:
    """llama.cpp's choice for these checkpoints (64-wide rows, 2 layers, no 8 experts): norms and the router
    F32; the output Q6_K, which does not fit 64-value rows, so Q8_0; every other matrix the body type."""
    if len(shape) == 1 or name.endswith("ffn_gate_inp.weight"):
        return QT.F32
    if name == "output.weight" and TYPES[type_name] not in (QT.F16, QT.BF16, QT.F32):
        return QT.Q8_0
    return TYPES[type_name]


@functools.lru_cache(maxsize=None)
def sentencepiece_vocab():
    """(tokens, scores, llama.cpp token types) as sentencepiece reports them for the real tokenizer.model."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(checkpoints.tokenizer_model_path()))
    n = sp.vocab_size()
    tokens = [sp.id_to_piece(i) for i in range(n)]
    scores = np.array([sp.get_score(i) for i in range(n)], dtype=np.float32)
    # llama.cpp: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, UNUSED 5, BYTE 6
    types = [2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i) else
             6 if sp.is_byte(i) else 1 for i in range(n)]
    return tokens, scores, types


def field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def tensor_table(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """name -> (type, shape, bytes) of every tensor, in file order."""
    g = GGUFFile(path)
    return {name: (t.type_name, t.shape, g.raw(t).tobytes()) for name, t in g.tensors.items()}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_cli_error(result, message: str, code: int = 2) -> None:
    """Exit `code`, exactly one line `error: ...` (containing `message`) on stderr, no traceback."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.output
    assert message in errors[0], result.output
    assert result.stdout == ""


def cli_quantize(src, out, type_name: str, *extra: str):
    return runner.invoke(app, ["quantize", str(src), "-o", str(out), "--type", type_name, *extra])


def rewrite_safetensors_header(path: Path, edit) -> None:
    """Rewrite a safetensors file's JSON header with `edit(header)`, keeping its data bytes."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.unlink()  # never write through to a file another test shares
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data[8 + n:])


def replace_bytes(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def edit_json(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.unlink()
    path.write_text(json.dumps(obj))


# --------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_ffn_checkpoint(tmp_path_factory) -> Path:
    """A llama checkpoint with intermediate_size 100: ffn_down rows are not whole 32-value blocks."""
    spec = checkpoints.SPECS["llama"]
    checkpoints.SPECS["llama"] = {**spec, "intermediate_size": 100}
    try:
        return checkpoints.write_hf("llama", tmp_path_factory.mktemp("odd-ffn"), shards=1)
    finally:
        checkpoints.SPECS["llama"] = spec


# --------------------------------------------------------------------------
# 1-3. round trip: names, shapes, types, metadata, vocabulary, values, Q/K order
# --------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", TYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(converted, kind, type_name):
    """gguf.GGUFReader reads every conversion; one test per file, as each parse holds ~85 MB."""
    r = gguf.GGUFReader(converted(kind, type_name, "reference"))
    check_tensor_table(r, kind, type_name)
    check_metadata(r, kind, type_name)
    check_values(r, kind)
    if type_name == "q8_0":
        check_vocabulary(r)
    if type_name == "f32":
        check_qk_rows(r, kind)


def check_tensor_table(r: gguf.GGUFReader, kind: str, type_name: str) -> None:
    expected = expected_tensors(kind)
    names = [t.name for t in r.tensors]
    assert len(names) == len(set(names))
    assert set(names) == set(expected)
    for t in r.tensors:
        shape = expected[t.name].shape
        assert [int(d) for d in t.shape] == list(reversed(shape)), t.name  # ggml order: columns first
        assert t.tensor_type == expected_type(t.name, shape, type_name), t.name
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["output_norm.weight"] == types["blk.1.attn_norm.weight"] == QT.F32
    assert types["token_embd.weight"] == TYPES[type_name]
    assert types["output.weight"] == (TYPES[type_name] if type_name in ("f32", "f16", "bf16") else QT.Q8_0)
    assert types["blk.1.attn_q.weight"] == TYPES[type_name]
    if kind == "mixtral":
        for i in range(2):
            assert types[f"blk.{i}.ffn_gate_inp.weight"] == QT.F32
            for part, (rows, cols) in (("gate", (128, 64)), ("up", (128, 64)), ("down", (64, 128))):
                t = next(t for t in r.tensors if t.name == f"blk.{i}.ffn_{part}_exps.weight")
                assert [int(d) for d in t.shape] == [cols, rows, 4]
                assert t.tensor_type == TYPES[type_name]


def check_metadata(r: gguf.GGUFReader, kind: str, type_name: str) -> None:
    spec = checkpoints.SPECS[kind]
    assert field(r, "general.architecture") == "llama"
    assert field(r, "general.file_type") == FILE_TYPES[type_name]
    assert field(r, "general.quantization_version") == 2
    ints = {
        "llama.block_count": 2,
        "llama.embedding_length": 64,
        "llama.feed_forward_length": 128,
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": spec["num_key_value_heads"],
        "llama.rope.dimension_count": 16,
        "llama.context_length": 4096,
        "llama.vocab_size": 32000,
    }
    for key, value in ints.items():
        assert field(r, key) == value, key
    assert field(r, "llama.rope.freq_base") == (1e6 if kind == "mixtral" else 10000.0)
    assert field(r, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-5, rel=1e-6)
    if kind == "mixtral":
        assert field(r, "llama.expert_count") == 4
        assert field(r, "llama.expert_used_count") == 2
    else:
        assert "llama.expert_count" not in r.fields
    if kind == "mistral":
        assert field(r, "llama.attention.sliding_window") == 16
    else:
        assert "llama.attention.sliding_window" not in r.fields
    assert field(r, "tokenizer.ggml.model") == "llama"
    assert len(r.fields["tokenizer.ggml.tokens"].data) == 32000
    assert field(r, "tokenizer.ggml.bos_token_id") == 1
    assert field(r, "tokenizer.ggml.eos_token_id") == 2
    assert field(r, "tokenizer.ggml.unknown_token_id") == 0
    assert field(r, "tokenizer.ggml.add_bos_token") is True
    if kind in ("mistral", "mixtral"):
        assert field(r, "tokenizer.chat_template") == checkpoints.MISTRAL_CHAT_TEMPLATE
    else:
        assert "tokenizer.chat_template" not in r.fields


def check_vocabulary(r: gguf.GGUFReader) -> None:
    tokens, scores, types = sentencepiece_vocab()
    assert len(tokens) == 32000
    assert field(r, "tokenizer.ggml.tokens") == tokens
    assert np.array_equal(np.array(field(r, "tokenizer.ggml.scores"), dtype=np.float32), scores)
    assert field(r, "tokenizer.ggml.token_type") == types
    # what that means for the Mistral v1 vocabulary
    assert tokens[:4] == ["<unk>", "<s>", "</s>", "<0x00>"] and types[:4] == [2, 3, 3, 6]


def _f16(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(np.float16).astype(np.float64)


def max_block_error(qtype: QT, x: np.ndarray) -> np.ndarray:
    """The largest |error| each 32-value block may have once quantized to `qtype` and back
    (ggml's reference quantizers, f16 scales included), plus float32 rounding slack."""
    x = x.reshape(-1, 32).astype(np.float64)
    amax = np.abs(x).max(axis=1)
    slack = 1e-6 * amax + 1e-12
    if qtype == QT.Q8_0:  # d = amax/127, q = round(x/d) in [-127, 127]
        d = amax / 127
        return d / 2 + 127 * np.abs(d - _f16(d)) + slack
    if qtype in (QT.Q4_0, QT.Q5_0):  # d = amax/n (sign of the extreme value), q in [-n, n-1]: one step at the clamp
        n = 8 if qtype == QT.Q4_0 else 16
        d = amax / n
        return d + n * np.abs(d - _f16(d)) + slack
    if qtype in (QT.Q4_1, QT.Q5_1):  # d = (max-min)/n, m = min, q in [0, n]
        n = 15 if qtype == QT.Q4_1 else 31
        lo, hi = x.min(axis=1), x.max(axis=1)
        d = (hi - lo) / n
        return d / 2 + n * np.abs(d - _f16(d)) + np.abs(lo - _f16(lo)) + slack
    raise ValueError(qtype)


def check_values(r: gguf.GGUFReader, kind: str) -> None:
    """Dequantized values against the source weights; quantized bytes against gguf.quants.quantize."""
    expected = expected_tensors(kind)
    for t in r.tensors:
        src = expected[t.name]
        qtype = QT(t.tensor_type)
        values = dequantize(t.data, qtype).reshape(src.shape)
        if qtype == QT.F32:
            assert np.array_equal(values.view(np.uint32), src.view(np.uint32)), t.name
        elif qtype in (QT.F16, QT.BF16):
            assert np.array_equal(values, src), t.name  # the checkpoint's values are bf16 and f16 numbers
        else:
            # ggml's reference bytes, block for block
            assert np.array_equal(np.asarray(t.data).reshape(-1), ggml_quantize(src, qtype).reshape(-1)), t.name
            err = np.abs(values.reshape(-1, 32).astype(np.float64) - src.reshape(-1, 32)).max(axis=1)
            bound = max_block_error(qtype, src)
            worst = int(np.argmax(err - bound))
            assert np.all(err <= bound), f"{t.name}: block {worst} error {err[worst]} > {bound[worst]}"
            assert err.max() > 0  # it was quantized


def check_qk_rows(r: gguf.GGUFReader, kind: str) -> None:
    """attn_q/attn_k hold HF's q_proj/k_proj rows in Meta's interleaved order (checkpoints.hf_to_meta_rows,
    written independently of quantize/), per head count: n_heads for q, n_kv_heads for k."""
    w = checkpoints.make_weights(kind)
    spec = checkpoints.SPECS[kind]
    tensors = {t.name: np.asarray(t.data) for t in r.tensors}
    for i in range(2):
        for proj, heads in (("q", spec["num_attention_heads"]), ("k", spec["num_key_value_heads"])):
            hf = w[f"model.layers.{i}.self_attn.{proj}_proj.weight"]
            got = tensors[f"blk.{i}.attn_{proj}.weight"].reshape(hf.shape)
            assert np.array_equal(got, checkpoints.hf_to_meta_rows(hf, heads))
            assert np.array_equal(checkpoints.meta_to_hf_rows(got, heads), hf)
            assert not np.array_equal(got, hf)  # the permutation is not a no-op here


@pytest.mark.parametrize("kind", ["mistral", "mixtral"])
def test_consolidated_checkpoint_gives_the_same_tensors(converted, tmp_path, kind):
    folder = checkpoints.write_consolidated(kind, tmp_path / "consolidated")
    out = quantize.convert(folder, tmp_path / "c.gguf", "f32")
    direct = converted(kind, "f32")
    assert tensor_table(out) == tensor_table(direct)
    a, b = GGUFFile(out).metadata, GGUFFile(direct).metadata
    for key in ("general.architecture", "llama.block_count", "llama.embedding_length", "llama.feed_forward_length",
                "llama.attention.head_count", "llama.attention.head_count_kv", "llama.rope.dimension_count",
                "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.expert_count",
                "llama.expert_used_count", "llama.attention.sliding_window", "llama.vocab_size",
                "tokenizer.ggml.model", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert a.get(key) == b.get(key), key
    assert a["tokenizer.ggml.tokens"] == b["tokenizer.ggml.tokens"]


# --------------------------------------------------------------------------
# 4. other inputs
# --------------------------------------------------------------------------


def test_single_file_f16_checkpoint(converted, tmp_path):
    folder = checkpoints.write_hf("mixtral", tmp_path / "hf-mixtral", dtype="f16", shards=1)
    assert (folder / "model.safetensors").exists() and not (folder / "model.safetensors.index.json").exists()
    out = quantize.convert(folder, tmp_path / "f16-in.gguf", "q8_0")
    assert tensor_table(out) == tensor_table(converted("mixtral", "q8_0"))


def test_three_shard_f32_checkpoint(converted, tmp_path):
    """f32 in three shards: embeddings | both layers | final norm and lm_head."""
    folder = checkpoints.write_hf("llama", tmp_path / "hf-llama", dtype="f32", shards=1)
    (folder / "model.safetensors").unlink()
    weights = checkpoints.make_weights("llama")
    groups = [[n for n in weights if n == "model.embed_tokens.weight"],
              [n for n in weights if n.startswith("model.layers.")],
              [n for n in weights if n in ("model.norm.weight", "lm_head.weight")]]
    assert sum(map(len, groups)) == len(weights)
    weight_map = {}
    for k, group in enumerate(groups):
        shard = f"model-{k + 1:05d}-of-00003.safetensors"
        checkpoints.write_safetensors(folder / shard, [(n, weights[n]) for n in group], "F32")
        weight_map.update(dict.fromkeys(group, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    out = quantize.convert(folder, tmp_path / "f32-in.gguf", "q4_1")
    assert tensor_table(out) == tensor_table(converted("llama", "q4_1"))


def test_gguf_input_requantized(converted, tmp_path):
    """f32 GGUF -> q4_0 is the very file a direct conversion writes; re-quantizing a q4_0 file to q4_0
    changes nothing (tensors that keep their type are copied)."""
    out = quantize.convert(converted("mixtral", "f32"), tmp_path / "from-f32.gguf", "q4_0")
    assert filecmp.cmp(out, converted("mixtral", "q4_0"), shallow=False)
    again = quantize.convert(converted("mixtral", "q4_0"), tmp_path / "again.gguf", "q4_0")
    assert filecmp.cmp(again, converted("mixtral", "q4_0"), shallow=False)


def test_gguf_input_leaves_memory_as_it_is_written(converted, tmp_path, monkeypatch):
    """Every tensor of a mapped GGUF source, converted or copied, is dropped from the process's mapping once
    written (the page cache keeps it), so the resident set holds about one tensor of the source at a time."""
    released = []
    real = GGUFFile.release

    def record(self, start, stop, page_cache=True):
        released.append((start, stop, page_cache))
        real(self, start, stop, page_cache)

    monkeypatch.setattr(GGUFFile, "release", record)
    src = converted("mixtral", "q4_0")
    quantize.convert(src, tmp_path / "mixed.gguf", "q4_k_m")  # some tensors converted, some copied
    ranges = {(t.offset, t.offset + t.nbytes) for t in GGUFFile(src).tensors.values()}
    assert {(a, b) for a, b, _ in released} == ranges
    assert not any(cached for _, _, cached in released)


def one_tensor_gguf(path, x: np.ndarray):
    """A GGUF file holding x as the float32 tensor "edge.weight"."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_tensor("edge.weight", x)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_rounding_edge_cases_give_ggml_bytes(tmp_path):
    """Blocks the reference weights hardly hit: zero and constant blocks, exact halves (away from zero),
    the largest float below 0.5 (C roundf: 0), the Q4 clamp, tiny scales; through a GGUF input."""
    x = np.random.default_rng(5).standard_normal((64, 64)).astype(np.float32)
    below_half = np.nextafter(np.float32(0.5), np.float32(0))
    x[0, :] = 0
    x[1, :] = 0.25
    x[2, :32] = [127, below_half, -below_half, 1.5, -1.5, 2.5, -2.5, below_half + 1, 0.5, -0.5] + [0] * 22
    x[3, :32] = [-8, below_half, -below_half, 0.5, -0.5, 7.5, 7.4999995, 3.5] + [0] * 24
    x[4, 32:] = x[2, :32] * np.float32(1e-3)
    src = one_tensor_gguf(tmp_path / "edge.gguf", x)
    for type_name in ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0", "bf16"):
        out = quantize.convert(src, tmp_path / f"edge-{type_name}.gguf", type_name, rounding="reference")
        g = GGUFFile(out)
        got = g.blocks(g.tensors["edge.weight"])
        want = ggml_quantize(x, TYPES[type_name])
        assert np.array_equal(got, want), f"{type_name}: rows {np.nonzero((got != want).any(axis=1))[0]} differ"


def test_default_rounding_searches_where_it_measured_better(tmp_path):
    """Without an importance matrix, Q5_0/Q5_1 keep ggml's reference bytes (their search measured worse on the
    default model) and Q4_0 gets the error search."""
    x = np.random.default_rng(5).standard_normal((8, 256)).astype(np.float32)
    src = one_tensor_gguf(tmp_path / "w.gguf", x)
    for type_name, searched in (("q5_0", False), ("q5_1", False), ("q4_0", True)):
        plain, ref = (GGUFFile(quantize.convert(src, tmp_path / f"{type_name}-{r}.gguf", type_name, rounding=r))
                      for r in ("search", "reference"))
        same = np.array_equal(plain.blocks(plain.tensors["edge.weight"]), ref.blocks(ref.tensors["edge.weight"]))
        assert same != searched, type_name


def test_default_model_requantized_to_q8_0(smollm2, tmp_path):
    out = quantize.convert(smollm2, tmp_path / "smollm2-q8_0.gguf", "q8_0")
    r = gguf.GGUFReader(out)
    assert field(r, "general.file_type") == 7
    assert field(r, "tokenizer.ggml.model") == "gpt2"
    assert {QT(t.tensor_type) for t in r.tensors if len(t.shape) == 1} == {QT.F32}
    assert {QT(t.tensor_type) for t in r.tensors if len(t.shape) > 1} == {QT.Q8_0}

    src, dst = GGUFFile(smollm2), GGUFFile(out)
    assert src.metadata["general.file_type"] == 3  # Q4_1
    file_keys = ("GGUF.", "general.file_type", "general.quantization_version", "general.alignment")
    src_md = {k: v for k, v in src.metadata.items() if not k.startswith(file_keys)}
    dst_md = {k: v for k, v in dst.metadata.items() if not k.startswith(file_keys)}
    assert src_md.keys() == dst_md.keys()
    for key, value in src_md.items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(dst_md[key], value), key
        else:
            assert dst_md[key] == value, key
        assert dst.value_types[key] == src.value_types[key], key
    assert len(dst_md["tokenizer.ggml.merges"]) > 40000 and dst_md["tokenizer.ggml.pre"] == src_md["tokenizer.ggml.pre"]

    assert list(dst.tensors) == list(src.tensors)
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight"):
        s, d = src.tensors[name], dst.tensors[name]
        assert d.shape == s.shape
        values = dequantize(src.blocks(s), QT(s.ggml_type)).reshape(s.shape)
        got = dequantize(dst.blocks(d), QT.Q8_0).reshape(s.shape)
        err = np.abs(got.reshape(-1, 32).astype(np.float64) - values.reshape(-1, 32)).max(axis=1)
        assert np.all(err <= max_block_error(QT.Q8_0, values)), name


# --------------------------------------------------------------------------
# 5. bad inputs: a clear error, exit code 2, nothing written
# --------------------------------------------------------------------------


def _copy(hf_checkpoint, tmp: Path, kind: str = "llama") -> Path:
    return Path(shutil.copytree(hf_checkpoint(kind), tmp / "src"))


def _missing_source(tmp, hf):
    return tmp / "no-such-model", "q8_0", "no such file or folder"


def _no_config(tmp, hf):
    src = _copy(hf, tmp)
    (src / "config.json").unlink()
    return src, "q8_0", "nor a folder with config.json"


def _empty_folder(tmp, hf):
    (tmp / "empty").mkdir()
    return tmp / "empty", "q8_0", "nor a folder with config.json"


def _config_without(key):
    def make(tmp, hf):
        src = _copy(hf, tmp)
        edit_json(src / "config.json", lambda c: c.pop(key))
        return src, "q8_0", f"missing or invalid '{key}'"
    return make


def _missing_shard(tmp, hf):
    src = _copy(hf, tmp)
    (src / SHARD2).unlink()
    return src, "q8_0", f"missing shard '{SHARD2}'"


def _index_names_absent_tensor(tmp, hf):
    src = _copy(hf, tmp)
    edit_json(src / "model.safetensors.index.json",
              lambda idx: idx["weight_map"].__setitem__("model.layers.1.mlp.extra.weight", SHARD2))
    return src, "q8_0", "lacks tensor 'model.layers.1.mlp.extra.weight'"


def _tensor_missing_everywhere(tmp, hf):
    src = _copy(hf, tmp)
    name = "model.layers.1.mlp.down_proj.weight"
    rewrite_safetensors_header(src / SHARD2, lambda h: h.pop(name))
    edit_json(src / "model.safetensors.index.json", lambda idx: idx["weight_map"].pop(name))
    return src, "q8_0", f"missing tensor {name}"


def _wrong_shape(tmp, hf):
    src = _copy(hf, tmp)
    edit_json(src / "config.json", lambda c: c.__setitem__("intermediate_size", 256))
    return src, "q8_0", "has shape [128, 64], expected [256, 64]"


def _truncated_shard(tmp, hf):
    src = _copy(hf, tmp)
    data = (src / SHARD2).read_bytes()
    replace_bytes(src / SHARD2, data[:len(data) // 2])
    return src, "q8_0", "truncated safetensors file"


def _garbage_header(tmp, hf):
    src = _copy(hf, tmp)
    data = (src / SHARD2).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    garbage = (b'{"model.layers.1' + b"\x00garbage" * n)[:n]  # same length, not JSON
    replace_bytes(src / SHARD2, data[:8] + garbage + data[8 + n:])
    return src, "q8_0", "corrupt safetensors header"


def _header_longer_than_file(tmp, hf):
    src = _copy(hf, tmp)
    data = (src / SHARD2).read_bytes()
    replace_bytes(src / SHARD2, struct.pack("<Q", len(data) + 1000) + data[8:])
    return src, "q8_0", "corrupt or truncated safetensors header"


def _unknown_architecture(tmp, hf):
    src = _copy(hf, tmp)
    edit_json(src / "config.json", lambda c: c.__setitem__("architectures", ["GPT2LMHeadModel"]))
    return src, "q8_0", "unknown architecture 'GPT2LMHeadModel'"


def _dtype(st_dtype):
    def make(tmp, hf):
        src = _copy(hf, tmp)
        name = "model.layers.1.self_attn.q_proj.weight"
        rewrite_safetensors_header(src / SHARD2, lambda h: h[name].__setitem__("dtype", st_dtype))
        return src, "q8_0", f"tensor '{name}' has unsupported dtype '{st_dtype}'"
    return make


def _missing_tokenizer(tmp, hf):
    src = _copy(hf, tmp)
    (src / "tokenizer.model").unlink()
    return src, "q8_0", "missing tokenizer.model"


def _broken_tokenizer(tmp, hf):
    src = _copy(hf, tmp)
    replace_bytes(src / "tokenizer.model", b"not a protobuf" * 100)
    return src, "q8_0", "not a SentencePiece model"


def _tokenizer_piece_not_utf8(tmp, hf):
    src = _copy(hf, tmp)
    data = (src / "tokenizer.model").read_bytes()
    at = data.index("\u2581t".encode()) + 1  # inside the 3 bytes of U+2581 in the piece "▁t"
    replace_bytes(src / "tokenizer.model", data[:at] + b"\xff" + data[at + 1:])
    return src, "q8_0", "not a SentencePiece model (a piece is not UTF-8"


def _consolidated_without_dim(tmp, hf):
    src = checkpoints.write_consolidated("mistral", tmp / "src")
    edit_json(src / "params.json", lambda p: p.pop("dim"))
    return src, "q8_0", "missing or invalid 'dim'"


def _consolidated_without_weights(tmp, hf):
    src = checkpoints.write_consolidated("mistral", tmp / "src")
    (src / "consolidated.safetensors").unlink()
    return src, "q8_0", "missing consolidated.safetensors"


def _not_gguf(tmp, hf):
    (tmp / "model.gguf.txt").write_text("hello " * 100)
    return tmp / "model.gguf.txt", "q8_0", "not a GGUF file"


def _truncated_gguf(tmp, hf, converted):
    data = converted("llama", "q8_0").read_bytes()
    (tmp / "cut.gguf").write_bytes(data[:len(data) // 2])
    return tmp / "cut.gguf", "q4_0", "truncated or corrupt"


def _unknown_type(tmp, hf):
    return hf("llama"), "q5_k", "unknown type 'q5_k'"


def _json_field(file: str, key: str, value, message: str, kind: str = "llama"):
    """A checkpoint whose JSON `file` has `key` set to `value` ("weight_map.NAME": an entry of the index)."""
    def make(tmp, hf):
        src = _copy(hf, tmp, kind)
        *parents, leaf = key.split(".", 1) if key.startswith("weight_map.") else [key]

        def edit(obj):
            for k in parents:
                obj = obj[k]
            obj[leaf] = value
        edit_json(src / file, edit)
        return src, "q8_0", message
    return make


def _whole_json(file: str, data: bytes, message: str):
    def make(tmp, hf):
        src = _copy(hf, tmp)
        replace_bytes(src / file, data)
        return src, "q8_0", message
    return make


def _consolidated_field(key: str, value, message: str):
    def make(tmp, hf):
        src = checkpoints.write_consolidated("mixtral", tmp / "src")
        edit_json(src / "params.json", lambda p: p.__setitem__(key, value))
        return src, "q8_0", message
    return make


def _config_is_a_folder(tmp, hf):
    src = _copy(hf, tmp)
    (src / "config.json").unlink()
    (src / "config.json").mkdir()
    return src, "q8_0", "config.json is a folder, not a JSON file"


def _data_offsets_strings(tmp, hf):
    src = _copy(hf, tmp)
    name = "model.layers.1.self_attn.q_proj.weight"
    rewrite_safetensors_header(src / SHARD2, lambda h: h[name].__setitem__("data_offsets", ["0", "8192"]))
    return src, "q8_0", f"corrupt safetensors entry for '{name}'"


# Every field a config.json, params.json, tokenizer_config.json or index gives, of the wrong type or range.
SCHEMA_CASES = {
    **{f"{key}-string": _json_field("config.json", key, "4", f"'{key}' is '4' (a string); expected")
       for key in ("num_key_value_heads", "head_dim", "rope_theta", "rms_norm_eps", "max_position_embeddings",
                   "sliding_window", "num_local_experts", "num_attention_heads", "vocab_size")},
    "num_attention_heads-0": _json_field("config.json", "num_attention_heads", 0,
                                         "'num_attention_heads' is 0 (an integer); expected an integer in 1.."),
    "num_attention_heads--4": _json_field("config.json", "num_attention_heads", -4, "'num_attention_heads' is -4"),
    "num_attention_heads-3": _json_field("config.json", "num_attention_heads", 3,
                                         "the width 64 does not divide into 3 heads"),
    "num_key_value_heads-3": _json_field("config.json", "num_key_value_heads", 3,
                                         "4 attention heads do not divide into 3 kv heads"),
    "head_dim-odd": _json_field("config.json", "head_dim", 15, "head dimension 15 is odd"),
    "num_hidden_layers--1": _json_field("config.json", "num_hidden_layers", -1, "'num_hidden_layers' is -1"),
    "num_hidden_layers-0": _json_field("config.json", "num_hidden_layers", 0, "'num_hidden_layers' is 0"),
    "num_hidden_layers-1": _json_field("config.json", "num_hidden_layers", 1,
                                       "the config gives 1 layer(s), but the checkpoint has a tensor for layer 1"),
    "num_hidden_layers-float": _json_field("config.json", "num_hidden_layers", 2.0, "'num_hidden_layers' is 2.0"),
    "max_position_embeddings--5": _json_field("config.json", "max_position_embeddings", -5,
                                              "'max_position_embeddings' is -5"),
    "max_position_embeddings-2^40": _json_field("config.json", "max_position_embeddings", 2**40,
                                                "expected an integer in 1..4294967295"),
    "sliding_window--3": _json_field("config.json", "sliding_window", -3, "'sliding_window' is -3", "mistral"),
    "rope_theta--1": _json_field("config.json", "rope_theta", -1, "'rope_theta' is -1 (an integer); expected a "
                                                                  "finite number > 0"),
    "rope_theta-NaN": _json_field("config.json", "rope_theta", float("nan"), "'rope_theta' is nan"),
    "rms_norm_eps-0": _json_field("config.json", "rms_norm_eps", 0, "'rms_norm_eps' is 0"),
    "num_local_experts-null": _json_field("config.json", "num_local_experts", None,
                                          "the config gives 0 expert(s), but the checkpoint has a tensor for "
                                          "expert 3", "mixtral"),
    "num_local_experts-2": _json_field("config.json", "num_local_experts", 2, "a tensor for expert 3", "mixtral"),
    "num_experts_per_tok-5": _json_field("config.json", "num_experts_per_tok", 5, "5 experts per token of 4",
                                         "mixtral"),
    "architectures-int": _json_field("config.json", "architectures", 5, "'architectures' is 5 (an integer)"),
    "architectures-empty": _json_field("config.json", "architectures", [], "'architectures' is []"),
    "rope_scaling-string": _json_field("config.json", "rope_scaling", "linear",
                                       "'rope_scaling': expected a JSON object, found a string"),
    "rope_scaling-linear": _json_field("config.json", "rope_scaling", {"type": "linear", "factor": 2.0},
                                       "rope_scaling {'type': 'linear', 'factor': 2.0} is not supported"),
    "tie_word_embeddings-string": _json_field("config.json", "tie_word_embeddings", "false",
                                              "'tie_word_embeddings' is 'false' (a string); expected true or false"),
    "bos_token_id-outside": _json_field("config.json", "bos_token_id", 32000, "'bos_token_id' is 32000"),
    "name-list": _json_field("config.json", "_name_or_path", ["x"], "'_name_or_path' is ['x'] (a list)"),
    "config-list": _whole_json("config.json", b"[1, 2]", "config.json: expected a JSON object, found a list"),
    "config-not-json": _whole_json("config.json", b"{", "config.json: not valid JSON"),
    "config-deeply-nested": _whole_json("config.json", b"[" * 100000, "config.json: not valid JSON"),
    "config-not-utf8": _whole_json("config.json", b'{"a": "\xff"}', "config.json: not valid JSON"),
    "config-a-folder": _config_is_a_folder,
    "index-list": _whole_json("model.safetensors.index.json", b"[]", "index.json: expected a JSON object"),
    "index-shard-int": _json_field("model.safetensors.index.json", "weight_map.lm_head.weight", 5,
                                   "tensor 'lm_head.weight' is placed in 5; expected the file name of a shard"),
    "index-shard-outside": _json_field("model.safetensors.index.json", "weight_map.lm_head.weight", "../x",
                                       "is placed in '../x'"),
    "tokenizer_config-list": _whole_json("tokenizer_config.json", b'["a"]', "tokenizer_config.json: expected a "
                                                                            "JSON object, found a list"),
    "chat_template-[1]": _json_field("tokenizer_config.json", "chat_template", [1],
                                     "chat_template entry: expected a JSON object, found an integer"),
    "chat_template-int": _json_field("tokenizer_config.json", "chat_template", 7, "'chat_template' is 7"),
    "add_bos_token-string": _json_field("tokenizer_config.json", "add_bos_token", "yes", "'add_bos_token' is 'yes'"),
    "data_offsets-strings": _data_offsets_strings,
    "params-n_heads-string": _consolidated_field("n_heads", "4", "params.json: 'n_heads' is '4' (a string)"),
    "params-moe-string": _consolidated_field("moe", "x", "'moe': expected a JSON object, found a string"),
    "params-head_dim-0": _consolidated_field("head_dim", 0, "'head_dim' is 0"),
    "params-norm_eps-negative": _consolidated_field("norm_eps", -1e-5, "'norm_eps' is -1e-05"),
}


BAD_INPUTS = {
    "missing-source": _missing_source,
    "empty-folder": _empty_folder,
    "no-config": _no_config,
    "config-without-hidden_size": _config_without("hidden_size"),
    "config-without-vocab_size": _config_without("vocab_size"),
    "missing-shard": _missing_shard,
    "index-names-absent-tensor": _index_names_absent_tensor,
    "tensor-missing": _tensor_missing_everywhere,
    "wrong-shape": _wrong_shape,
    "truncated-shard": _truncated_shard,
    "garbage-header": _garbage_header,
    "header-longer-than-file": _header_longer_than_file,
    "unknown-architecture": _unknown_architecture,
    "dtype-I8": _dtype("I8"),
    "dtype-F8_E4M3": _dtype("F8_E4M3"),
    "missing-tokenizer": _missing_tokenizer,
    "broken-tokenizer": _broken_tokenizer,
    "tokenizer-piece-not-utf8": _tokenizer_piece_not_utf8,
    "consolidated-without-dim": _consolidated_without_dim,
    "consolidated-without-weights": _consolidated_without_weights,
    "not-gguf": _not_gguf,
    "truncated-gguf": _truncated_gguf,
    "unknown-type": _unknown_type,
    **SCHEMA_CASES,
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input(case, tmp_path, hf_checkpoint, converted):
    make = BAD_INPUTS[case]
    if case == "truncated-gguf":
        src, type_name, message = make(tmp_path, hf_checkpoint, converted)
    else:
        src, type_name, message = make(tmp_path, hf_checkpoint)
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "model.gguf"

    with pytest.raises(CpuinferError, match=re.escape(message)):
        quantize.convert(src, out, type_name)
    assert leftovers(outdir) == []

    assert_cli_error(cli_quantize(src, out, type_name), message)
    assert leftovers(outdir) == []


def test_odd_rows_convert_to_f16(odd_ffn_checkpoint, tmp_path):
    """Rows that are no whole number of 32-value blocks: F16 (the checkpoint's bf16 values exactly), as
    llama.cpp falls back to, whatever the file type."""
    tables = {t: tensor_table(quantize.convert(odd_ffn_checkpoint, tmp_path / f"odd-{t}.gguf", t))
              for t in ("f16", "q8_0", "q4_0", "q4_k_m")}
    for type_name, table in tables.items():
        kind, shape, data = table["blk.0.ffn_down.weight"]
        assert (kind, shape) == ("F16", (64, 100)), type_name
        assert data == tables["f16"]["blk.0.ffn_down.weight"][2], type_name


def test_output_is_a_folder(hf_checkpoint, tmp_path):
    out = tmp_path / "out.gguf"
    out.mkdir()
    with pytest.raises(CpuinferError, match="is a folder"):
        quantize.convert(hf_checkpoint("llama"), out, "q8_0")
    assert_cli_error(cli_quantize(hf_checkpoint("llama"), out, "q8_0"), "is a folder")
    assert_cli_error(cli_quantize(hf_checkpoint("llama"), out, "q8_0", "--force"), "is a folder")
    assert leftovers(tmp_path) == ["out.gguf"] and leftovers(out) == []


def test_error_text_is_printed_verbatim(tmp_path):
    """Paths are not rich markup: '[/b]' would otherwise crash the error printer, '[bold]' vanish."""
    src = tmp_path / "model[/b][bold]x"
    assert_cli_error(cli_quantize(src, tmp_path / "out.gguf", "q8_0"), f"{src}: no such file or folder")
    assert leftovers(tmp_path) == []


def test_output_folder_missing(hf_checkpoint, tmp_path):
    out = tmp_path / "no-such-folder" / "out.gguf"
    with pytest.raises(CpuinferError, match="no such folder"):
        quantize.convert(hf_checkpoint("llama"), out, "q8_0")
    assert_cli_error(cli_quantize(hf_checkpoint("llama"), out, "q8_0"), "no such folder")
    assert leftovers(tmp_path) == []


def test_output_must_not_be_the_input(converted, tmp_path):
    src = tmp_path / "model.gguf"
    shutil.copyfile(converted("llama", "q8_0"), src)
    before = src.read_bytes()
    with pytest.raises(CpuinferError, match="must not be the input"):
        quantize.convert(src, src, "q4_0", force=True)
    assert_cli_error(cli_quantize(src, src, "q4_0", "--force"), "must not be the input")
    assert leftovers(tmp_path) == ["model.gguf"] and src.read_bytes() == before


def test_existing_output_needs_force(hf_checkpoint, converted, tmp_path):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"precious")
    stamp = out.stat().st_mtime_ns
    with pytest.raises(CpuinferError, match="already exists"):
        quantize.convert(hf_checkpoint("llama"), out, "q8_0")
    assert_cli_error(cli_quantize(hf_checkpoint("llama"), out, "q8_0"), "already exists (use --force")
    # --force with an input that fails leaves the old file alone too
    assert_cli_error(cli_quantize(tmp_path / "nothing", out, "q8_0", "--force"), "no such file or folder")
    assert out.read_bytes() == b"precious" and out.stat().st_mtime_ns == stamp
    assert leftovers(tmp_path) == ["model.gguf"]

    result = cli_quantize(hf_checkpoint("llama"), out, "q8_0", "--force", "--quiet")
    assert result.exit_code == 0, result.output
    assert filecmp.cmp(out, converted("llama", "q8_0"), shallow=False)
    assert leftovers(tmp_path) == ["model.gguf"]


def test_output_file_mode_follows_umask(converted):
    umask = os.umask(0)
    os.umask(umask)
    assert converted("llama", "q8_0").stat().st_mode & 0o777 == 0o666 & ~umask


Usage = namedtuple("Usage", "total used free")


def test_no_room_is_found_before_writing(hf_checkpoint, tmp_path, monkeypatch):
    asked = []

    def disk_usage(path):
        asked.append(Path(path))
        return Usage(10**9, 10**9 - 10**5, 10**5)

    monkeypatch.setattr(quantize.writer, "shutil", SimpleNamespace(disk_usage=disk_usage))
    written = []
    with pytest.raises(CpuinferError, match="no room on the disk") as e:
        quantize.convert(hf_checkpoint("mixtral"), tmp_path / "m.gguf", "q8_0",
                         progress=lambda total, n: written.append)
    assert "GB needed" in str(e.value) and asked == [tmp_path]
    assert written == [] and leftovers(tmp_path) == []
    assert_cli_error(cli_quantize(hf_checkpoint("mixtral"), tmp_path / "m.gguf", "q8_0"), "no room on the disk")
    assert leftovers(tmp_path) == []


def _fail_after(n_chunks: int, exc: BaseException, folder: Path, seen: list):
    """A progress callback that raises `exc` at chunk `n_chunks`, after checking a partial file is there."""
    def on_bytes(nbytes: int) -> None:
        seen.append(nbytes)
        if len(seen) == n_chunks:
            partial = [p for p in folder.iterdir() if p.name.startswith(".m.gguf.") and p.name.endswith(".partial")]
            assert len(partial) == 1 and partial[0].stat().st_size > 0 and not (folder / "m.gguf").exists()
            raise exc
    return on_bytes


def _cli_with_failure(monkeypatch, n_chunks: int, exc: BaseException, folder: Path, seen: list):
    """Make the CLI's convert() fail mid-write: its progress callback is wrapped by one that raises."""
    real = quantize.convert

    def convert(src, out, type_name, force=False, progress=None, **options):
        def wrapped(total, n):
            inner = progress(total, n)
            fail = _fail_after(n_chunks, exc, folder, seen)
            return lambda nbytes: (inner(nbytes), fail(nbytes))
        return real(src, out, type_name, force=force, progress=wrapped, **options)

    monkeypatch.setattr(quantize, "convert", convert)


def test_disk_full_while_writing(hf_checkpoint, tmp_path, monkeypatch):
    src, out = hf_checkpoint("mixtral"), tmp_path / "m.gguf"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    seen: list[int] = []
    with pytest.raises(CpuinferError, match="no room left on the disk"):
        quantize.convert(src, out, "q8_0", progress=lambda total, n: _fail_after(5, full, tmp_path, seen))
    assert len(seen) == 5 and leftovers(tmp_path) == []

    seen.clear()
    _cli_with_failure(monkeypatch, 5, full, tmp_path, seen)
    assert_cli_error(cli_quantize(src, out, "q8_0"), "no room left on the disk")
    assert len(seen) == 5 and leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["fifo", "socket", "link to a character device", "link to a folder"])
def test_force_replaces_only_regular_files(hf_checkpoint, tmp_path, kind):
    """As root, `-o /dev/null --force` once replaced /dev/null with a regular file."""
    out = tmp_path / "out.gguf"
    if kind == "fifo":
        os.mkfifo(out)
    elif kind == "socket":
        import socket

        server = socket.socket(socket.AF_UNIX)
        server.bind(str(out))
    elif kind == "link to a character device":
        out.symlink_to("/dev/null")
    else:
        (tmp_path / "folder").mkdir()
        out.symlink_to(tmp_path / "folder")
    before = os.lstat(out)
    message = {"fifo": "is a FIFO", "socket": "is a socket", "link to a character device": "is a character device",
               "link to a folder": "is a folder"}[kind]
    with pytest.raises(CpuinferError, match=message):
        quantize.convert(hf_checkpoint("llama"), out, "q8_0", force=True)
    assert_cli_error(cli_quantize(hf_checkpoint("llama"), out, "q8_0", "--force"), message)
    after = os.lstat(out)
    assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_dangling_link_is_replaced_with_force(hf_checkpoint, tmp_path):
    out = tmp_path / "out.gguf"
    out.symlink_to(tmp_path / "nowhere")
    assert_cli_error(cli_quantize(hf_checkpoint("llama"), out, "q8_0"), "already exists")
    assert cli_quantize(hf_checkpoint("llama"), out, "q8_0", "--force", "-q").exit_code == 0
    assert out.is_file() and not out.is_symlink()


@pytest.mark.parametrize("folder", ["/proc", "/sys"])
def test_virtual_file_systems_are_not_a_full_disk(hf_checkpoint, folder):
    if not Path(folder).is_dir():
        pytest.skip(f"no {folder}")
    out = Path(folder) / "model.gguf"
    assert_cli_error(cli_quantize(hf_checkpoint("llama"), out, "q8_0"),
                     f"{folder} is on a virtual file system (like /proc or /sys), not a disk")


def test_read_only_and_forbidden_folders_are_named(hf_checkpoint, tmp_path, monkeypatch):
    statvfs, access = os.statvfs, os.access

    def read_only(path):
        st = statvfs(path)
        return SimpleNamespace(f_flag=st.f_flag | (os.ST_RDONLY if Path(path) == tmp_path else 0),
                               f_blocks=st.f_blocks)

    monkeypatch.setattr(os, "statvfs", read_only)
    assert_cli_error(cli_quantize(hf_checkpoint("llama"), tmp_path / "m.gguf", "q8_0"),
                     f"{tmp_path} is on a read-only file system")
    monkeypatch.setattr(os, "statvfs", statvfs)
    # root may write anywhere: pretend this folder forbids it
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path and access(path, mode))
    assert_cli_error(cli_quantize(hf_checkpoint("llama"), tmp_path / "m.gguf", "q8_0"),
                     f"no permission to write in {tmp_path}")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("code, message", [
    (errno.EFBIG, "would be larger than this file system or `ulimit -f` allows (FAT32 stops at 4 GB)"),
    (errno.EROFS, "is on a read-only file system; nothing was written"),
    (errno.EACCES, "no permission to write"),
    (errno.EIO, "cannot write"),
])
def test_write_errors_have_their_own_messages(hf_checkpoint, tmp_path, monkeypatch, code, message):
    src, out = hf_checkpoint("mixtral"), tmp_path / "m.gguf"
    seen: list[int] = []
    _cli_with_failure(monkeypatch, 3, OSError(code, os.strerror(code)), tmp_path, seen)
    assert_cli_error(cli_quantize(src, out, "q8_0"), message)
    assert "no room" not in message and leftovers(tmp_path) == []


def test_interrupt_while_writing(hf_checkpoint, tmp_path, monkeypatch):
    src, out = hf_checkpoint("mixtral"), tmp_path / "m.gguf"
    seen: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        quantize.convert(src, out, "q8_0",
                         progress=lambda total, n: _fail_after(7, KeyboardInterrupt(), tmp_path, seen))
    assert len(seen) == 7 and leftovers(tmp_path) == []

    seen.clear()
    _cli_with_failure(monkeypatch, 7, KeyboardInterrupt(), tmp_path, seen)
    result = cli_quantize(src, out, "q8_0")
    assert result.exit_code == 130, result.output
    assert "Traceback" not in result.output and result.output.rstrip().endswith("interrupted")
    assert len(seen) == 7 and leftovers(tmp_path) == []


# --------------------------------------------------------------------------
# 6. streaming: peak memory
# --------------------------------------------------------------------------

MEMORY_SCRIPT = r"""
import json, sys
from pathlib import Path

def peak_mib():
    # VmHWM: this process's own peak RSS. Not ru_maxrss: Linux carries the parent's (pytest's) peak over
    # exec into it, so a child of a big pytest process would report pytest's peak.
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # KiB

mode, src, out, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
import numpy as np
import cpuinfer, quantize, quantize.writer
report = {"imports": peak_mib()}
from gguf.constants import GGMLQuantizationType as QT
from quantize.quants import quantize_rows
for q in (QT.Q8_0, QT.Q4_0, QT.Q4_1):  # load the numba kernels (machine code from numba's cache)
    quantize_rows(np.ones((2, 64), np.float32), q)
report["kernels"] = peak_mib()
if chunk:
    holders = [m for m in (quantize, quantize.writer) if hasattr(m, "CHUNK_VALUES")]
    assert holders, "CHUNK_VALUES moved"
    for m in holders:
        m.CHUNK_VALUES = chunk
if mode == "open":
    quantize.open_source(Path(src))
else:
    quantize.convert(src, out, "q8_0")
report["end"] = peak_mib()
print(json.dumps(report))
"""


def _peak_rss(mode: str, src: Path, out: Path, chunk: int = 0) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           # One numba thread in all three runs: thousands of tiny parallel launches (1000-value chunks) spin
           # for tens of seconds on a busy 2-core machine; the memory comparison is unaffected.
           "NUMBA_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, mode, str(src), str(out), str(chunk)],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc/self/status")
def test_conversion_streams(hf_checkpoint, converted, tmp_path, record_property):
    """Peak RSS of converting the Mixtral checkpoint, against a process that does everything but write.

    Three subprocesses, each reporting its own peak RSS after each stage:
      baseline  imports cpuinfer+quantize ("imports": the import-only number), loads the numba kernels
                ("kernels": ~60 MB of machine code, a fixed cost whatever the model) and opens the source
                (headers + the 32000-piece tokenizer, ~12 MB of Python objects) -- nothing is converted;
      default   the real conversion, default chunk size;
      small     the same conversion in row chunks of 1000 values.
    The largest tensor is the embedding, 32000 x 64 float32 = 8.2 MB (the whole model in float32 is
    ~17 MB, so at this size only the chunked run can tell streaming from loading whole tensors):
      * default: the embedding fits one chunk (read as bf16, widened, quantized: ~20 MB measured), so the
        extra peak must stay under 4 embeddings (33 MB);
      * small: a converter that streams holds a few KB of tensor data at a time (~0.2 MB measured); one
        that materialized any whole embedding/lm_head in float32 (or the whole model) would add >= 8.2 MB,
        so the extra peak must stay under one embedding.
    The margins (~10 MB and ~8 MB) are far above the run-to-run noise of these numbers (< 1 MB).
    """
    kernels_cached = converted("mixtral", "q8_0")  # also leaves the numba kernels compiled in its cache
    src = hf_checkpoint("mixtral")
    embedding = 32000 * 64 * 4 / 2**20  # MiB
    base = _peak_rss("open", src, tmp_path / "unused.gguf")
    default = _peak_rss("convert", src, tmp_path / "default.gguf")
    small = _peak_rss("convert", src, tmp_path / "small.gguf", chunk=1000)
    extra_default, extra_small = default["end"] - base["end"], small["end"] - base["end"]
    print(f"\npeak RSS (MiB): imports only {base['imports']:.1f}, + kernels {base['kernels']:.1f}, "
          f"+ open source {base['end']:.1f}; conversion {default['end']:.1f} (+{extra_default:.1f}), "
          f"in 1000-value chunks {small['end']:.1f} (+{extra_small:.1f}); embedding f32 {embedding:.1f}")
    for name, value in (("rss_imports_mib", base["imports"]), ("rss_baseline_mib", base["end"]),
                        ("rss_convert_mib", default["end"]), ("rss_convert_small_chunks_mib", small["end"])):
        record_property(name, round(value, 1))
    assert extra_default < 4 * embedding
    assert extra_small < embedding
    # small chunks split tensors (and the permuted Q/K heads) mid-way: same bytes all the same
    assert filecmp.cmp(tmp_path / "small.gguf", kernels_cached, shallow=False)
    assert filecmp.cmp(tmp_path / "default.gguf", kernels_cached, shallow=False)


# --------------------------------------------------------------------------
# 7. progress
# --------------------------------------------------------------------------


def test_progress_on_stderr(hf_checkpoint, tmp_path):
    out = tmp_path / "m.gguf"
    result = cli_quantize(hf_checkpoint("mixtral"), out, "q4_0")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "writing 23 tensors" in result.stderr
    mb = out.stat().st_size / 1e6
    assert f"wrote {out} ({mb:,.1f} MB)" in result.stderr


def test_quiet_prints_nothing(hf_checkpoint, converted, tmp_path):
    out = tmp_path / "m.gguf"
    result = cli_quantize(hf_checkpoint("mixtral"), out, "q4_0", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert filecmp.cmp(out, converted("mixtral", "q4_0"), shallow=False)


# --------------------------------------------------------------------------
# 8. cpuinfer info
# --------------------------------------------------------------------------


def _info(path) -> str:
    result = runner.invoke(app, ["info", str(path)])
    assert result.exit_code == 0, result.output
    return result.stdout


def _row(text: str, key: str) -> str:
    m = re.search(rf"^\s*{re.escape(key)}\s+(.+?)\s*$", text, re.M)
    assert m, f"no {key!r} row in:\n{text}"
    return m.group(1)


def test_info_on_mixtral(converted):
    path = converted("mixtral", "q4_0")
    text = _info(path)
    assert _row(text, "architecture") == "llama"
    assert _row(text, "experts") == "4 (2 per token)"
    assert _row(text, "sliding window") == "none"
    assert _row(text, "tokenizer").startswith("llama (32000 tokens")
    assert _row(text, "chat template") == "yes"
    assert _row(text, "layers / dim / ffn") == "2 / 64 / 128"
    assert _row(text, "heads / kv heads / head dim") == "4 / 2 / 16"
    # bytes per type: tensor count and size (ggml's block sizes) of the types llama.cpp's rules choose
    expected: dict[str, list[int]] = {}
    for name, values in expected_tensors("mixtral").items():
        qtype = expected_type(name, values.shape, "q4_0")
        block, type_size = GGML_QUANT_SIZES[qtype]
        entry = expected.setdefault(qtype.name, [0, 0])
        entry[0] += 1
        entry[1] += values.size // block * type_size
    table = {m.group(1): [int(m.group(2)), int(m.group(3).replace(",", ""))]
             for m in re.finditer(r"^[│|]\s*(\w+)\s*[│|]\s*(\d+)\s*[│|]\s*([\d,]+)\s*[│|]\s*$", text, re.M)}
    assert table == expected and set(table) == {"Q8_0", "Q4_0", "F32"}


def test_info_on_mistral_and_llama(converted):
    text = _info(converted("mistral", "q8_0"))
    assert _row(text, "sliding window") == "16"
    assert _row(text, "experts") == "none"
    assert _row(text, "chat template") == "yes"
    text = _info(converted("llama", "f16"))
    assert _row(text, "sliding window") == "none"
    assert _row(text, "chat template").startswith("no")


def test_info_on_a_non_gguf_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not a model\n" * 10)
    assert_cli_error(runner.invoke(app, ["info", str(path)]), "not a GGUF file")
    assert_cli_error(runner.invoke(app, ["info", str(tmp_path / "missing.gguf")]), "no such file")
