"""numba kernels (cpuinfer/kernels/*), cpuinfer.linear.matmul and the rolling KV cache, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

from cpuinfer.config import ModelConfig
from cpuinfer.errors import ContextFullError, CpuinferError
from cpuinfer.batched_attention import attend_kv_head
from cpuinfer.kernels import attention as att
from cpuinfer.kernels import iq4, nn
from cpuinfer.kernels.kv_store import KV_TYPES, round_to_cache, store_kv
from cpuinfer.kv_cache import RollingKVCache
from cpuinfer.linear import _DEQUANT as DEQUANT  # every type's kernels, as linear.py dispatches them
from cpuinfer.linear import _MATVEC as MATVEC
from cpuinfer.linear import Linear, embed, matmul
from cpuinfer.parallel import Workers

FLOAT16 = (QT.F16, QT.BF16)  # given to the kernels as uint16 bits
# byte offsets of the f16 scales in each block (ggml-common.h)
F16_SCALES = {QT.Q8_0: (0,), QT.Q4_0: (0,), QT.Q4_1: (0, 2), QT.Q5_0: (0,), QT.Q5_1: (0, 2),
              QT.Q2_K: (80, 82), QT.Q3_K: (108,), QT.Q4_K: (0, 2), QT.Q5_K: (0, 2), QT.Q6_K: (208,),
              QT.IQ4_NL: (0,), QT.IQ4_XS: (0,)}
QUANTIZABLE = (QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1)  # gguf.quants writes these; the others get random codes
QTYPES = list(MATVEC)
ROWS = [1, 3, 5, 7, 33]


def row_lengths(qtype) -> list[int]:
    """Row lengths to test: whole blocks (256 values for K-quants and IQ4_XS, 32 for BF16's runs)."""
    block = GGML_QUANT_SIZES[qtype][0]
    if block == 256:
        return [256, 768]
    return [32, 64, 96, 576]


def cols(qtype) -> int:
    """One row length that suits every type."""
    return 256 if GGML_QUANT_SIZES[qtype][0] == 256 else 96


# --- weights -------------------------------------------------------------------

def weights(qtype, rows: int, k: int, rng) -> np.ndarray:
    """Random weights as the kernels read them: uint8 block rows, or uint16 bits for F16/BF16.

    Types gguf.quants cannot quantize get random codes and random normal f16 scales."""
    dense = rng.standard_normal((rows, k)).astype(np.float32)
    if qtype == QT.F16:
        return dense.astype(np.float16).view(np.uint16)
    if qtype == QT.BF16:
        return quantize(dense, qtype).view(np.uint16)
    if qtype in QUANTIZABLE:
        return quantize(dense, qtype)
    return with_scales(qtype, random_blocks(qtype, rows, k, rng), lambda shape: rng.standard_normal(shape) * 0.01)


def random_blocks(qtype, rows: int, k: int, rng) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[qtype]
    return rng.integers(0, 256, size=(rows, k // block, size), dtype=np.uint8)


def with_scales(qtype, blocks: np.ndarray, draw) -> np.ndarray:
    """blocks [rows, n, bytes] with every f16 scale replaced by draw(shape), as uint8 rows."""
    for o in F16_SCALES[qtype]:
        scales = draw(blocks.shape[:2]).astype(np.float16)
        blocks[:, :, o:o + 2] = scales.view(np.uint8).reshape(*blocks.shape[:2], 2)
    return blocks.reshape(blocks.shape[0], -1)


EXTREME_SCALES = np.array([0.0, 6e-8, -6e-8, 1e-4, 1.0, -3.5, 1000.0, 65504.0, -65504.0], dtype=np.float16)


def extreme_weights(qtype, rows: int, k: int, rng) -> np.ndarray:
    """Random quant bytes with scales drawn from zero, subnormal, tiny, huge and negative float16 values."""
    if qtype in FLOAT16:
        values = rng.choice(EXTREME_SCALES, size=(rows, k))
        return values.view(np.uint16) if qtype == QT.F16 else quantize(values.astype(np.float32), qtype).view(np.uint16)
    blocks = random_blocks(qtype, rows, k, rng)
    w = with_scales(qtype, blocks, lambda shape: rng.choice(EXTREME_SCALES, size=shape))
    w[0, :GGML_QUANT_SIZES[qtype][1]] = 0  # one all-zero block
    return w


def dense(qtype, w: np.ndarray) -> np.ndarray:
    """gguf's own dequantization: the reference."""
    return dequantize(w.view(np.uint8) if qtype != QT.F16 else w, qtype).astype(np.float32)


def reference_matvec(wd: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(W @ x in float64, |W| @ |x|: the scale each row's rounding error is measured against)."""
    w64, x64 = wd.astype(np.float64), x.astype(np.float64)
    return w64 @ x64, np.abs(w64) @ np.abs(x64)


def assert_close_to_scale(out, ref, scale, rtol=1e-5):
    err = np.abs(out.astype(np.float64) - ref)
    bad = err > rtol * scale + 1e-30
    assert not bad.any(), f"rows {np.nonzero(bad)[0]}: error {err[bad]} vs scale {scale[bad]}"


def run_matvec(qtype, w, x):
    out = np.full(w.shape[0], np.nan, dtype=np.float32)
    MATVEC[qtype](w, x, out)
    return out


# --- matvec ----------------------------------------------------------------------

@pytest.mark.parametrize("rows", ROWS)
@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_matvec_matches_numpy(qtype, rows):
    rng = np.random.default_rng(rows)
    for k in row_lengths(qtype):
        w, x = weights(qtype, rows, k, rng), rng.standard_normal(k).astype(np.float32)
        assert_close_to_scale(run_matvec(qtype, w, x), *reference_matvec(dense(qtype, w), x))


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_matvec_extreme_scales_and_zero_blocks(qtype):
    rng = np.random.default_rng(7)
    k = cols(qtype)
    for rows in (5, 33):
        w = extreme_weights(qtype, rows, k, rng)
        x = (rng.standard_normal(k) * 10.0 ** rng.integers(-3, 4, k)).astype(np.float32)
        assert_close_to_scale(run_matvec(qtype, w, x), *reference_matvec(dense(qtype, w), x))


@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
def test_matvec_all_zero_weights(qtype):
    k = cols(qtype)
    w = np.zeros_like(weights(qtype, 7, k, np.random.default_rng(0)))
    out = run_matvec(qtype, w, np.ones(k, dtype=np.float32))
    assert np.array_equal(out, np.zeros(7, dtype=np.float32))


# --- dequant ------------------------------------------------------------------------

@pytest.mark.parametrize("qtype", QTYPES, ids=lambda q: q.name)
@pytest.mark.parametrize("make", [weights, extreme_weights], ids=["random", "extreme"])
def test_dequant_rows_bit_exact(qtype, make):
    k = cols(qtype)
    w = make(qtype, 9, k, np.random.default_rng(5))
    ref = dense(qtype, w)
    for r0, n in [(0, 9), (3, 4), (8, 1)]:
        out = np.full((n, k), np.nan, dtype=np.float32)
        DEQUANT[qtype](w, r0, out)
        assert_bit_exact(out, ref[r0:r0 + n])


def assert_bit_exact(out, ref):
    """Identical float32 bits, except that 0.0 may stand for -0.0: Q4_0 computes d*q - 8d where gguf
    computes d*(q - 8), which is -0.0 for q = 8 and d < 0 (and for d = -0.0); the K-quants add an offset of
    0.0 where gguf has none."""
    nonzero = ref != 0
    assert np.array_equal(out.view(np.uint32)[nonzero], ref.view(np.uint32)[nonzero])
    assert not out[~nonzero].any()


def test_iq4_levels_are_exact():
    """The IQ4 kernels compute ggml's 16 levels with a rounded polynomial: it must hit every one exactly."""
    from numba import njit

    from gguf.quants import IQ4_NL

    @njit
    def levels(out):
        for q in range(16):
            out[q] = iq4.level(np.uint8(q))

    out = np.empty(16, dtype=np.float32)
    levels(out)
    assert out.tolist() == list(IQ4_NL.kvalues)


def test_half_to_float_is_exact_for_every_bit_pattern():
    from numba import njit

    from cpuinfer.kernels.llvm import half_to_float

    @njit
    def convert(bits, out):
        for i in range(bits.shape[0]):
            out[i] = half_to_float(bits[i])

    bits = np.arange(65536, dtype=np.uint16)
    out = np.empty(65536, dtype=np.float32)
    convert(bits, out)
    want = bits.view(np.float16).astype(np.float32)
    finite = np.isfinite(want)
    assert np.array_equal(out[finite].view(np.uint32), want[finite].view(np.uint32))  # -0.0 and subnormals too
    assert np.array_equal(np.isinf(out), np.isinf(want)) and np.array_equal(np.isnan(out), np.isnan(want))


# --- linear.matmul ---------------------------------------------------------------------

def linear(qtype, rows, cols, rng) -> tuple[Linear, np.ndarray]:
    """A Linear over random weights, and its dense float32 values."""
    if qtype == QT.F32:
        w = rng.standard_normal((rows, cols)).astype(np.float32)
        return Linear("w", QT.F32, rows, cols, w), w
    w = weights(qtype, rows, cols, rng)
    return Linear("w", qtype, rows, cols, w), dense(qtype, w)


@pytest.mark.parametrize("tile_floats", [1 << 16, 2 * 96, 50], ids=["big_tile", "two_row_tile", "tile_below_a_row"])
@pytest.mark.parametrize("qtype", [QT.F32] + QTYPES, ids=lambda q: q.name)
def test_matmul_matches_numpy(qtype, tile_floats):
    rng = np.random.default_rng(11)
    k = cols(qtype)
    workers = Workers(2, widest_row=1, tile_floats=2 * tile_floats * k // 96)  # tile_floats per worker, for 96
    lin, wd = linear(qtype, 13, k, rng)
    for T in (1, 2, 3, 17):
        x = rng.standard_normal((T, k)).astype(np.float32)
        out = np.full((T, 13), np.nan, dtype=np.float32)
        assert matmul(lin, x, out, workers) is out
        for t in range(T):
            assert_close_to_scale(out[t], *reference_matvec(wd, x[t]))


@pytest.mark.parametrize("qtype", [QT.F32] + QTYPES, ids=lambda q: q.name)
def test_embed_rows(qtype):
    k = cols(qtype)
    lin, wd = linear(qtype, 13, k, np.random.default_rng(8))
    ids = np.array([12, 0, 5, 5])
    out = np.full((4, k), np.nan, dtype=np.float32)
    embed(lin, ids, out)
    assert_bit_exact(out, wd[ids])


def test_workers_split_the_range():
    workers = Workers(3, widest_row=4, tile_floats=12)
    seen = []
    workers.run(lambda tile, a, b: seen.append((tile.size, a, b)), 10)
    assert sorted(seen) == [(4, 0, 3), (4, 3, 6), (4, 6, 10)]
    seen.clear()
    workers.run(lambda tile, a, b: seen.append((a, b)), 2)
    assert sorted(seen) == [(0, 1), (1, 2)]


# --- rms_norm, rope, silu ---------------------------------------------------------------

def test_rms_norm():
    rng = np.random.default_rng(2)
    x, weight = rng.standard_normal((5, 576)).astype(np.float32), rng.standard_normal(576).astype(np.float32)
    out = np.empty_like(x)
    nn.rms_norm(x, weight, 1e-5, out)
    x64 = x.astype(np.float64)
    ref = x64 / np.sqrt((x64 ** 2).mean(axis=1, keepdims=True) + 1e-5) * weight
    np.testing.assert_allclose(out, ref, rtol=2e-5, atol=1e-6)


def rope_reference(x: np.ndarray, positions: np.ndarray, rope_dim: int, theta: float) -> np.ndarray:
    """ggml's "normal" rope: pairs (2i, 2i+1) of the first rope_dim dims turn by pos * theta^(-2i/rope_dim)."""
    out = x.astype(np.float64)
    for i in range(rope_dim // 2):
        angle = positions.astype(np.float64)[:, None] * theta ** (-2.0 * i / rope_dim)
        a, b = out[:, :, 2 * i].copy(), out[:, :, 2 * i + 1].copy()
        out[:, :, 2 * i] = a * np.cos(angle) - b * np.sin(angle)
        out[:, :, 2 * i + 1] = a * np.sin(angle) + b * np.cos(angle)
    return out


@pytest.mark.parametrize("head_dim, rope_dim, theta", [(64, 64, 10000.0), (64, 32, 1e6), (16, 8, 100000.0)])
def test_rope(head_dim, rope_dim, theta):
    rng = np.random.default_rng(head_dim + rope_dim)
    positions = np.array([0, 1, 7, 100, 4095, 32767])
    x = rng.standard_normal((len(positions), 3, head_dim)).astype(np.float32)
    ref = rope_reference(x, positions, rope_dim, theta)
    cos, sin = nn.rope_tables(positions, rope_dim, theta)
    assert cos.shape == (len(positions), rope_dim // 2)
    nn.rope(x, cos, sin)
    np.testing.assert_allclose(x, ref, rtol=0, atol=2e-6 * np.sqrt(head_dim))
    assert np.array_equal(x[:, :, rope_dim:], ref[:, :, rope_dim:].astype(np.float32))  # untouched tail


def test_silu_mul():
    rng = np.random.default_rng(4)
    gate, up = (rng.standard_normal((3, 100)) * 8).astype(np.float32), rng.standard_normal((3, 100)).astype(np.float32)
    g64 = gate.astype(np.float64)
    ref = g64 / (1 + np.exp(-g64)) * up
    nn.silu_mul(gate, up)
    np.testing.assert_allclose(gate, ref, rtol=1e-5, atol=1e-6)


# --- attention ------------------------------------------------------------------------

def attention_reference(q, k_all, v_all, p0, window):
    """Softmax attention in float64 over a full history k_all/v_all [P, G, D] of positions 0..P-1."""
    T, H, D = q.shape
    G = k_all.shape[1]
    out = np.zeros((T, H, D))
    for t in range(T):
        pos = p0 + t
        keys = np.arange(max(0, pos - window + 1), pos + 1)
        for h in range(H):
            g = h // (H // G)
            s = k_all[keys, g].astype(np.float64) @ q[t, h].astype(np.float64) / np.sqrt(D)
            p = np.exp(s - s.max())
            out[t, h] = (p / p.sum()) @ v_all[keys, g]
    return out


def attention_case(rng, H, G, D, p0, T, S):
    """Queries for positions p0..p0+T-1, the full key/value history, and a rolling buffer of S slots
    holding positions < p0 at slot p % S (later positions overwrite earlier ones)."""
    k_all, v_all = (rng.standard_normal((p0 + T, G, D)).astype(np.float32) for _ in range(2))
    q = rng.standard_normal((T, H, D)).astype(np.float32)
    k_cache, v_cache = np.full((G, S, D), np.nan, np.float32), np.full((G, S, D), np.nan, np.float32)
    for p in range(p0):
        k_cache[:, p % S], v_cache[:, p % S] = k_all[p], v_all[p]
    return q, k_all, v_all, k_cache, v_cache


def run_attention(kind, q, k_new, v_new, k_cache, v_cache, p0, window, k_scales=None, v_scales=None):
    """Attention through the decode kernel or the BLAS one; a float32 cache needs no scales."""
    out = np.full(q.shape, np.nan, dtype=np.float32)
    no_scales = np.zeros((k_cache.shape[0], 1, 1), np.float32)
    k_scales = no_scales if k_scales is None else k_scales
    v_scales = no_scales if v_scales is None else v_scales
    args = (q, k_new, v_new, k_cache, k_scales, v_cache, v_scales, p0, window, out)
    if kind == "parallel":  # the numba kernel decoding uses
        att.attention(*args)
    else:  # what prompt chunks use: BLAS, one kv head at a time
        for g in range(k_new.shape[1]):
            attend_kv_head(*args, g)
    return out


ATTENTION_CASES = {  # name: (H, G, D, p0, T, S, window)
    "prefill_gqa": (4, 2, 16, 0, 9, 32, 32),
    "prefill_mha": (4, 4, 16, 0, 9, 32, 32),
    "chunk_after_cache": (4, 2, 16, 11, 6, 32, 32),
    "decode_wrapped": (4, 2, 16, 100, 1, 16, 16),
    "chunk_wrapped": (4, 2, 16, 37, 5, 16, 16),
    "decode_window_below_slots": (4, 2, 8, 50, 1, 16, 10),
    "prefill_longer_than_window": (2, 1, 8, 0, 20, 8, 8),
}


@pytest.mark.parametrize("kind", ["parallel", "batched"])
@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_matches_numpy(case, kind):
    H, G, D, p0, T, S, window = ATTENTION_CASES[case]
    rng = np.random.default_rng(len(case))
    q, k_all, v_all, k_cache, v_cache = attention_case(rng, H, G, D, p0, T, S)
    out = run_attention(kind, q, k_all[p0:], v_all[p0:], k_cache, v_cache, p0, window)
    np.testing.assert_allclose(out, attention_reference(q, k_all, v_all, p0, window), rtol=0, atol=2e-5)


@pytest.mark.parametrize("kind", ["parallel", "batched"])
@pytest.mark.parametrize("p0, T", [(40, 1), (38, 3)])
def test_sliding_window_boundary(kind, p0, T):
    """Query at position P sees keys j with P - W < j <= P: the W-th key back counts, the (W+1)-th not."""
    W, S, D = 8, 8, 4
    G = H = 1
    P = p0 + T - 1
    k_all = np.zeros((P + 1, G, D), np.float32)
    v_all = np.zeros((P + 1, G, D), np.float32)
    v_all[P - W + 1, 0, 0] = 1.0  # the oldest visible key: gets a share of 1/W
    v_all[P - W, 0, 1] = 1.0  # just outside the window: must get nothing
    q = np.zeros((T, H, D), np.float32)
    k_cache, v_cache = np.zeros((G, S, D), np.float32), np.zeros((G, S, D), np.float32)
    for p in range(p0):
        k_cache[:, p % S], v_cache[:, p % S] = k_all[p], v_all[p]
    out = run_attention(kind, q, k_all[p0:], v_all[p0:], k_cache, v_cache, p0, W)
    assert out[-1, 0, 0] == pytest.approx(1 / W, rel=1e-6)
    assert out[-1, 0, 1] == 0.0


NO_SCALES = np.zeros((2, 1, 1), np.float32)  # a float32 cache keeps no scales


def test_store_kv_writes_rolling_slots():
    rng = np.random.default_rng(9)
    G, S, D = 2, 8, 4
    k_cache, v_cache = np.zeros((G, S, D), np.float32), np.zeros((G, S, D), np.float32)
    k_new, v_new = rng.standard_normal((5, G, D)).astype(np.float32), rng.standard_normal((5, G, D)).astype(np.float32)
    store_kv(k_cache, NO_SCALES, v_cache, NO_SCALES, k_new, v_new, 6)  # positions 6..10 -> slots 6, 7, 0, 1, 2
    for t, slot in enumerate([6, 7, 0, 1, 2]):
        assert np.array_equal(k_cache[:, slot], k_new[t]) and np.array_equal(v_cache[:, slot], v_new[t])
    assert not k_cache[:, 3:6].any() and not v_cache[:, 3:6].any()


def test_store_kv_chunk_longer_than_buffer_keeps_the_latest():
    k_new = np.arange(20, dtype=np.float32).reshape(20, 1, 1)
    k_cache, v_cache = np.zeros((1, 8, 1), np.float32), np.zeros((1, 8, 1), np.float32)
    store_kv(k_cache, NO_SCALES, v_cache, NO_SCALES, k_new, -k_new, 0)
    assert k_cache[0, :, 0].tolist() == [16, 17, 18, 19, 12, 13, 14, 15]
    assert np.array_equal(v_cache, -k_cache)


@pytest.mark.parametrize("kv_type", list(KV_TYPES))
def test_decode_loop_through_rolling_buffer(kv_type):
    """Token by token past the buffer's size, for every cache type: store_kv + attention equal attention over
    the full history of keys/values rounded as the cache stores them (round_to_cache)."""
    rng = np.random.default_rng(12)
    H, G, D, S = 4, 2, 32, 6
    n = 15
    k_all, v_all = rng.standard_normal((n, G, D)).astype(np.float32), rng.standard_normal((n, G, D)).astype(np.float32)
    q_all = rng.standard_normal((n, H, D)).astype(np.float32)
    k_cache, v_cache = np.zeros((G, S, D), KV_TYPES[kv_type]), np.zeros((G, S, D), KV_TYPES[kv_type])
    k_scales, v_scales = np.zeros((G, S, D // 32), np.float32), np.zeros((G, S, D // 32), np.float32)
    if kv_type != "f32":
        round_to_cache(k_cache, k_all)
        round_to_cache(k_cache, v_all)
    for p in range(n):
        out = run_attention("parallel" if p % 2 else "batched", q_all[p:p + 1], k_all[p:p + 1], v_all[p:p + 1],
                            k_cache, v_cache, p, S, k_scales, v_scales)
        np.testing.assert_allclose(out, attention_reference(q_all[p:p + 1], k_all, v_all, p, S), atol=2e-5)
        store_kv(k_cache, k_scales, v_cache, v_scales, k_all[p:p + 1], v_all[p:p + 1], p)


def test_cache_types_round_as_documented():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((5, 2, 64)) * rng.choice([1e-3, 1, 300], size=(5, 2, 64))).astype(np.float32)
    half = x.copy()
    round_to_cache(np.zeros(1, np.uint16), half)
    np.testing.assert_array_equal(half, x.astype(np.float16).astype(np.float32))  # nearest even, as numpy
    q8 = x.copy()
    round_to_cache(np.zeros(1, np.int8), q8)
    amax = np.abs(x.reshape(5, 2, 2, 32)).max(axis=3, keepdims=True)
    assert (np.abs(q8 - x).reshape(5, 2, 2, 32) <= amax / 254 * (1 + 1e-6)).all()  # half a step of amax/127
    exact = x.copy()
    round_to_cache(np.zeros(1, np.float32), exact)
    np.testing.assert_array_equal(exact, x)


# --- RollingKVCache -----------------------------------------------------------------

def config(sliding_window: int) -> ModelConfig:
    return ModelConfig(architecture="llama", n_vocab=32, dim=16, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=4,
                       ffn_dim=32, rope_dim=4, rope_theta=1e4, norm_eps=1e-5, context_length=64,
                       sliding_window=sliding_window)


@pytest.mark.parametrize("window, n_ctx, size", [(0, 48, 48), (16, 48, 16), (64, 48, 48), (48, 48, 48)])
def test_kv_cache_size(window, n_ctx, size):
    for kv_type, itemsize in (("f32", 4), ("f16", 2)):
        cache = RollingKVCache(config(window), n_ctx, kv_type)
        assert cache.size == cache.window == size
        assert cache.k.shape == cache.v.shape == (2, 2, size, 4)
        assert cache.nbytes == 2 * 2 * 2 * size * 4 * itemsize + 2 * 2 * 2 * 4  # + a dummy scale per head
    assert RollingKVCache(config(window), n_ctx).kv_type == "f16"  # llama.cpp's default
    with pytest.raises(CpuinferError, match="multiple of 32"):
        RollingKVCache(config(window), n_ctx, "q8_0")  # head_dim 4
    with pytest.raises(CpuinferError, match="unknown KV cache type"):
        RollingKVCache(config(window), n_ctx, "f8")


def test_kv_cache_full_without_window():
    cache = RollingKVCache(config(0), 10)
    cache.check_room(10)
    cache.advance(7)
    assert cache.room() == 3
    cache.check_room(3)
    with pytest.raises(ContextFullError, match="7 of 10"):
        cache.check_room(4)
    cache.reset()
    assert cache.pos == 0 and cache.room() == 10


def test_kv_cache_with_window_never_fills():
    cache = RollingKVCache(config(4), 10)
    cache.advance(1000)
    assert cache.room() is None
    cache.check_room(10**6)


def test_kv_cache_store_uses_position():
    cache = RollingKVCache(config(4), 100, "f32")
    cache.advance(6)
    k = np.ones((1, 2, 4), np.float32)
    cache.store(1, k, 2 * k)
    assert cache.k[1, :, 2].tolist() == [[1.0] * 4] * 2 and cache.v[1, :, 2].tolist() == [[2.0] * 4] * 2
    assert not cache.k[0].any()


def test_kv_cache_rewind_without_window():
    cache = RollingKVCache(config(0), 32)
    cache.advance(20)
    assert not cache.rewind(21) and not cache.rewind(-1) and cache.pos == 20
    assert cache.rewind(20) and cache.rewind(3) and cache.pos == 3
    assert cache.rewind(0) and cache.pos == 0


@pytest.mark.parametrize("pos, target, ok", [
    (8, 0, True),  # nothing overwritten yet: any rewind works
    (8, 5, True),
    (9, 8, True),  # one back: the slot about to be rewritten is the one being forgotten
    (9, 7, False),  # position 0 (slot 0), which position 7 still sees, was overwritten by position 8
    (50, 49, True),
    (50, 48, False),
    (50, 50, True),
    (50, 51, False),
])
def test_kv_cache_rewind_with_window(pos, target, ok):
    cache = RollingKVCache(config(8), 100)
    cache.advance(pos)
    assert cache.rewind(target) is ok
    assert cache.pos == (target if ok else pos)
