"""The block quantizers (quantize/blocks.py, kquants.py, iquants.py) against ggml's own bytes.

tests/fixtures/reference/quants.npz holds what ggml_quantize_chunk (the function
llama-quantize calls) wrote for rows mixing typical weights with zero, constant,
one-signed, tiny, outlier and tied blocks: without an importance matrix (the
reference rounding), with unit importances (cpuinfer's default search) and with
random ones (10% zero) (make_quant_reference.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REFERENCE
from gguf.constants import GGMLQuantizationType as QT
from gguf.quants import dequantize
from gguf.quants import quantize as gguf_quantize

from cpuinfer.gguf_file import GGUFFile
from quantize.quants import KERNELS, quantize_rows

REF = np.load(REFERENCE / "quants.npz")
X, IMPORTANCE = REF["x"], REF["importance"]
CASES = [(qtype, label) for qtype in KERNELS for label in ("none", "ones", "random")]


@pytest.mark.parametrize("qtype,label", CASES, ids=[f"{q.name}-{label}" for q, label in CASES])
def test_bytes_are_ggmls(qtype, label):
    options = {"none": {"reference": True}, "ones": {}, "random": {"importance": IMPORTANCE}}[label]
    got = quantize_rows(X, qtype, **options)
    want = REF[f"{qtype.name}/{label}"]
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"rows {np.nonzero((got != want).any(axis=1))[0]} differ"


def test_rows_split_across_threads_give_the_same_bytes(monkeypatch):
    import quantize.quants as quants
    from cpuinfer.parallel import Workers

    x = np.tile(X, (3, 1))  # 30 rows: uneven parts for 2 and 4 workers
    one = quantize_rows(x, QT.Q4_K)
    for threads in (2, 4):
        workers = Workers(threads, widest_row=1, tile_floats=0)
        monkeypatch.setattr(quants, "_workers", lambda: workers)
        assert np.array_equal(quantize_rows(x, QT.Q4_K), one)


def test_bf16_is_ggmls():
    x = np.concatenate([X.reshape(-1), np.array([np.inf, -np.inf, np.nan, 3.4e38, -0.0, 1e-40], np.float32)])
    assert np.array_equal(quantize_rows(x.reshape(1, -1), QT.BF16).view(np.uint8).reshape(-1),
                          gguf_quantize(x.reshape(1, -1), QT.BF16).view(np.uint8).reshape(-1))


@pytest.fixture(scope="module")
def smollm2_rows(smollm2):
    """Real weights: rows of the default model's ffn_down (1536 wide) and attn_q (576 wide)."""
    g = GGUFFile(smollm2)

    def rows(name):
        t = g.tensors[name]
        return dequantize(g.blocks(t)[:48], QT(t.ggml_type)).reshape(48, -1).astype(np.float32)

    return {256: rows("blk.3.ffn_down.weight"), 32: rows("blk.3.attn_q.weight")}


@pytest.mark.parametrize("qtype", [q for q in KERNELS if q != QT.Q8_0], ids=lambda q: q.name)
def test_search_lowers_the_error(smollm2_rows, qtype):
    """On real weights the default rounding has a lower squared error than ggml's reference rounding
    (10-35% lower measured on the default model; the Q4_1 source makes Q4_1 itself exact either way)."""
    x = smollm2_rows[256 if KERNELS[qtype][0] == 256 else 32]

    def error(**options):
        return float(np.sum((dequantize(quantize_rows(x, qtype, **options), qtype).reshape(x.shape) - x) ** 2))

    search, reference = error(), error(reference=True)
    if qtype == QT.Q4_1:
        assert search == reference == 0
    else:
        assert search < 0.95 * reference, (search, reference)


def test_rows_must_be_whole_blocks():
    with pytest.raises(ValueError, match="not whole Q4_K blocks"):
        quantize_rows(np.ones((2, 288), np.float32), QT.Q4_K)
