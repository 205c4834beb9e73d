"""Importance matrices: llama.cpp's two file formats (quantize/imatrix.py) and `cpuinfer quantize --imatrix`.

The legacy format is checked against bytes packed here from the description in
llama.cpp's tools/imatrix/imatrix.cpp, the GGUF one with gguf.GGUFReader.
"""

from __future__ import annotations

import struct

import gguf
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType as QT
from test_quantize import assert_cli_error, cli_quantize, expected_tensors, field, leftovers

import quantize
from cpuinfer.errors import CpuinferError
from cpuinfer.gguf_file import GGUFFile
from quantize.imatrix import Entry, Imatrix, read_imatrix, write_imatrix
from quantize.quants import quantize_rows


def sample() -> Imatrix:
    rng = np.random.default_rng(1)
    return Imatrix({"blk.0.attn_q.weight": Entry(rng.uniform(0, 9, (1, 64)).astype(np.float32), np.array([512])),
                    "blk.0.ffn_down_exps.weight": Entry(rng.uniform(0, 9, (4, 128)).astype(np.float32),
                                                        np.array([300, 0, 120, 604]))},
                   datasets=["calibration.txt"], chunk_count=2, chunk_size=512)


def test_gguf_format_round_trip(tmp_path):
    m = sample()
    write_imatrix(tmp_path / "m.gguf", m)
    back = read_imatrix(tmp_path / "m.gguf")
    assert (back.datasets, back.chunk_count, back.chunk_size) == (m.datasets, 2, 512)
    assert back.entries.keys() == m.entries.keys()
    for name, e in m.entries.items():
        assert np.array_equal(back.entries[name].sums, e.sums) and np.array_equal(back.entries[name].counts, e.counts)


def test_gguf_format_is_llamacpps(tmp_path):
    write_imatrix(tmp_path / "m.gguf", sample())
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    assert field(r, "general.type") == "imatrix" and "general.architecture" not in r.fields
    assert field(r, "imatrix.datasets") == ["calibration.txt"]
    assert r.fields["imatrix.chunk_count"].types == [gguf.GGUFValueType.UINT32]
    assert field(r, "imatrix.chunk_size") == 512
    tensors = {t.name: ([int(d) for d in t.shape], QT(t.tensor_type)) for t in r.tensors}
    assert list(tensors) == ["blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts",  # name order
                             "blk.0.ffn_down_exps.weight.in_sum2", "blk.0.ffn_down_exps.weight.counts"]
    assert tensors["blk.0.ffn_down_exps.weight.in_sum2"] == ([128, 4], QT.F32)  # ggml order: ne0 = columns
    assert tensors["blk.0.ffn_down_exps.weight.counts"] == ([1, 4], QT.F32)
    counts = next(t for t in r.tensors if t.name == "blk.0.ffn_down_exps.weight.counts")
    assert np.array_equal(np.asarray(counts.data).reshape(-1), [300, 0, 120, 604])


def legacy_bytes(entries, chunk_count: int, dataset: str) -> bytes:
    """save_imatrix_legacy's layout, packed independently: int32 n; per entry int32 len, name, int32 ncall,
    int32 nval, float32[nval]; int32 chunk count, int32 len, dataset."""
    out = struct.pack("<i", len(entries))
    for name, ncall, values in entries:
        out += struct.pack("<i", len(name)) + name.encode() + struct.pack("<ii", ncall, len(values))
        out += np.asarray(values, "<f4").tobytes()
    return out + struct.pack("<ii", chunk_count, len(dataset)) + dataset.encode()


def test_legacy_format_is_llamacpps(tmp_path):
    """ncall = ceil(max count / chunk size); values (sum / count) * ncall, 1 for an expert without data."""
    m = sample()
    write_imatrix(tmp_path / "m.dat", m, legacy=True)
    q, d = m.entries["blk.0.attn_q.weight"], m.entries["blk.0.ffn_down_exps.weight"]
    ncall_d = 2  # ceil(604 / 512)
    per_expert = np.where(d.counts[:, None] > 0, d.sums / np.maximum(d.counts, 1)[:, None], 1)
    want = legacy_bytes([("blk.0.attn_q.weight", 1, (q.sums / 512 * 1).astype(np.float32).reshape(-1)),
                         ("blk.0.ffn_down_exps.weight", ncall_d,
                          (per_expert.astype(np.float32) * ncall_d).reshape(-1))], 2, "calibration.txt")
    assert (tmp_path / "m.dat").read_bytes() == want


def test_legacy_format_read(tmp_path):
    """What llama-quantize gets from a .dat file: sums / ncall per column."""
    values = np.arange(1, 65, dtype=np.float32) * 3
    (tmp_path / "m.dat").write_bytes(legacy_bytes([("blk.0.attn_q.weight", 3, values)], 7, "wiki.txt"))
    m = read_imatrix(tmp_path / "m.dat")
    assert m.datasets == ["wiki.txt"] and m.chunk_count == 7
    assert np.allclose(m.entries["blk.0.attn_q.weight"].importance(), values / 3)
    # the trailer is optional
    (tmp_path / "bare.dat").write_bytes(legacy_bytes([("a.weight", 1, values)], 0, "")[:-8])
    assert read_imatrix(tmp_path / "bare.dat").entries["a.weight"].sums.shape == (1, 64)


