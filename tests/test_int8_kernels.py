"""The integer path's kernels (int8 activations x ggml blocks) against gguf-py and float64 numpy.

The activations are rounded exactly as the kernels round them (ggml's Q8_0
quantizer, bit for bit; its rule per 256 values for the K-quant matvec), so
the reference is float64 math on gguf's dequantized weights and those rounded
activations: the kernels may differ from it only by float32 rounding. Every
type the engine runs, and every instruction set the kernels have: the AVX2
and AVX-VNNI paths by compiling them for other CPUs in a subprocess
(NUMBA_CPU_NAME / NUMBA_CPU_FEATURES).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from numba import njit
from gguf import GGMLQuantizationType as QT
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quantize

from cpuinfer import linear_int8
from cpuinfer.kernels import int8_dot
from cpuinfer.kernels.gemm_int8 import ROWS
from cpuinfer.kernels.q8_activations import quantize_rows, quantize_rows_k
from cpuinfer.linear import Linear, matmul
from cpuinfer.parallel import Workers
from numpy_forward import q8_activations, q8_k_activations
from test_kernels import assert_close_to_scale, dense, extreme_weights, weights

INT8_QTYPES = sorted(linear_int8.TYPES)
REPO = Path(__file__).resolve().parents[1]


def block_values(qtype) -> int:
    return GGML_QUANT_SIZES[qtype][0]


def activations(rng, shape) -> np.ndarray:
    """Random activations over six orders of magnitude, with an all-zero block and exact .5 ties."""
    x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(np.float32)
    flat = x.reshape(-1, 32)
    flat[0] = 0
    if flat.shape[0] > 1:  # max 127 -> scale 1: 2.5 and -4.5 round away from zero, to 3 and -5
        flat[1] = np.linspace(-100, 100, 32, dtype=np.float32).round()
        flat[1, :3] = [127.0, 2.5, -4.5]
    return x


def reference(w_dense: np.ndarray, x: np.ndarray, rounding) -> tuple[np.ndarray, np.ndarray]:
    """(W @ rounded x, |W| @ |rounded x|) in float64, per row of x."""
    xr = rounding(x)
    w64 = w_dense.astype(np.float64)
    return xr @ w64.T, np.abs(xr) @ np.abs(w64).T


def matvec_rounding(qtype):
    """How the matvec of a type rounds its activations: per 256 values for super-block types."""
    return q8_k_activations if block_values(qtype) == 256 else q8_activations


def int8_linear(qtype, w: np.ndarray) -> Linear:
    block, size = GGML_QUANT_SIZES[qtype]
    return Linear("w", qtype, w.shape[0], w.shape[1] // size * block, w, int8=True)


def test_quantize_rows_is_ggml_q8_0():
    rng = np.random.default_rng(3)
    x = activations(rng, (5, 256))
    xq = np.zeros((5, 256), np.int8)
    xd, xs = np.zeros((5, 8), np.float32), np.zeros((5, 16), np.float32)
    quantize_rows(x, 0, 5, xq, xd, xs)
    blocks = quantize(x, QT.Q8_0).reshape(5, 8, 34)
    assert np.array_equal(xq, blocks[:, :, 2:].view(np.int8).reshape(5, 256))
    assert xq[0, 32:35].tolist() == [127, 3, -5]
    d = np.abs(x.reshape(5, 8, 32)).max(axis=2) / np.float32(127)
    assert np.array_equal(xd, d)  # float32, not rounded to float16 as in ggml's blocks
    np.testing.assert_allclose(xs, np.repeat(d, 2, axis=1) * xq.reshape(5, 16, 16).sum(axis=2), rtol=1e-6)
    assert xd[0, 0] == 0 and xs[0, 0] == 0 and not xq[0, :32].any()


def test_quantize_rows_k():
    rng = np.random.default_rng(4)
    x = activations(rng, (3, 512))
    xq = np.zeros((3, 512), np.int8)
    xd, xb = np.zeros((3, 2), np.float32), np.zeros((3, 32), np.int16)
    quantize_rows_k(x, 0, 3, xq, xd, xb)
    d = np.abs(x.reshape(3, 2, 256)).max(axis=2) / np.float32(127)
    assert np.array_equal(xd, d)
    np.testing.assert_array_equal(xq * np.repeat(d, 256, axis=1).astype(np.float64), q8_k_activations(x))
    assert np.array_equal(xb, xq.reshape(3, 32, 16).sum(axis=2))
    assert np.abs(xq).max() == 127


@njit(fastmath=True)
def _quantize_in_fastmath_kernel(x, xq, xd, xb):  # as the matvec kernels call it
    quantize_rows_k(x, 0, x.shape[0], xq, xd, xb)


def test_quantize_rows_k_rounds_alike_in_a_fastmath_kernel():
    """A tie: -2202.1177 * (1 / (2228.4377 / 127)) rounds to -125, as gguf's Q8_0 rounding does, where fast
    math (x * (127 / max)) once gave -126."""
    x = np.zeros((1, 256), np.float32)
    x[0, 0], x[0, 43] = -2228.4377, -2202.1177
    xq, xd, xb = np.zeros((1, 256), np.int8), np.zeros((1, 1), np.float32), np.zeros((1, 16), np.int16)
    _quantize_in_fastmath_kernel(x, xq, xd, xb)
    assert xd[0, 0] == np.float32(2228.4377) / np.float32(127)
    assert (xq[0, 0], xq[0, 43]) == (-127, -125)
    np.testing.assert_array_equal(xq * xd[0, 0].astype(np.float64), q8_k_activations(x))


@pytest.mark.parametrize("make", [weights, extreme_weights], ids=["random", "extreme"])
@pytest.mark.parametrize("qtype", INT8_QTYPES, ids=lambda q: q.name)
def test_matvec_int8(qtype, make):
    rng = np.random.default_rng(17)
    kernel = linear_int8.MATVEC[qtype]
    # 8192 values and more: a prefetch stream per row on AMD, every length elsewhere (matvec_int8.PER_ROW_PREFETCH)
    lengths = (256, 768, 8192) if block_values(qtype) == 256 else (32, 96, 576, 8192)
    for rows in (1, 3, 5, 33):
        for k in lengths:
            w = make(qtype, rows, k, rng)
            for tokens in (1, 3, 4, 6):  # a step of 4, 2 and 1 tokens at once
                x = activations(rng, (tokens, k))
                out = np.full((tokens, rows), np.nan, dtype=np.float32)
                kernel(w, x, out)
                ref, scale = reference(dense(qtype, w), x, matvec_rounding(qtype))
                for t in range(tokens):
                    assert_close_to_scale(out[t], ref[t], scale[t])


@pytest.mark.parametrize("make", [weights, extreme_weights], ids=["random", "extreme"])
@pytest.mark.parametrize("qtype", INT8_QTYPES, ids=lambda q: q.name)
def test_matmul_int8(qtype, make):
    """Batches through linear.matmul: matvecs for 1-2 tokens, the tiled gemm above (activations per
    32 values for every type); row counts that leave partial microtiles; scratch tiles too small to use."""
    rng = np.random.default_rng(23)
    k = 512 if block_values(qtype) == 256 else 96
    for rows, tile_floats in ((13, 1 << 16), (2 * ROWS + 7, 1 << 16), (ROWS, 8)):
        w = make(qtype, rows, k, rng)
        lin = int8_linear(qtype, w)
        workers = Workers(2, widest_row=1, tile_floats=2 * tile_floats)
        for T in (1, 2, 3, 5, 17):
            x = activations(rng, (T, k))
            out = np.full((T, rows), np.nan, dtype=np.float32)
            assert matmul(lin, x, out, workers) is out
            rounding = matvec_rounding(qtype) if T <= linear_int8.MATVEC_MAX_ROWS else q8_activations
            ref, scale = reference(dense(qtype, w), x, rounding)
            for t in range(T):
                assert_close_to_scale(out[t], ref[t], scale[t])


def test_isa_choice():
    base = frozenset({"avx", "avx2", "fma", "f16c"})
    assert int8_dot.choose_isa(base | {"avx512f", "avx512bw", "avx512vl", "avx512vnni"}) == "avx512vnni"
    assert int8_dot.choose_isa(base | {"avxvnni"}) == "avxvnni"
    assert int8_dot.choose_isa(base | {"avx512f", "avx512vl", "avx512vnni"}) == "avxvnni"
    assert int8_dot.choose_isa(base) == "avx2"
    assert int8_dot.choose_isa(frozenset({"sse4.2", "avx"})) is None


def test_no_integer_path_without_avx2(monkeypatch, converted):
    """On a CPU without AVX2 every matrix stays on the float path, whatever load() was asked."""
    import cpuinfer

    monkeypatch.setattr(linear_int8, "AVAILABLE", False)
    m = cpuinfer.load(converted("llama", "q4_0"))
    assert not any(w.int8 for w in (m.transformer.weights.output, m.transformer.weights.layers[0].wq))
    assert m.kernels == "float32" or not linear_int8.AVAILABLE


HASWELL = "+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+lzcnt,+movbe,+popcnt,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3"


# 256-bit vpdpbusd as this host can run it: VEX-encoded (AVX-VNNI: Alder Lake, Zen 5) or EVEX-encoded (AVX-512 VNNI
# and VL on a Haswell base: Zen 4 has no AVX-VNNI, and the VEX form raised SIGILL there).
VNNI_256 = (("alderlake", HASWELL + ",+avxvnni") if "avxvnni" in int8_dot.compile_features()
            else ("haswell", HASWELL + ",+avx512f,+avx512vl,+avx512vnni"))


@pytest.mark.skipif(int8_dot.ISA not in ("avx512vnni", "avxvnni"), reason="needs a CPU with VNNI to emulate")
@pytest.mark.parametrize("cpu, features, isa", [("znver3", HASWELL, "avx2"), (*VNNI_256, "avxvnni")])
def test_other_instruction_sets(tmp_path, cpu, features, isa):
    """This file's kernel tests again, with the kernels compiled for an AVX2 / AVX-VNNI CPU. The AVX2 one is
    an AMD Zen 3, whose matvecs sweep rows shorter than 8192 values by group (matvec_int8.PER_ROW_PREFETCH);
    the other is an Intel name, whose rows all prefetch one stream each."""
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": features,
           "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    probe = subprocess.run([sys.executable, "-c", "from cpuinfer.kernels.int8_dot import ISA; print(ISA)"],
                           env=env, capture_output=True, text=True, cwd=REPO)
    assert probe.stdout.strip() == isa, probe.stderr
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                          "-k", "matvec_int8 or matmul_int8 or quantize_rows"],
                         env=env, capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