def test_importance_of_experts_without_data_is_one():
    assert np.array_equal(sample().entries["blk.0.ffn_down_exps.weight"].importance()[1], np.ones(128))


@pytest.mark.parametrize("content,message", [
    (b"", "truncated or corrupt importance matrix"),
    (b"not an importance matrix at all", "not an importance matrix"),
    (struct.pack("<i", 1) + struct.pack("<i", 4) + b"name" + struct.pack("<ii", 1, 64) + b"\0" * 10,
     "truncated or corrupt importance matrix"),
])
def test_bad_files(tmp_path, content, message):
    (tmp_path / "m.dat").write_bytes(content)
    with pytest.raises(CpuinferError, match=message):
        read_imatrix(tmp_path / "m.dat")


def test_model_gguf_is_not_an_importance_matrix(converted):
    with pytest.raises(CpuinferError, match="not an importance matrix"):
        read_imatrix(converted("llama", "q8_0"))


def test_non_finite_values_are_refused(tmp_path):
    m = sample()
    m.entries["blk.0.attn_q.weight"].sums[0, 3] = np.nan
    write_imatrix(tmp_path / "m.gguf", m)
    with pytest.raises(CpuinferError, match="non-finite"):
        read_imatrix(tmp_path / "m.gguf")


def mixtral_imatrix(path, experts_scale=None):
    """An importance matrix for every matrix of the tiny Mixtral, different per column and per expert."""
    rng = np.random.default_rng(3)
    m = Imatrix(datasets=["calibration.txt"], chunk_count=1, chunk_size=64)
    for name, values in expected_tensors("mixtral").items():
        if values.ndim >= 2 and name != "token_embd.weight" and "gate_inp" not in name:
            experts = values.shape[0] if values.ndim == 3 else 1
            m.entries[name] = Entry(rng.uniform(0.1, 10, (experts, values.shape[-1])).astype(np.float32) * 64,
                                    np.full(experts, 64))
    write_imatrix(path, m)
    return m


def test_quantize_with_imatrix(hf_checkpoint, tmp_path):
    """Each expert's rows are quantized with its own importances; llama-quantize's keys are written."""
    m = mixtral_imatrix(tmp_path / "m.gguf")
    out = quantize.convert(hf_checkpoint("mixtral"), tmp_path / "q.gguf", "q4_k_m", imatrix=tmp_path / "m.gguf")
    g = GGUFFile(out)
    for name in ("blk.0.ffn_down_exps.weight", "blk.0.attn_q.weight"):  # Q5_0 (Q4_K does not fit)
        t = g.tensors[name]
        src = expected_tensors("mixtral")[name].reshape(-1, *t.shape[-2:])
        importance = m.entries[name].importance()
        want = np.concatenate([quantize_rows(src[e], QT(t.ggml_type), importance[e]) for e in range(len(src))])
        assert np.array_equal(g.blocks(t).reshape(want.shape), want), name
        plain = quantize_rows(src[0], QT(t.ggml_type))
        assert not np.array_equal(want[:len(plain)], plain)  # the importances did change the bytes
    md = g.metadata
    assert md["quantize.imatrix.file"] == str(tmp_path / "m.gguf")
    assert md["quantize.imatrix.dataset"] == "calibration.txt"
    assert md["quantize.imatrix.entries_count"] == len(m.entries) and md["quantize.imatrix.chunks_count"] == 1


def test_imatrix_through_the_cli(hf_checkpoint, tmp_path):
    mixtral_imatrix(tmp_path / "m.gguf")
    write_imatrix(tmp_path / "m.dat", read_imatrix(tmp_path / "m.gguf"), legacy=True)
    result = cli_quantize(hf_checkpoint("mixtral"), tmp_path / "a.gguf", "q4_0", "--imatrix", tmp_path / "m.gguf")
    assert result.exit_code == 0, result.output
    result = cli_quantize(hf_checkpoint("mixtral"), tmp_path / "b.gguf", "q4_0", "--imatrix", tmp_path / "m.dat")
    assert result.exit_code == 0, result.output
    a, b = GGUFFile(tmp_path / "a.gguf"), GGUFFile(tmp_path / "b.gguf")
    assert a.raw(a.tensors["blk.0.attn_q.weight"]).tobytes() == b.raw(b.tensors["blk.0.attn_q.weight"]).tobytes()


def test_imatrix_errors(hf_checkpoint, tmp_path):
    src = hf_checkpoint("mixtral")
    out = tmp_path / "out" / "q.gguf"
    out.parent.mkdir()
    m = mixtral_imatrix(tmp_path / "m.gguf")
    m.entries["blk.0.attn_q.weight"] = Entry(np.ones((1, 32), np.float32), np.array([1]))
    write_imatrix(tmp_path / "other-model.gguf", m)
    for extra, message in [
        (["--imatrix", tmp_path / "missing.gguf"], "cannot read the importance matrix"),
        (["--imatrix", tmp_path / "other-model.gguf"], "has 32 values for blk.0.attn_q.weight, which needs 64"),
        (["--imatrix", tmp_path / "m.gguf", "--rounding", "reference"], "cannot be combined with the reference"),
        (["--rounding", "nearest"], "unknown rounding 'nearest'"),
    ]:
        assert_cli_error(cli_quantize(src, out, "q4_k_m", *map(str, extra)), message)
        assert leftovers(out.parent) == []
